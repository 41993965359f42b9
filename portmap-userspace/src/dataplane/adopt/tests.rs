//! Adoption without a kernel: maps written by applies in memory are read
//! back into a record, which must be the one they were written from.

use crate::model::Reach;
use std::collections::BTreeSet;

use portmap_common::abi::{BACKEND_ACTIVE, BACKEND_UNUSED};

use crate::{
    dataplane::{
        alloc::GRACE,
        fake::{Lab, frontend, ip, listing, ready, service, state},
        plan::{BackendEntry, MapOp},
        state::Applied,
        writer::MapWriter,
    },
    model::{DesiredState, Service},
};

fn web(backends: &[&str]) -> Service {
    let eps: Vec<_> = backends.iter().map(|b| ready(b)).collect();
    Service {
        source_ranges: vec!["198.18.0.0/24".parse().unwrap()],
        ..service(
            "web",
            &[frontend("203.0.113.10", 80), frontend("198.18.0.1", 30080)],
            &eps,
        )
    }
}

fn desired() -> DesiredState {
    // A backend on another node: how it is reached (SNAT from this node's
    // address) is adopted with it, and not rewritten.
    let mut remote = ready("198.19.0.9");
    remote.reach = Reach::Snat(ip("198.18.9.1"));
    state(vec![
        web(&["198.19.0.2", "198.19.0.3"]),
        service("dns", &[frontend("10.96.0.10", 53)], &[remote]),
    ])
}

/// The record adoption rebuilds from `lab`'s maps.
fn adopted(lab: &Lab) -> (Applied, Vec<MapOp>) {
    let limits = lab.applied.limits;
    let pool = lab.applied.regions.capacity();
    Applied::adopt(limits, pool, &lab.maps.pinned(), |r| lab.maps.read_table(r)).unwrap()
}

#[test]
fn adoption_rebuilds_the_record_the_maps_were_written_from() {
    let mut lab = Lab::new();
    assert!(lab.apply(&desired()).is_complete());
    lab.maps.node_addrs = [ip("198.18.0.1")].into();
    let (mut adopted, orphans) = adopted(&lab);
    assert!(orphans.is_empty());
    assert_eq!(adopted.services.len(), 2);
    for written in lab.applied.services.values() {
        let key = format!("adopted service {}", written.service_id);
        let got = &adopted.services[&key];
        assert_eq!(got.frontends, written.frontends, "{key}");
        assert_eq!(got.backends, written.backends, "{key}");
        assert_eq!(got.table, written.table, "{key}");
        assert_eq!(got.source_ranges, written.source_ranges, "{key}");
        assert!(got.stale_tables.is_empty() && got.in_sync_with.is_none());
    }
    assert_eq!(adopted.node_addrs, [ip("198.18.0.1")].into());
    let (ours, theirs) = (&mut lab.applied, &mut adopted);
    assert_eq!(ours.service_ids.in_use(), theirs.service_ids.in_use());
    assert_eq!(ours.frontend_ids.in_use(), theirs.frontend_ids.in_use());
    assert_eq!(ours.backend_ids.in_use(), theirs.backend_ids.in_use());
    assert_eq!(ours.regions.in_use(), theirs.regions.in_use());
    // The next ids given out are the ones the writer would have given.
    let now = lab.now;
    assert_eq!(ours.frontend_ids.alloc(now), theirs.frontend_ids.alloc(now));
    assert_eq!(ours.backend_ids.alloc(now), theirs.backend_ids.alloc(now));
}

/// The daemon's first apply after adoption, with the same configuration,
/// writes nothing: flows keep their ids, generations and backends.
#[test]
fn the_first_apply_after_adoption_writes_only_what_changed() {
    let mut lab = Lab::new();
    assert!(lab.apply(&desired()).is_complete());
    let (adopted, _) = adopted(&lab);
    lab.applied = adopted;
    let from = lab.maps.ops.len();
    assert!(lab.apply(&desired()).is_complete());
    assert_eq!(
        lab.maps.ops.len(),
        from,
        "{}",
        listing(&lab.maps.ops[from..])
    );
    let keys: Vec<&String> = lab.applied.services.keys().collect();
    assert_eq!(keys, ["dns", "web"], "claimed by the desired services");
    // A change after adoption is that change only.
    let mut changed = desired();
    changed.services[0] = web(&["198.19.0.2", "198.19.0.4"]);
    assert!(lab.apply(&changed).is_complete());
    let ops = &lab.maps.ops[from..];
    assert!(
        !ops.iter()
            .any(|o| matches!(o, MapOp::PublishFrontend { frontend, .. }
            if frontend.port == 53)),
        "{}",
        listing(ops)
    );
    assert!(
        ops.iter()
            .any(|o| matches!(o, MapOp::WriteBackend { backend, .. }
        if backend.addr.ip() == ip("198.19.0.3") && backend.state == BACKEND_UNUSED))
    );
}

/// A backend whose service has no frontend left (the last daemon died while
/// removing it) is freed, so no flow uses it.
#[test]
fn orphaned_backends_are_freed() {
    let mut lab = Lab::new();
    assert!(lab.apply(&desired()).is_complete());
    let orphan = BackendEntry {
        addr: "198.19.0.77:3000".parse().unwrap(),
        state: BACKEND_ACTIVE,
        generation: 3,
        service_id: 40,
        reach: Reach::Direct,
    };
    let id = 60;
    lab.maps
        .execute(&MapOp::WriteBackend {
            id,
            backend: orphan,
        })
        .unwrap();
    let (adopted, orphans) = adopted(&lab);
    let freed = BackendEntry {
        state: BACKEND_UNUSED,
        ..orphan
    };
    assert_eq!(orphans, [MapOp::WriteBackend { id, backend: freed }]);
    assert!(adopted.services.values().all(|s| s.service_id != 40));
}

/// A daemon that died between two frontends' switches to a new table left
/// them on different tables: the adopted service keeps the other region
/// stale until its first apply has rewritten every frontend, then frees it.
#[test]
fn a_frontend_caught_mid_swap_keeps_its_table_until_rewritten() {
    let two = state(vec![web(&["198.19.0.2", "198.19.0.3"])]);
    let three = state(vec![web(&["198.19.0.2", "198.19.0.3", "198.19.0.4"])]);
    let mut lab = Lab::new();
    assert!(lab.apply(&two).is_complete());
    // Zero the counters, write the backend, the table, the first frontend:
    // the second one's switch fails.
    lab.maps.fail_at = Some(lab.maps.attempts() + 4);
    assert_eq!(lab.apply(&three).failed.len(), 1);
    let regions: BTreeSet<(u32, u32)> = lab
        .maps
        .frontends
        .values()
        .map(|v| (v.table_offset, v.table_size))
        .collect();
    assert_eq!(regions.len(), 2, "caught mid-swap");
    let (adopted, _) = adopted(&lab);
    let svc = adopted.services.values().next().unwrap();
    assert_eq!(svc.stale_tables.len(), 1, "{svc:?}");
    lab.applied = adopted;
    assert!(lab.apply(&three).is_complete());
    let tables: BTreeSet<u32> = lab
        .maps
        .frontends
        .values()
        .map(|v| v.table_offset)
        .collect();
    assert_eq!(tables.len(), 1, "every frontend on one table");
    let size = lab.maps.frontends.values().next().unwrap().table_size;
    lab.now += GRACE;
    assert!(lab.applied.regions.can_fit(&[], lab.now));
    assert_eq!(
        lab.applied.regions.in_use(),
        size,
        "the stale region is free"
    );
}
