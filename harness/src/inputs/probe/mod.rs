//! The firmware probe application (`probe.c`), built at run time and put on a FAT image as
//! `\EFI\BOOT\BOOTAA64.EFI`, like the fixtures.
//!
//! Why C and clang rather than the fixtures' hand-encoded instructions: the probe makes a dozen
//! firmware calls, walks page tables, a device tree and ACPI tables, formats numbers and installs
//! an exception vector table for the duration of one SMCCC call; written as instruction words it
//! would be hundreds of unreviewable numbers. Debian's `clang` and `lld` (bookworm: 14) build it
//! in about a second from freestanding C (`--target=aarch64-unknown-windows`, `lld-link
//! /subsystem:efi_application`), no Rust UEFI target needed (rustup's downloads are not
//! reachable from the project's machines). The image is cached under the cache root by the hash
//! of the source and the build command, so clang runs once per source change; no binary is in git.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::sys::fsx;
use crate::sys::proc::Tool;

/// The probe's source, compiled into bootwatch so that the build is reproducible from it alone.
pub const SOURCE: &str = include_str!("probe.c");

const CLANG_ARGS: &[&str] = &[
    "--target=aarch64-unknown-windows",
    "-ffreestanding",
    "-fno-stack-protector",
    "-fshort-wchar",
    "-mno-red-zone",
    "-fno-builtin",
    "-O2",
    "-Wall",
    "-Werror",
    "-c",
];
const LINK_ARGS: &[&str] = &[
    "/subsystem:efi_application",
    "/entry:efi_main",
    "/nodefaultlib",
];

/// How long one compiler or linker run may take (about a second on an idle 2-core machine).
const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The compiler and linker: `BOOTWATCH_CLANG` / `BOOTWATCH_LLD_LINK`, else `clang` and
/// `lld-link` on the PATH (Debian: the `clang` and `lld` packages).
fn toolchain() -> Result<(PathBuf, PathBuf)> {
    let find = |env: &str, names: &[&str]| -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        names
            .iter()
            .find_map(|n| which::which(n).ok())
            .with_context(|| {
                format!(
                    "the firmware probe is built with clang and lld-link, and `{}` is not on the PATH (Debian: apt-get install clang lld; or set {env})",
                    names[0]
                )
            })
    };
    Ok((
        find(
            "BOOTWATCH_CLANG",
            &["clang", "clang-14", "clang-16", "clang-19"],
        )?,
        find(
            "BOOTWATCH_LLD_LINK",
            &["lld-link", "lld-link-14", "lld-link-16", "lld-link-19"],
        )?,
    ))
}

/// The key the built image is cached under: the source and the build flags.
pub fn source_hash() -> String {
    let mut h = Sha256::new();
    h.update(SOURCE.as_bytes());
    for a in CLANG_ARGS.iter().chain(LINK_ARGS) {
        h.update([0]);
        h.update(a.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The probe's FAT image (`<cache>/probe/<source hash>/probe.img`), built when missing.
/// Concurrent callers build it once (a lock beside it).
pub async fn probe_image(cache_root: &Path, cancel: &CancellationToken) -> Result<PathBuf> {
    let dir = cache_root.join("probe").join(&source_hash()[..16]);
    let image = dir.join("probe.img");
    if image.is_file() {
        return Ok(image);
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let Some(_lock) = fsx::FileLock::acquire_cancellable(&dir.join(".lock"), cancel)
        .await
        .with_context(|| format!("cannot lock {}", dir.display()))?
    else {
        anyhow::bail!("cancelled while waiting for another build of the firmware probe");
    };
    if image.is_file() {
        return Ok(image);
    }
    let (clang, lld) = toolchain()?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot make a build directory in {}", dir.display()))?;
    let src = work.path().join("probe.c");
    let obj = work.path().join("probe.o");
    let efi = work.path().join("probe.efi");
    tokio::fs::write(&src, SOURCE)
        .await
        .with_context(|| format!("cannot write {}", src.display()))?;
    Tool::new(&clang)
        .args(CLANG_ARGS)
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .timeout(BUILD_TIMEOUT)
        .cancel_on(cancel)
        .run()
        .await
        .context("building the firmware probe")?;
    Tool::new(&lld)
        .args(LINK_ARGS)
        .arg(format!("/out:{}", efi.display()))
        .arg(&obj)
        .timeout(BUILD_TIMEOUT)
        .cancel_on(cancel)
        .run()
        .await
        .context("linking the firmware probe")?;
    let bytes = tokio::fs::read(&efi)
        .await
        .with_context(|| format!("cannot read {}", efi.display()))?;
    let target = image.clone();
    tokio::task::spawn_blocking(move || crate::inputs::fixtures::write_fat_image(&target, &bytes))
        .await
        .context("the FAT image writer panicked")??;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_hash_follows_the_source_and_is_stable() {
        assert_eq!(source_hash(), source_hash());
        assert_eq!(source_hash().len(), 64);
        assert!(SOURCE.contains("BOOTWATCH-PROBE end=1"));
    }
}
