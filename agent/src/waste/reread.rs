//! Re-read: a tree reads the same file data again and again.
//!
//! Per (tree, file): logical bytes read ≥ `reread_factor` × distinct bytes (the union of the
//! ranges) and redundant ≥ `min_bytes`. Data rewritten in place between reads (in an interval
//! after the first read and before the last) is new data, not a re-read; writes in the same
//! interval as a read cannot be ordered and are not held against it.

use std::collections::HashMap;

use super::{Context, Detector, Draft, FindingKind, path_str};
use crate::io::{FileId, ranges::RangeSet};

pub struct Reread;

impl Detector for Reread {
    fn find(&self, cx: &mut Context<'_>) {
        let Context { seen, th, co, out, .. } = cx;
        // Files written (by any tree): their written ranges and intervals.
        let mut written: HashMap<FileId, (RangeSet, Vec<u64>)> = HashMap::new();
        for ((_, id), t) in seen.files.iter().filter(|(_, t)| t.write_bytes > 0) {
            let w = written.entry(*id).or_default();
            w.0.union(&t.write_ranges);
            w.1.extend(&t.write_intervals);
        }
        for ((root, id), t) in &seen.files {
            let distinct = t.read_ranges.covered();
            if distinct == 0 || t.read_bytes < distinct {
                continue;
            }
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
            out.push(seen.finding(Draft {
                kind: FindingKind::Reread,
                tree: *root,
                pid: t.top_tgid(),
                paths: vec![path_str(&t.path)],
                bytes: redundant,
                count: t.read_bytes / distinct,
                cpu: t.cpu.scaled(redundant as f64 / t.read_bytes as f64),
                j_per_byte: co.memory_j_per_byte,
                suggestion: "The same file data is read again and again: keep it in memory (cache the parsed \
                             data between epochs/passes), or use a smaller subset while debugging.",
            }));
        }
    }
}
