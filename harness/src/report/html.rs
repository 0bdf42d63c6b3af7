//! `matrix.html`: one static, self-contained page (inline CSS and JS, no external URL): the
//! matrix as a coloured grid with filters, a legend, the summary, the comparison with a baseline
//! and every cell's details. Guest text is untrusted: the template is autoescaped (its name ends
//! in `.html`), nothing is marked safe, and the script reads values only from the DOM.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::json;

use super::grid::{COLUMN_AXES, Grid};
use super::{crash_ratio, evidence, one_line, printable, run_dir, verdict_text, worst_run};
use crate::plan::matrix::model::{AXES, Category, CellRecord, CellStatus, Change, MatrixReport};

const TEMPLATE: &str = include_str!("templates/matrix.html.j2");

pub fn render(report: &MatrixReport) -> anyhow::Result<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_template("matrix.html", TEMPLATE)
        .context("loading the matrix.html template")?;
    let tmpl = env.get_template("matrix.html")?;
    let ctx = to_value(&context(report));
    tmpl.render(ctx).context("rendering matrix.html")
}

/// Everything the template shows, precomputed (the template only lays it out).
fn context(report: &MatrixReport) -> serde_json::Value {
    let grid = Grid::of(report);
    let changes = change_marks(report);

    let cell = |i: usize, col: Option<usize>| cell_view(&report.cells[i], col, &changes);

    let groups: Vec<serde_json::Value> = grid
        .qemu_groups()
        .into_iter()
        .enumerate()
        .map(|(g, (qemu, span))| json!({"index": g, "qemu": qemu, "span": span}))
        .collect();
    let mut group_of = Vec::new();
    for (g, (_, span)) in grid.qemu_groups().into_iter().enumerate() {
        group_of.extend(std::iter::repeat_n(g, span));
    }
    let cols: Vec<serde_json::Value> = grid
        .cols
        .iter()
        .enumerate()
        .map(|(i, [qemu, firmware])| {
            json!({"index": i, "group": group_of[i], "qemu": qemu, "firmware": firmware})
        })
        .collect();
    let rows: Vec<serde_json::Value> = grid
        .rows
        .iter()
        .enumerate()
        .map(|(r, key)| {
            let slots: Vec<serde_json::Value> = grid.cells[r]
                .iter()
                .enumerate()
                .map(|(col, slot)| match slot {
                    Some(i) => cell(*i, Some(col)),
                    None => json!({"empty": true, "col": col}),
                })
                .collect();
            json!({"values": key, "slots": slots})
        })
        .collect();

    let filters: Vec<serde_json::Value> = report
        .axes
        .iter()
        .filter(|a| a.values.len() > 1)
        .map(|a| json!({"axis": a.name, "values": a.values}))
        .collect();
    let fixed: Vec<serde_json::Value> = grid
        .fixed
        .iter()
        .map(|(a, v)| json!({"axis": a, "value": v}))
        .collect();
    let detail_axes: Vec<&str> = AXES
        .iter()
        .copied()
        .filter(|a| !grid.fixed.iter().any(|(f, _)| f == a))
        .collect();

    let s = &report.summary;
    let t = &report.timing;
    let by_verdict: Vec<serde_json::Value> = s
        .by_verdict
        .iter()
        .map(|(v, n)| json!({"verdict": v, "n": n}))
        .collect();
    let executions: Vec<serde_json::Value> = report
        .executions
        .iter()
        .map(|e| {
            json!({
                "shard": e.shard.clone().unwrap_or_else(|| "all".to_string()),
                "host": e.host,
                "started_at": e.started_at,
                "concurrency": e.concurrency,
                "wall": format!("{:.1} s", e.wall_s),
                "cells": e.cells.len(),
                "resumed": e.resumed.len(),
                "interrupted": e.interrupted,
                "version": e.bootwatch_version,
            })
        })
        .collect();
    let comparison = report.comparison.as_ref().map(|c| {
        let list = |l: &[Change]| -> Vec<serde_json::Value> {
            l.iter()
                .map(|ch| {
                    json!({
                        "id": ch.id,
                        "label": ch.axes.label(),
                        "was": ch.was.as_str(),
                        "now": ch.now.as_str(),
                    })
                })
                .collect()
        };
        json!({
            "baseline": c.baseline,
            "regressions": list(&c.regressions),
            "fixes": list(&c.fixes),
            "changed": list(&c.changed),
            "new_cells": c.new_cells,
            "missing_cells": c.missing_cells,
        })
    });
    let legend: Vec<serde_json::Value> = [
        (Category::Reached, "reached"),
        (Category::SyncException, "synchronous exception"),
        (Category::Panic, "kernel panic"),
        (Category::Hang, "hang / timeout"),
        (Category::Failure, "other guest failure"),
        (Category::Error, "harness error"),
        (Category::NotRun, "not run"),
    ]
    .into_iter()
    .map(|(c, label)| json!({"category": category_name(c), "label": label}))
    .collect();

    json!({
        "name": one_line(&report.name, 200),
        "description": printable(&report.description),
        "matrix_file": report.matrix_file,
        "plan_id": report.plan_id,
        "target": report.target,
        "repeat": report.repeat,
        "status": report.status,
        "summary": {
            "planned": s.planned,
            "done": s.done,
            "errors": s.errors,
            "not_run": s.not_run,
            "flaky": s.flaky,
            "by_verdict": by_verdict,
        },
        "timing": {
            "wall": format!("{:.1} s", t.wall_s),
            "cells": format!("{:.1} s", t.cells_s),
            "overhead": format!("{:.1} s ({:.0}%)", t.overhead_s, t.overhead_fraction * 100.0),
            "efficiency": format!("{:.0}%", t.efficiency * 100.0),
        },
        "executions": executions,
        "fixed": fixed,
        "filters": filters,
        "axes": AXES,
        "row_axes": grid.row_axes,
        "column_axes": COLUMN_AXES,
        "groups": groups,
        "cols": cols,
        "rows": rows,
        "detail_axes": detail_axes,
        "cells": (0..report.cells.len()).map(|i| cell(i, None)).collect::<Vec<_>>(),
        "legend": legend,
        "comparison": comparison,
    })
}

