use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

use carbon_agent::{
    cli::{Cli, Command},
    doctor,
    engine::{
        DEFAULT_TOP_TREES, Engine, EngineOptions,
        sink::{self, LineSink},
    },
    output::{json, live, text},
    settings::Settings,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The always-on mode says what it does (info); the others only what goes wrong.
    let level = if matches!(cli.command, Some(Command::Serve(_))) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CARBON_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
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
    let sources = cli.sources();
    match cli.command {
        Some(Command::Run(args)) => {
            let request = carbon_agent::run::RunRequest { command: args.command, json: args.json };
            carbon_agent::run::run(request, sources.resolve()?).await
        }
        Some(Command::Serve(_)) => carbon_agent::serve::serve(sources).await,
        Some(Command::Doctor(args)) => {
            if let Some(index) = args.gpu_energy {
                let joules =
                    carbon_agent::energy::nvml::nvml_total_energy_j(index).map_err(|e| anyhow::anyhow!(e))?;
                println!("{joules}");
                return Ok(0);
            }
            let settings = sources.resolve()?;
            let checks = doctor::checks(&settings.energy);
            if args.json {
                println!("{}", serde_json::json!({ "checks": checks, "plan": doctor::plan(&checks) }));
            } else {
                print!("{}", doctor::render_text(&checks));
            }
            Ok(0)
        }
        Some(Command::Report(args)) => {
            let format = sources.resolve()?.report;
            print!("{}", carbon_agent::report::report_files(&args.files, format)?);
            Ok(0)
        }
        Some(Command::Locations { filter }) => {
            print!("{}", carbon_agent::carbon::locations_listing(filter.as_deref()));
            Ok(0)
        }
        None => watch(sources.resolve()?, cli.watch.json).await.map(|()| 0),
    }
}

/// The mode without a subcommand: the engine runs here, its consumer (the live view, or
/// plain or JSON lines) on a task of its own.
async fn watch(settings: Settings, json: bool) -> anyhow::Result<()> {
    let duration = settings.watch.duration;
    let live = !json && std::io::stdout().is_terminal();
    let mut opts = EngineOptions::new(settings, DEFAULT_TOP_TREES);
    opts.trees = live;
    let mut engine = Engine::start(opts)?;
    for w in engine.session().carbon.warnings() {
        eprintln!("carbon-agent: warning: {w}");
    }
    let mut output = if live {
        tokio::spawn(live::run(engine.latest()))
    } else {
        let render = if json { json::render } else { text::render };
        tokio::spawn(sink::feed(engine.subscribe(), LineSink::new(std::io::stdout(), render)))
    };
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = engine.step() => {}
            _ = tokio::signal::ctrl_c() => break,
            // The output stopped (q in the live view, a closed pipe) or failed.
            done = &mut output => return done?,
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    // Closing the channels lets the output write what is queued (or restore the terminal),
    // then end.
    drop(engine);
    output.await?
}
