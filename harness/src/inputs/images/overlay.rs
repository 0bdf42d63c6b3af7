//! Per-run qcow2 overlays over a cached base image (`qemu-img create -b BASE -F FMT`): the guest
//! writes only to the overlay, so the base never changes. Runs on the async path without
//! blocking it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::inputs::images::catalog::ImageFormat;
use crate::sys::proc::Tool;

/// `qemu-img create` and `info` take milliseconds; one that hangs (a stuck file system) is
/// stopped instead of holding up the run.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates `overlay` (qcow2) backed by `base`. The backing path is stored absolute, so the overlay
/// stays usable wherever the run directory is read from.
pub async fn create_overlay(
    qemu_img: &Path,
    base: &Path,
    format: ImageFormat,
    overlay: &Path,
) -> anyhow::Result<()> {
    let base =
        std::fs::canonicalize(base).with_context(|| format!("base image {}", base.display()))?;
    let fmt = match format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Raw => "raw",
    };
    Tool::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(&base)
        .arg(overlay)
        .timeout(QEMU_IMG_TIMEOUT)
        .run()
        .await?;
    Ok(())
}

/// `qemu-img` on PATH, or a clear error.
pub fn qemu_img() -> anyhow::Result<PathBuf> {
    which::which("qemu-img").context("qemu-img not found: install qemu-utils")
}

/// `qemu-img info --output=json` of a file.
pub async fn info(qemu_img: &Path, path: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Tool::new(qemu_img)
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .timeout(QEMU_IMG_TIMEOUT)
        .run()
        .await?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlay_is_backed_by_the_absolute_base() {
        let Ok(qi) = qemu_img() else {
            panic!("qemu-img is required for this test (install qemu-utils)");
        };
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("run/overlay.qcow2");
        std::fs::create_dir_all(overlay.parent().unwrap()).unwrap();
        create_overlay(&qi, &base, ImageFormat::Raw, &overlay)
            .await
            .unwrap();
        let v = info(&qi, &overlay).await.unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        assert_eq!(v["backing-filename-format"], "raw");
        assert_eq!(v["virtual-size"], 1 << 20);
        let err = create_overlay(&qi, &dir.path().join("missing"), ImageFormat::Raw, &overlay)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
    }
}
