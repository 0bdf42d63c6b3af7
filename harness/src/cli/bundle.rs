//! `bootwatch bundle` and `bootwatch replay`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{CliError, CliResult, show, signal_token};
use crate::core::verdict::exit_code;
use crate::plan::replay::{self, ReplayError, ReplayOptions};
use crate::report::bundle;

#[derive(clap::Args, Debug)]
pub struct BundleArgs {
    /// A run's results directory (case.json), a matrix cell's (RESULTS/cells/ID: cell.json) or a
    /// bisection's (bisect.json).
    dir: PathBuf,
    /// The archive to write (default: bootwatch-<name>.tar.gz in the current directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A bisection's results directory (bisect.json) to carry with a run's or a cell's bundle:
    /// its first bad and last good builds in REPORT.md, bisect.json, bisect.md and those
    /// builds' runs.
    #[arg(long, value_name = "DIR")]
    bisect: Option<PathBuf>,
    /// Print bundle.json.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// A bundle (.tar.gz) or the directory it was unpacked into.
    bundle: PathBuf,
    /// Results root: the replay writes DIR/<run-id>/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Debian archive mirror, for inputs that must be fetched again.
    #[arg(long)]
    mirror: Option<String>,
    #[arg(long)]
    json: bool,
}

pub async fn bundle(args: BundleArgs) -> CliResult {
    if !args.dir.is_dir() {
        return Err(CliError::usage(format!(
            "{} is not a directory",
            args.dir.display()
        )));
    }
    if bundle::Kind::detect(&args.dir).is_none() {
        return Err(CliError::usage(format!(
            "{} holds no case.json, cell.json or bisect.json: give a run's results directory, a \
             matrix cell's (RESULTS/cells/ID) or a bisection's",
            args.dir.display()
        )));
    }
    if let Some(b) = &args.bisect {
        if bundle::Kind::detect(b) != Some(bundle::Kind::Bisect) {
            return Err(CliError::usage(format!(
                "--bisect {}: holds no bisect.json (give a bisection's results directory)",
                b.display()
            )));
        }
        if bundle::Kind::detect(&args.dir) == Some(bundle::Kind::Bisect) {
            return Err(CliError::usage(format!(
                "--bisect: {} is a bisection already (--bisect adds one to a run's or a cell's \
                 bundle)",
                args.dir.display()
            )));
        }
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let name = args
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "run".into());
        PathBuf::from(format!("bootwatch-{name}.tar.gz"))
    });
    // The known bug behind a failed run or cell (a probe's facts only from the cache: it boots
    // nothing); a bisection's bundle has none.
    let explanation = match bundle::Kind::detect(&args.dir) {
        Some(bundle::Kind::Run | bundle::Kind::Cell) => {
            let cache = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
            crate::plan::explain::brief_of_failure(
                &args.dir,
                &cache,
                &signal_token(),
                &show::terminal(args.json),
            )
            .await
        }
        _ => None,
    };
    let rec = bundle::make_explained(
        &args.dir,
        args.bisect.as_deref(),
        &out,
        explanation.as_ref(),
    )
    .map_err(|e| CliError::undetermined(format!("{e:#}")))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rec).unwrap_or_default());
    } else {
        outln!("{}", show::one_line(&rec.title));
        outln!(
            "  {} {}, verdict {}{}; {} files",
            rec.kind.as_str(),
            rec.name,
            rec.outcome.verdict,
            rec.repeats
                .as_ref()
                .map(|r| format!(" (failed in {} of {} runs)", r.failed, r.runs))
                .unwrap_or_default(),
            rec.files.len() + 1
        );
        outln!("bundle: {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(args: ReplayArgs) -> CliResult {
    if !Path::new(&args.bundle).exists() {
        return Err(CliError::usage(format!(
            "{}: no such file",
            args.bundle.display()
        )));
    }
    let cache_root = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let opts = ReplayOptions {
        results: args.results.clone(),
        mirror: args.mirror.clone(),
        cache_root,
    };
    let sink = show::terminal(args.json);
    let cancel = signal_token();
    match replay::replay(&args.bundle, &opts, &cancel, &sink).await {
        Ok(r) => {
            if args.json {
                let v = serde_json::json!({
                    "bundle": args.bundle,
                    "same": r.same(),
                    "was": r.was,
                    "now": r.now,
                    "results": r.dir,
                    "inputs": r.found.iter().map(|(role, p)| serde_json::json!({"role": role, "path": p})).collect::<Vec<_>>(),
                });
                outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                outln!(
                    "{}: {} (was {}, now {} at stage {})",
                    if r.same() {
                        "same verdict"
                    } else {
                        "different verdict"
                    },
                    show::one_line(&r.bundle.title),
                    r.was.verdict,
                    r.now.verdict,
                    r.now.stage
                );
                outln!("  {}", show::one_line(&r.now.reason));
                outln!("results: {}", r.dir.display());
            }
            Ok(ExitCode::from(if r.same() {
                exit_code::GOOD
            } else {
                exit_code::BAD
            }))
        }
        Err(ReplayError::Bundle(m)) => Err(CliError::undetermined(format!("replay: {m}"))),
        Err(e) => Err(CliError::undetermined(format!("replay: {e}"))),
    }
}
