//! End-to-end boots of the generated fixtures on real QEMU + Debian's edk2.

use crate::common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn crash_fixture_is_a_sync_exception_before_grub_decided_within_two_seconds() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("crash.img");
    let (code, r, err) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(r["verdict"], "sync-exception", "{r:#}");
    assert_eq!(r["stage"], "firmware");
    assert_eq!(r["before_grub"], true);
    assert_eq!(r["status"], "complete");
    let addr = r["finding"]["exception"]["address"].as_str().unwrap();
    assert!(
        addr.starts_with("0x") && addr.len() == 18 && addr.ends_with("000"),
        "{addr}"
    );
    let delay = r["time_to_verdict_s"].as_f64().unwrap() - r["evidence_t_s"].as_f64().unwrap();
    assert!(
        (0.0..2.0).contains(&delay),
        "verdict {delay:.3} s after the exception line"
    );
    assert_eq!(
        r["qemu"]["version"].as_str().map(|v| v.split('.').count()),
        Some(3)
    );
    assert_eq!(r["firmware"]["code"]["size"], 64 * 1024 * 1024);
    assert_eq!(r["disks"][0]["size"], 1024 * 1024);
    // The evidence is on disk, and the command line is a paste-able string.
    let dir = only_dir(res.path());
    let log = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(log.contains("Synchronous Exception at 0x"), "{log}");
    assert!(std::fs::metadata(dir.join("serial.raw")).unwrap().len() > 0);
    assert!(
        std::fs::read_to_string(dir.join("qmp.jsonl"))
            .unwrap()
            .contains("\"query-version\"")
    );
    assert!(r["command_line"].as_str().unwrap().contains("-S"));
}

#[test]
fn hello_fixture_prints_its_marker_and_powers_off() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("hello.img");
    let (code, r, err) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert_eq!(r["verdict"], "qemu-exited");
    assert_eq!(r["qemu"]["exit"]["code"], 0);
    let shutdown = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SHUTDOWN")
        .expect("a SHUTDOWN event");
    assert_eq!(shutdown["data"]["guest"], true);
    let dir = only_dir(res.path());
    let log = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(log.contains("BOOTWATCH-FIXTURE-HELLO"), "{log}");
}

#[test]
fn silent_fixture_hangs_after_the_silence_limit_not_the_timeout() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("silent.img");
    let started = Instant::now();
    let (code, r, err) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
        "--silence",
        "10",
        "--timeout",
        "300",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(r["verdict"], "hang", "{r:#}");
    assert!(
        r["last_line"].as_str().unwrap().contains(SILENT_STARTED),
        "{}",
        r["last_line"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_wrong_qemu_argument_is_a_harness_error_not_a_guest_failure() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("hello.img");
    let (code, r, _) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
        "--qemu-arg",
        "-no-such-option",
    ]);
    assert_eq!(code, 125);
    assert_eq!(r["verdict"], "harness-error");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("no-such-option"),
        "QEMU's own message is quoted: {reason}"
    );
}

/// A failure after the results directory exists (here: the private directory for the sockets
/// cannot be made) is recorded: `result.json` and `case.json` with status `error`, verdict
/// `harness-error` and the message, exit code 125.
#[test]
fn a_run_that_fails_after_its_results_directory_exists_leaves_an_error_record() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let out = bin()
        .env("TMPDIR", "/proc")
        .args(["boot", "--json", "--snapshot", "--disk"])
        .arg(fixtures().join("hello.img"))
        .arg("--results")
        .arg(res.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let dirs: Vec<_> = res.path().read_dir().unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "one run directory");
    let dir = dirs[0].path();
    for file in ["result.json", "case.json"] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        assert_eq!(v["status"], "error", "{file}: {v:#}");
        assert_eq!(v["verdict"], "harness-error", "{file}");
        assert_eq!(v["exit_code"], 125, "{file}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("/proc"),
            "{file}: the message names the cause: {error}"
        );
    }
}

