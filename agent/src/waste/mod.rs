//! Wasted I/O: detectors over the per-interval file activity of [`crate::io::IoInterval`],
//! keyed by process tree. Pure logic: the only I/O (confirming equal content) goes through
//! [`hash::ContentHasher`].
//!
//! Feed every interval to [`WasteTracker::observe`]; ask [`WasteTracker::findings`] for the
//! findings over everything observed so far (largest first). Thresholds in [`Thresholds`],
//! energy coefficients in [`Coefficients`]; see `docs/io.md`.

pub mod hash;
pub mod ranges;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use crate::io::{FileId, IoInterval};
use hash::ContentHasher;
use ranges::RangeSet;

/// Kinds of findings, as in the JSON `kind` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Reread,
    Refetch,
    Copy,
    WriteThenDelete,
    Duplicate,
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

#[derive(Clone, Debug, Default)]
struct TreeFile {
    /// Bytes per tgid (the finding names the one that did most).
    by_tgid: BTreeMap<u32, u64>,
    uids: BTreeSet<u32>,
    path: Option<PathBuf>,
    read_bytes: u64,
    write_bytes: u64,
    read_ranges: RangeSet,
    write_ranges: RangeSet,
    cache_bytes: u64,
    cache_ranges: RangeSet,
    /// CPU energy of the syscalls on this file (J) and its emissions (g).
    cpu_j: f64,
    cpu_g: f64,
    /// Observed intervals (sequence numbers) of the first and last read, and of writes
    /// (at most `MAX_WRITE_INTERVALS` kept: then the last slot stands for all later ones).
    first_read: Option<u64>,
    last_read: u64,
    write_intervals: Vec<u64>,
}

const MAX_WRITE_INTERVALS: usize = 64;

#[derive(Clone, Debug, Default)]
struct CopyAcc {
    tgid: u32,
    src_path: Option<PathBuf>,
    dst_path: Option<PathBuf>,
    bytes: u64,
    calls: u64,
    cpu_j: f64,
    cpu_g: f64,
}

/// Accumulates I/O activity per process tree and file over a run or a window.
#[derive(Debug)]
pub struct WasteTracker {
    thresholds: Thresholds,
    coefficients: Coefficients,
    capacity: usize,
    files: HashMap<(u32, FileId), TreeFile>,
    copies: BTreeMap<(u32, FileId, FileId), CopyAcc>,
    unlinked: HashMap<FileId, (u32, PathBuf)>,
    comms: HashMap<u32, String>,
    /// Sum of g/kWh × interval weight, for the per-byte part's emissions.
    g_per_kwh_sum: f64,
    intervals: u64,
    /// Activity not tracked because `capacity` was reached.
    pub dropped: u64,
}

fn g_of(j: f64, g_per_kwh: f64) -> f64 {
    j / 3.6e6 * g_per_kwh
}

impl WasteTracker {
    /// `capacity` bounds the (tree, file) entries kept.
    pub fn new(thresholds: Thresholds, coefficients: Coefficients, capacity: usize) -> Self {
        Self {
            thresholds,
            coefficients,
            capacity,
            files: HashMap::new(),
            copies: BTreeMap::new(),
            unlinked: HashMap::new(),
            comms: HashMap::new(),
            g_per_kwh_sum: 0.0,
            intervals: 0,
            dropped: 0,
        }
    }

