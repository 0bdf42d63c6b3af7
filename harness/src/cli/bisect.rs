//! `bootwatch check` (one case judged good, bad or undetermined, for `git bisect run`) and
//! `bootwatch bisect` (a bisection file run to its first bad build).

use std::io::Write;
use std::process::ExitCode;

use super::boot::{self, BootArgs};
use super::{CliError, CliResult, in_range, show, signal_token};
use crate::engine::limits;
use crate::plan::bisect::search::Class;
use crate::plan::bisect::step::{self, RunEvidence};

/// `bootwatch check`: `bootwatch boot`'s flags, and how many runs make a verdict.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    boot: BootArgs,
    /// Boot up to N times (1 to 100): bad as soon as one run fails, good only when all N runs
    /// are good, otherwise undetermined. For a failure that does not show every time.
    #[arg(long, default_value_t = 1, value_parser = in_range(limits::REPEAT))]
    repeat: u32,
}

/// The exit code of a `check` command line clap refuses: 128 makes `git bisect run` stop
/// (a mistyped flag is the same mistake at every commit, and 2 would count as bad).
pub const CHECK_USAGE_EXIT: u8 = 128;

/// What `bootwatch check --json` prints.
#[derive(serde::Serialize)]
struct CheckReport<'a> {
    /// `good`, `bad` or `skip` (undetermined).
    class: &'a str,
    exit_code: u8,
    repeat: u32,
    /// Why nothing (more) could run, when something could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    runs: &'a [RunEvidence],
}

/// Runs the case `bootwatch boot` would, up to `--repeat` times, and exits 0 (good: the target
/// was reached, or without one the guest powered off), 1 (bad: the guest failed) or 125
/// (undetermined: a timeout, a build or input that could not be had, harness trouble), as
/// `git bisect run` reads them. Everything after the command line is parsed is at worst
/// undetermined: at another commit the same flags may name files that exist.
pub async fn check(args: CheckArgs) -> CliResult {
    let json = args.boot.json();
    let sink = show::terminal(json);
    let cancel = signal_token();
    let req = match boot::prepare(&args.boot, &cancel, &sink).await {
        Ok(r) => r,
        Err(e) => return finish(json, Class::Skip, args.repeat, Some(&e.message), &[]),
    };
    let runs = step::run_step(
        args.repeat,
        &|_| req.clone(),
        &step::judge_by_exit_code,
        None,
        None,
        &cancel,
        &sink,
    )
    .await;
    if runs.interrupted {
        return Err(CliError::undetermined("interrupted"));
    }
    if !json {
        let mut out = std::io::stdout().lock();
        for r in &runs.runs {
            let _ = writeln!(
                out,
                "run {}: {} (stage {}{}) -> {}: {}",
                r.n,
                r.outcome.verdict,
                r.outcome.stage,
                r.outcome
                    .time_to_verdict_s
                    .map(|t| format!(", after {t:.1} s"))
                    .unwrap_or_default(),
                Class::of_exit_code(r.outcome.exit_code).as_str(),
                show::one_line(&r.outcome.reason)
            );
            if let Some(x) = &r.exception {
                let _ = writeln!(out, "  {}", show::one_line(x));
            }
            let _ = writeln!(out, "  results: {}", r.dir);
        }
    }
    finish(
        json,
        runs.class,
        args.repeat,
        runs.error.as_deref(),
        &runs.runs,
    )
}

fn finish(
    json: bool,
    class: Class,
    repeat: u32,
    error: Option<&str>,
    runs: &[RunEvidence],
) -> CliResult {
    let code = class.exit_code();
    if json {
        let r = CheckReport {
            class: class.as_str(),
            exit_code: code,
            repeat,
            error,
            runs,
        };
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        );
    } else {
        if let Some(e) = error {
            eprintln!("bootwatch: {}", show::one_line_keep_newlines(e));
        }
        let what = match class {
            Class::Good => "good",
            Class::Bad => "bad (the guest failed)",
            Class::Skip => "undetermined (git bisect skips it)",
        };
        let runs_note = if repeat > 1 {
            format!(" after {} of up to {repeat} runs", runs.len())
        } else {
            String::new()
        };
        let _ = writeln!(
            std::io::stdout().lock(),
            "check: {what}{runs_note}; exit {code}"
        );
    }
    Ok(ExitCode::from(code))
}
