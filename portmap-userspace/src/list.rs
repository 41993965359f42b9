//! `portmap list`: what a running daemon publishes, with its counters.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Result;

use crate::{
    control,
    dataplane::{BackendStats, Counters, Role, Snapshot},
    model::EndpointState,
};

/// What `portmap list` is asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// The control socket of the daemon to ask.
    pub control_socket: PathBuf,
    /// JSON instead of a table.
    pub json: bool,
}

pub fn run(options: &Options) -> Result<()> {
    let snapshot = control::request_list(&options.control_socket)?;
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "interfaces": snapshot.interfaces,
                "socket_lb": snapshot.socket_lb,
                "services": snapshot.services,
                "events": snapshot.events,
            }))?
        );
    } else {
        print!("{}", render(&snapshot));
    }
    Ok(())
}

/// The interfaces, each attached or detached, and socket-level load
/// balancing, on or off and why.
fn header(snapshot: &Snapshot) -> String {
    let interfaces: Vec<String> = snapshot
        .interfaces
        .iter()
        .map(|i| {
            let role = match i.role {
                Role::Published => "",
                Role::Backend => "towards backends, ",
            };
            let state = if i.attached { "attached" } else { "detached" };
            format!("{} ({role}{state})", i.name)
        })
        .collect();
    let lb = &snapshot.socket_lb;
    let socket_lb = match (&lb.cgroup, &lb.off_because) {
        (Some(cgroup), _) if lb.enabled => format!("on (cgroup {})", cgroup.display()),
        (_, Some(why)) => format!("off: {why}"),
        _ => "off".to_string(),
    };
    format!(
        "interfaces: {}\nsocket-level load balancing: {socket_lb}\n",
        interfaces.join(", ")
    )
}

fn both(c: &Counters) -> (String, String) {
    (
        format!("{}/{}", c.request_packets, c.reply_packets),
        format!("{}/{}", c.request_bytes, c.reply_bytes),
    )
}

/// One line per frontend → backend. A frontend with one backend shows the
/// frontend's counters on that line; with several, a line for the frontend's
/// total, then one per backend with the backend's counters (summed over the
/// service's frontends, as the per-backend metrics are). A CONTAINER column
/// names the Docker container of each line when any is published.
pub fn render(snapshot: &Snapshot) -> String {
    let with_container = snapshot.services.iter().any(|s| !s.container.is_empty());
    let mut rows: Vec<Vec<String>> = vec![
        [
            "FRONTEND",
            "BACKEND",
            "STATE",
            "SERVICE",
            "CONTAINER",
            "PACKETS(req/rep)",
            "BYTES(req/rep)",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for svc in &snapshot.services {
        let service = match (svc.service.as_str(), svc.port_name.as_str()) {
            ("", _) => "-".to_string(),
            (name, "") => name.to_string(),
            (name, port) => format!("{name}:{port}"),
        };
        let container = match svc.container.as_str() {
            "" => "-".to_string(),
            name => name.to_string(),
        };
        let state = |be: &BackendStats| {
            let state = match be.state {
                EndpointState::Ready => "ready",
                EndpointState::Terminating => "terminating",
            };
            if be.in_table {
                state.to_string()
            } else {
                format!("{state},standby")
            }
        };
        let row = |frontend: String, backend: String, state: String, c: &Counters| {
            let (p, b) = both(c);
            vec![
                frontend,
                backend,
                state,
                service.clone(),
                container.clone(),
                p,
                b,
            ]
        };
        for fe in &svc.frontends {
            match svc.backends.as_slice() {
                [] => rows.push(row(
                    fe.frontend.clone(),
                    "-> (no backend)".into(),
                    "-".into(),
                    &fe.counters,
                )),
                [be] => rows.push(row(
                    fe.frontend.clone(),
                    format!("-> {}", be.backend),
                    state(be),
                    &fe.counters,
                )),
                many => {
                    rows.push(row(
                        fe.frontend.clone(),
                        format!("-> ({} backends)", many.len()),
                        "-".into(),
                        &fe.counters,
                    ));
                    for be in many {
                        rows.push(row(
                            "".into(),
                            format!("   {}", be.backend),
                            state(be),
                            &be.counters,
                        ));
                    }
                }
            }
        }
    }
    if !with_container {
        for row in &mut rows {
            row.remove(4);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = header(snapshot);
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
