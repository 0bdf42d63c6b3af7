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
//! | `firmware.build_banner` | string | image | the banner format the image prints (e.g. `UEFI firmware (version %s built at %a on %a)`) when found |
//! | `firmware.volumes` | number | image | firmware volumes found (nested ones included) |
//! | `firmware.drivers` | list of strings | image | module names (UI sections) of every PE/TE image in the volumes, sorted, unique |
//! | `firmware.smccc_drivers` | list of strings | image | modules whose executable sections contain an `hvc` or `smc` instruction, sorted |
//! | `firmware.hvc_drivers` | list of strings | image | modules containing `hvc #imm` |
//! | `firmware.smc_drivers` | list of strings | image | modules containing `smc #imm` |
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
//! | `firmware.probe_verdict` | string | probe | how the probe's boot ended (`power-off` when it ran to the end; `sync-exception` when the firmware crashed) |
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
    pub const BUILD_BANNER: &str = "firmware.build_banner";
    pub const VOLUMES: &str = "firmware.volumes";
    pub const DRIVERS: &str = "firmware.drivers";
    pub const SMCCC_DRIVERS: &str = "firmware.smccc_drivers";
    pub const HVC_DRIVERS: &str = "firmware.hvc_drivers";
    pub const SMC_DRIVERS: &str = "firmware.smc_drivers";
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
}
