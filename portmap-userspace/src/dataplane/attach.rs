//! Attaching the programs to interfaces, through links pinned in the pin
//! directory when there is one.
//!
//! A link pinned by a previous daemon is not detached and re-attached: the new
//! program replaces the old one in it atomically (`bpf_link_update`), so no
//! packet meets an interface without a program during an upgrade. A pinned
//! link that no longer leads anywhere (its interface was deleted, recreated
//! under another index, or lives in a namespace that is gone) is unpinned
//! and replaced by a fresh attachment; the maps, and so the flows, carry on.

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

use super::{
    DSR_PROGRAM, Dataplane, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM, REPLY_PROGRAM,
    SNAT_REPLY_PROGRAM, bpf_sys,
    ifaces::{Followed, Role, if_index, if_name},
};

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

/// Link pin names: `xdp-IFACE`, `tc-ingress-IFACE`, `tc-snat-IFACE`,
/// `tc-dsr-IFACE`, `tc-egress-IFACE`, `tc-reply-IFACE` (no name is a prefix
/// of another followed by `-`).
pub(super) const XDP_LINK: &str = "xdp";
pub(super) const TC_INGRESS_LINK: &str = "tc-ingress";
pub(super) const TC_SNAT_LINK: &str = "tc-snat";
pub(super) const TC_DSR_LINK: &str = "tc-dsr";
pub(super) const TC_LINK: &str = "tc-egress";
pub(super) const REPLY_LINK: &str = "tc-reply";
/// Where replies were translated in XDP before they moved to tc (an XDP
/// program on a veth turns GSO off on its peer): a link a previous daemon
/// pinned under this name is removed.
const OLD_REPLY_LINK: &str = "reply-xdp";

/// A tc program and where it goes.
pub(super) struct TcHook {
    program: &'static str,
    pub(super) link: &'static str,
    attach: TcAttachType,
}

/// Rewrites XDP leaves to the kernel's checksum helpers (see the eBPF
/// `handoff` module). Attached before XDP, so no deferred packet meets an
/// interface without it.
pub(super) const TC_INGRESS: TcHook = TcHook {
    program: INGRESS_TC_PROGRAM,
    link: TC_INGRESS_LINK,
    attach: TcAttachType::Ingress,
};
/// Replies of flows SNATed towards backends on other nodes, back to their
/// clients (see the eBPF `snat` module). Attached after `TC_INGRESS`, before
/// XDP.
pub(super) const TC_SNAT: TcHook = TcHook {
    program: SNAT_REPLY_PROGRAM,
    link: TC_SNAT_LINK,
    attach: TcAttachType::Ingress,
};
/// Direct server return: requests to backends on other nodes given their
/// frontend, and requests carrying one learned (see the eBPF `dsr` module).
/// Attached after `TC_SNAT`, before XDP.
pub(super) const TC_DSR: TcHook = TcHook {
    program: DSR_PROGRAM,
    link: TC_DSR_LINK,
    attach: TcAttachType::Ingress,
};
/// Reverse translation of replies.
pub(super) const TC_EGRESS: TcHook = TcHook {
    program: EGRESS_PROGRAM,
    link: TC_LINK,
    attach: TcAttachType::Egress,
};
/// The fast path of replies, on the backend interfaces.
pub(super) const TC_REPLY: TcHook = TcHook {
    program: REPLY_PROGRAM,
    link: REPLY_LINK,
    attach: TcAttachType::Ingress,
};

/// The tc hook a link pin name belongs to (`None`: the XDP link).
fn tc_hook(kind: &str) -> Option<&'static TcHook> {
    [&TC_INGRESS, &TC_SNAT, &TC_DSR, &TC_EGRESS, &TC_REPLY]
        .into_iter()
        .find(|h| h.link == kind)
}

/// How an interface got its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Attached now; with the XDP mode it got, if XDP.
    Fresh(Option<XdpMode>),
    /// The previous daemon's link, now running this daemon's program.
    Replaced,
}

impl Attached {
    /// What an interface of `role` got, for the log.
    pub fn describe(self, role: Role) -> String {
        match (self, role) {
            (Attached::Fresh(mode), Role::Published) => {
                format!("XDP {}, tc ingress and egress", mode_name(mode))
            }
            (Attached::Fresh(_), Role::Backend) => "tc ingress: replies' fast path".to_string(),
            (Attached::Replaced, _) => {
                "the programs replaced in the pinned links, no detach".to_string()
            }
        }
    }
}

