//! The API server's Services translated one at a time, and kept: a sync
//! translates again only the Services whose object, or set of
//! EndpointSlices, changed since the last (the reflectors replace the
//! `Arc` of an object that changes and keep the others', so identity tells
//! what changed), then settles what lies between Services (given nodePorts,
//! frontends claimed by two, oldest first) over every one, which costs a
//! lookup per frontend, not a translation. The result is the one
//! [`super::translate_each`] gives for the same objects; where it could
//! not be (a Service with a ClusterIP or nodePort to assign, which depends
//! on all the others, or objects without a namespace or twice), the caller
//! translates them whole instead.

use std::{collections::hash_map::Entry as MapEntry, sync::Arc};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::{
    Manifests, NodeConfig, Object, Translation,
    alloc::{self, Assignments, GivenNodePort},
    endpoints::{Index, SERVICE_NAME_LABEL},
    error::{ManifestError, Source},
    plan,
    translate::{self, Candidate, Units},
};

/// What the last syncs translated, per Service object.
#[derive(Debug, Default)]
pub struct ApiMemo {
    /// The node the entries were translated for.
    node: Option<NodeConfig>,
    /// By the address of the Service object (kept alive by its entry, so
    /// never another's).
    entries: HashMap<usize, Entry>,
    /// Counts calls: an entry not seen in the last is dropped.
    generation: u64,
    /// Services translated by the last call (the others were kept).
    translated: usize,
}

impl ApiMemo {
    /// Services whose translation is kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many Services the last call translated (the others' translation
    /// was kept).
    pub fn translated_last(&self) -> usize {
        self.translated
    }
}

#[derive(Debug)]
struct Entry {
    service: Arc<Service>,
    /// Its EndpointSlices, in the order given.
    slices: Vec<Arc<EndpointSlice>>,
    record: Record,
    /// The last call that saw the Service.
    generation: u64,
}

/// One Service translated alone.
#[derive(Debug)]
struct Record {
    source: Source,
    namespace: String,
    name: String,
    id: String,
    created: Option<Time>,
    /// What reading its spec had to say (said whether it is published or
    /// not).
    plan_warnings: Vec<String>,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    Rejected(ManifestError),
    /// Nothing to publish (headless, ExternalName, no ports, ...).
    Skipped,
    Planned {
        node_ports: Vec<GivenNodePort>,
        units: Units,
    },
}

/// [`super::translate_each`] of the API server's Services and
/// EndpointSlices alone (no manifest files), translating again only the
/// Services that changed since the last call with `memo`. `None` when it
/// cannot give the same result (see the module's comment): translate
/// whole then.
pub fn translate_api(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &NodeConfig,
    memo: &mut ApiMemo,
) -> Option<Translation> {
    if memo.node.as_ref() != Some(node) {
        memo.entries.clear();
        memo.node = Some(node.clone());
    }
    let groups = group_slices(services, slices)?;
    memo.generation += 1;
    memo.translated = 0;
    let generation = memo.generation;
    for service in services {
        let key = Arc::as_ptr(service) as usize;
        let (namespace, name) = namespace_name(&service.metadata);
        let mine = groups
            .get(&(namespace, name))
            .map_or(&[][..], Group::as_slice);
        if let Some(e) = memo.entries.get_mut(&key)
            && Arc::ptr_eq(&e.service, service)
            && same(&e.slices, mine)
        {
            e.generation = generation;
            continue;
        }
        let Some(record) = translate_one(service, mine, node) else {
            // Translated whole while such a Service is there: nothing kept.
            memo.entries.clear();
            return None;
        };
        let entry = Entry {
            service: service.clone(),
            slices: mine.iter().map(|s| (*s).clone()).collect(),
            record,
            generation,
        };
        memo.entries.insert(key, entry);
        memo.translated += 1;
    }
    memo.entries.retain(|_, e| e.generation == generation);
    Some(settle(&memo.entries))
}

