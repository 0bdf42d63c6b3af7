//! The executable sections of a PE32(+) or TE image, and the SMCCC instructions in them.
//!
//! AArch64 encodings (Arm ARM C6.2): `HVC #imm16` = `0xD4000002 | imm16 << 5`,
//! `SMC #imm16` = `0xD4000003 | imm16 << 5`. Instructions are 4-byte aligned words, so each
//! executable section is scanned word by word from its start.

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::PeFile64;

use super::volume::ImageKind;

/// The SMCCC conduit instructions found in one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmcccUse {
    /// `hvc` instructions, by immediate (ascending, unique).
    pub hvc: Vec<u16>,
    /// `smc` instructions, by immediate.
    pub smc: Vec<u16>,
    /// SMCCC function IDs the code builds in a register (ascending, unique; only filled for an
    /// image with a conduit instruction): `mov Rd, #lo` then `movk Rd, #hi, lsl #16` (or a lone
    /// `mov Rd, #hi, lsl #16`) giving a fast-call ID (bit 31 set, bits 23:16 clear). This is how
    /// edk2's compilers materialise `0x84000009` (PSCI SYSTEM_RESET) or `0x84000050` (TRNG
    /// VERSION); an ID loaded from memory is not seen.
    pub functions: Vec<u32>,
}

impl SmcccUse {
    pub fn any(&self) -> bool {
        !self.hvc.is_empty() || !self.smc.is_empty()
    }

    /// The function IDs outside PSCI (owner 4, functions 0x00-0x1f: what every hypervisor that
    /// emulates PSCI answers).
    pub fn non_psci(&self) -> Vec<u32> {
        self.functions
            .iter()
            .copied()
            .filter(|&f| !is_psci(f))
            .collect()
    }
}

/// A PSCI function ID (SMC32 or SMC64): owner 4, function number below 0x20.
pub fn is_psci(f: u32) -> bool {
    f & 0xBFFF_FFE0 == 0x8400_0000
}

/// An SMCCC fast-call function ID: bit 31 set, bits 23:16 zero (SMCCC 1.4 section 2.5).
fn is_fast_call(v: u32) -> bool {
    v & 0x8000_0000 != 0 && v & 0x00FF_0000 == 0
}

/// MOVZ (32 or 64-bit): `sf 10 100101 hw imm16 Rd`.
fn movz(w: u32) -> Option<(u32, u32, u32)> {
    (w & 0x7F80_0000 == 0x5280_0000).then_some((w & 0x1F, (w >> 21) & 3, (w >> 5) & 0xFFFF))
}

/// MOVK (32 or 64-bit): `sf 11 100101 hw imm16 Rd`.
fn movk(w: u32) -> Option<(u32, u32, u32)> {
    (w & 0x7F80_0000 == 0x7280_0000).then_some((w & 0x1F, (w >> 21) & 3, (w >> 5) & 0xFFFF))
}

fn function_ids(words: &[u32], found: &mut Vec<u32>) {
    for (i, &w) in words.iter().enumerate() {
        let Some((rd, hw, imm)) = movz(w) else {
            continue;
        };
        let value = match hw {
            0 => {
                // The MOVK that completes it follows within a few instructions.
                let hi = words[i + 1..words.len().min(i + 5)]
                    .iter()
                    .filter_map(|&n| movk(n))
                    .find(|&(r, h, _)| r == rd && h == 1);
                match hi {
                    Some((_, _, hi)) => imm | hi << 16,
                    None => continue,
                }
            }
            1 => imm << 16,
            _ => continue,
        };
        if is_fast_call(value) {
            found.push(value);
        }
    }
}

const HVC_MASK: u32 = 0xFFE0_001F;
const HVC: u32 = 0xD400_0002;
const SMC: u32 = 0xD400_0003;

/// Finds `hvc`/`smc` in the executable sections of `bytes`; `None` when the image cannot be parsed.
pub fn smccc_use(kind: ImageKind, bytes: &[u8]) -> Option<SmcccUse> {
    let sections = match kind {
        ImageKind::Pe => pe_code_sections(bytes)?,
        ImageKind::Te => te_code_sections(bytes)?,
    };
    let mut found = SmcccUse::default();
    for code in &sections {
        scan(code, &mut found);
    }
    if found.any() {
        for code in &sections {
            let words: Vec<u32> = code
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            function_ids(&words, &mut found.functions);
        }
        found.functions.sort_unstable();
        found.functions.dedup();
    }
    found.hvc.sort_unstable();
    found.hvc.dedup();
    found.smc.sort_unstable();
    found.smc.dedup();
    Some(found)
}

fn scan(code: &[u8], found: &mut SmcccUse) {
    for w in code.chunks_exact(4) {
        let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let imm = ((word >> 5) & 0xFFFF) as u16;
        match word & HVC_MASK {
            HVC => found.hvc.push(imm),
            SMC => found.smc.push(imm),
            _ => {}
        }
    }
}

