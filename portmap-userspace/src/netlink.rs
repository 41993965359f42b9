//! Network interfaces through rtnetlink, with a raw `NETLINK_ROUTE` socket:
//! link events (an interface created, changed, deleted) for following
//! `--iface` and `--backend-iface` live, and the XDP program attached to an
//! interface.
//!
//! Raw rather than a netlink crate: portmap needs one multicast group, one
//! request and two attributes, which fit in this file; the daemon keeps no
//! extra dependency tree for them, and aya (which speaks netlink the same way
//! internally) exposes no API for either.

mod route;
mod route_watch;
mod routing;

pub use route::{Route, route_to};
pub use route_watch::{RouteChange, RouteWatch};
pub use routing::{RoutingEvents, RoutingWatch, routes_are_plain, rules_are_plain};

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

/// `nlmsghdr` and `ifinfomsg` sizes; attributes follow at 4-byte alignment.
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const RTMGRP_LINK: u32 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_MASTER: u16 = 10;
const IFLA_XDP_PROG_ID: u16 = 4;
/// Attribute types carry flag bits above these.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What happened to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (`RTM_NEWLINK`).
    New { ifindex: u32, name: String },
    /// Deleted, or moved to another namespace (`RTM_DELLINK`).
    Deleted { ifindex: u32, name: String },
    /// The kernel dropped events (the socket's buffer overflowed): anything
    /// may have changed.
    Lost,
}

impl LinkEvent {
    /// Whether the event may concern interface `name` or index `ifindex`.
    pub fn concerns(&self, names: &[&str], ifindexes: &[u32]) -> bool {
        match self {
            LinkEvent::New { ifindex, name } | LinkEvent::Deleted { ifindex, name } => {
                names.contains(&name.as_str()) || ifindexes.contains(ifindex)
            }
            LinkEvent::Lost => true,
        }
    }
}

fn nl_socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned by the returned value and the
    // address passed to bind is a valid, fully initialized sockaddr_nl.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Sends one request of type `kind` with `flags` (sequence number 1), its
/// message header followed by `body`.
fn send_request(fd: &OwnedFd, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    let len = NLMSG_HDRLEN + body.len();
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(body);
    // SAFETY: `request` is valid for reads of its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads one datagram; `Ok(None)` when none is waiting.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock => Ok(None),
        io::ErrorKind::Interrupted => recv(fd, buf),
        _ => Err(err),
    }
}

/// A socket subscribed to link events of this network namespace.
#[derive(Debug)]
pub struct LinkWatch {
    fd: OwnedFd,
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl LinkWatch {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            fd: nl_socket(RTMGRP_LINK)?,
        })
    }

    /// Every event waiting (none when nothing is: the socket does not block).
    pub fn read_all(&self) -> io::Result<Vec<LinkEvent>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = Vec::new();
        loop {
            match recv(&self.fd, &mut buf) {
                Ok(Some(n)) => events.extend(parse_links(&buf[..n])),
                Ok(None) => return Ok(events),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.push(LinkEvent::Lost),
                Err(e) => return Err(e),
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The messages of a netlink datagram: (type, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u32_at(buf, at)? as usize;
        let kind = u16_at(buf, at + 4)?;
        if len < NLMSG_HDRLEN {
            return None;
        }
        let payload = buf.get(at + NLMSG_HDRLEN..at + len)?;
        at += align4(len);
        Some((kind, payload))
    })
}

/// The attributes in `buf`: (type, value).
fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(buf, at)?);
        let kind = u16_at(buf, at + 2)? & NLA_TYPE_MASK;
        if len < 4 {
            return None;
        }
        let value = buf.get(at + 4..at + len)?;
        at += align4(len);
        Some((kind, value))
    })
}

/// The link events in a datagram (other messages are skipped).
pub fn parse_links(buf: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    for (kind, payload) in messages(buf) {
        if kind != RTM_NEWLINK && kind != RTM_DELLINK {
            continue;
        }
        let Some(ifindex) = u32_at(payload, 4) else {
            continue;
        };
        let Some(attrs) = payload.get(IFINFOMSG_LEN..) else {
            continue;
        };
        let Some(name) = attributes(attrs)
            .find(|(t, _)| *t == IFLA_IFNAME)
            .map(|(_, v)| {
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
            })
        else {
            continue;
        };
        out.push(if kind == RTM_NEWLINK {
            LinkEvent::New { ifindex, name }
        } else {
            LinkEvent::Deleted { ifindex, name }
        });
    }
    out
}

