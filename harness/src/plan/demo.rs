//! The embedded default: the local Debian image, `upgrade-reboot` with a good and a bad
//! bootloader update served hermetically, and the restore-bootloader workaround after the bad
//! one. Returns rows; the CLI prints them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::verdict::{Stage, Verdict};
use crate::engine::runner::{CaseConfig, CaseResult, MachineSpec, UpdateRepo, run_case};
use crate::engine::session::{SessionEvent, Timings};
use crate::inputs::images::{self, Entry, Registry, debian_build};
use crate::inputs::repo;
use crate::plan::scenario::Scenario;

/// The scenario the demo runs, as shipped.
pub const UPGRADE_REBOOT: &str = include_str!("../../../scenarios/upgrade-reboot.toml");
pub const DEMO_IMAGE: &str = "debian-12-local";

/// One line of the demo's table (and one object of `demo --json`).
#[derive(Debug, Clone, Serialize)]
pub struct DemoRow {
    pub case: String,
    pub scenario: String,
    pub update: String,
    pub verdict: Verdict,
    pub stage: Stage,
    pub before_grub: bool,
    pub time_to_verdict_s: Option<f64>,
    pub suspects: Vec<String>,
    /// Wall time of the case.
    pub wall_s: f64,
    pub results: PathBuf,
}

fn row(case: &str, update: &str, r: &CaseResult, wall_s: f64, dir: &Path) -> DemoRow {
    DemoRow {
        case: case.into(),
        scenario: r.scenario.clone(),
        update: update.into(),
        verdict: r.verdict,
        stage: r.stage,
        before_grub: r.before_grub,
        time_to_verdict_s: r.time_to_verdict_s,
        suspects: r.suspects.clone(),
        wall_s: crate::engine::qmp::round_ms(wall_s),
        results: dir.to_path_buf(),
    }
}

/// Runs the three cases. `results` is the directory that gets `good-update/`, `bad-update/` and
/// the repositories.
pub async fn run_demo(
    results: &Path,
    machine: MachineSpec,
    mirror: Option<&str>,
    cancel: &CancellationToken,
    ui: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> anyhow::Result<Vec<DemoRow>> {
    let registry = Registry::builtin();
    let Some(Entry::Local(local)) = registry.get(DEMO_IMAGE) else {
        anyhow::bail!("{DEMO_IMAGE} is not a local recipe");
    };
    let cache = crate::sys::fsx::cache_root()?;
    let image = images::resolve(Entry::Local(local), &cache, mirror, cancel, None).await?;
    let built = debian_build::find_cached(&local.recipe, &cache)?
        .ok_or_else(|| anyhow::anyhow!("{DEMO_IMAGE} was built but is not in the cache"))?;
    let shim = built
        .manifest
        .boot_chain
        .get("shim-signed")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{DEMO_IMAGE} has no shim-signed package"))?;
    let scenario = Scenario::parse(UPGRADE_REBOOT, "scenarios/upgrade-reboot.toml")?;
    std::fs::create_dir_all(results)?;
    let mirror = crate::inputs::debian::resolve_mirror(mirror)?;
    let good = repo::good_update(&mirror, &cache, &results.join("repos/good")).await?;
    let bad = repo::bad_update(&results.join("repos/bad"), &shim)?;

    let mut rows = Vec::new();
    let case = |label: &str, update: UpdateRepo, restore: bool| CaseConfig {
        label: label.into(),
        scenario: scenario.clone(),
        image: image.clone(),
        machine: machine.clone(),
        update: Some(update),
        exclude_bootloader: false,
        restore_bootloader: restore,
        dir: results.join(label),
        timings: Timings::default(),
    };
    let t = Instant::now();
    let g = run_case(
        &case(
            "good-update",
            UpdateRepo {
                label: "good-update".into(),
                dir: good.dir,
            },
            false,
        ),
        cancel,
        ui.clone(),
    )
    .await?;
    rows.push(row(
        "good-update",
        "good-update",
        &g,
        t.elapsed().as_secs_f64(),
        &results.join("good-update"),
    ));
    if cancel.is_cancelled() {
        return Ok(rows);
    }
    let t = Instant::now();
    let dir = results.join("bad-update");
    let b = run_case(
        &case(
            "bad-update",
            UpdateRepo {
                label: "bad-update".into(),
                dir: bad.dir,
            },
            true,
        ),
        cancel,
        ui,
    )
    .await?;
    let wall = t.elapsed().as_secs_f64();
    // The bad update's own verdict is that of the last boot of the first session; the
    // workaround's is the case's final verdict (the boot after the offline repair).
    let first = b.boots.iter().rev().find(|v| v.session == 1);
    let mut bad_row = row("bad-update", "bad-update", &b, wall, &dir);
    if let Some(v) = first {
        bad_row.verdict = v.verdict;
        bad_row.stage = v.stage;
        bad_row.before_grub = v.before_grub;
        bad_row.time_to_verdict_s = v.time_to_verdict_s;
    }
    let restore_wall = b.restore.as_ref().map_or(0.0, |r| r.duration_s);
    rows.push(bad_row);
    if b.restore.is_some() {
        let mut r = row(
            "bad-update+restore-bootloader",
            "bad-update",
            &b,
            restore_wall,
            &dir,
        );
        if let Some(v) = b.boots.iter().rev().find(|v| v.session == 2) {
            r.wall_s =
                crate::engine::qmp::round_ms(restore_wall + v.time_to_verdict_s.unwrap_or(0.0));
        }
        rows.push(r);
    }
    Ok(rows)
}

/// Whether the rows show what the demo exists to show.
pub fn as_expected(rows: &[DemoRow]) -> bool {
    let get = |c: &str| rows.iter().find(|r| r.case == c);
    matches!(get("good-update"), Some(r) if r.verdict == Verdict::Reached)
        && matches!(get("bad-update"), Some(r) if r.verdict == Verdict::SyncException && r.before_grub && !r.suspects.is_empty())
        && matches!(get("bad-update+restore-bootloader"), Some(r) if r.verdict == Verdict::Reached)
}
