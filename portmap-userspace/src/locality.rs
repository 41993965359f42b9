//! Which backends are on this node, and how new flows reach the others.
//!
//! A backend on another node answers the client straight from its own
//! address, and the client drops what it never talked to. So flows to such
//! a backend leave with this node's address and a port of
//! `--snat-port-range` as their source (kube-proxy's masquerade), and come
//! back here to be turned around; or, under `--lb-mode dsr` (`hybrid`: for
//! TCP), they keep the client's address and carry the frontend along, and
//! the backend's node sends the replies straight to the client (direct
//! server return, see the eBPF `dsr` module). Flows to backends on this node keep the
//! client's address: unlike kube-proxy, which masquerades NodePort traffic to
//! local pods too, portmap has no reason to hide the client from them.
//!
//! Where a backend runs is its source's word when it has one (an
//! EndpointSlice's `nodeName` against `--node-name`); otherwise the route to
//! it decides: through a gateway is another node, on a link of this node is
//! here. The route also gives the address SNAT uses (its preferred source).

use std::{io, net::IpAddr, ops::RangeInclusive};

use foldhash::HashSet;

use crate::{
    model::{Cidr, DesiredState, Placement, Protocol, Reach},
    netlink::{Route, RouteChange, RouteWatch, route_to},
};

/// `--snat-port-range` by default: above the NodePort range and the usual
/// ephemeral ports (`net.ipv4.ip_local_port_range` is 32768-60999).
pub const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 61000..=65535;

/// How new flows reach backends on other nodes (`--lb-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LbMode {
    /// SNAT: from this node's address, the replies back through here
    /// (kube-proxy's masquerade).
    #[default]
    Snat,
    /// Direct server return: the client's address kept, the frontend
    /// carried in an IP option, the replies sent to the client by the
    /// backend's node (which must run portmap too).
    Dsr,
    /// DSR for TCP, SNAT for UDP (whose every datagram would carry the
    /// option).
    Hybrid,
}

impl LbMode {
    /// Whether flows of `proto` to backends on other nodes go by DSR.
    pub fn dsr_for(self, proto: Protocol) -> bool {
        match self {
            LbMode::Snat => false,
            LbMode::Dsr => true,
            LbMode::Hybrid => proto == Protocol::Tcp,
        }
    }
}

/// The node's masquerading policy (`--masquerade-all`, `--snat-port-range`,
/// `--lb-mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// SNAT every new flow, to local backends too, except where a Local
    /// traffic policy keeps the client's address. Overrides DSR.
    pub all: bool,
    pub ports: RangeInclusive<u16>,
    pub lb_mode: LbMode,
}

impl Default for Masquerade {
    fn default() -> Self {
        Self {
            all: false,
            ports: DEFAULT_SNAT_PORTS,
            lb_mode: LbMode::default(),
        }
    }
}

/// Something that knows routes: the kernel's, or a table in tests.
pub trait Routes {
    fn route(&mut self, dst: IpAddr) -> io::Result<Option<Route>>;
}

/// The routes of this process's network namespace.
pub struct KernelRoutes;

impl Routes for KernelRoutes {
    fn route(&mut self, dst: IpAddr) -> io::Result<Option<Route>> {
        route_to(dst)
    }
}

/// Sets every endpoint's `reach` in `desired`. Returns what is worth a
/// warning: backends said to be remote with no route or source address
/// towards them (their flows keep the client's address, and their replies
/// are unlikely to come back).
pub fn resolve(
    desired: &mut DesiredState,
    policy: &Masquerade,
    routes: &mut impl Routes,
) -> Vec<String> {
    resolve_with(desired, policy, routes, &mut Known::default())
}

