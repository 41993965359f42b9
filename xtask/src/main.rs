//! Developer tasks for portmap, run as `cargo xtask <command>`.

mod demo;
mod sandbox;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Setup, build, and run the whole test suite (as root); fails if tests
    /// leave network namespaces or bpffs pins behind.
    Test {
        /// Passed on to `cargo test`, e.g. `cargo xtask test -- -p portmap-tests`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Publish a port of a throwaway "container" through the XDP dataplane,
    /// as `docker run -p 8080:3000` does, show it working, and clean up.
    Demo,
    /// Benchmarks (not yet implemented).
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::install_signal_handlers();
    let result = match cli.command {
        Command::Setup => setup::run_setup().map(|()| ExitCode::SUCCESS),
        Command::Test { args } => test::run_tests(&args),
        Command::Demo => demo::run_demo().map(|()| ExitCode::SUCCESS),
        Command::Bench => {
            eprintln!("cargo xtask bench: not yet implemented");
            Ok(ExitCode::FAILURE)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if util::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Test { args }) => args,
            other => panic!("{argv:?} parsed as {other:?}"),
        }
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
