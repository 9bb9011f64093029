//! `imagestore`: the command operators and scripts use, in the spirit of
//! `lxc image`, plus `imagestore serve` to run the whole system in one process.

mod alias;
mod browse;
mod config;
mod ctx;
mod failure;
mod import;
mod list;
mod manage;
mod operation;
mod output;
mod pack;
mod progress;
mod remote;
mod serve;
mod stores;
mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::ctx::Ctx;
use crate::failure::CliResult;
use tracing::Instrument;

const EXIT_CODES: &str = "\
Images are named by alias, fingerprint or unique fingerprint prefix, with an
optional `remote:` prefix, as lxc names them. IMAGESTORE_REMOTE (a remote name or
a URL such as http://127.0.0.1:7443) picks the default remote; IMAGESTORE_TOKEN
is the bearer token to present to the default remote (others, and the default
without it, present their own, from `remote add --token`);
IMAGESTORE_CONFIG_DIR moves the config directory.

Exit codes: 0 success, 1 failed, 2 bad usage or input, 3 not found,
4 already exists, 5 server unreachable (run again to resume), 6 not trusted,
7 bytes did not match their fingerprint, 130 interrupted.";

/// imagestore: an image store in the model of LXD/Incus images.
#[derive(Parser)]
#[command(name = "imagestore", version, after_help = EXIT_CODES)]
struct Cli {
    /// No progress bars or messages; only results and errors.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system in one process: a control plane on SQLite and a blob
    /// node on a local directory, all services on one address.
    Serve(serve::ServeArgs),
    /// Print shell completions (`imagestore completion bash >
    /// /etc/bash_completion.d/imagestore`).
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (imagestore.1 and one per command) into a directory.
    Manpages {
        /// Where to write them.
        dir: std::path::PathBuf,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that talk to a server.
#[derive(Subcommand)]
enum ClientCommand {
    /// Import an image from files, a directory or a URL.
    Import(import::ImportArgs),
    /// Copy an image from another server.
    Copy(import::CopyArgs),
    /// Export an image's files.
    Export(manage::ExportArgs),
    /// List images.
    #[command(alias = "ls")]
    List(list::ListArgs),
    /// Show an image.
    Info(list::InfoArgs),
    /// Manage aliases.
    #[command(subcommand)]
    Alias(alias::AliasCommand),
    /// Edit an image's properties, public flag and auto-update (YAML in $EDITOR,
    /// or on stdin).
    Edit {
        /// `[remote:]image`.
        image: String,
    },
    /// Set an image property.
    SetProperty {
        /// `[remote:]image`.
        image: String,
        /// The property's name.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Remove an image property.
    UnsetProperty {
        /// `[remote:]image`.
        image: String,
        /// The property's name.
        key: String,
    },
    /// Print an image property.
    GetProperty {
        /// `[remote:]image`.
        image: String,
        /// The property's name.
        key: String,
    },
    /// Delete images.
    #[command(alias = "rm")]
    Delete {
        /// `[remote:]image`s.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Refresh images from their source.
    Refresh {
        /// `[remote:]image`s.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Read images' stored bytes again on a blob node and compare every part with
    /// its SHA-256; a damaged image is marked and served no more (exit 7).
    Verify {
        /// `[remote:]image`s.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Server-side work (imports, copies, refreshes, verifications): list, show,
    /// follow or cancel it.
    #[command(subcommand)]
    Operation(operation::OperationCommand),
    /// The server's stores: list them, copy an image to more of them, remove
    /// it from one.
    #[command(subcommand)]
    Store(stores::StoreCommand),
    /// Manage the remote servers this command talks to.
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Manage which clients a server trusts (certificates and tokens).
    #[command(subcommand)]
    Trust(trust::TrustCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    imagestore_server::tune_malloc();
    let cli = Cli::parse();
    let quiet = cli.quiet;
    let result = match cli.command {
        Command::Serve(args) => return serve::run(args).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "imagestore",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Manpages { dir } => manpages(&dir),
        Command::Client(other) => {
            // One trace per command, when the user exports traces.
            let _telemetry = imagestore_telemetry::init_client("imagestore");
            let span = tracing::info_span!("command", otel.name = %command_name());
            imagestore_telemetry::propagation::set_parent_from_env(&span);
            match Ctx::load(quiet) {
                Ok(ctx) => dispatch(&ctx, other).instrument(span).await,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

/// "imagestore import", "imagestore alias create": the command as typed, up
/// to its first argument that is not a subcommand.
fn command_name() -> String {
    use clap::CommandFactory;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut name = vec!["imagestore".to_owned()];
    let mut command = Cli::command();
    for arg in args.iter().filter(|a| !a.starts_with('-')) {
        let Some(sub) = command.find_subcommand(arg).cloned() else {
            break;
        };
        name.push(sub.get_name().to_owned());
        command = sub;
    }
    name.join(" ")
}

/// imagestore.1, and imagestore-COMMAND.1 for every command and subcommand.
fn manpages(dir: &std::path::Path) -> CliResult {
    use clap::CommandFactory;
    fn write(dir: &std::path::Path, cmd: clap::Command, name: &str) -> CliResult {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone().display_name(name.to_owned()))
            .render(&mut page)
            .and_then(|()| std::fs::write(&path, page))
            .map_err(|e| {
                crate::failure::Failure::new(
                    crate::failure::exit::FAILED,
                    format!("{}: {e}", path.display()),
                )
            })?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write(dir, sub.clone(), &format!("{name}-{}", sub.get_name()))?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        crate::failure::Failure::new(
            crate::failure::exit::FAILED,
            format!("{}: {e}", dir.display()),
        )
    })?;
    let mut cli = Cli::command();
    cli.build();
    write(dir, cli, "imagestore")
}

async fn dispatch(ctx: &Ctx, command: ClientCommand) -> CliResult {
    use ClientCommand as Command;
    match command {
        Command::Import(a) => import::import(ctx, a).await,
        Command::Copy(a) => import::copy(ctx, a).await,
        Command::Export(a) => manage::export(ctx, a).await,
        Command::List(a) => list::list(ctx, a).await,
        Command::Info(a) => list::info(ctx, a).await,
        Command::Alias(a) => alias::run(ctx, a).await,
        Command::Edit { image } => manage::edit(ctx, &image).await,
        Command::SetProperty { image, key, value } => {
            manage::set_property(ctx, &image, &key, &value).await
        }
        Command::UnsetProperty { image, key } => manage::unset_property(ctx, &image, &key).await,
        Command::GetProperty { image, key } => manage::get_property(ctx, &image, &key).await,
        Command::Delete { images } => manage::delete(ctx, images).await,
        Command::Refresh { images } => import::refresh(ctx, images).await,
        Command::Verify { images } => manage::verify(ctx, images).await,
        Command::Store(cmd) => stores::run(ctx, cmd).await,
        Command::Operation(cmd) => operation::run(ctx, cmd).await,
        Command::Remote(cmd) => remote::run(ctx.config.clone(), cmd).await,
        Command::Trust(cmd) => trust::run(ctx, cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command and every argument says what it is (in --help, the man
    /// pages and the completions).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_about().is_none() && path != "imagestore" {
                missing.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "imagestore", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }
}
