//! RPM packages and dnf repositories for the RPM-managed boot chain (`boot_chain = "rpm"` in a
//! local recipe): the EFI binaries on the ESP packaged under the names EL distributions use
//! (`shim-aa64`, `grub2-efi-aa64`), built on the host with `rpmbuild` (Debian's `rpm` package,
//! any host architecture: the packages hold files only, no code is compiled) and served to the
//! guest's dnf as a repository made by `createrepo_c` (Debian's `createrepo-c`).
//!
//! The payload is Debian's own signed binaries in Debian's ESP layout (`EFI/debian/` and the
//! removable path `EFI/BOOT/`, see [`crate::inputs::images::debian_build`]); what differs from a
//! Debian guest is who owns the files: rpm's database, and `dnf upgrade` replaces them, as on an
//! EL guest. The files are installed under `/boot/efi` with mode 0700 and directories 0700, as
//! the EL packages do (a FAT file system mounted with `umask=0077` accepts nothing else).
//!
//! The packages are reproducible: every timestamp is [`crate::inputs::debian::deb::DEB_MTIME`]
//! (`SOURCE_DATE_EPOCH`), the build host is named `bootwatch`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, ensure};

use crate::inputs::debian::deb::{DEB_MTIME, with_tar_member};
use crate::sys::proc::Tool;

/// The RPM that owns shim (and its helpers, and the removable-path copy) on the ESP.
pub const SHIM_RPM: &str = "shim-aa64";
/// The RPM that owns GRUB's EFI binary on the ESP.
pub const GRUB_RPM: &str = "grub2-efi-aa64";
/// RPM architecture of the guests.
pub const RPM_ARCH: &str = "aarch64";
/// Host programs needed, with the Debian package that has each.
pub const HOST_TOOLS: &[(&str, &str)] = &[("rpmbuild", "rpm"), ("createrepo_c", "createrepo-c")];
/// Where the ESP is mounted in the guest.
pub const ESP_MOUNT: &str = "/boot/efi";
/// What the bad update's package release gets appended (it must sort after the image's own).
pub const BAD_RELEASE_SUFFIX: &str = ".bootwatch.bad1";

/// Fails with the install command when the host lacks `rpmbuild`, `createrepo_c` or `rpm`.
pub fn preflight() -> Result<()> {
    for (tool, package) in HOST_TOOLS.iter().chain(&[("rpm", "rpm")]) {
        which::which(tool).map_err(|_| {
            anyhow!(
                "{tool} not found: RPM-owned boot chains need it on the host \
                 (apt-get install --no-install-recommends {package})"
            )
        })?;
    }
    Ok(())
}

/// One file of a package, by its path on the ESP (`EFI/debian/shimaa64.efi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspFile {
    pub path: String,
    pub content: Vec<u8>,
}

/// An RPM to build: files on the ESP, no scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmPackage {
    pub name: String,
    pub version: String,
    pub release: String,
    pub summary: String,
    pub description: String,
    pub files: Vec<EspFile>,
}

impl RpmPackage {
    /// `NAME-VERSION-RELEASE.aarch64.rpm`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}.{RPM_ARCH}.rpm",
            self.name, self.version, self.release
        )
    }

    /// `VERSION-RELEASE`, the way the catalog's `rpm -qa` query prints it after the epoch.
    pub fn evr(&self) -> String {
        format!("0:{}-{}.{RPM_ARCH}", self.version, self.release)
    }
}

/// Which package owns an ESP file of Debian's layout: GRUB's binary belongs to
/// [`GRUB_RPM`], everything else (shim, MokManager, fallback, the CSV, the removable-path shim)
/// to [`SHIM_RPM`], as on EL; GRUB's `grub.cfg` (written for the image's root) and anything
/// outside `EFI/` to none.
pub fn owner(esp_path: &str) -> Option<&'static str> {
    let path = esp_path.trim_start_matches('/');
    let name = path.rsplit('/').next().unwrap_or(path);
    if !path.to_ascii_uppercase().starts_with("EFI/") || name.eq_ignore_ascii_case("grub.cfg") {
        None
    } else if name.eq_ignore_ascii_case("grubaa64.efi") {
        Some(GRUB_RPM)
    } else {
        Some(SHIM_RPM)
    }
}

