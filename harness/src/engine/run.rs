//! One run of `bootwatch boot`: validate, make the run's directories, start a session, watch,
//! stop QEMU, record. Every way a run can end produces a `result.json`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::classify::PatternSet;
use crate::core::launch::{
    self, Accel, Disk, DiskFormat, FirmwareLoad, Forward, PFLASH_SIZE, VmConfig,
};
use crate::core::verdict::{Stage, Target, Verdict, exit_code};
use crate::engine::record::Provision;
use crate::engine::record::{
    FileInfo, Files, FirmwareInfo, HostInfo, QemuInfo, RESULT_SCHEMA, RunResult, RunStatus,
    write_json_atomic,
};
use crate::engine::session::{Session, SessionEvent, SessionPaths, Timings, WatchEnd, WatchSpec};
use crate::engine::shell::{CommandResult, Shell};
use crate::inputs::images::catalog::{GuestTraits, ImageFormat};
use crate::inputs::images::{overlay, seed};

/// A boot to run, as the user asked for it (checked by `validate`).
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub qemu: PathBuf,
    /// How to execute `qemu` (directly by default; through a tree's loader for another suite's).
    pub qemu_exec: launch::QemuExec,
    pub machine: String,
    pub cpu: Option<String>,
    pub accel: Option<Accel>,
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware_code: PathBuf,
    pub vars_template: Option<PathBuf>,
    pub disks: Vec<PathBuf>,
    /// Boot the disks with `snapshot=on` (they are never written).
    pub snapshot: bool,
    pub network: Option<Vec<Forward>>,
    pub extra_args: Vec<OsString>,
    pub target: Option<Target>,
    pub timeout: Duration,
    pub silence: Duration,
    /// Where `<run-id>/` is created.
    pub results_root: PathBuf,
    /// Use exactly this directory for the run (created; must not exist yet or be empty).
    pub results_dir: Option<PathBuf>,
    pub name: String,
    pub timings: Timings,
    /// Boot a catalog or local image through a fresh overlay with its provisioning.
    pub image: Option<ImageBoot>,
    /// After the login prompt: log in on the serial console as the provisioned user and run a
    /// few identifying commands (needs `image`).
    pub login: bool,
}

/// A resolved (cached, verified) base image to boot through a per-run overlay.
#[derive(Debug, Clone)]
pub struct ImageBoot {
    pub name: String,
    pub base: PathBuf,
    pub base_sha256: String,
    pub format: ImageFormat,
    pub guest: GuestTraits,
    /// Keep the run's overlay (the guest's disk as the run left it) instead of deleting it.
    pub keep_overlay: bool,
}

/// A configuration problem found before anything ran (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A checked request: every path exists and is readable, the firmware layout is known.
#[derive(Debug, Clone)]
pub struct CheckedBoot {
    pub req: BootRequest,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub cpu: String,
    pub disks: Vec<Disk>,
    /// `Some(template)` for pflash firmware (the run copies it), `None` for `-bios`.
    pub vars_template: Option<PathBuf>,
}

