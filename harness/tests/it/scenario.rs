//! The main job end to end: scenario files, dry runs on every vendor image, a command that never
//! finishes, and the embedded demo (good update, bad update, restore-bootloader workaround) on
//! real QEMU with the local Debian image and hermetic update repositories.

use crate::common;

use common::*;
use std::time::Instant;

const SCENARIO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scenarios/upgrade-reboot.toml"
);

#[test]
fn bad_scenario_files_fail_before_qemu_starts_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (body, line, needle) in [
        (
            "name = \"x\"\n\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n\n[[step]]\ndo = \"dance\"\n",
            8,
            "unknown step \"dance\"",
        ),
        (
            "name = \"x\"\n\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n\n[[step]]\ndo = \"run\"\n",
            7,
            "missing `command`",
        ),
        (
            "name = \"x\"\n\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\ntimeout = \"soon\"\n",
            6,
            "`timeout` must be a positive number",
        ),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, body).unwrap();
        let started = Instant::now();
        let out = bin()
            .arg("run")
            .arg(&f)
            .args(["--image", "debian-12-local"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:{line}:", f.display())) && err.contains(needle),
            "{err}"
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "nothing may start for a bad file"
        );
    }
}

#[test]
fn every_vendor_image_has_a_dry_run_plan() {
    for (image, manager) in [
        ("centos-stream-9", "dnf"),
        ("centos-stream-9-20240429", "dnf"),
        ("rocky-9.4", "dnf"),
        ("almalinux-9.4", "dnf"),
        ("oraclelinux-9.4", "dnf"),
        ("oraclelinux-9.3", "dnf"),
        ("fedora-39", "dnf"),
        ("fedora-40", "dnf"),
        ("ubuntu-22.04", "apt-get"),
        ("ubuntu-24.04", "apt-get"),
        ("debian-11", "apt-get"),
        ("debian-12", "apt-get"),
    ] {
        let out = bin()
            .args([
                "run",
                SCENARIO,
                "--image",
                image,
                "--dry-run",
                "--json",
                "--exclude-bootloader",
            ])
            .env("BOOTWATCH_CACHE", "/nonexistent/cache")
            .output()
            .unwrap();
        assert!(out.status.success(), "{image}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let upgrade = v["upgrade_command"].as_str().unwrap();
        assert!(upgrade.contains(manager), "{image}: {v:#}");
        // The workaround acts on the installed boot-chain packages, found in the guest.
        assert!(
            upgrade.contains(if manager == "dnf" {
                "rpm -q --qf"
            } else {
                "dpkg-query -W"
            }),
            "{image}: {upgrade}"
        );
        if image.starts_with("oraclelinux") {
            assert_eq!(v["login_user"], "bootwatch", "{image}: the seeded user");
        }
        assert!(
            v["qemu_command_line"]
                .as_str()
                .unwrap()
                .contains("qemu-system-aarch64"),
            "{image}"
        );
        assert!(v["url"].as_str().unwrap().starts_with("http"), "{image}");
        assert_eq!(v["steps"].as_array().unwrap().len(), 7, "{image}");
    }
}

/// Builds (or finds cached) the local Debian image.
fn ensure_image() {
    ensure_local("debian-12-local");
}

/// Builds (or finds cached) a local image (every local image, two at a time, the first time).
fn ensure_local(name: &str) {
    assert!(local_image_path(name).is_file());
}

/// The demo's row of `case`.
fn demo_row(rows: &serde_json::Value, case: &str) -> serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["case"] == case)
        .unwrap_or_else(|| panic!("no {case}: {rows:#}"))
        .clone()
}

/// The `case.json` of the demo's row.
fn case_json(row: &serde_json::Value) -> serde_json::Value {
    let dir = std::path::PathBuf::from(row["results"].as_str().unwrap());
    serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap()
}

