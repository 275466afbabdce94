//! Kernel tests of the I/O probes and the waste detectors on real workloads, in both tiers:
//! the default page-cache tier (bytes per process from the kernel's own `ioac` accounting,
//! per-file activity from the page-cache tracepoints) and `--io-detail syscalls`. They load
//! and attach the real programs (scheduler, lifecycle and I/O), need root (CI runs them as
//! root) and fail loudly without it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use carbon_agent::io::{IoConfig, IoDetail, IoInterval, ProcessIo};
use carbon_agent::probes::{LoadOptions, lifecycle::Lifecycle};
use carbon_agent::waste::{
    Coefficients, Finding, FindingKind, IntervalEnergy, ProcessInfo, Thresholds, WasteTracker,
    hash::{ContentHasher, FsHasher},
};

/// The tests share the kernel's hooks and compare with its accounting; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the I/O kernel tests must run as root (they load eBPF programs)"
    );
}

/// The whole agent's programs, attached, and the process forks seen so far (parent, child).
struct Probes {
    p: carbon_agent::probes::Probes,
    forks: Vec<(u32, u32)>,
}

fn attach(detail: IoDetail) -> Probes {
    attach_sampling(detail, detail.default_time_sampling())
}

/// [`attach`] with the given share of time in which the I/O syscalls are timed.
fn attach_sampling(detail: IoDetail, time_sampling: f64) -> Probes {
    require_root();
    let opts = LoadOptions {
        io: Some(IoConfig { time_sampling, ..IoConfig::of(detail) }),
        ..LoadOptions::default()
    };
    let p = carbon_agent::probes::Probes::load(&opts).expect("load and attach the probes");
    assert!(p.io.is_some(), "the I/O programs did not attach: {:?}", p.io_error);
    let mut probes = Probes { p, forks: Vec::new() };
    let _ = probes.drain();
    probes
}

impl Probes {
    /// Everything since the previous drain (every CPU visited first).
    fn drain(&mut self) -> IoInterval {
        self.collect_forks();
        self.p.drain_io().expect("I/O attached")
    }

    fn collect_forks(&mut self) {
        if let Some(rb) = self.p.lifecycle.as_mut() {
            while let Some(item) = rb.next() {
                if let Some(Lifecycle::Fork { tgid, parent_tgid, .. }) =
                    carbon_agent::probes::lifecycle::decode(&item)
                {
                    self.forks.push((parent_tgid, tgid));
                }
            }
        }
    }

    /// `root` and every process forked below it since attach (from the lifecycle events).
    fn tree(&mut self, root: u32) -> BTreeSet<u32> {
        self.collect_forks();
        let mut tree = BTreeSet::from([root]);
        for &(parent, child) in &self.forks {
            if tree.contains(&parent) {
                tree.insert(child);
            }
        }
        tree
    }
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

const ENERGY: IntervalEnergy = IntervalEnergy { cpu_j_per_cpu_s: 10.0, g_per_kwh: 100.0 };

fn tracker() -> WasteTracker {
    WasteTracker::new(Thresholds::default(), Coefficients::default(), 100_000)
}

fn of_root(findings: &[Finding], root: u32) -> Vec<&Finding> {
    findings.iter().filter(|f| f.tree == root).collect()
}

/// Forks a child that runs `work`, then stops itself (SIGSTOP) so that the parent can read
/// its /proc files before it exits; returns its pid once it has stopped. Finish it with
/// [`reap`].
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

/// Kills and reaps a child.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: our child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}

/// Waits for our child `pid` to exit without reaping it: its /proc files stay readable (a
/// zombie) and hold its final counters.
fn wait_zombie(pid: u32) {
    // SAFETY: a zeroed siginfo_t is valid; waitid on our own child with WNOWAIT.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
}

/// `/proc/<pid>/io` as name → value.
fn proc_io(pid: u32) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn python() -> String {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "python3".into()
}

/// Runs `args` to its exit, kept a zombie; returns its /proc/<pid>/io then and the sum of the
/// rows of its whole tree (the process and every descendant since the start) over
/// everything drained meanwhile.
fn run_and_sum_tree(
    p: &mut Probes,
    args: &[&str],
    env: &[(&str, &str)],
) -> (u32, BTreeMap<String, u64>, ProcessIo, usize) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let root = child.id();
    let mut rows: BTreeMap<u32, ProcessIo> = BTreeMap::new();
    let mut add = |iv: IoInterval| {
        for (tgid, r) in iv.processes {
            rows.entry(tgid).or_default().add(&r);
        }
    };
    // Drained while it runs (the maps hold one interval), then once it is a zombie.
    let waiter = std::thread::spawn(move || wait_zombie(root));
    while !waiter.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(100));
        add(p.drain());
    }
    waiter.join().unwrap();
    let procio = proc_io(root);
    add(p.drain());
    let status = child.wait().unwrap();
    assert!(status.success(), "workload failed: {args:?}");
    let tree = p.tree(root);
    let mut sum = ProcessIo::default();
    for t in &tree {
        if let Some(r) = rows.get(t) {
            sum.add(r);
        }
    }
    (root, procio, sum, tree.len())
}

