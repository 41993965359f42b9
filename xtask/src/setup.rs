//! `cargo xtask setup`: installs what building and testing portmap needs, and
//! only what is missing. One line per check: `ok: ...` or `installing: ...`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::util::{cargo_home, cmd, find_in_path, is_root, output, run};

/// Commands the tests and the demo run, and the Debian package of each.
/// The transfer tests run nginx (its DAV module takes uploads) and iperf3 in
/// backend namespaces, each its own instance: a packaged service that apt
/// starts on a machine with an init system is not used.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("ethtool", "ethtool"),
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("curl", "curl"),
    ("pgrep", "procps"),
    ("sha256sum", "coreutils"),
    // The transfer tests, and the benchmark's TCP bulk transfers and short
    // HTTP requests.
    ("nginx", "nginx"),
    ("iperf3", "iperf3"),
];

/// Debian packages checked by name, not by a command on PATH: another
/// `docker` client may come first on PATH, and a container's root filesystem
/// needs the static busybox. The Docker tests and demo start their own
/// `dockerd` (Debian's `docker.io` starts none itself), run Compose files with
/// `docker-compose` (Debian's, 1.29 on bookworm), and make their image from
/// `busybox-static`.
const PACKAGES: &[&str] = &["docker.io", "docker-compose", "busybox-static"];

/// Debian's hook that tells maintainer scripts whether they may start a
/// service: while it exits 101, none is started.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The bpf-linker release the eBPF build expects.
const BPF_LINKER_MINOR: &str = "0.13.";

pub fn run_setup() -> Result<()> {
    let mut failures = Vec::new();
    if let Err(e) = packages() {
        failures.push(e);
    }
    match nightly() {
        Ok(nightly) => {
            if let Err(e) = rust_src(&nightly) {
                failures.push(e);
            }
            if let Err(e) = bpf_linker(&nightly) {
                failures.push(e);
            }
            if let Err(e) = cargo_fuzz() {
                failures.push(e);
            }
        }
        Err(e) => failures.push(e),
    }
    if failures.is_empty() {
        return Ok(());
    }
    for failure in &failures {
        eprintln!("error: {failure:#}");
    }
    bail!(
        "setup is incomplete ({} problem(s) above); fix them and rerun `cargo xtask setup`",
        failures.len()
    )
}

fn packages() -> Result<()> {
    let mut missing: Vec<(&str, &str)> = Vec::new();
    for &(command, package) in TOOLS {
        match find_in_path(command) {
            Some(path) => println!("ok: {command} ({})", path.display()),
            None => missing.push((command, package)),
        }
    }
    let mut missing_packages: Vec<&str> = Vec::new();
    for &package in PACKAGES {
        if is_installed(package) {
            println!("ok: package {package}");
        } else {
            missing_packages.push(package);
        }
    }
    if !missing_packages.is_empty() {
        packages_by_name(&missing_packages)?;
    }
    if missing.is_empty() {
        return Ok(());
    }
    let commands: Vec<&str> = missing.iter().map(|&(c, _)| c).collect();
    let mut packages: Vec<&str> = missing.iter().map(|&(_, p)| p).collect();
    packages.sort_unstable();
    packages.dedup();
    let (commands, packages) = (commands.join(", "), packages.join(" "));
    if !is_root() {
        bail!(
            "{commands} missing: run `sudo apt-get install {packages}` or rerun `cargo xtask setup` as root"
        );
    }
    if find_in_path("apt-get").is_none() {
        bail!("{commands} missing and there is no apt-get: install the packages {packages}");
    }
    println!("installing: {commands} (apt-get install {packages})");
    if apt_install(&packages).is_err() {
        println!("installing: package lists are stale, running apt-get update and retrying");
        run(cmd("apt-get").args(["update", "-q"]))
            .with_context(|| format!("{commands} missing: `apt-get update` failed"))?;
        apt_install(&packages).with_context(|| {
            format!("{commands} missing: run `apt-get install {packages}` and see why it fails")
        })?;
    }
    for &(command, package) in &missing {
        match find_in_path(command) {
            Some(path) => println!("ok: {command} ({}, installed)", path.display()),
            None => bail!("{command} is still missing after installing {package}"),
        }
    }
    Ok(())
}

