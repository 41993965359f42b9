//! Conntrack, written from its specification: the README's "What the
//! dataplane does" → Conntrack, the flags table of "Flags of `portmap run`"
//! (timeouts), and the comments of `portmap_common::abi` (`CtKey`,
//! `CtValue`, `CT_STATE_*`, `FrontendValue::generation`,
//! `Backend::generation`, `REFRESH_INTERVAL_NS`). Each rule is a table next
//! to the words it comes from:
//!
//! - [`REQUEST`] and [`REPLY`]: the state after a packet, by the state
//!   before and the packet's event;
//! - [`TIMEOUTS`]: how long an idle entry lives, by protocol and state;
//! - [`CHECKS`]: what an entry must pass before a packet uses it, by what
//!   the packet is;
//! - [`touch`]: when an entry is rewritten, and what its twin gets then.
//!
//! A flow has two entries (abi, `CtKey`): the forward one, keyed
//! client → frontend, holding the backend, and the reply one, keyed
//! backend → client, holding the frontend the client used. Both carry the
//! flow's state and last-seen time.

use std::{collections::HashMap, net::IpAddr};

use portmap_common::abi::{
    BACKEND_UNUSED, Backend, CT_REPLY, CT_REQUEST, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
    CT_STATE_NEW, CtKey, CtValue, DatapathConfig, FrontendValue, PROTO_TCP, PROTO_UDP,
    REFRESH_INTERVAL_NS,
};

use super::{
    parse::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    state::{Maps, family, raw, raw_port},
};

/// The state of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No entry: before the flow's first packet.
    NoEntry,
    /// `CT_STATE_NEW`: "Flow that has seen no reply yet: a TCP flow after
    /// its SYN (or after whatever packet opened its entry ...), a UDP flow
    /// before its first reply".
    New,
    /// `CT_STATE_ESTABLISHED`: "Flow that has seen traffic both ways".
    Established,
    /// `CT_STATE_CLOSING`: "TCP flow that has seen a FIN or RST".
    Closing,
}

impl State {
    /// The state an entry holds.
    pub fn of(e: &CtValue) -> State {
        match e.state {
            CT_STATE_NEW => State::New,
            CT_STATE_ESTABLISHED => State::Established,
            CT_STATE_CLOSING => State::Closing,
            s => panic!("conntrack state {s} is none of CT_STATE_*"),
        }
    }

    /// The value an entry holds for this state.
    pub fn abi(self) -> u8 {
        match self {
            State::New => CT_STATE_NEW,
            State::Established => CT_STATE_ESTABLISHED,
            State::Closing => CT_STATE_CLOSING,
            State::NoEntry => panic!("no entry holds the state of having no entry"),
        }
    }
}

/// Which way a packet goes, and which entry of its flow it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → frontend (XDP): the forward entry.
    Request,
    /// Backend → client (tc): the reply entry.
    Reply,
}

impl Dir {
    pub fn abi(self) -> u8 {
        match self {
            Dir::Request => CT_REQUEST,
            Dir::Reply => CT_REPLY,
        }
    }

    pub fn of(key: &CtKey) -> Dir {
        if key.direction == CT_REQUEST {
            Dir::Request
        } else {
            Dir::Reply
        }
    }
}

/// What a packet is, as far as its flow's state goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// TCP, SYN without ACK: the opening of a connection (a SYN-ACK answers
    /// one, and is "other").
    Syn,
    /// TCP, FIN set.
    Fin,
    /// TCP, RST set.
    Rst,
    /// TCP, none of the above.
    Other,
    /// Any UDP packet.
    Udp,
}

/// A packet's events, in the order the tables take them: a TCP packet is a
/// SYN, then a FIN, then a RST, as many as its flags say, or else "other";
/// a UDP packet is "UDP". (A SYN-FIN is both: a SYN that opens a flow which
/// has seen a FIN.)
pub fn events(flow: &Flow) -> Vec<Event> {
    if flow.proto == PROTO_UDP {
        return vec![Event::Udp];
    }
    let f = flow.tcp_flags;
    let mut events = Vec::new();
    if f & (TCP_SYN | TCP_ACK) == TCP_SYN {
        events.push(Event::Syn);
    }
    if f & TCP_FIN != 0 {
        events.push(Event::Fin);
    }
    if f & TCP_RST != 0 {
        events.push(Event::Rst);
    }
    if events.is_empty() {
        events.push(Event::Other);
    }
    events
}

