//! What a run leaves behind: `result.json` (schema in the README), written atomically, plus the
//! helpers that describe files and the host in it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::classify::{Boot, Decision, Finding, Milestone};
use crate::core::verdict::{Stage, Target, Verdict};
use crate::engine::supervise::ExitInfo;
use crate::sys::fsx;
pub use crate::sys::host::HostInfo;

/// The version of `result.json`'s layout.
pub const RESULT_SCHEMA: &str = "bootwatch.result/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// The run is in progress (or the harness was killed with SIGKILL and never finished it).
    Running,
    /// A verdict was reached and QEMU is gone.
    Complete,
    /// The harness was interrupted (SIGINT/SIGTERM) before a verdict.
    Interrupted,
}

/// A file the run used: where, how big, and its sha256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileInfo {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl FileInfo {
    /// Hashes the file (blocking; call from a blocking thread for big files). Unchanged files
    /// are read once per content (see `sys::fsx::hash_file_cached`).
    pub fn of(path: &Path) -> std::io::Result<FileInfo> {
        let d = fsx::hash_file_cached(path, fsx::hash_cache_dir().as_deref())?;
        Ok(FileInfo {
            path: path.to_path_buf(),
            size: d.size,
            sha256: d.sha256,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QemuInfo {
    pub binary: PathBuf,
    /// From QMP's greeting, e.g. "7.2.22".
    pub version: Option<String>,
    /// QEMU's package string from `query-version`, e.g. "Debian 1:7.2+dfsg-7+deb12u18+b3".
    pub package: Option<String>,
    pub exit: Option<ExitInfo>,
    /// CPU seconds QEMU used (user + system) up to the end of the watch, when known.
    pub cpu_s: Option<f64>,
    /// How long the QEMU process ran (start to exit), seconds.
    #[serde(default)]
    pub wall_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirmwareInfo {
    pub code: Option<FileInfo>,
    /// The template the run's vars store was copied from.
    pub vars_template: Option<FileInfo>,
    /// The run's own vars store as the run left it.
    pub vars: Option<FileInfo>,
    /// From the firmware's banner, when it printed one.
    pub banner_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Files {
    pub serial_raw: String,
    pub console_log: String,
    pub qmp_jsonl: String,
    pub qemu_stderr: String,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            serial_raw: "serial.raw".into(),
            console_log: "console.log".into(),
            qmp_jsonl: "qmp.jsonl".into(),
            qemu_stderr: "qemu.stderr".into(),
        }
    }
}

/// `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub schema: String,
    pub run_id: String,
    pub status: RunStatus,
    pub verdict: Verdict,
    pub stage: Stage,
    pub before_grub: bool,
    pub reason: String,
    pub exit_code: u8,
    /// Seconds from QEMU's start to the verdict.
    pub time_to_verdict_s: Option<f64>,
    /// Seconds from QEMU's start to the line that decided (for a fatal finding).
    pub evidence_t_s: Option<f64>,
    pub target: Option<Target>,
    pub timeout_s: f64,
    pub silence_s: f64,
    pub started_at: String,
    pub duration_s: f64,
    pub host: HostInfo,
    pub accelerator: String,
    pub machine: String,
    pub cpu: String,
    pub smp: u32,
    pub memory_mib: u32,
    pub qemu: QemuInfo,
    pub firmware: FirmwareInfo,
    pub disks: Vec<FileInfo>,
    pub argv: Vec<String>,
    pub command_line: String,
    /// The decisive finding (also in `findings`).
    pub finding: Option<Finding>,
    /// The last boot's timeline and findings (every boot is in `boots`).
    pub timeline: Vec<Milestone>,
    pub findings: Vec<Finding>,
    pub boots: Vec<Boot>,
    pub last_line: String,
    pub console_lines: u64,
    pub console_bytes: u64,
    /// QMP events received, in order: name and time.
    pub events: Vec<EventRecord>,
    /// CPU seconds the harness process used in all (start-up, hashing inputs, writing results).
    pub harness_cpu_s: Option<f64>,
    /// CPU seconds the harness spent watching the boot (console, QMP, classification): the
    /// overhead a boot pays, to compare with `qemu.cpu_s`.
    pub harness_watch_cpu_s: Option<f64>,
    pub files: Files,
    /// For `harness-error`: what went wrong.
    pub error: Option<String>,
    /// For image boots: the image, its overlay and the provisioned user.
    pub provision: Option<Provision>,
    /// Commands run on the serial shell (`--login`).
    #[serde(default)]
    pub commands: Vec<crate::engine::shell::CommandResult>,
    pub bootwatch_version: String,
}

/// How an image boot was provisioned. The password is random per run and recorded so a person
/// can log in to the same overlay later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provision {
    pub image: String,
    pub base: PathBuf,
    pub base_sha256: String,
    pub overlay: PathBuf,
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub name: String,
    pub t_s: f64,
    #[serde(skip_serializing_if = "serde_json::Value::is_null", default)]
    pub data: serde_json::Value,
}

impl RunResult {
    pub fn apply_decision(&mut self, d: &Decision, boot: &Boot) {
        self.verdict = d.verdict;
        self.stage = d.stage;
        self.before_grub = d.before_grub;
        self.reason = d.reason.clone();
        self.exit_code = d.exit_code;
        self.finding = d.finding.map(|i| boot.findings[i].clone());
        self.evidence_t_s = self.finding.as_ref().and_then(|f| f.t_s);
    }
}

pub use crate::sys::fsx::write_json_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_info_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let fi = FileInfo::of(&p).unwrap();
        assert_eq!(fi.size, 3);
        assert_eq!(
            fi.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
