//! Types shared by the eBPF programs (`agent-ebpf`) and userspace (`agent`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of pointers, so that both sides agree on
//! the layout byte for byte. Userspace builds this crate with the `user` feature, which adds
//! the `aya::Pod` impls needed to read the types out of maps.
#![no_std]

#[cfg(feature = "btf")]
extern crate std;

/// Struct field offsets from the kernel's BTF (userspace only: needs std).
#[cfg(feature = "btf")]
pub mod btf;

pub mod io;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// How many bytes of an exec'd filename are kept.
pub const FILENAME_LEN: usize = 128;

/// Key of the idle bucket in the per-tgid CPU map: the per-CPU idle tasks all have pid 0.
pub const IDLE_TGID: u32 = 0;

/// On-CPU time accumulated by one thread group (process) on one CPU.
///
/// Lives in the per-CPU hash `TGID_CPU`, keyed by tgid. Values only grow; userspace takes
/// differences between intervals and deletes the entry once the process is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TgidCpu {
    /// Nanoseconds this tgid's threads were on this CPU.
    pub on_cpu_ns: u64,
    /// How many times one of its threads was switched out on this CPU.
    pub switches: u64,
    /// cgroup (v2) id of the thread that created the entry.
    pub cgroup_id: u64,
    /// Real uid of the thread that created the entry.
    pub uid: u32,
    pub _pad: u32,
    /// Growth of its threads' `task_struct.ioac` (the kernel's own per-task I/O accounting,
    /// what `/proc/<pid>/io` shows), harvested with the on-CPU time.
    pub io: TaskIo,
}

/// Growth of the kernel's `struct task_io_accounting` counters (`/proc/<pid>/io`), summed over
/// the threads of a thread group. Harvested by the scheduler program when it adds a thread's
/// runtime to `TGID_CPU`, and at each thread's exit (`agent-ebpf/src/sched.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskIo {
    /// Bytes returned by read-family calls and in-kernel reads (exec, sendfile, splice, ...).
    pub rchar: u64,
    /// Bytes passed to write-family calls and in-kernel writes.
    pub wchar: u64,
    /// Read-family and write-family calls.
    pub syscr: u64,
    pub syscw: u64,
    /// Bytes this task caused to be read from storage (page-cache misses, direct I/O).
    pub read_bytes: u64,
    /// Bytes of page-cache pages this task dirtied (to be written to storage).
    pub write_bytes: u64,
    /// Of `write_bytes`: dirty pages truncated before writeback (e.g. a deleted file).
    pub cancelled_write_bytes: u64,
}

impl TaskIo {
    /// `self - before`, field by field (0 where a counter did not grow).
    #[inline(always)]
    pub fn since(&self, before: &TaskIo) -> TaskIo {
        TaskIo {
            rchar: self.rchar.saturating_sub(before.rchar),
            wchar: self.wchar.saturating_sub(before.wchar),
            syscr: self.syscr.saturating_sub(before.syscr),
            syscw: self.syscw.saturating_sub(before.syscw),
            read_bytes: self.read_bytes.saturating_sub(before.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            cancelled_write_bytes: self.cancelled_write_bytes.saturating_sub(before.cancelled_write_bytes),
        }
    }

    /// Adds `o` field by field.
    #[inline(always)]
    pub fn add(&mut self, o: &TaskIo) {
        self.rchar += o.rchar;
        self.wchar += o.wchar;
        self.syscr += o.syscr;
        self.syscw += o.syscw;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.cancelled_write_bytes += o.cancelled_write_bytes;
    }

    /// Whether any counter is non-zero.
    #[inline(always)]
    pub fn any(&self) -> bool {
        (self.rchar | self.wchar | self.syscr | self.syscw | self.read_bytes | self.write_bytes) != 0
            || self.cancelled_write_bytes != 0
    }
}

/// Indices into the per-CPU `STATS` array: capacity problems the kernel side counts.
pub mod stat {
    /// A `TGID_CPU` insert failed because the map was full: that CPU time is lost.
    pub const TGID_MAP_FULL: u32 = 0;
    /// A lifecycle event could not be reserved in the ring buffer.
    pub const LIFECYCLE_RINGBUF_FULL: u32 = 1;
    /// CPU nanoseconds that could not be recorded because of `TGID_MAP_FULL`.
    pub const LOST_CPU_NS: u32 = 2;
    /// I/O: the per-tgid `TGID_IO` map was full; that tgid's I/O of the event is lost.
    pub const IO_TGID_MAP_FULL: u32 = 3;
    /// I/O: the per-file `FILE_IO` map was full; that file's activity of the event is lost.
    pub const IO_FILE_MAP_FULL: u32 = 4;
    /// I/O: the `COPY_IO` or `BLOCK_IO` map was full.
    pub const IO_COPY_BLOCK_MAP_FULL: u32 = 5;
    /// I/O: an extent could not be reserved in `IO_EXTENTS` (that range is lost; the bytes stay counted).
    pub const IO_EXTENTS_FULL: u32 = 6;
    /// I/O: a path event could not be reserved in `IO_PATHS`.
    pub const IO_PATHS_FULL: u32 = 7;
    /// I/O: a timed syscall whose `IO_THREADS` slot another thread took before its exit (two
    /// live threads with equal `tid % 32768`): that call is counted but not timed.
    pub const IO_ENTER_MISSING: u32 = 8;
    /// I/O: a file descriptor could not be resolved to a file (its bytes count, not per file).
    pub const IO_FD_UNRESOLVED: u32 = 9;
    /// The scheduler program could not get a thread's task-local storage (out of memory):
    /// that stint was charged from `prev_sum_exec_runtime` instead.
    pub const TASK_STORAGE_FAILED: u32 = 10;
    /// The scheduler program saw idle switched out without having seen it switched in (the
    /// kernel did not deliver that switch): the idle stint was inferred (`agent-ebpf/src/sched.rs`).
    pub const IDLE_START_UNSEEN: u32 = 11;
    /// Number of `STATS` slots.
    pub const COUNT: u32 = 16;
}

/// What happened to a process.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleKind {
    /// A new process (thread group) was created; thread creation is not reported.
    Fork = 1,
    /// A process replaced its image.
    Exec = 2,
    /// A process's leader thread exited.
    Exit = 3,
}

