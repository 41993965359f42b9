//! Control plane, portmap's side: how long `Dataplane::apply` takes to
//! program S Services from nothing, and to change one of them, in process
//! (the iptables and nftables sides are timed in the cells, where their
//! rulesets are loaded anyway).

use std::{path::Path, time::Instant};

use anyhow::{Context as _, Result};
use portmap_common::abi::DatapathConfig;
use serde::{Deserialize, Serialize};

use super::rules::{self, Services};
use crate::{
    dataplane::{Dataplane, Limits},
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
    let start = Instant::now();
    dp.apply(&before)
        .with_context(|| format!("programming {count} Services"))?;
    let full_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    dp.apply(&after)
        .with_context(|| format!("changing one of {count} Services"))?;
    let change_s = start.elapsed().as_secs_f64();
    Ok(PortmapControl {
        rep,
        services: count,
        translate_s,
        full_s,
        change_s,
    })
}

#[cfg(test)]
mod tests {
    /// Needs root; run by hand: `cargo test --release -p portmap-userspace
    /// control_plane_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn control_plane_timing() {
        for count in [1000, 10_000] {
            let m = super::measure(0, count).unwrap();
            println!("{count}: {m:?}");
        }
    }
}
