//! Duplicates: different inodes of equal size (≥ `min_bytes`) and equal content, read by ≥ 2
//! users or trees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{Context, Cost, Detector, Draft, FindingKind};
use crate::io::FileId;

pub struct Duplicates;

/// Who read one file.
struct Readers {
    /// (uid, tree) pairs.
    who: BTreeSet<(u32, u32)>,
    path: PathBuf,
    /// The first reader's tree and process.
    tree: u32,
    pid: u32,
    cpu: Cost,
}

impl Detector for Duplicates {
    fn find(&self, cx: &mut Context<'_>) {
        let Context { seen, th, co, hasher, out } = cx;
        let mut readers: BTreeMap<FileId, Readers> = BTreeMap::new();
        for ((root, id), t) in &seen.files {
            let (Some(path), true) = (&t.path, t.read_bytes > 0) else {
                continue;
            };
            let r = readers.entry(*id).or_insert_with(|| Readers {
                who: BTreeSet::new(),
                path: path.clone(),
                tree: *root,
                pid: t.top_tgid(),
                cpu: Cost::default(),
            });
            r.who.extend(t.uids.iter().map(|uid| (*uid, *root)));
            r.cpu = r.cpu.plus(t.cpu);
        }
        let mut by_size: BTreeMap<u64, Vec<FileId>> = BTreeMap::new();
        for (id, r) in &readers {
            if let Some(size) = hasher.size(&r.path).filter(|s| *s >= th.min_bytes) {
                by_size.entry(size).or_default().push(*id);
            }
        }
        for (size, ids) in by_size.into_iter().filter(|(_, v)| v.len() > 1) {
            let mut by_content: BTreeMap<[u64; 2], Vec<FileId>> = BTreeMap::new();
            for id in ids {
                if let Some(c) = hasher.content(&readers[&id].path).filter(|c| c.size == size) {
                    by_content.entry(c.digest).or_default().push(id);
                }
            }
            for group in by_content.into_values().filter(|g| g.len() > 1) {
                let who: BTreeSet<(u32, u32)> =
                    group.iter().flat_map(|id| readers[id].who.iter().copied()).collect();
                let users: BTreeSet<u32> = who.iter().map(|w| w.0).collect();
                let trees: BTreeSet<u32> = who.iter().map(|w| w.1).collect();
                if users.len() < 2 && trees.len() < 2 {
                    continue;
                }
                let first = &readers[&group[0]];
                let cpu = group.iter().skip(1).fold(Cost::default(), |a, id| a.plus(readers[id].cpu));
                let n = group.len() as u64;
                out.push(seen.finding(Draft {
                    kind: FindingKind::Duplicate,
                    tree: first.tree,
                    pid: first.pid,
                    paths: group.iter().map(|id| readers[id].path.display().to_string()).collect(),
                    bytes: size * (n - 1),
                    count: n,
                    cpu,
                    j_per_byte: co.storage_j_per_byte,
                    suggestion: "Identical copies of this data are kept and read by different users or jobs: \
                                 keep one copy in shared storage and read it from there.",
                }));
            }
        }
    }
}
