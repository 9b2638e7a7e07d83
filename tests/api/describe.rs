//! DescribeSnapshots against the real server: every field of a snapshot as its copy moves and
//! completes, each filter, tenant isolation, pagination over ties, and the request's errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use snapshotd::backend::{BackendError, CopyState, SimulatedBackend, SnapshotBackend};
use snapshotd::clock::Clock;
use snapshotd::domain::{PageCursor, Snapshot, Timestamp};
use snapshotd::pb;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error, assert_internal_error_hiding};
use crate::helpers::{
    Backend, Options, TestApp, a_snapshot_each_of_acct_a_and_acct_b, as_account, concurrently,
    count_walk_page, create_request, finish_copies, spawn_app, spawn_app_with, world,
};
use crate::on_both_backends;

on_both_backends!(
    describe_returns_the_callers_snapshots_newest_first_with_every_field,
    each_filter_narrows_the_listing_to_the_matching_snapshots,
    another_accounts_snapshots_never_appear,
    walking_next_token_visits_every_snapshot_once_in_order,
    a_snapshot_created_during_a_walk_does_not_disturb_it,
    each_malformed_describe_request_is_refused_with_its_reason_and_field,
    the_limits_of_snapshot_ids_and_max_results_are_accepted,
    a_describe_without_an_account_is_unauthenticated,
    a_next_token_with_any_one_character_changed_is_malformed,
    a_token_page_reports_the_first_pages_total_while_snapshots_come_and_go,
    a_v1_token_of_an_older_server_lists_the_next_page_with_a_fresh_count,
    a_caller_who_rewrites_their_tokens_total_is_told_that_total,
    an_accounts_total_stays_the_number_of_its_snapshots_as_they_come_and_go,
    a_snapshot_row_the_domain_cannot_read_is_an_internal_error_without_internals,
);

// ---------------------------------------------------------------------------------------------
// Local helpers.

