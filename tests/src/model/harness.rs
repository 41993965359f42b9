//! Running the real programs and the model side by side.
//!
//! A [`Harness`] owns one loaded dataplane (reused for many cases: each case
//! applies its desired state and forgets every flow) and the model's copy of
//! its maps. Each packet goes through the real program (BPF_PROG_TEST_RUN)
//! and through the model; the verdict, the output bytes and every conntrack
//! and affinity entry afterwards (time stamps aside) must be equal. Any
//! difference is returned as a readable report: the packet in hex, both
//! outputs, the differing entries, the maps, and the case's steps so far.
//!
//! Time: the model is exact given the dataplane's clock, which it cannot
//! read. The clock is read before and after each run, and the model runs at
//! both ends; a result matching either is accepted (they differ only when a
//! timeout falls within the run). Afterwards the model takes the real time
//! stamps, so the next step starts from the same state.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    net::IpAddr,
    time::Duration,
};

use anyhow::Result;
use portmap_common::abi::{AffinityKey, CtKey, DatapathConfig, FrontendKey};
use portmap_userspace::{
    dataplane::{Dataplane, Limits},
    model::DesiredState,
};

use super::{
    desired::{TableCache, expected_maps, frontend_key},
    icmp, parse,
    probe::{Probe, coarse_now},
    program::{self, Outcome, XdpVerdict},
    state::{Flows, Maps, describe_flows, diff_flows, family, raw},
};
use crate::{packet::verify_checksums, testrun::Lab};

/// Counts over a harness's life, for the tests' summaries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub runs: u64,
    pub translated: u64,
    pub replies_translated: u64,
    /// Requests XDP left to tc ingress (checksum field = pseudo-header sum).
    pub deferred: u64,
    /// ICMP errors about a flow translated (either way; also counted in
    /// `translated` or `replies_translated`).
    pub icmp_translated: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub untouched: u64,
    pub checksums_verified: u64,
    /// Runs during which a timeout boundary passed, so that the model's
    /// answer depended on the exact clock.
    pub clock_dependent: u64,
    /// Desired states applied, and waits for ids or table room to cool down.
    pub applies: u64,
    pub apply_waits: u64,
    /// Time spent applying and reading back the maps.
    pub publish_ms: u64,
}

pub struct Harness {
    pub lab: Lab,
    probe: Probe,
    config: DatapathConfig,
    desired: Option<DesiredState>,
    node_addrs: BTreeSet<IpAddr>,
    pub maps: Maps,
    pub flows: Flows,
    log: Vec<String>,
    /// The real flows may differ from the model's (a case failed).
    dirty: bool,
    tables: TableCache,
    /// How often each kind of outcome came up (digits left out), to show
    /// what the generated cases reach.
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// The case consulted session affinity.
    affinity_used: bool,
    pub stats: Stats,
}

/// Map sizes for many cases in a row: ids and Maglev regions freed by one
/// case cool down for two seconds before another may take them. Conntrack is
/// small because a walk of a hash map visits every bucket.
pub const LIMITS: Limits = Limits {
    frontends: 16_384,
    backends: 16_384,
    conntrack: 4_096,
};

