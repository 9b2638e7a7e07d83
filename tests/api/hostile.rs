//! Hostile input on the wire: bodies that do not decode and bodies over the size limit are
//! answered with a proper status, and the server keeps serving.

use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{Backend, TestApp, as_account, spawn_app, world};
use crate::on_both_backends;

on_both_backends!(
    invalid_utf8_in_a_string_field_is_invalid_argument_and_nothing_is_written,
    a_message_over_the_size_limit_is_refused_and_the_server_keeps_serving,
);

/// Sends raw bytes as the request body and reads the response body as raw bytes.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Calls `path` with `body` as `account`.
pub async fn call_raw(
    app: &TestApp,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        as_account("acct-a", body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

const CREATE: &str = "/ecs.snapshot.v1.SnapshotService/CreateSnapshot";

async fn invalid_utf8_in_a_string_field_is_invalid_argument_and_nothing_is_written(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    // Field 1 (disk_id), length-delimited, 2 bytes that are not UTF-8.
    let body = vec![0x0a, 0x02, 0xff, 0xfe];

    let status = call_raw(&app, CREATE, body).await.unwrap_err();

    assert_error(
        &status,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("request"),
    );
    assert_eq!(app.count_rows("snapshots").await, 0);
    // A truncated body too.
    let status = call_raw(&app, CREATE, vec![0x0a, 0x10, b'd'])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn a_message_over_the_size_limit_is_refused_and_the_server_keeps_serving(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    // A description of 5 MiB: over the 4 MiB default limit.
    let mut body = vec![0x0a, 10];
    body.extend_from_slice(b"d-acct-a-0");
    let description = vec![b'x'; 5 * 1024 * 1024];
    body.push(0x1a);
    let mut length = description.len();
    while length >= 0x80 {
        body.push((length as u8) | 0x80);
        length >>= 7;
    }
    body.push(length as u8);
    body.extend_from_slice(&description);

    let status = call_raw(&app, CREATE, body).await.unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&status)
            .error_info()
            .map(|info| info.reason.as_str()),
        Some("RequestTooLarge")
    );
    assert_eq!(app.count_rows("snapshots").await, 0);
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the server keeps serving");
}

/// A body the codec cannot decode is answered under the call's own request id: the one in its
/// `x-request-id` (and on its log line) is the one in its `RequestInfo` (before: a fresh id in
/// `RequestInfo`). The codec answers before any store is touched, so SQLite alone shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_does_not_decode_is_answered_under_the_calls_own_request_id() {
    let app = spawn_app(Backend::Sqlite).await;
    // (what is wrong, the path, the body)
    let cases: [(&str, &'static str, Vec<u8>); 3] = [
        ("invalid UTF-8", CREATE, vec![0x0a, 0x02, 0xff, 0xfe]),
        ("truncated", CREATE, vec![0x0a, 0x10, b'd']),
        (
            "a wrong wire type",
            "/ecs.snapshot.v1.SnapshotService/DescribeSnapshots",
            vec![0x0d, 1, 2, 3, 4, 0x0a],
        ),
    ];
    for (case, path, body) in cases {
        let status = call_raw(&app, path, body).await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        let header = status
            .metadata()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let request_info =
            tonic_types::StatusExt::get_details_request_info(&status).map(|info| info.request_id);
        assert!(header.is_some(), "{case}: an x-request-id");
        assert_eq!(request_info, header, "{case}: RequestInfo and x-request-id");
    }
}
