//! Tiny AArch64 UEFI applications generated at run time, and raw FAT images
//! that carry them as the removable-media boot path `\EFI\BOOT\BOOTAA64.EFI`.
//!
//! Nothing here is a committed binary: each application is a handful of
//! hand-encoded A64 instructions wrapped in a PE32+ image laid out by
//! [`object::write::pe::Writer`], and each FAT image is formatted by `fatfs`.
//!
//! The three fixtures exercise the three outcomes the classifier must tell
//! apart:
//!
//! * [`Fixture::Crash`]: the entry point is `udf #0`; edk2's default
//!   exception handler prints `Synchronous Exception at 0x...` (twice: once
//!   straight to the serial port, once through `ConOut`) and then dead-loops,
//!   which keeps one host core busy under TCG until QEMU is killed.
//! * [`Fixture::Hello`]: prints [`HELLO_MARKER`] through `ConOut`, then asks
//!   the firmware to power off, so QEMU exits on its own with status 0.
//! * [`Fixture::Silent`]: prints nothing and idles in a `wfi` loop forever.
//!
//! Images are deterministic: the PE has a zero timestamp and the FAT
//! directory entries use a fixed date, so the same fixture always yields the
//! same bytes.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use object::pe;
use object::write::pe::{NtHeaders, Writer};

/// The line the [`Fixture::Hello`] application prints (followed by `"\r\n"`).
pub const HELLO_MARKER: &str = "BOOTWATCH-FIXTURE-HELLO";

/// One of the generated EFI applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// Takes a synchronous exception (undefined instruction) at its entry point.
    Crash,
    /// Prints [`HELLO_MARKER`] and shuts the machine down.
    Hello,
    /// Prints nothing and waits for interrupts forever.
    Silent,
}

impl Fixture {
    /// Every fixture, in a fixed order.
    pub const ALL: [Fixture; 3] = [Fixture::Crash, Fixture::Hello, Fixture::Silent];

