//! The firmware probe as a case: the probe application (inputs::probe) booted by one firmware
//! build under one QEMU build, its console lines turned into facts (core::firmware::probe), the
//! facts cached under `<cache>/probe/results/<key>/` by the content hashes of everything that
//! decides them: QEMU's binary, the firmware's code image and vars template, the CPU model and the
//! probe's source. Also offline inspection of a code image (core::firmware), cached under
//! `<cache>/firmware-inspect/<key>.json` by the image's sha256 and the inspector's source.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::core::classify::PatternSet;
use crate::core::event::EventSink;
use crate::core::facts::Facts;
use crate::core::firmware::{self, keys, probe::ProbeOutput};
use crate::core::verdict::Outcome;
use crate::engine::case::{self, CaseDir, CaseRequest, VarsSource};
use crate::engine::record::RunStatus;
use crate::inputs::probe::{probe_image, source_hash};
use crate::inputs::providers::{ResolvedFirmware, ResolvedQemu};
use crate::sys::fsx;

/// Bump when the way probe results are made or read changes (invalidates the cache).
const PROBE_FORMAT: &str = "firmware-probe/1";

/// The probe powers off about 2-4 s after power-on under TCG on an idle machine; a firmware
/// that hangs is judged at the silence deadline, one that prints forever at the timeout.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
const PROBE_SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// What one probe run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The facts (`firmware.*`, `hypervisor.*`).
    pub facts: Facts,
    /// The raw `key=value` lines the probe printed.
    pub raw: std::collections::BTreeMap<String, String>,
    /// How the probe's boot ended (a firmware that crashes before loading it is a result).
    pub outcome: Outcome,
    /// The case's results directory (console.log, result.json).
    pub case_dir: PathBuf,
    pub key: String,
    pub qemu: String,
    pub firmware: String,
    pub cpu: String,
    pub made_at: String,
    pub made_in_s: f64,
    /// This report came from the cache: nothing was booted for it.
    #[serde(default)]
    pub reused: bool,
}

/// Whether a cached report may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// A report cached for the same inputs answers (the default).
    Cached,
    /// Boot the probe again and replace the cached report (tests; a suspected bad entry).
    Refresh,
}

/// The CPU model probes run with unless told otherwise (the matrix's default).
pub fn default_cpu() -> &'static str {
    crate::plan::matrix::spec::DEFAULT_CPU
}

