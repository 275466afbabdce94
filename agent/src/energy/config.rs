//! Energy configuration and its command-line flags ([`EnergyArgs`], flattened into the
//! agent's commands with `#[command(flatten)]`; each flag maps 1:1 to [`EnergyConfig`]).

use std::path::PathBuf;

use serde::Serialize;

use super::model::ModelOverrides;
use crate::attribution::StaticShare;

/// Which CPU-side meter to use (`--meter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
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

fn parse_watts(s: &str) -> Result<f64, String> {
    s.parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a non-negative number of watts"))
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

/// The energy flags, for `#[command(flatten)]`.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct EnergyArgs {
    /// Read energy meters under this sysfs root instead of /sys [default: /sys]
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// Read cpuinfo and meminfo under this procfs root instead of /proc.
    #[arg(long, value_name = "DIR", default_value = "/proc", hide = true)]
    pub proc_root: PathBuf,
    /// CPU energy meter: auto = perf power PMU, else powercap, else the estimation model.
    #[arg(long, value_enum, value_name = "METER", default_value_t = MeterChoice::Auto)]
    pub meter: MeterChoice,
    /// Do not look for NVIDIA GPUs.
    #[arg(long)]
    pub no_gpu: bool,
    /// Static (idle) power per domain, e.g. cpu=12.5,dram=3,gpu=60 (gpu: per GPU). Domains
    /// not given are learned as the minimum power at low utilization (or the model's idle figures).
    #[arg(long, value_name = "DOMAIN=W,...", value_parser = parse_idle_watts)]
    pub idle_watts: Option<IdleWatts>,
    /// How static energy is shared: proportional to busy CPU time, equally among active
    /// processes, or none (all to the idle bucket) [default: proportional]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub static_share: Option<StaticShare>,
    /// Estimation model: idle power of one logical CPU, W.
    #[arg(long, value_name = "W", value_parser = parse_watts)]
    pub cpu_idle_watts: Option<f64>,
    /// Estimation model: full-load power of one logical CPU, W.
    #[arg(long, value_name = "W", value_parser = parse_watts)]
    pub cpu_max_watts: Option<f64>,
    /// Estimation model: TDP of one CPU package, W (full load = TDP / threads per package, idle = 10%).
    #[arg(long, value_name = "W", value_parser = parse_watts)]
    pub cpu_tdp_watts: Option<f64>,
    /// Estimation model: DRAM power per GB of installed memory (default 0.392, Cloud Carbon Footprint).
    #[arg(long, value_name = "W", value_parser = parse_watts)]
    pub dram_watts_per_gb: Option<f64>,
}

impl EnergyArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> EnergyConfig {
        EnergyConfig {
            sysfs_root: self.sysfs_root.clone().unwrap_or_else(|| PathBuf::from("/sys")),
            proc_root: self.proc_root.clone(),
            meter: self.meter,
            gpu: !self.no_gpu,
            idle_watts: self.idle_watts.unwrap_or_default(),
            static_share: self.static_share.unwrap_or(StaticShare::Proportional),
            model: ModelOverrides {
                cpu_idle_watts: self.cpu_idle_watts,
                cpu_max_watts: self.cpu_max_watts,
                cpu_tdp_watts: self.cpu_tdp_watts,
                dram_watts_per_gb: self.dram_watts_per_gb,
            },
            ..EnergyConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        energy: EnergyArgs,
    }

    #[test]
    fn defaults_match_energy_config_default() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.energy.config(), EnergyConfig::default());
    }

    #[test]
    fn flags_map_one_to_one() {
        let cli = Cli::try_parse_from([
            "x",
            "--sysfs-root",
            "/tmp/fake",
            "--idle-watts",
            "cpu=12.5,dram=3",
            "--static-share",
            "equal",
            "--meter",
            "model",
            "--no-gpu",
            "--cpu-idle-watts",
            "1",
            "--cpu-max-watts",
            "4.5",
        ])
        .unwrap();
        let c = cli.energy.config();
        assert_eq!(c.sysfs_root, PathBuf::from("/tmp/fake"));
        assert_eq!(c.idle_watts, IdleWatts { cpu: Some(12.5), dram: Some(3.0), ..Default::default() });
        assert_eq!(c.static_share, StaticShare::Equal);
        assert_eq!(c.meter, MeterChoice::Model);
        assert!(!c.gpu);
        assert_eq!((c.model.cpu_idle_watts, c.model.cpu_max_watts), (Some(1.0), Some(4.5)));
    }

    #[test]
    fn bad_flags_are_specific_errors() {
        assert!(parse_idle_watts("cpu").unwrap_err().contains("DOMAIN=WATTS"));
        assert!(parse_idle_watts("cpu=-1").unwrap_err().contains("non-negative"));
        assert!(parse_idle_watts("fan=3").unwrap_err().contains("unknown domain \"fan\""));
        assert!(Cli::try_parse_from(["x", "--static-share", "fair"]).is_err());
        assert!(Cli::try_parse_from(["x", "--cpu-max-watts", "NaN"]).is_err());
    }
}
