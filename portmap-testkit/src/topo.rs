//! The topology tests and the benchmark build: a client namespace, a node
//! namespace (where portmap, iptables or nftables run, on the node's
//! client-facing veth) and one namespace per backend.
//!
//! ```text
//!  client                node                          backend i
//!  eth-n 198.18.0.2  ─── eth-c 198.18.0.1
//!        2001:db8::2           2001:db8::1
//!                        eth-bi 198.19.i.1  ───────── eth-n 198.19.i.2
//!                               2001:db8:1:i::1             2001:db8:1:i::2
//! ```
//! The IPv6 addresses, and the node's second addresses on the client side
//! (198.18.0.3, 2001:db8::3), only with [`Options::dual_stack`]. Every
//! address is in 198.18.0.0/15 (RFC 2544 benchmarking) or 2001:db8::/32
//! (documentation): no packet can leave for a real network.
//!
//! GRO is on at the client's end (and at the backends' with
//! [`Options::gro_at_backends`]), the ends that stand for other hosts, whose
//! NICs have it: a veth takes frames redirected into it by XDP only with
//! NAPI on, i.e. GRO on or an XDP program of its own.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;

use crate::netns::Netns;

/// The client's interface, towards the node.
pub const CLIENT_IF: &str = "eth-n";
/// The node's interface towards the client: where portmap attaches.
pub const NODE_IFACE: &str = "eth-c";
/// A backend's interface, towards the node.
pub const BACKEND_IF: &str = "eth-n";

pub const CLIENT_V4: &str = "198.18.0.2";
pub const CLIENT_V6: &str = "2001:db8::2";
pub const NODE_V4: &str = "198.18.0.1";
pub const NODE_V6: &str = "2001:db8::1";
pub const NODE_V4_ALT: &str = "198.18.0.3";
pub const NODE_V6_ALT: &str = "2001:db8::3";
/// [`CLIENT_V4`] and [`NODE_V4`] as addresses.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Backend `i`'s IPv4 address.
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, i as u8, 2)
}

pub fn backend_v4(i: usize) -> IpAddr {
    backend_ip(i).into()
}

pub fn backend_v6(i: usize) -> IpAddr {
    format!("2001:db8:1:{i}::2").parse().expect("valid address")
}

/// The node's interface towards backend `i`.
pub fn node_backend_if(i: usize) -> String {
    format!("eth-b{i}")
}

/// The offloads of every veth of a topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offloads {
    /// What the kernel gives a veth (as containers' veths have them): tx
    /// checksum offload, scatter-gather, TSO/GSO on; GRO off. The dataplane
    /// sees what users send: GSO super-packets, non-linear skbs, partial
    /// checksums.
    #[default]
    Default,
    /// `ethtool -K IF tx off`: every checksum is computed in full before a
    /// packet leaves (which also turns TSO off), so a checksum the dataplane
    /// gets wrong is dropped at the receiver instead of being forgiven as
    /// "partial".
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

/// What a topology has beyond the IPv4 addresses and routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Backend namespaces.
    pub backends: usize,
    pub links: LinkOptions,
    /// IPv6 addresses and routes, and the node's second addresses.
    pub dual_stack: bool,
    /// GRO on at the backends' ends too.
    pub gro_at_backends: bool,
    /// Fixed MAC addresses of the client's and the node's ends of their link
    /// (for frames built before the link exists).
    pub client_link_macs: Option<([u8; 6], [u8; 6])>,
}

