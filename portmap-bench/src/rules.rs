//! The Services every mode is programmed with, written the way each one takes
//! them: Kubernetes manifests for portmap, kube-proxy's iptables-mode and
//! nftables-mode rulesets for the kernel.
//!
//! (kube-proxy's nftables layouts are in `nftrules`.)
//!
//! Service `i` has the VIP `198.19.64.0 + i` (198.19.64.0/18) and a TCP port
//! 80 with 10 endpoints on port 8080 at addresses that do not exist
//! (198.19.128.0/17). The last Service is the target: it also has a UDP port
//! 80, and its endpoints are the real backends. In the iptables layout its
//! rule is the last one of KUBE-SERVICES, the worst case of a linear chain.
//!
//! In the cells, one more Service comes first: the bulk Service (TCP port 80,
//! one endpoint, backend 0), for iperf3, whose control and data connections
//! must all reach the same server.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{Result, bail};

use super::topo::{self, BACKEND_PORT};

/// Endpoints per Service, except the target's.
pub const ENDPOINTS: usize = 10;
/// Most Services the VIP range holds.
pub const MAX_SERVICES: u32 = 16_384;
pub const SERVICE_PORT: u16 = 80;
pub const NAMESPACE: &str = "bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub(crate) fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub vip: Ipv4Addr,
    pub protos: Vec<Proto>,
    pub endpoints: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug)]
pub struct Services {
    pub list: Vec<Svc>,
    /// The bulk Service, before the others in rule order.
    pub bulk: Option<Svc>,
}

pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 64, 0)) + i)
}

fn fake_endpoint(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 128, 0)) + (j % 32_768) as u32)
}

/// The bulk Service's VIP, outside the generated VIPs (198.19.64.0/18) so
/// that every count up to [`MAX_SERVICES`] keeps them all.
pub const BULK_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 63, 80);

/// An endpoint address no generated Service uses, for the "one Service
/// changed" measurements.
pub const REPLACEMENT_ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 19, 127, 254);

impl Services {
    pub fn new(count: u32) -> Result<Self> {
        if count == 0 || count > MAX_SERVICES {
            bail!("--services: {count} is out of range (1-{MAX_SERVICES})");
        }
        let list = (0..count)
            .map(|i| {
                let target = i + 1 == count;
                Svc {
                    name: format!("svc-{i:05}"),
                    vip: vip(i),
                    protos: if target {
                        vec![Proto::Tcp, Proto::Udp]
                    } else {
                        vec![Proto::Tcp]
                    },
                    endpoints: if target {
                        (0..topo::BACKENDS).map(topo::backend_ip).collect()
                    } else {
                        (0..ENDPOINTS)
                            .map(|e| fake_endpoint(i as usize * ENDPOINTS + e))
                            .collect()
                    },
                }
            })
            .collect();
        Ok(Self { list, bulk: None })
    }

    /// The same Services with the bulk Service added.
    pub fn with_bulk(mut self) -> Self {
        self.bulk = Some(Svc {
            name: "svc-bulk".into(),
            vip: BULK_VIP,
            protos: vec![Proto::Tcp],
            endpoints: vec![topo::backend_ip(0)],
        });
        self
    }

    /// Every Service in rule order: the bulk Service (if any) first, the
    /// target last.
    pub fn all(&self) -> impl Iterator<Item = &Svc> {
        self.bulk.iter().chain(&self.list)
    }

    /// Where iperf3 connects: the bulk Service, if there is one.
    pub fn bulk_addr(&self) -> Option<SocketAddrV4> {
        self.bulk
            .as_ref()
            .map(|b| SocketAddrV4::new(b.vip, SERVICE_PORT))
    }

    pub fn target(&self) -> &Svc {
        // `new` makes at least one.
        &self.list[self.list.len() - 1]
    }

    pub fn target_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.target().vip, SERVICE_PORT)
    }

    /// The same Services with the first endpoint of the first one replaced,
    /// as a rolling update does.
    pub fn with_one_changed(&self) -> Self {
        let mut changed = self.clone();
        if let Some(ep) = changed
            .list
            .first_mut()
            .and_then(|s| s.endpoints.first_mut())
        {
            *ep = REPLACEMENT_ENDPOINT;
        }
        changed
    }

    /// Kubernetes manifests: a Service with an explicit ClusterIP and one
    /// EndpointSlice of ready endpoints per Service.
    pub fn manifests(&self) -> String {
        let mut y = String::with_capacity(self.list.len() * 700);
        for s in self.all() {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
                 spec:\n  type: ClusterIP\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports:\n",
                name = s.name,
                vip = s.vip,
            );
            for p in &s.protos {
                let _ = writeln!(
                    y,
                    "  - {{name: {}, port: {SERVICE_PORT}, protocol: {}, targetPort: {BACKEND_PORT}}}",
                    p.lower(),
                    p.upper()
                );
            }
            let _ = write!(
                y,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-0\n  \
                 namespace: {NAMESPACE}\n  labels:\n    kubernetes.io/service-name: {name}\n\
                 addressType: IPv4\nports:\n",
                name = s.name
            );
            for p in &s.protos {
                let _ = writeln!(
                    y,
                    "- {{name: {}, port: {BACKEND_PORT}, protocol: {}}}",
                    p.lower(),
                    p.upper()
                );
            }
            y.push_str("endpoints:\n");
            for ep in &s.endpoints {
                let _ = writeln!(
                    y,
                    "- addresses: [{ep}]\n  conditions: {{ready: true, serving: true, terminating: false}}"
                );
            }
        }
        y
    }
}

