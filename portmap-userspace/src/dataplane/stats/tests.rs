//! Stats from the record, with counters given by id, without a kernel.

use crate::{
    dataplane::{
        NODE_ADDRS_CAPACITY,
        fake::{LIMITS, Lab, endpoint, frontend, ip, one_service, ready, service, state},
        maps::names,
        stats::{Counters, MapUsage},
    },
    model::EndpointState,
};

fn counters(n: u64) -> Counters {
    Counters {
        request_packets: n,
        request_bytes: 100 * n,
        reply_packets: n,
        reply_bytes: 1000 * n,
    }
}

#[test]
fn services_show_their_frontends_and_backends_with_their_counters() {
    let mut lab = Lab::new();
    let desired = state(vec![service(
        "default/web:http",
        &[frontend("198.18.0.1", 80), frontend("203.0.113.10", 80)],
        &[
            ready("198.19.0.2"),
            endpoint("198.19.0.3", EndpointState::Terminating),
        ],
    )]);
    assert!(lab.apply(&desired).is_complete());
    let stats = lab
        .applied
        .service_stats(
            |id| Ok(counters(u64::from(id) + 1)),
            |id| Ok(counters(u64::from(id) + 10)),
        )
        .unwrap();
    assert_eq!(stats.len(), 1);
    let svc = &stats[0];
    assert_eq!(
        (
            svc.key.as_str(),
            svc.service.as_str(),
            svc.port_name.as_str()
        ),
        ("default/web:http", "default/web", "http")
    );
    let frontends: Vec<(&str, Counters)> = svc
        .frontends
        .iter()
        .map(|f| (f.frontend.as_str(), f.counters))
        .collect();
    assert_eq!(
        frontends,
        [
            ("198.18.0.1:80/tcp", counters(1)),
            ("203.0.113.10:80/tcp", counters(2))
        ]
    );
    let backends: Vec<(&str, EndpointState, bool, Counters)> = svc
        .backends
        .iter()
        .map(|b| (b.backend.as_str(), b.state, b.in_table, b.counters))
        .collect();
    assert_eq!(
        backends,
        [
            ("198.19.0.2:3000", EndpointState::Ready, true, counters(10)),
            (
                "198.19.0.3:3000",
                EndpointState::Terminating,
                false,
                counters(11)
            ),
        ],
        "a terminating backend is out of the table while one is ready"
    );
}

#[test]
fn a_counter_that_cannot_be_read_says_whose() {
    let mut lab = Lab::new();
    assert!(lab.apply(&one_service()).is_complete());
    let error = lab
        .applied
        .service_stats(|_| Ok(counters(0)), |_| anyhow::bail!("gone"))
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("backend 198.19.0.2:3000"),
        "{error:#}"
    );
}

#[test]
fn map_usage_counts_what_the_record_holds() {
    let mut lab = Lab::new();
    let desired = state(vec![service(
        "web",
        &[frontend("198.18.0.1", 80), frontend("198.18.0.1", 443)],
        &[ready("198.19.0.2"), ready("198.19.0.3")],
    )]);
    assert!(lab.apply(&desired).is_complete());
    lab.applied.node_addrs = [ip("198.18.0.1")].into();
    let table = lab.applied.services["web"]
        .table
        .as_ref()
        .unwrap()
        .region
        .len;
    let pool = lab.applied.regions.capacity();
    let usage = |map: &str, entries: u64, capacity: u64| MapUsage::new(map, entries, capacity);
    assert_eq!(
        lab.applied.map_usage(None, None),
        [
            usage(names::FRONTENDS, 2, LIMITS.frontends.into()),
            usage(names::BACKENDS, 2, LIMITS.backends.into()),
            usage(names::MAGLEV, table.into(), pool.into()),
            usage(names::NODE_ADDRS, 1, NODE_ADDRS_CAPACITY),
        ]
    );
    let with_gc = lab.applied.map_usage(Some(7), None);
    assert_eq!(
        with_gc.last(),
        Some(&usage(names::CONNTRACK, 7, LIMITS.conntrack.into()))
    );
}
