//! `report.md`: one table per metric (medians with their spread over the
//! repetitions), the ratios, the targets, the machine and the method.

use std::fmt::Write as _;

use super::{
    bulk::Bulk,
    http::HttpLoad,
    modes::Mode,
    results::{Cell, Results, Stat, Throughput},
    targets::{self, Target, Verdict},
    tcpreport,
};

pub fn pps(v: f64) -> (f64, &'static str) {
    if v >= 1e6 {
        (1e6, "Mpps")
    } else if v >= 1e3 {
        (1e3, "kpps")
    } else {
        (1.0, "pps")
    }
}

pub(crate) fn fmt_pps(s: Option<Stat>) -> String {
    let Some(s) = s else { return "–".into() };
    let (div, unit) = pps(s.median);
    let d = if div == 1e6 { 2 } else { 0 };
    format!(
        "{:.d$} {unit} ({:.d$}–{:.d$})",
        s.median / div,
        s.min / div,
        s.max / div
    )
}

pub(crate) fn fmt_us(s: Option<Stat>) -> String {
    let Some(s) = s else { return "–".into() };
    let d = if s.median >= 100.0 { 0 } else { 1 };
    format!("{:.d$} µs ({:.d$}–{:.d$})", s.median, s.min, s.max)
}

pub fn fmt_secs(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.2} s")
    } else if v >= 1e-3 {
        format!("{:.1} ms", v * 1e3)
    } else {
        format!("{:.0} µs", v * 1e6)
    }
}

fn fmt_secs_stat(s: Option<Stat>) -> String {
    match s {
        Some(s) if s.n > 1 => format!(
            "{} ({}–{})",
            fmt_secs(s.median),
            fmt_secs(s.min),
            fmt_secs(s.max)
        ),
        Some(s) => fmt_secs(s.median),
        None => "–".into(),
    }
}

pub(crate) fn fmt_ratio(a: Option<Stat>, b: Option<Stat>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "–".into(),
    }
}

