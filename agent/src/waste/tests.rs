//! Detectors on synthetic event sequences, adversarial ones included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::hash::{Content, ContentHasher};
use super::*;
use crate::io::{FileActivity, KernelCopy, Unlink};

const MIB: u64 = 1 << 20;
const E: IntervalEnergy = IntervalEnergy { cpu_j_per_cpu_s: 10.0, g_per_kwh: 360.0 };

/// Files by path: (size, content id). Counts the bytes "read".
#[derive(Default)]
struct FakeHasher {
    files: HashMap<PathBuf, (u64, u64)>,
    read: u64,
}

impl ContentHasher for FakeHasher {
    fn size(&mut self, path: &Path) -> Option<u64> {
        self.files.get(path).map(|f| f.0)
    }
    fn content(&mut self, path: &Path) -> Option<Content> {
        let (size, id) = *self.files.get(path)?;
        self.read += size;
        Some(Content { size, digest: [id, id] })
    }
    fn bytes_read(&self) -> u64 {
        self.read
    }
}

fn id(ino: u64) -> FileId {
    FileId { dev: 1 << 20, ino, generation: 0 }
}

fn file(tgid: u32, uid: u32, ino: u64, path: &str) -> FileActivity {
    FileActivity { tgid, uid, file: id(ino), path: Some(path.into()), io_ns: 1_000_000, ..Default::default() }
}

fn read(mut f: FileActivity, ranges: &[(u64, u64)]) -> FileActivity {
    for &(s, e) in ranges {
        f.read_ranges.insert(s, e);
        f.read_bytes += e - s;
        f.read_calls += 1;
    }
    f
}

fn write(mut f: FileActivity, ranges: &[(u64, u64)]) -> FileActivity {
    for &(s, e) in ranges {
        f.write_ranges.insert(s, e);
        f.write_bytes += e - s;
        f.write_calls += 1;
    }
    f
}

/// Every tgid is its own tree except those listed.
fn tracker_with(ivs: &[IoInterval], tree: &[(u32, u32)]) -> WasteTracker {
    let mut t = WasteTracker::new(Thresholds::default(), Coefficients::default(), 1000);
    let m: HashMap<u32, u32> = tree.iter().copied().collect();
    for iv in ivs {
        t.observe(iv, E, &|p| ProcessInfo { root: *m.get(&p).unwrap_or(&p), comm: format!("c{p}") });
    }
    t
}

fn iv(files: Vec<FileActivity>) -> IoInterval {
    IoInterval { files, ..Default::default() }
}

#[test]
fn reread_across_intervals_and_processes_of_one_tree() {
    // Two processes of tree 10 each read the whole 8 MiB file twice, over three intervals.
    let whole = [(0, 8 * MIB)];
    let ivs = vec![
        iv(vec![read(file(10, 0, 5, "/d/x"), &whole)]),
        iv(vec![read(file(10, 0, 5, "/d/x"), &whole), read(file(11, 0, 5, "/d/x"), &whole)]),
        iv(vec![read(file(11, 0, 5, "/d/x"), &whole)]),
    ];
    let t = tracker_with(&ivs, &[(11, 10)]);
    let f = t.findings(&mut FakeHasher::default());
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].kind, f[0].bytes, f[0].count, f[0].tree), (FindingKind::Reread, 24 * MIB, 4, 10));
    assert_eq!(f[0].paths, vec!["/d/x"]);
    // CPU part: 4 ms of syscalls at 10 J/s, 3/4 of it redundant = 0.03 J; bytes: 24 MiB × 0.5 nJ.
    let expect = 0.004 * 10.0 * 0.75 + (24 * MIB) as f64 * 0.5e-9;
    assert!((f[0].energy_j - expect).abs() < 1e-9, "{}", f[0].energy_j);
    assert!((f[0].emissions_g - expect / 3.6e6 * 360.0).abs() < 1e-12);
    assert_eq!(f[0].comm, "c10");
}

