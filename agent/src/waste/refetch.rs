//! Re-fetch: the same file pages brought into the page cache from storage more than once (they
//! were evicted in between). Per file over all trees: pages added − distinct pages added ≥
//! `min_bytes`; reported for the tree that fetched most.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Context, Cost, Detector, Draft, FindingKind, path_str};
use crate::io::{FileId, ranges::RangeSet};

pub struct Refetch;

/// One file's fetches over all trees.
#[derive(Default)]
struct Fetches {
    bytes: u64,
    ranges: RangeSet,
    /// The tree and process that fetched most, and how much.
    tree: u32,
    pid: u32,
    most: u64,
    path: Option<PathBuf>,
}

impl Detector for Refetch {
    fn find(&self, cx: &mut Context<'_>) {
        let Context { seen, th, co, out, .. } = cx;
        let mut per_file: BTreeMap<FileId, Fetches> = BTreeMap::new();
        for ((root, id), t) in seen.files.iter().filter(|(_, t)| t.cache_bytes > 0) {
            let e = per_file.entry(*id).or_default();
            e.bytes += t.cache_bytes;
            e.ranges.union(&t.cache_ranges);
            if t.cache_bytes > e.most {
                (e.tree, e.pid, e.most) = (*root, t.top_tgid(), t.cache_bytes);
            }
            if t.path.is_some() {
                e.path = t.path.clone();
            }
        }
        for f in per_file.values() {
            let distinct = f.ranges.covered();
            let refetched = f.bytes.saturating_sub(distinct);
            if distinct == 0 || refetched < th.min_bytes {
                continue;
            }
            out.push(seen.finding(Draft {
                kind: FindingKind::Refetch,
                tree: f.tree,
                pid: f.pid,
                paths: vec![path_str(&f.path)],
                bytes: refetched,
                count: f.bytes.div_ceil(distinct),
                cpu: Cost::default(),
                j_per_byte: co.storage_j_per_byte,
                suggestion: "The same file pages were read from storage more than once (evicted from the page \
                             cache in between): read it once and keep it, or give the machine/cgroup more \
                             memory for the page cache.",
            }));
        }
    }
}
