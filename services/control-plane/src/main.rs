use std::process::ExitCode;

use clap::Parser;
use imagestore_control_plane::ControlPlaneConfig;
use imagestore_server::CommonArgs;
use serde::Serialize;

/// The imagestore control plane: images, aliases, uploads, operations, blob nodes.
#[derive(Parser, Serialize)]
#[command(name = "imagestore-control", version)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    common: CommonArgs,

    /// The catalog database: "sqlite" (a file in the data directory, the
    /// default) or postgres://USER:PASSWORD@HOST:PORT/DATABASE, which any number
    /// of control-plane replicas can share.
    #[arg(long, value_name = "sqlite|postgres://...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    imagestore_server::run_binary(
        "imagestore-control",
        args.common.config.as_deref(),
        &args,
        |config: ControlPlaneConfig| imagestore_control_plane::run(config),
    )
    .await
}
