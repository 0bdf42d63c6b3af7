//! A verified, content-addressed download cache for guest images.
//!
//! # Trust
//!
//! Nothing unverified is ever handed out. An image's expected digest is, in this order of
//! precedence: its SHA-256 if given ([`FetchRequest::sha256`]); else its SHA-512 if given
//! ([`FetchRequest::sha512`]); else what its checksum file lists for it
//! ([`FetchRequest::checksum_url`]: GNU `sha256sum`/`sha512sum` lines, told apart by the hash's
//! length, or BSD/Fedora/CentOS `SHA256 (name) = HASH` / `SHA512 (name) = HASH` lines,
//! optionally inside an OpenPGP clearsigned wrapper; a file that lists both a SHA-256 and a
//! SHA-512 for the image is read for its SHA-256). With none of them, [`ImageCache::fetch`]
//! refuses ([`FetchError::NoChecksum`]). A given digest wins over the checksum file, which is
//! then not fetched. The OpenPGP signature of a checksum file is **not** verified: the checksum
//! file is trusted as far as the connection it came over. The URL's last path segment is
//! matched as it stands (not percent-decoded) against the names in the checksum file.
//!
//! # The newest build
//!
//! A URL whose file name holds [`BUILD_PLACEHOLDER`] (`{build}`) names no file but "the newest
//! build": the checksum file (required) is read at every fetch, the names it lists that match
//! the URL's file name with a build id (`20250428.0`: digits and dots) in place of the
//! placeholder are compared build by build (numerically, part by part), and the newest one is
//! fetched and verified by the digest listed for it. [`CachedImage::build`] and
//! [`CachedImage::url`] say what it resolved to. When the checksum file cannot be read for a
//! transient reason, the newest image cached earlier for the same name is used (with a warning).
//!
//! The cache is addressed by SHA-256 either way: an image verified by its SHA-512 (Debian
//! publishes only `SHA512SUMS`) is hashed with both while it downloads, checked against the
//! SHA-512, and stored under its computed SHA-256 with the SHA-512 in its record, where
//! [`ImageCache::lookup_sha512`] finds it.
//!
//! # Layout
//!
//! Under the cache root (`CACHE/images`, created on demand):
//!
//! - `by-sha256/<sha256>`: a verified image, read-only (0444). It only ever appears by a
//!   rename after its hash matched, so a file with that name is complete and correct.
//! - `by-sha256/<sha256>.json`: its record (name, url, size, sha256, the sha512 if it was
//!   verified by that, fetched_at), written atomically *before* the image is renamed into
//!   place.
//! - `partial/<key>.part`: a download in progress or interrupted; the next fetch resumes it
//!   with an HTTP `Range` request after hashing the bytes already there. The key is the
//!   expected digest: `<sha256>`, or `sha512-<sha512>` for a download verified by SHA-512.
//! - `partial/<key>.json`: name and url of that partial download (for [`ImageCache::state`]).
//! - `partial/<key>.lock`: held (`flock`, exclusive) by the process downloading that image,
//!   so two processes never write the same partial file. It is removed by its holder when the
//!   download ends; a waiter re-checks after locking that it locked the file still at that
//!   path, so removing it is safe.
//!
//! # Downloads
//!
//! A download is retried, resuming each time, up to [`FetchOptions::attempts`] times in all on
//! transient failures (a connection error or reset, HTTP 5xx/408/429, or a stall: no byte for
//! [`FetchOptions::stall_timeout`]). A 404/410 is final at once. A server that answers a range
//! request with the whole file (200) restarts the download from zero. A finished download
//! whose hash does not match is deleted ([`FetchError::Mismatch`]); an interrupted one is kept
//! for the next fetch to resume.

use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::AsyncWriteExt;

pub use super::catalog::BUILD_PLACEHOLDER;

const BY_SHA256: &str = "by-sha256";
const PARTIAL: &str = "partial";
/// A checksum file larger than this is refused (it is most likely the image itself).
const MAX_CHECKSUM_FILE: usize = 4 << 20;
/// Version of the `by-sha256/<sha256>.json` record format.
const RECORD_FORMAT: u32 = 1;
const WRITE_BUFFER: usize = 1 << 20;
/// Download progress is reported at most this often (and once more when a try ends).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The image cache rooted at `CACHE/images`.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

/// One image to fetch: where from, and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Name of the image (for messages, records and [`ImageCache::state`]).
    pub name: String,
    pub url: String,
    /// Expected SHA-256 (hex, case-insensitive, an optional `sha256:` prefix is accepted).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Expected SHA-512 (hex, case-insensitive, an optional `sha512:` prefix is accepted),
    /// used when `sha256` is not given.
    #[serde(default)]
    pub sha512: Option<String>,
    /// A checksum file listing the URL's file name, used when neither `sha256` nor `sha512`
    /// is given.
    #[serde(default)]
    pub checksum_url: Option<String>,
}

/// How far a download is, for the caller to show (the cache never prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadProgress {
    /// The image's name ([`FetchRequest::name`]).
    pub name: String,
    /// Bytes in the partial file so far (a resumed download starts above zero; a download that
    /// restarts from zero goes back to it).
    pub bytes: u64,
    /// The image's size when the server said it.
    pub total: Option<u64>,
}

/// Where download progress goes.
pub type ProgressSink = Arc<dyn Fn(DownloadProgress) + Send + Sync>;

/// How to fetch.
#[derive(Clone)]
pub struct FetchOptions {
    /// Called with the download's progress, at most every 100 ms while bytes arrive.
    pub progress: Option<ProgressSink>,
    /// A download that receives no byte for this long has stalled (default 60 s).
    pub stall_timeout: Duration,
    /// Tries in all, each resuming the previous one (default 3).
    pub attempts: u32,
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("progress", &self.progress.is_some())
            .field("stall_timeout", &self.stall_timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            progress: None,
            stall_timeout: Duration::from_secs(60),
            attempts: 3,
        }
    }
}

/// A verified image in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedImage {
    /// `root/by-sha256/<sha256>` (read-only).
    pub path: PathBuf,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// The URL it was fetched from (empty if its record was lost).
    pub url: String,
    /// The build the request's `{build}` resolved to (see the module documentation), when it
    /// had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// What the cache holds for a [`FetchRequest`] (for `images list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CacheState {
    Cached { path: PathBuf, size: u64 },
    Partial { bytes: u64 },
    Absent,
}

/// Why a fetch failed. Every message names the image and the URL and says what to do; it is
/// complete on its own (no error source chain).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "image {name}: {url} was not found (HTTP 404); the image was probably moved or removed \
         upstream: update the image's url"
    )]
    NotFound { name: String, url: String },
    #[error("image {name}: {url} answered HTTP {status}; {}", http_hint(*.status))]
    Http {
        name: String,
        url: String,
        status: u16,
    },
    #[error(
        "image {name}: the download from {url} stalled (no data for {seconds} s, {bytes} bytes \
         so far); the partial download is kept: run again to resume it"
    )]
    Stalled {
        name: String,
        url: String,
        seconds: u64,
        bytes: u64,
    },
    #[error(
        "image {name}: {algorithm} mismatch for {url}: expected {expected}, got {actual}; the \
         download was deleted. If the image changed upstream, update its sha256 or sha512 (or \
         checksum_url); otherwise run again"
    )]
    Mismatch {
        name: String,
        url: String,
        /// `SHA-256` or `SHA-512`: the digest the download was verified by.
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error(
        "image {name} has no sha256, sha512 or checksum_url; refusing to download an image \
         that cannot be verified: add one of them to the image's definition"
    )]
    NoChecksum { name: String },
    #[error(
        "image {name}: checksum file {url}: {reason}; check the image's checksum_url (or give \
         its sha256 or sha512)"
    )]
    ChecksumFile {
        name: String,
        url: String,
        reason: String,
    },
    #[error("image {name}: {reason}; fix the image's definition")]
    Invalid { name: String, reason: String },
    #[error(
        "image {name}: {action} {}: {error}; check the permissions of and the free space in \
         the image cache",
        path.display()
    )]
    Io {
        name: String,
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "image {name}: {url}: {reason}; check the network and run again (a partial download \
         is resumed)"
    )]
    Network {
        name: String,
        url: String,
        reason: String,
    },
}

fn http_hint(status: u16) -> &'static str {
    if is_transient_status(status) {
        "the server has trouble: run again later (a partial download is resumed)"
    } else {
        "check the image's url"
    }
}

fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

impl FetchError {
    /// Whether trying again may help (what is retried within a fetch).
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Network { .. } | FetchError::Stalled { .. } => true,
            FetchError::Http { status, .. } => is_transient_status(*status),
            _ => false,
        }
    }
}

/// `by-sha256/<sha256>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheRecord {
    format: u32,
    name: String,
    url: String,
    size: u64,
    sha256: String,
    /// Lowercase hex, when the image was verified by its SHA-512 (absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha512: Option<String>,
    fetched_at: jiff::Timestamp,
    /// The request's url when it named the newest build (`{build}`); `url` is what it resolved
    /// to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    /// The build it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build: Option<String>,
}

/// `partial/<key>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartialRecord {
    name: String,
    url: String,
}

/// The digest a download must match: given in its request, or read from its checksum file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Lowercase hex.
    Sha256(String),
    /// Lowercase hex.
    Sha512(String),
}

impl Expected {
    fn algorithm(&self) -> &'static str {
        match self {
            Expected::Sha256(_) => "SHA-256",
            Expected::Sha512(_) => "SHA-512",
        }
    }

    fn hex(&self) -> &str {
        match self {
            Expected::Sha256(sha) | Expected::Sha512(sha) => sha,
        }
    }

    /// The name of its partial download (and of that one's lock and record) in `partial/`.
    fn key(&self) -> String {
        match self {
            Expected::Sha256(sha) => sha.clone(),
            Expected::Sha512(sha) => format!("sha512-{sha}"),
        }
    }

    /// The digest of this algorithm among `digests` (empty if it was not computed).
    fn actual<'a>(&self, digests: &'a Digests) -> &'a str {
        match self {
            Expected::Sha256(_) => &digests.sha256,
            Expected::Sha512(_) => digests.sha512.as_deref().unwrap_or_default(),
        }
    }

    fn is_met_by(&self, digests: &Digests) -> bool {
        self.actual(digests) == self.hex()
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Sha256(sha) => write!(f, "sha256:{sha}"),
            Expected::Sha512(sha) => write!(f, "sha512:{sha}"),
        }
    }
}

