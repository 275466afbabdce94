//! `carbon-agent run -- CMD`: run a command, follow its whole process tree, summarize.

use std::{
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;

pub use crate::api::run::{ChildRow, MeterInfo, RunDocument, RunEnergy, TreeSummary};
use crate::{
    api::{
        self,
        run::{Gpu, Host, IoTime},
    },
    carbon::{
        AlternativeScope,
        codecarbon_csv::{self, CodeCarbonRun, LocationColumns},
        lowest_carbon_alternatives,
    },
    engine::{DEFAULT_TOP_TREES, Engine, EngineOptions},
    host::HostInfo,
    output::{fmt_secs, rfc3339},
    probes::KernelLosses,
    process::{Pid, ProcessTable, Totals},
    settings::Settings,
    waste::{
        Finding,
        hash::{ContentHasher as _, FsHasher},
    },
};

/// The API form of the host description.
fn host_of(h: HostInfo) -> Host {
    Host {
        hostname: h.hostname,
        os: h.os,
        cpu_model: h.cpu_model,
        cpu_count: h.cpu_count,
        ram_total_bytes: h.ram_total_bytes,
        gpus: h.gpus.into_iter().map(|g| Gpu { index: g.index, name: g.name, uuid: g.uuid }).collect(),
    }
}

/// The API form of a finding.
fn finding_of(f: Finding) -> api::run::Finding {
    let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
    api::run::Finding {
        kind: kind.unwrap_or_default(),
        pid: f.pid,
        comm: f.comm,
        paths: f.paths,
        bytes: f.bytes,
        count: f.count,
        energy_j: f.energy_j,
        emissions_g: f.emissions_g,
        suggestion: f.suggestion,
        granularity: f.granularity.to_owned(),
    }
}

/// Loss counters by name (the JSON shape of [`KernelLosses`]).
fn losses_of(k: &KernelLosses) -> api::Losses {
    crate::engine::snapshot::losses_by_name([k as &dyn crate::engine::snapshot::erased::Counters])
}

/// Builds the tree summary from the table (pure).
pub fn tree_summary(table: &ProcessTable, root: Pid) -> TreeSummary {
    let members = table.tree_members(root);
    let mut children: Vec<ChildRow> = members
        .iter()
        .map(|&pid| {
            let p = table.get(pid).expect("member");
            ChildRow {
                pid,
                ppid: p.ppid,
                comm: p.comm.clone(),
                exe: p.exe.clone(),
                cpu_time_s: p.totals.cpu_s(),
                exit_code: p.exited.map(|(_, status)| exit_code_of_wait_status(status)),
                energy_j: p.totals.energy,
                emissions_g: p.totals.emissions,
                io: p.totals.io.json(),
            }
        })
        .collect();
    children[1..].sort_by(|a, b| b.cpu_time_s.total_cmp(&a.cpu_time_s).then(a.pid.cmp(&b.pid)));
    let (totals, count): (Totals, u64) = table.tree_totals(root);
    TreeSummary {
        root_pid: root,
        processes: count,
        cpu_time_s: totals.cpu_s(),
        energy_j: totals.energy,
        emissions_g: totals.emissions,
        io: totals.io.json(),
        children,
    }
}

/// The exit code a shell would show for a kernel wait status: the code, or 128 + signal.
pub fn exit_code_of_wait_status(status: i32) -> i32 {
    if status & 0x7f == 0 { (status >> 8) & 0xff } else { 128 + (status & 0x7f) }
}

/// The invoking user when started through sudo: (uid, gid).
fn sudo_user() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0 && uid != 0).then_some((uid, gid))
}

/// What to run, and where its document goes.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Also write the run document here.
    pub json: Option<std::path::PathBuf>,
}

