//! What the log says when containers change: per container, each port
//! published, moved to another address, or withdrawn.

use std::collections::BTreeMap;

use crate::model::{Frontend, Service};

/// Per container (its label, `NAME (ID12)`), each published frontend with
/// its backends (`ADDR:PORT`; none while the container is stopped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published(BTreeMap<String, BTreeMap<Frontend, Vec<String>>>);

impl Published {
    /// Records `services` as what container `label` publishes.
    pub fn insert(&mut self, label: &str, services: &[Service]) {
        let ports = self.0.entry(label.to_string()).or_default();
        for svc in services {
            let backends: Vec<String> = svc.endpoints.iter().map(|e| e.label()).collect();
            for fe in &svc.frontends {
                ports.insert(*fe, backends.clone());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    /// One line per frontend that changed between `self` and `after`.
    pub fn changes(&self, after: &Published) -> Vec<String> {
        let none = BTreeMap::new();
        let mut lines = Vec::new();
        let labels: std::collections::BTreeSet<&String> =
            self.0.keys().chain(after.0.keys()).collect();
        for label in labels {
            let old = self.0.get(label).unwrap_or(&none);
            let new = after.0.get(label).unwrap_or(&none);
            let gone = !after.0.contains_key(label);
            for (fe, before) in old {
                match new.get(fe) {
                    None if gone => lines.push(format!(
                        "container {label}: withdrew {fe} (the container is gone)"
                    )),
                    None => lines.push(format!("container {label}: withdrew {fe}")),
                    Some(now) if now == before => {}
                    Some(now) if now.is_empty() => lines.push(format!(
                        "container {label}: withdrew {fe} from {} (stopped: new flows are \
                         refused until it runs again)",
                        before.join(", ")
                    )),
                    Some(now) if before.is_empty() => lines.push(format!(
                        "container {label}: published {fe} -> {}",
                        now.join(", ")
                    )),
                    Some(now) => lines.push(format!(
                        "container {label}: {fe} -> {} (was {})",
                        now.join(", "),
                        before.join(", ")
                    )),
                }
            }
            for (fe, now) in new.iter().filter(|(fe, _)| !old.contains_key(fe)) {
                if now.is_empty() {
                    lines.push(format!(
                        "container {label}: {fe} refuses new flows (the container is stopped)"
                    ));
                } else {
                    lines.push(format!(
                        "container {label}: published {fe} -> {}",
                        now.join(", ")
                    ));
                }
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointState, HostAddr, Placement, Protocol, WhenEmpty};

    fn service(fe: u16, backends: &[&str]) -> Service {
        Service {
            key: format!("k{fe}"),
            name: String::new(),
            port_name: String::new(),
            container: "web".into(),
            frontends: vec![Frontend {
                addr: HostAddr::AllV4,
                port: fe,
                proto: Protocol::Tcp,
            }],
            endpoints: backends
                .iter()
                .map(|b| Endpoint {
                    addr: b.parse().unwrap(),
                    port: 3000,
                    state: EndpointState::Ready,
                    placement: Placement::Unknown,
                    reach: crate::model::Reach::Direct,
                })
                .collect(),
            affinity_timeout_s: None,
            when_empty: WhenEmpty::Reject,
            source_ranges: Vec::new(),
        }
    }

    fn published(list: &[(&str, Vec<Service>)]) -> Published {
        let mut p = Published::default();
        for (label, services) in list {
            p.insert(label, services);
        }
        p
    }

    #[test]
    fn a_containers_life_in_the_log() {
        let web = "web (ad81412cf217)";
        let nothing = Published::default();
        let running = published(&[(web, vec![service(8080, &["198.18.77.2"])])]);
        let stopped = published(&[(web, vec![service(8080, &[])])]);
        let moved = published(&[(web, vec![service(8080, &["198.18.77.3"])])]);
        assert!(nothing.is_empty() && !stopped.is_empty());
        assert_eq!(
            nothing.changes(&running),
            ["container web (ad81412cf217): published *:8080/tcp -> 198.18.77.2:3000"]
        );
        assert!(running.changes(&running).is_empty());
        assert_eq!(
            running.changes(&stopped),
            [
                "container web (ad81412cf217): withdrew *:8080/tcp from 198.18.77.2:3000 \
                 (stopped: new flows are refused until it runs again)"
            ]
        );
        assert_eq!(
            stopped.changes(&moved),
            ["container web (ad81412cf217): published *:8080/tcp -> 198.18.77.3:3000"]
        );
        assert_eq!(
            running.changes(&moved),
            [
                "container web (ad81412cf217): *:8080/tcp -> 198.18.77.3:3000 (was \
                 198.18.77.2:3000)"
            ]
        );
        assert_eq!(
            stopped.changes(&nothing),
            ["container web (ad81412cf217): withdrew *:8080/tcp (the container is gone)"]
        );
        assert_eq!(
            nothing.changes(&stopped),
            [
                "container web (ad81412cf217): *:8080/tcp refuses new flows (the container is stopped)"
            ]
        );
        // Another container took the port.
        let taken = published(&[
            (web, vec![]),
            ("api (0123456789ab)", vec![service(8080, &["198.18.77.4"])]),
        ]);
        assert_eq!(
            stopped.changes(&taken),
            [
                "container api (0123456789ab): published *:8080/tcp -> 198.18.77.4:3000",
                "container web (ad81412cf217): withdrew *:8080/tcp",
            ]
        );
    }
}
