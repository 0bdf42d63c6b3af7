//! Offline access to the EFI system partition (ESP) inside a disk image, and offline repair of it
//! inside a run's qcow2 overlay: "put the install media's `grubaa64.efi` back" on a machine that
//! can no longer boot. No root, no loop devices, no `qemu-nbd`: only `qemu-img` (as a library of
//! block drivers) plus `gpt` and `fatfs` in this process.
//!
//! # How
//!
//! `qemu-img convert --image-opts` can open any byte range of any image (through its backing
//! chain) as a raw image of its own: `driver=raw,offset=O,size=S,file.driver=qcow2,...`. The same
//! syntax with `-n --target-image-opts` writes into a byte range of an existing image. Everything
//! here is built on those two operations:
//!
//! 1. `qemu-img info` (format, virtual size, backing file; for a repair without `-U`, so an image
//!    a running QEMU holds is refused instead of being edited under it).
//! 2. The first and last MiB of the disk in one `qemu-img convert` (two sources, concatenated):
//!    the `gpt` crate finds the ESP (type C12A7328-F81F-11D2-BA4B-00A0C93EC93B) in them. Disks
//!    without a GPT are also understood when they hold an MBR partition of type 0xEF, or are a
//!    bare FAT volume ("superfloppy", like the images of [`crate::inputs::fixtures`]).
//! 3. The ESP's byte range, extracted to a sparse scratch file (free space stays holes).
//! 4. `fatfs` edits that file through a wrapper that records every byte range it writes.
//! 5. Before anything is written to the overlay, the edited ESP is mounted again and every file is
//!    read back and compared.
//! 6. The overlay is copied to a temporary file next to it; only the recorded ranges (aligned to
//!    4 KiB, ranges less than 1 MiB apart merged) are written into the copy, one
//!    `qemu-img convert -n` each; those ranges are read back from the copy and compared; the copy
//!    is synced and, after checking that nobody opened or changed the overlay meanwhile, renamed
//!    over it.
//!
//! The overlay's earlier content (the guest's own writes) is untouched, its header still names
//! the same backing file, only the clusters of the changed ranges are added, and the backing
//! file is only ever opened read-only by `qemu-img`. Every failure happens before the rename, so
//! on error the overlay is byte-identical (the temporary files are removed).
//!
//! # Why not convert the whole disk to raw and back
//!
//! The obvious method (`convert -O raw` the overlay, edit the raw disk in place, then
//! `convert -O qcow2 -B base`) reads every allocated byte of the base and writes it twice, and
//! the result is not small: `qemu-img convert -B` decides what to copy from the *source's*
//! allocation, and in a raw source everything non-zero is data, so every non-zero cluster of the
//! base is copied into the new overlay (`-B` never compares with the backing file's content).
//! Measured (release build, warm page cache, 2 idle cores) on a 4 GiB virtual disk with a
//! 512 MiB FAT32 ESP, 1 GiB of data in the base and 64 MiB in the overlay, replacing a 4 MiB
//! `grubaa64.efi` (the ignored test `timing_against_convert_to_raw_and_back`): that method took
//! 3.2 s and left an overlay of 1.15 GB; this one took 0.16 s and grew the overlay by 4.5 MB (the
//! new file and one MiB around the FATs). Most of that is the ESP extraction and six `qemu-img`
//! runs of 5-10 ms each; the cost grows with the ESP's data and the overlay's size (the copy
//! that makes the change atomic: `std::fs::copy`, a reflink on btrfs/XFS), not with the base's.
//!
//! The functions are async: `qemu-img` runs through [`crate::sys::proc::Tool`] from the caller's
//! runtime thread, and the FAT work and the large copies run on blocking threads.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;

use crate::sys::proc::Tool;

/// Bytes fetched from each end of the disk to find the partition table.
const TABLE_WINDOW: u64 = 1 << 20;
/// Written ranges are widened to this alignment ...
const WRITE_ALIGN: u64 = 4096;
/// ... and merged when less than this apart (one `qemu-img` run costs more than writing this
/// much of the ESP's unchanged bytes again).
const MERGE_GAP: u64 = 1 << 20;
/// Directory depth at which listing stops (a damaged FAT can contain directory cycles).
const MAX_DEPTH: usize = 32;
/// One `qemu-img` run takes milliseconds to seconds; one that hangs is stopped.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the ESP lies on a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EspLocation {
    /// Byte offset of the partition from the start of the disk.
    pub offset: u64,
    /// Size of the partition in bytes.
    pub size: u64,
    pub table: EspTable,
}

/// How the ESP was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum EspTable {
    /// A GPT partition with the EFI system partition type (the first one if several).
    Gpt { partition: u32, sector_size: u64 },
    /// An MBR partition of type 0xEF (`index` 0..=3).
    Mbr { index: u8 },
    /// No partition table: the whole disk is one FAT volume.
    WholeDisk,
}

/// What [`replace_esp_files`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspRepair {
    pub esp: EspLocation,
    /// The files written, as normalized paths on the ESP (`EFI/debian/grubaa64.efi`).
    pub files: Vec<String>,
    /// The byte ranges of the disk written into the overlay, `(offset, length)`.
    pub ranges: Vec<(u64, u64)>,
    /// Their total length.
    pub bytes_written: u64,
}

/// The ESP of `disk` (any format `qemu-img` reads; a backing chain is followed).
pub async fn locate_esp(qemu_img: &Path, disk: &Path) -> Result<EspLocation> {
    let disk = absolute(disk)?;
    let info = ImageInfo::read(qemu_img, &disk, true).await?;
    let scratch = tempfile::Builder::new()
        .prefix("bootwatch-esp-")
        .tempdir()?;
    let src = Source::new(qemu_img, &disk, &info, true);
    src.locate(scratch.path()).await
}

