//! OpenPGP verification of a suite's `InRelease` (or `Release` + `Release.gpg`) against a
//! keyring, with rPGP (the `pgp` crate, pure Rust): no `gpgv` process is spawned.
//!
//! The rules are apt's (`apt-secure(8)`, apt's gpgv method):
//!
//! * at least one signature must verify with a usable key of the keyring;
//! * a signature whose key *is* in the keyring but does not verify is fatal, even when another
//!   one verifies (the text was changed, or the signature is forged);
//! * signatures by keys not in the keyring are ignored when another one verifies (Debian signs
//!   with the current and the previous release's keys, and the stable release managers' key).
//!
//! A key is usable when its self-signature (primary key) or binding signature (subkey, with the
//! subkey's back-signature) verifies, it may sign, and it was not revoked; a signature must have
//! been made while its key was valid (not before the key's creation, not after its expiry).
//! Third-party certifications in the keyring (Debian developers signing the archive keys) are
//! not needed and not checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::{Context, Result, bail, ensure};
use pgp::composed::{
    CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey,
};
use pgp::packet::Signature;
use pgp::types::{KeyDetails, Tag};

/// The keyring used when none is given: Debian's archive keys as the `debian-archive-keyring`
/// package installs them.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Environment variable naming another keyring file (binary or ASCII-armoured OpenPGP keys).
pub const KEYRING_ENV: &str = "BOOTWATCH_ARCHIVE_KEYRING";

/// The keys whose signatures on a Release file are trusted.
#[derive(Debug)]
pub struct Keyring {
    /// Where the keys came from (a path, or a label for keys made in memory).
    source: String,
    keys: Vec<UsableKey>,
}

/// One key (primary or subkey) that may sign a Release file.
#[derive(Debug)]
struct UsableKey {
    /// Upper-case hex fingerprint of the signing key itself.
    fingerprint: String,
    /// The primary key's first user ID, for messages.
    owner: String,
    material: Material,
    created: u32,
    /// Unix seconds after which its signatures are not accepted.
    expires: Option<u64>,
}

#[derive(Debug)]
enum Material {
    Primary(pgp::packet::PublicKey),
    Subkey(pgp::packet::PublicSubkey),
}

impl Material {
    fn verify(&self, sig: &Signature, data: &[u8]) -> pgp::errors::Result<()> {
        match self {
            Material::Primary(k) => sig.verify(k, data),
            Material::Subkey(k) => sig.verify(k, data),
        }
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed text, exactly as covered by the signature(s) (line ends as `\n`).
    pub text: String,
    /// `FINGERPRINT (user id)` of every key whose signature verified.
    pub signers: Vec<String>,
}

/// The keyring named by [`KEYRING_ENV`] if set and non-empty, else [`DEFAULT_KEYRING`].
pub fn default_keyring_path() -> PathBuf {
    std::env::var_os(KEYRING_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_KEYRING), PathBuf::from)
}

/// The keyring at `path`, read once per process (keyed by path).
pub fn shared_keyring(path: &Path) -> Result<Arc<Keyring>> {
    static LOADED: LazyLock<Mutex<HashMap<PathBuf, Arc<Keyring>>>> =
        LazyLock::new(Default::default);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = loaded.get(path) {
        return Ok(k.clone());
    }
    let keyring = Arc::new(Keyring::load(path)?);
    loaded.insert(path.to_path_buf(), keyring.clone());
    Ok(keyring)
}

impl Keyring {
    /// Read a keyring file: binary (like Debian's `.gpg` keyrings) or ASCII-armoured.
    pub fn load(path: &Path) -> Result<Keyring> {
        let bytes = crate::sys::fsx::read_input_bytes(path, crate::sys::fsx::INPUT_LIMIT)
            .with_context(|| {
                format!(
                    "reading the archive keyring {} (install debian-archive-keyring, or name \
                 another keyring with {KEYRING_ENV})",
                    path.display()
                )
            })?;
        let (certs, _) = SignedPublicKey::from_reader_many(&bytes[..])
            .with_context(|| format!("reading OpenPGP keys from {}", path.display()))?;
        let certs = certs
            .collect::<pgp::errors::Result<Vec<_>>>()
            .with_context(|| format!("reading OpenPGP keys from {}", path.display()))?;
        Keyring::from_certificates(&certs, &path.display().to_string())
    }