/// The tree's bytes and calls equal the kernel's `/proc/<root>/io` within 0.1 % (which, once
/// the root has reaped its children, holds theirs too: the kernel folds a reaped child's
/// counters into its parent's).
fn assert_tree_matches(procio: &BTreeMap<String, u64>, sum: &ProcessIo) {
    let pairs = [
        ("rchar", sum.read_bytes),
        ("wchar", sum.write_bytes),
        ("syscr", sum.read_calls),
        ("syscw", sum.write_calls),
        ("read_bytes", sum.storage_read_bytes),
        ("write_bytes", sum.storage_write_bytes),
        ("cancelled_write_bytes", sum.cancelled_write_bytes),
    ];
    for (name, ours) in pairs {
        let kernel = procio[name];
        let tolerance = (kernel as f64 * 0.001).max(0.0);
        assert!(
            (ours as f64 - kernel as f64).abs() <= tolerance,
            "{name}: agent {ours} vs /proc {kernel} (tolerance 0.1 %); /proc: {procio:?}; agent: {sum:?}"
        );
    }
}

/// A shim as pyenv installs one: a bash script whose command substitutions fork children that
/// read (reaped by it), which execs another bash script, which execs the Python reader. The
/// kernel folds each reaped child's counters into its parent's `/proc/<pid>/io`, and keeps
/// them across exec: that is the "2 % undercount" a user sees comparing the agent's row of
/// the interpreter with its own `/proc/self/io`; the tree's sum is what it must equal. The
/// syscall tier misses exec's own reads of the binaries (`kernel_read`): more than 0.1 % here.
#[test]
fn shim_that_execs_matches_proc_io() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("shim");
    let data = dir.join("data.bin");
    write_random(&data, 1 << 20, 21);
    // On storage, so that the reader's eviction from the page cache takes (dirty pages stay).
    std::fs::File::open(&data).unwrap().sync_all().unwrap();
    let (shim, inner, reader) = (dir.join("shim.sh"), dir.join("inner.sh"), dir.join("reader.py"));
    std::fs::write(
        &shim,
        format!(
            "#!/bin/bash\nn=$(cat \"$DATA\" | wc -c)\nfor i in 1 2 3; do h=$(head -c 65536 \"$DATA\" | od -An | tail -1); done\nexec /bin/bash {} \"$@\"\n",
            inner.display()
        ),
    )
    .unwrap();
    std::fs::write(
        &inner,
        format!("#!/bin/bash\nsum=$(md5sum < \"$DATA\")\nexec {} {} \"$@\"\n", python(), reader.display()),
    )
    .unwrap();
    std::fs::write(
        &reader,
        "import os\nd = os.environ['DATA']\nfd = os.open(d, os.O_RDONLY)\nos.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n\
         n = 0\nwhile True:\n    b = os.read(fd, 1 << 16)\n    if not b: break\n    n += len(b)\nos.close(fd)\n\
         with open(d + '.out', 'wb') as o:\n    for _ in range(16): o.write(os.urandom(1 << 16))\n    o.flush()\n    os.fsync(o.fileno())\n",
    )
    .unwrap();
    let (_, procio, sum, processes) =
        run_and_sum_tree(&mut p, &["/bin/bash", shim.to_str().unwrap()], &[("DATA", data.to_str().unwrap())]);
    eprintln!("tree of {processes} processes: /proc {procio:?}\nagent {sum:?}");
    assert!(processes >= 8, "the shim's children were not seen: {processes}");
    assert!(procio["rchar"] > 3 << 20 && procio["read_bytes"] >= 1 << 20, "{procio:?}");
    assert_tree_matches(&procio, &sum);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fork storm: 40 children each read a file and exit at once; the parent reaps them.
