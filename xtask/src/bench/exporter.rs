//! The `exporter` section: the agent's own steady cost as an always-on service. Starts
//! `carbon-agent serve` (default interval), scrapes `GET /metrics` every [`SCRAPE_EVERY`] as
//! Prometheus would, and samples the agent's CPU time (`/proc/<pid>/stat`) and resident memory
//! (`/proc/<pid>/status`) over each scrape period; prints the median and the spread.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, step};

/// The scrape period, as in the issue: Prometheus scraping every 5 s.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(5);
/// Scrape periods measured after the warm-up.
const WINDOWS: usize = 12;
/// Start-up (load, verify, attach, first /proc scan) is not steady state.
const WARM_UP: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scrape: the body's length, or an error.
fn scrape(addr: &str) -> Result<usize> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        bail!("{}", text.lines().next().unwrap_or("no answer"));
    }
    Ok(resp.len())
}

/// utime + stime of `pid`, seconds.
fn cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc/<pid>/stat without a comm")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: field 3 (state) is f[0]; utime is field 14, stime field 15.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// VmRSS of `pid`, bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?;
    Ok(kb.parse::<u64>()? * 1024)
}

/// `(median, min, max)` of `v`.
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (median, s[0], s[n - 1])
}

/// Runs the section with `binary`.
pub fn exporter_bench(binary: &Path) -> Result<()> {
    step(format!(
        "bench: exporter — `carbon-agent serve` at the default interval, /metrics scraped every {}s, {WINDOWS} periods after {}s of warm-up",
        SCRAPE_EVERY.as_secs(),
        WARM_UP.as_secs()
    ));
    let dir = std::env::temp_dir().join(format!("carbon-agent-bench-exporter-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.toml");
    std::fs::write(&config, "")?;
    let addr = format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let agent = Agent(
        Command::new(binary)
            .args(["serve", "--listen", &addr, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env_remove("ELECTRICITYMAPS_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?,
    );
    let pid = agent.0.id();
    let started = Instant::now();
    while scrape(&addr).is_err() {
        if started.elapsed() > READY_TIMEOUT {
            bail!("carbon-agent serve did not answer on {addr} within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cmd::note(format!(
        "ready after {:.1}s (load, verify, attach, first interval)",
        started.elapsed().as_secs_f64()
    ));
    std::thread::sleep(WARM_UP);
    let (mut cpu_pct, mut rss_mb, mut bytes) = (Vec::new(), Vec::new(), 0);
    let mut last = (Instant::now(), cpu_s(pid)?);
    for _ in 0..WINDOWS {
        std::thread::sleep(SCRAPE_EVERY);
        bytes = scrape(&addr)?;
        let now = (Instant::now(), cpu_s(pid)?);
        cpu_pct.push((now.1 - last.1) / now.0.duration_since(last.0).as_secs_f64() * 100.0);
        rss_mb.push(rss_bytes(pid)? as f64 / 1e6);
        last = now;
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    let (m, lo, hi) = spread(&cpu_pct);
    cmd::note(format!(
        "agent CPU: median {m:.2} % of one core (min {lo:.2}, max {hi:.2}; {WINDOWS} periods of {}s; ticks of {} ms)",
        SCRAPE_EVERY.as_secs(),
        // SAFETY: sysconf has no preconditions.
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1)
    ));
    let (m, lo, hi) = spread(&rss_mb);
    cmd::note(format!("agent RSS: median {m:.1} MB (min {lo:.1}, max {hi:.1}); last scrape {bytes} bytes"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
