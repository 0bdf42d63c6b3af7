//! `bootwatch explain`: a run's evidence (its records and, when kept, its disk and vars store)
//! turned into measured facts (`run.*` from the records, `chain.*` from the boot chain on the
//! disk), held against the known bug families (`core::known_bugs`), and optionally the
//! families' workarounds tried as cases on the same prepared disk ([`workarounds`]).

pub mod evidence;
pub mod workarounds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::core::chain::{Chain, ChainBinary};
use crate::core::event::EventSink;
use crate::core::facts::Facts;
use crate::core::firmware::keys;
use crate::core::known_bugs::{ConditionResult, FamilyResult, KnownBugs, Status};
use crate::core::verdict::Outcome;
use crate::engine::record::InputRecord;
pub use evidence::{Evidence, load};

/// The version of `explain --json`'s layout.
pub const EXPLAIN_SCHEMA: &str = "bootwatch.explain/1";

/// A binary on the boot path that is not the base image's, and who put it there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replaced {
    pub path: String,
    /// Why it is on the boot path.
    pub via: String,
    /// What it is now, and what it was (`shim 16.1`, `an EFI application without SBAT, 1024 bytes`).
    pub now: String,
    pub was: Option<String>,
    /// The packages the upgrade changed that put it there (`shim-signed 1.51 -> 1.51+bad1`).
    pub packages: Vec<String>,
    /// How the packages were attributed: `upgrade log` (dpkg's "Setting up" block names the
    /// file), `same program` (the replaced binary's SBAT names the package's program), or
    /// `boot-chain packages the upgrade changed` (no finer evidence).
    pub attributed_by: Option<String>,
}

/// What `explain` says about one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    pub schema: String,
    /// The run's case directory and the session explained.
    pub run: PathBuf,
    pub session: usize,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Families every requirement of which holds, most confident first.
    pub families: Vec<FamilyResult>,
    /// Families no requirement of which fails, but some are not measured.
    pub undecided: Vec<FamilyResult>,
    /// Ids of the families a measured fact rules out.
    pub ruled_out: Vec<String>,
    /// Each ruled-out family's required conditions that failed.
    #[serde(default)]
    pub ruled_out_by: BTreeMap<String, Vec<ConditionResult>>,
    /// Boot-path binaries that differ from the base image.
    pub replaced: Vec<Replaced>,
    pub facts: Facts,
    pub chain: Option<Chain>,
    /// The firmware probe whose facts were used (booted, or its cached report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeUse>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
    /// Filled by `--try-workarounds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workarounds_tried: Vec<workarounds::Tried>,
}

impl Explanation {
    /// Nothing matched.
    pub fn no_known_family(&self) -> bool {
        self.families.is_empty()
    }
}

/// A matched family as the reports name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BriefFamily {
    pub id: String,
    pub title: String,
    pub confidence: f64,
    /// `high`, `medium` or `low`.
    pub level: String,
}

/// What a report carries of an explanation (`explanation` in `cell.json`, `matrix.json` and
/// `bundle.json`): the matched families or none, with their confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Brief {
    /// The run explained, as a path under the cell or bundle (`run-1`, `runs/run-2`).
    pub run: String,
    /// The families every requirement of which holds, most confident first; none: no known
    /// family matches.
    pub families: Vec<BriefFamily>,
    /// Families no measured fact rules out, with requirements nobody measured (ids).
    pub undecided: Vec<String>,
    /// Why there is no explanation (the evidence could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The wall time the explanation took.
    pub explain_s: f64,
}

impl Brief {
    /// The brief of an explanation of the run at `run`, relative to `base`, that took `secs`.
    pub fn of(base: &Path, run: &Path, x: Result<&Explanation, String>, secs: f64) -> Brief {
        let run = match run.strip_prefix(base).unwrap_or(run).to_string_lossy() {
            r if r.is_empty() => ".".to_string(),
            r => r.into_owned(),
        };
        let explain_s = crate::engine::qmp::round_ms(secs);
        match x {
            Ok(x) => Brief {
                run,
                families: x
                    .families
                    .iter()
                    .map(|f| BriefFamily {
                        id: f.id.clone(),
                        title: f.title.clone(),
                        confidence: f.confidence,
                        level: f.level.clone(),
                    })
                    .collect(),
                undecided: x.undecided.iter().map(|f| f.id.clone()).collect(),
                error: None,
                explain_s,
            },
            Err(e) => Brief {
                run,
                families: Vec::new(),
                undecided: Vec::new(),
                error: Some(e),
                explain_s,
            },
        }
    }

