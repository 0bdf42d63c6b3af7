//! Showing what resolving an image reports: a progress bar for a download (hidden when stderr
//! is not a terminal), a line per phase of an image build.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use crate::inputs::images::ImageProgress;
use crate::inputs::images::debian_build::BuildProgress;

const BAR_TEMPLATE: &str =
    "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A sender for [`crate::inputs::images::resolve`] (none when `quiet`) and the task that shows
/// what comes through it; the task ends when the sender is dropped (when `resolve` returns).
pub fn image_progress(
    quiet: bool,
) -> (
    Option<mpsc::UnboundedSender<ImageProgress>>,
    tokio::task::JoinHandle<()>,
) {
    if quiet {
        return (None, tokio::spawn(async {}));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut bar: Option<ProgressBar> = None;
        while let Some(p) = rx.recv().await {
            match p {
                ImageProgress::Download(d) => {
                    let bar = bar.get_or_insert_with(|| download_bar(&d.name));
                    if let Some(total) = d.total {
                        bar.set_length(total);
                    }
                    bar.set_position(d.bytes);
                }
                ImageProgress::Build(b) => show_build(&b),
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    (Some(tx), task)
}

fn download_bar(name: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(BAR_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(name.to_owned());
    bar
}

fn show_build(b: &BuildProgress) {
    match b {
        BuildProgress::Started { image, log } => {
            eprintln!("building image {image} (minutes; log: {})", log.display())
        }
        BuildProgress::PhaseStarted {
            image,
            phase,
            elapsed,
        } => eprintln!("[{}] {image}: {phase}", clock(*elapsed)),
        BuildProgress::PhaseDone { .. } => {}
    }
}

/// `m:ss` (or `h:mm:ss`).
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:>2}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_template_is_valid() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }

    #[test]
    fn clock_reads_like_a_stopwatch() {
        assert_eq!(clock(Duration::from_secs(5)), " 0:05");
        assert_eq!(clock(Duration::from_secs(754)), "12:34");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
