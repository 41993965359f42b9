//! The order of an apply's map operations (make before break), for every kind
//! of change, read from the plans the writer carried out on maps held in
//! memory (no kernel). Besides the order asserted here, the in-memory maps
//! check after every operation that nothing a packet could meet is broken
//! (see `fake`).

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
    model::{
        Cidr, DesiredState, Endpoint, EndpointState, Frontend, FrontendOwners, Service, WhenEmpty,
    },
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

fn assert_no_backend_freed(ops: &[MapOp]) {
    assert_none(
        ops,
        "backend freed",
        |o| matches!(o, MapOp::WriteBackend { backend, .. } if backend.state == BACKEND_UNUSED),
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

mod backends;
mod frontends;

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
    // Each backend's counters are zeroed before the backend is written.
    for (i, op) in ops.iter().enumerate() {
        if let MapOp::WriteBackend { id, .. } = op {
            let zeroed = at(
                &ops,
                &format!("BACKEND_STATS[{id}] zeroed"),
                |o| matches!(o, MapOp::ZeroBackendStats { id: z } if z == id),
            );
            assert_before(&ops, zeroed, i);
        }
    }
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

// The plan itself, before any writer.

/// Planning writes nothing and allocates what the plan names; the record
/// changes only as steps are committed, and an abandoned plan gives its ids
/// and regions back.
#[test]
fn a_plan_is_data_until_carried_out() {
    let mut lab = Lab::new();
    let svc = web_service(&[ready("198.19.0.2")], &["198.18.0.0/24"]);
    let owners: FrontendOwners<'_> = [(fe(), "default/web:http")].into_iter().collect();
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
        .plan_removal("default/web:http", &FrontendOwners::default())
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
            .plan_removal("nothing", &FrontendOwners::default())
            .is_none()
    );
}
