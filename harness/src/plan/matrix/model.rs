//! The matrix's file formats: `plan.json` (what a matrix run is asked to do), `cells/<id>/cell.json`
//! (what one cell did, written by the executor when the cell ends), `execution.json` (one run of
//! `bootwatch matrix`, sharded or not) and `matrix.json` (the report, built only from those files,
//! so a merge of shards and an unsharded run produce the same report).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::verdict::{Outcome, Verdict};

pub const PLAN_SCHEMA: &str = "bootwatch.matrix-plan/1";
pub const CELL_SCHEMA: &str = "bootwatch.cell/1";
pub const EXECUTION_SCHEMA: &str = "bootwatch.matrix-execution/1";
pub const MATRIX_SCHEMA: &str = "bootwatch.matrix/1";

/// The axes, in their fixed order. Every cell has one value on each.
pub const AXES: [&str; 5] = ["image", "qemu", "firmware", "cpu", "vars"];

/// One cell's position: one value per axis, spelled as in the matrix file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Axes {
    /// `fixture:crash`, `debian-12-local`, `debian-12-local@upgraded`, a catalog name, ...
    pub image: String,
    /// A QEMU provider: `host`, `debian:trixie`, `path:/opt/qemu/bin/qemu-system-aarch64`, ...
    pub qemu: String,
    /// A firmware provider: `host`, `debian:2025.02/strictnx`, `path:/x/CODE.fd`, ...
    pub firmware: String,
    /// QEMU `-cpu` model.
    pub cpu: String,
    /// The firmware variable store: `template` (fresh from the firmware's template) or `guest`
    /// (the store the guest left behind after its upgrade; only for `@upgraded` images).
    pub vars: String,
}

impl Axes {
    pub fn get(&self, axis: &str) -> Option<&str> {
        Some(match axis {
            "image" => &self.image,
            "qemu" => &self.qemu,
            "firmware" => &self.firmware,
            "cpu" => &self.cpu,
            "vars" => &self.vars,
            _ => return None,
        })
    }

    /// `image=...;qemu=...;...` in the fixed axis order: the text a cell id is a hash of.
    pub fn canonical(&self) -> String {
        AXES.iter()
            .map(|a| format!("{a}={}", self.get(a).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Short human label: the values joined with " · ".
    pub fn label(&self) -> String {
        AXES.iter()
            .map(|a| self.get(a).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// An axis and its values in the order the matrix file gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axis {
    pub name: String,
    pub values: Vec<String>,
}

/// A cell as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCell {
    /// Stable: a hash of `axes.canonical()` (same inputs, same id, in any run or shard).
    pub id: String,
    /// Position in the unsharded plan (the report's order).
    pub index: usize,
    pub axes: Axes,
}

/// `plan.json`: the whole matrix (every cell, whichever shard runs it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub schema: String,
    pub name: String,
    pub description: String,
    /// The matrix file as given.
    pub matrix_file: String,
    /// Identifies the plan: a hash of the cells, target, timeouts and repeat count. Shards of the
    /// same matrix have the same `plan_id`; merge refuses to mix plans.
    pub plan_id: String,
    pub axes: Vec<Axis>,
    /// `grub`, `kernel` or `login`.
    pub target: String,
    pub timeout_s: f64,
    pub repeat: u32,
    pub cells: Vec<PlannedCell>,
}

/// How one cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellStatus {
    /// All its runs finished (whatever the guest did).
    Done,
    /// bootwatch could not run it (provider, image or QEMU start failure): `error` says why.
    Error,
    /// Stopped by Ctrl-C / SIGTERM before it finished.
    Interrupted,
    /// Not run: in another shard, or the matrix stopped before it started.
    NotRun,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Done => "done",
            CellStatus::Error => "error",
            CellStatus::Interrupted => "interrupted",
            CellStatus::NotRun => "not-run",
        }
    }
}

