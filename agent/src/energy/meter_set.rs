//! Meter discovery and selection, `doctor`'s probe list, and per-interval readings.
//!
//! Selection (`--meter auto`): RAPL through the perf `power` PMU, else RAPL through
//! powercap, else the estimation model. NVML GPUs are added to whichever CPU meter is
//! selected. When perf is selected and powercap also works, powercap is read alongside
//! and each interval reports how much the two differ on package energy. The model is
//! kept as a fallback: if the selected meter fails mid-run, the set switches to the
//! model and says so in the interval's warnings.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::config::{EnergyConfig, MeterChoice};
use super::model::ModelMeter;
pub use super::nvml::GpuInterval;
use super::nvml::{DroppedSamples, NvmlMeter, OpenedGpus};
use super::perf_power::{PerfCounterSource, PerfPowerMeter, SyscallCounterSource};
use super::powercap::PowercapMeter;
use super::{Domain, EnergyMeter, FileReader, FsReader, MeterError, MeterSource, Resource, Tick};
use crate::usage::IntervalUsage;

/// One meter that discovery tried, for `carbon-agent doctor`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeterProbe {
    /// `rapl-perf`, `rapl-powercap`, `nvml` or `model`.
    pub meter: &'static str,
    /// Whether it works on this machine.
    pub found: bool,
    /// Whether the agent uses it.
    pub selected: bool,
    /// What it found, or why it was rejected.
    pub detail: String,
}

/// Opens the GPUs: NVML, or fakes in tests.
pub type GpuOpener = Box<dyn FnOnce() -> Result<OpenedGpus, String>>;

/// How the dependencies of discovery are provided (real ones by default; fakes in tests).
pub struct Backends {
    /// Reads sysfs and /proc.
    pub reader: Arc<dyn FileReader>,
    /// Opens perf counters.
    pub perf: Box<dyn PerfCounterSource>,
    /// Opens the GPUs (NVML).
    pub gpus: GpuOpener,
}

impl Default for Backends {
    fn default() -> Self {
        Self {
            reader: Arc::new(FsReader),
            perf: Box::new(SyscallCounterSource),
            gpus: Box::new(super::nvml::open_nvml),
        }
    }
}

/// How far the perf and powercap RAPL readings of package energy differ in one interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Agreement {
    /// The meter compared with the selected one.
    pub other: &'static str,
    /// Package joules from the selected meter.
    pub selected_j: f64,
    /// Package joules from the other meter.
    pub other_j: f64,
    /// |selected − other| / max(selected, other); 0 when both are 0.
    pub relative_difference: f64,
}

/// What the meters measured in one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalEnergyReading {
    /// `rapl-perf`, `rapl-powercap` or `model`, with `+nvml` when GPUs are metered.
    pub source: String,
    /// Whether any figure is estimated.
    pub estimated: bool,
    /// Joules per domain, summed over resources (containment not removed: `core` is
    /// also inside `package`).
    pub domains: BTreeMap<Domain, f64>,
    /// Joules per (resource, domain).
    pub per_resource: BTreeMap<(Resource, Domain), f64>,
    /// Each GPU.
    pub gpus: Vec<GpuInterval>,
    /// GPU utilization samples the cleaning dropped.
    pub gpu_samples_dropped: DroppedSamples,
    /// Static power per domain known to the meter (the model's idle figures).
    pub meter_static_w: Vec<(Domain, f64)>,
    /// perf vs powercap, when both are read.
    pub agreement: Option<Agreement>,
    /// Things that went wrong and what was done about them.
    pub warnings: Vec<String>,
}

struct Tracked {
    meter: Box<dyn EnergyMeter>,
    prev: BTreeMap<(Resource, Domain), f64>,
}

impl Tracked {
    fn new(meter: Box<dyn EnergyMeter>) -> Self {
        Self { meter, prev: BTreeMap::new() }
    }

