//! The order of an apply's map operations (make before break), for every kind
//! of change, read from the plans the writer carried out on maps held in
//! memory (no kernel). Besides the order asserted here, the in-memory maps
//! check after every operation that nothing a packet could meet is broken
//! (see `fake`).

use std::collections::HashMap;

use portmap_common::abi::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, BACKEND_UNUSED, FE_AFFINITY_CLIENT_IP,
    FE_DROP_NO_BACKENDS, FE_HOST_ONLY, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES, FRONTEND_GEN_FREE,
};

use crate::{
    dataplane::{
        alloc::GRACE,
        fake::{Lab, endpoint, frontend, ip, listing, ops_between, ready, service, state},
        plan::{MapOp, Plan},
        state::Commit,
    },
    model::{Cidr, DesiredState, Endpoint, EndpointState, Frontend, Service, WhenEmpty},
};

fn cidr(s: &str) -> Cidr {
    s.parse().expect("a prefix")
}

fn terminating(addr: &str) -> Endpoint {
    endpoint(addr, EndpointState::Terminating)
}

/// The frontend of [`web`].
fn fe() -> Frontend {
    frontend("203.0.113.10", 80)
}

/// `default/web:http` on 203.0.113.10:80 with `ranges`.
fn web_service(endpoints: &[Endpoint], ranges: &[&str]) -> Service {
    Service {
        source_ranges: ranges.iter().map(|r| cidr(r)).collect(),
        ..service("default/web:http", &[fe()], endpoints)
    }
}

fn web(endpoints: &[Endpoint], ranges: &[&str]) -> DesiredState {
    state(vec![web_service(endpoints, ranges)])
}

/// Where the first operation `what` describes is; fails, listing the
/// operations, if there is none.
fn at(ops: &[MapOp], what: &str, pred: impl Fn(&MapOp) -> bool) -> usize {
    ops.iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} in:\n{}", listing(ops)))
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

fn assert_none(ops: &[MapOp], what: &str, pred: impl Fn(&MapOp) -> bool) {
    assert!(
        !ops.iter().any(pred),
        "no {what} expected in:\n{}",
        listing(ops)
    );
}

fn publish(ops: &[MapOp], f: Frontend) -> usize {
    at(
        ops,
        &format!("publish {f}"),
        |o| matches!(o, MapOp::PublishFrontend { frontend, .. } if *frontend == f),
    )
}

fn unpublish(ops: &[MapOp], f: Frontend) -> usize {
    at(
        ops,
        &format!("unpublish {f}"),
        |o| matches!(o, MapOp::UnpublishFrontend { frontend } if *frontend == f),
    )
}

fn backend(ops: &[MapOp], addr: &str, state: u8) -> usize {
    at(ops, &format!("backend {addr} state {state}"), |o| {
        matches!(o, MapOp::WriteBackend { backend: b, .. }
            if b.addr.ip() == ip(addr) && b.state == state)
    })
}

fn table(ops: &[MapOp]) -> usize {
    at(ops, "table write", |o| {
        matches!(o, MapOp::WriteTable { .. })
    })
}

fn allow(ops: &[MapOp], prefix: &str) -> usize {
    at(
        ops,
        &format!("allow {prefix}"),
        |o| matches!(o, MapOp::AllowSource { cidr: c, .. } if *c == cidr(prefix)),
    )
}

fn forget(ops: &[MapOp], prefix: &str) -> usize {
    at(
        ops,
        &format!("forget {prefix}"),
        |o| matches!(o, MapOp::ForgetSource { cidr: c, .. } if *c == cidr(prefix)),
    )
}

/// The generation write of frontend id `id`, live or retired.
fn generation(ops: &[MapOp], id: u32, retired: bool) -> usize {
    at(ops, &format!("FRONTEND_GEN[{id}] retired {retired}"), |o| {
        matches!(o, MapOp::WriteFrontendGen { id: i, generation }
            if *i == id && (generation & FRONTEND_GEN_FREE != 0) == retired)
    })
}

