//! I/O per process from the kernel: attaching the I/O programs of `agent-ebpf/src/io.rs` and
//! draining their maps once per interval into an [`IoInterval`].
//!
//! Use: compute [`IoOffsets`] with [`offsets_from`], set them on the loader as the
//! global [`IO_OFFSETS_GLOBAL`] (see [`configure_loader`]), load, then [`attach`]; call
//! [`IoProbes::drain`] once per interval. See `docs/io.md`.

pub mod bench;
mod maps;
pub mod offsets;
pub mod paths;
pub mod sampler;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
pub use carbon_agent_common::io::IoOffsets;
use carbon_agent_common::io::{
    BlockIo, BlockKey, CopyIo, CopyKey, Extent, FileIo, FileKey, IO_OFFSETS_GLOBAL as OFFSETS_NAME,
    PAGE_SIZE, PENDING_SLOTS, PathEvent, PendingIo, Run, TgidIo, extent_kind, file_kind, maps as names,
    path_kind,
};
use serde::Serialize;

use crate::waste::ranges::RangeSet;
pub use paths::FileId;

/// Name of the eBPF global that must hold the [`IoOffsets`] before loading.
pub const IO_OFFSETS_GLOBAL: &str = OFFSETS_NAME;

/// The I/O loss counters in the shared `STATS` array (index, name), for the lead's report.
pub const IO_STATS: &[(u32, &str)] = &[
    (carbon_agent_common::stat::IO_TGID_MAP_FULL, "io_tgid_map_full"),
    (carbon_agent_common::stat::IO_FILE_MAP_FULL, "io_file_map_full"),
    (carbon_agent_common::stat::IO_COPY_BLOCK_MAP_FULL, "io_copy_block_map_full"),
    (carbon_agent_common::stat::IO_EXTENTS_FULL, "io_extents_ringbuf_full"),
    (carbon_agent_common::stat::IO_PATHS_FULL, "io_paths_ringbuf_full"),
    (carbon_agent_common::stat::IO_ENTER_MISSING, "io_syscall_enter_missing"),
    (carbon_agent_common::stat::IO_FD_UNRESOLVED, "io_fd_unresolved"),
];

/// The offsets the I/O programs need, from the running kernel's (parsed) BTF.
pub fn offsets_from(btf: &crate::probes::btf::KernelBtf) -> Result<IoOffsets> {
    if !cfg!(target_arch = "x86_64") {
        bail!("the I/O probes use x86_64 syscall numbers and pt_regs; this is {}", std::env::consts::ARCH);
    }
    Ok(IoOffsets { flush_tgid: std::process::id(), ..offsets::io_offsets(btf)? })
}

/// Sets the I/O global on a loader (the offsets must outlive the loader).
pub fn configure_loader<'a>(loader: &mut EbpfLoader<'a>, offsets: &'a IoOffsets) {
    loader.override_global(IO_OFFSETS_GLOBAL, offsets, true);
}

/// What to attach.
#[derive(Clone, Debug)]
pub struct IoConfig {
    /// Also attach `filemap:mm_filemap_get_pages` (every buffered read, hits included) to
    /// fill `page_cache_read_bytes`. Off by default: it costs one more program run per read
    /// syscall and the syscall exit already gives exact per-file bytes.
    pub page_cache_reads: bool,
    /// Most (device, inode) → path entries kept in userspace.
    pub path_table_capacity: usize,
    /// Most ranges kept per file and kind per interval before neighbours are merged.
    pub max_ranges_per_file: usize,
    /// Share of the time the I/O syscalls' enter is watched, in (0, 1]: the calls that enter
    /// then are timed, and their time is scaled to all calls (see [`sampler`]). 1 times every
    /// call, at the cost of one more program run on every syscall of the machine.
    pub time_sampling: f64,
    /// Length of one sampling period (one window of `time_sampling × period` in each).
    pub time_sampling_period: std::time::Duration,
}

