//! Content identity of files for the duplicate and copy detectors. The detectors only see the
//! [`ContentHasher`] trait; [`FsHasher`] is the real one: it reads files at idle I/O priority
//! within a byte budget and reports how much it read.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Size and content digest of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Content {
    pub size: u64,
    /// 128-bit digest (two independent 64-bit FNV-1a variants; not cryptographic, enough to
    /// tell equal files from different ones in one's own data).
    pub digest: [u64; 2],
}

/// What the detectors need to confirm equal content.
pub trait ContentHasher {
    /// Size of the file now, `None` when it cannot be read.
    fn size(&mut self, path: &Path) -> Option<u64>;
    /// Size and digest of the whole file, `None` when it cannot be read or the budget is spent.
    fn content(&mut self, path: &Path) -> Option<Content>;
    /// Bytes read so far to compute digests (reported: the agent's own I/O).
    fn bytes_read(&self) -> u64;
}

/// Digest of a byte stream.
#[derive(Clone, Copy, Debug)]
pub struct Digest {
    a: u64,
    b: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self { a: 0xcbf2_9ce4_8422_2325, b: 0x6c62_272e_07bb_0142 }
    }
}

impl Digest {
    pub fn update(&mut self, data: &[u8]) {
        for &x in data {
            self.a = (self.a ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
            self.b = (self.b ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(5);
        }
    }
    pub fn finish(&self) -> [u64; 2] {
        [self.a, self.b]
    }
}

/// Hashes files from the file system at idle I/O priority, at most `budget_bytes` in all.
pub struct FsHasher {
    budget_bytes: u64,
    read: u64,
    cache: HashMap<(PathBuf, u64, i64, u64), Content>,
}

impl FsHasher {
    pub fn new(budget_bytes: u64) -> Self {
        Self { budget_bytes, read: 0, cache: HashMap::new() }
    }
}

/// Puts the calling thread in the idle I/O class (`ioprio_set(IOPRIO_WHO_PROCESS, 0, IDLE)`),
/// so that hashing yields to every other I/O.
fn idle_io_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: plain syscall on the calling thread; failure only means normal priority.
    unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13) };
}

impl ContentHasher for FsHasher {
    fn size(&mut self, path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    fn content(&mut self, path: &Path) -> Option<Content> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        let key =
            (path.to_path_buf(), meta.ino(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000, meta.len());
        if let Some(c) = self.cache.get(&key) {
            return Some(*c);
        }
        if self.read + meta.len() > self.budget_bytes {
            return None;
        }
        idle_io_priority();
        let mut f = std::fs::File::open(path).ok()?;
        let mut d = Digest::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            self.read += n as u64;
            size += n as u64;
            d.update(&buf[..n]);
        }
        let c = Content { size, digest: d.finish() };
        if self.cache.len() > 65536 {
            self.cache.clear();
        }
        self.cache.insert(key, c);
        Some(c)
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_tells_content_apart() {
        let mut a = Digest::default();
        a.update(b"hello world");
        let mut b = Digest::default();
        b.update(b"hello ");
        b.update(b"world");
        let mut c = Digest::default();
        c.update(b"hello worle");
        assert_eq!(a.finish(), b.finish());
        assert_ne!(a.finish(), c.finish());
    }

    #[test]
    fn fs_hasher_budget_and_accounting() {
        let dir = std::env::temp_dir().join(format!("carbon-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p1, p2) = (dir.join("a"), dir.join("b"));
        std::fs::write(&p1, vec![7u8; 3000]).unwrap();
        std::fs::write(&p2, vec![7u8; 3000]).unwrap();
        let mut h = FsHasher::new(4000);
        let c1 = h.content(&p1).unwrap();
        assert_eq!(c1.size, 3000);
        assert_eq!(h.bytes_read(), 3000);
        // Cached: no new reads.
        assert_eq!(h.content(&p1), Some(c1));
        assert_eq!(h.bytes_read(), 3000);
        // Over budget.
        assert_eq!(h.content(&p2), None);
        assert_eq!(h.size(&p2), Some(3000));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