pub fn table_head(out: &mut String, first: &str, cols: &[String]) {
    let _ = writeln!(out, "| {first} | {} |", cols.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
}

/// A per-mode table of one metric with portmap's ratios to the others.
fn metric_table(
    out: &mut String,
    r: &Results,
    stat: impl Fn(Mode, u32) -> Option<Stat>,
    fmt: impl Fn(Option<Stat>) -> String,
) {
    let modes = &r.config.modes;
    let others: Vec<Mode> = if modes.contains(&Mode::Portmap) {
        modes
            .iter()
            .copied()
            .filter(|m| *m != Mode::Portmap)
            .collect()
    } else {
        Vec::new()
    };
    let mut cols: Vec<String> = modes.iter().map(|m| m.name().to_string()).collect();
    cols.extend(others.iter().map(|m| format!("portmap/{}", m.name())));
    table_head(out, "Services", &cols);
    for s in r.service_counts() {
        let mut row: Vec<String> = modes.iter().map(|m| fmt(stat(*m, s))).collect();
        row.extend(
            others
                .iter()
                .map(|m| fmt_ratio(stat(Mode::Portmap, s), stat(*m, s))),
        );
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
    out.push('\n');
}

/// One line about a cell, printed as the run goes (and the failures under it).
/// Delivered Mpps, for the line printed after a cell.
pub(crate) fn mpps(t: Option<Throughput>) -> String {
    t.map_or("–".into(), |t| format!("{:.2}", t.delivered_pps / 1e6))
}

/// Each transfer as `streams×Gbit/s` (or `×FAILED`), for the line printed
/// after a cell.
pub(crate) fn bulk_summary(bulk: &[Bulk]) -> Vec<String> {
    bulk.iter()
        .map(|b| match b.gbps {
            Some(g) => format!("{}×{g:.2}", b.streams),
            None => format!("{}×FAILED", b.streams),
        })
        .collect()
}

/// The HTTP load's rate and failures, for the line printed after a cell.
pub(crate) fn http_summary(http: Option<&HttpLoad>) -> String {
    http.map_or("–".into(), |h| {
        let failed = if h.failed > 0 {
            format!(" ({} FAILED)", h.failed)
        } else {
            String::new()
        };
        format!("{:.0} req/s{failed}", h.requests_per_s)
    })
}

/// The errors of failed transfers and the HTTP load's first failure, each
/// on a line of its own after the cell's line.
pub(crate) fn push_failures(line: &mut String, bulk: &[Bulk], http: Option<&HttpLoad>) {
    for b in bulk {
        if let Some(e) = &b.error {
            let _ = write!(line, "\n    TCP bulk, {} stream(s) FAILED: {e}", b.streams);
        }
    }
    if let Some(e) = http.and_then(|h| h.first_error.as_ref()) {
        let _ = write!(line, "\n    HTTP: first failure: {e}");
    }
}

pub fn summary(c: &Cell) -> String {
    let bulk = bulk_summary(&c.bulk);
    let http = http_summary(c.http.as_ref());
    let tcp = if bulk.is_empty() {
        "–".to_string()
    } else {
        format!("{} Gbit/s", bulk.join(" "))
    };
    let mut line = format!(
        "rep {} {:>5} Services {:<8}: established {} Mpps, new {} Mpps, latency p50 {}, \
         TCP {tcp}, HTTP {http}",
        c.rep + 1,
        c.services,
        c.mode.name(),
        mpps(c.established),
        mpps(c.new_flows),
        c.latency
            .map_or("–".into(), |l| format!("{:.0} µs", l.p50_us)),
    );
    push_failures(&mut line, &c.bulk, c.http.as_ref());
    line
}

pub fn render(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# portmap benchmark\n");
    if !r.complete {
        let _ = writeln!(
            out,
            "> **INCOMPLETE RUN**: {}\n> The tables hold what was measured before it stopped.\n",
            r.error.as_deref().unwrap_or("stopped")
        );
    }
    machine(&mut out, r);
    target_section(&mut out, r);
    throughput(&mut out, r);
    latency(&mut out, r);
    tcpreport::bulk(&mut out, r);
    tcpreport::http(&mut out, r);
    super::remotereport::section(&mut out, r);
    control(&mut out, r);
    kube_sync(&mut out, r);
    footprint(&mut out, r);
    xdp_cost(&mut out, r);
    let _ = writeln!(
        out,
        "## Charts\n\n![established-flow throughput](throughput_established.svg)\n\n\
         ![new-flow throughput](throughput_new.svg)\n\n![first-packet latency](latency.svg)\n"
    );
    for (name, what) in super::charts::tcp_charts(r)
        .into_iter()
        .chain(super::charts::remote_charts(r))
    {
        let _ = writeln!(out, "![{what}]({name})\n");
    }
    method(&mut out, r);
    out
}

fn machine(out: &mut String, r: &Results) {
    let m = &r.machine;
    let c = &r.config;
    let f = &c.portmap_features;
    let _ = writeln!(out, "## Machine and run\n");
    let _ = writeln!(out, "- CPU: {} ({} cores)", m.cpu_model, m.cores);
    let _ = writeln!(out, "- Kernel: {}", m.kernel);
    let _ = writeln!(out, "- iptables: {}; nft: {}", m.iptables, m.nft);
    let _ = writeln!(out, "- Command: `{}`", r.command);
    let counts: Vec<String> = c.services.iter().map(u32::to_string).collect();
    let modes: Vec<&str> = c.modes.iter().map(|m| m.name()).collect();
    let _ = writeln!(
        out,
        "- Services: {}; modes: {}",
        counts.join(", "),
        modes.join(", ")
    );
    let order = if c.modes_rotate {
        "modes interleaved in each, each repetition starting one mode later"
    } else {
        "modes interleaved in each, in the same order"
    };
    let _ = writeln!(
        out,
        "- {} repetitions, {order}; {:.1} s per throughput measurement; \
         {} established flows; {} connections per latency cell; took {:.0} s",
        c.repeats, c.duration_s, c.flows, c.connections, r.elapsed_s
    );
    if !c.tcp_streams.is_empty() {
        let streams: Vec<String> = c.tcp_streams.iter().map(u32::to_string).collect();
        let counts: Vec<String> = r.tcp_counts().iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "- TCP, at {} Services: iperf3 downloads with {} stream(s), {} s each; short HTTP \
             requests from {} concurrent connections",
            counts.join(", "),
            streams.join(" and "),
            c.tcp_seconds,
            c.http_connections
        );
    }
    if r.cells.is_empty() && !r.remote.is_empty() {
        let _ = writeln!(
            out,
            "- Backends on the node: not measured in this run (`--cells remote`); the sections \
             below up to \"Backends on another node\" are empty"
        );
    }
    if !c.remote_services.is_empty() {
        let counts: Vec<String> = c.remote_services.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "- Backends on another node (SNAT), at {} Services",
            counts.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "- portmap: Services from {}; XDP fast path (`--backend-iface`) {}\n",
        if f.manifests {
            "`--manifests` (every Service)"
        } else {
            "`-p` (the target Service only, one backend: this build has no `--manifests`)"
        },
        if c.fast_path && f.backend_iface {
            "on"
        } else if f.backend_iface {
            "off (--no-fast-path)"
        } else {
            "not in this build"
        }
    );
}

fn target_section(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Targets\n");
    table_head(out, "Target", &["Measured".into(), "Verdict".into()]);
    let list = targets::evaluate(r, fmt_secs);
    for t in &list {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            t.what,
            t.measured,
            t.verdict.label()
        );
    }
    let missed: Vec<&Target> = list
        .iter()
        .filter(|t| t.verdict == Verdict::Missed)
        .collect();
    if missed.is_empty() {
        let _ = writeln!(out, "\nNo measured target is missed.\n");
        return;
    }
    let _ = writeln!(
        out,
        "\nMissed, by how much and why (from this run's figures; a ratio per repetition \
         compares the modes measured side by side in it):\n"
    );
    for t in missed {
        let why = t.why.as_deref().unwrap_or("by how much is in the table.");
        let _ = writeln!(out, "- {}: {why}", t.what);
    }
    let _ = writeln!(out);
}

