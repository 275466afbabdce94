//! Grid carbon intensity (gCO2e/kWh) at a time, from the best source available.
//!
//! Order of preference, each always reported with its source and year:
//! 1. a constant the user gives (`--intensity 56`);
//! 2. a time series the user gives (CSV of timestamp, gCO2e/kWh), for the times it covers;
//! 3. a live provider (Electricity Maps, token from the environment), cached, with fallback;
//! 4. the offline tables (`--country`, `--region`);
//! 5. the world average, said loudly.
//!
//! A source that cannot answer for an interval (series not covering it, provider down) falls
//! through to the next one, and the reason is recorded as a warning.

use std::path::Path;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use super::provider::LiveIntensity;
use super::tables::{self, GridEntry, LocationKind};

/// The largest grid intensity accepted from outside data (a time series, a live provider), in
/// gCO2e/kWh: about eight times the dirtiest grids (lignite is ~1,200). A larger figure is a
/// unit mistake (g/MWh, kg/kWh) or garbage, and would also let sums overflow to infinity.
pub const MAX_G_PER_KWH: f64 = 10_000.0;

/// Which kind of source gave an intensity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `--intensity` / `carbon.intensity`.
    User,
    /// `--intensity-csv` / `carbon.intensity_csv`.
    TimeSeries,
    /// A live provider (Electricity Maps).
    Provider,
    /// An offline table.
    Table,
    /// The world average: no location was known.
    #[default]
    World,
}

/// An intensity with where it comes from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntensityReading {
    /// gCO2e/kWh.
    pub g_per_kwh: f64,
    pub kind: SourceKind,
    /// Human-readable source.
    pub source: String,
    /// Data year, where known.
    pub year: Option<u16>,
    /// Location code the figure is for (`FRA`, `aws:eu-west-3`, an Electricity Maps zone).
    pub location: Option<String>,
}

/// Errors reading a user's intensity time series.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("cannot read intensity time series {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{origin}:{line}: {msg}")]
    Parse { origin: String, line: usize, msg: String },
    #[error("{origin}: no data rows (expected lines of `timestamp,gCO2e/kWh`)")]
    Empty { origin: String },
}

/// A user-given intensity time series: each value holds from its timestamp until the next
/// one; the last holds for one more step (the series' last spacing, one hour for a single row).
#[derive(Clone, Debug, PartialEq)]
pub struct TimeSeries {
    /// (unix seconds, gCO2e/kWh), strictly increasing in time.
    points: Vec<(f64, f64)>,
    /// Validity of the last point, seconds.
    last_step_s: f64,
    origin: String,
}

/// Parses a timestamp: RFC 3339 (`2024-05-01T12:00:00Z`, with offset), a UTC date-time without
/// offset (`2024-05-01 12:00:00`, `2024-05-01T12:00`), or unix seconds.
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp_nanos() as f64 / 1e9);
    }
    let formats = [
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day] [hour]:[minute]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ];
    for f in formats {
        if let Ok(t) = time::PrimitiveDateTime::parse(s, &f) {
            return Some(t.assume_utc().unix_timestamp() as f64);
        }
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok().map(|v| v as f64);
    }
    None
}

