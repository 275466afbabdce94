//! scripts/gpu-check.sh on a machine without an NVIDIA driver (this project's): the
//! preflight stops with exit 2 and a reason, in the evidence folder too; the bundle has the
//! layout the GPU machine needs.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu-check.sh")
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A folder with the real load and evaluator, and a stand-in agent (the preflight stops
/// before the agent is used on a machine without the driver).
fn bin_dir(root: &Path) -> PathBuf {
    let bin = root.join("from");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_gpu-load"), bin.join("gpu-load")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_gpu-check-eval"), bin.join("gpu-check-eval")).unwrap();
    std::fs::write(
        bin.join("carbon-agent"),
        "#!/bin/sh\necho 'stand-in agent: must not be reached' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(bin.join("carbon-agent"), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let Output { status, stderr, .. } =
        cmd.env_remove("GPU_LOAD_LIBCUDA").env_remove("GPU_LOAD_LIBNVML").output().unwrap();
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

#[test]
fn preflight_without_the_driver_is_exit_2_with_the_reason_in_the_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path());
    let evidence = tmp.path().join("evidence");
    let (code, err) =
        run(Command::new("bash").arg(script()).args(["run", evidence.to_str().unwrap()]).env("BIN", &bin));
    assert_eq!(code, Some(2), "{err}");
    if !is_root() {
        assert!(err.contains("must run as root"), "{err}");
        return;
    }
    assert!(err.contains("cannot check here: driver libraries:"), "{err}");
    assert!(err.contains("libcuda.so.1 cannot be loaded"), "{err}");
    assert!(!err.contains("stand-in agent"), "{err}");
    let pre = std::fs::read_to_string(evidence.join("preflight.txt")).unwrap();
    assert!(pre.starts_with("root: yes;"), "{pre}");
    assert!(pre.contains("cannot check here: driver libraries:") && pre.contains("libcuda.so.1"), "{pre}");
    assert!(evidence.join("single").is_dir() && evidence.join("pair").is_dir());
}

#[test]
fn preflight_refuses_a_user_who_is_not_root() {
    if !is_root() {
        // Then the test above checks exactly this.
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path());
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(script())
        .args(["run", "/nonexistent/evidence"])
        .env("BIN", &bin));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot check here: must run as root"), "{err}");
}

#[test]
fn missing_binaries_are_exit_2_saying_how_to_bundle() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let evidence = tmp.path().join("e");
    let (code, err) = run(Command::new("bash")
        .arg(script())
        .args(["run", evidence.to_str().unwrap()])
        .env("BIN", "/nonexistent"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/carbon-agent not found") && err.contains("gpu-check.sh bundle DIR"),
        "{err}"
    );
    assert!(std::fs::read_to_string(evidence.join("preflight.txt")).unwrap().contains("not found"));
}

#[test]
fn binaries_that_do_not_run_here_are_exit_2_naming_glibc() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path());
    // What the loader says when the machine's glibc is older than the bundle's.
    std::fs::write(
        bin.join("gpu-load"),
        "#!/bin/sh\necho \"gpu-load: version 'GLIBC_2.34' not found\" >&2\nexit 1\n",
    )
    .unwrap();
    let evidence = tmp.path().join("e");
    let (code, err) =
        run(Command::new("bash").arg(script()).args(["run", evidence.to_str().unwrap()]).env("BIN", &bin));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("do not run on this machine") && err.contains("GLIBC_2.34' not found"), "{err}");
    assert!(err.contains("glibc >= 2.34"), "{err}");
}

#[test]
fn a_bundle_carries_the_three_binaries_and_runs_its_own_preflight() {
    let tmp = tempfile::tempdir().unwrap();
    let from = bin_dir(tmp.path());
    let bundle = tmp.path().join("bundle");
    let out = Command::new("bash")
        .arg(script())
        .args(["bundle", bundle.to_str().unwrap()])
        .env("BUNDLE_FROM", &from)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for b in ["bin/carbon-agent", "bin/gpu-load", "bin/gpu-check-eval", "gpu-check.sh"] {
        let m = std::fs::metadata(bundle.join(b)).unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(m.permissions().mode() & 0o111 != 0, "{b} is not executable");
    }
    // Run from the bundle, with no BIN and no evidence folder given: its own bin/ is used
    // and the evidence goes next to it.
    let (code, err) = run(Command::new(bundle.join("gpu-check.sh")).arg("run").env_remove("BIN"));
    assert_eq!(code, Some(2), "{err}");
    if is_root() {
        assert!(err.contains("driver libraries"), "{err}");
        let evidence: Vec<_> = std::fs::read_dir(&bundle)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("evidence-"))
            .collect();
        assert_eq!(evidence.len(), 1);
        let pre = std::fs::read_to_string(evidence[0].path().join("preflight.txt")).unwrap();
        assert!(pre.contains(&format!("binaries: {}", bundle.join("bin").display())), "{pre}");
    }
}

