//! I/O accounting types shared by `agent-ebpf/src/io.rs` and `agent/src/io/`.
//!
//! The kernel aggregates in maps; userspace takes (reads and deletes) every entry once per
//! interval, so each value is the activity since the previous drain and the maps only hold
//! what happened in one interval. Sequential runs of file offsets are kept in the per-file
//! entries; a run that breaks (a seek, a re-read from the start) is sent to userspace as an
//! [`Extent`] through the `IO_EXTENTS` ring buffer.

/// Page size the page-cache tracepoints count in (x86_64).
pub const PAGE_SIZE: u64 = 4096;

/// How many path components an [`PathEvent`] carries (deeper paths are marked truncated).
pub const PATH_DEPTH: usize = 16;
/// Bytes kept per path component (longer names are marked truncated).
pub const NAME_LEN: usize = 64;
/// Bytes kept of a path given to `unlink`/`unlinkat`.
pub const USER_PATH_LEN: usize = 256;

/// File kinds, from `inode.i_mode & S_IFMT`.
pub mod file_kind {
    /// Regular file.
    pub const REG: u32 = 1;
    /// Pipe or FIFO.
    pub const PIPE: u32 = 2;
    /// Socket.
    pub const SOCK: u32 = 3;
    /// Anything else (character device, directory, anonymous inode, unknown).
    pub const OTHER: u32 = 4;
}

/// Per-tgid I/O totals (a per-CPU hash keyed by tgid; userspace sums the CPUs).
///
/// Reads and writes of regular files, and page-cache misses, are counted only in the
/// per-file [`FileIo`] entries (one map update per event); userspace adds those to the
/// tgid's totals. They land here only when the per-file map was full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TgidIo {
    /// Bytes returned by read, pread64, readv, preadv, preadv2 (all file kinds).
    pub read_bytes: u64,
    /// Bytes returned by write, pwrite64, writev, pwritev, pwritev2 (all file kinds).
    pub write_bytes: u64,
    /// Of `read_bytes`: from regular files, pipes, sockets.
    pub read_file_bytes: u64,
    pub read_pipe_bytes: u64,
    pub read_sock_bytes: u64,
    /// Of `write_bytes`: to regular files, pipes, sockets.
    pub write_file_bytes: u64,
    pub write_pipe_bytes: u64,
    pub write_sock_bytes: u64,
    /// Read-family and write-family syscalls that returned (successfully or not).
    pub read_calls: u64,
    pub write_calls: u64,
    /// Bytes moved in the kernel by copy_file_range, sendfile, splice, and those calls.
    pub copy_bytes: u64,
    pub copy_calls: u64,
    /// Of `read_calls` and `write_calls`: the calls that failed (no bytes; not timed).
    pub failed_calls: u64,
    /// Enter→exit nanoseconds of the successful calls that were timed (see [`PendingIo`]), and
    /// how many were timed: userspace scales the time to all calls.
    pub io_ns: u64,
    pub timed_calls: u64,
    /// Bytes sent / received on sockets (`sock:sock_send_length` / `sock_recv_length`).
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    /// Pages (4 KiB) inserted in the page cache in this tgid's context: misses.
    pub cache_miss_pages: u64,
    /// Pages requested from the page cache by buffered reads (`mm_filemap_get_pages`,
    /// hits included); 0 unless that optional program is attached.
    pub cache_read_pages: u64,
    /// Folios dirtied in this tgid's context (`writeback:writeback_dirty_folio`).
    pub dirtied_folios: u64,
    /// Real uid of the thread that created the entry.
    pub uid: u32,
    pub _pad: u32,
}

/// Key of the per-file map: one regular file as used by one tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub tgid: u32,
    /// `super_block.s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    pub ino: u64,
    /// `inode.i_generation`: tells apart two files that had the same inode number one after
    /// the other (a deleted file's inode number is soon reused; 0 on file systems without it).
    pub generation: u32,
    pub _pad: u32,
}

