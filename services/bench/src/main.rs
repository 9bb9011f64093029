//! `imagestore-bench`: starts the real services on loopback and measures the data
//! path and the control plane, each figure beside the limit it is bounded by.
//! Prints a table, or with `--json` one `{"name", "value", "unit"}` per line.

mod cli;
mod control;
mod datapath;
mod fleet;
mod image;
mod limits;
mod procs;
mod scan;

use clap::Parser;

/// Measures imagestore on this machine. Needs the other binaries built beside it:
/// `cargo build --release --bins && target/release/imagestore-bench`.
#[derive(Parser)]
#[command(name = "imagestore-bench", version)]
struct Args {
    /// One JSON object per line per figure.
    #[arg(long)]
    json: bool,
    /// Runs of each throughput figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the upload and download image, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Size of the large memory upload, MiB.
    #[arg(long, default_value_t = 4096)]
    large_mib: u64,
    /// Size of the image a fleet of hosts pulls over HTTPS, MiB.
    #[arg(long, default_value_t = 256)]
    fleet_mib: u64,
    /// Images registered before measuring ListImages and the simplestreams index.
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// Where data goes (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Only the limits and the one-stream upload (for tuning the upload path).
    #[arg(long)]
    upload_only: bool,
    /// Only the blob node's memory under 32 concurrent uploads.
    #[arg(long)]
    memory_only: bool,
    /// Only the machine and the fleet pulls (for tuning the HTTP face).
    #[arg(long)]
    fleet_only: bool,
    /// An empty PostgreSQL database for the `_pg` control-plane figures
    /// (postgres://USER@HOST:PORT/DB); default: a throwaway cluster made with
    /// PostgreSQL 15's initdb (/usr/lib/postgresql/15/bin).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Also import and export the same file with `lxc image` against a running
    /// LXD (its unix socket; LXD_DIR as lxc reads it), alternating with ours.
    #[arg(long)]
    lxd: bool,
}

/// One measured figure.
pub struct Figure {
    pub name: String,
    pub value: serde_json::Value,
    pub unit: &'static str,
}

/// Prints figures as they come, so a long run shows progress.
pub struct Report {
    json: bool,
    /// Appended to every name: "_pg" for the control plane on PostgreSQL.
    suffix: &'static str,
}

impl Report {
    /// The same report, every name with `suffix`.
    pub fn suffixed(&self, suffix: &'static str) -> Self {
        Self {
            json: self.json,
            suffix,
        }
    }

    pub fn put(&self, name: &'static str, value: impl Into<serde_json::Value>, unit: &'static str) {
        let name = format!("{name}{}", self.suffix);
        let f = Figure {
            name,
            value: value.into(),
            unit,
        };
        if self.json {
            println!(
                "{}",
                serde_json::json!({"name": f.name, "value": f.value, "unit": f.unit})
            );
        } else {
            let value = match &f.value {
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(x) if n.is_f64() => format!("{x:.2}"),
                    _ => n.to_string(),
                },
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{:<22} {:>12} {}", f.name, value, f.unit);
        }
    }
}

/// The median of some runs (the middle one; the lower middle for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get((xs.len().max(1) - 1) / 2).copied().unwrap_or(0.0)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let report = Report {
        json: args.json,
        suffix: "",
    };
    match run(&args, &report).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imagestore-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn run(args: &Args, report: &Report) -> BenchResult {
    let tmp = tempfile::Builder::new()
        .prefix("imagestore-bench-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let runs = args.runs.max(1);
    limits::machine(report);
    if args.fleet_only {
        return fleet::measure(report, tmp.path(), args.fleet_mib << 20, runs).await;
    }
    let size = args.size_mib << 20;
    if args.memory_only {
        let mut system = procs::System::start(tmp.path()).await?;
        datapath::concurrent_memory(report, &mut system, size, 0).await?;
        system.stop().await;
        return Ok(());
    }
    let baselines = datapath::Baselines {
        hash_mb_s: limits::hash_mb_s(report, runs),
        transport: limits::transport(report, size, runs).await?,
        disk: datapath::disk_write(report, tmp.path(), size, runs).await?,
    };

    let mut system = procs::System::start(tmp.path()).await?;
    if args.upload_only {
        datapath::upload_figures(report, &system, size, runs, &baselines).await?;
        system.stop().await;
        return Ok(());
    }
    let sizes = datapath::Sizes {
        size,
        large: args.large_mib << 20,
        runs,
        lxd: args.lxd,
    };
    datapath::measure(report, &mut system, &sizes, &baselines).await?;
    scan::measure(report, tmp.path(), size / 4, runs)?;
    control::measure(report, &(&system).into(), args.images).await?;
    system.stop().await;
    // The same figures with the catalog on PostgreSQL (`_pg`), in this run.
    {
        let pg = match &args.postgres {
            Some(url) => procs::Database::Given(url.clone()),
            None => procs::Database::start()?,
        };
        let control = procs::Control::start(&tmp.path().join("pg"), pg.url()).await?;
        control::measure(&report.suffixed("_pg"), &control.target(), args.images).await?;
        control.stop().await;
    }
    fleet::measure(report, tmp.path(), args.fleet_mib << 20, runs).await?;
    control::startup(report, tmp.path(), 5).await?;
    Ok(())
}
