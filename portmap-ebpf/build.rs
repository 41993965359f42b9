//! Rebuilds the eBPF object when the linker changes (as aya-template does), so
//! a rebuilt bpf-linker is picked up.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
