//! Where the desired state comes from: `-p` specs, Kubernetes manifest
//! files and the API server (`--kubernetes`), merged and checked as one
//! (Docker's containers are added to them one by one: `docker::compose`).
//! Manifest files are watched: a change is read, translated and checked as
//! a whole before anything is applied, so a bad edit leaves the last good
//! state in force. The API server's Services are each their own: one that
//! cannot be published is reported and keeps what it had (`kube`).

mod kube;

use std::{
    fmt,
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Result;
use portmap_testkit::lock;

use crate::{
    docker::DockerHost,
    k8s::{self, ApiMemo, Assignments, NodeConfig, Rejected},
    kubeapi::Snapshot,
    locality::{self, KernelRoutes, Masquerade, RouteCache},
    model::{Cidr, DesiredState, PublishSpec},
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
    /// Which flows are SNATed towards their backends (see `locality`).
    pub masquerade: Masquerade,
}

/// A desired state, with what was assigned and what was worth saying.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub desired: DesiredState,
    pub assignments: Assignments,
    pub warnings: Vec<String>,
    /// The API server's Services that are not published as they are now,
    /// and why; each keeps what it had published, if anything.
    pub rejected: Vec<Rejected>,
    /// The node as the translation saw it (with the Node object's
    /// addresses and pod CIDRs, with `--kubernetes`).
    pub node: NodeConfig,
    /// What the next sync from the API server reuses.
    pub memo: SyncMemo,
}

/// What a sync from the API server keeps for the next: each Service's
/// translation ([`k8s::translate_api`]) and the kernel's route answers
/// ([`RouteCache`]). Both are answers about the objects and routes they
/// were asked of, true whether or not the sync that asked was applied; the
/// states loaded one from the other share them.
#[derive(Clone, Default)]
pub struct SyncMemo(Arc<Mutex<Memo>>);

#[derive(Default)]
struct Memo {
    api: ApiMemo,
    /// Opened at the first use.
    routes: Option<RouteCache>,
}