/// [`resolve`], with the answers already known in `known` (and the new
/// ones added to it).
fn resolve_with(
    desired: &mut DesiredState,
    policy: &Masquerade,
    routes: &mut impl Routes,
    known: &mut Known,
) -> Vec<String> {
    // Addresses whose route could not be asked: said once, not kept.
    let mut failed: HashSet<IpAddr> = HashSet::default();
    let mut warnings = Vec::new();
    for svc in &mut desired.services {
        let dsr = svc
            .frontends
            .first()
            .is_some_and(|f| policy.lb_mode.dsr_for(f.proto));
        for ep in &mut svc.endpoints {
            ep.reach = Reach::Direct;
            // A local backend keeps the client's address, whatever its route.
            let needs_route = match ep.placement {
                Placement::KeepClient => false,
                Placement::Local => policy.all,
                Placement::Remote | Placement::Unknown => true,
            };
            if !needs_route {
                continue;
            }
            let route = match known.get(&ep.addr) {
                Some(route) => *route,
                None if failed.contains(&ep.addr) => None,
                None => match routes.route(ep.addr) {
                    Ok(route) => *known.entry(ep.addr).or_insert(route),
                    Err(e) => {
                        warnings.push(format!("route to backend {}: {e}", ep.addr));
                        failed.insert(ep.addr);
                        None
                    }
                },
            };
            let remote = match ep.placement {
                Placement::Local | Placement::KeepClient => false,
                Placement::Remote => true,
                Placement::Unknown => route.is_some_and(|r| r.gateway.is_some() && !r.local),
            };
            if !(remote || policy.all) || route.is_some_and(|r| r.local) {
                continue;
            }
            if remote && dsr && !policy.all {
                ep.reach = Reach::Dsr;
                continue;
            }
            match route.and_then(|r| r.source) {
                Some(source) => ep.reach = Reach::Snat(source),
                None if remote => warnings.push(format!(
                    "backend {} of {} is on another node but this node has no route or source address towards it: its flows are not SNATed",
                    ep.label(),
                    svc.key
                )),
                None => {}
            }
        }
    }
    warnings.sort();
    warnings.dedup();
    warnings
}

/// Route answers by destination.
type Known = foldhash::HashMap<IpAddr, Option<Route>>;

/// The kernel's route answers, kept between syncs: a sync asks only for
/// the backends it has not seen, or whose answer a change of routes,
/// addresses, rules or interfaces may have moved since (see
/// [`RouteWatch`]). Without the watch, nothing is kept.
#[derive(Debug)]
pub struct RouteCache {
    watch: Option<RouteWatch>,
    known: Known,
}

impl Default for RouteCache {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteCache {
    /// Subscribes to the changes first, so none after an answer is missed.
    pub fn new() -> Self {
        let watch = match RouteWatch::open() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "following route changes: {e}; every sync asks every backend's route again"
                );
                None
            }
        };
        RouteCache {
            watch,
            known: Known::default(),
        }
    }

    /// [`resolve`] with the kernel's routes, asking only what is not known.
    pub fn resolve(&mut self, desired: &mut DesiredState, policy: &Masquerade) -> Vec<String> {
        match &self.watch {
            Some(watch) => forget(&mut self.known, &watch.read_all()),
            None => self.known.clear(),
        }
        let warnings = resolve_with(desired, policy, &mut KernelRoutes, &mut self.known);
        // Backends gone from the state are not kept for ever.
        if self.known.len() > 2 * endpoints(desired) + 1024 {
            self.known.clear();
        }
        warnings
    }
}

fn endpoints(desired: &DesiredState) -> usize {
    desired.services.iter().map(|s| s.endpoints.len()).sum()
}

/// Drops the answers `changes` may have moved.
fn forget(known: &mut Known, changes: &[RouteChange]) {
    for change in changes {
        match *change {
            RouteChange::All => known.clear(),
            RouteChange::Prefix { addr, len } => {
                let prefix = Cidr { addr, prefix: len };
                known.retain(|ip, _| !prefix.contains(*ip));
            }
            // Unreachable answers too: a route may have come back up.
            RouteChange::Link(ifindex) => known
                .retain(|_, route| route.is_some_and(|r| r.oif.is_some_and(|oif| oif != ifindex))),
        }
        if known.is_empty() {
            return;
        }
    }
}

