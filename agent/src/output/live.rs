//! The live, top-like view of process trees (ratatui).
//!
//! [`tree_rows`] (pure) turns the table and the last interval into rows: each tree (a process
//! just below init, with all its descendants, dead ones included) with its totals, followed
//! by its members that were active in the interval. [`run`] draws them every interval.

use std::{collections::HashMap, time::Duration};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};

use crate::{
    engine::{Engine, NoContentHash},
    process::{Pid, ProcessKind, ProcessTable, Totals},
    procfs::Users,
    session::{IntervalReport, Session},
};

/// One line of the view.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeRow {
    /// 0 for a tree's root, 1 for a member shown under it.
    pub depth: u8,
    pub pid: Pid,
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
    pub findings: usize,
}

/// Trees sorted by their CPU share in the interval (then by total), each followed by up to
/// `members` of its busiest active processes.
pub fn tree_rows(
    table: &ProcessTable,
    report: &IntervalReport,
    users: &Users,
    members: usize,
    findings_by_tree: &HashMap<Pid, usize>,
) -> Vec<TreeRow> {
    let per_s = |v: f64| if report.usage.interval_s > 0.0 { v / report.usage.interval_s } else { 0.0 };
    let available_ns = report.usage.interval_s * 1e9 * f64::from(report.usage.ncpu.max(1));
    let pct = |ns: u64| if available_ns > 0.0 { ns as f64 / available_ns * 100.0 } else { 0.0 };
    let mut by_top: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for p in table.iter().filter(|p| p.kind == ProcessKind::User) {
        by_top.entry(table.top_of(p.pid)).or_default().push(p.pid);
    }
    struct Tree {
        root: Pid,
        count: u64,
        active: Vec<(u64, Pid)>,
        interval: Totals,
        total: Totals,
    }
    let mut trees: Vec<Tree> = by_top
        .into_iter()
        .map(|(root, pids)| {
            let mut t = Tree {
                root,
                count: 0,
                active: Vec::new(),
                interval: Totals::default(),
                total: Totals::default(),
            };
            for pid in pids {
                let p = table.get(pid).expect("listed");
                t.interval.add(&p.interval);
                t.total.add(&p.totals);
                t.total.add(&p.reaped);
                t.count += 1 + p.reaped_count;
                if p.interval.cpu_ns > 0 {
                    t.active.push((p.interval.cpu_ns, pid));
                }
            }
            t.active.sort_by(|a, b| b.cmp(a));
            t
        })
        .filter(|t| t.total.cpu_ns > 0)
        .collect();
    trees.sort_by(|a, b| {
        b.interval
            .cpu_ns
            .cmp(&a.interval.cpu_ns)
            .then(b.total.cpu_ns.cmp(&a.total.cpu_ns))
            .then(a.root.cmp(&b.root))
    });
    let mut rows = Vec::new();
    for t in trees {
        let root = table.get(t.root);
        rows.push(TreeRow {
            depth: 0,
            pid: t.root,
            user: users.name(root.map_or(u32::MAX, |p| p.uid)),
            comm: root.map_or_else(|| "?".into(), |p| p.comm.clone()),
            processes: t.count,
            cpu_total_s: t.total.cpu_s(),
            cpu_percent: pct(t.interval.cpu_ns),
            watts: per_s(t.interval.energy.total),
            energy_j: t.total.energy.total,
            emissions_g: t.total.emissions.total,
            read_bps: per_s(t.interval.io.read_bytes as f64),
            write_bps: per_s(t.interval.io.write_bytes as f64),
            findings: findings_by_tree.get(&t.root).copied().unwrap_or(0),
        });
        for &(ns, pid) in t.active.iter().filter(|(_, pid)| *pid != t.root).take(members) {
            let p = table.get(pid).expect("listed");
            rows.push(TreeRow {
                depth: 1,
                pid,
                user: users.name(p.uid),
                comm: p.comm.clone(),
                processes: 1,
                cpu_total_s: p.totals.cpu_ns as f64 / 1e9,
                cpu_percent: pct(ns),
                watts: per_s(p.interval.energy.total),
                energy_j: p.totals.energy.total,
                emissions_g: p.totals.emissions.total,
                read_bps: per_s(p.interval.io.read_bytes as f64),
                write_bps: per_s(p.interval.io.write_bytes as f64),
                findings: 0,
            });
        }
    }
    rows
}

/// Runs the live view until `q`, Esc or Ctrl-C, or until `duration` has passed.
pub async fn run(engine: &mut Engine, duration: Option<Duration>) -> anyhow::Result<()> {
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
    let result = draw_loop(&mut terminal, engine, duration, &mut quit_rx).await;
    ratatui::restore();
    result
}

