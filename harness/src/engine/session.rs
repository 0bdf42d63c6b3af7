//! A live VM: QEMU started paused, its serial console and QMP connected, then continued; the
//! console is recorded (raw and normalized) and classified as it arrives, QMP events are
//! recorded, and `watch` returns as soon as the evidence decides the boot.
//!
//! Every clock here is tokio's, so tests can drive a session on a paused clock against a scripted
//! stand-in for QEMU ([`Session::attach`]) without sleeping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::classify::{Classifier, Decision, End};
use crate::core::console::Normalizer;
use crate::core::event::{Event, EventSink};
use crate::core::launch::{self, VmConfig};
use crate::core::verdict::Stage;
use crate::engine::qmp::{Qmp, QmpEvent, Transcript, round_ms};
use crate::engine::record::EventRecord;
use crate::engine::supervise::{ExitInfo, Qemu};
use crate::sys::host::thread_cpu_s;

/// Named deadlines of a session. They are wall-clock bounds on the harness's own work, the
/// same under TCG and KVM: the guest's pace only enters through a step's timeout and silence.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long QEMU may take to create its sockets.
    pub qmp_up: Duration,
    /// Timeout of every QMP command.
    pub qmp_call: Duration,
    /// A RELEASE build's dump is its banner printed twice (serial, then the console's copy) and
    /// nothing more: over once the console has been quiet this long after the second banner. (A
    /// DEBUG build prints its dump right after the banners, in the same burst, and ends it with
    /// an ASSERT line: decided at once.)
    pub dump_settle: Duration,
    /// Any other fatal line (a dump whose end did not show, a kernel panic, a rescue shell): over
    /// after this much quiet...
    pub dump_quiet: Duration,
    /// ...or at the latest this long after the fatal line.
    pub dump_max: Duration,
    /// How long QEMU gets to exit after `quit` before its group is killed.
    pub stop_grace: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            qmp_up: Duration::from_secs(15),
            qmp_call: Duration::from_secs(10),
            dump_settle: Duration::from_millis(50),
            dump_quiet: Duration::from_millis(500),
            dump_max: Duration::from_millis(1500),
            stop_grace: Duration::from_secs(2),
        }
    }
}

/// What `watch` waits for.
#[derive(Debug, Clone, Copy)]
pub struct WatchSpec {
    pub target: Option<Stage>,
    pub timeout: Duration,
    pub silence: Duration,
    /// Judge only boot `min_boot` or a later one (after a reboot: the boot that follows it).
    /// While an earlier boot is still running, only its end (silence, timeout, exit) decides.
    pub min_boot: usize,
}

/// At most this many console lines before a firmware's exception banner in its boot mark a
/// RELEASE build (Debian's print 2-10); a DEBUG build prints hundreds.
const QUIET_FIRMWARE_LINES: u64 = 40;

/// What an exception dump shows of its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpEnd {
    /// A DEBUG build's ASSERT, or a recursive exception in the dumper: the dump is over.
    Closed,
    /// The banner twice and nothing else yet: a RELEASE build's whole dump, unless a DEBUG
    /// build's body follows at once.
    BannerOnly,
    /// No dump, or one whose end did not show: only quiet ends it.
    Unknown,
}

/// What woke [`Session::pump`].
enum Woke {
    /// Console bytes, a QMP event or QEMU's exit were taken in.
    Io,
    Timer,
    Cancelled,
}

/// How `watch` ended.
#[derive(Debug, Clone)]
pub enum WatchEnd {
    Decided { decision: Decision, t_s: f64 },
    Interrupted { t_s: f64 },
}

/// Files the session writes into its results directory.
pub struct SessionPaths {
    pub serial_raw: PathBuf,
    pub console_log: PathBuf,
    pub qmp_jsonl: PathBuf,
    pub qemu_stderr: PathBuf,
}

impl SessionPaths {
    pub fn in_dir(dir: &Path) -> SessionPaths {
        SessionPaths {
            serial_raw: dir.join("serial.raw"),
            console_log: dir.join("console.log"),
            qmp_jsonl: dir.join("qmp.jsonl"),
            qemu_stderr: dir.join("qemu.stderr"),
        }
    }
}

/// The process behind a session: QEMU, or a scripted stand-in whose exit a test decides.
pub enum VmProcess {
    Qemu(Box<Qemu>),
    Scripted(ScriptedProcess),
}

/// A stand-in for QEMU's process in tests: it "exits" when the test sends an `ExitInfo`, and is
/// "killed" (SIGKILL) when the session stops it and it has not exited within the grace.
pub struct ScriptedProcess {
    exit: Option<oneshot::Receiver<ExitInfo>>,
    status: Option<ExitInfo>,
}

impl ScriptedProcess {
    /// The process and the sender that makes it exit.
    pub fn new() -> (ScriptedProcess, oneshot::Sender<ExitInfo>) {
        let (tx, rx) = oneshot::channel();
        (
            ScriptedProcess {
                exit: Some(rx),
                status: None,
            },
            tx,
        )
    }
}

