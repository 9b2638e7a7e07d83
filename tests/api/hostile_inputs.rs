//! Inputs a hostile or careless client sends that the parsers must refuse with the right code
//! on both backends (hostile-client findings, issue 16 #5 and #8).

use snapshotd::pb;
use tonic::Code;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{Backend, as_account, spawn_app, world};
use crate::on_both_backends;

on_both_backends!(a_forged_next_token_from_before_any_snapshot_is_malformed_not_internal,);

/// A `next_token` with a valid checksum around a body the service never wrote.
fn forged_token(body: &str) -> String {
    let plain = format!("{body}|{:08x}", crc32fast::hash(body.as_bytes()));
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn a_forged_next_token_from_before_any_snapshot_is_malformed_not_internal(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let id = "s-zzzzzzzzzzzzzzzzzzzz";
    // Before 4713 BC (out of PostgreSQL's range), before 1970, after 9999.
    for body in [
        format!("v1|-211000000000|0|{id}"),
        format!("v1|-86400|0|{id}"),
        format!("v1|253402300800|0|{id}"),
    ] {
        let request = pb::DescribeSnapshotsRequest {
            next_token: forged_token(&body),
            ..Default::default()
        };
        let status = app
            .snapshots()
            .describe_snapshots(as_account("acct-a", request))
            .await
            .expect_err(&body);
        assert_error(
            &status,
            Code::InvalidArgument,
            "InvalidNextToken.Malformed",
            "400",
            Detail::BadRequest("next_token"),
        );
    }
}
