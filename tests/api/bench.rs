//! `snapshotd-bench`, the load generator, against a real server: each scenario runs and reports
//! what the server answered, and its pgbench script (generated from the store's SQL) runs as
//! is on the server's PostgreSQL database, where the bench measures the limit and pgbench's own
//! latency.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{ADMIN_TOKEN, Backend, Options, TestApp, spawn_app_with};

const BENCH: &str = env!("CARGO_BIN_EXE_snapshotd-bench");

/// A server in real time whose copies finish at once, as `bench/limit.sh` runs it.
async fn bench_server(backend: Backend) -> TestApp {
    spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                config.copy_rate_mibps = 1_000_000;
                config.worker_interval = Duration::from_millis(50);
            }),
            real_time: true,
            ..Options::default()
        },
    )
    .await
}

/// Runs the bench for a second and returns its JSON report and exit code.
async fn run_bench(app: &TestApp, scenario: &str, extra: &[&str]) -> (serde_json::Value, i32) {
    let target = format!("http://{}", app.addr);
    let mut args = vec![
        "--target",
        &target,
        "--admin-token",
        ADMIN_TOKEN,
        "--scenario",
        scenario,
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--accounts",
        "4",
        "--disks",
        "256",
        "--describe-snapshots",
        "40",
        "--json",
        "-",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let output = tokio::task::spawn_blocking(move || Command::new(BENCH).args(&args).output())
        .await
        .expect("the bench task")
        .expect("running snapshotd-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The table comes first; the JSON report is the last thing printed.
    let json_start = stdout.find("\n{").unwrap_or_else(|| {
        panic!(
            "no JSON report in: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report = serde_json::from_str(&stdout[json_start + 1..])
        .unwrap_or_else(|err| panic!("the JSON report parses ({err}): {stdout}"));
    (report, output.status.code().unwrap_or(-1))
}

fn count(report: &serde_json::Value, answer: &str) -> u64 {
    report["answers"][answer].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scenario_runs_and_reports_only_the_answers_it_expects() {
    let app = bench_server(Backend::Postgres).await;
    for scenario in ["spread", "replay", "describe", "mixed"] {
        let (report, code) = run_bench(&app, scenario, &[]).await;
        assert_eq!(code, 0, "{scenario}: {report:#}");
        assert_eq!(report["unexpected"], 0, "{scenario}: {report:#}");
        assert!(count(&report, "OK") > 0, "{scenario}: {report:#}");
        assert_eq!(
            report["calls"].as_u64(),
            Some(
                report["answers"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter_map(|v| v.as_u64())
                    .sum()
            ),
            "{scenario}: calls are the sum of the answers"
        );
        let latency = &report["latency"];
        let ms = |field: &str| {
            latency[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{scenario}: a number at latency.{field}: {latency}"))
        };
        assert!(
            0.0 < ms("p50_ms") && ms("p50_ms") <= ms("p99_ms") && ms("p99_ms") <= ms("max_ms"),
            "{scenario}: {latency}"
        );
    }
    // One disk: the lock-protected rule refuses all but the calls that find its copy done.
    let (report, code) = run_bench(&app, "hot", &[]).await;
    assert_eq!(code, 0, "{report:#}");
    assert!(
        count(
            &report,
            "FailedPrecondition IncorrectDiskStatus.CreatingSnapshot"
        ) > 0,
        "{report:#}"
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pgbench_script_runs_the_store_transaction_on_the_servers_database() {
    let app = bench_server(Backend::Postgres).await;
    // Set the run's disks up through the bench, measuring its limit as `bench/limit.sh` does,
    // then run its script with pgbench directly.
    let (report, code) = run_bench(
        &app,
        "spread",
        &["--run-id", "pgb1", "--limit-database-url", &app.db.url],
    )
    .await;
    assert_eq!(code, 0, "{report:#}");
    let limit = &report["limit"];
    let number = |field: &str| {
        limit[field]
            .as_f64()
            .unwrap_or_else(|| panic!("a number at limit.{field}: {report:#}"))
    };
    assert!(number("pgbench_tps") > 0.0, "{limit}");
    // pgbench's own latency, read from its per-transaction log.
    assert!(
        0.0 < number("latency_p50_ms")
            && number("latency_p50_ms") <= number("latency_p99_ms")
            && number("latency_p99_ms") <= number("latency_max_ms"),
        "{limit}"
    );
    let script = Command::new(BENCH)
        .args([
            "--admin-token",
            "x",
            "--run-id",
            "pgb1",
            "--accounts",
            "4",
            "--disks",
            "256",
        ])
        .arg("--print-pgbench-script")
        .output()
        .expect("printing the script");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("create.sql");
    std::fs::write(&file, &script.stdout).unwrap();
    let before = app.count_rows("snapshots").await;
    let pgbench = Command::new(pgbench_program())
        .args([
            "--no-vacuum",
            "--protocol=prepared",
            "--client=2",
            "--transactions=25",
        ])
        .arg(format!("--file={}", file.display()))
        .arg(&app.db.url)
        .output()
        .expect("pgbench must be installed for this test (Debian ships it in the postgresql package, with the server)");
    assert!(
        pgbench.status.success(),
        "pgbench ran the script: {}{}",
        String::from_utf8_lossy(&pgbench.stdout),
        String::from_utf8_lossy(&pgbench.stderr)
    );
    assert_eq!(
        app.count_rows("snapshots").await,
        before + 50,
        "each pgbench transaction inserted one snapshot"
    );
}

/// `pgbench` from the PATH, else from Debian's versioned PostgreSQL directories.
fn pgbench_program() -> std::path::PathBuf {
    if Command::new("pgbench").arg("--version").output().is_ok() {
        return "pgbench".into();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|version| version.path().join("bin/pgbench"))
        .find(|path| path.exists())
        .unwrap_or_else(|| "pgbench".into())
}
