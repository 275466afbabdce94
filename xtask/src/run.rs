//! `cargo xtask run [-- AGENT ARGS]`: setup, build the agent (release) and run it.

use std::{os::unix::process::CommandExt, path::PathBuf};

use anyhow::{Result, bail};

use crate::cmd::{self, step};

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Builds `carbon-agent` in release mode and returns the binary's path.
pub fn build_release_agent() -> Result<PathBuf> {
    step("build: carbon-agent (release)");
    let mut build = cmd::cargo();
    build.args(["build", "--release", "-p", "carbon-agent"]).current_dir(cmd::workspace_root());
    cmd::run(&mut build)?;
    Ok(cmd::target_dir().join("release").join("carbon-agent"))
}

/// The effective capability set from `/proc/self/status` (`CapEff:\t000001ffffffffff`).
pub fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether a capability set holds everything the agent needs without root.
pub fn has_agent_capabilities(caps: u64) -> bool {
    caps & (1 << CAP_BPF) != 0 && caps & (1 << CAP_PERFMON) != 0
}

/// Runs the agent with `args`, replacing this process (signals and the terminal go to the agent).
pub fn run(args: &[String]) -> Result<()> {
    crate::setup::setup()?;
    let agent = build_release_agent()?;
    let caps = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| effective_capabilities(&s));
    let privileged = cmd::is_root() || caps.is_some_and(has_agent_capabilities);
    let mut command = if privileged {
        std::process::Command::new(&agent)
    } else if cmd::which("sudo").is_some() {
        step("run: not root, using sudo -E");
        let mut sudo = std::process::Command::new("sudo");
        sudo.arg("-E").arg(&agent);
        sudo
    } else {
        bail!(
            "carbon-agent needs root, or CAP_BPF and CAP_PERFMON, to load its eBPF programs, and there is \
             no sudo here: run `cargo xtask run` as root, or give {} those capabilities \
             (setcap cap_bpf,cap_perfmon+ep)",
            agent.display()
        );
    };
    command.args(args);
    step(format!("run: {}", cmd::describe(&command)));
    let err = command.exec();
    bail!("could not start {}: {err}", agent.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_capabilities() {
        let status = "Name:\tbash\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let caps = effective_capabilities(status).unwrap();
        assert!(has_agent_capabilities(caps));
        assert!(!has_agent_capabilities(0));
        // CAP_BPF alone is not enough.
        assert!(!has_agent_capabilities(1 << 39));
        assert!(has_agent_capabilities((1 << 39) | (1 << 38)));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
