//! `bootwatch inspect firmware FILE` (offline) and `bootwatch probe firmware` (one boot of the
//! probe application): facts about a firmware build and the hypervisor under it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::{CliError, CliResult};
use crate::core::facts::Facts;
use crate::inputs::providers::{self, FirmwareProvider, ProviderContext, QemuProvider};
use crate::plan::probe::Reuse;

#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Boot the probe application under a QEMU and firmware build and print what it measured
    /// (cached by the content hashes of QEMU, firmware, CPU model and probe).
    Firmware {
        /// QEMU build: host, path:FILE, debian:SUITE, source:DIR.
        #[arg(long, default_value = "host")]
        qemu: String,
        /// Firmware build: host, path:CODE[,VARS], debian:VERSION[/VARIANT].
        #[arg(long, default_value = "host")]
        firmware: String,
        /// CPU model.
        #[arg(long)]
        cpu: Option<String>,
        /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// Boot the probe even when a report for the same inputs is cached (and replace it).
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `bootwatch inspect firmware FILE [--json]`.
pub async fn inspect_firmware(file: PathBuf, json: bool) -> CliResult {
    if !file.is_file() {
        return Err(CliError::usage(format!(
            "{}: no such file (give a firmware code image, e.g. /usr/share/AAVMF/AAVMF_CODE.fd)",
            file.display()
        )));
    }
    let ins = crate::plan::probe::inspect_firmware(&file)
        .await
        .map_err(|e| CliError::usage(format!("{e:#}")))?;
    let mut out = std::io::stdout().lock();
    if json {
        let drivers: Vec<Value> = ins
            .drivers
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name, "guid": d.guid, "file_type": d.file_type, "te": d.te,
                    "hvc": d.smccc.as_ref().map(|s| s.hvc.clone()),
                    "smc": d.smccc.as_ref().map(|s| s.smc.clone()),
                })
            })
            .collect();
        let v = serde_json::json!({ "file": file, "facts": ins.facts, "drivers": drivers,
            "skipped": ins.skipped });
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
    } else {
        let _ = writeln!(out, "{}", file.display());
        write_facts(
            &mut out,
            &ins.facts,
            &[crate::core::firmware::keys::DRIVERS],
        );
        let _ = writeln!(out, "\n{:<40} {:<4} {:<8} smccc", "driver", "kind", "type");
        for d in &ins.drivers {
            let smccc = match &d.smccc {
                None => "(image not parsed)".to_string(),
                Some(s) if !s.any() => String::new(),
                Some(s) => {
                    let imms = |v: &[u16]| {
                        v.iter()
                            .map(|i| format!("#{i:#x}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let mut parts = Vec::new();
                    if !s.hvc.is_empty() {
                        parts.push(format!("hvc {}", imms(&s.hvc)));
                    }
                    if !s.smc.is_empty() {
                        parts.push(format!("smc {}", imms(&s.smc)));
                    }
                    parts.join("; ")
                }
            };
            let _ = writeln!(
                out,
                "{:<40} {:<4} {:<8} {smccc}",
                d.name,
                if d.te { "TE" } else { "PE" },
                format!("{:#04x}", d.file_type),
            );
        }
        for s in &ins.skipped {
            let _ = writeln!(out, "skipped: {s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn probe(command: ProbeCommand) -> CliResult {
    let ProbeCommand::Firmware {
        qemu,
        firmware,
        cpu,
        mirror,
        fresh,
        json,
    } = command;
    let qp: QemuProvider = qemu.parse().map_err(CliError::usage)?;
    let fp: FirmwareProvider = firmware.parse().map_err(CliError::usage)?;
    let cache = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let ctx = ProviderContext {
        mirror,
        cache_root: cache.clone(),
    };
    let cancel = super::signal_token();
    let sink = super::show::terminal(false);
    let q = providers::resolve_qemu(&qp, &ctx, &cancel).await?;
    let f = providers::resolve_firmware(&fp, &ctx, &cancel).await?;
    let cpu = cpu.unwrap_or_else(|| crate::plan::probe::default_cpu().to_string());
    let report = crate::plan::probe::probe_firmware(
        &q,
        &f,
        &cpu,
        &cache,
        if fresh { Reuse::Refresh } else { Reuse::Cached },
        &cancel,
        &sink,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            out,
            "probe of {} under {} ({cpu}): {}",
            f.spec,
            q.spec,
            report.outcome.verdict.as_str()
        );
        write_facts(&mut out, &report.facts, &[]);
        let _ = writeln!(out, "evidence: {}", report.case_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// One `key  value` line per fact; lists on one line, except `long` keys (counted).
fn write_facts(out: &mut impl Write, facts: &Facts, long: &[&str]) {
    for (k, v) in facts.iter() {
        let shown = match v {
            Value::String(s) => s.clone(),
            Value::Array(a) if long.contains(&k) => format!("({} entries)", a.len()),
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            Value::Number(n) if n.as_u64().is_some_and(|x| x > 9) => {
                format!("{n} ({:#x})", n.as_u64().unwrap_or(0))
            }
            other => other.to_string(),
        };
        let _ = writeln!(out, "{k:<36} {shown}");
    }
}
