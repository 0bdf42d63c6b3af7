//! The fixtures give the same verdicts on firmware from two Debian edk2 releases: the host's
//! (bookworm, 2022.11) and trixie's 2025.02 (fetched from the archive the host's apt sources
//! name, verified, unpacked and cached by `bootwatch firmware fetch`), including its strict-NX
//! variant.

use crate::common;

use common::*;

fn fetch(spec: &str) -> (String, String) {
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
    assert!(
        v["debian_version"]
            .as_str()
            .unwrap()
            .starts_with(spec.split('/').next().unwrap()),
        "{v}"
    );
    (
        v["code"].as_str().unwrap().to_string(),
        v["vars"].as_str().unwrap().to_string(),
    )
}

/// The crash fixture without the boot manager's countdown (the default): the exception comes
/// within 3 s of power-on under TCG here (was 6-6.5 s with the countdown), with the same parsed
/// dump; with `--firmware-wait default` the firmware waits its own time before it boots the
/// fixture (the console shows the longer path from the banner to BdsDxe loading the boot option).
fn quick_and_with_the_firmware_wait(code: &str, vars: &str) {
    let disk = fixtures().join("crash.img");
    let run = |wait: &str| {
        let res = results_root();
        let (c, r, err) = boot_json(&[
            "--snapshot",
            "--firmware",
            code,
            "--vars",
            vars,
            "--firmware-wait",
            wait,
            "--disk",
            disk.to_str().unwrap(),
            "--results",
            res.path().to_str().unwrap(),
        ]);
        assert_eq!(
            (r["verdict"].as_str().unwrap(), c),
            ("sync-exception", 1),
            "{err}"
        );
        assert_eq!(r["firmware"]["wait"], wait);
        let line = |pattern: &str| {
            r["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["pattern"] == pattern)
                .and_then(|m| m["t_s"].as_f64())
                .unwrap_or_else(|| panic!("no {pattern} in {:#}", r["timeline"]))
        };
        let gap = line("bds-boot-option") - line("edk2-banner");
        (r["evidence_t_s"].as_f64().unwrap(), gap, r)
    };
    let (quick, quick_gap, q) = run("skip");
    assert!(quick < 3.0, "exception at {quick} s without the countdown");
    let (slow, slow_gap, s) = run("default");
    assert!(
        slow_gap > quick_gap + 3.0,
        "the firmware's own wait: banner to boot option {slow_gap} s, against {quick_gap} s without"
    );
    eprintln!("{code}: exception at {quick} s without the countdown, {slow} s with it");
    // The same crash, parsed the same.
    let dump = |r: &serde_json::Value| {
        let x = &r["finding"]["exception"];
        (
            x["kind"].clone(),
            x["address"].clone(),
            x["banner_count"].clone(),
        )
    };
    assert_eq!(dump(&q), dump(&s));
}

fn same_verdicts(code: &str, vars: &str) {
    for (fixture, verdict, exit) in [
        ("crash.img", "sync-exception", 1),
        ("hello.img", "qemu-exited", 0),
    ] {
        let res = results_root();
        let disk = fixtures().join(fixture);
        let (c, r, err) = boot_json(&[
            "--snapshot",
            "--firmware",
            code,
            "--vars",
            vars,
            "--disk",
            disk.to_str().unwrap(),
            "--results",
            res.path().to_str().unwrap(),
        ]);
        assert_eq!(
            (r["verdict"].as_str().unwrap(), c),
            (verdict, exit),
            "{fixture} on {code}: {err}\n{}",
            r["reason"]
        );
        assert_eq!(r["firmware"]["code"]["path"], code);
        if verdict == "sync-exception" {
            assert_eq!(r["before_grub"], true);
            assert!(
                r["finding"]["exception"]["address"]
                    .as_str()
                    .unwrap()
                    .starts_with("0x")
            );
        }
    }
}

#[test]
fn bookworm_edk2_2022_11() {
    if !qemu_tests_enabled() {
        return;
    }
    same_verdicts(HOST_CODE, "/usr/share/AAVMF/AAVMF_VARS.fd");
    quick_and_with_the_firmware_wait(HOST_CODE, "/usr/share/AAVMF/AAVMF_VARS.fd");
}

#[test]
fn trixie_edk2_2025_02_default_and_strict_nx() {
    if !qemu_tests_enabled() {
        return;
    }
    let (code, vars) = fetch("2025.02");
    same_verdicts(&code, &vars);
    quick_and_with_the_firmware_wait(&code, &vars);
    let (code, vars) = fetch("2025.02/strictnx");
    assert!(code.ends_with("AAVMF_CODE.secboot.strictnx.fd"), "{code}");
    same_verdicts(&code, &vars);
}
