//! `portmap bench` end to end on a small configuration: every mode delivers
//! packets, the report, the results and the charts are written, and nothing
//! is left behind.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portmap_tests::{bin_path, require_root};
use serde_json::Value;

const MODES: [&str; 4] = ["portmap", "iptables", "nftables", "forward"];
const TIMEOUT: Duration = Duration::from_secs(240);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sum(cells: &[&Value], pointer: &str) -> u64 {
    cells
        .iter()
        .filter_map(|c| c.pointer(pointer).and_then(Value::as_u64))
        .sum()
}

#[test]
fn bench_measures_every_mode_and_writes_its_report() {
    require_root();
    let tmp =
        TempDir(std::env::temp_dir().join(format!("portmap-bench-smoke-{}", std::process::id())));
    let out = tmp.0.join("out");
    std::fs::create_dir_all(&tmp.0).unwrap();
    let log_path = tmp.0.join("bench.log");
    let log = File::create(&log_path).unwrap();
    let mut child = Command::new(bin_path("portmap"))
        .args([
            "bench",
            "--services",
            "1,100",
            "--duration",
            "1",
            "--repeats",
            "1",
            "--connections",
            "50",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("portmap bench starts");
    let pid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            // Ctrl-C: the benchmark cleans up after itself, then exits.
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_secs(30));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "portmap bench took over {TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "portmap bench failed ({status}):\n{log}");

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
            .expect("results.json is JSON");
    assert_eq!(results["complete"], Value::Bool(true), "{log}");
    let cells = results["cells"].as_array().expect("cells");
    for mode in MODES {
        let of_mode: Vec<&Value> = cells.iter().filter(|c| c["mode"] == mode).collect();
        assert_eq!(of_mode.len(), 2, "{mode}: one cell per Service count");
        for pointer in ["/established/delivered", "/new_flows/delivered"] {
            assert!(
                sum(&of_mode, pointer) > 0,
                "{mode}: nothing delivered ({pointer}):\n{log}"
            );
        }
        assert!(sum(&of_mode, "/latency/samples") > 0, "{mode}: no latency");
    }
    assert!(!results["xdp_cost"].as_array().unwrap().is_empty());
    assert_eq!(results["control"].as_array().unwrap().len(), 2);

    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for section in ["## Targets", "## Throughput, new flows", "## Control plane"] {
        assert!(report.contains(section), "report.md lacks {section}");
    }
    for svg in [
        "throughput_established.svg",
        "throughput_new.svg",
        "latency.svg",
    ] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap_or_default();
        assert!(text.starts_with("<svg"), "{svg} is not an SVG");
    }

    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("pm-bench-{pid}-")))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let scratch = std::env::temp_dir().join(format!("portmap-bench-{pid}"));
    assert!(!scratch.exists(), "{} left behind", scratch.display());
}
