//! The session's watch loop against a scripted QEMU, on tokio's paused clock.
//!
//! The fake plays QEMU's side of two socket pairs: the serial console, where it writes scripted
//! bytes at scripted virtual times, and QMP, where it greets, answers commands by id and emits
//! events. Its process "exits" through the [`ScriptedProcess`] oneshot. Nothing sleeps for real:
//! the runtime's clock only moves when every task waits on a timer, so every time below is exact
//! (to the millisecond `now_s` rounds to) and a test of a 30 s timeout takes microseconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ScriptedProcess, Session, SessionPaths, Timings, VmProcess, WatchEnd, WatchSpec};
use crate::core::classify::{Decision, FINDINGS_PER_PATTERN, FindingKind};
use crate::core::console::MAX_LINE;
use crate::core::event::{Event, EventSink};
use crate::core::verdict::{Outcome, Stage, Verdict, exit_code};
use crate::engine::record::outcome_of;
use crate::engine::supervise::ExitInfo;

/// The package string the fake's `query-version` reports.
const PACKAGE: &str = "Debian 1:7.2+dfsg-7+deb12u18+b3";

const BANNER: &str =
    "UEFI firmware (version edk2-stable202302-for-qemu built at 17:14:55 on Mar 15 2023)\r\n";
const GRUB: &str = "Welcome to GRUB!\r\n";
const KERNEL: &str = "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]\r\n";
const INIT: &str = "[  OK  ] Started systemd-journald.service - Journal Service.\r\n";
/// A prompt: printed without a newline, as getty does.
const LOGIN: &str = "\r\ndebian login: ";
const EXCEPTION: &str = "Synchronous Exception at 0x000000007C743000\r\n";
/// What a DEBUG build prints while it starts: a driver load line per driver, dozens of them.
const DEBUG_CHATTER: &str = concat!(
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
    "Loading driver at 0x0005F7E0000 EntryPoint=0x0005F7E1000 ArmCpuDxe.efi\r\n",
    "InstallProtocolInterface: 26BACCB1-6F42-11D4-BCE7-0080C73C8881 5F7E5008\r\n",
);

