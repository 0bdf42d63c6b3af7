//! Runs a plan's cells: providers and images resolved once, then each cell as an ordinary case
//! (`engine::case`) in its own results directory, at most `concurrency` VMs at a time. Cells
//! write `cells/<id>/cell.json` when they end (a failing cell again once `explain` has named the
//! known bug behind it, in a task beside the running cells); the reports are rebuilt on a blocking thread at
//! most every [`REPORT_EVERY`] while cells finish and once at the end, and exist from the start,
//! so a matrix stopped at any point leaves a valid partial report. A finished cell with the same
//! inputs is not run again (resume).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::core::event::{Event, EventSink};
use crate::core::verdict::Outcome;
use crate::core::verdict::{Verdict, exit_code};
use crate::engine::case::{self, CaseDir, CaseRequest, ImageDisk, VarsSource};
use crate::engine::record::{RunResult, RunStatus, write_json_atomic};
use crate::engine::step::Step;
use crate::inputs::images::catalog::ImageFormat;
use crate::inputs::images::{self, Registry, Resolved};
use crate::inputs::providers::{self, ProviderContext, ResolvedFirmware, ResolvedQemu};
use crate::plan::matrix::model::{
    CellInputs, CellRecord, CellRun, CellStatus, EXECUTION_SCHEMA, Execution, MatrixReport, Plan,
    PlannedCell,
};
use crate::plan::matrix::plan::Shard;
use crate::plan::matrix::spec::{ImageChoice, MatrixSpec, VarsChoice};
use crate::plan::matrix::upgrade::{self, UpgradedImage};

/// How a matrix is executed (the matrix file says what to run).
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    pub results: PathBuf,
    pub shard: Option<Shard>,
    pub concurrency: usize,
    pub mirror: Option<String>,
    pub cache_root: PathBuf,
    /// A results directory or matrix.json to compare with (regressions and fixes).
    pub baseline: Option<PathBuf>,
}

/// The reports are rebuilt at most this often while cells finish (and always at the end).
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

pub use crate::sys::host::default_concurrency;

/// What a cell's image value became after preparation.
#[derive(Debug, Clone)]
enum PreparedImage {
    Fixture {
        path: PathBuf,
        sha256: String,
    },
    Image(Box<Resolved>),
    Upgraded {
        base: Box<Resolved>,
        up: Box<UpgradedImage>,
    },
}

/// Everything resolved before the first cell; a failure is kept as the message the affected
/// cells report (status `error`), the other cells still run.
struct Prepared {
    qemu: BTreeMap<String, Result<ResolvedQemu, String>>,
    firmware: BTreeMap<String, Result<ResolvedFirmware, String>>,
    images: BTreeMap<String, Result<PreparedImage, String>>,
}