/// A Service's EndpointSlices: most have one, which needs no `Vec`.
enum Group<'a> {
    One(&'a Arc<EndpointSlice>),
    Many(Vec<&'a Arc<EndpointSlice>>),
}

impl<'a> Group<'a> {
    fn as_slice(&self) -> &[&'a Arc<EndpointSlice>] {
        match self {
            Group::One(slice) => std::slice::from_ref(slice),
            Group::Many(slices) => slices,
        }
    }

    fn push(&mut self, slice: &'a Arc<EndpointSlice>) {
        match self {
            Group::One(first) => *self = Group::Many(vec![*first, slice]),
            Group::Many(slices) => slices.push(slice),
        }
    }
}

/// Each Service's EndpointSlices (by namespace and the
/// `kubernetes.io/service-name` label), in the order given; `None` for an
/// object without a namespace, or two objects of one kind and name.
fn group_slices<'a>(
    services: &'a [Arc<Service>],
    slices: &'a [Arc<EndpointSlice>],
) -> Option<HashMap<(&'a str, &'a str), Group<'a>>> {
    let mut names = HashSet::with_capacity(services.len().max(slices.len()));
    for s in services {
        if s.metadata.namespace.as_deref().is_none_or(str::is_empty)
            || !names.insert(namespace_name(&s.metadata))
        {
            return None;
        }
    }
    names.clear();
    let mut groups: HashMap<_, Group<'_>> = HashMap::with_capacity(services.len());
    for slice in slices {
        let meta = &slice.metadata;
        if meta.namespace.as_deref().is_none_or(str::is_empty)
            || !names.insert(namespace_name(meta))
        {
            return None;
        }
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let Some(service) = service {
            match groups.entry((namespace_name(meta).0, service.as_str())) {
                MapEntry::Occupied(mut e) => e.get_mut().push(slice),
                MapEntry::Vacant(e) => {
                    e.insert(Group::One(slice));
                }
            }
        }
    }
    Some(groups)
}

fn namespace_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn same(kept: &[Arc<EndpointSlice>], now: &[&Arc<EndpointSlice>]) -> bool {
    kept.len() == now.len() && kept.iter().zip(now).all(|(a, b)| Arc::ptr_eq(a, b))
}

/// An API object as the manifests' code holds it.
fn object<T: super::read::ApiObject>(object: &Arc<T>) -> Object<T> {
    let (namespace, name) = namespace_name(object.meta());
    Object {
        source: Source::api(format!("{} {namespace}/{name}", T::KIND)),
        namespace: namespace.to_string(),
        name: name.to_string(),
        object: object.clone(),
    }
}

/// One Service translated alone; `None` if it has a ClusterIP or
/// nodePort to assign.
fn translate_one(
    service: &Arc<Service>,
    slices: &[&Arc<EndpointSlice>],
    node: &NodeConfig,
) -> Option<Record> {
    let obj = object(service);
    let mut m = Manifests::default();
    m.endpoint_slices = slices.iter().map(|s| object(*s)).collect();
    let mut plan_warnings = Vec::new();
    let outcome = match plan::plan(&obj, node, &mut plan_warnings) {
        Err(e) => Outcome::Rejected(e),
        Ok(None) => Outcome::Skipped,
        Ok(Some(mut plan)) => {
            if !alloc::given_only(&mut plan) {
                return None;
            }
            Outcome::Planned {
                node_ports: alloc::given_node_ports(&plan),
                units: translate::units_of(&plan, &Index::new(&m), node),
            }
        }
    };
    Some(Record {
        id: format!("{}/{}", obj.namespace, obj.name),
        created: service.metadata.creation_timestamp.clone(),
        source: obj.source,
        namespace: obj.namespace,
        name: obj.name,
        plan_warnings,
        outcome,
    })
}

/// What lies between the Services, in the whole translation's order:
/// oldest first, reading's rejections, then given nodePorts taken twice,
/// then frontends claimed twice.
fn settle(entries: &HashMap<usize, Entry>) -> Translation {
    let mut records: Vec<&Record> = entries.values().map(|e| &e.record).collect();
    records.sort_by(|a, b| {
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    let mut warnings = Vec::new();
    let mut rejected = Vec::new();
    let mut planned = Vec::new();
    for r in &records {
        warnings.extend(r.plan_warnings.iter().cloned());
        match &r.outcome {
            Outcome::Rejected(e) => rejected.push(super::Rejected {
                service: r.id.clone(),
                source: r.source.clone(),
                error: e.clone(),
            }),
            Outcome::Skipped => {}
            Outcome::Planned { node_ports, units } => planned.push((*r, node_ports, units)),
        }
    }
    let (_, failed) = alloc::reserve_given_node_ports(
        planned
            .iter()
            .map(|(r, ports, _)| (&r.source, ports.as_slice())),
    );
    let mut candidates = Vec::with_capacity(planned.len());
    let mut failed = failed.into_iter().peekable();
    for (i, (r, _, units)) in planned.iter().enumerate() {
        if let Some((_, e)) = failed.next_if(|(at, _)| *at == i) {
            rejected.push(super::Rejected {
                service: r.id.clone(),
                source: r.source.clone(),
                error: e,
            });
            continue;
        }
        candidates.push(Candidate {
            source: &r.source,
            namespace: &r.namespace,
            name: &r.name,
            id: &r.id,
            units,
        });
    }
    let services = translate::merge(&candidates, &mut warnings, &mut rejected);
    translate::finish(services, Assignments::default(), warnings, rejected)
}
