//! MTU 9000 on every link (kernel's default offloads): a 16 MiB download
//! through a published port and the largest UDP datagram that fits, both
//! families, SHA-256 and every byte checked; without and with the fast path.
//! Frames this large are multi-buffer for XDP.

use portmap_tests::{
    topo::{LinkOptions, Offloads},
    transfer::{
        cases,
        matrix::Matrix,
        rig::{Rig, RigOptions},
    },
};

fn jumbo(tag: &str, fast_path: bool) {
    let options = RigOptions {
        links: LinkOptions {
            offloads: Offloads::Default,
            mtu: Some(9000),
        },
        fast_path,
    };
    let path = if fast_path {
        "fast-path"
    } else {
        "kernel-path"
    };
    let mut m = Matrix::new(&format!("mtu-9000/{path}"));
    let mut rig = Rig::new(tag, options).unwrap();
    cases::jumbo(&mut rig, &mut m);
    m.finish();
}

#[test]
fn mtu_9000() {
    jumbo("xjumbo", false);
}

#[test]
fn mtu_9000_fast_path() {
    jumbo("xjumbof", true);
}
