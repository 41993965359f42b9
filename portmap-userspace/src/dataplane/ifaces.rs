//! The interfaces portmap runs on, followed while it runs: one that
//! disappears (a container's veth, a NIC reset, a bond rebuilt) is marked
//! detached, its links released; when an interface of that name appears
//! again, it gets its programs and its fast-path (`DEVMAP`) entry back. The
//! daemon calls [`Dataplane::follow_interfaces`] on rtnetlink link events.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{
    Dataplane,
    attach::{Attached, REPLY_LINK, TC_DSR_LINK, TC_INGRESS_LINK, TC_LINK, TC_SNAT_LINK, XDP_LINK},
};

/// What an interface is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `--iface`: incoming traffic translated, replies on egress.
    Published,
    /// `--backend-iface`: towards backends, replies translated in tc and
    /// redirected (the fast path).
    Backend,
}

impl Role {
    pub(super) fn link_kinds(self) -> &'static [&'static str] {
        match self {
            Role::Published => &[
                XDP_LINK,
                TC_INGRESS_LINK,
                TC_SNAT_LINK,
                TC_DSR_LINK,
                TC_LINK,
            ],
            Role::Backend => &[REPLY_LINK],
        }
    }
}

/// An interface asked for, and where it is attached now.
#[derive(Clone, Debug)]
pub(super) struct Followed {
    pub name: String,
    pub role: Role,
    /// The index the programs are attached at; `None` while detached.
    pub ifindex: Option<u32>,
}

impl Followed {
    pub fn new(name: &str, role: Role) -> Self {
        Self {
            name: name.to_string(),
            role,
            ifindex: None,
        }
    }
}

/// One interface's state, for `portmap list` and the metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub role: Role,
    pub attached: bool,
    /// The index it is attached at, while attached.
    pub ifindex: Option<u32>,
}

/// What following the interfaces changed.
#[derive(Debug)]
pub enum InterfaceChange {
    /// The programs on `name` were released: the interface is gone (`why`).
    Detached { name: String, why: String },
    /// `name` (back, at `ifindex`) got its programs.
    Attached {
        name: String,
        role: Role,
        ifindex: u32,
        how: Attached,
    },
    /// `name` is there but could not be attached; retried at the next event.
    Failed { name: String, error: anyhow::Error },
}

/// The index of interface `name` in this namespace.
pub(super) fn if_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("interface {name}")),
        index => Ok(index),
    }
}

/// The name of interface `ifindex` in this namespace, if there is one.
pub fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as the call requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the call wrote a NUL-terminated name into `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

impl Dataplane {
    /// The interfaces followed, and their indexes while attached.
    pub fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.attachments.interfaces()
    }

    /// Names and attached indexes of the interfaces followed, to tell which
    /// link events concern them.
    pub fn followed(&self) -> (Vec<String>, Vec<u32>) {
        let followed = &self.attachments.followed;
        (
            followed.iter().map(|f| f.name.clone()).collect(),
            self.attachments.attached_indexes(),
        )
    }

    /// Brings every followed interface in line with the machine: programs
    /// released on one that is gone (or was recreated), attached to one that
    /// is (back) there. Returns what changed.
    pub fn follow_interfaces(&mut self) -> Result<Vec<InterfaceChange>> {
        let mut changes = Vec::new();
        for i in 0..self.attachments.followed.len() {
            let Followed {
                name,
                role,
                ifindex,
            } = self.attachments.followed[i].clone();
            let now = if_index(&name).ok();
            if let Some(at) = ifindex {
                let why = if now.is_none() {
                    Some("the interface is gone".to_string())
                } else if now != Some(at) {
                    Some(format!(
                        "the interface was recreated (index {at}, now {})",
                        now.unwrap_or(0)
                    ))
                } else {
                    self.attachments.links_severed(&name, role)
                };
                let Some(why) = why else {
                    continue;
                };
                self.attachments.release_iface(&name, role)?;
                self.attachments.followed[i].ifindex = None;
                changes.push(InterfaceChange::Detached {
                    name: name.clone(),
                    why,
                });
            }
            if now.is_some() {
                match self.attach_iface(&name, role) {
                    Ok((ifindex, how)) => {
                        self.attachments.followed[i].ifindex = Some(ifindex);
                        changes.push(InterfaceChange::Attached {
                            name,
                            role,
                            ifindex,
                            how,
                        });
                    }
                    Err(error) => {
                        // Whatever was attached before the failure goes too.
                        self.attachments.release_iface(&name, role)?;
                        changes.push(InterfaceChange::Failed { name, error });
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.set_fast_path_ifaces()?;
        }
        Ok(changes)
    }

    /// Makes `DEVMAP` hold exactly the attached interfaces: the fast path
    /// redirects only into interfaces portmap runs on. (The kernel removes
    /// the entry of an interface that is deleted by itself.)
    pub(super) fn set_fast_path_ifaces(&mut self) -> Result<()> {
        let wanted = self.attachments.attached_indexes();
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
        // Next hops cached towards interfaces that left the fast path go.
        self.maps.hop_epoch.bump()
    }
}
