//! TCP bulk throughput: iperf3 from the client to the bulk Service, in the
//! download direction (`-R`: the backend sends, so the bulk data are replies
//! that cross the reverse translation), with 1 and with 8 parallel streams.
//!
//! A transfer that fails (iperf3 reports an error, or receives nothing, or
//! does not finish) is recorded as a failure with iperf3's own words, never
//! as a throughput.

use std::{
    fs::File,
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use portmap_testkit::{netns::Netns, process::Process};

use super::topo::BACKEND_PORT;

/// Parallel streams of each measurement.
pub const STREAMS: [u32; 2] = [1, 8];
/// Seconds iperf3 runs before it starts counting (slow start, first ACKs)
/// when it measures `seconds`: one, except in a one-second run (a smoke
/// test, whose figures are not the point).
pub fn omit_s(seconds: u32) -> u32 {
    if seconds >= 2 { 1 } else { 0 }
}
/// iperf3's idle timeout for receiving data: a path that loses the data
/// fails within seconds, not after iperf3's default two minutes.
const RCV_TIMEOUT_MS: u32 = 3000;
const CONNECT_TIMEOUT_MS: u32 = 3000;
/// How long past its own duration a transfer may take before it is stopped.
const GRACE: Duration = Duration::from_secs(10);

/// One iperf3 run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bulk {
    pub streams: u32,
    /// What the client received, in Gbit/s over the measured seconds; `None`
    /// when the transfer failed.
    pub gbps: Option<f64>,
    /// Bytes the client received in the measured seconds (also when the
    /// transfer failed, as far as iperf3 told).
    pub bytes: u64,
    pub seconds: f64,
    /// TCP retransmissions of the sender (the backend).
    pub retransmits: Option<u64>,
    /// Why the transfer failed.
    pub error: Option<String>,
    /// The addresses the iperf3 server saw its connections come from
    /// (distinct, sorted; none in runs from before they were recorded).
    #[serde(default)]
    pub sources: Vec<String>,
}

impl Bulk {
    fn failed(streams: u32, error: String) -> Self {
        Self {
            streams,
            gbps: None,
            bytes: 0,
            seconds: 0.0,
            retransmits: None,
            error: Some(error),
            sources: Vec::new(),
        }
    }
}

/// Runs one download of `seconds` (after [`omit_s`] not counted) with
/// `streams` streams from `client` to `target`, served by a one-off iperf3
/// server on [`BACKEND_PORT`] of `server_ns`. Errors are the benchmark's own
/// (a program that cannot start); a transfer that fails is a `Bulk` with its
/// `error`.
pub fn run(
    client: &Netns,
    server_ns: &Netns,
    target: SocketAddrV4,
    streams: u32,
    seconds: u32,
    scratch: &Path,
    tag: &str,
) -> Result<Bulk> {
    let server_log = scratch.join(format!("{tag}-iperf3-server.log"));
    let mut server = {
        let log = File::create(&server_log)
            .with_context(|| format!("creating {}", server_log.display()))?;
        let mut cmd = Command::new("iperf3");
        cmd.args(["--server", "--one-off", "--port"])
            .arg(BACKEND_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("iperf3 server log")?)
            .stderr(log);
        Process::start(server_ns, &mut cmd, "iperf3 --server")?
    };
    server.wait_listening(server_ns, BACKEND_PORT, &server_log, Duration::from_secs(5))?;

    let out_path = scratch.join(format!("{tag}-iperf3-client.json"));
    let err_path = scratch.join(format!("{tag}-iperf3-client.err"));
    let mut cmd = Command::new("iperf3");
    cmd.arg("--client")
        .arg(target.ip().to_string())
        .arg("--port")
        .arg(target.port().to_string())
        .arg("--reverse")
        .arg("--parallel")
        .arg(streams.to_string())
        .arg("--time")
        .arg(seconds.to_string())
        .arg("--omit")
        .arg(omit_s(seconds).to_string())
        .arg("--connect-timeout")
        .arg(CONNECT_TIMEOUT_MS.to_string())
        .arg("--rcv-timeout")
        .arg(RCV_TIMEOUT_MS.to_string())
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?,
        )
        .stderr(
            File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?,
        );
    let mut iperf = Process::start(client, &mut cmd, "iperf3 --client")?;
    let limit = Duration::from_secs(u64::from(seconds + omit_s(seconds))) + GRACE;
    let status = iperf.wait_for(limit)?;
    let stopped = status.is_none();
    if stopped {
        // SIGINT: iperf3 still prints its JSON, with what it received so far.
        iperf.signal(libc::SIGINT);
        let _ = iperf.wait_for(Duration::from_secs(3))?;
    }
    let status = iperf.stop();
    drop(server);
    let sources = peers(&std::fs::read_to_string(&server_log).unwrap_or_default());
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    for p in [&out_path, &err_path, &server_log] {
        let _ = std::fs::remove_file(p);
    }
    let mut bulk = parse(streams, &stdout);
    bulk.sources = sources;
    if stopped {
        let why = format!("did not finish within {limit:?}");
        bulk.error = Some(match bulk.error.take() {
            Some(e) => format!("{why} ({e})"),
            None => why,
        });
    } else if bulk.error.is_none() && !status.is_some_and(|s| s.success()) {
        let status = status.map_or("no status".into(), |s| s.to_string());
        bulk.error = Some(format!("iperf3 exited with {status}: {}", stderr.trim()));
    }
    if bulk.error.is_some() {
        bulk.gbps = None;
    }
    Ok(bulk)
}

