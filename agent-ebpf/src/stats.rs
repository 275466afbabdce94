//! Per-CPU counters of losses (full maps, full ring buffers), read by userspace and reported.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use carbon_agent_common::stat;

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Adds `n` to counter `index` (one of [`carbon_agent_common::stat`]) on this CPU.
#[inline(always)]
pub fn add(index: u32, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += n };
    }
}
