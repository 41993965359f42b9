//! The order of an apply's map writes (make before break), read from the
//! journal of a real apply. They load the eBPF object, so they run as root,
//! as every test of this project does.

use std::net::IpAddr;

use portmap_common::abi::DatapathConfig;

use crate::{
    dataplane::{
        Dataplane, Limits,
        journal::{MapOp, Op},
        maps::names,
    },
    model::{
        Cidr, DesiredState, Endpoint, EndpointState, Frontend, HostAddr, Protocol, Service,
        WhenEmpty,
    },
};

fn loaded() -> Dataplane {
    let limits = Limits {
        frontends: 64,
        backends: 64,
        conntrack: 1024,
    };
    Dataplane::load(limits, DatapathConfig::default())
        .expect("loading the eBPF object (the unit tests run as root)")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("a prefix")
}

fn endpoint(addr: &str, state: EndpointState) -> Endpoint {
    Endpoint {
        addr: ip(addr),
        port: 3000,
        state,
    }
}

/// A LoadBalancer-like service on 203.0.113.10:80 with `ranges`.
fn service(endpoints: &[Endpoint], ranges: &[&str]) -> DesiredState {
    DesiredState {
        services: vec![Service {
            key: "default/web:http".into(),
            name: "default/web".into(),
            port_name: "http".into(),
            frontends: vec![Frontend {
                addr: HostAddr::Ip(ip("203.0.113.10")),
                port: 80,
                proto: Protocol::Tcp,
            }],
            endpoints: endpoints.to_vec(),
            affinity_timeout_s: None,
            when_empty: WhenEmpty::Reject,
            source_ranges: ranges.iter().map(|r| cidr(r)).collect(),
        }],
    }
}

fn ready(addr: &str) -> Endpoint {
    endpoint(addr, EndpointState::Ready)
}

/// Applies `first`, then returns the journal of applying `then` to it.
fn writes_between(first: &DesiredState, then: &DesiredState) -> Vec<MapOp> {
    let mut dp = loaded();
    let report = dp.apply(first).expect("first apply");
    assert!(report.is_complete(), "{:?}", report.failed);
    dp.journal.take();
    let report = dp.apply(then).expect("second apply");
    assert!(report.is_complete(), "{:?}", report.failed);
    dp.journal.take()
}

/// Where the first operation on `map` of kind `op` whose key contains `key`
/// is; fails, listing the journal, if there is none.
fn at(ops: &[MapOp], map: &str, op: Op, key: &str) -> usize {
    ops.iter()
        .position(|o| o.map == map && o.op == op && o.key.contains(key))
        .unwrap_or_else(|| panic!("no {op:?} {map}[{key}] in:\n{}", listing(ops)))
}

