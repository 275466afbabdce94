//! `carbon-agent run -- CMD`: run a command, follow its whole process tree, summarize.

use std::{
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::{AgentArgs, RunArgs},
    host::HostInfo,
    output::{fmt_secs, rfc3339},
    probes::{KernelLosses, LoadOptions},
    process::{Pid, ProcessTable},
    session::{Session, SessionOptions},
};

/// One process of the tree.
#[derive(Clone, Debug, Serialize)]
pub struct ChildRow {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cpu_time_s: f64,
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TreeSummary {
    pub root_pid: u32,
    /// Processes the tree had in all, the root included.
    pub processes: u64,
    pub cpu_time_s: f64,
    /// Every process of the tree, root first, then by CPU time.
    pub children: Vec<ChildRow>,
}

/// The `run --json` document.
#[derive(Clone, Debug, Serialize)]
pub struct RunDocument {
    pub command: Vec<String>,
    pub exit_code: i32,
    pub start_time: String,
    pub end_time: String,
    pub duration_s: f64,
    pub host: HostInfo,
    pub tree: TreeSummary,
    pub losses: KernelLosses,
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
            }
        })
        .collect();
    children[1..].sort_by(|a, b| b.cpu_time_s.total_cmp(&a.cpu_time_s).then(a.pid.cmp(&b.pid)));
    let (totals, count) = table.tree_totals(root);
    TreeSummary { root_pid: root, processes: count, cpu_time_s: totals.cpu_s(), children }
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

/// Runs the command; returns the exit code to exit with.
pub async fn run(args: RunArgs, agent: &AgentArgs) -> anyhow::Result<i32> {
    let mut session = Session::start(SessionOptions {
        interval: agent.interval,
        load: LoadOptions { max_processes: agent.max_processes, ..Default::default() },
        prune_exited: false,
    })?;
    let start = SystemTime::now();
    let started = tokio::time::Instant::now();

    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some((uid, gid)) = sudo_user() {
        cmd.uid(uid).gid(gid);
        // SAFETY: setgroups is async-signal-safe; drops root's supplementary groups.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(1, &gid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot run `{}`", args.command[0]))?;
    let root = child.id().context("the command exited before it could be followed")?;

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            _ = session.next_interval() => {}
            // Ctrl-C reaches the command too (same process group); wait for it to exit.
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // The command's last time slice is accounted at its final context switch, which can
    // come just after the parent is woken: give it a moment before the last drain.
    tokio::time::sleep(Duration::from_millis(30)).await;
    session.close_interval();
    let duration_s = started.elapsed().as_secs_f64();
    let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));

    let doc = RunDocument {
        command: args.command.clone(),
        exit_code,
        start_time: rfc3339(start),
        end_time: rfc3339(SystemTime::now()),
        duration_s,
        host: HostInfo::read(&session.procfs),
        tree: tree_summary(&session.table, root),
        losses: session.probes().losses(),
    };
    eprint!("{}", summary_text(&doc, args.top));
    if let Some(path) = &args.json {
        write_json(path, &doc)?;
    }
    Ok(exit_code)
}

fn write_json(path: &Path, doc: &RunDocument) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("cannot write the JSON summary to {}", path.display()))?;
    serde_json::to_writer_pretty(&mut f, doc)?;
    writeln!(f)?;
    Ok(())
}

/// The human summary printed when the command exits.
pub fn summary_text(doc: &RunDocument, top: usize) -> String {
    let mut s = String::new();
    let t = &doc.tree;
    s.push_str(&format!(
        "\ncarbon-agent: `{}` exited with {} after {}\n",
        doc.command.join(" "),
        doc.exit_code,
        fmt_secs(doc.duration_s)
    ));
    s.push_str(&format!(
        "  process tree: {} processes, CPU time {} (measured in the kernel: sched_switch)\n",
        t.processes,
        fmt_secs(t.cpu_time_s)
    ));
    if t.children.len() > 1 {
        s.push_str("  largest processes:\n");
        let mut by_cpu: Vec<_> = t.children.iter().collect();
        by_cpu.sort_by(|a, b| b.cpu_time_s.total_cmp(&a.cpu_time_s));
        for c in by_cpu.into_iter().take(top) {
            s.push_str(&format!("    {:>8}  {:<16} {}\n", c.pid, c.comm, fmt_secs(c.cpu_time_s)));
        }
    }
    let l = &doc.losses;
    if l.cpu_map_full + l.lifecycle_dropped > 0 {
        s.push_str(&format!(
            "  LOSSES: cpu map full {}x ({:.3}s of CPU time not attributed), lifecycle events dropped {}\n",
            l.cpu_map_full,
            l.lost_cpu_ns as f64 / 1e9,
            l.lifecycle_dropped
        ));
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