/// What the cell was run with, as resolved: the resume key is built from these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellInputs {
    pub qemu_binary: String,
    pub qemu_sha256: String,
    /// Debian package version of the QEMU build, when it came from a package.
    pub qemu_package: Option<String>,
    pub firmware_code: String,
    pub firmware_sha256: String,
    /// Debian package version of the firmware, when it came from a package.
    pub firmware_package: Option<String>,
    /// sha256 of the disk the cell boots (base image, upgraded disk or fixture).
    pub image_sha256: Option<String>,
    /// sha256 of the variable store the cell starts from (template or the guest's).
    pub vars_sha256: Option<String>,
    /// Versions of the image's boot-chain packages, where they are known (a local image's
    /// build manifest; an upgraded state's package list after its upgrade): what `report
    /// history` names when an image changed. Not part of `key` (the image's sha256 is).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_packages: BTreeMap<String, String>,
    /// Hash of everything above plus the plan's target/timeout: a finished cell with the same
    /// key is not run again.
    pub key: String,
}

/// One run of a cell (a cell runs `repeat` times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRun {
    /// 1-based.
    pub n: u32,
    /// The run's results directory, relative to the matrix results directory
    /// (`cells/<id>/run-<n>`): `result.json`, `console.log`, `serial.raw`, `qmp.jsonl`.
    pub dir: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall time of the run (the whole case).
    pub duration_s: f64,
    /// How long QEMU itself ran (its process lifetime).
    pub qemu_s: Option<f64>,
}

/// `cells/<id>/cell.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    pub schema: String,
    pub id: String,
    pub index: usize,
    pub axes: Axes,
    pub status: CellStatus,
    /// As read from the artifact (`qemu --version` / QMP `query-version`): e.g. `10.0.13`.
    pub qemu_version: Option<String>,
    /// As read from the artifact: the edk2 banner's version when it has one (`edk2-stable202302`
    /// -> `2023.02`), else the upstream part of the firmware package's version (`2025.02`).
    pub firmware_version: Option<String>,
    /// The banner's version text as printed (Debian's builds print an empty one).
    pub firmware_banner: Option<String>,
    /// The cell's verdict: the worst run's (a cell that crashed once in N runs is a crash, with
    /// `crashed` = 1 and `flaky` = true).
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The evidence line (e.g. `Synchronous Exception at 0x000000007C743000`).
    pub exception: Option<String>,
    pub repeat: u32,
    /// Runs whose verdict is a guest failure (exit code 1).
    pub crashed: u32,
    /// Runs disagreed.
    pub flaky: bool,
    pub runs: Vec<CellRun>,
    pub inputs: CellInputs,
    /// Wall time of the whole cell (all runs, overlay and vars preparation included).
    pub duration_s: f64,
    /// `duration_s` minus the QEMU lifetimes: time spent outside QEMU.
    pub overhead_s: f64,
    /// Set when `status` is `error`.
    pub error: Option<String>,
    /// For a cell whose guest failed: the known bug `bootwatch explain` names for its first
    /// failing run, or none (added to `bootwatch.cell/1` without a new version: older records
    /// have no such field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<crate::plan::explain::Brief>,
}

impl CellRecord {
    /// The record of a planned cell nobody ran.
    pub fn not_run(p: &PlannedCell, repeat: u32) -> CellRecord {
        CellRecord {
            schema: CELL_SCHEMA.to_string(),
            id: p.id.clone(),
            index: p.index,
            axes: p.axes.clone(),
            status: CellStatus::NotRun,
            qemu_version: None,
            firmware_version: None,
            firmware_banner: None,
            outcome: Outcome {
                before_grub: false,
                reason: "not run".to_string(),
                ..Outcome::unfinished("cell")
            },
            exception: None,
            repeat,
            crashed: 0,
            flaky: false,
            runs: Vec::new(),
            inputs: CellInputs::default(),
            duration_s: 0.0,
            overhead_s: 0.0,
            error: None,
            explanation: None,
        }
    }

    /// The cell's colour in the reports.
    pub fn category(&self) -> Category {
        Category::of(self.status, self.outcome.verdict, self.outcome.exit_code)
    }
}

