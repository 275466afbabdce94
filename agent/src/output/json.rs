//! JSON Lines: one object per interval (`carbon-agent --json`).

use serde::Serialize;

use crate::{
    attribution::EnergyBreakdown,
    carbon::Emissions,
    energy::MeterSummary,
    io::IoJson,
    probes::KernelLosses,
    process::{ProcessKind, ProcessTable, TableLosses},
    procfs::Users,
    session::IntervalReport,
};

/// One process active in the interval.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: String,
    pub comm: String,
    /// On-CPU time in this interval.
    pub cpu_time_s: f64,
    /// Energy attributed in this interval (see `meter` for where it comes from).
    pub energy_j: EnergyBreakdown,
    pub emissions_g: Emissions,
    /// I/O in this interval.
    pub io: IoJson,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub cpu_time_s: f64,
    pub energy_j: EnergyBreakdown,
    pub emissions_g: Emissions,
}

/// The carbon intensity used for the interval.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalIntensity {
    /// gCO2e/kWh.
    pub intensity: f64,
    pub source: String,
    pub pue: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Buckets {
    /// Kernel threads.
    pub kernel: Bucket,
    /// The CPUs' idle tasks.
    pub idle: Bucket,
}

#[derive(Clone, Debug, Serialize)]
pub struct Losses {
    #[serde(flatten)]
    pub kernel: KernelLosses,
    #[serde(flatten)]
    pub table: TableLosses,
}

#[derive(Clone, Debug, Serialize)]
pub struct IntervalLine {
    pub timestamp: String,
    pub interval_s: f64,
    pub cpus: u32,
    pub processes: Vec<ProcessRow>,
    pub buckets: Buckets,
    /// What the meter measured (or the model estimated) in the interval: the rows and the
    /// buckets add up to `meter.energy_j.total`.
    pub meter: MeterSummary,
    pub carbon: IntervalIntensity,
    /// The same rows summed by user, cgroup and systemd unit.
    pub rollups: super::rollup::Rollups,
    /// Block-layer bytes per device in the interval (all processes and the kernel: the
    /// block layer does not know who asked).
    pub block_devices: Vec<crate::io::BlockDeviceIo>,
    /// How `io.io_cpu_time_s` was measured: the calls timed in the sampling windows and the
    /// share of time those were open (the figures are estimates scaled from them).
    pub io_timing: crate::io::IoTiming,
    /// Cumulative counts of what was lost for lack of capacity (zero when nothing was).
    pub losses: Losses,
}

/// The JSON line of one interval: rows sorted by CPU time, largest first.
pub fn interval_line(report: &IntervalReport, table: &ProcessTable, users: &Users, pue: f64) -> IntervalLine {
    // Every process with CPU time or energy (a GPU-only process has energy without CPU time).
    let mut pids: Vec<u32> = report.usage.processes.keys().copied().collect();
    pids.extend(report.energy.per_tgid.keys().filter(|p| !report.usage.processes.contains_key(p)));
    let mut processes: Vec<ProcessRow> = pids
        .into_iter()
        .map(|pid| {
            let cpu_ns = report.usage.processes.get(&pid).map_or(0, |c| c.cpu_ns);
            let p = table.get(pid);
            ProcessRow {
                pid,
                ppid: p.map_or(0, |p| p.ppid),
                uid: p.map_or(u32::MAX, |p| p.uid),
                user: users.name(p.map_or(u32::MAX, |p| p.uid)),
                comm: p.map_or_else(|| "?".into(), |p| p.comm.clone()),
                cpu_time_s: cpu_ns as f64 / 1e9,
                energy_j: report.energy.per_tgid.get(&pid).copied().unwrap_or_default(),
                emissions_g: report.emissions.get(&pid).copied().unwrap_or_default(),
                io: report.io.processes.get(&pid).map(|io| io.json()).unwrap_or_default(),
            }
        })
        .collect();
    processes.sort_by(|a, b| b.cpu_time_s.total_cmp(&a.cpu_time_s).then(a.pid.cmp(&b.pid)));
    debug_assert!(processes.iter().all(|r| table.get(r.pid).is_none_or(|p| p.kind == ProcessKind::User)));
    let rollups = super::rollup::rollups(&processes, |pid| table.get(pid).and_then(|p| p.cgroup.clone()));
    IntervalLine {
        rollups,
        block_devices: report.io.block.clone(),
        io_timing: report.io.timing,
        timestamp: super::rfc3339(report.timestamp),
        interval_s: report.usage.interval_s,
        cpus: report.usage.ncpu,
        processes,
        buckets: Buckets {
            kernel: Bucket {
                cpu_time_s: report.usage.kernel_cpu_ns as f64 / 1e9,
                energy_j: report.energy.kernel,
                emissions_g: report.kernel_emissions,
            },
            idle: Bucket {
                cpu_time_s: report.usage.idle_cpu_ns as f64 / 1e9,
                energy_j: report.energy.idle,
                emissions_g: report.idle_emissions,
            },
        },
        meter: report.energy.meter.clone(),
        carbon: IntervalIntensity {
            intensity: report.carbon.intensity.g_per_kwh,
            source: report.carbon.intensity.source.clone(),
            pue,
        },
        losses: Losses { kernel: report.kernel_losses.clone(), table: report.table_losses.clone() },
    }
}
