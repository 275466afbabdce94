//! The agent's main loop: one pass per interval from kernel counters to an [`IntervalReport`].
//!
//! Lifecycle events are read as they arrive (so the table knows every process, however short
//! its life); CPU counters are drained once per interval, after the events queued before them,
//! so that every tgid with CPU time is already known. Then the stages downstream of usage run
//! once per interval: energy (meters and attribution), carbon, I/O and waste tracking.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    carbon::{CarbonAccountant, ConsumerEnergy, Emissions, HostHardware, IntervalCarbon, shares_from_static},
    energy::{EnergyAccountant, IntervalEnergy},
    io::IoInterval,
    probes::{
        KernelLosses, LoadOptions, Probes,
        lifecycle::{self, Lifecycle},
    },
    process::{Pid, ProcessTable, TableLosses, Totals},
    procfs::{ProcFs, Users, online_cpus},
    settings::Settings,
    usage::IntervalUsage,
    waste::{self, WasteTracker},
};

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub interval: Duration,
    pub load: LoadOptions,
    /// Remove exited processes after a few intervals (their totals stay in their parents').
    /// Off for `run`, which reports every member of the tree.
    pub prune_exited: bool,
    /// Energy and carbon settings.
    pub settings: Settings,
}

/// One interval, ready for output.
#[derive(Clone, Debug)]
pub struct IntervalReport {
    /// Wall-clock time at the end of the interval.
    pub timestamp: SystemTime,
    pub usage: IntervalUsage,
    /// Energy per process, kernel and idle buckets, and what the meter said.
    pub energy: IntervalEnergy,
    /// Emissions per process (same keys as `energy.per_tgid`), and of the two buckets.
    pub emissions: BTreeMap<u32, Emissions>,
    pub kernel_emissions: Emissions,
    pub idle_emissions: Emissions,
    /// The intensity used for this interval.
    pub carbon: IntervalCarbon,
    /// I/O of the interval (empty when I/O accounting is off).
    pub io: IoInterval,
    pub kernel_losses: KernelLosses,
    pub table_losses: TableLosses,
}

pub struct Session {
    probes: Probes,
    /// The online CPUs, visited before every drain ([`crate::probes::kick`]).
    cpus: Vec<usize>,
    pub energy: EnergyAccountant,
    pub carbon: CarbonAccountant,
    /// What the embodied-emissions model was given (to rebuild the carbon accountant on reload).
    pub hardware: HostHardware,
    /// Wasted-I/O findings over the whole session.
    pub waste: WasteTracker,
    /// Followed roots (`run`): their findings are attributed to them, and their exited
    /// members are never pruned.
    pub follows: BTreeSet<Pid>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    pub table: ProcessTable,
    pub procfs: ProcFs,
    pub users: Users,
    pub ncpu: u32,
    opts: SessionOptions,
    last_tick: Instant,
    /// Lifecycle events decoded so far (for tests and diagnostics).
    pub events_seen: u64,
}

