//! edk2's firmware variable store, read from a flash image (`AAVMF_VARS.fd`, a case's
//! `vars.fd`): the firmware volume header (`EFI_FIRMWARE_VOLUME_HEADER`), the
//! `VARIABLE_STORE_HEADER` after it, then the variables, each an authenticated
//! (`AUTHENTICATED_VARIABLE_HEADER`, 60 bytes) or plain (`VARIABLE_HEADER`, 32 bytes) header
//! followed by its UTF-16 name and data, 4-byte aligned. Only live variables are kept (state
//! `VAR_ADDED`, or added and in deleted transition); deleted copies are skipped as the
//! firmware skips them. Boot entries (`Boot####`: `EFI_LOAD_OPTION`), `BootOrder`,
//! `BootNext` and `Timeout` of the EFI global variable GUID are decoded, and two stores
//! compared ([`VarsChange`]). Pure: bytes in, values out.

use crate::core::chain::BootEntry as ChainBootEntry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `gEfiGlobalVariableGuid`.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// `gEfiAuthenticatedVariableGuid`: the store's signature when its headers are authenticated.
const AUTH_STORE: &str = "aaf32c78-947b-439a-a180-2e144ec37792";
/// `gEfiVariableGuid`: plain headers.
const PLAIN_STORE: &str = "ddcf3616-3275-4164-98b6-fe85707ffe7d";
const START_ID: u16 = 0x55aa;
const VAR_ADDED: u8 = 0x3f;
const VAR_IN_DELETED_TRANSITION: u8 = 0xfe;
/// How many variables a store may hold before the rest is ignored (a real store has dozens).
const MAX_VARIABLES: usize = 4096;

/// One live variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub guid: String,
    pub attributes: u32,
    pub data: Vec<u8>,
}

/// A parsed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarStore {
    pub authenticated: bool,
    pub variables: Vec<Variable>,
}

/// A decoded `Boot####` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntry {
    /// `Boot0001`.
    pub id: String,
    pub description: String,
    /// The device path in edk2's text form, as far as it is decoded
    /// (`PciRoot(0x0)/Pci(0x1,0x0)/HD(1,GPT,...)/\EFI\debian\shimaa64.efi`).
    pub path: String,
    /// `LOAD_OPTION_ACTIVE`.
    pub active: bool,
}

/// What the boot manager sees in one store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// How many live variables the store holds.
    pub variables: usize,
    pub boot_order: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_next: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u16>,
    pub entries: Vec<BootEntry>,
}

/// How one variable changed between two stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableChange {
    pub name: String,
    pub guid: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_size: Option<usize>,
}

/// Two stores compared: `case.json`'s `vars_change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarsChange {
    /// What `before` is: `template` (the store the case started from) or `before-upgrade`.
    pub before_label: String,
    pub before: BootConfig,
    pub after: BootConfig,
    pub boot_order_changed: bool,
    /// Boot entries whose description, path or active flag changed, or that came or went.
    pub boot_entries_changed: Vec<String>,
    pub variables: Vec<VariableChange>,
    /// Anything the decoder could not read (the store is then compared as far as it went).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
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

/// An EFI GUID (mixed-endian) in its usual text form.
pub fn guid_text(b: &[u8]) -> String {
    if b.len() < 16 {
        return String::new();
    }
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes(b[0..4].try_into().expect("4")),
        u16::from_le_bytes(b[4..6].try_into().expect("2")),
        u16::from_le_bytes(b[6..8].try_into().expect("2")),
        b[8],
        b[9],
        hex::encode(&b[10..16])
    )
}

/// UTF-16LE up to the first NUL (or the end).
fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// How many bytes of a flash image the store needs: the firmware volume's length from its
/// header (so a 64 MiB image is read only as far as its store), at most `file_len`.
pub fn store_len(header: &[u8], file_len: u64) -> u64 {
    match u64_at(header, 32) {
        Some(n) if header.get(40..44) == Some(b"_FVH") && n > 0 => n.min(file_len),
        _ => file_len.min(4 << 20),
    }
}