/// Runs the cells of `plan` this execution is responsible for and writes every report.
pub async fn run_matrix(
    spec: &MatrixSpec,
    plan: &Plan,
    opts: &MatrixOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<MatrixReport> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now().to_string();
    let dir = &opts.results;
    open_results_dir(dir, plan)?;
    let mine: Vec<PlannedCell> = plan
        .cells
        .iter()
        .filter(|c| opts.shard.is_none_or(|s| s.owns(c.index)))
        .cloned()
        .collect();

    let prepared = Arc::new(prepare(spec, &mine, opts, cancel, sink).await);
    let prepare_s = started.elapsed().as_secs_f64();
    let mut execution = Execution {
        schema: EXECUTION_SCHEMA.into(),
        plan_id: plan.plan_id.clone(),
        shard: opts.shard.map(|s| s.to_string()),
        concurrency: opts.concurrency,
        started_at,
        wall_s: 0.0,
        prepare_s: round(prepare_s),
        cells: mine.iter().map(|c| c.id.clone()).collect(),
        resumed: Vec::new(),
        interrupted: false,
        host: crate::engine::record::HostInfo::probe().hostname,
        bootwatch_version: env!("CARGO_PKG_VERSION").into(),
    };
    // The report exists from the start (every cell not run yet), so even a matrix killed with
    // SIGKILL leaves a valid one.
    let mut reports = ReportWriter {
        dir: dir.clone(),
        baseline: opts.baseline.clone(),
        started,
        dirty: false,
        last: Instant::now(),
        inflight: None,
    };
    reports.write_now(&execution).await?;

    let total = mine.len();
    let spec = Arc::new(spec.clone());
    let plan_arc = Arc::new(plan.clone());
    let mut results = futures::stream::iter(mine.into_iter().map(|cell| {
        let prepared = prepared.clone();
        let spec = spec.clone();
        let plan = plan_arc.clone();
        let cancel = cancel.clone();
        let dir = dir.clone();
        let sink = sink.scoped(&cell.id);
        async move {
            let outcome = run_cell(&spec, &plan, &cell, &prepared, &dir, &cancel, &sink).await;
            (cell, outcome)
        }
    }))
    .buffer_unordered(opts.concurrency.max(1));

    let mut finished = 0;
    let mut harness_failures = Vec::new();
    // Failing cells being explained, beside the cells still running.
    let mut explaining = tokio::task::JoinSet::new();
    let explain = |record: &CellRecord, explaining: &mut tokio::task::JoinSet<_>| {
        if wants_explanation(record) {
            explaining.spawn(explain_cell(
                dir.clone(),
                record.clone(),
                opts.cache_root.clone(),
                cancel.clone(),
                sink.scoped(&record.id),
            ));
        }
    };
    loop {
        let next = tokio::select! {
            next = results.next() => next,
            Some(done) = explaining.join_next(), if !explaining.is_empty() => {
                explained(done, &mut harness_failures);
                reports.dirty = true;
                continue;
            }
            r = reports.due() => {
                r?;
                reports.start_write(&execution);
                continue;
            }
        };
        let Some((cell, outcome)) = next else { break };
        match outcome {
            Ok(CellOutcome::Ran(record)) => {
                finished += 1;
                sink.emit(cell_finished(&record, finished, total));
                explain(&record, &mut explaining);
            }
            Ok(CellOutcome::Resumed(record)) => {
                finished += 1;
                execution.resumed.push(cell.id.clone());
                sink.emit(Event::CellStarted {
                    id: cell.id.clone(),
                    label: cell.axes.label(),
                    resumed: true,
                });
                sink.emit(cell_finished(&record, finished, total));
                // A cell kept from before explanations were recorded gets one now.
                explain(&record, &mut explaining);
            }
            Ok(CellOutcome::NotStarted) => {}
            Err(e) => harness_failures.push(format!("cell {}: {e:#}", cell.id)),
        }
        execution.interrupted = cancel.is_cancelled();
        reports.dirty = true;
    }
    while let Some(done) = explaining.join_next().await {
        explained(done, &mut harness_failures);
    }
    execution.interrupted = cancel.is_cancelled();
    let report = reports.write_now(&execution).await?;
    if !harness_failures.is_empty() {
        bail!(
            "bootwatch could not record {} cell(s): {}",
            harness_failures.len(),
            harness_failures.join("; ")
        );
    }
    Ok(report)
}

/// An explanation task's end: one that could not write its cell's record is a harness failure.
fn explained(done: Result<anyhow::Result<()>, tokio::task::JoinError>, failures: &mut Vec<String>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("{e:#}")),
        Err(e) => failures.push(format!("explaining a cell: {e}")),
    }
}

fn cell_finished(r: &CellRecord, finished: usize, total: usize) -> Event {
    Event::CellFinished {
        id: r.id.clone(),
        label: r.axes.label(),
        status: r.status.as_str().into(),
        outcome: r.outcome.clone(),
        error: r.error.clone(),
        flaky: r.flaky.then_some((r.crashed, r.repeat)),
        duration_s: r.duration_s,
        finished,
        total,
    }
}

/// Rewrites `execution.json` and the reports on a blocking thread: at most every
/// [`REPORT_EVERY`] while cells finish, and once more at the end.
struct ReportWriter {
    dir: PathBuf,
    baseline: Option<PathBuf>,
    started: Instant,
    dirty: bool,
    last: Instant,
    inflight: Option<tokio::task::JoinHandle<anyhow::Result<MatrixReport>>>,
}

impl ReportWriter {
    /// Resolves when a background write finished (with its result) or one is due.
    async fn due(&mut self) -> anyhow::Result<()> {
        if let Some(h) = self.inflight.as_mut() {
            let r = h.await.context("the report task failed")?;
            self.inflight = None;
            r.map(|_| ())?;
            return std::future::pending().await;
        }
        if !self.dirty {
            return std::future::pending().await;
        }
        tokio::time::sleep_until((self.last + REPORT_EVERY).into()).await;
        Ok(())
    }

