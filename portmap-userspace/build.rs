//! Builds eBPF programs (for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker) into OUT_DIR, where the crate includes them. The build script
//! of two crates:
//!
//! - portmap-userspace: `portmap-ebpf`, the dataplane (`dataplane::ebpf_object`).
//! - portmap-bench: `portmap-bench-ebpf`, the load generator, the sink and
//!   the XDP_PASS baseline (`portmap_bench::ebpf_object`).

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};

/// Set (to 1 or true) by builds that need none of the eBPF programs (the
/// fuzz targets): they are not built, and empty objects stand in for them, so
/// neither the nightly's BPF target nor bpf-linker is needed.
const SKIP: &str = "AYA_BUILD_SKIP";

/// The eBPF package a crate embeds, and its objects (the package's binaries).
fn ebpf_package(crate_name: &str) -> anyhow::Result<(&'static str, &'static [&'static str])> {
    Ok(match crate_name {
        "portmap-userspace" => ("portmap-ebpf", &["portmap"]),
        "portmap-bench" => ("portmap-bench-ebpf", &["portmap-bench-ebpf"]),
        other => bail!("{other} embeds no eBPF package"),
    })
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let (package, objects) = ebpf_package(&std::env::var("CARGO_PKG_NAME")?)?;
    if std::env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
        for object in objects {
            std::fs::write(out.join(object), b"")
                .with_context(|| format!("writing an empty {object} object"))?;
        }
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("..").join(package);
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("finding {}", ebpf_dir.display()))?;
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH; run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)"
        ));
    }
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs of {package} (see `cargo xtask setup` if a tool is missing)"
        )
    })
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
