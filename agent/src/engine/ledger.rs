//! Totals since the engine started, per scope: the counters the exporter and the history
//! read. Pure: each interval adds that interval's rows, so a counter never decreases (a
//! process pruned from the table, or moving between scopes, changes nothing already counted).
//!
//! Trees are many and short-lived, so only the top N by recent energy get a series of their
//! own; the others' energy goes to `other_trees`. A tree's series starts when it enters the top
//! (its earlier energy stays in `other_trees`), so the trees' and `other_trees`' rates add up to
//! the processes' rate exactly.

use std::collections::{BTreeMap, HashMap};

use crate::api::{
    Buckets, Container, ContainerTotals, Cumulative, Meter, MeterTotal, ProcessRow, ScopeTotals, TreeSeries,
    Usage, WastedBytes,
};

/// Recent-energy score decay per interval (about a minute's memory at 1 s intervals).
const SCORE_DECAY: f64 = 0.95;
/// A tree outside the top replaces the weakest one in it only when its score is this much larger.
const SWAP_FACTOR: f64 = 2.0;

#[derive(Clone, Debug)]
struct TreeSlot {
    comm: String,
    user: String,
    usage: Usage,
}

/// What the ledger needs to know of a tree root: `(comm, user)`, `None` once it is gone.
pub type TreeInfo<'a> = &'a dyn Fn(u32) -> Option<(String, String)>;

#[derive(Clone, Debug)]
pub struct Ledger {
    top_trees: usize,
    duration_s: f64,
    meter: Vec<MeterTotal>,
    processes: Usage,
    buckets: Buckets,
    users: BTreeMap<String, Usage>,
    units: BTreeMap<String, Usage>,
    containers: BTreeMap<Container, Usage>,
    trees: BTreeMap<u32, TreeSlot>,
    scores: HashMap<u32, f64>,
    other_trees: Usage,
    wasted: BTreeMap<(String, String), u64>,
}

impl Ledger {
    /// A ledger exporting at most `top_trees` trees of their own.
    pub fn new(top_trees: usize) -> Self {
        Self {
            top_trees,
            duration_s: 0.0,
            meter: Vec::new(),
            processes: Usage::default(),
            buckets: Buckets::default(),
            users: BTreeMap::new(),
            units: BTreeMap::new(),
            containers: BTreeMap::new(),
            trees: BTreeMap::new(),
            scores: HashMap::new(),
            other_trees: Usage::default(),
            wasted: BTreeMap::new(),
        }
    }

    /// Changes how many trees get a series of their own (on reload); the weakest go first.
    pub fn set_top_trees(&mut self, n: usize) {
        self.top_trees = n;
        while self.trees.len() > n {
            let Some(weakest) = self.weakest_exported() else { break };
            self.trees.remove(&weakest);
        }
    }

    /// Adds one interval.
    pub fn record(
        &mut self,
        interval_s: f64,
        meter: &Meter,
        rows: &[ProcessRow],
        buckets: &Buckets,
        tree_info: TreeInfo<'_>,
    ) {
        self.duration_s += interval_s;
        match self.meter.iter_mut().find(|m| m.source == meter.source && m.estimated == meter.estimated) {
            Some(m) => m.energy_j.add(&meter.energy_j),
            None => self.meter.push(MeterTotal {
                source: meter.source.clone(),
                estimated: meter.estimated,
                energy_j: meter.energy_j,
            }),
        }
        self.buckets.kernel.add(&buckets.kernel);
        self.buckets.idle.add(&buckets.idle);
        let mut per_tree: BTreeMap<u32, Usage> = BTreeMap::new();
        for r in rows {
            self.processes.add(&r.interval);
            self.users.entry(r.user.clone()).or_default().add(&r.interval);
            if let Some(unit) = &r.unit {
                self.units.entry(unit.clone()).or_default().add(&r.interval);
            }
            if let Some(c) = &r.container {
                self.containers.entry(c.clone()).or_default().add(&r.interval);
            }
            per_tree.entry(r.tree_root).or_default().add(&r.interval);
        }
        self.record_trees(&per_tree, tree_info);
    }

    fn weakest_exported(&self) -> Option<u32> {
        let score = |r: &u32| self.scores.get(r).copied().unwrap_or(0.0);
        self.trees.keys().copied().min_by(|a, b| score(a).total_cmp(&score(b)).then(b.cmp(a)))
    }

