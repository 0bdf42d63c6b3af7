//! `bootwatch inspect chain` on Debian's real shim and GRUB packages, and `bootwatch explain` on
//! real runs: the crash fixture (no known family, with the facts) and the demo's bad update
//! (the replaced binary on the boot path and the package that put it there; restoring the
//! boot loader boots). One bad-update run serves every assertion about it.

use crate::common;

use std::path::{Path, PathBuf};

use common::{bin, fixtures, local_image_path, qemu_tests_enabled, results_root, text};

/// The `.deb` of `package` at `version` from `suite` (arm64), through the project's archive
/// client: signature-checked indexes, verified download, cached.
async fn deb(suite: &str, package: &str, version: &str) -> PathBuf {
    use bootwatch::inputs::debian::{Archive, INDEX_CACHE_DIR, resolve_mirror};
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    let archive = Archive::new(&resolve_mirror(None).unwrap())
        .unwrap()
        .with_index_cache(cache.join(INDEX_CACHE_DIR));
    let entries = archive
        .find(suite, "main", "arm64", package)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{suite} has no main/binary-arm64 index"));
    let entry = entries
        .iter()
        .find(|e| e.version == version)
        .unwrap_or_else(|| {
            panic!(
                "{package} {version} is not in {suite} (it has: {:?})",
                entries.iter().map(|e| &e.version).collect::<Vec<_>>()
            )
        });
    archive
        .cached_deb(entry, &cache.join("debs"))
        .await
        .unwrap()
}

fn inspect_json(target: &Path) -> serde_json::Value {
    let out = bin()
        .args(["inspect", "chain", "--json"])
        .arg(target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The binary at `path` in an `inspect chain --json` report.
fn binary<'a>(report: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    report["binaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {report:#}"))
}

#[tokio::test]
async fn inspect_chain_reports_nx_compat_and_sbat_of_debians_shim_and_grub() {
    // (suite, package, version, file, kind, version string, SBAT component and version, NX_COMPAT)
    let cases = [
        (
            "bullseye",
            "shim-signed",
            "1.44~1+deb11u1+15.8-1~deb11u1",
            "usr/lib/shim/shimaa64.efi.signed",
            "shim",
            "15.8",
            ("shim.debian", "15.8"),
            false,
        ),
        (
            "bookworm",
            "shim-signed",
            "1.51~1+deb12u1+16.1-2~deb12u1",
            "usr/lib/shim/shimaa64.efi.signed",
            "shim",
            "16.1",
            ("shim.debian", "16.1"),
            false,
        ),
        (
            "bookworm",
            "grub-efi-arm64-signed",
            "1+2.06+13+deb12u2",
            "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
            "grub",
            "2.06-13+deb12u2",
            ("grub", "2.06"),
            false,
        ),
        (
            "trixie",
            "grub-efi-arm64-signed",
            "1+2.12+9+deb13u4",
            "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
            "grub",
            "2.12-9+deb13u4",
            ("grub", "2.12"),
            false,
        ),
        (
            "sid",
            "grub-efi-arm64-signed",
            "1+2.14+4",
            "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
            "grub",
            "2.14-4",
            ("grub", "2.14"),
            // GRUB 2.14 carries upstream's NX support and declares it.
            true,
        ),
    ];
    for (suite, package, version, file, kind, v, (component, cv), nx) in cases {
        let deb = deb(suite, package, version).await;
        let report = inspect_json(&deb);
        let b = binary(&report, file);
        let what = format!("{package} {version}: {b:#}");
        let pe = &b["pe"];
        assert_eq!(pe["machine_name"], "arm64", "{what}");
        assert_eq!(pe["kind"], kind, "{what}");
        assert_eq!(pe["version"], v, "{what}");
        assert_eq!(pe["nx_compat"], nx, "{what}");
        assert_eq!(
            pe["dll_characteristics"].as_u64().unwrap() & 0x100 != 0,
            nx,
            "{what}"
        );
        assert_eq!(pe["section_alignment"], 4096, "{what}");
        assert_eq!(pe["wx_sections"], serde_json::json!([]), "{what}");
        let sbat = pe["sbat"].as_array().unwrap();
        assert!(
            sbat.iter()
                .any(|e| e["component"] == component && e["version"] == cv),
            "{what}"
        );
        assert!(sbat.iter().all(|e| e["generation"].as_u64().unwrap() >= 1));
    }
}

fn explain_json(target: &Path, extra: &[&str]) -> serde_json::Value {
    let out = bin()
        .arg("explain")
        .arg(target)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(&out)))
}

