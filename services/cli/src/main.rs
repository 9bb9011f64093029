//! `imagestore`: the command operators and scripts use.

mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// imagestore: an image store in the model of LXD/Incus images.
#[derive(Parser)]
#[command(name = "imagestore", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system in one process: a control plane on SQLite and a blob
    /// node on a local directory, all services on one address.
    Serve(serve::ServeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
    }
}