impl TimeSeries {
    /// Reads a series from a CSV file.
    pub fn load(path: &Path) -> Result<Self, SeriesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SeriesError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses CSV text: `timestamp,gCO2e/kWh` per line, an optional header line, `#` comments;
    /// further columns are ignored. `origin` names the input in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SeriesError> {
        let err = |line: usize, msg: String| SeriesError::Parse { origin: origin.to_string(), line, msg };
        let mut points: Vec<(f64, f64)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim_start_matches('\u{feff}').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = tables::split_csv_line(line);
            if fields.len() < 2 {
                return Err(err(line_no, format!("expected `timestamp,gCO2e/kWh`, found {line:?}")));
            }
            let ts = parse_timestamp(&fields[0]);
            let value = fields[1].trim().parse::<f64>();
            if points.is_empty() && ts.is_none() && value.is_err() {
                continue; // header line
            }
            let ts = ts.ok_or_else(|| {
                err(
                    line_no,
                    format!(
                        "bad timestamp {:?}: expected RFC 3339 (2024-05-01T12:00:00Z), \
                         `YYYY-MM-DD HH:MM[:SS]` in UTC, or unix seconds",
                        fields[0]
                    ),
                )
            })?;
            let value = value.ok().filter(|v| (0.0..=MAX_G_PER_KWH).contains(v)).ok_or_else(|| {
                err(
                    line_no,
                    format!("bad intensity {:?}: expected gCO2e/kWh from 0 to {MAX_G_PER_KWH}", fields[1]),
                )
            })?;
            if let Some(&(prev, _)) = points.last()
                && ts <= prev
            {
                return Err(err(
                    line_no,
                    format!("timestamp {:?} is not after the previous row's", fields[0]),
                ));
            }
            points.push((ts, value));
        }
        if points.is_empty() {
            return Err(SeriesError::Empty { origin: origin.to_string() });
        }
        let last_step_s = match points.as_slice() {
            [.., (a, _), (b, _)] => b - a,
            _ => 3600.0,
        };
        Ok(Self { points, last_step_s, origin: origin.to_string() })
    }

    /// The (unix seconds, gCO2e/kWh) points, strictly increasing in time.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// Where the series came from (its path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Intensity at one instant, if the series covers it.
    pub fn at(&self, t: f64) -> Option<f64> {
        let (first, _) = *self.points.first()?;
        let (last, last_v) = *self.points.last()?;
        if t < first || t >= last + self.last_step_s {
            return None;
        }
        if t >= last {
            return Some(last_v);
        }
        let idx = self.points.partition_point(|&(ts, _)| ts <= t);
        self.points.get(idx.checked_sub(1)?).map(|&(_, v)| v)
    }

    /// Time-weighted mean intensity over `[start, end)` (unix seconds), if the series covers
    /// all of it. An interval that straddles a change gets each value for its share of time.
    pub fn mean_over(&self, start: f64, end: f64) -> Option<f64> {
        if end <= start {
            return self.at(start);
        }
        let (first, _) = *self.points.first()?;
        let (last, _) = *self.points.last()?;
        if start < first || end > last + self.last_step_s {
            return None;
        }
        let mut sum = 0.0;
        for (i, &(ts, v)) in self.points.iter().enumerate() {
            let until = self.points.get(i + 1).map_or(last + self.last_step_s, |p| p.0);
            let overlap = until.min(end) - ts.max(start);
            if overlap > 0.0 {
                sum += v * overlap;
            }
        }
        Some(sum / (end - start))
    }

    /// Year of the series' first point (for reporting).
    pub fn year(&self) -> Option<u16> {
        let (first, _) = *self.points.first()?;
        let year = OffsetDateTime::from_unix_timestamp(first.floor() as i64).ok()?.year();
        u16::try_from(year).ok()
    }
}

/// The intensity sources of a run, tried in order of preference.
pub struct IntensityResolver {
    fixed: Option<f64>,
    series: Option<TimeSeries>,
    provider: Option<(Box<dyn LiveIntensity>, String)>,
    table: Option<&'static GridEntry>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for IntensityResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntensityResolver")
            .field("fixed", &self.fixed)
            .field("series", &self.series.as_ref().map(|s| s.origin()))
            .field("provider_zone", &self.provider.as_ref().map(|p| &p.1))
            .field("table", &self.table.map(|t| &t.code))
            .finish()
    }
}

impl IntensityResolver {
    /// Builds a resolver. `provider` is the live client with the zone to ask for; `table` the
    /// location selected by `--country`/`--region` (None: world average last).
    pub fn new(
        fixed: Option<f64>,
        series: Option<TimeSeries>,
        provider: Option<(Box<dyn LiveIntensity>, String)>,
        table: Option<&'static GridEntry>,
    ) -> Self {
        Self { fixed, series, provider, table, warnings: Vec::new() }
    }

