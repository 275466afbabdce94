//! `carbon-agent serve`: the always-on mode. The engine runs on this task; the exporter
//! serves the latest snapshot on `GET /metrics` from a task of its own, so a slow or stuck
//! scraper never delays an interval.
//!
//! Signals: SIGTERM and SIGINT stop it cleanly (exit 0); SIGHUP reloads the config file (a
//! file that cannot be used keeps the previous settings, and the log says why). The metrics
//! endpoint is bound only once the probes are attached: a scrape that succeeds means the
//! agent is measuring.

pub mod http;
pub mod metrics;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    engine::{Engine, EngineOptions},
    settings::{Settings, Sources},
};

pub use crate::settings::{DEFAULT_LISTEN, DEFAULT_STATE_DIR, ServeSettings};

/// Creates the state directory when missing and checks that it can be written.
fn prepare_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--state-dir {}: cannot create the directory", dir.display()))?;
    let probe = dir.join(".carbon-agent-write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("--state-dir {}: the directory is not writable", dir.display()))
}

/// Runs until SIGTERM or SIGINT; returns the exit code.
/// `sources` are read again on SIGHUP.
pub async fn serve(sources: Sources) -> anyhow::Result<i32> {
    let settings = sources.resolve()?;
    let interval = settings.interval;
    let mut current = settings.serve.clone();
    prepare_state_dir(&current.state_dir)?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut energy = settings.energy.clone();
    let mut engine = Engine::start(EngineOptions::new(settings, current.top_trees))?;
    for w in engine.session().carbon.warnings() {
        tracing::warn!("{w}");
    }
    let listener = tokio::net::TcpListener::bind(current.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen", current.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, engine.latest(), stop_rx));
    tracing::info!(
        "ready: probes attached, metrics on http://{}/metrics, interval {:?}, state in {}",
        current.listen,
        interval,
        current.state_dir.display()
    );
    loop {
        tokio::select! {
            _ = engine.step() => {}
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => reload(&sources, &mut engine, &mut current, &mut energy),
        }
    }
    let _ = stop_tx.send(());
    server.await.context("the metrics server task")??;
    tracing::info!("stopped");
    Ok(0)
}

/// Re-reads the config file; applies what can change at run time (carbon settings, top trees),
/// says what needs a restart, and keeps everything when the file cannot be used.
fn reload(
    sources: &Sources,
    engine: &mut Engine,
    current: &mut ServeSettings,
    energy: &mut crate::energy::EnergyConfig,
) {
    let attempt = || -> anyhow::Result<(Settings, ServeSettings, crate::carbon::CarbonAccountant)> {
        let settings = sources.resolve()?;
        let serve = settings.serve.clone();
        let carbon = settings
            .carbon
            .accountant(&engine.session().hardware, crate::carbon::token_from_env())
            .context("carbon settings")?;
        Ok((settings, serve, carbon))
    };
    match attempt() {
        Err(e) => tracing::error!("SIGHUP: config not reloaded, keeping the previous settings: {e:#}"),
        Ok((settings, serve, carbon)) => {
            let file = settings.config_path.as_ref().map_or("(no file)".into(), |p| p.display().to_string());
            engine.session_mut().carbon = carbon;
            engine.set_top_trees(serve.top_trees);
            if settings.energy != *energy {
                tracing::warn!("SIGHUP: the energy settings changed; they take effect at the next start");
            }
            if serve.listen != current.listen || serve.state_dir != current.state_dir {
                tracing::warn!("SIGHUP: listen and state_dir changes take effect at the next start");
            }
            *energy = settings.energy;
            current.top_trees = serve.top_trees;
            tracing::info!(
                "SIGHUP: reloaded {file}: carbon settings and top_trees = {} applied ([agent] and [io] take \
                 effect at the next start)",
                serve.top_trees
            );
        }
    }
}