async fn describe(
    app: &TestApp,
    account: &str,
    request: pb::DescribeSnapshotsRequest,
) -> Result<pb::DescribeSnapshotsResponse, Status> {
    app.snapshots()
        .describe_snapshots(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

/// The ids one page lists, in order.
async fn listed(
    app: &TestApp,
    account: &str,
    request: pb::DescribeSnapshotsRequest,
) -> Vec<String> {
    describe(app, account, request)
        .await
        .expect("DescribeSnapshots")
        .snapshots
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect()
}

/// The server's (manual) clock.
fn server_now(app: &TestApp) -> Timestamp {
    app.clock.as_ref().expect("a manual clock").now()
}

#[track_caller]
fn assert_at(actual: Option<prost_types::Timestamp>, expected: Timestamp, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what} is set"));
    let actual =
        DateTime::<Utc>::from_timestamp(actual.seconds, u32::try_from(actual.nanos).unwrap())
            .expect("a valid timestamp");
    // PostgreSQL keeps microseconds.
    assert!(
        (actual - expected).abs() < TimeDelta::milliseconds(1),
        "{what}: {actual} is not {expected}"
    );
}

fn tag(key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn sorted_tags(mut tags: Vec<pb::Tag>) -> Vec<(String, String)> {
    tags.sort_by(|a, b| a.key.cmp(&b.key));
    tags.into_iter().map(|t| (t.key, t.value)).collect()
}

#[track_caller]
fn assert_request_id(request_id: &str) {
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    assert_eq!(request_id, request_id.to_uppercase());
}

/// Copies from `fails_disk` fail; every other copy is simulated at 256 MiB/s.
struct FailsOneDisk {
    fails_disk: &'static str,
    inner: SimulatedBackend,
}

impl FailsOneDisk {
    fn new(fails_disk: &'static str) -> Self {
        Self {
            fails_disk,
            inner: SimulatedBackend::new(256),
        }
    }
}

#[async_trait]
impl SnapshotBackend for FailsOneDisk {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        self.inner.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        if snapshot.source_disk_id == self.fails_disk {
            CopyState::Failed("bad sector".into())
        } else {
            self.inner.copy_state(snapshot, now).await
        }
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.inner.cancel_copy(snapshot).await
    }
}

// ---------------------------------------------------------------------------------------------
// Fields.

async fn describe_returns_the_callers_snapshots_newest_first_with_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut w = world("acct-a", 2);
    // A 20 GiB system disk: 80 s at 256 MiB/s.
    w.disks[1].r#type = pb::DiskType::System.into();
    w.disks[1].size_gib = 20;
    app.seed(&w).await;

    let first_at = server_now(&app);
    let first = app
        .create(
            "acct-a",
            pb::CreateSnapshotRequest {
                snapshot_name: "nightly-1".into(),
                description: "before the upgrade".into(),
                retention_days: 7,
                tags: vec![tag("team", ""), tag("env", "prod")],
                ..create_request("d-acct-a-0")
            },
        )
        .await
        .expect("first CreateSnapshot");
    app.advance(Duration::from_secs(10));
    let second_at = server_now(&app);
    let second = app
        .create_on("acct-a", "d-acct-a-1")
        .await
        .expect("second CreateSnapshot");
    app.advance(Duration::from_secs(30));

    let response = describe(&app, "acct-a", pb::DescribeSnapshotsRequest::default())
        .await
        .expect("DescribeSnapshots");

    assert_request_id(&response.request_id);
    assert!(response.next_token.is_empty(), "one page only");
    let ids: Vec<_> = response.snapshots.iter().map(|s| &s.snapshot_id).collect();
    assert_eq!(
        ids,
        [&second.snapshot_id, &first.snapshot_id],
        "newest first"
    );
    let (newer, older) = (&response.snapshots[0], &response.snapshots[1]);

    // 40 s of 160 s.
    assert_eq!(older.snapshot_name, "nightly-1");
    assert_eq!(older.description, "before the upgrade");
    assert_eq!(older.source_disk_id, "d-acct-a-0");
    assert_eq!(older.source_disk_size_gib, 40);
    assert_eq!(older.source_disk_type(), pb::DiskType::Data);
    assert_eq!(older.status(), pb::SnapshotStatus::Progressing);
    assert_eq!(older.progress, 25);
    assert_eq!(older.remain_time_seconds, 120);
    assert_at(older.created_at, first_at, "created_at");
    assert_at(older.last_modified_at, first_at, "last_modified_at");
    assert_eq!(older.retention_days, 7);
    assert_eq!(
        sorted_tags(older.tags.clone()),
        [
            ("env".to_owned(), "prod".to_owned()),
            ("team".to_owned(), String::new())
        ]
    );
    assert_eq!(older.usage, "none");

    // 30 s of 80 s: 37.5 % (truncated), 50 s left.
    assert_eq!(newer.snapshot_name, "");
    assert_eq!(newer.description, "");
    assert_eq!(newer.source_disk_id, "d-acct-a-1");
    assert_eq!(newer.source_disk_size_gib, 20);
    assert_eq!(newer.source_disk_type(), pb::DiskType::System);
    assert_eq!(newer.status(), pb::SnapshotStatus::Progressing);
    assert_eq!(newer.progress, 37);
    assert_eq!(newer.remain_time_seconds, 50);
    assert_at(newer.created_at, second_at, "created_at");
    assert_eq!(newer.retention_days, 0, "kept forever");
    assert!(newer.tags.is_empty());
    assert_eq!(newer.usage, "none");

    // The clock moves: 100 s of 160 s.
    app.advance(Duration::from_secs(60));
    let older = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            snapshot_ids: vec![first.snapshot_id.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .snapshots
    .remove(0);
    assert_eq!(older.status(), pb::SnapshotStatus::Progressing);
    assert_eq!((older.progress, older.remain_time_seconds), (62, 60));

    crate::helpers::finish_copies(&app).await;
    let done_at = server_now(&app);
    let response = describe(&app, "acct-a", pb::DescribeSnapshotsRequest::default())
        .await
        .unwrap();
    assert_request_id(&response.request_id);
    let ids: Vec<_> = response.snapshots.iter().map(|s| &s.snapshot_id).collect();
    assert_eq!(ids, [&second.snapshot_id, &first.snapshot_id]);
    for (snapshot, created_at) in response.snapshots.iter().zip([second_at, first_at]) {
        assert_eq!(snapshot.status(), pb::SnapshotStatus::Accomplished);
        assert_eq!(snapshot.progress, 100);
        assert_eq!(snapshot.remain_time_seconds, 0);
        assert_at(snapshot.created_at, created_at, "created_at is kept");
        assert_at(
            snapshot.last_modified_at,
            done_at,
            "last_modified_at moves on completion",
        );
    }
    assert_eq!(response.snapshots[1].retention_days, 7);
    assert_eq!(response.snapshots[1].tags.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Filters.

struct FilterWorld {
    app: TestApp,
    /// acct-a: d-0 accomplished, name alpha, env=prod team=db, an image made of it; at T.
    a0: String,
    /// acct-a: d-1 (now attached to i-acct-a-2) accomplished, name beta, env=dev; at T + 1 s.
    a1: String,
    /// acct-a: d-2 (a system disk) failed, name gamma, team=web; at T + 2 s.
    a2: String,
    /// acct-a: d-0 progressing, name alpha, env=prod; at T + 3602 s.
    a3: String,
    /// acct-b: its d-0 progressing, name alpha, env=prod.
    b0: String,
}

async fn filter_world(backend: Backend) -> FilterWorld {
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: Arc::new(FailsOneDisk::new("d-acct-a-2")),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 3)).await;
    app.seed(&world("acct-b", 1)).await;
    // d-acct-a-2 is a system disk.
    let mut system_disk = crate::helpers::attached_disk("acct-a", "i-acct-a", "d-acct-a-2");
    system_disk.r#type = pb::DiskType::System.into();
    app.put_disk(system_disk).await.expect("PutDisk");
    let create = |disk: &str, name: &str, tags: Vec<pb::Tag>| pb::CreateSnapshotRequest {
        snapshot_name: name.into(),
        tags,
        ..create_request(disk)
    };

    let a0 = app
        .create(
            "acct-a",
            create(
                "d-acct-a-0",
                "alpha",
                vec![tag("env", "prod"), tag("team", "db")],
            ),
        )
        .await
        .unwrap()
        .snapshot_id;
    app.advance(Duration::from_secs(1));
    let a1 = app
        .create(
            "acct-a",
            create("d-acct-a-1", "beta", vec![tag("env", "dev")]),
        )
        .await
        .unwrap()
        .snapshot_id;
    app.advance(Duration::from_secs(1));
    let a2 = app
        .create(
            "acct-a",
            create("d-acct-a-2", "gamma", vec![tag("team", "web")]),
        )
        .await
        .unwrap()
        .snapshot_id;
    app.advance(Duration::from_secs(3600));
    let done = app.tick_until_idle().await;
    assert_eq!((done.accomplished, done.failed), (2, 1));
    // An image of a0 (usage image); d-acct-a-1 moves to a second instance of acct-a.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    pb::image_service_client::ImageServiceClient::new(channel)
        .create_image(as_account(
            "acct-a",
            pb::CreateImageRequest {
                snapshot_id: a0.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage");
    app.put_instance(crate::helpers::running_instance("acct-a", "i-acct-a-2"))
        .await;
    app.put_disk(crate::helpers::attached_disk(
        "acct-a",
        "i-acct-a-2",
        "d-acct-a-1",
    ))
    .await
    .expect("PutDisk");
    let a3 = app
        .create(
            "acct-a",
            create("d-acct-a-0", "alpha", vec![tag("env", "prod")]),
        )
        .await
        .unwrap()
        .snapshot_id;
    app.advance(Duration::from_secs(1));
    let b0 = app
        .create(
            "acct-b",
            create("d-acct-b-0", "alpha", vec![tag("env", "prod")]),
        )
        .await
        .unwrap()
        .snapshot_id;
    FilterWorld {
        app,
        a0,
        a1,
        a2,
        a3,
        b0,
    }
}

async fn each_filter_narrows_the_listing_to_the_matching_snapshots(backend: Backend) {
    let FilterWorld {
        app,
        a0,
        a1,
        a2,
        a3,
        ..
    } = filter_world(backend).await;
    let base = pb::DescribeSnapshotsRequest::default;
    let status = |s: pb::SnapshotStatus| pb::DescribeSnapshotsRequest {
        status: s.into(),
        ..base()
    };
    let tags = |tags: Vec<pb::Tag>| pb::DescribeSnapshotsRequest { tags, ..base() };
    let a0_created = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            snapshot_ids: vec![a0.clone()],
            ..base()
        },
    )
    .await
    .expect("DescribeSnapshots")
    .snapshots[0]
        .created_at;
    let at = |seconds: i64| {
        a0_created.map(|t| prost_types::Timestamp {
            seconds: t.seconds + seconds,
            nanos: t.nanos,
        })
    };
    let created = |after: Option<i64>, before: Option<i64>| pb::DescribeSnapshotsRequest {
        created_after: after.and_then(at),
        created_before: before.and_then(at),
        ..base()
    };
    let cases: Vec<(&str, pb::DescribeSnapshotsRequest, Vec<&String>)> = vec![
        ("no filter", base(), vec![&a3, &a2, &a1, &a0]),
        (
            "instance_id: the disks attached to it now",
            pb::DescribeSnapshotsRequest {
                instance_id: "i-acct-a".into(),
                ..base()
            },
            vec![&a3, &a2, &a0],
        ),
        (
            "instance_id: a disk moved there keeps its snapshots",
            pb::DescribeSnapshotsRequest {
                instance_id: "i-acct-a-2".into(),
                ..base()
            },
            vec![&a1],
        ),
        (
            "instance_id of another account matches nothing",
            pb::DescribeSnapshotsRequest {
                instance_id: "i-acct-b".into(),
                ..base()
            },
            vec![],
        ),
        (
            "instance_id nobody has",
            pb::DescribeSnapshotsRequest {
                instance_id: "i-nobody".into(),
                ..base()
            },
            vec![],
        ),
        (
            "source_disk_type SYSTEM",
            pb::DescribeSnapshotsRequest {
                source_disk_type: pb::DiskType::System.into(),
                ..base()
            },
            vec![&a2],
        ),
        (
            "source_disk_type DATA",
            pb::DescribeSnapshotsRequest {
                source_disk_type: pb::DiskType::Data.into(),
                ..base()
            },
            vec![&a3, &a1, &a0],
        ),
        (
            "usage image",
            pb::DescribeSnapshotsRequest {
                usage: "image".into(),
                ..base()
            },
            vec![&a0],
        ),
        (
            "usage none",
            pb::DescribeSnapshotsRequest {
                usage: "none".into(),
                ..base()
            },
            vec![&a3, &a2, &a1],
        ),
        (
            "created_after is inclusive",
            created(Some(1), None),
            vec![&a3, &a2, &a1],
        ),
        (
            "created_before is exclusive",
            created(None, Some(2)),
            vec![&a1, &a0],
        ),
        (
            "a range of one second",
            created(Some(1), Some(2)),
            vec![&a1],
        ),
        (
            "a range before everything",
            created(Some(-10), Some(0)),
            vec![],
        ),
        (
            "disk_id",
            pb::DescribeSnapshotsRequest {
                disk_id: "d-acct-a-0".into(),
                ..base()
            },
            vec![&a3, &a0],
        ),
        (
            "disk_id without snapshots",
            pb::DescribeSnapshotsRequest {
                disk_id: "d-acct-a-9".into(),
                ..base()
            },
            vec![],
        ),
        (
            "a subset of snapshot_ids",
            pb::DescribeSnapshotsRequest {
                snapshot_ids: vec![a0.clone(), a2.clone()],
                ..base()
            },
            vec![&a2, &a0],
        ),
        (
            "snapshot_ids that do not exist",
            pb::DescribeSnapshotsRequest {
                snapshot_ids: vec!["s-00000000000000000000".into()],
                ..base()
            },
            vec![],
        ),
        (
            "UNSPECIFIED status is any",
            status(pb::SnapshotStatus::Unspecified),
            vec![&a3, &a2, &a1, &a0],
        ),
        (
            "PROGRESSING",
            status(pb::SnapshotStatus::Progressing),
            vec![&a3],
        ),
        (
            "ACCOMPLISHED",
            status(pb::SnapshotStatus::Accomplished),
            vec![&a1, &a0],
        ),
        ("FAILED", status(pb::SnapshotStatus::Failed), vec![&a2]),
        (
            "snapshot_name",
            pb::DescribeSnapshotsRequest {
                snapshot_name: "alpha".into(),
                ..base()
            },
            vec![&a3, &a0],
        ),
        (
            "snapshot_name nobody has",
            pb::DescribeSnapshotsRequest {
                snapshot_name: "delta".into(),
                ..base()
            },
            vec![],
        ),
        ("one tag", tags(vec![tag("env", "prod")]), vec![&a3, &a0]),
        (
            "an empty value matches any value of the key",
            tags(vec![tag("env", "")]),
            vec![&a3, &a1, &a0],
        ),
        (
            "every tag must match",
            tags(vec![tag("env", "prod"), tag("team", "db")]),
            vec![&a0],
        ),
        (
            "every tag must match, one with any value",
            tags(vec![tag("team", ""), tag("env", "prod")]),
            vec![&a0],
        ),
        ("a key alone", tags(vec![tag("team", "")]), vec![&a2, &a0]),
        (
            "a value nobody has",
            tags(vec![tag("env", "staging")]),
            vec![],
        ),
        ("a key nobody has", tags(vec![tag("owner", "")]), vec![]),
        (
            "filters combine",
            pb::DescribeSnapshotsRequest {
                disk_id: "d-acct-a-0".into(),
                status: pb::SnapshotStatus::Accomplished.into(),
                snapshot_name: "alpha".into(),
                tags: vec![tag("team", "db")],
                ..base()
            },
            vec![&a0],
        ),
        (
            "filters combine to nothing",
            pb::DescribeSnapshotsRequest {
                disk_id: "d-acct-a-1".into(),
                snapshot_name: "alpha".into(),
                ..base()
            },
            vec![],
        ),
    ];
    for (label, request, expected) in cases {
        let page = describe(&app, "acct-a", request)
            .await
            .unwrap_or_else(|status| panic!("{label}: {status:?}"));
        let ids: Vec<&String> = page.snapshots.iter().map(|s| &s.snapshot_id).collect();
        assert_eq!(ids, expected, "{label}");
        assert_eq!(
            page.total_count as usize,
            expected.len(),
            "{label}: total_count"
        );
    }
    // total_count counts every match, not the page.
    let first_page = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            max_results: 1,
            ..base()
        },
    )
    .await
    .expect("DescribeSnapshots");
    assert_eq!((first_page.snapshots.len(), first_page.total_count), (1, 4));
    // available: the accomplished ones only.
    let available: Vec<(String, bool)> = describe(&app, "acct-a", base())
        .await
        .expect("DescribeSnapshots")
        .snapshots
        .into_iter()
        .map(|s| (s.snapshot_id, s.available))
        .collect();
    assert_eq!(
        available,
        vec![
            (a3.clone(), false),
            (a2.clone(), false),
            (a1.clone(), true),
            (a0.clone(), true)
        ]
    );
}

