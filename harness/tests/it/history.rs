//! `bootwatch report history` over three real runs of the smoke matrix, where one axis value's
//! firmware changes in the middle run (Debian's edk2 2025.02, then the same release's build
//! with Secure Boot enforced and Microsoft's keys enrolled, then 2025.02 again): the history
//! must say that exactly that cell changed at run 2, that its firmware changed with it, and
//! that it came back at run 3; `--fail-on-regression` fails on runs 1-2 and not on 2-3.

use crate::common;

use common::*;
use std::path::Path;

use bootwatch::report::history::{ChangeKind, History};

fn run_matrix(file: &Path, results: &Path) {
    let out = bin()
        .args(["matrix"])
        .arg(file)
        .args(["--concurrency", "2", "--results"])
        .arg(results)
        .env_remove("CI_NODE_INDEX")
        .env_remove("CI_NODE_TOTAL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn history(args: &[&Path], out: &Path, fail: bool) -> (i32, String) {
    let mut cmd = bin();
    cmd.args(["report", "history"])
        .args(args)
        .arg("--out")
        .arg(out);
    if fail {
        cmd.arg("--fail-on-regression");
    }
    let o = cmd.output().unwrap();
    (o.status.code().unwrap_or(-1), text(&o))
}

#[test]
fn history_of_three_smoke_runs_names_the_cell_whose_firmware_changed() {
    if !qemu_tests_enabled() {
        return;
    }
    let root = results_root();
    let fw = root.path().join("fw");
    let file = root.path().join("smoke.toml");
    std::fs::write(&file, smoke_with_one_swappable_firmware(&fw)).unwrap();
    let runs: Vec<_> = (1..=3)
        .map(|n| root.path().join(format!("run-{n}")))
        .collect();
    let started = std::time::Instant::now();
    for (n, dir) in runs.iter().enumerate() {
        // The middle night's firmware is another build of the same release.
        install_firmware(if n == 1 { "2025.02/ms" } else { "2025.02" }, &fw);
        run_matrix(&file, dir);
    }
    eprintln!("three smoke runs: {:.1} s", started.elapsed().as_secs_f64());

    let out = root.path().join("history");
    let dirs: Vec<&Path> = runs.iter().map(|p| p.as_path()).collect();
    let (code, log) = history(&dirs, &out, false);
    assert_eq!(code, 0, "{log}");
    let h: History =
        serde_json::from_slice(&std::fs::read(out.join("history.json")).unwrap()).unwrap();
    assert_eq!(h.schema, "bootwatch.history/1");
    assert_eq!(h.name, "smoke");
    assert_eq!(h.runs.len(), 3);
    assert_eq!(h.summary.cells, 5, "{h:#?}");
    let changed: Vec<_> = h.cells.iter().filter(|c| c.changed).collect();
    assert_eq!(changed.len(), 1, "exactly one cell changed: {h:#?}");
    let c = changed[0];
    assert!(c.axes.firmware.starts_with("path:"), "{c:#?}");
    assert_eq!(c.axes.image, "fixture:hello");
    assert_eq!(c.first_change, Some(2), "{c:#?}");
    // Run 1 reached its end (the fixture powers off), run 2 did not, run 3 did again.
    let cats: Vec<_> = c
        .points
        .iter()
        .map(|p| p.as_ref().unwrap().category)
        .collect();
    use bootwatch::plan::matrix::model::Category;
    assert_eq!(cats[0], Category::Reached, "{c:#?}");
    assert_ne!(cats[1], Category::Reached, "{c:#?}");
    assert_eq!(cats[2], Category::Reached, "{c:#?}");
    assert_eq!(c.changes.len(), 2, "{c:#?}");
    let (regression, fix) = (&c.changes[0], &c.changes[1]);
    assert_eq!((regression.run, regression.from_run), (2, 1));
    assert_eq!(regression.kind, ChangeKind::Regression);
    assert_eq!((fix.run, fix.kind), (3, ChangeKind::Fix));
    // The input that changed with it: the firmware, and nothing else.
    for ch in [regression, fix] {
        let inputs: Vec<&str> = ch.inputs.iter().map(|i| i.input.as_str()).collect();
        assert_eq!(inputs, ["firmware"], "{ch:#?}");
        assert_ne!(ch.inputs[0].was, ch.inputs[0].now);
        assert!(
            ch.inputs[0].now.starts_with("2025.02") && ch.inputs[0].now.contains("sha256 "),
            "{ch:#?}"
        );
    }
    assert_eq!(h.runs[1].regressions, 1);
    assert_eq!(h.runs[2].regressions, 0);
    assert!(
        log.contains("run 2:") && log.contains("changed: firmware"),
        "{log}"
    );

    let md = std::fs::read_to_string(out.join("history.md")).unwrap();
    assert!(
        md.contains("(first change)") && md.contains("regression"),
        "{md}"
    );
    assert!(md.contains("firmware: 2025.02"), "{md}");
    let html = std::fs::read_to_string(out.join("history.html")).unwrap();
    assert!(
        html.contains("first change") && html.contains("firmware: 2025.02"),
        "{html}"
    );

    // A nightly pipeline's check: the previous night against tonight.
    let (code, log) = history(&dirs[..2], &root.path().join("h12"), true);
    assert_eq!(code, 1, "a regression at the last run fails: {log}");
    assert!(log.contains("regressed at the last run"), "{log}");
    let (code, log) = history(&dirs[1..], &root.path().join("h23"), true);
    assert_eq!(code, 0, "a fix is not a failure: {log}");
    // Kept as matrix.json files only, as the pipelines keep them.
    let kept: Vec<_> = runs.iter().map(|d| d.join("matrix.json")).collect();
    let kept: Vec<&Path> = kept.iter().map(|p| p.as_path()).collect();
    let (code, log) = history(&kept, &root.path().join("hjson"), false);
    assert_eq!(code, 0, "{log}");
    let h2: History =
        serde_json::from_slice(&std::fs::read(root.path().join("hjson/history.json")).unwrap())
            .unwrap();
    assert_eq!(h2.cells, h.cells);
}

#[test]
fn history_refuses_what_is_not_one_matrix() {
    let root = results_root();
    let (code, log) = history(&[root.path()], &root.path().join("h"), false);
    assert_eq!(code, 2, "{log}");
    let (code, log) = history(
        &[root.path(), &root.path().join("nothing")],
        &root.path().join("h"),
        false,
    );
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("neither plan.json nor matrix.json"), "{log}");
}
