//! Wasted I/O: detectors over the per-interval file activity of [`crate::io::IoInterval`],
//! keyed by process tree. Pure logic: the only I/O (confirming equal content) goes through
//! [`hash::ContentHasher`].
//!
//! Feed every interval to [`WasteTracker::observe`]; ask [`WasteTracker::findings`] for the
//! findings over everything observed so far (largest first). Each kind of finding is one
//! [`Detector`] in its own module, listed in [`DETECTORS`]: a new kind is one new module.
//! Thresholds in [`Thresholds`], energy coefficients in [`Coefficients`]; see `docs/io.md`.

mod copy;
mod duplicate;
pub mod hash;
mod refetch;
mod reread;
mod write_then_delete;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use crate::io::ranges::RangeSet;
use crate::io::{FileId, IoDetail, IoInterval};
use hash::ContentHasher;

/// Kinds of findings, as in the JSON `kind` field; `Display` prints the same names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Reread,
    Refetch,
    Copy,
    WriteThenDelete,
    Duplicate,
}

impl FindingKind {
    /// The name in JSON and text outputs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reread => "reread",
            Self::Refetch => "refetch",
            Self::Copy => "copy",
            Self::WriteThenDelete => "write_then_delete",
            Self::Duplicate => "duplicate",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One finding of wasted I/O. JSON field names as in the issue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The process that did most of it, and its command name.
    pub pid: u32,
    pub comm: String,
    /// Root of the process tree it belongs to (not in the JSON schema).
    #[serde(skip)]
    pub tree: u32,
    pub paths: Vec<String>,
    /// Wasted bytes: re-read, re-fetched, copied, written then deleted, or duplicated.
    pub bytes: u64,
    /// How many times: reads of the data, fetches, copies, files, identical files.
    pub count: u64,
    /// Estimated energy: measured CPU time in the syscalls × CPU energy per CPU-second, plus
    /// bytes × the documented coefficient.
    pub energy_j: f64,
    pub emissions_g: f64,
    pub suggestion: String,
    /// The unit the bytes were observed in: `"bytes"` (syscall tier) or `"4 KiB pages"`
    /// (page-cache tier: reads and writes are counted in whole pages).
    pub granularity: &'static str,
}

/// Device energy per byte. Estimates, configurable; see `docs/io.md` for their derivation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefficients {
    /// Energy per byte moved through memory (page cache to user buffer, copies): DRAM
    /// read+write, about 0.5 nJ/byte (order of magnitude from DDR4 ~15–20 pJ/bit per access).
    pub memory_j_per_byte: f64,
    /// Energy per byte read from or written to storage: about 2.5 nJ/byte (a datacentre NVMe
    /// SSD drawing ~8 W active at ~3 GB/s).
    pub storage_j_per_byte: f64,
}

impl Default for Coefficients {
    fn default() -> Self {
        Self { memory_j_per_byte: 0.5e-9, storage_j_per_byte: 2.5e-9 }
    }
}

/// Minimum sizes for a finding (below them the waste is noise).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Re-read: logical bytes ≥ `reread_factor` × distinct bytes, and redundant ≥ `min_bytes`.
    pub reread_factor: f64,
    /// Smallest wasted byte count reported, for every kind.
    pub min_bytes: u64,
    /// Copy by bytes: source and destination sizes within this fraction of each other.
    pub copy_size_tolerance: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { reread_factor: 2.0, min_bytes: 1 << 20, copy_size_tolerance: 0.01 }
    }
}

/// What the tracker needs to know about a process when it sees its I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Root of its tree.
    pub root: u32,
    pub comm: String,
}

/// The interval's energy context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntervalEnergy {
    /// Joules per CPU-second of busy CPU in this interval (from the energy model or meter).
    pub cpu_j_per_cpu_s: f64,
    /// Carbon intensity, gCO2e per kWh.
    pub g_per_kwh: f64,
}

/// What the tracker knows of one file as used by one process tree.
#[derive(Clone, Debug, Default)]
pub struct TreeFile {
    /// Bytes per tgid (the finding names the one that did most).
    pub by_tgid: BTreeMap<u32, u64>,
    pub uids: BTreeSet<u32>,
    pub path: Option<PathBuf>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ranges: RangeSet,
    pub write_ranges: RangeSet,
    pub cache_bytes: u64,
    pub cache_ranges: RangeSet,
    /// CPU energy of the I/O on this file (J) and its emissions (g).
    pub cpu: Cost,
    /// Observed intervals (sequence numbers) of the first and last read, and of writes
    /// (at most `MAX_WRITE_INTERVALS` kept: then the last slot stands for all later ones).
    pub first_read: Option<u64>,
    pub last_read: u64,
    pub write_intervals: Vec<u64>,
}

