//! `cargo xtask demo`: `docker run -p 8080:3000` through the XDP dataplane, in
//! throwaway network namespaces on this machine, then `curl localhost:8080` on
//! the node itself (socket-level load balancing, in a throwaway cgroup); then,
//! if Docker is installed, the same through a real engine (`demo_docker`):
//!
//! ```text
//!  client ns                node ns                          app ns ("container")
//!  to-node 198.18.0.2  ⇄  to-client 198.18.0.1  [portmap]
//!          2001:db8::2              2001:db8::1
//!                         to-app 198.19.0.1         ⇄  eth0 198.19.0.2:3000
//!                                2001:db8:1::1              [2001:db8:1::2]:3000
//! ```

use std::{path::PathBuf, thread, time::Duration, time::Instant};

use anyhow::{Context as _, Result, bail};

use portmap_testkit::signals;

use crate::{
    sandbox::{Proc, Sandbox, indent, ip, netns_enter, netns_exec},
    setup,
    util::{cmd, output, require_root, run, target_dir, workspace_root},
};

/// The node's interface towards the client: the one portmap attaches to.
const NODE_IFACE: &str = "to-client";
const METRICS_ADDR: &str = "127.0.0.1:9640";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

struct Names {
    client: String,
    node: String,
    app: String,
}

/// The Pod and NodePort Service of the usual Kubernetes example, as written,
/// with the IP the "cluster" gave the Pod (the app's namespace).
const SEED_MANIFEST: &str = include_str!("../../examples/banking.yaml");

