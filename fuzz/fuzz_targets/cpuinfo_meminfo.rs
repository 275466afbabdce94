//! `/proc/cpuinfo` and `/proc/meminfo` through the estimation meter (`ModelMeter::open` in
//! `agent/src/energy/model.rs`: CPU model matched against the CCF and CodeCarbon tables, memory
//! size), then a few reads.
//!
//! Input: a fake tree (`fuzz/src/lib.rs`) with `cpuinfo`, `meminfo`, and `ticks` (the read
//! intervals); `busy` holds the busy CPU nanoseconds of each tick, one a line.
#![no_main]

use std::path::Path;

use carbon_agent::energy::model::{ModelMeter, ModelOverrides, parse_cpuinfo, parse_mem_total_bytes};
use carbon_agent::energy::{EnergyMeter, Tick};
use carbon_agent::usage::IntervalUsage;
use carbon_agent_fuzz::FakeTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tree = FakeTree::parse(Path::new("/proc"), data);
    if let Some(text) = tree.text("cpuinfo") {
        let info = parse_cpuinfo(text);
        assert!(info.packages >= 1);
        assert!(info.model_name.as_deref().is_none_or(|m| m == m.trim()));
    }
    if let Some(bytes) = tree.text("meminfo").and_then(parse_mem_total_bytes) {
        assert_eq!(bytes % 1024, 0);
        assert_eq!(parse_mem_total_bytes(&format!("MemTotal: {} kB\n", bytes / 1024)), Some(bytes));
    }

    let Ok(mut meter) = ModelMeter::open(Path::new("/proc"), &tree, &ModelOverrides::default()) else {
        return;
    };
    let figures = meter.cpu_figures();
    assert!(figures.idle_w.is_finite() && figures.idle_w >= 0.0 && figures.max_w >= figures.idle_w);
    assert!(!figures.source.is_empty());
    let busy: Vec<u64> =
        tree.text("busy").unwrap_or("").lines().filter_map(|l| l.trim().parse().ok()).collect();
    let ncpu = tree.text("cpuinfo").map_or(1, |t| parse_cpuinfo(t).logical_cpus);
    let mut last = vec![0.0; 2];
    for (i, interval_s) in tree.ticks().into_iter().enumerate() {
        let usage = IntervalUsage {
            interval_s,
            ncpu,
            kernel_cpu_ns: busy.get(i).copied().unwrap_or(0),
            ..Default::default()
        };
        let m = meter.read(&Tick { interval_s, usage: &usage }).expect("the model cannot fail to read");
        assert_eq!(m.len(), 2);
        for (prev, now) in last.iter_mut().zip(&m) {
            assert!(now.joules.is_finite() && now.joules >= *prev, "{now:?} after {prev} J");
            *prev = now.joules;
        }
    }
});
