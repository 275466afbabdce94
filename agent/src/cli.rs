//! The command line: clap lives here and only here. Every flag that is a setting is also a
//! config-file key: its help says which (`[config: section.key]`), [`Cli::overrides`] turns
//! the flags given into those keys, and [`crate::settings`] lays them over the file's. A test
//! below walks every argument of every subcommand and fails for a flag without a key, or one
//! whose key the config file does not accept or `docs/config.md` does not list.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::PossibleValue};

use crate::{
    attribution::StaticShare,
    config::Config,
    energy::{MeterChoice, config::IdleWatts},
    io::IoDetail,
    report::ReportFormat,
    settings::{Sources, format_duration, parse_duration, parse_interval},
};

/// Energy, carbon and wasted I/O per process tree, measured in the kernel with eBPF.
///
/// With no subcommand: a live, top-like view of process trees on a terminal (quit with q or
/// Ctrl-C), or one line per interval when stdout is not a terminal, or JSON Lines with --json.
/// Needs root, or CAP_BPF and CAP_PERFMON.
#[derive(Debug, Parser)]
#[command(name = "carbon-agent", version, about, long_about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub agent: AgentArgs,
}

const AFTER_HELP: &str = "Examples:
  sudo carbon-agent                         live view of every process tree
  sudo carbon-agent --json --duration 10s   ten JSON lines, one per second
  sudo carbon-agent run -- python train.py  follow one command's tree, then summarize
  sudo carbon-agent serve                   always on: Prometheus metrics on 127.0.0.1:9586
  sudo carbon-agent doctor                  what this machine offers, and what to fix

Every setting is also a key of the config file (--config, default /etc/carbon-agent/config.toml):
each flag's help names it; docs/config.md lists them all.";

impl Cli {
    /// The flags given, as config keys (to be laid over the config file's).
    pub fn overrides(&self) -> Config {
        let mut c = Config::default();
        self.agent.apply(&mut c);
        match &self.command {
            None => self.watch.apply(&mut c),
            Some(Command::Run(a)) => a.apply(&mut c),
            Some(Command::Serve(a)) => a.apply(&mut c),
            Some(Command::Doctor(a)) => a.energy.apply(&mut c),
            Some(Command::Report(a)) => a.apply(&mut c),
            Some(Command::Locations { .. }) => {}
        }
        c
    }

    /// Where the settings come from: `--config` and the flags.
    pub fn sources(&self) -> Sources {
        Sources { config: self.config_path().map(Path::to_path_buf), flags: self.overrides() }
    }

    /// `--config`, when given.
    pub fn config_path(&self) -> Option<&Path> {
        self.agent.config.as_deref()
    }
}

/// Options of the live view / interval output (no subcommand).
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print one JSON object per interval (JSON Lines) instead of the live view.
    #[arg(long)]
    pub json: bool,

    /// Stop after this long (e.g. 30s, 5m) [default: run until interrupted; config: watch.duration]
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub energy: EnergyArgs,

    #[command(flatten)]
    pub carbon: CarbonArgs,
}

impl WatchArgs {
    fn apply(&self, c: &mut Config) {
        if let Some(d) = self.duration {
            c.watch.duration = Some(format_duration(d));
        }
        self.energy.apply(c);
        self.carbon.apply(c);
    }
}

/// Options every mode shares.
#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// Length of one accounting interval (e.g. 1s, 500ms) [default: 1s; config: agent.interval]
    #[arg(long, global = true, value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Capacity of the kernel's per-process CPU map (processes alive at once)
    /// [default: 32768; config: agent.max_processes]
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_processes: Option<u32>,

    /// Do not attach the I/O programs (no I/O columns, no wasted-I/O findings) [config: io.enabled = false]
    #[arg(long, global = true)]
    pub no_io: bool,

    /// How I/O is observed. `page-cache` (default, cheap enough to leave on): exact bytes per
    /// process from the kernel's own accounting, per-file activity from the page cache (4 KiB
    /// page granularity), no program on the syscall path except in short timing windows.
    /// `syscalls`: every read/write syscall traced (exact bytes and offsets per call), at a
    /// cost on every syscall of the machine. [default: page-cache; config: io.detail]
    #[arg(long, global = true, value_enum)]
    pub io_detail: Option<IoDetail>,

    /// Share of the time the I/O syscalls are timed, in (0, 1]; default 0.01 with
    /// `--io-detail page-cache`, 0.05 with `syscalls`. The timed calls' time is scaled to all
    /// calls; 1 times every call, at the cost of one or two more program runs on every syscall
    /// of the machine (about +70 ns each). [config: io.time_sampling]
    #[arg(long, global = true, value_parser = parse_fraction)]
    pub io_time_sampling: Option<f64>,

    /// TOML config file [default: /etc/carbon-agent/config.toml when present]
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

