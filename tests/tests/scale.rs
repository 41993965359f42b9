//! Large clusters on default flags, and clusters larger than the maps: what
//! fits is published, the rest reported per object and retried.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use portmap_tests::{
    client::{http_get, served_by},
    daemon::Portmap,
    kube::{ManifestDir, cluster, cluster_ip, reloads, wait_reloaded},
    server::Server,
    topo::{NODE_IFACE, Topology, backend_v4},
};

fn http(i: u32) -> SocketAddr {
    SocketAddr::new(cluster_ip(i), 80)
}

fn servers(topo: &Topology) -> Vec<Server> {
    (0..topo.backends.len())
        .map(|i| {
            let addr = SocketAddr::new(backend_v4(i), 3000);
            Server::start(&topo.backends[i], &format!("b{i}"), &[addr], &[]).unwrap()
        })
        .collect()
}

/// Polls `cond` every 100 ms for at most `within`.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 10,000 Services of 10 endpoints each (100,000 backends) start on default
/// flags, every one published; one of them serves a request, and an edit of
/// it among all the others applies.
#[test]
fn ten_thousand_services_of_ten_endpoints_on_default_flags() {
    const SERVICES: u32 = 10_000;
    const TARGET: u32 = 4_321;
    let topo = Topology::new("scale", 2).unwrap();
    let _servers = servers(&topo);
    let dir = ManifestDir::new("scale").unwrap();
    let manifests = |backend: usize| cluster(SERVICES, 10, &[(TARGET, vec![backend_v4(backend)])]);
    dir.write("cluster.yaml", &manifests(0)).unwrap();
    let path = dir.arg().to_str().unwrap().to_string();

    // Generous: a debug build reads 20,000 objects much slower than a
    // release build (the benchmark reports the start-up time).
    let within = Duration::from_secs(180);
    let started = Instant::now();
    let args = ["--iface", NODE_IFACE, "--manifests", &path];
    let pm = Portmap::start_within(&topo.node, &args, within).unwrap();
    eprintln!("started in {:.1} s", started.elapsed().as_secs_f64());
    let logs = pm.logs();
    assert!(
        logs.contains("maps sized for 10000 services, 10000 frontends, 99991 backends"),
        "{logs}"
    );
    let metrics = pm.metrics(&topo.node).unwrap();
    assert_eq!(
        metrics.sum("portmap_objects_not_published", &[]),
        0.0,
        "{logs}"
    );
    assert_eq!(
        metrics.sum("portmap_map_entries", &[("map", "FRONTENDS")]),
        f64::from(SERVICES)
    );
    assert_eq!(
        metrics.sum("portmap_map_entries", &[("map", "BACKENDS")]),
        f64::from((SERVICES - 1) * 10 + 1)
    );
    assert_eq!(
        served_by(&http_get(&topo.client, http(TARGET)).unwrap()),
        "b0"
    );

    // One Service of the 10,000 moves to the other backend. (The log, not
    // the metrics, says when: a scrape reads 200,000 series.)
    let reloaded = || pm.logs().matches("reloaded: ").count();
    let edited = Instant::now();
    dir.write("cluster.yaml", &manifests(1)).unwrap();
    assert!(eventually(within, || reloaded() > 0), "{}", pm.logs());
    eprintln!("reloaded in {:.1} s", edited.elapsed().as_secs_f64());
    assert!(pm.logs().contains("reloaded: 10000 services applied"));
    assert_eq!(
        served_by(&http_get(&topo.client, http(TARGET)).unwrap()),
        "b1"
    );
}

/// More Services than `--max-frontends` allows: the daemon starts with those
/// that fit, names each of the others in the log and in
/// `portmap_objects_not_published`, and publishes them once room is made.
#[test]
fn services_past_the_maps_are_reported_per_object_and_retried() {
    const LATE: u32 = 25;
    let topo = Topology::new("overfill", 1).unwrap();
    let _servers = servers(&topo);
    let dir = ManifestDir::new("overfill").unwrap();
    let real = [(0, vec![backend_v4(0)]), (LATE, vec![backend_v4(0)])];
    dir.write("cluster.yaml", &cluster(30, 3, &real)).unwrap();
    let path = dir.arg().to_str().unwrap().to_string();
    let args = [
        "--iface",
        NODE_IFACE,
        "--manifests",
        &path,
        "--max-frontends",
        "20",
    ];
    let pm = Portmap::start(&topo.node, &args).unwrap();

    let logs = pm.logs();
    let metrics = pm.metrics(&topo.node).unwrap();
    assert_eq!(
        metrics.sum("portmap_objects_not_published", &[]),
        10.0,
        "{logs}"
    );
    for i in 20..30 {
        let name = format!("default/svc-{i:05}:");
        assert!(
            logs.lines().any(|l| l.contains(&name)
                && l.contains("not published: services: 1 more needed but 0 free of 20")),
            "{name} not reported:\n{logs}"
        );
        assert!(
            metrics
                .0
                .iter()
                .any(|s| s.name == "portmap_objects_not_published"
                    && s.labels.get("object").is_some_and(|o| o.starts_with(&name))
                    && s.labels.get("reason").map(String::as_str) == Some("services")),
            "{name} not in the metric"
        );
    }
    assert!(logs.contains("10 of 30 services are not published (10 for want of services)"));
    // What fit works; what did not is not published.
    assert_eq!(served_by(&http_get(&topo.client, http(0)).unwrap()), "b0");
    assert!(http_get(&topo.client, http(LATE)).is_err());

    // Ten Services go: their room comes back after the grace period, and
    // the ten left out are published without another edit.
    let before = reloads(&pm, &topo.node, "success").unwrap();
    let remaining: Vec<String> = cluster(30, 3, &real)
        .split("---\n")
        .filter(|doc| !(1..=10).any(|i| doc.contains(&format!("svc-{i:05}"))))
        .map(str::to_string)
        .collect();
    dir.write("cluster.yaml", &remaining.join("---\n")).unwrap();
    wait_reloaded(&pm, &topo.node, before).unwrap();
    let published = eventually(Duration::from_secs(15), || {
        pm.metrics(&topo.node)
            .unwrap()
            .sum("portmap_objects_not_published", &[])
            == 0.0
    });
    assert!(published, "still left out:\n{}", pm.logs());
    assert!(pm.logs().contains("all 20 services are published"));
    assert_eq!(
        served_by(&http_get(&topo.client, http(LATE)).unwrap()),
        "b0"
    );
}

/// What the user typed is another matter: a `-p` mapping that does not fit
/// is an error at start, naming it.
#[test]
fn a_typed_mapping_that_does_not_fit_fails_the_start() {
    let topo = Topology::new("typedfull", 1).unwrap();
    let err = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000",
            "-p",
            "8081:198.19.0.2:3000",
            "--max-frontends",
            "1",
        ],
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("could not publish") && err.contains("-p 8081:198.19.0.2:3000"),
        "{err}"
    );
}
