//! The kernel side of I/O: attaching the I/O programs of `agent-ebpf/src/io.rs` for a tier,
//! draining their maps once per interval and decoding them into the model's
//! [`IoInterval`](crate::io::IoInterval).
//!
//! Use: compute [`IoOffsets`] with [`offsets_from`], set them on the loader as the global
//! [`IO_OFFSETS_GLOBAL`] (see [`configure_loader`]), load, then [`attach`]; call
//! [`IoProbes::drain`] once per interval with the `ioac` growth the scheduler program
//! harvested ([`crate::probes::cpu::CpuCounters::take_io`]). See `docs/io.md`.

mod maps;
pub mod offsets;
pub mod sampler;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use carbon_agent_common::TaskIo;
pub use carbon_agent_common::io::IoOffsets;
use carbon_agent_common::io::{
    BlockIo, BlockKey, CopyIo, CopyKey, Extent, FileIo, FileKey, IO_OFFSETS_GLOBAL as OFFSETS_NAME,
    PAGE_SIZE, PENDING_SLOTS, PathEvent, PendingIo, Run, TgidIo, extent_kind, file_kind, maps as names,
    path_kind,
};

use crate::io::{
    BlockDeviceIo, FileActivity, FileId, IoConfig, IoDetail, IoInterval, IoTimeSource, KernelCopy, ProcessIo,
    Unlink, estimate_ns, mean, paths, ranges::RangeSet,
};

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

/// The offsets the I/O programs need, from the running kernel's (parsed) BTF, with the mode
/// flags of the tier `detail`.
pub fn offsets_from(btf: &crate::probes::btf::KernelBtf, detail: IoDetail) -> Result<IoOffsets> {
    if !cfg!(target_arch = "x86_64") {
        bail!("the I/O probes use x86_64 syscall numbers and pt_regs; this is {}", std::env::consts::ARCH);
    }
    let page_cache = u32::from(detail == IoDetail::PageCache);
    Ok(IoOffsets {
        flush_tgid: std::process::id(),
        page_cache_files: page_cache,
        exit_times_only: page_cache,
        ..offsets::io_offsets(btf)?
    })
}

/// Sets the I/O global on a loader (the offsets must outlive the loader).
pub fn configure_loader<'a>(loader: &mut EbpfLoader<'a>, offsets: &'a IoOffsets) {
    loader.override_global(IO_OFFSETS_GLOBAL, offsets, true);
}

/// Programs on the page-cache, socket and block tracepoints: (program, BTF tracepoint or
/// classic category, classic name). Which are attached depends on the tier.
const PAGE_CACHE_TIER: &[(&str, &str)] = &[
    ("io_cache_get", "mm_filemap_get_pages"),
    ("io_cache_add", "mm_filemap_add_to_page_cache"),
    ("io_dirty", "writeback_dirty_folio"),
];
const SYSCALL_TIER: &[(&str, &str)] =
    &[("io_cache_add", "mm_filemap_add_to_page_cache"), ("io_dirty", "writeback_dirty_folio")];
/// Both tiers: socket bytes.
const SOCKETS: &[(&str, &str)] =
    &[("io_sock_send", "sock_send_length"), ("io_sock_recv", "sock_recv_length")];
const CLASSIC: &[(&str, &str, &str)] = &[("io_block_done", "block", "block_rq_complete")];

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
    /// Page-cache tier: whether unlinks are seen (`ext4_unlink_enter` attached), else why not.
    pub unlinks: Result<(), String>,
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

/// Attaches the I/O programs of a loaded object (whose `IO_OFFSETS` global was set for the
/// same tier, see [`configure_loader`]) and takes the I/O maps out of it.
pub fn attach(ebpf: &mut Ebpf, config: IoConfig) -> Result<IoProbes> {
    let kernel_btf = Btf::from_sys_fs().context("the I/O probes (tp_btf) need the kernel BTF")?;
    attach_with(ebpf, config, &kernel_btf)
}

