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
//! own checksum arithmetic, its own NAT and its own conntrack. It shares
//! only what is a contract rather than an implementation under test: the
//! map layouts and constants of `portmap_common::abi` (the refresh interval
//! of conntrack entries among them), the flow hash
//! (`portmap_common::hash::flow_hash`) and the Maglev tables
//! (`portmap_userspace::maglev`).
//!
//! - [`parse`]: frames as the model reads them, and what ICMP errors quote;
//! - [`checksum`]: one's complement arithmetic;
//! - [`state`]: the maps packets read ([`state::Maps`]) and the ones they
//!   write ([`state::Flows`]);
//! - [`lb`]: a new flow's frontend, source check and backend;
//! - [`conntrack`]: the state table, timeouts, checks before use, refresh
//!   and twins, as tables beside the words they come from;
//! - [`nat`]: rewriting one end of a packet;
//! - [`icmp`]: the port unreachable, and errors about translated flows;
//! - [`offload`]: requests whose checksum may be offloaded, left to tc;
//! - [`program`]: [`program::xdp`] and [`program::tc`], one packet each;
//! - [`desired`]: the maps a `DesiredState` must give (checking what
//!   userspace wrote);
//! - [`probe`]: reading and aging the real maps;
//! - [`harness`]: both sides on the same packets, and readable reports.

pub mod checksum;
pub mod conntrack;
pub mod desired;
pub mod harness;
pub mod icmp;
pub mod lb;
pub mod nat;
pub mod offload;
pub mod parse;
pub mod probe;
pub mod program;
pub mod state;
