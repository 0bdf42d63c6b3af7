//! Facts about a firmware build and the hypervisor under it: what the firmware image contains
//! (read offline from its firmware volumes) and what a probe application measured inside the
//! running firmware. Pure: bytes and console lines in, [`Facts`](crate::core::facts::Facts) out.
//!
//! # Keys (the contract with `explain` and `known-bugs.toml`)
//!
//! A key is set only when it was measured; an absent key means "not measured", never "false".
//! *Source*: `image` = offline inspection of the code image (`bootwatch inspect firmware`);
//! `probe` = the probe application booted by the firmware (`bootwatch probe firmware`);
//! `qemu` = the QEMU binary and the case's machine (no guest needed).
//!
//! | key | type | source | meaning |
//! | --- | --- | --- | --- |
//! | `firmware.code_sha256` | string | image | sha256 of the code image file |
//! | `firmware.version_string` | string | image, probe | the build's version string (edk2: `PcdFirmwareVersionString`, e.g. `2026.08+ds-2`; the probe reads the system table's `FirmwareVendor`/`FirmwareRevision` instead) |
//! | `firmware.source_version` | string | image | the edk2 source tree's version in the modules' debug paths (`.../edk2-2020.11/Build/...` -> `2020.11`, `2026.08+ds`): every Debian build has it |
//! | `firmware.build_banner` | string | image | the banner format the image prints (e.g. `UEFI firmware (version %s built at %a on %a)`) when found |
//! | `firmware.volumes` | number | image | firmware volumes found (nested ones included) |
//! | `firmware.drivers` | list of strings | image | module names (UI sections) of every PE/TE image in the volumes, sorted, unique |
//! | `firmware.smccc_drivers` | list of strings | image | modules whose executable sections contain an `hvc` or `smc` instruction, sorted |
//! | `firmware.hvc_drivers` | list of strings | image | modules containing `hvc #imm` |
//! | `firmware.smc_drivers` | list of strings | image | modules containing `smc #imm` |
//! | `firmware.smccc_calls` | object: module -> list of strings | image | for each module with a conduit instruction, the SMCCC function IDs its code builds (`0x84000009`, ...; see `code::SmcccUse::functions`) |
//! | `firmware.smccc_non_psci_drivers` | list of strings | image | modules that build SMCCC function IDs outside PSCI (owner 4, 0x00-0x1f): calls a hypervisor that only emulates PSCI may not answer |
//! | `firmware.smccc_non_psci_functions` | list of strings | image | those function IDs, unique, sorted |
//! | `firmware.vendor` | string | probe | `SystemTable->FirmwareVendor` (e.g. `EDK II`) |
//! | `firmware.revision` | number | probe | `SystemTable->FirmwareRevision` |
//! | `firmware.uefi_revision` | string | probe | `SystemTable->Hdr.Revision` as `major.minor` (e.g. `2.70`) |
//! | `firmware.mem_attr_protocol` | bool | probe | `LocateProtocol(EFI_MEMORY_ATTRIBUTE_PROTOCOL)` succeeded |
//! | `firmware.loader_data_attributes` | number | probe | `GetMemoryAttributes` of an `AllocatePages(EfiLoaderData)` page (only with the protocol) |
//! | `firmware.loader_data_nx` | bool | probe | that page is not executable: from the protocol (`EFI_MEMORY_XP`) when installed, else from the page table entry (UXN/PXN) the probe walks itself |
//! | `firmware.loader_data_nx_source` | string | probe | `mem-attr-protocol` or `page-table` |
//! | `firmware.loader_data_pte_nx` | bool | probe | the page table walk's answer (UXN or PXN set for that page), always measured |
//! | `firmware.memmap_xp` | bool | probe | some memory map descriptor has `EFI_MEMORY_XP` set |
//! | `firmware.memmap_ro` | bool | probe | some memory map descriptor has `EFI_MEMORY_RO` set |
//! | `firmware.memmap_loader_data_xp` | bool | probe | some `EfiLoaderData` descriptor has `EFI_MEMORY_XP` set |
//! | `firmware.secure_boot` | bool | probe | the `SecureBoot` variable is 1 (absent variable: false) |
//! | `firmware.setup_mode` | bool | probe | the `SetupMode` variable is 1 |
//! | `firmware.page_size` | number | probe | the translation granule of the firmware's page tables (`TCR_EL1.TG0`), bytes |
//! | `firmware.probe_complete` | bool | probe | the probe printed its last line (false: it was cut short, e.g. by an exception; the facts present were still measured) |
//! | `firmware.probe_verdict` | string | probe | how the probe's boot ended (`qemu-exited` when it ran to the end and powered off; `sync-exception` when the firmware crashed) |
//! | `hypervisor.qemu_version` | string | qemu | `qemu-system-aarch64 --version`'s version (e.g. `7.2.22`) |
//! | `hypervisor.accelerator` | string | qemu | `tcg`, `kvm`, `hvf` |
//! | `hypervisor.cpu` | string | qemu | the `-cpu` model |
//! | `hypervisor.midr` | number | probe | `MIDR_EL1` as the guest reads it |
//! | `hypervisor.current_el` | number | probe | the exception level the firmware runs its applications at |
//! | `hypervisor.el2` | bool | probe | `ID_AA64PFR0_EL1.EL2` != 0: the virtual CPU implements EL2 |
//! | `hypervisor.el3` | bool | probe | `ID_AA64PFR0_EL1.EL3` != 0: the virtual CPU implements EL3 |
//! | `hypervisor.smccc_conduit` | string | probe | `hvc`, `smc` or `none`: the PSCI conduit in the firmware's device tree |
//! | `hypervisor.smccc_unknown_fn` | string | probe | how the hypervisor answers an SMCCC call it does not implement, over that conduit (the probe calls `SMCCC_VERSION`, 0x80000000, which QEMU's PSCI emulation does not implement, from EL1 with its own exception vectors installed, so a trap is caught, not fatal): `not-supported` (x0 = -1, as SMCCC requires), `undefined-instruction` (the call traps as an undefined instruction, ESR.EC 0), `exception-ec-0xNN` (another trap), `answered-0xNNNN` (implemented: x0) |

