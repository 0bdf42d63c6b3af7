//! Debian's edk2 build for ARM64 guests (`qemu-efi-aarch64`, architecture `all`): found in a
//! suite's signed index through [`Archive`], downloaded and checked, its firmware images
//! unpacked and cached.
//!
//! # Trust
//!
//! The `.deb` is checked against the size and SHA256 of a `Packages` index that matches the
//! suite's OpenPGP-verified Release file (see [`super::archive`]); a mismatch anywhere is an
//! error and nothing is cached. The manifest records which signed Release vouched for it.
//!
//! # Cache layout
//!
//! `CACHE_ROOT/edk2/<full Debian version>/` holds the regular files of the package's
//! `usr/share/AAVMF/` and `usr/share/qemu-efi-aarch64/` directories, flattened by file name
//! (symlinks inside the package are resolved: a link becomes a hard link to, or a copy of, its
//! target), plus the manifest `bootwatch-edk2.json`. A version directory is assembled in a
//! hidden temporary directory next to it and renamed into place when complete, so a
//! directory with that name is always complete. A cached version is served without any
//! network request; a version *prefix* (`2025.02`) is served by any cached version it
//! matches, so once a point release is cached, newer point releases are not looked for.
//! Entries cached before signatures were checked (manifest format 1) are not used: they are
//! fetched again, verified.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive::Archive;
use super::http::verify_digest;
use super::packages::{PackageEntry, version_matches};

/// The Debian binary package that carries edk2 for ARM64 guests.
pub const PACKAGE: &str = "qemu-efi-aarch64";
/// Suites searched by [`fetch_edk2`], in order.
pub const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "sid",
];
/// The architecture whose index is read when a suite's `binary-all` index does not match its
/// signed Release (see [`Archive::find_arch_all`]): the guests' own.
const VIA_ARCH: &str = "arm64";
/// Name of the manifest written last into each cached version directory.
pub const MANIFEST_NAME: &str = "bootwatch-edk2.json";
/// Firmware variants understood by [`Edk2Build::firmware`].
pub const VARIANTS: &[&str] = &[
    "default",
    "no-secboot",
    "secboot",
    "strictnx",
    "ms",
    "snakeoil",
];

/// Package directories whose files are unpacked.
const WANTED_DIRS: &[&str] = &["usr/share/AAVMF", "usr/share/qemu-efi-aarch64"];
/// 2: the manifest names the signed Release that vouched for the package (format 1 entries
/// were fetched without checking signatures and are fetched again).
const MANIFEST_FORMAT: u32 = 2;
/// Temporary entries older than this in `CACHE_ROOT/edk2` are left-overs of a killed run.
const STALE_TEMP_AGE: Duration = Duration::from_secs(6 * 3600);

/// One cached edk2 build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Edk2Build {
    /// Full Debian version, e.g. `2025.02-8+deb13u1`.
    pub debian_version: String,
    /// Suite whose index named this version, e.g. `trixie`.
    pub suite: String,
    /// The version's cache directory.
    pub dir: PathBuf,
    /// SHA256 of the `.deb` it was unpacked from.
    pub deb_sha256: String,
    /// The `.deb`'s path in the archive (`pool/main/e/edk2/qemu-efi-aarch64_..._all.deb`).
    #[serde(default)]
    pub filename: String,
    /// The OpenPGP-verified Release whose index listed the `.deb`.
    #[serde(default)]
    pub signed_release: Option<String>,
    /// Every unpacked file (regular files only), sorted by name.
    pub files: Vec<Edk2File>,
}

