//! The pass/fail arithmetic of `scripts/gpu-check.sh`, over its evidence folder:
//!
//! ```text
//! EVIDENCE/
//!   preflight.txt  doctor.json  doctor.txt  nvidia-smi-q.txt
//!   power-trace.csv            nvidia-smi --query-gpu=timestamp,index,power.draw (TZ=UTC, 200 ms)
//!   single/  counter-before.txt counter-after.txt run.json load.out compute-apps.txt agent.err
//!   pair/    counter-before.txt counter-after.txt run.json load-a.out load-b.out compute-apps.txt agent.err
//!   verdict.json  verdict.txt  (written by `gpu-check-eval evaluate`)
//! ```
//!
//! Criteria (issue 13): the source is NVML with no meter warning; the tree's GPU energy is
//! at least 95 % of the load's own counter reading and at most the counter delta that
//! brackets the run; the SM-utilization basis in at least 80 % of the intervals with a GPU
//! process; the tree's GPU pids are nvidia-smi's compute apps; two equal loads split
//! 50/50 ± 10 points, together at least 95 % of their counter reading, and the run's GPU
//! energy conserved; the power trace integrated over the single load within 10 % of the
//! counter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::output::{self, LoadRecord};

/// Tree GPU energy must reach this fraction of the load's own counter reading.
pub const MIN_OWN_FRACTION: f64 = 0.95;
/// Fraction of GPU-process intervals that must use the SM-utilization basis.
pub const MIN_SM_BASIS: f64 = 0.80;
/// How far from 50 % one of two equal loads may be.
pub const MAX_SPLIT_OFF: f64 = 0.10;
/// How far the integrated power trace may be from the counter.
pub const MAX_TRACE_OFF: f64 = 0.10;

/// One criterion's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Criterion {
    /// Short name.
    pub name: String,
    /// Whether it passed.
    pub pass: bool,
    /// The figures behind it.
    pub detail: String,
}

/// The whole check's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Every criterion passed.
    pub pass: bool,
    /// NVML index checked.
    pub gpu: u32,
    /// Each criterion.
    pub criteria: Vec<Criterion>,
}

impl Verdict {
    /// One line per criterion, then the overall result.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.criteria {
            s.push_str(&format!("{} {:<14} {}\n", if c.pass { "PASS" } else { "FAIL" }, c.name, c.detail));
        }
        s.push_str(&format!("gpu-check: {} (GPU {})\n", if self.pass { "PASS" } else { "FAIL" }, self.gpu));
        s
    }
}

fn read(dir: &Path, rel: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(rel)).map_err(|e| format!("{}: {e}", dir.join(rel).display()))
}

fn joules(dir: &Path, rel: &str) -> Result<f64, String> {
    let s = read(dir, rel)?;
    s.trim().parse::<f64>().map_err(|_| format!("{rel}: {:?} is not joules", s.trim()))
}

fn json(dir: &Path, rel: &str) -> Result<Value, String> {
    serde_json::from_str(&read(dir, rel)?).map_err(|e| format!("{rel}: {e}"))
}

fn load(dir: &Path, rel: &str) -> Result<LoadRecord, String> {
    output::parse(&read(dir, rel)?).map_err(|e| format!("{rel}: {e}"))
}