    /// A keyring of `certs` (for keys made in memory); `source` names it in messages.
    pub fn from_certificates(certs: &[SignedPublicKey], source: &str) -> Result<Keyring> {
        let keys: Vec<UsableKey> = certs.iter().flat_map(usable_keys).collect();
        ensure!(
            !keys.is_empty(),
            "the keyring {source} has no usable signing key ({} certificates read)",
            certs.len()
        );
        Ok(Keyring {
            source: source.to_owned(),
            keys,
        })
    }

    /// Where the keys came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A stable identity of the key set (sorted fingerprints), for caches keyed by keyring.
    pub fn identity(&self) -> String {
        let mut fprs: Vec<&str> = self.keys.iter().map(|k| k.fingerprint.as_str()).collect();
        fprs.sort_unstable();
        fprs.join(",")
    }

    /// Verify a clear-signed message (an `InRelease` file) fetched from `url`.
    pub fn verify_clearsigned(&self, text: &str, url: &str) -> Result<Verified> {
        ensure!(
            text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"),
            "{url} is not an OpenPGP clear-signed message (unsigned Release files are refused)"
        );
        let (msg, _) = CleartextSignedMessage::from_string(text)
            .with_context(|| format!("{url}: unreadable OpenPGP clear-signed message"))?;
        let signed = msg.signed_text();
        let signers = self.check(msg.signatures(), signed.as_bytes(), url)?;
        // The line end before the signature belongs to the armour, not to the text; a Release
        // file's text ends with one.
        let mut text = signed.replace("\r\n", "\n");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(Verified { text, signers })
    }

    /// Verify `data` (a `Release` file fetched from `url`) against its detached signature
    /// `signature` (`Release.gpg`, armoured or binary).
    pub fn verify_detached(&self, data: &[u8], signature: &[u8], url: &str) -> Result<Verified> {
        let (sigs, _) = DetachedSignature::from_reader_many(signature)
            .with_context(|| format!("{url}.gpg: unreadable OpenPGP signature"))?;
        let sigs: Vec<Signature> = sigs
            .map(|s| s.map(|s| s.signature))
            .collect::<pgp::errors::Result<_>>()
            .with_context(|| format!("{url}.gpg: unreadable OpenPGP signature"))?;
        let signers = self.check(&sigs, data, url)?;
        let text = String::from_utf8(data.to_vec())
            .with_context(|| format!("{url}: the Release file is not UTF-8"))?;
        Ok(Verified { text, signers })
    }

    /// Apply the rules of the module documentation to `sigs` over `data`.
    fn check(&self, sigs: &[Signature], data: &[u8], url: &str) -> Result<Vec<String>> {
        ensure!(!sigs.is_empty(), "{url}: no OpenPGP signature");
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut unknown = Vec::new();
        let mut worthless = Vec::new();
        for sig in sigs {
            let issuers = issuer_ids(sig);
            let candidates: Vec<&UsableKey> = self
                .keys
                .iter()
                .filter(|k| {
                    issuers
                        .iter()
                        .any(|id| k.fingerprint.ends_with(id.as_str()))
                })
                .collect();
            if candidates.is_empty() {
                unknown.push(issuers.first().cloned().unwrap_or_else(|| "?".to_owned()));
                continue;
            }
            // A signature that does not verify is bad; one that verifies but was made outside
            // its key's lifetime is worthless (apt's EXPKEYSIG): ignored when another
            // signature is good.
            let mut failures = Vec::new();
            let mut outside = Vec::new();
            let mut verified = None;
            for key in candidates {
                match key.material.verify(sig, data) {
                    Ok(()) => match key.valid_at(sig) {
                        Ok(()) => {
                            verified = Some(key);
                            break;
                        }
                        Err(why) => outside.push(format!("{}: {why}", key.fingerprint)),
                    },
                    Err(e) => failures.push(format!("{}: {e}", key.fingerprint)),
                }
            }
            match verified {
                Some(key) => good.push(format!("{} ({})", key.fingerprint, key.owner)),
                None if outside.is_empty() => bad.push(failures.join("; ")),
                None => worthless.push(outside.join("; ")),
            }
        }
        if !bad.is_empty() {
            bail!(
                "{url}: BAD signature by a key of {} ({}); refusing the Release file",
                self.source,
                bad.join("; ")
            );
        }
        if good.is_empty() {
            let mut seen = unknown;
            seen.extend(worthless);
            bail!(
                "{url}: no valid signature by a key of {} (signed by {}); refusing the Release \
                 file",
                self.source,
                seen.join(", ")
            );
        }
        if !worthless.is_empty() {
            tracing::debug!(%url, "ignored signatures: {}", worthless.join("; "));
        }
        Ok(good)
    }
}

