//! Command line: `portmap run` and `portmap list`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand, error::ErrorKind};

use crate::{
    control, daemon,
    dataplane::{DEFAULT_PIN_DIR, XdpMode},
    list,
    spec::PublishSpec,
};

#[derive(Debug, Parser)]
#[command(
    name = "portmap",
    version,
    about = "Service port mapping in XDP: Docker's -p and Kubernetes Services without iptables"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish ports: attach the dataplane and keep it programmed until stopped.
    Run(Box<RunArgs>),
    /// Show what a running `portmap run` publishes, with its counters.
    List(ListArgs),
    /// Remove a dataplane left pinned (by `--keep-datapath` or a crash):
    /// detaches its programs and frees its maps, ending the flows it carries.
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The pin directory of the dataplane to remove.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub bpffs_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface whose incoming traffic is translated (repeatable).
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub ifaces: Vec<String>,

    /// Interface towards backends (repeatable): turns on the fast path.
    /// Translated requests go from the --iface interfaces to these by
    /// XDP_REDIRECT, and replies are translated back by tc here and
    /// redirected towards the client; what cannot take the fast path falls
    /// back to the kernel, counted.
    #[arg(long = "backend-iface", value_name = "IF")]
    pub backend_ifaces: Vec<String>,

    /// Publish a port: [HOST_IP:]HOST_PORT[-END]:BACKEND_IP:BACKEND_PORT[-END][/tcp|/udp]
    /// (IPv6 addresses in brackets). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<(String, PublishSpec)>,

    /// Only sources in this prefix may reach the `-p` ports (repeatable; one
    /// list for all of them). Others are dropped in XDP and counted
    /// (`dropped_source_range`), as `loadBalancerSourceRanges` does for
    /// LoadBalancer Services.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_from: Vec<crate::model::Cidr>,

    /// Kubernetes manifests to publish: a YAML/JSON file or a directory of
    /// them (repeatable), with Services, EndpointSlices and Pods as
    /// `kubectl get svc,endpointslices,pods -A -o yaml` prints them. Watched:
    /// edits are applied live; a bad edit is reported and changes nothing.
    #[arg(long, value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// This node's name, for `nodeName` and the `Local` traffic policies.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// An address nodePorts are published on (repeatable). Default: every
    /// address of this node.
    #[arg(long, value_name = "IP")]
    pub node_ip: Vec<std::net::IpAddr>,

    /// Range nodePorts are assigned from when a Service leaves them out.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-32767", value_parser = parse_port_range)]
    pub node_port_range: std::ops::RangeInclusive<u16>,

    /// Range ClusterIPs are assigned from when a Service leaves them out
    /// (repeatable; one per family).
    #[arg(long, value_name = "CIDR", default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    pub service_cidr: Vec<crate::model::Cidr>,

    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9640")]
    pub metrics_addr: SocketAddr,

    /// How to attach XDP: native (in the driver), generic, or auto (native,
    /// else generic with a warning).
    #[arg(long, value_enum, default_value_t)]
    pub xdp_mode: XdpMode,

    /// cgroup v2 directory whose processes get socket-level load balancing:
    /// their connects and UDP sends to a frontend (localhost:PORT, a node
    /// address, a ClusterIP, ...) go straight to a backend. Default: the root
    /// of the unified hierarchy (every process; cgroup2 is mounted on
    /// /sys/fs/cgroup/unified if it is mounted nowhere).
    #[arg(long, value_name = "PATH", conflicts_with = "no_socket_lb")]
    pub cgroup: Option<PathBuf>,

    /// No socket-level load balancing: only traffic arriving on --iface is
    /// translated (localhost:PORT and the node's own processes are not).
    #[arg(long)]
    pub no_socket_lb: bool,

    /// Unix socket that `portmap list` talks to.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,

    /// Where maps and program links are pinned (on a bpf filesystem, mounted
    /// if needed). A dataplane pinned there by an earlier `portmap run` is
    /// adopted: its flows carry on.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub bpffs_dir: PathBuf,

    /// On exit, leave the dataplane pinned and forwarding, for the next
    /// `portmap run` to adopt (upgrades, restarts). Without it, exit detaches
    /// everything.
    #[arg(long)]
    pub keep_datapath: bool,

    /// Load programs whose code differs from this build's, same maps (for
    /// upgrade tests).
    #[arg(long, hide = true, default_value_t = 0)]
    pub datapath_variant: u32,

    /// Most frontends (published address, port and protocol) at once.
    #[arg(long, value_name = "N", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub max_frontends: u32,

    /// Most backends at once (also sizes the Maglev table pool, 400 slots each).
    #[arg(long, value_name = "N", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=1 << 22))]
    pub max_backends: u32,

    /// Conntrack entries (two per flow); the least recently used are evicted when full.
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(64..=1 << 26))]
    pub conntrack_entries: u32,

    /// Idle timeout of an established TCP flow.
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration)]
    pub tcp_timeout: Duration,

    /// Idle timeout of a TCP flow before its first reply.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub tcp_syn_timeout: Duration,

    /// Idle timeout of a TCP flow after a FIN or RST.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub tcp_closing_timeout: Duration,

    /// Idle timeout of a UDP flow.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub udp_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The control socket of the `portmap run` to ask.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a range like 30000-32767"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{p}' is not a port 1-65535"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a > b {
        return Err(format!("{a}-{b} ends before it starts"));
    }
    Ok(a..=b)
}

fn parse_cidr(s: &str) -> Result<crate::model::Cidr, String> {
    s.parse()
}

fn parse_publish(s: &str) -> Result<(String, PublishSpec), String> {
    s.parse().map(|spec| (s.to_string(), spec))
}

/// `30s`, `5m`, `6h`, `1d`, `250ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30s, 5m or 6h"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "'{s}' has an unknown unit '{unit}' (use ms, s, m, h or d)"
            ));
        }
    };
    match n.checked_mul(millis_per_unit) {
        Some(0) => Err("a timeout must be positive".into()),
        // The dataplane keeps nanoseconds in a u64: about 584 years.
        Some(ms) if ms <= u64::MAX / 1_000_000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!("'{s}' is too long")),
    }
}

/// Reports bad input the way clap does: `error: ...`, usage, exit status 2.
pub fn usage_error(kind: ErrorKind, message: impl std::fmt::Display) -> ! {
    Cli::command().error(kind, message).exit()
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => daemon::run(*args),
        Command::List(args) => list::run(&args),
        Command::Reset(args) => daemon::reset(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The metrics, which name every Service and backend, are not served to
    /// the network unless asked for.
    #[test]
    fn metrics_bind_to_loopback_by_default() {
        let cli = Cli::try_parse_from([
            "portmap",
            "run",
            "--iface",
            "eth0",
            "-p",
            "8080:10.0.0.2:3000",
        ])
        .expect("a minimal command line parses");
        let Command::Run(args) = cli.command else {
            panic!("not `run`");
        };
        assert_eq!(args.metrics_addr, "127.0.0.1:9640".parse().unwrap());
        assert!(args.metrics_addr.ip().is_loopback());
    }
}
