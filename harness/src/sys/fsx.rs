//! File-system primitives every layer uses, each in one place: the cache root, atomic writes
//! (through a buffer: one `write` call per file, not one per token), the cross-process lock,
//! SHA-256 of files (cached by device, inode, size, mtime and ctime, so a 64 MiB firmware image
//! is hashed once per content, not once per run), publishing a directory with one rename, and
//! sweeping temporaries that killed processes left behind.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Environment variable that overrides the cache root.
pub const CACHE_ENV: &str = "BOOTWATCH_CACHE";

/// The cache root: `BOOTWATCH_CACHE` if set and non-empty, else the platform cache directory
/// for `bootwatch` (e.g. `~/.cache/bootwatch`).
pub fn cache_root() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV)
        && !dir.is_empty()
    {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "bootwatch")
        .map(|dirs| dirs.cache_dir().to_path_buf())
        .ok_or_else(|| {
            io::Error::other(format!(
                "cannot determine a cache directory (no home directory?); set {CACHE_ENV}"
            ))
        })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, one write,
/// fsync, rename. Readers see the old file or the new one, never half of one. The file is made
/// with `mode` (subject to nothing: the temporary's 0600 is replaced).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| with_path(e, "creating a temporary file in", dir))?;
    tmp.write_all(bytes)
        .map_err(|e| with_path(e, "writing", tmp.path()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| with_path(e.error, "writing", path))?;
    Ok(())
}

/// [`write_atomic_mode`] with mode 0644 (results and cache entries are meant to be read by all).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// `value` as pretty JSON (with a final newline), written atomically.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads a JSON file, `None` when it is missing or does not parse.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn with_path(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

/// The most an input file (catalog, local recipes, scenario, matrix) may hold. The shipped ones
/// are a few KiB; 4 MiB leaves room for generated files while keeping a mistaken path (a disk
/// image, a log) from being read into memory whole.
pub const INPUT_LIMIT: u64 = 4 << 20;

