//! Carbon: energy → grams of CO2e per process tree (operational and embodied), with the
//! intensity and PUE used and their sources.
//!
//! Pipeline position: meters → attribution (joules per consumer per interval) → **carbon**
//! ([`CarbonAccountant::account`] per interval) → outputs ([`Emissions`], [`CarbonInfo`],
//! [`codecarbon_csv`], [`crate::report`]).

pub mod accountant;
pub mod alternatives;
pub mod background;
pub mod codecarbon_csv;
pub mod embodied;
pub mod intensity;
pub mod provider;
pub mod pue;
pub mod tables;

use std::path::PathBuf;

pub use accountant::{CarbonAccountant, CarbonTotals, ConsumerEnergy, IntervalCarbon, shares_from_static};
pub use alternatives::{Alternative, AlternativeScope, lowest_carbon_alternatives};
pub use embodied::{EmbodiedModel, EmbodiedOverrides, HostHardware};
pub use intensity::{IntensityReading, IntensityResolver, SourceKind, TimeSeries};
pub use pue::Pue;

use crate::config::{CarbonConfig, ProviderConfig};
use provider::{ELECTRICITY_MAPS_TOKEN_ENV, ElectricityMaps, ElectricityMapsSettings, LiveIntensity};

/// Grams of CO2e (the JSON `emissions_g` object).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Emissions {
    pub operational: f64,
    pub embodied: f64,
    pub total: f64,
}

impl Emissions {
    pub fn new(operational: f64, embodied: f64) -> Self {
        Self { operational, embodied, total: operational + embodied }
    }

    /// Sum of two (for roll-ups of processes into trees, users, ...).
    pub fn add(&self, other: &Emissions) -> Emissions {
        Emissions::new(self.operational + other.operational, self.embodied + other.embodied)
    }
}

impl std::iter::Sum for Emissions {
    fn sum<I: Iterator<Item = Emissions>>(iter: I) -> Self {
        iter.fold(Emissions::default(), |a, b| a.add(&b))
    }
}

