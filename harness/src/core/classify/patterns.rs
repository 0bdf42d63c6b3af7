//! Loads `patterns.toml` (embedded at build time) into a compiled set: one aho-corasick automaton
//! over every pattern's literals as a prefilter, and one regex per pattern.

use std::sync::OnceLock;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    name: String,
    literals: Vec<String>,
    regex: String,
    effect: Effect,
    stage: Option<String>,
    verdict: Option<String>,
    #[serde(default)]
    prompt: bool,
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
    pub regex: Regex,
    pub effect: Effect,
    pub stage: Option<Stage>,
    pub verdict: Option<Verdict>,
    pub prompt: bool,
    pub examples: Vec<String>,
    pub counter_examples: Vec<String>,
}

/// All patterns plus the literal prefilter.
#[derive(Debug)]
pub struct PatternSet {
    pub patterns: Vec<Pattern>,
    /// Finds lines that contain any literal (leftmost-first: this is what runs at SIMD speed).
    pub(crate) scan: AhoCorasick,
    /// The same literals with standard semantics, for finding every literal within one line.
    pub(crate) prefilter: AhoCorasick,
    /// `literal_owners[i]`: the patterns that list distinct literal `i`.
    pub(crate) literal_owners: Vec<Vec<usize>>,
    /// Indexes of the patterns with `prompt = true`.
    pub(crate) prompts: Vec<usize>,
}

impl PatternSet {
    /// Parses and compiles a pattern file; errors name the pattern (and TOML line) at fault.
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
            if p.literals.is_empty() || p.literals.iter().any(|l| l.is_empty()) {
                anyhow::bail!(ctx("needs at least one non-empty literal"));
            }
            let regex =
                Regex::new(&p.regex).map_err(|e| anyhow::anyhow!("{}: {e}", ctx("bad regex")))?;
            let stage = match &p.stage {
                Some(s) => Some(
                    Stage::parse(s)
                        .ok_or_else(|| anyhow::anyhow!(ctx(&format!("unknown stage {s:?}"))))?,
                ),
                None => None,
            };
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
                verdict,
                prompt: p.prompt,
                examples: p.examples,
                counter_examples: p.counter_examples,
            });
        }
        let build = |kind| {
            AhoCorasick::builder()
                .match_kind(kind)
                .build(&literals)
                .map_err(|e| anyhow::anyhow!("patterns.toml: literal prefilter: {e}"))
        };
        let scan = build(MatchKind::LeftmostFirst)?;
        let prefilter = build(MatchKind::Standard)?;
        Ok(PatternSet {
            patterns,
            scan,
            prefilter,
            literal_owners,
            prompts,
        })
    }

    /// The embedded pattern set (compiled once per process).
    pub fn builtin() -> &'static PatternSet {
        static SET: OnceLock<PatternSet> = OnceLock::new();
        SET.get_or_init(|| {
            PatternSet::parse(PATTERNS_TOML).expect("embedded patterns.toml is valid (tested)")
        })
    }

    /// The first pattern (in file order) that matches `line`, among those whose literal occurs in
    /// it. `candidates` is scratch space.
    pub fn first_match(&self, line: &str, candidates: &mut Vec<usize>) -> Option<usize> {
        candidates.clear();
        for m in self.prefilter.find_overlapping_iter(line) {
            candidates.extend_from_slice(&self.literal_owners[m.pattern().as_usize()]);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .iter()
            .copied()
            .find(|&i| self.patterns[i].regex.is_match(line))
    }

    /// Like `first_match`, restricted to prompt patterns (for the unterminated console tail).
    pub fn first_prompt_match(&self, tail: &str) -> Option<usize> {
        self.prompts
            .iter()
            .copied()
            .find(|&i| self.patterns[i].regex.is_match(tail))
    }

    pub fn by_name(&self, name: &str) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pattern's examples are matched by that very pattern (first match wins, so an
    /// example claimed by an earlier pattern is a bug in the file's order) and its counter
    /// examples are not matched by it.
    #[test]
    fn every_pattern_matches_its_examples_and_not_its_counter_examples() {
        let set = PatternSet::builtin();
        let mut scratch = Vec::new();
        for (i, p) in set.patterns.iter().enumerate() {
            assert!(!p.examples.is_empty(), "pattern {} has no example", p.name);
            for ex in &p.examples {
                let got = set
                    .first_match(ex, &mut scratch)
                    .map(|j| set.patterns[j].name.as_str());
                assert_eq!(got, Some(p.name.as_str()), "example {ex:?} of {}", p.name);
                if p.prompt {
                    assert!(
                        set.first_prompt_match(ex).is_some(),
                        "prompt example {ex:?} of {}",
                        p.name
                    );
                }
            }
            for ex in &p.counter_examples {
                assert_ne!(
                    set.first_match(ex, &mut scratch),
                    Some(i),
                    "counter example {ex:?} of {}",
                    p.name
                );
            }
        }
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
}
