//! Helpers shared by the repository tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::inputs::debian::deb::{DebMember, write_deb};

use super::deb_file_name;

/// Run a host tool the tests rely on (present on the Debian hosts bootwatch runs on); a
/// missing tool fails the test with its name rather than skipping it.
pub(super) fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (install it: a Debian host has it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(super) fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small package made with our own writer.
pub(super) fn small_deb(dir: &Path, control: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let stanza: deb822_fast::Paragraph = control.parse().unwrap();
    let name = deb_file_name(
        stanza.get("Package").unwrap(),
        stanza.get("Version").unwrap(),
        stanza.get("Architecture").unwrap(),
    )
    .unwrap();
    let path = dir.join(format!("src-{name}"));
    let members: Vec<DebMember<'_>> = files
        .iter()
        .map(|(path, content)| DebMember {
            path,
            content,
            mode: 0o644,
        })
        .collect();
    write_deb(&path, control, &[], &members).unwrap();
    path
}

pub(super) const CONTROL_A: &str = "Package: bwtest-a\nVersion: 1.2-3\nArchitecture: arm64\n\
    Maintainer: bootwatch tests <tests@invalid>\nInstalled-Size: 1\n\
    Depends: libc6 (>= 2.34), bwtest-b | bwtest-c\nSection: misc\nPriority: optional\n\
    Description: first test package\n Two lines\n .\n of description.\n";
pub(super) const CONTROL_B: &str = "Package: bwtest-b\nVersion: 1:0.9~rc1\nArchitecture: all\n\
    Maintainer: bootwatch tests <tests@invalid>\nMulti-Arch: foreign\n\
    Description: second test package\n";
