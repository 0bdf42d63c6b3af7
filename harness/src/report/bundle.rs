//! `bootwatch bundle`: one `.tar.gz` a maintainer can read and anyone can replay, made only from
//! the files a run, a matrix cell or a bisection left (the records already say what every input
//! was and where it came from: `case.json`'s `inputs`).
//!
//! Inputs, by what their directory holds ([`Kind`]):
//! - a case directory (`case.json`): one run (`bootwatch boot`, a scenario, a demo case);
//! - a matrix cell (`cell.json`, its runs in `run-N/`): every repeat, and k of N in the report;
//! - a bisection (`bisect.json`, `bisect.md`, `steps/*/run-K/`): the first bad and last good
//!   steps' runs, and those builds with their provenance in the report. (Read as JSON by field
//!   name, so the bundle needs nothing of the bisect module: another input kind is one more arm
//!   of [`Kind::detect`] and [`collect`].) A run's or cell's bundle can carry a bisection too
//!   (`bootwatch bundle DIR --bisect BISECTION`).
//!
//! Layout of the archive (one top directory, `<name>/`):
//! - `bundle.json` ([`BundleRecord`]): kind, outcome, repeats, inputs with provenance and hashes,
//!   what [`crate::plan::replay`] needs, and the sha256 of every file of the bundle;
//! - `REPORT.md`: title, versions, steps to reproduce, expected and actual, the exception block;
//! - `repro.sh`: checks the artifacts' hashes and runs QEMU with the recorded command line (the
//!   recorded paths as variables, the home directory as `${HOME}` where a path starts with it);
//! - `qemu-argv.txt`: the exact argv, one argument a line; `host.json`: OS, kernel, CPU, accelerator;
//! - `runs/<run>/`: each run's `case.json`, `result.json`, `serial.raw`, `console.log`,
//!   `qmp.jsonl`, `qemu.stderr`, `hang/` (and later sessions' `session-N/`);
//! - `cell.json`, and `bisect.json` and `bisect.md`, as the input was.
//!
//! Never included: `secrets.json`, disks (overlays, seeds), vars stores, sockets. Every text
//! file goes through [`Redactor`] (the password of `secrets.json` files too), and so does the
//! raw serial log, byte-wise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::verdict::Outcome;
use crate::engine::record::{CaseRecord, InputRecord, RunResult, Secrets};
use crate::report::redact::{Redactor, path_occurrences};

pub const BUNDLE_SCHEMA: &str = "bootwatch.bundle/1";

/// What was bundled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Run,
    Cell,
    Bisect,
}

impl Kind {
    /// What the directory is, by the record it holds.
    pub fn detect(dir: &Path) -> Option<Kind> {
        if dir.join("bisect.json").is_file() {
            Some(Kind::Bisect)
        } else if dir.join("cell.json").is_file() {
            Some(Kind::Cell)
        } else if dir.join("case.json").is_file() {
            Some(Kind::Run)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Cell => "cell",
            Kind::Bisect => "bisect",
        }
    }
}

/// How often the failure showed over repeats (a cell's runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Repeats {
    pub runs: u32,
    /// Runs whose verdict was a guest failure.
    pub failed: u32,
    /// Each run's verdict, in order.
    pub verdicts: Vec<String>,
}

/// What `bootwatch replay` boots: the machine of the bundled run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySpec {
    pub machine: String,
    pub cpu: String,
    pub accelerator: String,
    pub smp: u32,
    pub memory_mib: u32,
    /// `skip` or `default`.
    pub firmware_wait: String,
    /// `grub`, `kernel` or `login`; none: to a failure, power-off, silence or timeout.
    pub target: Option<String>,
    pub timeout_s: f64,
    pub silence_s: f64,
    /// Disks booted with `snapshot=on`.
    pub snapshot: bool,
    /// A user-mode network (forwards are not replayed: they bind host ports).
    pub network: bool,
    /// Arguments the user added to QEMU's command line.
    pub extra_args: Vec<String>,
    /// The case's steps (replay boots `boot`-only cases; others it refuses).
    pub steps: Vec<String>,
    /// The verdict to compare with.
    pub verdict: String,
}

/// `bundle.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleRecord {
    pub schema: String,
    pub kind: Kind,
    pub name: String,
    pub title: String,
    pub created_at: String,
    pub bootwatch_version: String,
    /// The bundled run's outcome (a cell's: its worst run; a bisection's: the first bad step).
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Repeats>,
    /// The inputs of the run replay boots, with provenance and sha256.
    pub inputs: Vec<InputRecord>,
    pub replay: ReplaySpec,
    /// The bisection's answer, when the bundle is of one (`result` of `bisect.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bisect: Option<serde_json::Value>,
    /// Which run directory of the bundle is the one replay boots (`runs/<name>`).
    pub primary_run: String,
    /// Every other file of the bundle and its sha256.
    pub files: BTreeMap<String, String>,
    /// What was redacted: kinds of rules, never the values.
    pub redacted: Vec<String>,
    /// For a run or cell whose guest failed: the known bug `bootwatch explain` names, or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<crate::plan::explain::Brief>,
}

/// One run directory to include: where it is and its name in the bundle.
struct RunDir {
    src: PathBuf,
    name: String,
}

/// What the input directory says, read from its records.
struct Collected {
    kind: Kind,
    name: String,
    runs: Vec<RunDir>,
    /// Extra top-level files (`cell.json`, `bisect.json`, `bisect.md`).
    extra: Vec<(PathBuf, String)>,
    repeats: Option<Repeats>,
    bisect: Option<Bisection>,
}

