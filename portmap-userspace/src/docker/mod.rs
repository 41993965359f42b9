//! Docker as a source of the desired state (`portmap run --docker`): the
//! ports `docker run -p` and Compose `ports:` publish, read from a Docker
//! Engine through its API (the `bollard` client) and followed as containers
//! start, stop, move and go.
//!
//! Each running container's published ports become services (see
//! [`Container::services`]); a stopped container keeps its ports, refusing
//! new flows, until it runs again or is removed. The follower
//! ([`Follower`]) lists and inspects the containers, then follows the
//! engine's events; when it loses the engine it keeps the last state,
//! reconnects with backoff and lists everything again.

mod changes;
mod compose;
mod container;
mod follow;

use std::fmt;

pub use self::{
    changes::Published,
    compose::{Composed, compose},
    container::{Binding, Container, short_id},
    follow::Follower,
};

/// Where Docker listens by default.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// The address of a Docker Engine: `unix:///PATH`, `tcp://HOST:PORT` or
/// `http://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerHost(String);

impl DockerHost {
    /// `--docker-host`'s value if given, else `DOCKER_HOST`, else
    /// [`DEFAULT_HOST`], as the docker CLI chooses. `DOCKER_HOST` is taken
    /// as it is: if it is no engine address, connecting says so, naming it.
    pub fn choose(flag: Option<DockerHost>) -> Self {
        flag.unwrap_or_else(|| match std::env::var("DOCKER_HOST") {
            Ok(env) if !env.is_empty() => DockerHost(env),
            _ => DockerHost(DEFAULT_HOST.to_string()),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DockerHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = ["unix://", "tcp://", "http://"]
            .iter()
            .find_map(|scheme| s.strip_prefix(scheme));
        match rest {
            Some(rest) if !rest.is_empty() => Ok(DockerHost(s.to_string())),
            Some(_) => Err(format!("'{s}' names no socket or host")),
            None => Err(format!(
                "'{s}' is not a Docker Engine address: unix:///PATH, tcp://HOST:PORT or \
                 http://HOST:PORT"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_addresses() {
        for good in [
            "unix:///var/run/docker.sock",
            "tcp://198.18.0.1:2375",
            "http://[2001:db8::1]:2375",
        ] {
            assert_eq!(good.parse::<DockerHost>().unwrap().as_str(), good);
        }
        assert!(
            "/var/run/docker.sock"
                .parse::<DockerHost>()
                .unwrap_err()
                .contains("unix:///PATH")
        );
        assert!("unix://".parse::<DockerHost>().is_err());
        assert!("ssh://host".parse::<DockerHost>().is_err());
        let given: DockerHost = "unix:///run/x.sock".parse().unwrap();
        assert_eq!(DockerHost::choose(Some(given.clone())), given);
    }
}
