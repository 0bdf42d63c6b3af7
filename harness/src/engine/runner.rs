//! Runs a scenario on an image: one case = one overlay, one firmware variable store (kept
//! across reboots and restarts, as on a real machine), one or more QEMU sessions, a record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::classify::{Boot, Decision};
use crate::core::launch::{self, Accel, Disk, DiskFormat, FirmwareLoad, VmConfig};
use crate::core::verdict::{Stage, Verdict, exit_code};
use crate::engine::record::{FileInfo, HostInfo, write_json_atomic};
use crate::engine::session::{Session, SessionEvent, SessionPaths, Timings, WatchEnd, WatchSpec};
use crate::engine::shell::{CommandResult, Shell, ShellError};
use crate::inputs::images::catalog::{GuestTraits, PackageManager};
use crate::inputs::images::{Resolved, overlay, seed};
use crate::plan::scenario::{RebootMethod, Scenario, Step, dur};

/// The machine a case runs on.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub qemu: PathBuf,
    pub qemu_exec: launch::QemuExec,
    pub cpu: String,
    pub accel: Accel,
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware_code: PathBuf,
    pub vars_template: PathBuf,
}

/// A package repository served to the guest for the upgrade (hermetic updates).
#[derive(Debug, Clone)]
pub struct UpdateRepo {
    /// What it is, for the record (`good-update`, `bad-update`, ...).
    pub label: String,
    /// The repository directory (served over HTTP on 127.0.0.1).
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct CaseConfig {
    pub label: String,
    pub scenario: Scenario,
    pub image: Resolved,
    pub machine: MachineSpec,
    pub update: Option<UpdateRepo>,
    /// Workaround: upgrade without the bootloader packages.
    pub exclude_bootloader: bool,
    /// Workaround: when the last boot fails, put the base image's EFI binaries back (offline,
    /// in the overlay) and boot again.
    pub restore_bootloader: bool,
    /// The case's results directory (created; must not exist or be empty).
    pub dir: PathBuf,
    pub timings: Timings,
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

/// One boot of the case with its own verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootVerdict {
    pub session: usize,
    pub boot: Boot,
    pub verdict: Verdict,
    pub stage: Stage,
    pub before_grub: bool,
    pub reason: String,
    /// Seconds from this boot's start (power-on or reset) to its verdict.
    pub time_to_verdict_s: Option<f64>,
}

/// `case.json`: the record of a scenario case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub schema: String,
    pub case: String,
    pub scenario: String,
    pub image: String,
    pub update: Option<String>,
    pub workarounds: Vec<String>,
    pub verdict: Verdict,
    pub stage: Stage,
    pub before_grub: bool,
    pub reason: String,
    pub exit_code: u8,
    /// Seconds from the start of the judged boot to its verdict.
    pub time_to_verdict_s: Option<f64>,
    pub steps: Vec<StepRecord>,
    pub boots: Vec<BootVerdict>,
    pub packages: BTreeMap<String, BTreeMap<String, String>>,
    pub package_diff: Vec<PackageChange>,
    /// Boot-chain packages that changed, when the judged boot failed.
    pub suspects: Vec<String>,
    pub restore: Option<RestoreRecord>,
    pub sessions: Vec<SessionRecord>,
    pub user: String,
    pub password: String,
    pub overlay: PathBuf,
    pub base: PathBuf,
    pub base_sha256: String,
    pub firmware_code: Option<FileInfo>,
    pub vars: PathBuf,
    pub host: HostInfo,
    pub duration_s: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub dir: PathBuf,
    pub command_line: String,
    pub qemu_version: Option<String>,
    pub qemu_package: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// ESP files put back from the base image, with their sizes.
    pub files: Vec<(String, u64)>,
    pub duration_s: f64,
}

/// Is this package part of the boot chain (a suspect when a reboot fails)?
pub fn is_boot_chain_package(name: &str) -> bool {
    [
        "grub",
        "shim",
        "linux-image",
        "kernel",
        "efibootmgr",
        "mokutil",
        "fwupd",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Parses `name<TAB>version` lines.
pub fn parse_package_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (n, v) = l.trim_end_matches('\r').split_once('\t')?;
            (!n.is_empty() && !n.contains(' ')).then(|| (n.to_string(), v.trim().to_string()))
        })
        .collect()
}

