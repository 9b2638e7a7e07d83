//! The database limit: pgbench running the store's own CreateSnapshot transaction
//! ([`create_snapshot_pgbench_script`]) on the run's disks, at the run's concurrency and for
//! as long. It reports pgbench's throughput and its own latency percentiles, read from its
//! per-transaction log: the service's p99 is compared with the database's p99 at the same
//! concurrency, not with a number taken at another load.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::pgbench::{PgbenchWorkload, create_snapshot_pgbench_script, pgbench_program};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::setup::Naming;

/// `--log-prefix` inside the run's temp dir; pgbench names its logs `pgbench.<pid>` and
/// `pgbench.<pid>.<thread>`.
const LOG_PREFIX: &str = "pgbench";

#[derive(Serialize)]
pub struct Limit {
    pub pgbench_tps: f64,
    /// pgbench's own latency per transaction, at `clients`.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub clients: usize,
    pub seconds: u64,
}

/// The pgbench script for this run's disks.
pub fn script(naming: &Naming) -> String {
    create_snapshot_pgbench_script(&PgbenchWorkload {
        disks: u32::try_from(naming.disks).unwrap_or(u32::MAX),
        disk_id_sql: &naming.disk_sql(),
        account_id_sql: &naming.account_of_disk_sql(),
    })
}

/// Runs pgbench against `database_url` and reads its throughput and latency percentiles.
pub fn measure(
    database_url: &str,
    naming: &Naming,
    clients: usize,
    duration: Duration,
) -> Result<Limit, Box<dyn std::error::Error>> {
    // One fresh dir holds the script and pgbench's logs, and goes away whatever happens.
    let dir = std::env::temp_dir().join(format!(
        "snapshotd-bench-{}-{}",
        naming.run_id,
        std::process::id()
    ));
    std::fs::create_dir(&dir)
        .map_err(|err| format!("creating pgbench's temp dir {}: {err}", dir.display()))?;
    let limit = run_pgbench(&dir, database_url, naming, clients, duration);
    let _ = std::fs::remove_dir_all(&dir);
    limit
}

fn run_pgbench(
    dir: &Path,
    database_url: &str,
    naming: &Naming,
    clients: usize,
    duration: Duration,
) -> Result<Limit, Box<dyn std::error::Error>> {
    let file = dir.join("create_snapshot.sql");
    std::fs::write(&file, script(naming))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(clients);
    let seconds = duration.as_secs().max(1);
    let output = Command::new(pgbench_program())
        .args(["--no-vacuum", "--protocol=prepared", "--log"])
        .arg(format!("--log-prefix={}", dir.join(LOG_PREFIX).display()))
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={threads}"))
        .arg(format!("--time={seconds}"))
        .arg(format!("--file={}", file.display()))
        .arg(database_url)
        .output()
        .map_err(|err| format!("running pgbench (is it installed? Debian ships it in the postgresql package): {err}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    // "tps = 6543.210987 (without initial connection time)"
    let tps = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {stdout}"))?;
    let latency = transaction_latencies(dir)
        .map_err(|err| format!("reading pgbench's per-transaction log: {err}"))?;
    let ms = |micros: u64| micros as f64 / 1e3;
    Ok(Limit {
        pgbench_tps: tps,
        latency_p50_ms: ms(latency.value_at_quantile(0.50)),
        latency_p99_ms: ms(latency.value_at_quantile(0.99)),
        latency_max_ms: ms(latency.max()),
        clients,
        seconds,
    })
}

/// Every transaction's latency, in microseconds, from all of pgbench's log files in `dir`.
fn transaction_latencies(dir: &Path) -> Result<Histogram<u64>, String> {
    // The same bounds as the service's histogram (scenario.rs), so the two compare alike.
    let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut logs = 0;
    let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|err| format!("{}: {err}", dir.display()))?
            .path();
        let is_log = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix(LOG_PREFIX))
            .is_some_and(|rest| rest.starts_with('.'));
        if !is_log {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        record_log(&mut latency, &text).map_err(|err| format!("{}: {err}", path.display()))?;
        logs += 1;
    }
    if logs == 0 {
        return Err(format!("pgbench wrote no log file in {}", dir.display()));
    }
    if latency.is_empty() {
        return Err(format!(
            "pgbench's {logs} log file(s) hold no finished transaction"
        ));
    }
    Ok(latency)
}

/// Records one log file's latencies. A line is `client_id transaction_no time script_no
/// time_epoch time_us`, where `time` is the transaction's latency in microseconds.
fn record_log(latency: &mut Histogram<u64>, text: &str) -> Result<(), String> {
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let field = line
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| format!("line {}: no latency field in {line:?}", index + 1))?;
        // pgbench writes these instead of a time for transactions it did not finish; tps does
        // not count them either.
        if matches!(field, "failed" | "skipped") {
            continue;
        }
        let micros: u64 = field.parse().map_err(|_| {
            format!(
                "line {}: the latency field {field:?} is not microseconds: {line:?}",
                index + 1
            )
        })?;
        latency.saturating_record(micros);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
    }

    #[test]
    fn the_third_field_is_the_latency_in_microseconds() {
        let mut latency = histogram();
        let log =
            "0 1 9516 0 1795876755 4232\n1 1 250 0 1795876755 4374\n0 2 61 0 1795876755 4437\n";
        record_log(&mut latency, log).unwrap();
        assert_eq!(latency.len(), 3);
        assert_eq!(latency.min(), 61);
        assert!(latency.equivalent(latency.max(), 9516));
    }

    #[test]
    fn unfinished_transactions_are_not_latencies() {
        let mut latency = histogram();
        record_log(
            &mut latency,
            "0 1 failed 0 1795876755 4232\n0 2 800 0 1795876755 4437\n",
        )
        .unwrap();
        assert_eq!(latency.len(), 1);
    }

    #[test]
    fn a_line_without_a_latency_is_an_error() {
        let mut latency = histogram();
        assert!(record_log(&mut latency, "0 1\n").is_err());
        assert!(record_log(&mut latency, "0 1 abc 0 1795876755 4232\n").is_err());
    }

    #[test]
    fn every_thread_log_is_read_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("snapshotd-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pgbench.42"), "0 1 1000 0 1795876755 1\n").unwrap();
        std::fs::write(dir.join("pgbench.42.1"), "1 1 3000 0 1795876755 1\n").unwrap();
        std::fs::write(dir.join("create_snapshot.sql"), "SELECT 1;\n").unwrap();
        let latency = transaction_latencies(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let latency = latency.unwrap();
        assert_eq!(latency.len(), 2);
        assert!(latency.equivalent(latency.max(), 3000));
    }

    #[test]
    fn no_log_is_an_error_not_a_zero() {
        let dir =
            std::env::temp_dir().join(format!("snapshotd-bench-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let latency = transaction_latencies(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(latency.unwrap_err().contains("no log file"));
    }
}
