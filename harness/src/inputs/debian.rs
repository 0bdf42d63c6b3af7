//! Fetch Debian's edk2 build for ARM64 guests (`qemu-efi-aarch64`, architecture `all`) from a
//! Debian archive mirror, verify it, unpack the firmware images and cache them.
//!
//! # Where the mirror comes from
//!
//! No archive host is built in. The mirror is either given explicitly (`--mirror`, env
//! `BOOTWATCH_MIRROR`, see [`resolve_mirror`]) or read from the host's apt configuration
//! ([`mirror_from_apt`]): the first `deb` entry for a plain Debian release (no `-security`,
//! `-updates`, `-backports`, ...) with the `main` component whose URI is not a security mirror.
//!
//! # Trust
//!
//! The `.deb` is checked against the size and SHA256 listed in the suite's
//! `main/binary-all/Packages` index (a mismatch is an error and deletes the download), and
//! that index is checked against the size and SHA256 listed in the suite's `InRelease` (or
//! `Release`) file, retrying through `by-hash/`. An index that still does not match is only
//! logged (`tracing::warn!`) and recorded as `index_verified: false` in the manifest, because
//! the reachable archive copy is a frozen snapshot whose `trixie` and `trixie-backports`
//! `InRelease` list newer indexes than the ones it serves. The OpenPGP signature of
//! `InRelease`/`Release.gpg` is **not** verified (out of scope for now), and neither are the
//! `Date`/`Valid-Until` fields (that snapshot's `sid` is past its `Valid-Until`). So these
//! checks catch corruption and truncation, not a malicious mirror or a man in the middle on
//! plain http.
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

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
/// Name of the manifest written last into each cached version directory.
pub const MANIFEST_NAME: &str = "bootwatch-edk2.json";
/// Environment variable naming the mirror (used by [`resolve_mirror`]).
pub const MIRROR_ENV: &str = "BOOTWATCH_MIRROR";
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
const MANIFEST_FORMAT: u32 = 1;
/// Plain Debian release names (codenames and aliases) accepted in apt sources.
const DEBIAN_RELEASES: &[&str] = &[
    "buzz",
    "rex",
    "bo",
    "hamm",
    "slink",
    "potato",
    "woody",
    "sarge",
    "etch",
    "lenny",
    "squeeze",
    "wheezy",
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];
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

fn none_if_empty(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Mirror selection
// ---------------------------------------------------------------------------------------------

/// The mirror to use: `explicit` if given and non-empty, else env `BOOTWATCH_MIRROR` if set and
/// non-empty, else [`mirror_from_apt`] at `/`. Trailing slashes are removed.
pub fn resolve_mirror(explicit: Option<&str>) -> Result<String> {
    if let Some(m) = explicit.map(str::trim).filter(|m| !m.is_empty()) {
        return Ok(trim_mirror(m));
    }
    if let Ok(m) = std::env::var(MIRROR_ENV)
        && !m.trim().is_empty()
    {
        return Ok(trim_mirror(m.trim()));
    }
    mirror_from_apt(Path::new("/"))
}

fn trim_mirror(m: &str) -> String {
    m.trim_end_matches('/').to_owned()
}

/// One entry of apt's source configuration (either format).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AptSource {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    enabled: bool,
}

/// The Debian archive mirror named by the apt configuration under `root` (usually `/`):
/// the URI of the first enabled `deb` entry, in apt's file order (`etc/apt/sources.list`, then
/// `etc/apt/sources.list.d/*.list` and `*.sources` by name), whose suites include a plain Debian
/// release (a codename like `bookworm` or an alias like `stable`; not `*-security`,
/// `*-updates`, `*-backports`), whose components include `main`, and whose URI is http(s) and
/// not a security mirror. `mirror+file:` URIs are resolved through the named list file (under
/// `root`). Trailing slashes are removed. The error names every file looked at.
pub fn mirror_from_apt(root: &Path) -> Result<String> {
    let etc = root.join("etc/apt");
    let mut files = vec![etc.join("sources.list")];
    let dir = etc.join("sources.list.d");
    let mut dir_note = None;
    match fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("list" | "sources")
                    )
                })
                .collect();
            names.sort();
            files.extend(names);
        }
        Err(e) => dir_note = Some(format!("{} ({e})", dir.display())),
    }

    let mut looked = Vec::new();
    for file in &files {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                looked.push(format!("{} (absent)", file.display()));
                continue;
            }
            Err(e) => {
                looked.push(format!("{} (unreadable: {e})", file.display()));
                continue;
            }
        };
        let entries = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822_sources(&text)
        } else {
            parse_one_line_sources(&text)
        };
        if let Some(uri) = entries.iter().find_map(|e| usable_uri(root, e)) {
            tracing::debug!(file = %file.display(), mirror = %uri, "mirror from apt configuration");
            return Ok(uri);
        }
        looked.push(file.display().to_string());
    }
    looked.extend(dir_note);
    bail!(
        "no usable Debian archive mirror (a `deb` entry for a plain Debian release with `main`, \
         not a security mirror) in the apt configuration; looked at: {}. \
         Pass --mirror URL or set {MIRROR_ENV}",
        looked.join(", ")
    )
}

