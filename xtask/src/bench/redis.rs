//! The `redis` section: a real server, as an ops team runs one. Debian's `redis-server` on
//! loopback (started by the bench, stopped when the section is dropped), loaded by
//! `redis-benchmark -t get -c 4`; the figure is the server's own CPU time per run (all its
//! threads, from `/proc/<pid>/task/*/schedstat`), with the agent vs without.

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{DEFAULT_AGENT, NO_IO, SYSCALL_TIER, Section, Targets, Variant, load::LoadTimes};

/// The section; the server is started on the first run.
#[derive(Default)]
pub struct RedisGet {
    server: Mutex<Option<Server>>,
}

/// A `redis-server` child on 127.0.0.1; killed and reaped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback (bound then released).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    fn start() -> Result<Server> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (installed by `cargo xtask setup`)")?;
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("redis-server exited ({status}) before listening on 127.0.0.1:{port}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on 127.0.0.1:{port} within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The keys the GETs read.
        let status = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set", "-n", "10000", "-q"])
            .stdout(Stdio::null())
            .status()
            .context("running redis-benchmark (installed by `cargo xtask setup`)")?;
        if !status.success() {
            bail!("redis-benchmark -t set failed: {status}");
        }
        Ok(server)
    }

    /// The server's CPU time so far: every thread's `sum_exec_runtime`.
    fn cpu(&self) -> Result<Duration> {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut ns = 0u64;
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path().join("schedstat");
            if let Ok(text) = std::fs::read_to_string(&path) {
                ns += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        Ok(Duration::from_nanos(ns))
    }
}

impl Section for RedisGet {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn event(&self) -> &'static str {
        "socket message"
    }

    fn programs(&self) -> &'static [&'static str] {
        &["io_sock_send", "io_sock_recv", "sched_switch_btf", "io_sys_exit", "io_sys_enter"]
    }

    fn targets(&self) -> Targets {
        Targets { max_ns_per_event: None, max_slowdown: 0.02, floor_rule: None }
    }

    /// The default agent; without I/O (the floor: CPU accounting alone); the syscall tier.
    fn variants(&self) -> Vec<Variant> {
        vec![DEFAULT_AGENT, NO_IO, SYSCALL_TIER]
    }

    fn describe_load(&self, rounds: u64) -> String {
        format!(
            "redis-server on 127.0.0.1, redis-benchmark -t get -c 4 -n {}: the server's CPU time per run",
            requests(rounds)
        )
    }

    fn run_load(&self, rounds: u64) -> Result<LoadTimes> {
        let mut guard = self.server.lock().map_err(|_| anyhow::anyhow!("redis server lock poisoned"))?;
        if guard.is_none() {
            *guard = Some(Server::start()?);
        }
        let server = guard.as_ref().expect("started above");
        let before = server.cpu()?;
        let start = Instant::now();
        let status = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-t", "get", "-c", "4"])
            .args(["-n", &requests(rounds).to_string(), "-q"])
            .stdout(Stdio::null())
            .status()
            .context("running redis-benchmark")?;
        let wall = start.elapsed();
        if !status.success() {
            bail!("redis-benchmark failed: {status}");
        }
        Ok(LoadTimes { wall, cpu: server.cpu()? - before })
    }
}

/// GET requests per run: `--rounds` / 2 (100,000 at the default 200,000 rounds).
fn requests(rounds: u64) -> u64 {
    (rounds / 2).max(1000)
}