    /// Location of the offline table entry in use.
    pub fn table_entry(&self) -> Option<&'static GridEntry> {
        self.table
    }

    fn warn(&mut self, msg: String) {
        if !self.warnings.contains(&msg) {
            self.warnings.push(msg);
        }
    }

    /// Warnings so far (fallbacks, world average), each once.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Intensity for the interval `[start, end)` (unix seconds), from the most preferred source
    /// that can answer. Never fails: the world average is the last resort.
    pub fn resolve(&mut self, start: f64, end: f64) -> IntensityReading {
        if let Some(v) = self.fixed {
            return IntensityReading {
                g_per_kwh: v,
                kind: SourceKind::User,
                source: "user-given constant (--intensity / carbon.intensity)".to_string(),
                year: None,
                location: self.table.map(|t| t.code.clone()),
            };
        }
        if let Some(series) = &self.series {
            if let Some(v) = series.mean_over(start, end) {
                return IntensityReading {
                    g_per_kwh: v,
                    kind: SourceKind::TimeSeries,
                    source: format!("user time series {}", series.origin()),
                    year: series.year(),
                    location: self.table.map(|t| t.code.clone()),
                };
            }
            let msg = format!(
                "intensity time series {} does not cover {}..{}; falling back to the next source",
                series.origin(),
                fmt_unix(start),
                fmt_unix(end)
            );
            self.warn(msg);
        }
        if let Some((client, zone)) = &mut self.provider {
            let zone = zone.clone();
            match client.latest(&zone) {
                Ok(r) => {
                    return IntensityReading {
                        g_per_kwh: r.g_per_kwh,
                        kind: SourceKind::Provider,
                        source: format!("{} live, zone {}", client.name(), zone),
                        year: r.year,
                        location: Some(zone),
                    };
                }
                Err(e) => {
                    let name = client.name().to_string();
                    self.warn(format!("{name} unavailable ({e}); falling back to the offline tables"));
                }
            }
        }
        if let Some(t) = self.table {
            return table_reading(t);
        }
        self.warn(format!(
            "NO LOCATION GIVEN: using the WORLD AVERAGE of {} gCO2e/kWh; emissions may be off by a \
             factor of 10 or more. Give --country, --region or --intensity",
            tables::world().g_per_kwh
        ));
        let mut r = table_reading(tables::world());
        r.kind = SourceKind::World;
        r
    }
}

/// A table entry as a reading.
pub fn table_reading(t: &GridEntry) -> IntensityReading {
    IntensityReading {
        g_per_kwh: t.g_per_kwh,
        kind: if t.kind == LocationKind::World { SourceKind::World } else { SourceKind::Table },
        source: t.source(),
        year: t.year,
        location: Some(t.code.clone()),
    }
}