#[test]
fn fork_storm_of_readers_matches_proc_io() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("storm");
    let data = dir.join("data.bin");
    write_random(&data, 512 << 10, 22);
    let script = format!(
        "import os\npids = []\nfor i in range(40):\n    pid = os.fork()\n    if pid == 0:\n        fd = os.open('{}', os.O_RDONLY)\n        while os.read(fd, 1 << 15): pass\n        os._exit(0)\n    pids.append(pid)\nfor pid in pids: os.waitpid(pid, 0)\n",
        data.display()
    );
    let (_, procio, sum, processes) = run_and_sum_tree(&mut p, &[&python(), "-c", &script], &[]);
    eprintln!("tree of {processes} processes: /proc {procio:?}\nagent {sum:?}");
    assert_eq!(processes, 41);
    assert!(procio["rchar"] > 40 * (512 << 10), "{procio:?}");
    assert_tree_matches(&procio, &sum);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Eight threads read at once; the process's own row is its threads' sum.
#[test]
fn multi_threaded_reader_matches_proc_io() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("threads");
    let data = dir.join("data.bin");
    write_random(&data, 1 << 20, 23);
    let script = format!(
        "import os, threading\nfd = os.open('{}', os.O_RDONLY)\ndef work(k):\n    for i in range(400):\n        os.pread(fd, 4096 * (1 + k), (i * 4096) % (1 << 20))\nts = [threading.Thread(target=work, args=(k,)) for k in range(8)]\nfor t in ts: t.start()\nfor t in ts: t.join()\n",
        data.display()
    );
    let (_, procio, sum, processes) = run_and_sum_tree(&mut p, &[&python(), "-c", &script], &[]);
    eprintln!("/proc {procio:?}\nagent {sum:?}");
    assert_eq!(processes, 1);
    assert!(procio["syscr"] > 3200, "{procio:?}");
    assert_tree_matches(&procio, &sum);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Socket bytes from the `sock` tracepoints, in both tiers: a process sends 3 MiB through a
/// TCP connection on loopback to itself and receives them; and with `MSG_PEEK` first, which is
/// not counted.
#[test]
fn socket_bytes_are_exact() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let script = "import socket\nl = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen(1)\n\
                  c = socket.create_connection(l.getsockname())\ns, _ = l.accept()\nblob = b'x' * (1 << 20)\n\
                  n = 0\nfor _ in range(3):\n    c.sendall(blob)\n    s.recv(4096, socket.MSG_PEEK)\n    got = 0\n\
                  \x20   while got < len(blob):\n        got += len(s.recv(1 << 20))\n";
    for detail in [IoDetail::PageCache, IoDetail::Syscalls] {
        let mut p = attach(detail);
        let (root, ivs) = run_tree(&mut p, &[&python(), "-c", script], None);
        let row =
            ivs.iter().filter_map(|iv| iv.processes.get(&root)).fold(ProcessIo::default(), |mut a, r| {
                a.add(r);
                a
            });
        assert_eq!((row.net_tx_bytes, row.net_rx_bytes), (3 << 20, 3 << 20), "{detail:?}: {row:?}");
    }
}