/// Parses a variable store from the start of a flash image.
pub fn parse(b: &[u8]) -> Result<VarStore, String> {
    // A blank image (zeroed, as some templates ship, or erased flash): the firmware formats
    // it on its first boot. An empty store.
    let head = &b[..b.len().min(4096)];
    if !head.is_empty() && (head.iter().all(|x| *x == 0) || head.iter().all(|x| *x == 0xff)) {
        return Ok(VarStore {
            authenticated: false,
            variables: Vec::new(),
        });
    }
    if b.get(40..44) != Some(b"_FVH") {
        return Err("no firmware volume header (_FVH) at offset 40".into());
    }
    let fv_len = u64_at(b, 32).ok_or("truncated volume header")? as usize;
    let hlen = u16_at(b, 48).ok_or("truncated volume header")? as usize;
    let store = hlen;
    let sig = guid_text(b.get(store..store + 16).ok_or("truncated store header")?);
    let authenticated = match sig.as_str() {
        AUTH_STORE => true,
        PLAIN_STORE => false,
        other => return Err(format!("unknown variable store signature {other}")),
    };
    let size = u32_at(b, store + 16).ok_or("truncated store header")? as usize;
    let end = (store + size).min(b.len()).min(fv_len.max(store));
    let header_len = if authenticated { 60 } else { 32 };
    let mut off = store + 28;
    let mut vars = Vec::new();
    while off + header_len <= end && vars.len() < MAX_VARIABLES {
        if u16_at(b, off) != Some(START_ID) {
            break;
        }
        let state = b[off + 2];
        let attributes = u32_at(b, off + 4).unwrap_or(0);
        let (name_size, data_size, guid_off) = if authenticated {
            (u32_at(b, off + 36), u32_at(b, off + 40), off + 44)
        } else {
            (u32_at(b, off + 8), u32_at(b, off + 12), off + 16)
        };
        let (Some(ns), Some(ds)) = (name_size, data_size) else {
            break;
        };
        let (ns, ds) = (ns as usize, ds as usize);
        let name_at = off + header_len;
        let data_at = name_at + ns;
        let next = data_at + ds;
        if ns > end || ds > end || next > end {
            return Err(format!("variable at offset {off:#x} runs past the store"));
        }
        let live = state == VAR_ADDED || state == (VAR_ADDED & VAR_IN_DELETED_TRANSITION);
        if live {
            vars.push(Variable {
                name: utf16(&b[name_at..data_at]),
                guid: guid_text(&b[guid_off..guid_off + 16]),
                attributes,
                data: b[data_at..next].to_vec(),
            });
        }
        off = (next + 3) & !3;
    }
    // A variable in deleted transition can have its new copy later in the store: keep the last.
    let mut seen = BTreeMap::new();
    for (i, v) in vars.iter().enumerate() {
        seen.insert((v.name.clone(), v.guid.clone()), i);
    }
    let keep: std::collections::BTreeSet<usize> = seen.values().copied().collect();
    let variables = vars
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, v)| v)
        .collect();
    Ok(VarStore {
        authenticated,
        variables,
    })
}

impl VarStore {
    pub fn get(&self, name: &str, guid: &str) -> Option<&Variable> {
        self.variables
            .iter()
            .find(|v| v.name == name && v.guid == guid)
    }

    fn global(&self, name: &str) -> Option<&[u8]> {
        self.get(name, EFI_GLOBAL_VARIABLE)
            .map(|v| v.data.as_slice())
    }

    /// The boot manager's view: entries, order, next and timeout.
    pub fn boot_config(&self) -> BootConfig {
        let order = |d: &[u8]| -> Vec<String> {
            d.chunks_exact(2)
                .map(|c| format!("Boot{:04X}", u16::from_le_bytes([c[0], c[1]])))
                .collect()
        };
        let mut entries: Vec<BootEntry> = self
            .variables
            .iter()
            .filter(|v| v.guid == EFI_GLOBAL_VARIABLE && is_boot_option(&v.name))
            .map(|v| decode_load_option(&v.name, &v.data))
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        BootConfig {
            variables: self.variables.len(),
            boot_order: self.global("BootOrder").map(order).unwrap_or_default(),
            boot_next: self
                .global("BootNext")
                .and_then(|d| order(d).into_iter().next()),
            timeout: self.global("Timeout").and_then(|d| u16_at(d, 0)),
            entries,
        }
    }
}

fn is_boot_option(name: &str) -> bool {
    name.len() == 8 && name.starts_with("Boot") && name[4..].bytes().all(|c| c.is_ascii_hexdigit())
}

/// `EFI_LOAD_OPTION`: attributes, the device path list's length, the description, the paths.
pub fn decode_load_option(id: &str, d: &[u8]) -> BootEntry {
    let attributes = u32_at(d, 0).unwrap_or(0);
    let fpl = u16_at(d, 4).unwrap_or(0) as usize;
    let mut i = 6;
    while i + 1 < d.len() && (d[i] != 0 || d[i + 1] != 0) {
        i += 2;
    }
    let description = utf16(d.get(6..i).unwrap_or_default());
    let paths = d.get(i + 2..(i + 2 + fpl).min(d.len())).unwrap_or_default();
    BootEntry {
        id: id.to_string(),
        description,
        path: device_path_text(paths),
        active: attributes & 1 != 0,
    }
}

