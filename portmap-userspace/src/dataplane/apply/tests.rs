//! What an apply promises besides the order of its writes (see
//! `plan::tests`): a service that does not fit is refused before its first
//! write, a failed write leaves a record that matches the maps and that the
//! next apply completes, unchanged services cost nothing, and freed slots
//! wait out their grace period. On maps held in memory (no kernel).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Instant,
};

use portmap_common::abi::BACKEND_UNUSED;

use crate::{
    dataplane::{
        Limits,
        alloc::{GRACE, RegionAllocator},
        fake::{Lab, endpoint, expectations, frontend, ip, listing, ready, service, state},
        maps::ip_of,
        plan::MapOp,
    },
    maglev::{self, MaglevBackend},
    model::{DesiredState, Endpoint, EndpointState, Frontend, Service},
};

/// The backend of [`mappings`]' service on `port`.
fn backend_of(port: u16) -> String {
    format!("198.19.{}.{}", port / 256, port % 256)
}

/// `-p`-like services `map PORT` on 198.18.0.1:PORT, one backend each.
fn mappings(ports: &[u16]) -> DesiredState {
    state(
        ports
            .iter()
            .map(|p| {
                let backend = backend_of(*p);
                service(
                    &format!("map {p}"),
                    &[frontend("198.18.0.1", *p)],
                    &[ready(&backend)],
                )
            })
            .collect(),
    )
}

/// Checks that the record says what the maps hold: the same frontends with
/// the same values, backends with their ids, generations and states, tables
/// with their members, prefixes, and nothing in the maps no record has. A
/// frontend `desired` no longer has may be unpublished already and still
/// hold its id (its retirement was cut short; the next apply finishes it).
fn assert_record_matches_maps(lab: &Lab, desired: &DesiredState) {
    let maps = &lab.maps;
    let mut frontends = BTreeSet::new();
    let mut backends = BTreeSet::new();
    let mut prefixes = BTreeSet::new();
    for (key, svc) in &lab.applied.services {
        let wanted = desired.services.iter().find(|s| s.key == *key);
        for (fe, slot) in &svc.frontends {
            match maps.frontends.get(fe) {
                Some(value) => assert_eq!(*value, slot.value, "{key}: {fe}"),
                None => assert!(
                    wanted.is_none_or(|s| !s.frontends.contains(fe)),
                    "{key}: {fe} is recorded and not published"
                ),
            }
            frontends.extend(maps.frontends.get_key_value(fe).map(|(f, _)| *f));
        }
        for (addr, slot) in &svc.backends {
            let b = maps.backends[slot.id as usize];
            let state = match slot.state {
                EndpointState::Ready => portmap_common::abi::BACKEND_ACTIVE,
                EndpointState::Terminating => portmap_common::abi::BACKEND_TERMINATING,
            };
            let at = SocketAddr::new(ip_of(&b.addr, b.family), u16::from_be(b.port));
            assert_eq!(
                (at, b.state, b.generation, b.service_id),
                (*addr, state, slot.generation, svc.service_id),
                "{key}: backend {}",
                slot.id
            );
            backends.insert(slot.id);
        }
        if let Some(table) = &svc.table {
            let members: Vec<MaglevBackend> = table
                .members
                .iter()
                .map(|addr| MaglevBackend {
                    addr: *addr,
                    id: svc.backends[addr].id,
                })
                .collect();
            assert_eq!(
                maps.read_table(table.region).unwrap(),
                maglev::build_table(&members, table.region.len),
                "{key}: table"
            );
        }
        prefixes.extend(svc.source_ranges.iter().map(|c| (svc.service_id, *c)));
    }
    assert_eq!(
        maps.frontends.keys().copied().collect::<BTreeSet<_>>(),
        frontends
    );
    let in_use: BTreeSet<u32> = (0..maps.backends.len() as u32)
        .filter(|id| maps.backends[*id as usize].state != BACKEND_UNUSED)
        .collect();
    assert_eq!(in_use, backends, "backends in use");
    assert_eq!(maps.source_ranges, prefixes);
}

/// What the maps publish, whatever the ids: per frontend its flags, affinity
/// timeout, the backends its table names and the prefixes it allows.
type View = BTreeMap<Frontend, (u32, u32, BTreeSet<SocketAddr>, BTreeSet<String>)>;

fn view(lab: &Lab) -> View {
    let maps = &lab.maps;
    let addr = |id: u32| {
        let b = maps.backends[id as usize];
        SocketAddr::new(ip_of(&b.addr, b.family), u16::from_be(b.port))
    };
    maps.frontends
        .iter()
        .map(|(fe, v)| {
            let start = v.table_offset as usize;
            let named = maps.pool[start..start + v.table_size as usize]
                .iter()
                .map(|id| addr(*id))
                .collect();
            let allowed = maps
                .source_ranges
                .iter()
                .filter(|(id, _)| *id == v.service_id)
                .map(|(_, c)| c.to_string())
                .collect();
            (*fe, (v.flags, v.affinity_timeout_s, named, allowed))
        })
        .collect()
}

