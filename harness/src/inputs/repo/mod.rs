//! Local apt repositories for hermetic in-guest upgrades: build one from `.deb` files, serve it
//! to the guest over HTTP, and make the two updates the upgrade scenarios install.
//!
//! # Layout: a flat repository
//!
//! [`build_repo`] writes a *flat* repository (Debian wiki "DebianRepository/Format", "Flat
//! Repository Format"): everything sits in one directory, the `.deb` files under their canonical
//! names `<package>_<version without epoch>_<arch>.deb`, next to `Packages`, `Packages.gz` and a
//! `Release` file listing both indexes with their size, MD5 and SHA256. The guest's apt reads it
//! through one sources line whose "suite" is `./` (see [`Repo::sources_line`]):
//!
//! ```text
//! deb [trusted=yes] http://10.0.2.2:PORT/ ./
//! ```
//!
//! The `Packages` stanzas are generated here from each `.deb`'s own `control` file (every field
//! as the package has it, then `Filename`, `Size`, `MD5sum`, `SHA256`), like
//! `dpkg-scanpackages` would, without needing dpkg on the host.
//!
//! # How the guest trusts it
//!
//! The repository is not signed. The guest trusts it only through the `[trusted=yes]` option of
//! that one sources line (apt's `sources.list(5)`): apt then skips the signature check for this
//! source only and still checks every downloaded index and `.deb` against the `Release` file's
//! hashes and the `Packages` hashes. Nothing on the host is changed (no keys, no apt
//! configuration): the line is written into the guest by whoever drives the upgrade. The host
//! is `10.0.2.2` from a guest on QEMU user networking (`-netdev user`, no forwards needed), so
//! [`serve`] binds only `127.0.0.1`.
//!
//! For a hermetic upgrade the guest's apt should see *only* this source (as
//! [`crate::engine::runner::upgrade_command`] arranges with `Dir::Etc::SourceList` and
//! `Dir::Etc::SourceParts`), because the guest's own Debian sources are not
//! reachable in CI. Dependencies are then satisfied by what the guest has installed plus this
//! repository, which is why [`good_update`] puts into the repository every package the update
//! newly needs (see there).
//!
//! # The two updates
//!
//! * [`good_update`]: a real, newer Debian boot loader (GRUB 2.12 from `bookworm-backports`)
//!   for a Debian 12 guest, downloaded from the archive and verified; a healthy guest is
//!   expected to reach GRUB after it.
//! * [`bad_update`]: a `shim-signed` built here whose `postinst` puts an EFI application that
//!   crashes at its entry point ([`crate::inputs::fixtures::Fixture::Crash`]) where the firmware loads
//!   the boot loader from; the next boot ends in edk2's `Synchronous Exception` before GRUB
//!   (with Secure Boot off: a firmware enforcing Secure Boot would refuse the unsigned
//!   application instead).
//!
//! # Trust in the archive
//!
//! The good update's packages come through [`crate::inputs::debian::Archive`]: the suites'
//! Release files are OpenPGP-verified against the archive keyring, their indexes checked against
//! them and every `.deb` against its index (see [`crate::inputs::debian`]).

pub mod rpm;
mod serve;
#[cfg(test)]
mod testing;
mod updates;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, ensure};
use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::inputs::debian::deb::read_control;

pub use serve::{RequestRecord, Served, serve};
pub use updates::{archive_update, archive_update_from, bad_update, good_update, good_update_from};

