//! snapshotd: the cloud-disk CreateSnapshot API (Alibaba Cloud ECS semantics) as a gRPC service.
//!
//! One core, thin edges: the gRPC edge (`grpc`) converts each call into domain values and calls
//! one use case of `service`, which runs the pure rules (`engine`) inside a transaction of the
//! `store`. `docs/architecture.md` has the map.

mod admission;
pub mod answer;
pub mod app;
pub mod backend;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod ecs;
pub mod engine;
mod grpc;
pub mod pb;
pub mod service;
pub mod simulation;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod worker;

pub use app::App;
pub use config::Config;
