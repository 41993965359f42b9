//! The `-p/--publish` SPEC: Docker's `-p` with the backend made explicit,
//! parsed into a [`PublishSpec`].
//!
//! ```text
//! [HOST_IP:]HOST_PORT[-END]:BACKEND_IP:BACKEND_PORT[-END][/tcp|/udp]
//! ```
//!
//! IPv6 addresses go in brackets. Without HOST_IP (or with `0.0.0.0` / `[::]`)
//! the port is published on every node address of the backend's family.
//!
//! Only the text is this module's: the types it parses into are the model's,
//! which the dataplane and the Kubernetes translation use without knowing
//! about the command line.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    str::FromStr,
};

use crate::model::{HostAddr, Protocol, PublishSpec};

impl FromStr for PublishSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (body, proto) = match s.rsplit_once('/') {
            Some((body, proto)) => (body, parse_proto(proto)?),
            None => (s, Protocol::Tcp),
        };
        let parts = split_colons(body)?;
        let (host, host_ports, backend, backend_ports) = match parts.as_slice() {
            [hp, bip, bp] => (None, *hp, *bip, *bp),
            [hip, hp, bip, bp] => (Some(*hip), *hp, *bip, *bp),
            _ => {
                return Err(format!(
                    "expected [HOST_IP:]HOST_PORT:BACKEND_IP:BACKEND_PORT[/PROTO], got {} \
                     colon-separated fields (IPv6 addresses go in brackets)",
                    parts.len()
                ));
            }
        };
        // Checked in the order the fields are written, so the message names the
        // first one that is wrong.
        let host = match host {
            None => None,
            Some(h) => Some(match parse_ip(h, "host address")? {
                IpAddr::V4(ip) if ip.is_unspecified() => HostAddr::AllV4,
                IpAddr::V6(ip) if ip.is_unspecified() => HostAddr::AllV6,
                ip if ip.is_multicast() || is_broadcast(ip) => {
                    return Err(format!("host address {ip} is not a unicast address"));
                }
                ip => HostAddr::Ip(ip),
            }),
        };
        let host_ports = parse_ports(host_ports, "host port")?;
        let backend = parse_ip(backend, "backend address")?;
        if backend.is_unspecified() || backend.is_multicast() || is_broadcast(backend) {
            return Err(format!(
                "backend address {backend} is not a unicast address"
            ));
        }
        let backend_ports = parse_ports(backend_ports, "backend port")?;
        let host = host.unwrap_or(if backend.is_ipv4() {
            HostAddr::AllV4
        } else {
            HostAddr::AllV6
        });
        if host.is_ipv4() != backend.is_ipv4() {
            return Err(format!(
                "host address {host} and backend address {backend} are of different IP families"
            ));
        }
        if host_ports.len() != backend_ports.len() {
            return Err(format!(
                "host port range {}-{} has {} ports but backend port range {}-{} has {}",
                host_ports.start(),
                host_ports.end(),
                host_ports.len(),
                backend_ports.start(),
                backend_ports.end(),
                backend_ports.len()
            ));
        }
        Ok(PublishSpec {
            host,
            host_ports,
            backend,
            backend_ports,
            proto,
        })
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4 == Ipv4Addr::BROADCAST)
}

fn parse_proto(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("unknown protocol '{s}' (expected tcp or udp)")),
    }
}

/// Splits on the colons outside brackets.
fn split_colons(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(format!("unbalanced brackets in '{s}'")),
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced brackets in '{s}'"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr, String> {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("{what} '{s}' is not an IPv6 address"));
    }
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| {
        if s.parse::<Ipv6Addr>().is_ok() {
            format!("{what} '{s}' is IPv6 and must be written in brackets: [{s}]")
        } else {
            format!("{what} '{s}' is not an IP address")
        }
    })
}

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{what} '{s}' is not a number"))?;
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{what} {n} is out of range 1-65535")),
    }
}

