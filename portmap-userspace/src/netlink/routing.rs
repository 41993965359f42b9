//! What the dataplane's cached next hops depend on (see `dataplane::hops`):
//! every event that may change a route lookup's answer, and whether the
//! routing answers by destination alone.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use super::{
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attributes, messages, nl_socket, recv,
    route::RTM_GETROUTE,
    route_watch::{
        ROUTING_GROUPS, RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE, RTMSG_LEN,
    },
    send_request, u32_at,
};

const RTMGRP_NEIGH: u32 = 0x4;
const RTM_GETRULE: u16 = 34;
const NLM_F_DUMP: u16 = 0x300;
/// `struct fib_rule_hdr`; attributes follow.
const FIB_RULE_HDR_LEN: usize = 12;
const RTA_MULTIPATH: u16 = 9;
const RTA_NH_ID: u16 = 30;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_SUPPRESS_IFGROUP: u16 = 13;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FRA_PROTOCOL: u16 = 21;
const RT_TABLE_DEFAULT: u32 = 253;
const RT_TABLE_LOCAL: u32 = 255;

/// What a wait saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutingEvents {
    /// Anything at all: a neighbour, address, link, route or rule event.
    pub any: bool,
    /// A rule was added or removed.
    pub rules: bool,
    /// A route was added, changed or removed.
    pub routes: bool,
    /// A route added is multipath, a nexthop object or source-specific (see
    /// [`routes_are_plain`]). (Whether such a route removed was the last one
    /// takes a dump to tell.)
    pub not_plain_route_added: bool,
    /// Events were lost: anything may have changed.
    pub lost: bool,
}

/// A socket subscribed to route, rule, address, neighbour and link events
/// of this network namespace.
#[derive(Debug)]
pub struct RoutingWatch {
    fd: OwnedFd,
}

impl RoutingWatch {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            fd: nl_socket(ROUTING_GROUPS | RTMGRP_NEIGH)?,
        })
    }

    /// Waits up to `timeout` for events, then reads every one waiting.
    pub fn wait(&self, timeout: Duration) -> RoutingEvents {
        let mut seen = RoutingEvents::default();
        if !readable(&self.fd, timeout) {
            return seen;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(&self.fd, &mut buf) {
                Ok(Some(n)) => seen.add(&buf[..n]),
                Ok(None) => return seen,
                // ENOBUFS (events were lost), or worse.
                Err(_) => {
                    seen.any = true;
                    seen.lost = true;
                    return seen;
                }
            }
        }
    }
}

impl RoutingEvents {
    /// Adds the events of one datagram.
    fn add(&mut self, datagram: &[u8]) {
        for (kind, payload) in messages(datagram) {
            match kind {
                NLMSG_DONE | NLMSG_ERROR => continue,
                RTM_NEWRULE | RTM_DELRULE => self.rules = true,
                RTM_NEWROUTE => {
                    self.routes = true;
                    self.not_plain_route_added |= !plain_route(payload);
                }
                RTM_DELROUTE => self.routes = true,
                // Neighbours, links and addresses.
                _ => {}
            }
            self.any = true;
        }
    }
}

fn readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the call's duration.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0
}

// A route lookup's answer depends on the destination alone, as a next hop
// cached per backend assumes, when both of these hold: the rules are plain
// (each only sends lookups to the local, main or default table, with no
// selector: source, interface, mark, ports...), and so are the routes (none
// is multipath, a nexthop object, which may be a group, or source-specific,
// IPv6 `from`).

/// Whether every policy rule is plain (see above): a dump of a few messages.
pub fn rules_are_plain() -> io::Result<bool> {
    Ok(dump(RTM_GETRULE)?.iter().all(|m| plain_rule(m)))
}

/// Whether every route of every table is plain (see above): a dump as large
/// as the node's routing.
pub fn routes_are_plain() -> io::Result<bool> {
    Ok(dump(RTM_GETROUTE)?.iter().all(|m| plain_route(m)))
}

fn plain_rule(payload: &[u8]) -> bool {
    let Some(hdr) = payload.get(..FIB_RULE_HDR_LEN) else {
        return false;
    };
    // fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action.
    let (dst_len, src_len, tos, table, action) = (hdr[1], hdr[2], hdr[3], hdr[4], hdr[7]);
    if dst_len != 0 || src_len != 0 || tos != 0 || action != FR_ACT_TO_TBL {
        return false;
    }
    let mut table = u32::from(table);
    for (kind, value) in attributes(&payload[FIB_RULE_HDR_LEN..]) {
        match kind {
            FRA_TABLE => table = u32_at(value, 0).unwrap_or(0),
            FRA_PRIORITY | FRA_SUPPRESS_IFGROUP | FRA_SUPPRESS_PREFIXLEN | FRA_PROTOCOL => {}
            _ => return false,
        }
    }
    (RT_TABLE_DEFAULT..=RT_TABLE_LOCAL).contains(&table)
}

