//! Kernel side: loading and attaching the eBPF programs, reading their maps.
//!
//! [`Probes::load`] checks privileges, mounts tracefs when missing, reads the struct offsets
//! the programs need from the kernel's BTF, loads the embedded object and attaches:
//! `sched_switch` as a BTF tracepoint (the classic tracepoint where the kernel has no BTF) and
//! the lifecycle programs (fork, exec, exit).

/// The kernel BTF reader, shared with xtask's benchmark (in the common crate).
pub use carbon_agent_common::btf;
pub mod cpu;
pub mod io;
pub mod kfunc;
pub mod kick;
pub mod lifecycle;
pub mod privileges;
pub mod tracefs;

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use carbon_agent_common::{globals, stat};

use self::{btf::KernelBtf, cpu::CpuCounters};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// A loader for [`EBPF_OBJECT`]: it holds a task-local storage map, which aya 0.14 creates
/// but has no userspace wrapper for, hence `allow_unsupported_maps`.
pub fn new_loader<'a>() -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.allow_unsupported_maps();
    loader
}

/// Capacities of the kernel-side maps.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the per-tgid CPU map: processes alive (or exited within an interval) at once.
    pub max_processes: u32,
    /// Bytes of the lifecycle ring buffer (power of two, at least a page).
    pub lifecycle_ring_bytes: u32,
    /// Use the classic `sched:sched_switch` tracepoint even when BTF is there (for comparison).
    pub force_classic_sched: bool,
    /// The I/O programs' settings; `None` leaves I/O accounting off.
    pub io: Option<crate::io::IoConfig>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_processes: 32768,
            lifecycle_ring_bytes: 4 << 20,
            force_classic_sched: false,
            io: Some(crate::io::IoConfig::default()),
        }
    }
}

/// How `sched_switch` is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedHook {
    BtfTracepoint,
    ClassicTracepoint,
}

/// Counters of what the kernel side lost for lack of capacity, cumulative since load.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelLosses {
    /// Inserts into the per-tgid CPU map that failed because it was full.
    pub cpu_map_full: u64,
    /// CPU nanoseconds that could not be recorded because of those failures.
    pub lost_cpu_ns: u64,
    /// Lifecycle events dropped because the ring buffer was full.
    pub lifecycle_dropped: u64,
    /// Idle stints whose start the kernel did not deliver to the scheduler program, inferred
    /// instead (an approximation, not a loss: see `agent-ebpf/src/sched.rs`, `idle_switch`).
    pub idle_stints_inferred: u64,
    /// The I/O programs' loss counters (see `docs/io.md`), by name.
    #[serde(flatten)]
    pub io: std::collections::BTreeMap<&'static str, u64>,
}

impl KernelLosses {
    /// Whether anything at all was lost.
    pub fn any(&self) -> bool {
        self.cpu_map_full + self.lifecycle_dropped + self.io.values().sum::<u64>() > 0
    }

    /// The non-zero counters, e.g. `cpu_map_full 3, io_fd_unresolved 1` (empty when none).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.cpu_map_full > 0 {
            parts.push(format!(
                "cpu_map_full {} ({:.3} s of CPU time not attributed)",
                self.cpu_map_full,
                self.lost_cpu_ns as f64 / 1e9
            ));
        }
        if self.lifecycle_dropped > 0 {
            parts.push(format!("lifecycle_dropped {}", self.lifecycle_dropped));
        }
        parts.extend(self.io.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")));
        parts.join(", ")
    }
}

