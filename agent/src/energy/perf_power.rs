//! RAPL through the perf `power` PMU: `<sysfs_root>/bus/event_source/devices/power`.
//!
//! The PMU directory holds `type` (the `perf_event_attr.type` to use), `cpumask` (one CPU
//! per socket: the counters are per package and must be opened on that CPU), `format/event`
//! (which bits of `config` the event code goes in, `config:0-7`) and, per event,
//! `events/energy-X` (`event=0x02`), `energy-X.scale` (joules per count, e.g.
//! `2.3283064365386962890625e-10`) and `energy-X.unit` (`Joules`).
//!
//! Events and domains: `energy-pkg` → package, `energy-cores` → core, `energy-ram` →
//! dram, `energy-psys` → psys (opened once, on the first CPU of the mask),
//! `energy-gpu` → uncore (RAPL PP1, the *integrated* GPU inside the package; never
//! confused with an NVML discrete GPU).
//!
//! Parsing is pure over a [`FileReader`]; counters are opened through a
//! [`PerfCounterSource`] ([`SyscallCounterSource`] calls `perf_event_open(2)`), so tests
//! use a scripted source. perf counts are 64-bit and accumulated by the kernel, so they
//! do not wrap in practice; the difference uses wrapping arithmetic all the same.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::{
    Domain, EnergyMeter, FileReader, Measurement, MeterError, MeterSource, Resource, Tick, malformed,
    read_trimmed,
};

/// One RAPL event of the `power` PMU.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerEvent {
    /// Event name, e.g. `energy-pkg`.
    pub name: String,
    /// The domain it measures.
    pub domain: Domain,
    /// `perf_event_attr.config`.
    pub config: u64,
    /// Joules per count.
    pub scale: f64,
}

/// What the `power` PMU offers.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerPmu {
    /// `perf_event_attr.type`.
    pub pmu_type: u32,
    /// One CPU per package, with the package (socket) number it belongs to.
    pub cpus: Vec<(u32, u32)>,
    /// The known energy events.
    pub events: Vec<PowerEvent>,
}

/// Maps an event name to its domain; `None` for events this agent does not read.
fn event_domain(name: &str) -> Option<Domain> {
    Some(match name {
        "energy-pkg" => Domain::Package,
        "energy-cores" => Domain::Core,
        "energy-ram" => Domain::Dram,
        "energy-psys" => Domain::Psys,
        "energy-gpu" => Domain::Uncore,
        _ => return None,
    })
}

/// CPU numbers in a CPU list are below this: Linux's `NR_CPUS` is at most 8192 today, so a list
/// naming CPU 65536 or later is malformed (and `0-4294967295` must not allocate 16 GiB).
pub const MAX_CPUS: u32 = 1 << 16;

/// Parses a CPU list such as `0`, `0,28` or `0-3,8`; `None` when malformed or when it names a
/// CPU number of [`MAX_CPUS`] or more.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b): (u32, u32) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let cpu = part.parse().ok()?;
                (cpu, cpu)
            }
        };
        if a > b || b >= MAX_CPUS {
            return None;
        }
        cpus.extend(a..=b);
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Parses `format/event` (`config:0-7`) into the shift of the event code; `None` if malformed.
pub fn parse_format_shift(s: &str) -> Option<u32> {
    let bits = s.trim().strip_prefix("config:")?;
    let low = bits.split_once('-').map_or(bits, |(l, _)| l);
    let shift: u32 = low.parse().ok()?;
    (shift < 64).then_some(shift)
}

/// Parses an event description such as `event=0x02` into the event code.
pub fn parse_event_code(s: &str) -> Option<u64> {
    let mut code = None;
    for term in s.trim().split(',') {
        let (key, value) = term.split_once('=')?;
        if key.trim() != "event" {
            return None;
        }
        let v = value.trim();
        code = Some(match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => v.parse().ok()?,
        });
    }
    code
}

