//! `cargo xtask setup`: everything the build needs on a fresh machine, installed only when missing.
//!
//! 1. Debian packages in [`APT_PACKAGES`] (`apt-get install -y` only for the missing ones).
//! 2. rustfmt and clippy for the toolchain that runs xtask (`cargo fmt`/`cargo clippy` in `test`).
//! 3. The `nightly` toolchain with `rust-src` (for `-Z build-std=core`) and clippy (to lint the
//!    eBPF crate for its target).
//! 4. bpf-linker [`BPF_LINKER_VERSION`], linked against the nightly's own libLLVM (see
//!    `docs/` and the toolchain note): a prefix `$CARGO_HOME/carbon-agent/llvm-<major>/lib` holds
//!    links to the nightly's `libLLVM.so.*`; bpf-linker is built with `LLVM_PREFIX` set to it and
//!    keeps it as its run path. A stamp file in the prefix records what was built; bpf-linker is
//!    rebuilt when the stamp differs (other LLVM, other libLLVM file after a nightly update) or the
//!    installed binary does not run.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, command, note, step};

/// The bpf-linker release we build (the newest that builds with the pinned aya family).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors that bpf-linker [`BPF_LINKER_VERSION`] has a `llvm-<major>` feature for.
pub const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];
/// Debian packages the build, the tests and the benchmark need beyond a machine with rustup
/// and stable Rust: (package, why). bpf-linker uses the nightly's libLLVM, not Debian's.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("prometheus", "tests/tests/serve.rs scrapes `carbon-agent serve` with a real Prometheus server"),
    ("redis-server", "the Redis section of `cargo xtask bench` (a real server on loopback)"),
    ("redis-tools", "redis-benchmark, the Redis section's load"),
];
/// Components of the toolchain that runs xtask, needed by `cargo xtask test`.
const HOST_COMPONENTS: &[&str] = &["rustfmt", "clippy"];
/// Components of the nightly: std sources for `-Z build-std=core`, clippy for the eBPF crate.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];
const STAMP_FILE: &str = "bpf-linker.stamp";

/// Runs every setup step; each is a no-op when its work is already done.
pub fn setup() -> Result<()> {
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_host_components()?;
    ensure_nightly()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    step("setup: everything is in place");
    Ok(())
}

fn ensure_apt_packages(packages: &[(&str, &str)]) -> Result<()> {
    step(format!("setup: Debian packages ({} needed)", packages.len()));
    let mut missing = Vec::new();
    for (package, why) in packages {
        let status = command("dpkg-query", ["-W", "-f=${Status}", package]).output();
        let installed = status.map(|o| dpkg_status_installed(&String::from_utf8_lossy(&o.stdout)));
        if !installed.unwrap_or(false) {
            note(format!("missing: {package} ({why})"));
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("Debian packages {} are missing and installing them needs root", missing.join(", "));
    }
    cmd::run(&mut command("apt-get", ["update"]))?;
    // No questions: CI has no terminal and no standard input.
    cmd::run(
        command("apt-get", ["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing Debian packages")
}

/// Whether `dpkg-query -W -f='${Status}'` output says the package is installed.
pub fn dpkg_status_installed(status: &str) -> bool {
    status.trim() == "install ok installed"
}

fn ensure_host_components() -> Result<()> {
    step(format!("setup: {} for the default toolchain", HOST_COMPONENTS.join(" and ")));
    let installed = cmd::output(&mut command("rustup", ["component", "list", "--installed"]))
        .context("listing the installed rustup components (is rustup installed?)")?;
    let missing = missing_components(&installed, HOST_COMPONENTS);
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(command("rustup", ["component", "add"]).args(&missing))
        .context("installing rustup components for the default toolchain")
}

fn ensure_nightly() -> Result<()> {
    step("setup: nightly toolchain with rust-src");
    let host = host_triple()?;
    let toolchains = cmd::output(&mut command("rustup", ["toolchain", "list"]))?;
    if !has_toolchain(&toolchains, "nightly", &host) {
        note("nightly is missing: installing it (minimal profile)");
        return cmd::run(&mut command(
            "rustup",
            [
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                &NIGHTLY_COMPONENTS.join(","),
            ],
        ))
        .context("installing the nightly toolchain");
    }
    let installed =
        cmd::output(&mut command("rustup", ["component", "list", "--installed", "--toolchain", "nightly"]))?;
    let missing = missing_components(&installed, NIGHTLY_COMPONENTS);
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(command("rustup", ["component", "add", "--toolchain", "nightly"]).args(&missing))
        .context("adding components to the nightly toolchain")
}

fn host_triple() -> Result<String> {
    let version = cmd::output(&mut command("rustc", ["-vV"]))?;
    version_field(&version, "host").map(str::to_owned).context("`rustc -vV` printed no `host:` line")
}

/// The value of `key: value` in `rustc -vV` output.
pub fn version_field<'a>(rustc_vv: &'a str, key: &str) -> Option<&'a str> {
    rustc_vv.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// The LLVM major version in `rustc -vV` output (`LLVM version: 23.1.4` → 23).
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    version_field(rustc_vv, "LLVM version")?.split('.').next()?.parse().ok()
}

/// Whether `rustup toolchain list` output lists `<channel>-<host>` (annotations like `(active)` aside).
pub fn has_toolchain(list: &str, channel: &str, host: &str) -> bool {
    let wanted = format!("{channel}-{host}");
    list.lines().any(|line| line.split_whitespace().next() == Some(wanted.as_str()))
}

/// The components of `wanted` absent from `rustup component list --installed` output, whose lines
/// are `<name>-<target>` (`clippy-x86_64-unknown-linux-gnu`) or `<name>` (`rust-src`).
pub fn missing_components<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|name| {
            !installed.lines().map(str::trim).any(|line| {
                line == *name
                    || line
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with("-x86_64-") || rest.starts_with("-aarch64-"))
            })
        })
        .collect()
}

