//! NVIDIA GPUs through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so` at run time).
//!
//! * **Energy**: the GPU's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`,
//!   mJ since driver load, Volta and newer) where it has one; otherwise the power reading
//!   (`nvmlDeviceGetPowerUsage`, mW) integrated over time with the trapezoid rule between
//!   reads.
//! * **Per-process shares**: NVML's per-process utilization samples
//!   (`nvmlDeviceGetProcessUtilization`) since the previous read; a process's share is
//!   its summed SM utilization over the summed SM utilization of all processes. Where
//!   there are no samples (MIG mode, where NVML does not support them, or no sample in the
//!   interval), the share is the process's used GPU memory over all processes' used
//!   memory (`nvmlDeviceGetComputeRunningProcesses`).
//! * **MIG**: energy is only metered per physical GPU. As root, the running-process list
//!   of the parent GPU handle aggregates the processes of all its MIG instances (each with
//!   its GPU/compute instance ids), so MIG instances are rolled up to their GPU.
//! * **No driver**: [`open_nvml`] returns an error string for `doctor`; nothing panics.
//!
//! Everything device-specific is behind [`GpuDevice`]; tests use a fake device.

use std::collections::BTreeMap;
use std::sync::Arc;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::{Domain, Measurement, MeterError, Resource};

/// What identifies a GPU.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
    /// CPU timestamp of the sample, µs.
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

/// One GPU as the meter needs it.
pub trait GpuDevice: Send {
    /// Index, name, UUID.
    fn info(&self) -> GpuInfo;
    /// Total energy since driver load in mJ; `Ok(None)` when the GPU has no such counter.
    fn total_energy_mj(&mut self) -> Result<Option<u64>, MeterError>;
    /// Current power draw in mW.
    fn power_mw(&mut self) -> Result<u32, MeterError>;
    /// Utilization samples newer than `since_us`; `Ok(None)` when not supported (MIG).
    fn process_samples(&mut self, since_us: u64) -> Result<Option<Vec<ProcessSample>>, MeterError>;
    /// Processes with a compute or graphics context on this GPU (all MIG instances).
    fn processes(&mut self) -> Result<Vec<GpuProcess>, MeterError>;
    /// GPU (SM) utilization over the driver's last sample period, 0..1; `None` if unknown.
    fn utilization(&mut self) -> Result<Option<f64>, MeterError>;
}

fn nvml_err(what: &str, e: NvmlError) -> MeterError {
    MeterError::Nvml(format!("{what}: {e}"))
}

/// A real GPU through NVML.
pub struct NvmlDevice {
    nvml: Arc<Nvml>,
    info: GpuInfo,
}

impl NvmlDevice {
    fn device(&self) -> Result<nvml_wrapper::Device<'_>, MeterError> {
        self.nvml.device_by_index(self.info.index).map_err(|e| nvml_err("device_by_index", e))
    }
}

impl GpuDevice for NvmlDevice {
    fn info(&self) -> GpuInfo {
        self.info.clone()
    }

    fn total_energy_mj(&mut self) -> Result<Option<u64>, MeterError> {
        match self.device()?.total_energy_consumption() {
            Ok(mj) => Ok(Some(mj)),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(nvml_err("total_energy_consumption", e)),
        }
    }

    fn power_mw(&mut self) -> Result<u32, MeterError> {
        self.device()?.power_usage().map_err(|e| nvml_err("power_usage", e))
    }

    fn process_samples(&mut self, since_us: u64) -> Result<Option<Vec<ProcessSample>>, MeterError> {
        match self.device()?.process_utilization_stats(since_us) {
            Ok(v) => Ok(Some(
                v.into_iter()
                    .map(|s| ProcessSample {
                        pid: s.pid,
                        timestamp_us: s.timestamp,
                        sm_util: s.sm_util,
                        mem_util: s.mem_util,
                    })
                    .collect(),
            )),
            // NotFound: no sample newer than the timestamp.
            Err(NvmlError::NotFound) => Ok(Some(Vec::new())),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(nvml_err("process_utilization_stats", e)),
        }
    }

