//! Direct server return towards backends on other nodes (`--lb-mode dsr`,
//! and `hybrid` for TCP).
//!
//! On the node the client talked to, XDP translates a DSR flow's requests to
//! the backend and keeps the client's address as their source; the packets
//! that open the flow (see [`needs_option`]) are marked for the tc ingress
//! program `portmap_dsr` instead, which writes the backend and adds the
//! frontend as an option (format: `portmap_common::dsr`) with the kernel's
//! helpers. On the backend's node the same program finds the option in a
//! request for a backend there and records a reply entry (backend → client,
//! holding the frontend, `CT_F_DSR_REPLY`): the backend's replies are then
//! translated as any local backend's are (tc egress, or the reply fast
//! path), and go straight to the client from the frontend it used.
//!
//! A packet that cannot carry the option (no room under the MTU, a GSO
//! packet, extension headers or a VLAN tag in the way, a driver that keeps
//! no XDP metadata) is counted (`dsr_option_skipped`): a TCP SYN is
//! dropped, since the connection it opens could never be answered; a UDP
//! datagram goes on without it (the backend's node knows the flow if an
//! earlier datagram carried it).
//!
//! The backend's node trusts an option for any frontend it publishes (and,
//! for a port it publishes on all addresses, any address with that port), as
//! Cilium's DSR does: a sender able to reach a pod directly could make the
//! pod's replies to it come from such an address. It never lets an option
//! take over a current entry of a flow of its own.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_NET,
    },
    helpers::bpf_check_mtu,
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use portmap_common::{
    abi::{
        CT_F_DSR, CT_F_DSR_REPLY, CT_REQUEST, CT_STATE_CLOSING, CtValue, DatapathEvent, FAMILY_V4,
        FrontendKey, NO_BACKEND_ID, PROTO_TCP, REFRESH_INTERVAL_NS, RawAddr,
    },
    dsr::{EXT6_LEN, IPV6_DSTOPTS, OPT4_LEN, OPT4_TYPE, OPT6_DATA_LEN, OPT6_TYPE, ext6, opt4},
};

use crate::{
    conntrack,
    counters::count_event,
    handoff::{self, Kind},
    maps::{CONNTRACK, CT_SCRATCH, FRONTENDS},
    nat::{Side, rewrite_tc},
    packet::{PacketBuf, ptr_at},
    parse::{ETH_P_IP, ETH_P_IPV6, Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, parse_skb},
};

const ETH_HLEN: usize = EthHdr::LEN;
const IPV4_HLEN: usize = Ipv4Hdr::LEN;
const IPV6_HLEN: usize = Ipv6Hdr::LEN;

/// Whether a DSR flow's packet must carry the frontend: a SYN opening a TCP
/// connection (its later segments are known by then on the backend's node,
/// and carry no bytes of it), or any UDP datagram (UDP has no opening
/// packet, and its first datagram may be lost).
#[inline(always)]
pub fn needs_option(flow: &Flow) -> bool {
    flow.proto != PROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// tc ingress (`portmap_dsr`): a DSR request XDP marked, written and given
/// its option; else a request carrying an option, learned (unless XDP
/// translated it here: then it is this node's flow). Anything else passes at
/// the cost of a few loads.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    match handoff::marked(ctx) {
        Some(Kind::Dsr) => {
            handoff::consume(ctx);
            send_marked(ctx)
        }
        Some(Kind::Request) => TC_ACT_UNSPEC,
        None => {
            match glance(ctx) {
                Glance::MayCarryOption => learn(ctx),
                Glance::TcpClosing => close_learned(ctx),
                Glance::Nothing => {}
            }
            TC_ACT_UNSPEC
        }
    }
}

