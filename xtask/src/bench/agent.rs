//! What the benchmark attaches: the real agent binary, or only a section's handlers loaded
//! in-process from the eBPF object the agent embeds.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{Btf, Ebpf, EbpfLoader, programs::loaded_programs};
use carbon_agent_common::btf::KernelBtf;

use super::{
    Section, Variant,
    stats::{ProgStats, kernel_program_name, prog_ids_in_fdinfo},
};

/// How long the agent may take to load and attach its programs.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the agent gets after attaching to finish its start-up (reading `/proc`, first interval)
/// before the load starts, so that start-up work is not counted as slowdown.
const SETTLE: Duration = Duration::from_millis(1500);
/// Upper bound for the agent's `--duration`, in case xtask dies without stopping it.
const AGENT_MAX_DURATION_S: u64 = 600;

/// What is attached during the runs "with the agent".
pub enum AgentUnderTest {
    /// The release `carbon-agent` binary, started with `--json --duration` per run: every program
    /// it attaches and its userspace work are included. The eBPF object and the BTF serve the
    /// empty-program variants.
    Binary { path: PathBuf, object: Vec<u8>, btf: Btf },
    /// Only the section's own programs, loaded in-process from the agent's eBPF object, with
    /// the struct-offset globals they read set from the kernel's BTF as the agent sets them.
    Handlers { object: Vec<u8>, btf: Btf, offsets: KernelBtf },
}

/// One attachment; dropping it detaches (kills the agent or unloads the programs).
pub enum Attached {
    Process { child: Child, prog_ids: Vec<u32> },
    InProcess { _ebpf: Ebpf, prog_ids: Vec<u32> },
}