impl UsableKey {
    /// Whether `sig` was made while the key was valid.
    fn valid_at(&self, sig: &Signature) -> std::result::Result<(), String> {
        let Some(made) = sig.created() else {
            return Err("the signature has no creation time".to_owned());
        };
        let made = made.as_secs();
        if made < self.created {
            return Err("the signature is older than its key".to_owned());
        }
        if let Some(expires) = self.expires
            && u64::from(made) > expires
        {
            return Err(format!(
                "the key had expired when the signature was made ({})",
                unix_time(expires)
            ));
        }
        Ok(())
    }
}

fn unix_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| secs.to_string(), |t| t.to_string())
}

/// Upper-case hex issuer fingerprints and key IDs of a signature (a key ID is a fingerprint's
/// last 16 hex digits, so `fingerprint.ends_with(id)` matches both).
fn issuer_ids(sig: &Signature) -> Vec<String> {
    let mut ids: Vec<String> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| hex::encode_upper(f.as_bytes()))
        .collect();
    ids.extend(
        sig.issuer_key_id()
            .iter()
            .map(|k| hex::encode_upper(k.as_ref())),
    );
    ids
}

/// The signing-capable, validly self-signed, unrevoked keys of a certificate.
fn usable_keys(cert: &SignedPublicKey) -> Vec<UsableKey> {
    let primary = &cert.primary_key;
    let revoked = cert
        .details
        .revocation_signatures
        .iter()
        .any(|s| s.verify_key(primary).is_ok());
    if revoked {
        tracing::debug!(fingerprint = %primary.fingerprint(), "skipping a revoked key");
        return Vec::new();
    }
    // The newest valid self-certification carries the primary key's flags and expiry.
    let mut owner = None;
    let mut newest: Option<&Signature> = None;
    for user in &cert.details.users {
        for sig in &user.signatures {
            if sig
                .verify_certification(primary, Tag::UserId, &user.id)
                .is_ok()
            {
                owner.get_or_insert_with(|| String::from_utf8_lossy(user.id.id()).into_owned());
                if newest.is_none_or(|n| n.created() < sig.created()) {
                    newest = Some(sig);
                }
            }
        }
    }
    let Some(self_sig) = newest else {
        tracing::debug!(fingerprint = %primary.fingerprint(), "skipping a key without a valid self-signature");
        return Vec::new();
    };
    let owner = owner.unwrap_or_default();
    let expiry = |sig: &Signature, created: u32| {
        sig.key_expiration_time()
            .map(|d| std::time::Duration::from(d).as_secs())
            .filter(|d| *d > 0)
            .map(|d| u64::from(created) + d)
    };
    let mut keys = Vec::new();
    let created = primary.created_at().as_secs();
    if self_sig.key_flags().sign() || !has_key_flags(self_sig) {
        keys.push(UsableKey {
            fingerprint: hex::encode_upper(primary.fingerprint().as_bytes()),
            owner: owner.clone(),
            material: Material::Primary(primary.clone()),
            created,
            expires: expiry(self_sig, created),
        });
    }
    for sub in &cert.public_subkeys {
        if let Some(key) = usable_subkey(primary, sub, &owner, &expiry) {
            keys.push(key);
        }
    }
    keys
}