/// RPM `(version, release)` for a Debian `upstream-revision` version (`16.1-2~deb12u1` →
/// `16.1`, `2~deb12u1`; `2.12-5~bpo12+1` → `2.12`, `5~bpo12+1`). Characters RPM does not allow in
/// either (an epoch's `:`, a `-` inside the upstream part) become `.`.
pub fn rpm_version(debian: &str) -> (String, String) {
    let debian = debian.split_once(':').map_or(debian, |(_, v)| v);
    let (upstream, revision) = debian.rsplit_once('-').unwrap_or((debian, "1"));
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._+~^".contains(c) {
                    c
                } else {
                    '.'
                }
            })
            .collect()
    };
    (clean(upstream), clean(revision))
}

/// The upstream-revision part of a signed template package's version
/// (`1.51~1+deb12u1+16.1-2~deb12u1` → `16.1-2~deb12u1`, `1+2.06+13+deb12u2` → `2.06-13+deb12u2`).
pub fn signed_payload_version(package: &str, version: &str) -> String {
    if package.starts_with("grub") {
        crate::inputs::images::debian_build::grub_signed_versions(version).1
    } else {
        version.rsplit('+').next().unwrap_or(version).to_string()
    }
}

fn check_text(what: &str, s: &str, allowed: &str) -> Result<()> {
    ensure!(
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || allowed.contains(c)),
        "RPM {what} {s:?}: only letters, digits and {allowed:?} are allowed"
    );
    Ok(())
}

/// The spec file that packages `p`'s files, which are in `%{_sourcedir}` as `f0`, `f1`, ...
pub fn spec_text(p: &RpmPackage) -> Result<String> {
    check_text("name", &p.name, "-_.+")?;
    check_text("version", &p.version, "._+~^")?;
    check_text("release", &p.release, "._+~^")?;
    for f in &p.files {
        check_text("file path", &f.path, "/._-")?;
        ensure!(
            !f.path.starts_with('/') && !f.path.split('/').any(|c| c.is_empty() || c == ".."),
            "RPM file path {:?} must be relative to the ESP",
            f.path
        );
    }
    let one_line = |s: &str| s.replace('%', "%%").replace('\n', " ");
    let mut install = String::new();
    let mut files = String::new();
    let mut dirs = BTreeSet::new();
    for (i, f) in p.files.iter().enumerate() {
        let dest = format!("{ESP_MOUNT}/{}", f.path);
        let dir = dest.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        install.push_str(&format!(
            "install -D -m 0700 %{{_sourcedir}}/f{i} %{{buildroot}}{dest}\n"
        ));
        files.push_str(&format!("{dest}\n"));
        // The vendor directories (not /boot/efi/EFI itself), like EL's packages own theirs.
        if dir.matches('/').count() > 3 {
            dirs.insert(dir);
        }
    }
    let dirs: String = dirs.iter().map(|d| format!("%dir {d}\n")).collect();
    Ok(format!(
        "# Written by bootwatch: a package of files on the EFI system partition, no scripts.\n\
         Name: {name}\n\
         Version: {version}\n\
         Release: {release}\n\
         Summary: {summary}\n\
         License: See the Debian packages the binaries come from\n\
         %global debug_package %{{nil}}\n\
         %global __os_install_post %{{nil}}\n\
         %global _build_id_links none\n\
         \n\
         %description\n\
         {description}\n\
         \n\
         %install\n\
         {install}\
         \n\
         %files\n\
         %defattr(0700,root,root,0700)\n\
         {dirs}{files}",
        name = p.name,
        version = p.version,
        release = p.release,
        summary = one_line(&p.summary),
        description = one_line(&p.description),
    ))
}

