//! The compatibility matrix on real QEMU and edk2: bad matrix files, a 2 x 2 x 2 matrix with QEMU
//! from two Debian suites run beside the host's (concurrency 2, every report format), shards
//! merged == the unsharded run, resume, repeat counts, and a matrix stopped mid-way.

use crate::common;
use crate::support;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::chromium;

use bootwatch::plan::matrix::model::MatrixReport;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/matrix")
        .join(name)
}

fn read_report(dir: &Path) -> MatrixReport {
    let p = dir.join("matrix.json");
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn matrix(args: &[&str]) -> std::process::Output {
    bin().arg("matrix").args(args).output().unwrap()
}

#[test]
fn bad_matrix_files_fail_before_any_vm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(data("crash-host.toml")).unwrap();
    for (body, needle) in [
        (
            good.replace("[axes]", "[axes]\nkvm = [\"on\"]"),
            "bad.toml:8: unknown axis",
        ),
        (
            good.replace("qemu = [\"host\"]", "qemu = [\"qemu:9.2\"]"),
            "bad.toml:9: axis qemu",
        ),
        (
            good.replace("firmware = [\"host\"]", "firmware = [\"flash:x.fd\"]"),
            "bad.toml:10: axis firmware",
        ),
        (
            good.replace("fixture:crash", "no-such-image"),
            "no image named \"no-such-image\"",
        ),
        (
            format!("{good}\n[[exclude]]\nqemu = \"debian:sid\"\n"),
            "not a value of that axis",
        ),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, &body).unwrap();
        let results = dir.path().join("results");
        let started = Instant::now();
        let out = matrix(&[f.to_str().unwrap(), "--results", results.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "wanted {needle:?} in: {stderr}");
        assert!(!results.exists(), "nothing may be written for a bad file");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // Malformed shards, from the flag and from GitLab's variables.
    let f = data("crash-host.toml");
    let results = dir.path().join("results");
    for shard in ["3/2", "0/2", "1/0", "two"] {
        let out = matrix(&[
            f.to_str().unwrap(),
            "--shard",
            shard,
            "--results",
            results.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--shard"));
    }
    let out = bin()
        .args(["matrix", f.to_str().unwrap(), "--results"])
        .arg(&results)
        .env("CI_NODE_INDEX", "3")
        .env("CI_NODE_TOTAL", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CI_NODE_INDEX"));
    assert!(!results.exists());
}

/// The whole matrix once, then as two shards merged, then resumed.
#[test]
fn matrix_of_two_qemu_suites_two_firmwares_two_images() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    let file = data("two-suites.toml");
    let whole = root.path().join("whole");
    let t = Instant::now();
    let out = matrix(&[
        file.to_str().unwrap(),
        "--concurrency",
        "2",
        "--results",
        whole.to_str().unwrap(),
    ]);
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_report(&whole);
    assert_eq!(r.status, "complete");
    assert_eq!(r.cells.len(), 8);
    for c in &r.cells {
        assert_eq!(
            serde_json::to_value(c.status).unwrap(),
            "done",
            "{}: {:?}",
            c.id,
            c.error
        );
        let qv = c.qemu_version.as_deref().unwrap_or_default();
        match c.axes.qemu.as_str() {
            "debian:trixie" => assert!(qv.starts_with("10.0."), "{qv}"),
            "debian:sid" => assert!(qv.starts_with("11."), "{qv}"),
            other => panic!("unexpected qemu {other}"),
        }
        let fv = c.firmware_version.as_deref().unwrap_or_default();
        assert_eq!(fv, c.axes.firmware.trim_start_matches("debian:"));
        match c.axes.image.as_str() {
            "fixture:crash" => {
                assert_eq!(c.outcome.verdict.as_str(), "sync-exception");
                assert!(
                    c.exception
                        .as_deref()
                        .unwrap_or_default()
                        .contains("Synchronous Exception at 0x"),
                    "{:?}",
                    c.exception
                );
                // Explained: the crash fixture is no known bug.
                let x = c.explanation.as_ref().expect("a failing cell is explained");
                assert_eq!((x.families.len(), &x.error), (0, &None), "{x:?}");
            }
            "fixture:hello" => {
                assert_eq!(c.outcome.verdict.as_str(), "qemu-exited");
                assert_eq!(c.outcome.exit_code, 0);
                assert_eq!(c.explanation, None);
            }
            other => panic!("unexpected image {other}"),
        }
        // Each cell's evidence is where the report says.
        let run = &c.runs[0];
        assert!(whole.join(&run.dir).join("console.log").is_file());
        assert!(whole.join(&run.dir).join("result.json").is_file());
    }
    for ext in ["json", "xml", "md", "html"] {
        let p = whole.join(format!("matrix.{ext}"));
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
            "{}",
            p.display()
        );
    }
    let xml = std::fs::read_to_string(whole.join("matrix.xml")).unwrap();
    assert_eq!(xml.matches("<testcase").count(), 8, "{xml}");
    assert_eq!(xml.matches("<failure").count(), 4, "{xml}");
    assert!(xml.contains("sync-exception"));
    let md = std::fs::read_to_string(whole.join("matrix.md")).unwrap();
    for c in &r.cells {
        assert!(md.contains(&c.id) || md.contains(&c.axes.image), "{md}");
    }
    assert_eq!(md.matches(": no known family").count(), 4, "{md}");
    // The real page in headless Chromium: every cell rendered with its verdict; a filter from
    // the URL fragment leaves the matching half.
    let html = whole.join("matrix.html");
    let dom = chromium::dump_dom(&html, None).unwrap();
    assert_eq!(
        dom.matches("<td class=\"cell cat-sync-exception\"").count(),
        4,
        "{dom}"
    );
    // The hello fixture powers off on purpose (exit code 0): coloured as reached.
    assert_eq!(
        dom.matches("<td class=\"cell cat-reached\"").count(),
        4,
        "{dom}"
    );
    assert!(dom.contains("8 of 8 cells shown"), "{dom}");
    let dom = chromium::dump_dom(&html, Some("qemu=debian:sid")).unwrap();
    assert!(dom.contains("4 of 8 cells shown"), "{dom}");
    eprintln!(
        "whole matrix: wall {wall:.1} s; report: wall {:.1} s, cells {:.1} s, efficiency {:.2}, outside QEMU {:.1} s ({:.1} %)",
        r.timing.wall_s,
        r.timing.cells_s,
        r.timing.efficiency,
        r.timing.overhead_s,
        r.timing.overhead_fraction * 100.0
    );

    // Two shards, one named by the flag and one by GitLab's variables, merged.
    let s1 = root.path().join("shard-1");
    let s2 = root.path().join("shard-2");
    let out = matrix(&[
        file.to_str().unwrap(),
        "--shard",
        "1/2",
        "--concurrency",
        "2",
        "--results",
        s1.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = bin()
        .args([
            "matrix",
            file.to_str().unwrap(),
            "--concurrency",
            "2",
            "--results",
        ])
        .arg(&s2)
        .env("CI_NODE_INDEX", "2")
        .env("CI_NODE_TOTAL", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let partial = read_report(&s1);
    assert_eq!(partial.status, "partial");
    assert_eq!(partial.summary.done, 4);
    let merged = root.path().join("merged");
    let out = bin()
        .args(["report", "merge"])
        .arg(&s1)
        .arg(&s2)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m = read_report(&merged);
    assert_eq!(
        bootwatch::report::comparable(&m),
        bootwatch::report::comparable(&r),
        "shards merged must equal the unsharded run"
    );
    for ext in ["json", "xml", "md", "html"] {
        assert!(merged.join(format!("matrix.{ext}")).is_file());
    }
    for c in &m.cells {
        assert!(merged.join(&c.runs[0].dir).join("console.log").is_file());
    }

    // Resume: the same matrix into the same directory runs nothing again.
    let t = Instant::now();
    let out = matrix(&[file.to_str().unwrap(), "--results", whole.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = read_report(&whole);
    assert_eq!(
        bootwatch::report::comparable(&again),
        bootwatch::report::comparable(&r)
    );
    let exec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("execution.json")).unwrap()).unwrap();
    assert_eq!(exec["resumed"].as_array().unwrap().len(), 8, "{exec}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // The matrix edited (a filter added): the remaining cells are kept, nothing runs again.
    let edited = root.path().join("two-suites.toml");
    std::fs::write(
        &edited,
        format!(
            "{}\n[[exclude]]\nqemu = \"debian:sid\"\n",
            std::fs::read_to_string(&file).unwrap()
        ),
    )
    .unwrap();
    let out = matrix(&[
        edited.to_str().unwrap(),
        "--results",
        whole.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let fewer = read_report(&whole);
    assert_eq!(fewer.cells.len(), 4);
    let exec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("execution.json")).unwrap()).unwrap();
    assert_eq!(exec["resumed"].as_array().unwrap().len(), 4, "{exec}");
    // Another matrix is refused in that directory, before anything runs.
    let out = matrix(&[
        data("crash-host.toml").to_str().unwrap(),
        "--results",
        whole.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another matrix"));
}

#[test]
fn repeated_cells_report_how_many_runs_crashed() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    let dir = root.path().join("r");
    let out = matrix(&[
        data("crash-host.toml").to_str().unwrap(),
        "--repeat",
        "2",
        "--results",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_report(&dir);
    assert_eq!(r.repeat, 2);
    let c = &r.cells[0];
    assert_eq!(c.runs.len(), 2);
    assert_eq!((c.crashed, c.repeat, c.flaky), (2, 2, false));
    assert_eq!(c.outcome.verdict.as_str(), "sync-exception");
    assert_eq!(c.firmware_version.as_deref(), Some("2022.11"));
    assert_ne!(c.runs[0].dir, c.runs[1].dir);
}

/// A failing cell carries what `bootwatch explain` says of its first failing run into
/// matrix.json, matrix.md and matrix.html: the project's finding (edk2 2026.08 on QEMU 5.2,
/// the cell its bundle was made from) names its family, with its confidence.
#[test]
fn a_failing_cell_carries_its_explanation_into_every_report() {
    if !qemu_tests_enabled() {
        return;
    }
    let root = results_root();
    let dir = root.path().join("r");
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/findings/edk2-2026.08-on-qemu-5.2/bundle.toml");
    let out = matrix(&[file.to_str().unwrap(), "--results", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_report(&dir);
    let c = &r.cells[0];
    assert_eq!(c.outcome.verdict.as_str(), "sync-exception");
    let x = c
        .explanation
        .as_ref()
        .unwrap_or_else(|| panic!("no explanation: {c:#?}"));
    assert_eq!(x.run, "run-1");
    let ids: Vec<&str> = x.families.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["edk2-smccc-hvc-on-qemu-5.2"], "{x:?}");
    assert!(x.families[0].confidence > 0.5, "{x:?}");
    // What explaining took (after the cell, beside the next ones), recorded.
    assert!(x.explain_s > 0.0, "{x:?}");
    eprintln!(
        "explaining the failing cell took {:.3} s (the cell: {:.3} s, {:.3} s outside QEMU)",
        x.explain_s, c.duration_s, c.overhead_s
    );
    let text = x.text();
    assert!(
        text.starts_with("edk2-smccc-hvc-on-qemu-5.2 (confidence 0."),
        "{text}"
    );
    let md = std::fs::read_to_string(dir.join("matrix.md")).unwrap();
    assert!(md.contains("Known bugs (`bootwatch explain`"), "{md}");
    assert!(
        md.contains(&bootwatch::report::md(&text, 300)),
        "{text} not in {md}"
    );
    let html = std::fs::read_to_string(dir.join("matrix.html")).unwrap();
    assert!(
        html.contains(&format!("known bug (bootwatch explain): {text}")),
        "{html}"
    );
}

/// Live child processes of `parent` (QEMU runs as bootwatch's child).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[1] == parent.to_string() && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s[s.rfind(')').unwrap() + 1..].split_whitespace().next() != Some("Z"))
        .unwrap_or(false)
}

/// Starts a matrix of cells that never end, waits until `n` cells run, and returns the child.
fn start_silent_matrix(dir: &Path, n: usize) -> std::process::Child {
    let mut child = bin()
        .args([
            "matrix",
            data("silent.toml").to_str().unwrap(),
            "--concurrency",
            "2",
        ])
        .arg("--results")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("start") {
                let _ = tx.send(());
            }
        }
    });
    for _ in 0..n {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("cells did not start");
    }
    // Let the VMs get going.
    std::thread::sleep(Duration::from_secs(3));
    child
}

#[test]
fn stopping_a_matrix_midway_kills_its_vms_and_keeps_a_valid_partial_report() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    for (signal, name) in [
        (nix::sys::signal::Signal::SIGTERM, "term"),
        (nix::sys::signal::Signal::SIGKILL, "kill"),
    ] {
        let dir = root.path().join(name);
        let mut child = start_silent_matrix(&dir, 2);
        let vms = children_of(child.id());
        assert_eq!(vms.len(), 2, "two QEMUs should be running: {vms:?}");
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        // QEMU dies with bootwatch (SIGTERM: killed by it; SIGKILL: by the parent-death signal).
        let deadline = Instant::now() + Duration::from_secs(10);
        while vms.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<_> = vms.iter().filter(|p| alive(**p)).collect();
        assert!(left.is_empty(), "{name}: QEMUs left: {left:?}");
        let r = read_report(&dir);
        assert_eq!(r.status, "partial", "{name}");
        assert_eq!(r.cells.len(), 4);
        assert_eq!(r.summary.done, 0, "{name}");
        if name == "term" {
            assert_eq!(status.code(), Some(125), "{name}");
            assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
            let interrupted = r
                .cells
                .iter()
                .filter(|c| serde_json::to_value(c.status).unwrap() == "interrupted")
                .count();
            assert_eq!(
                interrupted, 2,
                "the two running cells are recorded as interrupted"
            );
            let exec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("execution.json")).unwrap())
                    .unwrap();
            assert_eq!(exec["interrupted"], true);
            for ext in ["xml", "md", "html"] {
                assert!(dir.join(format!("matrix.{ext}")).is_file());
            }
        }
    }
}

#[test]
fn a_cell_bootwatch_cannot_run_is_an_error_not_a_guest_result() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    let file = root.path().join("m.toml");
    std::fs::write(
        &file,
        std::fs::read_to_string(data("crash-host.toml"))
            .unwrap()
            .replace(
                "qemu = [\"host\"]",
                "qemu = [\"host\", \"path:/nonexistent/qemu-system-aarch64\"]",
            ),
    )
    .unwrap();
    let dir = root.path().join("r");
    let out = matrix(&[file.to_str().unwrap(), "--results", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 cell(s) could not be run"));
    let r = read_report(&dir);
    assert_eq!((r.summary.done, r.summary.errors), (1, 1));
    let bad = r
        .cells
        .iter()
        .find(|c| c.axes.qemu.starts_with("path:"))
        .unwrap();
    assert_eq!(serde_json::to_value(bad.status).unwrap(), "error");
    assert!(
        bad.error
            .as_deref()
            .unwrap_or_default()
            .contains("/nonexistent/qemu-system-aarch64"),
        "{:?}",
        bad.error
    );
    let good = r.cells.iter().find(|c| c.axes.qemu == "host").unwrap();
    assert_eq!(good.outcome.verdict.as_str(), "sync-exception");
    let xml = std::fs::read_to_string(dir.join("matrix.xml")).unwrap();
    assert_eq!(xml.matches("<error").count(), 1, "{xml}");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
}

#[test]
fn a_baseline_turns_changed_cells_into_regressions() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    let dir = root.path().join("r");
    let file = data("crash-host.toml");
    let out = matrix(&[file.to_str().unwrap(), "--results", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Last night's matrix, as it would have been had the cell booted.
    let mut night: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("matrix.json")).unwrap()).unwrap();
    night["cells"][0]["verdict"] = "reached".into();
    night["cells"][0]["exit_code"] = 0.into();
    let baseline = root.path().join("baseline.json");
    std::fs::write(&baseline, serde_json::to_vec(&night).unwrap()).unwrap();
    // The same matrix again (resumed: nothing boots) against that baseline.
    let out = matrix(&[
        file.to_str().unwrap(),
        "--results",
        dir.to_str().unwrap(),
        "--baseline",
        baseline.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 regressions"),
        "{}",
        text(&out)
    );
    let r = read_report(&dir);
    let c = r.comparison.as_ref().expect("a comparison");
    assert_eq!(c.regressions.len(), 1);
    assert_eq!(c.regressions[0].was.as_str(), "reached");
    assert_eq!(c.regressions[0].now.as_str(), "sync-exception");
    assert!(c.fixes.is_empty());
    let md = std::fs::read_to_string(dir.join("matrix.md")).unwrap();
    assert!(md.contains("Regressions"), "{md}");
}

/// `NAME@upgraded`: the upgrade runs once (cached), its disk and variable store are booted
/// read-only through the cells' own overlays, and the cells see the new bootloader.
#[test]
fn upgraded_image_state_is_made_once_and_booted_with_either_vars_store() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    let dir = root.path().join("r");
    let out = matrix(&[
        data("upgraded.toml").to_str().unwrap(),
        "--saved-login",
        "--results",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_report(&dir);
    assert_eq!(
        r.cells.len(),
        3,
        "no guest store for the image that was not upgraded"
    );
    let console = |image: &str, vars: &str| {
        let c = r
            .cells
            .iter()
            .find(|c| c.axes.image == image && c.axes.vars == vars)
            .unwrap();
        assert_eq!(
            c.outcome.verdict.as_str(),
            "reached",
            "{image} {vars}: {}",
            c.outcome.reason
        );
        assert_eq!(c.outcome.stage.as_str(), "kernel");
        std::fs::read_to_string(dir.join(&c.runs[0].dir).join("console.log")).unwrap()
    };
    let before = console("debian-12-local", "template");
    assert!(before.contains("GNU GRUB  version 2.06"), "{before}");
    let fresh = console("debian-12-local@upgraded", "template");
    assert!(fresh.contains("GNU GRUB  version 2.12"), "{fresh}");
    // A fresh store has no boot entries: the firmware takes the removable path. The guest's
    // own store has the entry its bootloader installation wrote.
    assert!(fresh.contains("UEFI Misc Device"), "{fresh}");
    let own = console("debian-12-local@upgraded", "guest");
    assert!(own.contains("GNU GRUB  version 2.12"), "{own}");
    assert!(own.contains("\\EFI\\debian\\shimaa64.efi"), "{own}");

    // Made once: the upgraded disk is cached read-only, and a new matrix run reuses it.
    let up = r
        .cells
        .iter()
        .find(|c| c.axes.image.ends_with("@upgraded"))
        .unwrap()
        .inputs
        .image_sha256
        .clone()
        .unwrap();
    let dir2 = root.path().join("again");
    let t = Instant::now();
    let out = matrix(&[
        data("upgraded.toml").to_str().unwrap(),
        "--results",
        dir2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r2 = read_report(&dir2);
    assert!(r2.executions[0].prepare_s < 30.0, "{:?}", r2.executions[0]);
    assert!(t.elapsed() < Duration::from_secs(180));
    let up2 = r2
        .cells
        .iter()
        .find(|c| c.axes.image.ends_with("@upgraded"))
        .unwrap()
        .inputs
        .image_sha256
        .clone()
        .unwrap();
    assert_eq!(up, up2);
    // ... and that is the disk's real hash: the cells did not write it.
    let cache = bootwatch::sys::fsx::cache_root().unwrap().join("upgraded");
    let sha = |p: &Path| {
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
        hex::encode(sha2::Digest::finalize(h))
    };
    let disk = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("disk.qcow2"))
        .find(|p| p.is_file() && sha(p) == up)
        .expect("a cached upgraded disk with the hash the cells recorded");
    assert!(std::fs::metadata(&disk).unwrap().permissions().readonly());
    // Made with `--saved-login`, and still an overlay of the base image alone.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        Path::new(info["backing-filename"].as_str().unwrap()),
        std::fs::canonicalize(local_image_path("debian-12-local")).unwrap(),
        "{info:#}"
    );
}

/// An update that leaves the guest unable to boot (the built-in bad update) still makes an
/// upgraded state: the cells boot it and are judged (`sync-exception` before GRUB, status done),
/// never `error`: a bricked guest is what these cells exist to show; each is explained as the
/// replaced boot loader.
#[test]
fn an_upgraded_state_that_does_not_boot_is_judged_in_its_cells() {
    if !qemu_tests_enabled() {
        return;
    }
    let _serial = both_cores();
    let root = results_root();
    let dir = root.path().join("r");
    let out = matrix(&[
        data("upgraded-bad.toml").to_str().unwrap(),
        "--saved-login",
        "--results",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_report(&dir);
    assert_eq!(r.cells.len(), 2);
    for c in &r.cells {
        assert_eq!(
            c.status,
            bootwatch::plan::matrix::model::CellStatus::Done,
            "{}: {:?}",
            c.axes.vars,
            c.error
        );
        assert_eq!(
            c.outcome.verdict.as_str(),
            "sync-exception",
            "{}",
            c.outcome.reason
        );
        assert!(c.outcome.before_grub, "{}", c.outcome.reason);
        assert_eq!(c.outcome.exit_code, 1);
        // Explained from the cell's disk and the upgrade that made it: the update replaced the
        // boot loader the firmware starts, with either store.
        let x = c.explanation.as_ref().expect("a failing cell is explained");
        let ids: Vec<&str> = x.families.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["replaced-boot-loader"], "{}: {x:?}", c.axes.vars);
    }
}

/// The shipped Debian matrix plans every local Debian release on every QEMU and firmware: each
/// image once per QEMU x firmware with a fresh store, and the upgraded Debian 12 also with the
/// store its upgrade left (the vars axis only applies to `@upgraded`). `--dry-run` boots nothing.
#[test]
fn shipped_debian_matrix_plans_the_three_releases() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/matrix/debian.toml"
    );
    let results = tempfile::tempdir().unwrap();
    let out = matrix(&[
        file,
        "--dry-run",
        "--results",
        results.path().join("r").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut lines = listing.lines();
    let head = lines.next().unwrap();
    assert!(head.contains(": 100 cells, 100 in this shard"), "{head}");
    // `  INDEX ID  image · qemu · firmware · cpu · vars`
    let cells: Vec<Vec<String>> = lines
        .map(|l| {
            let axes = l.trim().splitn(3, ' ').nth(2).unwrap_or_default();
            axes.split('·').map(|a| a.trim().to_string()).collect()
        })
        .collect();
    assert_eq!(cells.len(), 100, "{listing}");
    let count = |image: &str, vars: &str| {
        cells
            .iter()
            .filter(|c| c[0] == image && c[4] == vars)
            .count()
    };
    for image in ["debian-11-local", "debian-12-local", "debian-13-local"] {
        assert_eq!(count(image, "template"), 20, "{image}\n{listing}");
        assert_eq!(count(image, "guest"), 0, "{image}\n{listing}");
    }
    assert_eq!(count("debian-12-local@upgraded", "template"), 20);
    assert_eq!(count("debian-12-local@upgraded", "guest"), 20);
}
