//! The transfers of the matrix and what each checks: the content (SHA-256
//! or every byte of a datagram) at the far end, the address answers come
//! from, and what portmap counted meanwhile.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, ensure};

use super::{
    content::{Blob, pseudo_random, sha256_file},
    curl::{self, Client, Download, Fetched},
    iperf,
    matrix::Matrix,
    rig::{
        BULK, Frontend, MIB, PARALLEL, PARALLEL_SIZE, PUBLISHED_IPERF, PUBLISHED_UDP, Rig, family,
    },
    udp,
};
use crate::metrics::Samples;

/// How counters moved over one case.
pub struct Counted {
    before: Samples,
    after: Samples,
}

impl Counted {
    fn delta(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.after.sum(name, labels) - self.before.sum(name, labels)
    }

    pub fn event(&self, event: &str) -> f64 {
        self.delta("portmap_datapath_events_total", &[("event", event)])
    }

    pub fn bytes(&self, frontend: &str, direction: &str) -> f64 {
        self.delta(
            "portmap_bytes_total",
            &[("frontend", frontend), ("direction", direction)],
        )
    }

    pub fn packets(&self, frontend: &str, direction: &str) -> f64 {
        self.delta(
            "portmap_packets_total",
            &[("frontend", frontend), ("direction", direction)],
        )
    }
}

/// Runs `f` between two scrapes of portmap's metrics. Real traffic is
/// never malformed: a packet counted so fails the case (and is named in a
/// failure's message, as a clue).
fn counted<T>(rig: &Rig, f: impl FnOnce() -> Result<T>) -> Result<(T, Counted)> {
    let before = rig.metrics()?;
    let result = f();
    let counted = Counted {
        before,
        after: rig.metrics()?,
    };
    let malformed = counted.event("malformed");
    let value = match result {
        Ok(value) => value,
        Err(e) if malformed > 0.0 => {
            return Err(e.context(format!("portmap counted {malformed} packets malformed")));
        }
        Err(e) => return Err(e),
    };
    ensure!(
        malformed == 0.0,
        "the transfer worked, but portmap counted {malformed} of its packets malformed"
    );
    Ok((value, counted))
}

/// What the fast path must have done with a case's packets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FastPath {
    /// Redirected some of them.
    Redirected,
    /// Redirected some, or handed multi-buffer frames (a jumbo datagram is
    /// one frame larger than a page) to the kernel, counted as such.
    OrMultiBuffer,
}

/// What portmap must have counted for `bytes` moved through `frontend` in
/// `direction` by `client`: on the packet path, at least those bytes (IP
/// bytes, headers included) and, with the fast path, redirects; at the
/// socket, a connect and no bytes.
fn expect_counted(
    rig: &Rig,
    c: &Counted,
    client: Client,
    frontend: &str,
    direction: &str,
    bytes: u64,
    fast: FastPath,
) -> Result<()> {
    match client {
        Client::Remote(_) => {
            let counted = c.bytes(frontend, direction);
            ensure!(
                counted >= bytes as f64,
                "portmap counted {counted} {direction} bytes for {frontend}, fewer than the {bytes} moved"
            );
            // Headers add a few per cent; a packet counted twice would
            // double it. (Small datagrams are mostly headers: no bound.)
            ensure!(
                bytes < MIB as u64 || counted <= 1.5 * bytes as f64,
                "portmap counted {counted} {direction} bytes for {frontend}, far more than the {bytes} moved"
            );
            if rig.options.fast_path {
                let redirected = c.event("fast_path_redirected");
                let handed_over = c.event("fast_path_fallback_multi_buffer");
                ensure!(
                    redirected > 0.0 || (fast == FastPath::OrMultiBuffer && handed_over > 0.0),
                    "no packet took the fast path ({handed_over} multi-buffer frames handed to the kernel)"
                );
            }
        }
        Client::Node(..) => {
            let connects = c.packets(frontend, "request");
            ensure!(
                connects >= 1.0,
                "no connect counted for {frontend} (socket-level)"
            );
            let on_packet_path = c.bytes(frontend, "request") + c.bytes(frontend, "reply");
            ensure!(
                on_packet_path == 0.0,
                "{on_packet_path} bytes counted on the packet path for a connect translated at the socket"
            );
        }
    }
    Ok(())
}

fn same(got: &Fetched, blob: &Blob) -> Result<()> {
    ensure!(
        got.bytes == blob.size && got.sha256 == blob.sha256,
        "received {} bytes with SHA-256 {}, sent {} bytes with {}",
        got.bytes,
        got.sha256,
        blob.size,
        blob.sha256
    );
    Ok(())
}

fn rate(bytes: u64, took: std::time::Duration) -> String {
    let gbit = bytes as f64 * 8.0 / took.as_secs_f64().max(1e-6) / 1e9;
    format!("{} MiB, {gbit:.2} Gbit/s", bytes / MIB as u64)
}

