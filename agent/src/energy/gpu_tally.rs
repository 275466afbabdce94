//! The run's GPU tally: what `scripts/gpu-check.sh` (and a reader of `run --json`) needs to
//! judge the GPU figures: metered energy per GPU, how each interval's shares were made, and
//! every meter warning of the run. Filled once per interval from [`IntervalEnergy`]; pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::accountant::IntervalEnergy;
use super::nvml::DroppedSamples;

/// Most distinct warnings kept (a warning repeated every interval counts once).
pub const MAX_WARNINGS: usize = 64;

/// One GPU over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRunTally {
    /// NVML index.
    pub index: u32,
    /// Joules metered on this GPU over the run (all of it, whoever used it).
    pub metered_j: f64,
    /// Whether any interval's energy is integrated power rather than the energy counter.
    pub integrated: bool,
    /// Intervals in which this GPU was read.
    pub intervals: u64,
    /// Intervals in which NVML listed at least one process on the GPU.
    pub intervals_with_processes: u64,
    /// Of those, how many used each share basis (`sm-utilization`, `memory`, `none`).
    pub basis: BTreeMap<String, u64>,
    /// Of the `sm-utilization` intervals, those that carried the previous interval's samples.
    pub carried: u64,
}

/// A meter warning and how often it came.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WarningCount {
    /// The warning.
    pub message: String,
    /// Intervals that had it.
    pub intervals: u64,
    /// The first of them (0-based).
    pub first_interval: u64,
}

/// The run document's `gpu` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuTally {
    /// Intervals of the run.
    pub intervals: u64,
    /// Each GPU metered, by `gpu<index>`.
    pub gpus: BTreeMap<String, GpuRunTally>,
    /// GPU joules given to processes (any process, not only the run's tree).
    pub to_processes_j: f64,
    /// GPU joules left in the idle and kernel buckets.
    pub to_buckets_j: f64,
    /// Every meter warning of the run (CPU meters included), first seen first.
    pub warnings: Vec<WarningCount>,
    /// Distinct warnings beyond [`MAX_WARNINGS`], not kept.
    pub warnings_dropped: u64,
    /// Utilization samples the cleaning dropped, by reason.
    pub samples_dropped: DroppedSamples,
}

impl GpuTally {
    /// Adds one interval.
    pub fn add(&mut self, e: &IntervalEnergy) {
        let n = self.intervals;
        self.intervals += 1;
        for g in &e.meter.gpus {
            let t = self
                .gpus
                .entry(format!("gpu{}", g.index))
                .or_insert_with(|| GpuRunTally { index: g.index, ..Default::default() });
            t.metered_j += g.energy_j;
            t.integrated |= g.integrated;
            t.intervals += 1;
            if g.processes > 0 {
                t.intervals_with_processes += 1;
                *t.basis.entry(g.shares.basis.to_owned()).or_insert(0) += 1;
                t.carried += u64::from(g.shares.carried);
            }
        }
        self.to_processes_j += e.per_tgid.values().map(|b| b.gpu).sum::<f64>();
        self.to_buckets_j += e.idle.gpu + e.kernel.gpu;
        for w in &e.meter.warnings {
            if let Some(c) = self.warnings.iter_mut().find(|c| &c.message == w) {
                c.intervals += 1;
            } else if self.warnings.len() < MAX_WARNINGS {
                self.warnings.push(WarningCount { message: w.clone(), intervals: 1, first_interval: n });
            } else {
                self.warnings_dropped += 1;
            }
        }
        self.samples_dropped.add(&e.meter.gpu_samples_dropped);
    }

