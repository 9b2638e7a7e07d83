//! Tags and retention against the real server: the tag rules, retention_days' range, both in
//! idempotence, and the worker releasing snapshots past their retention on the manual clock.

use std::collections::HashSet;
use std::time::Duration;

use snapshotd::pb;
use snapshotd::pb::image_service_client::ImageServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, Options, TestApp, as_account, create_request, finish_copies, spawn_app,
    spawn_app_with, world,
};
use crate::on_both_backends;

on_both_backends!(
    tags_round_trip_on_create_and_show_in_describe,
    more_than_twenty_tags_are_refused,
    malformed_tag_keys_and_values_and_duplicate_keys_are_refused,
    retention_days_outside_1_to_65536_are_refused,
    retention_days_at_the_edges_are_kept_and_shown,
    idempotence_includes_tags_and_retention,
    a_snapshot_past_its_retention_is_released_unless_an_image_uses_it,
    a_snapshot_kept_forever_is_never_released,
);

// ---------------------------------------------------------------------------------------------
// Local helpers.

fn tag(key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn sorted(tags: &[pb::Tag]) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = tags
        .iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    pairs.sort();
    pairs
}

fn tagged(disk_id: &str, tags: Vec<pb::Tag>) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        tags,
        ..create_request(disk_id)
    }
}

fn retained(disk_id: &str, retention_days: i32) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        retention_days,
        ..create_request(disk_id)
    }
}

async fn describe(
    app: &TestApp,
    account: &str,
    request: pb::DescribeSnapshotsRequest,
) -> Result<Vec<pb::Snapshot>, Status> {
    app.snapshots()
        .describe_snapshots(as_account(account, request))
        .await
        .map(|r| r.into_inner().snapshots)
}

/// The caller's snapshot `snapshot_id`, if Describe shows it.
async fn find(app: &TestApp, snapshot_id: &str) -> Option<pb::Snapshot> {
    let mut found = describe(
        app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            snapshot_ids: vec![snapshot_id.to_owned()],
            ..Default::default()
        },
    )
    .await
    .expect("DescribeSnapshots");
    found.pop()
}

async fn listed_ids(app: &TestApp) -> HashSet<String> {
    describe(
        app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            max_results: 100,
            ..Default::default()
        },
    )
    .await
    .expect("DescribeSnapshots")
    .into_iter()
    .map(|s| s.snapshot_id)
    .collect()
}

