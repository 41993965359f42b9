//! The dataplane is the `portmap` binary target of this crate, built for
//! `bpfel-unknown-none` by `portmap-userspace`'s build script. This empty
//! library exists so that build script can depend on the crate (and be rerun
//! when it changes) without building the programs for the host.
#![no_std]
