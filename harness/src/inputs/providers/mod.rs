//! QEMU builds and firmware builds as named inputs ("providers"), spelled as strings in matrix
//! files and resolved to files on disk.
//!
//! QEMU providers ([`QemuProvider`]):
//!
//! | spelling                   | what                                                          |
//! |----------------------------|---------------------------------------------------------------|
//! | `host`                     | `qemu-system-aarch64` on `PATH`                               |
//! | `path:FILE`                | any binary (must exist and be executable)                     |
//! | `debian:SUITE`             | `qemu-system-arm` of that Debian suite, in a private root tree run through the tree's own loader, never installed on the host (see [`debian_tree`]) |
//! | `source:DIR`               | a QEMU source tree, built for `aarch64-softmmu` only (see [`source`]) |
//!
//! Firmware providers ([`FirmwareProvider`]):
//!
//! | spelling                       | what                                                      |
//! |--------------------------------|-----------------------------------------------------------|
//! | `host`                         | the host's edk2 ([`host_firmware`], e.g. `/usr/share/AAVMF/AAVMF_CODE.fd`) |
//! | `path:CODE` / `path:CODE,VARS` | any code image; the vars template next to it ([`crate::engine::case::sibling_vars`]) or given |
//! | `debian:VERSION[/VARIANT]`     | Debian's `qemu-efi-aarch64` of that version ([`crate::inputs::debian::fetch_edk2`]), variant as in [`crate::inputs::debian::VARIANTS`] (`secboot.strictnx` is accepted for `strictnx`) |
//! | `source:DIR[,OPTION...]`       | ArmVirtQemu built from an edk2 checkout at its current commit with Debian's flags, options `debug` and `secboot`/`strictnx` (see [`edk2_source`]) |
//!
//! Parsing checks spelling only; resolving ([`resolve_qemu`], [`resolve_firmware`]) checks that
//! the thing exists, fetches or builds it (cached under the cache root), and reads its version,
//! package version and hash from the artifact itself.

pub mod debian_tree;
pub mod edk2_source;
pub mod source;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use tokio_util::sync::CancellationToken;

use crate::core::launch::QemuExec;
use crate::sys::fsx;
use crate::sys::proc::Tool;

/// The accepted QEMU provider spellings, for error messages.
const QEMU_FORMS: &str = "host, path:/path/to/qemu-system-aarch64, debian:SUITE (e.g. debian:trixie), \
     source:/path/to/qemu-source-tree";
/// The accepted firmware provider spellings, for error messages.
const FIRMWARE_FORMS: &str = "host, path:/path/to/CODE.fd, path:/path/to/CODE.fd,/path/to/VARS.fd, \
     debian:VERSION (e.g. debian:2025.02), debian:VERSION/VARIANT (e.g. debian:2025.02/strictnx), \
     source:/path/to/edk2-checkout[,OPTION...] (options: release, debug, no-secboot, secboot, strictnx)";

/// How long `qemu-system-aarch64 --version` (or a dpkg query) may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a QEMU build comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QemuProvider {
    /// `host`: `qemu-system-aarch64` on `PATH`.
    Host,
    /// `path:FILE`: that binary.
    Path(PathBuf),
    /// `debian:SUITE`: the suite's `qemu-system-arm`, in a private root tree.
    Debian { suite: String },
    /// `source:DIR`: a QEMU source tree, built for aarch64-softmmu.
    Source { dir: PathBuf },
}

/// Where a firmware build comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FirmwareProvider {
    /// `host`: the host's edk2.
    Host,
    /// `path:CODE` or `path:CODE,VARS`.
    Path {
        code: PathBuf,
        vars: Option<PathBuf>,
    },
    /// `debian:VERSION` or `debian:VERSION/VARIANT` (`None` is the `default` variant).
    Debian {
        version: String,
        variant: Option<String>,
    },
    /// `source:DIR[,OPTION...]`: ArmVirtQemu built from an edk2 checkout.
    Source {
        dir: PathBuf,
        options: edk2_source::Options,
    },
}

fn nonempty_path(kind: &str, s: &str, rest: &str, example: &str) -> Result<PathBuf, String> {
    if rest.trim().is_empty() {
        return Err(format!(
            "{kind} provider {s:?} has an empty path (write {example})"
        ));
    }
    Ok(PathBuf::from(rest))
}

impl FromStr for QemuProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "host" {
            return Ok(QemuProvider::Host);
        }
        if let Some(rest) = t.strip_prefix("path:") {
            return nonempty_path("QEMU", s, rest, "path:/path/to/qemu-system-aarch64")
                .map(QemuProvider::Path);
        }
        if let Some(rest) = t.strip_prefix("source:") {
            return nonempty_path("QEMU", s, rest, "source:/path/to/qemu-source-tree")
                .map(|dir| QemuProvider::Source { dir });
        }
        if let Some(suite) = t.strip_prefix("debian:") {
            if suite.is_empty() {
                return Err(format!(
                    "QEMU provider {s:?} names no Debian suite (write e.g. debian:trixie, \
                     debian:bookworm-backports, debian:sid)"
                ));
            }
            let ok = suite
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !suite.starts_with('-');
            if !ok {
                return Err(format!(
                    "QEMU provider {s:?}: {suite:?} is not a Debian suite name (lower-case \
                     letters, digits and '-', e.g. debian:trixie, debian:bookworm-backports)"
                ));
            }
            return Ok(QemuProvider::Debian {
                suite: suite.to_owned(),
            });
        }
        Err(format!(
            "unknown QEMU provider {s:?}; accepted forms: {QEMU_FORMS}"
        ))
    }
}