fn parse_ports(s: &str, what: &str) -> Result<RangeInclusive<u16>, String> {
    match s.split_once('-') {
        None => parse_port(s, what).map(|p| p..=p),
        Some((a, b)) => {
            let (a, b) = (parse_port(a, what)?, parse_port(b, what)?);
            if a > b {
                return Err(format!("{what} range {a}-{b} ends before it starts"));
            }
            Ok(a..=b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PublishSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<PublishSpec>() {
            Ok(spec) => panic!("{s} parsed as {spec:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn docker_style_specs() {
        let s = ok("8080:198.18.2.2:3000");
        assert_eq!(s.host, HostAddr::AllV4);
        assert_eq!(s.host_ports, 8080..=8080);
        assert_eq!(s.backend, "198.18.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(s.backend_ports, 3000..=3000);
        assert_eq!(s.proto, Protocol::Tcp);

        let s = ok("127.0.0.1:8080:198.18.2.2:80/udp");
        assert_eq!(s.host, HostAddr::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(s.proto, Protocol::Udp);

        assert_eq!(ok("0.0.0.0:80:198.18.2.2:80").host, HostAddr::AllV4);
        assert_eq!(ok("[::]:80:[2001:db8::2]:80").host, HostAddr::AllV6);
        assert_eq!(ok("80:[2001:db8::2]:80/TCP").host, HostAddr::AllV6);
    }

    #[test]
    fn ipv6_in_brackets() {
        let s = ok("[2001:db8::1]:8080:[2001:db8:1::2]:3000/udp");
        assert_eq!(s.host, HostAddr::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(s.backend, "2001:db8:1::2".parse::<IpAddr>().unwrap());
        assert_eq!(s.host.to_string(), "[2001:db8::1]");
        assert_eq!(HostAddr::AllV4.to_string(), "*");
        assert_eq!(HostAddr::AllV6.to_string(), "[*]");
    }

    #[test]
    fn ranges_map_port_by_port() {
        let s = ok("8000-8002:198.18.2.2:9000-9002/udp");
        assert_eq!(
            s.port_pairs().collect::<Vec<_>>(),
            vec![(8000, 9000), (8001, 9001), (8002, 9002)]
        );
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let cases = [
            ("0:198.18.2.2:80", "host port 0 is out of range"),
            ("70000:198.18.2.2:80", "host port 70000 is out of range"),
            ("80:198.18.2.2:65536", "backend port 65536 is out of range"),
            ("80:198.18.2.2:http", "backend port 'http' is not a number"),
            (
                "80:198.18.2.300:80",
                "backend address '198.18.2.300' is not an IP address",
            ),
            ("80:2001:db8::2:80", "colon-separated fields"),
            ("2001:db8::1:80:[2001:db8::2]:80", "colon-separated fields"),
            ("80:[2001:db8::2:80", "unbalanced brackets"),
            (
                "8000-8002:198.18.2.2:9000-9001",
                "has 3 ports but backend port range 9000-9001 has 2",
            ),
            ("8002-8000:198.18.2.2:9000-9002", "ends before it starts"),
            ("80:198.18.2.2:80/sctp", "unknown protocol 'sctp'"),
            ("80:198.18.2.2:80/", "unknown protocol ''"),
            ("198.18.0.1:80:[2001:db8::2]:80", "different IP families"),
            ("[2001:db8::1]:80:198.18.2.2:80", "different IP families"),
            ("80:0.0.0.0:80", "not a unicast address"),
            ("80:224.0.0.1:80", "not a unicast address"),
            ("80:198.18.2.2", "colon-separated fields"),
            (
                "8080:[2001:db8::2]:80:extra",
                "host address '8080' is not an IP address",
            ),
            ("", "colon-separated fields"),
            (":80:198.18.2.2:80", "host address is empty"),
        ];
        for (spec, want) in cases {
            let got = err(spec);
            assert!(got.contains(want), "{spec}: got {got:?}, want {want:?}");
        }
    }
}
