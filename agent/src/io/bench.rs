//! Benchmark of the I/O programs: the kernel's own ns per event for each handler
//! (`kernel.bpf_stats_enabled`, run_time_ns / run_cnt), and the slowdown of a syscall-heavy
//! copy (small reads and writes) with the programs attached vs. not, in the same run.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{IoConfig, IoOffsets};

/// Cost of one program.
#[derive(Clone, Debug, Serialize)]
pub struct HandlerCost {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_event: f64,
}

/// Targets of issue 5 on the development machine kind.
pub const TARGET_NS_PER_TRACED_SYSCALL: f64 = 150.0;
/// Most accepted `copy_attached_s / copy_detached_s`.
pub const TARGET_SLOWDOWN_RATIO: f64 = 1.05;

/// Result of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct IoBench {
    /// Per attached program, over the attached runs with `kernel.bpf_stats_enabled`.
    pub handlers: Vec<HandlerCost>,
    /// Read+write syscalls the copy made while the stats were on.
    pub traced_syscalls: u64,
    /// `io_sys_enter` + `io_sys_exit` ns per event: what one traced syscall costs (each runs
    /// both once). Both also run for every other syscall on the machine while measuring;
    /// `other_syscalls_share` says how much of their runs that was.
    pub ns_per_traced_syscall: f64,
    /// 1 − traced syscalls / `io_sys_exit` runs.
    pub other_syscalls_share: f64,
    /// "PASS" or "MISS" against [`TARGET_NS_PER_TRACED_SYSCALL`].
    pub ns_per_traced_syscall_verdict: &'static str,
    /// Best-of-N wall time of the copy without and with the programs (stats off for both:
    /// the stats themselves add two clock reads per program run).
    pub copy_detached_s: f64,
    pub copy_attached_s: f64,
    /// `copy_attached_s / copy_detached_s`.
    pub slowdown_ratio: f64,
    /// Median over the rounds of each round's attached / detached time.
    pub slowdown_ratio_median: f64,
    /// "PASS" or "MISS" of `slowdown_ratio` against [`TARGET_SLOWDOWN_RATIO`].
    pub slowdown_verdict: &'static str,
    pub rounds: usize,
    pub block_size: usize,
    pub file_bytes: u64,
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Copies `src` to `dst` in `block` byte reads and writes; returns (time, syscalls).
pub fn syscall_heavy_copy(src: &Path, dst: &Path, block: usize) -> Result<(Duration, u64)> {
    let mut i = std::fs::File::open(src)?;
    let mut o = std::fs::File::create(dst)?;
    let mut buf = vec![0u8; block];
    let mut calls = 0;
    let t = Instant::now();
    loop {
        let n = i.read(&mut buf)?;
        calls += 1;
        if n == 0 {
            break;
        }
        o.write_all(&buf[..n])?;
        calls += 1;
    }
    Ok((t.elapsed(), calls))
}

/// [`syscall_heavy_copy`] in a forked child whose file table holds only fds 0–2 (the copy's
/// own files come next), like a workload started apart from the agent. The agent's process
/// holds hundreds of fds (maps, programs, links), so a copy run in it would use a grown fd
/// table, which the programs resolve on their slower path (see `docs/io.md`).
pub fn copy_in_child(src: &Path, dst: &Path, block: usize) -> Result<(Duration, u64)> {
    const CLOSE_RANGE_UNSHARE: libc::c_uint = 1 << 1;
    // SAFETY: an anonymous shared mapping of two u64, checked below.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if shared == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap for the copy child");
    }
    let out = shared.cast::<u64>();
    // A fork whose child shares our file table (CLONE_FILES), so that close_range's UNSHARE
    // below gives it a fresh table sized for fds 0–2 (a table that is not shared is kept as
    // is, grown). SAFETY: the benchmark runs single-threaded; the child only copies and exits.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0)
    } as libc::pid_t;
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork for the copy child");
    }
    if pid == 0 {
        // SAFETY: in the child: close fds 3.. in a fresh, unshared (small) table, copy, report
        // through the shared page, exit without unwinding into the parent's state.
        unsafe {
            let ok = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_UNSHARE) == 0;
            let r = if ok { syscall_heavy_copy(src, dst, block).ok() } else { None };
            let (ns, calls) = r.map_or((0, 0), |(d, c)| (d.as_nanos() as u64, c));
            *out = ns;
            *out.add(1) = calls;
            libc::_exit(if r.is_some() { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: our child; `shared` stays mapped until unmapped below.
    let (waited, ns, calls) = unsafe {
        let w = libc::waitpid(pid, &mut status, 0);
        let v = (w, *out, *out.add(1));
        libc::munmap(shared, 16);
        v
    };
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        anyhow::bail!("the copy child failed (wait status {status:#x})");
    }
    Ok((Duration::from_nanos(ns), calls))
}

fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" })
        .context("enabling kernel.bpf_stats_enabled (needs root)")
}

