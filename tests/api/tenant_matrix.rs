//! The tenant and admin matrix: every tenant RPC called as another account with the owner's ids
//! and client tokens, every inventory RPC with near-miss admin tokens, and every tenant RPC with
//! odd identity headers. Each refusal is the plain NOT_FOUND (or an empty list) or
//! UNAUTHENTICATED answer, and nothing the owner has changes.

use std::collections::BTreeMap;

use snapshotd::pb;
use snapshotd::pb::image_service_client::ImageServiceClient;
use sqlx::Connection;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    ADMIN_TOKEN, Backend, TestApp, as_account, as_admin, attached_disk, finish_copies,
    healthy_account, put_account_request, put_disk_request, put_instance_request, running_instance,
    spawn_app, world,
};
use crate::on_both_backends;

on_both_backends!(
    another_account_gets_not_found_from_every_rpc_with_the_owners_ids_and_tokens,
    every_inventory_rpc_refuses_near_miss_admin_tokens_and_writes_nothing,
    odd_identity_headers_are_unauthenticated_on_every_tenant_rpc,
    a_second_identity_header_never_widens_access,
    headers_over_the_transport_limit_never_reach_the_service_and_the_server_recovers,
);

// ---------------------------------------------------------------------------------------------
// Local helpers.

const A: &str = "acct-a";
const B: &str = "acct-b";

/// A snapshot id no account has.
const NOWHERE: &str = "s-00000000000000000000";

/// An image id no account has.
const NO_IMAGE: &str = "m-00000000000000000000";

const TABLES: [&str; 8] = [
    "accounts",
    "instances",
    "disks",
    "snapshots",
    "snapshot_tags",
    "images",
    "client_tokens",
    "image_client_tokens",
];

fn images(app: &TestApp) -> ImageServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    ImageServiceClient::new(channel)
}

fn tag(key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        key: key.into(),
        value: value.into(),
    }
}

async fn describe_as(
    app: &TestApp,
    account: &str,
    request: pb::DescribeSnapshotsRequest,
) -> pb::DescribeSnapshotsResponse {
    app.snapshots()
        .describe_snapshots(as_account(account, request))
        .await
        .expect("DescribeSnapshots")
        .into_inner()
}

async fn delete_as(app: &TestApp, account: &str, snapshot_id: &str, force: bool) -> Status {
    app.snapshots()
        .delete_snapshot(as_account(
            account,
            pb::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.into(),
                force,
            },
        ))
        .await
        .expect_err("DeleteSnapshot of a snapshot the caller does not have")
}

async fn create_image_as(
    app: &TestApp,
    account: &str,
    request: pb::CreateImageRequest,
) -> Result<pb::CreateImageResponse, Status> {
    images(app)
        .create_image(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn delete_image_as(app: &TestApp, account: &str, image_id: &str) -> Status {
    images(app)
        .delete_image(as_account(
            account,
            pb::DeleteImageRequest {
                image_id: image_id.to_owned(),
            },
        ))
        .await
        .expect_err("another account's image is never deleted")
}

async fn describe_images_as(
    app: &TestApp,
    account: &str,
    request: pb::DescribeImagesRequest,
) -> pb::DescribeImagesResponse {
    images(app)
        .describe_images(as_account(account, request))
        .await
        .expect("DescribeImages")
        .into_inner()
}

/// Asserts `status` is the plain not-found answer for `image_id`.
#[track_caller]
fn assert_image_not_found(status: &Status, image_id: &str, case: &str) {
    assert_not_found(status, IMAGE_NOT_FOUND, image_id, case);
}

fn image_of(snapshot_id: &str) -> pb::CreateImageRequest {
    pb::CreateImageRequest {
        snapshot_id: snapshot_id.into(),
        ..Default::default()
    }
}

async fn get_disk(app: &TestApp, disk_id: &str) -> pb::Disk {
    app.inventory()
        .get_disk(as_admin(pb::GetDiskRequest {
            disk_id: disk_id.into(),
        }))
        .await
        .expect("GetDisk")
        .into_inner()
        .disk
        .expect("GetDisk answers with the disk")
}

/// One text column of `sql`, read straight from the database.
async fn strings(app: &TestApp, sql: &str) -> Vec<String> {
    match app.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

async fn table_counts(app: &TestApp) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for table in TABLES {
        counts.insert(table, app.count_rows(table).await);
    }
    counts
}

/// Everything of account A's that a client or the database can see: its Describe output (request
/// id aside), its disks as GetDisk reads them, and its rows in every table.
#[derive(Debug, PartialEq)]
struct AccountView {
    snapshots: Vec<pb::Snapshot>,
    disks: Vec<pb::Disk>,
    rows: Vec<String>,
}

async fn view_of(app: &TestApp, account: &str, disks: &[&str]) -> AccountView {
    let response = describe_as(
        app,
        account,
        pb::DescribeSnapshotsRequest {
            max_results: 100,
            ..Default::default()
        },
    )
    .await;
    assert!(response.next_token.is_empty(), "one page holds them all");
    let mut on_disks = Vec::new();
    for disk_id in disks {
        on_disks.push(get_disk(app, disk_id).await);
    }
    let queries = [
        format!(
            "SELECT 'disk ' || disk_id || ' ' || snapshot_count || ' ' \
             || COALESCE(progressing_snapshot_id, '-') FROM disks WHERE account_id = '{account}'"
        ),
        format!(
            "SELECT 'snapshot ' || snapshot_id || ' ' || source_disk_id || ' ' || status || ' ' \
             || usage || ' ' || COALESCE(snapshot_name, '-') || ' ' || retention_days \
             FROM snapshots WHERE account_id = '{account}'"
        ),
        format!(
            "SELECT 'tag ' || t.snapshot_id || ' ' || t.key || '=' || t.value \
             FROM snapshot_tags t JOIN snapshots s ON s.snapshot_id = t.snapshot_id \
             WHERE s.account_id = '{account}'"
        ),
        format!(
            "SELECT 'image ' || image_id || ' ' || snapshot_id || ' ' || COALESCE(image_name, '-') \
             FROM images WHERE account_id = '{account}'"
        ),
        format!(
            "SELECT 'token ' || client_token || ' ' || fingerprint || ' ' || snapshot_id \
             FROM client_tokens WHERE account_id = '{account}'"
        ),
        format!(
            "SELECT 'image token ' || client_token || ' ' || fingerprint || ' ' || image_id \
             FROM image_client_tokens WHERE account_id = '{account}'"
        ),
    ];
    let mut rows = Vec::new();
    for sql in &queries {
        rows.extend(strings(app, sql).await);
    }
    rows.sort();
    AccountView {
        snapshots: response.snapshots,
        disks: on_disks,
        rows,
    }
}

/// Asserts `status` is the plain not-found answer for `disk_id`.
#[track_caller]
fn assert_disk_not_found(status: &Status, disk_id: &str, case: &str) {
    assert_eq!(status.code(), Code::NotFound, "{case}: {status:?}");
    let metadata = assert_error(
        status,
        Code::NotFound,
        "InvalidDiskId.NotFound",
        "404",
        Detail::ResourceInfo("disk"),
    );
    assert_eq!(
        metadata.get("diskId").map(String::as_str),
        Some(disk_id),
        "{case}"
    );
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.owner, "", "{case}: the owner is never revealed");
}

/// Asserts `status` is the plain not-found answer for `snapshot_id`.
#[track_caller]
fn assert_snapshot_not_found(status: &Status, snapshot_id: &str, case: &str) {
    assert_not_found(status, SNAPSHOT_NOT_FOUND, snapshot_id, case);
}

/// What a plain not-found answer names: its reason, the ResourceInfo's type and the
/// ErrorInfo metadata key that carries the id.
#[derive(Clone, Copy)]
struct NotFound {
    reason: &'static str,
    resource_type: &'static str,
    id_key: &'static str,
}

const SNAPSHOT_NOT_FOUND: NotFound = NotFound {
    reason: "InvalidSnapshotId.NotFound",
    resource_type: "snapshot",
    id_key: "snapshotId",
};
const IMAGE_NOT_FOUND: NotFound = NotFound {
    reason: "InvalidImageId.NotFound",
    resource_type: "image",
    id_key: "imageId",
};
const RESOURCE_NOT_FOUND: NotFound = NotFound {
    reason: "InvalidResourceId.NotFound",
    resource_type: "snapshot",
    id_key: "resourceId",
};

/// NOT_FOUND naming `id` as `kind` says, and never the owner: the same answer whoever owns it.
#[track_caller]
fn assert_not_found(status: &Status, kind: NotFound, id: &str, case: &str) {
    assert_eq!(status.code(), Code::NotFound, "{case}: {status:?}");
    let metadata = assert_error(
        status,
        Code::NotFound,
        kind.reason,
        "404",
        Detail::ResourceInfo(kind.resource_type),
    );
    assert_eq!(
        metadata.get(kind.id_key).map(String::as_str),
        Some(id),
        "{case}"
    );
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.resource_name, id, "{case}");
    assert_eq!(resource.owner, "", "{case}: the owner is never revealed");
}

