//! `bootwatch report history DIR...`: several runs of one matrix, in time order, as one page per
//! cell's life: its verdict in every run, the first run where it changed, and which of its
//! inputs changed with it (the QEMU build, the firmware, the image and its boot-chain package
//! versions, the variable store), all read from the runs' own records.
//!
//! # `history.json` (schema `bootwatch.history/1`)
//!
//! - `name`, `description`: the matrix's (every run must be of a matrix of that name).
//! - `runs`: one per input, in the order given (oldest first): `n` (1-based), `source` (the
//!   directory or file as given), `plan_id`, `started_at` (the earliest execution's start, when
//!   known), `status`, `done`, `planned`, `regressions` (cells that regressed at this run).
//! - `cells`: every cell seen in any run (the last run's order, then cells only earlier runs
//!   had), each with `id`, `axes`, `points` (one per run: `null` when the run did not plan the
//!   cell, else `status`, `verdict`, `stage`, `category`, `exit_code`, `qemu_version`,
//!   `firmware_version`, `inputs`), `first_change` (the run number where the cell first
//!   differed from its previous run, or `null`), `changes`, `changed` (any change at all).
//! - A change (`changes[]`) compares a run with the cell's previous run (the last earlier run
//!   that planned it): `run`, `from_run`, `kind` (`regression`: was reached, now fails; `fix`;
//!   `verdict`: another verdict change; `status`: done in one, error or not run in the other;
//!   `inputs`: same verdict, other inputs), `was`, `now` (verdict names, or the status when not
//!   done), and `inputs`: each input that changed, `{input, was, now, packages}` where `input`
//!   is `qemu`, `firmware`, `image` or `vars`, `was`/`now` describe the build (version,
//!   package version, short hash) and `packages` lists the image's boot-chain packages whose
//!   version changed (`{name, old, new}`).
//! - `summary`: `cells`, `changed` (cells with any change), `regressions` (cells whose latest
//!   change is a regression), `last_run_regressions` (cells that regressed at the last run).
//!
//! Each input may be a results directory (its report is built from its files, as `report
//! merge` does), a directory holding a `matrix.json`, or a `matrix.json` file: a nightly
//! pipeline can keep just the small `matrix.json` of each night.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::core::verdict::{Stage, Verdict};
use crate::engine::record::PackageChange;
use crate::plan::matrix::model::{
    Axes, Category, CellInputs, CellRecord, CellStatus, MatrixReport,
};

pub const HISTORY_SCHEMA: &str = "bootwatch.history/1";
pub const HISTORY_JSON: &str = "history.json";
pub const HISTORY_MD: &str = "history.md";
pub const HISTORY_HTML: &str = "history.html";

/// `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub schema: String,
    pub name: String,
    pub description: String,
    pub runs: Vec<HistoryRun>,
    pub cells: Vec<CellHistory>,
    pub summary: HistorySummary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRun {
    /// 1-based, in the order given.
    pub n: usize,
    pub source: String,
    pub plan_id: String,
    pub started_at: Option<String>,
    pub status: String,
    pub planned: usize,
    pub done: usize,
    /// Cells that regressed at this run (against their previous run).
    pub regressions: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellHistory {
    pub id: String,
    pub axes: Axes,
    /// One per run; `None` where the run did not plan the cell.
    pub points: Vec<Option<Point>>,
    /// The run number where the cell first differed from its previous run.
    pub first_change: Option<usize>,
    pub changes: Vec<CellChange>,
    pub changed: bool,
}

/// A cell in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub status: CellStatus,
    pub verdict: Verdict,
    pub stage: Stage,
    pub category: Category,
    pub exit_code: u8,
    pub qemu_version: Option<String>,
    pub firmware_version: Option<String>,
    pub inputs: CellInputs,
}

