//! Kubernetes objects (Services, EndpointSlices, Pods) from manifest files,
//! translated into the desired state with kube-proxy's semantics.
//!
//! [`read_manifests`] reads files and directories of YAML (or JSON)
//! documents, single objects or `kind: List` as `kubectl get -o yaml`
//! prints. [`translate`] turns each Service port into [`model::Service`]
//! units, one per IP family and scope:
//!
//! - `internal`: the ClusterIPs (`internalTrafficPolicy`);
//! - `external`: the nodePorts on the node's addresses and the externalIPs
//!   (`externalTrafficPolicy`);
//! - `lb`: the load-balancer ingress IPs, which alone are restricted by
//!   `loadBalancerSourceRanges`.
//!
//! Endpoints come from the Service's EndpointSlices, or from the Pods its
//! selector picks when it has no EndpointSlice (hand-written manifests).
//! ClusterIPs and nodePorts the manifests leave out are assigned, and kept
//! across reloads through [`Assignments`].

use std::{fmt, net::IpAddr, ops::RangeInclusive, path::PathBuf};

use crate::model::{self, Cidr};

mod alloc;
mod endpoints;
mod error;
mod incremental;
mod plan;
mod read;
mod translate;

pub use alloc::Assignments;
pub use endpoints::{Locality, locality};
pub use error::{ManifestError, Source};
pub use incremental::{ApiMemo, translate_api};
pub use plan::SERVICE_PROXY_NAME_LABEL;
pub use read::{Manifests, Object, is_manifest_name};

/// What the translation needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// `--node-name`: which endpoints are local, for the `Local` traffic
    /// policies.
    pub node_name: Option<String>,
    /// `--node-ip`: the addresses nodePorts are published on; empty means
    /// every address of the node (wildcard frontends).
    pub node_ips: Vec<IpAddr>,
    /// `--node-port-range`.
    pub node_port_range: RangeInclusive<u16>,
    /// `--service-cidr`: where ClusterIPs are assigned from for Services
    /// whose manifest has none. The first one's family is the primary
    /// family of Services that do not say.
    pub service_cidrs: Vec<Cidr>,
    /// This node's pod CIDRs (its Node object's `spec.podCIDRs`, with
    /// `--kubernetes`): an endpoint without `nodeName` is local if it is in
    /// one of them (or is one of `node_ips`), remote if they are known and
    /// it is not.
    pub pod_cidrs: Vec<Cidr>,
}

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_name: None,
            node_ips: Vec::new(),
            node_port_range: DEFAULT_NODE_PORT_RANGE,
            service_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
        }
    }
}

/// The result of [`translate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// Already checked with [`model::DesiredState::validate`].
    pub services: Vec<model::Service>,
    /// To pass to the next [`translate`], and to show.
    pub assignments: Assignments,
    /// Objects and ports skipped, endpoints left out, and why.
    pub warnings: Vec<String>,
    /// Services left out, each with what is wrong with it (only from
    /// [`translate_each`]; [`translate`] fails on the first instead).
    pub rejected: Vec<Rejected>,
}

/// A Service that cannot be published, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// `NAMESPACE/NAME` (the `service` of its units).
    pub service: String,
    /// Where the Service was read.
    pub source: Source,
    /// What is wrong: with it, its EndpointSlices or Pods, or between it
    /// and a Service published before it.
    pub error: ManifestError,
}

/// Reads manifest files and directories (non-recursively: the `.yaml`,
/// `.yml` and `.json` files in them, sorted by name).
pub fn read_manifests(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
    read::read_manifests(paths)
}

/// Translates the Services of `m` into units of the desired state.
/// `previous` keeps assignments stable across reloads (pass the last
/// Translation's). Any invalid object is an error, and nothing is returned.
pub fn translate(
    m: &Manifests,
    node: &NodeConfig,
    previous: Option<&Assignments>,
) -> Result<Translation, ManifestError> {
    let mut t = translate::translate(m, node, previous);
    if t.rejected.is_empty() {
        Ok(t)
    } else {
        Err(t.rejected.swap_remove(0).error)
    }
}

/// As [`translate`], but a Service that cannot be published is left out
/// and listed in [`Translation::rejected`], and the others are translated:
/// the API server's objects are each their own (one bad Service must not
/// hold the cluster's others back). Of two Services that claim one
/// frontend or nodePort, the older (`creationTimestamp`, then namespace and
/// name) keeps it.
pub fn translate_each(
    m: &Manifests,
    node: &NodeConfig,
    previous: Option<&Assignments>,
) -> Translation {
    translate::translate(m, node, previous)
}

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// As in unit keys.
    fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    /// As Kubernetes writes it (`ipFamilies`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[cfg(test)]
mod tests;
