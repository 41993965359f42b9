//! The remote-backend cell: the backends run on another node, so every mode
//! must masquerade (SNAT) the flows it sends there, or the backends' answers
//! would go straight to a client that never talked to them.
//!
//! ```text
//!  client              node A (translates)             node B (router)          backend i
//!  eth-n 198.18.0.2 ── eth-c 198.18.0.1
//!                      eth-r 198.19.32.1 ───────────── eth-a 198.19.32.2
//!                                                      eth-bi 198.19.i.1 ───── eth-n 198.19.i.2
//! ```
//! Node A routes 198.19.0.0/16 (the backends, and the endpoints that do not
//! exist) through node B; node B has no route back to the client's range
//! (198.18.0.0/16), as a node of a cluster has none to a client outside it:
//! an answer that was not masqueraded dies there. portmap runs on node A with
//! `--iface eth-c --iface eth-r` (the answers come back on eth-r); iptables
//! and nftables hold kube-proxy's layouts with masquerading
//! (`rules::Masq`); `forward` sends to backend 0 straight, through a static
//! masquerade on eth-r.
//!
//! The backends must see node A's address (198.19.32.1) as the source of
//! every frame, connection and request: the sinks count UDP frames by
//! source, the iperf3 server names its peers, nginx logs them; anything
//! from another address fails the cell.

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use portmap_testkit::{
    netns::Netns,
    signals,
    topo::{LinkOptions, Offloads, Options, addr, link},
};

use super::{
    Ctx, WARMUP, bulk, frames, host,
    http::{self, PeerLog},
    loadgen::{BySource, PASS, SINK},
    modes::{self, Backends, Daemon, Env, Mode, Programmed},
    quiet_wait,
    results::{NewFlowDrops, RemoteCell, Sources, Throughput},
    rules::Services,
    tcp_seconds, throughput,
    topo::{
        self, BACKEND_IF, BACKENDS, CLIENT_IF, CLIENT_IP, CLIENT_MAC, NODE_CLIENT_IF, NODE_MAC,
        Topology, Veth, backend_ip,
    },
};

/// Node A's interface towards node B.
pub const NODE_ROUTER_IF: &str = "eth-r";
/// Node B's interface towards node A.
const ROUTER_NODE_IF: &str = "eth-a";
/// Node A's address towards node B: the source the backends must see.
pub const NODE_A_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 32, 1);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 32, 2);
/// Where node A sends the backends' range.
const BACKEND_RANGE: &str = "198.19.0.0/16";
/// portmap's SNAT ports: the range MASQUERADE takes its ports from for
/// source ports above 1023, so every mode has the same port space.
const SNAT_PORTS: &str = "1024-65535";

/// The namespaces of a remote cell. `topo.node` is node A, `topo.backends`
/// sit behind `router` (node B).
pub struct Remote {
    // Field order is drop order.
    pub topo: Topology,
    pub router: Netns,
}

fn gro_on(ns: &Netns, ifname: &str) -> Result<()> {
    ns.exec("ethtool", &["-K", ifname, "gro", "on"]).map(drop)
}

fn no_rp_filter(ns: &Netns) -> Result<()> {
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ] {
        ns.sysctl(key, value)?;
    }
    Ok(())
}

