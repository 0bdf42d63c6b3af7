//! The image catalog (`guest-images/catalog.toml`): vendor cloud images as data, parsed into
//! checked types. Every error names the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The catalog shipped with bootwatch (also readable from a file with `Catalog::load`).
pub const BUILTIN_CATALOG: &str = include_str!("../../../../guest-images/catalog.toml");
pub const BUILTIN_CATALOG_NAME: &str = "guest-images/catalog.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Dnf,
    Apt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reported {
    Affected,
    Unaffected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

/// What every guest image declares, vendor or local: how to log in, provision and upgrade it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestTraits {
    pub login_user: String,
    pub provision: String,
    pub package_manager: PackageManager,
    pub upgrade_command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub exclude_bootloader: String,
    pub package_query: String,
    pub bootloader_packages: Vec<String>,
    pub reported: Reported,
    pub report_note: String,
}

/// One vendor image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogImage {
    pub name: String,
    pub distro: String,
    pub version: String,
    pub arch: String,
    pub url: String,
    pub sha256: Option<String>,
    pub sha512: Option<String>,
    pub checksum_url: Option<String>,
    pub format: ImageFormat,
    #[serde(flatten)]
    pub guest: GuestTraits,
    pub image_date: String,
    pub verified: String,
    /// Line of the `[[image]]` table in the catalog file.
    #[serde(skip)]
    pub line: usize,
}

/// The keys an `[[image]]` table may have (serde cannot deny unknown fields through `flatten`).
const IMAGE_KEYS: &[&str] = &[
    "name",
    "distro",
    "version",
    "arch",
    "url",
    "sha256",
    "sha512",
    "checksum_url",
    "format",
    "image_date",
    "verified",
    "login_user",
    "provision",
    "package_manager",
    "upgrade_command",
    "env",
    "exclude_bootloader",
    "package_query",
    "bootloader_packages",
    "reported",
    "report_note",
];

/// Rejects keys not in `allowed` (a misspelt key must not be silently ignored).
pub fn check_keys(table: &toml::Table, allowed: &[&str]) -> Result<(), String> {
    match table.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown field `{k}`, expected one of {}",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    image: Vec<toml::Spanned<toml::Table>>,
}

/// A catalog problem, located.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CatalogError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub source: String,
    pub images: Vec<CatalogImage>,
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN_CATALOG, BUILTIN_CATALOG_NAME)
            .expect("the shipped catalog is valid (tested)")
    }

    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError {
            file: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a catalog; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Catalog, CatalogError> {
        let err = |offset: usize, message: String| CatalogError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawCatalog = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            err(at, e.message().to_string())
        })?;
        let mut images: Vec<CatalogImage> = Vec::new();
        for table in raw.image {
            let start = table.span().start;
            let table = table.into_inner();
            let name = table
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string();
            check_keys(&table, IMAGE_KEYS)
                .map_err(|m| err(start, format!("image {name:?}: {m}")))?;
            let mut img: CatalogImage =
                toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        err(start, format!("image {name:?}: {}", e.message()))
                    })?;
            img.line = line_of(text, start);
            check_image(&img).map_err(|m| err(start, format!("image {name:?}: {m}")))?;
            if images.iter().any(|i| i.name == img.name) {
                return Err(err(start, format!("image {name:?} is defined twice")));
            }
            images.push(img);
        }
        Ok(Catalog {
            source: file.into(),
            images,
        })
    }

    pub fn get(&self, name: &str) -> Option<&CatalogImage> {
        self.images.iter().find(|i| i.name == name)
    }
}