#[test]
fn overlapping_ranges_count_distinct_bytes_once() {
    // Overlapping windows (0..3, 2..5, 4..7 MiB) and a sliver re-read: 7 MiB distinct, 9.5 read.
    let f = read(file(1, 0, 5, "/x"), &[(0, 3 * MIB), (2 * MIB, 5 * MIB), (4 * MIB, 7 * MIB), (0, MIB / 2)]);
    let t = tracker_with(&[iv(vec![f])], &[]);
    // 9.5 < 2 × 7: not a re-read.
    assert!(t.findings(&mut FakeHasher::default()).is_empty());
    // Reading the same 1 MiB block 5 times (random access hitting the same spot) is.
    let f = read(file(1, 0, 6, "/y"), &[(0, MIB); 5]);
    let t = tracker_with(&[iv(vec![f])], &[]);
    let got = t.findings(&mut FakeHasher::default());
    assert_eq!((got[0].bytes, got[0].count), (4 * MIB, 5));
}

#[test]
fn sparse_file_reads_use_offsets_not_file_size() {
    // Two 1 MiB windows of a huge sparse file, each read 3 times: 4 MiB redundant.
    let w = [(0, MIB), (1 << 40, (1 << 40) + MIB)];
    let ranges: Vec<_> = w.iter().chain(w.iter()).chain(w.iter()).copied().collect();
    let t = tracker_with(&[iv(vec![read(file(1, 0, 9, "/sparse"), &ranges)])], &[]);
    let got = t.findings(&mut FakeHasher::default());
    assert_eq!((got.len(), got[0].bytes, got[0].count), (1, 4 * MIB, 3));
}

#[test]
fn file_replaced_between_reads_is_not_a_reread() {
    // Same path, new inode each time (write to temp + rename): different data, no finding.
    let ivs: Vec<_> =
        (0..4).map(|i| iv(vec![read(file(1, 0, 100 + i, "/data/current"), &[(0, 4 * MIB)])])).collect();
    let t = tracker_with(&ivs, &[]);
    assert!(t.findings(&mut FakeHasher::default()).is_empty());
    // Same inode rewritten in place between reads (by another process): not a re-read either.
    let ivs = vec![
        iv(vec![read(file(1, 0, 7, "/data/log"), &[(0, 4 * MIB)])]),
        iv(vec![write(file(2, 0, 7, "/data/log"), &[(0, 4 * MIB)])]),
        iv(vec![
            read(file(1, 0, 7, "/data/log"), &[(0, 4 * MIB)]),
            read(file(1, 0, 7, "/data/log"), &[(0, 4 * MIB)]),
        ]),
    ];
    let t = tracker_with(&ivs, &[]);
    assert!(t.findings(&mut FakeHasher::default()).iter().all(|f| f.kind != FindingKind::Reread));
}

#[test]
fn refetch_counts_pages_added_twice() {
    let mut a = file(1, 0, 5, "/big");
    a.cache_ranges.insert(0, 8 * MIB);
    a.cache_miss_bytes = 8 * MIB;
    let mut b = file(2, 0, 5, "/big");
    b.cache_ranges.insert(0, 8 * MIB);
    b.cache_miss_bytes = 8 * MIB;
    let t = tracker_with(&[iv(vec![a]), iv(vec![b])], &[]);
    let got = t.findings(&mut FakeHasher::default());
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].kind, got[0].bytes, got[0].count), (FindingKind::Refetch, 8 * MIB, 2));
    // Distinct pages added once each: nothing.
    let mut c = file(1, 0, 6, "/big2");
    c.cache_ranges.insert(0, 8 * MIB);
    c.cache_miss_bytes = 8 * MIB;
    assert!(tracker_with(&[iv(vec![c])], &[]).findings(&mut FakeHasher::default()).is_empty());
}

