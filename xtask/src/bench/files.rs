//! File loads through the page cache, for the page-cache tier's handlers: a 4 KiB-chunk copy
//! of a 64 MiB file (in-process, the copying thread's CPU time), `cp` of a 256 MiB file and a
//! Python reader of 64 KiB chunks (child processes, their CPU time from `wait4`). The files
//! are in the page cache (written once, read before the runs), under `/var/tmp`.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    DEFAULT_AGENT, SYSCALL_TIER, Section, Targets, Variant,
    load::{LoadTimes, thread_cpu_time},
};

/// The page-cache tier's handlers.
const PAGE_CACHE_PROGRAMS: &[&str] =
    &["io_cache_get", "io_cache_add", "io_dirty", "sched_switch_btf", "io_sys_exit", "io_sys_enter"];

/// Empty programs on the same hooks as the page-cache tier's file handlers.
const EMPTY_PAGE_CACHE: Variant = Variant::Empty {
    label: "empty programs on the page-cache hooks",
    programs: &[
        ("bench_empty_get_pages", "mm_filemap_get_pages"),
        ("bench_empty_cache_add", "mm_filemap_add_to_page_cache"),
        ("bench_empty_dirty", "writeback_dirty_folio"),
    ],
};

/// A file of `bytes` under /var/tmp, made once and read once (into the page cache).
fn source(name: &str, bytes: u64) -> Result<PathBuf> {
    let path = Path::new("/var/tmp").join(format!("carbon-bench-{name}"));
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes) {
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..bytes >> 20 {
            f.write_all(&chunk)?;
        }
    }
    std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;
    Ok(path)
}

/// How many times each file load repeats its work per run (single copies take 0.05–0.15 s of
/// CPU here, too short against this VM's noise).
const REPEATS: u32 = 6;

/// `run` [`REPEATS`] times, times added up.
fn repeated(mut run: impl FnMut() -> Result<LoadTimes>) -> Result<LoadTimes> {
    let mut total = LoadTimes { wall: Duration::ZERO, cpu: Duration::ZERO };
    for _ in 0..REPEATS {
        let t = run()?;
        total.wall += t.wall;
        total.cpu += t.cpu;
    }
    Ok(total)
}

/// Runs `cmd` and returns its wall time and its CPU time (user + system, from `wait4`).
fn child_times(cmd: &mut Command) -> Result<LoadTimes> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let wall = start.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status:#x})");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(LoadTimes { wall, cpu: tv(usage.ru_utime) + tv(usage.ru_stime) })
}

/// The 4 KiB-chunk copy of a 64 MiB file.
pub struct Copy4k;

impl Section for Copy4k {
    fn name(&self) -> &'static str {
        "copy_4k"
    }
    fn event(&self) -> &'static str {
        "page-cache event"
    }
    fn programs(&self) -> &'static [&'static str] {
        PAGE_CACHE_PROGRAMS
    }
    fn variants(&self) -> Vec<Variant> {
        vec![DEFAULT_AGENT, EMPTY_PAGE_CACHE, SYSCALL_TIER]
    }
    fn targets(&self) -> Targets {
        Targets { max_ns_per_event: None, max_slowdown: 0.05, floor_rule: Some((0.03, 0.02)) }
    }
    fn describe_load(&self, _rounds: u64) -> String {
        format!(
            "a 64 MiB file (page cache) copied in 4 KiB read/write calls, {REPEATS} times per run, the copying thread's CPU time"
        )
    }
    fn run_load(&self, _rounds: u64) -> Result<LoadTimes> {
        let src = source("64m", 64 << 20)?;
        repeated(|| copy_4k(&src))
    }
}

/// One 4 KiB-chunk copy of `src`; the thread's CPU time.
fn copy_4k(src: &Path) -> Result<LoadTimes> {
    let dst = src.with_extension("dst");
    let mut i = std::fs::File::open(src)?;
    let mut o = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&dst)?;
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    let cpu = thread_cpu_time();
    loop {
        let n = i.read(&mut buf)?;
        if n == 0 {
            break;
        }
        o.write_all(&buf[..n])?;
    }
    Ok(LoadTimes { wall: start.elapsed(), cpu: thread_cpu_time() - cpu })
}

/// `cp` of a 256 MiB file to a new file.
pub struct Cp;

impl Section for Cp {
    fn name(&self) -> &'static str {
        "cp_256m"
    }
    fn event(&self) -> &'static str {
        "page-cache event"
    }
    fn programs(&self) -> &'static [&'static str] {
        PAGE_CACHE_PROGRAMS
    }
    fn targets(&self) -> Targets {
        Targets { max_ns_per_event: None, max_slowdown: 0.02, floor_rule: None }
    }
    fn describe_load(&self, _rounds: u64) -> String {
        format!("cp of a 256 MiB file (page cache) to a new file, {REPEATS} times per run, cp's CPU time")
    }
    fn run_load(&self, _rounds: u64) -> Result<LoadTimes> {
        let src = source("256m", 256 << 20)?;
        let dst = src.with_extension("dst");
        repeated(|| {
            let _ = std::fs::remove_file(&dst);
            let times = child_times(Command::new("cp").arg(&src).arg(&dst))?;
            std::fs::remove_file(&dst)?;
            Ok(times)
        })
    }
}

/// A Python reader of a 256 MiB file in 64 KiB chunks.
pub struct PythonReader;

impl Section for PythonReader {
    fn name(&self) -> &'static str {
        "python_reader"
    }
    fn event(&self) -> &'static str {
        "page-cache event"
    }
    fn programs(&self) -> &'static [&'static str] {
        PAGE_CACHE_PROGRAMS
    }
    fn targets(&self) -> Targets {
        Targets { max_ns_per_event: None, max_slowdown: 0.02, floor_rule: None }
    }
    fn describe_load(&self, _rounds: u64) -> String {
        format!(
            "python3 reading a 256 MiB file (page cache) in 64 KiB chunks, {REPEATS} times per run, its CPU time"
        )
    }
    fn run_load(&self, _rounds: u64) -> Result<LoadTimes> {
        let src = source("256m", 256 << 20)?;
        let script = format!("with open('{}', 'rb') as h:\n    while h.read(1 << 16): pass\n", src.display());
        repeated(|| child_times(Command::new("python3").args(["-c", &script])))
    }
}
