//! Reading manifest files: multi-document YAML (or JSON), single objects or
//! `kind: List` as `kubectl get -o yaml` prints, into typed objects.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    Resource,
    api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice},
};
use serde::Deserialize;
use serde_yaml::Value;

use super::error::{ManifestError, Source};

/// An object read from a manifest, with where it came from.
#[derive(Clone, Debug)]
pub struct Object<T> {
    pub source: Source,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    pub name: String,
    /// Shared: objects from the API server are the reflector's, not copies.
    pub object: Arc<T>,
}

/// The objects read from manifest files, in the order read.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub services: Vec<Object<Service>>,
    pub endpoint_slices: Vec<Object<EndpointSlice>>,
    pub pods: Vec<Object<Pod>>,
    /// Documents that were skipped (other kinds, empty directories).
    pub warnings: Vec<String>,
    /// (kind, namespace, name) → where it was first read, to refuse
    /// duplicates.
    seen: BTreeMap<(String, String, String), Source>,
}

/// An object of the API server's: namespace and name from its metadata.
pub trait ApiObject: Resource<Scope = k8s_openapi::NamespaceResourceScope> {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
}

impl ApiObject for Service {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
}

impl ApiObject for EndpointSlice {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
}

/// Reads files and directories (not recursively: the `.yaml`, `.yml` and
/// `.json` files in them, by name, leaving out hidden files). A file named
/// directly is read whatever its name. The same file named twice is read
/// once.
/// Whether a directory entry named `name` is read as a manifest: YAML or
/// JSON, and not hidden (an editor's or a writer's temporary file, a
/// ConfigMap volume's `..data`).
pub fn is_manifest_name(name: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|s| name.ends_with(s)) && !name.starts_with('.')
}

pub fn read_manifests(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
    let mut m = Manifests::default();
    let mut done = BTreeSet::new();
    for path in paths {
        let cant =
            |e: std::io::Error| ManifestError::new(format!("cannot read: {e}")).in_file(path);
        let meta = fs::metadata(path).map_err(cant)?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in fs::read_dir(path).map_err(cant)? {
                let entry = entry.map_err(cant)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Following symlinks: a ConfigMap volume links its files
                // into `..data/`.
                if is_manifest_name(&name) && entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            if files.is_empty() {
                m.warnings.push(format!(
                    "{}: no .yaml, .yml or .json files in this directory",
                    path.display()
                ));
            }
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            let id = fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if !done.insert(id) {
                continue;
            }
            let text = fs::read_to_string(&file)
                .map_err(|e| ManifestError::new(format!("cannot read: {e}")).in_file(&file))?;
            m.add_text(&file, &text)?;
        }
    }
    Ok(m)
}

impl Manifests {
    /// Adds the Services and EndpointSlices the API server holds (shared,
    /// not copied). An object also defined in a file is the file's: the API
    /// server's is left out with a warning.
    pub fn add_api_objects(
        &mut self,
        services: impl IntoIterator<Item = Arc<Service>>,
        slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
    ) {
        for object in services {
            if let Some(o) = self.api_object(object) {
                self.services.push(o);
            }
        }
        for object in slices {
            if let Some(o) = self.api_object(object) {
                self.endpoint_slices.push(o);
            }
        }
    }

    fn api_object<T: ApiObject>(&mut self, object: Arc<T>) -> Option<Object<T>> {
        let meta = object.meta();
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let source = Source::api(format!("{} {namespace}/{name}", T::KIND));
        let id = (T::KIND.to_string(), namespace.clone(), name.clone());
        if let Some(first) = self.seen.get(&id) {
            self.warnings.push(source.warn(
                "",
                format_args!("also defined in {}, which is used", first.origin()),
            ));
            return None;
        }
        self.seen.insert(id, source.clone());
        Some(Object {
            source,
            namespace,
            name,
            object,
        })
    }

    /// The objects of one file's text (for tests and callers that have the
    /// text already).
    pub fn parse(file: impl AsRef<Path>, text: &str) -> Result<Self, ManifestError> {
        let mut m = Manifests::default();
        m.add_text(file.as_ref(), text)?;
        Ok(m)
    }

