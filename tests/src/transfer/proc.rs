//! Child processes with a bound on their run time.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// Reads a child's pipe to the end on a thread, so it never fills.
pub fn drain(stream: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut s) = stream {
            let _ = s.read_to_end(&mut out);
        }
        out
    })
}

/// Waits for `child` until `limit` has passed since `start`; kills it then
/// and fails, naming `what`.
pub fn wait_until(
    child: &mut Child,
    start: Instant,
    limit: Duration,
    what: &str,
) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {} s (killed)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion within `limit`, with its output collected;
/// fails if it runs longer (it is killed).
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until(&mut child, start, limit, what)?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Waits until something in `ns` listens on TCP `port` (any address), at
/// most 10 s: servers are ready once their sockets are.
pub fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ns.listening(port)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on TCP port {port} in {} after 10 s",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
