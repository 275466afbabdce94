//! `gpu-check-eval`: the judging half of `scripts/gpu-check.sh`, prebuilt and carried to the
//! GPU machine (which has no Rust and maybe no Python).
//!
//! * `gpu-check-eval preflight-doctor DOCTOR_JSON`: exit 0 when `carbon-agent doctor --json`
//!   says privileges, the scheduler hook and NVML are fine; else exit 2 with the reason.
//! * `gpu-check-eval evaluate EVIDENCE_DIR GPU_INDEX`: writes `verdict.json` and `verdict.txt`
//!   there and prints the verdict; exit 0 pass, 1 fail, 2 evidence missing.

use std::path::Path;
use std::process::ExitCode;

use gpu_load::check;

fn usage() -> ExitCode {
    eprintln!("usage: gpu-check-eval preflight-doctor DOCTOR_JSON | evaluate EVIDENCE_DIR GPU_INDEX");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["preflight-doctor", path] => {
            let doc = std::fs::read_to_string(path)
                .map_err(|e| format!("{path}: {e}"))
                .and_then(|s| serde_json::from_str(&s).map_err(|e| format!("{path}: {e}")));
            match doc.and_then(|d| check::preflight_doctor(&d)) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gpu-check: {e}");
                    ExitCode::from(2)
                }
            }
        }
        ["evaluate", dir, gpu] => {
            let Ok(gpu) = gpu.parse::<u32>() else { return usage() };
            let dir = Path::new(dir);
            match check::evaluate(dir, gpu) {
                Ok(v) => {
                    let text = v.text();
                    let json = serde_json::to_string_pretty(&v).expect("verdict serializes");
                    for (name, body) in [("verdict.json", json + "\n"), ("verdict.txt", text.clone())] {
                        if let Err(e) = std::fs::write(dir.join(name), body) {
                            eprintln!("gpu-check: cannot write {}: {e}", dir.join(name).display());
                            return ExitCode::from(2);
                        }
                    }
                    print!("{text}");
                    if v.pass { ExitCode::SUCCESS } else { ExitCode::from(1) }
                }
                Err(e) => {
                    eprintln!("gpu-check: cannot judge: {e}");
                    ExitCode::from(2)
                }
            }
        }
        _ => usage(),
    }
}