/// What the fake QEMU does at a scripted time (seconds after its start).
enum Act {
    /// Bytes on the serial console.
    Console(&'static str),
    /// Bytes that are not text (invalid UTF-8) on the serial console.
    ConsoleBytes(Vec<u8>),
    /// A line on the console every `every` seconds, from now on, forever (last in a script).
    ConsoleForever { every: f64, line: &'static str },
    /// A QMP event.
    Event(&'static str, Value),
    /// QEMU exits: it closes the console and QMP, then the process ends with this status.
    Exit(ExitInfo),
}

/// QEMU's side of the streams, shared by the script and the QMP responder.
struct FakeQemu {
    zero: Instant,
    console: tokio::sync::Mutex<Option<UnixStream>>,
    qmp: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    exit: Mutex<Option<oneshot::Sender<ExitInfo>>>,
    /// QMP commands received, with their virtual time.
    commands: Mutex<Vec<(f64, String)>>,
    /// Whether `quit` makes it exit (a QEMU that ignores it is killed after the grace).
    exits_on_quit: bool,
}

impl FakeQemu {
    fn now_s(&self) -> f64 {
        self.zero.elapsed().as_secs_f64()
    }

    async fn console(&self, bytes: &[u8]) {
        if let Some(c) = self.console.lock().await.as_mut() {
            // The session may have closed its end (after `shutdown`): QEMU would get EPIPE too.
            let _ = c.write_all(bytes).await;
        }
    }

    async fn send(&self, msg: Value) {
        if let Some(w) = self.qmp.lock().await.as_mut() {
            let _ = w.write_all(format!("{msg}\n").as_bytes()).await;
        }
    }

    async fn event(&self, name: &str, data: Value) {
        let t = self.now_s();
        self.send(json!({
            "event": name,
            "data": data,
            "timestamp": {"seconds": t.trunc() as u64, "microseconds": (t.fract() * 1e6) as u64},
        }))
        .await;
    }

    async fn exit(&self, info: ExitInfo) {
        // Dropping the write half shuts it down: the session's QMP reader sees EOF.
        self.console.lock().await.take();
        self.qmp.lock().await.take();
        if let Some(tx) = self.exit.lock().unwrap().take() {
            let _ = tx.send(info);
        }
    }

    fn commands(&self) -> Vec<String> {
        let c = self.commands.lock().unwrap();
        c.iter().map(|(_, n)| n.clone()).collect()
    }

    /// QEMU's QMP server: answers each command by its id.
    async fn serve_qmp(self: Arc<Self>, read: OwnedReadHalf) {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let msg: Value = serde_json::from_str(&line).expect("the session sends JSON");
            let id = msg["id"].clone();
            let name = msg["execute"].as_str().unwrap_or_default().to_string();
            self.commands
                .lock()
                .unwrap()
                .push((self.now_s(), name.clone()));
            let ok = |ret: Value| json!({"return": ret, "id": id});
            match name.as_str() {
                "qmp_capabilities" | "cont" => self.send(ok(json!({}))).await,
                "query-version" => {
                    self.send(ok(json!({
                        "qemu": {"major": 7, "minor": 2, "micro": 22},
                        "package": format!(" {PACKAGE}"),
                    })))
                    .await
                }
                "system_reset" => {
                    self.send(ok(json!({}))).await;
                    self.event(
                        "RESET",
                        json!({"guest": false, "reason": "host-qmp-system-reset"}),
                    )
                    .await;
                }
                "quit" if self.exits_on_quit => {
                    self.send(ok(json!({}))).await;
                    self.event(
                        "SHUTDOWN",
                        json!({"guest": false, "reason": "host-qmp-quit"}),
                    )
                    .await;
                    self.exit(exit_status(0)).await;
                    return;
                }
                // A hung QEMU: the session has to kill it.
                "quit" => {}
                "query-status" => {
                    self.send(ok(json!({"status": "running", "running": true})))
                        .await
                }
                // The monitor of a QEMU with registers and memory but no gdbstub.
                "human-monitor-command" => {
                    let line = msg["arguments"]["command-line"].as_str().unwrap_or("");
                    let out = if line == "info registers" {
                        "CPU#0\r\n PC=000000007c743004 X00=0000000000000000\r\n"
                    } else if line.starts_with("x /4i ") {
                        "0x7c743004:  17ffffff  b        #0x7c743000\r\n"
                    } else {
                        "unknown command\r\n"
                    };
                    self.send(ok(json!(out))).await
                }
                other => {
                    self.send(json!({
                        "error": {"class": "CommandNotFound", "desc": format!("{other}?")},
                        "id": id,
                    }))
                    .await
                }
            }
        }
    }

    /// Plays the script: each act at its virtual time.
    async fn play(self: Arc<Self>, script: Vec<(f64, Act)>) {
        for (at, act) in script {
            tokio::time::sleep_until(self.zero + Duration::from_secs_f64(at)).await;
            match act {
                Act::Console(s) => self.console(s.as_bytes()).await,
                Act::ConsoleBytes(b) => self.console(&b).await,
                Act::ConsoleForever { every, line } => loop {
                    self.console(line.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs_f64(every)).await;
                },
                Act::Event(name, data) => self.event(name, data).await,
                Act::Exit(info) => self.exit(info).await,
            }
        }
    }
}

fn exit_status(code: i32) -> ExitInfo {
    ExitInfo {
        code: Some(code),
        signal: None,
        killed_by_harness: false,
    }
}

/// A session attached to a fake QEMU playing `script`, and what it recorded.
struct Rig {
    session: Session,
    fake: Arc<FakeQemu>,
    dir: tempfile::TempDir,
    events: Arc<Mutex<Vec<Event>>>,
}

async fn rig(script: Vec<(f64, Act)>, timings: Timings) -> Rig {
    rig_with(script, timings, true).await
}

async fn rig_with(script: Vec<(f64, Act)>, timings: Timings, exits_on_quit: bool) -> Rig {
    let zero = Instant::now();
    let (console, console_qemu) = UnixStream::pair().unwrap();
    let (qmp, qmp_qemu) = UnixStream::pair().unwrap();
    let (process, exit) = ScriptedProcess::new();
    let (qmp_read, qmp_write) = qmp_qemu.into_split();
    let fake = Arc::new(FakeQemu {
        zero,
        console: tokio::sync::Mutex::new(Some(console_qemu)),
        qmp: tokio::sync::Mutex::new(Some(qmp_write)),
        exit: Mutex::new(Some(exit)),
        commands: Mutex::default(),
        exits_on_quit,
    });
    fake.send(json!({
        "QMP": {
            "version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": PACKAGE},
            "capabilities": [],
        }
    }))
    .await;
    tokio::spawn(fake.clone().serve_qmp(qmp_read));
    tokio::spawn(fake.clone().play(script));
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let got = events.clone();
    let sink = EventSink::new(move |_, e| got.lock().unwrap().push(e));
    let session = Session::attach(
        VmProcess::Scripted(process),
        zero,
        console,
        qmp,
        &SessionPaths::in_dir(dir.path()),
        timings,
        1,
        sink,
        None,
    )
    .await
    .expect("the session attaches to the fake QEMU");
    Rig {
        session,
        fake,
        dir,
        events,
    }
}

fn spec(target: Option<Stage>, timeout_s: u64, silence_s: u64) -> WatchSpec {
    WatchSpec {
        target,
        timeout: Duration::from_secs(timeout_s),
        silence: Duration::from_secs(silence_s),
        min_boot: 0,
    }
}

/// Timings with a dump window of `quiet_ms` quiet, at most `max_ms`.
fn dump_window(quiet_ms: u64, max_ms: u64) -> Timings {
    Timings {
        dump_quiet: Duration::from_millis(quiet_ms),
        dump_max: Duration::from_millis(max_ms),
        ..Timings::default()
    }
}

/// Times are virtual and rounded to the millisecond by the session.
#[track_caller]
fn assert_at(t: f64, expected: f64) {
    assert!(
        (t - expected).abs() < 0.0005,
        "at {t} s, expected {expected} s"
    );
}

/// Watches and insists on a decision; returns it, its time and the outcome the record gets.
async fn decided(s: &mut Session, spec: WatchSpec) -> (Decision, f64, Outcome) {
    // A watch loop that never decides fails here (after virtual time) instead of spinning.
    let end = tokio::time::timeout(
        Duration::from_secs(1000),
        s.watch(spec, &CancellationToken::new()),
    )
    .await
    .expect("the watch decided within 1000 virtual seconds")
    .unwrap();
    match end {
        WatchEnd::Decided { decision, t_s } => {
            let outcome = outcome_of(&decision, s.classifier.current(), t_s);
            (decision, t_s, outcome)
        }
        WatchEnd::Interrupted { t_s } => panic!("interrupted at {t_s} s"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_boot_that_reaches_its_target_is_decided_when_the_stage_appears() {
    let mut r = rig(
        vec![
            (1.0, Act::Console(BANNER)),
            (2.0, Act::Console(GRUB)),
            (3.5, Act::Console(KERNEL)),
            (5.0, Act::Console(INIT)),
            (6.25, Act::Console(LOGIN)),
        ],
        Timings::default(),
    )
    .await;
    // QMP was negotiated and the version read before the VM was continued.
    assert_eq!(
        r.fake.commands(),
        ["qmp_capabilities", "query-version", "cont"]
    );
    assert_eq!(r.session.qemu_version.as_deref(), Some("7.2.22"));
    assert_eq!(r.session.qemu_package.as_deref(), Some(PACKAGE));

    let (d, t, outcome) = decided(&mut r.session, spec(Some(Stage::Login), 60, 30)).await;
    assert_eq!(d.verdict, Verdict::Reached);
    assert_eq!(d.exit_code, exit_code::GOOD);
    assert_eq!(d.stage, Stage::Login);
    assert_at(t, 6.25);
    assert_at(outcome.time_to_verdict_s.unwrap(), 6.25);

    let timeline: Vec<(Stage, f64)> = r
        .session
        .classifier
        .current()
        .timeline
        .iter()
        .map(|m| (m.stage, m.t_s.unwrap()))
        .collect();
    let expected = [
        (Stage::Firmware, 1.0),
        (Stage::Grub, 2.0),
        (Stage::Kernel, 3.5),
        (Stage::Userspace, 5.0),
        (Stage::Login, 6.25),
    ];
    assert_eq!(timeline, expected);
    // Every milestone was reported to the sink as it happened, with the same times.
    let milestones: Vec<(Stage, f64)> = r
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Milestone { stage, t_s, .. } => Some((*stage, *t_s)),
            _ => None,
        })
        .collect();
    assert_eq!(milestones, expected);

    // A QEMU that obeys `quit` exits on its own: not killed, no time spent waiting.
    let exit = r.session.shutdown().await.unwrap();
    assert_eq!(exit, exit_status(0));
    assert_at(r.session.now_s(), 6.25);
    assert_eq!(r.fake.commands().last().map(String::as_str), Some("quit"));
    // The console log is stamped with the virtual times the bytes arrived at.
    let log = std::fs::read_to_string(r.dir.path().join("console.log")).unwrap();
    assert!(
        log.contains("[     3.500] [    0.000000] Booting Linux"),
        "{log}"
    );
    let raw = std::fs::read(r.dir.path().join("serial.raw")).unwrap();
    assert_eq!(raw, [BANNER, GRUB, KERNEL, INIT, LOGIN].concat().as_bytes());
}

#[tokio::test(start_paused = true)]
async fn silence_decides_hang_exactly_at_the_silence_limit_with_the_last_stage() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.5, Act::Console(GRUB)),
            (2.0, Act::Console(KERNEL)),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, outcome) = decided(&mut r.session, spec(Some(Stage::Login), 100, 10)).await;
    assert_eq!(d.verdict, Verdict::Hang);
    assert_eq!(d.exit_code, exit_code::BAD);
    assert_eq!(d.stage, Stage::Kernel);
    assert!(!d.before_grub);
    assert_eq!(d.reason, "no console output for 10 s; last stage kernel");
    // 10 s after the last byte, not after the watch started.
    assert_at(t, 12.0);
    assert_at(outcome.time_to_verdict_s.unwrap(), 12.0);
    assert_eq!(
        r.session.classifier.last_line(),
        KERNEL.trim_end_matches("\r\n")
    );
}

