//! The database limit: pgbench running the store's own CreateSnapshot transaction
//! ([`create_snapshot_pgbench_script`]) on the run's disks, at the run's concurrency and for
//! as long. It reports pgbench's throughput and its own latency percentiles, read from its
//! per-transaction log: the service's p99 is compared with the database's p99 at the same
//! concurrency, not with a number taken at another load.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::pgbench::{
    DescribePage, PgbenchWorkload, create_snapshot_pgbench_script,
    describe_snapshots_pgbench_script, pgbench_program,
};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::setup::Naming;

/// `--log-prefix` inside the run's temp dir; pgbench names its logs `pgbench.<pid>` and
/// `pgbench.<pid>.<thread>`.
const LOG_PREFIX: &str = "pgbench";

#[derive(Serialize)]
pub struct Limit {
    /// What pgbench ran: the store's `create` transaction, its `describe` statement, or `mixed`
    /// (computed from its `parts`).
    pub workload: String,
    pub pgbench_tps: f64,
    /// pgbench's own latency per transaction, at `clients`.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub clients: usize,
    pub seconds: u64,
    /// `mixed`: the limits measured, one after the other, that this one is computed from (its
    /// latencies are then zero: no transaction of its own was run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Limit>,
}

/// `mixed`'s share of DescribeSnapshots calls; the rest are writes (25 % creates, 5 % deletes,
/// the deletes counted at a create's cost: a transaction of the same round trips).
pub const MIXED_DESCRIBE_SHARE: f64 = 0.70;
/// `mixed` reads first pages of this many snapshots.
pub const MIXED_DESCRIBE_PAGE: u32 = 20;

/// Brings PostgreSQL's statistics up to date with what the setup wrote, before anything is
/// measured. The setup fills tables that were empty a moment before, and autovacuum analyzes
/// them up to a minute later: until then the planner reads no statistics for them, and planned
/// a describe page of an account holding 2,048 snapshots as a bitmap scan of all of them and a
/// sort (2.5 ms), where the index hands over 21 rows in 0.2 ms; the service and pgbench ran on
/// whichever plan the timing gave each. A database in service has current statistics, kept by
/// autovacuum: the bench measures that one. Only the tables that hold rows are analyzed: one
/// analyzed while empty is planned as empty (a sequential scan costs nothing), and a plan cached
/// then is kept while the run fills the table; one never analyzed is assumed to hold a few
/// pages, as a new table about to grow should be (bench/README.md, "Statistics").
pub async fn refresh_statistics(database_url: &str) -> Result<(), String> {
    use sqlx::Connection;
    const ANALYZE_FILLED_TABLES: &str = "DO $$
DECLARE
    tab regclass;
    filled boolean;
BEGIN
    FOR tab IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = current_schema() AND c.relkind = 'r'
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', tab) INTO filled;
        IF filled THEN
            EXECUTE format('ANALYZE %s', tab);
        END IF;
    END LOOP;
END $$";
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .map_err(|err| format!("connecting to analyze the tables: {err}"))?;
    sqlx::raw_sql(ANALYZE_FILLED_TABLES)
        .execute(&mut connection)
        .await
        .map_err(|err| format!("analyzing the tables: {err}"))?;
    connection
        .close()
        .await
        .map_err(|err| format!("closing after ANALYZE: {err}"))
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
    let scripts = [("create_snapshot.sql".to_owned(), script(naming))];
    measure_scripts("create", database_url, naming, &scripts, clients, duration)
}

/// The `describe` scenario's limit: the store's describe statement for each page of
/// `page_size` of account 0's snapshots as the service walks them (the first page, then each
/// `next_token` page), one pgbench script per page, picked evenly; or the first page alone
/// (`first_pages_only`, as `--describe-first-pages` reads).
pub fn measure_describe(
    database_url: &str,
    naming: &Naming,
    page_size: u32,
    first_pages_only: bool,
    clients: usize,
    duration: Duration,
) -> Result<Limit, Box<dyn std::error::Error>> {
    let account = naming.account(0);
    let rows = newest_first(database_url, &account)?;
    let account_sql = format!("'{account}'");
    let page = |after| DescribePage {
        account_sql: &account_sql,
        limit: page_size,
        after,
        total: rows.len() as u64,
    };
    let mut scripts = vec![(
        "describe_page_1.sql".to_owned(),
        describe_snapshots_pgbench_script(&page(None), ""),
    )];
    // Page n + 1 starts after the last row of page n, while rows remain after it.
    let size = usize::try_from(page_size.max(1)).unwrap_or(usize::MAX);
    for (n, last) in rows.iter().enumerate().skip(size - 1).step_by(size) {
        if first_pages_only || n + 1 >= rows.len() {
            break;
        }
        let after = Some((last.0.as_str(), last.1.as_str()));
        scripts.push((
            format!("describe_page_{}.sql", scripts.len() + 1),
            describe_snapshots_pgbench_script(&page(after), ""),
        ));
    }
    measure_scripts(
        "describe",
        database_url,
        naming,
        &scripts,
        clients,
        duration,
    )
}

