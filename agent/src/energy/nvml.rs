//! NVIDIA GPUs through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1` at run time).
//!
//! * **Energy**, read first and on its own for each GPU: the total-energy counter
//!   (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver was loaded, Volta and
//!   newer) where the GPU has one; otherwise the power reading (`nvmlDeviceGetPowerUsage`,
//!   mW) integrated with the trapezoid rule, each GPU timed on its own monotonic clock.
//!   The baseline is taken again by [`NvmlMeter::start`], when the first interval starts.
//!   A counter lower than the previous raw value (GPU reset, driver reload) restarted from 0
//!   since the previous read: the interval counts the new raw value, which becomes the
//!   baseline, and says so. A failed energy read leaves the baseline
//!   where it was: the energy lands in the next successful read.
//! * **Shares**, in order of preference, falling back with a warning in the interval (a
//!   permanent failure, `NotSupported` or a missing symbol, is said once per GPU):
//!   1. `sm-utilization`: per-process samples (`nvmlDeviceGetProcessUtilization`) since
//!      the newest one seen, cleaned (pid 0, SM above 100 %, timestamps at or before the
//!      window start or in the future are dropped and counted); a process's share is its
//!      mean SM utilization (0..1), so shares sum to at most 1 and the unutilized rest of
//!      the GPU's dynamic energy goes with its static energy ([`crate::attribution`]).
//!      When the driver's sample period is longer than the interval, an interval without a
//!      new sample carries the previous one for processes still on the GPU.
//!   2. `memory`: used memory per process (the larger of the compute and graphics lists
//!      for one pid, not their sum), scaled by the device's utilization when NVML gives it.
//!   3. `processes`: processes hold the GPU but report no memory figure: equal parts,
//!      scaled by the device's utilization when known.
//!   4. `none`: no process on the GPU; its energy goes to the idle bucket.
//! * **Faults**: a lost GPU (`GpuLost`) is dropped and said; the others keep working. A GPU
//!   that cannot be opened at start-up is skipped and said in the first interval.
//! * **MIG**: energy is only metered per physical GPU; per-process samples are not
//!   supported there, so shares fall back to memory. **MPS**: when the MPS server holds the
//!   GPU, its clients may not be listed; the interval says so once per GPU.
//! * **Accounting mode** (`nvmlDeviceGetAccountingStats`) is reported by `doctor` but not used
//!   for shares: it gives one utilization figure over a process's whole life, not per
//!   interval, and enabling it changes the GPU's settings (root, `nvidia-smi -am 1`), which
//!   an agent must not do behind the operator's back.
//!
//! Everything device-specific is behind [`GpuDevice`]; tests use [`tests::FakeGpu`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

/// Share basis names as they appear in JSON (`meter.gpu_share_basis`).
pub const BASIS_SM: &str = "sm-utilization";
/// Shares by used GPU memory.
pub const BASIS_MEMORY: &str = "memory";
/// Processes hold the GPU but report no memory figure: equal parts.
pub const BASIS_PROCESSES: &str = "processes";
/// No process on the GPU.
pub const BASIS_NONE: &str = "none";

/// How long an interval without a new utilization sample carries the previous one (the
/// driver's sample period can be longer than the agent's interval).
pub const CARRY_MAX_US: u64 = 5_000_000;

/// How many times a sample read is retried when samples arrive between nvml-wrapper's
/// count call and its data call (`InsufficientSize`).
const SAMPLE_RETRIES: usize = 3;

/// What identifies a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// UUID (`GPU-…`).
    pub uuid: String,
}

/// One per-process utilization sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    /// Process id (host namespace: the tgid).
    pub pid: u32,
    /// CPU wall-clock timestamp of the sample, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// SM utilization, percent.
    pub sm_util: u32,
    /// Frame-buffer memory utilization, percent.
    pub mem_util: u32,
}

/// A process holding a GPU context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuProcess {
    /// Process id (tgid).
    pub pid: u32,
    /// Used GPU memory in bytes, when NVML knows it.
    pub used_memory: Option<u64>,
    /// MIG GPU instance, when MIG is enabled.
    pub gpu_instance: Option<u32>,
}

/// An NVML failure, classified by what the meter does about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The GPU does not support the query (MIG, vGPU, an older GPU).
    #[error("not supported on this GPU (MIG, vGPU or an older GPU)")]
    NotSupported,
    /// The buffer was sized before more entries arrived.
    #[error("buffer too small: entries arrived between the count and the data call")]
    InsufficientSize,
    /// The GPU fell off the bus.
    #[error("GPU lost (fell off the bus or otherwise inaccessible)")]
    GpuLost,
    /// The caller may not make the query.
    #[error("permission denied")]
    NoPermission,
    /// The driver's libnvidia-ml lacks the function (an older driver).
    #[error("libnvidia-ml lacks {0} (driver older than the query)")]
    MissingSymbol(String),
    /// Anything else NVML said.
    #[error("{0}")]
    Other(String),
}

impl GpuError {
    /// Whether asking again cannot help (a property of the GPU or the driver).
    pub fn is_permanent(&self) -> bool {
        matches!(self, GpuError::NotSupported | GpuError::MissingSymbol(_))
    }
}

impl From<NvmlError> for GpuError {
    fn from(e: NvmlError) -> Self {
        match e {
            NvmlError::NotSupported => GpuError::NotSupported,
            NvmlError::InsufficientSize(_) => GpuError::InsufficientSize,
            NvmlError::GpuLost => GpuError::GpuLost,
            NvmlError::NoPermission => GpuError::NoPermission,
            NvmlError::FailedToLoadSymbol(s) => GpuError::MissingSymbol(s),
            other => GpuError::Other(other.to_string()),
        }
    }
}

/// MIG mode of a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigState {
    /// Enabled now.
    pub current: bool,
    /// Enabled after the next GPU reset.
    pub pending: bool,
}

/// One GPU as the meter needs it.
pub trait GpuDevice: Send {
    /// Index, name, UUID.
    fn info(&self) -> GpuInfo;
    /// Total energy since driver load in mJ; `Ok(None)` when the GPU has no such counter.
    fn total_energy_mj(&mut self) -> Result<Option<u64>, GpuError>;
    /// Current power draw in mW.
    fn power_mw(&mut self) -> Result<u32, GpuError>;
    /// Utilization samples newer than `since_us` (empty when there is none).
    fn process_samples(&mut self, since_us: u64) -> Result<Vec<ProcessSample>, GpuError>;
    /// Processes with a compute context (all MIG instances).
    fn compute_processes(&mut self) -> Result<Vec<GpuProcess>, GpuError>;
    /// Processes with a graphics context.
    fn graphics_processes(&mut self) -> Result<Vec<GpuProcess>, GpuError>;
    /// GPU utilization over the driver's last sample period, 0..1; `None` if unsupported.
    fn utilization(&mut self) -> Result<Option<f64>, GpuError>;
    /// The process's name as NVML knows it.
    fn process_name(&mut self, pid: u32) -> Option<String>;
    /// Persistence mode (for `doctor`).
    fn persistence_mode(&mut self) -> Result<bool, GpuError>;
    /// MIG mode (for `doctor`).
    fn mig_mode(&mut self) -> Result<MigState, GpuError>;
    /// Accounting mode (for `doctor`).
    fn accounting_mode(&mut self) -> Result<bool, GpuError>;
}

/// A real GPU through NVML.
pub struct NvmlDevice {
    nvml: Arc<Nvml>,
    info: GpuInfo,
}

impl NvmlDevice {
    fn device(&self) -> Result<nvml_wrapper::Device<'_>, GpuError> {
        Ok(self.nvml.device_by_index(self.info.index)?)
    }

    fn list(
        list: Result<Vec<nvml_wrapper::struct_wrappers::device::ProcessInfo>, NvmlError>,
    ) -> Result<Vec<GpuProcess>, GpuError> {
        Ok(list?
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
                gpu_instance: p.gpu_instance_id,
            })
            .collect())
    }
}

