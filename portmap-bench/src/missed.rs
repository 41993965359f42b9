//! Why a target is missed, from the run's own figures: by how much, how far
//! the repetitions spread, and what the run measured that accounts for the
//! gap or bounds it. Every number comes from the run; the words around them
//! say what the numbers are and what the program does (two conntrack
//! entries per flow), never what a run is expected to show. A sentence whose
//! numbers were not measured, or make no sense (a zero rate, a negative
//! remainder), is left out.

use super::{
    modes::Mode,
    report::{fmt_pps, pps},
    results::{Cell, Results, Stat},
    targets::{BIG, SMALL},
    tcpreport::fmt_gbps,
};

/// A packet rate, as the report's tables print it.
fn rate(v: f64) -> String {
    let (div, unit) = pps(v);
    let d = if div == 1e6 { 2 } else { 0 };
    format!("{:.d$} {unit}", v / div)
}

/// "0.86× against the goal's 0.9×: short by 4 %": a ratio below its goal,
/// the shortfall relative to the goal.
pub fn short_by(got: f64, goal: f64) -> String {
    format!(
        "{got:.2}× against the goal's {goal}×: short by {:.0} %",
        (1.0 - got / goal) * 100.0
    )
}

/// The ratio of `a` to `b` in each repetition that measured both, paired
/// by repetition: the modes ran side by side there, so these are the
/// ratios to read for how far the machine moves a verdict.
fn per_repetition(
    r: &Results,
    (a, b): (Mode, Mode),
    services: u32,
    value: impl Fn(&Cell) -> Option<f64>,
) -> Vec<f64> {
    r.cells_of(a, services)
        .filter_map(|ca| {
            let cb = r.cells_of(b, services).find(|c| c.rep == ca.rep)?;
            let (va, vb) = (value(ca)?, value(cb)?);
            (vb > 0.0 && va.is_finite()).then(|| va / vb)
        })
        .collect()
}

/// Where an at-least goal sits among the per-repetition ratios: their range
/// and how many of them meet it.
fn spread(ratios: &[f64], goal: f64) -> String {
    let Some(s) = Stat::of(ratios.iter().copied()).filter(|s| s.n > 1) else {
        return String::new();
    };
    let meeting = ratios.iter().filter(|x| **x >= goal).count();
    format!(
        "; repetition by repetition the ratio spans {:.2}–{:.2}×, and {meeting} of {} \
         repetitions meet the goal",
        s.min, s.max, s.n
    )
}

/// New flows at 1 Service against `other`, short of `goal`×: a new flow's
/// time against the goal's budget and against an established flow's
/// packet, and how much of the difference the XDP program's own work
/// accounts for when its maps are in cache.
pub fn new_flows(r: &Results, other: Mode, goal: f64) -> Option<String> {
    let pm = Mode::Portmap;
    let got = r.new_flows(pm, SMALL).filter(|s| s.median > 0.0)?;
    let theirs = r.new_flows(other, SMALL).filter(|s| s.median > 0.0)?;
    let need = goal * theirs.median;
    let mut why = format!(
        "{}: {goal}× {} is {}, portmap delivered {}",
        short_by(got.median / theirs.median, goal),
        other.name(),
        rate(need),
        fmt_pps(Some(got)),
    );
    why += &spread(
        &per_repetition(r, (pm, other), SMALL, |c| {
            c.new_flows.map(|t| t.delivered_pps)
        }),
        goal,
    );
    let per_new = 1e9 / got.median;
    let budget = 1e9 / need;
    why += &format!(
        ". A new flow took {per_new:.0} ns of the pipeline; {goal}× needs {budget:.0} ns, \
         {:.0} ns less",
        per_new - budget
    );
    let Some(est) = r.established(pm, SMALL).filter(|e| e.median > got.median) else {
        return Some(why + ".");
    };
    let per_est = 1e9 / est.median;
    let extra = per_new - per_est;
    why += &format!(
        ". A packet of an established flow took {per_est:.0} ns, so a new flow costs {extra:.0} \
         ns more"
    );
    // Both TCP, as the per-packet measurement's new flow is (a SYN|FIN
    // re-creating one flow in a small table: in cache, never evicting).
    let new_ns = Stat::of(r.xdp_cost.iter().map(|c| c.new_flow_ns));
    let hit_ns = r.xdp_cost_stat(|c| c.tcp_hit_ns);
    if let (Some(new_ns), Some(hit_ns)) = (new_ns, hit_ns)
        && r.xdp_kernel_timed()
    {
        let in_cache = new_ns.median - hit_ns.median;
        let rest = extra - in_cache;
        if in_cache > 0.0 && rest > 0.0 {
            why += &format!(
                ". The program's own work for a new TCP flow, timed by the kernel on one flow \
                 re-created in a small table (in cache, evicting nothing), is {in_cache:.0} ns \
                 more than for a hit; the other {rest:.0} ns are what a new flow costs here \
                 beyond that: each inserts two conntrack entries into a table the benchmark \
                 has filled, so each insert evicts, and the entries and buckets touched are \
                 rarely in the CPU's caches"
            );
        }
    }
    Some(why + ".")
}

