//! `debian:SUITE`: QEMU from another Debian suite, run beside the host's and never installed on
//! the host.
//!
//! A per-suite root tree is made with `mmdebstrap --variant=essential
//! --include=qemu-system-arm=VERSION` (documentation, man pages and locales excluded; as root
//! `--mode=unshare`, whose mounts live in mmdebstrap's own mount and pid namespaces, so a build
//! that is stopped half-way leaves nothing mounted on the host, where `root` mode would leave
//! `/proc`, `/sys` and `/dev` bind mounts inside the cache; otherwise `--mode=auto`, which is
//! `unshare` or `fakechroot`) and its QEMU is run directly from the host, no chroot, through the
//! tree's own dynamic loader:
//!
//! ```text
//! QEMU_MODULE_DIR=TREE/usr/lib/x86_64-linux-gnu/qemu \
//! LOADER --library-path TREE/usr/lib/x86_64-linux-gnu:TREE/lib/x86_64-linux-gnu \
//!   TREE/usr/bin/qemu-system-aarch64 -L TREE/usr/share/qemu ...
//! ```
//!
//! where `LOADER` is the tree's `ld-linux-x86-64.so.2`, found by following symlinks *inside*
//! the tree ([`resolve_in_tree`]; in old suites `lib64/ld-linux-x86-64.so.2` is an absolute
//! symlink that would otherwise point at the host's loader).
//!
//! # Cache layout
//!
//! `CACHE_ROOT/qemu/debian-<suite>-<qemu-system-arm version>/` (an epoch's `:` written `%3a`,
//! as apt does, because `:` separates `--library-path` entries) holds `root/` (the tree),
//! `mmdebstrap.log` and the manifest `bootwatch-qemu.json` ([`TreeManifest`]). It is built in a
//! hidden `.build-*` directory next to it and renamed into place, under a per-suite `flock`, so a
//! directory with that name is always complete.
//!
//! The package version comes from the suite's `main/binary-amd64/Packages` index; the answer is
//! remembered for [`INDEX_TTL`] in `qemu/index-<suite>.json`, so a resolution within that time
//! whose tree exists does no network I/O at all. When the index cannot be read but a tree of
//! that suite is cached, the newest cached one is used (with a warning).

use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ProviderContext, ResolvedQemu, describe_qemu, sha256_file};
use crate::core::launch::QemuExec;
use crate::sys::proc::Tool;

/// The Debian binary package that carries `qemu-system-aarch64`.
pub const QEMU_PACKAGE: &str = "qemu-system-arm";
/// The manifest written last into each tree directory.
pub const MANIFEST_NAME: &str = "bootwatch-qemu.json";
/// How long a suite's looked-up package version is trusted without asking the mirror again.
pub const INDEX_TTL: Duration = Duration::from_secs(24 * 3600);
const MANIFEST_FORMAT: u32 = 1;
const STALE_BUILD_AGE: Duration = Duration::from_secs(6 * 3600);
const LIB_DIRS: &[&str] = &["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"];
const LOADER_CANDIDATES: &[&str] = &[
    "lib64/ld-linux-x86-64.so.2",
    "usr/lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
];

/// What a complete tree directory records about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TreeManifest {
    pub format: u32,
    pub suite: String,
    /// `qemu-system-arm`'s Debian version, as installed in the tree.
    pub package_version: String,
    /// From `--version`, e.g. `10.0.13`.
    pub qemu_version: String,
    pub qemu_version_line: String,
    /// SHA256 of `root/usr/bin/qemu-system-aarch64`.
    pub binary_sha256: String,
    /// When the tree was built (RFC 3339).
    pub built_at: String,
    /// How long mmdebstrap and the checks took.
    pub build_seconds: f64,
    /// Bytes of regular files in the tree.
    pub tree_bytes: u64,
    pub mirror: String,
}

/// A complete, cached tree.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `CACHE_ROOT/qemu/debian-<suite>-<version>/`
    pub dir: PathBuf,
    pub manifest: TreeManifest,
}

