//! A run's evidence, as its records left it: which directory holds what (a case directory, a
//! session directory, a matrix cell, or a directory holding one of those, such as a bundle),
//! which session's boot failed, and where its disk, base image and vars store are now.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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
}

/// Finds and reads the evidence under `path`: a case directory (`case.json`), a session
/// directory (`result.json`), a matrix cell (`cell.json`: its first failing run), or a
/// directory holding exactly one of those one level down (a bundle).
pub fn load(path: &Path) -> Result<Evidence> {
    let path = path
        .canonicalize()
        .with_context(|| format!("{}: no such run, cell or bundle", path.display()))?;
    if !path.is_dir() {
        bail!(
            "{}: not a directory (a run's case directory, a matrix cell or a bundle)",
            path.display()
        );
    }
    if path.join("cell.json").is_file() {
        return load_cell(&path);
    }
    if path.join("case.json").is_file() || path.join("result.json").is_file() {
        return load_run(&path, None);
    }
    let inner: Vec<PathBuf> = std::fs::read_dir(&path)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && ["case.json", "result.json", "cell.json"]
                    .iter()
                    .any(|f| p.join(f).is_file())
        })
        .collect();
    match inner.as_slice() {
        [one] => load(one),
        [] => bail!(
            "{}: no case.json, result.json or cell.json here or one level down",
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
    let run_dir = dir.join(format!("run-{}", run.n));
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
    let raw_disks = result
        .disks
        .iter()
        .map(|d| d.path.clone())
        .filter(|p| !image_disks.contains(&p.as_path()) && p.is_file())
        .filter(|p| p.file_name().is_none_or(|n| n != "seed.img"))
        .collect();
    Ok(Evidence {
        dir: dir.to_path_buf(),
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
