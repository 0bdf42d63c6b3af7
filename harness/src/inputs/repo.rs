//! Local apt repositories for hermetic in-guest upgrades: build one from `.deb` files, serve it
//! to the guest over HTTP, and make the two updates the upgrade scenarios install.
//!
//! # Layout: a flat repository
//!
//! [`build_repo`] writes a *flat* repository (Debian wiki "DebianRepository/Format", "Flat
//! Repository Format"): everything sits in one directory, the `.deb` files under their canonical
//! names `<package>_<version without epoch>_<arch>.deb`, next to `Packages`, `Packages.gz` and a
//! `Release` file listing both indexes with their size, MD5 and SHA256. The guest's apt reads it
//! through one sources line whose "suite" is `./` (see [`Repo::sources_line`]):
//!
//! ```text
//! deb [trusted=yes] http://10.0.2.2:PORT/ ./
//! ```
//!
//! The `Packages` stanzas are generated here from each `.deb`'s own `control` file (every field
//! as the package has it, then `Filename`, `Size`, `MD5sum`, `SHA256`), like
//! `dpkg-scanpackages` would, without needing dpkg on the host.
//!
//! # How the guest trusts it
//!
//! The repository is not signed. The guest trusts it only through the `[trusted=yes]` option of
//! that one sources line (apt's `sources.list(5)`): apt then skips the signature check for this
//! source only and still checks every downloaded index and `.deb` against the `Release` file's
//! hashes and the `Packages` hashes. Nothing on the host is changed (no keys, no apt
//! configuration): the line is written into the guest by whoever drives the upgrade. The host
//! is `10.0.2.2` from a guest on QEMU user networking (`-netdev user`, no forwards needed), so
//! [`serve`] binds only `127.0.0.1`.
//!
//! For a hermetic upgrade the guest's apt should see *only* this source (as
//! [`crate::engine::runner::upgrade_command`] arranges with `Dir::Etc::SourceList` and
//! `Dir::Etc::SourceParts`), because the guest's own Debian sources are not
//! reachable in CI. Dependencies are then satisfied by what the guest has installed plus this
//! repository, which is why [`good_update`] puts into the repository every package the update
//! newly needs (see there).
//!
//! # The two updates
//!
//! * [`good_update`]: a real, newer Debian boot loader (GRUB 2.12 from `bookworm-backports`)
//!   for a Debian 12 guest, downloaded from the archive and verified; a healthy guest is
//!   expected to reach GRUB after it.
//! * [`bad_update`]: a `shim-signed` built here whose `postinst` puts an EFI application that
//!   crashes at its entry point ([`crate::inputs::fixtures::Fixture::Crash`]) where the firmware loads
//!   the boot loader from; the next boot ends in edk2's `Synchronous Exception` before GRUB
//!   (with Secure Boot off: a firmware enforcing Secure Boot would refuse the unsigned
//!   application instead).
//!
//! # Trust in the archive
//!
//! The good update's packages come through [`crate::inputs::debian::Archive`]: the suites'
//! Release files are OpenPGP-verified against the archive keyring, their indexes checked against
//! them and every `.deb` against its index (see [`crate::inputs::debian`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tower_http::services::ServeDir;

use crate::inputs::debian::deb::{DebMember, read_control, write_deb};
use crate::inputs::debian::packages::{PackageEntry, parse_index};
use crate::inputs::debian::plan::{Index, plan_update};
use crate::inputs::debian::{Archive, INDEX_CACHE_DIR, compare_versions};
use crate::inputs::fixtures::Fixture;

/// The host's address as a guest on QEMU user networking sees it.
pub const GUEST_HOST_ADDR: &str = "10.0.2.2";
/// Debian architecture of the guests.
pub const ARCH: &str = "arm64";
/// Suite the good update's packages come from.
pub const GOOD_UPDATE_SUITE: &str = "bookworm-backports";
/// Suite of the guest the good update is made for.
pub const GOOD_UPDATE_BASE_SUITE: &str = "bookworm";
/// The packages the good update upgrades (GRUB's EFI packages for arm64, from one source
/// package, which depend on each other's exact version). Whatever else they need is added by
/// [`good_update`].
pub const GOOD_UPDATE_PACKAGES: &[&str] = &[
    "grub-efi-arm64-signed",
    "grub-efi-arm64",
    "grub-efi-arm64-bin",
    "grub-common",
    "grub2-common",
];
/// `Suite`/`Codename` of the good update's repository.
pub const GOOD_REPO_SUITE: &str = "bootwatch-good";
/// `Suite`/`Codename` of the bad update's repository.
pub const BAD_REPO_SUITE: &str = "bootwatch-bad";
/// Appended to the installed `shim-signed` version to make the bad package's version.
pub const BAD_VERSION_SUFFIX: &str = "+bootwatch.bad1";
/// The bad package's name.
pub const BAD_PACKAGE: &str = "shim-signed";
/// Where the bad package installs the crashing EFI application.
pub const CRASH_APP_PATH: &str = "/usr/lib/bootwatch/crash-bootaa64.efi";
/// The files the bad package's `postinst` replaces with the crashing application: the boot
/// loader Debian's boot entry points at, and the removable-media fallback path.
pub const ESP_TARGETS: &[&str] = &[
    "/boot/efi/EFI/debian/shimaa64.efi",
    "/boot/efi/EFI/BOOT/BOOTAA64.EFI",
];
/// Suffix of the copies the bad package's `postinst` keeps of the files it replaces.
pub const SAVED_SUFFIX: &str = ".bootwatch-saved";

/// Fields of a `.deb`'s control file that the index writes itself.
const INDEX_OWN_FIELDS: &[&str] = &[
    "Filename",
    "Size",
    "MD5sum",
    "SHA1",
    "SHA256",
    "SHA512",
    "Description-md5",
];

// ---------------------------------------------------------------------------------------------
// Repositories
// ---------------------------------------------------------------------------------------------

/// A flat apt repository written by [`build_repo`].
#[derive(Debug, Clone, Serialize)]
pub struct Repo {
    /// The repository's directory (serve it with [`serve`]).
    pub dir: PathBuf,
    /// `Suite` and `Codename` of its `Release` file.
    pub suite: String,
    /// Its packages, sorted by name and version.
    pub packages: Vec<RepoPackage>,
}

/// One package of a [`Repo`], as its `Packages` stanza lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoPackage {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// File name in the repository directory (`Filename`, relative to the repository's URL).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub md5: String,
    /// Where the package came from: the archive suite it was downloaded from, `bootwatch` for
    /// packages built here, `None` when [`build_repo`] was simply given the file.
    pub origin: Option<String>,
}

impl Repo {
    /// The guest's apt sources line for this repository served on the host's `port`:
    /// `deb [trusted=yes] http://10.0.2.2:PORT/ ./`.
    pub fn sources_line(&self, port: u16) -> String {
        self.sources_line_at(&format!("http://{GUEST_HOST_ADDR}:{port}/"))
    }

