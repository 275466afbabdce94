//! The I/O model: what one interval's I/O is, per process, per file, per copy and device,
//! with no I/O of its own (exact, root-free tests). The kernel side that fills it is
//! [`crate::probes::io`]. See `docs/io.md`.

pub mod paths;
pub mod ranges;

use std::collections::BTreeMap;
use std::path::PathBuf;

use carbon_agent_common::{
    TaskIo,
    io::{PAGE_SIZE, TgidIo},
};
use serde::Serialize;

pub use paths::FileId;
use ranges::RangeSet;

/// How I/O is observed (`--io-detail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDetail {
    /// Default, cheap enough to leave on: no program on any syscall path (except in short
    /// timing windows). Per-process bytes from the kernel's own accounting (`task_struct.ioac`,
    /// exact), per-file activity from the page-cache tracepoints (page granularity), sockets
    /// from the `sock` tracepoints.
    #[default]
    PageCache,
    /// Every read/write syscall traced at exit (exact bytes, offsets and the file/pipe/socket
    /// split per call, paths from `open`), at a cost on every syscall of the machine.
    Syscalls,
}

impl IoDetail {
    /// Every tier.
    pub const ALL: [IoDetail; 2] = [IoDetail::PageCache, IoDetail::Syscalls];

    /// The flag and config value: `page-cache` or `syscalls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PageCache => "page-cache",
            Self::Syscalls => "syscalls",
        }
    }

    /// The tier named `name` (as [`IoDetail::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// How the tier is named in the outputs.
    pub fn name(self) -> &'static str {
        match self {
            Self::PageCache => "page_cache",
            Self::Syscalls => "syscalls",
        }
    }

    /// The default share of time the I/O syscalls are timed in this tier.
    pub fn default_time_sampling(self) -> f64 {
        match self {
            Self::PageCache => DEFAULT_TIME_SAMPLING_PAGE_CACHE,
            Self::Syscalls => DEFAULT_TIME_SAMPLING,
        }
    }
}

/// What to attach.
#[derive(Clone, Debug)]
pub struct IoConfig {
    /// The tier: page cache (default) or every syscall.
    pub detail: IoDetail,
    /// Most (device, inode) → path entries kept in userspace.
    pub path_table_capacity: usize,
    /// Most ranges kept per file and kind per interval before neighbours are merged.
    pub max_ranges_per_file: usize,
    /// Share of the time the I/O syscalls are timed, in (0, 1]: the calls that enter then are
    /// timed, and their time is scaled to all calls (`crate::probes::io::sampler`). 1 times
    /// every call, at the cost of one or two more program runs on every syscall of the machine.
    pub time_sampling: f64,
    /// Length of one sampling period (one window of `time_sampling × period` in each).
    pub time_sampling_period: std::time::Duration,
}

/// Default [`IoConfig::time_sampling`] of the syscall tier.
pub const DEFAULT_TIME_SAMPLING: f64 = 0.05;
/// Default [`IoConfig::time_sampling`] of the page-cache tier: the syscall programs are on
/// the syscall path 1 % of the time.
pub const DEFAULT_TIME_SAMPLING_PAGE_CACHE: f64 = 0.01;

impl IoConfig {
    /// The defaults of a tier.
    pub fn of(detail: IoDetail) -> Self {
        Self { detail, time_sampling: detail.default_time_sampling(), ..Self::default() }
    }
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            detail: IoDetail::PageCache,
            path_table_capacity: 65536,
            max_ranges_per_file: 1024,
            time_sampling: DEFAULT_TIME_SAMPLING_PAGE_CACHE,
            time_sampling_period: std::time::Duration::from_millis(200),
        }
    }
}

