//! CPU use per interval: the differences of the kernel's cumulative per-tgid counters.
//!
//! This is the hand-off point of the pipeline: kernel probes → **usage per interval** →
//! meters → attribution → carbon → outputs. Everything downstream (attribution, carbon,
//! waste findings) consumes an [`IntervalUsage`] and never touches the kernel.

use std::collections::BTreeMap;

/// CPU time of one process (thread group) in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCpu {
    /// On-CPU nanoseconds of all its threads in the interval.
    pub cpu_ns: u64,
    /// Context switches out of its threads in the interval.
    pub switches: u64,
}

/// Everything the CPUs did in one interval, complete: the per-process rows, the kernel
/// threads and the idle tasks add up to (interval length × CPUs), up to the part of the
/// current time slices not yet closed by a context switch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalUsage {
    /// Wall-clock length of the interval, in seconds.
    pub interval_s: f64,
    /// Online CPUs.
    pub ncpu: u32,
    /// User processes by tgid (kernel threads and idle are not in here). Rows with zero
    /// CPU time are omitted.
    pub processes: BTreeMap<u32, ProcessCpu>,
    /// On-CPU nanoseconds of kernel threads (kthreadd and its children).
    pub kernel_cpu_ns: u64,
    /// Nanoseconds the CPUs ran their idle tasks.
    pub idle_cpu_ns: u64,
}

impl IntervalUsage {
    /// CPU nanoseconds of user processes.
    pub fn process_cpu_ns(&self) -> u64 {
        self.processes.values().map(|p| p.cpu_ns).sum()
    }

    /// CPU nanoseconds of user processes and kernel threads: everything but idle.
    pub fn busy_cpu_ns(&self) -> u64 {
        self.process_cpu_ns() + self.kernel_cpu_ns
    }

    /// Busy CPU time over available CPU time (interval × CPUs), clamped to [0, 1].
    pub fn utilization(&self) -> f64 {
        let available = self.interval_s * 1e9 * f64::from(self.ncpu.max(1));
        if available <= 0.0 {
            return 0.0;
        }
        (self.busy_cpu_ns() as f64 / available).clamp(0.0, 1.0)
    }
}
