//! The command line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{carbon::CarbonArgs, config::ConfigArgs, energy::EnergyArgs, report::ReportArgs};

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
  sudo carbon-agent doctor                  what this machine offers, and what to fix";

/// Options of the live view / interval output (no subcommand).
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print one JSON object per interval (JSON Lines) instead of the live view.
    #[arg(long)]
    pub json: bool,

    /// Stop after this long (e.g. 30s, 5m); default: run until interrupted.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub energy: EnergyArgs,

    #[command(flatten)]
    pub carbon: CarbonArgs,
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
    pub io_detail: Option<crate::io::IoDetail>,

    /// Share of the time the I/O syscalls are timed (enter→exit), in (0, 1]; default 0.01 with
    /// `--io-detail page-cache`, 0.05 with `syscalls`. The timed calls' time is scaled to all
    /// calls; 1 times every call, at the cost of one or two more program runs on every syscall
    /// of the machine (about +70 ns each). [config: io.time_sampling]
    #[arg(long, global = true, value_parser = parse_fraction)]
    pub io_time_sampling: Option<f64>,

    #[command(flatten)]
    pub config: ConfigArgs,
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

    /// Append one row to FILE in CodeCarbon's emissions.csv format (header written when new).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// project_name for the CSV row.
    #[arg(long, value_name = "NAME", default_value = "carbon-agent")]
    pub project_name: String,

    /// How many of the largest processes the summary lists.
    #[arg(long, default_value_t = 10)]
    pub top: usize,

    /// Bytes the agent may read to confirm duplicate files by content hash (at idle I/O priority).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub hash_budget: u64,

    #[command(flatten)]
    pub energy: EnergyArgs,

    #[command(flatten)]
    pub carbon: CarbonArgs,

    /// The command and its arguments (after --).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub top_trees: Option<usize>,

    #[command(flatten)]
    pub energy: EnergyArgs,

    #[command(flatten)]
    pub carbon: CarbonArgs,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?} is not a positive duration")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 1s, 500ms, 2m"))?,
    };
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(50) {
        return Err(format!("an interval of {s} is too short: use at least 50ms"));
    }
    Ok(d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("0").is_err());
        assert!(parse_interval("10ms").unwrap_err().contains("too short"));
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
        let Some(Command::Serve(s)) = cli.command else { panic!("not serve") };
        assert_eq!((s.listen.unwrap().port(), s.top_trees), (9999, Some(5)));
        let e =
            Cli::try_parse_from(["carbon-agent", "serve", "--listen", "localhost"]).unwrap_err().to_string();
        assert!(e.contains("--listen"), "{e}");
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
        assert_eq!(cli.agent.io_detail, Some(crate::io::IoDetail::Syscalls));
        assert!(Cli::try_parse_from(["carbon-agent", "--io-detail", "everything"]).is_err());
    }
}