impl GpuDevice for NvmlDevice {
    fn info(&self) -> GpuInfo {
        self.info.clone()
    }

    fn total_energy_mj(&mut self) -> Result<Option<u64>, GpuError> {
        match self.device()?.total_energy_consumption() {
            Ok(mj) => Ok(Some(mj)),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn power_mw(&mut self) -> Result<u32, GpuError> {
        Ok(self.device()?.power_usage()?)
    }

    fn process_samples(&mut self, since_us: u64) -> Result<Vec<ProcessSample>, GpuError> {
        let device = self.device()?;
        let mut tries = 0;
        loop {
            match device.process_utilization_stats(since_us) {
                Ok(v) => {
                    return Ok(v
                        .into_iter()
                        .map(|s| ProcessSample {
                            pid: s.pid,
                            timestamp_us: s.timestamp,
                            sm_util: s.sm_util,
                            mem_util: s.mem_util,
                        })
                        .collect());
                }
                // No sample newer than the timestamp.
                Err(NvmlError::NotFound) => return Ok(Vec::new()),
                // nvml-wrapper sizes the buffer with one call and fills it with another.
                Err(NvmlError::InsufficientSize(_)) if tries + 1 < SAMPLE_RETRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn compute_processes(&mut self) -> Result<Vec<GpuProcess>, GpuError> {
        Self::list(self.device()?.running_compute_processes())
    }

    fn graphics_processes(&mut self) -> Result<Vec<GpuProcess>, GpuError> {
        Self::list(self.device()?.running_graphics_processes())
    }

    fn utilization(&mut self) -> Result<Option<f64>, GpuError> {
        match self.device()?.utilization_rates() {
            Ok(u) => Ok(Some(f64::from(u.gpu.min(100)) / 100.0)),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn process_name(&mut self, pid: u32) -> Option<String> {
        self.nvml.sys_process_name(pid, 64).ok()
    }

    fn persistence_mode(&mut self) -> Result<bool, GpuError> {
        Ok(self.device()?.is_in_persistent_mode()?)
    }

    fn mig_mode(&mut self) -> Result<MigState, GpuError> {
        let m = self.device()?.mig_mode()?;
        Ok(MigState { current: m.current == 1, pending: m.pending == 1 })
    }

    fn accounting_mode(&mut self) -> Result<bool, GpuError> {
        Ok(self.device()?.is_accounting_enabled()?)
    }
}

/// Why NVML could not be initialized, as `doctor` and the probe list say it.
pub fn init_error_reason(e: &NvmlError) -> String {
    match e {
        NvmlError::LibraryNotFound | NvmlError::LibloadingError(_) => {
            "libnvidia-ml.so.1 not found: no NVIDIA driver installed".to_owned()
        }
        NvmlError::DriverNotLoaded => "NVIDIA driver not loaded (libnvidia-ml.so.1 is present)".to_owned(),
        NvmlError::LibRmVersionMismatch => "NVIDIA driver/library version mismatch: the loaded kernel module \
                                            and libnvidia-ml.so.1 come from different driver versions (the \
                                            driver was upgraded without reloading it): reload the driver \
                                            (rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia; modprobe nvidia) \
                                            or reboot"
            .to_owned(),
        NvmlError::NoPermission => "NVML init: permission denied on /dev/nvidia*".to_owned(),
        other => format!("NVML init failed: {other}"),
    }
}

/// What `doctor` suggests when NVML is not usable, given the reason [`open_nvml`] gave.
pub fn fix_for(reason: &str) -> &'static str {
    if reason.contains("version mismatch") {
        "the driver was upgraded but the old kernel module is still loaded: reload the driver or reboot \
         (installing it again does not help)"
    } else if reason.contains("not loaded") {
        "load the NVIDIA kernel module (modprobe nvidia) or reboot"
    } else if reason.contains("not found") {
        "no NVIDIA GPU energy: install the NVIDIA driver (libnvidia-ml.so.1) on GPU machines"
    } else {
        "no NVIDIA GPU energy: check nvidia-smi"
    }
}

/// `doctor`'s per-GPU checks on this machine; the error is why NVML is not usable.
pub fn doctor_report() -> Result<Vec<GpuCheck>, String> {
    let mut opened = open_nvml()?;
    Ok(doctor_checks(&mut opened.devices, SystemClock::default().wall_us()))
}

/// The GPUs opened at start-up, and those that could not be opened (with the reason).
pub struct OpenedGpus {
    /// GPUs to meter.
    pub devices: Vec<Box<dyn GpuDevice>>,
    /// One line per GPU that could not be opened.
    pub skipped: Vec<String>,
}

/// Loads NVML and opens every GPU; one that cannot be opened is skipped and said. The error
/// (no driver, no GPU, a driver/library mismatch) is a reason for `doctor`.
pub fn open_nvml() -> Result<OpenedGpus, String> {
    let nvml = Nvml::init().map_err(|e| init_error_reason(&e))?;
    let nvml = Arc::new(nvml);
    let count = nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
    if count == 0 {
        return Err("NVML loaded but reports no GPU".to_owned());
    }
    let mut out = OpenedGpus { devices: Vec::new(), skipped: Vec::new() };
    for index in 0..count {
        match nvml.device_by_index(index) {
            Ok(d) => {
                let info = GpuInfo {
                    index,
                    name: d.name().unwrap_or_else(|_| "unknown".to_owned()),
                    uuid: d.uuid().unwrap_or_default(),
                };
                out.devices.push(Box::new(NvmlDevice { nvml: nvml.clone(), info }));
            }
            Err(e) => out.skipped.push(format!("GPU {index} cannot be opened ({e}): not metered")),
        }
    }
    if out.devices.is_empty() {
        return Err(format!("no GPU could be opened: {}", out.skipped.join("; ")));
    }
    Ok(out)
}

/// The GPU's total-energy counter in joules (since driver load), for `doctor --gpu-energy`
/// and `scripts/gpu-check.sh`. Errors when the GPU has no counter.
pub fn nvml_total_energy_j(index: u32) -> Result<f64, String> {
    let mut opened = open_nvml()?;
    let d = opened
        .devices
        .iter_mut()
        .find(|d| d.info().index == index)
        .ok_or_else(|| format!("no GPU with index {index}"))?;
    match d.total_energy_mj() {
        Ok(Some(mj)) => Ok(mj as f64 / 1000.0),
        Ok(None) => Err(format!("GPU {index} has no total-energy counter")),
        Err(e) => Err(format!("GPU {index}: total energy: {e}")),
    }
}

/// The clocks the meter reads: monotonic for power integration, wall for NVML timestamps.
pub trait GpuClock: Send {
    /// Monotonic microseconds.
    fn mono_us(&self) -> u64;
    /// Wall-clock microseconds since the Unix epoch (NVML's sample timestamps).
    fn wall_us(&self) -> u64;
}

/// The system's clocks.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self { origin: Instant::now() }
    }
}

impl GpuClock for SystemClock {
    fn mono_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
    fn wall_us(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
    }
}

/// Per-process shares of one GPU in one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuShares {
    /// Fraction of the GPU each tgid kept busy (0..1, summing to at most 1); the rest of
    /// the GPU's dynamic energy is shared like its static energy.
    pub by_pid: BTreeMap<u32, f64>,
    /// [`BASIS_SM`], [`BASIS_MEMORY`], [`BASIS_PROCESSES`] or [`BASIS_NONE`].
    pub basis: &'static str,
    /// The SM shares are the previous interval's (no new sample in this one).
    pub carried: bool,
}

/// Utilization samples the cleaning dropped, by reason (the run document counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedSamples {
    /// pid 0.
    pub pid_zero: u64,
    /// SM utilization above 100 %.
    pub sm_over_100: u64,
    /// Timestamp at or before the newest sample already seen.
    pub stale: u64,
    /// Timestamp in the future.
    pub future: u64,
}

impl DroppedSamples {
    /// Adds another count.
    pub fn add(&mut self, o: &DroppedSamples) {
        self.pid_zero += o.pid_zero;
        self.sm_over_100 += o.sm_over_100;
        self.stale += o.stale;
        self.future += o.future;
    }
}

/// Keeps the samples in `(since_us, now_us]` with a real pid and SM ≤ 100 %.
pub fn clean_samples(
    samples: Vec<ProcessSample>,
    since_us: u64,
    now_us: u64,
    dropped: &mut DroppedSamples,
) -> Vec<ProcessSample> {
    samples
        .into_iter()
        .filter(|s| {
            let reason = if s.pid == 0 {
                &mut dropped.pid_zero
            } else if s.sm_util > 100 {
                &mut dropped.sm_over_100
            } else if s.timestamp_us <= since_us {
                &mut dropped.stale
            } else if s.timestamp_us > now_us {
                &mut dropped.future
            } else {
                return true;
            };
            *reason += 1;
            false
        })
        .collect()
}

/// SM shares: each pid's mean SM utilization over its samples (0..1), scaled down to sum
/// to 1 if the samples overlap to more than the whole GPU; pure.
pub fn sm_shares(samples: &[ProcessSample]) -> BTreeMap<u32, f64> {
    let mut acc: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
    for s in samples {
        let e = acc.entry(s.pid).or_default();
        e.0 += f64::from(s.sm_util);
        e.1 += 1;
    }
    let mut out: BTreeMap<u32, f64> = acc
        .into_iter()
        .map(|(pid, (sum, n))| (pid, sum / f64::from(n) / 100.0))
        .filter(|(_, u)| *u > 0.0)
        .collect();
    let total: f64 = out.values().sum();
    if total > 1.0 {
        out.values_mut().for_each(|u| *u /= total);
    }
    out
}

/// Memory shares: used memory over all used memory, times the device's utilization when
/// known (else 1); pure. `None` when no process reports used memory.
pub fn memory_shares(processes: &[GpuProcess], utilization: Option<f64>) -> Option<BTreeMap<u32, f64>> {
    let total: u64 = processes.iter().filter_map(|p| p.used_memory).sum();
    if total == 0 {
        return None;
    }
    let busy = utilization.unwrap_or(1.0).clamp(0.0, 1.0);
    let mut out = BTreeMap::new();
    for p in processes {
        if let Some(m) = p.used_memory.filter(|m| *m > 0) {
            *out.entry(p.pid).or_insert(0.0) += busy * m as f64 / total as f64;
        }
    }
    Some(out)
}

/// The compute and graphics lists merged by pid: a pid in both uses the larger memory
/// figure (the same context counted twice, not two allocations).
pub fn merge_process_lists(lists: &[&[GpuProcess]]) -> Vec<GpuProcess> {
    let mut out: BTreeMap<u32, GpuProcess> = BTreeMap::new();
    for list in lists {
        for p in *list {
            let e =
                out.entry(p.pid).or_insert(GpuProcess { pid: p.pid, used_memory: None, gpu_instance: None });
            e.used_memory = match (e.used_memory, p.used_memory) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            e.gpu_instance = e.gpu_instance.or(p.gpu_instance);
        }
    }
    out.into_values().collect()
}

/// How a GPU's energy is read.
enum EnergyState {
    /// The total-energy counter: its last raw value, mJ.
    Counter { last_mj: u64 },
    /// Power integration: the last reading and when it was taken (monotonic µs).
    Power { last_w: f64, at_us: u64 },
}

struct DeviceState {
    device: Box<dyn GpuDevice>,
    info: GpuInfo,
    energy: EnergyState,
    /// Newest sample timestamp seen (the window's start), wall µs.
    window_us: u64,
    /// The last SM shares and the timestamp of the newest sample behind them.
    carried: Option<(BTreeMap<u32, f64>, u64)>,
    mps_said: bool,
    /// Permanent failures already said (`NotSupported`, a missing symbol): said once.
    said: BTreeSet<String>,
}

/// One GPU in one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuInterval {
    /// NVML index.
    pub index: u32,
    /// Joules in the interval.
    pub energy_j: f64,
    /// Per-process shares.
    pub shares: GpuShares,
    /// GPU utilization 0..1, when known.
    pub utilization: Option<f64>,
    /// Whether the energy is integrated power samples (no energy counter).
    pub integrated: bool,
    /// Processes NVML lists on the GPU.
    pub processes: usize,
}

/// What one NVML read gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReading {
    /// Each GPU still metered.
    pub gpus: Vec<GpuInterval>,
    /// What went wrong and what was done about it.
    pub warnings: Vec<String>,
    /// Samples the cleaning dropped.
    pub dropped: DroppedSamples,
}

