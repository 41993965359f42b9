//! Docker's containers added to the desired state of the other sources
//! (`-p` and the manifests): each container whole or not at all, so one
//! whose ports conflict with another source's is refused alone.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Container;
use crate::model::{DesiredState, Frontend, Service};

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
    if containers.is_empty() {
        // Without Docker, a sync need not index every frontend.
        return Composed {
            desired: base.clone(),
            ..Composed::default()
        };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
