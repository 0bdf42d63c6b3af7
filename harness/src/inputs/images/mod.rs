//! Guest images: the vendor catalog and local recipes (`guest-images/`), the verified download
//! cache, locally built Debian images, per-run overlays and cloud-init seeds.

pub mod cache;
pub mod catalog;
pub mod chain;
pub mod debian_build;
pub mod esp;
pub mod overlay;
pub mod seed;

use std::sync::Arc;

use crate::core::event::{Event, EventSink};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use catalog::{
    CatalogError, CatalogImage, GuestTraits, from_doc, is_user_name, key_offset, line_of,
    parse_doc, retired_key, tables_of, unknown_key,
};
use debian_build::DebianRecipe;

/// The local recipes shipped with bootwatch.
pub const BUILTIN_LOCAL: &str = include_str!("../../../../guest-images/local.toml");
pub const BUILTIN_LOCAL_NAME: &str = "guest-images/local.toml";

/// A guest bootwatch builds itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalImage {
    pub name: String,
    pub description: String,
    pub recipe: DebianRecipe,
    /// The image's good update (`--update good`), when its suite allows one.
    #[serde(default)]
    pub good_update: Option<crate::inputs::repo::ArchiveUpdate>,
    #[serde(flatten)]
    pub guest: GuestTraits,
    #[serde(skip)]
    pub line: usize,
}

const LOCAL_KEYS: &[&str] = &[
    "name",
    "description",
    "recipe",
    "good_update",
    "login_user",
    "provision",
    "package_manager",
    "upgrade_command",
    "env",
    "package_query",
    "bootloader_packages",
    "reported",
    "report_note",
];

/// Parses local recipes; errors name the file and the line of the key they are about.
pub fn parse_local(text: &str, file: &str) -> Result<Vec<LocalImage>, CatalogError> {
    let err = |(offset, message): (usize, String)| CatalogError {
        file: file.into(),
        line: line_of(text, offset),
        message,
    };
    let doc = parse_doc(text).map_err(err)?;
    let mut out: Vec<LocalImage> = Vec::new();
    for entry in tables_of(&doc, "local").map_err(err)? {
        let start = entry.span().start;
        let table = entry
            .get_ref()
            .as_table()
            .expect("tables_of returns tables");
        let name = table
            .get("name")
            .and_then(|v| v.get_ref().as_str())
            .unwrap_or("?")
            .to_string();
        let in_local = |(at, m): (usize, String)| err((at, format!("local image {name:?}: {m}")));
        if let Some(bad) = retired_key(table).or_else(|| unknown_key(table, LOCAL_KEYS)) {
            return Err(in_local(bad));
        }
        // The guest's fields first on their own: through `flatten`, a bad value would be
        // located at the table, not at its key.
        from_doc::<GuestTraits>(text, entry, start).map_err(in_local)?;
        let mut img: LocalImage = from_doc(text, entry, start).map_err(in_local)?;
        if !is_user_name(&img.guest.login_user) {
            return Err(in_local((
                key_offset(table, "login_user").unwrap_or(start),
                format!("login_user {:?} is not a user name", img.guest.login_user),
            )));
        }
        // The recipe's name is the image's name.
        img.recipe.name = img.name.clone();
        img.recipe.check().map_err(|(field, m)| {
            let recipe = table.get("recipe").and_then(|r| r.get_ref().as_table());
            let at = recipe
                .and_then(|r| key_offset(r, field))
                .or_else(|| key_offset(table, "recipe"))
                .unwrap_or(start);
            in_local((at, format!("recipe: {m}")))
        })?;
        if let Some(u) = &img.good_update {
            u.check().map_err(|(field, m)| {
                let t = table
                    .get("good_update")
                    .and_then(|r| r.get_ref().as_table());
                let at = t
                    .and_then(|t| key_offset(t, field))
                    .or_else(|| key_offset(table, "good_update"))
                    .unwrap_or(start);
                in_local((at, format!("good_update: {m}")))
            })?;
        }
        img.line = line_of(text, start);
        if out.iter().any(|i| i.name == img.name) {
            return Err(err((
                start,
                format!("local image {name:?} is defined twice"),
            )));
        }
        out.push(img);
    }
    Ok(out)
}

