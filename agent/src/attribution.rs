//! Attribution: one interval's metered energy split among processes, kernel threads and
//! idle. Pure: no I/O, no clock.
//!
//! Per domain (cpu = packages, dram, platform = the part of psys outside packages and
//! dram, each GPU), the interval's energy `E` is split into **static** energy
//! `S = min(static power × dt, E)` and **dynamic** energy `D = E − S`.
//!
//! * Dynamic energy of cpu, dram and platform goes to processes and the kernel bucket in
//!   proportion to their on-CPU time in the interval (DRAM by CPU time too: no per-process
//!   memory-traffic signal exists yet). When nothing ran, it goes to the idle bucket.
//! * GPU shares are the fraction of the GPU each process kept busy (NVML SM utilization,
//!   summing to at most 1): that fraction of the GPU's dynamic energy goes to processes by
//!   share; the unutilized rest is shared like the GPU's static energy (below), as idle CPU
//!   time leaves a CPU's static energy to the policy. Without shares, all of it goes to idle.
//! * Static energy follows [`StaticShare`]: `proportional` (default) uses the same weights
//!   as dynamic energy (busy CPU time, GPU shares for a GPU); `equal` divides it equally
//!   among the processes active in the interval (CPU time > 0; for a GPU, a share > 0);
//!   `none` gives it all to the idle bucket. Whatever has no recipient goes to idle.
//!
//! **Conservation**: every joule in goes to exactly one recipient, so processes, kernel
//! and idle add up to the metered energy (up to floating-point rounding, ≪ 1e-9 relative).
//! Negative or non-finite inputs are treated as 0 J (and the metered total reported by
//! [`Attribution::metered_j`] says so).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::usage::IntervalUsage;

/// Energy of one process (or bucket) in one interval, in joules.
///
/// `total = cpu + dram + gpu + platform = dynamic + static`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct EnergyBreakdown {
    /// All domains.
    pub total: f64,
    /// CPU packages (RAPL package, or the model's CPU power).
    pub cpu: f64,
    /// Memory.
    pub dram: f64,
    /// Discrete GPUs.
    pub gpu: f64,
    /// The part of RAPL psys outside packages and dram (0 without psys).
    pub platform: f64,
    /// Energy above static power.
    pub dynamic: f64,
    /// Share of static (idle) power.
    #[serde(rename = "static")]
    pub static_: f64,
}

impl EnergyBreakdown {
    fn add(&mut self, domain: AttrDomain, kind: Kind, joules: f64) {
        match domain {
            AttrDomain::Cpu => self.cpu += joules,
            AttrDomain::Dram => self.dram += joules,
            AttrDomain::Gpu => self.gpu += joules,
            AttrDomain::Platform => self.platform += joules,
        }
        match kind {
            Kind::Static => self.static_ += joules,
            Kind::Dynamic => self.dynamic += joules,
        }
        self.total += joules;
    }

    /// Adds another breakdown field by field (roll-ups of processes into trees).
    pub fn accumulate(&mut self, other: &EnergyBreakdown) {
        self.total += other.total;
        self.cpu += other.cpu;
        self.dram += other.dram;
        self.gpu += other.gpu;
        self.platform += other.platform;
        self.dynamic += other.dynamic;
        self.static_ += other.static_;
    }
}

/// How static (idle) energy is shared (`--static-share`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticShare {
    /// In proportion to busy CPU time (GPU shares for a GPU); idle bucket when nothing ran.
    #[default]
    Proportional,
    /// Equally among the processes active in the interval.
    Equal,
    /// All to the idle bucket.
    None,
}

/// An attribution domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttrDomain {
    /// CPU packages.
    Cpu,
    /// Memory.
    Dram,
    /// Discrete GPU.
    Gpu,
    /// psys outside packages and dram.
    Platform,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Static,
    Dynamic,
}

/// Energy of one domain in the interval and its static power.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DomainEnergy {
    /// Joules metered in the interval.
    pub energy_j: f64,
    /// Static (idle) power, watts.
    pub static_w: f64,
}

