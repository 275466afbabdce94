//! Energy configuration: [`EnergyConfig`], built from the `[energy]` keys of the config file
//! and the flags laid over them ([`EnergyConfig::from_keys`]).

use std::path::PathBuf;

use serde::Serialize;

use super::model::ModelOverrides;
use crate::attribution::StaticShare;

/// Which CPU-side meter to use (`--meter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeterChoice {
    /// perf power PMU, else powercap, else the model.
    #[default]
    Auto,
    /// RAPL through the perf power PMU only.
    RaplPerf,
    /// RAPL through powercap only.
    RaplPowercap,
    /// The estimation model only.
    Model,
}

impl MeterChoice {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [MeterChoice; 4] =
        [MeterChoice::Auto, MeterChoice::RaplPerf, MeterChoice::RaplPowercap, MeterChoice::Model];

    /// The choice named `name` (as [`MeterChoice::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterChoice::Auto => "auto",
            MeterChoice::RaplPerf => "rapl-perf",
            MeterChoice::RaplPowercap => "rapl-powercap",
            MeterChoice::Model => "model",
        }
    }
}

/// Static (idle) power per domain from `--idle-watts`, watts. `gpu` applies to each GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct IdleWatts {
    /// CPU packages (all sockets together).
    pub cpu: Option<f64>,
    /// Memory.
    pub dram: Option<f64>,
    /// Each GPU.
    pub gpu: Option<f64>,
    /// psys outside packages and dram.
    pub platform: Option<f64>,
}

/// Parses `cpu=12.5,dram=3,gpu=60,platform=2` (any subset, any order).
pub fn parse_idle_watts(s: &str) -> Result<IdleWatts, String> {
    let mut w = IdleWatts::default();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (domain, value) =
            item.split_once('=').ok_or_else(|| format!("{item:?}: expected DOMAIN=WATTS, e.g. cpu=12.5"))?;
        let watts: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{item:?}: {value:?} is not a non-negative number of watts"))?;
        let slot = match domain.trim() {
            "cpu" | "package" => &mut w.cpu,
            "dram" => &mut w.dram,
            "gpu" => &mut w.gpu,
            "platform" | "psys" => &mut w.platform,
            other => {
                return Err(format!(
                    "{item:?}: unknown domain {other:?} (expected cpu, dram, gpu or platform)"
                ));
            }
        };
        *slot = Some(watts);
    }
    Ok(w)
}

/// Everything the energy side needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnergyConfig {
    /// Root of sysfs (`/sys`); tests point it at fake trees.
    pub sysfs_root: PathBuf,
    /// Root of procfs (`/proc`), for `cpuinfo` and `meminfo`.
    pub proc_root: PathBuf,
    /// CPU-side meter choice.
    pub meter: MeterChoice,
    /// Whether to look for NVIDIA GPUs.
    pub gpu: bool,
    /// Configured static power; domains left unset are learned (or the model's).
    pub idle_watts: IdleWatts,
    /// How static energy is shared.
    pub static_share: StaticShare,
    /// Estimation model overrides.
    pub model: ModelOverrides,
    /// Utilization (0..1) at or below which an interval counts as "low" for learning static power.
    pub low_utilization: f64,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        Self {
            sysfs_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
            meter: MeterChoice::Auto,
            gpu: true,
            idle_watts: IdleWatts::default(),
            static_share: StaticShare::Proportional,
            model: ModelOverrides::default(),
            low_utilization: 0.05,
        }
    }
}

impl EnergyConfig {
    /// The configuration the `[energy]` keys describe (flags already laid over the file's).
    pub fn from_keys(keys: &crate::config::EnergyConfig) -> Self {
        let defaults = EnergyConfig::default();
        let w = &keys.idle_watts;
        EnergyConfig {
            sysfs_root: keys.sysfs_root.clone().unwrap_or(defaults.sysfs_root.clone()),
            proc_root: keys.proc_root.clone().unwrap_or(defaults.proc_root.clone()),
            meter: keys.meter.as_deref().and_then(MeterChoice::from_name).unwrap_or_default(),
            gpu: keys.gpu != Some(false),
            idle_watts: IdleWatts { cpu: w.cpu, dram: w.dram, gpu: w.gpu, platform: w.platform },
            static_share: keys.static_share.unwrap_or_default(),
            model: ModelOverrides {
                cpu_idle_watts: keys.cpu_idle_watts,
                cpu_max_watts: keys.cpu_max_watts,
                cpu_tdp_watts: keys.cpu_tdp_watts,
                dram_watts_per_gb: keys.dram_watts_per_gb,
            },
            ..defaults
        }
    }
}

/// Parses a number of watts ≥ 0 (the `--cpu-*-watts` flags).
pub fn parse_watts(s: &str) -> Result<f64, String> {
    s.parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a non-negative number of watts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keys_are_the_defaults_and_keys_map_one_to_one() {
        assert_eq!(EnergyConfig::from_keys(&Default::default()), EnergyConfig::default());
        let keys = crate::config::Config::parse(
            "[energy]\nsysfs_root = \"/tmp/fake\"\nstatic_share = \"equal\"\nmeter = \"model\"\n\
             gpu = false\ncpu_idle_watts = 1\ncpu_max_watts = 4.5\n[energy.idle_watts]\ncpu = 12.5\ndram = 3\n",
            "t.toml",
        )
        .unwrap()
        .energy;
        let c = EnergyConfig::from_keys(&keys);
        assert_eq!(c.sysfs_root, PathBuf::from("/tmp/fake"));
        assert_eq!(c.idle_watts, IdleWatts { cpu: Some(12.5), dram: Some(3.0), ..Default::default() });
        assert_eq!(c.static_share, StaticShare::Equal);
        assert_eq!(c.meter, MeterChoice::Model);
        assert!(!c.gpu);
        assert_eq!((c.model.cpu_idle_watts, c.model.cpu_max_watts), (Some(1.0), Some(4.5)));
    }

    #[test]
    fn bad_values_are_specific_errors() {
        assert!(parse_idle_watts("cpu").unwrap_err().contains("DOMAIN=WATTS"));
        assert!(parse_idle_watts("cpu=-1").unwrap_err().contains("non-negative"));
        assert!(parse_idle_watts("fan=3").unwrap_err().contains("unknown domain \"fan\""));
        assert!(parse_watts("NaN").is_err());
        assert_eq!(MeterChoice::from_name("rapl-perf"), Some(MeterChoice::RaplPerf));
        assert_eq!(MeterChoice::from_name("rapl"), None);
    }
}
