//! Serial console text: turning the raw byte stream into normalized lines.
//!
//! Normalization: VT100/ANSI escape sequences are removed (with `vte`, which also handles edk2's
//! `ESC[=3h`); `\r\n` and `\n` end a line; a lone `\r` (text about to be overwritten) and cursor
//! positioning (`CSI H`/`f`/`d`) also end the current line so nothing printed is lost or glued
//! together; other C0 controls are dropped; invalid UTF-8 becomes U+FFFD; lines longer than
//! `MAX_LINE` bytes are split. An escape sequence never spans a line end.
//!
//! Lines with nothing to normalize (the vast majority) take a fast path that does not go through
//! the escape parser at all; that keeps offline classification of large logs fast.

/// Lines longer than this (in bytes) are split.
pub const MAX_LINE: usize = 4096;

/// Streaming normalizer: bytes in (in chunks of any size), complete lines out.
pub struct Normalizer {
    /// Raw bytes of the line not yet terminated.
    pending: Vec<u8>,
}

impl Default for Normalizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Normalizer {
    pub fn new() -> Normalizer {
        Normalizer {
            pending: Vec::new(),
        }
    }

    /// Appends to `out` every line completed by `bytes`, each followed by '\n'.
    pub fn feed(&mut self, bytes: &[u8], out: &mut String) {
        let mut rest = bytes;
        if !self.pending.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.pending.extend_from_slice(&rest[..i]);
                    let line = std::mem::take(&mut self.pending);
                    normalize_line(&line, out);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(rest);
                    self.split_overlong(out);
                    return;
                }
            }
        }
        let complete = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
        normalize_block(&rest[..complete], out);
        let start = complete;
        self.pending.extend_from_slice(&rest[start..]);
        self.split_overlong(out);
    }

    /// Flushes the unterminated tail as a last line (end of a log).
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            normalize_line(&line, out);
        }
    }

    /// The unterminated tail, normalized (a prompt such as `login: ` has no newline after it).
    /// Only the text after its last line break is returned.
    pub fn partial(&self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        let mut s = String::new();
        normalize_line(&self.pending, &mut s);
        let s = s.strip_suffix('\n').unwrap_or(&s);
        s.rsplit('\n').next().unwrap_or("").to_string()
    }

    fn split_overlong(&mut self, out: &mut String) {
        // Raw bytes may shrink when escapes are removed, so this bound is generous; the
        // normalized pieces are split again to MAX_LINE in `push_line`.
        if self.pending.len() > 4 * MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            normalize_line(&line, out);
        }
    }
}

/// Normalizes complete lines (`block` is empty or ends with '\n'). Runs of lines that need
/// nothing but CR removal are copied wholesale; only lines with escapes, other controls, invalid
/// UTF-8 or excessive length take the per-line path.
fn normalize_block(block: &[u8], out: &mut String) {
    let mut pos = 0;
    while pos < block.len() {
        let rest = &block[pos..];
        let Some(bad) = first_control(rest) else {
            copy_clean(rest, out);
            return;
        };
        let line_start = memchr::memrchr(b'\n', &rest[..bad]).map_or(0, |i| i + 1);
        let line_end =
            bad + memchr::memchr(b'\n', &rest[bad..]).expect("block ends with a newline");
        copy_clean(&rest[..line_start], out);
        normalize_line(&rest[line_start..line_end], out);
        pos += line_end + 1;
    }
}

/// Copies complete lines that contain no control byte but '\t', '\n' and '\r'. CR before LF is
/// dropped; anything unusual (a lone CR, invalid UTF-8, an over-long line) goes line by line.
fn copy_clean(region: &[u8], out: &mut String) {
    if region.is_empty() {
        return;
    }
    let per_line = |out: &mut String| {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', region) {
            normalize_line(&region[start..nl], out);
            start = nl + 1;
        }
    };
    let Ok(text) = std::str::from_utf8(region) else {
        return per_line(out);
    };
    if region.len() > MAX_LINE {
        let mut last = 0;
        for nl in memchr::memchr_iter(b'\n', region) {
            if nl - last > MAX_LINE {
                return per_line(out);
            }
            last = nl + 1;
        }
    }
    let mut start = 0;
    for cr in memchr::memchr_iter(b'\r', region) {
        if region.get(cr + 1) != Some(&b'\n') {
            return per_line(out);
        }
    }
    for cr in memchr::memchr_iter(b'\r', region) {
        out.push_str(&text[start..cr]);
        start = cr + 1;
    }
    out.push_str(&text[start..]);
}

/// The first byte that needs the escape parser: a C0 control other than tab, LF and CR, or DEL.
fn first_control(b: &[u8]) -> Option<usize> {
    let special = |x: u8| (x < 0x20 && x != b'\t' && x != b'\n' && x != b'\r') || x == 0x7f;
    let mut base = 0;
    for chunk in b.chunks(64) {
        // Branch-free over the chunk so the compiler vectorizes it.
        if chunk.iter().fold(false, |acc, &x| acc | special(x)) {
            return chunk.iter().position(|&x| special(x)).map(|i| base + i);
        }
        base += chunk.len();
    }
    None
}

