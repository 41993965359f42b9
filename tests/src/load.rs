//! Continuous traffic while a test changes things underneath: long-lived TCP
//! connections exchanging lines, a stream of new TCP connections, and a UDP
//! exchange, each counting successes and failures. Bounded: it stops when
//! told, and every operation has a timeout.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use portmap_testkit::lock;

use crate::{
    client::{LineConn, http_get, served_by, udp_socket},
    netns::Netns,
};

#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// The first few failures, for the assertion message.
    pub errors: Mutex<Vec<String>>,
}

impl Counts {
    fn record(&self, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut errors = lock(&self.errors);
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// What the load saw, when stopped.
#[derive(Debug)]
pub struct Report {
    pub long_lived: Arc<Counts>,
    pub new_connections: Arc<Counts>,
    pub udp: Arc<Counts>,
    /// Backends each long-lived connection was served by (one each if flows
    /// kept their backend).
    pub long_lived_backends: Vec<BTreeSet<String>>,
}

impl Report {
    /// Panics unless everything succeeded and every kind of traffic flowed.
    pub fn assert_no_failures(&self) {
        for (what, c) in [
            ("long-lived TCP exchanges", &self.long_lived),
            ("new TCP connections", &self.new_connections),
            ("UDP exchanges", &self.udp),
        ] {
            let errors = lock(&c.errors);
            assert_eq!(
                c.failed(),
                0,
                "{what}: {} failed of {}: {errors:?}",
                c.failed(),
                c.failed() + c.ok()
            );
            // Long-lived connections are optional (none when started with 0).
            let optional = what.starts_with("long-lived") && self.long_lived_backends.is_empty();
            assert!(c.ok() > 0 || optional, "{what}: none happened");
        }
        for (i, backends) in self.long_lived_backends.iter().enumerate() {
            assert_eq!(
                backends.len(),
                1,
                "long-lived connection {i} changed backend: {backends:?}"
            );
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    long_lived: Arc<Counts>,
    new_connections: Arc<Counts>,
    udp: Arc<Counts>,
    backends: Arc<Mutex<Vec<BTreeSet<String>>>>,
}

const PAUSE: Duration = Duration::from_millis(20);

impl Load {
    /// Starts `long_lived` connections to `tcp` (kept open and used in turns),
    /// new connections to `tcp` one after another, and a UDP exchange with `udp`.
    pub fn start(
        client: &Netns,
        tcp: SocketAddr,
        udp: SocketAddr,
        long_lived: usize,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = || Arc::new(Counts::default());
        let (ll, nc, uc) = (counts(), counts(), counts());
        let backends = Arc::new(Mutex::new(vec![BTreeSet::new(); long_lived]));
        let mut conns = Vec::with_capacity(long_lived);
        for _ in 0..long_lived {
            conns.push(LineConn::open(client, tcp)?);
        }
        let mut threads = Vec::new();
        {
            let (stop, ll, backends) = (stop.clone(), ll.clone(), backends.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (i, conn) in conns.iter_mut().enumerate() {
                        let line = format!("ping{n}");
                        let result = conn.ask(&line).and_then(|answer| {
                            anyhow::ensure!(answer.ends_with(&line), "wrong answer {answer:?}");
                            lock(&backends)[i].insert(served_by(&answer).to_string());
                            Ok(())
                        });
                        ll.record(result);
                        n += 1;
                    }
                    std::thread::sleep(PAUSE);
                }
            }));
        }
        {
            let (stop, nc) = (stop.clone(), nc.clone());
            let client = crate::netns::Netns::view(client.name());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    nc.record(http_get(&client, tcp).map(|_| ()));
                    std::thread::sleep(PAUSE);
                }
            }));
        }
        {
            let (stop, uc) = (stop.clone(), uc.clone());
            let socket = udp_socket(client, udp)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("u{n}");
                    n += 1;
                    // One try each: a datagram whose answer does not come back
                    // within 2 s is a failure, no retry.
                    let result = socket
                        .send_to(msg.as_bytes(), udp)
                        .map_err(anyhow::Error::from)
                        .and_then(|_| {
                            let (len, from) = socket.recv_from(&mut buf)?;
                            let answer = String::from_utf8_lossy(&buf[..len]);
                            anyhow::ensure!(
                                from == udp && answer.ends_with(&msg),
                                "{answer:?} from {from}"
                            );
                            Ok(())
                        });
                    uc.record(result);
                    std::thread::sleep(PAUSE);
                }
            }));
        }
        Ok(Load {
            stop,
            threads,
            long_lived: ll,
            new_connections: nc,
            udp: uc,
            backends,
        })
    }

    /// Successful operations so far, of all kinds.
    pub fn progress(&self) -> u64 {
        self.long_lived.ok() + self.new_connections.ok() + self.udp.ok()
    }

    /// Waits until `n` more operations succeeded (at most 10 s).
    pub fn wait_for(&self, n: u64) {
        let target = self.progress() + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.progress() < target && std::time::Instant::now() < deadline {
            std::thread::sleep(PAUSE);
        }
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let backends = lock(&self.backends).clone();
        Report {
            long_lived: self.long_lived,
            new_connections: self.new_connections,
            udp: self.udp,
            long_lived_backends: backends,
        }
    }
}
