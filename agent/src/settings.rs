//! Settings from the config file and the flags, merged once at start-up: flag, else config
//! file, else default. A bad file or value stops the agent before it loads anything.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    carbon::{CarbonArgs, CarbonOptions},
    config::{Config, ConfigArgs, StaticSharePolicy},
    energy::{EnergyArgs, EnergyConfig},
};

/// Everything the pipeline stages after usage need.
#[derive(Clone, Debug)]
pub struct Settings {
    pub energy: EnergyConfig,
    pub carbon: CarbonOptions,
    /// The config file's `[serve]` (flags are merged by `serve`).
    pub serve: crate::config::ServeConfig,
    /// The config file that was read, if any.
    pub config_path: Option<PathBuf>,
}

impl Default for Settings {
    /// Every default: the estimation model or whatever meter `auto` finds, no location (the
    /// world average), default PUE. No config file is read.
    fn default() -> Self {
        Settings {
            energy: EnergyConfig::default(),
            carbon: CarbonOptions::merge(&Default::default(), &CarbonArgs::default(), "(none)")
                .expect("the defaults are valid"),
            serve: Default::default(),
            config_path: None,
        }
    }
}

impl Settings {
    pub fn resolve(config: &ConfigArgs, energy: &EnergyArgs, carbon: &CarbonArgs) -> anyhow::Result<Self> {
        let (file, path) = Config::load(config.config.as_deref())?;
        let origin = path.as_ref().map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
        Ok(Settings {
            energy: merge_energy(energy, &file),
            carbon: CarbonOptions::merge(&file.carbon, carbon, &origin).context("carbon settings")?,
            serve: file.serve.clone(),
            config_path: path,
        })
    }
}

/// The energy flags with the config file's `[energy]` filling what they leave unset.
pub fn merge_energy(args: &EnergyArgs, file: &Config) -> EnergyConfig {
    use crate::attribution::StaticShare;
    let en = &file.energy;
    let mut merged = args.clone();
    merged.sysfs_root = args.sysfs_root.clone().or_else(|| en.sysfs_root.clone());
    merged.static_share = args.static_share.or(en.static_share.map(|p| match p {
        StaticSharePolicy::Proportional => StaticShare::Proportional,
        StaticSharePolicy::Equal => StaticShare::Equal,
        StaticSharePolicy::None => StaticShare::None,
    }));
    merged.cpu_idle_watts = args.cpu_idle_watts.or(en.cpu_idle_watts);
    merged.cpu_max_watts = args.cpu_max_watts.or(en.cpu_max_watts);
    merged.dram_watts_per_gb = args.dram_watts_per_gb.or(en.dram_watts_per_gb);
    let mut idle = args.idle_watts.unwrap_or_default();
    idle.cpu = idle.cpu.or(en.idle_watts.cpu);
    idle.dram = idle.dram.or(en.idle_watts.dram);
    idle.gpu = idle.gpu.or(en.idle_watts.gpu);
    merged.idle_watts = Some(idle);
    merged.config()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        energy: EnergyArgs,
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = Config::parse(
            "[energy]\nstatic_share = \"equal\"\ncpu_max_watts = 4.0\n[energy.idle_watts]\ncpu = 7\ndram = 2\n",
            "test.toml",
        )
        .unwrap();
        let args = Args::parse_from(["x", "--cpu-max-watts", "5", "--idle-watts", "dram=3"]).energy;
        let e = merge_energy(&args, &file);
        assert_eq!(e.model.cpu_max_watts, Some(5.0));
        assert_eq!(e.idle_watts.cpu, Some(7.0));
        assert_eq!(e.idle_watts.dram, Some(3.0));
        assert_eq!(e.static_share, crate::attribution::StaticShare::Equal);
        let none = merge_energy(&Args::parse_from(["x"]).energy, &Config::default());
        assert_eq!(none, EnergyConfig::default());
    }
}
