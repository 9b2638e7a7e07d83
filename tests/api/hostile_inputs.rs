//! Inputs a hostile or careless client sends that the parsers must refuse with the right code
//! on both backends (hostile-client findings, issue 16 #5 and #8).

use snapshotd::pb;
use tonic::Code;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, as_account, as_admin, healthy_account, put_instance_request, running_instance,
    spawn_app, world,
};
use crate::on_both_backends;

on_both_backends!(
    a_forged_next_token_from_before_any_snapshot_is_malformed_not_internal,
    repeated_lock_reasons_are_kept_once_and_too_many_are_refused,
);

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

async fn repeated_lock_reasons_are_kept_once_and_too_many_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_account(healthy_account("acct-a")).await;
    let mut repeated = running_instance("acct-a", "i-locked");
    repeated.lock_reasons = std::iter::repeat_n("security".to_owned(), 5000)
        .chain(["financial".to_owned(), "security".to_owned()])
        .collect();
    let stored = app.put_instance(repeated).await;
    assert_eq!(stored.lock_reasons, ["security", "financial"]);

    let mut too_many = running_instance("acct-a", "i-locked");
    too_many.lock_reasons = (0..17).map(|n| format!("reason-{n}")).collect();
    let status = app
        .inventory()
        .put_instance(as_admin(put_instance_request(too_many)))
        .await
        .expect_err("17 distinct lock reasons");
    assert_error(
        &status,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("lock_reasons"),
    );
}
