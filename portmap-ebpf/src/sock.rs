//! Socket-level load balancing: cgroup `sock_addr` programs that translate at
//! `connect` and UDP `sendmsg` time, for traffic that never crosses an
//! interface XDP runs on (`curl localhost:8080`, node processes, pods reaching
//! ClusterIPs, hairpin).
//!
//! - `connect4/6`, `sendmsg4/6`: a TCP connect, a UDP connect, or a UDP
//!   message sent to an address, addressed to a frontend, is sent to a backend
//!   instead, chosen as the XDP path chooses (same frontend lookup, same
//!   session affinity map, Maglev hashed by socket cookie). The socket, the
//!   backend and the frontend go into `SOCK_REVNAT`.
//! - `recvmsg4/6`, `getpeername4/6`: a UDP reply's source address and a
//!   socket's peer, if they are a backend this socket was sent to, are shown
//!   as the frontend the application used.
//!
//! Loopback destinations (127.0.0.0/8, ::1), and frontends published on a
//! loopback address (host-only), are translated only for sockets in the
//! node's own network namespace (`DatapathConfig::host_netns_cookie`): a
//! process in a container connecting to its own 127.0.0.1:8080 is left alone.
//! Other frontends (node addresses, ClusterIPs, load balancer IPs) are
//! translated for sockets in any namespace of the cgroup.
//!
//! Counters: each translated connect or message counts one request packet
//! (no bytes) for its frontend and backend; replies are not counted.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use portmap_common::{
    abi::{
        AFFINITY_BY_NETNS, DIR_REQUEST, DatapathEvent, FAMILY_V4, FAMILY_V6, FE_DROP_NO_BACKENDS,
        FE_HOST_ONLY, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES, PROTO_TCP, PROTO_UDP, RawAddr,
        SockRevKey, SockRevValue,
    },
    hash::flow_hash,
};

use crate::{
    conntrack,
    counters::{count, count_event},
    lb::{self, Client, Dest},
    maps::{FRONTEND_GEN, SOCK_REVNAT},
};

/// Verdicts of `sock_addr` programs: carry on, or fail the call (with
/// `EPERM`, or the error set by `bpf_set_retval`).
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const EPERM: i32 = 1;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

#[cgroup_sock_addr(connect4)]
pub fn portmap_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(connect6)]
pub fn portmap_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn portmap_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn portmap_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn portmap_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn portmap_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn portmap_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn portmap_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V6)
}

// Context fields are read and written one 4-byte word at a time, volatile so
// the compiler neither merges nor splits the accesses (the verifier allows
// only such accesses to `bpf_sock_addr`).

#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr, family: u8) -> RawAddr {
    // SAFETY: `sa` is the program's context; the fields are readable.
    unsafe {
        if family == FAMILY_V4 {
            RawAddr([core::ptr::read_volatile(&(*sa).user_ip4), 0, 0, 0])
        } else {
            RawAddr([
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ])
        }
    }
}

/// The port in network byte order, as the maps keep it.
#[inline(always)]
fn user_port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: as in `user_addr`. The kernel keeps the port (network byte
    // order) in the low 16 bits of the word.
    unsafe { core::ptr::read_volatile(&(*sa).user_port) as u16 }
}

#[inline(always)]
fn set_user(sa: *mut bpf_sock_addr, family: u8, addr: &RawAddr, port: u16) {
    // SAFETY: the program types this runs in may write these fields.
    unsafe {
        if family == FAMILY_V4 {
            core::ptr::write_volatile(&mut (*sa).user_ip4, addr.0[0]);
        } else {
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], addr.0[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], addr.0[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], addr.0[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], addr.0[3]);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port));
    }
}

/// The address the socket is bound to, unspecified if none (yet).
#[inline(always)]
fn bound_addr(sa: *mut bpf_sock_addr, family: u8) -> RawAddr {
    // SAFETY: `sk` of a `sock_addr` context is a full socket the verifier
    // lets the program read the source address of.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if family == FAMILY_V4 {
            RawAddr([core::ptr::read_volatile(&(*sk).src_ip4), 0, 0, 0])
        } else {
            RawAddr([
                core::ptr::read_volatile(&(*sk).src_ip6[0]),
                core::ptr::read_volatile(&(*sk).src_ip6[1]),
                core::ptr::read_volatile(&(*sk).src_ip6[2]),
                core::ptr::read_volatile(&(*sk).src_ip6[3]),
            ])
        }
    }
}