#[test]
fn missing_inputs_are_usage_errors_that_name_the_file_and_write_nothing() {
    let res = results_root();
    let out = bin()
        .args(["boot", "--disk", "/nonexistent/disk.img", "--results"])
        .arg(res.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/disk.img"),
        "{}",
        text(&out)
    );
    let out = bin()
        .args([
            "boot",
            "--firmware",
            "/nonexistent/CODE.fd",
            "--disk",
            "/dev/null",
            "--results",
        ])
        .arg(res.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/CODE.fd"),
        "{}",
        text(&out)
    );
    let out = bin()
        .args([
            "boot",
            "--qemu",
            "/nonexistent/qemu",
            "--disk",
            "/dev/null",
            "--results",
        ])
        .arg(res.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("QEMU not found"),
        "{}",
        text(&out)
    );
    // A firmware that is a directory or an empty file cannot be a code image: refused before
    // QEMU starts, naming the path and the flag.
    let scratch = tempfile::tempdir().unwrap();
    let empty = scratch.path().join("EMPTY_CODE.fd");
    std::fs::write(&empty, b"").unwrap();
    for (firmware, why) in [
        (scratch.path(), "not a regular file"),
        (empty.as_path(), "empty file"),
    ] {
        let out = bin()
            .args(["boot", "--disk", "/dev/null", "--firmware"])
            .arg(firmware)
            .arg("--results")
            .arg(res.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in [firmware.to_str().unwrap(), why, "--firmware"] {
            assert!(stderr.contains(needle), "wanted {needle:?}: {}", text(&out));
        }
    }
    // `--results` naming a file (where a directory is expected): refused, the file untouched.
    let file = scratch.path().join("results-file");
    std::fs::write(&file, b"keep me").unwrap();
    let out = bin()
        .args(["boot", "--disk", "/dev/null", "--results"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "--results",
        file.to_str().unwrap(),
        "exists and is not a directory",
    ] {
        assert!(stderr.contains(needle), "wanted {needle:?}: {}", text(&out));
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert_eq!(
        scratch.path().read_dir().unwrap().count(),
        2,
        "only the test's own files"
    );
    assert_eq!(
        res.path().read_dir().unwrap().count(),
        0,
        "nothing is written for a usage error"
    );
}

/// The console line of the firmware starting the silent fixture's application: the guest is
/// then in the firmware stage, where it stays (the application prints nothing).
const SILENT_STARTED: &str = "BdsDxe: starting Boot";

/// Starts a boot of the silent fixture with a private TMPDIR (so its QEMU can be found by its
/// socket paths), waits until QEMU runs and the firmware has started the fixture (mid-boot),
/// kills the harness with `signal`, and checks that no QEMU is left.
fn kill_harness_mid_boot(
    signal: nix::sys::signal::Signal,
) -> (tempfile::TempDir, tempfile::TempDir) {
    let res = results_root();
    let tmp = tempfile::Builder::new()
        .prefix("bootwatch-killtest-")
        .tempdir()
        .unwrap();
    let mut child = start_silent_boot(res.path(), tmp.path(), false);
    wait_for_qemu(&mut child, tmp.path());
    wait_for_console(
        res.path(),
        &mut child,
        SILENT_STARTED,
        Duration::from_secs(120),
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    child.wait().unwrap();
    let needle = tmp.path().to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU outlived the harness ({signal}): {:?}",
            processes_with(&needle)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (res, tmp)
}

/// A boot of the silent fixture with its own TMPDIR (so its QEMU can be found by its socket
/// paths), optionally with umask 000.
fn start_silent_boot(
    res: &std::path::Path,
    tmp: &std::path::Path,
    umask_000: bool,
) -> std::process::Child {
    let mut cmd = bin();
    cmd.args([
        "boot",
        "--snapshot",
        "--silence",
        "100",
        "--timeout",
        "200",
        "--disk",
    ])
    .arg(fixtures().join("silent.img"))
    .arg("--results")
    .arg(res)
    .env("TMPDIR", tmp)
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(tmp.join("harness.stderr")).unwrap());
    if umask_000 {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::stat::umask(nix::sys::stat::Mode::empty());
                Ok(())
            });
        }
    }
    cmd.spawn().unwrap()
}

