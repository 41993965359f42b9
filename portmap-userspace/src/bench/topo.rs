//! The benchmark's topology, built anew for every measurement so that no
//! kernel state (conntrack, neighbours, rules) carries over:
//!
//! ```text
//!  client ns            node ns                        backend ns i (0..4)
//!  eth-n 198.18.0.2 ─── eth-c 198.18.0.1
//!                       eth-bi 198.19.i.1 ─────────── eth-n 198.19.i.2
//! ```
//!
//! Every address is in 198.18.0.0/15 (RFC 2544 benchmarking); Service VIPs
//! are 198.19.64.0/18. MAC addresses are fixed so the load generator's frames
//! can be built before the links exist. For the UDP and latency measurements
//! transmit checksum offload is off on every veth; the TCP measurements give
//! it back ([`Topology::default_offloads`]), so they run with what veth has by
//! default (checksum offload, scatter-gather, TSO, GSO). GRO is on at the
//! client and the backends (the ends that stand for other hosts, whose NICs
//! have it) so that frames redirected by XDP into their veths are received
//! even when no XDP program is attached there.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result};

use super::netns::{Netns, run_ok};

/// Backend namespaces.
pub const BACKENDS: usize = 4;
/// The client's interface, towards the node.
pub const CLIENT_IF: &str = "eth-n";
/// The node's interface towards the client: where portmap attaches.
pub const NODE_CLIENT_IF: &str = "eth-c";
/// A backend's interface, towards the node.
pub const BACKEND_IF: &str = "eth-n";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];
pub const NODE_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
/// The port backends listen on (TCP echo) and receive UDP load on.
pub const BACKEND_PORT: u16 = 8080;

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, i as u8, 2)
}

pub fn node_backend_if(i: usize) -> String {
    format!("eth-b{i}")
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

pub struct Topology {
    // Field order is drop order: backends, then node, then client.
    pub backends: Vec<Netns>,
    pub node: Netns,
    pub client: Netns,
}

/// Interface settings: transmit checksum offload off (a wrong checksum is
/// then dropped, not forgiven as "partial"), GRO as asked.
fn tune(ns: &Netns, ifname: &str, gro: bool) -> Result<()> {
    let gro = if gro { "on" } else { "off" };
    ns.enter(|| run_ok(Command::new("ethtool").args(["-K", ifname, "tx", "off", "gro", gro])))?
        .with_context(|| format!("ethtool -K {ifname} in {}", ns.name()))
}

fn veth(
    a: &Netns,
    a_if: &str,
    a_mac: Option<[u8; 6]>,
    b: &Netns,
    b_if: &str,
    b_mac: Option<[u8; 6]>,
) -> Result<()> {
    let mut args: Vec<String> = vec!["link".into(), "add".into(), a_if.into()];
    if let Some(m) = a_mac {
        args.extend(["address".into(), mac(m)]);
    }
    args.extend(["type", "veth", "peer", "name", b_if].map(String::from));
    if let Some(m) = b_mac {
        args.extend(["address".into(), mac(m)]);
    }
    args.extend(["netns".into(), b.name().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    a.ip(&args)?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])
}

/// Offload features the TCP measurements need on, as `ethtool -k` names them.
const DEFAULT_OFFLOADS: [&str; 4] = [
    "tx-checksum-ip-generic",
    "tx-scatter-gather",
    "generic-segmentation-offload",
    "generic-receive-offload",
];

/// The features `ethtool -k` shows on, of those it lists.
fn features_on(ns: &Netns, ifname: &str) -> Result<Vec<String>> {
    let out = ns
        .enter(|| Command::new("ethtool").args(["-k", ifname]).output())?
        .with_context(|| format!("ethtool -k {ifname} in {}", ns.name()))?;
    if !out.status.success() {
        anyhow::bail!(
            "ethtool -k {ifname} in {} failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, state) = l.trim().split_once(':')?;
            state.trim().starts_with("on").then(|| name.to_string())
        })
        .collect())
}