/// What an event makes of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The flow is in this state afterwards.
    To(State),
    /// The entry is not used: the packet starts a new flow, as from
    /// [`State::NoEntry`].
    NewFlow,
    /// The packet is no flow's: a reply never creates one.
    NoFlow,
}

const NEW: Next = Next::To(State::New);
const EST: Next = Next::To(State::Established);
const CLO: Next = Next::To(State::Closing);
const RESTART: Next = Next::NewFlow;
const NONE: Next = Next::NoFlow;

/// A client's packet (forward entry). Rows: the state before, in the order
/// of [`State`]; columns: the event, in the order of [`Event`].
///
/// - A new flow is `New` ("Flow that has seen no reply yet"), whatever
///   opened it (but see the next rule: a FIN or RST makes it `Closing`).
/// - A FIN or RST makes any flow `Closing` ("closing ones (FIN/RST seen)"),
///   and nothing makes a closing flow anything else.
/// - "A SYN reusing the ports of a closed connection starts a new flow": a
///   client's SYN on a `Closing` flow.
/// - UDP flows are never `Closing` (no FIN, no RST); that cell only keeps
///   the table whole.
#[rustfmt::skip]
pub const REQUEST: [[Next; 5]; 4] = [
    //                 SYN      FIN  RST  other UDP
    /* no entry    */ [NEW,     CLO, CLO, NEW,  NEW],
    /* new         */ [NEW,     CLO, CLO, NEW,  NEW],
    /* established */ [EST,     CLO, CLO, EST,  EST],
    /* closing     */ [RESTART, CLO, CLO, CLO,  CLO],
];

/// A backend's reply (reply entry), laid out as [`REQUEST`].
///
/// - A reply makes a `New` flow `Established` ("Flow that has seen traffic
///   both ways").
/// - A FIN or RST makes any flow `Closing`, as for requests.
/// - Only a client's SYN starts a new flow; a reply without an entry passes
///   untranslated (only XDP creates flows).
#[rustfmt::skip]
pub const REPLY: [[Next; 5]; 4] = [
    //                 SYN   FIN   RST   other UDP
    /* no entry    */ [NONE, NONE, NONE, NONE, NONE],
    /* new         */ [EST,  CLO,  CLO,  EST,  EST],
    /* established */ [EST,  CLO,  CLO,  EST,  EST],
    /* closing     */ [CLO,  CLO,  CLO,  CLO,  CLO],
];

/// What a packet going `dir` with `events` makes of a flow in `state`: its
/// events taken one after the other.
pub fn next(state: State, dir: Dir, events: &[Event]) -> Next {
    let table = match dir {
        Dir::Request => &REQUEST,
        Dir::Reply => &REPLY,
    };
    let mut s = state;
    for e in events {
        match table[s as usize][*e as usize] {
            Next::To(t) => s = t,
            other => return other,
        }
    }
    Next::To(s)
}

/// A duration `DatapathConfig` holds.
pub type ConfigField = fn(&DatapathConfig) -> u64;

/// How long an entry lives idle, by protocol and state, as `DatapathConfig`
/// holds it: "Established TCP flows live 6 h idle, closing ones (FIN/RST
/// seen) 10 s, UDP 60 s"; `--tcp-syn-timeout`: "idle timeout of a TCP flow
/// before its first reply". An entry idle for exactly its timeout still
/// lives.
pub const TIMEOUTS: [(u8, State, ConfigField); 6] = [
    (PROTO_TCP, State::New, |c| c.tcp_new_timeout_ns),
    (PROTO_TCP, State::Established, |c| {
        c.tcp_established_timeout_ns
    }),
    (PROTO_TCP, State::Closing, |c| c.tcp_closing_timeout_ns),
    (PROTO_UDP, State::New, |c| c.udp_timeout_ns),
    (PROTO_UDP, State::Established, |c| c.udp_timeout_ns),
    (PROTO_UDP, State::Closing, |c| c.udp_timeout_ns),
];

