//! `bootwatch bisect` and `git bisect run bootwatch check` with real boots of the fixtures:
//!
//! - a list of nine firmware builds (`path:` entries: Debian's edk2 2025.02 up to a known point,
//!   2026.08 from there on, which crashes on bullseye's QEMU 5.2 even on the healthy fixture)
//!   is bisected to that point in at most ceil(log2 9) + 1 = 5 boots, with the ends first;
//!   with a build that does not exist at the first midpoint, that step is undetermined
//!   (skipped like `git bisect skip`, no boot) and the answer is the same; the bisection's
//!   bundle (`bootwatch bundle`, and a run's with `--bisect`) carries the builds' provenance
//!   and names the first bad and last good build in REPORT.md;
//! - a QEMU list ordered from bad to good (5.2, then the host's 7.2, with edk2 2026.08) is a
//!   fix, found in two boots; ends that agree are refused with a clear message (exit 2);
//! - `git bisect run bootwatch check ...` over a generated repository whose commits change the
//!   disk (the healthy fixture, then the crash fixture; one commit without a disk: 125, skipped)
//!   names the first bad commit;
//! - `bisect.md` is valid Markdown (parsed: a heading, the steps table with one row per step),
//!   and every `bisect.json` field is documented in the README.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Debian's edk2 `version` (code, vars), fetched and cached by `bootwatch firmware fetch`.
fn debian_firmware(version: &str) -> (String, String) {
    let out = bin()
        .args(["firmware", "fetch", version, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firmware fetch {version}: {}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["code"].as_str().unwrap().to_string(),
        v["vars"].as_str().unwrap().to_string(),
    )
}

/// Runs `bootwatch bisect FILE --results DIR --json`: (exit code, bisect.json, output).
fn bisect(file: &Path, results: &Path) -> (i32, serde_json::Value, String) {
    bisect_with(file, results, &[])
}

fn bisect_with(file: &Path, results: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = bin()
        .arg("bisect")
        .arg(file)
        .args(args)
        .arg("--results")
        .arg(results)
        .arg("--json")
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no bisect.json on stdout ({e}); {}", text(&out)));
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("bisect.json")).unwrap()).unwrap();
    assert_eq!(v, on_disk, "stdout and bisect.json differ");
    check_markdown(results, &v);
    (code, v, text(&out))
}

/// `bisect.md` parses as CommonMark with tables: its title, a Steps table with a header, a
/// delimiter row and one row per step, and nothing passed through as raw HTML.
fn check_markdown(results: &Path, v: &serde_json::Value) {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let md = std::fs::read_to_string(results.join("bisect.md")).unwrap();
    let mut rows = 0;
    let mut tables = 0;
    let mut h1 = String::new();
    let mut in_h1 = false;
    let mut cells_in_row = 0;
    let mut widths = Vec::new();
    for ev in Parser::new_ext(&md, Options::ENABLE_TABLES) {
        match ev {
            Event::Start(Tag::Heading {
                level: HeadingLevel::H1,
                ..
            }) => in_h1 = true,
            Event::End(TagEnd::Heading(HeadingLevel::H1)) => in_h1 = false,
            Event::Text(t) if in_h1 => h1.push_str(&t),
            Event::Start(Tag::Table(_)) => tables += 1,
            Event::Start(Tag::TableRow) => {
                rows += 1;
                cells_in_row = 0;
            }
            Event::Start(Tag::TableCell) => cells_in_row += 1,
            Event::End(TagEnd::TableRow) | Event::End(TagEnd::TableHead) => {
                widths.push(cells_in_row);
                cells_in_row = 0;
            }
            Event::Html(h) | Event::InlineHtml(h) => panic!("raw HTML in bisect.md: {h}\n{md}"),
            _ => {}
        }
    }
    assert!(
        h1.starts_with("bootwatch bisect: "),
        "no title heading: {h1:?}\n{md}"
    );
    assert_eq!(tables, 1, "{md}");
    assert_eq!(rows, v["steps"].as_array().unwrap().len(), "{md}");
    assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}\n{md}");
}

