//! Reports built from a matrix results directory, from its files only (`plan.json`, every
//! `execution*.json`, `cells/<id>/cell.json`), so an unsharded run and a merge of its shards give
//! the same report: `matrix.json`, `matrix.xml` (JUnit), `matrix.md` (a table for an upstream
//! issue) and `matrix.html` (one self-contained page: the grid, filters, legend, comparison).
//!
//! # `matrix.json` (schema `bootwatch.matrix/1`)
//!
//! The serde form of [`MatrixReport`]:
//!
//! - `schema`: `"bootwatch.matrix/1"`.
//! - `name`, `description`, `matrix_file`: from the plan (the matrix file as given).
//! - `plan_id`: the plan's hash; shards of one matrix share it.
//! - `axes`: `[{name, values}]`, the five axes (`image`, `qemu`, `firmware`, `cpu`, `vars`) in
//!   that order, each with its values in matrix-file order.
//! - `target`: `grub`, `kernel` or `login`. `repeat`: runs per cell.
//! - `status`: `complete` when every planned cell is `done` or `error`, else `partial`.
//! - `executions`: the `execution*.json` files the cells came from (`shard`, `concurrency`,
//!   `started_at`, `wall_s`, `prepare_s`, `cells`, `resumed`, `interrupted`, `host`,
//!   `bootwatch_version`), unsharded first, then shards in order.
//! - `summary`: `planned`, `done`, `errors`, `not_run` (not-run and interrupted cells), `flaky`
//!   (done cells whose runs disagreed), `by_verdict` (done cells per verdict name).
//! - `timing`: `wall_s` (sum of the executions' wall times), `prepare_s` (of which resolving
//!   providers and images before the first cell: tree builds, downloads, an image's upgrade),
//!   `cells_s` (sum of the cells' durations), `overhead_s` (sum of the cells' time outside QEMU),
//!   `overhead_fraction` (`overhead_s / cells_s`), `efficiency` (duration of the cells the
//!   executions ran themselves, i.e. not resumed, over the sum of `(wall_s - prepare_s) *
//!   concurrency`; 1.0 = the VM slots never idled while cells ran).
//!   Seconds, rounded to milliseconds; 0 when undefined.
//! - `comparison`: `null`, or (after `--baseline`) `{baseline, regressions, fixes, changed,
//!   new_cells, missing_cells}`: `regressions` were reached and now fail, `fixes` failed and are
//!   now reached, `changed` are other verdict changes, each `{id, axes, was, now}`; only cells
//!   `done` in both are compared; `new_cells` / `missing_cells` are ids planned in only one.
//! - `cells`: every planned cell in plan order, each a `cell.json` (`id`, `index`, `axes`,
//!   `status` (`done`, `error`, `interrupted`, `not-run`), `qemu_version`, `firmware_version`,
//!   `firmware_banner`, `verdict`, `stage`, `exit_code`, `before_grub`, `exception`, `reason`,
//!   `repeat`, `crashed`, `flaky`, `runs` (`n`, `dir` relative to the results directory,
//!   `verdict`, `stage`, `exit_code`, `time_to_verdict_s`, `duration_s`, `qemu_s`), `inputs`,
//!   `duration_s`, `overhead_s`, `error`, and for a done cell whose guest failed `explanation`:
//!   `run` (the run explained, under the cell), `families` (`id`, `title`, `confidence`,
//!   `level`; empty: no known family), `undecided` (ids), `error`, `explain_s`). A planned cell
//!   without a `cell.json` has status
//!   `not-run`, verdict `harness-error`, stage `none`, exit code 125, no runs and zero times.
//!
//! Text that comes from the guest (`exception`, `reason`) is untrusted: every report escapes it
//! for its format, and control characters are shown as `\xNN`.

pub mod bundle;
mod compare;
mod grid;
pub mod history;
mod html;
mod junit;
mod markdown;
mod merge;
pub mod redact;

/// Guest text made safe for a Markdown table cell (also used by `bisect.md`).
pub use markdown::md;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::engine::qmp::round_ms;
use crate::plan::matrix::model::{
    CELL_SCHEMA, CellRecord, CellStatus, EXECUTION_SCHEMA, Execution, MATRIX_SCHEMA, MatrixReport,
    PLAN_SCHEMA, Plan, PlannedCell, Summary, Timing,
};

pub use compare::compare;
pub use merge::merge;

/// The report files `write_all` writes, relative to the results directory.
pub const JSON_FILE: &str = "matrix.json";
pub const JUNIT_FILE: &str = "matrix.xml";
pub const MARKDOWN_FILE: &str = "matrix.md";
pub const HTML_FILE: &str = "matrix.html";

