//! The streaming classifier: normalized console lines in, stage timeline and findings out, and the
//! verdict decision. Pure: no IO, no clocks (times are passed in), no printing.
//!
//! What it keeps is bounded whatever the console prints, and its work is linear in the text:
//! - [`FINDINGS_PER_PATTERN`] findings of each pattern per boot. Later lines of a pattern are
//!   counted in the last kept finding's `repeats` (and in the boot's `findings_dropped`). The
//!   decision never changes: the first fatal finding is the first of its pattern, so it is kept,
//!   and a suspect is only dropped while an earlier one of its pattern still stands (not
//!   cleared), which is decided on first and is cleared no later.
//! - [`BOOTS_KEPT_FIRST`] first and [`BOOTS_KEPT_LAST`] last boots. The boot after a gap counts
//!   the boots dropped before it in `boots_dropped_before`; `Boot::index` keeps counting every
//!   boot, and [`Classifier::boots_started`] is how many there were.
//! - Per exception dump, [`DUMP_FRAMES`] backtrace frames, [`DUMP_MODULES`] module paths and
//!   [`DUMP_REGISTERS`] registers (ESR, ELR and FAR are always kept); the rest are counted in
//!   `entries_dropped`. A dump whose banner finding was dropped is not read.
//! - [`MAX_TEXT`] bytes of a line in a finding, a milestone or a dump (the part around the
//!   match, marked with `…` where cut).
//!
//! A line the console normalizer cut at its `MAX_LINE` limit is not lost: the line after one that
//! may have been cut is also matched joined to the end of it, so a banner printed across the cut
//! is found.

pub mod patterns;

use std::collections::BTreeMap;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::Captures;
use serde::{Deserialize, Serialize};

pub use patterns::{DumpPart, Effect, Pattern, PatternSet, Role};

use crate::core::console::may_be_cut;
use crate::core::verdict::{Stage, Verdict, exit_code};

/// Findings of one pattern kept per boot.
pub const FINDINGS_PER_PATTERN: usize = 16;
/// The first boots kept...
pub const BOOTS_KEPT_FIRST: usize = 4;
/// ...and the last ones (the current boot is always kept).
pub const BOOTS_KEPT_LAST: usize = 28;
/// Backtrace frames kept per exception dump.
pub const DUMP_FRAMES: usize = 64;
/// Module legend entries kept per exception dump.
pub const DUMP_MODULES: usize = 64;
/// Registers kept per exception dump.
pub const DUMP_REGISTERS: usize = 128;
/// Bytes of a console line kept in a finding, a milestone or a dump field.
pub const MAX_TEXT: usize = 1024;
/// The unterminated tail is checked for prompts only up to this length: prompts are short, and
/// the tail is checked again after every read.
pub const MAX_PROMPT: usize = 256;
/// Bytes of a line that may have been cut that are joined to the next line to match across.
const JOIN_TAIL: usize = 256;

/// A stage milestone: the first time a stage pattern was seen in a boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Milestone {
    pub stage: Stage,
    pub pattern: String,
    pub line: u64,
    pub t_s: Option<f64>,
    pub text: String,
}

/// One frame of an edk2 backtrace (`PC 0x… (0x…+0x…) [ n] Module.dll`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Frame {
    pub pc: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offset: Option<String>,
}

/// What an edk2 exception dump said, parsed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExceptionDump {
    /// `Synchronous`, `SError`, `IRQ`, `FIQ`, or `none` for a dump without its banner.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    /// How many times the banner was printed (edk2 often prints it twice).
    pub banner_count: u32,
    pub backtrace: Vec<Frame>,
    /// Module legend lines: index -> path of the `.dll`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub modules: BTreeMap<u32, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub registers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub esr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub elr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub far: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub syndrome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub abort: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub assert: Option<String>,
    pub recursive: bool,
    /// Line number of the last line that belonged to the dump.
    pub last_line: u64,
    /// Backtrace frames, module paths and registers beyond the caps, not kept.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub entries_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    Fatal,
    Suspect,
    Note,
}

/// A line that matters for the verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub pattern: String,
    pub kind: FindingKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verdict: Option<Verdict>,
    /// The stage the boot was in when the line appeared.
    pub stage: Stage,
    pub line: u64,
    pub t_s: Option<f64>,
    pub text: String,
    /// A suspect is cleared when the boot later reaches a further stage.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cleared: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exception: Option<ExceptionDump>,
    /// Lines of this pattern later in the boot that were not kept (over the cap).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub repeats: u64,
}

/// One boot: from power-on or a reset to the next reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Boot {
    pub index: usize,
    /// `power-on`, `reset` (QMP RESET event) or `firmware-restart` (the banner again).
    pub reason: String,
    pub first_line: u64,
    pub start_t_s: Option<f64>,
    pub stage: Stage,
    pub timeline: Vec<Milestone>,
    pub findings: Vec<Finding>,
    /// Findings not kept (over the per-pattern cap): the sum of the findings' `repeats`.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub findings_dropped: u64,
    /// Boots between the previous kept boot and this one that were not kept.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub boots_dropped_before: u64,
    /// Per pattern index: how many of its findings are kept and where the last one is.
    #[serde(skip)]
    tally: Vec<Tally>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    kept: usize,
    last: usize,
}