/// Namespaces `<prefix>-c`, `-n` (node A), `-r` (node B) and `-b<i>`, with
/// the kernel's default offloads on every veth (the TCP measurements come
/// first) and GRO at the ends that stand for other hosts (client, node B's
/// end towards node A, backends).
pub fn build(prefix: &str) -> Result<Remote> {
    let links = LinkOptions {
        offloads: Offloads::Default,
        mtu: None,
    };
    let options = Options {
        backends: 0,
        links,
        dual_stack: false,
        gro_at_backends: true,
        client_link_macs: Some((CLIENT_MAC, NODE_MAC)),
    };
    let topo = Topology::build(|role| format!("{prefix}-{role}"), &options)?;
    let router = Netns::new(&format!("{prefix}-r"))?;
    let mut remote = Remote { topo, router };
    let (node, router) = (&remote.topo.node, &remote.router);
    no_rp_filter(node)?;
    node.sysctl(&format!("net/ipv4/conf/{NODE_CLIENT_IF}/rp_filter"), "0")?;
    link(node, NODE_ROUTER_IF, router, ROUTER_NODE_IF, links)?;
    gro_on(router, ROUTER_NODE_IF)?;
    addr(node, &format!("{NODE_A_IP}/24"), NODE_ROUTER_IF)?;
    addr(router, &format!("{ROUTER_IP}/24"), ROUTER_NODE_IF)?;
    node.ip(&["route", "add", BACKEND_RANGE, "via", &ROUTER_IP.to_string()])?;
    no_rp_filter(router)?;
    for i in 0..BACKENDS {
        let ns = Netns::new(&format!("{prefix}-b{i}"))?;
        let router_if = topo::node_backend_if(i);
        link(&remote.router, &router_if, &ns, BACKEND_IF, links)?;
        gro_on(&ns, BACKEND_IF)?;
        addr(&remote.router, &format!("198.19.{i}.1/24"), &router_if)?;
        addr(&ns, &format!("{}/24", backend_ip(i)), BACKEND_IF)?;
        ns.ip(&["route", "add", "default", "via", &format!("198.19.{i}.1")])?;
        remote.topo.backends.push(ns);
    }
    Ok(remote)
}

/// Every veth end of a remote cell (see `topo::Veth`).
fn veths(r: &Remote) -> Vec<Veth<'_>> {
    let mut v = vec![
        (&r.topo.client, CLIENT_IF.to_string(), true),
        (&r.topo.node, NODE_CLIENT_IF.to_string(), false),
        (&r.topo.node, NODE_ROUTER_IF.to_string(), false),
        (&r.router, ROUTER_NODE_IF.to_string(), true),
    ];
    for (i, ns) in r.topo.backends.iter().enumerate() {
        v.push((&r.router, topo::node_backend_if(i), false));
        v.push((ns, BACKEND_IF.to_string(), true));
    }
    v
}

/// `portmap run` on node A: the Services from manifests (every endpoint is
/// behind node B's gateway, so on another node, so SNATed), on the client's
/// interface and the one the answers come back on.
pub fn start_daemon(topo: &Topology, services: &Services, env: &Env, cell: &str) -> Result<Daemon> {
    if !env.features.manifests {
        bail!("the remote-backend cell needs a portmap with --manifests");
    }
    let path = env.scratch.join(format!("{cell}.yaml"));
    std::fs::write(&path, services.manifests())
        .with_context(|| format!("writing {}", path.display()))?;
    let mut args: Vec<OsString> = ["--iface", NODE_CLIENT_IF, "--iface", NODE_ROUTER_IF]
        .map(OsString::from)
        .to_vec();
    args.extend(["--manifests".into(), path.into_os_string()]);
    args.extend(["--snat-port-range".into(), SNAT_PORTS.into()]);
    let daemon =
        modes::start_portmap_with(&topo.node, env, cell, services.all().count() as u32, &args)?;
    // The daemon must have found every real backend on another node, with
    // node A's address to SNAT from: else the cell would measure plain DNAT.
    let metrics = modes::scrape(&topo.node)?;
    for i in 0..BACKENDS {
        let backend = SocketAddrV4::new(backend_ip(i), topo::BACKEND_PORT).to_string();
        let from = NODE_A_IP.to_string();
        let labels = [("backend", backend.as_str()), ("snat_from", from.as_str())];
        if modes::sample(&metrics, "portmap_backend_snat", &labels) != Some(1.0) {
            bail!(
                "portmap does not SNAT towards {backend} from {from}:\n{}",
                daemon.log_tail()
            );
        }
    }
    Ok(daemon)
}

