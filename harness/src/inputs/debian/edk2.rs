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
    let edk2_dir = cache_root.join("edk2");
    let entries = match fs::read_dir(&edk2_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", edk2_dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", edk2_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !version_matches(request, &name) {
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
