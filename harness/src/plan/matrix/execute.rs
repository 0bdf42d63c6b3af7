//! Runs a plan's cells: providers and images resolved once, then each cell as a normal boot
//! (`run::run`) in its own results directory, at most `concurrency` VMs at a time. Cells write
//! `cells/<id>/cell.json` when they end and the reports are rebuilt after every cell, so a
//! matrix stopped at any point leaves a valid partial report. A finished cell with the same
//! inputs is not run again (resume).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::verdict::{Verdict, exit_code};
use crate::engine::record::{RunResult, RunStatus, write_json_atomic};
use crate::engine::run::{self, BootRequest, ImageBoot};
use crate::engine::session::Timings;
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

/// Progress, for whoever displays it (the engine never prints).
#[derive(Debug, Clone)]
pub enum MatrixEvent {
    Preparing(String),
    Prepared {
        what: String,
        seconds: f64,
        detail: String,
    },
    CellStarted {
        id: String,
        label: String,
    },
    CellResumed {
        id: String,
        label: String,
    },
    CellFinished {
        record: Box<CellRecord>,
        finished: usize,
        total: usize,
    },
}

/// VMs to run at once when not told: one per core, and no more than memory allows (each VM's
/// guest RAM plus about 512 MiB of QEMU and TCG overhead, keeping 2 GiB for the host).
pub fn default_concurrency(memory_mib: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let avail_mib = meminfo_total_mib().unwrap_or(4096).saturating_sub(2048);
    let by_mem = (avail_mib / (u64::from(memory_mib) + 512)).max(1) as usize;
    cores.min(by_mem).max(1)
}

fn meminfo_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// What a cell's image value became after preparation.
#[derive(Debug, Clone)]
enum PreparedImage {
    Fixture { path: PathBuf, sha256: String },
    Image(Resolved),
    Upgraded { base: Resolved, up: UpgradedImage },
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
    ui: Option<mpsc::UnboundedSender<MatrixEvent>>,
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
    let send = |e: MatrixEvent| {
        if let Some(ui) = &ui {
            let _ = ui.send(e);
        }
    };

    let prepared = Arc::new(prepare(spec, &mine, opts, cancel, &send).await);
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
    write_execution(dir, &execution, started)?;
    // The report exists from the start (every cell not run yet), so even a matrix killed with
    // SIGKILL leaves a valid one.
    write_reports(dir, opts)?;

    let total = mine.len();
    let spec = Arc::new(spec.clone());
    let plan_arc = Arc::new(plan.clone());
    let mut results = futures::stream::iter(mine.into_iter().map(|cell| {
        let prepared = prepared.clone();
        let spec = spec.clone();
        let plan = plan_arc.clone();
        let cancel = cancel.clone();
        let dir = dir.clone();
        let ui = ui.clone();
        async move {
            let outcome = run_cell(&spec, &plan, &cell, &prepared, &dir, &cancel, ui).await;
            (cell, outcome)
        }
    }))
    .buffer_unordered(opts.concurrency.max(1));