/// The id of the XDP program attached to interface `ifindex` of this
/// namespace (`None`: no program, or no such interface).
pub fn xdp_prog_id(ifindex: u32) -> io::Result<Option<u32>> {
    link_attribute(ifindex, |attrs| {
        attributes(attrs)
            .find(|(t, _)| *t == IFLA_XDP)
            .and_then(|(_, xdp)| attributes(xdp).find(|(t, _)| *t == IFLA_XDP_PROG_ID))
            .and_then(|(_, v)| u32_at(v, 0))
            .filter(|id| *id != 0)
    })
}

/// The index of the device interface `ifindex` is enslaved to (a bridge,
/// a bond), if any. Read through rtnetlink: /sys may show another
/// namespace's interfaces.
pub fn master_of(ifindex: u32) -> io::Result<Option<u32>> {
    link_attribute(ifindex, |attrs| {
        attributes(attrs)
            .find(|(t, _)| *t == IFLA_MASTER)
            .and_then(|(_, v)| u32_at(v, 0))
            .filter(|i| *i != 0)
    })
}

/// Asks for interface `ifindex` and reads its attributes with `read`
/// (`None` if there is no such interface).
fn link_attribute(ifindex: u32, read: impl Fn(&[u8]) -> Option<u32>) -> io::Result<Option<u32>> {
    let fd = nl_socket(0)?;
    let mut ifinfo = [0u8; IFINFOMSG_LEN];
    ifinfo[0] = libc::AF_UNSPEC as u8;
    ifinfo[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    send_request(&fd, RTM_GETLINK, NLM_F_REQUEST, &ifinfo)?;
    // The socket does not block; the kernel answers a request synchronously,
    // before `send` returns.
    let mut buf = vec![0u8; 64 * 1024];
    let n = recv(&fd, &mut buf)?.ok_or_else(|| io::Error::other("no answer from rtnetlink"))?;
    for (kind, payload) in messages(&buf[..n]) {
        match kind {
            RTM_NEWLINK => return Ok(read(payload.get(IFINFOMSG_LEN..).unwrap_or_default())),
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).map_or(0, |e| -(e as i32));
                if errno == libc::ENODEV {
                    return Ok(None);
                }
                return Err(io::Error::from_raw_os_error(errno));
            }
            NLMSG_DONE => break,
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, ifindex: u32, name: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let value = [name.as_bytes(), &[0]].concat();
        attr.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        attr.extend_from_slice(&value);
        attr.resize(align4(attr.len()), 0);
        let mut info = vec![0u8; IFINFOMSG_LEN];
        info[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let len = NLMSG_HDRLEN + info.len() + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(info);
        m.extend(attr);
        m
    }

    #[test]
    fn link_events_are_read_with_their_names() {
        let mut datagram = message(RTM_NEWLINK, 7, "eth-c");
        datagram.extend(message(RTM_DELLINK, 8, "veth12345"));
        datagram.extend(message(NLMSG_DONE, 0, "x"));
        assert_eq!(
            parse_links(&datagram),
            vec![
                LinkEvent::New {
                    ifindex: 7,
                    name: "eth-c".into()
                },
                LinkEvent::Deleted {
                    ifindex: 8,
                    name: "veth12345".into()
                },
            ]
        );
        // Truncated input ends the walk instead of reading past it.
        assert_eq!(parse_links(&datagram[..20]), vec![]);
    }

    #[test]
    fn loopback_has_no_xdp_program() {
        // Index 1 is lo in every namespace.
        assert_eq!(xdp_prog_id(1).unwrap(), None);
    }

    #[test]
    fn events_concern_followed_names_or_indexes() {
        let e = LinkEvent::Deleted {
            ifindex: 9,
            name: "x".into(),
        };
        assert!(e.concerns(&["x"], &[]));
        assert!(e.concerns(&[], &[9]));
        assert!(!e.concerns(&["y"], &[3]));
        assert!(LinkEvent::Lost.concerns(&[], &[]));
    }
}