fn is_code(characteristics: u32) -> bool {
    characteristics & (pe::IMAGE_SCN_MEM_EXECUTE | pe::IMAGE_SCN_CNT_CODE) != 0
}

fn pe_code_sections(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let file = PeFile64::parse(bytes).ok()?;
    let mut out = Vec::new();
    for s in file.section_table().iter() {
        if is_code(s.characteristics.get(LE)) {
            out.push(s.pe_data(bytes).ok()?);
        }
    }
    Some(out)
}

/// TE (`EFI_TE_IMAGE_HEADER`, PI spec volume 1): a 40-byte header (`VZ`, machine, section
/// count, subsystem, stripped size, ...), then standard section headers; a section's raw data
/// offset is its PE offset minus the stripped size plus the TE header.
fn te_code_sections(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    const TE_HEADER: usize = 40;
    if bytes.get(0..2)? != b"VZ" {
        return None;
    }
    let count = *bytes.get(4)? as usize;
    let stripped = u16::from_le_bytes(bytes.get(6..8)?.try_into().ok()?) as usize;
    let mut out = Vec::new();
    for i in 0..count {
        let h = bytes.get(TE_HEADER + i * 40..TE_HEADER + (i + 1) * 40)?;
        let raw_size = u32::from_le_bytes(h[16..20].try_into().ok()?) as usize;
        let raw_ptr = u32::from_le_bytes(h[20..24].try_into().ok()?) as usize;
        let characteristics = u32::from_le_bytes(h[36..40].try_into().ok()?);
        if !is_code(characteristics) {
            continue;
        }
        let start = (raw_ptr + TE_HEADER).checked_sub(stripped)?;
        out.push(bytes.get(start..start + raw_size)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hvc_and_smc_are_told_apart_with_their_immediates() {
        let words: [u32; 5] = [
            0xD400_0002,             // hvc #0
            0xD400_0003,             // smc #0
            0xD400_0002 | 0x12 << 5, // hvc #0x12
            0xD400_0001,             // svc #0: not SMCCC
            0xD503_201F,             // nop
        ];
        let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut found = SmcccUse::default();
        scan(&code, &mut found);
        assert_eq!(found.hvc, [0, 0x12]);
        assert_eq!(found.smc, [0]);
    }

    #[test]
    fn function_ids_are_read_from_mov_movk_pairs() {
        // From Debian's edk2 2026.08 RngDxe and ResetSystemRuntimeDxe (llvm-objdump).
        let words = [
            0xD280_0A20, // mov  x0, #81
            0xF2B0_8000, // movk x0, #0x8400, lsl #16   -> 0x84000051 (TRNG_FEATURES)
            0x5280_0A60, // mov  w0, #83
            0x72B8_8000, // movk w0, #0xc400, lsl #16   -> 0xC4000053 (TRNG_RND64)
            0xD280_0120, // mov  x0, #9
            0xF2B0_8000, // movk x0, #0x8400, lsl #16   -> 0x84000009 (SYSTEM_RESET)
            0x528E_6E42, // mov  w2, #29554
            0x72AD_2E82, // movk w2, #26996, lsl #16    -> 0x69747372: not a fast call
            0x52B0_0000, // mov  w0, #0x80000000        -> SMCCC_VERSION
        ];
        let mut found = Vec::new();
        function_ids(&words, &mut found);
        found.sort_unstable();
        assert_eq!(found, [0x8000_0000, 0x8400_0009, 0x8400_0051, 0xC400_0053]);
        let u = SmcccUse {
            hvc: vec![0],
            smc: vec![],
            functions: found,
        };
        assert_eq!(u.non_psci(), [0x8000_0000, 0x8400_0051, 0xC400_0053]);
    }

    #[test]
    fn te_sections_are_found_at_their_stripped_offsets() {
        let mut te = vec![0u8; 40 + 40];
        te[0..2].copy_from_slice(b"VZ");
        te[2..4].copy_from_slice(&0xAA64u16.to_le_bytes());
        te[4] = 1;
        te[6..8].copy_from_slice(&0x1E0u16.to_le_bytes()); // stripped size
        let h = &mut te[40..80];
        h[0..5].copy_from_slice(b".text");
        h[16..20].copy_from_slice(&8u32.to_le_bytes());
        h[20..24].copy_from_slice(&0x230u32.to_le_bytes()); // PE file offset
        h[36..40]
            .copy_from_slice(&(pe::IMAGE_SCN_CNT_CODE | pe::IMAGE_SCN_MEM_EXECUTE).to_le_bytes());
        te.resize(0x230 - 0x1E0 + 40, 0);
        te.extend(0xD503_201Fu32.to_le_bytes());
        te.extend(0xD400_0003u32.to_le_bytes());
        let found = smccc_use(ImageKind::Te, &te).unwrap();
        assert_eq!(found.smc, [0]);
        assert!(found.hvc.is_empty());
        assert!(smccc_use(ImageKind::Te, b"MZ").is_none());
    }
}
