//! `explain --try-workarounds`: each workaround the matched families name that bootwatch can do
//! by itself, run as a case on the same prepared disk. The run's disk is never written: each
//! try boots a fresh qcow2 overlay on top of it (plus a copy of the run's vars store), with the
//! workaround applied (the base image's EFI binaries put back, a fw_cfg knob, another QEMU), to
//! the stage after the one that failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Evidence, Explanation};
use crate::core::event::EventSink;
use crate::core::known_bugs::Workaround;
use crate::core::verdict::{Stage, Target};
use crate::engine::case::{self, CaseDir, CaseRequest, VarsSource};
use crate::engine::step::Step;
use crate::inputs::images::catalog::ImageFormat;

/// One workaround as tried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tried {
    pub how: String,
    pub auto: Option<String>,
    /// The families that name it.
    pub families: Vec<String>,
    /// The try's case directory.
    pub dir: Option<PathBuf>,
    pub verdict: Option<String>,
    pub stage: Option<String>,
    /// The boot reached the target stage (the stage after the one that failed).
    pub booted: bool,
    /// The target stage.
    pub target: Option<String>,
    /// Why it was not tried, or why trying it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The workarounds of the matched families (undecided ones too when nothing matched), in order
/// and without repeats.
pub fn candidates(x: &Explanation) -> Vec<(Workaround, Vec<String>)> {
    let mut out: Vec<(Workaround, Vec<String>)> = Vec::new();
    let fams = if x.families.is_empty() {
        &x.undecided
    } else {
        &x.families
    };
    for f in fams {
        for w in &f.workarounds {
            match out.iter_mut().find(|(o, _)| o == w) {
                Some((_, ids)) => ids.push(f.id.clone()),
                None => out.push((w.clone(), vec![f.id.clone()])),
            }
        }
    }
    out
}

/// Tries every automatic workaround of `x`, one case each under `results`.
pub async fn try_all(
    ev: &Evidence,
    x: &Explanation,
    results: &Path,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Vec<Tried> {
    let mut out = Vec::new();
    for (w, families) in candidates(x) {
        let mut t = Tried {
            how: w.how.clone(),
            auto: w.auto.clone(),
            families,
            dir: None,
            verdict: None,
            stage: None,
            booted: false,
            target: None,
            note: None,
        };
        match &w.auto {
            None => t.note = Some("not automatic: a person has to do it".into()),
            Some(auto) => match try_one(ev, x, auto, results, cancel, sink).await {
                Ok((dir, outcome, target)) => {
                    t.booted = outcome.exit_code == 0;
                    t.verdict = Some(outcome.verdict.as_str().into());
                    t.stage = Some(outcome.stage.as_str().into());
                    t.target = Some(target.as_str().into());
                    t.dir = Some(dir);
                }
                Err(e) => t.note = Some(format!("not tried: {e:#}")),
            },
        }
        out.push(t);
    }
    out
}

/// The stage a try must reach: the next one after the failure, at least the kernel.
fn target_after(stage: Stage) -> Target {
    match stage {
        Stage::Kernel | Stage::Userspace | Stage::Login => Target::Login,
        _ => Target::Kernel,
    }
}

async fn try_one(
    ev: &Evidence,
    x: &Explanation,
    auto: &str,
    results: &Path,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<(PathBuf, crate::core::verdict::Outcome, Target)> {
    let r = &ev.result;
    let disk = ev
        .disk
        .clone()
        .or_else(|| ev.raw_disks.first().cloned())
        .ok_or_else(|| anyhow!("the run kept no disk to try it on"))?;
    let code = r
        .firmware
        .code
        .as_ref()
        .map(|c| c.path.clone())
        .filter(|p| p.is_file())
        .ok_or_else(|| anyhow!("the run's firmware code image is gone"))?;
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".explain-")
        .tempdir_in(results)
        .context("a scratch directory for the try's disk")?;
    let top = scratch.path().join("disk.qcow2");
    let format = if disk_is_qcow2(&disk)? {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    };
    crate::engine::disk::make_overlay(&disk, format, &top).await?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    // The run's QEMU as it ran: a provider's build (a Debian tree runs through its own loader
    // and libraries) is resolved again; a host or path binary runs as it is.
    let provided = ev
        .case
        .as_ref()
        .and_then(|c| c.inputs.iter().find(|i| i.role == "qemu"))
        .and_then(|i| i.provider.clone())
        .filter(|p| p != "host" && !p.starts_with("path:"));
    let (mut qemu, mut qemu_exec) = match provided {
        Some(spec) => resolve_qemu(&spec, cancel).await?,
        None => (
            r.qemu.binary.clone(),
            crate::core::launch::QemuExec::default(),
        ),
    };
    let name = auto.replace([':', '/', '='], "-");
    if auto == "restore-bootloader" {
        let base = super::bottom_of_chain(&disk).await?;
        if base == disk {
            bail!("the disk has no base image to take the original EFI binaries from");
        }
        let restored = crate::engine::disk::restore_bootloader(&base, &top).await?;
        if restored.is_empty() {
            bail!("the ESP's EFI binaries are already the base image's");
        }
    } else if let Some(knob) = auto.strip_prefix("fw-cfg:") {
        let (k, v) = knob
            .split_once('=')
            .ok_or_else(|| anyhow!("fw-cfg workaround {knob:?} is not NAME=VALUE"))?;
        extra.push("-fw_cfg".into());
        extra.push(format!("name={k},string={v}").into());
    } else if let Some(spec) = auto.strip_prefix("qemu:") {
        (qemu, qemu_exec) = resolve_qemu(spec, cancel).await?;
    } else {
        bail!("unknown workaround {auto:?}");
    }
    let target = target_after(x.outcome.stage);
    let steps = vec![Step::Boot {
        until: Some(target),
        timeout: Duration::from_secs(600),
        silence: Duration::from_secs(180),
    }];
    let mut req = CaseRequest::new(
        &format!("explain-{name}"),
        CaseDir::Under(results.to_path_buf()),
        code,
        steps,
    );
    req.qemu = qemu;
    req.qemu_exec = qemu_exec;
    req.machine = r.machine.clone();
    req.cpu = Some(r.cpu.clone());
    req.accel = r.accelerator.parse().ok();
    req.smp = r.smp;
    req.memory_mib = r.memory_mib;
    req.vars = match &ev.vars {
        Some(v) => VarsSource::Template(v.clone()),
        None => VarsSource::Beside,
    };
    req.disks = vec![top.clone()];
    req.extra_args = extra;
    let checked = case::check(req).map_err(|e| anyhow!(e.0))?;
    let finished = case::run(checked, cancel, sink).await?;
    drop(scratch);
    Ok((finished.dir, finished.record.outcome, target))
}

fn disk_is_qcow2(p: &Path) -> Result<bool> {
    use std::io::Read;
    let mut h = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut h))
        .with_context(|| format!("reading {}", p.display()))?;
    Ok(&h == b"QFI\xfb")
}

/// A QEMU provider spec resolved to the binary and how to run it.
async fn resolve_qemu(
    spec: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<(std::path::PathBuf, crate::core::launch::QemuExec)> {
    let p: crate::inputs::providers::QemuProvider = spec.parse().map_err(|e: String| anyhow!(e))?;
    let ctx = crate::inputs::providers::ProviderContext {
        mirror: None,
        cache_root: crate::sys::fsx::cache_root()?,
    };
    let q = crate::inputs::providers::resolve_qemu(&p, &ctx, cancel)
        .await
        .with_context(|| format!("resolving the QEMU {spec}"))?;
    Ok((q.binary, q.exec))
}
