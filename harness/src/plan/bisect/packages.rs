//! Bisection over an update's packages: given an update whose upgrade makes the reboot fail,
//! the smallest set of its packages that still does. Each step is the upgrade scenario (boot to
//! login, log in, record the packages, install, record them again, reboot, watch the reboot) on
//! a fresh overlay of the pre-upgrade image, served the whole update as the only package source
//! and asked to install exactly one subset (`apt-get install NAME=VERSION ...`: apt adds what
//! the subset needs from the update, so every subset is installable). The whole update must
//! fail and the empty set (the same steps installing nothing) must pass; then `search::minimize`
//! shrinks the set: halving for one culprit (at most `ceil(log2 n) + 1` more steps), delta
//! debugging when it takes several packages together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use tokio_util::sync::CancellationToken;

use super::record::{
    BisectRecord, BisectResult, Candidate, Fixed, Point, Role, Status, StepRecord,
};
use super::search::{self, Class};
use super::spec::{BisectSpec, package_steps};
use super::step::{self, StepRuns};
use super::{BisectOptions, Progress, new_record, write};
use crate::core::event::{Event, EventSink};
use crate::core::verdict::Verdict;
use crate::engine::case::{CaseDir, Finished};
use crate::inputs::debian::deb::{DebMember, write_deb};
use crate::inputs::images::catalog::PackageManager;
use crate::inputs::providers::{self, ProviderContext};
use crate::inputs::repo::{ARCH, Repo, build_repo};
use crate::plan::updates;

/// One package of the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePackage {
    pub name: String,
    pub version: String,
}

/// The packages of the flat repository in `dir` (its `Packages` index), one per name (the
/// highest version), in index order.
pub fn update_packages(dir: &Path) -> anyhow::Result<Vec<UpdatePackage>> {
    let index = dir.join("Packages");
    let text = crate::sys::fsx::read_input(&index, 64 << 20)
        .with_context(|| format!("reading {}", index.display()))?;
    let mut out: Vec<UpdatePackage> = Vec::new();
    for p in crate::inputs::debian::packages::parse_index(&text, ARCH)
        .with_context(|| format!("{}", index.display()))?
    {
        let (name, version) = (p.name.clone(), p.version.to_string());
        ensure!(
            safe_name(&name) && safe_version(&version),
            "{}: package {name:?} version {version:?} is not a Debian package name and version",
            index.display()
        );
        match out.iter_mut().find(|u| u.name == name) {
            Some(u) => {
                if crate::inputs::debian::compare_versions(&version, &u.version)
                    == std::cmp::Ordering::Greater
                {
                    u.version = version;
                }
            }
            None => out.push(UpdatePackage { name, version }),
        }
    }
    Ok(out)
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

fn safe_version(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b))
}

/// What the upgrade step runs for a subset (inside the guest's `sh -c`, with the update as the
/// only source): `apt-get install` of exactly those versions, or only `apt-get update` for the
/// empty set.
pub fn install_command(packages: &[&UpdatePackage]) -> String {
    if packages.is_empty() {
        return "apt-get update".into();
    }
    let pins: Vec<String> = packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    format!(
        "apt-get update && apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install {}",
        pins.join(" ")
    )
}

/// How a package step's case counts: only the boot after the reboot judges the subset. A step
/// that failed before it (the first boot, the login, the installation) says nothing about the
/// subset: undetermined.
pub fn judge_package_case(done: &Finished) -> (Class, Option<String>) {
    let steps = &done.record.steps;
    match steps.iter().find(|s| s.status == "failed") {
        Some(s) if s.step != "watch" => (
            Class::Skip,
            Some(format!(
                "the {} step failed before the reboot: {}",
                s.step, s.detail
            )),
        ),
        _ => step::judge_by_exit_code(done),
    }
}