/// The ids of the families an explanation matched.
fn family_ids(x: &serde_json::Value) -> Vec<&str> {
    x["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect()
}

/// The finding's family and nothing else, matched from what the firmware image holds (RngDxe's
/// SMCCC calls beyond PSCI), not from a rule naming a firmware version.
fn assert_the_findings_family(x: &serde_json::Value) {
    assert_eq!(family_ids(x), ["edk2-smccc-hvc-on-qemu-5.2"], "{x:#}");
    let non_psci = x["facts"]["firmware.smccc_non_psci_drivers"]
        .as_array()
        .unwrap_or_else(|| panic!("no image inspection: {x:#}"));
    assert!(non_psci.iter().any(|d| d == "RngDxe"), "{x:#}");
}

/// The project's finding (edk2 2026.08 on QEMU 5.2) is explained by what the firmware image
/// holds — a driver issuing SMCCC calls beyond PSCI — not by a rule naming a firmware version.
#[test]
fn explain_names_the_findings_family_from_the_firmware_image() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let (code, v, stderr) = common::boot_json(&[
        "--snapshot",
        "--qemu",
        "debian:bullseye",
        "--firmware",
        "debian:2026.08",
        "--disk",
        fixtures().join("hello.img").to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{v:#} {stderr}");
    assert_eq!(v["verdict"], "sync-exception", "{v:#}");
    let run = res.path().join(v["run_id"].as_str().unwrap());
    let x = explain_json(&run, &[]);
    assert_the_findings_family(&x);
}

/// The crash fixture booted (with `extra` boot flags) into `results`: its run directory.
fn crash_run(results: &Path, extra: &[&str]) -> PathBuf {
    let disk = fixtures().join("crash.img");
    // --snapshot: the tests boot the same fixture file at once, none of them may lock it for
    // writing.
    let mut args = vec![
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, v, stderr) = common::boot_json(&args);
    assert_eq!(code, 1, "{v:#} {stderr}");
    assert_eq!(v["verdict"], "sync-exception", "{v:#}");
    results.join(v["run_id"].as_str().unwrap())
}

#[test]
fn explain_on_the_crash_fixture_names_no_family_and_shows_the_facts() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let run = crash_run(res.path(), &[]);
    let x = explain_json(&run, &[]);
    assert_eq!(x["schema"], "bootwatch.explain/1");
    assert_eq!(x["families"], serde_json::json!([]), "{x:#}");
    let facts = &x["facts"];
    assert_eq!(facts["run.verdict"], "sync-exception");
    assert_eq!(facts["run.before_grub"], true);
    // The fixture's disk is read: one unidentified arm64 binary on the removable path.
    assert_eq!(
        facts["chain.first.path"], "EFI/BOOT/BOOTAA64.EFI",
        "{facts:#}"
    );
    assert_eq!(facts["chain.first.kind"], "unknown");
    assert_eq!(facts["chain.shim.present"], false);
    let ruled_out: Vec<&str> = x["ruled_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for id in ["T1", "T2", "T3", "T4", "T5", "T6", "T7"] {
        assert!(
            ruled_out.contains(&id)
                || x["undecided"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["id"] == id),
            "{id}: {x:#}"
        );
    }
    let out = bin().arg("explain").arg(&run).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("no known family matches"), "{shown}");
    assert!(shown.contains("run.verdict = sync-exception"), "{shown}");
}

/// The failed conditions that ruled family `id` out, by fact.
fn ruled_out_by<'a>(x: &'a serde_json::Value, id: &str) -> Vec<&'a str> {
    x["ruled_out_by"][id]
        .as_array()
        .unwrap_or_else(|| panic!("{id} is not ruled out: {x:#}"))
        .iter()
        .map(|c| c["fact"].as_str().unwrap())
        .collect()
}