    /// One line: `edk2-smccc-hvc-on-qemu-5.2 (confidence 0.75, medium)`, `no known family`
    /// (`..., undecided: T1`), or why it could not be explained.
    pub fn text(&self) -> String {
        if let Some(e) = &self.error {
            return format!("not explained: {e}");
        }
        let mut s = if self.families.is_empty() {
            "no known family".to_string()
        } else {
            self.families
                .iter()
                .map(|f| format!("{} (confidence {:.2}, {})", f.id, f.confidence, f.level))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if self.families.is_empty() && !self.undecided.is_empty() {
            s.push_str(&format!(" (undecided: {})", self.undecided.join(", ")));
        }
        s
    }
}

/// The brief explanation of what `dir` holds (a run or a matrix cell) when its guest failed
/// (exit code 1), for a bundle.
pub async fn brief_of_failure(
    dir: &Path,
    cache_root: &Path,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Option<Brief> {
    let (b, outcome) = brief(dir, dir, None, cache_root, cancel, sink).await;
    match outcome {
        Some(o) if o.exit_code != crate::core::verdict::exit_code::BAD => None,
        _ => Some(b),
    }
}

/// The brief explanation of a run for a report (a matrix cell's first failing run, a bundle's),
/// with the outcome it explains: a firmware probe only from the cache and nothing fetched
/// ([`ProbePolicy::Cached`]), so it costs no boot. `cell` is the record of the cell the run
/// belongs to, when there is one; the run is named relative to `base`.
pub async fn brief(
    run: &Path,
    base: &Path,
    cell: Option<crate::plan::matrix::model::CellRecord>,
    cache_root: &Path,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> (Brief, Option<Outcome>) {
    let t = std::time::Instant::now();
    let opts = ExplainOptions {
        probe: ProbePolicy::Cached,
        cache_root: cache_root.to_path_buf(),
        mirror: None,
    };
    let p = run.to_path_buf();
    let x = match crate::engine::disk::blocking(move || evidence::load(&p)).await {
        Ok(mut ev) => {
            if cell.is_some() {
                ev.cell = cell;
            }
            explain_evidence(ev, &opts, cancel, sink).await
        }
        Err(e) => Err(e),
    };
    let secs = t.elapsed().as_secs_f64();
    // The evidence's paths are canonical.
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    match &x {
        Ok((ev, x)) => (
            Brief::of(&base, &ev.dir, Ok(x), secs),
            Some(x.outcome.clone()),
        ),
        Err(e) => (Brief::of(&base, run, Err(format!("{e:#}")), secs), None),
    }
}

/// Whether `explain` may boot the firmware probe, and fetch inputs to do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePolicy {
    /// Boot the probe under the run's QEMU, firmware and CPU when the families name facts only
    /// it measures (its report is cached by content hash: a second explain boots nothing);
    /// inputs that are not on this machine any more (a bundle from elsewhere, a cleaned cache)
    /// are fetched or built again through their providers, as `bootwatch replay` does.
    Run,
    /// Use a probe report already cached for the run's QEMU, firmware and CPU; boot and fetch
    /// nothing (the matrix and bundles: explaining must not cost a boot).
    Cached,
    /// No probe, and nothing fetched: only the records and the files on this machine
    /// (`explain --no-probe`).
    Off,
}

/// How `explain` may measure.
#[derive(Debug, Clone)]
pub struct ExplainOptions {
    pub probe: ProbePolicy,
    pub cache_root: PathBuf,
    pub mirror: Option<String>,
}

impl ExplainOptions {
    /// With the user's cache and mirror.
    pub fn new(probe: ProbePolicy) -> Result<ExplainOptions> {
        Ok(ExplainOptions {
            probe,
            cache_root: crate::sys::fsx::cache_root()?,
            mirror: None,
        })
    }

    /// Inputs may be fetched or built through their providers.
    fn fetch(&self) -> bool {
        self.probe == ProbePolicy::Run
    }

    fn providers(&self) -> crate::inputs::providers::ProviderContext {
        crate::inputs::providers::ProviderContext {
            mirror: self.mirror.clone(),
            cache_root: self.cache_root.clone(),
        }
    }
}

/// The inputs the run booted, as its records name them: `case.json`'s `inputs`, else what its
/// `result.json` says of the firmware.
fn run_inputs(ev: &Evidence) -> Vec<InputRecord> {
    if let Some(c) = ev.case.as_ref().filter(|c| !c.inputs.is_empty()) {
        return c.inputs.clone();
    }
    let fw = &ev.result.firmware;
    let mut out = Vec::new();
    for (role, f) in [
        ("firmware-code", fw.code.as_ref()),
        ("vars-template", fw.vars_template.as_ref()),
    ] {
        if let Some(f) = f {
            let mut i = InputRecord::new(role, &f.path);
            i.sha256 = Some(f.sha256.clone());
            out.push(i);
        }
    }
    out
}

/// The run's firmware code image on this machine: its recorded path (`~` expanded: a bundle's)
/// when it still holds the recorded bytes, else bootwatch's cache by sha256, else (with
/// allowed to fetch) fetched again through its provider, as `bootwatch replay` finds it.
async fn find_firmware_code(
    ev: &Evidence,
    opts: &ExplainOptions,
    cancel: &CancellationToken,
) -> std::result::Result<PathBuf, String> {
    let inputs = run_inputs(ev);
    let code = inputs
        .iter()
        .find(|i| i.role == "firmware-code")
        .ok_or("the run records no firmware code image")?;
    let found = match crate::plan::replay::locate(code, &opts.cache_root).await {
        Ok(c) => Ok(c),
        Err(_) if opts.fetch() => {
            let vars = inputs.iter().find(|i| i.role == "vars-template");
            crate::plan::replay::find_firmware(code, vars, &opts.providers(), cancel)
                .await
                .map(|(c, _)| c)
        }
        Err(e) => Err(e),
    };
    found.map_err(|e| e.to_string())
}

/// Adds the facts of the run's firmware code image, read offline (its drivers, which issue SMCCC
/// calls and which of those go beyond PSCI): only from a file with the sha256 the run booted.
async fn inspect_run_firmware(
    ev: &Evidence,
    opts: &ExplainOptions,
    cancel: &CancellationToken,
    facts: &mut Facts,
    notes: &mut Vec<String>,
) {
    let code = match find_firmware_code(ev, opts, cancel).await {
        Ok(c) => c,
        Err(e) => {
            notes.push(format!("firmware image not inspected: {e}"));
            return;
        }
    };
    match crate::plan::probe::inspect_firmware(&code).await {
        Ok(ins) => facts.merge_prefixed("", ins.facts),
        Err(e) => notes.push(format!("firmware image not inspected: {e:#}")),
    }
}

/// What `explain` used of the firmware probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeUse {
    /// Its cache key (`<cache>/probe/results/<key>/`).
    pub key: String,
    /// Its report came from the cache: nothing was booted for this explanation.
    pub reused: bool,
    pub qemu: String,
    pub firmware: String,
    pub cpu: String,
    /// How the probe's boot ended (`qemu-exited`: it ran to its end and powered off).
    pub verdict: String,
    /// The probe printed everything (false: cut short, e.g. the firmware crashed first).
    pub complete: bool,
    /// Its console and records.
    pub case_dir: PathBuf,
    pub made_at: String,
}

/// The facts the families name that only the probe measures, and nothing measured yet.
fn probe_facts_wanted(facts: &Facts) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in &KnownBugs::embedded().family {
        for c in f.require.iter().chain(&f.support) {
            if keys::PROBED.contains(&c.fact.as_str())
                && facts.get(&c.fact).is_none()
                && !out.contains(&c.fact)
            {
                out.push(c.fact.clone());
            }
        }
    }
    out
}

