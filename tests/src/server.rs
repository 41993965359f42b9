//! Backends: `portmap-testserver` processes in backend namespaces.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{bin_path, netns::Netns};

/// A running test server, killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    /// Starts a server named `name` listening on the given TCP and UDP
    /// addresses in `ns`, and waits until its sockets are bound.
    pub fn start(ns: &Netns, name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Result<Self> {
        let tcp = tcp.iter().map(|a| ("--tcp", *a));
        let udp = udp.iter().map(|a| ("--udp", *a));
        Self::spawn(ns, name, tcp.chain(udp))
    }

    /// Starts a server that answers each UDP datagram on `addrs` with its
    /// bytes complemented, the same length (`--udp-mirror`).
    pub fn udp_mirror(ns: &Netns, name: &str, addrs: &[SocketAddr]) -> Result<Self> {
        Self::spawn(ns, name, addrs.iter().map(|a| ("--udp-mirror", *a)))
    }

    fn spawn(
        ns: &Netns,
        name: &str,
        sockets: impl Iterator<Item = (&'static str, SocketAddr)>,
    ) -> Result<Self> {
        let mut cmd = ns.command(bin_path("portmap-testserver"));
        cmd.args(["--name", name]);
        for (flag, a) in sockets {
            cmd.args([flag, &a.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portmap-testserver")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "testserver {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Server { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
