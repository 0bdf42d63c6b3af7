//! `bootwatch matrix` and `bootwatch report merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{CliError, CliResult, in_range, show, signal_token};
use crate::core::verdict::exit_code;
use crate::engine::limits;
use crate::plan::matrix::execute::{self, MatrixOptions};
use crate::plan::matrix::model::MatrixReport;
use crate::plan::matrix::plan::{self, Shard};
use crate::plan::matrix::spec::MatrixSpec;

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// The matrix file (scenarios/matrix/*.toml).
    pub file: PathBuf,
    /// Run only the I-th of N deterministic shards (1-based). Default: GitLab's
    /// CI_NODE_INDEX/CI_NODE_TOTAL when both are set, else the whole matrix.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// VMs at once, 1 to 256 (default: one per core, bounded by memory).
    #[arg(long, value_parser = in_range(limits::CONCURRENCY))]
    pub concurrency: Option<usize>,
    /// Run each cell N times (1 to 100) and report flaky cells as "k of N crashed" (default:
    /// the file's `repeat`, else 1).
    #[arg(long, value_parser = in_range(limits::REPEAT))]
    pub repeat: Option<u32>,
    /// Results directory (plan.json, execution.json, cells/, matrix.{json,xml,md,html}).
    /// Re-running into the same directory resumes: finished cells with the same inputs are kept.
    #[arg(long, default_value = "results/matrix")]
    pub results: PathBuf,
    /// A previous matrix (results directory or matrix.json): list regressions and fixes.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Check the file and print the planned cells without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print matrix.json on stdout at the end instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Merge shard results directories into one report (the same files an unsharded run
    /// writes: matrix.json, matrix.xml, matrix.md, matrix.html).
    Merge {
        /// Shard results directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The merged results directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// A previous matrix to compare with.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Several runs of one matrix, oldest first (results directories, or their matrix.json
    /// files): each cell's verdicts over time, the first run where it changed and the inputs
    /// that changed with it (QEMU, firmware, image package versions, vars). Writes
    /// history.json, history.md and history.html.
    History {
        /// The runs, oldest first.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// Where to write the history's files.
        #[arg(long, default_value = "results/history")]
        out: PathBuf,
        /// Exit 1 when a cell regressed at the last run (was reached in its previous run, now
        /// fails): for a nightly pipeline that keeps the previous night's results.
        #[arg(long)]
        fail_on_regression: bool,
        /// Print history.json on stdout instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

pub async fn matrix(a: MatrixArgs) -> CliResult {
    // Everything that can be wrong with the input is found here, before any VM starts.
    let spec = MatrixSpec::load(&a.file).map_err(CliError::usage)?;
    let shard = match &a.shard {
        Some(s) => Some(
            s.parse::<Shard>()
                .map_err(|e| CliError::usage(format!("--shard: {e}")))?,
        ),
        None => match Shard::from_env(|k| std::env::var(k).ok()) {
            None => None,
            Some(s) => Some(s.map_err(CliError::usage)?),
        },
    };
    let repeat = a.repeat.unwrap_or(spec.repeat);
    let plan = plan::expand(&spec, repeat).map_err(CliError::usage)?;
    execute::check_images(&spec).map_err(CliError::usage)?;
    if !a.dry_run {
        execute::check_results_dir(&a.results, &plan).map_err(CliError::usage)?;
    }
    let concurrency = a
        .concurrency
        .unwrap_or_else(|| execute::default_concurrency(spec.memory_mib));
    let mine: Vec<_> = plan
        .cells
        .iter()
        .filter(|c| shard.is_none_or(|s| s.owns(c.index)))
        .collect();
    if a.dry_run {
        use std::io::Write;
        // A closed stdout (`| head`) ends the listing quietly.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "matrix {} (plan {}): {} cells, {} in this shard, repeat {repeat}, target {}",
            plan.name,
            plan.plan_id,
            plan.cells.len(),
            mine.len(),
            plan.target
        );
        for c in mine {
            if writeln!(out, "{:>3} {}  {}", c.index, c.id, c.axes.label()).is_err() {
                break;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cache_root = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let opts = MatrixOptions {
        results: a.results.clone(),
        shard,
        concurrency,
        mirror: a.mirror.clone(),
        cache_root,
        baseline: a.baseline.clone(),
    };
    eprintln!(
        "matrix {}: {} of {} cells{}, {concurrency} at a time, results in {}",
        plan.name,
        mine.len(),
        plan.cells.len(),
        shard.map(|s| format!(" (shard {s})")).unwrap_or_default(),
        a.results.display()
    );
    let cancel = signal_token();
    let sink = show::terminal(false);
    let report = execute::run_matrix(&spec, &plan, &opts, &cancel, &sink).await?;
    finish(&report, &a.results, a.json);
    if cancel.is_cancelled() {
        eprintln!("bootwatch: interrupted; the partial report is written");
        Ok(ExitCode::from(exit_code::UNDETERMINED))
    } else if report.summary.errors > 0 {
        // A guest that crashed is a result; a cell bootwatch could not run is not.
        eprintln!(
            "bootwatch: {} cell(s) could not be run (status error in the report)",
            report.summary.errors
        );
        Ok(ExitCode::from(exit_code::UNDETERMINED))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

pub fn report(cmd: ReportCommand) -> CliResult {
    match cmd {
        ReportCommand::Merge {
            dirs,
            out,
            baseline,
        } => {
            let mut r = crate::report::merge(&dirs, &out)?;
            if let Some(b) = &baseline {
                crate::report::compare(&mut r, b)?;
                crate::report::write_all(&out, &r)?;
            }
            finish(&r, &out, false);
            Ok(ExitCode::SUCCESS)
        }
        ReportCommand::History {
            runs,
            out,
            fail_on_regression,
            json,
        } => {
            use crate::report::history::{self, ChangeKind};
            let h = history::history(&runs).map_err(CliError::usage)?;
            history::write(&out, &h)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
            } else {
                outln!(
                    "{}: {} runs, {} cells, {} changed, {} regressed at the last run",
                    h.name,
                    h.runs.len(),
                    h.summary.cells,
                    h.summary.changed,
                    h.summary.last_run_regressions
                );
                for c in h.cells.iter().filter(|c| c.changed) {
                    for ch in &c.changes {
                        let inputs: Vec<String> =
                            ch.inputs.iter().map(|i| i.input.clone()).collect();
                        outln!(
                            "  run {}: {} {} -> {} ({}){}",
                            ch.run,
                            c.axes.label(),
                            ch.was,
                            ch.now,
                            ch.kind.as_str(),
                            if inputs.is_empty() {
                                String::new()
                            } else {
                                format!(", changed: {}", inputs.join(", "))
                            }
                        );
                    }
                }
                outln!("reports: {}/history.{{json,md,html}}", out.display());
            }
            let last = h.runs.len();
            let regressed: Vec<&str> = h
                .cells
                .iter()
                .filter(|c| {
                    c.changes
                        .iter()
                        .any(|ch| ch.run == last && ch.kind == ChangeKind::Regression)
                })
                .map(|c| c.id.as_str())
                .collect();
            if fail_on_regression && !regressed.is_empty() {
                eprintln!(
                    "bootwatch: {} cell(s) regressed at the last run: {}",
                    regressed.len(),
                    regressed.join(", ")
                );
                return Ok(ExitCode::from(exit_code::BAD));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn finish(report: &MatrixReport, dir: &std::path::Path, json: bool) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    let s = &report.summary;
    let verdicts: Vec<String> = s
        .by_verdict
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    outln!(
        "{}: {} of {} cells done ({}), {} errors, {} not run, {} flaky",
        report.name,
        s.done,
        s.planned,
        verdicts.join(", "),
        s.errors,
        s.not_run,
        s.flaky
    );
    if let Some(c) = &report.comparison {
        outln!(
            "against {}: {} regressions, {} fixes, {} other changes",
            c.baseline,
            c.regressions.len(),
            c.fixes.len(),
            c.changed.len()
        );
    }
    outln!("reports: {}/matrix.{{json,xml,md,html}}", dir.display());
}
