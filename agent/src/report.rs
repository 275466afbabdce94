//! `carbon-agent report FILE.json... --format markdown|latex`: a disclosure statement for a
//! paper or model card from one or more `run` documents (docs/carbon.md, schema in the
//! run JSON): hardware, meter, energy, PUE, intensity and source, operational and embodied
//! emissions, and the method in two sentences.

use std::fmt::Write as _;
use std::path::Path;

use crate::api::{SCHEMA_VERSION, run::RunDocument};

/// Output format (`--format`, `report.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    #[default]
    Markdown,
    Latex,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 2] = [ReportFormat::Markdown, ReportFormat::Latex];

    /// The flag and config value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Markdown => "markdown",
            ReportFormat::Latex => "latex",
        }
    }
}

/// Errors reading run documents.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read run document {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a run document: {reason}")]
    Invalid { path: String, reason: String },
}

/// The figures of one run the report uses.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    command: String,
    duration_s: f64,
    cpu_model: Option<String>,
    cpu_count: Option<u64>,
    ram_gb: Option<f64>,
    gpus: Vec<String>,
    hostname: Option<String>,
    meter_source: String,
    estimated: bool,
    energy_j: f64,
    cpu_j: Option<f64>,
    dram_j: Option<f64>,
    gpu_j: Option<f64>,
    facility_j: f64,
    operational_g: f64,
    embodied_g: f64,
    total_g: f64,
    intensity: f64,
    intensity_source: String,
    intensity_year: Option<u64>,
    location: Option<String>,
    pue: f64,
    pue_source: String,
}

fn run_of(doc: &RunDocument) -> Run {
    let (e, h, c) = (&doc.energy_j, &doc.host, &doc.carbon);
    Run {
        command: doc.command.join(" "),
        duration_s: doc.duration_s,
        cpu_model: h.cpu_model.clone(),
        cpu_count: Some(u64::from(h.cpu_count)),
        ram_gb: h.ram_total_bytes.map(|b| b as f64 / (1u64 << 30) as f64),
        gpus: h.gpus.iter().map(|g| g.name.clone()).collect(),
        hostname: Some(h.hostname.clone()),
        meter_source: doc.meter.source.clone(),
        estimated: doc.meter.estimated,
        energy_j: e.it.total,
        cpu_j: Some(e.it.cpu),
        dram_j: Some(e.it.dram),
        gpu_j: Some(e.it.gpu),
        facility_j: e.facility,
        operational_g: doc.emissions_g.operational,
        embodied_g: doc.emissions_g.embodied,
        total_g: doc.emissions_g.total,
        intensity: c.intensity,
        intensity_source: c.source.clone(),
        intensity_year: c.year.map(u64::from),
        location: c.location.clone(),
        pue: c.pue,
        pue_source: c.pue_source.clone(),
    }
}

/// Reads one run document, checking its schema version.
pub fn parse_document(text: &str, origin: &str) -> Result<RunDocument, ReportError> {
    let invalid = |reason: String| ReportError::Invalid { path: origin.to_string(), reason };
    let doc: RunDocument = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if doc.schema_version != SCHEMA_VERSION {
        return Err(invalid(format!(
            "schema_version {}, and this carbon-agent reads version {SCHEMA_VERSION}",
            doc.schema_version
        )));
    }
    Ok(doc)
}

fn kwh(j: f64) -> f64 {
    j / 3.6e6
}

/// Energy in the most readable unit.
fn energy(j: f64) -> String {
    if j >= 3.6e6 {
        format!("{:.3} kWh", kwh(j))
    } else if j >= 3600.0 {
        format!("{:.3} Wh", j / 3600.0)
    } else {
        format!("{j:.1} J")
    }
}

/// Grams in the most readable unit.
fn grams(g: f64) -> String {
    if g >= 1e6 {
        format!("{:.3} tCO2e", g / 1e6)
    } else if g >= 1000.0 {
        format!("{:.3} kgCO2e", g / 1000.0)
    } else {
        format!("{g:.3} gCO2e")
    }
}