/// Reads one file from the ESP of `disk` (raw or qcow2, with backing chain). `path_on_esp` is
/// matched like the firmware does: `/` or `\` separated, case-insensitive.
pub async fn read_esp_file(qemu_img: &Path, disk: &Path, path_on_esp: &str) -> Result<Vec<u8>> {
    let comps = esp_path(path_on_esp)?;
    with_esp(qemu_img, disk, move |fs| {
        let mut f = fs.root_dir().open_file(&comps.join("/"))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await
    .with_context(|| format!("reading {path_on_esp} from the ESP of {}", disk.display()))
}

/// Every regular file on the ESP of `disk`, as `(path, size)` sorted by path; paths use `/` and
/// the names as stored (long names where present).
pub async fn list_esp(qemu_img: &Path, disk: &Path) -> Result<Vec<(String, u64)>> {
    with_esp(qemu_img, disk, |fs| {
        let mut out = Vec::new();
        walk(&fs.root_dir(), "", 0, &mut out)?;
        out.sort();
        Ok(out)
    })
    .await
    .with_context(|| format!("listing the ESP of {}", disk.display()))
}

/// Every regular file under `EFI/` (any case) on the ESP of `disk` with its content, read in
/// one pass (one extraction of the ESP), sorted by path. Files larger than `max_size` are
/// listed with an empty content.
pub async fn read_efi_tree(
    qemu_img: &Path,
    disk: &Path,
    max_size: u64,
) -> Result<Vec<(String, u64, Vec<u8>)>> {
    with_esp(qemu_img, disk, move |fs| {
        let mut files = Vec::new();
        walk(&fs.root_dir(), "", 0, &mut files)?;
        files.sort();
        let mut out = Vec::new();
        for (path, size) in files {
            if !path.to_ascii_uppercase().starts_with("EFI/") {
                continue;
            }
            let mut bytes = Vec::new();
            if size <= max_size {
                fs.root_dir().open_file(&path)?.read_to_end(&mut bytes)?;
            }
            out.push((path, size, bytes));
        }
        Ok(out)
    })
    .await
    .with_context(|| format!("reading EFI/ on the ESP of {}", disk.display()))
}

/// Replaces (or creates, with any missing directories) files on the ESP of `overlay`, a qcow2
/// image, normally with a backing file. The result is again a qcow2 on the same backing file,
/// holding the guest's earlier changes plus these; the backing file is never written. Atomic: on
/// error `overlay` is unchanged. Refused while another process (a running QEMU) has the overlay
/// open for writing. Paths are as for [`read_esp_file`]; an existing file keeps its name's case.
pub async fn replace_esp_files(
    qemu_img: &Path,
    overlay: &Path,
    files: &[(&str, &[u8])],
) -> Result<EspRepair> {
    let what = || format!("replacing files on the ESP of {}", overlay.display());
    replace(qemu_img, overlay, files).await.with_context(what)
}

async fn replace(qemu_img: &Path, overlay: &Path, files: &[(&str, &[u8])]) -> Result<EspRepair> {
    let overlay = fs::canonicalize(overlay).with_context(|| overlay.display().to_string())?;
    let files: Vec<(Vec<String>, Vec<u8>)> = files
        .iter()
        .map(|(p, b)| Ok((esp_path(p)?, b.to_vec())))
        .collect::<Result<_>>()?;
    let names: Vec<String> = files.iter().map(|(c, _)| c.join("/")).collect();
    // FAT names are case-insensitive: the same file twice would make the result depend on order.
    let mut folded: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    folded.sort();
    if let Some(w) = folded.windows(2).find(|w| w[0] == w[1]) {
        bail!("{} is given twice", w[0]);
    }
    let info = ImageInfo::read(qemu_img, &overlay, false).await?;
    ensure!(
        info.format == "qcow2",
        "{} is a {} image, not a qcow2 overlay",
        overlay.display(),
        info.format
    );
    if let Some(data_file) = &info.data_file {
        bail!(
            "{} keeps its data in an external file ({data_file}), which a copy of the overlay would share",
            overlay.display()
        );
    }
    let stamp = |p: &Path| fs::metadata(p).and_then(|m| Ok((m.len(), m.modified()?)));
    let before = stamp(&overlay)?;
    let dir = overlay.parent().unwrap_or(Path::new("/"));
    let scratch = tempfile::Builder::new()
        .prefix(".bootwatch-esp-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))?;
    let src = Source::new(qemu_img, &overlay, &info, false);
    let esp = src.locate(scratch.path()).await?;

    // Edit a copy of the ESP, recording what changes.
    let esp_raw = scratch.path().join("esp.raw");
    src.extract(&[(esp.offset, esp.size)], &esp_raw).await?;
    let written = {
        let esp_raw = esp_raw.clone();
        blocking(move || edit_esp_copy(&esp_raw, &files)).await?
    };
    let ranges = coalesce(written, esp.size);
    let disk_ranges: Vec<(u64, u64)> = ranges.iter().map(|&(o, l)| (esp.offset + o, l)).collect();
    let repair = EspRepair {
        esp,
        files: names,
        bytes_written: ranges.iter().map(|r| r.1).sum(),
        ranges: disk_ranges.clone(),
    };
    if ranges.is_empty() {
        return Ok(repair);
    }

    // Apply the changed ranges to a copy of the overlay, check them, rename it into place.
    let name = overlay.file_name().unwrap_or_default().to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".esp-tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let tmp = {
        let overlay = overlay.clone();
        blocking(move || {
            fs::copy(&overlay, tmp.path()).with_context(|| {
                format!("copying {} to {}", overlay.display(), tmp.path().display())
            })?;
            Ok(tmp)
        })
        .await?
    };
    let target = Source {
        qemu_img,
        path: tmp.path(),
        format: "qcow2",
        force_share: false,
        virtual_size: info.virtual_size,
    };
    for (&(o, l), &(disk_o, _)) in ranges.iter().zip(&disk_ranges) {
        let from = slice_opts(&esp_raw, None, o, l)?;
        let to = slice_opts(tmp.path(), Some("qcow2"), disk_o, l)?;
        qemu(
            qemu_img,
            [
                "convert".into(),
                "-q".into(),
                "-n".into(),
                "--image-opts".into(),
                from.into(),
                "--target-image-opts".into(),
                to.into(),
            ],
        )
        .await
        .context("writing into the overlay copy")?;
    }
    let check = scratch.path().join("check.raw");
    target.extract(&disk_ranges, &check).await?;
    let tmp = {
        let (ranges, esp_raw, esp_offset) = (ranges.clone(), esp_raw.clone(), esp.offset);
        blocking(move || {
            compare_ranges(&check, &esp_raw, &ranges, esp_offset)?;
            tmp.as_file().sync_all()?;
            Ok(tmp)
        })
        .await?
    };
    // Nobody may have started using or changed the overlay meanwhile.
    ImageInfo::read(qemu_img, &overlay, false).await?;
    ensure!(
        stamp(&overlay)? == before,
        "{} changed while it was being repaired",
        overlay.display()
    );
    tmp.persist(&overlay)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the edited copy over {}", overlay.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::debug!(
        "replaced {:?} on the ESP of {}: {} bytes in {} ranges",
        repair.files,
        overlay.display(),
        repair.bytes_written,
        repair.ranges.len()
    );
    Ok(repair)
}

/// Writes `files` into the FAT file system in `esp_raw`, then mounts it again and reads every
/// file back. Returns the byte ranges of `esp_raw` that were written. Blocking.
fn edit_esp_copy(esp_raw: &Path, files: &[(Vec<String>, Vec<u8>)]) -> Result<Vec<(u64, u64)>> {
    let state = Rc::new(RefCell::new(TrackState::default()));
    {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(esp_raw)?;
        let tracker = Tracker {
            file,
            pos: 0,
            state: state.clone(),
        };
        let fs = mount(Box::new(tracker))?;
        for (comps, bytes) in files {
            write_file(&fs, comps, bytes)
                .with_context(|| format!("writing {} on the ESP", comps.join("/")))?;
        }
        fs.unmount().context("closing the ESP")?;
    }
    let TrackState { written, error } = Rc::try_unwrap(state)
        .map_err(|_| anyhow!("the ESP is still open"))?
        .into_inner();
    if let Some(e) = error {
        return Err(e).context("writing the ESP scratch copy");
    }
    // Check the edited ESP before anything reaches the overlay.
    let fs = mount(Box::new(ReadOnly(fs::File::open(esp_raw)?)))?;
    for (comps, bytes) in files {
        let mut got = Vec::new();
        fs.root_dir()
            .open_file(&comps.join("/"))?
            .read_to_end(&mut got)?;
        ensure!(
            got == *bytes,
            "{} reads back differently from the edited ESP",
            comps.join("/")
        );
    }
    Ok(written)
}

/// Compares `check` (the `ranges` read back from the overlay copy, concatenated) with the same
/// ranges of `esp_raw`. Blocking.
fn compare_ranges(
    check: &Path,
    esp_raw: &Path,
    ranges: &[(u64, u64)],
    esp_offset: u64,
) -> Result<()> {
    let mut got = fs::File::open(check)?;
    let mut want = fs::File::open(esp_raw)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &(o, l) in ranges {
        a.resize(l as usize, 0);
        b.resize(l as usize, 0);
        got.read_exact(&mut a)?;
        want.seek(SeekFrom::Start(o))?;
        want.read_exact(&mut b)?;
        ensure!(
            a == b,
            "the overlay copy reads back differently at disk offset {}",
            esp_offset + o
        );
    }
    Ok(())
}

/// Runs blocking file work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task")?
}

