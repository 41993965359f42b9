//! The `portmap` command line, on top of everything else: parses each
//! subcommand's flags into that command's own arguments, runs it, and turns
//! what it returns into an exit status: 2 with clap's usage for bad input
//! (naming the flag and the value), 1 for a failure.

#[cfg(test)]
mod deploy_tests;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand, error::ErrorKind};

use crate::{
    config::Sources,
    control,
    daemon::{self, Input, InvalidInput, Kubernetes, RunError, SocketLb, Timeouts, Until},
    dataplane::{DEFAULT_PIN_DIR, Limits, XdpMode},
    docker::DockerHost,
    k8s::NodeConfig,
    kubeapi::{self, health::DEFAULT_HEALTHZ_ADDR},
    list,
    locality::{LbMode, Masquerade},
    model::{Cidr, PublishSpec},
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
    pub allow_from: Vec<Cidr>,

    /// Kubernetes manifests to publish: a YAML/JSON file or a directory of
    /// them (repeatable), with Services, EndpointSlices and Pods as
    /// `kubectl get svc,endpointslices,pods -A -o yaml` prints them. Watched:
    /// edits are applied live; a bad edit is reported and changes nothing.
    #[arg(long, value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// Publish what Docker publishes: the ports of every running container
    /// (`docker run -p`, `-P`, Compose `ports:`), followed live from the
    /// Docker Engine at --docker-host, else $DOCKER_HOST, else
    /// unix:///var/run/docker.sock.
    #[arg(long)]
    pub docker: bool,

    /// The Docker Engine to follow (implies --docker): unix:///PATH,
    /// tcp://HOST:PORT or http://HOST:PORT.
    #[arg(long, value_name = "URL", value_parser = parse_docker_host)]
    pub docker_host: Option<DockerHost>,

    /// This node's name, for `nodeName` and the `Local` traffic policies.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Follow the Kubernetes API server, as kube-proxy does: Services and
    /// EndpointSlices in every namespace and this node's Node object (its
    /// addresses and pod CIDRs), through --kubeconfig, KUBECONFIG,
    /// ~/.kube/config or the pod's service account. Nothing is published
    /// before the first complete list; an API server that goes away
    /// withdraws nothing. Combines with --manifests and -p. The node's name
    /// defaults to NODE_NAME, else the hostname.
    #[arg(long)]
    pub kubernetes: bool,

    /// The kubeconfig to reach the API server with (--kubernetes).
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,

    /// The API server's changes are applied in batches, at most one per
    /// period (the first change after a quiet period at once), as
    /// kube-proxy's --min-sync-period.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,

    /// Where /healthz and /livez answer (--kubernetes), as kube-proxy's
    /// --healthz-bind-address: 200 once the first sync is programmed and
    /// while syncs keep up, 503 otherwise.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_HEALTHZ_ADDR)]
    pub healthz_addr: SocketAddr,

    /// An address nodePorts are published on (repeatable). Default: every
    /// address of this node.
    #[arg(long, value_name = "IP")]
    pub node_ip: Vec<std::net::IpAddr>,

    /// Range nodePorts are assigned from when a Service leaves them out.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-32767", value_parser = parse_port_range)]
    pub node_port_range: std::ops::RangeInclusive<u16>,

    /// Source ports of flows SNATed towards backends on other nodes (per
    /// backend address and port). Keep it clear of the NodePort range and of
    /// `net.ipv4.ip_local_port_range`.
    #[arg(long, value_name = "FIRST-LAST", default_value = "61000-65535", value_parser = parse_port_range)]
    pub snat_port_range: std::ops::RangeInclusive<u16>,

    /// SNAT every new flow, to backends on this node too (kube-proxy's
    /// `--masquerade-all`); `externalTrafficPolicy: Local` still keeps the
    /// client's address.
    #[arg(long)]
    pub masquerade_all: bool,

    /// How new flows reach backends on other nodes: `snat` (from this
    /// node's address; replies come back through here), `dsr` (direct
    /// server return: the client's address kept, the frontend carried in
    /// an IP option, replies sent straight to the client by the backend's
    /// node, which must run portmap too) or `hybrid` (DSR for TCP, SNAT for
    /// UDP).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = LbMode::Snat)]
    pub lb_mode: LbMode,

    /// Range ClusterIPs are assigned from when a Service leaves them out
    /// (repeatable; one per family).
    #[arg(long, value_name = "CIDR", default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    pub service_cidr: Vec<Cidr>,

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

    /// Most frontends (published address, port and protocol) and services
    /// at once. Default: what the desired state at start needs and half
    /// again, at least 16384.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub max_frontends: Option<u32>,

    /// Most backends at once; given, it also sizes the Maglev table pool (400
    /// slots each). Default: what the desired state at start needs and half
    /// again (the pool likewise), at least 16384.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1 << 22))]
    pub max_backends: Option<u32>,

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

impl RunArgs {
    /// The daemon's configuration these flags describe.
    pub fn config(self) -> daemon::Config {
        let socket_lb = match (self.no_socket_lb, self.cgroup) {
            (true, _) => SocketLb::Off,
            (false, Some(path)) => SocketLb::Cgroup(path),
            (false, None) => SocketLb::DefaultCgroup,
        };
        let node_name = match (self.kubernetes, self.node_name) {
            (true, None) => Some(default_node_name()),
            (_, name) => name,
        };
        let kubernetes = self.kubernetes.then(|| Kubernetes {
            api: kubeapi::Options {
                kubeconfig: self.kubeconfig,
                node_name: node_name.clone().unwrap_or_default(),
                min_sync_period: self.min_sync_period,
            },
            healthz_addr: self.healthz_addr,
        });
        daemon::Config {
            ifaces: self.ifaces,
            backend_ifaces: self.backend_ifaces,
            sources: Sources {
                specs: self.publish,
                allow_from: self.allow_from,
                manifests: self.manifests,
                node: NodeConfig {
                    node_name,
                    node_ips: self.node_ip,
                    node_port_range: self.node_port_range,
                    service_cidrs: self.service_cidr,
                    pod_cidrs: Vec::new(),
                },
                docker: (self.docker || self.docker_host.is_some())
                    .then(|| DockerHost::choose(self.docker_host)),
                masquerade: Masquerade {
                    all: self.masquerade_all,
                    ports: self.snat_port_range,
                    lb_mode: self.lb_mode,
                },
            },
            metrics_addr: self.metrics_addr,
            control_socket: self.control_socket,
            xdp_mode: self.xdp_mode,
            socket_lb,
            bpffs_dir: self.bpffs_dir,
            keep_datapath: self.keep_datapath,
            datapath_variant: self.datapath_variant,
            limits: Limits {
                frontends: self.max_frontends.unwrap_or(Limits::AUTO),
                backends: self.max_backends.unwrap_or(Limits::AUTO),
                conntrack: self.conntrack_entries,
            },
            timeouts: Timeouts {
                tcp_syn: self.tcp_syn_timeout,
                tcp_established: self.tcp_timeout,
                tcp_closing: self.tcp_closing_timeout,
                udp: self.udp_timeout,
            },
            kubernetes,
        }
    }
}

/// `NODE_NAME` (a DaemonSet sets it from the downward API), else the
/// hostname, as kube-proxy's `--hostname-override` defaults.
fn default_node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_lowercase())
        })
        .unwrap_or_default()
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

