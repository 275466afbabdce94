//! The check's pass/fail arithmetic on a recorded evidence folder, and on copies of it with
//! one thing broken each: every criterion must catch its own fault.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpu_load::check::evaluate;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evidence-pass")
}

/// A copy of the fixture to break.
fn copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for rel in ["", "single", "pair"] {
        std::fs::create_dir_all(tmp.path().join(rel)).unwrap();
        for e in std::fs::read_dir(fixture().join(rel)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), tmp.path().join(rel).join(e.file_name())).unwrap();
            }
        }
    }
    tmp
}

fn edit_json(dir: &Path, rel: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(rel);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn failed(dir: &Path) -> Vec<String> {
    evaluate(dir, 0).unwrap().criteria.into_iter().filter(|c| !c.pass).map(|c| c.name).collect()
}

#[test]
fn the_recorded_evidence_passes_every_criterion() {
    let v = evaluate(&fixture(), 0).unwrap();
    assert!(v.pass, "{}", v.text());
    let names: Vec<&str> = v.criteria.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "single-source",
            "pair-source",
            "single-energy",
            "sm-basis",
            "single-pids",
            "pair-pids",
            "pair-split",
            "pair-energy",
            "single-conserved",
            "pair-conserved",
            "power-trace"
        ]
    );
    let text = v.text();
    assert!(text.contains("tree 8900.0 J; load's counter 9000.0 J (98.9 %"), "{text}");
    assert!(text.contains("sm-utilization in 61 of 63 intervals"), "{text}");
    assert!(text.contains("load a 4750.0 J, load b 4760.0 J: 49.9 % / 50.1 %"), "{text}");
}

#[test]
fn each_broken_input_fails_its_criterion() {
    type Break = fn(&Path);
    let cases: [(&str, Break, &[&str]); 9] = [
        (
            "a read warning",
            |d| {
                edit_json(
                    d,
                    "pair/run.json",
                    |v| v["gpu"]["warnings"] = serde_json::json!([{"message": "GPU 0: energy read failed", "intervals": 1, "first_interval": 3}]),
                )
            },
            &["pair-source"],
        ),
        (
            "no NVML",
            |d| edit_json(d, "single/run.json", |v| v["meter"]["source"] = "model".into()),
            &["single-source"],
        ),
        (
            "tree under 95 % of the load's counter",
            |d| {
                edit_json(d, "single/run.json", |v| {
                    v["tree"]["energy_j"]["gpu"] = 8500.0.into();
                })
            },
            &["single-energy"],
        ),
        (
            "tree above the bracketing delta",
            |d| std::fs::write(d.join("single/counter-after.txt"), "1008800\n").unwrap(),
            &["single-energy"],
        ),
        (
            "memory basis too often",
            |d| {
                edit_json(d, "single/run.json", |v| {
                    v["gpu"]["gpus"]["gpu0"]["basis"] =
                        serde_json::json!({"sm-utilization": 10, "memory": 21})
                });
                edit_json(d, "pair/run.json", |v| {
                    v["gpu"]["gpus"]["gpu0"]["basis"] =
                        serde_json::json!({"sm-utilization": 10, "memory": 22})
                });
            },
            &["sm-basis"],
        ),
        (
            "a compute app outside the tree",
            |d| std::fs::write(d.join("single/compute-apps.txt"), "5000\n777\n").unwrap(),
            &["single-pids"],
        ),
        (
            "a 70/30 split",
            |d| {
                edit_json(d, "pair/run.json", |v| {
                    v["tree"]["children"][1]["energy_j"]["gpu"] = 6657.0.into();
                    v["tree"]["children"][2]["energy_j"]["gpu"] = 2853.0.into();
                })
            },
            &["pair-split"],
        ),
        (
            "GPU energy not conserved",
            |d| edit_json(d, "pair/run.json", |v| v["gpu"]["to_buckets_j"] = 40.0.into()),
            &["pair-conserved"],
        ),
        (
            "a power trace 20 % low",
            |d| {
                let t = std::fs::read_to_string(d.join("power-trace.csv")).unwrap();
                std::fs::write(
                    d.join("power-trace.csv"),
                    t.replace(", 304.00", ", 240.00").replace(", 296.00", ", 240.00"),
                )
                .unwrap();
            },
            &["power-trace"],
        ),
    ];
    for (what, brk, expect) in cases {
        let tmp = copy();
        brk(tmp.path());
        assert_eq!(failed(tmp.path()), expect, "{what}");
    }
}

#[test]
fn missing_or_foreign_evidence_cannot_be_judged() {
    let tmp = copy();
    std::fs::remove_file(tmp.path().join("pair/load-b.out")).unwrap();
    assert!(evaluate(tmp.path(), 0).unwrap_err().contains("pair/load-b.out"));
    // Loads on another GPU than the one checked.
    assert!(evaluate(&fixture(), 1).unwrap_err().contains("ran on NVML GPU 0, not 1"));
}

#[test]
fn the_evaluator_writes_its_verdict_into_the_evidence_folder() {
    let tmp = copy();
    let bin = env!("CARGO_BIN_EXE_gpu-check-eval");
    let out = Command::new(bin).args(["evaluate", tmp.path().to_str().unwrap(), "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("gpu-check: PASS (GPU 0)\n"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("verdict.json")).unwrap()).unwrap();
    assert_eq!(v["pass"], true);
    assert_eq!(v["criteria"].as_array().unwrap().len(), 11);
    assert!(std::fs::read_to_string(tmp.path().join("verdict.txt")).unwrap().contains("PASS power-trace"));
    // A failing criterion: exit 1; missing evidence: exit 2.
    std::fs::write(tmp.path().join("single/compute-apps.txt"), "").unwrap();
    let out = Command::new(bin).args(["evaluate", tmp.path().to_str().unwrap(), "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_file(tmp.path().join("power-trace.csv")).unwrap();
    let out = Command::new(bin).args(["evaluate", tmp.path().to_str().unwrap(), "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power-trace.csv"));
}
