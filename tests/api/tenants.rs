//! Tenant isolation: an account sees only its own disks and its own client tokens, another
//! account's disk is indistinguishable from a missing one, and the caller identity header is
//! refused unless it is well formed.

use snapshotd::pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{Backend, TestApp, create_request, finish_copies, spawn_app, world};
use crate::on_both_backends;

on_both_backends!(
    another_accounts_disk_is_not_found_and_nothing_is_created,
    another_accounts_disk_looks_exactly_like_a_missing_disk,
    another_accounts_disk_is_not_found_whatever_its_state,
    each_account_snapshots_only_its_own_disks,
    client_tokens_are_scoped_per_account,
    another_accounts_client_token_does_not_reveal_its_snapshot,
    odd_identity_headers_are_unauthenticated,
    an_identity_header_is_trimmed_of_surrounding_spaces,
    a_64_character_account_id_is_accepted_end_to_end,
    a_65_character_account_id_is_refused_at_the_identity_check,
);

/// Two healthy accounts, `acct-a` and `acct-b`, with one disk each.
async fn two_tenants(backend: Backend) -> TestApp {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 1)).await;
    app
}

fn with_token(disk_id: &str, token: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        client_token: token.into(),
        ..create_request(disk_id)
    }
}

/// Asserts `status` is the plain not-found answer for `disk_id`.
#[track_caller]
fn assert_disk_not_found(status: &Status, disk_id: &str) {
    let metadata = assert_error(
        status,
        Code::NotFound,
        "InvalidDiskId.NotFound",
        "404",
        Detail::ResourceInfo("disk"),
    );
    assert_eq!(metadata.get("diskId").map(String::as_str), Some(disk_id));
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.resource_name, disk_id);
    assert_eq!(resource.owner, "", "the owner is never revealed");
}

async fn another_accounts_disk_is_not_found_and_nothing_is_created(backend: Backend) {
    let app = two_tenants(backend).await;

    let status = app.create_on("acct-b", "d-acct-a-0").await.unwrap_err();

    assert_disk_not_found(&status, "d-acct-a-0");
    assert_eq!(app.count_rows("snapshots").await, 0);
    // The owner still can.
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the owner's own disk");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

/// Everything a client can see of a refusal, with `disk_id` replaced by a placeholder.
#[derive(Debug, PartialEq)]
struct Visible {
    code: Code,
    message: String,
    reason: String,
    domain: String,
    metadata: Vec<(String, String)>,
    resource: (String, String, String, String),
}

fn visible(status: &Status, disk_id: &str) -> Visible {
    let scrub = |s: &str| s.replace(disk_id, "<disk>");
    let info = status.get_details_error_info().expect("ErrorInfo");
    let mut metadata: Vec<_> = info
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), scrub(v)))
        .collect();
    metadata.sort();
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    Visible {
        code: status.code(),
        message: scrub(status.message()),
        reason: info.reason,
        domain: info.domain,
        metadata,
        resource: (
            resource.resource_type,
            scrub(&resource.resource_name),
            resource.owner,
            scrub(&resource.description),
        ),
    }
}

async fn another_accounts_disk_looks_exactly_like_a_missing_disk(backend: Backend) {
    let app = two_tenants(backend).await;

    let foreign = app.create_on("acct-b", "d-acct-a-0").await.unwrap_err();
    let missing = app.create_on("acct-b", "d-acct-a-9").await.unwrap_err();

    assert_disk_not_found(&foreign, "d-acct-a-0");
    assert_disk_not_found(&missing, "d-acct-a-9");
    assert_eq!(
        visible(&foreign, "d-acct-a-0"),
        visible(&missing, "d-acct-a-9")
    );
    for status in [&foreign, &missing] {
        let info = status.get_details_error_info().unwrap();
        assert!(
            !info.metadata.values().any(|v| v == "acct-a"),
            "no owner in {:?}",
            info.metadata
        );
        assert!(!info.metadata.contains_key("accountId"));
        assert!(!status.message().contains("acct-a"));
    }
    assert_eq!(app.count_rows("snapshots").await, 0);
}

async fn another_accounts_disk_is_not_found_whatever_its_state(backend: Backend) {
    let app = two_tenants(backend).await;
    // A's disk has a copy in progress: A would hear CreatingSnapshot.
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let status = app.create_on("acct-b", "d-acct-a-0").await.unwrap_err();

    assert_disk_not_found(&status, "d-acct-a-0");

    // A's disk is expired: A would hear DiskInArrears.
    finish_copies(&app).await;
    let mut expired = world("acct-a", 1);
    expired.disks[0].expires_at = Some(crate::helpers::minutes_ago(1));
    app.seed(&expired).await;
    let status = app.create_on("acct-b", "d-acct-a-0").await.unwrap_err();
    assert_disk_not_found(&status, "d-acct-a-0");
    assert_eq!(app.count_rows("snapshots").await, 1, "only A's first");
}

