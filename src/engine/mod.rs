//! The rules engine: pure functions from plain domain values to a verdict.
//!
//! No tonic, no sqlx, no clock, no I/O: the store reads the state under the disk lock, passes it
//! in together with `now`, and writes only if the engine says yes. Every rule of the seed is a
//! [`RuleError`] variant named after its ECS code, so one grep finds its check, its gRPC mapping
//! (`grpc/error.rs`) and its tests.

mod create;
mod error;
mod idempotence;
mod inventory;
mod lifecycle;
mod tags;
#[cfg(test)]
mod tests;

pub use create::{CreateState, Policy, decide_create, estimated_copy_time};
pub use error::RuleError;
pub use idempotence::{TokenBinding, check_token_binding};
pub use inventory::{
    check_access_key_owner, check_account_exists, check_disk_attachment, check_disk_reassignment,
    check_instance_reassignment,
};
pub use lifecycle::{
    DeletePlan, SnapshotFacts, decide_create_image, decide_delete, decide_delete_image,
    decide_modify,
};
pub use tags::{decide_tag, decide_untag, require_own_resource};