/// One process's I/O in one interval (its own threads; its children are their own rows).
///
/// Page-cache tier: `read_bytes`, `write_bytes`, `read_calls`, `write_calls` are the growth of
/// the kernel's `rchar`, `wchar`, `syscr`, `syscw` (exact; they include in-kernel reads such as
/// exec's and sendfile's), `read_file_bytes` / `write_file_bytes` the page-cache pages read
/// (hits included) / dirtied, the socket split from the `sock` tracepoints, and the pipe split
/// what remains ("pipes and the rest"). Syscall tier: the bytes and calls of the read-family
/// and write-family syscalls, split per call. Both: the `storage_*` bytes from the kernel's own
/// accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessIo {
    pub uid: u32,
    /// Bytes read (files, pipes, sockets, anything): see above.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    pub read_file_bytes: u64,
    pub read_pipe_bytes: u64,
    pub read_sock_bytes: u64,
    pub write_file_bytes: u64,
    pub write_pipe_bytes: u64,
    pub write_sock_bytes: u64,
    /// Read-family and write-family calls, failed ones included.
    pub read_calls: u64,
    pub write_calls: u64,
    /// Bytes moved in the kernel by copy_file_range, sendfile, splice.
    pub copied_bytes: u64,
    pub copy_calls: u64,
    /// Of all those calls, the ones that failed.
    pub failed_calls: u64,
    /// Enter→exit time of all those syscalls, in ns (includes time blocked in them):
    /// estimated from the `timed_calls` (see `crate::probes::io::sampler`).
    pub io_cpu_ns: u64,
    /// Calls whose time was measured.
    pub timed_calls: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    /// Bytes (whole pages) this process brought into the page cache from storage.
    pub page_cache_misses_bytes: u64,
    /// Bytes (whole pages) buffered reads asked the page cache for; 0 unless enabled.
    pub page_cache_read_bytes: u64,
    /// Folios dirtied by its writes (syscall tier).
    pub dirtied_folios: u64,
    /// Bytes the process caused to be read from storage, and page-cache bytes it dirtied (to be
    /// written to storage), of which `cancelled_write_bytes` were truncated before writeback
    /// (`/proc/<pid>/io` `read_bytes`, `write_bytes`, `cancelled_write_bytes`).
    pub storage_read_bytes: u64,
    pub storage_write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

impl ProcessIo {
    /// The kernel's own accounting's part: storage bytes in both tiers; in the page-cache tier
    /// also the bytes and calls (`rchar`, `wchar`, `syscr`, `syscw`).
    pub fn add_task_io(&mut self, t: &TaskIo, detail: IoDetail) {
        self.storage_read_bytes += t.read_bytes;
        self.storage_write_bytes += t.write_bytes;
        self.cancelled_write_bytes += t.cancelled_write_bytes;
        if detail == IoDetail::PageCache {
            self.read_bytes += t.rchar;
            self.write_bytes += t.wchar;
            self.read_calls += t.syscr;
            self.write_calls += t.syscw;
        }
    }

    /// Page-cache tier: fills the split of `read_bytes` / `write_bytes` once the socket bytes
    /// and the files' page-cache bytes are in: sockets, then files, then the rest (pipes and
    /// other kinds).
    pub fn split_page_cache(&mut self) {
        self.read_sock_bytes = self.net_rx_bytes;
        self.write_sock_bytes = self.net_tx_bytes;
        self.read_pipe_bytes = self.read_bytes.saturating_sub(self.read_sock_bytes + self.read_file_bytes);
        self.write_pipe_bytes =
            self.write_bytes.saturating_sub(self.write_sock_bytes + self.write_file_bytes);
    }

    /// The per-tgid kernel totals (summed over CPUs).
    pub fn from_kernel(v: &[TgidIo]) -> Self {
        let mut p = Self::default();
        for c in v {
            p.uid = if p.uid == 0 { c.uid } else { p.uid };
            p.read_bytes += c.read_bytes;
            p.write_bytes += c.write_bytes;
            p.read_file_bytes += c.read_file_bytes;
            p.read_pipe_bytes += c.read_pipe_bytes;
            p.read_sock_bytes += c.read_sock_bytes;
            p.write_file_bytes += c.write_file_bytes;
            p.write_pipe_bytes += c.write_pipe_bytes;
            p.write_sock_bytes += c.write_sock_bytes;
            p.read_calls += c.read_calls;
            p.write_calls += c.write_calls;
            p.copied_bytes += c.copy_bytes;
            p.copy_calls += c.copy_calls;
            p.failed_calls += c.failed_calls;
            p.io_cpu_ns += c.io_ns;
            p.timed_calls += c.timed_calls;
            p.net_tx_bytes += c.net_tx_bytes;
            p.net_rx_bytes += c.net_rx_bytes;
            p.page_cache_misses_bytes += c.cache_miss_pages * PAGE_SIZE;
            p.page_cache_read_bytes += c.cache_read_pages * PAGE_SIZE;
            p.dirtied_folios += c.dirtied_folios;
        }
        p
    }

