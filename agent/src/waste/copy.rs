//! Copies: in-kernel copies between two regular files (copy_file_range, sendfile, splice: seen
//! by the syscall tier), and copies through the program: a tree reads file A (not written) and
//! writes file B (not read) whose distinct sizes are within `copy_size_tolerance`, confirmed
//! by equal content (unconfirmed candidates are not reported). In the page-cache tier in-kernel
//! copies go through the page cache too and are found the second way.

use std::collections::{BTreeMap, BTreeSet};

use super::{Context, Detector, Draft, FindingKind, TreeFile, path_str};
use crate::io::FileId;

pub struct Copies;

impl Detector for Copies {
    fn find(&self, cx: &mut Context<'_>) {
        let Context { seen, th, co, hasher, out } = cx;
        let mut copied_pairs = BTreeSet::new();
        for ((root, src, dst), c) in &seen.copies {
            copied_pairs.insert((*root, *src, *dst));
            if c.bytes < th.min_bytes || src == dst {
                continue;
            }
            out.push(seen.finding(Draft {
                kind: FindingKind::Copy,
                tree: *root,
                pid: c.tgid,
                paths: vec![path_str(&c.src_path), path_str(&c.dst_path)],
                bytes: c.bytes,
                count: 1,
                cpu: c.cpu,
                j_per_byte: co.storage_j_per_byte,
                suggestion: "A file is copied: read the original in place, or use a hard link / reflink \
                             (cp --reflink, a copy-on-write file system) instead of a full copy.",
            }));
        }
        let mut by_root: BTreeMap<u32, Vec<(&FileId, &TreeFile)>> = BTreeMap::new();
        for ((root, id), t) in &seen.files {
            by_root.entry(*root).or_default().push((id, t));
        }
        for (root, files) in &by_root {
            let mut used = BTreeSet::new();
            for (dst_id, dst) in
                files.iter().filter(|(_, t)| t.write_bytes >= th.min_bytes && t.read_bytes == 0)
            {
                let size = dst.write_ranges.covered();
                let same_size = |t: &TreeFile| {
                    let s = t.read_ranges.covered();
                    (s as f64 - size as f64).abs() <= th.copy_size_tolerance * size.max(s) as f64
                };
                let best = files
                    .iter()
                    .filter(|(id, t)| {
                        *id != *dst_id
                            && t.write_bytes == 0
                            && t.read_bytes > 0
                            && !used.contains(*id)
                            && !copied_pairs.contains(&(*root, **id, **dst_id))
                            && same_size(t)
                    })
                    .find(|(_, src)| match (&src.path, &dst.path) {
                        (Some(a), Some(b)) => {
                            matches!((hasher.content(a), hasher.content(b)), (Some(x), Some(y)) if x == y)
                        }
                        _ => false,
                    });
                if let Some((src_id, src)) = best {
                    used.insert(**src_id);
                    out.push(seen.finding(Draft {
                        kind: FindingKind::Copy,
                        tree: *root,
                        pid: dst.top_tgid(),
                        paths: vec![path_str(&src.path), path_str(&dst.path)],
                        bytes: size,
                        count: 1,
                        cpu: src.cpu.plus(dst.cpu),
                        j_per_byte: co.memory_j_per_byte + co.storage_j_per_byte,
                        suggestion: "A file is copied through the program (read, then written unchanged): read \
                                     the original in place, or link/reflink it instead of copying.",
                    }));
                }
            }
        }
    }
}
