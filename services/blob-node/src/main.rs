use std::process::ExitCode;

use clap::Parser;
use imagestore_blob_node::BlobNodeConfig;
use imagestore_server::CommonArgs;
use serde::Serialize;

/// An imagestore blob node: verified streaming upload and ranged download.
#[derive(Parser, Serialize)]
#[command(name = "imagestore-blob", version)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    common: CommonArgs,
    /// The control plane's address, e.g. http://127.0.0.1:7443.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<String>,
    /// Where image bytes live: a directory, or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
    /// The control plane's cluster-credential file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_credential_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    imagestore_server::run_binary(
        "imagestore-blob",
        args.common.config.as_deref(),
        &args,
        |config: BlobNodeConfig| imagestore_blob_node::run(config),
    )
    .await
}