pub fn diff_packages(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<PackageChange> {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| PackageChange {
            name: n.clone(),
            old: before.get(n).cloned(),
            new: after.get(n).cloned(),
        })
        .collect()
}

/// The command line that runs the image's upgrade, with the update repository as the only
/// package source when one is served (the guest's own sources are left untouched) and the
/// bootloader held back when asked.
pub fn upgrade_command(
    guest: &GuestTraits,
    repo_url: Option<&str>,
    exclude_bootloader: bool,
) -> String {
    let env: String = guest.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    match guest.package_manager {
        PackageManager::Apt => {
            let mut pre = String::new();
            if let Some(url) = repo_url {
                pre.push_str(&format!(
                    "echo 'deb [trusted=yes] {url} ./' > /etc/apt/bootwatch-update.list && \
                     printf 'Dir::Etc::SourceList \"/etc/apt/bootwatch-update.list\";\\nDir::Etc::SourceParts \"/nonexistent\";\\n' > /etc/apt/apt.conf.d/99bootwatch-update && "
                ));
            }
            if exclude_bootloader {
                pre.push_str(&format!("{} && ", guest.exclude_bootloader));
            }
            let cleanup = if repo_url.is_some() {
                "; rc=$?; rm -f /etc/apt/apt.conf.d/99bootwatch-update /etc/apt/bootwatch-update.list; exit $rc"
            } else {
                ""
            };
            format!(
                "sudo {env}sh -c '{}'",
                shell_single(&format!("{pre}{}{cleanup}", guest.upgrade_command))
            )
        }
        PackageManager::Dnf => {
            let mut cmd = guest.upgrade_command.clone();
            if let Some(url) = repo_url {
                cmd.push_str(&format!(
                    " --disablerepo='*' --repofrompath=bootwatch-update,{url} --nogpgcheck"
                ));
            }
            if exclude_bootloader {
                cmd.push(' ');
                cmd.push_str(&guest.exclude_bootloader);
            }
            format!("sudo {env}sh -c '{}'", shell_single(&cmd))
        }
    }
}

/// Escapes text for use inside single quotes.
fn shell_single(s: &str) -> String {
    s.replace('\'', r"'\''")
}

