//! Reading and writing `.deb` files (`ar` archives of `debian-binary`, `control.tar*` and
//! `data.tar*`), with the `ar`, `tar`, `flate2` and `liblzma` crates.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path};

use anyhow::{Context, Result, bail, ensure};
use md5::{Digest, Md5};

/// Modification time of every member of the packages built here (2026-01-01T00:00:00Z), so
/// the same inputs make the same bytes.
pub const DEB_MTIME: u64 = 1_767_225_600;

/// Hand the decompressed tar stream of the member `PREFIX`, `PREFIX.gz` or `PREFIX.xz`
/// (`prefix` is `control.tar` or `data.tar`) of the package `deb` to `read`.
pub fn with_tar_member<T>(
    deb: &Path,
    prefix: &str,
    read: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<T> {
    let file = fs::File::open(deb).with_context(|| format!("opening {}", deb.display()))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    let mut members = Vec::new();
    while let Some(member) = archive.next_entry() {
        let member = member.with_context(|| format!("reading the ar archive {}", deb.display()))?;
        let name = String::from_utf8_lossy(member.header().identifier())
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if let Some(compression) = name.strip_prefix(prefix) {
            let mut member = member;
            let what = format!("{} member {name}", deb.display());
            return match compression {
                "" => read(&mut member),
                ".gz" => read(&mut flate2::read::GzDecoder::new(member)),
                ".xz" => read(&mut liblzma::read::XzDecoder::new(member)),
                _ => bail!(
                    "{what}: unsupported compression (only {prefix}, {prefix}.gz and \
                     {prefix}.xz are supported)"
                ),
            }
            .with_context(|| format!("reading {what}"));
        }
        members.push(name);
    }
    bail!(
        "{}: no {prefix}* member, so not a Debian package (members: {})",
        deb.display(),
        members.join(", ")
    )
}

/// The text of a `.deb`'s `control` file.
pub fn read_control(deb: &Path) -> Result<String> {
    with_tar_member(deb, "control.tar", |reader| {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let is_control = path
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .map(|c| c.as_os_str().to_owned())
                .eq([std::ffi::OsString::from("control")]);
            if is_control && entry.header().entry_type().is_file() {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .context("reading control (not UTF-8?)")?;
                return Ok(text);
            }
        }
        bail!("no control file")
    })
}

/// A file inside a package built by [`write_deb`].
#[derive(Clone, Copy)]
pub struct DebMember<'a> {
    /// Path without the leading `./` (`usr/lib/x`, or `postinst` in the control archive).
    pub path: &'a str,
    pub content: &'a [u8],
    pub mode: u32,
}

/// Write a binary package: `debian-binary`, `control.tar.gz` (`control`, `md5sums` and the
/// maintainer scripts), `data.tar.gz` (the files, with their parent directories), all owned by
/// root and dated [`DEB_MTIME`]. Written to a temporary file and renamed, so `dest` is never
/// half written.
pub fn write_deb(
    dest: &Path,
    control: &str,
    scripts: &[DebMember<'_>],
    files: &[DebMember<'_>],
) -> Result<()> {
    let mut md5sums = String::new();
    for f in files {
        md5sums.push_str(&format!(
            "{}  {}\n",
            hex::encode(Md5::digest(f.content)),
            f.path
        ));
    }
    let mut control_members = vec![
        DebMember {
            path: "control",
            content: control.as_bytes(),
            mode: 0o644,
        },
        DebMember {
            path: "md5sums",
            content: md5sums.as_bytes(),
            mode: 0o644,
        },
    ];
    control_members.extend(scripts.iter().copied());
    let control_tar = tar_gz(&control_members)?;
    let data_tar = tar_gz(files)?;

    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".deb-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let mut ar = ar::Builder::new(io::BufWriter::new(tmp.as_file()));
        for (name, data) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar.gz", &control_tar),
            ("data.tar.gz", &data_tar),
        ] {
            let mut header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            header.set_mode(0o100644);
            header.set_mtime(DEB_MTIME);
            ar.append(&header, data)
                .with_context(|| format!("writing {}", dest.display()))?;
        }
        ar.into_inner()?
            .flush()
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(dest)
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// A gzip-compressed tar of `members` as dpkg wants it: `./` first, every parent directory
/// before its contents, names starting with `./`.
fn tar_gz(members: &[DebMember<'_>]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    let mut dirs = BTreeSet::new();
    for m in members {
        let mut parent = Path::new(m.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    // Names are written as Debian's own packages have them (`./usr/lib/...`); the tar crate's
    // path setters would drop the leading `./`.
    let header = |name: &str, kind: tar::EntryType, mode: u32, size: u64| -> Result<tar::Header> {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_old_mut().name;
        ensure!(
            name.len() < field.len(),
            "path too long for a tar header: {name}"
        );
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(DEB_MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_cksum();
        Ok(h)
    };
    tar.append(
        &header("./", tar::EntryType::Directory, 0o755, 0)?,
        io::empty(),
    )?;
    for d in &dirs {
        let h = header(
            &format!("./{}/", d.display()),
            tar::EntryType::Directory,
            0o755,
            0,
        )?;
        tar.append(&h, io::empty())?;
    }
    for m in members {
        let h = header(
            &format!("./{}", m.path),
            tar::EntryType::Regular,
            m.mode,
            m.content.len() as u64,
        )?;
        tar.append(&h, m.content)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_package_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let deb = tmp.path().join("p.deb");
        let control = "Package: p\nVersion: 1\nArchitecture: all\nDescription: d\n";
        write_deb(
            &deb,
            control,
            &[],
            &[DebMember {
                path: "usr/share/p/f",
                content: b"content",
                mode: 0o644,
            }],
        )
        .unwrap();
        assert_eq!(read_control(&deb).unwrap(), control);
        let names = with_tar_member(&deb, "data.tar", |r| {
            let mut names = Vec::new();
            for e in tar::Archive::new(r).entries()? {
                names.push(String::from_utf8(e?.path_bytes().to_vec())?);
            }
            Ok(names)
        })
        .unwrap();
        assert_eq!(
            names,
            [
                "./",
                "./usr/",
                "./usr/share/",
                "./usr/share/p/",
                "./usr/share/p/f"
            ]
        );
        let err = format!(
            "{:#}",
            with_tar_member(&deb, "nothing.tar", |_| Ok(())).unwrap_err()
        );
        assert!(
            err.contains("no nothing.tar* member") && err.contains("data.tar.gz"),
            "{err}"
        );
        fs::write(&deb, b"not an ar archive").unwrap();
        assert!(read_control(&deb).is_err());
    }
}
