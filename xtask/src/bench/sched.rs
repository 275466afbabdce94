//! The `sched_switch` section: on-CPU accounting at every context switch.

use anyhow::{Context, Result};
use aya::{Btf, Ebpf, programs::BtfTracePoint};
use carbon_agent_common::globals;

use super::{
    DEFAULT_AGENT, NO_IO, SYSCALL_TIER, Section, Targets, Variant,
    load::{self, LoadTimes},
};

/// The `sched_switch` handler (BTF tracepoint, or the classic tracepoint where the agent fell back).
pub struct SchedSwitch;

impl Section for SchedSwitch {
    fn name(&self) -> &'static str {
        "sched_switch"
    }

    fn event(&self) -> &'static str {
        "context switch"
    }

    fn programs(&self) -> &'static [&'static str] {
        &["sched_switch_btf", "sched_switch_tp"]
    }

    /// The whole default agent, I/O included (no program on the pipe syscalls' path outside
    /// the timing windows); without I/O (the floor: CPU accounting alone); the syscall tier.
    fn variants(&self) -> Vec<Variant> {
        vec![DEFAULT_AGENT, NO_IO, SYSCALL_TIER]
    }

    fn targets(&self) -> Targets {
        Targets { max_ns_per_event: Some(("sched_switch_btf", 150.0)), max_slowdown: 0.03, floor_rule: None }
    }

    fn describe_load(&self, rounds: u64) -> String {
        format!(
            "pipe ping-pong between two threads pinned to one CPU, {rounds} round trips (2 switches each)"
        )
    }

    fn run_load(&self, rounds: u64) -> Result<LoadTimes> {
        load::pipe_ping_pong(rounds, load::last_allowed_cpu()?)
    }

    /// With the `ioac` harvest's offsets.
    fn globals(&self) -> Vec<carbon_agent_common::globals::OffsetGlobal> {
        globals::SCHED_OFFSETS.iter().chain(globals::IOAC_OFFSETS).copied().collect()
    }

    fn attach_handlers(&self, ebpf: &mut Ebpf, btf: &Btf) -> Option<Result<Vec<u32>>> {
        Some((|| {
            let program: &mut BtfTracePoint = ebpf
                .program_mut("sched_switch_btf")
                .context("the agent's eBPF object has no program `sched_switch_btf`")?
                .try_into()
                .context("`sched_switch_btf` is not a BTF tracepoint")?;
            program.load("sched_switch", btf).context("loading sched_switch_btf")?;
            program.attach().context("attaching sched_switch_btf")?;
            Ok(vec![program.info().context("reading sched_switch_btf's info")?.id()])
        })())
    }
}