    /// The apt sources line for this repository at `base_url` (the URL of its directory).
    pub fn sources_line_at(&self, base_url: &str) -> String {
        format!("deb [trusted=yes] {}/ ./", base_url.trim_end_matches('/'))
    }

    /// The package called `name`, if the repository has it.
    pub fn package(&self, name: &str) -> Option<&RepoPackage> {
        self.packages.iter().find(|p| p.package == name)
    }
}

/// Write a flat apt repository into `dir` (created if missing) holding `debs`.
///
/// Each `.deb` is placed in `dir` under its canonical name `<package>_<version without
/// epoch>_<arch>.deb` (hard-linked when possible, else copied; left alone if it is already
/// that file), and described in `Packages`/`Packages.gz` by a stanza made from its control
/// file. `Release` names `suite` as `Suite` and `Codename` and lists both indexes with size,
/// MD5 and SHA256. The index files are replaced atomically; other files in `dir` are left
/// alone and not indexed. Two `.deb`s with the same package, version and architecture are an
/// error.
pub fn build_repo(dir: &Path, debs: &[PathBuf], suite: &str) -> Result<Repo> {
    ensure!(
        !suite.is_empty()
            && suite
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b)),
        "unusable repository suite name {suite:?}"
    );
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut stanzas: BTreeMap<(String, String, String), (String, RepoPackage)> = BTreeMap::new();
    for deb in debs {
        let control = read_control(deb)?;
        // deb822-lossless keeps every field's text as the package has it (continuation lines
        // and their indentation included), so the index repeats it verbatim.
        let mut stanza = deb822_lossless::Deb822::from_str(&control)
            .map_err(|e| anyhow!("{}: unreadable control file: {e}", deb.display()))?
            .paragraphs()
            .next()
            .ok_or_else(|| anyhow!("{}: empty control file", deb.display()))?;
        let get = |key: &str| {
            stanza
                .get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow!("{}: control file has no {key} field", deb.display()))
        };
        let (package, version, architecture) =
            (get("Package")?, get("Version")?, get("Architecture")?);
        let filename = deb_file_name(&package, &version, &architecture)
            .with_context(|| format!("{}: unusable control fields", deb.display()))?;
        let key = (package.clone(), version.clone(), architecture.clone());
        ensure!(
            !stanzas.contains_key(&key),
            "two packages are {package} {version} {architecture} (the second is {})",
            deb.display()
        );
        let dest = dir.join(&filename);
        place_file(deb, &dest)?;
        let digest = hash_file(&dest)?;
        let own: Vec<String> = stanza
            .keys()
            .filter(|k| INDEX_OWN_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k)))
            .collect();
        for k in own {
            stanza.remove(&k);
        }
        let mut text = stanza.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "Filename: {filename}\nSize: {}\nMD5sum: {}\nSHA256: {}\n",
            digest.size, digest.md5, digest.sha256
        ));
        let entry = RepoPackage {
            package,
            version,
            architecture,
            filename,
            size: digest.size,
            sha256: digest.sha256,
            md5: digest.md5,
            origin: None,
        };
        stanzas.insert(key, (text, entry));
    }

    let packages_text = stanzas
        .values()
        .map(|(text, _)| text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let packages_gz = gzip(packages_text.as_bytes())?;
    let mut archs: BTreeSet<&str> = stanzas
        .values()
        .map(|(_, p)| p.architecture.as_str())
        .filter(|a| *a != "all")
        .collect();
    if archs.is_empty() {
        archs.insert("all");
    }
    let indexes: [(&str, &[u8]); 2] = [
        ("Packages", packages_text.as_bytes()),
        ("Packages.gz", &packages_gz),
    ];
    let mut release = format!(
        "Origin: bootwatch\nLabel: bootwatch\nSuite: {suite}\nCodename: {suite}\nDate: {}\n\
         Architectures: {}\nDescription: local repository made by bootwatch for a test upgrade\n",
        jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S UTC"),
        archs.into_iter().collect::<Vec<_>>().join(" ")
    );
    release.push_str("MD5Sum:\n");
    for (name, data) in &indexes {
        release.push_str(&format!(
            " {} {:>16} {name}\n",
            hex::encode(Md5::digest(data)),
            data.len()
        ));
    }
    release.push_str("SHA256:\n");
    for (name, data) in &indexes {
        release.push_str(&format!(
            " {} {:>16} {name}\n",
            hex::encode(Sha256::digest(data)),
            data.len()
        ));
    }
    // Indexes first, Release last: a reader never sees a Release naming missing indexes.
    for (name, data) in indexes {
        write_atomic(&dir.join(name), data)?;
    }
    write_atomic(&dir.join("Release"), release.as_bytes())?;
    Ok(Repo {
        dir: dir.to_path_buf(),
        suite: suite.to_owned(),
        packages: stanzas.into_values().map(|(_, p)| p).collect(),
    })
}

/// `<package>_<version without epoch>_<arch>.deb`, refusing names that could leave the
/// directory or confuse a URL.
fn deb_file_name(package: &str, version: &str, arch: &str) -> Result<String> {
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    let name = format!("{package}_{upstream}_{arch}.deb");
    ensure!(
        !package.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b)),
        "unusable package name, version or architecture in {name:?}"
    );
    Ok(name)
}

