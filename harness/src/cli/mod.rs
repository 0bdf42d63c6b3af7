//! The `bootwatch` command line. The only module that prints.

mod matrix;
mod progress;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::core::classify::{self, FindingKind};
use crate::core::launch::{Accel, Forward};
use crate::core::verdict::{Target, exit_code};
use crate::engine::record::RunResult;
use crate::engine::run::{self, BootRequest, ConfigError, ImageBoot};
use crate::engine::runner::{self, CaseConfig, MachineSpec, UpdateRepo};
use crate::engine::session::{SessionEvent, Timings};
use crate::inputs::images::{self, Registry};
use crate::inputs::providers::host_firmware;
use crate::inputs::{debian, fixtures};
use crate::plan::demo as demo_mod;
use crate::plan::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "bootwatch",
    version,
    about = "Boot ARM64 guests under QEMU + edk2, watch, and say exactly what happened"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a disk under qemu-system-aarch64 + edk2 and judge the boot.
    Boot(Box<BootArgs>),
    /// Classify a saved console log offline.
    Classify {
        /// The log file (raw serial bytes or normalized text).
        logfile: PathBuf,
        /// Print one JSON object (verdict, stage, findings, timeline).
        #[arg(long)]
        json: bool,
    },
    /// Write the test fixtures (crash.img, hello.img, silent.img: raw FAT images with a generated
    /// EFI application as \EFI\BOOT\BOOTAA64.EFI).
    Fixtures {
        #[arg(long)]
        out: PathBuf,
    },
    /// Guest images: the vendor catalog and local recipes.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Firmware builds from Debian's archive.
    Firmware {
        #[command(subcommand)]
        command: FirmwareCommand,
    },
    /// Run a scenario (scenarios/*.toml) on a catalog image or local recipe.
    Run(Box<RunArgs>),
    /// The embedded default: the local Debian image upgraded with a good and a bad bootloader
    /// update (served hermetically), rebooted and judged, then the restore-bootloader workaround
    /// after the bad one. `--fixtures`: only boot the crash and healthy fixtures (quick).
    Demo {
        /// Only the generated EFI fixtures (seconds instead of minutes).
        #[arg(long)]
        fixtures: bool,
        /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Where the runs' results go.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        #[arg(long, default_value = "qemu-system-aarch64")]
        qemu: PathBuf,
        #[arg(long)]
        firmware: Option<PathBuf>,
    },
    /// Run a compatibility matrix (scenarios/matrix/*.toml): every combination of image, QEMU
    /// build, firmware build, CPU model and vars store, concurrently, with reports.
    Matrix(Box<matrix::MatrixArgs>),
    /// Reports over matrix results.
    Report {
        #[command(subcommand)]
        command: matrix::ReportCommand,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The scenario file.
    scenario: PathBuf,
    /// A catalog image or local recipe.
    #[arg(long)]
    image: String,
    #[arg(long, default_value = "qemu-system-aarch64")]
    qemu: PathBuf,
    /// Firmware code image (default: the host's edk2).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Vars template (default: the VARS file next to the code image).
    #[arg(long)]
    vars: Option<PathBuf>,
    /// A package repository directory to serve to the guest for the upgrade (hermetic updates);
    /// without it the guest upgrades from its own configured sources.
    #[arg(long)]
    update: Option<PathBuf>,
    /// Workaround: upgrade without the bootloader packages.
    #[arg(long)]
    exclude_bootloader: bool,
    /// Workaround: if the reboot fails, put the base image's EFI binaries back and boot again.
    #[arg(long)]
    restore_bootloader: bool,
    /// Print the plan (steps, commands, QEMU argv) without downloading or starting anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, default_value = "results")]
    results: PathBuf,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    cpu: Option<String>,
    #[arg(long)]
    accel: Option<Accel>,
    #[arg(long, default_value_t = 2)]
    smp: u32,
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Debian archive mirror for building a local image.
    #[arg(long)]
    mirror: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// Every catalog image and local recipe, with its cache state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download and verify a catalog image into the cache (a no-op when cached).
    Fetch { name: String },
    /// Build a local recipe (a no-op when built); prints the image path.
    Build {
        name: String,
        /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum FirmwareCommand {
    /// Download, verify and unpack Debian's qemu-efi-aarch64 of a version (e.g. 2025.02, or
    /// 2025.02/strictnx for a variant) into the cache; prints the code and vars paths.
    Fetch {
        spec: String,
        /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Firmware code image (default: the host's edk2, e.g. /usr/share/AAVMF/AAVMF_CODE.fd).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Vars template (default: the VARS file next to the code image); the run boots a copy.
    #[arg(long)]
    vars: Option<PathBuf>,
    /// Disk image (raw or qcow2); repeat for more disks.
    #[arg(long, required_unless_present = "image")]
    disk: Vec<PathBuf>,
    /// A catalog image or local recipe (see `bootwatch images list`), fetched or built if
    /// needed, booted through a fresh overlay with its cloud-init provisioning.
    #[arg(long)]
    image: Option<String>,
    /// With --image and --until login: log in on the serial console as the provisioned user.
    #[arg(long, requires = "image")]
    login: bool,
    /// With --image: keep the run's overlay (the disk as the guest left it) in the results.
    #[arg(long, requires = "image")]
    keep_overlay: bool,
    /// Debian archive mirror for building a local image.
    #[arg(long)]
    mirror: Option<String>,
    /// Never write the disks: QEMU keeps the guest's writes in a temporary overlay.
    #[arg(long)]
    snapshot: bool,
    /// Stage to wait for; without it the run waits for a failure, a power-off, silence or the timeout.
    #[arg(long)]
    until: Option<Target>,
    /// Overall timeout in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Seconds without console output after which the guest is judged hung.
    #[arg(long, default_value_t = 60.0)]
    silence: f64,
    /// Print result.json to stdout.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "qemu-system-aarch64")]
    qemu: PathBuf,
    #[arg(long, default_value = "virt")]
    machine: String,
    /// CPU model (default: cortex-a72 under TCG, host under KVM/HVF).
    #[arg(long)]
    cpu: Option<String>,
    /// Accelerator (default: the best the host has).
    #[arg(long)]
    accel: Option<Accel>,
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// User-mode network with HOST:GUEST TCP forwards bound to 127.0.0.1 (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    forwards: Vec<Forward>,
    /// Add a user-mode network even without forwards.
    #[arg(long)]
    net: bool,
    /// Extra argument passed to QEMU verbatim (repeatable).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_args: Vec<OsString>,
    /// Results root: the run writes DIR/<run-id>/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

fn parse_forward(s: &str) -> Result<Forward, String> {
    let (h, g) = s
        .split_once(':')
        .ok_or("expected HOST:GUEST, e.g. 2222:22")?;
    let p = |x: &str| x.parse::<u16>().map_err(|e| format!("{x:?}: {e}"));
    Ok(Forward {
        host_port: p(h)?,
        guest_port: p(g)?,
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOOTWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // One thread: QEMU is spawned from the main thread, so its parent-death signal (which
    // follows the spawning thread) fires exactly when the harness dies.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                exit_code::UNDETERMINED,
                &format!("cannot start the runtime: {e}"),
            );
        }
    };
    rt.block_on(dispatch(cli))
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("bootwatch: error: {msg}");
    ExitCode::from(code)
}

/// Cancelled on SIGINT or SIGTERM.
fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Boot(args) => boot(*args).await,
        Command::Classify { logfile, json } => classify_cmd(&logfile, json),
        Command::Fixtures { out } => match fixtures::write_all(&out) {
            Ok(paths) => {
                for p in paths {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit_code::UNDETERMINED, &format!("{e:#}")),
        },
        Command::Images { command } => images_cmd(command).await,
        Command::Firmware {
            command: FirmwareCommand::Fetch { spec, mirror, json },
        } => firmware_fetch(&spec, mirror.as_deref(), json).await,
        Command::Run(args) => run_scenario(*args).await,
        Command::Matrix(args) => matrix::matrix(*args).await,
        Command::Report { command } => matrix::report(command),
        Command::Demo {
            fixtures: true,
            json,
            results,
            qemu,
            firmware,
            ..
        } => demo(json, &results, &qemu, firmware).await,
        Command::Demo {
            json,
            results,
            qemu,
            firmware,
            mirror,
            ..
        } => upgrade_demo(json, &results, &qemu, firmware, mirror.as_deref()).await,
    }
}

/// The machine scenario cases run on: a checked QEMU and pflash firmware with its vars template.
fn machine_spec(
    qemu: &Path,
    firmware: Option<PathBuf>,
    vars: Option<PathBuf>,
    cpu: Option<String>,
    accel: Option<Accel>,
    smp: u32,
    memory_mib: u32,
) -> Result<MachineSpec, ConfigError> {
    let qemu = which::which(qemu).map_err(|_| {
        ConfigError(format!(
            "QEMU not found: {} (install qemu-system-arm, or pass --qemu PATH)",
            qemu.display()
        ))
    })?;
    let code = firmware.or_else(host_firmware).ok_or_else(|| {
        ConfigError(
            "no host firmware found (install qemu-efi-aarch64, or pass --firmware CODE)".into(),
        )
    })?;
    let size = std::fs::metadata(&code)
        .map_err(|e| ConfigError(format!("firmware code image {}: {e}", code.display())))?
        .len();
    if size != crate::core::launch::PFLASH_SIZE {
        return Err(ConfigError(format!(
            "firmware code image {} is not a 64 MiB flash image; scenarios need one (its vars store persists across reboots)",
            code.display()
        )));
    }
    let vars = match vars {
        Some(v) => v,
        None => run::sibling_vars(&code).ok_or_else(|| {
            ConfigError(format!(
                "no vars template found next to {} (pass --vars VARS)",
                code.display()
            ))
        })?,
    };
    if !vars.is_file() {
        return Err(ConfigError(format!(
            "vars template {} is missing",
            vars.display()
        )));
    }
    let accel = accel.unwrap_or_else(|| crate::sys::host::host_facts().best_accel());
    let cpu = cpu.unwrap_or_else(|| accel.default_cpu().to_string());
    Ok(MachineSpec {
        qemu,
        qemu_exec: Default::default(),
        cpu,
        accel,
        smp,
        memory_mib,
        firmware_code: code,
        vars_template: vars,
    })
}

async fn run_scenario(a: RunArgs) -> ExitCode {
    let scenario = match Scenario::load(&a.scenario) {
        Ok(s) => s,
        Err(e) => return fail(exit_code::USAGE, &e.to_string()),
    };
    let registry = match Registry::load() {
        Ok(r) => r,
        Err(e) => return fail(exit_code::USAGE, &e.to_string()),
    };
    let Some(entry) = registry.get(&a.image) else {
        return fail(exit_code::USAGE, &unknown_image(&a.image, &registry));
    };
    let machine = match machine_spec(
        &a.qemu,
        a.firmware.clone(),
        a.vars.clone(),
        a.cpu.clone(),
        a.accel,
        a.smp,
        a.memory,
    ) {
        Ok(m) => m,
        Err(e) => return fail(exit_code::USAGE, &e.0),
    };
    if let Some(u) = &a.update
        && !u.join("Packages").is_file()
        && !u.join("repodata").is_dir()
    {
        return fail(
            exit_code::USAGE,
            &format!(
                "--update {}: not a package repository (no Packages index)",
                u.display()
            ),
        );
    }
    let guest = entry.guest().clone();
    if a.dry_run {
        let repo_url = a.update.as_ref().map(|_| "http://10.0.2.2:PORT/");
        let plan = serde_json::json!({
            "scenario": scenario.name,
            "source": scenario.source,
            "image": a.image,
            "kind": match entry { images::Entry::Vendor(_) => "vendor", images::Entry::Local(_) => "local" },
            "url": match entry { images::Entry::Vendor(i) => Some(i.url.clone()), images::Entry::Local(_) => None },
            "steps": scenario.steps,
            "upgrade_command": runner::upgrade_command(&guest, repo_url, a.exclude_bootloader),
            "package_query": guest.package_query,
            "login_user": guest.login_user,
            "restore_bootloader": a.restore_bootloader,
            "qemu_command_line": dry_run_command_line(&machine),
        });
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).unwrap_or_default()
            );
        } else {
            println!(
                "scenario {} on {} (dry run: nothing downloaded or started)",
                scenario.name, a.image
            );
            for (i, st) in scenario.steps.iter().enumerate() {
                println!(
                    "  {:>2}. {}",
                    i + 1,
                    serde_json::to_string(st).unwrap_or_default()
                );
            }
            println!(
                "  upgrade: {}",
                plan["upgrade_command"].as_str().unwrap_or("")
            );
            println!(
                "  qemu: {}",
                plan["qemu_command_line"].as_str().unwrap_or("")
            );
        }
        return ExitCode::SUCCESS;
    }
    let cache = match crate::sys::fsx::cache_root() {
        Ok(c) => c,
        Err(e) => return fail(exit_code::UNDETERMINED, &format!("{e:#}")),
    };
    let cancel = signal_token();
    let (tx, shown) = progress::image_progress(a.json);
    let image = images::resolve(entry, &cache, a.mirror.as_deref(), &cancel, tx).await;
    let _ = shown.await;
    let image = match image {
        Ok(r) => r,
        Err(e) => {
            return fail(
                exit_code::UNDETERMINED,
                &format!("image {}: {e:#}", a.image),
            );
        }
    };
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let cfg = CaseConfig {
        label: format!("{}-{}", scenario.name, a.image),
        dir: a
            .results
            .join(format!("{stamp}-{}-{}", scenario.name, a.image)),
        scenario,
        image,
        machine,
        update: a.update.clone().map(|dir| UpdateRepo {
            label: dir.display().to_string(),
            dir,
        }),
        exclude_bootloader: a.exclude_bootloader,
        restore_bootloader: a.restore_bootloader,
        timings: Timings::default(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = tokio::spawn(show_progress_until_closed(rx, a.json));
    let r = runner::run_case(&cfg, &cancel, Some(tx)).await;
    let _ = progress.await;
    match r {
        Err(e) => fail(exit_code::UNDETERMINED, &format!("{e:#}")),
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                for st in &r.steps {
                    println!(
                        "  {:<18} {:<8} {:>7.1} s  {}",
                        st.step, st.status, st.duration_s, st.detail
                    );
                }
                println!("verdict: {} (stage {}) {}", r.verdict, r.stage, r.reason);
                if !r.suspects.is_empty() {
                    println!("suspects: {}", r.suspects.join(", "));
                }
                println!("results: {}", cfg.dir.display());
            }
            ExitCode::from(r.exit_code)
        }
    }
}

