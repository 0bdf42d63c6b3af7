//! `Packages` index stanzas, the dpkg status database and Debian versions: parsed by
//! `deb822-fast` and `debian-control` (stanzas, relationship fields), ordered by `debversion`
//! (dpkg's rules).

use std::cmp::Ordering;

use anyhow::{Result, anyhow, ensure};
use deb822_fast::FromDeb822Paragraph;

/// A `Packages` stanza with every field typed (relations, versions, priority...).
pub type Package = debian_control::lossy::apt::Package;

/// What is needed to download one binary package and check it: a `Packages` stanza's
/// `Package`, `Version`, `Architecture`, `Filename`, `Size` and `SHA256`, checked for sanity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    /// `Package`
    pub package: String,
    /// `Version` (full Debian version)
    pub version: String,
    /// `Architecture`
    pub architecture: String,
    /// `Filename`, relative to the mirror root (`pool/...`)
    pub filename: String,
    /// `Size` in bytes
    pub size: u64,
    /// `SHA256`, lower-case hex
    pub sha256: String,
}

impl PackageEntry {
    /// The download descriptor of a typed stanza; an error names what is missing or odd.
    pub fn from_package(p: &Package) -> Result<PackageEntry> {
        let what = format!("{} {}", p.name, p.version);
        let filename = p
            .filename
            .clone()
            .ok_or_else(|| anyhow!("Packages stanza for {what} lacks a Filename field"))?;
        let size = p
            .size
            .ok_or_else(|| anyhow!("Packages stanza for {what} lacks a Size field"))?;
        let sha256 = p
            .sha256
            .as_deref()
            .ok_or_else(|| anyhow!("Packages stanza for {what} lacks a SHA256 field"))?
            .to_ascii_lowercase();
        ensure!(is_sha256_hex(&sha256), "{what}: bad SHA256 {sha256:?}");
        ensure!(
            filename.starts_with("pool/")
                && !filename.split('/').any(|c| c == ".." || c.is_empty()),
            "{what}: unexpected Filename {filename:?}"
        );
        Ok(PackageEntry {
            package: p.name.clone(),
            version: p.version.to_string(),
            architecture: p.architecture.clone(),
            filename,
            size: size as u64,
            sha256,
        })
    }

    /// The `.deb`'s file name (the last component of `Filename`).
    pub fn file_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or_default()
    }
}

/// Every stanza of a `Packages` index for `package`, in index order. Only that package's
/// stanzas are typed, so looking one package up in a large index is quick.
pub fn parse_packages(text: &str, package: &str) -> Result<Vec<PackageEntry>> {
    stanzas(text)?
        .iter()
        .filter(|p| p.get("Package").is_some_and(|n| n.trim() == package))
        .map(|p| typed(p).and_then(|p| PackageEntry::from_package(&p)))
        .collect()
}

/// Every stanza of a `Packages` index whose `Architecture` is `arch` or `all`, typed.
pub fn parse_index(text: &str, arch: &str) -> Result<Vec<Package>> {
    stanzas(text)?
        .iter()
        .filter(|p| {
            p.get("Architecture")
                .is_some_and(|a| a.trim() == arch || a.trim() == "all")
        })
        .map(typed)
        .collect()
}

fn stanzas(text: &str) -> Result<deb822_fast::Deb822> {
    text.parse()
        .map_err(|e| anyhow!("not a Packages index: {e}"))
}

fn typed(p: &deb822_fast::Paragraph) -> Result<Package> {
    Package::from_paragraph(p).map_err(|e| {
        anyhow!(
            "Packages stanza for {} {}: {e}",
            p.get("Package").unwrap_or("?"),
            p.get("Version").unwrap_or("?")
        )
    })
}

