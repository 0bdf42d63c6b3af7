//! A QMP client: the `qapi` crate's generated command and event types over our own transport.
//!
//! qapi's own async stream ends the whole session on the first event or enum value its schema
//! (QEMU 9.1) does not know (arcnmx/qapi-rs#23). Here every message is parsed as JSON first;
//! replies are matched to commands by `id` and decoded per command; events are decoded into
//! `qapi::qmp::Event` when possible and otherwise kept as raw JSON. Nothing unknown ends the
//! session. Every message in both directions goes to a transcript (`qmp.jsonl`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP: cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP: bad greeting: {0}")]
    Greeting(String),
    #[error("QMP: {command}: no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QMP: {command}: connection closed before the reply")]
    Closed { command: String },
    #[error("QMP: {command}: QEMU answered {class}: {desc}")]
    Qemu {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: {command}: cannot decode the reply: {error}")]
    Decode { command: String, error: String },
    #[error("QMP: {command}: write failed: {source}")]
    Write {
        command: String,
        source: std::io::Error,
    },
}

/// An event as received: typed when the crate's schema knows it, raw JSON always.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    /// Seconds since QEMU started (harness clock, at receipt).
    pub t_s: f64,
    pub data: Value,
    pub known: Option<qapi::qmp::Event>,
}

/// The transcript: one JSON object per line, `{"t": s, "dir": "send"|"recv", "msg": …}`.
#[derive(Clone)]
pub struct Transcript {
    file: Arc<Mutex<std::io::LineWriter<std::fs::File>>>,
    zero: Instant,
}

impl Transcript {
    pub fn create(path: &Path, zero: Instant) -> std::io::Result<Transcript> {
        let f = std::fs::File::create(path)?;
        Ok(Transcript {
            file: Arc::new(Mutex::new(std::io::LineWriter::new(f))),
            zero,
        })
    }

    fn record(&self, dir: &str, msg: &Value) {
        #[derive(Serialize)]
        struct Line<'a> {
            t: f64,
            dir: &'a str,
            msg: &'a Value,
        }
        let line = Line {
            t: round_ms(self.zero.elapsed().as_secs_f64()),
            dir,
            msg,
        };
        if let Ok(mut s) = serde_json::to_string(&line) {
            s.push('\n');
            let mut f = self.file.lock().expect("transcript lock");
            // A full disk must not stop the run; the transcript is evidence, not control.
            let _ = f.write_all(s.as_bytes());
        }
    }
}

pub fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected, negotiated QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    transcript: Transcript,
    timeout: Duration,
    pub greeting: Value,
}

impl Qmp {
    /// Connects, reads the greeting, negotiates capabilities. Events go to `events`.
    pub async fn connect(
        path: &Path,
        transcript: Transcript,
        events: mpsc::UnboundedSender<QmpEvent>,
        timeout: Duration,
    ) -> Result<Qmp, QmpError> {
        let stream =
            connect_listening(path, timeout)
                .await
                .map_err(|source| QmpError::Connect {
                    path: path.display().to_string(),
                    source,
                })?;
        Qmp::handshake(stream, transcript, events, timeout).await
    }

