//! Published states to generate: fixed and random services, and changes.

#![allow(clippy::wildcard_imports)]

use super::*;

// ---------------------------------------------------------------------------
// Maps.

pub(crate) fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

pub(crate) fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

pub(crate) fn service(
    key: &str,
    frontends: &[(HostAddr, u16, Protocol)],
    endpoints: &[(IpAddr, u16, EndpointState)],
) -> Service {
    Service {
        key: key.into(),
        name: String::new(),
        port_name: String::new(),
        container: String::new(),
        frontends: frontends
            .iter()
            .map(|(addr, port, proto)| Frontend {
                addr: *addr,
                port: *port,
                proto: *proto,
            })
            .collect(),
        endpoints: endpoints
            .iter()
            .map(|(addr, port, state)| Endpoint {
                addr: *addr,
                port: *port,
                state: *state,
                placement: Placement::Unknown,
                reach: Reach::Direct,
            })
            .collect(),
        affinity_timeout_s: None,
        when_empty: WhenEmpty::Pass,
        source_ranges: Vec::new(),
    }
}

/// The services of the single-packet tests: one of each kind.
pub(crate) fn fixed_world() -> (DesiredState, BTreeSet<IpAddr>) {
    use EndpointState::{Ready as R, Terminating as T};
    use Protocol::{Tcp, Udp};
    let ip4 = |a| HostAddr::Ip(v4(a));
    let ip6 = |a| HostAddr::Ip(v6(a));
    let mut services = vec![
        service(
            "all-v4",
            &[(HostAddr::AllV4, 8080, Tcp), (HostAddr::AllV4, 8080, Udp)],
            &[
                (v4(backend4(0)), 3000, R),
                (v4(backend4(1)), 3000, R),
                (v4(backend4(2)), 3000, R),
                (v4(backend4(3)), 3000, T),
            ],
        ),
        service(
            "all-v6",
            &[(HostAddr::AllV6, 8080, Tcp), (HostAddr::AllV6, 8080, Udp)],
            &[(v6(backend6(0)), 3000, R), (v6(backend6(1)), 3000, R)],
        ),
        service(
            "exact-node-address",
            &[(ip4(NODE4[1]), 8080, Tcp)],
            &[(v4(backend4(4)), 4000, R)],
        ),
        service(
            "vip",
            &[(ip4(vip4(0)), 80, Tcp), (ip4(vip4(0)), 53, Udp)],
            &[(v4(backend4(0)), 80, R), (v4(backend4(5)), 80, R)],
        ),
        service(
            "vip6",
            &[(ip6(vip6(0)), 80, Tcp), (ip6(vip6(0)), 53, Udp)],
            &[
                (v6(backend6(2)), 80, R),
                (v6(backend6(3)), 80, R),
                (v6(backend6(4)), 80, T),
            ],
        ),
        service(
            "reject",
            &[(ip4(vip4(1)), 80, Tcp), (ip4(vip4(1)), 53, Udp)],
            &[],
        ),
        service(
            "reject6",
            &[(ip6(vip6(1)), 80, Tcp), (ip6(vip6(1)), 53, Udp)],
            &[],
        ),
        service(
            "drop",
            &[(ip4(vip4(2)), 80, Tcp), (ip6(vip6(2)), 53, Udp)],
            &[],
        ),
        service(
            "source-ranges",
            &[(ip4(vip4(3)), 443, Tcp), (ip4(vip4(3)), 443, Udp)],
            &[(v4(backend4(1)), 8443, R)],
        ),
        service(
            "source-ranges6",
            &[(ip6(vip6(3)), 443, Tcp), (ip6(vip6(3)), 443, Udp)],
            &[(v6(backend6(5)), 8443, R)],
        ),
        service(
            "terminating-only",
            &[(ip4(vip4(4)), 80, Tcp), (ip4(vip4(4)), 53, Udp)],
            &[(v4(backend4(2)), 80, T), (v4(backend4(3)), 80, T)],
        ),
        service(
            "host-only",
            &[(ip4(LOOP4[0]), 8080, Tcp), (ip4(LOOP4[0]), 53, Udp)],
            &[(v4(backend4(0)), 3000, R)],
        ),
        service(
            "host-only6",
            &[(ip6(Ipv6Addr::LOCALHOST), 8080, Tcp)],
            &[(v6(backend6(0)), 3000, R)],
        ),
        service(
            "empty-pass",
            &[(ip4(vip4(5)), 80, Tcp), (ip6(vip6(5)), 80, Tcp)],
            &[],
        ),
    ];
    for svc in &mut services {
        match svc.key.as_str() {
            "vip" | "vip6" => svc.affinity_timeout_s = Some(10800),
            "reject" | "reject6" => svc.when_empty = WhenEmpty::Reject,
            "drop" => svc.when_empty = WhenEmpty::Drop,
            "source-ranges" => {
                svc.source_ranges = vec![
                    "198.18.0.0/24".parse().unwrap(),
                    "203.0.113.48/28".parse().unwrap(),
                ]
            }
            "source-ranges6" => svc.source_ranges = vec!["2001:db8::/64".parse().unwrap()],
            _ => {}
        }
    }
    let nodes = [v4(NODE4[0]), v4(NODE4[1]), v6(NODE6[0]), v6(NODE6[1])];
    (DesiredState { services }, nodes.into_iter().collect())
}

