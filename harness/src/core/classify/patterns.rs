//! Loads `patterns.toml` (embedded at build time) into a compiled set: one aho-corasick automaton
//! over every pattern's literals as a prefilter, and one regex per pattern.
//!
//! Code never names a pattern: what the classifier, the serial shell and the reports need is a
//! pattern field (`dump`, `restarts_boot`, `file_stages`, `role`, `until`), and the loader
//! refuses a file in which something the code relies on is missing, doubled or lacks a capture
//! group it reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;
use serde::Deserialize;

use crate::core::verdict::{Stage, Verdict};

/// The pattern file, part of the binary.
pub const PATTERNS_TOML: &str = include_str!("patterns.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    Stage,
    Fatal,
    Suspect,
    Dump,
    Note,
    /// Never used to classify console lines: the pattern exists for its `role` (a prompt the
    /// serial shell waits for, the kernel's printk stamp).
    RoleOnly,
}

/// What a line contributes to a firmware exception dump (the `dump` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpPart {
    /// `… Exception at 0x…`: opens a dump of the captured `kind` at `address`; the same banner
    /// again (same address) while the dump is open is counted in it.
    Banner,
    /// An exception while dumping: opens a dump of kind `recursive`, or marks the open one.
    Recursive,
    /// A DEBUG build's ASSERT: ends the open dump (recorded in it) or is a failure of its own.
    Assert,
    /// One backtrace frame.
    Backtrace,
    /// One line of the module legend (index -> `.dll` path).
    ModuleLegend,
    /// The decoded exception syndrome.
    Syndrome,
    /// The abort's description.
    Abort,
    /// A line of register names and values.
    Registers,
    /// The stack dump's heading: part of the dump, nothing to record.
    Stack,
}

impl DumpPart {
    pub const ALL: [DumpPart; 9] = [
        DumpPart::Banner,
        DumpPart::Recursive,
        DumpPart::Assert,
        DumpPart::Backtrace,
        DumpPart::ModuleLegend,
        DumpPart::Syndrome,
        DumpPart::Abort,
        DumpPart::Registers,
        DumpPart::Stack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DumpPart::Banner => "banner",
            DumpPart::Recursive => "recursive",
            DumpPart::Assert => "assert",
            DumpPart::Backtrace => "backtrace",
            DumpPart::ModuleLegend => "module-legend",
            DumpPart::Syndrome => "syndrome",
            DumpPart::Abort => "abort",
            DumpPart::Registers => "registers",
            DumpPart::Stack => "stack",
        }
    }

    /// The effect a pattern with this part must have: banners, recursive exceptions and asserts
    /// are failures of their own (they can start a dump); the others are lines inside one.
    fn effect(self) -> Effect {
        match self {
            DumpPart::Banner | DumpPart::Recursive | DumpPart::Assert => Effect::Fatal,
            _ => Effect::Dump,
        }
    }

    /// The capture groups the classifier reads from a line of this part.
    fn groups(self) -> &'static [&'static str] {
        match self {
            DumpPart::Banner => &["kind", "address"],
            DumpPart::Backtrace => &["pc", "module", "base", "offset"],
            DumpPart::ModuleLegend => &["index", "path"],
            DumpPart::Abort => &["description"],
            _ => &[],
        }
    }

    /// What goes missing without a pattern for this part (for the loader's error).
    fn needed_for(self) -> &'static str {
        match self {
            DumpPart::Banner => "firmware exceptions open their dump with it",
            DumpPart::Recursive => "a recursive exception while dumping is recorded with it",
            DumpPart::Assert => "a DEBUG build's ASSERT is recorded in its dump with it",
            DumpPart::Backtrace => "exception dumps get their backtrace from it",
            DumpPart::ModuleLegend => "exception dumps get their module paths from it",
            DumpPart::Syndrome => "exception dumps get their syndrome from it",
            DumpPart::Abort => "exception dumps get their abort description from it",
            DumpPart::Registers => "exception dumps get their registers, ESR, ELR and FAR from it",
            DumpPart::Stack => "the stack dump heading keeps the dump together",
        }
    }
}

