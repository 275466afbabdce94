//! Power usage effectiveness: facility energy = IT energy × PUE.

/// Default PUE: the average annual PUE reported by the Uptime Institute Global Data Center
/// Survey 2023 (1.58). The 2024 survey reports 1.56 (Green Algorithms `defaults_PUE.csv`).
pub const DEFAULT_PUE: f64 = 1.58;
/// Where [`DEFAULT_PUE`] comes from.
pub const DEFAULT_PUE_SOURCE: &str =
    "default: average data-centre PUE, Uptime Institute Global Data Center Survey 2023";

/// A PUE with its origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Pue {
    pub value: f64,
    /// "default: ...", "--pue", "config FILE", ...
    pub source: String,
}

/// A PUE below 1 or not finite.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("PUE {0} is not valid: expected a number ≥ 1.0 (facility energy / IT energy; 1.0 = no overhead)")]
pub struct InvalidPue(pub f64);

impl Default for Pue {
    fn default() -> Self {
        Self { value: DEFAULT_PUE, source: DEFAULT_PUE_SOURCE.to_string() }
    }
}

impl Pue {
    /// A user-given PUE, checked.
    pub fn new(value: f64, source: impl Into<String>) -> Result<Self, InvalidPue> {
        check_pue(value)?;
        Ok(Self { value, source: source.into() })
    }

    /// Facility energy for an IT energy (same unit).
    pub fn facility(&self, it_energy: f64) -> f64 {
        it_energy * self.value
    }
}

/// Checks that a PUE is finite and at least 1.
pub fn check_pue(value: f64) -> Result<(), InvalidPue> {
    if value.is_finite() && value >= 1.0 { Ok(()) } else { Err(InvalidPue(value)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_facility_energy() {
        let p = Pue::default();
        assert_eq!(p.value, 1.58);
        assert!(p.source.contains("Uptime Institute"));
        assert_eq!(p.facility(100.0), 158.0);
    }

    #[test]
    fn rejects_below_one() {
        assert_eq!(Pue::new(1.2, "--pue").unwrap().value, 1.2);
        assert!(Pue::new(0.9, "--pue").unwrap_err().to_string().contains("expected a number ≥ 1.0"));
        assert!(Pue::new(f64::NAN, "--pue").is_err());
    }
}
