//! The energy accountant: the one object the session loop calls once per interval.
//!
//! ```text
//! let mut energy = EnergyAccountant::new(args.energy.config())?;   // at start-up
//! for doctor: energy.probes()                                         // every meter tried
//! energy.start();                  // when the first interval starts (after loading probes)
//! each interval: let e = energy.interval(&usage);                     // meters → attribution
//!   e.per_tgid[&tgid]  → the row's `energy_j`
//!   e.kernel / e.idle  → `buckets.kernel.energy_j` / `buckets.idle.energy_j`
//!   e.meter            → the line's `meter`
//! ```

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::EnergyConfig;
use super::meter_set::GpuInterval;
use super::meter_set::{Agreement, Backends, MeterProbe, MeterSet, discover_with};
use super::nvml::{DroppedSamples, GpuInfo};
use super::{Domain, MeterSource};
use crate::attribution::{
    AttributionInput, DomainEnergy, EnergyBreakdown, GpuEnergy, LearnKey, StaticPowerLearner, StaticSource,
    attribute,
};
use crate::usage::IntervalUsage;

/// Joules metered in one interval per domain (the JSON `meter.energy_j`).
///
/// `total = cpu + dram + gpu + platform`; `core`, `uncore` (inside `cpu`) and `psys`
/// (which contains `cpu`, `dram` and `platform`) are shown when metered, never added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MeterEnergy {
    /// CPU packages.
    pub cpu: f64,
    /// Memory.
    pub dram: f64,
    /// Discrete GPUs.
    pub gpu: f64,
    /// psys outside packages and dram.
    pub platform: f64,
    /// Everything, each joule once.
    pub total: f64,
    /// RAPL cores (inside `cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<f64>,
    /// RAPL uncore / integrated GPU (inside `cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncore: Option<f64>,
    /// RAPL psys (contains `cpu`, `dram`, `platform`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psys: Option<f64>,
}

/// Static power of one domain and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StaticPower {
    /// Watts.
    pub watts: f64,
    /// `configured`, `model`, `learned` or `learned-provisional`.
    pub source: StaticSource,
}

/// What was metered in the interval (the JSON `meter` object of each interval line).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeterSummary {
    /// `rapl-perf`, `rapl-powercap`, `model`, with `+nvml` when GPUs are metered.
    pub source: String,
    /// Whether the figures are estimated (the model) rather than metered.
    pub estimated: bool,
    /// Joules per domain and in total.
    pub energy_j: MeterEnergy,
    /// Static power per domain (`cpu`, `dram`, `platform`, `gpu0`, …).
    pub static_power: BTreeMap<String, StaticPower>,
    /// How each GPU was shared among processes (`sm-utilization`, `memory`, `none`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_share_basis: BTreeMap<String, &'static str>,
    /// perf vs powercap package energy, when both are read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    /// Meter failures and fallbacks in this interval.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Each GPU in the interval (energy, share basis, processes), for the run's GPU tally.
    #[serde(skip)]
    pub gpus: Vec<GpuInterval>,
    /// GPU utilization samples the cleaning dropped.
    #[serde(skip)]
    pub gpu_samples_dropped: DroppedSamples,
}

/// One interval's energy: per process, kernel and idle buckets, and the meter.
///
/// Conservation: `Σ per_tgid.total + kernel.total + idle.total == meter.energy_j.total`
/// within 1e-9 relative.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IntervalEnergy {
    /// Per tgid: every process with CPU time (or a GPU share) in the interval.
    pub per_tgid: BTreeMap<u32, EnergyBreakdown>,
    /// Kernel threads.
    pub kernel: EnergyBreakdown,
    /// Idle: unattributed static energy, and energy when nothing ran.
    pub idle: EnergyBreakdown,
    /// What was metered.
    pub meter: MeterSummary,
}

/// Reads the meters and attributes their energy, once per interval.
pub struct EnergyAccountant {
    cfg: EnergyConfig,
    meters: MeterSet,
    probes: Vec<MeterProbe>,
    learner: StaticPowerLearner,
}

