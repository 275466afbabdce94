//! The arithmetic of the benchmark: medians, slowdown ratios, per-event cost, verdicts.

use std::time::Duration;

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// The slowdown of a load with the agent versus without: `(with − without) / without`.
/// Negative when the run with the agent happened to be faster (noise).
pub fn slowdown(without: Duration, with: Duration) -> f64 {
    (with.as_secs_f64() - without.as_secs_f64()) / without.as_secs_f64()
}

/// The kernel's run-time statistics of a set of programs (`bpf_prog_info.run_time_ns`/`run_cnt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    /// Nanoseconds spent in the programs since they were loaded (while stats were enabled).
    pub run_time_ns: u64,
    /// Number of times the programs ran since they were loaded (while stats were enabled).
    pub run_cnt: u64,
}

impl ProgStats {
    /// What happened between `earlier` and `self` (counters only grow while a program lives).
    pub fn since(self, earlier: ProgStats) -> ProgStats {
        ProgStats {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }

    /// The sum of two measurements.
    pub fn plus(self, other: ProgStats) -> ProgStats {
        ProgStats { run_time_ns: self.run_time_ns + other.run_time_ns, run_cnt: self.run_cnt + other.run_cnt }
    }

    /// Nanoseconds per event; `None` when nothing ran.
    pub fn ns_per_event(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// `PASS` when `value` is at most `limit`, else `MISS`.
pub fn verdict(value: f64, limit: f64) -> &'static str {
    if value <= limit { "PASS" } else { "MISS" }
}

/// The name the kernel keeps for a program: at most 15 bytes (`BPF_OBJ_NAME_LEN` − 1).
pub fn kernel_program_name(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The program ids a process holds, from the contents of its `/proc/<pid>/fdinfo/*` files:
/// program and link descriptors both show `prog_id:`.
pub fn prog_ids_in_fdinfo<'a>(fdinfos: impl IntoIterator<Item = &'a str>) -> Vec<u32> {
    let mut ids: Vec<u32> = fdinfos
        .into_iter()
        .flat_map(str::lines)
        .filter_map(|line| line.strip_prefix("prog_id:")?.trim().parse().ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(5)]), Some(ms(5)));
        assert_eq!(median(&[ms(9), ms(1), ms(5)]), Some(ms(5)));
        assert_eq!(median(&[ms(4), ms(1), ms(8), ms(2)]), Some(ms(3)));
    }

    #[test]
    fn slowdown_is_relative_to_without() {
        assert!((slowdown(ms(1000), ms(1030)) - 0.03).abs() < 1e-12);
        assert!((slowdown(ms(1000), ms(990)) + 0.01).abs() < 1e-12);
        assert_eq!(slowdown(ms(500), ms(500)), 0.0);
    }

    #[test]
    fn per_event_cost() {
        let before = ProgStats { run_time_ns: 1_000, run_cnt: 10 };
        let after = ProgStats { run_time_ns: 11_000, run_cnt: 110 };
        let delta = after.since(before);
        assert_eq!(delta, ProgStats { run_time_ns: 10_000, run_cnt: 100 });
        assert_eq!(delta.ns_per_event(), Some(100.0));
        assert_eq!(delta.plus(delta).ns_per_event(), Some(100.0));
        assert_eq!(ProgStats::default().ns_per_event(), None);
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(150.0, 150.0), "PASS");
        assert_eq!(verdict(150.1, 150.0), "MISS");
        assert_eq!(verdict(-0.01, 0.03), "PASS");
    }

    #[test]
    fn kernel_truncates_names() {
        assert_eq!(kernel_program_name("sched_switch_btf"), "sched_switch_bt");
        assert_eq!(kernel_program_name("sched_switch_tp"), "sched_switch_tp");
        assert_eq!(kernel_program_name("short"), "short");
    }

    #[test]
    fn finds_program_ids_in_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\n\
                    prog_tag:\tb4ab6b0b0ed0bb5e\nmemlock:\t4096\nprog_id:\t412\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\traw_tracepoint\nlink_id:\t7\nprog_tag:\tb4ab\nprog_id:\t412\n";
        let map = "pos:\t0\nmap_type:\t1\nmap_id:\t99\n";
        let pipe = "pos:\t0\nflags:\t02\n";
        assert_eq!(prog_ids_in_fdinfo([prog, link, map, pipe, "prog_id:\t17\n"]), vec![17, 412]);
        assert!(prog_ids_in_fdinfo([map, pipe]).is_empty());
    }
}