/// Runs the command; returns the exit code to exit with.
pub async fn run(req: RunRequest, settings: Settings) -> anyhow::Result<i32> {
    let args = settings.run.clone();
    let (command, json) = (&req.command, &req.json);
    anyhow::ensure!(!command.is_empty(), "no command to run");
    let location = LocationColumns::from_entry(settings.carbon.table_entry()?);
    // Other trees are pruned as in the live view; the followed one is pinned.
    let mut engine = Engine::start(EngineOptions::new(settings, DEFAULT_TOP_TREES))?;
    for w in engine.session().carbon.warnings() {
        eprintln!("carbon-agent: warning: {w}");
    }
    let start = SystemTime::now();
    let started = tokio::time::Instant::now();

    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    if let Some((uid, gid)) = sudo_user() {
        // As root, std also drops root's supplementary groups before switching user.
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot run `{}`", command[0]))?;
    let root = child.id().context("the command exited before it could be followed")?;
    engine.follow(root);

    let mut meter = MeterTally::default();
    let mut gpu = crate::energy::GpuTally::default();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            snapshot = engine.step() => {
                meter.add(&snapshot.meter);
                if let Some(report) = engine.last_report() {
                    gpu.add(&report.energy);
                }
            }
            // Ctrl-C reaches the command too (same process group); wait for it to exit.
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // The command's last time slice is accounted at its final context switch, which can
    // come just after the parent is woken: give it a moment before the last drain.
    tokio::time::sleep(Duration::from_millis(30)).await;
    meter.add(&engine.close_now().meter);
    if let Some(report) = engine.last_report() {
        gpu.add(&report.energy);
    }
    let session = engine.session();
    let duration_s = started.elapsed().as_secs_f64();
    let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));

    let tree = tree_summary(&session.table, root);
    let mut hasher = FsHasher::new(args.hash_budget);
    let findings: Vec<api::run::Finding> =
        session.waste.findings(&mut hasher).into_iter().filter(|f| f.tree == root).map(finding_of).collect();
    let pue = session.carbon.pue().value;
    let it = tree.energy_j;
    let mut host = HostInfo::read(&session.procfs);
    host.gpus = session.energy.gpus();
    let doc = RunDocument {
        schema_version: api::SCHEMA_VERSION,
        command: command.clone(),
        exit_code,
        start_time: rfc3339(start),
        end_time: rfc3339(SystemTime::now()),
        duration_s,
        host: host_of(host),
        meter: meter.info(),
        energy_j: RunEnergy { it, facility: it.total * pue },
        emissions_g: tree.emissions_g,
        carbon: session.carbon.info(),
        alternatives: lowest_carbon_alternatives(it.total, pue, 3, AlternativeScope::CloudRegions),
        io: tree.io,
        io_time: session.probes().io.as_ref().map(|io| {
            let t = io.timing_since_start();
            IoTime {
                detail: t.detail,
                method: t.method.to_owned(),
                sampling: t.sampling,
                measured_sampling: t.measured_sampling,
                calls: t.calls,
                timed_calls: t.timed_calls,
            }
        }),
        tree,
        findings,
        agent_hash_read_bytes: hasher.bytes_read(),
        losses: losses_of(&session.probes().losses()),
        gpu: session.energy.has_gpu().then_some(gpu),
    };
    eprint!("{}", summary_text(&doc, args.top));
    if let Some(path) = json {
        write_json(path, &doc)?;
    }
    if let Some(path) = &args.csv {
        codecarbon_csv::append_row(path, &codecarbon_row(&doc, &args.project_name, location))?;
    }
    Ok(exit_code)
}

/// The meters seen over the run's intervals.
#[derive(Debug, Default)]
struct MeterTally {
    sources: Vec<String>,
    estimated: bool,
}

impl MeterTally {
    fn add(&mut self, m: &crate::api::Meter) {
        if !self.sources.contains(&m.source) {
            self.sources.push(m.source.clone());
        }
        self.estimated |= m.estimated;
    }

    fn info(&self) -> MeterInfo {
        MeterInfo { source: self.sources.join(","), estimated: self.estimated }
    }
}

