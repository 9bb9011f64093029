//! Progress bars with bytes, rate and ETA on a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use imagestore_client::{NoProgress, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars on stderr, shown only when it is a terminal and not `--quiet`.
pub fn bars(quiet: bool) -> Arc<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        return Arc::new(NoProgress);
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    Arc::new(Bars {
        bar,
        fresh: AtomicBool::new(false),
    })
}

struct Bars {
    bar: ProgressBar,
    /// No position was given since `start`: the first one is where a resumed
    /// transfer begins, not bytes moved, and must not count in the rate.
    fresh: AtomicBool,
}

/// For a transfer whose size is not known: bytes and rate, no "0 B/0 B".
fn open_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:12} {spinner} {bytes} {binary_bytes_per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn byte_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Progress for Bars {
    fn start(&self, label: &str, total: u64) {
        self.bar.reset();
        if total == 0 {
            self.bar.set_style(open_style());
            self.bar.unset_length();
        } else {
            self.bar.set_style(byte_style());
            self.bar.set_length(total);
        }
        self.bar.set_message(label.to_owned());
        self.bar.disable_steady_tick();
        self.fresh.store(true, Ordering::Relaxed);
    }

    fn position(&self, done: u64) {
        self.bar.set_position(done);
        if self.fresh.swap(false, Ordering::Relaxed) {
            // A resume starts part way: the rate counts from here. The tick
            // makes the estimator record this position now (set_position may
            // skip it), so that the reset keeps it as the base.
            self.bar.tick();
            self.bar.reset_eta();
            self.bar.reset_elapsed();
        }
    }

    fn status(&self, message: &str) {
        self.bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        self.bar.set_message(message.to_owned());
        self.bar.enable_steady_tick(Duration::from_millis(120));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
