//! The benchmark's topology (`portmap_testkit::topo`), built anew for every
//! measurement so that no kernel state (conntrack, neighbours, rules) carries
//! over: IPv4 only, four backends.
//!
//! Service VIPs are 198.19.64.0/18. MAC addresses of the client's link are
//! fixed so the load generator's frames can be built before the links exist.
//! For the UDP and latency measurements transmit checksum offload is off on
//! every veth; the TCP measurements give it back ([`default_offloads`]), so
//! they run with what veth has by default (checksum offload, scatter-gather,
//! TSO, GSO). GRO is on at the client and the backends (the ends that stand
//! for other hosts, whose NICs have it) so that frames redirected by XDP into
//! their veths are received even when no XDP program is attached there.

use anyhow::{Context as _, Result};
pub use portmap_testkit::topo::{
    BACKEND_IF, CLIENT_IF, CLIENT_IP, NODE_IFACE as NODE_CLIENT_IF, NODE_IP, Topology, backend_ip,
    node_backend_if,
};
use portmap_testkit::{
    netns::Netns,
    process::{output, run_ok, tool},
    topo::{LinkOptions, Offloads, Options},
};

/// Backend namespaces.
pub const BACKENDS: usize = 4;
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];
pub const NODE_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
/// The port backends listen on (TCP echo) and receive UDP load on.
pub const BACKEND_PORT: u16 = 8080;

/// Namespaces `<prefix>-c`, `<prefix>-n` and `<prefix>-b<i>`, with the node
/// forwarding and without reverse-path filtering (the modes other than
/// portmap route through it).
pub fn new(prefix: &str) -> Result<Topology> {
    let options = Options {
        backends: BACKENDS,
        links: LinkOptions {
            offloads: Offloads::TxCsumOff,
            mtu: None,
        },
        dual_stack: false,
        gro_at_backends: true,
        client_link_macs: Some((CLIENT_MAC, NODE_MAC)),
    };
    let topo = Topology::build(|role| format!("{prefix}-{role}"), &options)?;
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ] {
        topo.node.sysctl(key, value)?;
    }
    topo.node
        .sysctl(&format!("net/ipv4/conf/{NODE_CLIENT_IF}/rp_filter"), "0")?;
    Ok(topo)
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
        .enter(|| output(tool("ethtool").args(["-k", ifname])))?
        .with_context(|| format!("in {}", ns.name()))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (name, state) = l.trim().split_once(':')?;
            state.trim().starts_with("on").then(|| name.to_string())
        })
        .collect())
}

/// A veth end: its namespace, its name, and whether it stands for another
/// host (GRO on there).
pub type Veth<'a> = (&'a Netns, String, bool);

/// Every veth of the topology (client, backends: other hosts).
fn veths(topo: &Topology) -> Vec<Veth<'_>> {
    let mut v = vec![
        (&topo.client, CLIENT_IF.to_string(), true),
        (&topo.node, NODE_CLIENT_IF.to_string(), false),
    ];
    for (i, ns) in topo.backends.iter().enumerate() {
        v.push((&topo.node, node_backend_if(i), false));
        v.push((ns, BACKEND_IF.to_string(), true));
    }
    v
}

/// Gives every veth its default offloads back (transmit checksum offload,
/// and with it TSO) and checks that checksum offload, scatter-gather and
/// GSO are on, and GRO where it was. Returns the interfaces whose TSO is
/// off all the same: the kernel turns it off on a veth whose peer runs an
/// XDP program (so that no frame is too big for XDP), as portmap's do.
pub fn default_offloads(topo: &Topology) -> Result<Vec<String>> {
    default_offloads_of(&veths(topo))
}

/// [`default_offloads`] of the given veth ends.
pub fn default_offloads_of(veths: &[Veth<'_>]) -> Result<Vec<String>> {
    let mut tso_off = Vec::new();
    for (ns, ifname, _) in veths {
        ns.enter(|| run_ok(tool("ethtool").args(["-K", ifname, "tx", "on"])))?
            .with_context(|| format!("ethtool -K {ifname} tx on in {}", ns.name()))?;
    }
    for (ns, ifname, gro) in veths {
        let on = features_on(ns, ifname)?;
        let wanted = DEFAULT_OFFLOADS
            .iter()
            .filter(|f| *gro || !f.contains("receive"));
        if let Some(missing) = wanted.into_iter().find(|f| !on.iter().any(|o| o == *f)) {
            anyhow::bail!("{ifname} in {}: {missing} is off", ns.name());
        }
        if !on.iter().any(|o| o == "tx-tcp-segmentation") {
            let role = match ns.name().rsplit('-').next().unwrap_or("") {
                "c" => "client".to_string(),
                "n" => "node".to_string(),
                "r" => "router".to_string(),
                b => b.replacen('b', "backend", 1),
            };
            tso_off.push(format!("{role}/{ifname}"));
        }
    }
    Ok(tso_off)
}
