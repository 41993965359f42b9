//! The project's performance targets, judged from the measured medians.

use super::{
    missed,
    modes::Mode,
    report::{fmt_pps, fmt_us},
    results::{Results, Stat},
};

pub const BIG: u32 = 10_000;
pub const SMALL: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    Missed,
    NotMeasured,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Missed => "**MISSED**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

pub struct Target {
    pub what: String,
    pub measured: String,
    pub verdict: Verdict,
    /// For a missed target: by how much, and why, from this run's figures
    /// (see `missed`).
    pub why: Option<String>,
}

impl Target {
    /// Says why, if the target is missed and `why` has something to say;
    /// a reason given before stays otherwise.
    fn explained(mut self, why: impl FnOnce() -> Option<String>) -> Target {
        if self.verdict == Verdict::Missed
            && let Some(why) = why()
        {
            self.why = Some(why);
        }
        self
    }
}

fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// A target, from its measured text and whether it holds, if measured.
fn judged(what: &str, measured: Option<(String, bool)>, missing: String) -> Target {
    let (measured, verdict) = match measured {
        Some((text, true)) => (text, Verdict::Holds),
        Some((text, false)) => (text, Verdict::Missed),
        None => (missing, Verdict::NotMeasured),
    };
    Target {
        what: what.into(),
        measured,
        verdict,
        why: None,
    }
}

fn at_least(what: &str, r: Option<f64>, min: f64, missing: &str) -> Target {
    let measured = r.map(|r| (format!("{r:.2}×"), r >= min));
    judged(what, measured, missing.into())
        .explained(|| r.map(|r| format!("{}.", missed::short_by(r, min))))
}

fn flat(
    what: &str,
    small: Option<Stat>,
    big: Option<Stat>,
    missing: &str,
    fmt: impl Fn(Option<Stat>) -> String,
) -> Target {
    let measured = ratio(big, small).map(|r| {
        let text = format!("{:+.1} % from {SMALL} to {BIG} Services", (r - 1.0) * 100.0);
        (text, (0.9..=1.1).contains(&r))
    });
    judged(what, measured, missing.into()).explained(|| {
        let (small, big) = (small?, big?);
        missed::flatness(small, big, |s| fmt(Some(s)))
    })
}

fn below(what: &str, v: Option<Stat>, limit_s: f64, fmt: impl Fn(f64) -> String) -> Target {
    let measured = v.map(|s| (fmt(s.median), s.median < limit_s));
    judged(what, measured, format!("needs --services including {BIG}"))
        .explained(|| v.map(|s| missed::over_limit(s.median, limit_s)))
}