impl Session {
    /// Loads the probes, then takes the processes that already exist from `/proc`. Must be
    /// called inside a tokio runtime.
    pub fn start(opts: SessionOptions) -> anyhow::Result<Self> {
        // Settings that cannot work stop the agent before anything is loaded.
        let energy = EnergyAccountant::new(opts.settings.energy.clone())?;
        let procfs = ProcFs::default();
        let hardware = HostHardware {
            ram_bytes: procfs.mem_total_bytes().unwrap_or(0),
            sockets: crate::host::cpu_sockets(&procfs),
            gpus: energy.gpus().len() as u32,
        };
        let carbon = opts.settings.carbon.accountant(&hardware, crate::carbon::token_from_env())?;
        let mut probes = Probes::load(&opts.load)?;
        let ring = match probes.lifecycle.take() {
            // SAFETY: the ring buffer owns its fd, and the AsyncFd owns the ring buffer: the fd
            // stays open for as long as it is registered.
            Some(rb) => Some(
                unsafe { AsyncFd::register(rb) }
                    .map_err(|e| anyhow::anyhow!("registering the lifecycle ring buffer with tokio: {e}"))?,
            ),
            None => None,
        };
        let mut table = ProcessTable::new();
        // After attaching: a process forked in between is seen by both, which the table handles.
        table.seed(procfs.scan());
        let mut session = Session {
            probes,
            energy,
            carbon,
            hardware,
            waste: WasteTracker::new(waste::Thresholds::default(), waste::Coefficients::default(), 65536),
            follows: BTreeSet::new(),
            ring,
            table,
            procfs,
            users: Users::load(std::path::Path::new("/etc/passwd")),
            ncpu: online_cpus(),
            cpus: crate::procfs::online_cpu_ids(),
            opts,
            last_tick: Instant::now(),
            events_seen: 0,
        };
        // Start the first interval now: discard CPU time accumulated while loading.
        session.drain_events();
        session.probes.cpu.drain();
        let task_io = session.probes.cpu.take_io();
        if let Some(io) = session.probes.io.as_mut() {
            io.drain(&task_io);
        }
        session.energy.start();
        session.last_tick = Instant::now();
        Ok(session)
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn interval(&self) -> Duration {
        self.opts.interval
    }

    /// Changes the interval length: the current interval ends at its start plus the new length.
    pub fn set_interval(&mut self, interval: Duration) {
        self.opts.interval = interval;
    }

    /// Applies every queued lifecycle event to the table.
    pub fn drain_events(&mut self) {
        let Some(ring) = self.ring.as_mut() else { return };
        let rb = ring.get_mut();
        let mut decoded = Vec::new();
        while let Some(item) = rb.next() {
            if let Some(ev) = lifecycle::decode(&item) {
                decoded.push(ev);
            }
        }
        self.events_seen += decoded.len() as u64;
        for ev in decoded {
            self.apply(ev);
        }
        if let Some(logger) = self.probes.logger.as_mut() {
            logger.flush();
        }
    }

    fn apply(&mut self, ev: Lifecycle) {
        match ev {
            Lifecycle::Fork { tgid, parent_tgid, comm, uid, cgroup_id, ts_ns } => {
                self.table.fork(tgid, parent_tgid, &comm, uid, cgroup_id, ts_ns)
            }
            Lifecycle::Exec { tgid, comm, filename, uid } => {
                self.table.exec(tgid, &comm, &filename, uid, &self.procfs)
            }
            Lifecycle::Exit { tgid, code, ts_ns } => self.table.exit(tgid, code, ts_ns),
        }
    }

    /// Waits until the interval is over, applying lifecycle events as they arrive, then closes it.
    pub async fn next_interval(&mut self) -> IntervalReport {
        let deadline = tokio::time::Instant::from_std(self.last_tick + self.opts.interval);
        loop {
            let Some(ring) = self.ring.as_mut() else {
                tokio::time::sleep_until(deadline).await;
                break;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                guard = ring.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        guard.clear_ready();
                    }
                    self.drain_events();
                }
            }
        }
        self.close_interval()
    }

    /// Closes the current interval now: events first, then one pass over each kernel map, then
    /// the pipeline: usage → energy → carbon → per-process totals → waste tracking.
    pub fn close_interval(&mut self) -> IntervalReport {
        self.drain_events();
        // Every CPU switches once, so that time still running (idle, a thread that has not
        // switched) and pending I/O are charged now, to this interval.
        let unvisited_cpus = crate::probes::kick::kick_cpus(&self.cpus);
        let now = Instant::now();
        let timestamp = SystemTime::now();
        let interval_s = now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        let deltas = self.probes.cpu.drain();
        let task_io = self.probes.cpu.take_io();
        let io =
            self.probes.io.as_mut().map(|p| p.drain_flushed(unvisited_cpus, &task_io)).unwrap_or_default();
        let usage = self.table.apply_cpu(&deltas, interval_s, self.ncpu, &self.procfs);

        let energy = self.energy.interval(&usage);
        // Carbon: every process, then the kernel and idle buckets; embodied emissions follow
        // the static-energy shares.
        let mut consumers: Vec<ConsumerEnergy> = Vec::with_capacity(energy.per_tgid.len() + 2);
        let mut static_j: Vec<f64> = Vec::with_capacity(energy.per_tgid.len() + 2);
        for e in energy.per_tgid.values().chain([&energy.kernel, &energy.idle]) {
            consumers.push(ConsumerEnergy { it_energy_j: e.total, static_share: 0.0 });
            static_j.push(e.static_);
        }
        for (c, share) in consumers.iter_mut().zip(shares_from_static(&static_j)) {
            c.static_share = share;
        }
        let carbon = self.carbon.account(timestamp, interval_s, &consumers);
        let n = energy.per_tgid.len();
        let emissions: BTreeMap<u32, Emissions> =
            energy.per_tgid.keys().copied().zip(carbon.consumers.iter().copied()).collect();
        let (kernel_emissions, idle_emissions) = (carbon.consumers[n], carbon.consumers[n + 1]);

        // Per-process totals: energy and emissions, and I/O.
        let mut extra: BTreeMap<u32, Totals> = BTreeMap::new();
        for (&tgid, e) in &energy.per_tgid {
            let t = extra.entry(tgid).or_default();
            t.energy = *e;
            t.emissions = emissions[&tgid];
        }
        for (&tgid, pio) in &io.processes {
            extra.entry(tgid).or_default().io = *pio;
        }
        for (tgid, t) in &extra {
            if self.table.get(*tgid).is_some_and(|p| p.kind == crate::process::ProcessKind::Kernel) {
                // Kernel threads' energy is in the kernel bucket already.
                continue;
            }
            self.table.add_interval(*tgid, t, &self.procfs);
        }

        // cgroup paths for the roll-ups: read once per process, the first time it is active.
        let need: Vec<Pid> = usage
            .processes
            .keys()
            .copied()
            .filter(|pid| self.table.get(*pid).is_some_and(|p| p.cgroup.is_none() && p.is_alive()))
            .collect();
        for pid in need {
            if let Some(path) = self.procfs.cgroup_path(pid) {
                self.table.set_cgroup(pid, path);
            }
        }

        // Waste findings: the measured CPU time of I/O at this interval's CPU energy per
        // CPU-second, emissions at this interval's intensity and PUE.
        let process_cpu_s = usage.process_cpu_ns() as f64 / 1e9;
        let process_cpu_j: f64 = energy.per_tgid.values().map(|e| e.cpu).sum();
        let ctx = waste::IntervalEnergy {
            cpu_j_per_cpu_s: if process_cpu_s > 0.0 { process_cpu_j / process_cpu_s } else { 0.0 },
            g_per_kwh: carbon.intensity.g_per_kwh * self.carbon.pue().value,
        };
        let table = &self.table;
        let follows = &self.follows;
        self.waste.observe(&io, ctx, &|tgid| waste::ProcessInfo {
            root: crate::engine::snapshot::tree_root(table, follows, tgid),
            comm: table.get(tgid).map_or_else(|| "?".into(), |p| p.comm.clone()),
        });

        // Processes that exited before the previous interval have had their last CPU time
        // read: their map entries can go (once /proc confirms they are gone).
        let gone: Vec<_> = self
            .table
            .exited_before_last_interval()
            .into_iter()
            .filter(|&pid| !self.procfs.exists(pid))
            .collect();
        self.probes.cpu.forget(&gone);
        if self.opts.prune_exited {
            self.table.prune_exited_keeping(5, &self.follows);
        }
        IntervalReport {
            timestamp,
            usage,
            energy,
            emissions,
            kernel_emissions,
            idle_emissions,
            carbon,
            io,
            kernel_losses: self.probes.losses(),
            table_losses: self.table.losses.clone(),
        }
    }
}
