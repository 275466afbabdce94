//! The TOML config file (`--config FILE`, default `/etc/carbon-agent/config.toml` when it
//! exists). Every key is optional. Every flag of the CLI is one of these keys: the CLI turns
//! the flags given into a [`Config`] of its own ([`crate::cli::Cli::overrides`]), laid over the
//! file's with [`Config::layered`], so that each setting is the flag, else the file's key, else
//! the default ([`crate::settings`]). `docs/config.md` lists every key with its flag and
//! default. Unknown keys, wrong types and bad values are errors that name the key and what is
//! expected, and the agent does not start.
//!
//! ```toml
//! [agent]
//! interval = "1s"
//! max_processes = 32768
//!
//! [io]
//! enabled = true
//! detail = "page-cache"     # or "syscalls"
//! time_sampling = 0.01
//!
//! [carbon]
//! pue = 1.2
//! country = "FRA"            # or region = "aws:eu-west-3", or intensity = 56
//! intensity_csv = "/var/lib/grid/fr-2024.csv"
//!
//! [carbon.provider]          # Electricity Maps; token from ELECTRICITYMAPS_TOKEN
//! enabled = true
//! zone = "FR"
//! timeout_s = 5
//! cache_s = 900
//!
//! [carbon.embodied]
//! server_kgco2e = 1500
//! server_lifetime_years = 5
//! gpu_kgco2e = 150
//!
//! [energy]
//! meter = "auto"                # or "rapl-perf", "rapl-powercap", "model"
//! gpu = true
//! cpu_tdp_watts = 120           # estimation model
//! sysfs_root = "/sys"
//! static_share = "proportional"   # or "equal", "none"
//! cpu_idle_watts = 1.0           # estimation model, per logical CPU
//! cpu_max_watts = 3.8
//! dram_watts_per_gb = 0.3725
//! [energy.idle_watts]
//! cpu = 15
//! dram = 3
//! gpu = 40
//! platform = 2
//!
//! [serve]
//! listen = "127.0.0.1:9586"
//! state_dir = "/var/lib/carbon-agent"
//! top_trees = 20
//!
//! [watch]                       # no subcommand: the live view, plain or JSON lines
//! duration = "10m"
//!
//! [run]
//! top = 10
//! hash_budget = 1073741824
//! project_name = "carbon-agent"
//! csv = "/home/me/emissions.csv"
//!
//! [report]
//! format = "markdown"           # or "latex"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{attribution::StaticShare, carbon::EmbodiedOverrides};

/// The most process trees the exporter gives a series of their own (bounded cardinality).
pub const MAX_TOP_TREES: usize = 1000;

/// The default config path, read when it exists and no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/carbon-agent/config.toml";

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub io: IoConfig,
    #[serde(default)]
    pub carbon: CarbonConfig,
    #[serde(default)]
    pub energy: EnergyConfig,
    #[serde(default)]
    pub serve: ServeConfig,
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub report: ReportConfig,
}

/// `[watch]`: the mode without a subcommand (as `--duration`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Stop after this long, e.g. "30s", "5m" [default: until interrupted].
    pub duration: Option<String>,
}

/// `[run]`: `carbon-agent run` (as `--top`, `--hash-budget`, `--project-name`, `--csv`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// How many of the largest processes the summary lists [default: 10].
    pub top: Option<usize>,
    /// Bytes the agent may read to confirm duplicate files by content hash [default: 1 GiB].
    pub hash_budget: Option<u64>,
    /// `project_name` of the CodeCarbon CSV row [default: carbon-agent].
    pub project_name: Option<String>,
    /// Append one CodeCarbon CSV row per run to this file.
    pub csv: Option<PathBuf>,
}

/// `[report]`: `carbon-agent report` (as `--format`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    pub format: Option<crate::report::ReportFormat>,
}

/// `[agent]`: what every mode shares (as `--interval`, `--max-processes`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Length of one accounting interval, e.g. "1s", "500ms" (at least 50ms).
    pub interval: Option<String>,
    /// Capacity of the kernel's per-process CPU map.
    pub max_processes: Option<u32>,
}

