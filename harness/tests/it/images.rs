//! Guest images end to end: the catalog as the CLI shows it, bad input, and the local Debian
//! image built from Debian's archive (cached under the user's cache directory between runs),
//! booted through edk2 -> shim -> GRUB -> kernel -> login on real QEMU, logged into over serial.

use crate::common;

use common::*;
use sha2::Digest;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds (or finds cached) debian-12-local once per test binary; returns the qcow2 path.
fn local_image() -> &'static PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let started = Instant::now();
        let path = local_image_path("debian-12-local");
        eprintln!(
            "debian-12-local ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            path.display()
        );
        assert!(path.is_file(), "{}", path.display());
        path
    })
}

fn sha256_file(p: &std::path::Path) -> String {
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

#[test]
fn images_list_shows_every_entry_with_its_state() {
    let out = bin().args(["images", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    for name in [
        "centos-stream-9",
        "rocky-9.4",
        "almalinux-9.4",
        "oraclelinux-9.4",
        "fedora-39",
        "fedora-40",
        "ubuntu-22.04",
        "ubuntu-24.04",
        "debian-11",
        "debian-12",
        "debian-11-local",
        "debian-12-local",
        "debian-13-local",
        "debian-12-dnf-local",
    ] {
        let e = list
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"));
        for field in [
            "kind",
            "reported",
            "state",
            "login_user",
            "package_manager",
            "verification",
        ] {
            assert!(!e[field].is_null(), "{name}: no {field}");
        }
    }
    let table = bin().args(["images", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("centos-stream-9"));
}

#[test]
fn bad_image_input_is_a_clear_usage_error() {
    let out = bin()
        .args(["boot", "--image", "no-such-image"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown image \"no-such-image\""),
        "{}",
        text(&out)
    );
    // A malformed catalog names the file and the line.
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog.toml");
    std::fs::write(
        &cat,
        "# mine\n\n[[image]]\nname = \"x\"\nurl = \"https://example.invalid/x.qcow2\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["images", "list"])
        .env("BOOTWATCH_CATALOG", &cat)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", cat.display())), "{err}");
    // A vendor image that cannot be downloaded (nothing listens there) fails cleanly.
    std::fs::write(
        &cat,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guest-images/catalog.toml"
        ))
        .unwrap()
        .replace(
            "https://cloud.centos.org/centos/9-stream/aarch64/images/CentOS-Stream-GenericCloud-9-20240429",
            "http://127.0.0.1:9/CentOS-Stream-GenericCloud-9-20240429",
        ),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["images", "fetch", "centos-stream-9-20240429"])
        .env("BOOTWATCH_CATALOG", &cat)
        .env("BOOTWATCH_CACHE", cache.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("centos-stream-9-20240429"),
        "{}",
        text(&out)
    );
    let leftovers: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|p| !p.to_string_lossy().contains("by-sha256")),
        "{leftovers:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn local_debian_image_boots_to_login_and_accepts_the_cloud_init_user() {
    if !qemu_tests_enabled() {
        return;
    }
    local_image();
    let res = results_root();
    let (code, r, err) = boot_to_login("debian-12-local", &res, &["--keep-overlay"]);
    assert_eq!(code, 0, "{err}\n{}: {}", r["verdict"], r["reason"]);
    assert_eq!(r["verdict"], "reached");
    // Every stage of the chain is in the timeline, in order, with its time. shim prints
    // nothing, and on a fresh vars store edk2 boots the removable path (shim as
    // \EFI\BOOT\BOOTAA64.EFI, named only "UEFI Misc Device"), so the shim stage shows only when
    // the firmware names shimaa64.efi (a boot entry, as after the demo's reboot).
    let timeline = r["timeline"].as_array().unwrap();
    let mut last = 0.0;
    for stage in [
        "firmware",
        "shim",
        "grub",
        "kernel-handoff",
        "kernel",
        "userspace",
        "login",
    ] {
        let Some(m) = timeline.iter().find(|m| m["stage"] == stage) else {
            assert_eq!(stage, "shim", "no {stage} in {timeline:#?}");
            continue;
        };
        let t = m["t_s"].as_f64().unwrap();
        assert!(
            t >= last,
            "{stage} at {t} before the previous stage at {last}"
        );
        last = t;
        eprintln!("{stage:<15} {t:7.1} s  {}", m["text"].as_str().unwrap());
    }
    let boot_option = timeline
        .iter()
        .find(|m| m["pattern"] == "bds-boot-option")
        .expect("BdsDxe boot option");
    assert!(
        boot_option["text"].as_str().unwrap().contains("Boot"),
        "{boot_option}"
    );
    // Logged in over serial as the user cloud-init created from our seed.
    let user = r["provision"]["user"].as_str().unwrap();
    assert_eq!(r["commands"][0]["command"], "id -un");
    assert_eq!(
        r["commands"][0]["output"].as_str().unwrap().trim(),
        user,
        "{:#}",
        r["commands"]
    );
    assert_eq!(r["commands"][0]["exit_code"], 0);
    assert!(
        r["commands"][2]["output"]
            .as_str()
            .unwrap()
            .contains("console=ttyAMA0")
    );
    assert_eq!(r["provision"]["base_sha256"].as_str().unwrap().len(), 64);
    // Private means private: the user's random password is kept only in `secrets.json` beside
    // the kept disks, never in a record meant to be shared (nor on the terminal); the files
    // that hold it or the guest's disk are their owner's only.
    let dir = only_dir(res.path());
    assert_eq!(
        r["provision"]["secrets"], "secrets.json",
        "{:#}",
        r["provision"]
    );
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("secrets.json")).unwrap()).unwrap();
    assert_eq!(secrets["user"].as_str(), Some(user));
    let password = secrets["password"].as_str().unwrap();
    assert!(password.len() >= 12, "a weak password: {password:?}");
    for record in ["result.json", "case.json"] {
        let text = std::fs::read_to_string(dir.join(record)).unwrap();
        assert!(!text.contains(password), "the password is in {record}");
    }
    assert!(
        !r.to_string().contains(password),
        "the password is on stdout"
    );
    assert!(!err.contains(password), "the password is on stderr");
    let overlay = PathBuf::from(r["provision"]["overlay"].as_str().unwrap());
    assert_eq!(
        overlay,
        dir.join("overlay.qcow2"),
        "kept in the case directory"
    );
    use std::os::unix::fs::PermissionsExt;
    for file in ["overlay.qcow2", "secrets.json", "seed.img", "vars.fd"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
}

/// qemu-img is needed for the overlay, found only after the run's directory exists: its absence
/// is recorded there (status `error`, the message), not a crash and not a guest result.
#[test]
fn a_missing_qemu_img_is_recorded_as_a_harness_error() {
    if !qemu_tests_enabled() {
        return;
    }
    local_image();
    let res = results_root();
    let qemu = which::which("qemu-system-aarch64").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = bin()
        .env("PATH", empty.path())
        .args(["boot", "--json", "--image", "debian-12-local", "--qemu"])
        .arg(&qemu)
        .arg("--results")
        .arg(res.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["verdict"], "harness-error");
    assert!(
        r["error"].as_str().unwrap().contains("qemu-img"),
        "{}",
        r["error"]
    );
    let dir = only_dir(res.path());
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(on_disk["status"], "error");
}

#[test]
fn base_image_is_unchanged_by_a_run_killed_mid_boot() {
    if !qemu_tests_enabled() {
        return;
    }
    let img = local_image();
    let _one = both_cores();
    let before = sha256_file(img);
    let res = results_root();
    let mut child = bin()
        .args([
            "boot",
            "--image",
            "debian-12-local",
            "--until",
            "login",
            "--keep-overlay",
            "--results",
        ])
        .arg(res.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the kernel is running and writing to its disk.
    wait_for_console(res.path(), &mut child, "systemd", Duration::from_secs(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(sha256_file(img), before, "the base image changed");
    let overlay = walk(res.path())
        .into_iter()
        .find(|p| p.ends_with("overlay.qcow2"))
        .expect("the overlay");
    assert!(std::fs::metadata(&overlay).unwrap().len() > 0);
}

/// Boots a local image to login (one boot at a time), logs in and runs the login commands.
fn boot_to_login(
    image: &str,
    res: &tempfile::TempDir,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let _one = both_cores();
    boot_json(
        &[
            extra,
            &[
                "--image",
                image,
                "--until",
                "login",
                "--login",
                "--smp",
                "2",
                "--memory",
                "2048",
                "--timeout",
                "600",
                "--silence",
                "240",
                "--results",
                res.path().to_str().unwrap(),
            ],
        ]
        .concat(),
    )
}

/// Builds (or finds cached) a local image; returns its manifest.
fn build_local(name: &str) -> serde_json::Value {
    let started = Instant::now();
    let path = local_image_path(name);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    eprintln!(
        "{name} ready in {:.1} s (build {:.0} s when it was made): {}",
        started.elapsed().as_secs_f64(),
        manifest["build_seconds"].as_f64().unwrap_or(0.0),
        path.display()
    );
    manifest
}

/// The other two Debian releases, built by the same recipe code from their own data: each has
/// its suite's boot chain and boots through it to the login prompt, where the cloud-init user
/// logs in.
fn other_release_boots_to_login(name: &str, shim: &str, grub: &str, kernel: &str) {
    if !qemu_tests_enabled() {
        return;
    }
    let m = build_local(name);
    let chain = &m["boot_chain"];
    assert!(
        chain["shim-signed"].as_str().unwrap().ends_with(shim),
        "{name}: shim-signed {}",
        chain["shim-signed"]
    );
    assert!(
        chain["grub-efi-arm64-signed"]
            .as_str()
            .unwrap()
            .starts_with(grub),
        "{name}: grub-efi-arm64-signed {}",
        chain["grub-efi-arm64-signed"]
    );
    assert!(
        m["kernel_release"].as_str().unwrap().starts_with(kernel),
        "{name}: kernel {}",
        m["kernel_release"]
    );
    let res = results_root();
    let (code, r, err) = boot_to_login(name, &res, &[]);
    assert_eq!(code, 0, "{name}: {err}\n{}: {}", r["verdict"], r["reason"]);
    // Without --keep-overlay the disks lived in the private directory, gone with the run.
    assert!(
        !std::path::Path::new(r["provision"]["overlay"].as_str().unwrap()).exists(),
        "{name}: overlay removed"
    );
    assert!(
        r["provision"].get("secrets").is_none(),
        "{:#}",
        r["provision"]
    );
    let login = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["stage"] == "login")
        .expect("login in the timeline");
    eprintln!(
        "{name}: login prompt at {:.1} s",
        login["t_s"].as_f64().unwrap()
    );
    assert_eq!(
        r["commands"][0]["output"].as_str().unwrap().trim(),
        r["provision"]["user"].as_str().unwrap()
    );
    assert!(
        r["commands"][1]["output"]
            .as_str()
            .unwrap()
            .trim()
            .starts_with(kernel),
        "{:#}",
        r["commands"]
    );
    // The network came up (the updates are served to the guest over it): cloud-init's device
    // table, printed before the login prompt, has the address QEMU's user network hands out.
    let console = walk(res.path())
        .into_iter()
        .find(|p| p.ends_with("console.log"))
        .expect("console.log");
    let console = std::fs::read_to_string(&console).unwrap();
    assert!(
        console
            .lines()
            .any(|l| l.contains("ci-info: |") && l.contains("| True") && l.contains("10.0.2.15")),
        "{name}: no network address in cloud-init's device table: {}",
        console
            .lines()
            .filter(|l| l.contains("ci-info") || l.contains("network"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn debian_11_local_builds_and_boots_to_login() {
    other_release_boots_to_login(
        "debian-11-local",
        "+15.8-1~deb11u1",
        "1+2.06+3~deb11u6",
        "5.10.",
    );
}

#[test]
fn debian_13_local_builds_and_boots_to_login() {
    other_release_boots_to_login("debian-13-local", "+16.1-2~deb13u1", "1+2.12+", "6.12.");
}

/// What `bootwatch run --dry-run` plans for each local release: its own upgrade command and
/// package query, and, with the workaround, a hold on its installed boot-chain packages.
#[test]
fn dry_run_plans_of_the_local_releases() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("Packages"), "").unwrap();
    for name in ["debian-11-local", "debian-12-local", "debian-13-local"] {
        let out = bin()
            .args(["run", "scenarios/upgrade-reboot.toml", "--image", name])
            .arg("--update")
            .arg(repo.path())
            .args(["--exclude-bootloader", "--dry-run", "--json"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["kind"], "local", "{name}");
        assert_eq!(plan["image"], name);
        assert_eq!(plan["login_user"], "debian");
        assert!(
            plan["package_query"]
                .as_str()
                .unwrap()
                .starts_with("dpkg-query"),
            "{plan:#}"
        );
        let cmd = plan["upgrade_command"].as_str().unwrap();
        assert!(
            cmd.contains("apt-get -y -o Dpkg::Options::=--force-confdef"),
            "{cmd}"
        );
        assert!(
            cmd.contains("deb [trusted=yes] http://10.0.2.2:PORT/ ./"),
            "{cmd}"
        );
        assert!(
            cmd.contains("dpkg-query -W") && cmd.contains("apt-mark hold $held"),
            "{cmd}"
        );
        assert!(
            plan["qemu_command_line"]
                .as_str()
                .unwrap()
                .contains("qemu-system-aarch64"),
            "{plan:#}"
        );
    }
}

/// `run --update good|bad` names the built-in updates, which exist for local images only; a
/// word that is neither nor a repository directory is a usage error naming the flag.
#[test]
fn run_takes_the_built_in_updates_by_name() {
    let run = |image: &str, update: &str| {
        bin()
            .args(["run", "scenarios/upgrade-reboot.toml", "--image", image])
            .args(["--update", update, "--dry-run", "--json"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .unwrap()
    };
    for update in ["good", "bad"] {
        let out = run("debian-13-local", update);
        assert!(out.status.success(), "{update}: {}", text(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cmd = plan["upgrade_command"].as_str().unwrap();
        assert!(cmd.contains("http://10.0.2.2:PORT/ ./"), "{cmd}");
    }
    let out = run("debian-12", "good");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("made for local images; debian-12 is not one"),
        "{}",
        text(&out)
    );
    let out = run("debian-12-local", "better");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--update"), "{}", text(&out));
    assert!(
        text(&out).contains("neither \"good\", \"bad\""),
        "{}",
        text(&out)
    );
}