/// `execution.json`: one invocation of `bootwatch matrix` (a shard, or the whole matrix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub schema: String,
    pub plan_id: String,
    /// `1/2`, or `None` for an unsharded run.
    pub shard: Option<String>,
    pub concurrency: usize,
    pub started_at: String,
    pub wall_s: f64,
    /// Resolving providers and images before the first cell.
    pub prepare_s: f64,
    /// Cells of the plan this execution was responsible for.
    pub cells: Vec<String>,
    /// Cells skipped because a finished cell with the same inputs was found.
    pub resumed: Vec<String>,
    /// Ctrl-C / SIGTERM stopped it.
    pub interrupted: bool,
    pub host: String,
    pub bootwatch_version: String,
}

/// A cell's colour in the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Reached,
    SyncException,
    Panic,
    Hang,
    /// Other guest failures (firmware assert, GRUB error, no bootable device, ...).
    Failure,
    /// bootwatch could not run it (harness-error, error status).
    Error,
    NotRun,
}

impl Category {
    /// `exit_code` 0 counts as reached whatever the verdict (e.g. a fixture that powers the
    /// machine off on purpose: `qemu-exited` with no target, exit code 0).
    pub fn of(status: CellStatus, verdict: Verdict, exit_code: u8) -> Category {
        match status {
            CellStatus::NotRun | CellStatus::Interrupted => return Category::NotRun,
            CellStatus::Error => return Category::Error,
            CellStatus::Done => {}
        }
        match verdict {
            _ if exit_code == 0 => Category::Reached,
            Verdict::Reached => Category::Reached,
            Verdict::SyncException | Verdict::FirmwareException => Category::SyncException,
            Verdict::KernelPanic => Category::Panic,
            Verdict::Hang | Verdict::Timeout => Category::Hang,
            Verdict::HarnessError => Category::Error,
            _ => Category::Failure,
        }
    }
}

/// A cell that changed between a baseline and this report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    pub axes: Axes,
    pub was: Verdict,
    pub now: Verdict,
}

/// `matrix.json`'s comparison with a baseline matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The baseline as given (a directory or a matrix.json).
    pub baseline: String,
    /// Was reached, now fails.
    pub regressions: Vec<Change>,
    /// Was failing, now reached.
    pub fixes: Vec<Change>,
    /// Other verdict changes (one failure for another).
    pub changed: Vec<Change>,
    /// Cells in only one of the two.
    pub new_cells: Vec<String>,
    pub missing_cells: Vec<String>,
}

/// Counts over the cells.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub planned: usize,
    pub done: usize,
    pub errors: usize,
    pub not_run: usize,
    pub flaky: usize,
    /// Done cells by verdict name.
    pub by_verdict: BTreeMap<String, usize>,
}

/// Speed: how well the cells used the machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Sum over executions of their wall time.
    pub wall_s: f64,
    /// Of which preparing (providers, images) before the first cell.
    #[serde(default)]
    pub prepare_s: f64,
    /// Sum over cells of their duration.
    pub cells_s: f64,
    /// Sum over cells of the time outside QEMU.
    pub overhead_s: f64,
    /// `overhead_s / cells_s`.
    pub overhead_fraction: f64,
    /// Cells run over `(wall_s - prepare_s) * concurrency`, summed over the executions (1.0 = the
    /// VM slots never idled while cells ran).
    pub efficiency: f64,
}

/// `matrix.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixReport {
    pub schema: String,
    pub name: String,
    pub description: String,
    pub matrix_file: String,
    pub plan_id: String,
    pub axes: Vec<Axis>,
    pub target: String,
    pub repeat: u32,
    /// `complete` when every planned cell is done or error, else `partial`.
    pub status: String,
    /// The executions the cells came from (shards in order).
    pub executions: Vec<Execution>,
    pub summary: Summary,
    pub timing: Timing,
    pub comparison: Option<Comparison>,
    /// Every planned cell, in plan order; cells nobody ran have status `not-run`.
    pub cells: Vec<CellRecord>,
}
