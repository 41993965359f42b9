//! Short HTTP requests: nginx in every backend namespace serves a small file;
//! the client makes a new TCP connection for every request (`Connection:
//! close`) from many concurrent tasks, and counts the answers that arrive
//! whole and right (status 200, the exact body) and the requests that fail.

use std::{
    fmt::Write as _,
    fs::File,
    net::{SocketAddr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use portmap_testkit::{netns::Netns, process::Process, signals};

use super::topo::BACKEND_PORT;

/// The size of the file every request fetches.
pub const BODY_LEN: usize = 1024;
const FILE: &str = "bench.txt";
/// A request that has no whole answer within this time failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest answer read (a right one is far shorter).
const MAX_ANSWER: u64 = 64 * 1024;

/// The body nginx serves and the client expects.
pub fn body() -> Vec<u8> {
    (0..BODY_LEN)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

/// One HTTP load measurement.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HttpLoad {
    /// Requests in flight at once (each on its own connection).
    pub concurrency: u32,
    pub seconds: f64,
    /// Requests answered whole and right within the measured seconds.
    pub requests: u64,
    pub requests_per_s: f64,
    /// Failed requests: no connection (refused, reset), no whole answer
    /// within the timeout, a broken connection, or a wrong answer.
    pub failed: u64,
    pub failed_connect: u64,
    pub failed_timeout: u64,
    pub failed_io: u64,
    pub failed_answer: u64,
    /// The first failure, as an example.
    pub first_error: Option<String>,
}

/// nginx in every backend namespace, on [`BACKEND_PORT`]; stopped on drop.
pub struct Nginx {
    _servers: Vec<Process>,
    dir: PathBuf,
    /// Each backend's log of its peers' addresses, if asked for.
    peer_logs: Vec<PathBuf>,
}

/// Whether nginx logs the address of every request's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerLog {
    Off,
    /// One line per request (`$remote_addr`), unbuffered: a write per
    /// request, which costs far less than the connection it closes.
    On,
}

/// Requests the backends logged, by peer address.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peers {
    /// From the address expected.
    pub expected: u64,
    /// From any other address.
    pub other: u64,
    /// The first other address, as an example.
    pub first_other: Option<String>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self._servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    pub fn start(backends: &[Netns], scratch: &Path, tag: &str, log: PeerLog) -> Result<Self> {
        let dir = scratch.join(format!("{tag}-nginx"));
        let www = dir.join("www");
        std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
        // nginx's worker runs as an unprivileged user: it must get to the file
        // whatever the umask.
        for d in [scratch, dir.as_path(), www.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("opening {} to nginx's worker", d.display()))?;
        }
        let file = www.join(FILE);
        std::fs::write(&file, body())
            .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)))
            .with_context(|| format!("writing {}", file.display()))?;
        let mut nginx = Self {
            _servers: Vec::new(),
            dir,
            peer_logs: Vec::new(),
        };
        for (i, ns) in backends.iter().enumerate() {
            let run = nginx.dir.join(format!("b{i}"));
            std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
            let peers = (log == PeerLog::On).then(|| run.join("peers.log"));
            // The master (root) opens it; the worker inherits the descriptor.
            nginx.peer_logs.extend(peers.clone());
            let conf = run.join("nginx.conf");
            std::fs::write(&conf, config(&run, &www, peers.as_deref()))
                .with_context(|| format!("writing {}", conf.display()))?;
            let log = run.join("error.log");
            let mut cmd = Command::new("nginx");
            cmd.arg("-p")
                .arg(&run)
                .arg("-e")
                .arg(&log)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(run.join("stderr")).context("nginx's stderr file")?);
            let mut server = Process::start(ns, &mut cmd, "nginx")?;
            server.wait_listening(ns, BACKEND_PORT, &log, Duration::from_secs(5))?;
            nginx._servers.push(server);
        }
        Ok(nginx)
    }

    /// The requests logged so far by peer address ([`PeerLog::On`]): every
    /// line is a request nginx answered, logged as it finished.
    pub fn peers(&self, expected: &str) -> Result<Peers> {
        let mut p = Peers::default();
        for path in &self.peer_logs {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if line == expected {
                    p.expected += 1;
                } else {
                    p.other += 1;
                    p.first_other.get_or_insert_with(|| line.to_string());
                }
            }
        }
        Ok(p)
    }
}