#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> u8 {
    // SAFETY: as in `user_addr`.
    let p = unsafe { core::ptr::read_volatile(&(*sa).protocol) };
    match p {
        6 => PROTO_TCP,
        17 => PROTO_UDP,
        _ => 0,
    }
}

/// Fails the call with `errno`.
#[inline(always)]
fn fail(errno: i32) -> i32 {
    // SAFETY: the helper only sets the value the syscall returns.
    unsafe { bpf_set_retval(-errno) };
    DENY
}

/// `connect` and `sendmsg`: sends a socket addressing a frontend to a backend.
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    let proto = protocol(sa);
    if proto == 0 {
        return ALLOW;
    }
    let Some(cfg) = conntrack::config() else {
        return ALLOW;
    };
    let dst = Dest {
        addr: user_addr(sa, family),
        port: user_port(sa),
        proto,
        family,
    };
    // SAFETY: the helpers only read the context's socket.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let host = cfg.host_netns_cookie != 0 && netns == cfg.host_netns_cookie;
    let loopback = lb::is_loopback(&dst.addr, family);
    if loopback && !host {
        return ALLOW;
    }
    let Some(fe) = lb::lookup_frontend(&dst, loopback) else {
        return ALLOW;
    };
    if fe.flags & FE_HOST_ONLY != 0 && !host {
        return ALLOW;
    }
    let src = bound_addr(sa, family);
    if fe.flags & FE_SOURCE_RANGES != 0 {
        if src.is_unspecified() {
            // The source is not chosen yet. The node itself may reach its
            // load balancers (as with kube-proxy); others are left to the
            // packet path, which checks their source.
            if !host {
                return ALLOW;
            }
        } else if !lb::source_in_ranges(&fe, &src, family) {
            count_event(DatapathEvent::DroppedSourceRange);
            return fail(EPERM);
        }
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let cookie_words = RawAddr([cookie as u32, (cookie >> 32) as u32, 0, 0]);
    let client = if src.is_unspecified() {
        let netns_words = RawAddr([netns as u32, (netns >> 32) as u32, 0, 0]);
        Client {
            id: netns_words,
            kind: AFFINITY_BY_NETNS | family,
        }
    } else {
        Client {
            id: src,
            kind: family,
        }
    };
    let hash = flow_hash(&cookie_words, &dst.addr, 0, dst.port, proto);
    let now = conntrack::now_ns();
    let Some((backend_id, backend, sticky)) = lb::choose_backend(&fe, family, &client, hash, now)
    else {
        return if fe.flags & FE_REJECT_NO_BACKENDS != 0 {
            count_event(DatapathEvent::Rejected);
            fail(ECONNREFUSED)
        } else if fe.flags & FE_DROP_NO_BACKENDS != 0 {
            count_event(DatapathEvent::DroppedNoBackend);
            fail(EHOSTUNREACH)
        } else {
            count_event(DatapathEvent::NoBackend);
            ALLOW
        };
    };
    if sticky {
        count_event(DatapathEvent::AffinityHit);
    }
    let key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        family,
        _pad: [0; 5],
    };
    let value = SockRevValue {
        addr: dst.addr,
        port: dst.port,
        _pad: 0,
        frontend_id: fe.frontend_id,
        frontend_generation: fe.generation,
    };
    // Written only when new or changed (UDP sends to the same frontend
    // repeat it). Best effort: without it, replies show the backend.
    // SAFETY: a live map value, compared at once.
    if SOCK_REVNAT
        .get_ptr(key)
        .is_none_or(|old| unsafe { *old } != value)
    {
        let _ = SOCK_REVNAT.insert(key, value, 0);
    }
    set_user(sa, family, &backend.addr, backend.port);
    count(fe.frontend_id, backend_id, DIR_REQUEST, 1, 0);
    ALLOW
}

/// `recvmsg` and `getpeername`: shows a backend this socket was sent to as the
/// frontend the application addressed. These programs must allow.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr: user_addr(sa, family),
        port: user_port(sa),
        family,
        _pad: [0; 5],
    };
    let Some(entry) = SOCK_REVNAT.get_ptr(key) else {
        return ALLOW;
    };
    // SAFETY: a live map value, copied at once.
    let entry = unsafe { *entry };
    if matches!(FRONTEND_GEN.get(entry.frontend_id), Some(g) if *g == entry.frontend_generation) {
        set_user(sa, family, &entry.addr, entry.port);
    }
    ALLOW
}
