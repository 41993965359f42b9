//! `portmap run --docker` against a real Docker Engine: every test starts
//! its own `dockerd` in the node's network namespace (see
//! `portmap_tests::docker`), runs containers with the `-p` flags users
//! write, and checks each published port from a client in another namespace
//! (XDP) and from a process on the node (socket-level load balancing on the
//! engine's cgroup, where the containers run too).
//!
//! One engine at a time: they share `/run/docker` and the machine's two
//! cores.

use std::{
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portmap_tests::{
    client::{connect, http_get, local_seen, peer_seen, udp_exchange},
    daemon::Portmap,
    docker::{COMPOSE, Dockerd, Options},
    topo::{CLIENT_V4, CLIENT_V6, NODE_IFACE, NODE_V4, NODE_V6, Topology},
    transfer::{
        content::{Blob, DataDir},
        curl::{Client, download, url},
    },
};

static ONE_ENGINE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A topology without backend namespaces (the containers are the
/// backends), an engine in its node namespace, and portmap once started.
/// Field order is drop order.
struct Rig {
    pm: Option<Portmap>,
    docker: Dockerd,
    topo: Topology,
    _one: MutexGuard<'static, ()>,
}

impl Rig {
    fn new(tag: &str, options: Options) -> Self {
        let one = ONE_ENGINE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let topo = Topology::new(tag, 0).unwrap();
        let docker = Dockerd::start(&topo.node, options).unwrap();
        Rig {
            pm: None,
            docker,
            topo,
            _one: one,
        }
    }

    /// `portmap run --iface eth-c --docker-host … --cgroup … ARGS`.
    fn start_portmap(&mut self, args: &[&str]) {
        let host = self.docker.host();
        let cgroup = self.docker.cgroup().arg().to_string();
        let mut all = vec![
            "--iface",
            NODE_IFACE,
            "--docker-host",
            &host,
            "--cgroup",
            &cgroup,
        ];
        all.extend_from_slice(args);
        self.pm = Some(Portmap::start(&self.topo.node, &all).unwrap());
    }

    fn pm(&self) -> &Portmap {
        self.pm.as_ref().expect("portmap started")
    }

    /// HTTP GET from the client namespace (through XDP).
    fn remote(&self, to: SocketAddr) -> Result<String> {
        http_get(&self.topo.client, to)
    }

    /// HTTP GET by a process on the node, in the engine's cgroup.
    fn local(&self, to: SocketAddr) -> Result<String> {
        let reply = self
            .docker
            .clients()
            .ask(&self.topo.node, &["tcp", &to.to_string()])?;
        Ok(reply.answer().to_string())
    }

    /// Waits until the log says `what`.
    fn wait_log(&self, what: &str) {
        eventually(&format!("the log to say {what:?}"), || {
            let logs = self.pm().logs();
            if logs.contains(what) {
                Ok(())
            } else {
                bail!("not yet:\n{logs}")
            }
        });
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Retries `f` for up to 10 s (portmap follows the engine's events).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("waited 10 s for {what}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The name a test server answers with, after checking who it saw.
fn answered_by(answer: &str, client: &str) -> String {
    let peer = peer_seen(answer).map(|p| p.ip().to_canonical().to_string());
    assert_eq!(
        peer.as_deref(),
        Some(client),
        "the container sees the client's own address: {answer:?}"
    );
    answer.split_whitespace().next().unwrap_or("").to_string()
}

/// Where a test server was reached (`local=`), IPv4-mapped addresses as IPv4.
fn served_at(answer: &str) -> Option<String> {
    local_seen(answer).map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
}

/// Whether a TCP connection from the client to `to` is refused or times out.
fn unreachable(rig: &Rig, to: SocketAddr) -> Result<()> {
    match connect(&rig.topo.client, to) {
        Ok(_) => bail!("{to} accepted a connection"),
        Err(_) => Ok(()),
    }
}

/// Whether an HTTP GET from the client to `to` goes unanswered. Without
/// docker-proxy, dockerd still holds each published port with a listening
/// socket of its own (that nobody answers on), so the connection itself
/// may succeed.
fn unanswered(rig: &Rig, to: SocketAddr) -> Result<()> {
    match rig.remote(to) {
        Ok(body) => bail!("{to} answered {body:?}"),
        Err(_) => Ok(()),
    }
}

#[test]
fn docker_run_p_publishes_as_docker_does() {
    let mut rig = Rig::new(
        "dkrun",
        Options {
            ipv6: true,
            ..Options::portmap_only()
        },
    );
    let d = &rig.docker;
    // Running before portmap starts: found by the first listing.
    d.run_testserver("web", &["-p", "8080:3000", "-p", "8080:3000/udp"], &[3000])
        .unwrap();
    let data = DataDir::new("dkrun").unwrap();
    let blob = Blob::write(data.path().join("blob"), 16 << 20, 12).unwrap();
    let www = format!("{}:/www:ro", data.path().display());
    d.run(
        "big",
        &["-p", "8088:3000", "-v", &www],
        &["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www"],
    )
    .unwrap();
    let web_v4 = d.ipv4("web").unwrap();
    rig.start_portmap(&[]);
    rig.wait_log(&format!(
        "published *:8080/tcp -> {web_v4}:3000 (container web)"
    ));

    // docker run -p 8080:3000, then curl: from another host (both
    // families), and on the node.
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");
    let body = rig.remote(sa(NODE_V6, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V6), "web");
    for at in [sa("127.0.0.1", 8080), sa(NODE_V4, 8080), sa("::1", 8080)] {
        let answer = rig.local(at).unwrap();
        assert!(answer.starts_with("web "), "{at}: {answer:?}");
    }
    // -p 8080:3000/udp
    let (answer, from) = udp_exchange(&rig.topo.client, sa(NODE_V4, 8080), "ping").unwrap();
    assert_eq!(answered_by(&answer, CLIENT_V4), "web");
    assert!(answer.ends_with(" ping"), "{answer:?}");
    assert_eq!(
        from,
        sa(NODE_V4, 8080),
        "the answer comes from the published port"
    );

    // 16 MiB through a published port, checked.
    let got = download(
        Client::Remote(&rig.topo.client),
        &url(sa(NODE_V4, 8088), "blob"),
    )
    .unwrap();
    assert_eq!(
        (got.bytes, got.sha256.as_str()),
        (blob.size, blob.sha256.as_str())
    );

    // Started while portmap runs: followed from the engine's events.
    let d = &rig.docker;
    d.run_testserver("loc", &["-p", "127.0.0.1:8081:3000"], &[3000])
        .unwrap();
    d.run_testserver("rng", &["-p", "9000-9001:7000-7001/udp"], &[7000, 7001])
        .unwrap();
    d.run_testserver("any", &["--expose", "3000", "-P"], &[3000])
        .unwrap();
    let picked = d.host_port("any", "3000/tcp").unwrap();

    // 127.0.0.1: the node only.
    let answer = eventually("127.0.0.1:8081 on the node", || {
        rig.local(sa("127.0.0.1", 8081))
    });
    assert!(answer.starts_with("loc "), "{answer:?}");
    unreachable(&rig, sa(NODE_V4, 8081)).unwrap();
    // A range, port by port.
    for (host, container) in [(9000, 7000), (9001, 7001)] {
        let (answer, _) = eventually(&format!("UDP {host}"), || {
            udp_exchange(&rig.topo.client, sa(NODE_V4, host), "x")
        });
        assert_eq!(answered_by(&answer, CLIENT_V4), "rng");
        let at = served_at(&answer).unwrap_or_default();
        assert!(at.ends_with(&format!(":{container}")), "{host}: {answer:?}");
        // And from the node, at its own address.
        let target = sa(NODE_V4, host).to_string();
        let r = rig
            .docker
            .clients()
            .ask(&rig.topo.node, &["udp", &target, "y"])
            .unwrap();
        assert!(r.answer().starts_with("rng "), "{host} on the node: {r:?}");
        assert_eq!(
            r.from(),
            Some(sa(NODE_V4, host)),
            "{host}: the answer's source"
        );
    }
    // -P: the port Docker picked.
    let body = eventually("the port -P picked", || rig.remote(sa(NODE_V4, picked)));
    assert_eq!(answered_by(&body, CLIENT_V4), "any");
    let answer = rig.local(sa("127.0.0.1", picked)).unwrap();
    assert!(answer.starts_with("any "), "{answer:?}");

    // Visible: the CONTAINER column, the container label.
    let list = rig.pm().list(&[]).unwrap();
    assert!(list.contains("CONTAINER"), "{list}");
    let line = list
        .lines()
        .find(|l| l.starts_with("*:8080/tcp"))
        .unwrap_or("");
    assert!(line.contains(" web ") && line.contains(&web_v4), "{list}");
    let m = rig.pm().metrics(&rig.topo.node).unwrap();
    let web = [("container", "web"), ("direction", "request")];
    assert!(m.sum("portmap_packets_total", &web) >= 3.0, "web counted");
    let big = [("container", "big"), ("direction", "reply")];
    assert!(
        m.sum("portmap_bytes_total", &big) >= (16 << 20) as f64,
        "big counted"
    );
}

#[test]
fn stopped_removed_and_restarted_containers_are_followed() {
    let mut rig = Rig::new("dkstop", Options::portmap_only());
    let d = &rig.docker;
    d.run_testserver("web", &["-p", "8080:3000"], &[3000])
        .unwrap();
    let first = d.ipv4("web").unwrap();
    // Another source's frontend, which a container then asks for too.
    rig.start_portmap(&["-p", "8090:198.18.77.250:80"]);
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");

    // A conflict is that container's error, naming both owners; the rest
    // is untouched.
    let d = &rig.docker;
    d.run_testserver("clash", &["-p", "8090:3000", "-p", "8091:3000"], &[3000])
        .unwrap();
    rig.wait_log("frontend *:8090/tcp is already published by -p 8090:198.18.77.250:80");
    let logs = rig.pm().logs();
    let line = logs
        .lines()
        .find(|l| l.contains("container clash ("))
        .unwrap_or("");
    assert!(line.contains("none of its ports are published"), "{logs}");
    unanswered(&rig, sa(NODE_V4, 8091)).unwrap();
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");

    // docker stop: new flows refused, on the node too.
    rig.docker.docker(&["stop", "-t", "1", "web"]).unwrap();
    eventually("8080 refused", || unreachable(&rig, sa(NODE_V4, 8080)));
    assert!(rig.local(sa("127.0.0.1", 8080)).is_err());
    let list = rig.pm().list(&[]).unwrap();
    assert!(list.contains("-> (no backend)"), "{list}");

    // Started again at another address (another container took the old one
    // meanwhile): followed there.
    let d = &rig.docker;
    d.run_testserver("filler", &[], &[3000]).unwrap();
    d.docker(&["start", "web"]).unwrap();
    let second = d.ipv4("web").unwrap();
    assert_ne!(first, second, "web came back elsewhere");
    let body = eventually("web at its new address", || rig.remote(sa(NODE_V4, 8080)));
    assert_eq!(answered_by(&body, CLIENT_V4), "web");
    assert_eq!(served_at(&body), Some(format!("{second}:3000")), "{body}");
    assert!(
        rig.local(sa("127.0.0.1", 8080))
            .unwrap()
            .starts_with("web ")
    );

    // docker rename: followed, the new name in list and metrics.
    rig.docker.docker(&["rename", "web", "www"]).unwrap();
    eventually("the new name", || {
        let list = rig.pm().list(&[])?;
        match list.lines().find(|l| l.starts_with("*:8080/tcp")) {
            Some(line) if line.contains(" www ") => Ok(()),
            _ => bail!("{list}"),
        }
    });
    let m = rig.pm().metrics(&rig.topo.node).unwrap();
    assert!(m.has("portmap_packets_total", &[("container", "www")]));
    assert!(!m.has("portmap_packets_total", &[("container", "web")]));

    // docker rm: gone from portmap.
    rig.docker.docker(&["rm", "-f", "www"]).unwrap();
    rig.wait_log("withdrew *:8080/tcp (the container is gone)");
    unreachable(&rig, sa(NODE_V4, 8080)).unwrap();
    let list = rig.pm().list(&[]).unwrap();
    assert!(!list.contains("*:8080/tcp"), "{list}");
}

#[test]
fn an_engine_restart_keeps_traffic_flowing_and_is_resynced() {
    let mut rig = Rig::new(
        "dkeng",
        Options {
            live_restore: true,
            ..Options::portmap_only()
        },
    );
    let d = &rig.docker;
    d.run_testserver("web", &["-p", "8080:3000"], &[3000])
        .unwrap();
    d.run_testserver("dies", &["-p", "8082:3000"], &[3000])
        .unwrap();
    let pid: i32 = d
        .inspect("dies", "{{.State.Pid}}")
        .unwrap()
        .parse()
        .unwrap();
    rig.start_portmap(&[]);
    rig.remote(sa(NODE_V4, 8080)).unwrap();
    rig.remote(sa(NODE_V4, 8082)).unwrap();

    rig.docker.stop_engine().unwrap();
    rig.wait_log("lost the Docker Engine at");
    // The last state stays in force while the engine is away.
    for _ in 0..5 {
        let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
        assert_eq!(answered_by(&body, CLIENT_V4), "web");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A container that ends meanwhile, unseen by any event portmap gets.
    // SAFETY: kill has no memory-safety preconditions; the pid is this
    // test's container's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    rig.docker.start_engine(&rig.topo.node).unwrap();
    rig.wait_log("reconnected to Docker Engine");
    // Resynced: its port refuses new flows.
    eventually("8082 refused", || unreachable(&rig, sa(NODE_V4, 8082)));
    // Followed again: a new container is published, the old one still is.
    rig.docker
        .run_testserver("next", &["-p", "8081:3000"], &[3000])
        .unwrap();
    let body = eventually("the new container", || rig.remote(sa(NODE_V4, 8081)));
    assert_eq!(answered_by(&body, CLIENT_V4), "next");
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");
    for (port, name) in [(8080, "web "), (8081, "next ")] {
        let answer = rig.local(sa("127.0.0.1", port)).unwrap();
        assert!(answer.starts_with(name), "{port} on the node: {answer:?}");
    }
    assert!(
        rig.local(sa("127.0.0.1", 8082)).is_err(),
        "8082 refused on the node"
    );
}

/// `docker` as installed (iptables DNAT, docker-proxy): portmap's XDP
/// translates before netfilter, so it carries the traffic while it runs;
/// Docker's rules carry it again once portmap stops.
#[test]
fn beside_dockers_defaults() {
    let mut rig = Rig::new("dkdef", Options::defaults());
    rig.docker
        .run_testserver("web", &["-p", "8080:3000"], &[3000])
        .unwrap();
    let dnat = |rig: &Rig| dnat_packets(rig, 8080);
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");
    let by_docker = dnat(&rig);
    assert!(by_docker >= 1, "Docker's DNAT carried the first request");

    rig.start_portmap(&[]);
    let mut long_lived =
        portmap_tests::client::LineConn::open(&rig.topo.client, sa(NODE_V4, 8080)).unwrap();
    assert!(long_lived.ask("before").unwrap().starts_with("web "));
    for _ in 0..3 {
        let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
        assert_eq!(answered_by(&body, CLIENT_V4), "web");
    }
    assert!(rig.local(sa(NODE_V4, 8080)).unwrap().starts_with("web "));
    assert_eq!(dnat(&rig), by_docker, "portmap carried every new flow");
    let m = rig.pm().metrics(&rig.topo.node).unwrap();
    let req = [("frontend", "*:8080/tcp"), ("direction", "request")];
    assert!(m.sum("portmap_packets_total", &req) >= 3.0 * 3.0);

    // portmap stops: Docker's rules again, at once.
    rig.pm.take().unwrap().stop().unwrap();
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");
    assert!(dnat(&rig) > by_docker, "Docker's DNAT carries it again");
    // A connection portmap carried is not Docker's: netfilter never saw
    // it arrive at the published port, and it ends (reset) when portmap
    // stops.
    assert!(long_lived.ask("after").is_err());
}

/// `dockerd --iptables=false --userland-proxy=false`: nothing but portmap
/// maps the ports. From another host, from the node, and from a container
/// to a published port (hairpin, its own included).
#[test]
fn portmap_alone_beside_docker_without_iptables_nor_proxy() {
    let mut rig = Rig::new("dkonly", Options::portmap_only());
    let d = &rig.docker;
    d.run_testserver("web", &["-p", "8080:3000"], &[3000])
        .unwrap();
    d.run_testserver("peer", &[], &[3000]).unwrap();
    let (web, peer) = (d.ipv4("web").unwrap(), d.ipv4("peer").unwrap());
    unanswered(&rig, sa(NODE_V4, 8080)).unwrap();

    rig.start_portmap(&[]);
    let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
    assert_eq!(answered_by(&body, CLIENT_V4), "web");
    // curl localhost:8080 on the node, as after `docker run -p`.
    let got = download(
        Client::Node(&rig.topo.node, rig.docker.clients()),
        "http://localhost:8080/",
    );
    let got = got.unwrap();
    assert!(got.bytes > 0);
    assert!(rig.local(sa(NODE_V4, 8080)).unwrap().starts_with("web "));
    // Hairpin: containers reaching the published port at the node's address.
    for (name, addr) in [("peer", &peer), ("web", &web)] {
        let out = rig
            .docker
            .exec(
                name,
                &["busybox", "wget", "-qO-", "http://198.18.0.1:8080/"],
            )
            .unwrap();
        assert!(out.starts_with("web "), "from {name}: {out}");
        assert_eq!(
            peer_seen(&out)
                .map(|p| p.ip().to_canonical().to_string())
                .as_deref(),
            Some(addr.as_str()),
            "from {name}: {out}"
        );
    }
}

#[test]
fn compose_ports_are_published() {
    assert!(
        std::path::Path::new(COMPOSE).is_file(),
        "{COMPOSE} is missing: `cargo xtask setup` installs docker-compose"
    );
    let mut rig = Rig::new("dkcomp", Options::portmap_only());
    rig.start_portmap(&[]);
    let dir = rig.docker.dir().join("compose");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: \"3\"\nservices:\n  api:\n    image: {}\n    command: [\"/bin/portmap-testserver\", \"--name\", \"api\", \"--tcp\", \"[::]:3000\"]\n    ports:\n      - \"8080:3000\"\n",
            portmap_tests::docker::IMAGE
        ),
    )
    .unwrap();
    let out = std::process::Command::new(COMPOSE)
        .args(["-p", "pmproj", "up", "-d"])
        .current_dir(&dir)
        .env("DOCKER_HOST", rig.docker.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = eventually("the Compose service", || rig.remote(sa(NODE_V4, 8080)));
    assert_eq!(answered_by(&body, CLIENT_V4), "api");
    // Compose v1 names it pmproj_api_1, v2 pmproj-api-1: found by label.
    let id = rig
        .docker
        .docker(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.compose.project=pmproj",
        ])
        .unwrap();
    let addr = rig
        .docker
        .inspect(
            &id,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )
        .unwrap();
    assert!(
        addr.starts_with("198.18.8"),
        "on the Compose network: {addr}"
    );
    // Connected to a second network: a backend there too (network events).
    rig.docker
        .docker(&["network", "connect", "bridge", &id])
        .unwrap();
    let second = rig.docker.ipv4(&id).unwrap();
    let backends = |rig: &Rig| -> Result<String> {
        let list = rig.pm().list(&[])?;
        let backends: Vec<&str> = list
            .lines()
            .filter(|l| l.contains("198.18."))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("198.18.")))
            .filter(|w| w.ends_with(":3000"))
            .collect();
        Ok(backends.join(" "))
    };
    eventually("a backend on each network", || match backends(&rig)? {
        b if b.contains(&format!("{addr}:3000")) && b.contains(&format!("{second}:3000")) => Ok(()),
        b => bail!("backends: {b}"),
    });
    for _ in 0..4 {
        let body = rig.remote(sa(NODE_V4, 8080)).unwrap();
        assert_eq!(answered_by(&body, CLIENT_V4), "api");
    }
    rig.docker
        .docker(&["network", "disconnect", "bridge", &id])
        .unwrap();
    eventually("one backend again", || match backends(&rig)? {
        b if b == format!("{addr}:3000") => Ok(()),
        b => bail!("backends: {b}"),
    });
    assert_eq!(served_at(&body), Some(format!("{addr}:3000")), "{body}");
    let answer = rig.local(sa("127.0.0.1", 8080)).unwrap();
    assert!(answer.starts_with("api "), "on the node: {answer:?}");
}

#[test]
fn an_engine_that_cannot_be_reached_is_an_error_naming_it() {
    let topo = Topology::new("dknone", 0).unwrap();
    let host = "unix:///run/pm-docker-nowhere.sock";
    let err = Portmap::start(&topo.node, &["--iface", NODE_IFACE, "--docker-host", host])
        .err()
        .expect("portmap refuses to start");
    assert!(
        format!("{err:#}").contains(&format!("cannot reach the Docker Engine at {host}")),
        "{err:#}"
    );
}

/// Packets Docker's DNAT rule for `port` matched (`iptables -t nat -L DOCKER`).
fn dnat_packets(rig: &Rig, port: u16) -> u64 {
    let out = rig
        .topo
        .node
        .exec(
            "iptables",
            &["-w", "-t", "nat", "-L", "DOCKER", "-n", "-v", "-x"],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("DNAT") && l.contains(&format!("dpt:{port} ")))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
