//! Control plane, portmap's side: how long `Dataplane::apply` takes to
//! program S Services from nothing, and to change one of them, in process
//! (the iptables and nftables sides are timed in the cells, where their
//! rulesets are loaded anyway).

use std::{path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use portmap_common::abi::DatapathConfig;
use serde::{Deserialize, Serialize};

use super::rules::{self, Services};
use portmap_userspace::{
    dataplane::{Dataplane, Limits, maps::names},
    k8s::{self, Manifests, NodeConfig},
    model::DesiredState,
};

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct PortmapControl {
    pub rep: u32,
    pub services: u32,
    /// Parsing and translating the manifests (not part of `apply`).
    pub translate_s: f64,
    /// `apply` of every Service into empty maps.
    pub full_s: f64,
    /// `apply` of the same state with one endpoint of one Service replaced.
    pub change_s: f64,
}

/// The map sizes `portmap run` gets in the benchmark for `count` Services.
pub fn limits(count: u32) -> Limits {
    Limits {
        frontends: (2 * count + 64).next_power_of_two().max(16_384),
        backends: (count * rules::ENDPOINTS as u32 + 64)
            .next_power_of_two()
            .max(16_384),
        conntrack: Limits::default().conntrack,
    }
}

fn desired(services: &Services) -> Result<DesiredState> {
    let m = Manifests::parse(Path::new("bench.yaml"), &services.manifests())
        .context("parsing the generated manifests")?;
    let t = k8s::translate(&m, &NodeConfig::default(), None)
        .context("translating the generated manifests")?;
    Ok(DesiredState {
        services: t.services,
    })
}

pub fn measure(rep: u32, count: u32) -> Result<PortmapControl> {
    let services = Services::new(count)?;
    let start = Instant::now();
    let before = desired(&services)?;
    let translate_s = start.elapsed().as_secs_f64();
    let after = desired(&services.with_one_changed())?;
    let mut dp = Dataplane::load(limits(count), DatapathConfig::default())
        .context("loading portmap's dataplane for the control-plane timing")?;
    let (full_s, change_s) = time_applies(&mut dp, &before, &after)?;
    Ok(PortmapControl {
        rep,
        services: count,
        translate_s,
        full_s,
        change_s,
    })
}

/// Times `apply(before)` into empty maps, then `apply(after)`. A time is
/// only worth reporting for an apply that published everything: one that
/// refused services (a full map) is an error, naming them.
fn time_applies(
    dp: &mut Dataplane,
    before: &DesiredState,
    after: &DesiredState,
) -> Result<(f64, f64)> {
    let timed = |dp: &mut Dataplane, desired: &DesiredState, what: &str| -> Result<f64> {
        let start = Instant::now();
        let report = dp.apply(desired).with_context(|| what.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        if !report.is_complete() {
            let n = report.failed.len();
            let first: Vec<String> = report
                .failed
                .iter()
                .take(3)
                .map(|(key, why)| format!("{key}: {why}"))
                .collect();
            bail!(
                "{what}: {n} of {} Services were not published, so the time means nothing ({})",
                desired.services.len(),
                first.join("; ")
            );
        }
        Ok(seconds)
    };
    let services = before.services.len();
    let full_s = timed(dp, before, &format!("programming {services} Services"))?;
    let frontends: usize = before.services.iter().map(|s| s.frontends.len()).sum();
    let published = dp
        .map_usage()
        .into_iter()
        .find(|m| m.map == names::FRONTENDS)
        .map_or(0, |m| m.entries);
    if published != frontends as u64 {
        bail!(
            "after programming {services} Services, {published} frontends of {frontends} are published"
        );
    }
    let change_s = timed(dp, after, &format!("changing one of {services} Services"))?;
    Ok((full_s, change_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timing programs every Service and changes one, checking that each
    /// apply published everything (at a size quick enough for every test
    /// run; `portmap-bench` runs 10,000). Needs root, as every test here.
    #[test]
    fn control_plane_timing_publishes_everything() {
        let m = measure(0, 200).expect("the control-plane timing of 200 Services");
        assert_eq!(m.services, 200);
        assert!(m.full_s > 0.0 && m.change_s > 0.0, "{m:?}");
    }

    /// Services that do not fit make the timing an error, not a figure.
    #[test]
    fn a_timing_of_services_that_did_not_fit_is_an_error() {
        let services = Services::new(50).expect("services");
        let before = desired(&services).expect("translated");
        let after = desired(&services.with_one_changed()).expect("translated");
        let small = Limits {
            frontends: 16,
            backends: 64,
            conntrack: 1024,
        };
        let mut dp = Dataplane::load(small, DatapathConfig::default()).expect("loaded");
        let err = time_applies(&mut dp, &before, &after)
            .expect_err("50 Services in 16 frontends")
            .to_string();
        assert!(err.contains("were not published"), "{err}");
    }
}
