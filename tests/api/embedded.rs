//! The embedded default, through the real binary: no DATABASE_URL, an empty directory, the
//! demo inventory, data that survives a restart, and one server per SQLite file.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use snapshotd::pb;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestDatabase, as_account, count_walk_page};
use crate::process::{BINARY, Server};

fn demo_request(disk_id: &str, token: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        disk_id: disk_id.into(),
        client_token: token.into(),
        ..Default::default()
    }
}

async fn create(
    channel: &Channel,
    account: &str,
    request: pb::CreateSnapshotRequest,
) -> Result<pb::CreateSnapshotResponse, tonic::Status> {
    pb::snapshot_service_client::SnapshotServiceClient::new(channel.clone())
        .create_snapshot(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_no_database_url_keeps_its_snapshots_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();

    let mut first = Server::start(dir.path(), &[], &[]);
    let channel = first.ready().await;
    let created = create(
        &channel,
        "acct-demo",
        demo_request("d-demo-ok", "restart-1"),
    )
    .await
    .expect("a snapshot of the demo disk");
    assert!(first.terminate().success(), "a clean exit on SIGTERM");
    assert!(dir.path().join("snapshotd.db").exists(), "the default file");

    let mut second = Server::start(dir.path(), &[], &[]);
    let channel = second.ready().await;
    // The token still answers with the same snapshot, and the copy still holds the disk.
    let replay = create(
        &channel,
        "acct-demo",
        demo_request("d-demo-ok", "restart-1"),
    )
    .await
    .expect("the replay after the restart");
    assert_eq!(replay.snapshot_id, created.snapshot_id);
    let busy = create(&channel, "acct-demo", demo_request("d-demo-ok", ""))
        .await
        .unwrap_err();
    let info = busy.get_details_error_info().unwrap();
    assert_eq!(info.reason, "IncorrectDiskStatus.CreatingSnapshot");
    assert_eq!(info.metadata.get("snapshotId"), Some(&created.snapshot_id));
    assert!(second.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_disk_shows_its_documented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[], &[]);
    let channel = server.ready().await;

    let expected = [
        ("acct-demo", "d-demo-ok", None),
        (
            "acct-demo",
            "d-demo-ok",
            Some("IncorrectDiskStatus.CreatingSnapshot"),
        ),
        ("acct-demo", "d-demo-ok-2", None),
        (
            "acct-demo",
            "d-demo-local",
            Some("DiskCategory.OperationNotSupported"),
        ),
        ("acct-demo", "d-demo-expired", Some("DiskInArrears")),
        (
            "acct-demo",
            "d-demo-never-attached",
            Some("IncorrectDiskStatus.NeverAttached"),
        ),
        ("acct-demo", "d-demo-detached", Some("IncorrectDiskStatus")),
        (
            "acct-demo",
            "d-demo-instance-starting",
            Some("IncorrectInstanceStatus"),
        ),
        (
            "acct-demo",
            "d-demo-instance-locked",
            Some("InstanceLockedForSecurity"),
        ),
        (
            "acct-demo",
            "d-demo-never-used",
            Some("IncorrectDiskStatus.NeverUsed"),
        ),
        (
            "acct-demo",
            "d-demo-new",
            Some("IncorrectDiskStatus.Initializing"),
        ),
        (
            "acct-demo-inactive",
            "d-demo-inactive",
            Some("InvalidAccountStatus.SnapshotServiceUnavailable"),
        ),
        (
            "acct-demo-broke",
            "d-demo-broke",
            Some("InvalidAccountStatus.NotEnoughBalance"),
        ),
        (
            "acct-demo",
            "d-demo-missing",
            Some("InvalidDiskId.NotFound"),
        ),
    ];
    assert_eq!(
        snapshotd::demo::DEMO_DISKS.len(),
        expected
            .iter()
            .filter(|(_, d, _)| *d != "d-demo-missing")
            .count()
            - 1,
        "every demo disk is exercised"
    );
    for (account, disk_id, reason) in expected {
        let result = create(&channel, account, demo_request(disk_id, "")).await;
        match (reason, result) {
            (None, Ok(_)) => {}
            (Some(reason), Err(status)) => {
                let info = status.get_details_error_info().expect("ErrorInfo");
                assert_eq!(info.reason, reason, "{disk_id}");
            }
            (reason, result) => panic!("{disk_id}: expected {reason:?}, got {result:?}"),
        }
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_demo_leaves_the_embedded_store_empty() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["--no-demo"], vec![]),
        (vec![], vec![("SNAPSHOTD_DEMO", "false")]),
    ] {
        let _ = std::fs::remove_file(dir.path().join("snapshotd.db"));
        let mut server = Server::start(dir.path(), &args, &env);
        let channel = server.ready().await;
        let status = create(&channel, "acct-demo", demo_request("d-demo-ok", ""))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "no acct-demo: {status:?}"
        );
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_file_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path(), &[], &[]);
    first.ready().await;

    let mut second = Server::start(dir.path(), &[], &[]);
    let status = second.exit_status();
    let stderr = second.stderr();
    assert!(!status.success(), "the second server must not start");
    assert!(
        stderr.contains("one server process per database file"),
        "a clear startup error: {stderr}"
    );
    assert!(first.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_url_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[], &[("DATABASE_URL", "sqlite::memory:")]);
    let status = server.exit_status();
    let stderr = server.stderr();
    assert!(!status.success());
    assert!(stderr.contains("in-memory"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_puts_the_demo_inventory_into_postgres_only_on_request() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();

    // Serving PostgreSQL never seeds it implicitly.
    let mut server = Server::start(dir.path(), &[], &[("DATABASE_URL", &db.url)]);
    let channel = server.ready().await;
    let status = create(&channel, "acct-demo", demo_request("d-demo-ok", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "no demo account yet");

    let output = Command::new(BINARY)
        .arg("seed-demo")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    create(&channel, "acct-demo", demo_request("d-demo-ok", ""))
        .await
        .expect("the demo disk after seed-demo");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_subcommand_reports_a_serving_server_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[], &[]);
    server.ready().await;
    let probe = |addr: &str| {
        Command::new(BINARY)
            .arg("health")
            .env_clear()
            .env("SNAPSHOTD_LISTEN", addr)
            .output()
            .unwrap()
    };

    let serving = probe(&server.addr);
    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");

    let addr = server.addr.clone();
    assert!(server.terminate().success());
    assert!(!probe(&addr).status.success(), "no server, no health");
}

async fn describe_demo(channel: &Channel, snapshot_id: &str) -> pb::Snapshot {
    let request = pb::DescribeSnapshotsRequest {
        snapshot_ids: vec![snapshot_id.to_owned()],
        ..Default::default()
    };
    let mut page = pb::snapshot_service_client::SnapshotServiceClient::new(channel.clone())
        .describe_snapshots(as_account("acct-demo", request))
        .await
        .expect("DescribeSnapshots")
        .into_inner();
    assert_eq!(
        page.snapshots.len(),
        1,
        "the acknowledged snapshot is there"
    );
    page.snapshots.remove(0)
}

/// A server stopped (SIGTERM) or killed (SIGKILL) mid-copy loses no acknowledged snapshot, and
/// the next server finishes the copy.
async fn a_copy_survives_the_server(backend: Backend, stop: impl FnOnce(Server)) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(backend).await;
    if backend == Backend::Postgres {
        let seeded = Command::new(BINARY)
            .arg("seed-demo")
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(seeded.status.success(), "{seeded:?}");
    }
    // The demo disk holds 40 GiB: three seconds at this rate.
    let env = [
        ("SNAPSHOTD_COPY_RATE_MIBPS", "13654"),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let mut first = Server::start(dir.path(), &[], &env);
    let channel = first.ready().await;
    let created = create(&channel, "acct-demo", demo_request("d-demo-ok", ""))
        .await
        .expect("acknowledged");
    let started = Instant::now();
    stop(first);

    let mut second = Server::start(dir.path(), &[], &env);
    let channel = second.ready().await;
    let snapshot = describe_demo(&channel, &created.snapshot_id).await;
    if started.elapsed() < Duration::from_secs(2) {
        assert_eq!(snapshot.status(), pb::SnapshotStatus::Progressing);
    }
    loop {
        let snapshot = describe_demo(&channel, &created.snapshot_id).await;
        if snapshot.status() == pb::SnapshotStatus::Accomplished {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the copy finishes after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(second.terminate().success());
}

async fn a_server_stopped_mid_copy_loses_nothing_and_the_copy_finishes_after_restart(
    backend: Backend,
) {
    a_copy_survives_the_server(backend, |server| assert!(server.terminate().success())).await;
}

async fn a_server_killed_mid_copy_loses_nothing_and_the_copy_finishes_after_restart(
    backend: Backend,
) {
    a_copy_survives_the_server(backend, Server::kill).await;
}

crate::on_both_backends!(
    a_server_stopped_mid_copy_loses_nothing_and_the_copy_finishes_after_restart,
    a_server_killed_mid_copy_loses_nothing_and_the_copy_finishes_after_restart,
    the_check_subcommand_passes_on_sound_data_and_fails_on_a_breach,
);

async fn the_check_subcommand_passes_on_sound_data_and_fails_on_a_breach(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let check = || {
        Command::new(BINARY)
            .arg("check")
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap()
    };
    let sound = check();
    assert!(sound.status.success(), "{sound:?}");
    assert!(String::from_utf8_lossy(&sound.stdout).contains("every promise holds"));

    let mut server = Server::start(
        Path::new("."),
        &[],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("SNAPSHOTD_DEMO", "true"),
        ],
    );
    let channel = server.ready().await;
    // The demo inventory: SQLite gets it from SNAPSHOTD_DEMO, PostgreSQL only on request.
    if backend == Backend::Postgres {
        let seeded = Command::new(BINARY)
            .arg("seed-demo")
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(seeded.status.success(), "{seeded:?}");
    }
    create(&channel, "acct-demo", demo_request("d-demo-ok", ""))
        .await
        .unwrap();
    assert!(server.terminate().success());
    let breach = "UPDATE disks SET snapshot_count = 9 WHERE disk_id = 'd-demo-ok'";
    match backend {
        Backend::Postgres => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::raw_sql(breach).execute(&mut conn).await.unwrap();
        }
        Backend::Sqlite => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::raw_sql(breach).execute(&mut conn).await.unwrap();
        }
    }

    let broken = check();
    assert!(!broken.status.success(), "{broken:?}");
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(
        report.contains("BROKEN a disk's snapshot count"),
        "{report}"
    );
}

