//! `carbon-agent serve` scraped by a real Prometheus server (Debian's `prometheus`, installed
//! by `cargo xtask setup`), both started here on loopback and stopped by guards even when a
//! check fails. Root only, never skipped.
//!
//! Loads run in cgroups named like a systemd service and a docker container, so that the
//! unit and container families and the dashboard's panels have real series.

use std::{
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use carbon_agent_tests::{agent_bin, require_root};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_workload");
/// Generous: start-up loads and verifies the eBPF programs on a loaded 2-core VM.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const CONTAINER_ID: &str = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d";

/// A child process killed (and reaped) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// cgroup v2 directories removed when dropped (after their processes are gone).
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let dir = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    });
    dir.expect("a cgroup v2 hierarchy (this test puts its loads in named cgroups)")
}

fn get(url: &str) -> Result<(String, String), String> {
    let mut resp = ureq::get(url).call().map_err(|e| e.to_string())?;
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((ct, body))
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running agent and a Prometheus scraping it every second.
struct Stack {
    dir: PathBuf,
    config: PathBuf,
    agent: Guard,
    _prometheus: Guard,
    agent_addr: String,
    prom: String,
}

impl Stack {
    fn start(name: &str) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(format!("carbon-agent-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, "[carbon]\ncountry = \"DEU\"\n[serve]\ntop_trees = 5\n").unwrap();
        let agent_addr = format!("127.0.0.1:{}", free_port());
        let stderr = std::fs::File::create(dir.join("agent.log")).unwrap();
        let agent = Guard(
            Command::new(agent_bin())
                .args(["serve", "--listen", &agent_addr, "--interval", "0.5s", "--config"])
                .arg(&config)
                .arg("--state-dir")
                .arg(dir.join("state"))
                .env_remove("ELECTRICITYMAPS_TOKEN")
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        );
        let mut stack = Stack {
            dir,
            config,
            agent,
            _prometheus: Guard(Command::new("true").spawn().unwrap()),
            agent_addr,
            prom: String::new(),
        };
        let url = format!("http://{}/metrics", stack.agent_addr);
        let (ct, body) = wait_for("the agent's first snapshot", READY_TIMEOUT, || {
            if let Ok(Some(status)) = stack.agent.0.try_wait() {
                panic!("the agent exited with {status}: {}", stack.log());
            }
            get(&url).ok()
        });
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(body.ends_with("# EOF\n"));
        assert!(stack.log().contains("ready: probes attached"), "{}", stack.log());

        let prom_port = free_port();
        let prom_config = stack.dir.join("prometheus.yml");
        std::fs::write(
            &prom_config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: carbon-agent\n    static_configs:\n      - targets: ['{}']\n",
                stack.agent_addr
            ),
        )
        .unwrap();
        stack.prom = format!("127.0.0.1:{prom_port}");
        stack._prometheus = Guard(
            Command::new("prometheus")
                .arg(format!("--config.file={}", prom_config.display()))
                .arg(format!("--storage.tsdb.path={}", stack.dir.join("tsdb").display()))
                .arg(format!("--web.listen-address={}", stack.prom))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(stack.dir.join("prometheus.log")).unwrap())
                .spawn()
                .expect("prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)"),
        );
        let ready = format!("http://{}/-/ready", stack.prom);
        wait_for("Prometheus to be ready", READY_TIMEOUT, || get(&ready).ok());
        stack
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// An instant query at `time` (unix seconds; now when `None`): `(labels, value)` per series.
    fn query(&self, q: &str, time: Option<f64>) -> Vec<(Value, f64)> {
        let mut req = ureq::get(format!("http://{}/api/v1/query", self.prom)).query("query", q);
        if let Some(t) = time {
            req = req.query("time", format!("{t:.3}"));
        }
        let body = req.call().unwrap_or_else(|e| panic!("{q}: {e}")).body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    fn scalar(&self, q: &str, time: Option<f64>) -> f64 {
        let r = self.query(q, time);
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        r[0].1
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(self.agent.0.id() as i32, sig) }, 0);
    }
}