/// Put `src` at `dest`: nothing if they are the same file, else a hard link, else a copy
/// (through a temporary file and a rename, so `dest` is never half written).
fn place_file(src: &Path, dest: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (src.canonicalize(), dest.canonicalize())
        && a == b
    {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".place-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?
        .into_temp_path();
    fs::remove_file(&tmp).ok();
    if fs::hard_link(src, &tmp).is_err() {
        fs::copy(src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    }
    tmp.persist(dest)
        .with_context(|| format!("moving a copy of {} to {}", src.display(), dest.display()))?;
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Ok(crate::sys::fsx::write_atomic(path, data)?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // GzEncoder writes a zero mtime and no file name: the same input gives the same bytes.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

struct FileDigest {
    size: u64,
    sha256: String,
    md5: String,
}

fn hash_file(path: &Path) -> Result<FileDigest> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut sha, mut md5, mut size) = (Sha256::new(), Md5::new(), 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        size,
        sha256: hex::encode(sha.finalize()),
        md5: hex::encode(md5.finalize()),
    })
}

// ---------------------------------------------------------------------------------------------
// The bad update
// ---------------------------------------------------------------------------------------------

/// A repository in `out_dir` holding one package built here: `shim-signed` for arm64, version
/// `base_version` + [`BAD_VERSION_SUFFIX`] (an upgrade of the installed `shim-signed
/// base_version`), with no dependencies, installing the crashing EFI application
/// ([`Fixture::Crash`]) as [`CRASH_APP_PATH`]. Its `postinst configure` copies that
/// application over [`ESP_TARGETS`] (each whose directory exists; none existing is an error,
/// so a guest without its ESP mounted fails the upgrade instead of silently staying healthy),
/// after saving each previous file once as `<file>.bootwatch-saved`, then runs `sync`. Paths
/// are prefixed with `$DPKG_ROOT` (empty in a normal installation). The package's description
/// says that it is a deliberately broken test package made by bootwatch.
///
/// Installing it (for example `apt-get full-upgrade`) and rebooting makes edk2 load the
/// application (through the boot entry for `EFI/debian/shimaa64.efi`, or the removable
/// path), which stops the machine with `Synchronous Exception` before GRUB. With Secure Boot
/// enforced the firmware would refuse the unsigned application instead.
pub fn bad_update(out_dir: &Path, base_version: &str) -> Result<Repo> {
    let base_version = base_version.trim();
    ensure!(
        !base_version.is_empty()
            && base_version.starts_with(|c: char| c.is_ascii_digit())
            && base_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b)),
        "not a Debian version: {base_version:?}"
    );
    let version = format!("{base_version}{BAD_VERSION_SUFFIX}");
    ensure!(
        compare_versions(&version, base_version) == Ordering::Greater,
        "{version} does not sort after {base_version}"
    );
    let app = Fixture::Crash.efi_app();
    let control = bad_control(&version, app.len() as u64);
    let postinst = bad_postinst();
    let deb = out_dir.join(deb_file_name(BAD_PACKAGE, &version, ARCH)?);
    write_deb(
        &deb,
        &control,
        &[DebMember {
            path: "postinst",
            content: postinst.as_bytes(),
            mode: 0o755,
        }],
        &[DebMember {
            path: CRASH_APP_PATH.trim_start_matches('/'),
            content: &app,
            mode: 0o644,
        }],
    )?;
    let mut repo = build_repo(out_dir, &[deb], BAD_REPO_SUITE)?;
    for p in &mut repo.packages {
        p.origin = Some("bootwatch".to_owned());
    }
    Ok(repo)
}

fn bad_control(version: &str, app_size: u64) -> String {
    // dpkg-gencontrol's estimate: 1 KiB per directory plus each file rounded up to KiB.
    let dirs = Path::new(CRASH_APP_PATH).ancestors().count() as u64 - 2;
    let installed_kib = dirs + app_size.div_ceil(1024);
    format!(
        "Package: {BAD_PACKAGE}\n\
         Version: {version}\n\
         Architecture: {ARCH}\n\
         Maintainer: bootwatch test harness <bootwatch@invalid>\n\
         Installed-Size: {installed_kib}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: deliberately broken boot loader: a bootwatch test package, NOT Debian's\n \
         This is a deliberately broken test package made by bootwatch, a test\n \
         harness. It is not Debian's shim-signed: it only borrows the name and a\n \
         higher version so that an upgrade installs it.\n \
         .\n \
         Its postinst replaces the EFI boot loader on the EFI system partition\n \
         ({}\n \
         and the removable-media path {})\n \
         with {CRASH_APP_PATH}, a tiny EFI application that\n \
         executes an undefined instruction at its entry point. The next boot\n \
         therefore stops in the firmware with a \"Synchronous Exception\"\n \
         before GRUB. The replaced files are kept next to them with the suffix\n \
         {SAVED_SUFFIX}. Never install this on a machine you want to boot.\n",
        ESP_TARGETS[0], ESP_TARGETS[1]
    )
}

fn bad_postinst() -> String {
    let targets = ESP_TARGETS
        .iter()
        .map(|t| format!("\"${{DPKG_ROOT:-}}{t}\""))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"#!/bin/sh
# postinst of bootwatch's deliberately broken "shim-signed" test package: puts an EFI
# application that crashes at its entry point where the firmware loads the boot loader from,
# so that the next boot stops with "Synchronous Exception" before GRUB.
set -eu

app="${{DPKG_ROOT:-}}{CRASH_APP_PATH}"

case "${{1:-}}" in
configure)
    replaced=0
    for target in {targets}; do
        dir="${{target%/*}}"
        if [ ! -d "$dir" ]; then
            echo "bootwatch bad update: $dir does not exist, not touched" >&2
            continue
        fi
        if [ -e "$target" ] && [ ! -e "$target{SAVED_SUFFIX}" ]; then
            cp "$target" "$target{SAVED_SUFFIX}"
        fi
        cp "$app" "$target.bootwatch-new"
        mv -f "$target.bootwatch-new" "$target"
        echo "bootwatch bad update: replaced $target with a crashing EFI application" >&2
        replaced=$((replaced + 1))
    done
    sync
    if [ "$replaced" -eq 0 ]; then
        echo "bootwatch bad update: no EFI/debian or EFI/BOOT directory under ${{DPKG_ROOT:-}}/boot/efi (is the ESP mounted?)" >&2
        exit 1
    fi
    ;;
esac
exit 0
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Serving a directory
// ---------------------------------------------------------------------------------------------

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// One request answered by [`serve`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Seconds from the start of [`serve`] to the request.
    pub t_s: f64,
    pub method: String,
    /// The request target as sent (path and query, still percent-encoded).
    pub path: String,
    pub status: u16,
    /// Body bytes handed to the connection so far (all of them once the response is done;
    /// 0 for `HEAD`).
    pub bytes: u64,
}

/// A directory served over HTTP/1.1 on `127.0.0.1` by [`serve`]; stops when dropped.
pub struct Served {
    addr: SocketAddr,
    dir: PathBuf,
    log: Arc<Mutex<Vec<LogEntry>>>,
    task: tokio::task::JoinHandle<()>,
}

struct LogEntry {
    t_s: f64,
    method: String,
    path: String,
    status: u16,
    bytes: Arc<AtomicU64>,
}

impl Served {
    /// Where it listens (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port; a guest on QEMU user networking reaches it as `10.0.2.2:PORT`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The served directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| RequestRecord {
                t_s: e.t_s,
                method: e.method.clone(),
                path: e.path.clone(),
                status: e.status,
                bytes: e.bytes.load(AtomicOrdering::Relaxed),
            })
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // The task owns the listener and every connection (in a JoinSet): aborting it closes
        // them all.
        self.task.abort();
    }
}

struct ServeState {
    root: PathBuf,
    files: ServeDir,
    log: Arc<Mutex<Vec<LogEntry>>>,
    started: Instant,
}

