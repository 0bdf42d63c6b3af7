//! Which Debian archive mirror to use. No archive host is built in: the mirror is given
//! explicitly (`--mirror`, env `BOOTWATCH_MIRROR`, see [`resolve_mirror`]) or read from the
//! host's apt configuration ([`mirror_from_apt`]), both formats parsed by the `apt-sources`
//! crate.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, bail};
use apt_sources::legacy::LegacyRepositories;
use apt_sources::{Repositories, Repository, RepositoryType};

/// Environment variable naming the mirror (used by [`resolve_mirror`]).
pub const MIRROR_ENV: &str = "BOOTWATCH_MIRROR";

/// Plain Debian release names (codenames and aliases) accepted in apt sources.
const DEBIAN_RELEASES: &[&str] = &[
    "buzz",
    "rex",
    "bo",
    "hamm",
    "slink",
    "potato",
    "woody",
    "sarge",
    "etch",
    "lenny",
    "squeeze",
    "wheezy",
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// The mirror to use: `explicit` if given and non-empty, else env `BOOTWATCH_MIRROR` if set and
/// non-empty, else [`mirror_from_apt`] at `/`. Trailing slashes are removed.
pub fn resolve_mirror(explicit: Option<&str>) -> Result<String> {
    if let Some(m) = explicit.map(str::trim).filter(|m| !m.is_empty()) {
        return Ok(trim_mirror(m));
    }
    if let Ok(m) = std::env::var(MIRROR_ENV)
        && !m.trim().is_empty()
    {
        return Ok(trim_mirror(m.trim()));
    }
    mirror_from_apt(Path::new("/"))
}

pub(crate) fn trim_mirror(m: &str) -> String {
    m.trim_end_matches('/').to_owned()
}

/// The Debian archive mirror named by the apt configuration under `root` (usually `/`):
/// the URI of the first enabled `deb` entry, in apt's file order (`etc/apt/sources.list`, then
/// `etc/apt/sources.list.d/*.list` and `*.sources` by name), whose suites include a plain Debian
/// release (a codename like `bookworm` or an alias like `stable`; not `*-security`,
/// `*-updates`, `*-backports`), whose components include `main`, and whose URI is http(s) and
/// not a security mirror. `mirror+file:` URIs are resolved through the named list file (under
/// `root`). Trailing slashes are removed. The error names every file looked at, and why a file
/// or line could not be read.
pub fn mirror_from_apt(root: &Path) -> Result<String> {
    let (found, looked) = first_in_apt(root, usable_uri);
    if let Some(uri) = found {
        return Ok(uri);
    }
    bail!(
        "no usable Debian archive mirror (a `deb` entry for a plain Debian release with `main`, \
         not a security mirror) in the apt configuration; looked at: {}. \
         Pass --mirror URL or set {MIRROR_ENV}",
        looked.join(", ")
    )
}

/// Environment variable naming Debian's security archive (see [`resolve_security_mirror`]).
pub const SECURITY_MIRROR_ENV: &str = "BOOTWATCH_SECURITY_MIRROR";

/// Debian's security archive (`dists/<release>-security`): env `BOOTWATCH_SECURITY_MIRROR` if
/// set and non-empty, else the URI of the host's first enabled `deb` entry for a
/// `<release>-security` suite with `main` (read like [`mirror_from_apt`]), else `mirror`'s
/// `debian-security` sibling when `mirror`'s path ends in `/debian` (how Debian's own mirrors
/// are laid out). No host name is built in.
pub fn resolve_security_mirror(mirror: &str) -> Result<String> {
    if let Ok(m) = std::env::var(SECURITY_MIRROR_ENV)
        && !m.trim().is_empty()
    {
        return Ok(trim_mirror(m.trim()));
    }
    let (found, looked) = first_in_apt(Path::new("/"), usable_security_uri);
    if let Some(uri) = found {
        return Ok(uri);
    }
    let m = trim_mirror(mirror);
    if m.ends_with("/debian") {
        return Ok(format!("{m}-security"));
    }
    bail!(
        "no Debian security archive: no `deb` entry for a `*-security` suite in the apt \
         configuration (looked at: {}), and the mirror {m} does not end in /debian; set \
         {SECURITY_MIRROR_ENV}",
        looked.join(", ")
    )
}

/// The first URI `pick` accepts among the apt configuration's entries under `root` (files in
/// apt's order), and the files looked at (with why one could not be read).
fn first_in_apt(
    root: &Path,
    pick: impl Fn(&Path, &Repository) -> Option<String>,
) -> (Option<String>, Vec<String>) {
    let etc = root.join("etc/apt");
    let mut files = vec![etc.join("sources.list")];
    let dir = etc.join("sources.list.d");
    let mut dir_note = None;
    match fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("list" | "sources")
                    )
                })
                .collect();
            names.sort();
            files.extend(names);
        }
        Err(e) => dir_note = Some(format!("{} ({e})", dir.display())),
    }

    let mut looked = Vec::new();
    for file in &files {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                looked.push(format!("{} (absent)", file.display()));
                continue;
            }
            Err(e) => {
                looked.push(format!("{} (unreadable: {e})", file.display()));
                continue;
            }
        };
        let (entries, problems) = if file.extension().is_some_and(|e| e == "sources") {
            match Repositories::from_str(&text) {
                Ok(repos) => (repos.to_vec(), Vec::new()),
                Err(e) => (Vec::new(), vec![e.to_string()]),
            }
        } else {
            parse_one_line_sources(&text)
        };
        if let Some(uri) = entries.iter().find_map(|e| pick(root, e)) {
            tracing::debug!(file = %file.display(), mirror = %uri, "mirror from apt configuration");
            return (Some(uri), looked);
        }
        if problems.is_empty() {
            looked.push(file.display().to_string());
        } else {
            looked.push(format!(
                "{} (unreadable: {})",
                file.display(),
                problems.join("; ")
            ));
        }
    }
    looked.extend(dir_note);
    (None, looked)
}

