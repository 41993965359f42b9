//! proptest strategies of packets.

#![allow(clippy::wildcard_imports)]

use super::*;

// ---------------------------------------------------------------------------
// Packet strategies.

pub(crate) fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(TCP_SYN),
        1 => Just(TCP_SYN | TCP_ACK),
        2 => Just(TCP_ACK),
        2 => Just(TCP_ACK | TCP_PSH),
        1 => Just(TCP_FIN | TCP_ACK),
        1 => Just(TCP_FIN),
        1 => Just(TCP_RST),
        1 => Just(TCP_RST | TCP_ACK),
        1 => Just(TCP_SYN | TCP_FIN),
        1 => any::<u8>(),
    ]
}

pub(crate) fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        6 => vec(any::<u8>(), 1..48),
        1 => vec(any::<u8>(), 48..400),
    ]
}

pub(crate) fn sport() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(40000u16),
        1 => Just(40001u16),
        1 => Just(3000u16),
        2 => any::<u16>(),
    ]
}

/// Destination ports: published ones mostly.
pub(crate) fn dport() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(8080u16),
        4 => Just(80u16),
        3 => Just(53u16),
        2 => Just(443u16),
        1 => Just(3000u16),
        1 => Just(9999u16),
        1 => any::<u16>(),
    ]
}

pub(crate) fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        5 => (
            sport(),
            dport(),
            tcp_flags(),
            prop_oneof![6 => Just(0u8), 1 => 1u8..=10],
            payload()
        )
            .prop_map(|(sport, dport, flags, options, payload)| L4::Tcp {
                sport,
                dport,
                flags,
                options,
                payload
            }),
        4 => (sport(), dport(), payload(), proptest::bool::weighted(0.15)).prop_map(
            |(sport, dport, payload, zero_checksum)| L4::Udp {
                sport,
                dport,
                payload,
                zero_checksum
            }
        ),
        1 => (
            prop_oneof![Just(1u8), Just(58), Just(47), Just(132), Just(59), any::<u8>()],
            payload()
        )
            .prop_map(|(proto, payload)| L4::Other { proto, payload }),
    ]
}

pub(crate) fn ext_len() -> impl Strategy<Value = u8> {
    prop_oneof![8 => 0u8..3, 1 => 3u8..24, 1 => 115u8..=130, 1 => any::<u8>()]
}

pub(crate) fn ext() -> impl Strategy<Value = Ext> {
    prop_oneof![
        3 => ext_len().prop_map(Ext::HopByHop),
        3 => ext_len().prop_map(Ext::DestOpts),
        2 => (ext_len(), prop_oneof![4 => Just(0u8), 1 => 1u8..=255])
            .prop_map(|(len, segments_left)| Ext::Routing { len, segments_left }),
        2 => (
            prop_oneof![3 => Just(0u16), 1 => 1u16..8192],
            proptest::bool::weighted(0.3),
            0u8..4
        )
            .prop_map(|(offset, more, reserved)| Ext::Fragment {
                offset,
                more,
                reserved
            }),
        2 => prop_oneof![3 => 0u8..6, 1 => any::<u8>()].prop_map(Ext::Auth),
    ]
}

pub(crate) fn ext_chain() -> impl Strategy<Value = Vec<Ext>> {
    prop_oneof![
        5 => Just(Vec::new()),
        3 => vec(ext(), 1..=3),
        2 => vec(ext(), 4..=8),
    ]
}

pub(crate) fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        8 => Just(Tag::None),
        2 => any::<u16>().prop_map(Tag::Dot1Q),
        1 => any::<u16>().prop_map(Tag::Dot1Ad),
        1 => Just(Tag::QinQ),
    ]
}

pub(crate) fn pick<T: Clone + std::fmt::Debug + 'static>(
    items: Vec<T>,
) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

pub(crate) fn any_v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

pub(crate) fn any_v6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

/// Destinations of the fixed services' addresses, and others.
pub(crate) fn dst4() -> impl Strategy<Value = Ipv4Addr> {
    let mut known: Vec<Ipv4Addr> = NODE4.to_vec();
    known.extend((0..6).map(vip4));
    known.extend(LOOP4);
    known.extend([OTHER4, backend4(0)]);
    prop_oneof![9 => pick(known), 1 => any_v4()]
}

pub(crate) fn dst6() -> impl Strategy<Value = Ipv6Addr> {
    let mut known: Vec<Ipv6Addr> = NODE6.to_vec();
    known.extend((0..6).map(vip6));
    known.extend([Ipv6Addr::LOCALHOST, OTHER6, backend6(0)]);
    prop_oneof![9 => pick(known), 1 => any_v6()]
}

pub(crate) fn src4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        6 => pick(CLIENT4[..5].to_vec()),
        2 => pick(CLIENT4[5..].to_vec()),
        2 => any_v4(),
    ]
}

