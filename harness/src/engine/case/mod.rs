//! The one engine every boot goes through. A *case* is a machine (QEMU, firmware, disks) and a
//! list of steps: `bootwatch boot` is the case `[boot]` (`--login` adds a login and a few
//! commands), a scenario file, the demo's cases, a matrix cell, an image's upgraded state and a
//! bisect step are cases too.
//!
//! [`check`] turns a [`CaseRequest`] into a [`Case`] before anything starts (exit code 2 for what
//! it finds). [`run`] returns `Err` only when not even the case's results directory could be
//! made; from then on every way a case can end is written down: `case.json` and one
//! `result.json` per QEMU session (session 1 in the case directory, later ones in
//! `session-N/`), with status `error` and the message when bootwatch could not run the guest.
//! A guest that fails is an outcome, never an `Err`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::core::event::EventSink;
use crate::core::launch::{
    self, Accel, Disk, DiskFormat, FirmwareLoad, FirmwareWait, Forward, PFLASH_SIZE, QemuExec,
    VmConfig,
};
use crate::engine::disk;
use crate::engine::limits;
use crate::engine::record::{CaseRecord, RunResult};
use crate::engine::session::Timings;
use crate::engine::step::{Step, check_steps};
use crate::inputs::images::catalog::{GuestTraits, ImageFormat};

/// Where a case's results go.
#[derive(Debug, Clone)]
pub enum CaseDir {
    /// A new directory `<root>/<UTC timestamp>-<name>-<random>`.
    Under(PathBuf),
    /// Exactly this directory (created; it must not exist or be empty).
    Exactly(PathBuf),
}

/// Where the firmware's variable store comes from.
#[derive(Debug, Clone)]
pub enum VarsSource {
    /// The `VARS` file next to the code image (only for a 64 MiB pflash code image; a smaller
    /// one is loaded with `-bios` and has no store).
    Beside,
    /// This template (copied for the case).
    Template(PathBuf),
}

/// A base image booted through a per-case overlay, its user provisioned by cloud-init.
#[derive(Debug, Clone)]
pub struct ImageDisk {
    pub name: String,
    pub base: PathBuf,
    pub base_sha256: String,
    pub format: ImageFormat,
    pub guest: GuestTraits,
    /// Where a vendor image's file came from (recorded as `provision.source`).
    pub source: Option<crate::inputs::images::ImageSource>,
}

/// A package repository served to the guest for the upgrade (hermetic updates).
#[derive(Debug, Clone)]
pub struct UpdateRepo {
    /// What it is, for the record (`good-update`, a directory...).
    pub label: String,
    /// The repository directory (served over HTTP on 127.0.0.1).
    pub dir: PathBuf,
}

/// What a case asks for, as the user said it (see [`check`]).
#[derive(Debug, Clone)]
pub struct CaseRequest {
    pub name: String,
    pub dir: CaseDir,
    pub qemu: PathBuf,
    /// How to execute `qemu` (directly by default; through a tree's loader for another suite's).
    pub qemu_exec: QemuExec,
    pub machine: String,
    pub cpu: Option<String>,
    pub accel: Option<Accel>,
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware_code: PathBuf,
    pub vars: VarsSource,
    /// Skip the firmware boot manager's countdown (the default) or keep it.
    pub firmware_wait: FirmwareWait,
    /// Disks booted as they are (raw or qcow2), after the image's overlay and before its seed.
    pub disks: Vec<PathBuf>,
    /// Boot `disks` with `snapshot=on` (never written).
    pub snapshot: bool,
    pub image: Option<ImageDisk>,
    /// Keep the image's overlay and the vars store in the case directory (to boot them again, or
    /// to make an upgraded state of them); otherwise they live in the private directory and go.
    pub keep_disks: bool,
    /// `None`: no network device. `Some(forwards)`: user-mode networking.
    pub network: Option<Vec<Forward>>,
    pub extra_args: Vec<OsString>,
    pub steps: Vec<Step>,
    /// The scenario the steps came from (for the record).
    pub scenario: Option<String>,
    pub update: Option<UpdateRepo>,
    /// Workaround: upgrade without the bootloader packages.
    pub exclude_bootloader: bool,
    /// Workaround: when the last boot fails, put the base image's EFI binaries back (offline,
    /// in the overlay) and boot again.
    pub restore_bootloader: bool,
    pub timings: Timings,
    /// Where the inputs came from (providers, packages, URLs, commits), as the caller resolved
    /// them: copied into `case.json`'s `inputs` and completed there with hashes.
    pub inputs: Vec<crate::engine::record::InputRecord>,
    /// Start from a saved login prompt of the same machine when there is one, else boot and
    /// save one (see `engine::login_state`).
    pub saved_login: bool,
}

