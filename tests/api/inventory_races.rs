//! Inventory writes racing the calls that read what they change: every read-then-write locks
//! what it read, so no snapshot lands on a disk another account now owns and no disk ends up on
//! another account's instance (hostile-client findings, issue 16 #1).

use std::sync::Arc;

use tokio::sync::Barrier;

use crate::helpers::{
    Backend, as_admin, attached_disk, concurrently, healthy_account, put_instance_request,
    running_instance, spawn_app, world,
};
use crate::on_both_backends;

on_both_backends!(
    a_disk_moved_to_another_account_never_gets_the_old_accounts_snapshot,
    a_disk_attached_while_its_instance_moves_never_ends_on_another_accounts_instance,
    the_checker_reports_a_disk_on_another_accounts_instance,
);

/// Disks per round, and rounds.
const DISKS: usize = 40;
const ROUNDS: usize = 3;

async fn a_disk_moved_to_another_account_never_gets_the_old_accounts_snapshot(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 0)).await;
    app.seed(&world("acct-b", 0)).await;
    let mut both_ok = Vec::new();
    for round in 0..ROUNDS {
        let disk_ids: Vec<String> = (0..DISKS).map(|n| format!("d-race-{round}-{n}")).collect();
        for disk_id in &disk_ids {
            app.put_disk(attached_disk("acct-a", "i-acct-a", disk_id))
                .await
                .expect("PutDisk");
        }
        // Each disk's CreateSnapshot (as acct-a) and its move to acct-b start together.
        let barrier = Arc::new(Barrier::new(2 * DISKS));
        let answers = concurrently(2 * DISKS, |n| {
            let (app, barrier) = (app.clone(), barrier.clone());
            let disk_id = disk_ids[n % DISKS].clone();
            async move {
                barrier.wait().await;
                if n < DISKS {
                    app.create_on("acct-a", &disk_id).await.is_ok()
                } else {
                    let moved = attached_disk("acct-b", "i-acct-b", &disk_id);
                    app.put_disk(moved).await.is_ok()
                }
            }
        })
        .await;
        both_ok.extend(
            (0..DISKS)
                .filter(|&n| answers[n] && answers[n + DISKS])
                .map(|n| disk_ids[n].clone()),
        );
    }
    assert!(
        both_ok.is_empty(),
        "snapshotted as acct-a and moved to acct-b: {both_ok:?}"
    );
    app.assert_invariants().await;
}

async fn a_disk_attached_while_its_instance_moves_never_ends_on_another_accounts_instance(
    backend: Backend,
) {
    let app = Arc::new(spawn_app(backend).await);
    app.put_account(healthy_account("acct-a")).await;
    app.put_account(healthy_account("acct-b")).await;
    let mut both_ok = Vec::new();
    for round in 0..ROUNDS {
        let names: Vec<(String, String)> = (0..DISKS)
            .map(|n| (format!("i-race-{round}-{n}"), format!("d-race-{round}-{n}")))
            .collect();
        for (instance_id, disk_id) in &names {
            app.put_instance(running_instance("acct-a", instance_id))
                .await;
            let mut detached = attached_disk("acct-a", "", disk_id);
            detached.status = snapshotd::pb::DiskStatus::Available.into();
            app.put_disk(detached).await.expect("PutDisk");
        }
        // Each disk's attachment to its instance and that instance's move to acct-b start
        // together.
        let barrier = Arc::new(Barrier::new(2 * DISKS));
        let answers = concurrently(2 * DISKS, |n| {
            let (app, barrier) = (app.clone(), barrier.clone());
            let (instance_id, disk_id) = names[n % DISKS].clone();
            async move {
                barrier.wait().await;
                if n < DISKS {
                    let attach = attached_disk("acct-a", &instance_id, &disk_id);
                    app.put_disk(attach).await.is_ok()
                } else {
                    let moved = running_instance("acct-b", &instance_id);
                    app.inventory()
                        .put_instance(as_admin(put_instance_request(moved)))
                        .await
                        .is_ok()
                }
            }
        })
        .await;
        both_ok.extend(
            (0..DISKS)
                .filter(|&n| answers[n] && answers[n + DISKS])
                .map(|n| names[n].1.clone()),
        );
    }
    assert!(
        both_ok.is_empty(),
        "attached to an instance that moved to acct-b: {both_ok:?}"
    );
    app.assert_invariants().await;
}

async fn the_checker_reports_a_disk_on_another_accounts_instance(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 0)).await;
    app.assert_invariants().await;

    app.execute("UPDATE disks SET instance_id = 'i-acct-b' WHERE disk_id = 'd-acct-a-0'")
        .await;
    let found: Vec<_> = app
        .check_invariants(64)
        .await
        .into_iter()
        .map(|violation| (violation.promise, violation.subject))
        .collect();
    assert_eq!(
        found,
        [(
            "a disk is attached only to an instance of its own account",
            "d-acct-a-0".to_owned()
        )]
    );
}
