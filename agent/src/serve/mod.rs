//! `carbon-agent serve`: the always-on mode. The engine runs on this task; the exporter
//! serves the latest snapshot on `GET /metrics` from a task of its own, so a slow or stuck
//! scraper never delays an interval.
//!
//! Signals: SIGTERM and SIGINT stop it cleanly (exit 0); SIGHUP reloads the config file (a
//! file that cannot be used keeps the previous settings, and the log says why): the carbon
//! keys, the interval, the static-power attribution and `serve.top_trees` apply from the next
//! interval; the log names every other key that changed and needs a restart ([`ReloadPlan`]). The metrics
//! endpoint is bound only once the probes are attached: a scrape that succeeds means the
//! agent is measuring.

pub mod http;
pub mod metrics;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::Config,
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

/// Runs until SIGTERM or SIGINT; returns the exit code. `sources` are read again on SIGHUP.
pub async fn serve(sources: Sources) -> anyhow::Result<i32> {
    let settings = sources.resolve()?;
    let serve = settings.serve.clone();
    prepare_state_dir(&serve.state_dir)?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut keys = Reloaded { started: settings.keys.clone(), current: settings.keys.clone() };
    let interval = settings.interval;
    let mut engine = Engine::start(EngineOptions::new(settings, serve.top_trees))?;
    for w in engine.session().carbon.warnings() {
        tracing::warn!("{w}");
    }
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen", serve.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, engine.latest(), stop_rx));
    tracing::info!(
        "ready: probes attached, metrics on http://{}/metrics, interval {:?}, state in {}",
        serve.listen,
        interval,
        serve.state_dir.display()
    );
    loop {
        tokio::select! {
            _ = engine.step() => {}
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => reload(&sources, &mut engine, &mut keys),
        }
    }
    let _ = stop_tx.send(());
    server.await.context("the metrics server task")??;
    tracing::info!("stopped");
    Ok(0)
}

/// The keys `serve` started with, and those of the last successful load.
struct Reloaded {
    started: Config,
    current: Config,
}

/// Keys (or sections, ending in `.`) a running `serve` applies from the next interval.
const LIVE_KEYS: &[&str] =
    &["agent.interval", "carbon.", "serve.top_trees", "energy.static_share", "energy.idle_watts."];
/// Keys `serve` does not use.
const UNUSED_KEYS: &[&str] = &["watch.", "run.", "report."];

fn matches(key: &str, patterns: &[&str]) -> bool {
    patterns.iter().any(|p| key == *p || (p.ends_with('.') && key.starts_with(p)))
}

/// What a reload does with the keys that changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed since the last load, applied now.
    pub applied: Vec<String>,
    /// Different from what `serve` started with, and only applied by a restart (said on every
    /// reload until then). Every key not known to be live is here.
    pub restart: Vec<String>,
    /// Changed, and not used by `serve`.
    pub unused: Vec<String>,
}

impl ReloadPlan {
    /// What changed between `current` (the last load) and `new`, and what differs from
    /// `started` and needs a restart.
    pub fn new(started: &Config, current: &Config, new: &Config) -> Self {
        let changed = |a: &Config, b: &Config| -> Vec<String> {
            let (a, b) = (a.keys(), b.keys());
            let all: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            all.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
        };
        let since_last = changed(current, new);
        ReloadPlan {
            applied: since_last.iter().filter(|k| matches(k, LIVE_KEYS)).cloned().collect(),
            restart: changed(started, new)
                .into_iter()
                .filter(|k| !matches(k, LIVE_KEYS) && !matches(k, UNUSED_KEYS))
                .collect(),
            unused: since_last.into_iter().filter(|k| matches(k, UNUSED_KEYS)).collect(),
        }
    }

    fn touches(&self, prefix: &str) -> bool {
        self.applied.iter().any(|k| k.starts_with(prefix))
    }
}

