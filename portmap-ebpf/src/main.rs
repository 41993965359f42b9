//! portmap's eBPF dataplane.
//!
//! - `portmap_ingress` (XDP, on each published interface): translates a client's
//!   packets from the frontend it addressed to a backend (DNAT), creating a
//!   conntrack entry per flow.
//! - `portmap_egress` (tc egress, same interfaces): translates the backend's
//!   replies back so they come from the frontend the client used.
//!
//! One module per concern: `parse` reads headers, `lb` finds the frontend and
//! picks a backend, `conntrack` keeps flows on their backend, `nat` rewrites
//! addresses with their checksums, `counters` counts; `maps` declares every map.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod egress;
mod ingress;
mod lb;
mod maps;
mod nat;
mod packet;
mod parse;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn portmap_ingress(ctx: XdpContext) -> u32 {
    ingress::run(&ctx)
}

#[classifier]
pub fn portmap_egress(ctx: TcContext) -> i32 {
    egress::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here, so it is never run.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
