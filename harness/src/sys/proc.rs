//! The one way bootwatch runs an external tool (mmdebstrap, mke2fs, qemu-img, `qemu --version`,
//! dpkg-query, configure and make). QEMU itself is started by [`crate::engine::supervise`],
//! which shares [`contain`] with this module.
//!
//! Every tool runs in its own process group, with its standard input closed and its output
//! appended to a log file ([`Tool::log_to`]) or captured ([`Tool::run`] without a log, for short
//! queries such as `--version`). It ends in one of four ways, and in each one nothing of it is
//! left running:
//!
//! - it exits: whatever it left behind in its group is killed, then it is reaped;
//! - its [`Tool::timeout`] passes, or its [`Tool::cancel_on`] token fires: SIGTERM to the group,
//!   up to [`Tool::grace`] for it to exit, then SIGKILL to the group;
//! - the [`Running`] value (or the future of [`Tool::run`]) is dropped: SIGKILL to the group;
//! - bootwatch dies: the kernel sends the tool SIGKILL (Linux's parent-death signal).
//!
//! The group is always signalled before its leader is reaped: the leader is first waited for
//! with `waitid(WNOWAIT)`, which leaves it a zombie, and a zombie's pid (the group's id) cannot
//! be given to another process. So a group id is never signalled after the kernel may have
//! reused it, however quickly pids wrap (32768 of them on many hosts).
//!
//! # The parent-death signal follows the spawning *thread*
//!
//! `PR_SET_PDEATHSIG` fires when the thread that forked the child exits, not the process. So a
//! tool must be spawned from a thread that lives as long as bootwatch waits for it: a runtime
//! thread (where [`Tool::run`] and [`Tool::spawn`] run when awaited or called from async code),
//! never a `spawn_blocking` thread, which tokio retires after 10 s idle and which would take the
//! tool with it.
//!
//! # Why not the `process-wrap` crate
//!
//! `process-wrap` (10.x) was read before writing this. For Unix it offers a process group
//! (`Command::process_group(0)`, which std has), SIGKILL to the group on request, and a
//! `KillOnDrop` that is tokio's own `kill_on_drop`: it kills the leader only, not the group. It
//! has no grace period, timeout, cancellation, parent-death signal, log file or error with the
//! log's tail, and its group `wait` reaps the leader before signalling, which is the pid-reuse
//! race this module avoids. What it would save is two calls; what we need would still be
//! written on top of it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

/// How long a tool may take to exit after SIGTERM before its group gets SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Lines of a log (or of captured stderr) quoted in an error.
const TAIL_LINES: usize = 30;
/// Bytes of a log (or of captured stderr) read for an error.
const TAIL_BYTES: u64 = 8192;

/// An external tool to run: program, arguments, environment, working directory, where its
/// output goes, and when it must be stopped.
#[derive(Debug, Clone)]
pub struct Tool {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    log: Option<PathBuf>,
    timeout: Option<Duration>,
    grace: Duration,
    cancel: Option<CancellationToken>,
}

/// How a tool ended, with its output when it was captured.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    /// Empty when the output went to a log file.
    pub stdout: Vec<u8>,
    /// Empty when the output went to a log file.
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Output {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Why a tool did not succeed. Each message quotes the command line; a tool that ran and failed
/// also quotes the end of its log (or of its captured output).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot start `{command}`{}: {source}", in_dir(.cwd.as_deref()))]
    Spawn {
        command: String,
        cwd: Option<PathBuf>,
        source: io::Error,
    },
    #[error("`{command}`{} failed ({status}){}", in_dir(.cwd.as_deref()), with_tail(.log.as_deref(), .tail))]
    Failed {
        command: String,
        cwd: Option<PathBuf>,
        status: ExitStatus,
        log: Option<PathBuf>,
        tail: String,
    },
    #[error("`{command}`{} did not finish within {} s and was stopped{}", in_dir(.cwd.as_deref()), .after.as_secs_f64(), with_tail(.log.as_deref(), .tail))]
    TimedOut {
        command: String,
        cwd: Option<PathBuf>,
        after: Duration,
        log: Option<PathBuf>,
        tail: String,
    },
    /// Only the program is named: the reason is not in the command line.
    #[error("`{program}` was stopped: cancelled")]
    Cancelled { program: String },
    #[error("`{command}`: {source}")]
    Io { command: String, source: io::Error },
}

