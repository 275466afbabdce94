//! Energy meters: cumulative joules per domain, from whatever the machine offers.
//!
//! Pipeline position: kernel probes → usage per interval → **meters** → attribution →
//! carbon → outputs.
//!
//! Every meter implements [`EnergyMeter`]: each read returns, per *resource* (package N,
//! the platform, GPU N, the whole machine) and *domain* (package, core, uncore, dram,
//! psys, gpu), the energy in joules accumulated since the meter was opened (counter
//! wraparound already corrected). [`MeterSet`] turns those cumulative figures into
//! per-interval joules per domain ([`IntervalEnergyReading`]), without ever summing a
//! domain and the domain that contains it.
//!
//! Selection order (see [`discover`]): RAPL through the perf `power` PMU, else RAPL
//! through powercap sysfs, else the estimation model; NVIDIA GPUs through NVML are added
//! when a driver is present. Every reader is rooted at `sysfs_root` (and `/proc` at
//! `proc_root`) so that tests drive it with fake trees.

pub mod accountant;
pub mod config;
pub mod gpu_tally;
pub mod meter_set;
pub mod model;
pub mod nvml;
pub mod perf_power;
pub mod powercap;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::usage::IntervalUsage;

pub use accountant::{EnergyAccountant, IntervalEnergy, MeterSummary};
pub use config::{EnergyConfig, MeterChoice};
pub use gpu_tally::GpuTally;
pub use meter_set::{IntervalEnergyReading, MeterProbe, MeterSet, discover};

/// What a measurement measures. Containment: `Package` ⊃ `Core`, `Uncore`; `Psys` ⊃
/// package and dram (the whole SoC platform). `Gpu` is a discrete GPU (NVML); the
/// integrated GPU plane of RAPL (`energy-gpu`, powercap `uncore`) is `Uncore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// A whole CPU package (socket or die): cores, caches, uncore, integrated GPU.
    Package,
    /// The cores of a package (RAPL PP0). Contained in `Package`.
    Core,
    /// The uncore / integrated graphics plane of a package (RAPL PP1). Contained in `Package`.
    Uncore,
    /// Memory attached to a package.
    Dram,
    /// The whole platform (RAPL psys): contains packages and dram.
    Psys,
    /// A discrete GPU.
    Gpu,
}

impl Domain {
    /// The lower-case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Package => "package",
            Domain::Core => "core",
            Domain::Uncore => "uncore",
            Domain::Dram => "dram",
            Domain::Psys => "psys",
            Domain::Gpu => "gpu",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The physical thing a measurement belongs to (Alumet's "resource").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Resource {
    /// CPU package (socket) N.
    Package(u32),
    /// Die D of package P (multi-die packages expose one RAPL zone per die).
    Die {
        /// Package (socket) number.
        package: u32,
        /// Die number within the package.
        die: u32,
    },
    /// The platform as a whole (psys).
    Platform,
    /// GPU N (NVML index). MIG instances are rolled up to their GPU.
    Gpu(u32),
    /// The whole machine (estimation model).
    Machine,
}

/// One cumulative energy figure: joules consumed by `domain` of `resource` since the
/// meter was opened.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// The physical thing measured.
    pub resource: Resource,
    /// The energy domain.
    pub domain: Domain,
    /// Joules since the meter was opened (monotonic, wraparound corrected).
    pub joules: f64,
}

/// Which meter produced a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum MeterSource {
    /// RAPL counters through the perf `power` PMU.
    #[serde(rename = "rapl-perf")]
    RaplPerf,
    /// RAPL counters through `/sys/class/powercap`.
    #[serde(rename = "rapl-powercap")]
    RaplPowercap,
    /// NVIDIA GPUs through NVML.
    #[serde(rename = "nvml")]
    Nvml,
    /// The estimation model (utilization × CPU power table, installed memory × W/GB).
    #[serde(rename = "model")]
    Model,
}

impl MeterSource {
    /// The name used in JSON (`meter.source`) and by `doctor`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterSource::RaplPerf => "rapl-perf",
            MeterSource::RaplPowercap => "rapl-powercap",
            MeterSource::Nvml => "nvml",
            MeterSource::Model => "model",
        }
    }

    /// Whether this meter's figures are estimated rather than metered.
    pub fn estimated(self) -> bool {
        matches!(self, MeterSource::Model)
    }
}