/// Syscall tier: every call's bytes (`rchar`/`wchar` for these syscalls), every call timed.
#[test]
fn syscall_tier_byte_counts_match_proc_io() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every call timed: the time must come with every successful call.
    let mut p = attach_sampling(IoDetail::Syscalls, 1.0);
    let dir = scratch("procio");
    let path = dir.join("data");
    write_random(&path, 4 << 20, 1);
    let _ = p.drain();
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
    let procio = proc_io(pid as u32);
    let (rchar, wchar) = (procio["rchar"], procio["wchar"]);
    let iv = p.drain();
    reap(pid);
    let row = iv.processes.get(&(pid as u32)).copied().unwrap_or_default();
    eprintln!("rchar {rchar} wchar {wchar} probes {row:?}");
    assert_eq!(iv.detail, IoDetail::Syscalls);
    assert!(rchar > 4 << 20 && wchar > 4 << 20, "workload too small: {procio:?}");
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

/// Page-cache tier, one process: its bytes per file are whole pages of what it read and
/// dirtied, with the files' paths, and its time in I/O is estimated from the windows.
#[test]
fn page_cache_tier_files_and_paths() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach_sampling(IoDetail::PageCache, 0.5);
    let dir = scratch("pcfiles");
    let (input, output) = (dir.join("in.bin"), dir.join("out.bin"));
    write_random(&input, (3 << 20) + 100, 5);
    let script = format!(
        "import os\nwith open('{}', 'rb') as h, open('{}', 'wb') as o:\n    while True:\n        b = h.read(6000)\n        if not b: break\n        o.write(b)\n",
        input.display(),
        output.display()
    );
    let mut ivs = Vec::new();
    let mut child = Command::new(python()).args(["-c", &script]).spawn().unwrap();
    let root = child.id();
    while child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ivs.push(p.drain());
    }
    ivs.push(p.drain());
    let file = |path: &Path| {
        let mut total = (0, 0, 0);
        for f in
            ivs.iter().flat_map(|iv| &iv.files).filter(|f| f.tgid == root && f.path.as_deref() == Some(path))
        {
            total = (total.0 + f.read_bytes, total.1 + f.write_bytes, total.2 + f.read_ranges.covered());
        }
        total
    };
    let (r, w, covered) = file(&input);
    // 6000-byte reads: each page once, the last one clamped to the file's size.
    assert_eq!(
        (r, w, covered),
        ((3 << 20) + 100, 0, (3 << 20) + 100),
        "{:#?}",
        ivs.iter().map(|iv| &iv.files).collect::<Vec<_>>()
    );
    let (r, w, _) = file(&output);
    assert_eq!((r, w), (0, (3 << 20) + 4096), "the output's pages dirtied");
    let row = ivs.iter().filter_map(|iv| iv.processes.get(&root)).fold(ProcessIo::default(), |mut a, r| {
        a.add(r);
        a
    });
    assert!(row.read_file_bytes >= (3 << 20) + 100 && row.io_cpu_ns > 0 && row.timed_calls > 0, "{row:?}");
    assert!(ivs.iter().all(|iv| iv.detail == IoDetail::PageCache));
    std::fs::remove_dir_all(&dir).unwrap();
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
        ivs.push(p.drain());
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    ivs.push(p.drain());
    assert!(child.wait().unwrap().success(), "workload failed: {args:?}");
    (root, ivs)
}

