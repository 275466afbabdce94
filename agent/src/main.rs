use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

use carbon_agent::{
    cli::{AgentArgs, Cli, Command, WatchArgs},
    doctor,
    output::{json, live, text},
    session::{Session, SessionOptions},
    settings::Settings,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CARBON_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carbon-agent: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("carbon-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Some(Command::Run(args)) => carbon_agent::run::run(args, &cli.agent).await,
        Some(Command::Doctor(args)) => {
            if let Some(index) = args.gpu_energy {
                let joules =
                    carbon_agent::energy::nvml::nvml_total_energy_j(index).map_err(|e| anyhow::anyhow!(e))?;
                println!("{joules}");
                return Ok(0);
            }
            let settings = Settings::resolve(&cli.agent.config, &args.energy, &Default::default())?;
            let checks = doctor::checks(&settings.energy);
            if args.json {
                println!("{}", serde_json::json!({ "checks": checks, "plan": doctor::plan(&checks) }));
            } else {
                print!("{}", doctor::render_text(&checks));
            }
            Ok(0)
        }
        Some(Command::Report(args)) => {
            print!("{}", carbon_agent::report::report_files(&args.files, args.format)?);
            Ok(0)
        }
        Some(Command::Locations { filter }) => {
            print!("{}", carbon_agent::carbon::locations_listing(filter.as_deref()));
            Ok(0)
        }
        None => watch(cli.watch, &cli.agent).await.map(|()| 0),
    }
}

async fn watch(args: WatchArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&agent.config, &args.energy, &args.carbon)?;
    let mut session = Session::start(SessionOptions {
        interval: agent.interval,
        load: agent.load_options(),
        prune_exited: true,
        settings,
    })?;
    for w in session.carbon.warnings() {
        eprintln!("carbon-agent: warning: {w}");
    }
    let pue = session.carbon.pue().value;
    let stdout = std::io::stdout();
    if !args.json && stdout.is_terminal() {
        return live::run(&mut session, args.duration).await;
    }
    let started = tokio::time::Instant::now();
    loop {
        let report = tokio::select! {
            r = session.next_interval() => r,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let line = if args.json {
            serde_json::to_string(&json::interval_line(&report, &session.table, &session.users, pue))?
        } else {
            text::interval_line(&report, &session.table, 5)
        };
        {
            use std::io::Write as _;
            let mut out = stdout.lock();
            // A closed pipe (e.g. `| head`) ends the agent quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
    }
}