impl VmProcess {
    fn pid(&self) -> Option<u32> {
        match self {
            VmProcess::Qemu(q) => Some(q.pid()),
            VmProcess::Scripted(_) => None,
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitInfo>> {
        match self {
            VmProcess::Qemu(q) => Ok(q.try_wait()?.map(|s| ExitInfo::from_status(s, false))),
            VmProcess::Scripted(s) => {
                if s.status.is_none()
                    && let Some(rx) = s.exit.as_mut()
                    && let Ok(e) = rx.try_recv()
                {
                    s.status = Some(e);
                }
                Ok(s.status.clone())
            }
        }
    }

    /// Waits for the exit (cancel-safe).
    async fn wait(&mut self) -> std::io::Result<ExitInfo> {
        match self {
            VmProcess::Qemu(q) => Ok(ExitInfo::from_status(q.wait().await?, false)),
            VmProcess::Scripted(s) => {
                if let Some(e) = &s.status {
                    return Ok(e.clone());
                }
                let rx = s.exit.as_mut().expect("a scripted process not yet exited");
                match rx.await {
                    Ok(e) => {
                        s.status = Some(e.clone());
                        Ok(e)
                    }
                    // The test dropped its sender: the process lives until stopped.
                    Err(_) => std::future::pending().await,
                }
            }
        }
    }

    /// Grace, then kill. Returns the exit and whether the harness killed it.
    async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitInfo> {
        match self {
            VmProcess::Qemu(q) => {
                let (st, killed) = q.stop(grace).await?;
                Ok(ExitInfo::from_status(st, killed))
            }
            VmProcess::Scripted(_) => match tokio::time::timeout(grace, self.wait()).await {
                Ok(r) => r.map(|e| ExitInfo {
                    killed_by_harness: false,
                    ..e
                }),
                Err(_) => {
                    let killed = ExitInfo {
                        code: None,
                        signal: Some(9),
                        killed_by_harness: true,
                    };
                    if let VmProcess::Scripted(s) = self {
                        s.status = Some(killed.clone());
                    }
                    Ok(killed)
                }
            },
        }
    }

    fn stderr_tail(&self) -> String {
        match self {
            VmProcess::Qemu(q) => q.stderr_tail(),
            VmProcess::Scripted(_) => String::new(),
        }
    }
}

pub struct Session {
    process: VmProcess,
    /// When QEMU started: the zero of every timestamp of the session.
    zero: Instant,
    pub qmp: Qmp,
    console: Option<UnixStream>,
    events: mpsc::UnboundedReceiver<QmpEvent>,
    norm: Normalizer,
    /// Recent normalized console text (complete lines), for `expect`; `recent_base` is the
    /// absolute offset of its first byte.
    recent: String,
    recent_base: usize,
    /// The unterminated tail as of the last read.
    tail: String,
    pub classifier: Classifier,
    raw: tokio::fs::File,
    log: tokio::fs::File,
    pub event_log: Vec<EventRecord>,
    pub console_bytes: u64,
    last_output: Instant,
    guest_shutdown: bool,
    exit: Option<ExitInfo>,
    sink: EventSink,
    /// Which session of its case this is (1-based), for events.
    index: usize,
    /// The boot index and how many of its milestones were sent as events.
    milestones_sent: (usize, usize),
    timings: Timings,
    pub qemu_version: Option<String>,
    pub qemu_package: Option<String>,
    /// Where QEMU's gdbstub listens if the hang evidence starts it (beside the QMP socket, in
    /// the case's private directory); `None` for an attached process.
    gdb_socket: Option<PathBuf>,
    /// CPU seconds the harness's event loop spent in `watch`/`expect` (reading, recording,
    /// classifying).
    pub watch_cpu_s: f64,
}

/// Errors before the guest ran: always a harness problem, never a guest result.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub message: String,
}

impl Session {
    /// Starts QEMU paused, connects console and QMP, records the version, continues the VM.
    pub async fn start(
        vm: &VmConfig,
        paths: &SessionPaths,
        timings: Timings,
        index: usize,
        sink: EventSink,
        incoming: Option<&Path>,
    ) -> Result<Session, StartError> {
        let (program, args) = launch::program_and_args(vm);
        let err = |m: String| StartError { message: m };
        let zero = Instant::now();
        let mut qemu = Qemu::spawn(&program, &args, &vm.exec.env, &paths.qemu_stderr)
            .map_err(|e| err(format!("cannot start {}: {e}", program.display())))?;
        // QEMU creates both sockets during start-up; it fails fast (bad argument, missing file).
        let deadline = Instant::now() + timings.qmp_up;
        loop {
            if let Ok(Some(st)) = qemu.try_wait() {
                let info = ExitInfo::from_status(st, false);
                return Err(err(format!(
                    "QEMU exited during start-up ({}): {}",
                    info.describe(),
                    one_line(&qemu.stderr_tail())
                )));
            }
            if vm.serial_socket.exists() && vm.qmp_socket.exists() {
                break;
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "QEMU did not create its sockets within {:?}",
                    timings.qmp_up
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let console = crate::engine::qmp::connect_listening(&vm.serial_socket, timings.qmp_up)
            .await
            .map_err(|e| err(format!("cannot connect to the serial console socket: {e}")))?;
        let qmp = crate::engine::qmp::connect_listening(&vm.qmp_socket, timings.qmp_up)
            .await
            .map_err(|e| err(format!("cannot connect to the QMP socket: {e}")))?;
        let mut s = Session::attach(
            VmProcess::Qemu(Box::new(qemu)),
            zero,
            console,
            qmp,
            paths,
            timings,
            index,
            sink,
            incoming,
        )
        .await?;
        s.gdb_socket = Some(vm.qmp_socket.with_file_name("gdb.sock"));
        Ok(s)
    }

    /// Attaches to a started VM's process, console and QMP streams (QEMU paused, as `-S`
    /// leaves it): negotiates QMP, records the version, opens the record files, loads a saved
    /// state into a QEMU started with `-incoming defer` (`incoming`), continues it.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach(
        mut process: VmProcess,
        zero: Instant,
        console: UnixStream,
        qmp: UnixStream,
        paths: &SessionPaths,
        timings: Timings,
        index: usize,
        sink: EventSink,
        incoming: Option<&Path>,
    ) -> Result<Session, StartError> {
        let err = |m: String| StartError { message: m };
        let transcript = Transcript::create(&paths.qmp_jsonl, zero)
            .map_err(|e| err(format!("{}: {e}", paths.qmp_jsonl.display())))?;
        let (tx, events) = mpsc::unbounded_channel();
        let qmp = match Qmp::handshake(qmp, transcript, tx, timings.qmp_call).await {
            Ok(q) => q,
            Err(e) => {
                // The process may have died meanwhile: say so rather than "closed".
                let died = process.try_wait().ok().flatten();
                let why = died
                    .map(|d| format!(" (QEMU {})", d.describe()))
                    .unwrap_or_default();
                return Err(err(format!(
                    "{e}{why} (QEMU said: {})",
                    one_line(&process.stderr_tail())
                )));
            }
        };
        let qemu_version = qmp.version();
        let qemu_package = match qmp.execute(qapi::qmp::query_version {}).await {
            Ok(v) => Some(v.package.trim().to_string()).filter(|p| !p.is_empty()),
            Err(e) => return Err(err(e.to_string())),
        };
        let open = |p: &Path| {
            std::fs::File::create(p)
                .map(tokio::fs::File::from_std)
                .map_err(|e| err(format!("{}: {e}", p.display())))
        };
        let raw = open(&paths.serial_raw)?;
        let log = open(&paths.console_log)?;
        if let Some(state) = incoming {
            crate::engine::login_state::load(&qmp, state)
                .await
                .map_err(|e| err(format!("{e:#}")))?;
        }
        qmp.execute(qapi::qmp::cont {})
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(Session {
            process,
            zero,
            qmp,
            console: Some(console),
            events,
            norm: Normalizer::new(),
            recent: String::new(),
            recent_base: 0,
            tail: String::new(),
            classifier: Classifier::new(),
            raw,
            log,
            event_log: Vec::new(),
            console_bytes: 0,
            last_output: Instant::now(),
            guest_shutdown: false,
            exit: None,
            sink,
            index,
            milestones_sent: (0, 0),
            timings,
            qemu_version,
            qemu_package,
            gdb_socket: None,
            watch_cpu_s: 0.0,
        })
    }

    /// Seconds since QEMU started.
    pub fn now_s(&self) -> f64 {
        round_ms(self.zero.elapsed().as_secs_f64())
    }

    /// Which session of its case this is (1-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// After QEMU exited: takes the QMP events still in flight (a guest's SHUTDOWN can arrive
    /// after the process exit is seen), until the reader closes the channel or briefly.
    async fn drain_events(&mut self) {
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, self.events.recv()).await {
            self.on_event(ev);
        }
    }

