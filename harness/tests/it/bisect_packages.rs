//! Package-set bisection on the local Debian guest: its bad update (a `shim-signed` whose EFI
//! binary crashes the firmware on the next boot) extended with two harmless packages (each
//! installing one text file) is three updated packages (two levels of delta debugging; five took
//! 13 minutes of the suite for two more steps of the same code); `bootwatch bisect` with a `[packages]`
//! table installs subsets of them on fresh overlays of the pre-upgrade image, reboots each, and
//! names `shim-signed` alone. A step whose reboot fails another way than the whole update's
//! (a hang where it crashed: a starved host) is undetermined, not bad. Generous timeouts: on a
//! loaded 2-core host the firmware alone took minutes after a reboot. Needs the local image (built once, cached) and the hermetic repo
//! server; several minutes under TCG.

use crate::common;

use common::*;

const HARMLESS: [&str; 2] = ["bootwatch-extra-a", "bootwatch-extra-b"];

#[test]
fn the_culprit_package_of_a_three_package_update_is_named() {
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
    assert_eq!(repo.packages.len(), 3, "{:?}", repo.packages);

    let file = tmp.path().join("packages.toml");
    std::fs::write(
        &file,
        "name = \"bad-update-packages\"\n\
         description = \"the bad update with two harmless packages beside the culprit\"\n\
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
    assert_eq!(v["candidates"].as_array().unwrap().len(), 3, "{v:#}");
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
    assert_eq!(steps[0]["role"], "full");
    assert_eq!(steps[0]["class"], "bad");
    assert_eq!(steps[1]["role"], "empty");
    assert_eq!(steps[1]["class"], "good");
    // Full, empty, then halves: the culprit among three in at most two levels, not 2^3 sets.
    assert!(steps.len() <= 6, "{} steps: {v:#}", steps.len());
    let md = std::fs::read_to_string(results.join("bisect.md")).unwrap();
    assert!(md.contains("shim-signed"), "{md}");
}
