//! Progress on stderr (indicatif) for the long steps: flist pack, verify (every block
//! fetched from the stores) and unpack, each a byte bar fed by zos-flist's progress
//! callback.
//!
//! Drawn only when stderr is a terminal; piped or redirected, a [`Bar`] is hidden and
//! the command prints exactly what it printed before (its result lines).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar over bytes (`done / total`, rate, time left), fed by [`Bar::update`].
    pub fn bytes(label: &str) -> Bar {
        // No length until the first update: a bar of 0 bytes would draw as done.
        let bar = ProgressBar::with_draw_target(None, target());
        let style = ProgressStyle::with_template(
            "{msg} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} (ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_string());
        Bar(bar)
    }

    /// Shows `total` before the first update (a slow store's first block may take a
    /// while); a total of 0 stays unset, since a bar of 0 bytes would draw as done.
    pub fn start(&self, total: u64) {
        if total > 0 {
            self.update(0, total);
        }
    }

    /// `done` of `total` bytes: the shape of zos-flist's progress callbacks.
    pub fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }

    /// Removes the bar, so the result lines that follow stand alone.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // An error return leaves no half-drawn bar above the error message.
        if !self.0.is_finished() {
            self.0.finish_and_clear();
        }
    }
}

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