pub mod keys {
    //! The key names of the table above, for code that sets or reads them.
    pub const CODE_SHA256: &str = "firmware.code_sha256";
    pub const VERSION_STRING: &str = "firmware.version_string";
    pub const SOURCE_VERSION: &str = "firmware.source_version";
    pub const BUILD_BANNER: &str = "firmware.build_banner";
    pub const VOLUMES: &str = "firmware.volumes";
    pub const DRIVERS: &str = "firmware.drivers";
    pub const SMCCC_DRIVERS: &str = "firmware.smccc_drivers";
    pub const HVC_DRIVERS: &str = "firmware.hvc_drivers";
    pub const SMC_DRIVERS: &str = "firmware.smc_drivers";
    pub const SMCCC_CALLS: &str = "firmware.smccc_calls";
    pub const SMCCC_NON_PSCI_DRIVERS: &str = "firmware.smccc_non_psci_drivers";
    pub const SMCCC_NON_PSCI_FUNCTIONS: &str = "firmware.smccc_non_psci_functions";
    pub const VENDOR: &str = "firmware.vendor";
    pub const REVISION: &str = "firmware.revision";
    pub const UEFI_REVISION: &str = "firmware.uefi_revision";
    pub const MEM_ATTR_PROTOCOL: &str = "firmware.mem_attr_protocol";
    pub const LOADER_DATA_ATTRIBUTES: &str = "firmware.loader_data_attributes";
    pub const LOADER_DATA_NX: &str = "firmware.loader_data_nx";
    pub const LOADER_DATA_NX_SOURCE: &str = "firmware.loader_data_nx_source";
    pub const LOADER_DATA_PTE_NX: &str = "firmware.loader_data_pte_nx";
    pub const MEMMAP_XP: &str = "firmware.memmap_xp";
    pub const MEMMAP_RO: &str = "firmware.memmap_ro";
    pub const MEMMAP_LOADER_DATA_XP: &str = "firmware.memmap_loader_data_xp";
    pub const SECURE_BOOT: &str = "firmware.secure_boot";
    pub const SETUP_MODE: &str = "firmware.setup_mode";
    pub const PAGE_SIZE: &str = "firmware.page_size";
    pub const PROBE_COMPLETE: &str = "firmware.probe_complete";
    pub const PROBE_VERDICT: &str = "firmware.probe_verdict";
    pub const QEMU_VERSION: &str = "hypervisor.qemu_version";
    pub const ACCELERATOR: &str = "hypervisor.accelerator";
    pub const CPU: &str = "hypervisor.cpu";
    pub const MIDR: &str = "hypervisor.midr";
    pub const CURRENT_EL: &str = "hypervisor.current_el";
    pub const EL2: &str = "hypervisor.el2";
    pub const EL3: &str = "hypervisor.el3";
    pub const SMCCC_CONDUIT: &str = "hypervisor.smccc_conduit";
    pub const SMCCC_UNKNOWN_FN: &str = "hypervisor.smccc_unknown_fn";