/// A pattern the code asks for by what it is for (the `role` field); each belongs to exactly one
/// pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `debian login: `: the serial shell waits for it, then types the user name.
    LoginPrompt,
    /// `Password: `: the serial shell types the password after it.
    PasswordPrompt,
    /// A shell prompt (`$ `, `# `): the login worked.
    ShellPrompt,
    /// `Login incorrect`: the login was refused.
    LoginIncorrect,
    /// The kernel's printk stamp (`[   71.943691] `): console noise taken out of command output.
    Printk,
    /// The firmware banner: its `version` is recorded, its `release` regex turns it into an
    /// upstream release.
    FirmwareBanner,
    /// `BOOTWATCH-PROBE key=value`: a measurement the firmware probe application printed.
    ProbeFact,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::LoginPrompt,
        Role::PasswordPrompt,
        Role::ShellPrompt,
        Role::LoginIncorrect,
        Role::Printk,
        Role::FirmwareBanner,
        Role::ProbeFact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::LoginPrompt => "login-prompt",
            Role::PasswordPrompt => "password-prompt",
            Role::ShellPrompt => "shell-prompt",
            Role::LoginIncorrect => "login-incorrect",
            Role::Printk => "printk",
            Role::FirmwareBanner => "firmware-banner",
            Role::ProbeFact => "probe-fact",
        }
    }

    /// The capture groups read from a line with this role.
    fn groups(self) -> &'static [&'static str] {
        match self {
            Role::FirmwareBanner => &["version"],
            Role::ProbeFact => &["key", "value"],
            _ => &[],
        }
    }

    /// Who needs the role (for the loader's error).
    fn needed_by(self) -> &'static str {
        match self {
            Role::LoginPrompt => "the serial shell waits for it before logging in",
            Role::PasswordPrompt => "the serial shell waits for it before typing the password",
            Role::ShellPrompt => "the serial shell takes it as a successful login",
            Role::LoginIncorrect => "the serial shell takes it as a refused login",
            Role::Printk => "command output is cleaned of console messages with it",
            Role::FirmwareBanner => "runs record the firmware version from it",
            Role::ProbeFact => "the firmware probe's measurements are read from it",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    name: String,
    #[serde(default)]
    literals: Vec<String>,
    regex: String,
    effect: Effect,
    stage: Option<String>,
    until: Option<String>,
    verdict: Option<String>,
    #[serde(default)]
    prompt: bool,
    dump: Option<DumpPart>,
    #[serde(default)]
    restarts_boot: bool,
    #[serde(default)]
    file_stages: BTreeMap<String, String>,
    role: Option<Role>,
    release: Option<String>,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    counter_examples: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pattern: Vec<RawPattern>,
}

/// One compiled pattern.
#[derive(Debug)]
pub struct Pattern {
    pub name: String,
    pub regex: LazyRegex,
    pub effect: Effect,
    pub stage: Option<Stage>,
    /// Once the boot has reached this stage, lines are no longer this pattern's: the program
    /// that prints them has handed over (a GRUB `error:` printed by a service is not GRUB's).
    pub until: Option<Stage>,
    pub verdict: Option<Verdict>,
    pub prompt: bool,
    /// What the line contributes to a firmware exception dump.
    pub dump: Option<DumpPart>,
    /// Seeing this stage pattern a second time in one boot starts a new boot
    /// (`firmware-restart`).
    pub restarts_boot: bool,
    /// (lower-case file-name prefix, stage), longest prefix first: when the `path` capture took
    /// part in the match, the stage follows the name of the file it ends in.
    pub file_stages: Vec<(String, Stage)>,
    pub role: Option<Role>,
    /// For the firmware banner: turns its `version` into an upstream release (`year`, `month`).
    pub release: Option<LazyRegex>,
    pub examples: Vec<String>,
    pub counter_examples: Vec<String>,
}

/// Partial scans kept per pattern set (boots go through a few states each, the same in every
/// boot: a handful are ever built).
const PARTIAL_SCANS: usize = 64;

/// A leftmost-first searcher for `literals`. A contiguous NFA, not the DFA the builder picks for
/// a few dozen literals: the search itself runs in the packed (Teddy) searcher either way, and
/// the DFA cost about 4.5 M instructions to build, 10 times in a classification of the recorded
/// boot (the scan made at load and the partial scans of each boot): 40 M of the 228 M of
/// classifying 8 MiB, and most of the fixed cost of every run (callgrind, 2026-12-02).
fn literal_searcher<P: AsRef<[u8]>>(
    kind: MatchKind,
    literals: &[P],
) -> Result<AhoCorasick, aho_corasick::BuildError> {
    AhoCorasick::builder()
        .match_kind(kind)
        .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
        .build(literals)
}

/// All patterns plus the literal prefilter.
#[derive(Debug)]
pub struct PatternSet {
    pub patterns: Vec<Pattern>,
    /// Finds lines that contain any literal (leftmost-first: this is what runs at SIMD speed).
    pub(crate) scan: Arc<AhoCorasick>,
    /// The same literals with standard semantics, for finding every literal within one line.
    pub(crate) prefilter: AhoCorasick,
    /// `literal_owners[i]`: the patterns that list distinct literal `i`.
    pub(crate) literal_owners: Vec<Vec<usize>>,
    /// The distinct literals, in `scan`'s order.
    literals: Vec<String>,
    /// Scans over some of the literals, by the set of literals left out (see [`Self::scan_without`]).
    partial_scans: Mutex<Vec<(u128, Arc<AhoCorasick>)>>,
    /// Indexes of the patterns with `prompt = true`.
    pub(crate) prompts: Vec<usize>,
    /// `roles[r as usize]`: the index of the pattern with role `r`.
    roles: Vec<usize>,
    /// `role_regexes[r as usize]`: that pattern's regex in multi-line mode, for searching a
    /// buffer of many lines (on a single line it matches exactly as the pattern does).
    role_regexes: Vec<LazyRegex>,
}

/// A pattern's regex: checked when the pattern file is loaded (its syntax, with the same parser
/// the regex crate uses, and its capture group names) and compiled the first time a line needs
/// it. A run looks at a handful of patterns (most lines hold none of their literals), and
/// compiling every one of them at start was most of the classifier's start-up; it dereferences
/// to the compiled [`Regex`].
pub struct LazyRegex {
    source: String,
    names: Vec<String>,
    compiled: OnceLock<Regex>,
}

