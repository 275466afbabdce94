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
mod files;
mod load;
mod redis;
mod sched;
pub mod stats;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use aya::{Btf, Ebpf};

use crate::cmd::{self, step};
use agent::AgentUnderTest;
use load::LoadTimes;
use stats::{ProgStats, median, slowdown, verdict};

/// What runs during a section's "with" runs. A section's first variant is the one judged;
/// the others are printed beside it, measured in the same interleaved runs.
#[derive(Debug, Clone, Copy)]
pub enum Variant {
    /// The whole agent (`carbon-agent --json` with these extra arguments), or with
    /// `--handlers-only` the section's own handlers.
    Agent { label: &'static str, args: &'static [&'static str] },
    /// Only these empty programs (name in the agent's object, `tp_btf` target), attached
    /// in-process: the floor of any program on the same hooks.
    Empty { label: &'static str, programs: &'static [(&'static str, &'static str)] },
}

impl Variant {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Agent { label, .. } | Self::Empty { label, .. } => label,
        }
    }
}

/// The whole agent as installed: the default tier.
pub const DEFAULT_AGENT: Variant = Variant::Agent { label: "whole default agent", args: &[] };
/// The whole agent without its I/O programs (CPU accounting only: the floor under the I/O tier).
pub const NO_IO: Variant = Variant::Agent { label: "whole agent, --no-io", args: &["--no-io"] };
/// The whole agent with every I/O syscall traced.
pub const SYSCALL_TIER: Variant =
    Variant::Agent { label: "whole agent, --io-detail syscalls", args: &["--io-detail", "syscalls"] };

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
    /// Most kernel nanoseconds per event (run_time_ns / run_cnt) of one program.
    pub max_ns_per_event: Option<(&'static str, f64)>,
    /// Most slowdown of the load, as a ratio (0.03 = 3 %).
    pub max_slowdown: f64,
    /// `(threshold, margin)`: where the section's `Empty` variant (the floor) slows the load by
    /// more than `threshold`, the target is that floor + `margin` instead.
    pub floor_rule: Option<(f64, f64)>,
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
    /// `--handlers-only`: loads and attaches this section's programs from `ebpf`; returns their
    /// ids. `None`: the section measures the whole agent only.
    fn attach_handlers(&self, _ebpf: &mut Ebpf, _btf: &Btf) -> Option<Result<Vec<u32>>> {
        None
    }
    /// What runs in the "with" runs; the first is judged.
    fn variants(&self) -> Vec<Variant> {
        vec![DEFAULT_AGENT, SYSCALL_TIER]
    }

    /// `--handlers-only`: the offset globals its programs need (set from the kernel's BTF).
    fn globals(&self) -> Vec<carbon_agent_common::globals::OffsetGlobal> {
        Vec::new()
    }
}

/// Every section, in report order.
pub fn sections() -> Vec<Box<dyn Section>> {
    vec![
        Box::new(sched::SchedSwitch),
        Box::new(redis::RedisGet::default()),
        Box::new(files::Copy4k),
        Box::new(files::Cp),
        Box::new(files::PythonReader),
    ]
}

/// What one section measured.
#[derive(Debug)]
pub struct SectionResult {
    /// The load's times without the agent.
    pub without: Vec<LoadTimes>,
    /// Per variant (in [`Section::variants`] order): the load's times with it (BPF stats
    /// off), and the kernel statistics of its programs, by name, during one extra run with
    /// BPF stats on.
    pub with: Vec<(Variant, Vec<LoadTimes>, ProgramStats)>,
}

/// Kernel statistics per program, by kernel name.
pub type ProgramStats = Vec<(String, ProgStats)>;

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
    let object = std::fs::read(&built.object)
        .with_context(|| format!("reading the agent's eBPF object {}", built.object.display()))?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF from /sys/kernel/btf/vmlinux")?;
    let agent = if options.handlers_only {
        let offsets = carbon_agent_common::btf::KernelBtf::from_sysfs(std::path::Path::new("/sys"))?;
        AgentUnderTest::Handlers { object, btf, offsets }
    } else {
        AgentUnderTest::Binary {
            path: options.agent.clone().unwrap_or_else(|| built.binary.clone()),
            object,
            btf,
        }
    };
    let mut all_pass = true;
    for section in &selected {
        if options.handlers_only && section.globals().is_empty() {
            cmd::note(format!(
                "{}: measures the whole agent only (skipped with --handlers-only)",
                section.name()
            ));
            continue;
        }
        step(format!("bench: {} — {}", section.name(), section.describe_load(options.rounds)));
        for v in section.variants() {
            cmd::note(format!("with ({}): {}", v.label(), agent.describe(&v)));
        }
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
    let variants = section.variants();
    let mut without = Vec::new();
    let mut with: Vec<Vec<LoadTimes>> = vec![Vec::new(); variants.len()];
    for run in 0..options.runs {
        // Without, then each variant, in an order that rotates every run, so that drift hits
        // every side alike.
        let slots = variants.len() + 1;
        for k in 0..slots {
            let slot = (k + run) % slots;
            let times = match slot.checked_sub(1) {
                Some(i) => {
                    let attached = agent.attach(section, &variants[i])?;
                    let times = section.run_load(options.rounds)?;
                    attached.stop()?;
                    with[i].push(times);
                    times
                }
                None => {
                    let times = section.run_load(options.rounds)?;
                    without.push(times);
                    times
                }
            };
            cmd::note(format!(
                "run {}: {:<36} wall {:7.3} s  cpu {:7.3} s",
                run + 1,
                slot.checked_sub(1).map_or("without", |i| variants[i].label()),
                times.wall.as_secs_f64(),
                times.cpu.as_secs_f64()
            ));
        }
    }
    // The kernel's own cost per event, from one more run per variant with BPF run-time stats
    // on. Stats add two clock reads around every program run, so the slowdown runs above are
    // made with them off. The descriptor enables them like `sysctl kernel.bpf_stats_enabled=1`
    // and the kernel turns them back off when it is closed, even if xtask dies.
    let mut result = SectionResult { without, with: Vec::new() };
    for (v, times) in variants.into_iter().zip(with) {
        let stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
        let attached = agent.attach(section, &v)?;
        let before = attached.stats_by_program()?;
        section.run_load(options.rounds)?;
        let after = attached.stats_by_program()?;
        attached.stop()?;
        drop(stats_on);
        let kernel = after
            .into_iter()
            .map(|(name, s)| {
                let b = before.iter().find(|(n, _)| *n == name).map_or(ProgStats::default(), |x| x.1);
                (name, s.since(b))
            })
            .collect();
        result.with.push((v, times, kernel));
    }
    Ok(result)
}