/// A DSR request marked by XDP: to the backend of its conntrack entry, with
/// the frontend it was sent to in the option. A request that cannot be
/// written is dropped (counted), not passed to this node's stack, which
/// would refuse it: the client's retransmission is translated afresh. So is
/// a TCP SYN that cannot carry the option, which would open a connection
/// whose replies never reach the client; a UDP datagram goes on without it.
#[inline(always)]
fn send_marked(ctx: &TcContext) -> i32 {
    let Ok(flow) = parse_skb(ctx) else {
        count_event(DatapathEvent::RewriteFailed);
        return TC_ACT_SHOT;
    };
    let key = conntrack::key_of(&flow, CT_REQUEST);
    let Some(entry) = CONNTRACK.get_ptr(&key) else {
        count_event(DatapathEvent::RewriteFailed);
        return TC_ACT_SHOT;
    };
    // SAFETY: a live map value, copied at once (XDP touched it already).
    let e = unsafe { *entry };
    if e.flags & CT_F_DSR == 0 {
        count_event(DatapathEvent::RewriteFailed);
        return TC_ACT_SHOT;
    }
    let (frontend, frontend_port) = (flow.dst, flow.dport);
    if rewrite_tc(ctx, &flow, Side::Dst, &e.nat_addr, e.nat_port).is_none() {
        count_event(DatapathEvent::RewriteFailed);
        return TC_ACT_SHOT;
    }
    match add_option(ctx, &flow, &frontend, frontend_port) {
        Added::Yes => {
            count_event(DatapathEvent::DsrOptionAdded);
            TC_ACT_UNSPEC
        }
        Added::NoRoom => {
            count_event(DatapathEvent::DsrOptionSkipped);
            if flow.proto == PROTO_TCP {
                TC_ACT_SHOT
            } else {
                TC_ACT_UNSPEC
            }
        }
        Added::Broken => {
            count_event(DatapathEvent::RewriteFailed);
            TC_ACT_SHOT
        }
    }
}

/// How adding the option went.
enum Added {
    Yes,
    /// The packet cannot carry it; it is unchanged.
    NoRoom,
    /// The room was made but could not be filled: the packet is unusable.
    Broken,
}