impl LazyRegex {
    /// Parses `source`; an error is the parser's message.
    pub fn new(source: &str) -> Result<LazyRegex, String> {
        let hir = regex_syntax::Parser::new()
            .parse(source)
            .map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        capture_names(&hir, &mut names);
        Ok(LazyRegex {
            source: source.to_string(),
            names,
            compiled: OnceLock::new(),
        })
    }

    /// The regex as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the regex has a capture group of this name (without compiling it).
    pub fn has_group(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

impl std::ops::Deref for LazyRegex {
    type Target = Regex;
    fn deref(&self) -> &Regex {
        self.compiled.get_or_init(|| {
            // Parsed at load; what is left to fail is the compiled size limit, which the
            // embedded patterns are far below (every one is compiled by the tests).
            Regex::new(&self.source).expect("a pattern regex that parsed compiles")
        })
    }
}

impl std::fmt::Debug for LazyRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LazyRegex").field(&self.source).finish()
    }
}

/// The names of the capture groups in `hir`.
fn capture_names(hir: &regex_syntax::hir::Hir, out: &mut Vec<String>) {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Capture(c) => {
            if let Some(n) = &c.name {
                out.push(n.to_string());
            }
            capture_names(&c.sub, out);
        }
        HirKind::Repetition(r) => capture_names(&r.sub, out),
        HirKind::Concat(v) | HirKind::Alternation(v) => {
            for h in v {
                capture_names(h, out);
            }
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => {}
    }
}

/// The capture groups of `groups` that `re` lacks.
fn missing_groups<'a>(re: &LazyRegex, groups: &[&'a str]) -> Vec<&'a str> {
    groups
        .iter()
        .copied()
        .filter(|g| !re.has_group(g))
        .collect()
}

/// `(?P<a>…), (?P<b>…)` for an error message.
fn group_list(groups: &[&str]) -> String {
    let all: Vec<String> = groups.iter().map(|g| format!("(?P<{g}>…)")).collect();
    all.join(", ")
}

