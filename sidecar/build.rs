//! Compiles the gRPC API in `proto/` into Rust with `protox`, a protobuf compiler written
//! in Rust, so building needs no system `protoc`. Also writes the encoded file descriptor
//! set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../proto";
const PROTO_FILES: [&str; 5] = [
    "agent_sidecar/v1/common.proto",
    "agent_sidecar/v1/guardrails.proto",
    "agent_sidecar/v1/conversations.proto",
    "agent_sidecar/v1/escalations.proto",
    "agent_sidecar/v1/events.proto",
];
/// File in `OUT_DIR` that `grpc::proto::FILE_DESCRIPTOR_SET` includes.
const DESCRIPTOR_FILE: &str = "agent_sidecar_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join(DESCRIPTOR_FILE), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