impl TreeFile {
    /// The tgid that did most of this tree's I/O on the file.
    pub fn top_tgid(&self) -> u32 {
        self.by_tgid.iter().max_by_key(|(p, b)| (**b, std::cmp::Reverse(**p))).map_or(0, |(p, _)| *p)
    }
}

const MAX_WRITE_INTERVALS: usize = 64;

/// Energy (J) and emissions (g) of some CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub j: f64,
    pub g: f64,
}

impl Cost {
    pub fn scaled(self, share: f64) -> Cost {
        Cost { j: self.j * share, g: self.g * share }
    }

    pub fn plus(self, o: Cost) -> Cost {
        Cost { j: self.j + o.j, g: self.g + o.g }
    }
}

/// An in-kernel copy between two regular files, accumulated.
#[derive(Clone, Debug, Default)]
pub struct CopyAcc {
    pub tgid: u32,
    pub src_path: Option<PathBuf>,
    pub dst_path: Option<PathBuf>,
    pub bytes: u64,
    pub calls: u64,
    pub cpu: Cost,
}

/// Everything observed, as the detectors read it.
#[derive(Debug, Default)]
pub struct Observed {
    /// Per (tree root, file).
    pub files: HashMap<(u32, FileId), TreeFile>,
    /// Per (tree root, source, destination).
    pub copies: BTreeMap<(u32, FileId, FileId), CopyAcc>,
    /// Files unlinked: the tgid and the path.
    pub unlinked: HashMap<FileId, (u32, PathBuf)>,
    comms: HashMap<u32, String>,
    /// Sum of g/kWh over intervals, for the per-byte part's emissions.
    g_per_kwh_sum: f64,
    intervals: u64,
    /// Whether any interval came from the page-cache tier (its byte counts are whole pages).
    pages: bool,
}

/// The named parts of a finding a detector reports.
pub struct Draft {
    pub kind: FindingKind,
    /// The tree root and the process that did most of it.
    pub tree: u32,
    pub pid: u32,
    pub paths: Vec<String>,
    pub bytes: u64,
    pub count: u64,
    /// CPU energy of the I/O involved.
    pub cpu: Cost,
    /// Device energy per byte (the [`Coefficients`]).
    pub j_per_byte: f64,
    pub suggestion: &'static str,
}

impl Observed {
    fn mean_g_per_kwh(&self) -> f64 {
        if self.intervals == 0 { 0.0 } else { self.g_per_kwh_sum / self.intervals as f64 }
    }

    /// A finding from a draft: the command name, the energy (CPU part + bytes × J/byte), the
    /// emissions and the granularity.
    pub fn finding(&self, d: Draft) -> Finding {
        let byte_j = d.bytes as f64 * d.j_per_byte;
        Finding {
            kind: d.kind,
            pid: d.pid,
            comm: self.comms.get(&d.pid).cloned().unwrap_or_default(),
            tree: d.tree,
            paths: d.paths,
            bytes: d.bytes,
            count: d.count,
            energy_j: d.cpu.j + byte_j,
            emissions_g: d.cpu.g + g_of(byte_j, self.mean_g_per_kwh()),
            suggestion: d.suggestion.into(),
            granularity: if self.pages { "4 KiB pages" } else { "bytes" },
        }
    }
}

/// A path for a finding (`(unresolved)` when the agent could not resolve it).
pub fn path_str(p: &Option<PathBuf>) -> String {
    p.as_ref().map_or_else(|| "(unresolved)".to_string(), |p| p.display().to_string())
}

/// What a detector works with: everything observed, the thresholds and coefficients, the
/// content hasher, and the findings so far (it adds its own).
pub struct Context<'a> {
    pub seen: &'a Observed,
    pub th: &'a Thresholds,
    pub co: &'a Coefficients,
    pub hasher: &'a mut dyn ContentHasher,
    pub out: &'a mut Vec<Finding>,
}