/// Everything a client can see of a refusal, with `id` replaced by a placeholder and the
/// per-call request id left out.
fn visible(status: &Status, id: &str) -> String {
    let info = status.get_details_error_info().expect("ErrorInfo");
    let mut metadata: Vec<_> = info.metadata.into_iter().collect();
    metadata.sort();
    let resource = status.get_details_resource_info();
    format!(
        "{:?} {} {} {} {metadata:?} {resource:?}",
        status.code(),
        status.message(),
        info.reason,
        info.domain
    )
    .replace(id, "<id>")
}

// ---------------------------------------------------------------------------------------------
// Another account with A's ids and tokens.

/// A's history: an accomplished snapshot an image was made from, an accomplished one with a name,
/// tags and retention, and one in progress; each created with a client token. B has one
/// accomplished snapshot of its own and a free disk.
struct History {
    app: TestApp,
    imaged: String,
    accomplished: String,
    progressing: String,
    image_id: String,
    b_snapshot: String,
    imaged_request: pb::CreateSnapshotRequest,
    accomplished_request: pb::CreateSnapshotRequest,
    progressing_request: pb::CreateSnapshotRequest,
    image_request: pb::CreateImageRequest,
}

const A_DISKS: [&str; 3] = ["d-acct-a-0", "d-acct-a-1", "d-acct-a-2"];

async fn history(backend: Backend) -> History {
    let app = spawn_app(backend).await;
    app.seed(&world(A, 3)).await;
    app.seed(&world(B, 2)).await;

    let imaged_request = pb::CreateSnapshotRequest {
        disk_id: A_DISKS[0].into(),
        snapshot_name: "golden".into(),
        client_token: "tok-a-imaged".into(),
        ..Default::default()
    };
    let imaged = app.create(A, imaged_request.clone()).await.unwrap();
    let b_snapshot = app.create_on(B, "d-acct-b-0").await.unwrap();
    finish_copies(&app).await;
    let image_request = pb::CreateImageRequest {
        snapshot_id: imaged.snapshot_id.clone(),
        image_name: "golden-image".into(),
        client_token: "tok-a-image".into(),
    };
    let image = create_image_as(&app, A, image_request.clone())
        .await
        .expect("A's image");

    let accomplished_request = pb::CreateSnapshotRequest {
        disk_id: A_DISKS[1].into(),
        snapshot_name: "nightly".into(),
        description: "nightly backup".into(),
        client_token: "tok-a-accomplished".into(),
        retention_days: 30,
        tags: vec![tag("env", "prod"), tag("team", "storage")],
    };
    let accomplished = app.create(A, accomplished_request.clone()).await.unwrap();
    finish_copies(&app).await;

    let progressing_request = pb::CreateSnapshotRequest {
        disk_id: A_DISKS[2].into(),
        client_token: "tok-a-progressing".into(),
        tags: vec![tag("env", "prod")],
        ..Default::default()
    };
    let progressing = app.create(A, progressing_request.clone()).await.unwrap();

    History {
        app,
        imaged: imaged.snapshot_id,
        accomplished: accomplished.snapshot_id,
        progressing: progressing.snapshot_id,
        image_id: image.image_id,
        b_snapshot: b_snapshot.snapshot_id,
        imaged_request,
        accomplished_request,
        progressing_request,
        image_request,
    }
}