// ---------------------------------------------------------------------------------------------
// qemu-img
// ---------------------------------------------------------------------------------------------

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone)]
struct ImageInfo {
    format: String,
    virtual_size: u64,
    data_file: Option<String>,
}

impl ImageInfo {
    /// Without `force_share`, an image another process writes is an error.
    async fn read(qemu_img: &Path, path: &Path, force_share: bool) -> Result<ImageInfo> {
        let mut args: Vec<OsString> = vec!["info".into(), "--output=json".into()];
        if force_share {
            args.push("-U".into());
        }
        args.push(path.into());
        let out = qemu(qemu_img, args).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&out).context("parsing qemu-img info's JSON")?;
        let format = v["format"]
            .as_str()
            .ok_or_else(|| anyhow!("qemu-img info gave no format"))?
            .to_string();
        ensure!(
            !format.is_empty()
                && format
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "unexpected image format {format:?}"
        );
        Ok(ImageInfo {
            virtual_size: v["virtual-size"]
                .as_u64()
                .ok_or_else(|| anyhow!("qemu-img info gave no virtual size"))?,
            data_file: v["format-specific"]["data"]["data-file"]
                .as_str()
                .map(str::to_string),
            format,
        })
    }
}

/// Runs `qemu-img` with `args`; its stdout, or an error quoting the command and its stderr.
async fn qemu(qemu_img: &Path, args: impl IntoIterator<Item = OsString>) -> Result<Vec<u8>> {
    let out = Tool::new(qemu_img)
        .args(args)
        .timeout(QEMU_IMG_TIMEOUT)
        .run()
        .await?;
    Ok(out.stdout)
}

/// `driver=raw,offset=..,size=..` over `path`; `format` is the image's own format (`None`: a
/// plain file).
fn slice_opts(path: &Path, format: Option<&str>, offset: u64, size: u64) -> Result<String> {
    let name = path
        .to_str()
        .ok_or_else(|| {
            anyhow!(
                "{} is not UTF-8, which qemu-img options need",
                path.display()
            )
        })?
        .replace(',', ",,");
    Ok(match format {
        Some(f) => format!(
            "driver=raw,offset={offset},size={size},file.driver={f},file.file.driver=file,file.file.filename={name}"
        ),
        None => {
            format!("driver=raw,offset={offset},size={size},file.driver=file,file.filename={name}")
        }
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| p.display().to_string())
}

/// A disk image to read from.
struct Source<'a> {
    qemu_img: &'a Path,
    path: &'a Path,
    format: &'a str,
    force_share: bool,
    virtual_size: u64,
}

impl<'a> Source<'a> {
    fn new(qemu_img: &'a Path, path: &'a Path, info: &'a ImageInfo, force_share: bool) -> Self {
        Source {
            qemu_img,
            path,
            format: &info.format,
            force_share,
            virtual_size: info.virtual_size,
        }
    }