/// `[io]`: I/O accounting (as `--no-io`, `--io-detail`, `--io-time-sampling`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    /// Attach the I/O programs [default: true].
    pub enabled: Option<bool>,
    /// The I/O tier: `page-cache` or `syscalls` [default: page-cache].
    pub detail: Option<String>,
    /// Share of time the I/O syscalls are timed, in (0, 1].
    pub time_sampling: Option<f64>,
}

impl IoConfig {
    /// The tier named by `detail` (checked when the file was read).
    pub fn detail(&self) -> Option<crate::io::IoDetail> {
        self.detail.as_deref().and_then(crate::io::IoDetail::from_name)
    }
}

/// `[serve]`: the always-on mode (`carbon-agent serve`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address of the metrics endpoint [default: 127.0.0.1:9586].
    pub listen: Option<std::net::SocketAddr>,
    /// Where `serve` keeps what must outlive it [default: /var/lib/carbon-agent].
    pub state_dir: Option<PathBuf>,
    /// Process trees exported with a series of their own [default: 20].
    pub top_trees: Option<usize>,
}

/// `[carbon]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonConfig {
    pub pue: Option<f64>,
    pub country: Option<String>,
    pub region: Option<String>,
    /// gCO2e/kWh for the whole run.
    pub intensity: Option<f64>,
    pub intensity_csv: Option<PathBuf>,
    #[serde(default)]
    pub provider: ProviderConfig,
    #[serde(default)]
    pub embodied: EmbodiedOverrides,
}

/// `[carbon.provider]`: the live intensity provider (Electricity Maps).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Ask the provider when a token is set (default true).
    pub enabled: Option<bool>,
    /// API base URL [default: <https://api.electricitymap.org/v3>].
    pub base_url: Option<String>,
    /// Electricity Maps zone (default: derived from country/region).
    pub zone: Option<String>,
    /// Request timeout, seconds [default: 5].
    pub timeout_s: Option<f64>,
    /// How long a reading is reused, seconds [default: 900].
    pub cache_s: Option<f64>,
}

/// `[energy.idle_watts]`: static power per domain, watts.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdleWatts {
    pub cpu: Option<f64>,
    pub dram: Option<f64>,
    pub gpu: Option<f64>,
    /// psys outside packages and dram.
    pub platform: Option<f64>,
}

/// `[energy]`: settings of the energy meters and attribution.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyConfig {
    /// `auto`, `rapl-perf`, `rapl-powercap` or `model` (as `--meter`).
    pub meter: Option<String>,
    /// Read NVIDIA GPUs through NVML [default: true] (as `--no-gpu`).
    pub gpu: Option<bool>,
    /// Estimation model: the CPU's TDP, watts (as `--cpu-tdp-watts`).
    pub cpu_tdp_watts: Option<f64>,
    pub sysfs_root: Option<PathBuf>,
    /// Root of procfs for cpuinfo and meminfo (tests point it at fake trees) [default: /proc].
    pub proc_root: Option<PathBuf>,
    /// How static energy is shared: `proportional`, `equal` or `none` (as `--static-share`).
    pub static_share: Option<StaticShare>,
    #[serde(default)]
    pub idle_watts: IdleWatts,
    /// Estimation model: power of one logical CPU at idle and at full load, watts (as the
    /// `--cpu-idle-watts` / `--cpu-max-watts` flags).
    pub cpu_idle_watts: Option<f64>,
    pub cpu_max_watts: Option<f64>,
    /// Estimation model: DRAM watts per GB installed.
    pub dram_watts_per_gb: Option<f64>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("config file {path}: {key} = {value}: expected {expected}")]
    Value { path: String, key: String, value: String, expected: String },
}

impl Config {
    /// Loads `path`, or the default path when it exists, or the empty config. Returns the
    /// file actually read.
    pub fn load(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let d = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !d.exists() {
                    return Ok((Self::default(), None));
                }
                d
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        Ok((config, Some(path)))
    }

