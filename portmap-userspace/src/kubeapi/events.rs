//! Events about Services portmap cannot publish, on the Service (what
//! `kubectl describe service` and `kubectl get events` show), through
//! kube-rs' recorder (events.k8s.io/v1; a repeat becomes a series).

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::{
    Client, Resource as _,
    runtime::events::{Event, EventType, Recorder},
};
use log::warn;

/// Publishes Warning events as `portmap` on this node.
#[derive(Clone)]
pub struct Reporter {
    recorder: Recorder,
}

/// The reason of the events about a Service that is not published as it is.
pub const REASON: &str = "FailedToPublish";

impl Reporter {
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "portmap".into(),
            instance: Some(format!("portmap-{node_name}")),
        };
        Reporter {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Reports in the background (an API server that is away must not hold
    /// up a sync); a failure to report is logged.
    pub fn service_rejected(&self, service: &Service, note: String) {
        let reference: ObjectReference = service.object_ref(&());
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let event = Event {
                type_: EventType::Warning,
                reason: REASON.into(),
                // At most 1 kB, as the API requires.
                note: Some(truncate(note, 1024)),
                action: "Publish".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(
                    "kubernetes: reporting an event on Service {}/{}: {e}",
                    reference.namespace.unwrap_or_default(),
                    reference.name.unwrap_or_default()
                );
            }
        });
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max - 3;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str("...");
    }
    text
}
