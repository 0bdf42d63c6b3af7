//! A case's disks and firmware store, prepared before its first session and repaired between
//! sessions: the private directory for sockets and scratch files, the per-case copy of the vars
//! template, the qcow2 overlay over a base image, the cloud-init seed, and the offline
//! restore-bootloader repair. Every file operation runs on a blocking thread: the event loop
//! reads other VMs' consoles meanwhile.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::engine::record::FileInfo;
use crate::inputs::images::catalog::ImageFormat;
use crate::inputs::images::{esp, overlay, seed};
use crate::sys::fsx::StatKey;

/// Runs blocking work off the event loop.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task failed")?
}

/// A private directory for a case's sockets and scratch files, readable by its owner only
/// (whatever the umask: QMP on those sockets is full control of the VM). Removed when dropped.
/// Its name carries the owner's pid: directories of processes that are gone (a harness killed
/// with SIGKILL cannot clean up; its vars copy alone is 64 MiB) are removed first.
pub fn private_dir() -> std::io::Result<tempfile::TempDir> {
    private_dir_in(&std::env::temp_dir())
}

/// A private directory in memory for a case's throwaway vars copy: under `/dev/shm` when that is
/// a tmpfs this user can write to, else `None` (the copy then goes into [`private_dir`]). QEMU
/// maps the whole 64 MiB store as pflash and reads all of it at start: on a disk file system the
/// holes of the sparse copy fill 64 MiB of page cache, which the harness then pays to drop when
/// it removes the file; on tmpfs a hole reads as the shared zero page and nothing is dropped.
/// Only the store's data (a few hundred KiB) takes memory. The overlay, which can grow by
/// gigabytes, stays on disk.
pub fn private_mem_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new(SHM_DIR);
    let tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !tmpfs {
        return None;
    }
    private_dir_in(shm)
        .inspect_err(|e| tracing::debug!(error = %e, "no private directory in {SHM_DIR}"))
        .ok()
}

const SHM_DIR: &str = "/dev/shm";

fn private_dir_in(parent: &Path) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    sweep_dead_private_dirs(parent);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PRIVATE_PREFIX}{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)?;
    // `permissions` is applied through the umask on some platforms: set it again, explicitly.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

const PRIVATE_PREFIX: &str = "bootwatch-";

/// Removes `bootwatch-<pid>-*` directories in `tmp` that belong to this user and whose process
/// is gone. A directory whose pid is alive (another bootwatch, or a reused pid) is left alone.
pub fn sweep_dead_private_dirs(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = nix::unistd::getuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PRIVATE_PREFIX)
            .and_then(|r| r.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if ours && gone && pid > 0 {
            tracing::info!(dir = %e.path().display(), "removing the private directory of a bootwatch that is gone");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A case's own copy of a vars template, and what it looked like right after the copy: while it
/// is unchanged its hash is the template's (no need to read 64 MiB again).
#[derive(Debug, Clone)]
pub struct VarsCopy {
    pub path: PathBuf,
    pub template: PathBuf,
    copied: Option<StatKey>,
}

impl VarsCopy {
    /// Copies `template` to `dest` (mode 0600: the store can hold secrets such as enrolled keys).
    pub async fn make(template: &Path, dest: &Path) -> anyhow::Result<VarsCopy> {
        let (t, d) = (template.to_path_buf(), dest.to_path_buf());
        blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            // Copied from the template's sparse twin in the cache (made once per content), so a
            // run reads the few hundred KiB of data, not the 64 MiB.
            let from = crate::sys::fsx::sparse_twin(&t).unwrap_or_else(|_| t.clone());
            crate::sys::fsx::sparse_copy(&from, &d).with_context(|| {
                format!(
                    "copying the vars template {} to {}",
                    t.display(),
                    d.display()
                )
            })?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o600))?;
            Ok(VarsCopy {
                copied: StatKey::of_path(&d).ok(),
                path: d,
                template: t,
            })
        })
        .await
    }

    /// The store as the case left it: path, size, sha256 (blocking).
    pub fn info(&self) -> std::io::Result<FileInfo> {
        let unchanged = self.copied.is_some()
            && StatKey::of_path(&self.path).ok().as_ref() == self.copied.as_ref();
        if unchanged {
            return Ok(FileInfo {
                path: self.path.clone(),
                ..FileInfo::of(&self.template)?
            });
        }
        // The store the guest left is sparse (see `fsx::sparse_copy`): its content is hashed in full
        // once, and found again by its data extents.
        let d = crate::sys::fsx::hash_file_sparse_cached(
            &self.path,
            crate::sys::fsx::hash_cache_dir().as_deref(),
        )?;
        Ok(FileInfo {
            path: self.path.clone(),
            size: d.size,
            sha256: d.sha256,
        })
    }
}

/// Creates a qcow2 overlay `dest` over `base` (mode 0600: the guest's disk holds its secrets).
pub async fn make_overlay(base: &Path, format: ImageFormat, dest: &Path) -> anyhow::Result<()> {
    let qemu_img = overlay::qemu_img()?;
    overlay::create_overlay(&qemu_img, base, format, dest).await?;
    let d = dest.to_path_buf();
    blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    })
    .await
}

/// Writes the cloud-init seed volume for `cfg` to `dest`.
pub async fn write_seed(dest: &Path, cfg: &seed::SeedConfig) -> anyhow::Result<()> {
    let (d, c) = (dest.to_path_buf(), cfg.clone());
    blocking(move || seed::write_seed(&d, &c)).await
}