/// Waits until the harness's QEMU runs (found by the TMPDIR in its command line).
fn wait_for_qemu(child: &mut std::process::Child, tmp: &std::path::Path) {
    let needle = tmp.to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&needle).is_empty() {
        let stderr = || std::fs::read_to_string(tmp.join("harness.stderr")).unwrap_or_default();
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "the harness ended ({st}) before QEMU was seen: {}",
                stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "QEMU never started: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The private directories of `tmp` (`bootwatch-<pid>-*`).
fn private_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("bootwatch-"))
        })
        .collect()
}

/// Under umask 000 the private directory is still 0700 and QEMU's sockets are its owner's only:
/// another local user cannot connect to QMP (full control of the VM).
#[test]
fn private_directory_and_sockets_stay_private_under_umask_000() {
    if !qemu_tests_enabled() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let res = results_root();
    let tmp = tempfile::Builder::new()
        .prefix("bootwatch-umask-")
        .tempdir()
        .unwrap();
    // The test's own directory must let others in, or it would hide what bootwatch does.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = start_silent_boot(res.path(), tmp.path(), true);
    wait_for_qemu(&mut child, tmp.path());
    let dirs = private_dirs(tmp.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dirs[0]), 0o700, "private directory");
    // QEMU creates its sockets while it starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dirs[0].join("qmp.sock").exists() || !dirs[0].join("serial.sock").exists() {
        assert!(Instant::now() < deadline, "QEMU made no sockets");
        std::thread::sleep(Duration::from_millis(50));
    }
    for sock in ["qmp.sock", "serial.sock"] {
        let m = mode(&dirs[0].join(sock));
        assert_eq!(m & 0o077, 0, "{sock} is {m:o}");
    }
    // Another user (nobody, 65534) tries to connect to QMP.
    let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
    if nix::unistd::getuid().is_root()
        && let Some(nobody) = nobody
        && which::which("python3").is_ok()
    {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print(type(e).__name__); sys.exit(3)\nprint('connected')",
            ])
            .arg(dirs[0].join("qmp.sock"))
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(3),
            "another user could connect: {said}"
        );
        assert!(said.contains("PermissionError"), "{said}");
    } else {
        eprintln!(
            "no second user can be made here (not root, no `nobody`, or no python3): only the modes were checked"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
}

#[test]
fn sigterm_mid_boot_leaves_no_qemu_and_an_interrupted_result() {
    if !qemu_tests_enabled() {
        return;
    }
    let (res, _tmp) = kill_harness_mid_boot(nix::sys::signal::Signal::SIGTERM);
    let dir = only_dir(res.path());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "interrupted", "{r:#}");
    assert_eq!(r["exit_code"], 125);
    // The stage is how far the boot got: the firmware had started the fixture (the test waited
    // for that line), and the fixture prints nothing that would move it on.
    let log = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(log.contains(SILENT_STARTED), "{log}");
    assert_eq!(r["stage"], "firmware", "{r:#}");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    assert_eq!(case["status"], "interrupted", "{case:#}");
    assert_eq!(case["stage"], "firmware", "{case:#}");
}

#[test]
fn sigkill_mid_boot_leaves_no_qemu() {
    if !qemu_tests_enabled() {
        return;
    }
    let (res, tmp) = kill_harness_mid_boot(nix::sys::signal::Signal::SIGKILL);
    // The harness could not finish its record, but what it wrote is valid JSON saying so.
    let dir = only_dir(res.path());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    // The killed harness could not remove its private directory (with its 64 MiB vars copy, if
    // any); the next run removes it, since its owner is gone.
    let stale = private_dirs(tmp.path());
    assert_eq!(stale.len(), 1, "{stale:?}");
    let out = bin()
        .args(["boot", "--json", "--snapshot", "--disk"])
        .arg(fixtures().join("hello.img"))
        .arg("--results")
        .arg(res.path())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !stale[0].exists(),
        "the dead run's private directory is still there"
    );
    assert!(
        private_dirs(tmp.path()).is_empty(),
        "the new run's is gone too"
    );
    assert_eq!(r["status"], "running");
}