/// Reads the `power` PMU description under `sysfs_root`.
pub fn parse_pmu(sysfs_root: &Path, reader: &dyn FileReader) -> Result<PowerPmu, MeterError> {
    let dir = sysfs_root.join("bus/event_source/devices/power");
    let type_path = dir.join("type");
    let type_s = match reader.read_to_string(&type_path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MeterError::Unavailable(format!(
                "no perf power PMU ({} missing): RAPL not exposed through perf on this machine",
                dir.display()
            )));
        }
        Err(source) => {
            return Err(MeterError::Io { path: type_path, source });
        }
    };
    let pmu_type: u32 =
        type_s.trim().parse().map_err(|_| malformed(&type_path, type_s.trim(), "a perf PMU type number"))?;
    let mask_path = dir.join("cpumask");
    let mask = read_trimmed(reader, &mask_path)?;
    let mask_cpus =
        parse_cpu_list(&mask).ok_or_else(|| malformed(&mask_path, &mask, "a CPU list like 0,28"))?;
    let format_path = dir.join("format/event");
    let shift = match reader.read_to_string(&format_path) {
        Ok(s) => {
            parse_format_shift(&s).ok_or_else(|| malformed(&format_path, s.trim(), "config:LOW-HIGH"))?
        }
        Err(_) => 0,
    };
    let mut cpus = Vec::new();
    for (i, cpu) in mask_cpus.iter().enumerate() {
        let pkg_path = sysfs_root.join(format!("devices/system/cpu/cpu{cpu}/topology/physical_package_id"));
        let package = match reader.read_to_string(&pkg_path) {
            Ok(s) => s.trim().parse().map_err(|_| malformed(&pkg_path, s.trim(), "a package number"))?,
            Err(_) => i as u32,
        };
        cpus.push((*cpu, package));
    }
    let events_dir = dir.join("events");
    let names =
        reader.list_dir(&events_dir).map_err(|source| MeterError::Io { path: events_dir.clone(), source })?;
    let mut events = Vec::new();
    for name in names.iter().filter(|n| !n.contains('.')) {
        let Some(domain) = event_domain(name) else {
            continue;
        };
        let ev_path = events_dir.join(name);
        let desc = read_trimmed(reader, &ev_path)?;
        let code = parse_event_code(&desc).ok_or_else(|| malformed(&ev_path, &desc, "event=0xNN"))?;
        let scale_path = events_dir.join(format!("{name}.scale"));
        let scale_s = read_trimmed(reader, &scale_path)?;
        // RAPL's energy unit is 1/2^ESU J with ESU ≥ 0: never more than 1 J per count.
        let scale: f64 = scale_s
            .parse()
            .ok()
            .filter(|s: &f64| *s > 0.0 && *s <= 1.0)
            .ok_or_else(|| malformed(&scale_path, &scale_s, "joules per count, above 0 and at most 1"))?;
        let unit_path = events_dir.join(format!("{name}.unit"));
        let unit = read_trimmed(reader, &unit_path)?;
        if unit != "Joules" {
            return Err(malformed(&unit_path, &unit, "Joules"));
        }
        let config = code
            .checked_shl(shift)
            .filter(|config| config >> shift == code)
            .ok_or_else(|| malformed(&ev_path, &desc, "an event code that fits format/event"))?;
        events.push(PowerEvent { name: name.clone(), domain, config, scale });
    }
    if events.is_empty() {
        return Err(MeterError::Unavailable(format!(
            "perf power PMU at {} has no energy events",
            dir.display()
        )));
    }
    Ok(PowerPmu { pmu_type, cpus, events })
}

/// An open counter: a cumulative 64-bit count.
pub trait PerfCounter: Send {
    /// The current count.
    fn read(&mut self) -> io::Result<u64>;
}

/// Opens counters (system-wide, on one CPU).
pub trait PerfCounterSource: Send {
    /// Opens event `config` of PMU `pmu_type` on `cpu`.
    fn open(&mut self, pmu_type: u32, config: u64, cpu: u32) -> io::Result<Box<dyn PerfCounter>>;
}

