//! The shapes of `result.json` and `case.json` (the CLI's contract with scripts and CI), pinned
//! by snapshots of the files a real case writes: the crash fixture booted on QEMU with the host's
//! edk2. What changes from run to run or host to host (times, temporary paths, hashes, host
//! facts, versions) is redacted; field names, nesting, verdicts, stages, line numbers and the
//! argv are kept. Keys appear sorted, as serde_json's map holds them. Review a change with
//! `cargo insta review` and say in the commit why the contract changed (and bump the schema
//! when a field goes or changes meaning).

use crate::common;

use std::path::Path;
use std::time::Duration;

use bootwatch::core::event::EventSink;
use bootwatch::core::launch::Accel;
use bootwatch::engine::case::{self, CaseDir, CaseRequest};
use bootwatch::engine::step::Step;
use common::*;
use insta::internals::Content;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Values become `[tag]`; `null` stays, so whether a field is set is still pinned.
fn redact(tag: &'static str) -> insta::internals::Redaction {
    insta::dynamic_redaction(move |v: Content, _| {
        if matches!(v.resolve_inner(), Content::None | Content::Unit) {
            v
        } else {
            Content::from(format!("[{tag}]"))
        }
    })
}

/// The firmware banner carries the build's date and version; other lines are kept.
fn banner() -> insta::internals::Redaction {
    insta::dynamic_redaction(|v: Content, _| match v.as_str() {
        Some(s) if s.starts_with("UEFI firmware") => Content::from("[firmware banner]"),
        _ => v,
    })
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    for sel in [
        ".time_to_verdict_s",
        ".evidence_t_s",
        ".duration_s",
        ".**.t_s",
        ".**.start_t_s",
        ".boots[].time_to_verdict_s",
        ".steps[].started_s",
        ".steps[].duration_s",
        ".qemu.cpu_s",
        ".qemu.wall_s",
        ".harness_cpu_s",
        ".harness_watch_cpu_s",
    ] {
        s.add_redaction(sel, redact("s"));
    }
    s.add_redaction(".started_at", redact("timestamp"));
    for field in ["hostname", "os", "kernel", "arch", "cpus"] {
        s.add_redaction(&format!(".host.{field}"), redact("host"));
    }
    for sel in [
        ".qemu.version",
        ".qemu.package",
        ".sessions[].qemu_version",
        ".sessions[].qemu_package",
        ".firmware.banner_version",
        ".bootwatch_version",
    ] {
        s.add_redaction(sel, redact("version"));
    }
    s.add_redaction(".**.sha256", redact("sha256"));
    // The inputs' provenance is the host's: its package versions and file sizes.
    for sel in [
        ".inputs[].size",
        ".inputs[].version",
        ".inputs[].package_version",
    ] {
        s.add_redaction(sel, redact("host input"));
    }
    s.add_redaction(".**.text", banner());
    s
}

/// Replaces every occurrence of the run's temporary directories and the QEMU binary's path in
/// every string, so paths keep their file names: `[private]/vars.fd`.
fn replace_paths(v: &mut Value, places: &[(&Path, &str)]) {
    match v {
        Value::String(s) => {
            for (p, tag) in places {
                *s = s.replace(p.to_str().unwrap(), tag);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| replace_paths(v, places)),
        Value::Object(o) => o.values_mut().for_each(|v| replace_paths(v, places)),
        _ => {}
    }
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn result_json_and_case_json_of_a_crash() {
    if !qemu_tests_enabled() {
        return;
    }
    let results = results_root();
    let dir = results.path().join("crash");
    let mut req = CaseRequest::new(
        "crash",
        CaseDir::Exactly(dir.clone()),
        HOST_CODE.into(),
        vec![Step::Boot {
            until: None,
            timeout: Duration::from_secs(120),
            silence: Duration::from_secs(60),
        }],
    );
    req.disks = vec![fixtures().join("crash.img")];
    req.snapshot = true;
    // The accelerator (and with it the CPU model) is a host fact: fixed, the argv is the same
    // on every host.
    req.accel = Some(Accel::Tcg);
    let case = case::check(req).unwrap();
    let qemu = case.qemu.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let finished = runtime
        .block_on(case::run(
            case,
            &CancellationToken::new(),
            &EventSink::none(),
        ))
        .unwrap();
    assert_eq!(finished.dir, dir);

    let mut result = read_json(&dir.join("result.json"));
    let mut case = read_json(&dir.join("case.json"));
    // The private directory (sockets, the vars copy) is gone by now; the record names it.
    let vars = result["firmware"]["vars"]["path"]
        .as_str()
        .expect("a pflash boot records its vars store")
        .to_string();
    let private = Path::new(&vars).parent().unwrap();
    // The sockets' private directory (the vars copy may have one of its own in memory).
    let sockets = result["argv"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| {
            a.as_str()?
                .strip_prefix("socket,id=serial0,server=on,wait=off,path=")
        })
        .map(|p| Path::new(p).parent().unwrap().to_path_buf())
        .expect("the serial socket in the argv");
    let places = [
        (private, "[private]"),
        (sockets.as_path(), "[private]"),
        (fixtures(), "[fixtures]"),
        (results.path(), "[results]"),
        (qemu.as_path(), "[qemu]"),
    ];
    replace_paths(&mut result, &places);
    replace_paths(&mut case, &places);
    settings().bind(|| {
        insta::assert_json_snapshot!("result.json", result);
        insta::assert_json_snapshot!("case.json", case);
    });
}