impl CaseRequest {
    /// A request with the defaults of `bootwatch boot`: QEMU from PATH, `virt`, TCG defaults
    /// chosen at check time, one boot step.
    pub fn new(name: &str, dir: CaseDir, firmware_code: PathBuf, steps: Vec<Step>) -> CaseRequest {
        CaseRequest {
            name: name.to_string(),
            dir,
            qemu: "qemu-system-aarch64".into(),
            qemu_exec: QemuExec::default(),
            machine: "virt".into(),
            cpu: None,
            accel: None,
            smp: 2,
            memory_mib: 1024,
            firmware_code,
            vars: VarsSource::Beside,
            firmware_wait: FirmwareWait::Skip,
            disks: Vec::new(),
            snapshot: false,
            image: None,
            keep_disks: false,
            network: None,
            extra_args: Vec::new(),
            steps,
            scenario: None,
            update: None,
            exclude_bootloader: false,
            restore_bootloader: false,
            timings: Timings::default(),
            inputs: Vec::new(),
            saved_login: crate::engine::login_state::default_on(),
        }
    }
}

/// A problem found before anything ran (exit code 2): names the flag, file or step at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A checked case: every input exists and makes sense together.
#[derive(Debug, Clone)]
pub struct Case {
    pub req: CaseRequest,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub cpu: String,
    pub disks: Vec<Disk>,
    /// `Some(template)` for pflash firmware (the case copies it), `None` for `-bios`.
    pub vars_template: Option<PathBuf>,
}

/// The only error [`run`] returns: there is no results directory to record anything in.
#[derive(Debug, thiserror::Error)]
#[error("results directory {dir}: {message}")]
pub struct CaseError {
    pub dir: PathBuf,
    pub message: String,
}

/// What a finished case hands back.
#[derive(Debug, Clone)]
pub struct Finished {
    pub dir: PathBuf,
    pub record: CaseRecord,
    /// One per QEMU session, in order (session 1 first).
    pub runs: Vec<RunResult>,
}

