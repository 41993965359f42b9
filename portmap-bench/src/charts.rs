//! SVG charts of throughput and latency against the Service count, one line
//! per mode (medians, with the spread as error bars).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::{
    modes::Mode,
    results::{Results, Stat},
};

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Portmap => RGBColor(0x1f, 0x77, 0xb4),
        Mode::Iptables => RGBColor(0xd6, 0x27, 0x28),
        Mode::Nftables => RGBColor(0xff, 0x7f, 0x0e),
        Mode::Forward => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

struct Series {
    mode: Mode,
    /// The legend's text: the mode, and whether its measurements failed.
    label: String,
    points: Vec<(f64, Stat)>,
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    scale: f64,
    xs: &[f64],
    series: &[Series],
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1.max / scale))
        .fold(0.0f64, f64::max);
    // The x range comes from the Service counts asked for, so a chart
    // without data (a run that stopped early) still has a sane range.
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let xmin = if xmin.is_finite() { xmin.max(1.0) } else { 1.0 };
    let xmax = xs.iter().copied().fold(xmin, f64::max);
    let (xmin, xmax) = (xmin / 2.0, (xmax * 2.0).max(xmin * 4.0));
    // Headroom above the data for the legend.
    let ymax = if ymax.is_finite() && ymax > 0.0 {
        ymax * 1.45
    } else {
        1.0
    };
    let decimals = if ymax >= 20.0 { 0 } else { 2 };

    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..ymax)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("Services")
        .y_desc(y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .draw()
        .map_err(|e| err(&e))?;
    for s in series {
        let col = color(s.mode);
        let line: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|(x, st)| (*x, st.median / scale))
            .collect();
        c.draw_series(LineSeries::new(line.clone(), col.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(line.iter().map(|p| Circle::new(*p, 4, col.filled())))
            .map_err(|e| err(&e))?;
        c.draw_series(s.points.iter().map(|(x, st)| {
            PathElement::new(
                vec![(*x, st.min / scale), (*x, st.max / scale)],
                col.stroke_width(1),
            )
        }))
        .map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn series(r: &Results, f: impl Fn(Mode, u32) -> Option<Stat>) -> Vec<Series> {
    series_failing(r, f, |_, _| false)
}

/// Series of the modes; a mode with a failed measurement keeps its legend
/// entry, marked FAILED, even with no point to draw.
fn series_failing(
    r: &Results,
    f: impl Fn(Mode, u32) -> Option<Stat>,
    failed: impl Fn(Mode, u32) -> bool,
) -> Vec<Series> {
    r.config
        .modes
        .iter()
        .map(|&mode| {
            let counts = r.service_counts();
            let any_failed = counts.iter().any(|&s| failed(mode, s));
            Series {
                mode,
                label: if any_failed {
                    format!("{}: FAILED", mode.name())
                } else {
                    mode.name().to_string()
                },
                points: counts
                    .into_iter()
                    .filter(|&s| !failed(mode, s))
                    .filter_map(|s| f(mode, s).map(|st| (f64::from(s), st)))
                    .collect(),
            }
        })
        .filter(|s| !s.points.is_empty() || s.label.ends_with("FAILED"))
        .collect()
}

/// The TCP charts of a run that measured TCP: file name, what it shows.
pub fn tcp_charts(r: &Results) -> Vec<(String, String)> {
    if !r.cells.iter().any(|c| !c.bulk.is_empty()) {
        return Vec::new();
    }
    let mut v: Vec<(String, String)> = r
        .config
        .tcp_streams
        .iter()
        .map(|n| {
            let plural = if *n == 1 { "" } else { "s" };
            (
                format!("tcp_bulk_{n}.svg"),
                format!("TCP bulk throughput, {n} stream{plural}"),
            )
        })
        .collect();
    if r.cells.iter().any(|c| c.http.is_some()) {
        v.push(("http_requests.svg".into(), "short HTTP requests".into()));
    }
    v
}

/// The remote-backend charts of a run that has remote cells: file name,
/// what it shows.
pub fn remote_charts(r: &Results) -> Vec<(String, String)> {
    if r.remote.is_empty() {
        return Vec::new();
    }
    let mut v = vec![
        (
            "remote_established.svg".to_string(),
            "established flows to backends on another node (SNAT)".to_string(),
        ),
        (
            "remote_new.svg".to_string(),
            "new flows to backends on another node (SNAT)".to_string(),
        ),
    ];
    for n in &r.config.tcp_streams {
        v.push((
            format!("remote_tcp_bulk_{n}.svg"),
            format!("TCP bulk throughput to backends on another node, {n} stream(s)"),
        ));
    }
    v.push((
        "remote_http.svg".to_string(),
        "short HTTP requests to backends on another node".to_string(),
    ));
    v
}

fn write_remote(r: &Results, dir: &Path) -> Result<()> {
    let xs: Vec<f64> = r.remote_counts().into_iter().map(f64::from).collect();
    let remote_series = |f: &dyn Fn(Mode, u32) -> Option<Stat>,
                         failed: &dyn Fn(Mode, u32) -> bool| {
        r.config
            .modes
            .iter()
            .map(|&mode| {
                let counts = r.remote_counts();
                let any_failed = counts.iter().any(|&s| failed(mode, s));
                Series {
                    mode,
                    label: if any_failed {
                        format!("{}: FAILED", mode.name())
                    } else {
                        mode.name().to_string()
                    },
                    points: counts
                        .into_iter()
                        .filter(|&s| !failed(mode, s))
                        .filter_map(|s| f(mode, s).map(|st| (f64::from(s), st)))
                        .collect(),
                }
            })
            .filter(|s| !s.points.is_empty() || s.label.ends_with("FAILED"))
            .collect::<Vec<_>>()
    };
    let never = |_: Mode, _: u32| false;
    for (name, _) in remote_charts(r) {
        let path = dir.join(&name);
        match name.as_str() {
            "remote_established.svg" => chart(
                &path,
                "Remote backends (SNAT), established flows: delivered packets/s",
                "Mpps",
                1e6,
                &xs,
                &remote_series(
                    &|m, s| r.remote_stat(m, s, |c| c.established.map(|t| t.delivered_pps)),
                    &never,
                ),
            )?,
            "remote_new.svg" => chart(
                &path,
                "Remote backends (SNAT), new flows: delivered packets/s",
                "Mpps",
                1e6,
                &xs,
                &remote_series(
                    &|m, s| r.remote_stat(m, s, |c| c.new_flows.map(|t| t.delivered_pps)),
                    &never,
                ),
            )?,
            "remote_http.svg" => chart(
                &path,
                "Remote backends (SNAT), short HTTP requests: answered/s",
                "thousand requests/s",
                1e3,
                &xs,
                &remote_series(
                    &|m, s| r.remote_stat(m, s, |c| c.http.as_ref().map(|h| h.requests_per_s)),
                    &|m, s| {
                        r.remote.iter().any(|c| {
                            c.mode == m
                                && c.services == s
                                && c.http.as_ref().is_some_and(|h| h.failed > 0)
                        })
                    },
                ),
            )?,
            _ => {
                let Some(streams) = name
                    .strip_prefix("remote_tcp_bulk_")
                    .and_then(|n| n.strip_suffix(".svg"))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                chart(
                    &path,
                    &format!("Remote backends (SNAT), TCP bulk ({streams} stream(s)): received"),
                    "Gbit/s",
                    1.0,
                    &xs,
                    &remote_series(&|m, s| r.remote_bulk(m, s, streams).0, &|m, s| {
                        r.remote_bulk(m, s, streams).1.failed > 0
                    }),
                )?
            }
        }
    }
    Ok(())
}

/// Writes `throughput_established.svg`, `throughput_new.svg`, `latency.svg`,
/// the TCP charts ([`tcp_charts`]) and the remote ones ([`remote_charts`]).
pub fn write_all(r: &Results, dir: &Path) -> Result<()> {
    write_remote(r, dir)?;
    let xs: Vec<f64> = r.service_counts().into_iter().map(f64::from).collect();
    chart(
        &dir.join("throughput_established.svg"),
        &format!(
            "Established flows ({} flows): delivered packets/s",
            r.config.flows
        ),
        "Mpps",
        1e6,
        &xs,
        &series(r, |m, s| r.established(m, s)),
    )?;
    chart(
        &dir.join("throughput_new.svg"),
        "New flows (every packet a new flow): delivered packets/s",
        "Mpps",
        1e6,
        &xs,
        &series(r, |m, s| r.new_flows(m, s)),
    )?;
    chart(
        &dir.join("latency.svg"),
        "First-packet latency (TCP connect + request/response), p50",
        "µs",
        1.0,
        &xs,
        &series(r, |m, s| r.p50(m, s)),
    )?;
    for (name, _) in tcp_charts(r) {
        if name == "http_requests.svg" {
            chart(
                &dir.join(&name),
                "Short HTTP requests (a new connection each): answered/s",
                "thousand requests/s",
                1e3,
                &xs,
                &series_failing(
                    r,
                    |m, s| r.http_rps(m, s),
                    |m, s| {
                        r.cells_of(m, s)
                            .any(|c| c.http.as_ref().is_some_and(|h| h.failed > 0))
                    },
                ),
            )?;
            continue;
        }
        let Some(streams) = name
            .strip_prefix("tcp_bulk_")
            .and_then(|n| n.strip_suffix(".svg"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        chart(
            &dir.join(&name),
            &format!("TCP bulk throughput (iperf3 -R, {streams} stream(s)): received"),
            "Gbit/s",
            1.0,
            &xs,
            &series_failing(
                r,
                |m, s| r.bulk(m, s, streams),
                |m, s| r.bulk_failures(m, s, streams).failed > 0,
            ),
        )?;
    }
    Ok(())
}