pub struct Topology {
    // Field order is drop order: backends, then node, then client.
    pub backends: Vec<Netns>,
    pub node: Netns,
    pub client: Netns,
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A veth pair `a_if` (in `a`) ↔ `b_if` (in `b`) with the given MACs, up.
fn veth(
    (a, a_if): (&Netns, &str),
    (b, b_if): (&Netns, &str),
    options: LinkOptions,
    macs: Option<([u8; 6], [u8; 6])>,
) -> Result<()> {
    let mut args: Vec<String> = vec!["link".into(), "add".into(), a_if.into()];
    if let Some((m, _)) = macs {
        args.extend(["address".into(), mac(m)]);
    }
    args.extend(["type", "veth", "peer", "name", b_if].map(String::from));
    if let Some((_, m)) = macs {
        args.extend(["address".into(), mac(m)]);
    }
    args.extend(["netns".into(), b.name().to_string()]);
    a.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
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

/// A veth pair `a_if` (in `a`) ↔ `b_if` (in `b`), up, as the topology
/// makes them (also for tests that delete and recreate one).
pub fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str, options: LinkOptions) -> Result<()> {
    veth((a, a_if), (b, b_if), options, None)
}

/// Adds `cidr` to `ifname` (IPv6 without duplicate address detection).
pub fn addr(ns: &Netns, cidr: &str, ifname: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
    } else {
        ns.ip(&["addr", "add", cidr, "dev", ifname])
    }
}

fn gro_on(ns: &Netns, ifname: &str) -> Result<()> {
    ns.exec("ethtool", &["-K", ifname, "gro", "on"]).map(drop)
}

impl Topology {
    /// Builds the topology in namespaces named `names("c")` (client),
    /// `names("n")` (node) and `names("b0")`, `names("b1")`, ... (backends).
    /// Whatever is built is deleted again if a later step fails.
    pub fn build(names: impl Fn(&str) -> String, options: &Options) -> Result<Self> {
        let client = Netns::new(&names("c"))?;
        let node = Netns::new(&names("n"))?;
        let mut topo = Topology {
            backends: Vec::new(),
            node,
            client,
        };
        let (client, node) = (&topo.client, &topo.node);
        veth(
            (client, CLIENT_IF),
            (node, NODE_IFACE),
            options.links,
            options.client_link_macs,
        )?;
        gro_on(client, CLIENT_IF)?;
        let v6 = options.dual_stack;
        addr(client, &format!("{CLIENT_V4}/24"), CLIENT_IF)?;
        if v6 {
            addr(client, &format!("{CLIENT_V6}/64"), CLIENT_IF)?;
        }
        addr(node, &format!("{NODE_V4}/24"), NODE_IFACE)?;
        if v6 {
            addr(node, &format!("{NODE_V4_ALT}/24"), NODE_IFACE)?;
            addr(node, &format!("{NODE_V6}/64"), NODE_IFACE)?;
            addr(node, &format!("{NODE_V6_ALT}/64"), NODE_IFACE)?;
        }
        client.ip(&["route", "add", "default", "via", NODE_V4])?;
        if v6 {
            client.ip(&["-6", "route", "add", "default", "via", NODE_V6])?;
        }
        for i in 0..options.backends {
            let ns = Netns::new(&names(&format!("b{i}")))?;
            let node_if = node_backend_if(i);
            link(&topo.node, &node_if, &ns, BACKEND_IF, options.links)?;
            if options.gro_at_backends {
                gro_on(&ns, BACKEND_IF)?;
            }
            addr(&topo.node, &format!("198.19.{i}.1/24"), &node_if)?;
            if v6 {
                addr(&topo.node, &format!("2001:db8:1:{i}::1/64"), &node_if)?;
            }
            addr(&ns, &format!("{}/24", backend_ip(i)), BACKEND_IF)?;
            if v6 {
                addr(&ns, &format!("{}/64", backend_v6(i)), BACKEND_IF)?;
            }
            ns.ip(&["route", "add", "default", "via", &format!("198.19.{i}.1")])?;
            if v6 {
                let via = format!("2001:db8:1:{i}::1");
                ns.ip(&["-6", "route", "add", "default", "via", &via])?;
            }
            topo.backends.push(ns);
        }
        Ok(topo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_agree() {
        assert_eq!(CLIENT_IP.to_string(), CLIENT_V4);
        assert_eq!(NODE_IP.to_string(), NODE_V4);
        assert_eq!(backend_v4(3).to_string(), "198.19.3.2");
        assert_eq!(backend_v6(3).to_string(), "2001:db8:1:3::2");
    }
}