/// What kind of change a cell went through between two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Regression,
    Fix,
    Verdict,
    Status,
    Inputs,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Regression => "regression",
            ChangeKind::Fix => "fix",
            ChangeKind::Verdict => "verdict",
            ChangeKind::Status => "status",
            ChangeKind::Inputs => "inputs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellChange {
    pub run: usize,
    pub from_run: usize,
    pub kind: ChangeKind,
    pub was: String,
    pub now: String,
    pub inputs: Vec<InputChange>,
}

/// One input that differs between two runs of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputChange {
    /// `qemu`, `firmware`, `image` or `vars`.
    pub input: String,
    pub was: String,
    pub now: String,
    /// For the image: its boot-chain packages whose version changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistorySummary {
    pub cells: usize,
    pub changed: usize,
    /// Cells whose latest change is a regression.
    pub regressions: usize,
    /// Cells that regressed at the last run.
    pub last_run_regressions: usize,
}

/// Reads `inputs` (results directories, directories with a `matrix.json`, or `matrix.json`
/// files; oldest first) and builds the history.
pub fn history(inputs: &[PathBuf]) -> anyhow::Result<History> {
    if inputs.len() < 2 {
        bail!("a history needs at least two runs (got {})", inputs.len());
    }
    let mut reports: Vec<(MatrixReport, &PathBuf)> = Vec::new();
    for input in inputs {
        let r = load(input)?;
        if let Some((first, first_path)) = reports.first()
            && first.name != r.name
        {
            bail!(
                "{} is matrix {:?} but {} is matrix {:?}: a history is of one matrix",
                first_path.display(),
                first.name,
                input.display(),
                r.name
            );
        }
        reports.push((r, input));
    }
    Ok(of_reports(
        &reports
            .iter()
            .map(|(r, p)| (r, p.display().to_string()))
            .collect::<Vec<_>>(),
    ))
}

/// The history of `reports` (oldest first), each with the name it is shown by.
pub fn of_reports(reports: &[(&MatrixReport, String)]) -> History {
    // Cells in the last run's order, then those only earlier runs had.
    let mut order: Vec<(String, Axes)> = Vec::new();
    for (r, _) in reports.iter().rev() {
        for c in &r.cells {
            if !order.iter().any(|(id, _)| *id == c.id) {
                order.push((c.id.clone(), c.axes.clone()));
            }
        }
    }
    let by_id: Vec<HashMap<&str, &CellRecord>> = reports
        .iter()
        .map(|(r, _)| r.cells.iter().map(|c| (c.id.as_str(), c)).collect())
        .collect();
    let mut cells = Vec::new();
    for (id, axes) in order {
        let points: Vec<Option<Point>> = by_id
            .iter()
            .map(|m| m.get(id.as_str()).map(|c| point(c)))
            .collect();
        let mut changes = Vec::new();
        let mut prev: Option<(usize, &Point)> = None;
        for (i, p) in points.iter().enumerate() {
            let Some(p) = p else { continue };
            if let Some((j, q)) = prev
                && let Some(ch) = change(q, p, j + 1, i + 1)
            {
                changes.push(ch);
            }
            prev = Some((i, p));
        }
        cells.push(CellHistory {
            id,
            axes,
            first_change: changes.first().map(|c| c.run),
            changed: !changes.is_empty(),
            points,
            changes,
        });
    }
    let regressed_at = |run: usize| {
        cells
            .iter()
            .filter(|c| {
                c.changes
                    .iter()
                    .any(|ch| ch.run == run && ch.kind == ChangeKind::Regression)
            })
            .count()
    };
    let runs: Vec<HistoryRun> = reports
        .iter()
        .enumerate()
        .map(|(i, (r, source))| HistoryRun {
            n: i + 1,
            source: source.clone(),
            plan_id: r.plan_id.clone(),
            started_at: r.executions.iter().map(|e| e.started_at.clone()).min(),
            status: r.status.clone(),
            planned: r.summary.planned,
            done: r.summary.done,
            regressions: regressed_at(i + 1),
        })
        .collect();
    let last = reports.len();
    let summary = HistorySummary {
        cells: cells.len(),
        changed: cells.iter().filter(|c| c.changed).count(),
        regressions: cells
            .iter()
            .filter(|c| {
                c.changes
                    .iter()
                    .rev()
                    .find(|ch| ch.kind != ChangeKind::Inputs)
                    .is_some_and(|ch| ch.kind == ChangeKind::Regression)
            })
            .count(),
        last_run_regressions: regressed_at(last),
    };
    let (newest, _) = reports.last().expect("at least one report");
    History {
        schema: HISTORY_SCHEMA.into(),
        name: newest.name.clone(),
        description: newest.description.clone(),
        runs,
        cells,
        summary,
    }
}