    /// Copies the byte `ranges` of the disk, concatenated, into a new sparse raw file `out`.
    async fn extract(&self, ranges: &[(u64, u64)], out: &Path) -> Result<()> {
        let mut args: Vec<OsString> = vec!["convert".into(), "-q".into()];
        if self.force_share {
            args.push("-U".into());
        }
        args.extend(["-O".into(), "raw".into(), "--image-opts".into()]);
        for &(o, l) in ranges {
            args.push(slice_opts(self.path, Some(self.format), o, l)?.into());
        }
        args.push(out.into());
        qemu(self.qemu_img, args)
            .await
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(())
    }

    /// Finds the ESP from the two ends of the disk.
    async fn locate(&self, scratch: &Path) -> Result<EspLocation> {
        let size = self.virtual_size;
        let head = size.min(TABLE_WINDOW);
        let tail = (size - head).min(TABLE_WINDOW);
        let mut ranges = vec![(0, head)];
        if tail > 0 {
            ranges.push((size - tail, tail));
        }
        let out = scratch.join("table.raw");
        self.extract(&ranges, &out).await?;
        let mut bytes = fs::read(&out)?;
        let _ = fs::remove_file(&out);
        bytes.resize((head + tail) as usize, 0);
        let tail_bytes = bytes.split_off(head as usize);
        let mut pieces = vec![(0, bytes)];
        if tail > 0 {
            pieces.push((size - tail, tail_bytes));
        }
        find_esp(Window {
            len: size,
            pos: 0,
            pieces,
        })
        .with_context(|| format!("finding the ESP of {}", self.path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// Partition tables
// ---------------------------------------------------------------------------------------------

/// A disk of which only some byte ranges were fetched; reading elsewhere is an error.
#[derive(Debug)]
struct Window {
    len: u64,
    pos: u64,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Window {
    fn get(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.pieces.iter().find_map(|(start, b)| {
            let rel = usize::try_from(offset.checked_sub(*start)?).ok()?;
            b.get(rel..rel.checked_add(len)?)
        })
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        for (start, bytes) in &self.pieces {
            let end = start + bytes.len() as u64;
            if (*start..end).contains(&self.pos) {
                let off = (self.pos - start) as usize;
                let n = buf.len().min(bytes.len() - off);
                buf[..n].copy_from_slice(&bytes[off..off + n]);
                self.pos += n as u64;
                return Ok(n);
            }
        }
        Err(io::Error::other(format!(
            "the partition table refers to byte {} of the disk, outside the first and last MiB",
            self.pos
        )))
    }
}

impl Write for Window {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

fn find_esp(mut win: Window) -> Result<EspLocation> {
    let size = win.len;
    let has_sig = |w: &Window, o: u64| w.get(o, 8) == Some(b"EFI PART".as_slice());
    // A GPT: a primary header at LBA 1 or a backup header at the last LBA.
    for lb in [512u64, 4096] {
        let primary = has_sig(&win, lb);
        let backup = size >= lb * 3 && has_sig(&win, size - lb);
        if !primary && !backup {
            continue;
        }
        // The gpt crate asserts 128-byte entries; refuse anything else instead of panicking.
        for at in [lb, size.saturating_sub(lb)] {
            if has_sig(&win, at) {
                let entry = win
                    .get(at + 84, 4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
                ensure!(
                    entry == Some(128),
                    "GPT partition entries of {entry:?} bytes are not supported"
                );
            }
        }
        let lb_size = if lb == 512 {
            gpt::disk::LogicalBlockSize::Lb512
        } else {
            gpt::disk::LogicalBlockSize::Lb4096
        };
        win.pos = 0;
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb_size)
            .open_from_device(win)
            .context("reading the GPT")?;
        let (&number, part) = disk
            .partitions()
            .iter()
            .find(|(_, p)| p.part_type_guid == gpt::partition_types::EFI)
            .ok_or_else(|| anyhow!("the GPT has no EFI system partition"))?;
        ensure!(part.last_lba >= part.first_lba, "ESP with negative size");
        let offset = part.first_lba * lb;
        let len = (part.last_lba - part.first_lba + 1) * lb;
        ensure!(
            offset.checked_add(len).is_some_and(|e| e <= size),
            "the ESP (partition {number}) ends beyond the end of the disk"
        );
        return Ok(EspLocation {
            offset,
            size: len,
            table: EspTable::Gpt {
                partition: number,
                sector_size: lb,
            },
        });
    }
    let Some(s0) = win.get(0, 512) else {
        bail!("the disk is too small to hold a partition table");
    };
    ensure!(
        s0[510..] == [0x55, 0xAA],
        "no partition table (neither GPT nor MBR) and no FAT file system"
    );
    if looks_like_fat(s0) {
        return Ok(EspLocation {
            offset: 0,
            size,
            table: EspTable::WholeDisk,
        });
    }
    for i in 0..4u8 {
        let e = &s0[446 + 16 * usize::from(i)..][..16];
        match e[4] {
            0xEE => bail!("a protective MBR, but no readable GPT"),
            0xEF => {
                let start = u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap())) * 512;
                let len = u64::from(u32::from_le_bytes(e[12..16].try_into().unwrap())) * 512;
                ensure!(
                    len > 0 && start + len <= size,
                    "MBR partition {} (ESP) lies outside the disk",
                    i + 1
                );
                return Ok(EspLocation {
                    offset: start,
                    size: len,
                    table: EspTable::Mbr { index: i },
                });
            }
            _ => {}
        }
    }
    bail!("the MBR has no EFI system partition (type 0xEF)")
}

/// A FAT boot sector: a jump, a plausible BPB and a FAT type string.
fn looks_like_fat(s0: &[u8]) -> bool {
    let bps = u16::from_le_bytes([s0[11], s0[12]]);
    let spc = s0[13];
    matches!(s0[0], 0xEB | 0xE9)
        && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && s0[16] >= 1
        && (s0[54..57] == *b"FAT" || s0[82..85] == *b"FAT")
}

// ---------------------------------------------------------------------------------------------
// FAT
// ---------------------------------------------------------------------------------------------

trait Rws: Read + Write + Seek {}
impl<T: Read + Write + Seek> Rws for T {}

type Stream = fscommon::BufStream<Box<dyn Rws>>;
type Fat = fatfs::FileSystem<Stream>;

fn mount(disk: Box<dyn Rws>) -> Result<Fat> {
    fatfs::FileSystem::new(fscommon::BufStream::new(disk), fatfs::FsOptions::new())
        .context("the ESP holds no readable FAT file system")
}

/// Mounts the ESP of `disk` read-only and runs `f` on it (on a blocking thread). A raw disk is
/// read in place; any other format through a scratch copy of the ESP.
async fn with_esp<R: Send + 'static>(
    qemu_img: &Path,
    disk: &Path,
    f: impl FnOnce(&Fat) -> io::Result<R> + Send + 'static,
) -> Result<R> {
    let disk = absolute(disk)?;
    let info = ImageInfo::read(qemu_img, &disk, true).await?;
    let scratch = tempfile::Builder::new()
        .prefix("bootwatch-esp-")
        .tempdir()?;
    let src = Source::new(qemu_img, &disk, &info, true);
    let esp = src.locate(scratch.path()).await?;
    let esp_raw = scratch.path().join("esp.raw");
    let in_place = info.format == "raw";
    if !in_place {
        src.extract(&[(esp.offset, esp.size)], &esp_raw).await?;
    }
    blocking(move || {
        let stream: Box<dyn Rws> = if in_place {
            let file = fs::File::open(&disk)?;
            Box::new(fscommon::StreamSlice::new(
                ReadOnly(file),
                esp.offset,
                esp.offset + esp.size,
            )?)
        } else {
            Box::new(ReadOnly(fs::File::open(&esp_raw)?))
        };
        let fs = mount(stream)?;
        let r = f(&fs)?;
        drop(fs);
        drop(scratch);
        Ok(r)
    })
    .await
}

fn walk(
    dir: &fatfs::Dir<'_, Stream>,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, u64)>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!(
            "directories nested deeper than {MAX_DEPTH} at {prefix}"
        )));
    }
    for e in dir.iter() {
        let e = e?;
        let name = e.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.is_dir() {
            walk(&e.to_dir(), &path, depth + 1, out)?;
        } else {
            out.push((path, e.len()));
        }
    }
    Ok(())
}