/// The demo's variable store (`case.json`'s `vars_change`) just before the upgrade and as the
/// case left it, decoded. The first boot (from the removable path, "UEFI Misc Device") already
/// left Boot0008 "debian" first in BootOrder (shim's fallback makes it); neither update
/// touches a boot entry or BootOrder (the apt guest's good update runs grub-install, which
/// leaves them as they were; the other updates only replace files); what changes is the
/// firmware's own bookkeeping on the reboot: MTC (its monotonic counter, bumped every boot)
/// and HDDP (edk2's cache of the full device path behind a short-form HD() boot option,
/// written the first time the firmware itself boots Boot0008).
/// The demo's two image cases ran with `--saved-login` on one state (one of them may have saved
/// it): what they judged is the upgrade's reboot, a whole boot through the firmware.
fn both_on_one_saved_login_prompt(good: &serde_json::Value, bad: &serde_json::Value) {
    let states: Vec<serde_json::Value> = [good, bad]
        .iter()
        .map(|r| case_json(r)["login_state"].clone())
        .collect();
    assert_eq!(states[0]["key"], states[1]["key"], "{states:#?}");
    assert!(
        states
            .iter()
            .all(|s| s["action"] == "saved" || s["action"] == "resumed"),
        "{states:#?}"
    );
    assert!(
        states.iter().any(|s| s["action"] == "resumed"),
        "{states:#?}"
    );
}

fn vars_unchanged_but_for_the_firmware_s_bookkeeping(
    good: &serde_json::Value,
    bad: &serde_json::Value,
) {
    for r in [good, bad] {
        let case = case_json(r);
        let v = &case["vars_change"];
        assert_eq!(v["before_label"], "before-upgrade", "{v:#}");
        assert!(v["errors"].is_null(), "{v:#}");
        let before = &v["before"];
        let entries = before["entries"].as_array().unwrap();
        let debian = entries
            .iter()
            .find(|e| e["description"] == "debian")
            .unwrap_or_else(|| panic!("no debian entry: {v:#}"));
        let path = debian["path"].as_str().unwrap();
        assert!(
            path.starts_with("HD(1,GPT,") && path.ends_with("\\EFI\\debian\\shimaa64.efi"),
            "{path}"
        );
        assert_eq!(debian["active"], true);
        assert_eq!(before["boot_order"][0], debian["id"], "{v:#}");
        assert!(
            entries
                .iter()
                .any(|e| e["description"] == "UEFI Misc Device"),
            "{v:#}"
        );
        assert_eq!(
            before["boot_order"].as_array().unwrap().len(),
            entries.len(),
            "{v:#}"
        );
        assert_eq!(v["after"]["boot_order"], before["boot_order"], "{v:#}");
        assert_eq!(v["after"]["entries"], before["entries"], "{v:#}");
        assert_eq!(v["boot_order_changed"], false);
        assert_eq!(v["boot_entries_changed"], serde_json::json!([]));
        let changed: Vec<(&str, &str)> = v["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["change"].as_str().unwrap()))
            .collect();
        assert_eq!(
            changed,
            [("MTC", "changed"), ("HDDP", "added")],
            "{}: {v:#}",
            r["case"]
        );
    }
}

#[test]
fn a_command_that_never_returns_times_out_as_a_step_error_and_the_vm_is_cleaned_up() {
    if !qemu_tests_enabled() {
        return;
    }
    ensure_image();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("stuck.toml");
    std::fs::write(&f, "name = \"stuck\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n[[step]]\ndo = \"login\"\n\
                        [[step]]\ndo = \"run\"\ncommand = \"sleep 600\"\ntimeout = 10\n[[step]]\ndo = \"reboot\"\n").unwrap();
    let res = results_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("run")
        .arg(&f)
        .args([
            "--image",
            "debian-12-local",
            "--saved-login",
            "--json",
            "--results",
        ])
        .arg(res.path())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[2]["status"], "failed", "{v:#}");
    assert!(
        steps[2]["detail"].as_str().unwrap().contains("`sleep 600`"),
        "{}",
        steps[2]
    );
    assert_eq!(steps[3]["status"], "skipped");
    assert_eq!(v["verdict"], "harness-error");
    assert!(
        processes_with(tmp.path().to_str().unwrap()).is_empty(),
        "QEMU left behind"
    );
}