/// The loaded and attached programs, and the maps userspace reads.
pub struct Probes {
    pub ebpf: Ebpf,
    pub sched_hook: SchedHook,
    /// Whether tracefs had to be mounted by the agent.
    pub tracefs_mounted_by_agent: bool,
    pub cpu: CpuCounters,
    /// Lifecycle events; `None` where the kernel has no BTF (processes then come from /proc).
    pub lifecycle: Option<RingBuf<MapData>>,
    /// The I/O programs, when attached.
    pub io: Option<io::IoProbes>,
    /// Why I/O accounting is off, when it was asked for and could not be set up.
    pub io_error: Option<String>,
    /// Log records from the programs' cold paths (aya-log); poll with `flush`.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    stats: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Checks privileges, then loads and attaches everything.
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Self> {
        if let Some(msg) = privileges::check() {
            bail!(msg);
        }
        bump_memlock_rlimit();
        let kernel_btf = KernelBtf::from_sysfs(Path::new("/sys")).ok();
        let aya_btf = Btf::from_sys_fs().ok();

        let offsets = match &kernel_btf {
            Some(btf) => Some(StructOffsets::read(btf)?),
            None => None,
        };
        let mut io_error = None;
        let io_offsets = match opts.io {
            Some(_) => match &kernel_btf {
                Some(btf) => io::offsets_from(btf, opts.io.as_ref().map(|c| c.detail).unwrap_or_default())
                    .map_err(|e| io_error = Some(format!("{e:#}")))
                    .ok(),
                None => {
                    io_error = Some("the I/O probes need the kernel BTF (/sys/kernel/btf/vmlinux)".into());
                    None
                }
            },
            None => None,
        };
        let mut loader = new_loader();
        loader.btf(aya_btf.as_ref());
        if let Some(o) = &io_offsets {
            io::configure_loader(&mut loader, o);
        }
        loader.map_max_entries("TGID_CPU", opts.max_processes);
        loader.map_max_entries("LIFECYCLE", opts.lifecycle_ring_bytes);
        if let Some(o) = &offsets {
            o.set_globals(&mut loader);
        }
        let (object, kfunc_error) = kfunc::agent_object(kernel_btf.as_ref());
        if let (Some(e), true, None) = (&kfunc_error, opts.io.is_some(), &io_error) {
            io_error = Some(e.clone());
        }
        let mut ebpf = loader.load(object.bytes()).context("loading the eBPF object into the kernel")?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();

        let mut tracefs_mounted_by_agent = false;
        let sched_hook = match &aya_btf {
            Some(btf) if !opts.force_classic_sched => {
                attach_btf(&mut ebpf, "sched_switch_btf", "sched_switch", btf)?;
                SchedHook::BtfTracepoint
            }
            _ => {
                tracefs_mounted_by_agent =
                    tracefs::ensure_mounted().map_err(|e| anyhow!(e))? == tracefs::Tracefs::MountedByAgent;
                let prog: &mut TracePoint = program(&mut ebpf, "sched_switch_tp")?.try_into()?;
                prog.load().context("loading sched_switch (classic tracepoint)")?;
                prog.attach("sched", "sched_switch").context("attaching sched:sched_switch")?;
                SchedHook::ClassicTracepoint
            }
        };

        let lifecycle = match (&aya_btf, &offsets) {
            (Some(btf), Some(_)) => {
                for (prog, tp) in [
                    ("sched_process_fork", "sched_process_fork"),
                    ("sched_process_exec", "sched_process_exec"),
                    ("sched_process_exit", "sched_process_exit"),
                ] {
                    attach_btf(&mut ebpf, prog, tp, btf)?;
                }
                Some(RingBuf::try_from(take_map(&mut ebpf, "LIFECYCLE")?)?)
            }
            _ => None,
        };
        let io = match (&opts.io, &io_offsets, &aya_btf, &kfunc_error) {
            (Some(cfg), Some(_), Some(btf), None) => match io::attach_with(&mut ebpf, cfg.clone(), btf) {
                Ok(io) => Some(io),
                Err(e) => {
                    io_error = Some(format!("{e:#}"));
                    None
                }
            },
            (Some(_), Some(_), None, _) => {
                io_error = Some("the I/O syscall probes (tp_btf) need aya's view of the kernel BTF".into());
                None
            }
            _ => None,
        };
        if let Some(e) = &io_error {
            tracing::warn!("I/O accounting is off: {e}");
        }
        let cpu = CpuCounters::new(PerCpuHashMap::try_from(take_map(&mut ebpf, "TGID_CPU")?)?);
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, "STATS")?)?;
        Ok(Probes { ebpf, sched_hook, tracefs_mounted_by_agent, cpu, lifecycle, io, io_error, logger, stats })
    }

    /// Loss counters summed over CPUs.
    pub fn losses(&self) -> KernelLosses {
        KernelLosses {
            cpu_map_full: self.stat(stat::TGID_MAP_FULL),
            lost_cpu_ns: self.stat(stat::LOST_CPU_NS),
            lifecycle_dropped: self.stat(stat::LIFECYCLE_RINGBUF_FULL),
            idle_stints_inferred: self.stat(stat::IDLE_START_UNSEEN),
            io: io::IO_STATS.iter().map(|&(i, name)| (name, self.stat(i))).collect(),
        }
    }

    /// Passes through every CPU ([`kick`]), then drains the CPU counters and the I/O of the
    /// interval: for tests and tools that need only the I/O (the session does these steps
    /// itself, keeping the CPU deltas).
    pub fn drain_io(&mut self) -> Option<crate::io::IoInterval> {
        let unvisited = kick::kick_cpus(&crate::procfs::online_cpu_ids());
        self.cpu.drain();
        let task_io = self.cpu.take_io();
        self.io.as_mut().map(|io| io.drain_flushed(unvisited, &task_io))
    }

    /// One `STATS` counter summed over CPUs (0 if unreadable).
    pub fn stat(&self, index: u32) -> u64 {
        self.stats.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// Kernel struct field offsets the scheduler and lifecycle programs read, from BTF: the value
/// of each global in [`globals::SCHED_OFFSETS`] and [`globals::LIFECYCLE_OFFSETS`], and of
/// [`globals::IOAC_OFFSETS`] where the kernel has them (else the `ioac` harvest stays off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructOffsets {
    pub values: Vec<(&'static str, u32)>,
    /// Why the `ioac` harvest is off, when it is.
    pub ioac_missing: Option<String>,
    /// CLOCK_MONOTONIC ns now: the value of [`globals::IOAC_SINCE_NS`].
    pub since_ns: u64,
}

impl StructOffsets {
    pub fn read(btf: &KernelBtf) -> anyhow::Result<Self> {
        let offset = |&(global, strukt, field): &(&'static str, &str, &str)| {
            let off = btf.member_offset(strukt, field).with_context(|| format!("the value of {global}"))?;
            Ok((global, off))
        };
        let mut values = globals::SCHED_OFFSETS
            .iter()
            .chain(globals::LIFECYCLE_OFFSETS)
            .map(offset)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ioac = globals::IOAC_OFFSETS.iter().map(offset).collect::<anyhow::Result<Vec<_>>>();
        let ioac_missing = match ioac {
            Ok(v) => {
                values.extend(v);
                None
            }
            Err(e) => Some(format!("{e:#}")),
        };
        Ok(StructOffsets { values, ioac_missing, since_ns: monotonic_ns() })
    }

    /// Writes the offsets into the programs' globals.
    pub fn set_globals<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        for (global, value) in &self.values {
            loader.override_global(global, value, true);
        }
        loader.override_global(globals::IOAC_SINCE_NS, &self.since_ns, true);
    }

    /// `GLOBAL=offset` pairs, for `doctor`.
    pub fn describe(&self) -> String {
        self.values.iter().map(|(g, v)| format!("{g}={v}")).collect::<Vec<_>>().join(" ")
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("the eBPF object has no program {name} (build mismatch)"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name} (build mismatch)"))
}

/// Loads and attaches the BTF tracepoint program `prog` to `tracepoint`.
pub fn attach_btf(ebpf: &mut Ebpf, prog: &str, tracepoint: &str, btf: &Btf) -> anyhow::Result<()> {
    let p: &mut BtfTracePoint = program(ebpf, prog)?.try_into()?;
    p.load(tracepoint, btf).with_context(|| format!("loading {prog} for tp_btf/{tracepoint}"))?;
    p.attach().with_context(|| format!("attaching tp_btf/{tracepoint}"))?;
    Ok(())
}

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns` and `task_struct.start_time`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Older kernels charge BPF maps to RLIMIT_MEMLOCK; raise it so the maps fit.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to a rlimit. Failure only matters on pre-5.11 kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Result of trying one hook, for `carbon-agent doctor`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HookProbe {
    /// e.g. `tp_btf/sched_switch`.
    pub hook: String,
    pub ok: bool,
    /// The error when it failed.
    pub error: Option<String>,
}

/// Loads the object and tries to attach each program on its own, then detaches everything.
/// `kernel_btf`: the running kernel's BTF, already parsed (`None` where it has none).
pub fn probe_hooks(kernel_btf: Option<&KernelBtf>) -> anyhow::Result<Vec<HookProbe>> {
    let btf = Btf::from_sys_fs().ok();
    let offsets = kernel_btf.and_then(|b| StructOffsets::read(b).ok());
    let mut loader = new_loader();
    loader.btf(btf.as_ref());
    if let Some(o) = &offsets {
        o.set_globals(&mut loader);
    }
    let (object, _) = kfunc::agent_object(kernel_btf);
    let mut ebpf = loader.load(object.bytes()).context("loading the eBPF object into the kernel")?;
    let mut out = Vec::new();
    let mut record = |hook: &str, r: anyhow::Result<()>| {
        out.push(HookProbe { hook: hook.into(), ok: r.is_ok(), error: r.err().map(|e| format!("{e:#}")) })
    };
    for (prog, tp) in [
        ("sched_switch_btf", "sched_switch"),
        ("sched_process_fork", "sched_process_fork"),
        ("sched_process_exec", "sched_process_exec"),
        ("sched_process_exit", "sched_process_exit"),
    ] {
        let r = match &btf {
            Some(btf) => attach_btf(&mut ebpf, prog, tp, btf),
            None => Err(anyhow!("no kernel BTF")),
        };
        record(&format!("tp_btf/{tp}"), r);
    }
    let classic = (|| -> anyhow::Result<()> {
        tracefs::ensure_mounted().map_err(|e| anyhow!(e))?;
        let prog: &mut TracePoint = program(&mut ebpf, "sched_switch_tp")?.try_into()?;
        prog.load()?;
        prog.attach("sched", "sched_switch")?;
        Ok(())
    })();
    record("tracepoint/sched/sched_switch", classic);
    Ok(out)
}
