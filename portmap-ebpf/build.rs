//! Rebuilds the eBPF object when the linker changes (as aya-template does), so
//! a rebuilt bpf-linker is picked up; and tunes how bpf-linker lowers memory
//! intrinsics.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // bpf-linker's default `--bpf-expand-memcpy-in-order` keeps copies as
    // in-order load/store pairs for the JITs' pattern matchers, but it also
    // stops LLVM from expanding `memset` and `memmove` inline: every zeroed
    // struct, padding array or overlapping copy became a call to
    // compiler_builtins' one-byte-at-a-time loop (320 instructions for the
    // 64-byte `bpf_fib_lookup` on each forwarded packet).
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
