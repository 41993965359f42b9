//! What this process has attached, apart from the maps: the links it holds
//! (pinned or not), the interfaces it follows, and whether socket-level load
//! balancing runs. `attach`, `ifaces` and `sock` make the attachments; this
//! is their record.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::links::FdLink;

use super::{
    XdpMode, bpf_sys,
    ifaces::{Followed, InterfaceStatus, Role},
    pin::PinDir,
    sock::SocketLbStatus,
};

/// The key of a held link: its pin name, `KIND-NAME`.
pub(super) fn link_key(kind: &str, name: &str) -> String {
    format!("{kind}-{name}")
}

/// A link this process holds, and where it is pinned (`None`: unpinned, for
/// tests; it lives as long as this process holds it).
#[derive(Debug)]
pub(super) struct HeldLink {
    pub path: Option<PathBuf>,
    pub link: FdLink,
}

impl HeldLink {
    /// Lets go of the link; with `unpin`, the pin goes too, so the program is
    /// detached once no process holds the link.
    pub(super) fn release(self, unpin: bool) -> Result<()> {
        if unpin && let Some(path) = &self.path {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("unpinning {}", path.display())),
            }
        }
        drop(self.link);
        Ok(())
    }

    /// What the kernel says about the link now.
    pub(super) fn info(&self) -> Result<bpf_sys::LinkInfo> {
        let id = self.link.info().context("reading a link's id")?.id();
        let fd = bpf_sys::link_by_id(id).with_context(|| format!("opening link {id}"))?;
        Ok(bpf_sys::link_info(&fd)?)
    }
}

#[derive(Debug)]
pub(super) struct Attachments {
    /// Where maps and links are pinned, if they are.
    pub pins: Option<PinDir>,
    /// Links this process holds, by pin name (pinned ones keep their
    /// programs attached when it exits).
    pub links: BTreeMap<String, HeldLink>,
    /// The interfaces asked for, followed while the daemon runs.
    pub followed: Vec<Followed>,
    pub xdp_mode: XdpMode,
    /// Socket-level load balancing: on which cgroup, or why it is off.
    pub socket_lb: SocketLbStatus,
}

impl Attachments {
    /// Nothing attached yet.
    pub fn new(pins: Option<PinDir>) -> Self {
        Self {
            pins,
            links: BTreeMap::new(),
            followed: Vec::new(),
            xdp_mode: XdpMode::default(),
            socket_lb: SocketLbStatus::off("not attached"),
        }
    }

    /// Pins a link this process just created, if there is a pin directory,
    /// and holds it.
    pub fn hold(&mut self, kind: &str, name: &str, link: FdLink) -> Result<()> {
        let (path, link) = match &self.pins {
            Some(pins) => {
                let path = pins.link_path(kind, name);
                let pinned = link
                    .pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
                (Some(path), FdLink::from(pinned))
            }
            // Unpinned (tests): dropping the FdLink would detach; keep it.
            None => (None, link),
        };
        self.hold_adopted(kind, name, path, link);
        Ok(())
    }

    /// Holds a link pinned before (by a previous daemon).
    pub fn hold_adopted(&mut self, kind: &str, name: &str, path: Option<PathBuf>, link: FdLink) {
        self.links
            .insert(link_key(kind, name), HeldLink { path, link });
    }

    /// Releases and unpins the links of interface `name`.
    pub fn release_iface(&mut self, name: &str, role: Role) -> Result<()> {
        for kind in role.link_kinds() {
            if let Some(held) = self.links.remove(&link_key(kind, name)) {
                held.release(true)?;
            }
        }
        Ok(())
    }

    /// Lets go of every link; with `unpin`, their pins go too. The first
    /// error is returned once all were tried.
    pub fn release_all(&mut self, unpin: bool) -> Result<()> {
        let mut result = Ok(());
        for link in std::mem::take(&mut self.links).into_values() {
            if let Err(e) = link.release(unpin)
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }

    /// Why the links held for an attached interface no longer lead to it, if
    /// they do not (the interface went and came back between two events).
    pub fn links_severed(&self, name: &str, role: Role) -> Option<String> {
        role.link_kinds().iter().find_map(|kind| {
            let held = self.links.get(&link_key(kind, name))?;
            match held.info() {
                Ok(info) if info.ifindex() != 0 => None,
                Ok(_) => Some(format!("its {kind} link was severed")),
                Err(e) => Some(format!("its {kind} link cannot be read: {e:#}")),
            }
        })
    }

    /// The interfaces followed, and their indexes while attached.
    pub fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.followed
            .iter()
            .map(|f| InterfaceStatus {
                name: f.name.clone(),
                role: f.role,
                attached: f.ifindex.is_some(),
                ifindex: f.ifindex,
            })
            .collect()
    }

    /// The indexes of the interfaces attached now (the fast path's `DEVMAP`).
    pub fn attached_indexes(&self) -> Vec<u32> {
        self.followed.iter().filter_map(|f| f.ifindex).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed(name: &str, role: Role, ifindex: Option<u32>) -> Followed {
        Followed {
            ifindex,
            ..Followed::new(name, role)
        }
    }

    #[test]
    fn interfaces_say_which_are_attached_and_where() {
        let mut a = Attachments::new(None);
        a.followed = vec![
            followed("eth0", Role::Published, Some(2)),
            followed("veth-b", Role::Backend, None),
            followed("eth1", Role::Published, Some(7)),
        ];
        let status = a.interfaces();
        assert_eq!(
            status
                .iter()
                .map(|s| (s.name.as_str(), s.role, s.attached, s.ifindex))
                .collect::<Vec<_>>(),
            [
                ("eth0", Role::Published, true, Some(2)),
                ("veth-b", Role::Backend, false, None),
                ("eth1", Role::Published, true, Some(7)),
            ]
        );
        assert_eq!(
            a.attached_indexes(),
            [2, 7],
            "DEVMAP gets attached ones only"
        );
    }

    #[test]
    fn nothing_held_is_nothing_to_release_or_to_find_severed() {
        let mut a = Attachments::new(None);
        assert!(!a.socket_lb.enabled, "off until attached");
        assert_eq!(a.links_severed("eth0", Role::Published), None);
        a.release_iface("eth0", Role::Published).unwrap();
        a.release_all(true).unwrap();
        assert!(a.links.is_empty());
    }

    #[test]
    fn link_keys_are_pin_names() {
        assert_eq!(link_key("tc-egress", "eth0"), "tc-egress-eth0");
    }
}