pub const GUEST_HOST_ADDR: &str = "10.0.2.2";
/// Debian architecture of the guests.
pub const ARCH: &str = "arm64";
/// Suite the good update's packages come from.
pub const GOOD_UPDATE_SUITE: &str = "bookworm-backports";
/// Suite of the guest the good update is made for.
pub const GOOD_UPDATE_BASE_SUITE: &str = "bookworm";
/// The packages the good update upgrades (GRUB's EFI packages for arm64, from one source
/// package, which depend on each other's exact version). Whatever else they need is added by
/// [`good_update`].
pub const GOOD_UPDATE_PACKAGES: &[&str] = &[
    "grub-efi-arm64-signed",
    "grub-efi-arm64",
    "grub-efi-arm64-bin",
    "grub-common",
    "grub2-common",
];
/// Which Debian archive an update's suite is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveKind {
    /// The archive mirror (`--mirror`, `BOOTWATCH_MIRROR`, the host's apt sources).
    #[default]
    Debian,
    /// Debian's security archive (`<release>-security` suites).
    Security,
}

/// Newer packages from Debian's archive for a guest: a local image's good update
/// (`[local.good_update]` in `guest-images/local.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveUpdate {
    #[serde(default)]
    pub archive: ArchiveKind,
    /// The suite the packages come from, e.g. `bookworm-backports` or `bullseye-security`.
    pub suite: String,
    /// The packages to upgrade; what they need is added.
    pub packages: Vec<String>,
}

impl ArchiveUpdate {
    /// Debian 12's good update: GRUB 2.12 from bookworm-backports.
    pub fn bookworm_grub() -> ArchiveUpdate {
        ArchiveUpdate {
            archive: ArchiveKind::Debian,
            suite: GOOD_UPDATE_SUITE.into(),
            packages: GOOD_UPDATE_PACKAGES.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Names that end up in URLs and the planner: suite and package names as Debian spells
    /// them. A problem comes with the field it is about.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        let name = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        };
        if !name(&self.suite) {
            return Err(("suite", format!("bad suite {:?}", self.suite)));
        }
        if self.packages.is_empty() {
            return Err(("packages", "an update needs at least one package".into()));
        }
        if let Some(p) = self.packages.iter().find(|p| !name(p)) {
            return Err(("packages", format!("bad package name {p:?}")));
        }
        Ok(())
    }
}

/// `Suite`/`Codename` of the good update's repository.
pub const GOOD_REPO_SUITE: &str = "bootwatch-good";
/// `Suite`/`Codename` of the bad update's repository.
pub const BAD_REPO_SUITE: &str = "bootwatch-bad";
/// Appended to the installed `shim-signed` version to make the bad package's version.
pub const BAD_VERSION_SUFFIX: &str = "+bootwatch.bad1";
/// The bad package's name.
pub const BAD_PACKAGE: &str = "shim-signed";
/// Where the bad package installs the crashing EFI application.
pub const CRASH_APP_PATH: &str = "/usr/lib/bootwatch/crash-bootaa64.efi";
/// The files the bad package's `postinst` replaces with the crashing application: the boot
/// loader Debian's boot entry points at, and the removable-media fallback path.
pub const ESP_TARGETS: &[&str] = &[
    "/boot/efi/EFI/debian/shimaa64.efi",
    "/boot/efi/EFI/BOOT/BOOTAA64.EFI",
];
/// Suffix of the copies the bad package's `postinst` keeps of the files it replaces.
pub const SAVED_SUFFIX: &str = ".bootwatch-saved";

/// Fields of a `.deb`'s control file that the index writes itself.
const INDEX_OWN_FIELDS: &[&str] = &[
    "Filename",
    "Size",
    "MD5sum",
    "SHA1",
    "SHA256",
    "SHA512",
    "Description-md5",
];

// ---------------------------------------------------------------------------------------------
// Repositories
// ---------------------------------------------------------------------------------------------

/// A flat apt repository written by [`build_repo`].
#[derive(Debug, Clone, Serialize)]
pub struct Repo {
    /// The repository's directory (serve it with [`serve`]).
    pub dir: PathBuf,
    /// `Suite` and `Codename` of its `Release` file.
    pub suite: String,
    /// Its packages, sorted by name and version.
    pub packages: Vec<RepoPackage>,
}

/// One package of a [`Repo`], as its `Packages` stanza lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoPackage {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// File name in the repository directory (`Filename`, relative to the repository's URL).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub md5: String,
    /// Where the package came from: the archive suite it was downloaded from, `bootwatch` for
    /// packages built here, `None` when [`build_repo`] was simply given the file.
    pub origin: Option<String>,
}