/// A device path in (a subset of) edk2's text form; unknown nodes as `Path(type,subtype)`.
pub fn device_path_text(mut p: &[u8]) -> String {
    let mut parts = Vec::new();
    while p.len() >= 4 && parts.len() < 32 {
        let (t, s) = (p[0], p[1]);
        let len = u16_at(p, 2).unwrap_or(0) as usize;
        if len < 4 || len > p.len() {
            parts.push("<malformed>".to_string());
            break;
        }
        let n = &p[4..len];
        let text = match (t, s) {
            (0x7f, 0xff) => break,
            (0x7f, _) => "|".to_string(),
            (0x02, 0x01) => format!("PciRoot({:#x})", u32_at(n, 4).unwrap_or(0)),
            (0x01, 0x01) => format!(
                "Pci({:#x},{:#x})",
                n.get(1).unwrap_or(&0),
                n.first().unwrap_or(&0)
            ),
            (0x01, 0x03) => format!(
                "MemoryMapped({:#x},{:#x},{:#x})",
                u32_at(n, 0).unwrap_or(0),
                u64_at(n, 4).unwrap_or(0),
                u64_at(n, 12).unwrap_or(0)
            ),
            (0x01, 0x04) => format!("VenHw({})", guid_text(n)),
            (0x03, 0x05) => format!(
                "USB({:#x},{:#x})",
                n.first().unwrap_or(&0),
                n.get(1).unwrap_or(&0)
            ),
            (0x03, 0x0b) => "MAC()".to_string(),
            (0x03, 0x0c) => "IPv4()".to_string(),
            (0x03, 0x0d) => "IPv6()".to_string(),
            (0x03, 0x12) => format!("Sata({:#x})", u16_at(n, 0).unwrap_or(0)),
            (0x03, 0x17) => format!("NVMe({:#x})", u32_at(n, 0).unwrap_or(0)),
            (0x03, 0x18) => "Uri()".to_string(),
            (0x03, 0x0a) => format!("VenMsg({})", guid_text(n)),
            (0x04, 0x01) => {
                let part = u32_at(n, 0).unwrap_or(0);
                let sig = n.get(20..36).unwrap_or_default();
                let kind = n.get(37).copied().unwrap_or(0);
                if kind == 2 {
                    format!("HD({part},GPT,{})", guid_text(sig))
                } else {
                    format!("HD({part},MBR,{:#010x})", u32_at(sig, 0).unwrap_or(0))
                }
            }
            (0x04, 0x02) => "CDROM()".to_string(),
            (0x04, 0x03) => format!("VenMedia({})", guid_text(n)),
            (0x04, 0x04) => utf16(n),
            (0x04, 0x06) => format!("FvFile({})", guid_text(n)),
            (0x04, 0x07) => format!("Fv({})", guid_text(n)),
            (0x04, 0x08) => "Offset()".to_string(),
            (0x05, _) => "BBS()".to_string(),
            _ => format!("Path({t},{s})"),
        };
        parts.push(text);
        p = &p[len..];
    }
    parts.join("/").replace("/|/", " | ")
}

/// Compares two stores' boot configuration and variables.
pub fn compare(before_label: &str, before: &VarStore, after: &VarStore) -> VarsChange {
    let b = before.boot_config();
    let a = after.boot_config();
    let key = |v: &Variable| (v.name.clone(), v.guid.clone());
    let bm: BTreeMap<_, _> = before.variables.iter().map(|v| (key(v), v)).collect();
    let am: BTreeMap<_, _> = after.variables.iter().map(|v| (key(v), v)).collect();
    let mut variables = Vec::new();
    for (k, v) in &bm {
        match am.get(k) {
            None => variables.push(VariableChange {
                name: k.0.clone(),
                guid: k.1.clone(),
                change: "removed".into(),
                before_size: Some(v.data.len()),
                after_size: None,
            }),
            Some(w) if w.data != v.data || w.attributes != v.attributes => {
                variables.push(VariableChange {
                    name: k.0.clone(),
                    guid: k.1.clone(),
                    change: "changed".into(),
                    before_size: Some(v.data.len()),
                    after_size: Some(w.data.len()),
                })
            }
            Some(_) => {}
        }
    }
    for (k, w) in &am {
        if !bm.contains_key(k) {
            variables.push(VariableChange {
                name: k.0.clone(),
                guid: k.1.clone(),
                change: "added".into(),
                before_size: None,
                after_size: Some(w.data.len()),
            });
        }
    }
    let be: BTreeMap<_, _> = b.entries.iter().map(|e| (e.id.clone(), e)).collect();
    let ae: BTreeMap<_, _> = a.entries.iter().map(|e| (e.id.clone(), e)).collect();
    let mut ids: Vec<String> = be.keys().chain(ae.keys()).cloned().collect();
    ids.sort();
    ids.dedup();
    let boot_entries_changed = ids
        .into_iter()
        .filter(|id| be.get(id) != ae.get(id))
        .collect();
    VarsChange {
        before_label: before_label.to_string(),
        boot_order_changed: b.boot_order != a.boot_order,
        before: b,
        after: a,
        boot_entries_changed,
        variables,
        errors: Vec::new(),
    }
}

