//! The load's machine-readable lines on stdout, one `key=value` record per line:
//!
//! ```text
//! gpu-load: ready pid=4242 cuda_device=0 nvml_index=0 pci=00000000:01:00.0 sms=132 name=NVIDIA H200
//! gpu-load: energy phase=start energy_mj=123456789 unix_ms=1796000000000
//! gpu-load: energy phase=end energy_mj=133456789 unix_ms=1796000030000 launches=600
//! ```
//!
//! `start` is read once the CUDA context and the JIT-compiled module exist, `end` after the
//! last launch has finished and before anything is torn down. `name` is last (it has spaces).

use std::collections::BTreeMap;

/// The prefix of every line.
pub const PREFIX: &str = "gpu-load:";

/// What one load printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadRecord {
    /// The load's pid.
    pub pid: u32,
    /// NVML index of its GPU.
    pub nvml_index: u32,
    /// Counter once the context existed, mJ.
    pub start_mj: u64,
    /// Wall clock then, ms since the Unix epoch.
    pub start_unix_ms: u64,
    /// Counter before teardown, mJ.
    pub end_mj: u64,
    /// Wall clock then.
    pub end_unix_ms: u64,
}

impl LoadRecord {
    /// Joules the GPU's own counter measured while the load ran.
    pub fn own_j(&self) -> f64 {
        self.end_mj.saturating_sub(self.start_mj) as f64 / 1000.0
    }
}

fn fields(line: &str) -> Option<(String, BTreeMap<String, String>)> {
    let rest = line.strip_prefix(PREFIX)?.trim_start();
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut map = BTreeMap::new();
    let mut rest = rest.trim();
    while let Some((k, v)) = rest.split_once('=') {
        if k == "name" {
            map.insert(k.to_owned(), v.to_owned());
            break;
        }
        let (v, tail) = v.split_once(' ').unwrap_or((v, ""));
        map.insert(k.to_owned(), v.to_owned());
        rest = tail.trim();
    }
    Some((kind.to_owned(), map))
}

/// Parses what one load printed (other lines are ignored).
pub fn parse(text: &str) -> Result<LoadRecord, String> {
    let mut rec = LoadRecord::default();
    let (mut ready, mut start, mut end) = (false, false, false);
    for line in text.lines() {
        let Some((kind, f)) = fields(line) else { continue };
        let num = |k: &str| -> Result<u64, String> {
            f.get(k)
                .ok_or_else(|| format!("{line:?}: no {k}"))?
                .parse()
                .map_err(|_| format!("{line:?}: bad {k}"))
        };
        match (kind.as_str(), f.get("phase").map(String::as_str)) {
            ("ready", _) => {
                rec.pid = num("pid")? as u32;
                rec.nvml_index = num("nvml_index")? as u32;
                ready = true;
            }
            ("energy", Some("start")) => {
                rec.start_mj = num("energy_mj")?;
                rec.start_unix_ms = num("unix_ms")?;
                start = true;
            }
            ("energy", Some("end")) => {
                rec.end_mj = num("energy_mj")?;
                rec.end_unix_ms = num("unix_ms")?;
                end = true;
            }
            _ => {}
        }
    }
    match (ready, start, end) {
        (true, true, true) => Ok(rec),
        _ => Err(format!("incomplete load output (ready {ready}, start {start}, end {end})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_load_prints() {
        let text = "noise\ngpu-load: ready pid=4242 cuda_device=0 nvml_index=1 pci=00000000:01:00.0 sms=132 \
                    name=NVIDIA H200 NVL\ngpu-load: energy phase=start energy_mj=1000 unix_ms=5\n\
                    gpu-load: energy phase=end energy_mj=301000 unix_ms=30005 launches=10\n";
        let r = parse(text).unwrap();
        assert_eq!(
            r,
            LoadRecord {
                pid: 4242,
                nvml_index: 1,
                start_mj: 1000,
                start_unix_ms: 5,
                end_mj: 301000,
                end_unix_ms: 30005
            }
        );
        assert_eq!(r.own_j(), 300.0);
        assert!(parse("gpu-load: ready pid=1 nvml_index=0\n").unwrap_err().contains("start false"));
        assert!(parse("gpu-load: ready pid=x nvml_index=0\n").unwrap_err().contains("bad pid"));
    }
}