impl fmt::Display for QemuProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QemuProvider::Host => f.write_str("host"),
            QemuProvider::Path(p) => write!(f, "path:{}", p.display()),
            QemuProvider::Debian { suite } => write!(f, "debian:{suite}"),
            QemuProvider::Source { dir } => write!(f, "source:{}", dir.display()),
        }
    }
}

/// Canonical variant name for a spelling: `secboot.strictnx` is `strictnx`, `default` is `None`.
fn canonical_variant(v: &str) -> Option<String> {
    match v {
        "default" => None,
        "secboot.strictnx" => Some("strictnx".to_owned()),
        other => Some(other.to_owned()),
    }
}

impl FromStr for FirmwareProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "host" {
            return Ok(FirmwareProvider::Host);
        }
        if let Some(rest) = t.strip_prefix("path:") {
            let example = "path:/path/to/CODE.fd or path:/path/to/CODE.fd,/path/to/VARS.fd";
            return match rest.split_once(',') {
                None => Ok(FirmwareProvider::Path {
                    code: nonempty_path("firmware", s, rest, example)?,
                    vars: None,
                }),
                Some((code, vars)) => {
                    if code.trim().is_empty() || vars.trim().is_empty() || vars.contains(',') {
                        return Err(format!(
                            "firmware provider {s:?}: expected exactly two non-empty paths \
                             separated by one comma ({example})"
                        ));
                    }
                    Ok(FirmwareProvider::Path {
                        code: PathBuf::from(code),
                        vars: Some(PathBuf::from(vars)),
                    })
                }
            };
        }
        if let Some(rest) = t.strip_prefix("source:") {
            let example = "source:/path/to/edk2 or source:/path/to/edk2,debug,strictnx";
            let mut parts = rest.split(',');
            let dir = nonempty_path("firmware", s, parts.next().unwrap_or(""), example)?;
            let words: Vec<&str> = parts.collect();
            let options = edk2_source::Options::parse(&words)
                .map_err(|e| format!("firmware provider {s:?}: {e} (write {example})"))?;
            return Ok(FirmwareProvider::Source { dir, options });
        }
        if let Some(rest) = t.strip_prefix("debian:") {
            let (version, variant) = match rest.split_once('/') {
                None => (rest, None),
                Some((v, var)) => (v, Some(var)),
            };
            let version_ok = !version.is_empty()
                && version.starts_with(|c: char| c.is_ascii_digit())
                && version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b));
            if !version_ok {
                return Err(format!(
                    "firmware provider {s:?}: {version:?} is not an edk2 package version (write \
                     e.g. debian:2025.02, debian:2022.11-6+deb12u2 or debian:2025.02/strictnx)"
                ));
            }
            let variant = match variant {
                None => None,
                Some(v) => {
                    let ok = !v.is_empty()
                        && v.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b)
                        });
                    if !ok {
                        return Err(format!(
                            "firmware provider {s:?}: {v:?} is not a variant name (known: {}, \
                             and secboot.strictnx for strictnx)",
                            crate::inputs::debian::VARIANTS.join(", ")
                        ));
                    }
                    canonical_variant(v)
                }
            };
            return Ok(FirmwareProvider::Debian {
                version: version.to_owned(),
                variant,
            });
        }
        Err(format!(
            "unknown firmware provider {s:?}; accepted forms: {FIRMWARE_FORMS}"
        ))
    }
}

impl fmt::Display for FirmwareProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirmwareProvider::Host => f.write_str("host"),
            FirmwareProvider::Path { code, vars: None } => write!(f, "path:{}", code.display()),
            FirmwareProvider::Path {
                code,
                vars: Some(vars),
            } => write!(f, "path:{},{}", code.display(), vars.display()),
            FirmwareProvider::Debian {
                version,
                variant: None,
            } => write!(f, "debian:{version}"),
            FirmwareProvider::Debian {
                version,
                variant: Some(v),
            } => write!(f, "debian:{version}/{v}"),
            FirmwareProvider::Source { dir, options } => {
                write!(f, "source:{}", dir.display())?;
                for w in options.words() {
                    write!(f, ",{w}")?;
                }
                Ok(())
            }
        }
    }
}

/// What resolving needs to know.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// The explicit `--mirror`, if any (else env `BOOTWATCH_MIRROR`, else apt's configuration:
    /// [`crate::inputs::debian::resolve_mirror`]).
    pub mirror: Option<String>,
    /// Where fetched and built things are cached (`qemu/`, `edk2/`), usually
    /// [`crate::sys::fsx::cache_root`].
    pub cache_root: PathBuf,
}

/// A QEMU ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedQemu {
    /// The canonical spelling of the provider.
    pub spec: String,
    /// The `qemu-system-aarch64` file itself.
    pub binary: PathBuf,
    /// How to run it (the default for `host` and `path:`; the tree's loader, libraries, modules
    /// and data for `debian:`; the source tree's `pc-bios` for `source:`).
    pub exec: QemuExec,
    /// The version `--version` reports, e.g. `10.0.13`.
    pub version: String,
    /// The whole first line of `--version`.
    pub version_line: String,
    /// The Debian package version when it came from a package (`debian:`; `host` when dpkg
    /// knows the binary).
    pub package: Option<String>,
    /// SHA256 of `binary`.
    pub sha256: String,
    /// Where it came from beyond the package version: the Debian suite and mirror, or the
    /// source tree and its commit (filled by the provider; see [`ResolvedQemu::input_record`]).
    pub origin: crate::engine::record::InputRecord,
}

