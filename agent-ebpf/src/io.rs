//! I/O per tgid and per file: syscall bytes, in-kernel copies, time in I/O syscalls, page
//! cache misses and dirtied folios, socket bytes, block-layer bytes per device, and the paths
//! of opened and unlinked files.
//!
//! Hooks (see `docs/io.md` for the measurements behind the choice):
//! - BTF tracepoint `sys_exit`, on every syscall, filtering on the syscall number first.
//!   `pt_regs` is BTF-typed there, so the handler reads the arguments back (still intact at
//!   exit) with plain loads, and resolves the file descriptor from `bpf_get_current_task_btf()`
//!   through `files->fdt->fd[fd]` with plain loads too, the fd table's elements through
//!   `bpf_rdonly_cast` ([`rdonly_cast`]). Each call is added to a per-CPU pending slot
//!   ([`PendingIo`]) and the slots are moved into the maps when the calls change file, tgid
//!   or direction, after 64 calls, and when userspace asks before a drain.
//! - BTF tracepoint `sys_enter`, attached by userspace only in random sampling windows: the
//!   calls that enter then are timed (enter→exit), and userspace scales their time to all calls.
//! - classic tracepoints for the page cache, writeback, sockets and the block layer: their
//!   record offsets come from the kernel's BTF (`trace_event_raw_*`).
//!
//! Every struct offset comes from the `IO_OFFSETS` global that userspace fills in from BTF.
//! x86_64 syscall numbers (userspace refuses to attach on other architectures).

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use carbon_agent_common::{
    io::{
        BlockIo, BlockKey, CopyIo, CopyKey, Extent, FileIo, FileKey, IoOffsets, NAME_LEN, PAGE_SIZE,
        PATH_DEPTH, PENDING_FLUSH_CALLS, PENDING_SLOTS, PathEvent, PendingIo, Run, TgidIo, extent_kind,
        file_kind, path_flag, path_kind, pending_slot,
    },
    stat,
};

use crate::stats;

#[unsafe(no_mangle)]
static IO_OFFSETS: Global<IoOffsets> = Global::new(IoOffsets {
    regs_di: 0,
    regs_si: 0,
    regs_dx: 0,
    regs_r10: 0,
    regs_orig_ax: 0,
    regs_ax: 0,
    task_pid: 0,
    task_tgid: 0,
    task_files: 0,
    task_fs: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_pos: 0,
    file_dentry: 0,
    inode_ino: 0,
    inode_mode: 0,
    inode_sb: 0,
    sb_dev: 0,
    fs_pwd_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    dentry_sb: 0,
    tp_blk_dev: 0,
    tp_blk_nr_sector: 0,
    tp_blk_rwbs: 0,
    inode_generation: 0,
    inode_size: 0,
    inode_dentry: 0,
    dentry_alias: 0,
    dentry_inode: 0,
    mapping_host: 0,
    folio_flags: 0,
    folio_flags_1: 0,
    folio_mapping: 0,
    folio_index: 0,
    pg_head: 0,
    page_cache_files: 0,
    exit_times_only: 0,
    btf_file: 0,
    btf_callback_head: 0,
    flush_tgid: 0,
    ready: 0,
});

// x86_64 syscall numbers.
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_OPEN: u64 = 2;
const NR_PREAD64: u64 = 17;
const NR_PWRITE64: u64 = 18;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDFILE: u64 = 40;
const NR_UNLINK: u64 = 87;
const NR_CREAT: u64 = 85;
const NR_OPENAT: u64 = 257;
const NR_UNLINKAT: u64 = 263;
const NR_SPLICE: u64 = 275;
const NR_PREADV: u64 = 295;
const NR_PWRITEV: u64 = 296;
const NR_COPY_FILE_RANGE: u64 = 326;
const NR_PREADV2: u64 = 327;
const NR_PWRITEV2: u64 = 328;
const NR_OPENAT2: u64 = 437;

const AT_FDCWD: i64 = -100;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;
const MSG_PEEK: i32 = 2;
const EBADF: i64 = 9;
const ENOSYS: i64 = 38;

/// Per-tgid totals, per CPU. Taken (read and deleted) by userspace every interval.
#[map]
static TGID_IO: PerCpuHashMap<u32, TgidIo> = PerCpuHashMap::with_max_entries(16384, 0);

/// Per (tgid, regular file) activity and current sequential runs. Taken every interval.
#[map]
static FILE_IO: HashMap<FileKey, FileIo> = HashMap::with_max_entries(65536, 0);

/// In-kernel copies per (tgid, source, destination). Taken every interval.
#[map]
static COPY_IO: HashMap<CopyKey, CopyIo> = HashMap::with_max_entries(8192, 0);

/// Completed block requests per (device, direction), per CPU. Taken every interval.
#[map]
static BLOCK_IO: PerCpuHashMap<BlockKey, BlockIo> = PerCpuHashMap::with_max_entries(256, 0);