pub fn evaluate(r: &Results, fmt_secs: impl Fn(f64) -> String + Copy) -> Vec<Target> {
    let need = |modes: &[Mode], counts: &[u32]| -> String {
        let modes: Vec<&str> = modes.iter().map(|m| m.name()).collect();
        let counts: Vec<String> = counts.iter().map(u32::to_string).collect();
        format!(
            "needs --modes {} and --services {}",
            modes.join(","),
            counts.join(",")
        )
    };
    let pm = Mode::Portmap;
    let mut out = vec![
        at_least(
            "New-flow throughput at 10,000 Services ≥ 10× iptables",
            ratio(r.new_flows(pm, BIG), r.new_flows(Mode::Iptables, BIG)),
            10.0,
            &need(&[pm, Mode::Iptables], &[BIG]),
        ),
        at_least(
            "New-flow throughput at 1 Service ≥ 3× iptables",
            ratio(r.new_flows(pm, SMALL), r.new_flows(Mode::Iptables, SMALL)),
            3.0,
            &need(&[pm, Mode::Iptables], &[SMALL]),
        )
        .explained(|| missed::new_flows(r, Mode::Iptables, 3.0)),
        at_least(
            "New-flow throughput at 1 Service ≥ 3× nftables",
            ratio(r.new_flows(pm, SMALL), r.new_flows(Mode::Nftables, SMALL)),
            3.0,
            &need(&[pm, Mode::Nftables], &[SMALL]),
        )
        .explained(|| missed::new_flows(r, Mode::Nftables, 3.0)),
    ];
    // Established flows against plain forwarding, at every Service count: the
    // worst ratio decides.
    let worst = r
        .service_counts()
        .into_iter()
        .filter_map(|s| {
            ratio(r.established(pm, s), r.established(Mode::Forward, s)).map(|x| (s, x))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    out.push(match worst {
        Some((s, x)) => Target {
            what: "Established-flow throughput ≥ 2× forward (every Service count)".into(),
            measured: format!("{x:.2}× (the lowest, at S = {s})"),
            verdict: if x >= 2.0 {
                Verdict::Holds
            } else {
                Verdict::Missed
            },
            why: None,
        }
        .explained(|| missed::established(r, s, 2.0)),
        None => Target {
            what: "Established-flow throughput ≥ 2× forward".into(),
            measured: need(&[pm, Mode::Forward], &[]),
            verdict: Verdict::NotMeasured,
            why: None,
        },
    });
    let both = need(&[pm], &[SMALL, BIG]);
    out.push(flat(
        "portmap established-flow throughput flat within ±10 % (1 → 10,000 Services)",
        r.established(pm, SMALL),
        r.established(pm, BIG),
        &both,
        fmt_pps,
    ));
    out.push(flat(
        "portmap new-flow throughput flat within ±10 % (1 → 10,000 Services)",
        r.new_flows(pm, SMALL),
        r.new_flows(pm, BIG),
        &both,
        fmt_pps,
    ));
    out.push(flat(
        "portmap first-packet latency (p50) flat within ±10 % (1 → 10,000 Services)",
        r.p50(pm, SMALL),
        r.p50(pm, BIG),
        &both,
        fmt_us,
    ));
    out.push(bulk_target(
        r,
        "TCP bulk throughput ≥ iptables (1 and 8 streams, every Service count)",
        Mode::Iptables,
        1.0,
    ));
    out.push(bulk_target(
        r,
        "TCP bulk throughput within 10 % of forward (≥ 0.90×; 1 and 8 streams, every Service count)",
        Mode::Forward,
        0.9,
    ));
    let pass = Stat::of(r.xdp_cost.iter().map(|c| c.pass_ns));
    // The target is stated for IPv4 TCP; results of runs that predate the
    // TCP case have the UDP hit alone.
    let tcp_hit = r.xdp_cost_stat(|c| c.tcp_hit_ns);
    let (hit, case) = match tcp_hit {
        Some(h) => (Some(h), "TCP ACK"),
        None => (Stat::of(r.xdp_cost.iter().map(|c| c.hit_ns)), "UDP"),
    };
    // The program's own cost, without the harness's: what a change of the
    // dataplane moves, where the ratio also moves with the machine.
    let clock = if r.xdp_kernel_timed() {
        "kernel-timed"
    } else {
        "wall-clock"
    };
    let own = match (hit, pass) {
        (Some(h), Some(p)) => format!(
            " ({case}; the program's own +{:.0} ns, {clock})",
            h.median - p.median
        ),
        _ => String::new(),
    };
    let hit_ratio = ratio(hit, pass);
    out.push(
        at_most(
            "Conntrack-hit cost ≤ 2× the bare XDP_PASS program",
            hit_ratio,
            2.0,
            &own,
        )
        .explained(|| missed::conntrack_hit(r, hit_ratio?, 2.0)),
    );
    let control = |f: fn(&super::control::PortmapControl) -> f64| {
        Stat::of(r.control.iter().filter(|c| c.services == BIG).map(f))
    };
    out.push(below(
        "10,000 Services × 10 endpoints programmed in < 1 s",
        control(|c| c.full_s),
        1.0,
        fmt_secs,
    ));
    out.push(below(
        "One Service changed at 10,000 Services in < 10 ms",
        control(|c| c.change_s),
        0.010,
        fmt_secs,
    ));
    out
}

fn at_most(what: &str, r: Option<f64>, max: f64, detail: &str) -> Target {
    match r {
        Some(r) => Target {
            what: what.into(),
            measured: format!("{r:.2}×{detail}"),
            verdict: if r <= max {
                Verdict::Holds
            } else {
                Verdict::Missed
            },
            why: None,
        },
        None => Target {
            what: what.into(),
            measured: "not run".into(),
            verdict: Verdict::NotMeasured,
            why: None,
        },
    }
}

/// portmap's TCP bulk throughput against `other`'s: the lowest ratio over
/// stream counts and Service counts decides. A transfer of portmap's that
/// failed misses the target, whatever the others did.
fn bulk_target(r: &Results, what: &str, other: Mode, min: f64) -> Target {
    let pm = Mode::Portmap;
    let target = |measured: String, verdict| Target {
        what: what.into(),
        measured,
        verdict,
        why: None,
    };
    if !(r.config.modes.contains(&pm) && r.config.modes.contains(&other)) {
        return target(
            format!("needs --modes portmap,{}", other.name()),
            Verdict::NotMeasured,
        );
    }
    let measured = |m: Mode| r.cells.iter().any(|c| c.mode == m && !c.bulk.is_empty());
    if !measured(pm) || !measured(other) {
        return target(
            "no TCP bulk measurement in this run".into(),
            Verdict::NotMeasured,
        );
    }
    let mut failed = 0;
    let mut made = 0;
    let mut first = None;
    let mut worst: Option<(f64, u32, u32)> = None;
    for s in r.tcp_counts() {
        for &n in &r.config.tcp_streams {
            let f = r.bulk_failures(pm, s, n);
            failed += f.failed;
            made += f.of;
            if first.is_none() {
                first = f.first;
            }
            if let Some(x) = ratio(r.bulk(pm, s, n), r.bulk(other, s, n))
                && worst.is_none_or(|w| x < w.0)
            {
                worst = Some((x, s, n));
            }
        }
    }
    if failed > 0 {
        return target(
            format!(
                "portmap's transfers FAILED ({failed} of {made}): {}",
                first.unwrap_or_default()
            ),
            Verdict::Missed,
        );
    }
    match worst {
        Some((x, s, n)) => target(
            format!("{x:.2}× (the lowest, at S = {s}, {n} stream(s))"),
            if x >= min {
                Verdict::Holds
            } else {
                Verdict::Missed
            },
        )
        .explained(|| missed::bulk(r, other, min, s, n)),
        None => target(
            format!("no transfer of {} succeeded", other.name()),
            Verdict::NotMeasured,
        ),
    }
}
