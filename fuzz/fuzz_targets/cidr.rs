//! See `portmap_userspace::fuzz_checks::cidr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portmap_userspace::fuzz_checks::cidr(data));