    /// CPU seconds (user + system) QEMU has used so far, from `/proc/PID/stat`; `None` once it
    /// has been reaped, off Linux, or for a scripted process. Per process, so it stays right when
    /// several VMs run at once.
    pub fn qemu_cpu_s(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()?)).ok()?;
        cpu_s_from_stat(&stat)
    }

    pub fn exit_info(&self) -> Option<&ExitInfo> {
        self.exit.as_ref()
    }

    /// Watches the console and QMP until the boot is decided (or `cancel` fires).
    pub async fn watch(
        &mut self,
        spec: WatchSpec,
        cancel: &CancellationToken,
    ) -> anyhow::Result<WatchEnd> {
        let cpu0 = thread_cpu_s();
        let end = self.watch_inner(spec, cancel).await;
        self.watch_cpu_s += thread_cpu_s() - cpu0;
        end
    }

    async fn watch_inner(
        &mut self,
        spec: WatchSpec,
        cancel: &CancellationToken,
    ) -> anyhow::Result<WatchEnd> {
        let started = Instant::now();
        self.last_output = Instant::now();
        let mut fatal_seen: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(d) = self.decide(&spec, &End::Running) {
                let fatal = d.verdict.is_guest_failure();
                if !fatal {
                    return Ok(WatchEnd::Decided {
                        decision: d,
                        t_s: self.now_s(),
                    });
                }
                let since = *fatal_seen.get_or_insert_with(Instant::now);
                let quiet_for = self.last_output.elapsed();
                let mut over = self.dump_end() == DumpEnd::Closed
                    || since.elapsed() >= self.timings.dump_max
                    || self.exit.is_some()
                    || quiet_for >= self.timings.dump_quiet;
                if !over
                    && self.dump_end() == DumpEnd::BannerOnly
                    && quiet_for >= self.timings.dump_settle
                {
                    // Lines still sitting in the socket would be the dump going on.
                    over = !self.take_buffered_console(&mut buf).await?;
                }
                if over {
                    return Ok(WatchEnd::Decided {
                        decision: d,
                        t_s: self.now_s(),
                    });
                }
            }
            if let Some(exit) = &self.exit {
                let end = End::QemuExited {
                    clean_poweroff: self.guest_shutdown && exit.code == Some(0),
                    status: exit.describe(),
                };
                let d = self.decide(&spec, &end).expect("an end always decides");
                return Ok(WatchEnd::Decided {
                    decision: d,
                    t_s: self.now_s(),
                });
            }
            let deadline = started + spec.timeout;
            let silent_at = self.last_output + spec.silence;
            let mut wake = deadline.min(silent_at);
            if let Some(since) = fatal_seen {
                let next_look = if self.dump_end() == DumpEnd::BannerOnly {
                    self.timings.dump_settle
                } else {
                    self.timings.dump_quiet
                };
                wake = wake
                    .min(self.last_output + next_look)
                    .min(since + self.timings.dump_max);
            }
            match self.pump(&mut buf, wake, cancel).await? {
                Woke::Io => {}
                Woke::Cancelled => return Ok(WatchEnd::Interrupted { t_s: self.now_s() }),
                Woke::Timer if fatal_seen.is_none() => {
                    let now = Instant::now();
                    let end = if now >= deadline {
                        Some(End::Timeout {
                            seconds: spec.timeout.as_secs_f64(),
                        })
                    } else if now >= silent_at {
                        Some(End::Silence {
                            seconds: spec.silence.as_secs_f64(),
                        })
                    } else {
                        None
                    };
                    if let Some(end) = end {
                        let d = self.decide(&spec, &end).expect("an end always decides");
                        return Ok(WatchEnd::Decided {
                            decision: d,
                            t_s: self.now_s(),
                        });
                    }
                }
                // In a dump window the loop's head decides.
                Woke::Timer => {}
            }
        }
    }

    /// Waits for the next thing to happen: console bytes (recorded and classified), a QMP
    /// event, QEMU's exit (then whatever is still buffered), the timer at `until`, or `cancel`.
    async fn pump(
        &mut self,
        buf: &mut [u8],
        until: Instant,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Woke> {
        let console_open = self.console.is_some();
        let console = self.console.as_mut();
        tokio::select! {
            r = async { console.expect("guarded").read(buf).await }, if console_open => {
                match r {
                    Ok(n) if n > 0 => self.on_console(&buf[..n]).await?,
                    _ => self.console = None, // QEMU closed it: it is exiting
                }
                Ok(Woke::Io)
            }
            Some(ev) = self.events.recv() => {
                self.on_event(ev);
                Ok(Woke::Io)
            }
            st = self.process.wait() => {
                self.exit = Some(st.context("waiting for QEMU")?);
                self.drain_console().await?;
                self.drain_events().await;
                Ok(Woke::Io)
            }
            _ = tokio::time::sleep_until(until) => Ok(Woke::Timer),
            _ = cancel.cancelled() => Ok(Woke::Cancelled),
        }
    }

    /// How far the current boot's exception dump shows its own end.
    fn dump_end(&self) -> DumpEnd {
        let boot = self.classifier.current();
        let Some((f, x)) = boot
            .fatal()
            .and_then(|f| f.exception.as_ref().map(|x| (f, x)))
        else {
            return DumpEnd::Unknown;
        };
        // A DEBUG build is chatty from its first line (hundreds of driver and protocol lines
        // before any loader runs); a RELEASE build prints a handful. Only a quiet firmware's
        // double banner is its whole dump.
        let quiet_firmware = f.line.saturating_sub(boot.first_line) < QUIET_FIRMWARE_LINES;
        let body = !x.backtrace.is_empty()
            || !x.registers.is_empty()
            || !x.modules.is_empty()
            || x.syndrome.is_some();
        if x.assert.is_some() || x.recursive {
            DumpEnd::Closed
        } else if x.banner_count >= 2 && !body && quiet_firmware {
            DumpEnd::BannerOnly
        } else {
            DumpEnd::Unknown
        }
    }

    /// The classifier's decision for the boot `spec` is about; before that boot has started,
    /// an end means the awaited boot never came.
    fn decide(&self, spec: &WatchSpec, end: &End) -> Option<Decision> {
        let current = self.classifier.current();
        if current.index >= spec.min_boot {
            return self.classifier.decide(spec.target, end);
        }
        if *end == End::Running {
            return None;
        }
        let mut d = crate::core::classify::decide_boot(
            &crate::core::classify::Boot::empty(),
            spec.target,
            end,
        )?;
        d.reason = format!("{} (boot {} never started)", d.reason, spec.min_boot + 1);
        Some(d)
    }

    /// Reports progress to whoever displays it.
    pub fn emit(&self, ev: Event) {
        self.sink.emit(ev);
    }

    async fn on_console(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let t = self.now_s();
        self.last_output = Instant::now();
        self.console_bytes += bytes.len() as u64;
        self.raw
            .write_all(bytes)
            .await
            .context("writing serial.raw")?;
        let mut text = String::new();
        self.norm.feed(bytes, &mut text);
        if !text.is_empty() {
            let mut stamped = String::with_capacity(text.len() + 16 * text.matches('\n').count());
            for line in text.lines() {
                stamped.push_str(&format!("[{t:10.3}] {line}\n"));
            }
            self.log
                .write_all(stamped.as_bytes())
                .await
                .context("writing console.log")?;
            self.classifier.feed_text(&text, Some(t));
            self.recent.push_str(&text);
            if self.recent.len() > RECENT_MAX {
                let mut cut = self.recent.len() - RECENT_MAX / 2;
                while !self.recent.is_char_boundary(cut) {
                    cut += 1;
                }
                self.recent.drain(..cut);
                self.recent_base += cut;
            }
        }
        let partial = self.norm.partial();
        self.tail.clone_from(&partial);
        if !partial.is_empty() {
            self.classifier.feed_partial(&partial, Some(t));
        }
        self.report_milestones();
        Ok(())
    }

    fn on_event(&mut self, ev: QmpEvent) {
        match ev.name.as_str() {
            "RESET" => self.classifier.new_boot("reset", Some(ev.t_s)),
            "SHUTDOWN" => {
                self.guest_shutdown = ev
                    .data
                    .get("guest")
                    .and_then(|g| g.as_bool())
                    .unwrap_or(false)
            }
            _ => {}
        }
        self.sink.emit(Event::Qmp {
            name: ev.name.clone(),
            t_s: ev.t_s,
        });
        self.event_log.push(EventRecord {
            name: ev.name,
            t_s: ev.t_s,
            data: ev.data,
        });
    }

    /// Reads what the console socket holds right now (without waiting for more); true when it
    /// held anything.
    async fn take_buffered_console(&mut self, buf: &mut [u8]) -> anyhow::Result<bool> {
        let mut any = false;
        while let Some(c) = self.console.as_mut() {
            match c.try_read(buf) {
                Ok(0) => self.console = None,
                Ok(n) => {
                    any = true;
                    self.on_console(&buf[..n]).await?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => self.console = None,
            }
        }
        Ok(any)
    }

    /// After QEMU exited: whatever is still buffered in the console socket.
    async fn drain_console(&mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(c) = self.console.as_mut() {
            match tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.on_console(&buf[..n]).await?,
                _ => self.console = None,
            }
        }
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(ev);
        }
        Ok(())
    }

    fn report_milestones(&mut self) {
        if !self.sink.is_connected() {
            return;
        }
        // Boots are kept by index (the classifier may drop middle ones): what was sent is the
        // boot index and how many of its milestones.
        let (last_boot, sent) = self.milestones_sent;
        for b in self
            .classifier
            .boots()
            .iter()
            .filter(|b| b.index >= last_boot)
        {
            let skip = if b.index == last_boot { sent } else { 0 };
            for m in b.timeline.iter().skip(skip) {
                self.sink.emit(Event::Milestone {
                    session: self.index,
                    boot: b.index,
                    stage: m.stage,
                    t_s: m.t_s.unwrap_or(0.0),
                    text: m.text.clone(),
                });
            }
        }
        let cur = self.classifier.current();
        self.milestones_sent = (cur.index, cur.timeline.len());
    }

    /// Ends the VM: QMP `quit`, a grace period, then SIGKILL to QEMU's group. Idempotent.
    pub async fn shutdown(&mut self) -> anyhow::Result<ExitInfo> {
        if let Some(e) = self.exit.clone() {
            // Tokio's file writes finish on a blocking thread: flush so the files are whole
            // when the session's records are read.
            let _ = self.raw.flush().await;
            let _ = self.log.flush().await;
            return Ok(e);
        }
        // Stop reading the console first: QEMU must never block on a console nobody reads.
        self.console = None;
        let q = tokio::time::timeout(Duration::from_secs(1), self.qmp.quit()).await;
        tracing::debug!(t = self.now_s(), ?q, "sent quit");
        let info = self
            .process
            .stop(self.timings.stop_grace)
            .await
            .context("stopping QEMU")?;
        tracing::debug!(
            t = self.now_s(),
            killed = info.killed_by_harness,
            "QEMU stopped"
        );
        self.exit = Some(info.clone());
        let _ = self.raw.flush().await;
        let _ = self.log.flush().await;
        // QEMU sends SHUTDOWN after its reply to `quit`, just before it exits: take the events
        // until QMP closes, not only those already here.
        self.drain_events().await;
        Ok(info)
    }
}