/// Default [`IoConfig::time_sampling`].
pub const DEFAULT_TIME_SAMPLING: f64 = 0.05;

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            page_cache_reads: false,
            path_table_capacity: 65536,
            max_ranges_per_file: 1024,
            time_sampling: DEFAULT_TIME_SAMPLING,
            time_sampling_period: std::time::Duration::from_millis(200),
        }
    }
}

/// One process's I/O in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessIo {
    pub uid: u32,
    /// Bytes returned by read-family syscalls (files, pipes, sockets, anything).
    pub read_bytes: u64,
    /// Bytes returned by write-family syscalls.
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
    /// estimated from the `timed_calls` (see [`sampler`]).
    pub io_cpu_ns: u64,
    /// Calls whose time was measured.
    pub timed_calls: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    /// Bytes (whole pages) this process brought into the page cache from storage.
    pub page_cache_misses_bytes: u64,
    /// Bytes (whole pages) buffered reads asked the page cache for; 0 unless enabled.
    pub page_cache_read_bytes: u64,
    /// Folios dirtied by its writes.
    pub dirtied_folios: u64,
}

impl ProcessIo {
    fn from_kernel(v: &[TgidIo]) -> Self {
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

    /// Adds what the kernel counted per file (regular files only) to the totals.
    fn add_file(&mut self, f: &FileActivity) {
        if self.uid == 0 {
            self.uid = f.uid;
        }
        self.read_bytes += f.read_bytes;
        self.write_bytes += f.write_bytes;
        self.read_file_bytes += f.read_bytes;
        self.write_file_bytes += f.write_bytes;
        self.read_calls += f.read_calls;
        self.write_calls += f.write_calls;
        self.io_cpu_ns += f.io_ns;
        self.timed_calls += f.timed_calls;
        self.page_cache_misses_bytes += f.cache_miss_bytes;
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
}

/// What one process did to one regular file in one interval.
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

/// An `unlink`/`unlinkat` call.
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

/// How the time in I/O syscalls was measured in one interval (see [`sampler`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct IoTiming {
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

fn mean(ns: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| ns as f64 / calls as f64)
}

/// The attached I/O programs and their maps.
pub struct IoProbes {
    tgid_io: MapData,
    file_io: MapData,
    copy_io: MapData,
    block_io: MapData,
    extents: RingBuf<MapData>,
    paths_rb: RingBuf<MapData>,
    pending: PerCpuArray<MapData, PendingIo>,
    sampler: Option<sampler::EnterSampler>,
    /// Timed ns and calls since the start (the fallback when an interval timed none), and all
    /// successful calls since the start.
    timed_total: (u64, u64),
    calls_total: u64,
    ncpus: usize,
    config: IoConfig,
    mounts: HashMap<u32, paths::Mount>,
    paths: paths::PathTable,
    /// Path → file last opened there (for unlinks).
    by_path: HashMap<PathBuf, FileId>,
    /// Names of the attached programs.
    pub programs: Vec<&'static str>,
}

fn map_data(ebpf: &mut Ebpf, name: &str) -> Result<MapData> {
    match ebpf.take_map(name).with_context(|| format!("eBPF object has no map `{name}`"))? {
        Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::LruHashMap(d) => Ok(d),
        _ => bail!("map `{name}` has an unexpected type"),
    }
}

/// Attaches the I/O programs of a loaded object (whose `IO_OFFSETS` global was set, see
/// [`configure_loader`]) and takes the I/O maps out of it.
pub fn attach(ebpf: &mut Ebpf, config: IoConfig) -> Result<IoProbes> {
    let kernel_btf = Btf::from_sys_fs().context("the I/O syscall probes (tp_btf) need the kernel BTF")?;
    attach_with(ebpf, config, &kernel_btf)
}

/// [`attach`] with the kernel's BTF already parsed (the agent parses it once for every program).
pub fn attach_with(ebpf: &mut Ebpf, config: IoConfig, kernel_btf: &Btf) -> Result<IoProbes> {
    crate::probes::tracefs::ensure_mounted().map_err(anyhow::Error::msg)?;
    let mut programs = Vec::new();
    // BTF tracepoints: the programs read `pt_regs` and walk `current` with plain loads, which
    // the verifier checks against the kernel's BTF (`btf_trace_sys_enter` / `_exit`).
    if !(config.time_sampling > 0.0 && config.time_sampling <= 1.0) {
        bail!("the I/O time sampling must be in (0, 1], not {}", config.time_sampling);
    }
    let mut sampler = None;
    for (name, tp) in [("io_sys_enter", "sys_enter"), ("io_sys_exit", "sys_exit")] {
        let p: &mut BtfTracePoint =
            ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?;
        p.load(tp, kernel_btf).with_context(|| format!("loading {name} for tp_btf/{tp}"))?;
        if name == "io_sys_enter" && config.time_sampling < 1.0 {
            sampler = Some(sampler::EnterSampler::start(
                p.fd()?.as_fd(),
                config.time_sampling,
                config.time_sampling_period,
            )?);
        } else {
            p.attach().with_context(|| format!("attaching {name} to tp_btf/{tp}"))?;
        }
        programs.push(name);
    }
    let mut classic = vec![
        ("io_cache_add", "filemap", "mm_filemap_add_to_page_cache"),
        ("io_dirty", "writeback", "writeback_dirty_folio"),
        ("io_sock_send", "sock", "sock_send_length"),
        ("io_sock_recv", "sock", "sock_recv_length"),
        ("io_block_done", "block", "block_rq_complete"),
    ];
    if config.page_cache_reads {
        classic.push(("io_cache_get", "filemap", "mm_filemap_get_pages"));
    }
    for (name, cat, tp) in classic {
        let p: &mut TracePoint =
            ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
        p.attach(cat, tp).with_context(|| format!("attaching {name} to tracepoint {cat}:{tp}"))?;
        programs.push(name);
    }
    let mounts = paths::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    Ok(IoProbes {
        tgid_io: map_data(ebpf, names::TGID_IO)?,
        file_io: map_data(ebpf, names::FILE_IO)?,
        copy_io: map_data(ebpf, names::COPY_IO)?,
        block_io: map_data(ebpf, names::BLOCK_IO)?,
        extents: ring(ebpf, names::IO_EXTENTS)?,
        paths_rb: ring(ebpf, names::IO_PATHS)?,
        pending: PerCpuArray::try_from(
            ebpf.take_map(names::PENDING_IO).context("eBPF object has no map `PENDING_IO`")?,
        )?,
        sampler,
        timed_total: (0, 0),
        calls_total: 0,
        ncpus: aya::util::nr_cpus().map_err(|(m, e)| anyhow::anyhow!("{m}: {e}"))?,
        paths: paths::PathTable::new(config.path_table_capacity),
        config,
        mounts,
        by_path: HashMap::new(),
        programs,
    })
}

fn ring(ebpf: &mut Ebpf, name: &str) -> Result<RingBuf<MapData>> {
    let map = ebpf.take_map(name).with_context(|| format!("eBPF object has no map `{name}`"))?;
    RingBuf::try_from(map).with_context(|| format!("map `{name}` is not a ring buffer"))
}

fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; T is a #[repr(C)] plain-old-data type.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// The activity of file `k` in `files`, added empty (ranges capped at `max`) when missing.
fn file_activity(files: &mut BTreeMap<FileKey, FileActivity>, k: FileKey, max: usize) -> &mut FileActivity {
    files.entry(k).or_insert_with(|| FileActivity {
        tgid: k.tgid,
        file: FileId { dev: k.dev, ino: k.ino },
        read_ranges: RangeSet::with_limit(max),
        write_ranges: RangeSet::with_limit(max),
        cache_ranges: RangeSet::with_limit(max),
        ..Default::default()
    })
}

impl IoProbes {
    /// Takes everything the kernel counted since the previous drain.
    pub fn drain(&mut self) -> IoInterval {
        let unflushed_cpus = self.flush_pending();
        self.drain_flushed(unflushed_cpus)
    }