/// Where a generated frontend is published.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FeAddr {
    All,
    Vip(u8),
    Node(u8),
    Loopback(u8),
    /// An address that is not the node's.
    Elsewhere,
}

impl FeAddr {
    pub(crate) fn host(self, v6_family: bool) -> HostAddr {
        match (self, v6_family) {
            (FeAddr::All, false) => HostAddr::AllV4,
            (FeAddr::All, true) => HostAddr::AllV6,
            (FeAddr::Vip(i), false) => HostAddr::Ip(v4(vip4(i))),
            (FeAddr::Vip(i), true) => HostAddr::Ip(v6(vip6(i))),
            (FeAddr::Node(i), false) => HostAddr::Ip(v4(NODE4[usize::from(i % 2)])),
            (FeAddr::Node(i), true) => HostAddr::Ip(v6(NODE6[usize::from(i % 2)])),
            (FeAddr::Loopback(i), false) => HostAddr::Ip(v4(LOOP4[usize::from(i % 2)])),
            (FeAddr::Loopback(_), true) => HostAddr::Ip(v6(Ipv6Addr::LOCALHOST)),
            (FeAddr::Elsewhere, false) => HostAddr::Ip(v4(OTHER4)),
            (FeAddr::Elsewhere, true) => HostAddr::Ip(v6(OTHER6)),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SvcSpec {
    pub(crate) v6: bool,
    /// (address, port, UDP?)
    pub(crate) frontends: Vec<(FeAddr, u16, bool)>,
    /// (backend, port, ready?)
    pub(crate) endpoints: Vec<(u8, u16, bool)>,
    pub(crate) affinity: Option<u32>,
    pub(crate) when_empty: WhenEmpty,
    /// Indexes into `RANGES`.
    pub(crate) ranges: Vec<u8>,
}

pub(crate) const RANGES: [&str; 9] = [
    "198.18.0.0/24",
    "198.18.0.2/32",
    "203.0.113.0/24",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "2001:db8::/64",
    "2001:db8::2/128",
    "::/0",
    "fd00::/8",
];

/// Node address candidates: which of them the node has is a bit mask.
pub(crate) fn node_candidates() -> [IpAddr; 6] {
    [
        v4(NODE4[0]),
        v4(NODE4[1]),
        v6(NODE6[0]),
        v6(NODE6[1]),
        v4(vip4(0)),
        v4(LOOP4[0]),
    ]
}

#[derive(Clone, Debug)]
pub(crate) struct World {
    pub(crate) services: Vec<SvcSpec>,
    pub(crate) node_mask: u8,
}

impl World {
    pub(crate) fn desired(&self) -> (DesiredState, BTreeSet<IpAddr>) {
        let mut taken = BTreeSet::new();
        let mut services = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let mut frontends = Vec::new();
            for (addr, port, udp) in &s.frontends {
                let fe = Frontend {
                    addr: addr.host(s.v6),
                    port: *port,
                    proto: if *udp { Protocol::Udp } else { Protocol::Tcp },
                };
                if taken.insert(fe) {
                    frontends.push(fe);
                }
            }
            let mut seen = BTreeSet::new();
            let endpoints = s
                .endpoints
                .iter()
                .filter_map(|(b, port, ready)| {
                    let addr = if s.v6 {
                        v6(backend6(*b))
                    } else {
                        v4(backend4(*b))
                    };
                    seen.insert((addr, *port)).then_some(Endpoint {
                        addr,
                        port: *port,
                        state: if *ready {
                            EndpointState::Ready
                        } else {
                            EndpointState::Terminating
                        },
                        placement: Placement::Unknown,
                        reach: Reach::Direct,
                    })
                })
                .collect();
            let ranges: BTreeSet<Cidr> = s
                .ranges
                .iter()
                .map(|r| RANGES[usize::from(*r) % RANGES.len()].parse().unwrap())
                .collect();
            services.push(Service {
                key: format!("svc{i}"),
                name: String::new(),
                port_name: String::new(),
                container: String::new(),
                frontends,
                endpoints,
                affinity_timeout_s: s.affinity,
                when_empty: s.when_empty,
                source_ranges: ranges.into_iter().collect(),
            });
        }
        let nodes = node_candidates()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.node_mask & (1 << i) != 0)
            .map(|(_, a)| a)
            .collect();
        (DesiredState { services }, nodes)
    }

    pub(crate) fn change(&mut self, c: &Change) {
        let n = self.services.len().max(1);
        let svc = |i: u8| usize::from(i) % n;
        match *c {
            Change::RemoveEndpoint(s, e) => {
                if let Some(svc) = self.services.get_mut(svc(s))
                    && !svc.endpoints.is_empty()
                {
                    let e = usize::from(e) % svc.endpoints.len();
                    svc.endpoints.remove(e);
                }
            }
            Change::Terminate(s, e) => {
                if let Some(svc) = self.services.get_mut(svc(s))
                    && !svc.endpoints.is_empty()
                {
                    let e = usize::from(e) % svc.endpoints.len();
                    svc.endpoints[e].2 = false;
                }
            }
            Change::AddEndpoint(s, b, ready) => {
                if let Some(svc) = self.services.get_mut(svc(s)) {
                    svc.endpoints.push((b, 3000, ready));
                }
            }
            Change::RemoveFrontend(s, f) => {
                if let Some(svc) = self.services.get_mut(svc(s))
                    && !svc.frontends.is_empty()
                {
                    let f = usize::from(f) % svc.frontends.len();
                    svc.frontends.remove(f);
                }
            }
            Change::AddFrontend(s, addr, port, udp) => {
                if let Some(svc) = self.services.get_mut(svc(s)) {
                    svc.frontends.push((addr, port, udp));
                }
            }
            Change::RemoveService(s) => {
                if !self.services.is_empty() {
                    self.services.remove(svc(s));
                }
            }
            Change::Affinity(s, a) => {
                if let Some(svc) = self.services.get_mut(svc(s)) {
                    svc.affinity = a;
                }
            }
            Change::WhenEmpty(s, w) => {
                if let Some(svc) = self.services.get_mut(svc(s)) {
                    svc.when_empty = w;
                }
            }
            Change::Ranges(s, ref r) => {
                if let Some(svc) = self.services.get_mut(svc(s)) {
                    svc.ranges.clone_from(r);
                }
            }
            Change::NodeAddresses(mask) => self.node_mask = mask,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Change {
    RemoveEndpoint(u8, u8),
    Terminate(u8, u8),
    AddEndpoint(u8, u8, bool),
    RemoveFrontend(u8, u8),
    AddFrontend(u8, FeAddr, u16, bool),
    RemoveService(u8),
    Affinity(u8, Option<u32>),
    WhenEmpty(u8, WhenEmpty),
    Ranges(u8, Vec<u8>),
    NodeAddresses(u8),
}

pub(crate) fn when_empty() -> impl Strategy<Value = WhenEmpty> {
    prop_oneof![
        Just(WhenEmpty::Pass),
        Just(WhenEmpty::Reject),
        Just(WhenEmpty::Drop)
    ]
}

pub(crate) fn affinity() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![3 => Just(None), 1 => Just(Some(10)), 1 => Just(Some(10800))]
}

pub(crate) fn fe_addr() -> impl Strategy<Value = FeAddr> {
    prop_oneof![
        4 => Just(FeAddr::All),
        3 => (0u8..3).prop_map(FeAddr::Vip),
        2 => (0u8..2).prop_map(FeAddr::Node),
        1 => (0u8..2).prop_map(FeAddr::Loopback),
        1 => Just(FeAddr::Elsewhere),
    ]
}

pub(crate) fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        proptest::bool::weighted(0.4),
        vec(
            (fe_addr(), pick(vec![80u16, 53, 8080]), any::<bool>()),
            1..=3,
        ),
        vec(
            (
                prop_oneof![6 => 0u8..6, 1 => Just(6u8)],
                prop_oneof![3 => pick(vec![3000u16, 3001]), 1 => pick(vec![80u16, 53])],
                proptest::bool::weighted(0.75),
            ),
            0..=5,
        ),
        affinity(),
        when_empty(),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(0u8..9, 1..=2)],
    )
        .prop_map(
            |(v6, frontends, endpoints, affinity, when_empty, ranges)| SvcSpec {
                v6,
                frontends,
                endpoints,
                affinity,
                when_empty,
                ranges,
            },
        )
}

