//! On-CPU time per tgid.
//!
//! At every context switch the task being switched out (`prev`) is still `current`; the time
//! it just spent on the CPU is charged to its tgid in a per-CPU hash:
//!
//! - With BTF (`sched_switch_btf`) the time is the growth of the kernel's own per-thread
//!   `prev->se.sum_exec_runtime` since that thread's previous switch-out, remembered per
//!   thread in an LRU hash. The differences telescope, so a thread is charged exactly the runtime
//!   the kernel accounts (and `/proc/<pid>/schedstat` shows): a VM's steal time and separately
//!   accounted IRQ time are left out. (`sum - prev_sum_exec_runtime` alone is not enough: the
//!   scheduler resets `prev_sum` when it re-picks the running task without a switch.)
//!   The idle tasks (pid 0) have no runtime: the wall-clock time between switching to idle and
//!   switching away from it is theirs, in key 0. Fields are read with plain loads from the
//!   BTF-typed task pointers, at offsets that userspace reads from the kernel's BTF and sets as
//!   read-only globals before loading.
//! - Without BTF (`sched_switch_tp`): the wall-clock time since the previous switch on this CPU.
//!
//! Kernel threads are counted under their own tgid; userspace puts them in the kernel bucket.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use carbon_agent_common::{IDLE_TGID, TgidCpu, stat};

use crate::stats;

/// Cumulative on-CPU time per tgid, per CPU. Userspace may resize it before loading.
#[map]
static TGID_CPU: PerCpuHashMap<u32, TgidCpu> = PerCpuHashMap::with_max_entries(32768, 0);

/// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, sum_exec_runtime)`.
#[unsafe(no_mangle)]
static TASK_SUM_EXEC_RUNTIME_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, prev_sum_exec_runtime)`.
#[unsafe(no_mangle)]
static TASK_PREV_SUM_EXEC_RUNTIME_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, pid)`.
#[unsafe(no_mangle)]
static SCHED_TASK_PID_OFF: Global<u32> = Global::new(0);

/// Per CPU, for the BTF program: when the idle task was switched in (0: not idle, or not seen
/// since attach).
#[map]
static IDLE_SINCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, for the classic program: wall-clock time of the last switch.
#[map]
static LAST_SWITCH_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per thread (pid): its `sum_exec_runtime` when it was last switched out. Differences of this
/// cumulative value telescope, so a thread is charged exactly the kernel's own runtime,
/// whatever happens in between (migrations, re-picks without a switch). LRU: entries of exited
/// threads age out; a live thread whose entry was evicted is charged its stint as the
/// scheduler measured it (`sum - prev_sum_exec_runtime`) once.
#[map]
static THREAD_RUNTIME: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// A field of a BTF-typed kernel pointer: a plain load the verifier checks against BTF.
#[inline(always)]
fn field<T: Copy>(task: *const u8, off: &Global<u32>) -> T {
    // SAFETY: `task` is a trusted BTF pointer (tp_btf argument) and `off` a field offset from
    // the kernel's BTF in a frozen read-only global; the verifier checks the access.
    unsafe { core::ptr::read_volatile(task.add(off.load() as usize) as *const T) }
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let Some(idle_since) = IDLE_SINCE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; preemption is off in the scheduler.
    let idle_since = unsafe { &mut *idle_since };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let delta = if tgid == IDLE_TGID {
        let since = core::mem::replace(idle_since, 0);
        // SAFETY: helper without preconditions.
        if since == 0 { 0 } else { unsafe { bpf_ktime_get_ns() }.saturating_sub(since) }
    } else {
        let sum: u64 = field(prev, &TASK_SUM_EXEC_RUNTIME_OFF);
        let pid: u32 = field(prev, &SCHED_TASK_PID_OFF);
        match THREAD_RUNTIME.get_ptr_mut(&pid) {
            // SAFETY: a map value of this thread; only its own switch-outs write it.
            Some(last) => sum.saturating_sub(unsafe { core::ptr::replace(last, sum) }),
            None => {
                let _ = THREAD_RUNTIME.insert(&pid, &sum, 0);
                // First switch-out seen: this stint, as the scheduler measured it.
                sum.saturating_sub(field(prev, &TASK_PREV_SUM_EXEC_RUNTIME_OFF))
            }
        }
    };
    if field::<i32>(next, &SCHED_TASK_PID_OFF) == 0 {
        // SAFETY: helper without preconditions.
        *idle_since = unsafe { bpf_ktime_get_ns() };
    }
    charge(tgid, delta);
    0
}

/// The classic `sched:sched_switch` tracepoint, for kernels without BTF: wall-clock deltas.
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch_tp(_ctx: TracePointContext) -> i32 {
    let Some(last) = LAST_SWITCH_NS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: helper without preconditions; this CPU's slot.
    let now = unsafe { bpf_ktime_get_ns() };
    let last_wall = unsafe { core::ptr::replace(last, now) };
    if last_wall != 0 {
        charge((bpf_get_current_pid_tgid() >> 32) as u32, now.saturating_sub(last_wall));
    }
    0
}

/// Adds `delta` ns to `tgid`'s counters on this CPU.
#[inline(always)]
fn charge(tgid: u32, delta: u64) {
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
    if TGID_CPU.insert(&tgid, entry, 0).is_err() {
        stats::add(stat::TGID_MAP_FULL, 1);
        stats::add(stat::LOST_CPU_NS, delta);
    }
}
