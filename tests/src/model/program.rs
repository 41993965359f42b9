//! What the two programs do to one packet, given the maps, at time `now`
//! (nanoseconds of the clock the dataplane reads).
//!
//! Ingress (XDP): a packet of a known flow whose entry may be used is
//! translated to the flow's backend; any other packet of a flow may start
//! one: it finds its frontend and passes the source ranges ([`lb`]), gets a
//! backend ([`lb::pick_backend`]) and two conntrack entries
//! ([`conntrack::create`]). A frontend without a backend passes, rejects
//! (ICMP port unreachable, sent back by `XDP_REDIRECT`) or drops new flows,
//! as its flags say. A request whose checksum may be offloaded is left to tc
//! ingress ([`offload`]).
//!
//! Egress (tc): a reply of a known flow is translated back to the exact
//! frontend address and port the client used.
//!
//! ICMP errors about translated flows go through [`icmp`] both ways.

use std::net::IpAddr;

use portmap_common::abi::{
    CtValue, FE_AFFINITY_CLIENT_IP, FE_DROP_NO_BACKENDS, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES,
};

use super::{
    conntrack::{self, Dir, Use},
    icmp, lb,
    nat::{self, Side},
    offload,
    parse::{self, Flow, NotAFlow},
    state::{Flows, Maps, family, ip, port},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    Pass,
    Drop,
    /// Sent back out of the interface it came in on (the ICMP port
    /// unreachable), by a redirect to that interface.
    Redirect,
}

