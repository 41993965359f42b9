//! Developer tasks for portmap, run as `cargo xtask <command>`.

mod demo;
mod demo_docker;
mod fuzz;
mod sandbox;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portmap_testkit::signals;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for portmap"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (Debian packages, nightly with
    /// rust-src, bpf-linker built against the nightly's LLVM); idempotent.
    Setup,
    /// Setup, build, and run the whole test suite (as root), then each fuzz
    /// target for a bounded time; fails if tests leave network namespaces or
    /// bpffs pins behind.
    Test {
        /// Seconds of fuzzing per target after the tests (0: none). Fuzzing
        /// runs only for the whole suite, i.e. without arguments for `cargo test`.
        #[arg(long, value_name = "SECONDS", default_value_t = fuzz::TEST_SECONDS)]
        fuzz_seconds: u64,
        /// Passed on to `cargo test`, e.g. `cargo xtask test -- -p portmap-tests`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Publish a port of a throwaway "container" through the XDP dataplane,
    /// as `docker run -p 8080:3000` does, show it working, and clean up.
    Demo,
    /// Run the fuzz targets (cargo-fuzz on the nightly) for what a user types
    /// or writes: `-p` SPECs, CIDRs, manifest files, command lines.
    Fuzz {
        /// Seconds per target.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Build (release) and run `portmap-bench` (as root): portmap against
    /// kube-proxy's iptables and nftables modes and plain forwarding, or with
    /// `--soak` portmap alone under backend churn. Without arguments, the
    /// full run (`--services 1,1000,10000`) into bench/latest.
    Bench {
        /// Passed on to `portmap-bench`, e.g. `cargo xtask bench --repeats 5`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    signals::install();
    let result = match cli.command {
        Command::Setup => setup::run_setup().map(|()| ExitCode::SUCCESS),
        Command::Test { fuzz_seconds, args } => test::run_tests(&args, fuzz_seconds),
        Command::Fuzz { seconds, targets } => setup::run_setup()
            .and_then(|()| fuzz::run_fuzz(seconds, &targets))
            .map(|_| ExitCode::SUCCESS),
        Command::Demo => demo::run_demo().map(|()| ExitCode::SUCCESS),
        Command::Bench { args } => run_bench(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if signals::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `cargo xtask bench`: a release build (the control-plane timings are of
/// optimized code, and the userspace side runs faster), then
/// `target/release/portmap-bench ARGS` from the workspace root, which
/// measures the `target/release/portmap` beside it.
fn run_bench(args: &[String]) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    util::require_root(
        "cargo xtask bench",
        "it creates network namespaces and attaches XDP programs",
    )?;
    setup::run_setup()?;
    let root = util::workspace_root();
    let mut build = util::cmd("cargo");
    build
        .args([
            "build",
            "--release",
            "-p",
            "portmap-userspace",
            "-p",
            "portmap-bench",
        ])
        .current_dir(&root);
    println!("== {}", util::describe(&build));
    util::run(&mut build)?;
    signals::check()?;
    let release = util::target_dir().join("release");
    for bin in ["portmap", "portmap-bench"] {
        if !release.join(bin).is_file() {
            anyhow::bail!(
                "{} was not built by `cargo build --release`",
                release.join(bin).display()
            );
        }
    }
    let portmap_bench = release.join("portmap-bench");
    let mut bench = util::cmd(&portmap_bench);
    let mut typed = String::from("cargo xtask bench");
    for arg in args {
        typed.push(' ');
        typed.push_str(arg);
    }
    bench
        .args(args)
        .current_dir(&root)
        .env("PORTMAP_BENCH_VIA", typed);
    println!("== {}", util::describe(&bench));
    let status = bench
        .status()
        .with_context(|| format!("cannot start {}", portmap_bench.display()))?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Test { args, .. }) => args,
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn bench_passes_arguments_through() {
        let args = |argv: &[&str]| match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Bench { args }) => args,
            other => panic!("{argv:?} parsed as {other:?}"),
        };
        assert!(args(&["xtask", "bench"]).is_empty());
        assert_eq!(
            args(&[
                "xtask",
                "bench",
                "--services",
                "1,100",
                "--modes",
                "portmap"
            ]),
            ["--services", "1,100", "--modes", "portmap"]
        );
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_arguments_through() {
        assert!(test_args(&["xtask", "test"]).is_empty());
        assert_eq!(
            test_args(&[
                "xtask",
                "test",
                "--",
                "-p",
                "portmap-tests",
                "--",
                "--nocapture"
            ]),
            ["-p", "portmap-tests", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "basic", "--", "--test-threads=1"]),
            ["basic", "--", "--test-threads=1"]
        );
    }
}