impl Topology {
    /// Every veth of the topology: its namespace, its name, and whether it
    /// stands for another host (client, backends: GRO on).
    fn veths(&self) -> Vec<(&Netns, String, bool)> {
        let mut v = vec![
            (&self.client, CLIENT_IF.to_string(), true),
            (&self.node, NODE_CLIENT_IF.to_string(), false),
        ];
        for (i, ns) in self.backends.iter().enumerate() {
            v.push((&self.node, node_backend_if(i), false));
            v.push((ns, BACKEND_IF.to_string(), true));
        }
        v
    }

    /// Gives every veth its default offloads back (transmit checksum offload,
    /// and with it TSO) and checks that checksum offload, scatter-gather and
    /// GSO are on, and GRO where it was. Returns the interfaces whose TSO is
    /// off all the same: the kernel turns it off on a veth whose peer runs an
    /// XDP program (so that no frame is too big for XDP), as portmap's do.
    pub fn default_offloads(&self) -> Result<Vec<String>> {
        let mut tso_off = Vec::new();
        for (ns, ifname, _) in self.veths() {
            ns.enter(|| run_ok(Command::new("ethtool").args(["-K", &ifname, "tx", "on"])))?
                .with_context(|| format!("ethtool -K {ifname} tx on in {}", ns.name()))?;
        }
        for (ns, ifname, gro) in self.veths() {
            let on = features_on(ns, &ifname)?;
            let wanted = DEFAULT_OFFLOADS
                .iter()
                .filter(|f| gro || !f.contains("receive"));
            if let Some(missing) = wanted.into_iter().find(|f| !on.iter().any(|o| o == *f)) {
                anyhow::bail!("{ifname} in {}: {missing} is off", ns.name());
            }
            if !on.iter().any(|o| o == "tx-tcp-segmentation") {
                let role = match ns.name().rsplit('-').next().unwrap_or("") {
                    "c" => "client".to_string(),
                    "n" => "node".to_string(),
                    b => b.replacen('b', "backend", 1),
                };
                tso_off.push(format!("{role}/{ifname}"));
            }
        }
        Ok(tso_off)
    }

    /// Namespaces `<prefix>-c`, `<prefix>-n` and `<prefix>-b<i>`.
    pub fn new(prefix: &str) -> Result<Self> {
        let client = Netns::new(&format!("{prefix}-c"))?;
        let node = Netns::new(&format!("{prefix}-n"))?;
        let mut topo = Topology {
            backends: Vec::new(),
            node,
            client,
        };
        let (client, node) = (&topo.client, &topo.node);
        veth(
            client,
            CLIENT_IF,
            Some(CLIENT_MAC),
            node,
            NODE_CLIENT_IF,
            Some(NODE_MAC),
        )?;
        tune(client, CLIENT_IF, true)?;
        tune(node, NODE_CLIENT_IF, false)?;
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", CLIENT_IF])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            NODE_CLIENT_IF,
        ])?;
        client.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        for key in [
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/rp_filter",
        ] {
            let value = if key.ends_with("ip_forward") {
                "1"
            } else {
                "0"
            };
            node.sysctl(key, value)?;
        }
        for i in 0..BACKENDS {
            let ns = Netns::new(&format!("{prefix}-b{i}"))?;
            let node_if = node_backend_if(i);
            veth(&topo.node, &node_if, None, &ns, BACKEND_IF, None)?;
            tune(&topo.node, &node_if, false)?;
            tune(&ns, BACKEND_IF, true)?;
            topo.node
                .ip(&["addr", "add", &format!("198.19.{i}.1/24"), "dev", &node_if])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", backend_ip(i)),
                "dev",
                BACKEND_IF,
            ])?;
            ns.ip(&["route", "add", "default", "via", &format!("198.19.{i}.1")])?;
            topo.backends.push(ns);
        }
        topo.node
            .sysctl(&format!("net/ipv4/conf/{NODE_CLIENT_IF}/rp_filter"), "0")?;
        Ok(topo)
    }
}
