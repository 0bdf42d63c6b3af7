//! The embedded default (`scenarios/demo.toml`): cases and the outcomes they exist to show, as
//! data. Each demo case is an ordinary engine case; this module turns the file into requests and
//! the finished cases into rows (the CLI prints them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::core::event::EventSink;
use crate::core::verdict::{Outcome, Verdict};
use crate::engine::case::{self, CaseDir, CaseRequest, Finished, ImageDisk};
use crate::engine::step::Step;
use crate::inputs::fixtures::Fixture;
use crate::inputs::images::{self, Registry};
use crate::plan::scenario::Scenario;
use crate::plan::updates::{self, UpdateChoice};

/// The demo, as shipped.
pub const DEMO_TOML: &str = include_str!("../../../scenarios/demo.toml");
/// The scenario the demo runs, as shipped.
pub const UPGRADE_REBOOT: &str = include_str!("../../../scenarios/upgrade-reboot.toml");

/// What a demo case must end as.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub verdict: String,
    pub before_grub: Option<bool>,
    pub exit_code: Option<u8>,
    /// The upgrade changed boot-chain packages and they are named.
    pub suspects: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoCase {
    pub name: String,
    pub update: String,
    #[serde(default)]
    pub restore_bootloader: bool,
    pub expect: Expect,
    pub after_workaround: Option<Expect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoFixture {
    pub name: String,
    pub expect: Expect,
}

/// `scenarios/demo.toml`, checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    pub image: String,
    pub scenario: String,
    #[serde(rename = "case")]
    pub cases: Vec<DemoCase>,
    #[serde(rename = "fixture")]
    pub fixtures: Vec<DemoFixture>,
}

impl Demo {
    /// The shipped demo.
    pub fn builtin() -> anyhow::Result<Demo> {
        let d: Demo = toml::from_str(DEMO_TOML).context("scenarios/demo.toml")?;
        for e in d
            .cases
            .iter()
            .flat_map(|c| std::iter::once(&c.expect).chain(&c.after_workaround))
            .chain(d.fixtures.iter().map(|f| &f.expect))
        {
            Verdict::parse(&e.verdict)
                .ok_or_else(|| anyhow!("scenarios/demo.toml: unknown verdict {:?}", e.verdict))?;
        }
        for c in &d.cases {
            UpdateChoice::parse(&c.update).map_err(|e| anyhow!("scenarios/demo.toml: {e}"))?;
        }
        for f in &d.fixtures {
            fixture(&f.name)?;
        }
        Ok(d)
    }
}

fn fixture(name: &str) -> anyhow::Result<Fixture> {
    Fixture::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| anyhow!("scenarios/demo.toml: no fixture named {name:?}"))
}

/// One line of the demo's table (and one object of `demo --json`).
#[derive(Debug, Clone, Serialize)]
pub struct DemoRow {
    pub case: String,
    pub scenario: String,
    pub update: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub suspects: Vec<String>,
    /// Wall time of the case (or of the workaround and its boot).
    pub wall_s: f64,
    pub results: PathBuf,
    /// Whether the row ended as the demo file expects.
    pub as_expected: bool,
}

/// The machine the demo's cases run on.
#[derive(Debug, Clone)]
pub struct DemoMachine {
    pub qemu: PathBuf,
    pub firmware_code: PathBuf,
    pub firmware_wait: crate::core::launch::FirmwareWait,
}

fn meets(e: &Expect, o: &Outcome, suspects: &[String]) -> bool {
    o.verdict.as_str() == e.verdict
        && e.before_grub.is_none_or(|b| b == o.before_grub)
        && e.exit_code.is_none_or(|c| c == o.exit_code)
        && e.suspects.is_none_or(|s| s != suspects.is_empty())
}

