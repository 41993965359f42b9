//! Attaching the programs to interfaces. Links are owned by the loaded object:
//! dropping the [`Dataplane`] detaches everything.

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode, tc};
use aya::util::KernelVersion;
use log::warn;

use super::{Dataplane, EGRESS_PROGRAM, INGRESS_PROGRAM};

/// How the XDP program is attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the stack, after the skb is built (slower, works on any device).
    Generic,
    /// Native, falling back to generic with a warning.
    #[default]
    Auto,
}

impl Dataplane {
    /// Attaches the XDP program (ingress) and the tc program (egress) to each
    /// interface. Returns the XDP mode used on each.
    pub fn attach(&mut self, ifaces: &[String], mode: XdpMode) -> Result<Vec<(String, XdpMode)>> {
        let mut used = Vec::with_capacity(ifaces.len());
        for iface in ifaces {
            let xdp: &mut Xdp = self
                .ebpf
                .program_mut(INGRESS_PROGRAM)
                .context("no XDP program in the object")?
                .try_into()?;
            let got = match mode {
                XdpMode::Native => {
                    xdp.attach(iface, AyaXdpMode::Driver)
                        .with_context(|| format!("attaching XDP (native) to {iface}"))?;
                    XdpMode::Native
                }
                XdpMode::Generic => {
                    xdp.attach(iface, AyaXdpMode::Skb)
                        .with_context(|| format!("attaching XDP (generic) to {iface}"))?;
                    XdpMode::Generic
                }
                XdpMode::Auto => match xdp.attach(iface, AyaXdpMode::Driver) {
                    Ok(_) => XdpMode::Native,
                    Err(e) => {
                        warn!(
                            "{iface}: native XDP unavailable ({e}); using generic XDP, which is slower"
                        );
                        xdp.attach(iface, AyaXdpMode::Skb)
                            .with_context(|| format!("attaching XDP (generic) to {iface}"))?;
                        XdpMode::Generic
                    }
                },
            };
            let tc: &mut SchedClassifier = self
                .ebpf
                .program_mut(EGRESS_PROGRAM)
                .context("no tc program in the object")?
                .try_into()?;
            // tcx (kernel ≥ 6.6) needs no qdisc; aya's netlink fallback on older
            // kernels needs clsact (left in place on exit, as tc users expect).
            if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0))
                && let Err(e) = tc::qdisc_add_clsact(iface)
            {
                log::debug!("{iface}: clsact qdisc not added ({e}); assuming it exists");
            }
            tc.attach(iface, TcAttachType::Egress)
                .with_context(|| format!("attaching tc egress to {iface}"))?;
            used.push((iface.clone(), got));
        }
        Ok(used)
    }
}