/// A bisection's answer, as the bundle reports it.
struct Bisection {
    /// `result` of `bisect.json`.
    result: serde_json::Value,
    /// Its one-sentence answer (`message`).
    message: String,
    /// `qemu`, `firmware` or `packages`.
    axis: String,
    /// How many builds the list had.
    builds: usize,
    /// The builds on each side of the change, with where they came from.
    points: Vec<BuildPoint>,
}

/// One build of a bisection's answer.
struct BuildPoint {
    /// `first bad build`, `last good build`, `first good build` or `last bad build`.
    label: &'static str,
    build: String,
    /// The bisected input (QEMU or firmware code) of that build's run, from its `case.json`:
    /// the provider, Debian package and version or source commit, sha256.
    input: Option<InputRecord>,
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))
}

fn collect(dir: &Path) -> Result<Collected> {
    let kind = Kind::detect(dir).ok_or_else(|| {
        anyhow!(
            "{} holds no case.json, cell.json or bisect.json: give a run's results directory, a \
             matrix cell's (RESULTS/cells/ID) or a bisection's",
            dir.display()
        )
    })?;
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    match kind {
        Kind::Run => Ok(Collected {
            kind,
            name: base.clone(),
            runs: vec![RunDir {
                src: dir.to_path_buf(),
                name: "run".into(),
            }],
            extra: Vec::new(),
            repeats: None,
            bisect: None,
        }),
        Kind::Cell => {
            let cell: crate::plan::matrix::model::CellRecord = read_json(&dir.join("cell.json"))?;
            let mut runs = Vec::new();
            let mut verdicts = Vec::new();
            let mut failed = 0;
            for r in &cell.runs {
                let name = format!("run-{}", r.n);
                let src = dir.join(&name);
                if src.join("case.json").is_file() {
                    runs.push(RunDir { src, name });
                }
                verdicts.push(r.outcome.verdict.as_str().to_string());
                if r.outcome.is_guest_failure() {
                    failed += 1;
                }
            }
            if runs.is_empty() {
                bail!("cell {} has no run with a case.json", cell.id);
            }
            // The run replay boots: the first whose verdict is the cell's.
            runs.sort_by_key(|r| {
                let same = cell
                    .runs
                    .iter()
                    .find(|x| format!("run-{}", x.n) == r.name)
                    .is_some_and(|x| x.outcome.verdict == cell.outcome.verdict);
                (!same, r.name.clone())
            });
            Ok(Collected {
                kind,
                name: format!("cell-{}", cell.id),
                runs,
                extra: vec![(dir.join("cell.json"), "cell.json".into())],
                repeats: Some(Repeats {
                    runs: cell.runs.len() as u32,
                    failed,
                    verdicts,
                }),
                bisect: None,
            })
        }
        Kind::Bisect => collect_bisect(dir, &base),
    }
}

/// A bisection's directory: its answer, and the runs of the builds on each side of the change.
fn collect_bisect(dir: &Path, base: &str) -> Result<Collected> {
    let b: serde_json::Value = read_json(&dir.join("bisect.json"))?;
    let result = b.get("result").cloned().unwrap_or(serde_json::Value::Null);
    let axis = b
        .get("axis")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let role = match axis.as_str() {
        "qemu" => Some("qemu"),
        "firmware" => Some("firmware-code"),
        _ => None,
    };
    let steps = b
        .get("steps")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    let mut runs = Vec::new();
    let mut points = Vec::new();
    for (key, label) in [
        ("first_bad", "first bad build"),
        ("last_good", "last good build"),
        ("last_bad", "last bad build"),
        ("first_good", "first good build"),
    ] {
        let Some(point) = result.get(key) else {
            continue;
        };
        let step = point.get("step").and_then(|v| v.as_u64());
        let dir_of_step = steps
            .iter()
            .find(|s| step.is_some() && s.get("n").and_then(|v| v.as_u64()) == step)
            .and_then(|s| s.get("dir"))
            .and_then(|d| d.as_str());
        let mut found: Vec<PathBuf> = Vec::new();
        if let Some(sdir) = dir_of_step {
            let sdir = dir.join(sdir);
            found = std::fs::read_dir(&sdir)
                .map(|r| {
                    r.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.join("case.json").is_file())
                        .collect()
                })
                .unwrap_or_default();
            if sdir.join("case.json").is_file() {
                found.push(sdir.clone());
            }
            found.sort();
        }
        // The deciding run's (the point's `run.dir`), else the step's first.
        let deciding = point
            .pointer("/run/dir")
            .and_then(|d| d.as_str())
            .map(|d| dir.join(d))
            .filter(|d| d.join("case.json").is_file())
            .or_else(|| found.first().cloned());
        // The deciding run first: the primary run of a bisection's bundle is its first bad
        // (or first good) build's.
        if let Some(d) = &deciding
            && let Some(i) = found.iter().position(|f| f == d)
        {
            let d = found.remove(i);
            found.insert(0, d);
        }
        if let Some(build) = point.get("build").and_then(|v| v.as_str()) {
            let input = deciding.as_ref().zip(role).and_then(|(d, role)| {
                read_json::<CaseRecord>(&d.join("case.json"))
                    .ok()
                    .and_then(|c| c.inputs.into_iter().find(|i| i.role == role))
            });
            points.push(BuildPoint {
                label,
                build: build.to_string(),
                input,
            });
        }
        for f in found {
            let name = format!(
                "{key}-{}",
                f.strip_prefix(dir)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .replace('/', "-")
            );
            if !runs.iter().any(|r: &RunDir| r.src == f) {
                runs.push(RunDir { src: f, name });
            }
        }
    }
    if runs.is_empty() {
        bail!(
            "bisection {} names no first bad or last good step with a run directory",
            dir.display()
        );
    }
    let mut extra = vec![(dir.join("bisect.json"), "bisect.json".to_string())];
    if dir.join("bisect.md").is_file() {
        extra.push((dir.join("bisect.md"), "bisect.md".into()));
    }
    Ok(Collected {
        kind: Kind::Bisect,
        name: format!(
            "bisect-{}",
            b.get("name").and_then(|n| n.as_str()).unwrap_or(base)
        ),
        runs,
        extra,
        repeats: None,
        bisect: Some(Bisection {
            result,
            message: b
                .get("message")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            axis,
            builds: b
                .get("candidates")
                .and_then(|v| v.as_array())
                .map_or(0, Vec::len),
            points,
        }),
    })
}

