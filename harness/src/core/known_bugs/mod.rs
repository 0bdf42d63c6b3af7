//! Known bug families as data (`known-bugs.toml`, embedded at build time) and the matcher that
//! holds measured facts against them. Pure: facts in, explanations out.
//!
//! A family has `require` conditions (every one must hold on a measured fact) and `support`
//! conditions (each that holds adds confidence). A condition on a fact nobody measured is
//! *unknown*: a family with a failed requirement is ruled out; one with every requirement
//! holding is a match; one with no failed requirement but some unknown is *undecided* (named
//! with the facts that would decide it, never reported as the cause). Confidence is the share
//! of all its conditions that hold.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::facts::Facts;

/// The family file, part of the binary.
pub const KNOWN_BUGS_TOML: &str = include_str!("known-bugs.toml");

/// `known-bugs.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownBugs {
    pub family: Vec<Family>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// Short id (`T1`, `replaced-boot-loader`).
    pub id: String,
    pub title: String,
    /// The mechanism, in a sentence or two.
    pub summary: String,
    /// Where it is fixed (versions, commits), or why it is not.
    pub fixed: String,
    #[serde(default)]
    pub references: Vec<String>,
    pub require: Vec<Condition>,
    #[serde(default)]
    pub support: Vec<Condition>,
    /// In the order to try them.
    pub workarounds: Vec<Workaround>,
    #[serde(default, skip_serializing)]
    pub example: Vec<Example>,
}

/// One condition on one fact: exactly one test.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub fact: String,
    /// Why this condition belongs to the family (shown with the result).
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// A list fact holding (or a string fact containing) this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Value>,
    /// A list or string fact that is (true) or is not (false) empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_empty: Option<bool>,
    /// Debian version order: the fact is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_lt: Option<String>,
    /// Debian version order: the fact is this or newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_ge: Option<String>,
}

/// What to do about a family, and whether `explain --try-workarounds` can try it by itself.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Workaround {
    pub how: String,
    /// `restore-bootloader` (put the base image's EFI binaries back, offline),
    /// `fw-cfg:NAME=VALUE` (boot with `-fw_cfg name=NAME,string=VALUE`), `qemu:PROVIDER`
    /// (boot with another QEMU build); absent: a person has to do it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<String>,
}

/// A tested example: facts, and whether the family must match them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub name: String,
    pub facts: serde_json::Map<String, Value>,
    /// `match`, `undecided` or `ruled-out`.
    pub expect: String,
}

/// How one condition fared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConditionResult {
    pub fact: String,
    /// The test, as text (`= true`, `in [shim, firmware]`, `< 15.8`).
    pub test: String,
    /// The measured value (absent: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
    pub why: String,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every requirement holds.
    Match,
    /// No requirement fails, some are not measured.
    Undecided,
    /// A requirement fails.
    RuledOut,
}

/// A family held against the facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyResult {
    pub id: String,
    pub title: String,
    pub summary: String,
    pub status: Status,
    /// The share of the family's conditions that hold (0 to 1).
    pub confidence: f64,
    /// `high` (at least 0.8), `medium` (at least 0.6) or `low`.
    pub level: String,
    pub matched: Vec<ConditionResult>,
    pub unmatched: Vec<ConditionResult>,
    /// Conditions on facts nobody measured.
    pub unknown: Vec<ConditionResult>,
    pub fixed: String,
    pub references: Vec<String>,
    pub workarounds: Vec<Workaround>,
}

impl KnownBugs {
    /// The embedded file, checked (see [`KnownBugs::parse`]).
    pub fn embedded() -> &'static KnownBugs {
        static SET: OnceLock<KnownBugs> = OnceLock::new();
        SET.get_or_init(|| {
            KnownBugs::parse(KNOWN_BUGS_TOML).unwrap_or_else(|e| panic!("known-bugs.toml: {e}"))
        })
    }

    /// Parses and checks a family file: unique ids, one test per condition, fact keys of a
    /// known party, parsable versions, known workaround kinds, examples.
    pub fn parse(text: &str) -> Result<KnownBugs, String> {
        let set: KnownBugs = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut ids = BTreeSet::new();
        for f in &set.family {
            if !ids.insert(f.id.clone()) {
                return Err(format!("family {} is given twice", f.id));
            }
            if f.require.is_empty() {
                return Err(format!("family {}: no require condition", f.id));
            }
            for c in f.require.iter().chain(&f.support) {
                let tests = [
                    c.equals.is_some(),
                    c.one_of.is_some(),
                    c.contains.is_some(),
                    c.not_empty.is_some(),
                    c.version_lt.is_some(),
                    c.version_ge.is_some(),
                ];
                if tests.iter().filter(|t| **t).count() != 1 {
                    return Err(format!(
                        "family {}: condition on {} must have exactly one test",
                        f.id, c.fact
                    ));
                }
                let party = c.fact.split('.').next().unwrap_or("");
                if !["run", "chain", "firmware", "hypervisor"].contains(&party)
                    || !c.fact.contains('.')
                {
                    return Err(format!(
                        "family {}: fact {} is not run.*, chain.*, firmware.* or hypervisor.*",
                        f.id, c.fact
                    ));
                }
                for v in c.version_lt.iter().chain(&c.version_ge) {
                    v.parse::<debversion::Version>()
                        .map_err(|e| format!("family {}: {} is not a version: {e}", f.id, v))?;
                }
            }
            for w in &f.workarounds {
                if let Some(a) = &w.auto
                    && a != "restore-bootloader"
                    && !a.starts_with("fw-cfg:")
                    && !a.starts_with("qemu:")
                {
                    return Err(format!("family {}: unknown workaround kind {a:?}", f.id));
                }
            }
            for e in &f.example {
                if !["match", "undecided", "ruled-out"].contains(&e.expect.as_str()) {
                    return Err(format!(
                        "family {} example {:?}: expect must be match, undecided or ruled-out",
                        f.id, e.name
                    ));
                }
            }
        }
        Ok(set)
    }

    /// Every family held against `facts`, matches first (by confidence), then undecided, then
    /// ruled out.
    pub fn explain(&self, facts: &Facts) -> Vec<FamilyResult> {
        let mut out: Vec<FamilyResult> = self.family.iter().map(|f| f.hold(facts)).collect();
        let rank = |s: Status| match s {
            Status::Match => 0,
            Status::Undecided => 1,
            Status::RuledOut => 2,
        };
        out.sort_by(|a, b| {
            rank(a.status)
                .cmp(&rank(b.status))
                .then(b.confidence.total_cmp(&a.confidence))
        });
        out
    }
}