/// Median of one kind of time over runs.
fn median_of(runs: &[LoadTimes], pick: fn(&LoadTimes) -> Duration) -> Duration {
    median(&runs.iter().map(pick).collect::<Vec<_>>()).expect("at least one run")
}

/// Per-run slowdowns of `with` against `without`, paired by run.
fn paired(without: &[LoadTimes], with: &[LoadTimes], pick: fn(&LoadTimes) -> Duration) -> Vec<f64> {
    without.iter().zip(with).map(|(a, b)| slowdown(pick(a), pick(b))).collect()
}

/// Prints a section's figures; returns whether the judged ones met their targets.
fn report(section: &dyn Section, result: &SectionResult) -> bool {
    let targets = section.targets();
    let name = section.name();
    let cpu = |t: &LoadTimes| t.cpu;
    let floor = result
        .with
        .iter()
        .find(|(v, _, _)| matches!(v, Variant::Empty { .. }))
        .map(|(_, times, _)| slowdown(median_of(&result.without, cpu), median_of(times, cpu)));
    let mut limit = targets.max_slowdown;
    if let (Some((threshold, margin)), Some(f)) = (targets.floor_rule, floor)
        && f > threshold
    {
        limit = limit.max(f + margin);
    }
    let mut pass = true;
    for (i, (variant, times, kernel)) in result.with.iter().enumerate() {
        let without = median_of(&result.without, cpu);
        let with = median_of(times, cpu);
        let ratio = slowdown(without, with);
        let mut spread = paired(&result.without, times, cpu);
        spread.sort_by(f64::total_cmp);
        let judgement = if i == 0 {
            let v = verdict(ratio, limit);
            pass &= v == "PASS";
            match floor {
                Some(f) if limit > targets.max_slowdown => {
                    format!("target <= floor {:+.1} % + 2 points = {:.1} %  {v}", f * 100.0, limit * 100.0)
                }
                _ => format!("target <= {:.0} %  {v}", limit * 100.0),
            }
        } else {
            "(not judged)".to_owned()
        };
        let wall = slowdown(median_of(&result.without, |t| t.wall), median_of(times, |t| t.wall));
        println!(
            "{name}: {:<36} CPU time {:+.1} % (median {:.3} s vs {:.3} s without; per-run {:+.1} .. {:+.1} %, {} runs; wall {:+.1} %)  {judgement}",
            variant.label(),
            ratio * 100.0,
            with.as_secs_f64(),
            without.as_secs_f64(),
            spread.first().copied().unwrap_or(f64::NAN) * 100.0,
            spread.last().copied().unwrap_or(f64::NAN) * 100.0,
            times.len(),
            wall * 100.0,
        );
        for (program, stats) in kernel {
            let Some(ns) = stats.ns_per_event() else { continue };
            let judged = match targets.max_ns_per_event {
                Some((p, max)) if i == 0 && stats::kernel_program_name(p) == program => {
                    let v = verdict(ns, max);
                    pass &= v == "PASS";
                    format!("target <= {max:.0} ns  {v}")
                }
                _ => String::new(),
            };
            println!(
                "{name}:   {:<34} {program:<16} {ns:8.1} ns per event ({} runs; the load: one {} each)  {judged}",
                variant.label(),
                stats.run_cnt,
                if program.starts_with("sched_switch") { "context switch" } else { section.event() },
            );
        }
    }
    pass
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
    fn every_section_has_distinct_name_programs_and_a_judged_agent() {
        let all = sections();
        let mut names: Vec<_> = all.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(all.iter().all(|s| !s.programs().is_empty()));
        assert!(
            all.iter().all(
                |s| matches!(s.variants().first(), Some(Variant::Agent { args, .. }) if args.is_empty())
            )
        );
    }
}
