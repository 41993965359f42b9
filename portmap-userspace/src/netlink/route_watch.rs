//! What may change the answer of [`super::route_to`]: routes added or
//! removed, addresses, policy rules, and interfaces that go down or away
//! (the kernel drops the IPv4 routes through them without a word). Read
//! from a socket subscribed to those groups, so that answers can be kept
//! between syncs and only the ones a change touches asked again.

use std::{io, net::IpAddr, os::fd::OwnedFd};

use super::{RTM_DELLINK, RTM_NEWLINK, RTMGRP_LINK, attributes, messages, nl_socket, recv, u32_at};

const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV4_RULE: u32 = 0x80;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// `RTNLGRP_IPV6_RULE` (19) as a group bit.
const RTMGRP_IPV6_RULE: u32 = 1 << 18;
/// The groups of every event that may change a route lookup's answer, bar
/// neighbours: links, addresses, routes and rules of both families.
pub(super) const ROUTING_GROUPS: u32 = RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV6_RULE;

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_DELROUTE: u16 = 25;
pub(super) const RTM_NEWRULE: u16 = 32;
pub(super) const RTM_DELRULE: u16 = 33;
pub(super) const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;

/// One change that may move route answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// A route to `addr/len` was added or removed: answers for addresses in
    /// it may differ.
    Prefix { addr: IpAddr, len: u8 },
    /// Interface `ifindex` went down, changed or away: answers through it
    /// may differ.
    Link(u32),
    /// Anything may have changed (an address, a rule, events lost).
    All,
}

/// A socket subscribed to route, address, rule and link events of this
/// network namespace.
#[derive(Debug)]
pub struct RouteWatch {
    fd: OwnedFd,
}

impl RouteWatch {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            fd: nl_socket(ROUTING_GROUPS)?,
        })
    }

    /// Every change waiting (none when nothing is: the socket does not
    /// block). A read error is [`RouteChange::All`].
    pub fn read_all(&self) -> Vec<RouteChange> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut changes = Vec::new();
        loop {
            match recv(&self.fd, &mut buf) {
                Ok(Some(n)) => changes.extend(parse_changes(&buf[..n])),
                Ok(None) => return changes,
                Err(_) => {
                    // ENOBUFS (events were lost), or worse: forget everything.
                    changes.push(RouteChange::All);
                    return changes;
                }
            }
        }
    }
}

/// The changes in one datagram.
pub fn parse_changes(buf: &[u8]) -> Vec<RouteChange> {
    let mut out = Vec::new();
    for (kind, payload) in messages(buf) {
        let change = match kind {
            RTM_NEWROUTE | RTM_DELROUTE => route_prefix(payload).unwrap_or(RouteChange::All),
            RTM_NEWLINK | RTM_DELLINK => {
                // ifinfomsg: family, pad, type (u16), index (i32), flags, change.
                let (Some(ifindex), Some(change)) = (u32_at(payload, 4), u32_at(payload, 12))
                else {
                    out.push(RouteChange::All);
                    continue;
                };
                // A link registered or moved in (`change` all ones) has no
                // route through it yet; its routes come as route events.
                if kind == RTM_NEWLINK && change == u32::MAX {
                    continue;
                }
                RouteChange::Link(ifindex)
            }
            RTM_NEWADDR | RTM_DELADDR | RTM_NEWRULE | RTM_DELRULE => RouteChange::All,
            _ => continue,
        };
        out.push(change);
    }
    out
}

/// The destination prefix of a route message (no `RTA_DST`: a default
/// route, the whole family).
fn route_prefix(payload: &[u8]) -> Option<RouteChange> {
    let family = i32::from(*payload.first()?);
    let len = *payload.get(1)?;
    let dst = attributes(payload.get(RTMSG_LEN..)?)
        .find(|(t, _)| *t == RTA_DST)
        .map(|(_, v)| v);
    let addr = match (family, dst) {
        (libc::AF_INET, None) => IpAddr::from([0u8; 4]),
        (libc::AF_INET6, None) => IpAddr::from([0u8; 16]),
        (libc::AF_INET, Some(v)) => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
        (libc::AF_INET6, Some(v)) => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
        _ => return None,
    };
    Some(RouteChange::Prefix { addr, len })
}

#[cfg(test)]
mod tests {
    use super::{super::IFINFOMSG_LEN, *};

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (16 + payload.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    #[test]
    fn routes_links_and_addresses_are_told_apart() {
        let mut route = vec![libc::AF_INET as u8, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        route.extend_from_slice(&8u16.to_ne_bytes());
        route.extend_from_slice(&RTA_DST.to_ne_bytes());
        route.extend_from_slice(&[198, 18, 5, 0]);
        let default = vec![libc::AF_INET6 as u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let mut link = vec![0u8; IFINFOMSG_LEN];
        link[4..8].copy_from_slice(&7u32.to_ne_bytes());
        let mut registered = link.clone();
        registered[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        let mut buf = message(RTM_NEWROUTE, &route);
        buf.extend(message(RTM_DELROUTE, &default));
        buf.extend(message(RTM_DELLINK, &link));
        buf.extend(message(RTM_NEWLINK, &registered));
        buf.extend(message(RTM_NEWADDR, &[0; 8]));
        assert_eq!(
            parse_changes(&buf),
            [
                RouteChange::Prefix {
                    addr: "198.18.5.0".parse().unwrap(),
                    len: 24
                },
                RouteChange::Prefix {
                    addr: "::".parse().unwrap(),
                    len: 0
                },
                RouteChange::Link(7),
                RouteChange::All,
            ]
        );
    }
}
