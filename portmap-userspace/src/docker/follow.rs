//! Following a Docker Engine: list and inspect the containers, then re-read
//! each container the event stream names (`start`, `die`, `destroy`,
//! `rename`; network `connect`, `disconnect`). Events carry no addresses, so
//! every event is answered by an inspect: the container as it is now, which
//! also makes events replayed or seen twice harmless. A lost engine (a
//! restart, a broken stream) leaves the last state in force; the follower
//! reconnects with backoff and lists everything again.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow};
use bollard::{
    API_DEFAULT_VERSION, Docker,
    errors::Error as DockerError,
    models::{ContainerSummaryStateEnum, EventMessage, EventMessageTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt as _;
use log::{debug, info, warn};
use tokio::sync::watch;

use super::{Container, DockerHost};

/// How long one request (not the event stream) may take.
const REQUEST_TIMEOUT_S: u64 = 10;
/// The first wait before reconnecting, doubled after each failure up to
/// [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While the engine stays unreachable, how often the log says so again.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(30);
/// Events from this long before a listing are asked for again when the
/// stream opens: an engine's clock read over TCP may lag ours.
const REPLAY_MARGIN: Duration = Duration::from_secs(1);

/// The engine's events that may change what a container publishes.
const CONTAINER_EVENTS: [&str; 4] = ["start", "die", "destroy", "rename"];
const NETWORK_EVENTS: [&str; 2] = ["connect", "disconnect"];

/// The containers of one engine, kept current.
pub struct Follower {
    host: DockerHost,
    client: Docker,
    /// By full id.
    containers: BTreeMap<String, Container>,
    /// When the last full listing started: the event stream replays from
    /// there, so nothing that happened during the listing is missed.
    listed_at: SystemTime,
}

impl Follower {
    /// Connects (negotiating the API version: Debian's docker.io 20.10
    /// speaks 1.41) and reads every container. An engine that cannot be
    /// reached is an error naming its address.
    pub async fn connect(host: DockerHost) -> Result<Self> {
        let (client, engine) = connect(&host)
            .await
            .with_context(|| format!("cannot reach the Docker Engine at {host}"))?;
        let mut follower = Follower {
            host,
            client,
            containers: BTreeMap::new(),
            listed_at: UNIX_EPOCH,
        };
        follower.resync().await.with_context(|| {
            format!(
                "reading the containers of the Docker Engine at {}",
                follower.host
            )
        })?;
        info!(
            "following {engine} at {}: {} containers running",
            follower.host,
            follower.running()
        );
        Ok(follower)
    }

    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// Every container known, running or stopped, by id.
    pub fn containers(&self) -> Vec<Container> {
        self.containers.values().cloned().collect()
    }

    fn running(&self) -> usize {
        self.containers.values().filter(|c| c.running).count()
    }

    /// Follows the engine until the future is dropped, sending the
    /// containers on `tx` after each change.
    pub async fn run(mut self, tx: watch::Sender<Vec<Container>>) -> Result<()> {
        loop {
            let why = self.follow_events(&tx).await;
            warn!(
                "lost the Docker Engine at {}: {why:#}; the last state stays in force ({} \
                 containers running) while reconnecting",
                self.host,
                self.running()
            );
            self.reconnect().await;
            tx.send_replace(self.containers());
        }
    }

    /// Reads events until the stream ends or fails; returns why.
    async fn follow_events(&mut self, tx: &watch::Sender<Vec<Container>>) -> anyhow::Error {
        let since = self
            .listed_at
            .checked_sub(REPLAY_MARGIN)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let filters = HashMap::from([
            (
                "type".to_string(),
                vec!["container".into(), "network".into()],
            ),
            (
                "event".to_string(),
                CONTAINER_EVENTS
                    .iter()
                    .chain(&NETWORK_EVENTS)
                    .map(|e| e.to_string())
                    .collect(),
            ),
        ]);
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(filters),
        };
        let client = self.client.clone();
        let mut events = client.events(Some(options));
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => return anyhow!(e).context("the event stream broke"),
            };
            let Some(id) = container_of(&event) else {
                continue;
            };
            debug!(
                "docker event {} {} ({})",
                event.action.as_deref().unwrap_or("?"),
                super::short_id(&id),
                self.host
            );
            match self.refresh(&id).await {
                Ok(true) => {
                    tx.send_replace(self.containers());
                }
                Ok(false) => {}
                Err(e) => return e.context(format!("inspecting container {id}")),
            }
        }
        anyhow!("the engine closed the event stream")
    }

    /// Reconnects, with backoff, until the engine answers and every
    /// container has been read again.
    async fn reconnect(&mut self) {
        let lost = Instant::now();
        let mut said = lost;
        let mut delay = BACKOFF_FIRST;
        loop {
            tokio::time::sleep(delay).await;
            let attempt = async {
                let (client, engine) = connect(&self.host).await?;
                self.client = client;
                self.resync().await?;
                Ok::<_, anyhow::Error>(engine)
            };
            match attempt.await {
                Ok(engine) => {
                    info!(
                        "reconnected to {engine} at {} after {:.1?}; resynced: {} containers \
                         running",
                        self.host,
                        lost.elapsed(),
                        self.running()
                    );
                    return;
                }
                Err(e) if said.elapsed() >= STILL_DOWN_EVERY => {
                    warn!(
                        "the Docker Engine at {} is still unreachable after {:.0?} ({e:#}); \
                         retrying every {BACKOFF_MAX:?}",
                        self.host,
                        lost.elapsed()
                    );
                    said = Instant::now();
                }
                Err(e) => debug!("reconnecting to {}: {e:#}", self.host),
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Lists every container and inspects those that run. One that stopped
    /// meanwhile keeps the ports it had (refusing new flows); one that is
    /// gone is forgotten.
    async fn resync(&mut self) -> Result<()> {
        let listed_at = SystemTime::now();
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let listed = self.client.list_containers(Some(options)).await?;
        let mut next = BTreeMap::new();
        for summary in listed {
            let Some(id) = summary.id else {
                continue;
            };
            let runs = matches!(
                summary.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::PAUSED
                        | ContainerSummaryStateEnum::RESTARTING
                )
            );
            let known = self.containers.get(&id);
            let container = if runs || known.is_some() {
                self.inspect(&id, known).await?
            } else {
                None
            };
            if let Some(container) = container {
                next.insert(id, container);
            }
        }
        self.containers = next;
        self.listed_at = listed_at;
        Ok(())
    }

    /// Reads one container again; says whether what portmap keeps of it
    /// changed.
    async fn refresh(&mut self, id: &str) -> Result<bool> {
        let known = self.containers.get(id);
        let now = self.inspect(id, known).await?;
        let changed = now.as_ref() != known;
        match now {
            Some(container) => self.containers.insert(id.to_string(), container),
            None => self.containers.remove(id),
        };
        Ok(changed)
    }

    /// The container as portmap keeps it: as inspected while it runs; once
    /// stopped, what it published while it ran (`known`), without backends;
    /// `None` once it is gone, or if it is stopped and was never seen running.
    async fn inspect(&self, id: &str, known: Option<&Container>) -> Result<Option<Container>> {
        let inspected = match self.client.inspect_container(id, None).await {
            Ok(inspected) => inspected,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (container, notes) = Container::from_inspect(&inspected).map_err(|e| anyhow!(e))?;
        if container.running {
            for note in notes {
                warn!("container {}: {note}", container.label());
            }
            return Ok(Some(container));
        }
        Ok(known.map(|k| Container {
            name: container.name,
            ..k.stopped()
        }))
    }
}

/// The container an event is about: the actor of a container event, the
/// `container` attribute of a network event.
fn container_of(event: &EventMessage) -> Option<String> {
    let actor = event.actor.as_ref()?;
    match event.typ? {
        EventMessageTypeEnum::CONTAINER => actor.id.clone(),
        EventMessageTypeEnum::NETWORK => actor.attributes.as_ref()?.get("container").cloned(),
        _ => None,
    }
}

/// A client of the engine at `host` speaking the engine's API version (the
/// highest both know), and how to name the engine.
async fn connect(host: &DockerHost) -> Result<(Docker, String)> {
    // DOCKER_HOST is taken unchecked: check it here.
    host.as_str()
        .parse::<DockerHost>()
        .map_err(|e| anyhow!(e))?;
    let client = if host.as_str().starts_with("unix://") {
        Docker::connect_with_unix(host.as_str(), REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(host.as_str(), REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
    }?;
    let client = client.negotiate_version().await?;
    let version = client.version().await?;
    let engine = format!(
        "Docker Engine {} (API {})",
        version.version.as_deref().unwrap_or("?"),
        client.client_version()
    );
    Ok((client, engine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_container() {
        // As the engine sends them (API 1.41).
        let start = r#"{"status":"start","id":"ad81412cf217","from":"pm-busybox:test","Type":"container","Action":"start","Actor":{"ID":"ad81412cf217","Attributes":{"image":"pm-busybox:test","name":"web"}},"scope":"local","time":1764490692,"timeNano":1764490692537135401}"#;
        let connect = r#"{"Type":"network","Action":"connect","Actor":{"ID":"a2c873f7e700","Attributes":{"container":"ad81412cf217","name":"bridge","type":"bridge"}},"scope":"local","time":1764490692,"timeNano":1764490692400000000}"#;
        let create = r#"{"Type":"network","Action":"create","Actor":{"ID":"35c805183905","Attributes":{"name":"pmnet","type":"bridge"}},"scope":"local","time":1764490700,"timeNano":1764490700000000000}"#;
        let image = r#"{"Type":"image","Action":"pull","Actor":{"ID":"busybox","Attributes":{}},"scope":"local","time":1,"timeNano":1}"#;
        let of = |json: &str| container_of(&serde_json::from_str(json).unwrap());
        assert_eq!(of(start).as_deref(), Some("ad81412cf217"));
        assert_eq!(of(connect).as_deref(), Some("ad81412cf217"));
        assert_eq!(of(create), None);
        assert_eq!(of(image), None);
    }
}
