//! Progress of the long commands (export, import, verify, replay-parked) on standard error, drawn only when
//! standard error is a terminal: a pipe, a file or a CI log sees nothing, and standard output
//! (the command's output, JSON or not) is never touched. `TIDINGS_PROGRESS=0` turns it off on a
//! terminal too.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar (or spinner) on standard error, or nothing when standard error is not a terminal.
pub(crate) struct Progress(ProgressBar);

/// How often a spinner redraws itself (a command with no measure of its progress).
const TICK: Duration = Duration::from_millis(120);

impl Progress {
    fn target() -> ProgressDrawTarget {
        if std::env::var_os("TIDINGS_PROGRESS").is_some_and(|v| v == "0") {
            return ProgressDrawTarget::hidden();
        }
        // Hidden by indicatif itself when standard error is not a terminal.
        ProgressDrawTarget::stderr()
    }

    fn new(bar: ProgressBar, template: &str, message: &str) -> Progress {
        let style = ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(message.to_owned());
        // Drawn at once (a short command shows it too), then at most 20 times a second.
        bar.tick();
        Progress(bar)
    }

    /// Events at positions `first..=last`: `set` takes the position reached.
    pub(crate) fn positions(message: &str, first: u64, last: u64) -> Progress {
        let len = (last + 1).saturating_sub(first);
        let bar = ProgressBar::with_draw_target(Some(len), Self::target());
        Self::new(
            bar,
            "{msg} [{bar:30}] {pos}/{len} events ({per_sec}, {eta} left)",
            message,
        )
    }

    /// Bytes of an input of `total` bytes, or of unknown size (standard input): `set` takes
    /// the bytes read so far.
    pub(crate) fn bytes(message: &str, total: Option<u64>) -> Progress {
        let bar = ProgressBar::with_draw_target(total, Self::target());
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)"
        } else {
            "{spinner} {msg} {bytes} ({bytes_per_sec})"
        };
        Self::new(bar, template, message)
    }

    /// `total` steps (streams replayed, say): `set` takes the steps done.
    pub(crate) fn count(message: &str, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), Self::target());
        Self::new(bar, "{msg} [{bar:30}] {pos}/{len} ({elapsed})", message)
    }

    /// Runs `f` (which prints to the terminal) with the bar lifted, then draws it again.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.suspend(f)
    }

    /// A command with no measure of its progress: a spinner and the time so far.
    pub(crate) fn spinner(message: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, Self::target());
        let p = Self::new(bar, "{spinner} {msg} ({elapsed})", message);
        p.0.enable_steady_tick(TICK);
        p
    }

    /// Moves the bar to `n` (a position relative to the first, or bytes).
    pub(crate) fn set(&self, n: u64) {
        self.0.set_position(n);
    }

    /// `reader`, moving the bar by the bytes read through it.
    pub(crate) fn wrap<R: std::io::BufRead>(&self, reader: R) -> impl std::io::BufRead {
        self.0.wrap_read(reader)
    }

    /// Sets the text beside the bar.
    pub(crate) fn message(&self, message: String) {
        self.0.set_message(message);
    }
}

impl Drop for Progress {
    /// Erased when the command ends, however it ends: what the command prints stays alone.
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_drawn_when_standard_error_is_not_a_terminal() {
        // Tests run with standard error captured (a pipe): the bar is hidden but counts.
        let p = Progress::positions("exporting", 5, 14);
        assert!(p.0.is_hidden());
        assert_eq!(p.0.length(), Some(10));
        p.set(4);
        assert_eq!(p.0.position(), 4);
        let unknown = Progress::bytes("importing", None);
        assert_eq!(unknown.0.length(), None);
        // An empty range is an empty bar, not an underflow.
        assert_eq!(Progress::positions("x", 9, 3).0.length(), Some(0));
    }
}
