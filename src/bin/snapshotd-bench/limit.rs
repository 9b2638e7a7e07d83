//! The database limit: pgbench running the store's own CreateSnapshot transaction
//! (`snapshotd::store::create_snapshot_pgbench_script`) on the run's disks, at the run's
//! concurrency and for as long.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use snapshotd::store::{PgbenchWorkload, create_snapshot_pgbench_script, pgbench_program};

use crate::setup::Naming;

#[derive(Serialize)]
pub struct Limit {
    pub pgbench_tps: f64,
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

/// Runs pgbench against `database_url` and reads its throughput.
pub fn measure(
    database_url: &str,
    naming: &Naming,
    clients: usize,
    duration: Duration,
) -> Result<Limit, Box<dyn std::error::Error>> {
    let file = std::env::temp_dir().join(format!("snapshotd-bench-{}.sql", naming.run_id));
    std::fs::write(&file, script(naming))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(clients);
    let seconds = duration.as_secs().max(1);
    let output = Command::new(pgbench_program())
        .args(["--no-vacuum", "--protocol=prepared"])
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={threads}"))
        .arg(format!("--time={seconds}"))
        .arg(format!("--file={}", file.display()))
        .arg(database_url)
        .output()
        .map_err(|err| format!("running pgbench (is it installed? Debian ships it in the postgresql package): {err}"))?;
    let _ = std::fs::remove_file(&file);
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
    Ok(Limit {
        pgbench_tps: tps,
        clients,
        seconds,
    })
}