/// Normalizes one raw line (without its '\n') and appends the resulting line(s) to `out`.
fn normalize_line(raw: &[u8], out: &mut String) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if is_plain(raw)
        && let Ok(s) = std::str::from_utf8(raw)
    {
        push_line(s, out);
        return;
    }
    let mut sink = Sink {
        line: String::new(),
        out,
        after_cr: false,
    };
    let mut parser = vte::Parser::new();
    parser.advance(&mut sink, raw);
    let Sink { line, out, .. } = sink;
    push_line(&line, out);
}

/// True when the line has no control byte but tab (so no escape, no CR).
fn is_plain(raw: &[u8]) -> bool {
    // Branch-free per chunk so the compiler vectorizes it.
    raw.chunks(64).all(|c| {
        c.iter()
            .fold(true, |ok, &b| ok & (b >= 0x20 && b != 0x7f || b == b'\t'))
    })
}

fn push_line(s: &str, out: &mut String) {
    let mut s = s;
    while s.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&s[..cut]);
        out.push('\n');
        s = &s[cut..];
    }
    out.push_str(s);
    out.push('\n');
}

struct Sink<'a> {
    line: String,
    out: &'a mut String,
    after_cr: bool,
}

impl Sink<'_> {
    fn break_line(&mut self) {
        if !self.line.trim().is_empty() {
            push_line(&self.line, self.out);
        }
        self.line.clear();
    }
}

impl vte::Perform for Sink<'_> {
    fn print(&mut self, c: char) {
        if self.after_cr {
            self.after_cr = false;
            self.break_line();
        }
        self.line.push(c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\r' => self.after_cr = true,
            b'\t' => self.line.push('\t'),
            _ => {}
        }
    }

    fn csi_dispatch(
        &mut self,
        _params: &vte::Params,
        _intermediates: &[u8],
        _ignore: bool,
        action: char,
    ) {
        if matches!(action, 'H' | 'f' | 'd') {
            self.break_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_chunks(chunks: &[&[u8]]) -> String {
        let mut n = Normalizer::new();
        let mut out = String::new();
        for c in chunks {
            n.feed(c, &mut out);
        }
        n.finish(&mut out);
        out
    }

    #[test]
    fn strips_ansi_and_edk2_mode_escape_and_crlf() {
        let raw = b"\x1b[=3h\x1b[2J\x1b[01;01HUEFI firmware (version 2022.11)\r\n\x1b[0m\x1b[37m\x1b[40mBdsDxe: ok\r\n";
        assert_eq!(
            norm_chunks(&[raw]),
            "UEFI firmware (version 2022.11)\nBdsDxe: ok\n"
        );
    }

    #[test]
    fn same_result_for_every_split_of_the_input() {
        let raw: &[u8] = b"a\x1b[1;31mred\x1b[0m line\r\nSynchronous Exception at 0x000000007C743000\r\n\xff bad utf8\ntail";
        let whole = norm_chunks(&[raw]);
        assert_eq!(
            whole,
            "ared line\nSynchronous Exception at 0x000000007C743000\n\u{fffd} bad utf8\ntail\n"
        );
        for i in 0..raw.len() {
            for j in i..raw.len() {
                assert_eq!(
                    norm_chunks(&[&raw[..i], &raw[i..j], &raw[j..]]),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
    }

    #[test]
    fn lone_cr_and_cursor_moves_break_lines() {
        assert_eq!(
            norm_chunks(&[b"progress 10%\rprogress 20%\r\n"]),
            "progress 10%\nprogress 20%\n"
        );
        assert_eq!(
            norm_chunks(&[b"\x1b[5;1HGNU GRUB  version 2.06\x1b[7;1H*Debian\n"]),
            "GNU GRUB  version 2.06\n*Debian\n"
        );
    }

    #[test]
    fn long_lines_are_split_not_lost() {
        let long = "x".repeat(MAX_LINE * 2 + 10);
        let out = norm_chunks(&[long.as_bytes(), b"\n"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.iter().map(|l| l.len()).sum::<usize>(), long.len());
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
        // A never-ending line does not grow without bound.
        let mut n = Normalizer::new();
        let mut out = String::new();
        for _ in 0..100 {
            n.feed(&[b'y'; 1000], &mut out);
        }
        assert!(n.pending.len() <= 4 * MAX_LINE + 1000);
        assert_eq!(out.replace('\n', "").len() + n.pending.len(), 100_000);
    }

    #[test]
    fn partial_shows_an_unterminated_prompt() {
        let mut n = Normalizer::new();
        let mut out = String::new();
        n.feed(
            b"Debian GNU/Linux 12 debian ttyAMA0\r\n\r\ndebian login: ",
            &mut out,
        );
        assert_eq!(out, "Debian GNU/Linux 12 debian ttyAMA0\n\n");
        assert_eq!(n.partial(), "debian login: ");
    }
}
