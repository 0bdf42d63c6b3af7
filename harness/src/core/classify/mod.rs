//! The streaming classifier: normalized console lines in, stage timeline and findings out, and the
//! verdict decision. Pure: no IO, no clocks (times are passed in), no printing.

pub mod patterns;

use std::collections::BTreeMap;

use regex::Captures;
use serde::{Deserialize, Serialize};

pub use patterns::{DumpPart, Effect, Pattern, PatternSet, Role};

use crate::core::verdict::{Stage, Verdict, exit_code};

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
        }
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
    boots: Vec<Boot>,
    line_no: u64,
    /// Finding index (in the current boot) of the exception dump still being read.
    open_dump: Option<usize>,
    /// A prompt already matched on the unterminated tail: (line number, pattern index).
    prompt_seen: Option<(u64, usize)>,
    scratch: Vec<usize>,
    last_line: String,
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
            line_no: 0,
            open_dump: None,
            prompt_seen: None,
            scratch: Vec::new(),
            last_line: String::new(),
        }
    }

    pub fn boots(&self) -> &[Boot] {
        &self.boots
    }

    pub fn current(&self) -> &Boot {
        self.boots.last().expect("there is always a boot")
    }

    /// Number of complete lines seen.
    pub fn lines(&self) -> u64 {
        self.line_no
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
        if cur.stage == Stage::None && cur.findings.is_empty() {
            return;
        }
        let idx = self.boots.len();
        self.boots.push(Boot::new(idx, reason, self.line_no + 1, t));
        self.open_dump = None;
    }

    /// Feeds complete lines: `text` is zero or more lines, each ending in '\n' (as produced by
    /// `console::Normalizer`). All lines get the time `t`.
    pub fn feed_text(&mut self, text: &str, t: Option<f64>) {
        let bytes = text.as_bytes();
        let mut counted_to = 0; // byte offset up to which newlines are counted into line_no
        let mut pos = 0;
        while pos < bytes.len() {
            let input = aho_corasick::Input::new(bytes).range(pos..);
            let Some(m) = self.set.scan.find(input) else {
                break;
            };
            let start = memchr::memrchr(b'\n', &bytes[..m.start()]).map_or(0, |i| i + 1);
            let end =
                memchr::memchr(b'\n', &bytes[m.start()..]).map_or(bytes.len(), |i| m.start() + i);
            self.line_no += memchr::memchr_iter(b'\n', &bytes[counted_to..start]).count() as u64;
            counted_to = start;
            let line = &text[start..end];
            self.classify_line(self.line_no + 1, line, t);
            pos = end + 1;
        }
        self.line_no += memchr::memchr_iter(b'\n', &bytes[counted_to..]).count() as u64;
        if let Some(last) = text.trim_end_matches('\n').rsplit('\n').next()
            && !last.trim().is_empty()
        {
            self.last_line.clear();
            self.last_line.push_str(last);
        }
    }

    /// Checks the unterminated tail of the console (a prompt such as `login: ` is printed
    /// without a newline). The line is classified now, and not again when it completes.
    pub fn feed_partial(&mut self, tail: &str, t: Option<f64>) {
        let Some(i) = self.set.first_prompt_match(tail) else {
            return;
        };
        let line = self.line_no + 1;
        if self.prompt_seen == Some((line, i)) {
            return;
        }
        self.prompt_seen = Some((line, i));
        self.apply(i, line, tail, t);
        if !tail.trim().is_empty() {
            self.last_line.clear();
            self.last_line.push_str(tail);
        }
    }

    fn classify_line(&mut self, line_no: u64, line: &str, t: Option<f64>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let hit = self.set.first_match(line, &mut scratch);
        self.scratch = scratch;
        if let Some(i) = hit {
            if self.prompt_seen == Some((line_no, i)) {
                return;
            }
            self.apply(i, line_no, line, t);
        }
    }

    fn apply(&mut self, i: usize, line_no: u64, line: &str, t: Option<f64>) {
        let set = self.set;
        let p = &set.patterns[i];
        let caps = p.regex.captures(line).expect("pattern matched this line");
        match p.effect {
            // Role-only patterns have no literals and are no prompts: never matched here.
            Effect::RoleOnly => {}
            Effect::Dump => self.apply_dump(p, &caps, line_no, line, t),
            Effect::Stage => {
                self.open_dump = None;
                let stage = stage_of(p, &caps);
                if p.restarts_boot && self.current().timeline.iter().any(|m| m.pattern == p.name) {
                    let idx = self.boots.len();
                    self.boots
                        .push(Boot::new(idx, "firmware-restart", line_no, t));
                }
                self.advance(stage, &p.name, line_no, line, t);
            }
            Effect::Fatal | Effect::Suspect | Effect::Note => {
                if let Some(st) = p.stage {
                    self.advance(st, &p.name, line_no, line, t);
                }
                if p.effect == Effect::Fatal && self.absorb_into_dump(p, &caps, line_no, line) {
                    return;
                }
                self.open_dump = None;
                let kind = match p.effect {
                    Effect::Fatal => FindingKind::Fatal,
                    Effect::Suspect => FindingKind::Suspect,
                    _ => FindingKind::Note,
                };
                let exception = exception_banner(p, &caps, line_no);
                let opens_dump = exception.is_some();
                let boot = self.boots.last_mut().expect("a boot");
                boot.findings.push(Finding {
                    pattern: p.name.clone(),
                    kind,
                    verdict: p.verdict,
                    stage: boot.stage,
                    line: line_no,
                    t_s: t,
                    text: line.trim_end().to_string(),
                    cleared: false,
                    exception,
                });
                if opens_dump {
                    self.open_dump = Some(boot.findings.len() - 1);
                }
            }
        }
    }

    /// A fatal line that continues an open dump (the banner printed again, the ASSERT that ends
    /// a DEBUG build's dump, a recursive exception while dumping) is added to it, not counted as
    /// a new failure.
    fn absorb_into_dump(&mut self, p: &Pattern, caps: &Captures, line_no: u64, line: &str) -> bool {
        let Some(idx) = self.open_dump else {
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
                dump.banner_count += 1;
            }
            Some(DumpPart::Assert) => dump.assert = Some(line.trim().to_string()),
            Some(DumpPart::Recursive) => dump.recursive = true,
            _ => return false,
        }
        dump.last_line = line_no;
        true
    }

    fn apply_dump(
        &mut self,
        p: &Pattern,
        caps: &Captures,
        line_no: u64,
        line: &str,
        t: Option<f64>,
    ) {
        if self.open_dump.is_none() {
            // A register dump or backtrace without its banner: the banner was lost (or the
            // firmware prints none), but the firmware took an exception all the same.
            let boot = self.boots.last_mut().expect("a boot");
            boot.findings.push(Finding {
                pattern: format!("{}-without-banner", p.name),
                kind: FindingKind::Fatal,
                verdict: Some(Verdict::FirmwareException),
                stage: boot.stage,
                line: line_no,
                t_s: t,
                text: line.trim_end().to_string(),
                cleared: false,
                exception: Some(ExceptionDump {
                    kind: "none".into(),
                    last_line: line_no,
                    ..Default::default()
                }),
            });
            self.open_dump = Some(boot.findings.len() - 1);
        }
        let idx = self.open_dump.expect("set above");
        let boot = self.boots.last_mut().expect("a boot");
        let dump = boot.findings[idx]
            .exception
            .as_mut()
            .expect("dump findings carry an exception");
        dump.last_line = line_no;
        let hex = |n: &str| caps.name(n).map(|m| format!("0x{}", m.as_str()));
        match p.dump {
            Some(DumpPart::Backtrace) => dump.backtrace.push(Frame {
                pc: hex("pc").unwrap_or_default(),
                module: caps.name("module").map(|m| m.as_str().to_string()),
                base: hex("base"),
                offset: hex("offset"),
            }),
            Some(DumpPart::ModuleLegend) => {
                if let (Some(i), Some(path)) = (caps.name("index"), caps.name("path"))
                    && let Ok(i) = i.as_str().parse()
                {
                    dump.modules.insert(i, path.as_str().to_string());
                }
            }
            Some(DumpPart::Syndrome) => dump.syndrome = Some(line.trim().to_string()),
            Some(DumpPart::Abort) => {
                dump.abort = caps.name("description").map(|m| m.as_str().to_string())
            }
            Some(DumpPart::Registers) => {
                for (reg, val) in parse_registers(line) {
                    match reg.as_str() {
                        "ESR" => dump.esr = Some(val.clone()),
                        "ELR" => dump.elr = Some(val.clone()),
                        "FAR" => dump.far = Some(val.clone()),
                        _ => {}
                    }
                    dump.registers.insert(reg, val);
                }
            }
            _ => {}
        }
    }

    fn advance(&mut self, stage: Stage, pattern: &str, line_no: u64, line: &str, t: Option<f64>) {
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
            text: line.trim_end().to_string(),
        });
    }

    /// The decision for the current boot, or `None` while it is still open (`End::Running` with
    /// neither a fatal finding nor the target reached).
    pub fn decide(&self, target: Option<Stage>, end: &End) -> Option<Decision> {
        decide_boot(self.current(), target, end)
    }
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

fn classify_log_with(mut cls: Classifier, bytes: &[u8]) -> (Classifier, Decision) {
    let mut norm = crate::core::console::Normalizer::new();
    let mut text = String::new();
    for chunk in bytes.chunks(1 << 20) {
        text.clear();
        norm.feed(chunk, &mut text);
        cls.feed_text(&text, None);
    }
    text.clear();
    norm.finish(&mut text);
    cls.feed_text(&text, None);
    let decision = cls
        .decide(None, &End::EndOfLog)
        .expect("EndOfLog always decides");
    (cls, decision)
}

#[cfg(test)]
mod tests;
