//! Which privileges loading the programs needs, and which of them this process lacks.

use std::fs;

/// Capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
pub fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the capabilities missing to load and attach tracing programs; empty when enough.
///
/// CAP_BPF + CAP_PERFMON suffice on kernels since 5.8; CAP_SYS_ADMIN alone also works.
pub fn missing(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Vec::new();
    }
    let mut out = Vec::new();
    if !has(CAP_BPF) {
        out.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        out.push("CAP_PERFMON");
    }
    out
}

/// An error message for missing privileges, or `None` when this process has enough.
pub fn check() -> Option<String> {
    let caps = effective_caps().unwrap_or(0);
    let missing = missing(caps);
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "carbon-agent needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF programs \
         (missing: {}). Run it with sudo, or grant them: `sudo setcap cap_bpf,cap_perfmon+ep $(which carbon-agent)`.",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert!(missing(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(0x1ff_ffff_ffff));
    }
}