/// Pids in `nvidia-smi --query-compute-apps=pid --format=csv,noheader` output (repeated polls).
pub fn compute_apps(text: &str) -> BTreeSet<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026/12/02 05:21:29.123` (nvidia-smi's timestamp, UTC) in ms since the Unix epoch.
pub fn parse_timestamp_ms(s: &str) -> Option<u64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('/').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let frac: String = frac.chars().chain("000".chars()).take(3).collect();
    let ms: i64 = frac.parse().ok()?;
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs * 1000 + ms).ok()
}

/// The trace's samples of GPU `gpu`: (ms since the epoch, watts), in time order.
pub fn power_trace(text: &str, gpu: u32) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(str::trim);
            let (ts, index, watts) = (f.next()?, f.next()?, f.next()?);
            (index.parse::<u32>().ok()? == gpu).then_some(())?;
            let w: f64 = watts.trim_end_matches('W').trim().parse().ok()?;
            Some((parse_timestamp_ms(ts)?, w))
        })
        .collect();
    out.sort_by_key(|s| s.0);
    out
}

/// Joules of the piecewise-linear power trace over `[from_ms, to_ms]`; `None` when the
/// trace does not cover the window to within one second at either end.
pub fn integrate(trace: &[(u64, f64)], from_ms: u64, to_ms: u64) -> Option<f64> {
    let (first, last) = (trace.first()?, trace.last()?);
    if first.0 > from_ms + 1000 || last.0 + 1000 < to_ms || to_ms <= from_ms {
        return None;
    }
    let mut j = 0.0;
    for w in trace.windows(2) {
        let ((t0, p0), (t1, p1)) = (w[0], w[1]);
        let (a, b) = (t0.max(from_ms), t1.min(to_ms));
        if b <= a || t1 == t0 {
            continue;
        }
        let at = |t: u64| p0 + (p1 - p0) * (t - t0) as f64 / (t1 - t0) as f64;
        j += (at(a) + at(b)) / 2.0 * (b - a) as f64 / 1000.0;
    }
    Some(j)
}

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

/// The tree's processes with GPU energy: pid → joules.
fn tree_gpu_pids(doc: &Value) -> BTreeMap<u32, f64> {
    doc["tree"]["children"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["pid"].as_u64()? as u32, num(c, &["energy_j", "gpu"]))))
        .filter(|(_, j)| *j > 0.0)
        .collect()
}

fn criterion(name: &str, pass: bool, detail: String) -> Criterion {
    Criterion { name: name.to_owned(), pass, detail }
}

fn source_ok(run: &str, doc: &Value) -> Criterion {
    let source = doc["meter"]["source"].as_str().unwrap_or("");
    let warnings: Vec<String> = doc["gpu"]["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| format!("{} (×{})", w["message"].as_str().unwrap_or("?"), w["intervals"]))
        .collect();
    let has_gpu = doc["gpu"].is_object();
    criterion(
        &format!("{run}-source"),
        source.contains("nvml") && has_gpu && warnings.is_empty(),
        format!(
            "meter source {source:?}, GPU tally {}, {} warning(s){}",
            if has_gpu { "present" } else { "MISSING" },
            warnings.len(),
            if warnings.is_empty() { String::new() } else { format!(": {}", warnings.join("; ")) }
        ),
    )
}

fn conservation(run: &str, doc: &Value) -> Criterion {
    let g = &doc["gpu"];
    let metered: f64 = g["gpus"].as_object().into_iter().flatten().map(|(_, v)| num(v, &["metered_j"])).sum();
    let split = num(g, &["to_processes_j"]) + num(g, &["to_buckets_j"]);
    criterion(
        &format!("{run}-conserved"),
        (split - metered).abs() <= 1e-6 * metered.max(1.0),
        format!("processes + buckets {split:.3} J vs metered {metered:.3} J"),
    )
}

fn pids(run: &str, doc: &Value, apps: &BTreeSet<u32>) -> Criterion {
    let tree: BTreeSet<u32> = tree_gpu_pids(doc).into_keys().collect();
    criterion(
        &format!("{run}-pids"),
        !apps.is_empty() && &tree == apps,
        format!("tree pids with GPU energy {tree:?}, nvidia-smi compute apps {apps:?}"),
    )
}

/// Evaluates the evidence folder for NVML GPU `gpu`. `Err` when evidence is missing or
/// unreadable (the check could not be judged).
pub fn evaluate(dir: &Path, gpu: u32) -> Result<Verdict, String> {
    let single = json(dir, "single/run.json")?;
    let pair = json(dir, "pair/run.json")?;
    let one = load(dir, "single/load.out")?;
    let (a, b) = (load(dir, "pair/load-a.out")?, load(dir, "pair/load-b.out")?);
    let single_bracket = joules(dir, "single/counter-after.txt")? - joules(dir, "single/counter-before.txt")?;
    let pair_bracket = joules(dir, "pair/counter-after.txt")? - joules(dir, "pair/counter-before.txt")?;
    let trace = power_trace(&read(dir, "power-trace.csv")?, gpu);
    let single_apps = compute_apps(&read(dir, "single/compute-apps.txt")?);
    let pair_apps = compute_apps(&read(dir, "pair/compute-apps.txt")?);
    for (name, l) in [("single", &one), ("pair a", &a), ("pair b", &b)] {
        if l.nvml_index != gpu {
            return Err(format!("the {name} load ran on NVML GPU {}, not {gpu}", l.nvml_index));
        }
    }

    let mut c = vec![source_ok("single", &single), source_ok("pair", &pair)];

    let own = one.own_j();
    let tree = num(&single, &["tree", "energy_j", "gpu"]);
    c.push(criterion(
        "single-energy",
        own > 0.0 && tree >= MIN_OWN_FRACTION * own && tree <= single_bracket + 1e-6,
        format!(
            "tree {tree:.1} J; load's counter {own:.1} J ({:.1} %, ≥ {:.0} %); bracketing delta {single_bracket:.1} J",
            if own > 0.0 { tree / own * 100.0 } else { 0.0 },
            MIN_OWN_FRACTION * 100.0
        ),
    ));

    let key = format!("gpu{gpu}");
    let (mut sm, mut with) = (0.0, 0.0);
    for doc in [&single, &pair] {
        let g = &doc["gpu"]["gpus"][&key];
        sm += num(g, &["basis", "sm-utilization"]);
        with += num(g, &["intervals_with_processes"]);
    }
    c.push(criterion(
        "sm-basis",
        with > 0.0 && sm / with >= MIN_SM_BASIS,
        format!(
            "sm-utilization in {sm} of {with} intervals with a GPU process (≥ {:.0} %)",
            MIN_SM_BASIS * 100.0
        ),
    ));

    c.push(pids("single", &single, &single_apps));
    c.push(pids("pair", &pair, &pair_apps));

    let per_pid = tree_gpu_pids(&pair);
    let (ja, jb) = (per_pid.get(&a.pid).copied().unwrap_or(0.0), per_pid.get(&b.pid).copied().unwrap_or(0.0));
    let share = if ja + jb > 0.0 { ja / (ja + jb) } else { 0.0 };
    c.push(criterion(
        "pair-split",
        (share - 0.5).abs() <= MAX_SPLIT_OFF,
        format!(
            "load a {ja:.1} J, load b {jb:.1} J: {:.1} % / {:.1} %",
            share * 100.0,
            (1.0 - share) * 100.0
        ),
    ));
    let pair_own = (a.end_mj.max(b.end_mj).saturating_sub(a.start_mj.min(b.start_mj))) as f64 / 1000.0;
    let pair_tree = num(&pair, &["tree", "energy_j", "gpu"]);
    c.push(criterion(
        "pair-energy",
        pair_own > 0.0 && ja + jb >= MIN_OWN_FRACTION * pair_own && pair_tree <= pair_bracket + 1e-6,
        format!(
            "loads {:.1} J of the counter's {pair_own:.1} J over both ({:.1} %); tree {pair_tree:.1} J ≤ bracketing \
             {pair_bracket:.1} J",
            ja + jb,
            if pair_own > 0.0 { (ja + jb) / pair_own * 100.0 } else { 0.0 }
        ),
    ));
    c.push(conservation("single", &single));
    c.push(conservation("pair", &pair));

    let integral = integrate(&trace, one.start_unix_ms, one.end_unix_ms);
    c.push(match integral {
        Some(p) => criterion(
            "power-trace",
            own > 0.0 && (p - own).abs() <= MAX_TRACE_OFF * own,
            format!(
                "trace {p:.1} J vs counter {own:.1} J over the single load ({:+.1} %, within ±{:.0} %)",
                if own > 0.0 { (p / own - 1.0) * 100.0 } else { 0.0 },
                MAX_TRACE_OFF * 100.0
            ),
        ),
        None => criterion(
            "power-trace",
            false,
            format!("the trace ({} samples of GPU {gpu}) does not cover the single load", trace.len()),
        ),
    });

    Ok(Verdict { pass: c.iter().all(|x| x.pass), gpu, criteria: c })
}

/// Preflight on `carbon-agent doctor --json`: privileges, the scheduler hook loads, NVML is
/// found. `Err` with the reason otherwise.
pub fn preflight_doctor(doc: &Value) -> Result<String, String> {
    let checks = doc["checks"].as_array().ok_or("doctor JSON has no checks")?;
    let status = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| (c["status"].as_str().unwrap_or(""), c["detail"].clone()))
    };
    match status("privileges") {
        Some(("ok", _)) => {}
        Some((_, d)) => return Err(format!("not privileged: {d}")),
        None => return Err("doctor did not check privileges".into()),
    }
    let hook = ["tp_btf/sched_switch", "tracepoint/sched/sched_switch"]
        .into_iter()
        .find(|h| matches!(status(h), Some(("ok", _))))
        .ok_or("the eBPF scheduler hook does not load (doctor: neither tp_btf/sched_switch nor the classic tracepoint)")?;
    match status("meter nvml") {
        Some(("ok", d)) => Ok(format!("eBPF {hook} loads; {}", d.as_str().unwrap_or(""))),
        Some((_, d)) => Err(format!("NVML not usable: {}", d.as_str().unwrap_or(""))),
        None => Err("doctor did not probe NVML".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_milliseconds() {
        assert_eq!(parse_timestamp_ms("1970/01/01 00:00:00.000"), Some(0));
        assert_eq!(parse_timestamp_ms("2000/03/01 00:00:01.5"), Some(951_868_801_500));
        assert_eq!(parse_timestamp_ms("2026/12/02 05:21:29.123"), Some(1_796_188_889_123));
        assert_eq!(parse_timestamp_ms("garbage"), None);
    }

    #[test]
    fn trace_integration_clips_to_the_window() {
        let text = "2026/12/02 05:21:29.000, 0, 100.00\n2026/12/02 05:21:29.000, 1, 999\n\
                    2026/12/02 05:21:30.000, 0, 300.00\n2026/12/02 05:21:31.000, 0, [N/A]\n\
                    2026/12/02 05:21:32.000, 0, 300.00 W\n";
        let t = power_trace(text, 0);
        assert_eq!(t.len(), 3);
        let t0 = parse_timestamp_ms("2026/12/02 05:21:29.000").unwrap();
        // 0.5 s ramp 200→300 W (125 J... ×0.5 s = 125 J) then 2 s at 300 W = 600 J.
        assert_eq!(integrate(&t, t0 + 500, t0 + 3000), Some(125.0 + 600.0));
        assert_eq!(integrate(&t, t0 + 500, t0 + 5000), None);
        assert_eq!(integrate(&t, t0 - 2000, t0 + 1000), None);
    }

    #[test]
    fn preflight_needs_privileges_the_hook_and_nvml() {
        let doc = |priv_: &str, hook: &str, nvml: &str| {
            serde_json::json!({"checks": [
                {"name": "privileges", "status": priv_, "detail": "needs root"},
                {"name": "tp_btf/sched_switch", "status": hook, "detail": ""},
                {"name": "meter nvml", "status": nvml, "detail": "libnvidia-ml.so.1 not found"},
            ]})
        };
        assert!(preflight_doctor(&doc("ok", "ok", "ok")).is_ok());
        assert!(preflight_doctor(&doc("missing", "ok", "ok")).unwrap_err().contains("not privileged"));
        assert!(preflight_doctor(&doc("ok", "missing", "ok")).unwrap_err().contains("scheduler hook"));
        assert!(
            preflight_doctor(&doc("ok", "ok", "warn")).unwrap_err().contains("libnvidia-ml.so.1 not found")
        );
    }
}
