//! What every server binary's `main` does: load the configuration, set up
//! telemetry, run, and turn the outcome into an exit code.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where a binary's configuration says how to log.
pub trait HasLogConfig {
    fn log_config(&self) -> &imagestore_telemetry::LogConfig;
}

/// Loads `C` from `file`, the environment and `flags`, installs logging, runs
/// `run` and maps the result: 0 on a clean stop, 1 on a failure, 2 on a bad
/// configuration.
pub async fn run_binary<C, F, Fut, E>(
    name: &'static str,
    file: Option<&Path>,
    flags: &impl Serialize,
    run: F,
) -> ExitCode
where
    C: DeserializeOwned + Serialize + Default + HasLogConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    crate::tune_malloc();
    let config: C = match crate::load_config(file, flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = imagestore_telemetry::init(name, config.log_config());
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} stopped");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