fn dry_run_command_line(m: &MachineSpec) -> String {
    let vm = crate::core::launch::VmConfig {
        qemu: m.qemu.clone(),
        exec: m.qemu_exec.clone(),
        machine: "virt".into(),
        cpu: m.cpu.clone(),
        accel: m.accel,
        smp: m.smp,
        memory_mib: m.memory_mib,
        firmware: crate::core::launch::FirmwareLoad::Pflash {
            code: m.firmware_code.clone(),
            vars: "RESULTS/vars.fd".into(),
        },
        disks: vec![
            crate::core::launch::Disk {
                path: "RESULTS/overlay.qcow2".into(),
                format: crate::core::launch::DiskFormat::Qcow2,
                read_only: false,
                snapshot: false,
            },
            crate::core::launch::Disk {
                path: "RESULTS/seed.img".into(),
                format: crate::core::launch::DiskFormat::Raw,
                read_only: true,
                snapshot: false,
            },
        ],
        network: Some(Vec::new()),
        serial_socket: "RUN/serial.sock".into(),
        qmp_socket: "RUN/qmp.sock".into(),
        extra_args: Vec::new(),
    };
    crate::core::launch::vm_command_line(&vm)
}

async fn show_progress_until_closed(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<SessionEvent>,
    quiet: bool,
) {
    while let Some(ev) = rx.recv().await {
        if !quiet {
            show_progress(&ev);
        }
    }
}

