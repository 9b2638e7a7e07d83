//! Code generated from `proto/` by `build.rs`, and the descriptor set served by reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("ecs.snapshot.v1");

/// Every file of our contract and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/snapshotd_descriptor.bin"));

/// `simulation.proto` and its imports, served by reflection only with `--simulation-controls`.
pub const SIMULATION_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/simulation_descriptor.bin"));
