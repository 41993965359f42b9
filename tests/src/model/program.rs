//! What the two programs do to one packet, given the maps, at time `now`
//! (nanoseconds of the clock the dataplane reads).
//!
//! Ingress (XDP): a packet of a known flow is translated to the flow's
//! backend; a new flow finds its frontend (exact address first, then the
//! all-addresses frontend if the destination is a node address; never a
//! loopback destination nor a host-only frontend), passes the source ranges,
//! gets a backend (session affinity, else Maglev), and gets two conntrack
//! entries. A frontend without a backend passes, rejects (ICMP port
//! unreachable, `XDP_TX`) or drops new flows, as its flags say.
//!
//! Egress (tc): a reply of a known flow is translated back to the exact
//! frontend address and port the client used.
//!
//! ICMP errors about translated flows (what conntrack's RELATED does): one
//! to a client quoting a translated request (egress) gets the frontend back
//! in its quote; one from a client quoting a reply (ingress) goes on to the
//! backend, quoting the reply as the backend sent it.
//!
//! Conntrack: entries expire after the idle timeout of their protocol and
//! state; FIN or RST makes a flow closing, a reply makes a new flow
//! established; a SYN (without ACK) on a closing flow starts a new flow;
//! entries whose frontend or backend generation is no longer current are
//! not used (a stale backend on the forward path means "pick another").

use std::net::IpAddr;

use portmap_common::{
    abi::{
        AffinityKey, AffinityValue, BACKEND_ACTIVE, BACKEND_UNUSED, Backend, CT_FORWARD, CT_REPLY,
        CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_NEW, CtKey, CtValue,
        FE_AFFINITY_CLIENT_IP, FE_DROP_NO_BACKENDS, FE_HOST_ONLY, FE_REJECT_NO_BACKENDS,
        FE_SOURCE_RANGES, FrontendKey, FrontendValue, RawAddr,
    },
    hash::flow_hash,
};

use super::{
    offload,
    state::{Flows, Maps, family, ip, port, raw, raw_port},
    wire::{
        self, Flow, IcmpAt, NotAFlow, PROTO_TCP, PROTO_UDP, Quote, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN, incremental, may_get_icmp_errors, port_unreachable,
    },
};

/// Entries are rewritten at most this often while their state is unchanged
/// (the README: "refreshed at most once a second per entry").
pub const REFRESH_INTERVAL_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    Pass,
    Drop,
    /// Sent back out of the interface (the ICMP port unreachable).
    Tx,
}

impl XdpVerdict {
    /// The XDP action number.
    pub fn action(self) -> u32 {
        match self {
            XdpVerdict::Drop => 1,
            XdpVerdict::Pass => 2,
            XdpVerdict::Tx => 3,
        }
    }
}

/// What a program does with one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: XdpVerdict,
    pub bytes: Vec<u8>,
    /// Whether the bytes are a translation of the input (not the input, not
    /// an ICMP error).
    pub translated: bool,
    /// Why, in words, for reports.
    pub why: String,
    /// The service whose session affinity the packet consulted (and may
    /// have changed).
    pub affinity_of: Option<u32>,
    /// A translation XDP left to tc ingress (see `offload`): `bytes` are
    /// the handoff metadata followed by the untouched frame.
    pub deferred: bool,
}

impl Outcome {
    fn untouched(frame: &[u8], why: impl Into<String>) -> Self {
        Outcome {
            verdict: XdpVerdict::Pass,
            bytes: frame.to_vec(),
            translated: false,
            why: why.into(),
            affinity_of: None,
            deferred: false,
        }
    }

    fn drop(frame: &[u8], why: impl Into<String>) -> Self {
        Outcome {
            verdict: XdpVerdict::Drop,
            ..Outcome::untouched(frame, why)
        }
    }
}

fn key_of(flow: &Flow, direction: u8) -> CtKey {
    CtKey {
        src: raw(flow.src),
        dst: raw(flow.dst),
        sport: raw_port(flow.sport),
        dport: raw_port(flow.dport),
        proto: flow.proto,
        family: family(flow.src),
        direction,
        _pad: 0,
    }
}

/// The other entry of the flow `key`/`value` belong to.
fn twin_key(key: &CtKey, value: &CtValue) -> CtKey {
    if key.direction == CT_FORWARD {
        CtKey {
            src: value.nat_addr,
            dst: key.src,
            sport: value.nat_port,
            dport: key.sport,
            direction: CT_REPLY,
            ..*key
        }
    } else {
        CtKey {
            src: key.dst,
            dst: value.nat_addr,
            sport: key.dport,
            dport: value.nat_port,
            direction: CT_FORWARD,
            ..*key
        }
    }
}

