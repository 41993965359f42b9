//! A container as the Docker Engine describes it (`GET /containers/ID/json`)
//! and the services its published ports become, with Docker's semantics:
//! every binding of `NetworkSettings.Ports` maps its `HostIp:HostPort` to the
//! container's port on each of its networks' addresses of that family
//! (`IPAddress`, `GlobalIPv6Address`).

use crate::model::Reach;
use std::{collections::BTreeMap, net::IpAddr};

use bollard::models::ContainerInspectResponse;

use crate::model::{
    Endpoint, EndpointState, Frontend, HostAddr, Placement, Protocol, Service, WhenEmpty,
};

/// One host port the engine published for a container: `HostIp:HostPort`
/// → the container's `port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub frontend: Frontend,
    pub container_port: u16,
}

/// What portmap keeps of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// When it last started, as the engine writes it (RFC 3339, UTC, so
    /// text order is time order): of two containers that ask for one
    /// frontend, the one started first keeps it.
    pub started_at: String,
    /// A stopped container keeps the ports it had while it ran, without
    /// backends: new flows to them are refused until it runs again or is
    /// removed (Docker reports no ports for a stopped container).
    pub running: bool,
    /// Sorted.
    pub bindings: Vec<Binding>,
    /// Its addresses on its networks (none once stopped), sorted.
    pub addrs: Vec<IpAddr>,
}

impl Container {
    /// `NAME (ID12)`: how the log and errors name it.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, short_id(&self.id))
    }

    /// Reads what the engine says of a container. Bindings portmap cannot
    /// publish (another protocol, an unreadable address or port) are left
    /// out, each said in the returned notes.
    pub fn from_inspect(c: &ContainerInspectResponse) -> Result<(Self, Vec<String>), String> {
        let id =
            c.id.clone()
                .filter(|id| !id.is_empty())
                .ok_or("the engine described a container without an Id")?;
        let name = c
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| short_id(&id).to_string());
        let state = c.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let started_at = state.and_then(|s| s.started_at.clone()).unwrap_or_default();
        let mut notes = Vec::new();
        let mut bindings = Vec::new();
        let mut addrs = Vec::new();
        if let Some(settings) = &c.network_settings {
            if let Some(ports) = &settings.ports {
                for (port, list) in ports {
                    for binding in list.iter().flatten() {
                        let host_ip = binding.host_ip.as_deref().unwrap_or_default();
                        let host_port = binding.host_port.as_deref().unwrap_or_default();
                        match bindings_of(port, host_ip, host_port) {
                            Ok(found) => bindings.extend(found),
                            Err(why) => notes.push(why),
                        }
                    }
                }
            }
            // Networks sorted by name, so the addresses come in one order.
            let networks: BTreeMap<_, _> = settings.networks.iter().flatten().collect();
            for (network, endpoint) in networks {
                for text in [&endpoint.ip_address, &endpoint.global_ipv6_address]
                    .into_iter()
                    .flatten()
                    .filter(|t| !t.is_empty())
                {
                    match text.parse::<IpAddr>() {
                        Ok(ip) => addrs.push(ip),
                        Err(_) => {
                            notes.push(format!("network {network}: address '{text}' unreadable"))
                        }
                    }
                }
            }
        }
        bindings.sort();
        bindings.dedup();
        addrs.sort();
        addrs.dedup();
        let container = Container {
            id,
            name,
            started_at,
            running,
            bindings,
            addrs,
        };
        Ok((container, notes))
    }

    /// This container once it stopped: the bindings that had a backend while
    /// it ran, and no address.
    pub fn stopped(&self) -> Container {
        if !self.running {
            return self.clone();
        }
        let bindings = self
            .bindings
            .iter()
            .filter(|b| self.has_family(b.frontend.addr.is_ipv4()))
            .copied()
            .collect();
        Container {
            running: false,
            bindings,
            addrs: Vec::new(),
            ..self.clone()
        }
    }

    fn has_family(&self, v4: bool) -> bool {
        self.addrs.iter().any(|a| a.is_ipv4() == v4)
    }

    /// One service per container port, protocol and family: its host
    /// bindings are the frontends, the container's addresses of that family
    /// the backends. A binding of a family the container has no address of
    /// (`::` on a network without IPv6) publishes nothing: Docker's
    /// userland proxy bridges such a port to IPv4, which XDP does not do.
    /// While stopped, the frontends stay without backends and refuse new
    /// flows.
    pub fn services(&self) -> Vec<Service> {
        // Keyed by port, protocol and whether IPv6: IPv4 first.
        let mut by_port: BTreeMap<(u16, Protocol, bool), Vec<Frontend>> = BTreeMap::new();
        for b in &self.bindings {
            let v4 = b.frontend.addr.is_ipv4();
            if self.running && !self.has_family(v4) {
                continue;
            }
            by_port
                .entry((b.container_port, b.frontend.proto, !v4))
                .or_default()
                .push(b.frontend);
        }
        by_port
            .into_iter()
            .map(|((port, proto, v6), frontends)| (port, proto, !v6, frontends))
            .map(|(port, proto, v4, frontends)| Service {
                key: format!(
                    "container {} {port}/{} {}",
                    self.label(),
                    proto.as_str(),
                    if v4 { "ipv4" } else { "ipv6" }
                ),
                name: String::new(),
                port_name: String::new(),
                container: self.name.clone(),
                frontends,
                endpoints: self
                    .addrs
                    .iter()
                    .filter(|a| a.is_ipv4() == v4)
                    .map(|&addr| Endpoint {
                        addr,
                        port,
                        state: EndpointState::Ready,
                        // A container's address is on one of this node's
                        // bridges (or, with an overlay, wherever the route
                        // says).
                        placement: Placement::Unknown,
                        reach: Reach::Direct,
                    })
                    .collect(),
                affinity_timeout_s: None,
                when_empty: WhenEmpty::Reject,
                source_ranges: Vec::new(),
            })
            .collect()
    }
}

/// The first 12 hex digits, as `docker ps` shows an id.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The frontends of one `NetworkSettings.Ports` binding: `PORT/PROTO` of the
/// container, published on `HostIp:HostPort`. `0.0.0.0` and `::` are every
/// address of the node in that family; an empty `HostIp` (older engines)
/// both.
fn bindings_of(port: &str, host_ip: &str, host_port: &str) -> Result<Vec<Binding>, String> {
    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    let proto = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(format!(
                "{port}: {other} is not published (TCP and UDP are)"
            ));
        }
    };
    let nonzero = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let container_port =
        nonzero(number).ok_or_else(|| format!("{port}: '{number}' is not a port"))?;
    let host_port = nonzero(host_port)
        .ok_or_else(|| format!("{port}: host port '{host_port}' is not a port"))?;
    let addrs = match host_ip {
        "" => vec![HostAddr::AllV4, HostAddr::AllV6],
        "0.0.0.0" => vec![HostAddr::AllV4],
        "::" => vec![HostAddr::AllV6],
        ip => vec![HostAddr::Ip(ip.parse().map_err(|_| {
            format!("{port}: host address '{ip}' is not an IP address")
        })?)],
    };
    Ok(addrs
        .into_iter()
        .map(|addr| Binding {
            frontend: Frontend {
                addr,
                port: host_port,
                proto,
            },
            container_port,
        })
        .collect())
}

#[cfg(test)]
mod tests;
