//! Boot chain inspection, offline: the EFI binaries on a disk's boot path (the vars store's
//! `BootOrder` entries, the removable path `EFI/BOOT/BOOTAA64.EFI`, and the second stage shim
//! starts from its own directory), each read from the ESP (see [`super::esp`]) and described by
//! [`crate::core::chain`], compared with the base image's copy when there is a base.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{esp, overlay};
use crate::core::chain::{BinaryKind, Chain, ChainBinary, inspect_pe};
use crate::core::varstore;

/// The removable-media path edk2 boots on AArch64 when no boot option names a file.
pub const REMOVABLE_PATH: &str = "EFI/BOOT/BOOTAA64.EFI";
/// What shim starts next, from its own directory.
const SHIM_SECOND_STAGE: &str = "grubaa64.efi";
/// Binaries larger than this are not read (an ESP's boot loaders are a few MiB).
const MAX_BINARY: u64 = 256 << 20;

/// The boot chain of `disk` (raw or qcow2, backing chain followed). `base`: the image the disk
/// was made from (an overlay's backing file), to tell which binaries changed. `vars`: the
/// run's variable store, for its `BootOrder`.
pub async fn inspect_disk(disk: &Path, base: Option<&Path>, vars: Option<&Path>) -> Result<Chain> {
    let qi = overlay::qemu_img()?;
    let tree = esp::read_efi_tree(&qi, disk, MAX_BINARY).await?;
    let base_tree = match base {
        Some(b) => Some(esp::read_efi_tree(&qi, b, MAX_BINARY).await?),
        None => None,
    };
    let boot_order = match vars {
        Some(path) => {
            let v = path.to_path_buf();
            let bytes =
                tokio::task::spawn_blocking(move || crate::engine::disk::read_varstore_bytes(&v))
                    .await
                    .context("a blocking task failed")?
                    .with_context(|| format!("reading the vars store {}", path.display()))?;
            // An unreadable store leaves the removable path: the chain is still worth reading.
            varstore::boot_order(&bytes).unwrap_or_else(|e| {
                tracing::warn!("vars store {}: {e}", path.display());
                None
            })
        }
        None => None,
    };
    tokio::task::spawn_blocking(move || chain_of(&tree, base_tree.as_deref(), boot_order))
        .await
        .context("a blocking task failed")
}

type Tree = [(String, u64, Vec<u8>)];

fn find<'a>(tree: &'a Tree, path: &str) -> Option<&'a (String, u64, Vec<u8>)> {
    tree.iter().find(|(p, _, _)| p.eq_ignore_ascii_case(path))
}

/// The chain of an ESP's `EFI/` tree: pure apart from hashing.
pub fn chain_of(
    tree: &Tree,
    base: Option<&Tree>,
    boot_order: Option<Vec<crate::core::chain::BootEntry>>,
) -> Chain {
    let mut path: Vec<(String, String)> = Vec::new();
    let push = |p: &str, via: String, path: &mut Vec<(String, String)>| {
        if let Some((name, _, _)) = find(tree, p)
            && !path.iter().any(|(q, _)| q.eq_ignore_ascii_case(name))
        {
            path.push((name.clone(), via));
        }
    };
    if let Some(order) = &boot_order {
        for e in order.iter().filter(|e| e.active && !e.firmware_app) {
            match &e.file {
                Some(f) => push(f, format!("{} \"{}\"", e.name, e.description), &mut path),
                // An option without a file (a disk, "UEFI Misc Device") boots the removable path.
                None => push(
                    REMOVABLE_PATH,
                    format!("{} \"{}\" (removable path)", e.name, e.description),
                    &mut path,
                ),
            }
        }
    }
    push(REMOVABLE_PATH, "removable path".into(), &mut path);
    let mut binaries: Vec<ChainBinary> = Vec::new();
    for (p, via) in path {
        let b = binary(tree, base, &p, via);
        let shim = b.pe.as_ref().is_some_and(|pe| pe.kind == BinaryKind::Shim);
        binaries.push(b);
        if shim {
            let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
            let next = format!("{dir}/{SHIM_SECOND_STAGE}");
            if let Some((name, _, _)) = find(tree, &next)
                && !binaries.iter().any(|b| b.path.eq_ignore_ascii_case(name))
            {
                binaries.push(binary(tree, base, name, format!("second stage of {p}")));
            }
        }
    }
    let changed_files = match base {
        Some(base) => tree
            .iter()
            .filter(|(p, _, bytes)| find(base, p).is_none_or(|(_, _, o)| o != bytes))
            .map(|(p, _, _)| p.clone())
            .collect(),
        None => Vec::new(),
    };
    Chain {
        boot_order,
        binaries,
        changed_files,
    }
}

