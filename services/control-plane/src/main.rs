use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imagestore_control_plane::{CATALOG_FILE, ControlPlaneConfig};
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

    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Copies this control plane's SQLite catalog (in --data-dir) into an empty
    /// PostgreSQL database: images, aliases, upload sessions, operations, trust
    /// and the cluster credential. Stop the control plane first; start it again
    /// with --database set to the same URL. A database that holds anything is
    /// refused.
    CopyCatalog {
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE
        #[arg(long, value_name = "postgres://...")]
        to: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::CopyCatalog { to }) = &args.command {
        return copy_catalog(&args, to).await;
    }
    imagestore_server::run_binary(
        "imagestore-control",
        args.common.config.as_deref(),
        &args,
        |config: ControlPlaneConfig| imagestore_control_plane::run(config),
    )
    .await
}

async fn copy_catalog(args: &Args, to: &str) -> ExitCode {
    let config: ControlPlaneConfig =
        match imagestore_server::load_config(args.common.config.as_deref(), args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("imagestore-control: {e}");
                return ExitCode::from(2);
            }
        };
    let source = config.data_dir.join(CATALOG_FILE);
    match imagestore_catalog::engine::copy_sqlite_to_postgres(&source, to).await {
        Ok(counts) => {
            for (table, rows) in counts {
                println!("{table}: {rows} rows");
            }
            println!(
                "copied {} into {}; start the control plane with --database set to it",
                source.display(),
                imagestore_catalog::engine::postgres::redact(to)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imagestore-control: cannot copy the catalog: {e}");
            ExitCode::from(1)
        }
    }
}
