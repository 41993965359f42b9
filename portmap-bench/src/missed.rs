//! Why a target is missed, from the run's own figures: by how much, how far
//! the repetitions spread, and what the run measured that accounts for the
//! gap or bounds what any change could reach. Nothing here is a claim
//! written in advance: each sentence is built from numbers of this run,
//! and is left out when they were not measured.

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

/// "short by 21 %": how far `got` is below `goal`.
pub fn short_by(got: f64, goal: f64) -> String {
    format!("short by {:.0} %", (1.0 - got / goal) * 100.0)
}

/// The ratio of `a` to `b` in each repetition that measured both: the
/// modes ran side by side there, so these are the ratios to read for how
/// far the machine moves a verdict.
fn per_repetition(
    r: &Results,
    (a, b): (Mode, Mode),
    services: u32,
    value: impl Fn(&Cell) -> Option<f64>,
) -> Option<Stat> {
    Stat::of(r.cells_of(a, services).filter_map(|ca| {
        let cb = r.cells_of(b, services).find(|c| c.rep == ca.rep)?;
        let (va, vb) = (value(ca)?, value(cb)?);
        (vb > 0.0).then(|| va / vb)
    }))
}

/// Where the goal sits among the per-repetition ratios.
fn spread(ratios: Option<Stat>, goal: f64, at_least: bool) -> String {
    let Some(s) = ratios.filter(|s| s.n > 1) else {
        return String::new();
    };
    let meeting = if at_least {
        s.max >= goal
    } else {
        s.min <= goal
    };
    let verdict = if meeting {
        "some repetitions meet the goal: this machine's load decides"
    } else {
        "no repetition meets the goal"
    };
    format!(
        "; repetition by repetition the ratio spans {:.2}–{:.2}× ({verdict})",
        s.min, s.max
    )
}

/// New flows at 1 Service against `other`, short of `goal`×: where a new
/// flow's time goes, from the throughput cells and the kernel-timed
/// per-packet costs.
pub fn new_flows(r: &Results, other: Mode, goal: f64) -> Option<String> {
    let pm = Mode::Portmap;
    let got = r.new_flows(pm, SMALL)?;
    let theirs = r.new_flows(other, SMALL)?;
    let need = goal * theirs.median;
    let mut why = format!(
        "{}: {goal}× {} is {}, portmap delivered {}",
        short_by(got.median, need),
        other.name(),
        rate(need),
        fmt_pps(Some(got)),
    );
    why += &spread(
        per_repetition(r, (pm, other), SMALL, |c| {
            c.new_flows.map(|t| t.delivered_pps)
        }),
        goal,
        true,
    );
    let per_new = 1e9 / got.median;
    let budget = 1e9 / need;
    why += &format!(
        ". A new flow took {per_new:.0} ns; {goal}× needs {budget:.0} ns, {:.0} ns less",
        per_new - budget
    );
    let Some(est) = r.established(pm, SMALL).filter(|e| e.median > got.median) else {
        return Some(why + ".");
    };
    let per_est = 1e9 / est.median;
    why += &format!(
        ". A packet of an established flow took {per_est:.0} ns through the same pipeline, so \
         a new flow costs {:.0} ns more",
        per_new - per_est
    );
    let new_ns = Stat::of(r.xdp_cost.iter().map(|c| c.new_flow_ns));
    let hit_ns = Stat::of(r.xdp_cost.iter().map(|c| c.hit_ns));
    if let (Some(new_ns), Some(hit_ns)) = (new_ns, hit_ns)
        && r.xdp_cost.iter().all(|c| c.kernel_timed())
    {
        let in_cache = new_ns.median - hit_ns.median;
        why += &format!(
            ": the XDP program, timed by the kernel on one flow's packets (its maps in the \
             CPU's caches), spends {in_cache:.0} ns more on a new flow than on a hit, which \
             leaves {:.0} ns for the same work out of the caches. At 1 Service the frontend and \
             Maglev maps stay cached; the conntrack table does not: every new flow inserts two \
             entries and, the table full, evicts two",
            per_new - per_est - in_cache
        );
    }
    Some(why + ".")
}

/// Established flows against forwarding, short of `goal`× at `services`.
pub fn established(r: &Results, services: u32, goal: f64) -> Option<String> {
    let (pm, fwd) = (
        r.established(Mode::Portmap, services)?,
        r.established(Mode::Forward, services)?,
    );
    let x = pm.median / fwd.median;
    let ratios = per_repetition(r, (Mode::Portmap, Mode::Forward), services, |c| {
        c.established.map(|t| t.delivered_pps)
    });
    Some(format!(
        "{} at S = {services}: portmap {}, forward {}{}.",
        short_by(x, goal),
        fmt_pps(Some(pm)),
        fmt_pps(Some(fwd)),
        spread(ratios, goal, true)
    ))
}

