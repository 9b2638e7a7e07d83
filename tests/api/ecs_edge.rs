//! The ECS-compatible HTTP edge against the real server: the same codes as the gRPC edge for
//! every row of the error table, one snapshot whichever edge made it, signature and nonce
//! refusals that change nothing, hostile input, the rate limit, and the official Python SDK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use snapshotd::config::ListenOrOff;
use snapshotd::demo::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, DEMO_ACCESS_KEYS};
use snapshotd::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::create_snapshot::RefusingBackend;
use crate::ecs_client::{EcsAnswer, EcsClient, encode};
use crate::helpers::{
    Backend, Options, TestApp, as_account, as_admin, spawn_app_with, spawn_replica,
};
use crate::on_both_backends;

on_both_backends!(
    every_error_row_answers_the_same_code_on_both_edges,
    a_backend_that_cannot_start_the_copy_answers_the_same_on_both_edges,
    a_snapshot_made_on_one_edge_is_the_same_snapshot_on_the_other,
    signature_and_nonce_refusals_write_nothing,
    describe_delete_and_image_speak_ecs_formats,
    access_keys_name_one_account_and_never_return_their_secret,
    the_official_python_sdk_walks_through_the_api,
    one_signed_request_sent_many_times_at_once_runs_once,
    numbered_pages_and_the_total_count_cover_every_snapshot_once,
    the_describe_filters_list_what_the_grpc_filters_list,
    modify_snapshot_attribute_answers_as_the_grpc_edge_does,
);

/// InstanceId, SourceDiskType, Usage and the creation-time `Filter.N` pairs list what the gRPC
/// edge's filters list (one core), with the same TotalCount; their malformed values are refused
/// by name.
async fn the_describe_filters_list_what_the_grpc_filters_list(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    app.seed(&crate::helpers::world("acct-demo", 3)).await;
    let mut system_disk =
        crate::helpers::attached_disk("acct-demo", "i-acct-demo", "d-acct-demo-2");
    system_disk.r#type = pb::DiskType::System.into();
    app.put_disk(system_disk).await.expect("PutDisk");
    let start = server_now(&app);
    for n in 0..3 {
        app.create_on("acct-demo", &format!("d-acct-demo-{n}"))
            .await
            .expect("a snapshot");
        app.advance(std::time::Duration::from_secs(60));
    }
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);
    let ecs_time = |minutes: i64| {
        (start + chrono::TimeDelta::minutes(minutes))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let grpc_time = |minutes: i64| {
        Some(crate::helpers::proto_time(
            start + chrono::TimeDelta::minutes(minutes),
        ))
    };
    let (one, two) = (ecs_time(1), ecs_time(2));
    let cases: Vec<(Vec<(&str, &str)>, pb::DescribeSnapshotsRequest)> = vec![
        (
            vec![("InstanceId", "i-acct-demo")],
            pb::DescribeSnapshotsRequest {
                instance_id: "i-acct-demo".into(),
                ..Default::default()
            },
        ),
        (
            vec![("InstanceId", "i-nobody")],
            pb::DescribeSnapshotsRequest {
                instance_id: "i-nobody".into(),
                ..Default::default()
            },
        ),
        (
            vec![("SourceDiskType", "System")],
            pb::DescribeSnapshotsRequest {
                source_disk_type: pb::DiskType::System.into(),
                ..Default::default()
            },
        ),
        (
            vec![("SourceDiskType", "data")],
            pb::DescribeSnapshotsRequest {
                source_disk_type: pb::DiskType::Data.into(),
                ..Default::default()
            },
        ),
        (
            vec![("Usage", "none")],
            pb::DescribeSnapshotsRequest {
                usage: "none".into(),
                ..Default::default()
            },
        ),
        (
            vec![("Usage", "image")],
            pb::DescribeSnapshotsRequest {
                usage: "image".into(),
                ..Default::default()
            },
        ),
        (
            vec![
                ("Filter.1.Key", "CreationStartTime"),
                ("Filter.1.Value", &one),
            ],
            pb::DescribeSnapshotsRequest {
                created_after: grpc_time(1),
                ..Default::default()
            },
        ),
        (
            vec![
                ("Filter.2.Key", "CreationStartTime"),
                ("Filter.2.Value", &one),
                ("Filter.1.Key", "CreationEndTime"),
                ("Filter.1.Value", &two),
            ],
            pb::DescribeSnapshotsRequest {
                created_after: grpc_time(1),
                created_before: grpc_time(2),
                ..Default::default()
            },
        ),
    ];
    for (params, request) in cases {
        let answer = client.call("DescribeSnapshots", &params, now).await;
        assert_eq!(answer.status, 200, "{params:?}: {}", answer.text);
        let grpc = app
            .snapshots()
            .describe_snapshots(crate::helpers::as_account("acct-demo", request))
            .await
            .expect("DescribeSnapshots")
            .into_inner();
        let grpc_ids: Vec<String> = grpc.snapshots.into_iter().map(|s| s.snapshot_id).collect();
        assert_eq!(listed_ids(&answer), grpc_ids, "{params:?}");
        assert_eq!(answer.body["TotalCount"], grpc.total_count, "{params:?}");
    }
    // The minute format ECS documents is taken too.
    let minutes = (start + chrono::TimeDelta::minutes(2))
        .format("%Y-%m-%dT%H:%MZ")
        .to_string();
    let answer = client
        .call(
            "DescribeSnapshots",
            &[
                ("Filter.1.Key", "CreationEndTime"),
                ("Filter.1.Value", &minutes),
            ],
            now,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    for (params, named) in [
        (vec![("Filter.3.Key", "CreationStartTime")], "Filter.N"),
        (vec![("Filter.1.Key", "LastModifiedTime")], "Filter.N.Key"),
        (vec![("Filter.1.Value", one.as_str())], "Filter.N.Key"),
        (
            vec![
                ("Filter.1.Key", "CreationStartTime"),
                ("Filter.1.Value", "yesterday"),
            ],
            "Filter.N.Value",
        ),
        (
            vec![
                ("Filter.1.Key", "CreationStartTime"),
                ("Filter.1.Value", two.as_str()),
                ("Filter.2.Key", "CreationEndTime"),
                ("Filter.2.Value", one.as_str()),
            ],
            "Filter.N.Value",
        ),
        (vec![("Usage", "disk")], "Usage"),
        (vec![("SourceDiskType", "ssd")], "SourceDiskType"),
        (vec![("InstanceId", "i 1")], "InstanceId"),
        // The gRPC edge's range, 1970 to 9999, and no leap second (found by a hostile review:
        // these answered 200 here while gRPC refused them).
        (
            vec![
                ("Filter.1.Key", "CreationStartTime"),
                ("Filter.1.Value", "1969-12-31T23:59Z"),
            ],
            "Filter.N.Value",
        ),
        (
            vec![
                ("Filter.1.Key", "CreationEndTime"),
                ("Filter.1.Value", "+10000-01-01T00:00Z"),
            ],
            "Filter.N.Value",
        ),
        (
            vec![
                ("Filter.1.Key", "CreationEndTime"),
                ("Filter.1.Value", "2016-12-31T23:59:60Z"),
            ],
            "Filter.N.Value",
        ),
        // A second spelling of Filter.1 was read as the same filter and one bound dropped.
        (
            vec![
                ("Filter.1.Key", "CreationStartTime"),
                ("Filter.1.Value", one.as_str()),
                ("Filter.01.Key", "CreationStartTime"),
                ("Filter.01.Value", two.as_str()),
            ],
            "Filter.N",
        ),
    ] {
        let refused = client.call("DescribeSnapshots", &params, now).await;
        let (code, status) = ecs_code(&refused);
        assert!(
            matches!(code.as_str(), "InvalidParameter" | "MissingParameter") && status == 400,
            "{params:?}: {}",
            refused.text
        );
        assert!(
            refused.body["Message"].as_str().unwrap().contains(named),
            "{params:?} names {named}: {}",
            refused.text
        );
    }
}

async fn numbered_pages_and_the_total_count_cover_every_snapshot_once(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    app.seed(&crate::helpers::world("acct-demo", 5)).await;
    let mut made = Vec::new();
    for n in 0..5 {
        let id = app
            .create_on("acct-demo", &format!("d-acct-demo-{n}"))
            .await
            .expect("a snapshot")
            .snapshot_id;
        made.push(id);
    }
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);
    let mut listed = Vec::new();
    for (page, expected) in [("1", 2), ("2", 2), ("3", 1), ("4", 0)] {
        let answer = client
            .call(
                "DescribeSnapshots",
                &[("PageSize", "2"), ("PageNumber", page)],
                now,
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.body["TotalCount"], 5, "{}", answer.text);
        assert_eq!(answer.body["PageNumber"], page.parse::<u64>().unwrap());
        let ids = listed_ids(&answer);
        assert_eq!(ids.len(), expected, "page {page}: {}", answer.text);
        listed.extend(ids);
    }
    listed.sort();
    made.sort();
    assert_eq!(listed, made, "each snapshot on exactly one page");

    let filtered = client
        .call("DescribeSnapshots", &[("DiskId", "d-acct-demo-3")], now)
        .await;
    assert_eq!(
        filtered.body["TotalCount"], 1,
        "the count follows the filters"
    );
    let first = client
        .call("DescribeSnapshots", &[("MaxResults", "10")], now)
        .await;
    let token = first.body["NextToken"].as_str().unwrap().to_owned();
    assert!(token.is_empty(), "one page holds all five");
    for (page, why) in [("0", "PageNumber"), ("-1", "PageNumber")] {
        let refused = client
            .call("DescribeSnapshots", &[("PageNumber", page)], now)
            .await;
        assert_eq!(
            ecs_code(&refused),
            ("InvalidParameter".to_owned(), 400),
            "{page}"
        );
        assert!(refused.body["Message"].as_str().unwrap().contains(why));
    }
    let paged = client
        .call("DescribeSnapshots", &[("MaxResults", "2")], now)
        .await;
    let token = paged.body["NextToken"].as_str().unwrap().to_owned();
    let both = client
        .call(
            "DescribeSnapshots",
            &[("NextToken", &token), ("PageNumber", "2")],
            now,
        )
        .await;
    assert_eq!(
        ecs_code(&both),
        ("InvalidParameter".to_owned(), 400),
        "{}",
        both.text
    );
}

