//! A minimal reader of an edk2 variable store (`VARS.fd`): the variables of the EFI global
//! namespace that say what the firmware boots (`BootOrder`, `Boot####`), decoded far enough to
//! name the file each boot option starts. Pure: bytes in. Kept in one place so a fuller
//! decoder can replace it.
//!
//! Layout (edk2 `MdeModulePkg/Include/Guid/VariableFormat.h`): a firmware volume header
//! (`_FVH` at offset 40, its length at 48), then the variable store header (a format GUID,
//! size, format 0x5A, state 0xFE), then variables, each 4-byte aligned: start id 0x55AA,
//! state, attributes, (authenticated stores: monotonic count, timestamp, key index), name
//! size, data size, vendor GUID, the UTF-16 name, the data.

use crate::core::chain::BootEntry;

/// `gEfiAuthenticatedVariableGuid` as stored.
const AUTH_STORE: [u8; 16] = [
    0x78, 0x2c, 0xf3, 0xaa, 0x7b, 0x94, 0x9a, 0x43, 0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92,
];
/// `gEfiVariableGuid` as stored.
const PLAIN_STORE: [u8; 16] = [
    0x16, 0x36, 0xcf, 0xdd, 0x75, 0x32, 0x64, 0x41, 0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d,
];
/// `EFI_GLOBAL_VARIABLE` (8be4df61-93ca-11d2-aa0d-00e098032b8c) as stored.
const GLOBAL: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
const VAR_ADDED: u8 = 0x3f;
const VAR_IN_DELETED_TRANSITION: u8 = 0xfe;

/// One live variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub vendor: [u8; 16],
    pub data: Vec<u8>,
}

/// The live variables of a store (a variable rewritten later replaces the earlier copy).
pub fn variables(store: &[u8]) -> Result<Vec<Variable>, String> {
    let u16_at = |o: usize| {
        store
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        store
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if store.get(40..44) != Some(b"_FVH") {
        return Err("not a firmware volume (no _FVH signature at offset 40)".into());
    }
    let fv_header_len = u16_at(48).ok_or("truncated firmware volume header")? as usize;
    let vs = fv_header_len;
    let guid = store.get(vs..vs + 16).ok_or("truncated variable store")?;
    let auth = if guid == AUTH_STORE {
        true
    } else if guid == PLAIN_STORE {
        false
    } else {
        return Err("unknown variable store format GUID".into());
    };
    let store_size = u32_at(vs + 16).ok_or("truncated variable store header")? as usize;
    let end = (vs + store_size).min(store.len());
    let header_len = if auth { 60 } else { 32 };
    let mut out: Vec<Variable> = Vec::new();
    let mut at = vs + 28;
    while at + header_len <= end && u16_at(at) == Some(0x55aa) {
        let state = store[at + 2];
        let (name_size, data_size, guid_at) = if auth {
            (u32_at(at + 36), u32_at(at + 40), at + 44)
        } else {
            (u32_at(at + 8), u32_at(at + 12), at + 16)
        };
        let (name_size, data_size) = (
            name_size.unwrap_or(0) as usize,
            data_size.unwrap_or(0) as usize,
        );
        let name_at = at + header_len;
        let data_at = name_at + name_size;
        let next = data_at + data_size;
        if next > end {
            break;
        }
        let live = state == VAR_ADDED || state == (VAR_ADDED & VAR_IN_DELETED_TRANSITION);
        if live {
            let units: Vec<u16> = store[name_at..data_at]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let mut vendor = [0u8; 16];
            vendor.copy_from_slice(&store[guid_at..guid_at + 16]);
            let v = Variable {
                name: String::from_utf16_lossy(&units),
                vendor,
                data: store[data_at..next].to_vec(),
            };
            out.retain(|o| !(o.name == v.name && o.vendor == v.vendor));
            out.push(v);
        }
        at = next.div_ceil(4) * 4;
    }
    Ok(out)
}

/// The boot options in `BootOrder`, in order (`None` when the store has no `BootOrder`).
pub fn boot_order(store: &[u8]) -> Result<Option<Vec<BootEntry>>, String> {
    // A template the firmware has not formatted yet (all zeros or all ones) holds nothing.
    let head = &store[..store.len().min(4096)];
    if !head.is_empty() && (head.iter().all(|&b| b == 0) || head.iter().all(|&b| b == 0xff)) {
        return Ok(None);
    }
    let vars = variables(store)?;
    let global = |name: &str| {
        vars.iter()
            .find(|v| v.vendor == GLOBAL && v.name == name)
            .map(|v| v.data.as_slice())
    };
    let Some(order) = global("BootOrder") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for c in order.chunks_exact(2) {
        let n = u16::from_le_bytes([c[0], c[1]]);
        let name = format!("Boot{n:04X}");
        if let Some(opt) = global(&name) {
            out.push(load_option(&name, opt));
        }
    }
    Ok(Some(out))
}

/// Decodes an `EFI_LOAD_OPTION`: attributes, file path list length, description, device path.
fn load_option(name: &str, data: &[u8]) -> BootEntry {
    let attributes = data
        .get(0..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let fpl_len = data
        .get(4..6)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]])) as usize;
    let mut at = 6;
    let mut desc = Vec::new();
    while let Some(b) = data.get(at..at + 2) {
        at += 2;
        let u = u16::from_le_bytes([b[0], b[1]]);
        if u == 0 {
            break;
        }
        desc.push(u);
    }
    let path = data.get(at..(at + fpl_len).min(data.len())).unwrap_or(&[]);
    BootEntry {
        name: name.to_string(),
        description: String::from_utf16_lossy(&desc),
        active: attributes & 1 != 0,
        file: file_path(path),
        firmware_app: has_node(path, 4, 6),
    }
}

