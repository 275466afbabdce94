//! The one place where the config file and the flags meet. The CLI turns the flags given into
//! config keys ([`crate::cli::Cli::overrides`]); they are laid over the file's keys
//! ([`Config::layered`]) and each setting is then that key, else its default, resolved once at
//! start-up (and on `serve`'s reload). A bad file or value stops the agent before it loads
//! anything, and the error names the key or the flag. Every flag has a key: `docs/config.md`
//! lists them, and a test in [`crate::cli`] fails for a flag without one.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    carbon::CarbonOptions,
    config::{Config, MAX_TOP_TREES},
    energy::EnergyConfig,
    report::ReportFormat,
};

/// Default `--interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default `--listen`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9586));
/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/carbon-agent";
/// Default `--top` of `run`.
pub const DEFAULT_RUN_TOP: usize = 10;
/// Default `--hash-budget` of `run`.
pub const DEFAULT_HASH_BUDGET: u64 = 1 << 30;
/// Default `--project-name` of `run`.
pub const DEFAULT_PROJECT_NAME: &str = "carbon-agent";

/// Everything the engine and the commands need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Length of one accounting interval.
    pub interval: Duration,
    /// What to load into the kernel.
    pub load: crate::probes::LoadOptions,
    pub energy: EnergyConfig,
    pub carbon: CarbonOptions,
    pub serve: ServeSettings,
    pub watch: WatchSettings,
    pub run: RunSettings,
    pub report: ReportFormat,
    /// The keys in force: the file's, with the flags laid over them.
    pub keys: Config,
    /// The config file that was read, if any.
    pub config_path: Option<PathBuf>,
}

/// `serve`'s own settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Process trees exported with a series of their own.
    pub top_trees: usize,
}

/// The mode without a subcommand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchSettings {
    /// Stop after this long (`None`: until interrupted).
    pub duration: Option<Duration>,
}

/// `run`'s own settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// How many of the largest processes the summary lists.
    pub top: usize,
    /// Bytes the agent may read to confirm duplicate files by content hash.
    pub hash_budget: u64,
    /// `project_name` of the CodeCarbon CSV row.
    pub project_name: String,
    /// Append one CodeCarbon CSV row to this file.
    pub csv: Option<PathBuf>,
}

/// Where the settings come from, kept to resolve them again (`serve`'s SIGHUP): the
/// `--config` given (else the default path, when it exists) and the flags' keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sources {
    pub config: Option<PathBuf>,
    pub flags: Config,
}

impl Sources {
    /// Reads the config file and lays the flags over it.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        Settings::resolve(self.config.as_deref(), &self.flags)
    }
}

impl Default for Settings {
    /// Every default: the estimation model or whatever meter `auto` finds, no location (the
    /// world average), default PUE. No config file is read.
    fn default() -> Self {
        Settings::from_layers(&Config::default(), None, &Config::default()).expect("the defaults are valid")
    }
}

impl Settings {
    /// Reads the config file (`config`, else the default path when it exists) and lays the
    /// flags' keys over it.
    pub fn resolve(config: Option<&Path>, flags: &Config) -> anyhow::Result<Self> {
        let (file, path) = Config::load(config)?;
        Self::from_layers(&file, path, flags)
    }

    /// The settings of `flags` laid over `file` (read from `path`), with defaults for the rest.
    pub fn from_layers(file: &Config, path: Option<PathBuf>, flags: &Config) -> anyhow::Result<Self> {
        let keys = file.layered(flags);
        let origin = path.as_ref().map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
        let pue_source =
            if flags.carbon.pue.is_some() { "--pue".to_string() } else { format!("config {origin}") };
        let top_trees = keys.serve.top_trees.unwrap_or(crate::engine::DEFAULT_TOP_TREES);
        if top_trees > MAX_TOP_TREES {
            anyhow::bail!("--top-trees / serve.top_trees = {top_trees}: at most {MAX_TOP_TREES}");
        }
        let duration = keys
            .watch
            .duration
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--duration / watch.duration: {e}"))?;
        Ok(Settings {
            interval: interval_of(&keys)?,
            load: load_of(&keys),
            energy: EnergyConfig::from_keys(&keys.energy),
            carbon: CarbonOptions::from_keys(&keys.carbon, &pue_source).context("carbon settings")?,
            serve: ServeSettings {
                listen: keys.serve.listen.unwrap_or(DEFAULT_LISTEN),
                state_dir: keys.serve.state_dir.clone().unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
                top_trees,
            },
            watch: WatchSettings { duration },
            run: RunSettings {
                top: keys.run.top.unwrap_or(DEFAULT_RUN_TOP),
                hash_budget: keys.run.hash_budget.unwrap_or(DEFAULT_HASH_BUDGET),
                project_name: keys.run.project_name.clone().unwrap_or_else(|| DEFAULT_PROJECT_NAME.into()),
                csv: keys.run.csv.clone(),
            },
            report: keys.report.format.unwrap_or_default(),
            keys,
            config_path: path,
        })
    }
}

