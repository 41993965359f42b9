//! The writer against the BPF maps: every operation of real plans is carried
//! out both on the kernel's maps and on maps held in memory, and the two
//! must then hold the same (read back the way adoption reads them). This
//! loads the eBPF object, so it runs as root, as every test of this project
//! does.

use std::{collections::BTreeSet, time::Instant};

use anyhow::Result;
use portmap_common::abi::DatapathConfig;

use crate::{
    dataplane::{
        Dataplane,
        adopt::Pinned,
        fake::{FakeMaps, LIMITS, endpoint, frontend, ip, ready, service, state},
        maps::Maps,
        plan::MapOp,
        writer::MapWriter,
    },
    model::{DesiredState, EndpointState, Service},
};

/// Carries each operation out on both.
struct Tee<'a> {
    kernel: &'a mut Maps,
    memory: &'a mut FakeMaps,
}

impl MapWriter for Tee<'_> {
    fn execute(&mut self, op: &MapOp) -> Result<()> {
        self.kernel.execute(op)?;
        self.memory.execute(op)
    }
}

/// `pinned`, in an order that does not depend on hashing.
fn sorted(mut pinned: Pinned) -> Pinned {
    pinned
        .frontends
        .sort_by_key(|(k, _)| crate::dataplane::adopt::frontend_of(k));
    pinned.source_ranges.sort();
    pinned.node_addrs.sort();
    pinned
}

fn states() -> Vec<DesiredState> {
    let web = |key: &str, fe: &str, eps: &[crate::model::Endpoint], ranges: &[&str]| Service {
        source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        affinity_timeout_s: Some(600),
        ..service(key, &[frontend(fe, 80)], eps)
    };
    let v6 = |a: &str, state| crate::model::Endpoint {
        addr: ip(a),
        ..endpoint("198.19.0.2", state)
    };
    let ready6 = |a| v6(a, EndpointState::Ready);
    vec![
        state(vec![
            web(
                "web",
                "203.0.113.10",
                &[ready("198.19.0.2")],
                &["198.18.0.0/24"],
            ),
            web(
                "web6",
                "2001:db8::10",
                &[ready6("2001:db8:1::2")],
                &["2001:db8::/48"],
            ),
            service("dns", &[frontend("10.96.0.10", 53)], &[ready("198.19.0.9")]),
        ]),
        state(vec![
            web(
                "web",
                "203.0.113.10",
                &[
                    endpoint("198.19.0.2", EndpointState::Terminating),
                    ready("198.19.0.3"),
                ],
                &["192.0.2.0/24"],
            ),
            web(
                "web6",
                "2001:db8::10",
                &[
                    v6("2001:db8:1::2", EndpointState::Terminating),
                    ready6("2001:db8:1::3"),
                ],
                &[],
            ),
        ]),
        DesiredState::default(),
    ]
}

#[test]
fn the_kernel_maps_hold_what_the_operations_say() {
    let mut dp = Dataplane::load(LIMITS, DatapathConfig::default())
        .expect("loading the eBPF object (the unit tests run as root)");
    let mut memory = FakeMaps::new(LIMITS);
    let now = Instant::now();
    for (i, desired) in states().iter().enumerate() {
        let mut tee = Tee {
            kernel: &mut dp.maps,
            memory: &mut memory,
        };
        let report = dp.applied.apply(desired, &mut tee, now).unwrap();
        assert!(report.is_complete(), "state {i}: {:?}", report.failed);
        let addrs: BTreeSet<_> = [ip("198.18.0.1"), ip("2001:db8::1")]
            .into_iter()
            .take(2 - i.min(2))
            .collect();
        for op in dp.applied.plan_node_addrs(&addrs) {
            tee.execute(&op).unwrap();
        }
        dp.applied.node_addrs = addrs;
        let kernel = sorted(Pinned::read(&dp.maps).unwrap());
        assert_eq!(kernel, sorted(memory.pinned()), "state {i}");
        for (_, value) in &kernel.frontends {
            let region = crate::dataplane::alloc::Region {
                offset: value.table_offset,
                len: value.table_size,
            };
            assert_eq!(
                dp.maps.maglev.read(region.offset, region.len).unwrap(),
                memory.read_table(region).unwrap(),
                "state {i}: table at {region:?}"
            );
        }
    }
}
