//! ModifySnapshotAttribute against the real server: the attributes given change and the others
//! stay, empty clears, every input rule answers CreateSnapshot's code, a retention is extended
//! (moving the release) but never shortened, and the snapshot row's lock keeps a change from
//! racing a delete or a release.

use std::collections::HashMap;
use std::time::Duration;

use snapshotd::pb;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, TestApp, as_account, count_walk_page, create_request, finish_copies, spawn_app, world,
};
use crate::on_both_backends;

on_both_backends!(
    only_the_attributes_given_change_and_last_modified_moves,
    every_input_rule_answers_the_code_create_answers,
    a_retention_is_never_shortened_and_a_refused_change_writes_nothing,
    another_accounts_snapshot_or_an_unknown_one_is_not_found,
    an_extended_retention_moves_the_release_time,
    a_change_racing_a_release_or_a_delete_never_writes_to_a_gone_snapshot,
);

const DAY: Duration = Duration::from_secs(24 * 3600);

fn modify_request(snapshot_id: &str) -> pb::ModifySnapshotAttributeRequest {
    pb::ModifySnapshotAttributeRequest {
        snapshot_id: snapshot_id.to_owned(),
        ..Default::default()
    }
}

async fn modify(
    app: &TestApp,
    account: &str,
    request: pb::ModifySnapshotAttributeRequest,
) -> Result<pb::ModifySnapshotAttributeResponse, Status> {
    app.snapshots()
        .modify_snapshot_attribute(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

/// Every snapshot of `acct-a` that Describe lists, by id.
async fn listed(app: &TestApp) -> HashMap<String, pb::Snapshot> {
    let mut all = HashMap::new();
    let mut next_token = String::new();
    let mut pages = 0;
    loop {
        count_walk_page(&mut pages, "DescribeSnapshots");
        let page = app
            .snapshots()
            .describe_snapshots(as_account(
                "acct-a",
                pb::DescribeSnapshotsRequest {
                    max_results: 100,
                    next_token,
                    ..Default::default()
                },
            ))
            .await
            .expect("DescribeSnapshots")
            .into_inner();
        all.extend(
            page.snapshots
                .into_iter()
                .map(|s| (s.snapshot_id.clone(), s)),
        );
        if page.next_token.is_empty() {
            return all;
        }
        next_token = page.next_token;
    }
}

async fn find(app: &TestApp, snapshot_id: &str) -> Option<pb::Snapshot> {
    listed(app).await.remove(snapshot_id)
}

/// A snapshot of `acct-a`'s disk `n`, named `first`, described `the first one`, kept `days`.
async fn create(app: &TestApp, n: usize, days: i32) -> String {
    app.create(
        "acct-a",
        pb::CreateSnapshotRequest {
            snapshot_name: "first".to_owned(),
            description: "the first one".to_owned(),
            retention_days: days,
            ..create_request(&format!("d-acct-a-{n}"))
        },
    )
    .await
    .expect("CreateSnapshot")
    .snapshot_id
}

async fn only_the_attributes_given_change_and_last_modified_moves(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let id = create(&app, 0, 5).await;
    let before = find(&app, &id).await.unwrap();
    app.advance(Duration::from_secs(90));

    let answer = modify(
        &app,
        "acct-a",
        pb::ModifySnapshotAttributeRequest {
            snapshot_name: Some("renamed".to_owned()),
            ..modify_request(&id)
        },
    )
    .await
    .expect("a new name");
    assert!(uuid::Uuid::parse_str(&answer.request_id).is_ok());
    let renamed = find(&app, &id).await.unwrap();
    assert_eq!(renamed.snapshot_name, "renamed");
    assert_eq!(renamed.description, "the first one", "not given: kept");
    assert_eq!(renamed.retention_days, 5, "not given: kept");
    let moved = |s: &pb::Snapshot| s.last_modified_at.unwrap().seconds;
    assert_eq!(
        moved(&renamed),
        moved(&before) + 90,
        "LastModifiedTime moves"
    );
    assert_eq!(renamed.created_at, before.created_at);

    app.advance(Duration::from_secs(30));
    modify(
        &app,
        "acct-a",
        pb::ModifySnapshotAttributeRequest {
            snapshot_name: Some(String::new()),
            description: Some(String::new()),
            retention_days: Some(7),
            ..modify_request(&id)
        },
    )
    .await
    .expect("empty name and description, a longer retention");
    let cleared = find(&app, &id).await.unwrap();
    assert_eq!(cleared.snapshot_name, "", "given empty: removed");
    assert_eq!(cleared.description, "", "given empty: emptied");
    assert_eq!(cleared.retention_days, 7);
    assert_eq!(moved(&cleared), moved(&before) + 120);

    app.advance(Duration::from_secs(30));
    modify(&app, "acct-a", modify_request(&id))
        .await
        .expect("no attribute at all");
    // The copy goes on meanwhile: compare what a caller stores.
    let attributes = |s: pb::Snapshot| pb::Snapshot {
        progress: 0,
        remain_time_seconds: 0,
        ..s
    };
    let untouched = find(&app, &id).await.unwrap();
    assert_eq!(
        attributes(untouched),
        attributes(cleared),
        "naming no attribute changes nothing"
    );
    app.assert_invariants().await;
}

async fn every_input_rule_answers_the_code_create_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let id = create(&app, 0, 0).await;
    let name = |raw: &str| pb::ModifySnapshotAttributeRequest {
        snapshot_name: Some(raw.to_owned()),
        ..modify_request(&id)
    };
    let description = |raw: &str| pb::ModifySnapshotAttributeRequest {
        description: Some(raw.to_owned()),
        ..modify_request(&id)
    };
    let retention = |days: i32| pb::ModifySnapshotAttributeRequest {
        retention_days: Some(days),
        ..modify_request(&id)
    };
    let cases: Vec<(pb::ModifySnapshotAttributeRequest, &str, &str, &'static str)> = vec![
        (modify_request(""), "MissingParameter", "400", "snapshot_id"),
        (
            modify_request("s-short"),
            "InvalidSnapshotId.Malformed",
            "400",
            "snapshot_id",
        ),
        (
            name("a"),
            "InvalidSnapshotName.Malformed",
            "400",
            "snapshot_name",
        ),
        (
            name("auto-1"),
            "InvalidSnapshotName.Malformed",
            "400",
            "snapshot_name",
        ),
        (
            name("1abc"),
            "InvalidSnapshotName.Malformed",
            "400",
            "snapshot_name",
        ),
        (
            name("https://x"),
            "InvalidSnapshotName.Malformed",
            "400",
            "snapshot_name",
        ),
        (
            name("a.b"),
            "InvalidSnapshotName.Malformed",
            "400",
            "snapshot_name",
        ),
        (
            description("x"),
            "InvalidDescription.Malformed",
            "404",
            "description",
        ),
        (
            description("http://x"),
            "InvalidDescription.Malformed",
            "404",
            "description",
        ),
        (
            description("a\0b"),
            "InvalidDescription.Malformed",
            "404",
            "description",
        ),
        (
            retention(-1),
            "InvalidRetentionDays.Malformed",
            "400",
            "retention_days",
        ),
        (
            retention(65_537),
            "InvalidRetentionDays.Malformed",
            "400",
            "retention_days",
        ),
        // The first rule broken answers, in CreateSnapshot's order.
        (
            pb::ModifySnapshotAttributeRequest {
                snapshot_name: Some("a".to_owned()),
                description: Some("x".to_owned()),
                retention_days: Some(-1),
                ..modify_request(&id)
            },
            "InvalidSnapshotName.Malformed",
            "400",
            "snapshot_name",
        ),
    ];
    for (request, reason, http_status, field) in cases {
        let status = modify(&app, "acct-a", request.clone())
            .await
            .expect_err(&format!("{request:?}"));
        assert_error(
            &status,
            Code::InvalidArgument,
            reason,
            http_status,
            Detail::BadRequest(field),
        );
    }
    let unchanged = find(&app, &id).await.unwrap();
    assert_eq!(
        (
            unchanged.snapshot_name.as_str(),
            unchanged.description.as_str()
        ),
        ("first", "the first one")
    );
}

async fn a_retention_is_never_shortened_and_a_refused_change_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let kept_ten = create(&app, 0, 10).await;
    let forever = create(&app, 1, 0).await;
    let before = listed(&app).await;
    // (snapshot, requested, kept): the snapshot's retention is `kept`.
    for (id, requested, kept) in [
        (&kept_ten, 9, "10"),
        (&kept_ten, 1, "10"),
        (&forever, 1, "0"),
        (&forever, 65_536, "0"),
    ] {
        let status = modify(
            &app,
            "acct-a",
            pb::ModifySnapshotAttributeRequest {
                snapshot_name: Some("renamed".to_owned()),
                retention_days: Some(requested),
                ..modify_request(id)
            },
        )
        .await
        .expect_err("a shorter retention");
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "InvalidRetentionDays.ShortenNotSupported",
            "403",
            Detail::PreconditionFailure,
        );
        assert_eq!(metadata["snapshotId"], *id);
        assert_eq!(metadata["retentionDays"], kept);
        assert_eq!(metadata["requestedRetentionDays"], requested.to_string());
    }
    assert_eq!(
        listed(&app).await,
        before,
        "a refused change writes nothing"
    );

    for (id, requested) in [(&kept_ten, 10), (&kept_ten, 0), (&forever, 0)] {
        modify(
            &app,
            "acct-a",
            pb::ModifySnapshotAttributeRequest {
                retention_days: Some(requested),
                ..modify_request(id)
            },
        )
        .await
        .expect("the same retention, or forever");
    }
    assert_eq!(find(&app, &kept_ten).await.unwrap().retention_days, 0);
}

