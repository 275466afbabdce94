//! Roll-ups of one interval's process rows by user, cgroup and systemd unit: sums of the same
//! per-process numbers, never estimated separately.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::json::ProcessRow;

/// One group's share of the interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RollupRow {
    /// The user name, cgroup path or unit name; `?` when unknown.
    pub key: String,
    pub processes: u32,
    pub cpu_time_s: f64,
    /// Total energy, J.
    pub energy_j: f64,
    /// Total emissions, gCO2e.
    pub emissions_g: f64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollups {
    pub users: Vec<RollupRow>,
    pub cgroups: Vec<RollupRow>,
    pub units: Vec<RollupRow>,
}

/// Sums `rows` by user, by cgroup and by unit (`cgroup_of(pid)`), largest energy first.
pub fn rollups(rows: &[ProcessRow], cgroup_of: impl Fn(u32) -> Option<String>) -> Rollups {
    let mut users: BTreeMap<String, RollupRow> = BTreeMap::new();
    let mut cgroups: BTreeMap<String, RollupRow> = BTreeMap::new();
    let mut units: BTreeMap<String, RollupRow> = BTreeMap::new();
    for r in rows {
        let cgroup = cgroup_of(r.pid);
        let unit = cgroup.as_deref().and_then(crate::procfs::systemd_unit).map(str::to_owned);
        for (map, key) in [
            (&mut users, r.user.clone()),
            (&mut cgroups, cgroup.clone().unwrap_or_else(|| "?".into())),
            (&mut units, unit.unwrap_or_else(|| "?".into())),
        ] {
            let g = map.entry(key.clone()).or_insert_with(|| RollupRow { key, ..Default::default() });
            g.processes += 1;
            g.cpu_time_s += r.cpu_time_s;
            g.energy_j += r.energy_j.total;
            g.emissions_g += r.emissions_g.total;
            g.read_bytes += r.io.read_bytes;
            g.write_bytes += r.io.write_bytes;
        }
    }
    let sorted = |m: BTreeMap<String, RollupRow>| {
        let mut v: Vec<RollupRow> = m.into_values().collect();
        v.sort_by(|a, b| b.energy_j.total_cmp(&a.energy_j).then(a.key.cmp(&b.key)));
        v
    };
    Rollups { users: sorted(users), cgroups: sorted(cgroups), units: sorted(units) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribution::EnergyBreakdown, carbon::Emissions};

    fn row(pid: u32, user: &str, j: f64) -> ProcessRow {
        ProcessRow {
            pid,
            ppid: 1,
            uid: 0,
            user: user.into(),
            comm: "x".into(),
            cpu_time_s: 1.0,
            energy_j: EnergyBreakdown { total: j, ..Default::default() },
            emissions_g: Emissions::new(j / 10.0, 0.0),
            io: Default::default(),
        }
    }

    #[test]
    fn groups_are_sums_of_rows() {
        let rows = [row(1, "alice", 3.0), row(2, "bob", 1.0), row(3, "alice", 2.0), row(4, "bob", 0.5)];
        let cg = |pid: u32| match pid {
            1 | 2 => Some("/system.slice/web.service".to_string()),
            3 => Some("/user.slice/user-1000.slice".to_string()),
            _ => None,
        };
        let r = rollups(&rows, cg);
        assert_eq!(
            r.users.iter().map(|g| (g.key.as_str(), g.energy_j)).collect::<Vec<_>>(),
            [("alice", 5.0), ("bob", 1.5)]
        );
        assert_eq!(r.units[0].key, "web.service");
        assert_eq!(r.units[0].processes, 2);
        assert!((r.units[0].emissions_g - 0.4).abs() < 1e-12);
        assert_eq!(
            r.cgroups.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(),
            ["/system.slice/web.service", "/user.slice/user-1000.slice", "?"]
        );
        let total: f64 = r.cgroups.iter().map(|g| g.energy_j).sum();
        assert!((total - 6.5).abs() < 1e-12);
    }
}