    /// The keys only a boot of the probe measures (source `probe` in the table; `qemu` ones
    /// too, which the probe records): what `explain` boots it for.
    pub const PROBED: &[&str] = &[
        VENDOR,
        REVISION,
        UEFI_REVISION,
        MEM_ATTR_PROTOCOL,
        LOADER_DATA_ATTRIBUTES,
        LOADER_DATA_NX,
        LOADER_DATA_NX_SOURCE,
        LOADER_DATA_PTE_NX,
        MEMMAP_XP,
        MEMMAP_RO,
        MEMMAP_LOADER_DATA_XP,
        SECURE_BOOT,
        SETUP_MODE,
        PAGE_SIZE,
        PROBE_COMPLETE,
        PROBE_VERDICT,
        QEMU_VERSION,
        ACCELERATOR,
        CPU,
        MIDR,
        CURRENT_EL,
        EL2,
        EL3,
        SMCCC_CONDUIT,
        SMCCC_UNKNOWN_FN,
    ];
}

pub mod code;
pub mod probe;
pub mod volume;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::facts::Facts;

pub use volume::VolumeError;

/// One module of an inspected image and what it calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverInfo {
    pub name: String,
    pub guid: String,
    pub file_type: u8,
    pub te: bool,
    /// `None` when its image could not be parsed.
    pub smccc: Option<code::SmcccUse>,
}

/// What offline inspection found in a code image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspection {
    pub facts: Facts,
    pub drivers: Vec<DriverInfo>,
    /// Parts that could not be read, described (unknown encodings).
    pub skipped: Vec<String>,
}

/// The banner edk2's PrePi prints first (`UEFI firmware (version %s built at %a on %a)`).
const BANNER_PREFIX: &[u8] = b"UEFI firmware (version";

/// Inspects a firmware code image (an edk2 `.fd`): its volumes, its drivers, which drivers issue
/// SMCCC calls, its version strings. `sha256` is the file's hash, recorded as a fact.
pub fn inspect(image: &[u8], sha256: &str) -> Result<Inspection, VolumeError> {
    let contents = volume::read_image(image)?;
    let mut drivers: Vec<DriverInfo> = contents
        .modules
        .iter()
        .map(|m| DriverInfo {
            name: m.display_name().to_string(),
            guid: m.guid.clone(),
            file_type: m.file_type,
            te: m.image == volume::ImageKind::Te,
            smccc: code::smccc_use(m.image, &m.bytes),
        })
        .collect();
    drivers.sort_by(|a, b| a.name.cmp(&b.name).then(a.guid.cmp(&b.guid)));

    let mut facts = Facts::new();
    facts.set(keys::CODE_SHA256, sha256);
    facts.set(keys::VOLUMES, contents.volumes);
    let names = |pred: &dyn Fn(&code::SmcccUse) -> bool| -> Vec<String> {
        let mut v: Vec<String> = drivers
            .iter()
            .filter(|d| d.smccc.as_ref().is_some_and(pred))
            .map(|d| d.name.clone())
            .collect();
        v.dedup();
        v
    };
    let mut all: Vec<String> = drivers.iter().map(|d| d.name.clone()).collect();
    all.dedup();
    facts.set(keys::DRIVERS, all);
    facts.set(keys::SMCCC_DRIVERS, names(&|u| u.any()));
    facts.set(keys::HVC_DRIVERS, names(&|u| !u.hvc.is_empty()));
    facts.set(keys::SMC_DRIVERS, names(&|u| !u.smc.is_empty()));
    facts.set(
        keys::SMCCC_NON_PSCI_DRIVERS,
        names(&|u| !u.non_psci().is_empty()),
    );
    let hexes = |v: &[u32]| -> Vec<String> { v.iter().map(|f| format!("{f:#010x}")).collect() };
    let mut calls = serde_json::Map::new();
    let mut non_psci: Vec<u32> = Vec::new();
    for d in &drivers {
        if let Some(u) = d.smccc.as_ref().filter(|u| u.any()) {
            calls.insert(d.name.clone(), hexes(&u.functions).into());
            non_psci.extend(u.non_psci());
        }
    }
    non_psci.sort_unstable();
    non_psci.dedup();
    facts.set(keys::SMCCC_CALLS, Value::Object(calls));
    facts.set(keys::SMCCC_NON_PSCI_FUNCTIONS, hexes(&non_psci));

    if let Some(v) = contents
        .modules
        .iter()
        .find_map(|m| source_version(&m.bytes))
    {
        facts.set(keys::SOURCE_VERSION, v);
    }
    // Version strings live in the module that prints the banner.
    for m in &contents.modules {
        let Some(at) = memchr::memmem::find(&m.bytes, BANNER_PREFIX) else {
            continue;
        };
        let banner: Vec<u8> = m.bytes[at..]
            .iter()
            .take_while(|&&b| b != 0 && b != b'\n' && b != b'\r')
            .copied()
            .collect();
        facts.set(
            keys::BUILD_BANNER,
            Value::String(String::from_utf8_lossy(&banner).into_owned()),
        );
        if let Some(v) = version_string(&m.bytes) {
            facts.set(keys::VERSION_STRING, v);
        }
        break;
    }
    Ok(Inspection {
        facts,
        drivers,
        skipped: contents.skipped,
    })
}