fn throughput(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## Throughput, established flows\n\n{} UDP flows to the target Service; packets per second \
         delivered to the backends (higher is better).\n",
        r.config.flows
    );
    metric_table(out, r, |m, s| r.established(m, s), fmt_pps);
    let _ = writeln!(
        out,
        "## Throughput, new flows\n\nEvery packet a new UDP flow to the target Service; packets \
         per second delivered to the backends (higher is better).\n"
    );
    metric_table(out, r, |m, s| r.new_flows(m, s), fmt_pps);
    let _ = writeln!(
        out,
        "### Generated load\n\nWhat the load generator sent (median, established / new flows); \
         what was not delivered was dropped on the way.\n"
    );
    mode_table(out, r, |m, s| {
        let g = |f: fn(&super::results::Cell) -> Option<f64>| {
            r.stat(m, s, f).map_or("–".to_string(), |st| {
                let (div, unit) = pps(st.median);
                let d = if div == 1e6 { 2 } else { 0 };
                format!("{:.d$} {unit}", st.median / div)
            })
        };
        format!(
            "{} / {}",
            g(|c| c.established.map(|t| t.generated_pps)),
            g(|c| c.new_flows.map(|t| t.generated_pps))
        )
    });
    out.push('\n');
}

/// A table with a row per Service count and a column per mode.
fn mode_table(out: &mut String, r: &Results, cell: impl Fn(Mode, u32) -> String) {
    let cols: Vec<String> = r
        .config
        .modes
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    table_head(out, "Services", &cols);
    for s in r.service_counts() {
        let row: Vec<String> = r.config.modes.iter().map(|m| cell(*m, s)).collect();
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
}

fn latency(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## First-packet latency\n\n{} sequential new TCP connections per cell (connect, 32-byte \
         request, 32-byte response). Median p50 (lower is better; a ratio below 1 favours portmap).\n",
        r.config.connections
    );
    metric_table(out, r, |m, s| r.p50(m, s), fmt_us);
    let _ = writeln!(out, "p90 / p99 (medians over the repetitions):\n");
    mode_table(out, r, |m, s| {
        let p90 = r.stat(m, s, |c| c.latency.map(|l| l.p90_us));
        match (p90, r.p99(m, s)) {
            (Some(a), Some(b)) => format!("{:.0} / {:.0} µs", a.median, b.median),
            _ => "–".into(),
        }
    });
    let failures: usize = r
        .cells
        .iter()
        .filter_map(|c| c.latency.map(|l| l.failures))
        .sum();
    let _ = writeln!(
        out,
        "\nFailed connections over the whole run: {failures}.\n"
    );
}

