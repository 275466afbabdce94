//! Draining the per-tgid on-CPU counters once per interval, and the `ioac` growth the
//! scheduler program harvests into the same entries.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{MapData, PerCpuHashMap};
use carbon_agent_common::{TaskIo, TgidCpu};

use crate::{process::Pid, usage::ProcessCpu};

/// Cumulative counters as last read, per tgid: the interval's delta is `now - last`.
#[derive(Debug, Default)]
pub struct CounterDeltas {
    last: HashMap<Pid, ProcessCpu>,
}

impl CounterDeltas {
    /// Turns cumulative readings into deltas since the previous call. A key whose counter went
    /// down was deleted and re-created (pid reuse): its whole value is new.
    pub fn update(&mut self, cumulative: &BTreeMap<Pid, ProcessCpu>) -> BTreeMap<Pid, ProcessCpu> {
        let mut out = BTreeMap::new();
        for (&tgid, now) in cumulative {
            let before = self.last.insert(tgid, *now).unwrap_or_default();
            let delta = if now.cpu_ns >= before.cpu_ns {
                ProcessCpu {
                    cpu_ns: now.cpu_ns - before.cpu_ns,
                    switches: now.switches.saturating_sub(before.switches),
                }
            } else {
                *now
            };
            if delta.cpu_ns > 0 {
                out.insert(tgid, delta);
            }
        }
        out
    }

    /// Forgets a tgid whose map entry was deleted.
    pub fn forget(&mut self, tgid: Pid) {
        self.last.remove(&tgid);
    }
}

/// Cumulative `ioac` growth as last read, per tgid.
#[derive(Debug, Default)]
pub struct IoDeltas {
    last: HashMap<Pid, TaskIo>,
}

impl IoDeltas {
    /// Turns cumulative readings into growth since the previous call; a counter that went
    /// down belongs to a re-created entry (pid reuse): its whole value is new.
    pub fn update(&mut self, cumulative: &BTreeMap<Pid, TaskIo>) -> BTreeMap<Pid, TaskIo> {
        let mut out = BTreeMap::new();
        for (&tgid, now) in cumulative {
            let before = self.last.insert(tgid, *now).unwrap_or_default();
            let recreated = now.rchar < before.rchar || now.wchar < before.wchar || now.syscr < before.syscr;
            let delta = if recreated { *now } else { now.since(&before) };
            if delta.any() {
                out.insert(tgid, delta);
            }
        }
        out
    }

    pub fn forget(&mut self, tgid: Pid) {
        self.last.remove(&tgid);
    }
}

/// The `TGID_CPU` map and the deltas computed from it.
pub struct CpuCounters {
    map: PerCpuHashMap<MapData, u32, TgidCpu>,
    deltas: CounterDeltas,
    io_deltas: IoDeltas,
    /// The `ioac` growth per tgid of the last [`drain`](Self::drain), until taken.
    io: BTreeMap<Pid, TaskIo>,
}

impl CpuCounters {
    pub fn new(map: PerCpuHashMap<MapData, u32, TgidCpu>) -> Self {
        CpuCounters {
            map,
            deltas: CounterDeltas::default(),
            io_deltas: IoDeltas::default(),
            io: BTreeMap::new(),
        }
    }

    /// Reads every tgid's counters (one pass over the map) and returns the CPU deltas since
    /// the previous drain; the `ioac` growth of the same pass waits in [`take_io`](Self::take_io).
    pub fn drain(&mut self) -> BTreeMap<Pid, ProcessCpu> {
        let mut cumulative = BTreeMap::new();
        let mut io = BTreeMap::new();
        for item in self.map.iter() {
            // An entry deleted during the walk ends that item with an error: skip it.
            let Ok((tgid, per_cpu)) = item else { continue };
            let mut sum = ProcessCpu::default();
            let mut io_sum = TaskIo::default();
            for v in per_cpu.iter() {
                sum.cpu_ns += v.on_cpu_ns;
                sum.switches += v.switches;
                io_sum.add(&v.io);
            }
            cumulative.insert(tgid, sum);
            io.insert(tgid, io_sum);
        }
        let grown = self.io_deltas.update(&io);
        for (tgid, g) in grown {
            self.io.entry(tgid).or_default().add(&g);
        }
        self.deltas.update(&cumulative)
    }

    /// The `ioac` growth per tgid (the kernel's own I/O accounting, `/proc/<pid>/io`) of the
    /// drains since the previous call.
    pub fn take_io(&mut self) -> BTreeMap<Pid, TaskIo> {
        std::mem::take(&mut self.io)
    }

    /// Deletes the entries of processes that are gone, after their final drain.
    pub fn forget(&mut self, tgids: &[Pid]) {
        for &tgid in tgids {
            let _ = self.map.remove(&tgid);
            self.deltas.forget(tgid);
            self.io_deltas.forget(tgid);
        }
    }

    /// Entries in the map now (bounded by its max_entries).
    pub fn len(&self) -> usize {
        self.map.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_growth_between_readings() {
        let io = |r: u64, w: u64| TaskIo { rchar: r, wchar: w, syscr: r / 10, ..TaskIo::default() };
        let mut d = IoDeltas::default();
        let m = |v: &[(Pid, TaskIo)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(d.update(&m(&[(1, io(100, 10))])), m(&[(1, io(100, 10))]));
        assert_eq!(
            d.update(&m(&[(1, io(150, 10))])),
            m(&[(1, TaskIo { rchar: 50, syscr: 5, ..TaskIo::default() })])
        );
        assert_eq!(d.update(&m(&[(1, io(150, 10))])), m(&[]));
        // Re-created (pid reuse): all new.
        assert_eq!(d.update(&m(&[(1, io(20, 0))])), m(&[(1, io(20, 0))]));
    }

    fn m(v: &[(Pid, u64)]) -> BTreeMap<Pid, ProcessCpu> {
        v.iter().map(|&(p, c)| (p, ProcessCpu { cpu_ns: c, switches: c / 10 })).collect()
    }

    #[test]
    fn deltas_between_readings() {
        let mut d = CounterDeltas::default();
        assert_eq!(d.update(&m(&[(1, 100), (2, 50)])), m(&[(1, 100), (2, 50)]));
        assert_eq!(d.update(&m(&[(1, 150), (2, 50)])), m(&[(1, 50)]));
        // Recreated entry with a smaller value: all new.
        assert_eq!(d.update(&m(&[(1, 20)])), m(&[(1, 20)]));
        d.forget(1);
        assert_eq!(d.update(&m(&[(1, 30)])), m(&[(1, 30)]));
    }
}
