//! The benchmark's programs, in an object of their own that the `portmap`
//! binary does not carry:
//!
//! - `bench_pass`: a bare `XDP_PASS`, the baseline of per-packet costs.
//! - `bench_loadgen`: run with BPF_PROG_RUN live frames on the client's
//!   interface. Live-frame pages are recycled as the receiver left them, so it
//!   first copies the template back in, then makes the frame flow `n`
//!   (source address low 16 bits and source port) and transmits it.
//! - `bench_sink`: on a backend's interface, counts what arrives and drops it,
//!   so a backend's application never limits the measurement. ARP passes (so
//!   the backend keeps answering its neighbours); IPv4 UDP frames are also
//!   counted by source: from the address in `SINK_SOURCE`, or from another
//!   (the remote-backend cell checks that every one came from the node that
//!   masqueraded them).
//! - `bench_lookup_wide`, `bench_lookup_narrow`: one LRU hash lookup of the
//!   same IPv4 flow, with portmap's 40-byte conntrack key and with a 16-byte
//!   IPv4-only key: what the key's size costs a conntrack hit.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("portmap-bench-ebpf is built for bpfel-unknown-none by portmap-bench's build script");
}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
        helpers::{bpf_get_smp_processor_id, bpf_xdp_store_bytes},
        macros::{map, xdp},
        maps::{Array, LruHashMap, PerCpuArray},
        programs::XdpContext,
    };
    use portmap_bench_common::{
        LOADGEN_MAX_FRAME, LoadgenConfig, NarrowCtKey, priced_narrow_key, priced_wide_key,
    };
    use portmap_common::{
        abi::{CtKey, CtValue},
        csum::CsumDelta,
    };

    /// The frame template and the number of flows.
    #[map]
    static LOADGEN: Array<LoadgenConfig> = Array::with_max_entries(1, 0);

    /// Per-CPU frame sequence numbers of the load generator.
    #[map]
    static LOADGEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Per-CPU count of frames that reached the sink.
    #[map]
    static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// The IPv4 source address (network byte order, as in the header) the
    /// sink's frames are expected from; 0: none expected.
    #[map]
    static SINK_SOURCE: Array<u32> = Array::with_max_entries(1, 0);

    /// Per-CPU counts of IPv4 UDP frames at the sink: [0] from
    /// `SINK_SOURCE`, [1] from any other address.
    #[map]
    static SINK_BY_SOURCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    /// Conntrack-shaped tables, one flow each (inserted by userspace), sized
    /// as `xdpcost` sizes portmap's own.
    #[map]
    static LOOKUP_WIDE: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(4096, 0);

    #[map]
    static LOOKUP_NARROW: LruHashMap<NarrowCtKey, CtValue> = LruHashMap::with_max_entries(4096, 0);

    /// Offsets in an untagged IPv4 frame.
    const IP_CHECK: usize = 14 + 10;
    const IP_SRC_LOW: usize = 14 + 14;
    const IHL_BYTE: usize = 14;
    const ETHERTYPE: usize = 12;
    const IP_PROTO: usize = 14 + 9;
    const IP_SRC: usize = 14 + 12;
    const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
    const ETH_P_IP: [u8; 2] = [0x08, 0x00];

    #[xdp]
    pub fn bench_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    #[xdp]
    pub fn bench_sink(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + ETHERTYPE + 2 > end {
            return XDP_DROP;
        }
        // SAFETY: bytes 12-13 lie inside the frame, checked just above.
        let ethertype = unsafe { *((start + ETHERTYPE) as *const [u8; 2]) };
        if ethertype == ETH_P_ARP {
            return XDP_PASS;
        }
        if let Some(count) = SINK_COUNT.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; programs run with preemption disabled.
            unsafe { *count += 1 };
        }
        if ethertype == ETH_P_IP && start + IP_SRC + 4 <= end {
            // SAFETY: the protocol byte (23) and the source address (26-29)
            // lie inside the frame, checked just above.
            let (proto, src) = unsafe {
                (
                    *((start + IP_PROTO) as *const u8),
                    u32::from_ne_bytes(*((start + IP_SRC) as *const [u8; 4])),
                )
            };
            if proto == 17 {
                let expected = SINK_SOURCE.get(0).copied().unwrap_or(0);
                let slot = if src == expected { 0 } else { 1 };
                if let Some(count) = SINK_BY_SOURCE.get_ptr_mut(slot) {
                    // SAFETY: this CPU's slot, as above.
                    unsafe { *count += 1 };
                }
            }
        }
        XDP_DROP
    }

    /// `XDP_PASS` if the flow is found, `XDP_ABORTED` (which the benchmark
    /// refuses to measure) if not.
    #[xdp]
    pub fn bench_lookup_wide(_ctx: XdpContext) -> u32 {
        let key = priced_wide_key();
        // SAFETY: the value is only tested for presence, never read.
        match unsafe { LOOKUP_WIDE.get(&key) } {
            Some(_) => XDP_PASS,
            None => XDP_ABORTED,
        }
    }

    /// [`bench_lookup_wide`] with the 16-byte key.
    #[xdp]
    pub fn bench_lookup_narrow(_ctx: XdpContext) -> u32 {
        let key = priced_narrow_key();
        // SAFETY: as above.
        match unsafe { LOOKUP_NARROW.get(&key) } {
            Some(_) => XDP_PASS,
            None => XDP_ABORTED,
        }
    }

    #[xdp]
    pub fn bench_loadgen(ctx: XdpContext) -> u32 {
        try_loadgen(&ctx).unwrap_or(XDP_ABORTED)
    }

    /// Copies the first `N` bytes of the template over the frame.
    #[inline(always)]
    fn store_template<const N: usize>(ctx: &XdpContext, cfg: &LoadgenConfig) -> Option<usize> {
        const { assert!(N <= LOADGEN_MAX_FRAME) };
        // SAFETY: the helper copies N bytes, which the map value holds (checked
        // at compile time above), and checks the frame's bounds itself.
        let rc =
            unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, cfg.template.as_ptr() as *mut _, N as u32) };
        (rc == 0).then_some(N)
    }

    #[inline(always)]
    fn try_loadgen(ctx: &XdpContext) -> Option<u32> {
        let cfg = LOADGEN.get(0)?;
        // One constant size per arm: the verifier must see the copy's length
        // bounded, and LLVM folds a range check on a variable into a form the
        // verifier cannot follow.
        let len = match cfg.len {
            60 => store_template::<60>(ctx, cfg)?,
            64 => store_template::<64>(ctx, cfg)?,
            128 => store_template::<128>(ctx, cfg)?,
            _ => return None,
        };
        let seq = LOADGEN_SEQ.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot of a per-CPU array.
        let n = unsafe {
            let n = *seq;
            *seq = n + 1;
            n
        };
        // SAFETY: no arguments; returns the current CPU.
        let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
        let flow = match cfg.flows {
            0 => n.wrapping_add(cpu << 40),
            flows => (n + cpu) % u64::from(flows),
        };
        // Source ports 1024-65535, then the next source address: about 4e9 flows.
        const PORTS: u64 = 65536 - 1024;
        let sport = (flow % PORTS + 1024) as u16;
        let src_low = (flow / PORTS) as u16;

        let start = ctx.data();
        let end = ctx.data_end();
        if start + len > end || start + IHL_BYTE + 1 > end {
            return None;
        }
        // SAFETY: byte 14 lies inside the frame, checked just above.
        let ihl = usize::from(unsafe { *((start + IHL_BYTE) as *const u8) } & 0x0f) * 4;
        let l4 = 14 + ihl;
        if start + l4 + 8 > end || start + IP_SRC_LOW + 2 > end || start + IP_CHECK + 2 > end {
            return None;
        }
        // SAFETY: every field written below was bounds-checked just above; all
        // are 2-byte fields written as byte arrays (no alignment needed).
        unsafe {
            let src_ptr = (start + IP_SRC_LOW) as *mut [u8; 2];
            let old_src = u16::from_ne_bytes(*src_ptr);
            let new_src = src_low.to_be();
            *src_ptr = new_src.to_ne_bytes();
            let check_ptr = (start + IP_CHECK) as *mut [u8; 2];
            let mut delta = CsumDelta::new();
            delta.replace16(old_src, new_src);
            *check_ptr = delta.apply(u16::from_ne_bytes(*check_ptr)).to_ne_bytes();
            // The template's UDP checksum is 0 ("none"), so only the port changes.
            *((start + l4) as *mut [u8; 2]) = sport.to_be_bytes();
        }
        Some(XDP_TX)
    }
}

portmap_common::bpf_object_end!();