    fn record_trees(&mut self, per_tree: &BTreeMap<u32, Usage>, tree_info: TreeInfo<'_>) {
        for s in self.scores.values_mut() {
            *s *= SCORE_DECAY;
        }
        for (root, u) in per_tree {
            *self.scores.entry(*root).or_default() += u.energy_j.total;
        }
        let exported = &self.trees;
        self.scores.retain(|root, s| *s > 1e-12 || exported.contains_key(root));
        // Trees that are gone give up their series.
        self.trees.retain(|root, _| tree_info(*root).is_some());
        let score = |r: u32| self.scores.get(&r).copied().unwrap_or(0.0);
        let mut candidates: Vec<u32> = per_tree
            .keys()
            .copied()
            .filter(|r| !self.trees.contains_key(r) && score(*r) > 0.0 && tree_info(*r).is_some())
            .collect();
        candidates.sort_by(|a, b| score(*b).total_cmp(&score(*a)).then(a.cmp(b)));
        let mut next = candidates.into_iter();
        let admit = |trees: &mut BTreeMap<u32, TreeSlot>, root: u32| {
            let (comm, user) = tree_info(root).unwrap_or_default();
            trees.insert(root, TreeSlot { comm, user, usage: Usage::default() });
        };
        let mut pending = next.next();
        while let Some(root) = pending.filter(|_| self.trees.len() < self.top_trees) {
            admit(&mut self.trees, root);
            pending = next.next();
        }
        // At most one swap per interval, with hysteresis, so that series do not flap.
        if let (Some(root), Some(weakest)) = (pending, self.weakest_exported())
            && score(root) > SWAP_FACTOR * score(weakest)
        {
            self.trees.remove(&weakest);
            admit(&mut self.trees, root);
        }
        for (root, u) in per_tree {
            match self.trees.get_mut(root) {
                Some(slot) => slot.usage.add(u),
                None => self.other_trees.add(u),
            }
        }
    }

    /// Takes the wasted bytes found so far per `(kind, user)`. The findings are re-derived
    /// from a bounded tracker, so a figure that went down (an entry evicted) keeps its
    /// highest value: the counter never decreases.
    pub fn record_wasted(&mut self, found: impl IntoIterator<Item = (String, String, u64)>) {
        let mut now: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (kind, user, bytes) in found {
            *now.entry((kind, user)).or_default() += bytes;
        }
        for (key, bytes) in now {
            let v = self.wasted.entry(key).or_default();
            *v = (*v).max(bytes);
        }
    }

