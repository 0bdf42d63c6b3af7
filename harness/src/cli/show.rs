//! How events look on a terminal: one line per milestone, step and cell on stderr, a progress
//! bar for downloads. The only place that draws.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::core::event::{Event, EventSink};

/// A sink that renders on stderr (or drops everything when `quiet`, e.g. with `--json`).
pub fn terminal(quiet: bool) -> EventSink {
    if quiet {
        return EventSink::none();
    }
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    EventSink::new(move |scope, ev| render(scope, ev, &bars))
}

fn render(scope: Option<&str>, ev: Event, bars: &Mutex<HashMap<String, ProgressBar>>) {
    let who = scope.map(|s| format!("{s}: ")).unwrap_or_default();
    match ev {
        Event::Milestone {
            session,
            boot,
            stage,
            t_s,
            text,
        } => {
            let b = match (session, boot) {
                (1, 0) => String::new(),
                (1, b) => format!(" (boot {})", b + 1),
                (s, b) => format!(" (session {s}, boot {})", b + 1),
            };
            eprintln!("{who}[{t_s:8.3}] {stage:<14}{b} {}", one_line(&text));
        }
        Event::Qmp { name, t_s } => eprintln!("{who}[{t_s:8.3}] qmp event     {name}"),
        Event::StepStarted {
            index,
            step,
            detail,
        } => eprintln!("{who}step {index}: {step} {}", one_line(&detail)),
        Event::StepProgress {
            step,
            elapsed_s,
            last_line,
        } => eprintln!(
            "{who}           {step}: {elapsed_s:.0} s so far; last console line: {}",
            one_line(&last_line)
        ),
        Event::StepFinished {
            index,
            step,
            status,
            duration_s,
            detail,
        } => eprintln!(
            "{who}step {index}: {step} {status} in {duration_s:.1} s {}",
            one_line(&detail)
        ),
        Event::Decided { session, outcome } => eprintln!(
            "{who}session {session}: {} (stage {}) {}",
            outcome.verdict,
            outcome.stage,
            one_line(&outcome.reason)
        ),
        Event::Download { name, bytes, total } => {
            let mut bars = bars.lock().expect("progress bars");
            let bar = bars.entry(name.clone()).or_insert_with(|| {
                let b = ProgressBar::new(total.unwrap_or(0));
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_message(name.clone());
                b
            });
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(bytes);
            if total.is_some_and(|t| bytes >= t) {
                bar.finish_and_clear();
                bars.remove(&name);
            }
        }
        Event::Build {
            what,
            phase,
            elapsed_s,
            done,
        } => {
            let s = elapsed_s as u64;
            let clock = format!("{:>2}:{:02}", s / 60, s % 60);
            if done {
                eprintln!("{who}[{clock}] {what}: {phase} done");
            } else {
                eprintln!("{who}[{clock}] {what}: {phase}");
            }
        }
        Event::Preparing { what } => eprintln!("{who}preparing {what} ..."),
        Event::Prepared {
            what,
            seconds,
            detail,
        } => eprintln!(
            "{who}prepared {what} in {seconds:.1} s  {}",
            one_line(&detail)
        ),
        Event::CellStarted { id, label, resumed } => {
            if resumed {
                eprintln!("resume {id}  {label} (done before with the same inputs)")
            } else {
                eprintln!("start  {id}  {label}")
            }
        }
        Event::CellFinished {
            id,
            label,
            status,
            outcome,
            error,
            flaky,
            duration_s,
            finished,
            total,
        } => {
            let what = match status.as_str() {
                "done" => format!("{} ({})", outcome.verdict, outcome.stage),
                "error" => format!("error: {}", one_line(error.as_deref().unwrap_or_default())),
                other => other.replace('-', " "),
            };
            let flaky = flaky
                .map(|(k, n)| format!(", {k} of {n} crashed"))
                .unwrap_or_default();
            eprintln!("[{finished}/{total}] {id}  {label}  -> {what}{flaky}  {duration_s:.1} s");
        }
        Event::BisectStep {
            step,
            of_about,
            what,
            left,
            elapsed_s,
            eta_s,
        } => {
            let eta = eta_s
                .map(|s| format!(", about {} left", clock(s)))
                .unwrap_or_default();
            eprintln!(
                "bisect step {step} of about {of_about}: {}  ({}; {} elapsed{eta})",
                one_line(&what),
                one_line(&left),
                clock(elapsed_s)
            );
        }
        Event::BisectStepDone {
            step,
            what,
            class,
            outcome,
            detail,
            duration_s,
        } => {
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(", {}", one_line(&detail))
            };
            eprintln!(
                "bisect step {step}: {} -> {class} ({} at {}{detail})  {duration_s:.1} s",
                one_line(&what),
                outcome.verdict,
                outcome.stage
            );
        }
    }
}

/// A duration as `1 h 02 min`, `3 min 05 s` or `42 s`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, _) => format!("{h} h {m:02} min"),
    }
}

/// Guest text on one terminal line: control characters (escape sequences, NUL, CR) shown
/// escaped, never sent to the terminal, and long lines cut.
pub fn one_line(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(200) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Text for a message on the terminal: control characters escaped except line breaks and tabs.
pub fn one_line_keep_newlines(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let keep = !c.is_control() || c == '\n' || c == '\t';
            let v: Vec<char> = if keep {
                vec![c]
            } else {
                c.escape_default().collect()
            };
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(one_line("a\u{1b}[2Jb\0c\r"), "a\\u{1b}[2Jb\\u{0}c\\r");
        assert_eq!(one_line(&"x".repeat(300)).chars().count(), 201);
        assert_eq!(one_line_keep_newlines("a\nb\u{1b}c"), "a\nb\\u{1b}c");
    }
}