/// [`attach`] with the kernel's BTF already parsed (the agent parses it once for every program).
pub fn attach_with(ebpf: &mut Ebpf, config: IoConfig, kernel_btf: &Btf) -> Result<IoProbes> {
    crate::probes::tracefs::ensure_mounted().map_err(anyhow::Error::msg)?;
    let mut programs = Vec::new();
    if !(config.time_sampling > 0.0 && config.time_sampling <= 1.0) {
        bail!("the I/O time sampling must be in (0, 1], not {}", config.time_sampling);
    }
    // BTF tracepoints: the programs read their arguments and walk kernel structs with plain
    // loads, which the verifier checks against the kernel's BTF.
    let mut load_btf = |ebpf: &mut Ebpf, name: &'static str, tp: &str| -> Result<()> {
        let p: &mut BtfTracePoint =
            ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?;
        p.load(tp, kernel_btf).with_context(|| format!("loading {name} for tp_btf/{tp}"))?;
        programs.push(name);
        Ok(())
    };
    load_btf(ebpf, "io_sys_exit", "sys_exit")?;
    load_btf(ebpf, "io_sys_enter", "sys_enter")?;
    let fd = |ebpf: &Ebpf, name: &str| -> Result<std::os::fd::OwnedFd> {
        let p: &BtfTracePoint = ebpf.program(name).context("no program")?.try_into()?;
        Ok(p.fd()?.as_fd().try_clone_to_owned()?)
    };
    let (enter, exit) = (fd(ebpf, "io_sys_enter")?, fd(ebpf, "io_sys_exit")?);
    let sampler = match config.detail {
        // Timing windows: both syscall programs attached only in them.
        IoDetail::PageCache => {
            let window = Array::try_from(
                ebpf.take_map(names::IO_WINDOW).context("eBPF object has no map `IO_WINDOW`")?,
            )?;
            Some(sampler::EnterSampler::start(
                &[exit.as_fd(), enter.as_fd()],
                Some(window),
                config.time_sampling,
                config.time_sampling_period,
            )?)
        }
        IoDetail::Syscalls => {
            let p: &mut BtfTracePoint = ebpf.program_mut("io_sys_exit").context("no program")?.try_into()?;
            p.attach().context("attaching io_sys_exit to tp_btf/sys_exit")?;
            if config.time_sampling < 1.0 {
                Some(sampler::EnterSampler::start(
                    &[enter.as_fd()],
                    None,
                    config.time_sampling,
                    config.time_sampling_period,
                )?)
            } else {
                let p: &mut BtfTracePoint =
                    ebpf.program_mut("io_sys_enter").context("no program")?.try_into()?;
                p.attach().context("attaching io_sys_enter to tp_btf/sys_enter")?;
                None
            }
        }
    };
    let tier = if config.detail == IoDetail::PageCache { PAGE_CACHE_TIER } else { SYSCALL_TIER };
    for &(name, tp) in tier.iter().chain(SOCKETS) {
        let p: &mut BtfTracePoint =
            ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?;
        p.load(tp, kernel_btf).with_context(|| format!("loading {name} for tp_btf/{tp}"))?;
        p.attach().with_context(|| format!("attaching {name} to tp_btf/{tp}"))?;
        programs.push(name);
    }
    let unlinks = if config.detail == IoDetail::PageCache {
        let r = (|| -> Result<()> {
            let p: &mut BtfTracePoint =
                ebpf.program_mut("io_ext4_unlink").context("no program io_ext4_unlink")?.try_into()?;
            p.load("ext4_unlink_enter", kernel_btf).context("loading io_ext4_unlink")?;
            p.attach().context("attaching io_ext4_unlink to tp_btf/ext4_unlink_enter")?;
            Ok(())
        })();
        if r.is_ok() {
            programs.push("io_ext4_unlink");
        }
        r.map_err(|e| format!("{e:#}"))
    } else {
        Ok(())
    };
    for &(name, cat, tp) in CLASSIC {
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
        unlinks,
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
        file: FileId { dev: k.dev, ino: k.ino, generation: k.generation },
        read_ranges: RangeSet::with_limit(max),
        write_ranges: RangeSet::with_limit(max),
        cache_ranges: RangeSet::with_limit(max),
        ..Default::default()
    })
}

impl IoProbes {
    /// The tier attached.
    pub fn detail(&self) -> IoDetail {
        self.config.detail
    }

    /// Takes everything the kernel counted since the previous drain; `task_io` is the `ioac`
    /// growth per tgid of the same interval ([`crate::probes::cpu::CpuCounters::take_io`]).
    pub fn drain(&mut self, task_io: &BTreeMap<u32, TaskIo>) -> IoInterval {
        let unflushed_cpus = self.flush_pending();
        self.drain_flushed(unflushed_cpus, task_io)
    }