    /// Adds what the kernel counted per file (regular files only) to the totals: in the
    /// syscall tier its bytes, calls and time; in the page-cache tier its page-cache bytes.
    pub fn add_file(&mut self, f: &FileActivity, detail: IoDetail) {
        if self.uid == 0 {
            self.uid = f.uid;
        }
        self.page_cache_misses_bytes += f.cache_miss_bytes;
        if detail == IoDetail::PageCache {
            self.read_file_bytes += f.read_bytes;
            self.write_file_bytes += f.write_bytes;
            self.page_cache_read_bytes += f.read_bytes;
            return;
        }
        self.read_bytes += f.read_bytes;
        self.write_bytes += f.write_bytes;
        self.read_file_bytes += f.read_bytes;
        self.write_file_bytes += f.write_bytes;
        self.read_calls += f.read_calls;
        self.write_calls += f.write_calls;
        self.io_cpu_ns += f.io_ns;
        self.timed_calls += f.timed_calls;
    }

    /// Adds another row (for roll-ups per tree, user, cgroup).
    pub fn add(&mut self, o: &ProcessIo) {
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.read_file_bytes += o.read_file_bytes;
        self.read_pipe_bytes += o.read_pipe_bytes;
        self.read_sock_bytes += o.read_sock_bytes;
        self.write_file_bytes += o.write_file_bytes;
        self.write_pipe_bytes += o.write_pipe_bytes;
        self.write_sock_bytes += o.write_sock_bytes;
        self.read_calls += o.read_calls;
        self.write_calls += o.write_calls;
        self.copied_bytes += o.copied_bytes;
        self.copy_calls += o.copy_calls;
        self.failed_calls += o.failed_calls;
        self.io_cpu_ns += o.io_cpu_ns;
        self.timed_calls += o.timed_calls;
        self.net_tx_bytes += o.net_tx_bytes;
        self.net_rx_bytes += o.net_rx_bytes;
        self.page_cache_misses_bytes += o.page_cache_misses_bytes;
        self.page_cache_read_bytes += o.page_cache_read_bytes;
        self.dirtied_folios += o.dirtied_folios;
        self.storage_read_bytes += o.storage_read_bytes;
        self.storage_write_bytes += o.storage_write_bytes;
        self.cancelled_write_bytes += o.cancelled_write_bytes;
    }

    /// The `io` JSON object of the output schema.
    pub fn json(&self) -> IoJson {
        IoJson {
            read_bytes: self.read_bytes,
            write_bytes: self.write_bytes,
            copied_bytes: self.copied_bytes,
            net_tx_bytes: self.net_tx_bytes,
            net_rx_bytes: self.net_rx_bytes,
            io_cpu_time_s: self.io_cpu_ns as f64 / 1e9,
            page_cache_misses_bytes: self.page_cache_misses_bytes,
            storage_read_bytes: self.storage_read_bytes,
            storage_write_bytes: self.storage_write_bytes,
        }
    }
}

/// The `io` object of the JSON outputs, field names as in the issue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct IoJson {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub copied_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    pub io_cpu_time_s: f64,
    pub page_cache_misses_bytes: u64,
    /// Bytes read from / to be written to storage (the kernel's own accounting).
    pub storage_read_bytes: u64,
    pub storage_write_bytes: u64,
}

impl IoJson {
    /// Adds another object (sums over processes and intervals).
    pub fn add(&mut self, o: &IoJson) {
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.copied_bytes += o.copied_bytes;
        self.net_tx_bytes += o.net_tx_bytes;
        self.net_rx_bytes += o.net_rx_bytes;
        self.io_cpu_time_s += o.io_cpu_time_s;
        self.page_cache_misses_bytes += o.page_cache_misses_bytes;
        self.storage_read_bytes += o.storage_read_bytes;
        self.storage_write_bytes += o.storage_write_bytes;
    }
}

/// What one process did to one regular file in one interval. Syscall tier: bytes and offsets
/// of its read/write syscalls. Page-cache tier: whole pages (4 KiB) its buffered reads asked
/// the page cache for (hits included; the file's last page clamped to its size) and pages it
/// dirtied, and their page ranges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileActivity {
    pub tgid: u32,
    pub uid: u32,
    pub file: FileId,
    /// Last known path, `None` when it could not be resolved (see `IoInterval::unresolved`).
    pub path: Option<PathBuf>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_calls: u64,
    pub write_calls: u64,
    /// Enter→exit ns of the syscalls on this file, estimated from the `timed_calls`.
    pub io_ns: u64,
    pub timed_calls: u64,
    /// Bytes (pages) of it brought into the page cache in this process's context.
    pub cache_miss_bytes: u64,
    /// Union of the byte ranges read / written / brought into the page cache.
    pub read_ranges: RangeSet,
    pub write_ranges: RangeSet,
    pub cache_ranges: RangeSet,
}