/// Whether dpkg has `package` installed.
fn is_installed(package: &str) -> bool {
    output(cmd("dpkg-query").args(["-W", "-f", "${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

/// Installs [`PACKAGES`] that dpkg lacks.
fn packages_by_name(packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !is_root() {
        bail!(
            "packages {list} missing: run `sudo apt-get install {list}` or rerun `cargo xtask setup` as root"
        );
    }
    if find_in_path("apt-get").is_none() {
        bail!("packages {list} missing and there is no apt-get: install them");
    }
    println!("installing: {list} (apt-get install {list})");
    if apt_install(&list).is_err() {
        println!("installing: package lists are stale, running apt-get update and retrying");
        run(cmd("apt-get").args(["update", "-q"]))
            .with_context(|| format!("{list} missing: `apt-get update` failed"))?;
        apt_install(&list).with_context(|| {
            format!("{list} missing: run `apt-get install {list}` and see why it fails")
        })?;
    }
    for &package in packages {
        if !is_installed(package) {
            bail!("package {package} is still missing after apt-get install");
        }
        println!("ok: package {package} (installed)");
    }
    Ok(())
}

fn apt_install(packages: &str) -> Result<()> {
    // nginx and iperf3 would start system-wide daemons in the root namespace
    // (nginx on port 80); the tests and the benchmark run their own copies
    // inside their namespaces, so no service is started.
    let _no_starts = NoServiceStarts::new()?;
    run(cmd("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages.split(' '))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// A `policy-rc.d` that forbids starting services, removed on drop; an
/// existing one (the administrator's) is left as it is.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = PathBuf::from(POLICY_RC_D);
        if path.symlink_metadata().is_ok() {
            return Ok(Self(None));
        }
        fs::write(&path, "#!/bin/sh\n# portmap's `cargo xtask setup`: start no service while installing\nexit 101\n")
            .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// What the eBPF build needs to know about the nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    /// `1.97.0-nightly`
    release: String,
    /// `22`
    llvm_major: String,
}

fn nightly() -> Result<Nightly> {
    let list = output(cmd("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain (see https://rustup.rs)")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        println!("ok: nightly toolchain");
    } else {
        println!(
            "installing: nightly toolchain (rustup toolchain install nightly --profile minimal)"
        );
        run(cmd("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
            .context(
                "nightly toolchain missing: run `rustup toolchain install nightly --profile minimal`",
            )?;
    }
    let version = output(cmd("rustc").args(["+nightly", "-vV"]))?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| anyhow!("`rustc +nightly -vV` has no `{name}` line:\n{version}"))
    };
    let release = field("release:")?.to_string();
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| anyhow!("cannot read the LLVM major version from `{llvm}`"))?
        .to_string();
    let sysroot =
        PathBuf::from(output(cmd("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    Ok(Nightly {
        sysroot,
        release,
        llvm_major,
    })
}

fn rust_src(nightly: &Nightly) -> Result<()> {
    let core = nightly.sysroot.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        println!("ok: rust-src on nightly");
        return Ok(());
    }
    println!("installing: rust-src on nightly (rustup component add rust-src --toolchain nightly)");
    let fix = "rust-src missing: run `rustup component add rust-src --toolchain nightly`";
    run(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context(fix)?;
    if !core.is_dir() {
        bail!("{fix} ({} still does not exist)", core.display());
    }
    Ok(())
}

/// Checks that the bpf-linker children will find runs on its own (without
/// rustup's or cargo's LD_LIBRARY_PATH) and is 0.13; returns a description.
pub fn check_bpf_linker() -> Result<String> {
    let path = find_in_path("bpf-linker")
        .ok_or_else(|| anyhow!("bpf-linker is not in $CARGO_HOME/bin nor on PATH"))?;
    let out = Command::new(&path)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{} --version` fails ({}): {}",
            path.display(),
            out.status,
            stderr.trim()
        );
    }
    let version = stdout
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("`{} --version` printed `{}`", path.display(), stdout.trim()))?;
    if !version.starts_with(BPF_LINKER_MINOR) {
        bail!(
            "{} is version {version}, portmap needs {BPF_LINKER_MINOR}x",
            path.display()
        );
    }
    Ok(format!("bpf-linker {version} ({})", path.display()))
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    let why = match check_bpf_linker() {
        Ok(found) => {
            println!("ok: {found}");
            return Ok(());
        }
        Err(why) => why,
    };
    let major = &nightly.llvm_major;
    println!("installing: bpf-linker 0.13 against nightly's LLVM {major} (because {why:#})");
    let nightly_lib = nightly.sysroot.join("lib");
    let real = find_libllvm(&nightly_lib, major, &nightly.release)?;
    let real_name = real
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", real.display()))?;
    // bpf-linker's build takes LLVM from LLVM_PREFIX/lib and records that
    // directory as its RUNPATH, so the prefix must outlive the build.
    let prefix = cargo_home()?.join("portmap-llvm").join(&nightly.release);
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), real_name] {
        let link = prefix_lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        symlink(&real, &link)
            .with_context(|| format!("linking {} to {}", link.display(), real.display()))?;
    }
    let features = format!("llvm-{major}");
    let mut install = cmd("cargo");
    install
        .args(["install", "bpf-linker", "--version", "^0.13"])
        .args(["--no-default-features", "--features", &features, "--force"])
        .env("LLVM_PREFIX", &prefix);
    println!(
        "installing: LLVM_PREFIX={} {} (about a minute)",
        prefix.display(),
        crate::util::describe(&install)
    );
    run(&mut install).context(
        "bpf-linker missing: building it failed (see above); it needs a C toolchain (`apt-get install build-essential`)",
    )?;
    let found = check_bpf_linker().context(
        "bpf-linker was installed but does not run; check `ldd $(which bpf-linker)` against the nightly's libLLVM",
    )?;
    println!("ok: {found} (installed)");
    Ok(())
}

/// The cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_MINOR: &str = "0.13.";

/// `cargo-fuzz 0.13.x` if it runs; why not otherwise.
fn check_cargo_fuzz() -> Result<String> {
    let path = find_in_path("cargo-fuzz")
        .ok_or_else(|| anyhow!("cargo-fuzz is not in $CARGO_HOME/bin nor on PATH"))?;
    let out = output(cmd(&path).arg("--version"))?;
    let version = out
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("`{} --version` printed `{}`", path.display(), out.trim()))?;
    if !version.starts_with(CARGO_FUZZ_MINOR) {
        bail!(
            "{} is version {version}, portmap uses {CARGO_FUZZ_MINOR}x",
            path.display()
        );
    }
    Ok(format!("cargo-fuzz {version} ({})", path.display()))
}

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzzing at the end of
/// `cargo xtask test` (libFuzzer comes with the targets' libfuzzer-sys).
fn cargo_fuzz() -> Result<()> {
    let why = match check_cargo_fuzz() {
        Ok(found) => {
            println!("ok: {found}");
            return Ok(());
        }
        Err(why) => why,
    };
    let mut install = cmd("cargo");
    install.args([
        "install",
        "cargo-fuzz",
        "--version",
        "^0.13",
        "--locked",
        "--force",
    ]);
    println!(
        "installing: cargo-fuzz (because {why:#}): {} (about two minutes)",
        crate::util::describe(&install)
    );
    run(&mut install).context("cargo-fuzz missing: installing it failed (see above)")?;
    let found = check_cargo_fuzz().context("cargo-fuzz was installed but does not run")?;
    println!("ok: {found} (installed)");
    Ok(())
}

/// The real LLVM shared library of a nightly, `libLLVM.so.<major>.<minor>-rust-<release>`
/// (not the linker script `libLLVM-<major>-rust-<release>.so` next to it).
fn find_libllvm(lib_dir: &Path, major: &str, release: &str) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}.");
    let suffix = format!("-rust-{release}");
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("listing {}", lib_dir.display()))?;
    let mut seen = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(&suffix) && entry.path().is_file() {
            return Ok(entry.path());
        }
        if name.starts_with("libLLVM") {
            seen.push(name);
        }
    }
    bail!(
        "no {prefix}*{suffix} in {} (LLVM libraries there: {})",
        lib_dir.display(),
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )
}
