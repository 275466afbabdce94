//! Helpers for the kernel tests in `tests/tests/`: they load and attach the real programs and
//! check them against the kernel's own accounting, so they need root (CI runs as root).

use std::path::PathBuf;

/// Panics with a clear message unless running as root: these tests must never be skipped.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the kernel tests load eBPF programs and must run as root (CI does); run `sudo -E cargo xtask test`"
        );
    }
}

/// The `carbon-agent` binary next to this test executable (built by `cargo build`, which
/// `cargo xtask test` runs before the tests).
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/..");
    let bin = dir.join("carbon-agent");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p carbon-agent`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}