/// A half-open byte range `[start, end)` of a file being extended sequentially.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
}

/// What one tgid did to one regular file.
///
/// Syscall tier: bytes and calls of read-family / write-family syscalls. Page-cache tier
/// (default): `read_bytes` / `read_calls` are what buffered reads asked the page cache for
/// (`mm_filemap_get_pages`, hits included, whole pages clamped to the file size, one "call"
/// per read), `write_bytes` / `write_calls` the pages and folios the tgid dirtied
/// (`writeback_dirty_folio`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_calls: u64,
    pub write_calls: u64,
    /// Enter→exit nanoseconds of the timed syscalls on this file, and how many were timed.
    pub io_ns: u64,
    pub timed_calls: u64,
    /// Pages of this file inserted in the page cache in this tgid's context.
    pub cache_miss_pages: u64,
    /// The current sequential runs (byte offsets; for the cache, page indices × 4096).
    pub read_run: Run,
    pub write_run: Run,
    pub cache_run: Run,
    /// Real uid of the thread that created the entry.
    pub uid: u32,
    pub _pad: u32,
}

/// Kinds of [`Extent`].
pub mod extent_kind {
    /// Bytes read with read-family syscalls.
    pub const READ: u32 = 1;
    /// Bytes written with write-family syscalls.
    pub const WRITE: u32 = 2;
    /// Pages inserted in the page cache (byte offsets, page aligned).
    pub const CACHE_ADD: u32 = 3;
}

/// A finished run of offsets in a file, sent when the next access did not continue it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    pub key: FileKey,
    /// One of [`extent_kind`].
    pub kind: u32,
    pub _pad: u32,
    pub run: Run,
}

/// Key of the in-kernel copy map: `copy_file_range`, `sendfile` or `splice` by a tgid from
/// one file to another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CopyKey {
    pub tgid: u32,
    pub src_dev: u32,
    pub src_ino: u64,
    pub dst_dev: u32,
    /// [`file_kind`] of the source and destination.
    pub src_kind: u16,
    pub dst_kind: u16,
    pub dst_ino: u64,
    /// `i_generation` of the source and destination.
    pub src_generation: u32,
    pub dst_generation: u32,
}

/// Bytes and calls of one [`CopyKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyIo {
    pub bytes: u64,
    pub calls: u64,
    /// Enter→exit nanoseconds of the timed calls, and how many were timed.
    pub io_ns: u64,
    pub timed_calls: u64,
}

/// Slots of the per-CPU `PENDING_IO` array: [`pending_slot`] picks one per thread bucket and
/// direction.
pub const PENDING_SLOTS: u32 = 8;

/// Slot of `PENDING_IO` for a thread and a direction (odd: reads).
#[inline(always)]
pub const fn pending_slot(tid: u32, is_read: bool) -> u32 {
    ((tid & (PENDING_SLOTS / 2 - 1)) << 1) | is_read as u32
}

/// A pending slot is flushed into the maps after this many calls even when they continue it.
pub const PENDING_FLUSH_CALLS: u64 = 64;

/// Read or write syscalls on one CPU not yet added to `FILE_IO` / `TGID_IO`: write combining.
///
/// A hash-map update costs more than the rest of the syscall exit handler together, so the
/// handler adds each call to a per-CPU slot (an array lookup the verifier inlines) while the
/// calls go on with the same tgid, file and direction, and moves the slot into the maps when
/// the next call does not match it, after [`PENDING_FLUSH_CALLS`] calls, and when userspace
/// asks (a failing `pread64(-1, ..)` by the agent's own tgid on that CPU, before every
/// drain). So nothing stays pending past a drain on a CPU the agent can run on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingIo {
    pub tgid: u32,
    /// [`file_kind`] of the file; 0: the slot is empty. Failed calls and descriptors that
    /// could not be resolved use `OTHER` with `dev` = `ino` = 0.
    pub kind: u32,
    pub dev: u32,
    /// Real uid of the thread that started the slot.
    pub uid: u32,
    pub ino: u64,
    /// Successful calls and their bytes.
    pub calls: u64,
    pub bytes: u64,
    /// Calls of this tgid that failed while the slot was current.
    pub failed_calls: u64,
    /// Timed successful calls and their enter→exit nanoseconds.
    pub timed_calls: u64,
    pub timed_ns: u64,
    /// Regular files: the sequential run of offsets the calls covered.
    pub run: Run,
    /// The last call's descriptor, its `struct file` and that file's `f_inode`: while
    /// `current->files` still maps `fd` to the same file, with the same inode and inode
    /// number, the next call skips `i_mode`, `i_sb` and `s_dev` (kernel addresses; kernel only).
    pub file: u64,
    pub inode: u64,
    pub fd: u32,
    /// `i_generation` of the file (regular files).
    pub generation: u32,
}