/// One GPU's energy and per-process shares in the interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuEnergy {
    /// Energy and static power.
    pub energy: DomainEnergy,
    /// Fraction of the GPU each tgid kept busy (0..1; a sum above 1 counts as 1).
    pub shares: BTreeMap<u32, f64>,
}

/// Everything one interval's attribution needs.
#[derive(Clone, Copy, Debug)]
pub struct AttributionInput<'a> {
    /// CPU time per process, kernel and idle.
    pub usage: &'a IntervalUsage,
    /// Interval length for static energy, seconds.
    pub interval_s: f64,
    /// CPU packages.
    pub cpu: DomainEnergy,
    /// Memory.
    pub dram: DomainEnergy,
    /// psys outside packages and dram.
    pub platform: DomainEnergy,
    /// Each GPU.
    pub gpus: &'a [GpuEnergy],
    /// Static-share policy.
    pub policy: StaticShare,
}

/// The interval's energy per process and bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Attribution {
    /// Per tgid: every process of the usage (even with 0 J), and any with a GPU share.
    pub per_tgid: BTreeMap<u32, EnergyBreakdown>,
    /// Kernel threads.
    pub kernel: EnergyBreakdown,
    /// Idle: static energy with no recipient, and energy when nothing ran.
    pub idle: EnergyBreakdown,
    /// The metered energy that was split (inputs after treating invalid values as 0).
    pub metered_j: f64,
}

impl Attribution {
    /// Sum of all processes, kernel and idle (equals `metered_j` up to rounding).
    pub fn attributed_j(&self) -> f64 {
        self.per_tgid.values().map(|b| b.total).sum::<f64>() + self.kernel.total + self.idle.total
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Process(u32),
    Kernel,
    Idle,
}

fn sanitize(j: f64) -> f64 {
    if j.is_finite() && j > 0.0 { j } else { 0.0 }
}

/// Static and dynamic joules of one domain.
pub fn static_dynamic(energy: DomainEnergy, interval_s: f64) -> (f64, f64) {
    let e = sanitize(energy.energy_j);
    let s = (sanitize(energy.static_w) * sanitize(interval_s)).min(e);
    (s, e - s)
}

struct Splitter {
    out: Attribution,
}

impl Splitter {
    fn give(&mut self, target: Target, domain: AttrDomain, kind: Kind, joules: f64) {
        let b = match target {
            Target::Process(pid) => self.out.per_tgid.entry(pid).or_default(),
            Target::Kernel => &mut self.out.kernel,
            Target::Idle => &mut self.out.idle,
        };
        b.add(domain, kind, joules);
    }

    /// Splits `joules` by `weights` (non-negative); all to idle when they sum to 0.
    fn split(&mut self, joules: f64, weights: &[(Target, f64)], domain: AttrDomain, kind: Kind) {
        let sum: f64 = weights.iter().map(|(_, w)| w).sum();
        if sum.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            self.give(Target::Idle, domain, kind, joules);
            return;
        }
        for &(t, w) in weights.iter().filter(|(_, w)| *w > 0.0) {
            self.give(t, domain, kind, joules * (w / sum));
        }
    }
}