/// Finished sequential runs (file offsets read, written, cached).
#[map]
static IO_EXTENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Paths of opened regular files and of unlinked paths.
#[map]
static IO_PATHS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per CPU: the read and write calls not yet added to `FILE_IO` / `TGID_IO` (see
/// [`PendingIo`]); slot [`pending_slot`]`(tid, is_read)`.
#[map]
static PENDING_IO: PerCpuArray<PendingIo> = PerCpuArray::with_max_entries(PENDING_SLOTS, 0);

/// Slots of [`IO_THREADS`] (a power of two; threads are placed by `tid % THREADS`).
const THREADS: u32 = 32768;

/// Per thread (slot `tid % THREADS`, tagged with the tid): the enter time of the I/O syscall
/// in progress, when it is timed. An array: its lookup is inlined by the verifier (no
/// hashing). Two live
/// threads whose tids are equal modulo `THREADS` share a slot: a timed call whose slot was
/// taken meanwhile is counted untimed (`IO_ENTER_MISSING`). With `pid_max` ≤ 32768 (the
/// default below 32 CPUs) that cannot happen.
#[map]
static IO_THREADS: Array<Thread> = Array::with_max_entries(THREADS, 0);

/// CLOCK_MONOTONIC ns when the current timing window opened (written by userspace before it
/// attaches the programs for a window). In the page-cache tier, where `io_sys_exit` is
/// attached only in the windows too, an enter time older than this is from an earlier window
/// whose exit was not seen: not used.
#[map]
static IO_WINDOW: Array<u64> = Array::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Thread {
    tid: u32,
    /// Syscall number at enter (I/O syscalls only).
    nr: u32,
    /// Enter time of the call in progress when `io_sys_enter` saw it; 0 otherwise.
    ts: u64,
}

/// What a file descriptor resolves to.
#[derive(Clone, Copy)]
struct Fd {
    file: *const u8,
    inode: *const u8,
    dev: u32,
    kind: u32,
    ino: u64,
    /// `i_generation` (regular files only; else 0).
    generation: u32,
    /// `f_pos` after the call (regular files only; else 0).
    pos: i64,
}

/// `*p += n`. Not atomic (the BPF target lacks 64-bit atomic add in core here): two threads
/// of one process updating the same shared entry on two CPUs at the same instant can lose one
/// increment. Per-CPU maps are used where this matters most (per-tgid totals), and the
/// shared per-file entries are updated once per [`PendingIo`] flush, not per call.
#[inline(always)]
unsafe fn add(p: *mut u64, n: u64) {
    unsafe { *p += n };
}

#[inline(always)]
fn offs() -> IoOffsets {
    IO_OFFSETS.load()
}

/// One field of `IO_OFFSETS`, read on its own: a load from the frozen read-only global that
/// the verifier resolves to a known constant, so that it can check the direct loads below.
macro_rules! off {
    ($field:ident) => {{
        // SAFETY: `Global<T>` holds just a `MaybeUninit<T>`, always initialised.
        #[allow(unused_unsafe)]
        let v = unsafe {
            core::ptr::read_volatile(&raw const (*(&raw const IO_OFFSETS).cast::<IoOffsets>()).$field)
        };
        v
    }};
}

/// A field of a BTF-typed kernel pointer (`tp_btf` argument, `bpf_get_current_task_btf()`, or
/// a pointer loaded from one of those): a plain load, which the verifier checks against the
/// kernel's BTF and turns into a fault-tolerant (PROBE_MEM) load. `off` must be a BTF offset
/// from [`off!`], a constant to the verifier.
#[inline(always)]
fn load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: see above; a faulting address reads as zero.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

#[inline(always)]
unsafe fn rd<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

#[inline(always)]
fn is_io(nr: u64) -> bool {
    matches!(
        nr,
        NR_READ
            | NR_WRITE
            | NR_PREAD64
            | NR_PWRITE64
            | NR_READV
            | NR_WRITEV
            | NR_PREADV
            | NR_PWRITEV
            | NR_PREADV2
            | NR_PWRITEV2
            | NR_SENDFILE
            | NR_SPLICE
            | NR_COPY_FILE_RANGE
    )
}

/// The calling thread's [`IO_THREADS`] slot, taken over (tag set) when another thread held it.
#[inline(always)]
fn thread_slot(tid: u32) -> *mut Thread {
    match IO_THREADS.get_ptr_mut(tid & (THREADS - 1)) {
        Some(t) => {
            // SAFETY: array slot; only the thread that owns it (tid tag) writes it, except when
            // two live threads share a slot.
            unsafe {
                if (*t).tid != tid {
                    if (*t).ts != 0 {
                        stats::add(stat::IO_ENTER_MISSING, 1);
                    }
                    (*t).tid = tid;
                    (*t).ts = 0;
                }
            }
            t
        }
        None => core::ptr::null_mut(),
    }
}

/// `sys_enter(struct pt_regs *regs, long id)`: the enter time of an I/O syscall. Attached only
/// during the sampling windows (`agent/src/io/sampler.rs`): its calls are the timed ones.
#[btf_tracepoint(function = "sys_enter")]
pub fn io_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if is_io(nr) {
        let t = thread_slot(bpf_get_current_pid_tgid() as u32);
        if !t.is_null() {
            // SAFETY: this thread's slot; bpf helper without preconditions.
            unsafe {
                (*t).nr = nr as u32;
                (*t).ts = bpf_ktime_get_ns();
            }
        }
    }
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`: bytes of I/O syscalls, paths of opened and
/// unlinked files. `regs` is BTF-typed: its fields are read with plain loads (no helper call).
/// Any other syscall returns after the number check.
#[btf_tracepoint(function = "sys_exit")]
pub fn io_sys_exit(ctx: BtfTracePointContext) -> i32 {
    if off!(ready) == 0 {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let nr: u64 = load(regs, off!(regs_orig_ax));
    let ret: i64 = ctx.arg(1);
    if off!(exit_times_only) != 0 {
        if is_io(nr) {
            time_only(nr, ret);
        }
        return 0;
    }
    if is_io(nr) {
        on_io_exit(regs, nr, ret);
    } else if (nr == NR_OPENAT || nr == NR_OPEN || nr == NR_OPENAT2 || nr == NR_CREAT) && ret >= 0 {
        on_open_exit(&offs(), ret);
    } else if (nr == NR_UNLINK || nr == NR_UNLINKAT) && ret == 0 {
        on_unlink(regs, nr);
    }
    0
}

#[inline(always)]
fn on_io_exit(regs: *const u8, nr: u64, ret: i64) {
    let task = current_task_btf();
    let (tid, tgid): (u32, u32) = (load(task, off!(task_pid)), load(task, off!(task_tgid)));
    let thread = thread_slot(tid);
    // Timed when io_sys_enter saw this very call.
    let mut ns = 0u64;
    let mut timed = 0u64;
    if !thread.is_null() {
        // SAFETY: this thread's slot.
        unsafe {
            let ts = (*thread).ts;
            if ts != 0 && (*thread).nr as u64 == nr {
                // SAFETY: bpf helper without preconditions.
                ns = bpf_ktime_get_ns().saturating_sub(ts);
                timed = 1;
            }
            if ts != 0 {
                (*thread).ts = 0;
            }
        }
    }
    // An `int` argument: only the low 32 bits of the register are defined.
    let fd = load::<u64>(regs, off!(regs_di)) as i32 as i64;

    if nr == NR_SENDFILE || nr == NR_SPLICE || nr == NR_COPY_FILE_RANGE {
        on_copy_exit(regs, nr, ret, task, tgid, fd, ns, timed);
        return;
    }

    let is_read = matches!(nr, NR_READ | NR_PREAD64 | NR_READV | NR_PREADV | NR_PREADV2);
    let Some(slot) = PENDING_IO.get_ptr_mut(pending_slot(tid, is_read)) else {
        return;
    };
    // SAFETY: this CPU's slot; BPF programs on syscall tracepoints run with preemption off, so
    // nothing else touches it meanwhile.
    let slot = unsafe { &mut *slot };
    if ret < 0 {
        if nr == NR_PREAD64 && ret == -EBADF && fd == -1 && tgid == off!(flush_tgid) {
            flush_cpu();
            return;
        }
        // A failed call moved no bytes; its fd may not even be open (EBADF).
        if slot.kind == 0 || slot.tgid != tgid {
            flush(slot, is_read);
            start(slot, tgid, file_kind::OTHER, 0, 0);
        }
        slot.failed_calls += 1;
        return;
    }
    let bytes = ret as u64;
    let f = resolve(task, fd, Some((slot, tgid)));
    let (kind, dev, ino, generation) = match &f {
        Some(f) => (f.kind, f.dev, f.ino, f.generation),
        None => {
            stats::add(stat::IO_FD_UNRESOLVED, 1);
            (file_kind::OTHER, 0, 0, 0)
        }
    };
    if slot.kind != kind
        || slot.tgid != tgid
        || slot.ino != ino
        || slot.dev != dev
        || slot.generation != generation
    {
        flush(slot, is_read);
        start(slot, tgid, kind, dev, ino);
        slot.generation = generation;
    }
    if let Some(f) = &f {
        slot.fd = fd as u32;
        slot.file = f.file as u64;
        slot.inode = f.inode as u64;
    }
    slot.calls += 1;
    slot.bytes += bytes;
    slot.timed_calls += timed;
    slot.timed_ns += ns;
    if kind == file_kind::REG
        && bytes > 0
        && let Some(f) = f
    {
        // Where the bytes were: pread/pwrite(v)(2) give the offset (arg 3; -1 for v2 means the
        // file position); the others used and advanced f_pos.
        let explicit =
            matches!(nr, NR_PREAD64 | NR_PWRITE64 | NR_PREADV | NR_PWRITEV | NR_PREADV2 | NR_PWRITEV2);
        let mut start_off = if f.pos >= bytes as i64 { f.pos as u64 - bytes } else { 0 };
        if explicit {
            let p: i64 = load(regs, off!(regs_r10));
            if p >= 0 {
                start_off = p as u64;
            }
        }
        let key = FileKey { tgid, dev, ino, generation, _pad: 0 };
        let kind = if is_read { extent_kind::READ } else { extent_kind::WRITE };
        extend_run(&key, kind, &mut slot.run, start_off, start_off + bytes);
    }
    if slot.calls >= PENDING_FLUSH_CALLS {
        flush(slot, is_read);
    }
}

/// Page-cache tier: the exit of an I/O syscall in a timing window; its enter→exit time, when
/// its enter was seen in this window, goes to the tgid's totals (bytes come from the kernel's
/// own accounting, not from here).
#[inline(always)]
fn time_only(nr: u64, ret: i64) {
    let task = current_task_btf();
    let (tid, tgid): (u32, u32) = (load(task, off!(task_pid)), load(task, off!(task_tgid)));
    let thread = thread_slot(tid);
    if thread.is_null() {
        return;
    }
    let window = IO_WINDOW.get(0).copied().unwrap_or(0);
    // SAFETY: this thread's slot.
    let (ts, entered) = unsafe { (core::mem::replace(&mut (*thread).ts, 0), (*thread).nr as u64) };
    if ts == 0 || ts < window || entered != nr || ret < 0 {
        return;
    }
    // SAFETY: bpf helper without preconditions.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(ts);
    if let Some(t) = tgid_entry(tgid, None) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            (*t).io_ns += ns;
            (*t).timed_calls += 1;
        }
    }
}

/// sendfile, splice, copy_file_range: per-tgid and per (source, destination) counts, straight
/// into the maps (these calls move large amounts each; they are not combined).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn on_copy_exit(
    regs: *const u8,
    nr: u64,
    ret: i64,
    task: *const u8,
    tgid: u32,
    fd: i64,
    ns: u64,
    timed: u64,
) {
    let Some(t) = tgid_entry(tgid, None) else {
        return;
    };
    let bytes = if ret > 0 { ret as u64 } else { 0 };
    // SAFETY: per-CPU map value.
    unsafe {
        (*t).copy_calls += 1;
        if ret < 0 {
            (*t).failed_calls += 1;
        } else {
            (*t).io_ns += ns;
            (*t).timed_calls += timed;
        }
        (*t).copy_bytes += bytes;
    }
    if bytes == 0 {
        return;
    }
    // sendfile(out_fd, in_fd, ...); splice / copy_file_range(in_fd, off_in, out_fd, ...).
    let other =
        if nr == NR_SENDFILE { load::<u64>(regs, off!(regs_si)) } else { load::<u64>(regs, off!(regs_dx)) }
            as i32 as i64;
    let (src, dst) = if nr == NR_SENDFILE { (other, fd) } else { (fd, other) };
    let (Some(s), Some(d)) = (resolve(task, src, None), resolve(task, dst, None)) else {
        stats::add(stat::IO_FD_UNRESOLVED, 1);
        return;
    };
    let key = CopyKey {
        tgid,
        src_dev: s.dev,
        src_ino: s.ino,
        dst_dev: d.dev,
        src_kind: s.kind as u16,
        dst_kind: d.kind as u16,
        dst_ino: d.ino,
        src_generation: s.generation,
        dst_generation: d.generation,
    };
    if let Some(c) = COPY_IO.get_ptr_mut(key) {
        // SAFETY: map value pointer, see [`add`].
        unsafe {
            add(&raw mut (*c).bytes, bytes);
            add(&raw mut (*c).calls, 1);
            add(&raw mut (*c).io_ns, ns);
            add(&raw mut (*c).timed_calls, timed);
        }
    } else if COPY_IO.insert(key, CopyIo { bytes, calls: 1, io_ns: ns, timed_calls: timed }, 0).is_err() {
        stats::add(stat::IO_COPY_BLOCK_MAP_FULL, 1);
    }
}

/// Makes `slot` current for (tgid, file); it must be empty.
#[inline(always)]
fn start(slot: &mut PendingIo, tgid: u32, kind: u32, dev: u32, ino: u64) {
    *slot = PendingIo { tgid, kind, dev, ino, uid: bpf_get_current_uid_gid() as u32, ..PendingIo::default() };
}

/// Moves every pending slot of this CPU into the maps (asked by userspace before a drain).
#[inline(always)]
fn flush_cpu() {
    for i in 0..PENDING_SLOTS {
        if let Some(s) = PENDING_IO.get_ptr_mut(i) {
            // SAFETY: this CPU's slot, as in `on_io_exit`.
            flush(unsafe { &mut *s }, i & 1 == 1);
        }
    }
}

/// Adds a pending slot to the maps and empties it. Regular files go to their per-(tgid, file)
/// entry, which also carries the tgid's regular-file totals (userspace sums them); anything
/// else, failed calls, and regular files whose entry could not be had (map full) to the
/// per-tgid totals.
#[inline(never)]
fn flush(slot: &mut PendingIo, is_read: bool) {
    if slot.kind == 0 {
        return;
    }
    let mut in_file = false;
    if slot.kind == file_kind::REG && slot.calls > 0 {
        let key =
            FileKey { tgid: slot.tgid, dev: slot.dev, ino: slot.ino, generation: slot.generation, _pad: 0 };
        if let Some(e) = file_entry(&key, Some(slot.uid)) {
            // SAFETY: map value pointer; see [`add`].
            unsafe {
                add(&raw mut (*e).io_ns, slot.timed_ns);
                add(&raw mut (*e).timed_calls, slot.timed_calls);
                if is_read {
                    add(&raw mut (*e).read_bytes, slot.bytes);
                    add(&raw mut (*e).read_calls, slot.calls);
                } else {
                    add(&raw mut (*e).write_bytes, slot.bytes);
                    add(&raw mut (*e).write_calls, slot.calls);
                }
                if slot.run.end != slot.run.start {
                    let run = if is_read { &raw mut (*e).read_run } else { &raw mut (*e).write_run };
                    let kind = if is_read { extent_kind::READ } else { extent_kind::WRITE };
                    extend_run(&key, kind, &mut *run, slot.run.start, slot.run.end);
                }
            }
            in_file = true;
        }
    }
    if (!in_file || slot.failed_calls > 0)
        && let Some(t) = tgid_entry(slot.tgid, Some(slot.uid))
    {
        // SAFETY: per-CPU map value.
        let t = unsafe { &mut *t };
        let (calls, bytes) = if in_file { (0, 0) } else { (slot.calls, slot.bytes) };
        if !in_file {
            t.io_ns += slot.timed_ns;
            t.timed_calls += slot.timed_calls;
        }
        t.failed_calls += slot.failed_calls;
        if is_read {
            t.read_calls += calls + slot.failed_calls;
            t.read_bytes += bytes;
        } else {
            t.write_calls += calls + slot.failed_calls;
            t.write_bytes += bytes;
        }
        match (slot.kind, is_read) {
            (file_kind::REG, true) => t.read_file_bytes += bytes,
            (file_kind::REG, false) => t.write_file_bytes += bytes,
            (file_kind::PIPE, true) => t.read_pipe_bytes += bytes,
            (file_kind::PIPE, false) => t.write_pipe_bytes += bytes,
            (file_kind::SOCK, true) => t.read_sock_bytes += bytes,
            (file_kind::SOCK, false) => t.write_sock_bytes += bytes,
            _ => {}
        }
    }
    slot.kind = 0;
}

/// Extends `run` with `[start, end)` when it continues it; otherwise sends the old run as an
/// extent and starts a new one.
#[inline(always)]
fn extend_run(key: &FileKey, kind: u32, run: &mut Run, start: u64, end: u64) {
    if run.end == run.start {
        *run = Run { start, end };
        return;
    }
    if start == run.end {
        run.end = end;
        return;
    }
    match IO_EXTENTS.reserve::<Extent>(0) {
        Some(mut slot) => {
            slot.write(Extent { key: *key, kind, _pad: 0, run: *run });
            slot.submit(0);
        }
        None => stats::add(stat::IO_EXTENTS_FULL, 1),
    }
    *run = Run { start, end };
}

/// The tgid's per-CPU totals, created when missing with `uid` (`None`: the current thread's).
#[inline(always)]
fn tgid_entry(tgid: u32, uid: Option<u32>) -> Option<*mut TgidIo> {
    if let Some(t) = TGID_IO.get_ptr_mut(tgid) {
        return Some(t);
    }
    let uid = uid.unwrap_or_else(|| bpf_get_current_uid_gid() as u32);
    let init = TgidIo { uid, ..TgidIo::default() };
    if TGID_IO.insert(tgid, init, 0).is_err() {
        stats::add(stat::IO_TGID_MAP_FULL, 1);
        return None;
    }
    TGID_IO.get_ptr_mut(tgid)
}

/// The (tgid, file) entry, created when missing with `uid` (`None`: the current thread's).
#[inline(always)]
fn file_entry(key: &FileKey, uid: Option<u32>) -> Option<*mut FileIo> {
    if let Some(e) = FILE_IO.get_ptr_mut(key) {
        return Some(e);
    }
    let uid = uid.unwrap_or_else(|| bpf_get_current_uid_gid() as u32);
    let init = FileIo { uid, ..FileIo::default() };
    // BPF_NOEXIST: another CPU may have created it meanwhile; then use that one.
    let _ = FILE_IO.insert(key, init, 1);
    let e = FILE_IO.get_ptr_mut(key);
    if e.is_none() {
        stats::add(stat::IO_FILE_MAP_FULL, 1);
    }
    e
}

/// `current` as a BTF-typed pointer (fields are plain loads).
#[inline(always)]
fn current_task_btf() -> *const u8 {
    // SAFETY: bpf helper without preconditions; a trusted BTF pointer.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// `bpf_rdonly_cast(obj, btf_id)`: `obj` (any value) as a read-only, untrusted pointer to the
/// kernel type `btf_id`, through which the verifier allows plain loads (fault-tolerant
/// PROBE_MEM loads; a bad address reads as zero). The verifier inlines the call into a register
/// move: it costs nothing. `btf_id` must be a constant to the verifier (a field of the frozen
/// `IO_OFFSETS`). Emitted as a call of the marker helper that userspace rewrites into the kfunc
/// call (`carbon_agent_common::kfunc`).
#[inline(always)]
fn rdonly_cast(obj: u64, btf_id: u32) -> *const u8 {
    let r: u64;
    // SAFETY: a call with the BPF calling convention: arguments in r1, r2, result in r0,
    // r1–r5 clobbered.
    unsafe {
        core::arch::asm!(
            "call {marker}",
            marker = const carbon_agent_common::kfunc::RDONLY_CAST_MARKER,
            inlateout("r1") obj => _,
            inlateout("r2") btf_id as u64 => _,
            lateout("r0") r,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack, readonly),
        )
    };
    r as *const u8
}

/// `current->files->fdt->fd[fd]` as a `struct file` pointer the verifier lets the program
/// load from, whatever the size of the process's fd table, or `None` (out of the table, or
/// not open). `fdt->fd` is a `struct file **`, which the verifier types as a plain number: the
/// element's address is cast to a `struct callback_head` (a pointer at offset 0) to load the
/// element, which is cast to a `struct file`.
#[inline(always)]
fn fd_file(task: *const u8, fd: i64) -> Option<*const u8> {
    if fd < 0 {
        return None;
    }
    let files: *const u8 = load(task, off!(task_files));
    if files.is_null() {
        return None;
    }
    let fdt: *const u8 = load(files, off!(files_fdt));
    if fdt.is_null() {
        return None;
    }
    let max: u32 = load(fdt, off!(fdt_max_fds));
    if fd as u64 >= max as u64 {
        return None;
    }
    let arr: u64 = load(fdt, off!(fdt_fd));
    let element = rdonly_cast(arr + fd as u64 * 8, off!(btf_callback_head));
    let file: u64 = load(element, 0);
    if file == 0 {
        return None;
    }
    Some(rdonly_cast(file, off!(btf_file)))
}

/// The fd's identity, with plain loads only: `current->files->fdt->fd[fd]` ([`fd_file`]),
/// `f_inode`, `i_ino` and, for regular files, `f_pos`; and `i_mode` and `i_sb->s_dev` unless
/// the file is the last one of `cache` (the calling thread's pending slot for this direction:
/// same tgid, fd, `struct file`, inode and inode number — a `struct file` or `struct inode`
/// can be freed and reused at the same address, the inode number tells the reuse apart).
#[inline(always)]
fn resolve(task: *const u8, fd: i64, cache: Option<(&PendingIo, u32)>) -> Option<Fd> {
    let file = fd_file(task, fd)?;
    let inode: *const u8 = load(file, off!(file_inode));
    let ino: u64 = load(inode, off!(inode_ino));
    let (dev, kind) = match cache {
        Some((c, tgid))
            if c.kind != 0
                && c.tgid == tgid
                && c.fd == fd as u32
                && c.file == file as u64
                && c.inode == inode as u64
                && c.ino == ino =>
        {
            (c.dev, c.kind)
        }
        _ => {
            let sb: *const u8 = load(inode, off!(inode_sb));
            (load(sb, off!(sb_dev)), kind_of(load::<u16>(inode, off!(inode_mode)) as u32))
        }
    };
    let (pos, generation): (i64, u32) = if kind == file_kind::REG {
        (load(file, off!(file_pos)), load(inode, off!(inode_generation)))
    } else {
        (0, 0)
    };
    Some(Fd { file, inode, dev, kind, ino, generation, pos })
}

#[inline(always)]
fn kind_of(mode: u32) -> u32 {
    match mode & S_IFMT {
        S_IFREG => file_kind::REG,
        S_IFIFO => file_kind::PIPE,
        S_IFSOCK => file_kind::SOCK,
        _ => file_kind::OTHER,
    }
}

/// Fills `ev.components` walking `d_parent` from `dentry` up to the root of its file system.
#[inline(always)]
fn walk_dentry(o: &IoOffsets, mut dentry: *const u8, ev: &mut PathEvent) {
    let mut depth = 0u32;
    for i in 0..PATH_DEPTH {
        let Some(parent) = (unsafe { rd::<*const u8>(dentry, o.dentry_parent) }) else {
            break;
        };
        if parent == dentry || parent.is_null() {
            ev.depth = depth;
            return;
        }
        if let Some(name) = unsafe { rd::<*const u8>(dentry, o.dentry_name) }
            && let Ok(s) = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut ev.components[i]) }
            && s.len() >= NAME_LEN - 1
        {
            ev.flags |= path_flag::LONG_NAME;
        }
        depth += 1;
        dentry = parent;
    }
    ev.depth = depth;
    // Still not at the root after PATH_DEPTH components.
    if let Some(parent) = unsafe { rd::<*const u8>(dentry, o.dentry_parent) }
        && parent != dentry
    {
        ev.flags |= path_flag::DEEP;
    }
}

#[inline(always)]
fn new_path_event(kind: u32) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<PathEvent>> {
    let Some(mut slot) = IO_PATHS.reserve::<PathEvent>(0) else {
        stats::add(stat::IO_PATHS_FULL, 1);
        return None;
    };
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    ev.kind = kind;
    ev.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.flags = 0;
    ev.dev = 0;
    ev.depth = 0;
    ev.ino = 0;
    ev.generation = 0;
    ev._pad = 0;
    // SAFETY: bpf helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    // The components must be zeroed: the reserved memory holds old events.
    for c in ev.components.iter_mut() {
        c[0] = 0;
    }
    ev.user_path[0] = 0;
    Some(slot)
}

#[inline(always)]
fn on_open_exit(o: &IoOffsets, fd: i64) {
    let Some(f) = resolve(current_task_btf(), fd, None) else {
        return;
    };
    if f.kind != file_kind::REG {
        return;
    }
    let Some(dentry) = (unsafe { rd::<*const u8>(f.file, o.file_dentry) }) else {
        return;
    };
    let Some(mut slot) = new_path_event(path_kind::OPEN) else {
        return;
    };
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    ev.dev = f.dev;
    ev.ino = f.ino;
    ev.generation = f.generation;
    walk_dentry(o, dentry, ev);
    slot.submit(0);
}

#[inline(always)]
fn on_unlink(regs: *const u8, nr: u64) {
    let o = offs();
    if o.ready == 0 {
        return;
    }
    // unlink(path); unlinkat(dfd, path, flags).
    let (dfd, path_off) = if nr == NR_UNLINK {
        (AT_FDCWD, o.regs_di)
    } else {
        (unsafe { rd::<i64>(regs, o.regs_di) }.unwrap_or(AT_FDCWD) as i32 as i64, o.regs_si)
    };
    let Some(upath) = (unsafe { rd::<*const u8>(regs, path_off) }) else {
        return;
    };
    let Some(mut slot) = new_path_event(path_kind::UNLINK) else {
        return;
    };
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    if unsafe { bpf_probe_read_user_str_bytes(upath, &mut ev.user_path) }.is_err() {
        slot.discard(0);
        return;
    }
    if ev.user_path[0] != b'/' {
        ev.flags |= path_flag::RELATIVE;
        let base = if dfd == AT_FDCWD {
            let fs: *const u8 = load(current_task_btf(), off!(task_fs));
            if fs.is_null() { None } else { Some(load::<*const u8>(fs, off!(fs_pwd_dentry))) }
        } else {
            fd_file(current_task_btf(), dfd).map(|f| load::<*const u8>(f, off!(file_dentry)))
        };
        let dev = base
            .and_then(|d| unsafe { rd::<*const u8>(d, o.dentry_sb).and_then(|sb| rd::<u32>(sb, o.sb_dev)) });
        match (base, dev) {
            (Some(base), Some(dev)) => {
                ev.dev = dev;
                walk_dentry(&o, base, ev);
            }
            _ => ev.flags |= path_flag::NO_BASE,
        }
    }
    slot.submit(0);
}

/// Bytes of a classic tracepoint record read at once by [`record`]; userspace checks that
/// every record field offset used lies within (`io::offsets`).
const RECORD: usize = 64;

/// The first [`RECORD`] bytes of a classic tracepoint record, in one probe read (instead of
/// one per field: a helper call each).
#[inline(always)]
fn record(ctx: &TracePointContext) -> Option<[u8; RECORD]> {
    // SAFETY: bpf_probe_read_kernel copes with any address; the record is in a per-CPU buffer
    // at least as large.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const [u8; RECORD]).ok() }
}

/// Field at byte `off` of a [`record`] (offsets come from BTF, known constants to the
/// verifier; clamped so that the read stays inside the buffer).
#[inline(always)]
fn field<T: Copy>(rec: &[u8; RECORD], off: u32) -> T {
    let off = (off as usize).min(RECORD - core::mem::size_of::<T>());
    // SAFETY: in bounds (clamped above); T is a plain integer type.
    unsafe { core::ptr::read_unaligned(rec.as_ptr().add(off) as *const T) }
}

/// `mm_filemap_add_to_page_cache(struct folio *folio)`: a folio inserted in the page cache (a
/// miss), in the context of the task that caused it. One per-file update (which also carries
/// the tgid total); the per-tgid map only when the per-file one is full. Folios inserted while
/// the task is inside a write-family syscall hold new data, not data fetched from storage:
/// they are not counted ([`in_write_syscall`]).
#[btf_tracepoint(function = "mm_filemap_add_to_page_cache")]
pub fn io_cache_add(ctx: BtfTracePointContext) -> i32 {
    if off!(ready) == 0 || in_write_syscall() {
        return 0;
    }
    let folio: *const u8 = ctx.arg(0);
    let mapping: *const u8 = load(folio, off!(folio_mapping));
    let Some(f) = regular_file(mapping) else {
        return 0;
    };
    let index: u64 = load(folio, off!(folio_index));
    let pages = folio_pages(folio);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = FileKey { tgid, dev: f.dev, ino: f.ino, generation: f.generation, _pad: 0 };
    if let Some(e) = seen_file_entry(&key, f.inode) {
        unsafe {
            add(&raw mut (*e).cache_miss_pages, pages);
            let start = index * PAGE_SIZE;
            extend_run(&key, extent_kind::CACHE_ADD, &mut (*e).cache_run, start, start + pages * PAGE_SIZE);
        }
    } else if let Some(t) = tgid_entry(tgid, None) {
        unsafe { (*t).cache_miss_pages += pages };
    }
    0
}

/// A regular file's identity from BTF-typed pointers.
#[derive(Clone, Copy)]
struct Inode {
    inode: *const u8,
    dev: u32,
    ino: u64,
    generation: u32,
    size: i64,
}

/// `mapping->host` when it is a regular file, with its identity and size.
#[inline(always)]
fn regular_file(mapping: *const u8) -> Option<Inode> {
    if mapping.is_null() {
        return None;
    }
    let inode: *const u8 = load(mapping, off!(mapping_host));
    if inode.is_null() || kind_of(load::<u16>(inode, off!(inode_mode)) as u32) != file_kind::REG {
        return None;
    }
    let sb: *const u8 = load(inode, off!(inode_sb));
    Some(Inode {
        inode,
        dev: load(sb, off!(sb_dev)),
        ino: load(inode, off!(inode_ino)),
        generation: load(inode, off!(inode_generation)),
        size: load(inode, off!(inode_size)),
    })
}

/// Pages in a folio: 1, or `1 << order` for a large folio (`PG_head` set; the order is the low
/// byte of `_flags_1`, as the kernel's `folio_order`).
#[inline(always)]
fn folio_pages(folio: *const u8) -> u64 {
    let flags: u64 = load(folio, off!(folio_flags));
    if flags & (1u64 << (off!(pg_head) & 63)) == 0 {
        return 1;
    }
    1u64 << (load::<u64>(folio, off!(folio_flags_1)) & 0x1f)
}

/// The (tgid, file) entry, created when missing; a new entry also sends the file's path (its
/// first dentry alias), so that paths need no hook on `open`: once per file and tgid per
/// interval, since userspace takes the entries every interval.
#[inline(always)]
fn seen_file_entry(key: &FileKey, inode: *const u8) -> Option<*mut FileIo> {
    if let Some(e) = FILE_IO.get_ptr_mut(key) {
        return Some(e);
    }
    let init = FileIo { uid: bpf_get_current_uid_gid() as u32, ..FileIo::default() };
    // BPF_NOEXIST: another CPU may have created it meanwhile; then use that one.
    if FILE_IO.insert(key, init, 1).is_ok() {
        send_inode_path(path_kind::SEEN, inode, key.dev, key.ino, key.generation, None);
    }
    let e = FILE_IO.get_ptr_mut(key);
    if e.is_none() {
        stats::add(stat::IO_FILE_MAP_FULL, 1);
    }
    e
}

/// Sends a path event of `kind` for a regular file: components from `dentry`, or from the
/// inode's first dentry alias when `None` (a file with no dentry left is sent without).
#[inline(always)]
fn send_inode_path(
    kind: u32,
    inode: *const u8,
    dev: u32,
    ino: u64,
    generation: u32,
    dentry: Option<*const u8>,
) {
    let o = offs();
    let dentry = match dentry {
        Some(d) => d,
        None => match unsafe { rd::<u64>(inode, o.inode_dentry) } {
            Some(first) if first != 0 => (first - o.dentry_alias as u64) as *const u8,
            _ => core::ptr::null(),
        },
    };
    let Some(mut slot) = new_path_event(kind) else {
        return;
    };
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    ev.dev = dev;
    ev.ino = ino;
    ev.generation = generation;
    if dentry.is_null() {
        ev.flags |= path_flag::NO_BASE;
    } else {
        walk_dentry(&o, dentry, ev);
    }
    slot.submit(0);
}

/// Whether the current task is inside write, pwrite64, writev, pwritev or pwritev2: its
/// user-mode registers (`bpf_task_pt_regs`) hold that syscall number in `orig_ax` and, until the
/// syscall returns, `-ENOSYS` in `ax` (the entry code sets it; after a page fault from user
/// mode, `orig_ax` holds the fault's error code instead and `ax` the program's own value).
#[inline(always)]
fn in_write_syscall() -> bool {
    // SAFETY: bpf helper without preconditions on a trusted task pointer.
    let regs = unsafe { bpf_task_pt_regs(current_task_btf() as *mut _) } as *const u8;
    if regs.is_null() {
        return false;
    }
    let nr: u64 = load(regs, off!(regs_orig_ax));
    let ax: i64 = load(regs, off!(regs_ax));
    ax == -ENOSYS && matches!(nr, NR_WRITE | NR_PWRITE64 | NR_WRITEV | NR_PWRITEV | NR_PWRITEV2)
}

/// Per thread (slot `tid % THREADS`, tagged with the tid): the last page-cache read it asked
/// for, to tell a read's later folio batches (the kernel fires `mm_filemap_get_pages` once per
/// batch, each with the rest of the same request) and a sequential read that starts in the
/// page where the previous one ended from new reads.
#[repr(C)]
#[derive(Clone, Copy)]
struct LastRead {
    tid: u32,
    dev: u32,
    ino: u64,
    generation: u32,
    _pad: u32,
    index: u64,
    last: u64,
}

#[map]
static READ_THREADS: Array<LastRead> = Array::with_max_entries(THREADS, 0);

/// `mm_filemap_get_pages(struct address_space *mapping, pgoff_t index, pgoff_t last_index)`:
/// pages `index..=last_index` a buffered read asks the page cache for (hits included), in the
/// reader's context. Page-cache tier: per-file bytes read (whole pages, the last one clamped
/// to the file size) and their ranges. A later batch of the same read is not counted again,
/// nor the part of a read in the page where this thread's previous read of the file ended.
#[btf_tracepoint(function = "mm_filemap_get_pages")]
pub fn io_cache_get(ctx: BtfTracePointContext) -> i32 {
    if off!(ready) == 0 {
        return 0;
    }
    let index: u64 = ctx.arg(1);
    let last: u64 = ctx.arg(2);
    let Some(f) = regular_file(ctx.arg(0)) else {
        return 0;
    };
    if f.size <= 0 {
        return 0;
    }
    let last = last.min((f.size as u64 - 1) / PAGE_SIZE);
    if last < index {
        return 0;
    }
    let task = current_task_btf();
    let (tid, tgid): (u32, u32) = (load(task, off!(task_pid)), load(task, off!(task_tgid)));
    let Some(t) = READ_THREADS.get_ptr_mut(tid & (THREADS - 1)) else {
        return 0;
    };
    // SAFETY: the slot of this thread (tagged); only it writes it while it runs.
    let t = unsafe { &mut *t };
    let same = t.tid == tid && t.ino == f.ino && t.dev == f.dev && t.generation == f.generation;
    let first = if same && index > t.index && last == t.last {
        // A later batch of the read already counted.
        t.index = index;
        return 0;
    } else if same && index == t.last {
        // Starts in the page where the previous read ended: only the pages after it are new.
        if last == t.last {
            return 0;
        }
        t.last + 1
    } else {
        index
    };
    *t = LastRead { tid, dev: f.dev, ino: f.ino, generation: f.generation, _pad: 0, index, last };
    let start = first * PAGE_SIZE;
    let end = ((last + 1) * PAGE_SIZE).min(f.size as u64);
    if end <= start {
        return 0;
    }
    let key = FileKey { tgid, dev: f.dev, ino: f.ino, generation: f.generation, _pad: 0 };
    if let Some(e) = seen_file_entry(&key, f.inode) {
        // SAFETY: map value pointer; see [`add`].
        unsafe {
            add(&raw mut (*e).read_bytes, end - start);
            add(&raw mut (*e).read_calls, 1);
            extend_run(&key, extent_kind::READ, &mut (*e).read_run, start, end);
        }
    }
    0
}

/// `writeback_dirty_folio(struct folio *folio, struct address_space *mapping)`: a folio
/// dirtied, in the writer's context. Page-cache tier: per-file pages written and their range;
/// syscall tier: counted per tgid only (the syscalls give the bytes).
#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn io_dirty(ctx: BtfTracePointContext) -> i32 {
    if off!(ready) == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if off!(page_cache_files) == 0 {
        if let Some(t) = tgid_entry(tgid, None) {
            unsafe { (*t).dirtied_folios += 1 };
        }
        return 0;
    }
    let folio: *const u8 = ctx.arg(0);
    let Some(f) = regular_file(ctx.arg(1)) else {
        return 0;
    };
    let index: u64 = load(folio, off!(folio_index));
    let pages = folio_pages(folio);
    let key = FileKey { tgid, dev: f.dev, ino: f.ino, generation: f.generation, _pad: 0 };
    if let Some(e) = seen_file_entry(&key, f.inode) {
        // SAFETY: map value pointer; see [`add`].
        unsafe {
            add(&raw mut (*e).write_bytes, pages * PAGE_SIZE);
            add(&raw mut (*e).write_calls, 1);
            let start = index * PAGE_SIZE;
            extend_run(&key, extent_kind::WRITE, &mut (*e).write_run, start, start + pages * PAGE_SIZE);
        }
    }
    0
}

/// `ext4_unlink_enter(struct inode *parent, struct dentry *dentry)`: a file unlinked on ext4
/// (page-cache tier; the syscall tier sees `unlink`/`unlinkat`). Sends the file's identity
/// and path. Other file systems have no such tracepoint with the inode: their unlinks are not
/// seen in this tier (`docs/io.md`).
#[btf_tracepoint(function = "ext4_unlink_enter")]
pub fn io_ext4_unlink(ctx: BtfTracePointContext) -> i32 {
    if off!(ready) == 0 {
        return 0;
    }
    let dentry: *const u8 = ctx.arg(1);
    let inode: *const u8 = load(dentry, off!(dentry_inode));
    if inode.is_null() || kind_of(load::<u16>(inode, off!(inode_mode)) as u32) != file_kind::REG {
        return 0;
    }
    let sb: *const u8 = load(inode, off!(inode_sb));
    let (dev, ino, generation) =
        (load(sb, off!(sb_dev)), load(inode, off!(inode_ino)), load(inode, off!(inode_generation)));
    send_inode_path(path_kind::UNLINKED_INODE, inode, dev, ino, generation, Some(dentry));
    0
}

/// Socket bytes not yet added to `TGID_IO`, per CPU, in [`SOCK_SLOTS`] slots picked by tgid
/// (a server and its client on one CPU keep a slot each): while a slot's events come from one
/// tgid they are added there (an array slot the verifier inlines, no hash lookup); the slot
/// goes into `TGID_IO` when another tgid's event comes to it, and when the agent's own thread
/// is switched in on that CPU before a drain ([`on_switch_to`], called by the scheduler
/// program).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockPending {
    tgid: u32,
    uid: u32,
    tx: u64,
    rx: u64,
}

/// Slots of [`SOCK_PENDING`] per CPU (a power of two).
const SOCK_SLOTS: u32 = 4;

#[map]
static SOCK_PENDING: PerCpuArray<SockPending> = PerCpuArray::with_max_entries(SOCK_SLOTS, 0);

/// `sock_send_length(struct sock *sk, int ret, int flags)`: bytes sent by `sock_sendmsg` (any
/// socket family).
#[btf_tracepoint(function = "sock_send_length")]
pub fn io_sock_send(ctx: BtfTracePointContext) -> i32 {
    count_sock(ctx.arg(1), ctx.arg(2), true);
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`: bytes received by `sock_recvmsg`
/// (MSG_PEEK not counted).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn io_sock_recv(ctx: BtfTracePointContext) -> i32 {
    count_sock(ctx.arg(1), ctx.arg(2), false);
    0
}

