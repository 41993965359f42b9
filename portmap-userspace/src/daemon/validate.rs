//! Everything about a [`Config`] that can be checked before anything is
//! touched: interfaces, the cgroup, and the desired state its sources make.

use std::{collections::BTreeSet, fmt};

use log::warn;

use crate::{
    config::{ConfigError, Loaded},
    dataplane::is_cgroup2,
    node_addrs::{interface_exists, interface_names},
};

use super::{Config, SocketLb};

/// Which input of a [`Config`] is refused (the command line names it by its
/// flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Iface,
    BackendIface,
    Cgroup,
    Publish,
    Manifests,
    /// `--kubeconfig` (or, without it, the environment it stands for).
    Kubeconfig,
}

impl Input {
    fn describe(self) -> &'static str {
        match self {
            Input::Iface => "interface",
            Input::BackendIface => "interface towards backends",
            Input::Cgroup => "cgroup",
            Input::Publish => "published ports",
            Input::Manifests => "manifests",
            Input::Kubeconfig => "kubeconfig",
        }
    }
}

/// Bad input, found before anything was touched: which input, the value at
/// fault if one is, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidInput {
    pub input: Input,
    pub value: Option<String>,
    pub why: String,
}

impl InvalidInput {
    fn new(input: Input, value: Option<String>, why: impl fmt::Display) -> Self {
        InvalidInput {
            input,
            value,
            why: why.to_string(),
        }
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} '{value}': {}", self.input.describe(), self.why),
            None => write!(f, "{}: {}", self.input.describe(), self.why),
        }
    }
}

/// Checks the interfaces and the cgroup, warns about `-p` ports no source
/// may reach, and loads the desired state.
pub(super) fn validate(config: &Config) -> Result<Loaded, InvalidInput> {
    let mut seen = BTreeSet::new();
    let ifaces = config.ifaces.iter().map(|i| (Input::Iface, i));
    let backend_ifaces = config
        .backend_ifaces
        .iter()
        .map(|i| (Input::BackendIface, i));
    for (input, iface) in ifaces.chain(backend_ifaces) {
        if !interface_exists(iface) {
            return Err(InvalidInput::new(
                input,
                Some(iface.clone()),
                format!(
                    "no such network interface (have: {})",
                    interface_names().join(", ")
                ),
            ));
        }
        if !seen.insert(iface) {
            return Err(InvalidInput::new(
                input,
                Some(iface.clone()),
                "given twice (an interface is either published or towards backends)",
            ));
        }
    }
    if let SocketLb::Cgroup(cgroup) = &config.socket_lb {
        let why = if !cgroup.is_dir() {
            Some("no such directory")
        } else if !is_cgroup2(cgroup) {
            Some("not a directory of a cgroup v2 (unified) hierarchy")
        } else {
            None
        };
        if let Some(why) = why {
            let value = cgroup.display().to_string();
            return Err(InvalidInput::new(Input::Cgroup, Some(value), why));
        }
    }
    let sources = &config.sources;
    for (text, spec) in &sources.specs {
        let v4 = spec.backend.is_ipv4();
        if !sources.allow_from.is_empty()
            && !sources.allow_from.iter().any(|c| c.addr.is_ipv4() == v4)
        {
            warn!("-p {text}: no --allow-from prefix of its family, so no source may reach it");
        }
    }
    sources.load(None).map_err(|e| match e {
        ConfigError::Manifest(e) => InvalidInput::new(Input::Manifests, None, e),
        ConfigError::Model(e) => InvalidInput::new(Input::Publish, None, e),
    })
}

/// A kubeconfig that cannot be used (or none found), as bad input: nothing
/// has been touched yet.
pub(super) fn kubeconfig_error(k: &super::Kubernetes, e: &anyhow::Error) -> InvalidInput {
    let value = k.api.kubeconfig.as_ref().map(|p| p.display().to_string());
    InvalidInput::new(Input::Kubeconfig, value, format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::tests::config;

    #[test]
    fn a_missing_interface_is_named() {
        let mut c = config();
        c.ifaces = vec!["lo".into(), "pm-no-such-if0".into()];
        let err = validate(&c).unwrap_err();
        assert_eq!(err.input, Input::Iface);
        assert_eq!(err.value.as_deref(), Some("pm-no-such-if0"));
        assert!(
            err.why.starts_with("no such network interface (have: "),
            "{err}"
        );
    }

    #[test]
    fn an_interface_in_both_roles_is_refused() {
        let mut c = config();
        c.ifaces = vec!["lo".into()];
        c.backend_ifaces = vec!["lo".into()];
        let err = validate(&c).unwrap_err();
        assert_eq!(err.input, Input::BackendIface);
        assert!(err.why.starts_with("given twice"), "{err}");
    }

    #[test]
    fn a_cgroup_that_is_not_a_directory_is_refused() {
        let mut c = config();
        c.socket_lb = SocketLb::Cgroup("/pm-no-such-dir".into());
        let err = validate(&c).unwrap_err();
        assert_eq!(err.input, Input::Cgroup);
        assert_eq!(err.why, "no such directory");
    }

    #[test]
    fn conflicting_specs_are_the_published_ports_fault() {
        let mut c = config();
        let spec = "8080:198.18.2.2:80";
        c.sources.specs = vec![(spec.into(), spec.parse().unwrap()); 2];
        let err = validate(&c).unwrap_err();
        assert_eq!(err.input, Input::Publish);
        assert_eq!(err.value, None);
        assert!(err.why.contains("published twice"), "{err}");
    }

    #[test]
    fn valid_input_loads_the_desired_state() {
        let mut c = config();
        let spec = "8080:198.18.2.2:80";
        c.sources.specs = vec![(spec.into(), spec.parse().unwrap())];
        let loaded = validate(&c).unwrap();
        assert_eq!(loaded.desired.services.len(), 1);
    }
}
