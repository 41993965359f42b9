//! `portmap-bench` run as a user runs it, bounded in time, writing into a
//! scratch directory that is removed on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::bin_path;

/// A finished `portmap-bench`; its directory goes on drop.
pub struct BenchRun {
    /// What it wrote (`--out`).
    pub out: PathBuf,
    pub status: ExitStatus,
    /// Its standard output and error.
    pub log: String,
    /// Its process id (its namespaces and scratch directory are named after it).
    pub pid: u32,
    dir: PathBuf,
}

impl Drop for BenchRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `portmap-bench ARGS --out DIR` (measuring the `portmap` built beside
/// it). Past `timeout` it is interrupted (Ctrl-C: it cleans up after itself)
/// and the test fails with its log.
pub fn run_bench(tag: &str, args: &[&str], timeout: Duration) -> BenchRun {
    let dir = std::env::temp_dir().join(format!("portmap-{tag}-{}", std::process::id()));
    let out = dir.join("out");
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    let log_path = dir.join("bench.log");
    let log = File::create(&log_path).expect("creating bench.log");
    let mut child = Command::new(bin_path("portmap-bench"))
        .arg("--portmap")
        .arg(bin_path("portmap"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("bench.log"))
        .stderr(log)
        .spawn()
        .expect("portmap-bench starts");
    let pid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for portmap-bench") {
            break status;
        }
        if start.elapsed() > timeout {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_secs(30));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "portmap-bench took over {timeout:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    BenchRun {
        out,
        status,
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        pid,
        dir,
    }
}

/// Namespaces named after the run's pid that are still there.
pub fn namespaces_left(prefix: &str, pid: u32) -> Vec<String> {
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-{pid}-")))
        .map(str::to_string)
        .collect()
}