impl Repo {
    /// The guest's apt sources line for this repository served on the host's `port`:
    /// `deb [trusted=yes] http://10.0.2.2:PORT/ ./`.
    pub fn sources_line(&self, port: u16) -> String {
        self.sources_line_at(&format!("http://{GUEST_HOST_ADDR}:{port}/"))
    }

    /// The apt sources line for this repository at `base_url` (the URL of its directory).
    pub fn sources_line_at(&self, base_url: &str) -> String {
        format!("deb [trusted=yes] {}/ ./", base_url.trim_end_matches('/'))
    }

    /// The package called `name`, if the repository has it.
    pub fn package(&self, name: &str) -> Option<&RepoPackage> {
        self.packages.iter().find(|p| p.package == name)
    }
}

/// Write a flat apt repository into `dir` (created if missing) holding `debs`.
///
/// Each `.deb` is placed in `dir` under its canonical name `<package>_<version without
/// epoch>_<arch>.deb` (hard-linked when possible, else copied; left alone if it is already
/// that file), and described in `Packages`/`Packages.gz` by a stanza made from its control
/// file. `Release` names `suite` as `Suite` and `Codename` and lists both indexes with size,
/// MD5 and SHA256. The index files are replaced atomically; other files in `dir` are left
/// alone and not indexed. Two `.deb`s with the same package, version and architecture are an
/// error.
pub fn build_repo(dir: &Path, debs: &[PathBuf], suite: &str) -> Result<Repo> {
    ensure!(
        !suite.is_empty()
            && suite
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b)),
        "unusable repository suite name {suite:?}"
    );
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut stanzas: BTreeMap<(String, String, String), (String, RepoPackage)> = BTreeMap::new();
    for deb in debs {
        let control = read_control(deb)?;
        // deb822-lossless keeps every field's text as the package has it (continuation lines
        // and their indentation included), so the index repeats it verbatim.
        let mut stanza = deb822_lossless::Deb822::from_str(&control)
            .map_err(|e| anyhow!("{}: unreadable control file: {e}", deb.display()))?
            .paragraphs()
            .next()
            .ok_or_else(|| anyhow!("{}: empty control file", deb.display()))?;
        let get = |key: &str| {
            stanza
                .get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow!("{}: control file has no {key} field", deb.display()))
        };
        let (package, version, architecture) =
            (get("Package")?, get("Version")?, get("Architecture")?);
        let filename = deb_file_name(&package, &version, &architecture)
            .with_context(|| format!("{}: unusable control fields", deb.display()))?;
        let key = (package.clone(), version.clone(), architecture.clone());
        ensure!(
            !stanzas.contains_key(&key),
            "two packages are {package} {version} {architecture} (the second is {})",
            deb.display()
        );
        let dest = dir.join(&filename);
        place_file(deb, &dest)?;
        let digest = hash_file(&dest)?;
        let own: Vec<String> = stanza
            .keys()
            .filter(|k| INDEX_OWN_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k)))
            .collect();
        for k in own {
            stanza.remove(&k);
        }
        let mut text = stanza.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "Filename: {filename}\nSize: {}\nMD5sum: {}\nSHA256: {}\n",
            digest.size, digest.md5, digest.sha256
        ));
        let entry = RepoPackage {
            package,
            version,
            architecture,
            filename,
            size: digest.size,
            sha256: digest.sha256,
            md5: digest.md5,
            origin: None,
        };
        stanzas.insert(key, (text, entry));
    }

    let packages_text = stanzas
        .values()
        .map(|(text, _)| text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let packages_gz = gzip(packages_text.as_bytes())?;
    let mut archs: BTreeSet<&str> = stanzas
        .values()
        .map(|(_, p)| p.architecture.as_str())
        .filter(|a| *a != "all")
        .collect();
    if archs.is_empty() {
        archs.insert("all");
    }
    let indexes: [(&str, &[u8]); 2] = [
        ("Packages", packages_text.as_bytes()),
        ("Packages.gz", &packages_gz),
    ];
    let mut release = format!(
        "Origin: bootwatch\nLabel: bootwatch\nSuite: {suite}\nCodename: {suite}\nDate: {}\n\
         Architectures: {}\nDescription: local repository made by bootwatch for a test upgrade\n",
        jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S UTC"),
        archs.into_iter().collect::<Vec<_>>().join(" ")
    );
    release.push_str("MD5Sum:\n");
    for (name, data) in &indexes {
        release.push_str(&format!(
            " {} {:>16} {name}\n",
            hex::encode(Md5::digest(data)),
            data.len()
        ));
    }
    release.push_str("SHA256:\n");
    for (name, data) in &indexes {
        release.push_str(&format!(
            " {} {:>16} {name}\n",
            hex::encode(Sha256::digest(data)),
            data.len()
        ));
    }
    // Indexes first, Release last: a reader never sees a Release naming missing indexes.
    for (name, data) in indexes {
        write_atomic(&dir.join(name), data)?;
    }
    write_atomic(&dir.join("Release"), release.as_bytes())?;
    Ok(Repo {
        dir: dir.to_path_buf(),
        suite: suite.to_owned(),
        packages: stanzas.into_values().map(|(_, p)| p).collect(),
    })
}

