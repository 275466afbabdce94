//! On-CPU time per tgid.
//!
//! At every context switch the task being switched out (`prev`) is still `current`; the time
//! it just spent on the CPU is charged to its tgid in a per-CPU hash:
//!
//! - With BTF (`sched_switch_btf`) the time is the growth of the kernel's own per-thread
//!   `prev->se.sum_exec_runtime` since that thread's previous switch-out, remembered in
//!   task-local storage (no hash lookup, freed with the task). The differences telescope, so a
//!   thread is charged exactly the runtime the kernel accounts (and `/proc/<pid>/schedstat`
//!   shows): a VM's steal time and separately accounted IRQ time are left out.
//!   (`sum - prev_sum_exec_runtime` alone is not enough: the scheduler resets `prev_sum` when it
//!   re-picks the running task without a switch.)
//!   The idle tasks (pid 0) have no runtime: the wall-clock time between switching to idle and
//!   switching away from it is theirs, in key 0. Fields are read with plain loads from the
//!   BTF-typed task pointers, at offsets that userspace reads from the kernel's BTF and sets as
//!   read-only globals before loading.
//! - Without BTF (`sched_switch_tp`): the wall-clock time since the previous switch on this CPU.
//!
//! The per-tgid hash lookup is most of a switch's cost (about 85 ns of the handler here, against
//! about 40 ns for the task storage; `docs/benchmarks.md`), so the BTF program batches: a
//! thread's runtime accumulates in its own task storage (idle time in a per-CPU slot) and goes
//! into the hash once it reaches [`FLUSH_NS`], and always when the thread is exiting
//! (`PF_EXITING`: every switch-out from `do_exit` on, the last one included), so nothing is lost
//! and a process's total is exact once it has exited. While a thread lives, at most
//! [`FLUSH_NS`] of its runtime (per CPU for idle) is not yet in the hash: it shows up at that
//! thread's next switch-out that crosses the threshold, or at its exit.
//!
//! The kernel's own per-task I/O accounting (`task_struct.ioac`: what `/proc/<pid>/io` shows)
//! is harvested at the same flushes, with no program on any syscall path: the growth of the
//! thread's counters since its previous flush (the last values are kept in the same task
//! storage) goes into the same `TGID_CPU` entry. The differences telescope, so a thread group's
//! total is exactly the sum of its threads' counters, however short-lived the threads, and
//! across `exec` (the task, its storage and its tgid stay). Threads are also harvested when
//! they start to exit (`sched_process_exit`, [`harvest_exiting`]), in case their last
//! switch-out is not delivered. A thread that started before the agent loaded is counted from
//! the first time the program sees it (its history before is left out).
//!
//! Kernel threads are counted under their own tgid; userspace puts them in the kernel bucket.

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated::bpf_task_storage_get,
    },
    macros::{btf_map, btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use carbon_agent_common::{IDLE_TGID, TaskIo, TgidCpu, stat};

use crate::stats;

/// Cumulative on-CPU time per tgid, per CPU. Userspace may resize it before loading.
#[map]
static TGID_CPU: PerCpuHashMap<u32, TgidCpu> = PerCpuHashMap::with_max_entries(32768, 0);

/// Runtime a thread (or a CPU's idle task) accumulates before it is added to `TGID_CPU`. At
/// 100 µs a thread that switches every few microseconds pays the hash lookup once every few
/// dozen switches, and what a live thread has not yet shown is at most this much CPU time.
pub const FLUSH_NS: u64 = 100_000;

/// `task_struct.flags` bit set from the start of `do_exit` (`include/linux/sched.h`).
const PF_EXITING: u32 = 0x0000_0004;

/// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, sum_exec_runtime)`.
#[unsafe(no_mangle)]
static TASK_SUM_EXEC_RUNTIME_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, prev_sum_exec_runtime)`.
#[unsafe(no_mangle)]
static TASK_PREV_SUM_EXEC_RUNTIME_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, pid)`.
#[unsafe(no_mangle)]
static SCHED_TASK_PID_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, tgid)`.
#[unsafe(no_mangle)]
static SCHED_TASK_TGID_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, flags)`.
#[unsafe(no_mangle)]
static SCHED_TASK_FLAGS_OFF: Global<u32> = Global::new(0);