/// One file of a cached edk2 build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Edk2File {
    /// File name, e.g. `AAVMF_CODE.no-secboot.fd`.
    pub name: String,
    /// Absolute path in the cache.
    pub path: PathBuf,
    /// SHA256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl Edk2Build {
    /// The file called `name`, if the build has it.
    pub fn file(&self, name: &str) -> Option<&Edk2File> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Code image + variable-store template for a variant:
    ///
    /// | variant      | code                              | vars                                      |
    /// |--------------|-----------------------------------|-------------------------------------------|
    /// | `default`    | `AAVMF_CODE.fd`, else `AAVMF_CODE.no-secboot.fd` | `AAVMF_VARS.fd`            |
    /// | `no-secboot` | `AAVMF_CODE.no-secboot.fd`        | `AAVMF_VARS.fd`                           |
    /// | `secboot`    | `AAVMF_CODE.secboot.fd`           | `AAVMF_VARS.fd` (empty store, SB off)     |
    /// | `strictnx`   | `AAVMF_CODE.secboot.strictnx.fd`  | `AAVMF_VARS.fd` (empty store, SB off)     |
    /// | `ms`         | `AAVMF_CODE.ms.fd`                | `AAVMF_VARS.ms.fd` (MS keys, SB on)       |
    /// | `snakeoil`   | `AAVMF_CODE.snakeoil.fd`          | `AAVMF_VARS.snakeoil.fd` (test key, SB on)|
    ///
    /// (These are the pairings of the package's own `usr/share/qemu/firmware/*.json`.) The vars
    /// file is a template: give each guest its own copy. Errors list the variants this build
    /// has when the requested one is absent or unknown.
    ///
    /// What the releases have: 2020.11 (bullseye) only `default`; 2022.11 (bookworm)
    /// `default`, `ms`, `snakeoil` (one code build, `AAVMF_CODE.fd`, Secure Boot capable, which
    /// `.ms`/`.snakeoil` alias; its `50-edk2-aarch64-secure.json` names an
    /// `AAVMF_CODE.secboot.fd` the package lacks, so `secboot` is absent); 2025.02 (trixie)
    /// and 2026.08 (sid) all six, `AAVMF_CODE.fd` aliasing `.no-secboot` and `.ms`/`.snakeoil`
    /// aliasing `.secboot`.
    pub fn firmware(&self, variant: &str) -> Result<(PathBuf, PathBuf)> {
        let candidates = variant_candidates(variant).ok_or_else(|| {
            anyhow!(
                "unknown edk2 firmware variant {variant:?} (known: {}); edk2 {} has: {}",
                VARIANTS.join(", "),
                self.debian_version,
                self.variants().join(", ")
            )
        })?;
        for (code, vars) in candidates {
            if let (Some(code), Some(vars)) = (self.file(code), self.file(vars)) {
                return Ok((code.path.clone(), vars.path.clone()));
            }
        }
        let wanted: Vec<String> = candidates
            .iter()
            .map(|(c, v)| format!("{c} + {v}"))
            .collect();
        bail!(
            "edk2 {} (in {}) has no {variant:?} firmware (needs {}); variants available: {}",
            self.debian_version,
            self.dir.display(),
            wanted.join(" or "),
            none_if_empty(&self.variants())
        )
    }

    /// The variants of [`VARIANTS`] this build has.
    pub fn variants(&self) -> Vec<&'static str> {
        VARIANTS
            .iter()
            .copied()
            .filter(|v| {
                variant_candidates(v).is_some_and(|cands| {
                    cands
                        .iter()
                        .any(|(c, v)| self.file(c).is_some() && self.file(v).is_some())
                })
            })
            .collect()
    }

    /// Re-hash every file and compare with the manifest (a cache hit only checks sizes).
    pub fn verify(&self) -> Result<()> {
        for f in &self.files {
            let (size, sha) = hash_file(&f.path)?;
            verify_digest(&f.path.display().to_string(), f.size, &f.sha256, size, &sha)?;
        }
        Ok(())
    }
}

fn variant_candidates(variant: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match variant {
        "default" => &[
            ("AAVMF_CODE.fd", "AAVMF_VARS.fd"),
            ("AAVMF_CODE.no-secboot.fd", "AAVMF_VARS.fd"),
        ],
        "no-secboot" => &[("AAVMF_CODE.no-secboot.fd", "AAVMF_VARS.fd")],
        "secboot" => &[("AAVMF_CODE.secboot.fd", "AAVMF_VARS.fd")],
        "strictnx" => &[("AAVMF_CODE.secboot.strictnx.fd", "AAVMF_VARS.fd")],
        "ms" => &[("AAVMF_CODE.ms.fd", "AAVMF_VARS.ms.fd")],
        "snakeoil" => &[("AAVMF_CODE.snakeoil.fd", "AAVMF_VARS.snakeoil.fd")],
        _ => return None,
    })
}

pub(crate) fn none_if_empty(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Fetch (or take from the cache) Debian's `qemu-efi-aarch64` whose version is `version`
/// (a full Debian version such as `2025.02-8+deb13u1`, or a prefix such as `2025.02`, see
/// [`version_matches`]) from the mirror `mirror`, checked against the default archive keyring
/// (see [`Archive::new`]).
///
/// A cached matching version is returned without any network request (so `mirror` is not even
/// looked at). Otherwise see [`fetch_edk2_from`].
pub async fn fetch_edk2(mirror: &str, version: &str, cache_root: &Path) -> Result<Edk2Build> {
    let request = version.trim();
    ensure!(!request.is_empty(), "empty edk2 version request");
    if let Some(build) = find_cached(cache_root, request)? {
        tracing::info!(
            version = %build.debian_version,
            dir = %build.dir.display(),
            "edk2 served from cache"
        );
        return Ok(build);
    }
    let archive = Archive::new(mirror)?.with_index_cache(cache_root.join(super::INDEX_CACHE_DIR));
    fetch_edk2_from(&archive, request, cache_root).await
}

/// Like [`fetch_edk2`], from `archive`: a cached matching version, else the suites of
/// [`SUITES`] are searched in order (a suite the mirror lacks is skipped), the first matching
/// package (an exact version match first) is downloaded into `cache_root/edk2/`, checked
/// against its verified index (a mismatch deletes the download and names both values), and
/// its `usr/share/AAVMF/` and `usr/share/qemu-efi-aarch64/` files are unpacked into
/// `cache_root/edk2/<full version>/` (atomically, via a temporary directory).
pub async fn fetch_edk2_from(
    archive: &Archive,
    version: &str,
    cache_root: &Path,
) -> Result<Edk2Build> {
    let request = version.trim();
    ensure!(!request.is_empty(), "empty edk2 version request");
    if let Some(build) = find_cached(cache_root, request)? {
        return Ok(build);
    }
    let mirror = archive.mirror();
    tracing::info!(%mirror, request, "looking for {PACKAGE}");
    let mut seen = Vec::new();
    for suite in SUITES {
        let Some(entries) = archive
            .find_arch_all(suite, "main", VIA_ARCH, PACKAGE)
            .await
            .with_context(|| format!("reading the {suite} index at {mirror}"))?
        else {
            seen.push(format!("{suite}: no index"));
            continue;
        };
        if let Some(entry) = pick(&entries, request) {
            let release = archive
                .release(suite)
                .await?
                .map(|r| r.url.clone())
                .unwrap_or_default();
            let origin = Origin {
                suite: suite.to_string(),
                release: Some(release),
            };
            return download_and_install(archive, origin, entry.clone(), cache_root).await;
        }
        let versions: Vec<&str> = entries.iter().map(|e| e.version.as_str()).collect();
        seen.push(format!("{suite}: {}", none_if_empty(&versions)));
    }
    bail!(
        "no {PACKAGE} version matching {request:?} at {mirror} ({})",
        seen.join("; ")
    )
}

fn pick<'a>(entries: &'a [PackageEntry], request: &str) -> Option<&'a PackageEntry> {
    entries.iter().find(|e| e.version == request).or_else(|| {
        entries
            .iter()
            .find(|e| version_matches(request, &e.version))
    })
}