    /// Joules per (resource, domain) since the previous read (cumulative figures start at 0).
    fn deltas(&mut self, tick: &Tick<'_>) -> Result<BTreeMap<(Resource, Domain), f64>, MeterError> {
        let mut out = BTreeMap::new();
        for m in self.meter.read(tick)? {
            if !m.joules.is_finite() {
                return Err(MeterError::Unavailable(format!(
                    "{}: non-finite reading for {} of {:?}",
                    self.meter.source(),
                    m.domain,
                    m.resource
                )));
            }
            let key = (m.resource, m.domain);
            let prev = self.prev.insert(key, m.joules).unwrap_or(0.0);
            *out.entry(key).or_insert(0.0) += (m.joules - prev).max(0.0);
        }
        Ok(out)
    }
}

/// The meters in use and their previous readings.
pub struct MeterSet {
    cpu: Tracked,
    check: Option<Tracked>,
    fallback: Option<Box<dyn EnergyMeter>>,
    gpu: Option<NvmlMeter>,
}

fn package_j(d: &BTreeMap<(Resource, Domain), f64>) -> f64 {
    d.iter().filter(|((_, dom), _)| *dom == Domain::Package).map(|(_, j)| j).sum()
}

impl MeterSet {
    /// The CPU-side meter in use.
    pub fn cpu_source(&self) -> MeterSource {
        self.cpu.meter.source()
    }

    /// Whether GPUs are metered.
    pub fn has_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// The GPUs metered.
    pub fn gpus(&self) -> Vec<super::nvml::GpuInfo> {
        self.gpu.as_ref().map(|g| g.gpus()).unwrap_or_default()
    }

    /// Takes every meter's baseline now: the first interval starts here, not when the meters
    /// were opened (loading the probes in between is not the first interval's energy).
    pub fn start_interval(&mut self) {
        let usage = IntervalUsage::default();
        let tick = Tick { interval_s: 0.0, usage: &usage };
        // CPU-side meters are cumulative: reading them once moves their previous value here.
        // A failure now shows up, and is handled, at the first interval's read.
        let _ = self.cpu.deltas(&tick);
        if let Some(check) = &mut self.check {
            let _ = check.deltas(&tick);
        }
        if let Some(g) = &mut self.gpu {
            g.start();
        }
    }

    /// Reads every meter: joules per domain since the previous read.
    pub fn read_interval(&mut self, usage: &IntervalUsage) -> IntervalEnergyReading {
        let tick = Tick { interval_s: usage.interval_s, usage };
        let mut warnings = Vec::new();
        let per_resource = match self.cpu.deltas(&tick) {
            Ok(d) => d,
            Err(e) => match self.fallback.take() {
                Some(model) => {
                    warnings.push(format!(
                        "{} failed ({e}); switched to the estimation model",
                        self.cpu.meter.source()
                    ));
                    self.cpu = Tracked::new(model);
                    self.check = None;
                    self.cpu.deltas(&tick).unwrap_or_else(|e| {
                        warnings.push(format!("model failed too: {e}"));
                        BTreeMap::new()
                    })
                }
                None => {
                    warnings
                        .push(format!("{} failed ({e}); no energy this interval", self.cpu.meter.source()));
                    BTreeMap::new()
                }
            },
        };
        let mut agreement = None;
        if let Some(check) = &mut self.check {
            match check.deltas(&tick) {
                Ok(other) => {
                    let (a, b) = (package_j(&per_resource), package_j(&other));
                    let max = a.max(b);
                    agreement = Some(Agreement {
                        other: check.meter.source().as_str(),
                        selected_j: a,
                        other_j: b,
                        relative_difference: if max > 0.0 { (a - b).abs() / max } else { 0.0 },
                    });
                }
                Err(e) => {
                    warnings.push(format!("cross-check with {} stopped: {e}", check.meter.source()));
                    self.check = None;
                }
            }
        }
        let mut domains: BTreeMap<Domain, f64> = BTreeMap::new();
        for ((_, d), j) in &per_resource {
            *domains.entry(*d).or_insert(0.0) += j;
        }
        let mut gpus = Vec::new();
        let mut gpu_samples_dropped = DroppedSamples::default();
        if let Some(g) = &mut self.gpu {
            let r = g.read();
            for gi in &r.gpus {
                *domains.entry(Domain::Gpu).or_insert(0.0) += gi.energy_j;
            }
            gpus = r.gpus;
            gpu_samples_dropped = r.dropped;
            warnings.extend(r.warnings);
        }
        let cpu_source = self.cpu.meter.source();
        let source = if self.gpu.is_some() { format!("{cpu_source}+nvml") } else { cpu_source.to_string() };
        IntervalEnergyReading {
            source,
            estimated: cpu_source.estimated(),
            domains,
            per_resource,
            gpus,
            gpu_samples_dropped,
            meter_static_w: self.cpu.meter.static_power_w(usage),
            agreement,
            warnings,
        }
    }
}