/// A results directory (built from its files), a directory with a `matrix.json`, or a
/// `matrix.json` file.
fn load(input: &Path) -> anyhow::Result<MatrixReport> {
    if input.is_dir() {
        if input.join("plan.json").is_file() {
            return super::build(input)
                .with_context(|| format!("reading the results in {}", input.display()));
        }
        let json = input.join(super::JSON_FILE);
        if json.is_file() {
            return read_report(&json);
        }
        bail!(
            "{} has neither plan.json nor matrix.json: not the results of a matrix",
            input.display()
        );
    }
    if input.is_file() {
        return read_report(input);
    }
    bail!("{} does not exist", input.display())
}

fn read_report(path: &Path) -> anyhow::Result<MatrixReport> {
    let r: MatrixReport = super::read_json(path)?;
    if r.schema != crate::plan::matrix::model::MATRIX_SCHEMA {
        bail!(
            "{}: schema {:?}, expected {:?}",
            path.display(),
            r.schema,
            crate::plan::matrix::model::MATRIX_SCHEMA
        );
    }
    Ok(r)
}

fn point(c: &CellRecord) -> Point {
    Point {
        status: c.status,
        verdict: c.outcome.verdict,
        stage: c.outcome.stage,
        category: c.category(),
        exit_code: c.outcome.exit_code,
        qemu_version: c.qemu_version.clone(),
        firmware_version: c.firmware_version.clone(),
        inputs: c.inputs.clone(),
    }
}

/// How `now` (run `run`) differs from `was` (run `from_run`), if it does.
fn change(was: &Point, now: &Point, from_run: usize, run: usize) -> Option<CellChange> {
    let label = |p: &Point| match p.status {
        CellStatus::Done => p.verdict.as_str().to_string(),
        s => s.as_str().to_string(),
    };
    let both_done = was.status == CellStatus::Done && now.status == CellStatus::Done;
    let inputs = if has_inputs(&was.inputs) && has_inputs(&now.inputs) {
        input_changes(was, now)
    } else {
        Vec::new()
    };
    let kind = if both_done {
        let (a, b) = (
            was.category == Category::Reached,
            now.category == Category::Reached,
        );
        match (a, b) {
            (true, false) => ChangeKind::Regression,
            (false, true) => ChangeKind::Fix,
            _ if was.verdict != now.verdict => ChangeKind::Verdict,
            _ if !inputs.is_empty() => ChangeKind::Inputs,
            _ => return None,
        }
    } else if was.status != now.status {
        ChangeKind::Status
    } else if !inputs.is_empty() {
        ChangeKind::Inputs
    } else {
        return None;
    };
    Some(CellChange {
        run,
        from_run,
        kind,
        was: label(was),
        now: label(now),
        inputs,
    })
}