#[tokio::test(start_paused = true)]
async fn a_hang_s_evidence_without_a_gdbstub_keeps_the_rest_and_says_why() {
    let mut r = rig(vec![(0.5, Act::Console(BANNER))], Timings::default()).await;
    let (d, _, _) = decided(&mut r.session, spec(Some(Stage::Login), 100, 5)).await;
    assert_eq!(d.verdict, Verdict::Hang);
    let ev = r.session.hang_evidence(r.dir.path()).await;
    assert_eq!(ev.status.as_ref().unwrap()["status"], "running");
    assert_eq!(ev.registers["PC"], "000000007c743004");
    assert!(!ev.registers.contains_key("ELR_EL1"), "{ev:?}");
    // Why the system registers are missing, and only that (the screendump too: the fake
    // takes none).
    let gdb: Vec<_> = ev.errors.iter().filter(|e| e.contains("gdbstub")).collect();
    assert_eq!(gdb.len(), 1, "{:?}", ev.errors);
    assert!(gdb[0].contains("no socket"), "{gdb:?}");
    assert_eq!(ev.errors.len(), 2, "{:?}", ev.errors);
    let regs = std::fs::read_to_string(r.dir.path().join("hang/registers.txt")).unwrap();
    assert!(
        regs.contains("PC=000000007c743004") && regs.contains("(qemu) x /4i 0x000000007c743004"),
        "{regs}"
    );
    let tail = std::fs::read_to_string(r.dir.path().join("hang/console-tail.txt")).unwrap();
    assert_eq!(tail, BANNER.trim_end_matches("\r\n").to_string() + "\n");
}

