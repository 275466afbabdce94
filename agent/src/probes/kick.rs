//! Passing once through every CPU's scheduler before the maps are drained.
//!
//! The kernel side charges time when a context switch happens: an idle CPU's idle time, and a
//! thread that runs without switching, are charged only when that CPU next switches, which on
//! a quiet machine can be seconds later, in another interval. And the I/O programs hold each
//! CPU's last read/write calls in per-CPU slots until a call on that CPU changes them. So before
//! a drain, a thread of the agent moves onto each CPU in turn (a context switch there, which
//! charges what was running) and makes there the one syscall the I/O exit handler takes as
//! "flush this CPU's pending I/O" (a failing `pread64(-1, ..)` from the agent's tgid:
//! `IoOffsets::flush_tgid`).

/// Visits `cpus` in turn from a short-lived thread; returns how many of them the agent may not
/// run on (outside its cpuset or offline): their time and I/O are charged later.
pub fn kick_cpus(cpus: &[usize]) -> u64 {
    if cpus.is_empty() {
        return 0;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut unreachable = 0;
            for &cpu in cpus {
                if run_on_cpu(cpu) {
                    // SAFETY: a read into no buffer from an invalid fd: fails with EBADF.
                    unsafe { libc::pread(-1, std::ptr::null_mut(), 0, 0) };
                } else {
                    unreachable += 1;
                }
            }
            unreachable
        })
        .join()
        .unwrap_or(cpus.len() as u64)
    })
}

/// Moves the calling thread to `cpu` (and only there); false when it may not run there.
fn run_on_cpu(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity on the calling thread
    // (pid 0) migrates it before returning.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_the_cpus_it_may_run_on_and_counts_the_others() {
        let online = crate::procfs::online_cpu_ids();
        assert!(!online.is_empty());
        assert_eq!(kick_cpus(&online), 0);
        assert_eq!(kick_cpus(&[]), 0);
        assert_eq!(kick_cpus(&[libc::CPU_SETSIZE as usize + 5]), 1);
    }
}