/// FNV-1a, 64 bits: stands in for the SHA-256 that kube-proxy hashes chain
/// names with (the names only need to be unique and of the same length).
pub(crate) fn hash16(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

fn port_name(s: &Svc, p: Proto) -> String {
    format!("{NAMESPACE}/{}:{}", s.name, p.lower())
}

fn svc_chain(s: &Svc, p: Proto) -> String {
    format!("KUBE-SVC-{}", hash16(&(port_name(s, p) + p.lower())))
}

fn sep_chain(s: &Svc, p: Proto, ep: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{}{}{ep}:{BACKEND_PORT}",
            port_name(s, p),
            p.lower()
        ))
    )
}

/// Whether a layout masquerades, as kube-proxy does when it knows the
/// cluster's pod range (`--cluster-cidr`, detect-local-mode ClusterCIDR):
/// traffic to a ClusterIP from outside that range is marked (the
/// KUBE-MARK-MASQ mark, 0x4000), and so is an endpoint reaching itself
/// through its Service (hairpin); marked traffic leaves through
/// `MASQUERADE --random-fully` in KUBE-POSTROUTING (nftables mode:
/// `mark-for-masquerade`, and `masquerade fully-random` in the
/// `masquerading` chain of a `srcnat` postrouting hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masq {
    No,
    Yes,
}

/// The cluster's pod range in the masquerading layouts: the backends
/// (198.19.i.2) are in it, the client (198.18.0.0/16) is not.
pub const CLUSTER_CIDR: &str = "198.19.0.0/16";
/// kube-proxy's default `--iptables-masquerade-bit` 14.
pub(crate) const MASQ_MARK: &str = "0x4000";

/// kube-proxy's iptables-mode nat table, as one `iptables-restore` input.
/// `deleted` lists chains to declare and delete (`-X`), as a sync that
/// removed endpoints does.
pub fn iptables(services: &Services, deleted: &[String]) -> String {
    iptables_layout(services, deleted, Masq::No)
}

/// The same with masquerading ([`Masq`]).
pub fn iptables_masq(services: &Services) -> String {
    iptables_layout(services, &[], Masq::Yes)
}

fn iptables_layout(services: &Services, deleted: &[String], masq: Masq) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    if masq == Masq::Yes {
        chains.push_str(":KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
        let _ = write!(
            rules,
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n\
             -A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
             -j MASQUERADE --random-fully\n"
        );
    }
    let mut portals = String::new();
    for s in services.all() {
        for &p in &s.protos {
            service_chains(s, p, masq, &mut chains, &mut rules);
            portal(s, p, &mut portals);
        }
    }
    for c in deleted {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    rules.push_str(&portals);
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" \
         -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for c in deleted {
        let _ = writeln!(rules, "-X {c}");
    }
    chains + &rules + "COMMIT\n"
}

fn service_chains(s: &Svc, p: Proto, masq: Masq, chains: &mut String, rules: &mut String) {
    let svc = svc_chain(s, p);
    let _ = writeln!(chains, ":{svc} - [0:0]");
    if masq == Masq::Yes {
        let _ = writeln!(
            rules,
            "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -p {proto} -m comment --comment \"{} cluster IP\" \
             -m {proto} --dport {SERVICE_PORT} -j KUBE-MARK-MASQ",
            s.vip,
            port_name(s, p),
            proto = p.lower()
        );
    }
    let n = s.endpoints.len();
    for (e, ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, p, *ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let comment = format!("{} -> {ep}:{BACKEND_PORT}", port_name(s, p));
        if e + 1 < n {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{comment}\" -m statistic --mode random \
                 --probability {:.10} -j {sep}",
                1.0 / (n - e) as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{comment}\" -j {sep}"
            );
        }
        if masq == Masq::Yes {
            let _ = writeln!(
                rules,
                "-A {sep} -s {ep}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                port_name(s, p)
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment \"{}\" -p {proto} -m {proto} -j DNAT --to-destination {ep}:{BACKEND_PORT}",
            port_name(s, p),
            proto = p.lower()
        );
    }
}

fn portal(s: &Svc, p: Proto, out: &mut String) {
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"{} cluster IP\" -m {proto} \
         --dport {SERVICE_PORT} -j {}",
        s.vip,
        port_name(s, p),
        svc_chain(s, p),
        proto = p.lower()
    );
}

/// The iptables change of one endpoint of the first Service.
pub struct IptablesChange {
    /// A full resync (`iptables-restore --noflush` of everything), what
    /// kube-proxy does at every sync before 1.27 and at startup since.
    pub full: String,
    /// What kube-proxy ≥ 1.27 writes (MinimizeIPTablesRestore): the
    /// KUBE-SERVICES chain, the changed Service's chains, and the deletion.
    pub partial: String,
}

