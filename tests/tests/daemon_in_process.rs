//! `portmap_userspace::daemon::run` called as a library, in this process:
//! on a thread in the node's namespace it publishes a port (a request
//! crosses it) and answers on its control socket; told to stop through a
//! `Stop`, it returns `Ok`, detaches and removes its socket and pins.

use std::{
    net::SocketAddr,
    path::PathBuf,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use portmap_tests::{
    client::{http_get, served_by},
    daemon::pin_dir,
    netns::Netns,
    server::Server,
    topo::{NODE_IFACE, NODE_V4, Topology, backend_v4},
};
use portmap_userspace::{
    config::Sources,
    control,
    daemon::{self, Config, RunError, SocketLb, Stop, Timeouts, Until},
    dataplane::{Limits, Snapshot, XdpMode},
    k8s::NodeConfig,
};

const SPEC: &str = "8080:198.19.0.2:3000";

/// A daemon running on its own thread, stopped and joined on drop (also
/// when the test fails).
struct InProcess {
    stop: Stop,
    thread: Option<JoinHandle<Result<(), RunError>>>,
}

impl InProcess {
    fn start(ns: &Netns, config: Config) -> Self {
        let stop = Stop::new();
        let until = Until::Stopped(stop.clone());
        let name = ns.name().to_string();
        // The runtime's threads are started by the one that entered the
        // namespace, so they are in it too.
        let thread =
            std::thread::spawn(move || Netns::view(&name).run(move || daemon::run(config, until)));
        InProcess {
            stop,
            thread: Some(thread),
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the daemon and waits (10 s at most) for `run` to return.
    fn stop(&mut self) -> Result<(), RunError> {
        self.stop.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.finished() {
            assert!(
                Instant::now() < deadline,
                "run did not return within 10 s of stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let thread = self.thread.take().expect("not stopped yet");
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

fn config(ns: &Netns, control_socket: PathBuf) -> Config {
    Config {
        ifaces: vec![NODE_IFACE.into()],
        backend_ifaces: Vec::new(),
        sources: Sources {
            specs: vec![(SPEC.into(), SPEC.parse().unwrap())],
            allow_from: Vec::new(),
            manifests: Vec::new(),
            node: NodeConfig::default(),
            docker: None,
            masquerade: Default::default(),
        },
        metrics_addr: "127.0.0.1:9640".parse().unwrap(),
        control_socket,
        xdp_mode: XdpMode::Auto,
        socket_lb: SocketLb::Off,
        bpffs_dir: pin_dir(ns),
        keep_datapath: false,
        datapath_variant: 0,
        limits: Limits {
            frontends: 64,
            backends: 64,
            conntrack: 1024,
        },
        timeouts: Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        },
        kubernetes: None,
    }
}

/// Waits (15 s at most) until the daemon answers on its control socket.
fn wait_for_list(daemon: &InProcess, socket: &PathBuf) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(snapshot) = control::request_list(socket) {
            return snapshot;
        }
        assert!(!daemon.finished(), "run returned before serving");
        assert!(
            Instant::now() < deadline,
            "no answer on {} within 15 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn xdp_attached(ns: &Netns) -> bool {
    let out = ns
        .exec("ip", &["-d", "link", "show", NODE_IFACE])
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn run_in_process_publishes_until_stopped() {
    let topo = Topology::new("inproc", 1).unwrap();
    let backend = SocketAddr::new(backend_v4(0), 3000);
    let _server = Server::start(&topo.backends[0], "b0", &[backend], &[]).unwrap();
    let socket = PathBuf::from(format!("/run/portmap-tests/{}.sock", topo.node.name()));
    let frontend: SocketAddr = format!("{NODE_V4}:8080").parse().unwrap();
    assert!(
        !xdp_attached(&topo.node),
        "nothing attached before the start"
    );

    let mut daemon = InProcess::start(&topo.node, config(&topo.node, socket.clone()));
    let snapshot = wait_for_list(&daemon, &socket);
    let iface = &snapshot.interfaces;
    assert!(
        iface.len() == 1 && iface[0].name == NODE_IFACE && iface[0].attached,
        "{iface:?}"
    );
    let published: Vec<(String, String)> = snapshot
        .services
        .iter()
        .flat_map(|s| {
            s.frontends.iter().flat_map(|f| {
                s.backends
                    .iter()
                    .map(|b| (f.frontend.clone(), b.backend.clone()))
            })
        })
        .collect();
    assert_eq!(
        published,
        [("*:8080/tcp".to_string(), "198.19.0.2:3000".to_string())]
    );
    assert!(
        xdp_attached(&topo.node),
        "XDP on {NODE_IFACE} while running"
    );
    let body = http_get(&topo.client, frontend).unwrap();
    assert_eq!(served_by(&body), "b0", "{body}");

    daemon.stop().expect("run returns Ok when stopped");
    assert!(!socket.exists(), "the control socket is removed");
    assert!(!pin_dir(&topo.node).exists(), "nothing stays pinned");
    assert!(!xdp_attached(&topo.node), "XDP detached from {NODE_IFACE}");
    // Nothing translates the port any more: the node itself refuses it.
    let err = http_get(&topo.client, frontend).unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
}