/// 16 bytes a line, with offsets.
pub fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "    (empty)".into();
    }
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let words: Vec<String> = c.chunks(2).map(to_hex).collect();
            format!("    {:04x}: {}", i * 16, words.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The lines of two byte strings that differ, side by side.
fn hex_diff(model: &[u8], real: &[u8]) -> String {
    let mut s = String::new();
    if model.len() != real.len() {
        let _ = writeln!(
            s,
            "    lengths differ: model {} real {}",
            model.len(),
            real.len()
        );
    }
    let lines = model.len().max(real.len()).div_ceil(16);
    for i in 0..lines {
        let m = model
            .get(i * 16..((i + 1) * 16).min(model.len()))
            .unwrap_or(&[]);
        let r = real
            .get(i * 16..((i + 1) * 16).min(real.len()))
            .unwrap_or(&[]);
        if m != r {
            let _ = writeln!(s, "    {:04x} model: {}", i * 16, to_hex(m));
            let _ = writeln!(s, "    {:04x} real:  {}", i * 16, to_hex(r));
        }
    }
    s
}

/// A desired state, one service a line.
pub fn describe_desired(d: &DesiredState) -> String {
    let mut s = String::new();
    for svc in &d.services {
        let fes: Vec<String> = svc.frontends.iter().map(|f| f.to_string()).collect();
        let eps: Vec<String> = svc
            .endpoints
            .iter()
            .map(|e| format!("{}({:?})", e.label(), e.state))
            .collect();
        let ranges: Vec<String> = svc.source_ranges.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(
            s,
            "  {}: {} -> [{}] affinity {:?} when-empty {:?} sources [{}]",
            svc.key,
            fes.join(" "),
            eps.join(" "),
            svc.affinity_timeout_s,
            svc.when_empty,
            ranges.join(" ")
        );
    }
    s
}

/// `verify_checksums` reads VLAN tags as 0x8100 only; the checksums do not
/// cover the Ethernet header, so an 802.1ad tag is shown to it as 802.1Q.
fn full_checksum_check(frame: &[u8]) -> Result<(), String> {
    let mut copy = frame.to_vec();
    if copy.len() >= 14 && copy[12..14] == [0x88, 0xa8] {
        copy[12..14].copy_from_slice(&[0x81, 0x00]);
    }
    verify_checksums(&copy)
}

/// Whether BPF_PROG_TEST_RUN refuses `frame`: shorter than an Ethernet
/// header, or (for tc, whose test run builds an skb) an untagged IPv4 or
/// IPv6 frame shorter than the fixed IP header.
pub fn kernel_refuses(ingress: bool, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return true;
    }
    !ingress
        && match [frame[12], frame[13]] {
            [0x08, 0x00] => frame.len() < 14 + 20,
            [0x86, 0xdd] => frame.len() < 14 + 40,
            _ => false,
        }
}

impl Harness {
    /// Loads the programs with conntrack timeouts from `config`.
    pub fn new(config: DatapathConfig) -> Result<Self> {
        crate::require_root();
        let dp = Dataplane::load(LIMITS, config)?;
        let probe = Probe::open(&dp)?;
        let maps = Maps {
            config,
            frontends: HashMap::new(),
            frontend_gen: HashMap::new(),
            backends: HashMap::new(),
            tables: HashMap::new(),
            node_addrs: BTreeSet::new(),
            source_ranges: HashMap::new(),
        };
        Ok(Harness {
            lab: Lab { dp },
            probe,
            config,
            desired: None,
            node_addrs: BTreeSet::new(),
            maps,
            flows: Flows::default(),
            log: Vec::new(),
            dirty: false,
            affinity_used: false,
            tables: TableCache::default(),
            reasons: Default::default(),
            stats: Stats::default(),
        })
    }

    fn publish(
        &mut self,
        desired: &DesiredState,
        node_addrs: &BTreeSet<IpAddr>,
    ) -> Result<(), String> {
        if self.desired.as_ref() == Some(desired) && self.node_addrs == *node_addrs {
            return Ok(());
        }
        // The frontends to read back: the desired ones, and the previous
        // state's, which must be gone unless still desired.
        let keys: Vec<FrontendKey> = [Some(desired), self.desired.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|d| d.services.iter().flat_map(|s| &s.frontends))
            .map(frontend_key)
            .collect();
        let started = std::time::Instant::now();
        self.stats.applies += 1;
        let dp = &mut self.lab.dp;
        dp.set_node_addrs(node_addrs)
            .map_err(|e| format!("set_node_addrs: {e:#}"))?;
        let mut tries = 0;
        loop {
            match dp.apply(desired) {
                Ok(report) if report.is_complete() => break,
                // Ids and table regions of earlier cases may still be cooling
                // down; they are free again after the grace period.
                Ok(_) if tries < 3 => {
                    tries += 1;
                    self.stats.apply_waits += 1;
                    std::thread::sleep(Duration::from_millis(2100));
                }
                Ok(report) => {
                    return Err(format!(
                        "apply failed: {:?}\ndesired state:\n{}",
                        report.failed,
                        describe_desired(desired)
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "apply refused: {e:#}\ndesired state:\n{}",
                        describe_desired(desired)
                    ));
                }
            }
        }
        self.stats.publish_ms += started.elapsed().as_millis() as u64;
        self.desired = Some(desired.clone());
        self.node_addrs.clone_from(node_addrs);
        let alloc = self
            .probe
            .allocation(&keys, &self.flows)
            .map_err(|e| format!("reading the maps: {e:#}"))?;
        self.maps = expected_maps(desired, node_addrs, self.config, &alloc, &mut self.tables)
            .map_err(|e| {
                format!(
                    "USERSPACE MISMATCH: {e}\ndesired state:\n{}",
                    describe_desired(desired)
                )
            })?;
        Ok(())
    }

