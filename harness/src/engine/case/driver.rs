//! The state of one case while it runs: its directories, disks, sessions and records, and the
//! steps that move it on. `super::run` owns a `Driver` from the first record to the last.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Case, vm_config};
use crate::core::classify::{Decision, End};
use crate::core::event::{Event, EventSink};
use crate::core::launch::{self, VmConfig};
use crate::core::verdict::{Outcome, Stage, Target, Verdict, exit_code};
use crate::engine::disk::{self, VarsCopy};
use crate::engine::guest;
use crate::engine::login_state;
use crate::engine::qmp::round_ms;
use crate::engine::record::{
    BootVerdict, CASE_SCHEMA, CaseRecord, FileInfo, Files, FirmwareInfo, HostInfo, InputRecord,
    Provision, QemuInfo, RESULT_SCHEMA, RestoreRecord, RunResult, RunStatus, SessionRecord,
    StepRecord, outcome_of,
};
use crate::engine::session::{Session, SessionPaths, WatchEnd, WatchSpec};
use crate::engine::shell::{Shell, ShellError};
use crate::engine::step::{RebootMethod, Step};
use crate::inputs::images::seed::SeedConfig;
use crate::sys::fsx;

/// Why a step stopped the case.
#[derive(Debug, thiserror::Error)]
enum StepFailure {
    /// The boot it watched failed (the outcome says how).
    #[error("the boot failed")]
    Guest,
    #[error("interrupted")]
    Interrupted,
    /// The guest did not do what the step asked (a command's exit code, a failed query).
    #[error("{0}")]
    Command(String),
    #[error(transparent)]
    Shell(#[from] ShellError),
    #[error(transparent)]
    Harness(#[from] anyhow::Error),
}

/// The state of one case while it runs.
pub(super) struct Driver<'a> {
    case: &'a Case,
    pub(super) dir: PathBuf,
    cancel: &'a CancellationToken,
    sink: &'a EventSink,
    started: Instant,
    pub(super) record: CaseRecord,
    pub(super) runs: Vec<RunResult>,
    private: Option<tempfile::TempDir>,
    /// The throwaway vars copy's directory in memory, when there is one.
    private_mem: Option<tempfile::TempDir>,
    vars: Option<VarsCopy>,
    overlay: Option<PathBuf>,
    seed: Option<PathBuf>,
    vm: Option<VmConfig>,
    served: Option<crate::inputs::repo::Served>,
    session: Option<Session>,
    shell: Option<Shell>,
    /// The provisioned user and password (never in a record).
    login: Option<crate::engine::record::Secrets>,
    hashing: Option<tokio::task::JoinHandle<Vec<Option<FileInfo>>>>,
    /// The variable store as it was before the upgrade step (else the template is "before").
    vars_before: Option<crate::core::varstore::VarStore>,
    /// The saved login state session 1 starts from.
    resume: Option<login_state::Saved>,
    /// The login state this case saves at its first login prompt (its key's lock held).
    saving: Option<(String, PathBuf, crate::sys::fsx::FileLock)>,
}

impl<'a> Driver<'a> {
    pub(super) fn new(
        case: &'a Case,
        dir: PathBuf,
        cancel: &'a CancellationToken,
        sink: &'a EventSink,
    ) -> Driver<'a> {
        let req = &case.req;
        let record = CaseRecord {
            schema: CASE_SCHEMA.into(),
            case: req.name.clone(),
            status: RunStatus::Running,
            scenario: req.scenario.clone(),
            image: req.image.as_ref().map(|i| i.name.clone()),
            update: req.update.as_ref().map(|u| u.label.clone()),
            workarounds: [
                (req.exclude_bootloader, "exclude-bootloader"),
                (req.restore_bootloader, "restore-bootloader"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_string())
            .collect(),
            outcome: Outcome::unfinished("case"),
            steps: Vec::new(),
            boots: Vec::new(),
            packages: Default::default(),
            package_diff: Vec::new(),
            suspects: Vec::new(),
            restore: None,
            sessions: Vec::new(),
            provision: None,
            firmware_code: None,
            vars: None,
            inputs: req.inputs.clone(),
            vars_change: None,
            login_state: None,
            host: HostInfo::probe(),
            started_at: jiff::Timestamp::now().to_string(),
            duration_s: 0.0,
            error: None,
            bootwatch_version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut d = Driver {
            case,
            dir,
            cancel,
            sink,
            started: Instant::now(),
            record,
            runs: Vec::new(),
            private: None,
            private_mem: None,
            vars: None,
            overlay: None,
            seed: None,
            vm: None,
            served: None,
            session: None,
            shell: None,
            login: None,
            hashing: None,
            vars_before: None,
            resume: None,
            saving: None,
        };
        let first = d.new_run(1);
        d.runs.push(first);
        d
    }

    /// The record of session `n` before it starts.
    fn new_run(&self, n: usize) -> RunResult {
        let req = &self.case.req;
        let target = req.steps.iter().find_map(|s| match s {
            Step::Boot { until, .. } => *until,
            _ => None,
        });
        let (timeout, silence) = req
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Boot {
                    timeout, silence, ..
                } => Some((*timeout, *silence)),
                _ => None,
            })
            .unwrap_or_default();
        RunResult {
            schema: RESULT_SCHEMA.into(),
            run_id: self
                .session_dir(n)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            case: req.name.clone(),
            session: n,
            status: RunStatus::Running,
            outcome: Outcome::unfinished("run"),
            evidence_t_s: None,
            target,
            timeout_s: timeout.as_secs_f64(),
            silence_s: silence.as_secs_f64(),
            started_at: jiff::Timestamp::now().to_string(),
            duration_s: 0.0,
            host: self.record.host.clone(),
            accelerator: self.case.accel.as_str().into(),
            machine: req.machine.clone(),
            cpu: self.case.cpu.clone(),
            smp: req.smp,
            memory_mib: req.memory_mib,
            qemu: QemuInfo {
                binary: self.case.qemu.clone(),
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
                wait: Some(self.case.req.firmware_wait.as_str().into()),
            },
            disks: Vec::new(),
            argv: Vec::new(),
            command_line: String::new(),
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
            provision: self.record.provision.clone(),
            commands: Vec::new(),
            hang: None,
            bootwatch_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn session_dir(&self, n: usize) -> PathBuf {
        if n == 1 {
            self.dir.clone()
        } else {
            self.dir.join(format!("session-{n}"))
        }
    }

    fn run_mut(&mut self) -> &mut RunResult {
        self.runs.last_mut().expect("there is always a run")
    }

    /// Writes `case.json` and every session's `result.json`, atomically, on a blocking thread
    /// (each write ends in an fsync: never on the loop that reads consoles).
    pub(super) async fn write_records(&self) -> std::io::Result<()> {
        let mut files = Vec::new();
        for r in &self.runs {
            files.push((
                self.session_dir(r.session).join("result.json"),
                json_bytes(r)?,
            ));
        }
        files.push((self.dir.join("case.json"), json_bytes(&self.record)?));
        tokio::task::spawn_blocking(move || {
            for (path, bytes) in files {
                fsx::write_atomic(&path, &bytes)?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// bootwatch could not go on: the case (and the session it was in) end with `harness-error`.
    pub(super) fn harness_error(&mut self, message: &str) {
        let mut o = Outcome::harness_error(message);
        o.stage = self.current_stage();
        self.record.outcome = o.clone();
        self.record.status = RunStatus::Error;
        self.record.error = Some(message.to_string());
        let run = self.run_mut();
        run.outcome = o;
        run.status = RunStatus::Error;
        run.error = Some(message.to_string());
    }

    fn current_stage(&self) -> Stage {
        self.session
            .as_ref()
            .map_or(Stage::None, |s| s.classifier.current().stage)
    }

    fn emit(&self, e: Event) {
        self.sink.emit(e);
    }

    /// Prepares the disks, then runs the steps and the workaround.
    pub(super) async fn drive(&mut self) -> anyhow::Result<()> {
        self.prepare().await?;
        let steps = self.case.req.steps.clone();
        let mut failed = false;
        let mut min_boot = 0;
        for (i, step) in steps.iter().enumerate() {
            let t0 = self.session.as_ref().map_or(0.0, Session::now_s);
            let mut rec = StepRecord {
                step: step.name().into(),
                status: "ok".into(),
                started_s: t0,
                duration_s: 0.0,
                detail: String::new(),
                commands: Vec::new(),
            };
            if failed {
                rec.status = "skipped".into();
                self.record.steps.push(rec);
                continue;
            }
            self.emit(Event::StepStarted {
                index: i + 1,
                step: step.name().into(),
                detail: step_detail(step),
            });
            let outcome = self.step(step, &mut rec, &mut min_boot).await;
            rec.duration_s = round_ms(self.session.as_ref().map_or(0.0, Session::now_s) - t0);
            match outcome {
                Ok(()) => {}
                Err(StepFailure::Guest) => {
                    rec.status = "failed".into();
                    rec.detail = "the boot failed".into();
                    failed = true;
                }
                Err(StepFailure::Interrupted) => {
                    rec.status = "failed".into();
                    rec.detail = "interrupted".into();
                    failed = true;
                    self.interrupted();
                }
                Err(e) => {
                    rec.status = "failed".into();
                    rec.detail = e.to_string();
                    failed = true;
                    // A guest failure seen while waiting on the shell is still judged as a boot.
                    let judged = self.judge_failure_seen_meanwhile().await?;
                    if !judged {
                        let msg = format!("step {} ({}): {e}", i + 1, step.name());
                        self.harness_error(&msg);
                    }
                }
            }
            self.emit(Event::StepFinished {
                index: i + 1,
                step: rec.step.clone(),
                status: rec.status.clone(),
                duration_s: rec.duration_s,
                detail: rec.detail.clone(),
            });
            self.record.steps.push(rec);
            self.write_records().await?;
        }
        self.end_session().await;
        self.finish_packages();
        if self.case.req.restore_bootloader
            && self.record.outcome.is_guest_failure()
            && !self.cancel.is_cancelled()
        {
            self.restore_and_boot().await?;
        }
        Ok(())
    }

    /// Makes the private directory, the vars copy, the overlay and seed, serves the update.
    async fn prepare(&mut self) -> anyhow::Result<()> {
        let req = &self.case.req;
        let private = disk::private_dir().with_context(|| {
            format!(
                "creating the private directory for the VM's sockets under {}",
                std::env::temp_dir().display()
            )
        })?;
        let keep = req.keep_disks;
        let scratch = if keep {
            self.dir.clone()
        } else {
            private.path().to_path_buf()
        };
        match login_state::plan(self.case, self.cancel).await {
            Ok(login_state::Plan::Off) => {}
            Ok(login_state::Plan::Resume(saved)) => self.resume = Some(saved),
            Ok(login_state::Plan::Save { key, dir, lock }) => self.saving = Some((key, dir, lock)),
            // Only a saving of time is lost: the case boots as without `--saved-login`.
            Err(e) => tracing::warn!("saved login states not used: {e:#}"),
        }
        let vars_from = self
            .resume
            .as_ref()
            .map(login_state::Saved::vars)
            .or_else(|| self.case.vars_template.clone());
        if let Some(t) = &vars_from {
            // A throwaway copy goes into memory when it can (see `disk::private_mem_dir`).
            self.private_mem = if keep { None } else { disk::private_mem_dir() };
            let dir = self
                .private_mem
                .as_ref()
                .map_or(scratch.as_path(), |d| d.path());
            self.vars = Some(VarsCopy::make(t, &dir.join("vars.fd")).await?);
            if keep {
                self.record.vars = self.vars.as_ref().map(|v| v.path.clone());
            }
        }
        if let Some(img) = &req.image {
            let ov = scratch.join("overlay.qcow2");
            let seed = scratch.join("seed.img");
            let secrets = if let Some(saved) = &self.resume {
                // The saved guest's disk, seed and credentials (cloud-init made its user then).
                use crate::inputs::images::catalog::ImageFormat;
                disk::make_overlay(&saved.disk(), ImageFormat::Qcow2, &ov).await?;
                let (from, to) = (saved.seed(), seed.clone());
                disk::blocking(move || {
                    crate::sys::fsx::sparse_copy(&from, &to)
                        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
                })
                .await?;
                saved.secrets.clone()
            } else {
                disk::make_overlay(&img.base, img.format, &ov).await?;
                let cfg = SeedConfig::new(&img.guest.login_user, "bootwatch", &req.name)?;
                disk::write_seed(&seed, &cfg).await?;
                crate::engine::record::Secrets {
                    user: cfg.user.clone(),
                    password: cfg.password.clone(),
                }
            };
            if keep {
                let (path, bytes) = (self.dir.join("secrets.json"), json_bytes(&secrets)?);
                disk::blocking(move || Ok(fsx::write_atomic_mode(&path, &bytes, 0o600)?)).await?;
            }
            self.login = Some(secrets.clone());
            let p = Provision {
                image: img.name.clone(),
                base: img.base.clone(),
                base_sha256: img.base_sha256.clone(),
                overlay: ov.clone(),
                user: secrets.user.clone(),
                secrets: keep.then(|| PathBuf::from("secrets.json")),
                source: img.source.clone(),
            };
            self.record.provision = Some(p.clone());
            self.run_mut().provision = Some(p);
            self.overlay = Some(ov);
            self.seed = Some(seed);
        }
        if let Some(u) = &req.update {
            self.served = Some(crate::inputs::repo::serve(&u.dir).await?);
        }
        let vm = vm_config(
            self.case,
            self.vars.as_ref().map(|v| v.path.as_path()),
            (self.overlay.as_deref(), self.seed.as_deref()),
            private.path(),
        );
        self.private = Some(private);
        if let Some(saved) = &self.resume {
            self.record.login_state = Some(saved.record("resumed", 0.0));
        }
        let first = self.vm_of_session(&vm, 1);
        let (argv, line) = (argv_strings(&first), launch::vm_command_line(&first));
        let run = self.run_mut();
        run.argv = argv;
        run.command_line = line;
        // Inputs are hashed while the guest boots: it costs no wall time.
        let mut inputs = vec![req.firmware_code.clone()];
        inputs.extend(self.case.vars_template.clone());
        inputs.extend(vm.disks.iter().map(|d| d.path.clone()));
        // QEMU's binary last (the engine's own record of what ran; cached by inode).
        inputs.push(self.case.qemu.clone());
        self.hashing = Some(tokio::spawn(disk::file_infos(inputs)));
        self.vm = Some(vm);
        self.write_records().await?;
        Ok(())
    }

    /// Starts session `n` (the first boot, or a boot after a workaround).
    async fn start_session(&mut self, n: usize) -> anyhow::Result<()> {
        let vm = self.vm_of_session(self.vm.as_ref().expect("prepared"), n);
        let sdir = self.session_dir(n);
        std::fs::create_dir_all(&sdir)?;
        if n > 1 {
            let mut run = self.new_run(n);
            run.argv = argv_strings(&vm);
            run.command_line = launch::vm_command_line(&vm);
            self.runs.push(run);
        }
        let incoming = (n == 1)
            .then(|| self.resume.as_ref().map(login_state::Saved::state_file))
            .flatten();
        self.record.sessions.push(SessionRecord {
            dir: if n == 1 {
                PathBuf::from(".")
            } else {
                PathBuf::from(format!("session-{n}"))
            },
            command_line: launch::vm_command_line(&vm),
            qemu_version: None,
            qemu_package: None,
        });
        let s = Session::start(
            &vm,
            &SessionPaths::in_dir(&sdir),
            self.case.req.timings,
            n,
            self.sink.clone(),
            incoming.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let rec = self.record.sessions.last_mut().expect("pushed");
        rec.qemu_version = s.qemu_version.clone();
        rec.qemu_package = s.qemu_package.clone();
        self.session = Some(s);
        Ok(())
    }

    /// The VM session `n` starts: session 1 of a case that resumes a saved login state waits
    /// for that state (`-incoming defer`); every other session boots.
    fn vm_of_session(&self, vm: &VmConfig, n: usize) -> VmConfig {
        let mut vm = vm.clone();
        if n == 1 && self.resume.is_some() {
            vm.extra_args.extend(["-incoming".into(), "defer".into()]);
        }
        vm
    }

    /// Saves the guest at its first login prompt for the cases that come later (the case goes
    /// on either way; a failed save is said in `login_state.error`).
    async fn save_login_state(&mut self, rec: &mut StepRecord) {
        let Some((key, dir, lock)) = self.saving.take() else {
            return;
        };
        let (Some(s), Some(ov), Some(vars), Some(seed), Some(secrets)) = (
            self.session.as_ref(),
            self.overlay.as_deref(),
            self.vars.as_ref().map(|v| v.path.as_path()),
            self.seed.as_deref(),
            self.login.as_ref(),
        ) else {
            return;
        };
        let t0 = std::time::Instant::now();
        let meta = login_state::StateMeta::new(
            &key,
            &std::path::absolute(&self.dir)
                .unwrap_or_else(|_| self.dir.clone())
                .display()
                .to_string(),
            s.now_s(),
            super::dry_run_command_line(self.case),
        );
        let disks = login_state::CaseDisks {
            overlay: ov,
            vars,
            seed,
            secrets,
        };
        let r = login_state::save(s, &dir, disks, meta.clone()).await;
        let secs = round_ms(t0.elapsed().as_secs_f64());
        drop(lock);
        self.record.login_state = Some(match r {
            Ok(saved) => {
                rec.detail = format!("login state {key} saved in {secs:.1} s");
                saved.record("saved", secs)
            }
            Err(e) => {
                tracing::warn!("saving the login state: {e:#}");
                login_state::LoginStateRecord {
                    action: "save-failed".into(),
                    key,
                    dir,
                    saved_by: meta.saved_by,
                    saved_at: meta.saved_at,
                    boot_s: meta.boot_s,
                    seconds: secs,
                    error: Some(format!("{e:#}")),
                }
            }
        });
    }

    async fn step(
        &mut self,
        step: &Step,
        rec: &mut StepRecord,
        min_boot: &mut usize,
    ) -> Result<(), StepFailure> {
        let cancel = self.cancel;
        match step {
            Step::Boot {
                until,
                timeout,
                silence,
            } => {
                if self.session.is_none() {
                    self.start_session(1).await?;
                    if let Some(saved) = &self.resume {
                        // The guest sits at its login prompt: Enter makes getty print it again.
                        rec.detail = format!(
                            "resumed login state {} (saved by {})",
                            saved.meta.key, saved.meta.saved_by
                        );
                        let s = self.session.as_mut().expect("started");
                        let loaded = s.now_s();
                        if let Some(r) = self.record.login_state.as_mut() {
                            r.seconds = loaded;
                        }
                        s.send(b"\r").await?;
                    }
                }
                self.watch(until.map(Target::stage), *timeout, *silence, 0)
                    .await?;
                self.save_login_state(rec).await;
                Ok(())
            }
            Step::Watch {
                until,
                timeout,
                silence,
            } => {
                self.watch(Some(until.stage()), *timeout, *silence, *min_boot)
                    .await
            }
            Step::Login { timeout } => {
                let p = self.login.clone().expect("checked: login needs an image");
                let s = self.session.as_mut().expect("a session after boot");
                self.shell = Some(Shell::login(s, &p.user, &p.password, *timeout, cancel).await?);
                // Still the resumed boot (session 1, no reboot yet): its clock stopped at the
                // save, so it is set to now. (After a reboot the guest reads the RTC, which QEMU
                // keeps on the host's time across a migration.)
                let resumed_boot = s.index() == 1 && s.classifier.boots_started() == 1;
                if self.resume.is_some() && resumed_boot {
                    let now = jiff::Timestamp::now().as_second();
                    let cmd = format!("sudo date -u -s @{now} >/dev/null");
                    let r = self
                        .shell_run("clock", &cmd, Duration::from_secs(60))
                        .await?;
                    let code = r.exit_code;
                    rec.commands.push(r);
                    if code != 0 {
                        return Err(StepFailure::Command(format!(
                            "setting the resumed guest's clock exited with {code}"
                        )));
                    }
                }
                Ok(())
            }
            Step::Run {
                command,
                root,
                timeout,
                expect_exit,
            } => {
                let cmd = if *root {
                    format!("sudo {command}")
                } else {
                    command.clone()
                };
                let r = self.shell_run("run", &cmd, *timeout).await?;
                let bad = r.exit_code != *expect_exit;
                rec.commands.push(r.clone());
                self.run_mut().commands.push(r);
                if bad {
                    return Err(StepFailure::Command(format!(
                        "`{command}` exited with a code other than {expect_exit}"
                    )));
                }
                Ok(())
            }
            Step::SnapshotPackages { label } => {
                let guest = &self.case.req.image.as_ref().expect("checked").guest;
                let cmd = format!("sudo sh -c '{}'", guest::shell_single(&guest.package_query));
                let r = self
                    .shell_run("snapshot-packages", &cmd, Duration::from_secs(300))
                    .await?;
                let list = guest::parse_package_list(&r.output);
                rec.detail = format!("{} packages", list.len());
                let ok = r.exit_code == 0 && !list.is_empty();
                rec.commands.push(crate::engine::record::CommandResult {
                    output: String::new(),
                    ..r
                });
                if !ok {
                    return Err(StepFailure::Command("the package query failed".into()));
                }
                self.record.packages.insert(label.clone(), list);
                Ok(())
            }
            Step::Upgrade { timeout } => {
                if let Some(v) = self.vars.as_ref().map(|v| v.path.clone()) {
                    // The store as the guest had it before the upgrade (QEMU writes it through).
                    self.vars_before = disk::blocking(move || disk::read_varstore(&v)).await.ok();
                }
                let guest = &self.case.req.image.as_ref().expect("checked").guest;
                let url = self
                    .served
                    .as_ref()
                    // From the guest, QEMU's user network reaches the host's loopback at 10.0.2.2.
                    .map(|s| format!("http://10.0.2.2:{}/", s.port()));
                let cmd =
                    guest::upgrade_command(guest, url.as_deref(), self.case.req.exclude_bootloader);
                let r = self.shell_run("upgrade", &cmd, *timeout).await?;
                let code = r.exit_code;
                rec.commands.push(r);
                if code != 0 {
                    return Err(StepFailure::Command(format!(
                        "the upgrade exited with {code}"
                    )));
                }
                Ok(())
            }
            Step::Reboot { method } => {
                let s = self.session.as_mut().expect("a session after boot");
                *min_boot = s.classifier.boots_started();
                match method {
                    RebootMethod::Guest => s.send(b"sudo systemctl reboot\r").await?,
                    RebootMethod::Qmp => {
                        s.qmp
                            .execute(qapi::qmp::system_reset {})
                            .await
                            .map_err(anyhow::Error::from)?;
                    }
                }
                self.shell = None;
                Ok(())
            }
        }
    }

    async fn shell_run(
        &mut self,
        what: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Result<crate::engine::record::CommandResult, StepFailure> {
        let s = self.session.as_mut().expect("a session after boot");
        let sh = self.shell.as_mut().expect("checked: a login before");
        Ok(sh.run(s, what, cmd, timeout, self.cancel).await?)
    }

    /// Watches the current session's boot `min_boot` (or later) to a decision.
    async fn watch(
        &mut self,
        target: Option<Stage>,
        timeout: Duration,
        silence: Duration,
        min_boot: usize,
    ) -> Result<(), StepFailure> {
        let s = self.session.as_mut().expect("a session after boot");
        let spec = WatchSpec {
            target,
            timeout,
            silence,
            min_boot,
        };
        match s.watch(spec, self.cancel).await? {
            WatchEnd::Decided { decision, t_s } => {
                if decision.verdict == Verdict::Hang {
                    // Before the kill: what the machine shows (bounded in time, off the watch).
                    let n = s.index();
                    let dir = self.session_dir(n);
                    let s = self.session.as_mut().expect("a session after boot");
                    let ev = s.hang_evidence(&dir).await;
                    self.run_mut().hang = Some(ev);
                }
                let reached = decision.verdict == Verdict::Reached
                    || (target.is_none() && decision.exit_code == exit_code::GOOD);
                self.judged(&decision, t_s);
                if reached {
                    Ok(())
                } else {
                    Err(StepFailure::Guest)
                }
            }
            WatchEnd::Interrupted { .. } => Err(StepFailure::Interrupted),
        }
    }

    /// Records a decision about the current session's current boot as the case's outcome.
    fn judged(&mut self, d: &Decision, t_s: f64) {
        let s = self.session.as_ref().expect("a session");
        let n = s.index();
        let boot = s.classifier.current().clone();
        let outcome = outcome_of(d, &boot, t_s);
        self.run_mut().apply_decision(d, &boot, t_s);
        self.run_mut().status = if outcome.verdict == Verdict::HarnessError {
            RunStatus::Error
        } else {
            RunStatus::Complete
        };
        self.record
            .boots
            .retain(|b| !(b.session == n && b.boot.index == boot.index));
        self.record.boots.push(BootVerdict {
            session: n,
            boot,
            outcome: outcome.clone(),
        });
        self.record.outcome = outcome.clone();
        self.record.status = self.run_mut().status;
        self.emit(Event::Decided {
            session: n,
            outcome,
        });
    }

    /// After a shell step failed: if the classifier saw a guest failure, let its dump finish and
    /// judge it (the failure is the result, not the shell error).
    async fn judge_failure_seen_meanwhile(&mut self) -> anyhow::Result<bool> {
        let Some(s) = self.session.as_mut() else {
            return Ok(false);
        };
        let Some(d) = s.classifier.decide(None, &End::Running) else {
            return Ok(false);
        };
        if !d.verdict.is_guest_failure() {
            return Ok(false);
        }
        let spec = WatchSpec {
            target: None,
            timeout: Duration::from_secs(5),
            silence: Duration::from_secs(5),
            min_boot: 0,
        };
        let t = match s.watch(spec, self.cancel).await? {
            WatchEnd::Decided { t_s, .. } | WatchEnd::Interrupted { t_s } => t_s,
        };
        self.judged(&d, t);
        Ok(true)
    }

    fn interrupted(&mut self) {
        let reason = "interrupted (SIGINT/SIGTERM) before a verdict".to_string();
        let o = Outcome {
            stage: self.current_stage(),
            reason: reason.clone(),
            ..Outcome::unfinished("case")
        };
        self.record.outcome = o.clone();
        self.record.status = RunStatus::Interrupted;
        self.record.error = Some(reason.clone());
        let t = self.session.as_ref().map(Session::now_s);
        let run = self.run_mut();
        run.outcome = Outcome {
            time_to_verdict_s: t,
            ..o
        };
        run.status = RunStatus::Interrupted;
        run.error = Some(reason);
    }

    /// Stops the current session's QEMU and records the session.
    async fn end_session(&mut self) {
        self.shell = None;
        let Some(mut s) = self.session.take() else {
            return;
        };
        let cpu = s.qemu_cpu_s();
        let exit = s.shutdown().await;
        let run = self.runs.last_mut().expect("a run per session");
        record_session(run, &s);
        run.qemu.cpu_s = cpu;
        run.qemu.wall_s = Some(s.now_s());
        if let Err(e) = exit {
            let msg = format!("stopping QEMU: {e:#}");
            self.harness_error(&msg);
        }
    }

    fn finish_packages(&mut self) {
        let r = &mut self.record;
        if let (Some(before), Some(after)) = (r.packages.get("before"), r.packages.get("after")) {
            r.package_diff = guest::diff_packages(before, after);
        }
        r.suspects = match &self.case.req.image {
            Some(img) if r.outcome.is_guest_failure() => {
                guest::suspects(&img.guest, &r.package_diff)
            }
            _ => Vec::new(),
        };
    }

    /// The restore-bootloader workaround: put the base's EFI binaries back in the overlay
    /// (offline), then a fresh session (same overlay, same vars store) watched to login.
    async fn restore_and_boot(&mut self) -> anyhow::Result<()> {
        let t0 = std::time::Instant::now();
        let base = self.case.req.image.as_ref().expect("checked").base.clone();
        let ov = self.overlay.clone().expect("checked: an image");
        self.emit(Event::StepStarted {
            index: self.record.steps.len() + 1,
            step: "restore-bootloader".into(),
            detail: "put the base image's EFI binaries back".into(),
        });
        // The failed boot's disk is kept as it was (explain reads what the firmware booted);
        // the workaround writes into a new overlay on top of it, under the overlay's name, which
        // the VM's command line uses.
        let failed = ov.with_file_name(crate::engine::record::FAILED_DISK_NAME);
        tokio::fs::rename(&ov, &failed)
            .await
            .with_context(|| format!("keeping the failed disk as {}", failed.display()))?;
        disk::make_overlay(
            &failed,
            crate::inputs::images::catalog::ImageFormat::Qcow2,
            &ov,
        )
        .await?;
        let files = disk::restore_bootloader(&base, &ov).await?;
        self.record.restore = Some(RestoreRecord {
            files,
            duration_s: round_ms(t0.elapsed().as_secs_f64()),
            failed_disk: Some(failed),
        });
        let n = self.record.sessions.len() + 1;
        self.start_session(n).await?;
        let r = self
            .watch(
                Some(Stage::Login),
                Duration::from_secs(900),
                Duration::from_secs(240),
                0,
            )
            .await;
        self.end_session().await;
        match r {
            Ok(()) | Err(StepFailure::Guest) => Ok(()),
            Err(StepFailure::Interrupted) => {
                self.interrupted();
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("restore-bootloader: {e}")),
        }
    }

    /// Stops whatever still runs, hashes the inputs, and completes the records.
    pub(super) async fn finish(&mut self) {
        self.end_session().await;
        drop(self.served.take());
        if let Some(h) = self.hashing.take()
            && let Ok(mut hashes) = h.await
        {
            let qemu = hashes.pop().flatten();
            let mut it = hashes.into_iter();
            let code = it.next().flatten();
            let template = if self.case.vars_template.is_some() {
                it.next().flatten()
            } else {
                None
            };
            let disks: Vec<FileInfo> = it.flatten().collect();
            self.complete_inputs(code.as_ref(), template.as_ref(), &disks, qemu.as_ref());
            self.record.firmware_code = code.clone();
            for r in &mut self.runs {
                r.firmware.code = code.clone();
                r.firmware.vars_template = template.clone();
                r.disks = disks.clone();
            }
        }
        if let Some(v) = self.vars.clone() {
            let before = self.vars_before.take();
            let both = disk::blocking(move || Ok((vars_change(&v, before), v.info().ok()))).await;
            let (change, info) = both.unwrap_or((None, None));
            self.record.vars_change = change;
            if let Some(r) = self.runs.last_mut() {
                r.firmware.vars = info;
            }
        }
        if self.record.status == RunStatus::Running {
            // Every step ran and the last judged boot says how it went.
            self.record.status = RunStatus::Complete;
        }
        for r in &mut self.runs {
            if r.status == RunStatus::Running {
                r.status = self.record.status;
                r.outcome = self.record.outcome.clone();
            }
        }
        // The private directories (sockets, throwaway disks and vars) go now, before the CPU
        // is read: removing them is part of what the run cost.
        drop(self.private.take());
        drop(self.private_mem.take());
        let wall = round_ms(self.started.elapsed().as_secs_f64());
        self.record.duration_s = wall;
        let cpu = crate::sys::host::own_cpu_s().map(round_ms);
        if let Some(r) = self.runs.last_mut() {
            r.duration_s = wall;
            r.harness_cpu_s = cpu;
        }
    }
}

impl Driver<'_> {
    /// `case.json`'s inputs: what the caller said of their provenance, completed with the hash
    /// and size of what was booted; inputs nobody described are recorded by path and hash.
    fn complete_inputs(
        &mut self,
        code: Option<&FileInfo>,
        template: Option<&FileInfo>,
        disks: &[FileInfo],
        qemu: Option<&FileInfo>,
    ) {
        let mut files: Vec<(&str, &FileInfo)> = Vec::new();
        files.extend(qemu.map(|f| ("qemu", f)));
        files.extend(code.map(|f| ("firmware-code", f)));
        files.extend(template.map(|f| ("vars-template", f)));
        for d in &self.case.disks {
            if let Some(f) = disks.iter().find(|f| f.path == d.path) {
                files.push(("disk", f));
            }
        }
        let inputs = &mut self.record.inputs;
        // Recorded absolute: a bundle's reader runs elsewhere.
        let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        for (role, f) in files {
            let i = match inputs
                .iter()
                .position(|r| r.role == role && abs(&r.path) == abs(&f.path))
            {
                Some(i) => i,
                None => {
                    let mut r = InputRecord::new(role, &abs(&f.path));
                    if role == "disk" {
                        r.note = "a disk given as a file".into();
                    }
                    inputs.push(r);
                    inputs.len() - 1
                }
            };
            let r = &mut inputs[i];
            r.sha256.get_or_insert_with(|| f.sha256.clone());
            r.size.get_or_insert(f.size);
        }
        if let Some(img) = &self.case.req.image {
            let i = match inputs.iter().position(|r| r.role == "image") {
                Some(i) => i,
                None => {
                    let mut r = InputRecord::new("image", &img.base);
                    r.provider = Some(format!("image:{}", img.name));
                    inputs.push(r);
                    inputs.len() - 1
                }
            };
            inputs[i]
                .sha256
                .get_or_insert_with(|| img.base_sha256.clone());
        }
        let run = self.runs.first();
        if let Some(q) = inputs.iter_mut().find(|r| r.role == "qemu") {
            if q.version.is_none() {
                q.version = run.and_then(|r| r.qemu.version.clone());
            }
            if q.package_version.is_none()
                && let Some(p) = run.and_then(|r| r.qemu.package.as_deref())
            {
                // QEMU's own package string: "Debian 1:7.2+dfsg-7+deb12u18+b3".
                q.package_version = Some(p.strip_prefix("Debian ").unwrap_or(p).to_string());
            }
        }
    }
}

/// The store before (the upgrade, else the template) and as the case left it, compared.
fn vars_change(
    v: &VarsCopy,
    before: Option<crate::core::varstore::VarStore>,
) -> Option<crate::core::varstore::VarsChange> {
    let mut errors = Vec::new();
    let (label, before) = match before {
        Some(b) => ("before-upgrade", Some(b)),
        None => (
            "template",
            disk::read_varstore(&v.template)
                .map_err(|e| errors.push(format!("{e:#}")))
                .ok(),
        ),
    };
    let after = disk::read_varstore(&v.path)
        .map_err(|e| errors.push(format!("{e:#}")))
        .ok();
    let empty = crate::core::varstore::VarStore {
        authenticated: true,
        variables: Vec::new(),
    };
    if before.is_none() && after.is_none() {
        let mut c = crate::core::varstore::compare(label, &empty, &empty);
        c.errors = errors;
        return Some(c);
    }
    let mut c = crate::core::varstore::compare(
        label,
        before.as_ref().unwrap_or(&empty),
        after.as_ref().unwrap_or(&empty),
    );
    c.errors = errors;
    Some(c)
}

/// The argv QEMU is started with for `vm`, program first, as text (for the record).
fn argv_strings(vm: &VmConfig) -> Vec<String> {
    let (program, args) = launch::program_and_args(vm);
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// A record as the bytes of its file: pretty JSON and a final newline.
fn json_bytes<T: serde::Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v)?;
    b.push(b'\n');
    Ok(b)
}

/// What the step is about, for progress displays.
fn step_detail(step: &Step) -> String {
    match step {
        Step::Boot { until, .. } => until.map_or(String::new(), |t| format!("until {t}")),
        Step::Watch { until, .. } => format!("until {until}"),
        Step::Run { command, .. } => command.clone(),
        Step::SnapshotPackages { label } => label.clone(),
        Step::Reboot { method } => format!("{method:?}").to_lowercase(),
        Step::Login { .. } | Step::Upgrade { .. } => String::new(),
    }
}

/// Copies what a session saw into its record.
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
    result.harness_watch_cpu_s = Some(round_ms(s.watch_cpu_s));
    result.firmware.banner_version = cls.firmware_banner_version();
}
