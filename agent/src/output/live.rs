//! The live, top-like view of process trees (ratatui): a consumer of the engine's snapshots.
//!
//! [`run`] runs on a task of its own, reads the latest snapshot from a `watch` subscription
//! and draws it; it never touches the engine. [`tree_rows`] (pure) turns a snapshot's trees
//! ([`Snapshot::trees`]) and its active processes into rows: each tree (a process just below
//! init, with all its descendants, dead ones included) with its totals, followed by its busiest
//! members in the interval.

use std::sync::Arc;

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};
use tokio::sync::watch;

use crate::api::Snapshot;

/// One line of the view.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeRow {
    /// 0 for a tree's root, 1 for a member shown under it.
    pub depth: u8,
    pub pid: u32,
    pub user: String,
    pub comm: String,
    /// Processes in the tree (for a root row), including those that exited.
    pub processes: u64,
    /// CPU time since the agent started: the whole tree for a root row.
    pub cpu_total_s: f64,
    /// Share of the machine's CPU time in the last interval, in percent.
    pub cpu_percent: f64,
    /// Power drawn in the last interval (energy attributed ÷ interval), W.
    pub watts: f64,
    /// Energy and emissions since the agent started (whole tree for a root row).
    pub energy_j: f64,
    pub emissions_g: f64,
    /// Bytes read and written per second in the last interval.
    pub read_bps: f64,
    pub write_bps: f64,
    /// Wasted-I/O findings in this tree so far (root rows only).
    pub findings: u64,
}

/// The snapshot's trees in its order (busiest first), each followed by up to `members` of its
/// busiest processes in the interval other than the root.
pub fn tree_rows(s: &Snapshot, members: usize) -> Vec<TreeRow> {
    let per_s = |v: f64| if s.interval_s > 0.0 { v / s.interval_s } else { 0.0 };
    let available_s = s.interval_s * f64::from(s.cpus.max(1));
    let pct = |cpu_s: f64| if available_s > 0.0 { cpu_s / available_s * 100.0 } else { 0.0 };
    let mut rows = Vec::new();
    for t in &s.trees {
        rows.push(TreeRow {
            depth: 0,
            pid: t.root_pid,
            user: t.user.clone(),
            comm: t.comm.clone(),
            processes: t.processes,
            cpu_total_s: t.total.cpu_time_s,
            cpu_percent: pct(t.interval.cpu_time_s),
            watts: per_s(t.interval.energy_j.total),
            energy_j: t.total.energy_j.total,
            emissions_g: t.total.emissions_g.total,
            read_bps: per_s(t.interval.io.read_bytes as f64),
            write_bps: per_s(t.interval.io.write_bytes as f64),
            findings: t.findings,
        });
        // `processes` is sorted by CPU time in the interval, largest first.
        let busiest = s
            .processes
            .iter()
            .filter(|p| p.tree_root == t.root_pid && p.pid != t.root_pid && p.interval.cpu_time_s > 0.0);
        for p in busiest.take(members) {
            rows.push(TreeRow {
                depth: 1,
                pid: p.pid,
                user: p.user.clone(),
                comm: p.comm.clone(),
                processes: 1,
                cpu_total_s: p.total.cpu_time_s,
                cpu_percent: pct(p.interval.cpu_time_s),
                watts: per_s(p.interval.energy_j.total),
                energy_j: p.total.energy_j.total,
                emissions_g: p.total.emissions_g.total,
                read_bps: per_s(p.interval.io.read_bytes as f64),
                write_bps: per_s(p.interval.io.write_bytes as f64),
                findings: 0,
            });
        }
    }
    rows
}