/// Reads an input file as UTF-8 text of at most `limit` bytes. Only regular files are read:
/// a device such as `/dev/zero` never ends and a FIFO can block forever, so both are refused
/// before any read (the file is opened non-blocking, so opening a FIFO does not wait for a
/// writer either). The error says what is wrong, not which file: callers name the file.
pub fn read_input(path: &Path, limit: u64) -> io::Result<String> {
    let bytes = read_input_bytes(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// [`read_input`] for binary files (a keyring).
pub fn read_input_bytes(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "a socket"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {kind}, not a regular file (input files are read whole)"),
        ));
    }
    let too_large = || {
        let shown = if limit.is_multiple_of(1 << 20) {
            format!("{} MiB", limit >> 20)
        } else {
            format!("{limit} bytes")
        };
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {shown}, the limit for an input file"),
        )
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    // The file may grow between the stat and the read: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// An exclusive advisory lock on a file, held until dropped. The lock file is removed before it
/// is unlocked, so a waiter that then gets the lock on the removed file notices (the path points
/// at another inode, or at nothing) and starts over: lock files do not pile up.
#[derive(Debug)]
pub struct FileLock {
    file: Option<fs::File>,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock at `path` (created if missing) is ours (for blocking threads).
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        loop {
            if let Some(l) = FileLock::lock_at(path, true)? {
                return Ok(l);
            }
        }
    }

    /// Waits for the lock without holding a thread (it is tried every 200 ms); dropping the
    /// future stops the wait.
    pub async fn acquire_async(path: &Path) -> io::Result<FileLock> {
        let never = tokio_util::sync::CancellationToken::new();
        let lock = FileLock::acquire_cancellable(path, &never).await?;
        Ok(lock.expect("a token nobody cancels"))
    }

    /// [`FileLock::acquire`] without a blocking thread: the lock is tried every 200 ms until it
    /// is ours, or until `cancel` fires (`None`). A thread blocked in `flock` could not be
    /// cancelled, and the runtime waits for such threads before the process can exit.
    pub async fn acquire_cancellable(
        path: &Path,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> io::Result<Option<FileLock>> {
        let mut told = false;
        loop {
            if let Some(lock) = FileLock::try_acquire(path)? {
                return Ok(Some(lock));
            }
            if !told {
                tracing::info!(lock = %path.display(), "waiting for another bootwatch to finish with it");
                told = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// The lock at `path` if nobody holds it.
    fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        loop {
            match FileLock::lock_at(path, false) {
                Ok(None) if path.exists() => return Ok(None),
                // The holder removed the file as it let go: try again on a fresh one.
                Ok(None) => continue,
                other => return other,
            }
        }
    }

    /// Opens (creating) and locks the file at `path`, waiting for it when `wait`. `None`: held
    /// by someone else (without `wait`), or the file we locked was removed by its previous
    /// holder as it let go (the caller tries again on the one now at the path).
    fn lock_at(path: &Path, wait: bool) -> io::Result<Option<FileLock>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| with_path(e, "opening the lock", path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) if wait => {
                tracing::info!(lock = %path.display(), "waiting for another bootwatch to finish with it");
                file.lock().map_err(|e| with_path(e, "locking", path))?;
            }
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(with_path(e, "locking", path)),
        }
        let ours = file.metadata()?;
        let still_there =
            fs::metadata(path).is_ok_and(|now| now.dev() == ours.dev() && now.ino() == ours.ino());
        Ok(still_there.then(|| FileLock {
            file: Some(file),
            path: path.to_path_buf(),
        }))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Still locked here: see the type's documentation.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// A file's size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest256 {
    pub size: u64,
    pub sha256: String,
}

/// Hashes a file (blocking; call from a blocking thread for big files).
pub fn hash_file(path: &Path) -> io::Result<Digest256> {
    let mut f = fs::File::open(path).map_err(|e| with_path(e, "opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| with_path(e, "reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Digest256 {
        size,
        sha256: hex::encode(h.finalize()),
    })
}

/// What identifies a file's content without reading it: a write changes mtime and ctime, a
/// replacement changes the inode, and ctime cannot be set back by `touch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl StatKey {
    /// The key of the file at `path` now.
    pub fn of_path(path: &Path) -> io::Result<StatKey> {
        Ok(StatKey::of(&fs::metadata(path)?))
    }

    fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// The key as a file-name-safe word (the same file, unchanged, has the same stamp).
    pub fn stamp(&self) -> String {
        self.file_name()
    }

    fn file_name(&self) -> String {
        format!(
            "{:x}-{:x}-{:x}-{:x}-{:x}",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

/// The directory of [`hash_cache_dir`] under the cache root.
const HASHES_DIR: &str = "hashes";

/// Where hashes are remembered across runs, under the cache root (`None`: this process only).
pub fn hash_cache_dir() -> Option<PathBuf> {
    cache_root().ok().map(|r| r.join(HASHES_DIR))
}

/// [`hash_file`], remembered by the file's [`StatKey`] in this process and in `cache_dir` (one
/// small file per key), so an unchanged file is read once per content. A file modified within
/// the last two seconds is hashed but not remembered: its mtime may not yet show a write that
/// happens in the same clock tick.
pub fn hash_file_cached(path: &Path, cache_dir: Option<&Path>) -> io::Result<Digest256> {
    static MEMO: OnceLock<Mutex<HashMap<StatKey, Digest256>>> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    let meta = fs::metadata(path).map_err(|e| with_path(e, "reading", path))?;
    let key = StatKey::of(&meta);
    if let Some(d) = memo.lock().expect("hash memo").get(&key) {
        return Ok(d.clone());
    }
    let entry = cache_dir.map(|d| d.join(key.file_name()));
    if let Some(e) = &entry
        && let Some(d) = read_json::<Digest256>(e)
        && d.size == key.size
    {
        memo.lock().expect("hash memo").insert(key, d.clone());
        return Ok(d);
    }
    let d = hash_file(path)?;
    let settled = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > Duration::from_secs(2));
    // The content may have changed while it was read: remember only what is still the same file.
    let unchanged = fs::metadata(path).is_ok_and(|m| StatKey::of(&m) == key);
    if settled && unchanged {
        memo.lock().expect("hash memo").insert(key, d.clone());
        if let (Some(dir), Some(e)) = (cache_dir, &entry)
            && fs::create_dir_all(dir).is_ok()
        {
            let _ = write_json_atomic(e, &d);
        }
    }
    Ok(d)
}

/// [`hash_file`] for a sparse file, such as the 64 MiB vars store a run leaves (a few hundred KiB
/// of data, the rest holes): its data extents (found with `SEEK_DATA`/`SEEK_HOLE`; holes read as
/// zeros) are hashed with their offsets and the file's size, which names the content, and the
/// full SHA-256 is remembered in `cache_dir` under that name. So a content is hashed in full
/// once, whichever file holds it (every crash run leaves the same store). A file that is mostly
/// data, a file system without hole reporting, or no cache directory: the file is just hashed.
pub fn hash_file_sparse_cached(path: &Path, cache_dir: Option<&Path>) -> io::Result<Digest256> {
    let Some(dir) = cache_dir else {
        return hash_file(path);
    };
    let f = fs::File::open(path).map_err(|e| with_path(e, "opening", path))?;
    let meta = f.metadata().map_err(|e| with_path(e, "reading", path))?;
    let key = StatKey::of(&meta);
    let size = meta.len();
    let Some(extents) =
        data_extents(&f, size).filter(|x| x.iter().map(|&(_, len)| len).sum::<u64>() <= size / 4)
    else {
        return hash_file(path);
    };
    let mut h = Sha256::new();
    h.update(b"bootwatch sparse content 1\n");
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    for &(offset, len) in &extents {
        h.update(offset.to_le_bytes());
        h.update(len.to_le_bytes());
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], offset + done)
                .map_err(|e| with_path(e, "reading", path))?;
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    let entry = dir.join(format!("sparse-{}", hex::encode(h.finalize())));
    if let Some(d) = read_json::<Digest256>(&entry)
        && d.size == size
    {
        return Ok(d);
    }
    let d = hash_file(path)?;
    // Remember only what was read from one unchanged file.
    let unchanged = fs::metadata(path).is_ok_and(|m| StatKey::of(&m) == key);
    if unchanged && d.size == size && fs::create_dir_all(dir).is_ok() {
        let _ = write_json_atomic(&entry, &d);
    }
    Ok(d)
}

/// The data extents (offset, length) of a file of `size` bytes, or `None` when the file system
/// does not report holes.
fn data_extents(f: &fs::File, size: u64) -> Option<Vec<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let start = match lseek(f, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return None,
        };
        let end = lseek(f, start, Whence::SeekHole).ok()?;
        if end <= start {
            return None;
        }
        out.push((start as u64, (end - start) as u64));
        pos = end;
    }
    Some(out)
}

/// True when every byte is zero (branch-free per chunk so the compiler vectorizes it).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Copies `from` to `to` (replacing it), leaving 64 KiB blocks of zeros as holes, and reading
/// only `from`'s data extents when it is sparse itself. Vars templates are 64 MiB of which a few
/// hundred KiB hold data (Debian's are all zeros): writing the zeros, and freeing them when the
/// run's private directory goes, cost more than the rest of a crash run.
pub fn sparse_copy(from: &Path, to: &Path) -> io::Result<()> {
    const BLOCK: u64 = 64 << 10;
    let src = fs::File::open(from).map_err(|e| with_path(e, "opening", from))?;
    let size = src
        .metadata()
        .map_err(|e| with_path(e, "reading", from))?
        .len();
    let extents = data_extents(&src, size).unwrap_or_else(|| vec![(0, size)]);
    let dst = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(|e| with_path(e, "creating", to))?;
    let mut buf = vec![0u8; BLOCK as usize];
    for (offset, len) in extents {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BLOCK) as usize;
            src.read_exact_at(&mut buf[..n], offset + done)
                .map_err(|e| with_path(e, "reading", from))?;
            if !is_zero(&buf[..n]) {
                dst.write_all_at(&buf[..n], offset + done)
                    .map_err(|e| with_path(e, "writing", to))?;
            }
            done += n as u64;
        }
    }
    // Holes, a trailing one too, need the length set.
    dst.set_len(size).map_err(|e| with_path(e, "writing", to))
}