impl ToolError {
    /// True when the tool was stopped because its cancellation token fired.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, ToolError::Cancelled { .. })
    }
}

fn in_dir(cwd: Option<&Path>) -> String {
    cwd.map(|d| format!(" (in {})", d.display()))
        .unwrap_or_default()
}

fn with_tail(log: Option<&Path>, tail: &str) -> String {
    match (log, tail.is_empty()) {
        (_, true) => String::new(),
        (Some(log), false) => format!("; the end of {}:\n{tail}", log.display()),
        (None, false) => format!(":\n{tail}"),
    }
}

impl Tool {
    pub fn new(program: impl AsRef<OsStr>) -> Tool {
        Tool {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            log: None,
            timeout: None,
            grace: DEFAULT_GRACE,
            cancel: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Tool {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable (the rest of bootwatch's environment is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Tool {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Tool {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Appends standard output and error to `log` (created if missing), after a `$ COMMAND`
    /// line. Without it, [`Tool::run`] captures both.
    pub fn log_to(mut self, log: impl AsRef<Path>) -> Tool {
        self.log = Some(log.as_ref().to_owned());
        self
    }

    /// Stops the tool (SIGTERM, grace, SIGKILL) when it runs longer than `limit`.
    pub fn timeout(mut self, limit: Duration) -> Tool {
        self.timeout = Some(limit);
        self
    }

    /// How long the tool may take to exit after SIGTERM ([`DEFAULT_GRACE`] unless set).
    pub fn grace(mut self, grace: Duration) -> Tool {
        self.grace = grace;
        self
    }

    /// Stops the tool (SIGTERM, grace, SIGKILL) when `token` is cancelled; [`Tool::run`] then
    /// returns [`ToolError::Cancelled`].
    pub fn cancel_on(mut self, token: &CancellationToken) -> Tool {
        self.cancel = Some(token.clone());
        self
    }

    /// The command as a shell would take it: explicitly set variables, program, arguments.
    pub fn command_line(&self) -> String {
        let env = self.env.iter().map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            quote(&kv)
        });
        let words = std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(quote);
        env.chain(words).collect::<Vec<_>>().join(" ")
    }

    /// Starts the tool with its output going to `stdout` and `stderr`. Call it from async code
    /// (see the module documentation on the parent-death signal).
    fn spawn_to(&self, stdout: Stdio, stderr: Stdio) -> Result<Running, ToolError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        contain(&mut cmd);
        let child = cmd.spawn().map_err(|source| ToolError::Spawn {
            command: self.command_line(),
            cwd: self.cwd.clone(),
            source,
        })?;
        Ok(Running::new(child))
    }

    /// Starts the tool with its output going to its log (or nowhere without one), for callers
    /// that manage the process themselves. Call it from async code.
    pub fn spawn(&self) -> Result<Running, ToolError> {
        match &self.log {
            Some(log) => {
                let (out, err) = self.open_log(log)?;
                self.spawn_to(out.into(), err.into())
            }
            None => self.spawn_to(Stdio::null(), Stdio::null()),
        }
    }

    fn cancelled(&self) -> ToolError {
        ToolError::Cancelled {
            program: Path::new(&self.program)
                .file_name()
                .unwrap_or(&self.program)
                .to_string_lossy()
                .into_owned(),
        }
    }

    fn io_error(&self, source: io::Error) -> ToolError {
        ToolError::Io {
            command: self.command_line(),
            source,
        }
    }

    /// The log opened for appending, with the command line written first; one handle for
    /// stdout and one for stderr.
    fn open_log(&self, log: &Path) -> Result<(File, File), ToolError> {
        let opened = (|| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            writeln!(
                f,
                "$ {}{}",
                self.command_line(),
                in_dir(self.cwd.as_deref())
            )?;
            let err = f.try_clone()?;
            Ok((f, err))
        })();
        opened.map_err(|e: io::Error| {
            self.io_error(io::Error::new(
                e.kind(),
                format!("opening the log {}: {e}", log.display()),
            ))
        })
    }

