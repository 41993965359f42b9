//! What a run measured (`results.json`), and the medians the report and the
//! charts are made of.

use serde::{Deserialize, Serialize};

use super::{
    bulk::Bulk,
    control::PortmapControl,
    footprint::Footprint,
    http::{HttpLoad, Peers},
    kubesync::KubeSync,
    latency::Latency,
    modes::{ChangeTimes, Features, Mode},
    xdpcost::XdpCost,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub iptables: String,
    pub nft: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub services: Vec<u32>,
    pub flows: u32,
    pub duration_s: f64,
    pub repeats: u32,
    pub modes: Vec<Mode>,
    pub connections: usize,
    pub fast_path: bool,
    pub portmap_features: Features,
    /// Service counts with TCP measurements.
    #[serde(default)]
    pub tcp_services: Vec<u32>,
    /// Parallel streams of the TCP bulk measurements (none in runs made
    /// before they existed).
    #[serde(default)]
    pub tcp_streams: Vec<u32>,
    /// Seconds each iperf3 transfer is measured.
    #[serde(default)]
    pub tcp_seconds: u32,
    /// Concurrent connections of the HTTP load.
    #[serde(default)]
    pub http_connections: u32,
    /// Service counts with remote-backend cells (none in runs from before
    /// they existed).
    #[serde(default)]
    pub remote_services: Vec<u32>,
    /// Whether each repetition started one mode later than the one before
    /// (false in results of runs from before it did: every repetition
    /// measured the modes in the order given).
    #[serde(default)]
    pub modes_rotate: bool,
}

/// One load-generator measurement.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Throughput {
    pub generated: u64,
    pub delivered: u64,
    pub seconds: f64,
    pub generated_pps: f64,
    pub delivered_pps: f64,
}

/// One (repetition, Service count, mode).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub rep: u32,
    pub services: u32,
    pub mode: Mode,
    pub latency: Option<Latency>,
    pub established: Option<Throughput>,
    pub new_flows: Option<Throughput>,
    /// iptables/nftables: loading the whole ruleset into the empty namespace.
    pub load_s: Option<f64>,
    pub change: Option<ChangeTimes>,
    /// The full iptables resync was not tried (it timed out at fewer Services).
    #[serde(default)]
    pub full_resync_skipped: bool,
    /// TCP bulk transfers (iperf3), one per stream count.
    #[serde(default)]
    pub bulk: Vec<Bulk>,
    /// Short HTTP requests, a new connection each.
    #[serde(default)]
    pub http: Option<HttpLoad>,
    /// Interfaces whose TSO was off during the TCP measurements (the kernel
    /// turns it off on a veth whose peer runs XDP).
    #[serde(default)]
    pub tso_off: Vec<String>,
}

/// Where the backends saw a remote cell's traffic come from: every frame,
/// connection and request must come from the translating node's address
/// towards them, else the cell measured something other than SNAT.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sources {
    /// The address expected: node A's on its link to node B.
    pub node: String,
    /// UDP frames at the sinks from it, and from any other address (both
    /// load measurements).
    pub udp_from_node: u64,
    pub udp_from_other: u64,
    /// HTTP requests nginx logged from it and from others.
    pub http: Peers,
}

/// Drops of new flows on the translating node during the new-flow load.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct NewFlowDrops {
    /// portmap: new flows refused for want of a free SNAT port
    /// (`snat_exhausted`).
    pub snat_exhausted: Option<u64>,
    /// iptables, nftables, forward: conntrack entries that could not be
    /// inserted (`insert_failed` + `drop` of /proc/net/stat/nf_conntrack).
    pub conntrack_refused: Option<u64>,
    /// ... and unreplied entries evicted to make room (`early_drop`).
    pub conntrack_evicted: Option<u64>,
}

/// One remote-backend cell: (repetition, Service count, mode) with the
/// backends behind another node, every flow masqueraded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteCell {
    pub rep: u32,
    pub services: u32,
    pub mode: Mode,
    pub established: Option<Throughput>,
    pub new_flows: Option<Throughput>,
    pub bulk: Vec<Bulk>,
    pub http: Option<HttpLoad>,
    pub sources: Sources,
    #[serde(default)]
    pub drops: NewFlowDrops,
    pub tso_off: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub version: u32,
    pub command: String,
    pub machine: Machine,
    pub config: Config,
    pub cells: Vec<Cell>,
    pub xdp_cost: Vec<XdpCost>,
    pub control: Vec<PortmapControl>,
    /// Following the API server (absent from results of older runs).
    #[serde(default)]
    pub kube_sync: Vec<KubeSync>,
    /// `portmap run` on default flags: start-up time and memory (none in
    /// runs made before it was measured).
    #[serde(default)]
    pub footprint: Vec<Footprint>,
    /// The remote-backend cells (none in runs from before they existed).
    #[serde(default)]
    pub remote: Vec<RemoteCell>,
    pub complete: bool,
    pub error: Option<String>,
    pub elapsed_s: f64,
}

/// Failed measurements among those made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Failures {
    pub failed: usize,
    pub of: usize,
    pub first: Option<String>,
}

