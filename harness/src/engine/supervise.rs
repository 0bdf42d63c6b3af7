//! The only place bootwatch spawns QEMU. QEMU runs in its own process group, dies with the
//! harness (parent-death signal on Linux), and is killed with its whole group when the
//! `Qemu` value is dropped: no QEMU of ours outlives a run.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A running QEMU.
pub struct Qemu {
    child: tokio::process::Child,
    pid: Pid,
    started: Instant,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

/// How QEMU ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signal: Option<i32>,
    /// True when the harness killed it (after the verdict, or on interruption).
    pub killed_by_harness: bool,
}

impl ExitInfo {
    pub fn from_status(status: ExitStatus, killed_by_harness: bool) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
            killed_by_harness,
        }
    }

    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => {
                let name = Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                format!("killed by signal {s} ({name})")
            }
            (None, None) => "unknown status".into(),
        }
    }
}

impl Qemu {
    /// Spawns `program args`, stdout and stderr going to `stderr_path`.
    pub fn spawn(
        program: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
        stderr_path: &Path,
    ) -> std::io::Result<Qemu> {
        let err = File::create(stderr_path)?;
        let out = err.try_clone()?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        // Its own process group, and SIGKILL from the kernel when the harness dies.
        crate::sys::proc::contain(&mut cmd);
        // What QEMU creates (the console and QMP sockets) is its owner's only, whatever the
        // harness's umask: QMP is full control of the VM.
        // SAFETY: umask is async-signal-safe and the only call between fork and exec here.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid =
            Pid::from_raw(child.id().expect("a child that was just spawned has a pid") as i32);
        Ok(Qemu {
            child,
            pid,
            started: Instant::now(),
            stderr_path: stderr_path.to_path_buf(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// When QEMU was started: the zero of every timestamp of the run.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Seconds since QEMU was started.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Non-blocking: has QEMU exited?
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for QEMU to exit (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }

    /// Waits up to `grace` for QEMU to exit, then kills its whole process group and reaps it.
    /// Returns the exit status and whether the harness had to kill it.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<(ExitStatus, bool)> {
        if let Ok(Ok(s)) = tokio::time::timeout(grace, self.wait()).await {
            // Reaped: its pid (and group id) may be reused now, so no kill after this point.
            return Ok((s, false));
        }
        self.kill_group();
        let s = self.wait().await?;
        Ok((s, true))
    }

    /// SIGKILL to QEMU's process group (QEMU and anything it started).
    pub fn kill_group(&self) {
        // ESRCH (already gone) is fine.
        let _ = killpg(self.pid, Signal::SIGKILL);
    }

    /// What QEMU printed (for error messages), at most the last 4 KiB.
    pub fn stderr_tail(&self) -> String {
        stderr_tail(&self.stderr_path)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill_group();
        }
    }
}

/// The last 4 KiB of a file, lossily decoded and trimmed.
pub fn stderr_tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail).trim().to_string()
}
