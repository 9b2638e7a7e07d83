//! Operability of the running server: health, reflection (v1 and v1alpha) with the error-detail
//! descriptors grpcurl needs, and a graceful stop.

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{Backend, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    health_reports_serving_for_every_service,
    reflection_v1_and_v1alpha_describe_the_contract_and_the_error_details,
    a_graceful_stop_finishes_and_closes_the_store,
);

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health_reports_serving_for_every_service(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in [
        "",
        "ecs.snapshot.v1.SnapshotService",
        "ecs.snapshot.v1.ImageService",
        "ecs.snapshot.v1.TagService",
        "ecs.snapshot.v1.InventoryService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
}

/// Asks `FileContainingSymbol` through v1alpha (grpcurl 1.8.6) and v1, and lists services.
async fn reflection_v1_and_v1alpha_describe_the_contract_and_the_error_details(backend: Backend) {
    let app = spawn_app(backend).await;
    let channel = channel(app.addr).await;

    let symbols = [
        "ecs.snapshot.v1.SnapshotService",
        "ecs.snapshot.v1.ImageService",
        "ecs.snapshot.v1.TagService",
        "ecs.snapshot.v1.InventoryService",
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.PreconditionFailure",
        "google.rpc.QuotaFailure",
        "google.rpc.ResourceInfo",
        "google.rpc.RetryInfo",
        "google.rpc.RequestInfo",
    ];

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut requests = vec![v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    }];
    requests.extend(
        symbols
            .iter()
            .map(|symbol| v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                        (*symbol).to_owned(),
                    ),
                ),
            }),
    );
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        answers.push(response.message_response.expect("an answer"));
    }
    assert_eq!(answers.len(), symbols.len() + 1);
    match &answers[0] {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
            assert!(
                names.contains(&"ecs.snapshot.v1.SnapshotService"),
                "{names:?}"
            );
            assert!(
                names.contains(&"ecs.snapshot.v1.InventoryService"),
                "{names:?}"
            );
            assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    for (symbol, answer) in symbols.iter().zip(&answers[1..]) {
        assert!(
            matches!(
                answer,
                v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
            ),
            "v1alpha knows {symbol}: {answer:?}"
        );
    }

    let mut v1 = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "ecs.snapshot.v1.SnapshotService".into(),
            ),
        ),
    };
    let mut responses = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = responses.message().await.unwrap().unwrap().message_response;
    assert!(matches!(
        answer,
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
}

async fn a_graceful_stop_finishes_and_closes_the_store(backend: Backend) {
    let app = spawn_app(backend).await;
    let addr = app.addr;
    tokio::time::timeout(std::time::Duration::from_secs(10), app.stop())
        .await
        .expect("the server stops within its grace period");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after the stop"
    );
}
