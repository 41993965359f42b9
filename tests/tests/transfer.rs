//! Real traffic through portmap, with real programs at both ends (nginx,
//! curl, iperf3), content checked by SHA-256 where it lands: 16 MiB
//! downloads and uploads through a published port, a NodePort and a
//! ClusterIP, IPv4 and IPv6, from a remote client (XDP) and from a process
//! on the node (socket level); 32 parallel downloads; UDP datagrams of every
//! size up to the MTU, mirrored. Under the kernel's default veth offloads
//! (GSO super-packets, partial checksums) and with tx checksum offload off,
//! with and without the fast path: one topology and one daemon for each.
//!
//! Each test runs every case and fails listing all the failed ones (run
//! with `--nocapture` to see each case's outcome and rate as it goes).

use portmap_tests::{
    topo::{LinkOptions, Offloads},
    transfer::{
        cases,
        matrix::Matrix,
        rig::{Rig, RigOptions},
    },
};

fn matrix(tag: &str, offloads: Offloads, fast_path: bool) {
    let options = RigOptions {
        links: LinkOptions {
            offloads,
            mtu: None,
        },
        fast_path,
    };
    let path = if fast_path {
        "fast-path"
    } else {
        "kernel-path"
    };
    let mut m = Matrix::new(&format!("{}/{path}", offloads.name()));
    let mut rig = Rig::new(tag, options).unwrap();
    cases::full(&mut rig, &mut m);
    m.finish();
}

#[test]
fn default_offloads() {
    matrix("xdef", Offloads::Default, false);
}

#[test]
fn default_offloads_fast_path() {
    matrix("xdeff", Offloads::Default, true);
}

#[test]
fn tx_csum_off() {
    matrix("xcsum", Offloads::TxCsumOff, false);
}

#[test]
fn tx_csum_off_fast_path() {
    matrix("xcsumf", Offloads::TxCsumOff, true);
}
