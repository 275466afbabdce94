//! The `run --json` document (`docs/schema/run-document.schema.json`): written by
//! [`crate::run`], read back by [`crate::report`] through these same types, so a renamed
//! field is a compile error, not a silently missing figure.

use serde::{Deserialize, Serialize};

use super::{Emissions, EnergyBreakdown, IoJson, Losses};
use crate::carbon::{Alternative, CarbonInfo};

/// One process of the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildRow {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cpu_time_s: f64,
    pub exit_code: Option<i32>,
    pub energy_j: EnergyBreakdown,
    pub emissions_g: Emissions,
    pub io: IoJson,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeSummary {
    pub root_pid: u32,
    /// Processes the tree had in all, the root included.
    pub processes: u64,
    pub cpu_time_s: f64,
    pub energy_j: EnergyBreakdown,
    pub emissions_g: Emissions,
    pub io: IoJson,
    /// Every process of the tree, root first, then by CPU time.
    pub children: Vec<ChildRow>,
}

/// Where the energy figures come from (the same place, `meter`, as in the interval line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeterInfo {
    /// e.g. `rapl-perf`, `rapl-powercap`, `model`, `+nvml` when GPUs are metered; several
    /// comma-separated when the meter changed during the run.
    pub source: String,
    /// Whether any of it was estimated rather than metered.
    pub estimated: bool,
}

/// The tree's energy: IT energy by domain, and facility energy (× PUE).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEnergy {
    #[serde(flatten)]
    pub it: EnergyBreakdown,
    /// IT energy × PUE.
    pub facility: f64,
}

/// One GPU of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
}

/// The machine the run ran on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    /// Kernel name and release, e.g. `Linux 6.18.44`.
    pub os: String,
    pub cpu_model: Option<String>,
    pub cpu_count: u32,
    pub ram_total_bytes: Option<u64>,
    /// NVIDIA GPUs found through NVML.
    pub gpus: Vec<Gpu>,
}

/// How `io.io_cpu_time_s` was measured over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoTime {
    /// The I/O tier (`page_cache` or `syscalls`).
    pub detail: crate::io::IoDetail,
    pub method: String,
    pub sampling: f64,
    pub measured_sampling: f64,
    pub calls: u64,
    pub timed_calls: u64,
}

/// One finding of wasted I/O.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `reread`, `refetch`, `copy`, `write_then_delete`, `duplicate`.
    pub kind: String,
    pub pid: u32,
    pub comm: String,
    pub paths: Vec<String>,
    pub bytes: u64,
    pub count: u64,
    /// Estimated energy and emissions of the waste.
    pub energy_j: f64,
    pub emissions_g: f64,
    pub suggestion: String,
    /// The unit the bytes were observed in: `bytes` (syscall tier) or `4 KiB pages`
    /// (page-cache tier).
    pub granularity: String,
}

/// The `run --json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDocument {
    /// [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    pub command: Vec<String>,
    pub exit_code: i32,
    pub start_time: String,
    pub end_time: String,
    pub duration_s: f64,
    pub host: Host,
    pub tree: TreeSummary,
    pub meter: MeterInfo,
    pub energy_j: RunEnergy,
    pub emissions_g: Emissions,
    pub carbon: CarbonInfo,
    /// What the same IT energy would have emitted in the lowest-carbon cloud regions.
    pub alternatives: Vec<Alternative>,
    pub io: IoJson,
    /// How `io.io_cpu_time_s` was measured (absent with `--no-io`).
    pub io_time: Option<IoTime>,
    /// Wasted I/O found in the tree, largest first.
    pub findings: Vec<Finding>,
    /// Bytes the agent itself read to compare file contents (duplicate/copy checks).
    pub agent_hash_read_bytes: u64,
    /// Cumulative counts of what was lost for lack of capacity, by name.
    pub losses: Losses,
    /// GPU figures for checking them: metered energy per GPU, share bases, meter warnings
    /// (null without a metered GPU).
    pub gpu: Option<crate::energy::GpuTally>,
}
