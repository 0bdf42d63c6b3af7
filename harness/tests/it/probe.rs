//! Firmware facts on Debian's real edk2 builds (2020.11, 2022.11, 2025.02 default and strict NX,
//! 2026.08 default and strict NX, fetched from the archive the host's apt sources name):
//! offline inspection of each code image (its drivers, which of them issue SMCCC calls and with
//! which function IDs), and the probe application booted by each under the host's QEMU (the
//! memory-attribute protocol and the NX policy for EfiLoaderData), and under bullseye's QEMU 5.2
//! (how the hypervisor answers an SMCCC call it does not implement). Together they explain the
//! project's finding (docs/findings/edk2-2026.08-on-qemu-5.2) from measured facts.

use crate::common;

use common::*;
use serde_json::Value;

/// `bootwatch firmware fetch SPEC --json` -> the code image path.
fn code_image(spec: &str) -> String {
    let out = bin()
        .args(["firmware", "fetch", spec, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firmware fetch {spec}: {}",
        text(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["code"].as_str().unwrap().to_string()
}

fn inspect(spec: &str) -> Value {
    let code = code_image(spec);
    let out = bin()
        .args(["inspect", "firmware", &code, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "inspect {code}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

/// Each build's drivers and SMCCC users. The driver every build has (the PSCI reset driver)
/// calls PSCI only; RngDxe (in the builds from 2025.02 on) issues SMCCC calls only in 2026.08,
/// and it is the only driver that calls functions beyond PSCI (SMCCC_VERSION and the Arm TRNG
/// interface).
#[test]
fn inspection_lists_drivers_and_their_smccc_calls() {
    let cases: &[(&str, usize, &[&str], &[&str])] = &[
        ("2020.11", 98, &["ResetSystemRuntimeDxe"], &[]),
        (
            "2022.11",
            106,
            &["ResetSystemPei", "ResetSystemRuntimeDxe"],
            &[],
        ),
        ("2025.02", 103, &["ResetSystemRuntimeDxe"], &[]),
        (
            "2025.02/strictnx",
            105,
            &["ResetSystemPei", "ResetSystemRuntimeDxe", "Tcg2Pei"],
            &[],
        ),
        (
            "2026.08",
            104,
            &["ResetSystemRuntimeDxe", "RngDxe"],
            &["RngDxe"],
        ),
        (
            "2026.08/strictnx",
            106,
            &[
                "ResetSystemPei",
                "ResetSystemRuntimeDxe",
                "RngDxe",
                "Tcg2Pei",
            ],
            &["RngDxe"],
        ),
    ];
    for &(spec, count, smccc, non_psci) in cases {
        let v = inspect(spec);
        let f = &v["facts"];
        let drivers = strings(&f["firmware.drivers"]);
        assert_eq!(drivers.len(), count, "{spec}: {drivers:?}");
        for d in [
            "DxeCore",
            "BdsDxe",
            "ResetSystemRuntimeDxe",
            "VariableRuntimeDxe",
        ] {
            assert!(drivers.contains(&d), "{spec}: no {d} in {drivers:?}");
        }
        let has_rng = spec.starts_with("2025") || spec.starts_with("2026");
        assert_eq!(drivers.contains(&"RngDxe"), has_rng, "{spec}: {drivers:?}");
        assert_eq!(strings(&f["firmware.smccc_drivers"]), smccc, "{spec}");
        assert_eq!(
            strings(&f["firmware.smccc_non_psci_drivers"]),
            non_psci,
            "{spec}"
        );
        let reset = strings(&f["firmware.smccc_calls"]["ResetSystemRuntimeDxe"]);
        assert!(
            reset.contains(&"0x84000009") && reset.contains(&"0x84000008"),
            "{spec}: PSCI SYSTEM_RESET and SYSTEM_OFF in {reset:?}"
        );
        if non_psci.is_empty() {
            assert_eq!(
                strings(&f["firmware.smccc_non_psci_functions"]),
                [] as [&str; 0]
            );
        } else {
            assert_eq!(
                strings(&f["firmware.smccc_non_psci_functions"]),
                [
                    "0x80000000",
                    "0x84000050",
                    "0x84000051",
                    "0x84000052",
                    "0xc4000053"
                ],
                "{spec}: SMCCC_VERSION and TRNG_VERSION/FEATURES/GET_UUID/RND64"
            );
        }
        let upstream = spec.split('/').next().unwrap();
        let source = f["firmware.source_version"].as_str().unwrap_or_default();
        assert!(
            source.starts_with(upstream),
            "{spec}: source version {source:?}"
        );
        if upstream == "2026.08" {
            assert_eq!(f["firmware.version_string"], "2026.08+ds-2", "{spec}");
            assert_eq!(
                f["firmware.build_banner"],
                "UEFI firmware (version %s built at %a on %a)"
            );
        }
        // Every image was read whole: no section left packed.
        assert_eq!(v["skipped"], serde_json::json!([]), "{spec}");
    }
}

#[test]
fn inspection_of_a_file_that_is_no_firmware_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zeros.fd");
    std::fs::write(&p, vec![0u8; 65536]).unwrap();
    let out = bin()
        .args(["inspect", "firmware", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no firmware volume"), "{}", text(&out));
    let out = bin()
        .args(["inspect", "firmware", "/nonexistent.fd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

fn probe(qemu: &str, firmware: &str) -> Value {
    let out = bin()
        .args([
            "probe",
            "firmware",
            "--qemu",
            qemu,
            "--firmware",
            firmware,
            "--fresh",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe {firmware} under {qemu}: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The facts that differ between the builds, measured inside each under the host's QEMU: the
/// memory-attribute protocol is installed only by the strict-NX builds; EfiLoaderData pages are
/// executable on 2020.11 and 2022.11 and not executable from 2025.02 on, strict or not (the
/// default builds say so only in their page tables: they have no protocol to ask).
#[test]
fn the_probe_measures_the_nx_policy_of_each_build() {
    if !qemu_tests_enabled() {
        return;
    }
    let cases: &[(&str, bool, bool, &str)] = &[
        ("debian:2020.11", false, false, "page-table"),
        ("debian:2022.11", false, false, "page-table"),
        ("debian:2025.02", false, true, "page-table"),
        ("debian:2025.02/strictnx", true, true, "mem-attr-protocol"),
        ("debian:2026.08", false, true, "page-table"),
        ("debian:2026.08/strictnx", true, true, "mem-attr-protocol"),
    ];
    for &(fw, mem_attr, nx, source) in cases {
        let r = probe("host", fw);
        let f = &r["facts"];
        let ctx = format!("{fw}: {f:#} (evidence in {})", r["case_dir"]);
        assert_eq!(f["firmware.probe_complete"], true, "{ctx}");
        assert_eq!(f["firmware.probe_verdict"], "qemu-exited", "{ctx}");
        assert_eq!(f["firmware.mem_attr_protocol"], mem_attr, "{ctx}");
        assert_eq!(f["firmware.loader_data_nx"], nx, "{ctx}");
        assert_eq!(f["firmware.loader_data_nx_source"], source, "{ctx}");
        // The page tables and the protocol agree where both are there.
        assert_eq!(f["firmware.loader_data_pte_nx"], nx, "{ctx}");
        assert_eq!(f["firmware.page_size"], 4096, "{ctx}");
        assert_eq!(f["firmware.secure_boot"], false, "{ctx}");
        assert!(
            f["firmware.vendor"].as_str().unwrap().contains("EDK II"),
            "{ctx}"
        );
        assert_eq!(f["hypervisor.current_el"], 1, "{ctx}");
        assert_eq!(f["hypervisor.el2"], false, "{ctx}");
        assert_eq!(f["hypervisor.el3"], false, "{ctx}");
        assert_eq!(f["hypervisor.smccc_conduit"], "hvc", "{ctx}");
        assert_eq!(f["hypervisor.smccc_unknown_fn"], "not-supported", "{ctx}");
        assert_eq!(f["hypervisor.accelerator"], "tcg", "{ctx}");
        assert_eq!(f["hypervisor.cpu"], "cortex-a72", "{ctx}");
    }
}

/// The finding, from facts: QEMU 5.2 (bullseye) answers an SMCCC call it does not implement with
/// an undefined-instruction exception where 7.2 answers NOT_SUPPORTED; edk2 2026.08 — whose
/// RngDxe calls SMCCC functions beyond PSCI (image inspection above) — crashes there before it
/// loads the probe, while 2020.11 runs it to the end.
#[test]
fn the_probe_measures_how_qemu_answers_unknown_smccc_calls() {
    if !qemu_tests_enabled() {
        return;
    }
    let old = probe("debian:bullseye", "debian:2020.11");
    let f = &old["facts"];
    assert_eq!(f["hypervisor.qemu_version"], "5.2.0", "{f:#}");
    assert_eq!(f["hypervisor.smccc_conduit"], "hvc", "{f:#}");
    assert_eq!(
        f["hypervisor.smccc_unknown_fn"], "undefined-instruction",
        "{f:#}"
    );
    assert_eq!(f["firmware.probe_complete"], true, "{f:#}");

    let crash = probe("debian:bullseye", "debian:2026.08");
    let f = &crash["facts"];
    assert_eq!(f["firmware.probe_verdict"], "sync-exception", "{f:#}");
    assert_eq!(f["firmware.probe_complete"], false, "{f:#}");
    assert_eq!(
        f.get("firmware.mem_attr_protocol"),
        None,
        "nothing guessed: {f:#}"
    );
}
