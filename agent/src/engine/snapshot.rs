//! The pure step: one closed interval (the session's [`IntervalReport`] and the process table
//! after it) → an immutable, self-contained [`Snapshot`], and the ledger's totals moved on by
//! that interval. No I/O: tested without root on hand-built tables and reports.

use std::collections::{BTreeSet, HashMap};

use crate::{
    api::{self, Buckets, Carbon, DomainJoules, Meter, ProcessRow, Snapshot, TreeTotals, Usage},
    carbon::Pue,
    energy::MeterSummary,
    process::{Pid, ProcessKind, ProcessTable, Totals},
    procfs::{Users, systemd_unit},
    session::IntervalReport,
};

use super::{ledger::Ledger, scope::container_of};

/// What the pure step reads besides the report.
pub struct StepInput<'a> {
    pub seq: u64,
    pub report: &'a IntervalReport,
    pub table: &'a ProcessTable,
    pub users: &'a Users,
    pub pue: &'a Pue,
    /// Followed roots (`run`): their members' tree is the followed root.
    pub follows: &'a BTreeSet<Pid>,
    /// Findings per tree root, when the snapshot lists trees ([`Snapshot::trees`]); `None`:
    /// no trees (they cost a pass over the whole table).
    pub trees: Option<&'a HashMap<Pid, u64>>,
}

fn usage_of(t: &Totals) -> Usage {
    Usage { cpu_time_s: t.cpu_s(), energy_j: t.energy, emissions_g: t.emissions, io: t.io.json() }
}

/// The tree a process is shown under: the followed root it belongs to, else its top.
pub fn tree_root(table: &ProcessTable, follows: &BTreeSet<Pid>, pid: Pid) -> Pid {
    follows.iter().copied().find(|&root| table.is_in_tree(pid, root)).unwrap_or_else(|| table.top_of(pid))
}

/// The API form of the meter's interval summary.
pub fn meter_of(m: &MeterSummary) -> Meter {
    let e = &m.energy_j;
    Meter {
        source: m.source.clone(),
        estimated: m.estimated,
        energy_j: DomainJoules {
            cpu: e.cpu,
            dram: e.dram,
            gpu: e.gpu,
            platform: e.platform,
            total: e.total,
            core: e.core,
            uncore: e.uncore,
            psys: e.psys,
        },
        static_power: m
            .static_power
            .iter()
            .map(|(k, s)| {
                let source = serde_json::to_value(s.source).ok().and_then(|v| v.as_str().map(str::to_owned));
                (k.clone(), api::StaticPower { watts: s.watts, source: source.unwrap_or_default() })
            })
            .collect(),
        gpu_share_basis: m.gpu_share_basis.iter().map(|(k, v)| (k.clone(), (*v).to_owned())).collect(),
        agreement: m.agreement.map(|a| api::Agreement {
            other: a.other.to_owned(),
            selected_j: a.selected_j,
            other_j: a.other_j,
            relative_difference: a.relative_difference,
        }),
        warnings: m.warnings.clone(),
    }
}

/// Loss counters by name, from structs of counters (their JSON field names).
pub fn losses_by_name<'a>(parts: impl IntoIterator<Item = &'a dyn erased::Counters>) -> api::Losses {
    let mut out = api::Losses::new();
    for part in parts {
        if let Ok(serde_json::Value::Object(map)) = part.to_json() {
            out.extend(map.into_iter().filter_map(|(k, v)| v.as_u64().map(|n| (k, n))));
        }
    }
    out
}

/// Structs of loss counters, behind one object-safe trait.
pub mod erased {
    /// Something that serializes to a JSON object of counters.
    pub trait Counters {
        fn to_json(&self) -> serde_json::Result<serde_json::Value>;
    }

    impl<T: serde::Serialize> Counters for T {
        fn to_json(&self) -> serde_json::Result<serde_json::Value> {
            serde_json::to_value(self)
        }
    }
}

fn losses_of(report: &IntervalReport) -> api::Losses {
    losses_by_name([&report.kernel_losses as &dyn erased::Counters, &report.table_losses])
}