async fn another_account_gets_not_found_from_every_rpc_with_the_owners_ids_and_tokens(
    backend: Backend,
) {
    let h = history(backend).await;
    let app = &h.app;
    let a_ids = [&h.imaged, &h.accomplished, &h.progressing];
    let before = view_of(app, A, &A_DISKS).await;
    let counts_before = table_counts(app).await;
    assert_eq!(before.snapshots.len(), 3);
    let mut cells = 0;

    // CreateSnapshot: A's disks whatever their state, A's requests word for word (client token
    // included), and A's tokens with other parameters.
    let mut creates: Vec<(String, pb::CreateSnapshotRequest)> = A_DISKS
        .iter()
        .map(|disk| {
            (
                format!("bare create on {disk}"),
                crate::helpers::create_request(disk),
            )
        })
        .collect();
    for (name, request) in [
        ("A's imaged request", &h.imaged_request),
        ("A's accomplished request", &h.accomplished_request),
        ("A's progressing request", &h.progressing_request),
    ] {
        creates.push((name.to_owned(), request.clone()));
        creates.push((
            format!("{name} with its token only"),
            pb::CreateSnapshotRequest {
                disk_id: request.disk_id.clone(),
                client_token: request.client_token.clone(),
                ..Default::default()
            },
        ));
    }
    for (case, request) in creates {
        let disk_id = request.disk_id.clone();
        let status = app.create(B, request).await.unwrap_err();
        assert_disk_not_found(&status, &disk_id, &case);
        cells += 1;
    }

    // DescribeSnapshots: every filter that names something of A's finds nothing; no filter finds
    // B's own snapshot only.
    let a_page = describe_as(
        app,
        A,
        pb::DescribeSnapshotsRequest {
            max_results: 1,
            ..Default::default()
        },
    )
    .await;
    assert!(!a_page.next_token.is_empty(), "A has a second page");
    let all_a: Vec<String> = a_ids.iter().map(|id| id.to_string()).collect();
    let mut describes: Vec<(String, pb::DescribeSnapshotsRequest, bool)> = vec![
        (
            "A's ids".into(),
            pb::DescribeSnapshotsRequest {
                snapshot_ids: all_a.clone(),
                ..Default::default()
            },
            true,
        ),
        (
            "A's name".into(),
            pb::DescribeSnapshotsRequest {
                snapshot_name: "nightly".into(),
                ..Default::default()
            },
            true,
        ),
        (
            "A's tag".into(),
            pb::DescribeSnapshotsRequest {
                tags: vec![tag("env", "prod")],
                ..Default::default()
            },
            true,
        ),
        (
            "A's tag key".into(),
            pb::DescribeSnapshotsRequest {
                tags: vec![tag("team", "")],
                ..Default::default()
            },
            true,
        ),
        (
            "progressing".into(),
            pb::DescribeSnapshotsRequest {
                status: pb::SnapshotStatus::Progressing.into(),
                ..Default::default()
            },
            true,
        ),
        (
            "A's ids on A's disk".into(),
            pb::DescribeSnapshotsRequest {
                disk_id: A_DISKS[0].into(),
                snapshot_ids: vec![h.imaged.clone()],
                ..Default::default()
            },
            true,
        ),
        (
            "A's instance".into(),
            pb::DescribeSnapshotsRequest {
                instance_id: "i-acct-a".into(),
                ..Default::default()
            },
            true,
        ),
        (
            "image usage (only A's snapshot has an image)".into(),
            pb::DescribeSnapshotsRequest {
                usage: "image".into(),
                ..Default::default()
            },
            true,
        ),
        (
            "no filter".into(),
            pb::DescribeSnapshotsRequest::default(),
            false,
        ),
        (
            "A's ids and B's".into(),
            pb::DescribeSnapshotsRequest {
                snapshot_ids: [all_a.clone(), vec![h.b_snapshot.clone()]].concat(),
                ..Default::default()
            },
            false,
        ),
        (
            "A's next token".into(),
            pb::DescribeSnapshotsRequest {
                next_token: a_page.next_token.clone(),
                max_results: 100,
                ..Default::default()
            },
            false,
        ),
    ];
    for id in a_ids {
        describes.push((
            format!("A's id {id}"),
            pb::DescribeSnapshotsRequest {
                snapshot_ids: vec![id.clone()],
                ..Default::default()
            },
            true,
        ));
    }
    for disk in A_DISKS {
        describes.push((
            format!("A's disk {disk}"),
            pb::DescribeSnapshotsRequest {
                disk_id: disk.into(),
                ..Default::default()
            },
            true,
        ));
    }
    for (case, request, expect_empty) in describes {
        let response = describe_as(app, B, request).await;
        let ids: Vec<_> = response.snapshots.iter().map(|s| &s.snapshot_id).collect();
        if expect_empty {
            assert!(ids.is_empty(), "{case}: B sees {ids:?}");
        } else {
            assert_eq!(ids, [&h.b_snapshot], "{case}: B sees only its own");
        }
        assert!(response.next_token.is_empty(), "{case}: one page");
        // A page reached with a token reports the total the token carries, counting nothing:
        // with A's token, the number written in the token B sent (which B could read in it, as
        // it can read A's snapshot id there: the token is hex, not a secret), not a count of A's
        // rows now. Every other page counts B's own only.
        let expected_total = if case == "A's next token" {
            let carried = snapshotd::domain::PageCursor::parse_token(&a_page.next_token)
                .expect("A's token")
                .total;
            carried.expect("a token of this server carries its total") as usize
        } else {
            ids.len()
        };
        assert_eq!(
            response.total_count as usize, expected_total,
            "{case}: total_count counts B's own only, or echoes B's token"
        );
        cells += 1;
    }

    // DeleteSnapshot: each of A's, forced or not; indistinguishable from a missing snapshot.
    let missing = delete_as(app, B, NOWHERE, false).await;
    assert_snapshot_not_found(&missing, NOWHERE, "a missing snapshot");
    for id in a_ids {
        for force in [false, true] {
            let case = format!("delete {id} force={force}");
            let status = delete_as(app, B, id, force).await;
            assert_snapshot_not_found(&status, id, &case);
            assert_eq!(visible(&status, id), visible(&missing, NOWHERE), "{case}");
            cells += 1;
        }
    }

    // CreateImage: each of A's (the progressing one must not answer NotReady: that would say it
    // exists), A's image request word for word, and A's image token on A's other snapshots.
    let missing = create_image_as(app, B, image_of(NOWHERE))
        .await
        .unwrap_err();
    assert_snapshot_not_found(&missing, NOWHERE, "an image of a missing snapshot");
    let mut image_requests: Vec<(String, pb::CreateImageRequest)> = a_ids
        .iter()
        .map(|id| (format!("image of {id}"), image_of(id)))
        .collect();
    image_requests.push(("A's image request".into(), h.image_request.clone()));
    for id in [&h.accomplished, &h.progressing] {
        image_requests.push((
            format!("A's image token on {id}"),
            pb::CreateImageRequest {
                client_token: h.image_request.client_token.clone(),
                ..image_of(id)
            },
        ));
    }
    for (case, request) in image_requests {
        let id = request.snapshot_id.clone();
        let status = create_image_as(app, B, request).await.unwrap_err();
        assert_snapshot_not_found(&status, &id, &case);
        assert_eq!(visible(&status, &id), visible(&missing, NOWHERE), "{case}");
        cells += 1;
    }

    // ModifySnapshotAttribute: each of A's, with each attribute, a retention shorter than A's
    // (a refusal for that would say the snapshot exists) and none at all.
    let modify_as = |id: &str, change: fn(&mut pb::ModifySnapshotAttributeRequest)| {
        let mut request = pb::ModifySnapshotAttributeRequest {
            snapshot_id: id.to_owned(),
            ..Default::default()
        };
        change(&mut request);
        let mut snapshots = app.snapshots();
        async move {
            snapshots
                .modify_snapshot_attribute(as_account(B, request))
                .await
                .unwrap_err()
        }
    };
    type Change = fn(&mut pb::ModifySnapshotAttributeRequest);
    let changes: [(&str, Change); 6] = [
        ("a name", |r| r.snapshot_name = Some("mine".into())),
        ("no name", |r| r.snapshot_name = Some(String::new())),
        ("a description", |r| r.description = Some("mine".into())),
        ("a longer retention", |r| r.retention_days = Some(0)),
        ("a shorter retention", |r| r.retention_days = Some(1)),
        ("nothing", |_| {}),
    ];
    let missing = modify_as(NOWHERE, changes[0].1).await;
    assert_snapshot_not_found(&missing, NOWHERE, "a change of a missing snapshot");
    for id in a_ids {
        for (change, apply) in changes {
            let case = format!("modify {id}: {change}");
            let status = modify_as(id, apply).await;
            assert_snapshot_not_found(&status, id, &case);
            assert_eq!(visible(&status, id), visible(&missing, NOWHERE), "{case}");
            cells += 1;
        }
    }
    // WatchSnapshots: A's ids (beside B's own, and alone) and A's disks open a watch as ids and
    // a disk nobody has do, and show B its own snapshot only.
    let mut watches: Vec<(String, pb::WatchSnapshotsRequest, Vec<String>)> = vec![
        (
            "A's ids beside B's".into(),
            pb::WatchSnapshotsRequest {
                snapshot_ids: [all_a.clone(), vec![h.b_snapshot.clone()]].concat(),
                ..Default::default()
            },
            vec![h.b_snapshot.clone()],
        ),
        (
            "A's ids".into(),
            pb::WatchSnapshotsRequest {
                snapshot_ids: all_a.clone(),
                ..Default::default()
            },
            vec![],
        ),
        (
            "an id nobody has".into(),
            pb::WatchSnapshotsRequest {
                snapshot_ids: vec![NOWHERE.into()],
                ..Default::default()
            },
            vec![],
        ),
    ];
    for disk in A_DISKS {
        watches.push((
            format!("A's disk {disk}"),
            pb::WatchSnapshotsRequest {
                disk_id: disk.into(),
                ..Default::default()
            },
            vec![],
        ));
    }
    for (case, request, shown) in watches {
        let stream = app
            .snapshots()
            .watch_snapshots(as_account(B, request))
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"))
            .into_inner();
        assert_eq!(first_watched(stream).await, shown, "{case}");
        cells += 1;
    }

    // Tags after creation: A's ids, alone or beside B's own, answer as an id nobody has, for
    // each of the three calls; a tag filter over A's tags finds nothing.
    cells += tag_calls_of_another_account(app, &a_ids, &h.b_snapshot).await;

    // DeleteImage of A's image: indistinguishable from an image nobody has.
    let missing = delete_image_as(app, B, NO_IMAGE).await;
    assert_image_not_found(&missing, NO_IMAGE, "a missing image");
    let status = delete_image_as(app, B, &h.image_id).await;
    assert_image_not_found(&status, &h.image_id, "delete A's image");
    assert_eq!(
        visible(&status, &h.image_id),
        visible(&missing, NO_IMAGE),
        "delete A's image"
    );
    cells += 1;

    // DescribeImages with A's image id or A's snapshot as the filter: nothing, counted as none.
    let image_queries = [
        (
            "A's image id",
            pb::DescribeImagesRequest {
                image_ids: vec![h.image_id.clone()],
                ..Default::default()
            },
        ),
        (
            "A's imaged snapshot",
            pb::DescribeImagesRequest {
                snapshot_id: h.imaged.clone(),
                ..Default::default()
            },
        ),
        ("everything", pb::DescribeImagesRequest::default()),
    ];
    for (case, request) in image_queries {
        let page = describe_images_as(app, B, request).await;
        assert!(page.images.is_empty(), "{case}: {page:?}");
        assert_eq!(page.total_count, 0, "{case}");
        cells += 1;
    }

    // Nothing of A's changed, nor anything at all.
    assert_eq!(view_of(app, A, &A_DISKS).await, before);
    assert_eq!(table_counts(app).await, counts_before);
    app.assert_invariants().await;
    println!("{backend:?}: {cells} cross-tenant calls, every one NOT_FOUND or empty");

    // A's client tokens name nothing in B's namespace: on B's own resources they are fresh tokens
    // (no replay of A's answer, no IdempotentParameterMismatch).
    let b_create = app
        .create(
            B,
            pb::CreateSnapshotRequest {
                disk_id: "d-acct-b-1".into(),
                client_token: h.accomplished_request.client_token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("A's token is a fresh token for B");
    assert!(!a_ids.contains(&&b_create.snapshot_id));
    let b_image = create_image_as(
        app,
        B,
        pb::CreateImageRequest {
            snapshot_id: h.b_snapshot.clone(),
            ..h.image_request.clone()
        },
    )
    .await
    .expect("A's image token is a fresh token for B");
    assert_ne!(b_image.image_id, h.image_id);
    assert_eq!(view_of(app, A, &A_DISKS).await, before);
    app.assert_invariants().await;
}

/// The snapshots a watch shows in its first [`WATCH_WINDOW`]: its first messages (the current
/// state, sent at once), and any that would leak after them.
async fn first_watched(mut stream: tonic::Streaming<pb::WatchSnapshotsResponse>) -> Vec<String> {
    let mut shown = Vec::new();
    let window = tokio::time::sleep(WATCH_WINDOW);
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => return shown,
            message = stream.message() => match message {
                Ok(Some(message)) => shown.extend(message.snapshot.map(|s| s.snapshot_id)),
                other => panic!("the watch ended: {other:?}"),
            },
        }
    }
}