impl Tree {
    /// The root file system inside the directory.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// The remembered answer of a suite's index.
#[derive(Debug, Serialize, Deserialize)]
struct IndexRecord {
    suite: String,
    mirror: String,
    version: String,
    /// Unix seconds.
    fetched_at: u64,
}

/// Directory name of a tree: `debian-<suite>-<version>` with `:` as `%3a`.
pub fn tree_dir_name(suite: &str, package_version: &str) -> String {
    format!("debian-{suite}-{}", package_version.replace(':', "%3a"))
}

/// Resolve `debian:SUITE` to a runnable QEMU (building and caching its tree if needed; a build
/// stopped by `cancel` leaves nothing behind).
pub(super) async fn resolve(
    suite: &str,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
) -> Result<ResolvedQemu> {
    let qemu_dir = ctx.cache_root.join("qemu");
    ensure!(
        !qemu_dir.to_string_lossy().contains(':'),
        "the cache directory {} contains ':', which the loader's --library-path cannot express; \
         set BOOTWATCH_CACHE to another directory",
        qemu_dir.display()
    );
    let tree = find_or_build(suite, ctx, &qemu_dir, cancel).await?;
    runnable(&tree, cancel).await
}

async fn find_or_build(
    suite: &str,
    ctx: &ProviderContext,
    qemu_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Tree> {
    let mirror = crate::inputs::debian::resolve_mirror(ctx.mirror.as_deref());
    // A fresh remembered index answer whose tree exists: no network at all.
    if let Ok(mirror) = &mirror
        && let Some(rec) = read_index_record(qemu_dir, suite)
        && rec.mirror == *mirror
        && age_of(rec.fetched_at) < INDEX_TTL
        && let Some(tree) = load_tree(&qemu_dir.join(tree_dir_name(suite, &rec.version)))
    {
        tracing::debug!(dir = %tree.dir.display(), "QEMU tree served from cache");
        return Ok(tree);
    }
    let looked_up = match &mirror {
        Ok(mirror) => tokio::select! {
            r = lookup_version(mirror, suite) => r.map(|v| (mirror.clone(), v)),
            _ = cancel.cancelled() => bail!("cancelled"),
        },
        Err(e) => Err(anyhow!("{e:#}")),
    };
    let (mirror, version) = match looked_up {
        Ok(found) => found,
        Err(e) => {
            if let Some(tree) = newest_cached(qemu_dir, suite) {
                tracing::warn!(
                    suite,
                    cached = %tree.manifest.package_version,
                    "cannot read the suite's package index ({e:#}); using the newest cached \
                     tree, {}",
                    tree.dir.display()
                );
                return Ok(tree);
            }
            return Err(e);
        }
    };
    write_index_record(qemu_dir, suite, &mirror, &version);
    if let Some(tree) = load_tree(&qemu_dir.join(tree_dir_name(suite, &version))) {
        return Ok(tree);
    }
    build_locked(suite, &version, &mirror, qemu_dir, cancel).await
}

fn age_of(unix_secs: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_secs(unix_secs))
}

fn index_record_path(qemu_dir: &Path, suite: &str) -> PathBuf {
    qemu_dir.join(format!("index-{suite}.json"))
}

fn read_index_record(qemu_dir: &Path, suite: &str) -> Option<IndexRecord> {
    let text = fs::read(index_record_path(qemu_dir, suite)).ok()?;
    let rec: IndexRecord = serde_json::from_slice(&text).ok()?;
    (rec.suite == suite).then_some(rec)
}

fn write_index_record(qemu_dir: &Path, suite: &str, mirror: &str, version: &str) {
    let rec = IndexRecord {
        suite: suite.to_owned(),
        mirror: mirror.to_owned(),
        version: version.to_owned(),
        fetched_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    };
    let result = fs::create_dir_all(qemu_dir).and_then(|_| {
        crate::engine::record::write_json_atomic(&index_record_path(qemu_dir, suite), &rec)
    });
    if let Err(e) = result {
        tracing::debug!("could not remember the {suite} index answer: {e:#}");
    }
}

/// The newest `qemu-system-arm` version in the suite's `main/binary-amd64` index, read
/// through [`crate::inputs::debian::Archive`] (signed Release, verified index).
pub async fn lookup_version(mirror: &str, suite: &str) -> Result<String> {
    let archive = crate::inputs::debian::Archive::new(mirror)?;
    let started = Instant::now();
    let entries = archive
        .find(suite, "main", "amd64", QEMU_PACKAGE)
        .await?
        .ok_or_else(|| {
            anyhow!("the mirror {mirror} has no suite {suite:?} with a main/binary-amd64 index")
        })?;
    tracing::debug!(
        suite,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index read"
    );
    entries
        .into_iter()
        .map(|e| e.version)
        .max_by(|a, b| crate::inputs::debian::compare_versions(a, b))
        .ok_or_else(|| anyhow!("{mirror} {suite} main/binary-amd64 lists no {QEMU_PACKAGE}"))
}

/// The tree in `dir` if it is complete (manifest readable, binary present).
pub fn load_tree(dir: &Path) -> Option<Tree> {
    let text = fs::read(dir.join(MANIFEST_NAME)).ok()?;
    let manifest: TreeManifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "ignoring a tree with an unreadable manifest: {e}");
            return None;
        }
    };
    if manifest.format != MANIFEST_FORMAT {
        return None;
    }
    let tree = Tree {
        dir: dir.to_path_buf(),
        manifest,
    };
    resolve_in_tree(&tree.root(), Path::new("usr/bin/qemu-system-aarch64"))
        .ok()
        .filter(|p| p.is_file())?;
    Some(tree)
}

