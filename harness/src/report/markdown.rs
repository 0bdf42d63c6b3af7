//! `matrix.md`: tables ready to paste into an upstream issue (GitHub-flavoured Markdown).

use std::fmt::Write;

use super::grid::Grid;
use super::{crash_ratio, evidence, one_line, verdict_text};
use crate::plan::matrix::model::{AXES, Category, CellRecord, Change, MatrixReport};

/// Longest evidence text in a table cell.
const EVIDENCE_MAX: usize = 200;

pub fn render(report: &MatrixReport) -> String {
    let grid = Grid::of(report);
    let mut out = String::new();
    let _ = writeln!(out, "### bootwatch matrix: {}", md(&report.name, 200));
    out.push('\n');
    if !report.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", md(&report.description, 1000));
    }
    let mut facts = vec![
        format!("target {}", md(&report.target, 40)),
        format!("repeat {}", report.repeat),
        format!("{} cells", report.cells.len()),
        format!("status {}", report.status),
    ];
    for (axis, value) in &grid.fixed {
        facts.push(format!("{axis} {}", md(value, 100)));
    }
    let _ = writeln!(out, "{}.\n", facts.join(", "));

    // The full table: the varying axes, then versions and the outcome.
    let axes: Vec<&str> = AXES
        .iter()
        .copied()
        .filter(|a| !grid.fixed.iter().any(|(f, _)| f == a))
        .collect();
    let mut header: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
    header.extend(
        [
            "QEMU version",
            "firmware version",
            "verdict",
            "stage",
            "evidence",
        ]
        .map(String::from),
    );
    table_header(&mut out, &header);
    for c in &report.cells {
        let mut row: Vec<String> = axes
            .iter()
            .map(|a| md(c.axes.get(a).unwrap_or_default(), 100))
            .collect();
        row.push(md(c.qemu_version.as_deref().unwrap_or("?"), 60));
        row.push(md(c.firmware_version.as_deref().unwrap_or("?"), 60));
        row.push(format!(
            "{} {}",
            symbol(c.category()),
            md(&verdict_text(c), 100)
        ));
        row.push(c.outcome.stage.as_str().to_string());
        row.push(md(&evidence(c), EVIDENCE_MAX));
        table_row(&mut out, &row);
    }
    out.push('\n');
    let _ = writeln!(out, "{}\n", summary_line(report));

    // The compact grid, when there is more than one column or row to lay out.
    if grid.cols.len() > 1 || grid.rows.len() > 1 {
        let _ = writeln!(
            out,
            "Grid (rows: {}; columns: qemu / firmware):\n",
            grid.row_axes.join(" · ")
        );
        let mut header = vec![grid.row_axes.join(" · ")];
        header.extend(
            grid.cols
                .iter()
                .map(|[q, f]| format!("{} / {}", md(q, 60), md(f, 60))),
        );
        table_header(&mut out, &header);
        for (r, key) in grid.rows.iter().enumerate() {
            let mut row = vec![
                key.iter()
                    .map(|v| md(v, 80))
                    .collect::<Vec<_>>()
                    .join(" · "),
            ];
            for slot in &grid.cells[r] {
                row.push(match slot {
                    Some(i) => grid_text(&report.cells[*i]),
                    None => "—".to_string(),
                });
            }
            table_row(&mut out, &row);
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "✅ reached · ❌ synchronous exception · 💥 kernel panic · ⏳ hang/timeout · ⚠️ other failure · ❔ harness error · ⬜ not run\n"
        );
    }

    if let Some(cmp) = &report.comparison {
        let _ = writeln!(out, "Compared with {}:\n", md(&cmp.baseline, 300));
        changes(
            &mut out,
            "Regressions (was reached, now fails)",
            &cmp.regressions,
        );
        changes(&mut out, "Fixes (was failing, now reached)", &cmp.fixes);
        changes(&mut out, "Other changes", &cmp.changed);
        if !cmp.new_cells.is_empty() {
            let _ = writeln!(out, "New cells: {}\n", ids(&cmp.new_cells));
        }
        if !cmp.missing_cells.is_empty() {
            let _ = writeln!(out, "Missing cells: {}\n", ids(&cmp.missing_cells));
        }
    }
    out
}

/// "12 planned: 10 done (7 reached, 3 sync-exception), 1 error, 1 not run, 1 flaky."
pub fn summary_line(report: &MatrixReport) -> String {
    let s = &report.summary;
    let verdicts = s
        .by_verdict
        .iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut parts = vec![if verdicts.is_empty() {
        format!("{} done", s.done)
    } else {
        format!("{} done ({verdicts})", s.done)
    }];
    if s.errors > 0 {
        parts.push(format!("{} error", s.errors));
    }
    if s.not_run > 0 {
        parts.push(format!("{} not run", s.not_run));
    }
    if s.flaky > 0 {
        parts.push(format!("{} flaky", s.flaky));
    }
    format!("**Summary:** {} planned: {}.", s.planned, parts.join(", "))
}

fn changes(out: &mut String, title: &str, list: &[Change]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "**{title}:**\n");
    for c in list {
        let _ = writeln!(
            out,
            "- {}: {} → {}",
            md(&c.axes.label(), 300),
            c.was.as_str(),
            c.now.as_str()
        );
    }
    out.push('\n');
}

fn ids(list: &[String]) -> String {
    list.iter()
        .map(|i| md(i, 80))
        .collect::<Vec<_>>()
        .join(", ")
}

fn grid_text(c: &CellRecord) -> String {
    let mut s = format!(
        "{} {}",
        symbol(c.category()),
        md(&super::verdict_text_short(c), 60)
    );
    if let Some(k) = crash_ratio(c).filter(|_| c.flaky) {
        s.push_str(&format!(" ({k})"));
    }
    s
}

fn symbol(c: Category) -> &'static str {
    match c {
        Category::Reached => "✅",
        Category::SyncException => "❌",
        Category::Panic => "💥",
        Category::Hang => "⏳",
        Category::Failure => "⚠️",
        Category::Error => "❔",
        Category::NotRun => "⬜",
    }
}

fn table_header(out: &mut String, header: &[String]) {
    table_row(out, header);
    table_row(out, &vec!["---".to_string(); header.len()]);
}

fn table_row(out: &mut String, cells: &[String]) {
    out.push('|');
    for c in cells {
        out.push(' ');
        out.push_str(c);
        out.push_str(" |");
    }
    out.push('\n');
}

/// Text for a table cell: one line, cut to `max` characters, Markdown punctuation (including
/// `|`, backticks and `<`) backslash-escaped so it renders literally and cannot end the cell.
pub fn md(s: &str, max: usize) -> String {
    let line = one_line(s, max);
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if "\\`*_[]<>|~&#!$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md_escapes_table_breakers() {
        assert_eq!(md("a|b\nc`d", 80), "a\\|b c\\`d");
        assert_eq!(md("<script>", 80), "\\<script\\>");
        assert_eq!(md("x\x1by", 80), "x\\\\x1by");
    }
}