/// One kind of finding.
pub trait Detector {
    /// Adds this kind's findings over everything observed to `cx.out`.
    fn find(&self, cx: &mut Context<'_>);
}

/// Every detector, in the order they run (copies before userspace copies' candidates use
/// the in-kernel pairs: see [`copy`]).
pub const DETECTORS: &[&dyn Detector] = &[
    &reread::Reread,
    &refetch::Refetch,
    &copy::Copies,
    &write_then_delete::WriteThenDelete,
    &duplicate::Duplicates,
];

/// Accumulates I/O activity per process tree and file over a run or a window.
#[derive(Debug)]
pub struct WasteTracker {
    thresholds: Thresholds,
    coefficients: Coefficients,
    capacity: usize,
    seen: Observed,
    /// Activity not tracked because `capacity` was reached.
    pub dropped: u64,
}

fn g_of(j: f64, g_per_kwh: f64) -> f64 {
    j / 3.6e6 * g_per_kwh
}

impl WasteTracker {
    /// `capacity` bounds the (tree, file) entries kept.
    pub fn new(thresholds: Thresholds, coefficients: Coefficients, capacity: usize) -> Self {
        Self { thresholds, coefficients, capacity, seen: Observed::default(), dropped: 0 }
    }

    /// Adds one interval. `process` tells each tgid's tree root and command name.
    pub fn observe(&mut self, iv: &IoInterval, energy: IntervalEnergy, process: &dyn Fn(u32) -> ProcessInfo) {
        let capacity = self.capacity;
        let s = &mut self.seen;
        s.intervals += 1;
        s.g_per_kwh_sum += energy.g_per_kwh;
        s.pages |= iv.detail == IoDetail::PageCache;
        let info = |tgid: u32, comms: &mut HashMap<u32, String>| {
            let p = process(tgid);
            if comms.len() < capacity {
                comms.insert(tgid, p.comm);
            }
            p.root
        };
        let cost = |ns: u64| {
            let j = ns as f64 / 1e9 * energy.cpu_j_per_cpu_s;
            Cost { j, g: g_of(j, energy.g_per_kwh) }
        };
        for f in &iv.files {
            let root = info(f.tgid, &mut s.comms);
            let key = (root, f.file);
            if !s.files.contains_key(&key) && s.files.len() >= capacity {
                self.dropped += 1;
                continue;
            }
            let t = s.files.entry(key).or_default();
            *t.by_tgid.entry(f.tgid).or_default() += f.read_bytes + f.write_bytes + f.cache_miss_bytes;
            t.uids.insert(f.uid);
            if f.path.is_some() {
                t.path = f.path.clone();
            }
            t.read_bytes += f.read_bytes;
            t.write_bytes += f.write_bytes;
            t.read_ranges.union(&f.read_ranges);
            t.write_ranges.union(&f.write_ranges);
            t.cache_bytes += f.cache_miss_bytes;
            t.cache_ranges.union(&f.cache_ranges);
            if f.read_bytes > 0 {
                t.first_read.get_or_insert(s.intervals);
                t.last_read = s.intervals;
            }
            if f.write_bytes > 0 && t.write_intervals.last() != Some(&s.intervals) {
                if t.write_intervals.len() == MAX_WRITE_INTERVALS {
                    t.write_intervals.pop();
                }
                t.write_intervals.push(s.intervals);
            }
            t.cpu = t.cpu.plus(cost(f.io_ns));
        }
        for c in &iv.copies {
            if !(c.src_is_file && c.dst_is_file) {
                continue;
            }
            let root = info(c.tgid, &mut s.comms);
            let a = s.copies.entry((root, c.src, c.dst)).or_default();
            a.tgid = c.tgid;
            a.src_path = c.src_path.clone().or(a.src_path.take());
            a.dst_path = c.dst_path.clone().or(a.dst_path.take());
            a.bytes += c.bytes;
            a.calls += c.calls;
            a.cpu = a.cpu.plus(cost(c.io_ns));
        }
        for u in &iv.unlinks {
            if let (Some(file), Some(path)) = (u.file, &u.path)
                && s.unlinked.len() < capacity
            {
                s.unlinked.insert(file, (u.tgid, path.clone()));
            }
        }
    }

    /// Findings over everything observed, largest `bytes` first. `hasher` confirms equal
    /// content for duplicates and for copies matched by size.
    pub fn findings(&self, hasher: &mut dyn ContentHasher) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut cx =
            Context { seen: &self.seen, th: &self.thresholds, co: &self.coefficients, hasher, out: &mut out };
        for d in DETECTORS {
            d.find(&mut cx);
        }
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.kind.cmp(&b.kind)));
        out
    }
}

#[cfg(test)]
mod tests;