fn is_plain_debian_release(suite: &str) -> bool {
    DEBIAN_RELEASES.contains(&suite.to_ascii_lowercase().as_str())
}

fn usable_uri(root: &Path, source: &AptSource) -> Option<String> {
    if !source.enabled
        || !source.types.iter().any(|t| t == "deb")
        || !source.suites.iter().any(|s| is_plain_debian_release(s))
        || !source.components.iter().any(|c| c == "main")
    {
        return None;
    }
    source.uris.iter().find_map(|uri| {
        let uri = resolve_mirror_list(root, uri)?;
        let lower = uri.to_ascii_lowercase();
        let http = lower.starts_with("http://") || lower.starts_with("https://");
        (http && !lower.contains("security")).then(|| trim_mirror(&uri))
    })
}

/// `mirror+file:/path` → the first URI listed in that file; anything else unchanged.
fn resolve_mirror_list(root: &Path, uri: &str) -> Option<String> {
    let Some(path) = uri.strip_prefix("mirror+file:") else {
        return Some(uri.to_owned());
    };
    let path = path.trim_start_matches("//").trim_start_matches('/');
    let text = fs::read_to_string(root.join(path)).ok()?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| l.split_whitespace().next().map(str::to_owned))
}

/// Parse one-line style sources: `deb [opt=val ...] URI SUITE [COMPONENT...]`.
fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((ty, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let mut rest = rest.trim_start();
        if let Some(opts) = rest.strip_prefix('[') {
            let Some(end) = opts.find(']') else { continue };
            rest = &opts[end + 1..];
        }
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        if tokens.len() < 2 {
            continue;
        }
        out.push(AptSource {
            types: vec![ty.to_owned()],
            uris: vec![tokens[0].to_owned()],
            suites: vec![tokens[1].to_owned()],
            components: tokens[2..].iter().map(|s| (*s).to_owned()).collect(),
            enabled: true,
        });
    }
    out
}