/// Checks everything that can be checked before QEMU starts.
pub fn validate(req: BootRequest) -> Result<CheckedBoot, ConfigError> {
    let qemu = which::which(&req.qemu).map_err(|_| {
        ConfigError(format!(
            "QEMU not found: {} (install qemu-system-arm, or pass --qemu PATH)",
            req.qemu.display()
        ))
    })?;
    let code_meta = std::fs::metadata(&req.firmware_code)
        .and_then(|m| std::fs::File::open(&req.firmware_code).map(|_| m))
        .map_err(|e| {
            ConfigError(format!(
                "firmware code image {}: {e} (install qemu-efi-aarch64, or pass --firmware CODE)",
                req.firmware_code.display()
            ))
        })?;
    let vars_template = if code_meta.len() == PFLASH_SIZE {
        let t = match &req.vars_template {
            Some(v) => v.clone(),
            None => sibling_vars(&req.firmware_code).ok_or_else(|| {
                ConfigError(format!(
                    "no vars template found next to {} (pass --vars VARS)",
                    req.firmware_code.display()
                ))
            })?,
        };
        let m = std::fs::metadata(&t)
            .and_then(|m| std::fs::File::open(&t).map(|_| m))
            .map_err(|e| ConfigError(format!("vars template {}: {e}", t.display())))?;
        if m.len() != PFLASH_SIZE {
            return Err(ConfigError(format!(
                "vars template {} is {} bytes; the virt machine's flash needs {PFLASH_SIZE}",
                t.display(),
                m.len()
            )));
        }
        Some(t)
    } else if code_meta.len() > PFLASH_SIZE {
        return Err(ConfigError(format!(
            "firmware code image {} is {} bytes, larger than the {PFLASH_SIZE}-byte flash",
            req.firmware_code.display(),
            code_meta.len()
        )));
    } else {
        if let Some(v) = &req.vars_template {
            return Err(ConfigError(format!(
                "--vars {} given, but {} is not a 64 MiB flash image (it is loaded with -bios, which has no vars store)",
                v.display(),
                req.firmware_code.display()
            )));
        }
        None
    };
    if req.disks.is_empty() && req.image.is_none() {
        return Err(ConfigError(
            "no disk given (--disk IMG or --image NAME)".into(),
        ));
    }
    if let Some(img) = &req.image
        && !img.base.is_file()
    {
        return Err(ConfigError(format!(
            "image {}: base file {} is missing",
            img.name,
            img.base.display()
        )));
    }
    if req.login && req.image.is_none() {
        return Err(ConfigError(
            "--login needs --image (the user comes from the image's provisioning)".into(),
        ));
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
            Err(e) => return Err(ConfigError(format!("disk {}: {e}", d.display()))),
        }
    }
    if req.timeout.is_zero() || req.silence.is_zero() {
        return Err(ConfigError(
            "--timeout and --silence must be positive".into(),
        ));
    }
    let accel = req
        .accel
        .unwrap_or_else(|| crate::sys::host::host_facts().best_accel());
    let cpu = req
        .cpu
        .clone()
        .unwrap_or_else(|| accel.default_cpu().to_string());
    Ok(CheckedBoot {
        qemu,
        accel,
        cpu,
        disks,
        vars_template,
        req,
    })
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

/// What a finished run hands back.
pub struct RunOutcome {
    pub dir: PathBuf,
    pub result: RunResult,
}

