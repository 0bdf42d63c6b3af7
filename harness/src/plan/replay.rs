//! `bootwatch replay BUNDLE`: the bundled run booted again, on the same artifacts. Each input is
//! found again by its provider (`host`, `debian:SUITE`, `debian:VERSION/VARIANT`,
//! `image:NAME`: the cache, else a fetch of the same version) or, for a file without one, at its
//! recorded path (`~` is this user's home) or in bootwatch's cache by its sha256 (edk2 builds,
//! fixtures); an input whose bytes are not the bundle's is refused with both hashes named. Then
//! the case is run as it ran and the verdicts compared.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::core::event::EventSink;
use crate::core::launch::{Accel, FirmwareWait, QemuExec};
use crate::core::verdict::{Outcome, Target};
use crate::engine::case::{self, CaseDir, CaseRequest, ImageDisk, VarsSource};
use crate::engine::record::{FileInfo, InputRecord};
use crate::engine::step::Step;
use crate::inputs::providers::{self, FirmwareProvider, ProviderContext, QemuProvider};
use crate::report::bundle::{self, BundleRecord};

/// Why a replay could not run: exit 125 (or 2 for a bundle that is not one).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Bundle(String),
    #[error("{0}")]
    Inputs(String),
    #[error("{0}")]
    Run(String),
}

/// How a replay went.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub bundle: BundleRecord,
    pub was: Outcome,
    pub now: Outcome,
    pub dir: PathBuf,
    /// Where each input was found.
    pub found: Vec<(String, PathBuf)>,
}

impl Replayed {
    pub fn same(&self) -> bool {
        self.was.verdict == self.now.verdict
    }
}

/// Replay options.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub results: PathBuf,
    pub mirror: Option<String>,
    pub cache_root: PathBuf,
}

/// A recorded path with `~` (a bundle's redacted home) as this user's home.
pub fn expand_home(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    match (s.strip_prefix('~'), std::env::var("HOME")) {
        (Some(rest), Ok(h)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(format!("{h}{rest}"))
        }
        _ => p.to_path_buf(),
    }
}

fn sha_of(p: &Path) -> Option<String> {
    let p = p.to_path_buf();
    FileInfo::of(&p).ok().map(|f| f.sha256)
}

fn mismatch(i: &InputRecord, path: &Path, got: &str) -> ReplayError {
    ReplayError::Inputs(format!(
        "{} {}: the bundle's sha256 is {}, but {} has {got}: not the artifact the run used \
         (nothing was run)",
        i.role,
        i.provider.as_deref().unwrap_or("(no provider)"),
        i.sha256.as_deref().unwrap_or("?"),
        path.display()
    ))
}

/// Files of bootwatch's cache that could be this input: edk2 builds and fixtures.
fn cache_candidates(cache_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(cache_root.join("edk2")) {
        for d in rd.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                out.extend(
                    files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "fd")),
                );
            }
        }
    }
    let fixtures = cache_root.join("fixtures");
    if crate::inputs::fixtures::write_all(&fixtures).is_ok() {
        for f in crate::inputs::fixtures::Fixture::ALL {
            out.push(fixtures.join(f.image_file_name()));
        }
    }
    out
}

/// A file input without a provider to ask: its recorded path, else the cache by hash.
pub async fn locate(i: &InputRecord, cache_root: &Path) -> Result<PathBuf, ReplayError> {
    let want = i.sha256.clone().ok_or_else(|| {
        ReplayError::Inputs(format!(
            "{} {}: the bundle records no sha256",
            i.role,
            i.path.display()
        ))
    })?;
    let recorded = expand_home(&i.path);
    let cache = cache_root.to_path_buf();
    let found = tokio::task::spawn_blocking(move || {
        // The recorded path first: the cache is searched (and its fixtures written) only when
        // that is not the file.
        let candidates = std::iter::once(recorded.clone())
            .chain(std::iter::once_with(|| cache_candidates(&cache)).flatten());
        let mut first_seen = None;
        for c in candidates {
            if !c.is_file() {
                continue;
            }
            let Some(got) = sha_of(&c) else { continue };
            if got == want {
                return Ok(c);
            }
            if c == recorded {
                first_seen = Some(got);
            }
        }
        Err(first_seen)
    })
    .await
    .map_err(|e| ReplayError::Run(e.to_string()))?;
    match found {
        Ok(p) => Ok(p),
        Err(Some(got)) => Err(mismatch(i, &expand_home(&i.path), &got)),
        Err(None) => Err(ReplayError::Inputs(format!(
            "{} {}: no file with sha256 {} at its recorded path or in bootwatch's cache (nothing \
             was run)",
            i.role,
            i.path.display(),
            i.sha256.as_deref().unwrap_or("?")
        ))),
    }
}

