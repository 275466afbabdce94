//! `--csv FILE`: one row per run in CodeCarbon's `emissions.csv` layout (same columns, same
//! order, same units: emissions kg CO2e, energy kWh, power W, duration s, RAM GB), so that
//! CodeCarbon dashboards and scripts read it. Columns we cannot know stay empty.
//!
//! Mapping (see docs/carbon.md): `emissions` = operational emissions (CodeCarbon has no
//! embodied column; the JSON document has them); `energy_consumed` = facility energy (IT × PUE),
//! so that `emissions = energy_consumed × intensity` holds as in CodeCarbon; `cpu_energy`,
//! `gpu_energy`, `ram_energy` = IT energy per domain; powers = energy ÷ duration;
//! `tracking_mode` = `process` (a process tree is tracked, not the machine).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::SystemTime;

use time::OffsetDateTime;
use time::macros::format_description;

use super::accountant::J_PER_KWH;
use super::tables::{GridEntry, LocationKind};

/// CodeCarbon's `emissions.csv` columns, in order.
pub const COLUMNS: [&str; 38] = [
    "timestamp",
    "project_name",
    "run_id",
    "experiment_id",
    "duration",
    "emissions",
    "emissions_rate",
    "cpu_power",
    "gpu_power",
    "ram_power",
    "cpu_energy",
    "gpu_energy",
    "ram_energy",
    "energy_consumed",
    "water_consumed",
    "country_name",
    "country_iso_code",
    "region",
    "cloud_provider",
    "cloud_region",
    "os",
    "python_version",
    "codecarbon_version",
    "cpu_count",
    "cpu_model",
    "gpu_count",
    "gpu_model",
    "longitude",
    "latitude",
    "ram_total_size",
    "tracking_mode",
    "cpu_utilization_percent",
    "gpu_utilization_percent",
    "ram_utilization_percent",
    "ram_used_gb",
    "on_cloud",
    "pue",
    "wue",
];

/// Where the run was, in CodeCarbon's columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocationColumns {
    pub country_name: Option<String>,
    /// ISO 3166-1 alpha-3.
    pub country_iso_code: Option<String>,
    pub region: Option<String>,
    pub cloud_provider: Option<String>,
    pub cloud_region: Option<String>,
    pub on_cloud: Option<bool>,
}

impl LocationColumns {
    /// From the offline table entry in use (None: nothing known, all empty).
    pub fn from_entry(entry: Option<&GridEntry>) -> Self {
        let Some(e) = entry else {
            return Self::default();
        };
        let country =
            super::tables::lookup_country(&e.country).ok().filter(|c| c.kind == LocationKind::Country);
        let mut c = Self {
            country_name: country.map(|c| c.name.clone()),
            country_iso_code: Some(e.country.clone()).filter(|s| !s.is_empty()),
            ..Self::default()
        };
        match e.kind {
            LocationKind::Subnational => {
                c.region = Some(e.name.split(',').next().unwrap_or("").trim().to_string())
            }
            LocationKind::Cloud => {
                let (p, r) = e.code.split_once(':').unwrap_or((&e.code, ""));
                c.cloud_provider = Some(p.to_string());
                c.cloud_region = Some(r.to_string());
                c.on_cloud = Some(true);
            }
            _ => {}
        }
        c
    }
}

/// Everything one CSV row says, in the agent's units (filled from the run summary).
#[derive(Clone, Debug, PartialEq)]
pub struct CodeCarbonRun {
    /// End of the run.
    pub end_time: SystemTime,
    pub project_name: Option<String>,
    pub run_id: Option<String>,
    pub experiment_id: Option<String>,
    pub duration_s: f64,
    /// Operational grams CO2e.
    pub operational_g: f64,
    /// IT energy per domain, joules (None: domain not metered or estimated).
    pub cpu_energy_j: Option<f64>,
    pub gpu_energy_j: Option<f64>,
    pub ram_energy_j: Option<f64>,
    /// IT energy of all domains, joules.
    pub it_energy_j: f64,
    pub pue: f64,
    pub location: LocationColumns,
    /// e.g. "Linux 6.18.44".
    pub os: Option<String>,
    pub cpu_count: Option<u32>,
    pub cpu_model: Option<String>,
    pub gpu_count: Option<u32>,
    pub gpu_model: Option<String>,
    pub ram_total_bytes: Option<u64>,
    pub cpu_utilization_percent: Option<f64>,
    pub gpu_utilization_percent: Option<f64>,
    pub ram_utilization_percent: Option<f64>,
    pub ram_used_bytes: Option<u64>,
}

