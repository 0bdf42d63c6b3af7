//! `bootwatch bundle` and `bootwatch replay` end to end on real QEMU + Debian's edk2: a crash
//! run's bundle replays to the same verdict, carries no secret, home path or host name, and its
//! REPORT.md parses; a cell's bundle carries its inputs' provenance and k of N; replay refuses
//! artifacts whose hashes differ; a silent guest leaves its machine state; the firmware's
//! variable store change is in case.json.

use crate::common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/matrix")
        .join(name)
}

/// Every file of a `.tar.gz`, by name (top directory dropped).
pub(crate) fn unpack(path: &Path) -> BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let rel = name.split_once('/').unwrap().1.to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.insert(rel, b);
    }
    out
}

pub(crate) fn bundle(dir: &Path, out: &Path) -> serde_json::Value {
    let o = bin()
        .arg("bundle")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Whether `hay` holds `word` not inside a longer name.
fn has_word(hay: &str, word: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    hay.match_indices(word).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

/// A home path: `/root` or `/home/NAME` starting a path (not `.../tree/root/usr`).
fn has_home_path(hay: &str) -> Option<String> {
    let re = regex::Regex::new(r#"(^|[^A-Za-z0-9._%+~/\-])(/root(/|\b)|/home/[^/\s"']+)"#).unwrap();
    re.find(hay).map(|m| m.as_str().to_string())
}

/// What a shareable bundle must not contain, checked over every file.
pub(crate) fn assert_clean(files: &BTreeMap<String, Vec<u8>>, secrets: &[&str]) {
    let host = hostname();
    for (name, bytes) in files {
        if name.ends_with(".ppm") {
            continue;
        }
        let t = String::from_utf8_lossy(bytes);
        if let Some(m) = has_home_path(&t) {
            panic!("{name} holds a home path: {m:?}");
        }
        if host.len() >= 2 && host != "localhost" {
            assert!(!has_word(&t, &host), "{name} holds the host name {host:?}");
        }
        for s in secrets {
            assert!(!t.contains(s), "{name} holds {s:?}");
        }
    }
}

#[test]
fn a_crash_run_bundles_cleanly_and_replays_to_the_same_verdict() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("crash.img");
    let (code, _, err) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let run = only_dir(res.path());

    // case.json: the inputs with provenance, and the store the firmware rewrote on its first
    // boot (its boot options and BootOrder, the countdown's Timeout).
    let case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("case.json")).unwrap()).unwrap();
    let inputs = case["inputs"].as_array().unwrap();
    let role = |r: &str| {
        inputs
            .iter()
            .find(|i| i["role"] == r)
            .unwrap_or_else(|| panic!("no {r} in {inputs:#?}"))
    };
    assert_eq!(role("qemu")["provider"], "host");
    assert!(
        role("qemu")["package_version"].as_str().is_some(),
        "{inputs:#?}"
    );
    assert_eq!(role("firmware-code")["package"], "qemu-efi-aarch64");
    assert!(role("firmware-code")["package_version"].as_str().is_some());
    assert_eq!(role("disk")["sha256"].as_str().unwrap().len(), 64);
    let vc = &case["vars_change"];
    assert_eq!(vc["before_label"], "template", "{vc:#}");
    assert!(
        !vc["after"]["boot_order"].as_array().unwrap().is_empty(),
        "{vc:#}"
    );
    assert_eq!(vc["boot_order_changed"], true, "{vc:#}");
    assert!(
        vc["variables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "BootOrder" && v["change"] == "added"),
        "{vc:#}"
    );
    assert!(
        vc["after"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"].as_str().unwrap_or("").contains("HD(")
                || e["description"].as_str().unwrap_or("").contains("UEFI")),
        "{vc:#}"
    );

    // Secrets planted where a bundle reads: a secrets.json's password, a token, the home path,
    // the host name. None of them may leave.
    let password = "Sw0rdfish-only-in-secrets";
    std::fs::write(
        run.join("secrets.json"),
        format!("{{\"user\":\"debian\",\"password\":\"{password}\"}}"),
    )
    .unwrap();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mut stderr = std::fs::read_to_string(run.join("qemu.stderr")).unwrap_or_default();
    stderr.push_str(&format!(
        "typed {password} at {home}/.config/x on {}; api_key=Zx81-very-secret-Token\n",
        hostname()
    ));
    std::fs::write(run.join("qemu.stderr"), stderr).unwrap();

    let out = res.path().join("crash.tar.gz");
    let b = bundle(&run, &out);
    assert_eq!(b["kind"], "run");
    assert_eq!(b["verdict"], "sync-exception");
    let files = unpack(&out);
    for f in [
        "bundle.json",
        "REPORT.md",
        "repro.sh",
        "qemu-argv.txt",
        "host.json",
        "runs/run/case.json",
        "runs/run/result.json",
        "runs/run/serial.raw",
        "runs/run/console.log",
        "runs/run/qmp.jsonl",
    ] {
        assert!(files.contains_key(f), "{f} missing: {:?}", files.keys());
    }
    assert!(
        !files.keys().any(|k| k.contains("secrets")),
        "{:?}",
        files.keys()
    );
    assert_clean(&files, &[password, "Zx81-very-secret-Token"]);
    let stderr = String::from_utf8_lossy(&files["runs/run/qemu.stderr"]);
    assert!(
        stderr.contains("<redacted>") && stderr.contains("~/.config/x"),
        "{stderr}"
    );

    // REPORT.md parses as Markdown with the sections a bug form asks for, and the exception
    // block whole in a code block.
    let md = String::from_utf8(files["REPORT.md"].clone()).unwrap();
    let mut headings = Vec::new();
    let mut code_blocks = Vec::new();
    let (mut in_heading, mut in_code) = (false, false);
    let mut buf = String::new();
    for ev in pulldown_cmark::Parser::new_ext(&md, pulldown_cmark::Options::ENABLE_TABLES) {
        use pulldown_cmark::{Event, Tag, TagEnd};
        match ev {
            Event::Start(Tag::Heading { .. }) => (in_heading, buf) = (true, String::new()),
            Event::End(TagEnd::Heading(_)) => {
                in_heading = false;
                headings.push(buf.clone());
            }
            Event::Start(Tag::CodeBlock(_)) => (in_code, buf) = (true, String::new()),
            Event::End(TagEnd::CodeBlock) => {
                in_code = false;
                code_blocks.push(buf.clone());
            }
            Event::Text(t) | Event::Code(t) if in_heading || in_code => buf.push_str(&t),
            _ => {}
        }
    }
    for h in ["Steps to reproduce", "Expected", "Actual", "Exception"] {
        assert!(
            headings.iter().any(|x| x == h),
            "{h} not in {headings:?}\n{md}"
        );
    }
    assert!(
        headings[0].contains("Synchronous Exception at 0x"),
        "{}",
        headings[0]
    );
    assert!(
        code_blocks
            .iter()
            .any(|c| c.starts_with("Synchronous Exception at 0x")),
        "{code_blocks:?}"
    );
    assert!(md.contains("qemu-efi-aarch64"), "{md}");

    // repro.sh is a shell script sh accepts, with no path of the run's private directories
    // (the sockets' under TMPDIR, the vars copy's in memory) left in it.
    let script = String::from_utf8_lossy(&files["repro.sh"]);
    let private = regex::Regex::new(r"/bootwatch-[0-9]+-").unwrap();
    assert!(!private.is_match(&script), "{script}");
    assert!(script.contains("file='\"${WORK}\"'/vars.fd"), "{script}");
    let repro = res.path().join("repro.sh");
    std::fs::write(&repro, &files["repro.sh"]).unwrap();
    let o = std::process::Command::new("sh")
        .arg("-n")
        .arg(&repro)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Replayed on this machine: the same verdict (exit 0).
    let again = results_root();
    let o = bin()
        .args(["replay", "--json", "--results"])
        .arg(again.path())
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["same"], true);
    assert_eq!(v["now"]["verdict"], "sync-exception");

    // A bundle whose firmware is not the bytes this machine has: refused, nothing run.
    let unpacked = res.path().join("unpacked");
    for (name, bytes) in &files {
        let p = unpacked.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let mut rec: serde_json::Value = serde_json::from_slice(&files["bundle.json"]).unwrap();
    for i in rec["inputs"].as_array_mut().unwrap() {
        if i["role"] == "firmware-code" {
            i["sha256"] = "0".repeat(64).into();
        }
    }
    std::fs::write(
        unpacked.join("bundle.json"),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    let none = results_root();
    let o = bin()
        .args(["replay", "--results"])
        .arg(none.path())
        .arg(&unpacked)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sha256") && err.contains(&"0".repeat(64)),
        "{err}"
    );
    assert_eq!(none.path().read_dir().unwrap().count(), 0, "something ran");
}

#[test]
fn a_cell_bundle_carries_provenance_and_k_of_n() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let o = bin()
        .arg("matrix")
        .arg(data("crash-host.toml"))
        .args(["--repeat", "2", "--results"])
        .arg(res.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cell = only_dir(&res.path().join("cells"));
    let out = res.path().join("cell.tar.gz");
    let b = bundle(&cell, &out);
    assert_eq!(b["kind"], "cell");
    assert_eq!(b["repeats"]["runs"], 2);
    assert_eq!(b["repeats"]["failed"], 2);
    let inputs = b["inputs"].as_array().unwrap();
    let role = |r: &str| {
        inputs
            .iter()
            .find(|i| i["role"] == r)
            .unwrap_or_else(|| panic!("no {r} in {inputs:#?}"))
    };
    assert_eq!(role("qemu")["provider"], "host");
    assert!(
        role("qemu")["package_version"].as_str().is_some(),
        "{inputs:#?}"
    );
    assert!(role("qemu")["version"].as_str().is_some());
    assert_eq!(role("firmware-code")["provider"], "host");
    assert!(role("firmware-code")["package_version"].as_str().is_some());
    assert_eq!(role("disk")["provider"], "fixture:crash");
    for i in inputs {
        assert_eq!(i["sha256"].as_str().map(str::len), Some(64), "{i:#}");
    }
    let files = unpack(&out);
    assert!(files.contains_key("cell.json"));
    assert!(
        files.contains_key("runs/run-1/console.log")
            && files.contains_key("runs/run-2/console.log")
    );
    let md = String::from_utf8(files["REPORT.md"].clone()).unwrap();
    assert!(md.contains("failed in 2 of 2 runs"), "{md}");
    assert_clean(&files, &[]);
}

#[test]
fn a_silent_guest_leaves_registers_status_and_a_screendump() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("silent.img");
    let (code, r, err) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
        // A release build prints nothing before BdsDxe: under TCG on a loaded host its start
        // alone can be silent for 4 s (seen at load 10 on 2 cores), judged before the fixture.
        "--silence",
        "10",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(r["verdict"], "hang");
    let dir = only_dir(res.path());
    // The fixture's loop is what went silent, not the firmware's start.
    let tail = std::fs::read_to_string(dir.join("hang/console-tail.txt")).unwrap();
    assert!(tail.contains("BdsDxe"), "{tail}");
    let h = &r["hang"];
    assert!(h["errors"].as_array().is_none_or(|e| e.is_empty()), "{h:#}");
    assert_eq!(h["status"]["status"], "running", "{h:#}");
    // PC from `info registers`; ELR, ESR and FAR (which it does not print) from the gdbstub.
    let hex16 = |k: &str| -> String {
        let v = h["registers"][k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k}: {h:#}"));
        assert!(
            v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()),
            "{k}={v}"
        );
        v.to_string()
    };
    let pc = hex16("PC");
    for k in [
        "ELR_EL1",
        "ESR_EL1",
        "FAR_EL1",
        "CPU1.ELR_EL1",
        "CPU1.ESR_EL1",
    ] {
        hex16(k);
    }
    // The firmware's timer interrupts leave their return address in ELR_EL1: code in RAM,
    // which starts at 0x40000000 on the virt machine (a zero would be a register not read).
    let elr = u64::from_str_radix(&hex16("ELR_EL1"), 16).unwrap();
    assert!(elr >= 0x4000_0000, "{h:#}");
    assert!(h["duration_s"].as_f64().unwrap() < 6.0);
    let regs = std::fs::read_to_string(dir.join("hang/registers.txt")).unwrap();
    assert!(regs.contains("PC="), "{regs}");
    // The instructions at the PC, disassembled (not "unknown register").
    let at_pc = format!("0x{}:", pc.trim_start_matches('0'));
    assert!(regs.contains(&at_pc), "{regs}");
    assert!(
        regs.contains("gdbstub")
            && regs.contains(&format!("ELR_EL1={}", hex16("ELR_EL1")))
            && regs.contains("ESR_EL1="),
        "{regs}"
    );
    let status = std::fs::read_to_string(dir.join("hang/query-status.json")).unwrap();
    assert!(status.contains("\"running\""), "{status}");
    let shot = std::fs::read(dir.join("hang/screendump.ppm")).unwrap();
    assert!(shot.starts_with(b"P6"), "not a PPM");
    // And a bundle of it carries them.
    let out = res.path().join("silent.tar.gz");
    bundle(&dir, &out);
    let files = unpack(&out);
    assert!(
        files.contains_key("runs/run/hang/screendump.ppm"),
        "{:?}",
        files.keys()
    );
    let md = String::from_utf8(files["REPORT.md"].clone()).unwrap();
    assert!(
        md.contains("query-status")
            && md.contains("| PC |")
            && md.contains("| ELR_EL1 |")
            && md.contains("| ESR_EL1 |"),
        "{md}"
    );
}

#[test]
fn the_host_vars_template_decodes() {
    let t = Path::new("/usr/share/AAVMF/AAVMF_VARS.fd");
    if !t.is_file() {
        assert!(!qemu_tests_enabled() || t.is_file());
        return;
    }
    let s = bootwatch::engine::disk::read_varstore(t).unwrap();
    let c = s.boot_config();
    assert!(c.boot_order.is_empty(), "{c:?}");
}

/// A failing run's bundle names the known bug behind it in bundle.json and REPORT.md: the
/// project's finding (edk2 2026.08 on QEMU 5.2) booted as a plain run; a run that did not fail
/// has none.
#[test]
fn a_failing_runs_bundle_names_its_known_bug() {
    if !qemu_tests_enabled() {
        return;
    }
    let res = results_root();
    let disk = fixtures().join("hello.img");
    let (code, v, err) = boot_json(&[
        "--snapshot",
        "--qemu",
        "debian:bullseye",
        "--firmware",
        "debian:2026.08/strictnx",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{v:#} {err}");
    let run = res.path().join(v["run_id"].as_str().unwrap());
    let out = res.path().join("finding.tar.gz");
    let b = bundle(&run, &out);
    let x = &b["explanation"];
    assert_eq!(x["run"], ".", "{b:#}");
    assert_eq!(
        x["families"][0]["id"], "edk2-smccc-hvc-on-qemu-5.2",
        "{b:#}"
    );
    assert_eq!(x["families"].as_array().unwrap().len(), 1, "{b:#}");
    let files = unpack(&out);
    // bundle.json as packed says the same.
    let packed: serde_json::Value = serde_json::from_slice(&files["bundle.json"]).unwrap();
    assert_eq!(&packed["explanation"], x);
    let md = String::from_utf8(files["REPORT.md"].clone()).unwrap();
    let section = md
        .split("## Known bug (`bootwatch explain`)")
        .nth(1)
        .unwrap_or_else(|| panic!("no known-bug section: {md}"));
    assert!(
        section.contains("- `edk2-smccc-hvc-on-qemu-5.2`: A firmware driver issues an SMCCC hvc")
            && section.contains("(confidence 0."),
        "{md}"
    );
    assert_clean(&files, &[]);

    // A run that reached its end: nothing to explain.
    let (code, v, err) = boot_json(&[
        "--snapshot",
        "--disk",
        disk.to_str().unwrap(),
        "--results",
        res.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v:#} {err}");
    let run = res.path().join(v["run_id"].as_str().unwrap());
    let b = bundle(&run, &res.path().join("hello.tar.gz"));
    assert_eq!(b.get("explanation"), None, "{b:#}");
    let files = unpack(&res.path().join("hello.tar.gz"));
    assert!(!String::from_utf8_lossy(&files["REPORT.md"]).contains("## Known bug"));
}
