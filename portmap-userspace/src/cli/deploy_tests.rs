//! The files of `deploy/kubernetes/`: each document parses into its
//! k8s-openapi type with no field left over (a misspelt field would be
//! dropped, so typed and written back it must equal the file), and says
//! what running as kube-proxy's replacement needs.

use std::{collections::BTreeMap, path::PathBuf};

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{Serialize, de::DeserializeOwned},
};
use serde_json::Value;

use super::{Cli, Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every YAML file, by kind.
fn documents() -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let yaml: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            let json: Value = serde_json::to_value(&yaml).unwrap();
            let kind = json["kind"].as_str().unwrap().to_string();
            assert!(
                found.insert(kind.clone(), json).is_none(),
                "{kind} twice ({})",
                file.display()
            );
        }
    }
    found
}

/// The document as `T`, checked to lose nothing.
fn typed<T: DeserializeOwned + Serialize>(docs: &BTreeMap<String, Value>, kind: &str) -> T {
    let json = docs
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
    let t: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, json, "{kind}: a field is unknown to k8s-openapi");
    t
}

#[test]
fn deploy_files_parse_into_their_types_and_say_what_portmap_needs() {
    let docs = documents();
    let kinds: Vec<&str> = docs.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "ServiceAccount"
        ]
    );
    let sa: ServiceAccount = typed(&docs, "ServiceAccount");
    let role: ClusterRole = typed(&docs, "ClusterRole");
    let binding: ClusterRoleBinding = typed(&docs, "ClusterRoleBinding");
    let ds: DaemonSet = typed(&docs, "DaemonSet");

    // The role allows what the watchers and the event recorder do.
    let rules = role.rules.unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(allows(group, resource, verb), "{verb} {resource}");
        }
    }
    assert!(allows("events.k8s.io", "events", "create"));
    assert!(
        allows("events.k8s.io", "events", "patch"),
        "event series are patched"
    );

    // The binding gives that role to that account.
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);

    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name, sa.metadata.name);
    assert_eq!(spec.host_network, Some(true));
    let tolerations = spec.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "runs on every node, tainted or not"
    );
    let host_paths: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    for path in ["/sys/fs/bpf", "/sys/fs/cgroup"] {
        assert!(
            host_paths.iter().any(|p| p == path),
            "{path}: {host_paths:?}"
        );
    }
    let c = &spec.containers[0];
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(
        node_name,
        Some("spec.nodeName"),
        "NODE_NAME from the downward API"
    );
    let sc = c.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().and_then(|c| c.add.clone());
    assert!(
        sc.privileged == Some(true)
            || caps.is_some_and(|c| ["BPF", "NET_ADMIN", "SYS_ADMIN"]
                .iter()
                .all(|n| c.iter().any(|x| x == n))),
        "the capabilities eBPF needs"
    );
    let probe = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref());
    assert_eq!(probe.and_then(|g| g.path.as_deref()), Some("/livez"));

    // Its command line is one `portmap` takes, with the health endpoint
    // where the probe looks (`$(NODE_IFACE)` as the kubelet expands it).
    let args = c
        .args
        .iter()
        .flatten()
        .map(|a| a.replace("$(NODE_IFACE)", "eth0"));
    let line = c.command.iter().flatten().cloned().chain(args);
    let cli = Cli::try_parse_from(line).unwrap_or_else(|e| panic!("{e}"));
    let Command::Run(run) = cli.command else {
        panic!("not `portmap run`");
    };
    let config = run.config();
    let k = config.kubernetes.expect("--kubernetes");
    let port = &probe.unwrap().port;
    assert_eq!(
        serde_json::to_value(port).unwrap(),
        Value::from(k.healthz_addr.port())
    );
    assert!(
        config.keep_datapath,
        "a restarted pod adopts the pinned dataplane"
    );

    let dockerfile = std::fs::read_to_string(dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release"), "{dockerfile}");
}