/// Serve the files under `dir` over HTTP/1.1 on `127.0.0.1` (a port chosen by the system)
/// until the returned [`Served`] is dropped.
///
/// `GET` and `HEAD` of regular files (with `Range`, `If-Modified-Since` and keep-alive, which
/// apt uses), `404` for anything missing and for directories (no listing), `400` for a path
/// with a `..` segment (also percent-encoded) or a backslash, `403` for a path that resolves
/// outside `dir` through a symbolic link, `405` for other methods. Every request is recorded
/// ([`Served::requests`]). Files are served by `tower-http`'s `ServeDir` on `hyper`; this
/// function adds the checks, the log and the lifetime.
pub async fn serve(dir: &Path) -> Result<Served> {
    let root = tokio::fs::canonicalize(dir)
        .await
        .with_context(|| format!("serving {}", dir.display()))?;
    ensure!(
        tokio::fs::metadata(&root).await?.is_dir(),
        "serving {}: not a directory",
        dir.display()
    );
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = Arc::new(ServeState {
        root: root.clone(),
        files: ServeDir::new(&root).append_index_html_on_directories(false),
        log: log.clone(),
        started: Instant::now(),
    });
    tracing::debug!(%addr, dir = %root.display(), "serving a repository");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!("repository server: accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let state = state.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    connections.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .serve_connection(io, service)
                            .await
                        {
                            tracing::debug!("repository server: connection ended: {e}");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(Served {
        addr,
        dir: root,
        log,
        task,
    })
}

async fn handle(state: &ServeState, req: Request<Incoming>) -> Response<Body> {
    let t_s = (state.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let response = match check_path(&state.root, req.uri().path()).await {
        Err(status) => simple_response(status),
        Ok(()) => match state.files.clone().try_call(req).await {
            Ok(resp) => resp.map(|b| b.boxed_unsync()),
            Err(e) => {
                tracing::warn!(path = %target, "repository server: {e}");
                simple_response(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
    };
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    let status = response.status().as_u16();
    tracing::debug!(%method, path = %target, status, "repository request");
    state
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(LogEntry {
            t_s,
            method,
            path: target,
            status,
            bytes,
        });
    response.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, AtomicOrdering::Relaxed);
            }
            frame
        })
        .boxed_unsync()
    })
}