/// `explain` boots the firmware probe under the run's own QEMU, firmware and CPU when the
/// families name facts only the probe measures, and uses them. Debian's edk2 2025.02 installs
/// the memory-attribute protocol in its strict-NX build and not in its default one: T1 and T3
/// require it, so on the default build the measured fact itself rules them out, where without
/// the probe (`--no-probe`) it is not measured and rules nothing out. The report is cached by
/// content hash: a second explain boots nothing and uses the first one's report.
#[test]
fn explain_runs_the_probe_it_needs_and_reuses_its_cached_report() {
    if !qemu_tests_enabled() {
        return;
    }
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    for (firmware, mem_attr) in [("debian:2025.02/strictnx", true), ("debian:2025.02", false)] {
        let res = results_root();
        // A CPU model the probe tests do not use: their --fresh probes never replace this
        // report between the two explains.
        let run = crash_run(res.path(), &["--firmware", firmware, "--cpu", "max"]);

        let x = explain_json(&run, &[]);
        let f = &x["facts"];
        let ctx = format!("{firmware}: {x:#}");
        assert_eq!(f["firmware.mem_attr_protocol"], mem_attr, "{ctx}");
        assert_eq!(f["firmware.loader_data_nx"], true, "{ctx}");
        assert_eq!(f["firmware.probe_complete"], true, "{ctx}");
        assert_eq!(f["hypervisor.smccc_unknown_fn"], "not-supported", "{ctx}");
        let p = &x["probe"];
        assert_eq!(p["cpu"], "max", "{ctx}");
        assert_eq!(p["complete"], true, "{ctx}");
        let key = p["key"].as_str().unwrap();
        assert!(
            cache
                .join("probe/results")
                .join(key)
                .join("probe.json")
                .is_file(),
            "{ctx}"
        );
        // The image's inspection is cached by its sha256.
        let code_sha = f["run.firmware_code_sha256"].as_str().unwrap();
        let inspected = std::fs::read_dir(cache.join("firmware-inspect"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .any(|i| i["facts"]["firmware.code_sha256"] == code_sha);
        assert!(inspected, "no cached inspection of {code_sha}");
        for t in ["T1", "T3"] {
            assert_eq!(
                ruled_out_by(&x, t).contains(&"firmware.mem_attr_protocol"),
                !mem_attr,
                "{t} {ctx}"
            );
        }

        // Again: the same report, from the cache (a boot would have made a new one).
        let y = explain_json(&run, &[]);
        assert_eq!(y["probe"]["reused"], true, "{y:#}");
        assert_eq!(y["probe"]["made_at"], p["made_at"], "{y:#}");
        assert_eq!(y["probe"]["key"], key);
        assert_eq!(y["facts"], x["facts"]);

        // Without the probe the fact is not measured, and a note says so.
        let z = explain_json(&run, &["--no-probe"]);
        assert_eq!(z["facts"].get("firmware.mem_attr_protocol"), None, "{z:#}");
        assert_eq!(z["probe"], serde_json::Value::Null);
        for t in ["T1", "T3"] {
            assert!(!ruled_out_by(&z, t).contains(&"firmware.mem_attr_protocol"));
        }
        assert!(
            z["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains("--no-probe")),
            "{z:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_names_the_bad_updates_replaced_binary_and_its_package_and_restoring_boots() {
    if !qemu_tests_enabled() {
        return;
    }
    assert!(local_image_path("debian-12-local").is_file());
    // The demo's bad update, made by the same code the demo uses.
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = bootwatch::plan::updates::make(
        &bootwatch::plan::updates::UpdateChoice::Bad,
        "debian-12-local",
        None,
        &cache,
        repo_dir.path(),
    )
    .await
    .unwrap();
    let res = results_root();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/upgrade-reboot.toml");
    let out = bin()
        .arg("run")
        .arg(&scenario)
        .args([
            "--image",
            "debian-12-local",
            "--saved-login",
            "--json",
            "--update",
        ])
        .arg(&repo.dir)
        .arg("--results")
        .arg(res.path())
        .output()
        .unwrap();
    let case: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(&out)));
    assert_eq!(case["verdict"], "sync-exception", "{case:#}");
    let run = std::fs::read_dir(res.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("case.json").is_file())
        .expect("the case's directory");

    let x = explain_json(&run, &[]);
    assert_eq!(family_ids(&x), ["replaced-boot-loader"], "{x:#}");
    let fam = &x["families"][0];
    assert_eq!(fam["unmatched"], serde_json::json!([]), "{fam:#}");
    // The binary the firmware starts, the one the update replaced, and who put it there.
    let replaced = x["replaced"].as_array().unwrap();
    let first = x["facts"]["chain.first.path"].as_str().unwrap();
    let r = replaced
        .iter()
        .find(|r| r["path"] == first)
        .unwrap_or_else(|| panic!("{first} not among the replaced: {x:#}"));
    assert!(r["was"].as_str().unwrap().starts_with("shim 16.1"), "{r:#}");
    assert!(r["now"].as_str().unwrap().contains("unidentified"), "{r:#}");
    let pkgs = r["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), 1, "{r:#}");
    assert!(
        pkgs[0].as_str().unwrap().starts_with("shim-signed ")
            && pkgs[0].as_str().unwrap().ends_with("+bootwatch.bad1"),
        "{r:#}"
    );
    assert_eq!(r["attributed_by"], "upgrade log");
    for t in ["T1", "T3", "T5"] {
        assert!(
            x["ruled_out"].as_array().unwrap().iter().any(|i| i == t),
            "{t} should be ruled out: {x:#}"
        );
    }

    // The first workaround, restoring the boot loader, boots; the run's own disk is untouched.
    let overlay = run.join("overlay.qcow2");
    let before = bootwatch::sys::fsx::hash_file(&overlay).unwrap();
    let tries = results_root();
    let x = explain_json(
        &run,
        &[
            "--try-workarounds",
            "--results",
            tries.path().to_str().unwrap(),
        ],
    );
    let tried = x["workarounds_tried"].as_array().unwrap();
    let restore = tried
        .iter()
        .find(|t| t["auto"] == "restore-bootloader")
        .unwrap_or_else(|| panic!("{x:#}"));
    assert_eq!(restore["booted"], true, "{restore:#}");
    assert_eq!(restore["target"], "kernel");
    let manual = tried.iter().find(|t| t["auto"].is_null()).unwrap();
    assert!(manual["note"].as_str().unwrap().contains("not automatic"));
    assert_eq!(
        bootwatch::sys::fsx::hash_file(&overlay).unwrap().sha256,
        before.sha256,
        "the run's overlay was written"
    );
}

fn only_dir(root: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// A matrix cell's directory (its runs beside cell.json), the cell's bundle as a `.tar.gz` (its
/// runs under runs/, unpacked into a private directory that goes with the explanation) and the
/// same bundle unpacked are explained alike: the same run, the same facts, the same families.
#[test]
fn explain_reads_a_matrix_cell_its_bundle_and_the_bundles_archive() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let matrix = res.path().join("matrix");
    let o = bin()
        .arg("matrix")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/matrix/crash-host.toml"))
        .arg("--results")
        .arg(&matrix)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cell = only_dir(&matrix.join("cells"));
    let id = cell.file_name().unwrap().to_str().unwrap().to_string();

    let x = explain_json(&cell, &[]);
    assert_eq!(x["run"], cell.join("run-1").to_str().unwrap(), "{x:#}");
    let facts = &x["facts"];
    assert_eq!(facts["run.cell"], id.as_str(), "{facts:#}");
    assert_eq!(facts["run.verdict"], "sync-exception");
    // The fixture's disk and the host's firmware image were read.
    assert_eq!(facts["chain.first.path"], "EFI/BOOT/BOOTAA64.EFI", "{x:#}");
    assert!(
        facts["firmware.drivers"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{x:#}"
    );
    assert_eq!(x["families"], serde_json::json!([]), "{x:#}");

    let archive = res.path().join("cell.tar.gz");
    let o = bin()
        .arg("bundle")
        .arg(&cell)
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Unpacked into a private directory under TMPDIR, removed afterwards.
    let tmp = res.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = bin()
        .arg("explain")
        .arg(&archive)
        .arg("--json")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let y: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        y["run"],
        archive.join("runs/run-1").to_str().unwrap(),
        "{y:#}"
    );
    // The bundle's redacted paths (`~/...`) lead to the same fixture disk and firmware.
    assert_eq!(y["facts"], x["facts"], "{y:#}");
    for k in ["families", "undecided", "ruled_out", "replaced"] {
        assert_eq!(y[k], x[k], "{k}");
    }
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the unpacked bundle was left behind"
    );

    // Unpacked by hand (one top directory): the directory above it works too.
    let unpacked = res.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&archive).unwrap(),
    ))
    .unpack(&unpacked)
    .unwrap();
    let z = explain_json(&unpacked, &[]);
    assert_eq!(z["facts"], x["facts"], "{z:#}");
    assert!(z["run"].as_str().unwrap().ends_with("/runs/run-1"), "{z:#}");

    // Not a bundle: a usage error naming the file.
    let junk = res.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not gzip").unwrap();
    let o = bin().arg("explain").arg(&junk).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("junk.tar.gz"), "{}", text(&o));
}

/// The project's finding, from its checked-in bundle (docs/findings/): the same family as from
/// the run itself, from the bundle's records and the firmware image its inputs name (found on
/// this machine by sha256, or fetched through its provider).
#[test]
fn explain_names_the_findings_family_from_its_checked_in_bundle() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/findings/edk2-2026.08-on-qemu-5.2/bundle")
        .canonicalize()
        .unwrap();
    let x = explain_json(&bundle, &[]);
    assert_the_findings_family(&x);
    assert_eq!(
        x["run"],
        bundle.join("runs/run-1").to_str().unwrap(),
        "{x:#}"
    );
    assert_eq!(x["facts"]["run.qemu_version"], "5.2.0");
}
