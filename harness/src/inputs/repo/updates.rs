//! The two updates the upgrade scenarios install: a real newer Debian boot loader
//! ([`good_update`]) and a deliberately broken one ([`bad_update`]).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};

use super::{
    ARCH, ArchiveKind, ArchiveUpdate, BAD_PACKAGE, BAD_REPO_SUITE, BAD_VERSION_SUFFIX,
    CRASH_APP_PATH, ESP_TARGETS, GOOD_REPO_SUITE, GOOD_UPDATE_BASE_SUITE, Repo, SAVED_SUFFIX,
    build_repo, deb_file_name,
};
use crate::inputs::debian::deb::{DebMember, write_deb};
use crate::inputs::debian::packages::{PackageEntry, parse_index};
use crate::inputs::debian::plan::{Index, plan_update};
use crate::inputs::debian::{Archive, INDEX_CACHE_DIR, compare_versions};
use crate::inputs::fixtures::Fixture;

// ---------------------------------------------------------------------------------------------
// The bad update
// ---------------------------------------------------------------------------------------------

/// A repository in `out_dir` holding one package built here: `shim-signed` for arm64, version
/// `base_version` + [`BAD_VERSION_SUFFIX`] (an upgrade of the installed `shim-signed
/// base_version`), with no dependencies, installing the crashing EFI application
/// ([`Fixture::Crash`]) as [`CRASH_APP_PATH`]. Its `postinst configure` copies that
/// application over [`ESP_TARGETS`] (each whose directory exists; none existing is an error,
/// so a guest without its ESP mounted fails the upgrade instead of silently staying healthy),
/// after saving each previous file once as `<file>.bootwatch-saved`, then runs `sync`. Paths
/// are prefixed with `$DPKG_ROOT` (empty in a normal installation). The package's description
/// says that it is a deliberately broken test package made by bootwatch.
///
/// Installing it (for example `apt-get full-upgrade`) and rebooting makes edk2 load the
/// application (through the boot entry for `EFI/debian/shimaa64.efi`, or the removable
/// path), which stops the machine with `Synchronous Exception` before GRUB. With Secure Boot
/// enforced the firmware would refuse the unsigned application instead.
pub fn bad_update(out_dir: &Path, base_version: &str) -> Result<Repo> {
    let base_version = base_version.trim();
    ensure!(
        !base_version.is_empty()
            && base_version.starts_with(|c: char| c.is_ascii_digit())
            && base_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b)),
        "not a Debian version: {base_version:?}"
    );
    let version = format!("{base_version}{BAD_VERSION_SUFFIX}");
    ensure!(
        compare_versions(&version, base_version) == Ordering::Greater,
        "{version} does not sort after {base_version}"
    );
    let app = Fixture::Crash.efi_app();
    let control = bad_control(&version, app.len() as u64);
    let postinst = bad_postinst();
    let deb = out_dir.join(deb_file_name(BAD_PACKAGE, &version, ARCH)?);
    write_deb(
        &deb,
        &control,
        &[DebMember {
            path: "postinst",
            content: postinst.as_bytes(),
            mode: 0o755,
        }],
        &[DebMember {
            path: CRASH_APP_PATH.trim_start_matches('/'),
            content: &app,
            mode: 0o644,
        }],
    )?;
    let mut repo = build_repo(out_dir, &[deb], BAD_REPO_SUITE)?;
    for p in &mut repo.packages {
        p.origin = Some("bootwatch".to_owned());
    }
    Ok(repo)
}

