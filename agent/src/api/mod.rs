//! The engine's output types: what every consumer reads (JSON Lines, plain lines, the
//! exporter, and later the history and the user socket).
//!
//! A [`Snapshot`] is immutable and self-contained: consumers never touch the process table or
//! the accountants, so they can run on other tasks and never stall the engine. Every type here
//! has `Serialize` and `Deserialize`, and the documents carry a `schema_version`; changing the
//! meaning or the name of a field means a new [`SCHEMA_VERSION`].

pub mod run;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::{attribution::EnergyBreakdown, carbon::Emissions, io::IoJson};

/// The version of the snapshot and of the documents built from it (interval line, run document).
pub const SCHEMA_VERSION: u32 = 1;

/// CPU time, energy, emissions and I/O of one consumer over some span (an interval, or since
/// the engine started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_time_s: f64,
    pub energy_j: EnergyBreakdown,
    pub emissions_g: Emissions,
    pub io: IoJson,
}

impl Usage {
    /// Adds `other` field by field.
    pub fn add(&mut self, other: &Usage) {
        self.cpu_time_s += other.cpu_time_s;
        self.energy_j.accumulate(&other.energy_j);
        self.emissions_g = self.emissions_g.add(&other.emissions_g);
        self.io.add(&other.io);
    }
}

/// A container, as far as its cgroup path shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Container {
    /// The container id (64 hex digits for docker, containerd and CRI-O).
    pub id: String,
    /// `docker`, `containerd`, `crio`, `podman` or `kubepods`.
    pub runtime: String,
    /// The Kubernetes pod uid, when the path is under `kubepods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One user process that was active in the interval (CPU time, energy or I/O).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: String,
    pub comm: String,
    /// cgroup v2 path, when read.
    pub cgroup: Option<String>,
    /// systemd unit from the cgroup path.
    pub unit: Option<String>,
    pub container: Option<Container>,
    /// Root of its process tree (the process just below init, or the followed command).
    pub tree_root: u32,
    /// This interval.
    pub interval: Usage,
    /// Since the agent first saw the process.
    pub total: Usage,
}

/// The kernel threads and the CPUs' idle tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    pub kernel: Usage,
    pub idle: Usage,
}

/// Joules metered (or estimated) per domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainJoules {
    pub cpu: f64,
    pub dram: f64,
    pub gpu: f64,
    pub platform: f64,
    /// Every joule once: `cpu + dram + gpu + platform`.
    pub total: f64,
    /// RAPL cores and uncore (inside `cpu`) and psys (contains `cpu`, `dram`, `platform`),
    /// when metered; never added to `total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncore: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psys: Option<f64>,
}

impl DomainJoules {
    pub fn add(&mut self, o: &DomainJoules) {
        self.cpu += o.cpu;
        self.dram += o.dram;
        self.gpu += o.gpu;
        self.platform += o.platform;
        self.total += o.total;
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.core = sum(self.core, o.core);
        self.uncore = sum(self.uncore, o.uncore);
        self.psys = sum(self.psys, o.psys);
    }

    /// `(domain name, joules)` for every domain and the total.
    pub fn by_domain(&self) -> [(&'static str, f64); 5] {
        [
            ("cpu", self.cpu),
            ("dram", self.dram),
            ("gpu", self.gpu),
            ("platform", self.platform),
            ("total", self.total),
        ]
    }
}

/// Where the interval's energy comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    /// `rapl-perf`, `rapl-powercap`, `model`, with `+nvml` when GPUs are metered.
    pub source: String,
    /// Whether any of it is estimated (the model) rather than metered.
    pub estimated: bool,
    /// This interval.
    pub energy_j: DomainJoules,
    /// Static power per domain (`cpu`, `dram`, `platform`, `gpu0`, …).
    #[serde(default)]
    pub static_power: BTreeMap<String, StaticPower>,
    /// How each GPU was shared among processes (`sm-utilization`, `memory`, `none`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_share_basis: BTreeMap<String, String>,
    /// perf vs powercap package energy, when both are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    /// Meter failures and fallbacks in this interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Static power of one domain and where it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StaticPower {
    pub watts: f64,
    /// `configured`, `model`, `learned` or `learned-provisional`.
    pub source: String,
}