/// The digest given in `req` (its sha256, else its sha512), if any. An error (a reason) if a
/// given one is malformed, even one that would not be used.
fn given_digest(req: &FetchRequest) -> Result<Option<Expected>, String> {
    let sha256 = match &req.sha256 {
        Some(s) => Some(
            normalize_sha256(s).ok_or_else(|| format!("bad sha256 {s:?} (want 64 hex digits)"))?,
        ),
        None => None,
    };
    let sha512 = match &req.sha512 {
        Some(s) => Some(
            normalize_sha512(s).ok_or_else(|| format!("bad sha512 {s:?} (want 128 hex digits)"))?,
        ),
        None => None,
    };
    Ok(sha256
        .map(Expected::Sha256)
        .or(sha512.map(Expected::Sha512)))
}

/// The lowercase-hex digests of a download: SHA-256 always (the cache's address), SHA-512
/// when it is verified by that.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digests {
    sha256: String,
    sha512: Option<String>,
}

/// The running hashes of a download (see [`Digests`]).
#[derive(Clone)]
struct Hashers {
    sha256: Sha256,
    sha512: Option<Sha512>,
}

impl Hashers {
    fn new(expected: &Expected) -> Hashers {
        Hashers {
            sha256: Sha256::new(),
            sha512: matches!(expected, Expected::Sha512(_)).then(Sha512::new),
        }
    }

