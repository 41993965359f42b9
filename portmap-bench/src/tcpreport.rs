//! The TCP sections of `report.md`: bulk throughput (iperf3) and short HTTP
//! requests. A failed transfer shows as **FAILED**, never as a rate.

use std::fmt::Write as _;

use super::{
    http::BODY_LEN,
    modes::Mode,
    report::table_head,
    results::{Failures, Results, Stat},
};

pub(crate) fn fmt_gbps(s: Option<Stat>) -> String {
    let Some(s) = s else { return "–".into() };
    if s.n > 1 {
        format!("{:.2} Gbit/s ({:.2}–{:.2})", s.median, s.min, s.max)
    } else {
        format!("{:.2} Gbit/s", s.median)
    }
}

pub(crate) fn fmt_rps(s: Option<Stat>) -> String {
    let Some(s) = s else { return "–".into() };
    let k = |v: f64| format!("{:.1}", v / 1e3);
    if s.n > 1 {
        format!("{} k/s ({}–{})", k(s.median), k(s.min), k(s.max))
    } else {
        format!("{} k/s", k(s.median))
    }
}

fn ratio(a: Option<Stat>, b: Option<Stat>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "–".into(),
    }
}

/// The modes portmap is compared with, if portmap was measured.
pub(crate) fn others(r: &Results) -> Vec<Mode> {
    if !r.config.modes.contains(&Mode::Portmap) {
        return Vec::new();
    }
    r.config
        .modes
        .iter()
        .copied()
        .filter(|m| *m != Mode::Portmap)
        .collect()
}

fn head(out: &mut String, r: &Results) {
    let mut cols: Vec<String> = r.config.modes.iter().map(|m| m.name().into()).collect();
    cols.extend(others(r).iter().map(|m| format!("portmap/{}", m.name())));
    table_head(out, "Services", &cols);
}

fn bulk_cell(r: &Results, m: Mode, s: u32, streams: u32) -> String {
    let f = r.bulk_failures(m, s, streams);
    let value = fmt_gbps(r.bulk(m, s, streams));
    match f.failed {
        0 => value,
        n if n == f.of => "**FAILED**".into(),
        n => format!("**FAILED {n} of {}**; the others: {value}", f.of),
    }
}

pub fn bulk(out: &mut String, r: &Results) {
    let c = &r.config;
    if c.tcp_streams.is_empty() {
        let _ = writeln!(out, "## TCP bulk throughput\n\nNot measured in this run.\n");
        return;
    }
    let _ = writeln!(
        out,
        "## TCP bulk throughput\n\niperf3 downloads (`-R`: the backend sends, so the data are \
         replies that cross the reverse translation) from the client through the bulk Service \
         (one endpoint, backend 0; in `forward` mode straight to backend 0), with the veths' \
         default offloads; Gbit/s the client received in {} s, after {} s not counted (higher \
         is better). A transfer that failed shows as **FAILED**, never as a rate.\n",
        c.tcp_seconds,
        super::bulk::omit_s(c.tcp_seconds)
    );
    for &streams in &c.tcp_streams {
        let plural = if streams == 1 { "" } else { "s" };
        let _ = writeln!(out, "### {streams} stream{plural}\n");
        head(out, r);
        for s in r.tcp_counts() {
            let mut row: Vec<String> = c
                .modes
                .iter()
                .map(|m| bulk_cell(r, *m, s, streams))
                .collect();
            let pm_failed = r.bulk_failures(Mode::Portmap, s, streams).failed > 0;
            row.extend(others(r).iter().map(|m| {
                if pm_failed {
                    "**FAILED**".into()
                } else {
                    ratio(r.bulk(Mode::Portmap, s, streams), r.bulk(*m, s, streams))
                }
            }));
            let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
        }
        out.push('\n');
    }
    failed_transfers(out, r);
    tso_note(out, r);
}

fn failed_transfers(out: &mut String, r: &Results) {
    let mut lines = Vec::new();
    for &m in &r.config.modes {
        for s in r.tcp_counts() {
            for &streams in &r.config.tcp_streams {
                let Failures { failed, of, first } = r.bulk_failures(m, s, streams);
                if failed > 0 {
                    lines.push(format!(
                        "- {}, {s} Services, {streams} stream(s): {failed} of {of} failed; the \
                         first: {}",
                        m.name(),
                        first.unwrap_or_default()
                    ));
                }
            }
        }
    }
    if lines.is_empty() {
        let _ = writeln!(out, "No transfer failed.\n");
    } else {
        let _ = writeln!(out, "**Failed transfers:**\n\n{}\n", lines.join("\n"));
    }
}