/// The firmware probe under the run's own QEMU, firmware (and vars template) and CPU, when the
/// families name facts only it measures: its cached report when there is one (the key is made
/// from the content hashes the run's records give), else (with [`ProbePolicy::Run`]) a boot of
/// it. Its facts are added where nothing else measured them.
async fn probe_run(
    ev: &Evidence,
    opts: &ExplainOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
    facts: &mut Facts,
    notes: &mut Vec<String>,
) -> Option<ProbeUse> {
    let wanted = probe_facts_wanted(facts);
    if wanted.is_empty() {
        return None;
    }
    let what = wanted.join(", ");
    if facts.get("run.exit_code").and_then(|v| v.as_u64()) != Some(1) {
        notes.push(format!(
            "the firmware probe was not run: the run did not fail ({what} not measured)"
        ));
        return None;
    }
    if opts.probe == ProbePolicy::Off {
        notes.push(format!(
            "the firmware probe was not run (--no-probe): {what} not measured"
        ));
        return None;
    }
    let inputs = run_inputs(ev);
    let role = |r: &str| inputs.iter().find(|i| i.role == r);
    let (Some(qi), Some(ci)) = (role("qemu"), role("firmware-code")) else {
        notes.push(format!(
            "the firmware probe was not run: the run's records name no QEMU or firmware ({what} not measured)"
        ));
        return None;
    };
    let (Some(qemu_sha), Some(code_sha)) = (qi.sha256.clone(), ci.sha256.clone()) else {
        notes.push(format!(
            "the firmware probe was not run: the run's records give no sha256 of its QEMU or firmware ({what} not measured)"
        ));
        return None;
    };
    let vi = role("vars-template");
    let vars_sha = vi.and_then(|v| v.sha256.clone()).unwrap_or_default();
    let cpu = ev.result.cpu.clone();
    // The probe this host would boot (under its own accelerator, as `probe_firmware` does).
    let accel = crate::sys::host::host_facts().best_accel();
    let key = crate::plan::probe::probe_key(&qemu_sha, &code_sha, &vars_sha, &cpu, accel.as_str());
    let report = match crate::plan::probe::cached_report(&opts.cache_root, &key) {
        Some(r) => r,
        None if opts.probe == ProbePolicy::Cached => {
            notes.push(format!(
                "no firmware probe of this QEMU, firmware and CPU in the cache (`bootwatch explain` on the run boots it): {what} not measured"
            ));
            return None;
        }
        None => match boot_probe(ev, qi, ci, vi, &cpu, opts, cancel, sink).await {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!(
                    "the firmware probe could not be run ({e:#}): {what} not measured"
                ));
                return None;
            }
        },
    };
    let complete = report.facts.get(keys::PROBE_COMPLETE) == Some(&serde_json::Value::Bool(true));
    if !complete {
        notes.push(format!(
            "the firmware probe did not run to its end under this firmware (its boot: {}): the facts it did not reach are not measured",
            report.outcome.verdict.as_str()
        ));
    }
    if let Some(a) = report.facts.get(keys::ACCELERATOR).and_then(|v| v.as_str())
        && a != ev.result.accelerator
    {
        notes.push(format!(
            "the firmware probe ran under {a}, the run under {}",
            ev.result.accelerator
        ));
    }
    for (k, v) in report.facts.iter() {
        if facts.get(k).is_none() {
            facts.set(k, v.clone());
        }
    }
    Some(ProbeUse {
        key: report.key,
        reused: report.reused,
        qemu: report.qemu,
        firmware: report.firmware,
        cpu: report.cpu,
        verdict: report.outcome.verdict.as_str().to_string(),
        complete,
        case_dir: report.case_dir,
        made_at: report.made_at,
    })
}