async fn another_accounts_snapshot_or_an_unknown_one_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 1)).await;
    let id = create(&app, 0, 0).await;
    for (account, snapshot_id) in [
        ("acct-b", id.as_str()),
        ("acct-a", "s-00000000000000000000"),
    ] {
        let status = modify(
            &app,
            account,
            pb::ModifySnapshotAttributeRequest {
                description: Some("stolen".to_owned()),
                ..modify_request(snapshot_id)
            },
        )
        .await
        .expect_err("not the caller's");
        let metadata = assert_error(
            &status,
            Code::NotFound,
            "InvalidSnapshotId.NotFound",
            "404",
            Detail::ResourceInfo("snapshot"),
        );
        assert_eq!(metadata["snapshotId"], snapshot_id);
    }
    assert_eq!(find(&app, &id).await.unwrap().description, "the first one");
}

async fn an_extended_retention_moves_the_release_time(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let extended = create(&app, 0, 1).await;
    let forever = create(&app, 1, 1).await;
    finish_copies(&app).await;
    for (id, days) in [(&extended, 3), (&forever, 0)] {
        modify(
            &app,
            "acct-a",
            pb::ModifySnapshotAttributeRequest {
                retention_days: Some(days),
                ..modify_request(id)
            },
        )
        .await
        .expect("a longer retention");
    }

    app.advance(DAY);
    assert_eq!(
        app.tick_until_idle().await.released,
        0,
        "past the old release"
    );
    assert_eq!(listed(&app).await.len(), 2);

    app.advance(2 * DAY);
    assert_eq!(
        app.tick_until_idle().await.released,
        1,
        "at the new release"
    );
    let left = listed(&app).await;
    assert!(
        !left.contains_key(&extended),
        "released three days after its creation"
    );
    assert!(left.contains_key(&forever), "kept forever");
    app.assert_invariants().await;
}