/// `<package>_<version without epoch>_<arch>.deb`, refusing names that could leave the
/// directory or confuse a URL.
fn deb_file_name(package: &str, version: &str, arch: &str) -> Result<String> {
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    let name = format!("{package}_{upstream}_{arch}.deb");
    ensure!(
        !package.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b)),
        "unusable package name, version or architecture in {name:?}"
    );
    Ok(name)
}

/// Put `src` at `dest`: nothing if they are the same file, else a hard link, else a copy
/// (through a temporary file and a rename, so `dest` is never half written).
fn place_file(src: &Path, dest: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (src.canonicalize(), dest.canonicalize())
        && a == b
    {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".place-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?
        .into_temp_path();
    fs::remove_file(&tmp).ok();
    if fs::hard_link(src, &tmp).is_err() {
        fs::copy(src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    }
    tmp.persist(dest)
        .with_context(|| format!("moving a copy of {} to {}", src.display(), dest.display()))?;
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Ok(crate::sys::fsx::write_atomic(path, data)?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // GzEncoder writes a zero mtime and no file name: the same input gives the same bytes.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

struct FileDigest {
    size: u64,
    sha256: String,
    md5: String,
}

fn hash_file(path: &Path) -> Result<FileDigest> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut sha, mut md5, mut size) = (Sha256::new(), Md5::new(), 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        size,
        sha256: hex::encode(sha.finalize()),
        md5: hex::encode(md5.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::testing::{CONTROL_A, CONTROL_B, small_deb};
    use super::*;

    // -----------------------------------------------------------------------------------------
    // repositories
    // -----------------------------------------------------------------------------------------

    #[test]
    fn repo_index_lists_the_debs_with_their_sizes_and_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let a = small_deb(tmp.path(), CONTROL_A, &[("usr/share/bwtest/a", b"aaa\n")]);
        let b = small_deb(
            tmp.path(),
            CONTROL_B,
            &[("usr/share/bwtest/b", &vec![7u8; 5000])],
        );
        let dir = tmp.path().join("repo");
        let repo = build_repo(&dir, &[a.clone(), b.clone()], "bwtest").unwrap();
        assert_eq!(repo.suite, "bwtest");
        assert_eq!(repo.dir, dir);
        assert_eq!(
            repo.sources_line(8123),
            "deb [trusted=yes] http://10.0.2.2:8123/ ./"
        );

        let packages = fs::read_to_string(dir.join("Packages")).unwrap();
        let mut gz = String::new();
        flate2::read::GzDecoder::new(&fs::read(dir.join("Packages.gz")).unwrap()[..])
            .read_to_string(&mut gz)
            .unwrap();
        assert_eq!(gz, packages);
        let stanzas: Vec<deb822_fast::Paragraph> = packages
            .parse::<deb822_fast::Deb822>()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(stanzas.len(), 2);
        for (stanza, src, control) in [(&stanzas[0], &a, CONTROL_A), (&stanzas[1], &b, CONTROL_B)] {
            // Every control field is carried over.
            let fields: deb822_fast::Paragraph = control.parse().unwrap();
            for (k, v) in fields.iter() {
                assert_eq!(stanza.get(k), Some(v), "{k}");
            }
            let filename = stanza.get("Filename").unwrap();
            let file = dir.join(filename);
            let bytes = fs::read(&file).unwrap();
            assert_eq!(bytes, fs::read(src).unwrap());
            assert_eq!(stanza.get("Size").unwrap(), bytes.len().to_string());
            assert_eq!(
                stanza.get("SHA256").unwrap(),
                hex::encode(Sha256::digest(&bytes))
            );
            assert_eq!(
                stanza.get("MD5sum").unwrap(),
                hex::encode(Md5::digest(&bytes))
            );
            let listed = repo.package(stanza.get("Package").unwrap()).unwrap();
            assert_eq!(listed.filename, filename);
            assert_eq!(listed.size, bytes.len() as u64);
            assert_eq!(listed.sha256, stanza.get("SHA256").unwrap());
        }
        assert_eq!(stanzas[0].get("Filename"), Some("bwtest-a_1.2-3_arm64.deb"));
        // The epoch is not part of the file name.
        assert_eq!(stanzas[1].get("Filename"), Some("bwtest-b_0.9~rc1_all.deb"));
        // Verbatim, continuation lines included.
        assert!(
            packages
                .contains("Description: first test package\n Two lines\n .\n of description.\n"),
            "{packages}"
        );

        let release = fs::read_to_string(dir.join("Release")).unwrap();
        let parsed = crate::inputs::debian::release::Release::parse(
            &release,
            "Release",
            Vec::new(),
            jiff::Timestamp::now(),
        )
        .unwrap();
        for name in ["Packages", "Packages.gz"] {
            let data = fs::read(dir.join(name)).unwrap();
            assert_eq!(
                parsed.sha256[name],
                (hex::encode(Sha256::digest(&data)), data.len() as u64),
                "{name}"
            );
            assert!(release.contains(&format!(" {} ", hex::encode(Md5::digest(&data)))));
        }
        let fields: deb822_fast::Paragraph = release.parse().unwrap();
        assert_eq!(fields.get("Suite"), Some("bwtest"));
        assert_eq!(fields.get("Architectures"), Some("arm64"));
        assert!(fields.get("Date").unwrap().ends_with(" UTC"));

        // Rebuilding in place from the repository's own files gives the same index.
        let again = build_repo(
            &dir,
            &[
                dir.join("bwtest-b_0.9~rc1_all.deb"),
                dir.join("bwtest-a_1.2-3_arm64.deb"),
            ],
            "bwtest",
        )
        .unwrap();
        assert_eq!(again.packages, repo.packages);
        assert_eq!(fs::read_to_string(dir.join("Packages")).unwrap(), packages);

        let err = build_repo(&dir, &[a.clone(), a], "bwtest").unwrap_err();
        assert!(
            format!("{err:#}").contains("two packages are bwtest-a"),
            "{err:#}"
        );
        let err = build_repo(&dir, &[tmp.path().join("missing.deb")], "bwtest").unwrap_err();
        assert!(format!("{err:#}").contains("missing.deb"), "{err:#}");
        assert!(build_repo(&dir, &[], "bad suite").is_err());
    }
}