async fn create_image(app: &TestApp, snapshot_id: &str) -> pb::CreateImageResponse {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    ImageServiceClient::new(channel)
        .create_image(as_account(
            "acct-a",
            pb::CreateImageRequest {
                snapshot_id: snapshot_id.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage")
        .into_inner()
}

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Tags.

async fn tags_round_trip_on_create_and_show_in_describe(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let long_key = "k".repeat(128);
    let long_value = "v".repeat(128);
    let mut tags: Vec<pb::Tag> = (0..17)
        .map(|n| tag(&format!("key-{n:02}"), &format!("value {n}")))
        .collect();
    tags.push(tag(&long_key, &long_value));
    tags.push(tag("环境", "生产"));
    tags.push(tag("no-value", ""));
    assert_eq!(tags.len(), 20);

    let created = app
        .create("acct-a", tagged("d-acct-a-0", tags.clone()))
        .await
        .expect("20 tags, 128-character key and value");
    let plain = app.create_on("acct-a", "d-acct-a-1").await.unwrap();

    let snapshot = find(&app, &created.snapshot_id).await.unwrap();
    assert_eq!(sorted(&snapshot.tags), sorted(&tags));
    assert!(
        find(&app, &plain.snapshot_id)
            .await
            .unwrap()
            .tags
            .is_empty()
    );
    assert_eq!(app.count_rows("snapshot_tags").await, 20);

    // The stored tags are what the filters see.
    for filter in [
        tag(&long_key, &long_value),
        tag("环境", "生产"),
        tag("no-value", ""),
        tag("key-16", "value 16"),
    ] {
        let found = describe(
            &app,
            "acct-a",
            pb::DescribeSnapshotsRequest {
                tags: vec![filter.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let ids: Vec<_> = found.iter().map(|s| s.snapshot_id.as_str()).collect();
        assert_eq!(ids, [created.snapshot_id.as_str()], "{filter:?}");
    }

    // Tags survive completion, and go with their snapshot.
    finish_copies(&app).await;
    let snapshot = find(&app, &created.snapshot_id).await.unwrap();
    assert_eq!(snapshot.status(), pb::SnapshotStatus::Accomplished);
    assert_eq!(sorted(&snapshot.tags), sorted(&tags));
    app.snapshots()
        .delete_snapshot(as_account(
            "acct-a",
            pb::DeleteSnapshotRequest {
                snapshot_id: created.snapshot_id.clone(),
                force: false,
            },
        ))
        .await
        .expect("DeleteSnapshot");
    assert_eq!(app.count_rows("snapshot_tags").await, 0);
}

#[track_caller]
fn assert_tag_error(status: &Status, reason: &str) {
    assert_error(
        status,
        Code::InvalidArgument,
        reason,
        "400",
        Detail::BadRequest("tags"),
    );
}

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.count_rows("snapshots").await, 0);
    assert_eq!(app.count_rows("snapshot_tags").await, 0);
    assert_eq!(app.count_rows("client_tokens").await, 0);
}

async fn more_than_twenty_tags_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let tags: Vec<pb::Tag> = (0..21).map(|n| tag(&format!("k{n}"), "v")).collect();

    let status = app
        .create(
            "acct-a",
            pb::CreateSnapshotRequest {
                client_token: "tok-1".into(),
                ..tagged("d-acct-a-0", tags)
            },
        )
        .await
        .unwrap_err();

    assert_tag_error(&status, "InvalidTagKey.Malformed");
    assert_nothing_stored(&app).await;
}

async fn malformed_tag_keys_and_values_and_duplicate_keys_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let key_129 = "k".repeat(129);
    let value_129 = "v".repeat(129);
    let cases = [
        ("empty key", tag("", "v"), "InvalidTagKey.Malformed"),
        (
            "129-char key",
            tag(&key_129, "v"),
            "InvalidTagKey.Malformed",
        ),
        ("acs: key", tag("acs:env", "v"), "InvalidTagKey.Malformed"),
        ("aliyun key", tag("aliyun", "v"), "InvalidTagKey.Malformed"),
        (
            "aliyun-prefixed key",
            tag("aliyun-env", "v"),
            "InvalidTagKey.Malformed",
        ),
        (
            "key with http://",
            tag("see-http://x", "v"),
            "InvalidTagKey.Malformed",
        ),
        (
            "key with https://",
            tag("https://x", "v"),
            "InvalidTagKey.Malformed",
        ),
        (
            "129-char value",
            tag("env", &value_129),
            "InvalidTagValue.Malformed",
        ),
        (
            "value with https://",
            tag("env", "see https://x"),
            "InvalidTagValue.Malformed",
        ),
        (
            "value with http://",
            tag("env", "http://x"),
            "InvalidTagValue.Malformed",
        ),
    ];
    for (label, bad, reason) in cases {
        // A valid tag before the bad one does not help.
        let request = pb::CreateSnapshotRequest {
            client_token: "tok-1".into(),
            ..tagged("d-acct-a-0", vec![tag("team", "db"), bad])
        };
        let status = app.create("acct-a", request).await.unwrap_err();
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.reason, reason, "{label}");
        assert_tag_error(&status, reason);
    }
    for tags in [
        vec![tag("env", "a"), tag("env", "b")],
        vec![tag("env", "a"), tag("team", "db"), tag("env", "a")],
    ] {
        let status = app
            .create("acct-a", tagged("d-acct-a-0", tags))
            .await
            .unwrap_err();
        assert_tag_error(&status, "Duplicate.TagKey");
    }
    assert_nothing_stored(&app).await;

    // Close to the rules but allowed.
    let allowed = vec![
        tag(&"k".repeat(128), &"v".repeat(128)),
        tag("acs", "http:x"),
        tag("my-aliyun", ""),
        tag("Env", "a"),
        tag("env", "a"),
        tag(&"键".repeat(128), &"值".repeat(128)),
    ];
    app.create("acct-a", tagged("d-acct-a-0", allowed))
        .await
        .expect("allowed tags");
    assert_eq!(app.count_rows("snapshot_tags").await, 6);
}

// ---------------------------------------------------------------------------------------------
// Retention.

async fn retention_days_outside_1_to_65536_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    for retention_days in [-1, 65_537, i32::MIN, i32::MAX] {
        let request = pb::CreateSnapshotRequest {
            client_token: "tok-1".into(),
            ..retained("d-acct-a-0", retention_days)
        };
        let status = app.create("acct-a", request).await.unwrap_err();
        assert_error(
            &status,
            Code::InvalidArgument,
            "InvalidRetentionDays.Malformed",
            "400",
            Detail::BadRequest("retention_days"),
        );
    }
    assert_nothing_stored(&app).await;
}

async fn retention_days_at_the_edges_are_kept_and_shown(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 3)).await;
    for (n, retention_days) in [1, 65_536, 0].into_iter().enumerate() {
        let created = app
            .create("acct-a", retained(&format!("d-acct-a-{n}"), retention_days))
            .await
            .unwrap_or_else(|e| panic!("retention_days {retention_days}: {e:?}"));
        let snapshot = find(&app, &created.snapshot_id).await.unwrap();
        assert_eq!(snapshot.retention_days, retention_days);
    }
}