/// The entries of a one-line style sources file, and the lines `apt-sources` refused. Each
/// line is given to the crate alone, without its `#` comment: the crate's grammar wants the
/// components to end the line, and one line it cannot read (an option it does not know) must
/// not hide the others.
fn parse_one_line_sources(text: &str) -> (Vec<Repository>, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match LegacyRepositories::from_str(line) {
            Ok(repos) => entries.extend(repos.iter().map(Repository::from)),
            Err(e) => problems.push(format!("line {}: {e}", n + 1)),
        }
    }
    (entries, problems)
}

fn is_plain_debian_release(suite: &str) -> bool {
    DEBIAN_RELEASES.contains(&suite.to_ascii_lowercase().as_str())
}

fn usable_uri(root: &Path, source: &Repository) -> Option<String> {
    if source.enabled == Some(false)
        || !source.types.contains(&RepositoryType::Binary)
        || !source.suites.iter().any(|s| is_plain_debian_release(s))
        || !source
            .components
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == "main"))
    {
        return None;
    }
    source.uris.iter().find_map(|uri| {
        let uri = resolve_mirror_list(root, uri.as_str())?;
        let lower = uri.to_ascii_lowercase();
        let http = lower.starts_with("http://") || lower.starts_with("https://");
        (http && !lower.contains("security")).then(|| trim_mirror(&uri))
    })
}

/// A security archive entry: `deb`, a `<release>-security` suite, `main`, http(s).
fn usable_security_uri(root: &Path, source: &Repository) -> Option<String> {
    if source.enabled == Some(false)
        || !source.types.contains(&RepositoryType::Binary)
        || !source.suites.iter().any(|s| {
            s.strip_suffix("-security")
                .is_some_and(is_plain_debian_release)
        })
        || !source
            .components
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == "main"))
    {
        return None;
    }
    source.uris.iter().find_map(|uri| {
        let uri = resolve_mirror_list(root, uri.as_str())?;
        let lower = uri.to_ascii_lowercase();
        (lower.starts_with("http://") || lower.starts_with("https://")).then(|| trim_mirror(&uri))
    })
}