fn write_file(fs: &Fat, comps: &[String], bytes: &[u8]) -> io::Result<()> {
    let (name, dirs) = comps.split_last().expect("esp_path gives a file name");
    let mut dir = fs.root_dir();
    for d in dirs {
        dir = dir.create_dir(d)?;
    }
    let mut f = dir.create_file(name)?;
    f.truncate()?;
    f.write_all(bytes)?;
    f.flush()
}

/// Splits a path on the ESP into its components (`/` or `\` separated; empty components are
/// ignored; `.` and `..` are refused).
fn esp_path(p: &str) -> Result<Vec<String>> {
    let comps: Vec<String> = p
        .split(['/', '\\'])
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    ensure!(!comps.is_empty(), "empty path on the ESP: {p:?}");
    ensure!(
        comps.iter().all(|c| c != "." && c != ".."),
        "path on the ESP with . or ..: {p:?}"
    );
    Ok(comps)
}

/// Reading through a `File`; writing is an error (fatfs wants `Write` even to read).
struct ReadOnly(fs::File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

#[derive(Default)]
struct TrackState {
    /// `(start, end)` byte ranges written, in order.
    written: Vec<(u64, u64)>,
    /// The first write error (buffered writes are flushed on drop, where errors are lost).
    error: Option<io::Error>,
}

/// A file that records which byte ranges were written to it.
struct Tracker {
    file: fs::File,
    pos: u64,
    state: Rc<RefCell<TrackState>>,
}

impl Read for Tracker {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Tracker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.state.borrow_mut();
        match self.file.write(buf) {
            Ok(n) => {
                let end = self.pos + n as u64;
                match st.written.last_mut() {
                    Some(last) if last.1 == self.pos => last.1 = end,
                    _ => st.written.push((self.pos, end)),
                }
                self.pos = end;
                Ok(n)
            }
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(io::Error::new(e.kind(), e.to_string()));
                }
                Err(e)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Tracker {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = self.file.seek(pos)?;
        Ok(self.pos)
    }
}

/// Written `(start, end)` ranges -> sorted `(offset, length)` ranges aligned to [`WRITE_ALIGN`]
/// (clamped to `limit`), merged when less than [`MERGE_GAP`] apart.
fn coalesce(mut written: Vec<(u64, u64)>, limit: u64) -> Vec<(u64, u64)> {
    written.retain(|r| r.1 > r.0);
    written.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in written {
        let s = s / WRITE_ALIGN * WRITE_ALIGN;
        let e = e
            .div_ceil(WRITE_ALIGN)
            .saturating_mul(WRITE_ALIGN)
            .min(limit);
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(MERGE_GAP) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::BufRead;

    fn qi() -> PathBuf {
        crate::inputs::images::overlay::qemu_img()
            .expect("qemu-img is required (install qemu-utils)")
    }

    fn sha256(p: &Path) -> String {
        hex::encode(Sha256::digest(fs::read(p).unwrap()))
    }

    fn run(qemu_img: &Path, args: &[&str]) {
        qemu(qemu_img, args.iter().map(OsString::from)).unwrap();
    }

    /// `qemu-img` for setting up and inspecting test disks (plain std::process, blocking).
    fn qemu(qemu_img: &Path, args: impl IntoIterator<Item = OsString>) -> Result<Vec<u8>> {
        let args: Vec<OsString> = args.into_iter().collect();
        let out = std::process::Command::new(qemu_img).args(&args).output()?;
        ensure!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Deterministic pseudo-random bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A sparse raw GPT disk of `size` bytes: partition 1 (at 1 MiB, `esp_size` bytes) is an ESP
    /// holding `files` (or, with `esp: false`, a Linux partition), partition 2 a Linux partition
    /// after it whose first `root_data` bytes are noise. Returns partition 2's offset.
    fn make_disk(
        path: &Path,
        size: u64,
        esp_size: u64,
        esp: bool,
        files: &[(&str, &[u8])],
        root_data: usize,
    ) -> u64 {
        let esp_first = 2048u64;
        let esp_last = esp_first + esp_size / 512 - 1;
        let root_first = esp_last + 1;
        let root_last = size / 512 - 34;
        let mut file = fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        file.set_len(size).unwrap();
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(size / 512 - 1).unwrap());
        mbr.overwrite_lba0(&mut file).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .change_partition_count(true)
            .create_from_device(file, None)
            .unwrap();
        let ty = if esp {
            gpt::partition_types::EFI
        } else {
            gpt::partition_types::LINUX_FS
        };
        disk.add_partition_at("ESP", 1, esp_first, esp_last + 1 - esp_first, ty, 0)
            .unwrap();
        disk.add_partition_at(
            "root",
            2,
            root_first,
            root_last + 1 - root_first,
            gpt::partition_types::LINUX_FS,
            0,
        )
        .unwrap();
        let mut file = disk.write().unwrap();
        let slice =
            fscommon::StreamSlice::new(&mut file, esp_first * 512, (esp_last + 1) * 512).unwrap();
        let mut stream = fscommon::BufStream::new(slice);
        fatfs::format_volume(&mut stream, fatfs::FormatVolumeOptions::new()).unwrap();
        stream.seek(SeekFrom::Start(0)).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut stream, fatfs::FsOptions::new()).unwrap();
            for (p, bytes) in files {
                let comps = esp_path(p).unwrap();
                let (name, dirs) = comps.split_last().unwrap();
                let mut dir = fs.root_dir();
                for d in dirs {
                    dir = dir.create_dir(d).unwrap();
                }
                dir.create_file(name).unwrap().write_all(bytes).unwrap();
            }
            fs.unmount().unwrap();
        }
        stream.flush().unwrap();
        drop(stream);
        file.seek(SeekFrom::Start(root_first * 512)).unwrap();
        for (i, block) in (0..root_data).step_by(1 << 20).enumerate() {
            let n = (root_data - block).min(1 << 20);
            file.write_all(&noise(n, 7 + i as u64)).unwrap();
        }
        file.sync_all().unwrap();
        root_first * 512
    }

    /// `dir/base.qcow2` from `raw`, and an empty overlay `dir/run/overlay.qcow2` on it (naming
    /// the base by its absolute path, like bootwatch's overlays, or relative to the overlay).
    fn base_and_overlay(
        qemu_img: &Path,
        dir: &Path,
        raw: &Path,
        relative: bool,
    ) -> (PathBuf, PathBuf) {
        let base = dir.join("base.qcow2");
        let ov = dir.join("run/overlay.qcow2");
        fs::create_dir_all(ov.parent().unwrap()).unwrap();
        run(
            qemu_img,
            &[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                raw.to_str().unwrap(),
                base.to_str().unwrap(),
            ],
        );
        run(
            qemu_img,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                if relative {
                    "../base.qcow2"
                } else {
                    base.to_str().unwrap()
                },
                ov.to_str().unwrap(),
            ],
        );
        (base, ov)
    }

    /// A guest's write: `bytes` at disk `offset` of the qcow2 `image`.
    /// (`qemu-img` wants whole sectors: `offset` must be, and `bytes` is zero-padded to, a
    /// multiple of 512.)
    fn guest_write(qemu_img: &Path, dir: &Path, image: &Path, offset: u64, bytes: &[u8]) {
        let chunk = dir.join("guest-write.raw");
        let mut bytes = bytes.to_vec();
        bytes.resize(bytes.len().next_multiple_of(512), 0);
        fs::write(&chunk, &bytes).unwrap();
        let from = slice_opts(&chunk, None, 0, bytes.len() as u64).unwrap();
        let to = slice_opts(image, Some("qcow2"), offset, bytes.len() as u64).unwrap();
        run(
            qemu_img,
            &[
                "convert",
                "-q",
                "-n",
                "--image-opts",
                &from,
                "--target-image-opts",
                &to,
            ],
        );
    }

    fn read_range(qemu_img: &Path, image: &Path, offset: u64, len: u64) -> Vec<u8> {
        let info: serde_json::Value = serde_json::from_slice(
            &qemu(
                qemu_img,
                [
                    "info".into(),
                    "-U".into(),
                    "--output=json".into(),
                    image.into(),
                ],
            )
            .unwrap(),
        )
        .unwrap();
        let format = info["format"].as_str().unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        qemu(
            qemu_img,
            [
                "convert".into(),
                "-q".into(),
                "-U".into(),
                "-O".into(),
                "raw".into(),
                "--image-opts".into(),
                slice_opts(image, Some(format), offset, len).unwrap().into(),
                out.path().into(),
            ],
        )
        .unwrap();
        fs::read(out.path()).unwrap()
    }

    fn info_json(qemu_img: &Path, image: &Path) -> serde_json::Value {
        let out = qemu(
            qemu_img,
            ["info".into(), "--output=json".into(), image.into()],
        )
        .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    const OLD_GRUB: &[u8] = b"grub from the broken update";

    #[tokio::test]
    async fn replacing_files_in_an_overlay_keeps_the_base_and_the_guests_changes() {
        let qemu_img = qi();
        let tmp = tempfile::tempdir().unwrap();
        // A comma, which qemu-img's option syntax needs escaped.
        let dir = tmp.path().join("vm,1");
        fs::create_dir(&dir).unwrap();
        let dir = dir.as_path();
        let raw = dir.join("disk.raw");
        let root = make_disk(
            &raw,
            16 << 20,
            8 << 20,
            true,
            &[
                ("EFI/debian/grubaa64.efi", OLD_GRUB),
                ("EFI/debian/grub.cfg", b"search.fs_uuid 1234 root\n"),
                ("EFI/BOOT/BOOTAA64.EFI", b"shim"),
            ],
            6 << 20,
        );
        let (base, ov) = base_and_overlay(&qemu_img, dir, &raw, false);
        let base_sha = sha256(&base);

        // The guest's own changes: a write to its root file system, and a file on the ESP.
        let guest_bytes = noise(391 * 512, 99);
        guest_write(&qemu_img, dir, &ov, root + (1 << 20), &guest_bytes);
        let cfg = b"set timeout=5\nsearch.fs_uuid 1234 root\n".repeat(100);
        replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grub.cfg", &cfg)])
            .await
            .unwrap();

        // The repair.
        let new_grub = noise(1_500_000, 3);
        let repair = replace_esp_files(
            &qemu_img,
            &ov,
            &[
                ("/EFI/debian/grubaa64.efi", &new_grub),
                ("EFI\\Recovery\\note.txt", b"restored by bootwatch"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            repair.esp,
            EspLocation {
                offset: 1 << 20,
                size: 8 << 20,
                table: EspTable::Gpt {
                    partition: 1,
                    sector_size: 512
                }
            }
        );
        assert_eq!(
            repair.files,
            ["EFI/debian/grubaa64.efi", "EFI/Recovery/note.txt"]
        );
        assert!(!repair.ranges.is_empty());
        for &(o, l) in &repair.ranges {
            assert!(o >= repair.esp.offset && o + l <= repair.esp.offset + repair.esp.size);
        }

        // Read back through the overlay (and the case-insensitive lookup).
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            new_grub
        );
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "efi/recovery/NOTE.TXT")
                .await
                .unwrap(),
            b"restored by bootwatch"
        );
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "EFI/debian/grub.cfg")
                .await
                .unwrap(),
            cfg
        );
        assert_eq!(
            list_esp(&qemu_img, &ov).await.unwrap(),
            [
                ("EFI/BOOT/BOOTAA64.EFI".to_string(), 4),
                ("EFI/Recovery/note.txt".to_string(), 21),
                ("EFI/debian/grub.cfg".to_string(), cfg.len() as u64),
                ("EFI/debian/grubaa64.efi".to_string(), new_grub.len() as u64),
            ]
        );
        assert_eq!(
            read_range(&qemu_img, &ov, root + (1 << 20), guest_bytes.len() as u64),
            guest_bytes,
            "the guest's earlier write is gone"
        );
        assert_eq!(
            read_range(&qemu_img, &ov, root, 4096),
            noise(4096, 7),
            "the base shows through"
        );

        // The base is untouched and still sees the old file; the overlay is still an overlay.
        assert_eq!(sha256(&base), base_sha);
        assert_eq!(
            read_esp_file(&qemu_img, &base, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            OLD_GRUB
        );
        let info = info_json(&qemu_img, &ov);
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename"], base.to_str().unwrap());
        assert_eq!(info["backing-filename-format"], "qcow2");
        run(&qemu_img, &["check", "-q", ov.to_str().unwrap()]);
        let ov_len = fs::metadata(&ov).unwrap().len();
        let base_len = fs::metadata(&base).unwrap().len();
        assert!(
            ov_len < 3 << 20 && ov_len < base_len / 2,
            "overlay {ov_len} bytes, base {base_len}"
        );
        // No temporary files are left next to the overlay.
        let left: Vec<_> = fs::read_dir(ov.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["overlay.qcow2"]);
    }

    #[tokio::test]
    async fn errors_leave_the_overlay_byte_identical() {
        let qemu_img = qi();
        let dir = tempfile::tempdir().unwrap();

        // A disk without an ESP.
        let raw = dir.path().join("no-esp.raw");
        make_disk(&raw, 8 << 20, 2 << 20, false, &[], 1 << 20);
        let (_, ov) = base_and_overlay(&qemu_img, dir.path(), &raw, false);
        guest_write(&qemu_img, dir.path(), &ov, 5 << 20, b"guest");
        let before = sha256(&ov);
        let e = replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grubaa64.efi", b"x")])
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("no EFI system partition"),
            "{e:#}"
        );
        assert_eq!(sha256(&ov), before);
        let e = list_esp(&qemu_img, &ov).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("no EFI system partition"),
            "{e:#}"
        );

        // A file larger than the ESP, a bad path, a file where a directory should be.
        let dir2 = dir.path().join("2");
        fs::create_dir(&dir2).unwrap();
        let raw = dir2.join("disk.raw");
        make_disk(
            &raw,
            8 << 20,
            2 << 20,
            true,
            &[("EFI/debian/grubaa64.efi", OLD_GRUB)],
            0,
        );
        let (base, ov) = base_and_overlay(&qemu_img, &dir2, &raw, true);
        replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grub.cfg", b"cfg")])
            .await
            .unwrap();
        assert_eq!(
            info_json(&qemu_img, &ov)["backing-filename"],
            "../base.qcow2"
        );
        let before = sha256(&ov);
        let base_before = sha256(&base);
        let huge = vec![1u8; 3 << 20];
        let e = replace_esp_files(
            &qemu_img,
            &ov,
            &[
                ("EFI/debian/grubaa64.efi", b"fits"),
                ("EFI/debian/huge.efi", &huge),
            ],
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("huge.efi"), "{e:#}");
        let e = replace_esp_files(&qemu_img, &ov, &[("EFI/../grubaa64.efi", b"x")])
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains(".."), "{e:#}");
        let e = replace_esp_files(&qemu_img, &ov, &[("EFI/a.efi", b"1"), ("efi/A.EFI", b"2")])
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("twice"), "{e:#}");
        // Nothing to do: nothing is written.
        let r = replace_esp_files(&qemu_img, &ov, &[]).await.unwrap();
        assert_eq!(r.bytes_written, 0);
        let e = replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grubaa64.efi/x", b"x")])
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("grubaa64.efi/x"), "{e:#}");
        // Not an overlay at all.
        let e = replace_esp_files(&qemu_img, &raw, &[("a", b"x")])
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("not a qcow2"), "{e:#}");
        assert_eq!(sha256(&ov), before);
        assert_eq!(sha256(&base), base_before);
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            OLD_GRUB
        );
        let left: Vec<_> = fs::read_dir(ov.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["overlay.qcow2"]);
        let e = read_esp_file(&qemu_img, &ov, "EFI/debian/missing.efi")
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("missing.efi"), "{e:#}");
    }

    #[tokio::test]
    async fn an_overlay_in_use_is_refused() {
        let qemu_img = qi();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        make_disk(
            &raw,
            8 << 20,
            2 << 20,
            true,
            &[("EFI/debian/grubaa64.efi", OLD_GRUB)],
            0,
        );
        let (_, ov) = base_and_overlay(&qemu_img, dir.path(), &raw, false);
        let before = sha256(&ov);
        // qemu-io holds the overlay open for writing, as a running QEMU does. It has the lock
        // once it complains (on unbuffered stderr) about its first command, which does not
        // exist; then it sleeps.
        struct Holder(std::process::Child);
        impl Drop for Holder {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut holder = Holder(
            std::process::Command::new(qemu_img.with_file_name("qemu-io"))
                .args(["-f", "qcow2", "-c", "opened", "-c", "sleep 60000"])
                .arg(&ov)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("qemu-io (qemu-utils)"),
        );
        let mut line = String::new();
        io::BufReader::new(holder.0.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("\"opened\" not found"), "qemu-io: {line:?}");
        let e = replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grubaa64.efi", b"new")])
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("lock"), "{e:#}");
        assert_eq!(sha256(&ov), before);
        // Reading is allowed (it sees whatever is on the disk at that moment).
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            OLD_GRUB
        );
        drop(holder);
        replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grubaa64.efi", b"new")])
            .await
            .unwrap();
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            b"new"
        );
    }

    #[tokio::test]
    async fn reads_raw_disks_in_place_and_the_fixtures_superfloppy() {
        let qemu_img = qi();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        make_disk(
            &raw,
            8 << 20,
            4 << 20,
            true,
            &[("EFI/debian/grubaa64.efi", OLD_GRUB)],
            0,
        );
        assert_eq!(
            read_esp_file(&qemu_img, &raw, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            OLD_GRUB
        );
        assert_eq!(
            list_esp(&qemu_img, &raw).await.unwrap(),
            [("EFI/debian/grubaa64.efi".to_string(), OLD_GRUB.len() as u64)]
        );

        let img = dir.path().join("hello.img");
        let efi = crate::inputs::fixtures::Fixture::Hello.efi_app();
        crate::inputs::fixtures::write_fat_image(&img, &efi).unwrap();
        assert_eq!(
            locate_esp(&qemu_img, &img).await.unwrap(),
            EspLocation {
                offset: 0,
                size: 1 << 20,
                table: EspTable::WholeDisk
            }
        );
        assert_eq!(
            read_esp_file(&qemu_img, &img, "EFI/BOOT/BOOTAA64.EFI")
                .await
                .unwrap(),
            efi
        );
    }

    #[test]
    fn finds_an_mbr_esp_and_refuses_no_table() {
        let mut s0 = vec![0u8; 512];
        s0[510] = 0x55;
        s0[511] = 0xAA;
        let e = &mut s0[446 + 16..446 + 32];
        e[4] = 0xEF;
        e[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let win = |s0: Vec<u8>| Window {
            len: 8 << 20,
            pos: 0,
            pieces: vec![(0, s0)],
        };
        assert_eq!(
            find_esp(win(s0.clone())).unwrap(),
            EspLocation {
                offset: 1 << 20,
                size: 2 << 20,
                table: EspTable::Mbr { index: 1 }
            }
        );
        s0[446 + 16 + 4] = 0x83;
        assert!(
            format!("{:#}", find_esp(win(s0)).unwrap_err()).contains("no EFI system partition")
        );
        let e = find_esp(win(vec![0; 512])).unwrap_err();
        assert!(format!("{e:#}").contains("no partition table"), "{e:#}");
    }

    #[test]
    fn paths_and_ranges() {
        assert_eq!(
            esp_path("\\EFI\\debian//grubaa64.efi").unwrap(),
            ["EFI", "debian", "grubaa64.efi"]
        );
        assert!(esp_path("/").is_err());
        assert!(esp_path("EFI/./x").is_err());
        assert_eq!(
            coalesce(
                vec![(5000, 5100), (0, 512), (600, 700), (3 << 20, 3 << 20 | 1)],
                1 << 30
            ),
            [(0, 8192), (3 << 20, 4096)]
        );
        assert_eq!(coalesce(vec![(100, 100)], 1 << 20), []);
        assert_eq!(coalesce(vec![(1000, 1100)], 1024), [(0, 1024)]);
        assert_eq!(
            slice_opts(Path::new("/a,b/c"), Some("qcow2"), 1, 2).unwrap(),
            "driver=raw,offset=1,size=2,file.driver=qcow2,file.file.driver=file,file.file.filename=/a,,b/c"
        );
    }

    /// A disk like a real cloud image's: 4 GiB virtual, a 512 MiB FAT32 ESP, data in the base
    /// and in the overlay. Prints how long the repair takes.
    #[tokio::test]
    async fn repair_of_a_4_gib_disk_is_quick() {
        let qemu_img = qi();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let grub = noise(4 << 20, 1);
        let root = make_disk(
            &raw,
            4 << 30,
            512 << 20,
            true,
            &[
                ("EFI/debian/grubaa64.efi", &grub),
                ("EFI/debian/shimaa64.efi", &noise(1 << 20, 2)),
                ("EFI/BOOT/BOOTAA64.EFI", &noise(1 << 20, 2)),
            ],
            64 << 20,
        );
        let (base, ov) = base_and_overlay(&qemu_img, dir.path(), &raw, false);
        guest_write(
            &qemu_img,
            dir.path(),
            &ov,
            root + (256 << 20),
            &noise(32 << 20, 5),
        );
        let base_sha = sha256(&base);
        let ov_before = fs::metadata(&ov).unwrap().len();
        let new_grub = noise(4 << 20, 9);
        let t = std::time::Instant::now();
        let repair = replace_esp_files(&qemu_img, &ov, &[("EFI/debian/grubaa64.efi", &new_grub)])
            .await
            .unwrap();
        let took = t.elapsed();
        let ov_after = fs::metadata(&ov).unwrap().len();
        eprintln!(
            "4 GiB disk: replaced a 4 MiB grubaa64.efi in {:.0} ms; {} ranges, {} bytes written; \
             overlay {} -> {} bytes",
            took.as_secs_f64() * 1e3,
            repair.ranges.len(),
            repair.bytes_written,
            ov_before,
            ov_after
        );
        assert_eq!(
            read_esp_file(&qemu_img, &ov, "EFI/debian/grubaa64.efi")
                .await
                .unwrap(),
            new_grub
        );
        assert_eq!(sha256(&base), base_sha);
        assert!(
            ov_after < ov_before + (8 << 20),
            "{ov_before} -> {ov_after}"
        );
    }
}
