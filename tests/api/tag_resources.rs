//! Tags after creation over gRPC (TagService) against the real server: tagging, overwriting,
//! listing and removing; the 20-tag limit, alone and under two concurrent calls; the codes of
//! every refusal; and a refused call changing nothing.

use std::time::Duration;

use snapshotd::pb;
use snapshotd::pb::tag_service_client::TagServiceClient;
use tonic::Code;
use tonic::Status;
use tonic::transport::Channel;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, TestApp, as_account, count_walk_page, create_request, spawn_app, world,
};
use crate::on_both_backends;

on_both_backends!(
    tags_are_added_overwritten_listed_and_removed,
    a_snapshot_never_holds_more_than_twenty_tags_and_a_refused_call_changes_nothing,
    two_concurrent_calls_of_eleven_new_keys_leave_one_refused,
    tag_calls_refuse_bad_requests_with_the_ecs_codes,
    a_list_filters_by_tag_and_pages_with_next_token,
);

// ---------------------------------------------------------------------------------------------
// Local helpers.

pub fn tags_client(app: &TestApp) -> TagServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    TagServiceClient::new(channel)
}

fn tag(key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn keys(range: std::ops::Range<usize>, prefix: &str) -> Vec<pb::Tag> {
    range
        .map(|n| tag(&format!("{prefix}{n:02}"), "v"))
        .collect()
}

fn tag_request(ids: &[&str], tags: Vec<pb::Tag>) -> pb::TagResourcesRequest {
    pb::TagResourcesRequest {
        resource_type: "snapshot".into(),
        resource_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        tags,
    }
}

async fn tag_as(
    app: &TestApp,
    account: &str,
    request: pb::TagResourcesRequest,
) -> Result<(), Status> {
    tags_client(app)
        .tag_resources(as_account(account, request))
        .await
        .map(|_| ())
}

async fn untag(app: &TestApp, ids: &[&str], keys: &[&str], all: bool) -> Result<(), Status> {
    tags_client(app)
        .untag_resources(as_account(
            "acct-a",
            pb::UntagResourcesRequest {
                resource_type: "snapshot".into(),
                resource_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
                tag_keys: keys.iter().map(|key| (*key).to_owned()).collect(),
                all,
            },
        ))
        .await
        .map(|_| ())
}

async fn list(
    app: &TestApp,
    request: pb::ListTagResourcesRequest,
) -> Result<pb::ListTagResourcesResponse, Status> {
    tags_client(app)
        .list_tag_resources(as_account("acct-a", request))
        .await
        .map(tonic::Response::into_inner)
}

/// `(key, value)` of every tag of `snapshot_id`, by key, as ListTagResources shows them.
async fn tags_of(app: &TestApp, snapshot_id: &str) -> Vec<(String, String)> {
    let page = list(
        app,
        pb::ListTagResourcesRequest {
            resource_type: "snapshot".into(),
            resource_ids: vec![snapshot_id.to_owned()],
            ..Default::default()
        },
    )
    .await
    .expect("ListTagResources");
    assert_eq!(page.next_token, "", "20 tags fit in one page");
    page.tag_resources
        .into_iter()
        .map(|t| {
            assert_eq!(
                (t.resource_id.as_str(), t.resource_type.as_str()),
                (snapshot_id, "snapshot")
            );
            (t.tag_key, t.tag_value)
        })
        .collect()
}

async fn snapshot(app: &TestApp, snapshot_id: &str) -> pb::Snapshot {
    app.snapshots()
        .describe_snapshots(as_account(
            "acct-a",
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
        .expect("the snapshot is listed")
}

async fn new_snapshot(app: &TestApp, disk: usize) -> String {
    app.create_on("acct-a", &format!("d-acct-a-{disk}"))
        .await
        .expect("CreateSnapshot")
        .snapshot_id
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

async fn tags_are_added_overwritten_listed_and_removed(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let created = app
        .create(
            "acct-a",
            pb::CreateSnapshotRequest {
                tags: vec![tag("team", "storage")],
                ..create_request("d-acct-a-0")
            },
        )
        .await
        .expect("CreateSnapshot")
        .snapshot_id;
    let other = new_snapshot(&app, 1).await;
    let before = snapshot(&app, &created).await.last_modified_at;

    app.advance(Duration::from_secs(60));
    tag_as(
        &app,
        "acct-a",
        tag_request(
            &[&created, &other],
            vec![tag("env", "prod"), tag("team", "db")],
        ),
    )
    .await
    .expect("TagResources");
    assert_eq!(
        tags_of(&app, &created).await,
        pairs(&[("env", "prod"), ("team", "db")]),
        "a key the snapshot had takes the new value"
    );
    assert_eq!(
        tags_of(&app, &other).await,
        pairs(&[("env", "prod"), ("team", "db")])
    );
    let shown = snapshot(&app, &created).await;
    assert_eq!(shown.tags.len(), 2, "DescribeSnapshots shows the tags");
    let tagged_at = shown.last_modified_at;
    assert_ne!(tagged_at, before, "a tag change moves LastModifiedTime");

    app.advance(Duration::from_secs(60));
    untag(&app, &[&created], &["team", "absent"], false)
        .await
        .expect("UntagResources of a key and a key it does not have");
    assert_eq!(tags_of(&app, &created).await, pairs(&[("env", "prod")]));
    assert_ne!(snapshot(&app, &created).await.last_modified_at, tagged_at);

    untag(&app, &[&created, &other], &[], true)
        .await
        .expect("UntagResources All");
    assert_eq!(tags_of(&app, &created).await, Vec::new());
    assert_eq!(tags_of(&app, &other).await, Vec::new());
    app.assert_invariants().await;
}

async fn a_snapshot_never_holds_more_than_twenty_tags_and_a_refused_call_changes_nothing(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let full = new_snapshot(&app, 0).await;
    let roomy = new_snapshot(&app, 1).await;
    tag_as(&app, "acct-a", tag_request(&[&full], keys(0..15, "k")))
        .await
        .expect("15 tags");

    // 15 held + 6 new = 21; the other snapshot named would have room, and is not changed either.
    let status = tag_as(
        &app,
        "acct-a",
        tag_request(&[&roomy, &full], keys(10..21, "k")),
    )
    .await
    .expect_err("21 tags");
    let metadata = assert_error(
        &status,
        Code::ResourceExhausted,
        "OperationDenied.QuotaExceed",
        "400",
        Detail::QuotaFailure,
    );
    assert_eq!(metadata.get("resourceId"), Some(&full));
    assert_eq!(tags_of(&app, &full).await.len(), 15);
    assert_eq!(tags_of(&app, &roomy).await, Vec::new(), "all or nothing");

    // Overwriting keys it has costs nothing: 15 + 5 new = 20.
    tag_as(&app, "acct-a", tag_request(&[&full], keys(10..20, "k")))
        .await
        .expect("exactly 20 tags");
    assert_eq!(tags_of(&app, &full).await.len(), 20);
    let status = tag_as(
        &app,
        "acct-a",
        tag_request(&[&full], vec![tag("one-more", "")]),
    )
    .await
    .expect_err("a 21st tag");
    assert_error(
        &status,
        Code::ResourceExhausted,
        "OperationDenied.QuotaExceed",
        "400",
        Detail::QuotaFailure,
    );
    app.assert_invariants().await;
}

async fn two_concurrent_calls_of_eleven_new_keys_leave_one_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 5)).await;
    // A few rounds, one snapshot each: the race is real, so give it more than one chance.
    for round in 0..5 {
        let id = new_snapshot(&app, round).await;
        let (first, second) = tokio::join!(
            tag_as(&app, "acct-a", tag_request(&[&id], keys(0..11, "a"))),
            tag_as(&app, "acct-a", tag_request(&[&id], keys(0..11, "b"))),
        );
        let refused = match (first, second) {
            (Ok(()), Err(status)) | (Err(status), Ok(())) => status,
            other => panic!("round {round}: one call wins, one is refused: {other:?}"),
        };
        assert_error(
            &refused,
            Code::ResourceExhausted,
            "OperationDenied.QuotaExceed",
            "400",
            Detail::QuotaFailure,
        );
        assert_eq!(tags_of(&app, &id).await.len(), 11, "round {round}");
    }
    app.assert_invariants().await;
}

async fn tag_call_errors(app: &TestApp, snapshot_id: &str) -> Vec<(&'static str, Status)> {
    let many: Vec<String> = (0..51).map(|n| format!("s-{n:020}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut refused = Vec::new();
    let tag_cases: Vec<(&'static str, pb::TagResourcesRequest)> = vec![
        (
            "no resource type",
            pb::TagResourcesRequest {
                resource_type: String::new(),
                ..tag_request(&[snapshot_id], vec![tag("k", "v")])
            },
        ),
        (
            "another resource type",
            pb::TagResourcesRequest {
                resource_type: "instance".into(),
                ..tag_request(&[snapshot_id], vec![tag("k", "v")])
            },
        ),
        ("no resource ids", tag_request(&[], vec![tag("k", "v")])),
        ("51 resource ids", tag_request(&many, vec![tag("k", "v")])),
        ("no tags", tag_request(&[snapshot_id], vec![])),
        ("21 tags", tag_request(&[snapshot_id], keys(0..21, "k"))),
        (
            "an acs: key",
            tag_request(&[snapshot_id], vec![tag("acs:x", "v")]),
        ),
        (
            "a URL in a value",
            tag_request(&[snapshot_id], vec![tag("k", "see http://x")]),
        ),
        (
            "a key twice",
            tag_request(&[snapshot_id], vec![tag("k", "1"), tag("k", "2")]),
        ),
        (
            "an unknown id",
            tag_request(&["s-00000000000000000000"], vec![tag("k", "v")]),
        ),
        (
            "a malformed id",
            tag_request(&["i-not-a-snapshot"], vec![tag("k", "v")]),
        ),
    ];
    for (case, request) in tag_cases {
        refused.push((case, tag_as(app, "acct-a", request).await.expect_err(case)));
    }
    refused.push((
        "untag without keys or All",
        untag(app, &[snapshot_id], &[], false)
            .await
            .expect_err("no keys"),
    ));
    let list_cases: Vec<(&'static str, pb::ListTagResourcesRequest)> = vec![
        (
            "a list of nothing",
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".into(),
                ..Default::default()
            },
        ),
        (
            "a token not ours",
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".into(),
                resource_ids: vec![snapshot_id.to_owned()],
                next_token: "abcd".into(),
                ..Default::default()
            },
        ),
    ];
    for (case, request) in list_cases {
        refused.push((case, list(app, request).await.expect_err(case)));
    }
    refused
}

async fn tag_calls_refuse_bad_requests_with_the_ecs_codes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let id = new_snapshot(&app, 0).await;
    let expected: &[(&str, Code, &str, &str, Detail)] = &[
        (
            "no resource type",
            Code::InvalidArgument,
            "MissingParameter",
            "400",
            Detail::BadRequest("resource_type"),
        ),
        (
            "another resource type",
            Code::InvalidArgument,
            "InvalidResourceType.NotFound",
            "404",
            Detail::BadRequest("resource_type"),
        ),
        (
            "no resource ids",
            Code::InvalidArgument,
            "MissingParameter",
            "400",
            Detail::BadRequest("resource_ids"),
        ),
        (
            "51 resource ids",
            Code::InvalidArgument,
            "NumberExceed.ResourceIds",
            "400",
            Detail::BadRequest("resource_ids"),
        ),
        (
            "no tags",
            Code::InvalidArgument,
            "MissingParameter",
            "400",
            Detail::BadRequest("tags"),
        ),
        (
            "21 tags",
            Code::InvalidArgument,
            "InvalidTagKey.Malformed",
            "400",
            Detail::BadRequest("tags"),
        ),
        (
            "an acs: key",
            Code::InvalidArgument,
            "InvalidTagKey.Malformed",
            "400",
            Detail::BadRequest("tags"),
        ),
        (
            "a URL in a value",
            Code::InvalidArgument,
            "InvalidTagValue.Malformed",
            "400",
            Detail::BadRequest("tags"),
        ),
        (
            "a key twice",
            Code::InvalidArgument,
            "Duplicate.TagKey",
            "400",
            Detail::BadRequest("tags"),
        ),
        (
            "an unknown id",
            Code::NotFound,
            "InvalidResourceId.NotFound",
            "404",
            Detail::ResourceInfo("snapshot"),
        ),
        (
            "a malformed id",
            Code::NotFound,
            "InvalidResourceId.NotFound",
            "404",
            Detail::ResourceInfo("snapshot"),
        ),
        (
            "untag without keys or All",
            Code::InvalidArgument,
            "MissingParameter",
            "400",
            Detail::BadRequest("tag_keys"),
        ),
        (
            "a list of nothing",
            Code::InvalidArgument,
            "BothEmpty.TagsAndResources",
            "403",
            Detail::BadRequest("resource_ids"),
        ),
        (
            "a token not ours",
            Code::InvalidArgument,
            "InvalidNextToken.Malformed",
            "400",
            Detail::BadRequest("next_token"),
        ),
    ];
    let refused = tag_call_errors(&app, &id).await;
    assert_eq!(refused.len(), expected.len());
    for ((case, status), (expected_case, code, reason, http, detail)) in
        refused.iter().zip(expected)
    {
        assert_eq!(case, expected_case);
        eprintln!("case: {case}");
        assert_error(status, *code, reason, http, *detail);
    }
    assert_eq!(
        tags_of(&app, &id).await,
        Vec::new(),
        "nothing refused was written"
    );
    app.assert_invariants().await;
}