fn check_image(i: &CatalogImage) -> Result<(), String> {
    if i.name.is_empty()
        || !i
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err("name must be lowercase letters, digits, '-' and '.'".into());
    }
    if i.arch != "aarch64" {
        return Err(format!(
            "arch {:?}: only aarch64 images belong here",
            i.arch
        ));
    }
    if !(i.url.starts_with("https://") || i.url.starts_with("http://")) {
        return Err(format!("url {:?} is not an http(s) URL", i.url));
    }
    let lower = i.url.to_ascii_lowercase();
    if ["/latest/", "-latest.", "/current/"]
        .iter()
        .any(|m| lower.contains(m))
    {
        return Err(format!(
            "url {:?} is a moving link; pin a versioned file",
            i.url
        ));
    }
    let hex = |v: &Option<String>, len: usize, field: &str| match v {
        Some(h)
            if h.len() != len
                || !h
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) =>
        {
            Err(format!("{field} must be {len} lowercase hex digits"))
        }
        _ => Ok(()),
    };
    hex(&i.sha256, 64, "sha256")?;
    hex(&i.sha512, 128, "sha512")?;
    if i.sha256.is_none() && i.sha512.is_none() && i.checksum_url.is_none() {
        return Err("no way to verify it: give sha256, sha512 or checksum_url".into());
    }
    if i.guest.login_user.is_empty()
        || i.guest.upgrade_command.is_empty()
        || i.guest.package_query.is_empty()
    {
        return Err("login_user, upgrade_command and package_query must not be empty".into());
    }
    if i.guest.provision != "cloud-init" {
        return Err(format!(
            "provision {:?}: only \"cloud-init\" is supported",
            i.guest.provision
        ));
    }
    Ok(())
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where the repository's `guest-images/` is, for reading local recipes and the catalog from
/// files (the builtin copies are used when it is not found).
pub fn guest_images_dir() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images");
    here.is_dir().then_some(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_parses_and_covers_the_reported_distros() {
        let c = Catalog::builtin();
        for name in [
            "centos-stream-9",
            "rocky-9.4",
            "almalinux-9.4",
            "oraclelinux-9.4",
            "fedora-39",
            "fedora-40",
            "ubuntu-22.04",
            "ubuntu-24.04",
            "debian-11",
            "debian-12",
        ] {
            let i = c.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(i.line > 1);
            assert!(
                i.sha256.is_some() || i.sha512.is_some(),
                "{name}: no digest"
            );
        }
        let affected: Vec<_> = c
            .images
            .iter()
            .filter(|i| i.guest.reported == Reported::Affected)
            .map(|i| i.name.as_str())
            .collect();
        assert!(
            affected.contains(&"centos-stream-9") && affected.contains(&"fedora-39"),
            "{affected:?}"
        );
        assert_eq!(
            c.get("fedora-40").unwrap().guest.reported,
            Reported::Unaffected
        );
    }

    fn entry(extra: &str) -> String {
        format!(
            "# comment\n\n[[image]]\nname = \"x\"\ndistro = \"X\"\nversion = \"1\"\narch = \"aarch64\"\n\
             url = \"https://example.invalid/x-20240101.qcow2\"\nsha256 = \"{}\"\nformat = \"qcow2\"\n\
             login_user = \"u\"\nprovision = \"cloud-init\"\npackage_manager = \"dnf\"\nupgrade_command = \"dnf -y upgrade\"\n\
             exclude_bootloader = \"\"\npackage_query = \"rpm -qa\"\nbootloader_packages = []\nreported = \"affected\"\n\
             report_note = \"\"\nimage_date = \"2024-01-01\"\nverified = \"no\"\n{extra}",
            "a".repeat(64)
        )
    }

    #[test]
    fn errors_name_file_and_line() {
        assert!(Catalog::parse(&entry(""), "c.toml").is_ok());
        let e = Catalog::parse(&entry("colour = \"red\"\n"), "c.toml").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("c.toml", 3), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        let missing = entry("").replace("login_user = \"u\"\n", "");
        let e = Catalog::parse(&missing, "c.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("c.toml:3: image \"x\"") && e.message.contains("login_user"),
            "{e}"
        );
        let bad_hash = entry("").replace(&"a".repeat(64), "xyz");
        assert!(
            Catalog::parse(&bad_hash, "c.toml")
                .unwrap_err()
                .message
                .contains("sha256")
        );
        let latest = entry("").replace("x-20240101.qcow2", "latest/x.qcow2");
        assert!(
            Catalog::parse(&latest, "c.toml")
                .unwrap_err()
                .message
                .contains("moving link")
        );
        let syntax = "[[image]]\nname = \"x\nurl = 1\n";
        let e = Catalog::parse(syntax, "c.toml").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let twice = format!("{}{}", entry(""), entry("").replace("# comment\n", ""));
        assert!(
            Catalog::parse(&twice, "c.toml")
                .unwrap_err()
                .message
                .contains("defined twice")
        );
    }
}