/// The NVML meter over a set of devices.
pub struct NvmlMeter {
    devices: Vec<DeviceState>,
    clock: Box<dyn GpuClock>,
    /// Said in the first interval (GPUs skipped at start-up).
    pending_warnings: Vec<String>,
}

impl NvmlMeter {
    /// Opens the meter over the devices NVML opened; takes a first baseline.
    pub fn new(opened: OpenedGpus) -> Result<Self, String> {
        Self::with_clock(opened, Box::new(SystemClock::default()))
    }

    /// Like [`NvmlMeter::new`] with the given clocks (tests).
    pub fn with_clock(opened: OpenedGpus, clock: Box<dyn GpuClock>) -> Result<Self, String> {
        let mut pending_warnings = opened.skipped;
        let mut devices = Vec::new();
        for mut device in opened.devices {
            let info = device.info();
            let energy = match device.total_energy_mj() {
                Ok(Some(mj)) => Ok(EnergyState::Counter { last_mj: mj }),
                Ok(None) => device
                    .power_mw()
                    .map(|mw| EnergyState::Power { last_w: f64::from(mw) / 1000.0, at_us: clock.mono_us() }),
                Err(e) => Err(e),
            };
            match energy {
                Ok(energy) => devices.push(DeviceState {
                    device,
                    info,
                    energy,
                    window_us: clock.wall_us(),
                    carried: None,
                    mps_said: false,
                    said: BTreeSet::new(),
                }),
                Err(e) => pending_warnings
                    .push(format!("GPU {} ({}) cannot be read ({e}): not metered", info.index, info.name)),
            }
        }
        if devices.is_empty() {
            return Err(if pending_warnings.is_empty() {
                "NVML reports no GPU".to_owned()
            } else {
                pending_warnings.join("; ")
            });
        }
        Ok(Self { devices, clock, pending_warnings })
    }

    /// The GPUs metered.
    pub fn gpus(&self) -> Vec<GpuInfo> {
        self.devices.iter().map(|d| d.info.clone()).collect()
    }

    /// One line for `doctor` and the probe list.
    pub fn describe(&self) -> String {
        let mut gpus: Vec<String> = self
            .devices
            .iter()
            .map(|d| {
                let how = match d.energy {
                    EnergyState::Counter { .. } => "energy counter",
                    EnergyState::Power { .. } => "power sampling",
                };
                format!("GPU {} {} ({how})", d.info.index, d.info.name)
            })
            .collect();
        gpus.extend(self.pending_warnings.iter().cloned());
        format!("NVML: {}", gpus.join(", "))
    }

