//! Embodied (manufacturing) emissions of the hardware, amortized over its lifetime and
//! charged per second of use by the same shares as static energy.
//!
//! Defaults follow Cloud Carbon Footprint's embodied coefficients (ccf-coefficients,
//! Apache-2.0; `ccfcoef/constants.py`): a base single-socket rack server of 1000 kgCO2e (Dell
//! R740 LCA), plus 533/384 kgCO2e per GB of memory above 16 GB, plus 100 kgCO2e per additional
//! CPU socket, plus 150 kgCO2e per GPU, amortized over 4 years. Local drives are not counted
//! (CCF adds 100 kgCO2e per SSD and 50 per HDD): override `server_kgco2e` to include them.

/// CCF base server, kgCO2e.
pub const CCF_BASE_SERVER_KG: f64 = 1000.0;
/// CCF memory above the base 16 GB, kgCO2e per GB.
pub const CCF_MEMORY_KG_PER_GB: f64 = 533.0 / 384.0;
/// CCF additional CPU socket, kgCO2e.
pub const CCF_EXTRA_CPU_KG: f64 = 100.0;
/// CCF GPU, kgCO2e each.
pub const CCF_GPU_KG: f64 = 150.0;
/// CCF hardware lifetime, years.
pub const CCF_LIFETIME_YEARS: f64 = 4.0;
/// Seconds in a (365-day) year, as CCF counts (35,040 h per 4 years).
pub const SECONDS_PER_YEAR: f64 = 365.0 * 24.0 * 3600.0;
/// Where the defaults come from.
pub const CCF_SOURCE: &str = "Cloud Carbon Footprint embodied coefficients (ccf-coefficients, Apache-2.0)";

/// What the host has, as far as embodied emissions go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostHardware {
    pub ram_bytes: u64,
    /// CPU sockets (packages); 0 is taken as 1.
    pub sockets: u32,
    pub gpus: u32,
}

/// User overrides (config `[carbon.embodied]`); None = default.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbodiedOverrides {
    /// Charge embodied emissions at all (default true).
    pub enabled: Option<bool>,
    /// Manufacturing emissions of the server without GPUs, kgCO2e.
    pub server_kgco2e: Option<f64>,
    /// Server lifetime, years.
    pub server_lifetime_years: Option<f64>,
    /// Manufacturing emissions of one GPU, kgCO2e.
    pub gpu_kgco2e: Option<f64>,
    /// GPU lifetime, years.
    pub gpu_lifetime_years: Option<f64>,
}

/// The amortization in force.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EmbodiedModel {
    pub server_kgco2e: f64,
    pub server_lifetime_years: f64,
    pub gpu_kgco2e: f64,
    pub gpu_count: u32,
    pub gpu_lifetime_years: f64,
    /// Where the figures come from ("CCF defaults", "config", ...).
    pub source: String,
}

/// CCF's estimate of a server's manufacturing emissions from its memory and sockets, kgCO2e.
pub fn ccf_server_kgco2e(ram_bytes: u64, sockets: u32) -> f64 {
    let gb = ram_bytes as f64 / (1u64 << 30) as f64;
    CCF_BASE_SERVER_KG
        + (gb - 16.0).max(0.0) * CCF_MEMORY_KG_PER_GB
        + f64::from(sockets.max(1) - 1) * CCF_EXTRA_CPU_KG
}

impl EmbodiedModel {
    /// The model for a host, with overrides applied. `None` when disabled.
    pub fn new(host: &HostHardware, o: &EmbodiedOverrides) -> Option<Self> {
        if o.enabled == Some(false) {
            return None;
        }
        let overridden = o.server_kgco2e.is_some()
            || o.server_lifetime_years.is_some()
            || o.gpu_kgco2e.is_some()
            || o.gpu_lifetime_years.is_some();
        Some(Self {
            server_kgco2e: o.server_kgco2e.unwrap_or_else(|| ccf_server_kgco2e(host.ram_bytes, host.sockets)),
            server_lifetime_years: o.server_lifetime_years.unwrap_or(CCF_LIFETIME_YEARS),
            gpu_kgco2e: o.gpu_kgco2e.unwrap_or(CCF_GPU_KG),
            gpu_count: host.gpus,
            gpu_lifetime_years: o.gpu_lifetime_years.unwrap_or(CCF_LIFETIME_YEARS),
            source: if overridden {
                format!("config overrides; defaults from {CCF_SOURCE}")
            } else {
                CCF_SOURCE.to_string()
            },
        })
    }

    /// Embodied emissions of the whole machine per second of wall time, grams.
    pub fn grams_per_second(&self) -> f64 {
        let server = self.server_kgco2e * 1000.0 / (self.server_lifetime_years * SECONDS_PER_YEAR);
        let gpus = f64::from(self.gpu_count) * self.gpu_kgco2e * 1000.0
            / (self.gpu_lifetime_years * SECONDS_PER_YEAR);
        server + gpus
    }

    /// Embodied grams of the machine over an interval.
    pub fn grams_for(&self, interval_s: f64) -> f64 {
        self.grams_per_second() * interval_s.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ccf_formula_matches_its_published_rows() {
        // ccf-coefficients-aws-embodied.csv: a1.medium host (32 GB, 1 socket) = 1022.21 kg.
        let kg = ccf_server_kgco2e(32 << 30, 1);
        assert!((kg - 1022.2083).abs() < 1e-3, "{kg}");
        // 16 GB or less: the base server; two sockets add 100 kg.
        assert_eq!(ccf_server_kgco2e(8 << 30, 0), 1000.0);
        assert_eq!(ccf_server_kgco2e(16 << 30, 2), 1100.0);
    }

    #[test]
    fn amortization_by_hand() {
        let host = HostHardware { ram_bytes: 16 << 30, sockets: 1, gpus: 2 };
        let m = EmbodiedModel::new(&host, &EmbodiedOverrides::default()).unwrap();
        // (1000 + 2 × 150) kg over 4 × 31,536,000 s = 1,300,000 g / 126,144,000 s.
        let g_per_s = 1_300_000.0 / 126_144_000.0;
        assert!((m.grams_per_second() - g_per_s).abs() < 1e-15);
        assert!((m.grams_for(3600.0) - 37.100_456_621_004_56).abs() < 1e-9, "{}", m.grams_for(3600.0));
        assert_eq!(m.source, CCF_SOURCE);
    }

    #[test]
    fn overrides_and_disable() {
        let host = HostHardware { ram_bytes: 64 << 30, sockets: 2, gpus: 1 };
        let o = EmbodiedOverrides {
            server_kgco2e: Some(3000.0),
            server_lifetime_years: Some(6.0),
            gpu_kgco2e: Some(0.0),
            ..Default::default()
        };
        let m = EmbodiedModel::new(&host, &o).unwrap();
        assert_eq!((m.server_kgco2e, m.server_lifetime_years, m.gpu_lifetime_years), (3000.0, 6.0, 4.0));
        assert!((m.grams_per_second() - 3_000_000.0 / (6.0 * SECONDS_PER_YEAR)).abs() < 1e-15);
        assert!(m.source.starts_with("config overrides"));
        let off = EmbodiedOverrides { enabled: Some(false), ..Default::default() };
        assert!(EmbodiedModel::new(&host, &off).is_none());
    }
}