/// A package step's class once the whole update's failure is known: a subset is bad only when
/// its reboot fails the *same* way (the same verdict: the crash being bisected); another guest
/// failure (a hang where the update crashed, as a starved host can make a firmware look) says
/// nothing about the subset: undetermined.
pub fn same_failure(
    class: Class,
    why: Option<String>,
    verdict: Verdict,
    reference: Option<Verdict>,
) -> (Class, Option<String>) {
    match reference {
        Some(r) if class == Class::Bad && verdict != r => (
            Class::Skip,
            Some(format!(
                "a different failure ({verdict}) from the whole update's ({r})"
            )),
        ),
        _ => (class, why),
    }
}

/// A label for a package set (its step directory and its row).
fn set_label(names: &[&str], total: usize) -> String {
    match names.len() {
        0 => "none".into(),
        n if n == total => format!("all {n} packages"),
        _ => names.join(" "),
    }
}

pub(super) async fn run(
    spec: &BisectSpec,
    opts: &BisectOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<BisectRecord> {
    let started = Instant::now();
    let dir = &opts.results;
    let m = &spec.machine;
    let pk = spec.packages.as_ref().expect("a package bisection");
    let ctx = ProviderContext {
        mirror: opts.mirror.clone(),
        cache_root: opts.cache_root.clone(),
    };
    let mut rec = new_record(
        spec,
        Fixed {
            machine: m.describe(),
            qemu: Some(spec.qemu[0].0.clone()),
            qemu_version: None,
            firmware: Some(spec.firmware[0].0.clone()),
            update: Some(pk.update.label()),
        },
    );
    write(dir, &mut rec, started).await?;
    let prepared = prepare(spec, dir, &ctx, cancel, sink).await;
    let (q, f, image, repo, packages) = match prepared {
        Ok(p) => p,
        Err(e) => {
            rec.status = if cancel.is_cancelled() {
                Status::Interrupted
            } else {
                Status::Error
            };
            rec.message = format!("the inputs could not be prepared: {e:#}");
            write(dir, &mut rec, started).await?;
            return Ok(rec);
        }
    };
    rec.fixed.qemu_version = Some(q.version.clone());
    rec.candidates = packages
        .iter()
        .enumerate()
        .map(|(index, p)| Candidate {
            index,
            build: p.name.clone(),
            version: Some(p.version.clone()),
            class: None,
            step: None,
        })
        .collect();
    write(dir, &mut rec, started).await?;

    let total = packages.len();
    let estimate = 2 + search::steps_bound(total);
    let steps = package_steps(m);
    let mut progress = Progress::new();
    let mut smallest = total;
    let mut known: BTreeMap<Vec<usize>, Class> = BTreeMap::new();
    let mut interrupted = false;
    // The whole update's failure, once its step has shown it.
    let reference: std::sync::OnceLock<Verdict> = std::sync::OnceLock::new();
    let judge = |done: &Finished| {
        let (class, why) = judge_package_case(done);
        same_failure(
            class,
            why,
            done.record.outcome.verdict,
            reference.get().copied(),
        )
    };
    let mut test = async |subset: &[usize], role: Role| -> Result<Class, ()> {
        if cancel.is_cancelled() {
            interrupted = true;
            return Err(());
        }
        let n = rec.steps.len() + 1;
        let chosen: Vec<&UpdatePackage> = subset.iter().map(|&i| &packages[i]).collect();
        let names: Vec<&str> = chosen.iter().map(|p| p.name.as_str()).collect();
        let label = set_label(&names, total);
        progress.announce(
            sink,
            n,
            estimate.saturating_sub(n - 1),
            &format!("install {label}"),
            &format!("smallest failing set so far: {smallest} of {total} packages"),
        );
        let t = Instant::now();
        let rel = format!("steps/{n}-{}", step::dir_label(&label));
        let step_dir = dir.join(&rel);
        if let Err(e) = std::fs::create_dir_all(&step_dir) {
            tracing::warn!("creating {}: {e}", step_dir.display());
        }
        let mut guest = image.guest.clone();
        guest.upgrade_command = install_command(&chosen);
        let scope = sink.scoped(&format!("bisect step {n}"));
        let runs: StepRuns = step::run_step(
            m.repeat,
            &|k| {
                let mut req = step::machine_case(
                    m,
                    &q,
                    &f,
                    &format!("bisect-{n}-packages"),
                    CaseDir::Exactly(step_dir.join(format!("run-{k}"))),
                    steps.clone(),
                );
                let mut disk = step::image_disk(&image, &image.path, &image.sha256, image.format);
                disk.guest = guest.clone();
                req.image = Some(disk);
                req.inputs.push(image.input_record());
                req.network = Some(Vec::new());
                req.scenario = Some(format!("upgrade-reboot installing {label}"));
                req.update = Some(repo.clone());
                req
            },
            &judge,
            Some(dir),
            Some(&f),
            cancel,
            &scope,
        )
        .await;
        let seconds = crate::engine::qmp::round_ms(t.elapsed().as_secs_f64());
        progress.done(seconds);
        rec.boots += runs.boots;
        if runs.interrupted {
            interrupted = true;
        }
        let record = StepRecord {
            n,
            role,
            build: label.clone(),
            index: None,
            packages: names.iter().map(|s| s.to_string()).collect(),
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
            what: format!("install {label}"),
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
        if let Err(e) = write(dir, &mut rec, started).await {
            tracing::warn!("writing the bisection's record: {e:#}");
        }
        if interrupted {
            return Err(());
        }
        if runs.class == Class::Bad {
            smallest = smallest.min(subset.len());
            if role == Role::Full
                && let Some(r) = step::deciding(&runs.runs)
            {
                let _ = reference.set(r.outcome.verdict);
            }
        }
        Ok(runs.class)
    };

    let all: Vec<usize> = (0..total).collect();
    let outcome: Result<Option<Vec<usize>>, ()> = async {
        let full = test(&all, Role::Full).await?;
        known.insert(all.clone(), full);
        if full != Class::Bad {
            return Ok(None);
        }
        let empty = test(&[], Role::Empty).await?;
        known.insert(Vec::new(), empty);
        if empty != Class::Good {
            return Ok(None);
        }
        let mut role_test = async |s: &[usize], probe: search::Probe| {
            let role = match probe {
                search::Probe::Chunk => Role::Subset,
                search::Probe::Complement => Role::Complement,
            };
            test(s, role).await
        };
        search::minimize(total, &mut known, &mut role_test)
            .await
            .map(Some)
    }
    .await;
    conclude(&mut rec, &packages, &known, outcome);
    write(dir, &mut rec, started).await?;
    Ok(rec)
}

/// Resolves the builds and the image and makes the update's repository.
async fn prepare(
    spec: &BisectSpec,
    dir: &Path,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<(
    providers::ResolvedQemu,
    providers::ResolvedFirmware,
    crate::inputs::images::Resolved,
    crate::engine::case::UpdateRepo,
    Vec<UpdatePackage>,
)> {
    let pk = spec.packages.as_ref().expect("a package bisection");
    let m = &spec.machine;
    let name = m
        .image_choice
        .image_name()
        .ok_or_else(|| anyhow!("a package bisection needs an image"))?;
    let q = providers::resolve_qemu(&spec.qemu[0].1, ctx, cancel).await?;
    let f = providers::resolve_firmware(&spec.firmware[0].1, ctx, cancel).await?;
    ensure!(
        f.vars_template.is_some(),
        "firmware {} is not a 64 MiB flash image with a vars store; a case that reboots needs one",
        spec.firmware[0].0
    );
    sink.emit(Event::Preparing {
        what: format!("image {name}"),
    });
    let image = step::resolve_image(name, ctx, cancel, sink).await?;
    if image.guest.package_manager != PackageManager::Apt {
        bail!(
            "image {name} is managed by {:?}; package-set bisection installs with apt",
            image.guest.package_manager
        );
    }
    let repo = updates::make(
        &pk.update,
        name,
        ctx.mirror.as_deref(),
        &ctx.cache_root,
        &dir.join("repo"),
    )
    .await?;
    let mut packages = update_packages(&repo.dir)?;
    if !pk.only.is_empty() {
        for o in &pk.only {
            ensure!(
                packages.iter().any(|p| p.name == *o),
                "[packages] only: {o:?} is not in the update ({})",
                packages
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        packages.retain(|p| pk.only.contains(&p.name));
    }
    ensure!(
        !packages.is_empty(),
        "the update {} holds no {ARCH} packages",
        repo.dir.display()
    );
    Ok((q, f, image, repo, packages))
}

/// Status, message and answer of a package bisection.
fn conclude(
    rec: &mut BisectRecord,
    packages: &[UpdatePackage],
    known: &BTreeMap<Vec<usize>, Class>,
    outcome: Result<Option<Vec<usize>>, ()>,
) {
    let names =
        |s: &[usize]| -> Vec<String> { s.iter().map(|&i| packages[i].name.clone()).collect() };
    let point_of = |rec: &BisectRecord, set: &[usize], class: Class| -> Option<Point> {
        let want = names(set);
        let st = rec
            .steps
            .iter()
            .find(|st| st.packages == want && st.class == class)?;
        Some(Point {
            build: st.build.clone(),
            index: None,
            step: st.n,
            run: st.deciding()?.clone(),
        })
    };
    let all: Vec<usize> = (0..packages.len()).collect();
    match outcome {
        Err(()) => {
            rec.status = Status::Interrupted;
            rec.message = format!("interrupted after {} steps", rec.steps.len());
        }
        Ok(None) => {
            let full = known.get(&all).copied();
            let empty = known.get(&Vec::new()).copied();
            match (full, empty) {
                (Some(Class::Good), _) => {
                    rec.status = Status::EndsAgree;
                    rec.message = "the whole update does not make the reboot fail: there is nothing to find in its packages".into();
                }
                (Some(Class::Bad), Some(Class::Bad)) => {
                    rec.status = Status::EndsAgree;
                    rec.message = "the reboot fails without any of the update's packages too: the failure is not the update's".into();
                }
                (Some(Class::Skip), _) => {
                    rec.status = Status::EndUndetermined;
                    rec.message = "the step installing the whole update could not be judged".into();
                }
                _ => {
                    rec.status = Status::EndUndetermined;
                    rec.message =
                        "the step installing none of the packages could not be judged".into();
                }
            }
        }
        Ok(Some(culprits)) => {
            let culprit_names = names(&culprits);
            // The set without one of them passed (for one culprit: the empty set).
            let without: Option<Point> = culprits.iter().find_map(|c| {
                let rest: Vec<usize> = culprits.iter().copied().filter(|x| x != c).collect();
                point_of(rec, &rest, Class::Good)
            });
            let undetermined = rec.steps.iter().filter(|s| s.class == Class::Skip).count();
            rec.status = Status::Found;
            rec.message = format!(
                "{} of the update's {} packages make the reboot fail: {}{}; found in {} steps with {} boots",
                culprits.len(),
                packages.len(),
                culprit_names.join(", "),
                if undetermined > 0 {
                    format!(
                        " (minimal among the subsets that could be judged: {undetermined} could not)"
                    )
                } else {
                    String::new()
                },
                rec.steps.len(),
                rec.boots
            );
            rec.result = Some(BisectResult {
                first_bad: point_of(rec, &culprits, Class::Bad),
                last_good: without,
                culprits: culprit_names,
                ..BisectResult::default()
            });
        }
    }
}

/// Adds `names` as harmless packages to the flat repository in `dir` (tiny `.deb`s built here,
/// each installing one text file under `/usr/share/bootwatch-extra/`, with no maintainer
/// scripts and no dependencies) and rewrites its index over every `.deb` in it: an update with
/// more packages than the one that breaks the boot, for package-set bisection.
pub fn add_harmless_packages(dir: &Path, names: &[&str]) -> anyhow::Result<Repo> {
    let mut debs: Vec<PathBuf> = Vec::new();
    for name in names {
        ensure!(safe_name(name), "{name:?} is not a Debian package name");
        let version = "1.0";
        let text = format!(
            "{name}: a harmless package bootwatch builds to stand beside the culprit in package-set bisection tests\n"
        );
        let control = format!(
            "Package: {name}\n\
             Version: {version}\n\
             Architecture: {ARCH}\n\
             Maintainer: bootwatch test harness <bootwatch@invalid>\n\
             Installed-Size: 1\n\
             Section: misc\n\
             Priority: optional\n\
             Description: harmless bootwatch test package\n \
             Installs one small text file under /usr/share/bootwatch-extra/ and\n \
             nothing else: made by bootwatch, a test harness, to stand beside the\n \
             package that breaks the boot in package-set bisection tests.\n"
        );
        let path = format!("usr/share/bootwatch-extra/{name}.txt");
        let deb = dir.join(format!("{name}_{version}_{ARCH}.deb"));
        write_deb(
            &deb,
            &control,
            &[],
            &[DebMember {
                path: &path,
                content: text.as_bytes(),
                mode: 0o644,
            }],
        )?;
        debs.push(deb);
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") && !debs.contains(&p) {
            debs.push(p);
        }
    }
    build_repo(dir, &debs, "bootwatch-bisect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_commands_pin_exact_versions() {
        let a = UpdatePackage {
            name: "shim-signed".into(),
            version: "1.44+bootwatch.bad1".into(),
        };
        let b = UpdatePackage {
            name: "bootwatch-extra-a".into(),
            version: "1.0".into(),
        };
        assert_eq!(install_command(&[]), "apt-get update");
        let c = install_command(&[&b, &a]);
        assert!(
            c.starts_with("apt-get update && apt-get -y ")
                && c.ends_with(" install bootwatch-extra-a=1.0 shim-signed=1.44+bootwatch.bad1"),
            "{c}"
        );
    }

    #[test]
    fn harmless_packages_join_the_update() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = crate::inputs::repo::bad_update(tmp.path(), "1.2+deb12u1").unwrap();
        assert_eq!(bad.packages.len(), 1);
        let repo =
            add_harmless_packages(tmp.path(), &["bootwatch-extra-a", "bootwatch-extra-b"]).unwrap();
        let names: Vec<&str> = repo.packages.iter().map(|p| p.package.as_str()).collect();
        assert_eq!(
            names,
            ["bootwatch-extra-a", "bootwatch-extra-b", "shim-signed"]
        );
        let listed = update_packages(tmp.path()).unwrap();
        assert_eq!(
            listed,
            vec![
                UpdatePackage {
                    name: "bootwatch-extra-a".into(),
                    version: "1.0".into()
                },
                UpdatePackage {
                    name: "bootwatch-extra-b".into(),
                    version: "1.0".into()
                },
                UpdatePackage {
                    name: "shim-signed".into(),
                    version: "1.2+deb12u1+bootwatch.bad1".into()
                },
            ]
        );
        assert!(add_harmless_packages(tmp.path(), &["Bad Name"]).is_err());
    }

    #[test]
    fn only_the_same_failure_is_bad() {
        use Verdict::*;
        // Before the whole update's step, any failure counts.
        assert_eq!(same_failure(Class::Bad, None, Hang, None).0, Class::Bad);
        assert_eq!(
            same_failure(Class::Bad, None, SyncException, Some(SyncException)).0,
            Class::Bad
        );
        let (c, why) = same_failure(Class::Bad, None, Hang, Some(SyncException));
        assert_eq!(c, Class::Skip);
        assert!(why.unwrap().contains("different failure (hang)"));
        assert_eq!(
            same_failure(Class::Good, None, Reached, Some(SyncException)).0,
            Class::Good
        );
    }

    #[test]
    fn set_labels() {
        assert_eq!(set_label(&[], 5), "none");
        assert_eq!(set_label(&["a", "b"], 2), "all 2 packages");
        assert_eq!(set_label(&["a", "b"], 5), "a b");
    }
}