/// What bpf-linker must be built against; written as the stamp after a successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkerBuild {
    /// bpf-linker version.
    pub version: String,
    /// LLVM major of the nightly (the `llvm-<major>` feature).
    pub llvm_major: u32,
    /// File name of the nightly's libLLVM (changes with every nightly, so bpf-linker is rebuilt).
    pub libllvm: String,
    /// Where the binary is installed.
    pub binary: PathBuf,
}

impl LinkerBuild {
    /// The stamp file's contents.
    pub fn to_stamp(&self) -> String {
        format!(
            "bpf-linker {}\nllvm-major {}\nlibllvm {}\nbinary {}\n",
            self.version,
            self.llvm_major,
            self.libllvm,
            self.binary.display()
        )
    }
}

/// Whether the stamp left by an earlier build describes exactly the build we need now.
pub fn stamp_matches(stamp: Option<&str>, wanted: &LinkerBuild) -> bool {
    stamp.is_some_and(|s| s == wanted.to_stamp())
}

/// `$CARGO_HOME` (default `~/.cargo`): bpf-linker's prefix lives there so that it outlives `cargo clean`.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// The libLLVM shared library shipped in the nightly's sysroot.
fn nightly_libllvm(major: u32) -> Result<PathBuf> {
    let sysroot = cmd::output(&mut command("rustup", ["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let prefix = format!("libLLVM.so.{major}");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading the nightly's library folder {}", lib.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the nightly ships no {prefix}* in {} (needed to build bpf-linker)", lib.display()),
        many => bail!("the nightly ships several libLLVM files in {}: {many:?}", lib.display()),
    }
}

fn ensure_bpf_linker() -> Result<()> {
    step(format!("setup: bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM"));
    let version = cmd::output(&mut command("rustup", ["run", "nightly", "rustc", "-vV"]))?;
    let major = llvm_major(&version).context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        bail!(
            "the nightly uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {:?}; \
             install a nightly with a supported LLVM or move to a bpf-linker that supports LLVM {major}",
            BPF_LINKER_LLVM_MAJORS
        );
    }
    let so = nightly_libllvm(major)?;
    let so_name = so.file_name().expect("a file").to_string_lossy().into_owned();
    let home = cargo_home()?;
    let prefix = home.join("carbon-agent").join(format!("llvm-{major}"));
    let wanted = LinkerBuild {
        version: BPF_LINKER_VERSION.to_owned(),
        llvm_major: major,
        libllvm: so_name.clone(),
        binary: home.join("bin").join("bpf-linker"),
    };
    note(format!("nightly LLVM {major}, {so_name}; prefix {}", prefix.display()));

    // The links are cheap to refresh and the loader needs them at every bpf-linker run.
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", so_name.as_str()] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() != Some(so.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&so, &link)
                .with_context(|| format!("linking {} to {}", link.display(), so.display()))?;
        }
    }

    let stamp_path = prefix.join(STAMP_FILE);
    let stamp = fs::read_to_string(&stamp_path).ok();
    if stamp_matches(stamp.as_deref(), &wanted) && linker_runs(&wanted.binary) {
        note(format!("up to date ({})", stamp_path.display()));
        return check_linker_on_path(&wanted.binary);
    }
    note("building bpf-linker (about a minute; rebuilt only when the nightly's LLVM changes)");
    let _ = fs::remove_file(&stamp_path);
    let mut install = command(
        "cargo",
        [
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ],
    );
    install.arg(&home).env("LLVM_PREFIX", &prefix);
    // The toolchain that runs xtask builds bpf-linker, whatever override a caller set.
    install.env_remove("RUSTUP_TOOLCHAIN");
    cmd::run(&mut install).context("building bpf-linker")?;
    if !linker_runs(&wanted.binary) {
        bail!("bpf-linker was built but `{} --version` does not run", wanted.binary.display());
    }
    fs::write(&stamp_path, wanted.to_stamp()).with_context(|| format!("writing {}", stamp_path.display()))?;
    check_linker_on_path(&wanted.binary)
}

