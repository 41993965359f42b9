//! Publishing what fits: the way every source of a desired state (`-p`
//! specs, manifests, an API server, Docker) applies it. Each object (a
//! service) that fits is published; each that does not is reported on its
//! own, in the log and in the metric `portmap_objects_not_published`, and
//! retried as room appears ([`Dataplane::retry_unpublished`]: ids and table
//! regions freed by other changes come back after a grace period). Which of
//! them is an error for the caller is the caller's word: `portmap run`
//! refuses to start only when what the user typed (`-p`) does not fit.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use anyhow::Result;
use log::{info, warn};

use super::{Dataplane, apply::ApplyReport};
use crate::model::DesiredState;

/// Objects named one by one in the log per change, before a summary line:
/// the metric has every one, and thousands of lines help nobody.
const LOG_EACH: usize = 20;

/// Why an object of the desired state is not published as desired: a new
/// one is not published at all; one already published whose edit does not
/// fit keeps what it had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotPublished {
    /// The map that is full (`services`, `frontends`, `backends`, `Maglev
    /// table slots`), or `error` (a write failed).
    pub reason: &'static str,
    pub why: String,
    /// A `-p` mapping (what the user typed), not an object of a cluster.
    pub typed: bool,
}

/// What one publish (or retry) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Services in the desired state.
    pub services: usize,
    /// Of them, not published in full now.
    pub not_published: usize,
    /// Published now that were not before.
    pub recovered: usize,
    /// `-p` mappings not published: (key, why).
    pub typed: Vec<(String, String)>,
}

impl Published {
    pub fn is_complete(&self) -> bool {
        self.not_published == 0
    }
}

/// The record of what is left unpublished, kept by the dataplane.
#[derive(Debug, Default)]
pub(crate) struct Publishing {
    /// By service key.
    unpublished: BTreeMap<String, NotPublished>,
    /// The last desired state, kept while part of it is unpublished.
    pending: Option<DesiredState>,
}

impl Publishing {
    /// Takes in the outcome of applying `desired`: logs what changed (objects
    /// no longer or again published) and says what is left.
    pub fn record(&mut self, desired: &DesiredState, report: &ApplyReport) -> Published {
        let typed: BTreeSet<&str> = desired
            .services
            .iter()
            // `-p` mappings: no Service name, no container.
            .filter(|s| s.name.is_empty() && s.container.is_empty())
            .map(|s| s.key.as_str())
            .collect();
        let mut now: BTreeMap<String, NotPublished> = BTreeMap::new();
        for (key, why) in &report.failed {
            let reason = report.full.get(key).copied().unwrap_or("error");
            let typed = typed.contains(key.as_str());
            let why = why.clone();
            now.insert(key.clone(), NotPublished { reason, why, typed });
        }
        let before = std::mem::take(&mut self.unpublished);
        // Only when something was left out: a sync of a large cluster
        // should not index every key for nothing.
        let desired_keys: BTreeSet<&str> = if before.is_empty() {
            BTreeSet::new()
        } else {
            desired.services.iter().map(|s| s.key.as_str()).collect()
        };
        let recovered: Vec<&String> = before
            .keys()
            .filter(|k| desired_keys.contains(k.as_str()) && !now.contains_key(*k))
            .collect();
        let fresh: Vec<(&String, &NotPublished)> = now
            .iter()
            .filter(|(k, n)| before.get(*k).is_none_or(|b| b.reason != n.reason))
            .collect();
        log_changes(&fresh, &recovered, &now, desired.services.len());
        let published = Published {
            services: desired.services.len(),
            not_published: now.len(),
            recovered: recovered.len(),
            typed: now
                .iter()
                .filter(|(_, n)| n.typed)
                .map(|(k, n)| (k.clone(), n.why.clone()))
                .collect(),
        };
        self.unpublished = now;
        published
    }
}

fn log_changes(
    fresh: &[(&String, &NotPublished)],
    recovered: &[&String],
    now: &BTreeMap<String, NotPublished>,
    services: usize,
) {
    for (key, n) in fresh.iter().take(LOG_EACH) {
        warn!("{key}: not published: {}", n.why);
    }
    if fresh.len() > LOG_EACH {
        warn!(
            "... and {} more not published; the metric portmap_objects_not_published names each",
            fresh.len() - LOG_EACH
        );
    }
    for key in recovered.iter().take(LOG_EACH) {
        info!("{key}: published now (room was made)");
    }
    if recovered.len() > LOG_EACH {
        info!("... and {} more published now", recovered.len() - LOG_EACH);
    }
    if !fresh.is_empty() || !recovered.is_empty() {
        if now.is_empty() {
            info!("all {services} services are published");
        } else {
            let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
            for n in now.values() {
                *by_reason.entry(n.reason).or_default() += 1;
            }
            let reasons: Vec<String> = by_reason
                .iter()
                .map(|(reason, n)| format!("{n} for want of {reason}"))
                .collect();
            warn!(
                "{} of {services} services are not published ({}); they are retried as room \
                 appears. The maps were sized when this dataplane was created: to size them for \
                 the current state, start anew (stop without --keep-datapath, or `portmap \
                 reset`, then `portmap run`), with --max-frontends / --max-backends if need be",
                now.len(),
                reasons.join(", ")
            );
        }
    }
}

