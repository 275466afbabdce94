//! Loads whose work is fixed (same operations every run), so that their wall time with and
//! without the agent can be compared.

use std::{
    io::{Read, Write},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The CPU the context-switch load is pinned to: the last one this process may run on.
pub fn last_allowed_cpu() -> Result<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size matches the set.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .context("this process may run on no CPU")
}

fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: as above; CPU_SET writes within the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// How long one run of a load took.
#[derive(Debug, Clone, Copy)]
pub struct LoadTimes {
    /// Wall-clock time of the run.
    pub wall: Duration,
    /// CPU time the load's threads used (user + system, kernel handlers included: a handler
    /// runs in the context of the task that triggers it). Unlike wall time it does not grow
    /// when other processes share the CPU, so it stays comparable on a busy machine.
    pub cpu: Duration,
}

/// CPU time of the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Two threads pinned to the same CPU pass one byte back and forth through two pipes `rounds`
/// times. Each round trip blocks each thread once, so it costs two context switches between
/// the two threads (no idle in between) and four one-byte pipe syscalls.
pub fn pipe_ping_pong(rounds: u64, cpu: usize) -> Result<LoadTimes> {
    let (mut ping_rx, mut ping_tx) = std::io::pipe().context("creating a pipe")?;
    let (mut pong_rx, mut pong_tx) = std::io::pipe().context("creating a pipe")?;
    let echo = thread::spawn(move || -> Result<Duration> {
        pin_current_thread(cpu)?;
        let mut byte = [0u8];
        let cpu_start = thread_cpu_time();
        for _ in 0..rounds {
            ping_rx.read_exact(&mut byte)?;
            pong_tx.write_all(&byte)?;
        }
        Ok(thread_cpu_time() - cpu_start)
    });
    pin_current_thread(cpu)?;
    let mut byte = [0u8];
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    for _ in 0..rounds {
        ping_tx.write_all(&[1])?;
        pong_rx.read_exact(&mut byte)?;
    }
    let cpu = thread_cpu_time() - cpu_start;
    let wall = start.elapsed();
    let echo_cpu = echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(LoadTimes { wall, cpu: cpu + echo_cpu })
}
