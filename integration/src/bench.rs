//! What the benchmark binaries share: child processes, RSS, polling,
//! percentiles and the file descriptor limit.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's resident set size, in MiB (0 when unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU time (user + system) a process has used, in ms. Assumes the usual
/// 100 clock ticks a second.
pub fn cpu_ms(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) * 10.0)
        })
        .unwrap_or(0.0)
}

/// CPU time (user + system) of a process and its children, in ms: a
/// PostgreSQL server's with its backends. Children that exited are not
/// counted.
pub fn tree_cpu_ms(pid: u32) -> f64 {
    cpu_ms(pid) + children(pid).into_iter().map(cpu_ms).sum::<f64>()
}

/// A process's children.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| parent(*p) == Some(pid))
                .collect()
        })
        .unwrap_or_default()
}

/// A process's parent.
fn parent(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sockets a process holds open.
pub fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// A binary built beside the running one (same profile).
pub fn binary(name: &str, build_hint: &str) -> Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("the bench's folder")?
        .to_path_buf();
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} is missing: build it first ({build_hint})", p.display());
    }
    Ok(p)
}

/// Polls `f` every 20 ms until it gives a value, or fails after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The p-th percentile (0 to 100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it); returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    // None is unlimited.
    let below = match (r.current, r.maximum) {
        (Some(c), Some(m)) => c < m,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below {
        let want = Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        };
        if setrlimit(Resource::Nofile, want).is_ok() {
            return r.maximum.unwrap_or(u64::MAX);
        }
    }
    r.current.unwrap_or(u64::MAX)
}

/// Prints rows as an aligned two-column table.
pub fn print_table(title: &str, rows: &[(String, String)]) {
    println!("\n{title}");
    println!("{}", "-".repeat(title.len()));
    for (k, v) in rows {
        println!("{k:<60} {v:>16}");
    }
}
