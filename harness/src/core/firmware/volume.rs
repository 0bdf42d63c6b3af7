//! PI firmware volumes, read offline: the volumes of a flash image (found by their `_FVH`
//! signature and header checksum), their FFS files, the files' sections, LZMA-compressed and
//! other GUID-defined sections, nested volume images, and each file's PE32/TE image with its
//! module name (the `USER_INTERFACE` section).
//!
//! Formats: UEFI PI specification volume 3 (firmware storage): `EFI_FIRMWARE_VOLUME_HEADER`,
//! `EFI_FFS_FILE_HEADER(2)`, `EFI_COMMON_SECTION_HEADER(2)`. edk2's LZMA sections are GUID-defined
//! sections whose data is the classic `.lzma` stream (5 bytes of properties, 8 of size).

use std::io::Read;

use thiserror::Error;

/// What went wrong reading a firmware image.
#[derive(Debug, Error, PartialEq)]
pub enum VolumeError {
    #[error("no firmware volume (no `_FVH` header with a valid checksum) in the image")]
    NoVolume,
}

/// One module (an FFS file holding an executable image).
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// The file's name GUID, in the registry format (`xxxxxxxx-xxxx-...`).
    pub guid: String,
    /// The `USER_INTERFACE` section's name, when the file has one.
    pub name: Option<String>,
    /// The FFS file type (`0x07` DXE driver, `0x06` PEIM, ...).
    pub file_type: u8,
    /// The image: a PE32(+) or TE section's bytes.
    pub image: ImageKind,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Pe,
    Te,
}

impl Module {
    /// The module's name, or its GUID when it has none.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.guid)
    }
}

/// Everything read from an image's volumes.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    /// Volumes found, nested ones included.
    pub volumes: usize,
    pub modules: Vec<Module>,
    /// Sections that could not be unpacked (unknown GUIDed encodings, corrupt streams), described.
    pub skipped: Vec<String>,
    /// The decompressed payload of every volume, concatenated (for string searches).
    pub raw_payloads: Vec<Vec<u8>>,
}

const FVH_SIGNATURE: &[u8; 4] = b"_FVH";
const LZMA_GUID: [u8; 16] = guid_bytes(
    0xEE4E5898,
    0x3914,
    0x4259,
    [0x9D, 0x6E, 0xDC, 0x7B, 0xD7, 0x94, 0x03, 0xCF],
);
const LZMA_F86_GUID: [u8; 16] = guid_bytes(
    0xD42AE6BD,
    0x1352,
    0x4BFB,
    [0x90, 0x9A, 0xCA, 0x72, 0xA6, 0xEA, 0xE8, 0x89],
);
const CRC32_GUID: [u8; 16] = guid_bytes(
    0xFC1BCDB0,
    0x7D31,
    0x49AA,
    [0x93, 0x6A, 0xA4, 0x60, 0x0D, 0x9D, 0xD0, 0x83],
);
/// Largest decompressed section accepted (a firmware volume is a few MiB).
const MAX_DECOMPRESSED: u64 = 256 << 20;
/// How deep volumes may nest (edk2 nests two levels: FVMAIN_COMPACT -> FVMAIN).
const MAX_DEPTH: usize = 8;