pub(crate) fn src6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        6 => pick(CLIENT6[..5].to_vec()),
        2 => pick(CLIENT6[5..].to_vec()),
        2 => any_v6(),
    ]
}

pub(crate) fn frag_field() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => Just(0x4000u16), // DF
        3 => Just(0u16),
        1 => Just(0x8000u16), // the reserved bit
        1 => Just(0x2000u16), // MF
        1 => 1u16..0x2000,    // an offset
        1 => any::<u16>(),
    ]
}

pub(crate) fn net() -> impl Strategy<Value = Net> {
    prop_oneof![
        5 => (
            src4(),
            dst4(),
            prop_oneof![6 => Just(0u8), 1 => 1u8..=10],
            frag_field(),
            l4()
        )
            .prop_map(|(src, dst, options, frag, l4)| Net::V4 {
                src,
                dst,
                options,
                frag,
                l4
            }),
        5 => (src6(), dst6(), ext_chain(), l4())
            .prop_map(|(src, dst, ext, l4)| Net::V6 { src, dst, ext, l4 }),
        1 => Just(Net::Arp),
        1 => (any::<u16>(), vec(any::<u8>(), 0..80))
            .prop_map(|(ether_type, bytes)| Net::Raw { ether_type, bytes }),
    ]
}

pub(crate) fn len_change() -> impl Strategy<Value = Len> {
    prop_oneof![
        4 => (-8i8..=8).prop_map(Len::Delta),
        1 => Just(Len::Abs(0)),
        1 => any::<u16>().prop_map(Len::Abs),
    ]
}

pub(crate) fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        1 => (0u8..16).prop_map(Damage::Version),
        2 => (0u8..16).prop_map(Damage::Ihl),
        2 => len_change().prop_map(Damage::TotalLength),
        2 => len_change().prop_map(Damage::PayloadLength),
        2 => len_change().prop_map(Damage::UdpLength),
        2 => (0u8..16).prop_map(Damage::DataOffset),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(at, value)| Damage::Byte { at, value }),
        1 => Just(Damage::IpChecksum),
        1 => Just(Damage::L4Checksum),
        2 => Just(Damage::Offloaded),
    ]
}

pub(crate) fn packet() -> impl Strategy<Value = PacketSpec> {
    (
        tag(),
        net(),
        prop_oneof![6 => Just(0u8), 2 => 1u8..=30],
        prop_oneof![6 => Just(Vec::new()), 3 => vec(damage(), 1..=2)],
        prop_oneof![8 => Just(None), 2 => any::<u16>().prop_map(Some)],
        prop_oneof![3 => any::<u8>().prop_map(Some), 1 => Just(None)],
        icmp_spec(),
    )
        .prop_map(
            |(tag, net, padding, damage, truncate, aim, icmp)| PacketSpec {
                tag,
                net,
                padding,
                damage,
                truncate,
                aim,
                icmp,
            },
        )
}

/// Well-formed TCP or UDP packets to the fixed services (IPv6 extension
/// headers limited to ones a flow may have).
pub(crate) fn well_formed_packet() -> impl Strategy<Value = PacketSpec> {
    let ext = prop_oneof![
        ext_len().prop_map(Ext::HopByHop),
        ext_len().prop_map(Ext::DestOpts),
        ext_len().prop_map(|len| Ext::Routing {
            len,
            segments_left: 0
        }),
        Just(Ext::Fragment {
            offset: 0,
            more: false,
            reserved: 0
        }),
        (0u8..6).prop_map(Ext::Auth),
    ];
    let l4 = || l4().prop_filter("TCP or UDP", |l4| !matches!(l4, L4::Other { .. }));
    let net = prop_oneof![
        (
            src4(),
            dst4(),
            prop_oneof![3 => Just(0u8), 1 => 1u8..=10],
            l4()
        )
            .prop_map(|(src, dst, options, l4)| Net::V4 {
                src,
                dst,
                options,
                frag: 0x4000,
                l4
            }),
        (src6(), dst6(), vec(ext, 0..=3), l4()).prop_map(|(src, dst, ext, l4)| Net::V6 {
            src,
            dst,
            ext,
            l4
        }),
    ];
    (
        prop_oneof![3 => Just(Tag::None), 1 => Just(Tag::Dot1Q(7)), 1 => Just(Tag::Dot1Ad(9))],
        net,
        prop_oneof![3 => Just(0u8), 1 => 1u8..=20],
        prop_oneof![3 => any::<u8>().prop_map(Some), 1 => Just(None)],
        icmp_spec(),
    )
        .prop_map(|(tag, net, padding, aim, icmp)| PacketSpec {
            tag,
            net,
            padding,
            damage: Vec::new(),
            truncate: None,
            aim,
            icmp,
        })
}
