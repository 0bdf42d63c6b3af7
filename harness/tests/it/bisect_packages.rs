//! Package-set bisection on the local Debian guest: its bad update (a `shim-signed` whose EFI
//! binary crashes the firmware on the next boot) extended with four harmless packages (each
//! installing one text file; three sort before the culprit and one after, so it is the fourth
//! of five) is five updated packages; `bootwatch bisect` with a `[packages]` table installs
//! subsets of them on fresh overlays of the pre-upgrade image, reboots each, and names
//! `shim-signed` alone. Four steps: the whole update (bad), none of it (good), the first half
//! (three extras: good), then the culprit alone, the first half of the untested rest (bad). Any
//! single culprit among five takes at most six (`search::steps_bound`); each step is a boot to
//! login, an install, a reboot and a watch to GRUB. A step whose reboot fails another way than
//! the whole update's (a hang where it crashed: a starved host) is undetermined, not bad.
//! Generous timeouts: on a loaded 2-core host the firmware alone took minutes after a reboot.
//! Needs the local image (built once, cached) and the hermetic repo server; several minutes
//! under TCG.

use crate::common;

use common::*;

/// Three before `shim-signed` in the update's (sorted) index, one after it.
const HARMLESS: [&str; 4] = [
    "bootwatch-extra-a",
    "bootwatch-extra-b",
    "bootwatch-extra-c",
    "zz-bootwatch-extra-d",
];

#[test]
fn the_culprit_package_of_a_five_package_update_is_named() {
    if !qemu_tests_enabled() {
        return;
    }
    assert!(local_image_path("debian-12-local").is_file());

    let tmp = tempfile::tempdir().unwrap();
    let update = tmp.path().join("update");
    std::fs::create_dir(&update).unwrap();
    let cache = bootwatch::sys::fsx::cache_root().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bootwatch::plan::updates::make(
            &bootwatch::plan::updates::UpdateChoice::Bad,
            "debian-12-local",
            None,
            &cache,
            &update,
        ))
        .unwrap();
    let repo =
        bootwatch::plan::bisect::packages::add_harmless_packages(&update, &HARMLESS).unwrap();
    let names: Vec<&str> = repo.packages.iter().map(|p| p.package.as_str()).collect();
    assert_eq!(
        names,
        [
            "bootwatch-extra-a",
            "bootwatch-extra-b",
            "bootwatch-extra-c",
            "shim-signed",
            "zz-bootwatch-extra-d"
        ]
    );

    let file = tmp.path().join("packages.toml");
    std::fs::write(
        &file,
        "name = \"bad-update-packages\"\n\
         description = \"the bad update with four harmless packages beside the culprit\"\n\
         image = \"debian-12-local\"\n\
         target = \"grub\"\n\
         timeout_s = 1800\n\
         silence_s = 600\n\
         [packages]\n\
         update = \"update\"\n",
    )
    .unwrap();
    let results = tmp.path().join("results");
    let out = bin()
        .arg("bisect")
        .arg(&file)
        .arg("--saved-login")
        .arg("--results")
        .arg(&results)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no bisect.json ({e}): {}", text(&out)));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["axis"], "packages");
    assert_eq!(v["status"], "found", "{v:#}");
    assert_eq!(v["candidates"].as_array().unwrap().len(), 5, "{v:#}");
    assert_eq!(
        v["result"]["culprits"],
        serde_json::json!(["shim-signed"]),
        "{v:#}"
    );
    // The culprit's step crashed before GRUB; the set without it (none) booted.
    let bad = &v["result"]["first_bad"]["run"];
    assert_eq!(bad["verdict"], "sync-exception", "{v:#}");
    assert_eq!(bad["before_grub"], true);
    assert_eq!(
        v["result"]["last_good"]["run"]["verdict"], "reached",
        "{v:#}"
    );
    let steps = v["steps"].as_array().unwrap();
    let sets: Vec<(&str, &str, Vec<&str>)> = steps
        .iter()
        .map(|s| {
            // Absent for the empty set.
            let p = s["packages"].as_array().map_or(&[][..], Vec::as_slice);
            (
                s["role"].as_str().unwrap(),
                s["class"].as_str().unwrap(),
                p.iter().map(|x| x.as_str().unwrap()).collect(),
            )
        })
        .collect();
    // Full, empty, then halving: the first half passes, and the first half of the rest is the
    // culprit alone (any single culprit among five: at most 2 + `search::steps_bound(5)` = 6).
    assert_eq!(
        sets,
        vec![
            ("full", "bad", names.clone()),
            ("empty", "good", vec![]),
            (
                "subset",
                "good",
                vec![
                    "bootwatch-extra-a",
                    "bootwatch-extra-b",
                    "bootwatch-extra-c"
                ]
            ),
            ("subset", "bad", vec!["shim-signed"]),
        ],
        "{v:#}"
    );
    assert_eq!(v["boots"], 4, "one boot a step: {v:#}");
    let md = std::fs::read_to_string(results.join("bisect.md")).unwrap();
    assert!(md.contains("shim-signed"), "{md}");
}
