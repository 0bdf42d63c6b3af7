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
    /// The user bootwatch logs in as. bootwatch's cloud-init seed creates it (with a random
    /// password) whatever the image's own default user is, so this is a choice, not a guess
    /// about the image: the vendor's default user where it is documented, else
    /// [`SEEDED_USER`] (the default when the entry names none).
    #[serde(default = "seeded_user")]
    pub login_user: String,
    pub provision: String,
    pub package_manager: PackageManager,
    pub upgrade_command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub package_query: String,
    /// The packages that make up the boot chain, by name. Not all need be installed: the
    /// `--exclude-bootloader` workaround holds (apt) or excludes (dnf) those that are, and a
    /// failed boot's suspects are those of them the upgrade changed.
    pub bootloader_packages: Vec<String>,
    pub reported: Reported,
    pub report_note: String,
}

fn seeded_user() -> String {
    SEEDED_USER.into()
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
    /// The catalog file it was read from (for errors that tell which entry to update).
    #[serde(skip)]
    pub file: String,
}

/// The placeholder in a catalog URL that stands for "the newest build the vendor's checksum file
/// lists" (resolved at fetch time; see [`CatalogImage::resolves_newest`]).
pub const BUILD_PLACEHOLDER: &str = "{build}";

/// The user bootwatch has cloud-init create when an entry names none (see
/// [`GuestTraits::login_user`]).
pub const SEEDED_USER: &str = "bootwatch";

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
    "package_query",
    "bootloader_packages",
    "reported",
    "report_note",
];

/// Keys earlier versions of the catalog had, with why they are gone (a file still carrying one
/// is told what to do instead of being told the key is unknown).
pub const RETIRED_KEYS: &[(&str, &str)] = &[(
    "exclude_bootloader",
    "no longer read: `--exclude-bootloader` holds (apt) or excludes (dnf) the installed \
     packages of bootloader_packages, so remove this line",
)];

/// The first retired key of `table`: its offset and what to do about it.
pub fn retired_key(table: &Doc<'_>) -> Option<(usize, String)> {
    RETIRED_KEYS
        .iter()
        .find_map(|(key, why)| key_offset(table, key).map(|at| (at, format!("`{key}` is {why}"))))
}

/// A TOML document with the span of every key and value, so that a problem found after
/// parsing can still point at its line.
pub type Doc<'i> = toml::de::DeTable<'i>;
/// One spanned value of a [`Doc`].
pub type DocValue<'i> = toml::Spanned<toml::de::DeValue<'i>>;

/// Parses `text` as a spanned document; the error is located at its byte offset.
pub fn parse_doc(text: &str) -> Result<Doc<'_>, (usize, String)> {
    toml::de::DeTable::parse(text)
        .map(toml::Spanned::into_inner)
        .map_err(|e| toml_error(text, &e))
}

/// The first key of `table` not in `allowed` (a misspelt key must not be silently ignored):
/// its offset and a message naming it.
pub fn unknown_key(table: &Doc<'_>, allowed: &[&str]) -> Option<(usize, String)> {
    table
        .keys()
        .find(|k| !allowed.contains(&k.get_ref().as_ref()))
        .map(|k| {
            (
                k.span().start,
                format!(
                    "unknown field `{}`, expected one of {}",
                    k.get_ref(),
                    allowed.join(", ")
                ),
            )
        })
}

/// The tables of the array `key` (`[[key]]`) of a document whose only top-level key is `key`.
pub fn tables_of<'a, 'i>(
    doc: &'a Doc<'i>,
    key: &str,
) -> Result<Vec<&'a DocValue<'i>>, (usize, String)> {
    if let Some(bad) = unknown_key(doc, &[key]) {
        return Err(bad);
    }
    let Some(v) = doc.get(key) else {
        return Ok(Vec::new());
    };
    let not_tables = || {
        (
            v.span().start,
            format!("`{key}` must be an array of tables ([[{key}]])"),
        )
    };
    let array = v.get_ref().as_array().ok_or_else(not_tables)?;
    array
        .iter()
        .map(|t| {
            if t.get_ref().is_table() {
                Ok(t)
            } else {
                Err(not_tables())
            }
        })
        .collect()
}

/// Deserializes one spanned value; a problem is located at the offending value when toml knows
/// it, else at `fallback`.
pub fn from_doc<T: serde::de::DeserializeOwned>(
    text: &str,
    v: &DocValue<'_>,
    fallback: usize,
) -> Result<T, (usize, String)> {
    use serde::de::IntoDeserializer;
    T::deserialize(v.clone().into_deserializer()).map_err(|e| {
        let (at, m) = toml_error(text, &e);
        (if e.span().is_some() { at } else { fallback }, m)
    })
}

