//! Serial console text: turning the raw byte stream into normalized lines.
//!
//! Normalization: VT100/ANSI escape sequences are removed (with `vte`, which also handles edk2's
//! `ESC[=3h`); `\r\n` and `\n` end a line; a lone `\r` (text about to be overwritten) and cursor
//! positioning (`CSI H`/`f`/`d`) also end the current line so nothing printed is lost or glued
//! together; other C0 controls are dropped; invalid UTF-8 becomes U+FFFD (one per invalid
//! sequence, as `String::from_utf8_lossy` does); lines longer than `MAX_LINE` bytes are split.
//! An escape sequence never spans a line end. The result does not depend on how the bytes were
//! cut into chunks.
//!
//! The work is linear in the input, whatever it holds. Lines with nothing to normalize (the vast
//! majority) take a fast path that does not go through the escape parser at all; that keeps
//! offline classification of large logs fast. The others go through the escape parser once, as
//! their bytes arrive: the unterminated line is kept normalized, so [`Normalizer::partial`] is
//! a copy of at most `MAX_LINE` bytes rather than a new pass over the line so far. Invalid UTF-8
//! is replaced before the escape parser sees it: `vte` searches the rest of its input for the
//! next ESC after every invalid byte, which made a long line of invalid bytes quadratic.

/// Lines longer than this (in bytes) are split. A split piece ends on a character boundary at
/// most 3 bytes before the limit (see [`may_be_cut`]).
pub const MAX_LINE: usize = 4096;

/// Raw bytes of one line the escape parser reads before it is renewed. An escape sequence or
/// string (OSC, DCS) longer than this is cut; without the bound an unterminated one would keep
/// the whole line in the parser's buffer.
const PARSER_LIMIT: usize = 4 * MAX_LINE;

/// True when `line` (a normalized line, without its '\n') may be the first part of a line the
/// `MAX_LINE` limit cut: something printed across the cut is split between it and the next line.
pub fn may_be_cut(line: &str) -> bool {
    line.len() + 3 >= MAX_LINE
}

/// Streaming normalizer: bytes in (in chunks of any size), complete lines out.
#[derive(Default)]
pub struct Normalizer {
    /// The line not yet terminated, normalized as far as its bytes have arrived.
    line: LineState,
}

impl Normalizer {
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// Appends to `out` every line completed by `bytes`, each followed by '\n'.
    pub fn feed(&mut self, bytes: &[u8], out: &mut String) {
        let mut rest = bytes;
        if self.line.started {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.line.feed(rest, out);
                return;
            };
            self.line.feed(&rest[..i], out);
            self.line.end(out);
            rest = &rest[i + 1..];
        }
        let complete = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
        normalize_block(&rest[..complete], &mut self.line, out);
        if complete < rest.len() {
            self.line.feed(&rest[complete..], out);
        }
    }

    /// Flushes the unterminated tail as a last line (end of a log).
    pub fn finish(&mut self, out: &mut String) {
        if self.line.started {
            self.line.end(out);
        }
    }

    /// The unterminated tail, normalized (a prompt such as `login: ` has no newline after it).
    /// Only the text after its last line break is returned; it is at most `MAX_LINE` bytes.
    pub fn partial(&self) -> String {
        self.line.text.line.clone()
    }
}

/// A line whose bytes are arriving: they go through the escape parser as they come.
#[derive(Default)]
struct LineState {
    parser: vte::Parser,
    /// Raw bytes the parser has read since it was (re)created.
    parsed: usize,
    text: Text,
    /// The start of a UTF-8 sequence cut by the end of a chunk (at most 3 bytes).
    utf8: Vec<u8>,
    /// Bytes of this line have arrived: it is a line even if they normalize to nothing.
    started: bool,
}

/// What the escape parser writes: the current line and whether a CR is pending.
#[derive(Default)]
struct Text {
    line: String,
    after_cr: bool,
}

impl LineState {
    /// Takes more of the line (`raw` holds no '\n'); text split off at `MAX_LINE` or by a line
    /// break inside the line goes to `out`.
    fn feed(&mut self, mut raw: &[u8], out: &mut String) {
        self.started = true;
        while !raw.is_empty() {
            let (now, later) = raw.split_at(raw.len().min(PARSER_LIMIT - self.parsed));
            let mut sink = Sink {
                text: &mut self.text,
                out,
            };
            let parser = &mut self.parser;
            decode_lossy(&mut self.utf8, now, |s| {
                parser.advance(&mut sink, s.as_bytes())
            });
            self.parsed += now.len();
            if self.parsed == PARSER_LIMIT {
                self.parser = vte::Parser::new();
                self.parsed = 0;
            }
            raw = later;
        }
    }

