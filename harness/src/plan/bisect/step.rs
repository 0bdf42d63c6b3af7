//! One step of a bisection (and one `bootwatch check`): the fixed part of the machine
//! ([`Machine`]), the image prepared once ([`prepare_image`]), and a step's case run up to
//! `repeat` times ([`run_step`]), each run an ordinary case (`engine::case::check` + `run`) in
//! its own directory, judged into a [`Class`] with the evidence of every run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::search::Class;
use crate::core::event::EventSink;
use crate::core::launch::FirmwareWait;
use crate::core::verdict::{Outcome, Target};
use crate::engine::case::{self, CaseDir, CaseRequest, Finished, ImageDisk, VarsSource};
use crate::engine::record::RunStatus;
use crate::engine::step::Step;
use crate::inputs::images::catalog::ImageFormat;
use crate::inputs::images::{self, Registry, Resolved};
use crate::inputs::providers::{self, ProviderContext, ResolvedFirmware, ResolvedQemu};
use crate::plan::matrix::spec::{ImageChoice, UpgradeSpec, VarsChoice};
use crate::plan::matrix::upgrade::{self, UpgradedImage};

/// Everything about a step's machine but the builds under test.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The image as written (`fixture:hello`, `debian-12-local@upgraded`, ...) and parsed.
    pub image: String,
    pub image_choice: ImageChoice,
    /// `None`: the boot decides on its own (a fixture crashes or powers off).
    pub target: Option<Target>,
    pub timeout: Duration,
    pub silence: Duration,
    pub cpu: String,
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware_wait: FirmwareWait,
    pub vars: VarsChoice,
    /// How `NAME@upgraded` is made (once, cached).
    pub upgrade: UpgradeSpec,
    /// Runs per step; a step is bad when any run fails.
    pub repeat: u32,
}

impl Machine {
    /// The machine's settings for records (`fixed` in `bisect.json`).
    pub fn describe(&self) -> MachineRecord {
        MachineRecord {
            image: self.image.clone(),
            target: self
                .target
                .map_or_else(|| "none".to_string(), |t| t.to_string()),
            timeout_s: self.timeout.as_secs_f64(),
            silence_s: self.silence.as_secs_f64(),
            cpu: self.cpu.clone(),
            smp: self.smp,
            memory_mib: self.memory_mib,
            firmware_wait: self.firmware_wait.as_str().into(),
            vars: match self.vars {
                VarsChoice::Template => "template".into(),
                VarsChoice::Guest => "guest".into(),
            },
            repeat: self.repeat,
            upgrade_update: matches!(self.image_choice, ImageChoice::Upgraded(_))
                .then(|| self.upgrade.update.label()),
        }
    }
}

/// A [`Machine`] as `bisect.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub image: String,
    pub target: String,
    pub timeout_s: f64,
    pub silence_s: f64,
    pub cpu: String,
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware_wait: String,
    pub vars: String,
    pub repeat: u32,
    /// The update that made an `@upgraded` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_update: Option<String>,
}

/// The image every step boots, made once: the same disk for every step (an `@upgraded` image's
/// state after its upgrade, made once and cached), each step through its own overlay.
#[derive(Debug, Clone)]
pub enum PreparedImage {
    Fixture {
        path: PathBuf,
    },
    Image(Box<Resolved>),
    Upgraded {
        base: Box<Resolved>,
        up: Box<UpgradedImage>,
    },
}

