//! The one place where the config file and the flags meet: each setting is the flag, else the
//! config file's key, else the default, merged once at start-up (and on `serve`'s reload). A
//! bad file or value stops the agent before it loads anything, and the error names the key or
//! the flag. Every flag has a key (`docs/` and [`crate::config`] list them).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    carbon::{CarbonArgs, CarbonOptions},
    cli::AgentArgs,
    config::{Config, StaticSharePolicy},
    energy::{EnergyArgs, EnergyConfig},
};

/// Default `--interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Everything the engine needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Length of one accounting interval.
    pub interval: Duration,
    /// What to load into the kernel.
    pub load: crate::probes::LoadOptions,
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
            interval: DEFAULT_INTERVAL,
            load: crate::probes::LoadOptions::default(),
            energy: EnergyConfig::default(),
            carbon: CarbonOptions::merge(&Default::default(), &CarbonArgs::default(), "(none)")
                .expect("the defaults are valid"),
            serve: Default::default(),
            config_path: None,
        }
    }
}

impl Settings {
    pub fn resolve(agent: &AgentArgs, energy: &EnergyArgs, carbon: &CarbonArgs) -> anyhow::Result<Self> {
        let (file, path) = Config::load(agent.config.config.as_deref())?;
        let origin = path.as_ref().map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
        Ok(Settings {
            interval: merge_interval(agent, &file),
            load: merge_load(agent, &file),
            energy: merge_energy(energy, &file),
            carbon: CarbonOptions::merge(&file.carbon, carbon, &origin).context("carbon settings")?,
            serve: file.serve.clone(),
            config_path: path,
        })
    }
}

/// `--interval`, else `agent.interval` (checked when the file was read), else 1 s.
pub fn merge_interval(args: &AgentArgs, file: &Config) -> Duration {
    args.interval
        .or_else(|| file.agent.interval.as_deref().and_then(|i| crate::cli::parse_interval(i).ok()))
        .unwrap_or(DEFAULT_INTERVAL)
}

/// The load flags with the config file's `[agent]` and `[io]` filling what they leave unset.
pub fn merge_load(args: &AgentArgs, file: &Config) -> crate::probes::LoadOptions {
    let defaults = crate::probes::LoadOptions::default();
    let io_on = !args.no_io && file.io.enabled != Some(false);
    crate::probes::LoadOptions {
        max_processes: args.max_processes.or(file.agent.max_processes).unwrap_or(defaults.max_processes),
        io: io_on.then(|| {
            let detail = args.io_detail.or(file.io.detail()).unwrap_or_default();
            crate::io::IoConfig {
                time_sampling: args
                    .io_time_sampling
                    .or(file.io.time_sampling)
                    .unwrap_or(detail.default_time_sampling()),
                ..crate::io::IoConfig::of(detail)
            }
        }),
        ..defaults
    }
}

/// The energy flags with the config file's `[energy]` filling what they leave unset. `--meter`
/// and `--no-gpu` at their defaults (`auto`, absent) leave the file's `meter` and `gpu` in force.
pub fn merge_energy(args: &EnergyArgs, file: &Config) -> EnergyConfig {
    use crate::attribution::StaticShare;
    let en = &file.energy;
    let mut merged = args.clone();
    if args.meter == crate::energy::MeterChoice::Auto
        && let Some(m) = en.meter.as_deref()
    {
        merged.meter =
            <crate::energy::MeterChoice as clap::ValueEnum>::from_str(m, false).unwrap_or_default();
    }
    merged.no_gpu = args.no_gpu || en.gpu == Some(false);
    merged.cpu_tdp_watts = args.cpu_tdp_watts.or(en.cpu_tdp_watts);
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
        let file = Config::parse("[energy]\nmeter = \"model\"\ngpu = false\ncpu_tdp_watts = 90\n", "t.toml")
            .unwrap();
        let e = merge_energy(&Args::parse_from(["x"]).energy, &file);
        let flagged = merge_energy(&Args::parse_from(["x", "--meter", "rapl-perf"]).energy, &file);
        assert_eq!(
            (e.meter, flagged.meter),
            (crate::energy::MeterChoice::Model, crate::energy::MeterChoice::RaplPerf)
        );
    }

    #[derive(Parser)]
    struct Agent {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn agent_and_io_keys_fill_what_the_flags_leave_unset() {
        let file = Config::parse(
            "[agent]\ninterval = \"250ms\"\nmax_processes = 4096\n[io]\ndetail = \"syscalls\"\ntime_sampling = 0.5\n",
            "t.toml",
        )
        .unwrap();
        let none = Agent::parse_from(["x"]).agent;
        assert_eq!(merge_interval(&none, &file), Duration::from_millis(250));
        let load = merge_load(&none, &file);
        assert_eq!(load.max_processes, 4096);
        let io = load.io.unwrap();
        assert_eq!((io.detail, io.time_sampling), (crate::io::IoDetail::Syscalls, 0.5));
        let flags = Agent::parse_from([
            "x",
            "--interval",
            "2s",
            "--max-processes",
            "2048",
            "--io-time-sampling",
            "1",
        ])
        .agent;
        assert_eq!(merge_interval(&flags, &file), Duration::from_secs(2));
        let load = merge_load(&flags, &file);
        assert_eq!((load.max_processes, load.io.unwrap().time_sampling), (2048, 1.0));
        // The flag's tier wins over the file's, and each tier has its own default sampling.
        let io = merge_load(&Agent::parse_from(["x", "--io-detail", "page-cache"]).agent, &file).io.unwrap();
        assert_eq!((io.detail, io.time_sampling), (crate::io::IoDetail::PageCache, 0.5));
        let io = merge_load(&none, &Config::default()).io.unwrap();
        assert_eq!((io.detail, io.time_sampling), (crate::io::IoDetail::PageCache, 0.01));
        let e = Config::parse("[io]\ndetail = \"everything\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("io.detail") && e.contains("page-cache, syscalls"), "{e}");
        let off = Config::parse("[io]\nenabled = false\n", "t.toml").unwrap();
        assert!(merge_load(&none, &off).io.is_none());
        assert!(merge_load(&Agent::parse_from(["x", "--no-io"]).agent, &file).io.is_none());
        let defaults = Config::default();
        assert_eq!(merge_interval(&none, &defaults), DEFAULT_INTERVAL);
        assert_eq!(merge_load(&none, &defaults).max_processes, 32768);
    }
}