impl ResolvedQemu {
    /// The record `case.json` keeps of this QEMU.
    pub fn input_record(&self) -> crate::engine::record::InputRecord {
        crate::engine::record::InputRecord {
            role: "qemu".into(),
            path: self.binary.clone(),
            sha256: Some(self.sha256.clone()),
            provider: Some(self.spec.clone()),
            version: Some(self.version.clone()),
            package_version: self.package.clone(),
            package: self.package.as_ref().map(|_| {
                self.origin
                    .package
                    .clone()
                    .unwrap_or("qemu-system-arm".into())
            }),
            ..self.origin.clone()
        }
    }
}

impl ResolvedFirmware {
    /// The records `case.json` keeps of this firmware: the code image and the vars template.
    pub fn input_records(&self) -> Vec<crate::engine::record::InputRecord> {
        let code = crate::engine::record::InputRecord {
            role: "firmware-code".into(),
            path: self.code.clone(),
            sha256: Some(self.code_sha256.clone()),
            provider: Some(self.spec.clone()),
            package_version: self.package.clone(),
            package: self
                .package
                .as_ref()
                .map(|_| "qemu-efi-aarch64".to_string()),
            version: self.package.as_deref().map(upstream_version),
            ..self.origin.clone()
        };
        let mut out = vec![code.clone()];
        if let Some(v) = &self.vars_template {
            out.push(crate::engine::record::InputRecord {
                role: "vars-template".into(),
                path: v.clone(),
                sha256: None,
                ..code
            });
        }
        out
    }
}

/// A firmware ready to load.
#[derive(Debug, Clone)]
pub struct ResolvedFirmware {
    /// The canonical spelling of the provider.
    pub spec: String,
    /// The code image.
    pub code: PathBuf,
    /// The variable-store template (copy it per guest), when there is one.
    pub vars_template: Option<PathBuf>,
    /// The Debian package version (`debian:`: the fetched `.deb`; `host`: dpkg's); for
    /// `source:`, what was built in one line ([`edk2_source::SourceBuild::summary`]).
    pub package: Option<String>,
    /// SHA256 of `code`.
    pub code_sha256: String,
    /// The package's suite, pool path and signed Release (`debian:`).
    pub origin: crate::engine::record::InputRecord,
    /// For `source:`: the commit, `git describe`, dirty flag, flags and submodule pins built.
    pub source_build: Option<edk2_source::SourceBuild>,
}

/// The upstream part of a Debian version: no epoch, no Debian revision, no `+ds`/`+dfsg`/`~`
/// suffix. `1:10.0.13+ds-1` -> `10.0.13`, `2025.02-8+deb13u1` -> `2025.02`.
pub fn upstream_version(debian_version: &str) -> String {
    let v = debian_version.trim();
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    let v = v.rsplit_once('-').map_or(v, |(upstream, _)| upstream);
    let v = v.split(['+', '~']).next().unwrap_or(v);
    v.to_owned()
}

/// The version in the first line of `qemu-system-aarch64 --version`:
/// `QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-1)` -> `10.0.13`.
pub fn parse_version_line(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("version ")?;
    let v = rest.split_whitespace().next()?;
    v.starts_with(|c: char| c.is_ascii_digit())
        .then(|| v.to_owned())
}

/// Resolve a QEMU provider: find, fetch or build it, and read its version and hash. When
/// `cancel` fires, a build in progress is stopped (its processes killed, nothing half-made left
/// in the cache) and an error is returned.
pub async fn resolve_qemu(
    p: &QemuProvider,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
) -> Result<ResolvedQemu> {
    let spec = p.to_string();
    let resolved = match p {
        QemuProvider::Host => {
            let binary = which::which("qemu-system-aarch64").map_err(|_| {
                anyhow!(
                    "qemu-system-aarch64 is not on PATH (install qemu-system-arm, or use \
                     path:/path/to/qemu-system-aarch64 or debian:SUITE)"
                )
            })?;
            let package = dpkg_package_version(&binary, cancel).await;
            let mut q =
                describe_qemu(spec.clone(), binary, QemuExec::default(), package, cancel).await?;
            q.origin.note = "the host's QEMU".into();
            q
        }
        QemuProvider::Path(path) => {
            let binary = std::path::absolute(path)
                .with_context(|| format!("making {} absolute", path.display()))?;
            check_executable(&binary)?;
            describe_qemu(spec.clone(), binary, QemuExec::default(), None, cancel).await?
        }
        QemuProvider::Debian { suite } => debian_tree::resolve(suite, ctx, cancel)
            .await
            .with_context(|| format!("QEMU provider {spec}"))?,
        QemuProvider::Source { dir } => {
            let (binary, exec) = source::build(dir, cancel)
                .await
                .with_context(|| format!("QEMU provider {spec}"))?;
            let mut q = describe_qemu(spec.clone(), binary, exec, None, cancel).await?;
            q.origin.source_commit = git_head(dir);
            q.origin.note = format!("built from the source tree {}", dir.display());
            q
        }
    };
    tracing::info!(
        provider = %spec,
        version = %resolved.version,
        binary = %resolved.binary.display(),
        "QEMU resolved"
    );
    Ok(resolved)
}