/// Parse deb822 style sources (`Types`, `URIs`, `Suites`, `Components`, `Enabled`).
fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let words = |fields: &[(String, String)], key: &str| -> Vec<String> {
        field(fields, key)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    deb822_stanzas(text)
        .map(|lines| parse_fields(&lines))
        .map(|fields| AptSource {
            types: words(&fields, "Types"),
            uris: words(&fields, "URIs"),
            suites: words(&fields, "Suites"),
            components: words(&fields, "Components"),
            enabled: field(&fields, "Enabled").is_none_or(|v| {
                !matches!(v.trim().to_ascii_lowercase().as_str(), "no" | "false" | "0")
            }),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// deb822 (control file) parsing
// ---------------------------------------------------------------------------------------------

/// Split deb822 text into stanzas (lists of non-comment lines); blank lines separate stanzas,
/// lines starting with `#` are comments.
fn deb822_stanzas(text: &str) -> impl Iterator<Item = Vec<&str>> {
    let mut lines = text.lines();
    std::iter::from_fn(move || {
        let mut stanza = Vec::new();
        for line in lines.by_ref() {
            if line.trim().is_empty() {
                if stanza.is_empty() {
                    continue;
                }
                return Some(stanza);
            }
            if !line.starts_with('#') {
                stanza.push(line);
            }
        }
        (!stanza.is_empty()).then_some(stanza)
    })
}

/// Fields of a stanza; continuation lines (starting with space or tab) are joined with '\n'.
fn parse_fields(lines: &[&str]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                if !value.is_empty() {
                    value.push('\n');
                }
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    fields
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// One binary package stanza of a `Packages` index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    /// `Package`
    pub package: String,
    /// `Version` (full Debian version)
    pub version: String,
    /// `Filename`, relative to the mirror root (`pool/...`)
    pub filename: String,
    /// `Size` in bytes
    pub size: u64,
    /// `SHA256`, lower-case hex
    pub sha256: String,
}

/// Every stanza of a `Packages` index for `package`, in index order.
pub fn parse_packages(text: &str, package: &str) -> Result<Vec<PackageEntry>> {
    let mut out = Vec::new();
    for lines in deb822_stanzas(text) {
        let is_it = lines.iter().any(|l| {
            l.strip_prefix("Package:")
                .is_some_and(|name| name.trim() == package)
        });
        if !is_it {
            continue;
        }
        let fields = parse_fields(&lines);
        let get = |key: &str| {
            field(&fields, key)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("Packages stanza for {package} lacks a {key} field"))
        };
        let version = get("Version")?;
        let filename = get("Filename")?;
        let size = get("Size")?;
        let size: u64 = size
            .parse()
            .with_context(|| format!("{package} {version}: bad Size {size:?}"))?;
        let sha256 = get("SHA256")?.to_ascii_lowercase();
        ensure!(
            is_sha256_hex(&sha256),
            "{package} {version}: bad SHA256 {sha256:?}"
        );
        ensure!(
            filename.starts_with("pool/") && !filename.split('/').any(|c| c == ".."),
            "{package} {version}: unexpected Filename {filename:?}"
        );
        out.push(PackageEntry {
            package: package.to_owned(),
            version,
            filename,
            size,
            sha256,
        });
    }
    Ok(out)
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a requested version (`2025.02`, `2025.02-8`, `2025.02-8+deb13u1`) selects the
/// Debian version `candidate`: equal, or a prefix followed by `-` or `+`. An epoch on the
/// candidate is ignored unless the request has one.
pub fn version_matches(request: &str, candidate: &str) -> bool {
    let candidate = if request.contains(':') {
        candidate
    } else {
        candidate
            .split_once(':')
            .map_or(candidate, |(_, upstream)| upstream)
    };
    candidate == request
        || candidate
            .strip_prefix(request)
            .is_some_and(|rest| rest.starts_with(['-', '+']))
}

fn pick<'a>(entries: &'a [PackageEntry], request: &str) -> Option<&'a PackageEntry> {
    entries.iter().find(|e| e.version == request).or_else(|| {
        entries
            .iter()
            .find(|e| version_matches(request, &e.version))
    })
}

/// `(sha256, size)` for each path of a Release/InRelease file's `SHA256` list, plus whether
/// the suite offers `Acquire-By-Hash`.
/// What a suite's Release file says about its indexes.
struct ReleaseInfo {
    /// path → (sha256, size)
    sha256: BTreeMap<String, (String, u64)>,
    /// `Acquire-By-Hash: yes`
    by_hash: bool,
}

fn parse_release(text: &str) -> Result<ReleaseInfo> {
    let text = strip_clearsign(text);
    let lines = deb822_stanzas(&text)
        .next()
        .ok_or_else(|| anyhow!("empty Release file"))?;
    let fields = parse_fields(&lines);
    let list =
        field(&fields, "SHA256").ok_or_else(|| anyhow!("Release file has no SHA256 list"))?;
    let mut sums = BTreeMap::new();
    for line in list.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [sha, size, path] = parts[..]
            && let Ok(size) = size.parse()
        {
            sums.insert(path.to_owned(), (sha.to_ascii_lowercase(), size));
        }
    }
    let by_hash = field(&fields, "Acquire-By-Hash").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    Ok(ReleaseInfo {
        sha256: sums,
        by_hash,
    })
}