impl Family {
    /// This family held against `facts`.
    pub fn hold(&self, facts: &Facts) -> FamilyResult {
        let (mut matched, mut unmatched, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        let mut required_failed = false;
        let mut required_unknown = false;
        for (c, required) in self
            .require
            .iter()
            .map(|c| (c, true))
            .chain(self.support.iter().map(|c| (c, false)))
        {
            let actual = facts.get(&c.fact).cloned();
            let r = ConditionResult {
                fact: c.fact.clone(),
                test: c.describe(),
                actual: actual.clone(),
                why: c.why.clone(),
                required,
            };
            match actual.as_ref().and_then(|a| c.test(a)) {
                Some(true) => matched.push(r),
                Some(false) => {
                    required_failed |= required;
                    unmatched.push(r)
                }
                None => {
                    required_unknown |= required;
                    unknown.push(r)
                }
            }
        }
        let total = matched.len() + unmatched.len() + unknown.len();
        let confidence = if total == 0 {
            0.0
        } else {
            ((matched.len() as f64 / total as f64) * 100.0).round() / 100.0
        };
        let status = if required_failed {
            Status::RuledOut
        } else if required_unknown {
            Status::Undecided
        } else {
            Status::Match
        };
        FamilyResult {
            id: self.id.clone(),
            title: self.title.clone(),
            summary: self.summary.clone(),
            status,
            confidence,
            level: if confidence >= 0.8 {
                "high"
            } else if confidence >= 0.6 {
                "medium"
            } else {
                "low"
            }
            .into(),
            matched,
            unmatched,
            unknown,
            fixed: self.fixed.clone(),
            references: self.references.clone(),
            workarounds: self.workarounds.clone(),
        }
    }
}

impl Condition {
    /// `Some(holds)`, or `None` when the value cannot be tested this way (a version test on
    /// something that is not a version: as good as not measured).
    fn test(&self, actual: &Value) -> Option<bool> {
        if let Some(e) = &self.equals {
            return Some(actual == e);
        }
        if let Some(set) = &self.one_of {
            return Some(set.contains(actual));
        }
        if let Some(x) = &self.contains {
            return match (actual, x) {
                (Value::Array(a), _) => Some(a.contains(x)),
                (Value::String(s), Value::String(x)) => Some(s.contains(x.as_str())),
                _ => None,
            };
        }
        if let Some(want) = self.not_empty {
            let empty = match actual {
                Value::Array(a) => a.is_empty(),
                Value::String(s) => s.is_empty(),
                Value::Null => true,
                _ => return None,
            };
            return Some(empty != want);
        }
        let version = |v: &Value| -> Option<debversion::Version> {
            let s = v.as_str()?;
            // Only the version's first token (`7.2.22`, `15.8`, `2.06-13+deb12u2`).
            s.split_whitespace().next()?.parse().ok()
        };
        if let Some(lt) = &self.version_lt {
            return Some(version(actual)? < lt.parse().ok()?);
        }
        if let Some(ge) = &self.version_ge {
            return Some(version(actual)? >= ge.parse().ok()?);
        }
        None
    }

    fn describe(&self) -> String {
        let v = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(e) = &self.equals {
            format!("= {}", v(e))
        } else if let Some(set) = &self.one_of {
            format!("in [{}]", set.iter().map(v).collect::<Vec<_>>().join(", "))
        } else if let Some(x) = &self.contains {
            format!("contains {}", v(x))
        } else if let Some(n) = self.not_empty {
            if n { "not empty" } else { "empty" }.into()
        } else if let Some(lt) = &self.version_lt {
            format!("< {lt}")
        } else if let Some(ge) = &self.version_ge {
            format!(">= {ge}")
        } else {
            "?".into()
        }
    }
}

/// Facts from a JSON object (for examples and tests).
pub fn facts_of(map: &serde_json::Map<String, Value>) -> Facts {
    let mut f = Facts::new();
    for (k, v) in map {
        f.set(k.clone(), v.clone());
    }
    f
}

#[cfg(test)]
mod tests;