/// `offsetof(struct task_struct, ioac) + offsetof(struct task_io_accounting, <field>)`; all 0
/// (harvest off) where the kernel's BTF lacks them.
#[unsafe(no_mangle)]
static TASK_IOAC_RCHAR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_IOAC_WCHAR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_IOAC_SYSCR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_IOAC_SYSCW_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_IOAC_READ_BYTES_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_IOAC_WRITE_BYTES_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_IOAC_CANCELLED_OFF: Global<u32> = Global::new(0);
/// `offsetof(struct task_struct, start_time)`.
#[unsafe(no_mangle)]
static TASK_START_TIME_OFF: Global<u32> = Global::new(0);
/// CLOCK_MONOTONIC ns when userspace loaded the programs (`globals::IOAC_SINCE_NS`).
#[unsafe(no_mangle)]
static IOAC_SINCE_NS: Global<u64> = Global::new(0);

/// A CPU's idle task, for the BTF program.
#[repr(C)]
struct IdleCpu {
    /// When the idle task was switched in (0: not idle, or not seen since attach).
    since: u64,
    /// Idle time not yet added to `TGID_CPU`.
    pending_ns: u64,
    /// Switches away from idle not yet added to `TGID_CPU`.
    pending_switches: u64,
    /// When this CPU last switched away from idle (0: not seen since attach).
    last_out: u64,
    /// Runtime of the threads that switched out on this CPU since `last_out`.
    busy_since_out: u64,
    /// The thread last switched in on this CPU, and its `sum_exec_runtime` then.
    last_in: u64,
    last_in_runtime: u64,
}

/// Per CPU, for the BTF program: its idle task's state.
#[map]
static IDLE_CPU: PerCpuArray<IdleCpu> = PerCpuArray::with_max_entries(1, 0);

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

    /// A pointer to the value of `task`, created zeroed when missing; `None` if it cannot be
    /// created. Only `task`'s own switch-outs touch it (the scheduler serializes them).
    #[inline(always)]
    fn get_or_create(&self, task: *const u8) -> Option<*mut T> {
        // SAFETY: `task` is a trusted BTF task pointer; the helper checks the rest.
        let ptr = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task.cast_mut().cast(),
                core::ptr::null_mut(),
                BPF_LOCAL_STORAGE_GET_F_CREATE.into(),
            )
        };
        let ptr = ptr.cast::<T>();
        (!ptr.is_null()).then_some(ptr)
    }
}

/// A thread, in its task-local storage.
#[repr(C)]
struct ThreadCpu {
    /// Its `sum_exec_runtime` when it was last switched out (0: not seen yet). Differences of
    /// this cumulative value telescope, so a thread is charged exactly the kernel's own
    /// runtime, whatever happens in between (migrations, re-picks without a switch).
    last_runtime: u64,
    /// Runtime not yet added to `TGID_CPU`.
    pending_ns: u64,
    /// Switch-outs not yet added to `TGID_CPU`.
    pending_switches: u64,
    /// 1 once `io_last` holds the thread's starting point (see [`io_baseline`]).
    io_seen: u64,
    /// Its `ioac` counters when they were last added to `TGID_CPU`.
    io_last: TaskIo,
}

/// Per thread: see [`ThreadCpu`].
#[btf_map]
static THREAD_CPU: TaskStorage<ThreadCpu> = TaskStorage::new();

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
    // `prev` is `current`: its tgid, read from the task instead of through a helper call.
    let tgid: u32 = field(prev, &SCHED_TASK_TGID_OFF);
    let next_is_idle = field::<i32>(next, &SCHED_TASK_PID_OFF) == 0;
    let Some(idle) = IDLE_CPU.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; preemption is off in the scheduler.
    let idle = unsafe { &mut *idle };
    if tgid != IDLE_TGID {
        idle.busy_since_out += thread_switched_out(prev, tgid);
    }
    if tgid == IDLE_TGID || next_is_idle {
        idle_switch(idle, tgid == IDLE_TGID, next_is_idle);
    }
    idle.last_in = next as u64;
    idle.last_in_runtime = field(next, &TASK_SUM_EXEC_RUNTIME_OFF);
    crate::io::on_switch_to(field(next, &SCHED_TASK_TGID_OFF));
    0
}

