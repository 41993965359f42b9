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
            .label(s.mode.name())
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
    r.config
        .modes
        .iter()
        .map(|&mode| Series {
            mode,
            points: r
                .service_counts()
                .into_iter()
                .filter_map(|s| f(mode, s).map(|st| (f64::from(s), st)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// Writes `throughput_established.svg`, `throughput_new.svg` and `latency.svg`.
pub fn write_all(r: &Results, dir: &Path) -> Result<()> {
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
    )
}
