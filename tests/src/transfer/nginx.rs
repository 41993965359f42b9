//! Debian's nginx as a backend: serves a document root (with sendfile, as
//! deployed) and stores what clients PUT under `/upload/` (the DAV module),
//! so an upload's SHA-256 can be checked where it landed.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use portmap_testkit::process::{Captured, stop};

use super::proc::wait_listening;
use crate::netns::Netns;

/// A running nginx (master and one worker), stopped on drop.
pub struct Nginx {
    child: Option<Child>,
    uploads: PathBuf,
    stderr: Captured,
}

fn config(work: &Path, root: &Path, listen: &[SocketAddr]) -> String {
    let work = work.display();
    let listen: String = listen
        .iter()
        .map(|a| format!("        listen {a};\n"))
        .collect();
    format!(
        "user root;
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5;
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
{listen}        root {root};
        location /upload/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 64m;
        }}
    }}
}}
",
        root = root.display()
    )
}

impl Nginx {
    /// Starts nginx in `ns` on `listen` (all on one port), serving `root`;
    /// `work` holds its configuration, pid file and temporary files. Waits
    /// until it listens.
    pub fn start(ns: &Netns, listen: &[SocketAddr], root: &Path, work: &Path) -> Result<Self> {
        let port = listen.first().context("nginx needs an address")?.port();
        let conf = work.join("nginx.conf");
        std::fs::write(&conf, config(work, root, listen))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut cmd = ns.command("nginx");
        cmd.arg("-p")
            .arg(work)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (installed by `cargo xtask setup`)")?;
        let stderr = child
            .stderr
            .take()
            .map(Captured::collect)
            .unwrap_or_default();
        let mut nginx = Nginx {
            child: Some(child),
            uploads: root.join("upload"),
            stderr,
        };
        if let Err(e) = wait_listening(ns, port) {
            let exited = nginx
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            bail!(
                "nginx did not start ({e:#}; exit: {exited:?}):\n{}",
                nginx.logs()
            );
        }
        Ok(nginx)
    }

    /// Where a PUT to `/upload/NAME` is stored.
    pub fn uploaded(&self, name: &str) -> PathBuf {
        self.uploads.join(name)
    }

    /// What nginx wrote to its error log (stderr).
    pub fn logs(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker, then exits.
        if let Some(mut child) = self.child.take() {
            let _ = stop(&mut child, Duration::from_secs(3));
        }
    }
}