/// Draws the latest snapshot of `latest` until `q`, Esc or Ctrl-C, or until the engine stops
/// (the channel closes); the terminal is restored before it returns. Run it on a task of its
/// own, subscribed to an engine started with [`crate::engine::EngineOptions::trees`].
pub async fn run(mut latest: watch::Receiver<Option<Arc<Snapshot>>>) -> anyhow::Result<()> {
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Keys are read on a thread of their own: crossterm's reads block.
    std::thread::spawn(move || {
        loop {
            match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        let _ = quit_tx.send(());
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut terminal = ratatui::init();
    let result = draw_loop(&mut terminal, &mut latest, &mut quit_rx).await;
    ratatui::restore();
    result
}

async fn draw_loop(
    terminal: &mut DefaultTerminal,
    latest: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    quit: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    loop {
        let snapshot = latest.borrow_and_update().clone();
        terminal.draw(|f| draw(f, snapshot.as_deref()))?;
        tokio::select! {
            _ = quit.recv() => return Ok(()),
            changed = latest.changed() => {
                // The engine stopped.
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The loss counters that are not zero, e.g. `cpu_map_full 3, io_fd_unresolved 1` (inferred
/// idle stints are an approximation, not a loss).
fn losses_line(s: &Snapshot) -> Option<String> {
    let parts: Vec<String> = s
        .losses
        .iter()
        .filter(|(k, v)| **v > 0 && !matches!(k.as_str(), "idle_stints_inferred" | "lost_cpu_ns"))
        .map(|(k, v)| match (k.as_str(), s.losses.get("lost_cpu_ns")) {
            ("cpu_map_full", Some(ns)) => {
                format!("cpu_map_full {v} ({:.3} s of CPU time not attributed)", *ns as f64 / 1e9)
            }
            _ => format!("{k} {v}"),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn human_rate(bps: f64) -> String {
    if bps < 1.0 {
        "-".into()
    } else if bps < 1024.0 * 1024.0 {
        format!("{:.0}K", bps / 1024.0)
    } else {
        format!("{:.1}M", bps / 1024.0 / 1024.0)
    }
}

fn draw(frame: &mut Frame, snapshot: Option<&Snapshot>) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(4), Constraint::Min(3), Constraint::Length(1)])
            .areas(frame.area());
    let Some(s) = snapshot else {
        frame.render_widget(Paragraph::new("carbon-agent: measuring the first interval…"), header);
        return;
    };
    let m = &s.meter;
    let secs = s.interval_s.max(1e-9);
    let available_s = secs * f64::from(s.cpus.max(1));
    let busy = (1.0 - s.buckets.idle.cpu_time_s / available_s).clamp(0.0, 1.0);
    let mut head = vec![
        Line::from(format!(
            "carbon-agent  interval {:.2}s  CPU busy {:.1}% of {} CPUs  processes known {}",
            s.interval_s,
            busy * 100.0,
            s.cpus,
            s.processes_known
        )),
        Line::from(format!(
            "power {:.1} W ({} {})  kernel {:.1} W  idle {:.1} W  intensity {:.0} gCO2e/kWh ({})  PUE {:.2}",
            m.energy_j.total / secs,
            if m.estimated { "ESTIMATED by" } else { "metered by" },
            m.source,
            s.buckets.kernel.energy_j.total / secs,
            s.buckets.idle.energy_j.total / secs,
            s.carbon.intensity,
            s.carbon.source,
            s.carbon.pue,
        )),
    ];
    if let Some(losses) = losses_line(s) {
        head.push(Line::from(format!("LOSSES since start: {losses}")).red());
    }
    frame.render_widget(Paragraph::new(head), header);

    let rows = tree_rows(s, 3);
    let table_rows = rows.iter().map(|r| {
        let mut name = if r.depth == 0 { r.comm.clone() } else { format!("  └ {}", r.comm) };
        if r.findings > 0 {
            name.push_str(&format!("  [waste: {}]", r.findings));
        }
        let style =
            if r.depth == 0 { Style::default().add_modifier(Modifier::BOLD) } else { Style::default() };
        Row::new(vec![
            r.pid.to_string(),
            r.user.clone(),
            name,
            if r.depth == 0 { r.processes.to_string() } else { String::new() },
            super::fmt_secs(r.cpu_total_s),
            format!("{:.1}", r.cpu_percent),
            format!("{:.1}", r.watts),
            format!("{:.1}", r.energy_j),
            format!("{:.3}", r.emissions_g),
            human_rate(r.read_bps),
            human_rate(r.write_bps),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Min(20),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let header = [
        "PID",
        "USER",
        "TREE / COMMAND",
        "PROCS",
        "CPU TIME",
        "CPU%",
        "W",
        "J",
        "gCO2e",
        "READ/s",
        "WRITE/s",
    ];
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).bold().underlined())
        .block(Block::bordered().title(
        " process trees: CPU time, energy (J), gCO2e since start; CPU%, power (W), I/O rates this interval ",
    ));
    frame.render_widget(table, body);
    frame.render_widget(Paragraph::new("q quit").dim(), footer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_sorted_with_their_busiest_members() {
        let s =
            crate::engine::snapshot::tests::fixture_snapshot(&mut crate::engine::Ledger::new(10), 1, true);
        let rows = tree_rows(&s, 5);
        let summary: Vec<_> =
            rows.iter().map(|r| (r.depth, r.pid, (r.cpu_percent * 10.0).round() / 10.0)).collect();
        // Two CPUs over one second: make's 0.9 s is 45 %.
        assert_eq!(summary, vec![(0, 100, 50.0), (1, 102, 45.0), (1, 101, 5.0), (0, 200, 2.5)]);
        assert_eq!((rows[0].processes, rows[0].findings, rows[3].findings), (3, 2, 0));
        assert!((rows[0].cpu_total_s - 1.0).abs() < 1e-9);
        assert!((rows[0].watts - 10.0).abs() < 1e-9);
        assert_eq!(tree_rows(&s, 1).len(), 3);
        assert_eq!(losses_line(&s), None);
        let mut lossy = s.clone();
        lossy.losses.insert("cpu_map_full".into(), 3);
        lossy.losses.insert("lost_cpu_ns".into(), 1_500_000_000);
        lossy.losses.insert("idle_stints_inferred".into(), 9);
        assert_eq!(losses_line(&lossy).unwrap(), "cpu_map_full 3 (1.500 s of CPU time not attributed)");
    }
}
