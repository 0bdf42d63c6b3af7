//! What an EFI binary of the boot chain is, read from its bytes: the PE header (machine,
//! `NX_COMPAT`, alignment, entry point), the sections and which are both writable and
//! executable (W^X), the `.sbat` section (shim's CSV of component generations) and the version
//! strings shim and GRUB embed; and the `chain.*` facts of a boot path made of such binaries.
//! Pure: bytes in, values out (the ESP and the vars store are read in `inputs::images::chain`).

use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

use crate::core::facts::Facts;

/// `IMAGE_DLLCHARACTERISTICS_NX_COMPAT`: the image runs with its data non-executable.
pub const NX_COMPAT: u16 = 0x0100;
/// `IMAGE_FILE_MACHINE_ARM64`.
pub const MACHINE_ARM64: u16 = 0xaa64;

/// One line of a `.sbat` section: `component,generation,vendor,package,version,url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbatEntry {
    pub component: String,
    pub generation: u32,
    pub vendor: String,
    pub package: String,
    pub version: String,
    pub url: String,
}

/// One section of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub rva: u32,
    pub size: u32,
    pub writable: bool,
    pub executable: bool,
}

/// What kind of boot-chain program a binary is, from its content (SBAT, the kernel stub's
/// messages); the file name only tells shim's own helpers apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BinaryKind {
    Shim,
    Grub,
    /// shim's MokManager (`mmaa64.efi`).
    MokManager,
    /// shim's fallback (`fbaa64.efi`).
    Fallback,
    /// A Linux kernel's EFI stub (a PE `Image`/`vmlinuz.efi`).
    Kernel,
    Unknown,
}

impl BinaryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryKind::Shim => "shim",
            BinaryKind::Grub => "grub",
            BinaryKind::MokManager => "mok-manager",
            BinaryKind::Fallback => "fallback",
            BinaryKind::Kernel => "kernel",
            BinaryKind::Unknown => "unknown",
        }
    }
}

/// The PE facts of one EFI binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeInfo {
    /// `IMAGE_FILE_HEADER.Machine` (0xaa64 for AArch64).
    pub machine: u16,
    /// `arm64`, `x86_64`, ... (`unknown-0xNNNN` otherwise).
    pub machine_name: String,
    /// PE32+ (the optional header's magic is 0x20b).
    pub pe32_plus: bool,
    pub subsystem: u16,
    pub dll_characteristics: u16,
    pub nx_compat: bool,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub entry_rva: u32,
    pub image_size: u32,
    pub sections: Vec<Section>,
    /// Sections both writable and executable (a W^X violation).
    pub wx_sections: Vec<String>,
    /// Every section starts on a 4 KiB boundary (what page-granular memory attributes need).
    pub sections_page_aligned: bool,
    pub sbat: Vec<SbatEntry>,
    pub kind: BinaryKind,
    /// shim's `$Version: 15.8 $`, GRUB's package version (`2.06-13+deb12u2`), when embedded.
    pub version: Option<String>,
}

