//! A cluster in namespaces: three nodes on a shared underlay, each with two
//! pods behind a bridge of its own, and a client outside the cluster.
//!
//! ```text
//!                       underlay (br0, in namespace "u")
//!   client 198.18.100.100 ─┬──────────────┬──────────────┐
//!                   node a .1       node b .2       node c .3     eth0
//!                   pbr 198.19.10.1  198.19.11.1    198.19.12.1   (the pods' gateway)
//!                    ├ pod a0 .2      ├ pod b0 .2    ├ pod c0 .2
//!                    └ pod a1 .3      └ pod b1 .3    └ pod c1 .3
//! ```
//! IPv6 alike: the underlay 2001:db8:100::/64 (node i at ::i+1, the client
//! at ::100), node i's pods in 2001:db8:2:i::/64. Each node routes the other
//! nodes' pod ranges through their underlay addresses; the client has no
//! route to any pod, as a client outside a cluster has none: a pod's reply
//! that does not come back through the node the client talked to reaches
//! it from an address it never sent to, and is refused.
//!
//! The bridge of the underlay lives in a namespace of its own, so the root
//! namespace is never part of it.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use portmap_testkit::topo::{LinkOptions, addr, link};

use crate::{
    daemon::Portmap,
    kube::{Ep, ManifestDir, slice},
    netns::Netns,
    server::Server,
    unique_name,
};

pub const NODE_NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// The nodes' (and the client's) interface on the underlay.
pub const UNDERLAY_IF: &str = "eth0";
pub const PODS_PER_NODE: usize = 2;

pub fn node_ip(node: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("2001:db8:100::{}", node + 1)
            .parse()
            .expect("address")
    } else {
        format!("198.18.100.{}", node + 1).parse().expect("address")
    }
}

pub fn client_ip(v6: bool) -> IpAddr {
    if v6 {
        "2001:db8:100::100"
    } else {
        "198.18.100.100"
    }
    .parse()
    .expect("address")
}

pub fn pod_ip(node: usize, pod: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("2001:db8:2:{node}::{}", pod + 2)
            .parse()
            .expect("address")
    } else {
        format!("198.19.{}.{}", 10 + node, pod + 2)
            .parse()
            .expect("address")
    }
}

fn pod_gateway(node: usize, v6: bool) -> String {
    if v6 {
        format!("2001:db8:2:{node}::1")
    } else {
        format!("198.19.{}.1", 10 + node)
    }
}

fn pod_range(node: usize, v6: bool) -> String {
    if v6 {
        format!("2001:db8:2:{node}::/64")
    } else {
        format!("198.19.{}.0/24", 10 + node)
    }
}

pub struct Cluster {
    // Field order is drop order: pods, nodes, client, then the underlay.
    /// `pods[node][pod]`.
    pub pods: Vec<Vec<Netns>>,
    pub nodes: Vec<Netns>,
    pub client: Netns,
    pub underlay: Netns,
}

impl Cluster {
    /// Builds it in namespaces named after `tag`; whatever is built is
    /// deleted again if a later step fails.
    pub fn build(tag: &str, links: LinkOptions) -> Result<Self> {
        let base = unique_name(tag);
        let name = |what: &str| format!("{base}-{what}");
        let underlay = Netns::new(&name("u"))?;
        let client = Netns::new(&name("c"))?;
        let mut cluster = Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            client,
            underlay,
        };
        let u = &cluster.underlay;
        u.ip(&["link", "add", "br0", "type", "bridge"])?;
        u.ip(&["link", "set", "br0", "up"])?;
        let attach = |port: &str, peer: &Netns| -> Result<()> {
            link(u, port, peer, UNDERLAY_IF, links)?;
            u.ip(&["link", "set", port, "master", "br0"])
        };
        attach("uc", &cluster.client)?;
        for v6 in [false, true] {
            let plen = if v6 { 64 } else { 24 };
            addr(
                &cluster.client,
                &format!("{}/{plen}", client_ip(v6)),
                UNDERLAY_IF,
            )?;
        }
        for (i, node_name) in NODE_NAMES.iter().enumerate() {
            let node = Netns::new(&name(&node_name.replace("node-", "n")))?;
            cluster.nodes.push(node);
            let node = &cluster.nodes[i];
            attach(&format!("u{i}"), node)?;
            node.sysctl("net/ipv4/ip_forward", "1")?;
            node.sysctl("net/ipv6/conf/all/forwarding", "1")?;
            node.ip(&["link", "add", "pbr", "type", "bridge"])?;
            node.ip(&["link", "set", "pbr", "up"])?;
            for v6 in [false, true] {
                let plen = if v6 { 64 } else { 24 };
                addr(node, &format!("{}/{plen}", node_ip(i, v6)), UNDERLAY_IF)?;
                addr(node, &format!("{}/{plen}", pod_gateway(i, v6)), "pbr")?;
                for other in (0..NODE_NAMES.len()).filter(|o| *o != i) {
                    let via = node_ip(other, v6).to_string();
                    let family = if v6 { "-6" } else { "-4" };
                    node.ip(&[family, "route", "add", &pod_range(other, v6), "via", &via])?;
                }
            }
            let mut pods = Vec::new();
            for p in 0..PODS_PER_NODE {
                let pod = Netns::new(&name(&format!("{}p{p}", &node_name[5..])))?;
                let port = format!("p{p}");
                link(node, &port, &pod, "eth0", links)?;
                node.ip(&["link", "set", &port, "master", "pbr"])?;
                for v6 in [false, true] {
                    let plen = if v6 { 64 } else { 24 };
                    addr(&pod, &format!("{}/{plen}", pod_ip(i, p, v6)), "eth0")?;
                    let family = if v6 { "-6" } else { "-4" };
                    pod.ip(&[
                        family,
                        "route",
                        "add",
                        "default",
                        "via",
                        &pod_gateway(i, v6),
                    ])?;
                }
                pods.push(pod);
            }
            cluster.pods.push(pods);
        }
        Ok(cluster)
    }

    /// The node a pod runs on, by name.
    pub fn node_name(node: usize) -> &'static str {
        NODE_NAMES[node]
    }
}