/// The signed text of a clear-signed OpenPGP message (or the input if it is not one).
fn strip_clearsign(text: &str) -> String {
    if !text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        return text.to_owned();
    }
    let mut lines = text.lines().skip(1);
    // Armor headers ("Hash: ...") end at the first blank line.
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
    }
    let mut out = String::new();
    for line in lines {
        if line.starts_with("-----BEGIN PGP SIGNATURE-----") {
            break;
        }
        out.push_str(line.strip_prefix("- ").unwrap_or(line));
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("bootwatch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// GET `url`; `None` on 404/410, an error on any other failure.
pub(crate) async fn get_optional(client: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>> {
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        tracing::debug!(%url, %status, "not on the mirror");
        return Ok(None);
    }
    ensure!(status.is_success(), "GET {url}: HTTP {status}");
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(Some(body.to_vec()))
}

/// A suite's `qemu-efi-aarch64` entries and whether its index matched the suite's Release file.
struct SuiteIndex {
    entries: Vec<PackageEntry>,
    verified: bool,
}

/// The `qemu-efi-aarch64` entries of a suite's `main/binary-all` index (`Packages.xz`, else
/// `Packages.gz`); `None` if the mirror has neither.
///
/// The index is checked against the size and SHA256 that the suite's `InRelease` (else
/// `Release`) lists, retrying through `by-hash/` when the suite offers it. A mismatch is
/// logged and tolerated (`verified: false`) rather than fatal: the reachable archive copy is
/// a frozen snapshot whose trixie `InRelease` lists a newer `Packages.xz` than it serves (and
/// lacks that one's by-hash copy), so apt itself would refuse it. The `.deb` is still checked
/// against the index it is named in.
async fn suite_packages(
    client: &reqwest::Client,
    mirror: &str,
    suite: &str,
) -> Result<Option<SuiteIndex>> {
    let base = format!("{mirror}/dists/{suite}");
    let mut release = None;
    for name in ["InRelease", "Release"] {
        let url = format!("{base}/{name}");
        if let Some(body) = get_optional(client, &url).await? {
            let parsed = parse_release(&String::from_utf8_lossy(&body))
                .with_context(|| format!("parsing {url}"))?;
            release = Some((url, parsed));
            break;
        }
    }

    for ext in ["xz", "gz"] {
        let rel = format!("main/binary-all/Packages.{ext}");
        let url = format!("{base}/{rel}");
        let Some(mut body) = get_optional(client, &url).await? else {
            continue;
        };
        let verified = match &release {
            None => {
                tracing::warn!(%url, "the suite has no InRelease/Release file; index not verified");
                false
            }
            Some((release_url, info)) => match info.sha256.get(&rel) {
                None => {
                    tracing::warn!(%url, %release_url, "index not listed in the Release file; not verified");
                    false
                }
                Some((want_sha, want_size)) => {
                    match verify_bytes(&url, *want_size, want_sha, &body) {
                        Ok(()) => true,
                        Err(mismatch) => {
                            let mut recovered = false;
                            if info.by_hash {
                                let url =
                                    format!("{base}/main/binary-all/by-hash/SHA256/{want_sha}");
                                if let Ok(Some(again)) = get_optional(client, &url).await
                                    && verify_bytes(&url, *want_size, want_sha, &again).is_ok()
                                {
                                    tracing::debug!(%url, "took the index listed in the Release file by hash");
                                    body = again;
                                    recovered = true;
                                }
                            }
                            if !recovered {
                                tracing::warn!(
                                    %release_url,
                                    "{mismatch:#} (against the Release file); using the index as \
                                     served, the .deb is still checked against it"
                                );
                            }
                            recovered
                        }
                    }
                }
            },
        };
        tracing::debug!(%url, bytes = body.len(), verified, "index downloaded");
        let entries = tokio::task::spawn_blocking(move || -> Result<Vec<PackageEntry>> {
            let mut text = String::new();
            if ext == "xz" {
                liblzma::read::XzDecoder::new(&body[..]).read_to_string(&mut text)
            } else {
                flate2::read::MultiGzDecoder::new(&body[..]).read_to_string(&mut text)
            }
            .context("decompressing the index")?;
            parse_packages(&text, PACKAGE)
        })
        .await
        .context("index parsing task")?
        .with_context(|| format!("reading {url}"))?;
        return Ok(Some(SuiteIndex { entries, verified }));
    }
    Ok(None)
}

fn verify_bytes(what: &str, want_size: u64, want_sha: &str, body: &[u8]) -> Result<()> {
    let sha = hex::encode(Sha256::digest(body));
    verify_digest(what, want_size, want_sha, body.len() as u64, &sha)
}

fn verify_digest(what: &str, want_size: u64, want_sha: &str, size: u64, sha: &str) -> Result<()> {
    ensure!(
        size == want_size,
        "size mismatch for {what}: expected {want_size} bytes, got {size}"
    );
    ensure!(
        sha.eq_ignore_ascii_case(want_sha),
        "SHA256 mismatch for {what}: expected {want_sha}, got {sha}"
    );
    Ok(())
}

/// Fetch (or take from the cache) Debian's `qemu-efi-aarch64` whose version is `version`
/// (a full Debian version such as `2025.02-8+deb13u1`, or a prefix such as `2025.02`, see
/// [`version_matches`]).
///
/// A cached matching version is returned without any network request. Otherwise the suites of
/// [`SUITES`] are searched in order (a suite the mirror lacks is skipped), the first matching
/// package (an exact version match first) is downloaded into `cache_root/edk2/`, checked
/// against the index's size and SHA256 (a mismatch deletes the download and names both
/// values), and its `usr/share/AAVMF/` and `usr/share/qemu-efi-aarch64/` files are unpacked
/// into `cache_root/edk2/<full version>/` (atomically, via a temporary directory).
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

    let mirror = trim_mirror(mirror.trim());
    let lower = mirror.to_ascii_lowercase();
    ensure!(
        lower.starts_with("http://") || lower.starts_with("https://"),
        "mirror {mirror:?} is not an http(s) URL"
    );
    let client = http_client()?;
    tracing::info!(%mirror, request, "looking for {PACKAGE}");
    let mut seen = Vec::new();
    for suite in SUITES {
        let Some(index) = suite_packages(&client, &mirror, suite)
            .await
            .with_context(|| format!("reading the {suite} index at {mirror}"))?
        else {
            seen.push(format!("{suite}: no index"));
            continue;
        };
        if let Some(entry) = pick(&index.entries, request) {
            let origin = Origin {
                suite: suite.to_string(),
                index_verified: index.verified,
            };
            return download_and_install(&client, &mirror, origin, entry.clone(), cache_root).await;
        }
        let versions: Vec<&str> = index.entries.iter().map(|e| e.version.as_str()).collect();
        seen.push(format!("{suite}: {}", none_if_empty(&versions)));
    }
    bail!(
        "no {PACKAGE} version matching {request:?} at {mirror} ({})",
        seen.join("; ")
    )
}

/// Where a package entry came from.
struct Origin {
    suite: String,
    /// Whether the index matched the suite's Release file.
    index_verified: bool,
}

async fn download_and_install(
    client: &reqwest::Client,
    mirror: &str,
    origin: Origin,
    entry: PackageEntry,
    cache_root: &Path,
) -> Result<Edk2Build> {
    check_version_dir_name(&entry.version)?;
    let edk2_dir = cache_root.join("edk2");
    fs::create_dir_all(&edk2_dir).with_context(|| format!("creating {}", edk2_dir.display()))?;
    remove_stale_temporaries(&edk2_dir);

    let url = format!("{mirror}/{}", entry.filename);
    tracing::info!(
        %url,
        size = entry.size,
        suite = %origin.suite,
        "downloading {PACKAGE} {} ({:.1} MiB)",
        entry.version,
        entry.size as f64 / (1024.0 * 1024.0)
    );
    let started = Instant::now();
    let deb = download_verified(client, &url, &edk2_dir, entry.size, &entry.sha256).await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
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

/// Stream `url` into a temporary file in `dir`, hashing as it goes; the file is deleted unless
/// size and SHA256 match.
async fn download_verified(
    client: &reqwest::Client,
    url: &str,
    dir: &Path,
    want_size: u64,
    want_sha: &str,
) -> Result<tempfile::NamedTempFile> {
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    ensure!(status.is_success(), "GET {url}: HTTP {status}");

    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".deb")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen()?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {url}"))?;
        size += chunk.len() as u64;
        ensure!(
            size <= want_size,
            "size mismatch for {url}: expected {want_size} bytes, got more"
        );
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", tmp.path().display()))?;
    }
    file.flush().await?;
    drop(file);
    let sha = hex::encode(hasher.finalize());
    if let Err(e) = verify_digest(url, want_size, want_sha, size, &sha) {
        tmp.close().ok();
        return Err(e);
    }
    Ok(tmp)
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
    /// Whether the Packages index naming the .deb matched the suite's Release file.
    #[serde(default)]
    index_verified: bool,
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
/// left in place whatever happens. The manifest records the index as not verified.
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
        index_verified: false,
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
        index_verified: origin.index_verified,
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
    let file = fs::File::open(deb).with_context(|| format!("opening {}", deb.display()))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    let mut members = Vec::new();
    while let Some(member) = archive.next_entry() {
        let member = member.with_context(|| format!("reading the ar archive {}", deb.display()))?;
        let name = String::from_utf8_lossy(member.header().identifier())
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if let Some(compression) = name.strip_prefix("data.tar") {
            let what = format!("{} member {name}", deb.display());
            return match compression {
                "" => extract_data_tar(member, out_dir),
                ".gz" => extract_data_tar(flate2::read::GzDecoder::new(member), out_dir),
                ".xz" => extract_data_tar(liblzma::read::XzDecoder::new(member), out_dir),
                _ => bail!(
                    "{what}: unsupported compression (only data.tar, data.tar.gz and \
                     data.tar.xz are supported)"
                ),
            }
            .with_context(|| format!("unpacking {what}"));
        }
        members.push(name);
    }
    bail!(
        "{}: no data.tar* member (members: {})",
        deb.display(),
        members.join(", ")
    )
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

fn extract_data_tar<R: Read>(reader: R, out_dir: &Path) -> Result<Vec<Edk2File>> {
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

    // -----------------------------------------------------------------------------------------
    // apt sources
    // -----------------------------------------------------------------------------------------

    fn apt_root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc/apt/sources.list.d")).unwrap();
        for (path, text) in files {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn deb822_with_comments_and_security_first() {
        let root = apt_root(&[(
            "etc/apt/sources.list.d/debian.sources",
            "# Debian sources\n\
             Types: deb\n\
             # a comment inside the stanza\n\
             URIs: http://mirror.example/debian-security/\n\
             Suites: bookworm-security\n\
             Components: main\n\
             \n\
             Types: deb deb-src\n\
             # http://other.example/archive\n\
             URIs: http://mirror.example/debian/\n\
             Suites: bookworm bookworm-updates\n\
             Components: main contrib\n\
             Signed-By: -----BEGIN PGP PUBLIC KEY BLOCK-----\n \
             .\n \
             abc\n \
             -----END PGP PUBLIC KEY BLOCK-----\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://mirror.example/debian"
        );
    }

    #[test]
    fn deb822_disabled_and_updates_only_are_skipped() {
        let root = apt_root(&[(
            "etc/apt/sources.list.d/a.sources",
            "Types: deb\nURIs: http://a.example/debian\nSuites: trixie\nComponents: main\n\
             Enabled: no\n\n\
             Types: deb\nURIs: http://b.example/debian\nSuites: trixie-updates \
             trixie-backports\nComponents: main\n\n\
             Types: deb-src\nURIs: http://c.example/debian\nSuites: trixie\nComponents: main\n\n\
             Types: deb\nURIs: https://d.example/debian\nSuites: trixie\nComponents: main\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "https://d.example/debian"
        );
    }

    #[test]
    fn one_line_with_options() {
        let root = apt_root(&[(
            "etc/apt/sources.list",
            "# comment\n\
             deb http://sec.example/debian-security bookworm-security main\n\
             deb https://vendor.example/apt cloud-sdk-bookworm main\n\
             deb-src http://m.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://m.example/debian/ bookworm main contrib # trailing\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://m.example/debian"
        );
        let parsed =
            parse_one_line_sources("deb [ signed-by=/k.gpg ] http://x.example/d sid main\n");
        assert_eq!(
            parsed,
            vec![AptSource {
                types: vec!["deb".into()],
                uris: vec!["http://x.example/d".into()],
                suites: vec!["sid".into()],
                components: vec!["main".into()],
                enabled: true,
            }]
        );
    }

    #[test]
    fn sources_list_comes_before_sources_list_d() {
        let root = apt_root(&[
            (
                "etc/apt/sources.list",
                "deb http://first.example/debian stable main\n",
            ),
            (
                "etc/apt/sources.list.d/a.sources",
                "Types: deb\nURIs: http://second.example/debian\nSuites: stable\nComponents: main\n",
            ),
        ]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://first.example/debian"
        );
    }

    #[test]
    fn mirror_file_uris_are_resolved() {
        let root = apt_root(&[
            (
                "etc/apt/sources.list.d/debian.sources",
                "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\n\
                 Suites: bookworm\nComponents: main\n",
            ),
            (
                "etc/apt/mirrors/debian.list",
                "# list\nhttps://m.example/debian/\tpriority:1\n",
            ),
        ]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "https://m.example/debian"
        );
    }

    #[test]
    fn nothing_usable_names_the_files() {
        let root = apt_root(&[
            (
                "etc/apt/sources.list.d/debian.sources",
                "Types: deb\nURIs: http://m.example/debian-security\n\
                 Suites: bookworm-security\nComponents: main\n",
            ),
            (
                "etc/apt/sources.list.d/vendor.list",
                "deb https://vendor.example/apt nodistro main\n",
            ),
            (
                "etc/apt/sources.list.d/ignored.list.disabled",
                "deb http://m.example/debian bookworm main\n",
            ),
        ]);
        let err = format!("{:#}", mirror_from_apt(root.path()).unwrap_err());
        assert!(err.contains("debian.sources"), "{err}");
        assert!(err.contains("vendor.list"), "{err}");
        assert!(err.contains("sources.list (absent)"), "{err}");
        assert!(!err.contains("ignored"), "{err}");
        assert!(err.contains(MIRROR_ENV), "{err}");
    }

    #[test]
    fn explicit_mirror_wins_and_is_trimmed() {
        assert_eq!(
            resolve_mirror(Some(" http://m.example/debian// ")).unwrap(),
            "http://m.example/debian"
        );
    }

    // -----------------------------------------------------------------------------------------
    // indexes and versions
    // -----------------------------------------------------------------------------------------

    const SHA_A: &str = "a00b2411a79c8aeafd95a7c868ac3cd1aab592f1af9fff965f02d81a625276ed";
    const SHA_B: &str = "30467a3593c099ea42bd6ff3c4590e4b205edf9a7b98844f4bed17cd8b05eb58";

    #[test]
    fn packages_stanzas() {
        let text = format!(
            "Package: qemu-efi-arm\nVersion: 2025.02-8\nFilename: pool/main/e/edk2/arm.deb\n\
             Size: 1\nSHA256: {SHA_A}\n\n\
             Package: qemu-efi-aarch64\nSource: edk2\nVersion: 2025.02-8+deb13u1\n\
             Installed-Size: 10\nDescription: UEFI firmware\n foo\n .\n bar\n\
             Filename: pool/main/e/edk2/qemu-efi-aarch64_2025.02-8+deb13u1_all.deb\n\
             Size: 5122856\nSHA256: {SHA_A}\n\n\n\
             Package: qemu-efi-aarch64\nVersion: 1:2026.08+ds-2\n\
             Filename: pool/main/e/edk2/b.deb\nSize: 7\nSHA256: {}\n",
            SHA_B.to_uppercase()
        );
        let entries = parse_packages(&text, PACKAGE).unwrap();
        assert_eq!(
            entries,
            vec![
                PackageEntry {
                    package: PACKAGE.into(),
                    version: "2025.02-8+deb13u1".into(),
                    filename: "pool/main/e/edk2/qemu-efi-aarch64_2025.02-8+deb13u1_all.deb".into(),
                    size: 5122856,
                    sha256: SHA_A.into(),
                },
                PackageEntry {
                    package: PACKAGE.into(),
                    version: "1:2026.08+ds-2".into(),
                    filename: "pool/main/e/edk2/b.deb".into(),
                    size: 7,
                    sha256: SHA_B.into(),
                },
            ]
        );
        assert_eq!(pick(&entries, "2026.08").unwrap().version, "1:2026.08+ds-2");
        let bad = "Package: qemu-efi-aarch64\nVersion: 1\nFilename: pool/x.deb\nSize: 1\n";
        let err = parse_packages(bad, PACKAGE).unwrap_err().to_string();
        assert!(err.contains("SHA256"), "{err}");
    }

    #[test]
    fn version_prefixes() {
        assert!(version_matches("2025.02", "2025.02-8+deb13u1"));
        assert!(version_matches("2025.02-8", "2025.02-8+deb13u1"));
        assert!(version_matches("2025.02-8+deb13u1", "2025.02-8+deb13u1"));
        assert!(version_matches("2026.08", "2026.08+ds-2"));
        assert!(version_matches("2026.08", "1:2026.08+ds-2"));
        assert!(version_matches("1:2026.08", "1:2026.08+ds-2"));
        assert!(!version_matches("2025.0", "2025.02-8"));
        assert!(!version_matches("2025.02-", "2025.02-8"));
        assert!(!version_matches("2025.02-8", "2025.02-80"));
        assert!(!version_matches("2022.11", "2025.02-8"));
        assert!(!version_matches("1:2026.08", "2026.08+ds-2"));
    }

    #[test]
    fn release_sha256_list() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n\
             Origin: Debian\nCodename: sid\nAcquire-By-Hash: yes\nMD5Sum:\n \
             0123 5 main/binary-all/Packages.xz\nSHA256:\n \
             {SHA_A}  4231936 main/binary-all/Packages.xz\n \
             {SHA_B}      3 main/binary-all/Packages.gz\n\
             -----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"
        );
        let info = parse_release(&text).unwrap();
        assert!(info.by_hash);
        let sums = info.sha256;
        assert_eq!(
            sums["main/binary-all/Packages.xz"],
            (SHA_A.to_owned(), 4231936)
        );
        assert_eq!(sums["main/binary-all/Packages.gz"], (SHA_B.to_owned(), 3));
        assert_eq!(sums.len(), 2);
    }

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
    // end to end against a fake mirror on loopback
    // -----------------------------------------------------------------------------------------

    struct FakeMirror {
        url: String,
        hits: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    /// Serve `files` (path under the mirror root → content) over HTTP on 127.0.0.1.
    async fn fake_mirror(files: BTreeMap<String, Vec<u8>>) -> FakeMirror {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let files = std::sync::Arc::new(files);
        let log = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let files = files.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&req);
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    log.lock().unwrap().push(path.clone());
                    let key = path.strip_prefix("/debian/").unwrap_or("");
                    let (status, body) = match files.get(key) {
                        Some(body) => ("200 OK", body.clone()),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        FakeMirror {
            url: format!("http://{addr}/debian/"),
            hits,
        }
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn packages_text(entries: &[PackageEntry], extra: &str) -> String {
        let mut text = format!(
            "Package: unrelated{extra}\nVersion: 1\nFilename: pool/u.deb\nSize: 1\nSHA256: x\n\n"
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

    /// Add a suite whose index lists `entries` (compressed with xz, or gz when `use_gz`), with
    /// a Release file listing that index, or `listed` instead when given.
    fn add_suite(
        files: &mut BTreeMap<String, Vec<u8>>,
        suite: &str,
        entries: &[PackageEntry],
        use_gz: bool,
        listed: Option<&[u8]>,
    ) {
        let text = packages_text(entries, "");
        let (name, index) = if use_gz {
            ("Packages.gz", gz(text.as_bytes()))
        } else {
            ("Packages.xz", xz(text.as_bytes()))
        };
        let listed = listed.unwrap_or(&index);
        let release = format!(
            "Suite: {suite}\nAcquire-By-Hash: yes\nSHA256:\n {} {} main/binary-all/{name}\n",
            hex::encode(Sha256::digest(listed)),
            listed.len()
        );
        files.insert(format!("dists/{suite}/Release"), release.into_bytes());
        files.insert(format!("dists/{suite}/main/binary-all/{name}"), index);
    }

    fn manifest(build: &Edk2Build) -> Manifest {
        serde_json::from_slice(&fs::read(build.dir.join(MANIFEST_NAME)).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn fetch_from_fake_mirror_then_from_cache() {
        let deb = make_deb(Compression::Xz);
        let old = entry_for(&deb, "2022.11-6+deb12u2");
        let new = entry_for(&deb, "2025.02-8+deb13u1");
        let mut files = BTreeMap::new();
        // No bullseye at all: skipped. bookworm (gz only) has another version.
        add_suite(
            &mut files,
            "bookworm",
            std::slice::from_ref(&old),
            true,
            None,
        );
        add_suite(
            &mut files,
            "trixie",
            std::slice::from_ref(&new),
            false,
            None,
        );
        files.insert(new.filename.clone(), deb.clone());
        files.insert(old.filename.clone(), deb.clone());
        let mirror = fake_mirror(files).await;
        let tmp = tempfile::tempdir().unwrap();

        let build = fetch_edk2(&mirror.url, "2025.02", tmp.path())
            .await
            .unwrap();
        assert_eq!(build.debian_version, "2025.02-8+deb13u1");
        assert_eq!(build.suite, "trixie");
        assert_eq!(build.deb_sha256, new.sha256);
        check_unpacked(&build);
        assert!(manifest(&build).index_verified);
        let hits = mirror.hits.lock().unwrap().clone();
        assert!(
            hits.contains(&format!("/debian/{}", new.filename)),
            "{hits:?}"
        );
        assert!(!hits.iter().any(|h| h.contains("/sid/")), "{hits:?}");

        // Cached: no request at all, even with a mirror that cannot work.
        let n = mirror.hits.lock().unwrap().len();
        let again = fetch_edk2("bogus://nowhere", "2025.02-8", tmp.path())
            .await
            .unwrap();
        assert_eq!(again.dir, build.dir);
        assert_eq!(mirror.hits.lock().unwrap().len(), n);

        // The older version comes from bookworm's gz index.
        let old_build = fetch_edk2(&mirror.url, "2022.11", tmp.path())
            .await
            .unwrap();
        assert_eq!(old_build.suite, "bookworm");

        let err = fetch_edk2(&mirror.url, "2099.01", tmp.path())
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
        let deb = make_deb(Compression::Xz);
        let mut entry = entry_for(&deb, "2025.02-8+deb13u1");
        let listed = SHA_B.to_owned();
        entry.sha256 = listed.clone();
        let mut files = BTreeMap::new();
        add_suite(
            &mut files,
            "trixie",
            std::slice::from_ref(&entry),
            false,
            None,
        );
        files.insert(entry.filename.clone(), deb.clone());
        let mirror = fake_mirror(files).await;
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch_edk2(&mirror.url, "2025.02", tmp.path())
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        let actual = hex::encode(Sha256::digest(&deb));
        assert!(err.contains(&listed) && err.contains(&actual), "{err}");
        assert!(
            edk2_dir_entries(tmp.path()).is_empty(),
            "{:?}",
            edk2_dir_entries(tmp.path())
        );
    }

    #[tokio::test]
    async fn index_not_matching_release_is_tolerated_or_taken_by_hash() {
        let deb = make_deb(Compression::Xz);
        let entry = entry_for(&deb, "2025.02-8+deb13u1");
        // The Release file lists a newer index than the one served, like the frozen archive's
        // trixie.
        let newer = xz(packages_text(std::slice::from_ref(&entry), "-newer").as_bytes());
        for with_by_hash in [false, true] {
            let mut files = BTreeMap::new();
            add_suite(
                &mut files,
                "bullseye",
                std::slice::from_ref(&entry),
                false,
                Some(&newer),
            );
            if with_by_hash {
                files.insert(
                    format!(
                        "dists/bullseye/main/binary-all/by-hash/SHA256/{}",
                        hex::encode(Sha256::digest(&newer))
                    ),
                    newer.clone(),
                );
            }
            files.insert(entry.filename.clone(), deb.clone());
            let mirror = fake_mirror(files).await;
            let tmp = tempfile::tempdir().unwrap();
            let build = fetch_edk2(&mirror.url, "2025.02", tmp.path())
                .await
                .unwrap();
            assert_eq!(manifest(&build).index_verified, with_by_hash);
            let hits = mirror.hits.lock().unwrap().clone();
            assert!(hits.iter().any(|h| h.contains("by-hash")), "{hits:?}");
        }
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
        let mirror = resolve_mirror(None).unwrap();
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
