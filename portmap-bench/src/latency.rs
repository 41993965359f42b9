//! First-packet latency: new TCP connections from the client to the target,
//! each a connect and one request/response with an echo server in every
//! backend namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use portmap_testkit::{netns::Netns, signals};

use super::topo::BACKEND_PORT;

const MESSAGE: usize = 32;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections made before measuring (ARP, route and socket caches).
const WARMUP: usize = 10;

/// Echo servers on port 8080 of every backend; stopped on drop.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    servers: Vec<(i32, JoinHandle<Result<()>>)>,
}

impl EchoServers {
    pub fn start(backends: &[Netns]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Vec::new();
        for ns in backends {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let handle = ns.spawn(move || {
                let listener = TcpListener::bind(("0.0.0.0", BACKEND_PORT));
                let listener = match listener {
                    Ok(l) => {
                        let _ = tx.send(Ok(l.as_raw_fd()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                serve(&listener, &stop);
                Ok(())
            })?;
            let fd = rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| anyhow!("the echo server in {} did not start", ns.name()))?
                .map_err(|e| anyhow!("echo server in {}: {e}", ns.name()))?;
            servers.push((fd, handle));
        }
        Ok(Self { stop, servers })
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut conn, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_nodelay(true);
        let mut buf = [0u8; MESSAGE];
        if conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {
            // Wait for the client to close first (its side keeps TIME_WAIT).
            let _ = conn.read(&mut buf);
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (fd, _) in &self.servers {
            // SAFETY: the listener is still open (its thread owns it until it
            // sees `stop`); shutdown wakes its blocked accept.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        for (_, handle) in self.servers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Percentiles of one cell, in microseconds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub samples: usize,
    pub failures: usize,
}

fn one(target: SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, IO_TIMEOUT).context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[0x42; MESSAGE]).context("send")?;
    let mut buf = [0u8; MESSAGE];
    s.read_exact(&mut buf).context("receive")?;
    let took = start.elapsed();
    if buf != [0x42; MESSAGE] {
        bail!("the echo came back changed");
    }
    Ok(took)
}

/// Makes `count` sequential connections from `client` to `target`.
pub fn measure(client: &Netns, target: SocketAddrV4, count: usize) -> Result<Latency> {
    let target = SocketAddr::V4(target);
    client.enter(|| -> Result<Latency> {
        let mut samples = Vec::with_capacity(count);
        let mut failures = 0;
        let mut last_error = None;
        for i in 0..WARMUP + count {
            signals::check()?;
            match one(target) {
                Ok(d) if i >= WARMUP => samples.push(d.as_secs_f64() * 1e6),
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    last_error = Some(e);
                }
            }
            if failures > count / 10 + 3 {
                let e = last_error.unwrap_or_else(|| anyhow!("unknown"));
                return Err(e.context(format!(
                    "{failures} of {} connections to {target} failed",
                    i + 1
                )));
            }
        }
        if samples.is_empty() {
            bail!("no connection to {target} succeeded");
        }
        samples.sort_by(f64::total_cmp);
        Ok(Latency {
            p50_us: percentile(&samples, 0.50),
            p90_us: percentile(&samples, 0.90),
            p99_us: percentile(&samples, 0.99),
            samples: samples.len(),
            failures,
        })
    })?
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.9), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