/// One master and one worker, nothing logged per request (or only the
/// peer's address, to `peers`), every answer closes its connection; every
/// path in the scratch directory.
fn config(run: &Path, www: &Path, peers: Option<&Path>) -> String {
    let access = match peers {
        None => "access_log off;".to_string(),
        Some(p) => format!(
            "log_format peers '$remote_addr';\n  access_log {} peers;",
            p.display()
        ),
    };
    let run = run.display();
    let mut c = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {run}/nginx.pid;\n\
         error_log {run}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n\
         \x20 {access}\n  keepalive_timeout 0;\n  default_type text/plain;\n"
    );
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "  {t}_temp_path {run}/{t};");
    }
    let _ = write!(
        c,
        "  server {{\n    listen {BACKEND_PORT} backlog=4096;\n    root {};\n  }}\n}}\n",
        www.display()
    );
    c
}

#[derive(Default)]
struct Counts {
    ok: u64,
    connect: u64,
    timeout: u64,
    io: u64,
    answer: u64,
    first_error: Option<String>,
}

impl Counts {
    fn fail(&mut self, kind: Failure, what: String) {
        match kind {
            Failure::Connect => self.connect += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Io => self.io += 1,
            Failure::Answer => self.answer += 1,
        }
        self.first_error.get_or_insert(what);
    }

    fn add(&mut self, o: Counts) {
        self.ok += o.ok;
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.io += o.io;
        self.answer += o.answer;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    Connect,
    Timeout,
    Io,
    Answer,
}

/// Runs the load from `client`: `concurrency` tasks, each sending one
/// request after the other to `targets` in turn, each on a new connection.
/// Answers completed in the `duration` after `warmup` are counted.
pub fn run(
    client: &Netns,
    targets: &[SocketAddrV4],
    concurrency: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<HttpLoad> {
    if targets.is_empty() {
        return Err(anyhow!("no HTTP target"));
    }
    // A new connection per request: let the client use every port.
    client.sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(concurrency as usize);
    let start = Instant::now();
    let window = (start + warmup, start + warmup + duration);
    let mut handles = Vec::new();
    for t in 0..threads {
        let tasks = (concurrency as usize + threads - 1 - t) / threads;
        let targets: Vec<SocketAddr> = targets.iter().map(|a| SocketAddr::V4(*a)).collect();
        handles.push(client.spawn(move || load_thread(t, tasks, targets, window))?);
    }
    let mut counts = Counts::default();
    for h in handles {
        let c = h
            .join()
            .map_err(|_| anyhow!("an HTTP load thread panicked"))??;
        counts.add(c);
    }
    signals::check()?;
    let seconds = duration.as_secs_f64();
    let failed = counts.connect + counts.timeout + counts.io + counts.answer;
    Ok(HttpLoad {
        concurrency,
        seconds,
        requests: counts.ok,
        requests_per_s: counts.ok as f64 / seconds,
        failed,
        failed_connect: counts.connect,
        failed_timeout: counts.timeout,
        failed_io: counts.io,
        failed_answer: counts.answer,
        first_error: counts.first_error,
    })
}

/// One thread of the load (already in the client's namespace, where its
/// sockets are made): a single-threaded runtime with `tasks` tasks.
fn load_thread(
    thread: usize,
    tasks: usize,
    targets: Vec<SocketAddr>,
    window: (Instant, Instant),
) -> Result<Counts> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP load's runtime")?;
    let expected = body();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for task in 0..tasks {
            let targets = targets.clone();
            let expected = expected.clone();
            // Tasks start at different targets so that the load is spread
            // from the first request on.
            let first = thread * tasks + task;
            set.spawn(async move { load_task(first, &targets, &expected, window).await });
        }
        let mut counts = Counts::default();
        while let Some(done) = set.join_next().await {
            counts.add(done.context("an HTTP load task failed")?);
        }
        Ok(counts)
    })
}

