//! `portmap-bench`: portmap against kube-proxy's iptables and nftables modes
//! and plain forwarding, in namespaces it builds, with a report in Markdown,
//! JSON and SVG; or, with `--soak`, portmap alone under backend churn.
//!
//! It drives a `portmap` binary (by default the one next to its own
//! executable) and portmap's control plane as a library
//! (`portmap-userspace`), and loads eBPF programs of its own
//! (`portmap-bench-ebpf`: the load generator, the sink and the XDP_PASS
//! baseline), which the `portmap` binary does not carry.
//!
//! For each repetition, the per-packet cost of the XDP program and portmap's
//! control plane are measured, then for each Service count every mode in turn
//! (interleaved, so drift affects them alike, and in an order that rotates
//! from one repetition to the next), each in fresh namespaces:
//! first-packet latency, established-flow and new-flow throughput, TCP bulk
//! throughput (iperf3) and short HTTP requests (nginx), and for iptables and
//! nftables the time to load and to change their rulesets.

mod args;
mod bulk;
mod charts;
mod control;
mod footprint;
mod frames;
mod host;
mod http;
mod kubesync;
mod latency;
mod loadgen;
mod missed;
mod modes;
mod nftrules;
mod remote;
mod remotereport;
mod report;
mod results;
mod rules;
mod soak;
mod targets;
mod tcpreport;
mod topo;
mod xdpcost;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use portmap_testkit::signals;
use portmap_userspace::dataplane::Limits;

pub use self::{args::BenchArgs, modes::Mode};
use self::{
    args::{CellKind, validate},
    http::PeerLog,
    loadgen::{BenchObject, PASS, SINK},
    modes::{Backends, Env, Features},
    results::{Cell, Config, Results, Throughput},
    rules::Services,
    topo::{BACKEND_IF, CLIENT_IF, CLIENT_IP, CLIENT_MAC, NODE_CLIENT_IF, NODE_MAC, Topology},
};

/// The benchmark's eBPF object (`bench_pass`, `bench_loadgen`,
/// `bench_sink`), built by this crate's build script.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portmap-bench-ebpf"))
}

/// Runs of BPF_PROG_TEST_RUN per case of the per-packet cost.
const XDP_COST_REPEAT: u32 = 5_000_000;
const WARMUP: Duration = Duration::from_millis(300);
/// At most this long sending new flows to fill the conntrack table before
/// the new-flow measurement.
const FILL_LIMIT: Duration = Duration::from_secs(10);

/// iperf3 measures whole seconds: `--duration` rounded, at least one.
fn tcp_seconds(args: &BenchArgs) -> u32 {
    args.duration.round().max(1.0) as u32
}

/// Longest wait for a quiet machine: the kernel's teardown of a cell grows
/// with its rules, so 2 s plus 2 s per 1,000 Services of the largest count.
fn quiet_wait(args: &BenchArgs) -> Duration {
    let largest = args.services.iter().copied().max().unwrap_or(0);
    Duration::from_secs(2 + u64::from(largest) / 500)
}

struct Ctx {
    args: BenchArgs,
    env: Env,
    bench: BenchObject,
    progress: ProgressBar,
    pid: u32,
    cells: u32,
    /// Service count at which a full iptables resync timed out.
    resync_timed_out_at: Option<u32>,
}