pub(crate) fn world() -> impl Strategy<Value = World> {
    (
        vec(svc_spec(), 1..=5),
        prop_oneof![3 => Just(0b1111u8), 2 => any::<u8>()],
    )
        .prop_map(|(services, node_mask)| World {
            services,
            node_mask,
        })
}

pub(crate) fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>()).prop_map(|(s, e)| Change::RemoveEndpoint(s, e)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(s, e)| Change::Terminate(s, e)),
        2 => (any::<u8>(), 0u8..7, any::<bool>()).prop_map(|(s, b, r)| Change::AddEndpoint(s, b, r)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(s, f)| Change::RemoveFrontend(s, f)),
        1 => (any::<u8>(), fe_addr(), pick(vec![80u16, 53, 8080]), any::<bool>())
            .prop_map(|(s, a, p, u)| Change::AddFrontend(s, a, p, u)),
        1 => any::<u8>().prop_map(Change::RemoveService),
        1 => (any::<u8>(), affinity()).prop_map(|(s, a)| Change::Affinity(s, a)),
        1 => (any::<u8>(), when_empty()).prop_map(|(s, w)| Change::WhenEmpty(s, w)),
        1 => (any::<u8>(), vec(0u8..9, 0..=2)).prop_map(|(s, r)| Change::Ranges(s, r)),
        1 => any::<u8>().prop_map(Change::NodeAddresses),
    ]
}