/// `--saved-login`: the first case of a machine boots and saves its login prompt; a later case
/// starts from it (nothing but the prompt in its boot), logs in with the saved credentials and
/// gets the host's time. (The demos' cases show what follows: an upgrade, a reboot through the
/// firmware, its verdict.) The machine (`--memory 1536`) is this test's own, so removing its
/// state disturbs no other.
#[test]
fn a_saved_login_prompt_is_saved_once_and_resumed_with_the_guest_clock_set() {
    if !qemu_tests_enabled() {
        return;
    }
    ensure_image();
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("save.toml");
    std::fs::write(
        &save,
        "name = \"save\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n[[step]]\ndo = \"login\"\n",
    )
    .unwrap();
    let resume = dir.path().join("resume.toml");
    std::fs::write(
        &resume,
        "name = \"resume\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n[[step]]\ndo = \"login\"\n\
         [[step]]\ndo = \"run\"\ncommand = \"date -u +%s\"\ntimeout = 60\n",
    )
    .unwrap();
    let res = results_root();
    let run = |f: &std::path::Path| -> serde_json::Value {
        let out = bin()
            .arg("run")
            .arg(f)
            .args(["--image", "debian-12-local", "--memory", "1536"])
            .args(["--saved-login", "--json", "--results"])
            .arg(res.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut first = run(&save);
    if first["login_state"]["action"] == "resumed" {
        // Saved by an earlier test run: gone, the next case saves it again.
        std::fs::remove_dir_all(first["login_state"]["dir"].as_str().unwrap()).unwrap();
        first = run(&save);
    }
    let saved = &first["login_state"];
    assert_eq!(saved["action"], "saved", "{first:#}");
    assert!(
        first["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("saved"),
        "{first:#}"
    );
    let state = std::path::PathBuf::from(saved["dir"].as_str().unwrap());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        for f in ["state", "disk.qcow2", "vars.fd", "seed.img", "secrets.json"] {
            assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        }
    }
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("secrets.json")).unwrap()).unwrap();
    let password = secrets["password"].as_str().unwrap();
    assert!(password.len() >= 12);

    let before = jiff::Timestamp::now().as_second();
    let second = run(&resume);
    let after = jiff::Timestamp::now().as_second();
    let ls = &second["login_state"];
    assert_eq!(ls["action"], "resumed", "{second:#}");
    assert_eq!(ls["key"], saved["key"]);
    assert_eq!(ls["saved_by"], saved["saved_by"]);
    assert_eq!(second["verdict"], "reached", "{second:#}");
    assert!(
        !serde_json::to_string(&second).unwrap().contains(password),
        "the saved password is in the record"
    );
    // The resumed boot shows only the prompt: no firmware, GRUB or kernel of its own.
    let boots = second["boots"].as_array().unwrap();
    assert_eq!(boots.len(), 1, "{second:#}");
    let stages: Vec<&str> = boots[0]["boot"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["login"], "{second:#}");
    // The guest's clock was set at login: `date` is the host's time, not the save's.
    let guest_now: i64 = second["steps"][2]["commands"][0]["output"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (before - 5..=after + 5).contains(&guest_now),
        "guest clock {guest_now}, host between {before} and {after}"
    );
}

#[test]
fn demo_good_update_reaches_login_bad_update_crashes_before_grub_restore_recovers() {
    if !qemu_tests_enabled() {
        return;
    }
    ensure_image();
    let res = results_root();
    let started = Instant::now();
    let out = bin()
        .args(["demo", "--saved-login", "--json", "--results"])
        .arg(res.path())
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(&out)));
    for r in rows.as_array().unwrap() {
        eprintln!(
            "{:<30} {:<16} {:<10} verdict after {:>6.1} s  wall {:>6.1} s  suspects {}",
            r["case"].as_str().unwrap(),
            r["verdict"].as_str().unwrap(),
            r["stage"].as_str().unwrap(),
            r["time_to_verdict_s"].as_f64().unwrap_or(-1.0),
            r["wall_s"].as_f64().unwrap_or(-1.0),
            r["suspects"]
        );
    }
    eprintln!("demo wall time {:.0} s", started.elapsed().as_secs_f64());
    let row = |c: &str| demo_row(&rows, c);
    let good = row("good-update");
    assert_eq!(
        (good["verdict"].as_str(), good["stage"].as_str()),
        (Some("reached"), Some("login")),
        "{good:#}"
    );
    let bad = row("bad-update");
    assert_eq!(bad["verdict"], "sync-exception", "{bad:#}");
    assert_eq!(bad["before_grub"], true);
    assert!(bad["time_to_verdict_s"].as_f64().unwrap() < 60.0, "{bad:#}");
    let suspects: Vec<&str> = bad["suspects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        suspects
            .iter()
            .any(|s| s.starts_with("shim") || s.starts_with("grub")),
        "{suspects:?}"
    );
    let restored = row("bad-update+restore-bootloader");
    assert_eq!(restored["verdict"], "reached", "{restored:#}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    vars_unchanged_but_for_the_firmware_s_bookkeeping(&good, &bad);
    both_on_one_saved_login_prompt(&good, &bad);
}