#[tokio::test(start_paused = true)]
async fn an_exception_dump_is_read_whole_and_judged_dump_quiet_after_its_last_line() {
    let dump = [
        (1.1, EXCEPTION), // edk2 prints the banner twice
        (
            1.3,
            "  X0 0x00000000BBBD6000   X1 0x00000000BBBE27F8   X2 0x00000000BBC9F388   X3 0x0000000000000018\r\n",
        ),
        (1.6, " ESR 0x02000000          FAR 0x0000000000000000\r\n"),
        (
            1.9,
            "PC 0x0000BF56D8A4 (0x0000BF566000+0x000078A4) [ 1] DxeCore.dll\r\n",
        ),
        (
            2.2,
            "[ 1] /build/edk2/Build/ArmVirtQemu-AARCH64/DEBUG_GCC5/AARCH64/MdeModulePkg/Core/Dxe/DxeMain/DEBUG/DxeCore.dll\r\n",
        ),
        (
            2.45,
            "PC 0x00043FD37E08 (0x00043FD35000+0x00002E08) [ 0] ArmCpuDxe.dll\r\n",
        ),
    ];
    // A DEBUG build: chatty before the crash, so its double banner is not taken for a RELEASE
    // build's whole dump.
    let mut script = vec![
        (0.5, Act::Console(BANNER)),
        (0.6, Act::Console(DEBUG_CHATTER)),
    ];
    script.push((1.0, Act::Console(EXCEPTION)));
    script.extend(dump.iter().map(|&(t, l)| (t, Act::Console(l))));
    // Each gap (at most 0.3 s) is shorter than the quiet time; the window is far from its max.
    let mut r = rig(script, dump_window(500, 5000)).await;
    let (d, t, outcome) = decided(&mut r.session, spec(None, 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_eq!(d.exit_code, exit_code::BAD);
    assert_eq!(d.stage, Stage::Firmware);
    assert!(d.before_grub);
    // Judged dump_quiet after the last dump line, never before.
    assert_at(t, 2.45 + 0.5);
    assert_at(outcome.time_to_verdict_s.unwrap(), 2.95);

    let boot = r.session.classifier.current();
    let f = &boot.findings[d.finding.expect("a fatal finding decided")];
    assert_eq!(f.kind, FindingKind::Fatal);
    assert_at(f.t_s.unwrap(), 1.0);
    assert_eq!(f.line, 42);
    let x = f.exception.as_ref().expect("the banner opened a dump");
    assert_eq!(x.kind, "Synchronous");
    assert_eq!(x.address.as_deref(), Some("0x000000007C743000"));
    assert_eq!(x.banner_count, 2);
    assert_eq!(x.registers.len(), 6);
    assert_eq!(x.esr.as_deref(), Some("0x02000000"));
    assert_eq!(x.far.as_deref(), Some("0x0000000000000000"));
    let frames: Vec<Option<&str>> = x.backtrace.iter().map(|f| f.module.as_deref()).collect();
    assert_eq!(frames, [Some("DxeCore.dll"), Some("ArmCpuDxe.dll")]);
    assert!(x.modules[&1].ends_with("/DxeCore.dll"));
    // Every line up to the last one belongs to the dump: line 48 is the last PC line.
    assert_eq!(x.last_line, 48);
    // The second banner was taken into the dump, not counted as a second failure.
    assert_eq!(boot.findings.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dump_max_bounds_a_dump_that_never_ends() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::Console(EXCEPTION)),
            (
                1.4,
                Act::ConsoleForever {
                    every: 0.4,
                    line: "  X0 0x0000000000000000   X1 0x0000000000000001\r\n",
                },
            ),
        ],
        dump_window(500, 1500),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(None, 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    // The lines keep coming every 0.4 s (< dump_quiet): only dump_max after the banner ends it.
    assert_at(t, 1.0 + 1.5);
    let f = &r.session.classifier.current().findings[d.finding.unwrap()];
    // Register lines at 1.4, 1.8 and 2.2 s were read into the dump (lines 3 to 5).
    assert_eq!(f.exception.as_ref().unwrap().last_line, 5);
}

#[tokio::test(start_paused = true)]
async fn an_exit_during_the_dump_window_decides_at_once() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::Console(EXCEPTION)),
            (1.2, Act::Exit(exit_status(1))),
        ],
        dump_window(500, 1500),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(None, 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_at(t, 1.2);
    assert_eq!(r.session.exit_info(), Some(&exit_status(1)));
}

