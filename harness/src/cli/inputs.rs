//! `bootwatch images`, `bootwatch firmware`, `bootwatch fixtures`: the inputs of cases.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::{CliError, CliResult, unknown_image};
use crate::inputs::images::{self, Registry};
use crate::inputs::{debian, fixtures as fx};

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Every catalog image and local recipe, with its cache state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download and verify a catalog image into the cache (a no-op when cached).
    Fetch { name: String },
    /// Build local recipes (a no-op for each one built); prints each image's path, in the
    /// order named.
    Build {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Debian archive mirror (default: BOOTWATCH_MIRROR, else the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// How many to build at once (1 to 8). A build runs the image's maintainer scripts under
        /// qemu-user one at a time, so it keeps about one core busy: two builds on a 2-core host
        /// take little longer than one.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        jobs: u8,
    },
}

#[derive(Subcommand, Debug)]
pub enum FirmwareCommand {
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

pub fn fixtures(out: &Path) -> CliResult {
    let paths = fx::write_all(out).map_err(|e| CliError::undetermined(format!("{e:#}")))?;
    for p in paths {
        outln!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn images(command: ImagesCommand) -> CliResult {
    let registry = Registry::load().map_err(CliError::usage)?;
    let cache = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let mut out = std::io::stdout().lock();
    match command {
        ImagesCommand::List { json } => {
            let status = registry.status(&cache);
            if json {
                let _ = serde_json::to_writer_pretty(&mut out, &status);
                let _ = writeln!(out);
            } else {
                let _ = writeln!(
                    out,
                    "{:<20} {:<7} {:<10} {:<10} {:>9}  description",
                    "name", "kind", "reported", "state", "size"
                );
                for s in &status {
                    let size = s
                        .size
                        .map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
                        .unwrap_or_default();
                    let reported = format!("{:?}", s.reported).to_lowercase();
                    let _ = writeln!(
                        out,
                        "{:<20} {:<7} {reported:<10} {:<10} {size:>9}  {}",
                        s.name, s.kind, s.state, s.description
                    );
                }
                let _ = writeln!(
                    out,
                    "(vendor entries were researched, not downloaded, where they were written; `images list --json` has each entry's verification note)"
                );
            }
        }
        ImagesCommand::Fetch { name } => {
            let Some(entry) = registry.get(&name) else {
                return Err(unknown_image(&name, &registry));
            };
            if matches!(entry, images::Entry::Local(_)) {
                return Err(CliError::usage(format!(
                    "{name} is a local recipe: use `bootwatch images build {name}`"
                )));
            }
            let sink = super::show::terminal(false);
            let r = images::resolve(entry, &cache, None, &super::signal_token(), &sink)
                .await
                .map_err(|e| CliError::undetermined(format!("image {name}: {e:#}")))?;
            let _ = writeln!(out, "{}", r.path.display());
        }
        ImagesCommand::Build {
            names,
            mirror,
            jobs,
        } => {
            let mut entries = Vec::new();
            for name in &names {
                let Some(entry) = registry.get(name) else {
                    return Err(unknown_image(name, &registry));
                };
                if matches!(entry, images::Entry::Vendor(_)) {
                    return Err(CliError::usage(format!(
                        "{name} is a vendor image: use `bootwatch images fetch {name}`"
                    )));
                }
                entries.push((name, entry));
            }
            let sink = super::show::terminal(false);
            let cancel = super::signal_token();
            use futures::StreamExt;
            // `buffered` keeps the order named while up to `jobs` builds run.
            let results: Vec<_> = futures::stream::iter(entries.iter().map(|(name, entry)| {
                let (cache, mirror, cancel, sink) = (&cache, mirror.as_deref(), &cancel, &sink);
                async move {
                    images::resolve(*entry, cache, mirror, cancel, sink)
                        .await
                        .map_err(|e| format!("image {name}: {e:#}"))
                }
            }))
            .buffered(usize::from(jobs))
            .collect()
            .await;
            let mut failed = Vec::new();
            for r in results {
                match r {
                    Ok(r) => {
                        let _ = writeln!(out, "{}", r.path.display());
                    }
                    Err(e) => failed.push(e),
                }
            }
            if !failed.is_empty() {
                return Err(CliError::undetermined(failed.join("\n")));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn firmware(command: FirmwareCommand) -> CliResult {
    let FirmwareCommand::Fetch { spec, mirror, json } = command;
    let (version, variant) = spec.split_once('/').unwrap_or((&spec, "default"));
    let mirror = debian::resolve_mirror(mirror.as_deref())?;
    let cache = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
    let build = debian::fetch_edk2(&mirror, version, &cache).await?;
    let (code, vars) = build.firmware(variant)?;
    if json {
        let v = serde_json::json!({ "debian_version": build.debian_version, "suite": build.suite,
            "variant": variant, "code": code, "vars": vars, "dir": build.dir });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!(
            "edk2 {} ({}), variant {variant}",
            build.debian_version,
            build.suite
        );
        outln!("code: {}", code.display());
        outln!("vars: {}", vars.display());
    }
    Ok(ExitCode::SUCCESS)
}