/// `perf_event_attr` up to `config1` (`PERF_ATTR_SIZE_VER0`, 64 bytes), all the power PMU needs.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttrV0 {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// Counters opened with the `perf_event_open(2)` syscall (needs root or CAP_PERFMON).
#[derive(Debug, Default)]
pub struct SyscallCounterSource;

struct FdCounter(OwnedFd);

impl PerfCounter for FdCounter {
    fn read(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from an fd we own.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n != 8 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short perf read: {n} bytes")));
        }
        Ok(u64::from_ne_bytes(buf))
    }
}

impl PerfCounterSource for SyscallCounterSource {
    fn open(&mut self, pmu_type: u32, config: u64, cpu: u32) -> io::Result<Box<dyn PerfCounter>> {
        let attr = PerfEventAttrV0 {
            type_: pmu_type,
            size: std::mem::size_of::<PerfEventAttrV0>() as u32,
            config,
            ..Default::default()
        };
        // SAFETY: attr is a valid, fully initialised perf_event_attr of the size it declares.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttrV0,
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new file descriptor that nothing else owns.
        Ok(Box::new(FdCounter(unsafe { OwnedFd::from_raw_fd(fd as i32) })))
    }
}

struct OpenCounter {
    what: String,
    resource: Resource,
    domain: Domain,
    scale: f64,
    first: u64,
    counter: Box<dyn PerfCounter>,
}

/// RAPL through the perf `power` PMU.
pub struct PerfPowerMeter {
    counters: Vec<OpenCounter>,
}

impl PerfPowerMeter {
    /// Parses the PMU and opens every energy event on one CPU per package (psys once).
    pub fn open(
        sysfs_root: &Path,
        reader: Arc<dyn FileReader>,
        mut source: Box<dyn PerfCounterSource>,
    ) -> Result<Self, MeterError> {
        let pmu = parse_pmu(sysfs_root, &*reader)?;
        let mut counters = Vec::new();
        for event in &pmu.events {
            let cpus: &[(u32, u32)] = if event.domain == Domain::Psys { &pmu.cpus[..1] } else { &pmu.cpus };
            for &(cpu, package) in cpus {
                let what = format!("{} on cpu {cpu}", event.name);
                let mut counter = source.open(pmu.pmu_type, event.config, cpu).map_err(|e| {
                    let hint = match e.raw_os_error() {
                        Some(libc::EACCES) | Some(libc::EPERM) => {
                            " (needs root or CAP_PERFMON; see /proc/sys/kernel/perf_event_paranoid)"
                        }
                        _ => "",
                    };
                    MeterError::Perf { what: format!("{what}{hint}"), source: e }
                })?;
                let first =
                    counter.read().map_err(|source| MeterError::Perf { what: what.clone(), source })?;
                let resource = if event.domain == Domain::Psys {
                    Resource::Platform
                } else {
                    Resource::Package(package)
                };
                counters.push(OpenCounter {
                    what,
                    resource,
                    domain: event.domain,
                    scale: event.scale,
                    first,
                    counter,
                });
            }
        }
        Ok(Self { counters })
    }
}

impl EnergyMeter for PerfPowerMeter {
    fn source(&self) -> MeterSource {
        MeterSource::RaplPerf
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.counters.iter().map(|c| c.what.as_str()).collect();
        format!("perf power PMU: {}", names.join(", "))
    }