/// The cargo-fuzz release `cargo xtask fuzz` uses (builds with stable 1.95; runs with the nightly).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz [`CARGO_FUZZ_VERSION`] from crates.io, for `cargo xtask fuzz` (docs/fuzzing.md).
fn ensure_cargo_fuzz() -> Result<()> {
    step(format!("setup: cargo-fuzz {CARGO_FUZZ_VERSION}"));
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let installed = command("cargo", ["fuzz", "--version"]).output();
    if installed.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == wanted) {
        return Ok(());
    }
    let mut install =
        command("cargo", ["install", "cargo-fuzz", "--locked", "--force", "--version", CARGO_FUZZ_VERSION]);
    install.env_remove("RUSTUP_TOOLCHAIN");
    cmd::run(&mut install).context("installing cargo-fuzz")
}

/// Whether `binary --version` runs and reports the wanted version (it fails to start when its
/// libLLVM is gone, e.g. after a nightly update).
fn linker_runs(binary: &Path) -> bool {
    let out = command(binary, ["--version"]).output();
    out.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).trim() == format!("bpf-linker {BPF_LINKER_VERSION}")
    })
}

/// rustc finds bpf-linker on `PATH`: make sure it finds ours.
fn check_linker_on_path(ours: &Path) -> Result<()> {
    match cmd::which("bpf-linker") {
        Some(found) if same_file(&found, ours) => Ok(()),
        Some(found) => bail!(
            "`bpf-linker` on PATH is {}, not the one setup built ({}); remove it or put {} first on PATH",
            found.display(),
            ours.display(),
            ours.parent().expect("bin folder").display()
        ),
        None => bail!("{} is not on PATH; add it to PATH", ours.parent().expect("bin folder").display()),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHTLY_VV: &str = "rustc 1.101.0-nightly (92b5b8c87 2026-10-29)\nbinary: rustc\n\
        commit-hash: 92b5b8c87c61b20adc9001b41baf587634a74734\ncommit-date: 2026-10-29\n\
        host: x86_64-unknown-linux-gnu\nrelease: 1.101.0-nightly\nLLVM version: 23.1.4\n";

    #[test]
    fn reads_llvm_major_and_host() {
        assert_eq!(llvm_major(NIGHTLY_VV), Some(23));
        assert_eq!(version_field(NIGHTLY_VV, "host"), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(llvm_major("rustc 1.0\nhost: x\n"), None);
        assert_eq!(llvm_major("LLVM version: x.1\n"), None);
    }

    #[test]
    fn finds_toolchains_exactly() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n";
        assert!(has_toolchain(list, "nightly", "x86_64-unknown-linux-gnu"));
        assert!(has_toolchain(list, "stable", "x86_64-unknown-linux-gnu"));
        let dated =
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2024-01-01-x86_64-unknown-linux-gnu\n";
        assert!(!has_toolchain(dated, "nightly", "x86_64-unknown-linux-gnu"));
        assert!(!has_toolchain("", "nightly", "x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn lists_missing_components() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n\
            rustc-x86_64-unknown-linux-gnu\n";
        assert_eq!(missing_components(installed, &["rust-src", "clippy"]), vec!["clippy"]);
        assert_eq!(missing_components(installed, &["rustfmt"]), vec!["rustfmt"]);
        let full = "clippy-x86_64-unknown-linux-gnu\nrustfmt-x86_64-unknown-linux-gnu\n";
        assert!(missing_components(full, &["rustfmt", "clippy"]).is_empty());
        // `rust-std-…` is not `rust-src`.
        assert_eq!(
            missing_components("rust-std-x86_64-unknown-linux-gnu\n", &["rust-src"]),
            vec!["rust-src"]
        );
    }

    #[test]
    fn stamp_decides_rebuild() {
        let wanted = LinkerBuild {
            version: "0.13.0".into(),
            llvm_major: 23,
            libllvm: "libLLVM.so.23.1-rust-1.101.0-nightly".into(),
            binary: "/root/.cargo/bin/bpf-linker".into(),
        };
        assert!(stamp_matches(Some(&wanted.to_stamp()), &wanted));
        assert!(!stamp_matches(None, &wanted));
        let older_llvm = LinkerBuild { llvm_major: 22, ..wanted.clone() };
        assert!(!stamp_matches(Some(&older_llvm.to_stamp()), &wanted));
        let older_nightly =
            LinkerBuild { libllvm: "libLLVM.so.23.1-rust-1.100.0-nightly".into(), ..wanted.clone() };
        assert!(!stamp_matches(Some(&older_nightly.to_stamp()), &wanted));
        let older_linker = LinkerBuild { version: "0.12.0".into(), ..wanted.clone() };
        assert!(!stamp_matches(Some(&older_linker.to_stamp()), &wanted));
        assert!(!stamp_matches(Some("garbage"), &wanted));
    }

    #[test]
    fn reads_dpkg_status() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed(""));
    }
}