/// `Err(400)` for `..` segments (after percent-decoding), backslashes, NULs or bad UTF-8;
/// `Err(403)` for an existing path that resolves outside `root`.
async fn check_path(root: &Path, raw_path: &str) -> std::result::Result<(), StatusCode> {
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    if decoded.split('/').any(|s| s == "..") || decoded.contains(['\\', '\0']) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let relative = decoded.trim_start_matches('/');
    if let Ok(real) = tokio::fs::canonicalize(root.join(relative)).await
        && !real.starts_with(root)
    {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(())
}

fn simple_response(status: StatusCode) -> Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// The good update
// ---------------------------------------------------------------------------------------------

/// A repository in `out_dir` holding a real Debian boot loader newer than Debian 12's own:
/// GRUB 2.12 for arm64 from `bookworm-backports` ([`GOOD_UPDATE_PACKAGES`]), plus every package
/// those need that a Debian 12 guest with its own GRUB cannot be assumed to have.
///
/// `mirror` is a Debian archive mirror URL (see [`crate::inputs::debian::resolve_mirror`]). The
/// `main/binary-arm64` indexes of `bookworm` and `bookworm-backports` are read (checked
/// against `InRelease`, see the module documentation; verified indexes are cached under
/// `cache_root/debs/indexes/` by hash) and the packages chosen like this:
///
/// 1. each package of [`GOOD_UPDATE_PACKAGES`] at its newest version in `bookworm-backports`,
///    which must be newer than bookworm's;
/// 2. the guest is assumed to have bookworm's `Essential` and `Priority: required` packages
///    and bookworm's GRUB packages, each with its dependency closure in bookworm;
/// 3. every `Depends`/`Pre-Depends` clause of a chosen package that the chosen packages and
///    the assumed ones cannot satisfy adds a package: from bookworm when bookworm can satisfy
///    it (so the upgrade needs nothing but this repository), else from `bookworm-backports`;
///    assumed packages whose dependencies or `Breaks`/`Conflicts` the new versions violate
///    are upgraded from `bookworm-backports` too, or it is an error.
///
/// So `apt-get full-upgrade` in a bookworm guest that sees this repository (even as its only
/// source) upgrades GRUB to 2.12. With today's archive that is the five GRUB packages plus
/// bookworm's `libfuse3-3` (GRUB 2.12's `grub-common` moved from FUSE 2 to FUSE 3).
///
/// The `.deb`s are downloaded into `cache_root/debs/` (kept by their archive file name;
/// a cached file is re-hashed against the index before use) and checked against the index's
/// size and SHA256; a mismatch deletes the download and is an error.
pub async fn good_update(mirror: &str, cache_root: &Path, out_dir: &Path) -> Result<Repo> {
    let archive = Archive::new(mirror)?.with_index_cache(cache_root.join(INDEX_CACHE_DIR));
    good_update_from(&archive, cache_root, out_dir).await
}

/// [`good_update`] from `archive` (a mirror and the keyring its Release files must verify
/// with).
pub async fn good_update_from(
    archive: &Archive,
    cache_root: &Path,
    out_dir: &Path,
) -> Result<Repo> {
    let debs_dir = cache_root.join("debs");
    let base = arch_index(archive, GOOD_UPDATE_BASE_SUITE).await?;
    let update = arch_index(archive, GOOD_UPDATE_SUITE).await?;
    let plan =
        tokio::task::spawn_blocking(move || plan_update(&base, &update, GOOD_UPDATE_PACKAGES))
            .await
            .context("planning task")??;
    tracing::info!(
        packages = %plan
            .iter()
            .map(|p| format!("{} {} ({})", p.entry.name, p.entry.version, p.suite))
            .collect::<Vec<_>>()
            .join(", "),
        "good update"
    );

    let mut files = Vec::new();
    let mut origins = HashMap::new();
    for p in &plan {
        let entry = PackageEntry::from_package(&p.entry)
            .with_context(|| format!("the {} index", p.suite))?;
        let path = archive.cached_deb(&entry, &debs_dir).await?;
        origins.insert(entry.package.clone(), p.suite.clone());
        files.push(path);
    }
    let out_dir = out_dir.to_path_buf();
    let mut repo =
        tokio::task::spawn_blocking(move || build_repo(&out_dir, &files, GOOD_REPO_SUITE))
            .await
            .context("repository task")??;
    for p in &mut repo.packages {
        p.origin = origins.get(&p.package).cloned();
    }
    Ok(repo)
}

/// A suite's verified `main/binary-ARCH` index, typed for the planner.
async fn arch_index(archive: &Archive, suite: &str) -> Result<Index> {
    let text = archive
        .packages_index(suite, "main", ARCH)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "{} has no main/binary-{ARCH} index for {suite}",
                archive.mirror()
            )
        })?;
    let suite = suite.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Index> {
        let entries = parse_index(&text, ARCH).with_context(|| format!("the {suite} index"))?;
        ensure!(
            !entries.is_empty(),
            "{suite}: the index lists no {ARCH} packages"
        );
        Ok(Index::new(&suite, entries))
    })
    .await
    .context("index parsing task")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use tokio::io::AsyncWriteExt;

    // -----------------------------------------------------------------------------------------
    // helpers
    // -----------------------------------------------------------------------------------------

    /// Run a host tool the tests rely on (present on the Debian hosts bootwatch runs on); a
    /// missing tool fails the test with its name rather than skipping it.
    fn run(program: &str, args: &[&str]) -> std::process::Output {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("running {program} (install it: a Debian host has it): {e}")
            });
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn stdout(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A small package made with our own writer.
    fn small_deb(dir: &Path, control: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let stanza: deb822_fast::Paragraph = control.parse().unwrap();
        let name = deb_file_name(
            stanza.get("Package").unwrap(),
            stanza.get("Version").unwrap(),
            stanza.get("Architecture").unwrap(),
        )
        .unwrap();
        let path = dir.join(format!("src-{name}"));
        let members: Vec<DebMember<'_>> = files
            .iter()
            .map(|(path, content)| DebMember {
                path,
                content,
                mode: 0o644,
            })
            .collect();
        write_deb(&path, control, &[], &members).unwrap();
        path
    }

    const CONTROL_A: &str = "Package: bwtest-a\nVersion: 1.2-3\nArchitecture: arm64\n\
        Maintainer: bootwatch tests <tests@invalid>\nInstalled-Size: 1\n\
        Depends: libc6 (>= 2.34), bwtest-b | bwtest-c\nSection: misc\nPriority: optional\n\
        Description: first test package\n Two lines\n .\n of description.\n";
    const CONTROL_B: &str = "Package: bwtest-b\nVersion: 1:0.9~rc1\nArchitecture: all\n\
        Maintainer: bootwatch tests <tests@invalid>\nMulti-Arch: foreign\n\
        Description: second test package\n";

    /// A tar member's entries as (path, mode, content).
    type TarEntries = Vec<(String, u32, Vec<u8>)>;

    /// (member name, decompressed tar entries) of a .deb.
    fn deb_members(deb: &Path) -> Vec<(String, TarEntries)> {
        let mut archive = ar::Archive::new(fs::File::open(deb).unwrap());
        let mut out = Vec::new();
        while let Some(member) = archive.next_entry() {
            let mut member = member.unwrap();
            let name = String::from_utf8(member.header().identifier().to_vec()).unwrap();
            let mut data = Vec::new();
            member.read_to_end(&mut data).unwrap();
            let entries = if name.ends_with(".tar.gz") {
                let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
                tar.entries()
                    .unwrap()
                    .map(|e| {
                        let mut e = e.unwrap();
                        let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                        let mode = e.header().mode().unwrap();
                        let mut content = Vec::new();
                        e.read_to_end(&mut content).unwrap();
                        (path, mode, content)
                    })
                    .collect()
            } else {
                vec![(String::new(), 0, data)]
            };
            out.push((name, entries));
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // repositories
    // -----------------------------------------------------------------------------------------

    #[test]
    fn repo_index_lists_the_debs_with_their_sizes_and_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let a = small_deb(tmp.path(), CONTROL_A, &[("usr/share/bwtest/a", b"aaa\n")]);
        let b = small_deb(
            tmp.path(),
            CONTROL_B,
            &[("usr/share/bwtest/b", &vec![7u8; 5000])],
        );
        let dir = tmp.path().join("repo");
        let repo = build_repo(&dir, &[a.clone(), b.clone()], "bwtest").unwrap();
        assert_eq!(repo.suite, "bwtest");
        assert_eq!(repo.dir, dir);
        assert_eq!(
            repo.sources_line(8123),
            "deb [trusted=yes] http://10.0.2.2:8123/ ./"
        );

        let packages = fs::read_to_string(dir.join("Packages")).unwrap();
        let mut gz = String::new();
        flate2::read::GzDecoder::new(&fs::read(dir.join("Packages.gz")).unwrap()[..])
            .read_to_string(&mut gz)
            .unwrap();
        assert_eq!(gz, packages);
        let stanzas: Vec<deb822_fast::Paragraph> = packages
            .parse::<deb822_fast::Deb822>()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(stanzas.len(), 2);
        for (stanza, src, control) in [(&stanzas[0], &a, CONTROL_A), (&stanzas[1], &b, CONTROL_B)] {
            // Every control field is carried over.
            let fields: deb822_fast::Paragraph = control.parse().unwrap();
            for (k, v) in fields.iter() {
                assert_eq!(stanza.get(k), Some(v), "{k}");
            }
            let filename = stanza.get("Filename").unwrap();
            let file = dir.join(filename);
            let bytes = fs::read(&file).unwrap();
            assert_eq!(bytes, fs::read(src).unwrap());
            assert_eq!(stanza.get("Size").unwrap(), bytes.len().to_string());
            assert_eq!(
                stanza.get("SHA256").unwrap(),
                hex::encode(Sha256::digest(&bytes))
            );
            assert_eq!(
                stanza.get("MD5sum").unwrap(),
                hex::encode(Md5::digest(&bytes))
            );
            let listed = repo.package(stanza.get("Package").unwrap()).unwrap();
            assert_eq!(listed.filename, filename);
            assert_eq!(listed.size, bytes.len() as u64);
            assert_eq!(listed.sha256, stanza.get("SHA256").unwrap());
        }
        assert_eq!(stanzas[0].get("Filename"), Some("bwtest-a_1.2-3_arm64.deb"));
        // The epoch is not part of the file name.
        assert_eq!(stanzas[1].get("Filename"), Some("bwtest-b_0.9~rc1_all.deb"));
        // Verbatim, continuation lines included.
        assert!(
            packages
                .contains("Description: first test package\n Two lines\n .\n of description.\n"),
            "{packages}"
        );

        let release = fs::read_to_string(dir.join("Release")).unwrap();
        let parsed = crate::inputs::debian::release::Release::parse(
            &release,
            "Release",
            Vec::new(),
            jiff::Timestamp::now(),
        )
        .unwrap();
        for name in ["Packages", "Packages.gz"] {
            let data = fs::read(dir.join(name)).unwrap();
            assert_eq!(
                parsed.sha256[name],
                (hex::encode(Sha256::digest(&data)), data.len() as u64),
                "{name}"
            );
            assert!(release.contains(&format!(" {} ", hex::encode(Md5::digest(&data)))));
        }
        let fields: deb822_fast::Paragraph = release.parse().unwrap();
        assert_eq!(fields.get("Suite"), Some("bwtest"));
        assert_eq!(fields.get("Architectures"), Some("arm64"));
        assert!(fields.get("Date").unwrap().ends_with(" UTC"));

        // Rebuilding in place from the repository's own files gives the same index.
        let again = build_repo(
            &dir,
            &[
                dir.join("bwtest-b_0.9~rc1_all.deb"),
                dir.join("bwtest-a_1.2-3_arm64.deb"),
            ],
            "bwtest",
        )
        .unwrap();
        assert_eq!(again.packages, repo.packages);
        assert_eq!(fs::read_to_string(dir.join("Packages")).unwrap(), packages);

        let err = build_repo(&dir, &[a.clone(), a], "bwtest").unwrap_err();
        assert!(
            format!("{err:#}").contains("two packages are bwtest-a"),
            "{err:#}"
        );
        let err = build_repo(&dir, &[tmp.path().join("missing.deb")], "bwtest").unwrap_err();
        assert!(format!("{err:#}").contains("missing.deb"), "{err:#}");
        assert!(build_repo(&dir, &[], "bad suite").is_err());
    }

    // -----------------------------------------------------------------------------------------
    // the bad update
    // -----------------------------------------------------------------------------------------

    const SHIM_BASE: &str = "1.51~1+deb12u1+16.1-2~deb12u1";

    #[test]
    fn bad_deb_has_the_members_dpkg_expects() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bad_update(tmp.path(), SHIM_BASE).unwrap();
        let version = format!("{SHIM_BASE}+bootwatch.bad1");
        assert_eq!(repo.suite, BAD_REPO_SUITE);
        assert_eq!(repo.packages.len(), 1);
        let p = &repo.packages[0];
        assert_eq!(
            (
                p.package.as_str(),
                p.version.as_str(),
                p.architecture.as_str()
            ),
            ("shim-signed", version.as_str(), "arm64")
        );
        assert_eq!(p.origin.as_deref(), Some("bootwatch"));
        let deb = tmp.path().join(&p.filename);

        // Parsed back with the ar and tar crates.
        let members = deb_members(&deb);
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["debian-binary", "control.tar.gz", "data.tar.gz"]);
        assert_eq!(members[0].1[0].2, b"2.0\n");
        let control: BTreeMap<&str, (u32, &[u8])> = members[1]
            .1
            .iter()
            .map(|(p, m, c)| (p.as_str(), (*m, &c[..])))
            .collect();
        assert_eq!(
            control.keys().copied().collect::<Vec<_>>(),
            ["./", "./control", "./md5sums", "./postinst"]
        );
        assert_eq!(control["./postinst"].0, 0o755);
        assert!(control["./postinst"].1.starts_with(b"#!/bin/sh\n"));
        let app = Fixture::Crash.efi_app();
        let data: Vec<(&str, u32, &[u8])> = members[2]
            .1
            .iter()
            .map(|(p, m, c)| (p.as_str(), *m, &c[..]))
            .collect();
        assert_eq!(
            data.iter().map(|d| d.0).collect::<Vec<_>>(),
            [
                "./",
                "./usr/",
                "./usr/lib/",
                "./usr/lib/bootwatch/",
                "./usr/lib/bootwatch/crash-bootaa64.efi"
            ]
        );
        assert_eq!(data[4].2, &app[..]);
        assert_eq!(
            std::str::from_utf8(control["./md5sums"].1).unwrap(),
            format!(
                "{}  usr/lib/bootwatch/crash-bootaa64.efi\n",
                hex::encode(Md5::digest(&app))
            )
        );

        // And as dpkg sees it.
        let info = stdout(&run("dpkg-deb", &["-I", deb.to_str().unwrap()]));
        for want in [
            "Package: shim-signed",
            &format!("Version: {version}"),
            "Architecture: arm64",
            "deliberately broken test package made by bootwatch",
            "postinst",
        ] {
            assert!(info.contains(want), "dpkg-deb -I lacks {want:?}:\n{info}");
        }
        assert!(!info.contains("Depends"), "{info}");
        let field = |f: &str| {
            stdout(&run("dpkg-deb", &["-f", deb.to_str().unwrap(), f]))
                .trim()
                .to_owned()
        };
        assert_eq!(field("Package"), "shim-signed");
        assert_eq!(field("Version"), version);
        let listing = stdout(&run("dpkg-deb", &["-c", deb.to_str().unwrap()]));
        assert!(
            listing.contains(&format!(
                "-rw-r--r-- root/root      {} 2026-01-01 00:00 ./usr/lib/bootwatch/crash-bootaa64.efi",
                app.len()
            )),
            "{listing}"
        );
        run("dpkg", &["--compare-versions", &version, "gt", SHIM_BASE]);

        // The repository lists it with the right hashes.
        let packages = fs::read_to_string(tmp.path().join("Packages")).unwrap();
        let bytes = fs::read(&deb).unwrap();
        assert!(packages.contains(&format!(
            "SHA256: {}\n",
            hex::encode(Sha256::digest(&bytes))
        )));

        assert!(bad_update(tmp.path(), "not a version").is_err());
        assert!(bad_update(tmp.path(), "").is_err());
    }

    /// A scratch dpkg root: `dpkg --root` with maintainer scripts run outside a chroot and
    /// `DPKG_ROOT` set (what the bad postinst honours).
    struct DpkgRoot {
        root: PathBuf,
    }

    impl DpkgRoot {
        fn new(root: &Path) -> DpkgRoot {
            let admin = root.join("var/lib/dpkg");
            for d in ["info", "updates", "triggers"] {
                fs::create_dir_all(admin.join(d)).unwrap();
            }
            fs::write(admin.join("status"), "").unwrap();
            fs::write(admin.join("available"), "").unwrap();
            DpkgRoot {
                root: root.to_path_buf(),
            }
        }

        fn install(&self, deb: &Path) -> std::process::Output {
            Command::new("dpkg")
                .arg(format!("--root={}", self.root.display()))
                .args([
                    "--force-script-chrootless",
                    "--force-architecture",
                    "--force-not-root",
                    "--force-unsafe-io",
                    "--log=/dev/null",
                    "-i",
                ])
                .arg(deb)
                .output()
                .expect("running dpkg (a Debian host has it)")
        }
    }

    #[test]
    fn bad_postinst_replaces_the_boot_loader_and_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let dpkg = DpkgRoot::new(&root);
        for target in ESP_TARGETS {
            let path = root.join(target.trim_start_matches('/'));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, format!("original {target}")).unwrap();
        }
        // An installed shim-signed of the base version, then the bad one as its upgrade.
        let base = small_deb(
            tmp.path(),
            &format!(
                "Package: shim-signed\nVersion: {SHIM_BASE}\nArchitecture: arm64\n\
                 Maintainer: t <t@invalid>\nDescription: stand-in for the real one\n"
            ),
            &[("usr/lib/shim/shimaa64.efi.signed", b"signed shim")],
        );
        let out = dpkg.install(&base);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let repo = bad_update(&tmp.path().join("bad"), SHIM_BASE).unwrap();
        let bad = repo.dir.join(&repo.packages[0].filename);
        let app = Fixture::Crash.efi_app();
        for round in 0..2 {
            let out = dpkg.install(&bad);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "round {round}: {stderr}");
            assert!(stderr.contains("replaced"), "{stderr}");
            for target in ESP_TARGETS {
                let path = root.join(target.trim_start_matches('/'));
                assert_eq!(fs::read(&path).unwrap(), app, "{target}");
                let saved = PathBuf::from(format!("{}{SAVED_SUFFIX}", path.display()));
                // Saved once: a second run does not overwrite it with the crashing file.
                assert_eq!(
                    fs::read_to_string(&saved).unwrap(),
                    format!("original {target}"),
                    "round {round}"
                );
            }
        }
        assert_eq!(
            fs::read(root.join(CRASH_APP_PATH.trim_start_matches('/'))).unwrap(),
            app
        );
        // The base version's files are gone: it was upgraded, not installed beside.
        assert!(!root.join("usr/lib/shim/shimaa64.efi.signed").exists());
        let status = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
        assert!(
            status.contains(&format!("Version: {SHIM_BASE}+bootwatch.bad1")),
            "{status}"
        );

        // Without an ESP the upgrade fails loudly instead of leaving a healthy machine.
        let bare = tmp.path().join("bare");
        let out = DpkgRoot::new(&bare).install(&bad);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is the ESP mounted?"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // -----------------------------------------------------------------------------------------
    // serving
    // -----------------------------------------------------------------------------------------

    async fn raw_request(addr: SocketAddr, request: &str) -> String {
        use tokio::io::AsyncReadExt;
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
            .await
            .expect("response within 10 s")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serve_answers_get_head_and_404_and_refuses_traversal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("www");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a_1.0~b+c_all.deb"), b"hello repo").unwrap();
        fs::write(dir.join("sub/b"), vec![1u8; 100_000]).unwrap();
        fs::write(tmp.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("escape")).unwrap();

        let served = serve(&dir).await.unwrap();
        assert_eq!(served.addr().ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(served.dir(), dir.canonicalize().unwrap());
        let client = reqwest::Client::new();
        let url = served.url();

        let resp = client
            .get(format!("{url}a_1.0~b%2bc_all.deb"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), &b"hello repo"[..]);
        let resp = client.get(format!("{url}sub/b")).send().await.unwrap();
        assert_eq!(resp.bytes().await.unwrap().len(), 100_000);
        let resp = client
            .head(format!("{url}a_1.0~b+c_all.deb"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[reqwest::header::CONTENT_LENGTH], "10");
        assert!(resp.bytes().await.unwrap().is_empty());
        for missing in ["nothing", "sub/", "sub", ""] {
            let resp = client.get(format!("{url}{missing}")).send().await.unwrap();
            assert_eq!(resp.status(), 404, "{missing:?}");
        }
        let resp = client.post(format!("{url}sub/b")).send().await.unwrap();
        assert_eq!(resp.status(), 405);
        let resp = client.get(format!("{url}escape")).send().await.unwrap();
        assert_eq!(resp.status(), 403);

        // reqwest would normalize `..` away, so these go over a raw socket.
        for path in [
            "/../secret",
            "/sub/../../secret",
            "/%2e%2e/secret",
            "/sub/%2E%2E%2F%2e%2e/secret",
            "/a\\..\\secret",
        ] {
            let resp = raw_request(
                served.addr(),
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert!(resp.starts_with("HTTP/1.1 400 "), "{path}: {resp}");
            assert!(
                !resp.contains("secret\n") && !resp.ends_with("secret"),
                "{resp}"
            );
        }
        // Two pipelined requests on one connection, as apt sends them.
        let resp = raw_request(
            served.addr(),
            "GET /sub/b HTTP/1.1\r\nHost: x\r\n\r\nGET /a_1.0~b+c_all.deb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            resp.matches("HTTP/1.1 200 OK").count(),
            2,
            "{}",
            &resp[..200]
        );
        assert!(resp.ends_with("hello repo"));

        let log = served.requests();
        let seen: Vec<(&str, &str, u16)> = log
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.status))
            .collect();
        assert_eq!(
            seen[..4],
            [
                ("GET", "/a_1.0~b%2bc_all.deb", 200),
                ("GET", "/sub/b", 200),
                ("HEAD", "/a_1.0~b+c_all.deb", 200),
                ("GET", "/nothing", 404),
            ]
        );
        assert_eq!(log[0].bytes, 10);
        assert_eq!(log[1].bytes, 100_000);
        assert_eq!(log[2].bytes, 0);
        assert!(seen.contains(&("GET", "/%2e%2e/secret", 400)));
        assert!(seen.contains(&("GET", "/escape", 403)));
        assert!(seen.contains(&("POST", "/sub/b", 405)));
        assert!(log.windows(2).all(|w| w[0].t_s <= w[1].t_s));

        // Dropped: nothing listens any more.
        let addr = served.addr();
        drop(served);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break;
            }
            assert!(Instant::now() < deadline, "still accepting after drop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // apt itself
    // -----------------------------------------------------------------------------------------

    /// A private apt configuration for arm64 on this host (nothing of the host's apt is read
    /// or written), whose only source is `sources_line` and whose dpkg status is `status`.
    struct Apt {
        dir: PathBuf,
    }

    impl Apt {
        fn new(dir: &Path, sources_line: &str, status: &str) -> Apt {
            for d in [
                "etc/apt.conf.d",
                "etc/preferences.d",
                "etc/sources.list.d",
                "state/lists/partial",
                "cache/archives/partial",
                "log",
            ] {
                fs::create_dir_all(dir.join(d)).unwrap();
            }
            fs::write(dir.join("etc/sources.list"), format!("{sources_line}\n")).unwrap();
            fs::write(dir.join("status"), status).unwrap();
            Apt {
                dir: dir.to_path_buf(),
            }
        }

        fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
            let d = self.dir.display();
            let mut opts = vec![
                format!("Dir::Etc={d}/etc"),
                format!("Dir::Etc::SourceList={d}/etc/sources.list"),
                format!("Dir::Etc::SourceParts={d}/etc/sources.list.d"),
                format!("Dir::Etc::Parts={d}/etc/apt.conf.d"),
                format!("Dir::Etc::PreferencesParts={d}/etc/preferences.d"),
                format!("Dir::State={d}/state"),
                format!("Dir::State::status={d}/status"),
                format!("Dir::Cache={d}/cache"),
                format!("Dir::Log={d}/log"),
                "APT::Architecture=arm64".to_owned(),
                "APT::Architectures::=arm64".to_owned(),
                "APT::Sandbox::User=root".to_owned(),
                "Debug::NoLocking=1".to_owned(),
                "Acquire::Languages=none".to_owned(),
                "APT::Get::List-Cleanup=0".to_owned(),
            ];
            opts = opts
                .into_iter()
                .flat_map(|o| ["-o".to_owned(), o])
                .collect();
            let mut all: Vec<&str> = opts.iter().map(String::as_str).collect();
            all.extend(args);
            let out = Command::new(program)
                .args(&all)
                .env("LC_ALL", "C")
                .output()
                .unwrap_or_else(|e| panic!("running {program} (a Debian host has it): {e}"));
            assert!(
                out.status.success(),
                "{program} {args:?}: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    }

    /// dpkg status stanzas for installed packages.
    fn status_text(entries: &[(&str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(name, version, depends)| {
                let depends = if depends.is_empty() {
                    String::new()
                } else {
                    format!("Depends: {depends}\n")
                };
                format!(
                    "Package: {name}\nStatus: install ok installed\nPriority: optional\n\
                     Architecture: arm64\nVersion: {version}\n{depends}\
                     Maintainer: t <t@invalid>\nDescription: installed\n\n"
                )
            })
            .collect()
    }

    // apt runs as a blocking child process while the server answers it: two worker threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apt_takes_the_served_repository_as_trusted_and_upgrades_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let a = small_deb(
            tmp.path(),
            "Package: bwtest-a\nVersion: 2.0\nArchitecture: arm64\nMaintainer: t <t@invalid>\n\
             Depends: bwtest-b (>= 1:0.9~)\nDescription: new version\n",
            &[("usr/share/bwtest/a", b"a")],
        );
        let b = small_deb(tmp.path(), CONTROL_B, &[("usr/share/bwtest/b", b"b")]);
        let repo = build_repo(&tmp.path().join("repo"), &[a, b], "bwtest").unwrap();
        let bad = bad_update(&tmp.path().join("bad"), SHIM_BASE).unwrap();

        for (repo, want) in [
            (
                &repo,
                vec![
                    "Inst bwtest-a [1.0] (2.0 bootwatch:bwtest [arm64])",
                    "Inst bwtest-b (1:0.9~rc1 bootwatch:bwtest [all])",
                ],
            ),
            (
                &bad,
                vec![&*format!(
                    "Inst shim-signed [{SHIM_BASE}] ({SHIM_BASE}+bootwatch.bad1 bootwatch:bootwatch-bad [arm64])"
                )],
            ),
        ] {
            let served = serve(&repo.dir).await.unwrap();
            let line = repo.sources_line_at(&served.url());
            let apt = Apt::new(
                &tmp.path().join(format!("apt-{}", repo.suite)),
                &line,
                &status_text(&[("bwtest-a", "1.0", ""), ("shim-signed", SHIM_BASE, "")]),
            );
            let update = apt.run("apt-get", &["update"]);
            let text = format!(
                "{}{}",
                stdout(&update),
                String::from_utf8_lossy(&update.stderr)
            );
            assert!(!text.contains("W:") && !text.contains("E:"), "{text}");
            let sim = stdout(&apt.run("apt-get", &["-s", "full-upgrade"]));
            for w in &want {
                assert!(
                    sim.contains(w),
                    "apt-get -s full-upgrade lacks {w:?}:\n{sim}"
                );
            }
            let paths: Vec<String> = served.requests().iter().map(|r| r.path.clone()).collect();
            assert!(
                paths.iter().any(|p| p == "/./Release" || p == "/Release"),
                "{paths:?}"
            );
            assert!(
                served
                    .requests()
                    .iter()
                    .any(|r| r.path.contains("Packages") && r.status == 200 && r.bytes > 0),
                "{:?}",
                served.requests()
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // the good update: planning on synthetic indexes, then the real archive
    // -----------------------------------------------------------------------------------------

    /// Builds the good update from the mirror the host's apt configuration (or
    /// BOOTWATCH_MIRROR) names: about 15 MiB of indexes and 6 MiB of packages. Then asks the
    /// host's apt, configured as an arm64 bookworm guest that has exactly what the planner
    /// assumes and sees only this repository, what `apt-get full-upgrade` would do. Set
    /// BOOTWATCH_SKIP_NETWORK_TESTS=1 to skip it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn network_good_update_is_grub_2_12_and_apt_installs_it() {
        if std::env::var_os("BOOTWATCH_SKIP_NETWORK_TESTS").is_some_and(|v| !v.is_empty()) {
            eprintln!("skipped: BOOTWATCH_SKIP_NETWORK_TESTS is set");
            return;
        }
        let mirror = crate::inputs::debian::resolve_mirror(None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let started = Instant::now();
        let repo = good_update(&mirror, &cache, &tmp.path().join("good"))
            .await
            .unwrap();
        eprintln!("good update from {mirror} in {:?}:", started.elapsed());
        for p in &repo.packages {
            eprintln!("  {} {} ({:?})", p.package, p.version, p.origin);
        }
        let signed = repo.package("grub-efi-arm64-signed").unwrap();
        assert!(signed.version.starts_with("1+2.12"), "{}", signed.version);
        for name in GOOD_UPDATE_PACKAGES {
            let p = repo.package(name).unwrap();
            assert_eq!(p.origin.as_deref(), Some(GOOD_UPDATE_SUITE), "{name}");
            assert_eq!(p.architecture, "arm64");
        }
        for p in &repo.packages {
            let bytes = fs::read(repo.dir.join(&p.filename)).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                p.sha256,
                "{}",
                p.filename
            );
            assert!(
                cache.join("debs").join(&p.filename).is_file(),
                "{}",
                p.filename
            );
        }

        // Cached: the same repository again without downloading a package.
        let started = Instant::now();
        let again = good_update(&mirror, &cache, &tmp.path().join("good2"))
            .await
            .unwrap();
        eprintln!("again, from the cache: {:?}", started.elapsed());
        assert_eq!(again.packages, repo.packages);

        // apt's own answer, for a guest having exactly what the planner assumes.
        let archive = Archive::new(&mirror).unwrap();
        let base = arch_index(&archive, GOOD_UPDATE_BASE_SUITE).await.unwrap();
        let assumed = crate::inputs::debian::plan::assumed_installed(&base, GOOD_UPDATE_PACKAGES);
        let mut status = String::new();
        for e in assumed.values() {
            status.push_str(&format!(
                "Package: {}\nStatus: install ok installed\nArchitecture: {}\nVersion: {}\n",
                e.name, e.architecture, e.version
            ));
            let text = |r: &Option<debian_control::lossy::Relations>| {
                r.as_ref().map(ToString::to_string).unwrap_or_default()
            };
            for (k, v) in [
                (
                    "Essential",
                    if e.essential == Some(true) {
                        "yes".to_owned()
                    } else {
                        String::new()
                    },
                ),
                (
                    "Multi-Arch",
                    e.multi_arch
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                ("Pre-Depends", text(&e.pre_depends)),
                ("Depends", text(&e.depends)),
                ("Provides", text(&e.provides)),
                ("Breaks", text(&e.breaks)),
                ("Conflicts", text(&e.conflicts)),
            ] {
                if !v.is_empty() {
                    status.push_str(&format!("{k}: {v}\n"));
                }
            }
            status.push_str("Maintainer: t <t@invalid>\nDescription: installed\n\n");
        }
        let served = serve(&repo.dir).await.unwrap();
        let apt = Apt::new(
            &tmp.path().join("apt"),
            &repo.sources_line_at(&served.url()),
            &status,
        );
        apt.run("apt-get", &["update"]);
        let sim = stdout(&apt.run("apt-get", &["-s", "full-upgrade"]));
        eprintln!("{sim}");
        for p in &repo.packages {
            let upgraded = format!("Inst {} [", p.package);
            let installed = format!("Inst {} ({} ", p.package, p.version);
            assert!(
                sim.contains(&upgraded) || sim.contains(&installed),
                "apt-get -s full-upgrade does not install {} {}:\n{sim}",
                p.package,
                p.version
            );
        }
        assert!(!sim.contains("Remv "), "{sim}");
    }
}
