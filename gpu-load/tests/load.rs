//! The load program without a driver: it must say so and exit 2.

use std::process::Command;

fn load(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_gpu-load")).envs(env.iter().copied()).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_driver_library_is_exit_2_with_the_reason() {
    let (code, err) = load(&[("GPU_LOAD_LIBCUDA", "/nonexistent/libcuda.so.1")], &["--seconds", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/libcuda.so.1 cannot be loaded"), "{err}");
    assert!(err.contains("needs a machine with the NVIDIA driver installed"), "{err}");
    // The preflight probe says the same.
    let (code, err) = load(&[("GPU_LOAD_LIBCUDA", "/nonexistent/libcuda.so.1")], &["--probe"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn a_library_without_the_driver_api_is_exit_2_naming_the_symbol() {
    // libc loads but is not libcuda: the first function is missing.
    let (code, err) = load(&[("GPU_LOAD_LIBCUDA", "libc.so.6")], &["--probe"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("libc.so.6 lacks cuInit"), "{err}");
}

#[test]
fn on_this_driverless_machine_the_default_libraries_are_missing() {
    // The project's machines have no NVIDIA driver; on one that has it, this test says so
    // instead of passing for the wrong reason.
    let (code, err) = load(&[], &["--probe"]);
    if code == Some(0) {
        panic!("libcuda.so.1 and libnvidia-ml.so.1 load here: this machine has the NVIDIA driver");
    }
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("libcuda.so.1 cannot be loaded"), "{err}");
}

#[test]
fn a_bad_duration_is_refused_before_anything_loads() {
    let (code, err) = load(&[], &["--seconds=-3"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--seconds -3 must be a positive number"), "{err}");
}