/// Fetches, builds or upgrades the machine's image (each a no-op when cached).
pub async fn prepare_image(
    m: &Machine,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<PreparedImage> {
    match &m.image_choice {
        ImageChoice::Fixture(f) => {
            let dir = ctx.cache_root.join("fixtures");
            let path = dir.join(f.image_file_name());
            crate::engine::disk::blocking(move || {
                crate::inputs::fixtures::write_all(&dir)?;
                Ok(())
            })
            .await?;
            Ok(PreparedImage::Fixture { path })
        }
        ImageChoice::Image(name) => Ok(PreparedImage::Image(Box::new(
            resolve_image(name, ctx, cancel, sink).await?,
        ))),
        ImageChoice::Upgraded(name) => {
            let base = resolve_image(name, ctx, cancel, sink).await?;
            let up = upgrade::prepare(&base, &m.upgrade, ctx, cancel, sink).await?;
            Ok(PreparedImage::Upgraded {
                base: Box::new(base),
                up: Box::new(up),
            })
        }
    }
}

/// A catalog image or local recipe by name, fetched or built when needed.
pub async fn resolve_image(
    name: &str,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<Resolved> {
    let registry = Registry::load()?;
    let entry = registry
        .get(name)
        .ok_or_else(|| anyhow!("no image named {name:?} in the catalog or local recipes"))?;
    images::resolve(entry, &ctx.cache_root, ctx.mirror.as_deref(), cancel, sink).await
}

/// Checks that the machine's image names something known (before anything runs).
pub fn check_image(m: &Machine) -> Result<(), String> {
    let Some(name) = m.image_choice.image_name() else {
        return Ok(());
    };
    let registry = Registry::load().map_err(|e| e.to_string())?;
    if registry.get(name).is_none() {
        return Err(format!(
            "no image named {name:?} (from {:?}); `bootwatch images list` shows the known ones",
            m.image
        ));
    }
    Ok(())
}

/// The case one run of a build step is: boot to the machine's target (a fixture through
/// `snapshot=on`, an image through its own overlay of the prepared disk).
pub fn build_case(
    m: &Machine,
    q: &ResolvedQemu,
    f: &ResolvedFirmware,
    img: &PreparedImage,
    name: &str,
    dir: CaseDir,
) -> CaseRequest {
    let steps = vec![Step::Boot {
        until: m.target,
        timeout: m.timeout,
        silence: m.silence,
    }];
    let mut req = machine_case(m, q, f, name, dir, steps);
    match img {
        PreparedImage::Fixture { path } => {
            req.disks.push(path.clone());
            req.snapshot = true;
            req.inputs
                .push(crate::inputs::fixtures::input_record(path, &m.image));
        }
        PreparedImage::Image(r) => {
            req.network = Some(Vec::new());
            req.image = Some(image_disk(r, &r.path, &r.sha256, r.format));
            req.inputs.push(r.input_record());
        }
        PreparedImage::Upgraded { base, up } => {
            up.add_input_records(base, &m.image, m.vars == VarsChoice::Guest, &mut req.inputs);
            req.network = Some(Vec::new());
            req.image = Some(image_disk(
                base,
                &up.disk,
                &up.disk_sha256,
                ImageFormat::Qcow2,
            ));
            if m.vars == VarsChoice::Guest {
                req.vars = VarsSource::Template(up.vars.clone());
            }
        }
    }
    req
}

/// A case on the machine with these builds and steps, without its disks.
pub fn machine_case(
    m: &Machine,
    q: &ResolvedQemu,
    f: &ResolvedFirmware,
    name: &str,
    dir: CaseDir,
    steps: Vec<Step>,
) -> CaseRequest {
    let mut req = CaseRequest::new(name, dir, f.code.clone(), steps);
    req.qemu = q.binary.clone();
    req.qemu_exec = q.exec.clone();
    req.cpu = Some(m.cpu.clone());
    req.smp = m.smp;
    req.memory_mib = m.memory_mib;
    req.firmware_wait = m.firmware_wait;
    if let Some(t) = &f.vars_template {
        req.vars = VarsSource::Template(t.clone());
    }
    // Where the builds came from, for case.json (and a bundle of the bisection).
    req.inputs.push(q.input_record());
    req.inputs.extend(f.input_records());
    req
}

pub fn image_disk(r: &Resolved, base: &Path, sha256: &str, format: ImageFormat) -> ImageDisk {
    ImageDisk {
        name: r.name.clone(),
        base: base.to_path_buf(),
        base_sha256: sha256.to_string(),
        format,
        guest: r.guest.clone(),
        source: r.source.clone(),
    }
}

/// One run of a step, as `bisect.json` and `bootwatch check --json` record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvidence {
    /// 1-based.
    pub n: u32,
    /// The run's case directory (relative to the bisection's directory in `bisect.json`).
    pub dir: String,
    /// `complete`, `error` (bootwatch could not run the guest) or `interrupted`.
    pub status: RunStatus,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The line that decided (an exception banner, a panic, ...), as the console printed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// Its line number in the run's `console.log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// The firmware's release as its banner (or package) says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    pub duration_s: f64,
}

/// How a step went over its runs.
#[derive(Debug, Clone)]
pub struct StepRuns {
    pub class: Class,
    pub runs: Vec<RunEvidence>,
    /// Why the step is undetermined before any run (a build that failed, a case refused).
    pub error: Option<String>,
    /// The step was cut short by SIGINT/SIGTERM: its class means nothing.
    pub interrupted: bool,
    /// Runs that started QEMU.
    pub boots: usize,
}

impl StepRuns {
    /// A step that could not run: undetermined, with the reason.
    pub fn failed(message: String) -> StepRuns {
        StepRuns {
            class: Class::Skip,
            runs: Vec::new(),
            error: Some(message),
            interrupted: false,
            boots: 0,
        }
    }

    /// The outcome to show for the step (a harness error when it could not run).
    pub fn outcome(&self) -> Outcome {
        deciding(&self.runs).map_or_else(
            || Outcome::harness_error(self.error.as_deref().unwrap_or("the step did not run")),
            |r| r.outcome.clone(),
        )
    }

    /// A few words on how the class came about, for progress lines and `bisect.md`.
    pub fn detail(&self, repeat: u32) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let bad = self
            .runs
            .iter()
            .filter(|r| Class::of_exit_code(r.outcome.exit_code) == Class::Bad)
            .count();
        match (repeat, self.class) {
            (1, _) => String::new(),
            (_, Class::Bad) => format!("run {} of up to {repeat} failed", self.runs.len()),
            (_, _) if bad == 0 && self.runs.len() as u32 == repeat => {
                format!("{repeat} of {repeat} runs {}", self.class.as_str())
            }
            _ => format!("{} of {repeat} runs", self.runs.len()),
        }
    }
}