fn bad_control(version: &str, app_size: u64) -> String {
    // dpkg-gencontrol's estimate: 1 KiB per directory plus each file rounded up to KiB.
    let dirs = Path::new(CRASH_APP_PATH).ancestors().count() as u64 - 2;
    let installed_kib = dirs + app_size.div_ceil(1024);
    format!(
        "Package: {BAD_PACKAGE}\n\
         Version: {version}\n\
         Architecture: {ARCH}\n\
         Maintainer: bootwatch test harness <bootwatch@invalid>\n\
         Installed-Size: {installed_kib}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: deliberately broken boot loader: a bootwatch test package, NOT Debian's\n \
         This is a deliberately broken test package made by bootwatch, a test\n \
         harness. It is not Debian's shim-signed: it only borrows the name and a\n \
         higher version so that an upgrade installs it.\n \
         .\n \
         Its postinst replaces the EFI boot loader on the EFI system partition\n \
         ({}\n \
         and the removable-media path {})\n \
         with {CRASH_APP_PATH}, a tiny EFI application that\n \
         executes an undefined instruction at its entry point. The next boot\n \
         therefore stops in the firmware with a \"Synchronous Exception\"\n \
         before GRUB. The replaced files are kept next to them with the suffix\n \
         {SAVED_SUFFIX}. Never install this on a machine you want to boot.\n",
        ESP_TARGETS[0], ESP_TARGETS[1]
    )
}

fn bad_postinst() -> String {
    let targets = ESP_TARGETS
        .iter()
        .map(|t| format!("\"${{DPKG_ROOT:-}}{t}\""))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"#!/bin/sh
# postinst of bootwatch's deliberately broken "shim-signed" test package: puts an EFI
# application that crashes at its entry point where the firmware loads the boot loader from,
# so that the next boot stops with "Synchronous Exception" before GRUB.
set -eu

app="${{DPKG_ROOT:-}}{CRASH_APP_PATH}"

case "${{1:-}}" in
configure)
    replaced=0
    for target in {targets}; do
        dir="${{target%/*}}"
        if [ ! -d "$dir" ]; then
            echo "bootwatch bad update: $dir does not exist, not touched" >&2
            continue
        fi
        if [ -e "$target" ] && [ ! -e "$target{SAVED_SUFFIX}" ]; then
            cp "$target" "$target{SAVED_SUFFIX}"
        fi
        cp "$app" "$target.bootwatch-new"
        mv -f "$target.bootwatch-new" "$target"
        echo "bootwatch bad update: replaced $target with a crashing EFI application" >&2
        replaced=$((replaced + 1))
    done
    sync
    if [ "$replaced" -eq 0 ]; then
        echo "bootwatch bad update: no EFI/debian or EFI/BOOT directory under ${{DPKG_ROOT:-}}/boot/efi (is the ESP mounted?)" >&2
        exit 1
    fi
    ;;
esac
exit 0
"#
    )
}

// ---------------------------------------------------------------------------------------------
// The good update
// ---------------------------------------------------------------------------------------------

/// A repository in `out_dir` holding a real Debian boot loader newer than Debian 12's own:
/// GRUB 2.12 for arm64 from `bookworm-backports` ([`GOOD_UPDATE_PACKAGES`]), plus every package
/// those need that a Debian 12 guest with its own GRUB cannot be assumed to have.
///
/// `mirror` is a Debian archive mirror URL (see [`crate::inputs::debian::resolve_mirror`]). The
/// `main/binary-arm64` indexes of `bookworm` and `bookworm-backports` are read (checked
/// against `InRelease`, see the module documentation; verified indexes are cached under
/// `cache_root/debs/indexes/` by hash) and the packages chosen like this:
///
/// 1. each package of [`GOOD_UPDATE_PACKAGES`] at its newest version in `bookworm-backports`,
///    which must be newer than bookworm's;
/// 2. the guest is assumed to have bookworm's `Essential` and `Priority: required` packages
///    and bookworm's GRUB packages, each with its dependency closure in bookworm;
/// 3. every `Depends`/`Pre-Depends` clause of a chosen package that the chosen packages and
///    the assumed ones cannot satisfy adds a package: from bookworm when bookworm can satisfy
///    it (so the upgrade needs nothing but this repository), else from `bookworm-backports`;
///    assumed packages whose dependencies or `Breaks`/`Conflicts` the new versions violate
///    are upgraded from `bookworm-backports` too, or it is an error.
///
/// So `apt-get full-upgrade` in a bookworm guest that sees this repository (even as its only
/// source) upgrades GRUB to 2.12. With today's archive that is the five GRUB packages plus
/// bookworm's `libfuse3-3` (GRUB 2.12's `grub-common` moved from FUSE 2 to FUSE 3).
///
/// The `.deb`s are downloaded into `cache_root/debs/` (kept by their archive file name;
/// a cached file is re-hashed against the index before use) and checked against the index's
/// size and SHA256; a mismatch deletes the download and is an error.
pub async fn good_update(mirror: &str, cache_root: &Path, out_dir: &Path) -> Result<Repo> {
    archive_update(
        mirror,
        cache_root,
        out_dir,
        GOOD_UPDATE_BASE_SUITE,
        &ArchiveUpdate::bookworm_grub(),
    )
    .await
}

