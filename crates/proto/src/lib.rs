//! The imagestore contract, generated from `proto/` at build time.

/// The public API: images, aliases, uploads, blobs, imports, operations, trust.
pub mod v1 {
    tonic::include_proto!("imagestore.v1");
}

/// Between the control plane and blob nodes.
pub mod internal {
    pub mod v1 {
        tonic::include_proto!("imagestore.internal.v1");
    }
}

/// The encoded file descriptor set of every imagestore service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("imagestore_descriptor");