/// Runs one case to its verdict and writes `DIR/case.json`.
pub async fn run_case(
    cfg: &CaseConfig,
    cancel: &CancellationToken,
    ui: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> anyhow::Result<CaseResult> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let private = tempfile::Builder::new().prefix("bootwatch-").tempdir()?;
    let qemu_img = overlay::qemu_img()?;
    let ov = cfg.dir.join("overlay.qcow2");
    overlay::create_overlay(&qemu_img, &cfg.image.path, cfg.image.format, &ov).await?;
    let vars = cfg.dir.join("vars.fd");
    std::fs::copy(&cfg.machine.vars_template, &vars).context("copying the vars template")?;
    let seed_cfg = seed::SeedConfig::new(&cfg.image.guest.login_user, "bootwatch", &cfg.label)?;
    let seed_path = cfg.dir.join("seed.img");
    seed::write_seed(&seed_path, &seed_cfg)?;

    let served = match &cfg.update {
        Some(u) => Some(crate::inputs::repo::serve(&u.dir).await?),
        None => None,
    };
    // From the guest, QEMU's user network reaches the host's loopback at 10.0.2.2.
    let repo_url = served
        .as_ref()
        .map(|s| format!("http://10.0.2.2:{}/", s.port()));

    let code = cfg.machine.firmware_code.clone();
    let firmware_code = tokio::task::spawn_blocking(move || FileInfo::of(&code).ok());
    let mut result = CaseResult {
        schema: "bootwatch.case/1".into(),
        case: cfg.label.clone(),
        scenario: cfg.scenario.name.clone(),
        image: cfg.image.name.clone(),
        update: cfg.update.as_ref().map(|u| u.label.clone()),
        workarounds: [
            (cfg.exclude_bootloader, "exclude-bootloader"),
            (cfg.restore_bootloader, "restore-bootloader"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n.to_string())
        .collect(),
        verdict: Verdict::HarnessError,
        stage: Stage::None,
        before_grub: true,
        reason: "the case has not finished".into(),
        exit_code: exit_code::UNDETERMINED,
        time_to_verdict_s: None,
        steps: Vec::new(),
        boots: Vec::new(),
        packages: BTreeMap::new(),
        package_diff: Vec::new(),
        suspects: Vec::new(),
        restore: None,
        sessions: Vec::new(),
        user: seed_cfg.user.clone(),
        password: seed_cfg.password.clone(),
        overlay: ov.clone(),
        base: cfg.image.path.clone(),
        base_sha256: cfg.image.sha256.clone(),
        firmware_code: None,
        vars: vars.clone(),
        host: HostInfo::probe(),
        duration_s: 0.0,
        error: None,
    };
    let case_json = cfg.dir.join("case.json");
    write_json_atomic(&case_json, &result)?;

    let vm = VmConfig {
        qemu: cfg.machine.qemu.clone(),
        exec: cfg.machine.qemu_exec.clone(),
        machine: "virt".into(),
        cpu: cfg.machine.cpu.clone(),
        accel: cfg.machine.accel,
        smp: cfg.machine.smp,
        memory_mib: cfg.machine.memory_mib,
        firmware: FirmwareLoad::Pflash {
            code: cfg.machine.firmware_code.clone(),
            vars: vars.clone(),
        },
        disks: vec![
            Disk {
                path: ov.clone(),
                format: DiskFormat::Qcow2,
                read_only: false,
                snapshot: false,
            },
            Disk {
                path: seed_path,
                format: DiskFormat::Raw,
                read_only: true,
                snapshot: false,
            },
        ],
        network: Some(Vec::new()),
        serial_socket: private.path().join("serial.sock"),
        qmp_socket: private.path().join("qmp.sock"),
        extra_args: Vec::new(),
    };

    let outcome = drive(
        cfg,
        &vm,
        repo_url.as_deref(),
        &mut result,
        cancel,
        ui.clone(),
    )
    .await;
    if let Err(e) = &outcome {
        result.error = Some(format!("{e:#}"));
        result.reason = format!("harness error: {e:#}");
        result.verdict = Verdict::HarnessError;
        result.exit_code = exit_code::UNDETERMINED;
    }
    // The offline workaround: put the base's boot binaries back and boot again.
    if outcome.is_ok()
        && cfg.restore_bootloader
        && result.verdict.is_guest_failure()
        && let Err(e) = restore_and_reboot(cfg, &vm, &qemu_img, &mut result, cancel, ui).await
    {
        result.error = Some(format!("restore-bootloader: {e:#}"));
        result.verdict = Verdict::HarnessError;
        result.exit_code = exit_code::UNDETERMINED;
    }
    result.firmware_code = firmware_code.await.ok().flatten();
    result.duration_s = crate::engine::qmp::round_ms(started.elapsed().as_secs_f64());
    drop(served);
    write_json_atomic(&case_json, &result)?;
    Ok(result)
}

/// Runs the scenario's steps in one session.
async fn drive(
    cfg: &CaseConfig,
    vm: &VmConfig,
    repo_url: Option<&str>,
    result: &mut CaseResult,
    cancel: &CancellationToken,
    ui: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> anyhow::Result<()> {
    let mut s = start_session(cfg, vm, 1, result, ui).await?;
    let mut shell: Option<Shell> = None;
    let mut min_boot = 0;
    let mut failed = false;
    let guest = &cfg.image.guest;
    for step in &cfg.scenario.steps {
        if failed {
            result.steps.push(StepRecord {
                step: step.name().into(),
                status: "skipped".into(),
                started_s: s.now_s(),
                duration_s: 0.0,
                detail: String::new(),
                commands: Vec::new(),
            });
            continue;
        }
        let t0 = s.now_s();
        let mut rec = StepRecord {
            step: step.name().into(),
            status: "ok".into(),
            started_s: t0,
            duration_s: 0.0,
            detail: String::new(),
            commands: Vec::new(),
        };
        let outcome: Result<(), StepFailure> = async {
            match step {
                Step::Boot {
                    until,
                    timeout_s,
                    silence_s,
                }
                | Step::Watch {
                    until,
                    timeout_s,
                    silence_s,
                } => {
                    let spec = WatchSpec {
                        target: Some(until.stage()),
                        timeout: dur(*timeout_s),
                        silence: dur(*silence_s),
                        min_boot,
                    };
                    match s.watch(spec, cancel).await? {
                        WatchEnd::Decided { decision, t_s } => {
                            let reached = decision.verdict == Verdict::Reached;
                            record_verdict(result, &s, 1, decision, t_s);
                            if !reached {
                                return Err(StepFailure::Guest);
                            }
                        }
                        WatchEnd::Interrupted { .. } => return Err(StepFailure::Interrupted),
                    }
                }
                Step::Login { timeout_s } => {
                    shell = Some(
                        Shell::login(
                            &mut s,
                            &result.user,
                            &result.password,
                            dur(*timeout_s),
                            cancel,
                        )
                        .await?,
                    );
                }
                Step::Run {
                    command,
                    root,
                    timeout_s,
                    expect_exit,
                } => {
                    let sh = shell.as_mut().ok_or(StepFailure::Config(
                        "`run` needs a `login` step first".into(),
                    ))?;
                    let cmd = if *root {
                        format!("sudo {command}")
                    } else {
                        command.clone()
                    };
                    let r = sh.run(&mut s, &cmd, dur(*timeout_s), cancel).await?;
                    let bad = r.exit_code != *expect_exit;
                    rec.commands.push(r);
                    if bad {
                        return Err(StepFailure::Command(format!(
                            "exit code other than {expect_exit}"
                        )));
                    }
                }
                Step::SnapshotPackages { label } => {
                    let sh = shell.as_mut().ok_or(StepFailure::Config(
                        "`snapshot-packages` needs `login` first".into(),
                    ))?;
                    let cmd = format!("sudo sh -c '{}'", shell_single(&guest.package_query));
                    let r = sh
                        .run(&mut s, &cmd, Duration::from_secs(300), cancel)
                        .await?;
                    let list = parse_package_list(&r.output);
                    rec.detail = format!("{} packages", list.len());
                    let ok = r.exit_code == 0 && !list.is_empty();
                    rec.commands.push(CommandResult {
                        output: String::new(),
                        ..r
                    });
                    if !ok {
                        return Err(StepFailure::Command("the package query failed".into()));
                    }
                    result.packages.insert(label.clone(), list);
                }
                Step::Upgrade { timeout_s } => {
                    let sh = shell
                        .as_mut()
                        .ok_or(StepFailure::Config("`upgrade` needs `login` first".into()))?;
                    let cmd = upgrade_command(guest, repo_url, cfg.exclude_bootloader);
                    let r = sh.run(&mut s, &cmd, dur(*timeout_s), cancel).await?;
                    let code = r.exit_code;
                    rec.commands.push(r);
                    if code != 0 {
                        return Err(StepFailure::Command(format!(
                            "the upgrade exited with {code}"
                        )));
                    }
                }
                Step::Reboot { method } => {
                    min_boot = s.classifier.boots().len();
                    match method {
                        RebootMethod::Guest => s.send(b"sudo systemctl reboot\r").await?,
                        RebootMethod::Qmp => {
                            s.qmp
                                .execute(qapi::qmp::system_reset {})
                                .await
                                .map_err(anyhow::Error::from)?;
                        }
                    }
                    shell = None;
                }
            }
            Ok(())
        }
        .await;
        rec.duration_s = crate::engine::qmp::round_ms(s.now_s() - t0);
        match outcome {
            Ok(()) => {}
            Err(StepFailure::Guest) => {
                rec.status = "failed".into();
                rec.detail = "the boot failed".into();
                failed = true;
            }
            Err(e) => {
                rec.status = "failed".into();
                rec.detail = e.to_string();
                failed = true;
                // A guest failure seen while waiting on the shell is still judged as a boot.
                if let Some(d) = s
                    .classifier
                    .decide(None, &crate::core::classify::End::Running)
                    && d.verdict.is_guest_failure()
                {
                    {
                        let spec = WatchSpec {
                            target: None,
                            timeout: Duration::from_secs(5),
                            silence: Duration::from_secs(5),
                            min_boot: 0,
                        };
                        let t = match s.watch(spec, cancel).await? {
                            WatchEnd::Decided { t_s, .. } | WatchEnd::Interrupted { t_s } => t_s,
                        };
                        record_verdict(result, &s, 1, d, t);
                    }
                }
                if !matches!(e, StepFailure::Guest) && !result.verdict.is_guest_failure() {
                    result.verdict = Verdict::HarnessError;
                    result.reason = format!("step {}: {e}", step.name());
                    result.exit_code = exit_code::UNDETERMINED;
                }
            }
        }
        result.steps.push(rec);
    }
    s.shutdown().await?;
    finish_packages(result);
    Ok(())
}

/// Starts QEMU session `n` of the case in `DIR/session-N/` and records it.
async fn start_session(
    cfg: &CaseConfig,
    vm: &VmConfig,
    n: usize,
    result: &mut CaseResult,
    ui: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> anyhow::Result<Session> {
    let sdir = cfg.dir.join(format!("session-{n}"));
    std::fs::create_dir_all(&sdir)?;
    let s = Session::start(vm, &SessionPaths::in_dir(&sdir), cfg.timings, ui)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    result.sessions.push(SessionRecord {
        dir: sdir,
        command_line: launch::vm_command_line(vm),
        qemu_version: s.qemu_version.clone(),
        qemu_package: s.qemu_package.clone(),
    });
    Ok(s)
}

/// Why a step stopped the scenario.
#[derive(Debug, thiserror::Error)]
enum StepFailure {
    #[error("the boot failed")]
    Guest,
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Command(String),
    #[error(transparent)]
    Shell(#[from] ShellError),
    #[error(transparent)]
    Harness(#[from] anyhow::Error),
}

/// Records the verdict of the session's current boot and makes it the case's verdict.
fn record_verdict(result: &mut CaseResult, s: &Session, session: usize, d: Decision, t_s: f64) {
    let boot = s.classifier.current().clone();
    let ttv = boot
        .start_t_s
        .map(|b| crate::engine::qmp::round_ms(t_s - b));
    result.verdict = d.verdict;
    result.stage = d.stage;
    result.before_grub = d.before_grub;
    result.reason = d.reason.clone();
    result.exit_code = d.exit_code;
    result.time_to_verdict_s = ttv;
    result
        .boots
        .retain(|b| !(b.session == session && b.boot.index == boot.index));
    result.boots.push(BootVerdict {
        session,
        boot,
        verdict: d.verdict,
        stage: d.stage,
        before_grub: d.before_grub,
        reason: d.reason,
        time_to_verdict_s: ttv,
    });
}

fn finish_packages(result: &mut CaseResult) {
    if let (Some(before), Some(after)) =
        (result.packages.get("before"), result.packages.get("after"))
    {
        result.package_diff = diff_packages(before, after);
    }
    result.suspects = if result.verdict.is_guest_failure() {
        result
            .package_diff
            .iter()
            .filter(|c| is_boot_chain_package(&c.name))
            .map(|c| c.name.clone())
            .collect()
    } else {
        Vec::new()
    };
}

/// The "put the install media's EFI binaries back" workaround, done offline on the run's
/// overlay, then a fresh boot (same overlay, same vars store) watched to the login prompt.
async fn restore_and_reboot(
    cfg: &CaseConfig,
    vm: &VmConfig,
    qemu_img: &Path,
    result: &mut CaseResult,
    cancel: &CancellationToken,
    ui: Option<mpsc::UnboundedSender<SessionEvent>>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (qi, base, ov) = (
        qemu_img.to_path_buf(),
        cfg.image.path.clone(),
        vm.disks[0].path.clone(),
    );
    let files = async move {
        let mut restored = Vec::new();
        let mut payload = Vec::new();
        for (path, _) in crate::inputs::images::esp::list_esp(&qi, &base).await? {
            if !path.to_ascii_uppercase().starts_with("EFI/")
                && !path.to_ascii_uppercase().starts_with("/EFI/")
            {
                continue;
            }
            let original = crate::inputs::images::esp::read_esp_file(&qi, &base, &path).await?;
            let now = crate::inputs::images::esp::read_esp_file(&qi, &ov, &path)
                .await
                .ok();
            if now.as_deref() != Some(original.as_slice()) {
                restored.push((path.clone(), original.len() as u64));
                payload.push((path, original));
            }
        }
        let refs: Vec<(&str, &[u8])> = payload
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        if !refs.is_empty() {
            crate::inputs::images::esp::replace_esp_files(&qi, &ov, &refs).await?;
        }
        anyhow::Ok(restored)
    }
    .await?;
    result.restore = Some(RestoreRecord {
        files,
        duration_s: crate::engine::qmp::round_ms(t0.elapsed().as_secs_f64()),
    });
    let mut s = start_session(cfg, vm, 2, result, ui).await?;
    let spec = WatchSpec {
        target: Some(Stage::Login),
        timeout: Duration::from_secs(900),
        silence: Duration::from_secs(240),
        min_boot: 0,
    };
    let end = s.watch(spec, cancel).await;
    let _ = s.shutdown().await;
    match end? {
        WatchEnd::Decided { decision, t_s } => record_verdict(result, &s, 2, decision, t_s),
        WatchEnd::Interrupted { .. } => anyhow::bail!("interrupted"),
    }
    // The suspects stay those of the failed boot; the restore's verdict is the case's.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_and_diffs() {
        let before = parse_package_list(
            "grub-efi-arm64-signed\t1+2.06+13+deb12u2\nbash\t5.2.15-2+b7\nbad line\n",
        );
        let after = parse_package_list(
            "grub-efi-arm64-signed\t1+2.12+5~bpo12+1\nbash\t5.2.15-2+b7\nnewpkg\t1\n",
        );
        assert_eq!(before.len(), 2);
        let d = diff_packages(&before, &after);
        assert_eq!(
            d,
            vec![
                PackageChange {
                    name: "grub-efi-arm64-signed".into(),
                    old: Some("1+2.06+13+deb12u2".into()),
                    new: Some("1+2.12+5~bpo12+1".into())
                },
                PackageChange {
                    name: "newpkg".into(),
                    old: None,
                    new: Some("1".into())
                },
            ]
        );
        assert!(is_boot_chain_package("shim-signed") && is_boot_chain_package("grub2-efi-aa64"));
        assert!(!is_boot_chain_package("bash"));
    }

    fn guest(pm: PackageManager) -> GuestTraits {
        GuestTraits {
            login_user: "u".into(),
            provision: "cloud-init".into(),
            package_manager: pm,
            upgrade_command: if pm == PackageManager::Apt {
                "apt-get update && apt-get -y full-upgrade".into()
            } else {
                "dnf -y upgrade".into()
            },
            env: [("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())].into(),
            exclude_bootloader: if pm == PackageManager::Apt {
                "apt-mark hold shim-signed".into()
            } else {
                "--exclude 'grub2*'".into()
            },
            package_query: "q".into(),
            bootloader_packages: vec![],
            reported: crate::inputs::images::catalog::Reported::Unaffected,
            report_note: String::new(),
        }
    }

    #[test]
    fn upgrade_commands_use_only_the_update_repository() {
        let apt = upgrade_command(
            &guest(PackageManager::Apt),
            Some("http://10.0.2.2:8080/"),
            true,
        );
        assert!(
            apt.starts_with("sudo DEBIAN_FRONTEND=noninteractive sh -c '"),
            "{apt}"
        );
        assert!(
            apt.contains("deb [trusted=yes] http://10.0.2.2:8080/ ./"),
            "{apt}"
        );
        assert!(
            apt.contains("apt-mark hold shim-signed && apt-get update"),
            "{apt}"
        );
        assert!(
            apt.contains("rm -f /etc/apt/apt.conf.d/99bootwatch-update"),
            "{apt}"
        );
        // The inner single quotes are escaped for the outer sh -c '...'.
        let inner = shlex::split(&apt).expect("a valid shell line");
        assert_eq!(inner[0], "sudo");
        assert_eq!(inner[2..4], ["sh", "-c"]);
        assert!(inner[4].contains("echo 'deb [trusted=yes]"), "{inner:?}");
        let dnf = upgrade_command(&guest(PackageManager::Dnf), None, true);
        assert!(dnf.contains("dnf -y upgrade --exclude"), "{dnf}");
    }
}
