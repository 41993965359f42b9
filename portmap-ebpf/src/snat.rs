//! SNAT towards backends on other nodes (kube-proxy's masquerade).
//!
//! A backend on another node answers the client directly, from its own
//! address, and the client drops what it never talked to. So a new flow to
//! such a backend (`BACKEND_NAT` says `NAT_SNAT`) also gets this node's
//! address towards the backend as its source, and a port of
//! `--snat-port-range`: the reply comes back here, where tc ingress puts the
//! frontend and the client back (with the kernel's checksum helpers, which
//! know the skb's offload state).
//!
//! A port is taken by inserting the flow's reply key into the `SNAT` map
//! with `BPF_NOEXIST`: the client's own port if it is in the range and free,
//! else one picked by the flow's hash, then the next ones, a bounded number
//! of times. When none is free the new flow is dropped and counted
//! (`snat_exhausted`); the flows that hold ports carry on, and garbage
//! collection frees a port once its flow is gone.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    programs::TcContext,
};
use portmap_common::{
    abi::{
        Backend, CT_F_SNAT, CT_REPLY, CT_REQUEST, CtKey, CtValue, DIR_REPLY, DatapathConfig,
        DatapathEvent, NAT_DSR, NAT_SNAT, RawAddr, SnatValue,
    },
    csum::CsumDelta,
    hash::flow_hash,
};

use crate::{
    conntrack::{self, Reach},
    counters::{count_event, count_traffic},
    icmp,
    maps::{BACKEND_NAT, CONNTRACK, SNAT, SNAT_SCRATCH},
    nat::{Side, rewrite_tc},
    packet::PacketBuf,
    parse::{Flow, IcmpAt, NotAFlow, parse_skb},
};

/// Ports tried for a new flow before it is refused (Cilium tries 32 too).
const MAX_TRIES: u32 = 32;

/// This node's address towards backend `backend_id`, if flows to it are
/// SNATed.
#[inline(always)]
pub fn source_addr(backend_id: u32) -> Option<RawAddr> {
    let nat = BACKEND_NAT.get(backend_id)?;
    (nat.mode == NAT_SNAT).then_some(nat.snat_addr)
}

/// How a new flow of `flow` reaches `backend`: directly, SNATed with a
/// port taken for it, or by DSR. `Err` (counted) when the backend needs SNAT and no
/// port is free.
#[inline(always)]
pub fn reach(
    flow: &Flow,
    backend_id: u32,
    backend: &Backend,
    cfg: &DatapathConfig,
) -> Result<Reach, ()> {
    let Some(nat) = BACKEND_NAT.get(backend_id) else {
        return Ok(Reach::Direct);
    };
    let addr = match nat.mode {
        NAT_SNAT => nat.snat_addr,
        NAT_DSR => return Ok(Reach::Dsr),
        _ => return Ok(Reach::Direct),
    };
    match take_port(flow, backend, &addr, cfg) {
        0 => {
            count_event(DatapathEvent::SnatExhausted);
            Err(())
        }
        port => Ok(Reach::Snat {
            addr,
            port: port as u16,
        }),
    }
}

/// Takes a free port of the SNAT range towards `backend` for `flow` and
/// returns it (network byte order), or 0 if none is free.
#[inline(always)]
fn take_port(flow: &Flow, backend: &Backend, addr: &RawAddr, cfg: &DatapathConfig) -> u32 {
    let (min, max) = (u32::from(cfg.snat_port_min), u32::from(cfg.snat_port_max));
    if max < min || min == 0 {
        return 0;
    }
    // Never 0 (max ≥ min), but said so: the remainders below must not leave
    // a division-by-zero panic in the program (the verifier refuses it).
    let span = max - min + 1;
    if span == 0 {
        return 0;
    }
    let client_port = u32::from(u16::from_be(flow.sport));
    let first = if (min..=max).contains(&client_port) {
        client_port - min
    } else {
        flow_hash(&flow.src, &flow.dst, flow.sport, flow.dport, flow.proto) % span
    };
    // The key and value tried live in a per-CPU scratch slot, not on the
    // program's 512-byte stack (see `maps::SNAT_SCRATCH`).
    let Some(scratch) = SNAT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a valid map value this run uses alone: the program holds its
    // CPU (softirq or BH-disabled context) and nothing here yields.
    let scratch = unsafe { &mut *scratch };
    scratch.value = SnatValue {
        client: flow.src,
        frontend: flow.dst,
        client_port: flow.sport,
        frontend_port: flow.dport,
    };
    for i in 0..MAX_TRIES {
        let port = ((min + (first + i) % span) as u16).to_be();
        scratch.key = reply_key(flow, backend, addr, port);
        if SNAT
            .insert(&scratch.key, &scratch.value, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return u32::from(port);
        }
    }
    0
}