impl AgentUnderTest {
    /// Describes what a variant attaches, for the report.
    pub fn describe(&self, variant: &Variant) -> String {
        match (self, variant) {
            (Self::Binary { path, .. }, Variant::Agent { args, .. }) => format!(
                "{} --json --duration {AGENT_MAX_DURATION_S} {} (the whole agent)",
                path.display(),
                args.join(" ")
            ),
            (Self::Handlers { .. }, Variant::Agent { .. }) => {
                "the section's handlers only, loaded from the agent's eBPF object".into()
            }
            (_, Variant::Empty { programs, .. }) => format!(
                "empty programs only ({}), from the agent's eBPF object",
                programs.iter().map(|(p, t)| format!("{p} on tp_btf/{t}")).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Attaches `variant` for `section` and returns once its programs run.
    pub fn attach(&self, section: &dyn Section, variant: &Variant) -> Result<Attached> {
        match (self, variant) {
            (Self::Binary { path, .. }, Variant::Agent { args, .. }) => start_agent(path, section, args),
            (
                Self::Binary { object, btf, .. } | Self::Handlers { object, btf, .. },
                Variant::Empty { programs, .. },
            ) => {
                let mut loader = EbpfLoader::new();
                loader.allow_unsupported_maps();
                let mut ebpf = loader.load(object).context("loading the agent's eBPF object")?;
                let mut prog_ids = Vec::new();
                for (name, tp) in *programs {
                    let p: &mut aya::programs::BtfTracePoint = ebpf
                        .program_mut(name)
                        .with_context(|| format!("the agent's eBPF object has no program `{name}`"))?
                        .try_into()?;
                    p.load(tp, btf).with_context(|| format!("loading {name}"))?;
                    p.attach().with_context(|| format!("attaching {name}"))?;
                    prog_ids.push(p.info()?.id());
                }
                Ok(Attached::InProcess { _ebpf: ebpf, prog_ids })
            }
            (Self::Handlers { object, btf, offsets }, Variant::Agent { .. }) => {
                let globals = section.globals();
                let values = globals
                    .iter()
                    .map(|(name, strukt, field)| {
                        offsets
                            .member_offset(strukt, field)
                            .with_context(|| format!("the value of global {name}"))
                    })
                    .collect::<Result<Vec<u32>>>()?;
                let mut loader = EbpfLoader::new();
                loader.allow_unsupported_maps();
                for ((name, _, _), value) in globals.iter().zip(&values) {
                    loader.override_global(name, value, true);
                }
                let mut ebpf = loader.load(object).context("loading the agent's eBPF object")?;
                let prog_ids = section
                    .attach_handlers(&mut ebpf, btf)
                    .context("this section measures the whole agent only")??;
                Ok(Attached::InProcess { _ebpf: ebpf, prog_ids })
            }
        }
    }
}

impl Attached {
    /// The ids of the section's programs in this attachment.
    pub fn prog_ids(&self) -> &[u32] {
        match self {
            Self::Process { prog_ids, .. } | Self::InProcess { prog_ids, .. } => prog_ids,
        }
    }

    /// Current run-time statistics of each of the attached programs, by kernel name (programs
    /// of the same name summed).
    pub fn stats_by_program(&self) -> Result<Vec<(String, ProgStats)>> {
        let mut out: Vec<(String, ProgStats)> = Vec::new();
        for info in loaded_programs() {
            let info = info.context("listing loaded eBPF programs")?;
            if self.prog_ids().contains(&info.id()) {
                let name = info.name_as_str().unwrap_or("?").to_owned();
                let s =
                    ProgStats { run_time_ns: info.run_time().as_nanos() as u64, run_cnt: info.run_count() };
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => *total = total.plus(s),
                    None => out.push((name, s)),
                }
            }
        }
        Ok(out)
    }

    /// Detaches: stops the agent (SIGINT, then SIGKILL after 10 s) or unloads the programs.
    pub fn stop(self) -> Result<()> {
        if let Self::Process { mut child, .. } = self {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    // Where each of its threads is, for the report; then it is killed and the
                    // run's figures stand (the load had finished).
                    let stacks = thread_stacks(child.id());
                    child.kill()?;
                    child.wait()?;
                    eprintln!(
                        "WARNING: carbon-agent did not stop within 10 s of SIGINT (killed); its threads:\n{stacks}"
                    );
                    return Ok(());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// Each thread's name, state and kernel stack (`/proc/<pid>/task/*/{comm,stat,stack}`).
fn thread_stacks(pid: u32) -> String {
    let mut out = String::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let dir = entry.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("stat").rsplit_once(") ").map(|(_, r)| r.chars().take(1).collect::<String>());
        out.push_str(&format!(
            "  {} {} {}\n{}",
            entry.file_name().to_string_lossy(),
            read("comm").trim(),
            state.unwrap_or_default(),
            read("stack")
        ));
    }
    out
}

/// Sums the kernel's run-time statistics of the programs `ids`.
pub fn program_stats(ids: &[u32]) -> Result<ProgStats> {
    let mut total = ProgStats::default();
    let mut found = 0;
    for info in loaded_programs() {
        let info = info.context("listing loaded eBPF programs")?;
        if ids.contains(&info.id()) {
            found += 1;
            total = total.plus(ProgStats {
                run_time_ns: info.run_time().as_nanos() as u64,
                run_cnt: info.run_count(),
            });
        }
    }
    if found != ids.len() {
        bail!("programs {ids:?} are no longer loaded");
    }
    Ok(total)
}

/// The agent process's programs whose kernel names are among `section`'s program names.
fn section_programs_of(pid: u32, section: &dyn Section) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut fdinfos = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // Descriptors come and go while the agent starts: skip the ones that vanished.
        if let Ok(text) = fs::read_to_string(entry?.path()) {
            fdinfos.push(text);
        }
    }
    let held = prog_ids_in_fdinfo(fdinfos.iter().map(String::as_str));
    let names: Vec<&str> = section.programs().iter().map(|n| kernel_program_name(n)).collect();
    let mut ids = Vec::new();
    for info in loaded_programs() {
        let info = info.context("listing loaded eBPF programs")?;
        if held.contains(&info.id()) && info.name_as_str().is_some_and(|n| names.contains(&n)) {
            ids.push(info.id());
        }
    }
    Ok(ids)
}

/// Whether the process holds a BPF link (`link_type:` in an fdinfo): it attached something.
fn holds_link(pid: u32) -> Result<bool> {
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        if fs::read_to_string(entry?.path()).is_ok_and(|text| text.contains("\nlink_type:")) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn start_agent(path: &Path, section: &dyn Section, args: &[&str]) -> Result<Attached> {
    let log = crate::cmd::target_dir().join("xtask-bench-agent.log");
    let stderr = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(path);
    command
        .args(["--json", "--duration", &AGENT_MAX_DURATION_S.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: prctl is async-signal-safe; the agent dies with xtask instead of outliving it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| format!("starting {}", path.display()))?;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "{} --json --duration {AGENT_MAX_DURATION_S} exited ({status}) before attaching {:?}; \
                 its stderr ({}):\n{}",
                path.display(),
                section.programs(),
                log.display(),
                tail.trim()
            );
        }
        let ids = section_programs_of(child.id(), section)?;
        // The agent loads and then attaches; its link descriptors show up once attached, so
        // wait until it holds a link (or, with BPF stats on, until the programs ran).
        if !ids.is_empty() && (holds_link(child.id())? || program_stats(&ids)?.run_cnt > 0) {
            thread::sleep(SETTLE);
            // Every program it loads by now (it loads and attaches them one after another).
            let prog_ids = section_programs_of(child.id(), section)?;
            return Ok(Attached::Process { child, prog_ids });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} did not attach {:?} within {ATTACH_TIMEOUT:?}", path.display(), section.programs());
        }
        thread::sleep(Duration::from_millis(50));
    }
}