/// How long a watch is read for what it shows: a window in which nothing more may come.
const WATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(300);

/// Asserts `status` is the tag calls' plain not-found answer for `resource_id`.
#[track_caller]
fn assert_resource_not_found(status: &Status, resource_id: &str, case: &str) {
    assert_not_found(status, RESOURCE_NOT_FOUND, resource_id, case);
}

/// B's TagResources, UntagResources and ListTagResources naming A's snapshots; the cells run.
async fn tag_calls_of_another_account(app: &TestApp, a_ids: &[&String], b_own: &str) -> usize {
    let mut client = crate::tag_resources::tags_client(app);
    let named = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
    let tag_of = |ids: &[&str]| pb::TagResourcesRequest {
        resource_type: "snapshot".into(),
        resource_ids: named(ids),
        tags: vec![tag("owner", "b")],
    };
    let untag_of = |ids: &[&str]| pb::UntagResourcesRequest {
        resource_type: "snapshot".into(),
        resource_ids: named(ids),
        tag_keys: Vec::new(),
        all: true,
    };
    let list_of = |ids: &[&str]| pb::ListTagResourcesRequest {
        resource_type: "snapshot".into(),
        resource_ids: named(ids),
        ..Default::default()
    };
    let missing = client
        .tag_resources(as_account(B, tag_of(&[NOWHERE])))
        .await
        .unwrap_err();
    assert_resource_not_found(&missing, NOWHERE, "tagging a missing snapshot");
    let mut cells = 0;
    for id in a_ids {
        for (case, ids) in [
            (format!("{id} alone"), vec![id.as_str()]),
            (format!("{id} after B's own"), vec![b_own, id.as_str()]),
        ] {
            let tagged = client
                .tag_resources(as_account(B, tag_of(&ids)))
                .await
                .unwrap_err();
            let untagged = client
                .untag_resources(as_account(B, untag_of(&ids)))
                .await
                .unwrap_err();
            let listed = client
                .list_tag_resources(as_account(B, list_of(&ids)))
                .await
                .unwrap_err();
            for (call, status) in [("tag", tagged), ("untag", untagged), ("list", listed)] {
                let case = format!("{call} {case}");
                assert_resource_not_found(&status, id, &case);
                if call == "tag" && ids.len() == 1 {
                    assert_eq!(visible(&status, id), visible(&missing, NOWHERE), "{case}");
                }
                cells += 1;
            }
        }
    }
    let filtered = client
        .list_tag_resources(as_account(
            B,
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".into(),
                tags: vec![tag("env", "prod")],
                ..Default::default()
            },
        ))
        .await
        .expect("a tag filter")
        .into_inner();
    assert!(filtered.tag_resources.is_empty(), "B sees none of A's tags");
    cells + 1
}

