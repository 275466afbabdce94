//! The agent's main loop: one pass per interval from kernel counters to an [`IntervalReport`].
//!
//! Lifecycle events are read as they arrive (so the table knows every process, however short
//! its life); CPU counters are drained once per interval, after the events queued before them,
//! so that every tgid with CPU time is already known. The pipeline stages downstream of usage
//! (energy, carbon, I/O) plug in here, once per interval.

use std::time::{Duration, Instant, SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    probes::{
        KernelLosses, LoadOptions, Probes,
        lifecycle::{self, Lifecycle},
    },
    process::{ProcessTable, TableLosses},
    procfs::{ProcFs, Users, online_cpus},
    usage::IntervalUsage,
};

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub interval: Duration,
    pub load: LoadOptions,
    /// Remove exited processes after a few intervals (their totals stay in their parents').
    /// Off for `run`, which reports every member of the tree.
    pub prune_exited: bool,
}

/// One interval, ready for output.
#[derive(Clone, Debug)]
pub struct IntervalReport {
    /// Wall-clock time at the end of the interval.
    pub timestamp: SystemTime,
    pub usage: IntervalUsage,
    pub kernel_losses: KernelLosses,
    pub table_losses: TableLosses,
}

pub struct Session {
    probes: Probes,
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
        let procfs = ProcFs::default();
        let mut table = ProcessTable::new();
        // After attaching: a process forked in between is seen by both, which the table handles.
        table.seed(procfs.scan());
        let mut session = Session {
            probes,
            ring,
            table,
            procfs,
            users: Users::load(std::path::Path::new("/etc/passwd")),
            ncpu: online_cpus(),
            opts,
            last_tick: Instant::now(),
            events_seen: 0,
        };
        // Start the first interval now: discard CPU time accumulated while loading.
        session.drain_events();
        session.probes.cpu.drain();
        session.last_tick = Instant::now();
        Ok(session)
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn interval(&self) -> Duration {
        self.opts.interval
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

    /// Closes the current interval now: events first, then one pass over the CPU counters.
    pub fn close_interval(&mut self) -> IntervalReport {
        self.drain_events();
        let now = Instant::now();
        let interval_s = now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        let deltas = self.probes.cpu.drain();
        let usage = self.table.apply_cpu(&deltas, interval_s, self.ncpu, &self.procfs);
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
            self.table.prune_exited(5);
        }
        IntervalReport {
            timestamp: SystemTime::now(),
            usage,
            kernel_losses: self.probes.losses(),
            table_losses: self.table.losses.clone(),
        }
    }
}