/// Whether a device path has a node of this type and subtype (4/6: a firmware volume file).
fn has_node(mut dp: &[u8], ty: u8, sub: u8) -> bool {
    while dp.len() >= 4 {
        let len = u16::from_le_bytes([dp[2], dp[3]]) as usize;
        if dp[0] == ty && dp[1] == sub {
            return true;
        }
        if len < 4 || len > dp.len() || (dp[0] == 0x7f && dp[1] == 0xff) {
            return false;
        }
        dp = &dp[len..];
    }
    false
}

/// The media file path (type 4, subtype 4) nodes of a device path, joined: `EFI/debian/x.efi`.
fn file_path(mut dp: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while dp.len() >= 4 {
        let (ty, sub) = (dp[0], dp[1]);
        let len = u16::from_le_bytes([dp[2], dp[3]]) as usize;
        if len < 4 || len > dp.len() {
            break;
        }
        if ty == 0x7f && sub == 0xff {
            break;
        }
        if ty == 4 && sub == 4 {
            let units: Vec<u16> = dp[4..len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            parts.push(String::from_utf16_lossy(&units));
        }
        dp = &dp[len..];
    }
    if parts.is_empty() {
        return None;
    }
    let joined = parts.join("\\");
    let p: Vec<&str> = joined
        .split(['\\', '/'])
        .filter(|s| !s.is_empty())
        .collect();
    Some(p.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16z(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes())
            .collect()
    }

    /// An authenticated store with the given global variables.
    fn store(vars: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut s = vec![0xffu8; 0x48];
        s[40..44].copy_from_slice(b"_FVH");
        s[48..50].copy_from_slice(&0x48u16.to_le_bytes());
        s.extend_from_slice(&AUTH_STORE);
        s.extend_from_slice(&0x10000u32.to_le_bytes());
        s.extend_from_slice(&[0x5a, 0xfe, 0, 0, 0, 0, 0, 0]);
        for (i, (name, data)) in vars.iter().enumerate() {
            let n = utf16z(name);
            let mut h = vec![0u8; 60];
            h[0..2].copy_from_slice(&0x55aau16.to_le_bytes());
            // The first copy of each name is deleted and written again.
            h[2] = if i == 0 { 0x3c } else { VAR_ADDED };
            h[36..40].copy_from_slice(&(n.len() as u32).to_le_bytes());
            h[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
            h[44..60].copy_from_slice(&GLOBAL);
            s.extend_from_slice(&h);
            s.extend_from_slice(&n);
            s.extend_from_slice(data);
            while !s.len().is_multiple_of(4) {
                s.push(0xff);
            }
        }
        s.resize(0x48 + 0x10000, 0xff);
        s
    }

    fn option(desc: &str, file: Option<&str>) -> Vec<u8> {
        let mut dp = vec![1u8, 1, 6, 0, 0, 0]; // a hardware node
        if let Some(f) = file {
            let p = utf16z(f);
            dp.extend_from_slice(&[4, 4]);
            dp.extend_from_slice(&((p.len() + 4) as u16).to_le_bytes());
            dp.extend_from_slice(&p);
        }
        dp.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let mut o = 1u32.to_le_bytes().to_vec();
        o.extend_from_slice(&(dp.len() as u16).to_le_bytes());
        o.extend_from_slice(&utf16z(desc));
        o.extend_from_slice(&dp);
        o
    }

    #[test]
    fn boot_order_names_each_options_file() {
        let s = store(&[
            ("BootOrder", vec![9, 0]),
            ("BootOrder", vec![8, 0, 1, 0]),
            (
                "Boot0008",
                option("debian", Some("\\EFI\\debian\\shimaa64.efi")),
            ),
            ("Boot0001", option("UEFI Misc Device", None)),
        ]);
        let order = boot_order(&s).unwrap().unwrap();
        assert_eq!(order.len(), 2);
        assert_eq!(order[0].name, "Boot0008");
        assert_eq!(order[0].description, "debian");
        assert_eq!(order[0].file.as_deref(), Some("EFI/debian/shimaa64.efi"));
        assert!(order[0].active);
        assert_eq!(order[1].file, None);
        assert!(!order[1].firmware_app);
        assert_eq!(boot_order(&store(&[])).unwrap(), None);
        assert!(boot_order(b"not a store").is_err());
        assert_eq!(
            boot_order(&[0u8; 8192]).unwrap(),
            None,
            "an unformatted template"
        );
    }
}
