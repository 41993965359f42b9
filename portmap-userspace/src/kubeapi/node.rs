//! What this node's Node object tells: the addresses NodePorts are
//! published on, the pod CIDRs that tell local endpoints from remote ones,
//! and whether the node is on its way out (kube-proxy's `/healthz` then
//! fails, so load balancers drain it).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::{k8s::NodeConfig, model::Cidr};

/// The cluster autoscaler's taint on a node it is about to remove.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// This node as its Node object describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// `status.addresses` of type InternalIP and ExternalIP, in order.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<Cidr>,
    /// Being deleted, or tainted for deletion by the cluster autoscaler.
    pub leaving: bool,
    /// What could not be read, for the log.
    pub problems: Vec<String>,
}

impl NodeView {
    pub fn of(node: &Node) -> Self {
        let mut view = NodeView::default();
        let status = node.status.as_ref();
        for a in status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue;
            }
            match a.address.parse::<IpAddr>() {
                Ok(ip) if !view.addresses.contains(&ip) => view.addresses.push(ip),
                Ok(_) => {}
                Err(_) => view.problems.push(format!(
                    "status.addresses: {} '{}' is not an IP address",
                    a.type_, a.address
                )),
            }
        }
        let spec = node.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        for text in cidrs {
            match text.parse::<Cidr>() {
                Ok(c) => view.pod_cidrs.push(c),
                Err(e) => view.problems.push(format!("spec.podCIDRs: {e}")),
            }
        }
        let tainted = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .any(|t| t.key == TO_BE_DELETED_TAINT);
        view.leaving = node.metadata.deletion_timestamp.is_some() || tainted;
        view
    }

    /// `base` (from the flags) with what the Node object adds: its
    /// addresses for NodePorts unless `--node-ip` chose, and its pod CIDRs.
    pub fn apply_to(&self, base: &NodeConfig) -> NodeConfig {
        let mut node = base.clone();
        if node.node_ips.is_empty() {
            node.node_ips.clone_from(&self.addresses);
        }
        node.pod_cidrs.clone_from(&self.pod_cidrs);
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn addresses_pod_cidrs_and_leaving() {
        let n = node(
            r#"{"metadata":{"name":"node-a"},"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]},
                "status":{"addresses":[{"type":"Hostname","address":"node-a"},{"type":"InternalIP","address":"198.18.0.1"},
                {"type":"InternalIP","address":"2001:db8::1"},{"type":"ExternalIP","address":"bogus"}]}}"#,
        );
        let v = NodeView::of(&n);
        assert_eq!(
            v.addresses,
            [
                "198.18.0.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(v.pod_cidrs.len(), 2);
        assert!(!v.leaving);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        let base = NodeConfig {
            node_name: Some("node-a".into()),
            ..NodeConfig::default()
        };
        let c = v.apply_to(&base);
        assert_eq!(c.node_ips, v.addresses);
        let flagged = NodeConfig {
            node_ips: vec!["198.18.0.3".parse().unwrap()],
            ..base
        };
        assert_eq!(
            v.apply_to(&flagged).node_ips,
            flagged.node_ips,
            "--node-ip wins"
        );

        let old = node(r#"{"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.2.0/24"}}"#);
        assert_eq!(
            NodeView::of(&old).pod_cidrs,
            ["10.244.2.0/24".parse().unwrap()]
        );
        let leaving = node(
            r#"{"metadata":{"name":"n"},"spec":{"taints":[{"key":"ToBeDeletedByClusterAutoscaler","effect":"NoSchedule"}]}}"#,
        );
        assert!(NodeView::of(&leaving).leaving);
    }
}