/// Runs a command as its own tree (its descendants from the lifecycle events) and feeds what
/// the probes saw to `tracker`; returns the tree's root.
fn findings_of(p: &mut Probes, tracker: &mut WasteTracker, args: &[&str], uid: Option<u32>) -> u32 {
    let (root, ivs) = run_tree(p, args, uid);
    let tree = p.tree(root);
    for iv in &ivs {
        tracker.observe(iv, ENERGY, &|t| ProcessInfo {
            root: if tree.contains(&t) { root } else { t },
            comm: String::new(),
        });
    }
    root
}

fn within(a: u64, b: u64, tol: f64) -> bool {
    (a as f64 - b as f64).abs() <= tol * b as f64
}

/// How often each finding scenario runs (each run must give exactly one finding of the right
/// size: findings are exact on every run, not on most).
const REPEATS: usize = 20;

/// Runs `scenario` (which returns the root of the tree it ran) [`REPEATS`] times with a fresh
/// tracker each; each run's findings of that tree must be exactly one, checked by `check`.
fn every_run_one_finding(
    p: &mut Probes,
    hash_budget: u64,
    mut scenario: impl FnMut(&mut Probes, &mut WasteTracker, usize) -> u32,
    check: impl Fn(&Finding),
) {
    for run in 0..REPEATS {
        // What the test itself read meanwhile (hashing the previous run's files) is not this run's.
        let _ = p.drain();
        let mut t = tracker();
        let root = scenario(p, &mut t, run);
        let all = t.findings(&mut FsHasher::new(hash_budget));
        let mine = of_root(&all, root);
        assert_eq!(mine.len(), 1, "run {run}: {mine:#?}");
        check(mine[0]);
    }
}