/// The run a step's class stands for: the first bad run, else the first undetermined one,
/// else the first.
pub fn deciding(runs: &[RunEvidence]) -> Option<&RunEvidence> {
    let with = |c: Class| {
        runs.iter()
            .find(|r| Class::of_exit_code(r.outcome.exit_code) == c)
    };
    with(Class::Bad)
        .or_else(|| with(Class::Skip))
        .or(runs.first())
}

/// How one finished case counts: its class, and why when that is not its exit code's.
pub type Judge<'a> = &'a (dyn Fn(&Finished) -> (Class, Option<String>) + Sync);

/// The class of a case by its outcome's exit code (build steps and `bootwatch check`).
pub fn judge_by_exit_code(done: &Finished) -> (Class, Option<String>) {
    (Class::of_exit_code(done.record.outcome.exit_code), None)
}

/// Runs a step's case up to `repeat` times (`make` gives run k's request, 1-based), stopping
/// at the first bad run: the step is bad when any run fails, good when every run is good,
/// otherwise undetermined. `base` makes the recorded directories relative.
pub async fn run_step(
    repeat: u32,
    make: &dyn Fn(u32) -> CaseRequest,
    judge: Judge<'_>,
    base: Option<&Path>,
    f: Option<&ResolvedFirmware>,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> StepRuns {
    let mut out = StepRuns {
        class: Class::Skip,
        runs: Vec::new(),
        error: None,
        interrupted: false,
        boots: 0,
    };
    let mut classes = Vec::new();
    for n in 1..=repeat {
        if cancel.is_cancelled() {
            out.interrupted = true;
            break;
        }
        let t = std::time::Instant::now();
        let checked = match case::check(make(n)) {
            Ok(c) => c,
            Err(e) => {
                out.error = Some(e.0);
                break;
            }
        };
        let done = match case::run(checked, cancel, sink).await {
            Ok(d) => d,
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        };
        out.boots += 1;
        if done.record.status == RunStatus::Interrupted || cancel.is_cancelled() {
            out.interrupted = true;
        }
        let (class, why) = judge(&done);
        let mut ev = evidence(n, &done, base, f, t.elapsed());
        if let Some(why) = why {
            ev.outcome.reason = format!("{why} ({})", ev.outcome.reason);
        }
        out.runs.push(ev);
        classes.push(class);
        if class == Class::Bad || out.interrupted {
            break;
        }
    }
    out.class = if classes.contains(&Class::Bad) {
        Class::Bad
    } else if !out.interrupted
        && out.error.is_none()
        && classes.len() == repeat as usize
        && classes.iter().all(|c| *c == Class::Good)
    {
        Class::Good
    } else {
        Class::Skip
    };
    out
}

/// A step's firmware version for the records: the release its banner names, else for a
/// `source:` build its `git describe` (not the build's one-line summary: read as a Debian version
/// it lost everything after its last `-`), else the upstream part of its Debian package version.
fn firmware_version(
    banner_release: Option<String>,
    source_describe: Option<String>,
    package: Option<&str>,
) -> Option<String> {
    banner_release
        .or(source_describe)
        .or_else(|| package.map(providers::upstream_version))
}

/// A finished case as a run of a step.
fn evidence(
    n: u32,
    done: &Finished,
    base: Option<&Path>,
    f: Option<&ResolvedFirmware>,
    wall: std::time::Duration,
) -> RunEvidence {
    let r = &done.record;
    let last = done.runs.last();
    let finding = last.and_then(|s| s.finding.as_ref());
    let banner = done
        .runs
        .iter()
        .find_map(|s| s.firmware.banner_version.clone());
    let dir = base
        .and_then(|b| done.dir.strip_prefix(b).ok())
        .unwrap_or(&done.dir);
    RunEvidence {
        n,
        dir: dir.display().to_string(),
        status: r.status,
        outcome: r.outcome.clone(),
        exception: finding.map(|f| f.text.trim_end().to_string()),
        evidence_line: finding.map(|f| f.line),
        qemu_version: last.and_then(|s| s.qemu.version.clone()),
        firmware_version: firmware_version(
            banner
                .as_deref()
                .and_then(|v| crate::core::classify::PatternSet::builtin().edk2_release(v)),
            f.and_then(|f| f.source_build.as_ref())
                .and_then(|b| b.version()),
            f.and_then(|f| f.package.as_deref()),
        ),
        duration_s: crate::engine::qmp::round_ms(wall.as_secs_f64()),
    }
}

/// A directory name for a build or a package set: its spelling with anything but letters,
/// digits, `.`, `+` and `-` made `-`, at most 60 characters.
pub fn dir_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_builds_version_is_its_describe_and_a_packages_its_upstream_version() {
        let summary = "edk2 edk2-stable202502-328-gb2db39cefe (b2db39cefe13) ArmVirtQemu RELEASE GCC no-secboot";
        assert_eq!(
            firmware_version(
                None,
                Some("edk2-stable202502-328-gb2db39cefe".into()),
                Some(summary)
            )
            .as_deref(),
            Some("edk2-stable202502-328-gb2db39cefe")
        );
        assert_eq!(
            firmware_version(None, None, Some("2025.02-8+deb13u1")).as_deref(),
            Some("2025.02")
        );
        assert_eq!(
            firmware_version(Some("2026.08".into()), None, Some("2025.02-8")).as_deref(),
            Some("2026.08")
        );
        assert_eq!(firmware_version(None, None, None), None);
    }

    #[test]
    fn labels_are_safe_directory_names() {
        assert_eq!(
            dir_label("debian:2026.08/strictnx"),
            "debian-2026.08-strictnx"
        );
        assert_eq!(dir_label("path:/tmp/../x y"), "path-tmp-..-x-y");
        assert_eq!(dir_label("..."), "");
        assert_eq!(dir_label(&"a".repeat(100)).len(), 60);
        assert_eq!(
            dir_label("shim-signed+bootwatch-extra-a"),
            "shim-signed+bootwatch-extra-a"
        );
    }
}