async fn one_signed_request_sent_many_times_at_once_runs_once(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    let client = Arc::new(client_of(&app, "acct-demo"));
    let query = Arc::new(client.signed_query_with(
        "CreateSnapshot",
        &[("DiskId", "d-demo-ok")],
        server_now(&app),
        "one-nonce-many-copies",
    ));
    let answers = crate::helpers::concurrently(24, |_| {
        let (client, query) = (Arc::clone(&client), Arc::clone(&query));
        async move { ecs_code(&client.get(&query).await) }
    })
    .await;
    let ran = answers.iter().filter(|(code, _)| code == "OK").count();
    let replays = answers
        .iter()
        .filter(|answer| **answer == ("SignatureNonceUsed".to_owned(), 400))
        .count();
    assert_eq!((ran, replays), (1, 23), "{answers:?}");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

/// Copies of one signed request that wait for the same nonce batch run once: the batch writes
/// their nonce once and tells the others it was used. (The nonce lane is held busy by a batch
/// waiting on a nonce another session is inserting, so the copies queue together.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_a_request_in_one_nonce_batch_run_once() {
    let app = Arc::new(spawn_ecs(Backend::Postgres, |_| {}).await);
    let client = Arc::new(client_of(&app, "acct-demo"));
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&app.db.url)
        .await
        .expect("connecting to the test database");
    let mut held = other.begin().await.expect("BEGIN");
    sqlx::query(
        "INSERT INTO signature_nonces (access_key_id, nonce, expires_at)
         VALUES ($1, 'held', now() + interval '1 hour')",
    )
    .bind(DEMO_ACCESS_KEY_ID)
    .execute(&mut *held)
    .await
    .expect("holding a nonce");
    let first = {
        let query = client.signed_query_with("DescribeSnapshots", &[], server_now(&app), "held");
        let client = Arc::clone(&client);
        tokio::spawn(async move { ecs_code(&client.get(&query).await) })
    };
    crate::helpers::wait_for_lock_waiters(&other, 1, "the first nonce batch, on the held nonce")
        .await;

    let query = Arc::new(client.signed_query_with(
        "CreateSnapshot",
        &[("DiskId", "d-demo-ok")],
        server_now(&app),
        "sent-eight-times",
    ));
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (client, query) = (Arc::clone(&client), Arc::clone(&query));
            tokio::spawn(async move { ecs_code(&client.get(&query).await) })
        })
        .collect();
    crate::helpers::wait_until("the eight copies queue for one batch", || {
        match app.service.nonce_backlog() {
            8 => Ok(()),
            queued => Err(format!("{queued} queued")),
        }
    })
    .await;
    held.rollback().await.expect("ROLLBACK");

    assert_eq!(first.await.unwrap(), ("OK".to_owned(), 200));
    let mut answers = Vec::new();
    for copy in copies {
        answers.push(copy.await.unwrap());
    }
    let ran = answers.iter().filter(|(code, _)| code == "OK").count();
    let replays = answers
        .iter()
        .filter(|answer| **answer == ("SignatureNonceUsed".to_owned(), 400))
        .count();
    assert_eq!((ran, replays), (1, 7), "{answers:?}");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