fn check_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("QEMU binary {}", path.display()))?;
    ensure!(
        meta.is_file(),
        "QEMU binary {} is not a regular file",
        path.display()
    );
    ensure!(
        meta.permissions().mode() & 0o111 != 0,
        "QEMU binary {} is not executable",
        path.display()
    );
    Ok(())
}

/// Version line, version and hash of a binary run through `exec`.
pub(crate) async fn describe_qemu(
    spec: String,
    binary: PathBuf,
    exec: QemuExec,
    package: Option<String>,
    cancel: &CancellationToken,
) -> Result<ResolvedQemu> {
    let version_line = version_line(&binary, &exec, cancel).await?;
    let version = parse_version_line(&version_line).ok_or_else(|| {
        anyhow!(
            "{} --version printed {version_line:?}, which has no version number",
            binary.display()
        )
    })?;
    let sha256 = sha256_file(&binary).await?;
    Ok(ResolvedQemu {
        spec,
        binary,
        exec,
        version,
        version_line,
        package,
        sha256,
        origin: Default::default(),
    })
}

/// The first line of `BINARY --version`, run through `exec` (its wrapper and environment);
/// remembered by the binary and `exec` (see [`fact_entry`]).
pub(crate) async fn version_line(
    binary: &Path,
    exec: &QemuExec,
    cancel: &CancellationToken,
) -> Result<String> {
    let salt = format!("{:?} {:?}", exec.wrapper, exec.env);
    let entry = fact_entry("qemu-version-line", binary, &salt);
    if let Some(line) = read_fact(&entry) {
        return Ok(line);
    }
    let line = version_line_uncached(binary, exec, cancel).await?;
    write_fact(&entry, &line);
    Ok(line)
}

async fn version_line_uncached(
    binary: &Path,
    exec: &QemuExec,
    cancel: &CancellationToken,
) -> Result<String> {
    let (program, mut args): (PathBuf, Vec<OsString>) = match exec.wrapper.split_first() {
        None => (binary.to_path_buf(), Vec::new()),
        Some((program, rest)) => {
            let mut args = rest.to_vec();
            args.push(binary.as_os_str().to_owned());
            (PathBuf::from(program), args)
        }
    };
    args.push("--version".into());
    let mut tool = Tool::new(&program)
        .args(&args)
        .timeout(VERSION_TIMEOUT)
        .cancel_on(cancel);
    for (k, v) in &exec.env {
        tool = tool.env(k, v);
    }
    let shown = tool.command_line();
    let out = tool.run().await?;
    let line = out
        .stdout_text()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    ensure!(
        !line.is_empty(),
        "`{shown}` printed nothing on its standard output{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .map(|l| format!(" (stderr: {l})"))
            .unwrap_or_default()
    );
    Ok(line)
}

/// The commit a git work tree has checked out (reading `.git/HEAD`, its ref and packed refs;
/// no git needed), if it is one.
pub fn git_head(dir: &Path) -> Option<String> {
    let mut git = dir.join(".git");
    if git.is_file() {
        // A worktree or submodule: "gitdir: PATH".
        let t = std::fs::read_to_string(&git).ok()?;
        git = dir.join(t.strip_prefix("gitdir:")?.trim());
    }
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref:") else {
        return Some(head.to_string());
    };
    let r = r.trim();
    let common = std::fs::read_to_string(git.join("commondir"))
        .ok()
        .map(|c| git.join(c.trim()))
        .unwrap_or_else(|| git.clone());
    for base in [&git, &common] {
        if let Ok(c) = std::fs::read_to_string(base.join(r)) {
            return Some(c.trim().to_string());
        }
        if let Ok(packed) = std::fs::read_to_string(base.join("packed-refs")) {
            for line in packed.lines() {
                if let Some((c, name)) = line.split_once(' ')
                    && name == r
                {
                    return Some(c.to_string());
                }
            }
        }
    }
    None
}

/// SHA256 of a file, hashed on a blocking thread.
pub(crate) async fn sha256_file(path: &Path) -> Result<String> {
    let p = path.to_path_buf();
    let info = tokio::task::spawn_blocking(move || crate::engine::record::FileInfo::of(&p))
        .await
        .context("hashing task")?
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(info.sha256)
}

/// Where a fact about the file at `path` is remembered across runs: by `kind`, the file's
/// identity ([`fsx::StatKey`]: device, inode, size, mtime, ctime) and `salt` (whatever else the
/// fact depends on). `None` when the file or the cache directory cannot be had. A crash run's
/// harness used to spend about 90 ms of CPU in the processes that find these facts (`dpkg-query
/// -S` reads dpkg's whole file list: 63 ms; `qemu-system-aarch64 --version` 20 ms), four times
/// its own CPU, for answers that change only when the file (or dpkg's database) does.
fn fact_entry(kind: &str, path: &Path, salt: &str) -> Option<PathBuf> {
    fact_entry_in(&fsx::cache_root().ok()?.join(FACTS_DIR), kind, path, salt)
}

fn fact_entry_in(dir: &Path, kind: &str, path: &Path, salt: &str) -> Option<PathBuf> {
    use sha2::Digest;
    let stamp = fsx::StatKey::of_path(path).ok()?.stamp();
    let salt = hex::encode(sha2::Sha256::digest(salt.as_bytes()));
    Some(dir.join(format!("{kind}-{stamp}-{}", &salt[..16])))
}

/// The directory of [`fact_entry`] under the cache root.
const FACTS_DIR: &str = "facts";

