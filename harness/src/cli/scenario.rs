//! `bootwatch run SCENARIO --image NAME` and `bootwatch demo`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{CliError, CliResult, firmware_or_host, in_range, show, signal_token, unknown_image};
use crate::core::launch::{Accel, FirmwareWait};
use crate::engine::case::{self, CaseDir, CaseRequest, ImageDisk, UpdateRepo, VarsSource};
use crate::engine::guest::upgrade_command;
use crate::inputs::images::{self, Registry};
use crate::plan::demo::{self, Demo, DemoMachine, DemoRow};
use crate::plan::scenario::{Scenario, limits};
use crate::plan::updates::{self, UpdateChoice};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
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
    /// The firmware boot manager's countdown: skip (default: no wait, the same boot options in
    /// the same order) or default (the firmware's own wait, about 5 s).
    #[arg(long, default_value = "skip")]
    firmware_wait: FirmwareWait,

    /// What to serve to the guest for the upgrade (hermetic updates): `good` (a local image's
    /// own good update from Debian's archive), `bad` (the crashing shim-signed), or a package
    /// repository directory; without it the guest upgrades from its own configured sources.
    #[arg(long, value_parser = UpdateChoice::parse)]
    update: Option<UpdateChoice>,
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
    /// Accelerator: tcg, kvm or hvf (default: the best the host has).
    #[arg(long)]
    accel: Option<Accel>,
    /// vCPUs (1 to 512).
    #[arg(long, default_value_t = 2, value_parser = in_range(limits::SMP))]
    smp: u32,
    /// Memory in MiB (16 to 1048576).
    #[arg(long, default_value_t = 2048, value_parser = in_range(limits::MEMORY_MIB))]
    memory: u32,
    /// Debian archive mirror for building a local image.
    #[arg(long)]
    mirror: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Only the generated EFI fixtures (seconds instead of minutes).
    #[arg(long)]
    fixtures: bool,
    /// The local image the cases run on, instead of scenarios/demo.toml's (e.g.
    /// debian-12-dnf-local: the same three outcomes through dnf and RPM packages).
    #[arg(long, value_name = "IMAGE", conflicts_with = "fixtures")]
    guest: Option<String>,
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
    /// The firmware boot manager's countdown: skip (default: no wait, the same boot options in
    /// the same order) or default (the firmware's own wait, about 5 s).
    #[arg(long, default_value = "skip")]
    firmware_wait: FirmwareWait,
}