/// Runs the image cases. `results` gets one directory per case and the update repositories.
pub async fn run_cases(
    demo: &Demo,
    machine: &DemoMachine,
    results: &Path,
    mirror: Option<&str>,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<Vec<DemoRow>> {
    let registry = Registry::builtin();
    let entry = registry
        .get(&demo.image)
        .ok_or_else(|| anyhow!("scenarios/demo.toml: no image named {:?}", demo.image))?;
    let cache = crate::sys::fsx::cache_root()?;
    let image = images::resolve(entry, &cache, mirror, cancel, sink).await?;
    let scenario = match demo.scenario.as_str() {
        "upgrade-reboot" => Scenario::parse(UPGRADE_REBOOT, "scenarios/upgrade-reboot.toml")?,
        other => anyhow::bail!("scenarios/demo.toml: unknown scenario {other:?}"),
    };
    std::fs::create_dir_all(results)?;
    let mut rows = Vec::new();
    for c in &demo.cases {
        if cancel.is_cancelled() {
            break;
        }
        let choice = UpdateChoice::parse(&c.update).map_err(|e| anyhow!(e))?;
        let update = updates::make(
            &choice,
            &demo.image,
            mirror,
            &cache,
            &results.join("repos").join(&c.update),
        )
        .await?;
        let mut req = CaseRequest::new(
            &c.name,
            CaseDir::Exactly(results.join(&c.name)),
            machine.firmware_code.clone(),
            scenario.steps.clone(),
        );
        req.qemu = machine.qemu.clone();
        req.firmware_wait = machine.firmware_wait;
        req.smp = 2;
        req.memory_mib = 2048;
        req.image = Some(ImageDisk {
            name: image.name.clone(),
            base: image.path.clone(),
            base_sha256: image.sha256.clone(),
            format: image.format,
            guest: image.guest.clone(),
            source: image.source.clone(),
        });
        req.keep_disks = true;
        req.network = Some(Vec::new());
        req.scenario = Some(scenario.name.clone());
        req.update = Some(update);
        req.restore_bootloader = c.restore_bootloader;
        let checked = case::check(req)?;
        let t = std::time::Instant::now();
        let f = case::run(checked, cancel, &sink.scoped(&c.name)).await?;
        rows.extend(case_rows(c, &scenario.name, &f, t.elapsed()));
    }
    Ok(rows)
}

/// A case's rows: its judged boot before any workaround, and the workaround's boot.
fn case_rows(c: &DemoCase, scenario: &str, f: &Finished, wall: Duration) -> Vec<DemoRow> {
    let r = &f.record;
    // The upgrade's own verdict is that of the last boot judged in session 1 — once the case
    // got as far as judging its reboot; before that (a login that timed out, an upgrade that
    // could not run) the last boot judged is the one before the upgrade, which says nothing of
    // the update: the case's own outcome (`harness-error` and why) is the row's. The
    // workaround's is the case's final one (its boot after the offline repair).
    let reboot_judged = r
        .steps
        .iter()
        .any(|s| s.step == "watch" && s.status != "skipped");
    let first = r
        .boots
        .iter()
        .rev()
        .find(|b| b.session == 1 && reboot_judged)
        .map_or_else(|| r.outcome.clone(), |b| b.outcome.clone());
    let restore_s = r.restore.as_ref().map_or(0.0, |x| x.duration_s);
    let update = UpdateChoice::parse(&c.update).map_or_else(|_| c.update.clone(), |u| u.label());
    let mut rows = vec![DemoRow {
        case: c.name.clone(),
        scenario: scenario.into(),
        update: update.clone(),
        as_expected: meets(&c.expect, &first, &r.suspects),
        outcome: first,
        suspects: r.suspects.clone(),
        wall_s: crate::engine::qmp::round_ms(wall.as_secs_f64()),
        results: f.dir.clone(),
    }];
    if let Some(after) = &c.after_workaround {
        let o = r.outcome.clone();
        let ran = r.restore.is_some();
        rows.push(DemoRow {
            case: format!("{}+restore-bootloader", c.name),
            scenario: scenario.into(),
            update,
            as_expected: ran && meets(after, &o, &[]),
            wall_s: crate::engine::qmp::round_ms(restore_s + o.time_to_verdict_s.unwrap_or(0.0)),
            outcome: o,
            suspects: r.suspects.clone(),
            results: f.dir.clone(),
        });
    }
    rows
}

/// Runs the fixture cases (`demo --fixtures`): generated EFI applications, seconds each.
pub async fn run_fixtures(
    demo: &Demo,
    machine: &DemoMachine,
    results: &Path,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> anyhow::Result<Vec<DemoRow>> {
    let dir = crate::sys::fsx::cache_root()?.join("fixtures");
    let d = dir.clone();
    tokio::task::spawn_blocking(move || crate::inputs::fixtures::write_all(&d))
        .await
        .context("writing the fixtures")??;
    let mut rows = Vec::new();
    for fx in &demo.fixtures {
        if cancel.is_cancelled() {
            break;
        }
        let f = fixture(&fx.name)?;
        let mut req = CaseRequest::new(
            &format!("demo-{}", fx.name),
            CaseDir::Under(results.to_path_buf()),
            machine.firmware_code.clone(),
            vec![Step::Boot {
                until: None,
                timeout: Duration::from_secs(120),
                silence: Duration::from_secs(30),
            }],
        );
        req.qemu = machine.qemu.clone();
        req.firmware_wait = machine.firmware_wait;
        req.smp = 1;
        req.memory_mib = 512;
        req.disks = vec![dir.join(f.image_file_name())];
        req.snapshot = true;
        let checked = case::check(req)?;
        let t = std::time::Instant::now();
        let done = case::run(checked, cancel, &sink.scoped(&fx.name)).await?;
        let o = done.record.outcome.clone();
        rows.push(DemoRow {
            case: fx.name.clone(),
            scenario: "boot".into(),
            update: String::new(),
            as_expected: meets(&fx.expect, &o, &[]),
            outcome: o,
            suspects: Vec::new(),
            wall_s: crate::engine::qmp::round_ms(t.elapsed().as_secs_f64()),
            results: done.dir,
        });
    }
    Ok(rows)
}

/// Whether the demo showed what it exists to show: every row as expected, none missing.
pub fn as_expected(rows: &[DemoRow], expected_rows: usize) -> bool {
    rows.len() == expected_rows && rows.iter().all(|r| r.as_expected)
}

impl Demo {
    /// How many rows the image cases give.
    pub fn case_rows(&self) -> usize {
        self.cases
            .iter()
            .map(|c| 1 + usize::from(c.after_workaround.is_some()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_parses_and_is_checked() {
        let d = Demo::builtin().unwrap();
        assert_eq!(d.case_rows(), 3);
        assert_eq!(d.fixtures.len(), 2);
        let o = Outcome {
            verdict: Verdict::SyncException,
            before_grub: true,
            ..Outcome::unfinished("x")
        };
        assert!(meets(&d.cases[1].expect, &o, &["shim-signed".into()]));
        assert!(!meets(&d.cases[1].expect, &o, &[]));
        assert!(!meets(&d.cases[0].expect, &o, &[]));
    }

    /// A real record (the demo on a machine at load 20, 2026-12-02): the login before the
    /// upgrade timed out, so the update never ran. Its row must say so, not show the boot
    /// before the upgrade as the update's verdict.
    #[test]
    fn a_case_that_never_judged_its_reboot_is_not_shown_as_the_updates_verdict() {
        let text = include_str!("../../tests/data/records/demo-bad-update-login-timeout.case.json");
        let record: crate::engine::record::CaseRecord = serde_json::from_str(text).unwrap();
        assert!(
            record
                .boots
                .iter()
                .any(|b| b.outcome.verdict == Verdict::Reached)
        );
        let d = Demo::builtin().unwrap();
        let f = Finished {
            dir: PathBuf::from("bad-update"),
            record,
            runs: vec![],
        };
        let rows = case_rows(&d.cases[1], "upgrade-reboot", &f, Duration::from_secs(1));
        assert_eq!(rows[0].outcome.verdict, Verdict::HarnessError);
        assert!(
            rows[0].outcome.reason.contains("no password prompt"),
            "{}",
            rows[0].outcome.reason
        );
        assert!(!rows[0].as_expected);
        assert!(rows.iter().all(|r| r.outcome.verdict != Verdict::Reached));
    }
}