    fn read(&mut self, _tick: &Tick<'_>) -> Result<Vec<Measurement>, MeterError> {
        let mut out = Vec::with_capacity(self.counters.len());
        for c in &mut self.counters {
            let now = c.counter.read().map_err(|source| MeterError::Perf { what: c.what.clone(), source })?;
            out.push(Measurement {
                resource: c.resource,
                domain: c.domain,
                joules: now.wrapping_sub(c.first) as f64 * c.scale,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::energy::FsReader;
    use crate::energy::testing::write;
    use crate::usage::IntervalUsage;

    /// A counter source whose counts tests set: key (config, cpu).
    #[derive(Clone, Default)]
    pub struct ScriptedCounters(pub Arc<Mutex<BTreeMap<(u64, u32), u64>>>);

    struct Scripted {
        key: (u64, u32),
        counts: Arc<Mutex<BTreeMap<(u64, u32), u64>>>,
    }

    impl PerfCounter for Scripted {
        fn read(&mut self) -> io::Result<u64> {
            Ok(*self.counts.lock().unwrap().get(&self.key).unwrap_or(&0))
        }
    }

    impl PerfCounterSource for ScriptedCounters {
        fn open(&mut self, _t: u32, config: u64, cpu: u32) -> io::Result<Box<dyn PerfCounter>> {
            Ok(Box::new(Scripted { key: (config, cpu), counts: self.0.clone() }))
        }
    }

    impl ScriptedCounters {
        pub fn set(&self, config: u64, cpu: u32, v: u64) {
            self.0.lock().unwrap().insert((config, cpu), v);
        }
    }

    /// A fake power PMU with pkg (0x2), cores (0x1), ram (0x3), psys (0x5), gpu (0x4).
    pub fn fake_pmu(root: &Path, cpumask: &str) {
        let d = "bus/event_source/devices/power";
        write(root, &format!("{d}/type"), "23\n");
        write(root, &format!("{d}/cpumask"), &format!("{cpumask}\n"));
        write(root, &format!("{d}/format/event"), "config:0-7\n");
        for (name, code) in [("pkg", 2), ("cores", 1), ("ram", 3), ("gpu", 4), ("psys", 5)] {
            write(root, &format!("{d}/events/energy-{name}"), &format!("event=0x{code:02x}\n"));
            write(root, &format!("{d}/events/energy-{name}.scale"), "2.3283064365386962890625e-10\n");
            write(root, &format!("{d}/events/energy-{name}.unit"), "Joules\n");
        }
        write(root, &format!("{d}/events/cycles"), "event=0x3c\n"); // not an energy event: ignored
    }

    const SCALE: f64 = 1.0 / (1u64 << 32) as f64; // the file's 2.3283064365386962890625e-10

    #[test]
    fn parses_cpu_lists_formats_and_events() {
        assert_eq!(parse_cpu_list("0,28"), Some(vec![0, 28]));
        assert_eq!(parse_cpu_list("0-2,8\n"), Some(vec![0, 1, 2, 8]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        // A huge range is malformed, not 16 GiB of CPU numbers.
        assert_eq!(parse_cpu_list("0-4294967295"), None);
        assert_eq!(parse_cpu_list("65536"), None);
        assert_eq!(parse_cpu_list("65534-65535").map(|c| c.len()), Some(2));
        assert_eq!(parse_format_shift("config:0-7"), Some(0));
        assert_eq!(parse_format_shift("config:8-15"), Some(8));
        assert_eq!(parse_format_shift("config1:0-7"), None);
        assert_eq!(parse_event_code("event=0x02"), Some(2));
        assert_eq!(parse_event_code("event=19"), Some(19));
        assert_eq!(parse_event_code("umask=0x1"), None);
        assert_eq!(parse_event_code("event=0xzz"), None);
    }

    #[test]
    fn parses_a_fake_pmu_with_two_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        fake_pmu(tmp.path(), "0,28");
        write(tmp.path(), "devices/system/cpu/cpu28/topology/physical_package_id", "1\n");
        write(tmp.path(), "devices/system/cpu/cpu0/topology/physical_package_id", "0\n");
        let pmu = parse_pmu(tmp.path(), &FsReader).unwrap();
        assert_eq!(pmu.pmu_type, 23);
        assert_eq!(pmu.cpus, vec![(0, 0), (28, 1)]);
        let names: Vec<(&str, Domain, u64)> =
            pmu.events.iter().map(|e| (e.name.as_str(), e.domain, e.config)).collect();
        assert_eq!(
            names,
            [
                ("energy-cores", Domain::Core, 1),
                ("energy-gpu", Domain::Uncore, 4),
                ("energy-pkg", Domain::Package, 2),
                ("energy-psys", Domain::Psys, 5),
                ("energy-ram", Domain::Dram, 3)
            ]
        );
        assert_eq!(pmu.events[0].scale, SCALE);
    }

    #[test]
    fn counters_give_cumulative_joules_per_socket() {
        let tmp = tempfile::tempdir().unwrap();
        fake_pmu(tmp.path(), "0,1");
        let counts = ScriptedCounters::default();
        counts.set(2, 0, 1000);
        let mut m = PerfPowerMeter::open(tmp.path(), Arc::new(FsReader), Box::new(counts.clone())).unwrap();
        // 4 events × 2 CPUs + psys once.
        assert_eq!(m.counters.len(), 9);
        counts.set(2, 0, 1000 + (1u64 << 32)); // 2^32 counts × 2^-32 J = 1 J
        counts.set(2, 1, 3 << 32);
        counts.set(5, 0, 10 << 32);
        let u = IntervalUsage::default();
        let r = m.read(&Tick { interval_s: 1.0, usage: &u }).unwrap();
        let get =
            |res, d| r.iter().find(|x: &&Measurement| x.resource == res && x.domain == d).unwrap().joules;
        assert_eq!(get(Resource::Package(0), Domain::Package), 1.0);
        assert_eq!(get(Resource::Package(1), Domain::Package), 3.0);
        assert_eq!(get(Resource::Platform, Domain::Psys), 10.0);
        assert_eq!(get(Resource::Package(1), Domain::Uncore), 0.0);
    }

    #[test]
    fn missing_pmu_is_unavailable_and_malformed_is_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let err = parse_pmu(tmp.path(), &FsReader).err().unwrap();
        assert!(matches!(err, MeterError::Unavailable(_)), "{err}");

        fake_pmu(tmp.path(), "0");
        let d = "bus/event_source/devices/power";
        write(tmp.path(), &format!("{d}/events/energy-pkg.unit"), "Watts\n");
        let msg = parse_pmu(tmp.path(), &FsReader).err().unwrap().to_string();
        assert!(msg.contains("energy-pkg.unit") && msg.contains("Watts") && msg.contains("Joules"), "{msg}");

        fake_pmu(tmp.path(), "0");
        write(tmp.path(), &format!("{d}/events/energy-ram.scale"), "-1\n");
        let msg = parse_pmu(tmp.path(), &FsReader).err().unwrap().to_string();
        assert!(msg.contains("energy-ram.scale"), "{msg}");

        fake_pmu(tmp.path(), "0");
        write(tmp.path(), &format!("{d}/events/energy-ram.scale"), "1e300\n");
        let msg = parse_pmu(tmp.path(), &FsReader).err().unwrap().to_string();
        assert!(msg.contains("energy-ram.scale") && msg.contains("at most 1"), "{msg}");

        // Code 0x1ff does not fit in the 8 bits above bit 56 that format/event gives it.
        fake_pmu(tmp.path(), "0");
        write(tmp.path(), &format!("{d}/format/event"), "config:56-63\n");
        write(tmp.path(), &format!("{d}/events/energy-pkg"), "event=0x1ff\n");
        let msg = parse_pmu(tmp.path(), &FsReader).err().unwrap().to_string();
        assert!(msg.contains("energy-pkg") && msg.contains("fits format/event"), "{msg}");

        fake_pmu(tmp.path(), "zero");
        let msg = parse_pmu(tmp.path(), &FsReader).err().unwrap().to_string();
        assert!(msg.contains("cpumask") && msg.contains("CPU list"), "{msg}");
    }

    #[test]
    fn permission_error_on_open_names_the_privilege() {
        struct Denied;
        impl PerfCounterSource for Denied {
            fn open(&mut self, _: u32, _: u64, _: u32) -> io::Result<Box<dyn PerfCounter>> {
                Err(io::Error::from_raw_os_error(libc::EACCES))
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        fake_pmu(tmp.path(), "0");
        let msg =
            PerfPowerMeter::open(tmp.path(), Arc::new(FsReader), Box::new(Denied)).err().unwrap().to_string();
        assert!(msg.contains("CAP_PERFMON") && msg.contains("energy-"), "{msg}");
    }
}
