//! The control socket: how `portmap list` reaches a running `portmap run`.
//!
//! A client connects to the Unix socket, writes one request line and reads one
//! JSON document until the daemon closes the connection.

use std::{
    io::{BufReader, Read as _, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::dataplane::{Dataplane, Snapshot};

pub const DEFAULT_SOCKET: &str = "/run/portmap/portmap.sock";

/// What `list` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub snapshot: serde_json::Value,
}

/// Binds the socket, refusing if another daemon answers on it and replacing
/// a stale one left by a daemon that died.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another portmap is running: its control socket {} answers",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// Answers requests until the future is dropped.
pub async fn serve(
    listener: tokio::net::UnixListener,
    dataplane: Arc<Mutex<Dataplane>>,
) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let dataplane = dataplane.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, dataplane).await {
                log::debug!("control socket: {e:#}");
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, dataplane: Arc<Mutex<Dataplane>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read).read_line(&mut line).await?;
    let reply = match line.trim() {
        "list" => {
            let snapshot = tokio::task::spawn_blocking(move || {
                let dp = portmap_testkit::lock(&dataplane);
                dp.snapshot()
            })
            .await??;
            serde_json::to_string(&Status {
                snapshot: serde_json::to_value(snapshot)?,
            })?
        }
        other => serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string(),
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await?;
    Ok(())
}

/// Asks the daemon at `path` for its status.
pub fn request_list(path: &PathBuf) -> Result<Snapshot> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is `portmap run` running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"list\n")?;
    let mut body = String::new();
    BufReader::new(&mut stream).read_to_string(&mut body)?;
    let status: Status = serde_json::from_str(&body).context("reading the daemon's answer")?;
    serde_json::from_value(status.snapshot).context("reading the daemon's snapshot")
}