    /// New hashers of the same algorithms.
    fn fresh(&self) -> Hashers {
        Hashers {
            sha256: Sha256::new(),
            sha512: self.sha512.as_ref().map(|_| Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(sha512) = &mut self.sha512 {
            sha512.update(data);
        }
    }

    fn digests(&self) -> Digests {
        Digests {
            sha256: hex::encode(self.sha256.clone().finalize()),
            sha512: self
                .sha512
                .as_ref()
                .map(|h| hex::encode(h.clone().finalize())),
        }
    }
}

impl io::Write for Hashers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ImageCache {
    /// A cache rooted at `root` (`CACHE/images`); nothing is created until a fetch.
    pub fn new(root: &Path) -> ImageCache {
        ImageCache {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn image_path(&self, sha: &str) -> PathBuf {
        self.root.join(BY_SHA256).join(sha)
    }

    fn record_path(&self, sha: &str) -> PathBuf {
        self.root.join(BY_SHA256).join(format!("{sha}.json"))
    }

    fn part_path(&self, key: &str) -> PathBuf {
        self.root.join(PARTIAL).join(format!("{key}.part"))
    }

    fn part_record_path(&self, key: &str) -> PathBuf {
        self.root.join(PARTIAL).join(format!("{key}.json"))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join(PARTIAL).join(format!("{key}.lock"))
    }

    /// The verified file for this sha256, if cached. Does not re-hash the file (only verified
    /// files are ever renamed into `by-sha256/`), but does check its size against its record.
    pub fn lookup(&self, sha256: &str) -> Option<CachedImage> {
        let sha = normalize_sha256(sha256)?;
        let path = self.image_path(&sha);
        let meta = fs::metadata(&path).ok().filter(|m| m.is_file())?;
        let (url, build) = match read_json::<CacheRecord>(&self.record_path(&sha)) {
            Some(r) if r.size == meta.len() && r.sha256 == sha => (r.url, r.build),
            Some(r) => {
                tracing::warn!(
                    path = %path.display(),
                    size = meta.len(),
                    recorded_size = r.size,
                    "cached image does not match its record; ignoring it"
                );
                return None;
            }
            None => (String::new(), None),
        };
        Some(CachedImage {
            path,
            sha256: sha,
            size: meta.len(),
            url,
            build,
        })
    }

    /// The verified file recorded with this sha512 (an image fetched by its SHA-512), if
    /// cached. Reads the records in `by-sha256/`; checks the file like [`ImageCache::lookup`].
    pub fn lookup_sha512(&self, sha512: &str) -> Option<CachedImage> {
        let sha512 = normalize_sha512(sha512)?;
        json_files::<CacheRecord>(&self.root.join(BY_SHA256))
            .into_iter()
            .filter(|(sha, r)| *sha == r.sha256 && r.sha512.as_deref() == Some(sha512.as_str()))
            .filter_map(|(sha, r)| Some((r.fetched_at, self.lookup(&sha)?)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, img)| img)
    }

    fn lookup_expected(&self, expected: &Expected) -> Option<CachedImage> {
        match expected {
            Expected::Sha256(sha) => self.lookup(sha),
            Expected::Sha512(sha) => self.lookup_sha512(sha),
        }
    }

    /// What the cache holds for `req`: by its given digest (its sha256, else its sha512) when
    /// it has one, else by its name and url (the newest cached image recorded under both,
    /// else a partial download under both). Makes no network request.
    pub fn state(&self, req: &FetchRequest) -> CacheState {
        match given_digest(req) {
            Ok(Some(expected)) => {
                if let Some(img) = self.lookup_expected(&expected) {
                    return CacheState::Cached {
                        path: img.path,
                        size: img.size,
                    };
                }
                return match fs::metadata(self.part_path(&expected.key())) {
                    Ok(m) => CacheState::Partial { bytes: m.len() },
                    Err(_) => CacheState::Absent,
                };
            }
            Ok(None) => {}
            Err(_) => return CacheState::Absent,
        }
        if let Some(img) = self.find_by_name(req) {
            return CacheState::Cached {
                path: img.path,
                size: img.size,
            };
        }
        for (sha, _) in json_files::<PartialRecord>(&self.root.join(PARTIAL))
            .into_iter()
            .filter(|(_, r)| r.name == req.name && r.url == req.url)
        {
            if let Ok(m) = fs::metadata(self.part_path(&sha)) {
                return CacheState::Partial { bytes: m.len() };
            }
        }
        CacheState::Absent
    }

    /// The newest cached image recorded under `req`'s name and url.
    fn find_by_name(&self, req: &FetchRequest) -> Option<CachedImage> {
        json_files::<CacheRecord>(&self.root.join(BY_SHA256))
            .into_iter()
            .filter(|(sha, r)| {
                r.name == req.name
                    && (r.url == req.url || r.template.as_deref() == Some(req.url.as_str()))
                    && *sha == r.sha256
            })
            .filter_map(|(sha, r)| Some((r.fetched_at, self.lookup(&sha)?)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, img)| img)
    }

    /// The verified image for `req`, downloading it unless it is cached.
    ///
    /// With `req.sha256` or `req.sha512` given and the image cached, this makes no request at
    /// all. With only `req.checksum_url`, the checksum file is read each time (it says which
    /// image is current); if that fails transiently, the newest image cached under the same
    /// name and url is used instead (with a warning).
    pub async fn fetch(
        &self,
        req: &FetchRequest,
        opts: &FetchOptions,
    ) -> Result<CachedImage, FetchError> {
        let invalid = |reason: String| FetchError::Invalid {
            name: req.name.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&req.url.replace(BUILD_PLACEHOLDER, "0"))
            .map_err(|e| invalid(format!("bad url {:?}: {e}", req.url)))?;
        let newest = req.url.contains(BUILD_PLACEHOLDER);
        let file_name = if newest {
            // As written: the parsed url has the placeholder's braces percent-encoded.
            req.url.rsplit('/').next().unwrap_or_default().to_owned()
        } else {
            url.path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or_default()
                .to_owned()
        };
        if file_name.is_empty() {
            return Err(invalid(format!("url {} names no file", req.url)));
        }
        let given = given_digest(req).map_err(invalid)?;
        if newest && given.is_some() {
            return Err(invalid(
                "a fixed sha256 or sha512 cannot verify the newest build ({build} in the url)"
                    .into(),
            ));
        }
        if let Some(expected) = &given
            && let Some(img) = self.lookup_expected(expected)
        {
            tracing::debug!(name = %req.name, path = %img.path.display(), "image already cached");
            return Ok(img);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("bootwatch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.stall_timeout)
            .build()
            .map_err(|e| network_error(req, &req.url, e))?;

        // What to download, and what it must hash to.
        let (resolved, expected, build) = match (given, &req.checksum_url) {
            (Some(expected), _) => (req.clone(), expected, None),
            (None, Some(checksum_url)) => {
                let from_file = if newest {
                    newest_from_checksum_file(&client, req, checksum_url, &file_name, opts)
                        .await
                        .map(|(build, name, expected)| (Some((build, name)), expected))
                } else {
                    expected_from_checksum_file(&client, req, checksum_url, &file_name, opts)
                        .await
                        .map(|expected| (None, expected))
                };
                match from_file {
                    Ok((Some((build, name)), expected)) => {
                        let url = req.url.replace(&file_name, &name);
                        tracing::info!(name = %req.name, %build, %url, digest = %expected, "newest build");
                        let resolved = FetchRequest { url, ..req.clone() };
                        (resolved, expected, Some(build))
                    }
                    Ok((None, expected)) => (req.clone(), expected, None),
                    Err(e) if e.is_transient() => match self.find_by_name(req) {
                        Some(img) => {
                            tracing::warn!(
                                name = %req.name,
                                error = %e,
                                path = %img.path.display(),
                                "cannot read the checksum file; using the image cached earlier"
                            );
                            return Ok(img);
                        }
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
            // Nothing unverified is ever handed out.
            (None, None) => {
                return Err(FetchError::NoChecksum {
                    name: req.name.clone(),
                });
            }
        };
        if let Some(img) = self.lookup_expected(&expected) {
            tracing::debug!(name = %req.name, path = %img.path.display(), "image already cached");
            return Ok(CachedImage {
                url: resolved.url.clone(),
                build: build.or(img.build.clone()),
                ..img
            });
        }
        let template = newest.then(|| req.url.clone());
        self.download(&client, &resolved, &expected, (template, build), opts)
            .await
    }

    /// Download `req.url` (expected to hash to `expected`) into the cache, under the lock.
    /// `newest` is the request's `{build}` url and the build it resolved to, when it had one
    /// (`req.url` is the resolved one).
    async fn download(
        &self,
        client: &reqwest::Client,
        req: &FetchRequest,
        expected: &Expected,
        newest: (Option<String>, Option<String>),
        opts: &FetchOptions,
    ) -> Result<CachedImage, FetchError> {
        let partial_dir = self.root.join(PARTIAL);
        fs::create_dir_all(&partial_dir).map_err(|e| io_error(req, "creating", &partial_dir, e))?;
        let key = expected.key();
        let _lock = lock(req, self.lock_path(&key)).await?;
        if let Some(img) = self.lookup_expected(expected) {
            tracing::info!(name = %req.name, path = %img.path.display(), "image fetched meanwhile by another process");
            return Ok(img);
        }

        let started = Instant::now();
        tracing::info!(name = %req.name, url = %req.url, digest = %expected, "downloading image");
        let mut part = PartFile {
            path: self.part_path(&key),
            record: self.part_record_path(&key),
            hashers: Hashers::new(expected),
            len: 0,
            known: false,
        };
        let attempts = opts.attempts.max(1);
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match download_attempt(client, req, expected, opts, &mut part).await {
                Ok(digests) => break Ok(digests),
                Err(e) if e.is_transient() && attempt < attempts => {
                    let delay = retry_delay(attempt);
                    tracing::warn!(
                        name = %req.name,
                        url = %req.url,
                        attempt,
                        attempts,
                        bytes = part.len,
                        error = %e,
                        "download failed; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => break Err(e),
            }
        };
        let digests = match result {
            Ok(digests) => digests,
            Err(e) => {
                let discard = matches!(e, FetchError::Mismatch { .. })
                    || fs::metadata(&part.path).is_ok_and(|m| m.len() == 0)
                    || !part.path.exists();
                if discard {
                    remove_if_exists(&part.path);
                    remove_if_exists(&part.record);
                }
                return Err(e);
            }
        };

        let img = self.commit(req, &key, &digests, part.len, newest).await?;
        remove_if_exists(&part.record);
        tracing::info!(
            name = %req.name,
            url = %req.url,
            size = img.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            path = %img.path.display(),
            "fetched image"
        );
        Ok(img)
    }

    /// Move the verified partial file `partial/<key>.part` into `by-sha256/` under its
    /// SHA-256 (read-only), after its record.
    async fn commit(
        &self,
        req: &FetchRequest,
        key: &str,
        digests: &Digests,
        size: u64,
        (template, build): (Option<String>, Option<String>),
    ) -> Result<CachedImage, FetchError> {
        let sha = &digests.sha256;
        let dir = self.root.join(BY_SHA256);
        let part = self.part_path(key);
        let image = self.image_path(sha);
        let record_path = self.record_path(sha);
        // A SHA-512 recorded earlier for the same bytes (whose file was lost) stays true.
        let sha512 = digests.sha512.clone().or_else(|| {
            read_json::<CacheRecord>(&record_path)
                .filter(|r| r.sha256 == *sha)
                .and_then(|r| r.sha512)
        });
        let record = CacheRecord {
            format: RECORD_FORMAT,
            name: req.name.clone(),
            url: req.url.clone(),
            size,
            sha256: sha.clone(),
            sha512,
            fetched_at: jiff::Timestamp::now(),
            template,
            build: build.clone(),
        };
        let req2 = req.clone();
        let image2 = image.clone();
        blocking(req, &dir.clone(), move || {
            let req = &req2;
            fs::create_dir_all(&dir).map_err(|e| io_error(req, "creating", &dir, e))?;
            fs::set_permissions(&part, fs::Permissions::from_mode(0o444))
                .map_err(|e| io_error(req, "making read-only", &part, e))?;
            crate::sys::fsx::write_json_atomic(&record_path, &record)
                .map_err(|e| io_error(req, "writing", &record_path, e))?;
            fs::rename(&part, &image2).map_err(|e| io_error(req, "renaming into", &image2, e))?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(req, "syncing", &dir, e))
        })
        .await?;
        Ok(CachedImage {
            path: image,
            sha256: sha.clone(),
            size,
            url: req.url.clone(),
            build,
        })
    }
}

/// The partial download: `hashers` hold the hash states of its first `len` bytes.
struct PartFile {
    path: PathBuf,
    record: PathBuf,
    hashers: Hashers,
    len: u64,
    /// Whether `hashers`/`len` describe the file (else it is hashed again from disk).
    known: bool,
}

impl PartFile {
    /// Make `hashers`/`len` match the file on disk, hashing it if they may not.
    async fn sync_with_disk(&mut self, req: &FetchRequest) -> Result<(), FetchError> {
        let disk_len = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error(req, "reading", &self.path, e)),
        };
        if self.known && disk_len == self.len {
            return Ok(());
        }
        if disk_len == 0 {
            self.reset();
            return Ok(());
        }
        let path = self.path.clone();
        let req2 = req.clone();
        let mut hashers = self.hashers.fresh();
        let (hashers, len) = blocking(req, &self.path, move || {
            let len = fs::File::open(&path)
                .and_then(|f| {
                    io::copy(&mut BufReader::with_capacity(WRITE_BUFFER, f), &mut hashers)
                })
                .map_err(|e| io_error(&req2, "hashing", &path, e))?;
            Ok((hashers, len))
        })
        .await?;
        tracing::info!(name = %req.name, bytes = len, "resuming a partial download");
        self.hashers = hashers;
        self.len = len;
        self.known = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.hashers = self.hashers.fresh();
        self.len = 0;
        self.known = true;
    }

    /// Start over from zero.
    async fn truncate(&mut self, req: &FetchRequest) -> Result<(), FetchError> {
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(req, "removing", &self.path, e)),
        }
        self.reset();
        Ok(())
    }

    /// The file opened for appending (created, with its record, if need be).
    async fn open_append(
        &self,
        req: &FetchRequest,
    ) -> Result<tokio::io::BufWriter<tokio::fs::File>, FetchError> {
        if !self.record.exists() {
            let record = PartialRecord {
                name: req.name.clone(),
                url: req.url.clone(),
            };
            crate::sys::fsx::write_json_atomic(&self.record, &record)
                .map_err(|e| io_error(req, "writing", &self.record, e))?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| io_error(req, "opening", &self.path, e))?;
        Ok(tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file))
    }
}

/// One try: request the rest of the file and append it to the partial file. Its digests once
/// the partial file is complete and matches `expected`.
async fn download_attempt(
    client: &reqwest::Client,
    req: &FetchRequest,
    expected: &Expected,
    opts: &FetchOptions,
    part: &mut PartFile,
) -> Result<Digests, FetchError> {
    part.sync_with_disk(req).await?;
    if part.len > 0 {
        let digests = part.hashers.digests();
        if expected.is_met_by(&digests) {
            // Complete already (a run stopped between the last byte and the rename).
            let file = tokio::fs::File::open(&part.path)
                .await
                .map_err(|e| io_error(req, "opening", &part.path, e))?;
            file.sync_all()
                .await
                .map_err(|e| io_error(req, "syncing", &part.path, e))?;
            return Ok(digests);
        }
    }
    let stalled = |bytes: u64| FetchError::Stalled {
        name: req.name.clone(),
        url: req.url.clone(),
        seconds: opts.stall_timeout.as_secs_f64().ceil() as u64,
        bytes,
    };

    let mut refused_range = false;
    let (resp, total) = loop {
        let offset = part.len;
        let mut request = client.get(&req.url);
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = match tokio::time::timeout(opts.stall_timeout, request.send()).await {
            Err(_) => return Err(stalled(offset)),
            Ok(Err(e)) => return Err(network_error(req, &req.url, e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status == StatusCode::PARTIAL_CONTENT && offset > 0 {
            match content_range(resp.headers()) {
                Some((start, total)) if start == offset => break (resp, total),
                other => {
                    part.truncate(req).await?;
                    return Err(FetchError::Network {
                        name: req.name.clone(),
                        url: req.url.clone(),
                        reason: format!(
                            "asked for bytes from {offset}, the server sent the range {other:?}; \
                             restarting from zero"
                        ),
                    });
                }
            }
        } else if status.is_success() {
            if offset > 0 {
                tracing::info!(
                    name = %req.name,
                    url = %req.url,
                    %status,
                    "the server ignored the range request; restarting from zero"
                );
                part.truncate(req).await?;
            }
            let total = resp.content_length();
            break (resp, total);
        } else if status == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 && !refused_range {
            // The partial file is as long as the image or longer, yet does not match it.
            tracing::info!(name = %req.name, bytes = offset, "partial download is stale; restarting from zero");
            refused_range = true;
            part.truncate(req).await?;
        } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Err(FetchError::NotFound {
                name: req.name.clone(),
                url: req.url.clone(),
            });
        } else {
            return Err(FetchError::Http {
                name: req.name.clone(),
                url: req.url.clone(),
                status: status.as_u16(),
            });
        }
    };

    let report = |bytes: u64| {
        if let Some(sink) = &opts.progress {
            sink(DownloadProgress {
                name: req.name.clone(),
                bytes,
                total,
            });
        }
    };
    report(part.len);
    let mut reported = Instant::now();

    let mut file = part.open_append(req).await?;
    let mut stream = resp.bytes_stream();
    let streamed = loop {
        match tokio::time::timeout(opts.stall_timeout, stream.next()).await {
            Err(_) => break Err(stalled(part.len)),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(network_error(req, &req.url, e)),
            Ok(Some(Ok(chunk))) => {
                if let Err(e) = file.write_all(&chunk).await {
                    break Err(io_error(req, "writing", &part.path, e));
                }
                part.hashers.update(&chunk);
                part.len += chunk.len() as u64;
                if reported.elapsed() >= PROGRESS_INTERVAL {
                    report(part.len);
                    reported = Instant::now();
                }
            }
        }
    };
    report(part.len);
    // Keep what arrived, even after a failure: the next try resumes from it. (Should the
    // flush fail, the file is shorter than `part.len` and is hashed again next time.)
    let flushed = file
        .flush()
        .await
        .map_err(|e| io_error(req, "writing", &part.path, e));
    streamed?;
    flushed?;
    if let Some(total) = total
        && part.len < total
    {
        return Err(FetchError::Network {
            name: req.name.clone(),
            url: req.url.clone(),
            reason: format!("the connection ended after {} of {total} bytes", part.len),
        });
    }
    let digests = part.hashers.digests();
    if !expected.is_met_by(&digests) {
        return Err(FetchError::Mismatch {
            name: req.name.clone(),
            url: req.url.clone(),
            algorithm: expected.algorithm(),
            expected: expected.hex().to_owned(),
            actual: expected.actual(&digests).to_owned(),
        });
    }
    file.get_ref()
        .sync_all()
        .await
        .map_err(|e| io_error(req, "syncing", &part.path, e))?;
    Ok(digests)
}

/// `(start, total length if stated)` of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range(headers: &reqwest::header::HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Reads the checksum file, retrying transient failures like a download.
async fn read_checksum_file(
    client: &reqwest::Client,
    req: &FetchRequest,
    checksum_url: &str,
    opts: &FetchOptions,
) -> Result<String, FetchError> {
    let attempts = opts.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match get_checksum_file(client, req, checksum_url, opts).await {
            Ok(text) => return Ok(text),
            Err(e) if e.is_transient() && attempt < attempts => {
                let delay = retry_delay(attempt);
                tracing::warn!(name = %req.name, url = checksum_url, attempt, attempts, error = %e, "retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Read the checksum file and find the digest of `file_name` in it.
async fn expected_from_checksum_file(
    client: &reqwest::Client,
    req: &FetchRequest,
    checksum_url: &str,
    file_name: &str,
    opts: &FetchOptions,
) -> Result<Expected, FetchError> {
    let text = read_checksum_file(client, req, checksum_url, opts).await?;
    let expected =
        parse_checksum_file(&text, file_name).map_err(|reason| FetchError::ChecksumFile {
            name: req.name.clone(),
            url: checksum_url.to_owned(),
            reason,
        })?;
    tracing::debug!(name = %req.name, checksum_url, digest = %expected, "expected digest from the checksum file");
    Ok(expected)
}

/// Read the checksum file and find the newest build matching `template` (a file name with
/// [`BUILD_PLACEHOLDER`]) in it: `(build, file name, digest)`.
async fn newest_from_checksum_file(
    client: &reqwest::Client,
    req: &FetchRequest,
    checksum_url: &str,
    template: &str,
    opts: &FetchOptions,
) -> Result<(String, String, Expected), FetchError> {
    let text = read_checksum_file(client, req, checksum_url, opts).await?;
    newest_build(&text, template).map_err(|reason| FetchError::ChecksumFile {
        name: req.name.clone(),
        url: checksum_url.to_owned(),
        reason,
    })
}

async fn get_checksum_file(
    client: &reqwest::Client,
    req: &FetchRequest,
    url: &str,
    opts: &FetchOptions,
) -> Result<String, FetchError> {
    let stalled = || FetchError::Stalled {
        name: req.name.clone(),
        url: url.to_owned(),
        seconds: opts.stall_timeout.as_secs_f64().ceil() as u64,
        bytes: 0,
    };
    let bad = |reason: String| FetchError::ChecksumFile {
        name: req.name.clone(),
        url: url.to_owned(),
        reason,
    };
    let resp = match tokio::time::timeout(opts.stall_timeout, client.get(url).send()).await {
        Err(_) => return Err(stalled()),
        Ok(Err(e)) => return Err(network_error(req, url, e)),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    if is_transient_status(status.as_u16()) {
        return Err(FetchError::Http {
            name: req.name.clone(),
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        return Err(bad(format!("HTTP {status}")));
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    loop {
        match tokio::time::timeout(opts.stall_timeout, stream.next()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(network_error(req, url, e)),
            Ok(Some(Ok(chunk))) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_CHECKSUM_FILE {
                    return Err(bad(format!(
                        "larger than {} MiB, so not a checksum file",
                        MAX_CHECKSUM_FILE >> 20
                    )));
                }
            }
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The digest that a checksum file lists for `file_name`: its SHA-256, else its SHA-512.
///
/// Understands GNU lines (`HASH  name`, `HASH *name`, and `\HASH  name` with escaped names; a
/// hash of 64 hex digits is a SHA-256, one of 128 a SHA-512), BSD/Fedora/CentOS lines
/// (`SHA256 (name) = HASH`, `SHA512 (name) = HASH`, also `SHA256(name)= HASH`), and skips
/// OpenPGP clearsign armor and signature blocks, comments and anything else (other algorithms
/// included). A listed name matches if it equals `file_name` or ends in `/file_name`. An error
/// (a reason) if no line lists a SHA-256 or SHA-512 for it, or lines list different hashes of
/// one algorithm for it.
fn parse_checksum_file(text: &str, file_name: &str) -> Result<Expected, String> {
    let mut sha256: Option<String> = None;
    let mut sha512: Option<String> = None;
    for (algorithm, hash, name) in checksum_entries(text) {
        if name != file_name && !name.ends_with(&format!("/{file_name}")) {
            continue;
        }
        let (found, label) = match algorithm {
            Algorithm::Sha256 => (&mut sha256, "SHA-256"),
            Algorithm::Sha512 => (&mut sha512, "SHA-512"),
            Algorithm::Other => continue,
        };
        if let Some(prev) = found.as_deref()
            && prev != hash
        {
            return Err(format!(
                "lists different {label} hashes for {file_name} ({prev} and {hash})"
            ));
        }
        *found = Some(hash);
    }
    match (sha256, sha512) {
        (Some(sha), _) => Ok(Expected::Sha256(sha)),
        (None, Some(sha)) => Ok(Expected::Sha512(sha)),
        (None, None) => Err(format!("lists no SHA-256 or SHA-512 for {file_name}")),
    }
}

/// Every `(algorithm, hash, name)` line of a checksum file (see [`parse_checksum_file`] for
/// the formats), names without a leading `./`.
fn checksum_entries(text: &str) -> Vec<(Algorithm, String, String)> {
    let mut in_signature = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            in_signature = true;
            continue;
        }
        if line.starts_with("-----END PGP SIGNATURE") {
            in_signature = false;
            continue;
        }
        if in_signature || line.starts_with("-----") || line.starts_with('#') {
            continue;
        }
        // Clearsigned text dash-escapes lines that start with '-'.
        let line = line.strip_prefix("- ").unwrap_or(line);
        let Some((algorithm, hash, name)) = parse_gnu_line(line).or_else(|| parse_bsd_line(line))
        else {
            continue;
        };
        let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
        out.push((algorithm, hash, name));
    }
    out
}

/// The newest build a checksum file lists for `template` (a file name with
/// [`BUILD_PLACEHOLDER`]): among the listed names (their last path segment) that are the
/// template with a build id in the placeholder's place (digits and dots, starting and ending
/// with a digit, e.g. `20250428.0`), the one whose id is greatest part by part, numerically;
/// with its digest as [`parse_checksum_file`] reads it. `latest` and other aliases are not
/// build ids, so a moving link is never taken for a build.
fn newest_build(text: &str, template: &str) -> Result<(String, String, Expected), String> {
    let (prefix, suffix) = template
        .split_once(BUILD_PLACEHOLDER)
        .ok_or_else(|| format!("{template} has no {BUILD_PLACEHOLDER}"))?;
    let build_key = |id: &str| -> Option<Vec<u64>> {
        if id.is_empty() || id.starts_with('.') || id.ends_with('.') {
            return None;
        }
        id.split('.').map(|p| p.parse::<u64>().ok()).collect()
    };
    let newest = checksum_entries(text)
        .into_iter()
        .filter(|(algorithm, _, _)| *algorithm != Algorithm::Other)
        .filter_map(|(_, _, name)| {
            let file = name.rsplit('/').next().unwrap_or(&name).to_owned();
            let id = file.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((build_key(id)?, id.to_owned(), file))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    let Some((_, build, file)) = newest else {
        return Err(format!(
            "lists no build of {template} (no name {prefix}<digits and dots>{suffix})"
        ));
    };
    let expected = parse_checksum_file(text, &file)?;
    Ok((build, file, expected))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha256,
    Sha512,
    Other,
}

/// `HASH  name` / `HASH *name` (GNU coreutils; a leading `\` means the name is escaped). The
/// algorithm is told by the hash's length.
fn parse_gnu_line(line: &str) -> Option<(Algorithm, String, String)> {
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (hash, rest) = line.split_once(' ')?;
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let algorithm = match hash.len() {
        64 => Algorithm::Sha256,
        128 => Algorithm::Sha512,
        _ => Algorithm::Other,
    };
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .unwrap_or(rest);
    if name.is_empty() {
        return None;
    }
    let name = if escaped {
        name.replace("\\n", "\n").replace("\\\\", "\\")
    } else {
        name.to_owned()
    };
    Some((algorithm, hash.to_ascii_lowercase(), name))
}

/// `ALGO (name) = HASH` (BSD, Fedora, CentOS; also OpenSSL's `ALGO(name)= HASH`).
fn parse_bsd_line(line: &str) -> Option<(Algorithm, String, String)> {
    let (algorithm, rest) = line.split_once('(')?;
    let algorithm = match algorithm.trim_end() {
        "SHA256" => Algorithm::Sha256,
        "SHA512" => Algorithm::Sha512,
        _ => Algorithm::Other,
    };
    let (name, hash) = rest.rsplit_once(')')?;
    let hash = hash.trim_start().strip_prefix('=')?.trim();
    let hash = match algorithm {
        Algorithm::Sha256 => normalize_hex(hash, 64)?,
        Algorithm::Sha512 => normalize_hex(hash, 128)?,
        Algorithm::Other => hash.to_ascii_lowercase(),
    };
    Some((algorithm, hash, name.to_owned()))
}

/// `len` hex digits, lowercased.
fn normalize_hex(s: &str, len: usize) -> Option<String> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A digest as given by a user: `len` hex digits, any case, optionally prefixed by `prefix`.
fn normalize_given(s: &str, prefix: &str, len: usize) -> Option<String> {
    let s = s.trim();
    let s = match s.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(prefix) => &s[prefix.len()..],
        _ => s,
    };
    normalize_hex(s, len)
}

/// A sha256 as given by a user: hex, any case, optionally `sha256:`-prefixed.
fn normalize_sha256(s: &str) -> Option<String> {
    normalize_given(s, "sha256:", 64)
}

/// A sha512 as given by a user: hex, any case, optionally `sha512:`-prefixed.
fn normalize_sha512(s: &str) -> Option<String> {
    normalize_given(s, "sha512:", 128)
}

fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(500 * u64::from(attempt)).min(Duration::from_secs(5))
}

/// Takes the exclusive lock at `path`, waiting for another process's download to end.
async fn lock(req: &FetchRequest, path: PathBuf) -> Result<crate::sys::fsx::FileLock, FetchError> {
    crate::sys::fsx::FileLock::acquire_async(&path)
        .await
        .map_err(|e| io_error(req, "locking", &path, e))
}

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    req: &FetchRequest,
    path: &Path,
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_error(req, "working on", path, io::Error::other(e)))?
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `(stem, parsed)` for each `*.json` file in `dir` that parses as `T`.
fn json_files<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<(String, T)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".json")?;
            Some((stem.to_owned(), read_json(&entry.path())?))
        })
        .collect()
}

fn remove_if_exists(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove");
    }
}

fn io_error(req: &FetchRequest, action: &'static str, path: &Path, error: io::Error) -> FetchError {
    FetchError::Io {
        name: req.name.clone(),
        action,
        path: path.to_path_buf(),
        error,
    }
}

fn network_error(req: &FetchRequest, url: &str, error: reqwest::Error) -> FetchError {
    FetchError::Network {
        name: req.name.clone(),
        url: url.to_owned(),
        // The whole chain: reqwest's own message alone ("error sending request") says little.
        reason: format!("{:#}", anyhow::Error::from(error.without_url())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    /// Bytes the closing route sends before it drops the connection the first time.
    const DROP_AT: usize = 50_000;
    /// Bytes the stalling route sends before it stalls.
    const STALL_AFTER: usize = 5;

    fn image_bytes() -> Vec<u8> {
        (0u32..300_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn sha_of(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn sha512_of(data: &[u8]) -> String {
        hex::encode(Sha512::digest(data))
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Hit {
        path: String,
        range: Option<u64>,
    }

    struct Routes {
        image: Vec<u8>,
        bad: Vec<u8>,
        gnu_sums: String,
        bsd_sums: String,
        sha512_sums: String,
        newest_sums: String,
        dropped: AtomicBool,
        failed: AtomicBool,
        hits: Mutex<Vec<Hit>>,
    }

    struct Server {
        base: String,
        routes: Arc<Routes>,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        fn hits(&self) -> Vec<Hit> {
            self.routes.hits.lock().unwrap().clone()
        }

        fn hits_on(&self, path: &str) -> Vec<Hit> {
            self.hits().into_iter().filter(|h| h.path == path).collect()
        }
    }

    /// A small HTTP/1.1 server on 127.0.0.1 (one request per connection). Routes:
    /// `/good/cloud.qcow2` (Range supported), `/norange/cloud.qcow2` (Range ignored),
    /// `/drop/cloud.qcow2` (the first response closes after `DROP_AT` bytes),
    /// `/stall/cloud.qcow2` (sends `STALL_AFTER` bytes, then nothing),
    /// `/flaky/cloud.qcow2` (503 the first time), `/bad/cloud.qcow2` (other bytes),
    /// `/sums/SHA256SUMS` (GNU), `/sums/CHECKSUM` (clearsigned BSD, with a wrong SHA-512 beside
    /// the SHA-256), `/sums/SHA512SUMS` (GNU, SHA-512 only, as Debian's), `/builds/CHECKSUM`
    /// (dated builds, CentOS style) with its newest build `/builds/os-9-20250428.0.aarch64.qcow2`;
    /// anything else is a 404.
    async fn start_server() -> Server {
        let image = image_bytes();
        let bad: Vec<u8> = image.iter().map(|b| b ^ 0x5a).collect();
        let sha = sha_of(&image);
        let other = sha_of(b"other");
        let gnu_sums = format!(
            "{other}  cloud.qcow2.tar.xz\n{} *cloud.qcow2\n{other} *other.qcow2\n",
            sha.to_uppercase()
        );
        let bsd_sums = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # cloud.qcow2: {} bytes\n\
             SHA256 (other.qcow2) = {other}\n\
             SHA512 (cloud.qcow2) = {other}{other}\n\
             SHA256 (cloud.qcow2) = {sha}\n\
             -----BEGIN PGP SIGNATURE-----\n\n\
             iQIzBAEBCAAdFiEEEp3BtL8AFFtHPYKGQv1DGFP4CRG8ESAQgAKGg5Ao9OVz\n\
             {other}  cloud.qcow2\n\
             =Hf0x\n-----END PGP SIGNATURE-----\n",
            image.len()
        );
        let other512 = sha512_of(b"other");
        let sha512_sums = format!(
            "{other512}  cloud.json\n{}  cloud.qcow2\n{other512}  cloud.tar.xz\n",
            sha512_of(&image)
        );
        // A directory of dated builds as CentOS lists them: the newest (by build id, not by
        // line order) is the test image; `latest` is an alias, not a build.
        let newest_sums = format!(
            "# os-9-20240429.0.aarch64.qcow2: 100 bytes\n\
             SHA256 (os-9-20240429.0.aarch64.qcow2) = {other}\n\
             # os-9-20250428.0.aarch64.qcow2: {len} bytes\n\
             SHA256 (os-9-20250428.0.aarch64.qcow2) = {sha}\n\
             SHA256 (os-9-20250409.12.aarch64.qcow2) = {other}\n\
             SHA256 (os-9-latest.aarch64.qcow2) = {other}\n\
             SHA256 (os-9-99999999.aarch64.qcow2.SHA256SUM) = {other}\n\
             SHA256 (os-9-20990101.0.x86_64.qcow2) = {other}\n",
            len = image.len()
        );
        let routes = Arc::new(Routes {
            image,
            bad,
            gnu_sums,
            bsd_sums,
            sha512_sums,
            newest_sums,
            dropped: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            hits: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = routes.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(handle(sock, shared.clone()));
            }
        });
        Server { base, routes }
    }

    async fn handle(mut sock: tokio::net::TcpStream, routes: Arc<Routes>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let range = head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            let value = value.trim().strip_prefix("bytes=")?;
            key.eq_ignore_ascii_case("range")
                .then(|| value.strip_suffix('-')?.parse::<u64>().ok())?
        });
        routes.hits.lock().unwrap().push(Hit {
            path: path.clone(),
            range,
        });

        let image = &routes.image;
        match path.as_str() {
            "/good/cloud.qcow2" => ranged(&mut sock, image, range).await,
            "/norange/cloud.qcow2" => full(&mut sock, "200 OK", image).await,
            "/bad/cloud.qcow2" => full(&mut sock, "200 OK", &routes.bad).await,
            "/sums/SHA256SUMS" => full(&mut sock, "200 OK", routes.gnu_sums.as_bytes()).await,
            "/sums/CHECKSUM" => full(&mut sock, "200 OK", routes.bsd_sums.as_bytes()).await,
            "/sums/SHA512SUMS" => full(&mut sock, "200 OK", routes.sha512_sums.as_bytes()).await,
            "/builds/CHECKSUM" => full(&mut sock, "200 OK", routes.newest_sums.as_bytes()).await,
            "/builds/os-9-20250428.0.aarch64.qcow2" => ranged(&mut sock, image, range).await,
            "/drop/cloud.qcow2" if !routes.dropped.swap(true, Ordering::SeqCst) => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", image.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&image[..DROP_AT]).await;
                // Dropping the socket closes the connection mid-body.
            }
            "/drop/cloud.qcow2" => ranged(&mut sock, image, range).await,
            "/flaky/cloud.qcow2" if !routes.failed.swap(true, Ordering::SeqCst) => {
                full(&mut sock, "503 Service Unavailable", b"busy").await
            }
            "/flaky/cloud.qcow2" => ranged(&mut sock, image, range).await,
            "/stall/cloud.qcow2" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", image.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&image[..STALL_AFTER]).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            _ => full(&mut sock, "404 Not Found", b"not found").await,
        }
    }

    async fn full(sock: &mut tokio::net::TcpStream, status: &str, body: &[u8]) {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = sock.write_all(head.as_bytes()).await;
        let _ = sock.write_all(body).await;
        let _ = sock.shutdown().await;
    }

    async fn ranged(sock: &mut tokio::net::TcpStream, body: &[u8], range: Option<u64>) {
        let len = body.len() as u64;
        match range {
            None => full(sock, "200 OK", body).await,
            Some(start) if start >= len => {
                let head = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
            Some(start) => {
                let rest = &body[start as usize..];
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    len - 1,
                    rest.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(rest).await;
                let _ = sock.shutdown().await;
            }
        }
    }

    /// Every test runs under this bound.
    async fn bounded<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("test took longer than 10 s")
    }

    fn opts() -> FetchOptions {
        FetchOptions {
            progress: None,
            stall_timeout: Duration::from_secs(5),
            attempts: 3,
        }
    }

    fn request(server: &Server, route: &str) -> FetchRequest {
        FetchRequest {
            name: "test-cloud".into(),
            url: server.url(&format!("/{route}/cloud.qcow2")),
            sha256: Some(sha_of(&image_bytes())),
            sha512: None,
            checksum_url: None,
        }
    }

    /// `request`, verified by the image's SHA-512 instead.
    fn request512(server: &Server, route: &str) -> FetchRequest {
        FetchRequest {
            sha256: None,
            sha512: Some(sha512_of(&image_bytes())),
            ..request(server, route)
        }
    }

    /// The sha512 in the record of the cached image.
    fn recorded_sha512(cache: &ImageCache) -> Option<String> {
        let sha = sha_of(&image_bytes());
        let record: CacheRecord = serde_json::from_slice(
            &fs::read(cache.root().join(format!("by-sha256/{sha}.json"))).unwrap(),
        )
        .unwrap();
        record.sha512
    }

    /// File names in `root/dir` (none if it does not exist).
    fn listing(root: &Path, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(root.join(dir)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    fn assert_cached(cache: &ImageCache, img: &CachedImage, req: &FetchRequest) {
        let sha = sha_of(&image_bytes());
        assert_eq!(img.sha256, sha);
        assert_eq!(img.path, cache.root().join("by-sha256").join(&sha));
        assert_eq!(img.size, image_bytes().len() as u64);
        assert_eq!(img.url, req.url);
        assert!(
            fs::read(&img.path).unwrap() == image_bytes(),
            "cached bytes differ"
        );
        let mode = fs::metadata(&img.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        let record: CacheRecord = serde_json::from_slice(
            &fs::read(cache.root().join(format!("by-sha256/{sha}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                record.name.as_str(),
                record.url.as_str(),
                record.size,
                record.sha256.as_str()
            ),
            (req.name.as_str(), req.url.as_str(), img.size, sha.as_str())
        );
        assert_eq!(
            listing(cache.root(), "by-sha256"),
            vec![sha.clone(), format!("{sha}.json")]
        );
        assert_eq!(listing(cache.root(), "partial"), Vec::<String>::new());
        assert_eq!(cache.lookup(&sha).as_ref(), Some(img));
    }

    #[tokio::test]
    async fn downloads_then_second_fetch_makes_no_request() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(&tmp.path().join("images"));
            let req = request(&server, "good");
            assert_eq!(cache.state(&req), CacheState::Absent);
            assert!(cache.lookup(req.sha256.as_deref().unwrap()).is_none());

            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(
                server.hits(),
                vec![Hit {
                    path: "/good/cloud.qcow2".into(),
                    range: None
                }]
            );
            assert_eq!(
                cache.state(&req),
                CacheState::Cached {
                    path: img.path.clone(),
                    size: img.size
                }
            );

            let again = cache.fetch(&req, &opts()).await.unwrap();
            assert_eq!(again, img);
            assert_eq!(server.hits().len(), 1, "the second fetch made a request");
        })
        .await
    }

    #[tokio::test]
    async fn resumes_after_the_connection_drops() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "drop");
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = seen.clone();
            let options = FetchOptions {
                progress: Some(Arc::new(move |p: DownloadProgress| {
                    sink.lock().unwrap().push(p)
                })),
                ..opts()
            };
            let img = cache.fetch(&req, &options).await.unwrap();
            assert_cached(&cache, &img, &req);
            let hits = server.hits_on("/drop/cloud.qcow2");
            assert_eq!(hits.len(), 2, "{hits:?}");
            assert_eq!(hits[0].range, None);
            let resumed_at = hits[1].range.expect("the retry did not ask for a range");
            assert!(
                resumed_at > 0 && resumed_at <= DROP_AT as u64,
                "resumed at {resumed_at}"
            );
            // Each try reports where it starts and where it ends; the second starts where the
            // first stopped and ends at the whole image.
            let seen = seen.lock().unwrap().clone();
            let len = image_bytes().len() as u64;
            assert!(seen.iter().all(|p| p.name == "test-cloud"), "{seen:?}");
            assert_eq!(seen.first().map(|p| p.bytes), Some(0), "{seen:?}");
            assert!(seen.iter().any(|p| p.bytes == resumed_at), "{seen:?}");
            assert_eq!(
                seen.last().map(|p| (p.bytes, p.total)),
                Some((len, Some(len))),
                "{seen:?}"
            );
        })
        .await
    }

    #[tokio::test]
    async fn resumes_an_existing_partial_file() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "good");
            let sha = req.sha256.clone().unwrap();
            fs::create_dir_all(tmp.path().join("partial")).unwrap();
            fs::write(
                tmp.path().join(format!("partial/{sha}.part")),
                &image_bytes()[..1000],
            )
            .unwrap();
            assert_eq!(cache.state(&req), CacheState::Partial { bytes: 1000 });

            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(
                server.hits(),
                vec![Hit {
                    path: "/good/cloud.qcow2".into(),
                    range: Some(1000)
                }]
            );
        })
        .await
    }

    #[tokio::test]
    async fn complete_partial_file_needs_no_request() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "good");
            let sha = req.sha256.clone().unwrap();
            fs::create_dir_all(tmp.path().join("partial")).unwrap();
            fs::write(
                tmp.path().join(format!("partial/{sha}.part")),
                image_bytes(),
            )
            .unwrap();
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(server.hits(), vec![]);
        })
        .await
    }

    #[tokio::test]
    async fn restarts_from_zero_when_the_server_ignores_range() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "norange");
            let sha = req.sha256.clone().unwrap();
            // Garbage: appending the full body to it would not match.
            fs::create_dir_all(tmp.path().join("partial")).unwrap();
            fs::write(
                tmp.path().join(format!("partial/{sha}.part")),
                [0xEEu8; 1000],
            )
            .unwrap();
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(
                server.hits(),
                vec![Hit {
                    path: "/norange/cloud.qcow2".into(),
                    range: Some(1000)
                }]
            );
        })
        .await
    }

    #[tokio::test]
    async fn stale_partial_longer_than_the_image_restarts() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "good");
            let sha = req.sha256.clone().unwrap();
            fs::create_dir_all(tmp.path().join("partial")).unwrap();
            let junk = vec![1u8; image_bytes().len() + 10];
            fs::write(tmp.path().join(format!("partial/{sha}.part")), junk).unwrap();
            let img = cache
                .fetch(
                    &req,
                    &FetchOptions {
                        attempts: 1,
                        ..opts()
                    },
                )
                .await
                .unwrap();
            assert_cached(&cache, &img, &req);
            let ranges: Vec<_> = server.hits().into_iter().map(|h| h.range).collect();
            assert_eq!(ranges, vec![Some(300_010), None]);
        })
        .await
    }

    #[tokio::test]
    async fn retries_a_server_error() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "flaky");
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(server.hits().len(), 2);

            // With a single attempt, the 503 is the answer.
            let fresh = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&fresh, "flaky");
            let err = cache
                .fetch(
                    &req,
                    &FetchOptions {
                        attempts: 1,
                        ..opts()
                    },
                )
                .await
                .unwrap_err();
            assert!(
                matches!(err, FetchError::Http { status: 503, .. }),
                "{err:?}"
            );
            assert!(err.is_transient());
        })
        .await
    }

    #[tokio::test]
    async fn not_found_is_final_and_leaves_nothing() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "gone");
            let started = Instant::now();
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
            match &err {
                FetchError::NotFound { name, url } => {
                    assert_eq!(
                        (name.as_str(), url.as_str()),
                        ("test-cloud", req.url.as_str())
                    )
                }
                other => panic!("{other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains("test-cloud") && msg.contains(&req.url),
                "{msg}"
            );
            assert_eq!(server.hits().len(), 1, "a 404 was retried");
            assert_eq!(listing(tmp.path(), "partial"), Vec::<String>::new());
            assert_eq!(listing(tmp.path(), "by-sha256"), Vec::<String>::new());
            assert_eq!(cache.state(&req), CacheState::Absent);
        })
        .await
    }

    #[tokio::test]
    async fn stall_times_out_and_keeps_the_partial_file() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "stall");
            let options = FetchOptions {
                stall_timeout: Duration::from_secs(1),
                attempts: 1,
                ..opts()
            };
            let started = Instant::now();
            let err = cache.fetch(&req, &options).await.unwrap_err();
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(2500),
                "{elapsed:?}"
            );
            match &err {
                FetchError::Stalled { seconds, bytes, .. } => {
                    assert_eq!((*seconds, *bytes), (1, STALL_AFTER as u64))
                }
                other => panic!("{other:?}"),
            }
            assert!(err.is_transient());
            assert_eq!(
                cache.state(&req),
                CacheState::Partial {
                    bytes: STALL_AFTER as u64
                }
            );
            assert_eq!(listing(tmp.path(), "by-sha256"), Vec::<String>::new());
            let sha = req.sha256.clone().unwrap();
            assert_eq!(
                listing(tmp.path(), "partial"),
                vec![format!("{sha}.json"), format!("{sha}.part")],
                "the lock file was left behind"
            );
        })
        .await
    }

    #[tokio::test]
    async fn mismatch_deletes_the_download() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request(&server, "bad");
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            let bad: Vec<u8> = image_bytes().iter().map(|b| b ^ 0x5a).collect();
            match &err {
                FetchError::Mismatch {
                    algorithm,
                    expected,
                    actual,
                    ..
                } => {
                    assert_eq!(*algorithm, "SHA-256");
                    assert_eq!(expected, req.sha256.as_ref().unwrap());
                    assert_eq!(actual, &sha_of(&bad));
                }
                other => panic!("{other:?}"),
            }
            assert!(!err.is_transient());
            assert_eq!(server.hits().len(), 1, "a mismatch was retried");
            assert_eq!(listing(tmp.path(), "partial"), Vec::<String>::new());
            assert_eq!(listing(tmp.path(), "by-sha256"), Vec::<String>::new());
        })
        .await
    }

    /// Fetch the image verified by the checksum file at `sums`, which should be read for its
    /// SHA-512 (`by_sha512`) or its SHA-256.
    async fn fetch_with_checksum_file(sums: &str, by_sha512: bool) {
        let server = start_server().await;
        let tmp = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(tmp.path());
        let req = FetchRequest {
            sha256: None,
            checksum_url: Some(server.url(sums)),
            ..request(&server, "good")
        };
        assert_eq!(cache.state(&req), CacheState::Absent);
        let img = cache.fetch(&req, &opts()).await.unwrap();
        assert_cached(&cache, &img, &req);
        assert_eq!(
            recorded_sha512(&cache),
            by_sha512.then(|| sha512_of(&image_bytes()))
        );
        assert_eq!(server.hits_on(sums).len(), 1);
        assert_eq!(server.hits_on("/good/cloud.qcow2").len(), 1);
        assert_eq!(
            cache.state(&req),
            CacheState::Cached {
                path: img.path.clone(),
                size: img.size
            }
        );
        // Again: the checksum file is read, the image is not downloaded.
        assert_eq!(cache.fetch(&req, &opts()).await.unwrap(), img);
        assert_eq!(server.hits_on(sums).len(), 2);
        assert_eq!(server.hits_on("/good/cloud.qcow2").len(), 1);
    }

    #[tokio::test]
    async fn expected_hash_from_a_gnu_checksum_file() {
        bounded(fetch_with_checksum_file("/sums/SHA256SUMS", false)).await
    }

    #[tokio::test]
    async fn expected_hash_from_a_clearsigned_bsd_checksum_file() {
        // It lists a (wrong) SHA-512 too: the SHA-256 is the one used.
        bounded(fetch_with_checksum_file("/sums/CHECKSUM", false)).await
    }

    #[tokio::test]
    async fn expected_hash_from_a_gnu_sha512sums_file() {
        bounded(fetch_with_checksum_file("/sums/SHA512SUMS", true)).await
    }

    #[tokio::test]
    async fn given_sha256_wins_over_sha512_and_the_checksum_file() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = FetchRequest {
                // Wrong, but not used.
                sha512: Some("0".repeat(128)),
                checksum_url: Some(server.url("/sums/SHA256SUMS")),
                ..request(&server, "good")
            };
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(recorded_sha512(&cache), None);
            assert_eq!(server.hits_on("/sums/SHA256SUMS"), vec![]);
        })
        .await
    }

    #[tokio::test]
    async fn checksum_file_problems() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            // The file is not listed.
            let req = FetchRequest {
                name: "unlisted".into(),
                url: server.url("/good/unlisted.qcow2"),
                sha256: None,
                sha512: None,
                checksum_url: Some(server.url("/sums/SHA256SUMS")),
            };
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            assert!(
                matches!(&err, FetchError::ChecksumFile { reason, .. } if reason.contains("unlisted.qcow2")),
                "{err:?}"
            );
            // The checksum file is missing.
            let req = FetchRequest {
                checksum_url: Some(server.url("/sums/nothing")),
                ..request(&server, "good")
            };
            let req = FetchRequest {
                sha256: None,
                ..req
            };
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            assert!(matches!(&err, FetchError::ChecksumFile { .. }), "{err:?}");
            assert!(server.hits_on("/good/cloud.qcow2").is_empty());
            assert!(server.hits_on("/good/unlisted.qcow2").is_empty());
            assert_eq!(listing(tmp.path(), "partial"), Vec::<String>::new());
        })
        .await
    }

    #[tokio::test]
    async fn no_checksum_is_refused_without_a_request() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = FetchRequest {
                sha256: None,
                ..request(&server, "good")
            };
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            assert!(
                matches!(&err, FetchError::NoChecksum { name } if name == "test-cloud"),
                "{err:?}"
            );
            assert_eq!(server.hits(), vec![]);
            assert!(!tmp.path().join("partial").exists());
        })
        .await
    }

    #[tokio::test]
    async fn bad_sha256_or_sha512_is_refused() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = FetchRequest {
                sha256: Some("abc".into()),
                ..request(&server, "good")
            };
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            assert!(matches!(&err, FetchError::Invalid { .. }), "{err:?}");
            // A bad sha512 too, even beside a good sha256 that would be used.
            for sha256 in [None, request(&server, "good").sha256] {
                let req = FetchRequest {
                    sha256,
                    sha512: Some(sha_of(b"a sha256 is too short")),
                    ..request(&server, "good")
                };
                let err = cache.fetch(&req, &opts()).await.unwrap_err();
                assert!(
                    matches!(&err, FetchError::Invalid { reason, .. } if reason.contains("sha512")),
                    "{err:?}"
                );
                assert_eq!(cache.state(&req), CacheState::Absent);
            }
            assert_eq!(server.hits(), vec![]);
        })
        .await
    }

    #[tokio::test]
    async fn concurrent_fetches_download_once() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = (ImageCache::new(tmp.path()), ImageCache::new(tmp.path()));
            let req = request(&server, "drop");
            let options = opts();
            let (x, y) = tokio::join!(a.fetch(&req, &options), b.fetch(&req, &options));
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x, y);
            assert_cached(&a, &x, &req);
            // One download: the dropped first response and its resumption.
            let ranges: Vec<_> = server
                .hits()
                .into_iter()
                .map(|h| h.range.is_some())
                .collect();
            assert_eq!(ranges, vec![false, true]);
        })
        .await
    }

    #[tokio::test]
    async fn falls_back_to_the_cached_image_when_the_checksum_file_is_unreachable() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = FetchRequest {
                sha256: None,
                checksum_url: Some(server.url("/sums/SHA256SUMS")),
                ..request(&server, "good")
            };
            let img = cache.fetch(&req, &opts()).await.unwrap();
            // A port nobody listens on: connection refused.
            let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let dead_url = format!("http://{}/SHA256SUMS", dead.local_addr().unwrap());
            drop(dead);
            let offline = FetchRequest {
                checksum_url: Some(dead_url),
                ..req.clone()
            };
            let options = FetchOptions {
                attempts: 1,
                ..opts()
            };
            assert_eq!(cache.fetch(&offline, &options).await.unwrap(), img);
            // Nothing cached under that name: the network error is the answer.
            let other = FetchRequest {
                name: "other".into(),
                ..offline
            };
            let err = cache.fetch(&other, &options).await.unwrap_err();
            assert!(matches!(&err, FetchError::Network { .. }), "{err:?}");
        })
        .await
    }

    #[tokio::test]
    async fn given_sha512_downloads_then_second_fetch_makes_no_request() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            // The given sha512 wins over the checksum file, which is not read.
            let req = FetchRequest {
                checksum_url: Some(server.url("/sums/SHA512SUMS")),
                ..request512(&server, "good")
            };
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(recorded_sha512(&cache), req.sha512);
            assert_eq!(
                server.hits(),
                vec![Hit {
                    path: "/good/cloud.qcow2".into(),
                    range: None
                }]
            );

            assert_eq!(cache.fetch(&req, &opts()).await.unwrap(), img);
            // In upper case and prefixed, too.
            let loud = FetchRequest {
                sha512: Some(format!(
                    "SHA512:{}",
                    sha512_of(&image_bytes()).to_uppercase()
                )),
                ..req.clone()
            };
            assert_eq!(cache.fetch(&loud, &opts()).await.unwrap(), img);
            assert_eq!(server.hits().len(), 1, "a second fetch made a request");
        })
        .await
    }

    #[tokio::test]
    async fn sha512_mismatch_deletes_the_download() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request512(&server, "bad");
            let err = cache.fetch(&req, &opts()).await.unwrap_err();
            let bad: Vec<u8> = image_bytes().iter().map(|b| b ^ 0x5a).collect();
            match &err {
                FetchError::Mismatch {
                    algorithm,
                    expected,
                    actual,
                    ..
                } => {
                    assert_eq!(*algorithm, "SHA-512");
                    assert_eq!(expected, req.sha512.as_ref().unwrap());
                    assert_eq!(actual, &sha512_of(&bad));
                }
                other => panic!("{other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains("SHA-512 mismatch") && msg.contains(&sha512_of(&bad)),
                "{msg}"
            );
            assert!(!err.is_transient());
            assert_eq!(server.hits().len(), 1, "a mismatch was retried");
            assert_eq!(listing(tmp.path(), "partial"), Vec::<String>::new());
            assert_eq!(listing(tmp.path(), "by-sha256"), Vec::<String>::new());
            assert_eq!(cache.state(&req), CacheState::Absent);
        })
        .await
    }

    #[tokio::test]
    async fn resumes_a_partial_download_keyed_by_sha512() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            // The connection drops, and there is no second try: the partial download stays.
            let dropping = request512(&server, "drop");
            let options = FetchOptions {
                attempts: 1,
                ..opts()
            };
            let err = cache.fetch(&dropping, &options).await.unwrap_err();
            assert!(err.is_transient(), "{err:?}");
            let key = format!("sha512-{}", dropping.sha512.as_ref().unwrap());
            assert_eq!(
                listing(tmp.path(), "partial"),
                vec![format!("{key}.json"), format!("{key}.part")]
            );
            let CacheState::Partial { bytes } = cache.state(&dropping) else {
                panic!("{:?}", cache.state(&dropping));
            };
            assert!(bytes > 0 && bytes <= DROP_AT as u64, "{bytes}");
            // The same sha512 from elsewhere finds the partial download and resumes it.
            let req = request512(&server, "good");
            assert_eq!(cache.state(&req), CacheState::Partial { bytes });
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(recorded_sha512(&cache), req.sha512);
            assert_eq!(
                server.hits_on("/good/cloud.qcow2"),
                vec![Hit {
                    path: "/good/cloud.qcow2".into(),
                    range: Some(bytes)
                }]
            );
        })
        .await
    }

    #[tokio::test]
    async fn resumes_a_dropped_sha512_download() {
        bounded(async {
            // The hash states are kept from one attempt to the next.
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request512(&server, "drop");
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            let ranges: Vec<_> = server
                .hits_on("/drop/cloud.qcow2")
                .into_iter()
                .map(|h| h.range.is_some())
                .collect();
            assert_eq!(ranges, vec![false, true]);
        })
        .await
    }

    #[tokio::test]
    async fn state_by_sha512() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = request512(&server, "good");
            let sha512 = req.sha512.clone().unwrap();
            assert_eq!(cache.state(&req), CacheState::Absent);
            assert_eq!(cache.lookup_sha512(&sha512), None);

            let img = cache.fetch(&req, &opts()).await.unwrap();
            let cached = CacheState::Cached {
                path: img.path.clone(),
                size: img.size,
            };
            assert_eq!(cache.state(&req), cached);
            assert_eq!(
                cache.lookup_sha512(&sha512.to_uppercase()),
                Some(img.clone())
            );
            // By its sha256, and by its name and url, too.
            assert_eq!(cache.state(&request(&server, "good")), cached);
            let unhashed = FetchRequest {
                sha512: None,
                ..req.clone()
            };
            assert_eq!(cache.state(&unhashed), cached);
            // Not by another sha512.
            let other = FetchRequest {
                sha512: Some(sha512_of(b"other")),
                ..req.clone()
            };
            assert_eq!(cache.state(&other), CacheState::Absent);

            // The image file lost: fetched again by its sha256, its record keeps the sha512.
            fs::remove_file(&img.path).unwrap();
            assert_eq!(cache.state(&req), CacheState::Absent);
            let again = cache
                .fetch(&request(&server, "good"), &opts())
                .await
                .unwrap();
            assert_eq!(again, img);
            assert_eq!(recorded_sha512(&cache), Some(sha512.clone()));
            assert_eq!(cache.state(&req), cached);
            assert_eq!(server.hits().len(), 2);

            // An image cached by its sha256 alone is not found by its sha512 (its record has
            // none), and is fetched again by it.
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let by_sha256 = request(&server, "good");
            cache.fetch(&by_sha256, &opts()).await.unwrap();
            assert_eq!(recorded_sha512(&cache), None);
            assert_eq!(cache.state(&req), CacheState::Absent);
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_cached(&cache, &img, &req);
            assert_eq!(recorded_sha512(&cache), Some(sha512));
            assert_eq!(server.hits().len(), 4);
        })
        .await
    }

    #[test]
    fn checksum_file_formats() {
        let sha = "a".repeat(64);
        let other = "b".repeat(64);
        let (long, other_long) = ("c".repeat(128), "d".repeat(128));
        let find = |text: &str| parse_checksum_file(text, "img.qcow2");
        let sha256 = |h: &str| -> Result<Expected, String> { Ok(Expected::Sha256(h.to_owned())) };
        let sha512 = |h: &str| -> Result<Expected, String> { Ok(Expected::Sha512(h.to_owned())) };
        // GNU, text and binary mode, upper case, "./", CRLF.
        assert_eq!(
            find(&format!("{other}  x.qcow2\n{sha}  img.qcow2\n")),
            sha256(&sha)
        );
        assert_eq!(find(&format!("{sha} *img.qcow2\r\n")), sha256(&sha));
        assert_eq!(
            find(&format!("{}  ./img.qcow2\n", sha.to_uppercase())),
            sha256(&sha)
        );
        assert_eq!(find(&format!("{sha}  images/img.qcow2\n")), sha256(&sha));
        assert_eq!(
            find(&format!("{sha}  img.qcow2.xz\n")).map_err(|_| ()),
            Err(())
        );
        // SHA-512, told by its length (Debian's SHA512SUMS) or named (BSD).
        assert_eq!(
            find(&format!("{other_long}  x.json\n{long}  img.qcow2\n")),
            sha512(&long)
        );
        assert_eq!(
            find(&format!("{}  img.qcow2\n", long.to_uppercase())),
            sha512(&long)
        );
        assert_eq!(
            find(&format!(
                "SHA512 (img.qcow2) = {long}\nMD5 (img.qcow2) = x\n"
            )),
            sha512(&long)
        );
        assert_eq!(find(&format!("SHA512 (img.qcow2) = {sha}\n")).ok(), None);
        // Both listed: the SHA-256 wins, in either order.
        assert_eq!(
            find(&format!("{long}  img.qcow2\n{sha}  img.qcow2\n")),
            sha256(&sha)
        );
        assert_eq!(
            find(&format!(
                "SHA256 (img.qcow2) = {sha}\nSHA512 (img.qcow2) = {long}\n"
            )),
            sha256(&sha)
        );
        // BSD / Fedora / CentOS, and OpenSSL's spacing.
        assert_eq!(find(&format!("SHA256 (img.qcow2) = {sha}\n")), sha256(&sha));
        assert_eq!(find(&format!("SHA256(img.qcow2)= {sha}\n")), sha256(&sha));
        // Clearsigned, with a dash-escaped line and a hash-like line inside the signature.
        let signed = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             - {sha}  img.qcow2\n\
             -----BEGIN PGP SIGNATURE-----\n\n{other}  img.qcow2\n-----END PGP SIGNATURE-----\n"
        );
        assert_eq!(find(&signed), sha256(&sha));
        // Two different hashes of one algorithm for the name; the same one twice is fine.
        let err = find(&format!("{sha}  img.qcow2\nSHA256 (img.qcow2) = {other}\n")).unwrap_err();
        assert!(err.contains("different SHA-256"), "{err}");
        let err = find(&format!("{long}  img.qcow2\n{other_long}  img.qcow2\n")).unwrap_err();
        assert!(err.contains("different SHA-512"), "{err}");
        assert_eq!(
            find(&format!("{sha}  img.qcow2\nSHA256 (img.qcow2) = {sha}\n")),
            sha256(&sha)
        );
        // GNU escaped names.
        assert_eq!(
            parse_checksum_file(&format!("\\{sha}  a\\\\b\n"), "a\\b"),
            sha256(&sha)
        );
        let err = find(&format!("{}  img.qcow2\n", "e".repeat(32))).unwrap_err();
        assert!(
            err.contains("img.qcow2") && err.contains("no SHA-256 or SHA-512"),
            "{err}"
        );
    }

    #[test]
    fn sha256_normalization_and_content_range() {
        let sha = "AB".repeat(32);
        assert_eq!(normalize_sha256(&sha), Some("ab".repeat(32)));
        assert_eq!(
            normalize_sha256(&format!(" sha256:{sha} ")),
            Some("ab".repeat(32))
        );
        assert_eq!(normalize_sha256(&"g".repeat(64)), None);
        assert_eq!(normalize_sha256("../../etc/passwd"), None);
        assert_eq!(normalize_sha256(&"ab".repeat(64)), None);
        let long = "Cd".repeat(64);
        assert_eq!(
            normalize_sha512(&format!("SHA512:{long}")),
            Some("cd".repeat(64))
        );
        assert_eq!(normalize_sha512(&sha), None);
        assert_eq!(normalize_sha512(&format!("sha256:{long}")), None);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 100-199/200".parse().unwrap(),
        );
        assert_eq!(content_range(&headers), Some((100, Some(200))));
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 5-9/*".parse().unwrap(),
        );
        assert_eq!(content_range(&headers), Some((5, None)));
    }

    #[tokio::test]
    async fn the_newest_build_is_resolved_through_the_checksum_file_and_recorded() {
        bounded(async {
            let server = start_server().await;
            let tmp = tempfile::tempdir().unwrap();
            let cache = ImageCache::new(tmp.path());
            let req = FetchRequest {
                name: "os-9".into(),
                url: server.url("/builds/os-9-{build}.aarch64.qcow2"),
                sha256: None,
                sha512: None,
                checksum_url: Some(server.url("/builds/CHECKSUM")),
            };
            assert_eq!(cache.state(&req), CacheState::Absent);
            let img = cache.fetch(&req, &opts()).await.unwrap();
            assert_eq!(img.sha256, sha_of(&image_bytes()));
            assert_eq!(img.build.as_deref(), Some("20250428.0"));
            assert_eq!(img.url, server.url("/builds/os-9-20250428.0.aarch64.qcow2"));
            assert!(matches!(cache.state(&req), CacheState::Cached { .. }));
            // Again: the checksum file is read (it says which build is newest today), the
            // image is not downloaded again, and what it resolved to is still known.
            let again = cache.fetch(&req, &opts()).await.unwrap();
            assert_eq!(again, img);
            assert_eq!(server.hits_on("/builds/CHECKSUM").len(), 2);
            assert_eq!(
                server
                    .hits_on("/builds/os-9-20250428.0.aarch64.qcow2")
                    .len(),
                1
            );
            // A checksum file that lists no build of the name: a clear error, no download.
            let none = FetchRequest {
                url: server.url("/builds/other-{build}.qcow2"),
                ..req.clone()
            };
            let err = cache.fetch(&none, &opts()).await.unwrap_err();
            assert!(
                matches!(&err, FetchError::ChecksumFile { reason, .. } if reason.contains("no build of other-{build}.qcow2")),
                "{err}"
            );
            // The checksum file unreachable (transient): the build cached earlier is used.
            let gone = FetchRequest {
                checksum_url: Some("http://127.0.0.1:1/CHECKSUM".into()),
                ..req.clone()
            };
            let fallback = cache
                .fetch(
                    &gone,
                    &FetchOptions {
                        attempts: 1,
                        ..opts()
                    },
                )
                .await;
            // A different checksum_url is still the same name and url template.
            assert_eq!(fallback.unwrap().sha256, img.sha256);
        })
        .await
    }

    #[test]
    fn newest_build_ordering() {
        let line = |n: &str, h: char| format!("SHA256 ({n}) = {}\n", h.to_string().repeat(64));
        let text = [
            line("img-9-20240101.9.qcow2", 'a'),
            line("img-9-20240101.10.qcow2", 'b'),
            line("./img-9-latest.qcow2", 'c'),
            line("sub/img-9-2023.qcow2", 'd'),
            line("img-9-.qcow2", 'e'),
            line("img-9-1..2.qcow2", 'f'),
        ]
        .concat();
        let (build, file, expected) = newest_build(&text, "img-9-{build}.qcow2").unwrap();
        assert_eq!(
            (build.as_str(), file.as_str()),
            ("20240101.10", "img-9-20240101.10.qcow2")
        );
        assert_eq!(expected, Expected::Sha256("b".repeat(64)));
        assert!(newest_build("", "img-{build}").is_err());
    }

    /// CentOS Stream's own listing format and values (see the test data's README): the newest
    /// dated aarch64 build, never the `latest` alias.
    #[test]
    fn newest_centos_stream_9_build_from_its_checksum_file() {
        let text = include_str!("../../../tests/data/catalog/centos-stream-9-aarch64-CHECKSUM");
        let (build, file, expected) =
            newest_build(text, "CentOS-Stream-GenericCloud-9-{build}.aarch64.qcow2").unwrap();
        assert_eq!(build, "20250428.0");
        assert_eq!(
            file,
            "CentOS-Stream-GenericCloud-9-20250428.0.aarch64.qcow2"
        );
        assert_eq!(
            expected,
            Expected::Sha256(
                "2460259ae98a81d29473b5e95f675a7c1042683fe4af0240e38fe0ee85fcb782".into()
            )
        );
    }
}