/// Reads a PE image. `file_name` (the name on the ESP) helps tell its kind when it has no SBAT.
pub fn inspect_pe(bytes: &[u8], file_name: &str) -> Result<PeInfo, String> {
    use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile32, PeFile64};
    use object::{LittleEndian as LE, Object, ObjectSection};

    /// The header fields every PE flavour has, read the same way.
    struct Header {
        machine: u16,
        subsystem: u16,
        dllch: u16,
        section_alignment: u32,
        file_alignment: u32,
        entry: u32,
        image_size: u32,
        sections: Vec<Section>,
        sbat: Vec<u8>,
    }

    fn common<Pe: ImageNtHeaders>(pe: &object::read::pe::PeFile<'_, Pe>, bytes: &[u8]) -> Header {
        let nt = pe.nt_headers();
        let opt = nt.optional_header();
        let mut sections = Vec::new();
        let mut sbat = Vec::new();
        for s in pe.sections() {
            let h = s.pe_section();
            let ch = h.characteristics.get(LE);
            let name = s.name().unwrap_or("?").to_string();
            if name == ".sbat"
                && let Ok(d) = h.pe_data(bytes)
            {
                let len = (h.virtual_size.get(LE) as usize).min(d.len());
                sbat = d[..len].to_vec();
            }
            sections.push(Section {
                name,
                rva: h.virtual_address.get(LE),
                size: h.virtual_size.get(LE),
                writable: ch & object::pe::IMAGE_SCN_MEM_WRITE != 0,
                executable: ch & object::pe::IMAGE_SCN_MEM_EXECUTE != 0,
            });
        }
        Header {
            machine: nt.file_header().machine.get(LE),
            subsystem: opt.subsystem(),
            dllch: opt.dll_characteristics(),
            section_alignment: opt.section_alignment(),
            file_alignment: opt.file_alignment(),
            entry: opt.address_of_entry_point(),
            image_size: opt.size_of_image(),
            sections,
            sbat,
        }
    }

    let (pe32_plus, h) = match PeFile64::parse(bytes) {
        Ok(pe) => (true, common(&pe, bytes)),
        Err(e64) => match PeFile32::parse(bytes) {
            Ok(pe) => (false, common(&pe, bytes)),
            Err(_) => return Err(format!("not a PE image: {e64}")),
        },
    };
    let Header {
        machine,
        subsystem,
        dllch,
        section_alignment: sa,
        file_alignment: fa,
        entry,
        image_size,
        sections,
        sbat: sbat_bytes,
    } = h;
    let sbat = parse_sbat(&String::from_utf8_lossy(&sbat_bytes));
    let wx_sections = sections
        .iter()
        .filter(|s| s.writable && s.executable)
        .map(|s| s.name.clone())
        .collect();
    let sections_page_aligned = sections.iter().all(|s| s.rva % 4096 == 0);
    let kind = kind_of(&sbat, file_name, bytes);
    let version = version_of(kind, bytes, &sbat);
    Ok(PeInfo {
        machine,
        machine_name: machine_name(machine),
        pe32_plus,
        subsystem,
        dll_characteristics: dllch,
        nx_compat: dllch & NX_COMPAT != 0,
        section_alignment: sa,
        file_alignment: fa,
        entry_rva: entry,
        image_size,
        sections,
        wx_sections,
        sections_page_aligned,
        sbat,
        kind,
        version,
    })
}