fn kube_sync(out: &mut String, r: &Results) {
    if r.kube_sync.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Following the API server\n\n`portmap run --kubernetes`'s code in process, S Services × \
         10 endpoints: from the bytes of the list responses to every Service programmed, and from \
         the bytes of one watch event (an endpoint of one EndpointSlice replaced) to its change in \
         the maps, {} events per run (without the HTTP round trips and without \
         `--min-sync-period`'s batching; the first change after a quiet period is applied at \
         once). kube-proxy for scale: KEP-3453 reports a p50 network programming latency of 13 s \
         at 5,000 nodes with iptables partial restores; portmap's goal is under 50 ms end to end \
         for one change at 10,000 Services. Medians over the runs; lower is better.\n",
        super::kubesync::EVENTS
    );
    let cols = ["first sync", "one event: p50", "one event: p99"].map(String::from);
    table_head(out, "Services", &cols);
    for s in r.service_counts() {
        let runs: Vec<_> = r.kube_sync.iter().filter(|k| k.services == s).collect();
        let stat = |f: &dyn Fn(&super::kubesync::KubeSync) -> Option<f64>| {
            fmt_secs_stat(Stat::of(runs.iter().filter_map(|k| f(k))))
        };
        let row = [
            stat(&|k| Some(k.first_sync_s)),
            stat(&|k| k.event_quantile(0.5)),
            stat(&|k| k.event_quantile(0.99)),
        ];
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
    out.push('\n');
}

fn footprint(out: &mut String, r: &Results) {
    if r.footprint.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Start-up and memory\n\n`portmap run --manifests` with S Services × 10 endpoints on \
         default flags (maps sized from the manifests), alone in a namespace: the time until it \
         serves (manifests read and translated, maps created and programmed, programs attached), \
         its resident memory then (VmRSS) and at its peak (VmHWM, parsing included), the kernel \
         memory of its maps (their `memlock`: the Maglev pool, conntrack, per-CPU counters; \
         not part of the resident memory), and one `/metrics` scrape, which reads and prints a \
         series per frontend and per backend. Medians over the repetitions.\n"
    );
    let cols: Vec<String> = [
        "backends",
        "start-up",
        "resident",
        "peak resident",
        "maps (kernel)",
        "one scrape",
        "resident after it",
    ]
    .map(String::from)
    .to_vec();
    table_head(out, "Services", &cols);
    let mut counts: Vec<u32> = r.footprint.iter().map(|f| f.services).collect();
    counts.sort_unstable();
    counts.dedup();
    for s in counts {
        let of = |f: fn(&super::footprint::Footprint) -> f64| {
            Stat::of(r.footprint.iter().filter(|x| x.services == s).map(f))
        };
        let mib = |f: fn(&super::footprint::Footprint) -> f64| {
            of(f).map_or("–".to_string(), |st| format!("{:.0} MiB", st.median))
        };
        let backends = r
            .footprint
            .iter()
            .find(|x| x.services == s)
            .map_or(0, |x| x.backends);
        let row = [
            backends.to_string(),
            fmt_secs_stat(of(|f| f.start_s)),
            mib(|f| f.rss_mib),
            mib(|f| f.peak_rss_mib),
            mib(|f| f.maps_mib),
            fmt_secs_stat(of(|f| f.scrape_s)),
            mib(|f| f.rss_after_scrape_mib),
        ];
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
    let _ = writeln!(out);
}

fn control(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## Control plane\n\nS Services × 10 endpoints from nothing, then one endpoint of one \
         Service replaced. portmap: `Dataplane::apply` in process (manifests already parsed); \
         iptables: `iptables-restore` of the whole nat table into the empty node namespace, then \
         kube-proxy's `iptables-restore --noflush` of a full resync (what it does at every sync \
         before 1.27, and at startup) and of a partial one (≥ 1.27: KUBE-SERVICES and the changed \
         chains), each stopped after 60 s; nftables: `nft -f` of the whole table, then kube-proxy's \
         one-Service transaction. Lower is better.\n"
    );
    let cols: Vec<String> = [
        "portmap: all",
        "portmap: one changed",
        "iptables: all",
        "iptables: one changed (full resync)",
        "iptables: one changed (partial)",
        "nftables: all",
        "nftables: one changed",
    ]
    .map(String::from)
    .to_vec();
    table_head(out, "Services", &cols);
    for s in r.service_counts() {
        let pm = |f: fn(&super::control::PortmapControl) -> f64| {
            fmt_secs_stat(Stat::of(
                r.control.iter().filter(|c| c.services == s).map(f),
            ))
        };
        let cell =
            |m: Mode, f: fn(&super::results::Cell) -> Option<f64>| fmt_secs_stat(r.stat(m, s, f));
        let full_resync = {
            let cells: Vec<_> = r.cells_of(Mode::Iptables, s).collect();
            let timed_out = cells
                .iter()
                .any(|c| c.full_resync_skipped || c.change.is_some_and(|ch| ch.full_s.is_none()));
            let v = cell(Mode::Iptables, |c| c.change.and_then(|ch| ch.full_s));
            if timed_out && v == "–" {
                format!(
                    "> {:.0} s (stopped)",
                    super::modes::CHANGE_TIMEOUT.as_secs_f64()
                )
            } else {
                v
            }
        };
        let row = [
            pm(|c| c.full_s),
            pm(|c| c.change_s),
            cell(Mode::Iptables, |c| c.load_s),
            full_resync,
            cell(Mode::Iptables, |c| c.change.and_then(|ch| ch.partial_s)),
            cell(Mode::Nftables, |c| c.load_s),
            cell(Mode::Nftables, |c| c.change.and_then(|ch| ch.partial_s)),
        ];
        let _ = writeln!(out, "| {s} | {} |", row.join(" | "));
    }
    let parse = |s: u32| {
        Stat::of(
            r.control
                .iter()
                .filter(|c| c.services == s)
                .map(|c| c.translate_s),
        )
    };
    if let Some(big) = r
        .service_counts()
        .last()
        .and_then(|s| parse(*s).map(|p| (*s, p)))
    {
        let _ = writeln!(
            out,
            "\nParsing and translating the manifests, which `portmap run` adds before its first \
             apply: {} at {} Services.\n",
            fmt_secs(big.1.median),
            big.0
        );
    }
}