    /// Starts a case: publishes `desired` on a node with `node_addrs` (if it
    /// is not what is published already) and forgets every flow.
    pub fn start(
        &mut self,
        desired: &DesiredState,
        node_addrs: &BTreeSet<IpAddr>,
    ) -> Result<(), String> {
        self.log.clear();
        if self.dirty || !self.flows.conntrack.is_empty() || !self.flows.affinity.is_empty() {
            self.lab
                .dp
                .clear_flows()
                .map_err(|e| format!("clear_flows: {e:#}"))?;
        }
        self.flows = Flows::default();
        self.dirty = false;
        self.affinity_used = false;
        self.publish(desired, node_addrs)
    }

    /// Publishes another state in the middle of a case; flows stay.
    pub fn reapply(
        &mut self,
        desired: &DesiredState,
        node_addrs: &BTreeSet<IpAddr>,
        label: &str,
    ) -> Result<(), String> {
        self.log.push(format!("reapply: {label}"));
        self.publish(desired, node_addrs)
    }

    /// Every flow was idle `ns` longer than it was.
    /// Deletes one conntrack entry from the real map and the model, as the
    /// LRU does under pressure (possibly one half of a live flow).
    pub fn evict(&mut self, key: &CtKey) -> Result<(), String> {
        self.log.push(format!("evict {key:?}"));
        self.probe
            .evict(key)
            .map_err(|e| format!("evicting from the real map: {e:#}"))?;
        self.flows.conntrack.remove(key);
        Ok(())
    }

    pub fn elapse(&mut self, ns: u64) -> Result<(), String> {
        self.log.push(format!("elapse {:.3}s", ns as f64 / 1e9));
        self.probe
            .age(ns)
            .map_err(|e| format!("aging the real maps: {e:#}"))?;
        self.flows.age(ns);
        Ok(())
    }

    /// The real flows: all of conntrack, and the affinity entries in `keys`
    /// (the only ones a packet can have changed).
    fn real_flows(&self, keys: &HashSet<AffinityKey>) -> Result<Flows, String> {
        let conntrack = self
            .lab
            .dp
            .conntrack_entries()
            .map_err(|e| format!("conntrack_entries: {e:#}"))?
            .into_iter()
            .collect();
        let mut affinity = HashMap::new();
        for k in keys {
            if let Some(v) = self
                .probe
                .affinity_entry(k)
                .map_err(|e| format!("reading AFFINITY: {e:#}"))?
            {
                affinity.insert(*k, v);
            }
        }
        Ok(Flows {
            conntrack,
            affinity,
        })
    }