/// Errors appending a row.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot write CodeCarbon CSV {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "{path} has a different header than CodeCarbon's emissions.csv (column {column}: found {found:?}, \
         expected {expected:?}); refusing to append. Use a new file or one written by --csv"
    )]
    HeaderMismatch { path: String, column: usize, found: String, expected: String },
}

fn num(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { String::new() }
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

impl CodeCarbonRun {
    /// The row's cells in [`COLUMNS`] order, converted to CodeCarbon's units.
    pub fn cells(&self) -> Vec<String> {
        let kwh = |j: f64| j / J_PER_KWH;
        let opt = |v: Option<f64>| v.map(num).unwrap_or_default();
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let watts = |j: Option<f64>| j.filter(|_| self.duration_s > 0.0).map(|j| j / self.duration_s);
        let kg = self.operational_g / 1000.0;
        let timestamp = OffsetDateTime::from(self.end_time)
            .format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"))
            .unwrap_or_default();
        let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
        vec![
            timestamp,
            s(&self.project_name),
            s(&self.run_id),
            s(&self.experiment_id),
            num(self.duration_s),
            num(kg),
            if self.duration_s > 0.0 { num(kg / self.duration_s) } else { String::new() },
            opt(watts(self.cpu_energy_j)),
            opt(watts(self.gpu_energy_j)),
            opt(watts(self.ram_energy_j)),
            opt(self.cpu_energy_j.map(kwh)),
            opt(self.gpu_energy_j.map(kwh)),
            opt(self.ram_energy_j.map(kwh)),
            num(kwh(self.it_energy_j * self.pue)),
            String::new(), // water_consumed: unknown
            s(&self.location.country_name),
            s(&self.location.country_iso_code),
            s(&self.location.region),
            s(&self.location.cloud_provider),
            s(&self.location.cloud_region),
            s(&self.os),
            String::new(), // python_version: not a Python tracker
            String::new(), // codecarbon_version: not CodeCarbon
            self.cpu_count.map(|v| v.to_string()).unwrap_or_default(),
            s(&self.cpu_model),
            self.gpu_count.map(|v| v.to_string()).unwrap_or_default(),
            s(&self.gpu_model),
            String::new(), // longitude: unknown
            String::new(), // latitude: unknown
            opt(self.ram_total_bytes.map(gb)),
            "process".to_string(),
            opt(self.cpu_utilization_percent),
            opt(self.gpu_utilization_percent),
            opt(self.ram_utilization_percent),
            opt(self.ram_used_bytes.map(gb)),
            self.location.on_cloud.map(|b| if b { "Y" } else { "N" }.to_string()).unwrap_or_default(),
            num(self.pue),
            String::new(), // wue: unknown
        ]
    }

    /// The row as one CSV line (with newline).
    pub fn line(&self) -> String {
        let mut l = self.cells().iter().map(|c| quote(c)).collect::<Vec<_>>().join(",");
        l.push('\n');
        l
    }
}

/// The header line (with newline).
pub fn header_line() -> String {
    format!("{}\n", COLUMNS.join(","))
}

/// Appends one row to `path`, writing the header first when the file is new or empty. An
/// existing file whose header differs is an error and is left untouched.
pub fn append_row(path: &Path, run: &CodeCarbonRun) -> Result<(), CsvError> {
    let io = |source| CsvError::Io { path: path.display().to_string(), source };
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
    let mut existing = String::new();
    file.read_to_string(&mut existing).map_err(io)?;
    let mut out = String::new();
    if existing.trim().is_empty() {
        out.push_str(&header_line());
    } else {
        let first = existing.lines().next().unwrap_or("").trim_start_matches('\u{feff}').trim_end();
        let found: Vec<&str> = first.split(',').map(str::trim).collect();
        if found != COLUMNS {
            let column =
                (0..found.len().max(COLUMNS.len())).find(|&i| found.get(i) != COLUMNS.get(i)).unwrap_or(0);
            return Err(CsvError::HeaderMismatch {
                path: path.display().to_string(),
                column: column + 1,
                found: found.get(column).unwrap_or(&"(end of line)").to_string(),
                expected: COLUMNS.get(column).unwrap_or(&"(end of line)").to_string(),
            });
        }
        if !existing.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&run.line());
    file.seek(SeekFrom::End(0)).map_err(io)?;
    file.write_all(out.as_bytes()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// The column list of the issue, verbatim.
    const ISSUE_COLUMNS: &str = "timestamp, project_name, run_id, experiment_id, duration, emissions, \
        emissions_rate, cpu_power, gpu_power, ram_power, cpu_energy, gpu_energy, ram_energy, energy_consumed, \
        water_consumed, country_name, country_iso_code, region, cloud_provider, cloud_region, os, python_version, \
        codecarbon_version, cpu_count, cpu_model, gpu_count, gpu_model, longitude, latitude, ram_total_size, \
        tracking_mode, cpu_utilization_percent, gpu_utilization_percent, ram_utilization_percent, ram_used_gb, \
        on_cloud, pue, wue";

    fn run() -> CodeCarbonRun {
        CodeCarbonRun {
            end_time: UNIX_EPOCH + Duration::from_secs(1_714_521_600),
            project_name: Some("carbon-agent".into()),
            run_id: Some("r1".into()),
            experiment_id: None,
            duration_s: 100.0,
            operational_g: 50.0,
            cpu_energy_j: Some(36_000.0),
            gpu_energy_j: None,
            ram_energy_j: Some(3_600.0),
            it_energy_j: 39_600.0,
            pue: 1.5,
            location: LocationColumns::from_entry(Some(
                super::super::tables::lookup_region("aws:eu-west-3").unwrap(),
            )),
            os: Some("Linux 6.18.44".into()),
            cpu_count: Some(2),
            cpu_model: Some("AMD EPYC, 7B13".into()),
            gpu_count: Some(0),
            gpu_model: None,
            ram_total_bytes: Some(24 << 30),
            cpu_utilization_percent: Some(50.0),
            gpu_utilization_percent: None,
            ram_utilization_percent: None,
            ram_used_bytes: None,
        }
    }

    #[test]
    fn columns_are_codecarbons_in_order() {
        let issue: Vec<&str> = ISSUE_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(issue, COLUMNS);
    }

    #[test]
    fn units_are_codecarbons() {
        let cells = run().cells();
        let get = |name: &str| cells[COLUMNS.iter().position(|c| *c == name).unwrap()].clone();
        assert_eq!(get("timestamp"), "2024-05-01T00:00:00");
        assert_eq!(get("duration"), "100");
        assert_eq!(get("emissions"), "0.05"); // 50 g = 0.05 kg
        assert_eq!(get("emissions_rate"), "0.0005"); // kg/s
        assert_eq!(get("cpu_power"), "360"); // 36 kJ / 100 s
        assert_eq!(get("gpu_power"), "");
        assert_eq!(get("ram_power"), "36");
        assert_eq!(get("cpu_energy"), "0.01"); // 36 kJ = 0.01 kWh
        assert_eq!(get("ram_energy"), "0.001");
        assert_eq!(get("energy_consumed"), "0.0165"); // 39.6 kJ × 1.5 / 3.6 MJ
        assert_eq!(get("water_consumed"), "");
        assert_eq!(get("country_name"), "France");
        assert_eq!(get("country_iso_code"), "FRA");
        assert_eq!((get("cloud_provider"), get("cloud_region")), ("aws".into(), "eu-west-3".into()));
        assert_eq!(get("on_cloud"), "Y");
        assert_eq!(get("ram_total_size"), "24");
        assert_eq!(get("tracking_mode"), "process");
        assert_eq!(get("pue"), "1.5");
        for empty in ["python_version", "codecarbon_version", "longitude", "latitude", "wue", "experiment_id"]
        {
            assert_eq!(get(empty), "", "{empty}");
        }
        assert!(run().line().contains(",\"AMD EPYC, 7B13\","));
        assert_eq!(cells.len(), COLUMNS.len());
    }

    #[test]
    fn appends_with_header_once_and_refuses_foreign_headers() {
        let dir = std::env::temp_dir().join(format!("carbon-csv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("emissions.csv");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "").unwrap(); // empty file: header written
        append_row(&path, &run()).unwrap();
        append_row(&path, &run()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(lines[1], lines[2]);

        let other = dir.join("other.csv");
        std::fs::write(&other, "timestamp,project_name,duration\n1,2,3\n").unwrap();
        let e = append_row(&other, &run()).unwrap_err().to_string();
        assert!(e.contains("column 3: found \"duration\", expected \"run_id\""), "{e}");
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "timestamp,project_name,duration\n1,2,3\n");
        let e = append_row(&dir.join("no/such/dir.csv"), &run()).unwrap_err().to_string();
        assert!(e.starts_with("cannot write CodeCarbon CSV"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
