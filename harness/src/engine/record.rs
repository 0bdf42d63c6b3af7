//! What a case leaves behind: `result.json` per QEMU session and `case.json` as their aggregate
//! (schemas in the README), both embedding one [`Outcome`] and written atomically, plus the
//! helpers that describe files and the host in them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::core::classify::{Boot, Decision, Finding, Milestone};
use crate::core::verdict::{Outcome, Target};
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
    /// bootwatch could not run the guest (verdict `harness-error`; `error` says why).
    Error,
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
    /// `skip`: the boot manager's countdown was skipped (`-boot menu=on,splash-time=0`);
    /// `default`: the firmware waited as it does on its own.
    #[serde(default)]
    pub wait: Option<String>,
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
    /// The case this session belongs to, and which of its sessions it is (1-based).
    #[serde(default)]
    pub case: String,
    #[serde(default = "one")]
    pub session: usize,
    pub status: RunStatus,
    /// The verdict of the session's last judged boot (`time_to_verdict_s` from that boot's
    /// start: power-on or reset).
    #[serde(flatten)]
    pub outcome: Outcome,
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
    /// Commands run on the serial shell in this session.
    #[serde(default)]
    pub commands: Vec<CommandResult>,
    /// What the machine showed when the guest went silent, before it was killed (see
    /// `engine::session::HangEvidence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang: Option<HangEvidence>,
    pub bootwatch_version: String,
}

/// Taken from a guest judged silent, just before QEMU is stopped: QMP `query-status`, the
/// vCPU registers (`info registers` through the monitor, and the system registers it does not
/// print through QEMU's gdbstub), a screendump and the console's last bytes, each in its own
/// file of the session's directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HangEvidence {
    /// `query-status`'s answer (`status`: `running`, `paused`, `guest-panicked`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// Registers by name, hex: `PC`, `SP`, `PSTATE`, `X00`..`X30` as `info registers` printed
    /// them, and `ELR_EL1`, `ESR_EL1`, `FAR_EL1`, `SPSR_EL1`, `VBAR_EL1` (and the EL2 ones when
    /// the vCPU has EL2) read through the gdbstub; later vCPUs' as `CPUn.NAME`.
    #[serde(default)]
    pub registers: BTreeMap<String, String>,
    /// Files written (relative to the session's directory): `hang/query-status.json`,
    /// `hang/registers.txt`, `hang/screendump.ppm`, `hang/console-tail.txt`.
    pub files: Vec<String>,
    /// What could not be taken, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// How long taking it took.
    pub duration_s: f64,
}

/// How an image boot was provisioned. The user's password is random per case and never in a
/// record (records are meant to be shared): when the case keeps its disks, it is in
/// `secrets.json` beside them (mode 0600), so a person can log in to the kept overlay later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provision {
    pub image: String,
    pub base: PathBuf,
    pub base_sha256: String,
    pub overlay: PathBuf,
    pub user: String,
    /// `secrets.json` (relative to the case directory) when the case kept its disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<PathBuf>,
    /// Where a vendor image's file came from: its URL and file, the checksum file and, for a
    /// newest-build entry, the build it resolved to; the format qemu-img found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::inputs::images::ImageSource>,
}

/// Where one input of a case came from: the file, its hash, and the provider, package, URL or
/// source commit that made it (what a bundle's reader needs to get the same bytes again).
/// Providers fill what they know when they resolve an input; the case completes `sha256` and
/// `size` from the files it booted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputRecord {
    /// `qemu`, `firmware-code`, `vars-template`, `disk` or `image`.
    pub role: String,
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The provider's spelling: `host`, `debian:bullseye`, `debian:2026.08/strictnx`,
    /// `fixture:crash`, `image:debian-12-local`, `path:FILE`, `source:DIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The upstream version (`5.2.0`, `2026.08`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The Debian package the file came from and its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    /// The Debian suite whose index listed the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// Where the bytes were downloaded from (a package's pool path on the mirror, an image URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The OpenPGP-signed Release that vouched for the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_release: Option<String>,
    /// SHA256 of the `.deb` the file was unpacked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deb_sha256: Option<String>,
    /// A source build's commit (`git rev-parse HEAD` of its tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    /// Anything else worth knowing (a local recipe's hash, the mirror an image was built from).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl InputRecord {
    pub fn new(role: &str, path: &Path) -> InputRecord {
        InputRecord {
            role: role.into(),
            path: path.to_path_buf(),
            ..Default::default()
        }
    }
}

