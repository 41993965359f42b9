//! Bulk transfers with real programs, checked end to end: nginx and iperf3
//! in a backend, curl at the client, SHA-256 of what arrived against what was
//! sent, UDP datagrams of every size mirrored back, and what portmap counted.
//!
//! [`rig::Rig`] builds one topology, its servers and one `portmap run`;
//! [`cases`] moves data through it; [`matrix::Matrix`] runs every case,
//! keeps going past failures and fails the test with all of them listed.

pub mod cases;
pub mod content;
pub mod curl;
pub mod iperf;
pub mod matrix;
pub mod nginx;
pub mod proc;
pub mod rig;
pub mod udp;
