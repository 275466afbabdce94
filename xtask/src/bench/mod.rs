//! `cargo xtask bench`: the cost of the agent's hot handlers, from the kernel's own statistics
//! (`run_time_ns`/`run_cnt`, with BPF run-time stats enabled) and as the slowdown of a load
//! with the agent attached versus without, measured in the same run.
//!
//! Each [`Section`] names its programs, its load and its targets; [`bench`] runs every section
//! the same way: one warm-up run, then `runs` runs without and `runs` with the agent,
//! interleaved (without/with, then with/without, …) so that drift hits both sides alike, and
//! compares the medians. The slowdown is judged on the CPU time of the load's own threads
//! (which includes the handlers, run in the context of the task that triggers them) because the
//! wall time on a shared machine mostly measures the other processes; wall time is printed too. A new section (e.g. the I/O handlers) is one more `impl Section` in
//! its own module, added to [`sections`].

mod agent;
mod exporter;
mod load;
mod sched;
pub mod stats;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use aya::{Btf, Ebpf};

use crate::cmd::{self, step};
use agent::AgentUnderTest;
use load::LoadTimes;
use stats::{ProgStats, median, slowdown, verdict};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchOptions {
    /// Measured runs with and without the agent, each (interleaved; medians are compared).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Scale of each load (for sched_switch: pipe round trips, two context switches each).
    #[arg(long, default_value_t = 200_000)]
    pub rounds: u64,
    /// Attach only each section's handlers, loaded in-process from the agent's eBPF object,
    /// instead of running the whole `carbon-agent --json` (isolates the handlers' cost).
    #[arg(long)]
    pub handlers_only: bool,
    /// Benchmark this carbon-agent binary (started with `--json --duration N`) instead of the
    /// release build of this tree, e.g. to compare against an older build.
    #[arg(long, value_name = "PATH", conflicts_with = "handlers_only")]
    pub agent: Option<PathBuf>,
    /// Exit non-zero when a figure misses its target (by default a miss is reported, not fatal).
    #[arg(long)]
    pub strict: bool,
    /// Only the sections with these names (default: all).
    #[arg(long = "section")]
    pub sections: Vec<String>,
}

/// Targets a section's figures are judged against.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// Most kernel nanoseconds per event (run_time_ns / run_cnt).
    pub max_ns_per_event: f64,
    /// Most slowdown of the load, as a ratio (0.03 = 3 %).
    pub max_slowdown: f64,
}

/// One benchmarked group of handlers and the load that exercises them.
pub trait Section {
    /// Short name (`sched_switch`), used by `--section`.
    fn name(&self) -> &'static str;
    /// What one program run stands for, for the report ("context switch").
    fn event(&self) -> &'static str;
    /// The programs measured, by their names in the eBPF object; whichever of them the agent
    /// attached are counted (e.g. the BTF tracepoint or its classic fallback).
    fn programs(&self) -> &'static [&'static str];
    /// The targets.
    fn targets(&self) -> Targets;
    /// A one-line description of the load for the report.
    fn describe_load(&self, rounds: u64) -> String;
    /// Runs the load once (the same work every time) and returns its wall and CPU time.
    fn run_load(&self, rounds: u64) -> Result<LoadTimes>;
    /// `--handlers-only`: loads and attaches this section's programs from `ebpf`; returns their ids.
    fn attach_handlers(&self, ebpf: &mut Ebpf, btf: &Btf) -> Result<Vec<u32>>;
    /// `--handlers-only`: the read-only globals the programs read, set before loading as the
    /// agent sets them: each global's name and the struct members whose offsets, from the
    /// kernel's BTF, add up to its value.
    /// Extra arguments for the whole agent during this section (e.g. leaving out the programs
    /// that another section measures).
    fn agent_args(&self) -> &'static [&'static str] {
        &[]
    }

    /// The offset globals its programs need (set from the kernel's BTF in `--handlers-only`).
    fn globals(&self) -> &'static [carbon_agent_common::globals::OffsetGlobal];
}

/// Every section, in report order.
pub fn sections() -> Vec<Box<dyn Section>> {
    vec![Box::new(sched::SchedSwitch)]
}