/// How long each call of the hang evidence may take, and all of them together.
const EVIDENCE_CALL: Duration = Duration::from_secs(2);
const EVIDENCE_ALL: Duration = Duration::from_secs(6);
/// How much of the console's end the hang evidence keeps.
const CONSOLE_TAIL: usize = 4096;

impl Session {
    /// What a silent machine shows, taken before it is stopped: QMP `query-status`, the vCPUs'
    /// registers (`info registers`) and the instructions at the PC (`x /4i`) through the
    /// monitor, the system registers `info registers` does not print for AArch64 (ELR, ESR,
    /// FAR...) through QEMU's gdbstub, started for this, a `screendump` (PPM, of the VM's display
    /// or, on a machine without one, of the inert text console bootwatch gives every VM), and
    /// the console's last bytes. Written to `dir/hang/`; each call bounded by [`EVIDENCE_CALL`]
    /// (the gdbstub's exchange as one), all by [`EVIDENCE_ALL`]; whatever fails is listed in
    /// `errors`, never an error of the session.
    pub async fn hang_evidence(&mut self, dir: &Path) -> crate::engine::record::HangEvidence {
        let t0 = Instant::now();
        let mut ev = crate::engine::record::HangEvidence::default();
        match tokio::time::timeout(EVIDENCE_ALL, self.take_hang_evidence(dir, &mut ev)).await {
            Ok(()) => {}
            Err(_) => ev.errors.push(format!("stopped after {EVIDENCE_ALL:?}")),
        }
        ev.duration_s = round_ms(t0.elapsed().as_secs_f64());
        ev
    }

