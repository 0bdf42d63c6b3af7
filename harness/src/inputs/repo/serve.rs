//! Serving a repository directory to a guest over HTTP on 127.0.0.1 (hyper and tower-http's
//! `ServeDir`), with a log of every request.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tower_http::services::ServeDir;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tokio::io::AsyncWriteExt;

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
}
