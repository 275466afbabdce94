//! What the fuzz targets share: a fake file tree decoded from the fuzzer's bytes, served to the
//! agent's readers through its real [`FileReader`] trait.
//!
//! Input format (also how the seeds in `fuzz/seeds/` are written): a line `== PATH` starts a
//! file, and every byte up to the next `== ` line is its contents. `PATH@K` is that file's
//! contents from tick K on (a counter that moves between reads). Bytes before the first header
//! are the file `""`. Paths are relative to the reader's root.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use carbon_agent::energy::FileReader;

/// Files decoded from fuzz input, rooted at a fake path.
#[derive(Debug)]
pub struct FakeTree {
    root: PathBuf,
    /// (relative path, first tick it holds from) → contents.
    files: BTreeMap<(String, usize), Vec<u8>>,
    tick: AtomicUsize,
}

impl FakeTree {
    /// Decodes `data` (see the module documentation); the files live under `root`.
    pub fn parse(root: &Path, data: &[u8]) -> Self {
        let mut files = BTreeMap::new();
        let mut name = String::new();
        let mut contents = Vec::new();
        for line in data.split_inclusive(|&b| b == b'\n') {
            match line.strip_prefix(b"== ") {
                Some(header) => {
                    files.insert(split_tick(&name), std::mem::take(&mut contents));
                    name = String::from_utf8_lossy(header).trim().to_owned();
                }
                None => contents.extend_from_slice(line),
            }
        }
        files.insert(split_tick(&name), contents);
        Self { root: root.to_owned(), files, tick: AtomicUsize::new(0) }
    }

    /// Later reads see the files as of tick `tick` (0: the base contents).
    pub fn set_tick(&self, tick: usize) {
        self.tick.store(tick, Ordering::Relaxed);
    }

    /// The contents of `rel` at the current tick.
    pub fn get(&self, rel: &str) -> Option<&[u8]> {
        let tick = self.tick.load(Ordering::Relaxed);
        self.files
            .range((rel.to_owned(), 0)..=(rel.to_owned(), tick))
            .next_back()
            .map(|(_, contents)| contents.as_slice())
    }

    /// The contents of `rel` as text, as `std::fs::read_to_string` would give them.
    pub fn text(&self, rel: &str) -> Option<&str> {
        std::str::from_utf8(self.get(rel)?).ok()
    }

    /// The intervals (seconds) of the reads after opening: the file `ticks`, one number a line;
    /// at most 16, each clamped to what a monotonic clock gives (0 to an hour).
    pub fn ticks(&self) -> Vec<f64> {
        self.text("ticks")
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .map(|s| if s.is_finite() { s.clamp(0.0, 3600.0) } else { 1.0 })
            .take(16)
            .collect()
    }

    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a str> {
        path.strip_prefix(&self.root)
            .ok()
            .and_then(Path::to_str)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "outside the fake tree"))
    }
}

/// `path@K` → (`path`, K); anything else → (`path`, 0).
fn split_tick(name: &str) -> (String, usize) {
    match name.rsplit_once('@') {
        Some((path, tick)) if !tick.is_empty() && tick.bytes().all(|b| b.is_ascii_digit()) => {
            (path.to_owned(), tick.parse().unwrap_or(usize::MAX))
        }
        _ => (name.to_owned(), 0),
    }
}

impl FileReader for FakeTree {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        let rel = self.relative(path)?;
        let bytes = self.get(rel).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let rel = self.relative(path)?;
        let prefix = if rel.is_empty() { String::new() } else { format!("{rel}/") };
        // Sorted and each once, as the real reader lists them.
        let names: BTreeSet<String> = self
            .files
            .keys()
            .filter_map(|(p, _)| p.strip_prefix(&prefix)?.split('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(names.into_iter().collect())
    }
}

/// Whether `a` and `b` agree to within a relative `tolerance` (floating-point sums).
pub fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_files_ticks_and_directories() {
        let t = FakeTree::parse(
            Path::new("/sys"),
            b"== a/b/energy_uj\n5\n== a/b/energy_uj@2\n9\n== a/c\nx\n== ticks\n1\nnan\n-4\nz\n",
        );
        assert_eq!(t.text("a/b/energy_uj"), Some("5\n"));
        t.set_tick(1);
        assert_eq!(t.read_to_string(Path::new("/sys/a/b/energy_uj")).unwrap(), "5\n");
        t.set_tick(3);
        assert_eq!(t.text("a/b/energy_uj"), Some("9\n"));
        assert_eq!(t.list_dir(Path::new("/sys/a")).unwrap(), ["b", "c"]);
        assert_eq!(t.list_dir(Path::new("/sys")).unwrap(), ["a", "ticks"]);
        let t = FakeTree::parse(Path::new("/"), b"== d/b\n== d/b+\n== d/b/x\n");
        assert_eq!(t.list_dir(Path::new("/d")).unwrap(), ["b", "b+"]);
        assert!(t.list_dir(Path::new("/sys/zzz")).is_err());
        assert!(t.read_to_string(Path::new("/elsewhere/a/c")).is_err());
        assert_eq!(t.ticks(), [1.0, 1.0, 0.0]);
    }
}
