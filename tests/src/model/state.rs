//! The model's state: the maps a packet reads ([`Maps`]) and the ones it
//! writes ([`Flows`]), in the layout of `portmap_common::abi` so that they
//! compare directly with the real maps.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use portmap_common::abi::{
    AffinityKey, AffinityValue, Backend, CT_REQUEST, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
    CT_STATE_NEW, CtKey, CtValue, DatapathConfig, FAMILY_V4, FAMILY_V6, FrontendKey, FrontendValue,
    RawAddr,
};

/// What the programs read and never write, as userspace filled it.
#[derive(Clone, Debug)]
pub struct Maps {
    pub config: DatapathConfig,
    pub frontends: HashMap<FrontendKey, FrontendValue>,
    /// `FRONTEND_GEN`; an id not listed holds 0, which no frontend has.
    pub frontend_gen: HashMap<u32, u32>,
    /// `BACKENDS`; an id not listed is an unused (all-zero) slot.
    pub backends: HashMap<u32, Backend>,
    /// Maglev tables by their offset in the pool.
    pub tables: HashMap<u32, Vec<u32>>,
    pub node_addrs: BTreeSet<IpAddr>,
    /// Allowed source prefixes by service id.
    pub source_ranges: HashMap<u32, Vec<(IpAddr, u8)>>,
}

/// What packets change: conntrack and session affinity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flows {
    pub conntrack: HashMap<CtKey, CtValue>,
    pub affinity: HashMap<AffinityKey, AffinityValue>,
}

impl Flows {
    /// The same flows with every time stamp zeroed (the model cannot know
    /// the kernel's clock to the nanosecond, and need not).
    pub fn timeless(&self) -> Flows {
        Flows {
            conntrack: self
                .conntrack
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        CtValue {
                            last_seen_ns: 0,
                            ..*v
                        },
                    )
                })
                .collect(),
            affinity: self
                .affinity
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        AffinityValue {
                            last_used_ns: 0,
                            ..*v
                        },
                    )
                })
                .collect(),
        }
    }

    /// Takes the time stamps of `real` for the entries both have.
    pub fn sync_times(&mut self, real: &Flows) {
        for (k, v) in &mut self.conntrack {
            if let Some(r) = real.conntrack.get(k) {
                v.last_seen_ns = r.last_seen_ns;
            }
        }
        for (k, v) in &mut self.affinity {
            if let Some(r) = real.affinity.get(k) {
                v.last_used_ns = r.last_used_ns;
            }
        }
    }

    /// Time passes: every entry was last seen `ns` earlier.
    pub fn age(&mut self, ns: u64) {
        for v in self.conntrack.values_mut() {
            v.last_seen_ns = v.last_seen_ns.saturating_sub(ns);
        }
        for v in self.affinity.values_mut() {
            v.last_used_ns = v.last_used_ns.saturating_sub(ns);
        }
    }

    /// Ids of frontends and backends the entries refer to.
    pub fn referenced_ids(&self) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let mut frontends = BTreeSet::new();
        let mut backends = BTreeSet::new();
        for v in self.conntrack.values() {
            frontends.insert(v.frontend_id);
            backends.insert(v.backend_id);
        }
        for v in self.affinity.values() {
            backends.insert(v.backend_id);
        }
        (frontends, backends)
    }
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

/// The map layout of an address: the packet's bytes, IPv4 in word 0.
pub fn raw(ip: IpAddr) -> RawAddr {
    let mut words = [0u32; 4];
    match ip {
        IpAddr::V4(a) => words[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            for (w, c) in words.iter_mut().zip(a.octets().chunks(4)) {
                *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    RawAddr(words)
}

pub fn ip(addr: &RawAddr, family: u8) -> IpAddr {
    let bytes: Vec<u8> = addr.0.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).unwrap()))
    }
}