/// Established flows against forwarding, short of `goal`× at `services`.
pub fn established(r: &Results, services: u32, goal: f64) -> Option<String> {
    let (pm, fwd) = (
        r.established(Mode::Portmap, services)?,
        r.established(Mode::Forward, services)?,
    );
    if fwd.median <= 0.0 {
        return None;
    }
    let ratios = per_repetition(r, (Mode::Portmap, Mode::Forward), services, |c| {
        c.established.map(|t| t.delivered_pps)
    });
    Some(format!(
        "{} at S = {services}: portmap {}, forward {}{}.",
        short_by(pm.median / fwd.median, goal),
        fmt_pps(Some(pm)),
        fmt_pps(Some(fwd)),
        spread(&ratios, goal)
    ))
}

/// A metric of portmap's that should stay within ±10 % from 1 to 10,000
/// Services and did not; `fmt` prints a `Stat` of it.
pub fn flatness(small: Stat, big: Stat, fmt: impl Fn(Stat) -> String) -> Option<String> {
    if small.median <= 0.0 {
        return None;
    }
    let change = (big.median / small.median - 1.0) * 100.0;
    let beyond = change.abs() - 10.0;
    let overlap = small.min <= big.max && big.min <= small.max;
    let ranges = if overlap {
        "the two ranges overlap: the change is within this run's spread"
    } else {
        "the two ranges do not overlap"
    };
    Some(format!(
        "{change:+.1} %, {beyond:.1} points beyond ±10 %: {} at {SMALL} Service, {} at {BIG}; \
         {ranges}.",
        fmt(small),
        fmt(big)
    ))
}

/// TCP bulk throughput against `other`, short of `goal`× at its worst
/// (Service count, streams).
pub fn bulk(r: &Results, other: Mode, goal: f64, services: u32, streams: u32) -> Option<String> {
    let pm = r.bulk(Mode::Portmap, services, streams)?;
    let theirs = r
        .bulk(other, services, streams)
        .filter(|s| s.median > 0.0)?;
    let gbps = |c: &Cell| {
        c.bulk
            .iter()
            .find(|b| b.streams == streams)
            .and_then(|b| b.gbps)
    };
    // Against a goal of parity, whether the two modes' repetitions overlap
    // at all says how firm the miss is.
    let below_all = if goal >= 1.0 && pm.n > 1 && pm.max < theirs.min {
        format!(
            "; every portmap repetition below every {} one",
            other.name()
        )
    } else {
        String::new()
    };
    Some(format!(
        "{} at S = {services}, {streams} stream(s): portmap {}, {} {}{}{below_all}.",
        short_by(pm.median / theirs.median, goal),
        fmt_gbps(Some(pm)),
        other.name(),
        fmt_gbps(Some(theirs)),
        spread(
            &per_repetition(r, (Mode::Portmap, other), services, gbps),
            goal
        ),
    ))
}

