//! For tests: a Debian-like mirror served from memory on 127.0.0.1, with Release files signed
//! by OpenPGP keys made here (Ed25519 primary key with a signing subkey, like Debian's
//! archive keys), and the keyrings to check them with.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, DetachedSignature, KeyType, SecretKeyParamsBuilder,
    SignedPublicKey, SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::{Password, Timestamp};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::keyring::Keyring;

/// A signing key made for a test.
pub struct Signer {
    secret: SignedSecretKey,
    pub public: SignedPublicKey,
}

impl Signer {
    pub fn generate(name: &str) -> Signer {
        Signer::generate_at(name, Timestamp::now())
    }

    /// A key whose primary key and subkey were made at `created`.
    pub fn generate_at(name: &str, created: Timestamp) -> Signer {
        let secret = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .created_at(created)
            .primary_user_id(format!("{name} <{name}@invalid>"))
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::Ed25519Legacy)
                    .can_sign(true)
                    .created_at(created)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
            .generate(rand::thread_rng())
            .unwrap();
        let public = secret.to_public_key();
        Signer { secret, public }
    }

    /// A keyring holding only this key.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::new(
            Keyring::from_certificates(std::slice::from_ref(&self.public), "the test keyring")
                .unwrap(),
        )
    }

    /// `text` clear-signed by the signing subkey (an `InRelease` file).
    pub fn clearsign(&self, text: &str) -> Vec<u8> {
        let msg = CleartextSignedMessage::sign(
            rand::thread_rng(),
            text,
            &self.secret.secret_subkeys[0].key,
            &Password::empty(),
        )
        .unwrap();
        msg.to_armored_string(ArmorOptions::default())
            .unwrap()
            .into_bytes()
    }

    /// An armoured detached signature of `data` by the signing subkey (a `Release.gpg`).
    pub fn detached(&self, data: &[u8]) -> Vec<u8> {
        DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.secret.secret_subkeys[0].key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            data,
        )
        .unwrap()
        .to_armored_bytes(ArmorOptions::default())
        .unwrap()
    }
}

/// A mirror's files: path under the mirror root → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// A mirror served on 127.0.0.1 by [`serve`].
pub struct FakeMirror {
    /// `http://127.0.0.1:PORT/debian`
    pub url: String,
    /// Every requested path, in order.
    pub hits: Arc<Mutex<Vec<String>>>,
    /// Paths answered `503` as many times as the count says before being served.
    pub flaky: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl FakeMirror {
    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// How many requests asked for a path ending with `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.hits().iter().filter(|h| h.ends_with(suffix)).count()
    }
}

/// Serve `files` over HTTP/1.1 on 127.0.0.1 under `/debian/` (404 for anything else).
pub async fn serve(files: Files) -> FakeMirror {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let flaky: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let files = Arc::new(files);
    let (log, flakes) = (hits.clone(), flaky.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (files, log, flakes) = (files.clone(), log.clone(), flakes.clone());
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
                let key = path.strip_prefix("/debian/").unwrap_or("").to_owned();
                let fail = {
                    let mut flakes = flakes.lock().unwrap();
                    match flakes.get_mut(&key) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            true
                        }
                        _ => false,
                    }
                };
                let (status, body) = match files.get(&key) {
                    _ if fail => ("503 Service Unavailable", b"try later".to_vec()),
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
        url: format!("http://{addr}/debian"),
        hits,
        flaky,
    }
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A Release file listing `listed` (path under the suite → content), with `extra` fields
/// (complete lines) before the checksums.
pub fn release_text(suite: &str, listed: &[(&str, &[u8])], extra: &str) -> String {
    let mut text = format!(
        "Origin: bootwatch-test\nSuite: {suite}\nCodename: {suite}\n\
         Date: Sat, 21 Nov 2026 09:15:44 UTC\n{extra}Acquire-By-Hash: yes\nSHA256:\n"
    );
    for (path, data) in listed {
        text.push_str(&format!(" {} {:>9} {path}\n", sha256(data), data.len()));
    }
    text
}

/// Put the suite `suite` into `files`: each of `served` (path under the suite → content) at
/// its path and under `by-hash/SHA256/`, and an `InRelease` listing them, clear-signed by
/// `signer`.
pub fn add_signed_suite(
    files: &mut Files,
    signer: &Signer,
    suite: &str,
    served: &[(&str, Vec<u8>)],
    extra: &str,
) {
    let listed: Vec<(&str, &[u8])> = served.iter().map(|(p, d)| (*p, &d[..])).collect();
    let release = release_text(suite, &listed, extra);
    files.insert(
        format!("dists/{suite}/InRelease"),
        signer.clearsign(&release),
    );
    for (path, data) in served {
        files.insert(format!("dists/{suite}/{path}"), data.clone());
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        files.insert(
            format!("dists/{suite}/{dir}/by-hash/SHA256/{}", sha256(data)),
            data.clone(),
        );
    }
}
