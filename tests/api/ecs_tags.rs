//! The tag actions on the ECS-compatible HTTP edge: ECS's parameters (`ResourceId.N`,
//! `Tag.N.Key`, `TagKey.N`, `All`) and answers (`TagResources.TagResource[]`, `NextToken`), the
//! same snapshot and the same codes as the gRPC TagService.

use snapshotd::pb;

use crate::ecs_edge::{client_of, server_now, spawn_ecs};
use crate::helpers::{Backend, as_account, world};
use crate::on_both_backends;
use crate::tag_resources::tags_client;

on_both_backends!(
    tags_set_over_http_are_the_tags_grpc_lists,
    tag_actions_refuse_with_the_codes_of_the_grpc_edge,
);

async fn tags_set_over_http_are_the_tags_grpc_lists(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    app.seed(&world("acct-demo", 2)).await;
    let first = app
        .create_on("acct-demo", "d-acct-demo-0")
        .await
        .expect("a snapshot")
        .snapshot_id;
    let second = app
        .create_on("acct-demo", "d-acct-demo-1")
        .await
        .expect("a snapshot")
        .snapshot_id;
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);

    let tagged = client
        .call(
            "TagResources",
            &[
                ("RegionId", "cn-hangzhou"),
                ("ResourceType", "snapshot"),
                ("ResourceId.1", &first),
                ("ResourceId.2", &second),
                ("Tag.1.Key", "env"),
                ("Tag.1.Value", "prod"),
                ("Tag.2.Key", "team"),
            ],
            now,
        )
        .await;
    assert_eq!(tagged.status, 200, "{}", tagged.text);
    assert!(tagged.body["RequestId"].is_string(), "{}", tagged.text);

    // gRPC sees what HTTP wrote.
    let listed = tags_client(&app)
        .list_tag_resources(as_account(
            "acct-demo",
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".into(),
                resource_ids: vec![first.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("ListTagResources")
        .into_inner();
    let keys: Vec<(&str, &str)> = listed
        .tag_resources
        .iter()
        .map(|t| (t.tag_key.as_str(), t.tag_value.as_str()))
        .collect();
    assert_eq!(keys, [("env", "prod"), ("team", "")]);

    let untagged = client
        .call(
            "UntagResources",
            &[
                ("ResourceType", "snapshot"),
                ("ResourceId.1", &second),
                ("TagKey.1", "env"),
            ],
            now,
        )
        .await;
    assert_eq!(untagged.status, 200, "{}", untagged.text);

    let answer = client
        .call(
            "ListTagResources",
            &[("ResourceType", "snapshot"), ("Tag.1.Key", "team")],
            now,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["NextToken"], "", "{}", answer.text);
    let rows = answer.body["TagResources"]["TagResource"]
        .as_array()
        .unwrap_or_else(|| panic!("TagResources.TagResource[]: {}", answer.text));
    let mut expected = vec![
        (first.as_str(), "env", "prod"),
        (first.as_str(), "team", ""),
        (second.as_str(), "team", ""),
    ];
    expected.sort();
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|row| {
            assert_eq!(row["ResourceType"], "snapshot");
            (
                row["ResourceId"].as_str().unwrap(),
                row["TagKey"].as_str().unwrap(),
                row["TagValue"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);

    let xml = client
        .get(&client.signed_query(
            "ListTagResources",
            &[
                ("Format", "XML"),
                ("ResourceType", "snapshot"),
                ("ResourceId.1", &second),
            ],
            now,
        ))
        .await;
    assert_eq!(xml.status, 200, "{}", xml.text);
    assert!(
        xml.text.contains("<ListTagResourcesResponse>"),
        "{}",
        xml.text
    );
    assert!(
        xml.text.contains("<TagResources><TagResource><"),
        "{}",
        xml.text
    );

    let all = client
        .call(
            "UntagResources",
            &[
                ("ResourceType", "snapshot"),
                ("ResourceId.1", &first),
                ("All", "true"),
            ],
            now,
        )
        .await;
    assert_eq!(all.status, 200, "{}", all.text);
    app.assert_invariants().await;
}

async fn tag_actions_refuse_with_the_codes_of_the_grpc_edge(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    app.seed(&world("acct-demo", 1)).await;
    app.seed(&world("acct-other", 1)).await;
    let own = app
        .create_on("acct-demo", "d-acct-demo-0")
        .await
        .expect("a snapshot")
        .snapshot_id;
    let foreign = app
        .create_on("acct-other", "d-acct-other-0")
        .await
        .expect("a snapshot")
        .snapshot_id;
    let full: Vec<(String, String)> = (0..20)
        .map(|n| (format!("Tag.{}.Key", n + 1), format!("k{n:02}")))
        .collect();
    let mut fill: Vec<(&str, &str)> = vec![("ResourceType", "snapshot"), ("ResourceId.1", &own)];
    fill.extend(full.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);
    assert_eq!(client.call("TagResources", &fill, now).await.status, 200);

    let many: Vec<(String, String)> = (1..=51)
        .map(|n| (format!("ResourceId.{n}"), own.clone()))
        .collect();
    let mut too_many: Vec<(&str, &str)> = vec![("ResourceType", "snapshot"), ("Tag.1.Key", "k")];
    too_many.extend(many.iter().map(|(k, v)| (k.as_str(), v.as_str())));

    let snapshot = [("ResourceType", "snapshot")];
    // (case, action, parameters, code, HTTP status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
    let cases: Vec<Case> = vec![
        (
            "another type",
            "TagResources",
            vec![
                ("ResourceType", "disk"),
                ("ResourceId.1", &own),
                ("Tag.1.Key", "k"),
            ],
            "InvalidResourceType.NotFound",
            404,
        ),
        (
            "another account's snapshot",
            "TagResources",
            [
                &snapshot[..],
                &[("ResourceId.1", &foreign), ("Tag.1.Key", "k")],
            ]
            .concat(),
            "InvalidResourceId.NotFound",
            404,
        ),
        (
            "another account's snapshot, listed",
            "ListTagResources",
            [&snapshot[..], &[("ResourceId.1", &foreign)]].concat(),
            "InvalidResourceId.NotFound",
            404,
        ),
        (
            "another account's snapshot, untagged",
            "UntagResources",
            [
                &snapshot[..],
                &[("ResourceId.1", &foreign), ("All", "true")],
            ]
            .concat(),
            "InvalidResourceId.NotFound",
            404,
        ),
        (
            "a 21st tag",
            "TagResources",
            [
                &snapshot[..],
                &[("ResourceId.1", &own), ("Tag.1.Key", "one-more")],
            ]
            .concat(),
            "OperationDenied.QuotaExceed",
            400,
        ),
        (
            "51 resource ids",
            "TagResources",
            too_many.clone(),
            "NumberExceed.ResourceIds",
            400,
        ),
        (
            "a fuzzy tag filter",
            "ListTagResources",
            [&snapshot[..], &[("TagFilter.1.TagKey", "env*")]].concat(),
            "InvalidParameter",
            400,
        ),
        (
            "a list of nothing",
            "ListTagResources",
            snapshot.to_vec(),
            "BothEmpty.TagsAndResources",
            403,
        ),
        (
            "All that is not a flag",
            "UntagResources",
            [&snapshot[..], &[("ResourceId.1", &own), ("All", "yes")]].concat(),
            "InvalidParameter",
            400,
        ),
        // Second spellings of one entry (a hostile review found `Tag.01` merged with `Tag.1`,
        // one of them dropped, and 29 tags taken in one call).
        (
            "Tag.01 beside Tag.1",
            "TagResources",
            [
                &snapshot[..],
                &[
                    ("ResourceId.1", &foreign),
                    ("Tag.1.Key", "p"),
                    ("Tag.01.Key", "q"),
                ],
            ]
            .concat(),
            "InvalidParameter",
            400,
        ),
        (
            "ResourceId.+1",
            "TagResources",
            [
                &snapshot[..],
                &[("ResourceId.+1", &foreign), ("Tag.1.Key", "p")],
            ]
            .concat(),
            "InvalidParameter",
            400,
        ),
        (
            "TagKey.01",
            "UntagResources",
            [
                &snapshot[..],
                &[("ResourceId.1", &foreign), ("TagKey.01", "p")],
            ]
            .concat(),
            "InvalidParameter",
            400,
        ),
    ];
    for (case, action, params, code, status) in cases {
        let answer = client.call(action, &params, now).await;
        assert_eq!(
            (answer.code(), answer.status),
            (code, status),
            "{case}: {}",
            answer.text
        );
    }
    // Refused calls changed nothing: the foreign snapshot has no tags, ours still 20.
    let foreign_tags = tags_client(&app)
        .list_tag_resources(as_account(
            "acct-other",
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".into(),
                resource_ids: vec![foreign.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("ListTagResources")
        .into_inner();
    assert!(foreign_tags.tag_resources.is_empty());
    app.assert_invariants().await;
}
