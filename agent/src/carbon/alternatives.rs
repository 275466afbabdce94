//! "Choose a low-carbon data centre": what the same run would have emitted in the
//! lowest-intensity locations of the offline tables.

use super::accountant::operational_g;
use super::tables::{self, LocationKind};

/// Which locations to compare against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AlternativeScope {
    /// Cloud provider regions (each at its provider's PUE where the table has it).
    #[default]
    CloudRegions,
    /// Countries and sub-national grids (at the run's PUE).
    Grids,
    /// Everything.
    All,
}

/// One alternative location and the run's operational emissions there.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alternative {
    pub location: String,
    pub name: String,
    /// gCO2e/kWh.
    pub intensity: f64,
    pub year: Option<u16>,
    pub source: String,
    pub pue: f64,
    pub pue_source: String,
    /// Operational grams of the same IT energy there.
    pub operational_g: f64,
}

/// The `n` lowest-emission alternatives for a run's IT energy, lowest first. Cloud regions
/// use their provider's PUE (Green Algorithms defaults) where known, else `run_pue`.
pub fn lowest_carbon_alternatives(
    it_energy_j: f64,
    run_pue: f64,
    n: usize,
    scope: AlternativeScope,
) -> Vec<Alternative> {
    let mut all: Vec<Alternative> = tables::grid()
        .iter()
        .filter(|e| match scope {
            AlternativeScope::CloudRegions => e.kind == LocationKind::Cloud,
            AlternativeScope::Grids => {
                matches!(e.kind, LocationKind::Country | LocationKind::Subnational)
            }
            AlternativeScope::All => e.kind != LocationKind::World,
        })
        .map(|e| {
            let (pue, pue_source) = match e.provider().and_then(tables::provider_pue) {
                Some(p) => {
                    (p.pue, format!("{} average, Green Algorithms defaults ({})", p.provider, p.source))
                }
                None => (run_pue, "as the run".to_string()),
            };
            Alternative {
                location: e.code.clone(),
                name: e.name.clone(),
                intensity: e.g_per_kwh,
                year: e.year,
                source: e.source(),
                pue,
                pue_source,
                operational_g: operational_g(it_energy_j, pue, e.g_per_kwh),
            }
        })
        .collect();
    all.sort_by(|a, b| a.operational_g.total_cmp(&b.operational_g).then_with(|| a.location.cmp(&b.location)));
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_first_with_provider_pue() {
        let alts = lowest_carbon_alternatives(3.6e6, 1.58, 3, AlternativeScope::CloudRegions);
        assert_eq!(alts.len(), 3);
        assert!(alts.windows(2).all(|w| w[0].operational_g <= w[1].operational_g));
        let best = &alts[0];
        // Every cloud region has a provider PUE ≤ 1.2 in the table, or the run's.
        assert!(best.pue <= 1.58);
        assert!((best.operational_g - best.intensity * best.pue).abs() < 1e-9, "1 kWh IT");
        // No cloud region in the tables is cleaner than the best one.
        let min = tables::grid()
            .iter()
            .filter(|e| e.kind == LocationKind::Cloud)
            .map(|e| e.g_per_kwh * e.provider().and_then(tables::provider_pue).map_or(1.58, |p| p.pue))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(best.operational_g, min);
    }

    #[test]
    fn grids_use_the_run_pue() {
        let alts = lowest_carbon_alternatives(7.2e6, 1.5, 2, AlternativeScope::Grids);
        assert!(alts.iter().all(|a| a.pue == 1.5 && a.pue_source == "as the run"));
        assert!((alts[0].operational_g - 2.0 * 1.5 * alts[0].intensity).abs() < 1e-9);
    }
}