/// Every image bootwatch knows by name.
#[derive(Debug, Clone)]
pub struct Registry {
    pub catalog: catalog::Catalog,
    pub locals: Vec<LocalImage>,
}

/// One named image.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    Vendor(&'a CatalogImage),
    Local(&'a LocalImage),
}

impl Entry<'_> {
    pub fn name(&self) -> &str {
        match self {
            Entry::Vendor(i) => &i.name,
            Entry::Local(i) => &i.name,
        }
    }

    pub fn guest(&self) -> &GuestTraits {
        match self {
            Entry::Vendor(i) => &i.guest,
            Entry::Local(i) => &i.guest,
        }
    }
}

impl Registry {
    /// The registry to use: the catalog file named by `BOOTWATCH_CATALOG` when set (so users can
    /// add or pin their own images), else the shipped one; the shipped local recipes.
    pub fn load() -> Result<Registry, CatalogError> {
        let catalog = match std::env::var_os("BOOTWATCH_CATALOG") {
            Some(p) => catalog::Catalog::load(std::path::Path::new(&p))?,
            None => catalog::Catalog::builtin(),
        };
        let locals = parse_local(BUILTIN_LOCAL, BUILTIN_LOCAL_NAME)?;
        Ok(Registry { catalog, locals })
    }

    /// The catalog and recipes compiled into bootwatch.
    pub fn builtin() -> Registry {
        Registry {
            catalog: catalog::Catalog::builtin(),
            locals: parse_local(BUILTIN_LOCAL, BUILTIN_LOCAL_NAME)
                .expect("the shipped recipes are valid (tested)"),
        }
    }

    pub fn get(&self, name: &str) -> Option<Entry<'_>> {
        if let Some(i) = self.catalog.get(name) {
            return Some(Entry::Vendor(i));
        }
        self.locals
            .iter()
            .find(|l| l.name == name)
            .map(Entry::Local)
    }

    pub fn names(&self) -> Vec<&str> {
        self.catalog
            .images
            .iter()
            .map(|i| i.name.as_str())
            .chain(self.locals.iter().map(|l| l.name.as_str()))
            .collect()
    }
}

/// What `images list` shows of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageStatus {
    pub name: String,
    /// `vendor` or `local`.
    pub kind: &'static str,
    pub description: String,
    pub reported: catalog::Reported,
    pub report_note: String,
    pub login_user: String,
    pub package_manager: catalog::PackageManager,
    /// `cached`, `partial` or `absent` (vendor); `built` or `not-built` (local).
    pub state: String,
    pub path: Option<std::path::PathBuf>,
    pub size: Option<u64>,
    /// How the image is verified, and what could be checked from where it was researched.
    pub verification: String,
    pub url: Option<String>,
    pub sha256: Option<String>,
}