    /// Adds one interval. `process` tells each tgid's tree root and command name.
    pub fn observe(&mut self, iv: &IoInterval, energy: IntervalEnergy, process: &dyn Fn(u32) -> ProcessInfo) {
        self.intervals += 1;
        self.g_per_kwh_sum += energy.g_per_kwh;
        let info = |tgid: u32, comms: &mut HashMap<u32, String>| {
            let p = process(tgid);
            if comms.len() < self.capacity {
                comms.insert(tgid, p.comm);
            }
            p.root
        };
        for f in &iv.files {
            let root = info(f.tgid, &mut self.comms);
            let key = (root, f.file);
            if !self.files.contains_key(&key) && self.files.len() >= self.capacity {
                self.dropped += 1;
                continue;
            }
            let t = self.files.entry(key).or_default();
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
                t.first_read.get_or_insert(self.intervals);
                t.last_read = self.intervals;
            }
            if f.write_bytes > 0 && t.write_intervals.last() != Some(&self.intervals) {
                if t.write_intervals.len() == MAX_WRITE_INTERVALS {
                    t.write_intervals.pop();
                }
                t.write_intervals.push(self.intervals);
            }
            let j = f.io_ns as f64 / 1e9 * energy.cpu_j_per_cpu_s;
            t.cpu_j += j;
            t.cpu_g += g_of(j, energy.g_per_kwh);
        }
        for c in &iv.copies {
            if !(c.src_is_file && c.dst_is_file) {
                continue;
            }
            let root = info(c.tgid, &mut self.comms);
            let a = self.copies.entry((root, c.src, c.dst)).or_default();
            a.tgid = c.tgid;
            a.src_path = c.src_path.clone().or(a.src_path.take());
            a.dst_path = c.dst_path.clone().or(a.dst_path.take());
            a.bytes += c.bytes;
            a.calls += c.calls;
            let j = c.io_ns as f64 / 1e9 * energy.cpu_j_per_cpu_s;
            a.cpu_j += j;
            a.cpu_g += g_of(j, energy.g_per_kwh);
        }
        for u in &iv.unlinks {
            if let (Some(file), Some(path)) = (u.file, &u.path)
                && self.unlinked.len() < self.capacity
            {
                self.unlinked.insert(file, (u.tgid, path.clone()));
            }
        }
    }

    fn mean_g_per_kwh(&self) -> f64 {
        if self.intervals == 0 { 0.0 } else { self.g_per_kwh_sum / self.intervals as f64 }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call per finding kind; the tuple pairs keep them readable"
    )]
    fn finding(
        &self,
        kind: FindingKind,
        tree: u32,
        pid: u32,
        paths: Vec<String>,
        (bytes, count): (u64, u64),
        (cpu_j, cpu_g): (f64, f64),
        j_per_byte: f64,
        suggestion: &str,
    ) -> Finding {
        let byte_j = bytes as f64 * j_per_byte;
        Finding {
            kind,
            pid,
            comm: self.comms.get(&pid).cloned().unwrap_or_default(),
            tree,
            paths,
            bytes,
            count,
            energy_j: cpu_j + byte_j,
            emissions_g: cpu_g + g_of(byte_j, self.mean_g_per_kwh()),
            suggestion: suggestion.into(),
        }
    }

    /// Findings over everything observed, largest `bytes` first. `hasher` confirms equal
    /// content for duplicates and for copies matched by size.
    pub fn findings(&self, hasher: &mut dyn ContentHasher) -> Vec<Finding> {
        let th = self.thresholds;
        let co = self.coefficients;
        let mut out = Vec::new();
        let path_str = |p: &Option<PathBuf>| {
            p.as_ref().map_or_else(|| "(unresolved)".to_string(), |p| p.display().to_string())
        };
        let top = |t: &TreeFile| {
            t.by_tgid.iter().max_by_key(|(p, b)| (**b, std::cmp::Reverse(**p))).map_or(0, |(p, _)| *p)
        };

        // Files written (anywhere) in the window, per file: their written ranges and intervals.
        let mut written: HashMap<FileId, (RangeSet, Vec<u64>)> = HashMap::new();
        let mut read_anywhere: BTreeSet<FileId> = BTreeSet::new();
        for ((_, id), t) in &self.files {
            if t.write_bytes > 0 {
                let w = written.entry(*id).or_default();
                w.0.union(&t.write_ranges);
                w.1.extend(&t.write_intervals);
            }
            if t.read_bytes > 0 {
                read_anywhere.insert(*id);
            }
        }

        // Re-read.
        for ((root, id), t) in &self.files {
            let distinct = t.read_ranges.covered();
            if distinct == 0 || t.read_bytes < distinct {
                continue;
            }
            // Data rewritten in place between reads (in an interval after the first read and
            // before the last) is new data, not a re-read. Writes in the same interval as a
            // read cannot be ordered and are not held against it.
            let first = t.first_read.unwrap_or(0);
            if written.get(id).is_some_and(|(ranges, when)| {
                ranges.overlap(&t.read_ranges) > 0 && when.iter().any(|w| *w > first && *w < t.last_read)
            }) {
                continue;
            }
            let redundant = t.read_bytes - distinct;
            if (t.read_bytes as f64) < th.reread_factor * distinct as f64 || redundant < th.min_bytes {
                continue;
            }
            let share = redundant as f64 / t.read_bytes as f64;
            out.push(self.finding(
                FindingKind::Reread,
                *root,
                top(t),
                vec![path_str(&t.path)],
                (redundant, t.read_bytes / distinct),
                (t.cpu_j * share, t.cpu_g * share),
                co.memory_j_per_byte,
                "The same file data is read again and again: keep it in memory (cache the parsed data \
                 between epochs/passes), or use a smaller subset while debugging.",
            ));
        }

        // Re-fetch from storage: per file over all trees.
        // Per file: bytes added to the cache, their distinct ranges, the busiest (tree, tgid),
        // that tgid's bytes, and the path.
        type CacheAcc = (u64, RangeSet, u32, u32, u64, Option<PathBuf>);
        let mut cache: BTreeMap<FileId, CacheAcc> = BTreeMap::new();
        for ((root, id), t) in &self.files {
            if t.cache_bytes == 0 {
                continue;
            }
            let e = cache.entry(*id).or_insert_with(|| (0, RangeSet::default(), *root, top(t), 0, None));
            e.0 += t.cache_bytes;
            e.1.union(&t.cache_ranges);
            if t.cache_bytes > e.4 {
                (e.2, e.3, e.4) = (*root, top(t), t.cache_bytes);
            }
            if t.path.is_some() {
                e.5 = t.path.clone();
            }
        }
        for (total, ranges, root, pid, _, path) in cache.values() {
            let distinct = ranges.covered();
            let refetched = total.saturating_sub(distinct);
            if distinct == 0 || refetched < th.min_bytes {
                continue;
            }
            out.push(self.finding(
                FindingKind::Refetch,
                *root,
                *pid,
                vec![path_str(path)],
                (refetched, total.div_ceil(distinct)),
                (0.0, 0.0),
                co.storage_j_per_byte,
                "The same file pages were read from storage more than once (evicted from the page \
                 cache in between): read it once and keep it, or give the machine/cgroup more memory \
                 for the page cache.",
            ));
        }

        // Copies done in the kernel.
        let mut copied_pairs = BTreeSet::new();
        for ((root, src, dst), c) in &self.copies {
            copied_pairs.insert((*root, *src, *dst));
            if c.bytes < th.min_bytes || src == dst {
                continue;
            }
            out.push(self.finding(
                FindingKind::Copy,
                *root,
                c.tgid,
                vec![path_str(&c.src_path), path_str(&c.dst_path)],
                (c.bytes, 1),
                (c.cpu_j, c.cpu_g),
                co.storage_j_per_byte,
                "A file is copied: read the original in place, or use a hard link / reflink \
                 (cp --reflink, a copy-on-write file system) instead of a full copy.",
            ));
        }
        // Copies through userspace: a tree reads all of one file and writes another of the same
        // size, confirmed by content.
        let mut by_root: BTreeMap<u32, Vec<(&FileId, &TreeFile)>> = BTreeMap::new();
        for ((root, id), t) in &self.files {
            by_root.entry(*root).or_default().push((id, t));
        }
        for (root, files) in &by_root {
            let mut used = BTreeSet::new();
            for (dst_id, dst) in
                files.iter().filter(|(_, t)| t.write_bytes >= th.min_bytes && t.read_bytes == 0)
            {
                let size = dst.write_ranges.covered();
                let best = files
                    .iter()
                    .filter(|(id, t)| {
                        *id != *dst_id
                            && t.write_bytes == 0
                            && t.read_bytes > 0
                            && !used.contains(*id)
                            && !copied_pairs.contains(&(*root, **id, **dst_id))
                    })
                    .filter(|(_, t)| {
                        let s = t.read_ranges.covered();
                        (s as f64 - size as f64).abs() <= th.copy_size_tolerance * size.max(s) as f64
                    })
                    .find(|(_, src)| match (&src.path, &dst.path) {
                        (Some(a), Some(b)) => {
                            matches!((hasher.content(a), hasher.content(b)), (Some(x), Some(y)) if x == y)
                        }
                        _ => false,
                    });
                if let Some((src_id, src)) = best {
                    used.insert(**src_id);
                    out.push(self.finding(
                        FindingKind::Copy,
                        *root,
                        top(dst),
                        vec![path_str(&src.path), path_str(&dst.path)],
                        (size, 1),
                        (src.cpu_j + dst.cpu_j, src.cpu_g + dst.cpu_g),
                        co.memory_j_per_byte + co.storage_j_per_byte,
                        "A file is copied through the program (read, then written unchanged): read \
                         the original in place, or link/reflink it instead of copying.",
                    ));
                }
            }
        }

        // Write then delete, never read.
        for ((root, id), t) in &self.files {
            if t.write_bytes < th.min_bytes || read_anywhere.contains(id) {
                continue;
            }
            let Some((_, path)) = self.unlinked.get(id) else {
                continue;
            };
            out.push(self.finding(
                FindingKind::WriteThenDelete,
                *root,
                top(t),
                vec![path.display().to_string()],
                (t.write_bytes, 1),
                (t.cpu_j, t.cpu_g),
                co.memory_j_per_byte,
                "This file was written and deleted without ever being read: don't write it (or \
                 send it to /dev/null, or keep it in memory).",
            ));
        }

        // Duplicate datasets: different inodes, same content, read by different users or trees.
        // Per file: the (uid, tree) pairs that read it, its path, the first reader's tree and
        // tgid, and the CPU energy and emissions of those reads.
        type Readers = (BTreeSet<(u32, u32)>, PathBuf, u32, u32, f64, f64);
        let mut readers: BTreeMap<FileId, Readers> = BTreeMap::new();
        for ((root, id), t) in &self.files {
            let (Some(path), true) = (&t.path, t.read_bytes > 0) else {
                continue;
            };
            let e = readers
                .entry(*id)
                .or_insert_with(|| (BTreeSet::new(), path.clone(), *root, top(t), 0.0, 0.0));
            for uid in &t.uids {
                e.0.insert((*uid, *root));
            }
            e.4 += t.cpu_j;
            e.5 += t.cpu_g;
        }
        let mut by_size: BTreeMap<u64, Vec<FileId>> = BTreeMap::new();
        for (id, r) in &readers {
            if let Some(size) = hasher.size(&r.1).filter(|s| *s >= th.min_bytes) {
                by_size.entry(size).or_default().push(*id);
            }
        }
        for (size, ids) in by_size.into_iter().filter(|(_, v)| v.len() > 1) {
            let mut by_content: BTreeMap<[u64; 2], Vec<FileId>> = BTreeMap::new();
            for id in ids {
                if let Some(c) = hasher.content(&readers[&id].1).filter(|c| c.size == size) {
                    by_content.entry(c.digest).or_default().push(id);
                }
            }
            for group in by_content.into_values().filter(|g| g.len() > 1) {
                let who: BTreeSet<(u32, u32)> =
                    group.iter().flat_map(|id| readers[id].0.iter().copied()).collect();
                let users: BTreeSet<u32> = who.iter().map(|w| w.0).collect();
                let trees: BTreeSet<u32> = who.iter().map(|w| w.1).collect();
                if users.len() < 2 && trees.len() < 2 {
                    continue;
                }
                let first = &readers[&group[0]];
                let (cpu_j, cpu_g) =
                    group.iter().skip(1).fold((0.0, 0.0), |a, id| (a.0 + readers[id].4, a.1 + readers[id].5));
                let n = group.len() as u64;
                out.push(self.finding(
                    FindingKind::Duplicate,
                    first.2,
                    first.3,
                    group.iter().map(|id| readers[id].1.display().to_string()).collect(),
                    (size * (n - 1), n),
                    (cpu_j, cpu_g),
                    co.storage_j_per_byte,
                    "Identical copies of this data are kept and read by different users or jobs: \
                     keep one copy in shared storage and read it from there.",
                ));
            }
        }

        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.kind.cmp(&b.kind)));
        out
    }
}

#[cfg(test)]
mod tests;
