//! Process lifecycle events: fork (of a new thread group), exec, exit of a leader.
//!
//! Userspace needs these to know every process, even one that lived for a millisecond, and to
//! attach it to the tree that spawned it. The task-struct fields read here (`pid`, `tgid`,
//! `exit_code`, `linux_binprm.filename`) are located with offsets that userspace reads from
//! the kernel's BTF and writes into the globals below before loading: no hard-coded layout.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use carbon_agent_common::{COMM_LEN, FILENAME_LEN, LifecycleEvent, LifecycleKind, stat};

use crate::stats;

#[unsafe(no_mangle)]
static TASK_PID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_TGID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_EXIT_CODE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BINPRM_FILENAME_OFF: Global<u32> = Global::new(0);

/// Lifecycle events for userspace. Userspace may resize it before loading.
#[map]
static LIFECYCLE: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[inline(always)]
unsafe fn read_at<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

/// Reserves an event, fills the fields every kind has, and lets `fill` do the rest.
#[inline(always)]
fn emit(ctx: &BtfTracePointContext, kind: LifecycleKind, tgid: u32, fill: impl FnOnce(&mut LifecycleEvent)) {
    let Some(mut slot) = LIFECYCLE.reserve::<LifecycleEvent>(0) else {
        stats::add(stat::LIFECYCLE_RINGBUF_FULL, 1);
        // Off the hot path: only when events are already being lost.
        warn!(ctx, "lifecycle ring buffer full: event {} of tgid {} dropped", kind as u32, tgid);
        return;
    };
    let uid_gid = bpf_get_current_uid_gid();
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    ev.kind = kind as u32;
    ev.tgid = tgid;
    ev.parent_tgid = 0;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.code = 0;
    // SAFETY: bpf helpers without preconditions.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    ev.filename = [0u8; FILENAME_LEN];
    fill(ev);
    slot.submit(0);
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`, in the
/// parent's context. Only new thread groups are reported; new threads are not processes.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let (Some(pid), Some(tgid)) = (unsafe { read_at::<i32>(child, TASK_PID_OFF.load()) }, unsafe {
        read_at::<i32>(child, TASK_TGID_OFF.load())
    }) else {
        return 0;
    };
    if pid != tgid {
        return 0;
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(&ctx, LifecycleKind::Fork, tgid as u32, |ev| ev.parent_tgid = parent_tgid);
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`, in
/// the exec'ing task's context, after the new image (and its comm) is in place.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let old_pid: i32 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(&ctx, LifecycleKind::Exec, tgid, |ev| {
        ev.code = old_pid;
        if let Some(name) = unsafe { read_at::<*const u8>(bprm, BINPRM_FILENAME_OFF.load()) } {
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut ev.filename) };
        }
    });
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`, in the exiting task's context. Only the
/// thread-group leader's exit is reported; every thread's pending runtime and I/O is flushed.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    // Every thread: its runtime and I/O so far, before the event (userspace drains after it).
    crate::sched::harvest_exiting(ctx.arg(0));
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if pid != tgid {
        return 0;
    }
    let task: *const u8 = ctx.arg(0);
    emit(&ctx, LifecycleKind::Exit, tgid, |ev| {
        ev.code = unsafe { read_at::<i32>(task, TASK_EXIT_CODE_OFF.load()) }.unwrap_or(0);
    });
    0
}