/// Boots to the kernel, then QEMU exits at 3 s, with or without the guest's SHUTDOWN before.
async fn exit_after_kernel(shutdown: bool, code: i32, target: Option<Stage>) -> (Decision, f64) {
    let mut script = vec![(0.5, Act::Console(BANNER)), (1.0, Act::Console(KERNEL))];
    if shutdown {
        script.push((
            2.5,
            Act::Event(
                "SHUTDOWN",
                json!({"guest": true, "reason": "guest-shutdown"}),
            ),
        ));
    }
    script.push((3.0, Act::Exit(exit_status(code))));
    let mut r = rig(script, Timings::default()).await;
    let (d, t, _) = decided(&mut r.session, spec(target, 100, 30)).await;
    assert_eq!(r.session.exit_info(), Some(&exit_status(code)));
    let names: Vec<&str> = r
        .session
        .event_log
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, if shutdown { vec!["SHUTDOWN"] } else { vec![] });
    // The process is gone: shutting down again is the same exit, immediately.
    assert_eq!(r.session.shutdown().await.unwrap(), exit_status(code));
    assert_at(r.session.now_s(), 3.0);
    (d, t)
}

#[tokio::test(start_paused = true)]
async fn qemu_exiting_decides_and_only_a_guest_power_off_with_status_0_is_good() {
    let (d, t) = exit_after_kernel(true, 0, None).await;
    assert_eq!(
        (d.verdict, d.exit_code, d.stage),
        (Verdict::QemuExited, exit_code::GOOD, Stage::Kernel)
    );
    assert_eq!(
        d.reason,
        "the guest powered off (exit status 0); last stage kernel"
    );
    // Decided when the process exited: the closed streams end the draining at once.
    assert_at(t, 3.0);

    let (d, t) = exit_after_kernel(false, 0, None).await;
    assert_eq!(
        (d.verdict, d.exit_code),
        (Verdict::QemuExited, exit_code::BAD)
    );
    assert_eq!(d.reason, "QEMU exited (exit status 0); last stage kernel");
    assert_at(t, 3.0);

    let (d, _) = exit_after_kernel(true, 1, None).await;
    assert_eq!(d.exit_code, exit_code::BAD, "{}", d.reason);

    // With a target, powering off before it is a failure.
    let (d, _) = exit_after_kernel(true, 0, Some(Stage::Login)).await;
    assert_eq!(
        (d.verdict, d.exit_code),
        (Verdict::QemuExited, exit_code::BAD)
    );
    assert_eq!(
        d.reason,
        "QEMU exited (exit status 0) before login; last stage kernel"
    );
}

