//! Frontends: their values (affinity, no-backend behaviour, host-only),
//! addresses and ports, owners; node addresses.

use super::*;

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

/// The other order: the old owner comes first in the desired state, so it
/// retires its generation of the frontend before the new owner publishes it.
/// The entry is never removed, and the new owner's update follows in the same
/// apply; meanwhile the frontend leads to the old owner's table under a
/// retired generation (flows made then are re-picked at their next packet).
/// The in-memory maps are told it moves, so they do not flag that window.
#[test]
fn a_frontend_moving_to_a_later_service_is_retired_then_taken_over() {
    let shared = frontend("203.0.113.20", 80);
    let a = |fronts: &[Frontend]| service("a", fronts, &[ready("198.19.0.2")]);
    let b = |fronts: &[Frontend]| service("b", fronts, &[ready("198.19.0.3")]);
    let mut lab = Lab::new();
    assert!(
        lab.apply(&state(vec![a(&[fe(), shared]), b(&[])]))
            .is_complete()
    );
    let old = lab.maps.frontends[&shared];
    lab.maps.moving.insert(shared);
    let from = lab.maps.ops.len();
    assert!(
        lab.apply(&state(vec![a(&[fe()]), b(&[shared])]))
            .is_complete()
    );
    let ops = &lab.maps.ops[from..];
    assert_before(
        ops,
        generation(ops, old.frontend_id, true),
        publish(ops, shared),
    );
    assert_none(
        ops,
        "unpublish of the moved frontend",
        |o| matches!(o, MapOp::UnpublishFrontend { frontend } if *frontend == shared),
    );
    assert_eq!(
        lab.maps.frontends[&shared].service_id,
        lab.applied.services["b"].service_id
    );
}