    fn start_write(&mut self, execution: &Execution) {
        if self.inflight.is_some() || !self.dirty {
            return;
        }
        self.dirty = false;
        self.last = Instant::now();
        self.inflight = Some(self.spawn(execution));
    }

    fn spawn(
        &self,
        execution: &Execution,
    ) -> tokio::task::JoinHandle<anyhow::Result<MatrixReport>> {
        let mut e = execution.clone();
        e.wall_s = round(self.started.elapsed().as_secs_f64());
        let (dir, baseline) = (self.dir.clone(), self.baseline.clone());
        tokio::task::spawn_blocking(move || {
            write_json_atomic(&dir.join("execution.json"), &e).context("writing execution.json")?;
            write_reports(&dir, baseline.as_deref())
        })
    }

    /// Waits for a write in flight, then writes once more (now).
    async fn write_now(&mut self, execution: &Execution) -> anyhow::Result<MatrixReport> {
        if let Some(h) = self.inflight.take() {
            h.await.context("the report task failed")??;
        }
        self.dirty = false;
        self.last = Instant::now();
        self.spawn(execution)
            .await
            .context("the report task failed")?
    }
}

/// Whether `dir` can take this plan's results: new, empty, or holding results of the same matrix
/// (by name: resume, also after the file was edited). Another matrix's results are refused.
pub fn check_results_dir(dir: &Path, plan: &Plan) -> Result<(), String> {
    let plan_path = dir.join("plan.json");
    if plan_path.exists() {
        let old: Plan = std::fs::read(&plan_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("--results {}: reading plan.json: {e}", dir.display()))?;
        // The same matrix, perhaps edited (values added, settings changed): its cells whose
        // inputs did not change are kept, the others run. Another matrix is refused.
        if old.name != plan.name {
            return Err(format!(
                "--results {} holds the results of another matrix ({:?} from {}, this is {:?} from {}): pass another directory",
                dir.display(),
                old.name,
                old.matrix_file,
                plan.name,
                plan.matrix_file
            ));
        }
    } else if dir.is_file()
        || (dir.is_dir()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true))
    {
        return Err(format!(
            "--results {} is not an empty directory and holds no matrix plan.json: pass a new or empty directory",
            dir.display()
        ));
    }
    Ok(())
}

/// Creates the results directory (or reopens it for the same plan) and writes plan.json.
fn open_results_dir(dir: &Path, plan: &Plan) -> anyhow::Result<()> {
    check_results_dir(dir, plan).map_err(|e| anyhow!(e))?;
    std::fs::create_dir_all(dir.join("cells"))
        .with_context(|| format!("creating {}", dir.display()))?;
    write_json_atomic(&dir.join("plan.json"), plan).context("writing plan.json")?;
    Ok(())
}

fn write_reports(dir: &Path, baseline: Option<&Path>) -> anyhow::Result<MatrixReport> {
    let mut report = crate::report::build(dir)?;
    if let Some(b) = baseline {
        crate::report::compare(&mut report, b)?;
    }
    crate::report::write_all(dir, &report)?;
    Ok(report)
}