#[tokio::test(start_paused = true)]
async fn a_boot_that_keeps_talking_without_progress_times_out() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (
                1.0,
                Act::ConsoleForever {
                    every: 1.0,
                    line: "[   42.000000] random: crng init done\r\n",
                },
            ),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, outcome) = decided(&mut r.session, spec(Some(Stage::Login), 30, 5)).await;
    assert_eq!(d.verdict, Verdict::Timeout);
    assert_eq!(d.exit_code, exit_code::UNDETERMINED);
    assert_eq!(d.reason, "timed out after 30 s; last stage firmware");
    assert_at(t, 30.0);
    assert_at(outcome.time_to_verdict_s.unwrap(), 30.0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_interrupts_the_watch_when_it_is_cancelled() {
    let mut r = rig(vec![(0.5, Act::Console(BANNER))], Timings::default()).await;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        c.cancel();
    });
    let end = r
        .session
        .watch(spec(Some(Stage::Login), 100, 60), &cancel)
        .await
        .unwrap();
    match end {
        WatchEnd::Interrupted { t_s } => assert_at(t_s, 7.0),
        WatchEnd::Decided { decision, t_s } => {
            panic!("decided {:?} at {t_s} s", decision.verdict)
        }
    }
    // A QEMU that ignores `quit` gets 1 s for the reply, then the grace, then SIGKILL; then the
    // session takes QMP events until the socket closes, at most 0.5 s (a killed QEMU closes it at
    // once; this fake keeps it open, so the whole bound passes).
    let mut r = rig_with(vec![], Timings::default(), false).await;
    let exit = r.session.shutdown().await.unwrap();
    assert!(exit.killed_by_harness);
    assert_eq!(exit.signal, Some(9));
    assert_at(
        r.session.now_s(),
        1.0 + Timings::default().stop_grace.as_secs_f64() + 0.5,
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_reset_min_boot_waits_for_the_next_boot_to_decide() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::Console(KERNEL)),
            (2.0, Act::Console(LOGIN)),
            // The boot after the reset the test asks for at 2 s.
            (3.0, Act::Console(BANNER)),
            (4.0, Act::Console(KERNEL)),
            (6.0, Act::Console(LOGIN)),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(Some(Stage::Login), 100, 30)).await;
    assert_eq!(d.verdict, Verdict::Reached);
    assert_at(t, 2.0);

    let min_boot = r.session.classifier.boots_started();
    r.session
        .qmp
        .execute(qapi::qmp::system_reset {})
        .await
        .unwrap();
    let next = WatchSpec {
        min_boot,
        ..spec(Some(Stage::Login), 100, 30)
    };
    // Boot 0 reached the target already: only the boot the RESET began may decide.
    let (d, t, outcome) = decided(&mut r.session, next).await;
    assert_eq!(d.verdict, Verdict::Reached);
    assert_at(t, 6.0);
    let boot = r.session.classifier.current();
    assert_eq!((boot.index, boot.reason.as_str()), (1, "reset"));
    assert_at(boot.start_t_s.unwrap(), 2.0);
    // The time to verdict counts from the reset, not from QEMU's start.
    assert_at(outcome.time_to_verdict_s.unwrap(), 4.0);
    let reset_at = r
        .fake
        .commands
        .lock()
        .unwrap()
        .iter()
        .find(|(_, n)| n == "system_reset")
        .map(|(t, _)| *t);
    assert_at(reset_at.expect("the fake got system_reset"), 2.0);
    let names: Vec<&str> = r
        .session
        .event_log
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["RESET"]);
    assert!(r.events.lock().unwrap().contains(&Event::Qmp {
        name: "RESET".into(),
        t_s: 2.0
    }));
}