    /// Reads the greeting on a connected stream and negotiates capabilities (a fake QEMU in
    /// tests hands its end of a socket pair here).
    pub async fn handshake(
        stream: UnixStream,
        transcript: Transcript,
        events: mpsc::UnboundedSender<QmpEvent>,
        timeout: Duration,
    ) -> Result<Qmp, QmpError> {
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let first = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| QmpError::Greeting(format!("none within {timeout:?}")))?
            .map_err(|e| QmpError::Greeting(e.to_string()))?
            .ok_or_else(|| QmpError::Greeting("connection closed".into()))?;
        let greeting: Value = serde_json::from_str(&first)
            .map_err(|e| QmpError::Greeting(format!("{e}: {first}")))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting(first));
        }
        transcript.record("recv", &greeting);
        let pending: Pending = Arc::default();
        tokio::spawn(read_loop(
            lines,
            pending.clone(),
            transcript.clone(),
            events,
        ));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(w),
            pending,
            next_id: AtomicU64::new(1),
            transcript,
            timeout,
            greeting,
        };
        qmp.execute(qapi::qmp::qmp_capabilities { enable: None })
            .await?;
        Ok(qmp)
    }

    /// QEMU's version from the greeting, e.g. "7.2.22".
    pub fn version(&self) -> Option<String> {
        let v = self.greeting.pointer("/QMP/version/qemu")?;
        Some(format!(
            "{}.{}.{}",
            v.get("major")?,
            v.get("minor")?,
            v.get("micro")?
        ))
    }

    /// Runs a typed command with the session's timeout.
    pub async fn execute<C: qapi::Command>(&self, cmd: C) -> Result<C::Ok, QmpError> {
        let reply = self
            .execute_raw(C::NAME, serde_json::to_value(&cmd).unwrap_or(Value::Null))
            .await?;
        serde_json::from_value(reply).map_err(|e| QmpError::Decode {
            command: C::NAME.into(),
            error: e.to_string(),
        })
    }

    /// Runs any command by name (for commands newer than the crate's schema). Returns the
    /// `return` member of the reply.
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": name, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        self.transcript.record("send", &msg);
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if let Err(source) = w.write_all(line.as_bytes()).await {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(QmpError::Write {
                    command: name.into(),
                    source,
                });
            }
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(QmpError::Timeout {
                    command: name.into(),
                    timeout: self.timeout,
                });
            }
            Ok(Err(_)) => {
                return Err(QmpError::Closed {
                    command: name.into(),
                });
            }
            Ok(Ok(v)) => v,
        };
        if let Some(err) = reply.get("error") {
            let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(QmpError::Qemu {
                command: name.into(),
                class: s("class"),
                desc: s("desc"),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Asks QEMU to quit. The connection closing before (or instead of) the reply is success:
    /// QEMU may close the socket as it exits.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute(qapi::qmp::quit {}).await {
            Ok(_) | Err(QmpError::Closed { .. }) | Err(QmpError::Write { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    transcript: Transcript,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            transcript.record("recv", &json!({ "unparsed": line }));
            continue;
        };
        transcript.record("recv", &msg);
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let event = QmpEvent {
                name: name.to_string(),
                t_s: round_ms(transcript.zero.elapsed().as_secs_f64()),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                known: serde_json::from_value(msg.clone()).ok(),
            };
            let _ = events.send(event);
        } else if let Some(id) = msg.get("id").and_then(Value::as_u64)
            && let Some(tx) = pending.lock().expect("pending lock").remove(&id)
        {
            let _ = tx.send(msg);
        }
    }
    // EOF: dropping every waiter's sender wakes it with "closed".
    pending.lock().expect("pending lock").clear();
}

/// Connects to a unix socket a starting QEMU created: the file appears at bind(), before
/// listen(), so "connection refused" right after start-up means "not yet" (seen with several
/// VMs starting at once) and is retried until `timeout`.
pub async fn connect_listening(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(path).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake QEMU newer than the crate's schema: it sends an event no schema knows and a known
    /// event with an enum value the schema lacks before answering. The session must survive.
    #[tokio::test]
    async fn unknown_events_and_enum_values_do_not_end_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 3, \"minor\": 1, \"major\": 11}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\n").await.unwrap();
            while let Some(l) = lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&l).unwrap();
                let id = v["id"].clone();
                match v["execute"].as_str().unwrap() {
                    "qmp_capabilities" => w.write_all(format!("{}\n", json!({"return": {}, "id": id})).as_bytes()).await.unwrap(),
                    "query-status" => {
                        w.write_all(b"{\"event\": \"SOME_FUTURE_EVENT\", \"data\": {\"x\": 1}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n").await.unwrap();
                        w.write_all(b"{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"brand-new-reason\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 3}}\n").await.unwrap();
                        w.write_all(b"{\"event\": \"RESET\", \"data\": {\"guest\": true, \"reason\": \"guest-reset\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 4}}\n").await.unwrap();
                        w.write_all(format!("{}\n", json!({"return": {"running": true, "status": "running"}, "id": id})).as_bytes()).await.unwrap();
                    }
                    "query-version" => w.write_all(format!("{}\n", json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id})).as_bytes()).await.unwrap(),
                    "quit" => return, // close without replying, as QEMU may
                    _ => unreachable!(),
                }
            }
        });
        let transcript = Transcript::create(&dir.path().join("qmp.jsonl"), Instant::now()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let qmp = Qmp::connect(&sock, transcript, tx, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(qmp.version().as_deref(), Some("11.1.3"));
        let st = qmp.execute(qapi::qmp::query_status {}).await.unwrap();
        assert!(st.running);
        let names: Vec<(String, bool)> = (0..3)
            .map(|_| rx.try_recv().unwrap())
            .map(|e| (e.name, e.known.is_some()))
            .collect();
        assert_eq!(
            names,
            [
                ("SOME_FUTURE_EVENT".to_string(), false),
                ("SHUTDOWN".to_string(), false),
                ("RESET".to_string(), true)
            ]
        );
        let err = qmp.execute(qapi::qmp::query_version {}).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Qemu { ref class, .. } if class == "GenericError"),
            "{err}"
        );
        qmp.quit().await.unwrap();
        server.await.unwrap();
        let transcript = std::fs::read_to_string(dir.path().join("qmp.jsonl")).unwrap();
        assert!(transcript.lines().count() >= 10, "{transcript}");
        assert!(transcript.contains("SOME_FUTURE_EVENT"));
    }

    #[tokio::test]
    async fn a_silent_server_times_out_with_the_command_name() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let _server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let transcript = Transcript::create(&dir.path().join("qmp.jsonl"), Instant::now()).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = Qmp::connect(&sock, transcript, tx, Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, QmpError::Timeout { ref command, .. } if command == "qmp_capabilities"),
            "{err}"
        );
    }
}
