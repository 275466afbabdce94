//! `carbon-agent doctor`: what this machine offers, what the agent will use, how to fix the rest.

use std::path::Path;

use serde::Serialize;

use crate::probes::{self, StructOffsets, btf::KernelBtf, privileges, tracefs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Missing,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// How to fix it, when it is not ok.
    pub fix: Option<String>,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check { name: name.into(), status, detail: detail.into(), fix: fix.map(Into::into) }
}

/// Runs every check. Loading programs needs privileges; without them those checks say so.
pub fn checks(energy: &crate::energy::EnergyConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let privileged = match privileges::check() {
        None => {
            out.push(check("privileges", Status::Ok, "root or CAP_BPF + CAP_PERFMON", None));
            true
        }
        Some(msg) => {
            out.push(check(
                "privileges",
                Status::Missing,
                msg,
                Some("run as root (sudo carbon-agent doctor)"),
            ));
            false
        }
    };
    // Parsed once for every check that needs it.
    let kernel_btf = KernelBtf::from_sysfs(Path::new("/sys"));
    match &kernel_btf {
        Ok(btf) => match StructOffsets::read(btf) {
            Ok(o) => {
                out.push(check("kernel BTF", Status::Ok, format!("/sys/kernel/btf/vmlinux: {}", o.describe()), None));
                out.push(match &o.ioac_missing {
                    None => check(
                        "I/O: per-task accounting",
                        Status::Ok,
                        "task_struct.ioac in BTF: exact bytes per process, harvested at context switches",
                        None,
                    ),
                    Some(e) => check(
                        "I/O: per-task accounting",
                        Status::Warn,
                        e.clone(),
                        Some("per-process bytes need CONFIG_TASK_IO_ACCOUNTING; use --io-detail syscalls"),
                    ),
                });
            }
            Err(e) => out.push(check("kernel BTF", Status::Warn, format!("{e:#}"), Some("lifecycle events need these fields; processes will be discovered from /proc instead"))),
        },
        Err(e) => out.push(check(
            "kernel BTF",
            Status::Missing,
            e.to_string(),
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y; without it sched_switch falls back to the classic tracepoint and lifecycle events are off"),
        )),
    }
    out.push(if tracefs::is_mounted() {
        check("tracefs", Status::Ok, format!("mounted at {}", tracefs::TRACEFS), None)
    } else {
        check(
            "tracefs",
            Status::Warn,
            format!("not mounted at {}", tracefs::TRACEFS),
            Some("the agent mounts it when it needs a classic tracepoint (mount -t tracefs nodev /sys/kernel/tracing)"),
        )
    });
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() || Path::new("/sys/fs/cgroup/unified").is_dir()
    {
        out.push(check("cgroup v2", Status::Ok, "mounted (per-cgroup roll-ups available)", None));
    } else {
        out.push(check(
            "cgroup v2",
            Status::Warn,
            "not found",
            Some("mount cgroup2 for per-container roll-ups"),
        ));
    }
    if privileged {
        match probes::probe_hooks(kernel_btf.as_ref().ok()) {
            Ok(hooks) => {
                for h in hooks {
                    out.push(match h.error {
                        None => check(&h.hook, Status::Ok, "loads and attaches", None),
                        Some(e) => check(&h.hook, Status::Missing, e, None),
                    });
                }
            }
            Err(e) => out.push(check(
                "eBPF programs",
                Status::Missing,
                format!("{e:#}"),
                Some("check dmesg and the kernel's BPF support (CONFIG_BPF_SYSCALL)"),
            )),
        }

        let io_offsets = match &kernel_btf {
            Ok(btf) => crate::probes::io::offsets_from(btf, crate::io::IoDetail::PageCache),
            Err(e) => Err(anyhow::anyhow!("I/O probes need the kernel BTF: {e}")),
        };
        out.push(match io_offsets {
            Ok(_) => check(
                "I/O programs: kernel offsets",
                Status::Ok,
                "every struct and tracepoint field found in BTF",
                None,
            ),
            Err(e) => check(
                "I/O programs: kernel offsets",
                Status::Missing,
                format!("{e:#}"),
                Some("I/O accounting and wasted-I/O findings will be off (x86_64 with BTF is needed)"),
            ),
        });
        out.push(match crate::probes::kfunc::agent_object(kernel_btf.as_ref().ok()).1 {
            None => check(
                "I/O programs: kfunc",
                Status::Ok,
                "bpf_rdonly_cast found in BTF: fd tables are read with plain loads",
                None,
            ),
            Some(e) => check(
                "I/O programs: kfunc",
                Status::Missing,
                e,
                Some("I/O accounting and wasted-I/O findings will be off (Linux ≥ 6.2 with BTF is needed)"),
            ),
        });
    }
    let (_, meters) = crate::energy::discover(energy);
    for m in meters {
        let name = format!("meter {}", m.meter);
        let detail = if m.selected { format!("{} (selected)", m.detail) } else { m.detail };
        out.push(match m.found {
            true => check(&name, Status::Ok, detail, None),
            false if m.meter == "nvml" => {
                let fix = crate::energy::nvml::fix_for(&detail);
                check(&name, Status::Warn, detail, Some(fix))
            }
            false => check(&name, Status::Warn, detail, None),
        });
    }
    if energy.gpu {
        // Per GPU: persistence, MIG, per-process utilization, accounting, energy counter.
        if let Ok(gpus) = crate::energy::nvml::doctor_report() {
            for g in gpus {
                let status = if g.ok { Status::Ok } else { Status::Warn };
                out.push(check(&g.name, status, g.detail, g.fix.as_deref()));
            }
        }
    }
    out
}

