//! The route to an address, as `ip route get ADDR` shows it: whether it goes
//! through a gateway, and the source address the node would use. That tells
//! a backend on another node (behind a gateway) from one on a link of this
//! node, and which of the node's addresses SNATs towards it.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attributes, messages, nl_socket, recv, send_request,
    u32_at,
};

const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_GETROUTE: u16 = 26;
/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope,
/// type, flags (u32).
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTN_LOCAL: u8 = 2;

/// Where the node sends packets for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The next hop, when it is not the address itself.
    pub gateway: Option<IpAddr>,
    /// The source address the node picks towards it.
    pub source: Option<IpAddr>,
    /// The address is one of the node's own.
    pub local: bool,
    pub oif: Option<u32>,
}

fn ip_from(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(value).ok()?,
        ))),
        _ => None,
    }
}

/// The route this network namespace would take to `dst`; `Ok(None)` when
/// there is none (unreachable).
pub fn route_to(dst: IpAddr) -> io::Result<Option<Route>> {
    let (family, addr): (u8, Vec<u8>) = match dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let attr_len = 4 + addr.len();
    let mut body = vec![0u8; RTMSG_LEN + attr_len];
    body[0] = family;
    body[1] = (addr.len() * 8) as u8;
    let at = RTMSG_LEN;
    body[at..at + 2].copy_from_slice(&(attr_len as u16).to_ne_bytes());
    body[at + 2..at + 4].copy_from_slice(&RTA_DST.to_ne_bytes());
    body[at + 4..].copy_from_slice(&addr);

    let fd = nl_socket(0)?;
    send_request(&fd, RTM_GETROUTE, NLM_F_REQUEST, &body)?;
    // The kernel answers before `send` returns (see `xdp_prog_id`).
    let mut buf = vec![0u8; 16 * 1024];
    let n = recv(&fd, &mut buf)?.ok_or_else(|| io::Error::other("no answer from rtnetlink"))?;
    for (kind, payload) in messages(&buf[..n]) {
        match kind {
            RTM_NEWROUTE => return Ok(parse_route(payload)),
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).map_or(0, |e| -(e as i32));
                return match errno {
                    0 => Ok(None),
                    libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN => Ok(None),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            NLMSG_DONE => break,
            _ => {}
        }
    }
    Ok(None)
}

fn parse_route(payload: &[u8]) -> Option<Route> {
    let kind = *payload.get(7)?;
    let mut route = Route {
        gateway: None,
        source: None,
        local: kind == RTN_LOCAL,
        oif: None,
    };
    for (t, value) in attributes(payload.get(RTMSG_LEN..)?) {
        match t {
            RTA_GATEWAY => route.gateway = ip_from(value),
            RTA_PREFSRC => route.source = ip_from(value),
            RTA_OIF => route.oif = u32_at(value, 0),
            _ => {}
        }
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_its_own_source() {
        let r = route_to("127.0.0.1".parse().unwrap()).unwrap().unwrap();
        assert!(r.local);
        assert_eq!(r.gateway, None);
        assert_eq!(r.source, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn attributes_of_a_route_are_read() {
        let mut payload = vec![0u8; RTMSG_LEN];
        payload[7] = 1; // RTN_UNICAST
        for (t, v) in [
            (RTA_GATEWAY, vec![198, 18, 0, 1]),
            (RTA_PREFSRC, vec![198, 18, 0, 2]),
            (RTA_OIF, 7u32.to_ne_bytes().to_vec()),
        ] {
            payload.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            payload.extend_from_slice(&t.to_ne_bytes());
            payload.extend(v);
        }
        let r = parse_route(&payload).unwrap();
        assert_eq!(r.gateway, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(r.source, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(r.oif, Some(7));
        assert!(!r.local);
        assert_eq!(parse_route(&payload[..3]), None, "truncated");
    }
}
