//! The second half of `cargo xtask demo`, when Debian's docker.io is
//! installed: the seed's Docker example through a real Docker Engine and
//! `portmap run --docker`, in throwaway namespaces again.
//!
//! ```text
//!  client ns               node ns
//!  eth-n 198.18.0.2  ⇄  eth-c 198.18.0.1  [portmap --docker]
//!                       docker0 198.18.77.1  ⇄  my-api 198.18.77.2:3000
//! ```
//!
//! The engine runs with `--iptables=false --userland-proxy=false`, so
//! portmap is the only thing that maps the port.

use std::{path::Path, time::Duration};

use anyhow::Result;
use portmap_testkit::{
    cgroup::Cgroup,
    docker::{self, Dockerd, Options},
    signals,
    topo::{NODE_IFACE, Topology},
};

use crate::{
    demo::{request, request_on_node, verdict, wait_for_metrics},
    sandbox::{Proc, indent},
    util::{cmd, output},
};

const METRICS_ADDR: &str = "127.0.0.1:9640";
const IMAGE: &str = "my-api-image";

/// Runs the example; `None` if Docker is not installed, else whether both
/// requests reached the container.
pub fn run(portmap: &Path, testserver: &Path) -> Result<Option<bool>> {
    if !docker::available() {
        println!(
            "== Docker: {} not installed (`cargo xtask setup` installs docker.io): skipped",
            docker::DOCKERD
        );
        return Ok(None);
    }
    let pid = std::process::id();
    println!("== Docker: the same example through a real Docker Engine");
    let topo = Topology::build(
        |role| format!("pm-demo-{pid}-d{role}"),
        &portmap_testkit::topo::Options {
            dual_stack: true,
            ..Default::default()
        },
    )?;
    // The containers and the node's curl run in this cgroup: portmap's
    // socket programs apply to them only, not to the rest of the machine.
    let cgroup = Cgroup::create(&format!("portmap-demo-{pid}-docker"))?;
    let clients = Cgroup::create(&format!("portmap-demo-{pid}-docker/clients"))?;
    let options = Options {
        cgroup_parent: Some(format!("portmap-demo-{pid}-docker/docker")),
        ..Options::portmap_only()
    };
    println!(
        "== node$ dockerd --iptables=false --userland-proxy=false --bip {} (own data root, socket and cgroup)",
        docker::BRIDGE_V4
    );
    let engine = Dockerd::start(&topo.node, &format!("pm-demo-{pid}-dk"), options)?;
    println!("== node$ docker import (busybox and portmap-testserver) {IMAGE}");
    engine.import_image(IMAGE, &[testserver])?;
    let run_args = [
        "run",
        "-d",
        "--name",
        "my-api",
        "-p",
        "8080:3000",
        IMAGE,
        "/bin/portmap-testserver",
        "--name",
        "app",
        "--tcp",
        "[::]:3000",
    ];
    println!("== node$ docker {}", run_args.join(" "));
    engine.docker(&run_args)?;
    signals::check()?;

    // In the engine's directory, which goes with it.
    let socket = engine.dir().join("portmap.sock").display().to_string();
    let pins = format!("/sys/fs/bpf/portmap-demo-{pid}-docker");
    let host = engine.host();
    let cgroup_arg = cgroup.path().display().to_string();
    let daemon_args = [
        "run",
        "--iface",
        NODE_IFACE,
        "--docker-host",
        &host,
        "--cgroup",
        &cgroup_arg,
        "--metrics-addr",
        METRICS_ADDR,
        "--control-socket",
        &socket,
        "--bpffs-dir",
        &pins,
    ];
    println!("== node$ portmap {}", daemon_args.join(" "));
    let mut daemon_cmd = topo.node.command_net_only(portmap)?;
    daemon_cmd.args(daemon_args);
    let mut daemon = Proc::spawn("portmap", daemon_cmd)?;
    let metrics_url = format!("http://{METRICS_ADDR}/metrics");
    wait_for_metrics(topo.node.name(), &metrics_url, &mut daemon)?;
    let startup_log = daemon.stderr();
    print!("{}", indent(&startup_log));

    println!(
        "# docker run -d -p 8080:3000 my-api-image, then curl, with no address written anywhere"
    );
    let remote = request(topo.client.name(), "http://198.18.0.1:8080/");
    let local = request_on_node(topo.node.name(), clients.path(), "http://localhost:8080/");
    println!("== portmap list --control-socket {socket}");
    match output(cmd(portmap).args(["list", "--control-socket", &socket])) {
        Ok(list) => print!("{}", indent(&list)),
        Err(e) => println!("    (failed: {e:#})"),
    }
    println!("== node$ docker stop -t 1 my-api");
    engine.docker(&["stop", "-t", "1", "my-api"])?;
    std::thread::sleep(Duration::from_millis(500));
    let refused = request(topo.client.name(), "http://198.18.0.1:8080/");
    println!("== stopping portmap (SIGTERM)");
    let _ = daemon.stop();
    // What it logged since it started: the container withdrawn, the stop.
    let log = daemon.stderr();
    print!(
        "{}",
        indent(log.get(startup_log.len()..).unwrap_or_default())
    );
    drop(daemon);
    let _ = output(cmd(portmap).args(["reset", "--bpffs-dir", &pins]));
    drop(engine);
    drop(clients);
    drop(cgroup);
    drop(topo);

    println!("== Docker summary");
    let ok_remote = verdict("Docker, IPv4", "198.18.0.1:8080", &remote);
    let ok_local = verdict("Docker, node", "localhost:8080", &local);
    let ok_refused = match refused {
        Err(_) => {
            println!("  Docker, stopped: 198.18.0.1:8080 refused new connections");
            true
        }
        Ok(body) => {
            println!(
                "  Docker, stopped: 198.18.0.1:8080 still answered: {}",
                body.trim()
            );
            false
        }
    };
    Ok(Some(ok_remote && ok_local && ok_refused))
}
