//! Restarts and upgrades that break no flow: the dataplane is pinned, keeps
//! forwarding while no daemon runs, and the next daemon adopts it and swaps
//! its programs in place.

use std::{net::SocketAddr, process::Command, time::Duration};

use aya::{
    maps::{Array, Map, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use portmap_common::abi::DatapathConfig;
use portmap_tests::{
    bin_path,
    client::{http_get, served_by},
    daemon::Portmap,
    load::Load,
    netns::Netns,
    server::Server,
    topo::{NODE_IFACE, NODE_V4, Topology, backend_v4},
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Two backends behind one frontend (Maglev spreads flows over them), so a
/// flow that lost its conntrack entry could land on the other one.
fn two_backends(tag: &str) -> (Topology, Vec<Server>) {
    let topo = Topology::new(tag, 2).unwrap();
    let servers = (0..2)
        .map(|i| {
            let b = SocketAddr::new(backend_v4(i), 3000);
            Server::start(&topo.backends[i], &format!("b{i}"), &[b], &[b]).unwrap()
        })
        .collect();
    (topo, servers)
}

/// A service over both backends, as a manifest would give it, through `-p`
/// specs on two ports... `-p` maps one backend per frontend, so the two
/// backends get a frontend each and the load uses the first.
const ARGS: [&str; 6] = [
    "--iface",
    NODE_IFACE,
    "-p",
    "8080:198.19.0.2:3000",
    "-p",
    "8080:198.19.0.2:3000/udp",
];

fn xdp_prog_id(node: &Netns) -> Option<u32> {
    let out = node
        .exec("ip", &["-d", "link", "show", "dev", NODE_IFACE])
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let at = text.find("prog/xdp id ")?;
    text[at + 12..].split_whitespace().next()?.parse().ok()
}

/// The tag of a loaded program: a hash of its instructions.
fn prog_tag(id: u32) -> u64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.tag())
        .unwrap_or_else(|| panic!("no loaded program {id}"))
}

fn tc_prog_ids(node: &Netns) -> Vec<u32> {
    node.run(|| {
        let (_, programs) = SchedClassifier::query_tcx(NODE_IFACE, TcAttachType::Egress).unwrap();
        programs.iter().map(|p| p.id()).collect()
    })
}

#[test]
fn sigkill_and_restart_break_no_flow() {
    let (topo, _servers) = two_backends("kill");
    let pm = Portmap::start(&topo.node, &ARGS).unwrap();
    let load = Load::start(&topo.client, sa(NODE_V4, 8080), sa(NODE_V4, 8080), 6).unwrap();
    load.wait_for(50);
    let before = pm
        .metrics(&topo.node)
        .unwrap()
        .sum("portmap_packets_total", &[("frontend", "*:8080/tcp")]);
    let xdp_before = xdp_prog_id(&topo.node);

    // kill -9: nothing runs on exit, the pinned dataplane stays.
    let mut child = pm.abandon().expect("running");
    child.kill().unwrap();
    child.wait().unwrap();
    load.wait_for(50);
    assert_eq!(
        xdp_prog_id(&topo.node),
        xdp_before,
        "the programs stay attached without a daemon"
    );

    let pm = Portmap::start(&topo.node, &ARGS).unwrap();
    assert!(pm.logs().contains("adopted the dataplane"), "{}", pm.logs());
    load.wait_for(100);
    let report = load.stop();
    report.assert_no_failures();
    let after = pm
        .metrics(&topo.node)
        .unwrap()
        .sum("portmap_packets_total", &[("frontend", "*:8080/tcp")]);
    assert!(
        after > before,
        "counters carry on across the restart: {before} then {after}"
    );
    let xdp_after = xdp_prog_id(&topo.node);
    assert!(
        xdp_after.is_some() && xdp_after != xdp_before,
        "the new daemon's program replaced the old one"
    );
}

#[test]
fn upgrade_to_a_changed_program_keeps_flows() {
    let (topo, _servers) = two_backends("upgr");
    let mut args = ARGS.to_vec();
    args.push("--keep-datapath");
    let mut pm = Portmap::start(&topo.node, &args).unwrap();
    let load = Load::start(&topo.client, sa(NODE_V4, 8080), sa(NODE_V4, 8080), 6).unwrap();
    load.wait_for(50);
    let (xdp_before, tc_before) = (xdp_prog_id(&topo.node), tc_prog_ids(&topo.node));
    // Read now: the old program is unloaded once it is swapped out.
    let tag = |id: Option<u32>| prog_tag(id.expect("an XDP program is attached"));
    let xdp_tag_before = tag(xdp_before);
    assert!(pm.stop().unwrap().success(), "{}", pm.logs());
    assert!(
        pm.logs().contains("left the dataplane pinned"),
        "{}",
        pm.logs()
    );
    drop(pm.abandon());
    load.wait_for(30);

    // The upgrade: programs whose code differs (the variant has a test
    // hard-wired), same map layout.
    let mut upgraded = args.clone();
    upgraded.extend(["--datapath-variant", "1"]);
    let pm = Portmap::start(&topo.node, &upgraded).unwrap();
    load.wait_for(100);
    let report = load.stop();
    report.assert_no_failures();

    let (xdp_after, tc_after) = (xdp_prog_id(&topo.node), tc_prog_ids(&topo.node));
    assert_ne!(xdp_after, xdp_before, "XDP program replaced");
    assert_ne!(
        tag(xdp_after),
        xdp_tag_before,
        "the XDP program swapped in has other code (another tag), not only other data"
    );
    assert_eq!(
        tc_after.len(),
        1,
        "one tc program, swapped in place: {tc_after:?}"
    );
    assert_ne!(tc_after, tc_before, "tc program replaced");
    let m = pm.metrics(&topo.node).unwrap();
    assert!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "variant_translated")]
        ) > 0.0,
        "the upgraded program translates the established flows"
    );
}

