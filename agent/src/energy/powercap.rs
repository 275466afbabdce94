//! RAPL through powercap sysfs: `<sysfs_root>/class/powercap/intel-rapl:N[:M]` and
//! `intel-rapl-mmio:N[:M]`.
//!
//! Each zone has `name` (`package-N`, `package-N-die-M`, `core`, `uncore`, `dram`,
//! `psys`), `energy_uj` (a counter in µJ that wraps at `max_energy_range_uj`) and
//! `constraint_K_*` files. AMD processors are exposed by the same driver with the same
//! names (Linux ≥ 5.8: `package-N` and `core`), so they need nothing special.
//!
//! * **Sockets**: every `intel-rapl:N` package zone is read; its subzones belong to its
//!   package.
//! * **Containment**: package ⊃ core, uncore and psys ⊃ all are reported as separate
//!   domains; [`super::MeterSet`] never sums a domain with one it contains. A package
//!   exposed both through MSRs (`intel-rapl`) and MMIO (`intel-rapl-mmio`) is read once,
//!   from `intel-rapl`.
//! * **Wraparound**: see [`WrapCounter`]. More than one wrap between two reads is possible
//!   when the zone's maximum power × the interval exceeds the range; the maximum power is
//!   the largest `constraint_*_max_power_uw`, or [`FALLBACK_MAX_POWER_W`] when the zone
//!   has none.
//! * **Permissions**: `energy_uj` is root-only since Linux 5.10; the error says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    Domain, EnergyMeter, FileReader, Measurement, MeterError, MeterSource, Resource, Tick, malformed,
    read_trimmed, read_u64,
};

/// Maximum power assumed for a zone without `constraint_*_max_power_uw` (dram zones,
/// most psys zones): 1 kW, above any x86 socket's draw. With the common 262,143 J range,
/// a wrap is then ambiguous only for reads more than 262 s apart.
pub const FALLBACK_MAX_POWER_W: f64 = 1000.0;

/// Corrects one wrapping µJ counter into a cumulative figure.
///
/// Between two reads, the counter advanced by `(raw − last) mod range` plus some whole
/// number `k` of ranges. `k > 0` is possible only when `max_power × interval` exceeds the
/// observed advance plus one range. When it is possible, `k` is estimated from the
/// previous interval's mean power (0 before there is one) and the read is counted in
/// [`WrapCounter::ambiguous_reads`]: detected and reported, never silently ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct WrapCounter {
    range_uj: u64,
    last_raw: u64,
    total_uj: f64,
    last_power_w: Option<f64>,
    /// Reads where more than one wrap could have happened.
    pub ambiguous_reads: u64,
    /// Extra whole wraps added by the estimate, over all reads.
    pub extra_wraps: u64,
}

impl WrapCounter {
    /// A counter whose first raw value is `raw`, wrapping at `range_uj` (> 0).
    pub fn new(raw: u64, range_uj: u64) -> Self {
        Self {
            range_uj,
            last_raw: raw,
            total_uj: 0.0,
            last_power_w: None,
            ambiguous_reads: 0,
            extra_wraps: 0,
        }
    }

    /// Takes the next raw value, read `interval_s` after the previous one, for a zone that
    /// draws at most `max_power_w`; returns the µJ consumed since the previous read.
    pub fn update(&mut self, raw: u64, interval_s: f64, max_power_w: f64) -> f64 {
        let range = self.range_uj as f64;
        let observed = if raw >= self.last_raw {
            (raw - self.last_raw) as f64
        } else {
            // One wrap: from last_raw up to the range, then from 0 to raw.
            (self.range_uj.saturating_sub(self.last_raw) + raw) as f64
        };
        let max_uj = max_power_w * interval_s.max(0.0) * 1e6;
        let max_extra = if max_uj > observed + range { ((max_uj - observed) / range).floor() } else { 0.0 };
        let mut extra = 0.0;
        if max_extra >= 1.0 {
            self.ambiguous_reads = self.ambiguous_reads.saturating_add(1);
            if let Some(power) = self.last_power_w {
                let expected = power * interval_s * 1e6;
                extra = ((expected - observed) / range).round().clamp(0.0, max_extra);
                self.extra_wraps = self.extra_wraps.saturating_add(extra as u64);
            }
        }
        let delta = observed + extra * range;
        if interval_s > 0.0 {
            self.last_power_w = Some(delta / 1e6 / interval_s);
        }
        self.last_raw = raw;
        self.total_uj += delta;
        delta
    }

