//! SimulationService (`--simulation-controls`): the clock moved forward for everything that
//! reads it, a disk's next copy failed, a copy slowed, stalled and resumed; validation; served
//! and listed only with the flag; shared by two replicas on one PostgreSQL.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use snapshotd::config::ListenOrOff;
use snapshotd::demo::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET};
use snapshotd::pb;
use snapshotd::pb::simulation_service_client::SimulationServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_reflection::pb::v1;

use crate::assertions::{Detail, assert_error};
use crate::ecs_client::EcsClient;
use crate::helpers::{
    Backend, Options, PATIENCE, TestApp, as_account, as_admin, attached_disk, create_request,
    spawn_app, spawn_app_with, spawn_replica, world,
};
use crate::on_both_backends;

on_both_backends!(
    the_clock_moves_forward_for_copies_retention_and_new_disks,
    signed_requests_are_still_dated_by_the_real_time,
    fail_next_copy_fails_the_disks_next_snapshot_halfway_and_frees_the_disk,
    a_copy_slows_stalls_and_resumes_at_the_rate_set,
    a_bad_request_is_refused_and_changes_nothing,
    a_new_id_spells_its_second_on_the_services_clock,
);

const ACCOUNT: &str = "acct-sim";

/// A server with SimulationService and its worker running on wall-clock time.
async fn spawn_simulated(backend: Backend) -> TestApp {
    spawn_app_with(backend, simulated()).await
}

fn simulated() -> Options {
    Options {
        configure: Box::new(|config| config.simulation_controls = true),
        real_time: true,
        ..Options::default()
    }
}

fn simulation(app: &TestApp) -> SimulationServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    SimulationServiceClient::new(channel)
}

async fn advance(app: &TestApp, seconds: i64) -> prost_types::Timestamp {
    simulation(app)
        .advance_clock(as_admin(pb::AdvanceClockRequest { seconds }))
        .await
        .expect("AdvanceClock")
        .into_inner()
        .now
        .expect("the time after")
}

async fn describe(app: &TestApp, snapshot_id: &str) -> Option<pb::Snapshot> {
    let request = pb::DescribeSnapshotsRequest {
        snapshot_ids: vec![snapshot_id.to_owned()],
        ..Default::default()
    };
    app.snapshots()
        .describe_snapshots(as_account(ACCOUNT, request))
        .await
        .expect("DescribeSnapshots")
        .into_inner()
        .snapshots
        .pop()
}

