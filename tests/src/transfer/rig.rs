//! One topology for a whole transfer matrix: a client, the node, one
//! backend running nginx, iperf3 and a UDP mirror, Kubernetes manifests, a
//! cgroup for the node's own processes, and (once the control transfers
//! have run without it) one `portmap run` publishing all of it.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};

use super::{
    content::{Blob, DataDir},
    iperf::Iperf3Server,
    nginx::Nginx,
};
use crate::{
    cgroup::Cgroup,
    daemon::Portmap,
    kube::{Ep, ManifestDir, slice},
    metrics::Samples,
    server::Server,
    topo::{LinkOptions, NODE_IFACE, NODE_V4, NODE_V6, Topology, backend_v4, backend_v6},
};

/// Ports in the backend.
pub const HTTP_PORT: u16 = 80;
pub const IPERF_PORT: u16 = 5201;
pub const MIRROR_PORT: u16 = 5353;
/// Frontend ports.
pub const PUBLISHED_HTTP: u16 = 8080;
pub const PUBLISHED_IPERF: u16 = 5201;
pub const PUBLISHED_UDP: u16 = 8053;
pub const NODE_PORT: u16 = 30080;
pub const CLUSTER_V4: &str = "198.18.128.10";
pub const CLUSTER_V6: &str = "2001:db8:ffff::10";
pub const CLUSTER_PORT: u16 = 80;

pub const MIB: usize = 1 << 20;
/// The size of the bulk transfers.
pub const BULK: usize = 16 * MIB;
/// Parallel downloads, and the size of each.
pub const PARALLEL: usize = 32;
pub const PARALLEL_SIZE: usize = MIB;

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// `-p 8080:BACKEND:80`, on the node's address.
    Published,
    /// A NodePort Service, on the node's address.
    NodePort,
    /// The same Service's ClusterIP.
    ClusterIp,
}

impl Frontend {
    pub const ALL: [Frontend; 3] = [Frontend::Published, Frontend::NodePort, Frontend::ClusterIp];

    pub fn name(self) -> &'static str {
        match self {
            Frontend::Published => "published",
            Frontend::NodePort => "nodeport",
            Frontend::ClusterIp => "clusterip",
        }
    }

    /// The address a client connects to.
    pub fn addr(self, v6: bool) -> SocketAddr {
        let (ip, port) = match (self, v6) {
            (Frontend::Published, false) => (NODE_V4, PUBLISHED_HTTP),
            (Frontend::Published, true) => (NODE_V6, PUBLISHED_HTTP),
            (Frontend::NodePort, false) => (NODE_V4, NODE_PORT),
            (Frontend::NodePort, true) => (NODE_V6, NODE_PORT),
            (Frontend::ClusterIp, false) => (CLUSTER_V4, CLUSTER_PORT),
            (Frontend::ClusterIp, true) => (CLUSTER_V6, CLUSTER_PORT),
        };
        SocketAddr::new(ip.parse::<IpAddr>().expect("valid address"), port)
    }

    /// Its `frontend` label in portmap's metrics.
    pub fn label(self, v6: bool) -> String {
        match (self, v6) {
            (Frontend::Published, false) => format!("*:{PUBLISHED_HTTP}/tcp"),
            (Frontend::Published, true) => format!("[*]:{PUBLISHED_HTTP}/tcp"),
            (Frontend::NodePort, false) => format!("*:{NODE_PORT}/tcp"),
            (Frontend::NodePort, true) => format!("[*]:{NODE_PORT}/tcp"),
            (Frontend::ClusterIp, false) => format!("{CLUSTER_V4}:{CLUSTER_PORT}/tcp"),
            (Frontend::ClusterIp, true) => format!("[{CLUSTER_V6}]:{CLUSTER_PORT}/tcp"),
        }
    }
}

pub fn family(v6: bool) -> &'static str {
    if v6 { "v6" } else { "v4" }
}

/// What one rig varies.
#[derive(Clone, Copy, Debug, Default)]
pub struct RigOptions {
    pub links: LinkOptions,
    /// `--backend-iface` on the backend's link: the XDP fast path.
    pub fast_path: bool,
}

/// The files nginx serves and the one clients upload.
pub struct Blobs {
    /// Downloaded, BULK bytes.
    pub bulk: Blob,
    /// Uploaded, BULK bytes (other content than `bulk`).
    pub upload: Blob,
    /// Downloaded in parallel, each of other content.
    pub parallel: Vec<Blob>,
}

/// Field order is drop order: the daemon first, the namespaces last.
pub struct Rig {
    pub pm: Option<Portmap>,
    _iperf: Iperf3Server,
    _mirror: Server,
    pub nginx: Nginx,
    manifests: ManifestDir,
    pub cgroup: Cgroup,
    pub blobs: Blobs,
    _data: DataDir,
    pub topo: Topology,
    pub options: RigOptions,
}

/// A dual-stack NodePort Service over the backend's nginx.
fn service_yaml() -> String {
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {CLUSTER_V4}\n  clusterIPs: [{CLUSTER_V4}, \"{CLUSTER_V6}\"]\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  ports:\n  - {{name: http, port: {CLUSTER_PORT}, targetPort: {HTTP_PORT}, nodePort: {NODE_PORT}, protocol: TCP}}\n"
    );
    let ports = [("http", HTTP_PORT, "TCP")];
    [
        svc,
        slice(
            "web",
            "web-v4",
            &[Ep::ready(backend_v4(0), "node-a")],
            &ports,
        ),
        slice(
            "web",
            "web-v6",
            &[Ep::ready(backend_v6(0), "node-a")],
            &ports,
        ),
    ]
    .join("---\n")
}