impl AgentArgs {
    fn apply(&self, c: &mut Config) {
        if let Some(d) = self.interval {
            c.agent.interval = Some(format_duration(d));
        }
        set(&mut c.agent.max_processes, self.max_processes);
        if self.no_io {
            c.io.enabled = Some(false);
        }
        set(&mut c.io.detail, self.io_detail.map(|d| d.as_str().to_string()));
        set(&mut c.io.time_sampling, self.io_time_sampling);
    }
}

/// The energy flags, flattened into every command that measures.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct EnergyArgs {
    /// Read energy meters under this sysfs root instead of /sys [default: /sys; config: energy.sysfs_root]
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// Read cpuinfo and meminfo under this procfs root instead of /proc [config: energy.proc_root]
    #[arg(long, value_name = "DIR", hide = true)]
    pub proc_root: Option<PathBuf>,
    /// CPU energy meter: auto = perf power PMU, else powercap, else the estimation model
    /// [default: auto; config: energy.meter]
    #[arg(long, value_enum, value_name = "METER")]
    pub meter: Option<MeterChoice>,
    /// Do not look for NVIDIA GPUs [config: energy.gpu = false]
    #[arg(long)]
    pub no_gpu: bool,
    /// Static (idle) power per domain, e.g. cpu=12.5,dram=3,gpu=60 (gpu: per GPU). Domains
    /// not given are learned as the minimum power at low utilization (or the model's idle
    /// figures) [config: energy.idle_watts.cpu, .dram, .gpu, .platform]
    #[arg(long, value_name = "DOMAIN=W,...", value_parser = crate::energy::config::parse_idle_watts)]
    pub idle_watts: Option<IdleWatts>,
    /// How static energy is shared: proportional to busy CPU time, equally among active
    /// processes, or none (all to the idle bucket) [default: proportional; config: energy.static_share]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub static_share: Option<StaticShare>,
    /// Estimation model: idle power of one logical CPU, W [config: energy.cpu_idle_watts]
    #[arg(long, value_name = "W", value_parser = crate::energy::config::parse_watts)]
    pub cpu_idle_watts: Option<f64>,
    /// Estimation model: full-load power of one logical CPU, W [config: energy.cpu_max_watts]
    #[arg(long, value_name = "W", value_parser = crate::energy::config::parse_watts)]
    pub cpu_max_watts: Option<f64>,
    /// Estimation model: TDP of one CPU package, W (full load = TDP / threads per package,
    /// idle = 10%) [config: energy.cpu_tdp_watts]
    #[arg(long, value_name = "W", value_parser = crate::energy::config::parse_watts)]
    pub cpu_tdp_watts: Option<f64>,
    /// Estimation model: DRAM power per GB of installed memory (default 0.392, Cloud Carbon
    /// Footprint) [config: energy.dram_watts_per_gb]
    #[arg(long, value_name = "W", value_parser = crate::energy::config::parse_watts)]
    pub dram_watts_per_gb: Option<f64>,
}

impl EnergyArgs {
    fn apply(&self, c: &mut Config) {
        let e = &mut c.energy;
        set(&mut e.sysfs_root, self.sysfs_root.clone());
        set(&mut e.proc_root, self.proc_root.clone());
        set(&mut e.meter, self.meter.map(|m| m.as_str().to_string()));
        if self.no_gpu {
            e.gpu = Some(false);
        }
        if let Some(w) = self.idle_watts {
            set(&mut e.idle_watts.cpu, w.cpu);
            set(&mut e.idle_watts.dram, w.dram);
            set(&mut e.idle_watts.gpu, w.gpu);
            set(&mut e.idle_watts.platform, w.platform);
        }
        set(&mut e.static_share, self.static_share);
        set(&mut e.cpu_idle_watts, self.cpu_idle_watts);
        set(&mut e.cpu_max_watts, self.cpu_max_watts);
        set(&mut e.cpu_tdp_watts, self.cpu_tdp_watts);
        set(&mut e.dram_watts_per_gb, self.dram_watts_per_gb);
    }
}