/// The value `ops` publishes for `f` (the last one).
fn published(ops: &[MapOp], f: Frontend) -> portmap_common::abi::FrontendValue {
    ops.iter()
        .rev()
        .find_map(|o| match o {
            MapOp::PublishFrontend { frontend, value } if *frontend == f => Some(*value),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{f} is not published in:\n{}", listing(ops)))
}

fn only_frontend_writes(ops: &[MapOp]) {
    assert!(
        !ops.is_empty()
            && ops
                .iter()
                .all(|o| matches!(o, MapOp::PublishFrontend { .. })),
        "only frontends rewritten, in place, expected:\n{}",
        listing(ops)
    );
}

// Source ranges.

/// The bug of the lifecycle issue: ranges removed (a Service loses its
/// `loadBalancerSourceRanges`). Until the frontend is rewritten without the
/// flag, every prefix must still be there, or new flows are dropped.
#[test]
fn source_ranges_shrinking_to_none_leave_after_the_flag() {
    let eps = [ready("198.19.0.2")];
    let ops = ops_between(
        &web(&eps, &["198.18.0.0/24", "192.0.2.0/24"]),
        &web(&eps, &[]),
    );
    let frontend = publish(&ops, fe());
    assert_eq!(published(&ops, fe()).flags & FE_SOURCE_RANGES, 0);
    for prefix in ["198.18.0.0/24", "192.0.2.0/24"] {
        assert_before(&ops, frontend, forget(&ops, prefix));
    }
}

/// Ranges added to an unrestricted service: the prefixes are there before
/// the flag that enforces them.
#[test]
fn source_ranges_from_none_go_in_before_the_flag() {
    let eps = [ready("198.19.0.2")];
    let ops = ops_between(&web(&eps, &[]), &web(&eps, &["198.18.0.0/24"]));
    assert_before(&ops, allow(&ops, "198.18.0.0/24"), publish(&ops, fe()));
    assert_ne!(published(&ops, fe()).flags & FE_SOURCE_RANGES, 0);
}

/// One prefix replaced by another: the new one is allowed before the old
/// one goes, so the restricted frontend never has none.
#[test]
fn a_replaced_source_range_goes_after_its_successor_arrives() {
    let eps = [ready("198.19.0.2")];
    let ops = ops_between(
        &web(&eps, &["198.18.0.0/24"]),
        &web(&eps, &["192.0.2.0/24"]),
    );
    assert_before(
        &ops,
        allow(&ops, "192.0.2.0/24"),
        forget(&ops, "198.18.0.0/24"),
    );
    assert_none(&ops, "frontend write (the flag stays)", |o| {
        matches!(o, MapOp::PublishFrontend { .. })
    });
}

/// Ranges grown or shrunk while restricted: only the prefixes change.
#[test]
fn source_ranges_grown_or_shrunk_change_only_prefixes() {
    let eps = [ready("198.19.0.2")];
    let one = web(&eps, &["198.18.0.0/24"]);
    let two = web(&eps, &["198.18.0.0/24", "2001:db8::/64"]);
    let ops = ops_between(&one, &two);
    assert_eq!(ops.len(), 1, "{}", listing(&ops));
    allow(&ops, "2001:db8::/64");
    let ops = ops_between(&two, &one);
    assert_eq!(ops.len(), 1, "{}", listing(&ops));
    forget(&ops, "2001:db8::/64");
}

// Services added and removed.

/// A new service: its backends, its table and its frontend's generation
/// and counters exist before the frontend that leads to them.
#[test]
fn a_new_service_is_published_last() {
    let ops = ops_between(
        &DesiredState::default(),
        &web(
            &[ready("198.19.0.2"), ready("198.19.0.3")],
            &["198.18.0.0/24"],
        ),
    );
    let frontend = publish(&ops, fe());
    let value = published(&ops, fe());
    for before in [
        at(&ops, "backend counters zeroed", |o| {
            matches!(o, MapOp::ZeroBackendStats { .. })
        }),
        backend(&ops, "198.19.0.2", BACKEND_ACTIVE),
        backend(&ops, "198.19.0.3", BACKEND_ACTIVE),
        table(&ops),
        allow(&ops, "198.18.0.0/24"),
        generation(&ops, value.frontend_id, false),
        at(
            &ops,
            "frontend counters zeroed",
            |o| matches!(o, MapOp::ZeroFrontendStats { id } if *id == value.frontend_id),
        ),
    ] {
        assert_before(&ops, before, frontend);
    }
    assert_before(
        &ops,
        backend(&ops, "198.19.0.3", BACKEND_ACTIVE),
        table(&ops),
    );
    assert_eq!(ops.last(), Some(&ops[frontend]), "{}", listing(&ops));
}

/// A service removed: the frontend goes first (its generation retired
/// after), then its backends and its prefixes, so no packet finds a
/// frontend whose backends are gone.
#[test]
fn a_removed_service_unpublishes_its_frontend_first() {
    let before = web(&[ready("198.19.0.2")], &["198.18.0.0/24"]);
    let mut lab = Lab::new();
    let ops = lab.change(&before, &DesiredState::default());
    let frontend = unpublish(&ops, fe());
    assert_eq!(frontend, 0, "{}", listing(&ops));
    assert_before(&ops, frontend, generation(&ops, 0, true));
    assert_before(&ops, frontend, backend(&ops, "198.19.0.2", BACKEND_UNUSED));
    assert_before(&ops, frontend, forget(&ops, "198.18.0.0/24"));
    assert!(lab.applied.services.is_empty());
    assert!(lab.maps.frontends.is_empty() && lab.maps.source_ranges.is_empty());
    assert_eq!(lab.applied.backend_ids.in_use(), 0);
    assert_eq!(lab.applied.frontend_ids.in_use(), 0);
}

/// An unchanged service is skipped: no operation at all.
#[test]
fn an_unchanged_service_writes_nothing() {
    let desired = web(&[ready("198.19.0.2")], &["198.18.0.0/24"]);
    assert_eq!(ops_between(&desired, &desired), []);
}

// Backends.

/// A backend replaced by another: the new backend and a table naming it are
/// written before the frontend switches, and the old backend is freed after.
#[test]
fn a_replaced_backend_is_freed_after_the_switch() {
    let ops = ops_between(
        &web(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
        &web(&[ready("198.19.0.2"), ready("198.19.0.4")], &[]),
    );
    let new_backend = backend(&ops, "198.19.0.4", BACKEND_ACTIVE);
    let frontend = publish(&ops, fe());
    assert_before(&ops, new_backend, table(&ops));
    assert_before(&ops, table(&ops), frontend);
    assert_before(&ops, frontend, backend(&ops, "198.19.0.3", BACKEND_UNUSED));
}

/// A backend added: written before the table naming it; nothing is freed.
#[test]
fn an_added_backend_is_written_before_the_table_that_names_it() {
    let ops = ops_between(
        &web(&[ready("198.19.0.2")], &[]),
        &web(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
    );
    assert_before(
        &ops,
        backend(&ops, "198.19.0.3", BACKEND_ACTIVE),
        table(&ops),
    );
    assert_before(&ops, table(&ops), publish(&ops, fe()));
    assert_none(
        &ops,
        "backend freed",
        |o| matches!(o, MapOp::WriteBackend { backend, .. } if backend.state == BACKEND_UNUSED),
    );
}

/// A backend removed: the table without it is in place before the frontend
/// switches, and only then is it marked unused.
#[test]
fn a_removed_backend_is_freed_after_the_switch() {
    let ops = ops_between(
        &web(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
        &web(&[ready("198.19.0.2")], &[]),
    );
    assert_before(&ops, table(&ops), publish(&ops, fe()));
    assert_before(
        &ops,
        publish(&ops, fe()),
        backend(&ops, "198.19.0.3", BACKEND_UNUSED),
    );
}

/// A backend going terminating while another stays ready: its new state is
/// written and the table without it is in place before the frontend points
/// there; the backend keeps its slot (its flows carry on).
#[test]
fn a_terminating_backend_leaves_the_table_before_the_frontend_switches() {
    let ops = ops_between(
        &web(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
        &web(&[ready("198.19.0.2"), terminating("198.19.0.3")], &[]),
    );
    let state = backend(&ops, "198.19.0.3", BACKEND_TERMINATING);
    assert_before(&ops, state, publish(&ops, fe()));
    assert_before(&ops, table(&ops), publish(&ops, fe()));
    assert_none(
        &ops,
        "backend freed",
        |o| matches!(o, MapOp::WriteBackend { backend, .. } if backend.state == BACKEND_UNUSED),
    );
}

/// Every backend terminating: the terminating ones still serve new flows
/// (KEP-1669), so the table keeps them, and nothing is rebuilt.
#[test]
fn all_terminating_keep_serving_from_the_same_table() {
    let ops = ops_between(
        &web(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
        &web(&[terminating("198.19.0.2"), terminating("198.19.0.3")], &[]),
    );
    backend(&ops, "198.19.0.2", BACKEND_TERMINATING);
    backend(&ops, "198.19.0.3", BACKEND_TERMINATING);
    assert_eq!(ops.len(), 2, "states only:\n{}", listing(&ops));
}

/// A terminating backend ready again: its state is active before the table
/// that takes it back is published.
#[test]
fn a_backend_ready_again_is_active_before_the_table_takes_it_back() {
    let ops = ops_between(
        &web(&[ready("198.19.0.2"), terminating("198.19.0.3")], &[]),
        &web(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]),
    );
    assert_before(
        &ops,
        backend(&ops, "198.19.0.3", BACKEND_ACTIVE),
        table(&ops),
    );
    assert_before(&ops, table(&ops), publish(&ops, fe()));
}

/// The last backend gone: the frontend gets no table (it rejects) before the
/// backend is freed.
#[test]
fn the_last_backend_gone_leaves_a_frontend_without_table_first() {
    let ops = ops_between(&web(&[ready("198.19.0.2")], &[]), &web(&[], &[]));
    let frontend = publish(&ops, fe());
    let value = published(&ops, fe());
    assert_eq!((value.table_size, value.flags), (0, FE_REJECT_NO_BACKENDS));
    assert_before(&ops, frontend, backend(&ops, "198.19.0.2", BACKEND_UNUSED));
}

/// A backend's port changed is another backend: in before the switch, the
/// old one out after.
#[test]
fn a_backend_port_change_is_make_before_break() {
    let moved = Endpoint {
        port: 3001,
        ..ready("198.19.0.2")
    };
    let ops = ops_between(&web(&[ready("198.19.0.2")], &[]), &web(&[moved], &[]));
    let new = at(&ops, "backend on port 3001", |o| {
        matches!(o, MapOp::WriteBackend { backend, .. }
            if backend.addr.port() == 3001 && backend.state == BACKEND_ACTIVE)
    });
    let old = at(&ops, "backend on port 3000 freed", |o| {
        matches!(o, MapOp::WriteBackend { backend, .. }
            if backend.addr.port() == 3000 && backend.state == BACKEND_UNUSED)
    });
    assert_before(&ops, new, table(&ops));
    assert_before(&ops, table(&ops), publish(&ops, fe()));
    assert_before(&ops, publish(&ops, fe()), old);
}

// Maglev tables.

/// A table whose size changes (the backend count crosses a power of two) is
/// built in a region apart from the one in use, and that region comes back
/// to use only after the grace period.
#[test]
fn a_replaced_table_is_built_aside_and_released_after_grace() {
    let two = [ready("198.19.0.2"), ready("198.19.0.3")];
    let three = [two[0], two[1], ready("198.19.0.4")];
    let mut lab = Lab::new();
    let first = lab.change(&DesiredState::default(), &web(&two, &[]));
    let old = published(&first, fe());
    let ops = lab.change(&web(&two, &[]), &web(&three, &[]));
    let new = published(&ops, fe());
    assert_ne!(old.table_size, new.table_size, "the size changes");
    assert!(
        new.table_offset >= old.table_offset + old.table_size
            || new.table_offset + new.table_size <= old.table_offset,
        "regions overlap: {old:?} {new:?}"
    );
    let both = new.table_size + old.table_size;
    assert_eq!(lab.applied.regions.in_use(), both, "the old one cools");
    lab.now += GRACE;
    assert!(lab.applied.regions.can_fit(&[old.table_size], lab.now));
    assert_eq!(lab.applied.regions.in_use(), new.table_size);
}

/// Same members and size: the table stays, whatever else changes.
#[test]
fn an_unchanged_table_is_not_rewritten() {
    let eps = [ready("198.19.0.2")];
    let ops = ops_between(&web(&eps, &[]), &web(&eps, &["198.18.0.0/24"]));
    assert_none(&ops, "table write", |o| {
        matches!(o, MapOp::WriteTable { .. })
    });
}

// Frontend values: affinity, what happens with no backend, host-only.

/// Session affinity on, its timeout changed, and off: each frontend is
/// rewritten in place (one update each), nothing else is touched.
#[test]
fn session_affinity_changes_rewrite_the_frontends_in_place() {
    let eps = [ready("198.19.0.2")];
    let plain = web(&eps, &[]);
    let with = |timeout| {
        let mut svc = web_service(&eps, &[]);
        svc.affinity_timeout_s = Some(timeout);
        state(vec![svc])
    };
    let ops = ops_between(&plain, &with(10_800));
    only_frontend_writes(&ops);
    let value = published(&ops, fe());
    assert_ne!(value.flags & FE_AFFINITY_CLIENT_IP, 0);
    assert_eq!(value.affinity_timeout_s, 10_800);
    let ops = ops_between(&with(10_800), &with(60));
    only_frontend_writes(&ops);
    assert_eq!(published(&ops, fe()).affinity_timeout_s, 60);
    let ops = ops_between(&with(60), &plain);
    only_frontend_writes(&ops);
    let value = published(&ops, fe());
    assert_eq!(value.flags & FE_AFFINITY_CLIENT_IP, 0);
    assert_eq!(value.affinity_timeout_s, 0);
}

/// What a service does without backends is a flag of its frontends.
#[test]
fn when_empty_changes_rewrite_the_frontends_in_place() {
    let eps = [ready("198.19.0.2")];
    let mut drop = web_service(&eps, &[]);
    drop.when_empty = WhenEmpty::Drop;
    let ops = ops_between(&web(&eps, &[]), &state(vec![drop]));
    only_frontend_writes(&ops);
    assert_eq!(published(&ops, fe()).flags, FE_DROP_NO_BACKENDS);
}

/// A frontend on a loopback address is for this host only.
#[test]
fn a_loopback_frontend_is_host_only() {
    let lo = frontend("127.0.0.1", 8080);
    let svc = service("lo", &[lo, fe()], &[ready("198.19.0.2")]);
    let ops = ops_between(&DesiredState::default(), &state(vec![svc]));
    assert_ne!(published(&ops, lo).flags & FE_HOST_ONLY, 0);
    assert_eq!(published(&ops, fe()).flags & FE_HOST_ONLY, 0);
}

// Frontends changed.

/// A frontend's address or port changed: the new one (generation first) is
/// published before the old one is unpublished, and the old generation is
/// retired after.
#[test]
fn a_frontend_address_or_port_change_is_make_before_break() {
    let eps = [ready("198.19.0.2")];
    let old = fe();
    for new in [frontend("203.0.113.11", 80), frontend("203.0.113.10", 8080)] {
        let before = state(vec![service("web", &[old], &eps)]);
        let after = state(vec![service("web", &[new], &eps)]);
        let ops = ops_between(&before, &after);
        let value = published(&ops, new);
        assert_before(
            &ops,
            generation(&ops, value.frontend_id, false),
            publish(&ops, new),
        );
        assert_before(&ops, publish(&ops, new), unpublish(&ops, old));
        assert_before(&ops, unpublish(&ops, old), generation(&ops, 0, true));
        assert_none(&ops, "backend or table write", |o| {
            matches!(o, MapOp::WriteBackend { .. } | MapOp::WriteTable { .. })
        });
    }
}

/// Several frontends switch to a new table, every one of them, before any
/// backend is freed or any frontend dropped.
#[test]
fn every_frontend_switches_before_anything_is_released() {
    let fronts = [
        fe(),
        frontend("198.18.0.1", 30080),
        frontend("10.96.0.10", 80),
    ];
    let before = state(vec![service(
        "web",
        &fronts,
        &[ready("198.19.0.2"), ready("198.19.0.3")],
    )]);
    let after = state(vec![service(
        "web",
        &fronts[..2],
        &[ready("198.19.0.2"), ready("198.19.0.4")],
    )]);
    let ops = ops_between(&before, &after);
    let released = [
        backend(&ops, "198.19.0.3", BACKEND_UNUSED),
        unpublish(&ops, fronts[2]),
    ];
    for f in &fronts[..2] {
        for r in released {
            assert_before(&ops, publish(&ops, *f), r);
        }
    }
}

/// A frontend moving to another service in one apply: the new owner's
/// update publishes it, and the old owner, updated after, does not
/// unpublish it (only retires its own generation).
#[test]
fn a_frontend_moving_between_services_is_left_to_its_new_owner() {
    let shared = frontend("203.0.113.20", 80);
    let a = |fronts: &[Frontend]| service("a", fronts, &[ready("198.19.0.2")]);
    let b = |fronts: &[Frontend]| service("b", fronts, &[ready("198.19.0.3")]);
    let before = state(vec![a(&[fe(), shared]), b(&[])]);
    // b first: it takes the frontend over before a lets it go.
    let after = state(vec![b(&[shared]), a(&[fe()])]);
    let mut lab = Lab::new();
    let ops = lab.change(&before, &after);
    let taken = publish(&ops, shared);
    assert_none(
        &ops,
        "unpublish of the moved frontend",
        |o| matches!(o, MapOp::UnpublishFrontend { frontend } if *frontend == shared),
    );
    let a_id = lab.applied.services["a"].frontends[&fe()].value.frontend_id;
    let retired = at(&ops, "a's generation of it retired", |o| {
        matches!(o, MapOp::WriteFrontendGen { id, generation }
            if *id != a_id && generation & FRONTEND_GEN_FREE != 0)
    });
    assert_before(&ops, taken, retired);
    assert_eq!(
        lab.maps.frontends[&shared].service_id,
        lab.applied.services["b"].service_id
    );
}

// Node addresses.

#[test]
fn node_addresses_are_added_before_others_are_removed() {
    let lab = Lab::new();
    let mut applied = lab.applied;
    applied.node_addrs = [ip("198.18.0.1"), ip("198.18.0.2")].into();
    let ops = applied.plan_node_addrs(&[ip("198.18.0.2"), ip("198.18.0.3")].into());
    assert_eq!(
        ops,
        [
            MapOp::AddNodeAddr(ip("198.18.0.3")),
            MapOp::RemoveNodeAddr(ip("198.18.0.1"))
        ]
    );
}

// The plan itself, before any writer.

/// Planning writes nothing and allocates what the plan names; the record
/// changes only as steps are committed, and an abandoned plan gives its ids
/// and regions back.
#[test]
fn a_plan_is_data_until_carried_out() {
    let mut lab = Lab::new();
    let svc = web_service(&[ready("198.19.0.2")], &["198.18.0.0/24"]);
    let owners = HashMap::from([(fe(), "default/web:http")]);
    let plan: Plan = lab
        .applied
        .plan_update(&svc, &owners, lab.now)
        .expect("planned");
    assert_eq!(lab.maps.attempts(), 0);
    let record = &lab.applied.services["default/web:http"];
    assert!(record.backends.is_empty() && record.frontends.is_empty());
    assert_eq!(lab.applied.backend_ids.in_use(), 1);
    assert_eq!(lab.applied.frontend_ids.in_use(), 1);
    assert!(lab.applied.regions.in_use() > 0);
    let commits: Vec<&Commit> = plan.steps.iter().map(|s| &s.commit).collect();
    assert!(
        matches!(
            commits[..],
            [
                Commit::Nothing,
                Commit::BackendAdded { .. },
                Commit::Table(Some(_)),
                Commit::SourceAllowed(_),
                Commit::Nothing,
                Commit::Nothing,
                Commit::Frontend { fresh: true, .. },
            ]
        ),
        "{commits:#?}"
    );
    lab.applied.abandon(plan.steps, lab.now);
    lab.now += GRACE;
    assert_eq!(lab.applied.backend_ids.available(lab.now), 64);
    assert_eq!(lab.applied.frontend_ids.available(lab.now), 64);
    let pool = lab.applied.regions.capacity();
    assert!(lab.applied.regions.can_fit(&[pool], lab.now));
}

/// A removal plan, step by step: frontends, backends, tables, prefixes, the
/// service.
#[test]
fn a_removal_plan_lets_go_in_order() {
    let mut lab = Lab::new();
    let desired = web(&[ready("198.19.0.2")], &["198.18.0.0/24"]);
    assert!(lab.apply(&desired).is_complete());
    let plan = lab
        .applied
        .plan_removal("default/web:http", &HashMap::new())
        .expect("published");
    let commits: Vec<&Commit> = plan.steps.iter().map(|s| &s.commit).collect();
    assert!(
        matches!(
            commits[..],
            [
                Commit::Nothing,
                Commit::FrontendRetired(_),
                Commit::BackendRetired(_),
                Commit::Table(None),
                Commit::TablesReleased,
                Commit::SourceForgotten(_),
                Commit::ServiceRemoved,
            ]
        ),
        "{commits:#?}"
    );
    assert!(
        lab.applied
            .plan_removal("nothing", &HashMap::new())
            .is_none()
    );
}