impl Ctx {
    fn say(&self, line: String) {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            self.progress.println(line);
        }
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `portmap-bench ARGS`: runs, and turns the outcome into an exit status.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(&BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `portmap` next to this executable, as cargo builds them.
fn default_portmap() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let path = exe.with_file_name("portmap");
    if !path.is_file() {
        bail!(
            "no portmap next to {} (build it, e.g. `cargo build --release`, or give --portmap)",
            exe.display()
        );
    }
    Ok(path)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(path) = &args.from_results {
        return rerender(path, &args.out);
    }
    let args = validate(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("portmap-bench must run as root: it creates network namespaces and loads eBPF");
    }
    if args.kube_sync_only {
        return run_kube_sync(&args);
    }
    let (iptables_restore, nft) = host::tools(&args)?;
    signals::install();
    let started = Instant::now();
    let pid = std::process::id();
    let scratch = Scratch(std::env::temp_dir().join(format!("portmap-bench-{pid}")));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("creating {}", scratch.0.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create it", args.out.display()))?;
    // The daemon runs from a copy: a rebuild of the workspace during a long
    // run must not change what is measured.
    let portmap = match &args.portmap {
        Some(path) => path.clone(),
        None => default_portmap()?,
    };
    let exe = scratch.0.join("portmap");
    std::fs::copy(&portmap, &exe)
        .with_context(|| format!("copying {} to {}", portmap.display(), exe.display()))?;
    let features = Features::detect(&exe)?;
    let env = Env {
        exe,
        scratch: scratch.0.clone(),
        features,
        fast_path: !args.no_fast_path,
        iptables_restore,
        nft,
    };
    if args.soak {
        return run_soak(&args, &env);
    }
    let machine = host::machine(&env.iptables_restore, &env.nft);
    let mut results = Results {
        version: 1,
        command: host::command_line(),
        machine,
        config: Config {
            services: args.services.clone(),
            flows: args.flows,
            duration_s: args.duration,
            repeats: args.repeats,
            modes: args.modes.clone(),
            connections: args.connections as usize,
            fast_path: !args.no_fast_path,
            portmap_features: env.features.clone(),
            tcp_services: args.tcp_services.clone(),
            tcp_streams: bulk::STREAMS.to_vec(),
            tcp_seconds: tcp_seconds(&args),
            http_connections: args.http_connections,
            remote_services: args.remote_services.clone(),
            modes_rotate: true,
        },
        cells: Vec::new(),
        remote: Vec::new(),
        xdp_cost: Vec::new(),
        control: Vec::new(),
        kube_sync: Vec::new(),
        footprint: Vec::new(),
        complete: false,
        error: None,
        elapsed_s: 0.0,
    };
    let local = args.cells.contains(&CellKind::Local);
    let local_counts = if local { args.services.len() } else { 0 };
    let cells_per_rep = ((local_counts + args.remote_services.len()) * args.modes.len()) as u64;
    let portmap = args.modes.contains(&Mode::Portmap);
    let extra_per_rep = if portmap && local {
        1 + 2 * args.services.len() as u64
    } else {
        0
    };
    let progress = ProgressBar::new(u64::from(args.repeats) * (cells_per_rep + extra_per_rep));
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    if !env.features.manifests && portmap {
        let note =
            "note: this portmap has no --manifests: it publishes the target Service only (-p)";
        eprintln!("{note}");
    }
    let mut ctx = Ctx {
        env,
        bench: BenchObject::load()?,
        args,
        progress,
        pid,
        cells: 0,
        resync_timed_out_at: None,
    };
    let outcome = measure_all(&mut ctx, &mut results);
    ctx.progress.finish_and_clear();
    results.complete = outcome.is_ok();
    results.error = outcome.as_ref().err().map(|e| format!("{e:#}"));
    results.elapsed_s = started.elapsed().as_secs_f64();
    let written = write_outputs(&results, &ctx.args.out);
    outcome?;
    written?;
    eprintln!("report: {}", ctx.args.out.join("report.md").display());
    Ok(())
}

fn run_soak(args: &BenchArgs, env: &Env) -> Result<()> {
    if !env.features.manifests {
        bail!("--soak: this portmap has no --manifests");
    }
    eprintln!(
        "soak: {} s, a churn step every {} ms, {} TCP workers and one UDP exchange",
        args.soak_seconds, args.churn_ms, args.soak_workers
    );
    let report = soak::run(
        env,
        Duration::from_secs(args.soak_seconds),
        Duration::from_millis(args.churn_ms),
        args.soak_workers as usize,
    )?;
    let markdown = report.markdown();
    println!("{markdown}");
    let json = serde_json::to_string_pretty(&report).context("serializing the soak report")?;
    for (name, text) in [("soak.md", markdown), ("soak.json", json)] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.passed() {
        bail!(
            "soak failed: {} of {} TCP connections and {} of {} UDP exchanges failed",
            report.tcp_failed,
            report.tcp_sent,
            report.udp_failed,
            report.udp_sent
        );
    }
    Ok(())
}

/// `--kube-sync-only`: the API-server cell alone, each count and repetition.
fn run_kube_sync(args: &BenchArgs) -> Result<()> {
    signals::install();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create it", args.out.display()))?;
    let mut runs = Vec::new();
    for rep in 0..args.repeats {
        for &count in &args.services {
            signals::check()?;
            let k = kubesync::measure(rep, count)?;
            let ms = |q: f64| k.event_quantile(q).map_or(f64::NAN, |s| s * 1e3);
            println!(
                "rep {rep}, {count} Services: first sync {:.2} s; one event p50 {:.1} ms, \
                 p99 {:.1} ms, max {:.1} ms",
                k.first_sync_s,
                ms(0.5),
                ms(0.99),
                ms(1.0)
            );
            runs.push(k);
        }
    }
    let path = args.out.join("kubesync.json");
    let json = serde_json::to_string_pretty(&runs).context("serializing the results")?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
}

fn rerender(path: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--from-results {}", path.display()))?;
    let mut results: Results = serde_json::from_str(&text)
        .with_context(|| format!("--from-results {}: not a results.json", path.display()))?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create it", out.display()))?;
    let copy = out.join("results.json");
    if std::fs::canonicalize(&copy).ok() != std::fs::canonicalize(path).ok() {
        std::fs::write(&copy, &text).with_context(|| format!("writing {}", copy.display()))?;
    }
    results.config.services.sort_unstable();
    std::fs::write(out.join("report.md"), report::render(&results))
        .with_context(|| format!("writing {}", out.join("report.md").display()))?;
    std::panic::catch_unwind(|| charts::write_all(&results, out))
        .map_err(|_| anyhow::anyhow!("drawing the charts panicked"))?
}

fn write_outputs(results: &Results, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(results).context("serializing the results")?;
    let path = dir.join("results.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("report.md");
    std::fs::write(&path, report::render(results))
        .with_context(|| format!("writing {}", path.display()))?;
    // The charts come last: whatever goes wrong there, the numbers are saved.
    std::panic::catch_unwind(|| charts::write_all(results, dir))
        .map_err(|_| anyhow::anyhow!("drawing the charts panicked"))?
}

fn measure_all(ctx: &mut Ctx, results: &mut Results) -> Result<()> {
    let reps = ctx.args.repeats;
    let local = ctx.args.cells.contains(&CellKind::Local);
    let counts = if local {
        ctx.args.services.clone()
    } else {
        Vec::new()
    };
    let remote_counts = ctx.args.remote_services.clone();
    let modes = ctx.args.modes.clone();
    for rep in 0..reps {
        let tag = format!("rep {}/{reps}", rep + 1);
        if local && modes.contains(&Mode::Portmap) {
            ctx.progress
                .set_message(format!("{tag}: XDP per-packet cost"));
            let cost = xdpcost::measure(&ctx.bench, XDP_COST_REPEAT)?;
            results.xdp_cost.push(cost);
            ctx.progress.inc(1);
            for &count in &counts {
                signals::check()?;
                ctx.progress
                    .set_message(format!("{tag}: portmap control plane, {count} Services"));
                results.control.push(control::measure(rep, count)?);
                ctx.progress.set_message(format!(
                    "{tag}: portmap following the API server, {count} Services"
                ));
                results.kube_sync.push(kubesync::measure(rep, count)?);
                ctx.progress.inc(1);
            }
            for &count in &counts {
                signals::check()?;
                ctx.progress
                    .set_message(format!("{tag}: portmap footprint, {count} Services"));
                let name = format!("pm-bench-{}-fp{rep}-{count}", ctx.pid);
                let f = footprint::measure(&ctx.env, rep, count, &name)
                    .with_context(|| format!("portmap footprint at {count} Services"))?;
                ctx.say(format!(
                    "portmap footprint, {count} Services: started in {:.2} s, {:.0} MiB resident \
                     ({:.0} MiB at peak), maps {:.0} MiB",
                    f.start_s, f.rss_mib, f.peak_rss_mib, f.maps_mib
                ));
                results.footprint.push(f);
                ctx.progress.inc(1);
            }
        }
        for &count in &counts {
            for mode in modes::rotated(&modes, rep) {
                signals::check()?;
                let c = cell(ctx, rep, count, mode, &tag)?;
                ctx.say(report::summary(&c));
                results.cells.push(c);
                ctx.progress.inc(1);
            }
        }
        for &count in &remote_counts {
            for mode in modes::rotated(&modes, rep) {
                signals::check()?;
                let c = remote::cell(ctx, rep, count, mode, &tag)?;
                ctx.say(remotereport::summary(&c));
                results.remote.push(c);
                ctx.progress.inc(1);
            }
        }
    }
    Ok(())
}

fn cell(ctx: &mut Ctx, rep: u32, count: u32, mode: Mode, tag: &str) -> Result<Cell> {
    let step = |ctx: &Ctx, what: &str| {
        ctx.progress
            .set_message(format!("{tag}: {count} Services, {}: {what}", mode.name()))
    };
    let services = Services::new(count)?.with_bulk();
    ctx.cells += 1;
    let prefix = format!("pm-bench-{}-{}", ctx.pid, ctx.cells);
    let name = format!("r{rep}-s{count}-{}", mode.name());
    step(ctx, "waiting for a quiet machine");
    host::wait_until_quiet(quiet_wait(&ctx.args))?;
    step(ctx, "namespaces");
    let topo = topo::new(&prefix)?;
    step(ctx, "programming");
    let programmed = modes::program(mode, &topo, &services, &ctx.env, &name, Backends::Here)
        .with_context(|| format!("{}: programming {count} Services", mode.name()))?;
    // XDP_TX into the client's veth needs a program on its peer.
    let pass = match mode {
        Mode::Portmap => None,
        _ => Some(ctx.bench.attach(PASS, &topo.node, NODE_CLIENT_IF)?),
    };
    // A daemon's start-up, a ruleset's load: done before measuring.
    step(ctx, "waiting for a quiet machine");
    host::wait_until_quiet(quiet_wait(&ctx.args))?;
    step(ctx, "first-packet latency");
    let echo = latency::EchoServers::start(&topo.backends)?;
    let latency = latency::measure(
        &topo.client,
        programmed.target,
        ctx.args.connections as usize,
    )
    .with_context(|| format!("{}: first-packet latency at {count} Services", mode.name()))?;
    drop(echo);

    let mut sinks = Vec::new();
    for ns in &topo.backends {
        sinks.push(ctx.bench.attach(SINK, ns, BACKEND_IF)?);
    }
    let ifindex = topo.client.ifindex(CLIENT_IF)?;
    let src = SocketAddrV4::new(CLIENT_IP, 1024);
    let template = frames::udp(NODE_MAC, CLIENT_MAC, src, programmed.target);
    step(ctx, "established flows");
    let established = throughput(ctx, &topo, ifindex, &template, ctx.args.flows, false)
        .with_context(|| format!("{}: established flows at {count} Services", mode.name()))?;
    step(ctx, "new flows");
    let new_flows = throughput(ctx, &topo, ifindex, &template, 0, true)
        .with_context(|| format!("{}: new flows at {count} Services", mode.name()))?;
    drop(sinks);
    // The TCP measurements: what a node of this mode has, no more (no
    // bench_pass), with the veths' default offloads.
    drop(pass);
    let tcp = if ctx.args.tcp_services.contains(&count) {
        tcp(ctx, &topo, &programmed, &name, &|what| step(ctx, what))
            .with_context(|| format!("{}: TCP at {count} Services", mode.name()))?
    } else {
        Tcp::default()
    };

    step(ctx, "changing one Service");
    let skip_full = ctx.resync_timed_out_at.is_some_and(|s| s <= count);
    let change = modes::change(&programmed, &topo, &services, &ctx.env, &name, skip_full)
        .with_context(|| format!("{}: changing one of {count} Services", mode.name()))?;
    if mode == Mode::Iptables && !skip_full && change.full_s.is_none() {
        ctx.resync_timed_out_at = Some(count);
    }
    let load_s = programmed.load_time.map(|d| d.as_secs_f64());
    step(ctx, "tearing down");
    modes::teardown(programmed, &topo, &ctx.env, &name)
        .with_context(|| format!("{}: tearing down", mode.name()))?;
    drop(topo);
    Ok(Cell {
        rep,
        services: count,
        mode,
        latency: Some(latency),
        established: Some(established),
        new_flows: Some(new_flows),
        load_s,
        change: matches!(mode, Mode::Iptables | Mode::Nftables).then_some(change),
        full_resync_skipped: mode == Mode::Iptables && skip_full,
        bulk: tcp.bulk,
        http: tcp.http,
        tso_off: tcp.tso_off,
    })
}

/// The TCP measurements of a cell (none where --tcp-services leaves it out).
#[derive(Default)]
struct Tcp {
    bulk: Vec<bulk::Bulk>,
    http: Option<http::HttpLoad>,
    tso_off: Vec<String>,
}

/// TCP bulk throughput with each stream count, then the short HTTP requests.
fn tcp(
    ctx: &Ctx,
    topo: &Topology,
    programmed: &modes::Programmed,
    name: &str,
    step: &dyn Fn(&str),
) -> Result<Tcp> {
    step("TCP: default offloads");
    let tso_off = topo::default_offloads(topo)?;
    step("waiting for a quiet machine");
    host::wait_until_quiet(quiet_wait(&ctx.args))?;
    let target = programmed
        .bulk_target
        .context("the cell's Services have no bulk Service")?;
    let mut transfers = Vec::new();
    for streams in bulk::STREAMS {
        signals::check()?;
        step(&format!("TCP bulk, {streams} stream(s)"));
        transfers.push(bulk::run(
            &topo.client,
            &topo.backends[0],
            target,
            streams,
            tcp_seconds(&ctx.args),
            &ctx.env.scratch,
            &format!("{name}-{streams}"),
        )?);
    }
    step("short HTTP requests");
    let nginx = http::Nginx::start(&topo.backends, &ctx.env.scratch, name, PeerLog::Off)?;
    let http = http::run(
        &topo.client,
        &programmed.http_targets,
        ctx.args.http_connections,
        WARMUP,
        Duration::from_secs_f64(ctx.args.duration),
    )?;
    drop(nginx);
    Ok(Tcp {
        bulk: transfers,
        http: Some(http),
        tso_off,
    })
}

/// Frames per second delivered with `flows` flows (0: a new flow each).
/// `fill_conntrack`: first send new flows until portmap's conntrack table
/// is full (the local cells' new-flow measurement; the remote cells
/// measure what fills first, the SNAT ports).
fn throughput(
    ctx: &mut Ctx,
    topo: &Topology,
    ifindex: u32,
    template: &[u8],
    flows: u32,
    fill_conntrack: bool,
) -> Result<Throughput> {
    ctx.bench.configure(template, flows)?;
    let mut warmed = ctx
        .bench
        .generate(&topo.client, ifindex, template, WARMUP)?
        .generated;
    // New flows are measured with the conntrack table full (portmap's
    // default size, two entries a flow), so every flow evicts: the steady
    // state of a node taking new flows, not an empty table's first second.
    // The generator's flows never repeat, so these are all distinct.
    let fill = u64::from(Limits::default().conntrack) / 2 * 5 / 4;
    let filling = Instant::now();
    while fill_conntrack && warmed < fill && filling.elapsed() < FILL_LIMIT {
        warmed += ctx
            .bench
            .generate(&topo.client, ifindex, template, WARMUP)?
            .generated;
    }
    signals::sleep(Duration::from_millis(50))?;
    let before = ctx.bench.sunk()?;
    let duration = Duration::from_secs_f64(ctx.args.duration);
    let burst = ctx
        .bench
        .generate(&topo.client, ifindex, template, duration)?;
    signals::sleep(Duration::from_millis(50))?;
    let delivered = ctx.bench.sunk()?.saturating_sub(before);
    let seconds = burst.elapsed.as_secs_f64();
    Ok(Throughput {
        generated: burst.generated,
        delivered,
        seconds,
        generated_pps: burst.generated as f64 / seconds,
        delivered_pps: delivered as f64 / seconds,
    })
}
