//! What the fuzz targets (`fuzz/`, `cargo xtask fuzz`) check about input a
//! user types or writes: it is parsed without a panic, and what parses obeys
//! the rules the README states. Each check takes raw bytes and panics on a
//! broken rule; the tests below replay the committed seeds and every input a
//! fuzzer once crashed on (`fuzz/regressions/TARGET/`).

use std::{ffi::OsString, net::IpAddr};

use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    config::Sources,
    k8s::{self, Manifests, NodeConfig},
    model::{Cidr, DesiredState, HostAddr, PublishSpec},
};

/// A check: panics if `data` breaks a rule.
pub type Check = fn(&[u8]);

/// The fuzz targets, each with its check.
pub const TARGETS: [(&str, Check); 4] = [
    ("publish_spec", publish_spec),
    ("cidr", cidr),
    ("manifests", manifests),
    ("command_line", command_line),
];

/// A `-p` SPEC: a parsed spec has matching families and range lengths,
/// no port 0, prints back to itself, and becomes one service per port.
pub fn publish_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec: PublishSpec = match text.parse() {
        Ok(spec) => spec,
        Err(e) => {
            let e: String = e;
            assert!(!e.is_empty(), "an empty error for {text:?}");
            return;
        }
    };
    assert_eq!(spec.host.is_ipv4(), spec.backend.is_ipv4(), "{text:?}");
    assert_eq!(spec.host_ports.len(), spec.backend_ports.len(), "{text:?}");
    assert!(*spec.host_ports.start() > 0 && *spec.backend_ports.start() > 0);
    let canonical = canonical_spec(&spec);
    assert_eq!(
        canonical.parse::<PublishSpec>().as_ref(),
        Ok(&spec),
        "{text:?} printed as {canonical:?}"
    );
    // A service per port: long ranges cost milliseconds each, and would
    // slow the search down for nothing new.
    if spec.host_ports.len() > 1024 {
        return;
    }
    let desired = DesiredState::from_specs(&[(text.to_string(), spec.clone())])
        .unwrap_or_else(|e| panic!("{text:?}: one spec alone is refused: {e}"));
    assert_eq!(
        desired.services.len(),
        spec.port_pairs().count(),
        "{text:?}"
    );
    desired
        .frontend_owners()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
}

/// The SPEC of `spec`, written out in full.
fn canonical_spec(spec: &PublishSpec) -> String {
    let ip = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let host = match spec.host {
        HostAddr::AllV4 | HostAddr::AllV6 => String::new(),
        HostAddr::Ip(a) => format!("{}:", ip(a)),
    };
    let ports = |r: &std::ops::RangeInclusive<u16>| format!("{}-{}", r.start(), r.end());
    format!(
        "{host}{}:{}:{}/{}",
        ports(&spec.host_ports),
        ip(spec.backend),
        ports(&spec.backend_ports),
        spec.proto.as_str()
    )
}

/// `--allow-from`, `--service-cidr` and `loadBalancerSourceRanges` prefixes:
/// a parsed prefix prints back to itself and contains its own address.
pub fn cidr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = text.parse::<Cidr>() else {
        return;
    };
    let max = if c.addr.is_ipv4() { 32 } else { 128 };
    assert!(c.prefix <= max, "{text:?}");
    assert_eq!(c.to_string().parse::<Cidr>(), Ok(c), "{text:?}");
    assert!(c.contains(c.addr), "{text:?}");
}

/// The node a fuzzed manifest is translated for: as `portmap run` defaults,
/// with a node name so the `Local` policies are exercised.
fn node() -> NodeConfig {
    NodeConfig {
        node_name: Some("node-a".into()),
        service_cidrs: vec![
            "10.96.0.0/12".parse().expect("a prefix"),
            "fd00:96::/108".parse().expect("a prefix"),
        ],
        ..NodeConfig::default()
    }
}

/// A whole manifest file (YAML or JSON): read and translated without a
/// panic; a translation is consistent, and translating again with its
/// assignments (a reload) gives the same Services.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = match Manifests::parse("fuzz.yaml", text) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let node = node();
    let t = match k8s::translate(&m, &node, None) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let desired = DesiredState {
        services: t.services.clone(),
    };
    desired
        .validate()
        .unwrap_or_else(|e| panic!("a translation that does not validate: {e}"));
    let again = k8s::translate(&m, &node, Some(&t.assignments))
        .unwrap_or_else(|e| panic!("translating again with the assignments failed: {e}"));
    assert_eq!(again.services, t.services, "a reload changed the Services");
}

/// A `portmap` command line, one argument per line: parsed without a panic;
/// a `run`'s specs and prefixes load into a consistent desired state or an
/// error (manifest paths are not read).
pub fn command_line(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args =
        std::iter::once(OsString::from("portmap")).chain(text.split('\n').map(OsString::from));
    let Ok(cli) = Cli::try_parse_from(args) else {
        return;
    };
    let Command::Run(args) = cli.command else {
        return;
    };
    let sources = Sources {
        manifests: Vec::new(),
        ..args.config().sources
    };
    if let Ok(loaded) = sources.load(None) {
        loaded
            .desired
            .frontend_owners()
            .unwrap_or_else(|e| panic!("a loaded state with a conflict: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The committed seeds and regression inputs of every target, run
    /// through its check (what the fuzzer would find again, at every test
    /// run).
    #[test]
    fn seeds_and_regressions_pass_their_checks() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        for (target, check) in TARGETS {
            let mut seeds = 0;
            for dir in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    let data = std::fs::read(&path).expect("a readable input");
                    let run = std::panic::catch_unwind(|| check(&data));
                    assert!(run.is_ok(), "{target}: {} fails its check", path.display());
                    seeds += usize::from(dir == "seeds");
                }
            }
            assert!(
                seeds >= 3,
                "{target}: only {seeds} seeds in fuzz/seeds/{target}"
            );
        }
    }

    #[test]
    fn specs_print_back_to_themselves() {
        for text in [
            "8080:198.19.0.2:3000",
            "[2001:db8::1]:8080:[2001:db8:1::2]:3000/udp",
            "9000-9009:172.17.0.4:7000-7009/udp",
            "0.0.0.0:80:10.0.0.1:80",
        ] {
            publish_spec(text.as_bytes());
        }
    }
}