/// [`good_update`] from `archive` (a mirror and the keyring its Release files must verify
/// with).
pub async fn good_update_from(
    archive: &Archive,
    cache_root: &Path,
    out_dir: &Path,
) -> Result<Repo> {
    archive_update_from(
        archive,
        archive,
        cache_root,
        out_dir,
        GOOD_UPDATE_BASE_SUITE,
        &ArchiveUpdate::bookworm_grub(),
    )
    .await
}

/// A repository in `out_dir` with `spec`'s packages at their newest version in `spec.suite`
/// for a guest of `base_suite`, and whatever they need (chosen as [`good_update`] describes):
/// the good update of any local image (`[local.good_update]`). `spec.suite` is read from
/// `mirror`, or from Debian's security archive ([`crate::inputs::debian::resolve_security_mirror`])
/// when `spec.archive` says so; `base_suite` always from `mirror`.
pub async fn archive_update(
    mirror: &str,
    cache_root: &Path,
    out_dir: &Path,
    base_suite: &str,
    spec: &ArchiveUpdate,
) -> Result<Repo> {
    let index_cache = cache_root.join(INDEX_CACHE_DIR);
    let base = Archive::new(mirror)?.with_index_cache(index_cache.clone());
    let update = match spec.archive {
        ArchiveKind::Debian => base.clone(),
        ArchiveKind::Security => {
            let security = crate::inputs::debian::resolve_security_mirror(mirror)?;
            Archive::new(&security)?.with_index_cache(index_cache)
        }
    };
    archive_update_from(&base, &update, cache_root, out_dir, base_suite, spec).await
}

/// [`archive_update`] from given archives: `base_suite` is read from `base`, `spec.suite`
/// from `update` (the same archive but for security updates).
pub async fn archive_update_from(
    base_archive: &Archive,
    update_archive: &Archive,
    cache_root: &Path,
    out_dir: &Path,
    base_suite: &str,
    spec: &ArchiveUpdate,
) -> Result<Repo> {
    spec.check().map_err(|(_, m)| anyhow!("update: {m}"))?;
    let debs_dir = cache_root.join("debs");
    let base = arch_index(base_archive, base_suite).await?;
    let update = arch_index(update_archive, &spec.suite).await?;
    let roots = spec.packages.clone();
    let plan = tokio::task::spawn_blocking(move || {
        let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
        plan_update(&base, &update, &roots)
    })
    .await
    .context("planning task")??;
    tracing::info!(
        packages = %plan
            .iter()
            .map(|p| format!("{} {} ({})", p.entry.name, p.entry.version, p.suite))
            .collect::<Vec<_>>()
            .join(", "),
        suite = %spec.suite,
        "good update"
    );

    let mut files = Vec::new();
    let mut origins = HashMap::new();
    for p in &plan {
        let entry = PackageEntry::from_package(&p.entry)
            .with_context(|| format!("the {} index", p.suite))?;
        let archive = if p.suite == spec.suite {
            update_archive
        } else {
            base_archive
        };
        let path = archive.cached_deb(&entry, &debs_dir).await?;
        origins.insert(entry.package.clone(), p.suite.clone());
        files.push(path);
    }
    let out_dir = out_dir.to_path_buf();
    let mut repo =
        tokio::task::spawn_blocking(move || build_repo(&out_dir, &files, GOOD_REPO_SUITE))
            .await
            .context("repository task")??;
    for p in &mut repo.packages {
        p.origin = origins.get(&p.package).cloned();
    }
    Ok(repo)
}

