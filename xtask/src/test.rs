//! `cargo xtask test`: setup, then every check CI runs, with one summary line at the end.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{self, command, step};

/// One check: a name for the summary and the command that performs it.
struct Check {
    name: &'static str,
    command: Command,
    /// When this check fails the later ones cannot mean anything (the build).
    gate: bool,
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = cmd::cargo();
    cmd.args(args).current_dir(cmd::workspace_root());
    cmd
}

fn checks() -> Vec<Check> {
    // The eBPF crate is `no_std` and only builds for bpfel-unknown-none (for the host its bin
    // fails with a duplicate `panic_impl`), so the host checks exclude it and it is linted for
    // its own target with the nightly; `agent/build.rs` builds it for real.
    let mut ebpf_clippy = command(
        "rustup",
        [
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "agent-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    );
    ebpf_clippy.current_dir(cmd::workspace_root());
    vec![
        Check {
            name: "build",
            command: cargo(&["build", "--workspace", "--exclude", "agent-ebpf"]),
            gate: true,
        },
        // The kernel tests in tests/ load and attach the real programs: they need root (CI is root).
        Check {
            name: "test",
            command: cargo(&["test", "--workspace", "--exclude", "agent-ebpf"]),
            gate: false,
        },
        Check {
            name: "clippy",
            command: cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            gate: false,
        },
        Check { name: "fmt", command: cargo(&["fmt", "--all", "--check"]), gate: false },
        Check { name: "clippy-ebpf", command: ebpf_clippy, gate: false },
        // A short pass over every fuzz target (`cargo xtask fuzz` runs longer ones).
        Check { name: "fuzz", command: crate::fuzz::ci_command(), gate: false },
    ]
}

/// The summary line for check results `(name, passed)`.
pub fn summary(results: &[(&str, bool)]) -> String {
    let failed: Vec<&str> = results.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    let passed = results.len() - failed.len();
    if failed.is_empty() {
        format!("xtask test: PASS ({passed} checks passed: {})", names(results))
    } else {
        format!("xtask test: FAIL ({passed} passed, {} failed: {})", failed.len(), failed.join(", "))
    }
}

fn names(results: &[(&str, bool)]) -> String {
    results.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// Runs setup and every check; fails when any check fails.
pub fn test() -> Result<()> {
    if !cmd::is_root() {
        eprintln!(
            "warning: not root: the kernel tests in tests/ need root (or CAP_BPF + CAP_PERFMON) and will fail"
        );
    }
    crate::setup::setup()?;
    let mut results = Vec::new();
    for mut check in checks() {
        step(format!("test: {}", check.name));
        let ok = match cmd::run(&mut check.command) {
            Ok(()) => true,
            Err(err) => {
                eprintln!("error: {err:#}");
                false
            }
        };
        results.push((check.name, ok));
        if !ok && check.gate {
            eprintln!("error: `{}` failed; the other checks need it, skipping them", check.name);
            break;
        }
    }
    let line = summary(&results);
    println!("{line}");
    if results.iter().any(|(_, ok)| !ok) {
        bail!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_failures() {
        assert_eq!(
            summary(&[("build", true), ("fmt", true)]),
            "xtask test: PASS (2 checks passed: build, fmt)"
        );
        assert_eq!(
            summary(&[("build", true), ("test", false), ("fmt", false)]),
            "xtask test: FAIL (1 passed, 2 failed: test, fmt)"
        );
    }

    #[test]
    fn build_gates_and_runs_first() {
        let checks = checks();
        assert_eq!(checks[0].name, "build");
        assert!(checks[0].gate);
        assert!(checks[1..].iter().all(|c| !c.gate));
    }
}
