//! Per-packet cost of portmap's XDP program through BPF_PROG_TEST_RUN, as
//! the kernel times its loop of runs (see `loadgen::ns_per_run`).
//!
//! The kernel does not restore the packet between repeats, so every repeat
//! must do the same work: the mapping is the identity (198.18.0.1:8080 to
//! itself), which makes the rewrite a no-op. A conntrack hit repeats a flow
//! created by a first run (a UDP datagram, and a TCP ACK after the SYN that
//! opened its flow); a new flow is a TCP SYN|FIN: the FIN leaves the entry
//! closing, and a SYN on a closing entry starts a new flow, so every repeat
//! creates the flow again.

use std::net::SocketAddrV4;

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use portmap_common::abi::DatapathConfig;
use serde::{Deserialize, Serialize};

use super::{
    frames::{self, TCP_ACK, TCP_FIN, TCP_SYN},
    loadgen::{BenchObject, call_overhead_ns, ns_per_run},
    topo::{CLIENT_MAC, NODE_IP, NODE_MAC},
};
use portmap_userspace::{
    dataplane::{Dataplane, INGRESS_PROGRAM, Limits},
    model::{DesiredState, PublishSpec},
};

const XDP_PASS: u32 = 2;

/// Nanoseconds per packet, one repetition.
///
/// Results of runs before the kernel's timing was used hold wall-clock
/// figures (each with a call's fixed cost divided by its 1,000,000 repeats
/// in it, about 16 ns here) and 0 for the fields they did not have; their
/// `call_overhead_ns` is 0, which is how they are told apart.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct XdpCost {
    pub pass_ns: f64,
    /// A UDP datagram of an existing flow.
    pub hit_ns: f64,
    /// A TCP ACK of an existing flow: the case the target is stated for.
    #[serde(default)]
    pub tcp_hit_ns: f64,
    pub new_flow_ns: f64,
    pub miss_ns: f64,
    pub arp_ns: f64,
    /// One LRU hash lookup of an IPv4 flow with portmap's 40-byte conntrack
    /// key (`bench_lookup_wide`), and with a 16-byte one
    /// (`bench_lookup_narrow`); 0 in results of runs that predate them.
    #[serde(default)]
    pub lookup_wide_ns: f64,
    #[serde(default)]
    pub lookup_narrow_ns: f64,
    /// Wall-clock cost of one call of BPF_PROG_TEST_RUN beyond its runs.
    #[serde(default)]
    pub call_overhead_ns: f64,
    /// The same for the load generator's program, which the benchmark keeps
    /// in the kernel's XDP dispatcher (see `loadgen::DispatcherAnchor`); 0
    /// in results of runs that did not.
    #[serde(default)]
    pub generator_call_ns: f64,
}

impl XdpCost {
    /// Whether these figures are the kernel's per-run timing (every run
    /// since `call_overhead_ns` was measured), not wall-clock ones.
    pub fn kernel_timed(&self) -> bool {
        self.call_overhead_ns > 0.0
    }
}

fn identity_state() -> Result<DesiredState> {
    let specs: Vec<(String, PublishSpec)> = ["", "/udp"]
        .iter()
        .map(|suffix| {
            let text = format!("{NODE_IP}:8080:{NODE_IP}:8080{suffix}");
            let spec = text
                .parse::<PublishSpec>()
                .map_err(|e| anyhow::anyhow!("{text}: {e}"));
            spec.map(|s| (text, s))
        })
        .collect::<Result<_>>()?;
    DesiredState::from_specs(&specs).context("the identity mapping")
}

fn run_once(prog: &Xdp, frame: &[u8]) -> Result<u32> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(r.return_value)
}