impl Boot {
    /// A boot that printed nothing (for judging a boot that never started).
    pub fn empty() -> Boot {
        Boot::new(0, "none", 0, None)
    }

    fn new(index: usize, reason: &str, first_line: u64, t: Option<f64>) -> Boot {
        Boot {
            index,
            reason: reason.to_string(),
            first_line,
            start_t_s: t,
            stage: Stage::None,
            timeline: Vec::new(),
            findings: Vec::new(),
            findings_dropped: 0,
            boots_dropped_before: 0,
            tally: Vec::new(),
        }
    }

    /// Whether a new finding of pattern `pattern` and kind `kind` is kept; one that is not is
    /// counted. See the module doc for why the decision cannot change.
    fn admit(&mut self, pattern: usize, kind: FindingKind) -> bool {
        let tally = self.tally.get(pattern).copied().unwrap_or_default();
        if tally.kept < FINDINGS_PER_PATTERN {
            return true;
        }
        let last = &mut self.findings[tally.last];
        let stands = last.kind == FindingKind::Suspect && !last.cleared;
        if kind == FindingKind::Suspect && !stands {
            return true;
        }
        last.repeats += 1;
        self.findings_dropped += 1;
        false
    }

    /// Adds an admitted finding of pattern `pattern`; returns its index.
    fn record(&mut self, pattern: usize, finding: Finding) -> usize {
        if self.tally.len() <= pattern {
            self.tally.resize(pattern + 1, Tally::default());
        }
        self.findings.push(finding);
        let idx = self.findings.len() - 1;
        self.tally[pattern].kept += 1;
        self.tally[pattern].last = idx;
        idx
    }

    /// The first fatal finding.
    pub fn fatal(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.kind == FindingKind::Fatal)
    }

    /// The first suspect not cleared by later progress.
    pub fn suspect(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| f.kind == FindingKind::Suspect && !f.cleared)
    }

    pub fn reached(&self, stage: Stage) -> bool {
        self.stage >= stage
    }

    /// When the boot first reached `stage`, if it did.
    pub fn stage_time(&self, stage: Stage) -> Option<f64> {
        self.timeline
            .iter()
            .find(|m| m.stage >= stage)
            .and_then(|m| m.t_s)
    }
}

/// How the watching ended (or that it has not yet).
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Still running: decide only on a fatal finding or a reached target.
    Running,
    /// An offline log ended.
    EndOfLog,
    /// No console output for the silence limit.
    Silence { seconds: f64 },
    /// The overall timeout expired.
    Timeout { seconds: f64 },
    /// QEMU exited. `clean_poweroff`: the guest asked for the power-off and QEMU exited 0.
    QemuExited {
        clean_poweroff: bool,
        status: String,
    },
}

/// The verdict for one boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub stage: Stage,
    pub before_grub: bool,
    /// One sentence for humans.
    pub reason: String,
    /// Index into the boot's findings of the finding that decided, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finding: Option<usize>,
    /// The process exit code this decision maps to (see `verdict::exit_code`).
    pub exit_code: u8,
}

/// The streaming classifier.
pub struct Classifier {
    set: &'static PatternSet,
    /// The boots kept (see the module doc); the last is the current one.
    boots: Vec<Boot>,
    /// Every boot seen, kept or not.
    boots_started: usize,
    boots_dropped: u64,
    line_no: u64,
    /// The exception dump still being read, in the current boot.
    open_dump: Option<OpenDump>,
    /// A prompt already matched on the unterminated tail: (line number, pattern index).
    prompt_seen: Option<(u64, usize)>,
    /// The end of the last line when the normalizer may have cut it (the next line is also
    /// matched joined to it).
    cut_tail: Option<String>,
    /// The finding that line made, if its match began in `cut_tail`: a match that goes on
    /// across the cut completes it.
    cut_hit: Option<CutHit>,
    scratch: Vec<usize>,
    last_line: String,
    /// The literal scan for the state it was made for (see [`Classifier::live_scan`]).
    live_scan: Option<(ScanState, Option<Arc<AhoCorasick>>)>,
    /// Whether lines whose literals can change nothing are passed over at the scan (off only in
    /// the test that checks this changes no result).
    prune: bool,
    /// Lines looked at one by one (with the patterns' regexes): the rest were only counted.
    looked_at: u64,
}

/// What decides which literals a line can change something with: the boot, its stage and
/// timeline (which only grows within a boot), and whether a dump is open.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ScanState {
    boot: usize,
    stage: Stage,
    timeline: usize,
    dump_open: bool,
}

/// A finding made from a line that may have been cut, with its match near the line's end.
#[derive(Debug, Clone, Copy)]
struct CutHit {
    pattern: usize,
    /// The boot (its index) and the index of the finding in it.
    boot: usize,
    finding: usize,
    /// Where the match began, in bytes before the end of the line.
    from_end: usize,
}

