//! The `source:DIR` firmware provider through `bootwatch check`: a directory that is not an edk2
//! tree is undetermined (exit 125, named), never a bad commit. With a real edk2 checkout in
//! `BOOTWATCH_EDK2_TREE` (its submodules filled; the cross compiler installed), the checkout is
//! built with Debian's no-secboot flags and boots the hello fixture on the host's QEMU, and a
//! second check finds the build in the cache. CI has no edk2 checkout (the repository is not
//! needed there), so that test returns at once without the variable.

use crate::common;

use common::*;

#[test]
fn a_directory_that_is_not_an_edk2_tree_is_undetermined() {
    let tmp = tempfile::tempdir().unwrap();
    let res = results_root();
    let out = bin()
        .arg("check")
        .arg("--firmware")
        .arg(format!("source:{}", tmp.path().display()))
        .arg("--disk")
        .arg(fixtures().join("hello.img"))
        .arg("--results")
        .arg(res.path())
        .output()
        .unwrap();
    let text = text(&out);
    assert_eq!(out.status.code(), Some(125), "{text}");
    assert!(text.contains("is not an edk2 source tree"), "{text}");
    assert!(
        !tmp.path().join("Build").exists(),
        "nothing written into it"
    );
}

#[test]
fn a_real_checkout_builds_boots_and_is_cached() {
    let Some(tree) = std::env::var_os("BOOTWATCH_EDK2_TREE") else {
        eprintln!("skipped: BOOTWATCH_EDK2_TREE does not name an edk2 checkout");
        return;
    };
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let run = || {
        let started = std::time::Instant::now();
        let out = bin()
            .args([
                "check",
                "--json",
                "--snapshot",
                "--qemu",
                "host",
                "--firmware",
            ])
            .arg(format!("source:{}", std::path::Path::new(&tree).display()))
            .arg("--disk")
            .arg(fixtures().join("hello.img"))
            .arg("--results")
            .arg(res.path())
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out.status.code(), v, started.elapsed())
    };
    let (code, v, _) = run();
    assert_eq!(code, Some(0), "{v}");
    // Built once: the second check boots the cached image without building.
    let (code, v, took) = run();
    assert_eq!(code, Some(0), "{v}");
    assert!(took < std::time::Duration::from_secs(120), "{took:?}: {v}");
}
