//! `portmap bench` end to end on a small configuration: every mode delivers
//! packets, the report, the results and the charts are written, and nothing
//! is left behind.

use std::time::Duration;

use portmap_tests::{
    bench::{namespaces_left, run_bench},
    require_root,
};
use serde_json::Value;

const MODES: [&str; 4] = ["portmap", "iptables", "nftables", "forward"];
const TIMEOUT: Duration = Duration::from_secs(240);

fn sum(cells: &[&Value], pointer: &str) -> u64 {
    cells
        .iter()
        .filter_map(|c| c.pointer(pointer).and_then(Value::as_u64))
        .sum()
}

#[test]
fn bench_measures_every_mode_and_writes_its_report() {
    require_root();
    let run = run_bench(
        "bench-smoke",
        &[
            "--services",
            "1,100",
            "--duration",
            "1",
            "--repeats",
            "1",
            "--connections",
            "50",
        ],
        TIMEOUT,
    );
    let (out, log, status, pid) = (&run.out, &run.log, run.status, run.pid);
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

    let left = namespaces_left("pm-bench", pid);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let scratch = std::env::temp_dir().join(format!("portmap-bench-{pid}"));
    assert!(!scratch.exists(), "{} left behind", scratch.display());
}