/// The run as a row of CodeCarbon's emissions.csv.
pub fn codecarbon_row(doc: &RunDocument, project: &str, location: LocationColumns) -> CodeCarbonRun {
    let e = &doc.energy_j;
    let metered = |v: f64| (!doc.meter.estimated || v > 0.0).then_some(v);
    CodeCarbonRun {
        end_time: humantime::parse_rfc3339(&doc.end_time).unwrap_or_else(|_| SystemTime::now()),
        project_name: Some(project.to_string()),
        run_id: None,
        experiment_id: None,
        duration_s: doc.duration_s,
        operational_g: doc.emissions_g.operational,
        cpu_energy_j: metered(e.it.cpu),
        gpu_energy_j: metered(e.it.gpu),
        ram_energy_j: metered(e.it.dram),
        it_energy_j: e.it.total,
        pue: doc.carbon.pue,
        location,
        os: Some(doc.host.os.clone()),
        cpu_count: Some(doc.host.cpu_count),
        cpu_model: doc.host.cpu_model.clone(),
        gpu_count: Some(doc.host.gpus.len() as u32),
        gpu_model: doc.host.gpus.first().map(|g| g.name.clone()),
        ram_total_bytes: doc.host.ram_total_bytes,
        cpu_utilization_percent: (doc.duration_s > 0.0 && doc.host.cpu_count > 0)
            .then(|| doc.tree.cpu_time_s / (doc.duration_s * f64::from(doc.host.cpu_count)) * 100.0),
        gpu_utilization_percent: None,
        ram_utilization_percent: None,
        ram_used_bytes: None,
    }
}

fn write_json(path: &Path, doc: &RunDocument) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("cannot write the JSON summary to {}", path.display()))?;
    serde_json::to_writer_pretty(&mut f, doc)?;
    writeln!(f)?;
    Ok(())
}

fn fmt_j(j: f64) -> String {
    if j >= 3.6e6 {
        format!("{:.3} kWh", j / 3.6e6)
    } else if j >= 3600.0 {
        format!("{:.2} Wh ({j:.0} J)", j / 3600.0)
    } else {
        format!("{j:.2} J")
    }
}

fn fmt_g(g: f64) -> String {
    if g >= 1000.0 {
        format!("{:.3} kgCO2e", g / 1000.0)
    } else if g >= 1.0 || g == 0.0 {
        format!("{g:.3} gCO2e")
    } else if g >= 1e-3 {
        format!("{:.3} mgCO2e", g * 1e3)
    } else {
        format!("{:.3} µgCO2e", g * 1e6)
    }
}

fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (b as f64, 0);
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

