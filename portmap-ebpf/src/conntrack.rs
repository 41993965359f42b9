//! Connection tracking: a flow keeps its backend, and its replies find the
//! frontend to translate back to.
//!
//! Each flow has a request entry (client → frontend, holding the backend) and
//! a reply entry (backend → client, holding the frontend). Both carry the
//! state and last-seen time; refreshing one refreshes its twin, so either
//! direction keeps the flow alive. Entries are never trusted blindly: the frontend's and
//! backend's generations must still match, so a removed frontend or backend
//! stops being used at once, before any garbage collection runs.
//!
//! A flow SNATed towards a backend on another node (`CT_F_SNAT`) has the same
//! two entries, but its reply entry is keyed by the reply as it arrives
//! (backend → this node's address and the flow's SNAT port), and its client
//! is in the `SNAT` map under that same key (see `snat`).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use portmap_common::abi::{
    BACKEND_UNUSED, Backend, CT_F_DSR, CT_F_DSR_REPLY, CT_F_SNAT, CT_REPLY, CT_REQUEST,
    CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_NEW, CtKey, CtValue, DatapathConfig,
    DatapathEvent, FrontendValue, PROTO_TCP, REFRESH_INTERVAL_NS, RawAddr,
};

use crate::{
    counters::count_event,
    maps::{BACKENDS, CONFIG, CONNTRACK, CT_SCRATCH, FRONTEND_GEN},
    parse::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}

/// The key of `flow`'s packet in the given direction.
#[inline(always)]
pub fn key_of(flow: &Flow, direction: u8) -> CtKey {
    CtKey {
        src: flow.src,
        dst: flow.dst,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        family: flow.family,
        direction,
        _pad: 0,
    }
}

/// The key of a reply to `flow`'s packet (its ends swapped), in the reply
/// direction: how a backend's answer to a request it got is looked up.
#[inline(always)]
pub fn reply_key_of(flow: &Flow) -> CtKey {
    CtKey {
        src: flow.dst,
        dst: flow.src,
        sport: flow.dport,
        dport: flow.sport,
        ..key_of(flow, CT_REPLY)
    }
}

/// The key of the other entry of the flow that `key` and `entry` belong to,
/// for a flow that is not SNATed (a SNATed one's twin is found through SNAT
/// state: see `snat`).
#[inline(always)]
fn plain_twin_key(key: &CtKey, entry: &CtValue) -> CtKey {
    if key.direction == CT_REQUEST {
        // backend → client
        CtKey {
            src: entry.nat_addr,
            dst: key.src,
            sport: entry.nat_port,
            dport: key.sport,
            direction: CT_REPLY,
            ..*key
        }
    } else {
        // client → frontend
        CtKey {
            src: key.dst,
            dst: entry.nat_addr,
            sport: key.dport,
            dport: entry.nat_port,
            direction: CT_REQUEST,
            ..*key
        }
    }
}

#[inline(always)]
fn timeout_ns(cfg: &DatapathConfig, proto: u8, state: u8) -> u64 {
    if proto != PROTO_TCP {
        return cfg.udp_timeout_ns;
    }
    match state {
        CT_STATE_ESTABLISHED => cfg.tcp_established_timeout_ns,
        CT_STATE_CLOSING => cfg.tcp_closing_timeout_ns,
        _ => cfg.tcp_new_timeout_ns,
    }
}

/// What to do with a packet whose flow has a conntrack entry.
pub enum Decision {
    /// Translate as the entry says.
    Use,
    /// The entry is expired, or belongs to a frontend that no longer exists, or
    /// a SYN reuses the ports of a closed connection: treat as a new flow.
    New,
    /// The flow's backend is gone: pick another.
    Reselect,
}

#[inline(always)]
pub fn decide(entry: &CtValue, flow: &Flow, now: u64, cfg: &DatapathConfig) -> Decision {
    let age = now.saturating_sub(entry.last_seen_ns);
    if age > timeout_ns(cfg, flow.proto, entry.state) {
        return Decision::New;
    }
    if flow.proto == PROTO_TCP
        && entry.state == CT_STATE_CLOSING
        && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        return Decision::New;
    }
    if !frontend_current(entry) {
        return Decision::New;
    }
    if backend_current(entry) {
        Decision::Use
    } else {
        Decision::Reselect
    }
}

