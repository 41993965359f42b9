//! The remote-backend section of `report.md`, and the line printed after
//! each remote cell.

use std::fmt::Write as _;

use super::{
    modes::Mode,
    remote::NODE_A_IP,
    report::{bulk_summary, fmt_pps, fmt_ratio, http_summary, mpps, push_failures, table_head},
    results::{RemoteCell, Results, Stat},
    tcpreport::{fmt_gbps, fmt_rps, others, tso_off_by_mode},
};

/// One line about a remote cell, printed as the run goes.
pub fn summary(c: &RemoteCell) -> String {
    let bulk = bulk_summary(&c.bulk);
    let http = http_summary(c.http.as_ref());
    let mut line = format!(
        "rep {} {:>5} Services {:<8} remote backends (SNAT): established {} Mpps, new {} Mpps, \
         TCP {} Gbit/s, HTTP {http}; the backends saw {} only",
        c.rep + 1,
        c.services,
        c.mode.name(),
        mpps(c.established),
        mpps(c.new_flows),
        bulk.join(" "),
        c.sources.node,
    );
    push_failures(&mut line, &c.bulk, c.http.as_ref());
    line
}

/// A table of one remote metric: a row per Service count, a column per
/// mode (`cell` gives the text and the value the ratios are of), then
/// portmap's ratios to the others.
fn table(out: &mut String, r: &Results, cell: impl Fn(Mode, u32) -> (String, Option<Stat>)) {
    let modes = &r.config.modes;
    let mut cols: Vec<String> = modes.iter().map(|m| m.name().to_string()).collect();
    cols.extend(others(r).iter().map(|m| format!("portmap/{}", m.name())));
    table_head(out, "Services", &cols);
    for s in r.remote_counts() {
        let mut row: Vec<String> = modes.iter().map(|m| cell(*m, s).0).collect();
        let pm = cell(Mode::Portmap, s).1;
        row.extend(others(r).iter().map(|m| fmt_ratio(pm, cell(*m, s).1)));
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
    out.push('\n');
}

pub fn section(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Backends on another node (SNAT)\n");
    if r.remote.is_empty() && r.config.remote_services.is_empty() {
        let _ = writeln!(out, "Not measured in this run.\n");
        return;
    }
    let _ = writeln!(
        out,
        "The backends run behind another node: client → node A (where portmap, iptables or \
         nftables translate) → node B (a router) → 4 backends. Node B has no route back to the \
         client, so every flow must leave node A masqueraded: portmap SNATs flows to backends on \
         other nodes (`--iface eth-c --iface eth-r`, `--snat-port-range 1024-65535`, the port \
         space MASQUERADE uses); iptables and nftables hold kube-proxy's layouts with \
         masquerading (a ClusterIP's traffic from outside the cluster's pod range is marked, \
         `KUBE-MARK-MASQ` / `mark-for-masquerade`, and leaves through `MASQUERADE \
         --random-fully` / `masquerade fully-random` in the postrouting hook); `forward` sends \
         to the backends straight, through a static `masquerade` on node A's interface to node \
         B. The backends checked that every UDP frame, TCP connection and HTTP request came from \
         node A ({NODE_A_IP}): a cell where one did not fails the run. TCP first (default \
         offloads), then the UDP load ({} established flows, then a new flow per packet) on the \
         same namespaces.\n",
        r.config.flows
    );
    let _ = writeln!(
        out,
        "### Established flows (packets/s delivered, higher is better)\n"
    );
    table(out, r, |m, s| {
        let st = r.remote_stat(m, s, |c| c.established.map(|t| t.delivered_pps));
        (fmt_pps(st), st)
    });
    let _ = writeln!(
        out,
        "### New flows (every packet a new flow; packets/s delivered, higher is better)\n"
    );
    table(out, r, |m, s| {
        let st = r.remote_stat(m, s, |c| c.new_flows.map(|t| t.delivered_pps));
        (fmt_pps(st), st)
    });
    new_flow_drops(out, r);
    for &streams in &r.config.tcp_streams {
        let plural = if streams == 1 { "" } else { "s" };
        let _ = writeln!(
            out,
            "### TCP bulk, {streams} stream{plural} (iperf3 -R, Gbit/s received, higher is better)\n"
        );
        table(out, r, |m, s| {
            let (st, f) = r.remote_bulk(m, s, streams);
            let text = match f.failed {
                0 => fmt_gbps(st),
                n if n == f.of => "**FAILED**".into(),
                n => format!("**FAILED {n} of {}**; the others: {}", f.of, fmt_gbps(st)),
            };
            (text, st.filter(|_| f.failed == 0))
        });
    }
    let _ = writeln!(
        out,
        "### Short HTTP requests ({} connections, a new one per request; answered/s, higher is \
         better)\n",
        r.config.http_connections
    );
    table(out, r, |m, s| {
        let st = r.remote_stat(m, s, |c| c.http.as_ref().map(|h| h.requests_per_s));
        let failed: u64 = r
            .remote
            .iter()
            .filter(|c| c.mode == m && c.services == s)
            .filter_map(|c| c.http.as_ref().map(|h| h.failed))
            .sum();
        let text = match failed {
            0 => fmt_rps(st),
            n => format!("{}, **{n} failed**", fmt_rps(st)),
        };
        (text, st)
    });
    failures(out, r);
    tso_note(out, r);
    sources(out, r);
}

/// Where the kernel had TSO off (a veth whose peer runs XDP: portmap's, on
/// both of node A's interfaces).
fn tso_note(out: &mut String, r: &Results) {
    let notes = tso_off_by_mode(r, r.remote.iter().map(|c| (c.mode, &c.tso_off)));
    if !notes.is_empty() {
        let _ = writeln!(
            out,
            "TSO was off on these veths during the TCP measurements (the kernel turns it off on a \
             veth whose peer runs an XDP program, so their TCP segments are MTU-sized): {}.\n",
            notes.join("; ")
        );
    }
}

/// What the translating node dropped during the new-flow load.
fn new_flow_drops(out: &mut String, r: &Results) {
    let mut lines = Vec::new();
    for &m in &r.config.modes {
        let cells: Vec<&RemoteCell> = r.remote.iter().filter(|c| c.mode == m).collect();
        let sum = |f: fn(&RemoteCell) -> Option<u64>| -> Option<u64> {
            cells.iter().map(|c| f(c)).sum::<Option<u64>>()
        };
        let what = match m {
            Mode::Portmap => sum(|c| c.drops.snat_exhausted)
                .map(|n| format!("{n} new flows refused for want of a free SNAT port")),
            _ => match (
                sum(|c| c.drops.conntrack_refused),
                sum(|c| c.drops.conntrack_evicted),
            ) {
                (Some(a), Some(b)) => Some(format!(
                    "{a} conntrack entries not inserted, {b} unreplied entries evicted to make room"
                )),
                _ => None,
            },
        };
        if let Some(w) = what.filter(|_| !cells.is_empty()) {
            lines.push(format!("- {}: {w}", m.name()));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            out,
            "On node A during the new-flow loads (all repetitions). Each new flow holds its \
             translation until it times out (the sinks never answer). MASQUERADE has 64,512 \
             ports per backend address and port, and conntrack's table (`nf_conntrack_max`) \
             evicts unreplied entries when it is full; portmap's SNAT table holds 65,536 flows in \
             all, whatever `--snat-port-range`, and refuses new flows to remote backends while it \
             is full, until garbage collection frees the ports of flows that timed out.\n\n{}\n",
            lines.join("\n")
        );
    }
}

fn failures(out: &mut String, r: &Results) {
    let mut lines = Vec::new();
    for c in &r.remote {
        for b in &c.bulk {
            if let Some(e) = &b.error {
                lines.push(format!(
                    "- {}, {} Services, TCP bulk {} stream(s): {e}",
                    c.mode.name(),
                    c.services,
                    b.streams
                ));
            }
        }
        if let Some(h) = c.http.as_ref().filter(|h| h.failed > 0) {
            lines.push(format!(
                "- {}, {} Services, HTTP: {} of {} failed; the first: {}",
                c.mode.name(),
                c.services,
                h.failed,
                h.failed + h.requests,
                h.first_error.as_deref().unwrap_or("")
            ));
        }
    }
    if lines.is_empty() {
        let _ = writeln!(out, "No transfer or request failed.\n");
    } else {
        let _ = writeln!(out, "**Failures:**\n\n{}\n", lines.join("\n"));
    }
}

/// What the backends saw, per mode.
fn sources(out: &mut String, r: &Results) {
    let mut lines = Vec::new();
    for &m in &r.config.modes {
        let cells: Vec<&RemoteCell> = r.remote.iter().filter(|c| c.mode == m).collect();
        if cells.is_empty() {
            continue;
        }
        let udp: u64 = cells.iter().map(|c| c.sources.udp_from_node).sum();
        let udp_other: u64 = cells.iter().map(|c| c.sources.udp_from_other).sum();
        let http: u64 = cells.iter().map(|c| c.sources.http.expected).sum();
        let http_other: u64 = cells.iter().map(|c| c.sources.http.other).sum();
        let tcp: usize = cells
            .iter()
            .flat_map(|c| &c.bulk)
            .filter(|b| !b.sources.is_empty())
            .count();
        lines.push(format!(
            "- {}: {udp} UDP frames from node A, {udp_other} from elsewhere; {tcp} iperf3 \
             transfers whose every connection came from node A; {http} HTTP requests from node \
             A, {http_other} from elsewhere",
            m.name()
        ));
    }
    let _ = writeln!(
        out,
        "What the backends saw (all repetitions):\n\n{}\n",
        lines.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bulk::Bulk,
        http::{HttpLoad, Peers},
        report,
        results::{Config, Machine, NewFlowDrops, Sources, Throughput},
    };

    fn cell(mode: Mode, gbps: Option<f64>, pps: f64) -> RemoteCell {
        let t = Throughput {
            generated: 1000,
            delivered: pps as u64,
            seconds: 1.0,
            generated_pps: 1000.0,
            delivered_pps: pps,
        };
        RemoteCell {
            rep: 0,
            services: 1,
            mode,
            established: Some(t),
            new_flows: Some(t),
            bulk: vec![Bulk {
                streams: 1,
                gbps,
                bytes: 1,
                seconds: 1.0,
                retransmits: None,
                error: gbps.is_none().then(|| "iperf3: idle timeout".into()),
                sources: vec!["198.19.32.1".into()],
            }],
            http: Some(HttpLoad {
                requests: 100,
                requests_per_s: 5000.0,
                ..HttpLoad::default()
            }),
            sources: Sources {
                node: "198.19.32.1".into(),
                udp_from_node: 10,
                udp_from_other: 0,
                http: Peers {
                    expected: 100,
                    ..Peers::default()
                },
            },
            drops: NewFlowDrops {
                snat_exhausted: (mode == Mode::Portmap).then_some(7),
                conntrack_refused: (mode != Mode::Portmap).then_some(0),
                conntrack_evicted: (mode != Mode::Portmap).then_some(3),
            },
            tso_off: if mode == Mode::Portmap {
                vec!["router/eth-a".into()]
            } else {
                Vec::new()
            },
        }
    }

    fn results(remote: Vec<RemoteCell>) -> Results {
        Results {
            version: 1,
            command: "test".into(),
            machine: Machine {
                cpu_model: "test".into(),
                cores: 2,
                kernel: "test".into(),
                iptables: "test".into(),
                nft: "test".into(),
            },
            config: Config {
                services: vec![1],
                flows: 1000,
                duration_s: 1.0,
                repeats: 1,
                modes: vec![Mode::Portmap, Mode::Iptables],
                connections: 10,
                fast_path: true,
                portmap_features: Default::default(),
                tcp_services: vec![1],
                tcp_streams: vec![1],
                tcp_seconds: 1,
                http_connections: 32,
                remote_services: vec![1],
                modes_rotate: true,
            },
            cells: Vec::new(),
            remote,
            xdp_cost: Vec::new(),
            control: Vec::new(),
            kube_sync: Vec::new(),
            footprint: Vec::new(),
            complete: true,
            error: None,
            elapsed_s: 1.0,
        }
    }

    #[test]
    fn the_remote_section_compares_the_modes_and_shows_failures() {
        let r = results(vec![
            cell(Mode::Portmap, None, 300_000.0),
            cell(Mode::Iptables, Some(6.0), 200_000.0),
        ]);
        let mut out = String::new();
        section(&mut out, &r);
        assert!(
            out.contains("| 1 | 300 kpps (300–300) | 200 kpps (200–200) | 1.50× |"),
            "{out}"
        );
        assert!(
            out.contains("| 1 | **FAILED** | 6.00 Gbit/s | – |"),
            "{out}"
        );
        assert!(out.contains("portmap, 1 Services, TCP bulk 1 stream(s): iperf3: idle timeout"));
        assert!(out.contains("- portmap: 7 new flows refused for want of a free SNAT port"));
        assert!(out.contains("- iptables: 0 conntrack entries not inserted, 3 unreplied"));
        assert!(out.contains("portmap: router/eth-a"));
        assert!(out.contains("- iptables: 10 UDP frames from node A, 0 from elsewhere"));
        assert!(report::render(&r).contains("![short HTTP requests to backends on another node]"));
        assert!(summary(&r.remote[0]).contains("1×FAILED"));
    }
}
