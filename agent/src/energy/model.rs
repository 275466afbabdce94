//! Estimation where nothing is metered (VMs, containers without RAPL, this project's own
//! machines). Every figure it produces is marked estimated.
//!
//! **CPU**: per logical CPU, `P = idle + (max − idle) × utilization`. Summed over the CPUs
//! of one interval of length `dt` this is
//! `E_cpu = ncpu × idle × dt + (max − idle) × busy_cpu_seconds`, so the model is linear in
//! each process's CPU time (which makes attribution by CPU time exact for it). The
//! per-CPU figures come, in this order, from:
//! 1. `--cpu-idle-watts` / `--cpu-max-watts` (W per logical CPU), or `--cpu-tdp-watts`
//!    (W per package, as on the datasheet; see 3 for how it becomes per-CPU figures);
//! 2. Cloud Carbon Footprint: the model name in `/proc/cpuinfo` matched (word-bounded,
//!    longest match) against `ccf-cpu-microarchitectures.csv`, whose microarchitecture's
//!    `Min Watts` / `Max Watts` per hardware thread come from `ccf-coefficients-aws-use.csv`
//!    (SPECpower_ssj2008 averages; CCF 2026 snapshot);
//! 3. CodeCarbon's `cpu_power.csv`: TDP of the matched model; per logical CPU
//!    `max = TDP / threads per package` (cpuinfo `siblings`) and `idle = 0.1 × max`
//!    (CodeCarbon's load-0 power, `TDP × (0.1 + 0.9 × load³)` at load 0);
//! 4. the mean `Min Watts` / `Max Watts` over all rows of `ccf-coefficients-aws-use.csv`
//!    (what CCF itself does for an unknown microarchitecture).
//!
//! **DRAM**: `MemTotal` of `/proc/meminfo` in GiB × 0.392 W/GB: CCF's memory coefficient
//! (0.000392 kWh per GB-hour, from Cloud Carbon Footprint's methodology), constant in
//! time: estimated DRAM energy is all static.
//!
//! The tables are shipped in `agent/data/energy/` (see its `SOURCES.md`).

use std::path::Path;

use serde::Serialize;

use super::{
    Domain, EnergyMeter, FileReader, Measurement, MeterError, MeterSource, Resource, Tick, malformed,
};
use crate::usage::IntervalUsage;

const CCF_MICROARCHITECTURES: &str = include_str!("../../data/energy/ccf-cpu-microarchitectures.csv");
const CCF_AWS_USE: &str = include_str!("../../data/energy/ccf-coefficients-aws-use.csv");
const CODECARBON_TDP: &str = include_str!("../../data/energy/codecarbon-cpu-power.csv");

/// Cloud Carbon Footprint's memory power coefficient, W per GB (0.000392 kWh/GB-h).
pub const CCF_DRAM_WATTS_PER_GB: f64 = 0.392;

/// CodeCarbon's idle fraction of TDP (its `TDP × (0.1 + 0.9 × load³)` at load 0).
pub const CODECARBON_IDLE_FRACTION: f64 = 0.1;

/// Model overrides from the command line or configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelOverrides {
    /// Idle power per logical CPU, W.
    pub cpu_idle_watts: Option<f64>,
    /// Full-load power per logical CPU, W.
    pub cpu_max_watts: Option<f64>,
    /// TDP of one package, W (ignored when both per-CPU figures are given).
    pub cpu_tdp_watts: Option<f64>,
    /// DRAM power per GB of installed memory, W (default [`CCF_DRAM_WATTS_PER_GB`]).
    pub dram_watts_per_gb: Option<f64>,
}

/// Idle and full-load power of one logical CPU, and where they come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuPowerFigures {
    /// W per logical CPU at idle.
    pub idle_w: f64,
    /// W per logical CPU at full load.
    pub max_w: f64,
    /// Where the figures come from (table, row, year or flag).
    pub source: String,
}