/// Gives back the port of a flow that could not be created after all.
#[inline(always)]
pub fn release(flow: &Flow, backend: &Backend, reach: Reach) {
    if let Reach::Snat { addr, port } = reach {
        let _ = SNAT.remove(&reply_key(flow, backend, &addr, port));
    }
}

/// The key of a SNATed flow's reply as it arrives: from the backend to this
/// node's address and the flow's port.
#[inline(always)]
fn reply_key(flow: &Flow, backend: &Backend, addr: &RawAddr, port: u16) -> CtKey {
    CtKey {
        src: backend.addr,
        dst: *addr,
        sport: backend.port,
        dport: port,
        proto: flow.proto,
        family: flow.family,
        direction: CT_REPLY,
        _pad: 0,
    }
}

/// A packet's ends after a translation: its source when it changes, and
/// its destination.
pub type Ends = (Option<(RawAddr, u16)>, (RawAddr, u16));

/// A translation tc ingress found for a packet, with the conntrack entry it
/// came from (to touch, when `touch`) and the ids it counts under.
pub struct Found {
    pub ends: Ends,
    pub key: CtKey,
    pub entry: *mut CtValue,
    /// The other entry of the flow, to refresh with this one; `None` when
    /// XDP touched the entries already.
    pub twin: Option<CtKey>,
    pub frontend_id: u32,
    pub backend_id: u32,
}

/// If `flow` is the reply of a SNATed flow (addressed to a port of the SNAT
/// range, with a current reply entry and its client on record): the ends it
/// goes back with, from the frontend to the client.
///
/// Run by tc ingress, not XDP: replies are the rare way in, and the kernel's
/// checksum helpers cover whatever offload state the skb is in.
#[inline(always)]
pub fn reply_ends(flow: &Flow, cfg: &DatapathConfig) -> Option<Found> {
    let dport = u16::from_be(flow.dport);
    if dport < cfg.snat_port_min || dport > cfg.snat_port_max {
        return None;
    }
    let key = conntrack::key_of(flow, CT_REPLY);
    let entry = CONNTRACK.get_ptr_mut(&key)?;
    // SAFETY: a live map value, read once into a copy.
    let value = unsafe { *entry };
    let now = conntrack::now_ns();
    if value.flags & CT_F_SNAT == 0 || !conntrack::reply_allowed(&value, flow.proto, now, cfg) {
        return None;
    }
    // SAFETY: as above.
    let client = unsafe { *SNAT.get_ptr(&key)? };
    Some(Found {
        ends: (
            Some((value.nat_addr, value.nat_port)),
            (client.client, client.client_port),
        ),
        twin: Some(CtKey {
            src: client.client,
            dst: value.nat_addr,
            sport: client.client_port,
            dport: value.nat_port,
            direction: CT_REQUEST,
            ..key
        }),
        key,
        entry,
        frontend_id: value.frontend_id,
        backend_id: value.backend_id,
    })
}