/// Files of a case directory a bundle takes: records, console, QMP, stderr, hang evidence, later
/// sessions' directories. Disks, stores, secrets and sockets are left out.
fn run_files(src: &Path) -> Vec<PathBuf> {
    const TAKE: &[&str] = &[
        "case.json",
        "result.json",
        "serial.raw",
        "console.log",
        "qmp.jsonl",
        "qemu.stderr",
    ];
    let mut out = Vec::new();
    let mut walk = vec![PathBuf::new()];
    while let Some(rel) = walk.pop() {
        let Ok(rd) = std::fs::read_dir(src.join(&rel)) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = rel.join(&name);
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && (name.starts_with("session-") || name == "hang") {
                walk.push(r);
            } else if ft.is_file() && (TAKE.contains(&name.as_str()) || rel.ends_with("hang")) {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

/// Files a bundle never carries as text to redact (images).
fn is_binary(name: &str) -> bool {
    name.ends_with(".ppm") || name.ends_with(".png")
}

/// Makes the bundle of `dir` at `out` (a `.tar.gz`); returns its record. With `bisect` (a
/// bisection's directory), a run's or cell's bundle carries that bisection's answer too: its
/// `bisect.json` and `bisect.md`, the runs of the builds on each side of the change, and those
/// builds in `REPORT.md` and `bundle.json`'s `bisect`.
pub fn make(dir: &Path, bisect: Option<&Path>, out: &Path) -> Result<BundleRecord> {
    make_explained(dir, bisect, out, None)
}

/// [`make`], with the explanation of the run's failure in `bundle.json` and `REPORT.md`.
pub fn make_explained(
    dir: &Path,
    bisect: Option<&Path>,
    out: &Path,
    explanation: Option<&crate::plan::explain::Brief>,
) -> Result<BundleRecord> {
    let mut c = collect(dir)?;
    if let Some(bdir) = bisect {
        if c.kind == Kind::Bisect {
            bail!(
                "{} is a bisection already: --bisect adds one to a run's or a cell's bundle",
                dir.display()
            );
        }
        if Kind::detect(bdir) != Some(Kind::Bisect) {
            bail!("{} holds no bisect.json", bdir.display());
        }
        let b = collect_bisect(bdir, "bisect")?;
        for r in b.runs {
            if !c.runs.iter().any(|x| x.src == r.src) {
                c.runs.push(r);
            }
        }
        c.extra.extend(b.extra);
        c.bisect = b.bisect;
    }
    let primary = &c.runs[0];
    let case: CaseRecord = read_json(&primary.src.join("case.json"))?;
    let result: RunResult = read_json(&primary.src.join("result.json"))?;
    // Secrets the runs' directories hold: their values are redacted wherever they appear.
    let mut secrets = Vec::new();
    for r in &c.runs {
        if let Ok(s) = read_json::<Secrets>(&r.src.join("secrets.json")) {
            secrets.push(s.password);
        }
    }
    let redactor = Redactor::for_this_host(&secrets);
    let top = sanitize(&c.name);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in &c.runs {
        for rel in run_files(&r.src) {
            let bytes = std::fs::read(r.src.join(&rel))
                .with_context(|| format!("reading {}", r.src.join(&rel).display()))?;
            let name = format!("runs/{}/{}", r.name, rel.to_string_lossy());
            let bytes = if is_binary(&name) {
                bytes
            } else {
                redactor.apply(&bytes)
            };
            files.insert(name, bytes);
        }
    }
    for (src, name) in &c.extra {
        let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        files.insert(name.clone(), redactor.apply(&bytes));
    }
    let outcome = match c.kind {
        Kind::Cell => {
            read_json::<crate::plan::matrix::model::CellRecord>(&dir.join("cell.json"))?.outcome
        }
        _ => case.outcome.clone(),
    };
    let replay = replay_spec(&case, &result);
    let title = title(&case, &result, &outcome);
    let host = serde_json::json!({
        "os": result.host.os,
        "kernel": result.host.kernel,
        "arch": result.host.arch,
        "cpus": result.host.cpus,
        "hostname": result.host.hostname,
        "accelerator": result.accelerator,
        "cpu_model": result.cpu,
    });
    files.insert("host.json".into(), redactor.apply(&pretty(&host)?));
    files.insert(
        "qemu-argv.txt".into(),
        redactor.apply(format!("{}\n", result.argv.join("\n")).as_bytes()),
    );
    let console = std::fs::read_to_string(primary.src.join("console.log")).unwrap_or_default();
    let report = report_md(&c, &case, &result, &outcome, &title, &console, explanation);
    files.insert("REPORT.md".into(), redactor.apply(report.as_bytes()));
    files.insert(
        "repro.sh".into(),
        redactor.apply(repro_sh(&case, &result, &title).as_bytes()),
    );
    let inputs: Vec<InputRecord> = case
        .inputs
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.path = PathBuf::from(redactor.apply_str(&i.path.to_string_lossy()));
            i.provider = i.provider.map(|p| redactor.apply_str(&p));
            i.note = redactor.apply_str(&i.note);
            i.url = i.url.map(|u| redactor.apply_str(&u));
            i
        })
        .collect();
    let mut record = BundleRecord {
        schema: BUNDLE_SCHEMA.into(),
        kind: c.kind,
        name: c.name.clone(),
        title: redactor.apply_str(&title),
        created_at: jiff::Timestamp::now().to_string(),
        bootwatch_version: env!("CARGO_PKG_VERSION").into(),
        outcome: Outcome {
            reason: redactor.apply_str(&outcome.reason),
            ..outcome
        },
        repeats: c.repeats.clone(),
        inputs,
        replay,
        bisect: c
            .bisect
            .as_ref()
            .map(|b| &b.result)
            .map(|b| {
                serde_json::from_slice::<serde_json::Value>(
                    &redactor.apply(&pretty(b).unwrap_or_default()),
                )
            })
            .transpose()
            .ok()
            .flatten(),
        primary_run: format!("runs/{}", primary.name),
        files: BTreeMap::new(),
        redacted: vec![
            "home directories (as ~)".into(),
            "the host's name (as <host>)".into(),
            "passwords and tokens (as <redacted>)".into(),
        ],
        explanation: explanation.map(|x| crate::plan::explain::Brief {
            run: redactor.apply_str(&x.run),
            error: x.error.as_deref().map(|e| redactor.apply_str(e)),
            ..x.clone()
        }),
    };
    record.files = files
        .iter()
        .map(|(n, b)| (n.clone(), hex::encode(Sha256::digest(b))))
        .collect();
    files.insert("bundle.json".into(), pretty(&record)?);
    write_tar_gz(out, &top, &files)?;
    Ok(record)
}

fn pretty<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v)?;
    b.push(b'\n');
    Ok(b)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect()
}

