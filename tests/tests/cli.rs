//! End-to-end tests of the `carbon-agent` binary: `run --json`/`--csv` documents, JSON Lines,
//! energy attribution on real processes, wasted-I/O findings. Root only, never skipped.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use carbon_agent_tests::{agent_bin, require_root};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_workload");

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("carbon-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Runs `carbon-agent run --json FILE ARGS -- CMD` and returns (exit code, document, stderr).
fn run(args: &[&str], cmd: &[&str]) -> (i32, Value, String) {
    // One file per call: tests run in parallel, and two commands can share a long prefix.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let json = tmp(&format!("run-{}.json", CALLS.fetch_add(1, Ordering::Relaxed)));
    let out = Command::new(agent_bin())
        .arg("run")
        .arg("--json")
        .arg(&json)
        .args(args)
        .arg("--")
        .args(cmd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc =
        serde_json::from_slice(&std::fs::read(&json).unwrap_or_else(|e| panic!("{e}: {stderr}"))).unwrap();
    (out.status.code().unwrap(), doc, stderr)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn run_document_has_the_schema_and_the_exit_code() {
    require_root();
    let csv = tmp("emissions.csv");
    let script = format!("{WORKLOAD} burn 1500; {WORKLOAD} fork-storm 20 5 >/dev/null; exit 3");
    let (code, doc, stderr) =
        run(&["--csv", csv.to_str().unwrap(), "--country", "FRA", "--pue", "1.5"], &["sh", "-c", &script]);
    assert_eq!(code, 3, "the command's exit code: {stderr}");
    assert_eq!(doc["exit_code"], 3);
    assert_eq!(doc["command"][0], "sh");
    assert!(doc["duration_s"].as_f64().unwrap() >= 1.5);
    let tree = &doc["tree"];
    let root = tree["root_pid"].as_u64().unwrap();
    assert!(tree["processes"].as_u64().unwrap() >= 23, "sh, burn, fork-storm and its 20 children");
    let cpu = tree["cpu_time_s"].as_f64().unwrap();
    assert!((1.5..3.0).contains(&cpu), "tree CPU time {cpu}");
    let children = tree["children"].as_array().unwrap();
    assert_eq!(children[0]["pid"].as_u64().unwrap(), root);
    for c in children {
        for key in ["pid", "ppid", "comm", "cpu_time_s", "energy_j", "emissions_g", "io"] {
            assert!(!c[key].is_null(), "child row without {key}: {c}");
        }
    }
    let burn =
        children.iter().find(|c| c["comm"] == "workload" && c["cpu_time_s"].as_f64().unwrap() > 1.4).unwrap();
    assert!(close(burn["cpu_time_s"].as_f64().unwrap(), 1.5, 0.03), "{burn}");

    // Energy: the tree's, by domain, with the meter named; facility = IT x PUE.
    let e = &doc["energy_j"];
    let total = e["total"].as_f64().unwrap();
    assert!(total > 0.0);
    assert!(close(
        total,
        e["cpu"].as_f64().unwrap()
            + e["dram"].as_f64().unwrap()
            + e["gpu"].as_f64().unwrap()
            + e["platform"].as_f64().unwrap(),
        1e-9
    ));
    assert!(close(total, e["dynamic"].as_f64().unwrap() + e["static"].as_f64().unwrap(), 1e-9));
    assert!(close(e["facility"].as_f64().unwrap(), total * 1.5, 1e-9));
    assert_eq!(doc["meter"]["source"], "model", "this machine kind has no RAPL: the model estimates");
    assert_eq!(doc["meter"]["estimated"], true);
    assert!(close(tree["energy_j"]["total"].as_f64().unwrap(), total, 1e-12));
    let child_sum: f64 = children.iter().map(|c| c["energy_j"]["total"].as_f64().unwrap()).sum();
    assert!(close(child_sum, total, 1e-9), "children {child_sum} vs tree {total}");

    // Carbon: France's table figure, the PUE given, arithmetic that holds.
    let c = &doc["carbon"];
    assert_eq!(c["location"], "FRA");
    assert_eq!(c["unit"], "gCO2e/kWh");
    assert_eq!(c["pue"], 1.5);
    assert_eq!(c["pue_source"], "--pue");
    assert!(c["source"].as_str().unwrap().contains("Our World in Data"), "{c}");
    let intensity = c["intensity"].as_f64().unwrap();
    assert!(close(intensity, 56.039, 1e-3), "{intensity}");
    let em = &doc["emissions_g"];
    let op = em["operational"].as_f64().unwrap();
    assert!(close(op, total * 1.5 / 3.6e6 * intensity, 1e-6), "operational {op}");
    assert!(em["embodied"].as_f64().unwrap() > 0.0);
    assert!(close(em["total"].as_f64().unwrap(), op + em["embodied"].as_f64().unwrap(), 1e-9));
    assert!(!doc["alternatives"].as_array().unwrap().is_empty());

    // The CodeCarbon CSV: header in CodeCarbon's order, one row, CodeCarbon's units.
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(
        header[..6],
        ["timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions"]
    );
    assert_eq!(header.len(), 38, "CodeCarbon's 38 columns");
    let row: Vec<&str> = lines[1].split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert!(close(col("emissions").parse::<f64>().unwrap(), op / 1000.0, 1e-6));
    assert!(close(col("energy_consumed").parse::<f64>().unwrap(), total * 1.5 / 3.6e6, 1e-6));
    assert_eq!(col("country_iso_code"), "FRA");
    assert_eq!(col("pue"), "1.5");
    assert_eq!(col("tracking_mode"), "process");
    assert_eq!(col("python_version"), "");
    assert_eq!(col("codecarbon_version"), "");

    // The disclosure statement from that document.
    let json = tmp("for-report.json");
    std::fs::write(&json, serde_json::to_vec(&doc).unwrap()).unwrap();
    for (format, marker) in [("markdown", "gCO2e"), ("latex", "CO")] {
        let out = Command::new(agent_bin())
            .args(["report", json.to_str().unwrap(), "--format", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(marker) && text.contains("1.5") && text.to_lowercase().contains("estimated"),
            "{text}"
        );
    }

    // A second run appends a row, not a header.
    let (code, _, _) = run(&["--csv", csv.to_str().unwrap(), "--country", "FRA"], &[WORKLOAD, "exit", "0"]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3);
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    require_root();
    let out = Command::new(agent_bin()).args(["run", "--country", "ZZZ", "--", "true"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("unknown country"), "{err}");
    let out = Command::new(agent_bin()).args(["--interval", "fast"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let bad = tmp("bad.toml");
    std::fs::write(&bad, "[carbon]\npue = 0.5\n").unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config", bad.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pue"), "{err}");
    let out = Command::new(agent_bin()).args(["run", "--", "/nonexistent/cmd"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run `/nonexistent/cmd`"));
}

#[test]
fn world_average_is_said_loudly() {
    require_root();
    let (_, doc, stderr) = run(&[], &[WORKLOAD, "exit", "0"]);
    assert_eq!(doc["carbon"]["world_average"], true);
    assert!(stderr.contains("WORLD AVERAGE"), "{stderr}");
}

#[test]
fn one_thread_against_three_gets_a_quarter_of_the_dynamic_energy() {
    require_root();
    // Four spinning threads pinned to one CPU: the scheduler gives each a quarter.
    let script = format!("{WORKLOAD} spin 5 1 0 & {WORKLOAD} spin 5 3 0 & wait");
    let (code, doc, stderr) = run(&["--static-share", "proportional"], &["sh", "-c", &script]);
    assert_eq!(code, 0, "{stderr}");
    let kids: Vec<&Value> =
        doc["tree"]["children"].as_array().unwrap().iter().filter(|c| c["comm"] == "workload").collect();
    assert_eq!(kids.len(), 2, "tree: {:#}", doc["tree"]);
    let (mut a, mut b) = (kids[0], kids[1]);
    if a["cpu_time_s"].as_f64() > b["cpu_time_s"].as_f64() {
        std::mem::swap(&mut a, &mut b);
    }
    let cpu_ratio = a["cpu_time_s"].as_f64().unwrap() / b["cpu_time_s"].as_f64().unwrap();
    let dyn_ratio = a["energy_j"]["dynamic"].as_f64().unwrap() / b["energy_j"]["dynamic"].as_f64().unwrap();
    eprintln!("cpu ratio {cpu_ratio:.4}, dynamic energy ratio {dyn_ratio:.4}");
    assert!(
        (dyn_ratio - 1.0 / 3.0).abs() <= 0.03 / 3.0,
        "dynamic energy ratio {dyn_ratio}, expected 1/3 within 3%"
    );
}

#[test]
fn json_lines_add_up_to_the_meter() {
    require_root();
    let out =
        Command::new(agent_bin()).args(["--json", "--duration", "3", "--country", "DEU"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 2);
    for l in &lines {
        for key in ["timestamp", "interval_s", "processes", "buckets", "meter", "carbon"] {
            assert!(!l[key].is_null(), "line without {key}");
        }
        let rows: f64 =
            l["processes"].as_array().unwrap().iter().map(|p| p["energy_j"]["total"].as_f64().unwrap()).sum();
        let sum = rows
            + l["buckets"]["kernel"]["energy_j"]["total"].as_f64().unwrap()
            + l["buckets"]["idle"]["energy_j"]["total"].as_f64().unwrap();
        let metered = l["meter"]["energy_j"]["total"].as_f64().unwrap();
        assert!(close(sum, metered, 1e-9), "rows + buckets {sum} vs meter {metered}");
        for by in ["users", "cgroups", "units"] {
            let groups: f64 =
                l["rollups"][by].as_array().unwrap().iter().map(|g| g["energy_j"].as_f64().unwrap()).sum();
            assert!(close(groups, rows, 1e-9), "{by} roll-up {groups} vs rows {rows}");
        }
        assert_eq!(l["meter"]["estimated"], true);
        for p in l["processes"].as_array().unwrap() {
            for key in ["pid", "ppid", "uid", "comm", "cpu_time_s", "energy_j", "emissions_g", "io"] {
                assert!(!p[key].is_null(), "row without {key}: {p}");
            }
        }
    }
}

#[test]
fn rereading_a_file_is_a_finding_in_the_run_document() {
    require_root();
    let file = tmp("data.bin");
    std::fs::write(&file, vec![7u8; 64 << 20]).unwrap();
    let f = file.to_str().unwrap();
    let (code, doc, stderr) =
        run(&[], &["sh", "-c", &format!("for i in 1 2 3 4 5; do cat {f} > /dev/null; done")]);
    assert_eq!(code, 0, "{stderr}");
    let findings = doc["findings"].as_array().unwrap();
    let reread: Vec<&Value> = findings.iter().filter(|x| x["kind"] == "reread").collect();
    assert_eq!(reread.len(), 1, "{findings:?}");
    let bytes = reread[0]["bytes"].as_f64().unwrap();
    assert!(close(bytes, (256u64 << 20) as f64, 0.02), "redundant bytes {bytes}");
    assert_eq!(reread[0]["paths"][0], f);
    assert!(doc["io"]["read_bytes"].as_u64().unwrap() >= 5 * (64 << 20));
    assert!(stderr.contains("wasted I/O"));
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn a_full_map_is_counted_and_reported() {
    require_root();
    // 2000 processes in one 10 s interval, in a map sized for 1024: some inserts must fail.
    let (code, doc, stderr) =
        run(&["--max-processes", "1024", "--interval", "10s"], &[WORKLOAD, "fork-storm", "2000", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let losses = &doc["losses"];
    assert!(losses["cpu_map_full"].as_u64().unwrap() > 0, "{losses}");
    assert!(losses["lost_cpu_ns"].as_u64().unwrap() > 0, "{losses}");
    assert!(stderr.contains("LOSSES"), "{stderr}");
}

#[test]
fn started_through_sudo_the_command_runs_as_the_invoking_user() {
    require_root();
    let out = Command::new(agent_bin())
        .args(["run", "--", "id", "-u"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
}

#[test]
fn without_privileges_it_says_which_are_missing() {
    require_root();
    // Root with every capability dropped (util-linux's setpriv, part of every Debian system).
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--ambient-caps=-all"])
        .arg(agent_bin())
        .args(["--json", "--duration", "1"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("root"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn network_bytes_are_counted_per_process() {
    require_root();
    let bytes = 8u64 << 20;
    let (code, doc, stderr) = run(&[], &[WORKLOAD, "net", &bytes.to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let io = &doc["io"];
    let (tx, rx) = (io["net_tx_bytes"].as_u64().unwrap(), io["net_rx_bytes"].as_u64().unwrap());
    // The socket layer's own counts (sock_send_length / sock_recv_length), loopback both ways.
    assert!(close(tx as f64, bytes as f64, 0.01), "net_tx_bytes {tx} for {bytes} sent");
    assert!(close(rx as f64, bytes as f64, 0.01), "net_rx_bytes {rx} for {bytes} received");
}

/// The JSON Schema `docs/schema/NAME.schema.json`, compiled.
fn schema(name: &str) -> jsonschema::Validator {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/schema/{name}.schema.json"));
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn violations(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn documents_match_their_schemas() {
    require_root();
    let lines_schema = schema("interval-line");
    let out =
        Command::new(agent_bin()).args(["--json", "--duration", "2", "--country", "FRA"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let bad = violations(&lines_schema, l);
        assert!(bad.is_empty(), "interval line against its schema: {bad:?}");
    }
    let file = tmp("schema-data.bin");
    std::fs::write(&file, vec![1u8; 16 << 20]).unwrap();
    let f = file.to_str().unwrap();
    let (code, doc, stderr) =
        run(&["--country", "FRA"], &["sh", "-c", &format!("for i in 1 2 3 4; do cat {f} > /dev/null; done")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!doc["findings"].as_array().unwrap().is_empty(), "a finding, so that its schema is checked");
    let run_schema = schema("run-document");
    let bad = violations(&run_schema, &doc);
    assert!(bad.is_empty(), "run document against its schema: {bad:?}");
    // The schemas fail a document with a renamed field, and put the meter in the same place.
    let mut renamed = doc.clone();
    renamed["metre"] = renamed["meter"].take();
    renamed.as_object_mut().unwrap().remove("meter");
    assert!(!violations(&run_schema, &renamed).is_empty());
    assert_eq!(doc["meter"]["source"], lines[0]["meter"]["source"]);
    std::fs::remove_file(&file).unwrap();
}

/// The last 2000 characters of `s`.
fn last_chars(s: &str) -> String {
    let n = s.chars().count();
    s.chars().skip(n.saturating_sub(2000)).collect()
}

/// Runs the live view on a pseudo-terminal of 40×150, sends `key` once the first frame with
/// the trees' table is drawn, and returns (exit code, everything written to the terminal, whether the
/// terminal was in raw mode while the view ran, whether canonical mode and echo were back
/// after it exited).
fn live_view_in_a_pty(key: &[u8]) -> (Option<i32>, String, bool, bool) {
    use std::{
        io::{Read, Write},
        os::{fd::FromRawFd, unix::process::CommandExt},
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize { ws_row: 40, ws_col: 150, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two fds; the name and termios pointers may be null.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned here only.
    let (master, slave) =
        unsafe { (std::fs::File::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave)) };
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--interval", "0.5s"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe; the pty becomes the controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the slave's last copies in this process: reads end when the child exits
    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (mut master, output) = (master.try_clone().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    let lflag = || {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(&master), &mut t) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t.c_lflag
    };
    let started = Instant::now();
    // ratatui moves the cursor between words: the column header is one run of text.
    while !text().contains("TREE / COMMAND") {
        assert!(started.elapsed() < Duration::from_secs(60), "no frame drawn: {}", last_chars(&text()));
        assert!(child.try_wait().unwrap().is_none(), "the view exited early: {}", last_chars(&text()));
        std::thread::sleep(Duration::from_millis(100));
    }
    // One more interval drawn, so that the tree rows are there too.
    std::thread::sleep(Duration::from_millis(700));
    let raw = lflag() & (libc::ICANON | libc::ECHO) == 0;
    (&master).write_all(key).unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let restored = lflag() & (libc::ICANON | libc::ECHO) == (libc::ICANON | libc::ECHO);
    reader.join().unwrap();
    (code, text(), raw, restored)
}

#[test]
fn the_live_view_quits_on_q_esc_and_ctrl_c_and_restores_the_terminal() {
    require_root();
    for (name, key) in [("q", &b"q"[..]), ("Esc", b"\x1b"), ("Ctrl-C", b"\x03")] {
        let (code, out, raw, restored) = live_view_in_a_pty(key);
        assert_eq!(code, Some(0), "{name}: {}", last_chars(&out));
        assert!(raw, "{name}: the view ran without raw mode");
        assert!(restored, "{name}: canonical mode and echo not restored");
        // The alternate screen was entered, then left, and the cursor shown again, last.
        let (enter, leave) = (out.find("\x1b[?1049h"), out.rfind("\x1b[?1049l"));
        assert!(enter.is_some() && leave > enter, "{name}: alternate screen not left: {out:?}");
        assert!(out[leave.unwrap()..].contains("\x1b[?25h"), "{name}: cursor not shown again");
        // The frames are the snapshots': the header and a member row under a tree.
        assert!(out.contains("interval 0.50s") && out.contains("gCO2e/kWh"), "{name}");
        assert!(out.contains("└"), "{name}: no member row");
    }
}
