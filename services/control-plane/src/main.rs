use std::process::ExitCode;

use clap::Parser;
use imagestore_control_plane::ControlPlaneConfig;
use imagestore_server::CommonArgs;

/// The imagestore control plane: images, aliases, uploads, operations, blob nodes.
#[derive(Parser)]
#[command(name = "imagestore-control", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    imagestore_server::run_binary(
        "imagestore-control",
        args.common.config.as_deref(),
        &args.common,
        |config: ControlPlaneConfig| imagestore_control_plane::run(config),
    )
    .await
}
