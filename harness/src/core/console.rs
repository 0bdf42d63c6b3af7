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

    /// [`Normalizer::feed`] with part of the work handed back: appends to `out` the lines `bytes`
    /// completes up to the first line break at or after byte `at`, returns where in `bytes` the
    /// complete lines after it are, still raw (for [`normalize_lines`], on another thread), and
    /// appends to `after` what the line left pending at the end produced. `out`, the returned
    /// lines normalized, then `after`, in that order, are exactly what `feed(bytes)` appends.
    pub fn feed_split(
        &mut self,
        bytes: &[u8],
        at: usize,
        out: &mut String,
        after: &mut String,
    ) -> std::ops::Range<usize> {
        let Some(last) = memchr::memrchr(b'\n', bytes) else {
            self.feed(bytes, out);
            return 0..0;
        };
        let from = at.min(last);
        let cut = from + memchr::memchr(b'\n', &bytes[from..]).expect("`last` is one") + 1;
        // Ends with a line break: no line is pending after it, so the complete lines that follow
        // need no state of this normalizer.
        self.feed(&bytes[..cut], out);
        self.feed(&bytes[last + 1..], after);
        cut..last + 1
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

/// Normalizes complete lines (`block` is empty or ends with '\n'), as a [`Normalizer`] with no
/// line pending does: this needs no state, so the lines of one log can be normalized on several
/// threads and the results joined in order.
pub fn normalize_lines(block: &[u8], out: &mut String) {
    debug_assert!(block.is_empty() || block.ends_with(b"\n"));
    normalize_block(block, &mut LineState::default(), out);
}

/// Normalizes complete lines (`block` is empty or ends with '\n'), one at a time. What is
/// searched for once over the whole block instead of per line: whether it is valid UTF-8 (a
/// line of a valid block is a `str` slice, no check of its own) and where the next byte that
/// needs more than a copy is ([`first_control`]). A line before that byte and not over
/// `MAX_LINE` bytes (most lines) is copied without the CR before its '\n'; the others go through
/// [`normalize_line`]. `line` is the (idle) line state the parser path borrows.
fn normalize_block(block: &[u8], line: &mut LineState, out: &mut String) {
    out.reserve(block.len());
    let text = std::str::from_utf8(block).ok();
    let mut pos = 0;
    while pos < block.len() {
        // The next byte that needs more than a copy (`block.len()`: none).
        let special = first_control(&block[pos..]).map_or(block.len(), |i| pos + i);
        // Every whole line before it is plain text: copied as a run, without the CR of each
        // CRLF (a lone CR is special, so each CR in the run ends a line).
        if let Some(t) = text
            && let Some(last_lf) = memchr::memrchr(b'\n', &block[pos..special])
        {
            let run_end = pos + last_lf + 1;
            copy_plain_run(&t[pos..run_end], line, out);
            pos = run_end;
        }
        if pos == block.len() {
            break;
        }
        // The line holding the special byte (every line when the block is not UTF-8).
        let end = memchr::memchr(b'\n', &block[pos..]).map_or(block.len(), |i| pos + i);
        normalize_line(&block[pos..end], text.map(|t| &t[pos..end]), line, out);
        pos = end + 1;
    }
    debug_assert!(pos >= block.len(), "a block ends with a line break");
}

/// Appends `run` (whole lines of plain text: no control bytes but tabs, line feeds and the CR
/// of a CRLF) without its CRs. A stretch of more than `MAX_LINE` bytes between two CRs may hold
/// a line that must be cut: its lines take the line-by-line path.
fn copy_plain_run(run: &str, line: &mut LineState, out: &mut String) {
    let raw = run.as_bytes();
    let mut from = 0;
    for cr in memchr::memchr_iter(b'\r', raw).chain(std::iter::once(raw.len())) {
        if cr - from <= MAX_LINE {
            out.push_str(&run[from..cr]);
            from = cr + 1;
            continue;
        }
        // Line by line up to the end of the CR's line (its '\n' follows it) or of the run. A
        // piece that is only '\n' ends the line the copy before it left open.
        let end = (cr + 2).min(raw.len());
        for l in run[from..end].split_inclusive('\n') {
            let l = l.strip_suffix('\n').unwrap_or(l);
            let l = l.strip_suffix('\r').unwrap_or(l);
            normalize_line(l.as_bytes(), Some(l), line, out);
        }
        from = end;
    }
}

/// The first byte that needs more than a copy: a C0 control other than tab and LF, or DEL, but
/// not a CR right before a LF (every line of a serial console ends with one). Branch-free over
/// 64 bytes at a time (each byte with the one after it) so the compiler vectorizes it, and
/// compiled twice on x86-64 (multiversion): with AVX2 where the CPU has it (chosen at run time,
/// 32 bytes per instruction), else with the baseline's SSE2.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn first_control(b: &[u8]) -> Option<usize> {
    // `&` and `|`, not `&&` and `||`: no branch, so the loop below vectorizes.
    let special = |x: u8, next: u8| {
        ((x < 0x20) & (x != b'\t') & (x != b'\n') & ((x != b'\r') | (next != b'\n'))) | (x == 0x7f)
    };
    let mut i = 0;
    while let Some(w) = b.get(i..i + 65) {
        let w: &[u8; 65] = w.try_into().expect("65 bytes");
        let mut hit = false;
        for k in 0..64 {
            hit |= special(w[k], w[k + 1]);
        }
        if hit {
            return (0..64).find(|&k| special(w[k], w[k + 1])).map(|k| i + k);
        }
        i += 64;
    }
    // The last byte has nothing after it: a CR there is a lone one.
    (i..b.len()).find(|&k| special(b[k], b.get(k + 1).copied().unwrap_or(0)))
}