async fn prepare(
    spec: &MatrixSpec,
    cells: &[PlannedCell],
    opts: &MatrixOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Prepared {
    let ctx = ProviderContext {
        mirror: opts.mirror.clone(),
        cache_root: opts.cache_root.clone(),
    };
    let used = |f: fn(&PlannedCell) -> &String| -> BTreeSet<String> {
        cells.iter().map(|c| f(c).clone()).collect()
    };
    let timed = |what: &str, t: Instant, detail: String| {
        sink.emit(Event::Prepared {
            what: what.into(),
            seconds: round(t.elapsed().as_secs_f64()),
            detail,
        })
    };
    let mut p = Prepared {
        qemu: BTreeMap::new(),
        firmware: BTreeMap::new(),
        images: BTreeMap::new(),
    };
    for name in used(|c| &c.axes.qemu) {
        let provider = spec.qemus.iter().find(|(s, _)| *s == name).map(|(_, p)| p);
        let Some(provider) = provider else { continue };
        sink.emit(Event::Preparing {
            what: format!("qemu {name}"),
        });
        let t = Instant::now();
        let r = providers::resolve_qemu(provider, &ctx, cancel)
            .await
            .map_err(|e| format!("qemu {name}: {e:#}"));
        timed(
            &format!("qemu {name}"),
            t,
            match &r {
                Ok(q) => q.version_line.clone(),
                Err(e) => e.clone(),
            },
        );
        p.qemu.insert(name, r);
    }
    for name in used(|c| &c.axes.firmware) {
        let provider = spec
            .firmwares
            .iter()
            .find(|(s, _)| *s == name)
            .map(|(_, p)| p);
        let Some(provider) = provider else { continue };
        sink.emit(Event::Preparing {
            what: format!("firmware {name}"),
        });
        let t = Instant::now();
        let r = providers::resolve_firmware(provider, &ctx, cancel)
            .await
            .map_err(|e| format!("firmware {name}: {e:#}"));
        timed(
            &format!("firmware {name}"),
            t,
            match &r {
                Ok(f) => f.code.display().to_string(),
                Err(e) => e.clone(),
            },
        );
        p.firmware.insert(name, r);
    }
    for name in used(|c| &c.axes.image) {
        if cancel.is_cancelled() {
            break;
        }
        let Some((_, choice)) = spec.images.iter().find(|(s, _)| *s == name) else {
            continue;
        };
        sink.emit(Event::Preparing {
            what: format!("image {name}"),
        });
        let t = Instant::now();
        let r = prepare_image(spec, choice, opts, &ctx, cancel, sink)
            .await
            .map_err(|e| format!("image {name}: {e:#}"));
        timed(
            &format!("image {name}"),
            t,
            r.as_ref().err().cloned().unwrap_or_default(),
        );
        p.images.insert(name, r);
    }
    p
}

async fn prepare_image(
    spec: &MatrixSpec,
    choice: &ImageChoice,
    opts: &MatrixOptions,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<PreparedImage> {
    match choice {
        ImageChoice::Fixture(f) => {
            let dir = opts.cache_root.join("fixtures");
            let f = *f;
            let path = dir.join(f.image_file_name());
            let sha256 = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                crate::inputs::fixtures::write_all(&dir)?;
                crate::sys::fsx::hash_file_cached(
                    &path,
                    crate::sys::fsx::hash_cache_dir().as_deref(),
                )
                .map(|d| d.sha256)
                .map_err(anyhow::Error::from)
            })
            .await??;
            Ok(PreparedImage::Fixture {
                path: opts.cache_root.join("fixtures").join(f.image_file_name()),
                sha256,
            })
        }
        ImageChoice::Image(name) => Ok(PreparedImage::Image(Box::new(
            resolve_image(name, opts, cancel, sink).await?,
        ))),
        ImageChoice::Upgraded(name) => {
            let base = resolve_image(name, opts, cancel, sink).await?;
            let up = upgrade::prepare(&base, &spec.upgrade, ctx, cancel, sink).await?;
            Ok(PreparedImage::Upgraded {
                base: Box::new(base),
                up: Box::new(up),
            })
        }
    }
}

