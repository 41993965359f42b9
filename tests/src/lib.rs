//! Test harness for portmap: network namespaces, topologies, the real
//! `portmap` binary, backends, clients and metrics, all cleaned up on drop.
//!
//! Every test builds its own namespaces with unique names and never touches
//! the root namespace. Tests must run as root.

pub mod apiserver;
pub mod bench;
pub mod cgroup;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod docker;
pub mod kube;
pub mod load;
pub mod metrics;
pub mod model;
pub use portmap_testkit::netns;
pub mod packet;
pub mod server;
pub mod testrun;
pub mod topo;
pub mod transfer;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// A name unique to this process and call: `pm-<tag>-<pid>-<n>`.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "pm-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A binary of the workspace's target directory (`target/debug/NAME`), next to
/// the test executable's `deps/` directory. `PORTMAP_BIN_DIR` overrides.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PORTMAP_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("test binary has a directory");
            deps.parent().expect("deps/ has a parent").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build`, as `cargo xtask test` does)",
        path.display()
    );
    path
}

/// Fails the test unless it runs as root, with a message saying so.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and load eBPF: run them as root"
    );
}
