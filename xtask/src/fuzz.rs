//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, nightly) for a bounded time each, from the committed seeds
//! (`fuzz/seeds/TARGET/`) plus what earlier runs here found
//! (`target/fuzz-corpus/TARGET/`). A crash fails the run and names the input
//! to keep: copied into `fuzz/regressions/TARGET/`, it is replayed by
//! `cargo test` from then on (`portmap_userspace::fuzz_checks`).

use std::{fs, path::Path, process::Stdio, time::Instant};

use anyhow::{Context as _, Result, bail};

use portmap_testkit::signals;

use crate::util::{cmd, describe, run, target_dir, workspace_root};

/// The targets, in `fuzz/Cargo.toml` and `portmap_userspace::fuzz_checks`.
pub const TARGETS: [&str; 4] = ["publish_spec", "cidr", "manifests", "command_line"];

/// What one target's run did.
#[derive(Debug)]
pub struct FuzzRun {
    pub target: String,
    pub execs: u64,
    pub seconds: f64,
    pub corpus: usize,
}

/// `cargo +nightly fuzz ARGS` from the workspace root. The eBPF programs are
/// not built: the targets only parse.
fn cargo_fuzz(root: &Path) -> std::process::Command {
    let mut c = cmd("cargo");
    c.args(["+nightly", "fuzz"])
        .current_dir(root)
        .env("AYA_BUILD_SKIP", "1");
    c
}

/// Builds every target, then runs each of `targets` (all when empty) for
/// `seconds`.
pub fn run_fuzz(seconds: u64, targets: &[String]) -> Result<Vec<FuzzRun>> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t} (there are {})", TARGETS.join(", "));
        }
    }
    let root = workspace_root();
    let mut build = cargo_fuzz(&root);
    // Debug assertions: an overflow is a finding too. No sanitizer: the
    // code under test is safe Rust, and coverage is what guides the search.
    build.args(["build", "--sanitizer", "none", "--debug-assertions"]);
    println!("== {}", describe(&build));
    run(&mut build)?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let mut runs = Vec::new();
    for target in chosen {
        signals::check()?;
        runs.push(run_target(&root, target, seconds)?);
    }
    Ok(runs)
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<FuzzRun> {
    let corpus = target_dir().join("fuzz-corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = root.join("fuzz/seeds").join(target);
    let mut fuzz = cargo_fuzz(root);
    fuzz.args(["run", "--sanitizer", "none", "--debug-assertions", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // A hang or a runaway allocation is a finding, not a stuck CI.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]);
    println!("== {}", describe(&fuzz));
    let started = Instant::now();
    let out = fuzz
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(&fuzz)))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({}):\n{}\n\nkeep the input it names (fuzz/artifacts/{target}/...) as \
             fuzz/regressions/{target}/NAME: `cargo test -p portmap-userspace fuzz_checks` then \
             replays it; fix the code until that passes",
            out.status,
            tail.join("\n")
        );
    }
    let execs = final_stat(&log, "stat::number_of_executed_units")
        .with_context(|| format!("fuzz target {target} printed no statistics:\n{log}"))?;
    let run = FuzzRun {
        target: target.to_string(),
        execs,
        seconds: started.elapsed().as_secs_f64(),
        corpus: fs::read_dir(&corpus).map_or(0, |d| d.count()),
    };
    println!(
        "ok: fuzz {}: {} inputs in {:.0} s ({:.0}/s), corpus of {}",
        run.target,
        run.execs,
        run.seconds,
        run.execs as f64 / seconds.max(1) as f64,
        run.corpus
    );
    Ok(run)
}

/// A `stat::NAME: VALUE` line of libFuzzer's final statistics.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.trim().strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// How long a whole-suite `cargo xtask test` fuzzes each target.
pub const TEST_SECONDS: u64 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statistics_are_read() {
        let log = "INFO: seed\nDone 123 runs in 2 second(s)\nstat::number_of_executed_units: 4567\nstat::average_exec_per_sec:     2283\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units"),
            Some(4567)
        );
        assert_eq!(final_stat(log, "stat::average_exec_per_sec"), Some(2283));
        assert_eq!(final_stat(log, "stat::nope"), None);
    }

    #[test]
    fn targets_match_the_fuzz_crate() {
        let manifest = fs::read_to_string(workspace_root().join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
            assert!(
                workspace_root().join("fuzz/seeds").join(t).is_dir(),
                "no seeds for {t}"
            );
        }
    }
}
