//! The API source's metrics: syncs, rejected Services, the watchers'
//! errors and relists, and the health kube-proxy's `/healthz` reports.

use std::sync::atomic::Ordering;

use prometheus_client::{
    collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{Resource, Status};

/// Reads a [`Status`] when scraped.
#[derive(Debug)]
pub struct Collector(pub Status);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    let no_labels: &[(&str, &str)] = &[];
    ConstGauge::new(value).encode(metric.encode_family(&no_labels)?)
}

impl collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        counter(
            &mut encoder,
            "portmap_kubernetes_syncs",
            "Syncs of the API server's changes after the first, by result; a failed one leaves the last good state in force and is tried again.",
            &[
                (
                    &[("result", "success")],
                    s.sync.successes.load(Ordering::Relaxed),
                ),
                (
                    &[("result", "failure")],
                    s.sync.failures.load(Ordering::Relaxed),
                ),
            ],
        )?;
        gauge(
            &mut encoder,
            "portmap_kubernetes_rejected_services",
            "The API server's Services not published as they are (each reported in the log and by an Event; each keeps what it had published), at the last sync.",
            i64::try_from(s.sync.rejected.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )?;
        let per_resource = |f: &dyn Fn(Resource) -> u64| Resource::ALL.map(|r| (r.as_str(), f(r)));
        let errors = per_resource(&|r| s.watch.errors(r));
        let relists = per_resource(&|r| s.watch.relists(r));
        for (name, help, values) in [
            (
                "portmap_kubernetes_watch_errors",
                "Errors of the watchers (failed lists and watches, expired resourceVersions, lost connections), by resource; each is retried with backoff.",
                errors,
            ),
            (
                "portmap_kubernetes_relists",
                "Lists after the first, by resource (after an expired resourceVersion or an error); the last list stays in force meanwhile.",
                relists,
            ),
        ] {
            let labels: Vec<[(&str, &str); 1]> =
                values.iter().map(|(r, _)| [("resource", *r)]).collect();
            let series: Vec<(&[(&str, &str)], u64)> = labels
                .iter()
                .zip(&values)
                .map(|(l, (_, v))| (l.as_slice(), *v))
                .collect();
            counter(&mut encoder, name, help, &series)?;
        }
        gauge(
            &mut encoder,
            "portmap_kubernetes_healthy",
            "1 while /livez answers 200: the first sync is programmed and no change has waited longer than the health timeout.",
            i64::from(s.health.healthy()),
        )?;
        Ok(())
    }
}
