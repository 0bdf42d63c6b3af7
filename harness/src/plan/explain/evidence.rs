//! A run's evidence, as its records left it: which directory holds what (a case directory, a
//! session directory, a matrix cell, a bundle unpacked or as its `.tar.gz`, or a directory
//! holding one of those), which session's boot failed, and where its disk, base image and vars
//! store are now.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use crate::engine::record::{CaseRecord, RunResult};
use crate::plan::matrix::model::CellRecord;

/// What `explain` and `inspect chain` read of a run.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The case directory (where `case.json` is; a session's directory when there is none).
    pub dir: PathBuf,
    pub case: Option<CaseRecord>,
    /// The session whose boot is explained: the last one that failed (else the last one).
    pub result: RunResult,
    pub session_dir: PathBuf,
    pub cell: Option<CellRecord>,
    /// The guest's disk as the run left it (its overlay), when it still exists.
    pub disk: Option<PathBuf>,
    /// The image the disk was made from (the bottom of its backing chain is found later).
    pub base: Option<PathBuf>,
    pub vars: Option<PathBuf>,
    /// Disks booted as they are (not through an image overlay): fixtures, `--disk` images.
    pub raw_disks: Vec<PathBuf>,
    /// The case that made the image the run booted, when it is a matrix's `@upgraded` state
    /// (its `upgraded.json` beside the disk): the upgrade's package diff and log.
    pub upgrade: Option<CaseRecord>,
    /// Where the run is, as the user named it (for a bundle's archive: `BUNDLE.tar.gz/runs/run-1`;
    /// `dir` is then in a private directory the archive was unpacked into).
    pub shown: PathBuf,
    /// The evidence comes from a bundle (`bundle.json`): its paths are redacted and it carries
    /// no disks or vars stores.
    pub from_bundle: bool,
    /// The private directory a bundle's archive was unpacked into; removed when the last clone
    /// of the evidence goes.
    pub unpacked: Option<Arc<tempfile::TempDir>>,
}

/// Finds and reads the evidence under `path`: a case directory (`case.json`), a session
/// directory (`result.json`), a matrix cell (`cell.json`: its first failing run), a bundle
/// (`bundle.json`: a cell bundle's first failing run, else its primary run), a bundle's
/// `.tar.gz` (checked against its `bundle.json` and unpacked into a private directory), or a
/// directory holding exactly one of those one level down.
pub fn load(path: &Path) -> Result<Evidence> {
    let path = path
        .canonicalize()
        .with_context(|| format!("{}: no such run, cell or bundle", path.display()))?;
    if path.is_file() {
        return load_archive(&path);
    }
    load_dir(&path)
}

/// The records a directory of evidence is known by.
const RECORDS: [&str; 4] = ["case.json", "result.json", "cell.json", "bundle.json"];