fn xdp_cost(out: &mut String, r: &Results) {
    let timing = if r.xdp_kernel_timed() {
        "nanoseconds per run as the kernel times its loop of runs (best of 5 rounds per \
         repetition; the kernel gives whole nanoseconds). `bench_pass`, a bare `XDP_PASS`, is \
         the loop's own cost per run, which every case includes."
    } else {
        "wall-clock nanoseconds per run (a run of an earlier version: each call's fixed cost, \
         see below, is spread over its runs and in every figure)."
    };
    let _ = writeln!(
        out,
        "## Per-packet cost of the XDP program\n\nBPF_PROG_TEST_RUN with a large repeat count, \
         {timing}\n"
    );
    table_head(
        out,
        "Case",
        &[
            "ns/packet".into(),
            "× bench_pass".into(),
            "over bench_pass".into(),
        ],
    );
    let pass = Stat::of(r.xdp_cost.iter().map(|c| c.pass_ns));
    type Case = (&'static str, fn(&super::xdpcost::XdpCost) -> f64);
    let cases: [Case; 8] = [
        ("bench_pass (XDP_PASS)", |c| c.pass_ns),
        ("(a) conntrack hit, UDP", |c| c.hit_ns),
        ("(a′) conntrack hit, TCP ACK", |c| c.tcp_hit_ns),
        ("(b) new flow", |c| c.new_flow_ns),
        ("(c) miss (port not published)", |c| c.miss_ns),
        ("(d) non-IP (ARP)", |c| c.arp_ns),
        ("(e) one lookup, conntrack's 40-byte key", |c| {
            c.lookup_wide_ns
        }),
        ("(f) one lookup, a 16-byte IPv4 key", |c| c.lookup_narrow_ns),
    ];
    for (name, f) in cases {
        let s = r.xdp_cost_stat(f);
        let over = match (s, pass) {
            (Some(a), Some(b)) => format!("{:+.1} ns", a.median - b.median),
            _ => "–".into(),
        };
        let v = s.map_or("–".into(), |s| {
            format!("{:.1} ns ({:.1}–{:.1})", s.median, s.min, s.max)
        });
        let _ = writeln!(out, "| {name} | {v} | {} | {over} |", fmt_ratio(s, pass));
    }
    let _ = writeln!(
        out,
        "\n(e) and (f) are programs of the benchmark's own: one LRU hash lookup of the same IPv4 \
         flow, and nothing else. (a) does that lookup with the 40-byte key (room for IPv6 \
         addresses) on every packet; (e) − (f) is what a table of IPv4 flows with 16-byte keys \
         would save it.\n"
    );
    let call = Stat::of(
        r.xdp_cost
            .iter()
            .map(|c| c.call_overhead_ns)
            .filter(|ns| *ns > 0.0),
    );
    if let Some(call) = call {
        let _ = writeln!(
            out,
            "Each call of BPF_PROG_TEST_RUN with more than one repeat also costs {:.1} ms once, \
             measured as the wall-clock time of a call with 2 repeats: the kernel swaps the \
             program into its XDP dispatcher and back, waiting for RCU each time. Reports of \
             earlier versions divided the calls' wall-clock time by their 1,000,000 repeats, \
             which added {:.1} ns to every case and pulled every ratio towards 1.\n",
            call.median / 1e6,
            call.median / 1e6
        );
    }
    let generator = Stat::of(
        r.xdp_cost
            .iter()
            .map(|c| c.generator_call_ns)
            .filter(|ns| *ns > 0.0),
    );
    match generator {
        Some(g) => {
            let _ = writeln!(
                out,
                "The load generator's program stays attached to an idle veth, which keeps it in \
                 the dispatcher: its calls cost {:.1} µs each beyond their runs.\n",
                g.median / 1e3
            );
        }
        None if call.is_some() => {
            let _ = writeln!(
                out,
                "The load generator's calls (about 50 ms each) paid the same fixed cost in this \
                 run: its CPU sat idle for that long in every call, which lowered the rates of \
                 every mode alike.\n"
            );
        }
        None => {}
    }
}

fn method(out: &mut String, r: &Results) {
    let rotation = if r.config.modes_rotate {
        ", and each repetition starts one mode later than the one before, so that no mode is \
         always the first after the footprint measurements"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "## Method\n\n\
         - Every cell (repetition × Service count × mode) gets fresh namespaces: client → node → \
         4 backends over veths (198.18.0.0/15; transmit checksum offload off), so no conntrack, \
         neighbour or rule state carries over. Modes are interleaved within each repetition so \
         drift affects them alike{}.\n\
         - Services: VIPs in 198.19.64.0/18 (inside the benchmarking range rather than \
         10.96.0.0/12, so no packet is ever addressed outside it), TCP port 80, 10 endpoints each \
         at addresses that do not exist; the target Service is the last one, with TCP and UDP \
         port 80 and the 4 real backends. In the iptables layout its KUBE-SERVICES rule is last.\n\
         - Load: `bench_loadgen` run with BPF_PROG_RUN live frames (one thread, pinned to one \
         CPU) on the client's veth, 64-byte UDP frames XDP_TX'd to the node, its program kept in \
         the kernel's XDP dispatcher by an attachment to an idle veth (else every call waits \
         for RCU twice, and the generating CPU sat idle half the time); `bench_sink` on \
         each backend's veth counts and drops them. The node's client-facing veth runs portmap's \
         XDP program, or `bench_pass` in the other modes (XDP_TX into a veth needs its peer to \
         run XDP). A 0.3 s warm-up precedes each measurement; before the new-flow one, new flows \
         until 1.25 × half portmap's default conntrack table (262,144 entries, two a flow) have \
         been sent (at most 10 s), so that portmap's table is full and each new flow evicts.\n\
         - forward: no NAT; the client sends to backend 0's address (the stack's ceiling).\n\
         - GRO is on at the client's and the backends' veths (the ends that stand for other \
         hosts), so frames that portmap's fast path redirects into the node's veths are received \
         there; in every mode alike. portmap runs as `portmap run --iface eth-c` with \
         `--manifests`, `--backend-iface eth-b0..3` (the fast path) and `--no-socket-lb` where \
         this build has them: the client is another host, whose packets must cross XDP.\n\
         - Latency is measured before the throughput runs (no sinks attached), against an echo \
         server in each backend namespace.\n\
         - The TCP measurements come last in each cell, after the UDP load, with what a node of \
         the mode has (no `bench_pass`) and the veths' default offloads given back (transmit \
         checksum offload, scatter-gather, TSO, GSO; checked with `ethtool -k`): iperf3 \
         downloads (`-R`), 1 stream then 8, from a one-off `iperf3 --server` in backend 0 \
         through a Service of its own (VIP 198.19.63.80, TCP port 80, one endpoint: iperf3's \
         control and data connections must reach the same server; in the iptables layout its \
         rule comes first, the target's stays last); then the HTTP load (the benchmark's own \
         client: one task per connection, on a thread per CPU, up to 4) against nginx on every \
         backend. A transfer or request that fails is counted as failed, with its error, never \
         as a rate.\n\
         - Each cell, and its latency measurement once the mode is programmed, starts when the \
         machine is quiet (under 15 % busy over 250 ms; at most 2 s plus 2 s per 1,000 Services): the kernel tears \
         down a namespace that held 10,000 rules in the background, and a daemon's start-up is \
         not latency.\n\
         - iptables and nftables rulesets follow kube-proxy's layouts, in the local cells without \
         masquerading (portmap does not SNAT flows to backends on its node either), in the \
         remote-backend cells with it; the iptables binary is `{}`.\n\
         - With 2 shared CPUs absolute numbers are noisy: compare the modes side by side and \
         read the ratios.",
        rotation, r.machine.iptables
    );
}
