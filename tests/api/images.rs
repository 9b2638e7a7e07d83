//! DeleteImage and DescribeImages against the real server: deleting an image unpins its snapshot
//! with the last image (DeleteSnapshot and retention then apply), another account's image is
//! NotFound as an unknown one is, retries change nothing, the listing pages as DescribeSnapshots
//! does, and concurrent deletes, snapshot deletes and new images never leave a half state.

use std::sync::Arc;
use std::time::Duration;

use snapshotd::domain::ImageCursor;
use snapshotd::pb;
use snapshotd::pb::image_service_client::ImageServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, TestApp, as_account, concurrently, count_walk_page, finish_copies, spawn_app, world,
};
use crate::on_both_backends;

on_both_backends!(
    deleting_the_last_image_unpins_its_snapshot_which_can_then_be_deleted,
    a_snapshot_stays_pinned_until_its_last_image_is_deleted,
    another_accounts_an_unknown_or_a_deleted_image_is_not_found_and_nothing_changes,
    each_malformed_image_request_is_refused_naming_its_field,
    describe_images_lists_the_callers_images_newest_first_by_id_and_snapshot,
    describe_images_pages_with_next_token_carrying_the_first_pages_total,
    an_i1_image_token_of_an_older_server_lists_the_next_page_with_a_fresh_count,
    once_its_last_image_is_gone_a_snapshot_past_its_retention_is_released,
    concurrent_deletes_of_one_image_delete_it_once,
    deleting_an_image_racing_a_delete_of_its_snapshot_never_leaves_a_half_state,
    deleting_an_image_racing_a_new_image_of_its_snapshot_keeps_the_snapshot_pinned,
);

const NOBODYS_IMAGE: &str = "m-zzzzzzzzzzzzzzzzzzzz";

// ---------------------------------------------------------------------------------------------
// Local helpers.

fn images(app: &TestApp) -> ImageServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    ImageServiceClient::new(channel)
}

