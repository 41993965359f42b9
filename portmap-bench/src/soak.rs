//! `portmap-bench --soak`: steady traffic to one Service while its backends
//! churn: every `--churn-ms` one backend is marked terminating, then removed,
//! then added back (the steps of a rolling update), so at any time one backend
//! is not ready and three are. New TCP connections (connect, 32 bytes each
//! way, close) from several workers and a UDP exchange on one socket run all
//! along; every one must succeed: requests only ever start on backends that
//! are ready (or terminating, for flows they already had), and a removed
//! backend's UDP flow moves at once.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use portmap_testkit::{lock, netns::Netns, signals};

use super::{
    latency::EchoServers,
    modes::{self, Daemon, Env},
    rules::{SERVICE_PORT, vip},
    topo::{self, BACKEND_PORT, BACKENDS, backend_ip},
};

/// How long the daemon may take to apply one edit of the manifest.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MESSAGE: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    Ready,
    Terminating,
    Absent,
}

/// What a soak saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SoakReport {
    pub seconds: f64,
    /// Manifest edits made (each marks, removes or adds a backend).
    pub churn_events: u64,
    /// Edits the daemon applied (`portmap_config_reloads_total{result="success"}`,
    /// less the start).
    pub reloads: u64,
    pub tcp_sent: u64,
    pub tcp_answered: u64,
    pub tcp_failed: u64,
    pub udp_sent: u64,
    pub udp_answered: u64,
    pub udp_failed: u64,
    /// The first failures, for the report.
    pub failures: Vec<String>,
    /// The daemon's `portmap_datapath_events_total` at the end, by event.
    pub datapath_events: BTreeMap<String, u64>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.tcp_failed == 0
            && self.udp_failed == 0
            && self.tcp_answered > 0
            && self.udp_answered > 0
    }

    pub fn markdown(&self) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let mut s = format!(
            "# portmap soak: {verdict}\n\n\
             {:.0} s of traffic to one Service while its backends churned: {} manifest edits \
             (a backend marked terminating, removed, added back), {} applied by the daemon.\n\n\
             | traffic | sent | answered | failed |\n|---|---|---|---|\n\
             | new TCP connections | {} | {} | {} |\n| UDP exchanges | {} | {} | {} |\n",
            self.seconds,
            self.churn_events,
            self.reloads,
            self.tcp_sent,
            self.tcp_answered,
            self.tcp_failed,
            self.udp_sent,
            self.udp_answered,
            self.udp_failed
        );
        if !self.datapath_events.is_empty() {
            s += "\nDatapath events (`portmap_datapath_events_total`):\n\n| event | count |\n|---|---|\n";
            for (event, n) in &self.datapath_events {
                s += &format!("| {event} | {n} |\n");
            }
        }
        for f in &self.failures {
            s += &format!("\n- failure: {f}");
        }
        s
    }
}

