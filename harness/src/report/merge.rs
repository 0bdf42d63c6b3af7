//! `bootwatch report merge DIR... --out OUT`: shards (or any results directories of one plan)
//! into one results directory, then its reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plan::matrix::model::{CellRecord, MatrixReport, Plan, PlannedCell};

/// Merges results directories of one plan into `out`: every input must have the same `plan_id`;
/// a cell present in two inputs must be identical; `plan.json`, each input's `execution*.json`
/// (renamed `execution-<shard>.json`, `execution-<n>.json` for unsharded ones) and each cell's
/// `cells/<id>/` tree are copied. `out` must not exist or be empty; everything is assembled in
/// a temporary directory next to it and renamed into place only when complete, reports
/// included, so an error leaves nothing behind.
pub fn merge(inputs: &[PathBuf], out: &Path) -> anyhow::Result<MatrixReport> {
    if inputs.is_empty() {
        bail!("nothing to merge: no input directories");
    }
    check_out(out)?;

    // Plans first: refuse to mix matrices before copying anything.
    let mut plans: Vec<Plan> = Vec::new();
    for input in inputs {
        let plan = super::read_plan(input)?;
        if let Some(first) = plans.first()
            && first.plan_id != plan.plan_id
        {
            bail!(
                "{} is plan {} but {} is plan {}: only shards of one matrix plan can be merged",
                inputs[0].display(),
                first.plan_id,
                input.display(),
                plan.plan_id
            );
        }
        plans.push(plan);
    }
    let plan = &plans[0];

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".to_string());
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{base}.tmp-"))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let staging = tmp.path();

    std::fs::copy(inputs[0].join("plan.json"), staging.join("plan.json"))
        .context("copying plan.json")?;
    copy_executions(inputs, &plan.plan_id, staging)?;
    copy_cells(inputs, plan, staging)?;

    let report = super::build(staging)?;
    super::write_all(staging, &report)?;

    check_out(out)?;
    let staging = tmp.keep();
    if let Err(e) = std::fs::rename(&staging, out) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e).with_context(|| format!("renaming the merge into {}", out.display()));
    }
    Ok(report)
}

/// `out` must not exist, or be an empty directory.
fn check_out(out: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", out.display())),
        Ok(m) if m.is_dir() => {
            if std::fs::read_dir(out)?.next().is_some() {
                bail!(
                    "{} is not empty: merge writes into a new or empty directory",
                    out.display()
                );
            }
            Ok(())
        }
        Ok(_) => bail!("{} exists and is not a directory", out.display()),
    }
}

fn copy_executions(inputs: &[PathBuf], plan_id: &str, staging: &Path) -> anyhow::Result<()> {
    let mut unsharded = 0;
    let mut written: HashMap<String, Vec<u8>> = HashMap::new();
    for input in inputs {
        for path in super::execution_files(input)? {
            let execution = super::read_execution(&path, plan_id)?;
            let bytes = std::fs::read(&path)?;
            if written.values().any(|b| *b == bytes) {
                continue; // the same execution reached us twice (an input merged again)
            }
            let stem = match &execution.shard {
                Some(shard) => format!("execution-{}", sanitize(&shard.replace('/', "-of-"))),
                None => {
                    unsharded += 1;
                    format!("execution-{unsharded}")
                }
            };
            let mut name = format!("{stem}.json");
            let mut n = 1;
            while written.contains_key(&name) {
                n += 1;
                name = format!("{stem}-{n}.json");
            }
            std::fs::write(staging.join(&name), &bytes)
                .with_context(|| format!("copying {}", path.display()))?;
            written.insert(name, bytes);
        }
    }
    Ok(())
}

fn copy_cells(inputs: &[PathBuf], plan: &Plan, staging: &Path) -> anyhow::Result<()> {
    let planned: HashMap<&str, &PlannedCell> =
        plan.cells.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut seen: HashMap<String, (CellRecord, &Path)> = HashMap::new();
    let cells_out = staging.join("cells");
    std::fs::create_dir_all(&cells_out)?;
    for input in inputs {
        let cells_dir = input.join("cells");
        if !cells_dir.is_dir() {
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&cells_dir)
            .with_context(|| format!("reading {}", cells_dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(p) = planned.get(id.as_str()) else {
                continue;
            };
            let cell_json = entry.path().join("cell.json");
            if !cell_json.is_file() {
                continue; // started but never finished: nothing to report
            }
            let record = super::read_cell(&cell_json, p)?;
            if let Some((first, from)) = seen.get(&id) {
                if *first != record {
                    bail!(
                        "cell {id} ({}) is in both {} and {} with different results",
                        p.axes.label(),
                        from.display(),
                        input.display()
                    );
                }
                continue;
            }
            copy_tree(&entry.path(), &cells_out.join(&id))?;
            seen.insert(id, (record, input.as_path()));
        }
    }
    Ok(())
}

/// Copies a directory tree (files, directories and symlinks as symlinks).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src)?;
            std::os::unix::fs::symlink(&target, &dst)
                .with_context(|| format!("copying {}", src.display()))?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