/// Reads `DIR/plan.json`, every `DIR/execution*.json` and `DIR/cells/*/cell.json` and returns
/// the report: every planned cell in plan order (planned cells without a `cell.json` are
/// `not-run`), the summary, timing, and `status`. Cells whose id is not in the plan are ignored.
pub fn build(dir: &Path) -> anyhow::Result<MatrixReport> {
    let plan = read_plan(dir)?;
    let executions = read_executions(dir, &plan)?;
    let mut records = read_cells(dir, &plan)?;
    let cells: Vec<CellRecord> = plan
        .cells
        .iter()
        .map(|p| {
            records
                .remove(&p.id)
                .unwrap_or_else(|| CellRecord::not_run(p, plan.repeat))
        })
        .collect();
    let summary = summarize(&cells);
    let timing = timing(&executions, &cells);
    let complete = cells
        .iter()
        .all(|c| matches!(c.status, CellStatus::Done | CellStatus::Error));
    Ok(MatrixReport {
        schema: MATRIX_SCHEMA.to_string(),
        name: plan.name,
        description: plan.description,
        matrix_file: plan.matrix_file,
        plan_id: plan.plan_id,
        axes: plan.axes,
        target: plan.target,
        repeat: plan.repeat,
        status: if complete { "complete" } else { "partial" }.to_string(),
        executions,
        summary,
        timing,
        comparison: None,
        cells,
    })
}

/// Writes `DIR/matrix.json`, `DIR/matrix.xml`, `DIR/matrix.md` and `DIR/matrix.html`, each
/// atomically.
pub fn write_all(dir: &Path, report: &MatrixReport) -> anyhow::Result<()> {
    let json = dir.join(JSON_FILE);
    crate::engine::record::write_json_atomic(&json, report)
        .with_context(|| format!("writing {}", json.display()))?;
    write_atomic(&dir.join(JUNIT_FILE), junit::render(report)?.as_bytes())?;
    write_atomic(
        &dir.join(MARKDOWN_FILE),
        markdown::render(report).as_bytes(),
    )?;
    write_atomic(&dir.join(HTML_FILE), html::render(report)?.as_bytes())?;
    Ok(())
}

/// Renders `matrix.xml` (JUnit) without writing it.
pub fn render_junit(report: &MatrixReport) -> anyhow::Result<String> {
    junit::render(report)
}

/// Renders `matrix.md` without writing it.
pub fn render_markdown(report: &MatrixReport) -> String {
    markdown::render(report)
}

/// Renders `matrix.html` without writing it.
pub fn render_html(report: &MatrixReport) -> anyhow::Result<String> {
    html::render(report)
}

/// The cells-only view: the report as JSON without what depends on how it was executed
/// (`executions`, `timing`, and the cells' and runs' `duration_s`, `overhead_s`, `qemu_s`,
/// `time_to_verdict_s`, the explanations' `explain_s`, and the build paths in `inputs`). Shards merged and one unsharded run of the same cells compare equal.
pub fn comparable(report: &MatrixReport) -> serde_json::Value {
    let mut v = serde_json::to_value(report).expect("a MatrixReport always serializes");
    if let Some(obj) = v.as_object_mut() {
        obj.remove("executions");
        obj.remove("timing");
    }
    if let Some(cells) = v.get_mut("cells").and_then(|c| c.as_array_mut()) {
        for cell in cells.iter_mut().filter_map(|c| c.as_object_mut()) {
            cell.remove("duration_s");
            cell.remove("overhead_s");
            cell.remove("time_to_verdict_s");
            if let Some(x) = cell.get_mut("explanation").and_then(|x| x.as_object_mut()) {
                x.remove("explain_s");
            }
            // Where the builds sit differs between machines; their hashes do not.
            if let Some(inputs) = cell.get_mut("inputs").and_then(|i| i.as_object_mut()) {
                inputs.remove("qemu_binary");
                inputs.remove("firmware_code");
            }
            if let Some(runs) = cell.get_mut("runs").and_then(|r| r.as_array_mut()) {
                for run in runs.iter_mut().filter_map(|r| r.as_object_mut()) {
                    run.remove("duration_s");
                    run.remove("qemu_s");
                    run.remove("time_to_verdict_s");
                }
            }
        }
    }
    v
}