/// Where a package came from.
struct Origin {
    suite: String,
    /// The URL of the verified Release whose index listed it; `None` for [`install_deb`].
    release: Option<String>,
}

async fn download_and_install(
    archive: &Archive,
    origin: Origin,
    entry: PackageEntry,
    cache_root: &Path,
) -> Result<Edk2Build> {
    check_version_dir_name(&entry.version)?;
    let edk2_dir = cache_root.join("edk2");
    fs::create_dir_all(&edk2_dir).with_context(|| format!("creating {}", edk2_dir.display()))?;
    remove_stale_temporaries(&edk2_dir);

    let started = Instant::now();
    let deb = archive.download(&entry, &edk2_dir).await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        suite = %origin.suite,
        "downloaded {PACKAGE} {}",
        entry.version
    );

    let started = Instant::now();
    let cache_root = cache_root.to_path_buf();
    let build = tokio::task::spawn_blocking(move || {
        let result = install_verified(deb.path(), &entry, &origin, &cache_root);
        drop(deb);
        result
    })
    .await
    .context("unpacking task")??;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        dir = %build.dir.display(),
        files = build.files.len(),
        "unpacked edk2 {}",
        build.debian_version
    );
    Ok(build)
}

// ---------------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    package: String,
    debian_version: String,
    suite: String,
    filename: String,
    deb_size: u64,
    deb_sha256: String,
    /// The OpenPGP-verified Release file whose index listed the `.deb` (absent for a `.deb`
    /// installed from a local file by [`install_deb`]).
    #[serde(default)]
    signed_release: Option<String>,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestFile {
    name: String,
    sha256: String,
    size: u64,
}

/// The cached build for `request` (see [`version_matches`]) under `cache_root`, if any. With
/// several matches the one from the earliest suite of [`SUITES`] wins, then an exact match,
/// then the greatest version string. Makes no network request.
pub fn find_cached(cache_root: &Path, request: &str) -> Result<Option<Edk2Build>> {
    let mut found = cached_builds(cache_root, |name| version_matches(request, name))?;
    let rank = |b: &Edk2Build| {
        (
            SUITES
                .iter()
                .position(|s| *s == b.suite)
                .unwrap_or(SUITES.len()),
            b.debian_version != request,
        )
    };
    found.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then_with(|| b.debian_version.cmp(&a.debian_version))
    });
    Ok(found.into_iter().next())
}

/// The usable cached builds whose version directory's name passes `wanted` (an unusable entry is
/// skipped with a warning). Makes no network request.
fn cached_builds(cache_root: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<Edk2Build>> {
    let edk2_dir = cache_root.join("edk2");
    let entries = match fs::read_dir(&edk2_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", edk2_dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", edk2_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !wanted(&name) {
            continue;
        }
        match load_build(&entry.path()) {
            Ok(build) => found.push(build),
            Err(e) => tracing::warn!(
                dir = %entry.path().display(),
                "ignoring unusable edk2 cache entry: {e:#}"
            ),
        }
    }
    Ok(found)
}

/// The cached build one of whose files has this sha256, and that file's name: what a firmware
/// given by path is when it is (a link to, or a copy of) a file of Debian's package. Makes no
/// network request.
pub fn find_cached_file(cache_root: &Path, sha256: &str) -> Result<Option<(Edk2Build, String)>> {
    let mut builds = cached_builds(cache_root, |_| true)?;
    builds.sort_by(|a, b| a.debian_version.cmp(&b.debian_version));
    Ok(builds.into_iter().find_map(|b| {
        let name = b.files.iter().find(|f| f.sha256 == sha256)?.name.clone();
        Some((b, name))
    }))
}

/// Load a version directory through its manifest, checking that each file exists with its
/// recorded size.
fn load_build(dir: &Path) -> Result<Edk2Build> {
    let path = dir.join(MANIFEST_NAME);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(
        manifest.format != 1,
        "{}: cached before archive signatures were checked; it will be fetched again",
        path.display()
    );
    ensure!(
        manifest.format == MANIFEST_FORMAT,
        "{}: unknown manifest format {}",
        path.display(),
        manifest.format
    );
    let mut files = Vec::with_capacity(manifest.files.len());
    for f in manifest.files {
        let file_path = dir.join(&f.name);
        let meta = fs::metadata(&file_path)
            .with_context(|| format!("{}: listed but missing", file_path.display()))?;
        ensure!(
            meta.is_file() && meta.len() == f.size,
            "{}: expected a {}-byte file",
            file_path.display(),
            f.size
        );
        files.push(Edk2File {
            name: f.name,
            path: file_path,
            sha256: f.sha256,
            size: f.size,
        });
    }
    Ok(Edk2Build {
        debian_version: manifest.debian_version,
        suite: manifest.suite,
        dir: dir.to_path_buf(),
        deb_sha256: manifest.deb_sha256,
        filename: manifest.filename,
        signed_release: manifest.signed_release,
        files,
    })
}

/// A Debian version is used as a directory name: allow only its legal characters.
fn check_version_dir_name(version: &str) -> Result<()> {
    ensure!(
        !version.is_empty()
            && !version.starts_with('.')
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b)),
        "refusing unusual Debian version {version:?}"
    );
    Ok(())
}