    /// [`drain`](Self::drain) right after the caller visited every CPU ([`crate::probes::kick`],
    /// which flushes the pending calls), `unflushed_cpus` being the CPUs it could not visit.
    pub fn drain_flushed(&mut self, unflushed_cpus: u64, task_io: &BTreeMap<u32, TaskIo>) -> IoInterval {
        let detail = self.config.detail;
        let mut out = IoInterval { detail, ..IoInterval::default() };
        out.timing.unflushed_cpus = unflushed_cpus;
        out.timing.detail = detail;
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
        for (tgid, t) in task_io {
            out.processes.entry(*tgid).or_default().add_task_io(t, detail);
        }
        let means = match detail {
            IoDetail::Syscalls => self.estimate_times(&mut out, &mut files),
            IoDetail::PageCache => self.estimate_times_from_windows(&mut out, &mut files),
        };
        // The kernel counts regular-file activity and page-cache misses only per file.
        for f in files.values().filter(|f| f.read_calls + f.write_calls + f.cache_miss_bytes > 0) {
            out.processes.entry(f.tgid).or_default().add_file(f, detail);
        }
        if detail == IoDetail::PageCache {
            out.processes.values_mut().for_each(ProcessIo::split_page_cache);
        }
        for (k, v) in maps::take_all::<CopyKey, CopyIo>(self.copy_io.fd().as_fd()) {
            let (src, dst) = (
                FileId { dev: k.src_dev, ino: k.src_ino, generation: k.src_generation },
                FileId { dev: k.dst_dev, ino: k.dst_ino, generation: k.dst_generation },
            );
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
        let mut proc_fd_cache: HashMap<u32, HashMap<(u32, u64), PathBuf>> = HashMap::new();
        for (_, mut f) in files {
            f.path = self.paths.get(&f.file).cloned().or_else(|| {
                proc_fd_cache
                    .entry(f.tgid)
                    .or_insert_with(|| proc_fd_paths(f.tgid))
                    .get(&(f.file.dev, f.file.ino))
                    .cloned()
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
        if self.config.detail == IoDetail::PageCache {
            // Socket bytes wait per CPU too, flushed when the agent's thread is switched in.
            return crate::probes::kick::kick_cpus(&crate::procfs::online_cpu_ids());
        }
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
            detail: self.config.detail,
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

    /// Page-cache tier: the calls timed in the windows (per tgid, not per file) scaled to all
    /// the read/write calls the kernel counted (`syscr + syscw`); each file gets its process's
    /// time in proportion to its page-cache bytes. Fills `out.timing`; returns each process's
    /// mean ns per timed call.
    fn estimate_times_from_windows(
        &mut self,
        out: &mut IoInterval,
        files: &mut BTreeMap<FileKey, FileActivity>,
    ) -> HashMap<u32, f64> {
        let (mut calls, mut ns, mut n) = (0, 0, 0);
        for p in out.processes.values() {
            calls += p.read_calls + p.write_calls;
            (ns, n) = (ns + p.io_cpu_ns, n + p.timed_calls);
        }
        self.timed_total = (self.timed_total.0 + ns, self.timed_total.1 + n);
        self.calls_total += calls;
        let fallback = mean(ns, n).or_else(|| mean(self.timed_total.0, self.timed_total.1)).unwrap_or(0.0);
        let mut means = HashMap::new();
        for (&tgid, p) in out.processes.iter_mut() {
            let m = mean(p.io_cpu_ns, p.timed_calls);
            if let Some(m) = m {
                means.insert(tgid, m);
            }
            p.io_cpu_ns =
                estimate_ns(p.io_cpu_ns, p.timed_calls, p.read_calls + p.write_calls, m.unwrap_or(fallback));
        }
        let mut file_bytes: HashMap<u32, u64> = HashMap::new();
        for f in files.values() {
            *file_bytes.entry(f.tgid).or_default() += f.read_bytes + f.write_bytes;
        }
        for f in files.values_mut() {
            let Some(p) = out.processes.get(&f.tgid) else { continue };
            let all = (p.read_bytes + p.write_bytes).max(file_bytes[&f.tgid]);
            if all > 0 {
                f.io_ns =
                    (p.io_cpu_ns as u128 * u128::from(f.read_bytes + f.write_bytes) / u128::from(all)) as u64;
            }
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
            let id = FileId { dev: ev.dev, ino: ev.ino, generation: ev.generation };
            match ev.kind {
                path_kind::OPEN | path_kind::SEEN => {
                    if ev.flags & carbon_agent_common::io::path_flag::NO_BASE != 0 {
                        continue;
                    }
                    if let Some(p) = paths::event_dir_path(&ev, &self.mounts) {
                        self.paths.insert(id, p.clone());
                        if ev.kind == path_kind::OPEN {
                            if self.by_path.len() >= self.config.path_table_capacity {
                                self.by_path.clear();
                            }
                            self.by_path.insert(p, id);
                        }
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
                path_kind::UNLINKED_INODE => {
                    let path = if ev.flags & carbon_agent_common::io::path_flag::NO_BASE != 0 {
                        None
                    } else {
                        paths::event_dir_path(&ev, &self.mounts)
                    };
                    let path = path.or_else(|| self.paths.get(&id).cloned());
                    if path.is_none() {
                        out.losses.unresolved_unlinks += 1;
                    }
                    out.unlinks.push(Unlink {
                        tgid: ev.tgid,
                        uid: ev.uid,
                        path,
                        file: Some(id),
                        ts_ns: ev.ts_ns,
                    });
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
fn proc_fd_paths(tgid: u32) -> HashMap<(u32, u64), PathBuf> {
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
            out.insert((paths::udev_to_kdev(meta.dev()), meta.ino()), target);
        }
    }
    out
}
