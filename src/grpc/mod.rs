//! The gRPC edge: one file per service, conversions, identity, and the one error → Status map.
//!
//! Handlers are thin: decode into domain values, call the store (which asks the engine), and
//! map the result back. Each call gets a request id, returned in the response body or in the
//! error's `RequestInfo`, and carried on the call's tracing span.

pub mod codec;
pub mod convert;
pub mod error;
pub mod identity;
pub mod image;
pub mod inventory;
pub mod snapshot;

pub use error::ApiError;
pub use image::ImageApi;
pub use inventory::InventoryApi;
pub use snapshot::SnapshotApi;

/// Domain of every `ErrorInfo` this service returns.
pub const ERROR_DOMAIN: &str = "snapshotd.ecs";
