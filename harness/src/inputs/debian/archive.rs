//! The one client of a Debian archive mirror: signed Release files, indexes checked against
//! them, `.deb` files checked against the indexes.
//!
//! * A suite's `InRelease` (else `Release` + `Release.gpg`) is fetched once per process (per
//!   mirror, keyring and suite; kept in memory) and its OpenPGP signature verified against the
//!   keyring ([`super::keyring`]). An unsigned Release, a bad signature or one by a key not in
//!   the keyring is an error naming the URL. An expired `Valid-Until` is a warning
//!   ([`Release::parse`] says why).
//! * A `Packages` index is taken only if its size and SHA256 are the ones the verified Release
//!   lists: by its path, else through `by-hash/SHA256/` when the suite offers it, trying each
//!   compression the Release lists (`.xz`, `.gz`, plain). Verified indexes may be kept on disk
//!   by hash ([`Archive::with_index_cache`]).
//! * For `Architecture: all` packages [`Archive::find_arch_all`] reads `binary-all`; when no
//!   served copy of it matches the signed Release (the frozen snapshot reachable here serves
//!   `trixie` and `trixie-backports` `binary-all` indexes older than the ones their `InRelease`
//!   lists, and no by-hash copy of those) and the Release says that the architecture indexes
//!   list `Architecture: all` packages too (`No-Support-for-Architecture-all: Packages`, as
//!   Debian's does), it reads `binary-ARCH`, which does match. So every index used is verified;
//!   nothing unverified is ever used.
//! * A `.deb` is kept only if its size and SHA256 are the ones its verified index lists.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::{Context, Result, bail, ensure};

use super::http::{download_verified, get_optional, http_client, verify_bytes};
use super::keyring::{Keyring, default_keyring_path, shared_keyring};
use super::packages::{PackageEntry, is_sha256_hex, parse_packages};
use super::release::Release;

/// A Debian archive mirror and the keyring its Release files must be signed with.
#[derive(Clone)]
pub struct Archive {
    mirror: String,
    http: reqwest::Client,
    keyring: Arc<Keyring>,
    index_cache: Option<PathBuf>,
}

/// (mirror, keyring identity, suite) → the verified Release, or `None` for a suite the mirror
/// lacks. A failure is not remembered, so the next caller tries again.
type ReleaseCell = Arc<tokio::sync::OnceCell<Option<Arc<Release>>>>;
type ReleaseKey = (String, String, String);
static RELEASES: LazyLock<Mutex<HashMap<ReleaseKey, ReleaseCell>>> =
    LazyLock::new(Default::default);

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("mirror", &self.mirror)
            .field("keyring", &self.keyring.source())
            .field("index_cache", &self.index_cache)
            .finish()
    }
}

impl Archive {
    /// The mirror at `mirror` (an http(s) URL), checked against the keyring named by
    /// `BOOTWATCH_ARCHIVE_KEYRING`, else `/usr/share/keyrings/debian-archive-keyring.gpg`.
    pub fn new(mirror: &str) -> Result<Archive> {
        let keyring = shared_keyring(&default_keyring_path())?;
        Archive::with_keyring(mirror, keyring)
    }

    /// The mirror at `mirror`, checked against `keyring`.
    pub fn with_keyring(mirror: &str, keyring: Arc<Keyring>) -> Result<Archive> {
        let mirror = mirror.trim().trim_end_matches('/').to_owned();
        let lower = mirror.to_ascii_lowercase();
        ensure!(
            lower.starts_with("http://") || lower.starts_with("https://"),
            "mirror {mirror:?} is not an http(s) URL"
        );
        Ok(Archive {
            mirror,
            http: http_client()?,
            keyring,
            index_cache: None,
        })
    }

    /// Keep verified indexes in `dir`, named by their SHA256 (a cached file is re-hashed
    /// before use, so a damaged one is fetched again).
    pub fn with_index_cache(mut self, dir: PathBuf) -> Archive {
        self.index_cache = Some(dir);
        self
    }

