//! What bootwatch asks of a provisioned guest, as command lines and parsed answers: the upgrade
//! (with the case's update repository as the only source and its workarounds), the installed
//! package list and its diff, and which changed packages belong to the boot chain. Pure.

use std::collections::BTreeMap;

use crate::engine::record::PackageChange;
use crate::inputs::images::catalog::{GuestTraits, PackageManager};

/// Is this package part of the boot chain (a suspect when a reboot fails)?
pub fn is_boot_chain_package(name: &str) -> bool {
    [
        "grub",
        "shim",
        "linux-image",
        "kernel",
        "efibootmgr",
        "mokutil",
        "fwupd",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The suspects of a failed boot among the packages an upgrade changed: first those the image
/// names in its `bootloader_packages` (in diff order), then other boot-chain packages
/// ([`is_boot_chain_package`]: kernels, firmware tools, boot-chain packages the entry does not
/// name).
pub fn suspects(guest: &GuestTraits, diff: &[PackageChange]) -> Vec<String> {
    let named = |c: &&PackageChange| guest.bootloader_packages.contains(&c.name);
    diff.iter()
        .filter(named)
        .chain(
            diff.iter()
                .filter(|c| !named(c) && is_boot_chain_package(&c.name)),
        )
        .map(|c| c.name.clone())
        .collect()
}

/// Parses `name<TAB>version` lines.
pub fn parse_package_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (n, v) = l.trim_end_matches('\r').split_once('\t')?;
            (!n.is_empty() && !n.contains(' ')).then(|| (n.to_string(), v.trim().to_string()))
        })
        .collect()
}

pub fn diff_packages(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<PackageChange> {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| PackageChange {
            name: n.clone(),
            old: before.get(n).cloned(),
            new: after.get(n).cloned(),
        })
        .collect()
}

/// The command line that runs the image's upgrade, with the update repository as the only
/// package source when one is served (the guest's own sources are left untouched) and, when
/// asked, the boot chain left out.
///
/// Leaving the boot chain out acts on the packages of [`GuestTraits::bootloader_packages`] that
/// are installed in the guest, found there when the command runs (`dpkg-query` / `rpm -q`):
/// apt holds them for the upgrade and releases them after it (`apt-mark hold` of a package that
/// is not installed fails when apt's package lists are empty, as in a fresh cloud image, and
/// would stop the upgrade); dnf gets one `--exclude=NAME` each. The command prints which.
pub fn upgrade_command(
    guest: &GuestTraits,
    repo_url: Option<&str>,
    exclude_bootloader: bool,
) -> String {
    let env: String = guest.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let names = guest
        .bootloader_packages
        .iter()
        .filter(|p| is_package_name(p))
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let script = match guest.package_manager {
        PackageManager::Apt => {
            let mut setup = String::new();
            let mut post = String::new();
            if let Some(url) = repo_url {
                setup.push_str(&format!(
                    "echo 'deb [trusted=yes] {url} ./' > /etc/apt/bootwatch-update.list && \
                     printf 'Dir::Etc::SourceList \"/etc/apt/bootwatch-update.list\";\\nDir::Etc::SourceParts \"/nonexistent\";\\n' > /etc/apt/apt.conf.d/99bootwatch-update && "
                ));
                post.push_str(
                    " rm -f /etc/apt/apt.conf.d/99bootwatch-update /etc/apt/bootwatch-update.list;",
                );
            }
            let upgrade = if exclude_bootloader {
                post.insert_str(0, " [ -z \"$held\" ] || apt-mark unhold $held >/dev/null;");
                // No names: nothing to hold (dpkg-query -W without names lists everything).
                let held = if names.is_empty() {
                    "held=".to_string()
                } else {
                    format!(
                        "held=$(dpkg-query -W -f='${{db:Status-Status}}\\t${{Package}}\\n' {names} 2>/dev/null | awk -F'\\t' '$1==\"installed\"{{print $2}}')"
                    )
                };
                format!(
                    "{{ {held}; \
                     echo \"bootwatch: held for the upgrade: $(echo ${{held:-nothing}})\"; \
                     if [ -n \"$held\" ] && ! apt-mark hold $held >/dev/null; then false; else {}; fi; }}",
                    guest.upgrade_command
                )
            } else {
                guest.upgrade_command.clone()
            };
            if post.is_empty() {
                format!("{setup}{upgrade}")
            } else {
                format!("held=; {setup}{upgrade}; rc=$?;{post} exit $rc")
            }
        }
        PackageManager::Dnf => {
            let mut pre = String::new();
            let mut cmd = guest.upgrade_command.clone();
            if let Some(url) = repo_url {
                cmd.push_str(&format!(
                    " --disablerepo='*' --repofrompath=bootwatch-update,{url} --nogpgcheck"
                ));
            }
            if exclude_bootloader && names.is_empty() {
                pre.push_str("echo \"bootwatch: excluded from the upgrade: nothing\"; ");
            } else if exclude_bootloader {
                pre.push_str(&format!(
                    "held=$(rpm -q --qf '%{{NAME}}\\n' {names} 2>/dev/null | grep -v ' is not installed$' | sort -u); \
                     echo \"bootwatch: excluded from the upgrade: $(echo ${{held:-nothing}})\"; \
                     x=; for p in $held; do x=\"$x --exclude=$p\"; done; "
                ));
                cmd.push_str(" $x");
            }
            format!("{pre}{cmd}")
        }
    };
    format!("sudo {env}sh -c '{}'", shell_single(&script))
}