async fn upgrade_demo(
    json: bool,
    results: &Path,
    qemu: &Path,
    firmware: Option<PathBuf>,
    mirror: Option<&str>,
) -> ExitCode {
    let machine = match machine_spec(qemu, firmware, None, None, None, 2, 2048) {
        Ok(m) => m,
        Err(e) => return fail(exit_code::USAGE, &e.0),
    };
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir = results.join(format!("{stamp}-demo"));
    if !json {
        eprintln!(
            "bootwatch demo: results in {} (the first run builds the Debian image: minutes)",
            dir.display()
        );
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = tokio::spawn(show_progress_until_closed(rx, json));
    let rows = demo_mod::run_demo(&dir, machine, mirror, &signal_token(), Some(tx)).await;
    let _ = progress.await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return fail(exit_code::UNDETERMINED, &format!("{e:#}")),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:<30} {:<14} {:<12} {:<16} {:<10} {:>8}  suspects",
            "case", "scenario", "update", "verdict", "stage", "time"
        );
        for r in &rows {
            let t = r
                .time_to_verdict_s
                .map(|t| format!("{t:.1} s"))
                .unwrap_or_default();
            println!(
                "{:<30} {:<14} {:<12} {:<16} {:<10} {t:>8}  {}",
                r.case,
                r.scenario,
                r.update,
                r.verdict.as_str(),
                r.stage.as_str(),
                r.suspects.join(" ")
            );
        }
    }
    if demo_mod::as_expected(&rows) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit_code::BAD)
    }
}