fn mode_name(mode: Option<XdpMode>) -> String {
    mode.map_or_else(|| "?".to_string(), |m| format!("{m:?}"))
}

impl Dataplane {
    /// Attaches the XDP program and the tc programs (ingress, egress) to each
    /// interface of `ifaces`, the reply tc program to each of
    /// `backend_ifaces`, and unpins links a previous daemon left on
    /// interfaces no longer asked for. The interfaces are then followed (see
    /// [`Dataplane::follow_interfaces`]). Returns how each was attached.
    pub fn attach(
        &mut self,
        ifaces: &[String],
        backend_ifaces: &[String],
        mode: XdpMode,
    ) -> Result<Vec<(String, Role, Attached)>> {
        self.attachments.xdp_mode = mode;
        self.attachments.followed = ifaces
            .iter()
            .map(|n| Followed::new(n, Role::Published))
            .chain(
                backend_ifaces
                    .iter()
                    .map(|n| Followed::new(n, Role::Backend)),
            )
            .collect();
        let mut result = Vec::with_capacity(self.attachments.followed.len());
        for i in 0..self.attachments.followed.len() {
            let (name, role) = (
                self.attachments.followed[i].name.clone(),
                self.attachments.followed[i].role,
            );
            let (ifindex, how) = self.attach_iface(&name, role)?;
            self.attachments.followed[i].ifindex = Some(ifindex);
            result.push((name, role, how));
        }
        self.set_fast_path_ifaces()?;
        if let Some(pins) = &self.attachments.pins {
            for (kind, wanted) in [
                (XDP_LINK, ifaces),
                (TC_INGRESS_LINK, ifaces),
                (TC_SNAT_LINK, ifaces),
                (TC_DSR_LINK, ifaces),
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

    /// Attaches what an interface of `role` gets; returns the index it was
    /// attached at.
    pub(super) fn attach_iface(&mut self, name: &str, role: Role) -> Result<(u32, Attached)> {
        let ifindex = if_index(name)?;
        let mode = self.attachments.xdp_mode;
        let how = match role {
            Role::Published => {
                accept_local(name, ifindex)?;
                self.attach_tc(&TC_INGRESS, name)?;
                self.attach_tc(&TC_SNAT, name)?;
                self.attach_tc(&TC_DSR, name)?;
                let how = self.attach_xdp(INGRESS_PROGRAM, XDP_LINK, name, mode)?;
                self.attach_tc(&TC_EGRESS, name)?;
                how
            }
            Role::Backend => self.attach_tc(&TC_REPLY, name)?,
        };
        Ok((ifindex, how))
    }

    /// The link a previous daemon pinned for `kind` on `iface`, if it still
    /// leads to this namespace's `iface`. One that does not is unpinned
    /// (so released) and logged, and the caller attaches afresh.
    fn pinned_link(&self, kind: &str, iface: &str) -> Result<Option<(PathBuf, FdLink)>> {
        let Some(pins) = &self.attachments.pins else {
            return Ok(None);
        };
        let path = pins.link_path(kind, iface);
        if !path.exists() {
            return Ok(None);
        }
        let fd =
            bpf_sys::open_pinned(&path).with_context(|| format!("opening {}", path.display()))?;
        let info =
            bpf_sys::link_info(&fd).with_context(|| format!("reading {}", path.display()))?;
        if let Err(why) = leads_to(kind, iface, &info) {
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            warn!(
                "{iface}: the pinned {kind} link is severed ({why}); unpinned it and attaching \
                 afresh (the pinned maps and their flows carry on)"
            );
            return Ok(None);
        }
        let pinned =
            PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Some((path, FdLink::from(pinned))))
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
            match xdp.attach_to_link(link) {
                Ok(id) => {
                    let link = FdLink::try_from(xdp.take_link(id)?)?;
                    self.attachments.hold_adopted(kind, iface, Some(path), link);
                    return Ok(Attached::Replaced);
                }
                // Severed since it was checked: as if it had been then.
                Err(e) if severed(&e) => unpin_severed(&path, kind, iface)?,
                Err(e) => {
                    return Err(e).with_context(|| format!("replacing the XDP program on {iface}"));
                }
            }
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
            Ok(link) => self.attachments.hold(kind, iface, link)?,
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
            match tc.attach_to_link(link) {
                Ok(id) => {
                    let link = FdLink::try_from(tc.take_link(id)?)?;
                    self.attachments
                        .hold_adopted(hook.link, iface, Some(path), link);
                    return Ok(Attached::Replaced);
                }
                Err(e) if severed(&e) => unpin_severed(&path, hook.link, iface)?,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("replacing the {} program on {iface}", hook.link)
                    });
                }
            }
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
            Ok(link) => self.attachments.hold(hook.link, iface, link)?,
            Err(e) => {
                warn!("{iface}: tc attached without a link ({e}); it cannot outlive this process")
            }
        }
        Ok(Attached::Fresh(None))
    }
}

