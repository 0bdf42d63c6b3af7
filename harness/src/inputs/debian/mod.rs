//! Debian's package archive: which mirror to use, one verifying client for it, `.deb` files,
//! and the edk2 firmware cache built on them.
//!
//! | file | concern |
//! |---|---|
//! | `sources.rs` | the mirror: `--mirror`, `BOOTWATCH_MIRROR`, or the host's apt sources (`apt-sources`) |
//! | `keyring.rs` | OpenPGP verification of Release files against a keyring (`pgp`, pure Rust) |
//! | `release.rs` | a verified Release file: index checksums, `Acquire-By-Hash`, `Valid-Until` |
//! | `http.rs` | the HTTP client and its one retry policy for transient failures (`backon`) |
//! | `archive.rs` | [`Archive`], the client: verified Release (once per suite per process), verified indexes, verified `.deb` downloads |
//! | `packages.rs` | `Packages` stanzas, the dpkg status database and Debian versions (`deb822-fast`, `debian-control`, `debversion`) |
//! | `plan.rs` | choosing the packages of an update with what they need (relations) |
//! | `deb.rs` | reading and writing `.deb` members (`ar`, `tar`) |
//! | `edk2.rs` | Debian's edk2 (`qemu-efi-aarch64`) fetched, unpacked and cached |
//!
//! # Trust
//!
//! Every Release file is checked against the archive keyring (by default
//! `/usr/share/keyrings/debian-archive-keyring.gpg`, else the file named by
//! `BOOTWATCH_ARCHIVE_KEYRING`, see [`keyring`]); every index against the verified Release;
//! every `.deb` against its index. A bad or missing signature, a key not in the keyring, or an
//! index or package whose size or SHA256 differs is an error naming the URL. An expired
//! `Valid-Until` is only a warning: the archive copy these machines reach is a frozen snapshot
//! whose `sid` is past it while its signature is good.

pub mod archive;
pub mod deb;
pub mod edk2;
mod http;
pub mod keyring;
pub mod packages;
pub mod plan;
pub mod release;
pub mod sources;
#[cfg(test)]
mod test_mirror;

pub use archive::Archive;
pub use edk2::{
    Edk2Build, Edk2File, MANIFEST_NAME, PACKAGE, SUITES, VARIANTS, fetch_edk2, fetch_edk2_from,
    find_cached, find_cached_file, install_deb,
};
pub use http::http_client;
pub use keyring::{DEFAULT_KEYRING, KEYRING_ENV, Keyring};
pub use packages::{PackageEntry, compare_versions, parse_packages, version_matches};
pub use sources::{
    MIRROR_ENV, SECURITY_MIRROR_ENV, mirror_from_apt, resolve_mirror, resolve_security_mirror,
};

/// Where, under the cache root, verified indexes are kept by their SHA256.
pub const INDEX_CACHE_DIR: &str = "debian/indexes";