/// The largest record file a report reads (a plan of 10,000 cells is a few MiB).
const RECORD_LIMIT: u64 = 64 << 20;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    // Results directories may come from elsewhere (`report merge`): a record is small.
    let text = crate::sys::fsx::read_input(path, RECORD_LIMIT)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) fn read_plan(dir: &Path) -> anyhow::Result<Plan> {
    let path = dir.join("plan.json");
    if !path.is_file() {
        bail!(
            "{} is not a matrix results directory: it has no plan.json",
            dir.display()
        );
    }
    let plan: Plan = read_json(&path)?;
    if plan.schema != PLAN_SCHEMA {
        bail!(
            "{}: schema {:?}, expected {PLAN_SCHEMA:?}",
            path.display(),
            plan.schema
        );
    }
    Ok(plan)
}

/// The `execution*.json` files of a directory, sorted by name.
pub(crate) fn execution_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("execution") && name.ends_with(".json") && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn read_execution(path: &Path, plan_id: &str) -> anyhow::Result<Execution> {
    let e: Execution = read_json(path)?;
    if e.schema != EXECUTION_SCHEMA {
        bail!(
            "{}: schema {:?}, expected {EXECUTION_SCHEMA:?}",
            path.display(),
            e.schema
        );
    }
    if e.plan_id != plan_id {
        bail!(
            "{} belongs to plan {}, but plan.json is plan {plan_id}",
            path.display(),
            e.plan_id
        );
    }
    Ok(e)
}

fn read_executions(dir: &Path, plan: &Plan) -> anyhow::Result<Vec<Execution>> {
    let mut executions = Vec::new();
    for path in execution_files(dir)? {
        executions.push(read_execution(&path, &plan.plan_id)?);
    }
    // Unsharded first, then shards by index; ties by start time (the file order is kept last).
    executions.sort_by(|a, b| {
        shard_index(a)
            .cmp(&shard_index(b))
            .then_with(|| a.started_at.cmp(&b.started_at))
    });
    Ok(executions)
}

fn shard_index(e: &Execution) -> (u64, u64) {
    let Some(shard) = &e.shard else { return (0, 0) };
    let mut parts = shard.splitn(2, '/');
    let k = parts.next().and_then(|k| k.trim().parse().ok());
    let n = parts.next().and_then(|n| n.trim().parse().ok());
    (k.unwrap_or(u64::MAX), n.unwrap_or(u64::MAX))
}

/// `cells/<id>/cell.json` of the planned cells, checked against the plan.
pub(crate) fn read_cells(dir: &Path, plan: &Plan) -> anyhow::Result<HashMap<String, CellRecord>> {
    let planned: HashMap<&str, &PlannedCell> =
        plan.cells.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut records = HashMap::new();
    let cells_dir = dir.join("cells");
    if !cells_dir.is_dir() {
        return Ok(records);
    }
    for entry in
        std::fs::read_dir(&cells_dir).with_context(|| format!("reading {}", cells_dir.display()))?
    {
        let entry = entry?;
        let Some(id) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(planned) = planned.get(id.as_str()) else {
            continue;
        };
        let path = entry.path().join("cell.json");
        if !path.is_file() {
            continue;
        }
        let record = read_cell(&path, planned)?;
        records.insert(id, record);
    }
    Ok(records)
}

pub(crate) fn read_cell(path: &Path, planned: &PlannedCell) -> anyhow::Result<CellRecord> {
    let mut record: CellRecord = read_json(path)?;
    if record.schema != CELL_SCHEMA {
        bail!(
            "{}: schema {:?}, expected {CELL_SCHEMA:?}",
            path.display(),
            record.schema
        );
    }
    if record.id != planned.id || record.axes != planned.axes {
        bail!(
            "{}: cell {} ({}) does not match the plan's cell {} ({})",
            path.display(),
            record.id,
            record.axes.canonical(),
            planned.id,
            planned.axes.canonical()
        );
    }
    // The position is the plan's: a cell kept from before the matrix file was edited may have
    // had another.
    record.index = planned.index;
    Ok(record)
}

fn summarize(cells: &[CellRecord]) -> Summary {
    let mut s = Summary {
        planned: cells.len(),
        ..Summary::default()
    };
    let mut by_verdict = BTreeMap::new();
    for c in cells {
        match c.status {
            CellStatus::Done => {
                s.done += 1;
                if c.flaky {
                    s.flaky += 1;
                }
                *by_verdict
                    .entry(c.outcome.verdict.as_str().to_string())
                    .or_insert(0) += 1;
            }
            CellStatus::Error => s.errors += 1,
            CellStatus::NotRun | CellStatus::Interrupted => s.not_run += 1,
        }
    }
    s.by_verdict = by_verdict;
    s
}

