//! See `portmap_userspace::fuzz_checks::command_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portmap_userspace::fuzz_checks::command_line(data));
