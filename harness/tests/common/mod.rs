//! Helpers shared by the integration tests. These tests boot the real qemu-system-aarch64 with
//! Debian's real edk2; a missing QEMU or firmware is a test failure with a clear message, never
//! a silent skip (set BOOTWATCH_NO_QEMU=1 to opt out on a machine without them; CI never does).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_bootwatch"))
}

/// False (after saying why) when the user opted out of QEMU tests.
pub fn qemu_tests_enabled() -> bool {
    if std::env::var_os("BOOTWATCH_NO_QEMU").is_some() {
        eprintln!("BOOTWATCH_NO_QEMU is set: not booting anything");
        return false;
    }
    assert!(
        which::which("qemu-system-aarch64").is_ok(),
        "qemu-system-aarch64 is not installed: run .ci/install-deps (or set BOOTWATCH_NO_QEMU=1 to opt out)"
    );
    assert!(
        Path::new(HOST_CODE).is_file(),
        "{HOST_CODE} is missing: install qemu-efi-aarch64 (.ci/install-deps)"
    );
    true
}

/// Debian's edk2 (bookworm: 2022.11), installed by qemu-efi-aarch64.
pub const HOST_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";

/// The fixtures, generated once per test binary by `bootwatch fixtures`.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("bootwatch-fixtures-")
            .tempdir()
            .unwrap()
            .keep();
        let out = bin()
            .arg("fixtures")
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bootwatch fixtures: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A fresh results root for one test.
pub fn results_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bootwatch-test-results-")
        .tempdir()
        .unwrap()
}

/// Runs `bootwatch boot --json ...` and returns (exit code, result.json, stderr).
pub fn boot_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = bin().arg("boot").arg("--json").args(args).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}); exit {code}; stderr: {stderr}"));
    (code, v, stderr)
}

pub fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Pids of live processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        // Zombies have an empty cmdline; they are not running.
        if String::from_utf8_lossy(&cmd).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}