/// The dump lines go to: a kept finding, or a finding that was not kept (its lines are not read).
#[derive(Debug, Clone, Copy, PartialEq)]
enum OpenDump {
    Kept(usize),
    Dropped,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier {
    pub fn new() -> Classifier {
        Classifier::with_patterns(PatternSet::builtin())
    }

    /// A classifier over another pattern set (tests of the pattern file's contract).
    pub fn with_patterns(set: &'static PatternSet) -> Classifier {
        Classifier {
            set,
            boots: vec![Boot::new(0, "power-on", 1, Some(0.0))],
            boots_started: 1,
            boots_dropped: 0,
            line_no: 0,
            open_dump: None,
            prompt_seen: None,
            cut_tail: None,
            cut_hit: None,
            scratch: Vec::new(),
            last_line: String::new(),
            live_scan: None,
            prune: true,
            looked_at: 0,
        }
    }

    /// The boots kept: the first [`BOOTS_KEPT_FIRST`] and the last [`BOOTS_KEPT_LAST`] (their
    /// `index` counts every boot).
    pub fn boots(&self) -> &[Boot] {
        &self.boots
    }

    /// How many boots there were, kept or not: the index the next boot gets.
    pub fn boots_started(&self) -> usize {
        self.boots_started
    }

    /// How many boots were not kept.
    pub fn boots_dropped(&self) -> u64 {
        self.boots_dropped
    }

    pub fn current(&self) -> &Boot {
        self.boots.last().expect("there is always a boot")
    }

    /// Number of complete lines seen.
    pub fn lines(&self) -> u64 {
        self.line_no
    }

    /// How many lines were looked at one by one (matched against the patterns' regexes); the
    /// others were only counted.
    pub fn lines_looked_at(&self) -> u64 {
        self.looked_at
    }

    /// The last non-empty line seen (for `hang` reports).
    pub fn last_line(&self) -> &str {
        &self.last_line
    }

    /// The version the firmware banner printed in the first boot that showed it (trimmed; empty
    /// for Debian's builds), or `None` when no banner was seen.
    pub fn firmware_banner_version(&self) -> Option<String> {
        let banner = &self.set.role_pattern(Role::FirmwareBanner).name;
        self.boots
            .iter()
            .flat_map(|b| b.timeline.iter())
            .find(|m| &m.pattern == banner)
            .and_then(|m| self.set.banner_version(&m.text))
    }

    /// True while an exception dump is being read (the caller waits for it to end).
    pub fn dump_open(&self) -> bool {
        self.open_dump.is_some()
    }

    /// Starts a new boot (the caller saw a QMP RESET). A reset before anything was printed in
    /// the current boot does not start another.
    pub fn new_boot(&mut self, reason: &str, t: Option<f64>) {
        let cur = self.current();
        if cur.stage == Stage::None && cur.findings.is_empty() && cur.findings_dropped == 0 {
            return;
        }
        self.push_boot(reason, self.line_no + 1, t);
    }

    /// Begins a boot; over the cap, the oldest of the boots after the first ones is dropped.
    fn push_boot(&mut self, reason: &str, first_line: u64, t: Option<f64>) {
        if self.boots.len() >= BOOTS_KEPT_FIRST + BOOTS_KEPT_LAST {
            let gone = self.boots.remove(BOOTS_KEPT_FIRST);
            self.boots[BOOTS_KEPT_FIRST].boots_dropped_before += gone.boots_dropped_before + 1;
            self.boots_dropped += 1;
        }
        self.boots
            .push(Boot::new(self.boots_started, reason, first_line, t));
        self.boots_started += 1;
        self.open_dump = None;
    }

    /// Feeds complete lines: `text` is zero or more lines, each ending in '\n' (as produced by
    /// `console::Normalizer`). All lines get the time `t`.
    pub fn feed_text(&mut self, text: &str, t: Option<f64>) {
        let bytes = text.as_bytes();
        let mut pos = 0; // the start of the first line not yet looked at
        while pos < bytes.len() {
            let input = aho_corasick::Input::new(bytes).range(pos..);
            let scan = self.live_scan();
            let hit = scan.and_then(|s| s.find(input)).map(|m| {
                memchr::memrchr(b'\n', &bytes[pos..m.start()]).map_or(pos, |i| pos + i + 1)
            });
            self.pass_lines(text, pos, hit.unwrap_or(bytes.len()), t);
            let Some(start) = hit else {
                break;
            };
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            self.classify_line(self.line_no + 1, &text[start..end], t);
            if end < bytes.len() {
                self.line_no += 1;
            }
            pos = end + 1;
        }
        if let Some(last) = text.trim_end_matches('\n').rsplit('\n').next()
            && !last.trim().is_empty()
        {
            self.last_line.clear();
            self.last_line.push_str(last);
        }
    }

    /// The scan for lines that can change something now: a line whose literals all belong to
    /// patterns that cannot match it (their `until` is reached) or whose match would change
    /// nothing (a stage pattern already in this boot's timeline, at or below its stage, while no
    /// dump is open: `apply` would return at once) is passed over like a line without literals.
    /// Such lines are most of a healthy boot's hits (every systemd status line holds a literal
    /// of the userspace stage). `None` when no literal is left to look for.
    fn live_scan(&mut self) -> Option<Arc<AhoCorasick>> {
        if !self.prune {
            return Some(self.set.scan.clone());
        }
        let boot = self.current();
        let state = ScanState {
            boot: boot.index,
            stage: boot.stage,
            timeline: boot.timeline.len(),
            dump_open: self.open_dump.is_some(),
        };
        if let Some((s, scan)) = &self.live_scan
            && *s == state
        {
            return scan.clone();
        }
        let scan = self.set.scan_without(self.dead_literals());
        self.live_scan = Some((state, scan.clone()));
        scan
    }

    /// The literals (bit `i`: distinct literal `i`) every owner of which is out of scope or
    /// inert in the current state (see [`Classifier::live_scan`]).
    fn dead_literals(&self) -> u128 {
        let set = self.set;
        if self.open_dump.is_some() || set.literal_owners.len() > 128 {
            return 0;
        }
        let boot = self.current();
        let inert = |i: usize| {
            let p = &set.patterns[i];
            !set.in_scope(i, boot.stage)
                || (p.effect == Effect::Stage
                    && !p.restarts_boot
                    && p.file_stages.is_empty()
                    && p.stage.is_some_and(|s| s <= boot.stage)
                    && boot.timeline.iter().any(|m| m.pattern == p.name))
        };
        set.literal_owners
            .iter()
            .enumerate()
            .filter(|(_, owners)| owners.iter().all(|&i| inert(i)))
            .fold(0, |dead, (l, _)| dead | 1 << l)
    }

    /// Counts the lines in `text[from..to]`, which hold no literal of the live scan. Only a line
    /// that follows one the normalizer may have cut is looked at (joined to it), so the common
    /// case is a count.
    fn pass_lines(&mut self, text: &str, from: usize, to: usize, t: Option<f64>) {
        let region = &text.as_bytes()[from..to];
        if self.cut_tail.is_none() && !has_long_line(region) {
            self.line_no += memchr::memchr_iter(b'\n', region).count() as u64;
            return;
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', region) {
            let line = &text[from + start..from + nl];
            if self.cut_tail.is_some() || may_be_cut(line) {
                self.classify_line(self.line_no + 1, line, t);
            }
            self.line_no += 1;
            start = nl + 1;
        }
        let last = &text[from + start..to];
        if !last.is_empty() && (self.cut_tail.is_some() || may_be_cut(last)) {
            // A last line without its '\n' (not counted, as in `feed_text`).
            self.classify_line(self.line_no + 1, last, t);
        }
    }

    /// Checks the unterminated tail of the console (a prompt such as `login: ` is printed
    /// without a newline). The line is classified now, and not again when it completes.
    pub fn feed_partial(&mut self, tail: &str, t: Option<f64>) {
        if tail.len() > MAX_PROMPT {
            return;
        }
        let Some(i) = self.set.first_prompt_match(tail, self.current().stage) else {
            return;
        };
        let line = self.line_no + 1;
        if self.prompt_seen == Some((line, i)) {
            return;
        }
        self.prompt_seen = Some((line, i));
        let _ = self.apply(i, line, tail, t);
        if !tail.trim().is_empty() {
            self.last_line.clear();
            self.last_line.push_str(tail);
        }
    }

    fn classify_line(&mut self, line_no: u64, line: &str, t: Option<f64>) {
        self.looked_at += 1;
        let tail = self.cut_tail.take();
        if let (Some(tail), Some(hit)) = (&tail, self.cut_hit.take()) {
            self.complete_cut_finding(tail, line, hit);
        }
        let stage = self.current().stage;
        let mut scratch = std::mem::take(&mut self.scratch);
        let hit = match &tail {
            None => self
                .set
                .first_match(line, stage, &mut scratch)
                .map(|i| (i, None)),
            Some(tail) => self.set.first_match_across(tail, line, stage, &mut scratch),
        };
        self.scratch = scratch;
        let mut made = None;
        if let Some((i, joined)) = hit
            && self.prompt_seen != Some((line_no, i))
        {
            let text = joined.as_deref().unwrap_or(line);
            made = self.apply(i, line_no, text, t).map(|(finding, at)| CutHit {
                pattern: i,
                boot: self.current().index,
                finding,
                from_end: text.len() - at,
            });
        }
        if may_be_cut(line) {
            let mut from = line.len().saturating_sub(JOIN_TAIL);
            while !line.is_char_boundary(from) {
                from += 1;
            }
            let tail = &line[from..];
            self.cut_tail = Some(tail.to_string());
            self.cut_hit = made.filter(|h| h.from_end <= tail.len());
        }
    }

    /// The line after a cut goes on with the match that made the cut line's finding (a banner
    /// whose address was cut off): the finding gets the whole text and what it captures.
    fn complete_cut_finding(&mut self, tail: &str, line: &str, hit: CutHit) {
        let p = &self.set.patterns[hit.pattern];
        let joined = format!("{tail}{line}");
        let start = tail.len() - hit.from_end;
        let Some(caps) = p.regex.captures_at(&joined, start) else {
            return;
        };
        let m = caps.get(0).expect("group 0");
        if m.start() != start || m.end() <= tail.len() {
            return;
        }
        let boot = self.boots.last_mut().expect("a boot");
        if boot.index != hit.boot {
            return;
        }
        let f = &mut boot.findings[hit.finding];
        f.text = clip(&joined, start);
        if let (Some(x), Some(DumpPart::Banner)) = (f.exception.as_mut(), p.dump) {
            x.address = caps.name("address").map(|m| format!("0x{}", m.as_str()));
        }
    }

    /// Applies pattern `i` to its line; returns the finding it made (its index in the current
    /// boot) and where the match begins in `line`. The regex's captures are taken only when
    /// something reads them: a line that only adds to a count (a finding over the cap, a stage
    /// already in the timeline) costs no second search.
    fn apply(
        &mut self,
        i: usize,
        line_no: u64,
        line: &str,
        t: Option<f64>,
    ) -> Option<(usize, usize)> {
        let set = self.set;
        let p = &set.patterns[i];
        let mut caps = None;
        match p.effect {
            // Role-only patterns have no literals and are no prompts: never matched here.
            Effect::RoleOnly => None,
            Effect::Dump => {
                self.apply_dump(i, &mut caps, line_no, line, t);
                None
            }
            Effect::Stage => {
                self.open_dump = None;
                let stage = if p.file_stages.is_empty() {
                    p.stage
                        .expect("stage patterns have a stage (checked at load)")
                } else {
                    stage_of(p, captures(p, line, &mut caps))
                };
                let cur = self.current();
                if p.restarts_boot
                    && (cur.stage > stage || cur.timeline.iter().any(|m| m.pattern == p.name))
                {
                    self.push_boot("firmware-restart", line_no, t);
                }
                self.advance(
                    stage,
                    &p.name,
                    line_no,
                    line,
                    || match_start(p, line, &mut caps),
                    t,
                );
                None
            }
            Effect::Fatal | Effect::Suspect | Effect::Note => {
                if let Some(st) = p.stage {
                    self.advance(
                        st,
                        &p.name,
                        line_no,
                        line,
                        || match_start(p, line, &mut caps),
                        t,
                    );
                }
                if p.effect == Effect::Fatal
                    && matches!(self.open_dump, Some(OpenDump::Kept(_)))
                    && p.dump.is_some()
                {
                    let c = captures(p, line, &mut caps);
                    let at = c.get(0).map_or(0, |m| m.start());
                    if self.absorb_into_dump(p, c, line_no, line, at) {
                        return None;
                    }
                }
                self.open_dump = None;
                let kind = match p.effect {
                    Effect::Fatal => FindingKind::Fatal,
                    Effect::Suspect => FindingKind::Suspect,
                    _ => FindingKind::Note,
                };
                let boot = self.boots.last_mut().expect("a boot");
                if !boot.admit(i, kind) {
                    let opens_dump = match p.dump {
                        Some(DumpPart::Recursive) => true,
                        Some(DumpPart::Banner) => {
                            exception_banner(p, captures(p, line, &mut caps), line_no).is_some()
                        }
                        _ => false,
                    };
                    if opens_dump {
                        self.open_dump = Some(OpenDump::Dropped);
                    }
                    return None;
                }
                let c = captures(p, line, &mut caps);
                let at = c.get(0).map_or(0, |m| m.start());
                let exception = exception_banner(p, c, line_no);
                let opens_dump = exception.is_some();
                let boot = self.boots.last_mut().expect("a boot");
                let finding = Finding {
                    pattern: p.name.clone(),
                    kind,
                    verdict: p.verdict,
                    stage: boot.stage,
                    line: line_no,
                    t_s: t,
                    text: clip(line, at),
                    cleared: false,
                    exception,
                    repeats: 0,
                };
                let idx = boot.record(i, finding);
                if opens_dump {
                    self.open_dump = Some(OpenDump::Kept(idx));
                }
                Some((idx, at))
            }
        }
    }

    /// A fatal line that continues an open dump (the banner printed again, the ASSERT that ends
    /// a DEBUG build's dump, a recursive exception while dumping) is added to it, not counted as
    /// a new failure.
    fn absorb_into_dump(
        &mut self,
        p: &Pattern,
        caps: &Captures,
        line_no: u64,
        line: &str,
        at: usize,
    ) -> bool {
        let Some(OpenDump::Kept(idx)) = self.open_dump else {
            return false;
        };
        let boot = self.boots.last_mut().expect("a boot");
        let Some(dump) = boot.findings[idx].exception.as_mut() else {
            return false;
        };
        match p.dump {
            Some(DumpPart::Banner)
                if caps.name("address").map(|m| m.as_str())
                    == dump.address.as_deref().map(|a| &a[2..]) =>
            {
                dump.banner_count = dump.banner_count.saturating_add(1);
            }
            Some(DumpPart::Assert) => dump.assert = Some(clip(line.trim(), at)),
            Some(DumpPart::Recursive) => dump.recursive = true,
            _ => return false,
        }
        dump.last_line = line_no;
        true
    }

    fn apply_dump<'h>(
        &mut self,
        i: usize,
        caps: &mut Option<Captures<'h>>,
        line_no: u64,
        line: &'h str,
        t: Option<f64>,
    ) {
        let p = &self.set.patterns[i];
        if self.open_dump.is_none() {
            // A register dump or backtrace without its banner: the banner was lost (or the
            // firmware prints none), but the firmware took an exception all the same.
            let boot = self.boots.last_mut().expect("a boot");
            if !boot.admit(i, FindingKind::Fatal) {
                self.open_dump = Some(OpenDump::Dropped);
                return;
            }
            let finding = Finding {
                pattern: format!("{}-without-banner", p.name),
                kind: FindingKind::Fatal,
                verdict: Some(Verdict::FirmwareException),
                stage: boot.stage,
                line: line_no,
                t_s: t,
                text: clip(line, 0),
                cleared: false,
                exception: Some(ExceptionDump {
                    kind: "none".into(),
                    last_line: line_no,
                    ..Default::default()
                }),
                repeats: 0,
            };
            self.open_dump = Some(OpenDump::Kept(boot.record(i, finding)));
        }
        let Some(OpenDump::Kept(idx)) = self.open_dump else {
            // The dump of a banner that was not kept.
            return;
        };
        let boot = self.boots.last_mut().expect("a boot");
        let dump = boot.findings[idx]
            .exception
            .as_mut()
            .expect("dump findings carry an exception");
        dump.last_line = line_no;
        if matches!(
            p.dump,
            Some(DumpPart::Backtrace | DumpPart::ModuleLegend | DumpPart::Abort)
        ) && !(p.dump == Some(DumpPart::Backtrace) && dump.backtrace.len() >= DUMP_FRAMES)
        {
            captures(p, line, caps);
        }
        let caps = caps.as_ref();
        let group = |n: &str| caps.and_then(|c| c.name(n));
        let hex = |n: &str| group(n).map(|m| format!("0x{}", m.as_str()));
        let text = |n: &str| group(n).map(|m| clip(m.as_str(), 0));
        match p.dump {
            Some(DumpPart::Backtrace) if dump.backtrace.len() >= DUMP_FRAMES => {
                dump.entries_dropped += 1;
            }
            Some(DumpPart::Backtrace) => dump.backtrace.push(Frame {
                pc: hex("pc").unwrap_or_default(),
                module: text("module"),
                base: hex("base"),
                offset: hex("offset"),
            }),
            Some(DumpPart::ModuleLegend) => {
                if let (Some(i), Some(path)) = (group("index"), text("path"))
                    && let Ok(i) = i.as_str().parse()
                {
                    if dump.modules.len() < DUMP_MODULES || dump.modules.contains_key(&i) {
                        dump.modules.insert(i, path);
                    } else {
                        dump.entries_dropped += 1;
                    }
                }
            }
            Some(DumpPart::Syndrome) => dump.syndrome = Some(clip(line.trim(), 0)),
            Some(DumpPart::Abort) => dump.abort = text("description"),
            Some(DumpPart::Registers) => {
                for (reg, val) in parse_registers(line) {
                    match reg.as_str() {
                        "ESR" => dump.esr = Some(val.clone()),
                        "ELR" => dump.elr = Some(val.clone()),
                        "FAR" => dump.far = Some(val.clone()),
                        _ => {}
                    }
                    if dump.registers.len() < DUMP_REGISTERS || dump.registers.contains_key(&reg) {
                        dump.registers.insert(reg, val);
                    } else {
                        dump.entries_dropped += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Records that the boot reached `stage`; `line` is the line and `at` says where its match
    /// begins (asked only when a milestone is recorded).
    fn advance(
        &mut self,
        stage: Stage,
        pattern: &str,
        line_no: u64,
        line: &str,
        at: impl FnOnce() -> usize,
        t: Option<f64>,
    ) {
        let boot = self.boots.last_mut().expect("a boot");
        let first_of_pattern = !boot.timeline.iter().any(|m| m.pattern == pattern);
        if stage > boot.stage {
            boot.stage = stage;
            for f in boot
                .findings
                .iter_mut()
                .filter(|f| f.kind == FindingKind::Suspect && f.stage < stage)
            {
                f.cleared = true;
            }
        } else if !first_of_pattern {
            return;
        }
        boot.timeline.push(Milestone {
            stage,
            pattern: pattern.to_string(),
            line: line_no,
            t_s: t,
            text: clip(line, at()),
        });
    }

    /// The decision for the current boot, or `None` while it is still open (`End::Running` with
    /// neither a fatal finding nor the target reached).
    pub fn decide(&self, target: Option<Stage>, end: &End) -> Option<Decision> {
        decide_boot(self.current(), target, end)
    }
}

/// True when a line in `region` (lines ending in '\n', the last one maybe not) is long enough
/// that the normalizer may have cut it. Every window of `MAX_LINE - 3` bytes from a line start
/// holds a '\n' unless such a line begins there, so this reads each byte about twice.
fn has_long_line(region: &[u8]) -> bool {
    let window = crate::core::console::MAX_LINE - 3;
    let mut start = 0;
    while region.len() - start >= window {
        match memchr::memrchr(b'\n', &region[start..start + window]) {
            Some(i) => start += i + 1,
            None => return true,
        }
    }
    false
}

/// `line` without trailing white space, at most [`MAX_TEXT`] bytes: of a longer line, the part
/// from shortly before `at` (where the match begins), with `…` where it was cut.
fn clip(line: &str, at: usize) -> String {
    let line = line.trim_end();
    if line.len() <= MAX_TEXT {
        return line.to_string();
    }
    let mut start = at.saturating_sub(64).min(line.len() - MAX_TEXT);
    while !line.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = start + MAX_TEXT;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = String::with_capacity(MAX_TEXT + 6);
    if start > 0 {
        s.push('…');
    }
    s.push_str(&line[start..end]);
    if end < line.len() {
        s.push('…');
    }
    s
}

/// The decision rules (documented in the README, "Verdicts").
pub fn decide_boot(boot: &Boot, target: Option<Stage>, end: &End) -> Option<Decision> {
    let finding_decision = |f: &Finding, why: &str| {
        let idx = boot.findings.iter().position(|g| std::ptr::eq(g, f));
        let verdict = f
            .verdict
            .expect("fatal and suspect findings carry a verdict");
        Decision {
            verdict,
            stage: f.stage,
            before_grub: f.stage.is_before_grub(),
            reason: format!("{why}: line {}: {}", f.line, f.text.trim()),
            finding: idx,
            exit_code: exit_code::BAD,
        }
    };
    if let Some(f) = boot.fatal() {
        return Some(finding_decision(f, "fatal"));
    }
    if let Some(target) = target
        && boot.reached(target)
    {
        return Some(Decision {
            verdict: Verdict::Reached,
            stage: boot.stage,
            before_grub: false,
            reason: format!("reached {target}"),
            finding: None,
            exit_code: exit_code::GOOD,
        });
    }
    let plain = |verdict: Verdict, reason: String, exit_code: u8| Decision {
        verdict,
        stage: boot.stage,
        before_grub: boot.stage.is_before_grub(),
        reason,
        finding: None,
        exit_code,
    };
    let suspect = boot.suspect();
    Some(match end {
        End::Running => return None,
        End::EndOfLog => match suspect {
            Some(f) => finding_decision(f, "the log ends after"),
            None => Decision {
                before_grub: false,
                ..plain(
                    Verdict::Reached,
                    format!("no failure seen; last stage {}", boot.stage),
                    exit_code::GOOD,
                )
            },
        },
        End::Silence { seconds } => match suspect {
            Some(f) => finding_decision(f, &format!("silent for {seconds:.0} s after")),
            None => plain(
                Verdict::Hang,
                format!(
                    "no console output for {seconds:.0} s; last stage {}",
                    boot.stage
                ),
                exit_code::BAD,
            ),
        },
        End::Timeout { seconds } => match suspect {
            Some(f) => finding_decision(f, &format!("timed out after {seconds:.0} s after")),
            None => plain(
                Verdict::Timeout,
                format!("timed out after {seconds:.0} s; last stage {}", boot.stage),
                exit_code::UNDETERMINED,
            ),
        },
        End::QemuExited {
            clean_poweroff,
            status,
        } => match suspect {
            Some(f) => finding_decision(f, &format!("QEMU exited ({status}) after")),
            None => {
                let good = *clean_poweroff && target.is_none();
                let reason = if good {
                    format!(
                        "the guest powered off ({status}); last stage {}",
                        boot.stage
                    )
                } else if let Some(t) = target {
                    format!(
                        "QEMU exited ({status}) before {t}; last stage {}",
                        boot.stage
                    )
                } else {
                    format!("QEMU exited ({status}); last stage {}", boot.stage)
                };
                let code = if good {
                    exit_code::GOOD
                } else {
                    exit_code::BAD
                };
                plain(Verdict::QemuExited, reason, code)
            }
        },
    })
}

/// The captures of `p` on `line` (a line it matches), taken once.
fn captures<'c, 'h>(
    p: &Pattern,
    line: &'h str,
    caps: &'c mut Option<Captures<'h>>,
) -> &'c Captures<'h> {
    caps.get_or_insert_with(|| p.regex.captures(line).expect("pattern matched this line"))
}

/// Where `p`'s match on `line` begins.
fn match_start<'h>(p: &Pattern, line: &'h str, caps: &mut Option<Captures<'h>>) -> usize {
    captures(p, line, caps).get(0).map_or(0, |m| m.start())
}

/// The stage a stage-pattern hit means: its `stage`, or, for a pattern with `file_stages` whose
/// `path` took part in the match (BdsDxe starting a boot option), the stage its file name says.
fn stage_of(p: &Pattern, caps: &Captures) -> Stage {
    let default = p
        .stage
        .expect("stage patterns have a stage (checked at load)");
    let Some(path) = caps.name("path").filter(|_| !p.file_stages.is_empty()) else {
        return default;
    };
    let path = path.as_str().to_ascii_lowercase();
    let file = path.rsplit(['\\', '/']).next().unwrap_or("");
    p.file_stages
        .iter()
        .find(|(prefix, _)| file.starts_with(prefix.as_str()))
        .map_or(default, |&(_, stage)| stage)
}

/// The dump a fatal line opens: a banner (of the captured kind) or a recursive exception.
fn exception_banner(p: &Pattern, caps: &Captures, line_no: u64) -> Option<ExceptionDump> {
    let kind = match p.dump? {
        DumpPart::Banner => caps.name("kind")?.as_str().to_string(),
        DumpPart::Recursive => "recursive".to_string(),
        _ => return None,
    };
    Some(ExceptionDump {
        kind,
        address: caps.name("address").map(|m| format!("0x{}", m.as_str())),
        banner_count: 1,
        recursive: p.dump == Some(DumpPart::Recursive),
        last_line: line_no,
        ..Default::default()
    })
}

fn parse_registers(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = line.split_whitespace();
    while let (Some(name), Some(val)) = (words.next(), words.next()) {
        out.push((name.to_string(), val.to_string()));
    }
    out
}

/// Classifies a whole saved console log (raw or normalized).
pub fn classify_log(bytes: &[u8]) -> (Classifier, Decision) {
    classify_log_with(Classifier::new(), bytes)
}

fn classify_log_with(cls: Classifier, bytes: &[u8]) -> (Classifier, Decision) {
    let mut log = LogClassifier::with_classifier(cls);
    for chunk in bytes.chunks(LOG_CHUNK) {
        log.feed(chunk);
    }
    log.finish()
}

/// Bytes of a saved log read at a time by a caller of [`LogClassifier`] (any size gives the
/// same result; this one keeps memory small and per-call costs negligible).
pub const LOG_CHUNK: usize = 1 << 20;

/// Pieces that may wait between the reader and the classifier in
/// [`LogClassifier::classify_pipelined`].
pub const PIPELINE_DEPTH: usize = 2;

/// The part of each piece (numerator, denominator) the reading thread of
/// [`LogClassifier::classify_pipelined`] normalizes; the classifying thread normalizes the rest.
/// Measured on the recorded Debian boot (callgrind, 8 MiB, 2026-12-02): normalizing costs 98 M
/// instructions, classifying 38 M beyond its fixed cost; the reader also reads the file. With
/// seven tenths on the reader, `bootwatch classify` of 256 MiB was no faster than with two
/// thirds (the reader was the bound); three fifths took 0.25-0.29 s against 0.27-0.32 s.
pub const PIPELINE_SHARE: (usize, usize) = (3, 5);

/// Classifies a saved console log handed over in pieces (a file read [`LOG_CHUNK`] bytes at a
/// time): memory stays bounded by the piece size, whatever the size of the log. The result
/// does not depend on where the pieces are cut, and is [`classify_log`]'s on the whole.
pub struct LogClassifier {
    norm: crate::core::console::Normalizer,
    cls: Classifier,
    /// The normalized lines of the last piece (reused).
    text: String,
}

impl Default for LogClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl LogClassifier {
    pub fn new() -> LogClassifier {
        LogClassifier::with_classifier(Classifier::new())
    }

    fn with_classifier(cls: Classifier) -> LogClassifier {
        LogClassifier {
            norm: crate::core::console::Normalizer::new(),
            cls,
            text: String::new(),
        }
    }

    /// The next piece of the log's raw bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.text.clear();
        self.norm.feed(bytes, &mut self.text);
        self.cls.feed_text(&self.text, None);
    }

    /// Classifies a whole log whose raw pieces `read` puts into the buffer it is given (returning
    /// `Ok(false)` at the end), on two threads: one reads and normalizes the first
    /// [`PIPELINE_SHARE`] of each piece, the other normalizes the rest of it (complete lines
    /// need no normalizer state: [`crate::core::console::normalize_lines`]) and classifies. On a
    /// host with two cores the recorded Debian boot went through 1.6 times as fast as on one.
    /// At most [`PIPELINE_DEPTH`] pieces wait between the threads, so memory stays bounded by a
    /// few pieces. The result is [`classify_log`]'s on the same bytes; `read`'s first error ends
    /// the work and is returned.
    pub fn classify_pipelined<E: Send>(
        mut read: impl FnMut(&mut Vec<u8>) -> Result<bool, E> + Send,
    ) -> Result<(Classifier, Decision), E> {
        use crate::core::console::normalize_lines;
        /// A piece on its way: normalized text, the piece as read with the range of its complete
        /// lines still raw (no copy of them), then the text the pending line produced.
        #[derive(Default)]
        struct Piece {
            text: String,
            raw: Vec<u8>,
            rest: std::ops::Range<usize>,
            after: String,
        }
        let mut norm = crate::core::console::Normalizer::new();
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Piece>(PIPELINE_DEPTH);
        // Emptied pieces go back to the reader, so their memory is reused.
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Piece>();
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                loop {
                    let mut piece = empty_rx.try_recv().unwrap_or_default();
                    piece.text.clear();
                    piece.raw.clear();
                    piece.after.clear();
                    piece.rest = 0..0;
                    let more = read(&mut piece.raw)?;
                    if more {
                        let at = piece.raw.len() / PIPELINE_SHARE.1 * PIPELINE_SHARE.0;
                        piece.rest =
                            norm.feed_split(&piece.raw, at, &mut piece.text, &mut piece.after);
                    } else {
                        norm.finish(&mut piece.text);
                    }
                    // The classifier only stops receiving when it panicked (join reports it).
                    if full_tx.send(piece).is_err() || !more {
                        return Ok(());
                    }
                }
            });
            let mut cls = Classifier::new();
            let mut text = String::new();
            for piece in full_rx {
                cls.feed_text(&piece.text, None);
                text.clear();
                normalize_lines(&piece.raw[piece.rest.clone()], &mut text);
                cls.feed_text(&text, None);
                cls.feed_text(&piece.after, None);
                let _ = empty_tx.send(piece);
            }
            reader.join().expect("the log reader does not panic")?;
            // Everything was fed, the normalizer's tail included: decide.
            let decision = cls
                .decide(None, &End::EndOfLog)
                .expect("EndOfLog always decides");
            Ok((cls, decision))
        })
    }

    /// The log ended: its last line (without a line break) is classified, and the boot decided.
    pub fn finish(mut self) -> (Classifier, Decision) {
        self.text.clear();
        self.norm.finish(&mut self.text);
        self.cls.feed_text(&self.text, None);
        let decision = self
            .cls
            .decide(None, &End::EndOfLog)
            .expect("EndOfLog always decides");
        (self.cls, decision)
    }
}

#[cfg(test)]
mod tests;
