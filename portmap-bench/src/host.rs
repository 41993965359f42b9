//! What the benchmark needs from the host (tools) and tells about it (the
//! machine, the command line).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portmap_testkit::{process::which, signals};

use super::{BenchArgs, Mode, results::Machine};

pub fn tools(args: &BenchArgs) -> Result<(PathBuf, PathBuf)> {
    for (tool, package) in [("ip", "iproute2"), ("ethtool", "ethtool")] {
        if which(tool).is_none() {
            bail!("{tool} is missing: install {package}");
        }
    }
    // The TCP measurements of every mode: bulk transfers, HTTP requests.
    for (tool, package) in [("iperf3", "iperf3"), ("nginx", "nginx")] {
        if !args.soak && which(tool).is_none() {
            bail!("{tool} is missing: install {package} (`cargo xtask setup` does)");
        }
    }
    let need = |mode: Mode, tool: &str, package: &str| -> Result<PathBuf> {
        match which(tool) {
            Some(p) => Ok(p),
            None if args.modes.contains(&mode) => bail!(
                "{tool} is missing, and --modes includes {}: install {package}, or leave {} out of --modes",
                mode.name(),
                mode.name()
            ),
            None => Ok(PathBuf::from(tool)),
        }
    };
    Ok((
        need(Mode::Iptables, &args.iptables_restore, "iptables")?,
        need(Mode::Nftables, "nft", "nftables")?,
    ))
}

fn version_of(tool: &Path, flag: &str) -> String {
    Command::new(tool)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "not installed".into())
}

pub fn machine(iptables_restore: &Path, nft: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Machine {
        cpu_model,
        cores,
        kernel: format!(
            "{} {} {} ({})",
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease"),
            read("/proc/sys/kernel/version"),
            std::env::consts::ARCH
        ),
        iptables: version_of(iptables_restore, "--version"),
        nft: version_of(nft, "--version"),
    }
}

/// Set by `cargo xtask bench` to the command the user typed.
pub const VIA_ENV: &str = "PORTMAP_BENCH_VIA";

/// This process's command line (and the `cargo xtask bench` that ran it).
pub fn command_line() -> String {
    let own = own_command_line();
    match std::env::var(VIA_ENV) {
        Ok(via) if !via.trim().is_empty() => format!("{} (which ran {own})", via.trim()),
        _ => own,
    }
}

fn own_command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Busy and total jiffies of all CPUs, from the first line of /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq (steal, time the hypervisor
    // gave to others, is neither ours nor idle)
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(7).sum();
    Some((total - idle, total))
}

/// Waits, up to `max`, until the machine is quiet: less than `QUIET` of its
/// CPU time busy over a quarter of a second. Tearing down a namespace that
/// held 10,000 iptables rules or nftables elements goes on in kernel workers
/// for seconds after `ip netns delete`; the next cell must not pay for it.
/// Returns the time waited.
pub fn wait_until_quiet(max: Duration) -> Result<Duration> {
    const QUIET: f64 = 0.15;
    const WINDOW: Duration = Duration::from_millis(250);
    let start = Instant::now();
    let Some(mut last) = cpu_jiffies() else {
        return Ok(Duration::ZERO);
    };
    while start.elapsed() < max {
        signals::sleep(WINDOW)?;
        let Some(now) = cpu_jiffies() else { break };
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        last = now;
        if total > 0 && (busy as f64) < QUIET * total as f64 {
            break;
        }
    }
    Ok(start.elapsed())
}