/// `mixed`'s limit: the weighted harmonic mean of the create limit and the limit of its
/// describes (first pages of [`MIXED_DESCRIBE_PAGE`] of a random account's snapshots), each
/// measured here for `duration`, one after the other.
pub fn measure_mixed(
    database_url: &str,
    naming: &Naming,
    clients: usize,
    duration: Duration,
) -> Result<Limit, Box<dyn std::error::Error>> {
    let create = measure(database_url, naming, clients, duration)?;
    let account_sql = format!("'bench-{}-a' || :account", naming.run_id);
    let describe_script = describe_snapshots_pgbench_script(
        &DescribePage {
            account_sql: &account_sql,
            limit: MIXED_DESCRIBE_PAGE,
            after: None,
            total: 0,
        },
        &format!(
            "\\set account random(0, {})\n",
            naming.accounts.saturating_sub(1)
        ),
    );
    let scripts = [("describe_first_page.sql".to_owned(), describe_script)];
    let describe = measure_scripts(
        "describe",
        database_url,
        naming,
        &scripts,
        clients,
        duration,
    )?;
    let tps = 1.0
        / (MIXED_DESCRIBE_SHARE / describe.pgbench_tps
            + (1.0 - MIXED_DESCRIBE_SHARE) / create.pgbench_tps);
    Ok(Limit {
        workload: format!(
            "mixed = 1 / ({MIXED_DESCRIBE_SHARE:.2} / describe + {:.2} / create)",
            1.0 - MIXED_DESCRIBE_SHARE
        ),
        pgbench_tps: tps,
        latency_p50_ms: 0.0,
        latency_p99_ms: 0.0,
        latency_max_ms: 0.0,
        clients,
        seconds: describe.seconds + create.seconds,
        parts: vec![describe, create],
    })
}

/// `(created_at as PostgreSQL prints it, snapshot_id)` of the account's snapshots, newest first
/// (the order DescribeSnapshots pages in), read with `psql`.
fn newest_first(
    database_url: &str,
    account: &str,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "SELECT created_at, snapshot_id FROM snapshots WHERE account_id = '{account}' \
             ORDER BY created_at DESC, snapshot_id DESC"
        ))
        .arg(database_url)
        .output()
        .map_err(|err| format!("running psql: {err}"))?;
    if !output.status.success() {
        return Err(format!("psql failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(at, id)| (at.to_owned(), id.to_owned()))
        .collect())
}

/// Runs pgbench with `scripts` (file name, text), each picked with the same weight.
fn measure_scripts(
    workload: &str,
    database_url: &str,
    naming: &Naming,
    scripts: &[(String, String)],
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
    let limit = run_pgbench(&dir, database_url, scripts, clients, duration);
    let _ = std::fs::remove_dir_all(&dir);
    limit.map(|limit| Limit {
        workload: workload.to_owned(),
        ..limit
    })
}

fn run_pgbench(
    dir: &Path,
    database_url: &str,
    scripts: &[(String, String)],
    clients: usize,
    duration: Duration,
) -> Result<Limit, Box<dyn std::error::Error>> {
    let mut files = Vec::with_capacity(scripts.len());
    for (name, text) in scripts {
        let file = dir.join(name);
        std::fs::write(&file, text)?;
        files.push(format!("--file={}@1", file.display()));
    }
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
        .args(&files)
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
        workload: String::new(),
        pgbench_tps: tps,
        latency_p50_ms: ms(latency.value_at_quantile(0.50)),
        latency_p99_ms: ms(latency.value_at_quantile(0.99)),
        latency_max_ms: ms(latency.max()),
        clients,
        seconds,
        parts: Vec::new(),
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