/// Builds `p` with `rpmbuild` into `out_dir` (as [`RpmPackage::file_name`]); returns its path.
pub async fn build_rpm(p: &RpmPackage, out_dir: &Path) -> Result<PathBuf> {
    let spec = spec_text(p)?;
    let top = tempfile::Builder::new()
        .prefix(".rpmbuild-")
        .tempdir_in(out_dir)
        .with_context(|| format!("making a build directory in {}", out_dir.display()))?;
    let sources = top.path().join("SOURCES");
    fs::create_dir_all(&sources)?;
    for (i, f) in p.files.iter().enumerate() {
        fs::write(sources.join(format!("f{i}")), &f.content)?;
    }
    let spec_path = top.path().join(format!("{}.spec", p.name));
    fs::write(&spec_path, spec)?;
    let rpms = top.path().join("RPMS");
    let define = |k: &str, v: &Path| format!("{k} {}", v.display());
    let out = Tool::new("rpmbuild")
        .args(["-bb", "--target", &format!("{RPM_ARCH}-linux")])
        .arg("--define")
        .arg(define("_topdir", top.path()))
        .arg("--define")
        .arg(define("_sourcedir", &sources))
        .arg("--define")
        .arg(define("_rpmdir", &rpms))
        .args([
            "--define",
            "use_source_date_epoch_as_buildtime 1",
            "--define",
            "clamp_mtime_to_source_date_epoch 1",
            "--define",
            "_buildhost bootwatch",
        ])
        .arg(&spec_path)
        .env("SOURCE_DATE_EPOCH", DEB_MTIME.to_string())
        .run()
        .await
        .with_context(|| format!("building {} with rpmbuild", p.file_name()))?;
    let built = rpms.join(RPM_ARCH).join(p.file_name());
    ensure!(
        built.is_file(),
        "rpmbuild did not write {} (its output: {})",
        built.display(),
        out.stdout_text()
    );
    let dest = out_dir.join(p.file_name());
    fs::rename(&built, &dest).with_context(|| format!("moving {}", dest.display()))?;
    Ok(dest)
}

/// A dnf repository: RPM files and `repodata/` in one directory, served as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmRepo {
    pub dir: PathBuf,
    /// `(name, evr)` of each package in it.
    pub packages: Vec<(String, String)>,
}

/// Builds the packages into `dir` and makes it a repository (`createrepo_c`).
pub async fn rpm_repo(dir: &Path, packages: &[RpmPackage]) -> Result<RpmRepo> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for p in packages {
        build_rpm(p, dir).await?;
    }
    Tool::new("createrepo_c")
        .args(["--quiet", "--no-database", "--simple-md-filenames"])
        .arg(dir)
        .run()
        .await
        .with_context(|| format!("createrepo_c {}", dir.display()))?;
    Ok(RpmRepo {
        dir: dir.to_path_buf(),
        packages: packages.iter().map(|p| (p.name.clone(), p.evr())).collect(),
    })
}

/// Splits ESP files of Debian's layout into the two packages ([`owner`]), with the versions
/// given as Debian versions of the payloads (shim's, GRUB's).
pub fn boot_chain_packages(
    files: &[EspFile],
    shim_version: &str,
    grub_version: &str,
    origin: &str,
) -> Vec<RpmPackage> {
    [
        (SHIM_RPM, shim_version, "shim"),
        (GRUB_RPM, grub_version, "GRUB"),
    ]
    .into_iter()
    .map(|(name, debian, what)| {
        let (version, release) = rpm_version(debian);
        RpmPackage {
            name: name.into(),
            version,
            release,
            summary: format!("{what} {debian} for the EFI system partition (aarch64)"),
            description: format!(
                "Debian's signed {what} {debian} binaries ({origin}) packaged by bootwatch \
                     under the EL package name, so that rpm owns them and dnf upgrades them. \
                     Not an EL package."
            ),
            files: files
                .iter()
                .filter(|f| owner(&f.path) == Some(name))
                .cloned()
                .collect(),
        }
    })
    .collect()
}