// ---------------------------------------------------------------------------------------------
// The inventory API with near-miss admin tokens.

/// Each inventory RPC, made with `authorization` set to `values` (one header per value, in order);
/// each call, had it gone through, would have changed something a later check notices.
async fn every_inventory_rpc(app: &TestApp, values: &[Vec<u8>]) -> Vec<(&'static str, Status)> {
    fn authorized<T>(values: &[Vec<u8>], message: T) -> Request<T> {
        let mut request = Request::new(message);
        for value in values {
            let value = MetadataValue::try_from(value.as_slice()).expect("a sendable value");
            request.metadata_mut().append("authorization", value);
        }
        request
    }
    let mut inventory = app.inventory();
    let broke = pb::Account {
        insufficient_balance: true,
        ..healthy_account(A)
    };
    let locked = pb::Instance {
        lock_reasons: vec!["security".into()],
        ..running_instance(A, "i-acct-a")
    };
    let detached = pb::Disk {
        status: pb::DiskStatus::Available.into(),
        instance_id: String::new(),
        ..attached_disk(A, "i-acct-a", "d-acct-a-0")
    };
    vec![
        (
            "PutAccount (update)",
            inventory
                .put_account(authorized(values, put_account_request(broke)))
                .await
                .err(),
        ),
        (
            "PutAccount (new)",
            inventory
                .put_account(authorized(
                    values,
                    put_account_request(healthy_account("acct-z")),
                ))
                .await
                .err(),
        ),
        (
            "PutInstance (update)",
            inventory
                .put_instance(authorized(values, put_instance_request(locked)))
                .await
                .err(),
        ),
        (
            "PutInstance (new)",
            inventory
                .put_instance(authorized(
                    values,
                    put_instance_request(running_instance(A, "i-acct-a-9")),
                ))
                .await
                .err(),
        ),
        (
            "PutDisk (update)",
            inventory
                .put_disk(authorized(values, put_disk_request(detached)))
                .await
                .err(),
        ),
        (
            "PutDisk (new)",
            inventory
                .put_disk(authorized(
                    values,
                    put_disk_request(attached_disk(A, "i-acct-a", "d-acct-a-9")),
                ))
                .await
                .err(),
        ),
        (
            "GetDisk",
            inventory
                .get_disk(authorized(
                    values,
                    pb::GetDiskRequest {
                        disk_id: "d-acct-a-0".into(),
                    },
                ))
                .await
                .err(),
        ),
    ]
    .into_iter()
    .map(|(method, status)| {
        (
            method,
            status.unwrap_or_else(|| panic!("{method} with {values:?} went through")),
        )
    })
    .collect()
}