/// The complete cached tree of `suite` with the greatest package version.
pub fn newest_cached(qemu_dir: &Path, suite: &str) -> Option<Tree> {
    let prefix = format!("debian-{suite}-");
    fs::read_dir(qemu_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| load_tree(&e.path()))
        .filter(|t| t.manifest.suite == suite)
        .max_by(|a, b| {
            crate::inputs::debian::compare_versions(
                &a.manifest.package_version,
                &b.manifest.package_version,
            )
        })
}

/// The resolved QEMU of a complete tree: checks that the binary is still the one built.
async fn runnable(tree: &Tree, cancel: &CancellationToken) -> Result<ResolvedQemu> {
    let root = tree.root();
    let (binary, exec) = exec_for(&root)?;
    let spec = format!("debian:{}", tree.manifest.suite);
    let resolved = describe_qemu(
        spec,
        binary,
        exec,
        Some(tree.manifest.package_version.clone()),
        cancel,
    )
    .await?;
    let mut resolved = resolved;
    resolved.origin.suite = Some(tree.manifest.suite.clone());
    resolved.origin.note = format!(
        "qemu-system-arm of {} from {}, in a private root tree",
        tree.manifest.suite, tree.manifest.mirror
    );
    ensure!(
        resolved.sha256 == tree.manifest.binary_sha256,
        "{} changed since the tree was built (sha256 {} now, {} then); delete {} to rebuild it",
        resolved.binary.display(),
        resolved.sha256,
        tree.manifest.binary_sha256,
        tree.dir.display()
    );
    Ok(resolved)
}

/// The binary and the way to run it for a root tree.
pub fn exec_for(root: &Path) -> Result<(PathBuf, QemuExec)> {
    let binary = resolve_in_tree(root, Path::new("usr/bin/qemu-system-aarch64"))?;
    let loader = find_loader(root)?;
    let lib_path = LIB_DIRS
        .iter()
        .map(|d| root.join(d).to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let exec = QemuExec {
        wrapper: vec![
            loader.into_os_string(),
            OsString::from("--library-path"),
            OsString::from(lib_path),
        ],
        env: vec![(
            OsString::from("QEMU_MODULE_DIR"),
            root.join("usr/lib/x86_64-linux-gnu/qemu").into_os_string(),
        )],
        data_dir: Some(root.join("usr/share/qemu")),
    };
    Ok((binary, exec))
}

/// The tree's own `ld-linux-x86-64.so.2` (symlinks followed inside the tree).
pub fn find_loader(root: &Path) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for candidate in LOADER_CANDIDATES {
        match resolve_in_tree(root, Path::new(candidate)) {
            Ok(p) if p.is_file() => return Ok(p),
            Ok(p) => tried.push(format!("{candidate} ({} is not a file)", p.display())),
            Err(e) => tried.push(format!("{candidate} ({e:#})")),
        }
    }
    bail!(
        "no dynamic loader in the tree {}; tried {}",
        root.display(),
        tried.join(", ")
    )
}

