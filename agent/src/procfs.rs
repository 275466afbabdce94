//! Reading `/proc` (and `/etc/passwd`): processes that existed before the agent, names of
//! users, the machine's CPU count. Rooted at a path so that tests can use fake trees.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use crate::process::{Pid, ProcInfo, ProcLookup, ProcessKind};

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A `/proc` tree.
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
    /// Clock ticks per second, for `starttime`.
    ticks_per_s: u64,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcFs { root: root.into(), ticks_per_s: if ticks > 0 { ticks as u64 } else { 100 } }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Parses `/proc/<pid>/stat` and `/proc/<pid>/status`. `None` when the process is gone.
    pub fn process(&self, pid: Pid) -> Option<ProcInfo> {
        let dir = self.root.join(pid.to_string());
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        self.info_from(pid, &stat, &status)
    }

    /// What [`ProcFs::process`] makes of the contents of `/proc/<pid>/stat` and `status`:
    /// `None` when `stat` is malformed; an unknown uid is `u32::MAX`.
    pub fn info_from(&self, pid: Pid, stat: &str, status: &str) -> Option<ProcInfo> {
        let parsed = parse_stat(stat)?;
        let kind = if parsed.flags & PF_KTHREAD != 0 || pid == crate::process::KTHREADD {
            ProcessKind::Kernel
        } else {
            ProcessKind::User
        };
        // In u128: ticks × 10^9 overflows u64 for processes started after ~5.8 years of uptime
        // at 100 Hz.
        let start_ns = u128::from(parsed.start_ticks) * 1_000_000_000 / u128::from(self.ticks_per_s);
        Some(ProcInfo {
            pid,
            ppid: parsed.ppid,
            uid: parse_status_uid(status).unwrap_or(u32::MAX),
            comm: parsed.comm,
            kind,
            start_ns: u64::try_from(start_ns).ok(),
        })
    }

    /// Every process (thread group) now in `/proc`.
    pub fn scan(&self) -> Vec<ProcInfo> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok())
            .filter_map(|pid| self.process(pid))
            .collect()
    }

    /// Whether `/proc/<pid>` still exists (a zombie still counts).
    pub fn exists(&self, pid: Pid) -> bool {
        self.root.join(pid.to_string()).exists()
    }

    /// The process's cgroup path: the cgroup v2 entry (`0::/path`), else the systemd one.
    pub fn cgroup_path(&self, pid: Pid) -> Option<String> {
        let text = fs::read_to_string(self.root.join(pid.to_string()).join("cgroup")).ok()?;
        parse_cgroup(&text)
    }

    /// The kernel's own on-CPU nanoseconds for a process (first field of `schedstat`).
    pub fn schedstat_ns(&self, pid: Pid) -> Option<u64> {
        let s = fs::read_to_string(self.root.join(pid.to_string()).join("schedstat")).ok()?;
        parse_schedstat_ns(&s)
    }

    /// The `model name` of the first CPU in `/proc/cpuinfo`.
    pub fn cpu_model(&self) -> Option<String> {
        let s = fs::read_to_string(self.root.join("cpuinfo")).ok()?;
        crate::energy::model::parse_cpuinfo(&s).model_name
    }

    /// `MemTotal` in bytes.
    pub fn mem_total_bytes(&self) -> Option<u64> {
        let s = fs::read_to_string(self.root.join("meminfo")).ok()?;
        crate::energy::model::parse_mem_total_bytes(&s)
    }
}