async fn every_inventory_rpc_refuses_near_miss_admin_tokens_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world(A, 1)).await;
    let disk_before = get_disk(&app, "d-acct-a-0").await;
    let counts_before = table_counts(&app).await;
    let right = format!("Bearer {ADMIN_TOKEN}");

    // Every strict prefix of the right value: of the scheme, the bare scheme and its space (the
    // empty token), and of the token.
    let mut near_misses: Vec<Vec<Vec<u8>>> = (0..right.len())
        .map(|end| vec![right.as_bytes()[..end].to_vec()])
        .collect();
    for value in [
        format!("{right} "),
        format!("{right}\t"),
        format!("{right}  "),
        format!("Bearer {}", ADMIN_TOKEN.to_uppercase()),
        format!("Bearer x{ADMIN_TOKEN}"),
        format!("Bearer{ADMIN_TOKEN}"),
        format!("Bearer\t{ADMIN_TOKEN}"),
        format!("Basic {ADMIN_TOKEN}"),
        format!("Token {ADMIN_TOKEN}"),
        format!("Bearer {ADMIN_TOKEN},{ADMIN_TOKEN}"),
    ] {
        near_misses.push(vec![value.into_bytes()]);
    }
    // The right token may not ride in a second header behind a wrong one.
    near_misses.push(vec![b"Bearer wrong".to_vec(), right.clone().into_bytes()]);
    near_misses.push(vec![b"Bearer ".to_vec(), right.clone().into_bytes()]);

    let mut cells = 0;
    for values in &near_misses {
        for (method, status) in every_inventory_rpc(&app, values).await {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} with {values:?}: {status:?}"
            );
            assert_error(
                &status,
                Code::Unauthenticated,
                "InvalidAdminToken",
                "401",
                Detail::None,
            );
            assert!(
                !status.message().contains(ADMIN_TOKEN),
                "the token is never echoed"
            );
            cells += 1;
        }
    }

    assert_eq!(table_counts(&app).await, counts_before, "nothing written");
    assert_eq!(get_disk(&app, "d-acct-a-0").await, disk_before);
    // Had any update gone through, the account would be broke, the instance locked or the disk
    // detached, and this would be refused.
    app.create_on(A, "d-acct-a-0")
        .await
        .expect("the inventory is as it was");
    app.assert_invariants().await;
    println!(
        "{backend:?}: {} near-miss tokens x 7 inventory calls = {cells} refusals",
        near_misses.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Odd identity headers on every tenant RPC.

/// The tenant RPCs, each made with `decorate` applied to its metadata: CreateSnapshot of
/// `disk_id`, DescribeSnapshots, DeleteSnapshot and CreateImage of `snapshot_id`,
/// DescribeImages, and DeleteImage of an image nobody has.
async fn every_tenant_rpc(
    app: &TestApp,
    disk_id: &str,
    snapshot_id: &str,
    decorate: &dyn Fn(&mut MetadataMap),
) -> Vec<(&'static str, Result<Option<Vec<String>>, Status>)> {
    fn decorated<T>(message: T, decorate: &dyn Fn(&mut MetadataMap)) -> Request<T> {
        let mut request = Request::new(message);
        decorate(request.metadata_mut());
        request
    }
    let mut snapshots = app.snapshots();
    vec![
        (
            "CreateSnapshot",
            snapshots
                .create_snapshot(decorated(crate::helpers::create_request(disk_id), decorate))
                .await
                .map(|_| None),
        ),
        (
            "DescribeSnapshots",
            snapshots
                .describe_snapshots(decorated(
                    pb::DescribeSnapshotsRequest {
                        max_results: 100,
                        ..Default::default()
                    },
                    decorate,
                ))
                .await
                .map(|r| {
                    Some(
                        r.into_inner()
                            .snapshots
                            .into_iter()
                            .map(|s| s.snapshot_id)
                            .collect(),
                    )
                }),
        ),
        (
            "DeleteSnapshot",
            snapshots
                .delete_snapshot(decorated(
                    pb::DeleteSnapshotRequest {
                        snapshot_id: snapshot_id.into(),
                        force: true,
                    },
                    decorate,
                ))
                .await
                .map(|_| None),
        ),
        (
            "CreateImage",
            images(app)
                .create_image(decorated(image_of(snapshot_id), decorate))
                .await
                .map(|_| None),
        ),
        (
            "ModifySnapshotAttribute",
            snapshots
                .modify_snapshot_attribute(decorated(
                    pb::ModifySnapshotAttributeRequest {
                        snapshot_id: snapshot_id.into(),
                        snapshot_name: Some("renamed".into()),
                        retention_days: Some(0),
                        ..Default::default()
                    },
                    decorate,
                ))
                .await
                .map(|_| None),
        ),
        (
            "DescribeImages",
            images(app)
                .describe_images(decorated(pb::DescribeImagesRequest::default(), decorate))
                .await
                .map(|r| {
                    Some(
                        r.into_inner()
                            .images
                            .into_iter()
                            .map(|i| i.image_id)
                            .collect(),
                    )
                }),
        ),
        (
            "DeleteImage",
            images(app)
                .delete_image(decorated(
                    pb::DeleteImageRequest {
                        image_id: NO_IMAGE.into(),
                    },
                    decorate,
                ))
                .await
                .map(|_| None),
        ),
        (
            "TagResources",
            crate::tag_resources::tags_client(app)
                .tag_resources(decorated(
                    pb::TagResourcesRequest {
                        resource_type: "snapshot".into(),
                        resource_ids: vec![snapshot_id.into()],
                        tags: vec![tag("odd", "header")],
                    },
                    decorate,
                ))
                .await
                .map(|_| None),
        ),
        (
            "UntagResources",
            crate::tag_resources::tags_client(app)
                .untag_resources(decorated(
                    pb::UntagResourcesRequest {
                        resource_type: "snapshot".into(),
                        resource_ids: vec![snapshot_id.into()],
                        all: true,
                        ..Default::default()
                    },
                    decorate,
                ))
                .await
                .map(|_| None),
        ),
        (
            "WatchSnapshots",
            match snapshots
                .watch_snapshots(decorated(
                    pb::WatchSnapshotsRequest {
                        snapshot_ids: vec![snapshot_id.into()],
                        ..Default::default()
                    },
                    decorate,
                ))
                .await
            {
                Ok(stream) => Ok(Some(first_watched(stream.into_inner()).await)),
                Err(status) => Err(status),
            },
        ),
        (
            "ListTagResources",
            crate::tag_resources::tags_client(app)
                .list_tag_resources(decorated(
                    pb::ListTagResourcesRequest {
                        resource_type: "snapshot".into(),
                        resource_ids: vec![snapshot_id.into()],
                        ..Default::default()
                    },
                    decorate,
                ))
                .await
                .map(|r| {
                    Some(
                        r.into_inner()
                            .tag_resources
                            .into_iter()
                            .map(|t| format!("{}={}", t.tag_key, t.tag_value))
                            .collect(),
                    )
                }),
        ),
    ]
}

fn ascii(value: &[u8]) -> MetadataValue<tonic::metadata::Ascii> {
    MetadataValue::try_from(value).expect("a header value tonic can send")
}

/// A with an accomplished snapshot on its first disk and a free second disk; B with one
/// accomplished snapshot. Returns (A's snapshot, B's snapshot).
async fn two_tenants_with_snapshots(app: &TestApp) -> (String, String) {
    app.seed(&world(A, 2)).await;
    app.seed(&world(B, 2)).await;
    let a = app.create_on(A, "d-acct-a-0").await.unwrap().snapshot_id;
    let b = app.create_on(B, "d-acct-b-0").await.unwrap().snapshot_id;
    finish_copies(app).await;
    (a, b)
}

async fn odd_identity_headers_are_unauthenticated_on_every_tenant_rpc(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a_snapshot, _) = two_tenants_with_snapshots(&app).await;
    let before = view_of(&app, A, &["d-acct-a-0", "d-acct-a-1"]).await;
    let counts_before = table_counts(&app).await;
    let ten_kib = "a".repeat(10 * 1024);
    let ten_kib_padded = format!("{}acct-a", "-".repeat(10 * 1024));
    let right_admin = format!("Bearer {ADMIN_TOKEN}");

    // (case, x-account-id values in order, other metadata, reason)
    type Case<'a> = (
        &'a str,
        Vec<&'a [u8]>,
        Vec<(&'static str, &'a [u8])>,
        &'a str,
    );
    let missing = "InvalidIdentity.Missing";
    let malformed = "InvalidIdentity.Malformed";
    let cases: Vec<Case> = vec![
        ("no header", vec![], vec![], missing),
        ("empty", vec![b""], vec![], missing),
        ("10 KiB", vec![ten_kib.as_bytes()], vec![], malformed),
        (
            "10 KiB ending in A's id",
            vec![ten_kib_padded.as_bytes()],
            vec![],
            malformed,
        ),
        ("bytes 0xff 0xfe", vec![b"\xff\xfe"], vec![], malformed),
        ("latin-1 acct-\\xe9", vec![b"acct-\xe9"], vec![], malformed),
        ("UTF-8 acct-é", vec!["acct-é".as_bytes()], vec![], malformed),
        (
            "A's id and a zero-width space",
            vec!["acct-a\u{200b}".as_bytes()],
            vec![],
            malformed,
        ),
        (
            "A's id with a Cyrillic a",
            vec!["\u{0430}cct-a".as_bytes()],
            vec![],
            malformed,
        ),
        ("a list", vec![b"acct-a,acct-b"], vec![], malformed),
        ("a spaced list", vec![b"acct-a, acct-b"], vec![], malformed),
        ("a ;-list", vec![b"acct-a;acct-b"], vec![], malformed),
        ("a wildcard", vec![b"*"], vec![], malformed),
        ("SQL", vec![b"acct-a' OR '1'='1"], vec![], malformed),
        (
            "an empty first header, A's second",
            vec![b"", b"acct-a"],
            vec![],
            missing,
        ),
        (
            "a malformed first header, A's second",
            vec![b"acct a", b"acct-a"],
            vec![],
            malformed,
        ),
        (
            "only the admin token",
            vec![],
            vec![("authorization", right_admin.as_bytes())],
            missing,
        ),
        (
            "the admin token as the account",
            vec![right_admin.as_bytes()],
            vec![],
            malformed,
        ),
        (
            "A's id in another header",
            vec![],
            vec![("x-account", b"acct-a"), ("account-id", b"acct-a")],
            missing,
        ),
    ];

    let mut cells = 0;
    for (case, identities, others, reason) in &cases {
        let decorate = |metadata: &mut MetadataMap| {
            for value in identities {
                metadata.append("x-account-id", ascii(value));
            }
            for (key, value) in others {
                metadata.append(*key, ascii(value));
            }
        };
        for (method, result) in every_tenant_rpc(&app, "d-acct-a-1", &a_snapshot, &decorate).await {
            let status = result.expect_err(&format!("{method} with {case} went through"));
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} with {case}: {status:?}"
            );
            assert_error(&status, Code::Unauthenticated, reason, "401", Detail::None);
            cells += 1;
        }
    }

    // A binary header of the same name is not an identity.
    let decorate = |metadata: &mut MetadataMap| {
        metadata.append_bin(
            "x-account-id-bin",
            tonic::metadata::BinaryMetadataValue::from_bytes(b"acct-a"),
        );
    };
    for (method, result) in every_tenant_rpc(&app, "d-acct-a-1", &a_snapshot, &decorate).await {
        let status = result.expect_err(method);
        assert_error(&status, Code::Unauthenticated, missing, "401", Detail::None);
        cells += 1;
    }

    assert_eq!(
        view_of(&app, A, &["d-acct-a-0", "d-acct-a-1"]).await,
        before
    );
    assert_eq!(table_counts(&app).await, counts_before, "nothing written");
    app.assert_invariants().await;
    println!("{backend:?}: {cells} calls with odd identities, every one UNAUTHENTICATED");
}

