//! A fake Kubernetes API server for tests: plain HTTP/1.1 served by the
//! test itself, inside a namespace, speaking the wire protocol clients
//! (client-go's reflectors, kube-rs' watchers) rely on:
//!
//! - list with `limit`/`continue` pages and the collection's
//!   `resourceVersion`; label and field selectors;
//! - watch from a `resourceVersion`: chunked JSON lines (ADDED, MODIFIED,
//!   DELETED, BOOKMARK when asked for), ending after `timeoutSeconds`;
//!   from a compacted `resourceVersion`, one ERROR event with code 410
//!   (Expired), as kube-apiserver's watch cache answers;
//! - creating Events (`events.k8s.io/v1`), kept for the test to read;
//! - everything else: 404 with a `Status`, as for an unknown resource.
//!
//! The test adds, edits and deletes objects; it can cut every connection
//! (`drop_connections`), compact the history (`compact`), and stop and
//! restart the server (`stop`, `restart`) as an API server that goes away
//! and comes back with a newer resourceVersion. Clients reach it through
//! the kubeconfig it writes (`kubeconfig`).

mod http;
mod store;
pub mod wire;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use portmap_testkit::lock;
use serde_json::Value;

use self::store::Store;
pub use self::wire::Kind;
use crate::netns::Netns;

/// What the connections share.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Signalled at every change of the store.
    changed: Condvar,
    /// The server is being dropped: every thread ends.
    shutdown: AtomicBool,
    /// Watches send a BOOKMARK this often (when asked for bookmarks).
    bookmark_every: Duration,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut lock(&self.store));
        self.changed.notify_all();
        out
    }
}

/// A running fake API server; stops (and removes its kubeconfig) on drop.
pub struct ApiServer {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    /// A kubeconfig whose current context is this server.
    pub kubeconfig: PathBuf,
    accept: Option<JoinHandle<Result<()>>>,
}

impl ApiServer {
    /// Starts serving on 127.0.0.1 (an ephemeral port) inside `ns`.
    pub fn start(ns: &Netns) -> Result<Self> {
        let shared = Arc::new(Shared {
            // A cluster that has lived a little.
            store: Mutex::new(Store::new(1000)),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            bookmark_every: Duration::from_secs(1),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        let accept = ns.spawn(move || {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            tx.send(listener.local_addr())?;
            http::accept_loop(listener, &s)
        })?;
        let addr = rx
            .recv_timeout(Duration::from_secs(5))
            .context("the fake API server did not start")??;
        let kubeconfig = PathBuf::from(format!(
            "/run/portmap-tests/kubeconfig-{}.yaml",
            crate::unique_name("api")
        ));
        std::fs::create_dir_all("/run/portmap-tests")?;
        std::fs::write(&kubeconfig, kubeconfig_text(addr))?;
        Ok(ApiServer {
            shared,
            addr,
            kubeconfig,
            accept: Some(accept),
        })
    }

    /// Creates or replaces an object (JSON with kind, apiVersion and
    /// metadata.name); returns its new resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        self.shared.update(|s| s.apply(object))
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        self.shared.update(|s| s.delete(kind, namespace, name))
    }

    /// The object stored under that name, if any.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        let key = (kind, ns.to_string(), name.to_string());
        lock(&self.shared.store).objects.get(&key).cloned()
    }

    /// Cuts every open connection (lists, watches) mid-stream.
    pub fn drop_connections(&self) {
        self.shared.update(|s| s.epoch += 1);
    }

    /// Forgets the history: a watch resumed from before now gets 410.
    pub fn compact(&self) {
        self.shared.update(Store::compact);
    }

    /// Stops answering: open connections are cut, new ones refused.
    pub fn stop(&self) {
        self.shared.update(|s| {
            s.up = false;
            s.epoch += 1;
        });
    }

    /// Comes back on the same port with a resourceVersion `jump` ahead
    /// and no history before it (a restored or replaced etcd): resumed
    /// watches get 410 and clients list again.
    pub fn restart(&self, jump: u64) {
        self.shared.update(|s| {
            s.rv += jump;
            s.compact();
            s.up = true;
        });
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared.store).events.clone()
    }

    /// `METHOD PATH?QUERY` of the requests so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.store).requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.update(|s| s.epoch += 1);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn kubeconfig_text(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: portmap\n\
         current-context: fake\nusers:\n- name: portmap\n  user: {{}}\n"
    )
}