#[test]
fn kernel_copies_need_two_regular_files() {
    let kc = |src_is_file, dst_is_file, dst| KernelCopy {
        tgid: 3,
        src: id(1),
        dst: id(dst),
        src_is_file,
        dst_is_file,
        src_path: Some("/a".into()),
        dst_path: Some("/b".into()),
        bytes: 32 * MIB,
        calls: 2,
        io_ns: 0,
        timed_calls: 0,
    };
    let ivs = vec![IoInterval {
        copies: vec![kc(true, true, 2), kc(true, false, 3), kc(false, true, 4)],
        ..Default::default()
    }];
    let got = tracker_with(&ivs, &[]).findings(&mut FakeHasher::default());
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].kind, got[0].bytes), (FindingKind::Copy, 32 * MIB));
    assert_eq!(got[0].paths, vec!["/a", "/b"]);
}

#[test]
fn userspace_copy_is_confirmed_by_content() {
    let src = read(file(1, 0, 1, "/in"), &[(0, 4 * MIB)]);
    let same = write(file(1, 0, 2, "/copy"), &[(0, 4 * MIB)]);
    let transformed = write(file(1, 0, 3, "/xformed"), &[(0, 4 * MIB)]);
    let mut h = FakeHasher::default();
    h.files.insert("/in".into(), (4 * MIB, 1));
    h.files.insert("/copy".into(), (4 * MIB, 1));
    h.files.insert("/xformed".into(), (4 * MIB, 2));
    let got = tracker_with(&[iv(vec![src.clone(), transformed.clone()])], &[]).findings(&mut h);
    assert!(got.is_empty(), "same size, other content: {got:#?}");
    let got = tracker_with(&[iv(vec![src, same])], &[]).findings(&mut h);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].kind, got[0].paths.clone()), (FindingKind::Copy, vec!["/in".into(), "/copy".into()]));
    assert!(h.bytes_read() > 0);
}

#[test]
fn write_then_delete_needs_unlink_and_no_reader() {
    let w = write(file(1, 0, 8, "/tmp/t"), &[(0, 2 * MIB)]);
    let unlink = Unlink { tgid: 2, uid: 0, path: Some("/tmp/t".into()), file: Some(id(8)), ts_ns: 0 };
    let ivs = vec![iv(vec![w.clone()]), IoInterval { unlinks: vec![unlink.clone()], ..Default::default() }];
    let got = tracker_with(&ivs, &[(2, 1)]).findings(&mut FakeHasher::default());
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].kind, got[0].bytes, got[0].pid), (FindingKind::WriteThenDelete, 2 * MIB, 1));
    // Read by someone before deletion: not wasted.
    let r = read(file(3, 0, 8, "/tmp/t"), &[(0, MIB)]);
    let ivs = vec![iv(vec![w.clone(), r]), IoInterval { unlinks: vec![unlink], ..Default::default() }];
    assert!(tracker_with(&ivs, &[]).findings(&mut FakeHasher::default()).is_empty());
    // Not deleted: nothing.
    assert!(tracker_with(&[iv(vec![w])], &[]).findings(&mut FakeHasher::default()).is_empty());
}

#[test]
fn duplicates_need_other_users_or_trees_and_equal_content() {
    let mut h = FakeHasher::default();
    h.files.insert("/home/a/d".into(), (4 * MIB, 7));
    h.files.insert("/home/b/d".into(), (4 * MIB, 7));
    h.files.insert("/home/c/d".into(), (4 * MIB, 8));
    let files = vec![
        read(file(1, 1000, 1, "/home/a/d"), &[(0, 4 * MIB)]),
        read(file(2, 1001, 2, "/home/b/d"), &[(0, 4 * MIB)]),
        read(file(3, 1002, 3, "/home/c/d"), &[(0, 4 * MIB)]),
    ];
    let got = tracker_with(&[iv(files.clone())], &[]).findings(&mut h);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].kind, got[0].bytes, got[0].count), (FindingKind::Duplicate, 4 * MIB, 2));
    assert_eq!(got[0].paths, vec!["/home/a/d", "/home/b/d"]);
    // One user, one tree reading both copies: its own business, not reported.
    let same = vec![
        read(file(1, 1000, 1, "/home/a/d"), &[(0, 4 * MIB)]),
        read(file(1, 1000, 2, "/home/b/d"), &[(0, 4 * MIB)]),
    ];
    assert!(tracker_with(&[iv(same)], &[]).findings(&mut h).is_empty());
    // The hash could not be computed (budget, file gone): no finding.
    let mut empty = FakeHasher::default();
    assert!(tracker_with(&[iv(files)], &[]).findings(&mut empty).is_empty());
}

