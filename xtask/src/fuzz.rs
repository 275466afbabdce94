//! `cargo xtask fuzz`: builds the libFuzzer targets in `fuzz/` (cargo-fuzz, nightly) and runs
//! each for a fixed time, one line per target, failing on any crash with the input that caused
//! it. See `docs/fuzzing.md`.
//!
//! Each target runs over `fuzz/corpus/<target>` (kept between runs, not committed) and the
//! committed seeds in `fuzz/seeds/<target>`; crashes land in `fuzz/artifacts/<target>/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, command, note, step};

/// Seconds per target of the short pass `cargo xtask test` runs.
pub const CI_SECONDS: u64 = 15;

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct FuzzOptions {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Fuzz only this target (one of fuzz/fuzz_targets/*.rs).
    #[arg(long)]
    pub target: Option<String>,
}

/// The command `cargo xtask test` runs for its fuzzing check.
pub fn ci_command() -> Command {
    let mut cmd = cmd::cargo();
    cmd.args(["xtask", "fuzz", "--seconds", &CI_SECONDS.to_string()]).current_dir(cmd::workspace_root());
    cmd
}

fn fuzz_dir() -> PathBuf {
    cmd::workspace_root().join("fuzz")
}

/// The fuzz targets: the `[[bin]]` names of `fuzz/Cargo.toml`, in file order.
pub fn targets(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(value) = line.strip_prefix("name")
            && let Some(name) = value.trim_start().strip_prefix('=')
        {
            names.push(name.trim().trim_matches('"').to_owned());
        }
    }
    names
}

/// What one libFuzzer run reported.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// `stat::number_of_executed_units`.
    pub runs: Option<u64>,
    /// `stat::new_units_added`.
    pub new_inputs: Option<u64>,
    /// Where libFuzzer wrote the input that crashed (`Test unit written to PATH`).
    pub crash_input: Option<String>,
}

/// Reads the final statistics (`-print_final_stats=1`) and any crash input out of a log.
pub fn parse_log(log: &str) -> RunStats {
    let stat = |key: &str| {
        log.lines().find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix(':')?.trim().parse().ok())
    };
    RunStats {
        runs: stat("stat::number_of_executed_units"),
        new_inputs: stat("stat::new_units_added"),
        crash_input: log
            .lines()
            .find_map(|l| Some(l.split_once("Test unit written to ")?.1.trim().to_owned())),
    }
}

/// The summary line of one target's run.
pub fn summary_line(target: &str, seconds: f64, ok: bool, stats: &RunStats) -> String {
    let runs = stats.runs.map_or("? runs".to_owned(), |r| format!("{r} runs"));
    let new = stats.new_inputs.map_or(String::new(), |n| format!(", {n} new inputs"));
    if ok {
        format!("fuzz {target}: {runs} in {seconds:.0} s{new}, 0 crashes")
    } else {
        let input = stats.crash_input.as_deref().unwrap_or("(no input written; see the log)");
        format!(
            "fuzz {target}: CRASH after {runs} in {seconds:.0} s: {input} \
             (reproduce: cargo +nightly fuzz run -s none -a {target} {input})"
        )
    }
}

/// Builds the targets and runs each for `options.seconds`; fails if any crashed.
pub fn fuzz(options: &FuzzOptions) -> Result<()> {
    crate::setup::setup()?;
    let dir = fuzz_dir();
    let manifest_path = dir.join("Cargo.toml");
    let manifest =
        fs::read_to_string(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let all = targets(&manifest);
    let chosen = match &options.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", all.join(", ")),
        None => all,
    };
    let host = host_triple()?;

    step(format!("fuzz: build {} target(s) (nightly, cargo-fuzz, overflow checks on)", chosen.len()));
    // No sanitizer: the parsers are safe Rust, so ASan would only slow the runs; panics,
    // overflows, out-of-memory and hangs are what is looked for.
    let mut build = command(
        "rustup",
        ["run", "nightly", "cargo", "fuzz", "build", "--sanitizer", "none", "--debug-assertions"],
    );
    build.args(["--target", &host]).current_dir(cmd::workspace_root());
    if let Some(t) = &options.target {
        build.arg(t);
    }
    cmd::run(&mut build).context("building the fuzz targets")?;

    let bin_dir = dir.join("target").join(&host).join("release");
    let mut lines = Vec::new();
    let mut crashed = Vec::new();
    for target in &chosen {
        step(format!("fuzz: {target} for {} s", options.seconds));
        let (ok, seconds, stats) = run_target(&dir, &bin_dir, target, options.seconds)?;
        let line = summary_line(target, seconds, ok, &stats);
        note(&line);
        lines.push(line);
        if !ok {
            crashed.push(target.as_str());
        }
    }
    for line in &lines {
        println!("{line}");
    }
    if !crashed.is_empty() {
        bail!("fuzz: {} target(s) crashed: {}", crashed.len(), crashed.join(", "));
    }
    Ok(())
}

/// Runs one target; returns whether it ended without a crash, its wall time and its stats.
fn run_target(dir: &Path, bin_dir: &Path, target: &str, seconds: u64) -> Result<(bool, f64, RunStats)> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = artifacts.join("last-run.log");
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut run = Command::new(bin_dir.join(target));
    run.arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // Inputs up to 8 KiB: the largest real file among the seeds is under 3 KiB.
        .arg("-max_len=8192")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    note(format!("$ {} (log: {})", cmd::describe(&run), log_path.display()));
    let started = Instant::now();
    let status = run.status().with_context(|| format!("starting fuzz target {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let stats = parse_log(&text);
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("    | {line}");
        }
    }
    Ok((status.success(), seconds, stats))
}

fn host_triple() -> Result<String> {
    let version = cmd::output(&mut command("rustup", ["run", "nightly", "rustc", "-vV"]))?;
    crate::setup::version_field(&version, "host")
        .map(str::to_owned)
        .context("`rustc +nightly -vV` printed no `host:` line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let dir = fuzz_dir();
        let names = targets(&fs::read_to_string(dir.join("Cargo.toml")).unwrap());
        assert!(names.len() >= 7, "{names:?}");
        let mut sources: Vec<String> = fs::read_dir(dir.join("fuzz_targets"))
            .unwrap()
            .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        sources.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, sources, "each fuzz_targets/*.rs is a [[bin]] of fuzz/Cargo.toml");
        for name in &names {
            let seeds = fs::read_dir(dir.join("seeds").join(name)).map(|d| d.count()).unwrap_or(0);
            assert!(seeds > 0, "fuzz/seeds/{name} has no seed inputs");
        }
    }

    #[test]
    fn reads_bin_names_only() {
        let manifest = "[package]\nname = \"carbon-agent-fuzz\"\n\n[[bin]]\nname = \"procfs\"\npath = \"x\"\n\n\
                        [dependencies]\nname = \"no\"\n[[bin]]\nname=\"passwd\"\n";
        assert_eq!(targets(manifest), ["procfs", "passwd"]);
    }

    const CRASH_LOG: &str = "INFO: Seed: 1\n#2\tINITED cov: 299\n\
        thread '<unnamed>' panicked at fuzz_targets/procfs.rs:30:13:\nattempt to multiply with overflow\n\
        ==123== ERROR: libFuzzer: deadly signal\n\
        artifact_prefix='fuzz/artifacts/procfs/'; Test unit written to fuzz/artifacts/procfs/crash-da39a3ee\n\
        stat::number_of_executed_units: 4096\nstat::new_units_added:   17\n";

    #[test]
    fn reads_stats_and_crash_input() {
        let stats = parse_log(CRASH_LOG);
        assert_eq!(
            stats,
            RunStats {
                runs: Some(4096),
                new_inputs: Some(17),
                crash_input: Some("fuzz/artifacts/procfs/crash-da39a3ee".into())
            }
        );
        assert_eq!(parse_log("Done 3 runs\n"), RunStats::default());
    }

    #[test]
    fn summary_names_the_crash_input_and_how_to_reproduce() {
        let ok = RunStats { runs: Some(10), new_inputs: Some(2), crash_input: None };
        assert_eq!(
            summary_line("passwd", 15.2, true, &ok),
            "fuzz passwd: 10 runs in 15 s, 2 new inputs, 0 crashes"
        );
        let line = summary_line("procfs", 3.0, false, &parse_log(CRASH_LOG));
        assert!(
            line.starts_with("fuzz procfs: CRASH after 4096 runs in 3 s: fuzz/artifacts/procfs/crash-"),
            "{line}"
        );
        assert!(line.contains("fuzz run -s none -a procfs fuzz/artifacts/procfs/crash-da39a3ee"), "{line}");
        assert!(summary_line("x", 1.0, false, &RunStats::default()).contains("no input written"));
    }
}
