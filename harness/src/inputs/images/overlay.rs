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
    set_backing(qemu_img, "create", overlay, base, format).await
}

/// Makes `overlay` an overlay of `base` directly, whatever chain it had (`qemu-img rebase` in
/// its safe mode: what the old chain held that `base` does not is copied into `overlay`).
pub async fn rebase(
    qemu_img: &Path,
    overlay: &Path,
    base: &Path,
    format: ImageFormat,
) -> anyhow::Result<()> {
    set_backing(qemu_img, "rebase", overlay, base, format).await
}

/// `qemu-img create|rebase -f qcow2 -F FMT -b BASE OVERLAY`, the base named by its absolute path.
async fn set_backing(
    qemu_img: &Path,
    verb: &str,
    overlay: &Path,
    base: &Path,
    format: ImageFormat,
) -> anyhow::Result<()> {
    let base =
        std::fs::canonicalize(base).with_context(|| format!("base image {}", base.display()))?;
    let fmt = match format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Raw => "raw",
    };
    Tool::new(qemu_img)
        .args([verb, "-q", "-f", "qcow2", "-F", fmt, "-b"])
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

    /// An overlay of an overlay, rebased onto the base: the middle's data is copied in, its own
    /// kept, and only the base is left behind it.
    #[tokio::test]
    async fn a_rebased_overlay_keeps_its_chains_content_on_the_base_alone() {
        let qi = qemu_img().expect("qemu-img (qemu-utils)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = d.join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let (mid, top) = (d.join("mid.qcow2"), d.join("top.qcow2"));
        create_overlay(&qi, &base, ImageFormat::Raw, &mid)
            .await
            .unwrap();
        let write = |img: &Path, pattern: &str, at: &str| {
            let st = std::process::Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", &format!("write -P {pattern} {at} 64k")])
                .arg(img)
                .output()
                .unwrap();
            assert!(st.status.success(), "{st:?}");
        };
        write(&mid, "0x55", "0");
        create_overlay(&qi, &mid, ImageFormat::Qcow2, &top)
            .await
            .unwrap();
        write(&top, "0x66", "128k");
        rebase(&qi, &top, &base, ImageFormat::Raw).await.unwrap();
        std::fs::remove_file(&mid).unwrap();
        let v = info(&qi, &top).await.unwrap();
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        let flat = d.join("flat.raw");
        let st = std::process::Command::new(&qi)
            .args(["convert", "-O", "raw"])
            .arg(&top)
            .arg(&flat)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let bytes = std::fs::read(&flat).unwrap();
        assert!(bytes[..64 << 10].iter().all(|&b| b == 0x55));
        assert!(bytes[64 << 10..128 << 10].iter().all(|&b| b == 7));
        assert!(bytes[128 << 10..192 << 10].iter().all(|&b| b == 0x66));
        assert!(bytes[192 << 10..].iter().all(|&b| b == 7));
    }
}