/// Whether `bpf_link_update` failed because the link is severed (ENOLINK:
/// its interface went away).
fn severed(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOLINK))
    })
}

fn unpin_severed(path: &std::path::Path, kind: &str, iface: &str) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
    warn!(
        "{iface}: the pinned {kind} link is severed (replacing its program failed with ENOLINK); \
         unpinned it and attaching afresh (the pinned maps and their flows carry on)"
    );
    Ok(())
}

/// Whether a pinned link of `kind` leads to interface `iface` of this
/// network namespace; if not, why. The index alone is not enough: indexes
/// are per namespace, so the program attached at that index here must be
/// the link's.
fn leads_to(kind: &str, iface: &str, info: &bpf_sys::LinkInfo) -> Result<(), String> {
    let tc = tc_hook(kind);
    let want_type = if tc.is_some() {
        bpf_sys::BPF_LINK_TYPE_TCX
    } else {
        bpf_sys::BPF_LINK_TYPE_XDP
    };
    if info.link_type != want_type {
        return Err(format!("it is a link of type {}", info.link_type));
    }
    if info.ifindex() == 0 {
        return Err(
            "its interface is gone: deleted, or in a network namespace that is gone".into(),
        );
    }
    let here = if_index(iface).map_err(|e| format!("{e:#}"))?;
    if info.ifindex() != here {
        return Err(format!(
            "it is on interface index {}, and {iface} is index {here} now (recreated?)",
            info.ifindex()
        ));
    }
    let runs_here = match tc {
        None => {
            crate::netlink::xdp_prog_id(here)
                .map_err(|e| format!("reading {iface}'s XDP program: {e}"))?
                == Some(info.prog_id)
        }
        Some(hook) => SchedClassifier::query_tcx(iface, hook.attach)
            .map_err(|e| format!("reading {iface}'s tc programs: {e}"))?
            .1
            .iter()
            .any(|p| p.id() == info.prog_id),
    };
    if !runs_here {
        return Err(format!(
            "{iface} here does not run its program: it is an interface of another network namespace"
        ));
    }
    Ok(())
}

/// Lets `iface` take IPv4 packets whose source is one of this node's
/// addresses. A request SNATed towards a backend on another node carries
/// this node's address as its source, and when it goes on to the kernel the
/// kernel would otherwise drop it as a martian. For a bridge port the check
/// is made on the bridge (where the kernel routes what the port receives),
/// so the bridge gets it too. IPv6 has no such check.
fn accept_local(iface: &str, ifindex: u32) -> Result<()> {
    let master = crate::netlink::master_of(ifindex)
        .with_context(|| format!("reading {iface}'s master"))?
        .and_then(if_name);
    for dev in std::iter::once(iface.to_string()).chain(master) {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/accept_local");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => std::fs::write(&path, "1").with_context(|| format!("setting {path} = 1"))?,
            // No IPv4 on the interface: nothing to accept.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("`bpf_link_update` failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_severed_link_is_told_by_enolink_anywhere_in_the_chain() {
        let enolink = || std::io::Error::from_raw_os_error(libc::ENOLINK);
        assert!(severed(&enolink()));
        assert!(severed(&Wrapped(enolink())));
        assert!(!severed(&Wrapped(std::io::Error::from_raw_os_error(
            libc::EPERM
        ))));
    }
}
