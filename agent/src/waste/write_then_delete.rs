//! Write then delete: a file written (≥ `min_bytes`), never read by anyone in the window, then
//! unlinked. Files are identified with their inode's generation, so a new file that gets a
//! deleted one's inode number is another file.

use std::collections::BTreeSet;

use super::{Context, Detector, Draft, FindingKind};
use crate::io::FileId;

pub struct WriteThenDelete;

impl Detector for WriteThenDelete {
    fn find(&self, cx: &mut Context<'_>) {
        let Context { seen, th, co, out, .. } = cx;
        let read_anywhere: BTreeSet<FileId> =
            seen.files.iter().filter(|(_, t)| t.read_bytes > 0).map(|((_, id), _)| *id).collect();
        for ((root, id), t) in &seen.files {
            if t.write_bytes < th.min_bytes || read_anywhere.contains(id) {
                continue;
            }
            let Some((_, path)) = seen.unlinked.get(id) else {
                continue;
            };
            out.push(seen.finding(Draft {
                kind: FindingKind::WriteThenDelete,
                tree: *root,
                pid: t.top_tgid(),
                paths: vec![path.display().to_string()],
                bytes: t.write_bytes,
                count: 1,
                cpu: t.cpu,
                j_per_byte: co.memory_j_per_byte,
                suggestion: "This file was written and deleted without ever being read: don't write it (or \
                             send it to /dev/null, or keep it in memory).",
            }));
        }
    }
}