fn request_from(args: &BootArgs) -> Result<BootRequest, ConfigError> {
    let firmware_code = match &args.firmware {
        Some(f) => f.clone(),
        None => host_firmware().ok_or_else(|| {
            ConfigError(
                "no host firmware found (install qemu-efi-aarch64, or pass --firmware CODE)".into(),
            )
        })?,
    };
    let secs = |flag: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(ConfigError(format!(
                "--{flag} must be a positive number of seconds, not {v}"
            )))
        }
    };
    let name = args
        .disk
        .first()
        .and_then(|d| d.file_stem())
        .map(|s| s.to_string_lossy().into_owned());
    Ok(BootRequest {
        qemu: args.qemu.clone(),
        qemu_exec: Default::default(),
        machine: args.machine.clone(),
        cpu: args.cpu.clone(),
        accel: args.accel,
        smp: args.smp,
        memory_mib: args.memory,
        firmware_code,
        vars_template: args.vars.clone(),
        disks: args.disk.clone(),
        snapshot: args.snapshot,
        network: (args.net || !args.forwards.is_empty()).then(|| args.forwards.clone()),
        extra_args: args.qemu_args.clone(),
        target: args.until,
        timeout: secs("timeout", args.timeout)?,
        silence: secs("silence", args.silence)?,
        results_root: args.results.clone(),
        results_dir: None,
        name: name.unwrap_or_else(|| "boot".into()),
        timings: Timings::default(),
        image: None,
        login: false,
    })
}