/// Normalizes one raw line (without its '\n') and appends the resulting line(s) to `out`.
/// `text` is the line as a `str` when it is known to be valid UTF-8 (`None`: not checked yet).
/// `line` is the idle line state, borrowed for lines that need the escape parser.
fn normalize_line(raw: &[u8], text: Option<&str>, line: &mut LineState, out: &mut String) {
    let text = text.or_else(|| std::str::from_utf8(raw).ok());
    if let Some(text) = text {
        let plain = text.strip_suffix('\r').unwrap_or(text);
        if is_plain(plain.as_bytes()) {
            push_line(plain, out);
            return;
        }
        if normalize_escaped(text, out) {
            return;
        }
    }
    line.feed(raw, out);
    line.end(out);
}

/// Normalizes a line with escapes without the escape parser, when all it holds is text, tabs, CRs, other C0 controls outside escapes, and well-formed escape sequences of the
/// kinds consoles print (CSI such as SGR colours and cursor moves, and two-byte ESC sequences):
/// exactly what the parser makes of them, at memory speed. Returns false, leaving `out` as it
/// was, for anything else (OSC/DCS strings, a control byte or stray byte inside a
/// sequence, a sequence cut by the line end, a line of `PARSER_LIMIT` bytes or more): the caller
/// then takes the parser's path. Text over `MAX_LINE` bytes is cut where the parser's performer
/// cuts it (GRUB's menu redraws are such lines). The `bulk_path_equals_the_parser_*` tests check
/// the two agree.
fn normalize_escaped(text: &str, out: &mut String) -> bool {
    let raw = text.as_bytes();
    if raw.len() >= PARSER_LIMIT {
        return false;
    }
    let mark = out.len();
    // Where the current line begins in `out`, and whether a CR was seen since it was printed to.
    let mut start = mark;
    let mut after_cr = false;
    // As the parser's performer does (`Sink::break_line`): a line of only white space is dropped.
    let break_line = |out: &mut String, start: &mut usize| {
        if is_blank(&out[*start..]) {
            out.truncate(*start);
        } else {
            out.push('\n');
            *start = out.len();
        }
    };
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b >= 0x20 || b == b'\t' {
            // Printable text (valid UTF-8, so every byte >= 0x80 is part of a character): up to
            // the next control byte.
            let end = first_c0(&raw[i..]).map_or(raw.len(), |n| i + n);
            if after_cr {
                after_cr = false;
                break_line(out, &mut start);
            }
            push_cut(&text[i..end], out, &mut start);
            i = end;
            continue;
        }
        match b {
            b'\r' => after_cr = true,
            0x1b => match escape_len(&raw[i..]) {
                Some((len, action)) => {
                    if matches!(action, b'H' | b'f' | b'd') {
                        break_line(out, &mut start);
                    }
                    i += len;
                    continue;
                }
                None => {
                    out.truncate(mark);
                    return false;
                }
            },
            // Other C0 controls are executed, and the performer drops them.
            _ => {}
        }
        i += 1;
    }
    // The line is at most `MAX_LINE` bytes: `push_line` would not split it.
    out.push('\n');
    true
}