impl LifecycleKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Fork),
            2 => Some(Self::Exec),
            3 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One process lifecycle event, as written to the `LIFECYCLE` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LifecycleEvent {
    /// A [`LifecycleKind`] as u32.
    pub kind: u32,
    /// The process (tgid) the event is about: the child for a fork.
    pub tgid: u32,
    /// The parent's tgid (fork), or 0 when not known.
    pub parent_tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Exit: the task's `exit_code` (wait status encoding). Exec: the tgid before exec.
    pub code: i32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// Exec: the file name passed to exec, NUL-terminated (truncated if longer).
    pub filename: [u8; FILENAME_LEN],
}

/// Names of the eBPF globals that userspace fills in from the kernel's BTF before loading.
pub mod globals {
    /// `offsetof(struct task_struct, pid)`.
    pub const TASK_PID_OFF: &str = "TASK_PID_OFF";
    /// `offsetof(struct task_struct, tgid)`.
    pub const TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    /// `offsetof(struct task_struct, exit_code)`.
    pub const TASK_EXIT_CODE_OFF: &str = "TASK_EXIT_CODE_OFF";
    /// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, sum_exec_runtime)`.
    pub const TASK_SUM_EXEC_RUNTIME_OFF: &str = "TASK_SUM_EXEC_RUNTIME_OFF";
    /// `offsetof(struct task_struct, se) + offsetof(struct sched_entity, prev_sum_exec_runtime)`.
    pub const TASK_PREV_SUM_EXEC_RUNTIME_OFF: &str = "TASK_PREV_SUM_EXEC_RUNTIME_OFF";
    /// `offsetof(struct task_struct, pid)`, for the scheduler program.
    pub const SCHED_TASK_PID_OFF: &str = "SCHED_TASK_PID_OFF";
    /// `offsetof(struct task_struct, tgid)`, for the scheduler program.
    pub const SCHED_TASK_TGID_OFF: &str = "SCHED_TASK_TGID_OFF";
    /// `offsetof(struct task_struct, flags)`, for the scheduler program (`PF_EXITING`).
    pub const SCHED_TASK_FLAGS_OFF: &str = "SCHED_TASK_FLAGS_OFF";
    /// `offsetof(struct linux_binprm, filename)`.
    pub const BINPRM_FILENAME_OFF: &str = "BINPRM_FILENAME_OFF";
    /// `offsetof(struct task_struct, ioac) + offsetof(struct task_io_accounting, <field>)`.
    pub const TASK_IOAC_RCHAR_OFF: &str = "TASK_IOAC_RCHAR_OFF";
    pub const TASK_IOAC_WCHAR_OFF: &str = "TASK_IOAC_WCHAR_OFF";
    pub const TASK_IOAC_SYSCR_OFF: &str = "TASK_IOAC_SYSCR_OFF";
    pub const TASK_IOAC_SYSCW_OFF: &str = "TASK_IOAC_SYSCW_OFF";
    pub const TASK_IOAC_READ_BYTES_OFF: &str = "TASK_IOAC_READ_BYTES_OFF";
    pub const TASK_IOAC_WRITE_BYTES_OFF: &str = "TASK_IOAC_WRITE_BYTES_OFF";
    pub const TASK_IOAC_CANCELLED_OFF: &str = "TASK_IOAC_CANCELLED_OFF";
    /// `offsetof(struct task_struct, start_time)` (CLOCK_MONOTONIC ns at fork).
    pub const TASK_START_TIME_OFF: &str = "TASK_START_TIME_OFF";
    /// Not an offset: CLOCK_MONOTONIC ns when the agent loaded the programs. Threads started
    /// before it have their `ioac` history left out (only growth after the agent first sees
    /// them is counted); threads started after it are counted from zero.
    pub const IOAC_SINCE_NS: &str = "IOAC_SINCE_NS";