    /// Ends the line: appends what is left of it to `out` and gets ready for the next one.
    fn end(&mut self, out: &mut String) {
        if !self.utf8.is_empty() {
            // A sequence the line end cut short is invalid.
            self.utf8.clear();
            let mut sink = Sink {
                text: &mut self.text,
                out,
            };
            self.parser.advance(&mut sink, "\u{fffd}".as_bytes());
        }
        push_line(&self.text.line, out);
        self.text.line.clear();
        self.text.after_cr = false;
        self.parser = vte::Parser::new();
        self.parsed = 0;
        self.started = false;
    }
}

/// Hands `raw` to `emit` as valid UTF-8, every invalid sequence replaced by U+FFFD (as
/// `String::from_utf8_lossy` does, with std's `Utf8Chunks`). A sequence cut short by the end of
/// `raw` waits in `carry` for the next call.
fn decode_lossy(carry: &mut Vec<u8>, mut raw: &[u8], mut emit: impl FnMut(&str)) {
    const REPLACEMENT: &str = "\u{fffd}";
    let incomplete = |b: &[u8]| std::str::from_utf8(b).is_err_and(|e| e.error_len().is_none());
    if !carry.is_empty() {
        // The carried bytes begin a sequence: complete it with at most 3 more.
        let n = carry.len();
        let take = raw.len().min(4 - n);
        let mut buf = [0u8; 4];
        buf[..n].copy_from_slice(carry);
        buf[n..n + take].copy_from_slice(&raw[..take]);
        let joined = &buf[..n + take];
        let first = joined
            .utf8_chunks()
            .next()
            .expect("at least the carried bytes");
        if let Some(c) = first.valid().chars().next() {
            emit(&first.valid()[..c.len_utf8()]);
            raw = &raw[c.len_utf8() - n..];
        } else if take == raw.len() && incomplete(joined) {
            carry.extend_from_slice(raw);
            return;
        } else {
            // The invalid sequence holds every carried byte (they were a valid beginning).
            emit(REPLACEMENT);
            raw = &raw[first.invalid().len() - n..];
        }
        carry.clear();
    }
    // Replacements in a row are handed over together (a run of invalid bytes is one call).
    const RUN: &str = "\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}";
    let mut pending = 0;
    let flush = |pending: &mut usize, emit: &mut dyn FnMut(&str)| {
        while *pending > 0 {
            let k = (*pending).min(RUN.len() / REPLACEMENT.len());
            emit(&RUN[..k * REPLACEMENT.len()]);
            *pending -= k;
        }
    };
    let mut chunks = raw.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        if !chunk.valid().is_empty() {
            flush(&mut pending, &mut emit);
            emit(chunk.valid());
        }
        let bad = chunk.invalid();
        if bad.is_empty() {
            continue;
        }
        if chunks.peek().is_none() && incomplete(bad) {
            carry.extend_from_slice(bad);
        } else {
            pending += 1;
        }
    }
    flush(&mut pending, &mut emit);
}

/// Normalizes complete lines (`block` is empty or ends with '\n'). Runs of lines that need
/// nothing but CR removal are copied wholesale; only lines with escapes, other controls, invalid
/// UTF-8 or excessive length take the per-line path.
/// `line` is the (idle) line state the per-line path borrows.
fn normalize_block(block: &[u8], line: &mut LineState, out: &mut String) {
    let mut pos = 0;
    while pos < block.len() {
        let rest = &block[pos..];
        let Some(bad) = first_control(rest) else {
            copy_clean(rest, line, out);
            return;
        };
        let line_start = memchr::memrchr(b'\n', &rest[..bad]).map_or(0, |i| i + 1);
        let line_end =
            bad + memchr::memchr(b'\n', &rest[bad..]).expect("block ends with a newline");
        copy_clean(&rest[..line_start], line, out);
        normalize_line(&rest[line_start..line_end], line, out);
        pos += line_end + 1;
    }
}