    /// Runs the tool to its end. Success is exit status 0; anything else is an error quoting
    /// the command and the end of its log (or of its captured stderr, else stdout).
    pub async fn run(self) -> Result<Output, ToolError> {
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(self.cancelled());
        }
        let started = Instant::now();
        let (mut running, captured) = match &self.log {
            Some(log) => {
                let (out, err) = self.open_log(log)?;
                (self.spawn_to(out.into(), err.into())?, None)
            }
            None => {
                let files = (|| -> io::Result<_> {
                    let out = tempfile::tempfile()?;
                    let err = tempfile::tempfile()?;
                    Ok((out.try_clone()?, err.try_clone()?, out, err))
                })()
                .map_err(|e| self.io_error(e))?;
                let (out_w, err_w, out, err) = files;
                (self.spawn_to(out_w.into(), err_w.into())?, Some((out, err)))
            }
        };
        let deadline = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match &self.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        enum End {
            Exited,
            TimedOut,
            Cancelled,
        }
        let end = tokio::select! {
            biased;
            r = running.leader_exited() => {
                r.map_err(|e| self.io_error(e))?;
                End::Exited
            }
            _ = cancelled => End::Cancelled,
            _ = deadline => End::TimedOut,
        };
        let status = match end {
            End::Exited => running.wait().await,
            End::TimedOut | End::Cancelled => running.stop(self.grace).await,
        }
        .map_err(|e| self.io_error(e))?;
        let (stdout, stderr) = match captured {
            Some((mut out, mut err)) => (read_all(&mut out), read_all(&mut err)),
            None => (Vec::new(), Vec::new()),
        };
        let tail = || match &self.log {
            Some(log) => file_tail(log),
            None if !stderr.is_empty() => text_tail(&stderr),
            None => text_tail(&stdout),
        };
        match end {
            End::Cancelled => Err(self.cancelled()),
            End::TimedOut => Err(ToolError::TimedOut {
                command: self.command_line(),
                cwd: self.cwd.clone(),
                after: self.timeout.unwrap_or_default(),
                log: self.log.clone(),
                tail: tail(),
            }),
            End::Exited if !status.success() => Err(ToolError::Failed {
                command: self.command_line(),
                cwd: self.cwd.clone(),
                status,
                log: self.log.clone(),
                tail: tail(),
            }),
            End::Exited => Ok(Output {
                status,
                stdout,
                stderr,
                elapsed: started.elapsed(),
            }),
        }
    }
}

fn quote(w: &OsStr) -> String {
    let w = w.to_string_lossy();
    shlex::try_quote(&w)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", w.replace('\0', "")))
}

fn read_all(f: &mut File) -> Vec<u8> {
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(0)).is_ok() {
        let _ = f.read_to_end(&mut bytes);
    }
    bytes
}

/// The last lines of a file (for error messages).
pub fn file_tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
            .is_ok()
        {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    text_tail(&bytes)
}

fn text_tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES as usize);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Puts `cmd` in a process group of its own and, on Linux, has the kernel SIGKILL it when the
/// thread that spawns it exits (see the module documentation). Shared with the QEMU supervisor.
pub(crate) fn contain(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // The parent may have died before the prctl: then nobody would kill us.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
    }
}

/// A started tool, the leader of its own process group. Dropping it before it was waited for
/// kills the whole group.
#[derive(Debug)]
pub struct Running {
    child: tokio::process::Child,
    pgid: Pid,
    /// Linux: a blocking `waitid(WNOWAIT)` that returns once the leader is a zombie.
    #[cfg(target_os = "linux")]
    exit_watch: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// The leader has exited (a zombie, or reaped).
    exited: bool,
    /// The leader was reaped: its group id may belong to someone else from now on.
    status: Option<ExitStatus>,
}

