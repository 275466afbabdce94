//! Sampling windows for the time spent in I/O syscalls (`io_sys_enter`, and in the page-cache
//! tier `io_sys_exit` too, attached only in the windows).
//!
//! Any program on the `sys_enter` tracepoint runs on every syscall of the machine, and even an
//! empty one costs about as much as the whole `sys_exit` handler (`docs/io.md`). So
//! `io_sys_enter`, which only records the enter time of I/O syscalls, is attached for a
//! window of `fraction × period` at a random offset in each period, and detached otherwise.
//! The calls that enter inside a window are timed (enter→exit, by the exit handler); every
//! call, windowed or not, is counted. Userspace scales the timed calls' time to all calls
//! (`estimate_ns`). With a random offset every period, each call has the same chance of being
//! timed whatever its duration or when it happens, so the estimate is unbiased.
//!
//! Attaching is `BPF_RAW_TRACEPOINT_OPEN` on the loaded program, detaching is closing the link.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

#[repr(C)]
struct RawTracepointOpen {
    /// Tracepoint name; 0 for a `tp_btf` program (its attach target is in the program).
    name: u64,
    prog_fd: u32,
    _pad: u32,
    cookie: u64,
}

/// Attaches a loaded `tp_btf` program; the link lasts as long as the returned fd.
fn attach(prog: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let attr = RawTracepointOpen { name: 0, prog_fd: prog.as_raw_fd() as u32, _pad: 0, cookie: 0 };
    // SAFETY: a valid bpf_attr prefix for BPF_RAW_TRACEPOINT_OPEN.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            &attr as *const RawTracepointOpen,
            std::mem::size_of::<RawTracepointOpen>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One window per period at a random offset: (offset, window), both within `period`.
pub fn window(period: Duration, fraction: f64, random: u64) -> (Duration, Duration) {
    let fraction = fraction.clamp(0.0, 1.0);
    let on = period.mul_f64(fraction);
    let slack = (period - on).as_nanos() as u64;
    let offset = if slack == 0 { 0 } else { random % (slack + 1) };
    (Duration::from_nanos(offset), on)
}

/// xorshift64*: the window offsets need no more than that.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self((t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The thread that attaches the timing programs in windows. Stops (and detaches) when dropped.
pub struct EnterSampler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    attached_ns: Arc<AtomicU64>,
    started: Instant,
    /// The configured share of time attached.
    pub fraction: f64,
}

/// How long the exit program stays attached after the enter program is detached (page-cache
/// tier), so that calls in flight when a window closes are still timed.
pub const EXIT_GRACE: Duration = Duration::from_millis(2);

impl EnterSampler {
    /// Starts sampling with duplicates of the loaded programs' fds: each window attaches them
    /// in the order given and detaches them in the reverse order, the last one (`io_sys_enter`)
    /// first and the others [`EXIT_GRACE`] later. `window_start`, when given (the `IO_WINDOW`
    /// map), gets the CLOCK_MONOTONIC time of each window's opening before its attach.
    /// Attaches once before returning, so that a program the kernel refuses fails here.
    pub fn start(
        progs: &[BorrowedFd<'_>],
        mut window_start: Option<aya::maps::Array<aya::maps::MapData, u64>>,
        fraction: f64,
        period: Duration,
    ) -> Result<Self> {
        let progs: Vec<OwnedFd> = progs
            .iter()
            .map(|p| p.try_clone_to_owned().context("duplicating a timing program's fd"))
            .collect::<Result<_>>()?;
        let mut open_window = move |progs: &[OwnedFd]| -> std::io::Result<Vec<OwnedFd>> {
            if let Some(m) = window_start.as_mut() {
                m.set(0, crate::probes::monotonic_ns(), 0).map_err(std::io::Error::other)?;
            }
            progs.iter().map(|p| attach(p.as_fd())).collect()
        };
        // The first window opens now (so that what runs first is timed too).
        let first =
            open_window(&progs).context("attaching the I/O timing programs (tp_btf/sys_enter, sys_exit)")?;
        let first_window = period.mul_f64(fraction.clamp(0.0, 1.0));
        let (stop, stopped) = mpsc::channel::<()>();
        let attached_ns = Arc::new(AtomicU64::new(0));
        let counter = attached_ns.clone();
        let thread = std::thread::Builder::new()
            .name("io-time-sampler".into())
            .spawn(move || {
                let mut rng = Rng::seeded();
                // Sleeps `d`; false when asked to stop.
                let sleep =
                    |d: Duration| matches!(stopped.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout));
                // The first window, already attached, opens the first period.
                let mut first = Some(first);
                loop {
                    let (offset, on) = match first {
                        Some(_) => (Duration::ZERO, first_window),
                        None => window(period, fraction, rng.next()),
                    };
                    if !sleep(offset) {
                        return;
                    }
                    let t = Instant::now();
                    let links = first.take().map_or_else(|| open_window(&progs), Ok);
                    let go_on = sleep(on);
                    // A window whose attach failed timed no call: it is left out of the
                    // measured share.
                    if let Ok(mut links) = links {
                        let enter = links.pop();
                        drop(enter);
                        counter.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        if !links.is_empty() {
                            std::thread::sleep(EXIT_GRACE);
                        }
                        drop(links);
                    }
                    if !go_on || !sleep(period.saturating_sub(on + offset + EXIT_GRACE)) {
                        return;
                    }
                }
            })
            .context("starting the I/O timing sampler thread")?;
        Ok(Self { stop: Some(stop), thread: Some(thread), attached_ns, started: Instant::now(), fraction })
    }

    /// Share of the time since the start that `io_sys_enter` was attached.
    pub fn measured_fraction(&self) -> f64 {
        let total = self.started.elapsed().as_nanos() as f64;
        if total == 0.0 { 0.0 } else { self.attached_ns.load(Ordering::Relaxed) as f64 / total }
    }
}

impl Drop for EnterSampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_inside_the_period() {
        let p = Duration::from_millis(200);
        for r in [0, 1, 17, 179_999_999, 180_000_000, 180_000_001, u64::MAX] {
            let (offset, on) = window(p, 0.1, r);
            assert_eq!(on, Duration::from_millis(20));
            assert!(offset + on <= p, "{r}: {offset:?} + {on:?}");
        }
        assert_eq!(window(p, 1.0, 12345), (Duration::ZERO, p));
        assert_eq!(window(p, 7.0, 12345), (Duration::ZERO, p));
    }

    #[test]
    fn offsets_spread_over_the_slack() {
        let p = Duration::from_millis(100);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let (offset, _) = window(p, 0.1, rng.next());
            buckets[(offset.as_nanos() * 10 / 90_000_001) as usize] += 1;
        }
        // Uniform: 1,000 per bucket; far outside ±20 % would bias the timed calls by time.
        assert!(buckets.iter().all(|&b| (800..1200).contains(&b)), "{buckets:?}");
    }
}
