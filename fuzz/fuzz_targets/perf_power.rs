//! RAPL through the perf `power` PMU (`agent/src/energy/perf_power.rs`): `type`, `cpumask`,
//! `format/event`, `events/energy-*` with `.scale` and `.unit`, the CPUs' package ids, then
//! counters opened on those CPUs and read as they advance.
//!
//! Input: a fake tree (`fuzz/src/lib.rs`) rooted at `/sys`, e.g.
//! `bus/event_source/devices/power/events/energy-pkg`; the counter of event config C on CPU N
//! is the file `counts/C/N` (a decimal count, `@K` for later reads, `err` for a failed read);
//! `ticks` holds the read intervals.
#![no_main]

use std::io;
use std::path::Path;
use std::sync::Arc;

use carbon_agent::energy::perf_power::{
    MAX_CPUS, PerfCounter, PerfCounterSource, PerfPowerMeter, parse_cpu_list, parse_pmu,
};
use carbon_agent::energy::{Domain, EnergyMeter, FileReader, Tick};
use carbon_agent::usage::IntervalUsage;
use carbon_agent_fuzz::FakeTree;
use libfuzzer_sys::fuzz_target;

/// Counters read from the tree; like the kernel's, they never go back.
struct TreeCounters(Arc<FakeTree>);

struct TreeCounter {
    tree: Arc<FakeTree>,
    file: String,
    last: u64,
}

impl PerfCounter for TreeCounter {
    fn read(&mut self) -> io::Result<u64> {
        match self.tree.text(&self.file).map(str::trim) {
            Some("err") => Err(io::Error::other("the counter's PMU went away")),
            Some(v) => {
                self.last = self.last.max(v.parse().unwrap_or(0));
                Ok(self.last)
            }
            None => Ok(self.last),
        }
    }
}

impl PerfCounterSource for TreeCounters {
    fn open(&mut self, _pmu_type: u32, config: u64, cpu: u32) -> io::Result<Box<dyn PerfCounter>> {
        Ok(Box::new(TreeCounter { tree: self.0.clone(), file: format!("counts/{config}/{cpu}"), last: 0 }))
    }
}

fuzz_target!(|data: &[u8]| {
    let tree = Arc::new(FakeTree::parse(Path::new("/sys"), data));
    if let Ok(mask) = tree.read_to_string(Path::new("/sys/bus/event_source/devices/power/cpumask"))
        && let Some(cpus) = parse_cpu_list(&mask)
    {
        assert!(!cpus.is_empty() && cpus.iter().all(|&c| c < MAX_CPUS));
        let written = cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        assert_eq!(parse_cpu_list(&written).as_ref(), Some(&cpus));
    }

    let Ok(pmu) = parse_pmu(Path::new("/sys"), &*tree) else { return };
    assert!(!pmu.cpus.is_empty() && !pmu.events.is_empty());
    for e in &pmu.events {
        assert!(e.scale > 0.0 && e.scale <= 1.0, "{e:?}");
        assert!(e.name.starts_with("energy-") && !e.name.contains('.'), "{e:?}");
    }
    let psys = pmu.events.iter().filter(|e| e.domain == Domain::Psys).count();
    let expected = (pmu.events.len() - psys) * pmu.cpus.len() + psys;

    let ticks = tree.ticks();
    let Ok(mut meter) =
        PerfPowerMeter::open(Path::new("/sys"), tree.clone(), Box::new(TreeCounters(tree.clone())))
    else {
        return;
    };
    let usage = IntervalUsage::default();
    let mut last = vec![0.0; expected];
    for (k, interval_s) in ticks.into_iter().enumerate() {
        tree.set_tick(k + 1);
        let Ok(m) = meter.read(&Tick { interval_s, usage: &usage }) else { continue };
        assert_eq!(m.len(), expected, "one counter per event and package, psys once");
        for (prev, now) in last.iter_mut().zip(&m) {
            assert!(now.joules.is_finite() && now.joules >= *prev, "{now:?} after {prev} J");
            *prev = now.joules;
        }
    }
});
