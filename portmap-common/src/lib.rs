//! Types and pure logic shared by the eBPF dataplane and the userspace daemon.
//!
//! Everything in [`abi`] is `#[repr(C)]` and is the exact layout of a BPF map key
//! or value: both sides compile against these definitions, so they cannot drift.
//! [`dsr`] is the format of the option that carries a frontend to another
//! node. [`csum`] and [`hash`] are pure functions that the dataplane runs on every
//! packet and that userspace reuses to check and to predict its work.
#![no_std]

pub mod abi;
pub mod csum;
pub mod dsr;
pub mod hash;

/// What every eBPF object of the workspace (the dataplane's, the
/// benchmark's) ends with: its panic handler, and the license the kernel
/// reads before it lets programs call GPL-only helpers.
#[macro_export]
macro_rules! bpf_object_end {
    () => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            // The verifier rejects any path that could reach here, so it is never run.
            loop {}
        }

        #[cfg(target_arch = "bpf")]
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` marks the map types as plain old data for userspace map access.
    use crate::abi::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => { $(unsafe impl aya::Pod for $t {})* };
    }

    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and
    // arrays of integers, and has no implicit padding (checked by the size
    // assertions in `abi`), so any byte pattern is a valid value.
    pod!(
        RawAddr,
        FrontendKey,
        FrontendValue,
        Backend,
        CtKey,
        CtValue,
        HopSlot,
        TrafficCounters,
        NodeAddrKey,
        DatapathConfig,
        AffinityKey,
        AffinityValue,
        SourceRangeKey,
        SockRevKey,
        SockRevValue,
        BackendNat,
        SnatValue,
    );
}
