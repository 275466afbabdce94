//! Turns each interval's IT energy per consumer into grams of CO2e, with the intensity valid
//! during that interval, and keeps the run's totals.
//!
//! operational g = IT J × PUE ÷ 3.6e6 J/kWh × intensity gCO2e/kWh
//! embodied g    = machine embodied g/s × interval s × the consumer's static share

use std::time::{SystemTime, UNIX_EPOCH};

use super::embodied::EmbodiedModel;
use super::intensity::{IntensityReading, IntensityResolver, SourceKind};
use super::pue::Pue;
use super::{CarbonInfo, Emissions};

/// Joules per kilowatt-hour.
pub const J_PER_KWH: f64 = 3.6e6;

/// Operational grams for an IT energy at a PUE and an intensity.
pub fn operational_g(it_energy_j: f64, pue: f64, g_per_kwh: f64) -> f64 {
    it_energy_j * pue / J_PER_KWH * g_per_kwh
}

/// One consumer in one interval (a process, a tree, or the kernel / idle bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConsumerEnergy {
    /// IT energy (all domains) in the interval, joules.
    pub it_energy_j: f64,
    /// Its share of the machine's static energy in the interval (0..=1); the shares of all
    /// consumers including the buckets add up to 1. Embodied emissions follow this share.
    pub static_share: f64,
}

/// Static shares from each consumer's static energy: `static_j / Σ static_j` (all zero
/// when no static energy was attributed).
pub fn shares_from_static(static_j: &[f64]) -> Vec<f64> {
    let total: f64 = static_j.iter().sum();
    static_j.iter().map(|s| if total > 0.0 { s / total } else { 0.0 }).collect()
}

/// Result of one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalCarbon {
    /// The intensity used for this interval.
    pub intensity: IntensityReading,
    /// Emissions of each consumer, in the order given.
    pub consumers: Vec<Emissions>,
    /// Emissions of all consumers together.
    pub total: Emissions,
}

/// Run totals so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CarbonTotals {
    pub it_energy_j: f64,
    pub facility_energy_j: f64,
    pub emissions: Emissions,
    pub duration_s: f64,
}

/// The per-interval carbon accountant of a session or run.
#[derive(Debug)]
pub struct CarbonAccountant {
    resolver: IntensityResolver,
    pue: Pue,
    embodied: Option<EmbodiedModel>,
    totals: CarbonTotals,
    /// Sources used so far with the facility energy they covered.
    used: Vec<(IntensityReading, f64)>,
    last: Option<IntensityReading>,
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

impl CarbonAccountant {
    pub fn new(resolver: IntensityResolver, pue: Pue, embodied: Option<EmbodiedModel>) -> Self {
        Self { resolver, pue, embodied, totals: CarbonTotals::default(), used: Vec::new(), last: None }
    }

    pub fn pue(&self) -> &Pue {
        &self.pue
    }

    pub fn embodied(&self) -> Option<&EmbodiedModel> {
        self.embodied.as_ref()
    }

    /// Accounts one interval ending at `end` and lasting `interval_s`.
    pub fn account(
        &mut self,
        end: SystemTime,
        interval_s: f64,
        consumers: &[ConsumerEnergy],
    ) -> IntervalCarbon {
        let end_s = unix_seconds(end);
        let intensity = self.resolver.resolve(end_s - interval_s.max(0.0), end_s);
        let embodied_g = self.embodied.as_ref().map_or(0.0, |m| m.grams_for(interval_s));
        let mut total = Emissions::default();
        let mut it_j = 0.0;
        let per: Vec<Emissions> = consumers
            .iter()
            .map(|c| {
                let e = Emissions::new(
                    operational_g(c.it_energy_j, self.pue.value, intensity.g_per_kwh),
                    embodied_g * c.static_share,
                );
                total = total.add(&e);
                it_j += c.it_energy_j;
                e
            })
            .collect();
        let facility = self.pue.facility(it_j);
        self.totals.it_energy_j += it_j;
        self.totals.facility_energy_j += facility;
        self.totals.emissions = self.totals.emissions.add(&total);
        self.totals.duration_s += interval_s.max(0.0);
        match self.used.iter_mut().find(|(r, _)| same_source(r, &intensity)) {
            Some((_, e)) => *e += facility,
            None => self.used.push((intensity.clone(), facility)),
        }
        self.last = Some(intensity.clone());
        IntervalCarbon { intensity, consumers: per, total }
    }