/// A server with the ECS edge on an ephemeral port and the demo inventory (with its keys).
pub(crate) async fn spawn_ecs(
    backend: Backend,
    configure: impl FnOnce(&mut snapshotd::Config) + Send + 'static,
) -> TestApp {
    spawn_ecs_with(backend, Options::default(), configure).await
}

async fn spawn_ecs_with(
    backend: Backend,
    options: Options,
    configure: impl FnOnce(&mut snapshotd::Config) + Send + 'static,
) -> TestApp {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(move |config| {
                config.ecs_listen = ListenOrOff::At(SocketAddr::from(([127, 0, 0, 1], 0)));
                configure(config);
            }),
            ..options
        },
    )
    .await;
    seed_demo(&app).await;
    app
}

async fn seed_demo(app: &TestApp) {
    snapshotd::demo::seed_demo(&app.service, server_now(app))
        .await
        .expect("seeding the demo inventory");
}

pub(crate) fn server_now(app: &TestApp) -> DateTime<Utc> {
    match &app.clock {
        Some(clock) => snapshotd::clock::Clock::now(clock.as_ref()),
        None => Utc::now(),
    }
}

fn ecs_addr(app: &TestApp) -> SocketAddr {
    app.ecs_addr.expect("the test turned the ECS edge on")
}

/// A client signing with the demo key of `account`.
pub(crate) fn client_of(app: &TestApp, account: &str) -> EcsClient {
    let (id, secret, _) = DEMO_ACCESS_KEYS
        .iter()
        .find(|(_, _, owner)| *owner == account)
        .expect("a demo key for the account");
    EcsClient::new(ecs_addr(app), id, secret)
}

/// The gRPC answer's ECS code and HTTP status (`OK`/200 on success).
fn grpc_code(result: Result<pb::CreateSnapshotResponse, tonic::Status>) -> (String, u16) {
    match result {
        Ok(_) => ("OK".to_owned(), 200),
        Err(status) => {
            let info = tonic_types::StatusExt::get_details_error_info(&status)
                .expect("every error carries ErrorInfo");
            let http = info.metadata["httpStatus"].parse().expect("a number");
            (info.reason, http)
        }
    }
}