/// A median and its spread over the repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

impl Results {
    /// A per-packet cost over the repetitions, from those that measured it:
    /// results of runs from before a case existed hold 0 for it.
    pub fn xdp_cost_stat(&self, f: impl Fn(&XdpCost) -> f64) -> Option<Stat> {
        Stat::of(self.xdp_cost.iter().map(f).filter(|ns| *ns > 0.0))
    }

    /// Whether every per-packet figure is the kernel's timing (see
    /// `XdpCost::kernel_timed`).
    pub fn xdp_kernel_timed(&self) -> bool {
        self.xdp_cost.iter().all(XdpCost::kernel_timed)
    }

    pub fn cells_of(&self, mode: Mode, services: u32) -> impl Iterator<Item = &Cell> {
        self.cells
            .iter()
            .filter(move |c| c.mode == mode && c.services == services)
    }

    /// A cell metric's median over repetitions.
    pub fn stat(
        &self,
        mode: Mode,
        services: u32,
        f: impl Fn(&Cell) -> Option<f64>,
    ) -> Option<Stat> {
        Stat::of(self.cells_of(mode, services).filter_map(f))
    }

    pub fn established(&self, mode: Mode, services: u32) -> Option<Stat> {
        self.stat(mode, services, |c| c.established.map(|t| t.delivered_pps))
    }

    pub fn new_flows(&self, mode: Mode, services: u32) -> Option<Stat> {
        self.stat(mode, services, |c| c.new_flows.map(|t| t.delivered_pps))
    }

    pub fn p50(&self, mode: Mode, services: u32) -> Option<Stat> {
        self.stat(mode, services, |c| c.latency.map(|l| l.p50_us))
    }

    pub fn p99(&self, mode: Mode, services: u32) -> Option<Stat> {
        self.stat(mode, services, |c| c.latency.map(|l| l.p99_us))
    }

    /// The TCP bulk throughput (Gbit/s) of the transfers that succeeded.
    pub fn bulk(&self, mode: Mode, services: u32, streams: u32) -> Option<Stat> {
        self.stat(mode, services, |c| {
            c.bulk
                .iter()
                .find(|b| b.streams == streams)
                .and_then(|b| b.gbps)
        })
    }

    /// The transfers of (mode, Service count, streams) that failed: how many
    /// of how many, and the first one's error.
    pub fn bulk_failures(&self, mode: Mode, services: u32, streams: u32) -> Failures {
        let mut f = Failures::default();
        for b in self
            .cells_of(mode, services)
            .flat_map(|c| c.bulk.iter().filter(|b| b.streams == streams))
        {
            f.of += 1;
            if let Some(e) = &b.error {
                f.failed += 1;
                f.first.get_or_insert_with(|| e.clone());
            }
        }
        f
    }

    /// HTTP requests per second (answered whole and right).
    pub fn http_rps(&self, mode: Mode, services: u32) -> Option<Stat> {
        self.stat(mode, services, |c| {
            c.http.as_ref().map(|h| h.requests_per_s)
        })
    }

    /// The Service counts with TCP measurements, ascending.
    pub fn tcp_counts(&self) -> Vec<u32> {
        let all = self.service_counts();
        if self.config.tcp_services.is_empty() {
            return all;
        }
        all.into_iter()
            .filter(|s| self.config.tcp_services.contains(s))
            .collect()
    }

    /// A remote cell metric's median over repetitions.
    pub fn remote_stat(
        &self,
        mode: Mode,
        services: u32,
        f: impl Fn(&RemoteCell) -> Option<f64>,
    ) -> Option<Stat> {
        Stat::of(
            self.remote
                .iter()
                .filter(|c| c.mode == mode && c.services == services)
                .filter_map(f),
        )
    }

    /// The remote cells' TCP bulk throughput (Gbit/s, transfers that
    /// succeeded) and how many failed of how many.
    pub fn remote_bulk(&self, mode: Mode, services: u32, streams: u32) -> (Option<Stat>, Failures) {
        let mut f = Failures::default();
        let transfers: Vec<&Bulk> = self
            .remote
            .iter()
            .filter(|c| c.mode == mode && c.services == services)
            .flat_map(|c| c.bulk.iter().filter(|b| b.streams == streams))
            .collect();
        for b in &transfers {
            f.of += 1;
            if let Some(e) = &b.error {
                f.failed += 1;
                f.first.get_or_insert_with(|| e.clone());
            }
        }
        (Stat::of(transfers.iter().filter_map(|b| b.gbps)), f)
    }

    /// The Service counts with remote cells, ascending.
    pub fn remote_counts(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.remote.iter().map(|c| c.services).collect();
        v.extend(&self.config.remote_services);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The Service counts measured, ascending.
    pub fn service_counts(&self) -> Vec<u32> {
        let mut v = self.config.services.clone();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let s = Stat::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of([1.0, 2.0]).unwrap().median, 1.5);
        assert!(Stat::of([]).is_none());
        assert!(Stat::of([f64::NAN]).is_none());
    }
}