impl Registry {
    /// The state of every image in the cache under `cache_root`.
    pub fn status(&self, cache_root: &std::path::Path) -> Vec<ImageStatus> {
        let cache = cache::ImageCache::new(&cache_root.join("images"));
        let mut out = Vec::new();
        for i in &self.catalog.images {
            let (state, path, size) = match cache.state(&fetch_request(i)) {
                cache::CacheState::Cached { path, size } => ("cached", Some(path), Some(size)),
                cache::CacheState::Partial { bytes } => ("partial", None, Some(bytes)),
                cache::CacheState::Absent => ("absent", None, None),
            };
            out.push(ImageStatus {
                name: i.name.clone(),
                kind: "vendor",
                description: format!(
                    "{} {} ({}, {})",
                    i.distro,
                    i.version,
                    i.format_name(),
                    i.image_date
                ),
                reported: i.guest.reported,
                report_note: i.guest.report_note.clone(),
                login_user: i.guest.login_user.clone(),
                package_manager: i.guest.package_manager,
                state: state.into(),
                path,
                size,
                verification: i.verified.clone(),
                url: Some(i.url.clone()),
                sha256: i.sha256.clone(),
            });
        }
        for l in &self.locals {
            let built = debian_build::find_cached(&l.recipe, cache_root)
                .ok()
                .flatten();
            out.push(ImageStatus {
                name: l.name.clone(),
                kind: "local",
                description: l.description.clone(),
                reported: l.guest.reported,
                report_note: l.guest.report_note.clone(),
                login_user: l.guest.login_user.clone(),
                package_manager: l.guest.package_manager,
                state: if built.is_some() {
                    "built"
                } else {
                    "not-built"
                }
                .into(),
                size: built.as_ref().map(|b| b.manifest.disk_bytes),
                sha256: built.as_ref().map(|b| b.manifest.disk_sha256.clone()),
                path: built.map(|b| b.path),
                verification: format!(
                    "built from Debian's archive by recipe {} (hash {})",
                    l.name,
                    l.recipe.hash()
                ),
                url: None,
            });
        }
        out
    }
}

/// The cache request for a vendor image.
pub fn fetch_request(i: &CatalogImage) -> cache::FetchRequest {
    cache::FetchRequest {
        name: i.name.clone(),
        url: i.url.clone(),
        sha256: i.sha256.clone(),
        sha512: i.sha512.clone(),
        checksum_url: i.checksum_url.clone(),
    }
}

impl CatalogImage {
    pub fn format_name(&self) -> &'static str {
        match self.format {
            catalog::ImageFormat::Qcow2 => "qcow2",
            catalog::ImageFormat::Raw => "raw",
        }
    }
}

/// A verified base image on disk, ready for an overlay.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub path: std::path::PathBuf,
    pub sha256: String,
    pub format: catalog::ImageFormat,
    pub guest: GuestTraits,
    /// Where it came from: the vendor's URL, or the local recipe's hash and the mirror it was
    /// built from.
    pub url: Option<String>,
    pub note: String,
    /// Where a vendor image came from, as fetched (None for local images).
    pub source: Option<ImageSource>,
    /// Versions of the image's boot-chain packages, when known (a local image's manifest).
    pub boot_chain: std::collections::BTreeMap<String, String>,
}

impl Resolved {
    /// The record `case.json` keeps of this image.
    pub fn input_record(&self) -> crate::engine::record::InputRecord {
        crate::engine::record::InputRecord {
            provider: Some(format!("image:{}", self.name)),
            sha256: Some(self.sha256.clone()),
            url: self.url.clone(),
            note: self.note.clone(),
            ..crate::engine::record::InputRecord::new("image", &self.path)
        }
    }
}

/// Where a vendor image's file came from, for the run's record (`provision.source`): above all
/// what a newest-build entry resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The file's URL (for a newest-build entry, the build it resolved to).
    pub url: String,
    /// The file name at that URL.
    pub file: String,
    /// The checksum file the digest came from, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_url: Option<String>,
    /// The build a newest-build entry resolved to (e.g. `20250428.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// The format `qemu-img info` found in the file (checked against the catalog's).
    pub format: String,
    /// The catalog entry (`file:line`).
    pub entry: String,
}