fn timing(executions: &[Execution], cells: &[CellRecord]) -> Timing {
    let wall_s: f64 = executions.iter().map(|e| e.wall_s).sum();
    let slots_s: f64 = executions
        .iter()
        .map(|e| (e.wall_s - e.prepare_s).max(0.0) * e.concurrency.max(1) as f64)
        .sum();
    let prepare_s: f64 = executions.iter().map(|e| e.prepare_s).sum();
    let ran = |c: &&CellRecord| c.status != CellStatus::NotRun;
    let cells_s: f64 = cells.iter().filter(ran).map(|c| c.duration_s).sum();
    let overhead_s: f64 = cells.iter().filter(ran).map(|c| c.overhead_s).sum();
    let resumed: std::collections::HashSet<&str> = executions
        .iter()
        .flat_map(|e| e.resumed.iter().map(String::as_str))
        .collect();
    let executed_s: f64 = cells
        .iter()
        .filter(ran)
        .filter(|c| !resumed.contains(c.id.as_str()))
        .map(|c| c.duration_s)
        .sum();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Timing {
        wall_s: round_ms(wall_s),
        prepare_s: round_ms(prepare_s),
        cells_s: round_ms(cells_s),
        overhead_s: round_ms(overhead_s),
        overhead_fraction: round_ms(ratio(overhead_s, cells_s)),
        efficiency: round_ms(ratio(executed_s, slots_s)),
    }
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(crate::sys::fsx::write_atomic(path, bytes)?)
}

/// Untrusted text made printable: control characters other than newline and tab (and the
/// characters XML cannot carry) become visible `\xNN` / `\u{NNNN}` escapes.
pub(crate) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}') => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `printable` on one line (newlines and tabs become spaces, runs of spaces collapse) and cut
/// to `max` characters.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let p = printable(s);
    let joined = p.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// The line a cell is known by in the reports: the exception line, the error, or the reason.
pub(crate) fn evidence(c: &CellRecord) -> String {
    match c.status {
        CellStatus::Error => c.error.clone().unwrap_or_else(|| c.outcome.reason.clone()),
        CellStatus::NotRun => "not run".to_string(),
        CellStatus::Interrupted => "interrupted".to_string(),
        CellStatus::Done => c
            .exception
            .clone()
            .unwrap_or_else(|| c.outcome.reason.clone()),
    }
}

/// The verdict as the reports show it: `sync-exception`, `error`, `not run`, with "k of N
/// crashed" when the cell ran more than once and crashed at least once.
pub(crate) fn verdict_text(c: &CellRecord) -> String {
    let mut s = verdict_text_short(c);
    if let Some(k) = crash_ratio(c) {
        s.push_str(&format!(" ({k} crashed)"));
    }
    s
}

/// The verdict name, or `error`, `not run`, `interrupted` for cells that have none.
pub(crate) fn verdict_text_short(c: &CellRecord) -> String {
    match c.status {
        CellStatus::Error => "error",
        CellStatus::NotRun => "not run",
        CellStatus::Interrupted => "interrupted",
        CellStatus::Done => c.outcome.verdict.as_str(),
    }
    .to_string()
}

/// `k of N` when the cell ran more than once and `k` > 0 runs crashed.
pub(crate) fn crash_ratio(c: &CellRecord) -> Option<String> {
    let n = if c.runs.is_empty() {
        c.repeat as usize
    } else {
        c.runs.len()
    };
    (n > 1 && c.crashed > 0).then(|| format!("{} of {n}", c.crashed))
}

/// The relative directory of a run, as recorded when it is a plain relative path, else the
/// standard `cells/<id>/run-<n>`.
pub(crate) fn run_dir(c: &CellRecord, run: &crate::plan::matrix::model::CellRun) -> String {
    let recorded = Path::new(&run.dir);
    let plain = !run.dir.is_empty()
        && !run.dir.contains(':')
        && !run.dir.contains('\\')
        && recorded
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    let plain = plain
        && run
            .dir
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "/-_.+@".contains(ch));
    if plain {
        run.dir.clone()
    } else {
        format!("cells/{}/run-{}", safe_id(&c.id), run.n)
    }
}

/// The id as used in paths: hash ids are already safe; anything else is reduced to safe chars.
pub(crate) fn safe_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The run whose verdict is the cell's (the one worth opening first).
pub(crate) fn worst_run(c: &CellRecord) -> Option<&crate::plan::matrix::model::CellRun> {
    c.runs
        .iter()
        .find(|r| r.outcome.verdict == c.outcome.verdict)
        .or_else(|| c.runs.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_controls() {
        assert_eq!(
            printable("a\x1b[31mb\x00\u{fffe}\n"),
            "a\\x1b[31mb\\x00\\u{fffe}\n"
        );
        assert_eq!(one_line("a\n  b\tc", 80), "a b c");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