    /// The mirror URL (no trailing slash).
    pub fn mirror(&self) -> &str {
        &self.mirror
    }

    /// The keyring Release files are checked against.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The verified Release of `suite`, or `None` if the mirror has neither `InRelease` nor
    /// `Release` for it.
    pub async fn release(&self, suite: &str) -> Result<Option<Arc<Release>>> {
        ensure!(
            !suite.is_empty()
                && suite
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b)),
            "unusable suite name {suite:?}"
        );
        let key = (
            self.mirror.clone(),
            self.keyring.identity(),
            suite.to_owned(),
        );
        let cell = RELEASES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.fetch_release(suite))
            .await
            .cloned()
    }

    async fn fetch_release(&self, suite: &str) -> Result<Option<Arc<Release>>> {
        let base = format!("{}/dists/{suite}", self.mirror);
        let in_release = format!("{base}/InRelease");
        let (url, verified) = match get_optional(&self.http, &in_release).await? {
            Some(body) => {
                let text = String::from_utf8(body)
                    .with_context(|| format!("{in_release} is not UTF-8 text"))?;
                let verified = self.keyring.verify_clearsigned(&text, &in_release)?;
                (in_release, verified)
            }
            None => {
                let url = format!("{base}/Release");
                let Some(body) = get_optional(&self.http, &url).await? else {
                    return Ok(None);
                };
                let Some(signature) = get_optional(&self.http, &format!("{url}.gpg")).await? else {
                    bail!(
                        "{url} is not signed (neither {in_release} nor {url}.gpg is on the \
                         mirror); unsigned Release files are refused"
                    );
                };
                let verified = self.keyring.verify_detached(&body, &signature, &url)?;
                (url, verified)
            }
        };
        let release = Release::parse(
            &verified.text,
            &url,
            verified.signers,
            jiff::Timestamp::now(),
        )?;
        tracing::debug!(%url, signers = %release.signers.join(", "), "Release verified");
        Ok(Some(Arc::new(release)))
    }

    /// The verified, decompressed text of `suite`'s `COMPONENT/binary-ARCH/Packages`; `None` if
    /// the mirror lacks the suite or its Release lists no such index.
    pub async fn packages_index(
        &self,
        suite: &str,
        component: &str,
        arch: &str,
    ) -> Result<Option<String>> {
        let Some(release) = self.release(suite).await? else {
            return Ok(None);
        };
        self.index_text(&release, suite, &format!("{component}/binary-{arch}"))
            .await
    }

    /// The stanzas for `name` in `suite`'s `COMPONENT/binary-ARCH` index (`None`: no index).
    pub async fn find(
        &self,
        suite: &str,
        component: &str,
        arch: &str,
        name: &str,
    ) -> Result<Option<Vec<PackageEntry>>> {
        let Some(text) = self.packages_index(suite, component, arch).await? else {
            return Ok(None);
        };
        Ok(Some(parse_in_background(text, name).await?))
    }

    /// The stanzas for the `Architecture: all` package `name` in `suite`: from `binary-all`,
    /// else from `binary-VIA_ARCH` (see the module documentation). `None`: no index.
    pub async fn find_arch_all(
        &self,
        suite: &str,
        component: &str,
        via_arch: &str,
        name: &str,
    ) -> Result<Option<Vec<PackageEntry>>> {
        let Some(release) = self.release(suite).await? else {
            return Ok(None);
        };
        let all = self
            .index_text(&release, suite, &format!("{component}/binary-all"))
            .await;
        let text = match all {
            Ok(Some(text)) => text,
            other if !release.all_in_arch_indexes => return other.map(|_| None),
            other => {
                if let Err(e) = &other {
                    tracing::warn!(
                        "{e:#}; using {component}/binary-{via_arch} instead, which also lists \
                         Architecture: all packages"
                    );
                }
                let dir = format!("{component}/binary-{via_arch}");
                let Some(text) = self.index_text(&release, suite, &dir).await? else {
                    return Ok(None);
                };
                text
            }
        };
        Ok(Some(parse_in_background(text, name).await?))
    }

    /// The decompressed text of `DIR/Packages` (DIR relative to the suite), in the first
    /// compression the Release lists whose served copy matches it.
    async fn index_text(
        &self,
        release: &Release,
        suite: &str,
        dir: &str,
    ) -> Result<Option<String>> {
        let listed: Vec<(&str, &(String, u64))> = ["xz", "gz", ""]
            .into_iter()
            .filter_map(|ext| {
                let path = if ext.is_empty() {
                    format!("{dir}/Packages")
                } else {
                    format!("{dir}/Packages.{ext}")
                };
                release.listed(&path).map(|l| (ext, l))
            })
            .collect();
        if listed.is_empty() {
            tracing::debug!(url = %release.url, dir, "the Release lists no Packages index here");
            return Ok(None);
        }
        let mut failures = Vec::new();
        for (ext, (sha, size)) in listed {
            match self
                .fetch_listed(release, suite, dir, ext, sha, *size)
                .await
            {
                Ok(body) => {
                    let what = format!("{}/dists/{suite}/{dir}/Packages", self.mirror);
                    let text = tokio::task::spawn_blocking(move || decompress(ext, &body))
                        .await
                        .context("index decompression task")?
                        .with_context(|| format!("decompressing {what}"))?;
                    return Ok(Some(text));
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        bail!(
            "no copy of {}/dists/{suite}/{dir}/Packages on the mirror matches the signed {}: {}",
            self.mirror,
            release.url,
            failures.join("; ")
        )
    }

    /// The bytes of `DIR/Packages[.EXT]` whose SHA256 and size the Release lists: from the
    /// index cache, by path, else by hash.
    async fn fetch_listed(
        &self,
        release: &Release,
        suite: &str,
        dir: &str,
        ext: &str,
        sha: &str,
        size: u64,
    ) -> Result<Vec<u8>> {
        let cached = self.index_cache.as_ref().map(|d| d.join(sha));
        if let Some(path) = &cached
            && let Ok(bytes) = std::fs::read(path)
            && verify_bytes("", size, sha, &bytes).is_ok()
        {
            tracing::debug!(path = %path.display(), "index from the cache");
            return Ok(bytes);
        }
        let name = if ext.is_empty() {
            "Packages".to_owned()
        } else {
            format!("Packages.{ext}")
        };
        let base = format!("{}/dists/{suite}/{dir}", self.mirror);
        let mut urls = vec![format!("{base}/{name}")];
        if release.by_hash {
            urls.push(format!("{base}/by-hash/SHA256/{sha}"));
        }
        let mut problems = Vec::new();
        for url in urls {
            match get_optional(&self.http, &url).await? {
                None => problems.push(format!("{url}: not on the mirror")),
                Some(body) => match verify_bytes(&url, size, sha, &body) {
                    Ok(()) => {
                        if let Some(path) = &cached {
                            self.keep_index(path, &body);
                        }
                        return Ok(body);
                    }
                    Err(e) => problems.push(format!("{e:#}")),
                },
            }
        }
        bail!("{}", problems.join("; "))
    }

    fn keep_index(&self, path: &Path, body: &[u8]) {
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(crate::sys::fsx::write_atomic(path, body)?));
        if let Err(e) = result {
            tracing::debug!(path = %path.display(), "could not keep the index: {e:#}");
        }
    }

    /// The `.deb` of `entry`, downloaded into a temporary file in `dir` and checked against
    /// the entry's size and SHA256 (a mismatch deletes it and names both values).
    pub async fn download(
        &self,
        entry: &PackageEntry,
        dir: &Path,
    ) -> Result<tempfile::NamedTempFile> {
        let url = format!("{}/{}", self.mirror, entry.filename);
        tracing::info!(
            %url,
            size = entry.size,
            "downloading {} {} ({:.1} MiB)",
            entry.package,
            entry.version,
            entry.size as f64 / (1024.0 * 1024.0)
        );
        download_verified(&self.http, &url, dir, entry.size, &entry.sha256).await
    }

    /// The `.deb` of `entry` in `dir` under its archive file name: the file already there if
    /// its size and SHA256 match the entry, else downloaded and checked (see
    /// [`Archive::download`]).
    pub async fn cached_deb(&self, entry: &PackageEntry, dir: &Path) -> Result<PathBuf> {
        let what = format!("{} {}", entry.package, entry.version);
        let name = entry.file_name();
        ensure!(
            name.ends_with(".deb") && !name.starts_with('.') && is_sha256_hex(&entry.sha256),
            "{what}: unexpected file name {name:?} or SHA256 {:?}",
            entry.sha256
        );
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        if path.is_file() {
            let p = path.clone();
            let digest =
                tokio::task::spawn_blocking(move || crate::sys::fsx::hash_file(&p)).await??;
            if digest.size == entry.size && digest.sha256.eq_ignore_ascii_case(&entry.sha256) {
                tracing::debug!(path = %path.display(), "{what} from the cache");
                return Ok(path);
            }
            tracing::warn!(path = %path.display(), "cached {what} does not match the index; downloading again");
        }
        let tmp = self.download(entry, dir).await?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(&path)
            .with_context(|| format!("saving {}", path.display()))?;
        Ok(path)
    }
}

async fn parse_in_background(text: String, name: &str) -> Result<Vec<PackageEntry>> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || parse_packages(&text, &name))
        .await
        .context("index parsing task")?
}