async fn another_accounts_snapshots_never_appear(backend: Backend) {
    let FilterWorld {
        app, a0, a3, b0, ..
    } = filter_world(backend).await;

    assert_eq!(
        listed(&app, "acct-b", pb::DescribeSnapshotsRequest::default()).await,
        std::slice::from_ref(&b0)
    );
    let by_ids = |ids: Vec<String>| pb::DescribeSnapshotsRequest {
        snapshot_ids: ids,
        ..Default::default()
    };
    assert!(
        listed(&app, "acct-a", by_ids(vec![b0.clone()]))
            .await
            .is_empty(),
        "not even by its id"
    );
    assert_eq!(
        listed(&app, "acct-a", by_ids(vec![b0.clone(), a0.clone()])).await,
        std::slice::from_ref(&a0)
    );
    assert!(
        listed(&app, "acct-b", by_ids(vec![a0.clone(), a3.clone()]))
            .await
            .is_empty()
    );
    let by_disk = pb::DescribeSnapshotsRequest {
        disk_id: "d-acct-b-0".into(),
        ..Default::default()
    };
    assert!(listed(&app, "acct-a", by_disk).await.is_empty());
    let by_name = pb::DescribeSnapshotsRequest {
        snapshot_name: "alpha".into(),
        ..Default::default()
    };
    assert_eq!(listed(&app, "acct-a", by_name).await, [a3, a0]);
    assert!(
        listed(&app, "acct-nobody", pb::DescribeSnapshotsRequest::default())
            .await
            .is_empty(),
        "an account with nothing sees nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Pagination.

/// Follows `next_token` from the first page; returns the ids of each page.
async fn walk(app: &TestApp, max_results: i32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next_token = String::new();
    let mut walked = 0;
    loop {
        count_walk_page(&mut walked, "DescribeSnapshots");
        let response = describe(
            app,
            "acct-a",
            pb::DescribeSnapshotsRequest {
                max_results,
                next_token: next_token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("a page");
        pages.push(
            response
                .snapshots
                .into_iter()
                .map(|s| s.snapshot_id)
                .collect(),
        );
        if response.next_token.is_empty() {
            return pages;
        }
        next_token = response.next_token;
    }
}

/// 30 snapshots on 30 disks: 20 a second apart, then 10 at one instant. Returns their ids in
/// the order DescribeSnapshots must list them: newest first, ties by id descending.
async fn thirty_snapshots(app: &TestApp) -> Vec<String> {
    let mut created: Vec<(u32, String)> = Vec::new();
    for n in 0..30u32 {
        let id = app
            .create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .expect("CreateSnapshot")
            .snapshot_id;
        created.push((n.min(20), id));
        if n < 20 {
            app.advance(Duration::from_secs(1));
        }
    }
    created.sort_by(|a, b| b.cmp(a));
    created.into_iter().map(|(_, id)| id).collect()
}

async fn walking_next_token_visits_every_snapshot_once_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 30)).await;
    let expected = thirty_snapshots(&app).await;

    // (max_results, page sizes): 0 is the default of 10; the first page of 7 ends inside the
    // ten snapshots that share one created_at.
    for (max_results, sizes) in [
        (7, vec![7, 7, 7, 7, 2]),
        (0, vec![10, 10, 10]),
        (1, vec![1; 30]),
        (29, vec![29, 1]),
        (30, vec![30]),
        (100, vec![30]),
    ] {
        let pages = walk(&app, max_results).await;
        let got_sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        assert_eq!(got_sizes, sizes, "page sizes for max_results {max_results}");
        let visited: Vec<String> = pages.into_iter().flatten().collect();
        let unique: std::collections::HashSet<_> = visited.iter().collect();
        assert_eq!(unique.len(), visited.len(), "no duplicates ({max_results})");
        assert_eq!(
            visited, expected,
            "every snapshot once, in order ({max_results})"
        );
    }

    // The default page says there is more.
    let first = describe(&app, "acct-a", pb::DescribeSnapshotsRequest::default())
        .await
        .unwrap();
    assert_eq!(first.snapshots.len(), 10, "the default page size is 10");
    assert!(!first.next_token.is_empty());
}

async fn a_snapshot_created_during_a_walk_does_not_disturb_it(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 31)).await;
    let expected = thirty_snapshots(&app).await;

    let page = |next_token: String| pb::DescribeSnapshotsRequest {
        max_results: 7,
        next_token,
        ..Default::default()
    };
    let first = describe(&app, "acct-a", page(String::new())).await.unwrap();
    let mut visited: Vec<String> = first.snapshots.into_iter().map(|s| s.snapshot_id).collect();
    app.advance(Duration::from_secs(1));
    let newcomer = app.create_on("acct-a", "d-acct-a-30").await.unwrap();
    let mut next_token = first.next_token;
    let mut pages = 1;
    while !next_token.is_empty() {
        count_walk_page(&mut pages, "DescribeSnapshots");
        let response = describe(&app, "acct-a", page(next_token)).await.unwrap();
        visited.extend(response.snapshots.into_iter().map(|s| s.snapshot_id));
        next_token = response.next_token;
    }
    assert_eq!(visited, expected);

    let all = listed(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            max_results: 100,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 31);
    assert_eq!(all[0], newcomer.snapshot_id, "a new walk starts with it");
}

