//! The updates a case can serve to its guest, by name: `good` (the image's own good update:
//! real newer boot-chain packages from Debian's archive, `[local.good_update]` in
//! `guest-images/local.toml`, e.g. GRUB 2.12 from bookworm-backports for Debian 12), `bad` (a
//! `shim-signed` built here whose installation puts an EFI binary that crashes in the firmware
//! where the firmware boots from), or a directory holding a package repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use crate::engine::case::UpdateRepo;
use crate::inputs::images::debian_build::BootChain;
use crate::inputs::images::{Entry, Registry, debian_build, esp};
use crate::inputs::repo::{self, rpm};

/// An update named in a matrix file, the demo or on the command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateChoice {
    Good,
    Bad,
    /// A package repository directory (apt: a `Packages` index; dnf: `repodata/`).
    Dir(PathBuf),
}

impl UpdateChoice {
    /// `good`, `bad`, or an existing repository directory.
    pub fn parse(s: &str) -> Result<UpdateChoice, String> {
        match s {
            "good" => Ok(UpdateChoice::Good),
            "bad" => Ok(UpdateChoice::Bad),
            dir => {
                let p = PathBuf::from(dir);
                if p.join("Packages").is_file() || p.join("repodata").is_dir() {
                    Ok(UpdateChoice::Dir(p))
                } else {
                    Err(format!(
                        "update {dir:?} is neither \"good\", \"bad\" nor a package repository directory (no Packages index or repodata/ in it)"
                    ))
                }
            }
        }
    }

    /// The label cases record (`good-update`, `bad-update`, the directory).
    pub fn label(&self) -> String {
        match self {
            UpdateChoice::Good => "good-update".into(),
            UpdateChoice::Bad => "bad-update".into(),
            UpdateChoice::Dir(d) => d.display().to_string(),
        }
    }

    /// What identifies the update's content for caches keyed by it (with the image, whose
    /// own good update `good` is).
    pub fn key(&self, image: &str) -> anyhow::Result<String> {
        match self {
            UpdateChoice::Good => {
                let registry = Registry::builtin();
                let spec = match registry.get(image) {
                    Some(Entry::Local(l)) => l.good_update.clone(),
                    _ => None,
                };
                Ok(format!(
                    "good/{}",
                    serde_json::to_string(&spec).unwrap_or_default()
                ))
            }
            // The bad update is made from the image's own shim version, which the image key covers.
            UpdateChoice::Bad => Ok("bad/1".into()),
            UpdateChoice::Dir(d) => dir_fingerprint(d),
        }
    }
}

/// Makes the repository of `choice` for `image` in `out_dir` (the built-in ones; a directory is
/// used as it is).
pub async fn make(
    choice: &UpdateChoice,
    image: &str,
    mirror: Option<&str>,
    cache_root: &Path,
    out_dir: &Path,
) -> anyhow::Result<UpdateRepo> {
    let label = choice.label();
    let dir = match choice {
        UpdateChoice::Dir(d) => d.clone(),
        UpdateChoice::Good => {
            let registry = Registry::builtin();
            let Some(Entry::Local(local)) = registry.get(image) else {
                bail!("the built-in good update is made for local images; {image} is not one");
            };
            let Some(spec) = &local.good_update else {
                bail!(
                    "{image} has no good update: its suite has no newer boot chain \
                     (guest-images/local.toml, [local.good_update])"
                );
            };
            let mirror = crate::inputs::debian::resolve_mirror(mirror)?;
            if local.recipe.boot_chain == BootChain::Rpm {
                let debs = out_dir.join("debian-packages");
                std::fs::create_dir_all(&debs)?;
                let apt =
                    repo::archive_update(&mirror, cache_root, &debs, &local.recipe.suite, spec)
                        .await?;
                let repo = rpm_good_update(image, cache_root, &apt, out_dir).await;
                std::fs::remove_dir_all(&debs)?;
                repo?
            } else {
                repo::archive_update(&mirror, cache_root, out_dir, &local.recipe.suite, spec)
                    .await?
                    .dir
            }
        }
        UpdateChoice::Bad => {
            // The bad shim is one version above the image's own, so apt takes it as an upgrade.
            let registry = Registry::builtin();
            let Some(Entry::Local(local)) = registry.get(image) else {
                bail!("the built-in bad update is made for local images; {image} is not one");
            };
            let built = debian_build::find_cached(&local.recipe, cache_root)?
                .ok_or_else(|| anyhow!("{image} is not built yet"))?;
            if local.recipe.boot_chain == BootChain::Rpm {
                let (shim, _) = image_chain_rpms(&built).await?;
                let bad = rpm::bad_shim(&shim);
                return Ok(UpdateRepo {
                    label,
                    dir: rpm::rpm_repo(out_dir, &[bad]).await?.dir,
                });
            }
            let shim = built
                .manifest
                .boot_chain
                .get("shim-signed")
                .cloned()
                .ok_or_else(|| anyhow!("{image} has no shim-signed package"))?;
            let out = out_dir.to_path_buf();
            tokio::task::spawn_blocking(move || repo::bad_update(&out, &shim))
                .await
                .context("building the bad update")??
                .dir
        }
    };
    Ok(UpdateRepo { label, dir })
}