impl XdpVerdict {
    /// The XDP action number.
    pub fn action(self) -> u32 {
        match self {
            XdpVerdict::Drop => 1,
            XdpVerdict::Pass => 2,
            XdpVerdict::Redirect => 4,
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
    /// the handoff metadata followed by the untouched frame, and this is the
    /// destination tc ingress writes (it finds it in conntrack).
    pub deferred: Option<(IpAddr, u16)>,
}

impl Outcome {
    fn untouched(frame: &[u8], why: impl Into<String>) -> Self {
        Outcome {
            verdict: XdpVerdict::Pass,
            bytes: frame.to_vec(),
            translated: false,
            why: why.into(),
            affinity_of: None,
            deferred: None,
        }
    }

    fn drop(frame: &[u8], why: impl Into<String>) -> Self {
        Outcome {
            verdict: XdpVerdict::Drop,
            ..Outcome::untouched(frame, why)
        }
    }

    fn translated(bytes: Vec<u8>, why: String) -> Self {
        Outcome {
            verdict: XdpVerdict::Pass,
            bytes,
            translated: true,
            why,
            affinity_of: None,
            deferred: None,
        }
    }

    /// An ICMP error about a flow, translated or not.
    fn icmp(frame: &[u8], translated: Result<(Vec<u8>, String), String>) -> Self {
        match translated {
            Ok((bytes, why)) => Outcome::translated(bytes, why),
            Err(why) => Outcome::untouched(frame, why),
        }
    }
}

/// A request translated to the backend of its entry `e`, or left to tc
/// ingress with the translation in front of it.
fn translate_to(frame: &[u8], flow: &Flow, e: &CtValue, why: String) -> Outcome {
    let to = ip(&e.nat_addr, family(flow.src));
    if offload::deferred(frame, flow) {
        let mut bytes = offload::handoff();
        bytes.extend_from_slice(frame);
        return Outcome {
            deferred: Some((to, port(e.nat_port))),
            ..Outcome::translated(
                bytes,
                format!("{why}; checksum field holds the pseudo-header sum: left to tc ingress"),
            )
        };
    }
    Outcome::translated(
        nat::rewrite(frame, flow, Side::Dst, to, port(e.nat_port)),
        why,
    )
}

/// A new flow to a frontend without a usable backend, as its flags say.
fn refused(frame: &[u8], flow: &Flow, flags: u32, history: String) -> Outcome {
    if flags & FE_REJECT_NO_BACKENDS != 0 {
        if !icmp::may_get_errors(flow.src) {
            return Outcome::drop(
                frame,
                format!("{history}reject, but no ICMP to this source"),
            );
        }
        return Outcome {
            verdict: XdpVerdict::Redirect,
            bytes: icmp::port_unreachable(frame, flow),
            ..Outcome::untouched(frame, format!("{history}port unreachable"))
        };
    }
    if flags & FE_DROP_NO_BACKENDS != 0 {
        return Outcome::drop(frame, format!("{history}drop"));
    }
    Outcome::untouched(frame, format!("{history}pass"))
}

/// The XDP ingress program on one frame.
pub fn xdp(maps: &Maps, flows: &mut Flows, frame: &[u8], now: u64) -> Outcome {
    let flow = match parse::parse(frame) {
        Ok(flow) => flow,
        Err(NotAFlow::Icmp(at)) => {
            let out = icmp::translate(maps, flows, frame, &at, Dir::Request, now);
            return Outcome::icmp(frame, out);
        }
        Err(e) => return Outcome::untouched(frame, format!("not a flow: {e:?}")),
    };
    let events = conntrack::events(&flow);
    let key = conntrack::key_of(&flow, Dir::Request);
    let mut history = String::new();
    if let Some(e) = flows.conntrack.get(&key).copied() {
        match conntrack::check(maps, &e, Use::Request, flow.proto, &events, now) {
            Ok(()) => {
                conntrack::touch(&mut flows.conntrack, &key, &events, now);
                let why = format!("known flow, to backend {}", e.backend_id);
                return translate_to(frame, &flow, &e, why);
            }
            Err(c) => history = format!("conntrack {}, a new flow; ", c.failure()),
        }
    }
    let Some(fe) = lb::find_frontend(maps, &flow) else {
        return Outcome::untouched(frame, format!("{history}no frontend"));
    };
    if fe.flags & FE_SOURCE_RANGES != 0 && !lb::source_allowed(maps, &fe, flow.src) {
        return Outcome::drop(frame, format!("{history}source outside the allowed ranges"));
    }
    let affinity_of =
        (fe.flags & FE_AFFINITY_CLIENT_IP != 0 && fe.table_size > 0).then_some(fe.service_id);
    let Some((id, b, how)) = lb::pick_backend(maps, flows, &fe, &flow, now) else {
        let history = format!("{history}frontend {} has no backend: ", fe.frontend_id);
        return Outcome {
            affinity_of,
            ..refused(frame, &flow, fe.flags, history)
        };
    };
    let forward = conntrack::create(&mut flows.conntrack, &flow, &events, &fe, (id, &b), now);
    let why = format!(
        "{history}new flow of frontend {} to backend {id} ({how})",
        fe.frontend_id
    );
    Outcome {
        affinity_of,
        ..translate_to(frame, &flow, &forward, why)
    }
}

/// The tc egress program on one frame (its verdict is always "next").
pub fn tc(maps: &Maps, flows: &mut Flows, frame: &[u8], now: u64) -> Outcome {
    let flow = match parse::parse(frame) {
        Ok(flow) => flow,
        Err(NotAFlow::Icmp(at)) => {
            let out = icmp::translate(maps, flows, frame, &at, Dir::Reply, now);
            return Outcome::icmp(frame, out);
        }
        Err(e) => return Outcome::untouched(frame, format!("not a flow: {e:?}")),
    };
    let events = conntrack::events(&flow);
    let key = conntrack::key_of(&flow, Dir::Reply);
    let Some(e) = flows.conntrack.get(&key).copied() else {
        return Outcome::untouched(frame, "no reply entry");
    };
    if let Err(c) = conntrack::check(maps, &e, Use::Reply, flow.proto, &events, now) {
        return Outcome::untouched(frame, format!("reply {}", c.failure()));
    }
    conntrack::touch(&mut flows.conntrack, &key, &events, now);
    let to = ip(&e.nat_addr, family(flow.src));
    Outcome::translated(
        nat::rewrite(frame, &flow, Side::Src, to, port(e.nat_port)),
        format!("reply of frontend {}", e.frontend_id),
    )
}