    async fn take_hang_evidence(
        &mut self,
        dir: &Path,
        ev: &mut crate::engine::record::HangEvidence,
    ) {
        let hang = dir.join("hang");
        if let Err(e) = tokio::fs::create_dir_all(&hang).await {
            ev.errors.push(format!("{}: {e}", hang.display()));
            return;
        }
        let write =
            async |name: &str, bytes: Vec<u8>, ev: &mut crate::engine::record::HangEvidence| {
                match tokio::fs::write(hang.join(name), bytes).await {
                    Ok(()) => ev.files.push(format!("hang/{name}")),
                    Err(e) => ev.errors.push(format!("hang/{name}: {e}")),
                }
            };
        // The console's end: the last complete lines and the unterminated tail.
        let mut text = format!("{}{}", self.recent, self.tail);
        if text.len() > CONSOLE_TAIL {
            let mut cut = text.len() - CONSOLE_TAIL;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        write("console-tail.txt", text.into_bytes(), ev).await;
        let qmp = &self.qmp;
        match tokio::time::timeout(
            EVIDENCE_CALL,
            qmp.execute_raw("query-status", serde_json::Value::Null),
        )
        .await
        {
            Ok(Ok(v)) => {
                let bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
                ev.status = Some(v);
                write("query-status.json", bytes, ev).await;
            }
            Ok(Err(e)) => ev.errors.push(format!("query-status: {e}")),
            Err(_) => ev.errors.push("query-status: no answer".into()),
        }
        let hmp = async |line: &str| -> Result<String, String> {
            let cmd = qapi::qmp::human_monitor_command {
                command_line: line.to_string(),
                cpu_index: None,
            };
            match tokio::time::timeout(EVIDENCE_CALL, qmp.execute(cmd)).await {
                Ok(Ok(out)) => Ok(out.replace("\r\n", "\n")),
                Ok(Err(e)) => Err(format!("{line}: {e}")),
                Err(_) => Err(format!("{line}: no answer")),
            }
        };
        let mut regs = String::new();
        match hmp("info registers").await {
            Ok(out) => {
                ev.registers = parse_registers(&out);
                regs.push_str("(qemu) info registers\n");
                regs.push_str(&out);
            }
            Err(e) => ev.errors.push(e),
        }
        // The instructions at the PC: by its value, since the monitor knows no `$pc` on Arm
        // ("unknown register").
        let x = match ev.registers.get("PC") {
            Some(pc) => format!("x /4i 0x{pc}"),
            None => "x /4i $pc".to_string(),
        };
        match hmp(&x).await {
            Ok(out) => {
                regs.push_str(&format!("\n(qemu) {x}\n"));
                regs.push_str(&out);
            }
            Err(e) => ev.errors.push(e),
        }
        // The system registers (ELR, ESR, FAR...), which `info registers` does not print for
        // AArch64: from QEMU's gdbstub, started now. It stops the VM while connected; detached,
        // the VM runs on as before.
        let gdb = sysregs_from_gdbstub(qmp, self.gdb_socket.as_deref());
        match tokio::time::timeout(EVIDENCE_CALL, gdb).await {
            Ok(Ok((text, sysregs))) => {
                regs.push_str(&text);
                ev.registers.extend(sysregs);
            }
            Ok(Err(e)) => ev.errors.push(format!("system registers (gdbstub): {e:#}")),
            Err(_) => ev
                .errors
                .push("system registers (gdbstub): no answer".into()),
        }
        if !regs.is_empty() {
            write("registers.txt", regs.into_bytes(), ev).await;
        }
        let shot = hang.join("screendump.ppm");
        let cmd = qapi::qmp::screendump {
            filename: shot.to_string_lossy().into_owned(),
            device: None,
            head: None,
            format: None,
        };
        match tokio::time::timeout(EVIDENCE_CALL, qmp.execute(cmd)).await {
            Ok(Ok(_)) => ev.files.push("hang/screendump.ppm".into()),
            Ok(Err(e)) => ev.errors.push(format!("screendump: {e}")),
            Err(_) => ev.errors.push("screendump: no answer".into()),
        }
    }
}

/// The system registers the hang evidence reads through the gdbstub, those the vCPU has: the
/// name recorded and the names QEMU may give it (a register defined for both execution states
/// keeps its AArch32 name: QEMU 7.2 calls VBAR_EL1 `VBAR`).
const SYSREGS: [(&str, &[&str]); 10] = [
    ("ELR_EL1", &["ELR_EL1"]),
    ("ESR_EL1", &["ESR_EL1"]),
    ("FAR_EL1", &["FAR_EL1"]),
    ("SPSR_EL1", &["SPSR_EL1"]),
    ("VBAR_EL1", &["VBAR_EL1", "VBAR"]),
    ("ELR_EL2", &["ELR_EL2"]),
    ("ESR_EL2", &["ESR_EL2"]),
    ("FAR_EL2", &["FAR_EL2"]),
    ("SPSR_EL2", &["SPSR_EL2"]),
    ("VBAR_EL2", &["VBAR_EL2"]),
];

/// Starts QEMU's gdbstub on `socket` (the monitor's `gdbserver`) and reads [`SYSREGS`] of every
/// vCPU: the text for `registers.txt` (`NAME=HEX`, per `CPU#N`) and the values by name (the
/// first vCPU's as `NAME`, later ones' as `CPUn.NAME`, as [`parse_registers`] names them).
async fn sysregs_from_gdbstub(
    qmp: &Qmp,
    socket: Option<&Path>,
) -> anyhow::Result<(String, std::collections::BTreeMap<String, String>)> {
    use anyhow::bail;
    let Some(socket) = socket else {
        bail!("no socket for a gdbstub (not a QEMU this session started)");
    };
    // A comma in a chardev option is written twice.
    let spec = format!(
        "unix:{},server=on,wait=off",
        socket.to_string_lossy().replace(',', ",,")
    );
    let cmd = qapi::qmp::human_monitor_command {
        command_line: format!("gdbserver {spec}"),
        cpu_index: None,
    };
    let said = qmp.execute(cmd).await.context("gdbserver")?;
    let mut gdb = crate::engine::gdb::Gdb::connect(socket, EVIDENCE_CALL)
        .await
        .with_context(|| format!("gdbserver said {:?}", said.trim()))?;
    let all = gdb.registers().await?;
    let wanted: Vec<_> = SYSREGS
        .iter()
        .filter_map(|(label, names)| {
            let r = all
                .iter()
                .find(|r| names.iter().any(|n| r.name.eq_ignore_ascii_case(n)))?;
            Some((*label, r.clone()))
        })
        .collect();
    if !wanted.iter().any(|(label, _)| *label == "ESR_EL1") {
        let mut features: Vec<&str> = all.iter().map(|r| r.feature.as_str()).collect();
        features.dedup();
        bail!(
            "the target description has no ESR_EL1 (features: {})",
            features.join(", ")
        );
    }
    let feature = wanted[0].1.feature.clone();
    let mut text = format!("\n(gdb) system registers, from QEMU's gdbstub ({feature})\n");
    let mut values = std::collections::BTreeMap::new();
    let threads = gdb.threads().await?;
    for (i, &t) in threads.iter().enumerate() {
        // QEMU's thread ids are `cpu_index + 1`.
        let cpu = t.checked_sub(1).map_or(i, |c| c as usize);
        gdb.select(t).await?;
        text.push_str(&format!("CPU#{cpu}\n"));
        let mut line = Vec::new();
        for (label, r) in &wanted {
            let v = gdb.read_register(r).await?;
            line.push(format!("{label}={v}"));
            let key = if cpu == 0 {
                label.to_string()
            } else {
                format!("CPU{cpu}.{label}")
            };
            values.insert(key, v);
        }
        for chunk in line.chunks(4) {
            text.push_str(&format!(" {}\n", chunk.join(" ")));
        }
    }
    gdb.detach().await?;
    Ok((text, values))
}

/// `NAME=HEX` pairs of QEMU's `info registers` (the first vCPU's, and every later one's as
/// `CPU1.NAME`); `PSTATE` keeps its flags and mode (`400003c5 -Z-- EL1h`).
pub fn parse_registers(out: &str) -> std::collections::BTreeMap<String, String> {
    let mut regs = std::collections::BTreeMap::new();
    let mut cpu = 0usize;
    for line in out.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("CPU#") {
            cpu = n.trim().parse().unwrap_or(cpu);
            continue;
        }
        let prefix = if cpu == 0 {
            String::new()
        } else {
            format!("CPU{cpu}.")
        };
        if let Some(rest) = line.strip_prefix("PSTATE=") {
            let v: Vec<&str> = rest.split_whitespace().take(3).collect();
            regs.insert(format!("{prefix}PSTATE"), v.join(" "));
            continue;
        }
        for tok in line.split_whitespace() {
            if let Some((k, v)) = tok.split_once('=')
                && !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_hexdigit())
            {
                regs.insert(format!("{prefix}{k}"), v.to_string());
            }
        }
    }
    regs
}