/// The pods' test servers listen on these ports: `HTTP` (TCP), `DNS` (UDP);
/// a test that starts nginx in a pod gives it `BULK`.
pub const HTTP: u16 = 8080;
pub const DNS: u16 = 9053;
pub const BULK: u16 = 8081;

/// The pods' servers: a test server (TCP `HTTP`, UDP `DNS`) in every pod,
/// named `a0`, `b1`, ...
pub fn servers(cluster: &Cluster) -> Vec<Server> {
    let mut servers = Vec::new();
    for (n, pods) in cluster.pods.iter().enumerate() {
        for (p, pod) in pods.iter().enumerate() {
            let ips = [pod_ip(n, p, false), pod_ip(n, p, true)];
            let tcp: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, HTTP)).collect();
            let udp: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, DNS)).collect();
            let name = format!("{}{p}", &NODE_NAMES[n][5..]);
            servers.push(Server::start(pod, &name, &tcp, &udp).expect("test server"));
        }
    }
    servers
}

/// A dual-stack Service `name` of `type_` (with extra spec lines), ports
/// http 80 → `HTTP` (nodePort `node_port`), dns 53 → `DNS` (UDP, nodePort
/// `node_port + 1`) and bulk 81 → `BULK` (nodePort `node_port + 2`), with
/// the endpoints `pods` ((node, pod) pairs).
pub fn service(
    name: &str,
    cluster_ip: u8,
    node_port: u16,
    extra: &str,
    pods: &[(usize, usize)],
) -> String {
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n{extra}  clusterIP: 198.18.128.{cluster_ip}\n  clusterIPs: [198.18.128.{cluster_ip}, \"2001:db8:ffff::{cluster_ip}\"]\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  ports:\n  - {{name: http, port: 80, targetPort: {HTTP}, nodePort: {node_port}, protocol: TCP}}\n  - {{name: dns, port: 53, targetPort: {DNS}, nodePort: {}, protocol: UDP}}\n  - {{name: bulk, port: 81, targetPort: {BULK}, nodePort: {}, protocol: TCP}}\n",
        node_port + 1,
        node_port + 2
    );
    let ports = [
        ("http", HTTP, "TCP"),
        ("dns", DNS, "UDP"),
        ("bulk", BULK, "TCP"),
    ];
    let mut docs = vec![svc];
    for v6 in [false, true] {
        let endpoints: Vec<Ep> = pods
            .iter()
            .map(|(n, p)| Ep::ready(pod_ip(*n, *p, v6), NODE_NAMES[*n]))
            .collect();
        let slice_name = format!("{name}-{}", if v6 { "v6" } else { "v4" });
        docs.push(slice(name, &slice_name, &endpoints, &ports));
    }
    docs.join("---\n")
}

/// `portmap run` on every node, on the underlay interface, with `extra`
/// arguments per node.
pub fn start_portmaps(
    cluster: &Cluster,
    manifests: &ManifestDir,
    extra: &[&[&str]],
) -> Vec<Portmap> {
    (0..cluster.nodes.len())
        .map(|i| start_portmap(cluster, i, manifests, extra.get(i).copied().unwrap_or(&[])))
        .collect()
}

/// `portmap run` on node `node` (a restart reuses its pins).
pub fn start_portmap(
    cluster: &Cluster,
    node: usize,
    manifests: &ManifestDir,
    extra: &[&str],
) -> Portmap {
    let dir = manifests.arg().to_str().unwrap().to_string();
    let mut args = vec![
        "--iface",
        UNDERLAY_IF,
        "--manifests",
        &dir,
        "--node-name",
        NODE_NAMES[node],
        "--service-cidr",
        "198.18.128.0/20",
        "--service-cidr",
        "2001:db8:ffff::/112",
    ];
    args.extend_from_slice(extra);
    Portmap::start(&cluster.nodes[node], &args).expect("portmap run")
}

pub fn at(node: usize, v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(node_ip(node, v6), port)
}