/// A suite's verified `main/binary-ARCH` index, typed for the planner.
async fn arch_index(archive: &Archive, suite: &str) -> Result<Index> {
    let text = archive
        .packages_index(suite, "main", ARCH)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "{} has no main/binary-{ARCH} index for {suite}",
                archive.mirror()
            )
        })?;
    let suite = suite.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Index> {
        let entries = parse_index(&text, ARCH).with_context(|| format!("the {suite} index"))?;
        ensure!(
            !entries.is_empty(),
            "{suite}: the index lists no {ARCH} packages"
        );
        Ok(Index::new(&suite, entries))
    })
    .await
    .context("index parsing task")?
}

#[cfg(test)]
mod tests {
    use super::super::serve;
    use super::super::testing::{CONTROL_B, run, small_deb, stdout};
    use super::super::{GOOD_UPDATE_PACKAGES, GOOD_UPDATE_SUITE};
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::Read;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Instant;

    use md5::Md5;
    use sha2::{Digest, Sha256};

    /// A tar member's entries as (path, mode, content).
    type TarEntries = Vec<(String, u32, Vec<u8>)>;

    /// (member name, decompressed tar entries) of a .deb.
    fn deb_members(deb: &Path) -> Vec<(String, TarEntries)> {
        let mut archive = ar::Archive::new(fs::File::open(deb).unwrap());
        let mut out = Vec::new();
        while let Some(member) = archive.next_entry() {
            let mut member = member.unwrap();
            let name = String::from_utf8(member.header().identifier().to_vec()).unwrap();
            let mut data = Vec::new();
            member.read_to_end(&mut data).unwrap();
            let entries = if name.ends_with(".tar.gz") {
                let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
                tar.entries()
                    .unwrap()
                    .map(|e| {
                        let mut e = e.unwrap();
                        let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                        let mode = e.header().mode().unwrap();
                        let mut content = Vec::new();
                        e.read_to_end(&mut content).unwrap();
                        (path, mode, content)
                    })
                    .collect()
            } else {
                vec![(String::new(), 0, data)]
            };
            out.push((name, entries));
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // the bad update
    // -----------------------------------------------------------------------------------------

    const SHIM_BASE: &str = "1.51~1+deb12u1+16.1-2~deb12u1";

    #[test]
    fn bad_deb_has_the_members_dpkg_expects() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bad_update(tmp.path(), SHIM_BASE).unwrap();
        let version = format!("{SHIM_BASE}+bootwatch.bad1");
        assert_eq!(repo.suite, BAD_REPO_SUITE);
        assert_eq!(repo.packages.len(), 1);
        let p = &repo.packages[0];
        assert_eq!(
            (
                p.package.as_str(),
                p.version.as_str(),
                p.architecture.as_str()
            ),
            ("shim-signed", version.as_str(), "arm64")
        );
        assert_eq!(p.origin.as_deref(), Some("bootwatch"));
        let deb = tmp.path().join(&p.filename);

        // Parsed back with the ar and tar crates.
        let members = deb_members(&deb);
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["debian-binary", "control.tar.gz", "data.tar.gz"]);
        assert_eq!(members[0].1[0].2, b"2.0\n");
        let control: BTreeMap<&str, (u32, &[u8])> = members[1]
            .1
            .iter()
            .map(|(p, m, c)| (p.as_str(), (*m, &c[..])))
            .collect();
        assert_eq!(
            control.keys().copied().collect::<Vec<_>>(),
            ["./", "./control", "./md5sums", "./postinst"]
        );
        assert_eq!(control["./postinst"].0, 0o755);
        assert!(control["./postinst"].1.starts_with(b"#!/bin/sh\n"));
        let app = Fixture::Crash.efi_app();
        let data: Vec<(&str, u32, &[u8])> = members[2]
            .1
            .iter()
            .map(|(p, m, c)| (p.as_str(), *m, &c[..]))
            .collect();
        assert_eq!(
            data.iter().map(|d| d.0).collect::<Vec<_>>(),
            [
                "./",
                "./usr/",
                "./usr/lib/",
                "./usr/lib/bootwatch/",
                "./usr/lib/bootwatch/crash-bootaa64.efi"
            ]
        );
        assert_eq!(data[4].2, &app[..]);
        assert_eq!(
            std::str::from_utf8(control["./md5sums"].1).unwrap(),
            format!(
                "{}  usr/lib/bootwatch/crash-bootaa64.efi\n",
                hex::encode(Md5::digest(&app))
            )
        );

        // And as dpkg sees it.
        let info = stdout(&run("dpkg-deb", &["-I", deb.to_str().unwrap()]));
        for want in [
            "Package: shim-signed",
            &format!("Version: {version}"),
            "Architecture: arm64",
            "deliberately broken test package made by bootwatch",
            "postinst",
        ] {
            assert!(info.contains(want), "dpkg-deb -I lacks {want:?}:\n{info}");
        }
        assert!(!info.contains("Depends"), "{info}");
        let field = |f: &str| {
            stdout(&run("dpkg-deb", &["-f", deb.to_str().unwrap(), f]))
                .trim()
                .to_owned()
        };
        assert_eq!(field("Package"), "shim-signed");
        assert_eq!(field("Version"), version);
        let listing = stdout(&run("dpkg-deb", &["-c", deb.to_str().unwrap()]));
        assert!(
            listing.contains(&format!(
                "-rw-r--r-- root/root      {} 2026-01-01 00:00 ./usr/lib/bootwatch/crash-bootaa64.efi",
                app.len()
            )),
            "{listing}"
        );
        run("dpkg", &["--compare-versions", &version, "gt", SHIM_BASE]);

        // The repository lists it with the right hashes.
        let packages = fs::read_to_string(tmp.path().join("Packages")).unwrap();
        let bytes = fs::read(&deb).unwrap();
        assert!(packages.contains(&format!(
            "SHA256: {}\n",
            hex::encode(Sha256::digest(&bytes))
        )));

        assert!(bad_update(tmp.path(), "not a version").is_err());
        assert!(bad_update(tmp.path(), "").is_err());
    }

