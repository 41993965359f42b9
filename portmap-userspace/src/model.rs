//! The desired state: what should be published, independent of where it came
//! from (`-p` specs now, Kubernetes objects later) and of the map layout.
//!
//! The unit is a [`Service`]: frontends that share one backend set. The
//! dataplane gives each service one Maglev table and points its frontends at it.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::spec::{HostAddr, PublishSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => portmap_common::abi::PROTO_TCP,
            Protocol::Udp => portmap_common::abi::PROTO_UDP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An address, port and protocol that clients send to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: HostAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for Frontend {
    /// The `frontend` label: `ADDR:PORT/PROTO`, `[ADDR]` for IPv6, `*` for all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Takes new flows.
    Ready,
    /// Keeps its flows; takes new ones only when no endpoint is ready.
    Terminating,
}

/// A backend address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub state: EndpointState,
}

impl Endpoint {
    /// The `backend` label: `ADDR:PORT`, `[ADDR]:PORT` for IPv6.
    pub fn label(&self) -> String {
        std::net::SocketAddr::new(self.addr, self.port).to_string()
    }
}

/// Frontends sharing one backend set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Unique among the services of a [`DesiredState`].
    pub key: String,
    /// The `service` label (`NAMESPACE/NAME`, empty for `-p` mappings).
    pub name: String,
    /// The `port_name` label.
    pub port_name: String,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// With no usable endpoint, reject new flows instead of passing them.
    pub reject_when_empty: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: Vec<Service>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("frontend {frontend} is published twice: by {first} and by {second}")]
    DuplicateFrontend {
        frontend: String,
        first: String,
        second: String,
    },
    #[error("{service}: frontend {frontend} and backend {backend} are of different IP families")]
    FamilyMismatch {
        service: String,
        frontend: String,
        backend: String,
    },
}

impl DesiredState {
    /// One service per published port: a `-p` range becomes one per port pair.
    pub fn from_specs(specs: &[(String, PublishSpec)]) -> Result<Self, ModelError> {
        let mut services = Vec::new();
        for (text, spec) in specs {
            for (host_port, backend_port) in spec.port_pairs() {
                let frontend = Frontend {
                    addr: spec.host,
                    port: host_port,
                    proto: spec.proto,
                };
                services.push(Service {
                    key: format!("-p {text} ({frontend})"),
                    name: String::new(),
                    port_name: String::new(),
                    frontends: vec![frontend],
                    endpoints: vec![Endpoint {
                        addr: spec.backend,
                        port: backend_port,
                        state: EndpointState::Ready,
                    }],
                    affinity_timeout_s: None,
                    reject_when_empty: false,
                });
            }
        }
        let state = DesiredState { services };
        state.validate()?;
        Ok(state)
    }

    /// Checks what no single service can check alone: a frontend belongs to
    /// one service only, and every backend is of its frontends' family.
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut owners: BTreeMap<Frontend, &str> = BTreeMap::new();
        for svc in &self.services {
            for fe in &svc.frontends {
                if let Some(first) = owners.insert(*fe, &svc.key) {
                    return Err(ModelError::DuplicateFrontend {
                        frontend: fe.to_string(),
                        first: first.to_string(),
                        second: svc.key.clone(),
                    });
                }
                if let Some(ep) = svc
                    .endpoints
                    .iter()
                    .find(|ep| ep.addr.is_ipv4() != fe.addr.is_ipv4())
                {
                    return Err(ModelError::FamilyMismatch {
                        service: svc.key.clone(),
                        frontend: fe.to_string(),
                        backend: ep.label(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(list: &[&str]) -> Vec<(String, PublishSpec)> {
        list.iter()
            .map(|s| (s.to_string(), s.parse().unwrap()))
            .collect()
    }

    #[test]
    fn range_becomes_one_service_per_port() {
        let state =
            DesiredState::from_specs(&specs(&["8000-8001:198.18.2.2:9000-9001/udp"])).unwrap();
        let fronts: Vec<String> = state
            .services
            .iter()
            .map(|s| s.frontends[0].to_string())
            .collect();
        assert_eq!(fronts, ["*:8000/udp", "*:8001/udp"]);
        assert_eq!(state.services[1].endpoints[0].port, 9001);
    }

    #[test]
    fn same_frontend_twice_is_refused() {
        let err = DesiredState::from_specs(&specs(&[
            "8080:198.18.2.2:80",
            "0.0.0.0:8080:198.18.2.3:80",
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("frontend *:8080/tcp is published twice"),
            "{err}"
        );
        // Overlapping ranges collide on the shared port.
        let err = DesiredState::from_specs(&specs(&[
            "8000-8005:198.18.2.2:80-85",
            "8005:198.18.2.3:80",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("*:8005/tcp"), "{err}");
    }

    #[test]
    fn explicit_address_and_wildcard_coexist() {
        // As in Docker, a port published on one address and on all others.
        let state = DesiredState::from_specs(&specs(&[
            "8080:198.18.2.2:80",
            "198.18.0.1:8080:198.18.2.3:80",
            "8080:198.18.2.2:80/udp",
            "8080:[2001:db8::2]:80",
        ]))
        .unwrap();
        assert_eq!(state.services.len(), 4);
    }
}