    /// [`drain`](Self::drain) right after the caller visited every CPU ([`crate::probes::kick`],
    /// which flushes the pending calls), `unflushed_cpus` being the CPUs it could not visit.
    pub fn drain_flushed(&mut self, unflushed_cpus: u64) -> IoInterval {
        let mut out = IoInterval::default();
        out.timing.unflushed_cpus = unflushed_cpus;
        self.drain_paths(&mut out);
        let max = self.config.max_ranges_per_file;
        let mut files: BTreeMap<FileKey, FileActivity> = BTreeMap::new();
        while let Some(item) = self.extents.next() {
            let Some(e) = read_pod::<Extent>(&item) else {
                continue;
            };
            add_run(file_activity(&mut files, e.key, max), e.kind, e.run);
        }
        for (k, v) in maps::take_all::<FileKey, FileIo>(self.file_io.fd().as_fd()) {
            let f = file_activity(&mut files, k, max);
            f.uid = v.uid;
            f.read_bytes += v.read_bytes;
            f.write_bytes += v.write_bytes;
            f.read_calls += v.read_calls;
            f.write_calls += v.write_calls;
            f.io_ns += v.io_ns;
            f.timed_calls += v.timed_calls;
            f.cache_miss_bytes += v.cache_miss_pages * PAGE_SIZE;
            add_run(f, extent_kind::READ, v.read_run);
            add_run(f, extent_kind::WRITE, v.write_run);
            add_run(f, extent_kind::CACHE_ADD, v.cache_run);
        }
        for (k, v) in maps::take_all_per_cpu::<u32, TgidIo>(self.tgid_io.fd().as_fd(), self.ncpus) {
            out.processes.insert(k, ProcessIo::from_kernel(&v));
        }
        let means = self.estimate_times(&mut out, &mut files);
        // The kernel counts regular-file reads, writes and page-cache misses only per file.
        for f in files.values().filter(|f| f.read_calls + f.write_calls + f.cache_miss_bytes > 0) {
            out.processes.entry(f.tgid).or_default().add_file(f);
        }
        for (k, v) in maps::take_all::<CopyKey, CopyIo>(self.copy_io.fd().as_fd()) {
            let (src, dst) =
                (FileId { dev: k.src_dev, ino: k.src_ino }, FileId { dev: k.dst_dev, ino: k.dst_ino });
            out.copies.push(KernelCopy {
                tgid: k.tgid,
                src,
                dst,
                src_is_file: u32::from(k.src_kind) == file_kind::REG,
                dst_is_file: u32::from(k.dst_kind) == file_kind::REG,
                src_path: self.paths.get(&src).cloned(),
                dst_path: self.paths.get(&dst).cloned(),
                bytes: v.bytes,
                calls: v.calls,
                io_ns: estimate_ns(
                    v.io_ns,
                    v.timed_calls,
                    v.calls,
                    means.get(&k.tgid).copied().unwrap_or(out.timing.fallback_ns_per_call),
                ),
                timed_calls: v.timed_calls,
            });
        }
        let mut block: BTreeMap<u32, BlockDeviceIo> = BTreeMap::new();
        for (k, v) in maps::take_all_per_cpu::<BlockKey, BlockIo>(self.block_io.fd().as_fd(), self.ncpus) {
            let b = block.entry(k.dev).or_insert(BlockDeviceIo {
                major: k.dev >> 20,
                minor: k.dev & 0xf_ffff,
                ..Default::default()
            });
            let bytes: u64 = v.iter().map(|x| x.bytes).sum();
            b.requests += v.iter().map(|x| x.requests).sum::<u64>();
            match k.dir {
                0 => b.read_bytes += bytes,
                1 => b.write_bytes += bytes,
                _ => b.other_bytes += bytes,
            }
        }
        out.block = block.into_values().collect();
        let mut proc_fd_cache: HashMap<u32, HashMap<FileId, PathBuf>> = HashMap::new();
        for (_, mut f) in files {
            f.path = self.paths.get(&f.file).cloned().or_else(|| {
                proc_fd_cache.entry(f.tgid).or_insert_with(|| proc_fd_paths(f.tgid)).get(&f.file).cloned()
            });
            if let Some(p) = &f.path {
                self.paths.insert(f.file, p.clone());
            } else {
                out.losses.unresolved_paths += 1;
            }
            out.losses.ranges_coarsened +=
                f.read_ranges.coarsened + f.write_ranges.coarsened + f.cache_ranges.coarsened;
            out.files.push(f);
        }
        out.losses.path_table_evicted = self.paths.evicted;
        out
    }