/// Polls `look` until it returns `Some`, for at most [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match look().await {
            Ok(found) => return found,
            Err(now) => assert!(
                Instant::now() < deadline,
                "{PATIENCE:?} on, still not {what}: {now}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the snapshot to reach `status` (the worker acts on its own).
async fn wait_for_status(app: &TestApp, snapshot_id: &str, status: pb::SnapshotStatus) {
    eventually(&format!("{status:?}"), || async {
        match describe(app, snapshot_id).await {
            Some(snapshot) if snapshot.status() == status => Ok(()),
            Some(snapshot) => Err(format!("{:?} at {}%", snapshot.status(), snapshot.progress)),
            None => Err("gone".to_owned()),
        }
    })
    .await;
}

async fn fail_next_copy(app: &TestApp, disk_id: &str) {
    simulation(app)
        .fail_next_copy(as_admin(pb::FailNextCopyRequest {
            disk_id: disk_id.into(),
        }))
        .await
        .expect("FailNextCopy");
}

async fn create(app: &TestApp, disk_id: &str) -> String {
    app.create_on(ACCOUNT, disk_id)
        .await
        .expect("CreateSnapshot")
        .snapshot_id
}

fn seconds_from_now(at: &prost_types::Timestamp) -> i64 {
    at.seconds - chrono::Utc::now().timestamp()
}

async fn the_clock_moves_forward_for_copies_retention_and_new_disks(backend: Backend) {
    let app = spawn_simulated(backend).await;
    app.seed(&world(ACCOUNT, 1)).await;
    let disk = "d-acct-sim-0"; // 40 GiB at 256 MiB/s: 160 s
    let mut request = create_request(disk);
    request.retention_days = 1;
    let snapshot_id = app
        .create(ACCOUNT, request)
        .await
        .expect("CreateSnapshot")
        .snapshot_id;

    // Copy progress: an hour later the worker has finished it.
    let now = advance(&app, 3600).await;
    let ahead = seconds_from_now(&now);
    assert!((3595..=3605).contains(&ahead), "an hour ahead: {ahead} s");
    wait_for_status(&app, &snapshot_id, pb::SnapshotStatus::Accomplished).await;

    // Retention: two days later the worker has released it.
    advance(&app, 2 * 24 * 3600).await;
    eventually("released", || async {
        match describe(&app, &snapshot_id).await {
            None => Ok(()),
            Some(snapshot) => Err(format!("still there: {:?}", snapshot.status())),
        }
    })
    .await;

    // The initialization window: a disk created "now" on the service's clock (two days and an
    // hour ahead of this machine's) is initializing for an hour of the service's time.
    let mut fresh = attached_disk(ACCOUNT, &format!("i-{ACCOUNT}"), "d-acct-sim-new");
    fresh.created_at = Some(advance(&app, 1).await);
    app.put_disk(fresh).await.expect("PutDisk");
    let refused = app.create_on(ACCOUNT, "d-acct-sim-new").await.unwrap_err();
    assert_error(
        &refused,
        Code::FailedPrecondition,
        "IncorrectDiskStatus.Initializing",
        "403",
        Detail::PreconditionFailureAndRetry,
    );
    advance(&app, 3600).await;
    create(&app, "d-acct-sim-new").await;
    app.assert_invariants().await;
}

/// A generated id's first 7 characters are its creation second in base 36, read off the
/// service's clock (docs/decisions.md): with the clock a year ahead, a new id spells next year
/// and sorts after today's.
async fn a_new_id_spells_its_second_on_the_services_clock(backend: Backend) {
    let app = spawn_simulated(backend).await;
    app.seed(&world(ACCOUNT, 2)).await;
    let today = create(&app, "d-acct-sim-0").await;
    advance(&app, 365 * 24 * 3600).await;
    let next_year = create(&app, "d-acct-sim-1").await;
    let mut seconds = Vec::new();
    for id in [&today, &next_year] {
        let created_at = describe(&app, id)
            .await
            .and_then(|snapshot| snapshot.created_at)
            .expect("the snapshot and its created_at");
        assert_eq!(
            &id[2..9],
            base36(created_at.seconds),
            "{id} made at {created_at:?}"
        );
        seconds.push(created_at.seconds);
    }
    let apart = seconds[1] - seconds[0];
    assert!(apart >= 365 * 24 * 3600, "made {apart} s apart");
    assert!(next_year > today, "{next_year} sorts after {today}");
}

/// `seconds` in base 36, 7 digits wide.
fn base36(mut seconds: i64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut spelled = Vec::new();
    for _ in 0..7 {
        spelled.push(DIGITS[(seconds % 36) as usize]);
        seconds /= 36;
    }
    spelled.reverse();
    String::from_utf8(spelled).expect("ASCII")
}

/// Clients sign with their real clocks: a moved service clock must not expire every request
/// (nor forget the nonces of the real last 15 minutes).
async fn signed_requests_are_still_dated_by_the_real_time(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                config.simulation_controls = true;
                config.ecs_listen = ListenOrOff::At(SocketAddr::from(([127, 0, 0, 1], 0)));
            }),
            real_time: true,
            ..Options::default()
        },
    )
    .await;
    snapshotd::demo::seed_demo(&app.service, chrono::Utc::now())
        .await
        .expect("seeding the demo inventory");
    let client = EcsClient::new(
        app.ecs_addr.expect("the ECS edge"),
        DEMO_ACCESS_KEY_ID,
        DEMO_ACCESS_KEY_SECRET,
    );
    let query = client.signed_query("DescribeSnapshots", &[], chrono::Utc::now());
    assert_eq!(client.get(&query).await.status, 200);
    advance(&app, 3600).await;
    let fresh = client
        .call("DescribeSnapshots", &[], chrono::Utc::now())
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    // The worker's nonce sweep runs on the real time too: the first request's nonce is
    // still remembered.
    app.tick_until_idle().await;
    let replayed = client.get(&query).await;
    assert_eq!(
        (replayed.status, replayed.code()),
        (400, "SignatureNonceUsed"),
        "{}",
        replayed.text
    );
}

