//! An image's state after its upgrade, for the matrix's `NAME@upgraded` cells: the upgrade
//! scenario runs once on the image as an ordinary case (with the matrix's `[upgrade]` update and
//! builds), and the disk (a qcow2 overlay over the base image) and firmware variable store it left
//! are cached under `<cache>/upgraded/<image>-<key>/`, keyed by everything that went into them.
//! Cells boot that disk through their own overlays, so it is never written again.
//!
//! The state is kept whatever the guest did after the upgrade: an update that leaves the guest
//! unable to boot is exactly what the cells exist to show, so the cells are judged on it (its
//! outcome is recorded here too). Only an upgrade bootwatch could not run is an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::core::event::EventSink;
use crate::core::verdict::Outcome;
use crate::engine::case::{self, CaseDir, CaseRequest, ImageDisk, VarsSource};
use crate::engine::record::RunStatus;
use crate::inputs::images::Resolved;
use crate::inputs::providers::{self, ProviderContext};
use crate::plan::demo::UPGRADE_REBOOT;
use crate::plan::matrix::spec::UpgradeSpec;
use crate::plan::scenario::Scenario;
use crate::plan::updates;
use crate::sys::fsx;

/// Bump when the way the upgraded state is made changes (invalidates the cache).
const UPGRADE_FORMAT: &str = "matrix-upgrade/3";

/// The upgraded disk and store (both read-only inputs to the cells).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpgradedImage {
    pub disk: PathBuf,
    pub disk_sha256: String,
    pub vars: PathBuf,
    pub vars_sha256: String,
    /// The upgrade's own results (case.json, consoles), kept beside the disk.
    pub case_dir: PathBuf,
    /// How the boot after the upgrade went (the cells judge the state on their own).
    pub outcome: Outcome,
    pub key: String,
    pub made_at: String,
    pub made_in_s: f64,
    /// Versions of the boot-chain packages after the upgrade (from its package list).
    #[serde(default)]
    pub boot_chain: std::collections::BTreeMap<String, String>,
}

impl UpgradedImage {
    /// The records `case.json` keeps of a case that boots this state (`spelling`:
    /// `NAME@upgraded`): the disk as its `image`, and with `guest_vars` the store the guest
    /// left, in place of the firmware's vars template.
    pub fn add_input_records(
        &self,
        base: &Resolved,
        spelling: &str,
        guest_vars: bool,
        inputs: &mut Vec<crate::engine::record::InputRecord>,
    ) {
        let mut r = crate::engine::record::InputRecord {
            path: self.disk.clone(),
            sha256: Some(self.disk_sha256.clone()),
            provider: Some(spelling.to_string()),
            note: format!(
                "{} after its upgrade (made by bootwatch, key {}; its case: {})",
                base.name,
                self.key,
                self.case_dir.display()
            ),
            ..base.input_record()
        };
        r.role = "image".into();
        inputs.push(r);
        if guest_vars {
            inputs.retain(|i| i.role != "vars-template");
            let mut v = crate::engine::record::InputRecord::new("vars-template", &self.vars);
            v.sha256 = Some(self.vars_sha256.clone());
            v.provider = Some(format!("{spelling}:vars"));
            v.note = "the variable store the guest left after its upgrade".into();
            inputs.push(v);
        }
    }
}