fn fmt_unix(t: f64) -> String {
    OffsetDateTime::from_unix_timestamp(t.floor() as i64)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{t}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carbon::provider::{ProviderError, ProviderReading};

    const H: f64 = 3600.0;
    // 2024-05-01T00:00:00Z
    const T0: f64 = 1_714_521_600.0;

    fn series() -> TimeSeries {
        TimeSeries::parse(
            "timestamp,carbon_intensity\n\
             2024-05-01T00:00:00Z,100\n\
             2024-05-01 01:00:00,300\n\
             1714528800,50\n",
            "test.csv",
        )
        .unwrap()
    }

    #[test]
    fn parses_three_timestamp_forms_and_header() {
        let s = series();
        assert_eq!(s.points, vec![(T0, 100.0), (T0 + H, 300.0), (T0 + 2.0 * H, 50.0)]);
        assert_eq!(s.year(), Some(2024));
        assert_eq!(parse_timestamp("2024-05-01T02:00:00+02:00"), Some(T0));
    }

    #[test]
    fn lookup_honours_hourly_changes() {
        let s = series();
        assert_eq!(s.at(T0 - 1.0), None);
        assert_eq!(s.at(T0), Some(100.0));
        assert_eq!(s.at(T0 + H - 0.001), Some(100.0));
        assert_eq!(s.at(T0 + H), Some(300.0));
        assert_eq!(s.at(T0 + 3.0 * H - 1.0), Some(50.0)); // last value holds one step
        assert_eq!(s.at(T0 + 3.0 * H), None);
    }

    #[test]
    fn mean_over_an_hour_boundary_is_time_weighted() {
        let s = series();
        // 10 s: 4 s at 100 then 6 s at 300 → (400 + 1800) / 10 = 220.
        assert_eq!(s.mean_over(T0 + H - 4.0, T0 + H + 6.0), Some(220.0));
        assert_eq!(s.mean_over(T0 + 10.0, T0 + 20.0), Some(100.0));
        assert_eq!(s.mean_over(T0 - 5.0, T0 + 5.0), None);
    }

    #[test]
    fn parse_errors_name_line_and_value() {
        let e = TimeSeries::parse("t,v\n2024-05-01T00:00:00Z,abc\n", "x.csv").unwrap_err().to_string();
        assert_eq!(e, "x.csv:2: bad intensity \"abc\": expected gCO2e/kWh from 0 to 10000");
        let e = TimeSeries::parse("2024-05-01T00:00:00Z,1\nyesterday,2\n", "x.csv").unwrap_err().to_string();
        assert!(e.starts_with("x.csv:2: bad timestamp \"yesterday\""), "{e}");
        let e = TimeSeries::parse("2024-05-01T01:00:00Z,1\n2024-05-01T00:00:00Z,2\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.csv:2:") && e.contains("not after"), "{e}");
        let e = TimeSeries::parse("2024-05-01T00:00:00Z,-3\n", "x.csv").unwrap_err().to_string();
        assert!(e.contains("expected gCO2e/kWh from 0 to 10000"), "{e}");
        // Finite but absurd: it would make a mean over a long interval infinite.
        let e = TimeSeries::parse("0,1e308\n", "x.csv").unwrap_err().to_string();
        assert!(e.contains("x.csv:1: bad intensity \"1e308\""), "{e}");
        assert!(TimeSeries::parse("0,10000\n", "x.csv").is_ok());
        let e = TimeSeries::parse("only-one-field\n", "x.csv").unwrap_err().to_string();
        assert!(e.contains("expected `timestamp,gCO2e/kWh`"), "{e}");
        let e = TimeSeries::parse("# nothing\n", "x.csv").unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = TimeSeries::load(Path::new("/nonexistent/ci.csv")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read intensity time series /nonexistent/ci.csv"), "{e}");
    }

    struct FakeProvider(Result<f64, ProviderError>);
    impl LiveIntensity for FakeProvider {
        fn name(&self) -> &str {
            "Electricity Maps"
        }
        fn latest(&mut self, _zone: &str) -> Result<ProviderReading, ProviderError> {
            self.0.clone().map(|v| ProviderReading { g_per_kwh: v, year: Some(2026), datetime: None })
        }
    }

    #[test]
    fn precedence_and_fallbacks() {
        let fra = tables::lookup_country("FRA").unwrap();
        let mut r = IntensityResolver::new(Some(12.0), Some(series()), None, Some(fra));
        assert_eq!(r.resolve(T0, T0 + 1.0).kind, SourceKind::User);

        let ok = FakeProvider(Ok(33.0));
        let mut r =
            IntensityResolver::new(None, Some(series()), Some((Box::new(ok), "FR".into())), Some(fra));
        assert_eq!(r.resolve(T0, T0 + 1.0).g_per_kwh, 100.0);
        // Outside the series: the provider answers, and the fallback is said.
        let p = r.resolve(T0 + 5.0 * H, T0 + 5.0 * H + 1.0);
        assert_eq!((p.g_per_kwh, p.kind, p.year), (33.0, SourceKind::Provider, Some(2026)));
        assert!(r.warnings()[0].contains("does not cover"), "{:?}", r.warnings());

        let down = FakeProvider(Err(ProviderError::Status(401, "Unauthorized".into())));
        let mut r = IntensityResolver::new(None, None, Some((Box::new(down), "FR".into())), Some(fra));
        let t = r.resolve(T0, T0 + 1.0);
        assert_eq!((t.g_per_kwh, t.kind), (fra.g_per_kwh, SourceKind::Table));
        assert!(r.warnings()[0].contains("Electricity Maps unavailable (HTTP 401"), "{:?}", r.warnings());

        let mut r = IntensityResolver::new(None, None, None, None);
        let w = r.resolve(T0, T0 + 1.0);
        assert_eq!((w.g_per_kwh, w.kind), (475.0, SourceKind::World));
        assert!(r.warnings()[0].contains("WORLD AVERAGE"));
        r.resolve(T0 + 1.0, T0 + 2.0);
        assert_eq!(r.warnings().len(), 1, "each warning once");
    }
}