/// What `/proc/cpuinfo` says about the CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name` of the first CPU (`None` on architectures without it).
    pub model_name: Option<String>,
    /// Logical CPUs listed.
    pub logical_cpus: u32,
    /// Distinct `physical id`s (1 when absent).
    pub packages: u32,
    /// `siblings`: logical CPUs per package, when given.
    pub siblings: Option<u32>,
}

/// Parses `/proc/cpuinfo` contents.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut ids = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => info.logical_cpus = info.logical_cpus.saturating_add(1),
            "model name" if info.model_name.is_none() => info.model_name = Some(value.to_owned()),
            "physical id" => {
                ids.insert(value.to_owned());
            }
            "siblings" if info.siblings.is_none() => info.siblings = value.parse().ok(),
            _ => {}
        }
    }
    info.packages = (ids.len() as u32).max(1);
    info
}

/// Parses `MemTotal` (kB) out of `/proc/meminfo` contents, in bytes.
pub fn parse_mem_total_bytes(text: &str) -> Option<u64> {
    let mut parts = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.split_whitespace();
    let kb: u64 = parts.next()?.parse().ok()?;
    if parts.next() != Some("kB") {
        return None;
    }
    kb.checked_mul(1024)
}

/// Lower-cases a CPU model name and drops the decorations that vary between vendors'
/// spellings: `(R)`, `(TM)`, `CPU`, `Processor`, `N-Core`, and the clock after `@`.
pub fn normalize_model_name(name: &str) -> String {
    let mut s = name.to_lowercase();
    if let Some(at) = s.find('@') {
        s.truncate(at);
    }
    for mark in ["(r)", "(tm)", "(c)"] {
        s = s.replace(mark, " ");
    }
    s.split_whitespace()
        .filter(|w| *w != "cpu" && *w != "processor" && !w.ends_with("-core"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `needle` occurs in `hay` bounded by the ends or non-alphanumeric characters.
fn word_bounded_contains(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let bytes = hay.as_bytes();
    let mut from = 0;
    while let Some(pos) = hay[from..].find(needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = end == hay.len() || !bytes[end].is_ascii_alphanumeric();
        if before_ok && after_ok {
            return true;
        }
        // Past the first character of this occurrence (which may take several bytes).
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// The longest table entry (by normalized name) that occurs word-bounded in `model`.
fn best_match<'a, T>(model: &str, rows: &'a [(String, T)]) -> Option<&'a (String, T)> {
    let m = normalize_model_name(model);
    rows.iter()
        .filter(|(name, _)| word_bounded_contains(&m, &normalize_model_name(name)))
        .max_by_key(|(name, _)| normalize_model_name(name).len())
}

/// Splits a CSV line on commas (the shipped tables have no quoted fields).
fn fields(line: &str) -> Vec<&str> {
    line.trim_end_matches('\r').split(',').map(str::trim).collect()
}

/// CCF coefficients: microarchitecture → (min W, max W) per hardware thread.
fn ccf_coefficients() -> Vec<(String, (f64, f64))> {
    CCF_AWS_USE
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f = fields(l);
            Some((f.get(1)?.to_string(), (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        })
        .collect()
}

/// The usage-table name of a microarchitecture family in `ccf-cpu-microarchitectures.csv`:
/// `Skylake (Server)` / `Skylake (Client)` → `Skylake`; `Neoverse N1` → `Graviton2` (CCF
/// gives Graviton the EPYC 2nd Gen values; Graviton2 is a Neoverse N1).
fn ccf_family_to_architecture(family: &str) -> &str {
    match family {
        "Neoverse N1" => "Graviton2",
        f => f.split(" (").next().unwrap_or(f),
    }
}

/// CCF CPU models: model → microarchitecture.
fn ccf_models() -> Vec<(String, String)> {
    CCF_MICROARCHITECTURES
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f = fields(l);
            Some((f.get(2)?.to_string(), ccf_family_to_architecture(f.first()?).to_owned()))
        })
        .collect()
}

/// CodeCarbon CPU TDPs: model → W. Rows whose TDP is not a positive number (4 known
/// defects such as `27.29.5`, and `Intel Quark Microcontroller D1000` at 0 W) are skipped.
fn codecarbon_tdps() -> Vec<(String, f64)> {
    CODECARBON_TDP
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (name, tdp) = l.trim_end_matches('\r').rsplit_once(',')?;
            let tdp: f64 = tdp.trim().parse().ok()?;
            (tdp > 0.0).then(|| (name.trim().to_owned(), tdp))
        })
        .collect()
}