    /// A scratch dpkg root: `dpkg --root` with maintainer scripts run outside a chroot and
    /// `DPKG_ROOT` set (what the bad postinst honours).
    struct DpkgRoot {
        root: PathBuf,
    }

    impl DpkgRoot {
        fn new(root: &Path) -> DpkgRoot {
            let admin = root.join("var/lib/dpkg");
            for d in ["info", "updates", "triggers"] {
                fs::create_dir_all(admin.join(d)).unwrap();
            }
            fs::write(admin.join("status"), "").unwrap();
            fs::write(admin.join("available"), "").unwrap();
            DpkgRoot {
                root: root.to_path_buf(),
            }
        }

        fn install(&self, deb: &Path) -> std::process::Output {
            Command::new("dpkg")
                .arg(format!("--root={}", self.root.display()))
                .args([
                    "--force-script-chrootless",
                    "--force-architecture",
                    "--force-not-root",
                    "--force-unsafe-io",
                    "--log=/dev/null",
                    "-i",
                ])
                .arg(deb)
                .output()
                .expect("running dpkg (a Debian host has it)")
        }
    }

    #[test]
    fn bad_postinst_replaces_the_boot_loader_and_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let dpkg = DpkgRoot::new(&root);
        for target in ESP_TARGETS {
            let path = root.join(target.trim_start_matches('/'));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, format!("original {target}")).unwrap();
        }
        // An installed shim-signed of the base version, then the bad one as its upgrade.
        let base = small_deb(
            tmp.path(),
            &format!(
                "Package: shim-signed\nVersion: {SHIM_BASE}\nArchitecture: arm64\n\
                 Maintainer: t <t@invalid>\nDescription: stand-in for the real one\n"
            ),
            &[("usr/lib/shim/shimaa64.efi.signed", b"signed shim")],
        );
        let out = dpkg.install(&base);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let repo = bad_update(&tmp.path().join("bad"), SHIM_BASE).unwrap();
        let bad = repo.dir.join(&repo.packages[0].filename);
        let app = Fixture::Crash.efi_app();
        for round in 0..2 {
            let out = dpkg.install(&bad);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "round {round}: {stderr}");
            assert!(stderr.contains("replaced"), "{stderr}");
            for target in ESP_TARGETS {
                let path = root.join(target.trim_start_matches('/'));
                assert_eq!(fs::read(&path).unwrap(), app, "{target}");
                let saved = PathBuf::from(format!("{}{SAVED_SUFFIX}", path.display()));
                // Saved once: a second run does not overwrite it with the crashing file.
                assert_eq!(
                    fs::read_to_string(&saved).unwrap(),
                    format!("original {target}"),
                    "round {round}"
                );
            }
        }
        assert_eq!(
            fs::read(root.join(CRASH_APP_PATH.trim_start_matches('/'))).unwrap(),
            app
        );
        // The base version's files are gone: it was upgraded, not installed beside.
        assert!(!root.join("usr/lib/shim/shimaa64.efi.signed").exists());
        let status = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
        assert!(
            status.contains(&format!("Version: {SHIM_BASE}+bootwatch.bad1")),
            "{status}"
        );

        // Without an ESP the upgrade fails loudly instead of leaving a healthy machine.
        let bare = tmp.path().join("bare");
        let out = DpkgRoot::new(&bare).install(&bad);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is the ESP mounted?"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // -----------------------------------------------------------------------------------------
    // apt itself
    // -----------------------------------------------------------------------------------------

    /// A private apt configuration for arm64 on this host (nothing of the host's apt is read
    /// or written), whose only source is `sources_line` and whose dpkg status is `status`.
    struct Apt {
        dir: PathBuf,
    }

    impl Apt {
        fn new(dir: &Path, sources_line: &str, status: &str) -> Apt {
            for d in [
                "etc/apt.conf.d",
                "etc/preferences.d",
                "etc/sources.list.d",
                "state/lists/partial",
                "cache/archives/partial",
                "log",
            ] {
                fs::create_dir_all(dir.join(d)).unwrap();
            }
            fs::write(dir.join("etc/sources.list"), format!("{sources_line}\n")).unwrap();
            fs::write(dir.join("status"), status).unwrap();
            Apt {
                dir: dir.to_path_buf(),
            }
        }

        fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
            let d = self.dir.display();
            let mut opts = vec![
                format!("Dir::Etc={d}/etc"),
                format!("Dir::Etc::SourceList={d}/etc/sources.list"),
                format!("Dir::Etc::SourceParts={d}/etc/sources.list.d"),
                format!("Dir::Etc::Parts={d}/etc/apt.conf.d"),
                format!("Dir::Etc::PreferencesParts={d}/etc/preferences.d"),
                format!("Dir::State={d}/state"),
                format!("Dir::State::status={d}/status"),
                format!("Dir::Cache={d}/cache"),
                format!("Dir::Log={d}/log"),
                "APT::Architecture=arm64".to_owned(),
                "APT::Architectures::=arm64".to_owned(),
                "APT::Sandbox::User=root".to_owned(),
                "Debug::NoLocking=1".to_owned(),
                "Acquire::Languages=none".to_owned(),
                "APT::Get::List-Cleanup=0".to_owned(),
            ];
            opts = opts
                .into_iter()
                .flat_map(|o| ["-o".to_owned(), o])
                .collect();
            let mut all: Vec<&str> = opts.iter().map(String::as_str).collect();
            all.extend(args);
            let out = Command::new(program)
                .args(&all)
                .env("LC_ALL", "C")
                .output()
                .unwrap_or_else(|e| panic!("running {program} (a Debian host has it): {e}"));
            assert!(
                out.status.success(),
                "{program} {args:?}: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    }

    /// dpkg status stanzas for installed packages.
    fn status_text(entries: &[(&str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(name, version, depends)| {
                let depends = if depends.is_empty() {
                    String::new()
                } else {
                    format!("Depends: {depends}\n")
                };
                format!(
                    "Package: {name}\nStatus: install ok installed\nPriority: optional\n\
                     Architecture: arm64\nVersion: {version}\n{depends}\
                     Maintainer: t <t@invalid>\nDescription: installed\n\n"
                )
            })
            .collect()
    }

    // apt runs as a blocking child process while the server answers it: two worker threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apt_takes_the_served_repository_as_trusted_and_upgrades_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let a = small_deb(
            tmp.path(),
            "Package: bwtest-a\nVersion: 2.0\nArchitecture: arm64\nMaintainer: t <t@invalid>\n\
             Depends: bwtest-b (>= 1:0.9~)\nDescription: new version\n",
            &[("usr/share/bwtest/a", b"a")],
        );
        let b = small_deb(tmp.path(), CONTROL_B, &[("usr/share/bwtest/b", b"b")]);
        let repo = build_repo(&tmp.path().join("repo"), &[a, b], "bwtest").unwrap();
        let bad = bad_update(&tmp.path().join("bad"), SHIM_BASE).unwrap();

        for (repo, want) in [
            (
                &repo,
                vec![
                    "Inst bwtest-a [1.0] (2.0 bootwatch:bwtest [arm64])",
                    "Inst bwtest-b (1:0.9~rc1 bootwatch:bwtest [all])",
                ],
            ),
            (
                &bad,
                vec![&*format!(
                    "Inst shim-signed [{SHIM_BASE}] ({SHIM_BASE}+bootwatch.bad1 bootwatch:bootwatch-bad [arm64])"
                )],
            ),
        ] {
            let served = serve(&repo.dir).await.unwrap();
            let line = repo.sources_line_at(&served.url());
            let apt = Apt::new(
                &tmp.path().join(format!("apt-{}", repo.suite)),
                &line,
                &status_text(&[("bwtest-a", "1.0", ""), ("shim-signed", SHIM_BASE, "")]),
            );
            let update = apt.run("apt-get", &["update"]);
            let text = format!(
                "{}{}",
                stdout(&update),
                String::from_utf8_lossy(&update.stderr)
            );
            assert!(!text.contains("W:") && !text.contains("E:"), "{text}");
            let sim = stdout(&apt.run("apt-get", &["-s", "full-upgrade"]));
            for w in &want {
                assert!(
                    sim.contains(w),
                    "apt-get -s full-upgrade lacks {w:?}:\n{sim}"
                );
            }
            let paths: Vec<String> = served.requests().iter().map(|r| r.path.clone()).collect();
            assert!(
                paths.iter().any(|p| p == "/./Release" || p == "/Release"),
                "{paths:?}"
            );
            assert!(
                served
                    .requests()
                    .iter()
                    .any(|r| r.path.contains("Packages") && r.status == 200 && r.bytes > 0),
                "{:?}",
                served.requests()
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // the good update: planning on synthetic indexes, then the real archive
    // -----------------------------------------------------------------------------------------

    /// Builds the good update from the mirror the host's apt configuration (or
    /// BOOTWATCH_MIRROR) names: about 15 MiB of indexes and 6 MiB of packages. Then asks the
    /// host's apt, configured as an arm64 bookworm guest that has exactly what the planner
    /// assumes and sees only this repository, what `apt-get full-upgrade` would do. Set
    /// BOOTWATCH_SKIP_NETWORK_TESTS=1 to skip it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn network_good_update_is_grub_2_12_and_apt_installs_it() {
        if std::env::var_os("BOOTWATCH_SKIP_NETWORK_TESTS").is_some_and(|v| !v.is_empty()) {
            eprintln!("skipped: BOOTWATCH_SKIP_NETWORK_TESTS is set");
            return;
        }
        let mirror = crate::inputs::debian::resolve_mirror(None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let started = Instant::now();
        let repo = good_update(&mirror, &cache, &tmp.path().join("good"))
            .await
            .unwrap();
        eprintln!("good update from {mirror} in {:?}:", started.elapsed());
        for p in &repo.packages {
            eprintln!("  {} {} ({:?})", p.package, p.version, p.origin);
        }
        let signed = repo.package("grub-efi-arm64-signed").unwrap();
        assert!(signed.version.starts_with("1+2.12"), "{}", signed.version);
        for name in GOOD_UPDATE_PACKAGES {
            let p = repo.package(name).unwrap();
            assert_eq!(p.origin.as_deref(), Some(GOOD_UPDATE_SUITE), "{name}");
            assert_eq!(p.architecture, "arm64");
        }
        for p in &repo.packages {
            let bytes = fs::read(repo.dir.join(&p.filename)).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                p.sha256,
                "{}",
                p.filename
            );
            assert!(
                cache.join("debs").join(&p.filename).is_file(),
                "{}",
                p.filename
            );
        }

        // Cached: the same repository again without downloading a package.
        let started = Instant::now();
        let again = good_update(&mirror, &cache, &tmp.path().join("good2"))
            .await
            .unwrap();
        eprintln!("again, from the cache: {:?}", started.elapsed());
        assert_eq!(again.packages, repo.packages);

        // apt's own answer, for a guest having exactly what the planner assumes.
        let archive = Archive::new(&mirror).unwrap();
        let base = arch_index(&archive, GOOD_UPDATE_BASE_SUITE).await.unwrap();
        let assumed = crate::inputs::debian::plan::assumed_installed(&base, GOOD_UPDATE_PACKAGES);
        let mut status = String::new();
        for e in assumed.values() {
            status.push_str(&format!(
                "Package: {}\nStatus: install ok installed\nArchitecture: {}\nVersion: {}\n",
                e.name, e.architecture, e.version
            ));
            let text = |r: &Option<debian_control::lossy::Relations>| {
                r.as_ref().map(ToString::to_string).unwrap_or_default()
            };
            for (k, v) in [
                (
                    "Essential",
                    if e.essential == Some(true) {
                        "yes".to_owned()
                    } else {
                        String::new()
                    },
                ),
                (
                    "Multi-Arch",
                    e.multi_arch
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                ("Pre-Depends", text(&e.pre_depends)),
                ("Depends", text(&e.depends)),
                ("Provides", text(&e.provides)),
                ("Breaks", text(&e.breaks)),
                ("Conflicts", text(&e.conflicts)),
            ] {
                if !v.is_empty() {
                    status.push_str(&format!("{k}: {v}\n"));
                }
            }
            status.push_str("Maintainer: t <t@invalid>\nDescription: installed\n\n");
        }
        let served = serve(&repo.dir).await.unwrap();
        let apt = Apt::new(
            &tmp.path().join("apt"),
            &repo.sources_line_at(&served.url()),
            &status,
        );
        apt.run("apt-get", &["update"]);
        let sim = stdout(&apt.run("apt-get", &["-s", "full-upgrade"]));
        eprintln!("{sim}");
        for p in &repo.packages {
            let upgraded = format!("Inst {} [", p.package);
            let installed = format!("Inst {} ({} ", p.package, p.version);
            assert!(
                sim.contains(&upgraded) || sim.contains(&installed),
                "apt-get -s full-upgrade does not install {} {}:\n{sim}",
                p.package,
                p.version
            );
        }
        assert!(!sim.contains("Remv "), "{sim}");
    }
}