async fn create_image(app: &TestApp, account: &str, snapshot_id: &str) -> String {
    images(app)
        .create_image(as_account(
            account,
            pb::CreateImageRequest {
                snapshot_id: snapshot_id.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage")
        .into_inner()
        .image_id
}

async fn delete_image(
    app: &TestApp,
    account: &str,
    image_id: &str,
) -> Result<pb::DeleteImageResponse, Status> {
    images(app)
        .delete_image(as_account(
            account,
            pb::DeleteImageRequest {
                image_id: image_id.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn describe_images(
    app: &TestApp,
    account: &str,
    request: pb::DescribeImagesRequest,
) -> Result<pb::DescribeImagesResponse, Status> {
    images(app)
        .describe_images(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

/// The ids of the caller's images, newest first (one page of up to 100).
async fn image_ids(app: &TestApp, account: &str) -> Vec<String> {
    describe_images(
        app,
        account,
        pb::DescribeImagesRequest {
            max_results: 100,
            ..Default::default()
        },
    )
    .await
    .expect("DescribeImages")
    .images
    .into_iter()
    .map(|image| image.image_id)
    .collect()
}

async fn delete_snapshot(app: &TestApp, account: &str, snapshot_id: &str) -> Result<(), Status> {
    app.snapshots()
        .delete_snapshot(as_account(
            account,
            pb::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.to_owned(),
                force: false,
            },
        ))
        .await
        .map(drop)
}

/// The caller's snapshot, if DescribeSnapshots shows it.
async fn find(app: &TestApp, account: &str, snapshot_id: &str) -> Option<pb::Snapshot> {
    app.snapshots()
        .describe_snapshots(as_account(
            account,
            pb::DescribeSnapshotsRequest {
                snapshot_ids: vec![snapshot_id.to_owned()],
                ..Default::default()
            },
        ))
        .await
        .expect("DescribeSnapshots")
        .into_inner()
        .snapshots
        .pop()
}

/// A snapshot of `disk_id` whose copy has finished.
async fn accomplished_snapshot(app: &TestApp, account: &str, disk_id: &str) -> String {
    let id = app
        .create_on(account, disk_id)
        .await
        .expect("CreateSnapshot")
        .snapshot_id;
    finish_copies(app).await;
    id
}

/// `status` is the NotFound every caller gets for an image it does not have, naming `image_id`.
#[track_caller]
fn assert_image_not_found(status: &Status, image_id: &str) {
    let metadata = assert_error(
        status,
        Code::NotFound,
        "InvalidImageId.NotFound",
        "404",
        Detail::ResourceInfo("image"),
    );
    assert_eq!(metadata.get("imageId").map(String::as_str), Some(image_id));
}

#[track_caller]
fn assert_snapshot_pinned(status: &Status) {
    assert_error(
        status,
        Code::FailedPrecondition,
        "SnapshotCreatedImage",
        "403",
        Detail::PreconditionFailure,
    );
}

// ---------------------------------------------------------------------------------------------
// DeleteImage.

async fn deleting_the_last_image_unpins_its_snapshot_which_can_then_be_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let image_id = create_image(&app, "acct-a", &snapshot_id).await;
    let pinned = find(&app, "acct-a", &snapshot_id).await.unwrap();
    assert_snapshot_pinned(
        &delete_snapshot(&app, "acct-a", &snapshot_id)
            .await
            .unwrap_err(),
    );
    app.advance(Duration::from_secs(60));

    let response = delete_image(&app, "acct-a", &image_id)
        .await
        .expect("DeleteImage");

    assert!(uuid::Uuid::parse_str(&response.request_id).is_ok());
    assert_eq!(app.count_rows("images").await, 0);
    assert!(image_ids(&app, "acct-a").await.is_empty());
    let unpinned = find(&app, "acct-a", &snapshot_id).await.unwrap();
    assert_eq!(unpinned.usage, "none");
    assert!(
        unpinned.last_modified_at.unwrap().seconds >= pinned.last_modified_at.unwrap().seconds + 60,
        "LastModifiedTime moves when the usage does"
    );
    app.assert_invariants().await;
    delete_snapshot(&app, "acct-a", &snapshot_id)
        .await
        .expect("an unpinned snapshot can be deleted");
    assert!(find(&app, "acct-a", &snapshot_id).await.is_none());
    app.assert_invariants().await;
}

async fn a_snapshot_stays_pinned_until_its_last_image_is_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let first = create_image(&app, "acct-a", &snapshot_id).await;
    let second = create_image(&app, "acct-a", &snapshot_id).await;

    delete_image(&app, "acct-a", &first)
        .await
        .expect("DeleteImage");

    assert_eq!(
        image_ids(&app, "acct-a").await,
        std::slice::from_ref(&second)
    );
    assert_eq!(
        find(&app, "acct-a", &snapshot_id).await.unwrap().usage,
        "image"
    );
    assert_snapshot_pinned(
        &delete_snapshot(&app, "acct-a", &snapshot_id)
            .await
            .unwrap_err(),
    );
    app.assert_invariants().await;

    delete_image(&app, "acct-a", &second)
        .await
        .expect("DeleteImage");
    assert_eq!(
        find(&app, "acct-a", &snapshot_id).await.unwrap().usage,
        "none"
    );
    app.assert_invariants().await;
}

async fn another_accounts_an_unknown_or_a_deleted_image_is_not_found_and_nothing_changes(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    app.seed(&world("acct-b", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let a_image = create_image(&app, "acct-a", &snapshot_id).await;
    let doomed_snapshot = accomplished_snapshot(&app, "acct-a", "d-acct-a-1").await;
    let doomed = create_image(&app, "acct-a", &doomed_snapshot).await;
    delete_image(&app, "acct-a", &doomed)
        .await
        .expect("DeleteImage");

    // B names A's image, an id nobody has, and A retries its own delete: the same answer.
    for (caller, image_id) in [
        ("acct-b", &a_image),
        ("acct-b", &NOBODYS_IMAGE.to_owned()),
        ("acct-a", &doomed),
    ] {
        let status = delete_image(&app, caller, image_id).await.unwrap_err();
        assert_image_not_found(&status, image_id);
    }

    assert_eq!(image_ids(&app, "acct-a").await, [a_image]);
    assert_eq!(
        find(&app, "acct-a", &snapshot_id).await.unwrap().usage,
        "image"
    );
    let unpinned = find(&app, "acct-a", &doomed_snapshot).await.unwrap();
    assert_eq!(unpinned.usage, "none");
    assert_eq!(app.count_rows("images").await, 1);
    assert_eq!(app.count_rows("snapshots").await, 2);
    app.assert_invariants().await;
}

/// One malformed request of DeleteImage or DescribeImages.
enum Call {
    Delete(&'static str),
    Describe(pb::DescribeImagesRequest),
}

async fn each_malformed_image_request_is_refused_naming_its_field(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    create_image(&app, "acct-a", &snapshot_id).await;
    // A token DescribeSnapshots writes, for a page ending at this snapshot.
    let snapshot_token = snapshotd::domain::PageCursor {
        created_at: chrono::Utc::now(),
        snapshot_id: snapshot_id.clone(),
        total: Some(1),
    }
    .to_token();
    let describe = |request: pb::DescribeImagesRequest| Call::Describe(request);
    let twenty = "a".repeat(20);
    let rows: Vec<(&str, Call, &str, &str, &'static str)> = vec![
        (
            "no image id",
            Call::Delete(""),
            "MissingParameter",
            "400",
            "image_id",
        ),
        (
            "a snapshot id for an image id",
            Call::Delete("s-aaaaaaaaaaaaaaaaaaaa"),
            "InvalidImageId.Malformed",
            "400",
            "image_id",
        ),
        (
            "too short",
            Call::Delete("m-abc"),
            "InvalidImageId.Malformed",
            "400",
            "image_id",
        ),
        (
            "upper case",
            Call::Delete("m-AAAAAAAAAAAAAAAAAAAA"),
            "InvalidImageId.Malformed",
            "400",
            "image_id",
        ),
        (
            "a malformed id in the list",
            describe(pb::DescribeImagesRequest {
                image_ids: vec![format!("m-{twenty}"), "m-".into()],
                ..Default::default()
            }),
            "InvalidImageId.Malformed",
            "400",
            "image_ids",
        ),
        (
            "an empty id in the list",
            describe(pb::DescribeImagesRequest {
                image_ids: vec![String::new()],
                ..Default::default()
            }),
            "InvalidImageId.Malformed",
            "400",
            "image_ids",
        ),
        (
            "101 ids",
            describe(pb::DescribeImagesRequest {
                image_ids: vec![format!("m-{twenty}"); 101],
                ..Default::default()
            }),
            "InvalidParameter",
            "400",
            "image_ids",
        ),
        (
            "a malformed snapshot filter",
            describe(pb::DescribeImagesRequest {
                snapshot_id: "d-acct-a-0".into(),
                ..Default::default()
            }),
            "InvalidSnapshotId.Malformed",
            "400",
            "snapshot_id",
        ),
        (
            "a token this service never wrote",
            describe(pb::DescribeImagesRequest {
                next_token: "00ff".into(),
                ..Default::default()
            }),
            "InvalidNextToken.Malformed",
            "400",
            "next_token",
        ),
        (
            "a DescribeSnapshots token",
            describe(pb::DescribeImagesRequest {
                next_token: snapshot_token,
                ..Default::default()
            }),
            "InvalidNextToken.Malformed",
            "400",
            "next_token",
        ),
        (
            "a page of 101",
            describe(pb::DescribeImagesRequest {
                max_results: 101,
                ..Default::default()
            }),
            "InvalidParameter",
            "400",
            "max_results",
        ),
        (
            "a negative page size",
            describe(pb::DescribeImagesRequest {
                max_results: -1,
                ..Default::default()
            }),
            "InvalidParameter",
            "400",
            "max_results",
        ),
    ];
    for (label, call, reason, http_status, field) in rows {
        let status = match call {
            Call::Delete(image_id) => delete_image(&app, "acct-a", image_id).await.map(drop),
            Call::Describe(request) => describe_images(&app, "acct-a", request).await.map(drop),
        }
        .expect_err(label);
        assert_eq!(status.code(), Code::InvalidArgument, "{label}: {status:?}");
        assert_error(
            &status,
            Code::InvalidArgument,
            reason,
            http_status,
            Detail::BadRequest(field),
        );
    }
    assert_eq!(app.count_rows("images").await, 1);
    app.assert_invariants().await;
}

// ---------------------------------------------------------------------------------------------
// DescribeImages.

async fn describe_images_lists_the_callers_images_newest_first_by_id_and_snapshot(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    app.seed(&world("acct-b", 1)).await;
    let first_snapshot = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let second_snapshot = accomplished_snapshot(&app, "acct-a", "d-acct-a-1").await;
    let b_snapshot = accomplished_snapshot(&app, "acct-b", "d-acct-b-0").await;
    let named = images(&app)
        .create_image(as_account(
            "acct-a",
            pb::CreateImageRequest {
                snapshot_id: first_snapshot.clone(),
                image_name: "web-base.v1".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage")
        .into_inner()
        .image_id;
    app.advance(Duration::from_secs(1));
    let second = create_image(&app, "acct-a", &second_snapshot).await;
    app.advance(Duration::from_secs(1));
    let third = create_image(&app, "acct-a", &first_snapshot).await;
    let b_image = create_image(&app, "acct-b", &b_snapshot).await;

    let all = describe_images(&app, "acct-a", pb::DescribeImagesRequest::default())
        .await
        .expect("DescribeImages");
    let ids: Vec<&str> = all.images.iter().map(|i| i.image_id.as_str()).collect();
    assert_eq!(ids, [third.as_str(), &second, &named], "newest first");
    assert_eq!(all.total_count, 3);
    assert!(all.next_token.is_empty());
    let oldest = all.images.last().unwrap();
    assert_eq!(oldest.image_name, "web-base.v1");
    assert_eq!(oldest.snapshot_id, first_snapshot);
    assert_eq!(oldest.size_gib, 40);
    assert_eq!(oldest.disk_type(), pb::DiskType::Data);
    assert!(oldest.created_at.unwrap().seconds + 2 == all.images[0].created_at.unwrap().seconds);
    assert_eq!(all.images[1].image_name, "");

    // Filters: ids (B's and nobody's are simply not listed) and the snapshot.
    let cases: [(&str, pb::DescribeImagesRequest, Vec<&str>); 4] = [
        (
            "ids, with another account's and an unknown one",
            pb::DescribeImagesRequest {
                image_ids: vec![
                    named.clone(),
                    b_image.clone(),
                    NOBODYS_IMAGE.into(),
                    second.clone(),
                ],
                ..Default::default()
            },
            vec![&second, &named],
        ),
        (
            "a snapshot",
            pb::DescribeImagesRequest {
                snapshot_id: first_snapshot.clone(),
                ..Default::default()
            },
            vec![&third, &named],
        ),
        (
            "ids and a snapshot",
            pb::DescribeImagesRequest {
                image_ids: vec![named.clone(), second.clone()],
                snapshot_id: second_snapshot.clone(),
                ..Default::default()
            },
            vec![&second],
        ),
        (
            "another account's snapshot",
            pb::DescribeImagesRequest {
                snapshot_id: b_snapshot.clone(),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (label, request, expected) in cases {
        let page = describe_images(&app, "acct-a", request).await.expect(label);
        let ids: Vec<&str> = page.images.iter().map(|i| i.image_id.as_str()).collect();
        assert_eq!(ids, expected, "{label}");
        assert_eq!(page.total_count as usize, expected.len(), "{label}");
    }
    assert_eq!(image_ids(&app, "acct-b").await, [b_image]);
}

/// The total is counted on the listing's first page and carried by its tokens (as
/// DescribeSnapshots' are): an image made during the walk is not counted by its token pages, and
/// a new listing counts it.
async fn describe_images_pages_with_next_token_carrying_the_first_pages_total(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    // Five images, two of them in the same instant: the id breaks the tie.
    let mut made = Vec::new();
    for n in 0..5 {
        if n != 2 {
            app.advance(Duration::from_secs(1));
        }
        made.push(create_image(&app, "acct-a", &snapshot_id).await);
    }
    let newest_first = image_ids(&app, "acct-a").await;
    assert_eq!(newest_first.len(), 5);

    let mut walked = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    let mut made_during_the_walk = Vec::new();
    loop {
        let page = describe_images(
            &app,
            "acct-a",
            pb::DescribeImagesRequest {
                max_results: 2,
                next_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("DescribeImages");
        count_walk_page(&mut pages, "DescribeImages");
        assert_eq!(page.total_count, 5, "page {pages}: the first page's total");
        assert!(page.images.len() <= 2);
        walked.extend(page.images.into_iter().map(|i| i.image_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
        // Newer than the cursor: neither listed nor counted by this walk.
        app.advance(Duration::from_secs(1));
        made_during_the_walk.push(create_image(&app, "acct-a", &snapshot_id).await);
    }
    assert_eq!(pages, 3);
    assert_eq!(walked, newest_first, "each image once, in order");
    made.sort();
    walked.sort();
    assert_eq!(walked, made);
    assert_eq!(
        image_ids(&app, "acct-a").await.len(),
        5 + made_during_the_walk.len(),
        "a new listing counts them"
    );
}

/// An `i1` token (no total: written by a server before the total was carried) still lists the
/// next page, and that page counts what is there now.
async fn an_i1_image_token_of_an_older_server_lists_the_next_page_with_a_fresh_count(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    for _ in 0..3 {
        app.advance(Duration::from_secs(1));
        create_image(&app, "acct-a", &snapshot_id).await;
    }
    let page = |next_token: String| pb::DescribeImagesRequest {
        max_results: 2,
        next_token,
        ..Default::default()
    };
    let first = describe_images(&app, "acct-a", page(String::new()))
        .await
        .expect("DescribeImages");
    let i2 = ImageCursor::parse_token(&first.next_token).expect("a token of this server");
    assert_eq!(i2.total, Some(3));
    let i1 = ImageCursor { total: None, ..i2 }.to_token();
    assert!(i1.starts_with("6931"), "hex of i1");

    app.advance(Duration::from_secs(1));
    create_image(&app, "acct-a", &snapshot_id).await;
    let by_i2 = describe_images(&app, "acct-a", page(first.next_token))
        .await
        .expect("DescribeImages");
    let by_i1 = describe_images(&app, "acct-a", page(i1))
        .await
        .expect("DescribeImages");
    assert_eq!(by_i1.images, by_i2.images);
    assert_eq!(by_i1.images.len(), 1, "the oldest of the first three");
    assert_eq!((by_i2.total_count, by_i1.total_count), (3, 4));
}

// ---------------------------------------------------------------------------------------------
// Retention.

async fn once_its_last_image_is_gone_a_snapshot_past_its_retention_is_released(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = app
        .create(
            "acct-a",
            pb::CreateSnapshotRequest {
                retention_days: 1,
                ..crate::helpers::create_request("d-acct-a-0")
            },
        )
        .await
        .expect("CreateSnapshot")
        .snapshot_id;
    finish_copies(&app).await;
    let image_id = create_image(&app, "acct-a", &snapshot_id).await;
    app.advance(Duration::from_secs(2 * 86_400));

    let held = app.tick_until_idle().await;
    assert_eq!(
        held.released, 0,
        "an image holds its snapshot past its retention"
    );
    assert!(find(&app, "acct-a", &snapshot_id).await.is_some());

    delete_image(&app, "acct-a", &image_id)
        .await
        .expect("DeleteImage");
    let released = app.tick_until_idle().await;

    assert_eq!(released.released, 1);
    assert!(find(&app, "acct-a", &snapshot_id).await.is_none());
    assert_eq!(app.count_rows("snapshots").await, 0);
    app.assert_invariants().await;
}

// ---------------------------------------------------------------------------------------------
// Races.

async fn concurrent_deletes_of_one_image_delete_it_once(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let kept = create_image(&app, "acct-a", &snapshot_id).await;
    let doomed = Arc::new(create_image(&app, "acct-a", &snapshot_id).await);

    let results = concurrently(20, |_| {
        let app = app.clone();
        let doomed = doomed.clone();
        async move { delete_image(&app, "acct-a", &doomed).await }
    })
    .await;

    let mut deleted = 0;
    for result in results {
        match result {
            Ok(_) => deleted += 1,
            Err(status) => assert_image_not_found(&status, &doomed),
        }
    }
    assert_eq!(deleted, 1, "one delete wins");
    assert_eq!(image_ids(&app, "acct-a").await, [kept]);
    assert_eq!(
        find(&app, "acct-a", &snapshot_id).await.unwrap().usage,
        "image"
    );
    app.assert_invariants().await;
}

async fn deleting_an_image_racing_a_delete_of_its_snapshot_never_leaves_a_half_state(
    backend: Backend,
) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 8)).await;
    let mut pairs = Vec::new();
    for n in 0..8 {
        let snapshot_id = app
            .create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .expect("CreateSnapshot")
            .snapshot_id;
        pairs.push(snapshot_id);
    }
    finish_copies(&app).await;
    let mut with_images = Vec::new();
    for snapshot_id in pairs {
        let image_id = create_image(&app, "acct-a", &snapshot_id).await;
        with_images.push((snapshot_id, image_id));
    }
    let with_images = Arc::new(with_images);

    // For each snapshot, DeleteImage and DeleteSnapshot at once.
    let results = concurrently(16, |n| {
        let app = app.clone();
        let (snapshot_id, image_id) = with_images[n / 2].clone();
        async move {
            if n % 2 == 0 {
                delete_image(&app, "acct-a", &image_id).await.map(drop)
            } else {
                delete_snapshot(&app, "acct-a", &snapshot_id).await
            }
        }
    })
    .await;

    for (n, pair) in results.chunks(2).enumerate() {
        let (snapshot_id, _) = &with_images[n];
        assert!(
            pair[0].is_ok(),
            "the image is always deleted: {:?}",
            pair[0]
        );
        match &pair[1] {
            // The image went first: the snapshot was unpinned, then deleted.
            Ok(()) => assert!(find(&app, "acct-a", snapshot_id).await.is_none()),
            // The snapshot's delete went first and was refused; the image's then unpinned it.
            Err(status) => {
                assert_snapshot_pinned(status);
                let left = find(&app, "acct-a", snapshot_id).await.expect("kept");
                assert_eq!(left.usage, "none");
            }
        }
    }
    assert_eq!(app.count_rows("images").await, 0);
    app.assert_invariants().await;
}

async fn deleting_an_image_racing_a_new_image_of_its_snapshot_keeps_the_snapshot_pinned(
    backend: Backend,
) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 8)).await;
    let mut snapshots = Vec::new();
    for n in 0..8 {
        let snapshot_id = app
            .create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .expect("CreateSnapshot")
            .snapshot_id;
        snapshots.push(snapshot_id);
    }
    finish_copies(&app).await;
    let mut with_images = Vec::new();
    for snapshot_id in snapshots {
        let image_id = create_image(&app, "acct-a", &snapshot_id).await;
        with_images.push((snapshot_id, image_id));
    }
    let with_images = Arc::new(with_images);

    // For each snapshot, DeleteImage of its image and CreateImage of a new one at once.
    let results = concurrently(16, |n| {
        let app = app.clone();
        let (snapshot_id, image_id) = with_images[n / 2].clone();
        async move {
            if n % 2 == 0 {
                delete_image(&app, "acct-a", &image_id).await.map(drop)
            } else {
                create_image(&app, "acct-a", &snapshot_id).await;
                Ok(())
            }
        }
    })
    .await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for (snapshot_id, _) in with_images.iter() {
        let snapshot = find(&app, "acct-a", snapshot_id).await.expect("kept");
        assert_eq!(snapshot.usage, "image", "{snapshot_id} has its new image");
    }
    assert_eq!(app.count_rows("images").await, 8);
    app.assert_invariants().await;
}