    fn processes(&mut self) -> Result<Vec<GpuProcess>, MeterError> {
        let device = self.device()?;
        let mut out: BTreeMap<u32, GpuProcess> = BTreeMap::new();
        let lists = [device.running_compute_processes(), device.running_graphics_processes()];
        for list in lists {
            let list = match list {
                Ok(l) => l,
                Err(NvmlError::NotSupported) => continue,
                Err(e) => return Err(nvml_err("running processes", e)),
            };
            for p in list {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                };
                let entry = out.entry(p.pid).or_insert(GpuProcess {
                    pid: p.pid,
                    used_memory: None,
                    gpu_instance: None,
                });
                entry.used_memory = match (entry.used_memory, used) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
                entry.gpu_instance = entry.gpu_instance.or(p.gpu_instance_id);
            }
        }
        Ok(out.into_values().collect())
    }

    fn utilization(&mut self) -> Result<Option<f64>, MeterError> {
        match self.device()?.utilization_rates() {
            Ok(u) => Ok(Some(f64::from(u.gpu) / 100.0)),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(nvml_err("utilization_rates", e)),
        }
    }
}

/// Loads NVML and opens every GPU. The error (no driver, no GPU) is a reason for `doctor`.
pub fn open_nvml() -> Result<Vec<Box<dyn GpuDevice>>, String> {
    let nvml = Nvml::init().map_err(|e| match e {
        NvmlError::LibraryNotFound | NvmlError::LibloadingError(_) => {
            "libnvidia-ml.so not found: no NVIDIA driver installed".to_owned()
        }
        NvmlError::DriverNotLoaded => "NVIDIA driver not loaded".to_owned(),
        other => format!("NVML init failed: {other}"),
    })?;
    let nvml = Arc::new(nvml);
    let count = nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
    if count == 0 {
        return Err("NVML loaded but reports no GPU".to_owned());
    }
    let mut devices: Vec<Box<dyn GpuDevice>> = Vec::new();
    for index in 0..count {
        let d = nvml.device_by_index(index).map_err(|e| format!("NVML GPU {index}: {e}"))?;
        let info = GpuInfo {
            index,
            name: d.name().unwrap_or_else(|_| "unknown".to_owned()),
            uuid: d.uuid().unwrap_or_default(),
        };
        devices.push(Box::new(NvmlDevice { nvml: nvml.clone(), info }));
    }
    Ok(devices)
}

/// The GPU's total-energy counter in joules (since driver load), for `doctor --gpu-energy`
/// and `scripts/gpu-check.sh`. Errors when the GPU has no counter.
pub fn nvml_total_energy_j(index: u32) -> Result<f64, String> {
    let mut devices = open_nvml()?;
    let d = devices.get_mut(index as usize).ok_or_else(|| format!("no GPU with index {index}"))?;
    match d.total_energy_mj() {
        Ok(Some(mj)) => Ok(mj as f64 / 1000.0),
        Ok(None) => Err(format!("GPU {index} has no total-energy counter")),
        Err(e) => Err(e.to_string()),
    }
}

/// Per-process shares of one GPU in one interval, summing to 1 (or empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuShares {
    /// Share by tgid.
    pub by_pid: BTreeMap<u32, f64>,
    /// `"sm-utilization"`, `"memory"` or `"none"`.
    pub basis: &'static str,
}

/// Shares from utilization samples (SM), else from used memory; pure.
pub fn compute_shares(samples: Option<&[ProcessSample]>, processes: &[GpuProcess]) -> GpuShares {
    let mut by_pid: BTreeMap<u32, f64> = BTreeMap::new();
    if let Some(samples) = samples {
        for s in samples {
            *by_pid.entry(s.pid).or_default() += f64::from(s.sm_util);
        }
    }
    let total: f64 = by_pid.values().sum();
    if total > 0.0 {
        by_pid.retain(|_, v| *v > 0.0);
        by_pid.values_mut().for_each(|v| *v /= total);
        return GpuShares { by_pid, basis: "sm-utilization" };
    }
    let total_mem: u64 = processes.iter().filter_map(|p| p.used_memory).sum();
    if total_mem > 0 {
        let mut by_pid = BTreeMap::new();
        for p in processes {
            if let Some(m) = p.used_memory.filter(|m| *m > 0) {
                *by_pid.entry(p.pid).or_default() += m as f64 / total_mem as f64;
            }
        }
        return GpuShares { by_pid, basis: "memory" };
    }
    GpuShares { by_pid: BTreeMap::new(), basis: "none" }
}

struct DeviceState {
    device: Box<dyn GpuDevice>,
    info: GpuInfo,
    first_mj: Option<u64>,
    integrated_j: f64,
    last_power_w: Option<f64>,
    last_sample_us: u64,
}

