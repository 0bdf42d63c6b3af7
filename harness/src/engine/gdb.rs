//! A client of the GDB remote serial protocol, no larger than the hang evidence needs: QEMU's
//! `info registers` prints no system registers for AArch64 (no `ELR_EL1`, `ESR_EL1`,
//! `FAR_EL1`), but its gdbstub describes them in its target description (the feature
//! `org.qemu.gdb.arm.sys.regs`, `system-registers.xml`, in every QEMU from 5.2 to 11) and reads
//! them with `p`. The stub is started only when a guest is judged silent (the monitor's
//! `gdbserver`, on a unix socket in the case's private directory): a boot that is not a hang
//! never has one.
//!
//! What is spoken: packets `$data#xx` with acknowledgements, `qSupported`,
//! `qXfer:features:read` (the target description and the files it includes), `qfThreadInfo`
//! (one thread per vCPU), `Hg`, `p`, `D`. The crates that implement the protocol in Rust are
//! stubs (the target's side), not clients.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A register as the target description declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegDesc {
    pub name: String,
    /// The number `p` takes: the `regnum` attribute, else one more than the register before.
    pub regnum: u32,
    pub bitsize: u32,
    /// The `<feature name=...>` it belongs to.
    pub feature: String,
}

/// One connection to a gdbstub.
pub struct Gdb {
    stream: UnixStream,
    /// Bytes received and not yet taken as a packet.
    buf: Vec<u8>,
    /// How long one request may wait for its answer.
    call: Duration,
    /// The last packet sent, for a retransmission the stub asks for (`-`).
    last: Vec<u8>,
}

impl Gdb {
    pub async fn connect(path: &Path, call: Duration) -> Result<Gdb> {
        let stream = tokio::time::timeout(call, UnixStream::connect(path))
            .await
            .map_err(|_| anyhow::anyhow!("{}: no connection", path.display()))?
            .with_context(|| path.display().to_string())?;
        let mut g = Gdb {
            stream,
            buf: Vec::new(),
            call,
            last: Vec::new(),
        };
        // No multiprocess thread ids, so that thread ids are plain numbers.
        g.request("qSupported:xmlRegisters=aarch64").await?;
        Ok(g)
    }

    async fn send(&mut self, data: &str) -> Result<()> {
        self.last = frame(data.as_bytes());
        self.stream.write_all(&self.last).await?;
        Ok(())
    }

