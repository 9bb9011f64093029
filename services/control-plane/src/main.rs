use std::process::ExitCode;

use clap::Parser;
use imagestore_control_plane::ControlPlaneConfig;
use imagestore_server::{CommonArgs, load_config};

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
    let config: ControlPlaneConfig = match load_config(args.common.config.as_deref(), &args.common)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imagestore-control: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = imagestore_telemetry::init("imagestore-control", &config.log);
    match imagestore_control_plane::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "control plane stopped");
            eprintln!("imagestore-control: {e}");
            ExitCode::FAILURE
        }
    }
}