    /// Totals of the run so far.
    pub fn totals(&self) -> &CarbonTotals {
        &self.totals
    }

    /// Fallbacks and loud notices so far (print them; they are also in [`CarbonInfo::warnings`]).
    pub fn warnings(&self) -> &[String] {
        self.resolver.warnings()
    }

    /// What the run's carbon figures rest on. `intensity` is the effective (energy-weighted)
    /// intensity of the run: operational grams ÷ facility kWh; before any energy, the last
    /// intensity resolved.
    pub fn info(&self) -> CarbonInfo {
        let fallback = || {
            self.last.clone().unwrap_or_else(|| {
                self.resolver.table_entry().map_or_else(
                    || super::intensity::table_reading(super::tables::world()),
                    super::intensity::table_reading,
                )
            })
        };
        let facility_kwh = self.totals.facility_energy_j / J_PER_KWH;
        let intensity = if facility_kwh > 0.0 {
            self.totals.emissions.operational / facility_kwh
        } else {
            fallback().g_per_kwh
        };
        let used: Vec<&IntensityReading> =
            if self.used.is_empty() { Vec::new() } else { self.used.iter().map(|(r, _)| r).collect() };
        let (source, year, location, kind) = match used.as_slice() {
            [] => {
                let r = fallback();
                (r.source, r.year, r.location, r.kind)
            }
            [one] => (one.source.clone(), one.year, one.location.clone(), one.kind),
            many => {
                let share = |r: &IntensityReading| {
                    let e = self.used.iter().find(|(u, _)| same_source(u, r)).map_or(0.0, |u| u.1);
                    if self.totals.facility_energy_j > 0.0 {
                        100.0 * e / self.totals.facility_energy_j
                    } else {
                        0.0
                    }
                };
                let source = many
                    .iter()
                    .map(|r| format!("{} ({:.0}% of energy)", r.source, share(r)))
                    .collect::<Vec<_>>()
                    .join("; ");
                let years: Vec<u16> = many.iter().filter_map(|r| r.year).collect();
                let year = years.iter().max().copied();
                (source, year, many[0].location.clone(), many[0].kind)
            }
        };
        CarbonInfo {
            intensity,
            unit: "gCO2e/kWh".to_string(),
            source,
            year,
            pue: self.pue.value,
            pue_source: self.pue.source.clone(),
            location,
            world_average: kind == SourceKind::World,
            warnings: self.resolver.warnings().to_vec(),
        }
    }
}

fn same_source(a: &IntensityReading, b: &IntensityReading) -> bool {
    a.kind == b.kind && a.source == b.source && a.location == b.location
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carbon::embodied::{EmbodiedOverrides, HostHardware};
    use crate::carbon::intensity::TimeSeries;
    use std::time::Duration;

    // 2024-05-01T00:00:00Z
    const T0: u64 = 1_714_521_600;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn operational_by_hand() {
        // 3.6 MJ = 1 kWh; × 1.5 = 1.5 kWh facility; × 56 g/kWh = 84 g.
        assert_eq!(operational_g(3.6e6, 1.5, 56.0), 84.0);
        assert_eq!(shares_from_static(&[1.0, 3.0, 0.0]), vec![0.25, 0.75, 0.0]);
        assert_eq!(shares_from_static(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn intensity_change_mid_run_is_computed_per_interval() {
        // 100 g/kWh until 01:00, then 300 g/kWh.
        let series =
            TimeSeries::parse("2024-05-01T00:00:00Z,100\n2024-05-01T01:00:00Z,300\n", "s.csv").unwrap();
        let resolver = IntensityResolver::new(None, Some(series), None, None);
        let mut acc = CarbonAccountant::new(resolver, Pue::new(1.5, "--pue").unwrap(), None);
        let c = |j| [ConsumerEnergy { it_energy_j: j, static_share: 1.0 }];
        // Interval 1: 00:59:50–01:00:00, 72 kJ at 100 → 72e3 × 1.5 / 3.6e6 × 100 = 3 g.
        let i1 = acc.account(at(T0 + 3600), 10.0, &c(72_000.0));
        assert_eq!(i1.intensity.g_per_kwh, 100.0);
        assert!(close(i1.total.operational, 3.0));
        // Interval 2: 01:00:00–01:00:10, 72 kJ at 300 → 9 g.
        let i2 = acc.account(at(T0 + 3610), 10.0, &c(72_000.0));
        assert!(close(i2.consumers[0].operational, 9.0));
        // Interval 3 straddles the change: 01:00:00 ± 5 s → mean 200 → 6 g.
        let i3 = acc.account(at(T0 + 3605), 10.0, &c(72_000.0));
        assert!(close(i3.intensity.g_per_kwh, 200.0));
        assert!(close(i3.total.operational, 6.0));
        let t = acc.totals();
        assert!(close(t.emissions.operational, 18.0));
        assert!(close(t.it_energy_j, 216_000.0) && close(t.facility_energy_j, 324_000.0));
        // Effective intensity: 18 g / 0.09 kWh = 200 g/kWh.
        let info = acc.info();
        assert!(close(info.intensity, 200.0), "{}", info.intensity);
        assert_eq!(info.unit, "gCO2e/kWh");
        assert_eq!((info.pue, info.pue_source.as_str()), (1.5, "--pue"));
        assert_eq!(info.source, "user time series s.csv");
        assert_eq!(info.year, Some(2024));
    }

    #[test]
    fn embodied_follows_static_shares_and_totals_add_up() {
        let fra = crate::carbon::tables::lookup_country("FRA").unwrap();
        let resolver = IntensityResolver::new(None, None, None, Some(fra));
        let host = HostHardware { ram_bytes: 16 << 30, sockets: 1, gpus: 0 };
        let model = EmbodiedModel::new(&host, &EmbodiedOverrides::default()).unwrap();
        let mut acc = CarbonAccountant::new(resolver, Pue::default(), Some(model));
        let consumers = [
            ConsumerEnergy { it_energy_j: 360.0, static_share: 0.25 },
            ConsumerEnergy { it_energy_j: 1080.0, static_share: 0.75 },
        ];
        let r = acc.account(at(T0), 3600.0, &consumers);
        // Embodied: 1,000,000 g over 126,144,000 s × 3600 s = 28.538812785 g; split 1:3.
        let machine = 1_000_000.0 / 126_144_000.0 * 3600.0;
        assert!(close(r.consumers[0].embodied, machine * 0.25));
        assert!(close(r.consumers[1].embodied, machine * 0.75));
        // Operational: 360 J × 1.58 / 3.6e6 × 56.039 = 0.008854162 g.
        assert!(close(r.consumers[0].operational, 360.0 * 1.58 / 3.6e6 * 56.039));
        assert!(close(r.total.total, r.consumers[0].total + r.consumers[1].total));
        assert!(close(r.total.total, r.total.operational + r.total.embodied));
        let info = acc.info();
        assert_eq!(info.location.as_deref(), Some("FRA"));
        assert_eq!(info.year, Some(2023));
        assert!(close(info.intensity, 56.039));
        assert!(!info.world_average);
    }

    #[test]
    fn mixed_sources_are_all_named() {
        let series = TimeSeries::parse("2024-05-01T00:00:00Z,100\n", "s.csv").unwrap();
        let fra = crate::carbon::tables::lookup_country("FRA").unwrap();
        let resolver = IntensityResolver::new(None, Some(series), None, Some(fra));
        let mut acc = CarbonAccountant::new(resolver, Pue::default(), None);
        let c = [ConsumerEnergy { it_energy_j: 1000.0, static_share: 1.0 }];
        acc.account(at(T0 + 60), 60.0, &c); // covered by the series (1 h validity)
        acc.account(at(T0 + 7200), 60.0, &c); // not covered: table
        acc.account(at(T0 + 7260), 60.0, &c);
        let info = acc.info();
        assert!(info.source.contains("user time series s.csv (33% of energy)"), "{}", info.source);
        assert!(info.source.contains("Our World in Data"), "{}", info.source);
        assert!(info.warnings[0].contains("does not cover"));
        assert!(close(info.intensity, (100.0 + 2.0 * 56.039) / 3.0));
    }
}
