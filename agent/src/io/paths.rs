//! From what the kernel saw to file paths: mount points by device, and a bounded table of
//! (device, inode) → path filled from open events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use carbon_agent_common::io::{NAME_LEN, PathEvent, path_flag};

/// A file's identity: kernel device number (`major << 20 | minor`), inode number, and the
/// inode's generation (`i_generation`), which tells apart files that had the same inode number
/// one after the other (file systems reuse a deleted file's inode number soon; 0 where the file
/// system has no generations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
    pub generation: u32,
}

/// The kernel's `dev_t` encoding (`MAJOR << 20 | MINOR`) to userspace's (`libc::makedev`).
pub fn kdev_to_udev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xf_ffff)
}

/// Userspace `dev_t` (as in `stat`) to the kernel's encoding.
pub fn udev_to_kdev(udev: u64) -> u32 {
    (libc::major(udev) << 20) | (libc::minor(udev) & 0xf_ffff)
}

/// One mount: the directory within its file system that is mounted (`root`) and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub root: PathBuf,
    pub mount_point: PathBuf,
}

/// Mounts by kernel device number, parsed from `/proc/self/mountinfo` text. When a device is
/// mounted several times the first mount of its file-system root (`root == "/"`) wins, else
/// the first mount.
pub fn parse_mountinfo(text: &str) -> HashMap<u32, Mount> {
    let mut out: HashMap<u32, Mount> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        let Some((maj, min)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u32>(), min.parse::<u32>()) else {
            continue;
        };
        let dev = (maj << 20) | min;
        let m = Mount { root: PathBuf::from(unescape(f[3])), mount_point: PathBuf::from(unescape(f[4])) };
        match out.get(&dev) {
            Some(old) if old.root == Path::new("/") || m.root != Path::new("/") => {}
            _ => {
                out.insert(dev, m);
            }
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn component(c: &[u8; NAME_LEN]) -> &[u8] {
    let end = c.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    &c[..end]
}

/// The absolute path of the components of `ev` (leaf first, relative to the root of file
/// system `ev.dev`), placed under the mount of that device. `None` when the device is not
/// mounted in our namespace or the path was cut (too deep).
pub fn event_dir_path(ev: &PathEvent, mounts: &HashMap<u32, Mount>) -> Option<PathBuf> {
    if ev.flags & path_flag::DEEP != 0 {
        return None;
    }
    let mut fs_path = PathBuf::from("/");
    for i in (0..(ev.depth as usize).min(ev.components.len())).rev() {
        let c = component(&ev.components[i]);
        fs_path.push(std::ffi::OsStr::new(&*String::from_utf8_lossy(c)));
    }
    let m = mounts.get(&ev.dev)?;
    let rel = fs_path.strip_prefix(&m.root).ok()?;
    Some(if rel.as_os_str().is_empty() { m.mount_point.clone() } else { m.mount_point.join(rel) })
}

/// The user path of an unlink event, made absolute with its base directory.
pub fn unlink_path(ev: &PathEvent, mounts: &HashMap<u32, Mount>) -> Option<PathBuf> {
    let end = ev.user_path.iter().position(|&b| b == 0).unwrap_or(ev.user_path.len());
    let user = PathBuf::from(String::from_utf8_lossy(&ev.user_path[..end]).into_owned());
    if ev.flags & path_flag::RELATIVE == 0 {
        return Some(normalize(&user));
    }
    if ev.flags & path_flag::NO_BASE != 0 {
        return None;
    }
    Some(normalize(&event_dir_path(ev, mounts)?.join(user)))
}

/// Removes `.` and resolves `..` lexically (the kernel resolved symlinks for opens; unlink
/// paths are taken as given).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// A bounded map of file identity → last known path (oldest entries are evicted first and
/// counted).
#[derive(Debug)]
pub struct PathTable {
    capacity: usize,
    by_id: HashMap<FileId, PathBuf>,
    order: VecDeque<FileId>,
    /// Entries dropped for capacity since creation.
    pub evicted: u64,
}

impl PathTable {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), by_id: HashMap::new(), order: VecDeque::new(), evicted: 0 }
    }

    /// Records that `id` is (now) at `path`.
    pub fn insert(&mut self, id: FileId, path: PathBuf) {
        if self.by_id.insert(id, path).is_none() {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                    self.evicted += 1;
                }
            }
        }
    }

    pub fn get(&self, id: &FileId) -> Option<&PathBuf> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A snapshot of the known paths of `ids`.
    pub fn paths_of<'a>(&self, ids: impl Iterator<Item = &'a FileId>) -> BTreeMap<FileId, PathBuf> {
        ids.filter_map(|id| self.by_id.get(id).map(|p| (*id, p.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbon_agent_common::io::{PATH_DEPTH, USER_PATH_LEN, path_kind};

    fn ev(dev: u32, leaf_first: &[&str], flags: u32, user: &str) -> PathEvent {
        let mut e = PathEvent {
            kind: path_kind::OPEN,
            tgid: 1,
            uid: 0,
            flags,
            dev,
            depth: leaf_first.len() as u32,
            ino: 7,
            ts_ns: 0,
            generation: 0,
            _pad: 0,
            components: [[0; NAME_LEN]; PATH_DEPTH],
            user_path: [0; USER_PATH_LEN],
        };
        for (i, c) in leaf_first.iter().enumerate() {
            e.components[i][..c.len()].copy_from_slice(c.as_bytes());
        }
        e.user_path[..user.len()].copy_from_slice(user.as_bytes());
        e
    }

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /tmp rw - tmpfs tmpfs rw
31 22 0:25 /sub /mnt/bind\\040dir rw - tmpfs tmpfs rw
32 22 0:26 /data /srv rw - ext4 /dev/vdb rw
";

    #[test]
    fn mountinfo_by_device() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m[&(254 << 20)].mount_point, PathBuf::from("/"));
        // Root mount of 0:25 wins over the bind mount of a subdirectory.
        assert_eq!(m[&25].mount_point, PathBuf::from("/tmp"));
        assert_eq!(m[&26].root, PathBuf::from("/data"));
        let only_bind = parse_mountinfo("31 22 0:27 /sub /mnt/bind\\040dir rw - tmpfs tmpfs rw\n");
        assert_eq!(only_bind[&27].mount_point, PathBuf::from("/mnt/bind dir"));
    }

    #[test]
    fn event_paths_under_their_mounts() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(event_dir_path(&ev(254 << 20, &["f.bin", "work"], 0, ""), &m), Some("/work/f.bin".into()));
        assert_eq!(event_dir_path(&ev(25, &["x"], 0, ""), &m), Some("/tmp/x".into()));
        assert_eq!(event_dir_path(&ev(26, &["f", "data"], 0, ""), &m), Some("/srv/f".into()));
        // Outside the mounted subtree, unknown device, cut path: not resolvable.
        assert_eq!(event_dir_path(&ev(26, &["f", "other"], 0, ""), &m), None);
        assert_eq!(event_dir_path(&ev(99, &["f"], 0, ""), &m), None);
        assert_eq!(event_dir_path(&ev(25, &["f"], path_flag::DEEP, ""), &m), None);
    }

    #[test]
    fn unlink_paths() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(unlink_path(&ev(0, &[], 0, "/tmp/a/../b"), &m), Some("/tmp/b".into()));
        let rel = ev(254 << 20, &["d", "work"], path_flag::RELATIVE, "./out.bin");
        assert_eq!(unlink_path(&rel, &m), Some("/work/d/out.bin".into()));
        assert_eq!(unlink_path(&ev(0, &[], path_flag::RELATIVE | path_flag::NO_BASE, "x"), &m), None);
    }

    #[test]
    fn kernel_and_user_dev_numbers_round_trip() {
        for (maj, min) in [(8u32, 1u32), (254, 0), (0, 25), (259, 300_000)] {
            let k = (maj << 20) | min;
            assert_eq!(udev_to_kdev(kdev_to_udev(k)), k);
        }
    }

    #[test]
    fn path_table_is_bounded() {
        let mut t = PathTable::new(2);
        for i in 0..3 {
            t.insert(FileId { dev: 1, ino: i, generation: 0 }, format!("/f{i}").into());
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted, 1);
        assert!(t.get(&FileId { dev: 1, ino: 0, generation: 0 }).is_none());
        t.insert(FileId { dev: 1, ino: 2, generation: 0 }, "/renamed".into());
        assert_eq!(t.get(&FileId { dev: 1, ino: 2, generation: 0 }), Some(&PathBuf::from("/renamed")));
    }
}
