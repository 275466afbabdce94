//! Benchmark of the I/O programs: the kernel's own ns per event for each handler
//! (`kernel.bpf_stats_enabled`, run_time_ns / run_cnt), and the slowdown of a syscall-heavy
//! copy (small reads and writes) with the programs attached vs. not, in the same run.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use carbon_agent::io::{IoConfig, IoDetail};
use carbon_agent::probes::{btf::KernelBtf, io as probes_io, io::IoOffsets};

/// Cost of one program.
#[derive(Clone, Debug, Serialize)]
pub struct HandlerCost {
    pub program: String,
    /// Totals over the stats runs of every round.
    pub run_count: u64,
    pub run_time_ns: u64,
    /// `run_time_ns / run_count`.
    pub ns_per_event: f64,
    /// Median over the rounds of each round's ns per event: what the verdicts use, because
    /// the VM's host preempts the guest now and then and one such round moves the mean.
    pub ns_per_event_median: f64,
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
    /// What one traced syscall costs in the kernel: the median `io_sys_exit` ns per event
    /// plus `io_sys_enter`'s run time spread over the exits (it is attached only in the
    /// timing windows, `enter_share` of the syscalls). Both also run for every other syscall
    /// on the machine while measuring; `other_syscalls_share` says how much of the runs that was.
    pub ns_per_traced_syscall: f64,
    /// `io_sys_enter` runs / `io_sys_exit` runs.
    pub enter_share: f64,
    /// 1 − traced syscalls / `io_sys_exit` runs.
    pub other_syscalls_share: f64,
    /// "PASS" or "MISS" against [`TARGET_NS_PER_TRACED_SYSCALL`].
    pub ns_per_traced_syscall_verdict: &'static str,
    /// An empty program attached alone to `sys_exit` (`bench_empty_sys_exit`), median ns per
    /// event: the floor that any program on that tracepoint costs here (most of it the
    /// stats' own two clock reads).
    pub empty_program_ns_per_event: f64,
    /// The same for an empty raw tracepoint program (`bench_empty_raw_sys_exit`), the kind
    /// `shared/notes/kernel.md` measured.
    pub empty_raw_program_ns_per_event: f64,
    /// Best-of-N CPU time of the copy without programs, with the agent's I/O programs, and
    /// with only the empty program (stats off: they add two clock reads per program run).
    pub copy_detached_s: f64,
    pub copy_attached_s: f64,
    pub copy_empty_program_s: f64,
    /// Median over the rounds of each round's attached / detached CPU time (each the best of
    /// three copies).
    pub slowdown_ratio: f64,
    /// The same for the empty program: the floor of any syscall-exit hook.
    pub empty_program_slowdown_ratio: f64,
    /// "PASS" or "MISS" of `slowdown_ratio` against [`TARGET_SLOWDOWN_RATIO`].
    pub slowdown_verdict: &'static str,
    /// Share of time the enter program was configured to be attached.
    pub time_sampling: f64,
    pub rounds: usize,
    pub block_size: usize,
    pub file_bytes: u64,
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`: the scheduler's
/// `sum_exec_runtime`, which leaves out the time the VM's vCPU was not running, and the
/// kernel's writeback of the written pages, done by flusher threads).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Copies `src` to `dst` in `block` byte reads and writes; returns (the copying thread's CPU
/// time, syscalls). CPU time, not wall time: on a shared VM the wall time of a 0.1 s copy
/// varies by ±20 % from run to run (host preemption, writeback), its CPU time far less.
pub fn syscall_heavy_copy(src: &Path, dst: &Path, block: usize) -> Result<(Duration, u64)> {
    let mut i = std::fs::File::open(src)?;
    let mut o = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(dst)?;
    let mut buf = vec![0u8; block];
    let mut calls = 0;
    let t = thread_cpu_time();
    loop {
        let n = i.read(&mut buf)?;
        calls += 1;
        if n == 0 {
            break;
        }
        o.write_all(&buf[..n])?;
        calls += 1;
    }
    Ok((thread_cpu_time() - t, calls))
}

/// [`syscall_heavy_copy`] in a forked child whose file table holds only fds 0–2 (the copy's
/// own files come next), like a workload started apart from the agent (the agent's process
/// holds hundreds of fds: maps, programs, links). The programs read small and grown fd tables
/// the same way (`docs/io.md`), so this only keeps the agent's own state out of the copy.
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

/// Asks the kernel to drop a (clean) file's pages from the page cache.
fn drop_from_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: a valid open fd.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        anyhow::bail!("posix_fadvise(DONTNEED) on {}: error {r}", path.display());
    }
    Ok(())
}

fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" })
        .context("enabling kernel.bpf_stats_enabled (needs root)")
}

/// Copies per timing measurement (the best is kept).
const COPIES: usize = 3;

fn best_copy(src: &Path, dst: &Path, block: usize) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..COPIES {
        best = best.min(copy_in_child(src, dst, block)?.0.as_secs_f64());
    }
    Ok(best)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (program, run count, run time ns) of each program.
type ProgramCosts = Vec<(&'static str, u64, u64)>;

/// Per program (run count, run time) over one copy with the kernel's stats on; returns them
/// and the copy's syscalls.
fn stats_copy(
    ebpf: &aya::Ebpf,
    programs: &[&'static str],
    src: &Path,
    dst: &Path,
    block: usize,
) -> Result<(ProgramCosts, u64)> {
    set_bpf_stats(true)?;
    let before = program_stats(ebpf, programs)?;
    let copied = copy_in_child(src, dst, block);
    let after = program_stats(ebpf, programs);
    set_bpf_stats(false)?;
    let (after, (_, calls)) = (after?, copied?);
    let deltas =
        before.into_iter().zip(after).map(|((n, c0, t0), (_, c1, t1))| (n, c1 - c0, t1 - t0)).collect();
    Ok((deltas, calls))
}

/// Runs the benchmark in `dir` with a `file_bytes` file copied in `block` byte syscalls. Each
/// of the `rounds` measures the copy's CPU time without programs, with the agent's I/O
/// programs, and with only an empty program on `sys_exit` (best of three copies each), and
/// copies with the kernel's BPF stats on: for the syscall handlers and the empty programs a
/// copy from the page cache, for the other handlers a copy from a source dropped from the
/// cache to a new file (page-cache insertions, dirtied folios, block requests). The agent's
/// object is prepared for the running kernel, whose parsed BTF is `btf`.
pub fn run(btf: &KernelBtf, dir: &Path, file_bytes: u64, block: usize, rounds: usize) -> Result<IoBench> {
    let (object, error) = carbon_agent::probes::kfunc::agent_object(Some(btf));
    if let Some(e) = error {
        anyhow::bail!(e);
    }
    let object = object.bytes();
    let src = dir.join("carbon-io-bench.src");
    let dst = dir.join("carbon-io-bench.dst");
    std::fs::write(&src, vec![0x5au8; file_bytes as usize])?;
    syscall_heavy_copy(&src, &dst, block)?; // warm the page cache
    let offsets: IoOffsets = probes_io::offsets_from(btf, IoDetail::Syscalls)?;
    let kernel_btf = aya::Btf::from_sys_fs().context("the I/O benchmark needs the kernel BTF")?;
    let config = IoConfig::of(IoDetail::Syscalls);
    let (mut detached, mut attached, mut empty) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut ratios, mut empty_ratios, mut exit_ns, mut empty_ns) = (vec![], vec![], vec![], vec![]);
    let mut empty_raw_ns = vec![];
    let mut traced = 0;
    let mut handlers: Vec<(HandlerCost, Vec<f64>)> = Vec::new();
    for _ in 0..rounds.max(1) {
        let d = best_copy(&src, &dst, block)?;

        let mut loader = carbon_agent::probes::new_loader();
        probes_io::configure_loader(&mut loader, &offsets);
        let mut ebpf = loader.load(object)?;
        let mut probes = probes_io::attach_with(&mut ebpf, config.clone(), &kernel_btf)?;
        let a = best_copy(&src, &dst, block)?;
        let _ = probes.drain(&Default::default());
        // The syscall handlers on the copy from the page cache; the others (page-cache
        // insertions, dirtied folios, block requests) on a copy from a source dropped from the
        // cache to a new destination.
        let (warm, calls) = stats_copy(&ebpf, &probes.programs, &src, &dst, block)?;
        let _ = probes.drain(&Default::default());
        drop_from_cache(&src)?;
        std::fs::remove_file(&dst)?;
        let (cold, _) = stats_copy(&ebpf, &probes.programs, &src, &dst, block)?;
        let _ = probes.drain(&Default::default());
        drop(probes);
        drop(ebpf);
        traced += calls;
        let syscall_handler = |name: &str| name == "io_sys_enter" || name == "io_sys_exit";
        let costs = warm
            .into_iter()
            .filter(|c| syscall_handler(c.0))
            .chain(cold.into_iter().filter(|c| !syscall_handler(c.0)));
        for (name, cnt, ns) in costs {
            let per = if cnt == 0 { f64::NAN } else { ns as f64 / cnt as f64 };
            if name == "io_sys_exit" {
                exit_ns.push(per);
            }
            match handlers.iter_mut().find(|(h, _)| h.program == name) {
                Some((h, v)) => {
                    h.run_count += cnt;
                    h.run_time_ns += ns;
                    v.push(per);
                }
                None => handlers.push((
                    HandlerCost {
                        program: name.into(),
                        run_count: cnt,
                        run_time_ns: ns,
                        ns_per_event: 0.0,
                        ns_per_event_median: 0.0,
                    },
                    vec![per],
                )),
            }
        }

        let mut loader = carbon_agent::probes::new_loader();
        probes_io::configure_loader(&mut loader, &offsets);
        let mut ebpf = loader.load(object)?;
        let p: &mut aya::programs::BtfTracePoint =
            ebpf.program_mut(EMPTY_PROGRAM).context("no empty benchmark program")?.try_into()?;
        p.load("sys_exit", &kernel_btf)?;
        p.attach()?;
        let e = best_copy(&src, &dst, block)?;
        let (costs, _) = stats_copy(&ebpf, &[EMPTY_PROGRAM], &src, &dst, block)?;
        drop(ebpf);
        empty_ns.extend(costs.iter().filter(|c| c.1 > 0).map(|&(_, cnt, ns)| ns as f64 / cnt as f64));

        let mut ebpf = carbon_agent::probes::new_loader().load(object)?;
        let p: &mut aya::programs::RawTracePoint =
            ebpf.program_mut(EMPTY_RAW_PROGRAM).context("no empty raw benchmark program")?.try_into()?;
        p.load()?;
        p.attach("sys_exit")?;
        let (costs, _) = stats_copy(&ebpf, &[EMPTY_RAW_PROGRAM], &src, &dst, block)?;
        drop(ebpf);
        empty_raw_ns.extend(costs.iter().filter(|c| c.1 > 0).map(|&(_, cnt, ns)| ns as f64 / cnt as f64));

        detached = detached.min(d);
        attached = attached.min(a);
        empty = empty.min(e);
        ratios.push(a / d);
        empty_ratios.push(e / d);
    }
    let handlers: Vec<HandlerCost> = handlers
        .into_iter()
        .map(|(mut h, v)| {
            h.ns_per_event = if h.run_count == 0 { 0.0 } else { h.run_time_ns as f64 / h.run_count as f64 };
            h.ns_per_event_median = median(v.into_iter().filter(|x| x.is_finite()).collect());
            h
        })
        .collect();
    let cost = |name: &str| handlers.iter().find(|h| h.program == name);
    let exit_runs = cost("io_sys_exit").map_or(0, |h| h.run_count);
    let enter = cost("io_sys_enter").map_or((0, 0), |h| (h.run_count, h.run_time_ns));
    let enter_per_exit = if exit_runs == 0 { 0.0 } else { enter.1 as f64 / exit_runs as f64 };
    let ns_per_traced_syscall = median(exit_ns) + enter_per_exit;
    let other_syscalls_share = if exit_runs == 0 { 0.0 } else { 1.0 - traced as f64 / exit_runs as f64 };
    let slowdown_ratio = median(ratios);
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Ok(IoBench {
        handlers,
        traced_syscalls: traced,
        ns_per_traced_syscall,
        enter_share: if exit_runs == 0 { 0.0 } else { enter.0 as f64 / exit_runs as f64 },
        other_syscalls_share,
        ns_per_traced_syscall_verdict: verdict(ns_per_traced_syscall <= TARGET_NS_PER_TRACED_SYSCALL),
        empty_program_ns_per_event: median(empty_ns),
        empty_raw_program_ns_per_event: median(empty_raw_ns),
        copy_detached_s: detached,
        copy_attached_s: attached,
        copy_empty_program_s: empty,
        slowdown_ratio,
        empty_program_slowdown_ratio: median(empty_ratios),
        slowdown_verdict: verdict(slowdown_ratio <= TARGET_SLOWDOWN_RATIO),
        time_sampling: config.time_sampling,
        rounds: rounds.max(1),
        block_size: block,
        file_bytes,
    })
}

/// The empty program on `sys_exit` in the agent's object (see `agent-ebpf/src/io.rs`).
pub const EMPTY_PROGRAM: &str = "bench_empty_sys_exit";
/// The empty raw tracepoint program on `sys_exit`.
pub const EMPTY_RAW_PROGRAM: &str = "bench_empty_raw_sys_exit";

/// (program, run count, run time ns) of each attached program, now.
fn program_stats(ebpf: &aya::Ebpf, programs: &[&'static str]) -> Result<ProgramCosts> {
    programs
        .iter()
        .map(|&name| {
            let info = ebpf.program(name).context("program")?.info()?;
            Ok((name, info.run_count(), info.run_time().as_nanos() as u64))
        })
        .collect()
}