async fn boot(args: BootArgs) -> ExitCode {
    let mut req = match request_from(&args) {
        Ok(r) => r,
        Err(e) => return fail(exit_code::USAGE, &e.0),
    };
    let cancel = signal_token();
    if let Some(name) = &args.image {
        let registry = match Registry::load() {
            Ok(r) => r,
            Err(e) => return fail(exit_code::USAGE, &e.to_string()),
        };
        let Some(entry) = registry.get(name) else {
            return fail(exit_code::USAGE, &unknown_image(name, &registry));
        };
        let cache = match crate::sys::fsx::cache_root() {
            Ok(c) => c,
            Err(e) => return fail(exit_code::UNDETERMINED, &format!("{e:#}")),
        };
        let (tx, shown) = progress::image_progress(args.json);
        let resolved = images::resolve(entry, &cache, args.mirror.as_deref(), &cancel, tx).await;
        let _ = shown.await;
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => return fail(exit_code::UNDETERMINED, &format!("image {name}: {e:#}")),
        };
        req.name = name.clone();
        req.login = args.login;
        req.image = Some(ImageBoot {
            name: resolved.name,
            base: resolved.path,
            base_sha256: resolved.sha256,
            format: resolved.format,
            guest: resolved.guest,
            keep_overlay: args.keep_overlay,
        });
    }
    let checked = match run::validate(req) {
        Ok(c) => c,
        Err(e) => return fail(exit_code::USAGE, &e.0),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let quiet = args.json;
    let progress = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if !quiet {
                show_progress(&ev);
            }
        }
    });
    let outcome = run::run(checked, cancel, Some(tx)).await;
    let _ = progress.await;
    match outcome {
        Err(e) => fail(exit_code::UNDETERMINED, &format!("{e:#}")),
        Ok(o) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&o.result).unwrap_or_default()
                );
            } else {
                print_summary(&o.result, &o.dir);
            }
            ExitCode::from(o.result.exit_code)
        }
    }
}