    /// Takes every GPU's baseline now: the first interval starts here.
    pub fn start(&mut self) {
        let now_wall = self.clock.wall_us();
        let now_mono = self.clock.mono_us();
        for d in &mut self.devices {
            match &mut d.energy {
                EnergyState::Counter { last_mj } => {
                    if let Ok(Some(mj)) = d.device.total_energy_mj() {
                        *last_mj = mj;
                    }
                }
                EnergyState::Power { last_w, at_us } => {
                    if let Ok(mw) = d.device.power_mw() {
                        *last_w = f64::from(mw) / 1000.0;
                    }
                    *at_us = now_mono;
                }
            }
            d.window_us = now_wall;
            d.carried = None;
        }
    }

    /// Reads every GPU: joules since the previous read, and per-process shares.
    pub fn read(&mut self) -> GpuReading {
        let mut out =
            GpuReading { warnings: std::mem::take(&mut self.pending_warnings), ..Default::default() };
        let mut lost = Vec::new();
        for (i, d) in self.devices.iter_mut().enumerate() {
            match read_device(d, &*self.clock, &mut out) {
                Ok(g) => out.gpus.push(g),
                Err(e) => {
                    out.warnings.push(format!(
                        "GPU {} ({}, {}): {e}: dropped; its energy is no longer metered, the other GPUs are",
                        d.info.index, d.info.name, d.info.uuid
                    ));
                    lost.push(i);
                }
            }
        }
        for i in lost.into_iter().rev() {
            self.devices.remove(i);
        }
        out
    }
}

/// Says a failed share query: every time when it may pass next time, once for a permanent
/// one (the basis each interval used is in its `gpu_share_basis` anyway).
fn say_failure(said: &mut BTreeSet<String>, out: &mut GpuReading, idx: u32, what: String, e: &GpuError) {
    if !e.is_permanent() {
        out.warnings.push(format!("GPU {idx}: {what} ({e}): shares by the next basis"));
    } else if said.insert(format!("{what}: {e}")) {
        out.warnings.push(format!("GPU {idx}: {what} ({e}): shares by the next basis (said once)"));
    }
}

/// Reads one GPU; `Err` only when the GPU is lost.
fn read_device(
    d: &mut DeviceState,
    clock: &dyn GpuClock,
    out: &mut GpuReading,
) -> Result<GpuInterval, GpuError> {
    let idx = d.info.index;
    let warn = |out: &mut GpuReading, s: String| out.warnings.push(format!("GPU {idx}: {s}"));
    // Energy first, on its own: a failed share query must not cost the energy.
    let (energy_j, integrated) = match &mut d.energy {
        EnergyState::Counter { last_mj } => match d.device.total_energy_mj() {
            Ok(Some(mj)) if mj >= *last_mj => {
                let j = (mj - *last_mj) as f64 / 1000.0;
                *last_mj = mj;
                (j, false)
            }
            Ok(Some(mj)) => {
                warn(
                    out,
                    format!(
                        "energy counter went back from {} to {mj} mJ (GPU reset or driver reload): it restarted \
                         from 0 since the previous read, so this interval counts the {mj} mJ since the restart; \
                         the energy between the previous read and the restart is lost",
                        *last_mj
                    ),
                );
                *last_mj = mj;
                (mj as f64 / 1000.0, false)
            }
            Ok(None) => {
                warn(out, "total-energy counter no longer supported: no GPU energy this interval".into());
                (0.0, false)
            }
            Err(GpuError::GpuLost) => return Err(GpuError::GpuLost),
            Err(e) => {
                warn(out, format!("energy read failed ({e}): counted in the next successful read"));
                (0.0, false)
            }
        },
        EnergyState::Power { last_w, at_us } => match d.device.power_mw() {
            Ok(mw) => {
                let now = clock.mono_us();
                let p = f64::from(mw) / 1000.0;
                let dt = now.saturating_sub(*at_us) as f64 / 1e6;
                let j = (*last_w + p) / 2.0 * dt;
                *last_w = p;
                *at_us = now;
                (j, true)
            }
            Err(GpuError::GpuLost) => return Err(GpuError::GpuLost),
            Err(e) => {
                warn(out, format!("power read failed ({e}): integrated over the gap at the next read"));
                (0.0, true)
            }
        },
    };

    // The process list: needed for memory shares, carried SM shares and MPS.
    // A share query that fails (GpuLost included: the energy read decides whether the GPU
    // is gone) falls back to the next basis.
    let mut lists: Vec<Vec<GpuProcess>> = Vec::new();
    for (what, r) in [("compute", d.device.compute_processes()), ("graphics", d.device.graphics_processes())]
    {
        match r {
            Ok(l) => lists.push(l),
            Err(GpuError::NotSupported) => {}
            Err(e) => say_failure(&mut d.said, out, idx, format!("{what} process list failed"), &e),
        }
    }
    let refs: Vec<&[GpuProcess]> = lists.iter().map(Vec::as_slice).collect();
    let processes = merge_process_lists(&refs);
    if !d.mps_said
        && let Some(p) = processes.iter().find(|p| {
            d.device
                .process_name(p.pid)
                .is_some_and(|n| n.rsplit('/').next() == Some("nvidia-cuda-mps-server"))
        })
    {
        d.mps_said = true;
        warn(
            out,
            format!(
                "the MPS server (pid {}) holds this GPU: MPS clients may not be listed, and their GPU energy \
                 goes to the server",
                p.pid
            ),
        );
    }

    let utilization = d.device.utilization().unwrap_or(None);

    // SM samples since the window's start; a start in the future (the wall clock stepped
    // back) is pulled back to now so that it never freezes the window.
    let before = clock.wall_us();
    if d.window_us > before {
        d.window_us = before;
    }
    let samples = d.device.process_samples(d.window_us);
    // "Now" after the query: a sample the driver took during the call is not in the future.
    let now_wall = clock.wall_us();
    let samples = samples.map(|s| clean_samples(s, d.window_us, now_wall, &mut out.dropped));
    let live: BTreeSet<u32> = processes.iter().map(|p| p.pid).collect();
    let sm = match &samples {
        Ok(s) if !s.is_empty() => {
            let newest = s.iter().map(|x| x.timestamp_us).max().unwrap_or(d.window_us);
            d.window_us = d.window_us.max(newest);
            let shares = sm_shares(s);
            if shares.is_empty() {
                // Samples at 0 % SM (a copy-only process): no SM signal, the next basis decides.
                d.carried = None;
                None
            } else {
                d.carried = Some((shares.clone(), newest));
                Some((shares, false))
            }
        }
        Ok(_) => match &d.carried {
            // No new sample: the driver's period can be longer than the interval.
            Some((shares, newest)) if now_wall.saturating_sub(*newest) <= CARRY_MAX_US => {
                let kept: BTreeMap<u32, f64> =
                    shares.iter().filter(|(p, _)| live.contains(p)).map(|(p, u)| (*p, *u)).collect();
                (!kept.is_empty()).then_some((kept, true))
            }
            _ => None,
        },
        Err(e) => {
            d.carried = None;
            say_failure(&mut d.said, out, idx, "per-process utilization failed".into(), e);
            None
        }
    };
    let shares = match sm {
        Some((by_pid, carried)) => GpuShares { by_pid, basis: BASIS_SM, carried },
        None => match memory_shares(&processes, utilization) {
            Some(by_pid) => GpuShares { by_pid, basis: BASIS_MEMORY, carried: false },
            None if !processes.is_empty() => {
                // Contexts without a memory figure (NVML_VALUE_NOT_AVAILABLE): equal parts.
                let busy = utilization.unwrap_or(1.0).clamp(0.0, 1.0) / processes.len() as f64;
                let by_pid = processes.iter().map(|p| (p.pid, busy)).collect();
                GpuShares { by_pid, basis: BASIS_PROCESSES, carried: false }
            }
            None => GpuShares { by_pid: BTreeMap::new(), basis: BASIS_NONE, carried: false },
        },
    };
    Ok(GpuInterval { index: idx, energy_j, shares, utilization, integrated, processes: processes.len() })
}

