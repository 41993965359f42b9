//! The benchmark's own eBPF programs: they load, and the load generator turns
//! whatever a recycled page holds into a valid frame of the next flow.

use std::collections::BTreeSet;

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use portmap_bench::ebpf_object;
use portmap_bench_common::{LOADGEN_MAX_FRAME, LoadgenConfig};
use portmap_tests::{
    packet::{L4, Packet, inspect, verify_checksums},
    require_root,
};

const XDP_TX: u32 = 3;

fn loaded() -> Ebpf {
    require_root();
    let mut ebpf = Ebpf::load(ebpf_object()).expect("bench object loads");
    for name in ["bench_pass", "bench_loadgen", "bench_sink"] {
        let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("{name} verifies: {e}"));
    }
    ebpf
}

fn run(ebpf: &Ebpf, name: &str, data: &[u8]) -> (u32, Vec<u8>) {
    let prog: &Xdp = ebpf.program(name).unwrap().try_into().unwrap();
    let mut out = vec![0u8; data.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap();
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

#[test]
fn loadgen_restores_the_template_and_rotates_flows() {
    let mut ebpf = loaded();
    // 14 + 20 + 8 + 22 = 64 bytes, one of the generator's frame sizes.
    let mut template = Packet::udp(
        "198.18.0.2:1".parse().unwrap(),
        "198.18.0.1:8080".parse().unwrap(),
        &[7; 22],
    );
    template.l4 = L4::Udp {
        zero_checksum: true,
    };
    let frame = template.build();
    let mut cfg = LoadgenConfig {
        len: frame.len() as u32,
        flows: 0,
        template: [0; LOADGEN_MAX_FRAME],
    };
    cfg.template[..frame.len()].copy_from_slice(&frame);
    // Taken out of the object: the programs keep their reference to it.
    let mut map: Array<_, LoadgenConfig> =
        Array::try_from(ebpf.take_map("LOADGEN").unwrap()).unwrap();
    map.set(0, cfg, 0).unwrap();

    let mut flows = BTreeSet::new();
    for garbage in 0..50u8 {
        // A page left as the receiver rewrote it: all bytes changed.
        let (action, out) = run(&ebpf, "bench_loadgen", &vec![garbage; frame.len()]);
        assert_eq!(action, XDP_TX);
        verify_checksums(&out).unwrap();
        let i = inspect(&out);
        assert_eq!(i.dst, "198.18.0.1:8080".parse().unwrap());
        assert_eq!(
            &out[i.l4 + 8..],
            &[7; 22],
            "frame {} bytes, l4 at {}",
            out.len(),
            i.l4
        );
        flows.insert(i.src);
    }
    assert_eq!(flows.len(), 50, "every frame a new flow");

    cfg.flows = 4;
    map.set(0, cfg, 0).unwrap();
    let distinct: BTreeSet<_> = (0..40)
        .map(|_| inspect(&run(&ebpf, "bench_loadgen", &frame).1).src)
        .collect();
    assert_eq!(distinct.len(), 4, "cycles over 4 flows");

    assert_eq!(run(&ebpf, "bench_pass", &frame).0, 2);
    assert_eq!(run(&ebpf, "bench_sink", &frame).0, 1);
}

/// `bench_sink` drops and counts what it gets, lets ARP through uncounted,
/// and counts IPv4 UDP frames by source: from `SINK_SOURCE` or not (the
/// remote-backend cell's check that everything was masqueraded).
#[test]
fn sink_counts_udp_frames_by_source_and_passes_arp() {
    let mut ebpf = loaded();
    let mut source: Array<_, u32> = Array::try_from(ebpf.take_map("SINK_SOURCE").unwrap()).unwrap();
    source
        .set(0, u32::from_ne_bytes([198, 19, 32, 1]), 0)
        .unwrap();
    let by_source: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.take_map("SINK_BY_SOURCE").unwrap()).unwrap();
    let count: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.take_map("SINK_COUNT").unwrap()).unwrap();
    let read = |map: &PerCpuArray<_, u64>, i: u32| -> u64 { map.get(&i, 0).unwrap().iter().sum() };
    let udp_from = |src: &str| {
        Packet::udp(
            src.parse().unwrap(),
            "198.19.0.2:8080".parse().unwrap(),
            &[1; 22],
        )
        .build()
    };
    for _ in 0..3 {
        assert_eq!(
            run(&ebpf, "bench_sink", &udp_from("198.19.32.1:61000")).0,
            1
        );
    }
    for _ in 0..2 {
        assert_eq!(run(&ebpf, "bench_sink", &udp_from("198.18.0.2:1024")).0, 1);
    }
    let tcp = Packet::tcp(
        "198.18.0.2:1024".parse().unwrap(),
        "198.19.0.2:8080".parse().unwrap(),
        0x02,
    )
    .build();
    assert_eq!(run(&ebpf, "bench_sink", &tcp).0, 1, "TCP: dropped");
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.resize(60, 0);
    assert_eq!(run(&ebpf, "bench_sink", &arp).0, 2, "ARP passes");
    assert_eq!((read(&by_source, 0), read(&by_source, 1)), (3, 2));
    assert_eq!(read(&count, 0), 6, "every frame but ARP counted");
}