impl EnergyAccountant {
    /// Changes how static energy is shared and the configured static power, from the next
    /// interval on (a reload).
    pub fn set_static_attribution(
        &mut self,
        share: crate::attribution::StaticShare,
        idle: super::config::IdleWatts,
    ) {
        self.cfg.static_share = share;
        self.cfg.idle_watts = idle;
    }

    /// Discovers the meters (perf > powercap > model; NVML for GPUs) and opens them.
    pub fn new(cfg: EnergyConfig) -> anyhow::Result<Self> {
        Self::with_backends(cfg, Backends::default())
    }

    /// Like [`EnergyAccountant::new`] with injected backends (tests).
    pub fn with_backends(cfg: EnergyConfig, backends: Backends) -> anyhow::Result<Self> {
        let (set, probes) = discover_with(&cfg, backends);
        let meters = set.map_err(anyhow::Error::msg)?;
        let learner = StaticPowerLearner::new(cfg.low_utilization);
        Ok(Self { cfg, meters, probes, learner })
    }

    /// Every meter tried at start-up: found, selected, what or why not (for `doctor`).
    pub fn probes(&self) -> &[MeterProbe] {
        &self.probes
    }

    /// The CPU-side meter in use.
    pub fn cpu_source(&self) -> MeterSource {
        self.meters.cpu_source()
    }

    /// Starts the first interval now: every meter's baseline is taken again, so that what
    /// happened between opening the meters and this call (loading the probes) is not counted.
    pub fn start(&mut self) {
        self.meters.start_interval();
    }

    /// Whether GPUs are metered.
    pub fn has_gpu(&self) -> bool {
        self.meters.has_gpu()
    }

    /// The GPUs metered (for the `host.gpus` of `run --json`).
    pub fn gpus(&self) -> Vec<GpuInfo> {
        self.meters.gpus()
    }

    fn static_power(&self, key: LearnKey, configured: Option<f64>, model: Option<f64>) -> StaticPower {
        if let Some(w) = configured {
            return StaticPower { watts: w, source: StaticSource::Configured };
        }
        if let Some(w) = model {
            return StaticPower { watts: w, source: StaticSource::Model };
        }
        let (watts, source) = self.learner.static_w(key).unwrap_or((0.0, StaticSource::LearnedProvisional));
        StaticPower { watts, source }
    }

