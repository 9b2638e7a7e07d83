//! The embedded store on a full disk (hostile-client findings, issue 16 #3): writes are answered
//! UNAVAILABLE `StorageFull` with RetryInfo, readiness is NOT_SERVING while it lasts, and every
//! kind of write works again by itself once there is space.
//!
//! The database lives on a tmpfs the test mounts (8 MiB), filled up with a file it removes
//! later. Mounting needs root (as CI runs); where it is not permitted the test says so and stops.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use snapshotd::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{Backend, Options, TestApp, as_account, spawn_app_with, world};

/// A tmpfs mounted for one test, unmounted when it ends.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if output.status.success() {
            Ok(Self { dir })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros into `path` until the filesystem refuses more.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("the filler file");
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

async fn health(app: &TestApp) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn health_becomes(app: &TestApp, expected: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = health(app).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {status:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CreateSnapshot whose rows take a few KiB (20 long tags, a long description).
fn bulky_request(disk_id: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        disk_id: disk_id.to_owned(),
        description: "x".repeat(256),
        tags: (0..20)
            .map(|n| pb::Tag {
                key: format!("key-{n}"),
                value: "v".repeat(128),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_answers_storage_full_and_writes_work_again_once_space_is_back() {
    let tmpfs = match Tmpfs::mount("8m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("NOT RUN: mounting a tmpfs is not permitted here ({why}); run as root");
            return;
        }
    };
    let url = format!("sqlite://{}", tmpfs.path().join("snapshotd.db").display());
    let app = spawn_app_with(
        Backend::Sqlite,
        Options {
            configure: Box::new(move |config| config.database_url = url),
            ..Options::default()
        },
    )
    .await;
    let disks = 400;
    app.seed(&world("acct-a", disks)).await;
    fill(&tmpfs.path().join("filler"));

    // Write until the disk is full; every failure is StorageFull, never INTERNAL.
    let mut full = None;
    for n in 0..disks - 10 {
        let disk_id = format!("d-acct-a-{n}");
        match app.create("acct-a", bulky_request(&disk_id)).await {
            Ok(_) => {}
            Err(status) => {
                assert_error(
                    &status,
                    Code::Unavailable,
                    "StorageFull",
                    "503",
                    Detail::RetryInfo,
                );
                full = Some(n);
                break;
            }
        }
    }
    let full = full.expect("the disk filled up");
    health_becomes(&app, ServingStatus::NotServing).await;
    // Still full: a write is refused the same way, or fits (SQLite may reuse log space it has
    // checkpointed meanwhile); never anything else. Reads still work.
    if let Err(status) = app
        .create("acct-a", bulky_request(&format!("d-acct-a-{}", full + 1)))
        .await
    {
        assert_error(
            &status,
            Code::Unavailable,
            "StorageFull",
            "503",
            Detail::RetryInfo,
        );
    }
    app.snapshots()
        .describe_snapshots(as_account(
            "acct-a",
            pb::DescribeSnapshotsRequest::default(),
        ))
        .await
        .expect("reads work on a full disk");

    // Space is back: the server recovers by itself, and every kind of write works again.
    std::fs::remove_file(tmpfs.path().join("filler")).unwrap();
    health_becomes(&app, ServingStatus::Serving).await;
    let created = app
        .create("acct-a", bulky_request(&format!("d-acct-a-{}", full + 2)))
        .await
        .expect("CreateSnapshot works again");
    app.snapshots()
        .delete_snapshot(as_account(
            "acct-a",
            pb::DeleteSnapshotRequest {
                snapshot_id: created.snapshot_id,
                force: false,
            },
        ))
        .await
        .expect("DeleteSnapshot works again");
    let mut moved = world("acct-a", 1).disks.remove(0);
    moved.disk_id = "d-after-the-full-disk".to_owned();
    app.put_disk(moved).await.expect("PutDisk works again");
    app.tick_until_idle().await;
    app.assert_invariants().await;
}
