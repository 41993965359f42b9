//! Sequences of steps on flows: requests, replies, ICMP errors, idle time, changes.

#![allow(clippy::wildcard_imports)]

use super::*;

// ---------------------------------------------------------------------------
// Flows and steps.

/// How a flow's packets look beyond their addresses.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub(crate) tag: Tag,
    pub(crate) ip_options: u8,
    pub(crate) ext: Vec<Ext>,
    pub(crate) zero_udp_checksum: bool,
    pub(crate) payload: u8,
    pub(crate) padding: u8,
}

#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// The n-th published frontend (modulo their number).
    Frontend(u8),
    /// Anything: (address, family, port, UDP?).
    Addr(FeAddr, bool, u16, bool),
}

#[derive(Clone, Debug)]
pub(crate) struct FlowSpec {
    pub(crate) target: Target,
    /// Index into the family's clients.
    pub(crate) client: u8,
    pub(crate) sport: u16,
    /// For an all-addresses frontend: which node address (or one elsewhere).
    pub(crate) node: u8,
    pub(crate) shape: Shape,
}

#[derive(Clone, Debug)]
pub(crate) enum Step {
    Request {
        flow: u8,
        flags: u8,
    },
    Reply {
        flow: u8,
        flags: u8,
    },
    /// A router's ICMP error to the client about its (translated) request.
    IcmpToClient {
        flow: u8,
        icmp: IcmpSpec,
    },
    /// The client's ICMP error to the frontend about the reply it got.
    IcmpFromClient {
        flow: u8,
        icmp: IcmpSpec,
    },
    Elapse(u8),
    Reapply(Change),
    /// The LRU evicts one entry of the flow: its forward or its reply entry.
    Evict {
        flow: u8,
        reply: bool,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct SequenceCase {
    pub(crate) world: World,
    pub(crate) flows: Vec<FlowSpec>,
    pub(crate) steps: Vec<Step>,
}

pub(crate) fn shape() -> impl Strategy<Value = Shape> {
    let benign_ext = prop_oneof![
        6 => Just(Vec::new()),
        1 => Just(vec![Ext::HopByHop(0)]),
        1 => Just(vec![Ext::DestOpts(1), Ext::Auth(4)]),
        1 => Just(vec![Ext::Fragment { offset: 0, more: false, reserved: 0 }]),
        1 => Just(vec![Ext::Routing { len: 2, segments_left: 0 }]),
        1 => Just(vec![Ext::Routing { len: 2, segments_left: 1 }]),
    ];
    (
        prop_oneof![6 => Just(Tag::None), 1 => Just(Tag::Dot1Q(100)), 1 => Just(Tag::Dot1Ad(200))],
        prop_oneof![4 => Just(0u8), 1 => 1u8..=10],
        benign_ext,
        proptest::bool::weighted(0.2),
        0u8..40,
        prop_oneof![4 => Just(0u8), 1 => 1u8..=16],
    )
        .prop_map(
            |(tag, ip_options, ext, zero_udp_checksum, payload, padding)| Shape {
                tag,
                ip_options,
                ext,
                zero_udp_checksum,
                payload,
                padding,
            },
        )
}

pub(crate) fn flow_spec() -> impl Strategy<Value = FlowSpec> {
    let target = prop_oneof![
        6 => any::<u8>().prop_map(Target::Frontend),
        1 => (fe_addr(), any::<bool>(), pick(vec![80u16, 53, 8080, 9999]), any::<bool>())
            .prop_map(|(a, v6, p, udp)| Target::Addr(a, v6, p, udp)),
    ];
    (
        target,
        prop_oneof![8 => 0u8..5, 1 => 5u8..10],
        prop_oneof![3 => Just(40000u16), 1 => Just(40001u16), 2 => 1024u16..65535],
        prop_oneof![6 => 0u8..2, 1 => Just(2u8)],
        shape(),
    )
        .prop_map(|(target, client, sport, node, shape)| FlowSpec {
            target,
            client,
            sport,
            node,
            shape,
        })
}

pub(crate) fn step(elapse_weight: u32, change_weight: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..3, tcp_flags()).prop_map(|(flow, flags)| Step::Request { flow, flags }),
        5 => (0u8..3, tcp_flags()).prop_map(|(flow, flags)| Step::Reply { flow, flags }),
        1 => (0u8..3, icmp_spec()).prop_map(|(flow, icmp)| Step::IcmpToClient { flow, icmp }),
        1 => (0u8..3, icmp_spec()).prop_map(|(flow, icmp)| Step::IcmpFromClient { flow, icmp }),
        elapse_weight => any::<u8>().prop_map(Step::Elapse),
        change_weight => change().prop_map(Step::Reapply),
        1 => (0u8..3, any::<bool>()).prop_map(|(flow, reply)| Step::Evict { flow, reply }),
    ]
}

pub(crate) fn sequence_case(
    elapse_weight: u32,
    change_weight: u32,
) -> impl Strategy<Value = SequenceCase> {
    (
        world(),
        vec(flow_spec(), 1..=3),
        vec(step(elapse_weight, change_weight), 1..=8),
    )
        .prop_map(|(world, flows, steps)| SequenceCase {
            world,
            flows,
            steps,
        })
}