/// Runs a checked boot to its verdict and records it. Errors are only returned when not even a
/// results directory could be made; everything else is a `result.json` (maybe `harness-error`).
pub async fn run(
    boot: CheckedBoot,
    cancel: CancellationToken,
    ui: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> anyhow::Result<RunOutcome> {
    let req = &boot.req;
    let dir = make_run_dir(req)?;
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let private = tempfile::Builder::new()
        .prefix("bootwatch-")
        .tempdir()
        .context("creating the private run directory")?;
    let firmware = match &boot.vars_template {
        Some(t) => {
            let vars = private.path().join("vars.fd");
            std::fs::copy(t, &vars)
                .with_context(|| format!("copying the vars template {}", t.display()))?;
            FirmwareLoad::Pflash {
                code: req.firmware_code.clone(),
                vars,
            }
        }
        None => FirmwareLoad::Bios {
            code: req.firmware_code.clone(),
        },
    };
    let mut disks = boot.disks.clone();
    let mut provision = None;
    if let Some(img) = &req.image {
        let qemu_img = overlay::qemu_img()?;
        let ov = dir.join("overlay.qcow2");
        overlay::create_overlay(&qemu_img, &img.base, img.format, &ov).await?;
        let cfg = seed::SeedConfig::new(&img.guest.login_user, "bootwatch", &run_id)?;
        let seed_path = dir.join("seed.img");
        seed::write_seed(&seed_path, &cfg)?;
        disks.insert(
            0,
            Disk {
                path: ov.clone(),
                format: DiskFormat::Qcow2,
                read_only: false,
                snapshot: false,
            },
        );
        disks.push(Disk {
            path: seed_path,
            format: DiskFormat::Raw,
            read_only: true,
            snapshot: false,
        });
        provision = Some(Provision {
            image: img.name.clone(),
            base: img.base.clone(),
            base_sha256: img.base_sha256.clone(),
            overlay: ov,
            user: cfg.user,
            password: cfg.password,
        });
    }
    let vm = VmConfig {
        qemu: boot.qemu.clone(),
        exec: req.qemu_exec.clone(),
        machine: req.machine.clone(),
        cpu: boot.cpu.clone(),
        accel: boot.accel,
        smp: req.smp,
        memory_mib: req.memory_mib,
        firmware: firmware.clone(),
        disks: disks.clone(),
        network: req.network.clone(),
        serial_socket: private.path().join("serial.sock"),
        qmp_socket: private.path().join("qmp.sock"),
        extra_args: req.extra_args.clone(),
    };
    let (program, args) = launch::program_and_args(&vm);
    let mut result = RunResult {
        schema: RESULT_SCHEMA.into(),
        run_id,
        status: RunStatus::Running,
        verdict: Verdict::HarnessError,
        stage: Stage::None,
        before_grub: true,
        reason: "the run has not finished".into(),
        exit_code: exit_code::UNDETERMINED,
        time_to_verdict_s: None,
        evidence_t_s: None,
        target: req.target,
        timeout_s: req.timeout.as_secs_f64(),
        silence_s: req.silence.as_secs_f64(),
        started_at: jiff::Timestamp::now().to_string(),
        duration_s: 0.0,
        host: HostInfo::probe(),
        accelerator: boot.accel.as_str().into(),
        machine: req.machine.clone(),
        cpu: boot.cpu.clone(),
        smp: req.smp,
        memory_mib: req.memory_mib,
        qemu: QemuInfo {
            binary: boot.qemu.clone(),
            version: None,
            package: None,
            exit: None,
            cpu_s: None,
            wall_s: None,
        },
        firmware: FirmwareInfo {
            code: None,
            vars_template: None,
            vars: None,
            banner_version: None,
        },
        disks: Vec::new(),
        argv: std::iter::once(program.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        command_line: launch::vm_command_line(&vm),
        finding: None,
        timeline: Vec::new(),
        findings: Vec::new(),
        boots: Vec::new(),
        last_line: String::new(),
        console_lines: 0,
        console_bytes: 0,
        events: Vec::new(),
        harness_cpu_s: None,
        harness_watch_cpu_s: None,
        files: Files::default(),
        error: None,
        provision: provision.clone(),
        commands: Vec::new(),
        bootwatch_version: env!("CARGO_PKG_VERSION").into(),
    };
    let result_path = dir.join("result.json");
    write_json_atomic(&result_path, &result).context("writing result.json")?;

    // Hash inputs while the guest boots: it costs no wall time.
    let to_hash: Vec<PathBuf> = std::iter::once(req.firmware_code.clone())
        .chain(boot.vars_template.clone())
        .chain(disks.iter().map(|d| d.path.clone()))
        .collect();
    let hashing = tokio::task::spawn_blocking(move || {
        to_hash
            .iter()
            .map(|p| FileInfo::of(p).ok())
            .collect::<Vec<_>>()
    });

    let started = std::time::Instant::now();
    let paths = SessionPaths::in_dir(&dir);
    let spec = WatchSpec {
        target: req.target.map(Target::stage),
        timeout: req.timeout,
        silence: req.silence,
        min_boot: 0,
    };
    match Session::start(&vm, &paths, req.timings, ui).await {
        Err(e) => {
            result.status = RunStatus::Complete;
            result.reason = format!("harness error: {e}");
            result.error = Some(e.message);
        }
        Ok(mut session) => {
            let mut end = session.watch(spec, &cancel).await;
            if let (true, Some(p), Ok(WatchEnd::Decided { decision, .. })) =
                (req.login, &provision, &end)
                && decision.verdict == Verdict::Reached
            {
                match login_and_identify(&mut session, p, &cancel).await {
                    Ok(cmds) => result.commands = cmds,
                    Err(e) => {
                        end = Err(anyhow::anyhow!(
                            "logging in as {} on the serial console: {e}",
                            p.user
                        ));
                    }
                }
            }
            let qemu_cpu_s = session.qemu_cpu_s();
            let exit = session.shutdown().await;
            record_session(&mut result, &session);
            result.qemu.cpu_s = qemu_cpu_s;
            result.qemu.wall_s = Some(session.now_s());
            if let FirmwareLoad::Pflash { vars, .. } = &firmware {
                result.firmware.vars = FileInfo::of(vars).ok();
            }
            match (end, exit) {
                (Ok(WatchEnd::Decided { decision, t_s }), Ok(_)) => {
                    result.status = RunStatus::Complete;
                    result.apply_decision(&decision, session.classifier.current());
                    result.time_to_verdict_s = Some(t_s);
                }
                (Ok(WatchEnd::Interrupted { t_s }), _) => {
                    result.status = RunStatus::Interrupted;
                    result.reason = "interrupted (SIGINT/SIGTERM) before a verdict".into();
                    result.error = Some(result.reason.clone());
                    result.time_to_verdict_s = Some(t_s);
                }
                (Err(e), _) | (_, Err(e)) => {
                    result.status = RunStatus::Complete;
                    result.reason = format!("harness error: {e:#}");
                    result.error = Some(format!("{e:#}"));
                }
            }
        }
    }
    if let Ok(hashes) = hashing.await {
        let mut it = hashes.into_iter();
        result.firmware.code = it.next().flatten();
        if boot.vars_template.is_some() {
            result.firmware.vars_template = it.next().flatten();
        }
        result.disks = it.flatten().collect();
    }
    if let (Some(img), Some(p)) = (&req.image, &provision)
        && !img.keep_overlay
    {
        let _ = std::fs::remove_file(&p.overlay);
    }
    result.duration_s = crate::engine::qmp::round_ms(started.elapsed().as_secs_f64());
    result.harness_cpu_s = cpu_seconds(nix::sys::resource::UsageWho::RUSAGE_SELF);
    write_json_atomic(&result_path, &result).context("writing result.json")?;
    Ok(RunOutcome { dir, result })
}

/// Logs in as the provisioned user and records who and where the shell is.
async fn login_and_identify(
    s: &mut Session,
    p: &Provision,
    cancel: &CancellationToken,
) -> Result<Vec<CommandResult>, crate::engine::shell::ShellError> {
    let mut sh = Shell::login(s, &p.user, &p.password, Duration::from_secs(120), cancel).await?;
    let mut out = Vec::new();
    for cmd in ["id -un", "uname -r", "cat /proc/cmdline"] {
        out.push(sh.run(s, cmd, Duration::from_secs(60), cancel).await?);
    }
    Ok(out)
}

fn record_session(result: &mut RunResult, s: &Session) {
    let cls = &s.classifier;
    let cur = cls.current();
    result.qemu.version = s.qemu_version.clone();
    result.qemu.package = s.qemu_package.clone();
    result.qemu.exit = s.exit_info().cloned();
    result.timeline = cur.timeline.clone();
    result.findings = cur.findings.clone();
    result.boots = cls.boots().to_vec();
    result.last_line = cls.last_line().to_string();
    result.console_lines = cls.lines();
    result.console_bytes = s.console_bytes;
    result.events = s.event_log.clone();
    result.harness_watch_cpu_s = Some(crate::engine::qmp::round_ms(s.watch_cpu_s));
    let banner = PatternSet::builtin()
        .by_name("edk2-banner")
        .map(|p| &p.regex);
    result.firmware.banner_version = cls
        .boots()
        .iter()
        .flat_map(|b| b.timeline.iter())
        .find(|m| m.pattern == "edk2-banner")
        .and_then(|m| {
            banner?
                .captures(&m.text)?
                .name("version")
                .map(|v| v.as_str().trim().to_string())
        });
}

fn cpu_seconds(who: nix::sys::resource::UsageWho) -> Option<f64> {
    let u = nix::sys::resource::getrusage(who).ok()?;
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(crate::engine::qmp::round_ms(
        tv(u.user_time()) + tv(u.system_time()),
    ))
}

/// Creates the run's results directory: `--results DIR` itself, or a new unique
/// `<root>/<timestamp>-<name>-<random>`.
fn make_run_dir(req: &BootRequest) -> anyhow::Result<PathBuf> {
    if let Some(d) = &req.results_dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        if std::fs::read_dir(d)?.next().is_some() {
            anyhow::bail!("results directory {} is not empty", d.display());
        }
        return Ok(d.clone());
    }
    std::fs::create_dir_all(&req.results_root)
        .with_context(|| format!("creating {}", req.results_root.display()))?;
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
        .tempdir_in(&req.results_root)
        .with_context(|| format!("creating a run directory in {}", req.results_root.display()))?;
    let path = dir.keep();
    // tempfile makes it 0700; results are meant to be shared and attached to bug reports.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
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