/// Conntrack statistics of the calling thread's namespace: (`insert_failed`
/// + `drop`, `early_drop`), summed over CPUs.
fn conntrack_stats(ns: &Netns) -> Result<(u64, u64)> {
    let text = ns
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack"))?
        .context("reading /proc/net/stat/nf_conntrack")?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let col = |name: &str| head.iter().position(|h| *h == name);
    let (Some(failed), Some(drop), Some(early)) =
        (col("insert_failed"), col("drop"), col("early_drop"))
    else {
        bail!("/proc/net/stat/nf_conntrack has no insert_failed, drop and early_drop columns");
    };
    let mut sums = (0u64, 0u64);
    for line in lines {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        sums.0 += at(failed) + at(drop);
        sums.1 += at(early);
    }
    Ok(sums)
}

fn snat_exhausted(node: &Netns) -> Result<u64> {
    let m = modes::scrape(node)?;
    let labels = [("event", "snat_exhausted")];
    Ok(modes::sample(&m, "portmap_datapath_events_total", &labels).unwrap_or(0.0) as u64)
}

/// Fails unless every one of `what` came from node A.
fn check_udp(mode: Mode, what: &str, by: BySource) -> Result<()> {
    if by.other > 0 || by.expected == 0 {
        bail!(
            "{}: {what}: {} UDP frames reached the backends from node A ({NODE_A_IP}) and {} \
             from another address: not masqueraded",
            mode.name(),
            by.expected,
            by.other
        );
    }
    Ok(())
}

/// One remote-backend cell.
pub fn cell(ctx: &mut Ctx, rep: u32, count: u32, mode: Mode, tag: &str) -> Result<RemoteCell> {
    let bar = ctx.progress.clone();
    let step = |what: &str| {
        bar.set_message(format!(
            "{tag}: {count} Services, remote backends, {}: {what}",
            mode.name()
        ))
    };
    let services = Services::new(count)?.with_bulk();
    ctx.cells += 1;
    let prefix = format!("pm-bench-{}-{}", ctx.pid, ctx.cells);
    let name = format!("r{rep}-s{count}-{}-remote", mode.name());
    step("waiting for a quiet machine");
    host::wait_until_quiet(quiet_wait(&ctx.args))?;
    step("namespaces");
    let remote = build(&prefix)?;
    let topo = &remote.topo;
    step("programming");
    let programmed = modes::program(mode, topo, &services, &ctx.env, &name, Backends::Remote)
        .with_context(|| format!("{}: programming {count} Services", mode.name()))?;
    step("waiting for a quiet machine");
    host::wait_until_quiet(quiet_wait(&ctx.args))?;
    let measured = measure(ctx, &remote, &programmed, &name, &step);
    step("tearing down");
    let torn = modes::teardown(programmed, topo, &ctx.env, &name)
        .with_context(|| format!("{}: tearing down", mode.name()));
    let mut cell = measured
        .with_context(|| format!("{}: remote backends at {count} Services", mode.name()))?;
    torn?;
    cell.rep = rep;
    cell.services = count;
    Ok(cell)
}