/// The bad update as an RPM: `base` (the image's own shim package) one release later, with the
/// crashing EFI application in place of shim at both places the firmware boots it from.
pub fn bad_shim(base: &RpmPackage) -> RpmPackage {
    let app = crate::inputs::fixtures::Fixture::Crash.efi_app();
    let mut p = base.clone();
    p.release = format!("{}{BAD_RELEASE_SUFFIX}", base.release);
    p.summary = "DELIBERATELY BROKEN shim for bootwatch's tests".into();
    p.description = "Made by bootwatch: an EFI application that crashes at its entry point in \
                     place of shim (EFI/debian/shimaa64.efi and EFI/BOOT/BOOTAA64.EFI), so the \
                     next boot stops in the firmware with a Synchronous Exception. A test \
                     package; never install it on a machine you need."
        .into();
    for f in &mut p.files {
        let upper = f.path.to_ascii_uppercase();
        if upper.ends_with("/SHIMAA64.EFI") || upper.ends_with("/BOOTAA64.EFI") {
            f.content = app.clone();
        }
    }
    p
}

/// The content of `path` (absolute, as in the package) in a `.deb`'s data.
pub fn deb_file(deb: &Path, path: &str) -> Result<Vec<u8>> {
    let want = path.trim_start_matches('/');
    with_tar_member(deb, "data.tar", |reader| {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let p = entry.path()?.to_string_lossy().into_owned();
            if p.trim_start_matches("./") == want {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut buf)?;
                return Ok(buf);
            }
        }
        Err(anyhow!("{} has no {path}", deb.display()))
    })
}

/// Installs RPM files into a directory tree with the host's `rpm` (database at the guest's
/// `/var/lib/rpm`, where the image's `/etc/rpm/macros` puts it). The packages carry files only,
/// so the host's architecture does not matter (`--ignorearch`); dependencies are not checked
/// (the tree's Debian packages provide nothing rpm knows of).
pub async fn install_into_tree(tree: &Path, rpms: &[PathBuf], log: &Path) -> Result<()> {
    Tool::new("rpm")
        .arg("--root")
        .arg(tree)
        .args([
            "--dbpath",
            RPM_DBPATH,
            "--ignorearch",
            "--nodeps",
            "--force-debian",
            "-i",
        ])
        .args(rpms)
        .log_to(log)
        .run()
        .await
        .context("installing the boot chain's RPMs into the image tree")?;
    Ok(())
}