/// Whether the frontend the entry was made for still exists unchanged.
#[inline(always)]
fn frontend_current(entry: &CtValue) -> bool {
    matches!(FRONTEND_GEN.get(entry.frontend_id), Some(g) if *g == entry.frontend_generation)
}

/// Whether the backend the entry was made for still exists unchanged.
#[inline(always)]
fn backend_current(entry: &CtValue) -> bool {
    matches!(
        BACKENDS.get(entry.backend_id),
        Some(b) if b.state != BACKEND_UNUSED && b.generation == entry.backend_generation
    )
}

/// Whether an entry may translate a packet of a flow it does not create or
/// move (a reply, an ICMP error about the flow): it has not expired (its
/// ports may since belong to an untranslated flow), and its frontend and
/// backend are the ones it was made for.
#[inline(always)]
pub fn current(entry: &CtValue, proto: u8, now: u64, cfg: &DatapathConfig) -> bool {
    reply_allowed(entry, proto, now, cfg) && backend_current(entry)
}

/// Whether a reply entry may translate a reply: it has not expired and its
/// frontend is the one it was made for. Its backend may just have been
/// removed: an answer already on its way from there (a UDP exchange caught
/// by the removal) still goes back from the frontend the client used, not
/// from an address it never talked to; the flow's next request moves it.
#[inline(always)]
pub fn reply_allowed(entry: &CtValue, proto: u8, now: u64, cfg: &DatapathConfig) -> bool {
    now.saturating_sub(entry.last_seen_ns) <= timeout_ns(cfg, proto, entry.state)
        && frontend_current(entry)
}

#[inline(always)]
fn next_state(state: u8, flow: &Flow, from_reply: bool) -> u8 {
    if flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_STATE_CLOSING
    } else if state == CT_STATE_NEW && from_reply {
        CT_STATE_ESTABLISHED
    } else {
        state
    }
}

/// Records that `flow` was seen in the entry at `key`: advances the state and
/// the last-seen time of the entry and of its twin. Writes only when the state
/// changes or the last write is a second old, and then also recreates the
/// twin if it is missing.
///
/// Under pressure the LRU may evict one entry of a live flow: without its
/// reply entry, the backend's answers would leave untranslated; without its
/// request entry, the flow could be balanced elsewhere. Each entry holds all
/// its twin needs. Looking the twin up on every packet would close the
/// window completely but costs ~36 ns a packet (more than half of what a
/// conntrack hit costs the program);
/// at each write it costs nothing extra, and a flow is repaired at its next
/// state change or within a second.
///
/// This is the touch of an entry the caller checked is not a SNATed flow's;
/// [`touch_twin`] is the one for SNATed flows.
#[inline(always)]
pub fn touch_unsnated(key: &CtKey, entry: *mut CtValue, flow: &Flow, now: u64) {
    // A reply entry learned from a DSR option has no twin on this node.
    touch_with(key, entry, flow, now, |k, e| {
        (e.flags & CT_F_DSR_REPLY == 0).then(|| plain_twin_key(k, e))
    });
}

/// [`touch_unsnated`] with the twin's key known to the caller: a SNATed
/// flow's, found through the SNAT state the caller looked up already.
#[inline(always)]
pub fn touch_twin(key: &CtKey, entry: *mut CtValue, twin: CtKey, flow: &Flow, now: u64) {
    touch_with(key, entry, flow, now, |_, _| Some(twin));
}