/// Downloads the bulk file from `to`; `frontend` is its metrics label
/// (`None`: not a frontend, nothing to count).
fn download(rig: &Rig, client: Client, to: SocketAddr, frontend: Option<&str>) -> Result<String> {
    let blob = &rig.blobs.bulk;
    let start = std::time::Instant::now();
    let (got, c) = counted(rig, || curl::download(client, &curl::url(to, blob.name())))?;
    let took = start.elapsed();
    same(&got, blob)?;
    if let Some(frontend) = frontend {
        expect_counted(
            rig,
            &c,
            client,
            frontend,
            "reply",
            blob.size,
            FastPath::Redirected,
        )?;
    }
    Ok(rate(blob.size, took))
}

/// Uploads the upload file to `to` as `name`, and checks what nginx stored.
fn upload(
    rig: &Rig,
    client: Client,
    to: SocketAddr,
    frontend: Option<&str>,
    name: &str,
) -> Result<String> {
    let blob = &rig.blobs.upload;
    let stored = rig.nginx.uploaded(name);
    let start = std::time::Instant::now();
    let url = curl::url(to, &format!("upload/{name}"));
    let (_, c) = counted(rig, || curl::upload(client, &blob.path, &url))?;
    let took = start.elapsed();
    let size = std::fs::metadata(&stored)
        .with_context(|| format!("nginx stored nothing at {}", stored.display()))?
        .len();
    let sha256 = sha256_file(&stored)?;
    let _ = std::fs::remove_file(&stored);
    ensure!(
        size == blob.size && sha256 == blob.sha256,
        "nginx stored {size} bytes with SHA-256 {sha256}, sent {} bytes with {}",
        blob.size,
        blob.sha256
    );
    if let Some(frontend) = frontend {
        expect_counted(
            rig,
            &c,
            client,
            frontend,
            "request",
            blob.size,
            FastPath::Redirected,
        )?;
    }
    Ok(rate(blob.size, took))
}

/// PARALLEL downloads at once, each of another file, through one frontend.
fn parallel(rig: &Rig, to: SocketAddr, frontend: &str) -> Result<String> {
    let client = Client::Remote(&rig.topo.client);
    let blobs = &rig.blobs.parallel;
    let (results, c) = counted(rig, || {
        let started: Vec<Download> = blobs
            .iter()
            .map(|b| Download::start(client, &curl::url(to, b.name())))
            .collect::<Result<_>>()?;
        Ok(started
            .into_iter()
            .map(Download::finish)
            .collect::<Vec<_>>())
    })?;
    let failed: Vec<String> = results
        .iter()
        .zip(blobs)
        .filter_map(|(r, blob)| {
            r.as_ref()
                .map_err(|e| format!("{e:#}"))
                .and_then(|got| same(got, blob).map_err(|e| format!("{e:#}")))
                .err()
                .map(|e| format!("{}: {e}", blob.name()))
        })
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {PARALLEL} downloads failed: {}",
        failed.len(),
        failed.join("; ")
    );
    let flows = c.event("flow_created");
    ensure!(
        flows >= PARALLEL as f64,
        "portmap counted {flows} new flows for {PARALLEL} connections"
    );
    let total = (PARALLEL * PARALLEL_SIZE) as u64;
    expect_counted(
        rig,
        &c,
        client,
        frontend,
        "reply",
        total,
        FastPath::Redirected,
    )?;
    Ok(format!("{PARALLEL} × {} MiB", PARALLEL_SIZE / MIB))
}

/// iperf3 -R to `to` (the published iperf3 port, or the backend's own
/// with `frontend` `None`): the server sends BULK bytes.
fn iperf3(rig: &Rig, to: SocketAddr, frontend: Option<&str>) -> Result<String> {
    let client = Client::Remote(&rig.topo.client);
    let start = std::time::Instant::now();
    let (received, c) = counted(rig, || iperf::receive(client, to, BULK as u64))?;
    ensure!(
        received >= BULK as u64,
        "iperf3 received {received} of {BULK} bytes"
    );
    if let Some(frontend) = frontend {
        expect_counted(
            rig,
            &c,
            client,
            frontend,
            "reply",
            received,
            FastPath::Redirected,
        )?;
    }
    Ok(rate(received, start.elapsed()))
}

fn iperf3_frontend(v6: bool) -> (SocketAddr, String) {
    let to = SocketAddr::new(Rig::node_ip(v6), PUBLISHED_IPERF);
    let label = if v6 {
        format!("[*]:{PUBLISHED_IPERF}/tcp")
    } else {
        format!("*:{PUBLISHED_IPERF}/tcp")
    };
    (to, label)
}

/// One datagram of `size` bytes to the mirror at `to`, its complement back
/// from `to`.
fn datagram(rig: &Rig, to: SocketAddr, size: usize, frontend: Option<&str>) -> Result<String> {
    let payload = pseudo_random(size, size as u64);
    let (from, c) = counted(rig, || udp::mirror(&rig.topo.client, to, &payload))?;
    ensure!(
        from == to,
        "the answer came from {from}, not from {to}, where the client sent"
    );
    // A frame past a page (4 KiB, less XDP's headroom and tail) is
    // multi-buffer for XDP.
    let fast = if size > 3000 {
        FastPath::OrMultiBuffer
    } else {
        FastPath::Redirected
    };
    if let Some(frontend) = frontend {
        for direction in ["request", "reply"] {
            let client = Client::Remote(&rig.topo.client);
            expect_counted(rig, &c, client, frontend, direction, size as u64, fast)?;
        }
    }
    Ok(String::new())
}