fn has_inputs(i: &CellInputs) -> bool {
    !i.key.is_empty()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// `7.2.22 (package 1:7.2+dfsg-7+deb12u18, sha256 0123456789ab)`.
fn build_text(version: Option<&str>, package: Option<&str>, sha: &str) -> String {
    let mut parts = Vec::new();
    if let Some(p) = package {
        parts.push(format!("package {p}"));
    }
    if !sha.is_empty() {
        parts.push(format!("sha256 {}", short(sha)));
    }
    format!("{} ({})", version.unwrap_or("?"), parts.join(", "))
}

fn input_changes(was: &Point, now: &Point) -> Vec<InputChange> {
    let (a, b) = (&was.inputs, &now.inputs);
    let mut out = Vec::new();
    if a.qemu_sha256 != b.qemu_sha256 || a.qemu_package != b.qemu_package {
        out.push(InputChange {
            input: "qemu".into(),
            was: build_text(
                was.qemu_version.as_deref(),
                a.qemu_package.as_deref(),
                &a.qemu_sha256,
            ),
            now: build_text(
                now.qemu_version.as_deref(),
                b.qemu_package.as_deref(),
                &b.qemu_sha256,
            ),
            packages: Vec::new(),
        });
    }
    if a.firmware_sha256 != b.firmware_sha256 || a.firmware_package != b.firmware_package {
        out.push(InputChange {
            input: "firmware".into(),
            was: build_text(
                was.firmware_version.as_deref(),
                a.firmware_package.as_deref(),
                &a.firmware_sha256,
            ),
            now: build_text(
                now.firmware_version.as_deref(),
                b.firmware_package.as_deref(),
                &b.firmware_sha256,
            ),
            packages: Vec::new(),
        });
    }
    if a.image_sha256 != b.image_sha256 || a.image_packages != b.image_packages {
        out.push(InputChange {
            input: "image".into(),
            was: format!("sha256 {}", short(a.image_sha256.as_deref().unwrap_or("?"))),
            now: format!("sha256 {}", short(b.image_sha256.as_deref().unwrap_or("?"))),
            packages: package_changes(&a.image_packages, &b.image_packages),
        });
    }
    if a.vars_sha256 != b.vars_sha256 {
        let text = |v: &Option<String>| match v {
            Some(s) => format!("sha256 {}", short(s)),
            None => "the firmware's template".to_string(),
        };
        out.push(InputChange {
            input: "vars".into(),
            was: text(&a.vars_sha256),
            now: text(&b.vars_sha256),
            packages: Vec::new(),
        });
    }
    out
}

fn package_changes(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Vec<PackageChange> {
    crate::engine::guest::diff_packages(a, b)
}

/// Writes `history.json`, `history.md` and `history.html` into `out` (created if needed).
pub fn write(out: &Path, h: &History) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join(HISTORY_JSON);
    crate::engine::record::write_json_atomic(&json, h)
        .with_context(|| format!("writing {}", json.display()))?;
    super::write_atomic(&out.join(HISTORY_MD), markdown(h).as_bytes())?;
    super::write_atomic(&out.join(HISTORY_HTML), html(h)?.as_bytes())?;
    Ok(())
}

fn symbol(p: &Option<Point>) -> &'static str {
    match p {
        None => "·",
        Some(p) => super::markdown::symbol(p.category),
    }
}

fn change_text(ch: &CellChange) -> String {
    format!("{} → {}", ch.was, ch.now)
}

fn inputs_text(ch: &CellChange) -> Vec<String> {
    ch.inputs
        .iter()
        .map(|i| {
            let mut s = format!("{}: {} → {}", i.input, i.was, i.now);
            if !i.packages.is_empty() {
                let p: Vec<String> = i
                    .packages
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {} → {}",
                            p.name,
                            p.old.as_deref().unwrap_or("(none)"),
                            p.new.as_deref().unwrap_or("(none)")
                        )
                    })
                    .collect();
                s.push_str(&format!(" [{}]", p.join(", ")));
            }
            s
        })
        .collect()
}