fn usable_subkey(
    primary: &pgp::packet::PublicKey,
    sub: &SignedPublicSubKey,
    owner: &str,
    expiry: &dyn Fn(&Signature, u32) -> Option<u64>,
) -> Option<UsableKey> {
    let revoked = sub.signatures.iter().any(|s| {
        s.typ() == Some(pgp::packet::SignatureType::SubkeyRevocation)
            && s.verify_subkey_binding(primary, &sub.key).is_ok()
    });
    if revoked || sub.verify_bindings(primary).is_err() {
        return None;
    }
    let binding = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(pgp::packet::SignatureType::SubkeyBinding))
        .max_by_key(|s| s.created())?;
    if !binding.key_flags().sign() {
        return None;
    }
    let created = sub.key.created_at().as_secs();
    Some(UsableKey {
        fingerprint: hex::encode_upper(sub.key.fingerprint().as_bytes()),
        owner: owner.to_owned(),
        material: Material::Subkey(sub.key.clone()),
        created,
        expires: expiry(binding, created),
    })
}

/// Whether a self-signature states key flags at all (old keys without them may sign).
fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, pgp::packet::SubpacketData::KeyFlags(_)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::debian::test_mirror::Signer;

    /// Debian's keyring (from the debian-archive-keyring package, which the CI installs):
    /// its archive signing keys are subkeys, the stable release keys primary keys.
    #[test]
    fn host_keyring_has_the_debian_signing_keys() {
        let keyring = Keyring::load(Path::new(DEFAULT_KEYRING)).unwrap();
        for fpr in [
            // Debian Archive Automatic Signing Key (12/bookworm), signing subkey.
            "4CB50190207B4758A3F73A796ED0E7B82643E131",
            // Debian Stable Release Key (12/bookworm), primary key.
            "4D64FEC119C2029067D6E791F8D2585B8783D481",
        ] {
            assert!(
                keyring.keys.iter().any(|k| k.fingerprint == fpr),
                "{fpr} not in {:?}",
                keyring
                    .keys
                    .iter()
                    .map(|k| &k.fingerprint)
                    .collect::<Vec<_>>()
            );
        }
        let err = format!(
            "{:#}",
            Keyring::load(Path::new("/nonexistent/keyring.gpg")).unwrap_err()
        );
        assert!(
            err.contains("/nonexistent/keyring.gpg") && err.contains(KEYRING_ENV),
            "{err}"
        );
    }

    #[test]
    fn clearsigned_and_detached_texts_verify_and_changes_do_not() {
        let signer = Signer::generate("archive");
        let keyring = signer.keyring();
        let text = "Suite: stable\nSHA256:\n abc 1 main/x\n";
        let signed = String::from_utf8(signer.clearsign(text)).unwrap();
        let verified = keyring.verify_clearsigned(&signed, "URL").unwrap();
        assert_eq!(verified.text, text);
        assert_eq!(verified.signers.len(), 1);
        let err = keyring
            .verify_clearsigned(&signed.replace("abc", "abd"), "URL")
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("URL: BAD signature"),
            "{err:#}"
        );
        let err = keyring.verify_clearsigned(text, "URL").unwrap_err();
        assert!(
            format!("{err:#}").contains("not an OpenPGP clear-signed message"),
            "{err:#}"
        );

        let sig = signer.detached(text.as_bytes());
        assert_eq!(
            keyring
                .verify_detached(text.as_bytes(), &sig, "URL")
                .unwrap()
                .text,
            text
        );
        assert!(keyring.verify_detached(b"other", &sig, "URL").is_err());
    }

    #[test]
    fn a_signature_made_outside_its_keys_lifetime_is_not_valid() {
        // A key made an hour from now: its signature made now predates it.
        let later = pgp::types::Timestamp::from_secs(pgp::types::Timestamp::now().as_secs() + 3600);
        let signer = Signer::generate_at("future", later);
        let signed = String::from_utf8(signer.clearsign("Suite: x\n")).unwrap();
        let err = signer
            .keyring()
            .verify_clearsigned(&signed, "URL")
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("no valid signature") && err.contains("older than its key"),
            "{err}"
        );
    }
}