fn timeout(maps: &Maps, proto: u8, state: u8) -> u64 {
    let c = &maps.config;
    if proto != PROTO_TCP {
        return c.udp_timeout_ns;
    }
    match state {
        CT_STATE_ESTABLISHED => c.tcp_established_timeout_ns,
        CT_STATE_CLOSING => c.tcp_closing_timeout_ns,
        _ => c.tcp_new_timeout_ns,
    }
}

fn expired(maps: &Maps, e: &CtValue, proto: u8, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) > timeout(maps, proto, e.state)
}

fn frontend_current(maps: &Maps, e: &CtValue) -> bool {
    maps.frontend_gen
        .get(&e.frontend_id)
        .is_some_and(|g| *g == e.frontend_generation)
}

fn backend(maps: &Maps, id: u32) -> Backend {
    maps.backends.get(&id).copied().unwrap_or_default()
}

fn backend_current(maps: &Maps, e: &CtValue) -> bool {
    let b = backend(maps, e.backend_id);
    b.state != BACKEND_UNUSED && b.generation == e.backend_generation
}

/// The state after a packet of `flow` (`from_reply`: sent by the backend).
fn next_state(state: u8, flow: &Flow, from_reply: bool) -> u8 {
    if flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_STATE_CLOSING
    } else if state == CT_STATE_NEW && from_reply {
        CT_STATE_ESTABLISHED
    } else {
        state
    }
}

/// A packet of the flow was seen in the entry at `key`: both entries of the
/// flow advance their state and time (rewritten only when the state changes
/// or the last write is [`REFRESH_INTERVAL_NS`] old), and at such a write a
/// missing twin (an LRU eviction) is recreated from the entry.
fn touch(flows: &mut Flows, key: &CtKey, flow: &Flow, now: u64) {
    let Some(e) = flows.conntrack.get_mut(key) else {
        return;
    };
    let state = next_state(e.state, flow, key.direction == CT_REPLY);
    if state == e.state && now.saturating_sub(e.last_seen_ns) < REFRESH_INTERVAL_NS {
        return;
    }
    e.state = state;
    e.last_seen_ns = now;
    let e = *e;
    let twin = twin_key(key, &e);
    if let Some(t) = flows.conntrack.get_mut(&twin) {
        t.state = state;
        t.last_seen_ns = now;
        return;
    }
    let (addr, port) = if key.direction == CT_FORWARD {
        (flow.dst, flow.dport)
    } else {
        (flow.src, flow.sport)
    };
    let restored = CtValue {
        nat_addr: raw(addr),
        nat_port: raw_port(port),
        ..e
    };
    flows.conntrack.insert(twin, restored);
}

fn is_loopback(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => a == std::net::Ipv6Addr::LOCALHOST,
    }
}

fn find_frontend(maps: &Maps, flow: &Flow) -> Option<FrontendValue> {
    if is_loopback(flow.dst) {
        return None;
    }
    let mut key = FrontendKey {
        addr: raw(flow.dst),
        port: raw_port(flow.dport),
        proto: flow.proto,
        family: family(flow.dst),
    };
    let fe = match maps.frontends.get(&key) {
        Some(fe) => *fe,
        None if maps.node_addrs.contains(&flow.dst) => {
            key.addr = RawAddr::UNSPECIFIED;
            *maps.frontends.get(&key)?
        }
        None => return None,
    };
    (fe.flags & FE_HOST_ONLY == 0).then_some(fe)
}

