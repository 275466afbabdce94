//! Kernel tests of the I/O probes and the waste detectors on real workloads. They need root
//! (CI runs them as root) and fail loudly without it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use carbon_agent::io::{self, IoConfig, IoInterval, IoProbes};
use carbon_agent::waste::{
    Coefficients, Finding, FindingKind, IntervalEnergy, ProcessInfo, Thresholds, WasteTracker,
    hash::{ContentHasher, FsHasher},
};

/// The tests share the syscall tracepoints; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the I/O kernel tests must run as root (they load eBPF programs)"
    );
}

struct Probes {
    _ebpf: aya::Ebpf,
    io: IoProbes,
}

fn attach() -> Probes {
    attach_sampling(IoConfig::default().time_sampling)
}

/// [`attach`] with the given share of time in which the I/O syscalls are timed.
fn attach_sampling(time_sampling: f64) -> Probes {
    require_root();
    let btf = carbon_agent::probes::btf::KernelBtf::from_sysfs(Path::new("/sys")).expect("kernel BTF");
    let offsets = Box::leak(Box::new(io::offsets_from(&btf).expect("offsets from BTF")));
    let mut loader = carbon_agent::probes::new_loader();
    io::configure_loader(&mut loader, offsets);
    let (object, error) = carbon_agent::probes::kfunc::agent_object(Some(&btf));
    assert_eq!(error, None, "the I/O programs need bpf_rdonly_cast");
    let mut ebpf = loader.load(object.bytes()).expect("load the eBPF object");
    let config = IoConfig { time_sampling, ..IoConfig::default() };
    let io = io::attach(&mut ebpf, config).expect("attach the I/O programs");
    Probes { _ebpf: ebpf, io }
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new("/var/tmp").join(format!("carbon-io-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_random(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut buf = vec![0u8; len];
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(path, buf).unwrap();
}

/// Parent of a process from /proc, 0 when gone.
fn ppid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// A process tree from the lifecycle of the test: everything below `root` (a shell we start)
/// maps to it; other tgids are their own tree. Short-lived children are gone by drain time,
/// so the workloads run under a shell whose pid is the root and tgids are learned while they
/// live (the lead's process tree does this from lifecycle events).
struct Trees {
    roots: Mutex<BTreeMap<u32, u32>>,
}

impl Trees {
    fn info(&self, tgid: u32, root: u32) -> ProcessInfo {
        let mut m = self.roots.lock().unwrap();
        if let Some(r) = m.get(&tgid) {
            return ProcessInfo { root: *r, comm: comm(tgid) };
        }
        let mut p = tgid;
        let mut r = tgid;
        for _ in 0..64 {
            if p == root {
                r = root;
                break;
            }
            p = ppid(p);
            if p <= 1 {
                break;
            }
        }
        m.insert(tgid, r);
        ProcessInfo { root: r, comm: comm(tgid) }
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default()
}

const ENERGY: IntervalEnergy = IntervalEnergy { cpu_j_per_cpu_s: 10.0, g_per_kwh: 100.0 };

fn tracker() -> WasteTracker {
    WasteTracker::new(Thresholds::default(), Coefficients::default(), 100_000)
}

fn of_root(findings: &[Finding], root: u32) -> Vec<&Finding> {
    findings.iter().filter(|f| f.tree == root).collect()
}

/// Forks a child that runs `work`, then stops itself (SIGSTOP) so that the parent can read
/// its /proc files before it exits; returns its pid once it has stopped. The child exits with
/// 0 when `work` succeeded. Finish it with [`reap`].
///
/// The child first closes every fd from 3 up (`work` opens what it uses). A fork without exec
/// keeps copies of the parent's fds, BPF links included: one taken while the timing sampler's
/// window was open would keep `io_sys_enter` attached for the child's whole life, and time
/// every call it makes.
fn fork_stopped(work: impl FnOnce() -> std::io::Result<()>) -> libc::pid_t {
    // SAFETY: fork in a test; the child only does syscalls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: closes this child's own copies of its fds from 3 up.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        let code = if work().is_ok() { 0 } else { 1 };
        // SAFETY: stop here so that the parent reads /proc/<pid>/..., then exit.
        unsafe {
            libc::raise(libc::SIGSTOP);
            libc::_exit(code)
        };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    pid
}

/// Kills and reaps a child of [`fork_stopped`].
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: our child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}

#[test]
fn byte_counts_match_proc_io() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every call timed: the time must come with every successful call.
    let mut p = attach_sampling(1.0);
    let dir = scratch("procio");
    let path = dir.join("data");
    write_random(&path, 4 << 20, 1);
    let _ = p.io.drain();
    #[expect(
        clippy::unused_io_amount,
        reason = "the test compares whatever was read and written with /proc/<pid>/io"
    )]
    let pid = fork_stopped(|| {
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let mut buf = vec![0u8; 64 << 10];
        // read
        while f.read(&mut buf)? > 0 {}
        // pread64
        for i in 0..32 {
            f.read_at(&mut buf, i * 65536)?;
        }
        // readv
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 8192];
        let mut f2 = std::fs::File::open(&path)?;
        for _ in 0..64 {
            f2.read_vectored(&mut [std::io::IoSliceMut::new(&mut a), std::io::IoSliceMut::new(&mut b)])?;
        }
        let mut out = std::fs::File::create(path.with_extension("out"))?;
        // write, writev, pwrite64
        for _ in 0..64 {
            out.write_all(&buf)?;
        }
        for _ in 0..64 {
            out.write_vectored(&[std::io::IoSlice::new(&a), std::io::IoSlice::new(&b)])?;
        }
        for i in 0..32 {
            out.write_at(&buf[..1000], i * 1000)?;
        }
        Ok(())
    });
    let procio = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| -> u64 {
        procio.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap()
    };
    let (rchar, wchar) = (field("rchar:"), field("wchar:"));
    let iv = p.io.drain();
    reap(pid);
    let row = iv.processes.get(&(pid as u32)).copied().unwrap_or_default();
    eprintln!("rchar {rchar} wchar {wchar} probes {row:?}");
    assert!(rchar > 4 << 20 && wchar > 4 << 20, "workload too small: {procio}");
    let close = |a: u64, b: u64| (a as f64 - b as f64).abs() <= 0.01 * b as f64;
    assert!(close(row.read_bytes, rchar), "read_bytes {} vs rchar {rchar}", row.read_bytes);
    assert!(close(row.write_bytes, wchar), "write_bytes {} vs wchar {wchar}", row.write_bytes);
    assert!(row.io_cpu_ns > 0 && row.read_calls > 100 && row.write_calls > 100, "{row:?}");
    assert_eq!(row.timed_calls, row.read_calls + row.write_calls - row.failed_calls, "{row:?}");
    // Per-file: the data file was read with distinct offsets covering it.
    let f = iv.files.iter().find(|f| f.tgid == pid as u32 && f.path.as_deref() == Some(path.as_path()));
    let f = f.unwrap_or_else(|| panic!("no file activity for {path:?}: {:?}", iv.files));
    assert_eq!(f.read_ranges.covered(), 4 << 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the default sampling (the enter program attached a tenth of the time), a syscall-bound
/// loop of 4 KiB preads gets about a tenth of its calls timed, and the time scaled to all
/// calls is close to the CPU time the loop spent (nearly all of it inside those syscalls).
#[test]
fn sampled_io_time_scales_to_all_calls() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("sampled");
    let path = dir.join("data");
    write_random(&path, 4 << 20, 2);
    let _ = p.io.drain();
    let pid = fork_stopped(|| {
        let f = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; 4096];
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(1500) {
            for i in 0..1024 {
                f.read_exact_at(&mut buf, i * 4096)?;
            }
        }
        Ok(())
    });
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let cpu_ns: u64 = schedstat.split_whitespace().next().unwrap().parse().unwrap();
    let iv = p.io.drain();
    reap(pid);
    let row = iv.processes.get(&(pid as u32)).copied().unwrap_or_default();
    eprintln!("cpu {cpu_ns} ns, probes {row:?}, timing {:?}", iv.timing);
    let calls = row.read_calls - row.failed_calls;
    assert!(calls > 100_000, "{row:?}");
    let share = row.timed_calls as f64 / calls as f64;
    assert!((0.03..0.3).contains(&share), "timed share {share}: {row:?}");
    let ratio = row.io_cpu_ns as f64 / cpu_ns as f64;
    assert!((0.5..1.3).contains(&ratio), "I/O time {} ns vs CPU time {cpu_ns} ns", row.io_cpu_ns);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn python() -> String {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "python3".into()
}