/// `path` (relative to `root`) with every symlink followed *inside* `root`: an absolute link
/// target is taken relative to `root`, `..` never climbs above it. The result exists.
pub fn resolve_in_tree(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new(); // reversed: next component last
    push_components(&mut pending, path);
    let mut current: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&current);
        here.push(&part);
        let meta = fs::symlink_metadata(&here)
            .with_context(|| format!("{} (inside {})", here.display(), root.display()))?;
        if meta.file_type().is_symlink() {
            hops += 1;
            ensure!(
                hops <= 40,
                "too many levels of symbolic links resolving {} inside {}",
                path.display(),
                root.display()
            );
            let target = fs::read_link(&here)?;
            if target.is_absolute() {
                current.clear();
            }
            push_components(&mut pending, &target);
        } else {
            current.push(part);
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&current);
    Ok(out)
}

fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    pending.extend(parts.into_iter().rev());
}

/// mmdebstrap's mode: `unshare` as root (see the module documentation), else `auto`.
pub fn mmdebstrap_mode() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        "unshare"
    } else {
        "auto"
    }
}

/// The `mmdebstrap` arguments for a tree of `suite` with `qemu-system-arm` at `version`, in
/// `mode` ([`mmdebstrap_mode`]). `X-backports` is built on `X` with both suites as sources (and
/// the backport's version is checked after the build, see [`installed_version`]).
pub fn mmdebstrap_args(
    suite: &str,
    version: &str,
    mirror: &str,
    target: &Path,
    mode: &str,
) -> Vec<OsString> {
    let base = suite
        .strip_suffix("-backports")
        .filter(|b| !b.is_empty())
        .unwrap_or(suite);
    // A backport needs its companion packages (which it depends on with exact or minimum
    // versions) from the backports suite too; apt does not move them there by itself.
    let include = if base == suite {
        format!("--include={QEMU_PACKAGE}={version}")
    } else {
        let pkgs: Vec<String> = [QEMU_PACKAGE, "qemu-system-common", "qemu-system-data"]
            .iter()
            .map(|p| format!("{p}/{suite}"))
            .collect();
        format!("--include={}", pkgs.join(","))
    };
    let mut args: Vec<OsString> = [
        format!("--mode={mode}"),
        "--variant=essential".to_owned(),
        include,
        "--aptopt=Acquire::Check-Valid-Until \"false\"".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/doc/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/man/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/info/*".to_owned(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(base.into());
    args.push(target.as_os_str().to_owned());
    if base == suite {
        args.push(mirror.into());
    } else {
        args.push(format!("deb {mirror} {base} main").into());
        args.push(format!("deb {mirror} {suite} main").into());
    }
    args
}

async fn build_locked(
    suite: &str,
    version: &str,
    mirror: &str,
    qemu_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Tree> {
    fs::create_dir_all(qemu_dir).with_context(|| format!("creating {}", qemu_dir.display()))?;
    let lock_path = qemu_dir.join(format!(".debian-{suite}.lock"));
    tracing::debug!(lock = %lock_path.display(), "waiting for the tree lock");
    let Some(guard) = crate::sys::fsx::FileLock::acquire_cancellable(&lock_path, cancel).await?
    else {
        bail!("cancelled while waiting for {}", lock_path.display());
    };
    let final_dir = qemu_dir.join(tree_dir_name(suite, version));
    if let Some(tree) = load_tree(&final_dir) {
        tracing::debug!(dir = %final_dir.display(), "built by someone else meanwhile");
        return Ok(tree);
    }
    remove_stale_builds(qemu_dir, suite);
    let result = build(suite, version, mirror, qemu_dir, cancel).await;
    drop(guard);
    result
}

fn remove_stale_builds(qemu_dir: &Path, suite: &str) {
    let prefix = format!(".build-debian-{suite}-");
    crate::sys::fsx::sweep_stale(qemu_dir, &[prefix.as_str()], STALE_BUILD_AGE);
}

/// Builds the tree in a hidden staging directory and renames it into place. On every error,
/// cancellation included, the staging directory is removed (its processes are gone by then).
async fn build(
    suite: &str,
    version: &str,
    mirror: &str,
    qemu_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Tree> {
    which::which("mmdebstrap").map_err(|_| {
        anyhow!(
            "mmdebstrap is not installed (apt-get install mmdebstrap); it builds the {suite} tree"
        )
    })?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".build-debian-{suite}-"))
        .tempdir_in(qemu_dir)
        .with_context(|| format!("creating a temporary directory in {}", qemu_dir.display()))?;
    let result = build_in(suite, version, mirror, qemu_dir, staging.path(), cancel).await;
    match result {
        Ok(tree) => {
            // Renamed into place (or superseded by a cached tree and removed with the guard).
            if staging.path().exists() {
                drop_in_background(staging).await;
            } else {
                let _ = staging.keep();
            }
            Ok(tree)
        }
        Err(e) => {
            drop_in_background(staging).await;
            Err(e)
        }
    }
}

/// Removes a staging directory on a blocking thread (a tree is thousands of files).
async fn drop_in_background(staging: tempfile::TempDir) {
    let _ = tokio::task::spawn_blocking(move || drop(staging)).await;
}

async fn build_in(
    suite: &str,
    version: &str,
    mirror: &str,
    qemu_dir: &Path,
    staging: &Path,
    cancel: &CancellationToken,
) -> Result<Tree> {
    let root = staging.join("root");
    let args = mmdebstrap_args(suite, version, mirror, &root, mmdebstrap_mode());
    tracing::info!(
        suite,
        version,
        "building a QEMU tree with mmdebstrap (about 20-60 s)"
    );
    let started = Instant::now();
    Tool::new("mmdebstrap")
        .args(&args)
        .log_to(staging.join("mmdebstrap.log"))
        .cancel_on(cancel)
        .run()
        .await?;
    let installed = installed_version(&root, QEMU_PACKAGE)?;
    if installed != version {
        tracing::warn!(
            suite,
            index = version,
            installed,
            "the tree has another {QEMU_PACKAGE} than the index named"
        );
    }
    let (binary, exec) = exec_for(&root)?;
    let line = super::version_line(&binary, &exec, cancel)
        .await
        .context("the tree's QEMU does not run through its loader")?;
    let qemu_version =
        super::parse_version_line(&line).ok_or_else(|| anyhow!("no version in {line:?}"))?;
    let binary_sha256 = sha256_file(&binary).await?;
    let root2 = root.clone();
    let tree_bytes = tokio::task::spawn_blocking(move || tree_size(&root2))
        .await
        .context("size task")?;
    ensure!(!cancel.is_cancelled(), "cancelled");
    let manifest = TreeManifest {
        format: MANIFEST_FORMAT,
        suite: suite.to_owned(),
        package_version: installed.clone(),
        qemu_version,
        qemu_version_line: line,
        binary_sha256,
        built_at: jiff::Timestamp::now().to_string(),
        build_seconds: started.elapsed().as_secs_f64(),
        tree_bytes,
        mirror: mirror.to_owned(),
    };
    crate::engine::record::write_json_atomic(&staging.join(MANIFEST_NAME), &manifest)?;
    let final_dir = qemu_dir.join(tree_dir_name(suite, &installed));
    if let Some(tree) = load_tree(&final_dir) {
        // The index was stale and the installed version is cached already.
        return Ok(tree);
    }
    crate::sys::fsx::replace_dir(staging, &final_dir, "QEMU tree")?;
    tracing::info!(
        dir = %final_dir.display(),
        seconds = manifest.build_seconds,
        mib = manifest.tree_bytes >> 20,
        "QEMU tree built"
    );
    // The tree's paths changed with the rename: load it from its final place.
    load_tree(&final_dir)
        .ok_or_else(|| anyhow!("{} is incomplete after the build", final_dir.display()))
}

/// An installed package's version from the tree's dpkg status database.
pub fn installed_version(root: &Path, package: &str) -> Result<String> {
    let path = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    crate::inputs::debian::packages::parse_dpkg_status(&text)
        .with_context(|| path.display().to_string())?
        .into_iter()
        .find(|p| p.name == package)
        .map(|p| p.version)
        .ok_or_else(|| anyhow!("{package} is not installed in {}", root.display()))
}

fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake old-style tree: `lib64/ld-linux-x86-64.so.2` is an absolute symlink into the
    /// tree's multiarch directory, which a host lookup would follow to the host's loader.
    fn fake_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("lib/x86_64-linux-gnu/ld-2.31.so"), b"tree loader").unwrap();
        symlink(
            "ld-2.31.so",
            root.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            root.join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        fs::write(root.join("usr/bin/qemu-system-aarch64"), b"qemu").unwrap();
        tmp
    }

    #[test]
    fn absolute_loader_symlink_resolves_inside_the_tree() {
        let tmp = fake_tree();
        let root = tmp.path();
        let loader = find_loader(root).unwrap();
        assert_eq!(loader, root.join("lib/x86_64-linux-gnu/ld-2.31.so"));
        assert_eq!(fs::read(&loader).unwrap(), b"tree loader");
        // `..` cannot climb out of the tree, and a usrmerge-style relative directory link works.
        symlink("../../../../etc/passwd", root.join("usr/bin/escape")).unwrap();
        assert!(resolve_in_tree(root, Path::new("usr/bin/escape")).is_err());
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        fs::remove_file(root.join("lib64/ld-linux-x86-64.so.2")).unwrap();
        fs::remove_dir(root.join("lib64")).unwrap();
        symlink("usr/lib64", root.join("lib64")).unwrap();
        symlink(
            "/lib/x86_64-linux-gnu/ld-2.31.so",
            root.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        assert_eq!(
            find_loader(root).unwrap(),
            root.join("lib/x86_64-linux-gnu/ld-2.31.so")
        );
        // A loop is an error, not a hang.
        symlink("loop-b", root.join("usr/bin/loop-a")).unwrap();
        symlink("/usr/bin/loop-a", root.join("usr/bin/loop-b")).unwrap();
        let err = resolve_in_tree(root, Path::new("usr/bin/loop-a")).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn exec_wraps_the_binary_in_the_trees_loader() {
        let tmp = fake_tree();
        let root = tmp.path();
        let (binary, exec) = exec_for(root).unwrap();
        assert_eq!(binary, root.join("usr/bin/qemu-system-aarch64"));
        let lib_path = format!(
            "{}:{}",
            root.join("usr/lib/x86_64-linux-gnu").display(),
            root.join("lib/x86_64-linux-gnu").display()
        );
        assert_eq!(
            exec.wrapper,
            [
                root.join("lib/x86_64-linux-gnu/ld-2.31.so")
                    .into_os_string(),
                OsString::from("--library-path"),
                OsString::from(lib_path),
            ]
        );
        assert_eq!(
            exec.env,
            [(
                OsString::from("QEMU_MODULE_DIR"),
                root.join("usr/lib/x86_64-linux-gnu/qemu").into_os_string()
            )]
        );
        assert_eq!(exec.data_dir, Some(root.join("usr/share/qemu")));
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mmdebstrap_arguments() {
        let args = mmdebstrap_args(
            "trixie",
            "1:10.0.13+ds-1",
            "http://m/debian",
            Path::new("/t"),
            "unshare",
        );
        let args = strings(&args);
        assert!(args.contains(&"--mode=unshare".to_owned()));
        assert!(args.contains(&"--include=qemu-system-arm=1:10.0.13+ds-1".to_owned()));
        assert!(args.contains(&"--variant=essential".to_owned()));
        assert!(args.contains(&"--aptopt=Acquire::Check-Valid-Until \"false\"".to_owned()));
        assert!(args.contains(&"--dpkgopt=path-exclude=/usr/share/doc/*".to_owned()));
        assert_eq!(args[args.len() - 3..], ["trixie", "/t", "http://m/debian"]);

        let args = mmdebstrap_args(
            "bookworm-backports",
            "1:10.0.2+ds-2~bpo12+1",
            "http://m/debian",
            Path::new("/t"),
            "auto",
        );
        let args = strings(&args);
        assert_eq!(
            args[args.len() - 4..],
            [
                "bookworm",
                "/t",
                "deb http://m/debian bookworm main",
                "deb http://m/debian bookworm-backports main"
            ]
        );
        assert!(args.contains(
            &"--include=qemu-system-arm/bookworm-backports,qemu-system-common/bookworm-backports,\
              qemu-system-data/bookworm-backports"
                .to_owned()
        ));
    }

    #[test]
    fn dir_names_and_dpkg_status() {
        assert_eq!(
            tree_dir_name("trixie", "1:10.0.13+ds-1"),
            "debian-trixie-1%3a10.0.13+ds-1"
        );
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("var/lib/dpkg")).unwrap();
        fs::write(
            tmp.path().join("var/lib/dpkg/status"),
            "Package: qemu-system-armhf\nVersion: 9\n\nPackage: qemu-system-arm\nStatus: deinstall ok \
             config-files\nVersion: 1:5.0-1\n\nPackage: qemu-system-arm\nStatus: install ok \
             installed\nVersion: 1:5.2+dfsg-11+deb11u3\nDepends: x,\n y\n\n",
        )
        .unwrap();
        assert_eq!(
            installed_version(tmp.path(), "qemu-system-arm").unwrap(),
            "1:5.2+dfsg-11+deb11u3"
        );
        assert!(installed_version(tmp.path(), "nope").is_err());
    }

    #[test]
    fn cached_trees_are_found_and_ranked() {
        let tmp = tempfile::tempdir().unwrap();
        let qemu_dir = tmp.path();
        for version in ["1:10.0.2+ds-1", "1:10.0.13+ds-1"] {
            let dir = qemu_dir.join(tree_dir_name("trixie", version));
            let t = fake_tree();
            fs::create_dir_all(dir.join("root/usr/bin")).unwrap();
            fs::copy(
                t.path().join("usr/bin/qemu-system-aarch64"),
                dir.join("root/usr/bin/qemu-system-aarch64"),
            )
            .unwrap();
            let m = TreeManifest {
                format: MANIFEST_FORMAT,
                suite: "trixie".into(),
                package_version: version.into(),
                qemu_version: upstream(version),
                qemu_version_line: String::new(),
                binary_sha256: String::new(),
                built_at: String::new(),
                build_seconds: 0.0,
                tree_bytes: 0,
                mirror: String::new(),
            };
            fs::write(dir.join(MANIFEST_NAME), serde_json::to_vec(&m).unwrap()).unwrap();
        }
        // An incomplete one (no manifest) is ignored.
        fs::create_dir_all(qemu_dir.join(tree_dir_name("trixie", "1:99-1"))).unwrap();
        let newest = newest_cached(qemu_dir, "trixie").unwrap();
        assert_eq!(newest.manifest.package_version, "1:10.0.13+ds-1");
        assert!(newest_cached(qemu_dir, "sid").is_none());
        // `trixie` must not pick up `trixie-backports` trees by prefix.
        assert!(newest_cached(qemu_dir, "trixie-backports").is_none());
    }

    fn upstream(v: &str) -> String {
        super::super::upstream_version(v)
    }
}
