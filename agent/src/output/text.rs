//! One plain line per interval, for when stdout is not a terminal.

use crate::{process::ProcessTable, session::IntervalReport};

/// E.g. `2026-11-28T23:50:01.000Z cpu 37.5% of 2 CPUs, 12 processes: stress[123] 0.80s, ...`.
pub fn interval_line(report: &IntervalReport, table: &ProcessTable, top: usize) -> String {
    let u = &report.usage;
    let mut rows: Vec<_> = u.processes.iter().collect();
    rows.sort_by(|a, b| b.1.cpu_ns.cmp(&a.1.cpu_ns).then(a.0.cmp(b.0)));
    let busiest: Vec<String> = rows
        .iter()
        .take(top)
        .map(|(pid, cpu)| {
            let comm = table.get(**pid).map_or("?", |p| p.comm.as_str());
            format!("{comm}[{pid}] {}", super::fmt_secs(cpu.cpu_ns as f64 / 1e9))
        })
        .collect();
    let m = &report.energy.meter;
    let mut line = format!(
        "{} cpu {:.1}% of {} CPUs (kernel {}), power {:.1} W ({} {}), {:.3} gCO2e, {} processes active{}{}",
        super::rfc3339(report.timestamp),
        u.utilization() * 100.0,
        u.ncpu,
        super::fmt_secs(u.kernel_cpu_ns as f64 / 1e9),
        m.energy_j.total / u.interval_s.max(1e-9),
        if m.estimated { "estimated by" } else { "metered by" },
        m.source,
        report.carbon.total.total,
        u.processes.len(),
        if busiest.is_empty() { "" } else { ": " },
        busiest.join(", ")
    );
    let k = &report.kernel_losses;
    if k.any() {
        line.push_str(&format!(" [LOSSES since start: {}]", k.summary()));
    }
    line
}
