//! JSON Lines: one object per interval (`carbon-agent --json`).

use serde::Serialize;

use crate::{
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
}

#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub cpu_time_s: f64,
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
    /// Cumulative counts of what was lost for lack of capacity (zero when nothing was).
    pub losses: Losses,
}

/// The JSON line of one interval: rows sorted by CPU time, largest first.
pub fn interval_line(report: &IntervalReport, table: &ProcessTable, users: &Users) -> IntervalLine {
    let mut processes: Vec<ProcessRow> = report
        .usage
        .processes
        .iter()
        .map(|(&pid, cpu)| {
            let p = table.get(pid);
            ProcessRow {
                pid,
                ppid: p.map_or(0, |p| p.ppid),
                uid: p.map_or(u32::MAX, |p| p.uid),
                user: users.name(p.map_or(u32::MAX, |p| p.uid)),
                comm: p.map_or_else(|| "?".into(), |p| p.comm.clone()),
                cpu_time_s: cpu.cpu_ns as f64 / 1e9,
            }
        })
        .collect();
    processes.sort_by(|a, b| b.cpu_time_s.total_cmp(&a.cpu_time_s).then(a.pid.cmp(&b.pid)));
    debug_assert!(processes.iter().all(|r| table.get(r.pid).is_none_or(|p| p.kind == ProcessKind::User)));
    IntervalLine {
        timestamp: super::rfc3339(report.timestamp),
        interval_s: report.usage.interval_s,
        cpus: report.usage.ncpu,
        processes,
        buckets: Buckets {
            kernel: Bucket { cpu_time_s: report.usage.kernel_cpu_ns as f64 / 1e9 },
            idle: Bucket { cpu_time_s: report.usage.idle_cpu_ns as f64 / 1e9 },
        },
        losses: Losses { kernel: report.kernel_losses.clone(), table: report.table_losses.clone() },
    }
}
