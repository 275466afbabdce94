//! JSON Lines: one object per interval (`carbon-agent --json`), from the engine's snapshot.
//! Schema: `docs/schema/interval-line.schema.json`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::api::{Emissions, EnergyBreakdown, IoJson, Losses, Meter, Snapshot, Usage};

/// One process active in the interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub cpu_time_s: f64,
    pub energy_j: EnergyBreakdown,
    pub emissions_g: Emissions,
}

/// The carbon intensity used for the interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalIntensity {
    /// gCO2e/kWh.
    pub intensity: f64,
    pub source: String,
    pub pue: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// Kernel threads.
    pub kernel: Bucket,
    /// The CPUs' idle tasks.
    pub idle: Bucket,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalLine {
    /// [`crate::api::SCHEMA_VERSION`].
    pub schema_version: u32,
    pub timestamp: String,
    pub interval_s: f64,
    pub cpus: u32,
    pub processes: Vec<ProcessRow>,
    pub buckets: Buckets,
    /// What the meter measured (or the model estimated) in the interval: the rows and the
    /// buckets add up to `meter.energy_j.total`.
    pub meter: Meter,
    pub carbon: IntervalIntensity,
    /// The same rows summed by user, cgroup and systemd unit.
    pub rollups: super::rollup::Rollups,
    /// Block-layer bytes per device in the interval (all processes and the kernel: the
    /// block layer does not know who asked).
    pub block_devices: Vec<crate::io::BlockDeviceIo>,
    /// How `io.io_cpu_time_s` was measured: the calls timed in the sampling windows and the
    /// share of time those were open (the figures are estimates scaled from them).
    pub io_timing: crate::io::IoTiming,
    /// Cumulative counts of what was lost for lack of capacity (zero when nothing was), by name.
    pub losses: Losses,
}

/// The JSON line of one interval: rows sorted by CPU time, largest first.
pub fn interval_line(s: &Snapshot) -> IntervalLine {
    let processes: Vec<ProcessRow> = s
        .processes
        .iter()
        .map(|r| ProcessRow {
            pid: r.pid,
            ppid: r.ppid,
            uid: r.uid,
            user: r.user.clone(),
            comm: r.comm.clone(),
            cpu_time_s: r.interval.cpu_time_s,
            energy_j: r.interval.energy_j,
            emissions_g: r.interval.emissions_g,
            io: r.interval.io,
        })
        .collect();
    let cgroups: HashMap<u32, &str> =
        s.processes.iter().filter_map(|r| r.cgroup.as_deref().map(|c| (r.pid, c))).collect();
    let rollups = super::rollup::rollups(&processes, |pid| cgroups.get(&pid).map(|c| (*c).to_owned()));
    let bucket =
        |u: &Usage| Bucket { cpu_time_s: u.cpu_time_s, energy_j: u.energy_j, emissions_g: u.emissions_g };
    IntervalLine {
        schema_version: s.schema_version,
        timestamp: s.timestamp.clone(),
        interval_s: s.interval_s,
        cpus: s.cpus,
        processes,
        buckets: Buckets { kernel: bucket(&s.buckets.kernel), idle: bucket(&s.buckets.idle) },
        meter: s.meter.clone(),
        carbon: IntervalIntensity {
            intensity: s.carbon.intensity,
            source: s.carbon.source.clone(),
            pue: s.carbon.pue,
        },
        rollups,
        block_devices: s.block_devices.clone(),
        io_timing: s.io_timing,
        losses: s.losses.clone(),
    }
}

/// The interval line as one line of JSON (a [`crate::engine::sink::LineSink`] renderer).
pub fn render(s: &Snapshot) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&interval_line(s))?)
}
