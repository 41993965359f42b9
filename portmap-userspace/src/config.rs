//! Where the desired state comes from: `-p` specs and Kubernetes manifest
//! files, merged and checked as one, and Docker's containers added to them
//! one by one ([`compose`]). Manifest files are watched: a change is read,
//! translated and checked as a whole before anything is applied, so a bad
//! edit leaves the last good state in force. A container whose ports
//! conflict with another source's is refused alone.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Result;

use crate::{
    docker::{Container, DockerHost},
    k8s::{self, Assignments, NodeConfig},
    model::{Cidr, DesiredState, Frontend, PublishSpec, Service},
};

/// Everything the desired state is made from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub specs: Vec<(String, PublishSpec)>,
    /// `--allow-from`: the only sources the `-p` ports accept (empty: all).
    pub allow_from: Vec<Cidr>,
    pub manifests: Vec<PathBuf>,
    pub node: NodeConfig,
    /// `--docker`: the Docker Engine whose containers' ports are published.
    pub docker: Option<DockerHost>,
}

/// A desired state, with what was assigned and what was worth saying.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub desired: DesiredState,
    pub assignments: Assignments,
    pub warnings: Vec<String>,
}

/// Why the sources could not make a desired state.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A manifest failed to read, parse or check: the message names the
    /// file, object, field and value.
    #[error("{0}")]
    Manifest(#[from] k8s::ManifestError),
    /// `-p` specs and manifests together are inconsistent (e.g. the same
    /// frontend twice).
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
}

impl Sources {
    /// Reads and translates everything. `previous` keeps assigned ClusterIPs
    /// and nodePorts stable across reloads.
    pub fn load(&self, previous: Option<&Assignments>) -> Result<Loaded, ConfigError> {
        let mut desired = DesiredState::from_specs(&self.specs)?;
        for svc in &mut desired.services {
            svc.source_ranges.clone_from(&self.allow_from);
        }
        let (assignments, warnings) = if self.manifests.is_empty() {
            (Assignments::default(), Vec::new())
        } else {
            let manifests = k8s::read_manifests(&self.manifests)?;
            let t = k8s::translate(&manifests, &self.node, previous)?;
            desired.services.extend(t.services);
            (t.assignments, t.warnings)
        };
        desired.validate()?;
        Ok(Loaded {
            desired,
            assignments,
            warnings,
        })
    }

    /// Changes whenever a manifest file (or a directory's list of files) does.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for path in &self.manifests {
            stamp(path, &mut h);
            if let Ok(entries) = std::fs::read_dir(path) {
                let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                files.sort();
                for file in files {
                    stamp(&file, &mut h);
                }
            }
        }
        h.finish()
    }
}

/// The desired state of every source: `-p` and the manifests (`base`), then
/// Docker's containers.
#[derive(Clone, Debug, Default)]
pub struct Composed {
    pub desired: DesiredState,
    /// The label (`NAME (ID12)`) of the container each of its services
    /// (by key) belongs to.
    pub container_of: BTreeMap<String, String>,
    /// Containers none of whose ports are published, by label, with why.
    pub refused: BTreeMap<String, String>,
}

/// Adds the containers' services to `base`. Running containers come in the
/// order they started: one that asks for a frontend `base` or an earlier
/// container publishes is refused whole, with an error naming both owners,
/// and nothing else changes. Stopped containers come last, each frontend
/// they keep (refusing new flows) only while nobody else wants it: Docker
/// hands a stopped container's host ports to the next container.
pub fn compose(base: &DesiredState, containers: &[Container]) -> Composed {
    let mut owners: HashMap<Frontend, String> = HashMap::new();
    for svc in &base.services {
        let owner = if svc.name.is_empty() {
            svc.key.clone()
        } else {
            format!("Service {}", svc.key)
        };
        for fe in &svc.frontends {
            owners.insert(*fe, owner.clone());
        }
    }
    let mut composed = Composed {
        desired: base.clone(),
        ..Composed::default()
    };
    let mut running: Vec<&Container> = containers.iter().filter(|c| c.running).collect();
    running.sort_by(|a, b| (&a.started_at, &a.id).cmp(&(&b.started_at, &b.id)));
    for c in running {
        let label = c.label();
        let services = c.services();
        let mut mine: HashSet<Frontend> = HashSet::new();
        let conflict =
            services
                .iter()
                .flat_map(|s| &s.frontends)
                .find_map(|fe| match owners.get(fe) {
                    Some(other) => Some(format!("frontend {fe} is already published by {other}")),
                    None if !mine.insert(*fe) => {
                        Some(format!("frontend {fe} is published twice by the container"))
                    }
                    None => None,
                });
        if let Some(why) = conflict {
            composed
                .refused
                .insert(label, format!("{why}; none of its ports are published"));
            continue;
        }
        for fe in mine {
            owners.insert(fe, format!("container {label}"));
        }
        composed.add(&label, services);
    }
    let mut stopped: Vec<&Container> = containers.iter().filter(|c| !c.running).collect();
    stopped.sort_by_key(|c| c.label());
    for c in stopped {
        let label = c.label();
        let mut services = c.services();
        for svc in &mut services {
            svc.frontends.retain(|fe| !owners.contains_key(fe));
            for fe in &svc.frontends {
                owners.insert(*fe, format!("container {label}"));
            }
        }
        services.retain(|s| !s.frontends.is_empty());
        composed.add(&label, services);
    }
    composed
}