pub fn iptables_change(before: &Services) -> IptablesChange {
    let after = before.with_one_changed();
    let (old, new) = (&before.list[0], &after.list[0]);
    let deleted: Vec<String> = old
        .protos
        .iter()
        .map(|&p| sep_chain(old, p, old.endpoints[0]))
        .collect();
    let full = iptables(&after, &deleted);
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    let mut rules = String::new();
    for &p in &new.protos {
        service_chains(new, p, Masq::No, &mut chains, &mut rules);
    }
    for c in &deleted {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    for s in after.all() {
        for &p in &s.protos {
            portal(s, p, &mut rules);
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" \
         -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for c in &deleted {
        let _ = writeln!(rules, "-X {c}");
    }
    IptablesChange {
        full,
        partial: chains + &rules + "COMMIT\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_last_and_real() {
        let s = Services::new(3).unwrap();
        assert_eq!(s.target().vip, Ipv4Addr::new(198, 19, 64, 2));
        assert_eq!(s.target().endpoints.len(), topo::BACKENDS);
        assert_eq!(s.list[0].endpoints.len(), ENDPOINTS);
        assert!(Services::new(0).is_err());
        assert!(Services::new(MAX_SERVICES + 1).is_err());
        assert_eq!(vip(300), Ipv4Addr::new(198, 19, 65, 44));
    }

    #[test]
    fn iptables_layout() {
        let s = Services::new(2).unwrap();
        let text = iptables(&s, &[]);
        let portals: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES -d"))
            .collect();
        assert_eq!(portals.len(), 3, "svc 0 tcp, target tcp and udp");
        assert!(
            portals[2].contains("198.19.64.1/32 -p udp"),
            "{}",
            portals[2]
        );
        assert!(text.contains("--probability 0.1000000000"));
        assert!(text.contains("-j DNAT --to-destination 198.19.0.2:8080"));
        assert!(text.trim_end().ends_with("COMMIT"));
        let change = iptables_change(&s);
        assert!(change.full.contains(&REPLACEMENT_ENDPOINT.to_string()));
        assert_eq!(change.full.matches("\n-X KUBE-SEP-").count(), 1);
        assert!(change.partial.contains("-X KUBE-SEP-"));
        assert!(
            !change.partial.contains("198.19.0.2:8080"),
            "target untouched"
        );
    }

    #[test]
    fn masquerading_layouts_mark_and_masquerade() {
        let s = Services::new(2).unwrap().with_bulk();
        let plain = iptables(&s, &[]);
        assert!(!plain.contains("KUBE-MARK-MASQ"));
        let text = iptables_masq(&s);
        assert!(text.contains(
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
        ));
        assert!(text.contains("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"));
        assert!(text.contains("-j MASQUERADE --random-fully"));
        assert!(text.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"));
        // One mark rule per Service port, before its endpoints' jumps; one
        // hairpin rule per endpoint, before its DNAT.
        let svc_marks = text
            .lines()
            .filter(|l| l.contains("! -s 198.19.0.0/16 -d ") && l.ends_with("-j KUBE-MARK-MASQ"))
            .count();
        assert_eq!(svc_marks, 4, "bulk, svc 0, target tcp and udp");
        let target_sep = text
            .lines()
            .position(|l| l.contains("-s 198.19.0.2/32") && l.contains("KUBE-MARK-MASQ"))
            .expect("a hairpin rule for backend 0");
        assert!(
            text.lines()
                .nth(target_sep + 1)
                .is_some_and(|l| l.contains("DNAT --to-destination 198.19.0.2:8080")),
            "the hairpin mark comes right before the DNAT"
        );
    }

    #[test]
    fn the_bulk_service_comes_first_with_one_endpoint() {
        let s = Services::new(2).unwrap().with_bulk();
        assert_eq!(
            s.bulk_addr(),
            Some(SocketAddrV4::new(BULK_VIP, SERVICE_PORT))
        );
        let text = iptables(&s, &[]);
        let portals: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES -d"))
            .collect();
        assert_eq!(portals.len(), 4);
        assert!(portals[0].contains("198.19.63.80/32 -p tcp"));
        assert!(portals[3].contains("198.19.64.1/32 -p udp"), "target last");
        assert!(
            iptables_change(&s)
                .partial
                .contains("-d 198.19.63.80/32 -p tcp")
        );
        let y = s.manifests();
        assert_eq!(y.matches("kind: Service\n").count(), 3);
        assert!(y.contains("clusterIP: 198.19.63.80"));
        assert!(Services::new(2).unwrap().bulk_addr().is_none());
    }

    #[test]
    fn manifests_name_every_service() {
        let y = Services::new(2).unwrap().manifests();
        assert_eq!(y.matches("kind: Service\n").count(), 2);
        assert_eq!(y.matches("kind: EndpointSlice\n").count(), 2);
        assert!(y.contains("kubernetes.io/service-name: svc-00001"));
        assert!(y.contains("protocol: UDP"));
    }
}