/// The peers in an iperf3 server's log: "Accepted connection from ADDR,
/// port P" (the control connection) and "[  5] local ... connected to ADDR
/// port P" (each stream).
fn peers(log: &str) -> Vec<String> {
    let mut v: Vec<String> = log
        .lines()
        .filter_map(|l| {
            if let Some((_, rest)) = l.split_once("Accepted connection from ") {
                return rest.split(',').next();
            }
            let (_, rest) = l.split_once(" connected to ")?;
            rest.split_whitespace().next()
        })
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Reads iperf3's JSON report (`--json`).
fn parse(streams: u32, json: &str) -> Bulk {
    let v: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(_) => {
            let text = json.trim();
            let text = if text.is_empty() { "nothing" } else { text };
            return Bulk::failed(streams, format!("iperf3 printed no report: {text}"));
        }
    };
    let received = &v["end"]["sum_received"];
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    let seconds = received["seconds"].as_f64().unwrap_or(0.0);
    let bps = received["bits_per_second"].as_f64();
    let error = match v["error"].as_str() {
        Some(e) => Some(format!("iperf3: {e}")),
        None if bytes == 0 || bps.is_none_or(|b| b <= 0.0) => {
            Some("iperf3 received nothing".to_string())
        }
        None => None,
    };
    Bulk {
        streams,
        gbps: bps.filter(|_| error.is_none()).map(|b| b / 1e9),
        bytes,
        seconds,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
        error,
        sources: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_the_received_rate() {
        let json = r#"{"start": {}, "intervals": [], "end": {
            "sum_sent": {"bytes": 2500000000, "retransmits": 7},
            "sum_received": {"seconds": 2.0, "bytes": 2500000000, "bits_per_second": 1.0e10}}}"#;
        let b = parse(8, json);
        assert_eq!(b.gbps, Some(10.0));
        assert_eq!(
            (b.bytes, b.retransmits, b.streams),
            (2_500_000_000, Some(7), 8)
        );
        assert!(b.error.is_none());
    }

    #[test]
    fn the_server_log_names_its_peers() {
        let log = "-----------\nServer listening on 8080 (test #1)\n\
                   Accepted connection from 198.19.32.1, port 61001\n\
                   [  5] local 198.19.0.2 port 8080 connected to 198.19.32.1 port 61002\n\
                   [  8] local 198.19.0.2 port 8080 connected to 198.18.0.2 port 40000\n\
                   [ ID] Interval           Transfer     Bitrate         Retr\n";
        assert_eq!(peers(log), ["198.18.0.2", "198.19.32.1"]);
        assert!(peers("").is_empty());
    }

    #[test]
    fn failures_have_no_rate() {
        let err = parse(
            1,
            r#"{"end": {}, "error": "idle timeout for receiving data"}"#,
        );
        assert_eq!(err.gbps, None);
        assert_eq!(
            err.error.as_deref(),
            Some("iperf3: idle timeout for receiving data")
        );
        let nothing = parse(
            1,
            r#"{"end": {"sum_received": {"seconds": 2.0, "bytes": 0, "bits_per_second": 0}}}"#,
        );
        assert_eq!(nothing.gbps, None);
        assert_eq!(nothing.error.as_deref(), Some("iperf3 received nothing"));
        let garbage = parse(1, "");
        assert_eq!(garbage.gbps, None);
        assert!(garbage.error.unwrap().contains("no report"));
    }
}