/// Runs a single command as its own tree; returns the findings of that tree.
fn findings_of(p: &mut Probes, tracker: &mut WasteTracker, args: &[&str], uid: Option<u32>) -> u32 {
    let (root, ivs) = run_tree(p, args, uid);
    let trees = Trees { roots: Mutex::new(BTreeMap::new()) };
    for iv in &ivs {
        tracker.observe(iv, ENERGY, &|t| trees.info(t, root));
    }
    root
}

/// Runs a single command; returns its pid and what the probes saw meanwhile, per interval.
fn run_tree(p: &mut Probes, args: &[&str], uid: Option<u32>) -> (u32, Vec<IoInterval>) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).stdout(std::process::Stdio::null());
    if let Some(u) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(u).gid(u);
    }
    let mut child = cmd.spawn().unwrap();
    let root = child.id();
    let mut ivs: Vec<IoInterval> = Vec::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ivs.push(p.io.drain());
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    ivs.push(p.io.drain());
    assert!(child.wait().unwrap().success(), "workload failed: {args:?}");
    (root, ivs)
}

fn within(a: u64, b: u64, tol: f64) -> bool {
    (a as f64 - b as f64).abs() <= tol * b as f64
}

#[test]
fn reread_of_a_64mib_file_five_times() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("reread");
    let data = dir.join("dataset.bin");
    write_random(&data, 64 << 20, 2);
    let mut t = tracker();
    let script = format!(
        "f='{}'\nfor _ in range(5):\n    with open(f, 'rb') as h:\n        while h.read(1 << 20): pass\n",
        data.display()
    );
    let root = findings_of(&mut p, &mut t, &[&python(), "-c", &script], None);
    let mut h = FsHasher::new(0);
    let all = t.findings(&mut h);
    let mine = of_root(&all, root);
    eprintln!("{mine:#?}");
    let rereads: Vec<_> = mine.iter().filter(|f| f.kind == FindingKind::Reread).collect();
    assert_eq!(rereads.len(), 1, "{mine:#?}");
    let f = rereads[0];
    assert!(within(f.bytes, 256 << 20, 0.02), "redundant bytes {}", f.bytes);
    assert_eq!(f.paths, vec![data.display().to_string()]);
    assert_eq!(f.count, 5);
    assert!(f.energy_j > 0.0 && f.emissions_g > 0.0 && !f.suggestion.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Pages a write puts in the page cache hold new data, not data fetched from storage: a file
/// written, flushed and dropped from the cache, then read once, was fetched once (16 MiB of
/// misses, not 32) and is no re-fetch.
#[test]
fn pages_written_are_not_fetched_from_storage() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("written");
    let data = dir.join("fresh.bin");
    let script = format!(
        "import os\nf = '{}'\nwith open(f, 'wb') as h:\n    for i in range(16):\n        h.write(os.urandom(1 << 20))\n    h.flush()\n    os.fsync(h.fileno())\n    os.posix_fadvise(h.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)\nwith open(f, 'rb') as h:\n    while h.read(1 << 20): pass\n",
        data.display()
    );
    let (root, ivs) = run_tree(&mut p, &[&python(), "-c", &script], None);
    let misses: u64 =
        ivs.iter().filter_map(|iv| iv.processes.get(&root)).map(|r| r.page_cache_misses_bytes).sum();
    let written: u64 = ivs.iter().filter_map(|iv| iv.processes.get(&root)).map(|r| r.write_file_bytes).sum();
    assert_eq!(written, 16 << 20);
    assert!(within(misses, 16 << 20, 0.02), "page-cache misses {misses} for a 16 MiB file read once");
    let mut t = tracker();
    let trees = Trees { roots: Mutex::new(BTreeMap::new()) };
    for iv in &ivs {
        t.observe(iv, ENERGY, &|x| trees.info(x, root));
    }
    let all = t.findings(&mut FsHasher::new(0));
    let mine = of_root(&all, root);
    assert!(mine.iter().all(|f| f.kind != FindingKind::Refetch), "{mine:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cp_of_32mib_is_one_copy() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("cp");
    let (src, dst) = (dir.join("src.bin"), dir.join("dst.bin"));
    write_random(&src, 32 << 20, 3);
    let mut t = tracker();
    let root = findings_of(&mut p, &mut t, &["cp", src.to_str().unwrap(), dst.to_str().unwrap()], None);
    let mut h = FsHasher::new(256 << 20);
    let all = t.findings(&mut h);
    let mine = of_root(&all, root);
    eprintln!("{mine:#?}");
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0].kind, FindingKind::Copy);
    assert!(within(mine[0].bytes, 32 << 20, 0.01), "copied bytes {}", mine[0].bytes);
    assert_eq!(mine[0].paths, vec![src.display().to_string(), dst.display().to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_written_and_deleted_unread() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("wtd");
    let tmp = dir.join("scratch.tmp");
    let mut t = tracker();
    let script = format!(
        "import os\nf='{}'\nwith open(f, 'wb') as h:\n    for _ in range(16): h.write(os.urandom(1 << 20))\nos.remove(f)\n",
        tmp.display()
    );
    let root = findings_of(&mut p, &mut t, &[&python(), "-c", &script], None);
    let mut h = FsHasher::new(0);
    let all = t.findings(&mut h);
    let mine = of_root(&all, root);
    eprintln!("{mine:#?}");
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0].kind, FindingKind::WriteThenDelete);
    assert_eq!(mine[0].bytes, 16 << 20);
    assert_eq!(mine[0].paths, vec![tmp.display().to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_users_reading_identical_copies_is_one_duplicate() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("dup");
    let mut paths = Vec::new();
    for uid in [4101u32, 4102] {
        let d = dir.join(format!("u{uid}"));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("corpus.bin");
        write_random(&f, 16 << 20, 4);
        std::os::unix::fs::chown(&f, Some(uid), Some(uid)).unwrap();
        paths.push((uid, f));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut t = tracker();
    for (uid, f) in &paths {
        findings_of(&mut p, &mut t, &["cat", f.to_str().unwrap()], Some(*uid));
    }
    let mut h = FsHasher::new(256 << 20);
    let all = t.findings(&mut h);
    let dups: Vec<_> = all.iter().filter(|f| f.kind == FindingKind::Duplicate).collect();
    eprintln!("{all:#?}");
    assert_eq!(dups.len(), 1, "{all:#?}");
    let mut got = dups[0].paths.clone();
    got.sort();
    assert_eq!(got, paths.iter().map(|p| p.1.display().to_string()).collect::<Vec<_>>());
    assert_eq!(dups[0].bytes, 16 << 20);
    assert_eq!(dups[0].count, 2);
    assert_eq!(h.bytes_read(), 32 << 20, "the agent's own hashing reads are reported");
    assert!(all.iter().all(|f| f.kind == FindingKind::Duplicate), "{all:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pipeline_of_distinct_inputs_and_outputs_has_no_findings() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach();
    let dir = scratch("pipeline");
    for i in 0..3 {
        write_random(&dir.join(format!("in{i}.bin")), 8 << 20, 10 + i);
    }
    let mut t = tracker();
    // Same sizes in and out (a transform), so the copy detector must check content.
    let script = format!(
        "d='{}'\nfor i in range(3):\n    with open(f'{{d}}/in{{i}}.bin','rb') as h, open(f'{{d}}/out{{i}}.bin','wb') as o:\n        while True:\n            b = h.read(1 << 16)\n            if not b: break\n            o.write(bytes(x ^ 0x5a for x in b))\n",
        dir.display()
    );
    let root = findings_of(&mut p, &mut t, &[&python(), "-c", &script], None);
    let mut h = FsHasher::new(256 << 20);
    let all = t.findings(&mut h);
    let mine = of_root(&all, root);
    assert!(mine.is_empty(), "{mine:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