/// How many snapshots race a release, and how many a delete.
const RACED: usize = 24;

async fn a_change_racing_a_release_or_a_delete_never_writes_to_a_gone_snapshot(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2 * RACED)).await;
    let mut released = Vec::new();
    let mut deleted = Vec::new();
    for n in 0..RACED {
        released.push(create(&app, n, 1).await);
        // Not due yet: only the delete removes these.
        deleted.push(create(&app, RACED + n, 2).await);
    }
    finish_copies(&app).await;
    // Every `released` snapshot is due: the worker releases it unless a change comes first.
    app.advance(DAY);

    let extend = |id: String| {
        let client = app.snapshots();
        async move {
            let mut client = client;
            client
                .modify_snapshot_attribute(as_account(
                    "acct-a",
                    pb::ModifySnapshotAttributeRequest {
                        retention_days: Some(30),
                        ..modify_request(&id)
                    },
                ))
                .await
                .map(|_| ())
        }
    };
    let delete = |id: String| {
        let client = app.snapshots();
        async move {
            let mut client = client;
            client
                .delete_snapshot(as_account(
                    "acct-a",
                    pb::DeleteSnapshotRequest {
                        snapshot_id: id,
                        force: false,
                    },
                ))
                .await
                .map(|_| ())
        }
    };
    let extensions_of_released = futures::future::join_all(released.iter().cloned().map(extend));
    let extensions_of_deleted = futures::future::join_all(deleted.iter().cloned().map(extend));
    let deletions = futures::future::join_all(deleted.iter().cloned().map(delete));
    let (released_answers, deleted_answers, deletion_answers, work) = tokio::join!(
        extensions_of_released,
        extensions_of_deleted,
        deletions,
        app.tick_until_idle(),
    );

    let left = listed(&app).await;
    let mut extended_first = 0;
    for (id, answer) in released.iter().zip(&released_answers) {
        match answer {
            Ok(()) => {
                extended_first += 1;
                let snapshot = left.get(id).unwrap_or_else(|| {
                    panic!("{id}: the change was acknowledged, but the snapshot is gone")
                });
                assert_eq!(snapshot.retention_days, 30, "{id}");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{id}: {status:?}");
                assert!(!left.contains_key(id), "{id}: NotFound, yet still listed");
            }
        }
    }
    assert_eq!(
        RACED - extended_first,
        work.released,
        "each snapshot either released or extended"
    );
    for ((id, change), deletion) in deleted.iter().zip(&deleted_answers).zip(&deletion_answers) {
        assert!(deletion.is_ok(), "{id}: {deletion:?}");
        if let Err(status) = change {
            assert_eq!(status.code(), Code::NotFound, "{id}: {status:?}");
        }
        assert!(!left.contains_key(id), "{id} was deleted");
    }
    app.assert_invariants().await;
}