/// A copy done in the kernel (copy_file_range, sendfile, splice).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelCopy {
    pub tgid: u32,
    pub src: FileId,
    pub dst: FileId,
    /// `true` when the source / destination is a regular file (else a pipe, socket, ...).
    pub src_is_file: bool,
    pub dst_is_file: bool,
    pub src_path: Option<PathBuf>,
    pub dst_path: Option<PathBuf>,
    pub bytes: u64,
    pub calls: u64,
    /// Enter→exit ns of the calls, estimated from the `timed_calls`.
    pub io_ns: u64,
    pub timed_calls: u64,
}

/// An unlink: `unlink`/`unlinkat` (syscall tier) or `ext4_unlink_enter` (page-cache tier).
#[derive(Clone, Debug, PartialEq)]
pub struct Unlink {
    pub tgid: u32,
    pub uid: u32,
    /// Absolute path, `None` when its base directory could not be resolved.
    pub path: Option<PathBuf>,
    /// The file that was at that path, when the agent knew it.
    pub file: Option<FileId>,
    pub ts_ns: u64,
}

/// Block-layer bytes of one device in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BlockDeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Discards, flushes and other requests.
    pub other_bytes: u64,
    pub requests: u64,
}

/// Userspace-side approximations and losses, per interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IoLosses {
    /// Files with activity whose path could not be resolved.
    pub unresolved_paths: u64,
    /// Unlinks whose path could not be resolved.
    pub unresolved_unlinks: u64,
    /// Path-table entries evicted for capacity (cumulative).
    pub path_table_evicted: u64,
    /// Range merges done to stay within `max_ranges_per_file` (distinct bytes over-estimated).
    pub ranges_coarsened: u64,
}

/// Everything the I/O probes saw in one interval.
#[derive(Clone, Debug, Default)]
pub struct IoInterval {
    /// The tier the interval was observed with.
    pub detail: IoDetail,
    /// Per tgid.
    pub processes: BTreeMap<u32, ProcessIo>,
    /// Per (tgid, regular file).
    pub files: Vec<FileActivity>,
    pub copies: Vec<KernelCopy>,
    pub unlinks: Vec<Unlink>,
    pub block: Vec<BlockDeviceIo>,
    pub losses: IoLosses,
    pub timing: IoTiming,
}

/// How the time in I/O syscalls was measured in one interval (see `crate::probes::io::sampler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct IoTiming {
    /// The I/O tier (`page_cache` or `syscalls`), which says how every I/O figure of the
    /// interval was observed (`docs/io.md`).
    pub detail: IoDetail,
    /// Successful I/O calls, and those of them that were timed.
    pub calls: u64,
    pub timed_calls: u64,
    /// Configured share of time the enter of I/O syscalls is watched.
    pub sampling: f64,
    /// Measured share since the start.
    pub measured_sampling: f64,
    /// Mean ns per call used for the processes and files without timed calls.
    pub fallback_ns_per_call: f64,
    /// CPUs whose pending kernel slots could not be flushed before the drain because the
    /// agent may not run there (their calls, if any, show up in a later interval).
    pub unflushed_cpus: u64,
}

/// Where `io_cpu_time_s` comes from, over a whole run (`run --json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct IoTimeSource {
    /// The I/O tier (`page_cache` or `syscalls`).
    pub detail: IoDetail,
    pub method: &'static str,
    /// Configured and measured share of time the enter of I/O syscalls was watched.
    pub sampling: f64,
    pub measured_sampling: f64,
    /// Successful I/O calls of every process, and those of them that were timed.
    pub calls: u64,
    pub timed_calls: u64,
}

/// Enter→exit time of `calls` calls of which `timed` were timed, taking `timed_ns`: the ratio
/// estimate `timed_ns × calls / timed`, or `calls × fallback` when none was timed.
pub fn estimate_ns(timed_ns: u64, timed: u64, calls: u64, fallback_ns_per_call: f64) -> u64 {
    if timed == 0 {
        return (calls as f64 * fallback_ns_per_call).round() as u64;
    }
    // A timed call is a successful call, so `timed <= calls`; the max guards a race in the
    // kernel's non-atomic per-file counters.
    (timed_ns as u128 * calls.max(timed) as u128 / timed as u128) as u64
}

