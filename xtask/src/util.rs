//! Helpers shared by the subcommands: where things are, running child
//! processes with the right PATH, root checks. Signals and the rest of the
//! process handling are `portmap_testkit`'s.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context as _, Result, bail};
pub use portmap_testkit::process::{describe, output};
use portmap_testkit::process::{search_path, which_in};

/// `$CARGO_HOME`, or `~/.cargo` as cargo and rustup default to.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The directories of [`child_path`].
fn child_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Ok(home) = cargo_home() {
            dirs.push(home.join("bin"));
        }
        for dir in search_path() {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    })
}

/// The PATH given to every child: `$CARGO_HOME/bin` first (CI's PATH may lack
/// it, and bpf-linker is installed there), then the inherited PATH, then the
/// usual system directories (`ip`, `ethtool` and `nft` live in sbin).
pub fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        env::join_paths(child_dirs()).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
    })
}

/// A command whose PATH is [`child_path`].
pub fn cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", child_path());
    c
}

/// The first executable file named `name` in [`child_path`].
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    which_in(name, child_dirs())
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let what = describe(c);
    let status = c
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// The workspace's root directory (this crate's parent).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a message saying why `what` needs root and how to get it.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`{what}` must run as root ({why}): rerun as root, e.g. `sudo env \"PATH=$PATH\" {what}`"
        );
    }
    Ok(())
}
