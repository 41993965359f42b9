//! Kubernetes manifests for tests: a directory that cleans itself up, and
//! YAML for Services and EndpointSlices written the way kubectl prints them.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{daemon::Portmap, netns::Netns};

/// A directory of manifests, removed on drop.
pub struct ManifestDir {
    pub path: PathBuf,
}

impl ManifestDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = PathBuf::from(format!(
            "/run/portmap-tests/manifests-{}",
            crate::unique_name(tag)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Writes `name` atomically (write aside, rename), as a ConfigMap update
    /// or an editor's save would land.
    pub fn write(&self, name: &str, yaml: &str) -> Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.path.join(name))?;
        Ok(())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn arg(&self) -> &Path {
        &self.path
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: IpAddr,
    pub node: &'static str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    pub fn ready(ip: IpAddr, node: &'static str) -> Self {
        Ep {
            ip,
            node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    pub fn terminating(ip: IpAddr, node: &'static str) -> Self {
        Ep {
            ip,
            node,
            ready: false,
            serving: true,
            terminating: true,
        }
    }
}

/// An EndpointSlice of `service` with `endpoints` and `ports` (name, port, protocol).
pub fn slice(service: &str, name: &str, endpoints: &[Ep], ports: &[(&str, u16, &str)]) -> String {
    let family = if endpoints.first().is_some_and(|e| e.ip.is_ipv6()) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nendpoints:\n"
    );
    if endpoints.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    for e in endpoints {
        y += &format!(
            "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n",
            e.ip, e.node, e.ready, e.serving, e.terminating
        );
    }
    y += "ports:\n";
    for (pname, port, proto) in ports {
        y += &format!("- name: \"{pname}\"\n  port: {port}\n  protocol: {proto}\n");
    }
    y
}

/// Waits until the daemon has applied `n` more successful reloads than
/// `before` (read with [`reloads`]), at most 10 s.
pub fn wait_reloaded(pm: &Portmap, node: &Netns, before: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if reloads(pm, node, "success")? > before {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no successful reload within 10 s:\n{}", pm.logs())
}

/// Reloads so far with `result` ("success" or "failure").
pub fn reloads(pm: &Portmap, node: &Netns, result: &str) -> Result<f64> {
    Ok(pm
        .metrics(node)?
        .sum("portmap_config_reloads_total", &[("result", result)]))
}

/// The ClusterIP of Service `i` of [`cluster`]: 198.18.64.0 + `i`
/// (198.18.64.0/18, so up to 16,384 Services).
pub fn cluster_ip(i: u32) -> IpAddr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 64, 0)) + i).into()
}

/// A cluster of `count` ClusterIP Services in namespace `default`, named
/// `svc-00000`... (TCP port 80, "http", to 3000), each with an EndpointSlice
/// of `endpoints` ready endpoints at addresses nothing answers on
/// (198.19.128.0/17), except the Services `real` lists, whose endpoints are
/// given. One multi-document YAML text, as `kubectl get -o yaml` would give
/// it object by object.
pub fn cluster(count: u32, endpoints: u32, real: &[(u32, Vec<IpAddr>)]) -> String {
    use std::fmt::Write as _;
    let mut y = String::with_capacity(count as usize * (500 + 60 * endpoints as usize));
    for i in 0..count {
        let name = format!("svc-{i:05}");
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 3000, protocol: TCP}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-0\n  \
             namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: 3000, protocol: TCP}}]\nendpoints:\n",
            ip = cluster_ip(i),
        );
        let fake = (0..endpoints).map(|e| {
            let n = (i * endpoints + e) % 32_768;
            IpAddr::from(std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 19, 128, 0)) + n,
            ))
        });
        let addrs: Vec<IpAddr> = match real.iter().find(|(j, _)| *j == i) {
            Some((_, given)) => given.clone(),
            None => fake.collect(),
        };
        for ip in addrs {
            let _ = writeln!(y, "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}");
        }
    }
    y
}