/// What one section measured.
#[derive(Debug)]
pub struct SectionResult {
    /// The load's times without the agent.
    pub without: Vec<LoadTimes>,
    /// The load's times with the agent (BPF stats off).
    pub with: Vec<LoadTimes>,
    /// Kernel statistics of the section's programs during one extra run with BPF stats on.
    pub kernel: ProgStats,
}

/// Runs the benchmark.
pub fn bench(options: &BenchOptions) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark loads eBPF programs and enables BPF statistics: run it as root");
    }
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let selected: Vec<Box<dyn Section>> = sections()
        .into_iter()
        .filter(|s| options.sections.is_empty() || options.sections.iter().any(|n| n == s.name()))
        .collect();
    let io_selected = options.sections.is_empty() || options.sections.iter().any(|n| n == IO_SECTION);
    let exporter_selected =
        options.sections.is_empty() || options.sections.iter().any(|n| n == EXPORTER_SECTION);
    if selected.is_empty() && !io_selected && !exporter_selected {
        let mut known: Vec<_> = sections().iter().map(|s| s.name()).collect();
        known.extend([IO_SECTION, EXPORTER_SECTION]);
        bail!("no section named {:?}; known sections: {known:?}", options.sections);
    }
    crate::setup::setup()?;
    let built = build_agent()?;
    let agent = if options.handlers_only {
        let object = std::fs::read(&built.object)
            .with_context(|| format!("reading the agent's eBPF object {}", built.object.display()))?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF from /sys/kernel/btf/vmlinux")?;
        let offsets = carbon_agent_common::btf::KernelBtf::from_sysfs(std::path::Path::new("/sys"))?;
        AgentUnderTest::Handlers { object, btf, offsets }
    } else {
        AgentUnderTest::Binary(options.agent.clone().unwrap_or_else(|| built.binary.clone()))
    };
    let mut all_pass = true;
    for section in &selected {
        step(format!("bench: {} — {}", section.name(), section.describe_load(options.rounds)));
        cmd::note(format!("with: {}", agent.describe(section.as_ref())));
        let result = measure(section.as_ref(), &agent, options)?;
        all_pass &= report(section.as_ref(), &result);
    }
    if io_selected {
        all_pass &= io_bench(options.runs)?;
    }
    if exporter_selected {
        exporter::exporter_bench(options.agent.as_deref().unwrap_or(&built.binary))?;
    }
    if options.strict && !all_pass {
        bail!("a benchmark figure missed its target");
    }
    Ok(())
}

/// The exporter section's name (`exporter.rs`: the agent's own steady CPU and RSS as a service).
const EXPORTER_SECTION: &str = "exporter";

/// The I/O section's name.
const IO_SECTION: &str = "io";

/// The I/O handlers: the agent library's own benchmark (`carbon-agent-tests`' `io-bench`
/// binary: a 64 MiB copy in 4 KiB read/write syscalls; each round measures the copy's CPU time
/// without programs, with the I/O programs, and with only an empty program on `sys_exit` (the
/// floor of any such hook), then one copy with BPF stats on for the ns per event). Returns
/// whether both figures met their targets (≤ 150 ns per traced syscall, ≤ 5 % slowdown).
fn io_bench(runs: usize) -> Result<bool> {
    step(format!(
        "bench: {IO_SECTION} — 64 MiB copied in 4 KiB read/write syscalls, {runs} rounds (medians over rounds)"
    ));
    let mut run = cmd::cargo();
    run.args(["run", "--quiet", "--release", "-p", "carbon-agent-tests", "--bin", "io-bench", "--"])
        .args(["64", "4096", &runs.max(1).to_string()])
        .current_dir(cmd::workspace_root())
        .stderr(std::process::Stdio::inherit());
    let out = cmd::output(&mut run)?;
    let r: serde_json::Value = serde_json::from_str(&out).context("io-bench printed no JSON")?;
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    for h in r["handlers"].as_array().into_iter().flatten().filter(|h| h["run_count"].as_u64() > Some(0)) {
        println!(
            "{IO_SECTION}: {:<16} {:8.1} ns per event (median over rounds; mean {:.1}, {} events)",
            h["program"].as_str().unwrap_or("?"),
            h["ns_per_event_median"].as_f64().unwrap_or(f64::NAN),
            h["ns_per_event"].as_f64().unwrap_or(f64::NAN),
            h["run_count"].as_u64().unwrap_or(0),
        );
    }
    println!(
        "{IO_SECTION}: empty program on sys_exit (the floor) {:.1} ns per event (tp_btf), {:.1} (raw tracepoint)",
        f("empty_program_ns_per_event"),
        f("empty_raw_program_ns_per_event")
    );
    let (ns_v, slow_v) = (
        r["ns_per_traced_syscall_verdict"].as_str().unwrap_or("MISS"),
        r["slowdown_verdict"].as_str().unwrap_or("MISS"),
    );
    println!(
        "{IO_SECTION}: {:.1} ns per traced syscall (exit + enter in {:.1} % of the calls)  target <= 150 ns  {ns_v}",
        f("ns_per_traced_syscall"),
        f("enter_share") * 100.0
    );
    println!(
        "{IO_SECTION}: slowdown of the syscall-heavy copy {:+.1} % (CPU time {:.4} s with vs {:.4} s without)  \
         target <= 5 %  {slow_v}",
        (f("slowdown_ratio") - 1.0) * 100.0,
        f("copy_attached_s"),
        f("copy_detached_s"),
    );
    println!(
        "{IO_SECTION}: the same with only the empty program on sys_exit: {:+.1} % (CPU time {:.4} s)",
        (f("empty_program_slowdown_ratio") - 1.0) * 100.0,
        f("copy_empty_program_s"),
    );
    Ok(ns_v == "PASS" && slow_v == "PASS")
}

