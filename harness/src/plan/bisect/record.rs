//! `bisect.json` (schema [`BISECT_SCHEMA`]): what a bisection asked, every step with each run's
//! evidence, and its answer. Written atomically at the start, after every step and at the end,
//! so a bisection stopped at any point leaves a valid record of the steps it made.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::search::Class;
use super::spec::Axis;
use super::step::{MachineRecord, RunEvidence};

pub const BISECT_SCHEMA: &str = "bootwatch.bisect/1";

/// How a bisection ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Running,
    /// The boundary (or the culprit set) was found: exit 0.
    Found,
    /// Undetermined steps hide the boundary: `result.range` holds the builds that may carry the
    /// change (exit 125).
    Ambiguous,
    /// Both ends came out the same: there is no change in this list to find (exit 2).
    EndsAgree,
    /// An end could not be judged (exit 125).
    EndUndetermined,
    /// SIGINT/SIGTERM stopped it (exit 125).
    Interrupted,
    /// bootwatch could not go on (a fixed input failed to resolve, ...; exit 125).
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Found => "found",
            Status::Ambiguous => "ambiguous",
            Status::EndsAgree => "ends-agree",
            Status::EndUndetermined => "end-undetermined",
            Status::Interrupted => "interrupted",
            Status::Error => "error",
        }
    }

    /// The exit code of `bootwatch bisect` ending this way.
    pub fn exit_code(self) -> u8 {
        use crate::core::verdict::exit_code;
        match self {
            Status::Found => exit_code::GOOD,
            Status::EndsAgree => exit_code::USAGE,
            _ => exit_code::UNDETERMINED,
        }
    }
}

/// Which way the change goes: from good to bad (a regression), or from bad to good (a fix, when
/// the list's first build fails and its last one works).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Regression,
    Fix,
}

/// Why a step was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// One of the list's two ends (tested first).
    End,
    /// A build inside the list, chosen by the binary search.
    Search,
    /// Every package of the update (must fail).
    Full,
    /// None of them: the pre-upgrade state through the same steps (must pass).
    Empty,
    /// A chunk of a set: a half while halving, a finer chunk in delta debugging.
    Subset,
    /// The current set without a chunk (delta debugging).
    Complement,
}

/// One build of the list, or one package of the update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub index: usize,
    /// The provider as written (`debian:2026.08`), or the package's name.
    pub build: String,
    /// The package's version in the update; for builds, the QEMU or firmware version its
    /// step saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `None` while untested (builds; packages are not classed one by one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// The step that tested it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

/// One step: one build (or package set) booted `repeat` times at most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based, in the order the steps ran.
    pub n: usize,
    pub role: Role,
    /// The build tested (builds), or the package set as one label (packages).
    pub build: String,
    /// The build's index in the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The packages installed (package steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// `steps/<n>-<build>`, relative to the bisection's directory.
    pub dir: String,
    pub class: Class,
    /// How the class came about when it is not one run's verdict (`2 of 3 runs good`, a
    /// failed build).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Why the step could not run (the build failed to resolve, the case was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub runs: Vec<RunEvidence>,
    /// Runs that started QEMU.
    pub boots: usize,
    pub duration_s: f64,
}

impl StepRecord {
    /// The run the step's class stands for.
    pub fn deciding(&self) -> Option<&RunEvidence> {
        super::step::deciding(&self.runs)
    }
}

/// One side of the boundary: the build and the run that shows its class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub build: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub step: usize,
    pub run: RunEvidence,
}

/// The answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BisectResult {
    /// A regression: the first failing build after the last working one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<Point>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<Point>,
    /// A fix: the first working build after the last failing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_good: Option<Point>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_bad: Option<Point>,
    /// Ambiguous: the builds after the last one of the first end's class up to the first one of
    /// the other (the change is in one of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub range: Vec<String>,
    /// Packages: the 1-minimal set that makes the reboot fail (`first_bad` is its step,
    /// `last_good` the step of the set without one of them: the empty set for one culprit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<String>,
}

/// The fixed part of every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fixed {
    #[serde(flatten)]
    pub machine: MachineRecord,
    /// The QEMU build when QEMU is not the bisected axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// The firmware build when it is not the bisected axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// The update whose packages are bisected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
}

/// `bisect.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BisectRecord {
    pub schema: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The bisect file (as given).
    pub file: String,
    pub axis: Axis,
    pub status: Status,
    /// One sentence: the answer, or why there is none.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    pub fixed: Fixed,
    pub candidates: Vec<Candidate>,
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BisectResult>,
    /// QEMU boots over every step (a step whose build failed has none).
    pub boots: usize,
    pub started_at: String,
    pub wall_s: f64,
    pub host: String,
    pub bootwatch_version: String,
}

impl<'de> Deserialize<'de> for Axis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Axis, D::Error> {
        let s = String::deserialize(d)?;
        [Axis::Qemu, Axis::Firmware, Axis::Packages]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown axis {s:?}")))
    }
}

impl BisectRecord {
    /// Writes `bisect.json` and `bisect.md` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        crate::sys::fsx::write_json_atomic(&dir.join("bisect.json"), self)?;
        crate::sys::fsx::write_atomic(
            &dir.join("bisect.md"),
            super::markdown::render(self).as_bytes(),
        )
    }
}
