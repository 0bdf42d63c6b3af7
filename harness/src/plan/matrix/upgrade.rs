//! An image's state after its upgrade, for the matrix's `NAME@upgraded` cells: the upgrade
//! scenario runs once on the image (with the matrix's `[upgrade]` update and builds), and the disk
//! (a qcow2 overlay over the base image) and firmware variable store it left are cached under
//! `<cache>/upgraded/<image>-<key>/`, keyed by everything that went into them. Cells boot that
//! disk through their own overlays, so it is never written again.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::core::verdict::exit_code;
use crate::engine::record::write_json_atomic;
use crate::engine::runner::{CaseConfig, MachineSpec, UpdateRepo, run_case};
use crate::engine::session::Timings;
use crate::inputs::images::Resolved;
use crate::inputs::providers::{self, ProviderContext};
use crate::inputs::repo;
use crate::plan::demo::UPGRADE_REBOOT;
use crate::plan::matrix::spec::UpgradeSpec;
use crate::plan::scenario::Scenario;

/// Bump when the way the upgraded state is made changes (invalidates the cache).
const UPGRADE_FORMAT: &str = "matrix-upgrade/1";

/// The upgraded disk and store (both read-only inputs to the cells).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpgradedImage {
    pub disk: PathBuf,
    pub disk_sha256: String,
    pub vars: PathBuf,
    pub vars_sha256: String,
    /// The upgrade's own results (case.json, consoles), kept beside the disk.
    pub case_dir: PathBuf,
    /// Verdict of the boot after the upgrade.
    pub verdict: String,
    pub key: String,
    pub made_at: String,
    pub made_in_s: f64,
}

/// Returns the cached upgraded state of `base`, or makes it (one scenario run, minutes under
/// TCG). Fails when the upgraded guest does not boot (`reached` is required: the state to test
/// firmware and QEMU builds against is a guest that booted after its upgrade).
pub async fn prepare(
    base: &Resolved,
    spec: &UpgradeSpec,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
) -> anyhow::Result<UpgradedImage> {
    let (scenario_text, scenario_name) = match &spec.scenario {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            UPGRADE_REBOOT.to_string(),
            "scenarios/upgrade-reboot.toml".to_string(),
        ),
    };
    let scenario = Scenario::parse(&scenario_text, &scenario_name)?;
    let update_key = match spec.update.as_str() {
        "good" => "good".to_string(),
        dir => dir_fingerprint(Path::new(dir))?,
    };
    let mut h = Sha256::new();
    for part in [
        UPGRADE_FORMAT,
        &base.sha256,
        &scenario_text,
        &update_key,
        &spec.qemu.to_string(),
        &spec.firmware.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    let key = hex::encode(h.finalize())[..16].to_string();
    let root = ctx.cache_root.join("upgraded");
    let dir = root.join(format!("{}-{key}", base.name));
    let manifest = dir.join("upgraded.json");
    if let Some(up) = load(&manifest) {
        return Ok(up);
    }
    std::fs::create_dir_all(&root)?;
    // One maker at a time; a second process waits, then finds it made.
    let lock_path = root.join(format!(".{}-{key}.lock", base.name));
    let _lock = crate::sys::fsx::FileLock::acquire_async(&lock_path).await?;
    if let Some(up) = load(&manifest) {
        return Ok(up);
    }
    let t = std::time::Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}-{key}-", base.name))
        .tempdir_in(&root)?;
    let q = providers::resolve_qemu(&spec.qemu, ctx, cancel).await?;
    let f = providers::resolve_firmware(&spec.firmware, ctx, cancel).await?;
    let Some(vars_template) = f.vars_template.clone() else {
        bail!(
            "the upgrade needs a 64 MiB pflash firmware with a vars store; {} has none",
            f.code.display()
        );
    };
    let machine = MachineSpec {
        qemu: q.binary.clone(),
        qemu_exec: q.exec.clone(),
        cpu: crate::plan::matrix::spec::DEFAULT_CPU.into(),
        accel: crate::sys::host::host_facts().best_accel(),
        smp: 2,
        memory_mib: 2048,
        firmware_code: f.code.clone(),
        vars_template,
    };
    let update_dir = match spec.update.as_str() {
        "good" => {
            let mirror = crate::inputs::debian::resolve_mirror(ctx.mirror.as_deref())?;
            repo::good_update(&mirror, &ctx.cache_root, &tmp.path().join("repo"))
                .await?
                .dir
        }
        d => PathBuf::from(d),
    };
    let case_dir = tmp.path().join("case");
    let cfg = CaseConfig {
        label: format!("{}@upgraded", base.name),
        scenario,
        image: base.clone(),
        machine,
        update: Some(UpdateRepo {
            label: spec.update.clone(),
            dir: update_dir,
        }),
        exclude_bootloader: false,
        restore_bootloader: false,
        dir: case_dir.clone(),
        timings: Timings::default(),
    };
    let r = run_case(&cfg, cancel, None).await?;
    if cancel.is_cancelled() {
        bail!("interrupted while upgrading {}", base.name);
    }
    if r.exit_code != exit_code::GOOD {
        // Keep the evidence where the user can read it.
        let failed = root.join(format!("{}-{key}.failed", base.name));
        let _ = std::fs::remove_dir_all(&failed);
        let _ = std::fs::rename(&case_dir, &failed);
        bail!(
            "the upgraded {} did not boot: {} at stage {} ({}); its results are in {}",
            base.name,
            r.verdict,
            r.stage,
            r.reason,
            failed.display()
        );
    }
    let disk = dir.join("disk.qcow2");
    let vars = dir.join("vars.fd");
    let final_case = dir.join("case");
    // Files move into the final directory's temporary twin, then one rename publishes it.
    let staging = tmp.path().join("final");
    std::fs::create_dir_all(&staging)?;
    std::fs::rename(&r.overlay, staging.join("disk.qcow2"))?;
    std::fs::copy(&r.vars, staging.join("vars.fd"))?;
    std::fs::rename(&case_dir, staging.join("case"))?;
    let (disk_sha256, vars_sha256) = {
        let (a, b) = (staging.join("disk.qcow2"), staging.join("vars.fd"));
        tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
            Ok((
                crate::sys::fsx::hash_file(&a)?.sha256,
                crate::sys::fsx::hash_file(&b)?.sha256,
            ))
        })
        .await??
    };
    let up = UpgradedImage {
        disk,
        disk_sha256,
        vars,
        vars_sha256,
        case_dir: final_case,
        verdict: r.verdict.to_string(),
        key,
        made_at: jiff::Timestamp::now().to_string(),
        made_in_s: crate::engine::qmp::round_ms(t.elapsed().as_secs_f64()),
    };
    write_json_atomic(&staging.join("upgraded.json"), &up)?;
    // Read-only from now on: cells only ever open it through overlays.
    for f in ["disk.qcow2", "vars.fd"] {
        let p = staging.join(f);
        let mut perm = std::fs::metadata(&p)?.permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(&p, perm)?;
    }
    crate::sys::fsx::replace_dir(&staging, &dir, "upgraded image state")?;
    Ok(up)
}

fn load(manifest: &Path) -> Option<UpgradedImage> {
    let up: UpgradedImage = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
    (up.disk.is_file() && up.vars.is_file()).then_some(up)
}

/// Names, sizes and modification times of a directory's files: enough to notice a changed
/// update repository without hashing every package.
fn dir_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        entries.push(format!(
            "{}:{}:{mtime}",
            e.file_name().to_string_lossy(),
            m.len()
        ));
    }
    entries.sort();
    Ok(format!("{}|{}", dir.display(), entries.join(",")))
}
