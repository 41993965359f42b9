//! The command line of `portmap-bench`, and its checks.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

use super::{modes::Mode, rules};

/// The kinds of cell (`--cells`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CellKind {
    Local,
    Remote,
}

#[derive(Debug, Parser)]
#[command(
    name = "portmap-bench",
    version,
    about = "Measure portmap against kube-proxy's iptables and nftables modes and plain forwarding, in namespaces of its own"
)]
pub struct BenchArgs {
    /// The `portmap` binary to measure (default: the one next to this
    /// executable, i.e. of the same build).
    #[arg(long, value_name = "PATH")]
    pub portmap: Option<PathBuf>,

    /// Service counts to measure at (comma-separated; at most 16384).
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1,1000,10000"
    )]
    pub services: Vec<u32>,

    /// Flows of the established-flow throughput measurement.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub flows: u32,

    /// Seconds per throughput measurement.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub duration: f64,

    /// Repetitions (medians and spreads are over these).
    #[arg(long, value_name = "R", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeats: u32,

    /// Modes to compare (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "portmap,iptables,nftables,forward"
    )]
    pub modes: Vec<Mode>,

    /// Where to write report.md, results.json and the SVG charts.
    #[arg(long, value_name = "DIR", default_value = "bench/latest")]
    pub out: PathBuf,

    /// Service counts at which the TCP measurements (bulk throughput, HTTP
    /// requests) are made (comma-separated; default: every one of
    /// --services).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub tcp_services: Vec<u32>,

    /// No TCP measurements at all (a quicker run of the packet-rate cells,
    /// for comparing one change of the dataplane with the next).
    #[arg(long, conflicts_with = "tcp_services")]
    pub no_tcp: bool,

    /// Which cells to measure (comma-separated): `local`, the backends on
    /// the node (with, once per repetition, portmap's per-packet cost,
    /// control plane and footprint); `remote`, the backends on another node,
    /// reached through SNAT / masquerading.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "local,remote"
    )]
    pub cells: Vec<CellKind>,

    /// Service counts at which the remote-backend cells are measured
    /// (comma-separated; default: every one of --services).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub remote_services: Vec<u32>,

    /// Concurrent connections of the short-HTTP-request load (each request
    /// on a new connection).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub http_connections: u32,

    /// New TCP connections per latency measurement.
    #[arg(long, value_name = "N", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// The iptables-restore to use (e.g. iptables-legacy-restore).
    #[arg(long, value_name = "CMD", default_value = "iptables-restore")]
    pub iptables_restore: String,

    /// Run portmap without its XDP fast path (`--backend-iface`).
    #[arg(long)]
    pub no_fast_path: bool,

    /// Measure nothing: write report.md and the charts into --out from the
    /// results.json of an earlier run.
    #[arg(long, value_name = "FILE")]
    pub from_results: Option<PathBuf>,

    /// Instead of the comparison: a soak of portmap alone, steady TCP and UDP
    /// requests to one Service while its backends go terminating, away and
    /// back; fails if a single request fails. Writes soak.md and soak.json.
    #[arg(long)]
    pub soak: bool,

    /// Seconds the soak runs.
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub soak_seconds: u64,

    /// Milliseconds between two steps of the soak's backend churn.
    #[arg(long, value_name = "MS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub churn_ms: u64,

    /// Threads making TCP connections during the soak.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub soak_workers: u64,

    /// Instead of the comparison: only "Following the API server"
    /// (`--kubernetes`'s code in process) at each of --services, --repeats
    /// times; prints the figures and writes kubesync.json.
    #[arg(long, conflicts_with = "soak")]
    pub kube_sync_only: bool,
}

/// The arguments with Service counts sorted and checked, modes deduplicated
/// (portmap alone for the soak), `--tcp-services` defaulted.
pub(crate) fn validate(args: &BenchArgs) -> Result<BenchArgs> {
    let mut services = args.services.clone();
    services.sort_unstable();
    services.dedup();
    if services.is_empty() {
        bail!("--services: give at least one Service count");
    }
    if let Some(bad) = services
        .iter()
        .find(|s| **s == 0 || **s > rules::MAX_SERVICES)
    {
        bail!(
            "--services: {bad} is out of range (1-{})",
            rules::MAX_SERVICES
        );
    }
    let mut modes = Vec::new();
    if args.soak {
        // The soak measures portmap alone: iptables and nft are not needed.
        modes.push(Mode::Portmap);
    }
    for m in args.modes.iter().filter(|_| !args.soak) {
        if !modes.contains(m) {
            modes.push(*m);
        }
    }
    if !(args.duration.is_finite() && (0.1..=600.0).contains(&args.duration)) {
        bail!(
            "--duration: {} is out of range (0.1-600 seconds)",
            args.duration
        );
    }
    let mut tcp_services = args.tcp_services.clone();
    tcp_services.sort_unstable();
    tcp_services.dedup();
    if let Some(bad) = tcp_services.iter().find(|s| !services.contains(s)) {
        bail!("--tcp-services: {bad} is not one of --services");
    }
    if args.no_tcp {
        tcp_services.clear();
    } else if tcp_services.is_empty() {
        tcp_services.clone_from(&services);
    }
    let mut remote_services = args.remote_services.clone();
    remote_services.sort_unstable();
    remote_services.dedup();
    if let Some(bad) = remote_services.iter().find(|s| !services.contains(s)) {
        bail!("--remote-services: {bad} is not one of --services");
    }
    let mut cells = Vec::new();
    for c in &args.cells {
        if !cells.contains(c) {
            cells.push(*c);
        }
    }
    if cells.is_empty() {
        bail!("--cells: give local, remote or both");
    }
    if !cells.contains(&CellKind::Remote) {
        remote_services.clear();
    } else if remote_services.is_empty() {
        remote_services.clone_from(&services);
    }
    Ok(BenchArgs {
        portmap: args.portmap.clone(),
        services,
        tcp_services,
        remote_services,
        cells,
        modes,
        out: args.out.clone(),
        iptables_restore: args.iptables_restore.clone(),
        from_results: None,
        ..*args
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        BenchArgs::command().debug_assert();
    }

    #[test]
    fn the_soak_measures_portmap_alone() {
        let args = BenchArgs::try_parse_from(["portmap-bench", "--soak", "--modes", "iptables"])
            .expect("parses");
        let checked = validate(&args).expect("valid");
        assert_eq!(checked.modes, [Mode::Portmap]);
        assert_eq!(checked.tcp_services, checked.services);
    }

    #[test]
    fn remote_cells_default_to_every_service_count() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["portmap-bench", "--services", "1,100"];
            argv.extend_from_slice(extra);
            validate(&BenchArgs::try_parse_from(argv).expect("parses"))
        };
        let all = parse(&[]).expect("valid");
        assert_eq!(all.cells, [CellKind::Local, CellKind::Remote]);
        assert_eq!(all.remote_services, [1, 100]);
        let one = parse(&["--cells", "remote", "--remote-services", "1"]).expect("valid");
        assert_eq!(
            (one.cells.as_slice(), one.remote_services.as_slice()),
            ([CellKind::Remote].as_slice(), [1].as_slice())
        );
        let local = parse(&["--cells", "local"]).expect("valid");
        assert!(local.remote_services.is_empty());
        assert!(parse(&["--remote-services", "5"]).is_err());
    }
}
