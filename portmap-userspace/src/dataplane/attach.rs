//! Attaching the programs to interfaces, through links pinned in the pin
//! directory when there is one.
//!
//! A link pinned by a previous daemon is not detached and re-attached: the new
//! program replaces the old one in it atomically (`bpf_link_update`), so no
//! packet meets an interface without a program during an upgrade.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use log::{info, warn};

use super::{Dataplane, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM, REPLY_PROGRAM};

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

/// Link pin names: `xdp-IFACE`, `tc-ingress-IFACE`, `tc-egress-IFACE`,
/// `tc-reply-IFACE` (no name is a prefix of another followed by `-`).
const XDP_LINK: &str = "xdp";
const TC_INGRESS_LINK: &str = "tc-ingress";
const TC_LINK: &str = "tc-egress";
const REPLY_LINK: &str = "tc-reply";
/// Where replies were translated in XDP before they moved to tc (an XDP
/// program on a veth turns GSO off on its peer): a link a previous daemon
/// pinned under this name is removed.
const OLD_REPLY_LINK: &str = "reply-xdp";

/// A tc program and where it goes.
struct TcHook {
    program: &'static str,
    link: &'static str,
    attach: TcAttachType,
}

/// Rewrites XDP leaves to the kernel's checksum helpers (see the eBPF
/// `handoff` module). Attached before XDP, so no deferred packet meets an
/// interface without it.
const TC_INGRESS: TcHook = TcHook {
    program: INGRESS_TC_PROGRAM,
    link: TC_INGRESS_LINK,
    attach: TcAttachType::Ingress,
};
/// Reverse translation of replies.
const TC_EGRESS: TcHook = TcHook {
    program: EGRESS_PROGRAM,
    link: TC_LINK,
    attach: TcAttachType::Egress,
};
/// The fast path of replies, on the backend interfaces.
const TC_REPLY: TcHook = TcHook {
    program: REPLY_PROGRAM,
    link: REPLY_LINK,
    attach: TcAttachType::Ingress,
};

/// A link this process holds.
#[derive(Debug)]
pub(super) enum HeldLink {
    /// Pinned by this process.
    Pinned(PinnedLink),
    /// Pinned by an earlier process; this one swapped its program.
    Adopted { path: PathBuf, link: FdLink },
}

impl HeldLink {
    /// Lets go of the link; with `unpin`, the pin goes too, so the program is
    /// detached once no process holds the link.
    pub(super) fn release(self, unpin: bool) -> Result<()> {
        match (self, unpin) {
            (HeldLink::Pinned(link), true) => drop(link.unpin().context("unpinning a link")?),
            (HeldLink::Adopted { path, link }, true) => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                drop(link);
            }
            (held, false) => drop(held),
        }
        Ok(())
    }
}

/// How an interface got its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Attached now; with the XDP mode it got, if XDP.
    Fresh(Option<XdpMode>),
    /// The previous daemon's link, now running this daemon's program.
    Replaced,
}

impl Dataplane {
    /// Attaches the XDP program (ingress) and the tc program (egress) to each
    /// interface, and unpins links a previous daemon left on interfaces no
    /// longer asked for. Returns how each interface was attached.
    pub fn attach(
        &mut self,
        ifaces: &[String],
        backend_ifaces: &[String],
        mode: XdpMode,
    ) -> Result<Vec<(String, Attached)>> {
        let mut result = Vec::with_capacity(ifaces.len() + backend_ifaces.len());
        for iface in ifaces {
            let _ = self.attach_tc(&TC_INGRESS, iface)?;
            let how = self.attach_xdp(INGRESS_PROGRAM, XDP_LINK, iface, mode)?;
            let _ = self.attach_tc(&TC_EGRESS, iface)?;
            result.push((iface.clone(), how));
        }
        for iface in backend_ifaces {
            let how = self.attach_tc(&TC_REPLY, iface)?;
            result.push((iface.clone(), how));
        }
        let all: Vec<&String> = ifaces.iter().chain(backend_ifaces).collect();
        self.set_fast_path_ifaces(&all)?;
        if let Some(pins) = &self.pins {
            for (kind, wanted) in [
                (XDP_LINK, ifaces),
                (TC_INGRESS_LINK, ifaces),
                (TC_LINK, ifaces),
                (REPLY_LINK, backend_ifaces),
                (OLD_REPLY_LINK, &Vec::new()),
            ] {
                for old in pins.linked_ifaces(kind)? {
                    if !wanted.contains(&old) {
                        let path = pins.link_path(kind, &old);
                        let link = PinnedLink::from_pin(&path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        drop(link.unpin()?);
                        info!("{old}: detached ({kind}); no longer asked for");
                    }
                }
            }
        }
        Ok(result)
    }

    /// Makes `DEVMAP` hold exactly these interfaces: the fast path redirects
    /// only into interfaces portmap runs on.
    fn set_fast_path_ifaces(&mut self, ifaces: &[&String]) -> Result<()> {
        let wanted: Vec<u32> = ifaces.iter().map(|i| if_index(i)).collect::<Result<_>>()?;
        let present: Vec<u32> = self
            .maps
            .devmap
            .keys()
            .collect::<Result<_, _>>()
            .context("reading DEVMAP")?;
        for index in &wanted {
            self.maps
                .devmap
                .insert(*index, *index, None, 0)
                .with_context(|| format!("adding interface {index} to DEVMAP"))?;
        }
        for index in present.into_iter().filter(|i| !wanted.contains(i)) {
            let _ = self.maps.devmap.remove(index);
        }
        Ok(())
    }

    fn pinned_link(&self, kind: &str, iface: &str) -> Result<Option<(PathBuf, FdLink)>> {
        let Some(pins) = &self.pins else {
            return Ok(None);
        };
        let path = pins.link_path(kind, iface);
        if !path.exists() {
            return Ok(None);
        }
        let pinned =
            PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Some((path, FdLink::from(pinned))))
    }

