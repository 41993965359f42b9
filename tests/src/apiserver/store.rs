//! What the fake API server holds: objects with resourceVersions, the
//! history of changes a watch replays (compacted below a point, as etcd
//! compacts), and what clients posted (Events).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::wire::Kind;

/// One change, as a watch sends it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub type_: &'static str,
    pub object: Value,
}

/// (kind, namespace, name); the namespace is empty for Nodes.
pub type Key = (Kind, String, String);

#[derive(Debug, Default)]
pub struct Store {
    /// The latest resourceVersion given out.
    pub rv: u64,
    /// A watch from before this resourceVersion gets 410 Gone.
    pub compacted: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: Vec<Change>,
    /// Bumped to cut every open connection (a crash, a restart).
    pub epoch: u64,
    /// Whether the server accepts connections.
    pub up: bool,
    /// Events posted by clients (events.k8s.io/v1).
    pub events: Vec<Value>,
    /// `METHOD PATH?QUERY` of every request, in order.
    pub requests: Vec<String>,
    uids: u64,
}

/// The key of an object, from its kind and metadata.
pub fn key_of(kind: Kind, object: &Value) -> Key {
    let meta = &object["metadata"];
    let namespace = if kind.namespaced() {
        meta["namespace"].as_str().unwrap_or("default").to_string()
    } else {
        String::new()
    };
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    (kind, namespace, name)
}

fn kind_of(object: &Value) -> Kind {
    let kind = object["kind"].as_str().unwrap_or_default();
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .unwrap_or_else(|| panic!("the fake API server serves no kind {kind:?}"))
}

impl Store {
    /// A store whose history starts (compacted) at `rv`, serving.
    pub fn new(rv: u64) -> Self {
        Store {
            rv,
            compacted: rv,
            up: true,
            ..Store::default()
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Creates or replaces an object (it must have kind and metadata.name);
    /// returns its resourceVersion.
    pub fn apply(&mut self, mut object: Value) -> u64 {
        let kind = kind_of(&object);
        let key = key_of(kind, &object);
        let rv = self.next_rv();
        let previous = self.objects.get(&key).cloned();
        let meta = object["metadata"]
            .as_object_mut()
            .expect("an object with metadata");
        if kind.namespaced() {
            meta.insert("namespace".into(), json!(key.1));
        }
        let (uid, created) = match &previous {
            Some(p) => (
                p["metadata"]["uid"].clone(),
                p["metadata"]["creationTimestamp"].clone(),
            ),
            None => {
                self.uids += 1;
                // Creation order is what decides between two Services that
                // claim one port, so each gets its own second.
                let t = 1_762_594_862 + self.uids;
                (
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
                    json!(timestamp(t)),
                )
            }
        };
        meta.insert("uid".into(), uid);
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), created);
        let type_ = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(key, object.clone());
        self.history.push(Change {
            rv,
            kind,
            type_,
            object,
        });
        rv
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let ns = if kind.namespaced() { namespace } else { "" };
        let key = (kind, ns.to_string(), name.to_string());
        let Some(mut object) = self.objects.remove(&key) else {
            return false;
        };
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.history.push(Change {
            rv,
            kind,
            type_: "DELETED",
            object,
        });
        true
    }

    /// Forgets the history up to now: a watch from an older
    /// resourceVersion gets 410 Gone and must list again.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Records a posted Event; returns it as stored.
    pub fn post_event(&mut self, namespace: &str, mut event: Value) -> Value {
        let rv = self.next_rv();
        if let Some(meta) = event["metadata"].as_object_mut() {
            if !meta.contains_key("name") {
                let base = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("event.")
                    .to_string();
                meta.insert("name".into(), json!(format!("{base}{rv:x}")));
            }
            meta.insert("namespace".into(), json!(namespace));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        self.events.push(event.clone());
        event
    }
}

/// RFC 3339 in UTC, seconds, as metav1.Time.
fn timestamp(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A label selector or field selector, as the API server reads them:
/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, joined by commas.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    terms: Vec<(String, Test)>,
}

#[derive(Clone, Debug)]
enum Test {
    Equals(String),
    Differs(String),
    Exists,
    Absent,
}

impl Selector {
    pub fn parse(text: &str) -> Self {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let t = if let Some(k) = term.strip_prefix('!') {
                (k.to_string(), Test::Absent)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.to_string(), Test::Differs(v.to_string()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k.to_string(), Test::Equals(v.to_string()))
            } else {
                (term.to_string(), Test::Exists)
            };
            terms.push(t);
        }
        Selector { terms }
    }

    /// Whether the labels (or, for a field selector, the fields) match.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|(k, test)| {
            let v = get(k);
            match test {
                Test::Equals(want) => v.as_deref() == Some(want),
                Test::Differs(want) => v.as_deref() != Some(want),
                Test::Exists => v.is_some(),
                Test::Absent => v.is_none(),
            }
        })
    }
}

/// The selectors of a request.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: Selector,
    pub fields: Selector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let label = |k: &str| meta["labels"][k].as_str().map(str::to_string);
        let field = |k: &str| match k {
            "metadata.name" => meta["name"].as_str().map(str::to_string),
            "metadata.namespace" => meta["namespace"].as_str().map(str::to_string),
            _ => None,
        };
        self.labels.matches(label) && self.fields.matches(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_762_594_862), "2025-11-08T09:41:02Z");
    }

    #[test]
    fn selectors_as_kube_proxy_sends_them() {
        let s = Selector::parse(
            "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
        );
        assert!(s.matches(|_| None));
        assert!(!s.matches(|k| (k == "service.kubernetes.io/headless").then(String::new)));
        let f = Selector::parse("metadata.name=node-a");
        assert!(f.matches(|_| Some("node-a".into())));
        assert!(!f.matches(|_| Some("node-b".into())));
    }
}