/// What the carbon figures rest on (the JSON `carbon` object).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CarbonInfo {
    /// gCO2e/kWh; over a run, the energy-weighted mean of the intensities used.
    pub intensity: f64,
    /// Always "gCO2e/kWh".
    pub unit: String,
    pub source: String,
    pub year: Option<u16>,
    pub pue: f64,
    pub pue_source: String,
    /// Location code (`FRA`, `aws:eu-west-3`, an Electricity Maps zone, `WORLD`).
    pub location: Option<String>,
    /// True when the world average was used: figures may be far off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub world_average: bool,
    /// Fallbacks taken (provider down, series not covering the run, world average).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A carbon setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CarbonSetupError {
    #[error("{0}")]
    Location(#[from] tables::UnknownLocation),
    #[error("{0}")]
    Series(#[from] intensity::SeriesError),
    #[error("{key} = {value}: {expected}")]
    Value { key: &'static str, value: String, expected: &'static str },
}

/// Carbon settings after merging config and flags.
#[derive(Clone, Debug, PartialEq)]
pub struct CarbonOptions {
    pub pue: Pue,
    pub country: Option<String>,
    pub region: Option<String>,
    pub intensity: Option<f64>,
    pub intensity_csv: Option<PathBuf>,
    pub provider: ProviderConfig,
    pub live: bool,
    pub embodied: EmbodiedOverrides,
}

impl CarbonOptions {
    /// The options the `[carbon]` keys describe (the flags already laid over the file's, see
    /// [`crate::config::Config::layered`]); `pue_source` says where `pue` comes from (`--pue`,
    /// `config FILE`).
    pub fn from_keys(keys: &CarbonConfig, pue_source: &str) -> Result<Self, CarbonSetupError> {
        let pue = match keys.pue {
            Some(v) => Pue::new(v, pue_source),
            None => Ok(Pue::default()),
        }
        .map_err(|e| CarbonSetupError::Value {
            key: "pue",
            value: e.0.to_string(),
            expected: "a number ≥ 1.0 (facility energy / IT energy)",
        })?;
        if let Some(v) = keys.intensity
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(CarbonSetupError::Value {
                key: "intensity",
                value: v.to_string(),
                expected: "gCO2e/kWh, a number ≥ 0",
            });
        }
        Ok(Self {
            pue,
            country: keys.country.clone(),
            region: keys.region.clone(),
            intensity: keys.intensity,
            intensity_csv: keys.intensity_csv.clone(),
            provider: keys.provider.clone(),
            live: keys.provider.enabled != Some(false),
            embodied: keys.embodied.clone(),
        })
    }

    /// The offline table entry selected by `country` / `region`.
    pub fn table_entry(&self) -> Result<Option<&'static tables::GridEntry>, tables::UnknownLocation> {
        match (&self.region, &self.country) {
            (Some(r), _) => tables::lookup_region(r).map(Some),
            (None, Some(c)) => tables::lookup_country(c).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Electricity Maps zone to ask for: `provider.zone`, else the alpha-2 code of the country
    /// (of the cloud region), else the sub-national code (SE-SE3 is also an Electricity Maps zone).
    pub fn provider_zone(&self, entry: Option<&tables::GridEntry>) -> Option<String> {
        if let Some(z) = &self.provider.zone {
            return Some(z.clone());
        }
        let entry = entry?;
        match entry.kind {
            tables::LocationKind::Country => Some(entry.alpha2.clone()).filter(|s| !s.is_empty()),
            tables::LocationKind::Subnational if entry.source_id == "nordic" => Some(entry.code.clone()),
            _ => tables::lookup_country(&entry.country)
                .ok()
                .map(|c| c.alpha2.clone())
                .filter(|s| !s.is_empty()),
        }
    }

    /// Builds the intensity resolver. `token` is the Electricity Maps token (normally
    /// [`token_from_env`]); the live provider is used when a token and a zone are known.
    pub fn resolver(&self, token: Option<String>) -> Result<IntensityResolver, CarbonSetupError> {
        let entry = self.table_entry()?;
        let series = self.intensity_csv.as_deref().map(TimeSeries::load).transpose()?;
        let provider: Option<(Box<dyn LiveIntensity>, String)> =
            match (self.live, token, self.provider_zone(entry)) {
                (true, Some(token), Some(zone)) if self.intensity.is_none() => {
                    let mut s = ElectricityMapsSettings::new(token);
                    if let Some(u) = &self.provider.base_url {
                        s.base_url = u.clone();
                    }
                    if let Some(t) = self.provider.timeout_s {
                        s.timeout = std::time::Duration::from_secs_f64(t);
                    }
                    if let Some(t) = self.provider.cache_s {
                        s.cache_ttl = std::time::Duration::from_secs_f64(t);
                    }
                    // Asked on a thread of its own: the interval never waits for the network.
                    let first_wait = s.timeout + std::time::Duration::from_millis(500);
                    let live = background::BackgroundIntensity::spawn(
                        Box::new(ElectricityMaps::new(s)),
                        zone.clone(),
                        background::REFRESH,
                        first_wait,
                    );
                    Some((Box::new(live), zone))
                }
                _ => None,
            };
        Ok(IntensityResolver::new(self.intensity, series, provider, entry))
    }

    /// Builds the accountant for a host.
    pub fn accountant(
        &self,
        host: &HostHardware,
        token: Option<String>,
    ) -> Result<CarbonAccountant, CarbonSetupError> {
        Ok(CarbonAccountant::new(
            self.resolver(token)?,
            self.pue.clone(),
            EmbodiedModel::new(host, &self.embodied),
        ))
    }
}

/// The Electricity Maps token from the environment (`ELECTRICITYMAPS_TOKEN`), if set and non-empty.
pub fn token_from_env() -> Option<String> {
    std::env::var(ELECTRICITY_MAPS_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty())
}

/// The table's locations as text, one per line (`code  g/kWh  year  name  [source]`), optionally
/// only those whose code or name contains `filter` (case-insensitive): for a `locations` command.
pub fn locations_listing(filter: Option<&str>) -> String {
    let f = filter.map(|s| s.to_ascii_lowercase());
    let mut out = String::from("code                          gCO2e/kWh  year  name  [source]\n");
    for e in tables::grid() {
        if let Some(f) = &f
            && !e.code.to_ascii_lowercase().contains(f.as_str())
            && !e.name.to_ascii_lowercase().contains(f.as_str())
            && !e.alpha2.eq_ignore_ascii_case(f)
        {
            continue;
        }
        let code = if e.alpha2.is_empty() { e.code.clone() } else { format!("{} ({})", e.code, e.alpha2) };
        out.push_str(&format!(
            "{code:<30}{:>9.1}  {:>4}  {}  [{}]\n",
            e.g_per_kwh,
            e.year.map_or("-".to_string(), |y| y.to_string()),
            e.name,
            e.source_id
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emissions_serialize_with_the_schema_names() {
        let e = Emissions::new(1.5, 0.25);
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"operational":1.5,"embodied":0.25,"total":1.75}"#);
        let sum: Emissions = [e, e].into_iter().sum();
        assert_eq!(sum, Emissions::new(3.0, 0.5));
    }

    #[test]
    fn options_follow_the_keys() {
        let keys = CarbonConfig {
            pue: Some(1.2),
            country: Some("DEU".into()),
            intensity_csv: Some("/x.csv".into()),
            ..Default::default()
        };
        let o = CarbonOptions::from_keys(&keys, "config c.toml").unwrap();
        assert_eq!((o.pue.value, o.pue.source.as_str()), (1.2, "config c.toml"));
        assert_eq!(o.country.as_deref(), Some("DEU"));
        assert!(o.live && o.embodied.enabled.is_none());
        let keys = CarbonConfig { region: Some("aws:eu-west-3".into()), ..Default::default() };
        let o = CarbonOptions::from_keys(&keys, "--pue").unwrap();
        assert_eq!((o.pue.value, o.pue.source.as_str()), (pue::DEFAULT_PUE, pue::DEFAULT_PUE_SOURCE));
        assert_eq!(o.table_entry().unwrap().unwrap().g_per_kwh, 52.0);
        assert_eq!(o.provider_zone(o.table_entry().unwrap()), Some("FR".into()));
        let bad = CarbonConfig { pue: Some(0.5), ..Default::default() };
        let e = CarbonOptions::from_keys(&bad, "--pue").unwrap_err().to_string();
        assert_eq!(e, "pue = 0.5: a number ≥ 1.0 (facility energy / IT energy)");
    }

    #[test]
    fn unknown_location_fails_setup() {
        let keys = CarbonConfig { country: Some("ZZZ".into()), ..Default::default() };
        let o = CarbonOptions::from_keys(&keys, "-").unwrap();
        let e = o.resolver(None).unwrap_err().to_string();
        assert!(e.starts_with("unknown country \"ZZZ\""), "{e}");
    }

    fn live_accountant(responses: Vec<Option<(u16, &'static str)>>) -> CarbonAccountant {
        let (base, _) = provider::tests::serve(responses);
        let config = CarbonConfig {
            country: Some("FRA".into()),
            provider: ProviderConfig { base_url: Some(base), timeout_s: Some(0.5), ..Default::default() },
            ..Default::default()
        };
        let o = CarbonOptions::from_keys(&config, "config c.toml").unwrap();
        o.accountant(&HostHardware::default(), Some("tok".into())).unwrap()
    }

    #[test]
    fn live_provider_answers_for_the_country_zone() {
        let mut acc = live_accountant(vec![Some((
            200,
            r#"{"zone":"FR","carbonIntensity":20,"datetime":"2026-11-28T23:00:00Z"}"#,
        ))]);
        let one = [ConsumerEnergy { it_energy_j: 3.6e6, static_share: 1.0 }];
        let r = acc.account(std::time::SystemTime::now(), 1.0, &one);
        assert_eq!((r.intensity.kind, r.intensity.g_per_kwh), (SourceKind::Provider, 20.0));
        let info = acc.info();
        assert_eq!(info.source, "Electricity Maps live, zone FR");
        assert_eq!((info.location.as_deref(), info.year), (Some("FR"), Some(2026)));
        assert!((r.total.operational - 1.58 * 20.0).abs() < 1e-9);
    }

    #[test]
    fn live_provider_failures_fall_back_to_tables_and_say_so() {
        for (response, said) in [
            (Some((401, "{}")), "Electricity Maps unavailable (HTTP 401"),
            (Some((200, "not json")), "Electricity Maps unavailable (bad answer"),
            (None, "Electricity Maps unavailable (no answer within"),
        ] {
            let mut acc = live_accountant(vec![response]);
            let one = [ConsumerEnergy { it_energy_j: 1000.0, static_share: 1.0 }];
            let r = acc.account(std::time::SystemTime::now(), 1.0, &one);
            assert_eq!((r.intensity.kind, r.intensity.g_per_kwh), (SourceKind::Table, 56.039));
            let json = serde_json::to_value(acc.info()).unwrap();
            let warning = json["warnings"][0].as_str().unwrap();
            assert!(
                warning.starts_with(said) && warning.ends_with("falling back to the offline tables"),
                "{warning}"
            );
            assert_eq!(json["location"], "FRA");
            assert_eq!(json["year"], 2023);
        }
    }

    #[test]
    fn listing_filters() {
        let l = locations_listing(Some("france"));
        assert!(l.contains("FRA (FR)") && l.contains("azure:francecentral"), "{l}");
        assert!(!l.contains("DEU"));
    }
}