/// Boots the probe on the run's QEMU and firmware, found again as `bootwatch replay` finds
/// them (the same bytes: their sha256 are the records').
#[allow(clippy::too_many_arguments)]
async fn boot_probe(
    ev: &Evidence,
    qi: &InputRecord,
    ci: &InputRecord,
    vi: Option<&InputRecord>,
    cpu: &str,
    opts: &ExplainOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<crate::plan::probe::ProbeReport> {
    use crate::inputs::providers::{ResolvedFirmware, ResolvedQemu};
    let ctx = opts.providers();
    let (binary, exec) = crate::plan::replay::find_qemu(qi, &ctx, cancel).await?;
    let (code, vars_template) = crate::plan::replay::find_firmware(ci, vi, &ctx, cancel).await?;
    let spec = |i: &InputRecord, p: &Path| {
        i.provider
            .clone()
            .unwrap_or_else(|| format!("path:{}", p.display()))
    };
    let qemu = ResolvedQemu {
        spec: spec(qi, &binary),
        version: qi
            .version
            .clone()
            .or_else(|| ev.result.qemu.version.clone())
            .unwrap_or_default(),
        version_line: String::new(),
        package: qi.package_version.clone(),
        sha256: qi.sha256.clone().unwrap_or_default(),
        origin: qi.clone(),
        binary,
        exec,
    };
    let firmware = ResolvedFirmware {
        spec: spec(ci, &code),
        package: ci.package_version.clone(),
        code_sha256: ci.sha256.clone().unwrap_or_default(),
        origin: ci.clone(),
        source_build: None,
        code,
        vars_template,
    };
    crate::plan::probe::probe_firmware(
        &qemu,
        &firmware,
        cpu,
        &opts.cache_root,
        crate::plan::probe::Reuse::Cached,
        cancel,
        sink,
    )
    .await
}

/// Reads the evidence under `path` (a run, a cell, a bundle or its `.tar.gz`), measures, and
/// matches.
pub async fn explain(
    path: &Path,
    opts: &ExplainOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<(Evidence, Explanation)> {
    let p = path.to_path_buf();
    let ev = crate::engine::disk::blocking(move || evidence::load(&p)).await?;
    explain_evidence(ev, opts, cancel, sink).await
}

/// Measures and matches evidence already read.
pub async fn explain_evidence(
    ev: Evidence,
    opts: &ExplainOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<(Evidence, Explanation)> {
    let t = std::time::Instant::now();
    let mut notes = Vec::new();
    let mut facts = run_facts(&ev);
    let chain = match chain_of_run(&ev).await {
        Ok(Some(c)) => Some(c),
        Ok(None) if ev.from_bundle => {
            notes.push(
                "boot chain not inspected: a bundle carries no disks, and the run's disks are not on this machine"
                    .into(),
            );
            None
        }
        Ok(None) => {
            notes.push(
                "boot chain not inspected: the run kept no disk (boot with --keep-overlay, or run a scenario, to keep it)"
                    .into(),
            );
            None
        }
        Err(e) => {
            notes.push(format!("boot chain not inspected: {e:#}"));
            None
        }
    };
    let mut replaced = Vec::new();
    if let Some(c) = &chain {
        facts.merge_prefixed("", c.facts());
        add_fault_facts(&mut facts, c);
        replaced = attribute(&ev, c);
        if let Some(first) = c.first()
            && let Some(r) = replaced.iter().find(|r| r.path == first.path)
        {
            facts.set("chain.first.replaced_by", r.packages.clone());
        }
        if ev.base.is_none() {
            notes.push("no base image: which binaries changed is not known".into());
        }
        if c.boot_order.is_none() {
            notes.push(
                "no vars store (or no BootOrder in it): the boot path is the removable path only"
                    .into(),
            );
        }
    }
    let chain_s = t.elapsed().as_secs_f64();
    inspect_run_firmware(&ev, opts, cancel, &mut facts, &mut notes).await;
    let image_s = t.elapsed().as_secs_f64() - chain_s;
    let probe = probe_run(&ev, opts, cancel, sink, &mut facts, &mut notes).await;
    tracing::debug!(
        "explain {}: chain {chain_s:.3} s, firmware image {image_s:.3} s, probe {:.3} s",
        ev.dir.display(),
        t.elapsed().as_secs_f64() - chain_s - image_s
    );
    let results = KnownBugs::embedded().explain(&facts);
    let (mut families, mut undecided, mut ruled_out) = (Vec::new(), Vec::new(), Vec::new());
    let mut ruled_out_by = BTreeMap::new();
    for r in results {
        match r.status {
            Status::Match => families.push(r),
            Status::Undecided => undecided.push(r),
            Status::RuledOut => {
                let failed: Vec<ConditionResult> =
                    r.unmatched.into_iter().filter(|c| c.required).collect();
                ruled_out_by.insert(r.id.clone(), failed);
                ruled_out.push(r.id);
            }
        }
    }
    let outcome = ev
        .case
        .as_ref()
        .and_then(|c| {
            c.boots
                .iter()
                .rev()
                .find(|b| b.session == ev.result.session && b.outcome.exit_code == 1)
                .map(|b| b.outcome.clone())
        })
        .unwrap_or_else(|| ev.result.outcome.clone());
    let x = Explanation {
        schema: EXPLAIN_SCHEMA.into(),
        run: ev.shown.clone(),
        session: ev.result.session,
        outcome,
        families,
        undecided,
        ruled_out,
        ruled_out_by,
        replaced,
        facts,
        chain,
        probe,
        notes,
        workarounds_tried: Vec::new(),
    };
    Ok((ev, x))
}

/// The boot chain of the run's disk: its kept overlay (or the image it booted), compared with
/// the bottom of its backing chain (the install media), with the run's vars store.
pub async fn chain_of_run(ev: &Evidence) -> Result<Option<Chain>> {
    let Some(disk) = ev.disk.clone().or_else(|| ev.raw_disks.first().cloned()) else {
        return Ok(None);
    };
    let base = match &ev.base {
        Some(_) => Some(bottom_of_chain(&disk).await?).filter(|b| *b != disk),
        None => None,
    };
    let chain =
        crate::inputs::images::chain::inspect_disk(&disk, base.as_deref(), ev.vars.as_deref())
            .await?;
    Ok(Some(chain))
}

/// The last file of `disk`'s backing chain (`disk` itself when it has no backing file).
pub async fn bottom_of_chain(disk: &Path) -> Result<PathBuf> {
    let qi = crate::inputs::images::overlay::qemu_img()?;
    let mut at = disk.to_path_buf();
    for _ in 0..16 {
        let info = crate::inputs::images::overlay::info(&qi, &at).await?;
        let next = info["full-backing-filename"]
            .as_str()
            .or(info["backing-filename"].as_str());
        match next {
            Some(n) => {
                let p = PathBuf::from(n);
                at = if p.is_absolute() {
                    p
                } else {
                    at.parent().unwrap_or(Path::new("/")).join(p)
                };
            }
            None => return Ok(at),
        }
    }
    anyhow::bail!("{}: backing chain deeper than 16", disk.display())
}

/// The `run.*` facts: the verdict of the explained boot, how it was run, what the upgrade
/// changed.
pub fn run_facts(ev: &Evidence) -> Facts {
    let mut f = Facts::new();
    let r = &ev.result;
    let boot_outcome = ev
        .case
        .as_ref()
        .and_then(|c| {
            c.boots
                .iter()
                .rev()
                .find(|b| b.session == r.session && b.outcome.exit_code == 1)
        })
        .map(|b| (b.outcome.clone(), b.boot.clone()));
    let (outcome, boot) = match boot_outcome {
        Some((o, b)) => (o, Some(b)),
        None => (r.outcome.clone(), r.boots.last().cloned()),
    };
    f.set("run.verdict", outcome.verdict.as_str());
    f.set("run.stage", outcome.stage.as_str());
    f.set("run.before_grub", outcome.before_grub);
    f.set("run.exit_code", outcome.exit_code);
    let findings = boot
        .as_ref()
        .map_or(r.findings.clone(), |b| b.findings.clone());
    let exception = findings.iter().rev().find_map(|fi| fi.exception.clone());
    if let Some(x) = exception {
        f.set("run.exception_kind", x.kind.clone());
        if let Some(addr) = x.address.as_deref().and_then(|a| {
            u64::from_str_radix(a.trim_start_matches("0x").trim_start_matches("0X"), 16).ok()
        }) {
            f.set("run.fault_address", format!("{addr:#018x}"));
            f.set("run.fault_page_offset", addr & 0xfff);
            f.set("run.fault_page_aligned", addr & 0xfff == 0);
        }
        if let Some(m) = x.backtrace.iter().find_map(|fr| fr.module.clone()) {
            f.set("run.fault_module", m.trim_end_matches(".dll").to_string());
        }
        if let Some(esr) = &x.esr {
            f.set("run.esr", esr.clone());
        }
    }
    if let Some(b) = &boot {
        let stages: Vec<&str> = b.timeline.iter().map(|m| m.stage.as_str()).collect();
        let mut reached: Vec<&str> = Vec::new();
        for s in stages {
            if !reached.contains(&s) {
                reached.push(s);
            }
        }
        f.set(
            "run.boot_option_started",
            reached.iter().any(|s| *s != "firmware" && *s != "none"),
        );
        f.set("run.stages_reached", reached);
    }
    if let Some(v) = &r.qemu.version {
        f.set("run.qemu_version", v.clone());
    }
    if let Some(p) = &r.qemu.package {
        f.set("run.qemu_package", p.clone());
    }
    f.set("run.accelerator", r.accelerator.clone());
    f.set("run.cpu", r.cpu.clone());
    f.set("run.machine", r.machine.clone());
    if let Some(v) = r.firmware.banner_version.as_ref().filter(|v| !v.is_empty()) {
        f.set("run.firmware_banner_version", v.clone());
    }
    if let Some(c) = &r.firmware.code {
        f.set("run.firmware_code_sha256", c.sha256.clone());
    }
    let fw_cfg: Vec<String> = r
        .argv
        .windows(2)
        .filter(|w| w[0] == "-fw_cfg")
        .map(|w| w[1].clone())
        .collect();
    f.set(
        "run.memattr_knob",
        fw_cfg
            .iter()
            .any(|a| a.contains("opt/org.tianocore/UninstallMemAttrProtocol")),
    );
    f.set("run.fw_cfg", fw_cfg);
    f.set(
        "run.usb_storage",
        r.argv
            .iter()
            .any(|a| a.contains("usb-storage") || a.contains("usb-bot")),
    );
    if let Some(cell) = &ev.cell {
        if let Some(v) = &cell.firmware_version {
            f.set("run.firmware_version", v.clone());
        }
        f.set("run.cell", cell.id.clone());
    }
    if let Some(c) = &ev.case {
        if let Some(i) = &c.image {
            f.set("run.image", i.clone());
        }
        if let Some(u) = &c.update {
            f.set("run.update", u.clone());
        }
        f.set("run.suspects", c.suspects.clone());
    }
    if let Some(c) = upgrading_case(ev) {
        let boot_chain: Vec<String> = c
            .package_diff
            .iter()
            .filter(|p| crate::engine::guest::is_boot_chain_package(&p.name))
            .map(|p| p.name.clone())
            .collect();
        f.set("run.changed_boot_packages", boot_chain);
        f.set(
            "run.changed_packages",
            c.package_diff.iter().map(change_text).collect::<Vec<_>>(),
        );
    }
    f
}

/// The case whose upgrade changed the run's disk: the run's own (a scenario that upgrades),
/// else the one that made the `@upgraded` image it booted.
fn upgrading_case(ev: &Evidence) -> Option<&crate::engine::record::CaseRecord> {
    ev.case
        .as_ref()
        .filter(|c| !c.packages.is_empty())
        .or(ev.upgrade.as_ref())
        .filter(|c| !c.packages.is_empty())
}

fn change_text(p: &crate::engine::record::PackageChange) -> String {
    format!(
        "{} {} -> {}",
        p.name,
        p.old.as_deref().unwrap_or("(none)"),
        p.new.as_deref().unwrap_or("(removed)")
    )
}

/// `chain.fault_at_entry_of`: the boot-path binaries whose entry point has the fault's page
/// offset (edk2 loads images page-aligned, so a fault at an image's entry point has it).
fn add_fault_facts(f: &mut Facts, c: &Chain) {
    let Some(off) = f.get("run.fault_page_offset").and_then(|v| v.as_u64()) else {
        return;
    };
    let at: Vec<String> = c
        .binaries
        .iter()
        .filter(|b| {
            b.pe.as_ref()
                .is_some_and(|p| u64::from(p.entry_rva) & 0xfff == off)
        })
        .map(|b| b.path.clone())
        .collect();
    f.set("chain.fault_at_entry_of", at);
}

/// Which changed packages put each changed boot-path binary there.
fn attribute(ev: &Evidence, c: &Chain) -> Vec<Replaced> {
    let changes: Vec<&crate::engine::record::PackageChange> = upgrading_case(ev)
        .map(|c| {
            c.package_diff
                .iter()
                .filter(|p| crate::engine::guest::is_boot_chain_package(&p.name))
                .collect()
        })
        .unwrap_or_default();
    let log: String = upgrading_case(ev)
        .map(|c| {
            c.steps
                .iter()
                .filter(|s| s.step == "upgrade")
                .flat_map(|s| s.commands.iter().map(|c| c.output.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    c.binaries
        .iter()
        .filter(|b| b.changed == Some(true))
        .map(|b| {
            let (packages, by) = packages_for(b, &changes, &log);
            Replaced {
                path: b.path.clone(),
                via: b.via.clone(),
                now: describe(b),
                was: b.original.as_deref().map(describe),
                packages: packages.iter().map(|p| change_text(p)).collect(),
                attributed_by: by,
            }
        })
        .collect()
}

fn packages_for<'a>(
    b: &ChainBinary,
    changes: &[&'a crate::engine::record::PackageChange],
    log: &str,
) -> (
    Vec<&'a crate::engine::record::PackageChange>,
    Option<String>,
) {
    if changes.is_empty() {
        return (Vec::new(), None);
    }
    // dpkg prints "Setting up NAME (VERSION) ..." and then what the maintainer script prints.
    let mut current: Option<&str> = None;
    let mut named = Vec::new();
    let needle = b.path.to_ascii_lowercase();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Setting up ") {
            current = rest.split_whitespace().next();
            continue;
        }
        if line.starts_with("Processing triggers for ") || line.starts_with("Unpacking ") {
            current = None;
            continue;
        }
        if let Some(pkg) = current
            && line.to_ascii_lowercase().contains(&needle)
        {
            let pkg = pkg.split(':').next().unwrap_or(pkg);
            if let Some(ch) = changes.iter().find(|c| c.name == pkg)
                && !named
                    .iter()
                    .any(|n: &&crate::engine::record::PackageChange| n.name == pkg)
            {
                named.push(*ch);
            }
        }
    }
    if !named.is_empty() {
        return (named, Some("upgrade log".into()));
    }
    let program = b
        .original
        .as_ref()
        .and_then(|o| o.pe.as_ref())
        .map(|p| p.kind.as_str())
        .filter(|k| *k == "shim" || *k == "grub");
    if let Some(k) = program {
        let same: Vec<_> = changes
            .iter()
            .copied()
            .filter(|c| c.name.contains(k))
            .collect();
        if !same.is_empty() {
            return (same, Some("same program".into()));
        }
    }
    (
        changes.to_vec(),
        Some("boot-chain packages the upgrade changed".into()),
    )
}

/// `shim 16.1 (SBAT shim.debian 16.1), NX_COMPAT no, 954368 bytes`.
pub fn describe(b: &ChainBinary) -> String {
    let Some(pe) = &b.pe else {
        return format!(
            "not a PE image ({}), {} bytes",
            b.error.as_deref().unwrap_or("unreadable"),
            b.size
        );
    };
    let what = match (pe.kind.as_str(), &pe.version) {
        ("unknown", _) => format!("an unidentified {} EFI binary", pe.machine_name),
        (k, Some(v)) => format!("{k} {v}"),
        (k, None) => k.to_string(),
    };
    let sbat = match pe.sbat.last() {
        Some(e) if pe.sbat.len() > 1 => format!("SBAT {} {}", e.component, e.version),
        _ => "no SBAT".into(),
    };
    format!(
        "{what} ({sbat}, NX_COMPAT {}, {} bytes, sha256 {})",
        if pe.nx_compat { "yes" } else { "no" },
        b.size,
        &b.sha256[..12.min(b.sha256.len())]
    )
}