/// The measurements of a programmed remote cell: TCP first (while no XDP
/// program of the benchmark's is attached), then the UDP load.
fn measure(
    ctx: &mut Ctx,
    remote: &Remote,
    programmed: &Programmed,
    name: &str,
    step: &dyn Fn(&str),
) -> Result<RemoteCell> {
    let topo = &remote.topo;
    let mode = programmed.mode;
    let node_ip = NODE_A_IP.to_string();
    step("TCP: default offloads");
    let tso_off = topo::default_offloads_of(&veths(remote))?;
    let target = programmed
        .bulk_target
        .context("the cell's Services have no bulk Service")?;
    let mut transfers = Vec::new();
    for streams in bulk::STREAMS {
        signals::check()?;
        step(&format!("TCP bulk, {streams} stream(s)"));
        let b = bulk::run(
            &topo.client,
            &topo.backends[0],
            target,
            streams,
            tcp_seconds(&ctx.args),
            &ctx.env.scratch,
            &format!("{name}-{streams}"),
        )?;
        if let Some(other) = b.sources.iter().find(|s| **s != node_ip) {
            bail!(
                "{}: TCP bulk, {streams} stream(s): the iperf3 server saw a connection from \
                 {other}, not from node A ({node_ip}): not masqueraded",
                mode.name()
            );
        }
        if b.error.is_none() && b.sources.is_empty() {
            bail!(
                "{}: TCP bulk, {streams} stream(s): the iperf3 server named no peer",
                mode.name()
            );
        }
        transfers.push(b);
    }
    step("short HTTP requests");
    let nginx = http::Nginx::start(&topo.backends, &ctx.env.scratch, name, PeerLog::On)?;
    let http = http::run(
        &topo.client,
        &programmed.http_targets,
        ctx.args.http_connections,
        WARMUP,
        Duration::from_secs_f64(ctx.args.duration),
    )?;
    let peers = nginx.peers(&node_ip)?;
    drop(nginx);
    if peers.other > 0 || peers.expected < http.requests {
        bail!(
            "{}: HTTP: nginx logged {} requests from node A ({node_ip}) and {} from elsewhere \
             (the first: {}) for {} answered: not all masqueraded",
            mode.name(),
            peers.expected,
            peers.other,
            peers.first_other.as_deref().unwrap_or("none"),
            http.requests
        );
    }

    // The UDP load: XDP_TX into the client's veth needs a program on its
    // peer, portmap's or bench_pass.
    let pass = match mode {
        Mode::Portmap => None,
        _ => Some(ctx.bench.attach(PASS, &topo.node, NODE_CLIENT_IF)?),
    };
    let mut sinks = Vec::new();
    for ns in &topo.backends {
        sinks.push(ctx.bench.attach(SINK, ns, BACKEND_IF)?);
    }
    ctx.bench.expect_source(NODE_A_IP)?;
    let ifindex = topo.client.ifindex(CLIENT_IF)?;
    let src = SocketAddrV4::new(CLIENT_IP, 1024);
    let template = frames::udp(NODE_MAC, CLIENT_MAC, src, programmed.target);
    step("established flows");
    let flows = ctx.args.flows;
    let (established, est_by) = by_source(ctx, topo, ifindex, &template, flows)?;
    check_udp(mode, "established flows", est_by)?;
    step("new flows");
    let before = match mode {
        Mode::Portmap => None,
        _ => Some(conntrack_stats(&topo.node)?),
    };
    let (new_flows, new_by) = by_source(ctx, topo, ifindex, &template, 0)?;
    check_udp(mode, "new flows", new_by)?;
    let drops = match before {
        None => NewFlowDrops {
            snat_exhausted: Some(snat_exhausted(&topo.node)?),
            ..NewFlowDrops::default()
        },
        Some(before) => {
            let after = conntrack_stats(&topo.node)?;
            NewFlowDrops {
                snat_exhausted: None,
                conntrack_refused: Some(after.0.saturating_sub(before.0)),
                conntrack_evicted: Some(after.1.saturating_sub(before.1)),
            }
        }
    };
    drop(sinks);
    drop(pass);
    Ok(RemoteCell {
        rep: 0,
        services: 0,
        mode,
        established: Some(established),
        new_flows: Some(new_flows),
        bulk: transfers,
        http: Some(http),
        sources: Sources {
            node: node_ip,
            udp_from_node: est_by.expected + new_by.expected,
            udp_from_other: est_by.other + new_by.other,
            http: peers,
        },
        drops,
        tso_off,
    })
}

/// One load measurement, and the frames the sinks got by source during it
/// (warm-up included).
fn by_source(
    ctx: &mut Ctx,
    topo: &Topology,
    ifindex: u32,
    template: &[u8],
    flows: u32,
) -> Result<(Throughput, BySource)> {
    let before = ctx.bench.sunk_by_source()?;
    let t = throughput(ctx, topo, ifindex, template, flows, false)?;
    Ok((t, ctx.bench.sunk_by_source()?.since(before)))
}