/// Adds a socket event's bytes to the current tgid's sent (`tx`) or received bytes, through
/// this CPU's [`SockPending`] slot.
#[inline(always)]
fn count_sock(ret: i32, flags: i32, tx: bool) {
    if ret <= 0 || flags & MSG_PEEK != 0 || off!(ready) == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(slot) = SOCK_PENDING.get_ptr_mut(tgid & (SOCK_SLOTS - 1)) else {
        return;
    };
    // SAFETY: this CPU's slot; tracepoint programs run with preemption off.
    let slot = unsafe { &mut *slot };
    if slot.tgid != tgid || (slot.tx | slot.rx) == 0 {
        flush_sock(slot);
        slot.tgid = tgid;
        slot.uid = bpf_get_current_uid_gid() as u32;
    }
    if tx {
        slot.tx += ret as u64;
    } else {
        slot.rx += ret as u64;
    }
}

/// Moves a [`SockPending`] slot into `TGID_IO` and empties it.
#[inline(never)]
fn flush_sock(slot: &mut SockPending) {
    if (slot.tx | slot.rx) == 0 {
        return;
    }
    if let Some(t) = tgid_entry(slot.tgid, Some(slot.uid)) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            (*t).net_tx_bytes += slot.tx;
            (*t).net_rx_bytes += slot.rx;
        }
    }
    slot.tx = 0;
    slot.rx = 0;
}