/// Accounts `prev`, a thread that is not idle, at its switch-out; returns the runtime it
/// added.
#[inline(always)]
fn thread_switched_out(prev: *const u8, tgid: u32) -> u64 {
    let runtime: u64 = field(prev, &TASK_SUM_EXEC_RUNTIME_OFF);
    let Some(thread) = THREAD_CPU.get_or_create(prev) else {
        stats::add(stat::TASK_STORAGE_FAILED, 1);
        // This stint, as the scheduler measured it.
        let stint = runtime.saturating_sub(field(prev, &TASK_PREV_SUM_EXEC_RUNTIME_OFF));
        charge(tgid, stint, 1);
        return stint;
    };
    // SAFETY: this thread's own storage, written only at its switch-outs and its exit.
    let thread = unsafe { &mut *thread };
    io_baseline(prev, thread);
    let since = match thread.last_runtime {
        // First switch-out seen: this stint, as the scheduler measured it.
        0 => field(prev, &TASK_PREV_SUM_EXEC_RUNTIME_OFF),
        last => last,
    };
    thread.last_runtime = runtime;
    let stint = runtime.saturating_sub(since);
    thread.pending_ns += stint;
    thread.pending_switches += 1;
    if thread.pending_ns >= FLUSH_NS || field::<u32>(prev, &SCHED_TASK_FLAGS_OFF) & PF_EXITING != 0 {
        flush_thread(prev, tgid, thread);
    }
    stint
}

/// Adds what `thread` (the storage of `task`) has pending to `TGID_CPU`: its runtime and
/// switch-outs, and the growth of its `ioac` counters since the previous flush.
#[inline(always)]
fn flush_thread(task: *const u8, tgid: u32, thread: &mut ThreadCpu) {
    let ns = core::mem::replace(&mut thread.pending_ns, 0);
    let switches = core::mem::replace(&mut thread.pending_switches, 0);
    let io = match ioac(task) {
        Some(now) => {
            let grown = now.since(&thread.io_last);
            thread.io_last = now;
            grown
        }
        None => TaskIo::default(),
    };
    charge_io(tgid, ns, switches, &io);
}

/// The task's `ioac` counters, `None` where the harvest is off.
#[inline(always)]
fn ioac(task: *const u8) -> Option<TaskIo> {
    if TASK_IOAC_RCHAR_OFF.load() == 0 {
        return None;
    }
    Some(TaskIo {
        rchar: field(task, &TASK_IOAC_RCHAR_OFF),
        wchar: field(task, &TASK_IOAC_WCHAR_OFF),
        syscr: field(task, &TASK_IOAC_SYSCR_OFF),
        syscw: field(task, &TASK_IOAC_SYSCW_OFF),
        read_bytes: field(task, &TASK_IOAC_READ_BYTES_OFF),
        write_bytes: field(task, &TASK_IOAC_WRITE_BYTES_OFF),
        cancelled_write_bytes: field(task, &TASK_IOAC_CANCELLED_OFF),
    })
}

/// The first time a thread is seen: its `ioac` counters count from zero when it started after
/// the agent loaded (everything it did is new), else from their value now (the history before
/// the agent is not this run's).
#[inline(always)]
fn io_baseline(task: *const u8, thread: &mut ThreadCpu) {
    if thread.io_seen != 0 {
        return;
    }
    thread.io_seen = 1;
    if field::<u64>(task, &TASK_START_TIME_OFF) < IOAC_SINCE_NS.load()
        && let Some(now) = ioac(task)
    {
        thread.io_last = now;
    }
}

