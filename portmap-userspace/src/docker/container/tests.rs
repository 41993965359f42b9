//! Containers as a real engine (Debian's docker.io 20.10, API 1.41)
//! describes them: `docker run -d --name web -p 8080:3000 -p
//! 127.0.0.1:8081:3000 -p 9000-9001:7000-7001/udp -P --expose 5555` on a
//! daemon with `--ipv6`, inspected running and after `docker stop`.

use super::*;

const RUNNING: &str = include_str!("running.json");
const STOPPED: &str = include_str!("stopped.json");

fn inspect(json: &str) -> ContainerInspectResponse {
    serde_json::from_str(json).expect("bollard reads what the engine sent")
}

fn read(json: &str) -> Container {
    let (container, notes) = Container::from_inspect(&inspect(json)).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    container
}

/// `(frontends, backends)` of each service, as labels.
fn published(services: &[Service]) -> Vec<(String, Vec<String>, Vec<String>)> {
    services
        .iter()
        .map(|s| {
            (
                s.key.clone(),
                s.frontends.iter().map(Frontend::to_string).collect(),
                s.endpoints.iter().map(Endpoint::label).collect(),
            )
        })
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_running_container_publishes_every_binding_on_each_of_its_addresses() {
    let web = read(RUNNING);
    assert_eq!(web.name, "web");
    assert_eq!(web.label(), "web (ad81412cf217)");
    assert!(web.running);
    assert_eq!(web.started_at, "2026-11-30T08:18:12.537135401Z");
    assert_eq!(
        web.addrs,
        [
            "198.18.77.2".parse::<IpAddr>().unwrap(),
            "2001:db8:77::242:c612:4d02".parse().unwrap()
        ]
    );
    let services = web.services();
    assert!(
        services.iter().all(|s| s.container == "web"
            && s.name.is_empty()
            && s.when_empty == WhenEmpty::Reject)
    );
    let v6 = "[2001:db8:77::242:c612:4d02]";
    assert_eq!(
        published(&services),
        [
            (
                "container web (ad81412cf217) 3000/tcp ipv4".to_string(),
                strings(&["*:8080/tcp", "127.0.0.1:8081/tcp"]),
                strings(&["198.18.77.2:3000"])
            ),
            (
                "container web (ad81412cf217) 3000/tcp ipv6".to_string(),
                strings(&["[*]:8080/tcp"]),
                vec![format!("{v6}:3000")]
            ),
            // -P: the port the engine picked.
            (
                "container web (ad81412cf217) 5555/tcp ipv4".to_string(),
                strings(&["*:32768/tcp"]),
                strings(&["198.18.77.2:5555"])
            ),
            (
                "container web (ad81412cf217) 5555/tcp ipv6".to_string(),
                strings(&["[*]:32768/tcp"]),
                vec![format!("{v6}:5555")]
            ),
            // A range, port by port.
            (
                "container web (ad81412cf217) 7000/udp ipv4".to_string(),
                strings(&["*:9000/udp"]),
                strings(&["198.18.77.2:7000"])
            ),
            (
                "container web (ad81412cf217) 7000/udp ipv6".to_string(),
                strings(&["[*]:9000/udp"]),
                vec![format!("{v6}:7000")]
            ),
            (
                "container web (ad81412cf217) 7001/udp ipv4".to_string(),
                strings(&["*:9001/udp"]),
                strings(&["198.18.77.2:7001"])
            ),
            (
                "container web (ad81412cf217) 7001/udp ipv6".to_string(),
                strings(&["[*]:9001/udp"]),
                vec![format!("{v6}:7001")]
            ),
        ]
    );
    let state = crate::model::DesiredState { services };
    state
        .validate()
        .expect("one owner per frontend, one family per service");
}

#[test]
fn a_stopped_container_keeps_its_frontends_without_backends() {
    // What the engine says once it stopped: no ports, no addresses.
    let engine_view = read(STOPPED);
    assert!(!engine_view.running);
    assert!(engine_view.bindings.is_empty() && engine_view.addrs.is_empty());
    assert!(engine_view.services().is_empty());

    // What portmap keeps: the ports it had, refusing new flows.
    let stopped = read(RUNNING).stopped();
    assert_eq!(stopped.stopped(), stopped, "stopping twice keeps the ports");
    let services = stopped.services();
    assert_eq!(services.len(), 8);
    assert!(
        services
            .iter()
            .all(|s| s.endpoints.is_empty() && s.when_empty == WhenEmpty::Reject)
    );
    assert_eq!(
        services[0]
            .frontends
            .iter()
            .map(Frontend::to_string)
            .collect::<Vec<_>>(),
        ["*:8080/tcp", "127.0.0.1:8081/tcp"]
    );
}

#[test]
fn a_binding_of_a_family_the_container_lacks_publishes_nothing() {
    // A Compose network without IPv6: Docker still binds `::`, and its
    // userland proxy carries it to the IPv4 address; XDP does not translate
    // between families.
    let mut c = inspect(RUNNING);
    for endpoint in c
        .network_settings
        .as_mut()
        .and_then(|s| s.networks.as_mut())
        .unwrap()
        .values_mut()
    {
        endpoint.global_ipv6_address = Some(String::new());
    }
    let (v4_only, _) = Container::from_inspect(&c).unwrap();
    let services = v4_only.services();
    assert_eq!(services.len(), 4);
    assert!(services.iter().all(|s| s.key.ends_with("ipv4")));
    // Nor is one kept once it stops.
    assert_eq!(v4_only.stopped().services().len(), 4);
}

#[test]
fn a_container_on_two_networks_is_a_backend_on_each() {
    let mut c = inspect(RUNNING);
    let networks = c
        .network_settings
        .as_mut()
        .and_then(|s| s.networks.as_mut())
        .unwrap();
    let mut second = networks["bridge"].clone();
    second.ip_address = Some("198.19.1.2".into());
    second.global_ipv6_address = None;
    networks.insert("pmproj_default".into(), second);
    let (web, _) = Container::from_inspect(&c).unwrap();
    let first = &web.services()[0];
    assert_eq!(
        first
            .endpoints
            .iter()
            .map(Endpoint::label)
            .collect::<Vec<_>>(),
        ["198.18.77.2:3000", "198.19.1.2:3000"]
    );
}

#[test]
fn bindings_follow_dockers_notation() {
    let one = |port: &str, ip: &str, host_port: &str| {
        bindings_of(port, ip, host_port).map(|list| {
            list.iter()
                .map(|b| format!("{} -> {}", b.frontend, b.container_port))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        one("53/udp", "0.0.0.0", "5353").unwrap(),
        ["*:5353/udp -> 53"]
    );
    assert_eq!(
        one("80/tcp", "", "8080").unwrap(),
        ["*:8080/tcp -> 80", "[*]:8080/tcp -> 80"],
        "an empty HostIp (older engines) is every address"
    );
    assert_eq!(
        one("80/tcp", "::1", "8080").unwrap(),
        ["[::1]:8080/tcp -> 80"]
    );
    assert_eq!(
        one("80/tcp", "198.18.0.1", "8080").unwrap(),
        ["198.18.0.1:8080/tcp -> 80"]
    );
    assert!(
        one("80/sctp", "0.0.0.0", "8080")
            .unwrap_err()
            .contains("sctp")
    );
    assert!(
        one("80/tcp", "0.0.0.0", "")
            .unwrap_err()
            .contains("host port")
    );
    assert!(one("80/tcp", "0.0.0.0", "0").is_err());
    assert!(one("x/tcp", "0.0.0.0", "80").is_err());
    assert!(
        one("80/tcp", "localhost", "80")
            .unwrap_err()
            .contains("localhost")
    );
}

#[test]
fn unpublishable_bindings_are_noted_and_the_rest_published() {
    let mut c = inspect(RUNNING);
    let ports = c
        .network_settings
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .unwrap();
    ports.insert(
        "132/sctp".into(),
        Some(vec![bollard::models::PortBinding {
            host_ip: Some("0.0.0.0".into()),
            host_port: Some("132".into()),
        }]),
    );
    let (web, notes) = Container::from_inspect(&c).unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(web.services().len(), 8);
}
