//! On-CPU time per tgid.
//!
//! At every context switch, the time since the previous switch on this CPU belongs to the task
//! being switched out, which is still `current` when the tracepoint fires. So the handler reads
//! no kernel struct at all: one per-CPU timestamp, one per-CPU hash update keyed by the current
//! tgid. The idle tasks (pid 0) land in key 0, kernel threads under their own tgid (userspace
//! puts them in the kernel bucket), so per-interval totals cover all CPU time.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use carbon_agent_common::{TgidCpu, stat};

use crate::stats;

/// Cumulative on-CPU time per tgid, per CPU. Userspace may resize it before loading.
#[map]
static TGID_CPU: PerCpuHashMap<u32, TgidCpu> = PerCpuHashMap::with_max_entries(32768, 0);

/// Time of the last context switch on this CPU (0 until the first one after attach).
#[map]
static LAST_SWITCH_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `sched_switch` as a BTF tracepoint (preferred: cheapest attach point with arguments).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(_ctx: BtfTracePointContext) -> i32 {
    account_switch();
    0
}

/// The classic `sched:sched_switch` tracepoint, for kernels without BTF.
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch_tp(_ctx: TracePointContext) -> i32 {
    account_switch();
    0
}

#[inline(always)]
fn account_switch() {
    let Some(last) = LAST_SWITCH_NS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: bpf helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot; preemption is off in the scheduler.
    let prev = unsafe { core::ptr::replace(last, now) };
    if prev == 0 || now <= prev {
        return;
    }
    let delta = now - prev;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(entry) = TGID_CPU.get_ptr_mut(&tgid) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            (*entry).on_cpu_ns += delta;
            (*entry).switches += 1;
        }
        return;
    }
    let entry = TgidCpu {
        on_cpu_ns: delta,
        switches: 1,
        // SAFETY: bpf helpers without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
    };
    if TGID_CPU.insert(&tgid, &entry, 0).is_err() {
        stats::add(stat::TGID_MAP_FULL, 1);
        stats::add(stat::LOST_CPU_NS, delta);
    }
}