    let mut finished = 0;
    let mut harness_failures = Vec::new();
    while let Some((cell, outcome)) = results.next().await {
        match outcome {
            Ok(CellOutcome::Ran(record)) => {
                finished += 1;
                send(MatrixEvent::CellFinished {
                    record,
                    finished,
                    total,
                });
            }
            Ok(CellOutcome::Resumed(record)) => {
                finished += 1;
                execution.resumed.push(cell.id.clone());
                send(MatrixEvent::CellResumed {
                    id: cell.id.clone(),
                    label: cell.axes.label(),
                });
                send(MatrixEvent::CellFinished {
                    record,
                    finished,
                    total,
                });
            }
            Ok(CellOutcome::NotStarted) => {}
            Err(e) => harness_failures.push(format!("cell {}: {e:#}", cell.id)),
        }
        // A valid partial report after every cell: a matrix killed at any point keeps it.
        execution.interrupted = cancel.is_cancelled();
        write_execution(dir, &execution, started)?;
        write_reports(dir, opts)?;
    }
    execution.interrupted = cancel.is_cancelled();
    write_execution(dir, &execution, started)?;
    let report = write_reports(dir, opts)?;
    if !harness_failures.is_empty() {
        bail!(
            "bootwatch could not record {} cell(s): {}",
            harness_failures.len(),
            harness_failures.join("; ")
        );
    }
    Ok(report)
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

fn write_execution(dir: &Path, e: &Execution, started: Instant) -> anyhow::Result<()> {
    let mut e = e.clone();
    e.wall_s = round(started.elapsed().as_secs_f64());
    write_json_atomic(&dir.join("execution.json"), &e).context("writing execution.json")
}

fn write_reports(dir: &Path, opts: &MatrixOptions) -> anyhow::Result<MatrixReport> {
    let mut report = crate::report::build(dir)?;
    if let Some(b) = &opts.baseline {
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
    send: &impl Fn(MatrixEvent),
) -> Prepared {
    let ctx = ProviderContext {
        mirror: opts.mirror.clone(),
        cache_root: opts.cache_root.clone(),
    };
    let used = |f: fn(&PlannedCell) -> &String| -> BTreeSet<String> {
        cells.iter().map(|c| f(c).clone()).collect()
    };
    let timed = |what: &str, t: Instant, detail: String| {
        send(MatrixEvent::Prepared {
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
        send(MatrixEvent::Preparing(format!("qemu {name}")));
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
        send(MatrixEvent::Preparing(format!("firmware {name}")));
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
        send(MatrixEvent::Preparing(format!("image {name}")));
        let t = Instant::now();
        let r = prepare_image(spec, choice, opts, &ctx, cancel)
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
        ImageChoice::Image(name) => Ok(PreparedImage::Image(
            resolve_image(name, opts, cancel).await?,
        )),
        ImageChoice::Upgraded(name) => {
            let base = resolve_image(name, opts, cancel).await?;
            let up = upgrade::prepare(&base, &spec.upgrade, ctx, cancel).await?;
            Ok(PreparedImage::Upgraded { base, up })
        }
    }
}

async fn resolve_image(
    name: &str,
    opts: &MatrixOptions,
    cancel: &CancellationToken,
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
        None,
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
        key: String::new(),
    };
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&inputs).unwrap_or_default());
    h.update(
        format!(
            "{};target={};timeout={};silence={};repeat={};smp={};memory={}",
            cell.axes.canonical(),
            plan.target,
            spec.timeout.as_secs_f64(),
            spec.silence.as_secs_f64(),
            plan.repeat,
            spec.smp,
            spec.memory_mib
        )
        .as_bytes(),
    );
    inputs.key = hex::encode(h.finalize())[..16].to_string();
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
    ui: Option<mpsc::UnboundedSender<MatrixEvent>>,
) -> anyhow::Result<CellOutcome> {
    if cancel.is_cancelled() {
        return Ok(CellOutcome::NotStarted);
    }
    let t = Instant::now();
    let cell_dir = results.join("cells").join(&cell.id);
    let cell_json = cell_dir.join("cell.json");
    let resolved = inputs_of(spec, plan, cell, p);
    if let Ok((_, _, _, inputs)) = &resolved
        && let Ok(bytes) = std::fs::read(&cell_json)
        && let Ok(old) = serde_json::from_slice::<CellRecord>(&bytes)
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
    if let Some(ui) = &ui {
        let _ = ui.send(MatrixEvent::CellStarted {
            id: cell.id.clone(),
            label: cell.axes.label(),
        });
    }
    let mut record = CellRecord {
        status: CellStatus::Error,
        reason: String::new(),
        ..CellRecord::not_run(cell, plan.repeat)
    };
    let (q, f, img, inputs) = match resolved {
        Ok(r) => r,
        Err(e) => {
            record.reason = format!("harness error: {e}");
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
        let req = boot_request(spec, cell, &q, &f, &img, &run_dir);
        let checked = match run::validate(req) {
            Ok(c) => c,
            Err(e) => {
                record.error = Some(e.0.clone());
                record.reason = format!("harness error: {}", e.0);
                break;
            }
        };
        match run::run(checked, cancel.clone(), None).await {
            Ok(o) => {
                record.runs.push(CellRun {
                    n,
                    dir: format!("cells/{}/run-{n}", cell.id),
                    verdict: o.result.verdict,
                    stage: o.result.stage,
                    exit_code: i32::from(o.result.exit_code),
                    time_to_verdict_s: o.result.time_to_verdict_s,
                    duration_s: o.result.duration_s,
                    qemu_s: o.result.qemu.wall_s,
                });
                outcomes.push(o.result);
            }
            Err(e) => {
                record.error = Some(format!("{e:#}"));
                record.reason = format!("harness error: {e:#}");
                break;
            }
        }
    }
    summarize(&mut record, &outcomes, &f, cancel.is_cancelled());
    record.duration_s = round(t.elapsed().as_secs_f64());
    let qemu_s: f64 = record.runs.iter().filter_map(|r| r.qemu_s).sum();
    record.overhead_s = round((record.duration_s - qemu_s).max(0.0));
    write_json_atomic(&cell_json, &record)?;
    Ok(CellOutcome::Ran(Box::new(record)))
}

fn boot_request(
    spec: &MatrixSpec,
    cell: &PlannedCell,
    q: &ResolvedQemu,
    f: &ResolvedFirmware,
    img: &PreparedImage,
    run_dir: &Path,
) -> BootRequest {
    let guest_vars = matches!(vars_choice(spec, cell), VarsChoice::Guest);
    let mut req = BootRequest {
        qemu: q.binary.clone(),
        qemu_exec: q.exec.clone(),
        machine: "virt".into(),
        cpu: Some(cell.axes.cpu.clone()),
        accel: None,
        smp: spec.smp,
        memory_mib: spec.memory_mib,
        firmware_code: f.code.clone(),
        vars_template: f.vars_template.clone(),
        disks: Vec::new(),
        snapshot: true,
        network: None,
        extra_args: Vec::new(),
        target: spec.target,
        timeout: spec.timeout,
        silence: spec.silence,
        results_root: run_dir.parent().unwrap_or(run_dir).to_path_buf(),
        results_dir: Some(run_dir.to_path_buf()),
        name: cell.id.clone(),
        timings: Timings::default(),
        image: None,
        login: false,
    };
    match img {
        PreparedImage::Fixture { path, .. } => req.disks.push(path.clone()),
        PreparedImage::Image(r) => {
            req.network = Some(Vec::new());
            req.image = Some(image_boot(r, &r.path, &r.sha256, r.format));
        }
        PreparedImage::Upgraded { base, up } => {
            req.network = Some(Vec::new());
            req.image = Some(image_boot(
                base,
                &up.disk,
                &up.disk_sha256,
                ImageFormat::Qcow2,
            ));
            if guest_vars {
                req.vars_template = Some(up.vars.clone());
            }
        }
    }
    req
}

fn image_boot(r: &Resolved, base: &Path, sha256: &str, format: ImageFormat) -> ImageBoot {
    ImageBoot {
        name: r.name.clone(),
        base: base.to_path_buf(),
        base_sha256: sha256.to_string(),
        format,
        guest: r.guest.clone(),
        keep_overlay: false,
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
        .find(|r| r.exit_code == exit_code::BAD)
        .or_else(|| {
            outcomes
                .iter()
                .find(|r| r.exit_code == exit_code::UNDETERMINED)
        })
        .or(outcomes.first());
    record.crashed = outcomes
        .iter()
        .filter(|r| r.exit_code == exit_code::BAD)
        .count() as u32;
    let verdicts: BTreeSet<&str> = outcomes.iter().map(|r| r.verdict.as_str()).collect();
    record.flaky = verdicts.len() > 1;
    if let Some(r) = pick {
        record.verdict = r.verdict;
        record.stage = r.stage;
        record.exit_code = i32::from(r.exit_code);
        record.before_grub = r.before_grub;
        record.reason = r.reason.clone();
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
        .and_then(edk2_release_from_banner)
        .or_else(|| f.package.as_deref().map(providers::upstream_version));
    let complete = outcomes.len() == record.repeat as usize
        && outcomes.iter().all(|r| r.status == RunStatus::Complete);
    record.status = if interrupted && !complete {
        CellStatus::Interrupted
    } else if record.error.is_some()
        || !complete
        || outcomes.iter().any(|r| r.verdict == Verdict::HarnessError)
    {
        if record.error.is_none() {
            record.error = Some(record.reason.clone());
        }
        CellStatus::Error
    } else {
        CellStatus::Done
    };
}

/// `edk2-stable202302-for-qemu` -> `2023.02`; Debian's builds print an empty version.
pub fn edk2_release_from_banner(banner: &str) -> Option<String> {
    let re = regex::Regex::new(r"(?:stable)?(20\d\d)\.?(\d\d)").ok()?;
    let c = re.captures(banner.trim())?;
    Some(format!("{}.{}", &c[1], &c[2]))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edk2_banner_versions() {
        assert_eq!(
            edk2_release_from_banner("edk2-stable202302-for-qemu").as_deref(),
            Some("2023.02")
        );
        assert_eq!(edk2_release_from_banner("").as_deref(), None);
        assert_eq!(edk2_release_from_banner("  ").as_deref(), None);
    }

    #[test]
    fn concurrency_is_bounded_by_cores_and_memory() {
        let n = default_concurrency(1024);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert!(n >= 1 && n <= cores);
        // A VM bigger than the machine still gets one slot.
        assert_eq!(default_concurrency(u32::MAX / 2), 1);
    }
}
