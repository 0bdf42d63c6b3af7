//! Reports from hand-made matrix results directories: build, the four report files, merge of
//! shards, baseline comparison, and matrix.html rendered by headless Chromium (Chromium is
//! required: a missing browser fails the tests; run .ci/install-deps).

use std::collections::BTreeMap;
use std::path::Path;

use bootwatch::core::verdict::{Stage, Verdict};
use bootwatch::plan::matrix::model::{
    Axes, Axis, CELL_SCHEMA, CellInputs, CellRecord, CellRun, CellStatus, EXECUTION_SCHEMA,
    Execution, MatrixReport, PLAN_SCHEMA, Plan, PlannedCell,
};
use bootwatch::report;
use sha2::Digest;
use support::chromium;

use crate::support;

const HOSTILE: &str = "<script>alert(1)</script> ]]> & \u{1b}[31m\u{0}red\" onmouseover=\"x";
const IMAGES: [&str; 2] = ["debian-12-local", "fixture:crash"];
const QEMUS: [&str; 2] = ["debian:bookworm", "debian:trixie"];
const FIRMWARES: [&str; 2] = ["debian:2022.11", "debian:2025.02"];

fn axes(image: &str, qemu: &str, firmware: &str) -> Axes {
    Axes {
        image: image.to_string(),
        qemu: qemu.to_string(),
        firmware: firmware.to_string(),
        cpu: "max".to_string(),
        vars: "template".to_string(),
    }
}

fn cell_id(a: &Axes) -> String {
    hex::encode(&sha2::Sha256::digest(a.canonical().as_bytes())[..8])
}

fn plan_with(plan_id: &str, cells: &[Axes]) -> Plan {
    Plan {
        schema: PLAN_SCHEMA.to_string(),
        name: "edk2 | nx <b>".to_string(),
        description: "Which firmware crashes which loader.".to_string(),
        matrix_file: "matrix/nx.toml".to_string(),
        plan_id: plan_id.to_string(),
        axes: vec![
            Axis {
                name: "image".into(),
                values: IMAGES.map(String::from).to_vec(),
            },
            Axis {
                name: "qemu".into(),
                values: QEMUS.map(String::from).to_vec(),
            },
            Axis {
                name: "firmware".into(),
                values: FIRMWARES.map(String::from).to_vec(),
            },
            Axis {
                name: "cpu".into(),
                values: vec!["max".into()],
            },
            Axis {
                name: "vars".into(),
                values: vec!["template".into()],
            },
        ],
        target: "login".to_string(),
        timeout_s: 120.0,
        repeat: 3,
        cells: cells
            .iter()
            .enumerate()
            .map(|(index, a)| PlannedCell {
                id: cell_id(a),
                index,
                axes: a.clone(),
            })
            .collect(),
    }
}

/// 2 images x 2 qemu x 2 firmware = 8 cells, image outermost.
fn plan() -> Plan {
    let mut cells = Vec::new();
    for i in IMAGES {
        for q in QEMUS {
            for f in FIRMWARES {
                cells.push(axes(i, q, f));
            }
        }
    }
    plan_with("plan-aaaa", &cells)
}

/// What each planned cell did, by index (`None`: nobody ran it).
#[derive(Clone, Copy)]
enum Outcome {
    Done(Verdict, Stage, u32),
    Error,
}

fn outcomes() -> Vec<Option<Outcome>> {
    use Outcome::*;
    vec![
        Some(Done(Verdict::Reached, Stage::Login, 0)),
        Some(Done(Verdict::SyncException, Stage::Firmware, 3)),
        Some(Done(Verdict::KernelPanic, Stage::Kernel, 3)),
        Some(Done(Verdict::Hang, Stage::Grub, 3)),
        Some(Done(Verdict::GrubError, Stage::Grub, 3)),
        Some(Error),
        Some(Done(Verdict::SyncException, Stage::Firmware, 1)),
        None,
    ]
}