/// The human summary printed when the command exits.
pub fn summary_text(doc: &RunDocument, top: usize) -> String {
    let mut s = String::new();
    let t = &doc.tree;
    let e = &doc.energy_j;
    let c = &doc.carbon;
    s.push_str(&format!(
        "\ncarbon-agent: `{}` exited with {} after {}\n",
        doc.command.join(" "),
        doc.exit_code,
        fmt_secs(doc.duration_s)
    ));
    s.push_str(&format!(
        "  process tree   {} processes, CPU time {} (measured in the kernel: sched_switch)\n",
        t.processes,
        fmt_secs(t.cpu_time_s)
    ));
    s.push_str(&format!(
        "  energy (IT)    {}: cpu {}, dram {}, gpu {}; dynamic {}, static {}  [{} {}]\n",
        fmt_j(e.it.total),
        fmt_j(e.it.cpu),
        fmt_j(e.it.dram),
        fmt_j(e.it.gpu),
        fmt_j(e.it.dynamic),
        fmt_j(e.it.static_),
        if doc.meter.estimated { "ESTIMATED by" } else { "metered by" },
        doc.meter.source
    ));
    s.push_str(&format!(
        "  energy (site)  {} = IT x PUE {:.2} ({})\n",
        fmt_j(e.facility),
        c.pue,
        c.pue_source
    ));
    s.push_str(&format!(
        "  emissions      {} total = {} operational + {} embodied\n",
        fmt_g(doc.emissions_g.total),
        fmt_g(doc.emissions_g.operational),
        fmt_g(doc.emissions_g.embodied)
    ));
    s.push_str(&format!(
        "  intensity      {:.1} {} ({}{}){}\n",
        c.intensity,
        c.unit,
        c.source,
        c.year.map_or(String::new(), |y| format!(", {y}")),
        if c.world_average { "  WORLD AVERAGE: pass --country or --region for a real figure" } else { "" }
    ));
    for w in &c.warnings {
        s.push_str(&format!("  warning        {w}\n"));
    }
    if t.children.len() > 1 {
        s.push_str("  largest processes:\n");
        let mut by_energy: Vec<_> = t.children.iter().collect();
        by_energy.sort_by(|a, b| {
            b.energy_j.total.total_cmp(&a.energy_j.total).then(b.cpu_time_s.total_cmp(&a.cpu_time_s))
        });
        for ch in by_energy.into_iter().take(top) {
            s.push_str(&format!(
                "    {:>8}  {:<16} cpu {:>8}  {:>12}  {}\n",
                ch.pid,
                ch.comm,
                fmt_secs(ch.cpu_time_s),
                fmt_j(ch.energy_j.total),
                fmt_g(ch.emissions_g.total)
            ));
        }
    }
    if !doc.alternatives.is_empty() {
        s.push_str("  the same run in the lowest-carbon regions (operational, their PUE):\n");
        for a in &doc.alternatives {
            s.push_str(&format!(
                "    {:<28} {:>12}  ({:.0} gCO2e/kWh)\n",
                a.location,
                fmt_g(a.operational_g),
                a.intensity
            ));
        }
    }
    let io = &doc.io;
    if io.read_bytes + io.write_bytes + io.copied_bytes + io.net_tx_bytes + io.net_rx_bytes > 0 {
        s.push_str(&format!(
            "  I/O ({} tier) read {}, written {}, copied in-kernel {}, net tx {} rx {}, from storage {}, time in I/O syscalls {} (estimated from sampled calls)\n",
            doc.io_time.as_ref().map_or("?", |t| t.detail.name()),
            fmt_bytes(io.read_bytes),
            fmt_bytes(io.write_bytes),
            fmt_bytes(io.copied_bytes),
            fmt_bytes(io.net_tx_bytes),
            fmt_bytes(io.net_rx_bytes),
            fmt_bytes(io.page_cache_misses_bytes),
            fmt_secs(io.io_cpu_time_s)
        ));
    }
    if !doc.findings.is_empty() {
        s.push_str("  wasted I/O (largest first; energy estimated):\n");
        for f in &doc.findings {
            s.push_str(&format!(
                "    {:<18} {:>10} x{:<3} {} [{}] {}: {}  ({}, {})\n",
                f.kind,
                fmt_bytes(f.bytes),
                f.count,
                f.comm,
                f.pid,
                f.paths.join(" -> "),
                f.suggestion,
                fmt_j(f.energy_j),
                fmt_g(f.emissions_g)
            ));
        }
        if doc.agent_hash_read_bytes > 0 {
            s.push_str(&format!(
                "    (the agent read {} itself to compare file contents)\n",
                fmt_bytes(doc.agent_hash_read_bytes)
            ));
        }
    }
    let lost = crate::output::text::losses_summary(&doc.losses);
    if !lost.is_empty() {
        s.push_str(&format!("  LOSSES: {lost} (see docs/io.md and docs/architecture.md)\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        assert_eq!(exit_code_of_wait_status(3 << 8), 3);
        assert_eq!(exit_code_of_wait_status(9), 137);
        assert_eq!(exit_code_of_wait_status(0), 0);
    }

    #[test]
    fn tree_summary_lists_root_first_then_by_cpu() {
        use crate::{process::ProcInfo, usage::ProcessCpu};
        let mut t = ProcessTable::new();
        t.seed([ProcInfo {
            pid: 10,
            ppid: 1,
            uid: 0,
            comm: "sh".into(),
            kind: crate::process::ProcessKind::User,
            start_ns: None,
        }]);
        t.fork(11, 10, "a", 0, 0, 1);
        t.fork(12, 10, "b", 0, 0, 2);
        t.fork(13, 1, "other", 0, 0, 3);
        let deltas = [(10, 1u64), (11, 5), (12, 9), (13, 100)]
            .into_iter()
            .map(|(p, ns)| (p, ProcessCpu { cpu_ns: ns * 1_000_000, switches: 1 }))
            .collect();
        t.apply_cpu(&deltas, 1.0, 1, &|_| None);
        t.exit(11, 2 << 8, 5);
        let s = tree_summary(&t, 10);
        assert_eq!(s.children.iter().map(|c| c.pid).collect::<Vec<_>>(), vec![10, 12, 11]);
        assert_eq!(s.processes, 3);
        assert!((s.cpu_time_s - 0.015).abs() < 1e-12);
        assert_eq!(s.children[2].exit_code, Some(2));
    }
}