async fn a_second_identity_header_never_widens_access(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a_snapshot, b_snapshot) = two_tenants_with_snapshots(&app).await;
    let before = view_of(&app, A, &["d-acct-a-0", "d-acct-a-1"]).await;

    // The service reads the first x-account-id only. B's first, then A's (twice): B's call, to
    // which A's disk and snapshot are not found and which lists only B's snapshot.
    for identities in [vec![B, A], vec![B, A, A]] {
        let decorate = |metadata: &mut MetadataMap| {
            for value in &identities {
                metadata.append("x-account-id", ascii(value.as_bytes()));
            }
        };
        let results = every_tenant_rpc(&app, "d-acct-a-1", &a_snapshot, &decorate).await;
        for (method, result) in results {
            match method {
                "CreateSnapshot" => {
                    assert_disk_not_found(&result.unwrap_err(), "d-acct-a-1", method)
                }
                "DescribeSnapshots" => {
                    assert_eq!(result.unwrap(), Some(vec![b_snapshot.clone()]), "{method}")
                }
                "DescribeImages" | "WatchSnapshots" => {
                    assert_eq!(result.unwrap(), Some(vec![]), "{method}")
                }
                "DeleteImage" => assert_image_not_found(&result.unwrap_err(), NO_IMAGE, method),
                "TagResources" | "UntagResources" | "ListTagResources" => {
                    assert_resource_not_found(&result.unwrap_err(), &a_snapshot, method)
                }
                _ => assert_snapshot_not_found(&result.unwrap_err(), &a_snapshot, method),
            }
        }
    }
    assert_eq!(
        view_of(&app, A, &["d-acct-a-0", "d-acct-a-1"]).await,
        before
    );

    // A's first, then B's: A's call (documented: the first value is the caller), to which B's
    // snapshot is as foreign as ever.
    let decorate = |metadata: &mut MetadataMap| {
        metadata.append("x-account-id", ascii(A.as_bytes()));
        metadata.append("x-account-id", ascii(B.as_bytes()));
    };
    let results = every_tenant_rpc(&app, "d-acct-b-1", &b_snapshot, &decorate).await;
    for (method, result) in results {
        match method {
            "CreateSnapshot" => assert_disk_not_found(&result.unwrap_err(), "d-acct-b-1", method),
            "DescribeSnapshots" => {
                assert_eq!(result.unwrap(), Some(vec![a_snapshot.clone()]), "{method}")
            }
            "DescribeImages" | "WatchSnapshots" => {
                assert_eq!(result.unwrap(), Some(vec![]), "{method}")
            }
            "DeleteImage" => assert_image_not_found(&result.unwrap_err(), NO_IMAGE, method),
            "TagResources" | "UntagResources" | "ListTagResources" => {
                assert_resource_not_found(&result.unwrap_err(), &b_snapshot, method)
            }
            _ => assert_snapshot_not_found(&result.unwrap_err(), &b_snapshot, method),
        }
    }
    assert_eq!(
        view_of(&app, A, &["d-acct-a-0", "d-acct-a-1"]).await,
        before
    );
    assert_eq!(app.count_rows("snapshots").await, 2);
    assert_eq!(app.count_rows("images").await, 0);
    app.assert_invariants().await;
}