impl Rig {
    /// Everything but portmap: see [`Rig::start_portmap`].
    pub fn new(tag: &str, options: RigOptions) -> Result<Self> {
        let topo = Topology::with(tag, 1, options.links)?;
        // A node forwards (Docker and kubelet turn it on; so does portmap
        // when it starts): the control transfers without portmap need it.
        topo.node.sysctl("net/ipv4/ip_forward", "1")?;
        topo.node.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        let backend = &topo.backends[0];
        if options.fast_path {
            // The backend's end takes XDP_REDIRECTed frames only with NAPI
            // on, as a NIC's would: GRO on a veth.
            backend.exec("ethtool", &["-K", "eth-n", "gro", "on"])?;
        }
        let data = DataDir::new(tag)?;
        let root = data.sub("root")?;
        let seed = u64::from(std::process::id());
        let blobs = Blobs {
            bulk: Blob::write(root.join("bulk.bin"), BULK, seed)?,
            upload: Blob::write(data.path().join("upload.bin"), BULK, seed + 1)?,
            parallel: (0..PARALLEL)
                .map(|i| {
                    Blob::write(
                        root.join(format!("part-{i}.bin")),
                        PARALLEL_SIZE,
                        seed + 2 + i as u64,
                    )
                })
                .collect::<Result<_>>()?,
        };
        let (b4, b6) = (backend_v4(0), backend_v6(0));
        let nginx = Nginx::start(
            backend,
            &[
                SocketAddr::new(b4, HTTP_PORT),
                SocketAddr::new(b6, HTTP_PORT),
            ],
            &root,
            &data.sub("nginx")?,
        )?;
        let mirror = Server::udp_mirror(
            backend,
            "mirror",
            &[
                SocketAddr::new(b4, MIRROR_PORT),
                SocketAddr::new(b6, MIRROR_PORT),
            ],
        )?;
        let iperf = Iperf3Server::start(backend, IPERF_PORT)?;
        let manifests = ManifestDir::new(tag)?;
        manifests.write("web.yaml", &service_yaml())?;
        let cgroup = Cgroup::new(tag)?;
        Ok(Rig {
            pm: None,
            _iperf: iperf,
            _mirror: mirror,
            nginx,
            manifests,
            cgroup,
            blobs,
            _data: data,
            topo,
            options,
        })
    }

    /// Starts `portmap run` publishing nginx (`-p 8080`, the Service's
    /// NodePort and ClusterIP), iperf3 (`-p 5201`) and the mirror (`-p
    /// 8053/udp`), both families, with socket-level load balancing for the
    /// rig's cgroup and, if asked, the fast path.
    pub fn start_portmap(&mut self) -> Result<()> {
        let manifests = self
            .manifests
            .arg()
            .to_str()
            .context("a UTF-8 path")?
            .to_string();
        let (b4, b6) = (backend_v4(0), backend_v6(0));
        let publish = [
            format!("{PUBLISHED_HTTP}:{b4}:{HTTP_PORT}"),
            format!("{PUBLISHED_HTTP}:[{b6}]:{HTTP_PORT}"),
            format!("{PUBLISHED_IPERF}:{b4}:{IPERF_PORT}"),
            format!("{PUBLISHED_IPERF}:[{b6}]:{IPERF_PORT}"),
            format!("{PUBLISHED_UDP}:{b4}:{MIRROR_PORT}/udp"),
            format!("{PUBLISHED_UDP}:[{b6}]:{MIRROR_PORT}/udp"),
        ];
        let mut args = vec!["--iface", NODE_IFACE, "--cgroup", self.cgroup.arg()];
        if self.options.fast_path {
            args.extend(["--backend-iface", "eth-b0"]);
        }
        for p in &publish {
            args.extend(["-p", p]);
        }
        args.extend([
            "--manifests",
            &manifests,
            "--service-cidr",
            "198.18.128.0/20",
            "--service-cidr",
            "2001:db8:ffff::/112",
            "--node-name",
            "node-a",
        ]);
        self.pm = Some(Portmap::start(&self.topo.node, &args)?);
        Ok(())
    }

    /// portmap's metrics now (empty before it runs).
    pub fn metrics(&self) -> Result<Samples> {
        match &self.pm {
            Some(pm) => pm.metrics(&self.topo.node).with_context(|| {
                let logs = pm.logs();
                let tail: Vec<&str> = logs.lines().rev().take(3).collect();
                format!(
                    "scraping portmap (its last log lines, newest first: {})",
                    tail.join(" / ")
                )
            }),
            None => Ok(Samples::default()),
        }
    }

    /// The MTU of the rig's links.
    pub fn mtu(&self) -> u32 {
        self.options.links.mtu.unwrap_or(1500)
    }

    /// The backend's nginx, reached directly (no frontend).
    pub fn direct_http(&self, v6: bool) -> SocketAddr {
        let ip = if v6 { backend_v6(0) } else { backend_v4(0) };
        SocketAddr::new(ip, HTTP_PORT)
    }

    /// The backend's iperf3 server, reached directly.
    pub fn direct_iperf(&self, v6: bool) -> SocketAddr {
        let ip = if v6 { backend_v6(0) } else { backend_v4(0) };
        SocketAddr::new(ip, IPERF_PORT)
    }

    /// The backend's UDP mirror, reached directly.
    pub fn direct_mirror(&self, v6: bool) -> SocketAddr {
        let ip = if v6 { backend_v6(0) } else { backend_v4(0) };
        SocketAddr::new(ip, MIRROR_PORT)
    }

    /// The node's address in a family.
    pub fn node_ip(v6: bool) -> IpAddr {
        if v6 { NODE_V6 } else { NODE_V4 }
            .parse()
            .expect("valid address")
    }
}