fn remove_stale_temporaries(edk2_dir: &Path) {
    crate::sys::fsx::sweep_stale(edk2_dir, &[".download-", ".unpack-"], STALE_TEMP_AGE);
}

/// Install a local `.deb` of `qemu-efi-aarch64` described by `entry` (from suite `suite`) into
/// the cache after checking its size and SHA256 against `entry`. For offline use; the file is
/// left in place whatever happens. The manifest names no signed Release.
pub fn install_deb(
    deb: &Path,
    entry: &PackageEntry,
    suite: &str,
    cache_root: &Path,
) -> Result<Edk2Build> {
    let (size, sha) = hash_file(deb)?;
    verify_digest(
        &deb.display().to_string(),
        entry.size,
        &entry.sha256,
        size,
        &sha,
    )?;
    let origin = Origin {
        suite: suite.to_owned(),
        release: None,
    };
    install_verified(deb, entry, &origin, cache_root)
}

/// Unpack a verified `.deb` into `cache_root/edk2/<version>/` via a temporary directory and
/// an atomic rename.
fn install_verified(
    deb: &Path,
    entry: &PackageEntry,
    origin: &Origin,
    cache_root: &Path,
) -> Result<Edk2Build> {
    check_version_dir_name(&entry.version)?;
    let edk2_dir = cache_root.join("edk2");
    fs::create_dir_all(&edk2_dir).with_context(|| format!("creating {}", edk2_dir.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&edk2_dir)
        .with_context(|| format!("creating a temporary directory in {}", edk2_dir.display()))?;
    let files = unpack_deb(deb, staging.path())?;
    ensure!(
        !files.is_empty(),
        "{}: no files under {}",
        deb.display(),
        WANTED_DIRS.join("/ or ")
    );
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        package: entry.package.clone(),
        debian_version: entry.version.clone(),
        suite: origin.suite.clone(),
        filename: entry.filename.clone(),
        deb_size: entry.size,
        deb_sha256: entry.sha256.clone(),
        signed_release: origin.release.clone(),
        files: files
            .iter()
            .map(|f| ManifestFile {
                name: f.name.clone(),
                sha256: f.sha256.clone(),
                size: f.size,
            })
            .collect(),
    };
    let manifest_path = staging.path().join(MANIFEST_NAME);
    fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    let final_dir = edk2_dir.join(&entry.version);
    if let Ok(build) = load_build(&final_dir) {
        tracing::debug!(dir = %final_dir.display(), "another process cached it first");
        return Ok(build);
    }
    crate::sys::fsx::replace_dir(staging.path(), &final_dir, "edk2 cache entry")?;
    let _ = staging.keep();
    load_build(&final_dir)
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let d = crate::sys::fsx::hash_file(path)?;
    Ok((d.size, d.sha256))
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// .deb unpacking
// ---------------------------------------------------------------------------------------------

/// Extract the files of the package's `usr/share/AAVMF/` and `usr/share/qemu-efi-aarch64/`
/// into `out_dir`, flattened by file name. Symlinks and hard links among them become hard
/// links to (or copies of) their target, so every returned file is a regular file. The data
/// member may be `data.tar`, `data.tar.gz` or `data.tar.xz`.
fn unpack_deb(deb: &Path, out_dir: &Path) -> Result<Vec<Edk2File>> {
    super::deb::with_tar_member(deb, "data.tar", |reader| extract_data_tar(reader, out_dir))
}

/// Normalize a path inside a package to `a/b/c` (no `.`, no leading `/`); `None` if `..` leaves
/// the root.
fn normalize_package_path(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// The file name of `path` if it sits directly in one of [`WANTED_DIRS`].
fn wanted_name(path: &str) -> Option<&str> {
    let (dir, name) = path.rsplit_once('/')?;
    (WANTED_DIRS.contains(&dir) && !name.is_empty() && name != MANIFEST_NAME).then_some(name)
}

fn extract_data_tar(reader: &mut dyn Read, out_dir: &Path) -> Result<Vec<Edk2File>> {
    // package path -> extracted file
    let mut regular: BTreeMap<String, Edk2File> = BTreeMap::new();
    // package path -> (file name, package path of the target)
    let mut links: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut names = HashSet::new();

    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("reading the data tar")? {
        let mut entry = entry.context("reading the data tar")?;
        let raw_path = entry
            .path()
            .context("bad path in the data tar")?
            .into_owned();
        let Some(path) = normalize_package_path(&raw_path) else {
            continue;
        };
        let Some(name) = wanted_name(&path).map(str::to_owned) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        ensure!(
            names.insert(name.clone()),
            "two package files are called {name} (second: {path})"
        );
        if kind.is_file() || matches!(kind, tar::EntryType::Continuous | tar::EntryType::GNUSparse)
        {
            let dest = out_dir.join(&name);
            let out =
                fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
            let mut writer = HashWriter::new(io::BufWriter::with_capacity(1 << 20, out));
            io::copy(&mut entry, &mut writer).with_context(|| format!("extracting {path}"))?;
            writer
                .flush()
                .with_context(|| format!("writing {}", dest.display()))?;
            regular.insert(
                path,
                Edk2File {
                    name,
                    path: dest,
                    sha256: hex::encode(writer.hasher.finalize()),
                    size: writer.len,
                },
            );
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .context("bad link target in the data tar")?
                .ok_or_else(|| anyhow!("{path}: link without a target"))?
                .into_owned();
            let target = if kind.is_hard_link() || target.is_absolute() {
                normalize_package_path(&target)
            } else {
                let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
                normalize_package_path(&parent.join(&target))
            };
            match target {
                Some(target) => {
                    links.insert(path, (name, target));
                }
                None => tracing::warn!(%path, "skipping a link that leaves the package root"),
            }
        } else {
            tracing::debug!(%path, ?kind, "skipping a special file");
            names.remove(&name);
        }
    }

    for (path, (name, target)) in &links {
        // Follow chains of links to a regular file.
        let mut target = target.clone();
        let mut hops = 0;
        while let Some((_, next)) = links.get(&target) {
            hops += 1;
            if hops > 16 {
                break;
            }
            target = next.clone();
        }
        let Some(source) = regular.get(&target) else {
            tracing::warn!(
                %path,
                %target,
                "skipping a link whose target is not among the unpacked files"
            );
            continue;
        };
        let dest = out_dir.join(name);
        if fs::hard_link(&source.path, &dest).is_err() {
            fs::copy(&source.path, &dest).with_context(|| {
                format!("copying {} to {}", source.path.display(), dest.display())
            })?;
        }
        let file = Edk2File {
            name: name.clone(),
            path: dest,
            ..source.clone()
        };
        regular.insert(path.clone(), file);
    }

    let mut files: Vec<Edk2File> = regular.into_values().collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::debian::test_mirror::{Files, Signer, add_signed_suite, gz, serve, xz};

    const SHA_A: &str = "a00b2411a79c8aeafd95a7c868ac3cd1aab592f1af9fff965f02d81a625276ed";
    const SHA_B: &str = "30467a3593c099ea42bd6ff3c4590e4b205edf9a7b98844f4bed17cd8b05eb58";

    // -----------------------------------------------------------------------------------------
    // .deb handling
    // -----------------------------------------------------------------------------------------

    #[derive(Clone, Copy)]
    enum Compression {
        Gz,
        Xz,
        Zst,
    }

    const CODE: &[u8] = b"code image, no secure boot";
    const SECCODE: &[u8] = b"code image with secure boot";
    const VARS: &[u8] = b"empty varstore";
    const MSVARS: &[u8] = b"varstore with ms keys";

    /// A small stand-in for a qemu-efi-aarch64 .deb, laid out like 2025.02's.
    fn make_deb(compression: Compression) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, path, io::empty()).unwrap();
        };
        let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, path, data).unwrap();
        };
        let link = |tar: &mut tar::Builder<Vec<u8>>, path: &str, target: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, path, target).unwrap();
        };
        dir(&mut tar, "./usr/share/AAVMF/");
        file(&mut tar, "./usr/share/AAVMF/AAVMF_CODE.no-secboot.fd", CODE);
        file(&mut tar, "./usr/share/AAVMF/AAVMF_CODE.secboot.fd", SECCODE);
        file(&mut tar, "./usr/share/AAVMF/AAVMF_VARS.fd", VARS);
        file(&mut tar, "./usr/share/AAVMF/AAVMF_VARS.ms.fd", MSVARS);
        file(
            &mut tar,
            "./usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
            b"bios",
        );
        file(
            &mut tar,
            "./usr/share/qemu/firmware/60-edk2-aarch64.json",
            b"{}",
        );
        file(&mut tar, "./usr/share/doc/qemu-efi-aarch64/copyright", b"c");
        link(
            &mut tar,
            "./usr/share/AAVMF/AAVMF_CODE.fd",
            "AAVMF_CODE.no-secboot.fd",
        );
        // A chain: ms -> snakeoil-ish alias -> secboot, with an absolute target.
        link(
            &mut tar,
            "./usr/share/AAVMF/AAVMF_CODE.ms.fd",
            "/usr/share/AAVMF/AAVMF_CODE.secboot.alias.fd",
        );
        link(
            &mut tar,
            "./usr/share/AAVMF/AAVMF_CODE.secboot.alias.fd",
            "../AAVMF/AAVMF_CODE.secboot.fd",
        );
        link(
            &mut tar,
            "./usr/share/AAVMF/dangling.fd",
            "../edk2/nowhere.fd",
        );
        let data = tar.into_inner().unwrap();
        let (name, data) = match compression {
            Compression::Gz => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(&data).unwrap();
                ("data.tar.gz", enc.finish().unwrap())
            }
            Compression::Xz => {
                let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
                enc.write_all(&data).unwrap();
                ("data.tar.xz", enc.finish().unwrap())
            }
            Compression::Zst => ("data.tar.zst", data),
        };
        let mut deb = ar::Builder::new(Vec::new());
        for (member, content) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.xz", b"not looked at".to_vec()),
            (name, data),
        ] {
            let header = ar::Header::new(member.as_bytes().to_vec(), content.len() as u64);
            deb.append(&header, &content[..]).unwrap();
        }
        deb.into_inner().unwrap()
    }

    fn entry_for(deb: &[u8], version: &str) -> PackageEntry {
        PackageEntry {
            package: PACKAGE.into(),
            version: version.into(),
            architecture: "all".into(),
            filename: format!("pool/main/e/edk2/{PACKAGE}_{version}_all.deb"),
            size: deb.len() as u64,
            sha256: hex::encode(Sha256::digest(deb)),
        }
    }

    fn check_unpacked(build: &Edk2Build) {
        let names: Vec<&str> = build.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AAVMF_CODE.fd",
                "AAVMF_CODE.ms.fd",
                "AAVMF_CODE.no-secboot.fd",
                "AAVMF_CODE.secboot.alias.fd",
                "AAVMF_CODE.secboot.fd",
                "AAVMF_VARS.fd",
                "AAVMF_VARS.ms.fd",
                "QEMU_EFI.fd",
            ]
        );
        for f in &build.files {
            let meta = fs::symlink_metadata(&f.path).unwrap();
            assert!(
                meta.file_type().is_file(),
                "{} is not a regular file",
                f.name
            );
            let content = fs::read(&f.path).unwrap();
            assert_eq!(content.len() as u64, f.size);
            assert_eq!(hex::encode(Sha256::digest(&content)), f.sha256);
        }
        assert_eq!(
            fs::read(&build.file("AAVMF_CODE.fd").unwrap().path).unwrap(),
            CODE
        );
        assert_eq!(
            fs::read(&build.file("AAVMF_CODE.ms.fd").unwrap().path).unwrap(),
            SECCODE
        );
        assert_eq!(build.variants(), ["default", "no-secboot", "secboot", "ms"]);
        let (code, vars) = build.firmware("default").unwrap();
        assert_eq!(code, build.dir.join("AAVMF_CODE.fd"));
        assert_eq!(vars, build.dir.join("AAVMF_VARS.fd"));
        let (code, vars) = build.firmware("ms").unwrap();
        assert_eq!(code, build.dir.join("AAVMF_CODE.ms.fd"));
        assert_eq!(vars, build.dir.join("AAVMF_VARS.ms.fd"));
        let err = build.firmware("strictnx").unwrap_err().to_string();
        assert!(
            err.contains("AAVMF_CODE.secboot.strictnx.fd")
                && err.contains("default, no-secboot, secboot, ms"),
            "{err}"
        );
        let err = build.firmware("bogus").unwrap_err().to_string();
        assert!(err.contains("known: default"), "{err}");
        build.verify().unwrap();
    }

    fn edk2_dir_entries(cache: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(cache.join("edk2"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn unpack_xz_and_gz_debs() {
        for (compression, version, request) in [
            (Compression::Xz, "2025.02-8", "2025.02"),
            (Compression::Gz, "1:9-1", "9"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let deb_bytes = make_deb(compression);
            let deb = tmp.path().join("x.deb");
            fs::write(&deb, &deb_bytes).unwrap();
            let cache = tmp.path().join("cache");
            let build =
                install_deb(&deb, &entry_for(&deb_bytes, version), "trixie", &cache).unwrap();
            assert_eq!(build.debian_version, version);
            assert_eq!(build.suite, "trixie");
            assert_eq!(build.dir, cache.join("edk2").join(version));
            check_unpacked(&build);
            // Only the finished directory is left, and it is found again through its manifest.
            assert_eq!(edk2_dir_entries(&cache), [version]);
            assert!(build.dir.join(MANIFEST_NAME).is_file());
            let again = find_cached(&cache, request).unwrap().unwrap();
            assert_eq!(again.debian_version, version);
            assert_eq!(again.files.len(), build.files.len());
        }
    }

    #[test]
    fn unsupported_data_compression_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let deb_bytes = make_deb(Compression::Zst);
        let deb = tmp.path().join("x.deb");
        fs::write(&deb, &deb_bytes).unwrap();
        let cache = tmp.path().join("cache");
        let err = install_deb(&deb, &entry_for(&deb_bytes, "1-1"), "sid", &cache).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("data.tar.zst") && err.contains("unsupported compression"),
            "{err}"
        );
        assert!(
            edk2_dir_entries(&cache).is_empty(),
            "left {:?}",
            edk2_dir_entries(&cache)
        );
    }

    #[test]
    fn sha256_mismatch_names_both_and_installs_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let deb_bytes = make_deb(Compression::Xz);
        let deb = tmp.path().join("x.deb");
        fs::write(&deb, &deb_bytes).unwrap();
        let cache = tmp.path().join("cache");
        let mut entry = entry_for(&deb_bytes, "2025.02-8");
        let actual = entry.sha256.clone();
        entry.sha256 = SHA_A.into();
        let err = install_deb(&deb, &entry, "trixie", &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains(SHA_A) && err.contains(&actual), "{err}");
        assert!(!cache.join("edk2/2025.02-8").exists());
        entry.size += 1;
        let err = install_deb(&deb, &entry, "trixie", &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains("size mismatch"), "{err}");
    }

    #[test]
    fn broken_cache_entries_are_ignored_and_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let broken = cache.join("edk2/2025.02-8");
        fs::create_dir_all(&broken).unwrap();
        fs::write(broken.join("AAVMF_CODE.fd"), b"half").unwrap();
        assert!(find_cached(&cache, "2025.02").unwrap().is_none());
        let deb_bytes = make_deb(Compression::Xz);
        let deb = tmp.path().join("x.deb");
        fs::write(&deb, &deb_bytes).unwrap();
        let build =
            install_deb(&deb, &entry_for(&deb_bytes, "2025.02-8"), "trixie", &cache).unwrap();
        check_unpacked(&build);
        assert!(find_cached(&cache, "2025.02").unwrap().is_some());
    }

    // -----------------------------------------------------------------------------------------
    // end to end against a signed fake mirror on loopback
    // -----------------------------------------------------------------------------------------

    fn packages_text(entries: &[PackageEntry], extra: &str) -> String {
        let mut text = format!(
            "Package: unrelated{extra}\nVersion: 1\nArchitecture: all\nFilename: pool/u.deb\n\
             Size: 1\nSHA256: {SHA_A}\n\n"
        );
        for e in entries {
            text.push_str(&format!(
                "Package: {}\nVersion: {}\nArchitecture: all\nFilename: {}\nSize: {}\n\
                 SHA256: {}\n\n",
                e.package, e.version, e.filename, e.size, e.sha256
            ));
        }
        text
    }

    /// Add a signed suite whose `main/binary-all` index (xz, or gz when `use_gz`) lists
    /// `entries`.
    fn add_suite(
        files: &mut Files,
        signer: &Signer,
        suite: &str,
        entries: &[PackageEntry],
        use_gz: bool,
    ) {
        let text = packages_text(entries, "");
        let index = if use_gz {
            ("main/binary-all/Packages.gz", gz(text.as_bytes()))
        } else {
            ("main/binary-all/Packages.xz", xz(text.as_bytes()))
        };
        add_signed_suite(files, signer, suite, &[index], "");
    }

    fn manifest(build: &Edk2Build) -> Manifest {
        serde_json::from_slice(&fs::read(build.dir.join(MANIFEST_NAME)).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn fetch_from_fake_mirror_then_from_cache() {
        let signer = Signer::generate("archive");
        let deb = make_deb(Compression::Xz);
        let old = entry_for(&deb, "2022.11-6+deb12u2");
        let new = entry_for(&deb, "2025.02-8+deb13u1");
        let mut files = Files::new();
        // No bullseye at all: skipped. bookworm (gz only) has another version.
        add_suite(
            &mut files,
            &signer,
            "bookworm",
            std::slice::from_ref(&old),
            true,
        );
        add_suite(
            &mut files,
            &signer,
            "trixie",
            std::slice::from_ref(&new),
            false,
        );
        files.insert(new.filename.clone(), deb.clone());
        files.insert(old.filename.clone(), deb.clone());
        let mirror = serve(files).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let tmp = tempfile::tempdir().unwrap();

        let build = fetch_edk2_from(&archive, "2025.02", tmp.path())
            .await
            .unwrap();
        assert_eq!(build.debian_version, "2025.02-8+deb13u1");
        assert_eq!(build.suite, "trixie");
        assert_eq!(build.deb_sha256, new.sha256);
        check_unpacked(&build);
        assert_eq!(
            manifest(&build).signed_release,
            Some(format!("{}/dists/trixie/InRelease", mirror.url))
        );
        let hits = mirror.hits();
        assert!(hits.iter().any(|h| h.ends_with(&new.filename)), "{hits:?}");
        assert!(!hits.iter().any(|h| h.contains("/sid/")), "{hits:?}");

        // Cached: no request at all, even with a mirror that cannot work.
        let n = mirror.hits().len();
        let again = fetch_edk2("bogus://nowhere", "2025.02-8", tmp.path())
            .await
            .unwrap();
        assert_eq!(again.dir, build.dir);
        assert_eq!(mirror.hits().len(), n);

        // The older version comes from bookworm's gz index.
        let old_build = fetch_edk2_from(&archive, "2022.11", tmp.path())
            .await
            .unwrap();
        assert_eq!(old_build.suite, "bookworm");

        let err = fetch_edk2_from(&archive, "2099.01", tmp.path())
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("bullseye: no index") && err.contains("trixie: 2025.02-8+deb13u1"),
            "{err}"
        );
        assert_eq!(
            edk2_dir_entries(tmp.path()),
            ["2022.11-6+deb12u2", "2025.02-8+deb13u1"]
        );
    }

    #[tokio::test]
    async fn corrupt_download_is_deleted() {
        let signer = Signer::generate("archive");
        let deb = make_deb(Compression::Xz);
        let mut entry = entry_for(&deb, "2025.02-8+deb13u1");
        entry.sha256 = SHA_B.to_owned();
        let mut files = Files::new();
        add_suite(
            &mut files,
            &signer,
            "trixie",
            std::slice::from_ref(&entry),
            false,
        );
        files.insert(entry.filename.clone(), deb.clone());
        let mirror = serve(files).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch_edk2_from(&archive, "2025.02", tmp.path())
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        let actual = hex::encode(Sha256::digest(&deb));
        assert!(err.contains(SHA_B) && err.contains(&actual), "{err}");
        assert!(
            edk2_dir_entries(tmp.path()).is_empty(),
            "{:?}",
            edk2_dir_entries(tmp.path())
        );
    }

    #[tokio::test]
    async fn a_bad_signature_stops_the_search_and_caches_nothing() {
        let signer = Signer::generate("archive");
        let stranger = Signer::generate("stranger");
        let deb = make_deb(Compression::Xz);
        let entry = entry_for(&deb, "2025.02-8+deb13u1");
        let mut files = Files::new();
        add_suite(&mut files, &stranger, "bookworm", &[], false);
        add_suite(
            &mut files,
            &signer,
            "trixie",
            std::slice::from_ref(&entry),
            false,
        );
        files.insert(entry.filename.clone(), deb.clone());
        let mirror = serve(files).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            fetch_edk2_from(&archive, "2025.02", tmp.path())
                .await
                .unwrap_err()
        );
        assert!(
            err.contains("reading the bookworm index")
                && err.contains("/dists/bookworm/InRelease: no valid signature by a key"),
            "{err}"
        );
        assert!(edk2_dir_entries(tmp.path()).is_empty());
        assert!(!mirror.hits().iter().any(|h| h.ends_with(".deb")));
    }

    #[tokio::test]
    async fn stale_binary_all_index_is_replaced_by_the_arm64_one_like_trixie() {
        // Like the frozen archive's trixie: its InRelease lists a newer binary-all index than
        // the mirror serves, with no by-hash copy, but the arm64 index (which lists
        // Architecture: all packages too) matches.
        let signer = Signer::generate("archive");
        let deb = make_deb(Compression::Xz);
        let entry = entry_for(&deb, "2025.02-8+deb13u1");
        let listed = xz(packages_text(std::slice::from_ref(&entry), "-newer").as_bytes());
        let served = xz(packages_text(std::slice::from_ref(&entry), "").as_bytes());
        for all_in_arch in [true, false] {
            let extra = if all_in_arch {
                "No-Support-for-Architecture-all: Packages\n"
            } else {
                ""
            };
            let mut files = Files::new();
            add_signed_suite(
                &mut files,
                &signer,
                "trixie",
                &[
                    ("main/binary-all/Packages.xz", listed.clone()),
                    ("main/binary-arm64/Packages.xz", served.clone()),
                ],
                extra,
            );
            files.insert(
                "dists/trixie/main/binary-all/Packages.xz".into(),
                served.clone(),
            );
            files.retain(|k, _| !k.contains("binary-all/by-hash"));
            files.insert(entry.filename.clone(), deb.clone());
            let mirror = serve(files).await;
            let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let result = fetch_edk2_from(&archive, "2025.02", tmp.path()).await;
            if all_in_arch {
                let build = result.unwrap();
                assert_eq!(build.suite, "trixie");
                assert!(manifest(&build).signed_release.is_some());
                assert_eq!(mirror.count("/binary-arm64/Packages.xz"), 1);
            } else {
                let err = format!("{:#}", result.unwrap_err());
                assert!(
                    err.contains("no copy of") && err.contains("binary-all/Packages"),
                    "{err}"
                );
                assert!(edk2_dir_entries(tmp.path()).is_empty());
            }
        }
    }

    #[test]
    fn entries_cached_before_signatures_were_checked_are_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let deb_bytes = make_deb(Compression::Xz);
        let deb = tmp.path().join("x.deb");
        fs::write(&deb, &deb_bytes).unwrap();
        let cache = tmp.path().join("cache");
        let build =
            install_deb(&deb, &entry_for(&deb_bytes, "2025.02-8"), "trixie", &cache).unwrap();
        let path = build.dir.join(MANIFEST_NAME);
        let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        m["format"] = 1.into();
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(find_cached(&cache, "2025.02").unwrap().is_none());
        let err = format!("{:#}", load_build(&build.dir).unwrap_err());
        assert!(
            err.contains("before archive signatures were checked"),
            "{err}"
        );
        // Installing again replaces it.
        install_deb(&deb, &entry_for(&deb_bytes, "2025.02-8"), "trixie", &cache).unwrap();
        assert!(find_cached(&cache, "2025.02").unwrap().is_some());
    }

    // -----------------------------------------------------------------------------------------
    // the real archive
    // -----------------------------------------------------------------------------------------

    /// Fetches 2025.02 (about 5 MiB, unpacking to about 600 MiB) from the mirror the host's
    /// apt configuration (or BOOTWATCH_MIRROR) names. Set BOOTWATCH_SKIP_NETWORK_TESTS=1 to
    /// skip it.
    #[tokio::test]
    async fn network_fetch_2025_02() {
        if std::env::var_os("BOOTWATCH_SKIP_NETWORK_TESTS").is_some_and(|v| !v.is_empty()) {
            eprintln!("skipped: BOOTWATCH_SKIP_NETWORK_TESTS is set");
            return;
        }
        let mirror = crate::inputs::debian::resolve_mirror(None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let build = fetch_edk2(&mirror, "2025.02", tmp.path()).await.unwrap();
        eprintln!(
            "cold fetch of {} from {}: {:?}",
            build.debian_version,
            build.suite,
            started.elapsed()
        );
        assert!(build.debian_version.starts_with("2025.02-"));
        let (code, vars) = build.firmware("default").unwrap();
        assert_eq!(fs::metadata(&code).unwrap().len(), 64 << 20);
        assert_eq!(fs::metadata(&vars).unwrap().len(), 64 << 20);
        for variant in ["no-secboot", "secboot", "strictnx", "ms", "snakeoil"] {
            build.firmware(variant).unwrap();
        }
        assert!(build.file("QEMU_EFI.fd").is_some());

        let started = Instant::now();
        let again = fetch_edk2("bogus://no-network", "2025.02", tmp.path())
            .await
            .unwrap();
        eprintln!("cached fetch: {:?}", started.elapsed());
        assert_eq!(again.dir, build.dir);
        assert_eq!(again.deb_sha256, build.deb_sha256);
    }
}