/// Per-CPU figures for a TDP (W per package) and threads per package.
fn from_tdp(tdp: f64, threads_per_package: u32, source: String) -> CpuPowerFigures {
    let max_w = tdp / f64::from(threads_per_package.max(1));
    CpuPowerFigures { idle_w: CODECARBON_IDLE_FRACTION * max_w, max_w, source }
}

/// Resolves the per-CPU figures: overrides, then CCF, then CodeCarbon, then CCF's mean.
pub fn cpu_power_figures(cpu: &CpuInfo, overrides: &ModelOverrides) -> CpuPowerFigures {
    let threads = cpu.siblings.unwrap_or_else(|| (cpu.logical_cpus / cpu.packages).max(1));
    let table = table_figures(cpu, threads);
    let base = match overrides.cpu_tdp_watts {
        Some(tdp) => {
            from_tdp(tdp, threads, format!("--cpu-tdp-watts {tdp} W per package, {threads} threads"))
        }
        None => table,
    };
    match (overrides.cpu_idle_watts, overrides.cpu_max_watts) {
        (None, None) => base,
        (idle, max) => CpuPowerFigures {
            idle_w: idle.unwrap_or(base.idle_w),
            max_w: max.unwrap_or(base.max_w),
            source: format!(
                "{}{}{}",
                idle.map(|w| format!("--cpu-idle-watts {w}; ")).unwrap_or_default(),
                max.map(|w| format!("--cpu-max-watts {w}; ")).unwrap_or_default(),
                base.source
            ),
        },
    }
}

fn table_figures(cpu: &CpuInfo, threads: u32) -> CpuPowerFigures {
    let coefficients = ccf_coefficients();
    if let Some(model) = &cpu.model_name {
        if let Some((name, arch)) = best_match(model, &ccf_models())
            && let Some((_, (min, max))) = coefficients.iter().find(|(a, _)| a == arch)
        {
            return CpuPowerFigures {
                idle_w: *min,
                max_w: *max,
                source: format!(
                    "Cloud Carbon Footprint coefficients-aws-use (2026), {arch}, matched {name:?} in {model:?}"
                ),
            };
        }
        if let Some((name, tdp)) = best_match(model, &codecarbon_tdps()) {
            return from_tdp(
                *tdp,
                threads,
                format!(
                    "CodeCarbon cpu_power.csv (2026) TDP {tdp} W for {name:?}, {threads} threads per package"
                ),
            );
        }
    }
    let n = coefficients.len().max(1) as f64;
    CpuPowerFigures {
        idle_w: coefficients.iter().map(|(_, (min, _))| min).sum::<f64>() / n,
        max_w: coefficients.iter().map(|(_, (_, max))| max).sum::<f64>() / n,
        source: format!(
            "Cloud Carbon Footprint coefficients-aws-use (2026), mean of all {} microarchitectures \
             (CPU model {:?} not in the tables)",
            coefficients.len(),
            cpu.model_name.as_deref().unwrap_or("unknown")
        ),
    }
}

/// The estimation meter.
pub struct ModelMeter {
    cpu: CpuPowerFigures,
    dram_w: f64,
    dram_source: String,
    cpu_j: f64,
    dram_j: f64,
}