impl VarsChange {
    /// Whether anything changed at all.
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty()
    }

    /// One line per change, for a report.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.boot_order_changed {
            out.push(format!(
                "BootOrder: {} -> {}",
                none_if_empty(&self.before.boot_order.join(",")),
                none_if_empty(&self.after.boot_order.join(","))
            ));
        }
        for id in &self.boot_entries_changed {
            let find = |c: &BootConfig| c.entries.iter().find(|e| &e.id == id).cloned();
            let show = |e: Option<BootEntry>| {
                e.map_or("(none)".to_string(), |e| {
                    format!(
                        "\"{}\" {}{}",
                        e.description,
                        e.path,
                        if e.active { "" } else { " (inactive)" }
                    )
                })
            };
            out.push(format!(
                "{id}: {} -> {}",
                show(find(&self.before)),
                show(find(&self.after))
            ));
        }
        if self.before.timeout != self.after.timeout {
            let t = |v: Option<u16>| v.map_or("(none)".to_string(), |v| format!("{v} s"));
            out.push(format!(
                "Timeout: {} -> {}",
                t(self.before.timeout),
                t(self.after.timeout)
            ));
        }
        let others: Vec<String> = self
            .variables
            .iter()
            .filter(|v| {
                !(v.guid == EFI_GLOBAL_VARIABLE
                    && (is_boot_option(&v.name) || v.name == "BootOrder" || v.name == "Timeout"))
            })
            .map(|v| format!("{} {}", v.name, v.change))
            .collect();
        if !others.is_empty() {
            out.push(format!("other variables: {}", others.join(", ")));
        }
        out
    }
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// Builds a store image (for tests, and to check the parser against its own writer): an FV
/// header, an authenticated store header and the variables, erased (0xff) to `size`.
pub fn build(vars: &[Variable], size: usize) -> Vec<u8> {
    let mut b = vec![0xffu8; size];
    b[..16].fill(0);
    b[16..32].copy_from_slice(&guid_bytes("fff12b8d-7696-4c8b-a985-2747075b4f50"));
    b[32..40].copy_from_slice(&(size as u64).to_le_bytes());
    b[40..44].copy_from_slice(b"_FVH");
    b[48..50].copy_from_slice(&72u16.to_le_bytes());
    let s = 72;
    b[s..s + 16].copy_from_slice(&guid_bytes(AUTH_STORE));
    b[s + 16..s + 20].copy_from_slice(&((size - s) as u32).to_le_bytes());
    b[s + 20] = 0x5a;
    b[s + 21] = 0xfe;
    b[s + 22..s + 28].fill(0);
    let mut off = s + 28;
    for v in vars {
        let name: Vec<u8> = v
            .name
            .encode_utf16()
            .chain(std::iter::once(0))
            .flat_map(|u| u.to_le_bytes())
            .collect();
        let h = &mut b[off..off + 60];
        h.fill(0);
        h[0..2].copy_from_slice(&START_ID.to_le_bytes());
        h[2] = VAR_ADDED;
        h[4..8].copy_from_slice(&v.attributes.to_le_bytes());
        h[36..40].copy_from_slice(&(name.len() as u32).to_le_bytes());
        h[40..44].copy_from_slice(&(v.data.len() as u32).to_le_bytes());
        h[44..60].copy_from_slice(&guid_bytes(&v.guid));
        off += 60;
        b[off..off + name.len()].copy_from_slice(&name);
        off += name.len();
        b[off..off + v.data.len()].copy_from_slice(&v.data);
        off = (off + v.data.len() + 3) & !3;
    }
    b
}

/// The bytes of a GUID written as text.
pub fn guid_bytes(s: &str) -> [u8; 16] {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(h).unwrap_or_else(|_| vec![0; 16]);
    let mut out = [0u8; 16];
    if raw.len() == 16 {
        out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
        out[4..6].copy_from_slice(&[raw[5], raw[4]]);
        out[6..8].copy_from_slice(&[raw[7], raw[6]]);
        out[8..16].copy_from_slice(&raw[8..16]);
    }
    out
}