fn timeout(config: &DatapathConfig, proto: u8, state: State) -> u64 {
    let (.., of) = TIMEOUTS
        .iter()
        .find(|(p, s, _)| *p == proto && *s == state)
        .expect("a timeout for every protocol and state an entry can have");
    of(config)
}

/// What uses an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A client's packet (XDP), translated to the entry's backend.
    Request,
    /// A backend's reply (tc), translated back to the frontend.
    Reply,
    /// An ICMP error about the flow, either way.
    IcmpError,
}

/// A condition an entry must meet to be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not idle beyond its timeout ([`TIMEOUTS`]): past it, the ports may
    /// belong to a flow portmap never translated.
    Alive,
    /// The packet does not start a new flow ([`REQUEST`]: a SYN on a
    /// closing flow).
    NotRestarted,
    /// `FRONTEND_GEN[frontend_id]` is still the entry's generation: the
    /// frontend has not been removed or given to another ("conntrack
    /// entries carrying an older value are stale").
    FrontendCurrent,
    /// `BACKENDS[backend_id]` is in use and of the entry's generation.
    BackendCurrent,
}

/// What each use checks, in order; the first failure says why the entry
/// is not used. "Entries check the generation of their frontend and
/// backend at every use, so a removed backend's flows move at once (its
/// answers already on their way still go back from the frontend)": a
/// request whose entry fails starts a new flow (a removed backend's flow
/// gets another backend), a reply or an ICMP error whose entry fails
/// passes untranslated, and a reply does not check the backend.
pub const CHECKS: [(Use, &[Check]); 3] = [
    (
        Use::Request,
        &[
            Check::Alive,
            Check::NotRestarted,
            Check::FrontendCurrent,
            Check::BackendCurrent,
        ],
    ),
    (Use::Reply, &[Check::Alive, Check::FrontendCurrent]),
    (
        Use::IcmpError,
        &[Check::Alive, Check::FrontendCurrent, Check::BackendCurrent],
    ),
];

impl Check {
    fn passes(self, maps: &Maps, e: &CtValue, proto: u8, events: &[Event], now: u64) -> bool {
        match self {
            Check::Alive => {
                now.saturating_sub(e.last_seen_ns) <= timeout(&maps.config, proto, State::of(e))
            }
            Check::NotRestarted => next(State::of(e), Dir::Request, events) != Next::NewFlow,
            Check::FrontendCurrent => maps
                .frontend_gen
                .get(&e.frontend_id)
                .is_some_and(|g| *g == e.frontend_generation),
            Check::BackendCurrent => {
                let b = maps.backend(e.backend_id);
                b.state != BACKEND_UNUSED && b.generation == e.backend_generation
            }
        }
    }

    /// Why an entry that fails this check is not used, for reports.
    pub fn failure(self) -> &'static str {
        match self {
            Check::Alive => "entry expired",
            Check::NotRestarted => "SYN on a closing flow",
            Check::FrontendCurrent => "entry of a frontend that is gone",
            Check::BackendCurrent => "entry of a backend that is gone",
        }
    }
}

/// Whether a packet of protocol `proto` with `events` may use the entry `e`
/// as `usage`; else the check it fails.
pub fn check(
    maps: &Maps,
    e: &CtValue,
    usage: Use,
    proto: u8,
    events: &[Event],
    now: u64,
) -> Result<(), Check> {
    let (_, checks) = CHECKS
        .iter()
        .find(|(u, _)| *u == usage)
        .expect("checks for every use");
    match checks
        .iter()
        .find(|c| !c.passes(maps, e, proto, events, now))
    {
        Some(c) => Err(*c),
        None => Ok(()),
    }
}

/// The key of an entry: a flow as seen on the wire, going `dir`.
pub fn key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, dir: Dir) -> CtKey {
    CtKey {
        src: raw(src),
        dst: raw(dst),
        sport: raw_port(sport),
        dport: raw_port(dport),
        proto,
        family: family(src),
        direction: dir.abi(),
        _pad: 0,
    }
}

/// The key `flow`'s packet hits going `dir`.
pub fn key_of(flow: &Flow, dir: Dir) -> CtKey {
    key(flow.src, flow.dst, flow.sport, flow.dport, flow.proto, dir)
}