/// `token` rewritten as its caller could (the checksum is no signature): the same cursor,
/// carrying `total`.
fn with_total(token: &str, total: u64) -> String {
    let cursor = PageCursor::parse_token(token).expect("a token the service wrote");
    PageCursor {
        total: Some(total),
        ..cursor
    }
    .to_token()
}

async fn delete_now(app: &TestApp, snapshot_id: &str) {
    app.snapshots()
        .delete_snapshot(as_account(
            "acct-a",
            pb::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.to_owned(),
                force: true,
            },
        ))
        .await
        .expect("DeleteSnapshot");
}

/// The total is counted on the listing's first page and carried by its tokens: a page reached
/// with a token reports it, whatever was created or deleted since, including a page past the
/// end; a page without a token (a new listing) counts again.
async fn a_token_page_reports_the_first_pages_total_while_snapshots_come_and_go(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 40)).await;
    let expected = thirty_snapshots(&app).await;
    let page = |next_token: String| pb::DescribeSnapshotsRequest {
        max_results: 7,
        next_token,
        ..Default::default()
    };

    let first = describe(&app, "acct-a", page(String::new())).await.unwrap();
    assert_eq!(first.total_count, 30);
    let mut visited: Vec<String> = first.snapshots.into_iter().map(|s| s.snapshot_id).collect();
    let mut next_token = first.next_token;
    // Before each token page: one snapshot more, and two fewer of those not listed yet.
    let mut changes = 0;
    while !next_token.is_empty() {
        app.advance(Duration::from_secs(1));
        app.create_on("acct-a", &format!("d-acct-a-{}", 30 + changes))
            .await
            .unwrap();
        for oldest in 1..=2 {
            delete_now(&app, &expected[expected.len() - 2 * changes - oldest]).await;
        }
        changes += 1;
        let response = describe(&app, "acct-a", page(next_token)).await.unwrap();
        assert_eq!(
            response.total_count, 30,
            "token page {changes}: the first page's total"
        );
        visited.extend(response.snapshots.into_iter().map(|s| s.snapshot_id));
        next_token = response.next_token;
    }
    assert_eq!(changes, 3, "pages of 7, 7, 7 and 3");
    let survivors = &expected[..expected.len() - 2 * changes];
    assert_eq!(visited, survivors, "the walk itself is undisturbed");

    // A new listing counts what is there now.
    let now = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            max_results: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(now.total_count as usize, now.snapshots.len());
    assert_eq!(now.total_count, 30 - 3);

    // A page past the end (every row after the token deleted meanwhile) reports the carried
    // total too, and ends the walk.
    let first = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            max_results: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for rest in &now.snapshots[2..] {
        delete_now(&app, &rest.snapshot_id).await;
    }
    let past_the_end = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            max_results: 2,
            next_token: first.next_token,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            past_the_end.snapshots.len(),
            past_the_end.next_token.as_str(),
            past_the_end.total_count
        ),
        (0, "", now.total_count)
    );
}

