//! `bootwatch check`: one case as `git bisect run` reads it. Exit 0 when the guest did what a
//! good build does (the healthy fixture powers off), 1 when it failed (the crash fixture's
//! exception), 125 when nothing could be judged (a firmware file that does not exist, a disk
//! that does not exist), 128 for a command line it cannot parse (so `git bisect run` stops);
//! `--repeat` and `--json`. `--qemu`/`--firmware` take provider specs as the matrix does.

use crate::common;

use common::*;

fn check(args: &[&str]) -> (i32, String) {
    let res = results_root();
    let out = bin()
        .arg("check")
        .args(args)
        .arg("--results")
        .arg(res.path())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

fn fixture(name: &str) -> String {
    fixtures().join(name).to_str().unwrap().to_string()
}

#[test]
fn good_bad_and_undetermined_exit_codes() {
    if !qemu_tests_enabled() {
        return;
    }
    let host = format!("path:{HOST_CODE}");
    let (c, out) = check(&[
        "--snapshot",
        "--firmware",
        &host,
        "--disk",
        &fixture("hello.img"),
    ]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("check: good; exit 0"), "{out}");
    let (c, out) = check(&[
        "--snapshot",
        "--firmware",
        HOST_CODE,
        "--disk",
        &fixture("crash.img"),
    ]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("sync-exception"), "{out}");
    // Looking for a fix, a failure is the old side and a good boot the new one.
    let (c, out) = check(&[
        "--find-fix",
        "--snapshot",
        "--firmware",
        HOST_CODE,
        "--disk",
        &fixture("crash.img"),
    ]);
    assert_eq!(c, 0, "{out}");
    let (c, out) = check(&[
        "--find-fix",
        "--snapshot",
        "--firmware",
        HOST_CODE,
        "--disk",
        &fixture("hello.img"),
    ]);
    assert_eq!(c, 1, "{out}");
    let (c, out) = check(&[
        "--find-fix",
        "--firmware",
        HOST_CODE,
        "--disk",
        "/nonexistent/d.img",
    ]);
    assert_eq!(c, 125, "{out}");
    // What a failed build at some commit looks like: its firmware file is not there.
    let (c, out) = check(&[
        "--firmware",
        "path:/nonexistent/Build/QEMU_EFI.fd",
        "--disk",
        &fixture("hello.img"),
    ]);
    assert_eq!(c, 125, "{out}");
    assert!(out.contains("does not exist"), "{out}");
    let (c, out) = check(&["--firmware", HOST_CODE, "--disk", "/nonexistent/disk.img"]);
    assert_eq!(c, 125, "{out}");
}

#[test]
fn an_unparsable_command_line_stops_git_bisect_run() {
    let (c, out) = check(&["--no-such-flag"]);
    assert_eq!(c, 128, "{out}");
    let (c, out) = check(&["--disk", "x.img", "--repeat", "0"]);
    assert_eq!(c, 128, "{out}");
    let (c, out) = check(&["--disk", "x.img", "--qemu", "debian:Bullseye"]);
    assert_eq!(c, 128, "{out}");
    assert!(out.contains("not a Debian suite name"), "{out}");
    let out = bin().args(["check", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--repeat"));
}

#[test]
fn repeat_stops_at_the_first_failure_and_json_lists_the_runs() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let run = |img: &str| {
        let out = bin()
            .args([
                "check",
                "--json",
                "--snapshot",
                "--repeat",
                "2",
                "--firmware",
                HOST_CODE,
            ])
            .args(["--disk", &fixture(img), "--results"])
            .arg(res.path())
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out.status.code().unwrap(), v)
    };
    let (c, v) = run("hello.img");
    assert_eq!((c, v["class"].as_str().unwrap()), (0, "good"), "{v}");
    assert_eq!(v["runs"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["repeat"], 2);
    let (c, v) = run("crash.img");
    assert_eq!((c, v["class"].as_str().unwrap()), (1, "bad"), "{v}");
    // Bad at the first failing run: no second boot.
    assert_eq!(v["runs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["runs"][0]["verdict"], "sync-exception");
    assert!(
        std::path::Path::new(v["runs"][0]["dir"].as_str().unwrap())
            .join("case.json")
            .is_file()
    );
}