/// The key of the other half of the flow whose entry is `key` → `e`: the
/// one the flow's other direction hits (abi, `CtKey`). The forward entry
/// (client → frontend, holding the backend) pairs with backend → client;
/// the reply entry (backend → client, holding the frontend) with
/// client → frontend.
pub fn twin_key(key: &CtKey, e: &CtValue) -> CtKey {
    match Dir::of(key) {
        Dir::Request => CtKey {
            src: e.nat_addr,
            dst: key.src,
            sport: e.nat_port,
            dport: key.sport,
            direction: CT_REPLY,
            ..*key
        },
        Dir::Reply => CtKey {
            src: key.dst,
            dst: e.nat_addr,
            sport: key.dport,
            dport: e.nat_port,
            direction: CT_REQUEST,
            ..*key
        },
    }
}

/// The other half of the flow, made from `key` → `e`: the same flow,
/// translating towards the other end of `key`. The forward entry's twin
/// translates back to the frontend the client sent to; the reply entry's
/// twin on to the backend the reply came from.
fn twin_value(key: &CtKey, e: &CtValue) -> CtValue {
    let (nat_addr, nat_port) = match Dir::of(key) {
        Dir::Request => (key.dst, key.dport),
        Dir::Reply => (key.src, key.sport),
    };
    CtValue {
        nat_addr,
        nat_port,
        ..*e
    }
}

/// A packet with `events` used the entry at `key`. The entry takes the
/// state the tables give. It is rewritten only when that changes its state
/// or its last write is [`REFRESH_INTERVAL_NS`] old ("refreshed at most
/// once a second per entry"); then its twin takes the same state and time
/// (both entries carry the flow's state and last-seen time), or, if the LRU
/// evicted it, is recreated ("whenever an entry is rewritten (a state
/// change, or at most once a second) it checks the other half and
/// recreates it if it is gone").
///
/// The twin is whatever entry sits at [`twin_key`], the key the flow's
/// other direction hits, even when it holds another flow: two flows of one
/// client socket to two frontends of one backend share their reply entry
/// (README, "Not yet": "the later one takes the replies"), and a packet of
/// either refreshes it.
pub fn touch(entries: &mut HashMap<CtKey, CtValue>, key: &CtKey, events: &[Event], now: u64) {
    let Some(e) = entries.get_mut(key) else {
        return;
    };
    let Next::To(state) = next(State::of(e), Dir::of(key), events) else {
        panic!("a packet used an entry it may not use");
    };
    if state.abi() == e.state && now.saturating_sub(e.last_seen_ns) < REFRESH_INTERVAL_NS {
        return;
    }
    e.state = state.abi();
    e.last_seen_ns = now;
    let e = *e;
    let twin = twin_key(key, &e);
    match entries.get_mut(&twin) {
        Some(t) => {
            t.state = e.state;
            t.last_seen_ns = now;
        }
        None => {
            entries.insert(twin, twin_value(key, &e));
        }
    }
}