/// `mode: interfaces` for each mode whose cells (`(mode, interfaces with
/// TSO off)`) had TSO off anywhere, in the run's order of modes.
pub(crate) fn tso_off_by_mode<'a>(
    r: &Results,
    cells: impl Iterator<Item = (Mode, &'a Vec<String>)> + Clone,
) -> Vec<String> {
    let mut notes = Vec::new();
    for &m in &r.config.modes {
        let mut ifs: Vec<&str> = cells
            .clone()
            .filter(|(mode, _)| *mode == m)
            .flat_map(|(_, off)| off.iter().map(String::as_str))
            .collect();
        ifs.sort_unstable();
        ifs.dedup();
        if !ifs.is_empty() {
            notes.push(format!("{}: {}", m.name(), ifs.join(", ")));
        }
    }
    notes
}

/// Where the kernel had TSO off: a veth whose peer runs an XDP program.
fn tso_note(out: &mut String, r: &Results) {
    let notes = tso_off_by_mode(r, r.cells.iter().map(|c| (c.mode, &c.tso_off)));
    if !notes.is_empty() {
        let _ = writeln!(
            out,
            "TSO was off on these veths (the kernel turns it off on a veth whose peer runs an XDP \
             program, so their TCP segments are MTU-sized): {}.\n",
            notes.join("; ")
        );
    }
}