/// Called by the scheduler program at every context switch with the tgid of the task switched
/// in: when it is the agent's (its thread visiting each CPU before a drain), this CPU's pending
/// socket bytes go into the maps.
#[inline(always)]
pub fn on_switch_to(next_tgid: u32) {
    if next_tgid != off!(flush_tgid) || off!(ready) == 0 {
        return;
    }
    for i in 0..SOCK_SLOTS {
        if let Some(slot) = SOCK_PENDING.get_ptr_mut(i) {
            // SAFETY: this CPU's slot; the scheduler runs with preemption off.
            flush_sock(unsafe { &mut *slot });
        }
    }
}

/// `block:block_rq_complete`: bytes per device and direction (not per process: completion
/// runs in interrupt context).
#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn io_block_done(ctx: TracePointContext) -> i32 {
    let o = offs();
    if o.ready == 0 {
        return 0;
    }
    let Some(rec) = record(&ctx) else {
        return 0;
    };
    let dev: u32 = field(&rec, o.tp_blk_dev);
    let sectors: u32 = field(&rec, o.tp_blk_nr_sector);
    let rwbs: [u8; 2] = field(&rec, o.tp_blk_rwbs);
    // rwbs: optional 'F' (flush) then 'R', 'W', 'D' (discard), 'N' (none), ...
    let op = if rwbs[0] == b'F' { rwbs[1] } else { rwbs[0] };
    let dir = match op {
        b'R' => 0,
        b'W' => 1,
        _ => 2,
    };
    let bytes = sectors as u64 * 512;
    let key = BlockKey { dev, dir };
    if let Some(b) = BLOCK_IO.get_ptr_mut(key) {
        unsafe {
            (*b).bytes += bytes;
            (*b).requests += 1;
        }
    } else if BLOCK_IO.insert(key, BlockIo { bytes, requests: 1 }, 0).is_err() {
        stats::add(stat::IO_COPY_BLOCK_MAP_FULL, 1);
    }
    0
}

/// An empty program on `sys_exit`, never attached by the agent: `cargo xtask bench` attaches
/// it alone to measure what any program on that tracepoint costs (the floor under
/// `io_sys_exit`), in the same run as the real handlers.
#[btf_tracepoint(function = "sys_exit")]
pub fn bench_empty_sys_exit(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The same as a raw tracepoint program (`shared/notes/kernel.md` measured this kind: 46 ns).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn bench_empty_raw_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Empty programs on the page-cache tier's hooks, never attached by the agent: `cargo xtask
/// bench` attaches them alone to measure the floor of any program on those tracepoints.
#[btf_tracepoint(function = "mm_filemap_get_pages")]
pub fn bench_empty_get_pages(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "mm_filemap_add_to_page_cache")]
pub fn bench_empty_cache_add(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn bench_empty_dirty(_ctx: BtfTracePointContext) -> i32 {
    0
}