/// Makes `entry` available: a vendor image is fetched (a no-op when cached), a local recipe built
/// (a no-op when built). `mirror` is only needed to build. Download progress and build phases
/// go to `events`. When `cancel` fires, a download is abandoned (its partial file stays for the next
/// fetch to resume) and a build is stopped and removed; either way an error is returned.
pub async fn resolve(
    entry: Entry<'_>,
    cache_root: &std::path::Path,
    mirror: Option<&str>,
    cancel: &CancellationToken,
    events: &EventSink,
) -> anyhow::Result<Resolved> {
    match entry {
        Entry::Vendor(i) => {
            let cache = cache::ImageCache::new(&cache_root.join("images"));
            let opts = cache::FetchOptions {
                progress: events.is_connected().then(|| -> cache::ProgressSink {
                    let events = events.clone();
                    Arc::new(move |p| {
                        events.emit(Event::Download {
                            name: p.name,
                            bytes: p.bytes,
                            total: p.total,
                        })
                    })
                }),
                ..Default::default()
            };
            let request = fetch_request(i);
            let got = tokio::select! {
                r = cache.fetch(&request, &opts) => r.map_err(|e| vendor_error(i, e))?,
                _ = cancel.cancelled() => anyhow::bail!("cancelled while downloading {}", i.name),
            };
            let format = check_format(i, &got.path).await?;
            Ok(Resolved {
                name: i.name.clone(),
                sha256: got.sha256,
                format: i.format,
                guest: i.guest.clone(),
                url: Some(got.url.clone()),
                note: String::new(),
                source: Some(ImageSource {
                    file: got.url.rsplit('/').next().unwrap_or_default().to_string(),
                    url: got.url,
                    checksum_url: (i.sha256.is_none() && i.sha512.is_none())
                        .then(|| i.checksum_url.clone())
                        .flatten(),
                    build: got.build,
                    format,
                    entry: i.location(),
                }),
                path: got.path,
                boot_chain: Default::default(),
            })
        }
        Entry::Local(l) => {
            let built = match debian_build::find_cached(&l.recipe, cache_root)? {
                Some(b) => b,
                None => {
                    let mirror = crate::inputs::debian::resolve_mirror(mirror)?;
                    let report = |p| events.emit(build_event(p));
                    debian_build::build(&l.recipe, &mirror, cache_root, cancel, &report).await?
                }
            };
            Ok(Resolved {
                name: l.name.clone(),
                path: built.path,
                sha256: built.manifest.disk_sha256.clone(),
                format: catalog::ImageFormat::Qcow2,
                guest: l.guest.clone(),
                url: None,
                note: format!(
                    "local recipe {}, built by bootwatch {} from Debian's archive {} (recipe hash {})",
                    l.name,
                    built.manifest.builder_version,
                    built.manifest.mirror,
                    built.manifest.hash
                ),
                source: None,
                boot_chain: built.manifest.boot_chain.clone(),
            })
        }
    }
}

/// A fetch error of a vendor image, told as what to do about its catalog entry when the entry
/// is what is wrong (its file is gone, its checksum file does not list it).
fn vendor_error(i: &CatalogImage, e: cache::FetchError) -> anyhow::Error {
    use cache::FetchError as F;
    let gone = match &e {
        F::NotFound { .. } => true,
        F::ChecksumFile { reason, .. } => reason.contains("404") || reason.starts_with("lists no"),
        _ => false,
    };
    if !gone {
        return e.into();
    }
    let fix = if i.resolves_newest() {
        "update its url and checksum_url to where the vendor publishes the builds now"
    } else {
        "update its url (and sha256/sha512) to a location that still has this build, or to a \
         newer build"
    };
    anyhow::anyhow!(
        "catalog entry {:?} ({}) is out of date: {e}. {fix}; the catalog is {} (BOOTWATCH_CATALOG \
         can point at a corrected copy)",
        i.name,
        i.location(),
        i.file
    )
}