/// The version in a debug path `/edk2-VERSION/` (the CodeView record edk2's GenFw keeps).
fn source_version(bytes: &[u8]) -> Option<String> {
    let at = memchr::memmem::find(bytes, b"/edk2-")? + 6;
    let v: Vec<u8> = bytes[at..]
        .iter()
        .take(40)
        .take_while(|&&b| b != b'/' && b != 0)
        .copied()
        .collect();
    (v.first()?.is_ascii_digit() && bytes.get(at + v.len()) == Some(&b'/'))
        .then(|| String::from_utf8_lossy(&v).into_owned())
}

/// The first UCS-2 string in `bytes` that looks like a version (`2026.08+ds-2`, `0.0.0`): a
/// digit, then at least three of digits, letters and `.+~-_`, with a dot.
fn version_string(bytes: &[u8]) -> Option<String> {
    let ok = |c: u16| {
        c < 0x80 && {
            let c = c as u8;
            c.is_ascii_alphanumeric() || b".+~-_:".contains(&c)
        }
    };
    for start in (0..bytes.len().saturating_sub(8)).step_by(2) {
        let first = u16::from_le_bytes([bytes[start], bytes[start + 1]]);
        if !(b'0' as u16..=b'9' as u16).contains(&first) {
            continue;
        }
        if start >= 2 && ok(u16::from_le_bytes([bytes[start - 2], bytes[start - 1]])) {
            continue; // not the start of a string
        }
        let units: Vec<u16> = bytes[start..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| ok(c))
            .take(64)
            .collect();
        let end = start + units.len() * 2;
        let terminated = bytes.get(end..end + 2) == Some(&[0, 0]);
        if units.len() >= 4 && terminated && units.contains(&(b'.' as u16)) {
            return Some(String::from_utf16_lossy(&units));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    /// `keys::PROBED` is the table's `probe` and `qemu` rows, no more and no fewer.
    #[test]
    fn probed_keys_are_the_tables_probe_and_qemu_rows() {
        let mut from_table: Vec<&str> = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(" | ").collect();
                let key = cols.first()?.strip_suffix('`')?;
                let source = cols.get(2)?;
                (source.split(", ").any(|s| s == "probe" || s == "qemu")
                    && !source.contains("image"))
                .then_some(key)
            })
            .collect();
        from_table.sort_unstable();
        let mut probed = super::keys::PROBED.to_vec();
        probed.sort_unstable();
        assert_eq!(probed, from_table);
        assert!(probed.contains(&"firmware.mem_attr_protocol"));
    }
}