impl ModelMeter {
    /// Reads `<proc_root>/cpuinfo` and `<proc_root>/meminfo` and resolves the figures.
    pub fn open(
        proc_root: &Path,
        reader: &dyn FileReader,
        overrides: &ModelOverrides,
    ) -> Result<Self, MeterError> {
        let cpuinfo_path = proc_root.join("cpuinfo");
        let cpuinfo = reader
            .read_to_string(&cpuinfo_path)
            .map_err(|source| MeterError::Io { path: cpuinfo_path.clone(), source })?;
        let meminfo_path = proc_root.join("meminfo");
        let meminfo = reader
            .read_to_string(&meminfo_path)
            .map_err(|source| MeterError::Io { path: meminfo_path.clone(), source })?;
        let mem = parse_mem_total_bytes(&meminfo).ok_or_else(|| {
            malformed(&meminfo_path, meminfo.lines().next().unwrap_or(""), "a line MemTotal: N kB")
        })?;
        Self::new(&parse_cpuinfo(&cpuinfo), mem, overrides)
    }

    /// A model for these CPUs and this much memory.
    pub fn new(cpu: &CpuInfo, mem_total_bytes: u64, overrides: &ModelOverrides) -> Result<Self, MeterError> {
        let figures = cpu_power_figures(cpu, overrides);
        for (flag, w) in [("cpu idle", figures.idle_w), ("cpu max", figures.max_w)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(MeterError::Unavailable(format!(
                    "model: {flag} power {w} W is not a non-negative number"
                )));
            }
        }
        if figures.max_w < figures.idle_w {
            return Err(MeterError::Unavailable(format!(
                "model: CPU max power {} W is below idle power {} W ({})",
                figures.max_w, figures.idle_w, figures.source
            )));
        }
        let per_gb = overrides.dram_watts_per_gb.unwrap_or(CCF_DRAM_WATTS_PER_GB);
        if !(per_gb.is_finite() && per_gb >= 0.0) {
            return Err(MeterError::Unavailable(format!(
                "model: DRAM {per_gb} W/GB is not a non-negative number"
            )));
        }
        let gib = mem_total_bytes as f64 / (1u64 << 30) as f64;
        let dram_source = match overrides.dram_watts_per_gb {
            Some(w) => format!("{gib:.2} GiB × --dram-watts-per-gb {w}"),
            None => format!(
                "{gib:.2} GiB × {CCF_DRAM_WATTS_PER_GB} W/GB (Cloud Carbon Footprint memory coefficient)"
            ),
        };
        Ok(Self { cpu: figures, dram_w: gib * per_gb, dram_source, cpu_j: 0.0, dram_j: 0.0 })
    }

    /// The CPU figures in use.
    pub fn cpu_figures(&self) -> &CpuPowerFigures {
        &self.cpu
    }

    /// DRAM power, W.
    pub fn dram_watts(&self) -> f64 {
        self.dram_w
    }
}

impl EnergyMeter for ModelMeter {
    fn source(&self) -> MeterSource {
        MeterSource::Model
    }

    fn describe(&self) -> String {
        format!(
            "estimation model: CPU {:.3} W idle, {:.3} W full load per logical CPU ({}); DRAM {:.2} W ({})",
            self.cpu.idle_w, self.cpu.max_w, self.cpu.source, self.dram_w, self.dram_source
        )
    }

    fn read(&mut self, tick: &Tick<'_>) -> Result<Vec<Measurement>, MeterError> {
        let dt = tick.interval_s.max(0.0);
        let ncpu = f64::from(tick.usage.ncpu.max(1));
        let busy_s = (tick.usage.busy_cpu_ns() as f64 / 1e9).min(ncpu * dt);
        self.cpu_j += ncpu * self.cpu.idle_w * dt + (self.cpu.max_w - self.cpu.idle_w) * busy_s;
        self.dram_j += self.dram_w * dt;
        Ok(vec![
            Measurement { resource: Resource::Machine, domain: Domain::Package, joules: self.cpu_j },
            Measurement { resource: Resource::Machine, domain: Domain::Dram, joules: self.dram_j },
        ])
    }