impl fmt::Display for MeterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a meter is told at each read.
#[derive(Clone, Copy, Debug)]
pub struct Tick<'a> {
    /// Seconds since the previous read (or since the meter was opened).
    pub interval_s: f64,
    /// CPU use in that interval (the estimation model needs it; counters ignore it).
    pub usage: &'a IntervalUsage,
}

/// A source of cumulative energy per (resource, domain).
pub trait EnergyMeter: Send {
    /// Which meter this is.
    fn source(&self) -> MeterSource;
    /// One line saying what the meter found (zones, sockets, table row...).
    fn describe(&self) -> String;
    /// Cumulative joules per (resource, domain) since the meter was opened.
    fn read(&mut self, tick: &Tick<'_>) -> Result<Vec<Measurement>, MeterError>;
    /// Static (idle) power per domain when the meter knows it (the estimation model does);
    /// metered sources return nothing and static power is configured or learned.
    fn static_power_w(&self, _usage: &IntervalUsage) -> Vec<(Domain, f64)> {
        Vec::new()
    }
}

/// Why a meter could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// A RAPL energy file exists but is not readable.
    #[error(
        "cannot read {path}: permission denied; RAPL energy counters are readable only by root since \
         Linux 5.10 (CVE-2020-8694): run carbon-agent as root"
    )]
    PermissionDenied {
        /// The file.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file held something other than what the kernel writes there.
    #[error("{path}: unexpected contents {content:?}: expected {expected}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held (trimmed, cut to 80 characters).
        content: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The meter is not present on this machine.
    #[error("{0}")]
    Unavailable(String),
    /// The perf_event_open syscall or a counter read failed.
    #[error("perf counter {what}: {source}")]
    Perf {
        /// Which counter.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// NVML reported an error.
    #[error("NVML: {0}")]
    Nvml(String),
}

/// Reads whole files. The real one is [`FsReader`]; tests inject errors (permission
/// denied as root, vanished files) with their own.
pub trait FileReader: Send + Sync {
    /// The whole file as a string.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// The names of the entries of a directory, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsReader;

impl FileReader for FsReader {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Reads a file and trims it; a permission error becomes [`MeterError::PermissionDenied`].
pub(crate) fn read_trimmed(reader: &dyn FileReader, path: &Path) -> Result<String, MeterError> {
    match reader.read_to_string(path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(MeterError::PermissionDenied { path: path.to_owned() })
        }
        Err(source) => Err(MeterError::Io { path: path.to_owned(), source }),
    }
}

/// Reads a file holding one unsigned decimal integer.
pub(crate) fn read_u64(reader: &dyn FileReader, path: &Path) -> Result<u64, MeterError> {
    let s = read_trimmed(reader, path)?;
    s.parse().map_err(|_| malformed(path, &s, "an unsigned decimal integer"))
}

/// Builds a [`MeterError::Malformed`], cutting long contents.
pub(crate) fn malformed(path: &Path, content: &str, expected: &'static str) -> MeterError {
    MeterError::Malformed { path: path.to_owned(), content: content.chars().take(80).collect(), expected }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fake sysfs trees and an error-injecting reader.
    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{FileReader, FsReader};

    /// Writes `contents` at `root/rel`, creating parent directories.
    pub fn write(root: &Path, rel: &str, contents: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    /// Reads the real file system, except for paths given an injected error.
    #[derive(Default)]
    pub struct FaultyReader {
        faults: Mutex<BTreeMap<PathBuf, io::ErrorKind>>,
    }

    impl FaultyReader {
        /// Every later read of `path` fails with `kind`.
        pub fn fail(&self, path: PathBuf, kind: io::ErrorKind) {
            self.faults.lock().unwrap().insert(path, kind);
        }
    }

    impl FileReader for FaultyReader {
        fn read_to_string(&self, path: &Path) -> io::Result<String> {
            if let Some(kind) = self.faults.lock().unwrap().get(path) {
                return Err(io::Error::from(*kind));
            }
            FsReader.read_to_string(path)
        }
    }
}
