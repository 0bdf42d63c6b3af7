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

/// The only directory under `root` (a run's case directory under its results root).
pub fn only_dir(root: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = root
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// Waits (at most `limit`) until the `console.log` of a run under `root` holds `needle`, while
/// `child` (the bootwatch running it) goes on.
pub fn wait_for_console(
    root: &Path,
    child: &mut std::process::Child,
    needle: &str,
    limit: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let seen = root.read_dir().unwrap().flatten().any(|d| {
            std::fs::read_to_string(d.path().join("console.log")).is_ok_and(|t| t.contains(needle))
        });
        if seen {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} on the console within {limit:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "bootwatch ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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

/// The smoke matrix (`scenarios/matrix/smoke.toml`) with its second firmware turned into a
/// `path:` firmware in `fw_dir` (`CODE.fd`, `VARS.fd`), crossed with only the hello fixture on
/// the host's QEMU: 5 cells, one of which boots whatever firmware is in `fw_dir` at the time.
/// Swapping those files between runs changes that one cell's firmware and nothing else, as a
/// firmware update on one axis value would. Returns the matrix file's text.
pub fn smoke_with_one_swappable_firmware(fw_dir: &Path) -> String {
    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/matrix/smoke.toml");
    let text = std::fs::read_to_string(&smoke).unwrap();
    let axis = "firmware = [\"debian:2022.11\", \"debian:2025.02\"]";
    assert!(
        text.contains(axis),
        "smoke.toml changed: update this helper"
    );
    let path = format!(
        "path:{},{}",
        fw_dir.join("CODE.fd").display(),
        fw_dir.join("VARS.fd").display()
    );
    format!(
        "{}\n[[exclude]]\nfirmware = \"{path}\"\nqemu = \"debian:trixie\"\n\n\
         [[exclude]]\nfirmware = \"{path}\"\nimage = \"fixture:crash\"\n",
        text.replace(
            axis,
            &format!("firmware = [\"debian:2022.11\", \"{path}\"]")
        )
    )
}

/// The code and vars files of Debian's edk2 `spec` (e.g. `2025.02`, `2025.02/ms`), fetched
/// (or found in the cache) by `bootwatch firmware fetch`.
pub fn debian_firmware(spec: &str) -> (PathBuf, PathBuf) {
    let out = bin()
        .args(["firmware", "fetch", spec, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firmware fetch {spec}: {}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        PathBuf::from(v["code"].as_str().unwrap()),
        PathBuf::from(v["vars"].as_str().unwrap()),
    )
}

/// Puts `spec`'s code and vars files into `fw_dir` as `CODE.fd` and `VARS.fd`.
pub fn install_firmware(spec: &str, fw_dir: &Path) {
    let (code, vars) = debian_firmware(spec);
    std::fs::create_dir_all(fw_dir).unwrap();
    for (from, to) in [(code, "CODE.fd"), (vars, "VARS.fd")] {
        let to = fw_dir.join(to);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(&from, &to).unwrap();
    }
}

/// Tests that keep both cores busy (two VMs at once, a boot of a Debian image at two vCPUs, a
/// parallel build) take this first: one of them at a time in the whole test binary, beside at
/// most one lighter test on libtest's other thread, so TCG timings stay those the tests model.
pub fn both_cores() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds every local image of `guest-images/local.toml` that is not cached yet, two at a time
/// (a build keeps about one core busy running maintainer scripts under qemu-user), once per test
/// run; returns the image name -> qcow2 path. On a cold cache the first test that needs a
/// local image pays for all of them in about half the time one after another would take.
pub fn local_images() -> &'static std::collections::BTreeMap<String, PathBuf> {
    static IMAGES: OnceLock<std::collections::BTreeMap<String, PathBuf>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let list = bin().args(["images", "list", "--json"]).output().unwrap();
        assert!(list.status.success(), "images list: {}", text(&list));
        let entries: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let names: Vec<String> = entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "local")
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        let started = std::time::Instant::now();
        let out = bin()
            .args(["images", "build", "--jobs", "2"])
            .args(&names)
            .output()
            .unwrap();
        assert!(out.status.success(), "images build: {}", text(&out));
        let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        assert_eq!(paths.len(), names.len(), "{}", text(&out));
        eprintln!(
            "local images ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            names.join(", ")
        );
        names.into_iter().zip(paths).collect()
    })
}

/// The qcow2 of one local image (all of them built first: [`local_images`]).
pub fn local_image_path(name: &str) -> PathBuf {
    local_images()
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not a local image"))
        .clone()
}