fn record(p: &PlannedCell, outcome: Outcome, repeat: u32) -> CellRecord {
    let (status, verdict, stage, crashed, error) = match outcome {
        Outcome::Done(v, s, k) => (CellStatus::Done, v, s, k, None),
        Outcome::Error => (
            CellStatus::Error,
            Verdict::HarnessError,
            Stage::None,
            0,
            Some("qemu-system-aarch64 not found | `oops`".to_string()),
        ),
    };
    let exit_code = match verdict {
        Verdict::Reached => 0,
        v if v.is_guest_failure() => 1,
        _ => 125,
    };
    let runs = if status == CellStatus::Done {
        (1..=repeat)
            .map(|n| {
                let crashed_run = n <= crashed;
                let (v, st) = if crashed_run || crashed == 0 {
                    (verdict, stage)
                } else {
                    (Verdict::Reached, Stage::Login)
                };
                CellRun {
                    n,
                    dir: format!("cells/{}/run-{n}", p.id),
                    outcome: bootwatch::core::verdict::Outcome {
                        verdict: v,
                        stage: st,
                        before_grub: st.is_before_grub(),
                        reason: format!("{v} at {st}"),
                        exit_code: if crashed_run { 1 } else { exit_code },
                        time_to_verdict_s: Some(3.5 + n as f64),
                    },
                    duration_s: 5.0 + n as f64,
                    qemu_s: Some(4.0 + n as f64),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    CellRecord {
        schema: CELL_SCHEMA.to_string(),
        id: p.id.clone(),
        index: p.index,
        axes: p.axes.clone(),
        status,
        qemu_version: Some(if p.axes.qemu.contains("trixie") {
            "10.0.2".to_string()
        } else {
            "7.2.19".to_string()
        }),
        firmware_version: Some(p.axes.firmware.trim_start_matches("debian:").to_string()),
        firmware_banner: Some(String::new()),
        outcome: bootwatch::core::verdict::Outcome {
            verdict,
            stage,
            exit_code,
            before_grub: stage.is_before_grub(),
            reason: format!("{} at {} | with `ticks`\nand a newline", verdict, stage),
            time_to_verdict_s: None,
        },
        exception: (verdict == Verdict::SyncException).then(|| {
            if p.index == 1 {
                HOSTILE.to_string()
            } else {
                "Synchronous Exception at 0x000000007C743000".to_string()
            }
        }),
        repeat,
        crashed,
        flaky: crashed > 0 && crashed < repeat,
        runs,
        inputs: CellInputs {
            key: format!("key-{}", p.id),
            ..CellInputs::default()
        },
        duration_s: 20.0,
        overhead_s: 2.5,
        error,
        explanation: None,
    }
}

fn execution(plan: &Plan, shard: Option<&str>, cells: &[String]) -> Execution {
    Execution {
        schema: EXECUTION_SCHEMA.to_string(),
        plan_id: plan.plan_id.clone(),
        shard: shard.map(String::from),
        concurrency: 2,
        started_at: "2025-11-26T08:00:00Z".to_string(),
        wall_s: 100.0,
        prepare_s: 3.0,
        cells: cells.to_vec(),
        resumed: Vec::new(),
        interrupted: false,
        host: "builder".to_string(),
        bootwatch_version: "0.1.0".to_string(),
    }
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A results directory with the cells whose index `take` accepts; `execution_name` /
/// `shard` describe the execution file.
fn results_dir(
    dir: &Path,
    plan: &Plan,
    outcomes: &[Option<Outcome>],
    take: impl Fn(usize) -> bool,
    shard: Option<&str>,
) {
    write_json(&dir.join("plan.json"), plan);
    let mine: Vec<String> = plan
        .cells
        .iter()
        .filter(|c| take(c.index))
        .map(|c| c.id.clone())
        .collect();
    write_json(&dir.join("execution.json"), &execution(plan, shard, &mine));
    for p in plan.cells.iter().filter(|c| take(c.index)) {
        let Some(outcome) = outcomes[p.index] else {
            continue;
        };
        let rec = record(p, outcome, plan.repeat);
        for run in &rec.runs {
            let rd = dir.join(&run.dir);
            std::fs::create_dir_all(&rd).unwrap();
            std::fs::write(rd.join("console.log"), format!("console of {}\n", p.id)).unwrap();
            std::fs::write(rd.join("result.json"), "{}\n").unwrap();
        }
        write_json(&dir.join("cells").join(&p.id).join("cell.json"), &rec);
    }
}

fn full_dir() -> (tempfile::TempDir, Plan) {
    let tmp = tempfile::tempdir().unwrap();
    let plan = plan();
    results_dir(tmp.path(), &plan, &outcomes(), |_| true, None);
    (tmp, plan)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn build_orders_cells_and_counts() {
    let (tmp, plan) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    assert_eq!(r.cells.len(), 8);
    let ids: Vec<&str> = r.cells.iter().map(|c| c.id.as_str()).collect();
    let planned: Vec<&str> = plan.cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, planned);
    assert_eq!(r.status, "partial");
    assert_eq!(r.cells[7].status, CellStatus::NotRun);
    assert_eq!(r.cells[7].axes, plan.cells[7].axes);
    assert_eq!(r.summary.planned, 8);
    assert_eq!(r.summary.done, 6);
    assert_eq!(r.summary.errors, 1);
    assert_eq!(r.summary.not_run, 1);
    assert_eq!(r.summary.flaky, 1);
    assert_eq!(r.summary.by_verdict["sync-exception"], 2);
    assert_eq!(r.executions.len(), 1);
    // 7 cells of 20 s, 2.5 s overhead each; one execution of 100 s (3 s of it preparing) x 2
    // slots: 140 / 194.
    assert_eq!(r.timing.cells_s, 140.0);
    assert_eq!(r.timing.overhead_s, 17.5);
    assert_eq!(r.timing.overhead_fraction, 0.125);
    assert_eq!(r.timing.efficiency, 0.722);
    assert_eq!(r.timing.wall_s, 100.0);
    assert_eq!(r.timing.prepare_s, 3.0);

    // Every planned cell done or error: complete.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut all = outcomes();
    all[7] = Some(Outcome::Done(Verdict::Reached, Stage::Login, 0));
    results_dir(tmp2.path(), &plan, &all, |_| true, None);
    assert_eq!(report::build(tmp2.path()).unwrap().status, "complete");
}

#[test]
fn build_rejects_foreign_files() {
    let (tmp, plan) = full_dir();
    let mut other = execution(&plan, None, &[]);
    other.plan_id = "plan-other".into();
    write_json(&tmp.path().join("execution-x.json"), &other);
    let err = format!("{:#}", report::build(tmp.path()).unwrap_err());
    assert!(err.contains("plan-other"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = format!("{:#}", report::build(empty.path()).unwrap_err());
    assert!(err.contains("plan.json"), "{err}");
}

#[test]
fn write_all_writes_four_files_and_json_round_trips() {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    report::write_all(tmp.path(), &r).unwrap();
    for f in ["matrix.json", "matrix.xml", "matrix.md", "matrix.html"] {
        let p = tmp.path().join(f);
        assert!(p.metadata().unwrap().len() > 0, "{f} is empty");
    }
    assert!(
        !names_in(tmp.path()).iter().any(|n| n.starts_with(".tmp-")),
        "temporary files left: {:?}",
        names_in(tmp.path())
    );
    let back: MatrixReport =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("matrix.json")).unwrap())
            .unwrap();
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::to_value(&back).unwrap();
    assert_eq!(v["schema"], "bootwatch.matrix/1");
    assert_eq!(v["cells"][7]["status"], "not-run");
    // Writing again replaces the files.
    report::write_all(tmp.path(), &r).unwrap();
}

#[test]
fn junit_is_well_formed_and_escapes_guest_text() {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    let xml = report::render_junit(&r).unwrap();
    assert!(!xml.contains('\u{1b}') && !xml.contains('\u{0}'), "{xml}");
    assert!(!xml.contains("<script>"), "{xml}");
    assert!(!xml.contains("]]>"), "{xml}");
    let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("JUnit XML parses");
    assert_eq!(parsed.test_suites.len(), 1);
    let suite = &parsed.test_suites[0];
    assert_eq!(suite.name.as_str(), "edk2 | nx <b>");
    assert_eq!(suite.test_cases.len(), 8);
    assert_eq!(suite.tests, 8);
    assert_eq!(suite.failures, 5);
    assert_eq!(suite.errors, 1);
    assert_eq!(suite.skipped, 1);
    let hostile = &suite.test_cases[1];
    assert_eq!(hostile.classname.as_deref(), Some("debian-12-local"));
    match &hostile.status {
        quick_junit::TestCaseStatus::NonSuccess {
            kind: quick_junit::NonSuccessKind::Failure,
            message,
            ..
        } => {
            let m = message.as_ref().unwrap().as_str();
            assert!(
                m.starts_with(
                    "sync-exception (3 of 3 crashed) at stage firmware: <script>alert(1)</script> ]]> & \\x1b[31m\\x00red"
                ),
                "{m}"
            );
        }
        other => panic!("cell 1 should be a failure: {other:?}"),
    }
    assert!(matches!(
        suite.test_cases[0].status,
        quick_junit::TestCaseStatus::Success { .. }
    ));
    assert!(matches!(
        suite.test_cases[5].status,
        quick_junit::TestCaseStatus::NonSuccess {
            kind: quick_junit::NonSuccessKind::Error,
            ..
        }
    ));
    assert!(matches!(
        suite.test_cases[7].status,
        quick_junit::TestCaseStatus::Skipped { .. }
    ));
    assert_eq!(
        suite.test_cases[0].time,
        Some(std::time::Duration::from_secs(20))
    );
}

/// `|` not preceded by a backslash.
fn unescaped_pipes(line: &str) -> usize {
    let mut n = 0;
    let mut prev = ' ';
    for c in line.chars() {
        if c == '|' && prev != '\\' {
            n += 1;
        }
        prev = if prev == '\\' && c == '\\' { ' ' } else { c };
    }
    n
}

#[test]
fn markdown_table_has_a_row_per_cell() {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    let md = report::render_markdown(&r);
    let lines: Vec<&str> = md.lines().collect();
    let start = lines.iter().position(|l| l.starts_with('|')).unwrap();
    let table: Vec<&str> = lines[start..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .copied()
        .collect();
    assert_eq!(table.len(), 2 + 8, "{md}");
    let columns = unescaped_pipes(table[0]);
    assert_eq!(
        columns, 9,
        "image, qemu, firmware, 2 versions, verdict, stage, evidence"
    );
    for row in &table {
        assert_eq!(unescaped_pipes(row), columns, "row breaks the table: {row}");
    }
    assert!(
        table[2 + 1].contains("\\<script\\>alert(1)\\</script\\> \\]\\]\\> \\& \\\\x1b"),
        "{md}"
    );
    assert!(
        table[2 + 6].contains("sync-exception (1 of 3 crashed)"),
        "{}",
        table[8]
    );
    assert!(table[2 + 5].contains("error") && table[2 + 5].contains("\\`oops\\`"));
    assert!(table[2 + 7].contains("not run"));
    assert!(md.contains("cpu max, vars template"), "{md}");
    assert!(md.contains("**Summary:** 8 planned: 6 done"), "{md}");
    assert!(!md.contains("Regressions"));
}

/// Guest text that would ping people, link issues and make links if pasted as is.
const TRACKER: &str = "@octocat see #1 and org/repo#2, GH-3 !4 ~bug %5 $6 &7 ftp://evil.example/a www.evil.example a@b.example";

#[test]
fn markdown_leaves_tracker_references_dead() {
    let (tmp, _) = full_dir();
    let mut r = report::build(tmp.path()).unwrap();
    r.description = TRACKER.into();
    r.cells[1].exception = Some(TRACKER.into());
    r.cells[5].error = Some(TRACKER.into());
    let md = report::render_markdown(&r);
    // The text GitHub and GitLab look for references in: character references decoded and
    // backslash escapes undone.
    let seen = regex::Regex::new(r"\\(.)")
        .unwrap()
        .replace_all(&md.replace("&#8203;", "\u{200b}"), "$1")
        .into_owned();
    for live in [
        r"(^|\W)@\w",
        r"#\d",
        r"(?i)\bgh-\d",
        r"[!~%$&]\w",
        "://",
        r"(?i)\bwww\.",
    ] {
        let m = regex::Regex::new(live).unwrap().find(&seen);
        assert!(m.is_none(), "{live} is live at {m:?} in:\n{seen}");
    }
    // Without the invisible breaks, the text reads as the guest wrote it.
    assert_eq!(
        seen.replace('\u{200b}', "").matches(TRACKER).count(),
        3,
        "{md}"
    );
}

#[test]
fn html_is_self_contained_and_escaped() {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    let html = report::render_html(&r).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("src="), "no external resources");
    assert_eq!(html.matches("<script").count(), 1);
    assert!(!html.contains("<script>alert"));
    assert!(!html.contains('\u{1b}'));
    assert!(!html.contains("onmouseover=\"x"));
    assert_eq!(html.matches("<td class=\"cell ").count(), 8);
    assert!(html.contains("edk2 | nx &lt;b&gt;"));
    let id1 = &r.cells[1].id;
    assert!(html.contains(&format!(
        "href=\"cells&#x2f;{id1}&#x2f;run-1&#x2f;console.log\""
    )));
}

#[test]
fn merged_shards_equal_one_run() {
    let plan = plan();
    let all = tempfile::tempdir().unwrap();
    results_dir(all.path(), &plan, &outcomes(), |_| true, None);
    let s1 = tempfile::tempdir().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    results_dir(s1.path(), &plan, &outcomes(), |i| i % 2 == 0, Some("1/2"));
    results_dir(s2.path(), &plan, &outcomes(), |i| i % 2 == 1, Some("2/2"));
    let out_parent = tempfile::tempdir().unwrap();
    let out = out_parent.path().join("merged");
    let merged = report::merge(&[s2.path().to_path_buf(), s1.path().to_path_buf()], &out).unwrap();
    let one = report::build(all.path()).unwrap();
    assert_eq!(report::comparable(&merged), report::comparable(&one));
    assert_ne!(merged.timing, one.timing);
    assert_eq!(
        merged
            .executions
            .iter()
            .map(|e| e.shard.clone().unwrap())
            .collect::<Vec<_>>(),
        ["1/2", "2/2"]
    );
    let names = names_in(&out);
    for f in [
        "cells",
        "execution-1-of-2.json",
        "execution-2-of-2.json",
        "matrix.html",
        "matrix.json",
        "matrix.md",
        "matrix.xml",
        "plan.json",
    ] {
        assert!(names.contains(&f.to_string()), "{f} missing: {names:?}");
    }
    assert_eq!(names_in(out_parent.path()), ["merged"]);
    let c1 = &plan.cells[1].id;
    assert!(
        out.join("cells")
            .join(c1)
            .join("run-3/console.log")
            .is_file()
    );
    // The written report is the returned one and builds again identically from OUT.
    assert_eq!(report::build(&out).unwrap(), merged);

    // Merging an input twice (identical cells) is fine; into an existing empty directory too.
    let out2 = out_parent.path().join("again");
    std::fs::create_dir(&out2).unwrap();
    let again = report::merge(
        &[
            s1.path().to_path_buf(),
            s2.path().to_path_buf(),
            s1.path().to_path_buf(),
        ],
        &out2,
    )
    .unwrap();
    assert_eq!(report::comparable(&again), report::comparable(&one));
    assert_eq!(again.executions.len(), 2);
}

/// Nothing but `keep` in `parent`.
fn assert_clean(parent: &Path, keep: &[&str]) {
    assert_eq!(names_in(parent), keep, "merge left something behind");
}

#[test]
fn merge_errors_leave_nothing_behind() {
    let plan = plan();
    let s1 = tempfile::tempdir().unwrap();
    results_dir(s1.path(), &plan, &outcomes(), |i| i < 4, Some("1/2"));
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");

    // Different plans.
    let other = tempfile::tempdir().unwrap();
    let mut other_plan = plan.clone();
    other_plan.plan_id = "plan-bbbb".into();
    results_dir(
        other.path(),
        &other_plan,
        &outcomes(),
        |i| i >= 4,
        Some("2/2"),
    );
    let err = format!(
        "{:#}",
        report::merge(&[s1.path().to_path_buf(), other.path().to_path_buf()], &out).unwrap_err()
    );
    for needle in [
        "plan-aaaa",
        "plan-bbbb",
        &s1.path().display().to_string(),
        &other.path().display().to_string(),
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    assert_clean(parent.path(), &[]);

    // The same cell with different results.
    let s2 = tempfile::tempdir().unwrap();
    let mut changed = outcomes();
    changed[1] = Some(Outcome::Done(Verdict::Reached, Stage::Login, 0));
    results_dir(s2.path(), &plan, &changed, |i| i >= 1, Some("2/2"));
    let err = format!(
        "{:#}",
        report::merge(&[s1.path().to_path_buf(), s2.path().to_path_buf()], &out).unwrap_err()
    );
    assert!(err.contains(&plan.cells[1].id), "{err}");
    assert!(err.contains("different results"), "{err}");
    assert_clean(parent.path(), &[]);

    // OUT not empty.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious"), "x").unwrap();
    let err = format!(
        "{:#}",
        report::merge(&[s1.path().to_path_buf()], &out).unwrap_err()
    );
    assert!(err.contains("not empty"), "{err}");
    assert_clean(parent.path(), &["out"]);
    assert_eq!(names_in(&out), ["precious"]);

    // No inputs, and an input that is not a results directory.
    assert!(report::merge(&[], &parent.path().join("x")).is_err());
    let err = format!(
        "{:#}",
        report::merge(&[parent.path().join("missing")], &parent.path().join("x")).unwrap_err()
    );
    assert!(err.contains("plan.json"), "{err}");
    assert_clean(parent.path(), &["out"]);
}

#[test]
fn compare_finds_regressions_and_fixes() {
    let (tmp, plan) = full_dir();
    // The baseline: cell 0 crashed then (now reached: a fix), cell 1 reached (now a sync
    // exception: a regression), cell 2 hung (now a panic: changed); cell 7 not planned then,
    // and an extra cell that is no longer planned.
    let mut base_cells: Vec<Axes> = plan.cells.iter().map(|c| c.axes.clone()).collect();
    base_cells.pop();
    base_cells.push(axes("gone", "debian:trixie", "debian:2022.11"));
    let base_plan = plan_with("plan-base", &base_cells);
    let mut base_outcomes = outcomes();
    base_outcomes[0] = Some(Outcome::Done(Verdict::SyncException, Stage::Firmware, 3));
    base_outcomes[1] = Some(Outcome::Done(Verdict::Reached, Stage::Login, 0));
    base_outcomes[2] = Some(Outcome::Done(Verdict::Hang, Stage::Kernel, 3));
    base_outcomes[7] = Some(Outcome::Done(Verdict::Reached, Stage::Login, 0));
    let base = tempfile::tempdir().unwrap();
    results_dir(base.path(), &base_plan, &base_outcomes, |_| true, None);

    let mut r = report::build(tmp.path()).unwrap();
    report::compare(&mut r, base.path()).unwrap();
    let cmp = r.comparison.clone().unwrap();
    let ids = |l: &[bootwatch::plan::matrix::model::Change]| -> Vec<String> {
        l.iter().map(|c| c.id.clone()).collect()
    };
    assert_eq!(ids(&cmp.regressions), [plan.cells[1].id.clone()]);
    assert_eq!(cmp.regressions[0].was, Verdict::Reached);
    assert_eq!(cmp.regressions[0].now, Verdict::SyncException);
    assert_eq!(ids(&cmp.fixes), [plan.cells[0].id.clone()]);
    assert_eq!(ids(&cmp.changed), [plan.cells[2].id.clone()]);
    assert_eq!(cmp.new_cells, [plan.cells[7].id.clone()]);
    assert_eq!(cmp.missing_cells, [base_plan.cells[7].id.clone()]);
    assert_eq!(cmp.baseline, base.path().display().to_string());

    // A matrix.json baseline gives the same comparison.
    let base_report = report::build(base.path()).unwrap();
    report::write_all(base.path(), &base_report).unwrap();
    let mut r2 = report::build(tmp.path()).unwrap();
    report::compare(&mut r2, &base.path().join("matrix.json")).unwrap();
    let cmp2 = r2.comparison.clone().unwrap();
    assert_eq!(cmp2.regressions, cmp.regressions);
    assert_eq!(cmp2.fixes, cmp.fixes);

    // The reports show it.
    let md = report::render_markdown(&r);
    assert!(md.contains("Regressions (was reached, now fails)"), "{md}");
    assert!(md.contains("Fixes (was failing, now reached)"), "{md}");
    let html = report::render_html(&r).unwrap();
    assert!(html.contains("id=\"comparison\""));
    assert!(html.contains("chg-regression"));
    report::write_all(tmp.path(), &r).unwrap();
    let back: MatrixReport =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("matrix.json")).unwrap())
            .unwrap();
    assert_eq!(back.comparison, r.comparison);

    assert!(report::compare(&mut r, &tmp.path().join("nope")).is_err());
}

// ---- Headless Chromium ------------------------------------------------------------------

fn require_chromium() {
    if let Err(e) = chromium::chromium_binary() {
        panic!("{e:#} (the HTML report tests need it; run .ci/install-deps)");
    }
}

/// One start tag of the serialized DOM: name and attributes.
#[derive(Debug)]
struct Tag {
    name: String,
    attrs: BTreeMap<String, String>,
}

/// The start tags of a serialized DOM (Chromium quotes every attribute value with `"` and
/// escapes `"` in it; text escapes `<`), skipping script and style contents.
fn start_tags(dom: &str) -> Vec<Tag> {
    let b = dom.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        i += 1;
        if i < b.len() && (b[i] == b'/' || b[i] == b'!') {
            while i < b.len() && b[i] != b'>' {
                i += 1;
            }
            continue;
        }
        let start = i;
        let mut in_quote = false;
        while i < b.len() && (in_quote || b[i] != b'>') {
            if b[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let tag = parse_tag(&dom[start..i]);
        if tag.name == "script" || tag.name == "style" {
            let close = format!("</{}", tag.name);
            i += dom[i..].find(&close).unwrap_or(dom.len() - i);
        }
        tags.push(tag);
    }
    tags
}

fn parse_tag(s: &str) -> Tag {
    let s = s.trim_end_matches('/');
    let name_end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    let name = s[..name_end].to_ascii_lowercase();
    let mut attrs = BTreeMap::new();
    let mut rest = s[name_end..].trim_start();
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = rest[..end].to_string();
        rest = &rest[end..];
        let value = if let Some(r) = rest.strip_prefix("=\"") {
            let close = r.find('"').expect("closing quote");
            let v = r[..close].to_string();
            rest = &r[close + 1..];
            v
        } else {
            String::new()
        };
        attrs.insert(key, value);
        rest = rest.trim_start();
    }
    Tag { name, attrs }
}

fn grid_cells(dom: &str) -> Vec<Tag> {
    start_tags(dom)
        .into_iter()
        .filter(|t| {
            t.name == "td"
                && t.attrs
                    .get("class")
                    .is_some_and(|c| c.split(' ').any(|c| c == "cell"))
        })
        .collect()
}

fn visible(cells: &[Tag]) -> Vec<&Tag> {
    cells
        .iter()
        .filter(|t| !t.attrs.contains_key("hidden"))
        .collect()
}

fn written_report() -> (tempfile::TempDir, MatrixReport) {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    report::write_all(tmp.path(), &r).unwrap();
    (tmp, r)
}

#[test]
fn chromium_renders_the_grid_and_filters_from_the_fragment() {
    require_chromium();
    let (tmp, r) = written_report();
    let html = tmp.path().join("matrix.html");

    let started = std::time::Instant::now();
    let dom = chromium::dump_dom(&html, None).unwrap();
    eprintln!("chromium --dump-dom took {:?}", started.elapsed());
    let tags = start_tags(&dom);
    assert_eq!(
        tags.iter().filter(|t| t.name == "script").count(),
        1,
        "guest text must not become an element"
    );
    assert!(!tags.iter().any(|t| t.attrs.contains_key("onmouseover")));
    let cells = grid_cells(&dom);
    assert_eq!(cells.len(), 8);
    assert_eq!(visible(&cells).len(), 8);
    let c1 = cells
        .iter()
        .find(|t| t.attrs["data-id"] == r.cells[1].id)
        .unwrap();
    assert_eq!(c1.attrs["data-verdict"], "sync-exception");
    assert_eq!(c1.attrs["data-category"], "sync-exception");
    assert_eq!(c1.attrs["data-qemu"], "debian:bookworm");
    assert_eq!(c1.attrs["data-firmware"], "debian:2025.02");
    let not_run = cells
        .iter()
        .find(|t| t.attrs["data-id"] == r.cells[7].id)
        .unwrap();
    assert_eq!(not_run.attrs["data-category"], "not-run");
    // The hostile text is there, as text.
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt; ]]&gt; &amp; \\x1b[31m\\x00red"),
        "escaped exception text missing"
    );
    assert!(dom.contains("8 of 8 cells shown"));

    let dom = chromium::dump_dom(&html, Some("qemu=debian:trixie")).unwrap();
    let cells = grid_cells(&dom);
    let shown = visible(&cells);
    assert_eq!(shown.len(), 4);
    assert!(
        shown
            .iter()
            .all(|t| t.attrs["data-qemu"] == "debian:trixie")
    );
    assert!(dom.contains("4 of 8 cells shown"));

    let dom = chromium::dump_dom(
        &html,
        Some("qemu=debian%3Atrixie&firmware=debian:2022.11&unknown=1"),
    )
    .unwrap();
    let cells = grid_cells(&dom);
    let shown = visible(&cells);
    assert_eq!(shown.len(), 2);
    assert!(
        shown
            .iter()
            .all(|t| t.attrs["data-firmware"] == "debian:2022.11")
    );
    // The hidden columns' headers are hidden too; the visible one spans one column.
    let headers: Vec<Tag> = start_tags(&dom)
        .into_iter()
        .filter(|t| t.name == "th" && t.attrs.contains_key("data-col"))
        .collect();
    assert_eq!(visible(&headers).len(), 1);

    // A fixed axis with another value hides everything; the detail rows follow the filter.
    let dom = chromium::dump_dom(&html, Some("cpu=cortex-a57")).unwrap();
    assert_eq!(visible(&grid_cells(&dom)).len(), 0);
    let details: Vec<Tag> = start_tags(&dom)
        .into_iter()
        .filter(|t| {
            t.name == "tr"
                && t.attrs
                    .get("class")
                    .is_some_and(|c| c.starts_with("detail"))
        })
        .collect();
    assert_eq!(details.len(), 8);
    assert_eq!(visible(&details).len(), 0);
}

#[test]
fn chromium_screenshot_is_a_png() {
    require_chromium();
    let (tmp, _) = written_report();
    let png = tmp.path().join("shot.png");
    let started = std::time::Instant::now();
    chromium::screenshot(&tmp.path().join("matrix.html"), &png).unwrap();
    eprintln!("chromium --screenshot took {:?}", started.elapsed());
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
}

// Snapshots of the two reports CI systems and people read: a change in their layout shows up
// in review (`cargo insta review`) rather than in someone's broken dashboard.

#[test]
fn matrix_md_snapshot() {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    let md = report::render_markdown(&r);
    assert!(!md.contains(tmp.path().to_str().unwrap()), "{md}");
    insta::assert_snapshot!("matrix.md", md);
}

#[test]
fn matrix_xml_snapshot() {
    let (tmp, _) = full_dir();
    let r = report::build(tmp.path()).unwrap();
    let xml = report::render_junit(&r).unwrap();
    assert!(!xml.contains(tmp.path().to_str().unwrap()), "{xml}");
    insta::assert_snapshot!("matrix.xml", xml);
}