/// A sparse copy of `path` ([`sparse_copy`]) kept under the cache root by the sha256 of its
/// content, made once per content; `path` itself is hashed once per content too
/// ([`hash_file_cached`]). Copying from the twin reads only its data: for a 64 MiB vars template
/// of a few hundred KiB of data, that is the difference between reading 64 MiB per run and not.
pub fn sparse_twin(path: &Path) -> io::Result<PathBuf> {
    sparse_twin_in(path, &cache_root()?)
}

fn sparse_twin_in(path: &Path, root: &Path) -> io::Result<PathBuf> {
    let d = hash_file_cached(path, Some(&root.join(HASHES_DIR)))?;
    let dir = root.join("sparse");
    let twin = dir.join(&d.sha256);
    if fs::metadata(&twin).is_ok_and(|m| m.len() == d.size) {
        return Ok(twin);
    }
    fs::create_dir_all(&dir).map_err(|e| with_path(e, "creating", &dir))?;
    // Copies a killed process left half-written.
    sweep_stale(&dir, &[".twin-"], Duration::from_secs(3600));
    let tmp = tempfile::Builder::new()
        .prefix(".twin-")
        .tempfile_in(&dir)
        .map_err(|e| with_path(e, "creating a file in", &dir))?;
    sparse_copy(path, tmp.path())?;
    // The content may have changed while it was read: publish only a copy of what was hashed.
    if hash_file(tmp.path())?.sha256 != d.sha256 {
        return Err(io::Error::other(format!(
            "{} changed while it was copied",
            path.display()
        )));
    }
    tmp.persist(&twin)
        .map_err(|e| with_path(e.error, "writing", &twin))?;
    Ok(twin)
}

