//! RAPL through powercap sysfs (`PowercapMeter` in `agent/src/energy/powercap.rs`): zone
//! discovery, `name`, `max_energy_range_uj`, `constraint_*_max_power_uw` and `energy_uj`, then
//! reads as the counters move and wrap.
//!
//! Input: a fake tree (`fuzz/src/lib.rs`) rooted at `/sys`, e.g. `class/powercap/intel-rapl:0/name`;
//! `class/powercap/intel-rapl:0/energy_uj@2` is the counter from the second read on; `ticks`
//! holds the read intervals.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use carbon_agent::energy::powercap::PowercapMeter;
use carbon_agent::energy::{EnergyMeter, Tick};
use carbon_agent::usage::IntervalUsage;
use carbon_agent_fuzz::FakeTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tree = Arc::new(FakeTree::parse(Path::new("/sys"), data));
    let ticks = tree.ticks();
    let Ok(mut meter) = PowercapMeter::open(Path::new("/sys"), tree.clone()) else { return };
    let zones = meter.zones().to_vec();
    assert!(!zones.is_empty());
    for (i, z) in zones.iter().enumerate() {
        assert!(z.range_uj > 0, "{z:?}");
        assert!(z.max_power_w.is_finite() && z.max_power_w > 0.0, "{z:?}");
        assert!(z.id.starts_with("intel-rapl"), "{z:?}");
        // Never two zones for one domain of one resource (that would count it twice).
        assert!(zones[..i].iter().all(|o| (o.resource, o.domain) != (z.resource, z.domain)), "{zones:?}");
    }
    let usage = IntervalUsage::default();
    let mut last = vec![0.0; zones.len()];
    let mut ambiguous = 0;
    for (k, interval_s) in ticks.into_iter().enumerate() {
        tree.set_tick(k + 1);
        let Ok(m) = meter.read(&Tick { interval_s, usage: &usage }) else { continue };
        assert_eq!(m.len(), zones.len());
        for ((prev, now), z) in last.iter_mut().zip(&m).zip(&zones) {
            assert_eq!((now.resource, now.domain), (z.resource, z.domain));
            // Cumulative joules: finite and never going back, whatever the counter did.
            assert!(now.joules.is_finite() && now.joules >= *prev, "{now:?} after {prev} J");
            *prev = now.joules;
        }
        assert!(meter.ambiguous_reads() >= ambiguous);
        ambiguous = meter.ambiguous_reads();
    }
});