#[inline(always)]
fn touch_with(
    key: &CtKey,
    entry: *mut CtValue,
    flow: &Flow,
    now: u64,
    twin_of: impl FnOnce(&CtKey, &CtValue) -> Option<CtKey>,
) {
    // SAFETY: `entry` points at a live map value (RCU keeps it valid for the
    // program's run); racing writers on other CPUs can only interleave whole
    // field stores of the same kind of update, which is harmless here.
    let e = unsafe { &mut *entry };
    // A DSR flow's replies never pass here: the client's acknowledgement
    // of one is what tells that it was answered.
    let answered = key.direction == CT_REPLY
        || (e.flags & CT_F_DSR != 0 && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK);
    let state = next_state(e.state, flow, answered);
    if state == e.state && now.saturating_sub(e.last_seen_ns) < REFRESH_INTERVAL_NS {
        return;
    }
    e.state = state;
    e.last_seen_ns = now;
    let Some(twin) = twin_of(key, e) else {
        return;
    };
    if let Some(t) = CONNTRACK.get_ptr_mut(twin) {
        // SAFETY: as for `entry`.
        let t = unsafe { &mut *t };
        t.state = state;
        t.last_seen_ns = now;
        return;
    }
    // The twin translates towards this packet's sender: its NAT address is
    // what this packet was sent to (request: the frontend) or from (reply:
    // the backend). A SNATed request entry also needs its port back: the
    // reply was sent to it.
    let (nat_addr, nat_port, snat_port) = if key.direction == CT_REQUEST {
        (flow.dst, flow.dport, e.snat_port)
    } else {
        (flow.src, flow.sport, flow.dport)
    };
    let restored = CtValue {
        nat_addr,
        nat_port,
        snat_port: if e.flags & CT_F_SNAT != 0 {
            snat_port
        } else {
            0
        },
        ..*e
    };
    if CONNTRACK.insert(twin, restored, 0).is_ok() {
        count_event(DatapathEvent::ConntrackEntryRestored);
    }
}

/// The state of a flow's first entry, made for `flow`'s packet.
#[inline(always)]
pub fn opening_state(flow: &Flow) -> u8 {
    next_state(CT_STATE_NEW, flow, false)
}

/// How a new flow reaches its backend: directly, SNATed from this node's
/// address and a port of the SNAT range, or by direct server return to a
/// backend on another node (see `dsr`).
#[derive(Clone, Copy)]
pub enum Reach {
    Direct,
    Snat { addr: RawAddr, port: u16 },
    Dsr,
}

/// Creates both entries of a new flow of `flow` from frontend `fe` to
/// `backend`. Returns the request entry's value, or `None` if the map refused
/// an insert (then nothing is translated, and no reply entry dangles).
#[inline(always)]
pub fn create(
    flow: &Flow,
    fe: &FrontendValue,
    backend_id: u32,
    backend: &Backend,
    reach: Reach,
    now: u64,
) -> Option<CtValue> {
    let request_key = key_of(flow, CT_REQUEST);
    let state = next_state(CT_STATE_NEW, flow, false);
    let (flags, snat_port, reply_dst, reply_dport) = match reach {
        Reach::Direct => (0, 0, flow.src, flow.sport),
        Reach::Dsr => (CT_F_DSR, 0, flow.src, flow.sport),
        Reach::Snat { addr, port } => (CT_F_SNAT, port, addr, port),
    };
    // The keys and values are built in a per-CPU scratch slot, not on the
    // program's 512-byte stack.
    let scratch = CT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a valid map value this run uses alone: the program holds its
    // CPU (softirq or BH-disabled context) and nothing here yields.
    let s = unsafe { &mut *scratch };
    s.value = CtValue {
        nat_addr: flow.dst,
        nat_port: flow.dport,
        state,
        flags,
        frontend_id: fe.frontend_id,
        frontend_generation: fe.generation,
        backend_id,
        backend_generation: backend.generation,
        snat_port,
        _reserved: 0,
        last_seen_ns: now,
    };
    s.key = CtKey {
        src: backend.addr,
        dst: reply_dst,
        sport: backend.port,
        dport: reply_dport,
        direction: CT_REPLY,
        ..request_key
    };
    // Reply entry first: a request entry without its reply would translate
    // requests whose answers then go back untranslated.
    CONNTRACK.insert(&s.key, &s.value, 0).ok()?;
    s.value.nat_addr = backend.addr;
    s.value.nat_port = backend.port;
    if CONNTRACK.insert(&request_key, &s.value, 0).is_err() {
        let _ = CONNTRACK.remove(&s.key);
        return None;
    }
    Some(s.value)
}