    /// Joules metered on every GPU over the run.
    pub fn metered_j(&self) -> f64 {
        self.gpus.values().map(|g| g.metered_j).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::EnergyBreakdown;
    use crate::energy::meter_set::GpuInterval;
    use crate::energy::nvml::{BASIS_MEMORY, BASIS_NONE, BASIS_SM, GpuShares};

    fn interval(gpus: Vec<GpuInterval>, warnings: &[&str], to_pid: f64, idle: f64) -> IntervalEnergy {
        let mut e = IntervalEnergy::default();
        e.meter.gpus = gpus;
        e.meter.warnings = warnings.iter().map(|w| w.to_string()).collect();
        e.meter.gpu_samples_dropped.future = 1;
        e.per_tgid.insert(7, EnergyBreakdown { gpu: to_pid, ..Default::default() });
        e.idle.gpu = idle;
        e
    }

    fn gpu(index: u32, j: f64, basis: &'static str, processes: usize, carried: bool) -> GpuInterval {
        GpuInterval {
            index,
            energy_j: j,
            shares: GpuShares { by_pid: BTreeMap::new(), basis, carried },
            utilization: None,
            integrated: false,
            processes,
        }
    }

    #[test]
    fn tally_counts_energy_bases_and_distinct_warnings_and_round_trips() {
        let mut t = GpuTally::default();
        t.add(&interval(
            vec![gpu(0, 10.0, BASIS_NONE, 0, false), gpu(1, 5.0, BASIS_NONE, 0, false)],
            &[],
            0.0,
            15.0,
        ));
        t.add(&interval(
            vec![gpu(0, 100.0, BASIS_SM, 1, false), gpu(1, 5.0, BASIS_NONE, 0, false)],
            &["a"],
            90.0,
            15.0,
        ));
        t.add(&interval(vec![gpu(0, 100.0, BASIS_SM, 1, true)], &["a", "GPU 1 lost"], 95.0, 5.0));
        t.add(&interval(vec![gpu(0, 100.0, BASIS_MEMORY, 1, false)], &["a"], 95.0, 5.0));
        assert_eq!(t.intervals, 4);
        let g0 = &t.gpus["gpu0"];
        assert_eq!((g0.metered_j, g0.intervals, g0.intervals_with_processes, g0.carried), (310.0, 4, 3, 1));
        assert_eq!(g0.basis, BTreeMap::from([("sm-utilization".into(), 2), ("memory".into(), 1)]));
        assert_eq!(t.gpus["gpu1"].intervals, 2);
        assert_eq!(t.metered_j(), 320.0);
        assert_eq!((t.to_processes_j, t.to_buckets_j), (280.0, 40.0));
        assert_eq!(t.warnings.len(), 2);
        assert_eq!((t.warnings[0].intervals, t.warnings[0].first_interval), (3, 1));
        assert_eq!((t.warnings[1].message.as_str(), t.warnings[1].first_interval), ("GPU 1 lost", 2));
        assert_eq!(t.samples_dropped.future, 4);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["gpus"]["gpu0"]["basis"]["sm-utilization"], 2);
        let back: GpuTally = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn tally_through_the_accountant_with_a_fake_gpu() {
        use std::sync::Arc;

        use crate::energy::meter_set::Backends;
        use crate::energy::meter_set::tests::{cfg, fake_proc};
        use crate::energy::nvml::tests::{FakeGpu, opened};
        use crate::energy::nvml::{GpuProcess, ProcessSample};
        use crate::energy::perf_power::tests::ScriptedCounters;
        use crate::energy::{EnergyAccountant, FsReader};
        use crate::usage::{IntervalUsage, ProcessCpu};

        let tmp = tempfile::tempdir().unwrap();
        fake_proc(tmp.path());
        let mut c = cfg(tmp.path());
        c.gpu = true;
        let gpu = FakeGpu::counter(0, 7_000_000);
        gpu.state.lock().unwrap().compute =
            vec![GpuProcess { pid: 10, used_memory: Some(1 << 30), gpu_instance: None }];
        let g = gpu.clone();
        let backends = Backends {
            reader: Arc::new(FsReader),
            perf: Box::new(ScriptedCounters::default()),
            gpus: Box::new(move || Ok(opened(&[g]))),
        };
        let mut acc = EnergyAccountant::with_backends(c, backends).unwrap();
        // Start-up costs 30 J that the run must not count.
        gpu.state.lock().unwrap().energy_mj = Some(7_030_000);
        acc.start();
        let usage = IntervalUsage {
            interval_s: 1.0,
            ncpu: 2,
            processes: BTreeMap::from([(10, ProcessCpu { cpu_ns: 1_000_000, switches: 1 })]),
            ..Default::default()
        };
        let now =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
        let mut t = GpuTally::default();
        {
            let mut s = gpu.state.lock().unwrap();
            s.energy_mj = Some(7_080_000);
            s.samples = vec![ProcessSample { pid: 10, timestamp_us: now(), sm_util: 80, mem_util: 0 }];
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.add(&acc.interval(&usage));
        // No new sample: the previous one is carried.
        gpu.state.lock().unwrap().energy_mj = Some(7_130_000);
        t.add(&acc.interval(&usage));
        let g0 = &t.gpus["gpu0"];
        assert_eq!(g0.metered_j, 100.0);
        assert_eq!((g0.intervals_with_processes, g0.basis["sm-utilization"], g0.carried), (2, 2, 1));
        assert!((t.to_processes_j + t.to_buckets_j - 100.0).abs() < 1e-9, "{t:?}");
        assert!(t.to_processes_j > 0.0);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn warnings_beyond_the_cap_are_counted_not_kept() {
        let mut t = GpuTally::default();
        for i in 0..(MAX_WARNINGS + 3) {
            t.add(&interval(vec![], &[&format!("w{i}")], 0.0, 0.0));
        }
        assert_eq!((t.warnings.len(), t.warnings_dropped), (MAX_WARNINGS, 3));
    }
}