async fn fail_next_copy_fails_the_disks_next_snapshot_halfway_and_frees_the_disk(backend: Backend) {
    let app = spawn_simulated(backend).await;
    app.seed(&world(ACCOUNT, 2)).await;
    let (doomed_disk, other_disk) = ("d-acct-sim-0", "d-acct-sim-1");
    fail_next_copy(&app, doomed_disk).await;

    let mut watch = app
        .snapshots()
        .watch_snapshots(as_account(
            ACCOUNT,
            pb::WatchSnapshotsRequest {
                snapshot_ids: vec![],
                disk_id: doomed_disk.into(),
            },
        ))
        .await
        .expect("WatchSnapshots")
        .into_inner();
    let doomed = create(&app, doomed_disk).await;
    let spared = create(&app, other_disk).await;
    // A 160 s copy fails at 80 s: 60 s in (and however long this machine took), copying.
    advance(&app, 60).await;
    let copying = describe(&app, &doomed).await.expect("the doomed snapshot");
    assert_eq!(copying.status(), pb::SnapshotStatus::Progressing);
    assert!((37..=49).contains(&copying.progress), "{copying:?}");
    // Armed again while its pick copies: the pick still fails.
    fail_next_copy(&app, doomed_disk).await;
    advance(&app, 20).await;
    wait_for_status(&app, &doomed, pb::SnapshotStatus::Failed).await;
    // A watcher of the disk is told.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let message = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("the watcher told of the failure in time")
            .expect("the watch goes on")
            .expect("the watch goes on");
        if let Some(snapshot) = message.snapshot
            && snapshot.snapshot_id == doomed
            && snapshot.status() == pb::SnapshotStatus::Failed
        {
            break;
        }
    }
    drop(watch);
    assert_eq!(
        describe(&app, &spared).await.unwrap().status(),
        pb::SnapshotStatus::Progressing,
        "another disk's copy goes on"
    );

    // The disk is free again; its next snapshot is the second call's, the one after that is
    // not doomed; a failed one can be deleted.
    let second_doomed = create(&app, doomed_disk).await;
    advance(&app, 3600).await;
    wait_for_status(&app, &second_doomed, pb::SnapshotStatus::Failed).await;
    wait_for_status(&app, &spared, pb::SnapshotStatus::Accomplished).await;
    let next = create(&app, doomed_disk).await;
    advance(&app, 3600).await;
    wait_for_status(&app, &next, pb::SnapshotStatus::Accomplished).await;
    app.snapshots()
        .delete_snapshot(as_account(
            ACCOUNT,
            pb::DeleteSnapshotRequest {
                snapshot_id: doomed.clone(),
                force: false,
            },
        ))
        .await
        .expect("DeleteSnapshot of the failed snapshot");
    assert!(describe(&app, &doomed).await.is_none());
    app.assert_invariants().await;
}