/// Discovers the meters with the real backends.
pub fn discover(cfg: &EnergyConfig) -> (Result<MeterSet, String>, Vec<MeterProbe>) {
    discover_with(cfg, Backends::default())
}

/// Discovers the meters: tries each, records a probe for each, selects per `cfg.meter`.
pub fn discover_with(cfg: &EnergyConfig, backends: Backends) -> (Result<MeterSet, String>, Vec<MeterProbe>) {
    let mut probes = Vec::new();
    let reader = backends.reader;
    let wants = |m: MeterChoice| cfg.meter == MeterChoice::Auto || cfg.meter == m;

    let perf: Option<Box<dyn EnergyMeter>> = if wants(MeterChoice::RaplPerf) {
        record(&mut probes, "rapl-perf", PerfPowerMeter::open(&cfg.sysfs_root, reader.clone(), backends.perf))
    } else {
        probes.push(not_tried("rapl-perf", cfg.meter));
        None
    };
    let powercap: Option<Box<dyn EnergyMeter>> = if wants(MeterChoice::RaplPowercap) || perf.is_some() {
        record(&mut probes, "rapl-powercap", PowercapMeter::open(&cfg.sysfs_root, reader.clone()))
    } else {
        probes.push(not_tried("rapl-powercap", cfg.meter));
        None
    };
    let model: Option<Box<dyn EnergyMeter>> =
        record(&mut probes, "model", ModelMeter::open(&cfg.proc_root, &*reader, &cfg.model));

    let (cpu, check, fallback) = match cfg.meter {
        MeterChoice::Auto => match (perf, powercap) {
            (Some(p), pc) => (Some(p), pc, model),
            (None, Some(pc)) => (Some(pc), None, model),
            (None, None) => (model, None, None),
        },
        MeterChoice::RaplPerf => {
            let check = if perf.is_some() { powercap } else { None };
            (perf, check, model)
        }
        MeterChoice::RaplPowercap => (powercap, None, model),
        MeterChoice::Model => (model, None, None),
    };
    let selected = cpu.as_ref().map(|m| m.source().as_str());
    for p in &mut probes {
        p.selected = Some(p.meter) == selected;
        if p.found && p.meter == "rapl-powercap" && check.is_some() {
            p.detail.push_str("; read alongside rapl-perf to check that both agree");
        }
    }

    let gpu = if cfg.gpu {
        match (backends.gpus)().and_then(NvmlMeter::new) {
            Ok(g) => {
                probes.push(MeterProbe { meter: "nvml", found: true, selected: true, detail: g.describe() });
                Some(g)
            }
            Err(reason) => {
                probes.push(MeterProbe { meter: "nvml", found: false, selected: false, detail: reason });
                None
            }
        }
    } else {
        probes.push(MeterProbe {
            meter: "nvml",
            found: false,
            selected: false,
            detail: "disabled (--no-gpu)".into(),
        });
        None
    };

    let set = match cpu {
        Some(cpu) => Ok(MeterSet { cpu: Tracked::new(cpu), check: check.map(Tracked::new), fallback, gpu }),
        None => {
            let why: Vec<String> =
                probes.iter().filter(|p| !p.found).map(|p| format!("{}: {}", p.meter, p.detail)).collect();
            Err(format!("no usable energy meter for --meter {}: {}", cfg.meter.as_str(), why.join("; ")))
        }
    };
    (set, probes)
}