/// Gives the allocator's free pages back to the system: reading, translating
/// and planning a large desired state leaves most of its peak free but
/// resident otherwise (glibc keeps freed memory in its arenas); so does a
/// scrape of the metrics.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Dataplane {
    /// Publishes what fits of `desired` and records the rest, which
    /// [`Dataplane::retry_unpublished`] tries again. An inconsistent desired
    /// state (the same frontend twice) is an error, and nothing is applied.
    pub fn publish(&mut self, desired: &DesiredState) -> Result<Published> {
        let published = self.publish_once(desired)?;
        self.publishing.pending = (!published.is_complete()).then(|| desired.clone());
        Ok(published)
    }

    /// Tries again what the last publish left out; `None` if nothing was.
    pub fn retry_unpublished(&mut self) -> Result<Option<Published>> {
        let Some(desired) = self.publishing.pending.take() else {
            return Ok(None);
        };
        let result = self.publish_once(&desired);
        if !matches!(&result, Ok(p) if p.is_complete()) {
            self.publishing.pending = Some(desired);
        }
        result.map(Some)
    }

    fn publish_once(&mut self, desired: &DesiredState) -> Result<Published> {
        let started = Instant::now();
        let report = self.apply(desired)?;
        let published = self.publishing.record(desired, &report);
        trim_heap();
        log::debug!(
            "applied {} services in {:.3} s",
            desired.services.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(published)
    }

    /// The objects of the desired state not published, by key.
    pub fn unpublished(&self) -> &BTreeMap<String, NotPublished> {
        &self.publishing.unpublished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{
        Limits,
        alloc::GRACE,
        fake::{Lab, frontend, ready, service, state},
    };

    fn services(n: u16) -> DesiredState {
        state(
            (0..n)
                .map(|i| {
                    let ep = format!("198.19.{}.{}", i / 200, i % 200 + 1);
                    service(
                        &format!("svc-{i:03}"),
                        &[frontend("198.18.0.1", 1000 + i)],
                        &[ready(&ep)],
                    )
                })
                .collect(),
        )
    }

    fn publish(lab: &mut Lab, pub_: &mut Publishing, desired: &DesiredState) -> Published {
        let report = lab.apply(desired);
        pub_.record(desired, &report)
    }

    #[test]
    fn what_fits_is_published_the_rest_named_and_retried_when_room_appears() {
        let mut lab = Lab::with_limits(Limits {
            frontends: 8,
            backends: 8,
            conntrack: 64,
        });
        let mut p = Publishing::default();
        let ten = services(10);
        let first = publish(&mut lab, &mut p, &ten);
        assert_eq!((first.services, first.not_published), (10, 2), "{first:?}");
        assert!(first.typed.is_empty(), "cluster objects, not -p mappings");
        assert_eq!(lab.applied.services.len(), 8, "everything that fits");
        let left: Vec<&str> = p.unpublished.keys().map(String::as_str).collect();
        assert_eq!(left, ["svc-008", "svc-009"]);
        assert!(p.unpublished.values().all(|n| n.reason == "services"));

        // Two services go; their ids come back after the grace period.
        let mut eight = ten.clone();
        eight.services.drain(0..2);
        let second = publish(&mut lab, &mut p, &eight);
        assert_eq!(second.not_published, 2, "ids still cooling: {second:?}");
        lab.now += GRACE;
        let third = publish(&mut lab, &mut p, &eight);
        assert_eq!((third.not_published, third.recovered), (0, 2), "{third:?}");
        assert!(p.unpublished.is_empty());
    }

    #[test]
    fn unpublished_mappings_the_user_typed_are_told_apart() {
        let mut lab = Lab::with_limits(Limits {
            frontends: 1,
            backends: 1,
            conntrack: 64,
        });
        let mut p = Publishing::default();
        let mut two = services(2);
        two.services[1].name.clear();
        let result = publish(&mut lab, &mut p, &two);
        assert_eq!(result.typed.len(), 1, "{result:?}");
        assert_eq!(result.typed[0].0, "svc-001");
        // Gone from the desired state: forgotten, not "recovered".
        let one = state(vec![two.services[0].clone()]);
        let result = publish(&mut lab, &mut p, &one);
        assert_eq!((result.not_published, result.recovered), (0, 0));
    }
}