/// A port as the maps hold it (network byte order, read natively).
pub fn raw_port(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

pub fn port(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

fn endpoint(addr: &RawAddr, raw_p: u16, family: u8) -> String {
    let ip = ip(addr, family);
    if ip.is_ipv6() {
        format!("[{ip}]:{}", port(raw_p))
    } else {
        format!("{ip}:{}", port(raw_p))
    }
}

fn state_name(state: u8) -> String {
    match state {
        CT_STATE_NEW => "new".into(),
        CT_STATE_ESTABLISHED => "established".into(),
        CT_STATE_CLOSING => "closing".into(),
        other => format!("state {other}"),
    }
}

/// One conntrack entry on one line.
pub fn describe_ct(k: &CtKey, v: &CtValue) -> String {
    let dir = if k.direction == CT_REQUEST {
        "fwd"
    } else {
        "rep"
    };
    let proto = match k.proto {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        p => format!("proto{p}"),
    };
    format!(
        "{dir} {proto} {} -> {} => nat {} {} fe {}/g{} be {}/g{} seen {}",
        endpoint(&k.src, k.sport, k.family),
        endpoint(&k.dst, k.dport, k.family),
        endpoint(&v.nat_addr, v.nat_port, k.family),
        state_name(v.state),
        v.frontend_id,
        v.frontend_generation,
        v.backend_id,
        v.backend_generation,
        v.last_seen_ns,
    )
}

pub fn describe_affinity(k: &AffinityKey, v: &AffinityValue) -> String {
    format!(
        "affinity {} svc {} => be {}/g{} used {}",
        ip(&k.client, k.family),
        k.service_id,
        v.backend_id,
        v.backend_generation,
        v.last_used_ns
    )
}

/// The differences between two sets of flows, one line each (empty if none);
/// time stamps are left out.
pub fn diff_flows(model: &Flows, real: &Flows) -> String {
    let (m, r) = (model.timeless(), real.timeless());
    let mut lines = Vec::new();
    for (k, v) in &m.conntrack {
        match r.conntrack.get(k) {
            None => lines.push(format!("  only in model: {}", describe_ct(k, v))),
            Some(rv) if rv != v => {
                lines.push(format!("  model: {}", describe_ct(k, v)));
                lines.push(format!("  real:  {}", describe_ct(k, rv)));
            }
            Some(_) => {}
        }
    }
    for (k, v) in &r.conntrack {
        if !m.conntrack.contains_key(k) {
            lines.push(format!("  only in real:  {}", describe_ct(k, v)));
        }
    }
    for (k, v) in &m.affinity {
        match r.affinity.get(k) {
            None => lines.push(format!("  only in model: {}", describe_affinity(k, v))),
            Some(rv) if rv != v => {
                lines.push(format!("  model: {}", describe_affinity(k, v)));
                lines.push(format!("  real:  {}", describe_affinity(k, rv)));
            }
            Some(_) => {}
        }
    }
    for (k, v) in &r.affinity {
        if !m.affinity.contains_key(k) {
            lines.push(format!("  only in real:  {}", describe_affinity(k, v)));
        }
    }
    lines.sort();
    lines.join("\n")
}

/// Every flow, sorted, one per line.
pub fn describe_flows(flows: &Flows) -> String {
    let mut lines: Vec<String> = flows
        .conntrack
        .iter()
        .map(|(k, v)| format!("  {}", describe_ct(k, v)))
        .chain(
            flows
                .affinity
                .iter()
                .map(|(k, v)| format!("  {}", describe_affinity(k, v))),
        )
        .collect();
    lines.sort();
    if lines.is_empty() {
        "  (none)".into()
    } else {
        lines.join("\n")
    }
}

impl Maps {
    /// `BACKENDS[id]`: an id not listed is an unused (all-zero) slot.
    pub fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// The maps, readably (tables by size and backend counts only).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let mut fes: Vec<_> = self.frontends.iter().collect();
        fes.sort_by_key(|(k, v)| (v.frontend_id, k.port));
        for (k, v) in fes {
            let addr = if k.addr.is_unspecified() {
                if k.family == FAMILY_V4 {
                    "*".to_string()
                } else {
                    "[*]".to_string()
                }
            } else {
                endpoint(&k.addr, k.port, k.family)
                    .rsplit_once(':')
                    .unwrap()
                    .0
                    .to_string()
            };
            let mut ids: Vec<u32> = self
                .tables
                .get(&v.table_offset)
                .filter(|_| v.table_size > 0)
                .map(|t| {
                    t.iter()
                        .copied()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default();
            ids.sort_unstable();
            let _ = writeln!(
                s,
                "  frontend {addr}:{}/{} id {}/g{} (current g{}) svc {} flags {:#x} affinity {}s table {}@{} of backends {:?}",
                port(k.port),
                if k.proto == 6 { "tcp" } else { "udp" },
                v.frontend_id,
                v.generation,
                self.frontend_gen.get(&v.frontend_id).copied().unwrap_or(0),
                v.service_id,
                v.flags,
                v.affinity_timeout_s,
                v.table_size,
                v.table_offset,
                ids
            );
        }
        let mut bes: Vec<_> = self.backends.iter().collect();
        bes.sort_by_key(|(id, _)| **id);
        for (id, b) in bes {
            let _ = writeln!(
                s,
                "  backend {id}: {} state {} g{} svc {}",
                endpoint(&b.addr, b.port, b.family.max(FAMILY_V4)),
                b.state,
                b.generation,
                b.service_id
            );
        }
        let mut ranges: Vec<_> = self.source_ranges.iter().collect();
        ranges.sort_by_key(|(id, _)| **id);
        for (id, r) in ranges {
            let list: Vec<String> = r.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            let _ = writeln!(s, "  source ranges of svc {id}: {}", list.join(" "));
        }
        let nodes: Vec<String> = self.node_addrs.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "  node addresses: {}", nodes.join(" "));
        let c = &self.config;
        let _ = write!(
            s,
            "  timeouts: tcp new {}s established {}s closing {}s, udp {}s",
            c.tcp_new_timeout_ns as f64 / 1e9,
            c.tcp_established_timeout_ns as f64 / 1e9,
            c.tcp_closing_timeout_ns as f64 / 1e9,
            c.udp_timeout_ns as f64 / 1e9
        );
        s
    }
}
