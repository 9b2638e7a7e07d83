//! DescribeImages and DeleteImage on the ECS-compatible HTTP edge: ECS's parameters and field
//! names, the options not offered refused by name, and the same codes as the gRPC edge.

use snapshotd::pb;
use snapshotd::pb::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

use crate::ecs_edge::{client_of, ecs_code, server_now, spawn_ecs};
use crate::helpers::{Backend, TestApp, as_account, finish_copies, world};
use crate::on_both_backends;

/// ECS parameters as `(name, value)` pairs.
type Params<'a> = Vec<(&'a str, &'a str)>;

on_both_backends!(
    describe_images_speaks_ecs_and_refuses_what_it_does_not_offer,
    delete_image_answers_the_same_codes_on_both_edges_and_unpins_the_snapshot,
);

fn images(app: &TestApp) -> ImageServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    ImageServiceClient::new(channel)
}

/// An accomplished snapshot of `disk_id` of `acct-demo`, made over gRPC.
async fn accomplished(app: &TestApp, disk_id: &str) -> String {
    let id = app
        .create_on("acct-demo", disk_id)
        .await
        .expect("CreateSnapshot")
        .snapshot_id;
    finish_copies(app).await;
    id
}

fn image_ids(answer: &crate::ecs_client::EcsAnswer) -> Vec<String> {
    answer.body["Images"]["Image"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of images: {}", answer.text))
        .iter()
        .map(|image| image["ImageId"].as_str().unwrap().to_owned())
        .collect()
}

async fn describe_images_speaks_ecs_and_refuses_what_it_does_not_offer(backend: Backend) {
    let app = spawn_ecs(backend, |_| {}).await;
    app.seed(&world("acct-demo", 2)).await;
    let first_snapshot = accomplished(&app, "d-acct-demo-0").await;
    let second_snapshot = accomplished(&app, "d-acct-demo-1").await;
    let client = client_of(&app, "acct-demo");
    let now = server_now(&app);
    let made = client
        .call(
            "CreateImage",
            &[("SnapshotId", &first_snapshot), ("ImageName", "web")],
            now,
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.text);
    let named = made.body["ImageId"].as_str().unwrap().to_owned();
    app.advance(std::time::Duration::from_secs(1));
    let other = images(&app)
        .create_image(as_account(
            "acct-demo",
            pb::CreateImageRequest {
                snapshot_id: second_snapshot.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage over gRPC")
        .into_inner()
        .image_id;
    let now = server_now(&app);

    let all = client.call("DescribeImages", &[], now).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["TotalCount"], 2);
    assert_eq!(all.body["PageNumber"], 1);
    assert_eq!(all.body["PageSize"], 10);
    assert_eq!(image_ids(&all), [other.clone(), named.clone()]);
    let image = &all.body["Images"]["Image"][1];
    assert_eq!(image["ImageName"], "web");
    assert_eq!(image["Status"], "Available");
    assert_eq!(image["ImageOwnerAlias"], "self");
    assert_eq!(image["Progress"], "100%");
    assert_eq!(image["Size"], 40);
    let created = image["CreationTime"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(created, "%Y-%m-%dT%H:%M:%SZ").is_ok(),
        "{created}"
    );
    let mapping = &image["DiskDeviceMappings"]["DiskDeviceMapping"][0];
    assert_eq!(mapping["SnapshotId"], first_snapshot.as_str());
    assert_eq!(mapping["Size"], "40");
    assert_eq!(mapping["Type"], "data");

    // ImageId is a comma list; SnapshotId filters; numbered pages.
    let both = format!("{named}, {other}");
    let cases: [(&str, Params, Vec<&str>, u64); 4] = [
        ("two ids", vec![("ImageId", &both)], vec![&other, &named], 2),
        ("one id", vec![("ImageId", &named)], vec![&named], 1),
        (
            "a snapshot",
            vec![("SnapshotId", &second_snapshot)],
            vec![&other],
            1,
        ),
        (
            "the second page of one",
            vec![("PageSize", "1"), ("PageNumber", "2")],
            vec![&named],
            2,
        ),
    ];
    for (label, params, expected, total) in cases {
        let answer = client.call("DescribeImages", &params, now).await;
        assert_eq!(answer.status, 200, "{label}: {}", answer.text);
        assert_eq!(image_ids(&answer), expected, "{label}");
        assert_eq!(answer.body["TotalCount"], total, "{label}");
    }

    // XML: lists repeat their element.
    let xml = client
        .get(&client.signed_query("DescribeImages", &[("Format", "XML")], now))
        .await;
    assert_eq!(xml.status, 200);
    assert!(
        xml.text.contains("<DescribeImagesResponse>"),
        "{}",
        xml.text
    );
    assert!(xml.text.contains("<Images><Image><"), "{}", xml.text);
    assert!(
        xml.text
            .contains("<DiskDeviceMappings><DiskDeviceMapping><"),
        "{}",
        xml.text
    );

    // What this service does not offer is refused by name, never ignored.
    let refused: [(Params, &str, &str, u16); 8] = [
        (vec![("Status", "Available")], "", "OK", 200),
        (vec![("ImageOwnerAlias", "self")], "", "OK", 200),
        (
            vec![("ImageOwnerAlias", "system")],
            "ImageOwnerAlias",
            "InvalidParameter",
            400,
        ),
        (
            vec![("Status", "Creating")],
            "Status",
            "InvalidParameter",
            400,
        ),
        (
            vec![("ImageName", "web")],
            "ImageName",
            "InvalidParameter",
            400,
        ),
        (
            vec![("Usage", "instance")],
            "Usage",
            "InvalidParameter",
            400,
        ),
        (
            vec![("PageNumber", "0")],
            "PageNumber",
            "InvalidParameter",
            400,
        ),
        (
            vec![("ImageId", "m-bad")],
            "ImageId",
            "InvalidImageId.Malformed",
            400,
        ),
    ];
    for (params, named_parameter, code, status) in refused {
        let answer = client.call("DescribeImages", &params, now).await;
        assert_eq!(
            ecs_code(&answer),
            (code.to_owned(), status),
            "{params:?}: {}",
            answer.text
        );
        if status != 200 {
            assert!(
                answer.body["Message"]
                    .as_str()
                    .unwrap()
                    .contains(named_parameter),
                "{params:?}: {}",
                answer.text
            );
        }
    }
}

async fn delete_image_answers_the_same_codes_on_both_edges_and_unpins_the_snapshot(
    backend: Backend,
) {
    let app = spawn_ecs(backend, |_| {}).await;
    app.seed(&world("acct-demo", 1)).await;
    let snapshot_id = accomplished(&app, "d-acct-demo-0").await;
    let image_id = images(&app)
        .create_image(as_account(
            "acct-demo",
            pb::CreateImageRequest {
                snapshot_id: snapshot_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage")
        .into_inner()
        .image_id;
    let now = server_now(&app);
    let owner = client_of(&app, "acct-demo");
    let stranger = client_of(&app, "acct-demo-broke");

    // The same refusals on both edges, before the image goes.
    let rows: [(&str, &str, &str, u16); 4] = [
        ("acct-demo-broke", &image_id, "InvalidImageId.NotFound", 404),
        (
            "acct-demo",
            "m-zzzzzzzzzzzzzzzzzzzz",
            "InvalidImageId.NotFound",
            404,
        ),
        (
            "acct-demo",
            "s-zzzzzzzzzzzzzzzzzzzz",
            "InvalidImageId.Malformed",
            400,
        ),
        ("acct-demo", "", "MissingParameter", 400),
    ];
    for (account, id, code, status) in rows {
        let client = if account == "acct-demo" {
            &owner
        } else {
            &stranger
        };
        let http = client.call("DeleteImage", &[("ImageId", id)], now).await;
        assert_eq!(
            ecs_code(&http),
            (code.to_owned(), status),
            "{id}: {}",
            http.text
        );
        let grpc = images(&app)
            .delete_image(as_account(
                account,
                pb::DeleteImageRequest {
                    image_id: id.to_owned(),
                },
            ))
            .await
            .unwrap_err();
        let info = tonic_types::StatusExt::get_details_error_info(&grpc).expect("ErrorInfo");
        assert_eq!(info.reason, code, "{id}");
        assert_eq!(info.metadata["httpStatus"], status.to_string(), "{id}");
    }
    let pinned = owner
        .call("DeleteSnapshot", &[("SnapshotId", &snapshot_id)], now)
        .await;
    assert_eq!(ecs_code(&pinned), ("SnapshotCreatedImage".to_owned(), 403));
    let bad_force = owner
        .call(
            "DeleteImage",
            &[("ImageId", &image_id), ("Force", "maybe")],
            now,
        )
        .await;
    assert_eq!(ecs_code(&bad_force), ("InvalidParameter".to_owned(), 400));

    let deleted = owner
        .call(
            "DeleteImage",
            &[("ImageId", &image_id), ("Force", "false")],
            now,
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert!(deleted.body["RequestId"].is_string(), "{}", deleted.text);
    let again = owner
        .call("DeleteImage", &[("ImageId", &image_id)], now)
        .await;
    assert_eq!(
        ecs_code(&again),
        ("InvalidImageId.NotFound".to_owned(), 404)
    );
    let listed = owner.call("DescribeImages", &[], now).await;
    assert_eq!(listed.body["TotalCount"], 0, "{}", listed.text);
    let unpinned = owner
        .call("DeleteSnapshot", &[("SnapshotId", &snapshot_id)], now)
        .await;
    assert_eq!(unpinned.status, 200, "{}", unpinned.text);
    app.assert_invariants().await;
}
