//! See `portmap_userspace::fuzz_checks::manifests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portmap_userspace::fuzz_checks::manifests(data));
