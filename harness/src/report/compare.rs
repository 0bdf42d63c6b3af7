//! Comparison with a baseline matrix (`--baseline DIR|matrix.json`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};

use crate::plan::matrix::model::{
    Category, CellRecord, CellStatus, Change, Comparison, MATRIX_SCHEMA, MatrixReport,
};

/// Fills `report.comparison` against `baseline`: a results directory (its `plan.json` and cells
/// are read with [`super::build`]; a directory with only a `matrix.json` works too) or a
/// `matrix.json` file. Cells are matched by id. Only cells `done` on both sides are compared:
/// `regressions` were reached and now fail, `fixes` failed and are now reached, `changed` are
/// the other verdict changes. `new_cells` / `missing_cells` are ids planned on one side only.
pub fn compare(report: &mut MatrixReport, baseline: &Path) -> anyhow::Result<()> {
    let base = load(baseline)?;
    report.comparison = Some(diff(&base, report, &baseline.display().to_string()));
    Ok(())
}

fn load(baseline: &Path) -> anyhow::Result<MatrixReport> {
    if baseline.is_dir() {
        if baseline.join("plan.json").is_file() {
            return super::build(baseline)
                .with_context(|| format!("reading the baseline {}", baseline.display()));
        }
        let json = baseline.join(super::JSON_FILE);
        if json.is_file() {
            return read_report(&json);
        }
        bail!(
            "baseline {} has neither plan.json nor matrix.json",
            baseline.display()
        );
    }
    if baseline.is_file() {
        return read_report(baseline);
    }
    bail!("baseline {} does not exist", baseline.display())
}

fn read_report(path: &Path) -> anyhow::Result<MatrixReport> {
    let report: MatrixReport = super::read_json(path)
        .with_context(|| format!("reading the baseline {}", path.display()))?;
    if report.schema != MATRIX_SCHEMA {
        bail!(
            "baseline {}: schema {:?}, expected {MATRIX_SCHEMA:?}",
            path.display(),
            report.schema
        );
    }
    Ok(report)
}

fn diff(base: &MatrixReport, now: &MatrixReport, baseline: &str) -> Comparison {
    let before: HashMap<&str, &CellRecord> =
        base.cells.iter().map(|c| (c.id.as_str(), c)).collect();
    let current: HashSet<&str> = now.cells.iter().map(|c| c.id.as_str()).collect();
    let mut cmp = Comparison {
        baseline: baseline.to_string(),
        regressions: Vec::new(),
        fixes: Vec::new(),
        changed: Vec::new(),
        new_cells: Vec::new(),
        missing_cells: base
            .cells
            .iter()
            .filter(|c| !current.contains(c.id.as_str()))
            .map(|c| c.id.clone())
            .collect(),
    };
    for c in &now.cells {
        let Some(was) = before.get(c.id.as_str()) else {
            cmp.new_cells.push(c.id.clone());
            continue;
        };
        if was.status != CellStatus::Done || c.status != CellStatus::Done {
            continue;
        }
        let change = Change {
            id: c.id.clone(),
            axes: c.axes.clone(),
            was: was.outcome.verdict,
            now: c.outcome.verdict,
        };
        let was_ok = was.category() == Category::Reached;
        let now_ok = c.category() == Category::Reached;
        match (was_ok, now_ok) {
            (true, false) => cmp.regressions.push(change),
            (false, true) => cmp.fixes.push(change),
            _ if was.outcome.verdict != c.outcome.verdict => cmp.changed.push(change),
            _ => {}
        }
    }
    cmp
}
