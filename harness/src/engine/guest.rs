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
/// package source when one is served (the guest's own sources are left untouched) and the
/// bootloader held back when asked.
pub fn upgrade_command(
    guest: &GuestTraits,
    repo_url: Option<&str>,
    exclude_bootloader: bool,
) -> String {
    let env: String = guest.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    match guest.package_manager {
        PackageManager::Apt => {
            let mut pre = String::new();
            if let Some(url) = repo_url {
                pre.push_str(&format!(
                    "echo 'deb [trusted=yes] {url} ./' > /etc/apt/bootwatch-update.list && \
                     printf 'Dir::Etc::SourceList \"/etc/apt/bootwatch-update.list\";\\nDir::Etc::SourceParts \"/nonexistent\";\\n' > /etc/apt/apt.conf.d/99bootwatch-update && "
                ));
            }
            if exclude_bootloader {
                pre.push_str(&format!("{} && ", guest.exclude_bootloader));
            }
            let cleanup = if repo_url.is_some() {
                "; rc=$?; rm -f /etc/apt/apt.conf.d/99bootwatch-update /etc/apt/bootwatch-update.list; exit $rc"
            } else {
                ""
            };
            format!(
                "sudo {env}sh -c '{}'",
                shell_single(&format!("{pre}{}{cleanup}", guest.upgrade_command))
            )
        }
        PackageManager::Dnf => {
            let mut cmd = guest.upgrade_command.clone();
            if let Some(url) = repo_url {
                cmd.push_str(&format!(
                    " --disablerepo='*' --repofrompath=bootwatch-update,{url} --nogpgcheck"
                ));
            }
            if exclude_bootloader {
                cmd.push(' ');
                cmd.push_str(&guest.exclude_bootloader);
            }
            format!("sudo {env}sh -c '{}'", shell_single(&cmd))
        }
    }
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
        GuestTraits {
            login_user: "u".into(),
            provision: "cloud-init".into(),
            package_manager: pm,
            upgrade_command: if pm == PackageManager::Apt {
                "apt-get update && apt-get -y full-upgrade".into()
            } else {
                "dnf -y upgrade".into()
            },
            env: [("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())].into(),
            exclude_bootloader: if pm == PackageManager::Apt {
                "apt-mark hold shim-signed".into()
            } else {
                "--exclude 'grub2*'".into()
            },
            package_query: "q".into(),
            bootloader_packages: vec![],
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
            apt.contains("apt-mark hold shim-signed && apt-get update"),
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
        assert!(dnf.contains("dnf -y upgrade --exclude"), "{dnf}");
    }
}