/// A firmware list of `n` `path:` builds: `good` before `first_bad`, `bad` from there, `None`
/// at `missing` (a build that does not exist).
fn firmware_list(
    dir: &Path,
    n: usize,
    first_bad: usize,
    missing: Option<usize>,
    good: &(String, String),
    bad: &(String, String),
) -> Vec<String> {
    (0..n)
        .map(|i| {
            let d = dir.join(format!("build-{i:02}"));
            if missing != Some(i) {
                std::fs::create_dir_all(&d).unwrap();
                let (code, vars) = if i < first_bad { good } else { bad };
                std::os::unix::fs::symlink(code, d.join("CODE.fd")).unwrap();
                std::os::unix::fs::symlink(vars, d.join("VARS.fd")).unwrap();
            }
            format!(
                "path:{},{}",
                d.join("CODE.fd").display(),
                d.join("VARS.fd").display()
            )
        })
        .collect()
}

fn write_file(dir: &Path, name: &str, builds_key: &str, builds: &[String], fixed: &str) -> PathBuf {
    let list = builds
        .iter()
        .map(|b| format!("  {b:?},\n"))
        .collect::<String>();
    let text = format!(
        "name = {name:?}\nimage = \"fixture:hello\"\n{fixed}\n{builds_key} = [\n{list}]\ntimeout_s = 60\nsilence_s = 20\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn ceil_log2(n: usize) -> usize {
    (usize::BITS - (n - 1).leading_zeros()) as usize
}

#[test]
fn a_firmware_list_is_bisected_to_its_known_boundary_even_around_a_missing_build() {
    if !qemu_tests_enabled() {
        return;
    }
    let good = debian_firmware("2025.02");
    let bad = debian_firmware("2026.08");
    let tmp = tempfile::tempdir().unwrap();
    let n = 9;
    let first_bad = 6;

    // 1. Every build there: ends first, then a binary search.
    let builds = firmware_list(&tmp.path().join("a"), n, first_bad, None, &good, &bad);
    let file = write_file(
        tmp.path(),
        "nine",
        "firmware",
        &builds,
        "qemu = \"debian:bullseye\"",
    );
    let res = tmp.path().join("r-nine");
    let (code, v, out) = bisect(&file, &res);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["schema"], "bootwatch.bisect/1");
    assert_eq!(
        (v["status"].as_str(), v["axis"].as_str()),
        (Some("found"), Some("firmware")),
        "{v}"
    );
    assert_eq!(v["direction"], "regression");
    let r = &v["result"];
    assert_eq!(r["first_bad"]["index"], first_bad, "{v}");
    assert_eq!(r["last_good"]["index"], first_bad - 1, "{v}");
    assert_eq!(
        r["first_bad"]["build"].as_str(),
        Some(builds[first_bad].as_str())
    );
    // Both sides' evidence: the crash and the firmware that booted.
    assert_eq!(r["first_bad"]["run"]["verdict"], "sync-exception", "{v}");
    assert!(
        r["first_bad"]["run"]["exception"]
            .as_str()
            .unwrap()
            .contains("Synchronous Exception")
    );
    assert_eq!(r["first_bad"]["run"]["firmware_version"], "2026.08");
    assert_eq!(r["last_good"]["run"]["verdict"], "qemu-exited", "{v}");
    assert_eq!(r["last_good"]["run"]["firmware_version"], "2025.02");
    assert_eq!(r["first_bad"]["run"]["qemu_version"], "5.2.0");
    let boots = v["boots"].as_u64().unwrap() as usize;
    assert!(
        boots <= ceil_log2(n) + 1,
        "{boots} boots for {n} builds: {v}"
    );
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[0]["index"], 0);
    assert_eq!(steps[1]["index"], n - 1);
    assert_eq!(
        (steps[0]["role"].as_str(), steps[0]["class"].as_str()),
        (Some("end"), Some("good"))
    );
    assert_eq!(steps[1]["class"], "bad");
    // Each step is an ordinary case directory.
    for s in steps {
        let run = res.join(s["runs"][0]["dir"].as_str().unwrap());
        assert!(run.join("case.json").is_file(), "{}", run.display());
        assert!(run.join("console.log").is_file(), "{}", run.display());
    }
    // Progress on stderr: step k of about N, with what is left and the time.
    assert!(out.contains("bisect step 3 of about"), "{out}");
    assert!(out.contains("elapsed"), "{out}");
    bundle_the_bisection(tmp.path(), &res, &builds, first_bad);

    // 2. The first midpoint's build does not exist: undetermined, stepped around.
    let mid = (n - 1).div_ceil(2);
    let builds = firmware_list(&tmp.path().join("b"), n, first_bad, Some(mid), &good, &bad);
    let file = write_file(
        tmp.path(),
        "nine-missing",
        "firmware",
        &builds,
        "qemu = \"debian:bullseye\"",
    );
    let res = tmp.path().join("r-missing");
    let (code, v, out) = bisect(&file, &res);
    assert_eq!(code, 0, "{out}");
    let r = &v["result"];
    assert_eq!(
        (
            r["first_bad"]["index"].as_u64(),
            r["last_good"]["index"].as_u64()
        ),
        (Some(first_bad as u64), Some(first_bad as u64 - 1)),
        "{v}"
    );
    let skipped: Vec<&serde_json::Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["class"] == "skip")
        .collect();
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["index"], mid);
    assert_eq!(skipped[0]["boots"], 0);
    assert!(
        skipped[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{v}"
    );
    assert!(
        v["boots"].as_u64().unwrap() as usize <= ceil_log2(n) + 2,
        "{v}"
    );
    let md = std::fs::read_to_string(res.join("bisect.md")).unwrap();
    assert!(md.contains("| skip"), "{md}");
}