/// What the agent will use, given the checks.
pub fn plan(checks: &[Check]) -> Vec<String> {
    let ok = |name: &str| checks.iter().any(|c| c.name == name && c.status == Status::Ok);
    let mut plan = Vec::new();
    for c in checks.iter().filter(|c| c.name.starts_with("meter ") && c.detail.ends_with("(selected)")) {
        plan.push(format!("energy: {} ({})", &c.name[6..], c.detail.trim_end_matches(" (selected)")));
    }
    if ok("I/O programs: kernel offsets") && ok("I/O programs: kfunc") {
        if ok("I/O: per-task accounting") {
            plan.push(
                "I/O (default tier `page_cache`): bytes per process from task_struct.ioac at context switches and \
                 exits; per-file activity from tp_btf mm_filemap_get_pages, mm_filemap_add_to_page_cache, \
                 writeback_dirty_folio (page granularity), ext4_unlink_enter; sock and block tracepoints; \
                 sys_enter/sys_exit only in 1 % timing windows (no program on the syscall path otherwise)"
                    .to_string(),
            );
        }
        plan.push(
            "I/O with --io-detail syscalls: tp_btf sys_exit on every syscall (sys_enter in timing windows), \
             exact bytes and offsets per call"
                .to_string(),
        );
    }
    if ok("tp_btf/sched_switch") {
        plan.push("on-CPU time: tp_btf/sched_switch (per-tgid, per-CPU hash)".to_string());
    } else if ok("tracepoint/sched/sched_switch") {
        plan.push("on-CPU time: classic tracepoint sched:sched_switch (no BTF)".to_string());
    } else {
        plan.push("on-CPU time: UNAVAILABLE (see above)".to_string());
    }
    if ok("tp_btf/sched_process_fork") && ok("tp_btf/sched_process_exec") && ok("tp_btf/sched_process_exit") {
        plan.push("process lifecycle: tp_btf sched_process_{fork,exec,exit} ring buffer".to_string());
    } else {
        plan.push(
            "process lifecycle: /proc look-ups only (short-lived processes may be named '?')".to_string(),
        );
    }
    plan
}

pub fn render_text(checks: &[Check]) -> String {
    let mut s = String::from("carbon-agent doctor\n\n");
    for c in checks {
        let mark = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Missing => "FAIL",
        };
        s.push_str(&format!("[{mark}] {:<32} {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            s.push_str(&format!("       fix: {fix}\n"));
        }
    }
    s.push_str("\nThe agent will use:\n");
    for p in plan(checks) {
        s.push_str(&format!("  - {p}\n"));
    }
    s
}
