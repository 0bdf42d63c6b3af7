//! `bootwatch classify` on every real console log in the test data: the CLI contract (JSON
//! fields, exit codes) and the expected verdict of each sample.

use crate::common;

use common::*;

const EXPECTED: &[(&str, &str, &str)] = &[
    ("crash-bitpixie-2-1.txt", "shim-error", "shim"),
    (
        "crash-fedora-coreos-tracker-1014-1.txt",
        "sync-exception",
        "shim",
    ),
    (
        "crash-fedora-coreos-tracker-1271-1.txt",
        "efistub-error",
        "kernel-handoff",
    ),
    (
        "crash-fedora-coreos-tracker-1886-1.txt",
        "grub-error",
        "grub",
    ),
    (
        "crash-kubernetes-the-harder-way-6-1.txt",
        "sync-exception",
        "firmware",
    ),
    ("crash-lima-1337-1.txt", "no-bootable-device", "firmware"),
    ("crash-lima-1996-1.txt", "sync-exception", "firmware"),
    ("crash-lima-3141-1.txt", "sync-exception", "none"),
    ("crash-lxc-ci-150-1.txt", "secure-boot-denied", "firmware"),
    ("crash-mkosi-1140-1.txt", "sync-exception", "firmware"),
    ("crash-pftf-rpi4-235-1.txt", "sync-exception", "shim"),
    (
        "crash-qualcomm-linux-kernel-297-1.txt",
        "kernel-panic",
        "kernel",
    ),
    (
        "crash-qualcomm-linux-kernel-541-1.txt",
        "kernel-panic",
        "kernel",
    ),
    ("crash-rhboot-shim-371-1.txt", "sync-exception", "shim"),
    ("crash-rhboot-shim-490-1.txt", "shim-error", "shim"),
    ("crash-rhboot-shim-585-1.txt", "sync-exception", "shim"),
    ("crash-rhel-edge-1231-1.txt", "grub-error", "grub"),
    ("crash-ventoy-1658-1.txt", "sync-exception", "none"),
    ("ok-canonical-lxd-12211-1.txt", "reached", "kernel"),
    (
        "own-grub-2.12-upgrade-without-grub-install-1.txt",
        "no-bootable-device",
        "firmware",
    ),
    ("ok-clangbuiltlinux-1782-1.txt", "reached", "kernel"),
    (
        "own-edk2-2026.08-on-qemu-5.2-1.txt",
        "sync-exception",
        "firmware",
    ),
    (
        "own-issue-12-error-lines-after-userspace-1.txt",
        "reached",
        "userspace",
    ),
    (
        "own-issue-12-banner-without-address-1.txt",
        "sync-exception",
        "firmware",
    ),
    (
        "own-issue-12-banner-across-the-line-limit-1.txt",
        "sync-exception",
        "firmware",
    ),
    ("own-issue-12-note-flood-1.txt", "reached", "kernel"),
    (
        "own-issue-12-banner-flood-1.txt",
        "sync-exception",
        "firmware",
    ),
];

#[test]
fn every_sample_gets_its_expected_verdict_stage_and_exit_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/console");
    let on_disk = dir.read_dir().unwrap().count();
    assert_eq!(
        on_disk,
        EXPECTED.len(),
        "every sample needs an expectation here"
    );
    for (file, verdict, stage) in EXPECTED {
        let out = bin()
            .arg("classify")
            .arg("--json")
            .arg(dir.join(file))
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (v["verdict"].as_str().unwrap(), v["stage"].as_str().unwrap()),
            (*verdict, *stage),
            "{file}"
        );
        assert!(v["findings"].is_array(), "{file}");
        let want = if *verdict == "reached" { 0 } else { 1 };
        assert_eq!(out.status.code(), Some(want), "{file}");
    }
}

/// A flood of one pattern keeps its first findings; the last kept one counts the rest.
#[test]
fn a_flood_shows_its_first_findings_and_how_many_more_there_were() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/console");
    for (file, pattern) in [
        ("own-issue-12-note-flood-1.txt", "bds-load-failed"),
        ("own-issue-12-banner-flood-1.txt", "edk2-sync-exception"),
    ] {
        let out = bin()
            .args(["classify", "--json"])
            .arg(dir.join(file))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let of_pattern: Vec<&serde_json::Value> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["pattern"] == pattern)
            .collect();
        assert_eq!(of_pattern.len(), 16, "{file}");
        assert_eq!(of_pattern[15]["repeats"], 300 - 16, "{file}");
        assert!(
            out.stdout.len() < 64 << 10,
            "{file}: {} bytes",
            out.stdout.len()
        );
    }
}

#[test]
fn a_missing_log_is_a_usage_error() {
    let out = bin()
        .args(["classify", "/nonexistent/console.log"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/console.log"));
}