/// What one NVML read gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReading {
    /// Cumulative joules per GPU (domain `gpu`).
    pub measurements: Vec<Measurement>,
    /// Per-process shares per GPU index for the interval since the previous read.
    pub shares: BTreeMap<u32, GpuShares>,
    /// GPUs whose energy is integrated power rather than the energy counter.
    pub integrated: Vec<u32>,
    /// GPU utilization (0..1) per GPU index, where NVML gives it.
    pub utilization: BTreeMap<u32, f64>,
}

/// The NVML meter over a set of devices.
pub struct NvmlMeter {
    devices: Vec<DeviceState>,
}

impl NvmlMeter {
    /// Opens the meter: takes each device's first energy value (or power sample).
    pub fn new(devices: Vec<Box<dyn GpuDevice>>) -> Result<Self, MeterError> {
        let mut states = Vec::new();
        for mut device in devices {
            let info = device.info();
            let first_mj = device.total_energy_mj()?;
            let last_power_w =
                if first_mj.is_none() { Some(f64::from(device.power_mw()?) / 1000.0) } else { None };
            // Start the sample window now: samples older than this are not ours.
            let last_sample_us = now_us();
            states.push(DeviceState {
                device,
                info,
                first_mj,
                integrated_j: 0.0,
                last_power_w,
                last_sample_us,
            });
        }
        Ok(Self { devices: states })
    }

    /// The GPUs metered.
    pub fn gpus(&self) -> Vec<GpuInfo> {
        self.devices.iter().map(|d| d.info.clone()).collect()
    }

    /// One line for `doctor`.
    pub fn describe(&self) -> String {
        let gpus: Vec<String> = self
            .devices
            .iter()
            .map(|d| {
                let how = if d.first_mj.is_some() { "energy counter" } else { "power sampling" };
                format!("GPU {} {} ({how})", d.info.index, d.info.name)
            })
            .collect();
        format!("NVML: {}", gpus.join(", "))
    }

