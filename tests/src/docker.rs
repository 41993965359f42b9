//! A Docker Engine of the test's own (`portmap_testkit::docker`), in the
//! node's network namespace, with an image holding busybox and
//! `portmap-testserver`, and a cgroup of the test's own: the containers run
//! in `CGROUP/docker/<id>`, node clients in `CGROUP/clients`, and portmap's
//! socket programs attach to `CGROUP` (`portmap run --cgroup`), so they
//! translate for both and for nothing else on the machine.

use anyhow::Result;
pub use portmap_testkit::docker::{COMPOSE, Options};

use crate::{bin_path, cgroup::Cgroup, netns::Netns, unique_name};

/// The image every test container runs.
pub const IMAGE: &str = "pm-busybox:test";

/// Field order is drop order: the engine (and the containers' cgroups),
/// then the clients' cgroup, then the parent.
pub struct Dockerd {
    engine: portmap_testkit::docker::Dockerd,
    clients: Cgroup,
    cgroup: Cgroup,
}

impl std::ops::Deref for Dockerd {
    type Target = portmap_testkit::docker::Dockerd;

    fn deref(&self) -> &Self::Target {
        &self.engine
    }
}

impl std::ops::DerefMut for Dockerd {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.engine
    }
}

impl Dockerd {
    /// Starts an engine in `ns` and imports [`IMAGE`].
    pub fn start(ns: &Netns, options: Options) -> Result<Self> {
        crate::require_root();
        let cgroup = Cgroup::new("dk")?;
        let clients = cgroup.child("clients")?;
        let parent = cgroup
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| format!("{n}/docker"));
        let options = Options {
            cgroup_parent: parent,
            ..options
        };
        let engine = portmap_testkit::docker::Dockerd::start(ns, &unique_name("dk"), options)?;
        engine.import_image(IMAGE, &[&bin_path("portmap-testserver")])?;
        Ok(Dockerd {
            engine,
            clients,
            cgroup,
        })
    }

    /// The cgroup whose processes (the containers and node clients) portmap
    /// translates at the socket: `portmap run --cgroup`.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The cgroup node clients run in (a child of [`Dockerd::cgroup`]: a
    /// cgroup with processes of its own could not enable controllers for
    /// the containers' cgroups).
    pub fn clients(&self) -> &Cgroup {
        &self.clients
    }

    /// `docker run -d --name NAME ARGS… IMAGE CMD…`; returns the id.
    pub fn run(&self, name: &str, args: &[&str], cmd: &[&str]) -> Result<String> {
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        all.push(IMAGE);
        all.extend_from_slice(cmd);
        self.docker(&all)
    }

    /// A container running `portmap-testserver --name NAME` on TCP and UDP
    /// `ports` (every address of both families), with `args` (`-p …`).
    pub fn run_testserver(&self, name: &str, args: &[&str], ports: &[u16]) -> Result<String> {
        let mut cmd = vec![
            "/bin/portmap-testserver".to_string(),
            "--name".into(),
            name.into(),
        ];
        for port in ports {
            for proto in ["--tcp", "--udp"] {
                cmd.extend([proto.to_string(), format!("[::]:{port}")]);
            }
        }
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        self.run(name, args, &cmd)
    }
}