    /// The next packet's payload (run lengths expanded, escapes undone), acknowledged.
    async fn recv(&mut self) -> Result<Vec<u8>> {
        loop {
            match take_packet(&mut self.buf) {
                Taken::Packet(p) => {
                    self.stream.write_all(b"+").await?;
                    return Ok(p);
                }
                Taken::BadChecksum => self.stream.write_all(b"-").await?,
                Taken::Nak => {
                    let last = self.last.clone();
                    self.stream.write_all(&last).await?;
                }
                Taken::Incomplete => {
                    let mut chunk = [0u8; 8192];
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("the gdbstub closed the connection");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// Sends a request and returns its answer. Stop replies (`T..`, `S..`: QEMU stops the VM
    /// when a debugger connects and says so) are not answers to anything asked here: skipped.
    pub async fn request(&mut self, data: &str) -> Result<Vec<u8>> {
        self.send(data).await?;
        let call = self.call;
        tokio::time::timeout(call, async {
            loop {
                let p = self.recv().await?;
                if !matches!(p.first(), Some(b'T' | b'S')) {
                    return Ok(p);
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("{}: no answer within {call:?}", head(data)))?
    }

    /// One file of the target description (`target.xml` and the files it includes).
    pub async fn read_xml(&mut self, annex: &str) -> Result<String> {
        let mut out = Vec::new();
        loop {
            let r = self
                .request(&format!(
                    "qXfer:features:read:{annex}:{:x},{:x}",
                    out.len(),
                    0xf00
                ))
                .await?;
            match r.split_first() {
                Some((b'm', data)) => out.extend_from_slice(data),
                Some((b'l', data)) => {
                    out.extend_from_slice(data);
                    return String::from_utf8(out).with_context(|| format!("{annex}: not UTF-8"));
                }
                _ => bail!("{annex}: {}", answer(&r)),
            }
            if out.len() > 1 << 22 {
                bail!("{annex}: larger than 4 MiB");
            }
        }
    }

    /// Every register the target describes, numbered as GDB numbers them.
    pub async fn registers(&mut self) -> Result<Vec<RegDesc>> {
        let target = self.read_xml("target.xml").await?;
        let top = parse_description(&target).context("target.xml")?;
        let mut docs = Vec::new();
        for part in top {
            match part {
                Part::Include(href) => {
                    let xml = self.read_xml(&href).await?;
                    let parts = parse_description(&xml).with_context(|| href.clone())?;
                    // A file included by an included file is not something QEMU writes.
                    docs.extend(parts.into_iter().filter(|p| matches!(p, Part::Reg(..))));
                }
                p => docs.push(p),
            }
        }
        Ok(number(docs))
    }

    /// The thread ids (QEMU: one per vCPU, `cpu_index + 1`).
    pub async fn threads(&mut self) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut r = self.request("qfThreadInfo").await?;
        loop {
            match r.split_first() {
                Some((b'm', list)) => {
                    for id in String::from_utf8_lossy(list).split(',') {
                        // `pP.T` when the stub speaks multiprocess ids.
                        let t = id.rsplit('.').next().unwrap_or(id).trim_start_matches('p');
                        ids.push(
                            u32::from_str_radix(t, 16)
                                .with_context(|| format!("thread id {id:?}"))?,
                        );
                    }
                }
                Some((b'l', _)) => return Ok(ids),
                _ => bail!("qfThreadInfo: {}", answer(&r)),
            }
            if ids.len() > 4096 {
                bail!("qfThreadInfo: too many threads");
            }
            r = self.request("qsThreadInfo").await?;
        }
    }

    /// Makes `thread` the one registers are read from.
    pub async fn select(&mut self, thread: u32) -> Result<()> {
        let r = self.request(&format!("Hg{thread:x}")).await?;
        if r != b"OK" {
            bail!("Hg{thread:x}: {}", answer(&r));
        }
        Ok(())
    }

    /// A register of the selected thread, as hex digits most significant first (the stub sends
    /// the target's byte order: little-endian on AArch64).
    pub async fn read_register(&mut self, reg: &RegDesc) -> Result<String> {
        let r = self.request(&format!("p{:x}", reg.regnum)).await?;
        let mut bytes = hex::decode(&r).map_err(|_| anyhow::anyhow!("{}", answer(&r)))?;
        if bytes.is_empty() || bytes.len() * 8 != reg.bitsize as usize {
            bail!(
                "p{:x} ({}): {} bytes for {} bits",
                reg.regnum,
                reg.name,
                bytes.len(),
                reg.bitsize
            );
        }
        bytes.reverse();
        Ok(hex::encode(bytes))
    }

    /// Detaches: QEMU lets the VM run again, as it was before the connection.
    pub async fn detach(&mut self) -> Result<()> {
        let r = self.request("D").await?;
        if r != b"OK" {
            bail!("D: {}", answer(&r));
        }
        Ok(())
    }
}

/// `$data#xx`.
fn frame(data: &[u8]) -> Vec<u8> {
    let sum = data.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    let mut out = Vec::with_capacity(data.len() + 4);
    out.push(b'$');
    out.extend_from_slice(data);
    out.extend_from_slice(format!("#{sum:02x}").as_bytes());
    out
}

#[derive(Debug, PartialEq)]
enum Taken {
    Packet(Vec<u8>),
    BadChecksum,
    /// The stub asked for the last packet again.
    Nak,
    Incomplete,
}

/// Takes the first packet out of `buf` (acknowledgements before it are dropped).
fn take_packet(buf: &mut Vec<u8>) -> Taken {
    let Some(start) = buf.iter().position(|&b| b == b'$' || b == b'-') else {
        buf.clear();
        return Taken::Incomplete;
    };
    if buf[start] == b'-' {
        buf.drain(..=start);
        return Taken::Nak;
    }
    let Some(hash) = buf[start..]
        .iter()
        .position(|&b| b == b'#')
        .map(|h| start + h)
    else {
        buf.drain(..start);
        return Taken::Incomplete;
    };
    if buf.len() < hash + 3 {
        buf.drain(..start);
        return Taken::Incomplete;
    }
    let raw = &buf[start + 1..hash];
    let sum = raw.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    let want = std::str::from_utf8(&buf[hash + 1..hash + 3])
        .ok()
        .and_then(|s| u8::from_str_radix(s, 16).ok());
    let taken = if want == Some(sum) {
        Taken::Packet(decode(raw))
    } else {
        Taken::BadChecksum
    };
    buf.drain(..hash + 3);
    taken
}

/// Undoes the payload's encodings: `}x` is `x ^ 0x20`, `c*n` is `c` repeated `n - 29` more times.
fn decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'}' if i + 1 < raw.len() => {
                out.push(raw[i + 1] ^ 0x20);
                i += 2;
            }
            b'*' if i + 1 < raw.len() && !out.is_empty() => {
                let last = *out.last().expect("not empty");
                let n = usize::from(raw[i + 1].saturating_sub(29));
                out.extend(std::iter::repeat_n(last, n));
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn head(data: &str) -> &str {
    data.split(':').next().unwrap_or(data)
}

/// A stub's answer for a message: an error number, "not supported" for an empty packet.
fn answer(r: &[u8]) -> String {
    if r.is_empty() {
        "not supported by the stub".into()
    } else {
        let s = String::from_utf8_lossy(r);
        format!("answered {:?}", s.chars().take(40).collect::<String>())
    }
}

/// What a description file holds, in order.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Include(String),
    /// Name, bitsize, regnum attribute, feature.
    Reg(String, u32, Option<u32>, String),
}

fn parse_description(xml: &str) -> Result<Vec<Part>> {
    use quick_xml::events::Event as X;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut parts = Vec::new();
    let mut feature = String::new();
    let attr = |e: &quick_xml::events::BytesStart, k: &str| -> Result<Option<String>> {
        Ok(match e.try_get_attribute(k)? {
            Some(a) => Some(
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)?
                    .into_owned(),
            ),
            None => None,
        })
    };
    loop {
        match reader.read_event()? {
            X::Start(e) | X::Empty(e) => match e.name().as_ref() {
                b"xi:include" => {
                    if let Some(href) = attr(&e, "href")? {
                        parts.push(Part::Include(href));
                    }
                }
                b"feature" => feature = attr(&e, "name")?.unwrap_or_default(),
                b"reg" => {
                    let name = attr(&e, "name")?.context("a <reg> without a name")?;
                    let num = |k: &str| -> Result<Option<u32>> {
                        attr(&e, k)?
                            .map(|v| v.parse().with_context(|| format!("{name}: {k}={v:?}")))
                            .transpose()
                    };
                    let bitsize = num("bitsize")?.with_context(|| format!("{name}: no bitsize"))?;
                    let regnum = num("regnum")?;
                    parts.push(Part::Reg(name, bitsize, regnum, feature.clone()));
                }
                _ => {}
            },
            X::Eof => return Ok(parts),
            _ => {}
        }
    }
}

/// GDB's numbering: a register's `regnum`, else one more than the register before it (the
/// first: 0), over the files in the order the target description includes them.
fn number(parts: Vec<Part>) -> Vec<RegDesc> {
    let mut next = 0u32;
    let mut regs = Vec::new();
    for p in parts {
        if let Part::Reg(name, bitsize, regnum, feature) = p {
            let regnum = regnum.unwrap_or(next);
            next = regnum + 1;
            regs.push(RegDesc {
                name,
                regnum,
                bitsize,
                feature,
            });
        }
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_framed_with_their_checksum() {
        assert_eq!(frame(b"qfThreadInfo"), b"$qfThreadInfo#bb");
        assert_eq!(frame(b""), b"$#00");
    }

    #[test]
    fn acknowledgements_and_stop_replies_come_out_in_order() {
        let mut buf = b"+$T05thread:01;#07+$OK#9a$".to_vec();
        assert_eq!(
            take_packet(&mut buf),
            Taken::Packet(b"T05thread:01;".to_vec())
        );
        assert_eq!(take_packet(&mut buf), Taken::Packet(b"OK".to_vec()));
        assert_eq!(take_packet(&mut buf), Taken::Incomplete);
        assert_eq!(buf, b"$");
        let mut bad = b"$OK#00-".to_vec();
        assert_eq!(take_packet(&mut bad), Taken::BadChecksum);
        assert_eq!(take_packet(&mut bad), Taken::Nak);
    }

    #[test]
    fn escapes_and_run_lengths_are_undone() {
        // `}]` is `}` escaped; `0* ` is "0" and 3 more.
        assert_eq!(decode(b"a}]b"), b"a}b");
        assert_eq!(decode(b"0* 1"), b"00001");
    }

    #[test]
    fn registers_are_numbered_as_gdb_numbers_them() {
        // QEMU 7.2's shape: the core file numbers implicitly from 0, the system registers carry
        // their own numbers.
        let core = r#"<?xml version="1.0"?><!DOCTYPE feature SYSTEM "gdb-target.dtd">
            <feature name="org.gnu.gdb.aarch64.core">
              <reg name="x0" bitsize="64"/><reg name="x1" bitsize="64"/>
              <reg name="pc" bitsize="64" type="code_ptr"/>
              <reg name="cpsr" bitsize="32"/>
            </feature>"#;
        let sys = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><feature name="org.qemu.gdb.arm.sys.regs"><reg name="ELR_EL1" bitsize="64" regnum="97" group="cp_regs"/><reg name="ESR_EL1" bitsize="64" regnum="188" group="cp_regs"/></feature>"#;
        let target = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target><architecture>aarch64</architecture><xi:include href="aarch64-core.xml"/><xi:include href="system-registers.xml"/></target>"#;
        let top = parse_description(target).unwrap();
        assert_eq!(
            top,
            vec![
                Part::Include("aarch64-core.xml".into()),
                Part::Include("system-registers.xml".into())
            ]
        );
        let mut parts = parse_description(core).unwrap();
        parts.extend(parse_description(sys).unwrap());
        let regs = number(parts);
        let by = |n: &str| regs.iter().find(|r| r.name == n).unwrap();
        assert_eq!(by("pc").regnum, 2);
        assert_eq!(by("cpsr").regnum, 3);
        assert_eq!(by("cpsr").bitsize, 32);
        assert_eq!(by("ELR_EL1").regnum, 97);
        assert_eq!(by("ESR_EL1").regnum, 188);
        assert_eq!(by("ESR_EL1").feature, "org.qemu.gdb.arm.sys.regs");
        // And a register after a numbered one follows it.
        let more = number(vec![
            Part::Reg("a".into(), 64, Some(40), String::new()),
            Part::Reg("b".into(), 64, None, String::new()),
        ]);
        assert_eq!(more[1].regnum, 41);
    }

    /// A stub playing QEMU's side: the stop reply a connection causes, the description in
    /// chunks of `chunk` bytes, two vCPUs whose registers are `base + regnum + 0x100 * thread`.
    async fn fake_stub(listener: tokio::net::UnixListener, target: String, chunk: usize) {
        let (mut s, _) = listener.accept().await.unwrap();
        let core = r#"<feature name="org.gnu.gdb.aarch64.core"><reg name="x0" bitsize="64"/><reg name="pc" bitsize="64"/><reg name="cpsr" bitsize="32"/></feature>"#;
        let sys = r#"<feature name="org.qemu.gdb.arm.sys.regs"><reg name="ELR_EL1" bitsize="64" regnum="97"/><reg name="ESR_EL1" bitsize="64" regnum="188"/></feature>"#;
        s.write_all(&frame(b"T02thread:01;")).await.unwrap();
        let (mut buf, mut thread) = (Vec::new(), 1u64);
        loop {
            let p = match take_packet(&mut buf) {
                Taken::Packet(p) => String::from_utf8(p).unwrap(),
                Taken::Incomplete => {
                    let mut b = [0u8; 512];
                    match s.read(&mut b).await.unwrap() {
                        0 => return,
                        n => buf.extend_from_slice(&b[..n]),
                    }
                    continue;
                }
                t => panic!("{t:?}"),
            };
            s.write_all(b"+").await.unwrap();
            let xfer = |text: &str, off: usize| {
                let end = (off + chunk).min(text.len());
                let more = if end < text.len() { "m" } else { "l" };
                format!("{more}{}", &text[off..end])
            };
            let reply = if p.starts_with("qSupported") {
                "PacketSize=1000;qXfer:features:read+".to_string()
            } else if let Some(rest) = p.strip_prefix("qXfer:features:read:") {
                let (annex, range) = rest.split_once(':').unwrap();
                let off = usize::from_str_radix(range.split(',').next().unwrap(), 16).unwrap();
                match annex {
                    "target.xml" => xfer(&target, off),
                    "aarch64-core.xml" => xfer(core, off),
                    "system-registers.xml" => xfer(sys, off),
                    _ => "E00".into(),
                }
            } else if p == "qfThreadInfo" {
                "m1,2".into()
            } else if p == "qsThreadInfo" {
                "l".into()
            } else if let Some(t) = p.strip_prefix("Hg") {
                thread = u64::from_str_radix(t, 16).unwrap();
                "OK".into()
            } else if let Some(r) = p.strip_prefix('p') {
                let n = u64::from_str_radix(r, 16).unwrap();
                let v = (0x7c74_3000 + n + 0x100 * thread).to_le_bytes();
                hex::encode(if n == 2 { &v[..4] } else { &v[..] })
            } else if p == "D" {
                "OK".into()
            } else {
                String::new()
            };
            s.write_all(&frame(reply.as_bytes())).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_stub_s_system_registers_are_read_per_thread_most_significant_digit_first() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gdb.sock");
        let target = r#"<?xml version="1.0"?><target><architecture>aarch64</architecture><xi:include href="aarch64-core.xml"/><xi:include href="system-registers.xml"/></target>"#;
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(fake_stub(listener, target.into(), 40));
        let mut g = Gdb::connect(&sock, Duration::from_secs(5)).await.unwrap();
        let regs = g.registers().await.unwrap();
        let names: Vec<_> = regs.iter().map(|r| (r.name.as_str(), r.regnum)).collect();
        assert_eq!(
            names,
            [
                ("x0", 0),
                ("pc", 1),
                ("cpsr", 2),
                ("ELR_EL1", 97),
                ("ESR_EL1", 188)
            ]
        );
        assert_eq!(g.threads().await.unwrap(), [1, 2]);
        g.select(2).await.unwrap();
        assert_eq!(g.read_register(&regs[3]).await.unwrap(), "000000007c743261");
        g.select(1).await.unwrap();
        assert_eq!(g.read_register(&regs[4]).await.unwrap(), "000000007c7431bc");
        // A 32-bit register is 8 digits; a register the stub sizes otherwise is an error.
        let mut cpsr = regs[2].clone();
        assert_eq!(g.read_register(&cpsr).await.unwrap(), "7c743102");
        cpsr.bitsize = 64;
        assert!(g.read_register(&cpsr).await.is_err());
        g.detach().await.unwrap();
    }

    #[test]
    fn a_register_without_a_size_or_a_broken_description_is_an_error() {
        assert!(parse_description("<feature><reg name=\"x\"/></feature>").is_err());
        assert!(parse_description("<reg name=\"x\" bitsize=\"six\"/>").is_err());
        assert!(parse_description("<feature><reg name=\"x></feature>").is_err());
    }
}