fn prefix_contains(net: IpAddr, len: u8, a: IpAddr) -> bool {
    match (net, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fn source_allowed(maps: &Maps, fe: &FrontendValue, src: IpAddr) -> bool {
    maps.source_ranges
        .get(&fe.service_id)
        .is_some_and(|r| r.iter().any(|(n, l)| prefix_contains(*n, *l, src)))
}

fn maglev(maps: &Maps, fe: &FrontendValue, flow: &Flow) -> Option<(u32, Backend)> {
    let hash = flow_hash(
        &raw(flow.src),
        &raw(flow.dst),
        raw_port(flow.sport),
        raw_port(flow.dport),
        flow.proto,
    );
    let table = maps
        .tables
        .get(&fe.table_offset)
        .expect("the model has every table a frontend points at");
    let id = table[(hash % fe.table_size) as usize];
    let b = backend(maps, id);
    (b.state != BACKEND_UNUSED && b.family == family(flow.src)).then_some((id, b))
}

/// The backend of a new flow: the client's previous one under session
/// affinity (while it is ready, current and recent), else Maglev's.
fn pick_backend(
    maps: &Maps,
    flows: &mut Flows,
    fe: &FrontendValue,
    flow: &Flow,
    now: u64,
) -> Option<(u32, Backend, &'static str)> {
    if fe.table_size == 0 {
        return None;
    }
    if fe.flags & FE_AFFINITY_CLIENT_IP == 0 {
        return maglev(maps, fe, flow).map(|(id, b)| (id, b, "Maglev"));
    }
    let key = AffinityKey {
        client: raw(flow.src),
        service_id: fe.service_id,
        family: family(flow.src),
        _pad: [0; 3],
    };
    let limit = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
    if let Some(a) = flows.affinity.get_mut(&key) {
        let b = backend(maps, a.backend_id);
        if now.saturating_sub(a.last_used_ns) <= limit
            && b.generation == a.backend_generation
            && b.state == BACKEND_ACTIVE
            && b.family == family(flow.src)
        {
            a.last_used_ns = now;
            return Some((a.backend_id, b, "session affinity"));
        }
    }
    let (id, b) = maglev(maps, fe, flow)?;
    flows.affinity.insert(
        key,
        AffinityValue {
            backend_id: id,
            backend_generation: b.generation,
            last_used_ns: now,
        },
    );
    Some((id, b, "Maglev, remembered for affinity"))
}

/// The frame with one end of the flow (`dst`: destination, else source)
/// rewritten, checksums updated incrementally: the IPv4 header checksum,
/// and the TCP or UDP checksum (pseudo-header address and port); an IPv4
/// UDP checksum of 0 ("none") stays 0, a UDP result of 0 is sent as 0xffff.
pub fn rewrite(frame: &[u8], flow: &Flow, dst: bool, addr: IpAddr, new_port: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    let (addr_at, alen) = match (flow.v6, dst) {
        (false, false) => (flow.l3 + 12, 4),
        (false, true) => (flow.l3 + 16, 4),
        (true, false) => (flow.l3 + 8, 16),
        (true, true) => (flow.l3 + 24, 16),
    };
    let port_at = flow.l4 + if dst { 2 } else { 0 };
    let new_addr: Vec<u8> = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    assert_eq!(new_addr.len(), alen, "address family of the translation");
    let mut old = out[addr_at..addr_at + alen].to_vec();
    let mut new = new_addr.clone();
    if !flow.v6 {
        let at = flow.l3 + 10;
        let check = u16::from_be_bytes([out[at], out[at + 1]]);
        let check = incremental(check, &old, &new);
        out[at..at + 2].copy_from_slice(&check.to_be_bytes());
    }
    old.extend_from_slice(&out[port_at..port_at + 2]);
    new.extend_from_slice(&new_port.to_be_bytes());
    let check_at = flow.l4 + if flow.proto == PROTO_TCP { 16 } else { 6 };
    let check = u16::from_be_bytes([out[check_at], out[check_at + 1]]);
    let updated = if flow.proto == PROTO_UDP && !flow.v6 && check == 0 {
        0
    } else {
        match incremental(check, &old, &new) {
            0 if flow.proto == PROTO_UDP => 0xffff,
            c => c,
        }
    };
    out[check_at..check_at + 2].copy_from_slice(&updated.to_be_bytes());
    out[addr_at..addr_at + alen].copy_from_slice(&new_addr);
    out[port_at..port_at + 2].copy_from_slice(&new_port.to_be_bytes());
    out
}

fn translate_to(frame: &[u8], flow: &Flow, e: &CtValue, why: String) -> Outcome {
    let to = ip(&e.nat_addr, family(flow.src));
    if offload::deferred(frame, flow) {
        let mut bytes = offload::handoff(to, port(e.nat_port));
        bytes.extend_from_slice(frame);
        return Outcome {
            verdict: XdpVerdict::Pass,
            bytes,
            translated: true,
            why: format!("{why}; checksum field holds the pseudo-header sum: left to tc ingress"),
            affinity_of: None,
            deferred: true,
        };
    }
    Outcome {
        verdict: XdpVerdict::Pass,
        bytes: rewrite(frame, flow, true, to, port(e.nat_port)),
        translated: true,
        why,
        affinity_of: None,
        deferred: false,
    }
}

/// The conntrack entry an ICMP error's quote belongs to: a quoted
/// translated request (egress) is found through its reply entry, a quoted
/// reply (ingress) through its forward entry.
fn quote_key(q: &Quote, direction: u8) -> CtKey {
    CtKey {
        src: raw(q.dst),
        dst: raw(q.src),
        sport: raw_port(q.dport),
        dport: raw_port(q.sport),
        proto: q.proto,
        family: family(q.src),
        direction,
        _pad: 0,
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The ICMP error with one end of its quote (`quote_dst`: the destination,
/// else the source) rewritten to `addr`:`port`, and on ingress its own
/// destination to `outer_dst`. Every checksum over changed bytes is updated
/// incrementally: the quoted IPv4 header's and TCP/UDP checksum (if quoted;
/// same rules as for packets), the outer IPv4 header's, and the ICMP
/// checksum over all changed words (ICMPv6: its pseudo-header too).
fn rewrite_icmp(
    frame: &[u8],
    at: &IcmpAt,
    q: &Quote,
    quote_dst: bool,
    addr: IpAddr,
    new_port: u16,
    outer_dst: Option<IpAddr>,
) -> Vec<u8> {
    let mut out = frame.to_vec();
    let (mut icmp_old, mut icmp_new) = (Vec::new(), Vec::new());
    let word = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    if let Some(to) = outer_dst {
        let (at_dst, n) = if at.v6 {
            (at.l3 + 24, 16)
        } else {
            (at.l3 + 16, 4)
        };
        let old = out[at_dst..at_dst + n].to_vec();
        let new = octets(to);
        if at.v6 {
            icmp_old.extend_from_slice(&old);
            icmp_new.extend_from_slice(&new);
        } else {
            let c = incremental(word(&out, at.l3 + 10), &old, &new);
            out[at.l3 + 10..at.l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        out[at_dst..at_dst + n].copy_from_slice(&new);
    }
    let (addr_at, n) = match (at.v6, quote_dst) {
        (false, false) => (q.l3 + 12, 4),
        (false, true) => (q.l3 + 16, 4),
        (true, false) => (q.l3 + 8, 16),
        (true, true) => (q.l3 + 24, 16),
    };
    let port_at = q.l4 + if quote_dst { 2 } else { 0 };
    let mut old = out[addr_at..addr_at + n].to_vec();
    let mut new = octets(addr);
    if !at.v6 {
        let before = word(&out, q.l3 + 10);
        let after = incremental(before, &old, &new);
        out[q.l3 + 10..q.l3 + 12].copy_from_slice(&after.to_be_bytes());
        icmp_old.extend_from_slice(&before.to_be_bytes());
        icmp_new.extend_from_slice(&after.to_be_bytes());
    }
    old.extend_from_slice(&out[port_at..port_at + 2]);
    new.extend_from_slice(&new_port.to_be_bytes());
    icmp_old.extend_from_slice(&old);
    icmp_new.extend_from_slice(&new);
    if let Some(c) = q.check {
        let before = word(&out, c);
        let after = if q.proto == PROTO_UDP && !at.v6 && before == 0 {
            0
        } else {
            match incremental(before, &old, &new) {
                0 if q.proto == PROTO_UDP => 0xffff,
                x => x,
            }
        };
        out[c..c + 2].copy_from_slice(&after.to_be_bytes());
        icmp_old.extend_from_slice(&before.to_be_bytes());
        icmp_new.extend_from_slice(&after.to_be_bytes());
    }
    out[addr_at..addr_at + n].copy_from_slice(&new[..n]);
    out[port_at..port_at + 2].copy_from_slice(&new_port.to_be_bytes());
    let c = incremental(word(&out, at.l4 + 2), &icmp_old, &icmp_new);
    out[at.l4 + 2..at.l4 + 4].copy_from_slice(&c.to_be_bytes());
    out
}

/// Whether an ICMP error may be translated with the entry `e` of its quote:
/// as for a reply, the entry must not have expired (its ports may since
/// have been reused by an untranslated flow) and its frontend and backend
/// must be current (conntrack.rs: entries are never trusted blindly).
fn icmp_refusal(maps: &Maps, e: &CtValue, q: &Quote, now: u64) -> Option<&'static str> {
    if !frontend_current(maps, e) {
        Some("ICMP error about a flow of a frontend that is gone")
    } else if expired(maps, e, q.proto, now) {
        Some("ICMP error about an expired flow")
    } else if !backend_current(maps, e) {
        Some("ICMP error about a flow of a backend that is gone")
    } else {
        None
    }
}

/// Why the model leaves an ICMP error `frame` (sent through ingress if
/// `ingress`, else egress) untranslated although its quote names a known
/// flow of a current frontend: "expired" or "backend gone". For tests that
/// keep known dataplane bugs out of their cases.
pub fn icmp_refused_for(
    maps: &Maps,
    flows: &Flows,
    frame: &[u8],
    ingress: bool,
    now: u64,
) -> Option<&'static str> {
    let Err(NotAFlow::Icmp(at)) = wire::parse(frame) else {
        return None;
    };
    let q = wire::quote(frame, &at).filter(|q| q.src == at.dst)?;
    let direction = if ingress { CT_FORWARD } else { CT_REPLY };
    let e = flows.conntrack.get(&quote_key(&q, direction))?;
    if !frontend_current(maps, e) {
        return None;
    }
    icmp_refusal(maps, e, &q, now)
}

/// Ingress: a client's ICMP error about a reply it got from a frontend
/// (sent back to that frontend) goes on to the backend, quoting the reply
/// as the backend sent it.
fn icmp_from_client(maps: &Maps, flows: &Flows, frame: &[u8], at: &IcmpAt, now: u64) -> Outcome {
    let Some(q) = wire::quote(frame, at) else {
        return Outcome::untouched(frame, "ICMP, not an error quoting TCP or UDP");
    };
    if q.src != at.dst {
        return Outcome::untouched(frame, "ICMP error not sent to the quoted source");
    }
    let Some(e) = flows.conntrack.get(&quote_key(&q, CT_FORWARD)) else {
        return Outcome::untouched(frame, "ICMP error about no known flow");
    };
    if let Some(why) = icmp_refusal(maps, e, &q, now) {
        return Outcome::untouched(frame, why);
    }
    let backend = ip(&e.nat_addr, family(q.src));
    Outcome {
        verdict: XdpVerdict::Pass,
        bytes: rewrite_icmp(
            frame,
            at,
            &q,
            false,
            backend,
            port(e.nat_port),
            Some(backend),
        ),
        translated: true,
        why: format!("ICMP error about a reply, to backend {}", e.backend_id),
        affinity_of: None,
        deferred: false,
    }
}

/// Egress: an ICMP error to a client about a request it sent quotes the
/// request as translated; the quote is put back to the frontend.
fn icmp_to_client(maps: &Maps, flows: &Flows, frame: &[u8], at: &IcmpAt, now: u64) -> Outcome {
    let Some(q) = wire::quote(frame, at) else {
        return Outcome::untouched(frame, "ICMP, not an error quoting TCP or UDP");
    };
    if q.src != at.dst {
        return Outcome::untouched(frame, "ICMP error not sent to the quoted source");
    }
    let Some(e) = flows.conntrack.get(&quote_key(&q, CT_REPLY)) else {
        return Outcome::untouched(frame, "ICMP error about no known flow");
    };
    if let Some(why) = icmp_refusal(maps, e, &q, now) {
        return Outcome::untouched(frame, why);
    }
    let frontend = ip(&e.nat_addr, family(q.src));
    Outcome {
        verdict: XdpVerdict::Pass,
        bytes: rewrite_icmp(frame, at, &q, true, frontend, port(e.nat_port), None),
        translated: true,
        why: format!("ICMP error about a request, to frontend {}", e.frontend_id),
        affinity_of: None,
        deferred: false,
    }
}

/// The XDP ingress program on one frame.
pub fn xdp(maps: &Maps, flows: &mut Flows, frame: &[u8], now: u64) -> Outcome {
    let flow = match wire::parse(frame) {
        Ok(flow) => flow,
        Err(NotAFlow::Icmp(at)) => return icmp_from_client(maps, flows, frame, &at, now),
        Err(e) => return Outcome::untouched(frame, format!("not a flow: {e:?}")),
    };
    let key = key_of(&flow, CT_FORWARD);
    let mut history = String::new();
    if let Some(e) = flows.conntrack.get(&key).copied() {
        let syn_only = flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if expired(maps, &e, flow.proto, now) {
            history = "conntrack entry expired; ".into();
        } else if flow.proto == PROTO_TCP && e.state == CT_STATE_CLOSING && syn_only {
            history = "SYN on a closing flow; ".into();
        } else if !frontend_current(maps, &e) {
            history = "conntrack entry of a frontend that is gone; ".into();
        } else if !backend_current(maps, &e) {
            history = "conntrack entry of a backend that is gone, reselecting; ".into();
        } else {
            touch(flows, &key, &flow, now);
            return translate_to(
                frame,
                &flow,
                &e,
                format!("known flow, to backend {}", e.backend_id),
            );
        }
    }
    let Some(fe) = find_frontend(maps, &flow) else {
        return Outcome::untouched(frame, format!("{history}no frontend"));
    };
    if fe.flags & FE_SOURCE_RANGES != 0 && !source_allowed(maps, &fe, flow.src) {
        return Outcome::drop(frame, format!("{history}source outside the allowed ranges"));
    }
    let affinity_of =
        (fe.flags & FE_AFFINITY_CLIENT_IP != 0 && fe.table_size > 0).then_some(fe.service_id);
    let picked = pick_backend(maps, flows, &fe, &flow, now);
    let Some((id, b, how)) = picked else {
        let history = format!("{history}frontend {} has no backend: ", fe.frontend_id);
        let outcome = if fe.flags & FE_REJECT_NO_BACKENDS != 0 {
            if may_get_icmp_errors(flow.src) {
                Outcome {
                    verdict: XdpVerdict::Tx,
                    bytes: port_unreachable(frame, &flow),
                    translated: false,
                    why: format!("{history}port unreachable"),
                    affinity_of: None,
                    deferred: false,
                }
            } else {
                Outcome::drop(
                    frame,
                    format!("{history}reject, but no ICMP to this source"),
                )
            }
        } else if fe.flags & FE_DROP_NO_BACKENDS != 0 {
            Outcome::drop(frame, format!("{history}drop"))
        } else {
            Outcome::untouched(frame, format!("{history}pass"))
        };
        return Outcome {
            affinity_of,
            ..outcome
        };
    };
    let state = next_state(CT_STATE_NEW, &flow, false);
    let forward = CtValue {
        nat_addr: b.addr,
        nat_port: b.port,
        state,
        _pad: 0,
        frontend_id: fe.frontend_id,
        frontend_generation: fe.generation,
        backend_id: id,
        backend_generation: b.generation,
        _reserved: 0,
        last_seen_ns: now,
    };
    let reply = CtValue {
        nat_addr: key.dst,
        nat_port: key.dport,
        ..forward
    };
    flows.conntrack.insert(twin_key(&key, &forward), reply);
    flows.conntrack.insert(key, forward);
    Outcome {
        affinity_of,
        ..translate_to(
            frame,
            &flow,
            &forward,
            format!(
                "{history}new flow of frontend {} to backend {id} ({how})",
                fe.frontend_id
            ),
        )
    }
}

/// The tc egress program on one frame (its verdict is always "next").
pub fn tc(maps: &Maps, flows: &mut Flows, frame: &[u8], now: u64) -> Outcome {
    let flow = match wire::parse(frame) {
        Ok(flow) => flow,
        Err(NotAFlow::Icmp(at)) => return icmp_to_client(maps, flows, frame, &at, now),
        Err(e) => return Outcome::untouched(frame, format!("not a flow: {e:?}")),
    };
    let key = key_of(&flow, CT_REPLY);
    let Some(e) = flows.conntrack.get(&key).copied() else {
        return Outcome::untouched(frame, "no reply entry");
    };
    if expired(maps, &e, flow.proto, now) {
        return Outcome::untouched(frame, "reply entry expired");
    }
    if !frontend_current(maps, &e) {
        return Outcome::untouched(frame, "reply entry of a frontend that is gone");
    }
    // A reply from a backend removed since is still translated (conntrack.rs,
    // `reply_allowed`).
    touch(flows, &key, &flow, now);
    let to = ip(&e.nat_addr, family(flow.src));
    Outcome {
        verdict: XdpVerdict::Pass,
        bytes: rewrite(frame, &flow, false, to, port(e.nat_port)),
        translated: true,
        why: format!("reply of frontend {}", e.frontend_id),
        affinity_of: None,
        deferred: false,
    }
}
