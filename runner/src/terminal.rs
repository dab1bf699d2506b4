//! Progress bars on the terminal, and a log writer that does not tear them.
//!
//! One process-wide [`MultiProgress`] is shared by the executor (one bar per running task) and by
//! `main`'s tracing subscriber, whose lines are printed with the bars suspended. Nothing here
//! decides *whether* bars are shown: that is [`crate::RunnerConfig::show_progress_bars`].

use std::io::{self, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The process-wide bar set (created on first use; drawing to stderr).
pub fn multi_progress() -> MultiProgress {
    BARS.get_or_init(MultiProgress::new).clone()
}

/// A new bar for one task, 0–100.
pub fn task_bar(multi: &MultiProgress, label: String) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(100));
    // The template is a constant; if indicatif ever rejected it, fall back to its default style
    // rather than fail a task over cosmetics.
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>24} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label);
    bar
}

/// A `MakeWriter` target for tracing that prints above the bars instead of through them.
#[derive(Clone)]
pub struct LogWriter {
    multi: MultiProgress,
}

impl LogWriter {
    pub fn new() -> Self {
        Self {
            multi: multi_progress(),
        }
    }
}

impl Default for LogWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.multi.suspend(|| io::stderr().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