fn check(i: &InputRecord, path: &Path, got: &str) -> Result<(), ReplayError> {
    match &i.sha256 {
        Some(want) if want != got => Err(mismatch(i, path, got)),
        _ => Ok(()),
    }
}

/// The QEMU a record names, found again: by its provider (the cache, else fetched or built at
/// the same version), else at its recorded path or in bootwatch's cache by sha256; refused when
/// its sha256 is not the record's. Returns the binary and how to run it.
pub async fn find_qemu(
    qi: &InputRecord,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
) -> Result<(PathBuf, QemuExec), ReplayError> {
    let provider: Option<QemuProvider> = qi
        .provider
        .as_deref()
        .filter(|p| !p.starts_with("path:"))
        .and_then(|p| p.parse().ok());
    Ok(match provider {
        Some(p) => {
            let q = providers::resolve_qemu(&p, ctx, cancel)
                .await
                .map_err(|e| ReplayError::Inputs(format!("QEMU {p}: {e:#}")))?;
            check(qi, &q.binary, &q.sha256)?;
            (q.binary, q.exec)
        }
        None => (locate(qi, &ctx.cache_root).await?, QemuExec::default()),
    })
}

/// The firmware code image and vars template records name, found again as [`find_qemu`] finds
/// QEMU.
pub async fn find_firmware(
    ci: &InputRecord,
    vi: Option<&InputRecord>,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
) -> Result<(PathBuf, Option<PathBuf>), ReplayError> {
    let provider: Option<FirmwareProvider> = ci
        .provider
        .as_deref()
        .filter(|p| !p.starts_with("path:"))
        .and_then(|p| p.parse().ok());
    Ok(match provider {
        Some(p) => {
            let f = providers::resolve_firmware(&p, ctx, cancel)
                .await
                .map_err(|e| ReplayError::Inputs(format!("firmware {p}: {e:#}")))?;
            check(ci, &f.code, &f.code_sha256)?;
            let vars = match (vi, &f.vars_template) {
                // The store the template's provider gives, unless the run had another one.
                (Some(v), Some(t)) if v.provider == ci.provider => {
                    let t2 = t.clone();
                    let got = tokio::task::spawn_blocking(move || sha_of(&t2))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    check(v, t, &got)?;
                    Some(t.clone())
                }
                (Some(v), _) => Some(locate(v, &ctx.cache_root).await?),
                (None, _) => None,
            };
            (f.code, vars)
        }
        None => {
            let code = locate(ci, &ctx.cache_root).await?;
            let vars = match vi {
                Some(v) => Some(locate(v, &ctx.cache_root).await?),
                None => None,
            };
            (code, vars)
        }
    })
}

