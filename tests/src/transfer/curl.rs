//! curl as the client: downloads hashed on the fly (curl's output piped into
//! `sha256sum`, nothing stored), uploads with PUT.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    content::digest_of,
    proc::{drain, output_within, wait_until},
};
use crate::{cgroup::Cgroup, netns::Netns};

/// Where a client program runs.
#[derive(Clone, Copy)]
pub enum Client<'a> {
    /// A host of its own: its packets reach the node through the node's
    /// interface (portmap's XDP and tc programs).
    Remote(&'a Netns),
    /// A process on the node, in the cgroup given to `portmap run --cgroup`
    /// (portmap's socket programs translate its connects).
    Node(&'a Netns, &'a Cgroup),
}

impl Client<'_> {
    pub fn command(&self, program: &str) -> Result<Command> {
        match self {
            Client::Remote(ns) => Ok(ns.command(program)),
            Client::Node(ns, cgroup) => {
                let mut cmd = ns.command_net_only(program)?;
                cgroup.enter(&mut cmd)?;
                Ok(cmd)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Client::Remote(_) => "remote",
            Client::Node(..) => "node",
        }
    }
}

/// `http://ADDR:PORT/PATH`, with IPv6 addresses in brackets.
pub fn url(to: SocketAddr, path: &str) -> String {
    format!("http://{to}/{}", path.trim_start_matches('/'))
}

/// How long a transfer may take at most, and how long it may stall: a lost
/// reply shows as a stall, reported in seconds rather than minutes.
const MAX_TIME: Duration = Duration::from_secs(60);
const STALL_SECS: &str = "4";

fn base(cmd: &mut Command) {
    // -g: IPv6 brackets are an address, not a glob.
    cmd.args(["-sS", "-g", "--fail", "--connect-timeout", "3"])
        .args(["--max-time", &MAX_TIME.as_secs().to_string()])
        .args(["--speed-limit", "1", "--speed-time", STALL_SECS]);
}

/// What a download delivered.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: u64,
    pub sha256: String,
}

/// Starts `curl URL` from `client` with its body piped into `sha256sum`;
/// [`Download::finish`] waits for both.
pub struct Download {
    url: String,
    curl: std::process::Child,
    sha: std::process::Child,
    started: Instant,
    curl_err: Option<std::thread::JoinHandle<Vec<u8>>>,
    sha_out: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Download {
    pub fn start(client: Client, url: &str) -> Result<Self> {
        let mut cmd = client.command("curl")?;
        base(&mut cmd);
        cmd.args(["-o", "-", "-w", "%{stderr}bytes=%{size_download}\n", url]);
        let mut curl = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting curl")?;
        let body = curl.stdout.take().context("curl has no stdout")?;
        let mut sha = Command::new("sha256sum")
            .stdin(Stdio::from(body))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting sha256sum")?;
        Ok(Download {
            url: url.to_string(),
            curl_err: Some(drain(curl.stderr.take())),
            sha_out: Some(drain(sha.stdout.take())),
            curl,
            sha,
            started: Instant::now(),
        })
    }

    pub fn finish(mut self) -> Result<Fetched> {
        let what = format!("curl {}", self.url);
        let status = wait_until(
            &mut self.curl,
            self.started,
            MAX_TIME + Duration::from_secs(5),
            &what,
        );
        // curl has exited (or was killed): its pipe is closed, sha256sum ends.
        let sha_status = wait_until(
            &mut self.sha,
            Instant::now(),
            Duration::from_secs(10),
            "sha256sum",
        )?;
        let status = status?;
        let stderr = joined(self.curl_err.take());
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let bytes = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("bytes="))
            .next_back()
            .and_then(|n| n.trim().parse::<u64>().ok());
        let took = self.started.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "{what}: {status} after {took:.1} s, {} bytes received: {}",
                bytes.unwrap_or(0),
                stderr
                    .lines()
                    .filter(|l| !l.starts_with("bytes="))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if !sha_status.success() {
            bail!("sha256sum of {}: {sha_status}", self.url);
        }
        Ok(Fetched {
            bytes: bytes.with_context(|| format!("{what} did not say how much it received"))?,
            sha256: digest_of(&joined(self.sha_out.take()))?,
        })
    }
}

fn joined(reader: Option<std::thread::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.and_then(|r| r.join().ok()).unwrap_or_default()
}

impl Drop for Download {
    /// A download abandoned on an error path (another one failed to start)
    /// does not run on until its time limit.
    fn drop(&mut self) {
        for child in [&mut self.curl, &mut self.sha] {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One download, hashed.
pub fn download(client: Client, url: &str) -> Result<Fetched> {
    Download::start(client, url)?.finish()
}

/// `curl -T FILE URL`: a PUT of the file's content; fails unless the server
/// answers 201 Created or 204 No Content.
pub fn upload(client: Client, file: &Path, url: &str) -> Result<()> {
    let mut cmd = client.command("curl")?;
    base(&mut cmd);
    cmd.arg("-T")
        .arg(file)
        .args(["-o", "/dev/null", "-w", "%{http_code}", url]);
    let what = format!("curl -T {} {url}", file.display());
    let out = output_within(&mut cmd, MAX_TIME + Duration::from_secs(5), &what)?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "{what}: {} (HTTP {code}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if code != "201" && code != "204" {
        bail!("{what}: HTTP {code}, expected 201 or 204");
    }
    Ok(())
}