/// Key of the block-layer map: a device and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// Kernel `dev_t` (major << 20 | minor).
    pub dev: u32,
    /// 0 read, 1 write, 2 other (discard, flush, ...).
    pub dir: u32,
}

/// Completed block requests of one [`BlockKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockIo {
    pub bytes: u64,
    pub requests: u64,
}

/// Kinds of [`PathEvent`].
pub mod path_kind {
    /// A regular file was opened: `dev`/`ino` identify it, the components are its path.
    pub const OPEN: u32 = 1;
    /// `unlink`/`unlinkat` was called: `user_path` as given, components are the directory it
    /// is relative to (when it is relative).
    pub const UNLINK: u32 = 2;
    /// A regular file was unlinked (page-cache tier: `ext4:ext4_unlink_enter`): `dev`, `ino`,
    /// `generation` identify it, the components are its path.
    pub const UNLINKED_INODE: u32 = 3;
    /// A regular file was first seen by the page-cache handlers in this interval: `dev`,
    /// `ino`, `generation` identify it, the components are its path (its first dentry alias).
    pub const SEEN: u32 = 4;
}

/// Flags of [`PathEvent`].
pub mod path_flag {
    /// More than `PATH_DEPTH` components: the path is cut at the top.
    pub const DEEP: u32 = 1;
    /// A component was longer than `NAME_LEN - 1` bytes and was cut.
    pub const LONG_NAME: u32 = 2;
    /// `user_path` is relative and its base directory is in the components.
    pub const RELATIVE: u32 = 4;
    /// The base directory of a relative `user_path` could not be read.
    pub const NO_BASE: u32 = 8;
}

/// A path seen by the kernel, sent through the `IO_PATHS` ring buffer.
///
/// `components[0]` is the leaf, `components[depth-1]` the top-most directory below the root
/// of the file system `dev` (userspace adds the mount point from `/proc/self/mountinfo`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathEvent {
    /// One of [`path_kind`].
    pub kind: u32,
    pub tgid: u32,
    pub uid: u32,
    /// Bits of [`path_flag`].
    pub flags: u32,
    /// `dev` of the file system of the components.
    pub dev: u32,
    /// Number of valid `components`.
    pub depth: u32,
    /// Open: the inode opened.
    pub ino: u64,
    pub ts_ns: u64,
    /// `i_generation` of `ino`.
    pub generation: u32,
    pub _pad: u32,
    pub components: [[u8; NAME_LEN]; PATH_DEPTH],
    /// Unlink: the path argument, NUL-terminated.
    pub user_path: [u8; USER_PATH_LEN],
}