fn decompress(ext: &str, body: &[u8]) -> Result<String> {
    let mut text = String::new();
    match ext {
        "xz" => liblzma::read::XzDecoder::new(body).read_to_string(&mut text)?,
        "gz" => flate2::read::MultiGzDecoder::new(body).read_to_string(&mut text)?,
        _ => (&mut &body[..]).read_to_string(&mut text)?,
    };
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::debian::test_mirror::{
        Files, Signer, add_signed_suite, gz, release_text, serve, sha256, xz,
    };

    const DEB: &[u8] = b"a small package";

    fn packages_text(name: &str, arch: &str) -> String {
        format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: {arch}\n\
             Filename: pool/main/h/{name}/{name}_1.0-1_{arch}.deb\nSize: {}\nSHA256: {}\n",
            DEB.len(),
            sha256(DEB)
        )
    }

    /// A mirror whose suite `stable` has an arm64 index listing `hello`, signed by `signer`.
    fn stable(signer: &Signer, extra: &str) -> Files {
        let mut files = Files::new();
        add_signed_suite(
            &mut files,
            signer,
            "stable",
            &[(
                "main/binary-arm64/Packages.xz",
                xz(packages_text("hello", "arm64").as_bytes()),
            )],
            extra,
        );
        files.insert(
            "pool/main/h/hello/hello_1.0-1_arm64.deb".into(),
            DEB.to_vec(),
        );
        files
    }

    #[tokio::test]
    async fn signed_release_and_matching_index_are_accepted_once_per_process() {
        let signer = Signer::generate("archive");
        let mirror = serve(stable(&signer, "")).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let release = archive.release("stable").await.unwrap().unwrap();
        assert_eq!(
            release.url,
            format!("{}/dists/stable/InRelease", mirror.url)
        );
        assert_eq!(release.signers.len(), 1, "{:?}", release.signers);
        assert!(release.signers[0].contains("archive <archive@invalid>"));
        assert!(release.warnings.is_empty(), "{:?}", release.warnings);
        assert!(release.by_hash);
        let found = archive
            .find("stable", "main", "arm64", "hello")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].version, "1.0-1");
        assert_eq!(found[0].sha256, sha256(DEB));
        assert!(
            archive
                .find("stable", "main", "amd64", "hello")
                .await
                .unwrap()
                .is_none()
        );
        assert!(archive.release("nosuch").await.unwrap().is_none());

        // Another client for the same mirror and keyring does not fetch the Release again.
        let again = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        again.release("stable").await.unwrap().unwrap();
        assert_eq!(mirror.count("/stable/InRelease"), 1, "{:?}", mirror.hits());

        // The package, verified, then reused from the directory.
        let tmp = tempfile::tempdir().unwrap();
        let path = archive.cached_deb(&found[0], tmp.path()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), DEB);
        std::fs::write(&path, b"damaged").unwrap();
        let path = archive.cached_deb(&found[0], tmp.path()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), DEB);
        archive.cached_deb(&found[0], tmp.path()).await.unwrap();
        assert_eq!(mirror.count(".deb"), 2, "{:?}", mirror.hits());
    }

    #[tokio::test]
    async fn release_changed_after_signing_is_refused() {
        let signer = Signer::generate("archive");
        let mut files = stable(&signer, "");
        let key = "dists/stable/InRelease".to_owned();
        let text = String::from_utf8(files[&key].clone()).unwrap();
        // One byte of the signed text changes; the signature stays.
        let tampered = text.replacen("Codename: stable", "Codename: stablf", 1);
        assert_ne!(tampered, text);
        files.insert(key, tampered.into_bytes());
        let mirror = serve(files).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let err = format!("{:#}", archive.release("stable").await.unwrap_err());
        assert!(
            err.contains(&format!("{}/dists/stable/InRelease", mirror.url))
                && err.contains("BAD signature"),
            "{err}"
        );
        // Nothing is remembered: the next call asks again (and fails again).
        assert!(archive.release("stable").await.is_err());
        assert_eq!(mirror.count("/stable/InRelease"), 2);
    }

    #[tokio::test]
    async fn release_signed_by_a_key_not_in_the_keyring_is_refused() {
        let signer = Signer::generate("archive");
        let stranger = Signer::generate("stranger");
        let mirror = serve(stable(&stranger, "")).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let err = format!("{:#}", archive.release("stable").await.unwrap_err());
        assert!(
            err.contains(&format!("{}/dists/stable/InRelease", mirror.url))
                && err.contains("no valid signature by a key of the test keyring"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unsigned_release_is_refused_and_a_detached_signature_is_checked() {
        let signer = Signer::generate("archive");
        let index = xz(packages_text("hello", "arm64").as_bytes());
        let release = release_text("stable", &[("main/binary-arm64/Packages.xz", &index)], "");
        let mut files = Files::new();
        for suite in ["plain", "detached", "mismatched"] {
            files.insert(
                format!("dists/{suite}/Release"),
                release.clone().into_bytes(),
            );
            files.insert(
                format!("dists/{suite}/main/binary-arm64/Packages.xz"),
                index.clone(),
            );
        }
        files.insert(
            "dists/detached/Release.gpg".into(),
            signer.detached(release.as_bytes()),
        );
        files.insert(
            "dists/mismatched/Release.gpg".into(),
            signer.detached(b"another text"),
        );
        let mirror = serve(files).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let err = format!("{:#}", archive.release("plain").await.unwrap_err());
        assert!(
            err.contains(&format!("{}/dists/plain/Release is not signed", mirror.url)),
            "{err}"
        );
        let verified = archive.release("detached").await.unwrap().unwrap();
        assert_eq!(
            verified.url,
            format!("{}/dists/detached/Release", mirror.url)
        );
        assert!(
            archive
                .find("detached", "main", "arm64", "hello")
                .await
                .unwrap()
                .is_some()
        );
        let err = format!("{:#}", archive.release("mismatched").await.unwrap_err());
        assert!(err.contains("BAD signature"), "{err}");
    }

    #[tokio::test]
    async fn index_with_one_byte_changed_is_refused_unless_by_hash_has_the_listed_one() {
        let signer = Signer::generate("archive");
        let text = packages_text("hello", "arm64");
        let changed = text.replacen("Version: 1.0-1", "Version: 1.0-2", 1);
        let path = "main/binary-arm64/Packages.gz";
        for by_hash_intact in [false, true] {
            let mut files = Files::new();
            add_signed_suite(
                &mut files,
                &signer,
                "stable",
                &[(path, gz(text.as_bytes()))],
                "",
            );
            files.insert(format!("dists/stable/{path}"), gz(changed.as_bytes()));
            if !by_hash_intact {
                let by_hash = format!(
                    "dists/stable/main/binary-arm64/by-hash/SHA256/{}",
                    sha256(&gz(text.as_bytes()))
                );
                files.insert(by_hash, gz(changed.as_bytes()));
            }
            let mirror = serve(files).await;
            let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
            let found = archive.find("stable", "main", "arm64", "hello").await;
            if by_hash_intact {
                assert_eq!(found.unwrap().unwrap()[0].version, "1.0-1");
                assert_eq!(mirror.count(&sha256(&gz(text.as_bytes()))), 1);
            } else {
                let err = format!("{:#}", found.unwrap_err());
                assert!(
                    err.contains("no copy of")
                        && err.contains("matches the signed")
                        && err.contains(&format!("{}/dists/stable/{path}", mirror.url))
                        && err.contains("mismatch"),
                    "{err}"
                );
            }
        }
    }

    #[tokio::test]
    async fn expired_valid_until_is_accepted_with_a_warning() {
        let signer = Signer::generate("archive");
        let extra = "Valid-Until: Sat, 01 Jan 2000 00:00:00 UTC\n";
        let mirror = serve(stable(&signer, extra)).await;
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        let release = archive.release("stable").await.unwrap().unwrap();
        assert_eq!(release.warnings.len(), 1, "{:?}", release.warnings);
        assert!(
            release.warnings[0].contains("expired on 2000-01-01T00:00:00Z")
                && release.warnings[0].contains(&release.url),
            "{:?}",
            release.warnings
        );
        assert!(
            archive
                .find("stable", "main", "arm64", "hello")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn arch_all_packages_come_from_an_arch_index_only_when_the_release_says_so() {
        let signer = Signer::generate("archive");
        let all = xz(packages_text("firmware", "all").as_bytes());
        let stale = xz(b"Package: firmware\nVersion: 0.9\nArchitecture: all\n");
        let arm64 = xz(packages_text("firmware", "all").as_bytes());
        for (suite, extra) in [
            ("debian-like", "No-Support-for-Architecture-all: Packages\n"),
            ("other", ""),
        ] {
            let mut files = Files::new();
            add_signed_suite(
                &mut files,
                &signer,
                suite,
                &[
                    ("main/binary-all/Packages.xz", all.clone()),
                    ("main/binary-arm64/Packages.xz", arm64.clone()),
                ],
                extra,
            );
            // binary-all is served older than listed, and its by-hash copy is missing.
            files.insert(
                format!("dists/{suite}/main/binary-all/Packages.xz"),
                stale.clone(),
            );
            files.remove(&format!(
                "dists/{suite}/main/binary-all/by-hash/SHA256/{}",
                sha256(&all)
            ));
            let mirror = serve(files).await;
            let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
            let found = archive
                .find_arch_all(suite, "main", "arm64", "firmware")
                .await;
            if extra.is_empty() {
                let err = format!("{:#}", found.unwrap_err());
                assert!(err.contains("binary-all/Packages"), "{err}");
            } else {
                assert_eq!(found.unwrap().unwrap()[0].version, "1.0-1");
                assert_eq!(mirror.count("/binary-arm64/Packages.xz"), 1);
            }
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_a_404_is_not() {
        let signer = Signer::generate("archive");
        let mirror = serve(stable(&signer, "")).await;
        mirror
            .flaky
            .lock()
            .unwrap()
            .insert("dists/stable/InRelease".into(), 2);
        let archive = Archive::with_keyring(&mirror.url, signer.keyring()).unwrap();
        archive.release("stable").await.unwrap().unwrap();
        assert_eq!(mirror.count("/stable/InRelease"), 3, "{:?}", mirror.hits());
        assert!(archive.release("gone").await.unwrap().is_none());
        assert_eq!(mirror.count("/gone/InRelease"), 1, "{:?}", mirror.hits());
    }

    #[tokio::test]
    async fn verified_indexes_are_kept_by_hash() {
        let signer = Signer::generate("archive");
        let mirror = serve(stable(&signer, "")).await;
        let tmp = tempfile::tempdir().unwrap();
        let archive = Archive::with_keyring(&mirror.url, signer.keyring())
            .unwrap()
            .with_index_cache(tmp.path().to_path_buf());
        archive
            .find("stable", "main", "arm64", "hello")
            .await
            .unwrap()
            .unwrap();
        archive
            .find("stable", "main", "arm64", "hello")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mirror.count("/Packages.xz"), 1, "{:?}", mirror.hits());
        let kept: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(kept.len(), 1);
    }

    /// The real Release files of the host's mirror (apt's configuration, or BOOTWATCH_MIRROR)
    /// verify with the host's keyring; `trixie`'s `qemu-efi-aarch64` is found through a
    /// verified index. Set BOOTWATCH_SKIP_NETWORK_TESTS=1 to skip it.
    #[tokio::test]
    async fn network_release_files_verify_with_the_host_keyring() {
        if std::env::var_os("BOOTWATCH_SKIP_NETWORK_TESTS").is_some_and(|v| !v.is_empty()) {
            eprintln!("skipped: BOOTWATCH_SKIP_NETWORK_TESTS is set");
            return;
        }
        let mirror = crate::inputs::debian::resolve_mirror(None).unwrap();
        let archive = Archive::new(&mirror).unwrap();
        let now = jiff::Timestamp::now();
        for suite in crate::inputs::debian::SUITES {
            let release = archive.release(suite).await.unwrap().unwrap();
            eprintln!(
                "{suite}: {} signed by {}; valid until {:?}; {:?}",
                release.url,
                release.signers.join(", "),
                release.valid_until,
                release.warnings
            );
            assert!(release.url.ends_with("/InRelease"), "{}", release.url);
            assert!(
                release
                    .signers
                    .iter()
                    .any(|s| s.contains("Debian Archive Automatic Signing Key")),
                "{suite}: {:?}",
                release.signers
            );
            let expired = release.valid_until.is_some_and(|u| u < now);
            assert_eq!(release.warnings.is_empty(), !expired, "{suite}");
            assert!(release.all_in_arch_indexes, "{suite}");
            // The verified text is the suite's Release file, byte for byte.
            let http = &archive.http;
            let fetch = async |url: String| {
                let body = get_optional(http, &url).await.unwrap().unwrap();
                String::from_utf8(body).unwrap()
            };
            let signed = fetch(release.url.clone()).await;
            let plain = fetch(release.url.replace("/InRelease", "/Release")).await;
            let verified = archive
                .keyring()
                .verify_clearsigned(&signed, &release.url)
                .unwrap();
            assert!(verified.text == plain, "{suite}: verified text differs");
        }
        let found = archive
            .find_arch_all("trixie", "main", "arm64", "qemu-efi-aarch64")
            .await
            .unwrap()
            .unwrap();
        assert!(
            found.iter().any(|e| e.version.starts_with("2025.02-")),
            "{found:?}"
        );
    }
}