/// Appends `s` to the line that begins at `start` in `out` (at most `MAX_LINE` bytes long), cut
/// as the performer cuts it (`Sink::print`): when the line would pass `MAX_LINE`, the part up to
/// its last character boundary at or before `MAX_LINE` becomes a line of its own, and `start`
/// moves to the rest.
fn push_cut(mut s: &str, out: &mut String, start: &mut usize) {
    loop {
        let room = MAX_LINE - (out.len() - *start);
        if s.len() <= room {
            out.push_str(s);
            return;
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&s[..cut]);
        out.push('\n');
        *start = out.len();
        s = &s[cut..];
    }
}

/// The length of the escape sequence at the start of `b` (which begins with ESC) and the CSI
/// action the parser dispatches for it, for the sequences whose only effect the performer sees
/// is that dispatch: `ESC [`, an optional private marker (`<=>?`), parameter bytes (`0-9:;`),
/// intermediate bytes (0x20-0x2F) and a final byte (0x40-0x7E), which the parser always
/// dispatches as a CSI; or ESC and one final byte, which it dispatches as an ESC sequence (the
/// performer ignores those: action 0). `None` for anything else.
fn escape_len(b: &[u8]) -> Option<(usize, u8)> {
    match *b.get(1)? {
        b'[' => {
            let mut j = 2;
            if matches!(b.get(j), Some(0x3c..=0x3f)) {
                j += 1;
            }
            while matches!(b.get(j), Some(0x30..=0x3b)) {
                j += 1;
            }
            while matches!(b.get(j), Some(0x20..=0x2f)) {
                j += 1;
            }
            match *b.get(j)? {
                f @ 0x40..=0x7e => Some((j + 1, f)),
                _ => None,
            }
        }
        // ESC followed by a final byte: dispatched at once (not `P`, `X`, `[`, `]`, `^`, `_`,
        // which open strings or sequences).
        0x30..=0x4f | 0x51..=0x57 | 0x59 | 0x5a | 0x5c | 0x60..=0x7e => Some((2, 0)),
        _ => None,
    }
}

/// The first C0 control byte other than tab.
fn first_c0(b: &[u8]) -> Option<usize> {
    let c0 = |x: u8| x < 0x20 && x != b'\t';
    let mut base = 0;
    for chunk in b.chunks(32) {
        // Branch-free over the chunk so the compiler vectorizes it.
        if chunk.iter().fold(false, |acc, &x| acc | c0(x)) {
            return chunk.iter().position(|&x| c0(x)).map(|i| base + i);
        }
        base += chunk.len();
    }
    None
}