pub fn run_demo() -> Result<()> {
    require_root(
        "cargo xtask demo",
        "it creates network namespaces and attaches XDP programs",
    )?;
    setup::run_setup()?;
    println!("== cargo build");
    run(cmd("cargo").arg("build").current_dir(workspace_root()))?;
    let bin_dir = target_dir().join("debug");
    let portmap = bin_dir.join("portmap");
    let testserver = bin_dir.join("portmap-testserver");
    for bin in [&portmap, &testserver] {
        if !bin.is_file() {
            bail!("{} was not built by `cargo build`", bin.display());
        }
    }
    signals::check()?;

    let pid = std::process::id();
    let ns = Names {
        client: format!("pm-demo-{pid}-client"),
        node: format!("pm-demo-{pid}-node"),
        app: format!("pm-demo-{pid}-app"),
    };
    let socket = PathBuf::from(format!("/run/portmap/demo-{pid}.sock"));
    // Declared before the processes, so dropped after them: processes stop
    // first, then their namespaces go.
    let mut sandbox = Sandbox::default();
    sandbox.remove_on_teardown(&socket);
    let pins = PathBuf::from(format!("/sys/fs/bpf/portmap-demo-{pid}"));
    sandbox.reset_pins_on_teardown(&portmap, &pins);
    let manifest = PathBuf::from(format!("/run/portmap/demo-{pid}-banking.yaml"));
    std::fs::create_dir_all("/run/portmap")?;
    sandbox.remove_on_teardown(&manifest);
    std::fs::write(&manifest, SEED_MANIFEST)?;
    println!(
        "== topology: {} (198.18.0.2, 2001:db8::2) ⇄ {} (198.18.0.1, 2001:db8::1 | 198.19.0.1, 2001:db8:1::1) ⇄ {} (198.19.0.2, 2001:db8:1::2)",
        ns.client, ns.node, ns.app
    );
    topology(&mut sandbox, &ns)?;
    // The node's processes: socket-level load balancing applies to this
    // cgroup only, not to the rest of the machine.
    let cgroup = sandbox.add_cgroup(&format!("portmap-demo-{pid}"))?;
    println!("== node processes run in cgroup {}", cgroup.display());
    signals::check()?;

    let server_args = [
        "--name",
        "app",
        "--tcp",
        "198.19.0.2:3000",
        "--tcp",
        "[2001:db8:1::2]:3000",
        "--tcp",
        "198.19.0.2:8080",
    ];
    println!("== app$ portmap-testserver {}", server_args.join(" "));
    let mut server_cmd = netns_exec(&ns.app, &testserver);
    server_cmd.args(server_args);
    let mut server = Proc::spawn("portmap-testserver", server_cmd)?;
    server.wait_line("ready", STARTUP_TIMEOUT)?;

    let socket_arg = socket.display().to_string();
    let pins_arg = pins.display().to_string();
    let cgroup_arg = cgroup.display().to_string();
    let manifest_arg = manifest.display().to_string();
    let daemon_args = [
        "run",
        "--iface",
        NODE_IFACE,
        "-p",
        "8080:198.19.0.2:3000",
        "-p",
        "8080:[2001:db8:1::2]:3000",
        "--metrics-addr",
        METRICS_ADDR,
        "--control-socket",
        &socket_arg,
        "--bpffs-dir",
        &pins_arg,
        "--cgroup",
        &cgroup_arg,
        "--manifests",
        &manifest_arg,
        "--service-cidr",
        "198.18.128.0/20",
    ];
    println!("== node$ portmap {}", daemon_args.join(" "));
    let mut daemon_cmd = netns_enter(&ns.node, &portmap)?;
    daemon_cmd.args(daemon_args);
    let mut daemon = Proc::spawn("portmap", daemon_cmd)?;
    let metrics_url = format!("http://{METRICS_ADDR}/metrics");
    wait_for_metrics(&ns.node, &metrics_url, &mut daemon)?;
    let startup_log = daemon.stderr();
    print!("{}", indent(&startup_log));

    println!(
        "# the same as `docker run -p 8080:3000 app` with the app at 198.19.0.2 / [2001:db8:1::2]"
    );
    let v4 = request(&ns.client, "http://198.18.0.1:8080/");
    let v6 = request(&ns.client, "http://[2001:db8::1]:8080/");
    println!("# and on the node itself, as Docker users do right after `docker run -p 8080:3000`");
    let local = request_on_node(&ns.node, &cgroup, "http://localhost:8080/");
    println!(
        "# the Kubernetes example: kubectl apply -f {manifest_arg} (Pod backend-pod, NodePort Service backend-service)"
    );
    print!("{}", indent(SEED_MANIFEST));
    let node_port = request(&ns.client, "http://198.18.0.1:30001/");
    let cluster_ip = cluster_ip(&portmap, &socket_arg, "default/backend-service");
    let via_cluster_ip = match &cluster_ip {
        Ok(ip) => request(&ns.client, &format!("http://{ip}/")),
        Err(e) => Err(anyhow::anyhow!("no ClusterIP: {e:#}")),
    };
    signals::check()?;

    println!("== portmap list --control-socket {socket_arg}");
    match output(cmd(&portmap).args(["list", "--control-socket", &socket_arg])) {
        Ok(list) => print!("{}", indent(&list)),
        Err(e) => println!("    (failed: {e:#})"),
    }
    println!("== node$ curl -s {metrics_url} | grep ^portmap_");
    match output(netns_exec(&ns.node, "curl").args(["-sS", "--max-time", "5", &metrics_url])) {
        Ok(metrics) => {
            let lines: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("portmap_"))
                .collect();
            print!("{}", indent(&lines.join("\n")));
        }
        Err(e) => println!("    (failed: {e:#})"),
    }

    println!("== stopping portmap (SIGTERM)");
    let stopped = daemon.stop();
    let log = daemon.stderr();
    print!(
        "{}",
        indent(log.get(startup_log.len()..).unwrap_or_default())
    );
    let stop_note = match &stopped {
        Ok((status, false)) if status.success() => "exited cleanly".to_string(),
        Ok((status, false)) => format!("exited with {status}"),
        Ok((_, true)) => format!("did not exit within {:?}, killed", crate::sandbox::GRACE),
        Err(e) => format!("could not be stopped: {e:#}"),
    };
    drop(daemon);
    drop(server);
    let (removed, failed) = sandbox.teardown();
    drop(sandbox);
    // The seed's Docker example through a real engine, if there is one.
    let docker = crate::demo_docker::run(&portmap, &testserver);

    println!("== summary");
    let ok4 = verdict("IPv4", "198.18.0.1:8080", &v4);
    let ok6 = verdict("IPv6", "[2001:db8::1]:8080", &v6);
    let ok_local = verdict("node", "localhost:8080", &local);
    let ok_node_port = verdict("NodePort", "198.18.0.1:30001", &node_port);
    let cluster_ip_label = cluster_ip
        .map(|ip| format!("{ip}:80 (ClusterIP)"))
        .unwrap_or_default();
    let ok_cluster_ip = verdict("ClusterIP", &cluster_ip_label, &via_cluster_ip);
    println!("  portmap: {stop_note}");
    println!("  removed: {}", removed.join(", "));
    for f in &failed {
        println!("  warning: not removed: {f}");
    }
    let ok_docker = match docker {
        Ok(Some(ok)) => ok,
        Ok(None) => true,
        Err(e) => {
            println!("  Docker: FAILED: {e:#}");
            false
        }
    };
    if !(ok4 && ok6 && ok_local && ok_node_port && ok_cluster_ip && ok_docker) {
        bail!("the demo failed: a request did not reach the app through portmap");
    }
    Ok(())
}

