//! `bootwatch matrix` and `bootwatch report merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio::sync::mpsc;

use super::{fail, signal_token};
use crate::core::verdict::exit_code;
use crate::plan::matrix::execute::{self, MatrixEvent, MatrixOptions};
use crate::plan::matrix::model::{CellStatus, MatrixReport};
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
    /// VMs at once (default: one per core, bounded by memory).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Run each cell N times and report flaky cells as "k of N crashed" (default: the file's
    /// `repeat`, else 1).
    #[arg(long)]
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
}

pub async fn matrix(a: MatrixArgs) -> ExitCode {
    // Everything that can be wrong with the input is found here, before any VM starts.
    let spec = match MatrixSpec::load(&a.file) {
        Ok(s) => s,
        Err(e) => return fail(exit_code::USAGE, &e.to_string()),
    };
    let shard = match &a.shard {
        Some(s) => match s.parse::<Shard>() {
            Ok(s) => Some(s),
            Err(e) => return fail(exit_code::USAGE, &format!("--shard: {e}")),
        },
        None => match Shard::from_env(|k| std::env::var(k).ok()) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return fail(exit_code::USAGE, &e),
        },
    };
    if a.concurrency == Some(0) || a.repeat == Some(0) {
        return fail(
            exit_code::USAGE,
            "--concurrency and --repeat must be at least 1",
        );
    }
    let repeat = a.repeat.unwrap_or(spec.repeat);
    let plan = match plan::expand(&spec, repeat) {
        Ok(p) => p,
        Err(e) => return fail(exit_code::USAGE, &e),
    };
    if let Err(e) = execute::check_images(&spec) {
        return fail(exit_code::USAGE, &e);
    }
    if !a.dry_run
        && let Err(e) = execute::check_results_dir(&a.results, &plan)
    {
        return fail(exit_code::USAGE, &e);
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
        return ExitCode::SUCCESS;
    }
    let cache_root = match crate::sys::fsx::cache_root() {
        Ok(c) => c,
        Err(e) => return fail(exit_code::UNDETERMINED, &format!("{e:#}")),
    };
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
    let (tx, rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(show_progress(rx));
    let result = execute::run_matrix(&spec, &plan, &opts, &cancel, Some(tx)).await;
    let _ = printer.await;
    match result {
        Err(e) => fail(exit_code::UNDETERMINED, &format!("{e:#}")),
        Ok(report) => {
            finish(&report, &a.results, a.json);
            if cancel.is_cancelled() {
                eprintln!("bootwatch: interrupted; the partial report is written");
                ExitCode::from(exit_code::UNDETERMINED)
            } else if report.summary.errors > 0 {
                // A guest that crashed is a result; a cell bootwatch could not run is not.
                eprintln!(
                    "bootwatch: {} cell(s) could not be run (status error in the report)",
                    report.summary.errors
                );
                ExitCode::from(exit_code::UNDETERMINED)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

pub fn report(cmd: ReportCommand) -> ExitCode {
    match cmd {
        ReportCommand::Merge {
            dirs,
            out,
            baseline,
        } => {
            let merged = crate::report::merge(&dirs, &out).and_then(|mut r| {
                if let Some(b) = &baseline {
                    crate::report::compare(&mut r, b)?;
                    crate::report::write_all(&out, &r)?;
                }
                Ok(r)
            });
            match merged {
                Ok(r) => {
                    finish(&r, &out, false);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(exit_code::UNDETERMINED, &format!("{e:#}")),
            }
        }
    }
}

async fn show_progress(mut rx: mpsc::UnboundedReceiver<MatrixEvent>) {
    while let Some(e) = rx.recv().await {
        match e {
            MatrixEvent::Preparing(what) => eprintln!("preparing {what} ..."),
            MatrixEvent::Prepared {
                what,
                seconds,
                detail,
            } => eprintln!("prepared {what} in {seconds:.1} s  {detail}"),
            MatrixEvent::CellStarted { id, label } => eprintln!("start  {id}  {label}"),
            MatrixEvent::CellResumed { id, label } => {
                eprintln!("resume {id}  {label} (done before with the same inputs)")
            }
            MatrixEvent::CellFinished {
                record,
                finished,
                total,
            } => {
                let what = match record.status {
                    CellStatus::Done => format!("{} ({})", record.verdict, record.stage),
                    CellStatus::Error => {
                        format!("error: {}", record.error.as_deref().unwrap_or_default())
                    }
                    CellStatus::Interrupted => "interrupted".into(),
                    CellStatus::NotRun => "not run".into(),
                };
                let flaky = if record.flaky {
                    format!(", {} of {} crashed", record.crashed, record.repeat)
                } else {
                    String::new()
                };
                eprintln!(
                    "[{finished}/{total}] {}  {}  -> {what}{flaky}  {:.1} s",
                    record.id,
                    record.axes.label(),
                    record.duration_s
                );
            }
        }
    }
}

fn finish(report: &MatrixReport, dir: &std::path::Path, json: bool) {
    if json {
        println!(
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
    println!(
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
        println!(
            "against {}: {} regressions, {} fixes, {} other changes",
            c.baseline,
            c.regressions.len(),
            c.fixes.len(),
            c.changed.len()
        );
    }
    println!("reports: {}/matrix.{{json,xml,md,html}}", dir.display());
}