async fn a_copy_slows_stalls_and_resumes_at_the_rate_set(backend: Backend) {
    let app = spawn_simulated(backend).await;
    app.seed(&world(ACCOUNT, 1)).await;
    let disk = "d-acct-sim-0"; // 40 GiB = 40,960 MiB
    let set_rate = |mibps: i64| {
        let mut client = simulation(&app);
        async move {
            client
                .set_copy_rate(as_admin(pb::SetCopyRateRequest {
                    disk_id: disk.into(),
                    mibps,
                }))
                .await
                .expect("SetCopyRate");
        }
    };
    let snapshot_id = create(&app, disk).await;
    // 40 s at 256 MiB/s: a quarter (more, by however long this machine takes). Then stalled:
    // where it stopped, an hour later.
    advance(&app, 40).await;
    set_rate(0).await;
    let stopped = describe(&app, &snapshot_id).await.unwrap().progress;
    assert!((25..=40).contains(&stopped), "{stopped}%");
    advance(&app, 3600).await;
    let stalled = describe(&app, &snapshot_id).await.unwrap();
    assert_eq!(stalled.status(), pb::SnapshotStatus::Progressing);
    assert_eq!(stalled.progress, stopped, "{stalled:?}");
    assert_eq!(stalled.remain_time_seconds, 3600, "{stalled:?}");
    // 1 MiB/s for 10 s adds 10 MiB (0.02 %): where it was.
    set_rate(1).await;
    advance(&app, 10).await;
    assert_eq!(
        describe(&app, &snapshot_id).await.unwrap().progress,
        stopped
    );
    // Fast again: the worker finishes it at once, without the clock moving.
    set_rate(1024 * 1024).await;
    wait_for_status(&app, &snapshot_id, pb::SnapshotStatus::Accomplished).await;
    app.assert_invariants().await;
}

/// A call's name, what it answered, and the error it should have been.
type Case = (
    &'static str,
    Result<(), tonic::Status>,
    Code,
    &'static str,
    &'static str,
    Detail,
);