impl Composed {
    fn add(&mut self, label: &str, services: Vec<Service>) {
        for svc in services {
            self.container_of.insert(svc.key.clone(), label.to_string());
            self.desired.services.push(svc);
        }
    }
}

/// Mixes a file's identity into `h`: size and modification time, following
/// symlinks (ConfigMap volumes swap a `..data` link on update).
fn stamp(path: &Path, h: &mut impl std::hash::Hasher) {
    path.hash(h);
    match std::fs::metadata(path) {
        Ok(meta) => {
            meta.len().hash(h);
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH).hash(h);
        }
        Err(e) => e.kind().hash(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_manifests_cannot_claim_one_frontend() {
        let dir = std::env::temp_dir().join(format!("portmap-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, nodePort: 30080}]\n",
        )
        .unwrap();
        let spec: PublishSpec = "30080:198.19.0.2:80".parse().unwrap();
        let sources = Sources {
            specs: vec![("30080:198.19.0.2:80".into(), spec)],
            allow_from: Vec::new(),
            manifests: vec![file.clone()],
            node: NodeConfig::default(),
            docker: None,
        };
        let err = sources.load(None).unwrap_err().to_string();
        assert!(err.contains("*:30080/tcp is published twice"), "{err}");

        let before = sources.fingerprint();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
        assert_ne!(
            sources.fingerprint(),
            before,
            "an edit changes the fingerprint"
        );
        assert_eq!(
            sources.load(None).unwrap().desired.services.len(),
            1,
            "only the -p spec left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn container(
        name: &str,
        id: &str,
        started_at: &str,
        running: bool,
        ports: &[u16],
    ) -> Container {
        Container {
            id: id.repeat(12),
            name: name.into(),
            started_at: started_at.into(),
            running,
            bindings: ports
                .iter()
                .map(|&port| crate::docker::Binding {
                    frontend: Frontend {
                        addr: crate::model::HostAddr::AllV4,
                        port,
                        proto: crate::model::Protocol::Tcp,
                    },
                    container_port: 3000,
                })
                .collect(),
            addrs: if running {
                vec![format!("198.18.77.{}", ports[0] % 250).parse().unwrap()]
            } else {
                Vec::new()
            },
        }
    }

    fn frontends_of(composed: &Composed, label: &str) -> Vec<String> {
        composed
            .desired
            .services
            .iter()
            .filter(|s| composed.container_of.get(&s.key).map(String::as_str) == Some(label))
            .flat_map(|s| s.frontends.iter().map(Frontend::to_string))
            .collect()
    }

    #[test]
    fn a_container_asking_for_a_taken_frontend_is_refused_alone() {
        let spec = "8080:198.19.0.2:80";
        let base = DesiredState::from_specs(&[(spec.into(), spec.parse().unwrap())]).unwrap();
        let containers = [
            container("web", "a", "2026-11-30T08:00:00Z", true, &[8080, 8081]),
            container("api", "b", "2026-11-30T08:00:01Z", true, &[9090]),
        ];
        let composed = compose(&base, &containers);
        assert_eq!(
            composed
                .refused
                .get("web (aaaaaaaaaaaa)")
                .map(String::as_str),
            Some(
                "frontend *:8080/tcp is already published by -p 8080:198.19.0.2:80 (*:8080/tcp); \
                 none of its ports are published"
            )
        );
        assert!(frontends_of(&composed, "web (aaaaaaaaaaaa)").is_empty());
        assert_eq!(
            frontends_of(&composed, "api (bbbbbbbbbbbb)"),
            ["*:9090/tcp"]
        );
        assert_eq!(
            composed.desired.services[0], base.services[0],
            "-p keeps its port"
        );
        composed.desired.validate().unwrap();

        // Between containers, the one started first keeps the port; the
        // refusal names it.
        let late = container("late", "c", "2026-11-30T09:00:00Z", true, &[9090]);
        let composed = compose(&base, &[late, containers[1].clone()]);
        assert_eq!(
            frontends_of(&composed, "api (bbbbbbbbbbbb)"),
            ["*:9090/tcp"]
        );
        assert!(
            composed.refused["late (cccccccccccc)"]
                .contains("already published by container api (bbbbbbbbbbbb)"),
            "{:?}",
            composed.refused
        );
    }

    #[test]
    fn a_stopped_container_keeps_only_the_ports_nobody_else_wants() {
        let base = DesiredState::default();
        let stopped = container("old", "a", "2026-11-30T08:00:00Z", true, &[8080, 8081]).stopped();
        let new = container("new", "b", "2026-11-30T08:05:00Z", true, &[8080]);
        let composed = compose(&base, &[stopped.clone(), new]);
        assert!(composed.refused.is_empty());
        assert_eq!(
            frontends_of(&composed, "new (bbbbbbbbbbbb)"),
            ["*:8080/tcp"]
        );
        assert_eq!(
            frontends_of(&composed, "old (aaaaaaaaaaaa)"),
            ["*:8081/tcp"]
        );
        let old = composed
            .desired
            .services
            .iter()
            .find(|s| s.container == "old")
            .unwrap();
        assert!(old.endpoints.is_empty());
        assert_eq!(old.when_empty, crate::model::WhenEmpty::Reject);
        composed.desired.validate().unwrap();
    }
}