/// How much recent console text `expect` can look back over.
const RECENT_MAX: usize = 1 << 20;

/// How an `expect` ended.
#[derive(Debug, Clone)]
pub enum ExpectEnd {
    /// The pattern matched; `text` is everything from the mark to the end of the match, and
    /// `captures` the pattern's capture groups (None where a group did not take part).
    Matched {
        text: String,
        captures: Vec<Option<String>>,
    },
    /// The classifier found a fatal failure first (call `watch` to let the dump finish).
    Failed,
    /// QEMU exited first.
    Exited,
    TimedOut,
    Interrupted,
}

impl Session {
    /// A position in the console text: `expect` looks only at what arrives after it.
    pub fn mark(&self) -> usize {
        self.recent_base + self.recent.len()
    }

    /// Types `bytes` on the serial console.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let Some(c) = self.console.as_mut() else {
            anyhow::bail!("the serial console is closed")
        };
        c.write_all(bytes)
            .await
            .context("writing to the serial console")?;
        Ok(())
    }

    /// Waits until `re` matches the console text after `since` (complete lines plus the
    /// unterminated tail, so prompts match), while recording and classifying as `watch` does.
    pub async fn expect(
        &mut self,
        re: &regex::Regex,
        since: usize,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> anyhow::Result<ExpectEnd> {
        let cpu0 = thread_cpu_s();
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            let start = since
                .saturating_sub(self.recent_base)
                .min(self.recent.len());
            let hay = format!("{}{}", &self.recent[start..], self.tail);
            if let Some(c) = re.captures(&hay) {
                let whole = c.get(0).expect("group 0");
                let captures = c
                    .iter()
                    .skip(1)
                    .map(|m| m.map(|m| m.as_str().to_string()))
                    .collect();
                break ExpectEnd::Matched {
                    text: hay[..whole.end()].to_string(),
                    captures,
                };
            }
            if self.classifier.current().fatal().is_some() {
                break ExpectEnd::Failed;
            }
            if self.exit.is_some() {
                break ExpectEnd::Exited;
            }
            match self.pump(&mut buf, deadline, cancel).await? {
                Woke::Io => {}
                Woke::Timer => break ExpectEnd::TimedOut,
                Woke::Cancelled => break ExpectEnd::Interrupted,
            }
        };
        self.watch_cpu_s += thread_cpu_s() - cpu0;
        Ok(end)
    }
}

