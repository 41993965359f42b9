//! The desired state: what should be published, independent of where it came
//! from (`-p` specs, Kubernetes manifests) and of the map layout; and the
//! types it is made of (addresses, protocols, published-port specs), which
//! the parsers (`spec`, `k8s`) produce and the dataplane consumes.
//!
//! The unit is a [`Service`]: frontends that share one backend set. The
//! dataplane gives each service one Maglev table and points its frontends at it.

use std::{fmt, net::IpAddr, ops::RangeInclusive};

use foldhash::HashMapExt as _;

use serde::{Deserialize, Serialize};

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

/// Where a frontend listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostAddr {
    /// Every address of the node in this family (`None` in the SPEC, or
    /// `0.0.0.0`, or `[::]`).
    AllV4,
    AllV6,
    /// One address.
    Ip(IpAddr),
}

impl HostAddr {
    pub fn is_ipv4(&self) -> bool {
        match self {
            HostAddr::AllV4 => true,
            HostAddr::AllV6 => false,
            HostAddr::Ip(ip) => ip.is_ipv4(),
        }
    }
}

impl fmt::Display for HostAddr {
    /// As in the `frontend` metric label: IPv6 in brackets, `*` for all
    /// addresses (`[*]` for all IPv6 addresses, so the two families' series
    /// stay apart).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddr::AllV4 => f.write_str("*"),
            HostAddr::AllV6 => f.write_str("[*]"),
            HostAddr::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            HostAddr::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// One `-p` flag, parsed and checked on its own (by [`crate::spec`], from
/// its text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishSpec {
    pub host: HostAddr,
    pub host_ports: RangeInclusive<u16>,
    pub backend: IpAddr,
    pub backend_ports: RangeInclusive<u16>,
    pub proto: Protocol,
}

impl PublishSpec {
    /// The (host port, backend port) pairs the spec maps, port by port.
    pub fn port_pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.host_ports.clone().zip(self.backend_ports.clone())
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

/// A backend of a service: its address, port and readiness. The model keeps
/// Kubernetes' word (what an EndpointSlice lists, with its `ready` and
/// `terminating` conditions); the metrics, `portmap list` and `-p` say
/// backend, and the dataplane writes each into a slot of the `BACKENDS` map
/// as a `portmap_common::abi::Backend` (raw address, generation, service id),
/// which is that slot's layout, not another idea.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub state: EndpointState,
    /// Where the endpoint runs, as its source knows it.
    pub placement: Placement,
    /// Set by the control plane before applying (see `locality`): how new
    /// flows reach the endpoint.
    pub reach: Reach,
}

/// How new flows reach an endpoint, as the control plane decides it
/// (`locality`) and the dataplane's `BACKEND_NAT` map holds it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// With the client's address: a backend on this node, or under a Local
    /// traffic policy.
    #[default]
    Direct,
    /// SNATed from this node's address towards it (a backend on another
    /// node, or `--masquerade-all`).
    Snat(IpAddr),
    /// By direct server return (a backend on another node under
    /// `--lb-mode dsr`, or `hybrid` for TCP): with the client's address,
    /// the frontend carried along, the replies sent straight to the client
    /// by the backend's node.
    Dsr,
}

impl Reach {
    /// The address flows are SNATed from, if they are.
    pub fn snat_from(self) -> Option<IpAddr> {
        match self {
            Reach::Snat(addr) => Some(addr),
            Reach::Direct | Reach::Dsr => None,
        }
    }
}

/// Where an endpoint runs, as the source of desired state knows it; the
/// control plane turns it into SNAT or not (`locality`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placement {
    /// Not said (a `-p` backend, an endpoint without `nodeName`): the route
    /// to it decides.
    #[default]
    Unknown,
    /// On this node (`nodeName` is `--node-name`).
    Local,
    /// On another node.
    Remote,
    /// Whatever node: flows keep the client's address, even under
    /// `--masquerade-all` (`externalTrafficPolicy: Local`).
    KeepClient,
}

impl Endpoint {
    /// The `backend` label: `ADDR:PORT`, `[ADDR]:PORT` for IPv6.
    pub fn label(&self) -> String {
        std::net::SocketAddr::new(self.addr, self.port).to_string()
    }
}

/// What a frontend does with a new flow when its service has no usable
/// endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenEmpty {
    /// Leave the packet to the node's stack (nothing is published).
    #[default]
    Pass,
    /// Answer with an ICMP port unreachable (TCP and UDP alike), as
    /// kube-proxy's `REJECT` does for a Service without endpoints.
    Reject,
    /// Drop, as kube-proxy does for `externalTrafficPolicy: Local` (or
    /// `internalTrafficPolicy: Local`) with no endpoint on this node.
    Drop,
}

/// An IPv4 or IPv6 prefix, e.g. `198.18.0.0/15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `ADDR/PREFIX`, or a bare address as a host prefix. Host bits must be
    /// zero, so a typo like `10.0.0.1/8` is caught rather than widened.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0-{max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(
                (u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)).into(),
            ),
            IpAddr::V6(a) => IpAddr::V6(
                (u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0))
                    .into(),
            ),
        };
        if network != addr {
            return Err(format!(
                "'{s}' has host bits set (the network is {network}/{prefix})"
            ));
        }
        Ok(cidr)
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
    /// The `container` label: the Docker container that publishes it
    /// (empty for `-p` mappings and Kubernetes Services).
    pub container: String,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// What new flows get when no endpoint is usable.
    pub when_empty: WhenEmpty,
    /// Sources allowed to reach the frontends (`loadBalancerSourceRanges`,
    /// `--allow-from`); empty allows all. Others are dropped in XDP.
    pub source_ranges: Vec<Cidr>,
}

/// The key of the service publishing each frontend.
pub type FrontendOwners<'a> = foldhash::HashMap<Frontend, &'a str>;

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
                    container: String::new(),
                    frontends: vec![frontend],
                    endpoints: vec![Endpoint {
                        addr: spec.backend,
                        port: backend_port,
                        state: EndpointState::Ready,
                        placement: Placement::Unknown,
                        reach: Reach::Direct,
                    }],
                    affinity_timeout_s: None,
                    when_empty: WhenEmpty::Pass,
                    source_ranges: Vec::new(),
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
        self.frontend_owners().map(|_| ())
    }

    /// The key of the service publishing each frontend, once [`Self::validate`]'s
    /// checks pass.
    pub fn frontend_owners(&self) -> Result<FrontendOwners<'_>, ModelError> {
        let mut owners = FrontendOwners::with_capacity(self.services.len() * 2);
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
        Ok(owners)
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
    fn cidrs() {
        let net: Cidr = "198.18.0.0/15".parse().unwrap();
        assert!(net.contains("198.19.255.1".parse().unwrap()));
        assert!(!net.contains("198.20.0.1".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("203.0.113.1".parse().unwrap())
        );
        assert_eq!("198.18.0.7".parse::<Cidr>().unwrap().prefix, 32);
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("0-32"));
        assert!("banana/3".parse::<Cidr>().is_err());
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
