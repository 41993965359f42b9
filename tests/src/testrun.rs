//! Running the real eBPF programs on crafted packets (BPF_PROG_TEST_RUN), with
//! maps filled by the same code `portmap run` uses. Nothing is attached.

use std::{collections::BTreeMap, collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use portmap_common::abi::DatapathConfig;
use portmap_userspace::{
    dataplane::{
        DSR_PROGRAM, Dataplane, EGRESS_PROGRAM, INGRESS_PROGRAM, Limits, SNAT_REPLY_PROGRAM,
        Snapshot,
    },
    model::DesiredState,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` as the program returns it.
pub const TC_NEXT: i32 = -1;

/// Runs `prog` once on `packet` (BPF_PROG_TEST_RUN); returns its return
/// value and the packet after it.
fn run<P>(prog: &P, packet: &[u8]) -> Result<(u32, Vec<u8>)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 512];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// The desired state of `-p` specs.
pub fn desired(specs: &[&str]) -> Result<DesiredState> {
    let specs: Vec<_> = specs
        .iter()
        .map(|s| Ok((s.to_string(), s.parse().map_err(anyhow::Error::msg)?)))
        .collect::<Result<_>>()?;
    Ok(DesiredState::from_specs(&specs)?)
}

/// A loaded dataplane to feed packets to.
pub struct Lab {
    pub dp: Dataplane,
}

impl Lab {
    /// Loads the programs and publishes `specs` (`-p` syntax) on a node that
    /// has `node_addrs`.
    pub fn new(specs: &[&str], node_addrs: &[&str]) -> Result<Self> {
        Self::with_state(&desired(specs)?, node_addrs)
    }

    pub fn with_state(desired: &DesiredState, node_addrs: &[&str]) -> Result<Self> {
        Self::with_config(desired, node_addrs, DatapathConfig::default())
    }

    /// As [`Lab::with_state`], with conntrack timeouts of the caller's choosing.
    pub fn with_config(
        desired: &DesiredState,
        node_addrs: &[&str],
        config: DatapathConfig,
    ) -> Result<Self> {
        crate::require_root();
        let limits = Limits {
            frontends: 256,
            backends: 256,
            conntrack: 4096,
        };
        let mut dp = Dataplane::load(limits, config)?;
        let addrs: BTreeSet<IpAddr> = node_addrs
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?;
        dp.set_node_addrs(&addrs)?;
        let report = dp.apply(desired)?;
        anyhow::ensure!(report.is_complete(), "not applied: {:?}", report.failed);
        Ok(Lab { dp })
    }

    /// Runs the XDP ingress program; returns its action and the packet after
    /// it, preceded by the metadata the program left (if any).
    pub fn xdp(&self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog: &Xdp = self.program(INGRESS_PROGRAM)?.try_into()?;
        run(prog, packet)
    }

    /// Runs the tc egress program; returns its verdict and the packet after it.
    pub fn tc(&self, packet: &[u8]) -> Result<(i32, Vec<u8>)> {
        let prog: &SchedClassifier = self.program(EGRESS_PROGRAM)?.try_into()?;
        run(prog, packet).map(|(verdict, out)| (verdict as i32, out))
    }

    /// Runs the tc ingress program that turns SNATed flows' replies around.
    pub fn tc_snat_reply(&self, packet: &[u8]) -> Result<(i32, Vec<u8>)> {
        let prog: &SchedClassifier = self.program(SNAT_REPLY_PROGRAM)?.try_into()?;
        run(prog, packet).map(|(verdict, out)| (verdict as i32, out))
    }

    /// Runs the tc ingress program of direct server return.
    pub fn tc_dsr(&self, packet: &[u8]) -> Result<(i32, Vec<u8>)> {
        let prog: &SchedClassifier = self.program(DSR_PROGRAM)?.try_into()?;
        run(prog, packet).map(|(verdict, out)| (verdict as i32, out))
    }

    /// As [`Lab::tc`], on an skb that says it is a GSO packet of `segs`
    /// segments of `size` bytes (as the stack hands tc a TSO/GSO send).
    pub fn tc_gso(&self, packet: &[u8], segs: u32, size: u32) -> Result<(i32, Vec<u8>)> {
        let prog: &SchedClassifier = self.program(EGRESS_PROGRAM)?.try_into()?;
        // `struct __sk_buff`: the fields BPF_PROG_TEST_RUN takes from it.
        const WIRE_LEN: usize = 160;
        const GSO_SEGS: usize = 164;
        const GSO_SIZE: usize = 176;
        const SIZE: usize = 192;
        let mut ctx = [0u8; SIZE];
        ctx[WIRE_LEN..WIRE_LEN + 4].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&segs.to_ne_bytes());
        ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&size.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 512];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value as i32, out))
    }

    fn program(&self, name: &str) -> Result<&aya::programs::Program> {
        self.dp
            .ebpf()
            .program(name)
            .with_context(|| format!("no program {name}"))
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        self.dp.snapshot()
    }

    /// Datapath event counts by name.
    pub fn events(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.dp.snapshot()?.events.into_iter().collect())
    }
}
