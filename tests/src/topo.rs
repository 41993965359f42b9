//! The standard topology: client namespace → node namespace (portmap runs
//! here, on its client-facing veth) → one namespace per backend.
//!
//! ```text
//!  client            node                        backend i
//!  198.18.0.2  ───   198.18.0.1  (eth-c)          
//!  2001:db8::2       2001:db8::1                  
//!                    198.19.i.1  (eth-bi)  ───   198.19.i.2
//!                    2001:db8:1:i::1             2001:db8:1:i::2
//! ```
//! Extra node addresses on the client side: 198.18.0.3 and 2001:db8::3.
//!
//! Every veth keeps the offloads the kernel gives it ([`Offloads::Default`]:
//! scatter-gather, TSO/GSO, checksum offload), as containers' veths do, so
//! the dataplane sees what users send: GSO super-packets, non-linear skbs,
//! partial checksums. [`Offloads::TxCsumOff`] turns tx checksum offload off
//! (and with it TSO/GSO) on every veth, so a wrong checksum is dropped
//! instead of being forgiven as "partial". GRO is on at the client's end in
//! both, so frames XDP sends back to it (ICMP rejects) are received, as by a
//! NIC.

use std::net::IpAddr;

use anyhow::Result;

use crate::{netns::Netns, unique_name};

pub const CLIENT_V4: &str = "198.18.0.2";
pub const CLIENT_V6: &str = "2001:db8::2";
pub const NODE_V4: &str = "198.18.0.1";
pub const NODE_V6: &str = "2001:db8::1";
pub const NODE_V4_ALT: &str = "198.18.0.3";
pub const NODE_V6_ALT: &str = "2001:db8::3";
/// The node's interface facing the client, where portmap attaches.
pub const NODE_IFACE: &str = "eth-c";

/// The offloads of every veth of a topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offloads {
    /// What the kernel gives a veth: tx checksum offload, scatter-gather,
    /// TSO/GSO on; GRO off.
    #[default]
    Default,
    /// `ethtool -K IF tx off`: every checksum is computed in full before a
    /// packet leaves (which also turns TSO off), so a checksum the dataplane
    /// gets wrong is dropped at the receiver.
    TxCsumOff,
}

impl Offloads {
    /// A short name for test output.
    pub fn name(self) -> &'static str {
        match self {
            Offloads::Default => "default-offloads",
            Offloads::TxCsumOff => "tx-csum-off",
        }
    }
}

/// How a topology's links are set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkOptions {
    pub offloads: Offloads,
    /// The MTU of every link (both ends); the kernel's 1500 if `None`.
    pub mtu: Option<u32>,
}

pub struct Topology {
    // Field order is drop order: backends, then node, then client.
    pub backends: Vec<Netns>,
    pub node: Netns,
    pub client: Netns,
}

pub fn backend_v4(i: usize) -> IpAddr {
    format!("198.19.{i}.2").parse().expect("valid address")
}

pub fn backend_v6(i: usize) -> IpAddr {
    format!("2001:db8:1:{i}::2").parse().expect("valid address")
}

/// A veth pair `a_if` (in `a`) ↔ `b_if` (in `b`), up, as the topology
/// makes them (also for tests that delete and recreate one).
pub fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str, options: LinkOptions) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        if let Some(mtu) = options.mtu {
            ns.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
        match options.offloads {
            Offloads::Default => {}
            Offloads::TxCsumOff => {
                ns.exec("ethtool", &["-K", ifname, "tx", "off"])?;
            }
        }
    }
    Ok(())
}

/// Adds `cidr` to `ifname` (IPv6 without duplicate address detection).
pub fn addr(ns: &Netns, cidr: &str, ifname: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
    } else {
        ns.ip(&["addr", "add", cidr, "dev", ifname])
    }
}

impl Topology {
    /// `tag` goes into the namespace names (keep it short and unique per
    /// test). Links keep the kernel's default offloads and MTU.
    pub fn new(tag: &str, backends: usize) -> Result<Self> {
        Self::with(tag, backends, LinkOptions::default())
    }

    /// As [`Topology::new`], with `options` applied to every link.
    pub fn with(tag: &str, backends: usize, options: LinkOptions) -> Result<Self> {
        crate::require_root();
        let client = Netns::new(&unique_name(&format!("{tag}-c")))?;
        let node = Netns::new(&unique_name(&format!("{tag}-n")))?;
        let mut topo = Topology {
            backends: Vec::new(),
            node,
            client,
        };
        link(&topo.client, "eth-n", &topo.node, NODE_IFACE, options)?;
        // A veth takes frames redirected into it by XDP (the fast path, the
        // ICMP port unreachable portmap answers with) only with NAPI on,
        // i.e. GRO on or an XDP program: as the client's NIC would.
        topo.client.exec("ethtool", &["-K", "eth-n", "gro", "on"])?;
        addr(&topo.client, "198.18.0.2/24", "eth-n")?;
        addr(&topo.client, "2001:db8::2/64", "eth-n")?;
        for cidr in [
            "198.18.0.1/24",
            "198.18.0.3/24",
            "2001:db8::1/64",
            "2001:db8::3/64",
        ] {
            addr(&topo.node, cidr, NODE_IFACE)?;
        }
        topo.client
            .ip(&["route", "add", "default", "via", NODE_V4])?;
        topo.client
            .ip(&["-6", "route", "add", "default", "via", NODE_V6])?;
        for i in 0..backends {
            let ns = Netns::new(&unique_name(&format!("{tag}-b{i}")))?;
            let node_if = format!("eth-b{i}");
            link(&topo.node, &node_if, &ns, "eth-n", options)?;
            addr(&topo.node, &format!("198.19.{i}.1/24"), &node_if)?;
            addr(&topo.node, &format!("2001:db8:1:{i}::1/64"), &node_if)?;
            addr(&ns, &format!("198.19.{i}.2/24"), "eth-n")?;
            addr(&ns, &format!("2001:db8:1:{i}::2/64"), "eth-n")?;
            ns.ip(&["route", "add", "default", "via", &format!("198.19.{i}.1")])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:db8:1:{i}::1"),
            ])?;
            topo.backends.push(ns);
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    /// A test that fails between stopping one daemon and starting the next
    /// may leave a kept dataplane pinned; nothing outlives the topology.
    fn drop(&mut self) {
        crate::daemon::reset_pins(&crate::daemon::pin_dir(&self.node));
    }
}