/// A new flow: `flow`'s packet with `events` from frontend `fe` to
/// `backend`. Both entries are written, in the state the tables give from
/// [`State::NoEntry`], seen `now`. Returns the forward entry.
pub fn create(
    entries: &mut HashMap<CtKey, CtValue>,
    flow: &Flow,
    events: &[Event],
    fe: &FrontendValue,
    (backend_id, backend): (u32, &Backend),
    now: u64,
) -> CtValue {
    let Next::To(state) = next(State::NoEntry, Dir::Request, events) else {
        panic!("a client's packet always opens a flow");
    };
    let key = key_of(flow, Dir::Request);
    let forward = CtValue {
        nat_addr: backend.addr,
        nat_port: backend.port,
        state: state.abi(),
        flags: 0,
        frontend_id: fe.frontend_id,
        frontend_generation: fe.generation,
        backend_id,
        backend_generation: backend.generation,
        snat_port: 0,
        _reserved: 0,
        last_seen_ns: now,
    };
    entries.insert(twin_key(&key, &forward), twin_value(&key, &forward));
    entries.insert(key, forward);
    forward
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const STATES: [State; 3] = [State::New, State::Established, State::Closing];
    const EVENTS: [Event; 5] = [Event::Syn, Event::Fin, Event::Rst, Event::Other, Event::Udp];

    fn tcp(flags: u8) -> Flow {
        Flow {
            v6: false,
            proto: PROTO_TCP,
            tcp_flags: flags,
            l3: 14,
            l4: 34,
            ip_end: 54,
            src: Ipv4Addr::new(198, 18, 0, 2).into(),
            dst: Ipv4Addr::new(198, 18, 0, 1).into(),
            sport: 40000,
            dport: 80,
        }
    }

    #[test]
    fn a_packet_is_its_flags_events() {
        let of = |flags| events(&tcp(flags));
        assert_eq!(of(TCP_SYN), [Event::Syn]);
        assert_eq!(of(TCP_SYN | TCP_ACK), [Event::Other]);
        assert_eq!(of(TCP_ACK), [Event::Other]);
        assert_eq!(of(0), [Event::Other]);
        assert_eq!(of(TCP_FIN | TCP_ACK), [Event::Fin]);
        assert_eq!(of(TCP_SYN | TCP_FIN), [Event::Syn, Event::Fin]);
        assert_eq!(of(0xff), [Event::Fin, Event::Rst]);
        let udp = Flow {
            proto: PROTO_UDP,
            tcp_flags: 0,
            ..tcp(0)
        };
        assert_eq!(events(&udp), [Event::Udp]);
    }

    #[test]
    fn a_fin_or_rst_either_way_closes_any_flow() {
        for s in STATES {
            for dir in [Dir::Request, Dir::Reply] {
                for e in [Event::Fin, Event::Rst] {
                    assert_eq!(next(s, dir, &[e]), CLO, "{s:?} {dir:?} {e:?}");
                }
            }
        }
        assert_eq!(next(State::NoEntry, Dir::Request, &[Event::Rst]), CLO);
    }

    #[test]
    fn a_reply_and_only_a_reply_establishes_a_flow() {
        for e in [Event::Syn, Event::Other, Event::Udp] {
            assert_eq!(next(State::New, Dir::Reply, &[e]), EST, "{e:?}");
            assert_eq!(next(State::New, Dir::Request, &[e]), NEW, "{e:?}");
            assert_eq!(next(State::NoEntry, Dir::Request, &[e]), NEW, "{e:?}");
        }
    }

    #[test]
    fn a_closing_flow_stays_closing_until_a_clients_syn() {
        for dir in [Dir::Request, Dir::Reply] {
            for e in EVENTS {
                let expected = if (dir, e) == (Dir::Request, Event::Syn) {
                    RESTART
                } else {
                    CLO
                };
                assert_eq!(next(State::Closing, dir, &[e]), expected, "{dir:?} {e:?}");
            }
        }
        // A SYN-FIN reuses the ports, and its new flow has seen a FIN.
        let syn_fin = [Event::Syn, Event::Fin];
        assert_eq!(next(State::Closing, Dir::Request, &syn_fin), RESTART);
        assert_eq!(next(State::NoEntry, Dir::Request, &syn_fin), CLO);
    }

    #[test]
    fn replies_never_create_a_flow() {
        for e in EVENTS {
            assert_eq!(next(State::NoEntry, Dir::Reply, &[e]), NONE, "{e:?}");
        }
    }

    #[test]
    fn every_state_of_both_protocols_has_one_timeout_and_the_defaults_are_the_readmes() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            for s in STATES {
                let n = TIMEOUTS
                    .iter()
                    .filter(|(p, t, _)| *p == proto && *t == s)
                    .count();
                assert_eq!(n, 1, "proto {proto} {s:?}");
            }
        }
        let c = DatapathConfig::default();
        let s = 1_000_000_000;
        assert_eq!(timeout(&c, PROTO_TCP, State::Established), 6 * 3600 * s);
        assert_eq!(timeout(&c, PROTO_TCP, State::Closing), 10 * s);
        assert_eq!(timeout(&c, PROTO_TCP, State::New), 60 * s);
        assert_eq!(timeout(&c, PROTO_UDP, State::Established), 60 * s);
    }

    #[test]
    fn every_use_is_checked() {
        for u in [Use::Request, Use::Reply, Use::IcmpError] {
            assert_eq!(CHECKS.iter().filter(|(v, _)| *v == u).count(), 1);
        }
    }
}