fn duration(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.2} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn hardware(r: &Run) -> String {
    let mut h = r.cpu_model.clone().unwrap_or_else(|| "unknown CPU".into());
    if let Some(n) = r.cpu_count {
        let _ = write!(h, " ({n} CPUs)");
    }
    if let Some(gb) = r.ram_gb {
        let _ = write!(h, ", {gb:.0} GB RAM");
    }
    if !r.gpus.is_empty() {
        let _ = write!(h, ", {}", r.gpus.join(", "));
    }
    h
}

fn meter(r: &Run) -> String {
    if r.estimated {
        format!("estimated ({}: power model from CPU utilization)", r.meter_source)
    } else {
        format!("measured ({})", r.meter_source)
    }
}

fn intensity(r: &Run) -> String {
    let mut t = format!("{:.1} gCO2e/kWh", r.intensity);
    let mut details = Vec::new();
    if let Some(l) = &r.location {
        details.push(l.clone());
    }
    details.push(r.intensity_source.clone());
    if let Some(y) = r.intensity_year {
        details.push(format!("data year {y}"));
    }
    let _ = write!(t, " ({})", details.join("; "));
    t
}

const METHOD: &str = "Energy was attributed to the process tree each second from in-kernel (eBPF) CPU time \
and the machine's energy meters or, where none exist, a utilization-based power model; facility energy is \
IT energy times the PUE. Operational emissions are facility energy times the grid carbon intensity valid in \
each interval, and embodied emissions are the hardware's manufacturing emissions amortized over its lifetime \
and charged by the run's share of the machine.";

/// The disclosure statement for run documents (`(origin, document)` pairs).
pub fn render(docs: &[(String, RunDocument)], format: ReportFormat) -> Result<String, ReportError> {
    let runs: Vec<Run> = docs.iter().map(|(_, d)| run_of(d)).collect();
    if runs.is_empty() {
        return Err(ReportError::Invalid { path: "(none)".into(), reason: "no run documents given".into() });
    }
    let total = |g: fn(&Run) -> f64| runs.iter().map(g).sum::<f64>();
    let (e, fac, op, emb, tot, dur) = (
        total(|r| r.energy_j),
        total(|r| r.facility_j),
        total(|r| r.operational_g),
        total(|r| r.embodied_g),
        total(|r| r.total_g),
        total(|r| r.duration_s),
    );
    let any_estimated = runs.iter().any(|r| r.estimated);
    let summary = format!(
        "The reported computation ({} run{}, {} in total) used {} of IT energy ({} at the facility), \
         emitting {} of CO2e: {} operational and {} embodied. Energy was {}.",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        duration(dur),
        energy(e),
        energy(fac),
        grams(tot),
        grams(op),
        grams(emb),
        if any_estimated {
            "estimated for at least one run (no energy meter was available), so figures carry model uncertainty"
        } else {
            "measured by hardware energy meters"
        },
    );
    let rows: Vec<[String; 2]> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let prefix = if runs.len() > 1 { format!("Run {} ", i + 1) } else { String::new() };
            let mut domains = Vec::new();
            for (name, v) in [("CPU", r.cpu_j), ("DRAM", r.dram_j), ("GPU", r.gpu_j)] {
                if let Some(v) = v.filter(|v| *v > 0.0) {
                    domains.push(format!("{name} {}", energy(v)));
                }
            }
            let energy_cell = if domains.is_empty() {
                format!("{} IT, {} facility", energy(r.energy_j), energy(r.facility_j))
            } else {
                format!(
                    "{} IT ({}), {} facility",
                    energy(r.energy_j),
                    domains.join(", "),
                    energy(r.facility_j)
                )
            };
            vec![
                [format!("{prefix}command"), r.command.clone()],
                [format!("{prefix}duration"), duration(r.duration_s)],
                [format!("{prefix}hardware"), hardware(r)],
                [format!("{prefix}energy meter"), meter(r)],
                [format!("{prefix}energy"), energy_cell],
                [format!("{prefix}PUE"), format!("{} ({})", r.pue, r.pue_source)],
                [format!("{prefix}carbon intensity"), intensity(r)],
                [
                    format!("{prefix}emissions"),
                    format!(
                        "{} operational + {} embodied = {}",
                        grams(r.operational_g),
                        grams(r.embodied_g),
                        grams(r.total_g)
                    ),
                ],
            ]
        })
        .collect();
    let mut out = String::new();
    match format {
        ReportFormat::Markdown => {
            out.push_str("## Energy and carbon disclosure\n\n");
            out.push_str(&summary);
            out.push_str("\n\n| Item | Value |\n|---|---|\n");
            for [k, v] in &rows {
                let _ = writeln!(out, "| {} | {} |", md_escape(k), md_escape(v));
            }
            let _ = write!(
                out,
                "\n**Method.** {METHOD} Measured with carbon-agent {}.\n",
                env!("CARGO_PKG_VERSION")
            );
        }
        ReportFormat::Latex => {
            out.push_str("\\subsection*{Energy and carbon disclosure}\n");
            out.push_str(&tex_escape(&summary));
            out.push_str("\n\n\\begin{tabular}{ll}\n\\hline\nItem & Value \\\\\n\\hline\n");
            for [k, v] in &rows {
                let _ = writeln!(out, "{} & {} \\\\", tex_escape(k), tex_escape(v));
            }
            out.push_str("\\hline\n\\end{tabular}\n\n");
            let _ = writeln!(
                out,
                "\\paragraph{{Method.}} {} Measured with carbon-agent {}.",
                tex_escape(METHOD),
                env!("CARGO_PKG_VERSION")
            );
        }
    }
    Ok(out)
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn tex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                o.push('\\');
                o.push(c);
            }
            '~' => o.push_str("\\textasciitilde{}"),
            '^' => o.push_str("\\textasciicircum{}"),
            '\n' => o.push(' '),
            _ => o.push(c),
        }
    }
    o.replace("CO2e", "CO\\textsubscript{2}e")
}