    /// Parses and checks config text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, expected: &str| ConfigError::Value {
            path: origin.to_string(),
            key: key.to_string(),
            value,
            expected: expected.to_string(),
        };
        let check = |key: &str, v: Option<f64>, ok: fn(f64) -> bool, expected: &str| match v {
            Some(v) if !(v.is_finite() && ok(v)) => Err(bad(key, v.to_string(), expected)),
            _ => Ok(()),
        };
        let c = &self.carbon;
        check("carbon.pue", c.pue, |v| v >= 1.0, "a number ≥ 1.0 (facility energy / IT energy)")?;
        check("carbon.intensity", c.intensity, |v| v >= 0.0, "gCO2e/kWh, a number ≥ 0")?;
        check("carbon.provider.timeout_s", c.provider.timeout_s, |v| v > 0.0, "seconds, a number > 0")?;
        check("carbon.provider.cache_s", c.provider.cache_s, |v| v >= 0.0, "seconds, a number ≥ 0")?;
        let e = &c.embodied;
        check("carbon.embodied.server_kgco2e", e.server_kgco2e, |v| v >= 0.0, "kgCO2e, a number ≥ 0")?;
        check("carbon.embodied.gpu_kgco2e", e.gpu_kgco2e, |v| v >= 0.0, "kgCO2e, a number ≥ 0")?;
        check(
            "carbon.embodied.server_lifetime_years",
            e.server_lifetime_years,
            |v| v > 0.0,
            "years, a number > 0",
        )?;
        check(
            "carbon.embodied.gpu_lifetime_years",
            e.gpu_lifetime_years,
            |v| v > 0.0,
            "years, a number > 0",
        )?;
        if c.country.is_some() && c.region.is_some() {
            return Err(bad(
                "carbon.country",
                format!(
                    "{:?} with carbon.region = {:?}",
                    c.country.as_deref().unwrap_or(""),
                    c.region.as_deref().unwrap_or("")
                ),
                "only one of carbon.country and carbon.region",
            ));
        }
        if let Some(country) = &c.country {
            crate::carbon::tables::lookup_country(country)
                .map_err(|err| bad("carbon.country", format!("{country:?}"), &err.hint))?;
        }
        if let Some(region) = &c.region {
            crate::carbon::tables::lookup_region(region)
                .map_err(|err| bad("carbon.region", format!("{region:?}"), &err.hint))?;
        }
        if let Some(url) = &c.provider.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad("carbon.provider.base_url", format!("{url:?}"), "an http:// or https:// URL"));
        }
        if let Some(i) = &self.agent.interval {
            crate::settings::parse_interval(i).map_err(|e| bad("agent.interval", format!("{i:?}"), &e))?;
        }
        if let Some(n) = self.agent.max_processes
            && !(1024..=4_194_304).contains(&n)
        {
            return Err(bad("agent.max_processes", n.to_string(), "a number in 1024..=4194304"));
        }
        if let Some(d) = &self.io.detail
            && self.io.detail().is_none()
        {
            return Err(bad("io.detail", format!("{d:?}"), "one of page-cache, syscalls"));
        }
        check(
            "io.time_sampling",
            self.io.time_sampling,
            |v| v > 0.0 && v <= 1.0,
            "a share in (0, 1], e.g. 0.05",
        )?;
        let en = &self.energy;
        if let Some(m) = &en.meter {
            crate::energy::MeterChoice::from_name(m).ok_or_else(|| {
                bad("energy.meter", format!("{m:?}"), "one of auto, rapl-perf, rapl-powercap, model")
            })?;
        }
        check("energy.cpu_tdp_watts", en.cpu_tdp_watts, |v| v > 0.0, "watts, a number > 0")?;
        let watts = "watts, a number ≥ 0";
        check("energy.idle_watts.cpu", en.idle_watts.cpu, |v| v >= 0.0, watts)?;
        check("energy.idle_watts.dram", en.idle_watts.dram, |v| v >= 0.0, watts)?;
        check("energy.idle_watts.gpu", en.idle_watts.gpu, |v| v >= 0.0, watts)?;
        check("energy.idle_watts.platform", en.idle_watts.platform, |v| v >= 0.0, watts)?;
        check("energy.cpu_idle_watts", en.cpu_idle_watts, |v| v >= 0.0, watts)?;
        check("energy.cpu_max_watts", en.cpu_max_watts, |v| v > 0.0, "watts, a number > 0")?;
        check("energy.dram_watts_per_gb", en.dram_watts_per_gb, |v| v >= 0.0, "watts per GB, a number ≥ 0")?;
        if let Some(n) = self.serve.top_trees
            && n > MAX_TOP_TREES
        {
            return Err(bad("serve.top_trees", n.to_string(), &format!("at most {MAX_TOP_TREES}")));
        }
        if let Some(d) = &self.watch.duration {
            crate::settings::parse_duration(d).map_err(|e| bad("watch.duration", format!("{d:?}"), &e))?;
        }
        if let (Some(idle), Some(max)) = (en.cpu_idle_watts, en.cpu_max_watts)
            && idle > max
        {
            return Err(bad("energy.cpu_idle_watts", idle.to_string(), "at most energy.cpu_max_watts"));
        }
        Ok(())
    }

    /// `top` laid over `self`: every key `top` sets replaces `self`'s, the others stay (a
    /// location, `carbon.country` or `carbon.region`, replaces both of `self`'s). Used for the
    /// flags over the file.
    pub fn layered(&self, top: &Config) -> Config {
        let mut base = self.clone();
        if top.carbon.country.is_some() || top.carbon.region.is_some() {
            (base.carbon.country, base.carbon.region) = (None, None);
        }
        let (Ok(mut merged), Ok(over)) = (serde_json::to_value(&base), serde_json::to_value(top)) else {
            // Plain data always serializes; keep the file's settings if it ever did not.
            return base;
        };
        overlay(&mut merged, over);
        serde_json::from_value(merged).unwrap_or(base)
    }

    /// Every key that is set, dotted (`carbon.provider.zone`), with its value as JSON text.
    pub fn keys(&self) -> std::collections::BTreeMap<String, String> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        walk(&key, v, out);
                    }
                }
                serde_json::Value::Null => {}
                other => {
                    out.insert(prefix.to_string(), other.to_string());
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        if let Ok(v) = serde_json::to_value(self) {
            walk("", &v, &mut out);
        }
        out
    }

    /// The keys that are set, as TOML text that [`Config::parse`] reads back.
    pub fn to_toml(&self) -> String {
        fn strip(v: &mut serde_json::Value) {
            if let serde_json::Value::Object(map) = v {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
        }
        let mut v = serde_json::to_value(self).unwrap_or_default();
        strip(&mut v);
        toml::to_string(&v).unwrap_or_default()
    }
}