/// The exclude-bootloader workaround on a guest that lacks one of the boot-chain packages its
/// entry names (as Debian's cloud images lack grub-efi-arm64-signed and shim-signed; it is
/// removed here, with apt's --allow-remove-essential, as GRUB is `Protected`): the
/// upgrade holds only the installed ones, still upgrades everything else (libcom-err2 from
/// bookworm-backports, served beside GRUB 2.12), leaves the held boot chain as it was, and
/// releases the holds afterwards.
#[test]
fn exclude_bootloader_holds_only_the_installed_boot_chain_and_upgrades_the_rest() {
    if !qemu_tests_enabled() {
        return;
    }
    ensure_image();
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let mirror = bootwatch::inputs::debian::resolve_mirror(None).unwrap();
    let mut spec = bootwatch::inputs::repo::ArchiveUpdate::bookworm_grub();
    spec.packages.push("libcom-err2".into());
    let repo = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(bootwatch::inputs::repo::archive_update(
            &mirror, &cache, &repo_dir, "bookworm", &spec,
        ))
        .unwrap();
    let served: Vec<&str> = repo.packages.iter().map(|p| p.package.as_str()).collect();
    assert!(
        served.contains(&"libcom-err2") && served.contains(&"grub-efi-arm64-signed"),
        "{served:?}"
    );
    let f = work.path().join("exclude.toml");
    std::fs::write(
        &f,
        "name = \"exclude-bootloader\"\n\
         [[step]]\ndo = \"boot\"\nuntil = \"login\"\ntimeout = 900\n\
         [[step]]\ndo = \"login\"\n\
         [[step]]\ndo = \"run\"\nroot = true\ncommand = \"apt-get remove -y --allow-remove-essential grub-efi-arm64-signed\"\n\
         [[step]]\ndo = \"snapshot-packages\"\nlabel = \"before\"\n\
         [[step]]\ndo = \"upgrade\"\ntimeout = 1800\n\
         [[step]]\ndo = \"snapshot-packages\"\nlabel = \"after\"\n\
         [[step]]\ndo = \"run\"\ncommand = \"apt-mark showhold | wc -l\"\n",
    )
    .unwrap();
    let res = results_root();
    let started = Instant::now();
    let out = bin()
        .arg("run")
        .arg(&f)
        .args(["--image", "debian-12-local", "--update"])
        .arg(&repo_dir)
        .args([
            "--exclude-bootloader",
            "--saved-login",
            "--json",
            "--results",
        ])
        .arg(res.path())
        .output()
        .unwrap();
    eprintln!(
        "exclude-bootloader run: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for st in v["steps"].as_array().unwrap() {
        assert_eq!(st["status"], "ok", "{st:#}");
    }
    let before = v["packages"]["before"].as_object().unwrap();
    let after = v["packages"]["after"].as_object().unwrap();
    assert!(
        !before.contains_key("grub-efi-arm64-signed"),
        "the named package is absent before the upgrade"
    );
    // Everything else was upgraded: libcom-err2 came from bookworm-backports.
    let diff = v["package_diff"].as_array().unwrap();
    let changed: Vec<&str> = diff.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(changed, ["libcom-err2"], "{diff:#?}");
    assert!(
        after["libcom-err2"].as_str().unwrap().contains("bpo12"),
        "{}",
        after["libcom-err2"]
    );
    // The installed boot chain is as it was, and the absent package still absent.
    for p in [
        "grub-efi-arm64",
        "grub-efi-arm64-bin",
        "shim-signed",
        "shim-unsigned",
        "grub-common",
        "grub2-common",
    ] {
        assert_eq!(before[p], after[p], "{p} changed");
        assert!(before.contains_key(p), "{p} not installed");
    }
    assert!(!after.contains_key("grub-efi-arm64-signed"));
    // The upgrade said what it held, and let go of it afterwards.
    let upgrade = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "upgrade")
        .unwrap();
    let output = upgrade["commands"][0]["output"].as_str().unwrap();
    assert!(
        output.contains("bootwatch: held for the upgrade: "),
        "{output}"
    );
    let held = output
        .lines()
        .find_map(|l| l.strip_prefix("bootwatch: held for the upgrade: "))
        .unwrap();
    assert!(
        held.contains("grub-efi-arm64-bin") && held.contains("shim-signed"),
        "{held}"
    );
    assert!(!held.contains("grub-efi-arm64-signed"), "{held}");
    let showhold = v["steps"].as_array().unwrap().last().unwrap();
    assert_eq!(
        showhold["commands"][0]["output"].as_str().unwrap().trim(),
        "0",
        "holds left behind: {showhold:#}"
    );
}