/// One line of `doctor` about NVML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuCheck {
    /// Check name (`GPU 0 persistence mode`).
    pub name: String,
    /// Whether it is fine for metering.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about it, when not ok.
    pub fix: Option<String>,
}

/// `doctor`'s NVML checks for each device: persistence mode, MIG mode, per-process
/// utilization (`NotSupported` vs no sample yet), accounting mode.
pub fn doctor_checks(devices: &mut [Box<dyn GpuDevice>], now_wall_us: u64) -> Vec<GpuCheck> {
    let mut out = Vec::new();
    for d in devices {
        let info = d.info();
        let name = |what: &str| format!("GPU {} {what}", info.index);
        out.push(match d.persistence_mode() {
            Ok(true) => GpuCheck { name: name("persistence mode"), ok: true, detail: "on".into(), fix: None },
            Ok(false) => GpuCheck {
                name: name("persistence mode"),
                ok: false,
                detail: "off: the driver tears the GPU down when no client holds it, and the energy counter \
                         restarts when it comes back"
                    .into(),
                fix: Some("nvidia-smi -pm 1 (or run nvidia-persistenced)".into()),
            },
            Err(e) => {
                GpuCheck { name: name("persistence mode"), ok: false, detail: e.to_string(), fix: None }
            }
        });
        out.push(match d.mig_mode() {
            Ok(m) if m.current => GpuCheck {
                name: name("MIG mode"),
                ok: false,
                detail: format!(
                    "enabled{}: energy is metered per physical GPU and shares are by used memory (no per-process \
                     utilization under MIG)",
                    if m.pending { "" } else { " (disabled after the next GPU reset)" }
                ),
                fix: None,
            },
            Ok(m) => GpuCheck {
                name: name("MIG mode"),
                ok: true,
                detail: if m.pending { "disabled (enabled after the next GPU reset)" } else { "disabled" }.into(),
                fix: None,
            },
            Err(GpuError::NotSupported) => {
                GpuCheck { name: name("MIG mode"), ok: true, detail: "not supported by this GPU".into(), fix: None }
            }
            Err(e) => GpuCheck { name: name("MIG mode"), ok: false, detail: e.to_string(), fix: None },
        });
        // A timestamp of now asks for nothing old: an empty answer (NotFound) means the query works.
        out.push(match d.process_samples(now_wall_us) {
            Ok(s) => GpuCheck {
                name: name("per-process utilization"),
                ok: true,
                detail: format!("works ({} sample(s) now): shares by SM utilization", s.len()),
                fix: None,
            },
            Err(GpuError::NotSupported) => GpuCheck {
                name: name("per-process utilization"),
                ok: false,
                detail: "not supported (MIG, vGPU or a pre-Maxwell GPU): shares by used memory".into(),
                fix: None,
            },
            Err(e) => GpuCheck {
                name: name("per-process utilization"),
                ok: false,
                detail: format!("{e}: shares by used memory"),
                fix: matches!(e, GpuError::NoPermission).then(|| "run carbon-agent as root".into()),
            },
        });
        out.push(match d.accounting_mode() {
            Ok(on) => GpuCheck {
                name: name("accounting mode"),
                ok: true,
                detail: format!(
                    "{}: not used for shares (one figure per process lifetime, not per interval)",
                    if on { "on" } else { "off" }
                ),
                fix: None,
            },
            Err(GpuError::NotSupported) => GpuCheck {
                name: name("accounting mode"),
                ok: true,
                detail: "not supported by this GPU".into(),
                fix: None,
            },
            Err(e) => GpuCheck { name: name("accounting mode"), ok: false, detail: e.to_string(), fix: None },
        });
        out.push(match d.total_energy_mj() {
            Ok(Some(mj)) => GpuCheck {
                name: name("energy counter"),
                ok: true,
                detail: format!("{:.1} J since the driver was loaded", mj as f64 / 1000.0),
                fix: None,
            },
            Ok(None) => GpuCheck {
                name: name("energy counter"),
                ok: false,
                detail: "none (pre-Volta): power readings are integrated".into(),
                fix: None,
            },
            Err(e) => GpuCheck { name: name("energy counter"), ok: false, detail: e.to_string(), fix: None },
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A GPU whose counters and failures tests script.
    #[derive(Clone, Default)]
    pub struct FakeGpu {
        pub state: Arc<Mutex<FakeGpuState>>,
    }

    #[derive(Default)]
    pub struct FakeGpuState {
        pub index: u32,
        pub energy_mj: Option<u64>,
        pub energy_error: Option<GpuError>,
        pub power_mw: u32,
        /// Samples returned (those newer than `since`, as NVML filters them) unless `raw_samples`.
        pub samples: Vec<ProcessSample>,
        /// Return every sample, ignoring `since` (a driver that misbehaves).
        pub raw_samples: bool,
        pub samples_error: Option<GpuError>,
        pub compute: Vec<GpuProcess>,
        pub graphics: Vec<GpuProcess>,
        pub processes_error: Option<GpuError>,
        pub utilization: Option<f64>,
        pub names: BTreeMap<u32, String>,
        pub persistence: bool,
        pub mig: Option<MigState>,
        pub accounting: Option<bool>,
        /// Every query fails with `GpuLost`.
        pub lost: bool,
        /// `since` of each sample query.
        pub since_seen: Vec<u64>,
    }

    impl FakeGpu {
        pub fn counter(index: u32, mj: u64) -> Self {
            let g = FakeGpu::default();
            {
                let mut s = g.state.lock().unwrap();
                s.index = index;
                s.energy_mj = Some(mj);
            }
            g
        }
        fn with<T>(&self, f: impl FnOnce(&mut FakeGpuState) -> Result<T, GpuError>) -> Result<T, GpuError> {
            let mut s = self.state.lock().unwrap();
            if s.lost {
                return Err(GpuError::GpuLost);
            }
            f(&mut s)
        }
    }

    impl GpuDevice for FakeGpu {
        fn info(&self) -> GpuInfo {
            let s = self.state.lock().unwrap();
            GpuInfo { index: s.index, name: "Fake H100".into(), uuid: format!("GPU-fake-{}", s.index) }
        }
        fn total_energy_mj(&mut self) -> Result<Option<u64>, GpuError> {
            self.with(|s| s.energy_error.clone().map_or(Ok(s.energy_mj), Err))
        }
        fn power_mw(&mut self) -> Result<u32, GpuError> {
            self.with(|s| s.energy_error.clone().map_or(Ok(s.power_mw), Err))
        }
        fn process_samples(&mut self, since_us: u64) -> Result<Vec<ProcessSample>, GpuError> {
            self.with(|s| {
                s.since_seen.push(since_us);
                if let Some(e) = &s.samples_error {
                    return Err(e.clone());
                }
                let raw = s.raw_samples;
                Ok(s.samples.iter().filter(|x| raw || x.timestamp_us > since_us).copied().collect())
            })
        }
        fn compute_processes(&mut self) -> Result<Vec<GpuProcess>, GpuError> {
            self.with(|s| s.processes_error.clone().map_or(Ok(s.compute.clone()), Err))
        }
        fn graphics_processes(&mut self) -> Result<Vec<GpuProcess>, GpuError> {
            self.with(|s| s.processes_error.clone().map_or(Ok(s.graphics.clone()), Err))
        }
        fn utilization(&mut self) -> Result<Option<f64>, GpuError> {
            self.with(|s| Ok(s.utilization))
        }
        fn process_name(&mut self, pid: u32) -> Option<String> {
            self.state.lock().unwrap().names.get(&pid).cloned()
        }
        fn persistence_mode(&mut self) -> Result<bool, GpuError> {
            self.with(|s| Ok(s.persistence))
        }
        fn mig_mode(&mut self) -> Result<MigState, GpuError> {
            self.with(|s| s.mig.ok_or(GpuError::NotSupported))
        }
        fn accounting_mode(&mut self) -> Result<bool, GpuError> {
            self.with(|s| s.accounting.ok_or(GpuError::NotSupported))
        }
    }

    /// Clocks that tests move.
    #[derive(Clone, Default)]
    pub struct FakeClock {
        pub mono: Arc<AtomicU64>,
        pub wall: Arc<AtomicU64>,
    }

    impl FakeClock {
        pub fn at(wall_us: u64) -> Self {
            let c = FakeClock::default();
            c.wall.store(wall_us, Ordering::SeqCst);
            c
        }
        pub fn advance(&self, us: u64) {
            self.mono.fetch_add(us, Ordering::SeqCst);
            self.wall.fetch_add(us, Ordering::SeqCst);
        }
    }

    impl GpuClock for FakeClock {
        fn mono_us(&self) -> u64 {
            self.mono.load(Ordering::SeqCst)
        }
        fn wall_us(&self) -> u64 {
            self.wall.load(Ordering::SeqCst)
        }
    }

    pub fn opened(gpus: &[FakeGpu]) -> OpenedGpus {
        OpenedGpus {
            devices: gpus.iter().map(|g| Box::new(g.clone()) as Box<dyn GpuDevice>).collect(),
            skipped: Vec::new(),
        }
    }

    const T0: u64 = 1_800_000_000_000_000;

    fn meter(gpus: &[FakeGpu], clock: &FakeClock) -> NvmlMeter {
        NvmlMeter::with_clock(opened(gpus), Box::new(clock.clone())).unwrap()
    }

    fn sample(pid: u32, t: u64, sm: u32) -> ProcessSample {
        ProcessSample { pid, timestamp_us: t, sm_util: sm, mem_util: 0 }
    }

    fn proc(pid: u32, mem: Option<u64>) -> GpuProcess {
        GpuProcess { pid, used_memory: mem, gpu_instance: None }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn energy_counter_and_sm_shares_by_utilization() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 5_000_000);
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        clock.advance(1_000_000);
        {
            let mut s = gpu.state.lock().unwrap();
            s.energy_mj = Some(5_250_500);
            s.compute = vec![proc(10, Some(1 << 30)), proc(11, Some(1 << 30))];
            s.samples = vec![
                sample(10, T0 + 1, 30),
                sample(11, T0 + 2, 10),
                sample(10, T0 + 3, 20),
                sample(9, T0 - 5, 99),
            ];
        }
        let r = m.read();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let g = &r.gpus[0];
        assert_eq!(g.energy_j, 250.5);
        assert!(!g.integrated);
        assert_eq!(g.shares.basis, BASIS_SM);
        // Mean SM utilization per process: 10 at 25 %, 11 at 10 %; the rest is unutilized.
        assert_eq!(g.shares.by_pid, BTreeMap::from([(10, 0.25), (11, 0.10)]));
        assert_eq!(g.processes, 2);
        // The window moved on to the newest sample: old samples are not counted twice.
        assert_eq!(gpu.state.lock().unwrap().since_seen, vec![T0]);
        let r = m.read();
        assert_eq!(*gpu.state.lock().unwrap().since_seen.last().unwrap(), T0 + 3);
        assert_eq!(r.gpus[0].energy_j, 0.0);
    }

    #[test]
    fn a_process_at_2_percent_does_not_get_the_whole_gpu() {
        let s = sm_shares(&[sample(7, 1, 2), sample(7, 2, 2)]);
        assert_eq!(s, BTreeMap::from([(7, 0.02)]));
        // Overlapping processes above 100 % in all are scaled to the whole GPU.
        let s = sm_shares(&[sample(1, 1, 90), sample(2, 1, 60)]);
        assert!(close(s[&1], 0.6) && close(s[&2], 0.4));
        assert!(sm_shares(&[sample(1, 1, 0)]).is_empty());
    }

    #[test]
    fn one_gpus_failures_never_cost_another_gpus_energy() {
        let clock = FakeClock::at(T0);
        let (a, b) = (FakeGpu::counter(0, 0), FakeGpu::counter(1, 0));
        let mut m = meter(&[a.clone(), b.clone()], &clock);
        clock.advance(1_000_000);
        for (g, mj) in [(&a, 100_000), (&b, 200_000)] {
            let mut s = g.state.lock().unwrap();
            s.energy_mj = Some(mj);
            s.compute = vec![proc(5, Some(10))];
        }
        // GPU 0: its share queries fail; GPU 1: its energy read fails.
        a.state.lock().unwrap().samples_error = Some(GpuError::NoPermission);
        a.state.lock().unwrap().processes_error = Some(GpuError::Other("Unknown".into()));
        b.state.lock().unwrap().energy_error = Some(GpuError::Other("Unknown".into()));
        let r = m.read();
        assert_eq!(r.gpus.len(), 2);
        assert_eq!(r.gpus[0].energy_j, 100.0);
        assert_eq!(r.gpus[0].shares.basis, BASIS_NONE);
        assert_eq!(r.gpus[1].energy_j, 0.0);
        assert_eq!(r.gpus[1].shares.basis, BASIS_MEMORY);
        let w = r.warnings.join("\n");
        assert!(w.contains("GPU 0: per-process utilization failed (permission denied)"), "{w}");
        assert!(w.contains("GPU 0: compute process list failed"), "{w}");
        assert!(w.contains("GPU 1: energy read failed") && w.contains("next successful read"), "{w}");
        // GPU 1's energy is not lost: the next read counts it from the old baseline.
        b.state.lock().unwrap().energy_error = None;
        b.state.lock().unwrap().energy_mj = Some(250_000);
        let r = m.read();
        assert_eq!(r.gpus[1].energy_j, 250.0);
    }

    #[test]
    fn each_share_query_failure_falls_back_to_memory_with_a_warning() {
        for (err, says) in [
            (GpuError::InsufficientSize, "buffer too small"),
            (GpuError::GpuLost, "GPU lost"),
            (GpuError::NoPermission, "permission denied"),
            (GpuError::MissingSymbol("nvmlDeviceGetComputeRunningProcesses_v3".into()), "lacks nvmlDevice"),
            (GpuError::NotSupported, "not supported"),
        ] {
            let clock = FakeClock::at(T0);
            let gpu = FakeGpu::counter(0, 0);
            let mut m = meter(std::slice::from_ref(&gpu), &clock);
            clock.advance(1_000_000);
            {
                let mut s = gpu.state.lock().unwrap();
                s.energy_mj = Some(10_000);
                s.compute = vec![proc(1, Some(3 << 30)), proc(2, Some(1 << 30))];
                s.utilization = Some(0.8);
                s.samples = vec![sample(1, T0 + 10, 50)];
            }
            gpu.state.lock().unwrap().samples_error = Some(err.clone());
            let r = m.read();
            let g = &r.gpus[0];
            assert_eq!(g.energy_j, 10.0, "{err:?}");
            assert_eq!(g.shares.basis, BASIS_MEMORY, "{err:?}");
            // Memory shares scaled by the device's 80 % utilization.
            assert!(close(g.shares.by_pid[&1], 0.6) && close(g.shares.by_pid[&2], 0.2), "{err:?}");
            assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
            assert!(r.warnings[0].contains(says), "{err:?}: {:?}", r.warnings);
            // A permanent failure is said once; a transient one in every interval it happens.
            let r = m.read();
            assert_eq!(r.gpus[0].shares.basis, BASIS_MEMORY, "{err:?}");
            assert_eq!(r.warnings.len(), usize::from(!err.is_permanent()), "{err:?}: {:?}", r.warnings);
            // The next interval works again.
            gpu.state.lock().unwrap().samples_error = None;
            gpu.state.lock().unwrap().samples.push(sample(1, T0 + 20, 40));
            let r = m.read();
            assert!(r.warnings.is_empty() && r.gpus[0].shares.basis == BASIS_SM, "{err:?}: {r:?}");
        }
    }

    #[test]
    fn a_lost_gpu_is_dropped_and_said_the_others_keep_working() {
        let clock = FakeClock::at(T0);
        let (a, b) = (FakeGpu::counter(0, 0), FakeGpu::counter(1, 0));
        let mut m = meter(&[a.clone(), b.clone()], &clock);
        a.state.lock().unwrap().lost = true;
        b.state.lock().unwrap().energy_mj = Some(7_000);
        let r = m.read();
        assert_eq!(r.gpus.len(), 1);
        assert_eq!((r.gpus[0].index, r.gpus[0].energy_j), (1, 7.0));
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("GPU 0 (Fake H100, GPU-fake-0): GPU lost")
                && r.warnings[0].contains("dropped")
        );
        assert_eq!(m.gpus().len(), 1);
        // Said once: the next interval has only the remaining GPU, without warnings.
        let r = m.read();
        assert!(r.warnings.is_empty());
        assert_eq!(r.gpus.len(), 1);
    }

    #[test]
    fn a_gpu_that_cannot_be_read_at_start_is_skipped_and_said() {
        let clock = FakeClock::at(T0);
        let (a, b) = (FakeGpu::counter(0, 0), FakeGpu::counter(1, 0));
        a.state.lock().unwrap().energy_error = Some(GpuError::Other("Unknown Error".into()));
        let mut o = opened(&[a, b]);
        o.skipped.push("GPU 2 cannot be opened (Unknown Error): not metered".into());
        let mut m = NvmlMeter::with_clock(o, Box::new(clock.clone())).unwrap();
        assert_eq!(m.gpus().iter().map(|g| g.index).collect::<Vec<_>>(), vec![1]);
        assert!(m.describe().contains("GPU 0 (Fake H100) cannot be read"), "{}", m.describe());
        let r = m.read();
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("GPU 2 cannot be opened"));
        assert!(m.read().warnings.is_empty());
        // No GPU at all is an error with the reasons.
        let a = FakeGpu::counter(0, 0);
        a.state.lock().unwrap().lost = true;
        let err = NvmlMeter::with_clock(opened(&[a]), Box::new(clock)).err().unwrap();
        assert!(err.contains("GPU lost"), "{err}");
    }

    #[test]
    fn baseline_is_taken_when_the_first_interval_starts() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 1_000_000);
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        // Start-up (probes loading) burns 50 J before the first interval starts.
        gpu.state.lock().unwrap().energy_mj = Some(1_050_000);
        clock.advance(3_000_000);
        gpu.state.lock().unwrap().samples = vec![sample(4, T0 + 1_000_000, 90)];
        m.start();
        gpu.state.lock().unwrap().energy_mj = Some(1_060_000);
        clock.advance(1_000_000);
        let r = m.read();
        assert_eq!(r.gpus[0].energy_j, 10.0);
        // Samples from before the start are not this run's.
        assert_eq!(r.gpus[0].shares.basis, BASIS_NONE);
    }

    #[test]
    fn power_integration_times_each_gpu_on_its_own_clock() {
        let clock = FakeClock::at(T0);
        let (a, b) = (FakeGpu::default(), FakeGpu::default());
        a.state.lock().unwrap().power_mw = 100_000;
        b.state.lock().unwrap().index = 1;
        b.state.lock().unwrap().power_mw = 50_000;
        let mut m = meter(&[a.clone(), b.clone()], &clock);
        clock.advance(10_000_000); // start-up: not integrated
        m.start();
        a.state.lock().unwrap().power_mw = 300_000;
        b.state.lock().unwrap().power_mw = 50_000;
        clock.advance(2_000_000);
        let r = m.read();
        assert_eq!(r.gpus[0].energy_j, 400.0); // (100 + 300) / 2 × 2 s
        assert!(r.gpus[0].integrated);
        // GPU 1's power read fails once: the gap is integrated at its next read, on its clock.
        b.state.lock().unwrap().energy_error = Some(GpuError::Other("Timeout".into()));
        assert_eq!(r.gpus[1].energy_j, 100.0);
        clock.advance(1_000_000);
        let r = m.read();
        assert_eq!(r.gpus[0].energy_j, 300.0);
        assert_eq!(r.gpus[1].energy_j, 0.0);
        assert!(r.warnings[0].contains("GPU 1: power read failed"));
        b.state.lock().unwrap().energy_error = None;
        clock.advance(1_000_000);
        let r = m.read();
        assert_eq!(r.gpus[1].energy_j, 100.0); // 50 W over the 2 s since its last good read
    }

    #[test]
    fn a_counter_reset_is_detected_counted_from_and_said() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 9_000_000);
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        gpu.state.lock().unwrap().energy_mj = Some(2_000);
        let r = m.read();
        assert_eq!(r.gpus[0].energy_j, 2.0);
        assert!(r.warnings[0].contains("went back from 9000000 to 2000 mJ"), "{:?}", r.warnings);
        gpu.state.lock().unwrap().energy_mj = Some(5_000);
        let r = m.read();
        assert_eq!(r.gpus[0].energy_j, 3.0);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn samples_are_cleaned_and_a_bad_timestamp_never_freezes_the_window() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 0);
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        clock.advance(1_000_000);
        {
            let mut s = gpu.state.lock().unwrap();
            s.raw_samples = true; // a driver returning what it should not
            s.compute = vec![proc(3, Some(1)), proc(4, Some(1))];
            s.samples = vec![
                sample(0, T0 + 5, 50),          // pid 0
                sample(3, T0 + 6, 250),         // SM > 100 %
                sample(3, T0, 40),              // at the window start
                sample(4, T0 + 60_000_000, 80), // a minute in the future
                sample(4, T0 + 500_000, 30),
            ];
        }
        let r = m.read();
        assert_eq!(r.dropped, DroppedSamples { pid_zero: 1, sm_over_100: 1, stale: 1, future: 1 });
        assert_eq!(r.gpus[0].shares.by_pid, BTreeMap::from([(4, 0.30)]));
        // The window moved to the newest good sample, not to the future one.
        clock.advance(1_000_000);
        gpu.state.lock().unwrap().samples = vec![sample(3, T0 + 1_500_000, 20)];
        let r = m.read();
        assert_eq!(gpu.state.lock().unwrap().since_seen[1], T0 + 500_000);
        assert_eq!(r.gpus[0].shares.by_pid, BTreeMap::from([(3, 0.20)]));
        // The wall clock steps back by an hour: the window follows instead of freezing.
        clock.wall.store(T0 - 3_600_000_000, Ordering::SeqCst);
        gpu.state.lock().unwrap().samples = vec![sample(4, T0 - 3_600_000_000, 70)];
        gpu.state.lock().unwrap().raw_samples = false;
        let _ = m.read();
        clock.advance(1_000_000);
        gpu.state.lock().unwrap().samples = vec![sample(4, T0 - 3_599_500_000, 70)];
        let r = m.read();
        assert_eq!(r.gpus[0].shares.by_pid, BTreeMap::from([(4, 0.70)]));
    }

    #[test]
    fn basis_is_stable_when_the_sample_period_exceeds_the_interval() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 0);
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        clock.advance(500_000);
        {
            let mut s = gpu.state.lock().unwrap();
            s.compute = vec![proc(8, Some(1 << 20)), proc(9, Some(1 << 20))];
            s.samples = vec![sample(8, T0 + 400_000, 60), sample(9, T0 + 400_000, 30)];
        }
        let r = m.read();
        assert_eq!((r.gpus[0].shares.basis, r.gpus[0].shares.carried), (BASIS_SM, false));
        // No new sample in the next interval (period longer than the interval): carried.
        clock.advance(500_000);
        let r = m.read();
        assert_eq!((r.gpus[0].shares.basis, r.gpus[0].shares.carried), (BASIS_SM, true));
        assert_eq!(r.gpus[0].shares.by_pid, BTreeMap::from([(8, 0.6), (9, 0.3)]));
        // A process that left the GPU is not carried.
        gpu.state.lock().unwrap().compute = vec![proc(8, Some(1 << 20))];
        clock.advance(500_000);
        assert_eq!(m.read().gpus[0].shares.by_pid, BTreeMap::from([(8, 0.6)]));
        // Long without a sample: no longer carried; memory instead.
        clock.advance(CARRY_MAX_US);
        let r = m.read();
        assert_eq!(r.gpus[0].shares.basis, BASIS_MEMORY);
    }

    #[test]
    fn used_memory_is_the_larger_of_compute_and_graphics_not_the_sum() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(3, 0);
        {
            let mut s = gpu.state.lock().unwrap();
            s.compute = vec![
                GpuProcess { pid: 100, used_memory: Some(3 << 30), gpu_instance: Some(1) },
                GpuProcess { pid: 200, used_memory: Some(1 << 30), gpu_instance: Some(2) },
                GpuProcess { pid: 300, used_memory: None, gpu_instance: Some(2) },
            ];
            // pid 200 also has a graphics context: the same allocation listed twice.
            s.graphics = vec![GpuProcess { pid: 200, used_memory: Some(1 << 30), gpu_instance: Some(2) }];
            s.samples_error = Some(GpuError::NotSupported); // MIG
        }
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        gpu.state.lock().unwrap().energy_mj = Some(1000);
        let r = m.read();
        let g = &r.gpus[0];
        assert_eq!(g.index, 3);
        assert_eq!(g.shares.basis, BASIS_MEMORY);
        assert_eq!(g.shares.by_pid, BTreeMap::from([(100, 0.75), (200, 0.25)]));
        assert_eq!(g.processes, 3);
        assert!(r.warnings[0].contains("not supported"), "{:?}", r.warnings);
    }

    #[test]
    fn samples_all_at_zero_sm_leave_the_shares_to_memory() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 0);
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        clock.advance(1_000_000);
        {
            let mut s = gpu.state.lock().unwrap();
            s.compute = vec![proc(21, Some(1 << 30))];
            s.samples = vec![ProcessSample { pid: 21, timestamp_us: T0 + 10, sm_util: 0, mem_util: 40 }];
        }
        let r = m.read();
        assert_eq!(r.gpus[0].shares.basis, BASIS_MEMORY);
        assert_eq!(r.gpus[0].shares.by_pid, BTreeMap::from([(21, 1.0)]));
    }

    #[test]
    fn contexts_without_a_memory_figure_share_equally() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 0);
        {
            let mut s = gpu.state.lock().unwrap();
            s.compute = vec![proc(1, None), proc(2, None)];
            s.utilization = Some(0.5);
        }
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        let r = m.read();
        assert_eq!(r.gpus[0].shares.basis, BASIS_PROCESSES);
        assert_eq!(r.gpus[0].shares.by_pid, BTreeMap::from([(1, 0.25), (2, 0.25)]));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // Nobody on the GPU: none.
        gpu.state.lock().unwrap().compute.clear();
        assert_eq!(m.read().gpus[0].shares.basis, BASIS_NONE);
    }

    #[test]
    fn mps_server_hiding_clients_is_said_once() {
        let clock = FakeClock::at(T0);
        let gpu = FakeGpu::counter(0, 0);
        {
            let mut s = gpu.state.lock().unwrap();
            s.compute = vec![proc(77, Some(1 << 30))];
            s.names.insert(77, "nvidia-cuda-mps-server".into());
        }
        let mut m = meter(std::slice::from_ref(&gpu), &clock);
        let r = m.read();
        assert!(r.warnings.iter().any(|w| w.contains("MPS server (pid 77)")), "{:?}", r.warnings);
        assert!(m.read().warnings.is_empty());
    }

    #[test]
    fn doctor_reports_persistence_mig_utilization_and_accounting() {
        let gpu = FakeGpu::counter(0, 12_500);
        {
            let mut s = gpu.state.lock().unwrap();
            s.persistence = false;
            s.mig = Some(MigState { current: true, pending: true });
            s.samples_error = Some(GpuError::NotSupported);
            s.accounting = Some(false);
        }
        let mut devices: Vec<Box<dyn GpuDevice>> = vec![Box::new(gpu.clone())];
        let c = doctor_checks(&mut devices, T0);
        let by = |n: &str| c.iter().find(|x| x.name == format!("GPU 0 {n}")).unwrap().clone();
        assert!(
            !by("persistence mode").ok && by("persistence mode").fix.unwrap().contains("nvidia-smi -pm 1")
        );
        assert!(!by("MIG mode").ok && by("MIG mode").detail.starts_with("enabled:"));
        assert!(by("per-process utilization").detail.starts_with("not supported"));
        assert!(by("accounting mode").detail.starts_with("off"));
        assert!(by("energy counter").detail.starts_with("12.5 J"));
        // A working query with no sample yet (NotFound) is "works", not "not supported".
        {
            let mut s = gpu.state.lock().unwrap();
            s.samples_error = None;
            s.persistence = true;
            s.mig = None;
        }
        let c = doctor_checks(&mut devices, T0);
        let by = |n: &str| c.iter().find(|x| x.name == format!("GPU 0 {n}")).unwrap().clone();
        assert!(
            by("per-process utilization").ok && by("per-process utilization").detail.starts_with("works (0")
        );
        assert!(by("persistence mode").ok && by("MIG mode").detail == "not supported by this GPU");
    }

    #[test]
    fn init_errors_say_what_to_do() {
        assert!(init_error_reason(&NvmlError::LibRmVersionMismatch).contains("reload the driver"));
        assert!(init_error_reason(&NvmlError::LibRmVersionMismatch).contains("reboot"));
        assert!(!init_error_reason(&NvmlError::LibRmVersionMismatch).contains("install"));
        assert!(init_error_reason(&NvmlError::LibraryNotFound).contains("no NVIDIA driver installed"));
        assert!(init_error_reason(&NvmlError::DriverNotLoaded).contains("not loaded"));
        let fix = |e: NvmlError| fix_for(&init_error_reason(&e));
        assert!(fix(NvmlError::LibRmVersionMismatch).contains("reload the driver or reboot"));
        assert!(fix(NvmlError::LibraryNotFound).contains("install the NVIDIA driver"));
        assert!(fix(NvmlError::DriverNotLoaded).contains("modprobe nvidia"));
    }

    #[test]
    fn nvml_errors_are_classified() {
        assert_eq!(GpuError::from(NvmlError::InsufficientSize(Some(3))), GpuError::InsufficientSize);
        assert_eq!(GpuError::from(NvmlError::GpuLost), GpuError::GpuLost);
        assert_eq!(
            GpuError::from(NvmlError::FailedToLoadSymbol("nvmlDeviceGetProcessUtilization".into())),
            GpuError::MissingSymbol("nvmlDeviceGetProcessUtilization".into())
        );
        assert_eq!(GpuError::from(NvmlError::NotSupported), GpuError::NotSupported);
        assert_eq!(GpuError::from(NvmlError::NoPermission), GpuError::NoPermission);
    }

    #[test]
    fn no_driver_is_a_reason_not_a_crash() {
        // Without an NVIDIA driver (this project's machines), opening NVML fails with a
        // reason, and so does the energy helper, with the same reason.
        if let Err(reason) = open_nvml() {
            assert!(!reason.is_empty());
            assert_eq!(nvml_total_energy_j(0).err().unwrap(), reason);
        }
    }
}