/// One package installed in a Debian tree, from its dpkg status database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// The installed packages of a dpkg status database (`var/lib/dpkg/status`), sorted by name:
/// the stanzas whose `Status` says `installed` (not `config-files`, `half-installed`...).
pub fn parse_dpkg_status(text: &str) -> Result<Vec<InstalledPackage>> {
    let doc: deb822_fast::Deb822 = text
        .parse()
        .map_err(|e| anyhow!("not a dpkg status file: {e}"))?;
    let mut out: Vec<InstalledPackage> = doc
        .iter()
        .filter(|p| {
            p.get("Status")
                .is_some_and(|s| s.split_whitespace().nth(2) == Some("installed"))
        })
        .filter_map(|p| {
            Some(InstalledPackage {
                name: p.get("Package")?.trim().to_string(),
                version: p.get("Version")?.trim().to_string(),
                architecture: p.get("Architecture").unwrap_or_default().trim().to_string(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compare two Debian versions the way dpkg does (`debversion`). A string that is not a
/// Debian version sorts before every version (and among such strings, by bytes), so a stray
/// name never wins a "newest" choice.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (
        a.trim().parse::<debversion::Version>(),
        b.trim().parse::<debversion::Version>(),
    ) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Whether a requested version (`2025.02`, `2025.02-8`, `2025.02-8+deb13u1`) selects the
/// Debian version `candidate`: equal, or a prefix followed by `-` or `+`. An epoch on the
/// candidate is ignored unless the request has one. (bootwatch's own request syntax.)
pub fn version_matches(request: &str, candidate: &str) -> bool {
    let candidate = if request.contains(':') {
        candidate
    } else {
        candidate
            .split_once(':')
            .map_or(candidate, |(_, upstream)| upstream)
    };
    candidate == request
        || candidate
            .strip_prefix(request)
            .is_some_and(|rest| rest.starts_with(['-', '+']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let status = "Package: b\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1.0-1\n\n\
                      Package: a\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                      Package: c\nStatus: install ok installed\nArchitecture: all\nVersion: 1:2.3~rc1\nDescription: x\n y\n";
        assert_eq!(
            parse_dpkg_status(status).unwrap(),
            vec![
                InstalledPackage {
                    name: "b".into(),
                    version: "1.0-1".into(),
                    architecture: "arm64".into()
                },
                InstalledPackage {
                    name: "c".into(),
                    version: "1:2.3~rc1".into(),
                    architecture: "all".into()
                },
            ]
        );
    }

    /// Continuation lines belong to their field, whatever they look like (a description that
    /// quotes a stanza, a conffile list), and fields after them are still read.
    #[test]
    fn dpkg_status_continuation_lines_are_part_of_their_field() {
        // dpkg writes Version and Architecture before Conffiles and Description.
        let status = "Package: d\nStatus: install ok installed\nArchitecture: arm64\nVersion: 3-1\n\
                      Conffiles:\n /etc/d.conf 0123\n /etc/d/other 4567 obsolete\n\
                      Description: d\n Package: evil\n Version: 9\n Architecture: all\n .\n more\n\n\
                      Package: half\nStatus: install reinstreq half-installed\nVersion: 1\n";
        assert_eq!(
            parse_dpkg_status(status).unwrap(),
            [InstalledPackage {
                name: "d".into(),
                version: "3-1".into(),
                architecture: "arm64".into()
            }]
        );
        assert!(parse_dpkg_status(" leading continuation\n").is_err());
    }

    const SHA_A: &str = "a00b2411a79c8aeafd95a7c868ac3cd1aab592f1af9fff965f02d81a625276ed";
    const SHA_B: &str = "30467a3593c099ea42bd6ff3c4590e4b205edf9a7b98844f4bed17cd8b05eb58";

    #[test]
    fn packages_stanzas() {
        let text = format!(
            "Package: qemu-efi-arm\nVersion: 2025.02-8\nArchitecture: all\n\
             Filename: pool/main/e/edk2/arm.deb\nSize: 1\nSHA256: {SHA_A}\n\n\
             Package: qemu-efi-aarch64\nSource: edk2\nVersion: 2025.02-8+deb13u1\n\
             Architecture: all\nInstalled-Size: 10\nDescription: UEFI firmware\n foo\n .\n bar\n\
             Filename: pool/main/e/edk2/qemu-efi-aarch64_2025.02-8+deb13u1_all.deb\n\
             Size: 5122856\nSHA256: {SHA_A}\n\n\n\
             Package: qemu-efi-aarch64\nVersion: 1:2026.08+ds-2\nArchitecture: all\n\
             Filename: pool/main/e/edk2/b.deb\nSize: 7\nSHA256: {}\n",
            SHA_B.to_uppercase()
        );
        let entries = parse_packages(&text, "qemu-efi-aarch64").unwrap();
        let entry = |version: &str, filename: &str, size, sha256: &str| PackageEntry {
            package: "qemu-efi-aarch64".into(),
            version: version.into(),
            architecture: "all".into(),
            filename: filename.into(),
            size,
            sha256: sha256.into(),
        };
        assert_eq!(
            entries,
            vec![
                entry(
                    "2025.02-8+deb13u1",
                    "pool/main/e/edk2/qemu-efi-aarch64_2025.02-8+deb13u1_all.deb",
                    5122856,
                    SHA_A
                ),
                entry("1:2026.08+ds-2", "pool/main/e/edk2/b.deb", 7, SHA_B),
            ]
        );
        let bad = "Package: qemu-efi-aarch64\nVersion: 1\nArchitecture: all\n\
                   Filename: pool/x.deb\nSize: 1\n";
        let err = parse_packages(bad, "qemu-efi-aarch64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHA256"), "{err}");
        let escape = format!(
            "Package: p\nVersion: 1\nArchitecture: all\nFilename: pool/../../x.deb\nSize: 1\n\
             SHA256: {SHA_A}\n"
        );
        let err = parse_packages(&escape, "p").unwrap_err().to_string();
        assert!(err.contains("unexpected Filename"), "{err}");
        let broken = "Package: p\nVersion: not a version\nArchitecture: all\n";
        let err = parse_packages(broken, "p").unwrap_err().to_string();
        assert!(err.contains("Packages stanza for p"), "{err}");
    }

    #[test]
    fn index_keeps_the_architecture_and_all() {
        let text = "Package: a\nVersion: 1\nArchitecture: arm64\nDepends: b (>= 2) | c\n\n\
                    Package: b\nVersion: 2\nArchitecture: all\n\n\
                    Package: c\nVersion: 3\nArchitecture: amd64\n";
        let index = parse_index(text, "arm64").unwrap();
        let names: Vec<&str> = index.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let depends = index[0].depends.as_ref().unwrap();
        assert_eq!(depends.to_string(), "b (>= 2) | c");
    }

    #[test]
    fn version_prefixes() {
        assert!(version_matches("2025.02", "2025.02-8+deb13u1"));
        assert!(version_matches("2025.02-8", "2025.02-8+deb13u1"));
        assert!(version_matches("2025.02-8+deb13u1", "2025.02-8+deb13u1"));
        assert!(version_matches("2026.08", "2026.08+ds-2"));
        assert!(version_matches("2026.08", "1:2026.08+ds-2"));
        assert!(version_matches("1:2026.08", "1:2026.08+ds-2"));
        assert!(!version_matches("2025.0", "2025.02-8"));
        assert!(!version_matches("2025.02-", "2025.02-8"));
        assert!(!version_matches("2025.02-8", "2025.02-80"));
        assert!(!version_matches("2022.11", "2025.02-8"));
        assert!(!version_matches("1:2026.08", "2026.08+ds-2"));
    }

    #[test]
    fn versions_compare_like_dpkg() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0.1", "1.0a", Greater),
            ("1:0.1", "2.0", Greater),
            ("2.12-1~bpo12+1", "2.06-13+deb12u2", Greater),
            ("1+2.12+1~bpo12+1", "1+2.06+13+deb12u2", Greater),
            (
                "1.51~1+deb12u1+16.1-2~deb12u1+bootwatch.bad1",
                "1.51~1+deb12u1+16.1-2~deb12u1",
                Greater,
            ),
            (
                "1.44~1+deb12u1+15.8-1~deb12u1",
                "1.51~1+deb12u1+16.1-2~deb12u1",
                Less,
            ),
            ("10", "9", Greater),
            ("1.001", "1.1", Equal),
            ("1~~", "1~", Less),
            ("3.14.0-4", "3.2.3", Greater),
            ("5.4.1-0.2", "5.1.1alpha+20120614", Greater),
            // Not versions: before any version.
            ("not a version", "0", Less),
            ("", "0~", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