    /// Asks the syscall exit handler on every CPU with pending calls ([`PendingIo`]) to move
    /// them into the maps ([`crate::probes::kick`]). Returns how many of them the agent may not
    /// run on (their pending calls stay until that CPU's next I/O call that does not continue
    /// them, or 64 calls).
    fn flush_pending(&self) -> u64 {
        let mut cpus: Vec<usize> = Vec::new();
        for i in 0..PENDING_SLOTS {
            if let Ok(values) = self.pending.get(&i, 0) {
                for (cpu, v) in values.iter().enumerate() {
                    if v.kind != 0 && !cpus.contains(&cpu) {
                        cpus.push(cpu);
                    }
                }
            }
        }
        crate::probes::kick::kick_cpus(&cpus)
    }

    /// How the time in I/O syscalls has been measured since the start: the configured and
    /// measured window share, and the calls timed out of all.
    pub fn timing_since_start(&self) -> IoTimeSource {
        let (sampling, measured_sampling) = self.sampling();
        IoTimeSource {
            method: if sampling < 1.0 {
                "estimated: calls timed (enter→exit) in random sampling windows, scaled to all calls"
            } else {
                "measured: every call timed (enter→exit)"
            },
            sampling,
            measured_sampling,
            calls: self.calls_total,
            timed_calls: self.timed_total.1,
        }
    }

