//! `snapshotd-bench`, the load generator, against a real server: each scenario runs and reports
//! what the server answered, and its pgbench script (generated from the store's SQL) runs as
//! is on the server's PostgreSQL database, where the bench measures the limit and pgbench's own
//! latency; its SQLite limit's script runs in the sqlite3 CLI on a copy of a server's file. With
//! `--edge http` the same scenarios go through the ECS-compatible HTTP edge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use snapshotd::config::ListenOrOff;

use crate::helpers::{ADMIN_TOKEN, Backend, Options, TestApp, spawn_app_with};

/// The bench's executable, built once per test run.
///
/// The bench is another package of the workspace (`bench/`), so Cargo gives this test no
/// `CARGO_BIN_EXE_` for it: the test asks Cargo to build it, with the profile this test was
/// built with, and runs the executable Cargo reports. If it cannot be built, the test fails with
/// Cargo's output; it never skips.
fn bench_binary() -> &'static Path {
    static BENCH: OnceLock<PathBuf> = OnceLock::new();
    BENCH.get_or_init(build_bench)
}

fn build_bench() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    // `--workspace … --test api`: the packages and dev-dependencies of a `cargo test` at the root
    // (CI's), so Cargo resolves the same features and finds what that build made fresh, this
    // test included. `--package snapshotd-bench` alone resolves fewer features and would build
    // most dependencies a second time.
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--locked", "--workspace", "--test", "api"])
        .args([
            "--bin",
            "snapshotd-bench",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--profile", &test_profile()]);
    // What Cargo sets for this test's package would reach the build scripts of the nested build,
    // and some watch it (ring: CARGO_MANIFEST_DIR): each run would then rebuild them and all that
    // depends on them. The nested build gets the environment a shell gives `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let output = command.output().unwrap_or_else(|err| {
        panic!(
            "running {} to build snapshotd-bench: {err}",
            cargo.display()
        )
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "building snapshotd-bench failed ({}):\n{stderr}",
        output.status
    );
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "snapshotd-bench"
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .and_then(|artifact| artifact["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| {
            panic!("Cargo built snapshotd-bench but named no executable:\n{stdout}\n{stderr}")
        })
}

/// The Cargo profile this test binary was built with, from the directory it runs in
/// (`target/<profile dir>/deps/`): `debug` is the `dev` profile, any other directory is named
/// after its profile.
fn test_profile() -> String {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps/", exe.display()));
    match dir {
        "debug" => "dev".to_owned(),
        profile => profile.to_owned(),
    }
}

/// `pgbench` from the PATH, else beside the PostgreSQL server's binaries (Debian ships it with
/// the server, in `postgresql-NN`).
fn pgbench_program() -> PathBuf {
    if Command::new("pgbench").arg("--version").output().is_ok() {
        return "pgbench".into();
    }
    crate::helpers::postgres_bin_dir()
        .map(|dir| dir.join("pgbench"))
        .unwrap_or_else(|_| "pgbench".into())
}