fn plain_route(payload: &[u8]) -> bool {
    // rtmsg: family, dst_len, src_len, ...
    let Some(src_len) = payload.get(2) else {
        return false;
    };
    *src_len == 0
        && attributes(payload.get(RTMSG_LEN..).unwrap_or_default())
            .all(|(kind, _)| kind != RTA_MULTIPATH && kind != RTA_NH_ID)
}

/// The payloads of a dump of every family's `kind` (`RTM_GETRULE`,
/// `RTM_GETROUTE`).
fn dump(kind: u16) -> io::Result<Vec<Vec<u8>>> {
    let fd = nl_socket(0)?;
    // An `rtmsg` or `fib_rule_hdr` (both 12 bytes) of family AF_UNSPEC (0):
    // all of them.
    send_request(&fd, kind, NLM_F_REQUEST | NLM_F_DUMP, &[0; RTMSG_LEN])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let Some(n) = recv(&fd, &mut buf)? else {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::other("rtnetlink did not finish its dump"));
            }
            readable(&fd, left);
            continue;
        };
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = u32_at(payload, 0).map_or(0, |e| -(e as i32));
                    return Err(io::Error::from_raw_os_error(errno));
                }
                _ => out.push(payload.to_vec()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_attrs(hdr: [u8; 12], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = hdr.to_vec();
        for (kind, value) in attrs {
            m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(value);
            while !m.len().is_multiple_of(4) {
                m.push(0);
            }
        }
        m
    }

    #[test]
    fn only_selectorless_rules_to_the_standard_tables_are_plain() {
        let main = with_attrs(
            [2, 0, 0, 0, 254, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0],
            &[
                (FRA_TABLE, &254u32.to_ne_bytes()),
                (FRA_PRIORITY, &32766u32.to_ne_bytes()),
            ],
        );
        assert!(plain_rule(&main));
        // `from 198.18.0.0/15 lookup main`
        let mut from = main.clone();
        from[2] = 15;
        assert!(!plain_rule(&from));
        // `lookup 100`
        let other_table = with_attrs(
            [2, 0, 0, 0, 100, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0],
            &[(FRA_TABLE, &100u32.to_ne_bytes())],
        );
        assert!(!plain_rule(&other_table));
        // `fwmark 1 lookup main` (FRA_FWMARK = 10)
        let fwmark = with_attrs(
            [2, 0, 0, 0, 254, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0],
            &[(10, &1u32.to_ne_bytes())],
        );
        assert!(!plain_rule(&fwmark));
        // `blackhole`
        assert!(!plain_rule(&[2, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0]));
        assert!(!plain_rule(&[2, 0]));
    }

    #[test]
    fn multipath_and_source_specific_routes_are_not_plain() {
        let hdr = [2, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        assert!(plain_route(&with_attrs(hdr, &[(1, &[198, 18, 5, 0])])));
        assert!(!plain_route(&with_attrs(hdr, &[(RTA_MULTIPATH, &[0; 8])])));
        assert!(!plain_route(&with_attrs(
            hdr,
            &[(RTA_NH_ID, &[1, 0, 0, 0])]
        )));
        let mut from = hdr;
        from[2] = 64;
        assert!(!plain_route(&from));
    }

    #[test]
    fn events_are_summed_up() {
        const RTM_NEWNEIGH: u16 = 28;
        let message = |kind: u16, payload: &[u8]| {
            let mut m = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(payload);
            m
        };
        let plain = [2, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let multipath = with_attrs(plain, &[(RTA_MULTIPATH, &[0; 8])]);
        let mut seen = RoutingEvents::default();
        seen.add(&message(RTM_NEWNEIGH, &[]));
        assert_eq!(
            seen,
            RoutingEvents {
                any: true,
                ..Default::default()
            }
        );
        seen.add(&message(RTM_NEWROUTE, &plain));
        assert!(seen.routes && !seen.not_plain_route_added && !seen.rules);
        let mut both = message(RTM_DELROUTE, &multipath);
        both.extend(message(RTM_DELRULE, &[0; 12]));
        seen.add(&both);
        assert!(!seen.not_plain_route_added && seen.rules && !seen.lost);
        seen.add(&message(RTM_NEWROUTE, &multipath));
        assert!(seen.not_plain_route_added);
        let mut nothing = RoutingEvents::default();
        nothing.add(&[]);
        assert_eq!(nothing, RoutingEvents::default());
    }

    #[test]
    fn this_namespace_can_be_read() {
        // Whatever the machine's routing, the dumps themselves succeed.
        rules_are_plain().unwrap();
        routes_are_plain().unwrap();
    }
}