/// Inserts the option right after the fixed IP header (where
/// `BPF_ADJ_ROOM_NET` makes room) and fixes the IP header's lengths and
/// checksum. The L4 checksum is untouched: neither pseudo-header counts IP
/// options or extension headers.
#[inline(always)]
fn add_option(ctx: &TcContext, flow: &Flow, addr: &RawAddr, port: u16) -> Added {
    // BPF_ADJ_ROOM_NET inserts after the MAC header the skb knows: a tag in
    // the packet would put the room in the wrong place.
    if flow.l3_off != ETH_HLEN || ctx.is_gso() {
        return Added::NoRoom;
    }
    let v4 = flow.family == FAMILY_V4;
    let grow = if v4 { OPT4_LEN } else { EXT6_LEN };
    if v4 {
        // IHL counts 4-byte words, 15 at most.
        if flow.l4_off - flow.l3_off + OPT4_LEN > 60 {
            return Added::NoRoom;
        }
    } else if flow.l4_off != flow.l3_off + IPV6_HLEN {
        // Extension headers already there: a destination options header
        // belongs after some of them, and none of this is worth a walk.
        return Added::NoRoom;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: the skb is this run's; `mtu_len` is a valid u32 the helper
    // writes. ifindex 0: the device the packet came in on (the nodes of a
    // cluster share their underlay's MTU).
    if unsafe { bpf_check_mtu(ctx.skb.skb.cast(), 0, &mut mtu_len, grow as i32, 0) } != 0 {
        return Added::NoRoom;
    }
    if ctx.adjust_room(grow as i32, BPF_ADJ_ROOM_NET, 0).is_err() {
        return Added::NoRoom;
    }
    let finished = if v4 {
        finish_v4(ctx, flow, addr, port)
    } else {
        finish_v6(ctx, flow, addr, port)
    };
    match finished {
        Some(()) => Added::Yes,
        None => Added::Broken,
    }
}

/// After the room is made: the option, IHL and total length, and the
/// header checksum amended word by word (the option's words were zero).
#[inline(always)]
fn finish_v4(ctx: &TcContext, flow: &Flow, addr: &RawAddr, port: u16) -> Option<()> {
    let l3 = flow.l3_off;
    let csum = l3 + 10;
    let a = addr.0[0].to_ne_bytes();
    let option = opt4(a, port);
    ctx.store(l3 + IPV4_HLEN, &option, 0).ok()?;
    for i in 0..OPT4_LEN / 4 {
        let w = u32::from_ne_bytes([
            option[4 * i],
            option[4 * i + 1],
            option[4 * i + 2],
            option[4 * i + 3],
        ]);
        ctx.l3_csum_replace(csum, 0, u64::from(w), 4).ok()?;
    }
    let head: [u8; 4] = ctx.load(l3).ok()?;
    let mut new = head;
    new[0] = head[0] + (OPT4_LEN / 4) as u8;
    let tot_len = u16::from_be_bytes([head[2], head[3]]).checked_add(OPT4_LEN as u16)?;
    new[2..4].copy_from_slice(&tot_len.to_be_bytes());
    ctx.store(l3, &new, 0).ok()?;
    let (old, new) = (u32::from_ne_bytes(head), u32::from_ne_bytes(new));
    ctx.l3_csum_replace(csum, u64::from(old), u64::from(new), 4)
        .ok()
}

/// After the room is made: the destination options header, chained in.
#[inline(always)]
fn finish_v6(ctx: &TcContext, flow: &Flow, addr: &RawAddr, port: u16) -> Option<()> {
    let l3 = flow.l3_off;
    let words: [u8; 4] = ctx.load(l3 + 4).ok()?;
    let payload = u16::from_be_bytes([words[0], words[1]]).checked_add(EXT6_LEN as u16)?;
    let next = words[2];
    let ext = ext6(next, addr.octets(), port);
    ctx.store(l3 + IPV6_HLEN, &ext, 0).ok()?;
    let p = payload.to_be_bytes();
    ctx.store(l3 + 4, &[p[0], p[1], IPV6_DSTOPTS, words[3]], 0)
        .ok()
}

/// What a glance at a packet's first bytes says of it, before anything
/// parses it: two loads (direct packet reads here trip the verifier on
/// LLVM's addressing of the skb's fields).
#[derive(PartialEq, Eq)]
enum Glance {
    /// An IPv4 header longer than 20 bytes, or an IPv6 one followed by
    /// destination options: it may carry an option.
    MayCarryOption,
    /// A TCP segment with FIN or RST: it may close a learned flow.
    TcpClosing,
    /// Everything else (nearly all traffic), which stops here.
    Nothing,
}

#[inline(always)]
fn glance(ctx: &TcContext) -> Glance {
    // The EtherType, and the IP header's first 10 bytes: IPv4's version and
    // IHL (byte 2 here) and protocol (11), IPv6's next header (8).
    let Ok(h) = ctx.load::<[u8; 12]>(12) else {
        return Glance::Nothing;
    };
    let (l4, proto) = match u16::from_be_bytes([h[0], h[1]]) {
        ETH_P_IP if h[2] & 0x0f > 5 => return Glance::MayCarryOption,
        ETH_P_IP => (ETH_HLEN + IPV4_HLEN, h[11]),
        ETH_P_IPV6 if h[8] == IPV6_DSTOPTS => return Glance::MayCarryOption,
        ETH_P_IPV6 => (ETH_HLEN + IPV6_HLEN, h[8]),
        _ => return Glance::Nothing,
    };
    if proto != PROTO_TCP {
        return Glance::Nothing;
    }
    match ctx.load::<u8>(l4 + 13) {
        Ok(flags) if flags & (TCP_FIN | TCP_RST) != 0 => Glance::TcpClosing,
        _ => Glance::Nothing,
    }
}

/// The client's FIN or RST of a learned flow, on the backend's node: the
/// entry is closing (a connection the client resets would otherwise stay
/// established here until it timed out, since only the backend's side of
/// it is seen here).
#[inline(always)]
fn close_learned(ctx: &TcContext) {
    let Ok(flow) = parse_skb(ctx) else {
        return;
    };
    let key = conntrack::reply_key_of(&flow);
    let Some(entry) = CONNTRACK.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a live map value; racing writers store whole fields.
    let e = unsafe { &mut *entry };
    if e.flags & CT_F_DSR_REPLY != 0 && e.state != CT_STATE_CLOSING {
        e.state = CT_STATE_CLOSING;
        e.last_seen_ns = conntrack::now_ns();
    }
}

/// The frontend a request's option carries, if it carries one (right after
/// the fixed header, where `add_option` puts it).
#[inline(always)]
fn carried_frontend(ctx: &TcContext, flow: &Flow) -> Option<(RawAddr, u16)> {
    if flow.family == FAMILY_V4 {
        if flow.l4_off < flow.l3_off + IPV4_HLEN + OPT4_LEN {
            return None;
        }
        let o: *const [u8; OPT4_LEN] = ptr_at(ctx, flow.l3_off + IPV4_HLEN)?;
        // SAFETY: bounds checked by `ptr_at` just above.
        let o = unsafe { *o };
        if o[0] != OPT4_TYPE || usize::from(o[1]) != OPT4_LEN {
            return None;
        }
        let addr = RawAddr([u32::from_ne_bytes([o[4], o[5], o[6], o[7]]), 0, 0, 0]);
        return Some((addr, u16::from_ne_bytes([o[2], o[3]])));
    }
    if flow.l4_off < flow.l3_off + IPV6_HLEN + EXT6_LEN {
        return None;
    }
    let h: *const [u8; EXT6_LEN] = ptr_at(ctx, flow.l3_off + IPV6_HLEN)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    let h = unsafe { *h };
    if h[2] != OPT6_TYPE || h[3] != OPT6_DATA_LEN {
        return None;
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let addr = RawAddr([word(6), word(10), word(14), word(18)]);
    Some((addr, u16::from_ne_bytes([h[4], h[5]])))
}

/// A request carrying an option, on the backend's node: its reply entry
/// recorded, holding the frontend (this node's frontend of that address and
/// port, or of the port on all addresses: a NodePort the client sent to
/// another node).
#[inline(always)]
fn learn(ctx: &TcContext) {
    let Ok(flow) = parse_skb(ctx) else {
        return;
    };
    let Some((addr, port)) = carried_frontend(ctx, &flow) else {
        return;
    };
    let mut key = FrontendKey {
        addr,
        port,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY (both reads): live map values, copied at once.
    let fe = match FRONTENDS.get_ptr(&key) {
        Some(fe) => unsafe { *fe },
        None => {
            key.addr = RawAddr::UNSPECIFIED;
            match FRONTENDS.get_ptr(&key) {
                Some(fe) => unsafe { *fe },
                None => {
                    count_event(DatapathEvent::DsrUnknownFrontend);
                    return;
                }
            }
        }
    };
    let Some(scratch) = CT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a valid map value this run uses alone: the program holds its
    // CPU and nothing here yields.
    let s = unsafe { &mut *scratch };
    // The reply's key: from the backend (this packet's destination) to the
    // client.
    s.key = conntrack::reply_key_of(&flow);
    let now = conntrack::now_ns();
    let mut insert_flags = u64::from(BPF_NOEXIST);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&s.key) {
        // SAFETY: a live map value; racing writers store whole fields of
        // the same kind of update.
        let e = unsafe { &mut *entry };
        if e.flags & CT_F_DSR_REPLY == 0 {
            // A flow of this node's own (a local backend's, a SNATed one's)
            // is never taken over by an option; a stale entry may be.
            let Some(cfg) = conntrack::config() else {
                return;
            };
            if conntrack::reply_allowed(e, flow.proto, now, cfg) {
                return;
            }
        } else if e.nat_addr == addr
            && e.nat_port == port
            && e.frontend_id == fe.frontend_id
            && e.frontend_generation == fe.generation
            && !(flow.proto == PROTO_TCP && flow.tcp_flags & TCP_SYN != 0)
        {
            // Every datagram of a UDP flow carries the option: refresh the
            // entry at most once a second, as conntrack's touches do. A SYN
            // reusing the ports of a finished connection records afresh.
            if now.saturating_sub(e.last_seen_ns) >= REFRESH_INTERVAL_NS {
                e.last_seen_ns = now;
            }
            return;
        }
        insert_flags = u64::from(BPF_ANY);
    }
    s.value = CtValue {
        nat_addr: addr,
        nat_port: port,
        state: conntrack::opening_state(&flow),
        flags: CT_F_DSR_REPLY,
        frontend_id: fe.frontend_id,
        frontend_generation: fe.generation,
        backend_id: NO_BACKEND_ID,
        backend_generation: 0,
        snat_port: 0,
        _reserved: 0,
        last_seen_ns: now,
    };
    if CONNTRACK.insert(&s.key, &s.value, insert_flags).is_ok() {
        count_event(DatapathEvent::DsrLearned);
    } else {
        count_event(DatapathEvent::ConntrackInsertFailed);
    }
}