/// Mean of `ns` over `calls`, when there are calls.
pub fn mean(ns: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| ns as f64 / calls as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regular-file activity is counted only per file in the kernel; the tgid totals must
    /// include it exactly once, beside what the per-tgid map holds (pipes, sockets, ...).
    #[test]
    fn file_activity_adds_to_the_process_totals() {
        let mut p = ProcessIo::from_kernel(&[
            TgidIo {
                read_bytes: 10,
                read_pipe_bytes: 10,
                read_calls: 1,
                io_ns: 5,
                uid: 7,
                ..TgidIo::default()
            },
            TgidIo { write_bytes: 3, write_sock_bytes: 3, write_calls: 1, ..TgidIo::default() },
        ]);
        p.add_file(
            &FileActivity {
                uid: 7,
                read_bytes: 100,
                write_bytes: 40,
                read_calls: 2,
                write_calls: 4,
                io_ns: 50,
                cache_miss_bytes: 8192,
                ..FileActivity::default()
            },
            IoDetail::Syscalls,
        );
        assert_eq!(p.uid, 7);
        assert_eq!((p.read_bytes, p.write_bytes), (110, 43));
        assert_eq!((p.read_file_bytes, p.write_file_bytes), (100, 40));
        assert_eq!((p.read_pipe_bytes, p.write_sock_bytes), (10, 3));
        assert_eq!((p.read_calls, p.write_calls), (3, 5));
        assert_eq!(p.io_cpu_ns, 55);
        assert_eq!(p.page_cache_misses_bytes, 8192);
    }

    /// Page-cache tier: bytes and calls are the kernel's own counters; files give the
    /// page-cache split, sockets theirs, pipes the rest.
    #[test]
    fn page_cache_tier_rows_come_from_the_kernel_accounting() {
        let mut p = ProcessIo { net_rx_bytes: 100, net_tx_bytes: 10, ..ProcessIo::default() };
        let t = TaskIo {
            rchar: 10_000,
            wchar: 5_000,
            syscr: 7,
            syscw: 3,
            read_bytes: 4096,
            write_bytes: 8192,
            cancelled_write_bytes: 4096,
        };
        p.add_task_io(&t, IoDetail::PageCache);
        p.add_file(
            &FileActivity {
                read_bytes: 8192,
                write_bytes: 4096,
                cache_miss_bytes: 4096,
                ..FileActivity::default()
            },
            IoDetail::PageCache,
        );
        p.split_page_cache();
        assert_eq!((p.read_bytes, p.write_bytes, p.read_calls, p.write_calls), (10_000, 5_000, 7, 3));
        assert_eq!((p.read_file_bytes, p.read_sock_bytes, p.read_pipe_bytes), (8192, 100, 1708));
        assert_eq!((p.write_file_bytes, p.write_sock_bytes, p.write_pipe_bytes), (4096, 10, 894));
        assert_eq!(
            (p.storage_read_bytes, p.storage_write_bytes, p.cancelled_write_bytes),
            (4096, 8192, 4096)
        );
        assert_eq!((p.page_cache_read_bytes, p.page_cache_misses_bytes), (8192, 4096));
        // The syscall tier keeps the syscalls' bytes; only the storage bytes come from ioac.
        let mut q = ProcessIo { read_bytes: 1, ..ProcessIo::default() };
        q.add_task_io(&t, IoDetail::Syscalls);
        assert_eq!((q.read_bytes, q.read_calls, q.storage_write_bytes), (1, 0, 8192));
    }

    #[test]
    fn timed_calls_scale_to_all_calls() {
        // 10 of 100 calls timed at 5 µs in all: 50 µs for the 100.
        assert_eq!(estimate_ns(50_000, 10, 100, 0.0), 500_000);
        // All timed: exact.
        assert_eq!(estimate_ns(1234, 7, 7, 99.0), 1234);
        // None timed: the fallback mean per call.
        assert_eq!(estimate_ns(0, 0, 40, 250.0), 10_000);
        assert_eq!(estimate_ns(0, 0, 0, 250.0), 0);
        // A torn kernel counter with more timed than counted calls is not scaled below 1.
        assert_eq!(estimate_ns(900, 3, 2, 0.0), 900);
        // No overflow for large sums.
        assert_eq!(estimate_ns(u64::MAX / 2, 1_000, 1_000, 0.0), u64::MAX / 2);
    }
}