/// tc ingress (`portmap_snat_reply`): an ICMP error about a SNATed request (from its backend, or a
/// router on the way to it: "packet too big", an unreachable), addressed to
/// this node's SNAT address and port, goes on to the client, quoting the
/// request as the client sent it (client → frontend), so the client's stack
/// finds its socket (path MTU discovery through SNAT). Anything else is left
/// alone. In tc, not XDP: the XDP program is near the verifier's limits, and
/// these errors are rare.
#[inline(always)]
fn translate_icmp(ctx: &TcContext, at: &IcmpAt) {
    // Reading the quote, and writing it, need the skb linear and private up
    // to its end.
    if ctx.pull_data(at.ip_end as u32).is_err() {
        return;
    }
    let Some(q) = icmp::quote(ctx, at) else {
        return;
    };
    // The error goes back to where the quoted packet came from: this node.
    if q.src != at.dst {
        return;
    }
    // Key and client live in the per-CPU scratch slot, the entry is read in
    // place: this program's stack is nearly full with its replies' work.
    let Some(scratch) = SNAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a valid map value this run uses alone (see `take_port`).
    let scratch = unsafe { &mut *scratch };
    scratch.key = icmp::flow_key(&q, at.family, CT_REPLY);
    let Some(entry) = CONNTRACK.get_ptr(&scratch.key) else {
        return;
    };
    // SAFETY: a live map value, borrowed for this run (RCU keeps it valid).
    let e = unsafe { &*entry };
    let Some(cfg) = conntrack::config() else {
        return;
    };
    if e.flags & CT_F_SNAT == 0 || !conntrack::current(e, q.proto, conntrack::now_ns(), cfg) {
        return;
    }
    let Some(client) = SNAT.get_ptr(&scratch.key) else {
        return;
    };
    // SAFETY: as for the entry.
    scratch.value = unsafe { *client };
    let (frontend, frontend_port) = (e.nat_addr, e.nat_port);
    let c = &scratch.value;
    let done = icmp::redirect_to(ctx, at, &c.client).and_then(|extra| {
        icmp::rewrite_quote(ctx, at, &q, Side::Src, &c.client, c.client_port, extra)?;
        icmp::rewrite_quote(
            ctx,
            at,
            &q,
            Side::Dst,
            &frontend,
            frontend_port,
            CsumDelta::new(),
        )
    });
    icmp::count_translated(done);
}

/// tc ingress (`portmap_snat_reply`): a SNATed flow's reply, back from the
/// frontend to the client; anything else passes untouched.
#[inline(always)]
pub fn run_reply(ctx: &TcContext) -> i32 {
    let Some(cfg) = conntrack::config() else {
        return TC_ACT_UNSPEC;
    };
    if cfg.snat_port_max == 0 {
        return TC_ACT_UNSPEC;
    }
    let flow = match parse_skb(ctx) {
        Ok(flow) => flow,
        Err(NotAFlow::Icmp(at)) => {
            translate_icmp(ctx, &at);
            return TC_ACT_UNSPEC;
        }
        Err(_) => return TC_ACT_UNSPEC,
    };
    if let Some(found) = reply_ends(&flow, cfg) {
        if write_found(ctx, &flow, &found) {
            count_traffic(found.frontend_id, found.backend_id, DIR_REPLY, &flow);
            count_event(DatapathEvent::ReplyTranslated);
        }
    }
    TC_ACT_UNSPEC
}

/// Touches what `found` came from and writes its ends into the skb, with
/// the kernel's checksum helpers; false (counted) if a write failed.
#[inline(always)]
pub fn write_found(ctx: &TcContext, flow: &Flow, found: &Found) -> bool {
    if let Some(twin) = found.twin {
        conntrack::touch_twin(&found.key, found.entry, twin, flow, conntrack::now_ns());
    }
    let (src, (addr, port)) = found.ends;
    let written = match src {
        Some((a, p)) => rewrite_tc(ctx, flow, Side::Src, &a, p),
        None => Some(()),
    }
    .and_then(|()| rewrite_tc(ctx, flow, Side::Dst, &addr, port));
    if written.is_none() {
        count_event(if ctx.is_gso() {
            DatapathEvent::GsoRewriteFailed
        } else {
            DatapathEvent::RewriteFailed
        });
    }
    written.is_some()
}