/// Reads run documents and renders the statement (the `report` command's body).
pub fn report_files(files: &[impl AsRef<Path>], format: ReportFormat) -> Result<String, ReportError> {
    let mut docs = Vec::new();
    for path in files {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReportError::Io { path: origin.clone(), source })?;
        let doc = parse_document(&text, &origin)?;
        docs.push((origin, doc));
    }
    render(&docs, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_json() -> serde_json::Value {
        let energy = serde_json::json!({ "total": 36000.0, "cpu": 30000.0, "dram": 6000.0, "gpu": 0.0,
            "platform": 0.0, "dynamic": 20000.0, "static": 16000.0 });
        let emissions = serde_json::json!({ "operational": 0.885, "embodied": 4.756, "total": 5.641 });
        let io = serde_json::json!({ "read_bytes": 0, "write_bytes": 0, "copied_bytes": 0, "net_tx_bytes": 0,
            "net_rx_bytes": 0, "io_cpu_time_s": 0.0, "page_cache_misses_bytes": 0,
            "storage_read_bytes": 0, "storage_write_bytes": 0 });
        serde_json::json!({
            "schema_version": 1,
            "command": ["python3", "train.py"], "exit_code": 0,
            "start_time": "2026-11-28T23:00:00Z", "end_time": "2026-11-28T23:10:00Z", "duration_s": 600.0,
            "host": { "hostname": "node1", "os": "Linux 6.18.44", "cpu_model": "AMD EPYC 7B13",
                      "cpu_count": 2, "ram_total_bytes": 25769803776u64, "gpus": [] },
            "meter": { "source": "model", "estimated": true },
            "energy_j": { "total": 36000.0, "cpu": 30000.0, "dram": 6000.0, "gpu": 0.0, "platform": 0.0,
                          "dynamic": 20000.0, "static": 16000.0, "facility": 56880.0 },
            "emissions_g": { "operational": 0.885, "embodied": 4.756, "total": 5.641 },
            "carbon": { "intensity": 56.0, "unit": "gCO2e/kWh", "source": "Our World in Data", "year": 2023,
                        "pue": 1.58, "pue_source": "default", "location": "FRA" },
            "tree": { "root_pid": 7, "processes": 1, "cpu_time_s": 1.0, "energy_j": energy, "emissions_g": emissions,
                      "io": io, "children": [] },
            "alternatives": [], "io": io, "io_time": null, "findings": [], "agent_hash_read_bytes": 0,
            "losses": { "cpu_map_full": 0 }, "gpu": null
        })
    }

    fn doc() -> RunDocument {
        serde_json::from_value(doc_json()).unwrap()
    }

    #[test]
    fn markdown_statement() {
        let md = render(&[("a.json".into(), doc())], ReportFormat::Markdown).unwrap();
        assert!(md.starts_with("## Energy and carbon disclosure\n\nThe reported computation (1 run, 10.0 min in total) \
             used 10.000 Wh of IT energy (15.800 Wh at the facility), emitting 5.641 gCO2e of CO2e: 0.885 gCO2e \
             operational and 4.756 gCO2e embodied."), "{md}");
        assert!(md.contains("| hardware | AMD EPYC 7B13 (2 CPUs), 24 GB RAM |"), "{md}");
        assert!(
            md.contains("| energy meter | estimated (model: power model from CPU utilization) |"),
            "{md}"
        );
        assert!(
            md.contains("| energy | 10.000 Wh IT (CPU 8.333 Wh, DRAM 1.667 Wh), 15.800 Wh facility |"),
            "{md}"
        );
        assert!(md.contains("| PUE | 1.58 (default) |"));
        assert!(
            md.contains("| carbon intensity | 56.0 gCO2e/kWh (FRA; Our World in Data; data year 2023) |"),
            "{md}"
        );
        assert!(md.contains("| emissions | 0.885 gCO2e operational + 4.756 gCO2e embodied = 5.641 gCO2e |"));
        assert!(md.contains("**Method.** Energy was attributed"));
        assert!(md.contains("estimated for at least one run"));
    }

    #[test]
    fn latex_statement_escapes_and_sums_runs() {
        let mut second = doc();
        second.command = ["bash", "-c", "echo 100% & done_"].map(String::from).to_vec();
        second.meter = crate::api::run::MeterInfo { source: "rapl-perf".into(), estimated: false };
        let tex = render(&[("a".into(), doc()), ("b".into(), second)], ReportFormat::Latex).unwrap();
        assert!(
            tex.starts_with(
                "\\subsection*{Energy and carbon disclosure}\nThe reported computation (2 runs, 20.0 min"
            ),
            "{tex}"
        );
        assert!(tex.contains("20.000 Wh of IT energy"), "{tex}");
        assert!(tex.contains("Run 2 command & bash -c echo 100\\% \\& done\\_ \\\\"), "{tex}");
        assert!(tex.contains("Run 2 energy meter & measured (rapl-perf) \\\\"), "{tex}");
        assert!(tex.contains("CO\\textsubscript{2}e"));
        assert!(tex.contains("\\begin{tabular}{ll}") && tex.contains("\\end{tabular}"));
    }

    #[test]
    fn bad_documents_are_clear_errors() {
        let mut d = doc_json();
        d["energy_j"].as_object_mut().unwrap().remove("total");
        let e = parse_document(&d.to_string(), "x.json").unwrap_err().to_string();
        assert!(e.starts_with("x.json is not a run document: missing field `total`"), "{e}");
        let mut d = doc_json();
        d["schema_version"] = 2.into();
        let e = parse_document(&d.to_string(), "x.json").unwrap_err().to_string();
        assert_eq!(
            e,
            "x.json is not a run document: schema_version 2, and this carbon-agent reads version 1"
        );
        let mut d = doc_json();
        d["meter"]["sauce"] = d["meter"]["source"].take();
        d["meter"].as_object_mut().unwrap().remove("source");
        let e = parse_document(&d.to_string(), "x.json").unwrap_err().to_string();
        assert!(e.contains("missing field `source`"), "{e}");
        let e = report_files(&["/nonexistent/run.json"], ReportFormat::Markdown).unwrap_err().to_string();
        assert!(e.starts_with("cannot read run document /nonexistent/run.json"), "{e}");
        let p = std::env::temp_dir().join(format!("carbon-report-{}.json", std::process::id()));
        std::fs::write(&p, "{not json").unwrap();
        let e = report_files(&[&p], ReportFormat::Markdown).unwrap_err().to_string();
        assert!(e.contains("is not a run document: key must be a string"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