async fn resolve_image(
    name: &str,
    opts: &MatrixOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<Resolved> {
    let registry = Registry::load()?;
    let entry = registry
        .get(name)
        .ok_or_else(|| anyhow!("no image named {name:?} in the catalog or local recipes"))?;
    images::resolve(
        entry,
        &opts.cache_root,
        opts.mirror.as_deref(),
        cancel,
        sink,
    )
    .await
}

enum CellOutcome {
    Ran(Box<CellRecord>),
    Resumed(Box<CellRecord>),
    NotStarted,
}

/// The inputs of a cell as resolved, or why it cannot run.
fn inputs_of(
    spec: &MatrixSpec,
    plan: &Plan,
    cell: &PlannedCell,
    p: &Prepared,
) -> Result<(ResolvedQemu, ResolvedFirmware, PreparedImage, CellInputs), String> {
    let missing = |what: &str| format!("{what} was not prepared (the matrix was interrupted)");
    let q = p
        .qemu
        .get(&cell.axes.qemu)
        .ok_or_else(|| missing("qemu"))?
        .clone()?;
    let f = p
        .firmware
        .get(&cell.axes.firmware)
        .ok_or_else(|| missing("firmware"))?
        .clone()?;
    let img = p
        .images
        .get(&cell.axes.image)
        .ok_or_else(|| missing("image"))?
        .clone()?;
    let vars = vars_choice(spec, cell);
    let (image_sha256, vars_sha256) = match (&img, vars) {
        (PreparedImage::Fixture { sha256, .. }, _) => (Some(sha256.clone()), None),
        (PreparedImage::Image(r), _) => (Some(r.sha256.clone()), None),
        (PreparedImage::Upgraded { up, .. }, VarsChoice::Guest) => {
            (Some(up.disk_sha256.clone()), Some(up.vars_sha256.clone()))
        }
        (PreparedImage::Upgraded { up, .. }, VarsChoice::Template) => {
            (Some(up.disk_sha256.clone()), None)
        }
    };
    let mut inputs = CellInputs {
        qemu_binary: q.binary.display().to_string(),
        qemu_sha256: q.sha256.clone(),
        qemu_package: q.package.clone(),
        firmware_code: f.code.display().to_string(),
        firmware_sha256: f.code_sha256.clone(),
        firmware_package: f.package.clone(),
        image_sha256,
        vars_sha256,
        image_packages: BTreeMap::new(),
        key: String::new(),
    };
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&inputs).unwrap_or_default());
    h.update(
        format!(
            "{};target={};timeout={};silence={};repeat={};smp={};memory={}{}",
            cell.axes.canonical(),
            plan.target,
            spec.timeout.as_secs_f64(),
            spec.silence.as_secs_f64(),
            plan.repeat,
            spec.smp,
            spec.memory_mib,
            // Only a non-default wait enters the key: results made before the setting existed
            // (which skipped nothing) are not kept as if they had.
            match spec.firmware_wait {
                crate::core::launch::FirmwareWait::Skip => ";firmware_wait=skip",
                crate::core::launch::FirmwareWait::Default => "",
            }
        )
        .as_bytes(),
    );
    inputs.key = hex::encode(h.finalize())[..16].to_string();
    inputs.image_packages = match &img {
        PreparedImage::Fixture { .. } => BTreeMap::new(),
        PreparedImage::Image(r) => r.boot_chain.clone(),
        PreparedImage::Upgraded { base, up } if up.boot_chain.is_empty() => base.boot_chain.clone(),
        PreparedImage::Upgraded { up, .. } => up.boot_chain.clone(),
    };
    Ok((q, f, img, inputs))
}

fn vars_choice(spec: &MatrixSpec, cell: &PlannedCell) -> VarsChoice {
    spec.vars
        .iter()
        .find(|(s, _)| *s == cell.axes.vars)
        .map_or(VarsChoice::Template, |(_, v)| *v)
}