/// Builds the three namespaces and two veth pairs, without touching the root
/// namespace.
fn topology(sandbox: &mut Sandbox, ns: &Names) -> Result<()> {
    let (client, node, app) = (&ns.client, &ns.node, &ns.app);
    for name in [client, node, app] {
        sandbox.add_netns(name)?;
    }
    ip(
        client,
        &format!("link add to-node type veth peer name {NODE_IFACE} netns {node}"),
    )?;
    ip(
        node,
        &format!("link add to-app type veth peer name eth0 netns {app}"),
    )?;
    let ends = [
        (client, "to-node", "198.18.0.2/24", "2001:db8::2/64"),
        (node, NODE_IFACE, "198.18.0.1/24", "2001:db8::1/64"),
        (node, "to-app", "198.19.0.1/24", "2001:db8:1::1/64"),
        (app, "eth0", "198.19.0.2/24", "2001:db8:1::2/64"),
    ];
    for (ns, iface, v4, v6) in ends {
        ip(ns, &format!("addr add {v4} dev {iface}"))?;
        ip(ns, &format!("-6 addr add {v6} dev {iface} nodad"))?;
        ip(ns, &format!("link set {iface} up"))?;
        // Veths leave TCP/UDP checksums to "hardware" that does not exist on
        // the XDP path; have the stack compute them.
        output(netns_exec(ns, "ethtool").args(["-K", iface, "tx", "off"]))
            .with_context(|| format!("turning off tx checksum offload on {iface} in {ns}"))?;
    }
    ip(client, "route add default via 198.18.0.1")?;
    ip(client, "-6 route add default via 2001:db8::1")?;
    ip(app, "route add default via 198.19.0.1")?;
    ip(app, "-6 route add default via 2001:db8:1::1")?;
    Ok(())
}

/// Waits until portmap serves metrics (it is then attached and programmed).
pub(crate) fn wait_for_metrics(node: &str, url: &str, daemon: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        signals::check()?;
        daemon.check_running()?;
        let mut probe = netns_exec(node, "curl");
        probe.args(["-sf", "-o", "/dev/null", "--max-time", "1", url]);
        if output(&mut probe).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "portmap did not serve {url} within {STARTUP_TIMEOUT:?}; its stderr:\n{}",
                indent(&daemon.stderr())
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `curl` from the client namespace; prints the command and the reply.
pub(crate) fn request(client: &str, url: &str) -> Result<String> {
    let mut c = netns_exec(client, "curl");
    c.args(["-sS", "-g", "--max-time", "5", url]);
    println!("== client$ curl {url}");
    let result = output(&mut c);
    match &result {
        Ok(body) => print!("{}", indent(body)),
        Err(e) => println!("    failed: {e:#}"),
    }
    result
}

/// `curl` on the node, from a process in `cgroup`; prints the command and
/// the reply.
pub(crate) fn request_on_node(node: &str, cgroup: &std::path::Path, url: &str) -> Result<String> {
    let mut c = netns_exec(node, "curl");
    c.args(["-sS", "--max-time", "5", url]);
    portmap_testkit::cgroup::enter(&mut c, cgroup)?;
    println!("== node$ curl {url}");
    let result = output(&mut c);
    match &result {
        Ok(body) => print!("{}", indent(body)),
        Err(e) => println!("    failed: {e:#}"),
    }
    result
}

/// One summary line; true if the app answered.
pub(crate) fn verdict(family: &str, frontend: &str, reply: &Result<String>) -> bool {
    match reply {
        Ok(body) if body.starts_with("app ") => {
            let peer = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("peer="));
            println!(
                "  {family}: {frontend} -> app, which saw the client as {}",
                peer.unwrap_or("?")
            );
            true
        }
        Ok(body) => {
            println!(
                "  {family}: {frontend} answered, but not from the app: {}",
                body.trim()
            );
            false
        }
        Err(e) => {
            println!("  {family}: {frontend} FAILED: {e:#}");
            false
        }
    }
}

/// The ClusterIP portmap assigned to `service`, from `portmap list --json`.
fn cluster_ip(portmap: &std::path::Path, socket: &str, service: &str) -> Result<String> {
    let json = output(cmd(portmap).args(["list", "--json", "--control-socket", socket]))?;
    let list: serde_json::Value = serde_json::from_str(&json)?;
    list["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["service"] == service)
        .flat_map(|s| s["frontends"].as_array().into_iter().flatten())
        // "198.18.128.7:80/tcp"; the NodePort frontend is "*:30001/tcp".
        .filter_map(|f| {
            f["frontend"]
                .as_str()?
                .strip_suffix(":80/tcp")
                .map(str::to_string)
        })
        .next()
        .ok_or_else(|| anyhow::anyhow!("{service} has no ClusterIP frontend in portmap list"))
}
