//! The servers' resource use, read from `/proc` (same machine): peak RSS sampled during the run
//! (the largest replica's), and CPU time over the measured part (all replicas together).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Serialize)]
pub struct ServerStats {
    pub pids: Vec<u32>,
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
    pub cpu_us_per_call: Option<f64>,
}

pub struct Sampler {
    pids: Vec<u32>,
    peak_rss_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Samples the server's RSS every 100 ms until [`Sampler::finish`].
    pub fn start(pids: Vec<u32>) -> Self {
        let peak_rss_kib = Arc::new(AtomicU64::new(0));
        let peak = Arc::clone(&peak_rss_kib);
        let sampled = pids.clone();
        let task = tokio::spawn(async move {
            loop {
                for pid in &sampled {
                    if let Some(rss) = rss_kib(*pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            pids,
            peak_rss_kib,
            task,
        }
    }

    /// The servers' CPU time (user + system) so far.
    pub fn cpu(&self) -> Duration {
        self.pids.iter().filter_map(|pid| cpu_time(*pid)).sum()
    }

    pub fn cpu_since(&self, before: Duration) -> Duration {
        self.cpu().saturating_sub(before)
    }

    pub fn finish(self) -> ServerStats {
        self.task.abort();
        ServerStats {
            pids: self.pids,
            peak_rss_kib: self.peak_rss_kib.load(Ordering::Relaxed),
            cpu_seconds: 0.0,
            cpu_us_per_call: None,
        }
    }
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime from `/proc/<pid>/stat`, in clock ticks of 1/100 s (Linux's USER_HZ).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Sends SIGTERM to each server and waits (up to 30 s) until it has exited.
pub fn stop(pids: &[u32]) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|pid| running(*pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}