    /// The affinity entries a packet of `frame` may have touched: those the
    /// model holds before or after, and the sender's for the service whose
    /// affinity the model consulted (the dataplane consults it only for the
    /// same frontend, or the outcomes differ anyway).
    fn affinity_keys(&self, frame: &[u8], candidates: &[(Outcome, Flows)]) -> HashSet<AffinityKey> {
        let mut keys: HashSet<AffinityKey> = candidates
            .iter()
            .map(|(_, f)| f)
            .chain([&self.flows])
            .flat_map(|f| f.affinity.keys().copied())
            .collect();
        if let Ok(flow) = parse::parse(frame) {
            for service_id in candidates.iter().filter_map(|(o, _)| o.affinity_of) {
                keys.insert(AffinityKey {
                    client: raw(flow.src),
                    service_id,
                    family: family(flow.src),
                    _pad: [0; 3],
                });
            }
        }
        keys
    }

    /// Ends a case: the whole `AFFINITY` map must be what the model holds
    /// (each step looked only at the entries its packet may have touched).
    pub fn finish(&mut self) -> Result<(), String> {
        if !self.affinity_used {
            // Nothing consulted affinity: nothing can have changed it.
            return Ok(());
        }
        let real = self
            .probe
            .affinity()
            .map_err(|e| format!("reading AFFINITY: {e:#}"))?;
        let real = Flows {
            conntrack: self.flows.conntrack.clone(),
            affinity: real,
        };
        let diff = diff_flows(&self.flows, &real);
        if !diff.is_empty() {
            self.dirty = true;
            return Err(format!(
                "MISMATCH in AFFINITY at the end of the case:\n{diff}\nsteps:\n  {}",
                self.log.join("\n  ")
            ));
        }
        Ok(())
    }

    /// Runs the XDP ingress program on `frame`, and the model; returns the
    /// model's outcome if both agree.
    pub fn xdp(&mut self, label: &str, frame: &[u8]) -> Result<Outcome, String> {
        self.run(true, label, frame)
    }

    /// Runs the tc egress program on `frame`, and the model.
    pub fn tc(&mut self, label: &str, frame: &[u8]) -> Result<Outcome, String> {
        self.run(false, label, frame)
    }

