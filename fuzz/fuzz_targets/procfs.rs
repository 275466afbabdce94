//! `/proc/<pid>/stat`, `status`, `cgroup` and `schedstat`, as the agent reads them for processes
//! that existed before it and for cgroup/systemd roll-ups (`agent/src/procfs.rs`).
//!
//! Input: a fake tree (`fuzz/src/lib.rs`) with the files `pid` (decimal), `stat`, `status`,
//! `cgroup` and `schedstat`.
#![no_main]

use std::path::Path;

use carbon_agent::process::ProcessKind;
use carbon_agent::procfs::{
    ProcFs, parse_cgroup, parse_schedstat_ns, parse_stat, parse_status_uid, systemd_unit,
};
use carbon_agent_fuzz::FakeTree;
use libfuzzer_sys::fuzz_target;

/// `PF_KTHREAD`.
const PF_KTHREAD: u64 = 0x0020_0000;

fuzz_target!(|data: &[u8]| {
    let tree = FakeTree::parse(Path::new("/proc/1"), data);
    let pid = tree.text("pid").and_then(|p| p.trim().parse().ok()).unwrap_or(1);
    let status = tree.text("status").unwrap_or("");

    if let Some(stat) = tree.text("stat") {
        let parsed = parse_stat(stat);
        if let Some(st) = &parsed {
            // The comm is exactly what lies between the first `(` and the last `)`.
            let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
            assert_eq!(st.comm, stat[open + 1..close]);
            // Written back as the kernel writes it, the line parses to the same fields.
            let line = format!(
                "{pid} ({}) S {} {pid} {pid} 0 -1 {} 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n",
                st.comm, st.ppid, st.flags, st.start_ticks
            );
            assert_eq!(parse_stat(&line).as_ref(), Some(st), "{line:?}");
        }
        let info = ProcFs::new("/nonexistent").info_from(pid, stat, status);
        assert_eq!(info.is_some(), parsed.is_some());
        if let (Some(info), Some(st)) = (info, parsed) {
            assert_eq!((info.pid, info.ppid, &info.comm), (pid, st.ppid, &st.comm));
            assert_eq!(info.uid, parse_status_uid(status).unwrap_or(u32::MAX));
            let kernel = st.flags & PF_KTHREAD != 0 || pid == 2;
            assert_eq!(info.kind == ProcessKind::Kernel, kernel);
            // Any tick rate from 1 to 10^9 Hz gives a start time in u64 for these ticks.
            if st.start_ticks <= u64::MAX / 1_000_000_000 {
                assert!(info.start_ns.is_some_and(|ns| ns >= st.start_ticks), "{info:?}");
            }
        }
    }

    if let Some(uid) = parse_status_uid(status) {
        assert_eq!(parse_status_uid(&format!("Name:\tx\nUid:\t{uid}\t{uid}\t0\t0\n")), Some(uid));
    }

    if let Some(cgroup) = tree.text("cgroup")
        && let Some(path) = parse_cgroup(cgroup)
    {
        assert_eq!(path, path.trim());
        assert!(cgroup.lines().any(|l| l.contains(path.as_str())), "{path:?} is from the file");
        if let Some(unit) = systemd_unit(&path) {
            assert!(path.split('/').any(|part| part == unit), "{unit:?} is a component of {path:?}");
            assert!([".service", ".scope", ".slice"].iter().any(|s| unit.ends_with(s)), "{unit:?}");
            let leaf = path.split('/').any(|p| p.ends_with(".service") || p.ends_with(".scope"));
            assert_eq!(leaf, unit.ends_with(".service") || unit.ends_with(".scope"), "{unit:?} in {path:?}");
        }
    }

    if let Some(schedstat) = tree.text("schedstat")
        && let Some(ns) = parse_schedstat_ns(schedstat)
    {
        assert_eq!(parse_schedstat_ns(&format!("{ns} 0 0\n")), Some(ns));
    }
});
