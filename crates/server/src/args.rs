//! The flags every server binary takes.

use std::path::PathBuf;

use serde::Serialize;

/// `--config`, `--listen`, `--data-dir`: flags win over the environment, which wins
/// over the config file, which wins over the defaults.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct CommonArgs {
    /// A TOML configuration file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The address to listen on, HOST:PORT; port 0 picks a free port (the bound
    /// address is logged).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,

    /// Where this process keeps its data.
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}