/// Slots in use once every freed one has cooled down.
fn in_use_after_grace(lab: &mut Lab) -> (u32, u32, u32, u32) {
    let later = lab.now + GRACE;
    let a = &mut lab.applied;
    a.service_ids.available(later);
    a.frontend_ids.available(later);
    a.backend_ids.available(later);
    a.regions.can_fit(&[], later);
    (
        a.service_ids.in_use(),
        a.frontend_ids.in_use(),
        a.backend_ids.in_use(),
        a.regions.in_use(),
    )
}

/// A change of every kind at once: a backend replaced and one terminating,
/// a prefix replaced, a frontend added and one dropped, a service removed
/// and one added.
fn before_and_after() -> (DesiredState, DesiredState) {
    fn web(fronts: &[Frontend], eps: &[Endpoint], ranges: &[&str]) -> Service {
        Service {
            source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            ..service("web", fronts, eps)
        }
    }
    let (a, b, c) = (
        frontend("203.0.113.10", 80),
        frontend("198.18.0.1", 30080),
        frontend("203.0.113.10", 443),
    );
    let before = state(vec![
        web(
            &[a, b],
            &[
                ready("198.19.0.2"),
                ready("198.19.0.3"),
                ready("198.19.0.4"),
            ],
            &["198.18.0.0/24"],
        ),
        service("old", &[frontend("10.96.0.1", 53)], &[ready("198.19.0.9")]),
    ]);
    let after = state(vec![
        web(
            &[a, c],
            &[
                ready("198.19.0.2"),
                endpoint("198.19.0.3", EndpointState::Terminating),
                ready("198.19.0.5"),
            ],
            &["192.0.2.0/24"],
        ),
        service("new", &[frontend("10.96.0.2", 53)], &[ready("198.19.0.8")]),
    ]);
    (before, after)
}

/// A write that fails at any point of a change: the invariants held
/// throughout (the maps check them), the service is reported, the record
/// matches what was written, and the next apply completes the change to
/// what a change without failure publishes, leaking no id or region.
#[test]
fn a_failed_write_anywhere_is_completed_by_the_next_apply() {
    let (before, after) = before_and_after();
    let mut clean = Lab::new();
    let ops = clean.change(&before, &after);
    let published = view(&clean);
    let slots = in_use_after_grace(&mut clean);
    for (n, failing) in ops.iter().enumerate() {
        let mut lab = Lab::new();
        assert!(lab.apply(&before).is_complete());
        lab.maps.expect = expectations(&before, &after);
        lab.maps.fail_at = Some(lab.maps.attempts() + n);
        let report = lab.apply(&after);
        assert_eq!(report.failed.len(), 1, "failing {}: {report:?}", failing);
        assert!(report.failed[0].1.contains("injected failure"));
        assert_record_matches_maps(&lab, &after);
        let report = lab.apply(&after);
        assert!(
            report.is_complete(),
            "after failing {}: {report:?}",
            failing
        );
        assert_record_matches_maps(&lab, &after);
        assert_eq!(view(&lab), published, "after failing {}", failing);
        assert_eq!(
            in_use_after_grace(&mut lab),
            slots,
            "after failing {}",
            failing
        );
        let again = lab.maps.ops.len();
        assert!(lab.apply(&after).is_complete());
        assert_eq!(lab.maps.ops.len(), again, "in sync once completed");
    }
}

/// The promise of the record: a frontend whose write failed is not taken
/// for published, so the next apply writes it.
#[test]
fn a_failed_frontend_write_is_retried_by_the_next_apply() {
    let desired = mappings(&[8080]);
    let mut lab = Lab::new();
    // ZeroBackendStats, WriteBackend, WriteTable, ZeroFrontendStats,
    // WriteFrontendGen, then the frontend.
    lab.maps.fail_at = Some(5);
    let report = lab.apply(&desired);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(lab.maps.frontends.is_empty());
    assert_record_matches_maps(&lab, &desired);
    assert!(lab.apply(&desired).is_complete());
    assert_eq!(lab.maps.frontends.len(), 1, "{}", listing(&lab.maps.ops));
    assert_record_matches_maps(&lab, &desired);
}

/// Four backends where three fit: the service that does not fit is refused
/// with the map and the flag named, nothing of it is written, and the
/// others are applied.
#[test]
fn a_service_that_does_not_fit_is_refused_before_its_first_write() {
    let mut lab = Lab::with_limits(Limits {
        frontends: 16,
        backends: 3,
        conntrack: 1024,
    });
    assert!(lab.apply(&mappings(&[8080, 8081])).is_complete());
    let from = lab.maps.ops.len();
    let desired = mappings(&[8080, 8081, 8082, 8083]);
    let report = lab.apply(&desired);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let (key, why) = &report.failed[0];
    assert!(
        key.contains("8083") && why.contains("backends") && why.contains("--max-backends"),
        "{key}: {why}"
    );
    let refused = frontend("198.18.0.1", 8083);
    let ops = &lab.maps.ops[from..];
    assert!(
        !ops.iter().any(|o| match o {
            MapOp::PublishFrontend { frontend, .. } => *frontend == refused,
            MapOp::WriteBackend { backend, .. } => backend.addr.ip() == ip(&backend_of(8083)),
            _ => false,
        }),
        "{}",
        listing(ops)
    );
    assert!(!lab.applied.services.contains_key("map 8083"));
    let published: Vec<u16> = lab.maps.frontends.keys().map(|f| f.port).collect();
    assert_eq!(published, [8080, 8081, 8082]);
    assert_record_matches_maps(&lab, &desired);
}