fn cell_view(
    c: &CellRecord,
    col: Option<usize>,
    changes: &HashMap<&str, &'static str>,
) -> serde_json::Value {
    let verdict = match c.status {
        CellStatus::Done => c.outcome.verdict.as_str(),
        CellStatus::Error => "error",
        CellStatus::NotRun => "not-run",
        CellStatus::Interrupted => "interrupted",
    };
    let status = serde_json::to_value(c.status).unwrap_or_default();
    let links = |run: &crate::plan::matrix::model::CellRun| {
        let dir = run_dir(c, run);
        (format!("{dir}/console.log"), format!("{dir}/result.json"))
    };
    let (log, result) = match worst_run(c) {
        Some(run) => {
            let (l, r) = links(run);
            (Some(l), Some(r))
        }
        None => (None, None),
    };
    let runs: Vec<serde_json::Value> = c
        .runs
        .iter()
        .map(|run| {
            let (l, r) = links(run);
            json!({
                "n": run.n,
                "verdict": run.outcome.verdict.as_str(),
                "stage": run.outcome.stage.as_str(),
                "log": l,
                "result": r,
            })
        })
        .collect();
    let axes: Vec<serde_json::Value> = AXES
        .iter()
        .map(|a| json!({"axis": a, "value": c.axes.get(a).unwrap_or_default()}))
        .collect();
    let axis_values: BTreeMap<&str, &str> = AXES
        .iter()
        .map(|a| (*a, c.axes.get(a).unwrap_or_default()))
        .collect();
    json!({
        "empty": false,
        "col": col,
        "id": c.id,
        "status": status,
        "verdict": verdict,
        "verdict_text": verdict_text(c),
        "category": category_name(c.category()),
        "stage": c.outcome.stage.as_str(),
        "ran": c.status == CellStatus::Done,
        "qemu_version": c.qemu_version.as_deref().unwrap_or("?"),
        "firmware_version": c.firmware_version.as_deref().unwrap_or("?"),
        "ratio": crash_ratio(c).filter(|_| c.flaky).map(|k| k.replace(" of ", "/")),
        "flaky": c.flaky,
        "axes": axes,
        "axis": axis_values,
        "label": c.axes.label(),
        "evidence": printable(&evidence(c)),
        "evidence_short": one_line(&evidence(c), 160),
        "evidence_cell": one_line(&evidence(c), 64),
        "show_evidence": c.status == CellStatus::Error
            || (c.status == CellStatus::Done && c.category() != Category::Reached),
        "versions_known": c.qemu_version.is_some() || c.firmware_version.is_some(),
        "log": log,
        "result": result,
        "runs": runs,
        "change": changes.get(c.id.as_str()).copied(),
        "explanation": c.explanation.as_ref().map(|x| one_line(&x.text(), 300)),
        "explanation_cell": c.explanation.as_ref().map(|x| one_line(&x.text(), 64)),
        "duration": format!("{:.1} s", c.duration_s),
    })
}

/// Cells that changed against the baseline: `regression`, `fix` or `changed`.
fn change_marks(report: &MatrixReport) -> HashMap<&str, &'static str> {
    let mut marks = HashMap::new();
    if let Some(c) = &report.comparison {
        for (list, mark) in [
            (&c.changed, "changed"),
            (&c.fixes, "fix"),
            (&c.regressions, "regression"),
        ] {
            for ch in list {
                marks.insert(ch.id.as_str(), mark);
            }
        }
    }
    marks
}

fn category_name(c: Category) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// serde_json -> minijinja (minijinja is built without its serde feature).
pub(crate) fn to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => a.iter().map(to_value).collect(),
        serde_json::Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}