pub async fn run(a: RunArgs) -> CliResult {
    let scenario = Scenario::load(&a.scenario).map_err(CliError::usage)?;
    let registry = Registry::load().map_err(CliError::usage)?;
    let Some(entry) = registry.get(&a.image) else {
        return Err(unknown_image(&a.image, &registry));
    };
    if let Some(UpdateChoice::Good | UpdateChoice::Bad) = &a.update
        && !matches!(entry, images::Entry::Local(_))
    {
        return Err(CliError::usage(format!(
            "--update good|bad: the built-in updates are made for local images; {} is not one (give a repository directory)",
            a.image
        )));
    }
    let guest = entry.guest().clone();
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir = a
        .results
        .join(format!("{stamp}-{}-{}", scenario.name, a.image));
    let mut req = CaseRequest::new(
        &format!("{}-{}", scenario.name, a.image),
        CaseDir::Exactly(dir.clone()),
        firmware_or_host(a.firmware.clone())?,
        scenario.steps.clone(),
    );
    req.qemu = a.qemu.clone();
    req.cpu = a.cpu.clone();
    req.accel = a.accel;
    req.smp = a.smp;
    req.memory_mib = a.memory;
    if let Some(v) = &a.vars {
        req.vars = VarsSource::Template(v.clone());
    }
    req.keep_disks = true;
    req.firmware_wait = a.firmware_wait;
    req.network = Some(Vec::new());
    req.scenario = Some(scenario.name.clone());
    // A built-in update is made after the image (the bad one needs its shim version); the
    // dry run shows the same upgrade command either way.
    req.update = match &a.update {
        Some(UpdateChoice::Dir(dir)) => Some(UpdateRepo {
            label: dir.display().to_string(),
            dir: dir.clone(),
        }),
        _ => None,
    };
    req.exclude_bootloader = a.exclude_bootloader;
    req.restore_bootloader = a.restore_bootloader;
    let image_disk = |base: PathBuf, sha: String, format, source| ImageDisk {
        name: a.image.clone(),
        base,
        base_sha256: sha,
        format,
        guest: guest.clone(),
        source,
    };
    // Everything but the image itself is checked before anything is downloaded or built.
    let planned = case::check_machine(CaseRequest {
        image: Some(image_disk(
            "IMAGE".into(),
            String::new(),
            images::catalog::ImageFormat::Qcow2,
            None,
        )),
        ..req.clone()
    })?;
    if a.dry_run {
        let repo_url = a.update.as_ref().map(|_| "http://10.0.2.2:PORT/");
        let plan = serde_json::json!({
            "scenario": scenario.name,
            "source": scenario.source,
            "image": a.image,
            "kind": match entry { images::Entry::Vendor(_) => "vendor", images::Entry::Local(_) => "local" },
            "url": match entry { images::Entry::Vendor(i) => Some(i.url.clone()), images::Entry::Local(_) => None },
            "steps": scenario.steps,
            "upgrade_command": upgrade_command(&guest, repo_url, a.exclude_bootloader),
            "package_query": guest.package_query,
            "login_user": guest.login_user,
            "restore_bootloader": a.restore_bootloader,
            "qemu_command_line": case::dry_run_command_line(&planned),
        });
        let mut out = std::io::stdout().lock();
        if a.json {
            let _ = serde_json::to_writer_pretty(&mut out, &plan);
            let _ = writeln!(out);
        } else {
            let _ = writeln!(
                out,
                "scenario {} on {} (dry run: nothing downloaded or started)",
                scenario.name, a.image
            );
            for (i, st) in scenario.steps.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {:>2}. {}",
                    i + 1,
                    serde_json::to_string(st).unwrap_or_default()
                );
            }
            let _ = writeln!(
                out,
                "  upgrade: {}",
                plan["upgrade_command"].as_str().unwrap_or("")
            );
            let _ = writeln!(
                out,
                "  qemu: {}",
                plan["qemu_command_line"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let sink = show::terminal(a.json);
    let cache = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let cancel = signal_token();
    let image = images::resolve(entry, &cache, a.mirror.as_deref(), &cancel, &sink)
        .await
        .map_err(|e| CliError::undetermined(format!("image {}: {e:#}", a.image)))?;
    req.image = Some(image_disk(
        image.path,
        image.sha256,
        image.format,
        image.source,
    ));
    if let Some(choice @ (UpdateChoice::Good | UpdateChoice::Bad)) = &a.update {
        let repo_dir = a.results.join(format!(
            "{stamp}-{}-{}.{}",
            scenario.name,
            a.image,
            choice.label()
        ));
        req.update = Some(
            updates::make(choice, &a.image, a.mirror.as_deref(), &cache, &repo_dir)
                .await
                .map_err(|e| {
                    CliError::undetermined(format!("--update {}: {e:#}", choice.label()))
                })?,
        );
    }
    let checked = case::check(req)?;
    let done = case::run(checked, &cancel, &sink).await?;
    let r = &done.record;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    } else {
        let mut out = std::io::stdout().lock();
        for st in &r.steps {
            let _ = writeln!(
                out,
                "  {:<18} {:<8} {:>7.1} s  {}",
                st.step,
                st.status,
                st.duration_s,
                show::one_line(&st.detail)
            );
        }
        let o = &r.outcome;
        let _ = writeln!(
            out,
            "verdict: {} (stage {}) {}",
            o.verdict,
            o.stage,
            show::one_line(&o.reason)
        );
        if !r.suspects.is_empty() {
            let _ = writeln!(out, "suspects: {}", r.suspects.join(", "));
        }
        let _ = writeln!(out, "results: {}", done.dir.display());
    }
    Ok(ExitCode::from(r.outcome.exit_code))
}

pub async fn demo(a: DemoArgs) -> CliResult {
    let mut d = Demo::builtin()?;
    if let Some(guest) = &a.guest {
        let registry = Registry::load().map_err(CliError::usage)?;
        match registry.get(guest) {
            Some(crate::inputs::images::Entry::Local(_)) => d.image = guest.clone(),
            Some(_) => {
                return Err(CliError::usage(format!(
                    "--guest {guest}: the demo's updates are made for local images (guest-images/local.toml); {guest} is a downloaded one"
                )));
            }
            None => return Err(unknown_image(guest, &registry)),
        }
    }
    let machine = DemoMachine {
        qemu: which::which(&a.qemu).map_err(|_| {
            CliError::usage(format!(
                "QEMU not found: {} (install qemu-system-arm, or pass --qemu PATH)",
                a.qemu.display()
            ))
        })?,
        firmware_code: firmware_or_host(a.firmware.clone())?,
        firmware_wait: a.firmware_wait,
    };
    let sink = show::terminal(a.json);
    let cancel = signal_token();
    let (rows, expected) = if a.fixtures {
        let rows = demo::run_fixtures(&d, &machine, &a.results, &cancel, &sink).await?;
        (rows, d.fixtures.len())
    } else {
        let stamp = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let dir = a.results.join(format!("{stamp}-demo"));
        if !a.json {
            eprintln!(
                "bootwatch demo: results in {} (the first run builds the Debian image: minutes)",
                dir.display()
            );
        }
        let rows = demo::run_cases(&d, &machine, &dir, a.mirror.as_deref(), &cancel, &sink).await?;
        (rows, d.case_rows())
    };
    print_rows(&rows, a.json, a.fixtures);
    if cancel.is_cancelled() {
        return Err(CliError::undetermined("interrupted"));
    }
    if demo::as_expected(&rows, expected) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(crate::core::verdict::exit_code::BAD))
    }
}

fn print_rows(rows: &[DemoRow], json: bool, fixtures: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = serde_json::to_writer_pretty(&mut out, rows);
        let _ = writeln!(out);
        return;
    }
    let t = |r: &DemoRow| {
        r.outcome
            .time_to_verdict_s
            .map(|t| format!("{t:.1} s"))
            .unwrap_or_default()
    };
    if fixtures {
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:<10} {:>8}  results",
            "case", "verdict", "stage", "time"
        );
        for r in rows {
            let _ = writeln!(
                out,
                "{:<8} {:<16} {:<10} {:>8}  {}",
                r.case,
                r.outcome.verdict,
                r.outcome.stage,
                t(r),
                r.results.display()
            );
        }
        return;
    }
    let _ = writeln!(
        out,
        "{:<30} {:<14} {:<12} {:<16} {:<10} {:>8}  suspects",
        "case", "scenario", "update", "verdict", "stage", "time"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<30} {:<14} {:<12} {:<16} {:<10} {:>8}  {}",
            r.case,
            r.scenario,
            r.update,
            r.outcome.verdict.as_str(),
            r.outcome.stage.as_str(),
            t(r),
            r.suspects.join(" ")
        );
    }
}