fn load_dir(path: &Path) -> Result<Evidence> {
    if !path.is_dir() {
        bail!(
            "{}: not a directory or a bundle (a run's case directory, a matrix cell, a bundle or its .tar.gz)",
            path.display()
        );
    }
    if path.join("bundle.json").is_file() {
        return load_bundle(path);
    }
    if path.join("cell.json").is_file() {
        return load_cell(path);
    }
    if path.join("case.json").is_file() || path.join("result.json").is_file() {
        return load_run(path, None);
    }
    let inner: Vec<PathBuf> = std::fs::read_dir(path)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && RECORDS.iter().any(|f| p.join(f).is_file()))
        .collect();
    match inner.as_slice() {
        [one] => load_dir(one),
        [] => bail!(
            "{}: no case.json, result.json, cell.json or bundle.json here or one level down",
            path.display()
        ),
        many => bail!(
            "{}: holds {} runs; name one of them ({})",
            path.display(),
            many.len(),
            many.iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A bundle's `.tar.gz`: its files checked against `bundle.json` (as `bootwatch replay` does),
/// written into a private directory, and read from there.
fn load_archive(archive: &Path) -> Result<Evidence> {
    let opened = crate::report::bundle::open(archive).with_context(|| {
        format!(
            "{}: not a bundle (a run, cell or bundle directory, or a bundle's .tar.gz)",
            archive.display()
        )
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("bootwatch-explain-")
        .tempdir()
        .context("a private directory to unpack the bundle into")?;
    // Only the files bundle.json lists (and checked), each a plain relative path.
    for name in opened
        .record
        .files
        .keys()
        .map(String::as_str)
        .chain(["bundle.json"])
    {
        let rel = Path::new(name);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!(
                "{}: {name:?} is not a plain relative path",
                archive.display()
            );
        }
        let bytes = opened
            .files
            .get(name)
            .ok_or_else(|| anyhow!("{}: {name} is missing", archive.display()))?;
        let to = tmp.path().join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
    }
    let mut ev = load_bundle(tmp.path())?;
    ev.shown = archive.join(ev.dir.strip_prefix(tmp.path()).unwrap_or(&ev.dir));
    ev.unpacked = Some(Arc::new(tmp));
    Ok(ev)
}

/// An unpacked bundle: a cell's first failing run (as for a matrix cell), else the run replay
/// boots (`primary_run`).
fn load_bundle(dir: &Path) -> Result<Evidence> {
    let record: crate::report::bundle::BundleRecord = read(&dir.join("bundle.json"))?;
    let mut ev = if dir.join("cell.json").is_file() {
        load_cell(dir)?
    } else {
        let rel = Path::new(&record.primary_run);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!(
                "{}: primary_run {:?} is not a path inside the bundle",
                dir.join("bundle.json").display(),
                record.primary_run
            );
        }
        load_run(&dir.join(rel), None)?
    };
    ev.from_bundle = true;
    Ok(ev)
}

/// The file an input record names, on this machine: at its recorded path (`~` as this user's
/// home) with the recorded sha256.
fn same_file(i: &crate::engine::record::InputRecord) -> Option<PathBuf> {
    let p = crate::plan::replay::expand_home(&i.path);
    let want = i.sha256.as_deref()?;
    (p.is_file() && crate::engine::record::FileInfo::of(&p).ok()?.sha256 == want).then_some(p)
}

fn read<T: for<'de> serde::Deserialize<'de>>(p: &Path) -> Result<T> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a valid record", p.display()))
}

fn load_cell(dir: &Path) -> Result<Evidence> {
    let cell: CellRecord = read(&dir.join("cell.json"))?;
    let run = cell
        .runs
        .iter()
        .find(|r| r.outcome.exit_code == 1)
        .or(cell.runs.last())
        .with_context(|| format!("{}: the cell has no run", dir.display()))?;
    // A matrix keeps a cell's runs beside cell.json; a bundle under runs/.
    let name = format!("run-{}", run.n);
    let run_dir = [dir.join(&name), dir.join("runs").join(&name)]
        .into_iter()
        .find(|d| d.join("case.json").is_file() || d.join("result.json").is_file())
        .with_context(|| {
            format!(
                "{}: the cell's {name} is neither beside cell.json nor under runs/",
                dir.display()
            )
        })?;
    load_run(&run_dir, Some(cell))
}

fn load_run(dir: &Path, cell: Option<CellRecord>) -> Result<Evidence> {
    let case: Option<CaseRecord> = if dir.join("case.json").is_file() {
        Some(read(&dir.join("case.json"))?)
    } else {
        None
    };
    // The session to explain: the last judged boot that failed, else the case's last.
    let session = case.as_ref().map_or(1, |c| {
        c.boots
            .iter()
            .rev()
            .find(|b| b.outcome.exit_code == 1)
            .or(c.boots.last())
            .map_or(1, |b| b.session)
    });
    let session_dir = case
        .as_ref()
        .and_then(|c| c.sessions.get(session.saturating_sub(1)))
        .map_or_else(|| dir.to_path_buf(), |s| dir.join(&s.dir));
    let result: RunResult = read(&session_dir.join("result.json"))?;
    let provision = case
        .as_ref()
        .and_then(|c| c.provision.clone())
        .or_else(|| result.provision.clone());
    let exists = |p: &Path| p.is_file().then(|| p.to_path_buf());
    // An image's upgraded state keeps its case next to the disk it made (`../disk.qcow2`).
    let upgraded: Option<serde_json::Value> = dir
        .parent()
        .map(|p| p.join("upgraded.json"))
        .filter(|p| p.is_file())
        .and_then(|p| read(&p).ok());
    let upgraded_path = |key: &str| {
        upgraded
            .as_ref()
            .and_then(|u| u[key].as_str())
            .map(PathBuf::from)
            .and_then(|p| exists(&p))
    };
    // A workaround that changed the disk after the failure left the failed disk beside it.
    let failed_disk = case
        .as_ref()
        .and_then(|c| c.restore.as_ref())
        .and_then(|r| r.failed_disk.as_deref().and_then(exists))
        .or_else(|| exists(&dir.join(crate::engine::record::FAILED_DISK_NAME)));
    let disk = failed_disk
        .or_else(|| provision.as_ref().and_then(|p| exists(&p.overlay)))
        .or_else(|| exists(&dir.join("overlay.qcow2")))
        .or_else(|| upgraded_path("disk"))
        // A run that did not keep its overlay booted its base unchanged until the crash.
        .or_else(|| provision.as_ref().and_then(|p| exists(&p.base)));
    let base = provision.as_ref().and_then(|p| exists(&p.base));
    let vars = case
        .as_ref()
        .and_then(|c| c.vars.as_deref().and_then(exists))
        .or_else(|| exists(&dir.join("vars.fd")))
        .or_else(|| result.firmware.vars.as_ref().and_then(|v| exists(&v.path)))
        .or_else(|| upgraded_path("vars"))
        // The run's own copy went with it; until the firmware writes it, it is its template.
        .or_else(|| {
            result
                .firmware
                .vars_template
                .as_ref()
                .and_then(|v| exists(&v.path))
        });
    let image_disks: Vec<&Path> = provision.iter().map(|p| p.overlay.as_path()).collect();
    let mut raw_disks: Vec<PathBuf> = result
        .disks
        .iter()
        .map(|d| d.path.clone())
        .filter(|p| !image_disks.contains(&p.as_path()) && p.is_file())
        .filter(|p| p.file_name().is_none_or(|n| n != "seed.img"))
        .collect();
    let (mut disk, mut base) = (disk, base);
    if disk.is_none() && raw_disks.is_empty() {
        // A bundle's records name the inputs by redacted paths (`~/...`): the same files may be
        // on this machine (the same bytes: checked by sha256).
        let inputs = case
            .as_ref()
            .map(|c| c.inputs.as_slice())
            .unwrap_or_default();
        raw_disks = inputs
            .iter()
            .filter(|i| i.role == "disk")
            .filter_map(same_file)
            .collect();
        // An image is what the run booted only when nothing ran in the guest before the boot.
        let boot_only = case
            .as_ref()
            .is_some_and(|c| c.steps.iter().all(|s| s.step == "boot"));
        if boot_only
            && let Some(img) = inputs
                .iter()
                .filter(|i| i.role == "image")
                .find_map(same_file)
        {
            disk = Some(img.clone());
            base = Some(img);
        }
    }
    // An `@upgraded` image (a matrix cell's): the case that upgraded it is beside it.
    let upgrade = provision
        .as_ref()
        .and_then(|p| p.base.parent())
        .map(|d| d.join("upgraded.json"))
        .filter(|p| p.is_file())
        .and_then(|p| read::<crate::plan::matrix::upgrade::UpgradedImage>(&p).ok())
        .and_then(|u| read::<CaseRecord>(&u.case_dir.join("case.json")).ok());
    Ok(Evidence {
        dir: dir.to_path_buf(),
        shown: dir.to_path_buf(),
        upgrade,
        from_bundle: false,
        unpacked: None,
        case,
        result,
        session_dir,
        cell,
        disk,
        base,
        vars,
        raw_disks,
    })
}