fn measure(section: &dyn Section, agent: &AgentUnderTest, options: &BenchOptions) -> Result<SectionResult> {
    section.run_load(options.rounds).context("warm-up run")?;
    let mut result = SectionResult { without: Vec::new(), with: Vec::new(), kernel: ProgStats::default() };
    for run in 0..options.runs {
        let with_first = run % 2 == 1;
        for with in [with_first, !with_first] {
            let times = if with {
                let attached = agent.attach(section)?;
                let times = section.run_load(options.rounds)?;
                attached.stop()?;
                times
            } else {
                section.run_load(options.rounds)?
            };
            cmd::note(format!(
                "run {}: {} wall {:7.3} s  cpu {:7.3} s",
                run + 1,
                if with { "with   " } else { "without" },
                times.wall.as_secs_f64(),
                times.cpu.as_secs_f64()
            ));
            if with { result.with.push(times) } else { result.without.push(times) }
        }
    }
    // The kernel's own cost per event, from one more run with the agent and BPF run-time stats
    // on. Stats add two clock reads around every program run, so the slowdown runs above are
    // made with them off. The descriptor enables them like `sysctl kernel.bpf_stats_enabled=1`
    // and the kernel turns them back off when it is closed, even if xtask dies.
    let stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
    let attached = agent.attach(section)?;
    let before = attached.stats()?;
    section.run_load(options.rounds)?;
    result.kernel = attached.stats()?.since(before);
    attached.stop()?;
    drop(stats_on);
    Ok(result)
}

/// Median of one kind of time over runs.
fn median_of(runs: &[LoadTimes], pick: fn(&LoadTimes) -> Duration) -> Duration {
    median(&runs.iter().map(pick).collect::<Vec<_>>()).expect("at least one run")
}

/// Prints a section's figures; returns whether the judged ones met their targets.
fn report(section: &dyn Section, result: &SectionResult) -> bool {
    let targets = section.targets();
    let name = section.name();
    let runs = result.with.len();
    let mut slowdown_pass = true;
    for (label, pick, judged) in [
        ("cpu time", (|t: &LoadTimes| t.cpu) as fn(&LoadTimes) -> Duration, true),
        ("wall time", |t: &LoadTimes| t.wall, false),
    ] {
        let without = median_of(&result.without, pick);
        let with = median_of(&result.with, pick);
        let ratio = slowdown(without, with);
        let judgement = if judged {
            let v = verdict(ratio, targets.max_slowdown);
            slowdown_pass = v == "PASS";
            format!("target <= {:.0} %  {v}", targets.max_slowdown * 100.0)
        } else {
            "(not judged: other processes on the machine add to wall time)".to_owned()
        };
        println!(
            "{name}: slowdown by {label} {:+.1} % (median {:.3} s with vs {:.3} s without, {runs} runs each)  {judgement}",
            ratio * 100.0,
            with.as_secs_f64(),
            without.as_secs_f64(),
        );
    }
    let ns_pass = match result.kernel.ns_per_event() {
        Some(ns) => {
            let v = verdict(ns, targets.max_ns_per_event);
            println!(
                "{name}: {ns:.1} ns per {} (kernel run_time_ns/run_cnt over {} events)  target <= {:.0} ns  {v}",
                section.event(),
                result.kernel.run_cnt,
                targets.max_ns_per_event,
            );
            v == "PASS"
        }
        None => {
            println!("{name}: the programs never ran during the load  MISS");
            false
        }
    };
    slowdown_pass && ns_pass
}