/// A server in real time whose copies finish at once, as `bench/limit.sh` runs it, with its
/// ECS edge on an ephemeral port.
async fn bench_server(backend: Backend) -> TestApp {
    spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                config.copy_rate_mibps = 1_000_000;
                config.worker_interval = Duration::from_millis(50);
                config.ecs_listen = ListenOrOff::At(SocketAddr::from(([127, 0, 0, 1], 0)));
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
    let output =
        tokio::task::spawn_blocking(move || Command::new(bench_binary()).args(&args).output())
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
async fn over_the_http_edge_every_scenario_runs_signed_and_reports_only_the_answers_it_expects() {
    let app = bench_server(Backend::Postgres).await;
    let ecs = format!("http://{}", app.ecs_addr.expect("the ECS edge is on"));
    // Each scenario, and an answer it must have seen: a refusal comes back as the HTTP status
    // and ECS's code, the same reason the gRPC edge gives.
    let cases = [
        ("spread", "OK"),
        ("replay", "OK"),
        ("describe", "OK"),
        ("mixed", "OK"),
        ("hot", "403 IncorrectDiskStatus.CreatingSnapshot"),
    ];
    for (scenario, seen) in cases {
        let (report, code) =
            run_bench(&app, scenario, &["--edge", "http", "--ecs-target", &ecs]).await;
        assert_eq!(code, 0, "{scenario}: {report:#}");
        assert_eq!(report["edge"], "http", "{scenario}: {report:#}");
        assert_eq!(report["target"], ecs.as_str(), "{scenario}: {report:#}");
        assert_eq!(report["unexpected"], 0, "{scenario}: {report:#}");
        assert!(count(&report, seen) > 0, "{scenario}: {seen} in {report:#}");
    }
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
    let script = Command::new(bench_binary())
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

/// The sqlite3 CLI's answer to `args`, reading `stdin` (a file: the CLI prints rows as it reads,
/// so a pipe written before reading could fill both ways); it must be installed (CI installs it),
/// never skipped.
fn sqlite3(args: &[&str], stdin: Option<&Path>) -> std::process::Output {
    let stdin = match stdin {
        Some(file) => std::process::Stdio::from(std::fs::File::open(file).unwrap()),
        None => std::process::Stdio::null(),
    };
    let output = Command::new("sqlite3")
        .args(args)
        .stdin(stdin)
        .output()
        .expect("the sqlite3 CLI runs the SQLite limit: apt-get install sqlite3");
    assert!(
        output.status.success(),
        "sqlite3 {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_limit_runs_the_store_statements_on_a_copy_of_the_servers_file() {
    sqlite3(&["--version"], None);
    let app = bench_server(Backend::Sqlite).await;
    // Each scenario's limit, measured as `BACKEND=sqlite bench/limit.sh` does.
    let cases = [
        ("spread", serde_json::json!("create")),
        (
            "describe",
            serde_json::json!({ "describe": { "page": 100 } }),
        ),
    ];
    for (scenario, statements) in cases {
        let (report, code) = run_bench(
            &app,
            scenario,
            &["--run-id", "sql1", "--limit-sqlite-file", &app.db.url],
        )
        .await;
        assert_eq!(code, 0, "{scenario}: {report:#}");
        let limit = &report["sqlite_limit"];
        assert_eq!(limit["statements"], statements, "{scenario}: {report:#}");
        assert_eq!(limit["synchronous"], "full", "{scenario}: {report:#}");
        let number = |field: &str| {
            limit[field].as_f64().unwrap_or_else(|| {
                panic!("{scenario}: a number at sqlite_limit.{field}: {report:#}")
            })
        };
        assert!(number("tps") > 0.0, "{scenario}: {limit}");
        assert!(
            0.0 < number("latency_p50_ms")
                && number("latency_p50_ms") <= number("latency_p99_ms")
                && number("latency_p99_ms") <= number("latency_max_ms"),
            "{scenario}: {limit}"
        );
    }
    // The script itself, on a copy of the server's migrated file holding the run's inventory.
    let script = Command::new(bench_binary())
        .args([
            "--admin-token",
            "x",
            "--run-id",
            "sql1",
            "--accounts",
            "4",
            "--disks",
            "256",
        ])
        .args([
            "--limit-sqlite-file",
            &app.db.url,
            "--print-sqlite-script",
            "25",
        ])
        .output()
        .expect("printing the script");
    assert!(
        script.status.success(),
        "{}",
        String::from_utf8_lossy(&script.stderr)
    );
    let text = String::from_utf8(script.stdout).unwrap();
    assert!(!text.contains('$'), "a placeholder is left: {text}");
    assert_eq!(text.matches("BEGIN IMMEDIATE;").count(), 25, "{text}");
    assert_eq!(text.matches("FROM snapshot_tags").count(), 25, "{text}");
    let served = app.db.url.trim_start_matches("sqlite://");
    let served = served.split('?').next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let copy = copy.to_str().unwrap();
    sqlite3(&[served, &format!("VACUUM INTO '{copy}'")], None);
    let count = || {
        let output = sqlite3(&[copy, "SELECT count(*) FROM snapshots"], None);
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = count();
    let script = dir.path().join("limit.sql");
    std::fs::write(&script, &text).unwrap();
    sqlite3(&["-bail", copy], Some(&script));
    assert_eq!(
        count(),
        before + 25,
        "each create transaction inserted one snapshot"
    );
}
