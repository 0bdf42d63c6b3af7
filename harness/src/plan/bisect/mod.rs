//! Bisection: from a failure to the change that caused it. A bisect file (`spec`) names what is
//! bisected and the machine every step boots; each step is an ordinary case (`engine::case`) in
//! its own directory `steps/<n>-<build>/run-<k>/`, all booting the same prepared disk.
//!
//! - Over builds (`builds`): an ordered list of QEMU or firmware builds from any provider, the
//!   other axis fixed. The ends first (they must differ), then a binary search that steps around
//!   undetermined builds like `git bisect skip` (`search::Bisection`).
//! - Over an update's packages (`packages`): halving, then delta debugging when one package
//!   alone does not fail (`search::minimize`), to the smallest set of the update's packages
//!   whose installation makes the reboot fail, each subset applied to a fresh overlay of the
//!   pre-upgrade image.
//!
//! The answer and every step's evidence go to `bisect.json` (`record`) and `bisect.md`
//! (`markdown`), rewritten after every step. `bootwatch check` is one step on its own
//! (`step`), for `git bisect run`.

mod builds;
pub mod markdown;
pub mod packages;
pub mod record;
pub mod search;
pub mod spec;
pub mod step;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::core::event::{Event, EventSink};
use record::{BISECT_SCHEMA, BisectRecord, Fixed, Status};
use spec::{Axis, BisectSpec};

/// How a bisection is run (the file says what to bisect).
#[derive(Debug, Clone)]
pub struct BisectOptions {
    /// The bisection's directory: `bisect.json`, `bisect.md`, `steps/`.
    pub results: PathBuf,
    pub mirror: Option<String>,
    pub cache_root: PathBuf,
}

/// Runs the bisection `spec` describes into `opts.results` and returns its record (also
/// written there). `Err` only when not even the directory or its first record could be
/// written; inputs that fail to resolve end the bisection with status `error`.
pub async fn run(
    spec: &BisectSpec,
    opts: &BisectOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<BisectRecord> {
    std::fs::create_dir_all(opts.results.join("steps"))?;
    match spec.axis() {
        Axis::Packages => packages::run(spec, opts, cancel, sink).await,
        Axis::Qemu | Axis::Firmware => builds::run(spec, opts, cancel, sink).await,
    }
}

/// Whether `dir` can take a bisection: it must not exist, or be an empty directory.
pub fn check_results_dir(dir: &Path) -> Result<(), String> {
    if dir.is_file()
        || (dir.is_dir()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true))
    {
        return Err(format!(
            "--results {} is not a new or empty directory",
            dir.display()
        ));
    }
    Ok(())
}

/// The record of a bisection that has not made a step yet.
fn new_record(spec: &BisectSpec, fixed: Fixed) -> BisectRecord {
    BisectRecord {
        schema: BISECT_SCHEMA.into(),
        name: spec.name.clone(),
        description: spec.description.clone(),
        file: spec.source.clone(),
        axis: spec.axis(),
        status: Status::Running,
        message: "running".into(),
        direction: None,
        fixed,
        candidates: Vec::new(),
        steps: Vec::new(),
        result: None,
        boots: 0,
        started_at: jiff::Timestamp::now().to_string(),
        wall_s: 0.0,
        host: crate::engine::record::HostInfo::probe().hostname,
        bootwatch_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Writes the record (`bisect.json`, `bisect.md`) on a blocking thread, with the wall time so
/// far.
async fn write(dir: &Path, rec: &mut BisectRecord, started: Instant) -> anyhow::Result<()> {
    rec.wall_s = crate::engine::qmp::round_ms(started.elapsed().as_secs_f64());
    let (dir, r) = (dir.to_path_buf(), rec.clone());
    crate::engine::disk::blocking(move || Ok(r.write(&dir)?)).await
}

/// Step timing for progress lines: elapsed time and an estimate of what remains.
struct Progress {
    started: Instant,
    step_s: Vec<f64>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            started: Instant::now(),
            step_s: Vec::new(),
        }
    }

    /// Announces step `step` of about `step - 1 + steps_left` (`steps_left` counts this one).
    fn announce(&self, sink: &EventSink, step: usize, steps_left: usize, what: &str, left: &str) {
        let mean = (!self.step_s.is_empty())
            .then(|| self.step_s.iter().sum::<f64>() / self.step_s.len() as f64);
        sink.emit(Event::BisectStep {
            step,
            of_about: (step - 1 + steps_left).max(step),
            what: what.into(),
            left: left.into(),
            elapsed_s: crate::engine::qmp::round_ms(self.started.elapsed().as_secs_f64()),
            eta_s: mean.map(|m| crate::engine::qmp::round_ms(m * steps_left.max(1) as f64)),
        });
    }

    fn done(&mut self, seconds: f64) {
        self.step_s.push(seconds);
    }
}