async fn idempotence_includes_tags_and_retention(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let original = || pb::CreateSnapshotRequest {
        client_token: "tok-1".into(),
        retention_days: 7,
        tags: vec![tag("env", "prod"), tag("team", "db")],
        ..create_request("d-acct-a-0")
    };
    let first = app.create("acct-a", original()).await.unwrap();

    let reordered = pb::CreateSnapshotRequest {
        tags: vec![tag("team", "db"), tag("env", "prod")],
        ..original()
    };
    let replay = app
        .create("acct-a", reordered)
        .await
        .expect("the same tags in another order are the same request");
    assert_eq!(replay.snapshot_id, first.snapshot_id);

    let mismatches = [
        pb::CreateSnapshotRequest {
            tags: vec![tag("env", "prod")],
            ..original()
        },
        pb::CreateSnapshotRequest {
            tags: vec![tag("env", "prod"), tag("team", "web")],
            ..original()
        },
        pb::CreateSnapshotRequest {
            tags: vec![tag("env", "prod"), tag("team", "")],
            ..original()
        },
        pb::CreateSnapshotRequest {
            tags: vec![tag("env", "prod"), tag("team", "db"), tag("tier", "1")],
            ..original()
        },
        pb::CreateSnapshotRequest {
            tags: vec![],
            ..original()
        },
        pb::CreateSnapshotRequest {
            retention_days: 8,
            ..original()
        },
        pb::CreateSnapshotRequest {
            retention_days: 0,
            ..original()
        },
    ];
    for request in mismatches {
        let status = app.create("acct-a", request.clone()).await.unwrap_err();
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "IdempotentParameterMismatch",
            "403",
            Detail::PreconditionFailure,
        );
        assert_eq!(
            metadata.get("clientToken").map(String::as_str),
            Some("tok-1"),
            "{request:?}"
        );
    }
    assert_eq!(app.count_rows("snapshots").await, 1);
    let snapshot = find(&app, &first.snapshot_id).await.unwrap();
    assert_eq!(snapshot.retention_days, 7);
    assert_eq!(snapshot.tags.len(), 2);
}

async fn a_snapshot_past_its_retention_is_released_unless_an_image_uses_it(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|c| c.snapshot_quota = 2),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 3)).await;

    // At T: a one-day snapshot of d-0, one kept forever of d-1, and a one-day one of d-2 that an
    // image will use.
    let expiring = app
        .create(
            "acct-a",
            pb::CreateSnapshotRequest {
                tags: vec![tag("env", "tmp")],
                ..retained("d-acct-a-0", 1)
            },
        )
        .await
        .unwrap()
        .snapshot_id;
    let forever = app
        .create("acct-a", retained("d-acct-a-1", 0))
        .await
        .unwrap()
        .snapshot_id;
    let imaged = app
        .create("acct-a", retained("d-acct-a-2", 1))
        .await
        .unwrap()
        .snapshot_id;
    finish_copies(&app).await; // T + 1 h
    create_image(&app, &imaged).await;
    // d-0 reaches its quota of 2.
    let second = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .unwrap()
        .snapshot_id;
    finish_copies(&app).await; // T + 2 h
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);

    // T + 23 h, then one second short of a day: nothing is released.
    app.advance(21 * HOUR);
    assert_eq!(app.tick_until_idle().await.released, 0);
    app.advance(HOUR - Duration::from_secs(1));
    assert_eq!(app.tick_until_idle().await.released, 0);
    assert_eq!(app.count_rows("snapshots").await, 4);
    assert!(
        find(&app, &expiring).await.is_some(),
        "still there at 24 h - 1 s"
    );

    // T + 24 h + 1 s: the one-day snapshot goes; the one an image uses stays.
    app.advance(Duration::from_secs(2));
    let done = app.tick_until_idle().await;
    assert_eq!(done.released, 1);
    assert!(find(&app, &expiring).await.is_none(), "released");
    assert_eq!(
        listed_ids(&app).await,
        HashSet::from([forever.clone(), imaged.clone(), second.clone()])
    );
    assert_eq!(app.count_rows("snapshots").await, 3);
    assert_eq!(
        app.count_rows("snapshot_tags").await,
        0,
        "its tags went too"
    );
    let pinned = find(&app, &imaged).await.unwrap();
    assert_eq!(pinned.usage, "image");
    assert_eq!(pinned.status(), pb::SnapshotStatus::Accomplished);

    // The released snapshot's quota is free: d-0 takes one more, up to its quota again.
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the released snapshot freed its quota");
    finish_copies(&app).await;
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::ResourceExhausted,
        "QuotaExceed.Snapshot",
        "403",
        Detail::QuotaFailure,
    );

    // Much later, the imaged snapshot is still kept.
    app.advance(400 * 24 * HOUR);
    assert_eq!(app.tick_until_idle().await.released, 0);
    assert!(find(&app, &imaged).await.is_some());
    assert_eq!(app.count_rows("snapshots").await, 4);
}

async fn a_snapshot_kept_forever_is_never_released(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let forever = app
        .create("acct-a", retained("d-acct-a-0", 0))
        .await
        .unwrap()
        .snapshot_id;
    let longest = app
        .create("acct-a", retained("d-acct-a-1", 65_536))
        .await
        .unwrap()
        .snapshot_id;
    finish_copies(&app).await;

    app.advance(400 * 24 * HOUR);
    let done = app.tick_until_idle().await;

    assert_eq!(done.released, 0);
    assert_eq!(listed_ids(&app).await, HashSet::from([forever, longest]));
    assert_eq!(app.count_rows("snapshots").await, 2);
}