/// Every snapshot id of `account`, walking DescribeSnapshots to the end.
async fn all_snapshot_ids(channel: &Channel, account: &str) -> std::collections::HashSet<String> {
    let mut client = pb::snapshot_service_client::SnapshotServiceClient::new(channel.clone());
    let mut ids = std::collections::HashSet::new();
    let mut next_token = String::new();
    let mut pages = 0;
    loop {
        count_walk_page(&mut pages, "DescribeSnapshots");
        let request = pb::DescribeSnapshotsRequest {
            max_results: 100,
            next_token: next_token.clone(),
            ..Default::default()
        };
        let page = client
            .describe_snapshots(as_account(account, request))
            .await
            .expect("DescribeSnapshots")
            .into_inner();
        ids.extend(page.snapshots.into_iter().map(|s| s.snapshot_id));
        if page.next_token.is_empty() {
            return ids;
        }
        next_token = page.next_token;
    }
}

const CRASH_DISKS: usize = 64;
/// Creates acknowledged on each disk before the kill.
const KILL_AFTER: usize = 2;

/// What the load saw in one round: the ids acknowledged on each disk, and every answer before
/// the kill that was neither a success nor the expected "copy still running" refusal.
struct RoundLoad {
    acknowledged: Vec<Vec<String>>,
    unexpected: Vec<String>,
}