/// Returns the cached upgraded state of `base`, or makes it (one case, minutes under TCG).
pub async fn prepare(
    base: &Resolved,
    spec: &UpgradeSpec,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<UpgradedImage> {
    let (scenario_text, scenario_name) = match &spec.scenario {
        Some(p) => (
            fsx::read_input(p, fsx::INPUT_LIMIT)
                .with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            UPGRADE_REBOOT.to_string(),
            "scenarios/upgrade-reboot.toml".to_string(),
        ),
    };
    let scenario = Scenario::parse(&scenario_text, &scenario_name)?;
    let mut h = Sha256::new();
    for part in [
        UPGRADE_FORMAT,
        &base.sha256,
        &scenario_text,
        &spec.update.key(&base.name)?,
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
    let _lock =
        fsx::FileLock::acquire_async(&root.join(format!(".{}-{key}.lock", base.name))).await?;
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
    let update = updates::make(
        &spec.update,
        &base.name,
        ctx.mirror.as_deref(),
        &ctx.cache_root,
        &tmp.path().join("repo"),
    )
    .await?;
    let case_dir = tmp.path().join("case");
    let mut req = CaseRequest::new(
        &format!("{}@upgraded", base.name),
        CaseDir::Exactly(case_dir.clone()),
        f.code.clone(),
        scenario.steps.clone(),
    );
    req.qemu = q.binary.clone();
    req.qemu_exec = q.exec.clone();
    req.cpu = Some(crate::plan::matrix::spec::DEFAULT_CPU.into());
    req.smp = 2;
    req.memory_mib = 2048;
    req.vars = VarsSource::Template(vars_template);
    req.image = Some(ImageDisk {
        name: base.name.clone(),
        base: base.path.clone(),
        base_sha256: base.sha256.clone(),
        format: base.format,
        guest: base.guest.clone(),
        source: base.source.clone(),
    });
    req.keep_disks = true;
    req.network = Some(Vec::new());
    req.scenario = Some(scenario.name.clone());
    req.update = Some(update);
    let checked = case::check(req)?;
    let done = case::run(
        checked,
        cancel,
        &sink.scoped(&format!("{}@upgraded", base.name)),
    )
    .await?;
    let r = &done.record;
    if cancel.is_cancelled() || r.status == RunStatus::Interrupted {
        bail!("interrupted while upgrading {}", base.name);
    }
    if r.status == RunStatus::Error {
        // Keep the evidence where the user can read it.
        let failed = root.join(format!("{}-{key}.failed", base.name));
        let _ = std::fs::remove_dir_all(&failed);
        let _ = std::fs::rename(&case_dir, &failed);
        bail!(
            "the upgrade of {} could not be made ({}); its results are in {}",
            base.name,
            r.outcome.reason,
            failed.display()
        );
    }
    let (Some(overlay), Some(vars)) = (
        r.provision.as_ref().map(|p| p.overlay.clone()),
        r.vars.clone(),
    ) else {
        bail!(
            "the upgrade case of {} left no disk or vars store",
            base.name
        );
    };
    let outcome = r.outcome.clone();
    let boot_chain = r
        .packages
        .get("after")
        .map(|after| {
            after
                .iter()
                .filter(|(name, _)| {
                    base.guest.bootloader_packages.contains(name)
                        || crate::engine::guest::is_boot_chain_package(name)
                })
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if r.login_state
        .as_ref()
        .is_some_and(|l| l.action == "resumed")
    {
        // Started from a saved login state: its disk is the overlay's backing file. The upgraded
        // disk becomes an input of its own, an overlay of the base image alone.
        let qi = crate::inputs::images::overlay::qemu_img()?;
        crate::inputs::images::overlay::rebase(&qi, &overlay, &base.path, base.format)
            .await
            .with_context(|| {
                format!(
                    "rebasing {} onto {}",
                    overlay.display(),
                    base.path.display()
                )
            })?;
    }
    // Files move into the final directory's temporary twin, then one rename publishes it.
    let staging = tmp.path().join("final");
    std::fs::create_dir_all(&staging)?;
    std::fs::rename(&overlay, staging.join("disk.qcow2"))?;
    std::fs::rename(&vars, staging.join("vars.fd"))?;
    std::fs::rename(&case_dir, staging.join("case"))?;
    let (disk_sha256, vars_sha256) = {
        let (a, b) = (staging.join("disk.qcow2"), staging.join("vars.fd"));
        crate::engine::disk::blocking(move || {
            Ok((fsx::hash_file(&a)?.sha256, fsx::hash_file(&b)?.sha256))
        })
        .await?
    };
    let up = UpgradedImage {
        disk: dir.join("disk.qcow2"),
        disk_sha256,
        vars: dir.join("vars.fd"),
        vars_sha256,
        case_dir: dir.join("case"),
        outcome,
        key,
        made_at: jiff::Timestamp::now().to_string(),
        made_in_s: crate::engine::qmp::round_ms(t.elapsed().as_secs_f64()),
        boot_chain,
    };
    fsx::write_json_atomic(&staging.join("upgraded.json"), &up)?;
    // Read-only from now on: cells only ever open it through overlays.
    for f in ["disk.qcow2", "vars.fd"] {
        let p = staging.join(f);
        let mut perm = std::fs::metadata(&p)?.permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(&p, perm)?;
    }
    fsx::replace_dir(&staging, &dir, "upgraded image state")?;
    Ok(up)
}

fn load(manifest: &Path) -> Option<UpgradedImage> {
    let up: UpgradedImage = fsx::read_json(manifest)?;
    (up.disk.is_file() && up.vars.is_file()).then_some(up)
}
