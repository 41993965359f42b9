//! Reading `/metrics` the way Prometheus would.

use std::{collections::BTreeMap, io::Read as _, io::Write as _, net::SocketAddr};

use anyhow::{Context as _, Result, bail};

use crate::{client, netns::Netns};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Sum of the series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any series of `name` has all of `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.iter().any(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

/// Parses the Prometheus/OpenMetrics text format (the subset portmap writes).
pub fn parse(text: &str) -> Result<Samples> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("bad line {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .with_context(|| format!("bad labels in {line:?}"))?;
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .with_context(|| format!("bad label in {line:?}"))?;
                    // Label values here never contain escaped quotes.
                    let (value, after) = after
                        .split_once('"')
                        .with_context(|| format!("bad label in {line:?}"))?;
                    labels.insert(key.to_string(), value.to_string());
                    rest = after.strip_prefix(',').unwrap_or(after);
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(Samples(out))
}

/// Scrapes `http://ADDR/metrics` from inside `ns`.
pub fn scrape(ns: &Netns, addr: SocketAddr) -> Result<Samples> {
    let mut stream = client::connect(ns, addr)?;
    // A scrape of a large cluster (200,000 series per 100,000 backends) takes
    // seconds in a debug build.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("malformed response: {response:?}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics: {head}");
    }
    // axum may answer with chunked encoding; strip chunk sizes if so.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    parse(&body)
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let s = parse(
            "# HELP x y\nportmap_packets_total{frontend=\"*:8080/tcp\",direction=\"request\"} 5\nplain 2.5\n# EOF\n",
        )
        .unwrap();
        assert_eq!(
            s.sum("portmap_packets_total", &[("frontend", "*:8080/tcp")]),
            5.0
        );
        assert_eq!(s.sum("plain", &[]), 2.5);
        assert!(!s.has("portmap_packets_total", &[("direction", "reply")]));
    }
}
