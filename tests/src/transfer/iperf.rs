//! iperf3 (Debian's): a server in a backend, a client that receives (`-R`, so
//! the bulk of the data crosses portmap's reverse translation).

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{curl::Client, proc::output_within, proc::wait_listening};
use crate::netns::Netns;

/// `iperf3 -s -p PORT` (all addresses, both families), killed on drop.
pub struct Iperf3Server {
    child: Child,
}

impl Iperf3Server {
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let mut cmd = ns.command("iperf3");
        // --idle-timeout: a test that lost its client (a failed transfer)
        // does not keep the server busy for the next one.
        cmd.args(["-s", "-p", &port.to_string(), "--idle-timeout", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .context("starting iperf3 (installed by `cargo xtask setup`)")?;
        let server = Iperf3Server { child };
        wait_listening(ns, port)?;
        Ok(server)
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `iperf3 -c HOST -p PORT -R -n BYTES`: the server sends `bytes`; returns
/// what the client received, by iperf3's own account.
pub fn receive(client: Client, to: std::net::SocketAddr, bytes: u64) -> Result<u64> {
    let mut cmd = client.command("iperf3")?;
    cmd.args(["-c", &to.ip().to_string(), "-p", &to.port().to_string()])
        .args(["-R", "-n", &bytes.to_string(), "--json"])
        .args(["--connect-timeout", "3000", "--rcv-timeout", "4000"]);
    let what = format!("iperf3 -c {to} -R -n {bytes}");
    let out = output_within(&mut cmd, Duration::from_secs(60), &what)?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{what}: {} and no JSON report: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(error) = report["error"].as_str() {
        bail!("{what}: {error}");
    }
    if !out.status.success() {
        bail!("{what}: {}", out.status);
    }
    report["end"]["sum_received"]["bytes"]
        .as_u64()
        .with_context(|| format!("{what}: no end.sum_received.bytes in its report"))
}