fn write_tar_gz(out: &Path, top: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    let tmp = out.with_extension("tmp");
    {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        for (name, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(if name.ends_with(".sh") { 0o755 } else { 0o644 });
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, format!("{top}/{name}"), bytes.as_slice())?;
        }
        let gz = tar.into_inner()?;
        let f = gz.finish()?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// An unpacked bundle: its record and files by name.
pub struct Opened {
    pub record: BundleRecord,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads a bundle (`.tar.gz`, or the directory it was unpacked into) and checks every file
/// against the sha256 its record gives.
pub fn open(path: &Path) -> Result<Opened> {
    let mut files = BTreeMap::new();
    if path.is_dir() {
        for e in walkdir(path)? {
            let rel = e
                .strip_prefix(path)
                .unwrap_or(&e)
                .to_string_lossy()
                .into_owned();
            files.insert(rel, std::fs::read(&e)?);
        }
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let mut total = 0u64;
        for e in ar
            .entries()
            .with_context(|| format!("reading {}", path.display()))?
        {
            let mut e = e?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e.path()?.to_string_lossy().into_owned();
            // Drop the top directory.
            let rel = name
                .split_once('/')
                .map_or(name.clone(), |(_, r)| r.to_string());
            let mut b = Vec::new();
            use std::io::Read;
            (&mut e).take(256 << 20).read_to_end(&mut b)?;
            total += b.len() as u64;
            if total > 1 << 30 {
                bail!(
                    "{}: more than 1 GiB unpacked; not a bootwatch bundle",
                    path.display()
                );
            }
            files.insert(rel, b);
        }
    }
    let rb = files.get("bundle.json").ok_or_else(|| {
        anyhow!(
            "{}: no bundle.json (not a bootwatch bundle)",
            path.display()
        )
    })?;
    let record: BundleRecord =
        serde_json::from_slice(rb).with_context(|| format!("{}: bundle.json", path.display()))?;
    if record.schema != BUNDLE_SCHEMA {
        bail!(
            "{}: bundle schema {} (this bootwatch reads {BUNDLE_SCHEMA})",
            path.display(),
            record.schema
        );
    }
    for (name, sha) in &record.files {
        let got = files
            .get(name)
            .map(|b| hex::encode(Sha256::digest(b)))
            .ok_or_else(|| anyhow!("{}: {name} is missing", path.display()))?;
        if &got != sha {
            bail!(
                "{}: {name} does not match its sha256 in bundle.json",
                path.display()
            );
        }
    }
    Ok(Opened { record, files })
}

fn walkdir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The machine replay boots, from the primary run's records.
fn replay_spec(case: &CaseRecord, r: &RunResult) -> ReplaySpec {
    let argv = &r.argv;
    // The VM's own arguments end with the RNG device; what follows was added by the user.
    let extra_args = argv
        .iter()
        .position(|a| a == "virtio-rng-pci")
        .map(|i| argv[i + 1..].to_vec())
        .unwrap_or_default();
    ReplaySpec {
        machine: r.machine.clone(),
        cpu: r.cpu.clone(),
        accelerator: r.accelerator.clone(),
        smp: r.smp,
        memory_mib: r.memory_mib,
        firmware_wait: r.firmware.wait.clone().unwrap_or_else(|| "skip".into()),
        target: r.target.map(|t| t.to_string()),
        timeout_s: r.timeout_s,
        silence_s: r.silence_s,
        snapshot: argv.iter().any(|a| a.contains(",snapshot=on,")),
        network: argv.iter().any(|a| a == "-netdev"),
        extra_args,
        steps: case.steps.iter().map(|s| s.step.clone()).collect(),
        verdict: case.outcome.verdict.as_str().to_string(),
    }
}

fn input<'a>(case: &'a CaseRecord, role: &str) -> Option<&'a InputRecord> {
    case.inputs.iter().find(|i| i.role == role)
}