/// Creates snapshots from 64 tasks (one disk each, a new client token per call) until the
/// server stops answering. `killed_at` is set just before the test sends SIGKILL: an error seen
/// before it was set is not the kill's doing, and is reported as unexpected.
async fn load_until_the_server_dies(
    channel: Channel,
    round: usize,
    killed_at: Arc<OnceLock<Instant>>,
    acknowledged_per_disk: Arc<Vec<AtomicUsize>>,
) -> RoundLoad {
    let per_disk = crate::helpers::concurrently(CRASH_DISKS, |n| {
        let channel = channel.clone();
        let killed_at = killed_at.clone();
        let acknowledged_per_disk = acknowledged_per_disk.clone();
        async move {
            let mut ids = Vec::new();
            let mut unexpected = Vec::new();
            for attempt in 0.. {
                let request = pb::CreateSnapshotRequest {
                    disk_id: format!("d-acct-a-{n}"),
                    client_token: format!("r{round}-t{n}-a{attempt}"),
                    ..Default::default()
                };
                match create(&channel, "acct-a", request).await {
                    Ok(response) => {
                        ids.push(response.snapshot_id);
                        acknowledged_per_disk[n].fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status)
                        if status.code() == Code::FailedPrecondition
                            && status.get_details_error_info().is_some_and(|info| {
                                info.reason == "IncorrectDiskStatus.CreatingSnapshot"
                            }) =>
                    {
                        // The disk's copy is still running.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(status) => {
                        if killed_at.get().is_none() {
                            unexpected.push(format!("disk {n} before the kill: {status:?}"));
                        }
                        break; // the server is gone, or the test fails on `unexpected`
                    }
                }
            }
            (ids, unexpected)
        }
    })
    .await;
    let mut load = RoundLoad {
        acknowledged: Vec::new(),
        unexpected: Vec::new(),
    };
    for (ids, unexpected) in per_disk {
        load.acknowledged.push(ids);
        load.unexpected.extend(unexpected);
    }
    load
}

