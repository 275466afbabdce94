//! On-CPU time per tgid.
//!
//! At every context switch the task being switched out is still `current`. Its on-CPU time
//! since it was switched in is charged to its tgid, in a per-CPU hash:
//!
//! - With BTF (`sched_switch_btf`), the time is the growth of the kernel's own per-thread
//!   `prev->se.sum_exec_runtime` since that thread's previous switch-out (remembered per
//!   thread in an LRU hash). The differences telescope, so a thread is charged exactly the
//!   runtime the kernel accounts (and `/proc/<pid>/schedstat` shows): steal time of a VM and
//!   IRQ time (where the kernel separates them) are left out. The field offsets come from the
//!   kernel's BTF, set by userspace before load.
//! - Without BTF (`sched_switch_tp`), the wall-clock time since the previous switch on this
//!   CPU, which also counts steal and IRQ time.
//!
//! The idle tasks (pid 0) land in key 0 with wall-clock time, kernel threads under their own
//! tgid (userspace puts them in the kernel bucket), so per-interval totals cover all CPU time.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use carbon_agent_common::{TgidCpu, stat};

use crate::stats;

/// Cumulative on-CPU time per tgid, per CPU. Userspace may resize it before loading.
#[map]
static TGID_CPU: PerCpuHashMap<u32, TgidCpu> = PerCpuHashMap::with_max_entries(32768, 0);

/// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, sum_exec_runtime)`.
#[unsafe(no_mangle)]
static TASK_SUM_EXEC_RUNTIME_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, pid)`.
#[unsafe(no_mangle)]
static SCHED_TASK_PID_OFF: Global<u32> = Global::new(0);

/// Per CPU: wall-clock time of the last switch (0 until the first one after attach).
#[map]
static LAST_SWITCH_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per thread: its `sum_exec_runtime` when it was last switched out. Differences of this
/// cumulative value telescope, so a thread's charged time equals the kernel's own runtime
/// whatever happens in between (migrations, missed events). LRU: exited threads age out; a
/// live thread whose entry was evicted is charged wall-clock time for one stint.
#[map]
static THREAD_RUNTIME: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)` as a
/// BTF tracepoint: the preferred hook.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    // SAFETY: bpf_probe_read_kernel copes with any address; the offsets come from BTF.
    let runtime = unsafe {
        bpf_probe_read_kernel(prev.wrapping_add(TASK_SUM_EXEC_RUNTIME_OFF.load() as usize) as *const u64).ok()
    };
    let pid = unsafe { bpf_probe_read_kernel(prev.wrapping_add(SCHED_TASK_PID_OFF.load() as usize) as *const u32).ok() };
    match (runtime, pid) {
        (Some(runtime), Some(pid)) => account_switch(Some((pid, runtime))),
        _ => account_switch(None),
    }
    0
}

/// The classic `sched:sched_switch` tracepoint, for kernels without BTF: wall-clock deltas.
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch_tp(_ctx: TracePointContext) -> i32 {
    account_switch(None);
    0
}

/// Charges the outgoing task (still `current`). `prev` is its (pid, sum_exec_runtime) when
/// known.
#[inline(always)]
fn account_switch(prev: Option<(u32, u64)>) {
    let Some(last) = LAST_SWITCH_NS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: bpf helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; preemption is off in the scheduler.
    let last_wall = unsafe { core::ptr::replace(last, now) };
    if last_wall == 0 || now <= last_wall {
        return;
    }
    let wall = now - last_wall;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let delta = match prev {
        // The idle tasks (all pid 0) have no maintained runtime: wall-clock time is theirs.
        Some((pid, runtime)) if tgid != carbon_agent_common::IDLE_TGID => {
            // SAFETY: plain map read of a u64.
            let before = unsafe { THREAD_RUNTIME.get(&pid).copied() };
            let _ = THREAD_RUNTIME.insert(&pid, &runtime, 0);
            match before {
                Some(before) => runtime.saturating_sub(before),
                // First switch-out seen (or evicted): this stint's wall-clock length.
                None => wall,
            }
        }
        _ => wall,
    };
    if delta == 0 {
        return;
    }
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