/// A remembered fact: `None` when there is none (or it does not parse).
fn read_fact(entry: &Option<PathBuf>) -> Option<String> {
    fsx::read_json::<String>(entry.as_deref()?)
}

/// Remembers a fact (best effort: a cache that cannot be written only costs the next run time).
fn write_fact(entry: &Option<PathBuf>, fact: &str) {
    if let Some(e) = entry
        && let Some(dir) = e.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = fsx::write_json_atomic(e, fact);
    }
}

/// The version of the Debian package owning `path`, if dpkg is present and knows the file;
/// remembered by the file and dpkg's status file (any package change rewrites it). Only a found
/// version is remembered: a file no package owns is asked about again.
async fn dpkg_package_version(path: &Path, cancel: &CancellationToken) -> Option<String> {
    let admin = std::env::var_os("DPKG_ADMINDIR")
        .map_or_else(|| PathBuf::from("/var/lib/dpkg"), PathBuf::from);
    let entry = fsx::StatKey::of_path(&admin.join("status"))
        .ok()
        .and_then(|status| fact_entry("dpkg-version", path, &status.stamp()));
    if let Some(v) = read_fact(&entry) {
        return Some(v);
    }
    let v = dpkg_package_version_uncached(path, cancel).await?;
    write_fact(&entry, &v);
    Some(v)
}