/// The demo's three outcomes through dnf and RPM packages: on `debian-12-dnf-local` (Debian's
/// userspace, boot chain owned by the RPMs `shim-aa64` and `grub2-efi-aa64`) the upgrade step
/// runs the EL entries' `dnf -y upgrade` against the served repository only and the package
/// lists come from their `rpm -qa` query. The good update (GRUB 2.12's binary as a newer
/// `grub2-efi-aa64`) reaches login and its diff names that RPM; the bad update (a `shim-aa64`
/// whose shim is the crashing application) crashes before GRUB with `shim-aa64` the first
/// suspect (from the entry's `bootloader_packages`); putting the image's EFI binaries back boots.
#[test]
fn demo_on_the_dnf_guest_through_rpm_packages() {
    if !qemu_tests_enabled() {
        return;
    }
    ensure_local("debian-12-dnf-local");
    let res = results_root();
    let started = Instant::now();
    let out = bin()
        .args([
            "demo",
            "--guest",
            "debian-12-dnf-local",
            "--saved-login",
            "--json",
            "--results",
        ])
        .arg(res.path())
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(&out)));
    eprintln!(
        "dnf demo wall time {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let row = |c: &str| demo_row(&rows, c);
    let changed = |case: &serde_json::Value| -> Vec<(String, String, String)> {
        case["package_diff"]
            .as_array()
            .unwrap_or_else(|| panic!("no package_diff: {case:#}"))
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["old"].as_str().unwrap_or("").to_string(),
                    c["new"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };

    let good = row("good-update");
    assert_eq!(
        (good["verdict"].as_str(), good["stage"].as_str()),
        (Some("reached"), Some("login")),
        "{good:#}"
    );
    let case = case_json(&good);
    let upgrade = case["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["commands"].as_array().cloned().unwrap_or_default())
        .find(|c| {
            c["command"]
                .as_str()
                .is_some_and(|d| d.contains("dnf -y upgrade"))
        })
        .unwrap_or_else(|| panic!("no dnf upgrade command: {case:#}"));
    assert!(
        upgrade["command"]
            .as_str()
            .unwrap()
            .contains("--repofrompath=bootwatch-update,"),
        "{upgrade:#}"
    );
    assert_eq!(upgrade["exit_code"], 0, "{upgrade:#}");
    let diff = changed(&case);
    assert_eq!(diff.len(), 1, "only GRUB's RPM changes: {diff:?}");
    let (name, old, new) = &diff[0];
    assert_eq!(name, "grub2-efi-aa64");
    assert!(
        old.starts_with("0:2.06-13") && old.ends_with(".aarch64"),
        "{old}"
    );
    assert!(
        new.starts_with("0:2.12-") && new.ends_with(".aarch64"),
        "{new}"
    );

    let bad = row("bad-update");
    assert_eq!(bad["verdict"], "sync-exception", "{bad:#}");
    assert_eq!(bad["before_grub"], true);
    assert_eq!(bad["suspects"][0], "shim-aa64", "{bad:#}");
    let bad_case = case_json(&bad);
    let diff = changed(&bad_case);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].2.contains(".bootwatch.bad1"), "{diff:?}");
    // The workaround wrote into a new overlay; the failed boot's disk is kept, and explain reads
    // it: the shim the firmware started was replaced, by the one RPM that changed.
    let failed = bad_case["restore"]["failed_disk"].as_str().unwrap();
    assert!(
        failed.ends_with("/overlay-before-restore.qcow2"),
        "{failed}"
    );
    let x = bin()
        .arg("explain")
        .arg(bad["results"].as_str().unwrap())
        .arg("--json")
        .output()
        .unwrap();
    let x: serde_json::Value = serde_json::from_slice(&x.stdout)
        .unwrap_or_else(|e| panic!("explain --json ({e}): {}", text(&x)));
    assert_eq!(x["families"][0]["id"], "replaced-boot-loader", "{x:#}");
    let first = x["facts"]["chain.first.path"].as_str().unwrap();
    let replaced = x["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == first)
        .unwrap_or_else(|| panic!("{first} not among the replaced: {x:#}"));
    assert!(
        replaced["packages"][0]
            .as_str()
            .unwrap()
            .starts_with("shim-aa64 "),
        "{replaced:#}"
    );

    let restored = row("bad-update+restore-bootloader");
    assert_eq!(restored["verdict"], "reached", "{restored:#}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    vars_unchanged_but_for_the_firmware_s_bookkeeping(&good, &bad);
    both_on_one_saved_login_prompt(&good, &bad);
}