/// The carbon flags, flattened into every command that measures. Each overrides its key.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct CarbonArgs {
    /// Power usage effectiveness of the data centre (facility ÷ IT energy, ≥ 1)
    /// [default: 1.58; config: carbon.pue]
    #[arg(long, value_name = "PUE")]
    pub pue: Option<f64>,
    /// Grid location: ISO 3166 country (FRA, FR) or sub-national code (US-CA, CA-QC, SE-SE3)
    /// [config: carbon.country]
    #[arg(long, value_name = "CODE", conflicts_with = "region")]
    pub country: Option<String>,
    /// Cloud region (aws:eu-west-3, gcp:europe-west1, azure:francecentral) or sub-national code
    /// [config: carbon.region]
    #[arg(long, value_name = "PROVIDER:REGION")]
    pub region: Option<String>,
    /// Grid carbon intensity in gCO2e/kWh, used for the whole run (overrides every other
    /// source) [config: carbon.intensity]
    #[arg(long, value_name = "G_PER_KWH")]
    pub intensity: Option<f64>,
    /// Time series of grid intensity: CSV of `timestamp,gCO2e/kWh` (e.g. hourly grid data)
    /// [config: carbon.intensity_csv]
    #[arg(long, value_name = "FILE")]
    pub intensity_csv: Option<PathBuf>,
    /// Do not ask the live provider (Electricity Maps) even when ELECTRICITYMAPS_TOKEN is set
    /// [config: carbon.provider.enabled = false]
    #[arg(long)]
    pub no_live_intensity: bool,
    /// Do not charge embodied (manufacturing) emissions [config: carbon.embodied.enabled = false]
    #[arg(long)]
    pub no_embodied: bool,
}