/// Checks everything that can be checked before QEMU starts.
pub fn check(req: CaseRequest) -> Result<Case, ConfigError> {
    let cfg = |m: String| ConfigError(m);
    if let Some(img) = &req.image
        && !img.base.is_file()
    {
        return Err(cfg(format!(
            "image {}: base file {} is missing",
            img.name,
            img.base.display()
        )));
    }
    match &req.dir {
        CaseDir::Under(root) => {
            disk::check_writable_dir(root).map_err(|e| cfg(format!("--results {e}")))?
        }
        CaseDir::Exactly(d) => {
            disk::check_writable_dir(d).map_err(|e| cfg(format!("--results {e}")))?;
            if d.is_dir()
                && std::fs::read_dir(d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(true)
            {
                return Err(cfg(format!(
                    "results directory {} is not empty",
                    d.display()
                )));
            }
        }
    }
    check_machine(req)
}

/// Checks the machine and steps of a case, not its results directory nor that its image is
/// there: what a dry run needs (the image is not downloaded for it).
pub fn check_machine(req: CaseRequest) -> Result<Case, ConfigError> {
    let cfg = |m: String| ConfigError(m);
    let qemu = which::which(&req.qemu).map_err(|_| {
        cfg(format!(
            "QEMU not found: {} (install qemu-system-arm, or pass --qemu PATH)",
            req.qemu.display()
        ))
    })?;
    let code_len = regular_file_len(&req.firmware_code).map_err(|e| {
        cfg(format!(
            "firmware code image {}: {e} (install qemu-efi-aarch64, or pass --firmware CODE)",
            req.firmware_code.display()
        ))
    })?;
    let vars_template = if code_len == PFLASH_SIZE {
        let t = match &req.vars {
            VarsSource::Template(v) => v.clone(),
            VarsSource::Beside => sibling_vars(&req.firmware_code).ok_or_else(|| {
                cfg(format!(
                    "no vars template found next to {} (pass --vars VARS)",
                    req.firmware_code.display()
                ))
            })?,
        };
        let len =
            regular_file_len(&t).map_err(|e| cfg(format!("vars template {}: {e}", t.display())))?;
        if len != PFLASH_SIZE {
            return Err(cfg(format!(
                "vars template {} is {len} bytes; the virt machine's flash needs {PFLASH_SIZE}",
                t.display()
            )));
        }
        Some(t)
    } else if code_len > PFLASH_SIZE {
        return Err(cfg(format!(
            "firmware code image {} is {code_len} bytes, larger than the {PFLASH_SIZE}-byte flash",
            req.firmware_code.display()
        )));
    } else {
        if let VarsSource::Template(v) = &req.vars {
            return Err(cfg(format!(
                "--vars {} given, but {} is not a 64 MiB flash image (it is loaded with -bios, which has no vars store)",
                v.display(),
                req.firmware_code.display()
            )));
        }
        None
    };
    if req.disks.is_empty() && req.image.is_none() {
        return Err(cfg("no disk given (--disk IMG or --image NAME)".into()));
    }
    check_steps(&req.steps, req.image.is_some()).map_err(|(_, m)| cfg(m))?;
    if (req.restore_bootloader || req.keep_disks) && req.image.is_none() {
        return Err(cfg(
            "keeping or repairing the disk needs an image booted through an overlay".into(),
        ));
    }
    let reboots = req.steps.iter().any(|s| matches!(s, Step::Reboot { .. }));
    if (req.restore_bootloader || reboots) && vars_template.is_none() {
        return Err(cfg(format!(
            "firmware code image {} is not a 64 MiB flash image; a case that reboots needs one (its vars store persists across boots)",
            req.firmware_code.display()
        )));
    }
    if !limits::SMP.contains(&req.smp) {
        return Err(cfg(limits::out_of_range("--smp", &limits::SMP, &req.smp)));
    }
    if !limits::MEMORY_MIB.contains(&req.memory_mib) {
        return Err(cfg(limits::out_of_range(
            "--memory (MiB)",
            &limits::MEMORY_MIB,
            &req.memory_mib,
        )));
    }
    let mut disks = Vec::new();
    for d in &req.disks {
        let mut header = [0u8; 8];
        let read = std::fs::File::open(d).and_then(|mut f| {
            use std::io::Read;
            f.read(&mut header)
        });
        match read {
            Ok(_) => disks.push(Disk {
                path: d.clone(),
                format: DiskFormat::detect(&header),
                read_only: false,
                snapshot: req.snapshot,
            }),
            Err(e) => return Err(cfg(format!("disk {}: {e}", d.display()))),
        }
    }
    let accel = req
        .accel
        .unwrap_or_else(|| crate::sys::host::host_facts().best_accel());
    let cpu = req
        .cpu
        .clone()
        .unwrap_or_else(|| accel.default_cpu().to_string());
    Ok(Case {
        qemu,
        accel,
        cpu,
        disks,
        vars_template,
        req,
    })
}

/// The size of a regular, non-empty file; a directory, a device or an empty file is refused.
fn regular_file_len(p: &Path) -> Result<u64, String> {
    let m = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(p).map_err(|e| e.to_string())?;
    if m.len() == 0 {
        return Err("empty file".into());
    }
    Ok(m.len())
}

/// `AAVMF_CODE.fd` -> `AAVMF_VARS.fd`, `AAVMF_CODE.secboot.fd` -> `AAVMF_VARS.fd` (Debian ships
/// one VARS template per key set), `QEMU_EFI-pflash.raw` -> `QEMU_VARS-pflash.raw`.
pub fn sibling_vars(code: &Path) -> Option<PathBuf> {
    let name = code.file_name()?.to_str()?;
    let dir = code.parent()?;
    let mut candidates = vec![name.replace("CODE", "VARS"), name.replace("EFI", "VARS")];
    if let Some((prefix, _)) = name.split_once("CODE") {
        candidates.push(format!("{prefix}VARS.fd"));
    }
    candidates
        .into_iter()
        .filter(|c| c != name)
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
}

/// The VM of a checked case with the given vars store, disks and sockets: what `run` boots and
/// what a dry run prints.
pub fn vm_config(
    case: &Case,
    vars: Option<&Path>,
    image_disks: (Option<&Path>, Option<&Path>),
    sockets: &Path,
) -> VmConfig {
    let req = &case.req;
    let firmware = match (&case.vars_template, vars) {
        (Some(_), Some(v)) => FirmwareLoad::Pflash {
            code: req.firmware_code.clone(),
            vars: v.to_path_buf(),
        },
        _ => FirmwareLoad::Bios {
            code: req.firmware_code.clone(),
        },
    };
    let (overlay, seed) = image_disks;
    let mut disks = Vec::new();
    if let Some(o) = overlay {
        disks.push(Disk {
            path: o.to_path_buf(),
            format: DiskFormat::Qcow2,
            read_only: false,
            snapshot: false,
        });
    }
    disks.extend(case.disks.iter().cloned());
    if let Some(s) = seed {
        disks.push(Disk {
            path: s.to_path_buf(),
            format: DiskFormat::Raw,
            read_only: true,
            snapshot: false,
        });
    }
    VmConfig {
        qemu: case.qemu.clone(),
        exec: req.qemu_exec.clone(),
        machine: req.machine.clone(),
        cpu: case.cpu.clone(),
        accel: case.accel,
        smp: req.smp,
        memory_mib: req.memory_mib,
        firmware,
        firmware_wait: req.firmware_wait,
        disks,
        network: req.network.clone(),
        serial_socket: sockets.join("serial.sock"),
        qmp_socket: sockets.join("qmp.sock"),
        extra_args: req.extra_args.clone(),
    }
}

/// The command line a dry run shows: the case's VM with placeholders for per-run files.
pub fn dry_run_command_line(case: &Case) -> String {
    let img = case.req.image.is_some();
    let vm = vm_config(
        case,
        case.vars_template
            .as_ref()
            .map(|_| Path::new("RUN/vars.fd")),
        (
            img.then(|| Path::new("RUN/overlay.qcow2")),
            img.then(|| Path::new("RUN/seed.img")),
        ),
        Path::new("RUN"),
    );
    launch::vm_command_line(&vm)
}

mod driver;

use driver::Driver;

/// Runs a checked case to its outcome and records it.
pub async fn run(
    case: Case,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<Finished, CaseError> {
    let dir = make_case_dir(&case.req)?;
    let mut d = Driver::new(&case, dir, cancel, sink);
    d.write_records().await.map_err(|e| CaseError {
        dir: d.dir.clone(),
        message: format!("writing the first records: {e}"),
    })?;
    let driven = d.drive().await;
    if let Err(e) = driven {
        d.harness_error(&format!("{e:#}"));
    }
    d.finish().await;
    d.write_records().await.map_err(|e| CaseError {
        dir: d.dir.clone(),
        message: format!("writing the records: {e}"),
    })?;
    Ok(Finished {
        dir: d.dir.clone(),
        record: d.record.clone(),
        runs: d.runs.clone(),
    })
}

/// Creates the case's results directory.
fn make_case_dir(req: &CaseRequest) -> Result<PathBuf, CaseError> {
    let err = |dir: &Path, e: std::io::Error| CaseError {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    };
    match &req.dir {
        CaseDir::Exactly(d) => {
            std::fs::create_dir_all(d).map_err(|e| err(d, e))?;
            if std::fs::read_dir(d)
                .map_err(|e| err(d, e))?
                .next()
                .is_some()
            {
                return Err(CaseError {
                    dir: d.clone(),
                    message: "not empty".into(),
                });
            }
            Ok(d.clone())
        }
        CaseDir::Under(root) => {
            std::fs::create_dir_all(root).map_err(|e| err(root, e))?;
            let stamp = jiff::Timestamp::now()
                .strftime("%Y%m%dT%H%M%SZ")
                .to_string();
            let name: String = req
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .take(40)
                .collect();
            let dir = tempfile::Builder::new()
                .prefix(&format!("{stamp}-{name}-"))
                .rand_bytes(4)
                .tempdir_in(root)
                .map_err(|e| err(root, e))?;
            let path = dir.keep();
            // tempfile makes it 0700; results are meant to be shared and attached to bug reports.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| err(&path, e))?;
            Ok(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_template_next_to_code() {
        let d = tempfile::tempdir().unwrap();
        for n in ["AAVMF_CODE.fd", "AAVMF_VARS.fd", "AAVMF_CODE.secboot.fd"] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        assert_eq!(
            sibling_vars(&d.path().join("AAVMF_CODE.fd")),
            Some(d.path().join("AAVMF_VARS.fd"))
        );
        assert_eq!(
            sibling_vars(&d.path().join("AAVMF_CODE.secboot.fd")),
            Some(d.path().join("AAVMF_VARS.fd"))
        );
        assert_eq!(sibling_vars(&d.path().join("OTHER.fd")), None);
    }
}
