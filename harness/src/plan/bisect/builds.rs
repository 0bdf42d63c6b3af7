//! Bisection over an ordered list of QEMU or firmware builds, the other axis and the image
//! fixed: the fixed inputs and the image are prepared once, each build is resolved (fetched,
//! built) only when its step comes, and the search (`search::Bisection`) picks the steps.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::record::{
    BisectRecord, BisectResult, Candidate, Direction, Fixed, Point, Role, Status, StepRecord,
};
use super::search::{Answer, Bisection, Class};
use super::spec::{Axis, BisectSpec};
use super::step::{self, StepRuns};
use super::{BisectOptions, Progress, new_record, write};
use crate::core::event::{Event, EventSink};
use crate::engine::case::CaseDir;
use crate::inputs::providers::{self, ProviderContext, ResolvedFirmware, ResolvedQemu};

/// One of the two axes, resolved or to be resolved.
enum FixedBuild {
    Qemu(ResolvedQemu),
    Firmware(ResolvedFirmware),
}

pub(super) async fn run(
    spec: &BisectSpec,
    opts: &BisectOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<BisectRecord> {
    let started = Instant::now();
    let dir = &opts.results;
    let axis = spec.axis();
    let builds = spec.builds();
    let m = &spec.machine;
    let ctx = ProviderContext {
        mirror: opts.mirror.clone(),
        cache_root: opts.cache_root.clone(),
    };
    let mut rec = new_record(
        spec,
        Fixed {
            machine: m.describe(),
            qemu: (axis != Axis::Qemu).then(|| spec.qemu[0].0.clone()),
            qemu_version: None,
            firmware: (axis != Axis::Firmware).then(|| spec.firmware[0].0.clone()),
            update: None,
        },
    );
    rec.candidates = builds
        .iter()
        .enumerate()
        .map(|(index, b)| Candidate {
            index,
            build: b.clone(),
            version: None,
            class: None,
            step: None,
        })
        .collect();
    write(dir, &mut rec, started).await?;

    // What every step shares, once. Without it no step can run: the bisection ends here.
    let fixed = match axis {
        Axis::Qemu => {
            let (name, p) = &spec.firmware[0];
            resolve_logged(&format!("firmware {name}"), sink, async {
                providers::resolve_firmware(p, &ctx, cancel)
                    .await
                    .map(FixedBuild::Firmware)
            })
            .await
        }
        _ => {
            let (name, p) = &spec.qemu[0];
            resolve_logged(&format!("qemu {name}"), sink, async {
                providers::resolve_qemu(p, &ctx, cancel)
                    .await
                    .map(FixedBuild::Qemu)
            })
            .await
        }
    };
    let image = match &fixed {
        Ok(_) => {
            resolve_logged(
                &format!("image {}", m.image),
                sink,
                step::prepare_image(m, &ctx, cancel, sink),
            )
            .await
        }
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let (fixed, image) = match (fixed, image) {
        (Ok(f), Ok(i)) => (f, i),
        (Err(e), _) | (_, Err(e)) => {
            rec.status = if cancel.is_cancelled() {
                Status::Interrupted
            } else {
                Status::Error
            };
            rec.message = format!("the fixed inputs could not be prepared: {e:#}");
            write(dir, &mut rec, started).await?;
            return Ok(rec);
        }
    };
    if let FixedBuild::Qemu(q) = &fixed {
        rec.fixed.qemu_version = Some(q.version.clone());
    }

    let mut search = Bisection::new(builds.len());
    let mut progress = Progress::new();
    let mut interrupted = false;
    while let Some(i) = search.next() {
        if cancel.is_cancelled() {
            interrupted = true;
            break;
        }
        let n = rec.steps.len() + 1;
        let build = &builds[i];
        progress.announce(
            sink,
            n,
            search.steps_left(),
            &format!("{} {build}", axis.as_str()),
            &left(&search, &builds),
        );
        let t = Instant::now();
        let rel = format!("steps/{n}-{}", step::dir_label(build));
        let step_dir = dir.join(&rel);
        std::fs::create_dir_all(&step_dir)?;
        let scope = sink.scoped(&format!("step {n}"));
        let (runs, version) = match resolve_candidate(spec, i, &fixed, &ctx, cancel, &scope).await {
            Err(e) => (StepRuns::failed(format!("{build}: {e:#}")), None),
            Ok((q, f)) => {
                let version = match axis {
                    Axis::Qemu => Some(q.version.clone()),
                    _ => None,
                };
                let name = format!("bisect-{n}-{}", step::dir_label(build));
                let runs = step::run_step(
                    m.repeat,
                    &|k| {
                        step::build_case(
                            m,
                            &q,
                            &f,
                            &image,
                            &name,
                            CaseDir::Exactly(step_dir.join(format!("run-{k}"))),
                        )
                    },
                    &step::judge_by_exit_code,
                    Some(dir),
                    Some(&f),
                    cancel,
                    &scope,
                )
                .await;
                let version = version.or_else(|| {
                    step::deciding(&runs.runs).and_then(|r| r.firmware_version.clone())
                });
                (runs, version)
            }
        };
        let seconds = crate::engine::qmp::round_ms(t.elapsed().as_secs_f64());
        progress.done(seconds);
        rec.boots += runs.boots;
        if runs.interrupted {
            interrupted = true;
        }
        let record = StepRecord {
            n,
            role: if i == 0 || i == builds.len() - 1 {
                Role::End
            } else {
                Role::Search
            },
            build: build.clone(),
            index: Some(i),
            packages: Vec::new(),
            dir: rel,
            class: runs.class,
            detail: runs.detail(m.repeat),
            error: runs.error.clone(),
            runs: runs.runs.clone(),
            boots: runs.boots,
            duration_s: seconds,
        };
        sink.emit(Event::BisectStepDone {
            step: n,
            what: format!("{} {build}", axis.as_str()),
            class: if interrupted {
                "interrupted".into()
            } else {
                runs.class.as_str().into()
            },
            outcome: runs.outcome(),
            detail: record.detail.clone(),
            duration_s: seconds,
        });
        rec.steps.push(record);
        if interrupted {
            // An interrupted step says nothing about its build.
            write(dir, &mut rec, started).await?;
            break;
        }
        search.mark(i, runs.class);
        let c = &mut rec.candidates[i];
        c.class = Some(runs.class);
        c.step = Some(n);
        c.version = version;
        write(dir, &mut rec, started).await?;
    }
    conclude(&mut rec, &search, &builds, axis, interrupted);
    write(dir, &mut rec, started).await?;
    Ok(rec)
}

/// Emits `Preparing`/`Prepared` around a resolution.
async fn resolve_logged<T>(
    what: &str,
    sink: &EventSink,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    sink.emit(Event::Preparing { what: what.into() });
    let t = Instant::now();
    let r = f.await;
    sink.emit(Event::Prepared {
        what: what.into(),
        seconds: crate::engine::qmp::round_ms(t.elapsed().as_secs_f64()),
        detail: r
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default(),
    });
    r
}

/// The QEMU and firmware of build `i`: the fixed one and the candidate, resolved now (a build
/// that fails to resolve makes the step undetermined).
async fn resolve_candidate(
    spec: &BisectSpec,
    i: usize,
    fixed: &FixedBuild,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<(ResolvedQemu, ResolvedFirmware)> {
    match fixed {
        FixedBuild::Firmware(f) => {
            let (name, p) = &spec.qemu[i];
            let q = resolve_logged(
                &format!("qemu {name}"),
                sink,
                providers::resolve_qemu(p, ctx, cancel),
            )
            .await?;
            Ok((q, f.clone()))
        }
        FixedBuild::Qemu(q) => {
            let (name, p) = &spec.firmware[i];
            let f = resolve_logged(
                &format!("firmware {name}"),
                sink,
                providers::resolve_firmware(p, ctx, cancel),
            )
            .await?;
            Ok((q.clone(), f))
        }
    }
}

/// What is left to search, in one sentence.
fn left(s: &Bisection, builds: &[String]) -> String {
    match s.bounds() {
        None => "the ends first".into(),
        Some((b, a)) => {
            let untested = (b + 1..a).filter(|&i| s.class(i).is_none()).count();
            format!(
                "the change is after {} and at or before {}: {untested} untested between",
                builds[b], builds[a]
            )
        }
    }
}

/// The answer, the status and the message once the search is over (or was interrupted).
fn conclude(
    rec: &mut BisectRecord,
    s: &Bisection,
    builds: &[String],
    axis: Axis,
    interrupted: bool,
) {
    let point = |rec: &BisectRecord, i: usize| -> Option<Point> {
        let step = rec.candidates[i].step?;
        let st = rec.steps.iter().find(|x| x.n == step)?;
        Some(Point {
            build: builds[i].clone(),
            index: Some(i),
            step,
            run: st.deciding()?.clone(),
        })
    };
    let kind = axis.as_str();
    if interrupted {
        rec.status = Status::Interrupted;
        rec.message = match s.bounds() {
            Some((b, a)) => format!(
                "interrupted after {} steps; so far the change is after {} and at or before {}",
                rec.steps.len(),
                builds[b],
                builds[a]
            ),
            None => format!("interrupted after {} steps", rec.steps.len()),
        };
        return;
    }
    match s.answer() {
        Answer::Found { before, after } => {
            let old = s.class(before).unwrap_or(Class::Good);
            let (b, a) = (point(rec, before), point(rec, after));
            let mut res = BisectResult::default();
            let direction = if old == Class::Good {
                res.last_good = b;
                res.first_bad = a;
                rec.message = format!(
                    "the first bad {kind} build is {} (the last good one is {}), found in {} steps with {} boots",
                    builds[after],
                    builds[before],
                    rec.steps.len(),
                    rec.boots
                );
                Direction::Regression
            } else {
                res.last_bad = b;
                res.first_good = a;
                rec.message = format!(
                    "the first good {kind} build is {} (the last bad one is {}), found in {} steps with {} boots",
                    builds[after],
                    builds[before],
                    rec.steps.len(),
                    rec.boots
                );
                Direction::Fix
            };
            rec.status = Status::Found;
            rec.direction = Some(direction);
            rec.result = Some(res);
        }
        Answer::Ambiguous {
            before,
            after,
            skipped,
        } => {
            let old = s.class(before).unwrap_or(Class::Good);
            let range: Vec<String> = (before + 1..=after).map(|i| builds[i].clone()).collect();
            let mut res = BisectResult {
                range: range.clone(),
                ..BisectResult::default()
            };
            if old == Class::Good {
                res.last_good = point(rec, before);
                rec.direction = Some(Direction::Regression);
            } else {
                res.last_bad = point(rec, before);
                rec.direction = Some(Direction::Fix);
            }
            rec.status = Status::Ambiguous;
            rec.message = format!(
                "undetermined builds hide the boundary: the change is in one of {} (after {}; {} could not be judged)",
                range.join(", "),
                builds[before],
                skipped
                    .iter()
                    .map(|&i| builds[i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            rec.result = Some(res);
        }
        Answer::EndsAgree(c) => {
            rec.status = Status::EndsAgree;
            rec.message = format!(
                "both ends are {}: {} and {} — the list holds no change to find (order it from a build that works to one that fails, or the other way)",
                c.as_str(),
                builds[0],
                builds[builds.len() - 1]
            );
        }
        Answer::EndUndetermined(i) => {
            let why = rec
                .steps
                .iter()
                .find(|st| st.index == Some(i))
                .map(|st| {
                    st.error.clone().unwrap_or_else(|| {
                        st.deciding()
                            .map(|r| r.outcome.reason.clone())
                            .unwrap_or_default()
                    })
                })
                .unwrap_or_default();
            rec.status = Status::EndUndetermined;
            rec.message = format!(
                "the end {} could not be judged ({why}): there is nothing to compare with",
                builds[i]
            );
        }
    }
}