impl CarbonArgs {
    fn apply(&self, c: &mut Config) {
        let k = &mut c.carbon;
        set(&mut k.pue, self.pue);
        set(&mut k.country, self.country.clone());
        set(&mut k.region, self.region.clone());
        set(&mut k.intensity, self.intensity);
        set(&mut k.intensity_csv, self.intensity_csv.clone());
        if self.no_live_intensity {
            k.provider.enabled = Some(false);
        }
        if self.no_embodied {
            k.embodied.enabled = Some(false);
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command, follow its whole process tree, and summarize what it cost.
    ///
    /// Exits with the command's exit code. Started through sudo, the command runs as the
    /// invoking user (SUDO_UID/SUDO_GID).
    Run(RunArgs),
    /// The always-on agent: measure every process tree and export the figures to Prometheus.
    ///
    /// Serves OpenMetrics text on http://LISTEN/metrics once the probes are attached. SIGTERM
    /// or SIGINT stop it; SIGHUP reloads the config file (a file that cannot be used keeps
    /// the previous settings). Logs go to stderr (journald-friendly: no colours unless a
    /// terminal; level from CARBON_AGENT_LOG, default info).
    Serve(ServeArgs),
    /// Show what this machine offers (BTF, tracefs, program types, privileges, meters), what
    /// the agent will use, and how to fix what is missing.
    Doctor(DoctorArgs),
    /// Write a disclosure statement (for a paper or a model card) from `run --json` documents.
    Report(ReportArgs),
    /// List the grid locations of the offline carbon-intensity tables (for --country/--region).
    Locations {
        /// Only locations whose code or name contains this (case-insensitive).
        filter: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Also write the summary as one JSON document to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Append one row to FILE in CodeCarbon's emissions.csv format (header written when new)
    /// [config: run.csv]
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// project_name for the CSV row [default: carbon-agent; config: run.project_name]
    #[arg(long, value_name = "NAME")]
    pub project_name: Option<String>,

    /// How many of the largest processes the summary lists [default: 10; config: run.top]
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,

    /// Bytes the agent may read to confirm duplicate files by content hash (at idle I/O
    /// priority) [default: 1073741824; config: run.hash_budget]
    #[arg(long, value_name = "BYTES")]
    pub hash_budget: Option<u64>,

    #[command(flatten)]
    pub energy: EnergyArgs,

    #[command(flatten)]
    pub carbon: CarbonArgs,

    /// The command and its arguments (after --).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    fn apply(&self, c: &mut Config) {
        set(&mut c.run.csv, self.csv.clone());
        set(&mut c.run.project_name, self.project_name.clone());
        set(&mut c.run.top, self.top);
        set(&mut c.run.hash_budget, self.hash_budget);
        self.energy.apply(c);
        self.carbon.apply(c);
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the metrics endpoint [default: 127.0.0.1:9586; config: serve.listen]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Where serve keeps what must outlive it [default: /var/lib/carbon-agent; config: serve.state_dir]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Process trees exported with a series of their own; the rest in one `other` series
    /// [default: 20; config: serve.top_trees]
    #[arg(long, value_name = "N", value_parser = parse_top_trees)]
    pub top_trees: Option<usize>,

    #[command(flatten)]
    pub energy: EnergyArgs,

    #[command(flatten)]
    pub carbon: CarbonArgs,
}

impl ServeArgs {
    fn apply(&self, c: &mut Config) {
        set(&mut c.serve.listen, self.listen);
        set(&mut c.serve.state_dir, self.state_dir.clone());
        set(&mut c.serve.top_trees, self.top_trees);
        self.energy.apply(c);
        self.carbon.apply(c);
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,

    /// Print GPU N's NVML total-energy counter in joules and exit (used by scripts/gpu-check.sh).
    #[arg(long, value_name = "N", hide = true)]
    pub gpu_energy: Option<u32>,

    #[command(flatten)]
    pub energy: EnergyArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run documents written by `carbon-agent run --json FILE`
    #[arg(required = true, value_name = "FILE.json")]
    pub files: Vec<PathBuf>,
    /// Output format [default: markdown; config: report.format]
    #[arg(long, value_enum)]
    pub format: Option<ReportFormat>,
}

impl ReportArgs {
    fn apply(&self, c: &mut Config) {
        set(&mut c.report.format, self.format);
    }
}

/// Sets `slot` when the flag was given (a flag left out keeps the file's key).
fn set<T>(slot: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *slot = flag;
    }
}

/// A share in (0, 1].
fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 1]: use e.g. 0.05 for 5 % of the time"))
    }
}

fn parse_top_trees(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a number of trees"))?;
    if n > crate::config::MAX_TOP_TREES {
        return Err(format!("{n}: at most {}", crate::config::MAX_TOP_TREES));
    }
    Ok(n)
}

// The library's enums as flag values (their names are the config file's).

impl ValueEnum for MeterChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &MeterChoice::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            MeterChoice::Auto => "perf power PMU, else powercap, else the model",
            MeterChoice::RaplPerf => "RAPL through the perf power PMU only",
            MeterChoice::RaplPowercap => "RAPL through powercap only",
            MeterChoice::Model => "The estimation model only",
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}