/// rpm's database in the guest (Debian's rpm defaults to `~/.rpmdb`; the image's
/// `/etc/rpm/macros` sets this, as on EL).
pub const RPM_DBPATH: &str = "/var/lib/rpm";

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<EspFile> {
        [
            "EFI/debian/shimaa64.efi",
            "EFI/debian/grubaa64.efi",
            "EFI/debian/BOOTAA64.CSV",
            "EFI/debian/grub.cfg",
            "EFI/BOOT/BOOTAA64.EFI",
            "EFI/BOOT/grubaa64.efi",
        ]
        .iter()
        .map(|p| EspFile {
            path: (*p).into(),
            content: p.as_bytes().to_vec(),
        })
        .collect()
    }

    #[test]
    fn versions_and_owners() {
        assert_eq!(
            rpm_version("16.1-2~deb12u1"),
            ("16.1".into(), "2~deb12u1".into())
        );
        assert_eq!(
            rpm_version("2.12-5~bpo12+1"),
            ("2.12".into(), "5~bpo12+1".into())
        );
        assert_eq!(rpm_version("1:2.06-3"), ("2.06".into(), "3".into()));
        assert_eq!(
            signed_payload_version("shim-signed", "1.51~1+deb12u1+16.1-2~deb12u1"),
            "16.1-2~deb12u1"
        );
        assert_eq!(
            signed_payload_version("grub-efi-arm64-signed", "1+2.06+13+deb12u2"),
            "2.06-13+deb12u2"
        );
        let pkgs = boot_chain_packages(&files(), "16.1-2~deb12u1", "2.06-13+deb12u2", "bookworm");
        assert_eq!(pkgs[0].name, SHIM_RPM);
        assert_eq!(
            pkgs[0]
                .files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            [
                "EFI/debian/shimaa64.efi",
                "EFI/debian/BOOTAA64.CSV",
                "EFI/BOOT/BOOTAA64.EFI"
            ]
        );
        assert_eq!(pkgs[1].name, GRUB_RPM);
        assert_eq!(pkgs[1].files.len(), 2);
        assert_eq!(
            pkgs[1].file_name(),
            "grub2-efi-aa64-2.06-13+deb12u2.aarch64.rpm"
        );
        let bad = bad_shim(&pkgs[0]);
        assert_eq!(bad.release, "2~deb12u1.bootwatch.bad1");
        let crash = crate::inputs::fixtures::Fixture::Crash.efi_app();
        assert_eq!(bad.files[0].content, crash);
        assert_eq!(
            bad.files[1].content, pkgs[0].files[1].content,
            "the CSV is kept"
        );
        assert_eq!(bad.files[2].content, crash);
    }

    #[test]
    fn spec_refuses_what_would_break_it() {
        let mut p = boot_chain_packages(&files(), "16.1-2", "2.06-13", "x").remove(0);
        let spec = spec_text(&p).unwrap();
        assert!(spec.contains("%dir /boot/efi/EFI/debian\n"), "{spec}");
        assert!(spec.contains("%dir /boot/efi/EFI/BOOT\n"), "{spec}");
        assert!(!spec.contains("%dir /boot/efi/EFI\n"), "{spec}");
        assert!(spec.contains(
            "install -D -m 0700 %{_sourcedir}/f0 %{buildroot}/boot/efi/EFI/debian/shimaa64.efi"
        ));
        p.files[0].path = "EFI/../etc/passwd".into();
        assert!(spec_text(&p).is_err());
        p.files[0].path = "EFI/a b".into();
        assert!(spec_text(&p).is_err());
        p.files[0].path = "EFI/debian/x.efi".into();
        p.release = "1\n%post".into();
        assert!(spec_text(&p).is_err());
    }

    /// rpmbuild and createrepo_c make a repository whose package rpm reads back with the files
    /// and modes the spec asks for, and an installed tree has the files and a database entry.
    #[tokio::test]
    async fn rpmbuild_createrepo_and_install_into_a_tree() {
        if HOST_TOOLS.iter().any(|(t, _)| which::which(t).is_err()) {
            eprintln!(
                "skipped: rpmbuild/createrepo_c not installed (.ci/install-deps installs them)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pkgs = boot_chain_packages(&files(), "16.1-2~deb12u1", "2.06-13+deb12u2", "test");
        let repo = rpm_repo(&dir.path().join("repo"), &pkgs).await.unwrap();
        assert!(repo.dir.join("repodata/repomd.xml").is_file());
        let primary = fs::read_dir(repo.dir.join("repodata"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        assert!(primary.iter().any(|n| n == "primary.xml.gz"), "{primary:?}");
        let rpm = repo.dir.join(pkgs[0].file_name());
        let out = Tool::new("rpm")
            .args([
                "-qp",
                "--qf",
                "%{NAME} %{VERSION}-%{RELEASE} %{ARCH} %{BUILDTIME}\\n",
            ])
            .arg(&rpm)
            .run()
            .await
            .unwrap();
        assert_eq!(
            out.stdout_text().trim(),
            format!("shim-aa64 16.1-2~deb12u1 aarch64 {DEB_MTIME}")
        );
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("var/lib/rpm")).unwrap();
        install_into_tree(
            &tree,
            &[rpm, repo.dir.join(pkgs[1].file_name())],
            &dir.path().join("log"),
        )
        .await
        .unwrap();
        let shim = tree.join("boot/efi/EFI/debian/shimaa64.efi");
        assert_eq!(fs::read(&shim).unwrap(), b"EFI/debian/shimaa64.efi");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let q = Tool::new("rpm")
            .arg("--root")
            .arg(&tree)
            .args(["--dbpath", RPM_DBPATH, "-qa", "--qf", "%{NAME}\\n"])
            .run()
            .await
            .unwrap();
        let mut names: Vec<String> = q.stdout_text().lines().map(str::to_string).collect();
        names.sort();
        assert_eq!(names, [GRUB_RPM, SHIM_RPM]);
        // Same inputs, same bytes.
        let again = dir.path().join("again");
        fs::create_dir_all(&again).unwrap();
        let p2 = build_rpm(&pkgs[0], &again).await.unwrap();
        assert_eq!(
            fs::read(&p2).unwrap(),
            fs::read(repo.dir.join(pkgs[0].file_name())).unwrap()
        );
    }
}