/// The file's real format (`qemu-img info`), which must be the catalog's: a `.qcow` or `.img`
/// name says nothing, and booting a qcow2 as raw (or the reverse) would not boot, or would let
/// the image name a backing file. A downloaded image must not have a backing file at all.
async fn check_format(i: &CatalogImage, path: &std::path::Path) -> anyhow::Result<String> {
    let qemu_img = overlay::qemu_img()?;
    let info = overlay::info(&qemu_img, path).await.map_err(|e| {
        anyhow::anyhow!("image {}: qemu-img info {}: {e:#}", i.name, path.display())
    })?;
    let found = info["format"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(
        found == i.format_name(),
        "image {} ({}): the file is {found:?} according to qemu-img info, but the catalog says \
         {:?}; fix the entry's format",
        i.name,
        i.location(),
        i.format_name()
    );
    if let Some(backing) = info["backing-filename"].as_str() {
        anyhow::bail!(
            "image {} ({}): the downloaded file names a backing file ({backing:?}); refusing it",
            i.name,
            i.location()
        );
    }
    Ok(found)
}

/// A build's progress as an event.
fn build_event(p: debian_build::BuildProgress) -> Event {
    use debian_build::BuildProgress as B;
    match p {
        B::Started { image, log } => Event::Build {
            what: image,
            phase: format!("building (minutes; log: {})", log.display()),
            elapsed_s: 0.0,
            done: false,
        },
        B::PhaseStarted {
            image,
            phase,
            elapsed,
        } => Event::Build {
            what: image,
            phase: phase.to_string(),
            elapsed_s: elapsed.as_secs_f64(),
            done: false,
        },
        B::PhaseDone {
            image,
            phase,
            elapsed,
            ..
        } => Event::Build {
            what: image,
            phase: phase.to_string(),
            elapsed_s: elapsed.as_secs_f64(),
            done: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_recipes_parse_and_names_are_unique_across_both_files() {
        let r = Registry::builtin();
        let local = r
            .locals
            .iter()
            .find(|l| l.name == "debian-12-local")
            .expect("debian-12-local");
        assert_eq!(local.recipe.suite, "bookworm");
        assert_eq!(local.recipe.name, "debian-12-local");
        assert!(local.recipe.pins.contains_key("grub-efi-arm64-signed"));
        let mut names = r.names();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            n,
            "a name is both a vendor image and a local recipe"
        );
        assert!(matches!(r.get("debian-12-local"), Some(Entry::Local(_))));
        assert!(matches!(r.get("fedora-39"), Some(Entry::Vendor(_))));
        assert!(r.get("no-such-image").is_none());
    }

    #[test]
    fn bad_recipes_name_file_and_line() {
        let text = "\n[[local]]\nname = \"x\"\ndescription = \"\"\nlogin_user = \"u\"\nprovision = \"cloud-init\"\n\
                    package_manager = \"apt\"\nupgrade_command = \"u\"\npackage_query = \"q\"\n\
                    bootloader_packages = []\nreported = \"unaffected\"\nreport_note = \"\"\n[local.recipe]\nsuite = \"bookworm\"\n";
        assert!(parse_local(text, "l.toml").is_ok());
        let e = parse_local(
            &text.replace("suite = \"bookworm\"", "suite = \"bookworm; rm -rf /\""),
            "l.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 14, "{e}");
        assert!(e.message.contains("suite"), "{e}");
        let e = parse_local(
            &text.replace("[local.recipe]", "flavour = 1\n[local.recipe]"),
            "l.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("flavour"), "{e}");
        let e = parse_local(
            &text.replace("suite = \"bookworm\"", "suite = \"bookworm\"\nsize = 3"),
            "l.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("size") && e.line == 15, "{e}");
    }

    /// Every number a local recipe takes, with values no build can use: each refused at the
    /// line of its key, naming it, without a panic.
    #[test]
    fn recipe_numbers_out_of_range_name_their_key_and_line() {
        let text = "\n[[local]]\nname = \"x\"\ndescription = \"\"\nlogin_user = \"u\"\nprovision = \"cloud-init\"\n\
                    package_manager = \"apt\"\nupgrade_command = \"u\"\npackage_query = \"q\"\n\
                    bootloader_packages = []\nreported = \"unaffected\"\nreport_note = \"\"\n[local.recipe]\nsuite = \"bookworm\"\n";
        let hostile = [
            "inf",
            "-inf",
            "nan",
            "-1",
            "1e30",
            "1.8e19",
            "18446744073709551616",
            "9223372036854775807",
            "\"5\"",
        ];
        for (key, extra_bad) in [
            ("disk_size_mib", &["0", "1000", "2097153"][..]),
            ("esp_size_mib", &["0", "63", "4097"][..]),
            ("grub_timeout_secs", &["601", "4294967296"][..]),
        ] {
            for bad in hostile.iter().chain(extra_bad) {
                let e = parse_local(&format!("{text}{key} = {bad}\n"), "l.toml").unwrap_err();
                assert!(
                    e.line == 15 && e.message.contains(key),
                    "{key} = {bad}: {e}"
                );
            }
        }
        // A number where the guest's text belongs, also at its line.
        let e = parse_local(
            &text.replace("login_user = \"u\"", "login_user = 1e30"),
            "l.toml",
        )
        .unwrap_err();
        assert!(e.line == 5 && e.message.contains("login_user"), "{e}");
        let ok = parse_local(
            &format!("{text}disk_size_mib = 5120\nesp_size_mib = 4096\ngrub_timeout_secs = 0\n"),
            "l.toml",
        )
        .unwrap();
        assert_eq!(ok[0].recipe.esp_size_mib, 4096);
        assert_eq!(ok[0].recipe.grub_timeout_secs, 0);
    }

    /// A downloaded file's real format decides, not its name: Oracle's `.qcow` file must be
    /// qcow2 as the catalog says; a raw file under that name, or a qcow2 that names a backing
    /// file, is refused naming the entry.
    #[tokio::test]
    async fn the_real_format_is_checked_with_qemu_img() {
        let qemu_img = overlay::qemu_img().expect("qemu-img is required (install qemu-utils)");
        let dir = tempfile::tempdir().unwrap();
        let entry = |format: catalog::ImageFormat| CatalogImage {
            format,
            ..Registry::builtin()
                .catalog
                .get("oraclelinux-9.3")
                .unwrap()
                .clone()
        };
        let run = |args: &[&str]| {
            let st = std::process::Command::new(&qemu_img)
                .args(args)
                .current_dir(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "qemu-img {args:?}");
        };
        run(&["create", "-q", "-f", "qcow2", "image.qcow", "16M"]);
        run(&["create", "-q", "-f", "raw", "raw.qcow", "16M"]);
        run(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "image.qcow",
            "backed.qcow",
        ]);
        let path = |n: &str| dir.path().join(n);
        let qcow2 = entry(catalog::ImageFormat::Qcow2);
        assert_eq!(
            check_format(&qcow2, &path("image.qcow")).await.unwrap(),
            "qcow2"
        );
        let e = check_format(&qcow2, &path("raw.qcow"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("oraclelinux-9.3") && e.contains("catalog.toml:") && e.contains("\"raw\""),
            "{e}"
        );
        let e = check_format(&entry(catalog::ImageFormat::Raw), &path("image.qcow"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"qcow2\"") && e.contains("fix the entry's format"),
            "{e}"
        );
        let e = check_format(&qcow2, &path("backed.qcow"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("backing file"), "{e}");
    }

    #[test]
    fn a_gone_file_names_the_catalog_entry_to_update() {
        let r = Registry::builtin();
        let i = r.catalog.get("centos-stream-9-20240429").unwrap();
        let e = vendor_error(
            i,
            cache::FetchError::NotFound {
                name: i.name.clone(),
                url: i.url.clone(),
            },
        )
        .to_string();
        assert!(
            e.starts_with("catalog entry \"centos-stream-9-20240429\" (guest-images/catalog.toml:")
                && e.contains("HTTP 404")
                && e.contains("update its url"),
            "{e}"
        );
        // Other failures are told as they are.
        let e = vendor_error(
            i,
            cache::FetchError::Network {
                name: i.name.clone(),
                url: i.url.clone(),
                reason: "connection refused".into(),
            },
        )
        .to_string();
        assert!(!e.contains("out of date"), "{e}");
    }
}