/// A listing filtered by nothing but the account reads its total from the account's kept
/// count (migration 0011), not from its rows: the total must stay the number of the account's
/// snapshots through creates of two accounts at once (batched together), a DeleteSnapshot, and
/// the retention sweep releasing snapshots of both accounts in one step, rows written by hand,
/// and agree with a filtered listing, which counts rows.
async fn an_accounts_total_stays_the_number_of_its_snapshots_as_they_come_and_go(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    for account in ["acct-a", "acct-b"] {
        app.seed(&world(account, 12)).await;
    }
    let total = |account: &'static str| {
        let app = Arc::clone(&app);
        async move {
            let first_page = pb::DescribeSnapshotsRequest {
                max_results: 5,
                ..Default::default()
            };
            let unfiltered = describe(&app, account, first_page.clone()).await.unwrap();
            // A status filter (every snapshot here is accomplished) makes the total a count.
            let counted = pb::DescribeSnapshotsRequest {
                status: pb::SnapshotStatus::Accomplished.into(),
                ..first_page
            };
            let counted = describe(&app, account, counted).await.unwrap();
            assert_eq!(
                unfiltered.total_count, counted.total_count,
                "{account}: the kept count against the rows' count"
            );
            unfiltered.total_count
        }
    };
    // Twelve creates on each account at once; disks 0 to 3 of each kept one day only.
    let created = concurrently(24, |n| {
        let app = Arc::clone(&app);
        async move {
            let account = if n % 2 == 0 { "acct-a" } else { "acct-b" };
            let disk = n / 2;
            let request = pb::CreateSnapshotRequest {
                retention_days: if disk < 4 { 1 } else { 0 },
                ..create_request(&format!("d-{account}-{disk}"))
            };
            app.create(account, request).await.map(|r| r.snapshot_id)
        }
    })
    .await;
    let created: Vec<String> = created.into_iter().map(Result::unwrap).collect();
    finish_copies(&app).await;
    assert_eq!((total("acct-a").await, total("acct-b").await), (12, 12));

    // acct-a's snapshot of disk 11 (created by call 22).
    delete_now(&app, &created[22]).await;
    assert_eq!((total("acct-a").await, total("acct-b").await), (11, 12));

    app.advance(Duration::from_secs(2 * 24 * 3600));
    assert_eq!(app.tick_until_idle().await.released, 8);
    assert_eq!((total("acct-a").await, total("acct-b").await), (7, 8));
    assert_eq!(total("acct-nobody").await, 0);

    // Rows written as a replica of an older version (or an operator) writes them, knowing
    // nothing of the counts: a copy of acct-b's snapshot of disk 11 (call 23) added, and
    // acct-a's of disk 10 (call 20) deleted, each with its disk's own count.
    let columns = "account_id, source_disk_id, snapshot_name, description, \
                   source_disk_size_gib, source_disk_type, status, created_at, started_at, \
                   copy_due_at, last_modified_at";
    app.execute(&format!(
        "INSERT INTO snapshots (snapshot_id, {columns}) \
         SELECT 's-byhand', {columns} FROM snapshots WHERE snapshot_id = '{}'; \
         UPDATE disks SET snapshot_count = snapshot_count + 1 WHERE disk_id = 'd-acct-b-11'",
        created[23]
    ))
    .await;
    app.execute(&format!(
        "DELETE FROM snapshots WHERE snapshot_id = '{}'; \
         UPDATE disks SET snapshot_count = snapshot_count - 1 WHERE disk_id = 'd-acct-a-10'",
        created[20]
    ))
    .await;
    assert_eq!((total("acct-a").await, total("acct-b").await), (6, 9));
    app.assert_invariants().await;
}