async fn a_bad_request_is_refused_and_changes_nothing(backend: Backend) {
    let app = spawn_simulated(backend).await;
    app.seed(&world(ACCOUNT, 1)).await;
    let mut client = simulation(&app);
    let advance_by = |seconds| pb::AdvanceClockRequest { seconds };
    for seconds in [0, -1, 316_224_001, i64::MIN, i64::MAX] {
        let status = client
            .advance_clock(as_admin(advance_by(seconds)))
            .await
            .unwrap_err();
        assert_error(
            &status,
            Code::InvalidArgument,
            "InvalidParameter",
            "400",
            Detail::BadRequest("seconds"),
        );
    }
    let fail = |disk_id: &str| pb::FailNextCopyRequest {
        disk_id: disk_id.into(),
    };
    let rate = |disk_id: &str, mibps| pb::SetCopyRateRequest {
        disk_id: disk_id.into(),
        mibps,
    };
    let cases: [Case; 8] = [
        (
            "no disk",
            client.fail_next_copy(as_admin(fail(""))).await.map(drop),
            Code::InvalidArgument,
            "MissingParameter",
            "400",
            Detail::BadRequest("disk_id"),
        ),
        (
            "malformed disk",
            client.fail_next_copy(as_admin(fail("x"))).await.map(drop),
            Code::InvalidArgument,
            "DiskId.ValueNotSupported",
            "403",
            Detail::BadRequest("disk_id"),
        ),
        (
            "unknown disk",
            client
                .fail_next_copy(as_admin(fail("d-nobody")))
                .await
                .map(drop),
            Code::NotFound,
            "InvalidDiskId.NotFound",
            "404",
            Detail::ResourceInfo("disk"),
        ),
        (
            "unknown disk's rate",
            client
                .set_copy_rate(as_admin(rate("d-nobody", 1)))
                .await
                .map(drop),
            Code::NotFound,
            "InvalidDiskId.NotFound",
            "404",
            Detail::ResourceInfo("disk"),
        ),
        (
            "negative rate",
            client
                .set_copy_rate(as_admin(rate("d-acct-sim-0", -1)))
                .await
                .map(drop),
            Code::InvalidArgument,
            "InvalidParameter",
            "400",
            Detail::BadRequest("mibps"),
        ),
        (
            "rate past 1 TiB/s",
            client
                .set_copy_rate(as_admin(rate("d-acct-sim-0", 1024 * 1024 + 1)))
                .await
                .map(drop),
            Code::InvalidArgument,
            "InvalidParameter",
            "400",
            Detail::BadRequest("mibps"),
        ),
        (
            "no admin token",
            client
                .fail_next_copy(Request::new(fail("d-acct-sim-0")))
                .await
                .map(drop),
            Code::Unauthenticated,
            "InvalidAdminToken",
            "401",
            Detail::None,
        ),
        (
            "a tenant",
            client
                .advance_clock(as_account(ACCOUNT, advance_by(60)))
                .await
                .map(drop),
            Code::Unauthenticated,
            "InvalidAdminToken",
            "401",
            Detail::None,
        ),
    ];
    for (case, result, code, reason, http_status, detail) in cases {
        let status = result.expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert_error(&status, code, reason, http_status, detail);
    }
    assert_eq!(app.count_rows("simulation_clock").await, 0);
    assert_eq!(app.count_rows("simulated_disks").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_flag_the_service_is_neither_served_nor_listed() {
    for (simulated, served) in [(false, false), (true, true)] {
        let app = if simulated {
            spawn_simulated(Backend::Sqlite).await
        } else {
            spawn_app(Backend::Sqlite).await
        };
        let answer = simulation(&app)
            .advance_clock(as_admin(pb::AdvanceClockRequest { seconds: 1 }))
            .await;
        match (&answer, served) {
            (Ok(_), true) => {}
            (Err(status), false) => assert_eq!(status.code(), Code::Unimplemented, "{status:?}"),
            _ => panic!("served = {served}: {answer:?}"),
        }
        let listed = list_services(&app).await;
        assert_eq!(
            listed.contains(&"ecs.snapshot.v1.SimulationService".to_owned()),
            served,
            "{listed:?}"
        );
        assert!(listed.contains(&"ecs.snapshot.v1.SnapshotService".to_owned()));
        if !served {
            assert_eq!(app.count_rows("simulation_clock").await, 0);
        }
    }
}

async fn list_services(app: &TestApp) -> Vec<String> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// What one replica sets, the other acts on: its clock, a doomed copy it created, a rate. The
/// first replica's worker sleeps, so the second's finishes the copies, with what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_share_what_the_controls_set() {
    let first = spawn_app_with(
        Backend::Postgres,
        Options {
            configure: Box::new(|config| {
                config.simulation_controls = true;
                config.worker_interval = Duration::from_secs(24 * 3600);
            }),
            real_time: true,
            ..Options::default()
        },
    )
    .await;
    let second = spawn_replica(&first, simulated()).await;
    first.seed(&world(ACCOUNT, 2)).await;
    let (doomed_disk, stalled_disk) = ("d-acct-sim-0", "d-acct-sim-1");

    simulation(&first)
        .fail_next_copy(as_admin(pb::FailNextCopyRequest {
            disk_id: doomed_disk.into(),
        }))
        .await
        .expect("FailNextCopy on the first");
    let stalled = create(&second, stalled_disk).await;
    simulation(&first)
        .set_copy_rate(as_admin(pb::SetCopyRateRequest {
            disk_id: stalled_disk.into(),
            mibps: 0,
        }))
        .await
        .expect("SetCopyRate on the first");
    // Created on the second after the first's FailNextCopy: doomed on whichever replica looks
    // at it, once it has read the first's call.
    let doomed = create(&second, doomed_disk).await;

    // The clock moved on the first: the second's describe computes progress with it.
    advance(&first, 120).await;
    eventually("the second replica's clock moved", || async {
        let snapshot = describe(&second, &doomed)
            .await
            .expect("the doomed snapshot");
        if snapshot.status() == pb::SnapshotStatus::Failed {
            Ok(())
        } else {
            Err(format!("{:?} at {}%", snapshot.status(), snapshot.progress))
        }
    })
    .await;
    advance(&first, 3600).await;
    let snapshot = describe(&second, &stalled).await.unwrap();
    assert_eq!(snapshot.status(), pb::SnapshotStatus::Progressing);
    assert!(snapshot.progress < 10, "stalled at once: {snapshot:?}");
    // Fast again on the first: the second's worker finishes it, though it had dated it by the
    // stall.
    simulation(&first)
        .set_copy_rate(as_admin(pb::SetCopyRateRequest {
            disk_id: stalled_disk.into(),
            mibps: 1024 * 1024,
        }))
        .await
        .expect("SetCopyRate on the first");
    wait_for_status(&second, &stalled, pb::SnapshotStatus::Accomplished).await;
    second.assert_invariants().await;
    second.stop().await;
}
