//! Compiles `proto/` with the pure-Rust `protox` compiler (no system `protoc`), generates the tonic
//! code, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/ecs/snapshot/v1/inventory.proto",
    "proto/ecs/snapshot/v1/snapshot.proto",
    "proto/ecs/snapshot/v1/image.proto",
    "proto/ecs/snapshot/v1/tag.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("snapshotd_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // prost's codec, but an undecodable request is INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::StrictCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