    /// Reads the meters for the interval `usage` describes and attributes the energy.
    pub fn interval(&mut self, usage: &IntervalUsage) -> IntervalEnergy {
        let reading = self.meters.read_interval(usage);
        let d = |dom: Domain| reading.domains.get(&dom).copied();
        let cpu = d(Domain::Package)
            .unwrap_or_else(|| d(Domain::Core).unwrap_or(0.0) + d(Domain::Uncore).unwrap_or(0.0));
        let dram = d(Domain::Dram).unwrap_or(0.0);
        let platform = d(Domain::Psys).map_or(0.0, |p| (p - cpu - dram).max(0.0));
        let dt = usage.interval_s;

        // Learn from this interval first: a low-utilization interval is its own best estimate.
        if dt > 0.0 {
            let util = usage.utilization();
            self.learner.observe(LearnKey::Cpu, cpu / dt, util);
            self.learner.observe(LearnKey::Dram, dram / dt, util);
            if d(Domain::Psys).is_some() {
                self.learner.observe(LearnKey::Platform, platform / dt, util);
            }
            for g in &reading.gpus {
                // NVML's GPU utilization, else how busy the processes kept it (shares sum ≤ 1).
                let util = g.utilization.unwrap_or_else(|| g.shares.by_pid.values().sum::<f64>().min(1.0));
                self.learner.observe(LearnKey::Gpu(g.index), g.energy_j / dt, util);
            }
        }
        let model = |dom: Domain| reading.meter_static_w.iter().find(|(x, _)| *x == dom).map(|(_, w)| *w);
        let idle = self.cfg.idle_watts;
        let mut static_power = BTreeMap::new();
        let cpu_static = self.static_power(LearnKey::Cpu, idle.cpu, model(Domain::Package));
        let dram_static = self.static_power(LearnKey::Dram, idle.dram, model(Domain::Dram));
        let platform_static = self.static_power(LearnKey::Platform, idle.platform, None);
        static_power.insert("cpu".to_owned(), cpu_static);
        static_power.insert("dram".to_owned(), dram_static);
        if d(Domain::Psys).is_some() {
            static_power.insert("platform".to_owned(), platform_static);
        }
        let mut gpus = Vec::new();
        let mut gpu_share_basis = BTreeMap::new();
        for g in &reading.gpus {
            let sp = self.static_power(LearnKey::Gpu(g.index), idle.gpu, None);
            static_power.insert(format!("gpu{}", g.index), sp);
            gpu_share_basis.insert(format!("gpu{}", g.index), g.shares.basis);
            gpus.push(GpuEnergy {
                energy: DomainEnergy { energy_j: g.energy_j, static_w: sp.watts },
                shares: g.shares.by_pid.clone(),
            });
        }
        let attribution = attribute(&AttributionInput {
            usage,
            interval_s: dt,
            cpu: DomainEnergy { energy_j: cpu, static_w: cpu_static.watts },
            dram: DomainEnergy { energy_j: dram, static_w: dram_static.watts },
            platform: DomainEnergy { energy_j: platform, static_w: platform_static.watts },
            gpus: &gpus,
            policy: self.cfg.static_share,
        });
        let gpu: f64 = reading.gpus.iter().map(|g| g.energy_j).sum();
        IntervalEnergy {
            per_tgid: attribution.per_tgid,
            kernel: attribution.kernel,
            idle: attribution.idle,
            meter: MeterSummary {
                source: reading.source,
                estimated: reading.estimated,
                energy_j: MeterEnergy {
                    cpu,
                    dram,
                    gpu,
                    platform,
                    total: attribution.metered_j,
                    core: d(Domain::Core),
                    uncore: d(Domain::Uncore),
                    psys: d(Domain::Psys),
                },
                static_power,
                gpu_share_basis,
                agreement: reading.agreement,
                warnings: reading.warnings,
                gpus: reading.gpus,
                gpu_samples_dropped: reading.gpu_samples_dropped,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::attribution::StaticShare;
    use crate::energy::FsReader;
    use crate::energy::meter_set::tests::{cfg, fake_proc};
    use crate::energy::nvml::ProcessSample;
    use crate::energy::nvml::tests::{FakeGpu, opened};
    use crate::energy::perf_power::tests::ScriptedCounters;
    use crate::energy::testing::write;
    use crate::usage::ProcessCpu;

    fn backends(gpus: Vec<FakeGpu>) -> Backends {
        Backends {
            reader: Arc::new(FsReader),
            perf: Box::new(ScriptedCounters::default()),
            gpus: Box::new(move || Ok(opened(&gpus))),
        }
    }

    fn usage(procs: &[(u32, u64)], kernel: u64, dt: f64) -> IntervalUsage {
        IntervalUsage {
            interval_s: dt,
            ncpu: 2,
            processes: procs.iter().map(|&(p, ns)| (p, ProcessCpu { cpu_ns: ns, switches: 1 })).collect(),
            kernel_cpu_ns: kernel,
            idle_cpu_ns: 0,
        }
    }

    fn conserved(e: &IntervalEnergy) {
        let sum = e.per_tgid.values().map(|b| b.total).sum::<f64>() + e.kernel.total + e.idle.total;
        let t = e.meter.energy_j.total;
        assert!((sum - t).abs() <= 1e-9 * t.max(1e-300), "{sum} vs {t}");
    }

    fn zone(root: &Path, id: &str, name: &str, uj: u64) {
        write(root, &format!("sys/class/powercap/{id}/name"), &format!("{name}\n"));
        write(root, &format!("sys/class/powercap/{id}/energy_uj"), &format!("{uj}\n"));
        write(root, &format!("sys/class/powercap/{id}/max_energy_range_uj"), "262143328850\n");
    }

    #[test]
    fn model_interval_splits_one_to_three_and_json_has_the_agreed_shape() {
        let tmp = tempfile::tempdir().unwrap();
        fake_proc(tmp.path());
        let mut c = cfg(tmp.path());
        c.model.cpu_idle_watts = Some(1.0);
        c.model.cpu_max_watts = Some(5.0);
        let mut acc = EnergyAccountant::with_backends(c, backends(vec![])).unwrap();
        // 0.25 + 0.75 CPU-seconds in 1 s on 2 CPUs.
        let e = acc.interval(&usage(&[(10, 250_000_000), (11, 750_000_000)], 0, 1.0));
        conserved(&e);
        // cpu: 2 × 1 W static + 4 W × 1 busy s = 6 J; dram 4 GiB × 0.392 W.
        assert_eq!(e.meter.energy_j.cpu, 6.0);
        assert!((e.meter.energy_j.dram - 1.568).abs() < 1e-12);
        assert_eq!(e.meter.static_power["cpu"].source, StaticSource::Model);
        let (a, b) = (e.per_tgid[&10], e.per_tgid[&11]);
        assert!((b.dynamic / a.dynamic - 3.0).abs() < 1e-12);
        assert!((a.cpu - 1.5).abs() < 1e-12 && (b.cpu - 4.5).abs() < 1e-12);
        let v = serde_json::to_value(&e.meter).unwrap();
        assert_eq!(v["source"], "model");
        assert_eq!(v["estimated"], true);
        for k in ["cpu", "dram", "gpu", "total"] {
            assert!(v["energy_j"][k].is_number(), "{k}");
        }
        assert!(v["energy_j"].get("psys").is_none());
        let row = serde_json::to_value(a).unwrap();
        assert!(row["static"].is_number() && row["total"].is_number());
    }

    #[test]
    fn powercap_psys_and_gpu_conserve_with_learned_static() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_proc(root);
        zone(root, "intel-rapl:0", "package-0", 0);
        zone(root, "intel-rapl:0:0", "core", 0);
        zone(root, "intel-rapl:0:1", "dram", 0);
        zone(root, "intel-rapl:1", "psys", 0);
        let gpu = FakeGpu::default();
        gpu.state.lock().unwrap().energy_mj = Some(0);
        let mut c = cfg(root);
        c.gpu = true;
        c.static_share = StaticShare::Proportional;
        let mut acc = EnergyAccountant::with_backends(c, backends(vec![gpu.clone()])).unwrap();
        assert_eq!(acc.cpu_source(), MeterSource::RaplPowercap);

        // Interval 1: idle machine, 10 W package, 2 W dram, 15 W psys, GPU 50 W.
        zone(root, "intel-rapl:0", "package-0", 10_000_000);
        zone(root, "intel-rapl:0:0", "core", 4_000_000);
        zone(root, "intel-rapl:0:1", "dram", 2_000_000);
        zone(root, "intel-rapl:1", "psys", 15_000_000);
        gpu.state.lock().unwrap().energy_mj = Some(50_000);
        let e = acc.interval(&usage(&[], 0, 1.0));
        conserved(&e);
        assert_eq!(e.meter.energy_j.platform, 3.0);
        assert_eq!(e.meter.energy_j.total, 10.0 + 2.0 + 3.0 + 50.0);
        assert_eq!(e.meter.energy_j.core, Some(4.0));
        assert_eq!(e.meter.static_power["cpu"], StaticPower { watts: 10.0, source: StaticSource::Learned });
        assert_eq!(e.idle.total, 65.0);

        // Interval 2: busy; package 30 W, GPU 150 W used by pid 10 only.
        zone(root, "intel-rapl:0", "package-0", 40_000_000);
        zone(root, "intel-rapl:0:1", "dram", 5_000_000);
        zone(root, "intel-rapl:1", "psys", 50_000_000);
        {
            let mut s = gpu.state.lock().unwrap();
            s.energy_mj = Some(200_000);
            s.utilization = Some(0.9);
            // A sample of now: GPU at 90 % SM utilization by pid 10.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
            s.samples =
                vec![ProcessSample { pid: 10, timestamp_us: now as u64 - 1, sm_util: 90, mem_util: 10 }];
        }
        let e = acc.interval(&usage(&[(10, 500_000_000), (11, 1_500_000_000)], 0, 1.0));
        conserved(&e);
        let (a, b) = (e.per_tgid[&10], e.per_tgid[&11]);
        assert_eq!(e.meter.source, "rapl-powercap+nvml");
        assert!(!e.meter.estimated);
        assert_eq!(e.meter.gpu_share_basis["gpu0"], "sm-utilization");
        assert!((a.gpu - 150.0).abs() < 1e-9 && b.gpu == 0.0);
        // cpu 30 J: static 10 J, dynamic 20 J, both 1:3 by CPU time.
        assert!((a.cpu - 7.5).abs() < 1e-9 && (b.cpu - 22.5).abs() < 1e-9);
        assert_eq!(e.idle.total, 0.0);
    }

    #[test]
    fn configured_idle_watts_win_and_none_policy_sends_static_to_idle() {
        let tmp = tempfile::tempdir().unwrap();
        fake_proc(tmp.path());
        let mut c = cfg(tmp.path());
        c.model.cpu_idle_watts = Some(1.0);
        c.model.cpu_max_watts = Some(5.0);
        c.idle_watts.cpu = Some(1.5);
        c.static_share = StaticShare::None;
        let mut acc = EnergyAccountant::with_backends(c, backends(vec![])).unwrap();
        let e = acc.interval(&usage(&[(10, 1_000_000_000)], 0, 1.0));
        conserved(&e);
        assert_eq!(e.meter.static_power["cpu"], StaticPower { watts: 1.5, source: StaticSource::Configured });
        assert_eq!(e.meter.static_power["dram"].source, StaticSource::Model);
        assert!((e.idle.cpu - 1.5).abs() < 1e-12);
        assert!((e.per_tgid[&10].cpu - 4.5).abs() < 1e-12);
        assert_eq!(e.per_tgid[&10].static_, 0.0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Through the whole pipeline: a powercap counter that wraps (100 J range), processes
        /// that appear and exit between intervals, intervals where nothing ran; every interval
        /// conserves and the meter reports exactly the counter's advance.
        #[test]
        fn pipeline_conserves_through_wraps_and_process_churn(
            steps in proptest::collection::vec(
                (0u64..50_000_000, proptest::collection::btree_map(1u32..8, 0u64..2_000_000_000, 0..5), 0u64..100_000_000),
                1..8),
            policy in proptest::prop_oneof![
                proptest::strategy::Just(StaticShare::Proportional),
                proptest::strategy::Just(StaticShare::Equal),
                proptest::strategy::Just(StaticShare::None)],
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            fake_proc(root);
            let dir = "sys/class/powercap/intel-rapl:0";
            write(root, &format!("{dir}/name"), "package-0\n");
            write(root, &format!("{dir}/max_energy_range_uj"), "100000000\n");
            write(root, &format!("{dir}/constraint_0_max_power_uw"), "50000000\n");
            let mut raw = 99_000_000u64;
            write(root, &format!("{dir}/energy_uj"), &format!("{raw}\n"));
            let mut c = cfg(root);
            c.static_share = policy;
            let mut acc = EnergyAccountant::with_backends(c, backends(vec![])).unwrap();
            for (inc, procs, kernel) in steps {
                raw = (raw + inc) % 100_000_000;
                write(root, &format!("{dir}/energy_uj"), &format!("{raw}\n"));
                let procs: Vec<(u32, u64)> = procs.into_iter().collect();
                let e = acc.interval(&usage(&procs, kernel, 1.0));
                proptest::prop_assert!((e.meter.energy_j.cpu - inc as f64 / 1e6).abs() < 1e-9);
                proptest::prop_assert!(e.meter.warnings.is_empty(), "{:?}", e.meter.warnings);
                conserved(&e);
                for (pid, _) in &procs {
                    proptest::prop_assert!(e.per_tgid.contains_key(pid));
                }
            }
        }
    }

    #[test]
    fn accountant_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<EnergyAccountant>();
        send::<IntervalEnergy>();
    }

    #[test]
    fn no_meter_at_all_is_an_error_naming_each_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let err =
            EnergyAccountant::with_backends(cfg(tmp.path()), backends(vec![])).err().unwrap().to_string();
        assert!(err.contains("rapl-perf") && err.contains("model") && err.contains("cpuinfo"), "{err}");
    }
}
