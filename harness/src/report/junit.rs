//! `matrix.xml`: JUnit XML for CI dashboards. One testsuite (the matrix), one testcase per
//! cell: success when reached, failure for guest failures, error when bootwatch could not run
//! the cell, skipped when it was not run.

use std::time::Duration;

use anyhow::Context;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::{evidence, one_line, printable, run_dir, verdict_text};
use crate::plan::matrix::model::{Category, CellRecord, CellStatus, MatrixReport};

/// Longest evidence text in a failure message (the description carries the rest).
const MESSAGE_MAX: usize = 300;

pub fn render(report: &MatrixReport) -> anyhow::Result<String> {
    let mut suite = TestSuite::new(printable(&report.name));
    suite.add_properties([
        Property::new("plan_id", printable(&report.plan_id)),
        Property::new("target", printable(&report.target)),
        Property::new("repeat", report.repeat.to_string()),
        Property::new("status", report.status.clone()),
    ]);
    suite.set_time(secs(report.timing.cells_s));
    for c in &report.cells {
        suite.add_test_case(test_case(c));
    }
    let mut junit = Report::new(format!("bootwatch matrix {}", printable(&report.name)));
    junit.set_time(secs(report.timing.wall_s));
    junit.add_test_suite(suite);
    junit.to_string().context("serializing the JUnit report")
}

fn test_case(c: &CellRecord) -> TestCase {
    let line = one_line(&evidence(c), MESSAGE_MAX);
    let status = match (c.status, c.category()) {
        (CellStatus::Done, Category::Reached) => TestCaseStatus::success(),
        (CellStatus::Done, category) => {
            let kind = if category == Category::Error {
                NonSuccessKind::Error
            } else {
                NonSuccessKind::Failure
            };
            let mut s = TestCaseStatus::non_success(kind);
            s.set_message(format!(
                "{} at stage {}: {line}",
                verdict_text(c),
                c.outcome.stage.as_str()
            ));
            s.set_type(c.outcome.verdict.as_str());
            s.set_description(description(c));
            s
        }
        (CellStatus::Error, _) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(format!("bootwatch could not run the cell: {line}"));
            s.set_type("error");
            s.set_description(description(c));
            s
        }
        (CellStatus::NotRun | CellStatus::Interrupted, _) => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(if c.status == CellStatus::Interrupted {
                "interrupted before it finished"
            } else {
                "not run (another shard, or the matrix stopped before it)"
            });
            s
        }
    };
    let mut case = TestCase::new(printable(&c.axes.label()), status);
    case.set_classname(printable(&c.axes.image));
    case.set_time(secs(c.duration_s));
    case.add_property(Property::new("id", printable(&c.id)));
    for (name, value) in [
        ("qemu_version", &c.qemu_version),
        ("firmware_version", &c.firmware_version),
    ] {
        if let Some(v) = value {
            case.add_property(Property::new(name, printable(v)));
        }
    }
    if let Some(run) = super::worst_run(c) {
        case.add_property(Property::new(
            "console_log",
            format!("{}/console.log", run_dir(c, run)),
        ));
    }
    case
}

/// The failure's text node: what happened in full, then each run.
fn description(c: &CellRecord) -> String {
    let mut lines = vec![format!("cell {} ({})", c.id, c.axes.canonical())];
    lines.push(format!(
        "qemu {} / firmware {}",
        c.qemu_version.as_deref().unwrap_or("?"),
        c.firmware_version.as_deref().unwrap_or("?")
    ));
    if let Some(e) = &c.exception {
        lines.push(format!("exception: {e}"));
    }
    if !c.outcome.reason.is_empty() {
        lines.push(format!("reason: {}", c.outcome.reason));
    }
    if let Some(e) = &c.error {
        lines.push(format!("error: {e}"));
    }
    for run in &c.runs {
        lines.push(format!(
            "run {}: {} at stage {} ({}/console.log)",
            run.n,
            run.outcome.verdict.as_str(),
            run.outcome.stage.as_str(),
            run_dir(c, run)
        ));
    }
    printable(&lines.join("\n"))
}

fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::ZERO
    }
}