    /// Scales the timed calls' time to all calls, per file, per process (the part not in
    /// files) and fills `out.timing`. Returns each process's mean ns per timed call.
    fn estimate_times(
        &mut self,
        out: &mut IoInterval,
        files: &mut BTreeMap<FileKey, FileActivity>,
    ) -> HashMap<u32, f64> {
        // Before `add_file`, a process row holds only what is not per file.
        let other_calls =
            |p: &ProcessIo| (p.read_calls + p.write_calls + p.copy_calls).saturating_sub(p.failed_calls);
        let mut timed: HashMap<u32, (u64, u64)> = HashMap::new();
        let (mut calls, mut ns, mut n) = (0, 0, 0);
        for (&tgid, p) in &out.processes {
            let t = timed.entry(tgid).or_default();
            (t.0, t.1) = (t.0 + p.io_cpu_ns, t.1 + p.timed_calls);
            calls += other_calls(p);
        }
        for f in files.values() {
            let t = timed.entry(f.tgid).or_default();
            (t.0, t.1) = (t.0 + f.io_ns, t.1 + f.timed_calls);
            calls += f.read_calls + f.write_calls;
        }
        for &(tn, tc) in timed.values() {
            (ns, n) = (ns + tn, n + tc);
        }
        self.timed_total = (self.timed_total.0 + ns, self.timed_total.1 + n);
        self.calls_total += calls;
        let fallback = mean(ns, n).or_else(|| mean(self.timed_total.0, self.timed_total.1)).unwrap_or(0.0);
        let means: HashMap<u32, f64> =
            timed.iter().filter_map(|(&tgid, &(tn, tc))| Some((tgid, mean(tn, tc)?))).collect();
        let m = |tgid: u32| means.get(&tgid).copied().unwrap_or(fallback);
        for f in files.values_mut() {
            f.io_ns = estimate_ns(f.io_ns, f.timed_calls, f.read_calls + f.write_calls, m(f.tgid));
        }
        for (&tgid, p) in out.processes.iter_mut() {
            p.io_cpu_ns = estimate_ns(p.io_cpu_ns, p.timed_calls, other_calls(p), m(tgid));
        }
        out.timing.calls = calls;
        out.timing.timed_calls = n;
        out.timing.fallback_ns_per_call = fallback;
        (out.timing.sampling, out.timing.measured_sampling) = self.sampling();
        means
    }