/// A package name as apt and rpm spell them: nothing a shell would act on.
fn is_package_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
}

/// Escapes text for use inside single quotes.
pub fn shell_single(s: &str) -> String {
    s.replace('\'', r"'\''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_and_diffs() {
        let before = parse_package_list(
            "grub-efi-arm64-signed\t1+2.06+13+deb12u2\nbash\t5.2.15-2+b7\nbad line\n",
        );
        let after = parse_package_list(
            "grub-efi-arm64-signed\t1+2.12+5~bpo12+1\nbash\t5.2.15-2+b7\nnewpkg\t1\n",
        );
        assert_eq!(before.len(), 2);
        let d = diff_packages(&before, &after);
        assert_eq!(
            d,
            vec![
                PackageChange {
                    name: "grub-efi-arm64-signed".into(),
                    old: Some("1+2.06+13+deb12u2".into()),
                    new: Some("1+2.12+5~bpo12+1".into())
                },
                PackageChange {
                    name: "newpkg".into(),
                    old: None,
                    new: Some("1".into())
                },
            ]
        );
        assert!(is_boot_chain_package("shim-signed") && is_boot_chain_package("grub2-efi-aa64"));
        assert!(!is_boot_chain_package("bash"));
    }

    fn guest(pm: PackageManager) -> GuestTraits {
        let apt = pm == PackageManager::Apt;
        GuestTraits {
            login_user: "u".into(),
            provision: "cloud-init".into(),
            package_manager: pm,
            upgrade_command: if apt {
                "apt-get update && apt-get -y full-upgrade".into()
            } else {
                "dnf -y upgrade".into()
            },
            env: [("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())].into(),
            package_query: "q".into(),
            bootloader_packages: if apt {
                vec!["shim-signed".into(), "grub-efi-arm64-signed".into()]
            } else {
                vec!["shim-aa64".into(), "grub2-efi-aa64".into()]
            },
            reported: crate::inputs::images::catalog::Reported::Unaffected,
            report_note: String::new(),
        }
    }

    #[test]
    fn upgrade_commands_use_only_the_update_repository() {
        let apt = upgrade_command(
            &guest(PackageManager::Apt),
            Some("http://10.0.2.2:8080/"),
            true,
        );
        assert!(
            apt.starts_with("sudo DEBIAN_FRONTEND=noninteractive sh -c '"),
            "{apt}"
        );
        assert!(
            apt.contains("deb [trusted=yes] http://10.0.2.2:8080/ ./"),
            "{apt}"
        );
        assert!(
            apt.contains("shim-signed grub-efi-arm64-signed 2>/dev/null"),
            "{apt}"
        );
        assert!(
            apt.contains("rm -f /etc/apt/apt.conf.d/99bootwatch-update"),
            "{apt}"
        );
        // The inner single quotes are escaped for the outer sh -c '...'.
        let inner = shlex::split(&apt).expect("a valid shell line");
        assert_eq!(inner[0], "sudo");
        assert_eq!(inner[2..4], ["sh", "-c"]);
        assert!(inner[4].contains("echo 'deb [trusted=yes]"), "{inner:?}");
        let dnf = upgrade_command(&guest(PackageManager::Dnf), None, true);
        assert!(dnf.contains("rpm -q --qf"), "{dnf}");
        assert!(dnf.contains("dnf -y upgrade $x"), "{dnf}");
        // Without the workaround, only the upgrade itself.
        assert_eq!(
            upgrade_command(&guest(PackageManager::Dnf), None, false),
            "sudo DEBIAN_FRONTEND=noninteractive sh -c 'dnf -y upgrade'"
        );
    }

    /// Runs the script inside an upgrade command line (what `sh -c` gets) with stand-ins for
    /// the package tools on PATH: `installed` are the packages the stand-in database has.
    /// Returns what the stand-ins were called with, one call a line, and the script's output.
    fn run_with_stand_ins(command: &str, installed: &[&str]) -> (String, String, i32) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let db = installed.join(" ");
        let stand_in = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> {}\n{body}\n",
                    log.display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // dpkg-query -W -f=FORMAT NAMES: "installed<TAB>name" for those in the database, an
        // error (exit 1) for the others, as dpkg-query does.
        stand_in(
            "dpkg-query",
            &format!(
                "shift 2; rc=0; for p in \"$@\"; do case \" {db} \" in *\" $p \"*) printf 'installed\\t%s\\n' \"$p\" ;; *) echo \"dpkg-query: no packages found matching $p\" >&2; rc=1 ;; esac; done; exit $rc"
            ),
        );
        stand_in(
            "rpm",
            &format!(
                "shift 3; rc=0; for p in \"$@\"; do case \" {db} \" in *\" $p \"*) echo \"$p\" ;; *) echo \"package $p is not installed\"; rc=1 ;; esac; done; exit $rc"
            ),
        );
        for tool in ["apt-mark", "apt-get", "dnf"] {
            stand_in(tool, "exit 0");
        }
        let inner = shlex::split(command).unwrap();
        let script = inner.last().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        (
            std::fs::read_to_string(&log).unwrap_or_default(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    /// A guest that lacks one of the named boot-chain packages (Debian's cloud images have no
    /// `shim-signed`): apt holds only the installed one, upgrades, and releases it; dnf
    /// excludes only the installed one.
    #[test]
    fn exclude_bootloader_acts_on_the_installed_packages_only() {
        // No repository: its setup writes under /etc/apt, which a test must not touch.
        let apt = upgrade_command(&guest(PackageManager::Apt), None, true);
        let (calls, out, rc) = run_with_stand_ins(&apt, &["grub-efi-arm64-signed", "bash"]);
        assert_eq!(rc, 0, "{apt}\n{calls}{out}");
        assert!(
            out.contains("bootwatch: held for the upgrade: grub-efi-arm64-signed"),
            "{out}"
        );
        let calls: Vec<&str> = calls
            .lines()
            .filter(|l| !l.starts_with("dpkg-query"))
            .collect();
        assert_eq!(
            calls,
            [
                "apt-mark hold grub-efi-arm64-signed",
                "apt-get update",
                "apt-get -y full-upgrade",
                "apt-mark unhold grub-efi-arm64-signed"
            ]
        );
        // Nothing installed: nothing held, the upgrade runs.
        let (calls, out, rc) = run_with_stand_ins(&apt, &["bash"]);
        assert_eq!(rc, 0, "{calls}{out}");
        assert!(out.contains("held for the upgrade: nothing"), "{out}");
        assert!(!calls.contains("apt-mark"), "{calls}");
        assert!(calls.contains("apt-get -y full-upgrade"), "{calls}");

        let dnf = upgrade_command(&guest(PackageManager::Dnf), Some("http://h/"), true);
        let (calls, out, rc) = run_with_stand_ins(&dnf, &["grub2-efi-aa64"]);
        assert_eq!(rc, 0, "{calls}{out}");
        assert!(
            out.contains("bootwatch: excluded from the upgrade: grub2-efi-aa64"),
            "{out}"
        );
        assert!(
            calls.lines().any(|l| l
                == "dnf -y upgrade --disablerepo=* --repofrompath=bootwatch-update,http://h/ --nogpgcheck --exclude=grub2-efi-aa64"),
            "{calls}"
        );
    }

    #[test]
    fn suspects_are_the_named_boot_chain_first() {
        let g = guest(PackageManager::Dnf);
        let change = |n: &str| PackageChange {
            name: n.into(),
            old: Some("1".into()),
            new: Some("2".into()),
        };
        let diff = [
            change("bash"),
            change("kernel-core"),
            change("shim-aa64"),
            change("grub2-tools"),
        ];
        assert_eq!(
            suspects(&g, &diff),
            ["shim-aa64", "kernel-core", "grub2-tools"]
        );
    }
}