async fn each_account_snapshots_only_its_own_disks(backend: Backend) {
    let app = two_tenants(backend).await;

    let a = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .expect("A on A's");
    let b = app
        .create_on("acct-b", "d-acct-b-0")
        .await
        .expect("B on B's");
    finish_copies(&app).await;
    let a_on_b = app.create_on("acct-a", "d-acct-b-0").await.unwrap_err();
    let b_on_a = app.create_on("acct-b", "d-acct-a-0").await.unwrap_err();

    assert_ne!(a.snapshot_id, b.snapshot_id);
    assert_disk_not_found(&a_on_b, "d-acct-b-0");
    assert_disk_not_found(&b_on_a, "d-acct-a-0");
    assert_eq!(app.count_rows("snapshots").await, 2);
}

async fn client_tokens_are_scoped_per_account(backend: Backend) {
    let app = two_tenants(backend).await;

    let a = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .expect("A with tok-1");
    let b = app
        .create("acct-b", with_token("d-acct-b-0", "tok-1"))
        .await
        .expect("B with A's token value");

    assert_ne!(a.snapshot_id, b.snapshot_id, "no collision across accounts");
    assert_eq!(app.count_rows("snapshots").await, 2);
    assert_eq!(app.count_rows("client_tokens").await, 2);
    // Each retry replays its own account's answer.
    let a_again = app
        .create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .expect("A retries");
    let b_again = app
        .create("acct-b", with_token("d-acct-b-0", "tok-1"))
        .await
        .expect("B retries");
    assert_eq!(a_again.snapshot_id, a.snapshot_id);
    assert_eq!(b_again.snapshot_id, b.snapshot_id);
    assert_eq!(app.count_rows("snapshots").await, 2);
}

async fn another_accounts_client_token_does_not_reveal_its_snapshot(backend: Backend) {
    let app = two_tenants(backend).await;
    app.create("acct-a", with_token("d-acct-a-0", "tok-1"))
        .await
        .expect("A with tok-1");

    // B repeats A's request word for word: it is B's request, for a disk B does not have.
    let status = app
        .create("acct-b", with_token("d-acct-a-0", "tok-1"))
        .await
        .unwrap_err();

    assert_disk_not_found(&status, "d-acct-a-0");
    assert_eq!(app.count_rows("snapshots").await, 1);
    assert_eq!(app.count_rows("client_tokens").await, 1);
}

/// CreateSnapshot of `d-acct-a-0` with `x-account-id` set to the raw bytes `value`.
async fn create_with_raw_identity(app: &TestApp, value: &[u8]) -> Result<(), Status> {
    let mut request = Request::new(create_request("d-acct-a-0"));
    let value = MetadataValue::try_from(value).expect("a header value tonic can send");
    request.metadata_mut().insert("x-account-id", value);
    app.snapshots().create_snapshot(request).await.map(|_| ())
}

async fn odd_identity_headers_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let too_long = "a".repeat(129);
    let odd: [(&str, &[u8], &str); 8] = [
        ("empty", b"", "InvalidIdentity.Missing"),
        ("a space", b" ", "InvalidIdentity.Missing"),
        ("spaces and a tab", b"  \t  ", "InvalidIdentity.Missing"),
        (
            "129 characters",
            too_long.as_bytes(),
            "InvalidIdentity.Malformed",
        ),
        ("an inner space", b"acct a", "InvalidIdentity.Malformed"),
        ("an inner tab", b"acct-a\tx", "InvalidIdentity.Malformed"),
        (
            "non-ASCII bytes",
            "acct-é".as_bytes(),
            "InvalidIdentity.Malformed",
        ),
        ("a slash", b"acct/a", "InvalidIdentity.Malformed"),
    ];

    for (case, value, reason) in odd {
        let status = create_with_raw_identity(&app, value).await.unwrap_err();

        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_error(&status, Code::Unauthenticated, reason, "401", Detail::None);
    }
    assert_eq!(app.count_rows("snapshots").await, 0);
}

async fn an_identity_header_is_trimmed_of_surrounding_spaces(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    create_with_raw_identity(&app, b"  acct-a ")
        .await
        .expect("the same account");

    assert_eq!(app.count_rows("snapshots").await, 1);
}

/// An account id of `length` characters the inventory and the header both allow.
fn long_account_id(length: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";
    (0..length)
        .map(|n| char::from(alphabet[n % alphabet.len()]))
        .collect()
}

async fn a_64_character_account_id_is_accepted_end_to_end(backend: Backend) {
    let app = spawn_app(backend).await;
    let account_id = long_account_id(64);
    let mut w = world(&account_id, 0);
    w.instance.instance_id = "i-long".into();
    w.disks = vec![crate::helpers::attached_disk(
        &account_id,
        "i-long",
        "d-long",
    )];
    app.seed(&w).await;

    let response = app.create_on(&account_id, "d-long").await;

    response.expect("a 64-character account");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

async fn a_65_character_account_id_is_refused_at_the_identity_check(backend: Backend) {
    let app = spawn_app(backend).await;
    let account_id = long_account_id(65);

    let status = app.create_on(&account_id, "d-long").await.unwrap_err();

    // The header admits exactly the account ids the inventory can store (at most 64).
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Malformed",
        "401",
        Detail::None,
    );
}
