//! The soak in its short form: `portmap-bench --soak` keeps TCP connections
//! and a UDP exchange going to one Service while its backends go terminating,
//! away and back every few hundred milliseconds; not one request may fail.

use std::time::Duration;

use portmap_tests::{
    bench::{namespaces_left, run_bench},
    require_root,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("soak.json has no {field}: {report}"))
}

#[test]
fn no_request_fails_while_backends_churn() {
    require_root();
    let run = run_bench(
        "soak",
        &["--soak", "--soak-seconds", "10", "--churn-ms", "250"],
        TIMEOUT,
    );
    let text = std::fs::read_to_string(run.out.join("soak.json"))
        .unwrap_or_else(|e| panic!("no soak.json ({e}):\n{}", run.log));
    let report: Value = serde_json::from_str(&text).expect("soak.json is JSON");
    assert!(run.status.success(), "the soak failed:\n{}", run.log);

    assert_eq!(count(&report, "tcp_failed"), 0, "{}", run.log);
    assert_eq!(count(&report, "udp_failed"), 0, "{}", run.log);
    assert!(
        count(&report, "tcp_answered") > 100,
        "too little TCP load:\n{}",
        run.log
    );
    assert!(
        count(&report, "udp_answered") > 100,
        "too little UDP load:\n{}",
        run.log
    );
    // Every backend went through terminating, removed and back at least once,
    // and the daemon applied every step.
    let steps = count(&report, "churn_events");
    assert!(steps >= 12, "only {steps} churn steps:\n{}", run.log);
    assert!(count(&report, "reloads") >= steps, "{}", run.log);
    // The UDP flow was moved off each removed backend.
    let moved = report["datapath_events"]["flow_reselected"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        moved > 0,
        "no flow was moved off a removed backend: {report}"
    );
    let md = std::fs::read_to_string(run.out.join("soak.md")).expect("soak.md");
    assert!(md.starts_with("# portmap soak: PASS"), "{md}");

    let left = namespaces_left("pm-soak", run.pid);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