async fn a_list_filters_by_tag_and_pages_with_next_token(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 4)).await;
    let mut ids = Vec::new();
    for disk in 0..4 {
        ids.push(new_snapshot(&app, disk).await);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Three snapshots with 20 tags each (60 rows: two pages), the fourth without "k00".
    tag_as(&app, "acct-a", tag_request(&id_refs[..3], keys(0..20, "k")))
        .await
        .expect("TagResources");
    tag_as(
        &app,
        "acct-a",
        tag_request(&id_refs[3..], vec![tag("k01", "other")]),
    )
    .await
    .expect("TagResources");

    let mut rows = Vec::new();
    let mut next_token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &app,
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".into(),
                tags: vec![tag("k00", "")],
                next_token: next_token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("ListTagResources");
        count_walk_page(&mut pages, "ListTagResources");
        rows.extend(
            page.tag_resources
                .into_iter()
                .map(|t| (t.resource_id, t.tag_key)),
        );
        if page.next_token.is_empty() {
            break;
        }
        next_token = page.next_token;
    }
    assert_eq!(pages, 2, "50 rows a page");
    let mut expected: Vec<(String, String)> = ids[..3]
        .iter()
        .flat_map(|id| (0..20).map(move |n| (id.clone(), format!("k{n:02}"))))
        .collect();
    expected.sort();
    assert_eq!(
        rows, expected,
        "every tag of the matching snapshots, once, in order"
    );

    let narrowed = list(
        &app,
        pb::ListTagResourcesRequest {
            resource_type: "snapshot".into(),
            tags: vec![tag("k01", "other")],
            ..Default::default()
        },
    )
    .await
    .expect("ListTagResources");
    assert_eq!(narrowed.tag_resources.len(), 1);
    assert_eq!(narrowed.tag_resources[0].resource_id, ids[3]);
}