#[test]
fn reread_found_exactly_every_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("reread");
    let data = dir.join("dataset.bin");
    write_random(&data, 16 << 20, 2);
    let script = format!(
        "f='{}'\nfor _ in range(3):\n    with open(f, 'rb') as h:\n        while h.read(1 << 20): pass\n",
        data.display()
    );
    every_run_one_finding(
        &mut p,
        0,
        |p, t, _| findings_of(p, t, &[&python(), "-c", &script], None),
        |f| {
            assert_eq!(f.kind, FindingKind::Reread, "{f:#?}");
            assert_eq!((f.bytes, f.count), (32 << 20, 3), "{f:#?}");
            assert_eq!(f.paths, vec![data.display().to_string()]);
            assert!(f.energy_j > 0.0 && f.emissions_g > 0.0 && !f.suggestion.is_empty(), "{f:#?}");
            assert_eq!(f.granularity, "4 KiB pages");
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two jobs read the same file once each, and it is evicted from the page cache in between:
/// its pages are fetched from storage twice. One re-fetch finding (not a re-read: each tree
/// read it once).
#[test]
fn refetch_found_exactly_every_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("refetch");
    let data = dir.join("big.bin");
    write_random(&data, 8 << 20, 6);
    let evict = || {
        let f = std::fs::File::open(&data).unwrap();
        // Dirty pages are not dropped: on storage first.
        f.sync_all().unwrap();
        // SAFETY: a valid open fd.
        assert_eq!(
            unsafe {
                libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED)
            },
            0
        );
    };
    let script = format!("with open('{}', 'rb') as h:\n    while h.read(1 << 20): pass\n", data.display());
    for run in 0..REPEATS {
        let _ = p.drain();
        let mut t = tracker();
        for _ in 0..2 {
            evict();
            findings_of(&mut p, &mut t, &[&python(), "-c", &script], None);
        }
        let all = t.findings(&mut FsHasher::new(0));
        assert_eq!(all.len(), 1, "run {run}: {all:#?}");
        assert_eq!(all[0].kind, FindingKind::Refetch, "{all:#?}");
        assert_eq!((all[0].bytes, all[0].count), (8 << 20, 2), "{all:#?}");
        assert_eq!(all[0].paths, vec![data.display().to_string()]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn copy_found_exactly_every_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("cp");
    let src = dir.join("src.bin");
    write_random(&src, 8 << 20, 3);
    every_run_one_finding(
        &mut p,
        256 << 20,
        |p, t, run| {
            let dst = dir.join(format!("dst{run}.bin"));
            findings_of(p, t, &["cp", src.to_str().unwrap(), dst.to_str().unwrap()], None)
        },
        |f| {
            assert_eq!(f.kind, FindingKind::Copy, "{f:#?}");
            assert_eq!(f.bytes, 8 << 20, "{f:#?}");
            assert_eq!(f.paths[0], src.display().to_string());
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A job writes a 4 MiB checkpoint per epoch and deletes the one before: epoch 0 writes c0,
/// epoch 1 writes c1 and deletes c0, epoch 2 writes c2 (often in c0's reused inode number).
/// Exactly one finding, c0's 4 MiB: a file's identity includes the inode's generation, so c2
/// is not counted as c0 (before, about half the runs reported 8 MiB).
#[test]
fn write_then_delete_found_exactly_every_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("wtd");
    every_run_one_finding(
        &mut p,
        0,
        |p, t, run| {
            let d = dir.join(format!("run{run}"));
            std::fs::create_dir_all(&d).unwrap();
            let script = format!(
                "import os\nd = '{}'\nblob = os.urandom(4 << 20)\nfor e in range(3):\n    with open(f'{{d}}/ckpt{{e}}.bin', 'wb') as h: h.write(blob)\n    if e == 1: os.remove(f'{{d}}/ckpt0.bin')\n",
                d.display()
            );
            findings_of(p, t, &[&python(), "-c", &script], None)
        },
        |f| {
            assert_eq!(f.kind, FindingKind::WriteThenDelete, "{f:#?}");
            assert_eq!(f.bytes, 4 << 20, "{f:#?}");
            assert!(f.paths[0].ends_with("/ckpt0.bin"), "{f:#?}");
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn duplicate_found_exactly_every_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("dup");
    let mut paths = Vec::new();
    for uid in [4101u32, 4102] {
        let d = dir.join(format!("u{uid}"));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("corpus.bin");
        write_random(&f, 4 << 20, 4);
        std::os::unix::fs::chown(&f, Some(uid), Some(uid)).unwrap();
        paths.push((uid, f));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut expected: Vec<String> = paths.iter().map(|p| p.1.display().to_string()).collect();
    expected.sort();
    for run in 0..REPEATS {
        let _ = p.drain();
        let mut t = tracker();
        for (uid, f) in &paths {
            findings_of(&mut p, &mut t, &["cat", f.to_str().unwrap()], Some(*uid));
        }
        let mut h = FsHasher::new(256 << 20);
        let all = t.findings(&mut h);
        assert_eq!(all.len(), 1, "run {run}: {all:#?}");
        assert_eq!(all[0].kind, FindingKind::Duplicate);
        let mut got = all[0].paths.clone();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!((all[0].bytes, all[0].count), (4 << 20, 2));
        assert_eq!(h.bytes_read(), 8 << 20, "the agent's own hashing reads are reported");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Pages a write puts in the page cache hold new data, not data fetched from storage: a file
/// written, flushed and dropped from the cache, then read once, was fetched once (16 MiB of
/// misses, not 32) and is no re-fetch.
#[test]
fn pages_written_are_not_fetched_from_storage() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
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
    for iv in &ivs {
        t.observe(iv, ENERGY, &|x| ProcessInfo { root: x, comm: String::new() });
    }
    let all = t.findings(&mut FsHasher::new(0));
    let mine = of_root(&all, root);
    assert!(mine.iter().all(|f| f.kind != FindingKind::Refetch), "{mine:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn clean_pipeline(detail: IoDetail) {
    let mut p = attach(detail);
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
    let all = t.findings(&mut FsHasher::new(256 << 20));
    let mine = of_root(&all, root);
    assert!(mine.is_empty(), "{mine:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pipeline_of_distinct_inputs_and_outputs_has_no_findings() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    clean_pipeline(IoDetail::PageCache);
}

#[test]
fn syscall_tier_pipeline_has_no_findings() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    clean_pipeline(IoDetail::Syscalls);
}

/// With the syscall tier's default sampling, a syscall-bound loop of 4 KiB preads gets about
/// its share of its calls timed, and the time scaled to all calls is close to the CPU time
/// the loop spent (nearly all of it inside those syscalls).
#[test]
fn syscall_tier_sampled_io_time_scales_to_all_calls() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::Syscalls);
    let dir = scratch("sampled");
    let path = dir.join("data");
    write_random(&path, 4 << 20, 2);
    let _ = p.drain();
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
    let iv = p.drain();
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

/// The same in the page-cache tier (timing windows of 1 %, the calls counted by the kernel):
/// the estimate is within 0.4–1.6 × of the loop's CPU time.
#[test]
fn page_cache_tier_io_time_estimate() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::PageCache);
    let dir = scratch("pctime");
    let path = dir.join("data");
    write_random(&path, 4 << 20, 2);
    let script = format!(
        "import os, time\nfd = os.open('{}', os.O_RDONLY)\nt = time.time()\nwhile time.time() - t < 1.5:\n    for i in range(1024): os.pread(fd, 4096, i * 4096)\n",
        path.display()
    );
    let (root, ivs) = run_tree(&mut p, &[&python(), "-c", &script], None);
    let row = ivs.iter().filter_map(|iv| iv.processes.get(&root)).fold(ProcessIo::default(), |mut a, r| {
        a.add(r);
        a
    });
    eprintln!("row {row:?}");
    assert!(row.read_calls > 50_000 && row.timed_calls > 100, "{row:?}");
    // The loop's own CPU time is most of 1.5 s; Python spends part of it outside the calls.
    let ratio = row.io_cpu_ns as f64 / 1.5e9;
    assert!((0.1..1.2).contains(&ratio), "estimated I/O time {} ns for 1.5 s of preads", row.io_cpu_ns);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Syscall tier: the original finding scenarios (one run each).
#[test]
fn syscall_tier_findings() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = attach(IoDetail::Syscalls);
    let dir = scratch("sysfind");
    let data = dir.join("dataset.bin");
    write_random(&data, 16 << 20, 2);
    let mut t = tracker();
    let script = format!(
        "f='{}'\nfor _ in range(5):\n    with open(f, 'rb') as h:\n        while h.read(1 << 20): pass\n",
        data.display()
    );
    let root = findings_of(&mut p, &mut t, &[&python(), "-c", &script], None);
    let all = t.findings(&mut FsHasher::new(0));
    let mine = of_root(&all, root);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!((mine[0].kind, mine[0].bytes, mine[0].count), (FindingKind::Reread, 64 << 20, 5));

    let dst = dir.join("dst.bin");
    let mut t = tracker();
    let root = findings_of(&mut p, &mut t, &["cp", data.to_str().unwrap(), dst.to_str().unwrap()], None);
    let all = t.findings(&mut FsHasher::new(256 << 20));
    let mine = of_root(&all, root);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!((mine[0].kind, mine[0].bytes), (FindingKind::Copy, 16 << 20));

    let tmp = dir.join("scratch.tmp");
    let mut t = tracker();
    let script = format!(
        "import os\nf='{}'\nwith open(f, 'wb') as h:\n    for _ in range(16): h.write(os.urandom(1 << 20))\nos.remove(f)\n",
        tmp.display()
    );
    let root = findings_of(&mut p, &mut t, &[&python(), "-c", &script], None);
    let all = t.findings(&mut FsHasher::new(0));
    let mine = of_root(&all, root);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!((mine[0].kind, mine[0].bytes), (FindingKind::WriteThenDelete, 16 << 20));
    assert_eq!(mine[0].paths, vec![tmp.display().to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}
