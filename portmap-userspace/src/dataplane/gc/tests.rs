//! When a conntrack entry is stale, without a kernel.

use portmap_common::abi::{
    CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_NEW, CtKey, CtValue, DatapathConfig,
    PROTO_TCP, PROTO_UDP,
};

use super::{CLOCK_SLACK_NS, Staleness};
use crate::dataplane::fake::{Lab, one_service};

const SECOND: u64 = 1_000_000_000;
/// A monotonic "now" well past every timeout.
const NOW: u64 = 100_000 * SECOND;

/// A rule over one published service, and an entry of its live frontend and
/// backend seen at `NOW`.
fn published() -> (Staleness, CtValue) {
    let mut lab = Lab::new();
    assert!(lab.apply(&one_service()).is_complete());
    let svc = &lab.applied.services["web"];
    let fe = svc.frontends.values().next().unwrap().value;
    let be = svc.backends.values().next().unwrap();
    let entry = CtValue {
        frontend_id: fe.frontend_id,
        frontend_generation: fe.generation,
        backend_id: be.id,
        backend_generation: be.generation,
        last_seen_ns: NOW,
        ..CtValue::default()
    };
    let rule = Staleness::new(DatapathConfig::default(), &lab.applied, NOW);
    (rule, entry)
}

fn key(proto: u8) -> CtKey {
    CtKey {
        proto,
        ..CtKey::default()
    }
}

#[test]
fn live_entries_of_live_slots_stay() {
    let (rule, entry) = published();
    assert!(!rule.is_stale(&key(PROTO_TCP), &entry));
    assert!(!rule.is_stale(&key(PROTO_UDP), &entry));
}

/// Each state times out after its own timeout, plus the coarse clock's slack.
#[test]
fn idle_entries_go_after_their_state_timeout_and_the_slack() {
    let (rule, entry) = published();
    let cfg = DatapathConfig::default();
    for (proto, state, timeout) in [
        (PROTO_TCP, CT_STATE_NEW, cfg.tcp_new_timeout_ns),
        (
            PROTO_TCP,
            CT_STATE_ESTABLISHED,
            cfg.tcp_established_timeout_ns,
        ),
        (PROTO_TCP, CT_STATE_CLOSING, cfg.tcp_closing_timeout_ns),
        (PROTO_UDP, CT_STATE_NEW, cfg.udp_timeout_ns),
    ] {
        let idle = |ns: u64| CtValue {
            state,
            last_seen_ns: NOW - ns,
            ..entry
        };
        let limit = timeout + CLOCK_SLACK_NS;
        assert!(!rule.is_stale(&key(proto), &idle(limit)), "{proto} {state}");
        assert!(
            rule.is_stale(&key(proto), &idle(limit + 1)),
            "{proto} {state}"
        );
    }
}

/// An entry of a retired frontend or backend slot (another generation, or
/// an id no service holds) goes at once.
#[test]
fn entries_of_retired_slots_go_at_once() {
    let (rule, entry) = published();
    for stale in [
        CtValue {
            frontend_generation: entry.frontend_generation + 1,
            ..entry
        },
        CtValue {
            backend_generation: entry.backend_generation + 1,
            ..entry
        },
        CtValue {
            frontend_id: entry.frontend_id + 1,
            ..entry
        },
        CtValue {
            backend_id: entry.backend_id + 1,
            ..entry
        },
    ] {
        assert!(rule.is_stale(&key(PROTO_TCP), &stale), "{stale:?}");
    }
}

#[test]
fn a_learned_dsr_reply_entry_lives_by_its_frontend_and_its_time() {
    let (rule, live) = published();
    let learned = CtValue {
        flags: portmap_common::abi::CT_F_DSR_REPLY,
        backend_id: portmap_common::abi::NO_BACKEND_ID,
        backend_generation: 0,
        ..live
    };
    assert!(!rule.is_stale(&key(PROTO_UDP), &learned), "no backend here");
    let idle = CtValue {
        last_seen_ns: NOW - 61 * SECOND - CLOCK_SLACK_NS,
        ..learned
    };
    assert!(rule.is_stale(&key(PROTO_UDP), &idle));
    let gone = CtValue {
        frontend_generation: learned.frontend_generation + 1,
        ..learned
    };
    assert!(rule.is_stale(&key(PROTO_UDP), &gone));
    // Without the flag, an unknown backend is stale.
    let plain = CtValue {
        flags: 0,
        ..learned
    };
    assert!(rule.is_stale(&key(PROTO_UDP), &plain));
}

/// What a collection's walk of a full default-sized conntrack table costs,
/// in batches and key by key: `cargo test -p portmap-userspace --release
/// --lib gc::tests::walk_cost -- --ignored --nocapture` (as root).
#[test]
#[ignore = "a measurement, as root: run it by name"]
fn walk_cost() {
    use crate::dataplane::{Dataplane, Limits};
    let entries: u32 = 262_144;
    let limits = Limits {
        frontends: 64,
        backends: 64,
        conntrack: entries,
    };
    let mut dp = Dataplane::load(limits, DatapathConfig::default()).expect("loaded");
    let value = CtValue::default();
    for i in 0..entries {
        let mut k = key(PROTO_UDP);
        k.sport = (i & 0xffff) as u16;
        k.dport = (i >> 16) as u16;
        dp.maps.conntrack.insert(k, value, 0).expect("inserted");
    }
    for _ in 0..2 {
        let start = std::time::Instant::now();
        let r = dp.collect_garbage().expect("collected");
        let batched = start.elapsed();
        // Everything was stale (no frontend): refill for the next walk.
        assert_eq!(r.scanned, u64::from(entries));
        for i in 0..entries {
            let mut k = key(PROTO_UDP);
            k.sport = (i & 0xffff) as u16;
            k.dport = (i >> 16) as u16;
            dp.maps.conntrack.insert(k, value, 0).expect("inserted");
        }
        let rule = |_: &CtKey, _: &CtValue| false;
        let mut report = super::GcReport::default();
        let mut doomed = Vec::new();
        let start = std::time::Instant::now();
        dp.walk_conntrack_by_key(&rule, &mut report, &mut doomed)
            .expect("walked");
        let by_key = start.elapsed();
        assert_eq!(report.scanned, u64::from(entries));
        let start = std::time::Instant::now();
        let mut n = 0usize;
        super::bpf_sys::for_each_batch(
            std::os::fd::AsFd::as_fd(aya::maps::IterableMap::map(&dp.maps.conntrack).fd()),
            super::GC_BATCH,
            |k: &[CtKey], _: &[CtValue]| n += k.len(),
        )
        .expect("walked");
        let batch_walk = start.elapsed();
        assert_eq!(n, entries as usize);
        println!(
            "{entries} entries: collection {batched:?} (removing all), walk in batches {batch_walk:?}, walk key by key {by_key:?}"
        );
    }
}