/// The image's own boot-chain RPMs (shim's, GRUB's) as built: their files read back from the
/// image's ESP, their versions from the Debian packages the binaries came from.
async fn image_chain_rpms(
    built: &debian_build::BuiltImage,
) -> anyhow::Result<(rpm::RpmPackage, rpm::RpmPackage)> {
    let qi = crate::inputs::images::overlay::qemu_img()?;
    let mut files = Vec::new();
    for (path, _) in esp::list_esp(&qi, &built.path).await? {
        if rpm::owner(&path).is_some() {
            let content = esp::read_esp_file(&qi, &built.path, &path).await?;
            files.push(rpm::EspFile {
                path: path.trim_start_matches('/').to_string(),
                content,
            });
        }
    }
    let version_of = |p: &str| {
        built
            .manifest
            .boot_chain
            .get(p)
            .map(|v| rpm::signed_payload_version(p, v))
            .ok_or_else(|| anyhow!("{} has no {p}", built.manifest.recipe.name))
    };
    let mut pkgs = rpm::boot_chain_packages(
        &files,
        &version_of("shim-signed")?,
        &version_of("grub-efi-arm64-signed")?,
        &format!("Debian {}", built.manifest.recipe.suite),
    )
    .into_iter();
    let (shim, grub) = (pkgs.next(), pkgs.next());
    Ok((shim.expect("two packages"), grub.expect("two packages")))
}

/// An RPM-owned image's good update: its GRUB package one version later, carrying the signed
/// GRUB binary of the Debian update `apt` (a repository [`repo::archive_update`] made).
async fn rpm_good_update(
    image: &str,
    cache_root: &Path,
    apt: &repo::Repo,
    out_dir: &Path,
) -> anyhow::Result<PathBuf> {
    const SIGNED: &str = "grub-efi-arm64-signed";
    let registry = Registry::builtin();
    let Some(Entry::Local(local)) = registry.get(image) else {
        bail!("{image} is not a local image");
    };
    let built = debian_build::find_cached(&local.recipe, cache_root)?
        .ok_or_else(|| anyhow!("{image} is not built yet"))?;
    let (_, mut grub) = image_chain_rpms(&built).await?;
    let signed = apt
        .packages
        .iter()
        .find(|p| p.package == SIGNED)
        .ok_or_else(|| anyhow!("the good update of {image} has no {SIGNED}"))?;
    let binary = rpm::deb_file(
        &apt.dir.join(&signed.filename),
        "/usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
    )?;
    let debian = rpm::signed_payload_version(SIGNED, &signed.version);
    for f in &mut grub.files {
        f.content = binary.clone();
    }
    // Only GRUB's files: the shim package of the pair is empty and left out.
    let grub =
        rpm::boot_chain_packages(&grub.files, "0", &debian, &format!("Debian {}", apt.suite))
            .pop()
            .expect("two packages");
    Ok(rpm::rpm_repo(out_dir, &[grub]).await?.dir)
}

/// Names, sizes and modification times of a directory's files: enough to notice a changed
/// update repository without hashing every package.
fn dir_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        entries.push(format!(
            "{}:{}:{mtime}",
            e.file_name().to_string_lossy(),
            m.len()
        ));
    }
    entries.sort();
    Ok(format!("{}|{}", dir.display(), entries.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_names_parse() {
        assert_eq!(UpdateChoice::parse("good"), Ok(UpdateChoice::Good));
        assert_eq!(UpdateChoice::parse("bad"), Ok(UpdateChoice::Bad));
        let d = tempfile::tempdir().unwrap();
        let e = UpdateChoice::parse(d.path().to_str().unwrap()).unwrap_err();
        assert!(e.contains("neither"), "{e}");
        std::fs::write(d.path().join("Packages"), "").unwrap();
        assert_eq!(
            UpdateChoice::parse(d.path().to_str().unwrap()),
            Ok(UpdateChoice::Dir(d.path().to_path_buf()))
        );
    }
}
