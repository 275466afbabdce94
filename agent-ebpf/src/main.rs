//! carbon-agent's eBPF programs.
//!
//! Every handler does the least work that answers its question and aggregates in maps;
//! userspace drains the maps once per interval. See `docs/architecture.md`.
//!
//! - [`sched`]: on-CPU nanoseconds per tgid from `sched_switch`.
//! - [`lifecycle`]: fork / exec / exit events into a ring buffer.
//! - [`stats`]: per-CPU counters of everything that was dropped for lack of capacity.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

mod io;
mod lifecycle;
mod sched;
mod stats;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