impl ProcLookup for ProcFs {
    fn lookup(&self, pid: Pid) -> Option<ProcInfo> {
        self.process(pid)
    }
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` file, else the `name=systemd` hierarchy's.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
    let systemd = text.lines().find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p));
    v2.or(systemd).map(|p| p.trim().to_owned())
}

/// The systemd unit a cgroup path belongs to: its innermost `.service` or `.scope`, else its
/// innermost `.slice`.
pub fn systemd_unit(cgroup: &str) -> Option<&str> {
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        .or_else(|| parts.iter().rev().find(|p| p.ends_with(".slice")))
        .copied()
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: Pid,
    pub flags: u64,
    /// `starttime`: clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The comm is between the first `(` and the LAST `)`, since it
/// may itself contain parentheses and spaces.
pub fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, flags field 9, starttime field 22.
    Some(Stat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        flags: rest.get(6)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// The real uid (first field of the `Uid:` line) of a `/proc/<pid>/status` file.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The on-CPU nanoseconds (first field) of a `/proc/<pid>/schedstat` file.
pub fn parse_schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// The online CPUs (`/sys/devices/system/cpu/online`); empty when unreadable.
pub fn online_cpu_ids() -> Vec<usize> {
    aya::util::online_cpus().map(|v| v.into_iter().map(|c| c as usize).collect()).unwrap_or_default()
}

/// Number of online CPUs.
pub fn online_cpus() -> u32 {
    match online_cpu_ids().len() {
        0 => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        n => n as u32,
    }
}

/// User names by uid, from an `/etc/passwd`-format file; unknown uids print as numbers.
#[derive(Clone, Debug, Default)]
pub struct Users {
    names: HashMap<u32, String>,
}

impl Users {
    pub fn load(passwd: &Path) -> Self {
        let text = fs::read_to_string(passwd).unwrap_or_default();
        Self::parse(&text)
    }

    /// Lines are `name:password:uid:...`; malformed lines and empty names are skipped. When
    /// several lines share a uid the first one names it, as `getpwuid(3)` does.
    pub fn parse(text: &str) -> Self {
        let mut names = HashMap::new();
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(uid)) = (f.next(), f.nth(1).and_then(|u| u.parse::<u32>().ok())) else {
                continue;
            };
            if !name.is_empty() {
                names.entry(uid).or_insert_with(|| name.to_owned());
            }
        }
        Users { names }
    }

    pub fn name(&self, uid: u32) -> String {
        match self.names.get(&uid) {
            Some(n) => n.clone(),
            None if uid == u32::MAX => "?".into(),
            None => uid.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_in_comm() {
        let line = "1234 (a (b) c) S 42 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.ppid, 42);
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.start_ticks, 98765);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn fake_proc_tree() {
        let dir = std::env::temp_dir().join(format!("ca-procfs-{}", std::process::id()));
        let p = dir.join("77");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("stat"), "77 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")
            .unwrap();
        fs::write(p.join("status"), "Name:\tkworker\nUid:\t0\t0\t0\t0\n").unwrap();
        fs::write(p.join("schedstat"), "123456 0 7\n").unwrap();
        fs::write(
            dir.join("cpuinfo"),
            "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n",
        )
        .unwrap();
        fs::write(dir.join("meminfo"), "MemTotal:       2048 kB\n").unwrap();
        let fs_ = ProcFs::new(&dir);
        let info = fs_.process(77).unwrap();
        assert_eq!(info.kind, ProcessKind::Kernel);
        assert_eq!(info.ppid, 2);
        assert_eq!(info.uid, 0);
        assert_eq!(fs_.schedstat_ns(77), Some(123456));
        assert_eq!(fs_.scan().len(), 1);
        assert_eq!(fs_.cpu_model().unwrap(), "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz");
        assert_eq!(fs_.mem_total_bytes(), Some(2048 * 1024));
        assert!(fs_.process(78).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cgroups_and_units() {
        let hybrid =
            "9:name=systemd:/system.slice/nginx.service\n4:memory:/x\n0::/system.slice/nginx.service\n";
        assert_eq!(parse_cgroup(hybrid).as_deref(), Some("/system.slice/nginx.service"));
        assert_eq!(parse_cgroup("1:name=systemd:/user.slice\n").as_deref(), Some("/user.slice"));
        assert_eq!(parse_cgroup("4:memory:/x\n"), None);
        assert_eq!(systemd_unit("/system.slice/nginx.service"), Some("nginx.service"));
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"),
            Some("run-r1.scope")
        );
        assert_eq!(systemd_unit("/user.slice/user-1000.slice"), Some("user-1000.slice"));
        assert_eq!(systemd_unit("/"), None);
    }

    #[test]
    fn user_names() {
        let u =
            Users::parse("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n");
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(1000), "alice");
        assert_eq!(u.name(5), "5");
    }

    #[test]
    fn first_user_of_a_uid_names_it_and_empty_names_are_skipped() {
        // `toor` shares root's uid (as on BSD-style systems): getpwuid(0) answers `root`.
        let u = Users::parse("root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/root:/bin/sh\n:x:7:7::/:/bin/sh\n");
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(7), "7");
    }

    #[test]
    fn start_time_past_u64_nanoseconds_is_unknown_not_a_panic() {
        let fs_ = ProcFs { root: PathBuf::from("/nonexistent"), ticks_per_s: 100 };
        let stat = |ticks: u64| format!("9 (x) S 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0");
        // ticks × 10^9 does not fit in u64.
        assert_eq!(fs_.info_from(9, &stat(u64::MAX), "").unwrap().start_ns, None);
        // Started after 6.3 years of uptime: ticks × 10^9 alone is past u64, the result is not.
        assert_eq!(
            fs_.info_from(9, &stat(20_000_000_000), "").unwrap().start_ns,
            Some(200_000_000_000_000_000)
        );
        assert_eq!(fs_.info_from(9, &stat(250), "Uid:\t5\t5\t5\t5\n").unwrap().start_ns, Some(2_500_000_000));
        assert_eq!(fs_.info_from(9, &stat(250), "Uid:\t5\t5\t5\t5\n").unwrap().uid, 5);
        assert_eq!(fs_.info_from(9, &stat(250), "").unwrap().uid, u32::MAX);
    }
}