/// `sched_process_exit`, for every exiting thread (`task` is `current`, a trusted BTF pointer):
/// flushes its pending runtime and `ioac` growth now, so that nothing depends on its last
/// switch-out being delivered. Later switch-outs (all `PF_EXITING`) flush what grows after.
#[inline(always)]
pub fn harvest_exiting(task: *const u8) {
    let tgid: u32 = field(task, &SCHED_TASK_TGID_OFF);
    if tgid == IDLE_TGID {
        return;
    }
    let Some(thread) = THREAD_CPU.get_or_create(task) else {
        stats::add(stat::TASK_STORAGE_FAILED, 1);
        return;
    };
    // SAFETY: this thread's own storage; it is running here, so no switch-out of it runs.
    let thread = unsafe { &mut *thread };
    io_baseline(task, thread);
    flush_thread(task, tgid, thread);
}

/// Accounts this CPU's idle task when it is switched out (`out`) and/or in (`into`).
///
/// Some kernels do not deliver every switch to the program (`docs/architecture.md`): a switch
/// into idle that was not seen leaves `since` at 0 when idle is switched out. That stint is
/// then inferred (`IDLE_START_UNSEEN` counts them): the time since this CPU last left idle,
/// less the runtime of the threads seen switching out since, less what the thread last
/// switched in has run since (its switch-out was the one not seen; its runtime is charged at
/// its next switch-out that is seen). Without it, on a quiet machine, a missed switch loses
/// the whole idle stint that follows it, up to seconds.
#[inline(always)]
fn idle_switch(idle: &mut IdleCpu, out: bool, into: bool) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if out {
        let since = core::mem::replace(&mut idle.since, 0);
        let stint = if since != 0 {
            now.saturating_sub(since)
        } else if idle.last_out != 0 {
            stats::add(stat::IDLE_START_UNSEEN, 1);
            // SAFETY: bpf_probe_read_kernel copes with any address (the thread may be gone).
            let last_in_ran = unsafe {
                bpf_probe_read_kernel(
                    (idle.last_in as *const u8).add(TASK_SUM_EXEC_RUNTIME_OFF.load() as usize) as *const u64,
                )
            }
            .map_or(0, |r: u64| r.saturating_sub(idle.last_in_runtime));
            now.saturating_sub(idle.last_out).saturating_sub(idle.busy_since_out).saturating_sub(last_in_ran)
        } else {
            0
        };
        if stint != 0 {
            idle.pending_ns += stint;
            idle.pending_switches += 1;
            if idle.pending_ns >= FLUSH_NS {
                let ns = core::mem::replace(&mut idle.pending_ns, 0);
                let switches = core::mem::replace(&mut idle.pending_switches, 0);
                charge(IDLE_TGID, ns, switches);
            }
        }
        idle.last_out = now;
        idle.busy_since_out = 0;
    }
    if into {
        idle.since = now;
    }
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
        charge((bpf_get_current_pid_tgid() >> 32) as u32, now.saturating_sub(last_wall), 1);
    }
    0
}

/// Adds `delta` ns and `switches` switch-outs to `tgid`'s counters on this CPU. The caller is
/// `current` and of that tgid (for the cgroup and uid of a new entry).
#[inline(always)]
fn charge(tgid: u32, delta: u64, switches: u64) {
    charge_io(tgid, delta, switches, &TaskIo::default());
}

/// [`charge`] with `ioac` growth.
#[inline(always)]
fn charge_io(tgid: u32, delta: u64, switches: u64, io: &TaskIo) {
    if delta == 0 && !io.any() {
        return;
    }
    if let Some(entry) = TGID_CPU.get_ptr_mut(tgid) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            (*entry).on_cpu_ns += delta;
            (*entry).switches += switches;
            (*entry).io.add(io);
        }
        return;
    }
    let entry = TgidCpu {
        on_cpu_ns: delta,
        switches,
        // SAFETY: bpf helpers without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
        io: *io,
    };
    if TGID_CPU.insert(tgid, entry, 0).is_err() {
        stats::add(stat::TGID_MAP_FULL, 1);
        stats::add(stat::LOST_CPU_NS, delta);
    }
}