/// Copies complete lines that contain no control byte but '\t', '\n' and '\r'. CR before LF is
/// dropped; anything unusual (a lone CR, invalid UTF-8, an over-long line) goes line by line.
fn copy_clean(region: &[u8], line: &mut LineState, out: &mut String) {
    if region.is_empty() {
        return;
    }
    let per_line = |line: &mut LineState, out: &mut String| {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', region) {
            normalize_line(&region[start..nl], line, out);
            start = nl + 1;
        }
    };
    let Ok(text) = std::str::from_utf8(region) else {
        return per_line(line, out);
    };
    if region.len() > MAX_LINE {
        let mut last = 0;
        for nl in memchr::memchr_iter(b'\n', region) {
            if nl - last > MAX_LINE {
                return per_line(line, out);
            }
            last = nl + 1;
        }
    }
    let mut start = 0;
    for cr in memchr::memchr_iter(b'\r', region) {
        if region.get(cr + 1) != Some(&b'\n') {
            return per_line(line, out);
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
/// `line` is the idle line state, borrowed for lines that need the escape parser.
fn normalize_line(raw: &[u8], line: &mut LineState, out: &mut String) {
    let plain = raw.strip_suffix(b"\r").unwrap_or(raw);
    if is_plain(plain)
        && let Ok(s) = std::str::from_utf8(plain)
    {
        push_line(s, out);
        return;
    }
    line.feed(raw, out);
    line.end(out);
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

/// The escape parser's performer: builds the line, splits it at `MAX_LINE` as it grows and
/// moves finished pieces to `out`.
struct Sink<'a> {
    text: &'a mut Text,
    out: &'a mut String,
}

impl Sink<'_> {
    fn break_line(&mut self) {
        if !self.text.line.trim().is_empty() {
            push_line(&self.text.line, self.out);
        }
        self.text.line.clear();
    }
}

impl vte::Perform for Sink<'_> {
    fn print(&mut self, c: char) {
        if self.text.after_cr {
            self.text.after_cr = false;
            self.break_line();
        }
        let line = &mut self.text.line;
        line.push(c);
        if line.len() > MAX_LINE {
            // The same pieces as `push_line` cuts from the whole line.
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            self.out.push_str(&line[..cut]);
            self.out.push('\n');
            line.drain(..cut);
        }
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\r' => self.text.after_cr = true,
            b'\t' => self.print('\t'),
            // C1 controls written as UTF-8 characters: text, as on the fast path.
            0x80..=0x9f => self.print(char::from(byte)),
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
        // A never-ending line does not grow without bound: its pieces are output as they fill.
        let mut n = Normalizer::new();
        let mut out = String::new();
        for _ in 0..100 {
            n.feed(&[b'y'; 1000], &mut out);
        }
        assert!(n.partial().len() <= MAX_LINE);
        assert_eq!(out.replace('\n', "").len() + n.partial().len(), 100_000);
        assert!(out.lines().all(|l| l.len() == MAX_LINE && may_be_cut(l)));
    }

    /// Invalid UTF-8 becomes one U+FFFD per invalid sequence, exactly as std's lossy decoding
    /// does, wherever the chunks are cut (inside a character, inside an invalid sequence).
    #[test]
    fn invalid_utf8_is_replaced_as_std_does_for_every_split() {
        let lines: [&[u8]; 6] = [
            b"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 ok",
            b"\xff\xfe bad \xc3 cut \xe2\x82 cut \xf0\x9f\x98 cut",
            b"\xed\xa0\x80 surrogate \xc0\xaf overlong \x80\x81 lone",
            b"\x1b[1mbold \xff\x1b[0m \xe2\x82\xac",
            b"end cut \xe2\x82",
            b"\xc2\x85 next-line character",
        ];
        for raw in lines {
            let mut input = raw.to_vec();
            input.push(b'\n');
            let whole = norm_chunks(&[&input]);
            let plain: Vec<u8> = raw.iter().copied().filter(|&b| b != 0x1b).collect();
            let lossy = String::from_utf8_lossy(&plain)
                .replace("[1m", "")
                .replace("[0m", "");
            assert_eq!(whole, format!("{lossy}\n"), "{raw:?}");
            for i in 0..input.len() {
                for j in i..input.len() {
                    let parts: [&[u8]; 3] = [&input[..i], &input[i..j], &input[j..]];
                    assert_eq!(norm_chunks(&parts), whole, "{raw:?} split at {i},{j}");
                }
            }
        }
    }

    /// A long line of invalid bytes: every byte becomes U+FFFD (3 bytes), cut into lines of at
    /// most `MAX_LINE`, and the line in progress never holds more than `MAX_LINE` bytes however
    /// the bytes arrive.
    #[test]
    fn a_long_line_of_invalid_bytes_is_split_and_bounded() {
        let n_bytes = 300_000;
        let whole = norm_chunks(&[&vec![0xff; n_bytes], b"\n"]);
        assert_eq!(whole.chars().filter(|&c| c == '\u{fffd}').count(), n_bytes);
        assert!(whole.lines().all(|l| l.len() <= MAX_LINE));
        let mut n = Normalizer::new();
        let mut out = String::new();
        for _ in 0..n_bytes / 7 {
            n.feed(&[0xff; 7], &mut out);
            assert!(n.partial().len() <= MAX_LINE);
        }
        n.feed(b"\n", &mut out);
        assert_eq!(out, norm_chunks(&[&vec![0xff; n_bytes / 7 * 7], b"\n"]));
    }

    /// An escape string that never ends is cut after `PARSER_LIMIT` bytes: what follows is text
    /// again, and the parser holds no more than that.
    #[test]
    fn an_unterminated_escape_string_does_not_swallow_the_rest_of_the_line() {
        let mut raw = b"\x1b]0;".to_vec();
        raw.extend(std::iter::repeat_n(b'z', PARSER_LIMIT - raw.len()));
        raw.extend_from_slice(b"visible\n");
        let out = norm_chunks(&[&raw]);
        assert!(
            out.ends_with("visible\n"),
            "{}",
            &out[out.len().saturating_sub(40)..]
        );
        assert!(!out.contains("zzzz"));
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