async fn run_cell(
    spec: &MatrixSpec,
    plan: &Plan,
    cell: &PlannedCell,
    p: &Prepared,
    results: &Path,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<CellOutcome> {
    if cancel.is_cancelled() {
        return Ok(CellOutcome::NotStarted);
    }
    let t = Instant::now();
    let cell_dir = results.join("cells").join(&cell.id);
    let cell_json = cell_dir.join("cell.json");
    let resolved = inputs_of(spec, plan, cell, p);
    if let Ok((_, _, _, inputs)) = &resolved
        && let Some(old) = crate::sys::fsx::read_json::<CellRecord>(&cell_json)
        && old.status == CellStatus::Done
        && old.inputs.key == inputs.key
    {
        return Ok(CellOutcome::Resumed(Box::new(old)));
    }
    if cell_dir.exists() {
        std::fs::remove_dir_all(&cell_dir)
            .with_context(|| format!("removing the stale {}", cell_dir.display()))?;
    }
    std::fs::create_dir_all(&cell_dir)?;
    sink.emit(Event::CellStarted {
        id: cell.id.clone(),
        label: cell.axes.label(),
        resumed: false,
    });
    let mut record = CellRecord {
        status: CellStatus::Error,
        ..CellRecord::not_run(cell, plan.repeat)
    };
    let (q, f, img, inputs) = match resolved {
        Ok(r) => r,
        Err(e) => {
            record.outcome = Outcome::harness_error(&e);
            record.error = Some(e);
            record.duration_s = round(t.elapsed().as_secs_f64());
            write_json_atomic(&cell_json, &record)?;
            return Ok(CellOutcome::Ran(Box::new(record)));
        }
    };
    record.inputs = inputs;
    record.qemu_version = Some(q.version.clone());
    let mut outcomes: Vec<RunResult> = Vec::new();
    for n in 1..=plan.repeat {
        if cancel.is_cancelled() {
            break;
        }
        let run_dir = cell_dir.join(format!("run-{n}"));
        let req = case_request(spec, cell, &q, &f, &img, &run_dir);
        let checked = match case::check(req) {
            Ok(c) => c,
            Err(e) => {
                record.outcome = Outcome::harness_error(&e.0);
                record.error = Some(e.0);
                break;
            }
        };
        match case::run(checked, cancel, sink).await {
            Ok(done) => {
                let r = done
                    .runs
                    .into_iter()
                    .next()
                    .expect("a case has a first session");
                record.runs.push(CellRun {
                    n,
                    dir: format!("cells/{}/run-{n}", cell.id),
                    outcome: r.outcome.clone(),
                    duration_s: r.duration_s,
                    qemu_s: r.qemu.wall_s,
                });
                outcomes.push(r);
            }
            Err(e) => {
                record.outcome = Outcome::harness_error(&e.to_string());
                record.error = Some(e.to_string());
                break;
            }
        }
    }
    summarize(&mut record, &outcomes, &f, cancel.is_cancelled());
    record.duration_s = round(t.elapsed().as_secs_f64());
    let qemu_s: f64 = record.runs.iter().filter_map(|r| r.qemu_s).sum();
    record.overhead_s = round((record.duration_s - qemu_s).max(0.0));
    let (path, rec) = (cell_json.clone(), record.clone());
    crate::engine::disk::blocking(move || Ok(write_json_atomic(&path, &rec)?)).await?;
    Ok(CellOutcome::Ran(Box::new(record)))
}

/// Whether a cell's record still wants the known bug behind it: its guest failed.
fn wants_explanation(r: &CellRecord) -> bool {
    r.status == CellStatus::Done && r.outcome.exit_code == exit_code::BAD && r.explanation.is_none()
}

/// The known bug behind a failing cell: `bootwatch explain` on its first failing run, with the
/// probe's facts only from the cache (it boots nothing), added to its `cell.json`. Run as a
/// task of its own once the cell has ended, so the cell's VM slot goes to the next cell at
/// once; its reading (records, the disk's ESP, the firmware image, hashes) runs on blocking
/// threads and in `qemu-img`. Its time is `explanation.explain_s`.
async fn explain_cell(
    results: PathBuf,
    mut record: CellRecord,
    cache_root: PathBuf,
    cancel: CancellationToken,
    sink: EventSink,
) -> anyhow::Result<()> {
    let cell_dir = results.join("cells").join(&record.id);
    let n = record
        .runs
        .iter()
        .find(|r| r.outcome.exit_code == exit_code::BAD)
        .map_or(1, |r| r.n);
    let brief = crate::plan::explain::brief(
        &cell_dir.join(format!("run-{n}")),
        &cell_dir,
        Some(record.clone()),
        &cache_root,
        &cancel,
        &sink,
    )
    .await
    .0;
    record.explanation = Some(brief);
    let path = cell_dir.join("cell.json");
    let id = record.id.clone();
    crate::engine::disk::blocking(move || Ok(write_json_atomic(&path, &record)?))
        .await
        .with_context(|| format!("cell {id}: writing its explanation"))
}

/// A cell's run as a case: boot to the matrix's target (a fixture through `snapshot=on`, an
/// image through its own overlay).
fn case_request(
    spec: &MatrixSpec,
    cell: &PlannedCell,
    q: &ResolvedQemu,
    f: &ResolvedFirmware,
    img: &PreparedImage,
    run_dir: &Path,
) -> CaseRequest {
    let mut req = CaseRequest::new(
        &cell.id,
        CaseDir::Exactly(run_dir.to_path_buf()),
        f.code.clone(),
        vec![Step::Boot {
            until: spec.target,
            timeout: spec.timeout,
            silence: spec.silence,
        }],
    );
    req.qemu = q.binary.clone();
    req.qemu_exec = q.exec.clone();
    req.cpu = Some(cell.axes.cpu.clone());
    req.smp = spec.smp;
    req.memory_mib = spec.memory_mib;
    req.firmware_wait = spec.firmware_wait;
    if let Some(t) = &f.vars_template {
        req.vars = VarsSource::Template(t.clone());
    }
    req.inputs.push(q.input_record());
    req.inputs.extend(f.input_records());
    match img {
        PreparedImage::Fixture { path, sha256 } => {
            req.disks.push(path.clone());
            req.snapshot = true;
            let mut r = crate::inputs::fixtures::input_record(path, &cell.axes.image);
            r.sha256 = Some(sha256.clone());
            req.inputs.push(r);
        }
        PreparedImage::Image(r) => {
            req.network = Some(Vec::new());
            req.image = Some(image_disk(r, &r.path, &r.sha256, r.format));
            req.inputs.push(r.input_record());
        }
        PreparedImage::Upgraded { base, up } => {
            // With the guest's store, its record replaces the template's.
            up.add_input_records(
                base,
                &cell.axes.image,
                matches!(vars_choice(spec, cell), VarsChoice::Guest),
                &mut req.inputs,
            );
            req.network = Some(Vec::new());
            req.image = Some(image_disk(
                base,
                &up.disk,
                &up.disk_sha256,
                ImageFormat::Qcow2,
            ));
            if matches!(vars_choice(spec, cell), VarsChoice::Guest) {
                req.vars = VarsSource::Template(up.vars.clone());
            }
        }
    }
    req
}

fn image_disk(r: &Resolved, base: &Path, sha256: &str, format: ImageFormat) -> ImageDisk {
    ImageDisk {
        name: r.name.clone(),
        base: base.to_path_buf(),
        base_sha256: sha256.to_string(),
        format,
        guest: r.guest.clone(),
        source: r.source.clone(),
    }
}

/// The cell's verdict from its runs: the first guest failure (exit code 1) if any run failed,
/// else the first undetermined run (exit code 125), else the first run; `crashed` counts guest
/// failures and `flaky` says the runs disagreed.
fn summarize(
    record: &mut CellRecord,
    outcomes: &[RunResult],
    f: &ResolvedFirmware,
    interrupted: bool,
) {
    let pick = outcomes
        .iter()
        .find(|r| r.outcome.exit_code == exit_code::BAD)
        .or_else(|| {
            outcomes
                .iter()
                .find(|r| r.outcome.exit_code == exit_code::UNDETERMINED)
        })
        .or(outcomes.first());
    record.crashed = outcomes
        .iter()
        .filter(|r| r.outcome.exit_code == exit_code::BAD)
        .count() as u32;
    let verdicts: BTreeSet<&str> = outcomes
        .iter()
        .map(|r| r.outcome.verdict.as_str())
        .collect();
    record.flaky = verdicts.len() > 1;
    if let Some(r) = pick {
        record.outcome = r.outcome.clone();
        record.exception = r.finding.as_ref().map(|f| f.text.clone());
        if let Some(v) = &r.qemu.version {
            record.qemu_version = Some(v.clone());
        }
    }
    let banner = outcomes
        .iter()
        .find_map(|r| r.firmware.banner_version.clone());
    record.firmware_banner = banner.clone();
    record.firmware_version = banner
        .as_deref()
        .and_then(|v| crate::core::classify::PatternSet::builtin().edk2_release(v))
        .or_else(|| f.package.as_deref().map(providers::upstream_version));
    let complete = outcomes.len() == record.repeat as usize
        && outcomes.iter().all(|r| r.status == RunStatus::Complete);
    record.status = if interrupted && !complete {
        CellStatus::Interrupted
    } else if record.error.is_some()
        || !complete
        || outcomes
            .iter()
            .any(|r| r.outcome.verdict == Verdict::HarnessError)
    {
        if record.error.is_none() {
            record.error = Some(record.outcome.reason.clone());
        }
        CellStatus::Error
    } else {
        CellStatus::Done
    };
}

fn round(s: f64) -> f64 {
    crate::engine::qmp::round_ms(s)
}

/// Checks that every image name of the matrix exists (before anything runs).
pub fn check_images(spec: &MatrixSpec) -> Result<(), String> {
    let registry = Registry::load().map_err(|e| e.to_string())?;
    for (value, choice) in &spec.images {
        if let Some(name) = choice.image_name()
            && registry.get(name).is_none()
        {
            return Err(format!(
                "{}: axis image: no image named {name:?} (from {value:?}); `bootwatch images list` shows the known ones",
                spec.source
            ));
        }
    }
    Ok(())
}