fn write_exe(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The whole run with stand-ins for the driver's tools (nvidia-smi), the agent and the load,
/// and the real evaluator: the script fills the evidence folder in the documented layout and
/// the verdict is judged (exit 1 here: the stand-in agent meters nothing), not "cannot check".
#[test]
fn the_run_fills_the_evidence_folder_and_the_evaluator_judges_it() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path());
    write_exe(
        &bin.join("gpu-load"),
        "#!/bin/sh\ncase \"$1\" in --probe) echo 'gpu-load: probe cuda_devices=1 libraries=ok'; exit 0;; \
         --version) echo 'gpu-load 0'; exit 0;; esac\n\
         echo \"gpu-load: ready pid=$$ cuda_device=0 nvml_index=0 pci=0000:01:00.0 sms=1 name=Stand In\"\n\
         echo 'gpu-load: energy phase=start energy_mj=1000 unix_ms=1796188889000'\nsleep 0.2\n\
         echo 'gpu-load: energy phase=end energy_mj=2000 unix_ms=1796188890000 launches=1'\n",
    );
    write_exe(
        &bin.join("carbon-agent"),
        r#"#!/bin/sh
case "$1" in
doctor)
  case "$2" in
  --json) echo '{"checks":[{"name":"privileges","status":"ok","detail":""},{"name":"tp_btf/sched_switch","status":"ok","detail":""},{"name":"meter nvml","status":"ok","detail":"NVML: GPU 0 Stand In (energy counter)"}]}' ;;
  --gpu-energy) n=$(cat "$COUNTER" 2>/dev/null || echo 1000); echo $((n + 100)) >"$COUNTER"; echo "$n" ;;
  *) echo 'carbon-agent doctor (stand-in)' ;;
  esac ;;
run)
  json=$3; shift 4
  "$@"; rc=$?
  echo '{"meter":{"source":"model"},"tree":{"energy_j":{"gpu":0},"children":[]}}' >"$json"
  exit $rc ;;
esac
"#,
    );
    let path_dir = tmp.path().join("path");
    std::fs::create_dir_all(&path_dir).unwrap();
    write_exe(
        &path_dir.join("nvidia-smi"),
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in\n\
         -L) echo 'GPU 0: Stand In (UUID: GPU-0)'; exit 0;;\n-q) echo 'stand-in -q'; exit 0;;\n\
         --query-gpu=*) while :; do echo \"$(date -u '+%Y/%m/%d %H:%M:%S.000'), 0, 100.00\"; sleep 0.2; done;;\n\
         --query-compute-apps=*) exit 0;;\nesac; done\n",
    );
    let evidence = tmp.path().join("evidence");
    let path = format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap());
    let (code, err) = run(Command::new("bash")
        .arg(script())
        .args(["run", evidence.to_str().unwrap()])
        .env("BIN", &bin)
        .env("PATH", path)
        .env("COUNTER", tmp.path().join("counter"))
        .env("LOAD_S", "1"));
    assert_eq!(code, Some(1), "judged and failed, not 'cannot check': {err}");
    for f in [
        "preflight.txt",
        "doctor.json",
        "doctor.txt",
        "nvidia-smi-q.txt",
        "power-trace.csv",
        "verdict.json",
        "verdict.txt",
        "single/counter-before.txt",
        "single/counter-after.txt",
        "single/run.json",
        "single/load.out",
        "single/compute-apps.txt",
        "single/agent.err",
        "pair/counter-before.txt",
        "pair/counter-after.txt",
        "pair/run.json",
        "pair/load-a.out",
        "pair/load-b.out",
        "pair/compute-apps.txt",
        "pair/agent.err",
    ] {
        assert!(evidence.join(f).is_file(), "{f} missing from the evidence");
    }
    let read = |f: &str| std::fs::read_to_string(evidence.join(f)).unwrap();
    assert!(read("preflight.txt").contains("doctor: eBPF tp_btf/sched_switch loads; NVML: GPU 0 Stand In"));
    assert!(read("power-trace.csv").lines().count() >= 5, "{}", read("power-trace.csv"));
    // Counter reads bracket each run, in order.
    let j = |f: &str| read(f).trim().parse::<u64>().unwrap();
    assert!(j("single/counter-before.txt") < j("single/counter-after.txt"));
    assert!(j("single/counter-after.txt") < j("pair/counter-before.txt"));
    // The two concurrent loads wrote their own lines, with different pids.
    let pid = |f: &str| gpu_load::output::parse(&read(f)).unwrap().pid;
    assert_ne!(pid("pair/load-a.out"), pid("pair/load-b.out"));
    assert!(gpu_load::output::parse(&read("single/load.out")).is_ok());
    let verdict: serde_json::Value = serde_json::from_str(&read("verdict.json")).unwrap();
    assert_eq!(verdict["pass"], false);
    assert!(read("verdict.txt").contains("FAIL single-source"), "{}", read("verdict.txt"));
}

#[test]
fn without_a_command_it_prints_its_usage_and_exits_2() {
    let (code, err) = run(Command::new("bash").arg(script()));
    assert_eq!(code, Some(2));
    assert!(err.contains("gpu-check.sh bundle DIR") && err.contains("Exit status"), "{err}");
}