/// The input of `role` among a record's `inputs` (`case.json`, `bundle.json`).
fn input(record: &serde_json::Value, role: &str) -> serde_json::Value {
    record["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == role)
        .cloned()
        .unwrap_or_else(|| panic!("no {role} in {record:#}"))
}

/// `bootwatch bundle` of the bisection `res` (and of its first bad run with `--bisect res`): kind
/// bisect, the inputs' provenance (each `path:` build is a file of Debian's edk2 package, found by
/// its sha256: package and version; QEMU's tree: its package), and REPORT.md naming the first bad
/// and the last good build with theirs.
fn bundle_the_bisection(tmp: &Path, res: &Path, builds: &[String], first_bad: usize) {
    let out = tmp.join("nine.tar.gz");
    let b = crate::bundle::bundle(res, &out);
    assert_eq!(b["kind"], "bisect", "{b:#}");
    assert_eq!(b["verdict"], "sync-exception", "{b:#}");
    assert_eq!(
        b["bisect"]["first_bad"]["build"].as_str(),
        Some(builds[first_bad].as_str())
    );
    let (code, qemu) = (input(&b, "firmware-code"), input(&b, "qemu"));
    assert_eq!(code["provider"].as_str(), Some(builds[first_bad].as_str()));
    assert_eq!(code["package"], "qemu-efi-aarch64", "{code:#}");
    assert!(
        code["package_version"]
            .as_str()
            .unwrap()
            .starts_with("2026.08"),
        "{code:#}"
    );
    assert_eq!(code["version"], "2026.08", "{code:#}");
    assert!(
        code["url"].as_str().unwrap().starts_with("pool/"),
        "{code:#}"
    );
    assert_eq!(code["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(qemu["provider"], "debian:bullseye");
    assert_eq!(qemu["package"], "qemu-system-arm", "{qemu:#}");
    assert!(
        qemu["package_version"].as_str().unwrap().contains("5.2"),
        "{qemu:#}"
    );
    let files = crate::bundle::unpack(&out);
    assert!(files.contains_key("bisect.json") && files.contains_key("bisect.md"));
    let run_of = |side: &str| {
        let f = files
            .keys()
            .find(|k| k.starts_with(&format!("runs/{side}-")) && k.ends_with("/case.json"))
            .unwrap_or_else(|| panic!("no {side} run: {:?}", files.keys()));
        f.trim_end_matches("/case.json").to_string()
    };
    assert_eq!(
        b["primary_run"].as_str(),
        Some(run_of("first_bad").as_str())
    );
    let good_case: serde_json::Value =
        serde_json::from_slice(&files[&format!("{}/case.json", run_of("last_good"))]).unwrap();
    let good = input(&good_case, "firmware-code");
    assert_eq!(
        good["provider"].as_str(),
        Some(builds[first_bad - 1].as_str())
    );
    assert_eq!(good["package"], "qemu-efi-aarch64", "{good:#}");
    let good_version = good["package_version"].as_str().unwrap().to_string();
    assert!(good_version.starts_with("2025.02"), "{good:#}");
    crate::bundle::assert_clean(&files, &[]);

    // REPORT.md: the first bad and the last good build, each with its package and version.
    let md = String::from_utf8(files["REPORT.md"].clone()).unwrap();
    let row = |label: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no {label} row:\n{md}"))
            .to_string()
    };
    let bad_row = row("first bad build");
    assert!(
        bad_row.contains(&format!("`{}`", builds[first_bad])),
        "{bad_row}"
    );
    assert!(bad_row.contains("`qemu-efi-aarch64` `2026.08"), "{bad_row}");
    let good_row = row("last good build");
    assert!(
        good_row.contains(&format!("`{}`", builds[first_bad - 1])),
        "{good_row}"
    );
    assert!(
        good_row.contains(&format!("`qemu-efi-aarch64` `{good_version}`")),
        "{good_row}"
    );
    assert!(md.contains("## Bisection"), "{md}");
    assert!(md.contains("Synchronous Exception at 0x"), "{md}");

    // The first bad run's own bundle, with the bisection's answer carried along.
    let first_bad_run = res.join(b["bisect"]["first_bad"]["run"]["dir"].as_str().unwrap());
    let out = tmp.join("run-with-bisect.tar.gz");
    let o = bin()
        .arg("bundle")
        .arg(&first_bad_run)
        .arg("--bisect")
        .arg(res)
        .args(["--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["kind"], "run");
    assert_eq!(r["bisect"], b["bisect"]);
    let files = crate::bundle::unpack(&out);
    assert!(files.contains_key("bisect.md"), "{:?}", files.keys());
    assert!(files.contains_key("runs/run/case.json"));
    assert!(
        files
            .keys()
            .any(|k| k.starts_with("runs/last_good-") && k.ends_with("/case.json")),
        "{:?}",
        files.keys()
    );
    let md = String::from_utf8(files["REPORT.md"].clone()).unwrap();
    assert!(md.contains(&bad_row), "{md}");
    assert!(md.contains(&good_row), "{md}");
    // A bisection is not carried by another one: refused, nothing written.
    let refused = tmp.join("refused.tar.gz");
    let o = bin()
        .arg("bundle")
        .arg(res)
        .arg("--bisect")
        .arg(res)
        .arg("--out")
        .arg(&refused)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a bisection already"), "{}", text(&o));
    assert!(!refused.exists());
}

#[test]
fn a_fix_on_the_qemu_axis_and_ends_that_agree() {
    if !qemu_tests_enabled() {
        return;
    }
    let (code26, vars26) = debian_firmware("2026.08");
    let tmp = tempfile::tempdir().unwrap();
    // QEMU 5.2 crashes edk2 2026.08, the host's 7.2 boots it: the list goes from bad to good.
    let file = write_file(
        tmp.path(),
        "qemu",
        "qemu",
        &["debian:bullseye".into(), "host".into()],
        &format!("firmware = \"path:{code26},{vars26}\""),
    );
    let (code, v, out) = bisect(&file, &tmp.path().join("r-qemu"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (v["status"].as_str(), v["direction"].as_str()),
        (Some("found"), Some("fix")),
        "{v}"
    );
    assert_eq!(v["result"]["first_good"]["build"], "host");
    assert_eq!(v["result"]["last_bad"]["build"], "debian:bullseye");
    assert_eq!(v["boots"], 2);

    // --repeat 2: the failing build is bad at its first run, the good one boots twice; said so.
    let res = tmp.path().join("r-qemu-repeat");
    let (code, v, out) = bisect_with(&file, &res, &["--repeat", "2"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["fixed"]["repeat"], 2);
    assert_eq!(v["boots"], 3, "{v:#}");
    assert_eq!(v["steps"][1]["runs"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(v["steps"][1]["detail"], "2 of 2 runs good", "{v:#}");
    let md = std::fs::read_to_string(res.join("bisect.md")).unwrap();
    assert!(
        md.contains("up to 2 times and counted bad if any run failed"),
        "{md}"
    );

    // Both ends boot: refused, with what to do.
    let file = write_file(
        tmp.path(),
        "agree",
        "firmware",
        &[
            format!("path:{HOST_CODE}"),
            format!("path:{HOST_CODE},{}", HOST_CODE.replace("CODE", "VARS")),
        ],
        "qemu = \"host\"",
    );
    let (code, v, out) = bisect(&file, &tmp.path().join("r-agree"));
    assert_eq!(code, 2, "{out}");
    assert_eq!(v["status"], "ends-agree");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("both ends are good"),
        "{v}"
    );
    assert!(out.contains("both ends are good"), "{out}");
    assert_eq!(v["boots"], 2);
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn git_bisect_run_bootwatch_check_finds_the_first_bad_commit() {
    if !qemu_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    // Ten commits: the disk is the healthy fixture up to commit 5 (commit 3 has no disk at all:
    // `check` exits 125 and git skips it), the crash fixture from commit 6 on.
    let first_bad = 6;
    let mut shas = Vec::new();
    for i in 0..10 {
        let disk = repo.join("disk.img");
        if i == 3 {
            let _ = std::fs::remove_file(&disk);
        } else {
            let f = if i < first_bad {
                "hello.img"
            } else {
                "crash.img"
            };
            std::fs::copy(fixtures().join(f), &disk).unwrap();
        }
        std::fs::write(repo.join("NOTES"), format!("commit {i}\n")).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", &format!("commit {i}")]);
        shas.push(git(&repo, &["rev-parse", "HEAD"]).trim().to_string());
    }
    let results = tmp.path().join("results");
    git(&repo, &["bisect", "start", &shas[9], &shas[0]]);
    let out = Command::new("git")
        .current_dir(&repo)
        .args(["bisect", "run"])
        .arg(env!("CARGO_BIN_EXE_bootwatch"))
        .args([
            "check",
            "--snapshot",
            "--firmware",
            HOST_CODE,
            "--disk",
            "disk.img",
        ])
        .args(["--timeout", "60", "--silence", "20", "--results"])
        .arg(&results)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!("{} is the first bad commit", shas[first_bad])),
        "wanted commit {first_bad} ({}): {log}",
        shas[first_bad]
    );
    // Each run of `check` left an ordinary results directory, outside the work tree.
    let runs = std::fs::read_dir(&results).unwrap().count();
    assert!((2..=6).contains(&runs), "{runs} runs: {log}");
    git(&repo, &["bisect", "reset"]);
}

/// The README documents every field `bisect.json` has (its section names each key).
#[test]
fn bisect_json_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("### bisect.json")
        .expect("README has a `### bisect.json` section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n## ").map_or(section.len(), |e| e + 4)];
    for key in [
        "schema",
        "name",
        "description",
        "file",
        "axis",
        "status",
        "message",
        "direction",
        "fixed",
        "candidates",
        "steps",
        "result",
        "boots",
        "started_at",
        "wall_s",
        "host",
        "bootwatch_version",
        "first_bad",
        "last_good",
        "first_good",
        "last_bad",
        "range",
        "culprits",
        "role",
        "index",
        "packages",
        "class",
        "detail",
        "error",
        "runs",
        "dir",
        "duration_s",
        "exception",
        "evidence_line",
        "qemu_version",
        "firmware_version",
        "repeat",
        "verdict",
        "exit_code",
        "upgrade_update",
    ] {
        assert!(
            section.contains(&format!("`{key}`")),
            "README's bisect.json section does not name `{key}`"
        );
    }
}

/// The shipped bisect files are valid (checked by `--dry-run`, which boots nothing).
#[test]
fn the_shipped_bisect_files_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/bisect");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let out = bin()
            .arg("bisect")
            .arg(&p)
            .arg("--dry-run")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", p.display(), text(&out));
        n += 1;
    }
    assert!(n >= 2);
}