/// Splits one interval's energy (see the module documentation for the policy).
pub fn attribute(input: &AttributionInput<'_>) -> Attribution {
    let usage = input.usage;
    let mut cpu_weights: Vec<(Target, f64)> =
        usage.processes.iter().map(|(pid, p)| (Target::Process(*pid), p.cpu_ns as f64)).collect();
    cpu_weights.push((Target::Kernel, usage.kernel_cpu_ns as f64));
    let active: Vec<(Target, f64)> = usage
        .processes
        .iter()
        .filter(|(_, p)| p.cpu_ns > 0)
        .map(|(pid, _)| (Target::Process(*pid), 1.0))
        .collect();

    let mut s = Splitter { out: Attribution::default() };
    // Every process that ran has a row, even when no energy reaches it.
    for pid in usage.processes.keys() {
        s.out.per_tgid.insert(*pid, EnergyBreakdown::default());
    }
    let cpu_side = [
        (AttrDomain::Cpu, input.cpu),
        (AttrDomain::Dram, input.dram),
        (AttrDomain::Platform, input.platform),
    ];
    for (domain, energy) in cpu_side {
        let (stat, dynamic) = static_dynamic(energy, input.interval_s);
        // The meter's own figure (`stat + dynamic` can differ from it in the last bit).
        s.out.metered_j += sanitize(energy.energy_j);
        s.split(dynamic, &cpu_weights, domain, Kind::Dynamic);
        let static_weights: &[(Target, f64)] = match input.policy {
            StaticShare::Proportional => &cpu_weights,
            StaticShare::Equal => &active,
            StaticShare::None => &[],
        };
        s.split(stat, static_weights, domain, Kind::Static);
    }
    for gpu in input.gpus {
        let (stat, dynamic) = static_dynamic(gpu.energy, input.interval_s);
        s.out.metered_j += sanitize(gpu.energy.energy_j);
        let shares: Vec<(Target, f64)> = gpu
            .shares
            .iter()
            .filter(|(_, w)| w.is_finite() && **w > 0.0)
            .map(|(pid, w)| (Target::Process(*pid), *w))
            .collect();
        // Shares are fractions of the GPU kept busy: their sum (at most 1) of the dynamic
        // energy goes by share; the unutilized rest is shared like static energy.
        let busy: f64 = shares.iter().map(|(_, w)| w).sum::<f64>().min(1.0);
        let to_shares = dynamic * busy;
        s.split(to_shares, &shares, AttrDomain::Gpu, Kind::Dynamic);
        let users: Vec<(Target, f64)> = shares.iter().map(|(t, _)| (*t, 1.0)).collect();
        let static_weights: &[(Target, f64)] = match input.policy {
            StaticShare::Proportional => &shares,
            StaticShare::Equal => &users,
            StaticShare::None => &[],
        };
        s.split(dynamic - to_shares, static_weights, AttrDomain::Gpu, Kind::Dynamic);
        s.split(stat, static_weights, AttrDomain::Gpu, Kind::Static);
    }
    s.out
}

/// Where a domain's static power comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaticSource {
    /// `--idle-watts`.
    Configured,
    /// The estimation model's idle figures.
    Model,
    /// The running minimum of power over intervals at low utilization.
    Learned,
    /// No low-utilization interval seen yet: the running minimum over all intervals.
    LearnedProvisional,
}

/// A key for the static-power learner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LearnKey {
    /// CPU packages.
    Cpu,
    /// Memory.
    Dram,
    /// psys outside packages and dram.
    Platform,
    /// GPU by index.
    Gpu(u32),
}

/// Learns static power as the running minimum of a domain's mean power over intervals
/// whose utilization is at most `low_utilization`; until such an interval is seen, the
/// running minimum over all intervals (marked provisional).
#[derive(Clone, Debug, PartialEq)]
pub struct StaticPowerLearner {
    low_utilization: f64,
    low: BTreeMap<LearnKey, f64>,
    any: BTreeMap<LearnKey, f64>,
}

impl StaticPowerLearner {
    /// A learner counting utilization ≤ `low_utilization` (0..1) as low.
    pub fn new(low_utilization: f64) -> Self {
        Self { low_utilization, low: BTreeMap::new(), any: BTreeMap::new() }
    }

    /// Records one interval's mean power of a domain at a utilization (0..1).
    pub fn observe(&mut self, key: LearnKey, power_w: f64, utilization: f64) {
        if !(power_w.is_finite() && power_w >= 0.0) {
            return;
        }
        let min = |m: &mut BTreeMap<LearnKey, f64>| {
            let e = m.entry(key).or_insert(power_w);
            *e = e.min(power_w);
        };
        min(&mut self.any);
        if utilization <= self.low_utilization {
            min(&mut self.low);
        }
    }