async fn draw_loop(
    terminal: &mut DefaultTerminal,
    engine: &mut Engine,
    duration: Option<Duration>,
    quit: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut findings: HashMap<Pid, usize> = HashMap::new();
    let mut n = 0u64;
    terminal.draw(|f| draw(f, engine.session(), None, &findings))?;
    loop {
        tokio::select! {
            _ = quit.recv() => return Ok(()),
            _ = engine.step() => {
                // The waste marker: findings that need no content hash, every 5 intervals.
                if n.is_multiple_of(5) {
                    findings.clear();
                    for f in engine.session().waste.findings(&mut NoContentHash) {
                        *findings.entry(f.tree).or_default() += 1;
                    }
                }
                n += 1;
                terminal.draw(|f| draw(f, engine.session(), engine.last_report(), &findings))?;
            }
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
    }
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

fn draw(
    frame: &mut Frame,
    session: &Session,
    report: Option<&IntervalReport>,
    findings: &HashMap<Pid, usize>,
) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(4), Constraint::Min(3), Constraint::Length(1)])
            .areas(frame.area());
    let Some(report) = report else {
        frame.render_widget(Paragraph::new("carbon-agent: measuring the first interval…"), header);
        return;
    };
    let u = &report.usage;
    let losses = &report.kernel_losses;
    let m = &report.energy.meter;
    let mut head = vec![
        Line::from(format!(
            "carbon-agent  interval {:.2}s  CPU busy {:.1}% of {} CPUs  processes known {}",
            u.interval_s,
            u.utilization() * 100.0,
            u.ncpu,
            session.table.len()
        )),
        Line::from(format!(
            "power {:.1} W ({} {})  kernel {:.1} W  idle {:.1} W  intensity {:.0} gCO2e/kWh ({})  PUE {:.2}",
            m.energy_j.total / u.interval_s.max(1e-9),
            if m.estimated { "ESTIMATED by" } else { "metered by" },
            m.source,
            report.energy.kernel.total / u.interval_s.max(1e-9),
            report.energy.idle.total / u.interval_s.max(1e-9),
            report.carbon.intensity.g_per_kwh,
            report.carbon.intensity.source,
            session.carbon.pue().value,
        )),
    ];
    if losses.any() {
        head.push(Line::from(format!("LOSSES since start: {}", losses.summary())).red());
    }
    frame.render_widget(Paragraph::new(head), header);

    let rows = tree_rows(&session.table, report, &session.users, 3, findings);
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
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{process::ProcInfo, usage::ProcessCpu};

    #[test]
    fn trees_sorted_with_active_members() {
        let mut t = ProcessTable::new();
        let info = |pid, ppid, comm: &str| ProcInfo {
            pid,
            ppid,
            uid: 0,
            comm: comm.into(),
            kind: ProcessKind::User,
            start_ns: None,
        };
        t.seed([info(1, 0, "init"), info(100, 1, "sshd"), info(200, 1, "cron"), info(101, 100, "bash")]);
        t.fork(102, 101, "make", 0, 0, 1);
        let deltas: BTreeMap<_, _> = [(101, 100_000_000u64), (102, 900_000_000), (200, 50_000_000)]
            .into_iter()
            .map(|(p, ns)| (p, ProcessCpu { cpu_ns: ns, switches: 1 }))
            .collect();
        let usage = t.apply_cpu(&deltas, 1.0, 2, &|_| None);
        let report = IntervalReport {
            timestamp: SystemTime::now(),
            usage,
            energy: crate::energy::IntervalEnergy::default(),
            emissions: Default::default(),
            kernel_emissions: Default::default(),
            idle_emissions: Default::default(),
            carbon: crate::carbon::IntervalCarbon::default(),
            io: Default::default(),
            kernel_losses: Default::default(),
            table_losses: Default::default(),
        };
        let mut findings = HashMap::new();
        findings.insert(100, 2);
        let rows = tree_rows(&t, &report, &Users::default(), 5, &findings);
        assert_eq!(rows[0].findings, 2);
        let summary: Vec<_> =
            rows.iter().map(|r| (r.depth, r.pid, (r.cpu_percent * 10.0).round() / 10.0)).collect();
        assert_eq!(summary, vec![(0, 100, 50.0), (1, 102, 45.0), (1, 101, 5.0), (0, 200, 2.5)]);
        assert_eq!(rows[0].processes, 3);
        assert!((rows[0].cpu_total_s - 1.0).abs() < 1e-9);
    }
}