fn udp_frontend(v6: bool) -> (SocketAddr, String) {
    let to = SocketAddr::new(Rig::node_ip(v6), PUBLISHED_UDP);
    let label = if v6 {
        format!("[*]:{PUBLISHED_UDP}/udp")
    } else {
        format!("*:{PUBLISHED_UDP}/udp")
    };
    (to, label)
}

/// Transfers straight to the backend: before portmap runs, they show that
/// the harness and the kernel carry them; with portmap running, that it
/// leaves traffic that is not for it alone.
fn direct(rig: &Rig, m: &mut Matrix, stage: &str, full: bool) {
    let client = Client::Remote(&rig.topo.client);
    for v6 in [false, true] {
        let f = family(v6);
        m.run(&format!("{stage}/direct/{f}/download"), || {
            download(rig, client, rig.direct_http(v6), None)
        });
        if full {
            let name = format!("{stage}-direct-{f}");
            m.run(&format!("{stage}/direct/{f}/upload"), || {
                upload(rig, client, rig.direct_http(v6), None, &name)
            });
            m.run(&format!("{stage}/direct/{f}/iperf3-reverse"), || {
                iperf3(rig, rig.direct_iperf(v6), None)
            });
        }
        let largest = udp::largest_payload(rig.mtu(), v6);
        m.run(&format!("{stage}/direct/{f}/udp-{largest}"), || {
            datagram(rig, rig.direct_mirror(v6), largest, None)
        });
    }
}

fn start_portmap(rig: &mut Rig, m: &mut Matrix) {
    if let Err(e) = rig.start_portmap() {
        m.abort("start portmap", e);
    }
}

/// The whole matrix in one rig: TCP downloads and uploads through every
/// frontend, from a remote client and from the node, both families; 32
/// parallel downloads; iperf3; UDP datagrams of every size.
pub fn full(rig: &mut Rig, m: &mut Matrix) {
    direct(rig, m, "without-portmap", true);
    start_portmap(rig, m);
    let rig = &*rig;
    direct(rig, m, "with-portmap", true);
    let remote = Client::Remote(&rig.topo.client);
    let node = Client::Node(&rig.topo.node, &rig.cgroup);
    for client in [remote, node] {
        for fe in Frontend::ALL {
            for v6 in [false, true] {
                let case = format!("{}/{}/{}", client.name(), fe.name(), family(v6));
                let (to, label) = (fe.addr(v6), fe.label(v6));
                m.run(&format!("{case}/download"), || {
                    download(rig, client, to, Some(&label))
                });
                let name = case.replace('/', "-");
                m.run(&format!("{case}/upload"), || {
                    upload(rig, client, to, Some(&label), &name)
                });
            }
        }
    }
    let fe = Frontend::Published;
    m.run(
        &format!("remote/{}/v4/parallel-{PARALLEL}", fe.name()),
        || parallel(rig, fe.addr(false), &fe.label(false)),
    );
    for v6 in [false, true] {
        let (to, label) = iperf3_frontend(v6);
        m.run(
            &format!("remote/published/{}/iperf3-reverse", family(v6)),
            || iperf3(rig, to, Some(&label)),
        );
    }
    for v6 in [false, true] {
        let (to, label) = udp_frontend(v6);
        for size in [1, 100, 512, 1400, udp::largest_payload(rig.mtu(), v6)] {
            m.run(
                &format!("remote/published/{}/udp-{size}", family(v6)),
                || datagram(rig, to, size, Some(&label)),
            );
        }
    }
}

/// Jumbo frames: the bulk download and the largest datagram, both families.
pub fn jumbo(rig: &mut Rig, m: &mut Matrix) {
    direct(rig, m, "without-portmap", false);
    start_portmap(rig, m);
    let rig = &*rig;
    // Generic XDP (skb mode) would hide what native XDP does with
    // multi-buffer frames: a veth takes native XDP at this MTU when the
    // program is loaded frags-aware.
    m.run("native-xdp-on-jumbo-links", || {
        let logs = rig.pm.as_ref().map(|pm| pm.logs()).unwrap_or_default();
        ensure!(
            logs.contains("attached to eth-c (XDP Native"),
            "portmap did not attach native XDP: {}",
            logs.lines()
                .filter(|l| l.contains("XDP"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        Ok(String::new())
    });
    let client = Client::Remote(&rig.topo.client);
    let fe = Frontend::Published;
    for v6 in [false, true] {
        let f = family(v6);
        m.run(&format!("remote/published/{f}/download"), || {
            download(rig, client, fe.addr(v6), Some(&fe.label(v6)))
        });
        let (to, label) = udp_frontend(v6);
        let largest = udp::largest_payload(rig.mtu(), v6);
        m.run(&format!("remote/published/{f}/udp-{largest}"), || {
            datagram(rig, to, largest, Some(&label))
        });
    }
}
