//! A reference model of the dataplane, and the harness that runs it next to
//! the real programs.
//!
//! The model says what the XDP ingress and tc egress programs do to one
//! packet, given the content of the maps: the verdict, the bytes that come
//! out, and the conntrack and affinity entries afterwards. It covers DNAT of
//! requests, reverse NAT of replies, the policies of frontends without
//! backends (pass, ICMP port unreachable, drop), source ranges, session
//! affinity, conntrack states, timeouts and generations, and ICMP errors
//! about translated flows. It is written from
//! the specification (the README's "What the dataplane does", the comments of
//! `portmap_common::abi`), not from the eBPF code: it has its own parser, its
//! own checksum arithmetic and its own NAT. It shares only what is a
//! contract rather than an implementation under test: the flow hash
//! (`portmap_common::hash::flow_hash`) and the Maglev tables
//! (`portmap_userspace::maglev`).
//!
//! - [`wire`]: parsing frames, one's complement arithmetic, ICMP errors;
//! - [`state`]: the maps packets read ([`state::Maps`]) and the ones they
//!   write ([`state::Flows`]);
//! - [`program`]: [`program::xdp`] and [`program::tc`], one packet each;
//! - [`offload`]: requests whose checksum may be offloaded, left to tc;
//! - [`desired`]: the maps a `DesiredState` must give (checking what
//!   userspace wrote);
//! - [`probe`]: reading and aging the real maps;
//! - [`harness`]: both sides on the same packets, and readable reports.

pub mod desired;
pub mod harness;
pub mod offload;
pub mod probe;
pub mod program;
pub mod state;
pub mod wire;