/// `edk2 2026.08+ds-2`, `QEMU 5.2.0`: what the title and versions call an input.
fn short(i: Option<&InputRecord>, what: &str) -> String {
    let Some(i) = i else {
        return format!("{what} (unknown)");
    };
    match (&i.package_version, &i.version) {
        (Some(p), _) => format!("{what} {p}"),
        (None, Some(v)) => format!("{what} {v}"),
        _ => format!(
            "{what} {}",
            i.path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    }
}

fn title(case: &CaseRecord, r: &RunResult, o: &Outcome) -> String {
    let fw = r
        .firmware
        .banner_version
        .clone()
        .filter(|v| !v.is_empty())
        .map(|v| format!("edk2 {v}"))
        .unwrap_or_else(|| short(input(case, "firmware-code"), "edk2"));
    let qemu = format!(
        "QEMU {}",
        r.qemu.version.clone().unwrap_or_else(|| "?".into())
    );
    let what = match &r.finding {
        Some(f) if o.verdict.is_guest_failure() => f.text.trim().to_string(),
        _ => format!("{} at stage {}", o.verdict, o.stage),
    };
    format!(
        "{fw}: {what} on {qemu} ({}, {}, {})",
        r.machine,
        r.cpu,
        r.accelerator.to_uppercase()
    )
}

fn describe(i: &InputRecord) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &i.provider {
        parts.push(format!("provider `{p}`"));
    }
    if let (Some(p), Some(v)) = (&i.package, &i.package_version) {
        let suite = i
            .suite
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        parts.push(format!("Debian package `{p}` `{v}`{suite}"));
    } else if let Some(v) = &i.package_version {
        parts.push(format!("package version `{v}`"));
    }
    if let Some(v) = &i.version {
        parts.push(format!("version {v}"));
    }
    if let Some(u) = &i.url {
        parts.push(format!("from `{u}`"));
    }
    if let Some(c) = &i.source_commit {
        parts.push(format!("source commit `{c}`"));
    }
    if !i.note.is_empty() {
        parts.push(i.note.clone());
    }
    parts.join(", ")
}

/// The console lines of the decisive finding's dump: from its first line to its last (and the
/// lines of the rest of the log when the dump's end is not known), at most 200.
fn exception_block(console: &str, r: &RunResult) -> Option<String> {
    let f = r.finding.as_ref()?;
    let first = f.line.max(1) as usize;
    let last = f
        .exception
        .as_ref()
        .map(|x| x.last_line as usize)
        .filter(|l| *l >= first)
        .unwrap_or(first + 40);
    let lines: Vec<&str> = console.lines().collect();
    // console.log's lines carry the time: `[     0.459] text`.
    let strip = |l: &str| -> String {
        match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((_, t)) => t.to_string(),
            None => l
                .trim_start_matches('[')
                .split_once(']')
                .map_or(l.to_string(), |(_, t)| t.to_string()),
        }
    };
    let from = first.saturating_sub(1).min(lines.len());
    let to = last.min(lines.len()).min(from + 200);
    let mut block: Vec<String> = lines[from..to].iter().map(|l| strip(l)).collect();
    if block.is_empty() || !block[0].contains(f.text.trim()) {
        block = vec![f.text.clone()];
    }
    Some(block.join("\n"))
}

/// A fence that the text does not contain.
fn fence(text: &str) -> String {
    let mut f = "```".to_string();
    while text.contains(&f) {
        f.push('`');
    }
    f
}

