//! The probe application's console lines (`BOOTWATCH-PROBE key=value`, found with
//! patterns.toml's `probe-fact` role) turned into facts. The probe prints raw values (status
//! codes, attribute words, page table descriptors, system registers); their meaning is decided
//! here, where it can be tested on data.

use std::collections::BTreeMap;

use super::keys;
use crate::core::classify::{PatternSet, Role};
use crate::core::facts::Facts;

/// `EFI_MEMORY_XP`, `EFI_MEMORY_RO` (UEFI 2.10 table 7.10).
const EFI_MEMORY_XP: u64 = 0x4000;
const EFI_MEMORY_RO: u64 = 0x2_0000;
/// Stage-1 descriptor bits: UXN (54, XN at EL2), PXN (53); table descriptors' PXNTable (59),
/// UXNTable/XNTable (60).
const PTE_UXN: u64 = 1 << 54;
const PTE_PXN: u64 = 1 << 53;
const TABLE_XN: u64 = 3 << 59;

/// What the probe printed, raw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeOutput {
    pub values: BTreeMap<String, String>,
    /// The probe printed its last line (`end`): every measurement it makes was printed.
    pub complete: bool,
}

impl ProbeOutput {
    /// Collects the probe's lines from normalized console lines.
    pub fn from_lines<'a>(patterns: &PatternSet, lines: impl IntoIterator<Item = &'a str>) -> Self {
        let re = &patterns.role_pattern(Role::ProbeFact).regex;
        let mut out = ProbeOutput::default();
        for line in lines {
            let Some(c) = re.captures(line) else { continue };
            let (Some(k), Some(v)) = (c.name("key"), c.name("value")) else {
                continue;
            };
            if k.as_str() == "end" {
                out.complete = true;
            }
            out.values
                .insert(k.as_str().to_string(), v.as_str().trim().to_string());
        }
        out
    }

    /// Collects the probe's lines from the raw serial console (`serial.raw`), normalized as
    /// the classifier normalizes it.
    pub fn from_serial(patterns: &PatternSet, raw: &[u8]) -> Self {
        let mut norm = crate::core::console::Normalizer::new();
        let mut text = String::new();
        norm.feed(raw, &mut text);
        norm.finish(&mut text);
        Self::from_lines(patterns, text.lines())
    }

    fn num(&self, key: &str) -> Option<u64> {
        let v = self.values.get(key)?;
        u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The facts the lines measure. A value the probe did not print gives no fact.
    pub fn facts(&self) -> Facts {
        let mut f = Facts::new();
        if let Some(v) = self.str("vendor") {
            f.set(keys::VENDOR, v);
        }
        if let Some(v) = self.num("fw_revision") {
            f.set(keys::REVISION, v);
        }
        if let Some(v) = self.num("uefi_revision") {
            f.set(
                keys::UEFI_REVISION,
                format!("{}.{:02}", v >> 16, v & 0xFFFF),
            );
        }
        if let Some(el) = self.num("current_el") {
            f.set(keys::CURRENT_EL, el);
        }
        if let Some(v) = self.num("midr") {
            f.set(keys::MIDR, v);
        }
        if let Some(pfr0) = self.num("id_aa64pfr0") {
            f.set(keys::EL2, (pfr0 >> 8) & 0xF != 0);
            f.set(keys::EL3, (pfr0 >> 12) & 0xF != 0);
        }
        let mem_attr = self.num("mem_attr_status").map(|s| s == 0);
        if let Some(m) = mem_attr {
            f.set(keys::MEM_ATTR_PROTOCOL, m);
        }
        let attrs = (self.num("get_attrs_status") == Some(0))
            .then(|| self.num("loader_data_attrs"))
            .flatten();
        if let Some(a) = attrs {
            f.set(keys::LOADER_DATA_ATTRIBUTES, a);
        }
        let pte_nx = self.num("pte").map(|pte| {
            let table = self.num("pte_table_bits").unwrap_or(0);
            pte & (PTE_UXN | PTE_PXN) != 0 || table & TABLE_XN != 0
        });
        if let Some(nx) = pte_nx {
            f.set(keys::LOADER_DATA_PTE_NX, nx);
        }
        match (attrs, pte_nx) {
            (Some(a), _) => {
                f.set(keys::LOADER_DATA_NX, a & EFI_MEMORY_XP != 0);
                f.set(keys::LOADER_DATA_NX_SOURCE, "mem-attr-protocol");
            }
            (None, Some(nx)) => {
                f.set(keys::LOADER_DATA_NX, nx);
                f.set(keys::LOADER_DATA_NX_SOURCE, "page-table");
            }
            (None, None) => {}
        }
        if self.num("memmap_status") == Some(0) {
            if let Some(any) = self.num("memmap_any_attrs") {
                f.set(keys::MEMMAP_XP, any & EFI_MEMORY_XP != 0);
                f.set(keys::MEMMAP_RO, any & EFI_MEMORY_RO != 0);
            }
            if let Some(ld) = self.num("memmap_loader_data_attrs") {
                f.set(keys::MEMMAP_LOADER_DATA_XP, ld & EFI_MEMORY_XP != 0);
            }
        }
        // An absent SecureBoot variable (EFI_NOT_FOUND) is Secure Boot off.
        for (name, key) in [
            ("secure_boot", keys::SECURE_BOOT),
            ("setup_mode", keys::SETUP_MODE),
        ] {
            match (self.num(&format!("{name}_status")), self.num(name)) {
                (Some(0), Some(v)) => f.set(key, v == 1),
                (Some(s), _) if s == EFI_NOT_FOUND => f.set(key, false),
                _ => {}
            }
        }
        if let Some(tcr) = self.num("tcr") {
            let size: Option<u64> = match (tcr >> 14) & 3 {
                0 => Some(4096),
                1 => Some(65536),
                2 => Some(16384),
                _ => None,
            };
            if let Some(s) = size {
                f.set(keys::PAGE_SIZE, s);
            }
        }
        let conduit = match (self.str("dt_psci_method"), self.num("fadt_arm_boot_arch")) {
            (Some("hvc"), _) => Some("hvc"),
            (Some("smc"), _) => Some("smc"),
            (Some(_), _) => Some("none"),
            (None, Some(flags)) if flags & 1 == 0 => Some("none"),
            (None, Some(flags)) => Some(if flags & 2 != 0 { "hvc" } else { "smc" }),
            (None, None) => None,
        };
        if let Some(c) = conduit {
            f.set(keys::SMCCC_CONDUIT, c);
        }
        match self.num("smccc_version_trapped") {
            Some(1) => {
                let ec = self.num("smccc_version_esr").map(|esr| (esr >> 26) & 0x3F);
                let verdict = if ec == Some(0) {
                    "undefined-instruction".to_string()
                } else {
                    format!("exception-ec-{:#x}", ec.unwrap_or(0xFF))
                };
                f.set(keys::SMCCC_UNKNOWN_FN, verdict);
            }
            Some(0) => {
                if let Some(x0) = self.num("smccc_version_x0") {
                    // SMCCC's NOT_SUPPORTED is -1 as a 32-bit or a 64-bit value.
                    let v = if x0 == u64::MAX || x0 == 0xFFFF_FFFF {
                        "not-supported".to_string()
                    } else {
                        format!("answered-{x0:#x}")
                    };
                    f.set(keys::SMCCC_UNKNOWN_FN, v);
                }
            }
            _ => {}
        }
        f.set(keys::PROBE_COMPLETE, self.complete);
        f
    }
}

