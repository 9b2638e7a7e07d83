//! The servers' resource use, read from `/proc` (same machine): peak RSS sampled during the run
//! (the largest replica's), and CPU time over the measured part (all replicas together); for
//! servers run under valgrind's callgrind (`--callgrind`), the instructions they executed over
//! the measured part, read with `callgrind_control`.

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
    /// Of `cpu_seconds`, the kernel's (system calls, wake-ups, the network stack).
    pub system_cpu_seconds: f64,
    /// `--callgrind`: instructions executed over the measured part, all servers together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_per_call: Option<f64>,
}

pub struct Sampler {
    pids: Vec<u32>,
    /// The servers run under callgrind: count their instructions too.
    callgrind: bool,
    peak_rss_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Samples the server's RSS every 100 ms until [`Sampler::finish`].
    pub fn start(pids: Vec<u32>, callgrind: bool) -> Self {
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
            callgrind,
            peak_rss_kib,
            task,
        }
    }

    /// The measured part starts: zero the instruction counters (`--callgrind`).
    pub async fn start_counting(&self) -> Result<(), String> {
        if self.callgrind {
            zero_instructions(&self.pids).await?;
        }
        Ok(())
    }

    /// The instructions since [`Sampler::start_counting`] (`--callgrind`), else `None`.
    pub async fn instructions(&self) -> Option<Result<u64, String>> {
        if self.callgrind {
            Some(take_instructions(&self.pids).await)
        } else {
            None
        }
    }

    /// The servers' CPU time so far.
    pub fn cpu(&self) -> CpuTime {
        self.pids
            .iter()
            .filter_map(|pid| cpu_time(*pid))
            .fold(CpuTime::default(), |sum, cpu| CpuTime {
                user: sum.user + cpu.user,
                system: sum.system + cpu.system,
            })
    }

    pub fn cpu_since(&self, before: CpuTime) -> CpuTime {
        self.cpu().since(before)
    }

    pub fn finish(self) -> ServerStats {
        self.task.abort();
        ServerStats {
            pids: self.pids,
            peak_rss_kib: self.peak_rss_kib.load(Ordering::Relaxed),
            cpu_seconds: 0.0,
            cpu_us_per_call: None,
            system_cpu_seconds: 0.0,
            instructions: None,
            instructions_per_call: None,
        }
    }
}

/// Zeroes the instruction counters of servers run under callgrind.
async fn zero_instructions(pids: &[u32]) -> Result<(), String> {
    for pid in pids {
        callgrind_control(&["--zero", &pid.to_string()]).await?;
    }
    Ok(())
}

/// The instructions the servers run under callgrind executed since their counters were zeroed
/// (all their threads); then dumps each one's profile of that part, for `callgrind_annotate`.
async fn take_instructions(pids: &[u32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let status = callgrind_control(&["-e", &pid.to_string()]).await?;
        total += thread_totals(&status)
            .ok_or_else(|| format!("no instruction counts from callgrind_control: {status}"))?;
        callgrind_control(&["--dump=measured", &pid.to_string()]).await?;
    }
    Ok(total)
}

async fn callgrind_control(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("callgrind_control")
        .args(args)
        .output()
        .await
        .map_err(|err| {
            format!("callgrind_control (valgrind's, apt-get install valgrind): {err}")
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("callgrind_control {args:?} failed: {stdout}"))
    }
}

/// The sum of `callgrind_control -e`'s per-thread counts: after a `Totals:` line, one
/// `Th <n> <count>` line a thread, the count with thousands separators.
fn thread_totals(status: &str) -> Option<u64> {
    let (_, threads) = status.split_once("Totals:")?;
    let counts: Vec<u64> = threads
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("Th")).then_some(())?;
            words.next()?;
            words.next()?.replace(',', "").parse().ok()
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's CPU time, in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The time spent since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }
}

/// utime and stime from `/proc/<pid>/stat`, in clock ticks of 1/100 s (Linux's USER_HZ).
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(CpuTime {
        user: Duration::from_millis(utime * 10),
        system: Duration::from_millis(stime * 10),
    })
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

#[cfg(test)]
mod tests {
    use super::thread_totals;

    #[test]
    fn thread_totals_sum_the_threads_counts() {
        let status = "PID 21252: /usr/local/bin/snapshotd\n\n  Totals:       Ir \n   Th 1  8,288,590 \n   Th 2     76,595 \n   Th 3          0 \n";
        let cases = [
            (status, Some(8_365_185)),
            ("PID 1: x\n  Totals:  Ir\n", None),
            ("no such process", None),
        ];
        for (status, expected) in cases {
            assert_eq!(thread_totals(status), expected, "{status}");
        }
    }
}