impl Running {
    fn new(child: tokio::process::Child) -> Running {
        let pid = child.id().expect("a child that was just spawned has a pid") as i32;
        Running {
            child,
            pgid: Pid::from_raw(pid),
            #[cfg(target_os = "linux")]
            exit_watch: Some(tokio::task::spawn_blocking(move || {
                use nix::sys::wait::{Id, WaitPidFlag, waitid};
                loop {
                    match waitid(
                        Id::Pid(Pid::from_raw(pid)),
                        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
                    ) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        // Reaped by someone else (tokio's orphan reaper after a drop).
                        Err(nix::errno::Errno::ECHILD) => return Ok(()),
                        Err(e) => return Err(io::Error::from(e)),
                        Ok(_) => return Ok(()),
                    }
                }
            })),
            exited: false,
            status: None,
        }
    }

    /// The leader's pid, which is also the group's id.
    pub fn id(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// Waits until the leader has exited. On Linux it is not reaped yet, so its group id is
    /// still ours to signal. Cancel-safe.
    async fn leader_exited(&mut self) -> io::Result<()> {
        if self.exited {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        if let Some(watch) = &mut self.exit_watch {
            watch.await.map_err(io::Error::other)??;
            self.exit_watch = None;
        }
        #[cfg(not(target_os = "linux"))]
        {
            let s = self.child.wait().await?;
            self.status = Some(s);
        }
        self.exited = true;
        Ok(())
    }

    /// Sends `signal` to the whole group, unless the leader was reaped (then the id may have
    /// been reused).
    fn signal_group(&self, signal: Signal) {
        if self.status.is_none() {
            // ESRCH (the whole group is gone) is fine.
            let _ = killpg(self.pgid, signal);
        }
    }

    async fn reap(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }

    /// Waits for the tool to exit, kills whatever it left running in its group, and returns
    /// its exit status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.leader_exited().await?;
        self.signal_group(Signal::SIGKILL);
        self.reap().await
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group;
    /// returns the leader's exit status.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal_group(Signal::SIGTERM);
        let _ = tokio::time::timeout(grace, self.leader_exited()).await;
        self.signal_group(Signal::SIGKILL);
        self.leader_exited().await?;
        self.reap().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal_group(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is a live process (a zombie counts as gone: it runs nothing, and this
    /// machine's init may be slow to reap orphans).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                !matches!(state, Some("Z") | Some("X"))
            }
        }
    }

    /// Asserts that every pid in `pids` is gone within two seconds. Survivors are killed
    /// before the test fails, so a failure does not leave the runtime waiting for them.
    async fn assert_gone(pids: &[u32]) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) && pids.iter().any(|p| alive(*p)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let survivors: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        for p in &survivors {
            let _ = nix::sys::signal::kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
        }
        assert!(survivors.is_empty(), "{survivors:?} survived");
    }

    /// A shell that starts `sleep` in the background, writes its own pid and the sleep's, then
    /// waits; it ignores SIGTERM when `stubborn`, so only the SIGKILL after the grace ends it.
    fn shell_with_child(dir: &Path, stubborn: bool) -> (Tool, PathBuf) {
        let pidfile = dir.join("pids");
        let trap = if stubborn { "trap '' TERM; " } else { "" };
        let script = format!(
            "{trap}sleep 1000 & echo $$ $! > {}.tmp; mv {0}.tmp {0}; wait",
            shlex::try_quote(pidfile.to_str().unwrap()).unwrap()
        );
        (Tool::new("sh").args(["-c", &script]), pidfile)
    }

    /// The pids a shell of [`shell_with_child`] wrote.
    async fn pids(pidfile: &Path) -> Vec<u32> {
        for _ in 0..250 {
            if let Ok(s) = std::fs::read_to_string(pidfile) {
                return s.split_whitespace().map(|p| p.parse().unwrap()).collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the shell never wrote {}", pidfile.display());
    }

    #[tokio::test]
    async fn captured_output_and_environment() {
        let out = Tool::new("sh")
            .args(["-c", "echo \"$GREETING\"; pwd; echo oops >&2"])
            .env("GREETING", "hello")
            .current_dir("/tmp")
            .run()
            .await
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout_text(), "hello\n/tmp\n");
        assert_eq!(out.stderr, b"oops\n");
    }

    #[tokio::test]
    async fn a_failing_command_quotes_the_command_line_and_the_logs_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        std::fs::write(&log, "earlier output\n").unwrap();
        let script = "for i in $(seq 1 100); do echo line $i; done; echo 'it broke' >&2; exit 3";
        let err = Tool::new("sh")
            .args(["-c", script])
            .log_to(&log)
            .run()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ToolError::Failed { .. }), "{msg}");
        assert!(msg.contains("`sh -c 'for i in"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains(&log.display().to_string()), "{msg}");
        assert!(msg.ends_with("line 100\nit broke"), "{msg}");
        assert!(msg.contains("line 72\n"), "{msg}");
        assert!(!msg.contains("line 71\n"), "only the tail: {msg}");
        // The log keeps what was there, then the command line, then the output.
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("earlier output\n$ sh -c "), "{text}");

        // Captured: the tail is stderr's.
        let err = Tool::new("sh")
            .args(["-c", "echo out; echo 'no such disk' >&2; exit 1"])
            .run()
            .await
            .unwrap_err();
        assert!(
            err.to_string().ends_with("(exit status: 1):\nno such disk"),
            "{err}"
        );

        let err = Tool::new("/nonexistent/tool")
            .arg("x")
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("cannot start `/nonexistent/tool x`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_timeout_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let (tool, pidfile) = shell_with_child(dir.path(), false);
        let t = Instant::now();
        let run = tokio::spawn(tool.timeout(Duration::from_millis(500)).run());
        let pids = pids(&pidfile).await;
        let err = run.await.unwrap().unwrap_err();
        assert_gone(&pids).await;
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("within 0.5 s"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn cancelling_kills_the_group_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        // The shell ignores SIGTERM: the SIGKILL after the grace must end it.
        let (tool, pidfile) = shell_with_child(dir.path(), true);
        let token = CancellationToken::new();
        let run = tokio::spawn(
            tool.cancel_on(&token)
                .grace(Duration::from_millis(300))
                .run(),
        );
        let pids = pids(&pidfile).await;
        let t = Instant::now();
        token.cancel();
        let err = run.await.unwrap().unwrap_err();
        let took = t.elapsed();
        assert_gone(&pids).await;
        assert!(err.is_cancelled(), "{err}");
        assert_eq!(err.to_string(), "`sh` was stopped: cancelled");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // Already cancelled: nothing is started.
        let marker = dir.path().join("started");
        let err = Tool::new("touch")
            .arg(&marker)
            .cancel_on(&token)
            .run()
            .await
            .unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn dropping_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let (tool, pidfile) = shell_with_child(dir.path(), true);
        let running = tool.spawn().unwrap();
        let pids = pids(&pidfile).await;
        assert_eq!(pids[0], running.id());
        assert!(pids.iter().all(|p| alive(*p)));
        drop(running);
        assert_gone(&pids).await;

        // The same when the future of `run` is dropped half-way.
        std::fs::remove_file(&pidfile).unwrap();
        let run = tokio::spawn(tool.run());
        let pids = self::pids(&pidfile).await;
        run.abort();
        let _ = run.await;
        assert_gone(&pids).await;
    }

    #[tokio::test]
    async fn what_a_tool_leaves_behind_in_its_group_is_killed_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pids");
        let script = format!(
            "sleep 1000 & echo $! > {}",
            shlex::try_quote(pidfile.to_str().unwrap()).unwrap()
        );
        let out = Tool::new("sh").args(["-c", &script]).run().await.unwrap();
        assert!(out.status.success());
        assert_gone(&pids(&pidfile).await).await;
    }
}