/// Runs `cmd` with `args` in a new cgroup `dir` (created here) so that it is there from its
/// first instruction on.
fn in_cgroup(dir: &Path, cmd: &str, args: &[&str]) -> Guard {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!("echo $$ > '{}/cgroup.procs' && exec \"$0\" \"$@\"", dir.display());
    Guard(Command::new("sh").arg("-c").arg(script).arg(cmd).args(args).spawn().unwrap())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Loads that give every family series: a service, a container (each burning CPU until the
/// test ends), a re-read file.
fn loads(stack: &Stack) -> (Cgroups, Vec<Guard>) {
    let slice = cgroup2_root().join(format!("carbon-agent-test-{}.slice", std::process::id()));
    let service = slice.join("burn.service");
    let container = slice.join(format!("docker-{CONTAINER_ID}.scope"));
    let cgroups = Cgroups(vec![slice.clone(), service.clone(), container.clone()]);
    let data = stack.dir.join("data.bin");
    std::fs::write(&data, vec![7u8; 32 << 20]).unwrap();
    let reread = format!("for i in 1 2 3 4 5; do cat '{}' > /dev/null; done; exec sleep 60", data.display());
    let children = vec![
        in_cgroup(&service, WORKLOAD, &["burn", "60000"]),
        in_cgroup(&container, WORKLOAD, &["burn", "60000"]),
        Guard(Command::new("sh").args(["-c", &reread]).spawn().unwrap()),
    ];
    (cgroups, children)
}

#[test]
fn prometheus_scrapes_counters_that_add_up_and_survive_a_reload() {
    let mut stack = Stack::start("scrape");
    let (_cgroups, _children) = loads(&stack);
    wait_for("the target to be up with a few samples", READY_TIMEOUT, || {
        let n = stack.query("count_over_time(carbon_agent_interval_seconds[1m])", None);
        (n.first().is_some_and(|(_, v)| *v >= 6.0)).then_some(())
    });
    assert_eq!(stack.scalar("up{job=\"carbon-agent\"}", None), 1.0);
    // Under the load: the node's energy and root's share of it grow.
    assert!(stack.scalar("sum(rate(carbon_agent_node_energy_joules_total[5s]))", None) > 0.0);
    assert!(stack.scalar("sum(rate(carbon_agent_user_energy_joules_total{user=\"root\"}[5s]))", None) > 0.0);
    let cpu = stack.scalar("sum(rate(carbon_agent_unit_cpu_seconds_total{unit=\"burn.service\"}[5s]))", None);
    assert!(cpu > 0.3, "burn.service used {cpu} CPUs");
    let container = stack
        .query(&format!("carbon_agent_container_cpu_seconds_total{{container_id=\"{CONTAINER_ID}\"}}"), None);
    assert_eq!(container.len(), 1, "{container:?}");
    assert_eq!(container[0].0["runtime"], "docker");

    // Conservation at two instants and over the window between them: users + buckets = node.
    let attributed =
        "sum(carbon_agent_user_energy_joules_total) + sum(carbon_agent_bucket_energy_joules_total)";
    let node = "sum(carbon_agent_node_energy_joules_total)";
    let t2 = unix_now();
    let t1 = t2 - 3.0;
    let (a1, n1) = (stack.scalar(attributed, Some(t1)), stack.scalar(node, Some(t1)));
    let (a2, n2) = (stack.scalar(attributed, Some(t2)), stack.scalar(node, Some(t2)));
    eprintln!("users + buckets vs node: {a1} vs {n1} J at t1, {a2} vs {n2} J at t2");
    assert!(close(a1, n1, 1e-6) && close(a2, n2, 1e-6), "{a1} vs {n1}, {a2} vs {n2}");
    assert!(n2 > n1);
    assert!(close(a2 - a1, n2 - n1, 1e-6), "window: {} vs {}", a2 - a1, n2 - n1);
    // The trees' series and `other` add up to the users' too.
    let trees = stack.scalar("sum(carbon_agent_tree_energy_joules_total)", Some(t2));
    let users = stack.scalar("sum(carbon_agent_user_energy_joules_total)", Some(t2));
    assert!(trees <= users * (1.0 + 1e-9), "trees {trees} vs users {users}");
    let tree_series = stack.query("carbon_agent_tree_energy_joules_total", None);
    assert!(tree_series.len() <= 6, "top 5 and other: {tree_series:?}");

    // SIGHUP with a new PUE: applied; a new map size: named as needing a restart; an interval
    // in the file: the flag still wins. Then a bad file: kept, and the log says why.
    assert!(stack.scalar("carbon_agent_pue", None) != 1.2);
    std::fs::write(
        &stack.config,
        "[carbon]\ncountry = \"DEU\"\npue = 1.2\n[serve]\ntop_trees = 5\n\
         [agent]\nmax_processes = 4096\ninterval = \"2s\"\n",
    )
    .unwrap();
    stack.signal(libc::SIGHUP);
    wait_for("the new PUE", READY_TIMEOUT, || (stack.scalar("carbon_agent_pue", None) == 1.2).then_some(()));
    wait_for("the reload in the log", READY_TIMEOUT, || {
        stack.log().contains("applied carbon.pue").then_some(())
    });
    let log = stack.log();
    assert!(log.contains("SIGHUP: agent.max_processes changed since the start: restart"), "{log}");
    assert!(!log.contains("agent.interval"), "the --interval flag wins over the file: {log}");
    std::fs::write(&stack.config, "[carbon]\npue = 0.5\n").unwrap();
    stack.signal(libc::SIGHUP);
    wait_for("the reload error in the log", READY_TIMEOUT, || {
        stack.log().contains("config not reloaded, keeping the previous settings").then_some(())
    });
    assert!(stack.log().contains("carbon.pue = 0.5"), "{}", stack.log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stack.scalar("carbon_agent_pue", None), 1.2);
    assert!(stack.agent.0.try_wait().unwrap().is_none(), "the agent stopped: {}", stack.log());
    // No counter went down across the reloads (each family by name: resets() drops names).
    let (_, names) = get(&format!("http://{}/api/v1/label/__name__/values", stack.prom)).unwrap();
    let names: Value = serde_json::from_str(&names).unwrap();
    let counters: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|n| n.starts_with("carbon_agent_") && n.ends_with("_total"))
        .collect();
    assert!(counters.len() >= 15, "{counters:?}");
    for name in counters {
        let resets = stack.query(&format!("resets({name}[2m]) > 0"), None);
        assert!(resets.is_empty(), "{name} decreased: {resets:?}");
    }

    // SIGTERM: a clean stop.
    stack.signal(libc::SIGTERM);
    let status = wait_for("the agent to stop", Duration::from_secs(30), || stack.agent.0.try_wait().unwrap());
    assert!(status.success(), "{status}: {}", stack.log());
    assert!(stack.log().contains("stopped"));
    let _ = std::fs::remove_dir_all(&stack.dir);
}

#[test]
fn every_dashboard_panel_has_data() {
    let stack = Stack::start("dashboard");
    let (_cgroups, _children) = loads(&stack);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/carbon-agent.json");
    let mut text = String::new();
    std::fs::File::open(&path).unwrap().read_to_string(&mut text).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    // Rates over [1m] need two samples in the window; findings are re-derived every 5 intervals.
    let start = Instant::now();
    let empty = loop {
        let empty: Vec<&(String, String)> =
            exprs.iter().filter(|(_, e)| stack.query(e, None).is_empty()).collect();
        if empty.is_empty() || start.elapsed() > READY_TIMEOUT {
            break empty;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(empty.is_empty(), "panels without data: {empty:?}\nagent log: {}", stack.log());
    let _ = std::fs::remove_dir_all(&stack.dir);
}