/// Re-reads the config file; applies what can change at run time (see [`LIVE_KEYS`]), names the
/// keys that need a restart, and keeps everything when the file cannot be used.
fn reload(sources: &Sources, engine: &mut Engine, keys: &mut Reloaded) {
    let attempt = || -> anyhow::Result<(Settings, ReloadPlan, Option<crate::carbon::CarbonAccountant>)> {
        let settings = sources.resolve()?;
        let plan = ReloadPlan::new(&keys.started, &keys.current, &settings.keys);
        // A new accountant only when a carbon key changed: it restarts the live provider.
        let carbon = if plan.touches("carbon.") {
            let hw = &engine.session().hardware;
            Some(settings.carbon.accountant(hw, crate::carbon::token_from_env()).context("carbon settings")?)
        } else {
            None
        };
        Ok((settings, plan, carbon))
    };
    let (settings, plan, carbon) = match attempt() {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("SIGHUP: config not reloaded, keeping the previous settings: {e:#}");
            return;
        }
    };
    if let Some(carbon) = carbon {
        engine.session_mut().carbon = carbon;
        for w in engine.session().carbon.warnings() {
            tracing::warn!("{w}");
        }
    }
    engine.set_top_trees(settings.serve.top_trees);
    engine.set_interval(settings.interval);
    engine
        .session_mut()
        .energy
        .set_static_attribution(settings.energy.static_share, settings.energy.idle_watts);
    let file = settings.config_path.as_ref().map_or("(no file)".into(), |p| p.display().to_string());
    let list = |keys: &[String]| if keys.is_empty() { "nothing".to_string() } else { keys.join(", ") };
    tracing::info!("SIGHUP: reloaded {file}: applied {}", list(&plan.applied));
    if !plan.restart.is_empty() {
        tracing::warn!(
            "SIGHUP: {} changed since the start: restart carbon-agent to apply",
            plan.restart.join(", ")
        );
    }
    if !plan.unused.is_empty() {
        tracing::info!("SIGHUP: {} changed: not used by serve", plan.unused.join(", "));
    }
    keys.current = settings.keys;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    #[test]
    fn a_reload_applies_live_keys_and_names_those_that_need_a_restart() {
        let started =
            keys("[carbon]\ncountry = \"DEU\"\n[serve]\ntop_trees = 5\n[agent]\nmax_processes = 4096\n");
        let new = keys(
            "[carbon]\ncountry = \"DEU\"\npue = 1.2\n[serve]\ntop_trees = 3\nlisten = \"127.0.0.1:1\"\n\
             [agent]\ninterval = \"2s\"\n[energy]\nmeter = \"model\"\nstatic_share = \"equal\"\n[run]\ntop = 2\n",
        );
        let plan = ReloadPlan::new(&started, &started, &new);
        assert_eq!(plan.applied, ["agent.interval", "carbon.pue", "energy.static_share", "serve.top_trees"]);
        // max_processes went back to its default: a change too.
        assert_eq!(plan.restart, ["agent.max_processes", "energy.meter", "serve.listen"]);
        assert_eq!(plan.unused, ["run.top"]);
        assert!(plan.touches("carbon.") && !plan.touches("io."));
        // Loaded again unchanged: nothing applied, the restart keys are still said.
        let again = ReloadPlan::new(&started, &new, &new);
        assert!(again.applied.is_empty() && again.unused.is_empty());
        assert_eq!(again.restart, plan.restart);
        // Back to what it started with: nothing to restart for.
        let back = ReloadPlan::new(&started, &new, &started);
        assert!(back.restart.is_empty());
        assert_eq!(back.applied, plan.applied);
        // A key no list knows (a new section) needs a restart.
        let mut other = started.clone();
        other.io.enabled = Some(false);
        assert_eq!(ReloadPlan::new(&started, &started, &other).restart, ["io.enabled"]);
        assert_eq!(ReloadPlan::new(&started, &started, &started), ReloadPlan::default());
    }
}