struct BuiltAgent {
    binary: PathBuf,
    /// The eBPF object `agent/build.rs` built and the binary embeds.
    object: PathBuf,
}

/// Builds the release agent and finds its binary and the eBPF object its build script produced.
fn build_agent() -> Result<BuiltAgent> {
    step("build: carbon-agent (release)");
    let mut build = cmd::cargo();
    build
        .args(["build", "--release", "-p", "carbon-agent", "--message-format=json-render-diagnostics"])
        .current_dir(cmd::workspace_root())
        .stderr(std::process::Stdio::inherit());
    let messages = cmd::output(&mut build)?;
    let (binary, out_dir) = parse_build_messages(&messages)?;
    Ok(BuiltAgent { binary, object: out_dir.join("agent-ebpf") })
}

/// From cargo's JSON messages: the `carbon-agent` executable and its build script's `OUT_DIR`.
fn parse_build_messages(messages: &str) -> Result<(PathBuf, PathBuf)> {
    let (mut binary, mut out_dir) = (None, None);
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let package = message["package_id"].as_str().unwrap_or_default();
        if !is_agent_package(package) {
            continue;
        }
        match message["reason"].as_str() {
            Some("compiler-artifact") => {
                if let Some(exe) = message["executable"].as_str() {
                    binary = Some(PathBuf::from(exe));
                }
            }
            Some("build-script-executed") => {
                out_dir = message["out_dir"].as_str().map(PathBuf::from);
            }
            _ => {}
        }
    }
    match (binary, out_dir) {
        (Some(binary), Some(out_dir)) => Ok((binary, out_dir)),
        (None, _) => bail!("cargo built no `carbon-agent` executable"),
        (_, None) => bail!("cargo reported no build-script output folder for `carbon-agent`"),
    }
}

/// Whether a cargo package id (`path+file:///…/agent#carbon-agent@0.1.0`) is the agent's.
fn is_agent_package(package_id: &str) -> bool {
    package_id.contains("#carbon-agent@") || package_id.starts_with("carbon-agent ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binary_and_out_dir_in_cargo_messages() {
        let messages = r#"{"reason":"build-script-executed","package_id":"path+file:///w/common#carbon-agent-common@0.1.0","out_dir":"/t/release/build/common-1/out"}
{"reason":"build-script-executed","package_id":"path+file:///w/agent#carbon-agent@0.1.0","out_dir":"/t/release/build/carbon-agent-2/out"}
{"reason":"compiler-artifact","package_id":"path+file:///w/agent#carbon-agent@0.1.0","executable":null}
{"reason":"compiler-artifact","package_id":"path+file:///w/agent#carbon-agent@0.1.0","executable":"/t/release/carbon-agent"}
{"reason":"build-finished","success":true}"#;
        let (binary, out_dir) = parse_build_messages(messages).unwrap();
        assert_eq!(binary, PathBuf::from("/t/release/carbon-agent"));
        assert_eq!(out_dir, PathBuf::from("/t/release/build/carbon-agent-2/out"));
    }

    #[test]
    fn missing_messages_are_errors() {
        let only_exe = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/agent#carbon-agent@0.1.0","executable":"/t/a"}"#;
        assert!(parse_build_messages(only_exe).unwrap_err().to_string().contains("build-script"));
        assert!(parse_build_messages("").unwrap_err().to_string().contains("executable"));
    }

    #[test]
    fn every_section_has_distinct_name_and_programs() {
        let all = sections();
        let mut names: Vec<_> = all.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(all.iter().all(|s| !s.programs().is_empty()));
    }
}