/// Publishes a directory built in `staging` as `final_dir`: readable by all (tempfile makes 0700
/// directories), whatever is in the way (a broken or incomplete entry) removed, then one rename.
/// The caller holds the entry's lock or has checked that no complete entry exists.
pub fn replace_dir(staging: &Path, final_dir: &Path, what: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755))?;
    if final_dir.exists() {
        tracing::warn!(dir = %final_dir.display(), "replacing a broken or incomplete {what}");
        fs::remove_dir_all(final_dir).map_err(|e| with_path(e, "removing", final_dir))?;
    }
    fs::rename(staging, final_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "moving {} to {}: {e}",
                staging.display(),
                final_dir.display()
            ),
        )
    })
}

/// Removes the entries of `dir` whose names start with one of `prefixes` and that were last
/// modified more than `max_age` ago: temporaries of a process that was killed. Entries still in
/// use are younger (their owners hold a lock, or touch them while they work).
pub fn sweep_stale(dir: &Path, prefixes: &[&str], max_age: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        if old {
            let path = e.path();
            tracing::debug!(path = %path.display(), "removing a stale temporary");
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_copy_is_byte_for_byte_the_same_with_zeros_left_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        // Data, 4 MiB of zeros, data across a block edge, zeros to an odd end.
        let mut data = vec![0u8; (8 << 20) + 123];
        data[..100].fill(0xAB);
        data[(5 << 20) - 7..(5 << 20) + 7].fill(0x5A);
        let t = dir.path().join("VARS.fd");
        fs::write(&t, &data).unwrap();
        let c = dir.path().join("copy.fd");
        sparse_copy(&t, &c).unwrap();
        assert_eq!(fs::read(&c).unwrap(), data);
        let allocated = fs::metadata(&c).unwrap().blocks() * 512;
        assert!(
            allocated <= 1 << 20,
            "{allocated} bytes allocated for 2 data blocks"
        );
        // A second copy over the first (a file of other content) gives the same file.
        fs::write(&c, vec![7u8; 9 << 20]).unwrap();
        sparse_copy(&t, &c).unwrap();
        assert_eq!(fs::read(&c).unwrap(), data);
        // A copy of the sparse copy (its data extents read, not its holes) is the same too.
        let again = dir.path().join("again.fd");
        sparse_copy(&c, &again).unwrap();
        assert_eq!(fs::read(&again).unwrap(), data);
    }

    /// The twin is made once per content, holds the same bytes sparsely, and a file of other
    /// content gets a twin of its own.
    #[test]
    fn a_sparse_twin_is_made_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let mut data = vec![0u8; 4 << 20];
        data[1000..2000].fill(0xC3);
        let t = dir.path().join("VARS.fd");
        fs::write(&t, &data).unwrap();
        let twin = sparse_twin_in(&t, &root).unwrap();
        assert_eq!(fs::read(&twin).unwrap(), data);
        assert!(fs::metadata(&twin).unwrap().blocks() * 512 <= 256 << 10);
        let made = fs::metadata(&twin).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(sparse_twin_in(&t, &root).unwrap(), twin);
        assert_eq!(fs::metadata(&twin).unwrap().modified().unwrap(), made);
        let other = dir.path().join("OTHER.fd");
        data[3 << 20] = 1;
        fs::write(&other, &data).unwrap();
        let twin2 = sparse_twin_in(&other, &root).unwrap();
        assert_ne!(twin2, twin);
        assert_eq!(fs::read(&twin2).unwrap(), data);
        // Nothing else is left in the twins' directory.
        assert_eq!(fs::read_dir(root.join("sparse")).unwrap().count(), 2);
    }

    /// A sparse file's hash is its full SHA-256; the same content in another file is found in
    /// the cache by its data extents (the entry is what is returned); other content gets its own.
    #[test]
    fn a_sparse_file_is_hashed_in_full_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hashes");
        let sparse = |name: &str, byte: u8| {
            let p = dir.path().join(name);
            let f = fs::File::create(&p).unwrap();
            f.set_len(16 << 20).unwrap();
            f.write_all_at(&[byte; 5000], 3 << 20).unwrap();
            p
        };
        let a = sparse("a.fd", 0x41);
        let d = hash_file_sparse_cached(&a, Some(&cache)).unwrap();
        assert_eq!(d, hash_file(&a).unwrap());
        let entries: Vec<_> = fs::read_dir(&cache).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "one entry for the content");
        // The same content in another file: the entry answers (made visible by changing it).
        let b = sparse("b.fd", 0x41);
        let marked = Digest256 {
            sha256: "from-the-cache".into(),
            ..d.clone()
        };
        write_json_atomic(&entries[0].path(), &marked).unwrap();
        assert_eq!(hash_file_sparse_cached(&b, Some(&cache)).unwrap(), marked);
        // Other content: hashed, correct, an entry of its own.
        let c = sparse("c.fd", 0x43);
        let dc = hash_file_sparse_cached(&c, Some(&cache)).unwrap();
        assert_eq!(dc, hash_file(&c).unwrap());
        assert_ne!(dc.sha256, d.sha256);
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 2);
        // A file that is all data is hashed as it is, and not remembered.
        let full = dir.path().join("full.fd");
        fs::write(&full, vec![9u8; 1 << 20]).unwrap();
        assert_eq!(
            hash_file_sparse_cached(&full, Some(&cache)).unwrap(),
            hash_file(&full).unwrap()
        );
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 2);
    }

    #[test]
    fn input_files_are_read_whole_only_when_small_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        fs::write(&p, "name = \"m\"\n").unwrap();
        assert_eq!(read_input(&p, INPUT_LIMIT).unwrap(), "name = \"m\"\n");
        assert_eq!(read_input(&p, 11).unwrap().len(), 11);
        let e = read_input(&p, 10).unwrap_err().to_string();
        assert!(e.contains("larger than 10 bytes"), "{e}");

        // A sparse file over the limit is refused from its size, without reading it.
        let big = dir.path().join("big.toml");
        fs::File::create(&big)
            .unwrap()
            .set_len(INPUT_LIMIT + 1)
            .unwrap();
        let e = read_input(&big, INPUT_LIMIT).unwrap_err().to_string();
        assert!(e.contains("larger than 4 MiB"), "{e}");

        let t = std::time::Instant::now();
        let e = read_input(Path::new("/dev/zero"), INPUT_LIMIT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a device"), "{e}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_input(&fifo, INPUT_LIMIT).unwrap_err().to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let e = read_input(dir.path(), INPUT_LIMIT).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");

        fs::write(&p, b"name = \"\xff\"").unwrap();
        let e = read_input(&p, INPUT_LIMIT).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("offset 8"), "{e}");
        assert!(read_input(&dir.path().join("missing"), INPUT_LIMIT).is_err());
    }

    #[tokio::test]
    async fn a_cancellable_lock_waits_for_its_holder_or_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let never = tokio_util::sync::CancellationToken::new();
        let held = FileLock::acquire_cancellable(&p, &never)
            .await
            .unwrap()
            .unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        let t = std::time::Instant::now();
        assert!(
            FileLock::acquire_cancellable(&p, &cancel)
                .await
                .unwrap()
                .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { FileLock::acquire_cancellable(&p2, &never).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = waiter.await.unwrap().unwrap();
        assert!(got.is_some());
        assert!(p.exists());
        drop(got);
        assert!(!p.exists(), "the lock file is removed with the lock");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let e = write_json_atomic(&dir.path().join("missing/x.json"), &1).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn hashes_and_remembers_by_content_identity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hashes");
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hash_file(&p).unwrap().sha256, abc);
        // Fresh files are not remembered (same-tick writes); an old one is.
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(hash_file_cached(&p, Some(&cache)).unwrap().sha256, abc);
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
        // A change of content is a new key: never the old hash.
        fs::write(&p, b"abd").unwrap();
        let d = hash_file_cached(&p, Some(&cache)).unwrap();
        assert_ne!(d.sha256, abc);
        assert_eq!(d, hash_file(&p).unwrap());
    }

    #[test]
    fn lock_is_exclusive_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let l = FileLock::acquire(&p).unwrap();
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || {
            let _l = FileLock::acquire(&p2).unwrap();
            SystemTime::now()
        });
        std::thread::sleep(Duration::from_millis(200));
        let released = SystemTime::now();
        drop(l);
        let got = waiter.join().unwrap();
        assert!(
            got >= released,
            "the waiter got the lock before it was released"
        );
        assert!(!p.exists());
    }

    #[test]
    fn sweep_removes_only_old_matching_entries() {
        let dir = tempfile::tempdir().unwrap();
        for n in [".build-old", ".build-new", "keep"] {
            fs::create_dir(dir.path().join(n)).unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        for n in [".build-old", "keep"] {
            fs::File::open(dir.path().join(n))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        sweep_stale(dir.path(), &[".build-"], Duration::from_secs(60));
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".build-new", "keep"]);
    }
}