/// Markdown table cell text: no pipes or newlines.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn report_md(
    c: &Collected,
    case: &CaseRecord,
    r: &RunResult,
    o: &Outcome,
    title: &str,
    console: &str,
    explanation: Option<&crate::plan::explain::Brief>,
) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# {}\n", cell(title));
    let _ = writeln!(m, "| | |\n| --- | --- |");
    let t = o
        .time_to_verdict_s
        .map(|t| format!(", {t:.2} s after power-on"))
        .unwrap_or_default();
    let before = if o.before_grub && o.verdict.is_guest_failure() {
        " (before GRUB)"
    } else {
        ""
    };
    let _ = writeln!(
        m,
        "| verdict | `{}` at stage `{}`{before}{t} |",
        o.verdict, o.stage
    );
    if let Some(rep) = &c.repeats {
        let _ = writeln!(
            m,
            "| repeats | failed in {} of {} runs ({}) |",
            rep.failed,
            rep.runs,
            rep.verdicts.join(", ")
        );
    }
    let q = input(case, "qemu");
    let _ = writeln!(
        m,
        "| QEMU | {}{} |",
        r.qemu.version.clone().unwrap_or_else(|| "?".into()),
        q.map(|q| format!(", {}", cell(&describe(q))))
            .unwrap_or_default()
    );
    for (role, what) in [
        ("firmware-code", "firmware code"),
        ("vars-template", "vars template"),
        ("image", "image"),
        ("disk", "disk"),
    ] {
        for i in case.inputs.iter().filter(|i| i.role == role) {
            let name = i
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sha = i
                .sha256
                .as_deref()
                .map(|s| format!(", sha256 `{s}`"))
                .unwrap_or_default();
            let d = describe(i);
            let d = if d.is_empty() {
                String::new()
            } else {
                format!("; {}", cell(&d))
            };
            let _ = writeln!(m, "| {what} | `{}`{sha}{d} |", cell(&name));
        }
    }
    if let Some(b) = r.firmware.banner_version.as_ref().filter(|b| !b.is_empty()) {
        let _ = writeln!(m, "| firmware banner | {} |", cell(b));
    }
    let _ = writeln!(
        m,
        "| machine | `-M {}`, `-cpu {}`, {} vCPU, {} MiB, {} |",
        r.machine,
        r.cpu,
        r.smp,
        r.memory_mib,
        r.accelerator.to_uppercase()
    );
    let _ = writeln!(
        m,
        "| host | {}, kernel {}, {}, {} CPUs |",
        cell(&r.host.os),
        cell(&r.host.kernel),
        r.host.arch,
        r.host.cpus
    );
    let _ = writeln!(m, "| bootwatch | {} |", r.bootwatch_version);
    if let Some(b) = &c.bisect {
        for point in &b.points {
            let d = point
                .input
                .as_ref()
                .map(|i| {
                    // The build is its provider's spelling: not said twice.
                    let i = InputRecord {
                        provider: i.provider.clone().filter(|spec| *spec != point.build),
                        ..i.clone()
                    };
                    let mut parts = vec![describe(&i)];
                    parts.extend(i.sha256.as_deref().map(|s| format!("sha256 `{s}`")));
                    parts.retain(|p| !p.is_empty());
                    parts.join(", ")
                })
                .filter(|d| !d.is_empty())
                .map(|d| format!("; {}", cell(&d)))
                .unwrap_or_default();
            let _ = writeln!(m, "| {} | `{}`{d} |", point.label, cell(&point.build));
        }
        if let Some(cs) = b
            .result
            .get("culprits")
            .and_then(|v| v.as_array())
            .filter(|a| !a.is_empty())
        {
            let names: Vec<String> = cs
                .iter()
                .filter_map(|v| v.as_str())
                .map(|s| format!("`{s}`"))
                .collect();
            let _ = writeln!(m, "| culprits | {} |", names.join(", "));
        }
    }
    m.push('\n');
    if let Some(b) = c.bisect.as_ref().filter(|b| !b.message.is_empty()) {
        let message = b.message.trim().trim_end_matches('.');
        let mut chars = message.chars();
        let message: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        let _ = writeln!(
            m,
            "## Bisection\n\n{}, over {} {}; every step is in `bisect.md`.\n",
            cell(&message),
            b.builds,
            match b.axis.as_str() {
                "qemu" => "QEMU builds",
                "firmware" => "firmware builds",
                _ => "packages",
            }
        );
    }

    let _ = writeln!(m, "## Steps to reproduce\n");
    let _ = writeln!(
        m,
        "1. Get the same artifacts (sha256 checked by `repro.sh` and `bootwatch replay`):"
    );
    for i in &case.inputs {
        let d = describe(i);
        let d = if d.is_empty() {
            String::new()
        } else {
            format!(" ({d})")
        };
        let _ = writeln!(m, "   - {}: `{}`{d}", i.role, i.path.display());
    }
    let image_boot = case.provision.is_some();
    if image_boot || r.argv.is_empty() {
        let _ = writeln!(
            m,
            "2. Run `bootwatch replay BUNDLE` (an image boot needs a fresh overlay and cloud-init seed, which it makes)."
        );
    } else {
        let _ = writeln!(
            m,
            "2. Run `sh repro.sh` from this bundle (QEMU with the recorded command line, the serial console on standard output), or `bootwatch replay BUNDLE`."
        );
    }
    let line = r.command_line.trim();
    if !line.is_empty() {
        let f = fence(line);
        let _ = writeln!(
            m,
            "\nThe command line of the run (sockets and the vars copy were in a private directory):\n\n{f}sh\n{line}\n{f}\n"
        );
    }
    if case.steps.len() > 1 {
        let names: Vec<&str> = case.steps.iter().map(|s| s.step.as_str()).collect();
        let _ = writeln!(m, "The case's steps: {}.\n", names.join(", "));
    }

    let _ = writeln!(m, "## Expected\n");
    let expected = match r.target {
        Some(t) => format!("The guest boots to the `{t}` stage."),
        None => "The firmware hands over to the boot loader (or the EFI application runs to its end) without an exception.".to_string(),
    };
    let _ = writeln!(m, "{expected}\n");
    let _ = writeln!(m, "## Actual\n");
    let _ = writeln!(m, "{}\n", o.reason.trim());
    if let Some(block) = exception_block(console, r) {
        let f = fence(&block);
        let _ = writeln!(m, "## Exception\n\n{f}text\n{block}\n{f}\n");
    }
    if let Some(x) = r.finding.as_ref().and_then(|f| f.exception.as_ref())
        && (x.esr.is_some() || x.elr.is_some() || !x.backtrace.is_empty())
    {
        let _ = writeln!(
            m,
            "Parsed: kind {}, address {}, ESR {}, ELR {}, FAR {}, {} backtrace frames.\n",
            x.kind,
            x.address.as_deref().unwrap_or("-"),
            x.esr.as_deref().unwrap_or("-"),
            x.elr.as_deref().unwrap_or("-"),
            x.far.as_deref().unwrap_or("-"),
            x.backtrace.len()
        );
    }
    if let Some(h) = &r.hang {
        let _ = writeln!(m, "## Machine state when the guest went silent\n");
        let status = h
            .status
            .as_ref()
            .and_then(|s| s.get("status"))
            .and_then(|s| s.as_str())
            .unwrap_or("?");
        let _ = writeln!(m, "QMP `query-status`: `{status}`.\n");
        if !h.registers.is_empty() {
            let _ = writeln!(m, "| register | value |\n| --- | --- |");
            for k in ["PC", "SP", "PSTATE", "ELR_EL1", "ESR_EL1", "FAR_EL1", "X30"] {
                if let Some(v) = h.registers.get(k) {
                    let _ = writeln!(m, "| {k} | `{v}` |");
                }
            }
            m.push('\n');
        }
        let _ = writeln!(
            m,
            "Files: {}.\n",
            h.files
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(v) = case.vars_change.as_ref().filter(|v| !v.is_empty()) {
        let _ = writeln!(
            m,
            "## Firmware variable store ({} -> end of the case)\n",
            v.before_label
        );
        for l in v.summary_lines() {
            let _ = writeln!(m, "- {}", cell(&l));
        }
        m.push('\n');
    }
    if !case.package_diff.is_empty() {
        let _ = writeln!(
            m,
            "## Packages the upgrade changed\n\n| package | before | after |\n| --- | --- | --- |"
        );
        for p in &case.package_diff {
            let _ = writeln!(
                m,
                "| {} | {} | {} |",
                cell(&p.name),
                cell(p.old.as_deref().unwrap_or("-")),
                cell(p.new.as_deref().unwrap_or("-"))
            );
        }
        if !case.suspects.is_empty() {
            let _ = writeln!(
                m,
                "\nSuspects (boot-chain packages that changed): {}.",
                case.suspects.join(", ")
            );
        }
        m.push('\n');
    }
    if let Some(x) = explanation {
        known_bug_md(&mut m, x);
    }
    let _ = writeln!(m, "## Evidence in this bundle\n");
    let _ = writeln!(
        m,
        "`bundle.json` (inputs with sha256 and provenance), `qemu-argv.txt`, `host.json`, and per run under `runs/`: `result.json`, `case.json`, `serial.raw`, `console.log`, `qmp.jsonl`, `qemu.stderr`{}.{}",
        if r.hang.is_some() { ", `hang/`" } else { "" },
        if c.bisect.is_some() {
            " The bisection: `bisect.json`, `bisect.md`, and the runs of the builds on each side of the change under `runs/`, named by their side (`first_bad-...`, `last_good-...`)."
        } else {
            ""
        }
    );
    let _ = writeln!(
        m,
        "\nMade by bootwatch {} (`bootwatch bundle`).",
        env!("CARGO_PKG_VERSION")
    );
    m
}

/// What `bootwatch explain` names behind the failure: each matched family with its confidence,
/// or none.
fn known_bug_md(m: &mut String, x: &crate::plan::explain::Brief) {
    let _ = writeln!(m, "## Known bug (`bootwatch explain`)\n");
    if let Some(e) = &x.error {
        let _ = writeln!(m, "Not explained: {}\n", e.trim());
        return;
    }
    for f in &x.families {
        let _ = writeln!(
            m,
            "- `{}`: {} (confidence {:.2}, {})",
            f.id,
            cell(&f.title),
            f.confidence,
            f.level
        );
    }
    if x.families.is_empty() {
        let _ = writeln!(m, "No known family matches the measured facts.");
    }
    if !x.undecided.is_empty() {
        let _ = writeln!(
            m,
            "\nNot decided (facts not measured): {}.",
            x.undecided
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        m,
        "\nRun `bootwatch explain` on this bundle for the facts that matched and did not, and the workarounds.\n"
    );
}

/// A shell word: single quotes, except `${VAR}` references spliced in.
fn sh_word(parts: &[(bool, String)]) -> String {
    let mut out = String::new();
    for (var, s) in parts {
        if *var {
            let _ = write!(out, "\"${{{s}}}\"");
        } else if !s.is_empty() {
            let _ = write!(out, "'{}'", s.replace('\'', "'\\''"));
        }
    }
    if out.is_empty() { "''".into() } else { out }
}

/// `text` as pieces of literal text and variable names: each `(path, VAR)` of `subs` in turn
/// replaced by `VAR` where it starts a path and ends at a `/` or the path's end, as the redactor
/// finds a home ([`path_occurrences`]): `/root` in `/root/.cache/...` but not in a Debian tree's
/// `.../root/lib/...` nor in `/rootfs`.
fn splice(text: &str, subs: &[(String, String)]) -> Vec<(bool, String)> {
    let mut parts: Vec<(bool, String)> = vec![(false, text.to_string())];
    for (from, var) in subs {
        let mut next = Vec::new();
        for (is_var, text) in parts {
            let at = if is_var {
                Vec::new()
            } else {
                path_occurrences(&text, from)
            };
            let mut rest = 0;
            for i in at {
                next.push((false, text[rest..i].to_string()));
                next.push((true, var.clone()));
                rest = i + from.len();
            }
            next.push((is_var, text[rest..].to_string()));
        }
        parts = next;
    }
    parts
}

fn repro_sh(case: &CaseRecord, r: &RunResult, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/sh\n# {}", title.replace('\n', " "));
    let _ = writeln!(
        s,
        "# Re-runs QEMU with the run's recorded command line: checks each artifact's sha256 first"
    );
    let _ = writeln!(
        s,
        "# (exit 125 when one differs), boots a fresh copy of the vars template, and puts the serial"
    );
    let _ = writeln!(
        s,
        "# console on standard output. Override where the artifacts are with the variables below."
    );
    let _ = writeln!(s, "# `bootwatch replay` does the same and judges the boot.");
    let _ = writeln!(s, "set -eu");
    if case.provision.is_some() {
        let _ = writeln!(
            s,
            "echo 'repro.sh: an image boot needs a fresh overlay and cloud-init seed: run bootwatch replay on this bundle' >&2\nexit 125"
        );
        return s;
    }
    let Some(serial) = r.argv.iter().find_map(|a| {
        a.strip_prefix("socket,id=serial0,server=on,wait=off,path=")
            .map(PathBuf::from)
    }) else {
        let _ = writeln!(
            s,
            "echo 'repro.sh: the run recorded no command line' >&2\nexit 125"
        );
        return s;
    };
    let private = serial
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The vars copy may have had a private directory of its own (in memory, see
    // `engine::disk::private_mem_dir`): it becomes $WORK too.
    let vars_dir = r.argv.iter().find_map(|a| {
        a.split(',')
            .find_map(|kv| kv.strip_prefix("file="))
            .and_then(|f| f.strip_suffix("/vars.fd"))
            .filter(|d| !d.is_empty() && *d != private)
            .map(str::to_owned)
    });
    let home = std::env::var("HOME").unwrap_or_default();
    let home_path = |p: &str| -> String {
        if !home.is_empty() && (p == home || p.starts_with(&format!("{home}/"))) {
            format!("${{HOME}}{}", &p[home.len()..])
        } else {
            p.to_string()
        }
    };
    // Files by variable: the inputs, then the run's own directory.
    let mut vars: Vec<(String, String, Option<String>)> = Vec::new();
    let mut disk_n = 0;
    for i in &case.inputs {
        let name = match i.role.as_str() {
            "qemu" => "QEMU".to_string(),
            "firmware-code" => "FIRMWARE_CODE".into(),
            "vars-template" => "VARS_TEMPLATE".into(),
            "disk" => {
                disk_n += 1;
                format!("DISK{disk_n}")
            }
            _ => continue,
        };
        vars.push((
            name,
            i.path.to_string_lossy().into_owned(),
            i.sha256.clone(),
        ));
    }
    for (name, path, _) in &vars {
        let _ = writeln!(
            s,
            "{name}=\"${{{name}:-{}}}\"",
            home_path(path).replace('"', "\\\"")
        );
    }
    let _ = writeln!(
        s,
        "check() {{\n  [ -z \"$2\" ] && return 0\n  got=$(sha256sum \"$1\" 2>/dev/null | cut -d' ' -f1) || got=missing\n  if [ \"$got\" != \"$2\" ]; then\n    echo \"repro.sh: $1 is not the file the run used (sha256 $got, the run's: $2)\" >&2\n    exit 125\n  fi\n}}"
    );
    for (name, _, sha) in &vars {
        let _ = writeln!(
            s,
            "check \"${{{name}}}\" '{}'",
            sha.clone().unwrap_or_default()
        );
    }
    let _ = writeln!(s, "WORK=$(mktemp -d)\ntrap 'rm -rf \"$WORK\"' EXIT");
    if vars.iter().any(|v| v.0 == "VARS_TEMPLATE") {
        let _ = writeln!(s, "cp \"${{VARS_TEMPLATE}}\" \"$WORK/vars.fd\"");
    }
    // Each argument, with the recorded paths replaced by their variables.
    let mut args = Vec::new();
    for a in &r.argv {
        if a == "-S" {
            continue;
        }
        if a.starts_with("socket,id=serial0,") {
            args.push(sh_word(&[(false, "stdio,id=serial0,signal=off".into())]));
            continue;
        }
        if a.starts_with("socket,id=qmp0,") {
            args.push(sh_word(&[
                (false, "socket,id=qmp0,server=on,wait=off,path=".into()),
                (true, "WORK".into()),
                (false, "/qmp.sock".into()),
            ]));
            continue;
        }
        let mut subs: Vec<(String, String)> = Vec::new();
        for (name, path, _) in &vars {
            if name != "VARS_TEMPLATE" {
                subs.push((path.clone(), name.clone()));
            }
        }
        if !private.is_empty() {
            subs.push((private.clone(), "WORK".into()));
        }
        if let Some(d) = &vars_dir {
            subs.push((d.clone(), "WORK".into()));
        }
        if !home.is_empty() {
            subs.push((home.clone(), "HOME".into()));
        }
        args.push(sh_word(&splice(a, &subs)));
    }
    let _ = writeln!(s, "exec \\");
    let n = args.len();
    for (i, a) in args.into_iter().enumerate() {
        let _ = writeln!(s, "  {a}{}", if i + 1 < n { " \\" } else { "" });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_and_splice() {
        assert_eq!(sh_word(&[(false, "a'b".into())]), "'a'\\''b'");
        assert_eq!(
            sh_word(&[
                (false, "file=".into()),
                (true, "WORK".into()),
                (false, "/v.fd".into())
            ]),
            "'file='\"${WORK}\"'/v.fd'"
        );
        assert_eq!(fence("a ``` b"), "````");
    }

    /// A recorded path becomes its variable only where it starts a path and ends at a path's
    /// end or a `/`: `/root` inside a tree (`.../deb11u3/root/lib`), at the end of another path,
    /// or as the start of a longer name (`/rootfs`) stays.
    #[test]
    fn paths_are_spliced_only_at_path_boundaries() {
        let subs = [
            ("/tmp/bootwatch-1-X/qemu".to_string(), "QEMU".to_string()),
            ("/tmp/bootwatch-1-X".into(), "WORK".into()),
            ("/root".into(), "HOME".into()),
        ];
        let v = |s: &str| (true, s.to_string());
        let t = |s: &str| (false, s.to_string());
        let cases: Vec<(&str, Vec<(bool, String)>)> = vec![
            (
                "/root/.cache/q/deb11u3/root/lib/ld.so",
                vec![t(""), v("HOME"), t("/.cache/q/deb11u3/root/lib/ld.so")],
            ),
            (
                "/root/a/root:/root/b/root/usr",
                vec![t(""), v("HOME"), t("/a/root:"), v("HOME"), t("/b/root/usr")],
            ),
            ("/srv/root", vec![t("/srv/root")]),
            ("/rootfs/x", vec![t("/rootfs/x")]),
            ("file=/rootfs", vec![t("file=/rootfs")]),
            ("file=/root", vec![t("file="), v("HOME"), t("")]),
            ("/root", vec![t(""), v("HOME"), t("")]),
            (
                "file=/tmp/bootwatch-1-X/vars.fd",
                vec![t("file="), v("WORK"), t("/vars.fd")],
            ),
            ("/tmp/bootwatch-1-X/qemu", vec![t(""), v("QEMU"), t("")]),
            (
                "/tmp/bootwatch-1-X/qemu-img",
                vec![t(""), v("WORK"), t("/qemu-img")],
            ),
            ("/tmp/bootwatch-1-XY/a", vec![t("/tmp/bootwatch-1-XY/a")]),
        ];
        for (arg, want) in cases {
            assert_eq!(splice(arg, &subs), want, "{arg}");
        }
        assert_eq!(
            sh_word(&splice("/root/q/root/lib", &subs)),
            "\"${HOME}\"'/q/root/lib'"
        );
    }
}