    /// The configured and the measured share of time `io_sys_enter` was attached since the
    /// start (1 and 1 when it stays attached).
    fn sampling(&self) -> (f64, f64) {
        self.sampler.as_ref().map_or((1.0, 1.0), |s| (s.fraction, s.measured_fraction()))
    }

    fn drain_paths(&mut self, out: &mut IoInterval) {
        while let Some(item) = self.paths_rb.next() {
            let Some(ev) = read_pod::<PathEvent>(&item) else {
                continue;
            };
            match ev.kind {
                path_kind::OPEN => {
                    if let Some(p) = paths::event_dir_path(&ev, &self.mounts) {
                        let id = FileId { dev: ev.dev, ino: ev.ino };
                        self.paths.insert(id, p.clone());
                        if self.by_path.len() >= self.config.path_table_capacity {
                            self.by_path.clear();
                        }
                        self.by_path.insert(p, id);
                    }
                }
                path_kind::UNLINK => {
                    let path = paths::unlink_path(&ev, &self.mounts);
                    if path.is_none() {
                        out.losses.unresolved_unlinks += 1;
                    }
                    let file = path.as_ref().and_then(|p| self.by_path.remove(p));
                    out.unlinks.push(Unlink { tgid: ev.tgid, uid: ev.uid, path, file, ts_ns: ev.ts_ns });
                }
                _ => {}
            }
        }
    }
}

fn add_run(f: &mut FileActivity, kind: u32, run: Run) {
    if run.end <= run.start {
        return;
    }
    match kind {
        extent_kind::READ => f.read_ranges.insert(run.start, run.end),
        extent_kind::WRITE => f.write_ranges.insert(run.start, run.end),
        extent_kind::CACHE_ADD => f.cache_ranges.insert(run.start, run.end),
        _ => {}
    }
}

/// (dev, ino) → path of the open files of a live process, from `/proc/<tgid>/fd` (for files
/// opened before the probes were attached). Empty when the process is gone.
fn proc_fd_paths(tgid: u32) -> HashMap<FileId, PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return out;
    };
    for e in dir.flatten().take(4096) {
        let (Ok(target), Ok(meta)) = (std::fs::read_link(e.path()), std::fs::metadata(e.path())) else {
            continue;
        };
        if meta.is_file() {
            out.insert(FileId { dev: paths::udev_to_kdev(meta.dev()), ino: meta.ino() }, target);
        }
    }
    out
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
        p.add_file(&FileActivity {
            uid: 7,
            read_bytes: 100,
            write_bytes: 40,
            read_calls: 2,
            write_calls: 4,
            io_ns: 50,
            cache_miss_bytes: 8192,
            ..FileActivity::default()
        });
        assert_eq!(p.uid, 7);
        assert_eq!((p.read_bytes, p.write_bytes), (110, 43));
        assert_eq!((p.read_file_bytes, p.write_file_bytes), (100, 40));
        assert_eq!((p.read_pipe_bytes, p.write_sock_bytes), (10, 3));
        assert_eq!((p.read_calls, p.write_calls), (3, 5));
        assert_eq!(p.io_cpu_ns, 55);
        assert_eq!(p.page_cache_misses_bytes, 8192);
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