/// A metric of portmap's that should stay within ±10 % from 1 to 10,000
/// Services and did not; `fmt` prints a `Stat` of it.
pub fn flatness(small: Stat, big: Stat, fmt: impl Fn(Stat) -> String) -> String {
    let change = (big.median / small.median - 1.0) * 100.0;
    let beyond = change.abs() - 10.0;
    let overlap = small.min <= big.max && big.min <= small.max;
    let ranges = if overlap {
        "the two ranges overlap: the change is within this run's spread"
    } else {
        "the two ranges do not overlap"
    };
    format!(
        "{beyond:.0} points beyond ±10 %: {} at {SMALL} Service, {} at {BIG}; {ranges}.",
        fmt(small),
        fmt(big)
    )
}

/// TCP bulk throughput against `other`, short of `goal`× at its worst
/// (Service count, streams).
pub fn bulk(r: &Results, other: Mode, goal: f64, services: u32, streams: u32) -> Option<String> {
    let pm = r.bulk(Mode::Portmap, services, streams)?;
    let theirs = r.bulk(other, services, streams)?;
    let gbps = |c: &Cell| {
        c.bulk
            .iter()
            .find(|b| b.streams == streams)
            .and_then(|b| b.gbps)
    };
    let below_all = if pm.n > 1 && pm.max < theirs.min {
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
            per_repetition(r, (Mode::Portmap, other), services, gbps),
            goal,
            true
        ),
    ))
}

/// The conntrack hit against `XDP_PASS`, over `goal`×: what one bare
/// lookup in an LRU hash costs on its own, measured in the same run.
pub fn conntrack_hit(r: &Results, ratio: f64, goal: f64) -> Option<String> {
    let over = format!("over by {:.0} %", (ratio / goal - 1.0) * 100.0);
    let pass = Stat::of(r.xdp_cost.iter().map(|c| c.pass_ns))?;
    let lookup = Stat::of(
        r.xdp_cost
            .iter()
            .map(|c| c.lookup_wide_ns)
            .filter(|ns| *ns > 0.0),
    );
    let Some(lookup) = lookup.filter(|_| pass.median > 0.0) else {
        return Some(format!("{over}."));
    };
    let alone = lookup.median / pass.median;
    let bound = if alone > goal {
        format!(
            ": no program that looks the flow up in a BPF hash map can meet {goal}× on this \
             machine"
        )
    } else {
        String::new()
    };
    Some(format!(
        "{over}. One bare lookup of an IPv4 flow in an LRU hash with portmap's 40-byte \
         conntrack key, in a program that does nothing else, costs {:.0} ns: {alone:.1}× \
         `XDP_PASS` ({:.0} ns) alone{bound}.",
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

    #[test]
    fn a_new_flow_is_split_into_its_parts() {
        let r = fixture();
        let why = new_flows(&r, Mode::Iptables, 3.0).expect("measured");
        let pm = r.new_flows(Mode::Portmap, SMALL).unwrap().median;
        let ipt = r.new_flows(Mode::Iptables, SMALL).unwrap().median;
        let short = (1.0 - pm / (3.0 * ipt)) * 100.0;
        assert!(why.starts_with(&format!("short by {short:.0} %")), "{why}");
        let per_new = 1e9 / pm;
        assert!(
            why.contains(&format!("A new flow took {per_new:.0} ns")),
            "{why}"
        );
        let est = r.established(Mode::Portmap, SMALL).unwrap().median;
        let own = per_new - 1e9 / est;
        assert!(
            why.contains(&format!("a new flow costs {own:.0} ns more")),
            "{why}"
        );
        assert!(why.contains("evicts two"), "{why}");
    }

    #[test]
    fn the_spread_says_whether_any_repetition_met_the_goal() {
        let some = Stat {
            median: 1.9,
            min: 1.5,
            max: 2.1,
            n: 3,
        };
        assert!(spread(Some(some), 2.0, true).contains("some repetitions meet"));
        let none = Stat { max: 1.95, ..some };
        assert!(spread(Some(none), 2.0, true).contains("no repetition meets"));
        assert_eq!(spread(Some(Stat { n: 1, ..some }), 2.0, true), "");
    }

    #[test]
    fn the_hit_is_bounded_by_a_bare_lookup() {
        let r = fixture();
        let why = conntrack_hit(&r, 7.25, 2.0).expect("measured");
        assert!(why.starts_with("over by 262 %"), "{why}");
        assert!(why.contains("no program that looks the flow up"), "{why}");
        let mut cheap = r.clone();
        for c in &mut cheap.xdp_cost {
            c.lookup_wide_ns = c.pass_ns;
        }
        let why = conntrack_hit(&cheap, 7.25, 2.0).expect("measured");
        assert!(!why.contains("no program"), "{why}");
        for c in &mut cheap.xdp_cost {
            c.lookup_wide_ns = 0.0;
        }
        assert_eq!(
            conntrack_hit(&cheap, 7.25, 2.0).as_deref(),
            Some("over by 262 %.")
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
        let why = flatness(s(100.0, 90.0, 110.0), s(130.0, 105.0, 140.0), fmt);
        assert!(why.starts_with("20 points beyond ±10 %"), "{why}");
        assert!(why.contains("overlap: the change is within"), "{why}");
        let why = flatness(s(100.0, 90.0, 110.0), s(69.0, 61.0, 70.0), fmt);
        assert!(why.starts_with("21 points"), "{why}");
        assert!(why.contains("do not overlap"), "{why}");
    }
}