fn record<M: EnergyMeter + 'static>(
    probes: &mut Vec<MeterProbe>,
    name: &'static str,
    result: Result<M, MeterError>,
) -> Option<Box<dyn EnergyMeter>> {
    match result {
        Ok(m) => {
            probes.push(MeterProbe { meter: name, found: true, selected: false, detail: m.describe() });
            Some(Box::new(m))
        }
        Err(e) => {
            probes.push(MeterProbe { meter: name, found: false, selected: false, detail: e.to_string() });
            None
        }
    }
}

fn not_tried(name: &'static str, choice: MeterChoice) -> MeterProbe {
    MeterProbe {
        meter: name,
        found: false,
        selected: false,
        detail: format!("not tried (--meter {})", choice.as_str()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::energy::nvml::tests::{FakeGpu, opened};
    use crate::energy::perf_power::tests::{ScriptedCounters, fake_pmu};
    use crate::energy::testing::write;

    pub fn fake_proc(root: &Path) {
        write(
            root,
            "proc/cpuinfo",
            "processor : 0\nmodel name : AMD EPYC\nprocessor : 1\nmodel name : AMD EPYC\n",
        );
        write(root, "proc/meminfo", "MemTotal: 4194304 kB\n");
    }

    pub fn cfg(root: &Path) -> EnergyConfig {
        EnergyConfig {
            sysfs_root: root.join("sys"),
            proc_root: root.join("proc"),
            gpu: false,
            ..EnergyConfig::default()
        }
    }

    fn backends(counters: ScriptedCounters, gpus: Vec<FakeGpu>) -> Backends {
        Backends {
            reader: Arc::new(FsReader),
            perf: Box::new(counters),
            gpus: Box::new(move || Ok(opened(&gpus))),
        }
    }

    fn powercap_zone(root: &Path, id: &str, name: &str, uj: u64) {
        write(root, &format!("sys/class/powercap/{id}/name"), &format!("{name}\n"));
        write(root, &format!("sys/class/powercap/{id}/energy_uj"), &format!("{uj}\n"));
        write(root, &format!("sys/class/powercap/{id}/max_energy_range_uj"), "262143328850\n");
    }

    fn usage(dt: f64) -> IntervalUsage {
        IntervalUsage { interval_s: dt, ncpu: 2, ..Default::default() }
    }

    #[test]
    fn model_only_machine_selects_model_and_says_why() {
        let tmp = tempfile::tempdir().unwrap();
        fake_proc(tmp.path());
        let (set, probes) = discover_with(&cfg(tmp.path()), backends(ScriptedCounters::default(), vec![]));
        let mut set = set.unwrap();
        assert_eq!(set.cpu_source(), MeterSource::Model);
        let names: Vec<(&str, bool, bool)> = probes.iter().map(|p| (p.meter, p.found, p.selected)).collect();
        assert_eq!(
            names,
            [
                ("rapl-perf", false, false),
                ("rapl-powercap", false, false),
                ("model", true, true),
                ("nvml", false, false)
            ]
        );
        assert!(probes[0].detail.contains("no perf power PMU"), "{}", probes[0].detail);
        assert!(probes[1].detail.contains("no powercap"), "{}", probes[1].detail);
        let r = set.read_interval(&usage(1.0));
        assert_eq!(r.source, "model");
        assert!(r.estimated);
        assert!(r.domains[&Domain::Package] > 0.0);
        assert_eq!(r.domains[&Domain::Dram], 4.0 * 0.392);
    }

    #[test]
    fn perf_preferred_with_powercap_agreement_and_gpu() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_proc(root);
        fake_pmu(&root.join("sys"), "0");
        powercap_zone(root, "intel-rapl:0", "package-0", 0);
        let counters = ScriptedCounters::default();
        let gpu = FakeGpu::default();
        gpu.state.lock().unwrap().energy_mj = Some(0);
        let mut c = cfg(root);
        c.gpu = true;
        let (set, probes) = discover_with(&c, backends(counters.clone(), vec![gpu.clone()]));
        let mut set = set.unwrap();
        assert_eq!(set.cpu_source(), MeterSource::RaplPerf);
        assert!(probes.iter().any(|p| p.meter == "rapl-powercap" && p.found && !p.selected));
        assert!(probes.iter().any(|p| p.meter == "nvml" && p.selected));
        counters.set(2, 0, 10 << 32); // 10 J package via perf
        powercap_zone(root, "intel-rapl:0", "package-0", 9_500_000); // 9.5 J via powercap
        gpu.state.lock().unwrap().energy_mj = Some(30_000);
        let r = set.read_interval(&usage(1.0));
        assert_eq!(r.source, "rapl-perf+nvml");
        assert!(!r.estimated);
        assert_eq!(r.domains[&Domain::Package], 10.0);
        assert_eq!(r.domains[&Domain::Gpu], 30.0);
        let a = r.agreement.unwrap();
        assert_eq!((a.other, a.selected_j, a.other_j), ("rapl-powercap", 10.0, 9.5));
        assert!((a.relative_difference - 0.05).abs() < 1e-12);
        // Per-interval, not cumulative.
        counters.set(2, 0, 12 << 32);
        let r = set.read_interval(&usage(1.0));
        assert_eq!(r.domains[&Domain::Package], 2.0);
    }

    #[test]
    fn start_interval_takes_every_baseline_again() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_proc(root);
        powercap_zone(root, "intel-rapl:0", "package-0", 0);
        let gpu = FakeGpu::counter(0, 0);
        let mut c = cfg(root);
        c.gpu = true;
        let (set, _) = discover_with(&c, backends(ScriptedCounters::default(), vec![gpu.clone()]));
        let mut set = set.unwrap();
        // Loading the probes: 5 J of package and 50 J of GPU before the first interval.
        powercap_zone(root, "intel-rapl:0", "package-0", 5_000_000);
        gpu.state.lock().unwrap().energy_mj = Some(50_000);
        set.start_interval();
        powercap_zone(root, "intel-rapl:0", "package-0", 7_000_000);
        gpu.state.lock().unwrap().energy_mj = Some(60_000);
        let r = set.read_interval(&usage(1.0));
        assert_eq!(r.domains[&Domain::Package], 2.0);
        assert_eq!(r.domains[&Domain::Gpu], 10.0);
        assert_eq!(r.gpus[0].energy_j, 10.0);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn failing_meter_falls_back_to_model() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_proc(root);
        powercap_zone(root, "intel-rapl:0", "package-0", 0);
        let (set, _) = discover_with(&cfg(root), backends(ScriptedCounters::default(), vec![]));
        let mut set = set.unwrap();
        assert_eq!(set.cpu_source(), MeterSource::RaplPowercap);
        std::fs::remove_file(root.join("sys/class/powercap/intel-rapl:0/energy_uj")).unwrap();
        let r = set.read_interval(&usage(1.0));
        assert_eq!(r.source, "model");
        assert!(
            r.warnings[0].contains("rapl-powercap failed") && r.warnings[0].contains("energy_uj"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn forced_meter_that_is_missing_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        fake_proc(tmp.path());
        let mut c = cfg(tmp.path());
        c.meter = MeterChoice::RaplPowercap;
        let (set, probes) = discover_with(&c, backends(ScriptedCounters::default(), vec![]));
        let err = set.err().unwrap();
        assert!(err.contains("--meter rapl-powercap") && err.contains("no powercap"), "{err}");
        assert!(probes[0].detail.contains("not tried"));
    }
}
