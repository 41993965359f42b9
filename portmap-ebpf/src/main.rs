//! portmap's eBPF dataplane.
//!
//! - `portmap_ingress` (XDP, on each published interface): translates a client's
//!   packets from the frontend it addressed to a backend (DNAT), creating a
//!   conntrack entry per flow.
//! - `portmap_ingress_tc` (tc ingress, same interfaces): writes the
//!   translations XDP decided but left to the kernel's checksum helpers
//!   (SNATed requests among them).
//! - `portmap_snat_reply` (tc ingress, after it): turns the replies of flows
//!   SNATed towards backends on other nodes back to their clients.
//! - `portmap_dsr` (tc ingress, after them): requests sent to backends on
//!   other nodes by direct server return, given the frontend as an option;
//!   and on the backend's node, requests carrying one, learned (see `dsr`).
//! - `portmap_egress` (tc egress, same interfaces): translates the backend's
//!   replies back so they come from the frontend the client used.
//! - `portmap_connect4/6`, `portmap_sendmsg4/6`, `portmap_recvmsg4/6`,
//!   `portmap_getpeername4/6` (cgroup `sock_addr`, in `sock`): the same
//!   translation at connect and send time for sockets of the node and its
//!   pods, whose traffic never crosses XDP.
//!
//! One module per concern: `parse` reads headers, `lb` finds the frontend and
//! picks a backend, `conntrack` keeps flows on their backend, `nat` rewrites
//! addresses with their checksums, `counters` counts; `maps` declares every map.
//!
//! The programs exist only for the BPF target. Built for the host (as
//! `cargo build --workspace` would), this is an empty binary that says so.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod checksum;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod dsr;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod fastpath;
#[cfg(target_arch = "bpf")]
mod handoff;
#[cfg(target_arch = "bpf")]
mod hopcache;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod reject;
#[cfg(target_arch = "bpf")]
mod reply;
#[cfg(target_arch = "bpf")]
mod snat;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod xlate;

#[cfg(target_arch = "bpf")]
use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("portmap-ebpf is built for bpfel-unknown-none by portmap-userspace's build script");
}

/// XDP on published interfaces. Frames of any size (a jumbo MTU makes
/// multi-buffer frames): only the headers must be in the first buffer.
#[cfg(target_arch = "bpf")]
#[xdp(frags)]
pub fn portmap_ingress(ctx: XdpContext) -> u32 {
    ingress::run(&ctx)
}

/// tc ingress on published interfaces: rewrites XDP left to the kernel's
/// checksum helpers (see `handoff`).
#[cfg(target_arch = "bpf")]
#[classifier]
pub fn portmap_ingress_tc(ctx: TcContext) -> i32 {
    handoff::run(&ctx)
}

/// tc ingress on published interfaces, after `portmap_ingress_tc`: replies
/// of SNATed flows (see `snat`). A program of its own: with the handoff's
/// rewrites it would not fit one 512-byte stack frame.
#[cfg(target_arch = "bpf")]
#[classifier]
pub fn portmap_snat_reply(ctx: TcContext) -> i32 {
    snat::run_reply(&ctx)
}

/// tc ingress on published interfaces, after `portmap_snat_reply`: direct
/// server return (see `dsr`). A program of its own for the same reason.
#[cfg(target_arch = "bpf")]
#[classifier]
pub fn portmap_dsr(ctx: TcContext) -> i32 {
    dsr::run(&ctx)
}

/// tc ingress on backend-facing interfaces: replies forwarded by the fast
/// path.
#[cfg(target_arch = "bpf")]
#[classifier]
pub fn portmap_reply(ctx: TcContext) -> i32 {
    reply::run(&ctx)
}

#[cfg(target_arch = "bpf")]
#[classifier]
pub fn portmap_egress(ctx: TcContext) -> i32 {
    egress::run(&ctx)
}

portmap_common::bpf_object_end!();