/// `s.trim().is_empty()`, without decoding characters while they are ASCII (GRUB's menu
/// redraws are long runs of spaces).
fn is_blank(s: &str) -> bool {
    match s
        .bytes()
        .position(|b| !b.is_ascii_whitespace() && b != 0x0b)
    {
        None => true,
        Some(i) if s.as_bytes()[i] < 0x80 => false,
        Some(i) => s[i..].trim().is_empty(),
    }
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
        if !is_blank(&self.text.line) {
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

    /// `feed_split` and `normalize_lines` together give what `feed` gives, for the real consoles
    /// and a line of invalid bytes, in pieces of many sizes split at many points.
    #[test]
    fn feed_split_and_normalize_lines_give_what_feed_gives() {
        use rand::{Rng, SeedableRng};
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut log =
            std::fs::read(data.join("recorded/debian-12-upgrade-reboot.serial.raw")).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(data.join("console"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            log.extend(std::fs::read(n).unwrap());
        }
        log.extend(vec![0xffu8; 3 * MAX_LINE]);
        log.extend(b"\r\nlast\x1b[1m line");
        let whole = norm_chunks(&[&log]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..20 {
            let mut n = Normalizer::new();
            let mut out = String::new();
            let mut rest = &log[..];
            while !rest.is_empty() {
                let (piece, later) = rest.split_at(rng.gen_range(1..200_000).min(rest.len()));
                let mut after = String::new();
                let at = rng.gen_range(0..=piece.len());
                let handed = n.feed_split(piece, at, &mut out, &mut after);
                normalize_lines(&piece[handed], &mut out);
                out.push_str(&after);
                rest = later;
            }
            n.finish(&mut out);
            assert_eq!(out, whole);
        }
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

    /// The escape parser's result for one line (the path every line with escapes took before
    /// the bulk path existed).
    fn via_parser(raw: &[u8]) -> String {
        let mut line = LineState::default();
        let mut out = String::new();
        line.feed(raw, &mut out);
        line.end(&mut out);
        out
    }

    /// The bulk path, where it takes the line.
    fn via_bulk(raw: &[u8]) -> Option<String> {
        let mut out = String::from("kept");
        let taken = std::str::from_utf8(raw).is_ok_and(|t| normalize_escaped(t, &mut out));
        match out.strip_prefix("kept") {
            Some(rest) if taken => Some(rest.to_string()),
            _ => {
                assert_eq!(out, "kept", "a refused line leaves the output as it was");
                None
            }
        }
    }

    /// Every line of the real recorded console and of the samples: the bulk path gives what the
    /// escape parser gives, and it takes nearly all the lines with escapes.
    #[test]
    fn bulk_path_equals_the_parser_on_real_consoles() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut files = vec![data.join("recorded/debian-12-upgrade-reboot.serial.raw")];
        for e in std::fs::read_dir(data.join("console")).unwrap() {
            files.push(e.unwrap().path());
        }
        let (mut escaped, mut taken) = (0, 0);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            for raw in bytes.split(|&b| b == b'\n') {
                if !raw.contains(&0x1b) {
                    continue;
                }
                escaped += 1;
                if let Some(bulk) = via_bulk(raw) {
                    taken += 1;
                    assert_eq!(bulk, via_parser(raw), "{}: {raw:?}", f.display());
                }
            }
        }
        assert!(escaped > 300, "{escaped} lines with escapes");
        assert!(taken * 100 >= escaped * 95, "{taken} of {escaped} taken");
    }

    /// What consoles print and what breaks parsers (see the random-line tests).
    const PIECES: &[&[u8]] = &[
        b"systemd[1]: Started ",
        b"  OK  ] ",
        b" ",
        b"   ",
        b"\t",
        b"\r",
        b"\r\r",
        b"x",
        b"Synchronous Exception at 0x7C743000",
        b"caf\xc3\xa9",
        b"\xe2\x80\xa6",
        b"\xc2\x85",
        b"\xc2\x9b",
        b"\xc2\xa0",
        b"\x7f",
        b"\x00",
        b"\x07",
        b"\x08",
        b"\x18",
        b"\x1a",
        b"\x0e",
        b"\x1b[0m",
        b"\x1b[0;1;39m",
        b"\x1b[0;32m",
        b"\x1b[2J",
        b"\x1b[01;01H",
        b"\x1b[5;78f",
        b"\x1b[7d",
        b"\x1b[H",
        b"\x1b[K",
        b"\x1b[=3h",
        b"\x1b[?25l",
        b"\x1b[?1;2$p",
        b"\x1b[1:2:3m",
        b"\x1b[ q",
        b"\x1b[1?m",
        b"\x1b[1 2m",
        b"\x1b[1\rm",
        b"\x1b[1\x7fm",
        b"\x1b[1\xc3\xa9m",
        b"\x1b[",
        b"\x1b",
        b"\x1bM",
        b"\x1b7",
        b"\x1bc",
        b"\x1bH",
        b"\x1b(B",
        b"\x1bP1;2qdata\x1b\\",
        b"\x1b]0;title\x07",
        b"\x1b]8;;http://x\x1b\\",
        b"\x1bX",
        b"\x1b\x1b[m",
        b"\x1b\xe2\x80\xa6",
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\xf0\x9f\x98\x80",
    ];

    /// Appends `n` random [`PIECES`], each one a random byte instead with probability `stray`.
    fn push_random_pieces(rng: &mut impl rand::Rng, n: usize, stray: f64, raw: &mut Vec<u8>) {
        for _ in 0..n {
            if rng.gen_bool(stray) {
                raw.push(rng.r#gen::<u8>());
            } else {
                raw.extend_from_slice(PIECES[rng.gen_range(0..PIECES.len())]);
            }
        }
    }

    /// Blocks of random lines (plain ones with and without the CR before their '\n', lines of
    /// escapes, controls, invalid UTF-8, lone CRs, lines over `MAX_LINE`): normalizing a block
    /// gives, line by line, what the escape parser gives for each line alone, whichever path
    /// each line takes (the copy, the bulk escape path or the parser). Seeded.
    #[test]
    fn a_block_normalizes_as_the_parser_does_line_by_line() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        for _ in 0..3_000 {
            let (mut block, mut want) = (Vec::new(), String::new());
            for _ in 0..rng.gen_range(0..40) {
                let mut raw = Vec::new();
                match rng.gen_range(0..10) {
                    0..=4 => raw.extend_from_slice(b"[    1.234567] virtio_blk virtio1: [vda]"),
                    5 => raw.resize(rng.gen_range(MAX_LINE - 2..MAX_LINE + 3), b'z'),
                    _ => {
                        let n = rng.gen_range(0..8);
                        push_random_pieces(&mut rng, n, 0.05, &mut raw);
                    }
                }
                raw.retain(|&b| b != b'\n');
                if rng.gen_bool(0.7) {
                    raw.push(b'\r');
                }
                want.push_str(&via_parser(&raw));
                block.extend_from_slice(&raw);
                block.push(b'\n');
            }
            let mut got = String::new();
            normalize_lines(&block, &mut got);
            assert_eq!(got, want, "{block:?}");
        }
    }

    /// `first_control` finds what a byte-by-byte search finds, wherever it is in a block (each
    /// side of the 64-byte steps) and whatever follows a CR.
    #[test]
    fn first_control_finds_the_first_byte_that_needs_more_than_a_copy() {
        use rand::{Rng, SeedableRng};
        let naive = |b: &[u8]| {
            (0..b.len()).find(|&i| {
                let x = b[i];
                x == 0x7f
                    || (x < 0x20
                        && x != b'\t'
                        && x != b'\n'
                        && !(x == b'\r' && b.get(i + 1) == Some(&b'\n')))
            })
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..300);
            let mut b: Vec<u8> = (0..len)
                .map(|_| match rng.gen_range(0..40) {
                    0 => b'\r',
                    1 => b'\n',
                    2 => rng.r#gen::<u8>(),
                    _ => b'a',
                })
                .collect();
            if rng.gen_bool(0.5) {
                b.extend_from_slice(b"\r\n");
            }
            assert_eq!(first_control(&b), naive(&b), "{b:?}");
        }
    }

    #[test]
    fn is_blank_is_trim_is_empty() {
        for s in [
            "",
            " ",
            "\t \r\n",
            "\u{b}\u{c}",
            " x ",
            "\u{a0}",
            " \u{3000} ",
            " \u{85}",
            "\u{a0}x",
            "\u{1b}",
            " \u{7f}",
        ] {
            assert_eq!(is_blank(s), s.trim().is_empty(), "{s:?}");
        }
    }

    /// Randomized lines built from what consoles print and from what breaks parsers (escape
    /// sequences whole, cut, with stray or control bytes inside, OSC strings, C1 characters,
    /// invalid UTF-8, lone CRs, cursor moves): wherever the bulk path takes a line, it gives what
    /// the escape parser gives. Seeded, so a failure repeats.
    #[test]
    fn bulk_path_equals_the_parser_on_random_lines() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (mut tried, mut taken) = (0, 0);
        for _ in 0..200_000 {
            let mut raw = Vec::new();
            let n = rng.gen_range(0..12);
            push_random_pieces(&mut rng, n, 0.1, &mut raw);
            raw.retain(|&b| b != b'\n');
            tried += 1;
            if let Some(bulk) = via_bulk(&raw) {
                taken += 1;
                assert_eq!(bulk, via_parser(&raw), "{raw:?}");
            }
        }
        assert!(
            taken * 4 > tried,
            "{taken} of {tried} taken: the test must exercise it"
        );
        // Long lines: the bulk path cuts them where the parser does, up to `PARSER_LIMIT`.
        let long = |n: usize| {
            let mut v = b"\x1b[0;32m".to_vec();
            v.resize(n, b'y');
            v
        };
        for n in [MAX_LINE, MAX_LINE + 1, MAX_LINE + 12, 3 * MAX_LINE + 5] {
            let raw = long(n);
            assert_eq!(via_bulk(&raw).unwrap(), via_parser(&raw), "{n} bytes");
        }
        assert_eq!(via_bulk(&long(PARSER_LIMIT)), None);
        // Random lines over `MAX_LINE` (GRUB's menu redraws are 4-5 KiB): long runs of text,
        // multi-byte characters that straddle the cut, white space only pieces, cursor moves.
        const LONG: &[&[u8]] = &[
            b"\x1b[0m\x1b[36m\x1b[44m",
            b"\x1b[05;03H",
            b"\x1b[K",
            b"\r",
            b"caf\xc3\xa9",
            b"\xe2\x80\xa6",
            b"\xf0\x9f\x98\x80",
            b"\t",
        ];
        let (mut tried, mut taken) = (0, 0);
        for _ in 0..3_000 {
            let mut raw = Vec::new();
            while raw.len() < MAX_LINE + rng.gen_range(0..3 * MAX_LINE) {
                match rng.gen_range(0..4) {
                    0 => raw.extend_from_slice(LONG[rng.gen_range(0..LONG.len())]),
                    1 => raw.extend(std::iter::repeat_n(b' ', rng.gen_range(1..2000))),
                    2 => raw.extend(std::iter::repeat_n(b'x', rng.gen_range(1..2000))),
                    _ => raw.extend_from_slice(PIECES[rng.gen_range(0..PIECES.len())]),
                }
            }
            raw.retain(|&b| b != b'\n');
            tried += 1;
            if let Some(bulk) = via_bulk(&raw) {
                taken += 1;
                assert_eq!(bulk, via_parser(&raw), "{raw:?}");
            }
        }
        assert!(taken * 10 > tried, "{taken} of {tried} long lines taken");
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
