//! cgroup v2 directories for socket-level load balancing: a test gives one to
//! `portmap run --cgroup` and runs its client processes in it, so portmap's
//! socket programs apply to those processes only, never to the machine's
//! other processes. Removed on drop, with whatever still runs in it.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{bin_path, netns::Netns, unique_name};

/// Names of the cgroups tests create (under the cgroup2 mount point).
pub const PREFIX: &str = "portmap-test-";

/// A cgroup of its own for one test.
#[derive(Debug)]
pub struct Cgroup(portmap_testkit::cgroup::Cgroup);

impl Cgroup {
    /// Creates `<cgroup2 mount>/portmap-test-pm-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        let name = format!("{PREFIX}{}", unique_name(tag));
        portmap_testkit::cgroup::Cgroup::create(&name).map(Self)
    }

    /// A cgroup inside this one (drop it first: a cgroup with children
    /// cannot be removed).
    pub fn child(&self, name: &str) -> Result<Self> {
        let mount = portmap_testkit::cgroup::mount_point().context("cgroup2 is not mounted")?;
        let inner = self.path().strip_prefix(&mount)?.join(name);
        portmap_testkit::cgroup::Cgroup::create(inner.to_str().context("a UTF-8 name")?).map(Self)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The path as a `portmap run --cgroup` argument.
    pub fn arg(&self) -> &str {
        self.path().to_str().expect("a UTF-8 path")
    }

    /// Makes the process `cmd` starts join this cgroup before it runs its
    /// program (so its first socket is already in it).
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        self.0.enter(cmd)
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.0.pids()
    }

    /// Runs `portmap-testclient ARGS` in `ns` (network namespace only) and in
    /// this cgroup; returns what it printed, or fails with it.
    pub fn client(&self, ns: &Netns, args: &[&str]) -> Result<Reply> {
        let mut cmd = ns.command_net_only(bin_path("portmap-testclient"))?;
        cmd.args(args);
        self.enter(&mut cmd)?;
        let out = cmd.output().context("running portmap-testclient")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let reply = Reply::parse(&stdout);
        match out.status.code() {
            Some(0) | Some(1) => Ok(reply),
            _ => bail!(
                "portmap-testclient {} in {}: {}{stdout}",
                args.join(" "),
                ns.name(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// As [`Cgroup::client`], failing unless the client succeeded.
    pub fn ask(&self, ns: &Netns, args: &[&str]) -> Result<Reply> {
        let reply = self.client(ns, args)?;
        if let Some(e) = reply.get("error") {
            bail!(
                "portmap-testclient {} in {}: {e}",
                args.join(" "),
                ns.name()
            );
        }
        Ok(reply)
    }
}

/// What `portmap-testclient` printed: `key: value` lines.
#[derive(Clone, Debug, Default)]
pub struct Reply(pub BTreeMap<String, String>);

impl Reply {
    fn parse(text: &str) -> Self {
        Reply(
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The HTTP body or datagram answered.
    pub fn answer(&self) -> &str {
        self.get("answer").unwrap_or("")
    }

    /// What `getpeername` said.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.get("peer")?.parse().ok()
    }

    /// The source `recvfrom` gave for the UDP answer.
    pub fn from(&self) -> Option<SocketAddr> {
        self.get("from")?.parse().ok()
    }

    /// The error number the client failed with, if it failed on one.
    pub fn errno(&self) -> Option<i32> {
        self.get("errno")?.parse().ok()
    }
}