async fn load_task(
    first: usize,
    targets: &[SocketAddr],
    expected: &[u8],
    (from, until): (Instant, Instant),
) -> Counts {
    let mut counts = Counts::default();
    let mut i = first;
    while Instant::now() < until && !signals::interrupted() {
        let target = targets[i % targets.len()];
        i += 1;
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, request(target, expected)).await;
        let done = Instant::now();
        if done < from || done >= until {
            continue;
        }
        match outcome {
            Ok(Ok(())) => counts.ok += 1,
            Ok(Err((kind, what))) => counts.fail(kind, format!("{target}: {what}")),
            Err(_) => counts.fail(
                Failure::Timeout,
                format!("{target}: no whole answer within {REQUEST_TIMEOUT:?}"),
            ),
        }
    }
    counts
}

async fn request(target: SocketAddr, expected: &[u8]) -> Result<(), (Failure, String)> {
    let mut s = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| (Failure::Connect, format!("connect: {e}")))?;
    let _ = s.set_nodelay(true);
    let ask = format!(
        "GET /{FILE} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: portmap-bench\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(ask.as_bytes())
        .await
        .map_err(|e| (Failure::Io, format!("send: {e}")))?;
    let mut answer = Vec::with_capacity(BODY_LEN + 512);
    (&mut s)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| {
            (
                Failure::Io,
                format!("receive: {e} after {} bytes", answer.len()),
            )
        })?;
    check(&answer, expected).map_err(|what| (Failure::Answer, what))
}

/// Whether an answer is a 200 with exactly the expected body.
fn check(answer: &[u8], expected: &[u8]) -> Result<(), String> {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!(
            "an answer of {} bytes without a whole header",
            answer.len()
        ));
    };
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(format!("status line `{status}`"));
    }
    let body = &answer[split + 4..];
    if body != expected {
        return Err(format!(
            "a body of {} bytes, not the {} expected",
            body.len(),
            expected.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_whole() {
        let b = body();
        assert_eq!(b.len(), BODY_LEN);
        let mut good = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n".to_vec();
        good.extend_from_slice(&b);
        assert_eq!(check(&good, &b), Ok(()));
        assert!(
            check(&good[..good.len() - 1], &b)
                .unwrap_err()
                .contains("1023 bytes")
        );
        assert!(
            check(b"HTTP/1.1 404 Not Found\r\n\r\n", &b)
                .unwrap_err()
                .contains("404")
        );
        assert!(
            check(b"HTTP/1.1 200 OK\r\n", &b)
                .unwrap_err()
                .contains("header")
        );
    }

    #[test]
    fn the_config_keeps_everything_in_its_directory() {
        let c = config(Path::new("/s/b0"), Path::new("/s/www"), None);
        assert!(c.contains("access_log off;"));
        assert!(c.contains("pid /s/b0/nginx.pid;"));
        assert!(c.contains("client_body_temp_path /s/b0/client_body;"));
        assert!(c.contains("listen 8080 backlog=4096;"));
        assert!(c.contains("root /s/www;"));
        assert!(c.contains("keepalive_timeout 0;"));
        let logged = config(
            Path::new("/s/b0"),
            Path::new("/s/www"),
            Some(Path::new("/s/b0/peers.log")),
        );
        assert!(logged.contains("log_format peers '$remote_addr';"));
        assert!(logged.contains("access_log /s/b0/peers.log peers;"));
    }
}