    /// Reads every GPU: cumulative joules, and per-process shares since the previous read.
    pub fn read(&mut self, interval_s: f64) -> Result<GpuReading, MeterError> {
        let mut out = GpuReading::default();
        for d in &mut self.devices {
            let joules = match d.first_mj {
                Some(first) => {
                    let now = d.device.total_energy_mj()?.ok_or_else(|| {
                        MeterError::Nvml(format!("GPU {}: total-energy counter disappeared", d.info.index))
                    })?;
                    now.saturating_sub(first) as f64 / 1000.0
                }
                None => {
                    let p = f64::from(d.device.power_mw()?) / 1000.0;
                    let prev = d.last_power_w.unwrap_or(p);
                    d.integrated_j += (prev + p) / 2.0 * interval_s.max(0.0);
                    d.last_power_w = Some(p);
                    out.integrated.push(d.info.index);
                    d.integrated_j
                }
            };
            out.measurements.push(Measurement {
                resource: Resource::Gpu(d.info.index),
                domain: Domain::Gpu,
                joules,
            });
            let samples = d.device.process_samples(d.last_sample_us)?;
            if let Some(max) = samples.iter().flatten().map(|x| x.timestamp_us).max() {
                d.last_sample_us = d.last_sample_us.max(max);
            }
            if let Some(u) = d.device.utilization()? {
                out.utilization.insert(d.info.index, u);
            }
            let processes = d.device.processes()?;
            out.shares.insert(d.info.index, compute_shares(samples.as_deref(), &processes));
        }
        Ok(out)
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A GPU whose counters tests script.
    #[derive(Clone, Default)]
    pub struct FakeGpu {
        pub state: Arc<Mutex<FakeGpuState>>,
    }

    #[derive(Default)]
    pub struct FakeGpuState {
        pub index: u32,
        pub energy_mj: Option<u64>,
        pub power_mw: u32,
        pub samples: Option<Vec<ProcessSample>>,
        pub processes: Vec<GpuProcess>,
        pub utilization: Option<f64>,
    }

    impl GpuDevice for FakeGpu {
        fn info(&self) -> GpuInfo {
            let s = self.state.lock().unwrap();
            GpuInfo { index: s.index, name: "Fake H100".into(), uuid: format!("GPU-fake-{}", s.index) }
        }
        fn total_energy_mj(&mut self) -> Result<Option<u64>, MeterError> {
            Ok(self.state.lock().unwrap().energy_mj)
        }
        fn power_mw(&mut self) -> Result<u32, MeterError> {
            Ok(self.state.lock().unwrap().power_mw)
        }
        fn process_samples(&mut self, since_us: u64) -> Result<Option<Vec<ProcessSample>>, MeterError> {
            let s = self.state.lock().unwrap();
            Ok(s.samples.as_ref().map(|v| v.iter().filter(|x| x.timestamp_us > since_us).copied().collect()))
        }
        fn processes(&mut self) -> Result<Vec<GpuProcess>, MeterError> {
            Ok(self.state.lock().unwrap().processes.clone())
        }
        fn utilization(&mut self) -> Result<Option<f64>, MeterError> {
            Ok(self.state.lock().unwrap().utilization)
        }
    }

    fn sample(pid: u32, t: u64, sm: u32) -> ProcessSample {
        ProcessSample { pid, timestamp_us: t, sm_util: sm, mem_util: 0 }
    }

    #[test]
    fn energy_counter_and_sm_shares() {
        let gpu = FakeGpu::default();
        gpu.state.lock().unwrap().energy_mj = Some(5_000_000);
        let mut m = NvmlMeter::new(vec![Box::new(gpu.clone())]).unwrap();
        let t0 = m.devices[0].last_sample_us;
        {
            let mut s = gpu.state.lock().unwrap();
            s.energy_mj = Some(5_250_500);
            s.samples = Some(vec![
                sample(10, t0 + 1, 30),
                sample(11, t0 + 2, 10),
                sample(10, t0 + 3, 20),
                sample(9, t0 - 5, 99),
            ]);
        }
        let r = m.read(1.0).unwrap();
        assert_eq!(r.measurements[0].joules, 250.5);
        assert_eq!(r.measurements[0].resource, Resource::Gpu(0));
        let sh = &r.shares[&0];
        assert_eq!(sh.basis, "sm-utilization");
        assert_eq!(sh.by_pid, BTreeMap::from([(10, 50.0 / 60.0), (11, 10.0 / 60.0)]));
        assert!(r.integrated.is_empty());
        // Old samples are not counted twice: the window moved on.
        let r = m.read(1.0).unwrap();
        assert_eq!(r.shares[&0].basis, "none");
    }

    #[test]
    fn power_integration_without_counter() {
        let gpu = FakeGpu::default();
        gpu.state.lock().unwrap().power_mw = 100_000;
        let mut m = NvmlMeter::new(vec![Box::new(gpu.clone())]).unwrap();
        gpu.state.lock().unwrap().power_mw = 300_000;
        let r = m.read(2.0).unwrap();
        assert_eq!(r.measurements[0].joules, 400.0); // (100 + 300) / 2 × 2 s
        assert_eq!(r.integrated, vec![0]);
        let r = m.read(1.0).unwrap();
        assert_eq!(r.measurements[0].joules, 700.0);
    }

    #[test]
    fn mig_falls_back_to_memory_shares_rolled_up_to_the_gpu() {
        let gpu = FakeGpu::default();
        {
            let mut s = gpu.state.lock().unwrap();
            s.index = 3;
            s.energy_mj = Some(0);
            s.samples = None; // MIG: not supported
            s.processes = vec![
                GpuProcess { pid: 100, used_memory: Some(3 << 30), gpu_instance: Some(1) },
                GpuProcess { pid: 200, used_memory: Some(1 << 30), gpu_instance: Some(2) },
                GpuProcess { pid: 300, used_memory: None, gpu_instance: Some(2) },
            ];
        }
        let mut m = NvmlMeter::new(vec![Box::new(gpu.clone())]).unwrap();
        gpu.state.lock().unwrap().energy_mj = Some(1000);
        let r = m.read(1.0).unwrap();
        assert_eq!(r.measurements[0].resource, Resource::Gpu(3));
        assert_eq!(r.shares[&3].basis, "memory");
        assert_eq!(r.shares[&3].by_pid, BTreeMap::from([(100, 0.75), (200, 0.25)]));
    }

    #[test]
    fn shares_are_empty_without_any_signal() {
        let s = compute_shares(
            Some(&[sample(1, 1, 0)]),
            &[GpuProcess { pid: 1, used_memory: None, gpu_instance: None }],
        );
        assert!(s.by_pid.is_empty());
        assert_eq!(s.basis, "none");
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