    fn run(&mut self, ingress: bool, label: &str, frame: &[u8]) -> Result<Outcome, String> {
        let program = if ingress { "xdp" } else { "tc" };
        let model_at = |flows: &Flows, now: u64| {
            let mut flows = flows.clone();
            let out = if ingress {
                program::xdp(&self.maps, &mut flows, frame, now)
            } else {
                program::tc(&self.maps, &mut flows, frame, now)
            };
            (out, flows)
        };
        self.stats.runs += 1;
        if kernel_refuses(ingress, frame) {
            // BPF_PROG_TEST_RUN refuses these frames; all are too short to
            // be flows, and the model must leave them alone.
            let (out, flows) = model_at(&self.flows, coarse_now());
            if out.bytes != frame || out.verdict != XdpVerdict::Pass || flows != self.flows {
                return Err(format!(
                    "the model touches a {}-byte frame: {out:?}",
                    frame.len()
                ));
            }
            self.stats.untouched += 1;
            self.log.push(format!(
                "{program} {label}: {}-byte frame, refused by the kernel's test run",
                frame.len()
            ));
            return Ok(out);
        }
        self.dirty = true;
        let lo = coarse_now();
        let real = if ingress {
            self.lab.xdp(frame).map(|(a, out)| (a as i64, out))
        } else {
            self.lab.tc(frame).map(|(a, out)| (i64::from(a), out))
        };
        let hi = coarse_now();
        let (action, real_bytes) = real.map_err(|e| format!("{program} test run failed: {e:#}"))?;
        let candidates: Vec<(Outcome, Flows)> = if lo == hi {
            vec![model_at(&self.flows, lo)]
        } else {
            vec![model_at(&self.flows, lo), model_at(&self.flows, hi)]
        };
        let keys = self.affinity_keys(frame, &candidates);
        if !keys.is_empty() {
            self.affinity_used = true;
        }
        let real_flows = self.real_flows(&keys)?;
        let expected_action = |out: &Outcome| -> i64 {
            if ingress {
                i64::from(out.verdict.action())
            } else {
                -1 // TC_ACT_UNSPEC: always on to the next program
            }
        };
        if candidates.len() == 2
            && (candidates[0].0 != candidates[1].0
                || candidates[0].1.timeless() != candidates[1].1.timeless())
        {
            self.stats.clock_dependent += 1;
        }
        let real_timeless = real_flows.timeless();
        let matching = candidates.iter().position(|(out, flows)| {
            expected_action(out) == action
                && out.bytes == real_bytes
                && flows.timeless() == real_timeless
        });
        let Some(i) = matching else {
            let (out, flows) = &candidates[0];
            let mut r = String::new();
            let _ = writeln!(
                r,
                "MISMATCH in {program} at step {} ({label})",
                self.log.len() + 1
            );
            let _ = writeln!(r, "input, {} bytes:\n{}", frame.len(), hex(frame));
            let _ = writeln!(r, "model's parse: {:?}", parse::parse(frame));
            let _ = writeln!(
                r,
                "model: action {} ({:?}), {}; real: action {action}",
                expected_action(out),
                out.verdict,
                out.why
            );
            if out.bytes != real_bytes {
                let _ = writeln!(
                    r,
                    "output bytes differ:\n{}",
                    hex_diff(&out.bytes, &real_bytes)
                );
                let _ = writeln!(r, "model output:\n{}", hex(&out.bytes));
                let _ = writeln!(r, "real output:\n{}", hex(&real_bytes));
            } else {
                let _ = writeln!(
                    r,
                    "output bytes equal ({})",
                    if out.bytes == frame {
                        "untouched"
                    } else {
                        "changed"
                    }
                );
            }
            let diff = diff_flows(flows, &real_flows);
            if !diff.is_empty() {
                let _ = writeln!(r, "flows afterwards differ:\n{diff}");
            }
            let _ = writeln!(r, "flows before:\n{}", describe_flows(&self.flows));
            let _ = writeln!(r, "maps:\n{}", self.maps.describe());
            if let Some(d) = &self.desired {
                let _ = writeln!(r, "desired state:\n{}", describe_desired(d));
            }
            let _ = writeln!(r, "steps before:\n  {}", self.log.join("\n  "));
            return Err(r);
        };
        let (out, mut flows) = candidates.into_iter().nth(i).unwrap();
        flows.sync_times(&real_flows);
        self.flows = flows;
        self.dirty = false;
        if out.translated {
            if ingress {
                self.stats.translated += 1;
            } else {
                self.stats.replies_translated += 1;
            }
            if icmp::checksums_ok(frame).is_some() {
                self.stats.icmp_translated += 1;
            }
            if out.deferred.is_some() {
                // The frame is untouched; tc ingress writes the translation.
                self.stats.deferred += 1;
            } else if let Some(true) = icmp::checksums_ok(frame) {
                if icmp::checksums_ok(&out.bytes) != Some(true) {
                    return Err(format!(
                        "CHECKSUM after {program} ({label}): the translated ICMP error's checksums are wrong; the input's were right\ninput:\n{}\noutput:\n{}",
                        hex(frame),
                        hex(&out.bytes)
                    ));
                }
                self.stats.checksums_verified += 1;
            } else if full_checksum_check(frame).is_ok() {
                full_checksum_check(&out.bytes).map_err(|e| {
                    format!(
                        "CHECKSUM after {program} ({label}): {e}; the input's were right\ninput:\n{}\noutput:\n{}",
                        hex(frame),
                        hex(&out.bytes)
                    )
                })?;
                self.stats.checksums_verified += 1;
            }
        } else {
            match out.verdict {
                XdpVerdict::Redirect => self.stats.rejected += 1,
                XdpVerdict::Drop => self.stats.dropped += 1,
                XdpVerdict::Pass => self.stats.untouched += 1,
            }
        }
        let reason: String = out
            .why
            .split(|c: char| c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("N");
        *self
            .reasons
            .entry(format!("{program} {:?}: {reason}", out.verdict))
            .or_default() += 1;
        self.log
            .push(format!("{program} {label}: {:?} {}", out.verdict, out.why));
        Ok(out)
    }
}