    /// Pins a link this process just created, if there is a pin directory.
    pub(super) fn hold(&mut self, kind: &str, iface: &str, link: FdLink) -> Result<()> {
        match &self.pins {
            Some(pins) => {
                let path = pins.link_path(kind, iface);
                let pinned = link
                    .pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
                self.links.push(HeldLink::Pinned(pinned));
            }
            // Unpinned (tests): dropping the FdLink would detach; keep it.
            None => self.links.push(HeldLink::Adopted {
                path: PathBuf::new(),
                link,
            }),
        }
        Ok(())
    }

    fn attach_xdp(
        &mut self,
        program: &str,
        kind: &str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<Attached> {
        let pinned = self.pinned_link(kind, iface)?;
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("no XDP program {program} in the object"))?
            .try_into()?;
        if let Some((path, link)) = pinned {
            let link = XdpLink::try_from(link).context("the pinned XDP link is not an XDP link")?;
            let id = xdp
                .attach_to_link(link)
                .with_context(|| format!("replacing the XDP program on {iface}"))?;
            let link = FdLink::try_from(xdp.take_link(id)?)?;
            self.links.push(HeldLink::Adopted { path, link });
            return Ok(Attached::Replaced);
        }
        let attach = |xdp: &mut Xdp, m| xdp.attach(iface, m);
        let (id, got) = match mode {
            XdpMode::Native => (
                attach(xdp, AyaXdpMode::Driver)
                    .with_context(|| format!("attaching XDP (native) to {iface}"))?,
                XdpMode::Native,
            ),
            XdpMode::Generic => (
                attach(xdp, AyaXdpMode::Skb)
                    .with_context(|| format!("attaching XDP (generic) to {iface}"))?,
                XdpMode::Generic,
            ),
            XdpMode::Auto => match attach(xdp, AyaXdpMode::Driver) {
                Ok(id) => (id, XdpMode::Native),
                Err(e) => {
                    warn!(
                        "{iface}: native XDP unavailable ({e}); using generic XDP, which is slower"
                    );
                    (
                        attach(xdp, AyaXdpMode::Skb)
                            .with_context(|| format!("attaching XDP (generic) to {iface}"))?,
                        XdpMode::Generic,
                    )
                }
            },
        };
        match FdLink::try_from(xdp.take_link(id)?) {
            Ok(link) => self.hold(kind, iface, link)?,
            // Netlink attachment (kernels without XDP links) cannot be pinned:
            // it lives as long as this process.
            Err(e) => {
                warn!("{iface}: XDP attached without a link ({e}); it cannot outlive this process")
            }
        }
        Ok(Attached::Fresh(Some(got)))
    }

    fn attach_tc(&mut self, hook: &TcHook, iface: &str) -> Result<Attached> {
        let pinned = self.pinned_link(hook.link, iface)?;
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(hook.program)
            .with_context(|| format!("no tc program {} in the object", hook.program))?
            .try_into()?;
        if let Some((path, link)) = pinned {
            let link = SchedClassifierLink::try_from(link)
                .context("the pinned tc link is not a tcx link")?;
            let id = tc
                .attach_to_link(link)
                .with_context(|| format!("replacing the tc {} program on {iface}", hook.link))?;
            let link = FdLink::try_from(tc.take_link(id)?)?;
            self.links.push(HeldLink::Adopted { path, link });
            return Ok(Attached::Replaced);
        }
        // tcx (kernel ≥ 6.6) needs no qdisc; aya's netlink fallback on older
        // kernels needs clsact (left in place on exit, as tc users expect).
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0))
            && let Err(e) = tc::qdisc_add_clsact(iface)
        {
            log::debug!("{iface}: clsact qdisc not added ({e}); assuming it exists");
        }
        let id = tc
            .attach(iface, hook.attach)
            .with_context(|| format!("attaching {} to {iface}", hook.link))?;
        match FdLink::try_from(tc.take_link(id)?) {
            Ok(link) => self.hold(hook.link, iface, link)?,
            Err(e) => {
                warn!("{iface}: tc attached without a link ({e}); it cannot outlive this process")
            }
        }
        Ok(Attached::Fresh(None))
    }
}

fn if_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("interface {name}")),
        index => Ok(index),
    }
}
