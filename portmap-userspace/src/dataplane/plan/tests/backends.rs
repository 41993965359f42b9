//! Backends and their Maglev tables.

use super::*;
use crate::model::Reach;

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
    assert_no_backend_freed(&ops);
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
    assert_no_backend_freed(&ops);
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

/// A backend that turns out to be on another node (or back) keeps its id
/// and generation, its flows their entries: only how new flows reach it
/// (`BACKEND_NAT`) is written again, and the table stays.
#[test]
fn a_backend_whose_way_changes_is_written_again_in_place() {
    let remote = Endpoint {
        reach: Reach::Snat("198.18.9.1".parse().unwrap()),
        ..ready("198.19.0.2")
    };
    let ops = ops_between(&web(&[ready("198.19.0.2")], &[]), &web(&[remote], &[]));
    let writes: Vec<_> = ops
        .iter()
        .filter_map(|o| match o {
            MapOp::WriteBackend { id, backend } => Some((*id, *backend)),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1, "{ops:?}");
    let (_, written) = writes[0];
    assert_eq!(written.reach, remote.reach);
    assert_eq!(written.state, BACKEND_ACTIVE);
    assert!(
        !ops.iter()
            .any(|o| matches!(o, MapOp::WriteTable { .. } | MapOp::ZeroBackendStats { .. })),
        "no new table, no new counters: {ops:?}"
    );
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

/// A replaced table's region is released by the plan's last step, after
/// every frontend was switched and everything else let go.
#[test]
fn a_replaced_table_is_released_by_the_last_step() {
    let mut lab = Lab::new();
    let before = web_service(&[ready("198.19.0.2"), ready("198.19.0.3")], &[]);
    assert!(lab.apply(&state(vec![before])).is_complete());
    let after = web_service(&[ready("198.19.0.2"), ready("198.19.0.4")], &[]);
    let owners: FrontendOwners<'_> = [(fe(), "default/web:http")].into_iter().collect();
    let plan = lab.applied.plan_update(&after, &owners, lab.now).unwrap();
    let commits: Vec<&Commit> = plan.steps.iter().map(|s| &s.commit).collect();
    assert_eq!(
        commits
            .iter()
            .filter(|c| ***c == Commit::TablesReleased)
            .count(),
        1
    );
    assert_eq!(
        commits.last(),
        Some(&&Commit::TablesReleased),
        "{commits:#?}"
    );
    let retired = commits
        .iter()
        .position(|c| matches!(c, Commit::BackendRetired(_)));
    assert_eq!(retired, Some(commits.len() - 2), "{commits:#?}");
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