const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// A GUID's bytes (mixed-endian, as stored) in the registry format.
pub fn format_guid(g: &[u8]) -> String {
    let a = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let b = u16::from_le_bytes([g[4], g[5]]);
    let c = u16::from_le_bytes([g[6], g[7]]);
    format!(
        "{a:08x}-{b:04x}-{c:04x}-{:02x}{:02x}-{}",
        g[8],
        g[9],
        hex::encode(&g[10..16])
    )
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn u24_at(b: &[u8], o: usize) -> Option<usize> {
    let s = b.get(o..o + 3)?;
    Some(s[0] as usize | (s[1] as usize) << 8 | (s[2] as usize) << 16)
}

/// Reads every firmware volume of a flash image (an edk2 `.fd`), unpacking what is compressed.
pub fn read_image(image: &[u8]) -> Result<Contents, VolumeError> {
    let mut out = Contents::default();
    let mut offset = 0usize;
    // Volumes sit on 8-byte boundaries at least (edk2's FDs put them on block boundaries).
    while offset + 56 <= image.len() {
        if let Some(len) = volume_at(image, offset) {
            read_volume(&image[offset..offset + len], 0, &mut out);
            offset += len.max(8).next_multiple_of(8);
        } else {
            offset += 8;
        }
    }
    if out.volumes == 0 {
        return Err(VolumeError::NoVolume);
    }
    Ok(out)
}

/// The length of a valid volume header's volume at `offset`, if one starts there.
fn volume_at(b: &[u8], offset: usize) -> Option<usize> {
    if b.get(offset + 40..offset + 44)? != FVH_SIGNATURE {
        return None;
    }
    let len = usize::try_from(u64_at(b, offset + 32)?).ok()?;
    let header_len = u16_at(b, offset + 48)? as usize;
    if header_len < 56
        || !header_len.is_multiple_of(2)
        || len < header_len
        || offset + len > b.len()
    {
        return None;
    }
    // The header's 16-bit words sum to zero.
    let sum = b[offset..offset + header_len]
        .chunks_exact(2)
        .fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
    (sum == 0).then_some(len)
}

fn read_volume(fv: &[u8], depth: usize, out: &mut Contents) {
    out.volumes += 1;
    if depth > MAX_DEPTH {
        out.skipped.push("volumes nested too deep".into());
        return;
    }
    let header_len = u16_at(fv, 48).unwrap_or(56) as usize;
    let ext_offset = u16_at(fv, 52).unwrap_or(0) as usize;
    let mut pos = header_len;
    if ext_offset != 0
        && let Some(ext_size) = u32_at(fv, ext_offset + 16)
    {
        pos = pos.max(ext_offset + ext_size as usize);
    }
    pos = pos.next_multiple_of(8);
    out.raw_payloads.push(fv.to_vec());
    while pos + 24 <= fv.len() {
        let header = &fv[pos..pos + 24];
        if header.iter().all(|&b| b == 0xFF) {
            break; // erased flash: the end of the files
        }
        let attributes = header[19];
        let (size, hlen) = if attributes & 0x01 != 0 {
            match u32_at(fv, pos + 24) {
                Some(s) => (s as usize, 32),
                None => break,
            }
        } else {
            (u24_at(fv, pos + 20).unwrap_or(0), 24)
        };
        if size < hlen || pos + size > fv.len() {
            break;
        }
        let file_type = header[18];
        let guid = format_guid(&header[0..16]);
        if file_type != 0xF0 {
            // not a pad file
            let mut file = FileParts::default();
            read_sections(&fv[pos + hlen..pos + size], depth, &mut file, out);
            if let Some((image, bytes)) = file.image {
                out.modules.push(Module {
                    guid,
                    name: file.name,
                    file_type,
                    image,
                    bytes,
                });
            }
        }
        pos = (pos + size).next_multiple_of(8);
    }
}

#[derive(Default)]
struct FileParts {
    name: Option<String>,
    image: Option<(ImageKind, Vec<u8>)>,
}

fn read_sections(mut data: &[u8], depth: usize, file: &mut FileParts, out: &mut Contents) {
    while data.len() >= 4 {
        let Some(mut size) = u24_at(data, 0) else {
            break;
        };
        let kind = data[3];
        let mut hlen = 4;
        if size == 0xFF_FFFF {
            let Some(ext) = u32_at(data, 4) else { break };
            size = ext as usize;
            hlen = 8;
        }
        if size < hlen || size > data.len() {
            break;
        }
        let body = &data[hlen..size];
        match kind {
            // EFI_SECTION_COMPRESSION
            0x01 if body.len() >= 5 => match body[4] {
                0 => read_sections(&body[5..], depth, file, out),
                t => out.skipped.push(format!(
                    "compression section of type {t} (EFI/Tiano) not unpacked"
                )),
            },
            // EFI_SECTION_GUID_DEFINED
            0x02 if body.len() >= 20 => {
                let guid: [u8; 16] = body[0..16].try_into().expect("16 bytes");
                let data_offset = u16_at(body, 16).unwrap_or(0) as usize;
                let payload = data.get(data_offset..size).unwrap_or(&[]);
                if guid == LZMA_GUID || guid == LZMA_F86_GUID {
                    match lzma_decompress(payload) {
                        Ok(plain) => read_sections(&plain, depth, file, out),
                        Err(e) => out.skipped.push(format!("LZMA section: {e}")),
                    }
                } else if guid == CRC32_GUID {
                    read_sections(payload, depth, file, out);
                } else {
                    out.skipped
                        .push(format!("GUID-defined section {}", format_guid(&guid)));
                }
            }
            // EFI_SECTION_PE32, EFI_SECTION_TE
            0x10 => file.image = Some((ImageKind::Pe, body.to_vec())),
            0x12 => file.image = Some((ImageKind::Te, body.to_vec())),
            // EFI_SECTION_USER_INTERFACE
            0x15 => file.name = Some(ucs2_string(body)),
            // EFI_SECTION_FIRMWARE_VOLUME_IMAGE
            0x17 => {
                if volume_at(body, 0).is_some() {
                    let len = u64_at(body, 32).unwrap_or(0) as usize;
                    read_volume(&body[..len.min(body.len())], depth + 1, out);
                } else {
                    out.skipped
                        .push("volume image without a valid header".into());
                }
            }
            _ => {}
        }
        let next = size.next_multiple_of(4);
        if next >= data.len() {
            break;
        }
        data = &data[next..];
    }
}

fn lzma_decompress(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = liblzma::stream::Stream::new_lzma_decoder(MAX_DECOMPRESSED)
        .map_err(std::io::Error::other)?;
    let mut reader = liblzma::read::XzDecoder::new_stream(payload, stream);
    let mut plain = Vec::new();
    reader
        .by_ref()
        .take(MAX_DECOMPRESSED)
        .read_to_end(&mut plain)?;
    Ok(plain)
}

/// A NUL-terminated UCS-2 string.
pub fn ucs2_string(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_format_like_the_registry() {
        assert_eq!(
            format_guid(&LZMA_GUID),
            "ee4e5898-3914-4259-9d6e-dc7bd79403cf"
        );
    }

    /// A volume with one driver file: UI section + a GUID-defined LZMA section holding the PE
    /// section, built by hand as edk2's GenSec/GenFfs/GenFv lay them out.
    pub(crate) fn synthetic_volume(name: &str, pe: &[u8]) -> Vec<u8> {
        fn section(kind: u8, body: &[u8]) -> Vec<u8> {
            let size = body.len() + 4;
            let mut s = vec![size as u8, (size >> 8) as u8, (size >> 16) as u8, kind];
            s.extend_from_slice(body);
            while !s.len().is_multiple_of(4) {
                s.push(0);
            }
            s
        }
        let pe_section = section(0x10, pe);
        let mut lzma = Vec::new();
        {
            let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
            let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
            let mut enc = liblzma::write::XzEncoder::new_stream(&mut lzma, stream);
            std::io::Write::write_all(&mut enc, &pe_section).unwrap();
            enc.finish().unwrap();
        }
        let mut guided_body = LZMA_GUID.to_vec();
        guided_body.extend_from_slice(&24u16.to_le_bytes()); // data offset from section start
        guided_body.extend_from_slice(&1u16.to_le_bytes()); // processing required
        guided_body.extend_from_slice(&lzma);
        let ui: Vec<u8> = name
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        let mut sections = section(0x15, &ui);
        sections.extend(section(0x02, &guided_body));
        let file_size = 24 + sections.len();
        let mut file = vec![0x11; 16];
        file.extend_from_slice(&[0, 0, 0x07, 0]);
        file.extend_from_slice(&[
            file_size as u8,
            (file_size >> 8) as u8,
            (file_size >> 16) as u8,
        ]);
        file.push(0xF8);
        file.extend(sections);
        while !file.len().is_multiple_of(8) {
            file.push(0xFF);
        }
        let mut fv = vec![0u8; 72];
        fv[40..44].copy_from_slice(FVH_SIGNATURE);
        fv[48..50].copy_from_slice(&72u16.to_le_bytes());
        fv[55] = 2;
        fv.extend(file);
        fv.extend([0xFF; 64]);
        let len = fv.len() as u64;
        fv[32..40].copy_from_slice(&len.to_le_bytes());
        let sum = fv[..72].chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        fv[50..52].copy_from_slice(&(0u16.wrapping_sub(sum)).to_le_bytes());
        fv
    }

    #[test]
    fn an_lzma_section_inside_a_volume_is_unpacked_to_its_named_image() {
        let pe = b"MZ fake image bytes";
        let mut image = vec![0xFFu8; 4096];
        image.extend(synthetic_volume("HelloDxe", pe));
        let contents = read_image(&image).unwrap();
        assert_eq!(contents.volumes, 1);
        assert_eq!(contents.modules.len(), 1, "{:?}", contents.skipped);
        let m = &contents.modules[0];
        assert_eq!(m.display_name(), "HelloDxe");
        assert_eq!(m.file_type, 0x07);
        assert_eq!(m.image, ImageKind::Pe);
        assert_eq!(m.bytes, pe);
    }

    #[test]
    fn an_image_without_volumes_is_an_error() {
        assert_eq!(read_image(&[0u8; 8192]).unwrap_err(), VolumeError::NoVolume);
        // A signature without a valid checksum is not a volume.
        let mut fv = synthetic_volume("X", b"MZ");
        fv[50] ^= 1;
        assert_eq!(read_image(&fv).unwrap_err(), VolumeError::NoVolume);
    }
}
