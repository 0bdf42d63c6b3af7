//! A suite's Release file, read after its signature was verified (see [`super::keyring`]):
//! the SHA256 list of the indexes, `Acquire-By-Hash`, `Valid-Until` and whether the
//! architecture indexes also list `Architecture: all` packages.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use debian_control::fields::Sha256Checksum;

/// What a verified Release file says.
#[derive(Debug, Clone)]
pub struct Release {
    /// The URL it was read from (`.../InRelease` or `.../Release`).
    pub url: String,
    /// `Suite`, `Codename` (either may be absent in a flat or third-party repository).
    pub suite: Option<String>,
    pub codename: Option<String>,
    /// `Valid-Until`, if the file has one.
    pub valid_until: Option<jiff::Timestamp>,
    /// `Acquire-By-Hash: yes`: every index is also served as `<dir>/by-hash/SHA256/<sha256>`.
    pub by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: every `binary-<arch>/Packages` also lists
    /// the `Architecture: all` packages (Debian's own archive says so).
    pub all_in_arch_indexes: bool,
    /// Index path (relative to the suite directory) → (SHA256, size).
    pub sha256: BTreeMap<String, (String, u64)>,
    /// `FINGERPRINT (user id)` of the keys whose signatures verified.
    pub signers: Vec<String>,
    /// Warnings found while reading it (an expired `Valid-Until`), already logged.
    pub warnings: Vec<String>,
}

impl Release {
    /// Parse the verified text of a Release file fetched from `url`, and check `Valid-Until`
    /// against `now`: an expired one is a warning, not an error, because the archive copies
    /// these machines reach are frozen snapshots whose `sid` is past its `Valid-Until` while
    /// its signature is good (apt needs `Acquire::Check-Valid-Until=false` for them).
    pub fn parse(
        text: &str,
        url: &str,
        signers: Vec<String>,
        now: jiff::Timestamp,
    ) -> Result<Release> {
        let para: deb822_fast::Paragraph = text
            .parse()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("{url}: not a Release file"))?;
        // The fields are read one by one rather than through `debian_control`'s `Release`
        // type, which insists on `Components` and `Architectures` that a flat repository's
        // Release (like the ones `repo.rs` writes) does not have.
        let list = para
            .get("SHA256")
            .ok_or_else(|| anyhow!("{url}: the Release file has no SHA256 list"))?;
        let mut sha256 = BTreeMap::new();
        for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let c: Sha256Checksum = line
                .parse()
                .map_err(|e| anyhow!("{url}: bad SHA256 line {line:?}: {e}"))?;
            anyhow::ensure!(
                super::packages::is_sha256_hex(&c.sha256),
                "{url}: bad SHA256 {:?} for {}",
                c.sha256,
                c.filename
            );
            sha256.insert(c.filename, (c.sha256.to_ascii_lowercase(), c.size as u64));
        }
        let field = |name: &str| para.get(name).map(|v| v.trim().to_owned());
        let valid_until = para
            .get("Valid-Until")
            .map(|v| {
                jiff::fmt::rfc2822::parse(v.trim())
                    .map(|z| z.timestamp())
                    .with_context(|| format!("{url}: unreadable Valid-Until {v:?}"))
            })
            .transpose()?;
        let mut warnings = Vec::new();
        if let Some(until) = valid_until
            && until < now
        {
            let w = format!(
                "{url} expired on {until} (Valid-Until); its signature is good, so it is used \
                 anyway (a frozen archive snapshot looks like this; a live mirror serving it \
                 may be stale)"
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
        Ok(Release {
            url: url.to_owned(),
            suite: field("Suite"),
            codename: field("Codename"),
            valid_until,
            by_hash: field("Acquire-By-Hash").is_some_and(|v| v == "yes"),
            all_in_arch_indexes: para
                .get("No-Support-for-Architecture-all")
                .is_some_and(|v| v.trim() == "Packages"),
            sha256,
            signers,
            warnings,
        })
    }

    /// The `(SHA256, size)` the Release lists for `path` (relative to the suite directory).
    pub fn listed(&self, path: &str) -> Option<&(String, u64)> {
        self.sha256.get(path)
    }
}
