//! Following the API server (`portmap run --kubernetes`), in process: from
//! the bytes of the list responses to every Service programmed, and from
//! the bytes of one watch event (an endpoint of one EndpointSlice replaced)
//! to its change in the maps, through the daemon's own code (the typed
//! objects a reflector holds, `Sources::load_with_api` with its SNAT
//! locality resolution, `Dataplane::publish`).
//! Left out: the HTTP round trips, and `--min-sync-period`'s batching (a
//! change after a quiet period is applied at once).

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::{Context as _, Result, bail};
use portmap_common::abi::DatapathConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    control,
    rules::{REPLACEMENT_ENDPOINT, Services},
};
use portmap_userspace::{
    config::Sources,
    dataplane::{Dataplane, maps::names},
    k8s::{Manifests, NodeConfig},
    kubeapi::Snapshot,
    locality::Masquerade,
    model::DesiredState,
};

/// Watch events timed per measurement.
pub const EVENTS: usize = 60;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KubeSync {
    pub rep: u32,
    pub services: u32,
    /// Lists decoded, translated and programmed.
    pub first_sync_s: f64,
    /// One watch event decoded, stored, the state translated again and the
    /// difference applied: every time, sorted.
    pub event_s: Vec<f64>,
}

impl KubeSync {
    /// The `q` quantile (0-1) of the event times.
    pub fn event_quantile(&self, q: f64) -> Option<f64> {
        let n = self.event_s.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.event_s.get(rank - 1).copied()
    }
}

/// A list response of `items`, as the API server sends it.
fn list_bytes<T: Serialize>(kind: &str, items: &[Arc<T>]) -> Result<String> {
    let items: Vec<Value> = items
        .iter()
        .map(|i| serde_json::to_value(&**i))
        .collect::<Result<_, _>>()?;
    let list = json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items});
    Ok(list.to_string())
}

/// The items of a list response, typed.
fn decode_list<T: serde::de::DeserializeOwned>(bytes: &str) -> Result<Vec<Arc<T>>> {
    let mut list: Value = serde_json::from_str(bytes)?;
    let Value::Array(items) = list["items"].take() else {
        bail!("a list without items");
    };
    items
        .into_iter()
        .map(|v| serde_json::from_value(v).map(Arc::new).map_err(Into::into))
        .collect()
}

fn apply(dp: &mut Dataplane, desired: &DesiredState, what: &str) -> Result<()> {
    let published = dp.publish(desired).with_context(|| what.to_string())?;
    if !published.is_complete() {
        bail!(
            "{what}: {} of {} Services were not published, so the time means nothing",
            published.not_published,
            published.services
        );
    }
    Ok(())
}

pub fn measure(rep: u32, count: u32) -> Result<KubeSync> {
    let services = Services::new(count)?;
    let m = Manifests::parse(Path::new("bench.yaml"), &services.manifests())
        .context("parsing the generated manifests")?;
    let svcs: Vec<_> = m.services.iter().map(|o| o.object.clone()).collect();
    let slices: Vec<_> = m.endpoint_slices.iter().map(|o| o.object.clone()).collect();
    let (svc_bytes, slice_bytes) = (
        list_bytes("ServiceList", &svcs)?,
        list_bytes("EndpointSliceList", &slices)?,
    );
    let sources = Sources {
        specs: Vec::new(),
        allow_from: Vec::new(),
        manifests: Vec::new(),
        node: NodeConfig::default(),
        docker: None,
        masquerade: Masquerade::default(),
    };
    let mut dp = Dataplane::load(control::limits(count), DatapathConfig::default())
        .context("loading portmap's dataplane for the API-server timing")?;

    let start = Instant::now();
    let mut snapshot = Snapshot {
        services: decode_list(&svc_bytes)?,
        slices: decode_list(&slice_bytes)?,
        node: None,
    };
    let mut last = sources
        .load_with_api(None, &snapshot)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    apply(&mut dp, &last.desired, "the first sync")?;
    let first_sync_s = start.elapsed().as_secs_f64();
    let frontends: usize = last
        .desired
        .services
        .iter()
        .map(|s| s.frontends.len())
        .sum();
    let published = dp
        .map_usage()
        .into_iter()
        .find(|m| m.map == names::FRONTENDS)
        .map_or(0, |m| m.entries);
    if published != frontends as u64 || !last.rejected.is_empty() {
        bail!("after the first sync {published} frontends of {frontends} are published");
    }

    // svc-00000's slice, its first endpoint replaced and put back in turn.
    let original = serde_json::to_value(&*snapshot.slices[0])?;
    let mut event_s = Vec::with_capacity(EVENTS);
    for k in 0..EVENTS {
        let mut object = original.clone();
        if k % 2 == 0 {
            object["endpoints"][0]["addresses"][0] = json!(REPLACEMENT_ENDPOINT.to_string());
        }
        object["metadata"]["resourceVersion"] = json!((k + 2).to_string());
        let line = json!({"type": "MODIFIED", "object": object}).to_string();

        let start = Instant::now();
        let mut event: Value = serde_json::from_str(&line)?;
        snapshot.slices[0] = Arc::new(serde_json::from_value(event["object"].take())?);
        let loaded = sources
            .load_with_api(Some(&last), &snapshot)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        apply(&mut dp, &loaded.desired, "one watch event")?;
        event_s.push(start.elapsed().as_secs_f64());
        last = loaded;
        if k == 0 || k + 1 == EVENTS {
            // Outside the timing: the maps show the event.
            let replaced = serves_replacement(&dp)?;
            if replaced != (k % 2 == 0) {
                bail!("after watch event {k}, the maps do not show it");
            }
        }
    }
    event_s.sort_by(f64::total_cmp);
    Ok(KubeSync {
        rep,
        services: count,
        first_sync_s,
        event_s,
    })
}

/// Whether the maps give svc-00000 the replacement endpoint.
fn serves_replacement(dp: &Dataplane) -> Result<bool> {
    let prefix = format!("{REPLACEMENT_ENDPOINT}:");
    Ok(dp.snapshot()?.services.iter().any(|s| {
        s.service.ends_with("/svc-00000")
            && s.backends.iter().any(|b| b.backend.starts_with(&prefix))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Service is programmed and every event applied (a size quick
    /// enough for every test run; `portmap-bench` runs 10,000). Needs root.
    #[test]
    fn api_server_timing_programs_everything_and_follows_each_event() {
        let m = measure(0, 200).expect("the API-server timing of 200 Services");
        assert_eq!(m.event_s.len(), EVENTS);
        assert!(m.first_sync_s > 0.0, "{m:?}");
        let (p50, p99) = (m.event_quantile(0.5), m.event_quantile(0.99));
        assert!(p50.is_some_and(|p| p > 0.0) && p50 <= p99, "{m:?}");
    }
}