#[tokio::test(start_paused = true)]
async fn a_reboot_that_never_comes_is_judged_when_the_console_falls_silent() {
    let mut r = rig(
        vec![(0.5, Act::Console(BANNER)), (1.0, Act::Console(LOGIN))],
        Timings::default(),
    )
    .await;
    let next = WatchSpec {
        min_boot: 1,
        ..spec(Some(Stage::Login), 100, 10)
    };
    let (d, t, _) = decided(&mut r.session, next).await;
    assert_eq!((d.verdict, d.exit_code), (Verdict::Hang, exit_code::BAD));
    assert_eq!(
        d.reason,
        "no console output for 10 s; last stage none (boot 2 never started)"
    );
    assert_at(t, 11.0);
}

/// Benign notes printed without end: the watch times out as it would without them, the record
/// keeps the first few and counts the rest, and the console log keeps every line.
#[tokio::test(start_paused = true)]
async fn a_flood_of_notes_is_counted_not_kept() {
    let note = "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Not Found\r\n";
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (
                1.0,
                Act::ConsoleForever {
                    every: 0.001,
                    line: note,
                },
            ),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(Some(Stage::Login), 20, 5)).await;
    assert_eq!(
        (d.verdict, d.exit_code, d.stage),
        (Verdict::Timeout, exit_code::UNDETERMINED, Stage::Firmware)
    );
    assert_at(t, 20.0);
    r.session.shutdown().await.unwrap();
    let boot = r.session.classifier.current();
    let lines = r.session.classifier.lines();
    assert!(lines > 10_000, "{lines} lines");
    assert_eq!(boot.findings.len(), FINDINGS_PER_PATTERN);
    assert!(boot.findings.iter().all(|f| f.kind == FindingKind::Note));
    let repeats: u64 = boot.findings.iter().map(|f| f.repeats).sum();
    // Every line but the firmware banner was a note: kept or counted.
    assert_eq!(repeats + FINDINGS_PER_PATTERN as u64, lines - 1);
    assert_eq!(boot.findings_dropped, repeats);
    let json = serde_json::to_vec(r.session.classifier.boots()).unwrap();
    assert!(json.len() < 16 << 10, "{} bytes", json.len());
    let log = std::fs::read_to_string(r.dir.path().join("console.log")).unwrap();
    assert_eq!(log.lines().count() as u64, lines);
}

