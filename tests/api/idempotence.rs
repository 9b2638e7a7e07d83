//! Client tokens: replays, mismatches, failed requests, and races on one token.

use tonic::Code;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{Backend, concurrently, create_request, spawn_app, world};
use crate::on_both_backends;
use snapshotd::pb;

on_both_backends!(
    a_replay_with_identical_parameters_returns_the_original_snapshot,
    a_token_reused_with_other_parameters_is_a_mismatch,
    a_failed_request_does_not_bind_its_token,
    one_token_raced_by_fifty_tasks_yields_one_snapshot,
    one_token_raced_over_several_disks_yields_one_snapshot_and_mismatches,
);

fn with_token(disk_id: &str, token: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        client_token: token.into(),
        snapshot_name: "nightly".into(),
        ..create_request(disk_id)
    }
}

async fn a_replay_with_identical_parameters_returns_the_original_snapshot(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    let first = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap();
    // The disk now has a snapshot in progress, yet the replay answers with the original id.
    let replay = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap();

    assert_eq!(replay.snapshot_id, first.snapshot_id);
    assert_ne!(
        replay.request_id, first.request_id,
        "each call has its own request id"
    );
    assert_eq!(app.count_rows("snapshots").await, 1);
    assert_eq!(app.count_rows("client_tokens").await, 1);
}

async fn a_token_reused_with_other_parameters_is_a_mismatch(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    app.create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap();

    let other_name = pb::CreateSnapshotRequest {
        snapshot_name: "weekly".into(),
        ..with_token("d-acct-a-0", "tok-1")
    };
    let other_description = pb::CreateSnapshotRequest {
        description: "changed".into(),
        ..with_token("d-acct-a-0", "tok-1")
    };
    let other_disk = with_token("d-acct-a-1", "tok-1");
    for request in [other_name, other_description, other_disk] {
        let status = app.create("acct-a", request).await.unwrap_err();
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "IdempotentParameterMismatch",
            "403",
            Detail::PreconditionFailure,
        );
        assert_eq!(
            metadata.get("clientToken").map(String::as_str),
            Some("tok-1")
        );
    }
    assert_eq!(app.count_rows("snapshots").await, 1);
}

async fn a_failed_request_does_not_bind_its_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut w = world("acct-a", 1);
    w.instance.status = pb::InstanceStatus::Stopping.into();
    app.seed(&w).await;

    let status = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(app.count_rows("client_tokens").await, 0);

    // Once the instance has stopped, the same token creates the snapshot.
    w.instance.status = pb::InstanceStatus::Stopped.into();
    app.put_instance(w.instance.clone()).await;
    let created = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap();
    let replay = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap();
    assert_eq!(created.snapshot_id, replay.snapshot_id);
}

async fn one_token_raced_by_fifty_tasks_yields_one_snapshot(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 1)).await;

    let results = concurrently(50, |_| {
        let app = app.clone();
        async move {
            app.create("acct-a", with_token("d-acct-a-0", "raced"))
                .await
        }
    })
    .await;

    let ids: std::collections::HashSet<_> = results
        .into_iter()
        .map(|r| r.expect("every racer gets the snapshot id").snapshot_id)
        .collect();
    assert_eq!(ids.len(), 1, "one snapshot id for all: {ids:?}");
    assert_eq!(app.count_rows("snapshots").await, 1);
    app.assert_invariants().await;
    assert_eq!(app.count_rows("client_tokens").await, 1);
}

async fn one_token_raced_over_several_disks_yields_one_snapshot_and_mismatches(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 5)).await;

    let results = concurrently(50, |n| {
        let app = app.clone();
        let disk_id = format!("d-acct-a-{}", n % 5);
        async move { app.create("acct-a", with_token(&disk_id, "raced")).await }
    })
    .await;

    let mut ids = std::collections::HashSet::new();
    for result in results {
        match result {
            Ok(response) => {
                ids.insert(response.snapshot_id);
            }
            Err(status) => {
                assert_error(
                    &status,
                    Code::FailedPrecondition,
                    "IdempotentParameterMismatch",
                    "403",
                    Detail::PreconditionFailure,
                );
            }
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "exactly one snapshot id was handed out: {ids:?}"
    );
    assert_eq!(app.count_rows("snapshots").await, 1);
    app.assert_invariants().await;
}
