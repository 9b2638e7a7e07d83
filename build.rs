//! Compiles `proto/` with the pure-Rust `protox` compiler (no system `protoc`), generates the tonic
//! code, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/ecs/snapshot/v1/inventory.proto",
    "proto/ecs/snapshot/v1/snapshot.proto",
    "proto/ecs/snapshot/v1/image.proto",
    "proto/ecs/snapshot/v1/tag.proto",
];

/// Served only with `--simulation-controls`, so reflection lists it only then: its own
/// descriptor set.
const SIMULATION_PROTO: &str = "proto/ecs/snapshot/v1/simulation.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds the migrations, but Cargo sees a new file only through this: without
    // it a build after adding a migration keeps the old list.
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("snapshotd_descriptor.bin"),
        prost::Message::encode_to_vec(&protox::compile(PROTOS, ["proto"])?),
    )?;
    std::fs::write(
        out_dir.join("simulation_descriptor.bin"),
        prost::Message::encode_to_vec(&protox::compile([SIMULATION_PROTO], ["proto"])?),
    )?;
    let every_proto = PROTOS.iter().copied().chain([SIMULATION_PROTO]);
    let descriptors = protox::compile(every_proto, ["proto"])?;
    tonic_prost_build::configure()
        // prost's codec, but an undecodable request is INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::StrictCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
