//! What portmap's tests, its benchmark and `cargo xtask` build on the host
//! and must take down again, also when they fail or are interrupted: network
//! namespaces ([`netns`]), the client → node → backends topology ([`topo`]),
//! cgroup v2 directories ([`cgroup`]), Ctrl-C handling ([`signals`]),
//! child processes ([`process`]) and Docker Engines of their own
//! ([`docker`]). Every guard deletes what it made on drop.
//!
//! It depends on std, libc and anyhow only, so that xtask can use it before
//! bpf-linker exists. The daemon uses [`cgroup::ensure_mounted`] and [`lock`]
//! too (its one home for both): a fact about the host and a lock, not test
//! logic.

pub mod cgroup;
pub mod docker;
pub mod netns;
pub mod process;
pub mod signals;
pub mod topo;

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also when a thread panicked while holding it: what it guards
/// (logs, counters, the dataplane) stays usable, and a second panic would
/// only hide the first.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