fn show_progress(ev: &SessionEvent) {
    match ev {
        SessionEvent::Milestone {
            boot,
            stage,
            t_s,
            text,
        } => {
            let b = if *boot > 0 {
                format!(" (boot {})", boot + 1)
            } else {
                String::new()
            };
            eprintln!("[{t_s:8.3}] {stage:<14}{b} {text}");
        }
        SessionEvent::QmpEvent { name, t_s } => eprintln!("[{t_s:8.3}] qmp event     {name}"),
        SessionEvent::Progress {
            what,
            elapsed_s,
            last_line,
        } => {
            eprintln!("           {what}: {elapsed_s:.0} s so far; last line: {last_line}")
        }
    }
}

fn print_summary(r: &RunResult, dir: &Path) {
    let mut out = std::io::stdout().lock();
    let where_ = if r.verdict.is_guest_failure() && r.before_grub {
        ", before GRUB"
    } else {
        ""
    };
    let t = r
        .time_to_verdict_s
        .map(|t| format!(" after {t:.1} s"))
        .unwrap_or_default();
    let _ = writeln!(out, "verdict: {} (stage {}{where_}){t}", r.verdict, r.stage);
    let _ = writeln!(out, "  {}", r.reason);
    if let Some(x) = r.finding.as_ref().and_then(|f| f.exception.as_ref()) {
        if let Some(a) = &x.address {
            let _ = writeln!(out, "  exception: {} at {a}", x.kind);
        }
        for f in x.backtrace.iter().take(8) {
            let _ = writeln!(out, "    PC {} {}", f.pc, f.module.as_deref().unwrap_or(""));
        }
    }
    let _ = writeln!(out, "results: {}", dir.display());
}