/// A megabyte of invalid UTF-8 without a newline, then an exception banner: the banner decides
/// as usual, and the long line is kept as replacement characters in pieces of at most
/// `MAX_LINE` bytes, none of them a finding.
#[tokio::test(start_paused = true)]
async fn a_long_line_of_invalid_utf8_does_not_hide_the_crash_after_it() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::ConsoleBytes(vec![0xff; 1 << 20])),
            (2.0, Act::Console("\r\n")),
            (2.1, Act::Console(EXCEPTION)),
        ],
        dump_window(500, 5000),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(Some(Stage::Login), 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_at(t, 2.6);
    let boot = r.session.classifier.current();
    assert_eq!(boot.findings.len(), 1);
    assert_eq!(
        boot.findings[d.finding.unwrap()].line,
        r.session.classifier.lines()
    );
    assert!(r.session.tail.is_empty());
    r.session.shutdown().await.unwrap();
    let log = std::fs::read_to_string(r.dir.path().join("console.log")).unwrap();
    let replaced: usize = log.matches('\u{fffd}').count();
    assert_eq!(replaced, 1 << 20);
    // Each line of the log is stamped `[    t.ttt] ` (13 bytes) before the text.
    assert!(log.lines().all(|l| l.len() <= MAX_LINE + 13));
}

/// A RELEASE build's whole dump is its banner printed twice: judged `dump_settle` after the
/// second one, well within 0.1 s of the last line.
#[tokio::test(start_paused = true)]
async fn a_release_dump_is_judged_shortly_after_its_second_banner() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::Console(EXCEPTION)),
            (1.001, Act::Console(EXCEPTION)),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(None, 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_at(t, 1.001 + Timings::default().dump_settle.as_secs_f64());
    assert!(
        t - 1.001 <= 0.1,
        "verdict {} s after the last line",
        t - 1.001
    );
    let x = r.session.classifier.current().findings[d.finding.unwrap()]
        .exception
        .clone()
        .unwrap();
    assert_eq!(x.banner_count, 2);
}

/// A DEBUG build's dump ends with its ASSERT line: judged at once.
#[tokio::test(start_paused = true)]
async fn a_debug_dump_is_judged_at_its_assert() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::Console(EXCEPTION)),
            (
                1.2,
                Act::Console("PC 0x0000BF56D8A4 (0x0000BF566000+0x000078A4) [ 1] DxeCore.dll\r\n"),
            ),
            (
                1.3,
                Act::Console(
                    "ASSERT [ArmCpuDxe] /build/ArmPkg/Library/DefaultExceptionHandlerLib/AArch64/DefaultExceptionHandler.c(333): ((BOOLEAN)(0==1))\r\n",
                ),
            ),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(None, 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_at(t, 1.3);
    let x = r.session.classifier.current().findings[d.finding.unwrap()]
        .exception
        .clone()
        .unwrap();
    assert!(x.assert.is_some());
    assert_eq!(x.backtrace.len(), 1);
}

/// A DEBUG build also prints its banner twice, then its dump in the same burst: the body that
/// follows the second banner within `dump_settle` is read whole, and the ASSERT ends it.
#[tokio::test(start_paused = true)]
async fn a_debug_dump_after_two_banners_is_read_whole() {
    let mut r = rig(
        vec![
            (0.5, Act::Console(BANNER)),
            (1.0, Act::Console(EXCEPTION)),
            (1.001, Act::Console(EXCEPTION)),
            (1.03, Act::Console("PC 0x0000BF56D8A4 (0x0000BF566000+0x000078A4) [ 1] DxeCore.dll\r\n")),
            (1.04, Act::Console(" ESR 0x02000000          FAR 0x0000000000000000\r\n")),
            (1.3, Act::Console("  X0 0x0000000000000000   X1 0x0000000000000001\r\n")),
            (
                1.35,
                Act::Console(
                    "ASSERT [ArmCpuDxe] /build/ArmPkg/Library/DefaultExceptionHandlerLib/AArch64/DefaultExceptionHandler.c(333): ((BOOLEAN)(0==1))\r\n",
                ),
            ),
        ],
        Timings::default(),
    )
    .await;
    let (d, t, _) = decided(&mut r.session, spec(None, 100, 30)).await;
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_at(t, 1.35);
    let x = r.session.classifier.current().findings[d.finding.unwrap()]
        .exception
        .clone()
        .unwrap();
    assert_eq!(x.backtrace.len(), 1);
    assert_eq!(x.esr.as_deref(), Some("0x02000000"));
    assert_eq!(
        x.registers.get("X1").map(String::as_str),
        Some("0x0000000000000001")
    );
    assert!(x.assert.is_some());
}