impl ListArgs {
    fn options(self) -> list::Options {
        list::Options {
            control_socket: self.control_socket,
            json: self.json,
        }
    }
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

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

fn parse_docker_host(s: &str) -> Result<DockerHost, String> {
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

/// The flag an input of the daemon's configuration comes from, as clap
/// names it in its own errors.
fn flag(input: Input) -> &'static str {
    match input {
        Input::Iface => "--iface <IF>",
        Input::BackendIface => "--backend-iface <IF>",
        Input::Cgroup => "--cgroup <PATH>",
        Input::Publish => "--publish <SPEC>",
        Input::Manifests => "--manifests <PATH>",
        Input::Kubeconfig => "--kubeconfig <PATH>",
    }
}

/// Bad input, in clap's words: `invalid value 'VALUE' for 'FLAG': WHY`.
fn usage_message(e: &InvalidInput) -> String {
    match &e.value {
        Some(value) => format!("invalid value '{value}' for '{}': {}", flag(e.input), e.why),
        None => format!("invalid value for '{}': {}", flag(e.input), e.why),
    }
}

/// Reports bad input the way clap does: `error: ...`, usage, exit status 2.
fn usage_error(e: &InvalidInput) -> ExitCode {
    let error = Cli::command().error(ErrorKind::InvalidValue, usage_message(e));
    // As clap's own `exit`, which ignores a closed stderr.
    let _ = error.print();
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => match daemon::run(args.config(), Until::Signal) {
            Ok(()) => Ok(()),
            Err(RunError::Invalid(e)) => return usage_error(&e),
            Err(RunError::Failed(e)) => Err(e),
        },
        Command::List(args) => list::run(&args.options()),
        Command::Reset(args) => daemon::reset(&args.bpffs_dir),
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

    /// The daemon's refusals name the flag as clap names it in its own
    /// errors.
    #[test]
    fn refused_inputs_name_their_flags() {
        let mut command = Cli::command();
        command.build();
        let run = command.find_subcommand("run").expect("a run subcommand");
        for (input, id) in [
            (Input::Iface, "ifaces"),
            (Input::BackendIface, "backend_ifaces"),
            (Input::Cgroup, "cgroup"),
            (Input::Publish, "publish"),
            (Input::Manifests, "manifests"),
            (Input::Kubeconfig, "kubeconfig"),
        ] {
            let arg = run
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"));
            assert_eq!(flag(input), arg.to_string(), "{input:?}");
        }
        let e = InvalidInput {
            input: Input::Iface,
            value: Some("eth9".into()),
            why: "no such network interface (have: lo)".into(),
        };
        assert_eq!(
            usage_message(&e),
            "invalid value 'eth9' for '--iface <IF>': no such network interface (have: lo)"
        );
    }

    /// Every flag lands in the daemon's configuration.
    #[test]
    fn run_flags_become_the_daemon_configuration() {
        let line = concat!(
            "run --iface eth0 --backend-iface eth1 -p 8080:10.0.0.2:3000 ",
            "--allow-from 198.18.0.0/15 --manifests /m --node-name n1 ",
            "--node-ip 198.18.0.1 --node-port-range 31000-31999 ",
            "--service-cidr 10.0.0.0/16 --metrics-addr 127.0.0.1:9999 ",
            "--xdp-mode generic --cgroup /sys/fs/cgroup/x ",
            "--control-socket /run/x.sock --bpffs-dir /sys/fs/bpf/x ",
            "--keep-datapath --datapath-variant 1 --max-frontends 10 ",
            "--max-backends 20 --conntrack-entries 100 --tcp-timeout 1h ",
            "--tcp-syn-timeout 5s --tcp-closing-timeout 2s --udp-timeout 30s ",
            "--docker-host unix:///run/pm-docker.sock",
        );
        let cli = Cli::try_parse_from(std::iter::once("portmap").chain(line.split_whitespace()))
            .expect("the command line parses");
        let Command::Run(args) = cli.command else {
            panic!("not `run`");
        };
        let c = args.config();
        assert_eq!(c.ifaces, ["eth0"]);
        assert_eq!(c.backend_ifaces, ["eth1"]);
        assert_eq!(c.sources.specs.len(), 1);
        assert_eq!(c.sources.specs[0].0, "8080:10.0.0.2:3000");
        assert_eq!(c.sources.allow_from, ["198.18.0.0/15".parse().unwrap()]);
        assert_eq!(c.sources.manifests, [PathBuf::from("/m")]);
        assert_eq!(c.sources.node.node_name.as_deref(), Some("n1"));
        assert_eq!(
            c.sources.node.node_ips,
            ["198.18.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(c.sources.node.node_port_range, 31000..=31999);
        assert_eq!(
            c.sources.node.service_cidrs,
            ["10.0.0.0/16".parse().unwrap()]
        );
        assert_eq!(
            c.sources.docker.as_ref().map(DockerHost::as_str),
            Some("unix:///run/pm-docker.sock")
        );
        assert_eq!(c.metrics_addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.socket_lb, SocketLb::Cgroup("/sys/fs/cgroup/x".into()));
        assert_eq!(c.control_socket, PathBuf::from("/run/x.sock"));
        assert_eq!(c.bpffs_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert!(c.keep_datapath);
        assert_eq!(c.datapath_variant, 1);
        assert_eq!(
            c.limits,
            Limits {
                frontends: 10,
                backends: 20,
                conntrack: 100
            }
        );
        assert_eq!(
            c.timeouts,
            Timeouts {
                tcp_syn: Duration::from_secs(5),
                tcp_established: Duration::from_secs(3600),
                tcp_closing: Duration::from_secs(2),
                udp: Duration::from_secs(30),
            }
        );
        assert_eq!(c.kubernetes, None, "no --kubernetes");
        let line = "run --iface eth0 --kubernetes --kubeconfig /k --node-name n2 \
                    --min-sync-period 250ms --healthz-addr 127.0.0.1:10999";
        let cli = Cli::try_parse_from(std::iter::once("portmap").chain(line.split_whitespace()))
            .expect("the --kubernetes command line parses");
        let Command::Run(args) = cli.command else {
            panic!("not `run`");
        };
        let k = args.config().kubernetes.expect("--kubernetes");
        assert_eq!(k.api.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(k.api.node_name, "n2");
        assert_eq!(k.api.min_sync_period, Duration::from_millis(250));
        assert_eq!(k.healthz_addr, "127.0.0.1:10999".parse().unwrap());
        let socket_lb = |extra: &[&str]| {
            let args = ["portmap", "run", "--iface", "eth0"].iter().chain(extra);
            let Command::Run(args) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not `run`");
            };
            args.config().socket_lb
        };
        assert_eq!(socket_lb(&[]), SocketLb::DefaultCgroup);
        let Command::Run(args) = Cli::try_parse_from(["portmap", "run", "--iface", "eth0"])
            .unwrap()
            .command
        else {
            panic!("not `run`");
        };
        let limits = args.config().limits;
        assert_eq!(
            (limits.frontends, limits.backends),
            (Limits::AUTO, Limits::AUTO),
            "sized from the desired state unless given"
        );
        assert_eq!(socket_lb(&["--no-socket-lb"]), SocketLb::Off);
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