    /// Short lowercase name: `"crash"`, `"hello"` or `"silent"`.
    pub fn name(self) -> &'static str {
        match self {
            Fixture::Crash => "crash",
            Fixture::Hello => "hello",
            Fixture::Silent => "silent",
        }
    }

    /// File name of this fixture's FAT image: `"<name>.img"`.
    pub fn image_file_name(self) -> &'static str {
        match self {
            Fixture::Crash => "crash.img",
            Fixture::Hello => "hello.img",
            Fixture::Silent => "silent.img",
        }
    }

    /// The PE32+ AArch64 EFI application bytes.
    pub fn efi_app(self) -> Vec<u8> {
        pe_image(&self.text())
    }

    /// Contents of the single `.text` section; the entry point is its first byte.
    fn text(self) -> Vec<u8> {
        match self {
            Fixture::Crash => words(CRASH_CODE),
            Fixture::Silent => words(SILENT_CODE),
            Fixture::Hello => {
                let mut text = words(HELLO_CODE);
                debug_assert_eq!(text.len(), HELLO_MESSAGE_OFFSET);
                text.extend(hello_message_utf16());
                text
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Machine code.
//
// UEFI on AArch64 enters an application as
//   EFI_STATUS efi_main(EFI_HANDLE ImageHandle /* x0 */, EFI_SYSTEM_TABLE *SystemTable /* x1 */)
// with AAPCS64 calling conventions: arguments in x0..x7, x19..x28 and x29/x30
// callee-saved, sp 16-byte aligned, return address in x30.
//
// Structure offsets used below (UEFI spec 2.10, 64-bit pointers, natural
// alignment; EFI_TABLE_HEADER = Signature u64 + Revision, HeaderSize, CRC32,
// Reserved u32 = 24 bytes):
//
// EFI_SYSTEM_TABLE:
//     0 Hdr (24)       24 FirmwareVendor     32 FirmwareRevision (u32 + pad)
//    40 ConsoleInHandle 48 ConIn             56 ConsoleOutHandle
//    64 ConOut          72 StandardErrorHandle 80 StdErr
//    88 RuntimeServices 96 BootServices     104 NumberOfTableEntries
//   112 ConfigurationTable
// EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL:
//     0 Reset           8 OutputString(This, CHAR16 *String)
// EFI_RUNTIME_SERVICES:
//     0 Hdr (24)       24 GetTime  32 SetTime  40 GetWakeupTime
//    48 SetWakeupTime  56 SetVirtualAddressMap 64 ConvertPointer
//    72 GetVariable    80 GetNextVariableName  88 SetVariable
//    96 GetNextHighMonotonicCount
//   104 ResetSystem(EFI_RESET_TYPE, EFI_STATUS, UINTN DataSize, VOID *ResetData)
// ---------------------------------------------------------------------------

/// Crash: the very first instruction is permanently undefined.
const CRASH_CODE: &[u32] = &[
    0x0000_0000, // 0x00: udf #0
];

/// Silent: idle forever without spinning the host CPU.
const SILENT_CODE: &[u32] = &[
    0xD503_207F, // 0x00: 1: wfi
    0x17FF_FFFF, // 0x04:    b 1b
];

/// Hello: `ConOut->OutputString(ConOut, msg)`, then
/// `RuntimeServices->ResetSystem(EfiResetShutdown, EFI_SUCCESS, 0, NULL)`,
/// then idle if the reset ever returns. The UTF-16 message follows the code
/// at [`HELLO_MESSAGE_OFFSET`], reached PC-relatively with `adr`, so the image
/// needs no relocations.
const HELLO_CODE: &[u32] = &[
    0xA9BE_7BFD, // 0x00: stp  x29, x30, [sp, #-32]!
    0x9100_03FD, // 0x04: mov  x29, sp
    0xF900_0BF3, // 0x08: str  x19, [sp, #16]
    0xAA01_03F3, // 0x0c: mov  x19, x1            ; x19 = SystemTable
    0xF940_2260, // 0x10: ldr  x0, [x19, #64]     ; x0 = SystemTable->ConOut
    0xF940_0408, // 0x14: ldr  x8, [x0, #8]       ; x8 = ConOut->OutputString
    0x1000_0161, // 0x18: adr  x1, 0x44           ; x1 = message
    0xD63F_0100, // 0x1c: blr  x8
    0xF940_2E68, // 0x20: ldr  x8, [x19, #88]     ; x8 = SystemTable->RuntimeServices
    0xF940_3508, // 0x24: ldr  x8, [x8, #104]     ; x8 = RuntimeServices->ResetSystem
    0x5280_0040, // 0x28: mov  w0, #2             ; EfiResetShutdown
    0xD280_0001, // 0x2c: mov  x1, #0             ; EFI_SUCCESS
    0xD280_0002, // 0x30: mov  x2, #0             ; DataSize
    0xD280_0003, // 0x34: mov  x3, #0             ; ResetData = NULL
    0xD63F_0100, // 0x38: blr  x8
    0xD503_207F, // 0x3c: 1: wfi
    0x17FF_FFFF, // 0x40:    b 1b
];

/// Byte offset of the UTF-16 message inside Hello's `.text` (right after the code).
const HELLO_MESSAGE_OFFSET: usize = 0x44;

/// `HELLO_MARKER` + CRLF + NUL as UTF-16LE, the `CHAR16 *` OutputString takes.
fn hello_message_utf16() -> Vec<u8> {
    HELLO_MARKER
        .encode_utf16()
        .chain("\r\n\0".encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn words(code: &[u32]) -> Vec<u8> {
    code.iter().flat_map(|w| w.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------
// PE32+ layout.
// ---------------------------------------------------------------------------

const SECTION_ALIGNMENT: u32 = 0x1000;
const FILE_ALIGNMENT: u32 = 0x200;

/// Wrap `text` in a PE32+ EFI application with a single `.text` section
/// (CODE | EXECUTE | READ) whose first byte is the entry point.
///
/// Layout: headers in the first 0x200 bytes of the file (RVA 0), `.text` at
/// file offset 0x200 / RVA 0x1000; SizeOfImage 0x2000.
///
/// The code is position independent, so there are no base relocations, but
/// `IMAGE_FILE_RELOCS_STRIPPED` is deliberately left clear: edk2 refuses to
/// load a stripped image anywhere but its preferred ImageBase.
fn pe_image(text: &[u8]) -> Vec<u8> {
    let text_len = u32::try_from(text.len()).expect("fixture code fits in u32");
    let mut out = Vec::new();
    let mut writer = Writer::new(true, SECTION_ALIGNMENT, FILE_ALIGNMENT, &mut out);

    // Reserve file and address ranges.
    writer.reserve_dos_header();
    writer.reserve_nt_headers(pe::IMAGE_NUMBEROF_DIRECTORY_ENTRIES);
    writer.reserve_section_headers(1);
    let text_range = writer.reserve_text_section(text_len);

    // Write everything in the same order.
    writer
        .write_empty_dos_header()
        .expect("allocating a few hundred bytes");
    writer.write_nt_headers(NtHeaders {
        machine: pe::IMAGE_FILE_MACHINE_ARM64,
        time_date_stamp: 0,
        characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE | pe::IMAGE_FILE_LARGE_ADDRESS_AWARE,
        major_linker_version: 0,
        minor_linker_version: 0,
        address_of_entry_point: text_range.virtual_address,
        image_base: 0,
        major_operating_system_version: 0,
        minor_operating_system_version: 0,
        major_image_version: 0,
        minor_image_version: 0,
        major_subsystem_version: 0,
        minor_subsystem_version: 0,
        subsystem: pe::IMAGE_SUBSYSTEM_EFI_APPLICATION,
        dll_characteristics: pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
        size_of_stack_reserve: 0,
        size_of_stack_commit: 0,
        size_of_heap_reserve: 0,
        size_of_heap_commit: 0,
    });
    writer.write_section_headers();
    writer.write_section(text_range.file_offset, text);
    debug_assert_eq!(writer.len(), writer.reserved_len() as usize);
    out
}

// ---------------------------------------------------------------------------
// FAT images.
// ---------------------------------------------------------------------------

/// Size of every FAT image: 1 MiB, which `fatfs` formats as FAT12 with
/// 512-byte clusters (2003 of them), leaving room for an application of
/// about 1000 KiB. `fatfs` would format volumes down to 32 KiB; 1 MiB keeps
/// [`write_fat_image`] useful for real payloads while staying tiny.
///
/// The image is a bare volume without a partition table ("superfloppy"). Its
/// boot sector has zeros where an MBR's partition entries would be, so edk2's
/// partition driver does not mistake it for an MBR and the FAT driver mounts
/// the whole disk.
const FAT_IMAGE_SIZE: u64 = 1024 * 1024;

/// Volume label, space padded to 11 bytes.
const VOLUME_LABEL: [u8; 11] = *b"BOOTWATCH  ";

/// Fixed volume serial number, for reproducible images.
const VOLUME_ID: u32 = 0xB007_F1C5;

/// Directory timestamps: a fixed date instead of "now", for reproducible images.
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 2000,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// The record `case.json` keeps of a fixture's disk: `spelling` is its provider
/// (`fixture:hello`).
pub fn input_record(path: &Path, spelling: &str) -> crate::engine::record::InputRecord {
    let mut r = crate::engine::record::InputRecord::new("disk", path);
    r.provider = Some(spelling.to_string());
    r.note = "generated by bootwatch (`bootwatch fixtures`)".into();
    r
}

/// Build a raw FAT image at `path` holding `efi` as \EFI\BOOT\BOOTAA64.EFI. Atomic: write a temp file in the same directory and rename; on error nothing is left at `path`.
///
/// More precisely, on error `path` is untouched: absent if it was absent, the
/// previous complete image if there was one; the temporary file is removed.
/// The image is always 1 MiB long, so `efi` must fit in
/// about 1000 KiB. The parent directory must already exist. The same `efi`
/// always gives the same image bytes.
pub fn write_fat_image(path: &Path, efi: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("FAT image path {} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };

    // Hidden, and named after the target so a leftover is recognisable.
    let prefix = format!(".{}.", file_name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    // Dropping `tmp` on any error below deletes the temp file.
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;

    fill_fat_image(tmp.as_file_mut(), efi)
        .with_context(|| format!("building FAT image for {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing FAT image for {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming FAT image into place at {}", path.display()))?;
    Ok(())
}

/// Format `file` as a fresh FAT volume of [`FAT_IMAGE_SIZE`] bytes and store
/// `efi` at `EFI/BOOT/BOOTAA64.EFI`.
fn fill_fat_image(file: &mut fs::File, efi: &[u8]) -> Result<()> {
    file.set_len(FAT_IMAGE_SIZE)?;
    file.seek(SeekFrom::Start(0))?;

    let mut disk = fscommon::BufStream::new(&mut *file);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(VOLUME_LABEL)
            .volume_id(VOLUME_ID),
    )
    .context("formatting FAT volume")?;

    {
        let fs = fatfs::FileSystem::new(
            &mut disk,
            fatfs::FsOptions::new().time_provider(&FIXED_TIME),
        )
        .context("mounting freshly formatted FAT volume")?;
        {
            let root = fs.root_dir();
            let boot = root
                .create_dir("EFI")
                .and_then(|efi_dir| efi_dir.create_dir("BOOT"))
                .context("creating EFI/BOOT")?;
            let mut app = boot
                .create_file("BOOTAA64.EFI")
                .context("creating EFI/BOOT/BOOTAA64.EFI")?;
            app.write_all(efi)
                .context("writing EFI/BOOT/BOOTAA64.EFI")?;
            app.flush()?;
        }
        fs.unmount().context("unmounting FAT volume")?;
    }
    disk.flush()?;
    drop(disk);

    // fatfs never grows the file, but make sure nothing shrank or grew it.
    let len = file.metadata()?.len();
    if len != FAT_IMAGE_SIZE {
        bail!("FAT image is {len} bytes, expected {FAT_IMAGE_SIZE}");
    }
    Ok(())
}

/// Write all three images into `out_dir` (created if missing); returns their paths in Fixture::ALL order.
pub fn write_all(out_dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    Fixture::ALL
        .iter()
        .map(|&fixture| {
            let path = out_dir.join(fixture.image_file_name());
            write_fat_image(&path, &fixture.efi_app())?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::LittleEndian as LE;
    use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
    use std::io::Read;

    /// Parse `bytes` and return (entry RVA, .text RVA, .text data).
    fn parse(bytes: &[u8]) -> (PeFile64<'_>, u32, u32, Vec<u8>) {
        let file = PeFile64::parse(bytes).expect("valid PE32+");
        let entry = file.nt_headers().optional_header().address_of_entry_point();
        let sections = file.section_table();
        assert_eq!(sections.len(), 1, "exactly one section");
        let (_, text) = sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.raw_name() == b".text")
            .expect(".text section");
        let rva = text.virtual_address.get(LE);
        let data = text.pe_data(bytes).expect(".text data").to_vec();
        let vsize = text.virtual_size.get(LE) as usize;
        (file, entry, rva, data[..vsize].to_vec())
    }

    // Offsets from the table above the machine code.
    /// `EFI_SYSTEM_TABLE.ConOut`.
    const SYSTEM_TABLE_CON_OUT: u32 = 64;
    /// `EFI_SYSTEM_TABLE.RuntimeServices`.
    const SYSTEM_TABLE_RUNTIME_SERVICES: u32 = 88;
    /// `EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL.OutputString`.
    const TEXT_OUTPUT_OUTPUT_STRING: u32 = 8;
    /// `EFI_RUNTIME_SERVICES.ResetSystem`.
    const RUNTIME_SERVICES_RESET_SYSTEM: u32 = 104;
    /// `EFI_RESET_TYPE::EfiResetShutdown`.
    const EFI_RESET_SHUTDOWN: u32 = 2;

    fn word_at(text: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(text[offset..offset + 4].try_into().unwrap())
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn names_and_order() {
        assert_eq!(
            Fixture::ALL,
            [Fixture::Crash, Fixture::Hello, Fixture::Silent]
        );
        for fixture in Fixture::ALL {
            assert_eq!(fixture.image_file_name(), format!("{}.img", fixture.name()));
        }
        assert_eq!(Fixture::Crash.name(), "crash");
        assert_eq!(Fixture::Hello.name(), "hello");
        assert_eq!(Fixture::Silent.name(), "silent");
    }

    #[test]
    fn pe_headers_are_an_efi_application() {
        for fixture in Fixture::ALL {
            let bytes = fixture.efi_app();
            assert!(bytes.len() <= 2048, "{fixture:?} is {} bytes", bytes.len());
            assert_eq!(bytes.len() % FILE_ALIGNMENT as usize, 0);
            let (file, entry, text_rva, text) = parse(&bytes);
            let nt = file.nt_headers();
            let fh = nt.file_header();
            let oh = nt.optional_header();
            assert_eq!(fh.machine.get(LE), pe::IMAGE_FILE_MACHINE_ARM64);
            assert_eq!(oh.magic(), pe::IMAGE_NT_OPTIONAL_HDR64_MAGIC);
            assert_eq!(oh.subsystem(), pe::IMAGE_SUBSYSTEM_EFI_APPLICATION);
            assert_eq!(oh.section_alignment(), 0x1000);
            assert_eq!(oh.file_alignment(), 0x200);
            assert_eq!(
                oh.dll_characteristics(),
                pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT
            );
            let ch = fh.characteristics.get(LE);
            assert_ne!(ch & pe::IMAGE_FILE_EXECUTABLE_IMAGE, 0);
            assert_eq!(ch & pe::IMAGE_FILE_RELOCS_STRIPPED, 0);
            assert_eq!(oh.size_of_image(), 0x2000);

            let section = &file.section_table().iter().next().unwrap();
            assert_eq!(
                section.characteristics.get(LE),
                pe::IMAGE_SCN_CNT_CODE | pe::IMAGE_SCN_MEM_EXECUTE | pe::IMAGE_SCN_MEM_READ
            );
            assert_eq!(text_rva, 0x1000);
            assert!(
                entry >= text_rva && entry < text_rva + text.len() as u32,
                "{fixture:?}: entry {entry:#x} outside .text"
            );
            assert_eq!(entry, text_rva, "entry is the first byte of .text");
            assert_eq!(text, fixture.text());
            // No base relocation directory is needed (the code is PC-relative).
            let dirs = file.data_directories();
            assert!(
                dirs.get(pe::IMAGE_DIRECTORY_ENTRY_BASERELOC)
                    .is_none_or(|d| d.size.get(LE) == 0)
            );
        }
    }

    #[test]
    fn crash_entry_is_udf() {
        let bytes = Fixture::Crash.efi_app();
        let (_, entry, rva, text) = parse(&bytes);
        assert_eq!(text.len(), 4);
        assert_eq!(word_at(&text, (entry - rva) as usize), 0x0000_0000);
    }

    #[test]
    fn silent_is_a_wfi_loop() {
        let bytes = Fixture::Silent.efi_app();
        let (_, entry, rva, text) = parse(&bytes);
        let at = (entry - rva) as usize;
        assert_eq!(word_at(&text, at), 0xD503_207F); // wfi
        assert_eq!(word_at(&text, at + 4), 0x17FF_FFFF); // b -4
        assert_eq!(text.len(), 8);
    }

    /// Decode `ldr Xt, [Xn, #imm]` (64-bit, unsigned offset) into (t, n, imm).
    fn decode_ldr_x(word: u32) -> (u32, u32, u32) {
        assert_eq!(word & 0xFFC0_0000, 0xF940_0000, "{word:#010x} is not ldr x");
        (word & 31, (word >> 5) & 31, ((word >> 10) & 0xFFF) * 8)
    }

    #[test]
    fn hello_code_uses_the_right_offsets() {
        let bytes = Fixture::Hello.efi_app();
        let (_, entry, rva, text) = parse(&bytes);
        assert_eq!(entry, rva);

        // The UTF-16 marker (with CRLF and NUL) is embedded right after the code.
        let message = hello_message_utf16();
        let utf16_marker: Vec<u8> = HELLO_MARKER
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(find(&bytes, &utf16_marker), find(&bytes, &message));
        let at = find(&text, &message).expect("UTF-16 marker in .text");
        assert_eq!(at, HELLO_MESSAGE_OFFSET);
        assert_eq!(at, HELLO_CODE.len() * 4);
        assert_eq!(at % 2, 0, "CHAR16 string must be 2-byte aligned");
        assert!(message.ends_with(&[b'\r', 0, b'\n', 0, 0, 0]));

        // adr x1, <message>
        let adr_index = 6;
        let adr = HELLO_CODE[adr_index];
        assert_eq!(adr & 0x9F00_0000, 0x1000_0000, "adr");
        assert_eq!(adr & 31, 1, "adr x1");
        let immlo = (adr >> 29) & 3;
        let immhi = (adr >> 5) & 0x7_FFFF;
        let delta = ((immhi << 2) | immlo) as usize;
        assert_eq!(adr_index * 4 + delta, HELLO_MESSAGE_OFFSET);

        // Loads walk SystemTable -> ConOut -> OutputString and
        // SystemTable -> RuntimeServices -> ResetSystem.
        assert_eq!(HELLO_CODE[3], 0xAA01_03F3, "mov x19, x1");
        assert_eq!(decode_ldr_x(HELLO_CODE[4]), (0, 19, SYSTEM_TABLE_CON_OUT));
        assert_eq!(
            decode_ldr_x(HELLO_CODE[5]),
            (8, 0, TEXT_OUTPUT_OUTPUT_STRING)
        );
        assert_eq!(
            decode_ldr_x(HELLO_CODE[8]),
            (8, 19, SYSTEM_TABLE_RUNTIME_SERVICES)
        );
        assert_eq!(
            decode_ldr_x(HELLO_CODE[9]),
            (8, 8, RUNTIME_SERVICES_RESET_SYSTEM)
        );
        // mov w0, #EfiResetShutdown (movz, 32-bit)
        assert_eq!(HELLO_CODE[10], 0x5280_0000 | (EFI_RESET_SHUTDOWN << 5));
        // Both calls are blr x8.
        assert_eq!(HELLO_CODE[7], 0xD63F_0100);
        assert_eq!(HELLO_CODE[14], 0xD63F_0100);
    }

    fn read_boot_file(image: &Path) -> Vec<u8> {
        // fatfs wants Read + Write + Seek even to read.
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .unwrap();
        assert_eq!(file.metadata().unwrap().len(), FAT_IMAGE_SIZE);
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "BOOTWATCH");
        let mut data = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTAA64.EFI")
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        data
    }

    #[test]
    fn fat_images_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested").join("images");
        let paths = write_all(&out).unwrap();
        assert_eq!(paths.len(), Fixture::ALL.len());
        for (fixture, path) in Fixture::ALL.iter().zip(&paths) {
            assert_eq!(path, &out.join(fixture.image_file_name()));
            assert_eq!(read_boot_file(path), fixture.efi_app(), "{fixture:?}");
        }
        // Only the three images, no leftover temp files.
        let mut names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["crash.img", "hello.img", "silent.img"]);
    }

    #[test]
    fn fat_images_are_reproducible_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.img");
        fs::write(&path, b"stale").unwrap();
        write_fat_image(&path, &Fixture::Hello.efi_app()).unwrap();
        let first = fs::read(&path).unwrap();
        write_fat_image(&path, &Fixture::Hello.efi_app()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), first);
        assert_eq!(first.len() as u64, FAT_IMAGE_SIZE);
        assert_eq!(&first[510..512], &[0x55, 0xAA]);
        assert_eq!(&first[0x36..0x3E], b"FAT12   ");
    }

    #[test]
    fn missing_directory_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("does-not-exist");
        let path = missing.join("crash.img");
        let err = write_fat_image(&path, &Fixture::Crash.efi_app());
        assert!(err.is_err());
        assert!(!path.exists());
        assert!(!missing.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn failure_midway_leaves_nothing() {
        // Too big for the volume: fatfs runs out of clusters after the temp
        // file exists; it must be cleaned up and nothing renamed into place.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("too-big.img");
        let efi = vec![0xA5; 2 * FAT_IMAGE_SIZE as usize];
        assert!(write_fat_image(&path, &efi).is_err());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn failure_keeps_an_existing_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.img");
        write_fat_image(&path, &Fixture::Silent.efi_app()).unwrap();
        let before = fs::read(&path).unwrap();
        let efi = vec![0xA5; 2 * FAT_IMAGE_SIZE as usize];
        assert!(write_fat_image(&path, &efi).is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