#[test]
fn kept_dataplane_forwards_until_reset() {
    let (topo, _servers) = two_backends("keep");
    let mut args = ARGS.to_vec();
    args.push("--keep-datapath");
    let mut pm = Portmap::start(&topo.node, &args).unwrap();
    assert!(pm.stop().unwrap().success());
    let pins = pm.pins.clone();
    assert!(pins.join("maps/CONNTRACK").exists(), "maps stay pinned");
    // No daemon, and the port is still published.
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 8080)).unwrap()),
        "b0"
    );

    let out = Command::new(bin_path("portmap"))
        .args(["reset", "--bpffs-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.exists(), "pins removed");
    assert_eq!(xdp_prog_id(&topo.node), None, "XDP detached");
    assert!(tc_prog_ids(&topo.node).is_empty(), "tc detached");
    assert!(
        http_get(&topo.client, sa(NODE_V4, 8080)).is_err(),
        "no longer published"
    );
}

#[test]
fn plain_stop_unpins_everything() {
    let (topo, _servers) = two_backends("plain");
    let mut pm = Portmap::start(&topo.node, &ARGS).unwrap();
    assert!(pm.pins.join("links").exists());
    assert!(pm.stop().unwrap().success());
    assert!(!pm.pins.exists(), "nothing left in {}", pm.pins.display());
    assert_eq!(xdp_prog_id(&topo.node), None);
}

#[test]
fn incompatible_pinned_state_is_refused_and_left_running() {
    let (topo, _servers) = two_backends("compat");
    let mut args = ARGS.to_vec();
    args.push("--keep-datapath");
    let mut pm = Portmap::start(&topo.node, &args).unwrap();
    assert!(pm.stop().unwrap().success());
    let pins = pm.pins.clone();
    drop(pm.abandon());

    // Other map sizes than the pinned ones: refused, naming the map.
    let mut resized = args.clone();
    resized.extend(["--max-backends", "100"]);
    let err = Portmap::start(&topo.node, &resized)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("cannot be adopted") && err.contains("BACKENDS"),
        "{err}"
    );
    // A different layout version: refused rather than misread.
    let config = MapData::from_pin(pins.join("maps/CONFIG")).unwrap();
    let mut config: Array<_, DatapathConfig> = Array::try_from(Map::Array(config)).unwrap();
    let mut value = config.get(&0, 0).unwrap();
    value.layout_version = 1;
    config.set(0, value, 0).unwrap();
    let err = Portmap::start(&topo.node, &args)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("layout version 1"), "{err}");
    assert!(err.contains("portmap reset"), "says how to proceed: {err}");

    // Refusing changed nothing: the old dataplane still forwards.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 8080)).unwrap()),
        "b0"
    );
    portmap_tests::daemon::reset_pins(&pins);
}
