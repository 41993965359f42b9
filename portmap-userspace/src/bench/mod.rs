//! `portmap bench`: portmap against kube-proxy's iptables and nftables modes
//! and plain forwarding, in namespaces it builds. (Being written.)

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs) -> Result<()> {
    bail!("portmap bench is not implemented yet")
}