/// The offset of `key` in `table` (of its key, so the line is the one that names it), if there.
pub fn key_offset(table: &Doc<'_>, key: &str) -> Option<usize> {
    table.get_key_value(key).map(|(k, _)| k.span().start)
}

/// A TOML error as the offset it points at and a message. toml's message for a bad value does
/// not name its key (`invalid value: integer `-1`, expected u32`), so the line it points at is
/// quoted after it; without a span, toml's full text names the key path instead.
pub fn toml_error(text: &str, e: &toml::de::Error) -> (usize, String) {
    match e.span() {
        Some(span) => {
            let line = line_text(text, span.start);
            let message = e.message().trim();
            // A table header says nothing the line number does not.
            if line.starts_with('[') || line.is_empty() {
                (span.start, message.to_string())
            } else {
                (span.start, format!("{message} (at `{line}`)"))
            }
        }
        None => (0, e.to_string().trim().replace('\n', " ")),
    }
}

/// The line holding byte `offset`, trimmed and cut to 80 characters, with control characters
/// escaped: for quoting in an error message.
pub fn line_text(text: &str, offset: usize) -> String {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[start..end].trim();
    let mut out = String::new();
    for c in line.chars().take(80) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if line.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A catalog problem, located.
#[derive(Debug, thiserror::Error)]
#[error("{}", located(file, *line, message))]
pub struct CatalogError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole (it cannot be read).
    pub line: usize,
    pub message: String,
}