fn classify_cmd(path: &Path, json: bool) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(exit_code::USAGE, &format!("{}: {e}", path.display())),
    };
    let (cls, d) = classify::classify_log(&bytes);
    let boot = cls.current();
    if json {
        let v = serde_json::json!({
            "file": path,
            "verdict": d.verdict,
            "stage": d.stage,
            "before_grub": d.before_grub,
            "reason": d.reason,
            "exit_code": d.exit_code,
            "finding": d.finding.map(|i| &boot.findings[i]),
            "findings": boot.findings,
            "timeline": boot.timeline,
            "boots": cls.boots().len(),
            "lines": cls.lines(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("verdict: {} (stage {})", d.verdict, d.stage);
        println!("  {}", d.reason);
        for f in &boot.findings {
            let kind = match f.kind {
                FindingKind::Fatal => "fatal",
                FindingKind::Suspect if f.cleared => "cleared",
                FindingKind::Suspect => "suspect",
                FindingKind::Note => "note",
            };
            println!(
                "  line {:>5} {kind:<8} {:<26} {}",
                f.line,
                f.pattern,
                f.text.trim()
            );
        }
    }
    ExitCode::from(d.exit_code)
}

fn unknown_image(name: &str, registry: &Registry) -> String {
    format!(
        "unknown image {name:?}; known: {}",
        registry.names().join(", ")
    )
}

async fn images_cmd(command: ImagesCommand) -> ExitCode {
    let registry = match Registry::load() {
        Ok(r) => r,
        Err(e) => return fail(exit_code::USAGE, &e.to_string()),
    };
    let cache = match crate::sys::fsx::cache_root() {
        Ok(c) => c,
        Err(e) => return fail(exit_code::UNDETERMINED, &format!("{e:#}")),
    };
    match command {
        ImagesCommand::List { json } => {
            let status = registry.status(&cache);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<18} {:<7} {:<10} {:<10} {:>9}  description",
                    "name", "kind", "reported", "state", "size"
                );
                for s in &status {
                    let size = s
                        .size
                        .map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
                        .unwrap_or_default();
                    let reported = format!("{:?}", s.reported).to_lowercase();
                    println!(
                        "{:<18} {:<7} {reported:<10} {:<10} {size:>9}  {}",
                        s.name, s.kind, s.state, s.description
                    );
                }
                println!(
                    "(vendor entries were researched, not downloaded, where they were written; `images list --json` has each entry's verification note)"
                );
            }
            ExitCode::SUCCESS
        }
        ImagesCommand::Fetch { name } => {
            let Some(entry) = registry.get(&name) else {
                return fail(exit_code::USAGE, &unknown_image(&name, &registry));
            };
            if matches!(entry, images::Entry::Local(_)) {
                return fail(
                    exit_code::USAGE,
                    &format!("{name} is a local recipe: use `bootwatch images build {name}`"),
                );
            }
            let (tx, shown) = progress::image_progress(false);
            let resolved = images::resolve(entry, &cache, None, &signal_token(), tx).await;
            let _ = shown.await;
            match resolved {
                Ok(r) => {
                    println!("{}", r.path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(exit_code::UNDETERMINED, &format!("image {name}: {e:#}")),
            }
        }
        ImagesCommand::Build { name, mirror } => {
            let Some(entry) = registry.get(&name) else {
                return fail(exit_code::USAGE, &unknown_image(&name, &registry));
            };
            if matches!(entry, images::Entry::Vendor(_)) {
                return fail(
                    exit_code::USAGE,
                    &format!("{name} is a vendor image: use `bootwatch images fetch {name}`"),
                );
            }
            let (tx, shown) = progress::image_progress(false);
            let resolved =
                images::resolve(entry, &cache, mirror.as_deref(), &signal_token(), tx).await;
            let _ = shown.await;
            match resolved {
                Ok(r) => {
                    println!("{}", r.path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(exit_code::UNDETERMINED, &format!("image {name}: {e:#}")),
            }
        }
    }
}

async fn firmware_fetch(spec: &str, mirror: Option<&str>, json: bool) -> ExitCode {
    let (version, variant) = spec.split_once('/').unwrap_or((spec, "default"));
    let result = async {
        let mirror = debian::resolve_mirror(mirror)?;
        let cache = crate::sys::fsx::cache_root()?;
        let build = debian::fetch_edk2(&mirror, version, &cache).await?;
        let (code, vars) = build.firmware(variant)?;
        anyhow::Ok((build, code, vars))
    }
    .await;
    match result {
        Err(e) => fail(exit_code::UNDETERMINED, &format!("{e:#}")),
        Ok((build, code, vars)) => {
            if json {
                let v = serde_json::json!({ "debian_version": build.debian_version, "suite": build.suite,
                    "variant": variant, "code": code, "vars": vars, "dir": build.dir });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "edk2 {} ({}), variant {variant}",
                    build.debian_version, build.suite
                );
                println!("code: {}", code.display());
                println!("vars: {}", vars.display());
            }
            ExitCode::SUCCESS
        }
    }
}

/// The embedded default until the upgrade scenario lands: the crash and healthy fixtures.
async fn demo(json: bool, results: &Path, qemu: &Path, firmware: Option<PathBuf>) -> ExitCode {
    let result = async {
        let fixtures_dir = crate::sys::fsx::cache_root()?.join("fixtures");
        fixtures::write_all(&fixtures_dir).context("writing the fixtures")?;
        let firmware_code = firmware.or_else(host_firmware).ok_or_else(|| {
            ConfigError(
                "no host firmware found (install qemu-efi-aarch64, or pass --firmware CODE)".into(),
            )
        })?;
        let cancel = signal_token();
        let mut rows = Vec::new();
        for fixture in [fixtures::Fixture::Crash, fixtures::Fixture::Hello] {
            let req = BootRequest {
                qemu: qemu.to_path_buf(),
                qemu_exec: Default::default(),
                machine: "virt".into(),
                cpu: None,
                accel: None,
                smp: 1,
                memory_mib: 512,
                firmware_code: firmware_code.clone(),
                vars_template: None,
                disks: vec![fixtures_dir.join(fixture.image_file_name())],
                snapshot: true,
                network: None,
                extra_args: Vec::new(),
                target: None,
                timeout: Duration::from_secs(120),
                silence: Duration::from_secs(30),
                results_root: results.to_path_buf(),
                results_dir: None,
                name: format!("demo-{}", fixture.name()),
                timings: Timings::default(),
                image: None,
                login: false,
            };
            let checked = run::validate(req)?;
            if !json {
                eprintln!("booting the {} fixture ...", fixture.name());
            }
            let o = run::run(checked, cancel.clone(), None).await?;
            rows.push((fixture.name(), o));
            if cancel.is_cancelled() {
                break;
            }
        }
        anyhow::Ok(rows)
    }
    .await;
    let rows = match result {
        Ok(r) => r,
        Err(e) => {
            let code = if e.is::<ConfigError>() {
                exit_code::USAGE
            } else {
                exit_code::UNDETERMINED
            };
            return fail(code, &format!("{e:#}"));
        }
    };
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(name, o)| {
                serde_json::json!({ "case": name, "verdict": o.result.verdict, "stage": o.result.stage,
                    "before_grub": o.result.before_grub, "time_to_verdict_s": o.result.time_to_verdict_s,
                    "exit_code": o.result.exit_code, "results": o.dir })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:<8} {:<16} {:<10} {:>8}  results",
            "case", "verdict", "stage", "time"
        );
        for (name, o) in &rows {
            let t = o
                .result
                .time_to_verdict_s
                .map(|t| format!("{t:.1} s"))
                .unwrap_or_default();
            println!(
                "{name:<8} {:<16} {:<10} {t:>8}  {}",
                o.result.verdict,
                o.result.stage,
                o.dir.display()
            );
        }
    }
    // The demo succeeds when each fixture gave the verdict it exists for.
    let expected = rows.iter().all(|(name, o)| match *name {
        "crash" => o.result.verdict == crate::core::verdict::Verdict::SyncException,
        _ => {
            o.result.verdict == crate::core::verdict::Verdict::QemuExited && o.result.exit_code == 0
        }
    });
    if expected && rows.len() == 2 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit_code::BAD)
    }
}