/// SIGKILL under 64-way load, three times: every acknowledged snapshot is there after the
/// restart, the stored data keeps every promise, and the service goes on.
async fn sigkill_under_load_loses_no_acknowledged_snapshot(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(backend).await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("SNAPSHOTD_ADMIN_TOKEN", crate::helpers::ADMIN_TOKEN),
        ("SNAPSHOTD_DEMO", "false"),
        // 40 GiB in 0.2 s: disks free up quickly, so the load keeps writing.
        ("SNAPSHOTD_COPY_RATE_MIBPS", "204800"),
        ("SNAPSHOTD_WORKER_INTERVAL", "50ms"),
        ("SNAPSHOTD_SNAPSHOT_QUOTA", "10000"),
    ];
    let mut acknowledged = std::collections::HashSet::new();
    for round in 0..3 {
        let mut server = Server::start(dir.path(), &[], &env);
        let channel = server.ready().await;
        if round == 0 {
            let world = crate::helpers::world("acct-a", CRASH_DISKS);
            let mut inventory =
                pb::inventory_service_client::InventoryServiceClient::new(channel.clone());
            inventory
                .put_account(crate::helpers::as_admin(
                    crate::helpers::put_account_request(world.account.clone()),
                ))
                .await
                .unwrap();
            inventory
                .put_instance(crate::helpers::as_admin(
                    crate::helpers::put_instance_request(world.instance.clone()),
                ))
                .await
                .unwrap();
            for disk in world.disks {
                inventory
                    .put_disk(crate::helpers::as_admin(crate::helpers::put_disk_request(
                        disk,
                    )))
                    .await
                    .unwrap();
            }
        }
        let stored = all_snapshot_ids(&channel, "acct-a").await;
        let lost: Vec<_> = acknowledged.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );

        let killed_at = Arc::new(OnceLock::new());
        let acknowledged_per_disk: Arc<Vec<AtomicUsize>> =
            Arc::new((0..CRASH_DISKS).map(|_| AtomicUsize::new(0)).collect());
        let load = tokio::spawn(load_until_the_server_dies(
            channel,
            round,
            killed_at.clone(),
            acknowledged_per_disk.clone(),
        ));
        // The kill comes once every disk has had KILL_AFTER creates acknowledged (its copies
        // finish in 0.2 s, so the load is writing all along), or after PATIENCE, when the
        // assertions below say which disks lagged.
        let deadline = Instant::now() + crate::helpers::PATIENCE;
        while Instant::now() < deadline
            && !load.is_finished()
            && acknowledged_per_disk
                .iter()
                .any(|count| count.load(Ordering::SeqCst) < KILL_AFTER)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed_at.set(Instant::now()).unwrap();
        server.kill();
        let load = tokio::time::timeout(crate::helpers::PATIENCE, load)
            .await
            .expect("every client stops once the server is killed")
            .unwrap();
        assert!(
            load.unexpected.is_empty(),
            "round {round}: answers other than success or a running copy before the kill: {:?}",
            load.unexpected
        );
        // Every disk was written KILL_AFTER times before the kill (a copy takes 0.2 s).
        let idle: Vec<(usize, usize)> = (0..CRASH_DISKS)
            .map(|n| (n, load.acknowledged[n].len()))
            .filter(|&(_, count)| count < KILL_AFTER)
            .collect();
        assert!(
            idle.is_empty(),
            "round {round}: disks (number, acknowledged) with fewer than {KILL_AFTER} \
             acknowledged snapshots before the kill: {idle:?}"
        );
        let count: usize = load.acknowledged.iter().map(Vec::len).sum();
        eprintln!("{backend:?} round {round}: {count} acknowledged before the SIGKILL");
        acknowledged.extend(load.acknowledged.into_iter().flatten());
    }

    let mut server = Server::start(dir.path(), &[], &env);
    let channel = server.ready().await;
    let stored = all_snapshot_ids(&channel, "acct-a").await;
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    eprintln!(
        "{backend:?}: 3 SIGKILLs under {CRASH_DISKS}-way load, {} acknowledged, 0 lost",
        acknowledged.len()
    );
    assert!(server.terminate().success());
    let check = Command::new(BINARY)
        .args(["check", "--snapshot-quota", "10000"])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

crate::on_both_backends!(sigkill_under_load_loses_no_acknowledged_snapshot);