/// `agent.interval` (`--interval`), else 1 s.
fn interval_of(keys: &Config) -> anyhow::Result<Duration> {
    match keys.agent.interval.as_deref() {
        Some(i) => parse_interval(i).map_err(|e| anyhow::anyhow!("--interval / agent.interval: {e}")),
        None => Ok(DEFAULT_INTERVAL),
    }
}

/// What to load, from `[agent]` and `[io]`.
fn load_of(keys: &Config) -> crate::probes::LoadOptions {
    let defaults = crate::probes::LoadOptions::default();
    crate::probes::LoadOptions {
        max_processes: keys.agent.max_processes.unwrap_or(defaults.max_processes),
        io: (keys.io.enabled != Some(false)).then(|| {
            let detail = keys.io.detail().unwrap_or_default();
            crate::io::IoConfig {
                time_sampling: keys.io.time_sampling.unwrap_or(detail.default_time_sampling()),
                ..crate::io::IoConfig::of(detail)
            }
        }),
        ..defaults
    }
}

/// A duration: seconds (`1.5`) or humantime (`500ms`, `2m`), longer than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if (0.0..1e12).contains(&secs) => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?} is not a positive duration")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 1s, 500ms, 2m"))?,
    };
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

/// An interval: a duration of at least 50 ms.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(50) {
        return Err(format!("an interval of {s} is too short: use at least 50ms"));
    }
    Ok(d)
}

/// A duration as [`parse_duration`] reads it back (`1s 500ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_interval("10ms").unwrap_err().contains("too short"));
        let d = Duration::from_millis(1500);
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = keys(
            "[energy]\nstatic_share = \"equal\"\ncpu_max_watts = 4.0\nmeter = \"model\"\n\
             [energy.idle_watts]\ncpu = 7\ndram = 2\n[agent]\ninterval = \"250ms\"\nmax_processes = 4096\n\
             [io]\ndetail = \"syscalls\"\ntime_sampling = 0.5\n[carbon]\npue = 1.3\n\
             [run]\ntop = 3\n[serve]\ntop_trees = 7\n",
        );
        let flags = keys(
            "[energy]\ncpu_max_watts = 5.0\nmeter = \"rapl-perf\"\n[energy.idle_watts]\ndram = 3\n\
             [agent]\ninterval = \"2s\"\n[io]\ndetail = \"page-cache\"\n[carbon]\npue = 1.1\n[run]\nhash_budget = 9\n",
        );
        let s = Settings::from_layers(&file, Some("f.toml".into()), &flags).unwrap();
        assert_eq!(s.energy.model.cpu_max_watts, Some(5.0));
        assert_eq!((s.energy.idle_watts.cpu, s.energy.idle_watts.dram), (Some(7.0), Some(3.0)));
        assert_eq!(s.energy.static_share, crate::attribution::StaticShare::Equal);
        assert_eq!(s.energy.meter, crate::energy::MeterChoice::RaplPerf);
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.load.max_processes, 4096);
        // The flag's tier wins over the file's; the file's sampling stays.
        let io = s.load.io.as_ref().unwrap();
        assert_eq!((io.detail, io.time_sampling), (crate::io::IoDetail::PageCache, 0.5));
        assert_eq!((s.carbon.pue.value, s.carbon.pue.source.as_str()), (1.1, "--pue"));
        assert_eq!((s.run.top, s.run.hash_budget, s.serve.top_trees), (3, 9, 7));

        let s = Settings::from_layers(&file, Some("f.toml".into()), &Config::default()).unwrap();
        assert_eq!((s.carbon.pue.value, s.carbon.pue.source.as_str()), (1.3, "config f.toml"));
        assert_eq!(s.energy.meter, crate::energy::MeterChoice::Model);
        assert_eq!(s.interval, Duration::from_millis(250));
        let io = s.load.io.as_ref().unwrap();
        assert_eq!((io.detail, io.time_sampling), (crate::io::IoDetail::Syscalls, 0.5));

        let d = Settings::default();
        assert_eq!(d.energy, EnergyConfig::default());
        assert_eq!((d.interval, d.load.max_processes), (DEFAULT_INTERVAL, 32768));
        let io = d.load.io.as_ref().unwrap();
        assert_eq!((io.detail, io.time_sampling), (crate::io::IoDetail::PageCache, 0.01));
        assert_eq!(d.serve.listen.to_string(), "127.0.0.1:9586");
        assert_eq!(
            (d.run.top, d.run.hash_budget, d.run.project_name.as_str()),
            (10, 1 << 30, "carbon-agent")
        );
        assert_eq!((d.watch.duration, d.report), (None, ReportFormat::Markdown));

        let off = keys("[io]\nenabled = false\n");
        assert!(Settings::from_layers(&file, None, &off).unwrap().load.io.is_none());
        let e = Config::parse("[io]\ndetail = \"everything\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("io.detail") && e.contains("page-cache, syscalls"), "{e}");
    }
}