/// Boots the probe under `qemu` with `firmware` (its vars template, else none), or returns the
/// cached report for the same inputs. A probe that does not complete (the firmware crashed, the
/// probe was cut short) is still a report: its facts say `firmware.probe_complete = false` and
/// hold what was measured, and `firmware.probe_verdict` says how the boot ended.
pub async fn probe_firmware(
    qemu: &ResolvedQemu,
    firmware: &ResolvedFirmware,
    cpu: &str,
    cache_root: &Path,
    reuse: Reuse,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<ProbeReport> {
    let vars_sha = match &firmware.vars_template {
        Some(v) => {
            let v = v.clone();
            crate::engine::disk::blocking(move || {
                Ok(fsx::hash_file_cached(&v, fsx::hash_cache_dir().as_deref())?.sha256)
            })
            .await?
        }
        None => String::new(),
    };
    // The accelerator the case will choose (what the probe measures differs under KVM and TCG).
    let accel = crate::sys::host::host_facts().best_accel();
    let key = probe_key(
        &qemu.sha256,
        &firmware.code_sha256,
        &vars_sha,
        cpu,
        accel.as_str(),
    );
    let root = cache_root.join("probe").join("results");
    let dir = root.join(&key);
    if reuse == Reuse::Cached
        && let Some(r) = cached_report(cache_root, &key)
    {
        return Ok(r);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let Some(_lock) =
        fsx::FileLock::acquire_cancellable(&root.join(format!(".{key}.lock")), cancel).await?
    else {
        bail!("cancelled while waiting for another run of the same probe");
    };
    if reuse == Reuse::Cached
        && let Some(r) = cached_report(cache_root, &key)
    {
        return Ok(r);
    }
    let image = probe_image(cache_root, cancel).await?;
    let t = std::time::Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{key}-"))
        .tempdir_in(&root)?;
    let case_dir = tmp.path().join("case");
    let mut req = CaseRequest::new(
        "firmware-probe",
        CaseDir::Exactly(case_dir.clone()),
        firmware.code.clone(),
        vec![crate::engine::step::Step::Boot {
            until: None,
            timeout: PROBE_TIMEOUT,
            silence: PROBE_SILENCE,
        }],
    );
    req.qemu = qemu.binary.clone();
    req.qemu_exec = qemu.exec.clone();
    req.cpu = Some(cpu.to_string());
    req.smp = 1;
    req.vars = match &firmware.vars_template {
        Some(v) => VarsSource::Template(v.clone()),
        None => VarsSource::Beside,
    };
    req.disks = vec![image];
    req.snapshot = true;
    req.accel = Some(accel);
    let checked = case::check(req)?;
    let accel = checked.accel.as_str().to_string();
    let done = case::run(checked, cancel, &sink.scoped("firmware-probe")).await?;
    if cancel.is_cancelled() || done.record.status == RunStatus::Interrupted {
        bail!("interrupted while probing {}", firmware.spec);
    }
    if done.record.status == RunStatus::Error {
        bail!(
            "the firmware probe could not be run ({}); its results are in {}",
            done.record.outcome.reason,
            done.dir.display()
        );
    }
    let serial = case_dir.join("serial.raw");
    let raw = tokio::fs::read(&serial)
        .await
        .with_context(|| format!("reading {}", serial.display()))?;
    let out = ProbeOutput::from_serial(PatternSet::builtin(), &raw);
    let mut facts = out.facts();
    facts.set(keys::PROBE_VERDICT, done.record.outcome.verdict.as_str());
    facts.set(keys::QEMU_VERSION, qemu.version.as_str());
    facts.set(keys::ACCELERATOR, accel);
    facts.set(keys::CPU, cpu);
    facts.set(keys::CODE_SHA256, firmware.code_sha256.as_str());
    let staging = tmp.path().join("final");
    std::fs::create_dir_all(&staging)?;
    std::fs::rename(&case_dir, staging.join("case"))?;
    let report = ProbeReport {
        facts,
        raw: out.values,
        outcome: done.record.outcome.clone(),
        case_dir: dir.join("case"),
        key,
        qemu: qemu.spec.clone(),
        firmware: firmware.spec.clone(),
        cpu: cpu.to_string(),
        made_at: jiff::Timestamp::now().to_string(),
        made_in_s: crate::engine::qmp::round_ms(t.elapsed().as_secs_f64()),
        reused: false,
    };
    fsx::write_json_atomic(&staging.join("probe.json"), &report)?;
    fsx::replace_dir(&staging, &dir, "probe results")?;
    Ok(report)
}

/// The key a probe's report is cached under: the content hashes of QEMU's binary, the code
/// image and the vars template (empty: none), the CPU model, and the probe's source.
pub fn probe_key(
    qemu_sha256: &str,
    code_sha256: &str,
    vars_sha256: &str,
    cpu: &str,
    accel: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        PROBE_FORMAT,
        &source_hash(),
        qemu_sha256,
        code_sha256,
        vars_sha256,
        cpu,
        accel,
    ] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The cached report of the probe with this key, marked `reused`; nothing is booted.
pub fn cached_report(cache_root: &Path, key: &str) -> Option<ProbeReport> {
    let manifest = cache_root
        .join("probe")
        .join("results")
        .join(key)
        .join("probe.json");
    let mut r = fsx::read_json::<ProbeReport>(&manifest)?;
    r.reused = true;
    Some(r)
}

/// Bump when what an inspection records changes in a way its source does not show.
const INSPECT_FORMAT: &str = "firmware-inspect/1";

/// The inspector's source: a change to it is a new cache key.
const INSPECTOR_SOURCE: [&str; 3] = [
    include_str!("../core/firmware/mod.rs"),
    include_str!("../core/firmware/volume.rs"),
    include_str!("../core/firmware/code.rs"),
];

/// Inspects a firmware code image offline (see `core::firmware::inspect`), on a blocking
/// thread. Cached by the image's sha256 (itself cached by the file's identity, so an image seen
/// before is not read again) and the inspector's source, under `<cache>/firmware-inspect/`.
pub async fn inspect_firmware(code: &Path) -> anyhow::Result<firmware::Inspection> {
    let path = code.to_path_buf();
    crate::engine::disk::blocking(move || {
        let cache = fsx::cache_root().ok().map(|r| r.join("firmware-inspect"));
        let sha = fsx::hash_file_cached(&path, fsx::hash_cache_dir().as_deref())
            .with_context(|| format!("reading {}", path.display()))?
            .sha256;
        let mut h = Sha256::new();
        for part in [INSPECT_FORMAT, sha.as_str()]
            .into_iter()
            .chain(INSPECTOR_SOURCE)
        {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        let entry = cache
            .as_ref()
            .map(|c| c.join(format!("{}.json", &hex::encode(h.finalize())[..16])));
        if let Some(hit) = entry
            .as_deref()
            .and_then(fsx::read_json::<firmware::Inspection>)
        {
            return Ok(hit);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        // The bytes read are the ones inspected: their own hash is the fact (and the entry is
        // kept only when it is the key's).
        let read_sha = hex::encode(Sha256::digest(&bytes));
        let ins = firmware::inspect(&bytes, &read_sha)
            .with_context(|| format!("inspecting {}", path.display()))?;
        if let (Some(dir), Some(entry), true) = (&cache, &entry, read_sha == sha) {
            // A cache that cannot be written costs the next caller the inspection, nothing more.
            let _ = std::fs::create_dir_all(dir)
                .map_err(anyhow::Error::from)
                .and_then(|_| Ok(fsx::write_json_atomic(entry, &ins)?));
        }
        Ok(ins)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each input the probe's facts depend on is in its key: the accelerator too (timings and
    /// what the hypervisor answers differ under KVM and TCG).
    #[test]
    fn the_probe_key_changes_with_each_input() {
        let base = probe_key("q", "c", "v", "max", "tcg");
        assert_eq!(base, probe_key("q", "c", "v", "max", "tcg"));
        for other in [
            probe_key("Q", "c", "v", "max", "tcg"),
            probe_key("q", "C", "v", "max", "tcg"),
            probe_key("q", "c", "V", "max", "tcg"),
            probe_key("q", "c", "v", "cortex-a72", "tcg"),
            probe_key("q", "c", "v", "max", "kvm"),
        ] {
            assert_ne!(base, other);
        }
    }
}