fn listing(ops: &[MapOp]) -> String {
    ops.iter()
        .map(|o| format!("  {o}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_before(ops: &[MapOp], first: usize, then: usize) {
    assert!(
        first < then,
        "{} must come before {}:\n{}",
        ops[first],
        ops[then],
        listing(ops)
    );
}

const FE: &str = "203.0.113.10:80/tcp";

/// The bug of the lifecycle issue: ranges removed (a Service loses its
/// `loadBalancerSourceRanges`). Until the frontend is rewritten without the
/// flag, every prefix must still be there, or new flows are dropped.
#[test]
fn source_ranges_shrinking_to_none_leave_after_the_flag() {
    let eps = [ready("198.19.0.2")];
    let ops = writes_between(
        &service(&eps, &["198.18.0.0/24", "192.0.2.0/24"]),
        &service(&eps, &[]),
    );
    let frontend = at(&ops, names::FRONTENDS, Op::Write, FE);
    for prefix in ["198.18.0.0/24", "192.0.2.0/24"] {
        assert_before(
            &ops,
            frontend,
            at(&ops, names::SOURCE_RANGES, Op::Remove, prefix),
        );
    }
}

/// Ranges added to an unrestricted service: the prefixes are there before
/// the flag that enforces them.
#[test]
fn source_ranges_from_none_go_in_before_the_flag() {
    let eps = [ready("198.19.0.2")];
    let ops = writes_between(&service(&eps, &[]), &service(&eps, &["198.18.0.0/24"]));
    assert_before(
        &ops,
        at(&ops, names::SOURCE_RANGES, Op::Write, "198.18.0.0/24"),
        at(&ops, names::FRONTENDS, Op::Write, FE),
    );
}

/// One prefix replaced by another: the new one is allowed before the old
/// one goes, so the restricted frontend never has none.
#[test]
fn a_replaced_source_range_goes_after_its_successor_arrives() {
    let eps = [ready("198.19.0.2")];
    let ops = writes_between(
        &service(&eps, &["198.18.0.0/24"]),
        &service(&eps, &["192.0.2.0/24"]),
    );
    assert_before(
        &ops,
        at(&ops, names::SOURCE_RANGES, Op::Write, "192.0.2.0/24"),
        at(&ops, names::SOURCE_RANGES, Op::Remove, "198.18.0.0/24"),
    );
}

/// A new service: its backends, its table and its frontend's generation
/// exist before the frontend that leads to them.
#[test]
fn a_new_service_is_published_last() {
    let ops = writes_between(
        &DesiredState::default(),
        &service(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
    );
    let frontend = at(&ops, names::FRONTENDS, Op::Write, FE);
    for before in [
        at(&ops, names::BACKENDS, Op::Write, "198.19.0.2"),
        at(&ops, names::BACKENDS, Op::Write, "198.19.0.3"),
        at(&ops, names::MAGLEV, Op::Write, ""),
        at(&ops, names::FRONTEND_GEN, Op::Write, ""),
        at(&ops, names::FRONTEND_STATS, Op::Write, ""),
    ] {
        assert_before(&ops, before, frontend);
    }
}

/// A backend replaced by another: the new backend and a table naming it are
/// written before the frontend switches, and the old backend is freed after.
#[test]
fn a_replaced_backend_is_freed_after_the_switch() {
    let ops = writes_between(
        &service(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
        &service(&[ready("198.19.0.2"), ready("198.19.0.4")], &[]),
    );
    let new_backend = at(&ops, names::BACKENDS, Op::Write, "198.19.0.4");
    let table = at(&ops, names::MAGLEV, Op::Write, "");
    let frontend = at(&ops, names::FRONTENDS, Op::Write, FE);
    let old_backend = at(&ops, names::BACKENDS, Op::Write, "198.19.0.3");
    assert_before(&ops, new_backend, table);
    assert_before(&ops, table, frontend);
    assert_before(&ops, frontend, old_backend);
}

/// A backend going terminating while another stays ready: the table without
/// it is in place before the frontend points there; the backend keeps its
/// slot (its flows carry on).
#[test]
fn a_terminating_backend_leaves_the_table_before_the_frontend_switches() {
    let ops = writes_between(
        &service(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
        &service(
            &[
                ready("198.19.0.2"),
                endpoint("198.19.0.3", EndpointState::Terminating),
            ],
            &[],
        ),
    );
    assert_before(
        &ops,
        at(&ops, names::MAGLEV, Op::Write, ""),
        at(&ops, names::FRONTENDS, Op::Write, FE),
    );
    assert!(
        !ops.iter()
            .any(|o| o.map == names::BACKENDS && o.key.contains("state 0")),
        "a terminating backend is not freed:\n{}",
        listing(&ops)
    );
}

/// A service removed: the frontend goes first, then its backends and its
/// prefixes, so no packet finds a frontend whose backends are gone.
#[test]
fn a_removed_service_unpublishes_its_frontend_first() {
    let ops = writes_between(
        &service(&[ready("198.19.0.2")], &["198.18.0.0/24"]),
        &DesiredState::default(),
    );
    let frontend = at(&ops, names::FRONTENDS, Op::Remove, FE);
    assert_before(
        &ops,
        frontend,
        at(&ops, names::BACKENDS, Op::Write, "198.19.0.2"),
    );
    assert_before(
        &ops,
        frontend,
        at(&ops, names::SOURCE_RANGES, Op::Remove, "198.18.0.0/24"),
    );
}
