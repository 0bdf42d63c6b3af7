//! HTTP for the archive client: one `reqwest` client configuration and one retry policy.
//!
//! Transient failures (connection refused or reset, time-outs, a body cut short, HTTP 408, 429
//! and 5xx) are retried with exponential back-off ([`backoff`]); a 404/410 is an answer
//! ("not on the mirror"), and anything else, including content that does not match what the
//! signed Release or the index lists, is final: retrying would fetch the same bytes again.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The HTTP client used for the archive (and by other modules that download from it).
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("bootwatch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// Three more attempts after a transient failure, 0.5 s, 1 s and 2 s later.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(4))
        .with_max_times(3)
}

/// A failed attempt, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    error: anyhow::Error,
    transient: bool,
}

impl Failure {
    fn transient(error: anyhow::Error) -> Failure {
        Failure {
            error,
            transient: true,
        }
    }

    fn last(error: anyhow::Error) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }
}

async fn with_retries<T, F, Fut>(url: &str, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    attempt
        .retry(backoff())
        .when(|f: &Failure| f.transient)
        .notify(|f: &Failure, after: Duration| {
            tracing::warn!(%url, "{:#}; trying again in {after:?}", f.error);
        })
        .await
        .map_err(|f| f.error)
}

/// The response to `GET url` once its status is a success; `Ok(None)` for 404/410.
async fn send(
    client: &reqwest::Client,
    url: &str,
) -> std::result::Result<Option<reqwest::Response>, Failure> {
    let resp = client.get(url).send().await.map_err(|e| {
        let transient = !e.is_builder();
        Failure {
            error: anyhow!(e).context(format!("GET {url}")),
            transient,
        }
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        tracing::debug!(%url, %status, "not on the mirror");
        return Ok(None);
    }
    if status.is_success() {
        return Ok(Some(resp));
    }
    let error = anyhow!("GET {url}: HTTP {status}");
    if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(Failure::transient(error))
    } else {
        Err(Failure::last(error))
    }
}

/// GET `url` into memory; `None` on 404/410. Transient failures are retried.
pub(crate) async fn get_optional(client: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>> {
    with_retries(url, || async {
        let Some(resp) = send(client, url).await? else {
            return Ok(None);
        };
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::transient(anyhow!(e).context(format!("reading {url}"))))?;
        Ok(Some(body.to_vec()))
    })
    .await
}

/// Stream `url` into a temporary file in `dir`, hashing as it goes; the file is kept only if
/// its size and SHA256 are `want_size` and `want_sha`. A 404 is an error here.
pub(crate) async fn download_verified(
    client: &reqwest::Client,
    url: &str,
    dir: &Path,
    want_size: u64,
    want_sha: &str,
) -> Result<tempfile::NamedTempFile> {
    with_retries(url, || async {
        let resp = send(client, url)
            .await?
            .ok_or_else(|| Failure::last(anyhow!("GET {url}: not on the mirror (HTTP 404)")))?;
        let local = |e: std::io::Error, what: &str| {
            Failure::last(anyhow!(e).context(format!("{what} in {}", dir.display())))
        };
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .suffix(".deb")
            .tempfile_in(dir)
            .map_err(|e| local(e, "creating a temporary file"))?;
        let mut file = tokio::fs::File::from_std(
            tmp.reopen()
                .map_err(|e| local(e, "opening a temporary file"))?,
        );
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| Failure::transient(anyhow!(e).context(format!("reading {url}"))))?;
            size += chunk.len() as u64;
            if size > want_size {
                return Err(Failure::last(anyhow!(
                    "size mismatch for {url}: expected {want_size} bytes, got more"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| local(e, "writing a download"))?;
        }
        file.flush()
            .await
            .map_err(|e| local(e, "writing a download"))?;
        drop(file);
        let sha = hex::encode(hasher.finalize());
        verify_digest(url, want_size, want_sha, size, &sha).map_err(Failure::last)?;
        Ok(tmp)
    })
    .await
}

/// Check `body` against a listed size and SHA256.
pub(crate) fn verify_bytes(what: &str, want_size: u64, want_sha: &str, body: &[u8]) -> Result<()> {
    let sha = hex::encode(Sha256::digest(body));
    verify_digest(what, want_size, want_sha, body.len() as u64, &sha)
}

/// Compare a size and SHA256 with the listed ones; the error names both.
pub(crate) fn verify_digest(
    what: &str,
    want_size: u64,
    want_sha: &str,
    size: u64,
    sha: &str,
) -> Result<()> {
    anyhow::ensure!(
        size == want_size,
        "size mismatch for {what}: expected {want_size} bytes, got {size}"
    );
    anyhow::ensure!(
        sha.eq_ignore_ascii_case(want_sha),
        "SHA256 mismatch for {what}: expected {want_sha}, got {sha}"
    );
    Ok(())
}
