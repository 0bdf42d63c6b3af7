//! `bootwatch check` (one case judged good, bad or undetermined, for `git bisect run`) and
//! `bootwatch bisect` (a bisection file run to its first bad build).

use std::io::Write;
use std::path::PathBuf;
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
    /// Looking for the change that fixed a failure: exit 0 when the guest failed and 1 when it
    /// was good (undetermined stays 125), for `git bisect start --term-new=fixed
    /// --term-old=broken`.
    #[arg(long)]
    find_fix: bool,
}

/// The exit code of a `check` command line clap refuses: 128 makes `git bisect run` stop
/// (a mistyped flag is the same mistake at every commit, and 2 would count as bad).
pub const CHECK_USAGE_EXIT: u8 = 128;

/// What `bootwatch check --json` prints.
#[derive(serde::Serialize)]
struct CheckReport<'a> {
    /// `good`, `bad` or `skip` (undetermined): how the guest did, whatever `--find-fix` makes
    /// of it in `exit_code`.
    class: &'a str,
    find_fix: bool,
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
        Err(e) => {
            return finish(
                json,
                Class::Skip,
                args.find_fix,
                args.repeat,
                Some(&e.message),
                &[],
            );
        }
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
        args.find_fix,
        args.repeat,
        runs.error.as_deref(),
        &runs.runs,
    )
}

fn finish(
    json: bool,
    class: Class,
    find_fix: bool,
    repeat: u32,
    error: Option<&str>,
    runs: &[RunEvidence],
) -> CliResult {
    let code = match (find_fix, class) {
        (true, Class::Good) => Class::Bad.exit_code(),
        (true, Class::Bad) => Class::Good.exit_code(),
        _ => class.exit_code(),
    };
    if json {
        let r = CheckReport {
            class: class.as_str(),
            find_fix,
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
        let what = match (find_fix, class) {
            (true, Class::Good) => "good (with --find-fix: the new, fixed side)",
            (true, Class::Bad) => "bad (the guest failed; with --find-fix: the old, broken side)",
            _ => what,
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

/// `bootwatch bisect FILE`.
#[derive(clap::Args, Debug)]
pub struct BisectArgs {
    /// The bisect file (scenarios/bisect/*.toml): the builds (or the update) bisected and the
    /// machine every step boots.
    pub file: PathBuf,
    /// Boot each step up to N times (1 to 100): a step is bad if any run fails (default: the
    /// file's `repeat`, else 1).
    #[arg(long, value_parser = in_range(limits::REPEAT))]
    pub repeat: Option<u32>,
    /// The bisection's directory: bisect.json, bisect.md, steps/<n>-<build>/run-<k>/ (must not
    /// exist or be empty; default results/bisect-<name>-<UTC time>).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Check the file and print what would be bisected without booting anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print bisect.json on stdout at the end (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Runs a bisection. Exit 0 when the boundary (or the culprit set) was found, 2 when the file
/// is wrong or the two ends do not differ, 125 when undetermined steps or ends leave no answer,
/// it was interrupted, or a fixed input could not be had.
pub async fn bisect(a: BisectArgs) -> CliResult {
    use crate::plan::bisect::{self as b, spec::BisectSpec};
    let mut spec = BisectSpec::load(&a.file).map_err(CliError::usage)?;
    if let Some(r) = a.repeat {
        spec.machine.repeat = r;
    }
    b::step::check_image(&spec.machine).map_err(CliError::usage)?;
    let results = a.results.clone().unwrap_or_else(|| {
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        PathBuf::from("results").join(format!("bisect-{}-{now}", b::step::dir_label(&spec.name)))
    });
    let builds = spec.builds();
    let axis = spec.axis();
    if a.dry_run {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "bisect {} over {} ({}), repeat {}, image {}",
            spec.name,
            axis.as_str(),
            match axis {
                b::spec::Axis::Packages => "the update's packages".to_string(),
                _ => format!(
                    "{} builds, at most about {} boots",
                    builds.len(),
                    b::search::Bisection::new(builds.len()).steps_left()
                ),
            },
            spec.machine.repeat,
            spec.machine.image
        );
        for (i, x) in builds.iter().enumerate() {
            let _ = writeln!(out, "{i:>3} {x}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    b::check_results_dir(&results).map_err(CliError::usage)?;
    let cache_root = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let opts = b::BisectOptions {
        results: results.clone(),
        mirror: a.mirror.clone(),
        cache_root,
    };
    eprintln!(
        "bisect {}: {} over {}; results in {}",
        spec.name,
        if axis == b::spec::Axis::Packages {
            "delta debugging".to_string()
        } else {
            format!("{} builds", builds.len())
        },
        axis.as_str(),
        results.display()
    );
    let sink = show::terminal(false);
    let cancel = signal_token();
    let rec = b::run(&spec, &opts, &cancel, &sink).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rec).unwrap_or_default()
        );
    } else {
        let _ = writeln!(out, "{}: {}", rec.status.as_str(), rec.message);
        if let Some(res) = &rec.result {
            for (what, p) in [
                ("last good", &res.last_good),
                ("first bad", &res.first_bad),
                ("last bad", &res.last_bad),
                ("first good", &res.first_good),
            ] {
                if let Some(p) = p {
                    let _ = writeln!(
                        out,
                        "  {what}: {} (step {}: {} at {}{})  {}",
                        p.build,
                        p.step,
                        p.run.outcome.verdict,
                        p.run.outcome.stage,
                        p.run
                            .exception
                            .as_deref()
                            .map(|x| format!(": {}", show::one_line(x)))
                            .unwrap_or_default(),
                        results.join(&p.run.dir).display()
                    );
                }
            }
            if !res.culprits.is_empty() {
                let _ = writeln!(out, "  culprits: {}", res.culprits.join(", "));
            }
        }
        let _ = writeln!(out, "bisect.json, bisect.md: {}", results.display());
    }
    Ok(ExitCode::from(rec.status.exit_code()))
}