/// Parses `.sbat` text: one CSV record per line, at least the first five fields; lines that are
/// not records (padding, a header without a generation) are skipped.
pub fn parse_sbat(text: &str) -> Vec<SbatEntry> {
    text.lines()
        .map(|l| l.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(6, ',').collect();
            if f.len() < 5 {
                return None;
            }
            Some(SbatEntry {
                component: f[0].to_string(),
                generation: f[1].trim().parse().ok()?,
                vendor: f[2].to_string(),
                package: f[3].to_string(),
                version: f[4].to_string(),
                url: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn machine_name(m: u16) -> String {
    match m {
        0xaa64 => "arm64".into(),
        0x8664 => "x86_64".into(),
        0x014c => "i386".into(),
        0x01c4 => "arm".into(),
        0x5064 => "riscv64".into(),
        0x6264 => "loongarch64".into(),
        other => format!("unknown-{other:#06x}"),
    }
}

fn kind_of(sbat: &[SbatEntry], file_name: &str, bytes: &[u8]) -> BinaryKind {
    let has = |c: &str| sbat.iter().any(|e| e.component == c);
    let name = file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    // shim, MokManager and fallback all carry shim's SBAT; the name tells them apart.
    if has("shim") {
        return if name.starts_with("mm") {
            BinaryKind::MokManager
        } else if name.starts_with("fb") {
            BinaryKind::Fallback
        } else {
            BinaryKind::Shim
        };
    }
    if has("grub") {
        return BinaryKind::Grub;
    }
    if has("linux") || memchr::memmem::find(bytes, b"EFI stub: ").is_some() {
        return BinaryKind::Kernel;
    }
    // A file name alone is not evidence: a replaced `shimaa64.efi` is exactly what a broken
    // update leaves.
    BinaryKind::Unknown
}

fn version_of(kind: BinaryKind, bytes: &[u8], sbat: &[SbatEntry]) -> Option<String> {
    static SHIM: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static GRUB: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let text = |m: &[u8]| String::from_utf8_lossy(m).into_owned();
    match kind {
        BinaryKind::Shim | BinaryKind::MokManager | BinaryKind::Fallback => {
            let re =
                SHIM.get_or_init(|| Regex::new(r"\$Version: ([0-9][0-9A-Za-z.+~-]*) \$").unwrap());
            re.captures(bytes).map(|c| text(&c[1]))
        }
        BinaryKind::Grub => {
            // GRUB's PACKAGE_VERSION is a NUL-terminated string of its own: the one that starts
            // with the upstream version in the `grub` SBAT record (2.06 -> "2.06-13+deb12u2").
            let upstream = sbat.iter().find(|e| e.component == "grub")?.version.clone();
            let re = GRUB.get_or_init(|| {
                Regex::new(r"\x00(?:GRUB )?([0-9]+\.[0-9]+[0-9A-Za-z.+~:-]*)\x00").unwrap()
            });
            let mut best: Option<String> = None;
            for c in re.captures_iter(bytes) {
                let v = text(&c[1]);
                let longer = best.as_ref().is_none_or(|b| v.len() > b.len());
                if v.starts_with(&upstream) && longer {
                    best = Some(v);
                }
            }
            best.or(Some(upstream))
        }
        _ => None,
    }
}

/// One binary on the boot path: where it is on the ESP, why it is on the path, what it is,
/// and whether it differs from the install media's copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainBinary {
    /// The path on the ESP (`EFI/debian/shimaa64.efi`).
    pub path: String,
    /// Why it is on the boot path: `Boot0008 "debian"`, `removable path`, `second stage of
    /// EFI/debian/shimaa64.efi`.
    pub via: String,
    pub size: u64,
    pub sha256: String,
    /// `None` when the file could not be read as a PE image (`error` says why).
    pub pe: Option<PeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Compared with the base image: `Some(true)` when the file differs or is new, `None` when
    /// there is no base to compare with.
    pub changed: Option<bool>,
    /// The base image's copy, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Box<ChainBinary>>,
}

/// A boot entry of the variable store, as far as the chain needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntry {
    /// `Boot0008`.
    pub name: String,
    pub description: String,
    pub active: bool,
    /// The file on the ESP it starts, when its device path names one.
    pub file: Option<String>,
    /// An application inside the firmware volume (UiApp, the shell): not on any disk.
    #[serde(default)]
    pub firmware_app: bool,
}

/// The boot chain of a disk: the vars store's `BootOrder` (when read) and each binary on the
/// boot path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    pub boot_order: Option<Vec<BootEntry>>,
    pub binaries: Vec<ChainBinary>,
    /// Files under `EFI/` that differ from the base image (on the boot path or not).
    pub changed_files: Vec<String>,
}

impl Chain {
    /// The binary the firmware starts first: the first active `BootOrder` entry whose file is
    /// on the ESP, else the removable path.
    pub fn first(&self) -> Option<&ChainBinary> {
        self.binaries
            .iter()
            .find(|b| !b.via.starts_with("second stage"))
    }

    /// The `chain.*` facts (without the prefix's party: keys start with `chain.`).
    pub fn facts(&self) -> Facts {
        let mut f = Facts::new();
        f.set(
            "chain.boot_path",
            self.binaries
                .iter()
                .map(|b| b.path.clone())
                .collect::<Vec<_>>(),
        );
        if let Some(order) = &self.boot_order {
            f.set(
                "chain.boot_order",
                order.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            );
        }
        let changed: Vec<String> = self
            .binaries
            .iter()
            .filter(|b| b.changed == Some(true))
            .map(|b| b.path.clone())
            .collect();
        if self.binaries.iter().any(|b| b.changed.is_some()) {
            f.set("chain.changed", changed);
            f.set("chain.changed_files", self.changed_files.clone());
        }
        f.set(
            "chain.wx_sections",
            self.binaries
                .iter()
                .filter_map(|b| b.pe.as_ref())
                .any(|p| !p.wx_sections.is_empty()),
        );
        if let Some(first) = self.first() {
            binary_facts(&mut f, "chain.first", first);
        }
        for kind in [BinaryKind::Shim, BinaryKind::Grub] {
            let key = format!("chain.{}", kind.as_str());
            match self
                .binaries
                .iter()
                .find(|b| b.pe.as_ref().is_some_and(|p| p.kind == kind))
            {
                Some(b) => binary_facts(&mut f, &key, b),
                None => f.set(format!("{key}.present"), false),
            }
        }
        f
    }
}

fn binary_facts(f: &mut Facts, key: &str, b: &ChainBinary) {
    f.set(format!("{key}.present"), true);
    f.set(format!("{key}.path"), b.path.clone());
    f.set(format!("{key}.size"), b.size);
    if let Some(c) = b.changed {
        f.set(format!("{key}.changed"), c);
    }
    let Some(pe) = &b.pe else {
        f.set(format!("{key}.pe"), false);
        return;
    };
    f.set(format!("{key}.pe"), true);
    f.set(format!("{key}.kind"), pe.kind.as_str());
    f.set(format!("{key}.machine"), pe.machine_name.clone());
    f.set(format!("{key}.nx_compat"), pe.nx_compat);
    f.set(format!("{key}.section_alignment"), pe.section_alignment);
    f.set(
        format!("{key}.sections_page_aligned"),
        pe.sections_page_aligned,
    );
    f.set(format!("{key}.wx_sections"), pe.wx_sections.clone());
    f.set(format!("{key}.entry_rva"), pe.entry_rva);
    f.set(format!("{key}.sbat"), !pe.sbat.is_empty());
    if let Some(v) = &pe.version {
        f.set(format!("{key}.version"), v.clone());
    }
    if let Some(o) = b.original.as_ref().and_then(|o| o.pe.as_ref()) {
        f.set(format!("{key}.original_kind"), o.kind.as_str());
        if let Some(v) = &o.version {
            f.set(format!("{key}.original_version"), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbat_records_are_parsed_and_junk_lines_skipped() {
        let s = parse_sbat(
            "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
             shim.debian,1,Debian,shim,15.8,https://tracker.debian.org/pkg/shim\n\0\0\0",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].component, "shim.debian");
        assert_eq!(s[1].version, "15.8");
        assert_eq!(s[1].url, "https://tracker.debian.org/pkg/shim");
        assert!(parse_sbat("not,a,record\nx,notanumber,v,p,1\n").is_empty());
    }

    #[test]
    fn the_generated_crash_fixture_is_an_arm64_pe_without_sbat() {
        let app = crate::inputs::fixtures::Fixture::Crash.efi_app();
        let pe = inspect_pe(&app, "EFI/BOOT/BOOTAA64.EFI").unwrap();
        assert_eq!(pe.machine, MACHINE_ARM64);
        assert!(pe.pe32_plus);
        assert_eq!(pe.subsystem, 10);
        assert!(pe.sbat.is_empty());
        assert_eq!(pe.kind, BinaryKind::Unknown);
        assert_eq!(pe.version, None);
        assert!(inspect_pe(b"MZ not really", "x.efi").is_err());
    }
}
