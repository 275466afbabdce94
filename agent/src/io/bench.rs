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

/// Result of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct IoBench {
    /// Per attached program, over the attached copy runs.
    pub handlers: Vec<HandlerCost>,
    /// Read+write syscalls the copy made while attached.
    pub traced_syscalls: u64,
    /// (`io_sys_enter` + `io_sys_exit` run time) / traced syscalls: the cost per traced I/O
    /// syscall, including the runs of the two programs on the copy's other syscalls.
    pub ns_per_traced_syscall: f64,
    /// Best-of-N wall time of the copy without and with the programs.
    pub copy_detached_s: f64,
    pub copy_attached_s: f64,
    /// `copy_attached_s / copy_detached_s`.
    pub slowdown_ratio: f64,
    pub block_size: usize,
    pub file_bytes: u64,
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
    let mut traced = 0;
    let mut handlers: Vec<HandlerCost> = Vec::new();
    for _ in 0..rounds.max(1) {
        detached = detached.min(syscall_heavy_copy(&src, &dst, block)?.0);
        let mut loader = crate::probes::new_loader();
        super::configure_loader(&mut loader, &offsets);
        let mut ebpf = loader.load(object)?;
        let mut probes = super::attach(&mut ebpf, IoConfig::default())?;
        let (t, calls) = syscall_heavy_copy(&src, &dst, block)?;
        attached = attached.min(t);
        traced += calls;
        let _ = probes.drain();
        for name in probes.programs.clone() {
            let info = ebpf.program(name).context("program")?.info()?;
            let (cnt, ns) = (info.run_count(), info.run_time().as_nanos() as u64);
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
    set_bpf_stats(false)?;
    for h in &mut handlers {
        h.ns_per_event = if h.run_count == 0 { 0.0 } else { h.run_time_ns as f64 / h.run_count as f64 };
    }
    let sys_ns: u64 = handlers
        .iter()
        .filter(|h| h.program == "io_sys_enter" || h.program == "io_sys_exit")
        .map(|h| h.run_time_ns)
        .sum();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Ok(IoBench {
        handlers,
        traced_syscalls: traced,
        ns_per_traced_syscall: sys_ns as f64 / traced.max(1) as f64,
        copy_detached_s: detached.as_secs_f64(),
        copy_attached_s: attached.as_secs_f64(),
        slowdown_ratio: attached.as_secs_f64() / detached.as_secs_f64(),
        block_size: block,
        file_bytes,
    })
}
