//! The OpenMetrics text of one snapshot (`GET /metrics`), with prometheus-client.
//!
//! Counters are in base units (joules, grams, seconds, bytes), cumulative since the agent
//! started, and never decrease (they come from the engine's ledger). Each scope has a family
//! of its own, and within a family no series contains another (domains are `cpu`, `dram`,
//! `gpu`, `platform`; their sum is the total), so any sum over one family counts each joule
//! once. Cardinality is bounded: users, units and containers are as many as the machine has,
//! trees are the top N (`--top-trees`) and one `other` series. `docs/metrics.md` lists them.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::api::{Emissions, EnergyBreakdown, Snapshot, Usage};

type Labels = Vec<(&'static str, String)>;
type CounterF = Counter<f64, AtomicU64>;
type GaugeF = Gauge<f64, AtomicU64>;

/// The agent's own cost, read when scraped.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OwnUsage {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

impl OwnUsage {
    /// CPU time from `getrusage(RUSAGE_SELF)`, resident memory from `/proc/self/statm`.
    pub fn read() -> Self {
        // SAFETY: getrusage fills the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a rusage.
        let cpu_s = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            tv(ru.ru_utime) + tv(ru.ru_stime)
        } else {
            0.0
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
        let rss_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
        Self { cpu_s, rss_bytes: rss_pages * page }
    }
}

const DOMAINS: [&str; 4] = ["cpu", "dram", "gpu", "platform"];

fn domains(e: &EnergyBreakdown) -> [(&'static str, f64); 4] {
    [("cpu", e.cpu), ("dram", e.dram), ("gpu", e.gpu), ("platform", e.platform)]
}

fn kinds(e: &Emissions) -> [(&'static str, f64); 2] {
    [("operational", e.operational), ("embodied", e.embodied)]
}

/// One scope's three families: energy by domain, emissions by kind, CPU seconds.
struct ScopeFamilies {
    energy: Family<Labels, CounterF>,
    emissions: Family<Labels, CounterF>,
    cpu: Family<Labels, CounterF>,
}

impl ScopeFamilies {
    fn register(registry: &mut Registry, scope: &str, what: &str) -> Self {
        let s = Self { energy: Family::default(), emissions: Family::default(), cpu: Family::default() };
        registry.register(
            format!("carbon_agent_{scope}_energy_joules"),
            format!(
                "IT energy attributed to {what}, joules, by domain: a share of the node's energy, metered or \
                 estimated as carbon_agent_node_energy_joules_total says"
            ),
            s.energy.clone(),
        );
        registry.register(
            format!("carbon_agent_{scope}_emissions_grams"),
            format!(
                "Emissions of {what}, grams CO2e (estimated): operational = energy x PUE x grid intensity, embodied = \
                 hardware emissions amortized over its lifetime"
            ),
            s.emissions.clone(),
        );
        registry.register(
            format!("carbon_agent_{scope}_cpu_seconds"),
            format!("On-CPU time of {what}, seconds (measured in the kernel: sched_switch)"),
            s.cpu.clone(),
        );
        s
    }

    fn add(&self, labels: &Labels, u: &Usage) {
        for (domain, j) in domains(&u.energy_j) {
            let mut l = labels.clone();
            l.push(("domain", domain.into()));
            self.energy.get_or_create(&l).inc_by(j);
        }
        for (kind, g) in kinds(&u.emissions_g) {
            let mut l = labels.clone();
            l.push(("kind", kind.into()));
            self.emissions.get_or_create(&l).inc_by(g);
        }
        self.cpu.get_or_create(labels).inc_by(u.cpu_time_s);
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, CounterF> {
    let f = Family::<Labels, CounterF>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, GaugeF> {
    let f = Family::<Labels, GaugeF>::default();
    registry.register(name, help, f.clone());
    f
}

/// The registry of one snapshot.
pub fn registry(s: &Snapshot, own: OwnUsage) -> Registry {
    let mut r = Registry::default();
    let c = &s.cumulative;

    let node = counter(
        &mut r,
        "carbon_agent_node_energy_joules",
        "IT energy of the whole node, joules, by domain, as read from the meter named by `source` \
         (estimated=\"true\": by the utilization model, no meter)",
    );
    for m in &c.meter {
        for (domain, j) in m.energy_j.by_domain().into_iter().filter(|(d, _)| DOMAINS.contains(d)) {
            node.get_or_create(&vec![
                ("domain", domain.into()),
                ("source", m.source.clone()),
                ("estimated", m.estimated.to_string()),
            ])
            .inc_by(j);
        }
    }
    let buckets = ScopeFamilies::register(
        &mut r,
        "bucket",
        "kernel threads (bucket=kernel) and idle CPUs (bucket=idle)",
    );
    buckets.add(&vec![("bucket", "kernel".into())], &c.buckets.kernel);
    buckets.add(&vec![("bucket", "idle".into())], &c.buckets.idle);
    let users = ScopeFamilies::register(&mut r, "user", "the user's processes");
    for u in &c.users {
        users.add(&vec![("user", u.key.clone())], &u.usage);
    }
    let units = ScopeFamilies::register(&mut r, "unit", "the processes of the systemd unit");
    for u in &c.units {
        units.add(&vec![("unit", u.key.clone())], &u.usage);
    }
    let containers = ScopeFamilies::register(&mut r, "container", "the container's processes");
    for ct in &c.containers {
        let k = &ct.container;
        let labels = vec![
            ("container_id", k.id.clone()),
            ("runtime", k.runtime.clone()),
            ("pod", k.pod.clone().unwrap_or_default()),
        ];
        containers.add(&labels, &ct.usage);
    }
    let trees = counter(
        &mut r,
        "carbon_agent_tree_energy_joules",
        "IT energy attributed to a process tree (all domains), joules, since the tree entered the top N; \
         every other tree in root_pid=\"other\". A share of the node's energy: estimated when it is",
    );
    for t in &c.trees {
        trees
            .get_or_create(&vec![
                ("root_pid", t.root_pid.to_string()),
                ("comm", t.comm.clone()),
                ("user", t.user.clone()),
            ])
            .inc_by(t.usage.energy_j.total);
    }
    trees
        .get_or_create(&vec![("root_pid", "other".into()), ("comm", String::new()), ("user", String::new())])
        .inc_by(c.other_trees.energy_j.total);
    let wasted = counter(
        &mut r,
        "carbon_agent_io_wasted_bytes",
        "Wasted I/O found so far, bytes, by kind (reread, refetch, copy, write_then_delete, duplicate) and user \
         of the process that did most of it (measured byte counts; duplicates not confirmed by content)",
    );
    for w in &c.wasted {
        wasted
            .get_or_create(&vec![("kind", w.kind.clone()), ("user", w.user.clone())])
            .inc_by(w.bytes as f64);
    }
    let losses = counter(
        &mut r,
        "carbon_agent_losses",
        "What was lost for lack of capacity (full maps, full ring buffers, unresolved paths), by kind: counted, \
         never silent",
    );
    for (kind, n) in
        s.losses.iter().filter(|(k, _)| !matches!(k.as_str(), "lost_cpu_ns" | "idle_stints_inferred"))
    {
        losses.get_or_create(&vec![("kind", kind.clone())]).inc_by(*n as f64);
    }
    let lost_cpu = counter(
        &mut r,
        "carbon_agent_lost_cpu_seconds",
        "CPU time that could not be attributed because the per-process map was full, seconds",
    );
    lost_cpu.get_or_create(&vec![]).inc_by(s.losses.get("lost_cpu_ns").copied().unwrap_or(0) as f64 / 1e9);
    let intensity = gauge(
        &mut r,
        "carbon_agent_grid_intensity_grams_per_kwh",
        "Grid carbon intensity used for the last interval, gCO2e/kWh, and its source (a table and year, a time \
         series, a live provider or the world average)",
    );
    intensity.get_or_create(&vec![("source", s.carbon.source.clone())]).set(s.carbon.intensity);
    let pue = gauge(
        &mut r,
        "carbon_agent_pue",
        "Power usage effectiveness used (facility / IT energy), and its source",
    );
    pue.get_or_create(&vec![("source", s.carbon.pue_source.clone())]).set(s.carbon.pue);
    let interval =
        gauge(&mut r, "carbon_agent_interval_seconds", "Length of the last accounting interval, seconds");
    interval.get_or_create(&vec![]).set(s.interval_s);
    let own_cpu =
        counter(&mut r, "carbon_agent_process_cpu_seconds", "The agent's own CPU time, seconds (getrusage)");
    own_cpu.get_or_create(&vec![]).inc_by(own.cpu_s);
    let own_rss =
        gauge(&mut r, "carbon_agent_process_resident_memory_bytes", "The agent's own resident memory, bytes");
    own_rss.get_or_create(&vec![]).set(own.rss_bytes as f64);
    r.register(
        "carbon_agent_build",
        "The agent's version and schema version",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("schema_version", s.schema_version.to_string()),
        ]),
    );
    r
}

/// The OpenMetrics text of one snapshot.
pub fn render(s: &Snapshot, own: OwnUsage) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry(s, own));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::engine::{Ledger, snapshot};

    /// `name{labels} value` lines into a map.
    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    fn sum(s: &HashMap<String, f64>, prefix: &str) -> f64 {
        s.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
    }

    #[test]
    fn families_add_up_and_say_where_figures_come_from() {
        let snap = snapshot::tests::fixture_snapshot(&mut Ledger::new(1), 2, false);
        let text = render(&snap, OwnUsage { cpu_s: 1.5, rss_bytes: 4096 });
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
        assert!(
            text.contains("# HELP carbon_agent_node_energy_joules IT energy of the whole node"),
            "{text}"
        );
        assert!(text.contains("# TYPE carbon_agent_user_energy_joules counter"));
        let s = samples(&text);
        assert_eq!(
            s["carbon_agent_node_energy_joules_total{domain=\"cpu\",source=\"model\",estimated=\"true\"}"],
            26.0
        );
        let node = sum(&s, "carbon_agent_node_energy_joules_total");
        let users = sum(&s, "carbon_agent_user_energy_joules_total");
        let buckets = sum(&s, "carbon_agent_bucket_energy_joules_total");
        assert!((users + buckets - node).abs() < 1e-9 * node, "{users} + {buckets} vs {node}");
        assert_eq!(s["carbon_agent_user_energy_joules_total{user=\"alice\",domain=\"cpu\"}"], 20.0);
        assert_eq!(s["carbon_agent_user_cpu_seconds_total{user=\"alice\"}"], 2.0);
        assert_eq!(s["carbon_agent_unit_cpu_seconds_total{unit=\"session-1.scope\"}"], 1.8);
        // One tree of its own (sshd's, the largest), the rest in `other`: together all processes.
        let trees = sum(&s, "carbon_agent_tree_energy_joules_total");
        assert!((trees - users).abs() < 1e-9);
        assert_eq!(
            s["carbon_agent_tree_energy_joules_total{root_pid=\"100\",comm=\"sshd\",user=\"root\"}"],
            20.0
        );
        assert_eq!(sum(&s, "carbon_agent_pue{source="), 1.58);
        assert_eq!(s["carbon_agent_process_cpu_seconds_total"], 1.5);
        assert_eq!(s["carbon_agent_losses_total{kind=\"cpu_map_full\"}"], 0.0);
        let op = sum(&s, "carbon_agent_user_emissions_grams_total{user=\"alice\",kind=\"operational\"}");
        assert!((op - 0.2).abs() < 1e-12, "{op}");
        assert!(text.contains("carbon_agent_build_info{version=\""));
    }
}
