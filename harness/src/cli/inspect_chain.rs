//! `bootwatch inspect chain RUN|DISK|DEB|EFI [--json]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use super::{CliError, CliResult};
use crate::core::chain::{Chain, ChainBinary};
use crate::inputs::images::chain as ichain;

#[derive(clap::Args, Debug)]
pub struct ChainArgs {
    /// A run's directory (case, session, matrix cell), a disk image, a .deb or an EFI binary.
    target: PathBuf,
    /// For a disk image: the image it was made from, to tell which binaries changed.
    #[arg(long)]
    base: Option<PathBuf>,
    /// For a disk image: the variable store whose BootOrder to follow.
    #[arg(long)]
    vars: Option<PathBuf>,
    /// Print JSON (`boot_order`, `binaries`, `changed_files`, `facts`).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    target: PathBuf,
    #[serde(flatten)]
    chain: Chain,
    facts: crate::core::facts::Facts,
}

pub async fn chain(a: ChainArgs) -> CliResult {
    let t = &a.target;
    if !t.exists() {
        return Err(CliError::usage(format!(
            "{}: no such file or directory",
            t.display()
        )));
    }
    let chain = if t.is_dir() {
        let ev = crate::plan::explain::load(t).map_err(|e| CliError::usage(format!("{e:#}")))?;
        crate::plan::explain::chain_of_run(&ev)
            .await?
            .ok_or_else(|| {
                CliError::usage(format!(
                    "{}: the run kept no disk (boot with --keep-overlay, or run a scenario)",
                    t.display()
                ))
            })?
    } else if is_deb(t) {
        let p = t.clone();
        let binaries = tokio::task::spawn_blocking(move || ichain::inspect_deb(&p))
            .await
            .map_err(CliError::undetermined)??;
        Chain {
            boot_order: None,
            binaries,
            changed_files: Vec::new(),
        }
    } else if is_pe(t) {
        Chain {
            boot_order: None,
            binaries: vec![ichain::inspect_file(t)?],
            changed_files: Vec::new(),
        }
    } else {
        ichain::inspect_disk(t, a.base.as_deref(), a.vars.as_deref()).await?
    };
    let facts = chain.facts();
    let mut out = std::io::stdout().lock();
    if a.json {
        let r = Report {
            target: t.clone(),
            chain,
            facts,
        };
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", render(&chain));
    }
    Ok(ExitCode::SUCCESS)
}

fn is_deb(p: &Path) -> bool {
    std::fs::read(p)
        .map(|b| b.starts_with(b"!<arch>\ndebian-binary"))
        .unwrap_or(false)
}

fn is_pe(p: &Path) -> bool {
    use std::io::Read;
    let mut h = [0u8; 2];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut h))
        .is_ok_and(|_| &h == b"MZ")
}

/// The chain as text: the boot order, then one block per binary.
pub fn render(c: &Chain) -> String {
    let mut s = String::new();
    if let Some(order) = &c.boot_order {
        s.push_str("BootOrder:");
        for e in order {
            s.push_str(&format!(
                " {} \"{}\"{}{}",
                e.name,
                e.description,
                e.file
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default(),
                if e.active { "" } else { " [inactive]" }
            ));
        }
        s.push('\n');
    }
    if c.binaries.is_empty() {
        s.push_str("no EFI binary found\n");
    }
    for b in &c.binaries {
        s.push_str(&binary_block(b));
    }
    if !c.changed_files.is_empty() {
        s.push_str(&format!(
            "changed on the ESP since the base image: {}\n",
            c.changed_files.join(", ")
        ));
    }
    s
}

pub fn binary_block(b: &ChainBinary) -> String {
    let mut s = format!("{}  ({})\n", b.path, b.via);
    s.push_str(&format!("  {}\n", crate::plan::explain::describe(b)));
    if let Some(pe) = &b.pe {
        s.push_str(&format!(
            "  machine {} ({:#06x}), {}, DllCharacteristics {:#06x}, section alignment {:#x}, entry {:#x}\n",
            pe.machine_name,
            pe.machine,
            if pe.pe32_plus { "PE32+" } else { "PE32" },
            pe.dll_characteristics,
            pe.section_alignment,
            pe.entry_rva
        ));
        s.push_str(&format!(
            "  W^X: {}; sections page-aligned: {}\n",
            if pe.wx_sections.is_empty() {
                "no section both writable and executable".to_string()
            } else {
                format!("writable and executable: {}", pe.wx_sections.join(", "))
            },
            if pe.sections_page_aligned {
                "yes"
            } else {
                "no"
            }
        ));
        for e in &pe.sbat {
            s.push_str(&format!(
                "  sbat {},{},{},{},{}\n",
                e.component, e.generation, e.vendor, e.package, e.version
            ));
        }
    }
    match b.changed {
        Some(true) => {
            s.push_str("  CHANGED since the base image");
            if let Some(o) = &b.original {
                s.push_str(&format!(": was {}", crate::plan::explain::describe(o)));
            } else {
                s.push_str(": not on the base image");
            }
            s.push('\n');
        }
        Some(false) => s.push_str("  unchanged since the base image\n"),
        None => {}
    }
    s
}