/// An `EFI_LOAD_OPTION` with a file path (for tests).
pub fn load_option(description: &str, file: &str, active: bool) -> Vec<u8> {
    let fp: Vec<u8> = file
        .encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut path = vec![0x04, 0x04];
    path.extend(((fp.len() + 4) as u16).to_le_bytes());
    path.extend(&fp);
    path.extend([0x7f, 0xff, 4, 0]);
    let mut d = Vec::new();
    d.extend((active as u32).to_le_bytes());
    d.extend((path.len() as u16).to_le_bytes());
    d.extend(
        description
            .encode_utf16()
            .chain(std::iter::once(0))
            .flat_map(|u| u.to_le_bytes()),
    );
    d.extend(path);
    d
}

/// The boot options in `BootOrder`, in order, as boot-chain inspection needs them (the file
/// each one starts) (`None` when the store has no `BootOrder`).
pub fn boot_order(store: &[u8]) -> Result<Option<Vec<ChainBootEntry>>, String> {
    let vars = parse(store)?;
    let global = |name: &str| vars.global(name);
    let Some(order) = global("BootOrder") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for c in order.chunks_exact(2) {
        let n = u16::from_le_bytes([c[0], c[1]]);
        let name = format!("Boot{n:04X}");
        if let Some(opt) = global(&name) {
            out.push(chain_load_option(&name, opt));
        }
    }
    Ok(Some(out))
}

/// Decodes an `EFI_LOAD_OPTION`: attributes, file path list length, description, device path.
fn chain_load_option(name: &str, data: &[u8]) -> ChainBootEntry {
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
    ChainBootEntry {
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

    fn var(name: &str, data: Vec<u8>) -> Variable {
        Variable {
            name: name.into(),
            guid: EFI_GLOBAL_VARIABLE.into(),
            attributes: 7,
            data,
        }
    }

    #[test]
    fn guids_round_trip() {
        let g = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
        assert_eq!(guid_text(&guid_bytes(g)), g);
    }

    #[test]
    fn a_built_store_parses_and_decodes_its_boot_entries() {
        let store = build(
            &[
                var(
                    "Boot0001",
                    load_option("debian", "\\EFI\\debian\\shimaa64.efi", true),
                ),
                var("BootOrder", vec![1, 0]),
                var("Timeout", vec![0, 0]),
            ],
            0x40000,
        );
        let s = parse(&store).unwrap();
        assert!(s.authenticated);
        let c = s.boot_config();
        assert_eq!(c.boot_order, ["Boot0001"]);
        assert_eq!(c.timeout, Some(0));
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries[0].description, "debian");
        assert_eq!(c.entries[0].path, "\\EFI\\debian\\shimaa64.efi");
        assert!(c.entries[0].active);
        assert_eq!(store_len(&store[..64], 64 << 20), 0x40000);
    }

    #[test]
    fn changes_are_listed() {
        let before = parse(&build(&[var("BootOrder", vec![1, 0])], 0x10000)).unwrap();
        let after = parse(&build(
            &[
                var("Boot0002", load_option("new", "\\x.efi", true)),
                var("BootOrder", vec![2, 0, 1, 0]),
            ],
            0x10000,
        ))
        .unwrap();
        let c = compare("template", &before, &after);
        assert!(c.boot_order_changed);
        assert_eq!(c.boot_entries_changed, ["Boot0002"]);
        assert_eq!(c.variables.len(), 2);
        let lines = c.summary_lines().join("\n");
        assert!(
            lines.contains("BootOrder: Boot0001 -> Boot0002,Boot0001"),
            "{lines}"
        );
        assert!(lines.contains("Boot0002: (none) -> \"new\""), "{lines}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&[1u8; 10]).is_err());
        // A blank image is an empty store (the firmware formats it on its first boot).
        assert!(parse(&[0u8; 4096]).unwrap().variables.is_empty());
        let mut b = build(&[var("X", vec![1; 10])], 0x1000);
        // A name size running past the end.
        b[72 + 28 + 36..72 + 28 + 40].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(parse(&b).is_err());
    }

    mod boot_path {
        use super::super::*;
        const AUTH_STORE: [u8; 16] = [
            0x78, 0x2c, 0xf3, 0xaa, 0x7b, 0x94, 0x9a, 0x43, 0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3,
            0x77, 0x92,
        ];
        const GLOBAL: [u8; 16] = [
            0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
            0x2b, 0x8c,
        ];
        const VAR_ADDED: u8 = 0x3f;

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
}