impl PatternSet {
    /// Parses and compiles a pattern file; errors name the pattern (and TOML line) at fault, or
    /// the role, dump part or behaviour that no pattern provides.
    pub fn parse(text: &str) -> anyhow::Result<PatternSet> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("patterns.toml: {e}"))?;
        let mut patterns = Vec::new();
        let mut literals: Vec<String> = Vec::new();
        let mut literal_owners: Vec<Vec<usize>> = Vec::new();
        let mut prompts = Vec::new();
        for (i, p) in raw.pattern.into_iter().enumerate() {
            let ctx = |what: &str| format!("patterns.toml: pattern {:?}: {what}", p.name);
            if patterns.iter().any(|q: &Pattern| q.name == p.name) {
                anyhow::bail!(ctx("duplicate name"));
            }
            if p.effect == Effect::RoleOnly {
                // Such a line is never classified: literals would only spend prefilter budget,
                // and classification fields would silently do nothing.
                if !p.literals.is_empty() {
                    anyhow::bail!(ctx(
                        "effect \"role-only\" takes no literals (its lines are never classified)"
                    ));
                }
                if p.stage.is_some()
                    || p.until.is_some()
                    || p.verdict.is_some()
                    || p.prompt
                    || p.dump.is_some()
                    || p.restarts_boot
                    || !p.file_stages.is_empty()
                {
                    anyhow::bail!(ctx(
                        "effect \"role-only\" takes no stage, until, verdict, prompt, dump, restarts_boot or file_stages (its lines are never classified)"
                    ));
                }
            } else if p.literals.is_empty() || p.literals.iter().any(|l| l.is_empty()) {
                anyhow::bail!(ctx("needs at least one non-empty literal"));
            }
            let regex = LazyRegex::new(&p.regex)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ctx("bad regex")))?;
            let parse_stage = |s: &str| {
                Stage::parse(s).ok_or_else(|| anyhow::anyhow!(ctx(&format!("unknown stage {s:?}"))))
            };
            let stage = p.stage.as_deref().map(parse_stage).transpose()?;
            let until = p.until.as_deref().map(parse_stage).transpose()?;
            match (until, stage) {
                (Some(Stage::None), _) => {
                    anyhow::bail!(ctx("until = \"none\" leaves the pattern no line to match"))
                }
                (Some(u), Some(s)) if u <= s => anyhow::bail!(ctx(&format!(
                    "until = {:?} must be a stage after its stage {:?} (the pattern would stop matching once it matched)",
                    u.as_str(),
                    s.as_str()
                ))),
                (None, _) if p.effect == Effect::Suspect => anyhow::bail!(ctx(
                    "effect \"suspect\" needs until (the stage from which its lines are no longer printed by the program it suspects)"
                )),
                _ => {}
            }
            let verdict = match &p.verdict {
                Some(v) => Some(
                    Verdict::parse(v)
                        .ok_or_else(|| anyhow::anyhow!(ctx(&format!("unknown verdict {v:?}"))))?,
                ),
                None => None,
            };
            match p.effect {
                Effect::Fatal | Effect::Suspect if verdict.is_none() => {
                    anyhow::bail!(ctx("fatal/suspect needs a verdict"))
                }
                Effect::Stage if stage.is_none() => {
                    anyhow::bail!(ctx("stage effect needs a stage"))
                }
                _ => {}
            }
            match (p.effect, p.dump) {
                (Effect::Dump, None) => anyhow::bail!(ctx(
                    "effect \"dump\" needs a dump part (dump = \"backtrace\", \"registers\", …)"
                )),
                (effect, Some(d)) if d.effect() != effect => anyhow::bail!(ctx(&format!(
                    "dump = {:?} needs effect = {:?}",
                    d.as_str(),
                    if d.effect() == Effect::Fatal {
                        "fatal"
                    } else {
                        "dump"
                    }
                ))),
                _ => {}
            }
            if let Some(d) = p.dump {
                let missing = missing_groups(&regex, d.groups());
                if !missing.is_empty() {
                    anyhow::bail!(ctx(&format!(
                        "dump = {:?} needs the capture group(s) {} (the classifier reads them)",
                        d.as_str(),
                        group_list(&missing)
                    )));
                }
            }
            if p.restarts_boot && p.effect != Effect::Stage {
                anyhow::bail!(ctx(
                    "restarts_boot needs effect = \"stage\" (a restart is the stage seen again)"
                ));
            }
            let mut file_stages = Vec::new();
            if !p.file_stages.is_empty() {
                if p.effect != Effect::Stage {
                    anyhow::bail!(ctx("file_stages needs effect = \"stage\""));
                }
                if !missing_groups(&regex, &["path"]).is_empty() {
                    anyhow::bail!(ctx(
                        "file_stages needs the capture group (?P<path>…) (the file name is read from it)"
                    ));
                }
                for (prefix, s) in &p.file_stages {
                    if prefix.is_empty() {
                        anyhow::bail!(ctx("file_stages: an empty file-name prefix"));
                    }
                    file_stages.push((prefix.to_ascii_lowercase(), parse_stage(s)?));
                }
                file_stages.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            }
            if let Some(r) = p.role {
                let missing = missing_groups(&regex, r.groups());
                if !missing.is_empty() {
                    anyhow::bail!(ctx(&format!(
                        "role {:?} needs the capture group(s) {} ({})",
                        r.as_str(),
                        group_list(&missing),
                        r.needed_by()
                    )));
                }
            }
            let release = match &p.release {
                None => None,
                Some(src) => {
                    let re = LazyRegex::new(src)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", ctx("bad release regex")))?;
                    let missing = missing_groups(&re, &["year", "month"]);
                    if !missing.is_empty() {
                        anyhow::bail!(ctx(&format!(
                            "release needs the capture group(s) {} (the release is year.month)",
                            group_list(&missing)
                        )));
                    }
                    Some(re)
                }
            };
            for l in &p.literals {
                match literals.iter().position(|x| x == l) {
                    Some(j) => literal_owners[j].push(i),
                    None => {
                        literals.push(l.clone());
                        literal_owners.push(vec![i]);
                    }
                }
            }
            if p.prompt {
                prompts.push(i);
            }
            patterns.push(Pattern {
                name: p.name,
                regex,
                effect: p.effect,
                stage,
                until,
                verdict,
                prompt: p.prompt,
                dump: p.dump,
                restarts_boot: p.restarts_boot,
                file_stages,
                role: p.role,
                release,
                examples: p.examples,
                counter_examples: p.counter_examples,
            });
        }
        Self::check_behaviours(&patterns)?;
        let roles = Self::assign_roles(&patterns)?;
        Self::check_role_fields(&patterns)?;
        let role_regexes = roles
            .iter()
            .map(|&i| {
                let p: &Pattern = &patterns[i];
                LazyRegex::new(&format!("(?m:{})", p.regex.as_str())).map_err(|e| {
                    anyhow::anyhow!("patterns.toml: pattern {:?}: multi-line regex: {e}", p.name)
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let build = |kind| {
            literal_searcher(kind, &literals)
                .map_err(|e| anyhow::anyhow!("patterns.toml: literal prefilter: {e}"))
        };
        let scan = Arc::new(build(MatchKind::LeftmostFirst)?);
        // The overlapping search within a line runs the automaton itself: a DFA, as the builder
        // picks (a contiguous NFA made the crash samples' classification 25 % slower).
        let prefilter = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&literals)
            .map_err(|e| anyhow::anyhow!("patterns.toml: literal prefilter: {e}"))?;
        Ok(PatternSet {
            patterns,
            scan,
            prefilter,
            literal_owners,
            literals,
            partial_scans: Mutex::new(Vec::new()),
            prompts,
            roles,
            role_regexes,
        })
    }

    /// Every behaviour the classifier implements is claimed by some pattern: without one, the
    /// behaviour would silently be off.
    fn check_behaviours(patterns: &[Pattern]) -> anyhow::Result<()> {
        for d in DumpPart::ALL {
            if !patterns.iter().any(|p| p.dump == Some(d)) {
                anyhow::bail!(
                    "patterns.toml: no pattern has dump = {:?} ({})",
                    d.as_str(),
                    d.needed_for()
                );
            }
        }
        if !patterns.iter().any(|p| p.restarts_boot) {
            anyhow::bail!(
                "patterns.toml: no pattern has restarts_boot = true (a firmware restarting by itself would not start a new boot)"
            );
        }
        if !patterns.iter().any(|p| !p.file_stages.is_empty()) {
            anyhow::bail!(
                "patterns.toml: no pattern has file_stages (starting shim or GRUB from the boot manager would not be seen)"
            );
        }
        Ok(())
    }

    /// Each role belongs to exactly one pattern; returns the owners in `Role::ALL` order.
    fn assign_roles(patterns: &[Pattern]) -> anyhow::Result<Vec<usize>> {
        let mut roles = Vec::with_capacity(Role::ALL.len());
        for r in Role::ALL {
            let owners: Vec<usize> = (0..patterns.len())
                .filter(|&i| patterns[i].role == Some(r))
                .collect();
            match owners[..] {
                [i] => roles.push(i),
                [] => anyhow::bail!(
                    "patterns.toml: no pattern has role {:?} ({})",
                    r.as_str(),
                    r.needed_by()
                ),
                [a, b, ..] => anyhow::bail!(
                    "patterns.toml: patterns {:?} and {:?} both have role {:?} (a role belongs to one pattern)",
                    patterns[a].name,
                    patterns[b].name,
                    r.as_str()
                ),
            }
        }
        Ok(roles)
    }

    /// The fields that go with a role. Checked after the roles are assigned, so that a role
    /// removed from its pattern is reported as the missing role it is.
    fn check_role_fields(patterns: &[Pattern]) -> anyhow::Result<()> {
        for p in patterns {
            let ctx = |what: &str| format!("patterns.toml: pattern {:?}: {what}", p.name);
            if p.effect == Effect::RoleOnly && p.role.is_none() {
                anyhow::bail!(ctx("effect \"role-only\" needs a role"));
            }
            match (&p.release, p.role) {
                (None, Some(Role::FirmwareBanner)) => anyhow::bail!(ctx(
                    "role \"firmware-banner\" needs a release regex (the matrix reports upstream releases from it)"
                )),
                (Some(_), r) if r != Some(Role::FirmwareBanner) => {
                    anyhow::bail!(ctx("release is only for role \"firmware-banner\""))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The embedded pattern set (compiled once per process).
    pub fn builtin() -> &'static PatternSet {
        static SET: OnceLock<PatternSet> = OnceLock::new();
        SET.get_or_init(|| {
            PatternSet::parse(PATTERNS_TOML).expect("embedded patterns.toml is valid (tested)")
        })
    }

    /// The first pattern (in file order) that matches `line` printed while the boot is in
    /// `stage`, among those whose literal occurs in it and whose `until` the boot has not reached.
    /// `candidates` is scratch space.
    pub fn first_match(
        &self,
        line: &str,
        stage: Stage,
        candidates: &mut Vec<usize>,
    ) -> Option<usize> {
        self.candidates(line, stage, candidates);
        candidates
            .iter()
            .copied()
            .find(|&i| self.patterns[i].regex.is_match(line))
    }

    /// For a line that follows one the `MAX_LINE` limit may have cut (`tail` is that line's
    /// end): the first pattern that matches `line` alone, or that matches `tail` and `line`
    /// joined but not `tail` alone (what was printed across the cut). Returns the pattern and
    /// the joined text when that is what matched.
    pub fn first_match_across(
        &self,
        tail: &str,
        line: &str,
        stage: Stage,
        candidates: &mut Vec<usize>,
    ) -> Option<(usize, Option<String>)> {
        let joined = format!("{tail}{line}");
        if !self.scan.is_match(&joined) {
            // The common case (a long line of anything): no literal at all, found at SIMD speed.
            return None;
        }
        self.candidates(&joined, stage, candidates);
        for &i in candidates.iter() {
            let re = &self.patterns[i].regex;
            if re.is_match(line) {
                return Some((i, None));
            }
            if re.is_match(&joined) && !re.is_match(tail) {
                return Some((i, Some(joined)));
            }
        }
        None
    }

    /// Like `first_match`, restricted to prompt patterns (for the unterminated console tail).
    pub fn first_prompt_match(&self, tail: &str, stage: Stage) -> Option<usize> {
        self.prompts
            .iter()
            .copied()
            .filter(|&i| self.in_scope(i, stage))
            .find(|&i| self.patterns[i].regex.is_match(tail))
    }

    /// A scan like `scan` over the literals not in `left_out` (bit `i`: distinct literal `i`), or
    /// `None` when there is none to scan for. Built once per set of literals and kept (at most
    /// [`PARTIAL_SCANS`] of them; beyond, and for a set of more than 128 literals, the full scan).
    pub(crate) fn scan_without(&self, left_out: u128) -> Option<Arc<AhoCorasick>> {
        if left_out == 0 || self.literals.len() > 128 {
            return Some(self.scan.clone());
        }
        let mut cache = self.partial_scans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, scan)) = cache.iter().find(|(k, _)| *k == left_out) {
            return Some(scan.clone());
        }
        if cache.len() >= PARTIAL_SCANS {
            return Some(self.scan.clone());
        }
        let kept: Vec<&String> = self
            .literals
            .iter()
            .enumerate()
            .filter(|&(i, _)| left_out & (1 << i) == 0)
            .map(|(_, l)| l)
            .collect();
        if kept.is_empty() {
            return None;
        }
        let scan = literal_searcher(MatchKind::LeftmostFirst, &kept)
            .expect("a subset of literals that built");
        let scan = Arc::new(scan);
        cache.push((left_out, scan.clone()));
        Some(scan)
    }

    /// Whether pattern `i` may match a line printed while the boot is in `stage`.
    pub(crate) fn in_scope(&self, i: usize, stage: Stage) -> bool {
        self.patterns[i].until.is_none_or(|u| stage < u)
    }

    /// The patterns in scope at `stage` one of whose literals occurs in `text`, in file order.
    fn candidates(&self, text: &str, stage: Stage, candidates: &mut Vec<usize>) {
        candidates.clear();
        for m in self.prefilter.find_overlapping_iter(text) {
            candidates.extend_from_slice(&self.literal_owners[m.pattern().as_usize()]);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|&i| self.in_scope(i, stage));
    }

    /// The pattern with role `r` (there is exactly one: checked at load).
    pub fn role_pattern(&self, r: Role) -> &Pattern {
        &self.patterns[self.roles[r as usize]]
    }

    /// The regex of the pattern with role `r`, in multi-line mode: `^` and `$` match at line
    /// boundaries, so it can search a buffer of console lines (as the serial shell does); on a
    /// single line it matches exactly as the pattern does.
    pub fn role(&self, r: Role) -> &Regex {
        &self.role_regexes[r as usize]
    }

    /// The version a firmware banner line prints (trimmed; Debian's builds print an empty one),
    /// or `None` when `line` is not the banner.
    pub fn banner_version(&self, line: &str) -> Option<String> {
        let c = self
            .role_pattern(Role::FirmwareBanner)
            .regex
            .captures(line)?;
        Some(c.name("version")?.as_str().trim().to_string())
    }

    /// The upstream release a banner version names, as `YYYY.MM`
    /// (`edk2-stable202302-for-qemu` -> `2023.02`); `None` for an empty or unknown version.
    pub fn edk2_release(&self, version: &str) -> Option<String> {
        let re = self
            .role_pattern(Role::FirmwareBanner)
            .release
            .as_ref()
            .expect("the firmware banner has a release regex (checked at load)");
        let c = re.captures(version.trim())?;
        Some(format!(
            "{}.{}",
            c.name("year")?.as_str(),
            c.name("month")?.as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regexes compile on first use: every one in the embedded file does, and the capture
    /// groups read at load without compiling are the compiled regex's.
    #[test]
    fn every_embedded_regex_compiles_with_the_groups_read_at_load() {
        let set = PatternSet::builtin();
        let compiled = |r: &LazyRegex| {
            let names: Vec<String> = r.capture_names().flatten().map(String::from).collect();
            assert_eq!(names, r.names, "{}", r.as_str());
        };
        for p in &set.patterns {
            compiled(&p.regex);
            if let Some(r) = &p.release {
                compiled(r);
            }
        }
        for r in &set.role_regexes {
            compiled(r);
        }
        assert!(
            LazyRegex::new("(?P<a>x)(?:y(?P<b>z)*)|(?P<c>w)")
                .unwrap()
                .names
                .eq(&["a", "b", "c"])
        );
        assert!(LazyRegex::new("(unclosed").is_err());
    }

    /// Every pattern's examples are matched by that very pattern (first match wins, so an
    /// example claimed by an earlier pattern is a bug in the file's order) and its counter
    /// examples are not matched by it. Role-only patterns are never classified: their examples
    /// are checked against their own regex. A role's multi-line regex agrees on every example.
    #[test]
    fn every_pattern_matches_its_examples_and_not_its_counter_examples() {
        let set = PatternSet::builtin();
        let mut scratch = Vec::new();
        for (i, p) in set.patterns.iter().enumerate() {
            assert!(!p.examples.is_empty(), "pattern {} has no example", p.name);
            for ex in &p.examples {
                if p.effect == Effect::RoleOnly {
                    assert!(p.regex.is_match(ex), "example {ex:?} of {}", p.name);
                } else {
                    let got = set
                        .first_match(ex, Stage::None, &mut scratch)
                        .map(|j| set.patterns[j].name.as_str());
                    assert_eq!(got, Some(p.name.as_str()), "example {ex:?} of {}", p.name);
                }
                if p.prompt {
                    assert!(
                        set.first_prompt_match(ex, Stage::None).is_some(),
                        "prompt example {ex:?} of {}",
                        p.name
                    );
                }
                if let Some(r) = p.role {
                    assert!(
                        set.role(r).is_match(ex),
                        "role example {ex:?} of {}",
                        p.name
                    );
                }
            }
            for ex in &p.counter_examples {
                if p.effect == Effect::RoleOnly {
                    assert!(
                        !p.regex.is_match(ex),
                        "counter example {ex:?} of {}",
                        p.name
                    );
                }
                assert_ne!(
                    set.first_match(ex, Stage::None, &mut scratch),
                    Some(i),
                    "counter example {ex:?} of {}",
                    p.name
                );
                if let Some(r) = p.role {
                    assert!(!set.role(r).is_match(ex), "role counter example {ex:?}");
                }
            }
        }
    }

    /// A pattern with `until` matches none of its examples once the boot has reached that stage
    /// (nor does it on the console's unterminated tail); the line goes to the next pattern.
    #[test]
    fn a_scoped_pattern_no_longer_matches_from_its_until_stage() {
        let set = PatternSet::builtin();
        let mut scratch = Vec::new();
        let scoped: Vec<(usize, &Pattern)> = set
            .patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| p.until.is_some())
            .collect();
        assert!(
            scoped.iter().any(|(_, p)| p.effect == Effect::Suspect),
            "suspects are scoped"
        );
        for (i, p) in scoped {
            let until = p.until.unwrap();
            for ex in &p.examples {
                for stage in Stage::ALL {
                    let hit = set.first_match(ex, stage, &mut scratch);
                    assert_eq!(
                        hit == Some(i),
                        stage < until,
                        "{} at {stage}: {ex:?}",
                        p.name
                    );
                    if p.prompt {
                        let hit = set.first_prompt_match(ex, stage);
                        assert_eq!(
                            hit == Some(i),
                            stage < until,
                            "{} prompt at {stage}",
                            p.name
                        );
                    }
                }
            }
        }
        // A line in the scope of two patterns goes to the next one once the first is out of it.
        let line = "error: no such device: 1234-ABCD.";
        let name = |stage| {
            set.first_match(line, stage, &mut Vec::new())
                .map(|i| set.patterns[i].name.clone())
        };
        assert_eq!(name(Stage::Grub).as_deref(), Some("grub-error"));
        assert_eq!(name(Stage::Userspace), None);
    }

    #[test]
    fn literals_stay_within_the_fast_prefilter() {
        let n = PatternSet::builtin().literal_owners.len();
        assert!(
            n <= 64,
            "{n} distinct literals: the prefilter leaves its SIMD fast path above 64"
        );
    }

    #[test]
    fn bad_pattern_files_are_rejected_with_the_pattern_name() {
        let bad_regex = "[[pattern]]\nname='x'\nliterals=['a']\nregex='('\neffect='note'\n";
        let e = PatternSet::parse(bad_regex).unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("bad regex"), "{e}");
        let no_verdict = "[[pattern]]\nname='y'\nliterals=['a']\nregex='a'\neffect='fatal'\n";
        let e = PatternSet::parse(no_verdict).unwrap_err().to_string();
        assert!(e.contains("needs a verdict"), "{e}");
        let unknown_field =
            "[[pattern]]\nname='z'\nliterals=['a']\nregex='a'\neffect='note'\ncolour='red'\n";
        let e = PatternSet::parse(unknown_field).unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("line"), "{e}");
    }

    /// The embedded file with every occurrence of `from` replaced by `to`; `from` must occur
    /// (so that an edit of the file cannot quietly turn a test into one that checks nothing).
    fn edited(from: &str, to: &str) -> String {
        assert!(
            PATTERNS_TOML.contains(from),
            "{from:?} is not in patterns.toml"
        );
        PATTERNS_TOML.replace(from, to)
    }

    fn parse_error(text: &str) -> String {
        match PatternSet::parse(text) {
            Ok(_) => panic!("the edited patterns.toml was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_missing_role_is_refused_naming_the_role() {
        for r in Role::ALL {
            let e = parse_error(&edited(&format!("role = \"{}\"\n", r.as_str()), ""));
            assert!(
                e.contains(&format!("no pattern has role \"{}\"", r.as_str()))
                    && e.contains(r.needed_by()),
                "{e}"
            );
        }
        let e = parse_error(&edited("role = \"login-prompt\"\n", ""));
        assert_eq!(
            e,
            "patterns.toml: no pattern has role \"login-prompt\" (the serial shell waits for it before logging in)"
        );
    }

    #[test]
    fn a_doubled_role_is_refused_naming_both_patterns() {
        let e = parse_error(&edited(
            "role = \"password-prompt\"",
            "role = \"login-prompt\"",
        ));
        assert_eq!(
            e,
            "patterns.toml: patterns \"login-prompt\" and \"password-prompt\" both have role \"login-prompt\" (a role belongs to one pattern)"
        );
    }

    #[test]
    fn a_missing_dump_part_or_behaviour_is_refused() {
        for d in DumpPart::ALL {
            let from = format!("dump = \"{}\"\n", d.as_str());
            // A dump line must say what it fills: point the removed part at another one.
            let to = match d {
                _ if d.effect() == Effect::Fatal => String::new(),
                DumpPart::Stack => "dump = \"syndrome\"\n".to_string(),
                _ => "dump = \"stack\"\n".to_string(),
            };
            let e = parse_error(&edited(&from, &to));
            assert!(
                e.contains(&format!("no pattern has dump = \"{}\"", d.as_str())),
                "{e}"
            );
        }
        let e = parse_error(&edited("restarts_boot = true\n", ""));
        assert!(e.contains("no pattern has restarts_boot = true"), "{e}");
        let e = parse_error(&edited("file_stages = ", "# file_stages = "));
        assert!(e.contains("no pattern has file_stages"), "{e}");
    }

    #[test]
    fn a_role_or_dump_pattern_without_the_group_the_code_reads_is_refused() {
        let e = parse_error(&edited("(?P<version>.*?)", "(.*?)"));
        assert!(
            e.contains("pattern \"edk2-banner\"")
                && e.contains("role \"firmware-banner\"")
                && e.contains("(?P<version>…)"),
            "{e}"
        );
        let e = parse_error(&edited("(?P<kind>Synchronous)", "Synchronous"));
        assert!(
            e.contains("pattern \"edk2-sync-exception\"")
                && e.contains("dump = \"banner\"")
                && e.contains("(?P<kind>…)"),
            "{e}"
        );
        let e = parse_error(&edited("(?P<pc>", "("));
        assert!(
            e.contains("dump = \"backtrace\"") && e.contains("(?P<pc>…)"),
            "{e}"
        );
        let e = parse_error(&edited("(?P<path>\\S+\\.dll)", "(\\S+\\.dll)"));
        assert!(
            e.contains("dump = \"module-legend\"") && e.contains("(?P<path>…)"),
            "{e}"
        );
        let e = parse_error(&edited("(?P<month>", "("));
        assert!(
            e.contains("edk2-banner") && e.contains("(?P<month>…)"),
            "{e}"
        );
    }

    #[test]
    fn inconsistent_fields_are_refused() {
        let base = "[[pattern]]\nname='p'\nregex='a'\nexamples=['a']\n";
        let cases = [
            (
                "literals=['a']\neffect='role-only'\nrole='printk'\n",
                "takes no literals",
            ),
            (
                "effect='role-only'\nrole='printk'\nstage='login'\n",
                "takes no stage",
            ),
            ("literals=['a']\neffect='dump'\n", "needs a dump part"),
            (
                "literals=['a']\neffect='note'\ndump='stack'\n",
                "needs effect = \"dump\"",
            ),
            (
                "literals=['a']\neffect='dump'\ndump='banner'\n",
                "needs effect = \"fatal\"",
            ),
            (
                "literals=['a']\neffect='note'\nrestarts_boot=true\n",
                "restarts_boot needs",
            ),
            (
                "literals=['a']\neffect='stage'\nstage='firmware'\nfile_stages={shim='shim'}\n",
                "(?P<path>…)",
            ),
            (
                "effect='role-only'\nrole='printk'\nuntil='kernel'\n",
                "takes no stage, until",
            ),
            (
                "literals=['a']\neffect='suspect'\nverdict='grub-error'\nstage='grub'\n",
                "needs until",
            ),
            (
                "literals=['a']\neffect='note'\nstage='grub'\nuntil='grub'\n",
                "until = \"grub\" must be a stage after its stage \"grub\"",
            ),
            (
                "literals=['a']\neffect='note'\nuntil='none'\n",
                "until = \"none\"",
            ),
            (
                "literals=['a']\neffect='note'\nuntil='later'\n",
                "unknown stage \"later\"",
            ),
        ];
        for (fields, want) in cases {
            let e = parse_error(&format!("{base}{fields}"));
            assert!(
                e.contains("pattern \"p\"") && e.contains(want),
                "{fields}: {e}"
            );
        }
        // These need the rest of a valid file: they are checked once the roles are known.
        let e = parse_error(&format!("{PATTERNS_TOML}\n{base}effect='role-only'\n"));
        assert!(
            e.contains("pattern \"p\"") && e.contains("needs a role"),
            "{e}"
        );
        let e = parse_error(&format!(
            "{PATTERNS_TOML}\n{base}literals=['a']\neffect='note'\nrelease='(?P<year>)(?P<month>)'\n"
        ));
        assert!(
            e.contains("pattern \"p\"") && e.contains("only for role"),
            "{e}"
        );
        let e = parse_error(&edited("release = '", "# release = '"));
        assert!(
            e.contains("pattern \"edk2-banner\"") && e.contains("needs a release regex"),
            "{e}"
        );
    }

    #[test]
    fn the_shell_and_the_reports_get_their_regexes_from_the_set() {
        let set = PatternSet::builtin();
        let login = set.role(Role::LoginPrompt);
        assert!(login.is_match("debian login: "));
        // Searched in a buffer of console lines, as the shell does.
        assert!(login.is_match("Debian GNU/Linux 12 debian ttyAMA0\n\ndebian login: "));
        assert!(!login.is_match("Last login: Tue Nov 24 10:00:00 on ttyAMA0\n"));
        assert!(
            set.role(Role::PasswordPrompt)
                .is_match("debian\nPassword: ")
        );
        assert!(
            set.role(Role::ShellPrompt)
                .is_match("Linux debian 6.1.0\n$ ")
        );
        assert!(set.role(Role::ShellPrompt).is_match("root@debian:~# "));
        assert!(
            set.role(Role::LoginIncorrect)
                .is_match("\nLogin incorrect\n")
        );
        let printk = set.role(Role::Printk);
        assert!(printk.is_match("[   71.943691] cloud-init[372]: WARNING\n"));
        assert!(!printk.is_match("[1.2] is not printk\n"));
        assert_eq!(
            set.banner_version(
                "UEFI firmware (version edk2-stable202302-for-qemu built at 17:14:55 on Mar 15 2023)"
            )
            .as_deref(),
            Some("edk2-stable202302-for-qemu")
        );
        assert_eq!(
            set.banner_version("UEFI firmware (version  built at 12:00:00 on Jan  1 2023)")
                .as_deref(),
            Some("")
        );
        assert_eq!(set.banner_version("Welcome to GRUB!"), None);
        let release = |v| set.edk2_release(v);
        assert_eq!(
            release("edk2-stable202302-for-qemu").as_deref(),
            Some("2023.02")
        );
        assert_eq!(release("2022.11-6+deb12u2").as_deref(), Some("2022.11"));
        assert_eq!(release("").as_deref(), None);
        assert_eq!(release("  ").as_deref(), None);
    }
}
