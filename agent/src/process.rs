//! The process table and its trees, built from lifecycle events and `/proc`; pure (no I/O).
//!
//! Every process the agent has seen keeps its own usage totals. When an exited process is
//! pruned (daemon mode keeps a bounded table), its totals are folded into its parent's
//! `reaped` totals, like the kernel's `cutime`, so a tree never loses what its dead members
//! used. Roll-ups (tree, user, cgroup) are sums of the same per-process numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{
    attribution::EnergyBreakdown,
    carbon::Emissions,
    io::ProcessIo,
    usage::{IntervalUsage, ProcessCpu},
};

pub type Pid = u32;

/// kthreadd: parent of every kernel thread.
pub const KTHREADD: Pid = 2;

/// What a process is, for bucketing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    User,
    /// A kernel thread: counted in the `kernel` bucket.
    Kernel,
}

/// Usage that accumulates over time, per process and per tree: CPU time from the kernel,
/// the energy attributed to it, its emissions, and its I/O.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub cpu_ns: u64,
    pub switches: u64,
    pub energy: EnergyBreakdown,
    pub emissions: Emissions,
    pub io: ProcessIo,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.cpu_ns += other.cpu_ns;
        self.switches += other.switches;
        self.energy.accumulate(&other.energy);
        self.emissions = self.emissions.add(&other.emissions);
        self.io.add(&other.io);
    }

    pub fn cpu_s(&self) -> f64 {
        self.cpu_ns as f64 / 1e9
    }
}

/// What the table knows about a process from outside events, e.g. a `/proc/<pid>` read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: Pid,
    pub ppid: Pid,
    pub uid: u32,
    pub comm: String,
    pub kind: ProcessKind,
    /// Start time in CLOCK_MONOTONIC ns since boot, when known.
    pub start_ns: Option<u64>,
}

/// Looks up a process that the table does not know (it existed before the agent started, or
/// its fork event was lost). `None` when it is already gone.
pub trait ProcLookup {
    fn lookup(&self, pid: Pid) -> Option<ProcInfo>;
}

