//! The engine: owns the session (probes, process table, accountants) and, once per interval,
//! drains the kernel (the only impure step, [`Session::next_interval`]), then runs the pure
//! step ([`snapshot::build`]) and publishes the resulting [`Snapshot`] to every consumer.
//!
//! Consumers never drive the engine: they subscribe, to the latest snapshot ([`Engine::latest`],
//! a `watch` channel: the exporter) or to every snapshot ([`Engine::subscribe`], a `broadcast`
//! channel: JSON Lines, plain lines), and implement [`Sink`]. A consumer that falls behind loses
//! snapshots (and says how many), never stalls the engine. Following a tree (`run`) is a
//! [`Engine::follow`]: it pins the root, so that its exited members are not pruned, and any
//! number of follows can run at once.

pub mod ledger;
pub mod scope;
pub mod sink;
pub mod snapshot;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use tokio::sync::{broadcast, watch};

use crate::{
    api::Snapshot,
    process::Pid,
    session::{IntervalReport, Session, SessionOptions},
    waste::hash::{Content, ContentHasher},
};

pub use ledger::Ledger;
pub use sink::{Flow, Sink};

/// Snapshots a `broadcast` subscriber may fall behind by before it loses the oldest.
const BROADCAST_CAPACITY: usize = 64;
/// Findings for the wasted-bytes counters are re-derived every this many intervals.
const FINDINGS_EVERY: u64 = 5;
/// Trees exported with a series of their own, by default.
pub const DEFAULT_TOP_TREES: usize = 20;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub session: SessionOptions,
    /// Trees with a series of their own in the cumulative totals (the rest in `other`).
    pub top_trees: usize,
    /// List every process tree in each snapshot ([`Snapshot::trees`], for the live view): a
    /// pass over the whole process table per interval.
    pub trees: bool,
}

impl EngineOptions {
    /// The options of an engine that prunes exited processes (a followed tree stays pinned),
    /// with `top_trees` trees exported with series of their own.
    pub fn new(settings: crate::settings::Settings, top_trees: usize) -> Self {
        Self {
            session: SessionOptions {
                interval: settings.interval,
                load: settings.load.clone(),
                prune_exited: true,
                settings,
            },
            top_trees,
            trees: false,
        }
    }
}

pub struct Engine {
    session: Session,
    ledger: Ledger,
    seq: u64,
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    every: broadcast::Sender<Arc<Snapshot>>,
    last_report: Option<IntervalReport>,
    /// Findings per tree root, when the snapshots list trees.
    findings_by_tree: Option<HashMap<Pid, u64>>,
}

impl Engine {
    /// Loads and attaches the probes (see [`Session::start`]). Inside a tokio runtime.
    pub fn start(opts: EngineOptions) -> anyhow::Result<Self> {
        let session = Session::start(opts.session)?;
        Ok(Self {
            session,
            ledger: Ledger::new(opts.top_trees),
            seq: 0,
            latest: watch::channel(None).0,
            every: broadcast::channel(BROADCAST_CAPACITY).0,
            last_report: None,
            findings_by_tree: opts.trees.then(HashMap::new),
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// For settings that change at run time (a reload): the carbon accountant, the interval.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn set_top_trees(&mut self, n: usize) {
        self.ledger.set_top_trees(n);
    }

    /// Changes the interval length from the next interval on.
    pub fn set_interval(&mut self, interval: std::time::Duration) {
        self.session.set_interval(interval);
    }

    /// The latest snapshot (`None` until the first interval closes).
    pub fn latest(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.latest.subscribe()
    }

    /// Every snapshot from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Snapshot>> {
        self.every.subscribe()
    }

    /// Follows the tree of `root`: its members are shown under it and never pruned.
    pub fn follow(&mut self, root: Pid) {
        self.session.follows.insert(root);
    }

    pub fn unfollow(&mut self, root: Pid) {
        self.session.follows.remove(&root);
    }

    /// The report the last snapshot was built from (`run` tallies its GPUs' energy from it).
    pub fn last_report(&self) -> Option<&IntervalReport> {
        self.last_report.as_ref()
    }

    /// Waits for the end of the interval, drains, builds and publishes its snapshot.
    pub async fn step(&mut self) -> Arc<Snapshot> {
        let report = self.session.next_interval().await;
        self.publish(report)
    }

    /// Closes the current interval now (e.g. when a followed command exits) and publishes it.
    pub fn close_now(&mut self) -> Arc<Snapshot> {
        let report = self.session.close_interval();
        self.publish(report)
    }

    fn publish(&mut self, report: IntervalReport) -> Arc<Snapshot> {
        self.seq += 1;
        let s = &self.session;
        if self.seq % FINDINGS_EVERY == 1 {
            let findings = s.waste.findings(&mut NoContentHash);
            if let Some(by_tree) = self.findings_by_tree.as_mut() {
                by_tree.clear();
                for f in &findings {
                    *by_tree.entry(f.tree).or_default() += 1;
                }
            }
            let found = findings.into_iter().map(|f| {
                let uid = s.table.get(f.pid).map_or(u32::MAX, |p| p.uid);
                let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
                (kind.unwrap_or_default(), s.users.name(uid), f.bytes)
            });
            self.ledger.record_wasted(found.collect::<Vec<_>>());
        }
        let follows: BTreeSet<Pid> = s.follows.clone();
        let input = snapshot::StepInput {
            seq: self.seq,
            report: &report,
            table: &s.table,
            users: &s.users,
            pue: s.carbon.pue(),
            follows: &follows,
            trees: self.findings_by_tree.as_ref(),
        };
        let snap = Arc::new(snapshot::build(&input, &mut self.ledger));
        self.last_report = Some(report);
        self.latest.send_replace(Some(snap.clone()));
        // No subscriber is not an error: the snapshot is still the latest.
        let _ = self.every.send(snap.clone());
        snap
    }
}

/// Findings derived without reading any file (no content hash): what the live marker and the
/// wasted-bytes counters use, so that nothing slow runs on the tick.
pub struct NoContentHash;

impl ContentHasher for NoContentHash {
    fn size(&mut self, path: &std::path::Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.len())
    }
    fn content(&mut self, _: &std::path::Path) -> Option<Content> {
        None
    }
    fn bytes_read(&self) -> u64 {
        0
    }
}
