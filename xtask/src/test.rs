//! `cargo xtask test`: setup, build, run the whole test suite as root, and
//! check that the tests cleaned up after themselves.

use std::{fs, path::Path, process::ExitCode};

use anyhow::{Context as _, Result};

use crate::{
    fuzz, setup,
    util::{cmd, output, require_root, run, workspace_root},
};

/// State the tests create and must remove: namespaces and bpffs pins.
const NETNS_PREFIX: &str = "pm-";
const BPFFS: &str = "/sys/fs/bpf";
const BPFFS_PREFIX: &str = "portmap";
/// cgroups the tests and the demo create at the root of the unified hierarchy.
const CGROUP_PREFIXES: [&str; 2] = ["portmap-test-", "portmap-demo-"];

pub fn run_tests(extra: &[String], fuzz_seconds: u64) -> Result<ExitCode> {
    require_root(
        "cargo xtask test",
        "the tests create network namespaces and attach XDP programs",
    )?;
    setup::run_setup()?;
    let root = workspace_root();

    let before = leftovers()?;
    if before.is_empty() {
        println!(
            "ok: no network namespace {NETNS_PREFIX}* nor {BPFFS}/{BPFFS_PREFIX}* before the tests"
        );
    } else {
        println!(
            "warning: left over before the tests (from an earlier run?): {}",
            before.join(", ")
        );
    }

    // Default members: portmap-ebpf and portmap-bench-ebpf are built for BPF
    // by the build scripts of portmap-userspace and portmap-bench (which need
    // bpf-linker on PATH), never for the host.
    println!("== cargo build");
    run(cmd("cargo")
        .arg("build")
        .current_dir(&root)
        .env("RUST_BACKTRACE", "1"))?;

    let mut test = cmd("cargo");
    // Every test binary runs even when one fails, so a run shows all that
    // fails, not the first.
    test.args(["test", "--no-fail-fast"])
        .args(extra)
        .current_dir(&root)
        .env("RUST_BACKTRACE", "1");
    println!("== {}", crate::util::describe(&test));
    let status = test.status().context("cannot start `cargo test`")?;
    let code = status.code().unwrap_or(1);

    let after = leftovers()?;
    if after.is_empty() {
        println!("ok: no network namespace {NETNS_PREFIX}* nor {BPFFS}/{BPFFS_PREFIX}* left over");
    } else {
        for item in &after {
            let note = if before.contains(item) {
                " (already there before the tests)"
            } else {
                ""
            };
            println!("warning: left over after the tests: {item}{note}");
        }
        println!(
            "warning: tests must clean up after themselves; remove these by hand (`ip netns del NAME`, `rm -r {BPFFS}/NAME`, `rmdir CGROUP`)"
        );
        if code == 0 {
            return Ok(ExitCode::FAILURE);
        }
    }
    if extra.is_empty() && fuzz_seconds > 0 {
        // After the tests, so a fuzz finding does not hide a test result.
        let started = std::time::Instant::now();
        let runs = fuzz::run_fuzz(fuzz_seconds, &[])?;
        let execs: u64 = runs.iter().map(|r| r.execs).sum();
        println!(
            "ok: fuzzing, {} targets, {execs} inputs in {:.0} s (build included)",
            runs.len(),
            started.elapsed().as_secs_f64()
        );
    } else if fuzz_seconds > 0 {
        println!(
            "note: no fuzzing (it runs with the whole suite, without arguments for cargo test)"
        );
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Network namespaces named `pm-*`, `/sys/fs/bpf/portmap*` entries,
/// `portmap-test-*` / `portmap-demo-*` cgroups and the Docker tests'
/// `/tmp/pm-dk-*` directories.
pub fn leftovers() -> Result<Vec<String>> {
    let mut found: Vec<String> = output(cmd("ip").args(["netns", "list"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
        .map(|name| format!("netns {name}"))
        .collect();
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(BPFFS_PREFIX) {
                found.push(Path::new(BPFFS).join(name).display().to_string());
            }
        }
    }
    if let Some(mount) = portmap_testkit::cgroup::mount_point()
        && let Ok(entries) = fs::read_dir(&mount)
    {
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if CGROUP_PREFIXES.iter().any(|p| name.starts_with(p)) {
                found.push(format!("cgroup {}", mount.join(name).display()));
            }
        }
    }
    // The Docker tests' engines keep their files in /tmp/pm-dk-*.
    if let Ok(entries) = fs::read_dir("/tmp") {
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with("pm-dk-") {
                found.push(format!("/tmp/{name}"));
            }
        }
    }
    found.sort();
    Ok(found)
}