/// The version of the Debian package owning `path`, if dpkg is present and knows the file.
async fn dpkg_package_version_uncached(path: &Path, cancel: &CancellationToken) -> Option<String> {
    which::which("dpkg-query").ok()?;
    let mut candidates = vec![path.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(path)
        && real != path
    {
        candidates.push(real);
    }
    let query = |args: Vec<OsString>| {
        Tool::new("dpkg-query")
            .args(args)
            .timeout(VERSION_TIMEOUT)
            .cancel_on(cancel)
            .run()
    };
    for candidate in candidates {
        // Not owned by a package: exit status 1, and the next candidate is tried.
        let Ok(out) = query(vec!["-S".into(), candidate.into()]).await else {
            continue;
        };
        // "qemu-system-arm: /usr/bin/qemu-system-aarch64" (maybe "a, b: path" for shared files)
        let text = out.stdout_text();
        let Some((pkgs, _)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
            continue;
        };
        let pkg = pkgs.split(',').next().unwrap_or("").trim().to_owned();
        if pkg.is_empty() || pkg.starts_with("diversion by") {
            continue;
        }
        let out = query(vec!["-W".into(), "-f=${Version}".into(), pkg.into()])
            .await
            .ok()?;
        let version = out.stdout_text().trim().to_owned();
        if !version.is_empty() {
            return Some(version);
        }
    }
    None
}

/// What a `bootwatch boot` can say of its QEMU and firmware without a provider spelling: the
/// host's (`host`, with dpkg's package version), a tree or edk2 build of bootwatch's cache (its
/// manifest: `debian:SUITE`, `debian:VERSION/VARIANT`), or a path. Hashes are left to the case.
pub async fn describe_paths(
    qemu: &Path,
    code: &Path,
    vars: Option<&Path>,
    cancel: &CancellationToken,
) -> Vec<crate::engine::record::InputRecord> {
    use crate::engine::record::InputRecord;
    let mut out = Vec::new();
    let on_path = which::which(qemu).ok();
    let host_qemu = which::which("qemu-system-aarch64").ok();
    let mut q = InputRecord::new("qemu", on_path.as_deref().unwrap_or(qemu));
    if on_path.is_some() && on_path == host_qemu {
        q.provider = Some("host".into());
        if let Some(b) = &on_path {
            q.package_version = dpkg_package_version(b, cancel).await;
            q.package = q.package_version.as_ref().map(|_| "qemu-system-arm".into());
        }
    } else if let Some(b) = &on_path {
        q.provider = Some(format!("path:{}", b.display()));
    }
    out.push(q);
    let manifest = code
        .parent()
        .map(|d| d.join("bootwatch-edk2.json"))
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let mut c = InputRecord::new("firmware-code", code);
    if let Some(m) = manifest {
        let s = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let file = code.file_name().and_then(|f| f.to_str()).unwrap_or("");
        let variant = match file {
            "AAVMF_CODE.no-secboot.fd" => "/no-secboot",
            "AAVMF_CODE.secboot.fd" => "/secboot",
            "AAVMF_CODE.secboot.strictnx.fd" => "/strictnx",
            "AAVMF_CODE.ms.fd" => "/ms",
            "AAVMF_CODE.snakeoil.fd" => "/snakeoil",
            _ => "",
        };
        c.package = s("package");
        c.package_version = s("debian_version");
        c.version = c.package_version.as_deref().map(upstream_version);
        c.provider = c
            .package_version
            .as_ref()
            .map(|v| format!("debian:{v}{variant}"));
        c.suite = s("suite");
        c.url = s("filename");
        c.signed_release = s("signed_release");
        c.deb_sha256 = s("deb_sha256");
    } else if host_firmware().as_deref() == Some(code) {
        c.provider = Some("host".into());
        c.package_version = dpkg_package_version(code, cancel).await;
        c.package = c
            .package_version
            .as_ref()
            .map(|_| "qemu-efi-aarch64".into());
        c.version = c.package_version.as_deref().map(upstream_version);
    } else {
        c.provider = Some(format!("path:{}", code.display()));
    }
    let vars = vars
        .map(Path::to_path_buf)
        .or_else(|| crate::engine::case::sibling_vars(code));
    if let Some(v) = vars {
        let mut r = if v.parent() == code.parent() {
            c.clone()
        } else {
            let mut r = InputRecord::new("vars-template", &v);
            r.provider = Some(format!("path:{}", v.display()));
            r
        };
        r.role = "vars-template".into();
        r.path = v;
        out.push(c);
        out.push(r);
    } else {
        out.push(c);
    }
    out
}

/// The host's edk2 for aarch64, where the usual distributions put it.
pub fn host_firmware() -> Option<PathBuf> {
    [
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
        "/usr/share/qemu/edk2-aarch64-code.fd",
        "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
        "/usr/local/share/qemu/edk2-aarch64-code.fd",
        "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Where a cached Debian edk2 build came from: its suite, `.deb`, pool path and signed Release.
fn debian_origin(
    build: &crate::inputs::debian::Edk2Build,
    origin: &mut crate::engine::record::InputRecord,
) {
    origin.suite = Some(build.suite.clone());
    origin.deb_sha256 = Some(build.deb_sha256.clone());
    origin.signed_release = build.signed_release.clone();
    if !build.filename.is_empty() {
        // The mirror's pool path: the same file on every Debian mirror.
        origin.url = Some(build.filename.clone());
    }
}

/// Resolve a firmware provider: find or fetch it and hash its code image. When `cancel` fires,
/// a download in progress is abandoned and an error is returned.
pub async fn resolve_firmware(
    p: &FirmwareProvider,
    ctx: &ProviderContext,
    cancel: &CancellationToken,
) -> Result<ResolvedFirmware> {
    let spec = p.to_string();
    let mut origin = crate::engine::record::InputRecord::default();
    let mut source_build = None;
    let (code, vars_template, package) = match p {
        FirmwareProvider::Host => {
            let code = host_firmware().ok_or_else(|| {
                anyhow!(
                    "firmware provider host: no host edk2 found (install qemu-efi-aarch64, or use \
                     path:CODE or debian:VERSION)"
                )
            })?;
            let vars = crate::engine::case::sibling_vars(&code);
            let package = dpkg_package_version(&code, cancel).await;
            origin.note = "the host's edk2".into();
            (code, vars, package)
        }
        FirmwareProvider::Path { code, vars } => {
            let code = std::path::absolute(code)
                .with_context(|| format!("making {} absolute", code.display()))?;
            ensure!(
                code.is_file(),
                "firmware provider {spec}: code image {} does not exist or is not a file",
                code.display()
            );
            let vars = match vars {
                Some(v) => {
                    let v = std::path::absolute(v)?;
                    ensure!(
                        v.is_file(),
                        "firmware provider {spec}: vars template {} does not exist or is not a file",
                        v.display()
                    );
                    Some(v)
                }
                None => {
                    let is_pflash = std::fs::metadata(&code)
                        .is_ok_and(|m| m.len() == crate::core::launch::PFLASH_SIZE);
                    match crate::engine::case::sibling_vars(&code) {
                        Some(v) => Some(v),
                        // A small image is loaded with -bios and needs no vars store.
                        None if !is_pflash => None,
                        None => bail!(
                            "firmware provider {spec}: no vars template found next to {} (tried \
                             the names with CODE/EFI replaced by VARS); write \
                             path:{},/path/to/VARS.fd",
                            code.display(),
                            code.display()
                        ),
                    }
                }
            };
            (code, vars, None)
        }
        FirmwareProvider::Debian { version, variant } => {
            let variant = variant.as_deref().unwrap_or("default");
            ensure!(
                crate::inputs::debian::VARIANTS.contains(&variant),
                "firmware provider {spec}: unknown edk2 variant {variant:?}; known variants: {} \
                 (and secboot.strictnx for strictnx)",
                crate::inputs::debian::VARIANTS.join(", ")
            );
            let cache_root = ctx.cache_root.clone();
            let build = match crate::inputs::debian::find_cached(&cache_root, version)? {
                Some(build) => build,
                None => {
                    let mirror = crate::inputs::debian::resolve_mirror(ctx.mirror.as_deref())?;
                    let fetch = crate::inputs::debian::fetch_edk2(&mirror, version, &cache_root);
                    // Dropping the fetch abandons the download; what it staged is removed.
                    tokio::select! {
                        r = fetch => r.with_context(|| format!("firmware provider {spec}"))?,
                        _ = cancel.cancelled() => bail!("firmware provider {spec}: cancelled"),
                    }
                }
            };
            let (code, vars) = build
                .firmware(variant)
                .with_context(|| format!("firmware provider {spec}"))?;
            debian_origin(&build, &mut origin);
            (code, Some(vars), Some(build.debian_version.clone()))
        }
        FirmwareProvider::Source { dir, options } => {
            let built = edk2_source::build(dir, *options, &ctx.cache_root, cancel)
                .await
                .with_context(|| format!("firmware provider {spec}"))?;
            let summary = built.build.summary();
            origin.note = format!("built from source: {summary}");
            origin.source_commit = built.build.commit.clone();
            source_build = Some(built.build);
            (built.code, Some(built.vars), Some(summary))
        }
    };
    let code_sha256 = sha256_file(&code).await?;
    let mut package = package;
    if let FirmwareProvider::Path { .. } = p {
        // A code image and vars template that are files of one cached Debian build (linked or
        // copied: the same sha256) keep that build's provenance.
        let root = ctx.cache_root.clone();
        let sha = code_sha256.clone();
        let found = tokio::task::spawn_blocking(move || {
            crate::inputs::debian::find_cached_file(&root, &sha)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        let found = match (found, &vars_template) {
            (Some(f), Some(v)) => {
                let v_sha = sha256_file(v).await?;
                f.0.files.iter().any(|x| x.sha256 == v_sha).then_some(f)
            }
            (f, _) => f,
        };
        if let Some((build, name)) = found {
            debian_origin(&build, &mut origin);
            origin.note = format!(
                "{name} of Debian's qemu-efi-aarch64 {} (same sha256)",
                build.debian_version
            );
            package = Some(build.debian_version.clone());
        }
    }
    tracing::info!(provider = %spec, code = %code.display(), "firmware resolved");
    Ok(ResolvedFirmware {
        spec,
        code,
        vars_template,
        package,
        code_sha256,
        origin,
        source_build,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fact is found again for the same file and salt, and not for a changed file (its
    /// identity changes) or another salt (another wrapper, another dpkg database).
    #[test]
    fn a_fact_is_remembered_by_the_files_identity_and_salt() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("qemu-system-aarch64");
        std::fs::write(&file, b"one").unwrap();
        let facts = dir.path().join("facts");
        let entry = fact_entry_in(&facts, "k", &file, "salt");
        assert_eq!(read_fact(&entry), None);
        write_fact(&entry, "1:7.2+dfsg-7");
        assert_eq!(
            read_fact(&fact_entry_in(&facts, "k", &file, "salt")).as_deref(),
            Some("1:7.2+dfsg-7")
        );
        assert_eq!(read_fact(&fact_entry_in(&facts, "k", &file, "other")), None);
        assert_eq!(read_fact(&fact_entry_in(&facts, "j", &file, "salt")), None);
        std::fs::write(&file, b"another").unwrap();
        assert_eq!(read_fact(&fact_entry_in(&facts, "k", &file, "salt")), None);
        assert_eq!(
            fact_entry_in(&facts, "k", &dir.path().join("gone"), "salt"),
            None
        );
    }

    #[test]
    fn qemu_spellings_round_trip() {
        for s in [
            "host",
            "path:/usr/bin/qemu-system-aarch64",
            "path:relative/qemu",
            "debian:trixie",
            "debian:bookworm-backports",
            "debian:sid",
            "source:/src/qemu",
        ] {
            let p: QemuProvider = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<QemuProvider>().unwrap(), p);
        }
        assert_eq!(
            " debian:bullseye ".parse::<QemuProvider>().unwrap(),
            QemuProvider::Debian {
                suite: "bullseye".into()
            }
        );
    }

    #[test]
    fn bad_qemu_spellings_name_the_text_and_the_forms() {
        for (s, needle) in [
            ("debian:", "names no Debian suite"),
            ("debian:Trixie", "not a Debian suite name"),
            ("debian:tri/xie", "not a Debian suite name"),
            ("foo:bar", "accepted forms: host, path:"),
            ("", "accepted forms"),
            ("hostt", "accepted forms"),
            ("path:", "empty path"),
            ("source: ", "empty path"),
        ] {
            let err = s.parse::<QemuProvider>().unwrap_err();
            assert!(err.contains(&format!("{s:?}")), "{s}: {err}");
            assert!(err.contains(needle), "{s}: {err}");
        }
        let err = "foo:bar".parse::<QemuProvider>().unwrap_err();
        assert!(
            err.contains("debian:SUITE") && err.contains("source:"),
            "{err}"
        );
    }

    #[test]
    fn firmware_spellings_round_trip() {
        for s in [
            "host",
            "path:/x/CODE.fd",
            "path:/x/CODE.fd,/x/VARS.fd",
            "debian:2022.11",
            "debian:2025.02/strictnx",
            "debian:2026.08/secboot",
            "debian:2025.02/no-secboot",
            "debian:2025.02-8+deb13u1/ms",
            "source:/src/edk2",
            "source:/src/edk2,debug",
            "source:/src/edk2,strictnx",
            "source:/src/edk2,debug,secboot",
        ] {
            let p: FirmwareProvider = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<FirmwareProvider>().unwrap(), p);
        }
        // Short and long forms of the same thing.
        assert_eq!(
            "debian:2025.02/secboot.strictnx"
                .parse::<FirmwareProvider>()
                .unwrap()
                .to_string(),
            "debian:2025.02/strictnx"
        );
        assert_eq!(
            "debian:2025.02/default"
                .parse::<FirmwareProvider>()
                .unwrap(),
            FirmwareProvider::Debian {
                version: "2025.02".into(),
                variant: None
            }
        );
        // Options in any order, defaults dropped, long variant names accepted.
        assert_eq!(
            "source:/src/edk2,secboot.strictnx,release"
                .parse::<FirmwareProvider>()
                .unwrap()
                .to_string(),
            "source:/src/edk2,strictnx"
        );
        assert_eq!(
            "source:/src/edk2,strictnx,debug"
                .parse::<FirmwareProvider>()
                .unwrap(),
            FirmwareProvider::Source {
                dir: "/src/edk2".into(),
                options: edk2_source::Options {
                    variant: edk2_source::Variant::Strictnx,
                    build_type: edk2_source::BuildType::Debug,
                }
            }
        );
        // A syntactically fine but unknown variant is only refused when resolving.
        assert!("debian:2025.02/bogus".parse::<FirmwareProvider>().is_ok());
    }

    #[test]
    fn bad_firmware_spellings_name_the_text_and_the_forms() {
        for (s, needle) in [
            ("debian:", "not an edk2 package version"),
            ("debian:/strictnx", "not an edk2 package version"),
            ("debian:latest", "not an edk2 package version"),
            ("debian:2025.02/", "not a variant name"),
            ("debian:2025.02/Strict NX", "not a variant name"),
            ("path:", "empty path"),
            ("path:/a,", "two non-empty paths"),
            ("path:,/b", "two non-empty paths"),
            ("path:/a,/b,/c", "two non-empty paths"),
            ("foo:bar", "accepted forms: host, path:"),
            ("edk2", "accepted forms"),
            ("source:", "empty path"),
            ("source:,debug", "empty path"),
            ("source:/src/edk2,fast", "not an edk2 source build option"),
            ("source:/src/edk2,debug,release", "more than one build type"),
        ] {
            let err = s.parse::<FirmwareProvider>().unwrap_err();
            assert!(err.contains(&format!("{s:?}")), "{s}: {err}");
            assert!(err.contains(needle), "{s}: {err}");
        }
        let err = "debian:2025.02/".parse::<FirmwareProvider>().unwrap_err();
        assert!(
            err.contains("strictnx") && err.contains("no-secboot"),
            "{err}"
        );
    }

    #[test]
    fn upstream_versions() {
        for (debian, upstream) in [
            ("1:10.0.13+ds-1", "10.0.13"),
            ("2025.02-8+deb13u1", "2025.02"),
            ("2022.11-6+deb12u2", "2022.11"),
            ("1:5.2+dfsg-11+deb11u3", "5.2"),
            ("1:7.2+dfsg-7+deb12u13", "7.2"),
            ("2020.11-2+deb11u1", "2020.11"),
            ("1:11.1.3+ds-1", "11.1.3"),
            ("1.0", "1.0"),
            ("1.0~rc1-2", "1.0"),
        ] {
            assert_eq!(upstream_version(debian), upstream, "{debian}");
        }
    }

    #[test]
    fn version_lines() {
        for (line, v) in [
            (
                "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-1)",
                Some("10.0.13"),
            ),
            (
                "QEMU emulator version 5.2.0 (Debian 1:5.2+dfsg-11+deb11u3)",
                Some("5.2.0"),
            ),
            (
                "QEMU emulator version 9.2.50 (v9.2.0-1234-gabcdef)",
                Some("9.2.50"),
            ),
            ("QEMU emulator version 8.0.0", Some("8.0.0")),
            ("something else", None),
        ] {
            assert_eq!(parse_version_line(line).as_deref(), v, "{line}");
        }
    }

    fn ctx(dir: &Path) -> ProviderContext {
        ProviderContext {
            mirror: Some("http://127.0.0.1:9/nowhere".into()),
            cache_root: dir.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn unknown_debian_variant_is_refused_before_any_fetch() {
        let tmp = tempfile::tempdir().unwrap();
        let p: FirmwareProvider = "debian:2025.02/bogus".parse().unwrap();
        let err = format!(
            "{:#}",
            resolve_firmware(&p, &ctx(tmp.path()), &CancellationToken::new())
                .await
                .unwrap_err()
        );
        assert!(err.contains("\"bogus\""), "{err}");
        for v in crate::inputs::debian::VARIANTS {
            assert!(err.contains(v), "{err}");
        }
        assert!(!tmp.path().join("edk2").exists());
    }

    #[tokio::test]
    async fn path_providers_check_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let c = ctx(tmp.path());
        let never = CancellationToken::new();
        // QEMU: missing, not executable, and a real executable answering --version.
        let missing = QemuProvider::Path(tmp.path().join("nope"));
        let err = format!(
            "{:#}",
            resolve_qemu(&missing, &c, &never).await.unwrap_err()
        );
        assert!(err.contains("nope"), "{err}");
        let script = tmp.path().join("fake-qemu");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'QEMU emulator version 9.9.9 (test)'\necho 'Copyright'\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            resolve_qemu(&QemuProvider::Path(script.clone()), &c, &never)
                .await
                .unwrap_err()
        );
        assert!(err.contains("not executable"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let q = resolve_qemu(&QemuProvider::Path(script.clone()), &c, &never)
            .await
            .unwrap();
        assert_eq!(q.version, "9.9.9");
        assert_eq!(q.version_line, "QEMU emulator version 9.9.9 (test)");
        assert_eq!(q.exec, QemuExec::default());
        assert_eq!(q.package, None);
        assert_eq!(q.sha256.len(), 64);

        // Firmware: a 64 MiB code image needs a vars template; a small one does not.
        let code = tmp.path().join("MY_CODE.fd");
        let f = std::fs::File::create(&code).unwrap();
        f.set_len(crate::core::launch::PFLASH_SIZE).unwrap();
        let p = FirmwareProvider::Path {
            code: code.clone(),
            vars: None,
        };
        let err = format!("{:#}", resolve_firmware(&p, &c, &never).await.unwrap_err());
        assert!(err.contains("no vars template"), "{err}");
        std::fs::write(tmp.path().join("MY_VARS.fd"), b"v").unwrap();
        let r = resolve_firmware(&p, &c, &never).await.unwrap();
        assert_eq!(r.vars_template, Some(tmp.path().join("MY_VARS.fd")));
        let p = FirmwareProvider::Path {
            code: code.clone(),
            vars: Some(tmp.path().join("missing.fd")),
        };
        let err = format!("{:#}", resolve_firmware(&p, &c, &never).await.unwrap_err());
        assert!(err.contains("missing.fd"), "{err}");
    }
}