/// Kernel struct field offsets the I/O programs need, read from the kernel's BTF at start-up
/// and set as the eBPF global `IO_OFFSETS` ([`IO_OFFSETS_GLOBAL`]). All in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoOffsets {
    /// `pt_regs.di`, `.si`, `.dx`, `.r10`, `.orig_ax` (x86_64 syscall arguments 0, 1, 2, 3
    /// and the syscall number).
    pub regs_di: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_r10: u32,
    pub regs_orig_ax: u32,
    /// `pt_regs.ax` (`-ENOSYS` while a syscall runs).
    pub regs_ax: u32,
    /// `task_struct.pid`, `task_struct.tgid` (thread and process ids).
    pub task_pid: u32,
    pub task_tgid: u32,
    /// `task_struct.files`, `task_struct.fs`.
    pub task_files: u32,
    pub task_fs: u32,
    /// `files_struct.fdt`; `fdtable.max_fds`, `fdtable.fd`.
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `file.f_inode`, `file.f_pos`, `file.f_path` + `path.dentry`.
    pub file_inode: u32,
    pub file_pos: u32,
    pub file_dentry: u32,
    /// `inode.i_ino`, `inode.i_mode`, `inode.i_sb`; `super_block.s_dev`.
    pub inode_ino: u32,
    pub inode_mode: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `fs_struct.pwd` + `path.dentry`.
    pub fs_pwd_dentry: u32,
    /// `dentry.d_parent`, `dentry.d_name` + `qstr.name`, `dentry.d_sb`.
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub dentry_sb: u32,
    /// The classic tracepoint record `block_rq_completion` (`trace_event_raw_*`): `dev`,
    /// `nr_sector`, `rwbs`.
    pub tp_blk_dev: u32,
    pub tp_blk_nr_sector: u32,
    pub tp_blk_rwbs: u32,
    /// `inode.i_generation`, `inode.i_size`, `inode.i_dentry` (first alias, an hlist head).
    pub inode_generation: u32,
    pub inode_size: u32,
    pub inode_dentry: u32,
    /// `dentry.d_u.d_alias` (the hlist node in `i_dentry`), `dentry.d_inode`.
    pub dentry_alias: u32,
    pub dentry_inode: u32,
    /// `address_space.host`.
    pub mapping_host: u32,
    /// `folio.flags`, `folio._flags_1` (order of a large folio in its low byte),
    /// `folio.mapping`, `folio.index`; the bit number of `PG_head` in `folio.flags`.
    pub folio_flags: u32,
    pub folio_flags_1: u32,
    pub folio_mapping: u32,
    pub folio_index: u32,
    pub pg_head: u32,
    /// 1 in the page-cache tier: per-file reads from `mm_filemap_get_pages` and writes from
    /// `writeback_dirty_folio` (else dirtied folios are only counted per tgid).
    pub page_cache_files: u32,
    /// 1 in the page-cache tier: `io_sys_exit` (attached only in the timing windows) only
    /// times calls, it counts no bytes.
    pub exit_times_only: u32,
    /// Kernel BTF type ids of `struct file` and `struct callback_head`, the target types of
    /// the programs' `bpf_rdonly_cast` calls (see `agent/src/probes/kfunc.rs`).
    pub btf_file: u32,
    pub btf_callback_head: u32,
    /// The agent's tgid: its failing `pread64(-1, ..)` asks the syscall exit handler to move
    /// that CPU's [`PendingIo`] slots into the maps.
    pub flush_tgid: u32,
    /// Set to 1 by userspace once the offsets are filled in; the programs do nothing before.
    pub ready: u32,
}

/// Name of the eBPF global holding the [`IoOffsets`].
pub const IO_OFFSETS_GLOBAL: &str = "IO_OFFSETS";

/// Names of the I/O maps in the eBPF object.
pub mod maps {
    pub const TGID_IO: &str = "TGID_IO";
    pub const FILE_IO: &str = "FILE_IO";
    pub const COPY_IO: &str = "COPY_IO";
    pub const BLOCK_IO: &str = "BLOCK_IO";
    pub const IO_EXTENTS: &str = "IO_EXTENTS";
    pub const IO_PATHS: &str = "IO_PATHS";
    pub const IO_THREADS: &str = "IO_THREADS";
    pub const IO_WINDOW: &str = "IO_WINDOW";
    pub const PENDING_IO: &str = "PENDING_IO";
}