    /// The model's idle figures: CPUs × idle W per CPU, and all of DRAM's power.
    fn static_power_w(&self, usage: &IntervalUsage) -> Vec<(Domain, f64)> {
        vec![(Domain::Package, f64::from(usage.ncpu.max(1)) * self.cpu.idle_w), (Domain::Dram, self.dram_w)]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::energy::FsReader;
    use crate::energy::testing::write;
    use crate::usage::ProcessCpu;

    fn cpu(model: &str) -> CpuInfo {
        CpuInfo { model_name: Some(model.into()), logical_cpus: 8, packages: 1, siblings: Some(8) }
    }

    #[test]
    fn normalizes_and_matches_word_bounded() {
        assert_eq!(
            normalize_model_name("Intel(R) Xeon(R) CPU E5-2680 v2 @ 2.80GHz"),
            "intel xeon e5-2680 v2"
        );
        assert_eq!(normalize_model_name("AMD EPYC 7763 64-Core Processor"), "amd epyc 7763");
        assert!(word_bounded_contains("intel xeon e5-2680 v2", "e5-2680"));
        assert!(!word_bounded_contains("amd epyc 77630", "epyc 7763"));
        assert!(!word_bounded_contains("x", ""));
        // A needle starting with a multi-byte character, found but not word-bounded, then found.
        assert!(word_bounded_contains("éxé é", "é"));
        assert!(!word_bounded_contains("aé", "é"));
    }

    #[test]
    fn ccf_match_picks_the_longest_model() {
        let f =
            cpu_power_figures(&cpu("Intel(R) Xeon(R) CPU E5-2680 v2 @ 2.80GHz"), &ModelOverrides::default());
        assert!(f.source.contains("Ivy Bridge"), "{}", f.source);
        assert_eq!((f.idle_w, f.max_w), (1.7074305555555556, 5.5569444444444445));
        let f = cpu_power_figures(&cpu("AMD EPYC 7763 64-Core Processor"), &ModelOverrides::default());
        assert!(f.source.contains("EPYC 3rd Gen"), "{}", f.source);
        let f =
            cpu_power_figures(&cpu("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"), &ModelOverrides::default());
        assert!(f.source.contains("Skylake,"), "{}", f.source);
        assert_eq!(f.idle_w, 0.6129888539040325);
    }

    #[test]
    fn codecarbon_tdp_when_ccf_does_not_know_the_model() {
        // A desktop CPU that CCF's SPECpower families do not list.
        let info = CpuInfo {
            model_name: Some("AMD EPYC 4124P 4-Core Processor".into()),
            logical_cpus: 8,
            packages: 1,
            siblings: Some(8),
        };
        let f = cpu_power_figures(&info, &ModelOverrides::default());
        assert!(f.source.contains("CodeCarbon") && f.source.contains("65"), "{}", f.source);
        assert_eq!(f.max_w, 65.0 / 8.0);
        assert_eq!(f.idle_w, 0.1 * 65.0 / 8.0);
    }

    #[test]
    fn unknown_model_uses_the_ccf_mean() {
        let f = cpu_power_figures(&cpu("AMD EPYC"), &ModelOverrides::default());
        assert!(f.source.contains("mean of all 20"), "{}", f.source);
        let c = ccf_coefficients();
        let mean_min = c.iter().map(|(_, (a, _))| a).sum::<f64>() / 20.0;
        assert_eq!(f.idle_w, mean_min);
        assert!(f.max_w > f.idle_w);
    }

    #[test]
    fn overrides_win() {
        let o = ModelOverrides { cpu_idle_watts: Some(1.0), cpu_max_watts: Some(4.0), ..Default::default() };
        let f = cpu_power_figures(&cpu("AMD EPYC"), &o);
        assert_eq!((f.idle_w, f.max_w), (1.0, 4.0));
        assert!(f.source.starts_with("--cpu-idle-watts 1; --cpu-max-watts 4"), "{}", f.source);
        let o = ModelOverrides { cpu_tdp_watts: Some(160.0), ..Default::default() };
        let f = cpu_power_figures(&cpu("AMD EPYC 7763"), &o);
        assert_eq!((f.idle_w, f.max_w), (2.0, 20.0));
    }

    #[test]
    fn every_ccf_family_has_coefficients() {
        let coefficients = ccf_coefficients();
        for (model, arch) in ccf_models() {
            assert!(coefficients.iter().any(|(a, _)| *a == arch), "{model}: {arch} has no coefficients");
        }
        assert_eq!(codecarbon_tdps().len(), 4903 - 5);
    }

    #[test]
    fn parses_proc_files() {
        let info = parse_cpuinfo(
            "processor\t: 0\nmodel name\t: AMD EPYC\nphysical id\t: 0\nsiblings\t: 2\n\n\
             processor\t: 1\nmodel name\t: AMD EPYC\nphysical id\t: 0\nsiblings\t: 2\n",
        );
        assert_eq!(
            info,
            CpuInfo { model_name: Some("AMD EPYC".into()), logical_cpus: 2, packages: 1, siblings: Some(2) }
        );
        assert_eq!(
            parse_mem_total_bytes("MemTotal:       24684092 kB\nMemFree: 1 kB\n"),
            Some(24684092 * 1024)
        );
        assert_eq!(parse_mem_total_bytes("MemTotal: lots\n"), None);
        // kB × 1024 past u64 is malformed, not an overflow.
        assert_eq!(parse_mem_total_bytes("MemTotal: 18014398509481984 kB\n"), None);
        assert_eq!(parse_mem_total_bytes("MemTotal: 18014398509481983 kB\n"), Some(u64::MAX - 1023));
    }

    #[test]
    fn meter_integrates_linear_model_from_fake_proc() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "cpuinfo",
            "processor : 0\nmodel name : Mystery CPU\nprocessor : 1\nmodel name : Mystery CPU\n",
        );
        write(tmp.path(), "meminfo", "MemTotal: 8388608 kB\n"); // 8 GiB
        let o = ModelOverrides { cpu_idle_watts: Some(2.0), cpu_max_watts: Some(10.0), ..Default::default() };
        let mut m = ModelMeter::open(tmp.path(), &FsReader, &o).unwrap();
        assert_eq!(m.dram_watts(), 8.0 * 0.392);
        let usage = IntervalUsage {
            interval_s: 2.0,
            ncpu: 2,
            processes: BTreeMap::from([(7, ProcessCpu { cpu_ns: 1_500_000_000, switches: 1 })]),
            kernel_cpu_ns: 500_000_000,
            idle_cpu_ns: 2_000_000_000,
        };
        let r = m.read(&Tick { interval_s: 2.0, usage: &usage }).unwrap();
        // 2 CPUs × 2 W × 2 s + 8 W × 2 busy CPU-seconds.
        assert_eq!(r[0].joules, 8.0 + 16.0);
        assert_eq!(r[1].joules, 8.0 * 0.392 * 2.0);
        assert_eq!(m.static_power_w(&usage), vec![(Domain::Package, 4.0), (Domain::Dram, 8.0 * 0.392)]);
    }

    #[test]
    fn opens_on_this_machines_real_proc() {
        let m = ModelMeter::open(Path::new("/proc"), &FsReader, &ModelOverrides::default()).unwrap();
        assert!(m.cpu_figures().max_w > m.cpu_figures().idle_w && m.dram_watts() > 0.0);
    }

    #[test]
    fn model_rejects_bad_figures_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "cpuinfo", "processor : 0\n");
        write(tmp.path(), "meminfo", "MemFree: 1 kB\n");
        let msg =
            ModelMeter::open(tmp.path(), &FsReader, &ModelOverrides::default()).err().unwrap().to_string();
        assert!(msg.contains("meminfo") && msg.contains("MemTotal"), "{msg}");
        let o = ModelOverrides { cpu_idle_watts: Some(5.0), cpu_max_watts: Some(1.0), ..Default::default() };
        let msg = ModelMeter::new(&cpu("x"), 1 << 30, &o).err().unwrap().to_string();
        assert!(msg.contains("below idle"), "{msg}");
    }
}