    /// Everything so far.
    pub fn cumulative(&self) -> Cumulative {
        let scopes = |m: &BTreeMap<String, Usage>| {
            m.iter().map(|(k, u)| ScopeTotals { key: k.clone(), usage: *u }).collect::<Vec<_>>()
        };
        Cumulative {
            duration_s: self.duration_s,
            meter: self.meter.clone(),
            processes: self.processes,
            buckets: self.buckets,
            users: scopes(&self.users),
            units: scopes(&self.units),
            containers: self
                .containers
                .iter()
                .map(|(c, u)| ContainerTotals { container: c.clone(), usage: *u })
                .collect(),
            trees: self
                .trees
                .iter()
                .map(|(root, s)| TreeSeries {
                    root_pid: *root,
                    comm: s.comm.clone(),
                    user: s.user.clone(),
                    usage: s.usage,
                })
                .collect(),
            other_trees: self.other_trees,
            wasted: self
                .wasted
                .iter()
                .map(|((kind, user), bytes)| WastedBytes {
                    kind: kind.clone(),
                    user: user.clone(),
                    bytes: *bytes,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DomainJoules, EnergyBreakdown};

    fn row(pid: u32, root: u32, user: &str, j: f64) -> ProcessRow {
        let interval = Usage {
            cpu_time_s: j / 10.0,
            energy_j: EnergyBreakdown { total: j, cpu: j, dynamic: j, ..Default::default() },
            ..Default::default()
        };
        ProcessRow {
            pid,
            ppid: root,
            uid: 0,
            user: user.into(),
            comm: format!("p{pid}"),
            cgroup: None,
            unit: Some(format!("{user}.service")),
            container: None,
            tree_root: root,
            interval,
            total: interval,
        }
    }

    fn meter(j: f64) -> Meter {
        Meter {
            source: "model".into(),
            estimated: true,
            energy_j: DomainJoules { cpu: j, total: j, ..Default::default() },
            ..Default::default()
        }
    }

    fn alive(root: u32) -> Option<(String, String)> {
        Some((format!("root{root}"), "u".into()))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn scopes_add_up_to_the_processes_and_never_decrease() {
        let mut l = Ledger::new(2);
        let mut last: Option<Cumulative> = None;
        for i in 0..20u32 {
            // Trees 10, 20, 30, 40 with changing loads; users alice and bob.
            let rows = [
                row(11, 10, "alice", 1.0 + f64::from(i % 3)),
                row(21, 20, "bob", 0.5),
                row(31, 30, "alice", if i > 10 { 9.0 } else { 0.1 }),
                row(41, 40, "bob", 0.2),
            ];
            let buckets = Buckets {
                kernel: Usage {
                    energy_j: EnergyBreakdown { total: 0.3, ..Default::default() },
                    ..Default::default()
                },
                idle: Usage {
                    energy_j: EnergyBreakdown { total: 0.7, ..Default::default() },
                    ..Default::default()
                },
            };
            let total: f64 = rows.iter().map(|r| r.interval.energy_j.total).sum::<f64>() + 1.0;
            l.record(1.0, &meter(total), &rows, &buckets, &alive);
            let c = l.cumulative();
            let users: f64 = c.users.iter().map(|u| u.usage.energy_j.total).sum();
            let node = c.meter[0].energy_j.total;
            assert!(close(users + c.buckets.kernel.energy_j.total + c.buckets.idle.energy_j.total, node));
            assert!(c.trees.len() <= 2);
            if let Some(prev) = &last {
                for u in &c.users {
                    let before =
                        prev.users.iter().find(|p| p.key == u.key).map_or(0.0, |p| p.usage.energy_j.total);
                    assert!(u.usage.energy_j.total >= before);
                }
                assert!(c.other_trees.energy_j.total >= prev.other_trees.energy_j.total);
                for t in &c.trees {
                    if let Some(p) = prev.trees.iter().find(|p| p.root_pid == t.root_pid) {
                        assert!(t.usage.energy_j.total >= p.usage.energy_j.total);
                    }
                }
            }
            last = Some(c);
        }
        // Tree 30 became the largest: it took a slot, from the weakest (40 or 20).
        let c = last.unwrap();
        let roots: Vec<u32> = c.trees.iter().map(|t| t.root_pid).collect();
        assert!(roots.contains(&30) && roots.contains(&10), "{roots:?}");
        assert_eq!(
            c.units.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["alice.service", "bob.service"]
        );
    }

    #[test]
    fn tree_series_and_other_add_up_per_interval() {
        let mut l = Ledger::new(1);
        let rows = [row(11, 10, "a", 2.0), row(21, 20, "b", 3.0)];
        l.record(1.0, &meter(5.0), &rows, &Buckets::default(), &alive);
        let c = l.cumulative();
        assert_eq!(c.trees.len(), 1);
        assert_eq!(c.trees[0].root_pid, 20);
        assert_eq!((c.trees[0].usage.energy_j.total, c.other_trees.energy_j.total), (3.0, 2.0));
        // Root 20 is gone: its series ends, and 10 takes the slot from this interval on.
        l.record(1.0, &meter(2.0), &[row(11, 10, "a", 2.0)], &Buckets::default(), &|r| {
            (r != 20).then(|| alive(r)).flatten()
        });
        let c = l.cumulative();
        assert_eq!((c.trees[0].root_pid, c.trees[0].usage.energy_j.total), (10, 2.0));
        assert_eq!(c.other_trees.energy_j.total, 2.0);
        assert_eq!(c.trees[0].comm, "root10");
        l.set_top_trees(0);
        assert!(l.cumulative().trees.is_empty());
    }

    #[test]
    fn wasted_bytes_never_decrease() {
        let mut l = Ledger::new(1);
        l.record_wasted([("reread".into(), "alice".into(), 100), ("reread".into(), "alice".into(), 50)]);
        l.record_wasted([("reread".into(), "alice".into(), 120)]);
        assert_eq!(l.cumulative().wasted[0].bytes, 150);
        l.record_wasted([("reread".into(), "alice".into(), 400), ("copy".into(), "bob".into(), 7)]);
        let w = l.cumulative().wasted;
        assert_eq!(
            w.iter().map(|w| (w.kind.as_str(), w.bytes)).collect::<Vec<_>>(),
            [("copy", 7), ("reread", 400)]
        );
    }
}