/// The Service's manifest for these backend states.
fn manifest(target: SocketAddrV4, states: &[State]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: soak, namespace: default}}\nspec:\n  \
         clusterIP: {}\n  ports:\n  - {{name: tcp, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}, protocol: TCP}}\n  \
         - {{name: udp, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}, protocol: UDP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: soak-1\n  namespace: default\n  \
         labels: {{kubernetes.io/service-name: soak}}\naddressType: IPv4\nendpoints:\n",
        target.ip()
    );
    for (i, state) in states.iter().enumerate() {
        let (ready, terminating) = match state {
            State::Ready => (true, false),
            State::Terminating => (false, true),
            State::Absent => continue,
        };
        y += &format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}\n",
            backend_ip(i)
        );
    }
    y += &format!(
        "ports:\n- {{name: tcp, port: {BACKEND_PORT}, protocol: TCP}}\n- {{name: udp, port: {BACKEND_PORT}, protocol: UDP}}\n"
    );
    y
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// UDP echo on every backend's port, stopped on drop.
struct UdpEcho {
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    fn start(backends: &[Netns]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        for ns in backends {
            let socket = ns.enter(|| UdpSocket::bind(("0.0.0.0", BACKEND_PORT)))??;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], peer);
                    }
                }
            });
        }
        Ok(Self { stop })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Counts {
    started: Instant,
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Counts {
    fn new(started: Instant) -> Self {
        Self {
            started,
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, result: Result<()>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => self.answered.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                let mut f = lock(&self.failures);
                if f.len() < 10 {
                    f.push(format!(
                        "at {:.3} s: {e:#}",
                        self.started.elapsed().as_secs_f64()
                    ));
                }
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn tcp_exchange(target: SocketAddr, n: u64) -> Result<()> {
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT).context("connect")?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut message = [0u8; MESSAGE];
    message[..8].copy_from_slice(&n.to_be_bytes());
    conn.write_all(&message).context("send")?;
    let mut answer = [0u8; MESSAGE];
    conn.read_exact(&mut answer).context("answer")?;
    if answer != message {
        bail!("wrong answer");
    }
    Ok(())
}

fn udp_exchange(socket: &UdpSocket, target: SocketAddr, n: u64) -> Result<()> {
    socket.send_to(&n.to_be_bytes(), target).context("send")?;
    let mut buf = [0u8; 64];
    let (len, from) = socket.recv_from(&mut buf).context("no answer within 2 s")?;
    if from != target || buf[..len] != n.to_be_bytes() {
        bail!("answer {:?} from {from}", &buf[..len]);
    }
    Ok(())
}

/// The non-zero datapath event counters.
fn datapath_events(text: &str) -> BTreeMap<String, u64> {
    modes::series(text, "portmap_datapath_events_total")
        .filter(|(_, n)| *n > 0.0)
        .filter_map(|(set, n)| Some((modes::label(set, "event")?.to_string(), n as u64)))
        .collect()
}

/// Successful and failed reloads, from the daemon's metrics.
fn reloads(text: &str) -> Result<(u64, u64)> {
    let count = |result| {
        modes::sample(text, "portmap_config_reloads_total", &[("result", result)])
            .map(|v| v as u64)
            .with_context(|| format!("no portmap_config_reloads_total{{result=\"{result}\"}}"))
    };
    Ok((count("success")?, count("failure")?))
}

/// Writes the manifest for `states`, has the daemon reload it and waits until
/// it has applied it, so each step of the churn lands on its own (a backend
/// is removed only after its terminating state was in force, as the API
/// server's order guarantees a real kube-proxy).
fn apply(
    daemon: &Daemon,
    node: &Netns,
    path: &Path,
    target: SocketAddrV4,
    states: &[State],
) -> Result<()> {
    let (before, _) = reloads(&modes::scrape(node)?)?;
    write_atomically(path, &manifest(target, states))?;
    daemon.reload()?;
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        let (ok, failed) = reloads(&modes::scrape(node)?)?;
        if failed > 0 {
            bail!("the daemon rejected a soak manifest: {}", daemon.log_tail());
        }
        if ok > before {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemon did not apply a manifest edit within {APPLY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the soak for `duration`, one churn step every `churn`, with
/// `workers` threads making TCP connections.
pub fn run(env: &Env, duration: Duration, churn: Duration, workers: usize) -> Result<SoakReport> {
    let topo = topo::new(&format!("pm-soak-{}", std::process::id()))?;
    // Many short connections: reuse TIME_WAIT ports rather than run out.
    topo.client.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    topo.client
        .sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
    let _tcp = EchoServers::start(&topo.backends)?;
    let _udp = UdpEcho::start(&topo.backends)?;
    let target = SocketAddrV4::new(vip(0), SERVICE_PORT);
    let mut states = [State::Ready; BACKENDS];
    let path = env.scratch.join("soak.yaml");
    write_atomically(&path, &manifest(target, &states))?;
    let publish = ["--manifests".into(), path.clone().into_os_string()];
    let mut daemon = modes::start_portmap(&topo, env, "soak", 1, &publish)?;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (tcp, udp) = (
        Arc::new(Counts::new(started)),
        Arc::new(Counts::new(started)),
    );
    let mut threads = Vec::new();
    for w in 0..workers {
        let (stop, tcp) = (stop.clone(), tcp.clone());
        threads.push(topo.client.spawn(move || {
            let mut n = w as u64;
            while !stop.load(Ordering::Relaxed) {
                tcp.record(tcp_exchange(target.into(), n));
                n += workers as u64;
            }
            Ok(())
        })?);
    }
    {
        let (stop, udp) = (stop.clone(), udp.clone());
        threads.push(topo.client.spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                udp.record(udp_exchange(&socket, target.into(), n));
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })?);
    }

    // The churn, a rolling update: backend (step / 3) % BACKENDS goes
    // terminating, then absent, then ready again.
    let mut churn_events = 0u64;
    let mut churn_error = None;
    while started.elapsed() < duration && !signals::interrupted() {
        std::thread::sleep(churn);
        let backend = (churn_events / 3) as usize % BACKENDS;
        states[backend] = match churn_events % 3 {
            0 => State::Terminating,
            1 => State::Absent,
            _ => State::Ready,
        };
        if let Err(e) = apply(&daemon, &topo.node, &path, target, &states) {
            churn_error = Some(e);
            break;
        }
        churn_events += 1;
    }
    // Let the last requests finish on the last state.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let workers = join_workers(threads);
    let seconds = started.elapsed().as_secs_f64();
    // One last look at the daemon's counters, before it stops.
    let last = modes::scrape(&topo.node);
    daemon.stop()?;
    signals::check()?;
    if let Some(e) = churn_error {
        return Err(e.context("churning the backends"));
    }
    workers?;
    let last = last?;
    let (reloads, _) = reloads(&last)?;

    let mut failures = lock(&tcp.failures).clone();
    failures.extend(lock(&udp.failures).iter().map(|f| format!("udp: {f}")));
    Ok(SoakReport {
        seconds,
        churn_events,
        reloads,
        tcp_sent: tcp.sent.load(Ordering::Relaxed),
        tcp_answered: tcp.answered.load(Ordering::Relaxed),
        tcp_failed: tcp.failed.load(Ordering::Relaxed),
        udp_sent: udp.sent.load(Ordering::Relaxed),
        udp_answered: udp.answered.load(Ordering::Relaxed),
        udp_failed: udp.failed.load(Ordering::Relaxed),
        failures,
        datapath_events: datapath_events(&last),
    })
}

/// Waits for every worker. One that could not start (no namespace, no
/// socket) or panicked sent less than the counts say was possible: the soak
/// did not run as reported, so it fails, naming why.
fn join_workers(threads: Vec<std::thread::JoinHandle<Result<()>>>) -> Result<()> {
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("a worker panicked".to_string()),
        }
    }
    if !errors.is_empty() {
        bail!("soak workers failed: {}", errors.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_the_metrics_text() {
        let text = "# HELP portmap_config_reloads Reloads.\n\
            portmap_config_reloads_total{result=\"failure\"} 0\n\
            portmap_config_reloads_total{result=\"success\"} 7\n\
            portmap_datapath_events_total{event=\"flow_created\"} 12\n\
            portmap_datapath_events_total{event=\"malformed\"} 0\n";
        assert_eq!(reloads(text).unwrap(), (7, 0));
        assert_eq!(
            datapath_events(text),
            BTreeMap::from([("flow_created".to_string(), 12)])
        );
        assert!(reloads("portmap_config_reloads_total{result=\"success\"} 1\n").is_err());
    }

    #[test]
    fn a_failed_or_panicked_worker_fails_the_soak() {
        let ok = || std::thread::spawn(|| Ok(()));
        assert!(join_workers(vec![ok(), ok()]).is_ok());
        let failed = std::thread::spawn(|| -> Result<()> { bail!("no socket") });
        let err = join_workers(vec![ok(), failed]).unwrap_err().to_string();
        assert!(err.contains("no socket"), "{err}");
        let panicked = std::thread::spawn(|| -> Result<()> { panic!("worker bug") });
        let err = join_workers(vec![panicked, ok()]).unwrap_err().to_string();
        assert!(err.contains("panicked"), "{err}");
    }

    #[test]
    fn manifests_follow_the_states() {
        let target = SocketAddrV4::new(vip(0), SERVICE_PORT);
        let y = manifest(
            target,
            &[
                State::Ready,
                State::Terminating,
                State::Absent,
                State::Ready,
            ],
        );
        assert!(y.contains(&format!("\"{}\"", backend_ip(0))));
        assert!(y.contains("ready: false, serving: true, terminating: true"));
        assert!(
            !y.contains(&format!("\"{}\"", backend_ip(2))),
            "absent backends are left out"
        );
        assert_eq!(y.matches("- addresses").count(), 3);
    }
}