/// Lays the non-null values of `top` over `base`, recursively through objects.
fn overlay(base: &mut serde_json::Value, top: serde_json::Value) {
    match (base, top) {
        (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, serde_json::Value::Null) => {}
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "c.toml").unwrap_err().to_string()
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
            [carbon]
            pue = 1.2
            country = "FRA"
            intensity_csv = "/var/lib/grid.csv"
            [carbon.provider]
            zone = "FR"
            timeout_s = 2.5
            [carbon.embodied]
            server_kgco2e = 1500
            server_lifetime_years = 5
            [energy]
            sysfs_root = "/tmp/sys"
            static_share = "equal"
            cpu_idle_watts = 20
            cpu_max_watts = 120
            [energy.idle_watts]
            cpu = 15
            "#,
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.carbon.pue, Some(1.2));
        assert_eq!(c.carbon.provider.timeout_s, Some(2.5));
        assert_eq!(c.carbon.embodied.server_kgco2e, Some(1500.0));
        assert_eq!(c.energy.static_share, Some(StaticShare::Equal));
        assert_eq!(c.energy.idle_watts.cpu, Some(15.0));
        assert_eq!(Config::parse("", "c.toml").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[carbon]\npeu = 1.2\n");
        assert!(e.starts_with("config file c.toml:"), "{e}");
        assert!(e.contains("unknown field `peu`") && e.contains("`pue`"), "{e}");
        let e = err("[carbon.embodied]\nserver_kg = 3\n");
        assert!(e.contains("unknown field `server_kg`"), "{e}");
        let e = err("[carbn]\n");
        assert!(e.contains("unknown field `carbn`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err("[carbon]\npue = \"high\"\n");
        assert!(e.contains("pue") && e.contains("line 2"), "{e}");
        let e = err("[energy]\nstatic_share = \"fair\"\n");
        assert!(e.contains("unknown variant `fair`") && e.contains("proportional"), "{e}");
        assert!(err("[carbon\n").contains("config file c.toml:"));
    }

    #[test]
    fn bad_values_name_key_and_expectation() {
        assert_eq!(
            err("[carbon]\npue = 0.9\n"),
            "config file c.toml: carbon.pue = 0.9: expected a number ≥ 1.0 (facility energy / IT energy)"
        );
        assert!(err("[carbon]\nintensity = -1\n").contains("carbon.intensity = -1: expected gCO2e/kWh"));
        let e = err("[carbon]\ncountry = \"Atlantis\"\n");
        assert!(e.contains("carbon.country = \"Atlantis\": expected an ISO 3166-1 code"), "{e}");
        let e = err("[carbon]\nregion = \"aws:nowhere-1\"\n");
        assert!(e.contains("carbon.region = \"aws:nowhere-1\"") && e.contains("aws regions"), "{e}");
        assert!(err("[carbon]\ncountry = \"FRA\"\nregion = \"aws:eu-west-3\"\n").contains("only one of"));
        assert!(err("[carbon.embodied]\nserver_lifetime_years = 0\n").contains("years, a number > 0"));
        assert!(err("[carbon.provider]\nbase_url = \"ftp://x\"\n").contains("an http:// or https:// URL"));
        assert!(
            err("[energy]\ncpu_idle_watts = 200\ncpu_max_watts = 100\n")
                .contains("at most energy.cpu_max_watts")
        );
        assert!(err("[energy.idle_watts]\ngpu = -5\n").contains("energy.idle_watts.gpu = -5"));
        assert!(err("[agent]\ninterval = \"fast\"\n").starts_with(
            "config file c.toml: agent.interval = \"fast\": expected \"fast\" is not a duration"
        ));
        assert!(err("[agent]\ninterval = \"10ms\"\n").contains("too short"));
        assert!(
            err("[agent]\nmax_processes = 10\n")
                .contains("agent.max_processes = 10: expected a number in 1024..=4194304")
        );
        assert!(
            err("[io]\ntime_sampling = 1.5\n").contains("io.time_sampling = 1.5: expected a share in (0, 1]")
        );
        assert!(
            err("[energy]\nmeter = \"rapl\"\n")
                .contains("energy.meter = \"rapl\": expected one of auto, rapl-perf")
        );
        assert!(err("[serve]\ntop_trees = 5000\n").contains("serve.top_trees = 5000: expected at most 1000"));
        let e = err("[serve]\nlisten = \"localhost\"\n");
        assert!(e.contains("listen") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_layer_replaces_the_keys_it_sets_and_keeps_the_others() {
        let file = Config::parse(
            "[carbon]\npue = 1.2\nregion = \"aws:eu-west-3\"\n[energy.idle_watts]\ncpu = 7\ndram = 2\n\
             [run]\ntop = 4\n",
            "f.toml",
        )
        .unwrap();
        let flags = Config::parse(
            "[carbon]\ncountry = \"DEU\"\n[energy.idle_watts]\ndram = 3\n[serve]\ntop_trees = 5\n",
            "flags",
        )
        .unwrap();
        let m = file.layered(&flags);
        assert_eq!(m.carbon.pue, Some(1.2));
        assert_eq!((m.carbon.country.as_deref(), m.carbon.region.as_deref()), (Some("DEU"), None));
        assert_eq!((m.energy.idle_watts.cpu, m.energy.idle_watts.dram), (Some(7.0), Some(3.0)));
        assert_eq!((m.run.top, m.serve.top_trees), (Some(4), Some(5)));
        assert_eq!(file.layered(&Config::default()), file);
        assert_eq!(Config::default().layered(&file), file);
        // The keys that are set, and TOML that reads back the same.
        let keys = m.keys();
        assert_eq!(keys["carbon.country"], "\"DEU\"");
        assert_eq!(keys["energy.idle_watts.dram"], "3.0");
        assert!(!keys.contains_key("carbon.region"));
        assert_eq!(Config::parse(&m.to_toml(), "back").unwrap(), m);
    }

    #[test]
    fn load_reports_missing_file_and_reads_real_one() {
        let e = Config::load(Some(Path::new("/nonexistent/c.toml"))).unwrap_err().to_string();
        assert!(e.starts_with("cannot read config file /nonexistent/c.toml"), "{e}");
        let p = std::env::temp_dir().join(format!("carbon-config-{}.toml", std::process::id()));
        std::fs::write(&p, "[carbon]\npue = 1.3\n").unwrap();
        let (c, used) = Config::load(Some(&p)).unwrap();
        assert_eq!((c.carbon.pue, used.as_deref()), (Some(1.3), Some(p.as_path())));
        std::fs::remove_file(&p).unwrap();
    }
}
