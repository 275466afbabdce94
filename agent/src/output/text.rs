//! One plain line per interval, for when stdout is not a terminal.

use crate::api::Snapshot;

/// Losses that are approximations, not losses (see [`crate::probes::KernelLosses`]), and the
/// CPU time shown with `cpu_map_full`.
const NOT_LOSSES: [&str; 2] = ["idle_stints_inferred", "lost_cpu_ns"];

/// E.g. `2026-11-28T23:50:01.000Z cpu 37.5% of 2 CPUs, 12 processes: stress[123] 0.80s, ...`.
pub fn interval_line(s: &Snapshot, top: usize) -> String {
    let busiest: Vec<String> = s
        .processes
        .iter()
        .filter(|r| r.interval.cpu_time_s > 0.0)
        .take(top)
        .map(|r| format!("{}[{}] {}", r.comm, r.pid, super::fmt_secs(r.interval.cpu_time_s)))
        .collect();
    let busy_s: f64 =
        s.processes.iter().map(|r| r.interval.cpu_time_s).sum::<f64>() + s.buckets.kernel.cpu_time_s;
    let available = s.interval_s * f64::from(s.cpus.max(1));
    let utilization = if available > 0.0 { (busy_s / available).clamp(0.0, 1.0) } else { 0.0 };
    let grams: f64 = s.processes.iter().map(|r| r.interval.emissions_g.total).sum::<f64>()
        + s.buckets.kernel.emissions_g.total
        + s.buckets.idle.emissions_g.total;
    let m = &s.meter;
    let mut line = format!(
        "{} cpu {:.1}% of {} CPUs (kernel {}), power {:.1} W ({} {}), {:.3} gCO2e, {} processes active{}{}",
        s.timestamp,
        utilization * 100.0,
        s.cpus,
        super::fmt_secs(s.buckets.kernel.cpu_time_s),
        m.energy_j.total / s.interval_s.max(1e-9),
        if m.estimated { "estimated by" } else { "metered by" },
        m.source,
        grams,
        s.processes.iter().filter(|r| r.interval.cpu_time_s > 0.0).count(),
        if busiest.is_empty() { "" } else { ": " },
        busiest.join(", ")
    );
    let lost = losses_summary(&s.losses);
    if !lost.is_empty() {
        line.push_str(&format!(" [LOSSES since start: {lost}]"));
    }
    line
}

/// The non-zero loss counters, e.g. `cpu_map_full 3 (0.120 s of CPU time not attributed)`.
pub fn losses_summary(losses: &crate::api::Losses) -> String {
    let mut parts = Vec::new();
    for (k, v) in losses.iter().filter(|(k, v)| **v > 0 && !NOT_LOSSES.contains(&k.as_str())) {
        if k == "cpu_map_full" {
            let lost_s = losses.get("lost_cpu_ns").copied().unwrap_or(0) as f64 / 1e9;
            parts.push(format!("{k} {v} ({lost_s:.3} s of CPU time not attributed)"));
        } else {
            parts.push(format!("{k} {v}"));
        }
    }
    parts.join(", ")
}

/// The plain line (a [`crate::engine::sink::LineSink`] renderer): the five busiest processes.
pub fn render(s: &Snapshot) -> anyhow::Result<String> {
    Ok(interval_line(s, 5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Ledger, snapshot};

    #[test]
    fn busiest_first_with_power_and_losses() {
        let mut s = snapshot::tests::fixture_snapshot(&mut Ledger::new(5), 1, false);
        let line = interval_line(&s, 2);
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z cpu 53.0% of 2 CPUs (kernel 0.01s), power 13.0 W (estimated by model), \
             0.133 gCO2e, 3 processes active: make[102] 0.90s, bash[101] 0.10s"
        );
        s.losses.insert("cpu_map_full".into(), 2);
        s.losses.insert("lost_cpu_ns".into(), 500_000_000);
        s.losses.insert("idle_stints_inferred".into(), 9);
        assert!(
            interval_line(&s, 0)
                .ends_with("[LOSSES since start: cpu_map_full 2 (0.500 s of CPU time not attributed)]")
        );
    }
}