/// `file:line: message`, or `file: message` for a problem with no line.
pub fn located(file: &str, line: usize, message: &str) -> String {
    if line == 0 {
        format!("{file}: {message}")
    } else {
        format!("{file}:{line}: {message}")
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub source: String,
    pub images: Vec<CatalogImage>,
}

impl CatalogImage {
    /// Whether the url names the newest build ([`BUILD_PLACEHOLDER`]), resolved through the
    /// checksum file at fetch time, rather than one pinned file.
    pub fn resolves_newest(&self) -> bool {
        self.url.contains(BUILD_PLACEHOLDER)
    }

    /// `file:line` of the entry, for messages that say which entry to update.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN_CATALOG, BUILTIN_CATALOG_NAME)
            .expect("the shipped catalog is valid (tested)")
    }

    /// Reads a catalog file (at most [`crate::sys::fsx::INPUT_LIMIT`] bytes, a regular file).
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text =
            crate::sys::fsx::read_input(path, crate::sys::fsx::INPUT_LIMIT).map_err(|e| {
                CatalogError {
                    file: path.display().to_string(),
                    line: 0,
                    message: e.to_string(),
                }
            })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a catalog; `file` names it in errors, each at the line of its key.
    pub fn parse(text: &str, file: &str) -> Result<Catalog, CatalogError> {
        let err = |(offset, message): (usize, String)| CatalogError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        let doc = parse_doc(text).map_err(err)?;
        let mut images: Vec<CatalogImage> = Vec::new();
        for entry in tables_of(&doc, "image").map_err(err)? {
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
            let in_image = |(at, m): (usize, String)| err((at, format!("image {name:?}: {m}")));
            if let Some(bad) = retired_key(table).or_else(|| unknown_key(table, IMAGE_KEYS)) {
                return Err(in_image(bad));
            }
            // The guest's fields first on their own: through `flatten`, a bad value would be
            // located at the table, not at its key.
            from_doc::<GuestTraits>(text, entry, start).map_err(in_image)?;
            let mut img: CatalogImage = from_doc(text, entry, start).map_err(in_image)?;
            img.line = line_of(text, start);
            img.file = file.into();
            check_image(&img)
                .map_err(|(field, m)| in_image((key_offset(table, field).unwrap_or(start), m)))?;
            if images.iter().any(|i| i.name == img.name) {
                return Err(err((start, format!("image {name:?} is defined twice"))));
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

/// Checks what the types do not; a problem comes with the field it is about.
fn check_image(i: &CatalogImage) -> Result<(), (&'static str, String)> {
    if i.name.is_empty()
        || !i
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err((
            "name",
            "name must be lowercase letters, digits, '-' and '.'".into(),
        ));
    }
    if i.arch != "aarch64" {
        return Err((
            "arch",
            format!("arch {:?}: only aarch64 images belong here", i.arch),
        ));
    }
    if !(i.url.starts_with("https://") || i.url.starts_with("http://")) {
        return Err(("url", format!("url {:?} is not an http(s) URL", i.url)));
    }
    let file_name = i.url.rsplit('/').next().unwrap_or_default();
    match i.url.matches(BUILD_PLACEHOLDER).count() {
        0 => {}
        1 if file_name.contains(BUILD_PLACEHOLDER) => {
            // The newest build: only the checksum file can say which it is and what it hashes
            // to, so it must be there, over HTTPS, and no fixed digest can apply.
            match &i.checksum_url {
                Some(c) if c.starts_with("https://") => {}
                Some(_) => {
                    return Err((
                        "checksum_url",
                        "checksum_url must be https:// when the url resolves the newest build \
                         (the checksum file is then the only source of the image's hash)"
                            .into(),
                    ));
                }
                None => {
                    return Err((
                        "url",
                        format!(
                            "url has {BUILD_PLACEHOLDER} (the newest build) but no checksum_url \
                             to resolve it from"
                        ),
                    ));
                }
            }
            if i.sha256.is_some() || i.sha512.is_some() {
                return Err((
                    if i.sha256.is_some() {
                        "sha256"
                    } else {
                        "sha512"
                    },
                    format!(
                        "a fixed digest cannot verify the newest build ({BUILD_PLACEHOLDER} in \
                         url): remove it, or pin the url to one build"
                    ),
                ));
            }
        }
        _ => {
            return Err((
                "url",
                format!("{BUILD_PLACEHOLDER} may appear once, in the url's file name"),
            ));
        }
    }
    // Over plain HTTP only a digest pinned here protects the content: a checksum file fetched
    // the same way could be changed along with the image.
    if i.url.starts_with("http://") && i.sha256.is_none() && i.sha512.is_none() {
        return Err((
            "url",
            format!(
                "url {:?} is plain HTTP: pin the image's sha256 (or sha512) here, a checksum \
                 file fetched over HTTP does not protect it",
                i.url
            ),
        ));
    }
    let lower = i.url.to_ascii_lowercase();
    if ["/latest/", "-latest.", "/current/"]
        .iter()
        .any(|m| lower.contains(m))
    {
        return Err((
            "url",
            format!("url {:?} is a moving link; pin a versioned file", i.url),
        ));
    }
    let hex = |v: &Option<String>, len: usize, field: &'static str| match v {
        Some(h)
            if h.len() != len
                || !h
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) =>
        {
            Err((field, format!("{field} must be {len} lowercase hex digits")))
        }
        _ => Ok(()),
    };
    hex(&i.sha256, 64, "sha256")?;
    hex(&i.sha512, 128, "sha512")?;
    if i.sha256.is_none() && i.sha512.is_none() && i.checksum_url.is_none() {
        // About the entry as a whole: located at its table.
        return Err((
            "",
            "no way to verify it: give sha256, sha512 or checksum_url".into(),
        ));
    }
    for (field, v) in [
        ("login_user", &i.guest.login_user),
        ("upgrade_command", &i.guest.upgrade_command),
        ("package_query", &i.guest.package_query),
    ] {
        if v.is_empty() {
            return Err((field, format!("{field} must not be empty")));
        }
    }
    if !is_user_name(&i.guest.login_user) {
        return Err((
            "login_user",
            format!(
                "login_user {:?} is not a user name cloud-init can create (lowercase letters, \
                 digits, '_' and '-', starting with a letter or '_', at most 32)",
                i.guest.login_user
            ),
        ));
    }
    if i.guest.provision != "cloud-init" {
        return Err((
            "provision",
            format!(
                "provision {:?}: only \"cloud-init\" is supported",
                i.guest.provision
            ),
        ));
    }
    Ok(())
}

/// A portable user name (what `useradd` accepts everywhere), typed at the login prompt.
pub fn is_user_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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
            "centos-stream-9-20240429",
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
                i.sha256.is_some() || i.sha512.is_some() || i.resolves_newest(),
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
             package_query = \"rpm -qa\"\nbootloader_packages = []\nreported = \"affected\"\n\
             report_note = \"\"\nimage_date = \"2024-01-01\"\nverified = \"no\"\n{extra}",
            "a".repeat(64)
        )
    }

    #[test]
    fn errors_name_file_and_line() {
        assert!(Catalog::parse(&entry(""), "c.toml").is_ok());
        // A misspelt key is located at itself; a missing one at its table.
        let e = Catalog::parse(&entry("colour = \"red\"\n"), "c.toml").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("c.toml", 21), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        let missing = entry("").replace("package_query = \"rpm -qa\"\n", "");
        let e = Catalog::parse(&missing, "c.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("c.toml:3: image \"x\"")
                && e.message.contains("package_query"),
            "{e}"
        );
        let bad_hash = entry("").replace(&"a".repeat(64), "xyz");
        let e = Catalog::parse(&bad_hash, "c.toml").unwrap_err();
        assert!(e.message.contains("sha256") && e.line == 9, "{e}");
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
        // Numbers where text belongs, each at its line with its key.
        for bad in ["inf", "nan", "-1", "1e30", "18446744073709551616"] {
            let e = Catalog::parse(
                &entry("").replace("version = \"1\"", &format!("version = {bad}")),
                "c.toml",
            )
            .unwrap_err();
            assert!(e.line == 6 && e.message.contains("version"), "{bad}: {e}");
        }
        let e = Catalog::parse("image = 5\n", "c.toml").unwrap_err();
        assert!(e.message.contains("array of tables"), "{e}");
        let e = Catalog::parse("images = []\n", "c.toml").unwrap_err();
        assert!(e.message.contains("unknown field `images`"), "{e}");
        assert!(Catalog::parse("", "c.toml").unwrap().images.is_empty());
        let twice = format!("{}{}", entry(""), entry("").replace("# comment\n", ""));
        assert!(
            Catalog::parse(&twice, "c.toml")
                .unwrap_err()
                .message
                .contains("defined twice")
        );
    }

    #[test]
    fn a_retired_key_says_what_to_do() {
        let e = Catalog::parse(
            &entry("exclude_bootloader = \"apt-mark hold shim-signed\"\n"),
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, 21, "{e}");
        assert!(
            e.message.contains("exclude_bootloader")
                && e.message.contains("bootloader_packages")
                && !e.message.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn login_user_defaults_to_the_seeded_user_and_must_be_a_user_name() {
        let c = Catalog::parse(&entry("").replace("login_user = \"u\"\n", ""), "c.toml").unwrap();
        assert_eq!(c.images[0].guest.login_user, SEEDED_USER);
        for bad in ["Root", "a b", "", "9lives", "x;reboot"] {
            let e = Catalog::parse(
                &entry("").replace("login_user = \"u\"", &format!("login_user = {bad:?}")),
                "c.toml",
            )
            .unwrap_err();
            assert!(
                e.line == 11 && e.message.contains("login_user"),
                "{bad:?}: {e}"
            );
        }
        // The shipped Oracle entries leave it to the seed.
        let shipped = Catalog::builtin();
        for name in ["oraclelinux-9.4", "oraclelinux-9.3"] {
            assert_eq!(shipped.get(name).unwrap().guest.login_user, SEEDED_USER);
        }
    }

    #[test]
    fn newest_build_entries_and_plain_http_urls() {
        let sha = format!("sha256 = \"{}\"\n", "a".repeat(64));
        let newest = entry("")
            .replace(
                &sha,
                "checksum_url = \"https://example.invalid/CHECKSUM\"\n",
            )
            .replace("x-20240101.qcow2", "x-{build}.qcow2");
        let c = Catalog::parse(&newest, "c.toml").unwrap();
        assert!(c.images[0].resolves_newest());
        assert_eq!(c.images[0].location(), "c.toml:3");
        // A fixed digest cannot verify whatever the newest build is.
        let e = Catalog::parse(&format!("{newest}{sha}"), "c.toml").unwrap_err();
        assert!(e.message.contains("newest build"), "{e}");
        // Without a checksum file there is nothing to resolve it from.
        let e = Catalog::parse(
            &newest.replace("checksum_url = \"https://example.invalid/CHECKSUM\"\n", ""),
            "c.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("checksum_url"), "{e}");
        // Over plain HTTP the checksum file protects nothing.
        let e = Catalog::parse(
            &newest.replace(
                "https://example.invalid/CHECKSUM",
                "http://example.invalid/CHECKSUM",
            ),
            "c.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("https"), "{e}");
        let e = Catalog::parse(&newest.replace("x-{build}", "{build}/x-{build}"), "c.toml")
            .unwrap_err();
        assert!(e.message.contains("once"), "{e}");
        // A plain-HTTP url with a pinned digest is fine; without one it is refused.
        let http = entry("").replace("https://example.invalid/", "http://example.invalid/");
        assert!(Catalog::parse(&http, "c.toml").is_ok());
        let e = Catalog::parse(
            &http.replace(&sha, "checksum_url = \"http://example.invalid/SUMS\"\n"),
            "c.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("plain HTTP"), "{e}");
        // The shipped entries: CentOS Stream 9 resolves its newest build over HTTPS; the
        // Ubuntu archive entries are plain HTTP with a pinned sha256.
        let shipped = Catalog::builtin();
        let centos = shipped.get("centos-stream-9").unwrap();
        assert!(centos.resolves_newest() && centos.sha256.is_none());
        assert!(
            !shipped
                .get("centos-stream-9-20240429")
                .unwrap()
                .resolves_newest()
        );
        for name in ["ubuntu-22.04", "ubuntu-24.04"] {
            let u = shipped.get(name).unwrap();
            assert!(
                u.url
                    .starts_with("http://cloud-images-archive.ubuntu.com/releases/")
                    && u.sha256.is_some(),
                "{name}: {}",
                u.url
            );
        }
    }
}