    /// Adds the objects of one file's text.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = Value::deserialize(doc)
                .and_then(|mut v| v.apply_merge().map(|()| v))
                .map_err(|e| syntax_error(file, document, &e))?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let at = Source {
                file: Some(file.to_path_buf()),
                document,
                item: None,
                object: format!("document {document}"),
            };
            self.add_value(at, value)?;
        }
        Ok(())
    }

    fn add_value(&mut self, at: Source, value: Value) -> Result<(), ManifestError> {
        let Value::Mapping(map) = &value else {
            return Err(at.err(
                "",
                "not a Kubernetes object (a mapping with apiVersion and kind)",
            ));
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
        let Some(kind) = text("kind") else {
            return Err(at.err("kind", "missing"));
        };
        let api_version = text("apiVersion").unwrap_or_default();
        if kind.ends_with("List") {
            return self.add_list(at, &kind, value);
        }
        let meta = |key: &str| {
            map.get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let name = meta("name").unwrap_or_default();
        let given_ns = meta("namespace").filter(|ns| !ns.is_empty());
        let namespace = given_ns.clone().unwrap_or_else(|| "default".to_string());
        let recognised = [
            (Service::API_VERSION, Service::KIND),
            (EndpointSlice::API_VERSION, EndpointSlice::KIND),
            (Pod::API_VERSION, Pod::KIND),
        ]
        .contains(&(api_version.as_str(), kind.as_str()));
        if !recognised {
            let object = match given_ns {
                Some(ns) => format!("{kind} {ns}/{name}"),
                None => format!("{kind} {name}"),
            };
            let source = Source { object, ..at };
            self.warnings.push(source.warn(
                "",
                format_args!(
                    "{} is not read: ignored (portmap reads v1 Service, \
                     discovery.k8s.io/v1 EndpointSlice and v1 Pod)",
                    if api_version.is_empty() {
                        format!("{kind} without apiVersion")
                    } else {
                        format!("{api_version} {kind}")
                    }
                ),
            ));
            return Ok(());
        }
        let source = Source {
            object: format!("{kind} {namespace}/{name}"),
            ..at
        };
        if name.is_empty() {
            return Err(source.err("metadata.name", "missing"));
        }
        let id = (kind.clone(), namespace.clone(), name.clone());
        if let Some(first) = self.seen.get(&id) {
            return Err(source.err("", format!("defined twice (first in {})", first.origin())));
        }
        self.seen.insert(id, source.clone());
        match kind.as_str() {
            "Service" => {
                let object = Arc::new(typed(&source, value)?);
                self.services.push(Object {
                    source,
                    namespace,
                    name,
                    object,
                });
            }
            "EndpointSlice" => {
                let object = Arc::new(typed(&source, value)?);
                self.endpoint_slices.push(Object {
                    source,
                    namespace,
                    name,
                    object,
                });
            }
            _ => {
                let object = Arc::new(typed(&source, value)?);
                self.pods.push(Object {
                    source,
                    namespace,
                    name,
                    object,
                });
            }
        }
        Ok(())
    }

    fn add_list(&mut self, at: Source, kind: &str, value: Value) -> Result<(), ManifestError> {
        let Value::Mapping(mut map) = value else {
            return Ok(());
        };
        let items = match map.remove("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Sequence(items)) => items,
            Some(_) => return Err(at.err("items", format!("a {kind}'s items must be a list"))),
        };
        for (i, item) in items.into_iter().enumerate() {
            let source = Source {
                item: Some(i),
                object: format!("{} items[{i}]", at.object),
                ..at.clone()
            };
            self.add_value(source, item)?;
        }
        Ok(())
    }
}

/// Deserializes a typed object, naming the field that is wrong.
fn typed<T: serde::de::DeserializeOwned>(
    source: &Source,
    value: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        source.err(path, e.into_inner().to_string())
    })
}

fn syntax_error(file: &Path, document: usize, e: &serde_yaml::Error) -> ManifestError {
    let mut message = e.to_string();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(at) = message.find(&suffix) {
            message.replace_range(at..at + suffix.len(), "");
        }
        message = format!("line {} column {}: {message}", loc.line(), loc.column());
    }
    ManifestError::new(message)
        .in_file(file)
        .object(format!("document {document}"))
}