pub fn http(out: &mut String, r: &Results) {
    let c = &r.config;
    if !r.cells.iter().any(|cell| cell.http.is_some()) {
        let _ = writeln!(out, "## Short HTTP requests\n\nNot measured in this run.\n");
        return;
    }
    let _ = writeln!(
        out,
        "## Short HTTP requests\n\n{} concurrent connections from the client, a new TCP \
         connection for every request (`Connection: close`): `GET` of a {BODY_LEN}-byte file \
         from nginx (one worker) in every backend, through the target Service (in `forward` mode \
         straight to the backends in turn), with the veths' default offloads. Requests per \
         second answered whole and right (status 200, the exact body; higher is better); a \
         request without such an answer within 1 s failed.\n",
        c.http_connections
    );
    let failed = |m: Mode, s: u32| -> u64 {
        r.cells_of(m, s)
            .filter_map(|c| c.http.as_ref().map(|h| h.failed))
            .sum()
    };
    head(out, r);
    for s in r.tcp_counts() {
        let mut row: Vec<String> = c
            .modes
            .iter()
            .map(|&m| {
                let v = fmt_rps(r.http_rps(m, s));
                match failed(m, s) {
                    0 => v,
                    n => format!("{v}, **{n} failed**"),
                }
            })
            .collect();
        row.extend(
            others(r)
                .iter()
                .map(|m| ratio(r.http_rps(Mode::Portmap, s), r.http_rps(*m, s))),
        );
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
    out.push('\n');
    let mut lines = Vec::new();
    for &m in &c.modes {
        let of_mode: Vec<_> = r
            .cells
            .iter()
            .filter(|cell| cell.mode == m)
            .filter_map(|cell| cell.http.as_ref())
            .collect();
        let sum = |f: fn(&super::http::HttpLoad) -> u64| of_mode.iter().map(|h| f(h)).sum::<u64>();
        let total = sum(|h| h.failed);
        if total == 0 {
            continue;
        }
        let first = of_mode
            .iter()
            .find_map(|h| h.first_error.clone())
            .unwrap_or_default();
        lines.push(format!(
            "- {}: {total} failed ({} without an answer in time, {} not connected, {} broken \
             connections, {} wrong answers) of {} made; the first: {first}",
            m.name(),
            sum(|h| h.failed_timeout),
            sum(|h| h.failed_connect),
            sum(|h| h.failed_io),
            sum(|h| h.failed_answer),
            total + sum(|h| h.requests),
        ));
    }
    if lines.is_empty() {
        let _ = writeln!(out, "No request failed.\n");
    } else {
        let _ = writeln!(out, "**Failed requests:**\n\n{}\n", lines.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bulk::Bulk,
        http::HttpLoad,
        report,
        results::{Cell, Config, Machine},
        targets::{self, Verdict},
    };

    fn transfer(streams: u32, gbps: Option<f64>) -> Bulk {
        Bulk {
            streams,
            gbps,
            bytes: if gbps.is_some() { 1 << 30 } else { 0 },
            seconds: 2.0,
            retransmits: None,
            error: gbps
                .is_none()
                .then(|| "iperf3: unable to connect to server: Connection timed out".into()),
            sources: Vec::new(),
        }
    }

    fn cell(mode: Mode, gbps: Option<f64>, rps: f64, failed: u64) -> Cell {
        Cell {
            rep: 0,
            services: 1,
            mode,
            latency: None,
            established: None,
            new_flows: None,
            load_s: None,
            change: None,
            full_resync_skipped: false,
            bulk: vec![transfer(1, gbps), transfer(8, gbps.map(|g| g * 1.5))],
            http: Some(HttpLoad {
                concurrency: 32,
                seconds: 2.0,
                requests: (rps * 2.0) as u64,
                requests_per_s: rps,
                failed,
                failed_timeout: failed,
                first_error: (failed > 0).then(|| "no whole answer within 1s".into()),
                ..HttpLoad::default()
            }),
            tso_off: Vec::new(),
        }
    }

    fn results(cells: Vec<Cell>) -> Results {
        let modes = vec![Mode::Portmap, Mode::Iptables, Mode::Forward];
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
                duration_s: 2.0,
                repeats: 1,
                modes,
                connections: 10,
                fast_path: true,
                portmap_features: Default::default(),
                tcp_services: vec![1],
                tcp_streams: vec![1, 8],
                tcp_seconds: 2,
                http_connections: 32,
                remote_services: Vec::new(),
                modes_rotate: false,
            },
            cells,
            remote: Vec::new(),
            xdp_cost: Vec::new(),
            control: Vec::new(),
            kube_sync: Vec::new(),
            footprint: Vec::new(),
            complete: true,
            error: None,
            elapsed_s: 1.0,
        }
    }

    fn verdicts(r: &Results) -> Vec<Verdict> {
        targets::evaluate(r, report::fmt_secs)
            .into_iter()
            .filter(|t| t.what.starts_with("TCP bulk"))
            .map(|t| t.verdict)
            .collect()
    }

    #[test]
    fn a_failed_transfer_is_never_a_rate() {
        let r = results(vec![
            cell(Mode::Portmap, None, 0.0, 64),
            cell(Mode::Iptables, Some(8.0), 12_000.0, 0),
            cell(Mode::Forward, Some(9.0), 16_000.0, 0),
        ]);
        let mut out = String::new();
        bulk(&mut out, &r);
        let row = out
            .lines()
            .find(|l| l.starts_with("| 1 |"))
            .expect("a row for 1 Service");
        assert!(
            row.starts_with("| 1 | **FAILED** | 8.00 Gbit/s | 9.00 Gbit/s | **FAILED** |"),
            "{row}"
        );
        assert!(out.contains("**Failed transfers:**"), "{out}");
        assert!(out.contains("Connection timed out"), "{out}");
        let mut out = String::new();
        http(&mut out, &r);
        assert!(out.contains("0.0 k/s, **64 failed**"), "{out}");
        assert!(out.contains("64 without an answer in time"), "{out}");
        assert_eq!(verdicts(&r), [Verdict::Missed, Verdict::Missed]);
        assert!(report::render(&r).contains("portmap's transfers FAILED (2 of 2)"));
    }

    #[test]
    fn the_lowest_ratio_decides() {
        let r = results(vec![
            cell(Mode::Portmap, Some(8.5), 15_000.0, 0),
            cell(Mode::Iptables, Some(8.0), 12_000.0, 0),
            cell(Mode::Forward, Some(9.0), 16_000.0, 0),
        ]);
        assert_eq!(verdicts(&r), [Verdict::Holds, Verdict::Holds]);
        let slow = results(vec![
            cell(Mode::Portmap, Some(7.0), 15_000.0, 0),
            cell(Mode::Iptables, Some(8.0), 12_000.0, 0),
            cell(Mode::Forward, Some(9.0), 16_000.0, 0),
        ]);
        assert_eq!(verdicts(&slow), [Verdict::Missed, Verdict::Missed]);
        let mut out = String::new();
        bulk(&mut out, &slow);
        assert!(out.contains("| 1 | 7.00 Gbit/s | 8.00 Gbit/s | 9.00 Gbit/s | 0.88× | 0.78× |"));
        assert!(out.contains("No transfer failed."));
    }

    #[test]
    fn runs_from_before_the_tcp_measurements_still_render() {
        // The results of a full run from before TCP was measured, kept as
        // they were written.
        let old: Results =
            serde_json::from_str(include_str!("../fixtures/results-before-tcp.json"))
                .expect("fixtures/results-before-tcp.json parses");
        let text = report::render(&old);
        assert!(text.contains("## TCP bulk throughput\n\nNot measured in this run."));
        assert!(text.contains("## Short HTTP requests\n\nNot measured in this run."));
        assert!(text.contains("## Backends on another node (SNAT)\n\nNot measured in this run."));
        assert!(!text.contains("| **FAILED**"));
    }
}