impl<F: Fn(Pid) -> Option<ProcInfo>> ProcLookup for F {
    fn lookup(&self, pid: Pid) -> Option<ProcInfo> {
        self(pid)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub pid: Pid,
    pub ppid: Pid,
    pub uid: u32,
    pub comm: String,
    /// File name of the last exec seen, if any.
    pub exe: Option<String>,
    pub cgroup_id: u64,
    /// cgroup path, read from `/proc` the first time the process is active (None: unknown).
    pub cgroup: Option<String>,
    pub kind: ProcessKind,
    pub start_ns: Option<u64>,
    /// Monotonic ns of the exit, and the exit code as the kernel reported it.
    pub exited: Option<(u64, i32)>,
    /// Own usage since the agent saw it.
    pub totals: Totals,
    /// Own usage in the last interval.
    pub interval: Totals,
    /// Totals of descendants that were pruned from the table.
    pub reaped: Totals,
    /// How many processes were pruned into `reaped` (themselves and their own reaped).
    pub reaped_count: u64,
    /// Interval number of the exit, to prune after a grace period.
    exited_at_interval: Option<u64>,
    /// Whether the fork event was seen (otherwise it came from /proc or a CPU sample).
    seen_fork: bool,
}

impl Process {
    fn new(info: ProcInfo) -> Self {
        Process {
            pid: info.pid,
            ppid: info.ppid,
            uid: info.uid,
            comm: info.comm,
            exe: None,
            cgroup_id: 0,
            cgroup: None,
            kind: info.kind,
            start_ns: info.start_ns,
            exited: None,
            totals: Totals::default(),
            interval: Totals::default(),
            reaped: Totals::default(),
            reaped_count: 0,
            exited_at_interval: None,
            seen_fork: false,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.exited.is_none()
    }
}

/// Counters of things the table had to guess.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableLosses {
    /// CPU time was seen for a tgid that neither an event nor `/proc` could name.
    pub unknown_processes: u64,
    /// A fork reused the pid of a process still marked alive (its exit event was lost).
    pub pid_reuse_without_exit: u64,
}

#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<Pid, Process>,
    interval_no: u64,
    pub losses: TableLosses,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, pid: Pid) -> Option<&Process> {
        self.procs.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    /// Adds processes that already existed (from a `/proc` scan); known pids are left alone.
    pub fn seed(&mut self, infos: impl IntoIterator<Item = ProcInfo>) {
        for info in infos {
            self.procs.entry(info.pid).or_insert_with(|| Process::new(info));
        }
    }

    /// A new process `pid`, child of `ppid`.
    pub fn fork(&mut self, pid: Pid, ppid: Pid, comm: &str, uid: u32, cgroup_id: u64, ts_ns: u64) {
        if let Some(old) = self.procs.get(&pid) {
            if old.is_alive() && !old.seen_fork {
                // The same process, first seen through /proc or a CPU sample read after its
                // fork event was queued: events are always drained before counters.
                let p = self.procs.get_mut(&pid).expect("present");
                p.ppid = ppid;
                p.seen_fork = true;
                p.start_ns = Some(ts_ns);
                if p.comm == "?" {
                    p.comm = comm.to_owned();
                    p.uid = uid;
                }
                return;
            }
            if old.is_alive() {
                self.losses.pid_reuse_without_exit += 1;
            }
            self.prune_one(pid);
        }
        let kind = if ppid == KTHREADD || self.procs.get(&ppid).is_some_and(|p| p.kind == ProcessKind::Kernel)
        {
            ProcessKind::Kernel
        } else {
            ProcessKind::User
        };
        let mut p =
            Process::new(ProcInfo { pid, ppid, uid, comm: comm.to_owned(), kind, start_ns: Some(ts_ns) });
        p.cgroup_id = cgroup_id;
        p.seen_fork = true;
        self.procs.insert(pid, p);
    }

    /// `pid` exec'd `filename`; its comm is now `comm`.
    pub fn exec(&mut self, pid: Pid, comm: &str, filename: &str, uid: u32, lookup: &impl ProcLookup) {
        let p = self.ensure(pid, lookup);
        p.comm = comm.to_owned();
        p.uid = uid;
        if !filename.is_empty() {
            p.exe = Some(filename.to_owned());
        }
    }

    /// `pid` exited with `code`.
    pub fn exit(&mut self, pid: Pid, code: i32, ts_ns: u64) {
        let interval_no = self.interval_no;
        if let Some(p) = self.procs.get_mut(&pid)
            && p.exited.is_none()
        {
            p.exited = Some((ts_ns, code));
            p.exited_at_interval = Some(interval_no);
        }
    }

    /// The record for `pid`, created from `lookup` (or as unknown) when missing.
    fn ensure(&mut self, pid: Pid, lookup: &impl ProcLookup) -> &mut Process {
        if !self.procs.contains_key(&pid) {
            let info = lookup.lookup(pid).unwrap_or_else(|| {
                self.losses.unknown_processes += 1;
                ProcInfo {
                    pid,
                    ppid: 0,
                    uid: u32::MAX,
                    comm: "?".into(),
                    kind: ProcessKind::User,
                    start_ns: None,
                }
            });
            self.procs.insert(pid, Process::new(info));
        }
        self.procs.get_mut(&pid).expect("inserted")
    }

    /// Takes one interval's CPU deltas by tgid (key 0 = idle) and returns the interval's usage,
    /// with kernel threads and idle in their buckets. Every process's `interval` is reset.
    pub fn apply_cpu(
        &mut self,
        deltas: &BTreeMap<Pid, ProcessCpu>,
        interval_s: f64,
        ncpu: u32,
        lookup: &impl ProcLookup,
    ) -> IntervalUsage {
        self.interval_no += 1;
        for p in self.procs.values_mut() {
            p.interval = Totals::default();
        }
        let mut usage = IntervalUsage { interval_s, ncpu, ..Default::default() };
        for (&tgid, cpu) in deltas {
            if cpu.cpu_ns == 0 {
                continue;
            }
            if tgid == carbon_agent_common::IDLE_TGID {
                usage.idle_cpu_ns += cpu.cpu_ns;
                continue;
            }
            let p = self.ensure(tgid, lookup);
            p.interval = Totals { cpu_ns: cpu.cpu_ns, switches: cpu.switches, ..Default::default() };
            p.totals.cpu_ns += cpu.cpu_ns;
            p.totals.switches += cpu.switches;
            match p.kind {
                ProcessKind::Kernel => usage.kernel_cpu_ns += cpu.cpu_ns,
                ProcessKind::User => {
                    usage.processes.insert(tgid, *cpu);
                }
            }
        }
        usage
    }

    /// Adds what the later pipeline stages attributed to `tgid` in the current interval
    /// (energy, emissions, I/O) to its interval and its totals.
    pub fn add_interval(&mut self, tgid: Pid, extra: &Totals, lookup: &impl ProcLookup) {
        let p = self.ensure(tgid, lookup);
        p.interval.add(extra);
        p.totals.add(extra);
    }

    /// Sets the cgroup path of `pid` (once known it is kept: processes rarely move).
    pub fn set_cgroup(&mut self, pid: Pid, path: String) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.cgroup = Some(path);
        }
    }

    /// Exited processes whose last CPU time has certainly been read: exited at least one
    /// interval ago. The caller reads their final counters, then calls [`Self::prune_exited`].
    pub fn exited_before_last_interval(&self) -> Vec<Pid> {
        self.procs
            .values()
            .filter(|p| p.exited_at_interval.is_some_and(|i| i + 1 < self.interval_no))
            .map(|p| p.pid)
            .collect()
    }

    /// Removes exited processes older than `grace_intervals`, folding their totals into their
    /// nearest ancestor still in the table. Returns the pids removed.
    pub fn prune_exited(&mut self, grace_intervals: u64) -> Vec<Pid> {
        let mut old: Vec<(u64, Pid)> = self
            .procs
            .values()
            .filter_map(|p| {
                p.exited_at_interval.filter(|&i| i + grace_intervals < self.interval_no).map(|i| (i, p.pid))
            })
            .collect();
        // Deepest first is not needed: folding goes to the nearest ancestor in the table.
        old.sort();
        for &(_, pid) in &old {
            self.prune_one(pid);
        }
        old.into_iter().map(|(_, pid)| pid).collect()
    }

    /// [`Self::prune_exited`], except for the members of the trees of `pinned` roots.
    pub fn prune_exited_keeping(&mut self, grace_intervals: u64, pinned: &BTreeSet<Pid>) -> Vec<Pid> {
        if pinned.is_empty() {
            return self.prune_exited(grace_intervals);
        }
        let mut old: Vec<(u64, Pid)> = self
            .procs
            .values()
            .filter_map(|p| {
                p.exited_at_interval.filter(|&i| i + grace_intervals < self.interval_no).map(|i| (i, p.pid))
            })
            .filter(|&(_, pid)| !pinned.iter().any(|&root| self.is_in_tree(pid, root)))
            .collect();
        old.sort();
        for &(_, pid) in &old {
            self.prune_one(pid);
        }
        old.into_iter().map(|(_, pid)| pid).collect()
    }

    fn prune_one(&mut self, pid: Pid) {
        let Some(p) = self.procs.remove(&pid) else { return };
        // Its children now hang from its parent, like reparenting.
        for child in self.procs.values_mut().filter(|c| c.ppid == pid) {
            child.ppid = p.ppid;
        }
        if let Some(parent) = self.procs.get_mut(&p.ppid) {
            parent.reaped.add(&p.totals);
            parent.reaped.add(&p.reaped);
            parent.reaped_count += 1 + p.reaped_count;
        }
    }

    /// Is `pid` `root` or one of its descendants?
    pub fn is_in_tree(&self, pid: Pid, root: Pid) -> bool {
        let mut cur = pid;
        for _ in 0..4096 {
            if cur == root {
                return true;
            }
            match self.procs.get(&cur) {
                Some(p) if p.ppid != cur && p.ppid != 0 => cur = p.ppid,
                _ => return false,
            }
        }
        false
    }

    /// The root of the tree `pid` belongs to for the live view: its ancestor just below init
    /// (pid 1), kthreadd, or the agent's notion of top (a process whose parent is unknown).
    pub fn top_of(&self, pid: Pid) -> Pid {
        let mut cur = pid;
        for _ in 0..4096 {
            let Some(p) = self.procs.get(&cur) else { return cur };
            if p.ppid <= 1 || p.ppid == KTHREADD || p.pid == KTHREADD || !self.procs.contains_key(&p.ppid) {
                return cur;
            }
            cur = p.ppid;
        }
        cur
    }

    /// Pids of `root` and all its descendants still in the table, parents before children.
    pub fn tree_members(&self, root: Pid) -> Vec<Pid> {
        let children = self.children_index();
        let mut out = Vec::new();
        if !self.procs.contains_key(&root) {
            return out;
        }
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            out.push(pid);
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids.iter().rev());
            }
        }
        out
    }

    /// Sum of totals over a tree: members' own totals plus what was reaped into them.
    pub fn tree_totals(&self, root: Pid) -> (Totals, u64) {
        let mut sum = Totals::default();
        let mut count = 0;
        for pid in self.tree_members(root) {
            let p = &self.procs[&pid];
            sum.add(&p.totals);
            sum.add(&p.reaped);
            count += 1 + p.reaped_count;
        }
        (sum, count)
    }

    /// Children by parent pid, sorted by pid.
    pub fn children_index(&self) -> HashMap<Pid, Vec<Pid>> {
        let mut idx: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for p in self.procs.values() {
            if p.ppid != p.pid {
                idx.entry(p.ppid).or_default().push(p.pid);
            }
        }
        for kids in idx.values_mut() {
            kids.sort_unstable();
        }
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: Pid) -> Option<ProcInfo> {
        None
    }

    fn cpu(pairs: &[(Pid, u64)]) -> BTreeMap<Pid, ProcessCpu> {
        pairs.iter().map(|&(p, ns)| (p, ProcessCpu { cpu_ns: ns, switches: 1 })).collect()
    }

    fn seeded() -> ProcessTable {
        let mut t = ProcessTable::new();
        let info = |pid, ppid, comm: &str, kind| ProcInfo {
            pid,
            ppid,
            uid: 0,
            comm: comm.into(),
            kind,
            start_ns: None,
        };
        t.seed([
            info(1, 0, "init", ProcessKind::User),
            info(2, 0, "kthreadd", ProcessKind::Kernel),
            info(10, 2, "kworker", ProcessKind::Kernel),
            info(100, 1, "bash", ProcessKind::User),
        ]);
        t
    }

    #[test]
    fn buckets_idle_kernel_and_processes() {
        let mut t = seeded();
        let u = t.apply_cpu(&cpu(&[(0, 500), (10, 20), (100, 300), (2, 5)]), 1.0, 2, &none);
        assert_eq!(u.idle_cpu_ns, 500);
        assert_eq!(u.kernel_cpu_ns, 25);
        assert_eq!(u.processes.keys().copied().collect::<Vec<_>>(), vec![100]);
        assert_eq!(t.get(100).unwrap().totals.cpu_ns, 300);
    }

    #[test]
    fn forked_children_of_kthreadd_are_kernel() {
        let mut t = seeded();
        t.fork(11, KTHREADD, "kworker/1", 0, 0, 5);
        t.fork(200, 100, "make", 1000, 0, 6);
        assert_eq!(t.get(11).unwrap().kind, ProcessKind::Kernel);
        assert_eq!(t.get(200).unwrap().kind, ProcessKind::User);
    }

    #[test]
    fn exec_renames_and_exit_keeps_cpu_in_tree() {
        let mut t = seeded();
        t.fork(200, 100, "bash", 1000, 0, 6);
        t.exec(200, "python3", "/usr/bin/python3", 1000, &none);
        t.apply_cpu(&cpu(&[(200, 1_000)]), 1.0, 2, &none);
        t.exit(200, 0, 7);
        assert_eq!(t.get(200).unwrap().comm, "python3");
        assert_eq!(t.get(200).unwrap().exe.as_deref(), Some("/usr/bin/python3"));
        // Prune after grace: totals move into bash's reaped totals.
        for _ in 0..3 {
            t.apply_cpu(&cpu(&[]), 1.0, 2, &none);
        }
        assert_eq!(t.prune_exited(1), vec![200]);
        assert!(t.get(200).is_none());
        let (tree, count) = t.tree_totals(100);
        assert_eq!(tree.cpu_ns, 1_000);
        assert_eq!(count, 2);
    }

    #[test]
    fn pruning_reparents_grandchildren() {
        let mut t = seeded();
        t.fork(200, 100, "sh", 0, 0, 1);
        t.fork(300, 200, "worker", 0, 0, 2);
        t.apply_cpu(&cpu(&[(200, 10), (300, 20)]), 1.0, 2, &none);
        t.exit(200, 0, 3);
        for _ in 0..3 {
            t.apply_cpu(&cpu(&[]), 1.0, 2, &none);
        }
        t.prune_exited(0);
        assert_eq!(t.get(300).unwrap().ppid, 100);
        assert!(t.is_in_tree(300, 100));
        assert_eq!(t.tree_totals(100).0.cpu_ns, 30);
    }

    #[test]
    fn pinned_trees_keep_their_exited_members() {
        let mut t = seeded();
        t.fork(200, 100, "followed", 0, 0, 1);
        t.fork(201, 200, "child", 0, 0, 2);
        t.fork(300, 100, "other", 0, 0, 3);
        t.exit(201, 0, 4);
        t.exit(300, 0, 4);
        for _ in 0..3 {
            t.apply_cpu(&cpu(&[]), 1.0, 2, &none);
        }
        assert_eq!(t.prune_exited_keeping(0, &BTreeSet::from([200])), vec![300]);
        assert!(t.get(201).is_some());
        assert_eq!(t.prune_exited_keeping(0, &BTreeSet::new()), vec![201]);
    }

    #[test]
    fn unknown_tgids_are_counted_not_dropped() {
        let mut t = seeded();
        let u = t.apply_cpu(&cpu(&[(4242, 77)]), 1.0, 2, &none);
        assert_eq!(u.processes[&4242].cpu_ns, 77);
        assert_eq!(t.losses.unknown_processes, 1);
        let found = |pid| {
            Some(ProcInfo {
                pid,
                ppid: 100,
                uid: 7,
                comm: "x".into(),
                kind: ProcessKind::User,
                start_ns: None,
            })
        };
        t.apply_cpu(&cpu(&[(4343, 1)]), 1.0, 2, &found);
        assert_eq!(t.get(4343).unwrap().ppid, 100);
        assert_eq!(t.losses.unknown_processes, 1);
    }

    #[test]
    fn pid_reuse_starts_a_new_record_and_keeps_the_old_totals() {
        let mut t = seeded();
        t.fork(200, 100, "a", 0, 0, 1);
        t.apply_cpu(&cpu(&[(200, 10)]), 1.0, 2, &none);
        // No exit seen, then the pid comes back as a new process.
        t.fork(200, 100, "b", 0, 0, 99);
        assert_eq!(t.losses.pid_reuse_without_exit, 1);
        assert_eq!(t.get(200).unwrap().comm, "b");
        assert_eq!(t.get(200).unwrap().totals.cpu_ns, 0);
        assert_eq!(t.get(100).unwrap().reaped.cpu_ns, 10);
    }

    #[test]
    fn a_fork_event_after_a_cpu_sample_is_the_same_process() {
        let mut t = seeded();
        let found = |pid| {
            Some(ProcInfo {
                pid,
                ppid: 100,
                uid: 7,
                comm: "x".into(),
                kind: ProcessKind::User,
                start_ns: None,
            })
        };
        t.apply_cpu(&cpu(&[(500, 10)]), 1.0, 2, &found);
        t.fork(500, 100, "x", 7, 0, 3);
        assert_eq!(t.losses.pid_reuse_without_exit, 0);
        assert_eq!(t.get(500).unwrap().totals.cpu_ns, 10);
    }

    #[test]
    fn tree_members_and_tops() {
        let mut t = seeded();
        t.fork(200, 100, "a", 0, 0, 1);
        t.fork(201, 200, "b", 0, 0, 2);
        t.fork(300, 1, "c", 0, 0, 3);
        assert_eq!(t.tree_members(100), vec![100, 200, 201]);
        assert_eq!(t.top_of(201), 100);
        assert_eq!(t.top_of(300), 300);
        assert_eq!(t.top_of(10), 10);
        assert!(!t.is_in_tree(300, 100));
    }
}