/// The conntrack hit against `XDP_PASS`, over `goal`×: what one bare
/// lookup in an LRU hash with conntrack's key costs on its own, measured
/// in the same run.
pub fn conntrack_hit(r: &Results, ratio: f64, goal: f64) -> Option<String> {
    let over = format!(
        "{ratio:.2}× against the goal's {goal}×: over by {:.0} %",
        (ratio / goal - 1.0) * 100.0
    );
    let pass = Stat::of(r.xdp_cost.iter().map(|c| c.pass_ns)).filter(|p| p.median > 0.0)?;
    let lookup = r.xdp_cost_stat(|c| c.lookup_wide_ns);
    let Some(lookup) = lookup else {
        return Some(format!("{over}."));
    };
    let alone = lookup.median / pass.median;
    let bound = if alone > goal {
        format!(
            ": a conntrack kept in an LRU hash with this key cannot meet {goal}× on this \
             machine, since its lookup alone does not"
        )
    } else {
        String::new()
    };
    Some(format!(
        "{over}. One bare lookup of an IPv4 flow in an LRU hash with portmap's 40-byte \
         conntrack key, in a program that does nothing else, costs {:.0} ns: {alone:.1}× \
         `XDP_PASS` ({:.0} ns){bound}.",
        lookup.median, pass.median
    ))
}