/// A table that does not fit in the Maglev pool is refused likewise.
#[test]
fn a_table_that_does_not_fit_is_refused_before_its_first_write() {
    let mut lab = Lab::new();
    lab.applied.regions = RegionAllocator::new(150);
    let two = service(
        "two",
        &[frontend("198.18.0.1", 80)],
        &[ready("198.19.0.2"), ready("198.19.0.3")],
    );
    let report = lab.apply(&state(vec![two]));
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let why = &report.failed[0].1;
    assert!(
        why.contains("Maglev table slots") && why.contains("--max-backends"),
        "{why}"
    );
    assert_eq!(lab.maps.attempts(), 0);
    assert!(lab.applied.services.is_empty());
}

/// A desired state that publishes a frontend twice is refused whole.
#[test]
fn an_inconsistent_desired_state_is_refused_whole() {
    let mut lab = Lab::new();
    let fe = frontend("198.18.0.1", 80);
    let desired = state(vec![
        service("a", &[fe], &[ready("198.19.0.2")]),
        service("b", &[fe], &[ready("198.19.0.3")]),
    ]);
    let error = lab
        .applied
        .apply(&desired, &mut lab.maps, lab.now)
        .expect_err("refused");
    assert!(error.to_string().contains("published twice"), "{error}");
    assert_eq!(lab.maps.attempts(), 0);
}

/// One service changed among 10,000: the diff finds it alone, and its plan
/// is all that is written. Prints how long the applies took with maps in
/// memory (unchecked, so the time is the diff's, the plan's and the
/// record's), for a look; the benchmark measures it against the kernel's maps.
#[test]
fn one_change_among_many_services_costs_one_service() {
    const SERVICES: u16 = 10_000;
    let ports: Vec<u16> = (10_000..10_000 + SERVICES).collect();
    let mut lab = Lab::with_limits(Limits {
        frontends: 2 * u32::from(SERVICES),
        backends: 2 * u32::from(SERVICES),
        conntrack: 1024,
    });
    lab.maps.checked = false;
    let all = mappings(&ports);
    let started = Instant::now();
    assert!(lab.apply(&all).is_complete());
    let everything = started.elapsed();
    let mut changed = all.clone();
    changed.services[500].endpoints[0].port = 3001;
    let (diff, gone) = lab.applied.differences(&changed);
    let differ: Vec<usize> = (0..diff.len()).filter(|i| diff[*i]).collect();
    assert_eq!(differ, [500], "only the changed service differs");
    assert!(gone.is_empty());
    let from = lab.maps.ops.len();
    let started = Instant::now();
    assert!(lab.apply(&changed).is_complete());
    let one = started.elapsed();
    let ops = &lab.maps.ops[from..];
    let backend = ip(&backend_of(10_500));
    assert!(
        ops.iter().all(|o| match o {
            MapOp::WriteBackend { backend: b, .. } => b.addr.ip() == backend,
            MapOp::PublishFrontend { frontend, .. } => frontend.port == 10_500,
            MapOp::WriteTable { .. } | MapOp::ZeroBackendStats { .. } => true,
            _ => false,
        }),
        "{}",
        listing(ops)
    );
    assert_eq!(ops.len(), 5, "{}", listing(ops));
    println!(
        "{SERVICES} services, maps in memory, this build: all in {everything:?}, one changed in {one:?}"
    );
}

/// Ids and regions of a removed service are not given to another until the
/// grace period is over; then they come back with a higher generation.
#[test]
fn freed_slots_wait_out_their_grace() {
    let mut lab = Lab::new();
    assert!(lab.apply(&mappings(&[8080])).is_complete());
    let old = lab.maps.frontends[&frontend("198.18.0.1", 8080)];
    assert!(lab.apply(&mappings(&[8081])).is_complete());
    let soon = lab.maps.frontends[&frontend("198.18.0.1", 8081)];
    assert_ne!(soon.frontend_id, old.frontend_id);
    assert_ne!(soon.service_id, old.service_id);
    assert!(soon.table_offset >= old.table_offset + old.table_size);
    lab.now += GRACE;
    assert!(lab.apply(&mappings(&[8081, 8082])).is_complete());
    let later = lab.maps.frontends[&frontend("198.18.0.1", 8082)];
    assert_eq!(later.frontend_id, old.frontend_id);
    assert!(later.generation > old.generation);
    assert_eq!(later.table_offset, old.table_offset, "the region is reused");
    let reused = lab.maps.backends.iter().find(|b| b.generation == 2);
    assert!(
        reused.is_some(),
        "the backend id comes back, one generation up"
    );
}