/// Builds the interval's snapshot and adds the interval to `ledger`.
pub fn build(input: &StepInput<'_>, ledger: &mut Ledger) -> Snapshot {
    let StepInput { seq, report, table, users, pue, follows, trees } = *input;
    // Every process with CPU time or energy (a GPU-only process has energy without CPU time).
    let mut pids: Vec<Pid> = report.usage.processes.keys().copied().collect();
    pids.extend(report.energy.per_tgid.keys().filter(|p| !report.usage.processes.contains_key(p)));
    let mut processes: Vec<ProcessRow> = pids
        .into_iter()
        .map(|pid| {
            let p = table.get(pid);
            let uid = p.map_or(u32::MAX, |p| p.uid);
            let cgroup = p.and_then(|p| p.cgroup.clone());
            ProcessRow {
                pid,
                ppid: p.map_or(0, |p| p.ppid),
                uid,
                user: users.name(uid),
                comm: p.map_or_else(|| "?".into(), |p| p.comm.clone()),
                unit: cgroup.as_deref().and_then(systemd_unit).map(str::to_owned),
                container: cgroup.as_deref().and_then(container_of),
                cgroup,
                tree_root: tree_root(table, follows, pid),
                interval: Usage {
                    cpu_time_s: report.usage.processes.get(&pid).map_or(0, |c| c.cpu_ns) as f64 / 1e9,
                    energy_j: report.energy.per_tgid.get(&pid).copied().unwrap_or_default(),
                    emissions_g: report.emissions.get(&pid).copied().unwrap_or_default(),
                    io: report.io.processes.get(&pid).map(|io| io.json()).unwrap_or_default(),
                },
                total: p.map(|p| usage_of(&p.totals)).unwrap_or_default(),
            }
        })
        .collect();
    processes.sort_by(|a, b| b.interval.cpu_time_s.total_cmp(&a.interval.cpu_time_s).then(a.pid.cmp(&b.pid)));
    let buckets = Buckets {
        kernel: Usage {
            cpu_time_s: report.usage.kernel_cpu_ns as f64 / 1e9,
            energy_j: report.energy.kernel,
            emissions_g: report.kernel_emissions,
            io: Default::default(),
        },
        idle: Usage {
            cpu_time_s: report.usage.idle_cpu_ns as f64 / 1e9,
            energy_j: report.energy.idle,
            emissions_g: report.idle_emissions,
            io: Default::default(),
        },
    };
    let meter = meter_of(&report.energy.meter);
    let tree_info = |root: Pid| table.get(root).map(|p| (p.comm.clone(), users.name(p.uid)));
    ledger.record(report.usage.interval_s, &meter, &processes, &buckets, &tree_info);
    Snapshot {
        schema_version: api::SCHEMA_VERSION,
        seq,
        timestamp: crate::output::rfc3339(report.timestamp),
        interval_s: report.usage.interval_s,
        cpus: report.usage.ncpu,
        processes_known: table.len() as u64,
        meter,
        carbon: Carbon {
            intensity: report.carbon.intensity.g_per_kwh,
            source: report.carbon.intensity.source.clone(),
            pue: pue.value,
            pue_source: pue.source.clone(),
        },
        processes,
        buckets,
        block_devices: report.io.block.clone(),
        io_timing: report.io.timing,
        losses: losses_of(report),
        cumulative: ledger.cumulative(),
        trees: trees.map(|findings| trees_of(table, users, follows, findings)).unwrap_or_default(),
    }
}

