//! What machine this is, for reports.

use serde::Serialize;

use crate::procfs::{ProcFs, online_cpus};

#[derive(Clone, Debug, Default, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    /// Kernel name and release, e.g. `Linux 6.18.44`.
    pub os: String,
    pub cpu_model: Option<String>,
    pub cpu_count: u32,
    pub ram_total_bytes: Option<u64>,
    /// NVIDIA GPUs found through NVML.
    pub gpus: Vec<crate::energy::nvml::GpuInfo>,
}

impl HostInfo {
    pub fn read(procfs: &ProcFs) -> Self {
        // SAFETY: uname fills a zeroed struct.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        let (hostname, os) = if unsafe { libc::uname(&mut uts) } == 0 {
            let field = |f: &[libc::c_char]| {
                let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            (field(&uts.nodename), format!("{} {}", field(&uts.sysname), field(&uts.release)))
        } else {
            ("?".into(), "Linux".into())
        };
        HostInfo {
            hostname,
            os,
            cpu_model: procfs.cpu_model(),
            cpu_count: online_cpus(),
            ram_total_bytes: procfs.mem_total_bytes(),
            gpus: Vec::new(),
        }
    }
}

/// CPU sockets (distinct `physical id`s in `/proc/cpuinfo`), at least 1.
pub fn cpu_sockets(procfs: &ProcFs) -> u32 {
    let text = std::fs::read_to_string(procfs.root().join("cpuinfo")).unwrap_or_default();
    crate::energy::model::parse_cpuinfo(&text).packages
}