/// A `v1` token (no total: written by a server before the total was carried) still lists the
/// next page, and that page counts; its own token carries that count on.
async fn a_v1_token_of_an_older_server_lists_the_next_page_with_a_fresh_count(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 32)).await;
    let expected = thirty_snapshots(&app).await;
    let page = |next_token: String| pb::DescribeSnapshotsRequest {
        max_results: 7,
        next_token,
        ..Default::default()
    };
    let first = describe(&app, "acct-a", page(String::new())).await.unwrap();
    let v2 = PageCursor::parse_token(&first.next_token).unwrap();
    assert_eq!(v2.total, Some(30));
    let v1 = PageCursor { total: None, ..v2 }.to_token();
    assert!(v1.starts_with("7631"), "hex of v1");

    app.advance(Duration::from_secs(1));
    app.create_on("acct-a", "d-acct-a-30").await.unwrap();
    let by_v2 = describe(&app, "acct-a", page(first.next_token))
        .await
        .unwrap();
    let by_v1 = describe(&app, "acct-a", page(v1)).await.unwrap();
    let ids = |response: &pb::DescribeSnapshotsResponse| -> Vec<String> {
        response
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect()
    };
    assert_eq!(ids(&by_v1), expected[7..14]);
    assert_eq!(ids(&by_v2), ids(&by_v1));
    assert_eq!((by_v2.total_count, by_v1.total_count), (30, 31));

    app.advance(Duration::from_secs(1));
    app.create_on("acct-a", "d-acct-a-31").await.unwrap();
    let after_v1 = describe(&app, "acct-a", page(by_v1.next_token))
        .await
        .unwrap();
    assert_eq!(ids(&after_v1), expected[14..21]);
    assert_eq!(after_v1.total_count, 31, "the v1 page's count, carried on");
}

/// The token's checksum catches mistakes, not rewrites: a caller who rewrites their own token's
/// total (and its checksum) is told that total on their own later pages, and nothing else
/// changes: the same rows, and a new listing counts again.
async fn a_caller_who_rewrites_their_tokens_total_is_told_that_total(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 30)).await;
    let expected = thirty_snapshots(&app).await;
    let page = |next_token: String| pb::DescribeSnapshotsRequest {
        max_results: 7,
        next_token,
        ..Default::default()
    };
    let first = describe(&app, "acct-a", page(String::new())).await.unwrap();
    for total in [0, 12_345, i64::MAX as u64] {
        let rewritten = describe(&app, "acct-a", page(with_total(&first.next_token, total)))
            .await
            .unwrap();
        let ids: Vec<String> = rewritten
            .snapshots
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert_eq!(ids, expected[7..14], "{total}");
        // The wire field is an int32: a larger total is reported as its largest value.
        assert_eq!(
            i64::from(rewritten.total_count),
            i64::try_from(total).unwrap().min(i64::from(i32::MAX)),
            "{total}"
        );
    }
    let again = describe(&app, "acct-a", page(String::new())).await.unwrap();
    assert_eq!(again.total_count, 30);
}