/// `mirror+file:/path` → the first URI listed in that file; anything else unchanged.
fn resolve_mirror_list(root: &Path, uri: &str) -> Option<String> {
    let Some(path) = uri.strip_prefix("mirror+file:") else {
        return Some(uri.to_owned());
    };
    let path = path.trim_start_matches('/');
    let text = fs::read_to_string(root.join(path)).ok()?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| l.split_whitespace().next().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apt_root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc/apt/sources.list.d")).unwrap();
        for (path, text) in files {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn deb822_with_comments_and_security_first() {
        let root = apt_root(&[(
            "etc/apt/sources.list.d/debian.sources",
            "# Debian sources\n\
             Types: deb\n\
             # a comment inside the stanza\n\
             URIs: http://mirror.example/debian-security/\n\
             Suites: bookworm-security\n\
             Components: main\n\
             \n\
             Types: deb deb-src\n\
             # http://other.example/archive\n\
             URIs: http://mirror.example/debian/\n\
             Suites: bookworm bookworm-updates\n\
             Components: main contrib\n\
             Signed-By: -----BEGIN PGP PUBLIC KEY BLOCK-----\n \
             .\n \
             abc\n \
             -----END PGP PUBLIC KEY BLOCK-----\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://mirror.example/debian"
        );
    }

    #[test]
    fn deb822_disabled_and_updates_only_are_skipped() {
        let root = apt_root(&[(
            "etc/apt/sources.list.d/a.sources",
            "Types: deb\nURIs: http://a.example/debian\nSuites: trixie\nComponents: main\n\
             Enabled: no\n\n\
             Types: deb\nURIs: http://b.example/debian\nSuites: trixie-updates \
             trixie-backports\nComponents: main\n\n\
             Types: deb-src\nURIs: http://c.example/debian\nSuites: trixie\nComponents: main\n\n\
             Types: deb\nURIs: https://d.example/debian\nSuites: trixie\nComponents: main\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "https://d.example/debian"
        );
    }

    #[test]
    fn one_line_with_options() {
        let root = apt_root(&[(
            "etc/apt/sources.list",
            "# comment\n\
             deb http://sec.example/debian-security bookworm-security main\n\
             deb https://vendor.example/apt cloud-sdk-bookworm main\n\
             deb-src http://m.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://m.example/debian/ bookworm main contrib # trailing\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://m.example/debian"
        );
        let (parsed, problems) =
            parse_one_line_sources("deb [ signed-by=/k.gpg ] http://x.example/d sid main\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].uris[0].as_str(), "http://x.example/d");
        assert_eq!(parsed[0].suites, ["sid"]);
        assert_eq!(
            parsed[0].components.as_deref(),
            Some(&["main".to_owned()][..])
        );
        assert!(parsed[0].types.contains(&RepositoryType::Binary));
    }

    #[test]
    fn one_line_the_crate_cannot_read_is_reported_and_skipped() {
        let root = apt_root(&[(
            "etc/apt/sources.list",
            "deb [check-valid-until=no] http://snap.example/debian bookworm main\n\
             deb http://m.example/debian bookworm main\n",
        )]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://m.example/debian"
        );
        let root = apt_root(&[(
            "etc/apt/sources.list",
            "deb [check-valid-until=no] http://snap.example/debian bookworm main\n",
        )]);
        let err = format!("{:#}", mirror_from_apt(root.path()).unwrap_err());
        assert!(err.contains("sources.list (unreadable: line 1:"), "{err}");
    }

    #[test]
    fn sources_list_comes_before_sources_list_d() {
        let root = apt_root(&[
            (
                "etc/apt/sources.list",
                "deb http://first.example/debian stable main\n",
            ),
            (
                "etc/apt/sources.list.d/a.sources",
                "Types: deb\nURIs: http://second.example/debian\nSuites: stable\nComponents: main\n",
            ),
        ]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "http://first.example/debian"
        );
    }

    #[test]
    fn mirror_file_uris_are_resolved() {
        let root = apt_root(&[
            (
                "etc/apt/sources.list.d/debian.sources",
                "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\n\
                 Suites: bookworm\nComponents: main\n",
            ),
            (
                "etc/apt/mirrors/debian.list",
                "# list\nhttps://m.example/debian/\tpriority:1\n",
            ),
        ]);
        assert_eq!(
            mirror_from_apt(root.path()).unwrap(),
            "https://m.example/debian"
        );
    }

    #[test]
    fn nothing_usable_names_the_files() {
        let root = apt_root(&[
            (
                "etc/apt/sources.list.d/debian.sources",
                "Types: deb\nURIs: http://m.example/debian-security\n\
                 Suites: bookworm-security\nComponents: main\n",
            ),
            (
                "etc/apt/sources.list.d/vendor.list",
                "deb https://vendor.example/apt nodistro main\n",
            ),
            (
                "etc/apt/sources.list.d/ignored.list.disabled",
                "deb http://m.example/debian bookworm main\n",
            ),
            (
                "etc/apt/sources.list.d/broken.sources",
                "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\n\
                 Components: main\nEnabled: perhaps\n",
            ),
        ]);
        let err = format!("{:#}", mirror_from_apt(root.path()).unwrap_err());
        assert!(err.contains("debian.sources"), "{err}");
        assert!(err.contains("vendor.list"), "{err}");
        assert!(err.contains("broken.sources (unreadable:"), "{err}");
        assert!(err.contains("sources.list (absent)"), "{err}");
        assert!(!err.contains("ignored"), "{err}");
        assert!(err.contains(MIRROR_ENV), "{err}");
    }

    #[test]
    fn explicit_mirror_wins_and_is_trimmed() {
        assert_eq!(
            resolve_mirror(Some(" http://m.example/debian// ")).unwrap(),
            "http://m.example/debian"
        );
    }

    #[test]
    fn security_mirror_from_apt_sources() {
        let root = apt_root(&[(
            "etc/apt/sources.list.d/debian.sources",
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n\n\
             Types: deb\nURIs: http://s.example/debian-security/\nSuites: bookworm-security\n\
             Components: main\n",
        )]);
        let (found, _) = first_in_apt(root.path(), usable_security_uri);
        assert_eq!(found.as_deref(), Some("http://s.example/debian-security"));
        let none = apt_root(&[(
            "etc/apt/sources.list",
            "deb http://m.example/debian bookworm main\n",
        )]);
        assert_eq!(first_in_apt(none.path(), usable_security_uri).0, None);
    }
}