/// Replays a bundle: finds its inputs, runs the case, compares the verdicts.
pub async fn replay(
    path: &Path,
    opts: &ReplayOptions,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<Replayed, ReplayError> {
    let opened = bundle::open(path).map_err(|e| ReplayError::Bundle(format!("{e:#}")))?;
    let b = opened.record;
    let spec = &b.replay;
    if spec.steps.iter().any(|s| s != "boot") {
        return Err(ReplayError::Run(format!(
            "replay boots cases of one boot step; this case's steps are {} (run its scenario \
             with `bootwatch run`)",
            spec.steps.join(", ")
        )));
    }
    let ctx = ProviderContext {
        mirror: opts.mirror.clone(),
        cache_root: opts.cache_root.clone(),
    };
    let role = |r: &str| b.inputs.iter().find(|i| i.role == r);
    let mut found = Vec::new();

    let (qemu, exec) = find_qemu(
        role("qemu").ok_or_else(|| ReplayError::Inputs("the bundle records no QEMU".into()))?,
        &ctx,
        cancel,
    )
    .await?;
    found.push(("qemu".to_string(), qemu.clone()));
    let (code, vars) = find_firmware(
        role("firmware-code")
            .ok_or_else(|| ReplayError::Inputs("the bundle records no firmware".into()))?,
        role("vars-template"),
        &ctx,
        cancel,
    )
    .await?;
    found.push(("firmware-code".to_string(), code.clone()));
    if let Some(v) = &vars {
        found.push(("vars-template".to_string(), v.clone()));
    }

    // Disks and the image.
    let mut disks = Vec::new();
    for d in b.inputs.iter().filter(|i| i.role == "disk") {
        let p = locate(d, &opts.cache_root).await?;
        found.push(("disk".to_string(), p.clone()));
        disks.push(p);
    }
    let mut image = None;
    if let Some(ii) = role("image") {
        let name = ii
            .provider
            .as_deref()
            .and_then(|p| p.strip_prefix("image:"))
            .ok_or_else(|| {
                ReplayError::Inputs(format!(
                    "image {}: no image:NAME provider",
                    ii.path.display()
                ))
            })?;
        if name.contains('@') {
            return Err(ReplayError::Run(format!(
                "image {name}: an upgraded state is made by its matrix; replay boots catalog images and local recipes"
            )));
        }
        let registry = crate::inputs::images::Registry::load()
            .map_err(|e| ReplayError::Inputs(e.to_string()))?;
        let entry = registry.get(name).ok_or_else(|| {
            ReplayError::Inputs(format!(
                "no image named {name:?} in the catalog or local recipes"
            ))
        })?;
        let r = crate::inputs::images::resolve(
            entry,
            &opts.cache_root,
            opts.mirror.as_deref(),
            cancel,
            sink,
        )
        .await
        .map_err(|e| ReplayError::Inputs(format!("image {name}: {e:#}")))?;
        check(ii, &r.path, &r.sha256)?;
        found.push(("image".to_string(), r.path.clone()));
        image = Some(ImageDisk {
            name: r.name,
            base: r.path,
            base_sha256: r.sha256,
            format: r.format,
            guest: r.guest,
            source: r.source,
        });
    }

    let bad = |what: &str, v: &str| {
        ReplayError::Bundle(format!(
            "bundle.json: {what} {v:?} is not one bootwatch knows"
        ))
    };
    let target: Option<Target> = match &spec.target {
        Some(t) => Some(t.parse().map_err(|_| bad("target", t))?),
        None => None,
    };
    let secs = |s: f64, what: &str| -> Result<Duration, ReplayError> {
        Duration::try_from_secs_f64(s).map_err(|_| bad(what, &s.to_string()))
    };
    let mut req = CaseRequest::new(
        &format!("replay-{}", b.name),
        CaseDir::Under(opts.results.clone()),
        code.clone(),
        vec![Step::Boot {
            until: target,
            timeout: secs(spec.timeout_s, "timeout_s")?,
            silence: secs(spec.silence_s, "silence_s")?,
        }],
    );
    req.qemu = qemu;
    req.qemu_exec = exec;
    req.machine = spec.machine.clone();
    req.cpu = Some(spec.cpu.clone());
    let accel: Accel = spec
        .accelerator
        .parse()
        .map_err(|_| bad("accelerator", &spec.accelerator))?;
    // The recorded accelerator when this host has it (the verdict may depend on it).
    req.accel = Some(
        if crate::sys::host::host_facts().best_accel() == accel || accel == Accel::Tcg {
            accel
        } else {
            crate::sys::host::host_facts().best_accel()
        },
    );
    req.smp = spec.smp;
    req.memory_mib = spec.memory_mib;
    req.firmware_wait = spec
        .firmware_wait
        .parse::<FirmwareWait>()
        .map_err(|_| bad("firmware_wait", &spec.firmware_wait))?;
    if let Some(v) = vars {
        req.vars = VarsSource::Template(v);
    }
    req.disks = disks;
    req.snapshot = spec.snapshot;
    req.network = (spec.network || image.is_some()).then(Vec::new);
    req.image = image;
    req.extra_args = spec.extra_args.iter().map(Into::into).collect();
    // The bundle's provenance, at the paths found here.
    let mut left = found.clone();
    req.inputs = b
        .inputs
        .iter()
        .map(|i| {
            let mut i = i.clone();
            if let Some(k) = left.iter().position(|(r, _)| *r == i.role) {
                i.path = left.remove(k).1;
            }
            i
        })
        .collect();
    let checked = case::check(req).map_err(|e| ReplayError::Run(e.0))?;
    let done = case::run(checked, cancel, sink)
        .await
        .map_err(|e| ReplayError::Run(e.to_string()))?;
    let now = done.record.outcome.clone();
    if now.verdict == crate::core::verdict::Verdict::HarnessError
        || done.record.status != crate::engine::record::RunStatus::Complete
    {
        return Err(ReplayError::Run(format!(
            "the replay could not run the guest: {} (results: {})",
            now.reason,
            done.dir.display()
        )));
    }
    Ok(Replayed {
        was: b.outcome.clone(),
        bundle: b,
        now,
        dir: done.dir,
        found,
    })
}
