//! portmap's daemon and CLI as a library, so tests and the benchmark
//! (`portmap-bench`) drive the same code as the `portmap` binary.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod docker;
pub mod fuzz_checks;
pub mod k8s;
pub mod kubeapi;
#[cfg(test)]
mod layers;
pub mod list;
pub mod locality;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod node_addrs;
pub mod reload;
pub mod spec;