#[test]
fn findings_sorted_largest_first_and_tracker_bounded() {
    let ivs = vec![iv(vec![
        read(file(1, 0, 1, "/small"), &[(0, MIB), (0, MIB), (0, MIB)]),
        read(file(1, 0, 2, "/large"), &[(0, 4 * MIB), (0, 4 * MIB)]),
    ])];
    let got = tracker_with(&ivs, &[]).findings(&mut FakeHasher::default());
    assert_eq!(got.iter().map(|f| f.bytes).collect::<Vec<_>>(), vec![4 * MIB, 2 * MIB]);
    let mut t = WasteTracker::new(Thresholds::default(), Coefficients::default(), 1);
    t.observe(&ivs[0], E, &|p| ProcessInfo { root: p, comm: String::new() });
    assert_eq!(t.dropped, 1);
}

#[test]
fn finding_json_field_names() {
    let ivs = vec![iv(vec![read(file(1, 0, 2, "/large"), &[(0, 4 * MIB), (0, 4 * MIB)])])];
    let got = tracker_with(&ivs, &[]).findings(&mut FakeHasher::default());
    let v = serde_json::to_value(&got[0]).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "bytes",
            "comm",
            "count",
            "emissions_g",
            "energy_j",
            "granularity",
            "kind",
            "paths",
            "pid",
            "suggestion"
        ]
    );
    assert_eq!(v["kind"], "reread");
    // Intervals default to the page-cache tier.
    assert_eq!(v["granularity"], "4 KiB pages");
}

/// Text and JSON name every kind the same way.
#[test]
fn kinds_print_as_in_json() {
    for k in [
        FindingKind::Reread,
        FindingKind::Refetch,
        FindingKind::Copy,
        FindingKind::WriteThenDelete,
        FindingKind::Duplicate,
    ] {
        assert_eq!(serde_json::to_value(k).unwrap(), k.to_string());
    }
    assert_eq!(FindingKind::WriteThenDelete.to_string(), "write_then_delete");
}

/// A deleted file's inode number reused by a later file (same device and inode number, new
/// generation): two files. The deleted one alone is a finding, with its own bytes.
#[test]
fn reused_inode_numbers_are_different_files() {
    let mut deleted = write(file(1, 0, 9, "/ckpt0"), &[(0, 4 * MIB)]);
    deleted.file.generation = 111;
    let mut reused = write(file(1, 0, 9, "/ckpt2"), &[(0, 4 * MIB)]);
    reused.file.generation = 222;
    let ivs = vec![
        iv(vec![deleted.clone()]),
        IoInterval {
            unlinks: vec![Unlink {
                tgid: 1,
                uid: 0,
                path: Some("/ckpt0".into()),
                file: Some(deleted.file),
                ts_ns: 0,
            }],
            ..iv(vec![reused])
        },
    ];
    let got = tracker_with(&ivs, &[]).findings(&mut FakeHasher::default());
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].kind, got[0].bytes, got[0].paths.clone()),
        (FindingKind::WriteThenDelete, 4 * MIB, vec!["/ckpt0".into()])
    );
}

/// Intervals from the syscall tier only: findings say their bytes are bytes.
#[test]
fn syscall_tier_findings_say_bytes() {
    let ivs = vec![IoInterval {
        detail: crate::io::IoDetail::Syscalls,
        ..iv(vec![read(file(1, 0, 2, "/large"), &[(0, 4 * MIB), (0, 4 * MIB)])])
    }];
    let got = tracker_with(&ivs, &[]).findings(&mut FakeHasher::default());
    assert_eq!(got[0].granularity, "bytes");
}