    /// The learned static power and whether it is provisional; `None` before any interval.
    pub fn static_w(&self, key: LearnKey) -> Option<(f64, StaticSource)> {
        match (self.low.get(&key), self.any.get(&key)) {
            (Some(w), _) => Some((*w, StaticSource::Learned)),
            (None, Some(w)) => Some((*w, StaticSource::LearnedProvisional)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::usage::ProcessCpu;

    fn usage(procs: &[(u32, u64)], kernel: u64, idle: u64) -> IntervalUsage {
        IntervalUsage {
            interval_s: 1.0,
            ncpu: 2,
            processes: procs.iter().map(|&(p, ns)| (p, ProcessCpu { cpu_ns: ns, switches: 1 })).collect(),
            kernel_cpu_ns: kernel,
            idle_cpu_ns: idle,
        }
    }

    fn de(energy_j: f64, static_w: f64) -> DomainEnergy {
        DomainEnergy { energy_j, static_w }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn exact_proportional_case() {
        // 10 J cpu with 4 W static over 1 s: 4 J static, 6 J dynamic.
        // Process 1: 300 ms, process 2: 100 ms, kernel 100 ms → 3:1:1.
        let u = usage(&[(1, 300_000_000), (2, 100_000_000)], 100_000_000, 1_500_000_000);
        let input = AttributionInput {
            usage: &u,
            interval_s: 1.0,
            cpu: de(10.0, 4.0),
            dram: de(5.0, 5.0),
            platform: de(0.0, 0.0),
            gpus: &[],
            policy: StaticShare::Proportional,
        };
        let a = attribute(&input);
        let p1 = a.per_tgid[&1];
        assert!(close(p1.cpu, 6.0 * 0.6 + 4.0 * 0.6));
        assert!(close(p1.dynamic, 3.6));
        assert!(close(p1.static_, 2.4 + 3.0));
        assert!(close(p1.dram, 3.0));
        assert!(close(a.per_tgid[&2].total, 3.0));
        assert!(close(a.kernel.total, 3.0));
        assert_eq!(a.idle.total, 0.0);
        assert!(close(a.attributed_j(), 15.0));
        assert_eq!(a.metered_j, 15.0);
    }

    #[test]
    fn exact_equal_and_none_policies() {
        let u = usage(&[(1, 300_000_000), (2, 100_000_000)], 100_000_000, 0);
        let mut input = AttributionInput {
            usage: &u,
            interval_s: 2.0,
            cpu: de(10.0, 2.0),
            dram: de(0.0, 0.0),
            platform: de(0.0, 0.0),
            gpus: &[],
            policy: StaticShare::Equal,
        };
        // 4 J static equally to 1 and 2; 6 J dynamic 3:1:1.
        let a = attribute(&input);
        assert!(close(a.per_tgid[&1].total, 2.0 + 3.6));
        assert!(close(a.per_tgid[&2].total, 2.0 + 1.2));
        assert!(close(a.kernel.total, 1.2));
        assert_eq!(a.kernel.static_, 0.0);
        input.policy = StaticShare::None;
        let a = attribute(&input);
        assert!(close(a.idle.total, 4.0));
        assert!(close(a.idle.static_, 4.0));
        assert!(close(a.per_tgid[&1].total, 3.6));
    }

    #[test]
    fn nothing_ran_goes_to_idle() {
        let u = usage(&[], 0, 2_000_000_000);
        let input = AttributionInput {
            usage: &u,
            interval_s: 1.0,
            cpu: de(7.0, 3.0),
            dram: de(1.0, 0.0),
            platform: de(0.5, 0.0),
            gpus: &[GpuEnergy { energy: de(50.0, 40.0), shares: BTreeMap::new() }],
            policy: StaticShare::Proportional,
        };
        let a = attribute(&input);
        assert!(a.per_tgid.is_empty());
        assert_eq!(a.kernel, EnergyBreakdown::default());
        assert!(close(a.idle.total, 58.5));
        assert!(close(a.idle.gpu, 50.0));
        assert!(close(a.idle.static_, 43.0));
    }

    #[test]
    fn gpu_energy_by_shares() {
        let u = usage(&[(1, 100), (2, 100)], 0, 0);
        let gpus = [GpuEnergy { energy: de(100.0, 60.0), shares: BTreeMap::from([(2, 0.75), (9, 0.25)]) }];
        let input = AttributionInput {
            usage: &u,
            interval_s: 1.0,
            cpu: de(0.0, 0.0),
            dram: de(0.0, 0.0),
            platform: de(0.0, 0.0),
            gpus: &gpus,
            policy: StaticShare::Proportional,
        };
        let a = attribute(&input);
        assert!(close(a.per_tgid[&2].gpu, 75.0));
        assert!(close(a.per_tgid[&9].gpu, 25.0)); // GPU-only process: a row of its own
        assert!(close(a.per_tgid[&9].static_, 15.0));
        // A process that ran but used no GPU still has its (here empty) row.
        assert_eq!(a.per_tgid[&1], EnergyBreakdown::default());
    }

    #[test]
    fn unutilized_gpu_dynamic_energy_follows_the_static_policy() {
        // 100 J, 40 W static over 1 s: 60 J dynamic. Pid 5 kept 2 % of the GPU busy, pid 6 18 %.
        let u = usage(&[], 0, 0);
        let gpus = [GpuEnergy { energy: de(100.0, 40.0), shares: BTreeMap::from([(5, 0.02), (6, 0.18)]) }];
        let mut input = AttributionInput {
            usage: &u,
            interval_s: 1.0,
            cpu: de(0.0, 0.0),
            dram: de(0.0, 0.0),
            platform: de(0.0, 0.0),
            gpus: &gpus,
            policy: StaticShare::None,
        };
        let a = attribute(&input);
        // Only 20 % of the dynamic energy (12 J) is the processes'; 48 J + 40 J static to idle.
        assert!(close(a.per_tgid[&5].gpu, 1.2) && close(a.per_tgid[&6].gpu, 10.8));
        assert!(close(a.idle.gpu, 88.0) && close(a.idle.static_, 40.0) && close(a.idle.dynamic, 48.0));
        input.policy = StaticShare::Equal;
        let a = attribute(&input);
        assert!(close(a.per_tgid[&5].gpu, 1.2 + 44.0) && close(a.per_tgid[&6].gpu, 10.8 + 44.0));
        assert_eq!(a.idle.total, 0.0);
        input.policy = StaticShare::Proportional;
        let a = attribute(&input);
        assert!(close(a.per_tgid[&5].gpu, 10.0) && close(a.per_tgid[&6].gpu, 90.0));
    }

    #[test]
    fn invalid_inputs_are_zero_and_still_conserved() {
        let u = usage(&[(1, 10)], 0, 0);
        let input = AttributionInput {
            usage: &u,
            interval_s: 1.0,
            cpu: de(f64::NAN, 1.0),
            dram: de(-3.0, 0.0),
            platform: de(2.0, f64::INFINITY),
            gpus: &[],
            policy: StaticShare::Proportional,
        };
        let a = attribute(&input);
        assert_eq!(a.metered_j, 2.0);
        assert!(close(a.per_tgid[&1].total, 2.0));
    }

    #[test]
    fn learner_prefers_low_utilization_minimum() {
        let mut l = StaticPowerLearner::new(0.05);
        assert_eq!(l.static_w(LearnKey::Cpu), None);
        l.observe(LearnKey::Cpu, 40.0, 0.9);
        assert_eq!(l.static_w(LearnKey::Cpu), Some((40.0, StaticSource::LearnedProvisional)));
        l.observe(LearnKey::Cpu, 12.0, 0.04);
        l.observe(LearnKey::Cpu, 10.0, 0.5);
        l.observe(LearnKey::Cpu, 15.0, 0.01);
        assert_eq!(l.static_w(LearnKey::Cpu), Some((12.0, StaticSource::Learned)));
        l.observe(LearnKey::Cpu, f64::NAN, 0.0);
        assert_eq!(l.static_w(LearnKey::Cpu), Some((12.0, StaticSource::Learned)));
    }

    #[test]
    fn static_field_is_named_static_in_json() {
        let v = serde_json::to_value(EnergyBreakdown { static_: 1.5, ..Default::default() }).unwrap();
        assert_eq!(v["static"], 1.5);
        assert!(v.get("static_").is_none());
        for k in ["total", "cpu", "dram", "gpu", "dynamic"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    fn arb_energy() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), 0.0..1e4f64, 1e-9..1e-3f64, Just(1e12)]
    }

    fn arb_domain() -> impl Strategy<Value = DomainEnergy> {
        (arb_energy(), prop_oneof![Just(0.0), 0.0..500.0f64, Just(1e9)])
            .prop_map(|(energy_j, static_w)| DomainEnergy { energy_j, static_w })
    }

    fn arb_policy() -> impl Strategy<Value = StaticShare> {
        prop_oneof![Just(StaticShare::Proportional), Just(StaticShare::Equal), Just(StaticShare::None)]
    }

    proptest! {
        /// Processes + kernel + idle == metered, for any CPU times (zero included, processes
        /// that ran only part of the interval), energies (wrapped meters give large deltas),
        /// static powers, GPU shares and policies.
        #[test]
        fn conservation(
            procs in prop::collection::btree_map(1u32..10_000, prop_oneof![Just(0u64), 0u64..4_000_000_000, Just(u64::MAX / 4096)], 0..40),
            kernel in prop_oneof![Just(0u64), 0u64..1_000_000_000],
            interval_s in prop_oneof![Just(0.0), 0.001..100.0f64],
            cpu in arb_domain(), dram in arb_domain(), platform in arb_domain(),
            gpus in prop::collection::vec((arb_domain(), prop::collection::btree_map(1u32..10_000, prop_oneof![Just(0.0), 0.0..1.0f64], 0..5)), 0..3),
            policy in arb_policy(),
        ) {
            let mut u = IntervalUsage { interval_s, ncpu: 4, kernel_cpu_ns: kernel, ..Default::default() };
            for (pid, ns) in procs { u.processes.insert(pid, ProcessCpu { cpu_ns: ns, switches: 0 }); }
            let gpus: Vec<GpuEnergy> = gpus.into_iter().map(|(energy, shares)| GpuEnergy { energy, shares }).collect();
            let input = AttributionInput { usage: &u, interval_s, cpu, dram, platform, gpus: &gpus, policy };
            let a = attribute(&input);
            let expected: f64 = [cpu, dram, platform].iter().chain(gpus.iter().map(|g| &g.energy)).map(|d| d.energy_j).sum();
            prop_assert_eq!(a.metered_j, expected);
            let got = a.attributed_j();
            prop_assert!((got - expected).abs() <= 1e-9 * expected.max(f64::MIN_POSITIVE), "{got} vs {expected}");
            for b in a.per_tgid.values().chain([&a.kernel, &a.idle]) {
                prop_assert!(b.total >= 0.0 && b.dynamic >= 0.0 && b.static_ >= 0.0);
                prop_assert!((b.cpu + b.dram + b.gpu + b.platform - b.total).abs() <= 1e-9 * b.total.max(1e-300));
                prop_assert!((b.dynamic + b.static_ - b.total).abs() <= 1e-9 * b.total.max(1e-300));
            }
            if policy == StaticShare::None {
                let stat: f64 = a.per_tgid.values().map(|b| b.static_).sum::<f64>() + a.kernel.static_;
                prop_assert_eq!(stat, 0.0);
            }
        }

        /// Dynamic CPU energy is exactly proportional to CPU time.
        #[test]
        fn dynamic_cpu_proportional_to_cpu_time(a_ns in 1u64..1_000_000_000, b_ns in 1u64..1_000_000_000, e in 0.1..1000.0f64) {
            let u = usage(&[(1, a_ns), (2, b_ns)], 0, 0);
            let input = AttributionInput { usage: &u, interval_s: 1.0, cpu: de(e, 0.0), dram: de(0.0, 0.0), platform: de(0.0, 0.0), gpus: &[], policy: StaticShare::Proportional };
            let r = attribute(&input);
            let ratio = r.per_tgid[&1].dynamic / r.per_tgid[&2].dynamic;
            prop_assert!((ratio / (a_ns as f64 / b_ns as f64) - 1.0).abs() < 1e-12);
        }
    }
}