impl ValueEnum for IoDetail {
    fn value_variants<'a>() -> &'a [Self] {
        &IoDetail::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

impl ValueEnum for StaticShare {
    fn value_variants<'a>() -> &'a [Self] {
        &[StaticShare::Proportional, StaticShare::Equal, StaticShare::None]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let (name, help) = match self {
            StaticShare::Proportional => (
                "proportional",
                "In proportion to busy CPU time (GPU shares for a GPU); idle when nothing ran",
            ),
            StaticShare::Equal => ("equal", "Equally among the processes active in the interval"),
            StaticShare::None => ("none", "All to the idle bucket"),
        };
        Some(PossibleValue::new(name).help(help))
    }
}

impl ValueEnum for ReportFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &ReportFormat::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_the_separator() {
        let cli =
            Cli::try_parse_from(["carbon-agent", "run", "--json", "o.json", "--", "ls", "-la", "--color"])
                .unwrap();
        let Some(Command::Run(run)) = cli.command else { panic!("not run") };
        assert_eq!(run.command, ["ls", "-la", "--color"]);
        assert_eq!(run.json.unwrap(), PathBuf::from("o.json"));
    }

    #[test]
    fn serve_flags() {
        let cli =
            Cli::try_parse_from(["carbon-agent", "serve", "--listen", "127.0.0.1:9999", "--top-trees", "5"])
                .unwrap();
        let Some(Command::Serve(s)) = &cli.command else { panic!("not serve") };
        assert_eq!((s.listen.unwrap().port(), s.top_trees), (9999, Some(5)));
        assert_eq!(cli.overrides().serve.top_trees, Some(5));
        let e =
            Cli::try_parse_from(["carbon-agent", "serve", "--listen", "localhost"]).unwrap_err().to_string();
        assert!(e.contains("--listen"), "{e}");
        let e =
            Cli::try_parse_from(["carbon-agent", "serve", "--top-trees", "5000"]).unwrap_err().to_string();
        assert!(e.contains("--top-trees") && e.contains("at most 1000"), "{e}");
    }

    #[test]
    fn bad_flags_are_rejected() {
        assert!(Cli::try_parse_from(["carbon-agent", "--interval", "fast"]).is_err());
        assert!(Cli::try_parse_from(["carbon-agent", "--frobnicate"]).is_err());
        assert!(Cli::try_parse_from(["carbon-agent", "run"]).is_err());
        for bad in ["0", "1.5", "-0.1", "some"] {
            assert!(Cli::try_parse_from(["carbon-agent", "--io-time-sampling", bad]).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from(["carbon-agent", "--io-time-sampling", "1"]).unwrap();
        assert_eq!(cli.agent.io_time_sampling, Some(1.0));
        let cli = Cli::try_parse_from(["carbon-agent", "--io-detail", "syscalls"]).unwrap();
        assert_eq!(cli.agent.io_detail, Some(IoDetail::Syscalls));
        assert!(Cli::try_parse_from(["carbon-agent", "--io-detail", "everything"]).is_err());
        assert!(Cli::try_parse_from(["carbon-agent", "--static-share", "fair"]).is_err());
        assert!(Cli::try_parse_from(["carbon-agent", "--cpu-max-watts", "NaN"]).is_err());
        assert!(Cli::try_parse_from(["carbon-agent", "--idle-watts", "fan=3"]).is_err());
    }

    /// Flags that are not settings: what one invocation prints or writes, and clap's own.
    const NOT_SETTINGS: &[(&str, &str, &str)] = &[
        ("", "config", "the config file itself"),
        ("", "json", "this invocation's output format"),
        ("run", "json", "this run's own document"),
        ("doctor", "json", "this invocation's output format"),
        ("doctor", "gpu-energy", "a hidden probe for scripts/gpu-check.sh"),
        ("", "help", "clap"),
        ("", "version", "clap"),
    ];

    /// A valid value for a flag (value enums take their last value).
    fn sample(arg: &clap::Arg) -> Option<String> {
        if let Some(v) = arg.get_possible_values().last() {
            return Some(v.get_name().to_string());
        }
        let value = match arg.get_long()? {
            "interval" | "duration" => "2s",
            "max-processes" => "2048",
            "io-time-sampling" => "0.5",
            "sysfs-root" | "proc-root" | "state-dir" => "/tmp/x",
            "idle-watts" => "cpu=1,dram=2,gpu=3,platform=4",
            "cpu-idle-watts" | "cpu-max-watts" | "cpu-tdp-watts" | "dram-watts-per-gb" => "1.5",
            "pue" => "1.2",
            "country" => "FRA",
            "region" => "aws:eu-west-3",
            "intensity" => "50",
            "intensity-csv" | "csv" => "/tmp/x.csv",
            "listen" => "127.0.0.1:1",
            "top-trees" | "top" | "hash-budget" => "5",
            "project-name" => "p",
            _ => return None,
        };
        Some(value.to_string())
    }

    /// The keys a flag's help names: `[config: agent.interval]`, `[...; config: io.enabled = false]`,
    /// `[config: energy.idle_watts.cpu, .dram]`.
    fn keys_in_help(help: &str) -> Vec<String> {
        let Some((_, rest)) = help.split_once("config: ") else { return Vec::new() };
        let list = rest.split([']', '=']).next().unwrap_or("");
        let mut keys: Vec<String> = Vec::new();
        for k in list.split(',').map(str::trim) {
            match (k.strip_prefix('.'), keys.first()) {
                (Some(tail), Some(first)) => {
                    let section = first.rsplit_once('.').map_or("", |(s, _)| s);
                    keys.push(format!("{section}.{tail}"));
                }
                _ => keys.push(k.to_string()),
            }
        }
        keys
    }

    /// Every argument of every subcommand, except positionals and those in [`NOT_SETTINGS`],
    /// names a config key in its help; given on the command line, it sets exactly that key in
    /// [`Cli::overrides`]; the key is accepted by the config file's parser (the overrides as
    /// TOML read back the same); and `docs/config.md` lists the key with its flag.
    #[test]
    fn every_flag_is_a_documented_config_key() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
            .expect("docs/config.md");
        let mut root = Cli::command();
        root.build();
        let mut commands: Vec<(String, clap::Command)> = vec![(String::new(), root.clone())];
        commands.extend(root.get_subcommands().map(|s| (s.get_name().to_string(), s.clone())));
        let mut checked = 0;
        for (name, cmd) in &commands {
            if name == "help" {
                continue;
            }
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let exempt = NOT_SETTINGS.iter().any(|(c, f, _)| *f == long && (c.is_empty() || c == name));
                if exempt || (!name.is_empty() && arg.is_global_set()) {
                    continue;
                }
                let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
                let keys = keys_in_help(&help);
                assert!(
                    !keys.is_empty(),
                    "--{long} of `{name}` names no config key ([config: section.key]) in its help"
                );
                let mut argv = vec!["carbon-agent".to_string()];
                if !name.is_empty() {
                    argv.push(name.clone());
                }
                argv.push(format!("--{long}"));
                if arg.get_action().takes_values() {
                    argv.push(
                        sample(arg).unwrap_or_else(|| panic!("give --{long} a sample value in this test")),
                    );
                }
                match name.as_str() {
                    "run" => argv.extend(["--".into(), "true".into()]),
                    "report" => argv.push("a.json".into()),
                    _ => {}
                }
                let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                let overrides = cli.overrides();
                let set: Vec<String> = overrides.keys().into_keys().collect();
                assert_eq!(set, keys, "{argv:?} sets these keys, its help names those");
                let back = Config::parse(&overrides.to_toml(), "flags")
                    .unwrap_or_else(|e| panic!("{argv:?}: the config file refuses its keys: {e}"));
                assert_eq!(back, overrides, "{argv:?}");
                for k in &keys {
                    let line = docs
                        .lines()
                        .find(|l| l.contains(&format!("`{k}`")))
                        .unwrap_or_else(|| panic!("docs/config.md does not list `{k}` (--{long})"));
                    assert!(line.contains(&format!("--{long}")), "docs/config.md: `{k}` without `--{long}`");
                }
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} flags checked");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults_end_to_end() {
        let file = Config::parse(
            "[agent]\ninterval = \"250ms\"\n[run]\ntop = 3\nproject_name = \"f\"\n[carbon]\ncountry = \"DEU\"\n",
            "f.toml",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "carbon-agent",
            "--interval",
            "2s",
            "run",
            "--top",
            "7",
            "--region",
            "aws:eu-west-3",
            "--no-embodied",
            "--",
            "true",
        ])
        .unwrap();
        let s = crate::settings::Settings::from_layers(&file, None, &cli.overrides()).unwrap();
        assert_eq!((s.interval, s.run.top, s.run.project_name.as_str()), (Duration::from_secs(2), 7, "f"));
        assert_eq!((s.carbon.country.as_deref(), s.carbon.region.as_deref()), (None, Some("aws:eu-west-3")));
        assert_eq!(s.carbon.embodied.enabled, Some(false));
        let cli = Cli::try_parse_from(["carbon-agent", "run", "--", "true"]).unwrap();
        let s = crate::settings::Settings::from_layers(&file, None, &cli.overrides()).unwrap();
        assert_eq!((s.interval, s.run.top, s.run.hash_budget), (Duration::from_millis(250), 3, 1 << 30));
        assert_eq!(s.carbon.country.as_deref(), Some("DEU"));
        assert!(s.carbon.live);
    }
}