/// QEMU's output on one line for a reason: control characters (escape sequences, NUL) shown
/// escaped, so the text is safe in a terminal, a record and a report.
fn one_line(s: &str) -> String {
    let s = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
        .chars()
        .flat_map(|c| -> Vec<char> {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            }
        })
        .collect::<String>();
    if s.is_empty() {
        "nothing on stderr".into()
    } else {
        s
    }
}

/// utime + stime of a `/proc/PID/stat` line, in seconds.
fn cpu_s_from_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)? as f64;
    Some(round_ms((utime + stime) / tck))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_of_info_registers() {
        let out = "\r\nCPU#0\r\n PC=0000000040001000 X00=0000000000000001 X01=0000000000000000\r\nX29=0000000000000000 X30=0000000000000000  SP=0000000000000000\r\nPSTATE=400003c5 -Z-- EL1h    FPU disabled\r\n";
        let r = parse_registers(out);
        assert_eq!(r["PC"], "0000000040001000");
        assert_eq!(r["X00"], "0000000000000001");
        assert_eq!(r["SP"], "0000000000000000");
        assert_eq!(r["PSTATE"], "400003c5 -Z-- EL1h");
    }

    /// QEMU's start-up output goes into `reason` (records, terminals, reports) as one line
    /// with every control character escaped, whatever bytes QEMU wrote.
    #[test]
    fn qemu_output_in_a_reason_is_one_escaped_line() {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("qemu.stderr");
        let written: &[u8] =
            b"\x1b[2J\x1b]0;owned\x07qemu: bad\0arg\r\n\n  \r\nspin\rover\xff\xfe end\x7f\n";
        std::fs::write(&stderr, written).unwrap();
        let line = one_line(&crate::engine::supervise::stderr_tail(&stderr));
        assert_eq!(
            line,
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}qemu: bad\\u{0}arg | spin\\rover\u{fffd}\u{fffd} end\\u{7f}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        // C1 controls (an 8-bit CSI) too; nothing at all is said so.
        assert_eq!(one_line("a\u{9b}31mb"), "a\\u{9b}31mb");
        assert_eq!(one_line(" \r\n\n"), "nothing on stderr");
    }

    #[test]
    fn cpu_time_from_proc_stat_even_with_odd_command_names() {
        let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64;
        let line = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_s_from_stat(line), Some(round_ms(300.0 / tck)));
        assert_eq!(cpu_s_from_stat("garbage"), None);
        // Our own process: a real file parses.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_s_from_stat(&own).is_some());
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod fake_qemu_tests;