/// Runs the benchmark in `dir` with a `file_bytes` file copied in `block` byte syscalls,
/// alternating detached and attached runs `rounds` times (best of each is kept).
pub fn run(object: &[u8], dir: &Path, file_bytes: u64, block: usize, rounds: usize) -> Result<IoBench> {
    let src = dir.join("carbon-io-bench.src");
    let dst = dir.join("carbon-io-bench.dst");
    std::fs::write(&src, vec![0x5au8; file_bytes as usize])?;
    syscall_heavy_copy(&src, &dst, block)?; // warm the page cache
    let offsets: IoOffsets = super::offsets_from_kernel()?;
    set_bpf_stats(true)?;
    let mut detached = Duration::MAX;
    let mut attached = Duration::MAX;
    let mut ratios = Vec::new();
    let mut traced = 0;
    let mut handlers: Vec<HandlerCost> = Vec::new();
    for _ in 0..rounds.max(1) {
        let d = copy_in_child(&src, &dst, block)?.0;
        let mut loader = crate::probes::new_loader();
        super::configure_loader(&mut loader, &offsets);
        let mut ebpf = loader.load(object)?;
        let mut probes = super::attach(&mut ebpf, IoConfig::default())?;
        let a = copy_in_child(&src, &dst, block)?.0;
        detached = detached.min(d);
        attached = attached.min(a);
        ratios.push(a.as_secs_f64() / d.as_secs_f64());
        let _ = probes.drain();
        // A separate attached run with the kernel's per-program stats on.
        set_bpf_stats(true)?;
        let before = program_stats(&ebpf, &probes.programs)?;
        let (_, calls) = copy_in_child(&src, &dst, block)?;
        let after = program_stats(&ebpf, &probes.programs)?;
        set_bpf_stats(false)?;
        traced += calls;
        let _ = probes.drain();
        for ((name, c0, t0), (_, c1, t1)) in before.into_iter().zip(after) {
            let (cnt, ns) = (c1 - c0, t1 - t0);
            match handlers.iter_mut().find(|h| h.program == name) {
                Some(h) => {
                    h.run_count += cnt;
                    h.run_time_ns += ns;
                }
                None => handlers.push(HandlerCost {
                    program: name.into(),
                    run_count: cnt,
                    run_time_ns: ns,
                    ns_per_event: 0.0,
                }),
            }
        }
    }
    for h in &mut handlers {
        h.ns_per_event = if h.run_count == 0 { 0.0 } else { h.run_time_ns as f64 / h.run_count as f64 };
    }
    let cost = |name: &str| handlers.iter().find(|h| h.program == name);
    let ns_per_traced_syscall: f64 =
        ["io_sys_enter", "io_sys_exit"].iter().filter_map(|n| cost(n)).map(|h| h.ns_per_event).sum();
    let exit_runs = cost("io_sys_exit").map_or(0, |h| h.run_count);
    let other_syscalls_share = if exit_runs == 0 { 0.0 } else { 1.0 - traced as f64 / exit_runs as f64 };
    ratios.sort_by(f64::total_cmp);
    let slowdown_ratio = attached.as_secs_f64() / detached.as_secs_f64();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Ok(IoBench {
        handlers,
        traced_syscalls: traced,
        ns_per_traced_syscall,
        other_syscalls_share,
        ns_per_traced_syscall_verdict: verdict(ns_per_traced_syscall <= TARGET_NS_PER_TRACED_SYSCALL),
        copy_detached_s: detached.as_secs_f64(),
        copy_attached_s: attached.as_secs_f64(),
        slowdown_ratio,
        slowdown_ratio_median: ratios[ratios.len() / 2],
        slowdown_verdict: verdict(slowdown_ratio <= TARGET_SLOWDOWN_RATIO),
        rounds: rounds.max(1),
        block_size: block,
        file_bytes,
    })
}

/// (program, run count, run time ns) of each attached program, now.
fn program_stats(ebpf: &aya::Ebpf, programs: &[&'static str]) -> Result<Vec<(&'static str, u64, u64)>> {
    programs
        .iter()
        .map(|&name| {
            let info = ebpf.program(name).context("program")?.info()?;
            Ok((name, info.run_count(), info.run_time().as_nanos() as u64))
        })
        .collect()
}