// ---------------------------------------------------------------------------------------------
// Errors.

fn snapshot_id(n: usize) -> String {
    format!("s-{n:020}")
}

/// One malformed DescribeSnapshots request and the refusal it must get.
struct Malformed {
    label: String,
    request: pb::DescribeSnapshotsRequest,
    reason: &'static str,
    http_status: &'static str,
    /// The field its BadRequest names.
    field: &'static str,
    /// The ErrorInfo metadata key and value that must echo the input back, if any.
    echoed: Option<(&'static str, String)>,
}

fn row(
    label: impl Into<String>,
    request: pb::DescribeSnapshotsRequest,
    reason: &'static str,
    http_status: &'static str,
    field: &'static str,
) -> Malformed {
    Malformed {
        label: label.into(),
        request,
        reason,
        http_status,
        field,
        echoed: None,
    }
}

/// Every malformed input of DescribeSnapshots, one row each; `token` is a real `next_token`
/// the rows change.
fn malformed_describe_requests(token: &str) -> Vec<Malformed> {
    let mut rows = Vec::new();

    let too_many: Vec<String> = (0..=100).map(snapshot_id).collect();
    let mut id_lists = vec![("101 ids".to_owned(), too_many)];
    for bad in [
        "s-abc",
        "snap-0000000000000000000",
        "S-00000000000000000000",
        "s-0000000000000000000A",
        "s-000000000000000000000",
        "",
    ] {
        id_lists.push((
            format!("snapshot id {bad:?} among good ones"),
            vec![snapshot_id(1), bad.to_owned(), snapshot_id(2)],
        ));
    }
    for (label, snapshot_ids) in id_lists {
        rows.push(row(
            label,
            pb::DescribeSnapshotsRequest {
                snapshot_ids,
                ..Default::default()
            },
            "InvalidSnapshotIds.Malformed",
            "403",
            "snapshot_ids",
        ));
    }

    for max_results in [-1, 101, i32::MIN, i32::MAX] {
        rows.push(row(
            format!("max_results {max_results}"),
            pb::DescribeSnapshotsRequest {
                max_results,
                ..Default::default()
            },
            "InvalidParameter",
            "400",
            "max_results",
        ));
    }

    let with_char = |index: usize, c: char| {
        let mut changed: Vec<char> = token.chars().collect();
        changed[index] = c;
        changed.into_iter().collect::<String>()
    };
    for (label, next_token) in [
        ("abc", "abc".to_owned()),
        ("zz", "zz".to_owned()),
        ("7631", "7631".to_owned()),
        ("not hex at the start", with_char(0, 'g')),
        ("not hex at the end", with_char(token.len() - 1, 'x')),
        ("v2 becomes v3", with_char(3, '3')),
        ("the first separator becomes }", with_char(5, 'd')),
        ("truncated", token[..token.len() - 2].to_owned()),
        ("lengthened", format!("{token}00")),
        ("300 characters", "x".repeat(300)),
        (
            "carrying a total past any count",
            with_total(token, u64::MAX),
        ),
    ] {
        rows.push(row(
            format!("next_token {label}"),
            pb::DescribeSnapshotsRequest {
                max_results: 1,
                next_token,
                ..Default::default()
            },
            "InvalidNextToken.Malformed",
            "400",
            "next_token",
        ));
    }

    for disk_id in ["disk-1", "d-", "d-ABC", "D-1"] {
        rows.push(Malformed {
            echoed: Some(("diskId", disk_id.to_owned())),
            ..row(
                format!("disk_id {disk_id:?}"),
                pb::DescribeSnapshotsRequest {
                    disk_id: disk_id.into(),
                    ..Default::default()
                },
                "DiskId.ValueNotSupported",
                "403",
                "disk_id",
            )
        });
    }

    for (tags, reason) in [
        (vec![tag("", "x")], "InvalidTagKey.Malformed"),
        (vec![tag("acs:env", "")], "InvalidTagKey.Malformed"),
        (vec![tag("env", "https://x")], "InvalidTagValue.Malformed"),
        (vec![tag("env", "a"), tag("env", "b")], "Duplicate.TagKey"),
    ] {
        rows.push(row(
            format!("tags {tags:?}"),
            pb::DescribeSnapshotsRequest {
                tags,
                ..Default::default()
            },
            reason,
            "400",
            "tags",
        ));
    }

    let time = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let filters = [
        (
            "instance_id with a space",
            pb::DescribeSnapshotsRequest {
                instance_id: "i 1".into(),
                ..Default::default()
            },
            "instance_id",
        ),
        (
            "instance_id of 65 characters",
            pb::DescribeSnapshotsRequest {
                instance_id: "i".repeat(65),
                ..Default::default()
            },
            "instance_id",
        ),
        (
            "source_disk_type 7",
            pb::DescribeSnapshotsRequest {
                source_disk_type: 7,
                ..Default::default()
            },
            "source_disk_type",
        ),
        (
            "usage disk (snapshotd makes no disks)",
            pb::DescribeSnapshotsRequest {
                usage: "disk".into(),
                ..Default::default()
            },
            "usage",
        ),
        (
            "usage Image",
            pb::DescribeSnapshotsRequest {
                usage: "Image".into(),
                ..Default::default()
            },
            "usage",
        ),
        (
            "created_before equal to created_after",
            pb::DescribeSnapshotsRequest {
                created_after: time(1_700_000_000),
                created_before: time(1_700_000_000),
                ..Default::default()
            },
            "created_before",
        ),
        (
            "created_before earlier than created_after",
            pb::DescribeSnapshotsRequest {
                created_after: time(1_700_000_001),
                created_before: time(1_700_000_000),
                ..Default::default()
            },
            "created_before",
        ),
        (
            "created_after before 1970",
            pb::DescribeSnapshotsRequest {
                created_after: time(-1),
                ..Default::default()
            },
            "created_after",
        ),
        (
            "created_before past 9999",
            pb::DescribeSnapshotsRequest {
                created_before: time(253_402_300_800),
                ..Default::default()
            },
            "created_before",
        ),
    ];
    for (label, request, field) in filters {
        rows.push(row(label, request, "InvalidParameter", "400", field));
    }
    rows
}

/// Each column DescribeSnapshots parses, hand-edited into what the domain does not know: the
/// owner's listing is INTERNAL with none of the row in its message, another account's listing
/// is untouched, and the owner's lists again once the value is mended.
async fn a_snapshot_row_the_domain_cannot_read_is_an_internal_error_without_internals(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (mine, theirs) = a_snapshot_each_of_acct_a_and_acct_b(&app).await;
    // (column, a value the domain does not know, the value the row had)
    let cases = [
        ("status", "'Melted'", "'progressing'"),
        ("source_disk_type", "'floppy'", "'system'"),
        ("usage", "'shared'", "'none'"),
        ("retention_days", "-7", "0"),
    ];
    for (column, unreadable, original) in cases {
        let set = |value: &str| {
            format!("UPDATE snapshots SET {column} = {value} WHERE snapshot_id = '{mine}'")
        };
        crate::helpers::execute_sql(&app, &set(unreadable)).await;
        let status = describe(&app, "acct-a", pb::DescribeSnapshotsRequest::default())
            .await
            .expect_err(column);
        assert_internal_error_hiding(
            &status,
            &[unreadable.trim_matches('\''), column, "select", "corrupt"],
        );
        assert_eq!(
            listed(&app, "acct-b", pb::DescribeSnapshotsRequest::default()).await,
            std::slice::from_ref(&theirs),
            "{column}: another account's listing"
        );
        crate::helpers::execute_sql(&app, &set(original)).await;
        assert_eq!(
            listed(&app, "acct-a", pb::DescribeSnapshotsRequest::default()).await,
            std::slice::from_ref(&mine),
            "{column}: mended"
        );
    }
}

async fn each_malformed_describe_request_is_refused_with_its_reason_and_field(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    app.advance(Duration::from_secs(1));
    app.create_on("acct-a", "d-acct-a-1").await.unwrap();
    let page = |next_token: &str| pb::DescribeSnapshotsRequest {
        max_results: 1,
        next_token: next_token.to_owned(),
        ..Default::default()
    };
    let token = describe(&app, "acct-a", page("")).await.unwrap().next_token;
    assert!(!token.is_empty());
    let table = malformed_describe_requests(&token);
    assert_eq!(table.len(), 39, "every case of the table is still there");

    for row in table {
        let status = describe(&app, "acct-a", row.request)
            .await
            .expect_err(&row.label);

        let metadata = assert_error(
            &status,
            Code::InvalidArgument,
            row.reason,
            row.http_status,
            Detail::BadRequest(row.field),
        );
        if let Some((key, value)) = &row.echoed {
            assert_eq!(metadata.get(*key), Some(value), "{}", row.label);
        }
    }

    let second = describe(&app, "acct-a", page(&token))
        .await
        .expect("the real token still works");
    assert_eq!(second.snapshots.len(), 1);
    assert!(second.next_token.is_empty());
}

async fn the_limits_of_snapshot_ids_and_max_results_are_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let hundred: Vec<String> = (0..100).map(snapshot_id).collect();
    let response = describe(
        &app,
        "acct-a",
        pb::DescribeSnapshotsRequest {
            snapshot_ids: hundred,
            ..Default::default()
        },
    )
    .await
    .expect("100 ids are fine");
    assert!(response.snapshots.is_empty());

