//! The benchmark's programs are the binary target of this crate, built for
//! `bpfel-unknown-none` by `portmap-bench`'s build script. This empty library
//! lets that build script depend on the crate (and rerun when it changes)
//! without building the programs for the host.
#![no_std]