/// `EFI_NOT_FOUND` on a 64-bit machine.
const EFI_NOT_FOUND: u64 = 0x8000_0000_0000_000E;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the probe printed under Debian's edk2 2025.02-8+deb13u1 strict NX on QEMU 7.2.22
    /// (`-cpu cortex-a72`, TCG), from its serial.raw.
    const STRICT_NX: &str = "\
BOOTWATCH-PROBE begin=1
BOOTWATCH-PROBE vendor=Debian distribution of EDK II
BOOTWATCH-PROBE fw_revision=0x0000000000010000
BOOTWATCH-PROBE uefi_revision=0x0000000000020046
BOOTWATCH-PROBE current_el=0x0000000000000001
BOOTWATCH-PROBE midr=0x00000000410fd083
BOOTWATCH-PROBE id_aa64pfr0=0x0000000000000022
BOOTWATCH-PROBE mem_attr_status=0x0000000000000000
BOOTWATCH-PROBE alloc_status=0x0000000000000000
BOOTWATCH-PROBE loader_data_page=0x000000007e8b5000
BOOTWATCH-PROBE get_attrs_status=0x0000000000000000
BOOTWATCH-PROBE loader_data_attrs=0x0000000000004000
BOOTWATCH-PROBE tcr=0x0000000480803514
BOOTWATCH-PROBE pte=0x006000007e8b570f
BOOTWATCH-PROBE pte_level=0x0000000000000003
BOOTWATCH-PROBE pte_table_bits=0x0000000000000000
BOOTWATCH-PROBE memmap_status=0x0000000000000000
BOOTWATCH-PROBE memmap_descriptors=0x0000000000000066
BOOTWATCH-PROBE memmap_any_attrs=0x8000000000000009
BOOTWATCH-PROBE memmap_loader_data_attrs=0x0000000000000008
BOOTWATCH-PROBE memmap_page_attrs=0x0000000000000008
BOOTWATCH-PROBE secure_boot_status=0x0000000000000000
BOOTWATCH-PROBE secure_boot=0x0000000000000000
BOOTWATCH-PROBE setup_mode_status=0x0000000000000000
BOOTWATCH-PROBE setup_mode=0x0000000000000001
BOOTWATCH-PROBE fadt_arm_boot_arch=0x0000000000000003
BOOTWATCH-PROBE smccc_version_trapped=0x0000000000000000
BOOTWATCH-PROBE smccc_version_x0=0xffffffffffffffff
BOOTWATCH-PROBE end=1";

    fn facts(text: &str) -> Facts {
        ProbeOutput::from_lines(PatternSet::builtin(), text.lines()).facts()
    }

    #[test]
    fn raw_values_become_facts() {
        let f = facts(STRICT_NX);
        let get = |k: &str| f.get(k).cloned().unwrap_or(Value::Null);
        assert_eq!(get(keys::VENDOR), "Debian distribution of EDK II");
        assert_eq!(get(keys::REVISION), 0x10000);
        assert_eq!(get(keys::UEFI_REVISION), "2.70");
        assert_eq!(get(keys::MEM_ATTR_PROTOCOL), true);
        assert_eq!(get(keys::LOADER_DATA_NX), true);
        assert_eq!(get(keys::LOADER_DATA_NX_SOURCE), "mem-attr-protocol");
        assert_eq!(get(keys::LOADER_DATA_PTE_NX), true);
        assert_eq!(get(keys::MEMMAP_XP), false);
        assert_eq!(get(keys::MEMMAP_RO), false);
        assert_eq!(get(keys::MEMMAP_LOADER_DATA_XP), false);
        assert_eq!(get(keys::SECURE_BOOT), false);
        assert_eq!(get(keys::SETUP_MODE), true);
        assert_eq!(get(keys::PAGE_SIZE), 4096);
        assert_eq!(get(keys::CURRENT_EL), 1);
        assert_eq!(get(keys::EL2), false);
        assert_eq!(get(keys::EL3), false);
        assert_eq!(get(keys::SMCCC_CONDUIT), "hvc");
        assert_eq!(get(keys::SMCCC_UNKNOWN_FN), "not-supported");
        assert_eq!(get(keys::PROBE_COMPLETE), true);
    }

    #[test]
    fn without_the_protocol_the_page_table_decides_and_a_trap_is_named() {
        let text = STRICT_NX
            .replace(
                "mem_attr_status=0x0000000000000000",
                "mem_attr_status=0x800000000000000e",
            )
            .replace("get_attrs_status", "x_get_attrs_status")
            .replace("pte=0x006000007e8b570f", "pte=0x000000007e8b570f")
            .replace(
                "secure_boot_status=0x0000000000000000\nBOOTWATCH-PROBE secure_boot=0x0000000000000000",
                "secure_boot_status=0x800000000000000e",
            )
            .replace(
                "smccc_version_trapped=0x0000000000000000",
                "smccc_version_trapped=0x0000000000000001\nBOOTWATCH-PROBE smccc_version_esr=0x0000000002000000",
            );
        let f = facts(&text);
        assert_eq!(f.get(keys::MEM_ATTR_PROTOCOL), Some(&Value::Bool(false)));
        assert_eq!(f.get(keys::LOADER_DATA_NX), Some(&Value::Bool(false)));
        assert_eq!(
            f.get(keys::LOADER_DATA_NX_SOURCE),
            Some(&Value::from("page-table"))
        );
        assert_eq!(f.get(keys::LOADER_DATA_ATTRIBUTES), None);
        assert_eq!(f.get(keys::SECURE_BOOT), Some(&Value::Bool(false)));
        assert_eq!(
            f.get(keys::SMCCC_UNKNOWN_FN),
            Some(&Value::from("undefined-instruction"))
        );
    }

    #[test]
    fn the_raw_console_is_normalized_first() {
        let raw = STRICT_NX
            .replace('\n', "\r\n")
            .replace("Debian distribution", "\x1b[0mDebian distribution");
        let out = ProbeOutput::from_serial(PatternSet::builtin(), raw.as_bytes());
        assert!(out.complete);
        assert_eq!(
            out.values.get("vendor").map(String::as_str),
            Some("Debian distribution of EDK II")
        );
    }

    #[test]
    fn a_cut_short_probe_says_so_and_guesses_nothing() {
        let f = facts(
            "BOOTWATCH-PROBE begin=1\nBOOTWATCH-PROBE vendor=EDK II\nSynchronous Exception at 0x1",
        );
        assert_eq!(f.get(keys::PROBE_COMPLETE), Some(&Value::Bool(false)));
        assert_eq!(f.get(keys::MEM_ATTR_PROTOCOL), None);
        assert_eq!(f.get(keys::VENDOR), Some(&Value::from("EDK II")));
    }
}