    for max_results in [1, 100] {
        describe(
            &app,
            "acct-a",
            pb::DescribeSnapshotsRequest {
                max_results,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("max_results {max_results}: {e:?}"));
    }
}

async fn a_describe_without_an_account_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let status = app
        .snapshots()
        .describe_snapshots(pb::DescribeSnapshotsRequest::default())
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
    let status = describe(&app, "", pb::DescribeSnapshotsRequest::default())
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
}

/// A token is opaque: one changed character, even one that keeps it hex, makes it a token the
/// service did not write.
async fn a_next_token_with_any_one_character_changed_is_malformed(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 3)).await;
    for n in 0..3 {
        app.create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .unwrap();
        app.advance(Duration::from_secs(1));
    }
    let page = |next_token: &str| pb::DescribeSnapshotsRequest {
        max_results: 1,
        next_token: next_token.to_owned(),
        ..Default::default()
    };
    let token = describe(&app, "acct-a", page("")).await.unwrap().next_token;
    assert!(!token.is_empty());

    let mut accepted = Vec::new();
    for index in 0..token.len() {
        let mut changed: Vec<char> = token.chars().collect();
        changed[index] = if changed[index] == '0' { '1' } else { '0' };
        let changed: String = changed.into_iter().collect();
        match describe(&app, "acct-a", page(&changed)).await {
            Ok(response) => accepted.push((index, response.snapshots.len())),
            Err(status) => {
                assert_error(
                    &status,
                    Code::InvalidArgument,
                    "InvalidNextToken.Malformed",
                    "400",
                    Detail::BadRequest("next_token"),
                );
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "changed tokens accepted (position, snapshots listed): {accepted:?}"
    );
}