/// The "put the install media's EFI binaries back" workaround, offline: every file under `EFI/`
/// on the base image's ESP that differs in the overlay is written back into the overlay (the
/// base is only read). Returns the files restored, with their sizes.
pub async fn restore_bootloader(base: &Path, overlay: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    // The ESP functions do their file work on blocking threads themselves.
    let qi = overlay::qemu_img()?;
    let mut restored = Vec::new();
    let mut payload = Vec::new();
    for (path, _) in esp::list_esp(&qi, base).await? {
        let upper = path.to_ascii_uppercase();
        if !upper.starts_with("EFI/") && !upper.starts_with("/EFI/") {
            continue;
        }
        let original = esp::read_esp_file(&qi, base, &path).await?;
        let now = esp::read_esp_file(&qi, overlay, &path).await.ok();
        if now.as_deref() != Some(original.as_slice()) {
            restored.push((path.clone(), original.len() as u64));
            payload.push((path, original));
        }
    }
    let refs: Vec<(&str, &[u8])> = payload
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    if !refs.is_empty() {
        esp::replace_esp_files(&qi, overlay, &refs).await?;
    }
    Ok(restored)
}

/// Hashes files for the record, each once per content (see `sys::fsx::hash_file_cached`);
/// a file that cannot be read is left out.
pub async fn file_infos(paths: Vec<PathBuf>) -> Vec<Option<FileInfo>> {
    blocking(move || Ok(paths.iter().map(|p| FileInfo::of(p).ok()).collect()))
        .await
        .unwrap_or_default()
}

/// Whether `path` could be written as a record file: for checks before anything starts.
pub fn check_writable_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} exists and is not a directory", dir.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Reads and parses the variable store at the start of a flash image (only as many bytes as
/// its firmware volume spans): blocking.
pub fn read_varstore(path: &Path) -> anyhow::Result<crate::core::varstore::VarStore> {
    let all = read_varstore_bytes(path)?;
    crate::core::varstore::parse(&all).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The bytes of a flash image its variable store can span (the firmware volume's length, not
/// the 64 MiB of a padded image): blocking.
pub fn read_varstore_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let file_len = f.metadata()?.len();
    let mut head = vec![0u8; 64.min(file_len as usize)];
    f.read_exact(&mut head)?;
    let len = crate::core::varstore::store_len(&head, file_len) as usize;
    let mut all = head;
    all.resize(len, 0);
    f.read_exact(&mut all[64.min(len)..])?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fsx;

    #[test]
    fn private_dirs_are_0700_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let d = private_dir();
        nix::sys::stat::umask(old);
        let d = d.unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    /// The vars copy's private directory in memory: on tmpfs, 0700 whatever the umask, named
    /// for this process (so the sweep of dead owners covers it), removed when dropped.
    #[test]
    fn the_private_memory_directory_is_on_tmpfs_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let Some(d) = private_mem_dir() else {
            // No tmpfs at /dev/shm here: the copy stays in the private directory.
            assert!(
                !nix::sys::statfs::statfs(SHM_DIR)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            );
            return;
        };
        let path = d.path().to_path_buf();
        assert_eq!(path.parent().unwrap(), Path::new(SHM_DIR));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{PRIVATE_PREFIX}{}-", std::process::id())),
            "{name}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop(d);
        assert!(!path.exists());
    }

    /// The sweep removes only this user's private directories whose owner process is gone:
    /// not one whose pid is alive (this process's own, pid 1's), not a file, not another name.
    #[test]
    fn the_sweep_removes_dead_owners_directories_only() {
        let tmp = tempfile::tempdir().unwrap();
        // A pid that was surely alive and is now gone: a child that ran and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let make = |name: String| {
            let p = tmp.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("vars.fd"), b"x").unwrap();
            p
        };
        let gone = make(format!("{PRIVATE_PREFIX}{dead}-abc"));
        let mine = make(format!("{PRIVATE_PREFIX}{me}-def"));
        let init = make(format!("{PRIVATE_PREFIX}1-ghi"));
        let other = make(format!("other-{dead}-jkl"));
        let odd = make(format!("{PRIVATE_PREFIX}x{dead}-mno"));
        let file = tmp.path().join(format!("{PRIVATE_PREFIX}{dead}-file"));
        std::fs::write(&file, b"x").unwrap();
        sweep_dead_private_dirs(tmp.path());
        assert!(!gone.exists(), "the dead process's directory stays");
        for kept in [&mine, &init, &other, &odd, &file] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(mine.join("vars.fd").exists());
    }

    #[tokio::test]
    async fn an_unchanged_vars_copy_takes_the_templates_hash_and_a_changed_one_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("VARS.fd");
        std::fs::write(&t, vec![1u8; 4096]).unwrap();
        let c = VarsCopy::make(&t, &dir.path().join("vars.fd"))
            .await
            .unwrap();
        let same = c.info().unwrap();
        assert_eq!(same.sha256, fsx::hash_file(&t).unwrap().sha256);
        assert_eq!(same.path, c.path);
        // A write (here: a different length) makes it a file of its own.
        std::fs::write(&c.path, vec![2u8; 4096]).unwrap();
        let changed = c.info().unwrap();
        assert_eq!(changed.sha256, fsx::hash_file(&c.path).unwrap().sha256);
        assert_ne!(changed.sha256, same.sha256);
    }
}