fn binary(tree: &Tree, base: Option<&Tree>, path: &str, via: String) -> ChainBinary {
    let (name, size, bytes) = find(tree, path).expect("on the boot path, so on the ESP");
    let mut b = describe(name, *size, bytes, via);
    if let Some(base) = base {
        match find(base, name) {
            Some((_, _, orig)) if orig == bytes => b.changed = Some(false),
            Some((oname, osize, orig)) => {
                b.changed = Some(true);
                b.original = Some(Box::new(describe(oname, *osize, orig, "base image".into())));
            }
            None => b.changed = Some(true),
        }
    }
    b
}

fn describe(path: &str, size: u64, bytes: &[u8], via: String) -> ChainBinary {
    let (pe, error) = if bytes.is_empty() && size > 0 {
        (
            None,
            Some(format!("larger than {MAX_BINARY} bytes: not read")),
        )
    } else {
        match inspect_pe(bytes, path) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    };
    ChainBinary {
        path: path.to_string(),
        via,
        size,
        sha256: hex::encode(Sha256::digest(bytes)),
        pe,
        error,
        changed: None,
        original: None,
    }
}

/// Every PE image inside a `.deb`'s data (by content, not by name), as chain binaries named by
/// their path in the package.
pub fn inspect_deb(deb: &Path) -> Result<Vec<ChainBinary>> {
    use std::io::Read;
    crate::inputs::debian::deb::with_tar_member(deb, "data.tar", |r| {
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(r);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if !entry.header().entry_type().is_file() || entry.size() > MAX_BINARY {
                continue;
            }
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            if bytes.starts_with(b"MZ") && inspect_pe(&bytes, &path).is_ok() {
                out.push(describe(
                    &path,
                    bytes.len() as u64,
                    &bytes,
                    "package".into(),
                ));
            }
        }
        Ok(out)
    })
}

/// One EFI binary file.
pub fn inspect_file(path: &Path) -> Result<ChainBinary> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    Ok(describe(&name, bytes.len() as u64, &bytes, "file".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::chain::BootEntry;

    #[test]
    fn the_boot_path_follows_boot_order_and_changes_are_against_the_base() {
        let app = crate::inputs::fixtures::Fixture::Crash.efi_app();
        let tree = vec![
            (
                "EFI/BOOT/BOOTAA64.EFI".to_string(),
                app.len() as u64,
                app.clone(),
            ),
            ("EFI/debian/notes.txt".to_string(), 2, b"hi".to_vec()),
        ];
        let base = vec![("EFI/BOOT/BOOTAA64.EFI".to_string(), 4, b"MZ..".to_vec())];
        let entry = |name: &str, file: Option<&str>, firmware_app: bool| BootEntry {
            name: name.into(),
            description: "d".into(),
            active: true,
            file: file.map(Into::into),
            firmware_app,
        };
        let order = vec![
            entry("Boot0000", None, true),
            entry("Boot0008", Some("EFI/debian/shimaa64.efi"), false),
            entry("Boot0001", None, false),
        ];
        let c = chain_of(&tree, Some(&base), Some(order));
        assert_eq!(c.binaries.len(), 1, "{c:#?}");
        let b = &c.binaries[0];
        assert_eq!(b.path, "EFI/BOOT/BOOTAA64.EFI");
        assert!(b.via.starts_with("Boot0001"), "{}", b.via);
        assert_eq!(b.changed, Some(true));
        assert!(
            b.original.as_ref().unwrap().pe.is_none(),
            "the base's copy is not a PE"
        );
        assert_eq!(
            c.changed_files,
            ["EFI/BOOT/BOOTAA64.EFI", "EFI/debian/notes.txt"]
        );
        let f = c.facts();
        assert_eq!(f.get("chain.first.changed"), Some(&serde_json::json!(true)));
        assert_eq!(f.get("chain.shim.present"), Some(&serde_json::json!(false)));
        let same = chain_of(&tree, Some(&tree), None);
        assert_eq!(same.binaries[0].changed, Some(false));
        assert!(same.changed_files.is_empty());
        assert_eq!(chain_of(&tree, None, None).binaries[0].changed, None);
    }
}