    /// µJ since the counter was created.
    pub fn total_uj(&self) -> f64 {
        self.total_uj
    }
}

/// One powercap zone being read.
#[derive(Debug)]
struct Zone {
    dir: PathBuf,
    resource: Resource,
    domain: Domain,
    max_power_w: f64,
    counter: WrapCounter,
}

/// Description of a zone for `doctor` and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneInfo {
    /// Zone directory name, e.g. `intel-rapl:0:1`.
    pub id: String,
    /// Its resource.
    pub resource: Resource,
    /// Its domain.
    pub domain: Domain,
    /// `max_energy_range_uj`.
    pub range_uj: u64,
    /// Maximum power used for wrap detection, watts.
    pub max_power_w: f64,
    /// Whether `max_power_w` is [`FALLBACK_MAX_POWER_W`].
    pub max_power_is_fallback: bool,
}

/// RAPL through powercap sysfs.
pub struct PowercapMeter {
    reader: Arc<dyn FileReader>,
    zones: Vec<Zone>,
    infos: Vec<ZoneInfo>,
    skipped: Vec<String>,
}

/// A zone directory name split into its parts: (`mmio`?, top-level index, subzone index).
fn parse_zone_id(id: &str) -> Option<(bool, u32, Option<u32>)> {
    let (mmio, rest) = if let Some(r) = id.strip_prefix("intel-rapl-mmio:") {
        (true, r)
    } else {
        (false, id.strip_prefix("intel-rapl:")?)
    };
    let mut parts = rest.split(':');
    let top = parts.next()?.parse().ok()?;
    let sub = match parts.next() {
        Some(s) => Some(s.parse().ok()?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((mmio, top, sub))
}

/// `package-N` or `package-N-die-M` → the resource.
fn parse_package_name(name: &str) -> Option<Resource> {
    let rest = name.strip_prefix("package-")?;
    match rest.split_once("-die-") {
        Some((p, d)) => Some(Resource::Die { package: p.parse().ok()?, die: d.parse().ok()? }),
        None => Some(Resource::Package(rest.parse().ok()?)),
    }
}

impl PowercapMeter {
    /// Finds every RAPL zone under `<sysfs_root>/class/powercap` and reads each counter once.
    pub fn open(sysfs_root: &Path, reader: Arc<dyn FileReader>) -> Result<Self, MeterError> {
        let base = sysfs_root.join("class/powercap");
        let entries = reader.list_dir(&base).map_err(|e| {
            MeterError::Unavailable(format!(
                "no powercap ({}: {e}); kernel without CONFIG_POWERCAP?",
                base.display()
            ))
        })?;
        // Zone directory: flat symlinks in /sys/class/powercap, but tolerate nesting.
        let mut ids: Vec<(bool, u32, Option<u32>, String)> = entries
            .iter()
            .filter_map(|id| parse_zone_id(id).map(|(m, t, s)| (m, t, s, id.clone())))
            .collect();
        // MSR zones first so that an MMIO duplicate of the same package is the one skipped.
        ids.sort();
        let mut zones: Vec<Zone> = Vec::new();
        let mut infos = Vec::new();
        let mut skipped = Vec::new();
        let mut top_resources: BTreeMap<(bool, u32), Resource> = BTreeMap::new();
        // Top-level zones before their subzones.
        ids.sort_by_key(|(m, t, s, _)| (s.is_some(), *m, *t, *s));
        for (mmio, top, sub, id) in ids {
            let dir = base.join(&id);
            let name = read_trimmed(&*reader, &dir.join("name"))?;
            let (resource, domain) = match (sub, name.as_str()) {
                (None, "psys") => (Resource::Platform, Domain::Psys),
                (None, n) => match parse_package_name(n) {
                    Some(r) => (r, Domain::Package),
                    None => {
                        skipped.push(format!("{id}: unknown top-level zone name {n:?}"));
                        continue;
                    }
                },
                (Some(_), n) => {
                    let domain = match n {
                        "core" => Domain::Core,
                        "uncore" => Domain::Uncore,
                        "dram" => Domain::Dram,
                        other => {
                            skipped.push(format!("{id}: unknown subzone name {other:?}"));
                            continue;
                        }
                    };
                    match top_resources.get(&(mmio, top)) {
                        Some(r) => (*r, domain),
                        None => {
                            skipped.push(format!("{id}: subzone of a zone that was not read"));
                            continue;
                        }
                    }
                }
            };
            if zones.iter().any(|z| z.resource == resource && z.domain == domain) {
                skipped.push(format!("{id}: {domain} of {resource:?} already read from another zone"));
                continue;
            }
            if sub.is_none() {
                top_resources.insert((mmio, top), resource);
            }
            let range_path = dir.join("max_energy_range_uj");
            let range_uj = read_u64(&*reader, &range_path)?;
            if range_uj == 0 {
                return Err(malformed(&range_path, "0", "a positive energy range in µJ"));
            }
            let (max_power_w, fallback) = match max_constraint_power_w(&*reader, &dir)? {
                Some(w) => (w, false),
                None => (FALLBACK_MAX_POWER_W, true),
            };
            let energy_path = dir.join("energy_uj");
            let raw = read_u64(&*reader, &energy_path)?;
            if raw > range_uj {
                return Err(malformed(
                    &energy_path,
                    &raw.to_string(),
                    "a value not above max_energy_range_uj",
                ));
            }
            infos.push(ZoneInfo {
                id: id.clone(),
                resource,
                domain,
                range_uj,
                max_power_w,
                max_power_is_fallback: fallback,
            });
            zones.push(Zone { dir, resource, domain, max_power_w, counter: WrapCounter::new(raw, range_uj) });
        }
        if zones.is_empty() {
            return Err(MeterError::Unavailable(format!("no RAPL zone under {}", base.display())));
        }
        Ok(Self { reader, zones, infos, skipped })
    }

    /// The zones read.
    pub fn zones(&self) -> &[ZoneInfo] {
        &self.infos
    }

    /// Zones found but not read, with the reason.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Reads where more than one wrap could have happened, over all zones.
    pub fn ambiguous_reads(&self) -> u64 {
        self.zones.iter().map(|z| z.counter.ambiguous_reads).sum()
    }
}

/// The largest `constraint_*_max_power_uw` of a zone, in watts; `None` when it has none.
fn max_constraint_power_w(reader: &dyn FileReader, dir: &Path) -> Result<Option<f64>, MeterError> {
    let names = reader.list_dir(dir).map_err(|source| MeterError::Io { path: dir.to_owned(), source })?;
    let mut max: Option<u64> = None;
    for n in names.iter().filter(|n| n.starts_with("constraint_") && n.ends_with("_max_power_uw")) {
        // Some zones have the file but the kernel returns ENODATA when reading it.
        match read_u64(reader, &dir.join(n)) {
            Ok(v) if v > 0 => max = Some(max.map_or(v, |m| m.max(v))),
            Ok(_) | Err(MeterError::Io { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(max.map(|uw| uw as f64 / 1e6))
}

impl EnergyMeter for PowercapMeter {
    fn source(&self) -> MeterSource {
        MeterSource::RaplPowercap
    }

    fn describe(&self) -> String {
        let zones: Vec<String> = self.infos.iter().map(|z| format!("{} ({})", z.id, z.domain)).collect();
        format!("powercap RAPL zones: {}", zones.join(", "))
    }

    fn read(&mut self, tick: &Tick<'_>) -> Result<Vec<Measurement>, MeterError> {
        let mut out = Vec::with_capacity(self.zones.len());
        for zone in &mut self.zones {
            let path = zone.dir.join("energy_uj");
            let raw = read_u64(&*self.reader, &path)?;
            if raw > zone.counter.range_uj {
                return Err(malformed(&path, &raw.to_string(), "a value not above max_energy_range_uj"));
            }
            zone.counter.update(raw, tick.interval_s, zone.max_power_w);
            out.push(Measurement {
                resource: zone.resource,
                domain: zone.domain,
                joules: zone.counter.total_uj() / 1e6,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::energy::FsReader;
    use crate::energy::testing::{FaultyReader, write};
    use crate::usage::IntervalUsage;

    fn tick(usage: &IntervalUsage, s: f64) -> Tick<'_> {
        Tick { interval_s: s, usage }
    }

    fn zone(root: &Path, id: &str, name: &str, energy: u64, range: u64, max_uw: Option<u64>) {
        let d = format!("class/powercap/{id}");
        write(root, &format!("{d}/name"), &format!("{name}\n"));
        write(root, &format!("{d}/energy_uj"), &format!("{energy}\n"));
        write(root, &format!("{d}/max_energy_range_uj"), &format!("{range}\n"));
        write(root, &format!("{d}/constraint_0_name"), "long_term\n");
        write(root, &format!("{d}/constraint_0_power_limit_uw"), "65000000\n");
        if let Some(uw) = max_uw {
            write(root, &format!("{d}/constraint_0_max_power_uw"), &format!("{uw}\n"));
        }
    }

    fn set_energy(root: &Path, id: &str, energy: u64) {
        write(root, &format!("class/powercap/{id}/energy_uj"), &format!("{energy}\n"));
    }

    fn joules(m: &[Measurement], r: Resource, d: Domain) -> f64 {
        m.iter().find(|x| x.resource == r && x.domain == d).unwrap().joules
    }

    #[test]
    fn wrap_counter_steady_single_and_double_wrap() {
        // Range 60 J, max power 100 W.
        let mut c = WrapCounter::new(0, 60_000_000);
        assert_eq!(c.update(50_000_000, 1.0, 100.0), 50e6); // steady, 50 W
        assert_eq!(c.update(40_000_000, 1.0, 100.0), 50e6); // one wrap: 10 J + 40 J
        assert_eq!(c.ambiguous_reads, 0);
        // 2.6 s at 50 W = 130 J = two wraps + 10 J: raw 40 J → 50 J.
        assert_eq!(c.update(50_000_000, 2.6, 100.0), 130e6);
        assert_eq!(c.ambiguous_reads, 1);
        assert_eq!(c.extra_wraps, 2);
        assert_eq!(c.total_uj(), 230e6);
    }

    #[test]
    fn wrap_counter_first_read_ambiguous_counts_no_extra() {
        let mut c = WrapCounter::new(0, 1_000_000);
        assert_eq!(c.update(500_000, 10.0, 100.0), 500_000.0);
        assert_eq!(c.ambiguous_reads, 1);
        assert_eq!(c.extra_wraps, 0);
    }

    #[test]
    fn steady_counters_two_sockets_and_subzones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let range = 262_143_328_850;
        zone(root, "intel-rapl:0", "package-0", 1_000_000, range, Some(200_000_000));
        zone(root, "intel-rapl:0:0", "core", 500_000, range, None);
        zone(root, "intel-rapl:0:1", "dram", 100_000, range, None);
        zone(root, "intel-rapl:1", "package-1", 7_000_000, range, Some(200_000_000));
        zone(root, "intel-rapl:1:0", "core", 0, range, None);
        zone(root, "intel-rapl:2", "psys", 0, range, None);
        write(root, "class/powercap/intel-rapl/enabled", "1\n"); // control type dir: ignored
        let mut m = PowercapMeter::open(root, Arc::new(FsReader)).unwrap();
        assert_eq!(m.zones().len(), 6);
        assert!(m.zones().iter().find(|z| z.id == "intel-rapl:0:1").unwrap().max_power_is_fallback);
        assert_eq!(m.zones()[0].max_power_w, 200.0);
        set_energy(root, "intel-rapl:0", 11_000_000);
        set_energy(root, "intel-rapl:0:0", 6_500_000);
        set_energy(root, "intel-rapl:0:1", 2_100_000);
        set_energy(root, "intel-rapl:1", 27_000_000);
        set_energy(root, "intel-rapl:1:0", 15_000_000);
        set_energy(root, "intel-rapl:2", 40_000_000);
        let u = IntervalUsage::default();
        let r = m.read(&tick(&u, 1.0)).unwrap();
        assert_eq!(joules(&r, Resource::Package(0), Domain::Package), 10.0);
        assert_eq!(joules(&r, Resource::Package(0), Domain::Core), 6.0);
        assert_eq!(joules(&r, Resource::Package(0), Domain::Dram), 2.0);
        assert_eq!(joules(&r, Resource::Package(1), Domain::Package), 20.0);
        assert_eq!(joules(&r, Resource::Package(1), Domain::Core), 15.0);
        assert_eq!(joules(&r, Resource::Platform, Domain::Psys), 40.0);
        // Cumulative: a second read adds up.
        set_energy(root, "intel-rapl:0", 12_000_000);
        let r = m.read(&tick(&u, 1.0)).unwrap();
        assert_eq!(joules(&r, Resource::Package(0), Domain::Package), 11.0);
    }

    #[test]
    fn wrap_and_two_wraps_through_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        zone(root, "intel-rapl:0", "package-0", 50_000_000, 60_000_000, Some(100_000_000));
        let mut m = PowercapMeter::open(root, Arc::new(FsReader)).unwrap();
        let u = IntervalUsage::default();
        set_energy(root, "intel-rapl:0", 40_000_000); // wrapped: 10 + 40 = 50 J in 1 s
        let r = m.read(&tick(&u, 1.0)).unwrap();
        assert_eq!(joules(&r, Resource::Package(0), Domain::Package), 50.0);
        set_energy(root, "intel-rapl:0", 50_000_000); // 2.6 s at 50 W: two wraps + 10 J
        let r = m.read(&tick(&u, 2.6)).unwrap();
        assert_eq!(joules(&r, Resource::Package(0), Domain::Package), 180.0);
        assert_eq!(m.ambiguous_reads(), 1);
    }

    #[test]
    fn mmio_duplicate_package_read_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        zone(root, "intel-rapl:0", "package-0", 0, 1_000_000_000, None);
        zone(root, "intel-rapl-mmio:0", "package-0", 0, 1_000_000_000, None);
        zone(root, "intel-rapl:0:0", "core", 0, 1_000_000_000, None);
        let m = PowercapMeter::open(root, Arc::new(FsReader)).unwrap();
        let ids: Vec<&str> = m.zones().iter().map(|z| z.id.as_str()).collect();
        assert_eq!(ids, ["intel-rapl:0", "intel-rapl:0:0"]);
        assert!(m.skipped()[0].starts_with("intel-rapl-mmio:0"), "{:?}", m.skipped());
    }

    #[test]
    fn multi_die_packages_are_separate_resources() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        zone(root, "intel-rapl:0", "package-0-die-0", 0, 1_000_000_000, None);
        zone(root, "intel-rapl:1", "package-0-die-1", 0, 1_000_000_000, None);
        let m = PowercapMeter::open(root, Arc::new(FsReader)).unwrap();
        assert_eq!(m.zones()[1].resource, Resource::Die { package: 0, die: 1 });
    }

    #[test]
    fn permission_denied_says_root_is_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        zone(root, "intel-rapl:0", "package-0", 0, 1_000_000_000, None);
        let reader = FaultyReader::default();
        reader.fail(root.join("class/powercap/intel-rapl:0/energy_uj"), io::ErrorKind::PermissionDenied);
        let err = PowercapMeter::open(root, Arc::new(reader)).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, MeterError::PermissionDenied { .. }));
        assert!(
            msg.contains("intel-rapl:0/energy_uj") && msg.contains("root") && msg.contains("5.10"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_contents_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        zone(root, "intel-rapl:0", "package-0", 0, 1_000_000_000, None);
        set_energy(root, "intel-rapl:0", 0);
        write(root, "class/powercap/intel-rapl:0/energy_uj", "12abc\n");
        let msg = PowercapMeter::open(root, Arc::new(FsReader)).err().unwrap().to_string();
        assert!(msg.contains("energy_uj") && msg.contains("\"12abc\"") && msg.contains("integer"), "{msg}");

        write(root, "class/powercap/intel-rapl:0/energy_uj", "5\n");
        let mut m = PowercapMeter::open(root, Arc::new(FsReader)).unwrap();
        write(root, "class/powercap/intel-rapl:0/energy_uj", "");
        let u = IntervalUsage::default();
        let msg = m.read(&tick(&u, 1.0)).err().unwrap().to_string();
        assert!(msg.contains("unexpected contents \"\""), "{msg}");
        write(root, "class/powercap/intel-rapl:0/energy_uj", "2000000000\n");
        let msg = m.read(&tick(&u, 1.0)).err().unwrap().to_string();
        assert!(msg.contains("max_energy_range_uj"), "{msg}");

        write(root, "class/powercap/intel-rapl:0/max_energy_range_uj", "0\n");
        let msg = PowercapMeter::open(root, Arc::new(FsReader)).err().unwrap().to_string();
        assert!(msg.contains("positive energy range"), "{msg}");
    }

    #[test]
    fn no_powercap_is_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        let err = PowercapMeter::open(tmp.path(), Arc::new(FsReader)).err().unwrap();
        assert!(matches!(err, MeterError::Unavailable(_)), "{err}");
        write(tmp.path(), "class/powercap/dtpm/name", "dtpm\n");
        let err = PowercapMeter::open(tmp.path(), Arc::new(FsReader)).err().unwrap();
        assert!(err.to_string().contains("no RAPL zone"), "{err}");
    }
}
