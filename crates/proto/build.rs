//! Compiles `proto/` with protox, a pure-Rust protobuf compiler, so that a fresh
//! machine builds with cargo alone (no protoc).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "imagestore/v1/images.proto",
        "imagestore/v1/aliases.proto",
        "imagestore/v1/operations.proto",
        "imagestore/v1/uploads.proto",
        "imagestore/v1/blobs.proto",
        "imagestore/v1/imports.proto",
        "imagestore/v1/trust.proto",
        "imagestore/internal/v1/registry.proto",
    ];
    // Source info keeps the .proto comments, so reflection clients (grpcurl describe)
    // and the generated rustdoc show the API reference.
    let fds = protox::Compiler::new([&root])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(files)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("imagestore_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
