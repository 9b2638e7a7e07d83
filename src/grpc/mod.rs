//! The gRPC edge: one file per service, conversions, identity, throttling, the one error →
//! Status map, and the tower layer every call passes through.
//!
//! Handlers are thin: decode into domain values, call the store (which asks the engine), and
//! map the result back. The layer gives each call a request id, returned in the response body
//! or the error's `RequestInfo` and in `x-request-id` metadata, and carried on its span.

pub mod call;
pub mod codec;
pub mod convert;
pub mod error;
pub mod identity;
pub mod image;
pub mod inventory;
pub mod layer;
pub mod simulation;
pub mod snapshot;
pub mod tag;

pub use call::Gate;
pub use error::ApiError;
pub use image::ImageApi;
pub use inventory::InventoryApi;
pub use layer::RpcLayer;
pub use simulation::SimulationApi;
pub use snapshot::SnapshotApi;
pub use tag::TagApi;

/// Domain of every `ErrorInfo` this service returns.
pub const ERROR_DOMAIN: &str = "snapshotd.ecs";