/// Metadata over the server's header-list limit (hyper's default, 16 KiB) is refused by the HTTP/2
/// layer before any handler runs. The answer is not a service status: hyper answers HTTP 431
/// without `grpc-status`, which tonic reports as UNKNOWN; larger lists fail as RESOURCE_EXHAUSTED
/// or a transport error on the client side. The test pins that nothing is written and that the
/// server serves the next call (on a new connection if the transport closed the old one).
async fn headers_over_the_transport_limit_never_reach_the_service_and_the_server_recovers(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world(A, 2)).await;
    let mut observed: BTreeMap<String, usize> = BTreeMap::new();

    for size in [16 * 1024 + 1, 64 * 1024, 1024 * 1024] {
        let big = "a".repeat(size);
        // As the identity, and as padding beside A's valid identity.
        for padding in [false, true] {
            let mut request = Request::new(crate::helpers::create_request("d-acct-a-1"));
            if padding {
                request
                    .metadata_mut()
                    .insert("x-account-id", ascii(b"acct-a"));
                request
                    .metadata_mut()
                    .insert("x-padding", ascii(big.as_bytes()));
            } else {
                request
                    .metadata_mut()
                    .insert("x-account-id", ascii(big.as_bytes()));
            }
            let status = app
                .snapshots()
                .create_snapshot(request)
                .await
                .expect_err("metadata over the limit");
            assert!(
                matches!(
                    status.code(),
                    Code::Unknown | Code::ResourceExhausted | Code::Unavailable
                ),
                "{size} bytes (padding {padding}): {status:?}"
            );
            *observed
                .entry(format!("{size} bytes: {:?}", status.code()))
                .or_default() += 1;
            // The server serves the next call. The transport may have closed that connection
            // (hyper does after a protocol error), so the channel may need one reconnect.
            let mut served = None;
            for _ in 0..3 {
                match app
                    .snapshots()
                    .describe_snapshots(as_account(A, pb::DescribeSnapshotsRequest::default()))
                    .await
                {
                    Ok(response) => {
                        served = Some(response);
                        break;
                    }
                    Err(status) => {
                        assert!(
                            matches!(
                                status.code(),
                                Code::Cancelled | Code::Unavailable | Code::Unknown
                            ),
                            "only a closed connection may fail the next call: {status:?}"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
            served.expect("the server keeps serving");
        }
    }

    assert_eq!(app.count_rows("snapshots").await, 0, "nothing written");
    // Just under the limit the service itself answers: a malformed identity.
    let under = "a".repeat(15 * 1024);
    let mut request = Request::new(crate::helpers::create_request("d-acct-a-1"));
    request
        .metadata_mut()
        .insert("x-account-id", ascii(under.as_bytes()));
    let status = app.snapshots().create_snapshot(request).await.unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Malformed",
        "401",
        Detail::None,
    );
    app.create_on(A, "d-acct-a-1")
        .await
        .expect("the server keeps serving");
    app.assert_invariants().await;
    println!("{backend:?}: oversized metadata answered {observed:?}");
}
