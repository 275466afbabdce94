//! Deterministic workloads for the kernel tests.
//!
//! - `burn MS`: burn MS milliseconds of this thread's CPU time, then exit.
//! - `threads N MS`: N threads each burn MS ms of CPU time.
//! - `fork-storm N MS`: fork N children that each burn MS ms of CPU and exit; wait for all,
//!   then print `{"children_cpu_ns": ...}` from getrusage(RUSAGE_CHILDREN).
//! - `spin SECS THREADS CPU`: THREADS threads spin for SECS seconds of wall-clock time, all
//!   pinned to CPU (so the scheduler shares that CPU equally among all spinning threads).
//! - `net BYTES`: send BYTES over a loopback TCP connection to itself and receive them.
//! - `exit CODE`: exit with CODE.
use std::time::Duration;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn burn(ms: u64) {
    let end = thread_cpu_ns() + ms * 1_000_000;
    let mut x = 0u64;
    while thread_cpu_ns() < end {
        for i in 0..1000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn arg(args: &[String], i: usize) -> u64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("workload: argument {i} must be a number");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("burn") => burn(arg(&args, 2)),
        Some("threads") => {
            let ms = arg(&args, 3);
            let handles: Vec<_> = (0..arg(&args, 2)).map(|_| std::thread::spawn(move || burn(ms))).collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        }
        Some("fork-storm") => {
            let (n, ms) = (arg(&args, 2), arg(&args, 3));
            for _ in 0..n {
                // SAFETY: single-threaded here; the child only burns CPU and _exits.
                match unsafe { libc::fork() } {
                    0 => {
                        burn(ms);
                        unsafe { libc::_exit(0) };
                    }
                    -1 => {
                        eprintln!("workload: fork failed: {}", std::io::Error::last_os_error());
                        std::process::exit(1);
                    }
                    _ => {}
                }
            }
            let mut status = 0;
            // SAFETY: plain waits for our own children.
            while unsafe { libc::wait(&mut status) } > 0 {}
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
            let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
            println!("{{\"children_cpu_ns\": {}}}", ns(ru.ru_utime) + ns(ru.ru_stime));
        }
        Some("spin") => {
            let (secs, threads, cpu) = (arg(&args, 2), arg(&args, 3), arg(&args, 4) as usize);
            // SAFETY: a zeroed cpu_set_t with one CPU set, for this whole process.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                    eprintln!("workload: sched_setaffinity: {}", std::io::Error::last_os_error());
                    std::process::exit(1);
                }
            }
            let end = std::time::Instant::now() + Duration::from_secs(secs);
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::spawn(move || {
                        let mut x = 0u64;
                        while std::time::Instant::now() < end {
                            for i in 0..10_000u64 {
                                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                            }
                            std::hint::black_box(x);
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        }
        Some("net") => {
            use std::io::{Read, Write};
            let bytes = arg(&args, 2) as usize;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
            let addr = listener.local_addr().unwrap();
            let reader = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 65536];
                let mut got = 0;
                while got < bytes {
                    match conn.read(&mut buf).unwrap() {
                        0 => break,
                        n => got += n,
                    }
                }
                got
            });
            let mut out = std::net::TcpStream::connect(addr).unwrap();
            let chunk = vec![1u8; 65536];
            let mut sent = 0;
            while sent < bytes {
                let n = (bytes - sent).min(chunk.len());
                out.write_all(&chunk[..n]).unwrap();
                sent += n;
            }
            drop(out);
            assert_eq!(reader.join().unwrap(), bytes);
        }
        Some("sleep") => std::thread::sleep(Duration::from_millis(arg(&args, 2))),
        Some("exit") => std::process::exit(arg(&args, 2) as i32),
        _ => {
            eprintln!("usage: workload burn MS | threads N MS | fork-storm N MS | sleep MS | exit CODE");
            std::process::exit(2);
        }
    }
}