/// Every tree of user processes that has had CPU time, busiest in the interval first (then by
/// total CPU time, then by root pid).
pub fn trees_of(
    table: &ProcessTable,
    users: &Users,
    follows: &BTreeSet<Pid>,
    findings: &HashMap<Pid, u64>,
) -> Vec<TreeTotals> {
    struct Tree {
        count: u64,
        interval: Totals,
        total: Totals,
    }
    let mut by_root: HashMap<Pid, Tree> = HashMap::new();
    for p in table.iter().filter(|p| p.kind == ProcessKind::User) {
        let t = by_root.entry(tree_root(table, follows, p.pid)).or_insert_with(|| Tree {
            count: 0,
            interval: Totals::default(),
            total: Totals::default(),
        });
        t.interval.add(&p.interval);
        t.total.add(&p.totals);
        t.total.add(&p.reaped);
        t.count += 1 + p.reaped_count;
    }
    let mut trees: Vec<(Pid, Tree)> = by_root.into_iter().filter(|(_, t)| t.total.cpu_ns > 0).collect();
    trees.sort_by(|(ra, a), (rb, b)| {
        b.interval.cpu_ns.cmp(&a.interval.cpu_ns).then(b.total.cpu_ns.cmp(&a.total.cpu_ns)).then(ra.cmp(rb))
    });
    trees
        .into_iter()
        .map(|(root, t)| {
            let p = table.get(root);
            TreeTotals {
                root_pid: root,
                comm: p.map_or_else(|| "?".into(), |p| p.comm.clone()),
                user: users.name(p.map_or(u32::MAX, |p| p.uid)),
                processes: t.count,
                interval: usage_of(&t.interval),
                total: usage_of(&t.total),
                findings: findings.get(&root).copied().unwrap_or(0),
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{
        attribution::EnergyBreakdown,
        carbon::Emissions,
        process::{ProcInfo, ProcessKind},
        usage::ProcessCpu,
    };

    fn energy(j: f64) -> EnergyBreakdown {
        EnergyBreakdown { total: j, cpu: j, dynamic: j, ..Default::default() }
    }

    /// Snapshots number 1..=`n` of [`fixture`] built in one ledger (default PUE, no follows):
    /// the last one. `with_trees`: with per-tree rows (sshd's tree has two findings).
    pub(crate) fn fixture_snapshot(ledger: &mut Ledger, n: u64, with_trees: bool) -> Snapshot {
        let (table, report, users) = fixture();
        let (pue, follows) = (Pue::default(), BTreeSet::new());
        let findings = HashMap::from([(100, 2)]);
        let mut last = Snapshot::default();
        for seq in 1..=n {
            let input = StepInput {
                seq,
                report: &report,
                table: &table,
                users: &users,
                pue: &pue,
                follows: &follows,
                trees: with_trees.then_some(&findings),
            };
            last = build(&input, ledger);
        }
        last
    }

    /// A table with init, two trees (sshd → bash → make; cron) and a kernel thread, and one
    /// interval's report in which make, bash and cron ran.
    pub(crate) fn fixture() -> (ProcessTable, IntervalReport, Users) {
        let mut t = ProcessTable::new();
        let info = |pid, ppid, uid, comm: &str, kind| ProcInfo {
            pid,
            ppid,
            uid,
            comm: comm.into(),
            kind,
            start_ns: None,
        };
        t.seed([
            info(1, 0, 0, "init", ProcessKind::User),
            info(100, 1, 0, "sshd", ProcessKind::User),
            info(101, 100, 1000, "bash", ProcessKind::User),
            info(200, 1, 0, "cron", ProcessKind::User),
            info(2, 0, 0, "kthreadd", ProcessKind::Kernel),
        ]);
        t.fork(102, 101, "make", 1000, 0, 1);
        t.set_cgroup(102, "/user.slice/user-1000.slice/session-1.scope".into());
        let deltas: BTreeMap<_, _> =
            [(101, 100_000_000u64), (102, 900_000_000), (200, 50_000_000), (2, 10_000_000), (0, 940_000_000)]
                .into_iter()
                .map(|(p, ns)| (p, ProcessCpu { cpu_ns: ns, switches: 1 }))
                .collect();
        let usage = t.apply_cpu(&deltas, 1.0, 2, &|_| None);
        let mut e = crate::energy::IntervalEnergy::default();
        for (pid, j) in [(101, 1.0), (102, 9.0), (200, 0.5)] {
            e.per_tgid.insert(pid, energy(j));
        }
        e.kernel = energy(0.1);
        e.idle = energy(2.4);
        e.meter.source = "model".into();
        e.meter.estimated = true;
        e.meter.energy_j.cpu = 13.0;
        e.meter.energy_j.total = 13.0;
        let emissions: BTreeMap<u32, Emissions> =
            e.per_tgid.iter().map(|(p, en)| (*p, Emissions::new(en.total * 0.01, 0.001))).collect();
        for (pid, en) in &e.per_tgid {
            let extra = Totals { energy: *en, emissions: emissions[pid], ..Default::default() };
            t.add_interval(*pid, &extra, &|_| None);
        }
        let report = IntervalReport {
            timestamp: SystemTime::UNIX_EPOCH,
            usage,
            energy: e,
            emissions,
            kernel_emissions: Emissions::new(0.001, 0.0),
            idle_emissions: Emissions::new(0.024, 0.0),
            carbon: crate::carbon::IntervalCarbon::default(),
            io: Default::default(),
            kernel_losses: Default::default(),
            table_losses: Default::default(),
        };
        (t, report, Users::parse("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"))
    }

    #[test]
    fn rows_are_resolved_and_add_up_to_the_meter() {
        let (table, report, users) = fixture();
        let mut ledger = Ledger::new(10);
        let pue = Pue::new(1.5, "--pue").unwrap();
        let follows = BTreeSet::new();
        let input = StepInput {
            seq: 1,
            report: &report,
            table: &table,
            users: &users,
            pue: &pue,
            follows: &follows,
            trees: None,
        };
        let s = build(&input, &mut ledger);
        assert_eq!(s.schema_version, api::SCHEMA_VERSION);
        assert_eq!(s.processes.iter().map(|r| r.pid).collect::<Vec<_>>(), [102, 101, 200]);
        let make = &s.processes[0];
        assert_eq!(
            (make.user.as_str(), make.comm.as_str(), make.ppid, make.tree_root),
            ("alice", "make", 101, 100)
        );
        assert_eq!(make.unit.as_deref(), Some("session-1.scope"));
        assert!((make.interval.cpu_time_s - 0.9).abs() < 1e-12);
        assert_eq!(make.total.energy_j.total, 9.0);
        assert_eq!(s.processes[2].tree_root, 200);
        let rows: f64 = s.processes.iter().map(|r| r.interval.energy_j.total).sum();
        let sum = rows + s.buckets.kernel.energy_j.total + s.buckets.idle.energy_j.total;
        assert!((sum - s.meter.energy_j.total).abs() < 1e-12);
        assert!((s.buckets.idle.cpu_time_s - 0.94).abs() < 1e-12);
        assert_eq!((s.carbon.pue, s.carbon.pue_source.as_str()), (1.5, "--pue"));
        assert_eq!(s.losses["cpu_map_full"], 0);
        assert_eq!(s.losses["unknown_processes"], 0);
        let c = &s.cumulative;
        let users_j: Vec<(&str, f64)> =
            c.users.iter().map(|u| (u.key.as_str(), u.usage.energy_j.total)).collect();
        assert_eq!(users_j, [("alice", 10.0), ("root", 0.5)]);
        assert_eq!(
            c.trees.iter().map(|t| (t.root_pid, t.comm.as_str(), t.user.as_str())).collect::<Vec<_>>(),
            [(100, "sshd", "root"), (200, "cron", "root")]
        );
        assert_eq!(c.meter[0].energy_j.total, 13.0);

        // A followed root: make's and bash's tree is bash now.
        let follows = BTreeSet::from([101]);
        let input = StepInput {
            seq: 2,
            report: &report,
            table: &table,
            users: &users,
            pue: &pue,
            follows: &follows,
            trees: None,
        };
        let s = build(&input, &mut ledger);
        assert_eq!(s.processes[0].tree_root, 101);
        assert_eq!(s.cumulative.meter[0].energy_j.total, 26.0);
        assert_eq!(s.cumulative.users[0].usage.energy_j.total, 20.0);
    }

    #[test]
    fn trees_hold_every_member_and_are_sorted_by_interval_cpu() {
        let (table, report, users) = fixture();
        let (mut ledger, pue, follows) = (Ledger::new(10), Pue::default(), BTreeSet::new());
        let findings = HashMap::from([(100, 2)]);
        let input = StepInput {
            seq: 1,
            report: &report,
            table: &table,
            users: &users,
            pue: &pue,
            follows: &follows,
            trees: Some(&findings),
        };
        let s = build(&input, &mut ledger);
        let t: Vec<_> =
            s.trees.iter().map(|t| (t.root_pid, t.comm.as_str(), t.processes, t.findings)).collect();
        // init is its own tree, without CPU time: not listed; sshd holds sshd, bash and make.
        assert_eq!(t, [(100, "sshd", 3, 2), (200, "cron", 1, 0)]);
        assert!((s.trees[0].interval.cpu_time_s - 1.0).abs() < 1e-12);
        assert!((s.trees[0].total.energy_j.total - 10.0).abs() < 1e-12);
        // Without trees asked for, none.
        let input = StepInput { trees: None, seq: 2, ..input };
        assert!(build(&input, &mut ledger).trees.is_empty());
    }

    #[test]
    fn snapshots_round_trip_through_json() {
        let s = fixture_snapshot(&mut Ledger::new(1), 7, true);
        assert_eq!(s.trees.len(), 2);
        let back: Snapshot = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