/// The interfaces the replies of SNATed flows come back on (the routes'
/// towards their backends), each with a backend that uses it. Those replies
/// are turned around by portmap's programs on `--iface` only.
pub fn snat_reply_interfaces(
    desired: &DesiredState,
    routes: &mut impl Routes,
) -> std::collections::BTreeMap<u32, String> {
    let mut oifs = std::collections::BTreeMap::new();
    for ep in desired.services.iter().flat_map(|s| &s.endpoints) {
        if ep.reach.snat_from().is_none() {
            continue;
        }
        if let Ok(Some(Route { oif: Some(oif), .. })) = routes.route(ep.addr) {
            oifs.entry(oif).or_insert_with(|| ep.label());
        }
    }
    oifs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointState, Service, WhenEmpty};

    /// 198.18.1.0/24 is on a link; 10.244.0.0/16 is behind a gateway;
    /// 198.18.1.1 is the node's own; anything else is unreachable.
    struct Table;

    impl Routes for Table {
        fn route(&mut self, dst: IpAddr) -> io::Result<Option<Route>> {
            let s = dst.to_string();
            let source = Some("198.18.1.1".parse().unwrap());
            Ok(if s == "198.18.1.1" {
                Some(Route {
                    gateway: None,
                    source,
                    local: true,
                    oif: Some(1),
                })
            } else if s.starts_with("198.18.1.") {
                Some(Route {
                    gateway: None,
                    source,
                    local: false,
                    oif: Some(2),
                })
            } else if s.starts_with("10.244.") {
                Some(Route {
                    gateway: Some("198.18.1.254".parse().unwrap()),
                    source,
                    local: false,
                    oif: Some(2),
                })
            } else {
                None
            })
        }
    }

    fn state(endpoints: &[(&str, Placement)]) -> DesiredState {
        DesiredState {
            services: vec![Service {
                key: "svc".into(),
                name: String::new(),
                container: String::new(),
                port_name: String::new(),
                frontends: Vec::new(),
                endpoints: endpoints
                    .iter()
                    .map(|(addr, placement)| Endpoint {
                        addr: addr.parse().unwrap(),
                        port: 80,
                        state: EndpointState::Ready,
                        placement: *placement,
                        reach: Reach::Direct,
                    })
                    .collect(),
                affinity_timeout_s: None,
                when_empty: WhenEmpty::Reject,
                source_ranges: Vec::new(),
            }],
        }
    }

    fn snat_of(desired: &DesiredState) -> Vec<Option<String>> {
        desired.services[0]
            .endpoints
            .iter()
            .map(|e| e.reach.snat_from().map(|a| a.to_string()))
            .collect()
    }

    #[test]
    fn remote_backends_are_snated_from_the_routes_source() {
        let mut d = state(&[
            ("198.18.1.5", Placement::Unknown),
            ("10.244.2.7", Placement::Unknown),
            ("198.18.1.6", Placement::Remote),
            ("10.244.2.8", Placement::Local),
            ("10.244.2.9", Placement::KeepClient),
        ]);
        let warnings = resolve(&mut d, &Masquerade::default(), &mut Table);
        assert!(warnings.is_empty(), "{warnings:?}");
        let snat = Some("198.18.1.1".to_string());
        assert_eq!(snat_of(&d), vec![None, snat.clone(), snat, None, None]);
    }

    #[test]
    fn masquerade_all_spares_only_local_traffic_policies_and_the_node_itself() {
        let mut d = state(&[
            ("198.18.1.5", Placement::Unknown),
            ("10.244.2.8", Placement::Local),
            ("10.244.2.9", Placement::KeepClient),
            ("198.18.1.1", Placement::Unknown),
        ]);
        let all = Masquerade {
            all: true,
            ..Masquerade::default()
        };
        assert!(resolve(&mut d, &all, &mut Table).is_empty());
        let snat = Some("198.18.1.1".to_string());
        assert_eq!(snat_of(&d), vec![snat.clone(), snat, None, None]);
    }

    #[test]
    fn a_remote_backend_without_a_route_is_named_in_a_warning() {
        let mut d = state(&[("203.0.113.9", Placement::Remote)]);
        let warnings = resolve(&mut d, &Masquerade::default(), &mut Table);
        assert_eq!(snat_of(&d), vec![None]);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("203.0.113.9:80 of svc"),
            "{warnings:?}"
        );
    }

    /// `state` with one frontend of `proto`.
    fn state_of(proto: Protocol, endpoints: &[(&str, Placement)]) -> DesiredState {
        let mut d = state(endpoints);
        d.services[0].frontends.push(crate::model::Frontend {
            addr: crate::model::HostAddr::AllV4,
            port: 30080,
            proto,
        });
        d
    }

    fn reaches(d: &DesiredState) -> Vec<Reach> {
        d.services[0].endpoints.iter().map(|e| e.reach).collect()
    }

    #[test]
    fn dsr_takes_remote_backends_of_its_protocols_and_masquerade_all_overrides_it() {
        let endpoints = [
            ("10.244.2.7", Placement::Unknown),
            ("198.18.1.6", Placement::Remote),
            ("10.244.2.8", Placement::Local),
            ("198.18.1.5", Placement::Unknown),
        ];
        let snat = Reach::Snat("198.18.1.1".parse().unwrap());
        let policy = |lb_mode, all| Masquerade {
            all,
            lb_mode,
            ..Masquerade::default()
        };
        for (mode, proto, remote) in [
            (LbMode::Dsr, Protocol::Tcp, Reach::Dsr),
            (LbMode::Dsr, Protocol::Udp, Reach::Dsr),
            (LbMode::Hybrid, Protocol::Tcp, Reach::Dsr),
            (LbMode::Hybrid, Protocol::Udp, snat),
            (LbMode::Snat, Protocol::Tcp, snat),
        ] {
            let mut d = state_of(proto, &endpoints);
            assert!(resolve(&mut d, &policy(mode, false), &mut Table).is_empty());
            let local = Reach::Direct;
            assert_eq!(
                reaches(&d),
                vec![remote, remote, local, local],
                "{mode:?} {proto:?}"
            );
        }
        let mut d = state_of(Protocol::Tcp, &endpoints);
        assert!(resolve(&mut d, &policy(LbMode::Dsr, true), &mut Table).is_empty());
        assert_eq!(reaches(&d), vec![snat, snat, snat, snat]);
    }

    #[test]
    fn a_change_forgets_only_the_answers_it_may_move() {
        let via = |oif| {
            Some(Route {
                gateway: None,
                source: None,
                local: false,
                oif: Some(oif),
            })
        };
        let mut known: Known = [
            ("198.18.5.7", via(3)),
            ("198.18.6.7", via(4)),
            ("2001:db8::1", None),
        ]
        .into_iter()
        .map(|(a, r)| (a.parse().unwrap(), r))
        .collect();
        let keys = |k: &Known| {
            let mut v: Vec<String> = k.keys().map(IpAddr::to_string).collect();
            v.sort();
            v
        };
        let prefix = RouteChange::Prefix {
            addr: "198.18.5.0".parse().unwrap(),
            len: 24,
        };
        forget(&mut known, &[prefix]);
        assert_eq!(keys(&known), ["198.18.6.7", "2001:db8::1"]);
        forget(&mut known, &[RouteChange::Link(3)]);
        assert_eq!(keys(&known), ["198.18.6.7"], "unreachable answers go too");
        forget(&mut known, &[RouteChange::Link(4)]);
        assert!(known.is_empty());
        known.insert("198.18.6.7".parse().unwrap(), via(4));
        forget(&mut known, &[RouteChange::All]);
        assert!(known.is_empty());
    }
}