impl fmt::Debug for SyncMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let memo = lock(&self.0);
        write!(f, "SyncMemo({} Services)", memo.api.len())
    }
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
        self.load_from(previous, None)
    }

    /// As [`Sources::load`], with what the API server holds. `previous` is
    /// the last state loaded: its assignments stay, and an API Service that
    /// cannot be published now keeps its units from it.
    pub fn load_with_api(
        &self,
        previous: Option<&Loaded>,
        api: &Snapshot,
    ) -> Result<Loaded, ConfigError> {
        self.load_from(previous.map(|p| &p.assignments), Some((api, previous)))
    }

    fn load_from(
        &self,
        previous: Option<&Assignments>,
        api: Option<(&Snapshot, Option<&Loaded>)>,
    ) -> Result<Loaded, ConfigError> {
        let mut desired = DesiredState::from_specs(&self.specs)?;
        for svc in &mut desired.services {
            svc.source_ranges.clone_from(&self.allow_from);
        }
        let mut node = self.node.clone();
        let memo = match api {
            Some((_, Some(last))) => last.memo.clone(),
            _ => SyncMemo::default(),
        };
        let mut loaded = if self.manifests.is_empty() && api.is_none() {
            Loaded {
                desired: DesiredState::default(),
                assignments: Assignments::default(),
                warnings: Vec::new(),
                rejected: Vec::new(),
                node: node.clone(),
                memo: memo.clone(),
            }
        } else {
            let mut manifests = if self.manifests.is_empty() {
                k8s::Manifests::default()
            } else {
                k8s::read_manifests(&self.manifests)?
            };
            let mut warnings = Vec::new();
            let mut fast = None;
            if let Some((api, _)) = api {
                node = kube::node_config(api, &self.node, &mut warnings);
                // Without files, each Service is its own: only those that
                // changed are translated again.
                if self.manifests.is_empty() {
                    let mut m = lock(&memo.0);
                    fast = k8s::translate_api(&api.services, &api.slices, &node, &mut m.api);
                }
                if fast.is_none() {
                    manifests
                        .add_api_objects(api.services.iter().cloned(), api.slices.iter().cloned());
                }
            }
            let from_api_alone = fast.is_some();
            let mut t = match fast {
                Some(t) => t,
                None => k8s::translate_each(&manifests, &node, previous),
            };
            // A file's error is the file's: the last good state stays whole.
            let whole = |r: &&Rejected| !r.source.from_api() || r.service.is_empty();
            if let Some(r) = t.rejected.iter().find(whole) {
                return Err(r.error.clone().into());
            }
            warnings.append(&mut t.warnings);
            let mut loaded = Loaded {
                desired: DesiredState {
                    services: t.services,
                },
                assignments: t.assignments,
                warnings,
                rejected: t.rejected,
                node: node.clone(),
                memo: memo.clone(),
            };
            if let Some((_, last)) = api {
                let api_ids: std::collections::HashSet<String> = if from_api_alone {
                    Default::default()
                } else {
                    manifests
                        .services
                        .iter()
                        .filter(|o| o.source.from_api())
                        .map(|o| format!("{}/{}", o.namespace, o.name))
                        .collect()
                };
                let from_api = |name: &str| from_api_alone || api_ids.contains(name);
                kube::settle(&mut loaded, &from_api, &desired, last.map(|l| &l.desired));
            }
            loaded
        };
        if desired.services.is_empty() {
            // No `-p`: no copy of every unit.
            std::mem::swap(&mut desired.services, &mut loaded.desired.services);
        } else {
            desired.services.append(&mut loaded.desired.services);
        }
        desired.validate()?;
        // Every source's backends, the API server's included, are placed
        // and given their SNAT address here (a Service kept from the last
        // state is resolved again: routes may have changed since, which the
        // route cache follows).
        let masq = if api.is_some() {
            let mut m = lock(&memo.0);
            m.routes
                .get_or_insert_with(RouteCache::new)
                .resolve(&mut desired, &self.masquerade)
        } else {
            locality::resolve(&mut desired, &self.masquerade, &mut KernelRoutes)
        };
        loaded.warnings.extend(masq);
        loaded.desired = desired;
        Ok(loaded)
    }

    /// Changes whenever a manifest file (or a directory's list of files) does.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for path in &self.manifests {
            // A directory by the manifests it holds, not its own time (which
            // any file written in it moves).
            if !path.is_dir() {
                stamp(path, &mut h);
            }
            if let Ok(entries) = std::fs::read_dir(path) {
                // Only what is read: a file being written beside them (a
                // temporary one renamed into place when complete) must not
                // trigger a reload of the old contents.
                let mut files: Vec<PathBuf> = entries
                    .flatten()
                    .filter(|e| k8s::is_manifest_name(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                files.sort();
                for file in files {
                    stamp(&file, &mut h);
                }
            }
        }
        h.finish()
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
            masquerade: Masquerade::default(),
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

    #[test]
    fn a_file_written_beside_the_manifests_changes_nothing_until_it_is_one() {
        let dir = std::env::temp_dir().join(format!("portmap-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: List\nitems: []\n",
        )
        .unwrap();
        let sources = Sources {
            specs: Vec::new(),
            allow_from: Vec::new(),
            manifests: vec![dir.clone()],
            node: NodeConfig::default(),
            docker: None,
            masquerade: Masquerade::default(),
        };
        let before = sources.fingerprint();
        // A writer's temporary file, and an editor's swap file: not read,
        // so no reload of what has not changed yet.
        std::fs::write(dir.join(".a.yaml.tmp"), "partial").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        assert_eq!(sources.fingerprint(), before);
        // Renamed into place: now it is one.
        std::fs::rename(dir.join(".a.yaml.tmp"), dir.join("b.yaml")).unwrap();
        assert_ne!(sources.fingerprint(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