    /// A global that holds a kernel struct offset: (global, struct, field), where the field may
    /// be a dotted path through embedded structs. Userspace reads each from the kernel's BTF.
    pub type OffsetGlobal = (&'static str, &'static str, &'static str);

    /// The offsets the scheduler program (`sched_switch_btf`) needs.
    pub const SCHED_OFFSETS: &[OffsetGlobal] = &[
        (TASK_SUM_EXEC_RUNTIME_OFF, "task_struct", "se.sum_exec_runtime"),
        (TASK_PREV_SUM_EXEC_RUNTIME_OFF, "task_struct", "se.prev_sum_exec_runtime"),
        (SCHED_TASK_PID_OFF, "task_struct", "pid"),
        (SCHED_TASK_TGID_OFF, "task_struct", "tgid"),
        (SCHED_TASK_FLAGS_OFF, "task_struct", "flags"),
    ];

    /// The offsets the scheduler program's `ioac` harvest needs. Optional: where the kernel
    /// lacks them (no `CONFIG_TASK_IO_ACCOUNTING`) they stay 0 and the harvest is off.
    pub const IOAC_OFFSETS: &[OffsetGlobal] = &[
        (TASK_IOAC_RCHAR_OFF, "task_struct", "ioac.rchar"),
        (TASK_IOAC_WCHAR_OFF, "task_struct", "ioac.wchar"),
        (TASK_IOAC_SYSCR_OFF, "task_struct", "ioac.syscr"),
        (TASK_IOAC_SYSCW_OFF, "task_struct", "ioac.syscw"),
        (TASK_IOAC_READ_BYTES_OFF, "task_struct", "ioac.read_bytes"),
        (TASK_IOAC_WRITE_BYTES_OFF, "task_struct", "ioac.write_bytes"),
        (TASK_IOAC_CANCELLED_OFF, "task_struct", "ioac.cancelled_write_bytes"),
        (TASK_START_TIME_OFF, "task_struct", "start_time"),
    ];

    /// The offsets the lifecycle programs (fork, exec, exit) need.
    pub const LIFECYCLE_OFFSETS: &[OffsetGlobal] = &[
        (TASK_PID_OFF, "task_struct", "pid"),
        (TASK_TGID_OFF, "task_struct", "tgid"),
        (TASK_EXIT_CODE_OFF, "task_struct", "exit_code"),
        (BINPRM_FILENAME_OFF, "linux_binprm", "filename"),
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::TgidCpu {}
    unsafe impl aya::Pod for super::TaskIo {}
    unsafe impl aya::Pod for super::LifecycleEvent {}
    unsafe impl aya::Pod for super::io::TgidIo {}
    unsafe impl aya::Pod for super::io::FileKey {}
    unsafe impl aya::Pod for super::io::FileIo {}
    unsafe impl aya::Pod for super::io::Extent {}
    unsafe impl aya::Pod for super::io::CopyKey {}
    unsafe impl aya::Pod for super::io::CopyIo {}
    unsafe impl aya::Pod for super::io::BlockKey {}
    unsafe impl aya::Pod for super::io::BlockIo {}
    unsafe impl aya::Pod for super::io::PathEvent {}
    unsafe impl aya::Pod for super::io::IoOffsets {}
    unsafe impl aya::Pod for super::io::PendingIo {}
}

/// Kernel functions (kfuncs) the programs call. The Rust eBPF toolchain here cannot emit a
/// kfunc call, so a program calls a helper number that does not exist, [`kfunc::RDONLY_CAST_MARKER`],
/// and userspace rewrites each such instruction into a call of the kfunc (by its id in the
/// running kernel's BTF) before loading the object: `agent/src/probes/kfunc.rs`.
pub mod kfunc {
    /// Stands for `void *bpf_rdonly_cast(const void *obj, u32 btf_id)`.
    pub const RDONLY_CAST_MARKER: i32 = 0x0cab_0001;
}