/// A flow with its addresses resolved against the published state.
pub(crate) struct LiveFlow {
    pub(crate) client: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) udp: bool,
    pub(crate) shape: Shape,
}

impl LiveFlow {
    pub(crate) fn resolve(spec: &FlowSpec, desired: &DesiredState) -> LiveFlow {
        let frontends: Vec<&Frontend> =
            desired.services.iter().flat_map(|s| &s.frontends).collect();
        let (host, port, udp) = match spec.target {
            Target::Frontend(i) if !frontends.is_empty() => {
                let fe = frontends[usize::from(i) % frontends.len()];
                (fe.addr, fe.port, fe.proto == Protocol::Udp)
            }
            Target::Frontend(i) => (FeAddr::All.host(i % 2 == 1), 8080, false),
            Target::Addr(a, v6, port, udp) => (a.host(v6), port, udp),
        };
        let n = usize::from(spec.node);
        let dst: IpAddr = match host {
            HostAddr::AllV4 => NODE4.get(n).map_or(v4(OTHER4), |a| v4(*a)),
            HostAddr::AllV6 => NODE6.get(n).map_or(v6(OTHER6), |a| v6(*a)),
            HostAddr::Ip(a) => a,
        };
        let c = usize::from(spec.client);
        let client = if dst.is_ipv4() {
            v4(CLIENT4[c % CLIENT4.len()])
        } else {
            v6(CLIENT6[c % CLIENT6.len()])
        };
        LiveFlow {
            client: SocketAddr::new(client, spec.sport),
            dst: SocketAddr::new(dst, port),
            udp,
            shape: spec.shape.clone(),
        }
    }

    /// A packet of the flow; `zero_checksum` sends a UDP one without a
    /// checksum if the flow's shape says so.
    pub(crate) fn packet(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        flags: u8,
        zero_checksum: bool,
    ) -> Vec<u8> {
        let s = &self.shape;
        let payload: Vec<u8> = (0..s.payload).map(|i| i.wrapping_mul(31)).collect();
        let l4 = if self.udp {
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                payload,
                zero_checksum: zero_checksum && s.zero_udp_checksum,
            }
        } else {
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                flags,
                options: 0,
                payload,
            }
        };
        let net = match (src.ip(), dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Net::V4 {
                src,
                dst,
                options: s.ip_options,
                frag: 0x4000,
                l4,
            },
            (IpAddr::V6(src), IpAddr::V6(dst)) => Net::V6 {
                src,
                dst,
                ext: s.ext.clone(),
                l4,
            },
            _ => unreachable!("one family per flow"),
        };
        build(&PacketSpec {
            tag: s.tag.clone(),
            net,
            padding: s.padding,
            damage: Vec::new(),
            truncate: None,
            aim: None,
            icmp: IcmpSpec {
                kind: 0,
                quote: QuoteLen::Whole,
            },
        })
    }

    /// The backend the model's conntrack sends this flow to, if any.
    pub(crate) fn backend(&self, h: &Harness) -> Option<SocketAddr> {
        let key = self.forward_key();
        let e = h.flows.conntrack.get(&key)?;
        Some(SocketAddr::new(
            ip(&e.nat_addr, key.family),
            port(e.nat_port),
        ))
    }

    /// The key of the flow's forward conntrack entry.
    pub(crate) fn forward_key(&self) -> CtKey {
        CtKey {
            src: raw(self.client.ip()),
            dst: raw(self.dst.ip()),
            sport: raw_port(self.client.port()),
            dport: raw_port(self.dst.port()),
            proto: if self.udp { 17 } else { 6 },
            family: family(self.client.ip()),
            direction: CT_REQUEST,
            _pad: 0,
        }
    }

    /// The key of the flow's reply entry, if the model has its forward entry.
    pub(crate) fn reply_key(&self, h: &Harness) -> Option<CtKey> {
        let forward = self.forward_key();
        let e = h.flows.conntrack.get(&forward)?;
        Some(CtKey {
            src: e.nat_addr,
            dst: forward.src,
            sport: e.nat_port,
            dport: forward.sport,
            direction: CT_REPLY,
            ..forward
        })
    }
}

/// Idle times, around the timeouts of `default_config` and `short_config`.
pub(crate) const ELAPSE_S: [f64; 16] = [
    0.3, 1.5, 4.0, 6.0, 9.0, 11.0, 19.0, 21.0, 29.0, 31.0, 59.0, 61.0, 119.0, 121.0, 3600.0,
    25000.0,
];

/// Timeouts short enough that idle time expires flows even on a machine up
/// for a few minutes only (time stamps are moved back, never below zero).
pub(crate) fn short_config() -> DatapathConfig {
    DatapathConfig {
        tcp_new_timeout_ns: 20_000_000_000,
        tcp_established_timeout_ns: 120_000_000_000,
        tcp_closing_timeout_ns: 5_000_000_000,
        udp_timeout_ns: 30_000_000_000,
        ..DatapathConfig::default()
    }
}