/// The ids a DescribeSnapshots answer lists, in its order.
fn listed_ids(answer: &EcsAnswer) -> Vec<String> {
    answer.body["Snapshots"]["Snapshot"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of snapshots: {}", answer.text))
        .iter()
        .map(|snapshot| snapshot["SnapshotId"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn ecs_code(answer: &EcsAnswer) -> (String, u16) {
    if answer.status == 200 {
        ("OK".to_owned(), 200)
    } else {
        (answer.code().to_owned(), answer.status)
    }
}

/// One row: a CreateSnapshot as an account, sent to both edges.
struct Row {
    account: &'static str,
    disk_id: &'static str,
    snapshot_name: &'static str,
    description: &'static str,
    client_token: String,
    retention_days: i32,
    tags: Vec<(&'static str, &'static str)>,
    code: &'static str,
    http_status: u16,
}

fn row(disk_id: &'static str, code: &'static str, http_status: u16) -> Row {
    Row {
        account: "acct-demo",
        disk_id,
        snapshot_name: "",
        description: "",
        client_token: String::new(),
        retention_days: 0,
        tags: Vec::new(),
        code,
        http_status,
    }
}

impl Row {
    fn grpc(&self) -> pb::CreateSnapshotRequest {
        pb::CreateSnapshotRequest {
            disk_id: self.disk_id.into(),
            snapshot_name: self.snapshot_name.into(),
            description: self.description.into(),
            client_token: self.client_token.clone(),
            retention_days: self.retention_days,
            tags: self
                .tags
                .iter()
                .map(|(key, value)| pb::Tag {
                    key: (*key).into(),
                    value: (*value).into(),
                })
                .collect(),
        }
    }

    fn ecs(&self) -> Vec<(String, String)> {
        let mut params = Vec::new();
        let mut add = |key: &str, value: &str| {
            if !value.is_empty() {
                params.push((key.to_owned(), value.to_owned()));
            }
        };
        add("DiskId", self.disk_id);
        add("SnapshotName", self.snapshot_name);
        add("Description", self.description);
        add("ClientToken", &self.client_token);
        if self.retention_days != 0 {
            add("RetentionDays", &self.retention_days.to_string());
        }
        for (n, (key, value)) in self.tags.iter().enumerate() {
            add(&format!("Tag.{}.Key", n + 1), key);
            add(&format!("Tag.{}.Value", n + 1), value);
        }
        params
    }
}

async fn every_error_row_answers_the_same_code_on_both_edges(backend: Backend) {
    let app = spawn_ecs(backend, |config| config.snapshot_quota = 1).await;
    // d-demo-ok-2 reaches its quota of 1 with an accomplished snapshot (its token bound), then
    // the demo is seeded again so d-demo-new is new again; d-demo-ok gets a copy in progress.
    app.create(
        "acct-demo",
        pb::CreateSnapshotRequest {
            client_token: "tok-bound".into(),
            ..crate::helpers::create_request("d-demo-ok-2")
        },
    )
    .await
    .expect("the first snapshot of d-demo-ok-2");
    crate::helpers::finish_copies(&app).await;
    seed_demo(&app).await;
    app.create_on("acct-demo", "d-demo-ok")
        .await
        .expect("a copy in progress on d-demo-ok");

    let rows = vec![
        row("", "MissingParameter", 400),
        row("D-BAD", "DiskId.ValueNotSupported", 403),
        Row {
            snapshot_name: "1abc",
            ..row("d-demo-ok-2", "InvalidSnapshotName.Malformed", 400)
        },
        Row {
            description: "http://x",
            ..row("d-demo-ok-2", "InvalidDescription.Malformed", 404)
        },
        Row {
            client_token: "t".repeat(65),
            ..row("d-demo-ok-2", "InvalidClientToken.Malformed", 403)
        },
        Row {
            retention_days: 65_537,
            ..row("d-demo-ok-2", "InvalidRetentionDays.Malformed", 400)
        },
        Row {
            tags: vec![("acs:x", "v")],
            ..row("d-demo-ok-2", "InvalidTagKey.Malformed", 400)
        },
        Row {
            tags: vec![("k", "http://x")],
            ..row("d-demo-ok-2", "InvalidTagValue.Malformed", 400)
        },
        Row {
            tags: vec![("k", "1"), ("k", "2")],
            ..row("d-demo-ok-2", "Duplicate.TagKey", 400)
        },
        Row {
            client_token: "tok-bound".into(),
            ..row("d-demo-ok", "IdempotentParameterMismatch", 403)
        },
        Row {
            account: "acct-demo-inactive",
            ..row(
                "d-demo-inactive",
                "InvalidAccountStatus.SnapshotServiceUnavailable",
                403,
            )
        },
        Row {
            account: "acct-demo-broke",
            ..row("d-demo-broke", "InvalidAccountStatus.NotEnoughBalance", 403)
        },
        row("d-nobody-has-it", "InvalidDiskId.NotFound", 404),
        Row {
            account: "acct-demo-broke",
            ..row("d-demo-ok", "InvalidAccountStatus.NotEnoughBalance", 403)
        },
        row("d-demo-local", "DiskCategory.OperationNotSupported", 400),
        row("d-demo-expired", "DiskInArrears", 403),
        row(
            "d-demo-never-attached",
            "IncorrectDiskStatus.NeverAttached",
            403,
        ),
        row("d-demo-detached", "IncorrectDiskStatus", 403),
        row("d-demo-instance-starting", "IncorrectInstanceStatus", 400),
        row("d-demo-instance-locked", "InstanceLockedForSecurity", 403),
        row("d-demo-never-used", "IncorrectDiskStatus.NeverUsed", 403),
        row("d-demo-new", "IncorrectDiskStatus.Initializing", 403),
        row("d-demo-ok", "IncorrectDiskStatus.CreatingSnapshot", 403),
        row("d-demo-ok-2", "QuotaExceed.Snapshot", 403),
    ];
    let snapshots_before = app.count_rows("snapshots").await;
    for row in &rows {
        let grpc = grpc_code(app.create(row.account, row.grpc()).await);
        let params = row.ecs();
        let params: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let http = client_of(&app, row.account)
            .call("CreateSnapshot", &params, server_now(&app))
            .await;
        let expected = (row.code.to_owned(), row.http_status);
        assert_eq!(grpc, expected, "gRPC, {}", row.code);
        assert_eq!(
            ecs_code(&http),
            expected,
            "ECS, {}: {}",
            row.code,
            http.text
        );
        assert!(
            !http.body["Message"].as_str().unwrap_or("").is_empty(),
            "{}",
            http.text
        );
        assert!(
            http.body["RequestId"]
                .as_str()
                .is_some_and(|id| id.len() == 36),
            "{}",
            http.text
        );
    }
    assert_eq!(
        app.count_rows("snapshots").await,
        snapshots_before,
        "no refusal stored anything"
    );
    app.assert_invariants().await;
}

async fn a_backend_that_cannot_start_the_copy_answers_the_same_on_both_edges(backend: Backend) {
    let options = Options {
        snapshot_backend: Arc::new(RefusingBackend),
        ..Options::default()
    };
    let app = spawn_ecs_with(backend, options, |_| {}).await;
    let grpc = grpc_code(app.create_on("acct-demo", "d-demo-ok").await);
    let http = client_of(&app, "acct-demo")
        .call(
            "CreateSnapshot",
            &[("DiskId", "d-demo-ok")],
            server_now(&app),
        )
        .await;
    assert_eq!(grpc, ("CreateSnapshot.Failed".to_owned(), 403));
    assert_eq!(ecs_code(&http), grpc, "{}", http.text);
    assert_eq!(app.count_rows("snapshots").await, 0);
}

async fn a_snapshot_made_on_one_edge_is_the_same_snapshot_on_the_other(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    let client = client_of(&app, "acct-demo");
    let made_over_http = client
        .call(
            "CreateSnapshot",
            &[
                ("DiskId", "d-demo-ok"),
                ("SnapshotName", "over-http"),
                ("ClientToken", "tok-h"),
            ],
            server_now(&app),
        )
        .await;
    assert_eq!(made_over_http.status, 200, "{}", made_over_http.text);
    let http_id = made_over_http.body["SnapshotId"]
        .as_str()
        .expect("an id")
        .to_owned();

    // The same token over gRPC replays the same snapshot; a describe over gRPC shows it.
    let replayed = app
        .create(
            "acct-demo",
            pb::CreateSnapshotRequest {
                snapshot_name: "over-http".into(),
                client_token: "tok-h".into(),
                ..crate::helpers::create_request("d-demo-ok")
            },
        )
        .await
        .expect("a replay");
    assert_eq!(replayed.snapshot_id, http_id);
    let described = app
        .snapshots()
        .describe_snapshots(as_account(
            "acct-demo",
            pb::DescribeSnapshotsRequest {
                snapshot_ids: vec![http_id.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.snapshots.len(), 1);
    assert_eq!(described.snapshots[0].snapshot_name, "over-http");

    // And the other way round.
    let grpc_id = app
        .create_on("acct-demo", "d-demo-ok-2")
        .await
        .expect("a snapshot over gRPC")
        .snapshot_id;
    let ids = format!("[\"{grpc_id}\",\"{http_id}\"]");
    let listed = client
        .call(
            "DescribeSnapshots",
            &[("SnapshotIds", &ids)],
            server_now(&app),
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let mut seen = listed_ids(&listed);
    seen.sort_unstable();
    let mut expected = vec![grpc_id.clone(), http_id.clone()];
    expected.sort_unstable();
    assert_eq!(seen, expected);
    app.assert_invariants().await;
}

async fn signature_and_nonce_refusals_write_nothing(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    let now = server_now(&app);
    let client = client_of(&app, "acct-demo");
    let create = [("DiskId", "d-demo-ok")];

    let wrong_secret = EcsClient::new(ecs_addr(&app), DEMO_ACCESS_KEY_ID, "not-the-secret-at-all");
    let mismatch = wrong_secret.call("CreateSnapshot", &create, now).await;
    assert_eq!(
        ecs_code(&mismatch),
        ("SignatureDoesNotMatch".to_owned(), 400),
        "{}",
        mismatch.text
    );
    let message = mismatch.body["Message"].as_str().unwrap();
    let (_, server_string) = message
        .split_once("server string to sign is:")
        .expect("ECS's message ends with the server's string to sign");
    assert!(
        server_string.starts_with("GET&%2F&AccessKeyId%3DLTAIdemo%26Action%3DCreateSnapshot"),
        "{server_string}"
    );

    let unknown = EcsClient::new(ecs_addr(&app), "LTAInobody", DEMO_ACCESS_KEY_SECRET)
        .call("CreateSnapshot", &create, now)
        .await;
    assert_eq!(
        ecs_code(&unknown),
        ("InvalidAccessKeyId.NotFound".to_owned(), 404)
    );

    let expired = client
        .call(
            "CreateSnapshot",
            &create,
            now - chrono::TimeDelta::minutes(16),
        )
        .await;
    assert_eq!(
        ecs_code(&expired),
        ("InvalidTimeStamp.Expired".to_owned(), 400)
    );
    let early = client
        .call(
            "CreateSnapshot",
            &create,
            now + chrono::TimeDelta::minutes(16),
        )
        .await;
    assert_eq!(
        ecs_code(&early),
        ("InvalidTimeStamp.Expired".to_owned(), 400)
    );

    // A nonce once spent is refused again, even on a request that is otherwise new.
    let first = client.signed_query_with("DescribeSnapshots", &[], now, "nonce-once");
    assert_eq!(client.get(&first).await.status, 200);
    let again = client.signed_query_with("CreateSnapshot", &create, now, "nonce-once");
    assert_eq!(
        ecs_code(&client.get(&again).await),
        ("SignatureNonceUsed".to_owned(), 400)
    );

    let unsigned: [(&str, (&str, u16)); 6] = [
        ("Version=2014-05-26", ("MissingParameter", 400)),
        ("Action=CreateSnapshot", ("MissingParameter", 400)),
        (
            "Action=CreateSnapshot&Version=2014-05-26",
            ("MissingParameter", 400),
        ),
        (
            "Action=CreateSnapshot&Version=2015-01-01",
            ("InvalidVersion", 400),
        ),
        (
            "Action=RunInstances&Version=2014-05-26",
            ("InvalidAction.NotFound", 404),
        ),
        (
            "Action=CreateSnapshot&Version=2014-05-26&AccessKeyId=LTAIdemo&Signature=x&Timestamp=2026-01-01T00%3A00%3A00Z&SignatureNonce=n&SignatureMethod=HMAC-SHA256",
            ("IncompleteSignature", 400),
        ),
    ];
    for (query, (code, status)) in unsigned {
        let answer = client.get(query).await;
        assert_eq!(
            ecs_code(&answer),
            (code.to_owned(), status),
            "{query}: {}",
            answer.text
        );
    }
    let missing = client.get("Version=2014-05-26").await;
    assert!(
        missing.body["Message"]
            .as_str()
            .unwrap()
            .contains("\"Action\""),
        "{}",
        missing.text
    );

    // Signature v1 signs the parameters only: an x-acs-action header (unsigned there) must not
    // change the action.
    let describe = client.signed_query("DescribeSnapshots", &[], now);
    let swapped = client
        .send(
            client
                .http()
                .get(format!("http://{}/?{describe}", ecs_addr(&app)))
                .header("x-acs-action", "CreateSnapshot"),
        )
        .await;
    assert_eq!(swapped.status, 200, "{}", swapped.text);
    assert!(
        swapped.body["Snapshots"].is_object(),
        "the signed action ran: {}",
        swapped.text
    );

    let long_nonce = "n".repeat(129);
    let query = client.signed_query_with("DescribeSnapshots", &[], now, &long_nonce);
    assert_eq!(
        ecs_code(&client.get(&query).await),
        ("InvalidParameter".to_owned(), 400)
    );

    for refused in [
        ("Category", "flash"),
        ("SnapshotType", "auto"),
        ("DryRun", "true"),
    ] {
        let answer = client.call("DescribeSnapshots", &[refused], now).await;
        assert_eq!(
            ecs_code(&answer),
            ("InvalidParameter".to_owned(), 400),
            "{refused:?}"
        );
        assert!(
            answer.body["Message"].as_str().unwrap().contains(refused.0),
            "{}",
            answer.text
        );
    }

    let tampered = client
        .signed_query("CreateSnapshot", &create, now)
        .replace("d-demo-ok", "d-demo-ok-2");
    assert_eq!(
        ecs_code(&client.get(&tampered).await),
        ("SignatureDoesNotMatch".to_owned(), 400)
    );

    assert_eq!(
        app.count_rows("snapshots").await,
        0,
        "a refused request writes nothing"
    );
    assert_eq!(app.count_rows("client_tokens").await, 0);
}

async fn describe_delete_and_image_speak_ecs_formats(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);
    let created = client
        .call(
            "CreateSnapshot",
            &[
                ("DiskId", "d-demo-ok"),
                ("SnapshotName", "nightly"),
                ("RetentionDays", "7"),
                ("Tag.1.Key", "env"),
                ("Tag.1.Value", "prod"),
            ],
            now,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let id = created.body["SnapshotId"].as_str().unwrap().to_owned();

    let listed = client
        .call(
            "DescribeSnapshots",
            &[("DiskId", "d-demo-ok"), ("Status", "all")],
            now,
        )
        .await;
    let snapshot = &listed.body["Snapshots"]["Snapshot"][0];
    assert_eq!(snapshot["SnapshotId"], id.as_str());
    assert_eq!(snapshot["Status"], "progressing");
    assert_eq!(snapshot["SourceDiskSize"], "40");
    assert_eq!(snapshot["SourceDiskType"], "data");
    assert_eq!(snapshot["RetentionDays"], 7);
    assert_eq!(snapshot["Usage"], "none");
    assert!(snapshot["Progress"].as_str().unwrap().ends_with('%'));
    let created_at = snapshot["CreationTime"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(created_at, "%Y-%m-%dT%H:%M:%SZ").is_ok(),
        "{created_at}"
    );
    assert_eq!(snapshot["Tags"]["Tag"][0]["TagKey"], "env");

    // XML: the root is the action's response, lists repeat their element.
    let query = client.signed_query(
        "DescribeSnapshots",
        &[("Format", "XML"), ("DiskId", "d-demo-ok")],
        now,
    );
    let xml = client.get(&query).await;
    assert_eq!(xml.status, 200);
    assert_eq!(xml.content_type, "text/xml;charset=utf-8");
    assert!(
        xml.text.contains("<DescribeSnapshotsResponse>"),
        "{}",
        xml.text
    );
    assert!(xml.text.contains("<Snapshots><Snapshot><"), "{}", xml.text);
    let query = client.signed_query(
        "DeleteSnapshot",
        &[("Format", "xml"), ("SnapshotId", "s-00000000000000000000")],
        now,
    );
    let xml_error = client.get(&query).await;
    assert_eq!(xml_error.status, 404);
    assert!(
        xml_error.text.contains("<Error>")
            && xml_error
                .text
                .contains("<Code>InvalidSnapshotId.NotFound</Code>"),
        "{}",
        xml_error.text
    );

    let image = client
        .call(
            "CreateImage",
            &[("SnapshotId", &id), ("ImageName", "web")],
            now,
        )
        .await;
    assert_eq!(
        ecs_code(&image),
        ("InvalidSnapshotId.NotReady".to_owned(), 403),
        "{}",
        image.text
    );
    let deleted = client
        .call("DeleteSnapshot", &[("SnapshotId", &id)], now)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    let again = client
        .call("DeleteSnapshot", &[("SnapshotId", &id)], now)
        .await;
    assert_eq!(
        ecs_code(&again),
        ("InvalidSnapshotId.NotFound".to_owned(), 404)
    );

    let unoffered = client
        .call(
            "CreateSnapshot",
            &[("DiskId", "d-demo-ok"), ("InstantAccess", "true")],
            now,
        )
        .await;
    assert_eq!(ecs_code(&unoffered), ("InvalidParameter".to_owned(), 400));
    assert!(
        unoffered.body["Message"]
            .as_str()
            .unwrap()
            .contains("InstantAccess")
    );
    app.assert_invariants().await;
}

async fn access_keys_name_one_account_and_never_return_their_secret(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    let put = |key_id: &str, secret: &str, account: &str| {
        let request = pb::PutAccessKeyRequest {
            access_key: Some(pb::AccessKey {
                access_key_id: key_id.into(),
                access_key_secret: secret.into(),
                account_id: account.into(),
            }),
        };
        let mut inventory = app.inventory();
        async move { inventory.put_access_key(as_admin(request)).await }
    };
    let stored = put("LTAInew", "a-brand-new-secret-1", "acct-demo")
        .await
        .expect("a new key")
        .into_inner();
    assert_eq!(stored.access_key.as_ref().unwrap().access_key_secret, "");
    assert_eq!(stored.access_key.as_ref().unwrap().account_id, "acct-demo");

    let refusals = [
        (
            "LTAInew",
            "a-brand-new-secret-1",
            "acct-demo-broke",
            "InvalidParameter",
        ),
        (
            "LTAIx",
            "a-brand-new-secret-1",
            "acct-nobody",
            "InvalidAccountId.NotFound",
        ),
        ("LTAIx", "short", "acct-demo", "InvalidParameter"),
        ("", "a-brand-new-secret-1", "acct-demo", "MissingParameter"),
    ];
    for (id, secret, account, reason) in refusals {
        let status = put(id, secret, account).await.expect_err(reason);
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.reason, reason, "{id} {account}");
        assert!(!status.message().contains(secret) || secret == "short");
    }

    // Rotation: the old secret stops working, the new one works, for the same account.
    put("LTAInew", "the-rotated-secret-2", "acct-demo")
        .await
        .expect("rotation");
    let now = server_now(&app);
    let old = EcsClient::new(ecs_addr(&app), "LTAInew", "a-brand-new-secret-1")
        .call("DescribeSnapshots", &[], now)
        .await;
    assert_eq!(old.code(), "SignatureDoesNotMatch");
    let new = EcsClient::new(ecs_addr(&app), "LTAInew", "the-rotated-secret-2")
        .call("DescribeSnapshots", &[], now)
        .await;
    assert_eq!(new.status, 200, "{}", new.text);
}

/// Keys are cached per server: a secret rotated through one replica stops working at once on
/// another that has the key cached (the nonce is spent only with the stored secret), and
/// the new secret works there at once; the refused request spends no nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_secret_stops_working_at_once_on_every_replica() {
    let first = spawn_ecs(Backend::Postgres, |_| {}).await;
    let second = spawn_replica(
        &first,
        Options {
            configure: Box::new(|config| {
                config.ecs_listen = ListenOrOff::At(SocketAddr::from(([127, 0, 0, 1], 0)));
            }),
            ..Options::default()
        },
    )
    .await;
    let put = |key_id: &str, secret: &str| {
        let request = pb::PutAccessKeyRequest {
            access_key: Some(pb::AccessKey {
                access_key_id: key_id.into(),
                access_key_secret: secret.into(),
                account_id: "acct-demo".into(),
            }),
        };
        let mut inventory = first.inventory();
        async move { inventory.put_access_key(as_admin(request)).await }
    };
    let describe = |key_id: &str, secret: &str| {
        let client = EcsClient::new(ecs_addr(&second), key_id, secret);
        let now = server_now(&second);
        async move { client.call("DescribeSnapshots", &[], now).await }
    };
    // Two keys, each cached on the second replica, then rotated through the first.
    for key_id in ["LTAIoldFirst", "LTAInewFirst"] {
        put(key_id, "the-first-secret-1").await.expect("a new key");
        let cached = describe(key_id, "the-first-secret-1").await;
        assert_eq!(cached.status, 200, "{key_id}: {}", cached.text);
        put(key_id, "the-second-secret-2").await.expect("rotation");
    }

    let nonces = first.count_rows("signature_nonces").await;
    let old = describe("LTAIoldFirst", "the-first-secret-1").await;
    assert_eq!(
        ecs_code(&old),
        ("SignatureDoesNotMatch".to_owned(), 400),
        "{}",
        old.text
    );
    assert_eq!(first.count_rows("signature_nonces").await, nonces);
    let new = describe("LTAInewFirst", "the-second-secret-2").await;
    assert_eq!(new.status, 200, "{}", new.text);
}

/// Where the official SDK is: `SNAPSHOTD_ECS_PYTHON`, else the virtualenv `.ci/run` makes.
fn sdk_python() -> std::path::PathBuf {
    if let Ok(python) = std::env::var("SNAPSHOTD_ECS_PYTHON") {
        return python.into();
    }
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ecs-sdk-venv/bin/python");
    assert!(
        venv.exists(),
        "the official ECS SDK for Python is needed: run\n  python3 -m venv target/ecs-sdk-venv && \
         target/ecs-sdk-venv/bin/pip install -r tests/ecs/requirements.txt\n(or set \
         SNAPSHOTD_ECS_PYTHON to a python that has it)"
    );
    venv
}

async fn the_official_python_sdk_walks_through_the_api(backend: Backend) {
    let app = spawn_ecs_with(
        backend,
        Options {
            real_time: true,
            ..Options::default()
        },
        |config| config.copy_rate_mibps = 1,
    )
    .await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ecs/sdk_walkthrough.py");
    let output = tokio::process::Command::new(sdk_python())
        .arg(script)
        .arg(ecs_addr(&app).to_string())
        .output()
        .await
        .expect("running the SDK walkthrough");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}"
    );
    // Each step prints one line; the script asserts, this checks every step ran.
    for step in [
        "create acs3",
        "replay acs3",
        "describe acs3",
        "refusals acs3",
        "isolation acs3",
        "wrong secret acs3",
        "unknown key acs3",
        "describe filters acs3",
        "modify acs3",
        "tags acs3",
        "images acs3",
        "delete acs3",
        "create v1",
        "replay v1",
        "describe v1",
        "refusals v1",
        "isolation v1",
        "wrong secret v1",
        "unknown key v1",
        "describe filters v1",
        "modify v1",
        "tags v1",
        "images v1",
        "delete v1",
    ] {
        assert!(
            stdout.lines().any(|line| line == format!("ok {step}")),
            "{step} missing:\n{stdout}\n{stderr}"
        );
    }
    app.assert_invariants().await;
}

// Edge behaviour, whatever the store: SQLite.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_gets_a_clear_4xx_and_the_server_goes_on() {
    let app = spawn_ecs(Backend::Sqlite, |config| {
        config.max_message_size = 128 * 1024
    })
    .await;
    let client = client_of(&app, "acct-demo");
    let base = format!("http://{}/", ecs_addr(&app));
    let signed = client.signed_query("DescribeSnapshots", &[], server_now(&app));
    let many: String = (0..10_000).map(|i| format!("P{i}=v&")).collect();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "body over the limit",
            client
                .http()
                .post(&base)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(vec![b'a'; 256 * 1024]),
            413,
            "RequestTooLarge",
        ),
        (
            "thousands of parameters in the query",
            client.http().get(format!("{base}?{}", &many[..12_000])),
            400,
            "InvalidParameter",
        ),
        (
            "a URI over 16 KiB (hyper alone would take up to 64 KiB)",
            client
                .http()
                .get(format!("{base}?{signed}&X={}", "x".repeat(17 * 1024))),
            414,
            "RequestURITooLong",
        ),
        (
            "more than 100 headers (hyper alone would answer 431 with no body)",
            (0..120).fold(
                client.http().get(format!("{base}?{signed}")),
                |request, i| request.header(format!("x-extra-{i}"), "v"),
            ),
            431,
            "RequestHeaderFieldsTooLarge",
        ),
        (
            "headers over 32 KiB",
            client
                .http()
                .get(format!("{base}?{signed}"))
                .header("x-padding", "p".repeat(40 * 1024)),
            431,
            "RequestHeaderFieldsTooLarge",
        ),
        (
            "10,000 parameters in the body",
            client
                .http()
                .post(&base)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(many.clone()),
            400,
            "InvalidParameter",
        ),
        (
            "invalid UTF-8",
            client.http().get(format!("{base}?{signed}&X=%ff%fe")),
            400,
            "InvalidParameter",
        ),
        (
            "invalid percent-encoding",
            client.http().get(format!("{base}?{signed}&X=%zz")),
            400,
            "InvalidParameter",
        ),
        (
            "a duplicated parameter",
            client
                .http()
                .get(format!("{base}?{signed}&Action=DescribeSnapshots")),
            400,
            "InvalidParameter",
        ),
        (
            "a JSON body",
            client
                .http()
                .post(format!("{base}?{signed}"))
                .header("content-type", "application/json")
                .body("{}"),
            415,
            "InvalidParameter",
        ),
        (
            "PUT",
            client.http().put(format!("{base}?{signed}")),
            405,
            "UnsupportedHTTPMethod",
        ),
        (
            "a bad Format",
            client.http().get(format!("{base}?{signed}&Format=yaml")),
            400,
            "InvalidParameter",
        ),
    ];
    for (what, request, status, code) in cases {
        let answer = client.send(request).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{what}: {}",
            &answer.text[..answer.text.len().min(300)]
        );
    }
    // A head over the 64 KiB hyper buffers is refused by hyper itself, with no body
    // (docs/ecs.md): still 431, and the server goes on.
    let huge_header = client
        .send(
            client
                .http()
                .get(format!("{base}?{signed}"))
                .header("x-padding", "p".repeat(100 * 1024)),
        )
        .await;
    assert_eq!(
        huge_header.status, 431,
        "huge headers: {}",
        huge_header.text
    );
    let still = client
        .call("DescribeSnapshots", &[], server_now(&app))
        .await;
    assert_eq!(still.status, 200, "the server goes on: {}", still.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_ecs(Backend::Sqlite, |_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(ecs_addr(&app))
        .await
        .unwrap();
    stream
        .write_all(b"GET /?Action=DescribeSnapshots HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the connection is closed within the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_applies_on_the_ecs_edge_with_the_grpc_edges_budget() {
    let app = spawn_ecs(Backend::Sqlite, |config| {
        config.rate_limit = Some(snapshotd::config::RateLimit {
            per_second: 1,
            burst: 2,
        });
    })
    .await;
    let client = client_of(&app, "acct-demo");
    // One call over gRPC and one over HTTP spend the account's burst of 2.
    app.snapshots()
        .describe_snapshots(as_account(
            "acct-demo",
            pb::DescribeSnapshotsRequest::default(),
        ))
        .await
        .expect("within the burst");
    let second = client
        .call("DescribeSnapshots", &[], server_now(&app))
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    let third = client
        .call("DescribeSnapshots", &[], server_now(&app))
        .await;
    assert_eq!(
        ecs_code(&third),
        ("Throttling".to_owned(), 403),
        "{}",
        third.text
    );
    let other = client_of(&app, "acct-demo-broke")
        .call("DescribeSnapshots", &[], server_now(&app))
        .await;
    assert_eq!(other.status, 200, "another account has its own budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_the_concurrency_limit_are_shed_before_their_body_is_read() {
    let app = spawn_ecs(Backend::Sqlite, |config| config.max_concurrent_requests = 1).await;
    // One request holds the only slot: its body never finishes.
    let mut held = tokio::net::TcpStream::connect(ecs_addr(&app))
        .await
        .unwrap();
    held.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nA=",
    )
    .await
    .unwrap();
    let client = client_of(&app, "acct-demo");
    let mut shed = None;
    for _ in 0..50 {
        let answer = client
            .call("DescribeSnapshots", &[], server_now(&app))
            .await;
        if answer.status == 503 {
            shed = Some(answer);
            break;
        }
        // The held request may not have reached the server yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("a request past the limit is shed");
    assert_eq!(shed.code(), "ServiceUnavailable", "{}", shed.text);
    assert!(shed.headers.contains_key("retry-after"));
    drop(held);
}

/// One address holds at most its share of the ECS edge's slots (three quarters by default), so
/// another address is still served while it holds them; the share is given back with its
/// requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_peer_cannot_take_every_slot_of_the_ecs_edge() {
    let app = spawn_ecs(Backend::Sqlite, |config| config.max_concurrent_requests = 4).await;
    // 127.0.0.1 holds three slots (its share of four) with bodies that never finish.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(ecs_addr(&app))
            .await
            .unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nA=",
            )
            .await
            .unwrap();
        held.push(stream);
    }
    let client = client_of(&app, "acct-demo");
    let mut answers = Vec::new();
    // The held requests may not all have reached the server yet (on a loaded machine that took
    // over 2 s once): poll for up to PATIENCE.
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    while std::time::Instant::now() < deadline {
        let answer = client
            .call("DescribeSnapshots", &[], server_now(&app))
            .await;
        let status = answer.status;
        answers.push(answer);
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = answers.pop().expect("an answer");
    assert_eq!(
        refused.status, 403,
        "127.0.0.1's request past its share of 3 is refused; the last answer: {}",
        refused.text
    );
    assert_eq!(refused.code(), "Throttling", "{}", refused.text);
    assert!(
        refused.headers.contains_key("retry-after"),
        "{}",
        refused.text
    );

    // Another address takes the fourth slot.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let query = client.signed_query("DescribeSnapshots", &[], server_now(&app));
    let served = other
        .get(format!("http://{}/?{query}", ecs_addr(&app)))
        .send()
        .await
        .expect("the ECS edge answers 127.0.0.2");
    assert_eq!(served.status(), 200, "{:?}", served.text().await);

    // Given back: 127.0.0.1 is served again once its held requests are gone.
    drop(held);
    let mut again = None;
    for _ in 0..100 {
        let answer = client
            .call("DescribeSnapshots", &[], server_now(&app))
            .await;
        if answer.status == 200 {
            again = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.expect("127.0.0.1 is served again once its requests have ended");
}

#[test]
fn encode_is_rfc_3986() {
    assert_eq!(encode("a b*~/é"), "a%20b%2A~%2F%C3%A9");
}

/// The gRPC edge's ModifySnapshotAttribute answer as (ECS code, HTTP status).
fn grpc_modify_code(
    result: Result<tonic::Response<pb::ModifySnapshotAttributeResponse>, tonic::Status>,
) -> (String, u16) {
    grpc_code(result.map(|_| pb::CreateSnapshotResponse::default()))
}

async fn modify_snapshot_attribute_answers_as_the_grpc_edge_does(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);
    let created = client
        .call(
            "CreateSnapshot",
            &[
                ("DiskId", "d-demo-ok"),
                ("SnapshotName", "nightly"),
                ("Description", "before the upgrade"),
                ("RetentionDays", "7"),
            ],
            now,
        )
        .await;
    let id = created.body["SnapshotId"].as_str().unwrap().to_owned();
    let shown = |answer: &EcsAnswer| answer.body["Snapshots"]["Snapshot"][0].clone();
    let describe = || client.call("DescribeSnapshots", &[("DiskId", "d-demo-ok")], now);

    app.advance(Duration::from_secs(60));
    let later = server_now(&app);
    let changed = client
        .call(
            "ModifySnapshotAttribute",
            &[
                ("SnapshotId", &id),
                ("SnapshotName", "renamed"),
                ("RetentionDays", "10"),
                ("DisableInstantAccess", "true"),
            ],
            later,
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let keys: Vec<&String> = changed.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["RequestId"], "{}", changed.text);
    let snapshot = shown(&describe().await);
    assert_eq!(snapshot["SnapshotName"], "renamed");
    assert_eq!(
        snapshot["Description"], "before the upgrade",
        "absent: kept"
    );
    assert_eq!(snapshot["RetentionDays"], 10);
    assert_eq!(
        snapshot["LastModifiedTime"],
        later.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    );
    let emptied = client
        .call(
            "ModifySnapshotAttribute",
            &[("SnapshotId", &id), ("Description", "")],
            later,
        )
        .await;
    assert_eq!(emptied.status, 200, "{}", emptied.text);
    let snapshot = shown(&describe().await);
    assert_eq!(snapshot["Description"], "", "given empty: emptied");
    assert_eq!(snapshot["SnapshotName"], "renamed");

    // Each refusal: the ECS parameters, the gRPC request, and the code both must answer.
    let grpc = |change: fn(&mut pb::ModifySnapshotAttributeRequest)| {
        let mut request = pb::ModifySnapshotAttributeRequest {
            snapshot_id: id.clone(),
            ..Default::default()
        };
        change(&mut request);
        request
    };
    let unknown = "s-00000000000000000000";
    // (ECS parameters, the gRPC request, the code, the HTTP status)
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        pb::ModifySnapshotAttributeRequest,
        &'a str,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            vec![("SnapshotId", &id), ("RetentionDays", "5")],
            grpc(|r| r.retention_days = Some(5)),
            "InvalidRetentionDays.ShortenNotSupported",
            403,
        ),
        (
            vec![("SnapshotId", &id), ("SnapshotName", "a")],
            grpc(|r| r.snapshot_name = Some("a".into())),
            "InvalidSnapshotName.Malformed",
            400,
        ),
        (
            vec![("SnapshotId", &id), ("Description", "x")],
            grpc(|r| r.description = Some("x".into())),
            "InvalidDescription.Malformed",
            404,
        ),
        (
            vec![("SnapshotId", &id), ("RetentionDays", "65537")],
            grpc(|r| r.retention_days = Some(65_537)),
            "InvalidRetentionDays.Malformed",
            400,
        ),
        (
            vec![("SnapshotId", unknown), ("SnapshotName", "renamed")],
            grpc(|r| r.snapshot_id = "s-00000000000000000000".into()),
            "InvalidSnapshotId.NotFound",
            404,
        ),
        (
            vec![("SnapshotName", "renamed")],
            grpc(|r| r.snapshot_id.clear()),
            "MissingParameter",
            400,
        ),
    ];
    for (params, request, code, http) in cases {
        let answer = client.call("ModifySnapshotAttribute", &params, later).await;
        assert_eq!((answer.code(), answer.status), (code, http), "{params:?}");
        let on_grpc = app
            .snapshots()
            .modify_snapshot_attribute(as_account("acct-demo", request))
            .await;
        assert_eq!(
            grpc_modify_code(on_grpc),
            (code.to_owned(), http),
            "{params:?}"
        );
    }
    // This edge's own: parameters it does not read, values that do not parse.
    for params in [
        vec![("SnapshotId", id.as_str()), ("Tag.1.Key", "env")],
        vec![("SnapshotId", id.as_str()), ("RetentionDays", "ten")],
        vec![
            ("SnapshotId", id.as_str()),
            ("DisableInstantAccess", "maybe"),
        ],
    ] {
        let answer = client.call("ModifySnapshotAttribute", &params, later).await;
        assert_eq!(
            (answer.code(), answer.status),
            ("InvalidParameter", 400),
            "{params:?}"
        );
    }
    // Another account's snapshot is not found, exactly as an unknown one.
    let stranger = client_of(&app, "acct-demo-broke");
    let answer = stranger
        .call(
            "ModifySnapshotAttribute",
            &[("SnapshotId", &id), ("SnapshotName", "stolen")],
            later,
        )
        .await;
    assert_eq!(
        (answer.code(), answer.status),
        ("InvalidSnapshotId.NotFound", 404)
    );
    let snapshot = shown(&describe().await);
    assert_eq!(
        snapshot["SnapshotName"], "renamed",
        "no refusal wrote anything"
    );
    assert_eq!(snapshot["RetentionDays"], 10);
    app.assert_invariants().await;
}