/// How far the perf and powercap RAPL readings of package energy differ in one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub other: String,
    pub selected_j: f64,
    pub other_j: f64,
    pub relative_difference: f64,
}

/// The grid intensity and PUE used for the interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Carbon {
    /// gCO2e/kWh.
    pub intensity: f64,
    pub source: String,
    pub pue: f64,
    pub pue_source: String,
}

/// Cumulative figures of one scope key (a user, a systemd unit, a container) since the engine
/// started. Counters: they never decrease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeTotals {
    pub key: String,
    pub usage: Usage,
}

/// One exported process tree: energy since its series started (when it entered the top N).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeSeries {
    pub root_pid: u32,
    pub comm: String,
    pub user: String,
    pub usage: Usage,
}

/// Wasted I/O bytes found so far, per kind and user (non-decreasing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WastedBytes {
    /// `reread`, `refetch`, `copy`, `write_then_delete`, `duplicate`.
    pub kind: String,
    pub user: String,
    pub bytes: u64,
}

/// Totals since the engine started; every figure is a counter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cumulative {
    /// Seconds of intervals accounted.
    pub duration_s: f64,
    /// Meter energy per meter source: `(source, estimated, joules)`.
    pub meter: Vec<MeterTotal>,
    /// Every user process together, and the two buckets: with the buckets they add up to the
    /// meter's total.
    pub processes: Usage,
    pub buckets: Buckets,
    pub users: Vec<ScopeTotals>,
    pub units: Vec<ScopeTotals>,
    pub containers: Vec<ContainerTotals>,
    /// The top trees by energy (each from when it entered the top), and every other tree's
    /// energy in `other_trees`: trees + other = processes, in rate.
    pub trees: Vec<TreeSeries>,
    pub other_trees: Usage,
    pub wasted: Vec<WastedBytes>,
}

/// Meter energy of one source since the engine started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterTotal {
    pub source: String,
    pub estimated: bool,
    pub energy_j: DomainJoules,
}

/// Cumulative figures of one container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerTotals {
    pub container: Container,
    pub usage: Usage,
}

/// One process tree (a process just below init, or a followed root, with all its descendants,
/// exited ones included): what the live view lists. Only in snapshots of engines asked for
/// trees ([`crate::engine::EngineOptions::trees`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeTotals {
    pub root_pid: u32,
    pub comm: String,
    pub user: String,
    /// Processes in the tree since the agent saw it, those that exited included.
    pub processes: u64,
    /// The whole tree, this interval.
    pub interval: Usage,
    /// The whole tree, since the agent first saw each member.
    pub total: Usage,
    /// Wasted-I/O findings in the tree so far (re-derived every few intervals, without
    /// reading any file).
    pub findings: u64,
}

/// Cumulative counts of what was lost for lack of capacity (zero when nothing was), by name.
pub type Losses = BTreeMap<String, u64>;

/// One interval, complete and immutable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema_version: u32,
    /// Intervals since the engine started, from 1.
    pub seq: u64,
    /// RFC 3339 wall-clock time at the end of the interval.
    pub timestamp: String,
    pub interval_s: f64,
    pub cpus: u32,
    /// Processes the table knows (alive, and exited ones not yet pruned).
    pub processes_known: u64,
    pub meter: Meter,
    pub carbon: Carbon,
    /// Active user processes of the interval, largest CPU time first.
    pub processes: Vec<ProcessRow>,
    pub buckets: Buckets,
    /// Block-layer bytes per device in the interval.
    pub block_devices: Vec<crate::io::BlockDeviceIo>,
    pub io_timing: crate::io::IoTiming,
    pub losses: Losses,
    pub cumulative: Cumulative,
    /// Every tree with CPU time so far, busiest in the interval first (engines asked for
    /// trees only; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<TreeTotals>,
}