/// A time that should stay under `limit_s` and did not.
pub fn over_limit(v: f64, limit_s: f64) -> String {
    format!("over by {:.0} %.", (v / limit_s - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Results {
        serde_json::from_str(include_str!("../fixtures/results-anchored.json"))
            .expect("fixtures/results-anchored.json parses")
    }

    fn median(v: impl Iterator<Item = f64>) -> f64 {
        Stat::of(v).expect("measured").median
    }

    #[test]
    fn a_new_flow_is_split_into_its_parts() {
        let r = fixture();
        let why = new_flows(&r, Mode::Iptables, 3.0).expect("measured");
        let pm = r.new_flows(Mode::Portmap, SMALL).unwrap().median;
        let ipt = r.new_flows(Mode::Iptables, SMALL).unwrap().median;
        let short = (1.0 - pm / (3.0 * ipt)) * 100.0;
        assert!(
            why.starts_with(&format!(
                "{:.2}× against the goal's 3×: short by {short:.0} %",
                pm / ipt
            )),
            "{why}"
        );
        let per_new = 1e9 / pm;
        assert!(
            why.contains(&format!("A new flow took {per_new:.0} ns")),
            "{why}"
        );
        let budget = 1e9 / (3.0 * ipt);
        assert!(why.contains(&format!("3× needs {budget:.0} ns")), "{why}");
        let est = r.established(Mode::Portmap, SMALL).unwrap().median;
        let extra = per_new - 1e9 / est;
        assert!(
            why.contains(&format!("a new flow costs {extra:.0} ns more")),
            "{why}"
        );
        // The in-cache part is TCP's new flow against TCP's hit.
        let in_cache = median(r.xdp_cost.iter().map(|c| c.new_flow_ns))
            - median(r.xdp_cost.iter().map(|c| c.tcp_hit_ns));
        assert!(why.contains(&format!("is {in_cache:.0} ns")), "{why}");
        let rest = extra - in_cache;
        assert!(why.contains(&format!("the other {rest:.0} ns")), "{why}");
    }

    #[test]
    fn nothing_is_said_of_a_rate_of_zero() {
        let mut r = fixture();
        for c in r.cells.iter_mut().filter(|c| c.mode == Mode::Portmap) {
            if let Some(t) = c.new_flows.as_mut() {
                t.delivered_pps = 0.0;
            }
        }
        assert_eq!(new_flows(&r, Mode::Iptables, 3.0), None);
    }

    #[test]
    fn repetitions_are_paired_by_their_number_not_their_place() {
        let mut r = fixture();
        for c in r.cells.iter_mut().filter(|c| c.services == SMALL) {
            let scale = match c.mode {
                Mode::Portmap => 100.0,
                Mode::Forward => 10.0,
                _ => continue,
            };
            if let Some(t) = c.established.as_mut() {
                t.delivered_pps = scale * f64::from(c.rep + 1);
            }
        }
        // Forward's cells in the opposite order: paired by place, the
        // ratios would be 10 × (a + 1) / (b + 1) for different a and b.
        let (mut fwd, rest): (Vec<Cell>, Vec<Cell>) = r
            .cells
            .into_iter()
            .partition(|c| c.mode == Mode::Forward && c.services == SMALL);
        fwd.reverse();
        r.cells = rest.into_iter().chain(fwd).collect();
        let ratios = per_repetition(&r, (Mode::Portmap, Mode::Forward), SMALL, |c| {
            c.established.map(|t| t.delivered_pps)
        });
        assert_eq!(ratios, [10.0, 10.0, 10.0]);
    }

    #[test]
    fn the_spread_counts_the_repetitions_that_met_the_goal() {
        assert!(
            spread(&[1.5, 1.9, 2.1], 2.0)
                .ends_with("1.50–2.10×, and 1 of 3 repetitions meet the goal")
        );
        assert!(spread(&[1.5, 1.9, 1.95], 2.0).contains("0 of 3"));
        assert_eq!(spread(&[1.5], 2.0), "");
    }

    #[test]
    fn the_hit_is_bounded_by_a_bare_lookup() {
        let r = fixture();
        let why = conntrack_hit(&r, 7.25, 2.0).expect("measured");
        assert!(
            why.starts_with("7.25× against the goal's 2×: over by 262 %"),
            "{why}"
        );
        assert!(why.contains("cannot meet 2×"), "{why}");
        let mut cheap = r.clone();
        for c in &mut cheap.xdp_cost {
            c.lookup_wide_ns = c.pass_ns;
        }
        let why = conntrack_hit(&cheap, 7.25, 2.0).expect("measured");
        assert!(!why.contains("cannot"), "{why}");
        for c in &mut cheap.xdp_cost {
            c.lookup_wide_ns = 0.0;
        }
        assert_eq!(
            conntrack_hit(&cheap, 7.25, 2.0).as_deref(),
            Some("7.25× against the goal's 2×: over by 262 %.")
        );
    }

    #[test]
    fn flatness_tells_overlapping_ranges_apart() {
        let s = |median, min, max| Stat {
            median,
            min,
            max,
            n: 3,
        };
        let fmt = |s: Stat| format!("{:.0}", s.median);
        let why = flatness(s(100.0, 90.0, 110.0), s(130.0, 105.0, 140.0), fmt).unwrap();
        assert!(
            why.starts_with("+30.0 %, 20.0 points beyond ±10 %"),
            "{why}"
        );
        assert!(why.contains("overlap: the change is within"), "{why}");
        let why = flatness(s(100.0, 90.0, 110.0), s(69.0, 61.0, 70.0), fmt).unwrap();
        assert!(why.starts_with("-31.0 %, 21.0 points"), "{why}");
        assert!(why.contains("do not overlap"), "{why}");
        // Just over the line is not "0 points".
        let why = flatness(s(100.0, 99.0, 101.0), s(110.3, 110.0, 111.0), fmt).unwrap();
        assert!(why.starts_with("+10.3 %, 0.3 points"), "{why}");
        assert_eq!(flatness(s(0.0, 0.0, 0.0), s(1.0, 1.0, 1.0), fmt), None);
    }
}