/// `secrets.json`: what a person needs to log in to a kept overlay (mode 0600, not to be shared).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secrets {
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

fn one() -> usize {
    1
}

/// A command run on the serial shell, with its output and exit code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResult {
    pub command: String,
    pub exit_code: i32,
    pub output: String,
    pub duration_s: f64,
}

impl RunResult {
    /// Takes a boot's decision as the session's outcome.
    pub fn apply_decision(&mut self, d: &Decision, boot: &Boot, t_s: f64) {
        self.outcome = outcome_of(d, boot, t_s);
        self.finding = d.finding.map(|i| boot.findings[i].clone());
        self.evidence_t_s = self.finding.as_ref().and_then(|f| f.t_s);
    }
}

/// A decision as an outcome; `t_s` is when it was taken (seconds since QEMU started), the time
/// to verdict counts from the boot's own start.
pub fn outcome_of(d: &Decision, boot: &Boot, t_s: f64) -> Outcome {
    Outcome {
        verdict: d.verdict,
        stage: d.stage,
        before_grub: d.before_grub,
        reason: d.reason.clone(),
        exit_code: d.exit_code,
        time_to_verdict_s: Some(crate::engine::qmp::round_ms(
            t_s - boot.start_t_s.unwrap_or(0.0),
        )),
    }
}

/// The version of `case.json`'s layout. 2: `status`; the image fields moved into `provision`;
/// session 1's files are in the case directory itself.
pub const CASE_SCHEMA: &str = "bootwatch.case/2";

/// `case.json`: one case (a machine and its steps), aggregating its sessions' `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseRecord {
    pub schema: String,
    pub case: String,
    pub status: RunStatus,
    /// The scenario the steps came from, when they came from one.
    pub scenario: Option<String>,
    pub image: Option<String>,
    /// The update repository served for the upgrade (its label).
    pub update: Option<String>,
    pub workarounds: Vec<String>,
    /// The case's verdict: that of the last judged boot (after a workaround: the boot after it).
    #[serde(flatten)]
    pub outcome: Outcome,
    pub steps: Vec<StepRecord>,
    /// Every judged boot of every session.
    pub boots: Vec<BootVerdict>,
    /// Package lists by label (`before`, `after`).
    pub packages: BTreeMap<String, BTreeMap<String, String>>,
    pub package_diff: Vec<PackageChange>,
    /// Boot-chain packages that changed, when the judged boot failed.
    pub suspects: Vec<String>,
    pub restore: Option<RestoreRecord>,
    pub sessions: Vec<SessionRecord>,
    pub provision: Option<Provision>,
    pub firmware_code: Option<FileInfo>,
    /// The case's firmware variable store (kept across its sessions), when it has one.
    pub vars: Option<PathBuf>,
    /// Every input the case booted (QEMU, firmware code, vars template, disks, image) with its
    /// hash and provenance.
    #[serde(default)]
    pub inputs: Vec<InputRecord>,
    /// The variable store as the case started it and as it left it, decoded (boot entries,
    /// `BootOrder`), and what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars_change: Option<crate::core::varstore::VarsChange>,
    /// Whether the case saved its login prompt for later cases or started from a saved one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_state: Option<crate::engine::login_state::LoginStateRecord>,
    pub host: HostInfo,
    pub started_at: String,
    pub duration_s: f64,
    pub error: Option<String>,
    pub bootwatch_version: String,
}

/// One step as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    /// `ok`, `failed` or `skipped`.
    pub status: String,
    pub started_s: f64,
    pub duration_s: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandResult>,
}

/// A package whose version changed between two snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One judged boot of the case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootVerdict {
    pub session: usize,
    pub boot: Boot,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A QEMU session of the case: where its files are (relative to the case directory: `.` for
/// session 1, `session-N` after it) and what ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub dir: PathBuf,
    pub command_line: String,
    pub qemu_version: Option<String>,
    pub qemu_package: Option<String>,
}

/// The restore-bootloader workaround as applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// ESP files put back from the base image, with their sizes.
    pub files: Vec<(String, u64)>,
    pub duration_s: f64,
    /// The disk as the failed boot left it (the case's overlay, renamed before the files were
    /// put back into a new overlay on top of it), for `explain` and `inspect chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_disk: Option<std::path::PathBuf>,
}

/// File name, in a case's directory, of the disk as a failed boot left it when a workaround
/// then changed the case's overlay (see [`RestoreRecord::failed_disk`]).
pub const FAILED_DISK_NAME: &str = "overlay-before-restore.qcow2";

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