/// `history.md`: the runs, then every change (the first one of each cell marked), then every
/// cell's verdicts across the runs.
pub fn markdown(h: &History) -> String {
    use super::markdown::md;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### bootwatch matrix history: {} ({} runs)\n",
        md(&h.name, 200),
        h.runs.len()
    );
    let _ = writeln!(
        out,
        "{} cells, {} changed, {} regressed at the last run.\n",
        h.summary.cells, h.summary.changed, h.summary.last_run_regressions
    );
    let _ = writeln!(out, "| run | source | started | done | regressions |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for r in &h.runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} of {} | {} |",
            r.n,
            md(&r.source, 200),
            md(r.started_at.as_deref().unwrap_or("?"), 40),
            r.done,
            r.planned,
            r.regressions
        );
    }
    out.push('\n');
    let changed: Vec<&CellHistory> = h.cells.iter().filter(|c| c.changed).collect();
    if changed.is_empty() {
        let _ = writeln!(out, "No cell changed across these runs.\n");
    } else {
        let _ = writeln!(out, "Changes (each against the cell's previous run):\n");
        let _ = writeln!(out, "| cell | run | kind | verdict | inputs that changed |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for c in &changed {
            for ch in &c.changes {
                let first = if c.first_change == Some(ch.run) {
                    " (first change)"
                } else {
                    ""
                };
                let inputs = inputs_text(ch);
                let _ = writeln!(
                    out,
                    "| {} | {} (from {}){first} | {} | {} | {} |",
                    md(&c.axes.label(), 300),
                    ch.run,
                    ch.from_run,
                    ch.kind.as_str(),
                    md(&change_text(ch), 100),
                    if inputs.is_empty() {
                        "none recorded".to_string()
                    } else {
                        md(&inputs.join("; "), 600)
                    }
                );
            }
        }
        out.push('\n');
    }
    let _ = write!(out, "| cell |");
    for r in &h.runs {
        let _ = write!(out, " {} |", r.n);
    }
    out.push('\n');
    let _ = write!(out, "| --- |");
    for _ in &h.runs {
        out.push_str(" --- |");
    }
    out.push('\n');
    for c in &h.cells {
        let _ = write!(out, "| {} |", md(&c.axes.label(), 300));
        for p in &c.points {
            let text = match p {
                None => "·".to_string(),
                Some(q) => format!("{} {}", symbol(p), q.verdict.as_str()),
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "✅ reached · ❌ synchronous exception · 💥 kernel panic · ⏳ hang/timeout · ⚠️ other failure · ❔ harness error · ⬜ not run · · not in that run"
    );
    out
}

const TEMPLATE: &str = include_str!("templates/history.html.j2");

/// `history.html`: the same as the Markdown page, self-contained, guest text escaped.
pub fn html(h: &History) -> anyhow::Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("history.html", TEMPLATE)
        .context("loading the history.html template")?;
    let cells: Vec<serde_json::Value> = h
        .cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "label": super::one_line(&c.axes.label(), 300),
                "id": c.id,
                "first_change": c.first_change,
                "points": c.points.iter().map(|p| match p {
                    None => serde_json::json!({"symbol": "·", "verdict": "not in this run", "category": "absent"}),
                    Some(q) => serde_json::json!({
                        "symbol": symbol(p),
                        "verdict": q.verdict.as_str(),
                        "category": serde_json::to_value(q.category).unwrap_or_default(),
                    }),
                }).collect::<Vec<_>>(),
                "changes": c.changes.iter().map(|ch| serde_json::json!({
                    "run": ch.run,
                    "from_run": ch.from_run,
                    "kind": ch.kind.as_str(),
                    "first": c.first_change == Some(ch.run),
                    "text": super::one_line(&change_text(ch), 200),
                    "inputs": inputs_text(ch).iter().map(|s| super::one_line(s, 600)).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ctx = serde_json::json!({
        "name": super::one_line(&h.name, 200),
        "description": super::one_line(&h.description, 1000),
        "runs": h.runs.iter().map(|r| serde_json::json!({
            "n": r.n,
            "source": super::one_line(&r.source, 300),
            "started_at": r.started_at.clone().unwrap_or_else(|| "?".into()),
            "done": r.done,
            "planned": r.planned,
            "regressions": r.regressions,
        })).collect::<Vec<_>>(),
        "cells": cells,
        "summary": h.summary,
    });
    env.get_template("history.html")?
        .render(super::html::to_value(&ctx))
        .context("rendering history.html")
}