/// Measures every case with `repeat` runs (best of a few rounds).
pub fn measure(bench: &BenchObject, repeat: u32) -> Result<XdpCost> {
    let limits = Limits {
        frontends: 64,
        backends: 64,
        conntrack: 4096,
    };
    let mut dp = Dataplane::load(limits, DatapathConfig::default())
        .context("loading portmap's dataplane for the per-packet cost")?;
    dp.apply(&identity_state()?)
        .context("publishing the identity mapping")?;
    let prog: &Xdp = dp
        .ebpf()
        .program(INGRESS_PROGRAM)
        .with_context(|| format!("no program {INGRESS_PROGRAM}"))?
        .try_into()
        .context("the ingress program is not XDP")?;

    let client: SocketAddrV4 = SocketAddrV4::new(super::topo::CLIENT_IP, 40_000);
    let published = SocketAddrV4::new(NODE_IP, 8080);
    let unpublished = SocketAddrV4::new(NODE_IP, 9999);
    let udp_hit = frames::udp(NODE_MAC, CLIENT_MAC, client, published);
    let udp_miss = frames::udp(NODE_MAC, CLIENT_MAC, client, unpublished);
    let syn_fin = frames::tcp(NODE_MAC, CLIENT_MAC, client, published, TCP_SYN | TCP_FIN);
    // Another client port than the SYN|FIN's, whose runs reopen their flow.
    let tcp_client = SocketAddrV4::new(super::topo::CLIENT_IP, 40_001);
    let tcp_open = frames::tcp(NODE_MAC, CLIENT_MAC, tcp_client, published, TCP_SYN);
    let tcp_hit = frames::tcp(NODE_MAC, CLIENT_MAC, tcp_client, published, TCP_ACK);
    let arp = frames::arp(CLIENT_MAC, super::topo::CLIENT_IP, NODE_IP);

    // Every case must pass the packet on; anything else means the setup is wrong.
    for (name, frame) in [
        ("conntrack hit", &udp_hit),
        ("TCP flow's SYN", &tcp_open),
        ("TCP conntrack hit", &tcp_hit),
        ("new flow", &syn_fin),
        ("miss", &udp_miss),
        ("ARP", &arp),
    ] {
        let action = run_once(prog, frame)?;
        if action != XDP_PASS {
            bail!("portmap's XDP program returned {action} for the {name} packet, not XDP_PASS");
        }
    }
    let rounds = 5;
    let per_round = (repeat / rounds).max(1000);
    let pass_ns = ns_per_run(bench.pass()?, &udp_hit, per_round, rounds)?;
    // The cases must be what they claim: hits create no flow, and every run
    // of the SYN|FIN creates one.
    let created = flows_created(&dp)?;
    let hit_ns = ns_per_run(prog, &udp_hit, per_round, rounds)?;
    let tcp_hit_ns = ns_per_run(prog, &tcp_hit, per_round, rounds)?;
    let after_hits = flows_created(&dp)?;
    if after_hits != created {
        bail!(
            "the conntrack-hit case created {} flows: it is not measuring hits",
            after_hits - created
        );
    }
    let new_flow_ns = ns_per_run(prog, &syn_fin, per_round, rounds)?;
    let runs = u64::from(per_round) * u64::from(rounds);
    let after_new = flows_created(&dp)?;
    if after_new - after_hits < runs {
        bail!(
            "the new-flow case created {} flows in {runs} runs: it is not measuring new flows",
            after_new - after_hits
        );
    }
    let (wide, narrow) = bench.lookups()?;
    for (name, lookup) in [("wide", wide), ("narrow", narrow)] {
        let action = run_once(lookup, &udp_hit)?;
        if action != XDP_PASS {
            bail!("the {name}-key lookup did not find its flow (returned {action})");
        }
    }
    Ok(XdpCost {
        pass_ns,
        hit_ns,
        tcp_hit_ns,
        new_flow_ns,
        miss_ns: ns_per_run(prog, &udp_miss, per_round, rounds)?,
        arp_ns: ns_per_run(prog, &arp, per_round, rounds)?,
        lookup_wide_ns: ns_per_run(wide, &udp_hit, per_round, rounds)?,
        lookup_narrow_ns: ns_per_run(narrow, &udp_hit, per_round, rounds)?,
        call_overhead_ns: call_overhead_ns(bench.pass()?, &udp_hit, rounds)?,
        generator_call_ns: call_overhead_ns(bench.loadgen()?, &udp_hit, rounds)?,
    })
}

fn flows_created(dp: &Dataplane) -> Result<u64> {
    let snapshot = dp.snapshot().context("reading the datapath counters")?;
    snapshot
        .events
        .iter()
        .find(|(name, _)| name == "flow_created")
        .map(|(_, n)| *n)
        .context("no flow_created counter in the datapath events")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints the per-packet costs alone, for comparing one change of the
    /// dataplane with the next: `cargo test -p portmap-bench --lib
    /// xdpcost -- --ignored --nocapture` (as root). The full benchmark
    /// reports the same figures beside everything else.
    #[test]
    #[ignore = "a measurement, as root: run it by name"]
    fn per_packet_cost_alone() {
        let bench = BenchObject::load().expect("the benchmark's eBPF object");
        for _ in 0..3 {
            let c = measure(&bench, 500_000).expect("measured");
            println!(
                "pass {:.1} ns, hit {:.1} ns ({:.2}x), TCP hit {:.1} ns ({:.2}x), new flow {:.1} ns, miss {:.1} ns, ARP {:.1} ns, \
                 lookup 40-byte key {:.1} ns, 16-byte key {:.1} ns, a call {:.1} ms \
                 (the generator's {:.1} µs)",
                c.pass_ns,
                c.hit_ns,
                c.hit_ns / c.pass_ns,
                c.tcp_hit_ns,
                c.tcp_hit_ns / c.pass_ns,
                c.new_flow_ns,
                c.miss_ns,
                c.arp_ns,
                c.lookup_wide_ns,
                c.lookup_narrow_ns,
                c.call_overhead_ns / 1e6,
                c.generator_call_ns / 1e3
            );
            assert!(
                c.lookup_wide_ns > c.pass_ns && c.lookup_narrow_ns > c.pass_ns,
                "a lookup costs more than nothing"
            );
            assert!(
                c.hit_ns > c.pass_ns && c.tcp_hit_ns > c.pass_ns,
                "a hit costs more than nothing"
            );
        }
    }

    /// Conntrack hits alone for a few seconds, to profile them:
    /// `perf record -a -g -- TESTBINARY xdpcost::tests::hits_alone --ignored`.
    #[test]
    #[ignore = "a profiling load, as root: run it by name"]
    fn hits_alone() {
        let limits = Limits {
            frontends: 64,
            backends: 64,
            conntrack: 4096,
        };
        let mut dp = Dataplane::load(limits, DatapathConfig::default()).expect("loaded");
        dp.apply(&identity_state().unwrap()).expect("applied");
        let prog: &Xdp = dp
            .ebpf()
            .program(INGRESS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let client = SocketAddrV4::new(super::super::topo::CLIENT_IP, 40_000);
        let published = SocketAddrV4::new(NODE_IP, 8080);
        let hit = frames::udp(NODE_MAC, CLIENT_MAC, client, published);
        assert_eq!(run_once(prog, &hit).unwrap(), XDP_PASS);
        let ns = ns_per_run(prog, &hit, 2_000_000, 10).unwrap();
        println!("hit {ns:.1} ns");
    }
}
