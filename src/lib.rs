//! snapshotd: the cloud-disk CreateSnapshot API (Alibaba Cloud ECS semantics) as a gRPC service.
//!
//! Dependencies point one way: `grpc` → `engine` ← `store`. The engine is pure rules; the store
//! runs each decision as one transaction; the gRPC layer decodes, calls and maps errors.

pub mod app;
pub mod backend;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod grpc;
pub mod pb;
pub mod store;
pub mod telemetry;
pub mod worker;

pub use app::App;
pub use config::Config;
