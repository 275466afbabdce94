//! On-CPU time per tgid.
//!
//! At every context switch the task being switched out (`prev`) is still `current`; the time
//! it just spent on the CPU is charged to its tgid in a per-CPU hash:
//!
//! - With BTF (`sched_switch_btf`) the time is the growth of the kernel's own per-thread
//!   `prev->se.sum_exec_runtime` since that thread's previous switch-out, remembered in
//!   task-local storage (no hash lookup, freed with the task). The differences telescope, so a thread is charged exactly the runtime
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
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::bpf_task_storage_get,
    },
    macros::{btf_map, btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
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

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`): one value per thread, kept in the
/// `task_struct` itself and freed with it, so it needs no clean-up and cannot fill up. aya-ebpf
/// 0.2 has no wrapper for this map type; this is its BTF map definition.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers that the loader patches; never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The value of `task`, created zeroed when missing; `None` if it cannot be created.
    #[inline(always)]
    fn get_or_create(&self, task: *const u8) -> Option<&mut T> {
        // SAFETY: `task` is a trusted BTF task pointer; the helper checks the rest.
        let ptr = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task.cast_mut().cast(),
                core::ptr::null_mut(),
                BPF_LOCAL_STORAGE_GET_F_CREATE.into(),
            )
        };
        // SAFETY: a non-null result points at this task's value.
        unsafe { ptr.cast::<T>().as_mut() }
    }
}

/// Per thread: its `sum_exec_runtime` when it was last switched out (0: not seen yet).
/// Differences of this cumulative value telescope, so a thread is charged exactly the kernel's
/// own runtime, whatever happens in between (migrations, re-picks without a switch).
#[btf_map]
static THREAD_RUNTIME: TaskStorage<u64> = TaskStorage::new();

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
        match THREAD_RUNTIME.get_or_create(prev) {
            Some(last) if *last != 0 => sum.saturating_sub(core::mem::replace(last, sum)),
            other => {
                match other {
                    Some(last) => *last = sum,
                    None => stats::add(stat::TASK_STORAGE_FAILED, 1),
                }
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
