//! Scenario files (`scenarios/*.toml`): a scenario is data, a sequence of steps. They are parsed
//! and checked completely before any VM starts; every error names the file and the line.

use std::path::Path;

use serde::Serialize;

use crate::core::verdict::Target;
use crate::engine::step::seconds;
pub use crate::engine::step::{RebootMethod, Step};
use crate::inputs::images::catalog::{Doc, key_offset, line_of, located, parse_doc, toml_error};

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
    /// Where it was read from.
    pub source: String,
}

/// A problem with a scenario or matrix file: the file, the 1-based line (0 when the problem is
/// the file as a whole, e.g. it cannot be read) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}", located(file, *line, message))]
pub struct SpecError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub message: String,
}

pub use crate::engine::limits;

const STEP_NAMES: &[&str] = &[
    "boot",
    "login",
    "run",
    "snapshot-packages",
    "upgrade",
    "reboot",
    "watch",
];

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, SpecError> {
        let text = read_spec(path)?;
        Scenario::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Scenario, SpecError> {
        let err = |offset: usize, message: String| SpecError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Top {
            name: String,
            #[serde(default)]
            description: String,
            step: Vec<toml::Spanned<toml::Table>>,
        }
        let top: Top = toml::from_str(text).map_err(|e| {
            let (at, m) = toml_error(text, &e);
            err(at, m)
        })?;
        if top.step.is_empty() {
            return Err(err(0, "a scenario needs at least one [[step]]".into()));
        }
        // The same document with the span of every key, so a step's error points at its key.
        let doc = parse_doc(text).map_err(|(at, m)| err(at, m))?;
        let step_docs: Vec<&Doc> = doc
            .get("step")
            .and_then(|v| v.get_ref().as_array())
            .map(|a| a.iter().filter_map(|t| t.get_ref().as_table()).collect())
            .unwrap_or_default();
        let mut steps = Vec::new();
        let mut starts = Vec::new();
        for (i, s) in top.step.into_iter().enumerate() {
            let start = s.span().start;
            let t = s.into_inner();
            let step = parse_step(&t).map_err(|(key, m)| {
                let at = step_docs
                    .get(i)
                    .and_then(|d| key_offset(d, &key))
                    .unwrap_or(start);
                err(at, format!("step {}: {m}", i + 1))
            })?;
            steps.push(step);
            starts.push(start);
        }
        // Scenarios run on images, whose user bootwatch provisions.
        crate::engine::step::check_steps(&steps, true)
            .map_err(|(i, m)| err(if i == 0 { 0 } else { starts[i] }, m))?;
        Ok(Scenario {
            name: top.name,
            description: top.description,
            steps,
            source: file.into(),
        })
    }
}

/// Reads a scenario or matrix file through the size-limited input reader.
pub(crate) fn read_spec(path: &Path) -> Result<String, SpecError> {
    crate::sys::fsx::read_input(path, crate::sys::fsx::INPUT_LIMIT).map_err(|e| SpecError {
        file: path.display().to_string(),
        line: 0,
        message: e.to_string(),
    })
}

/// A step problem: the key it is about (`""` for the step as a whole, e.g. a missing key) and
/// what is wrong.
type StepError = (String, String);

fn parse_step(t: &toml::Table) -> Result<Step, StepError> {
    let at = |key: &str, m: String| (key.to_string(), m);
    let whole = |m: String| (String::new(), m);
    let action = match t.get("do") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(v) => {
            return Err(at(
                "do",
                format!("`do` must be a string, not {}", v.type_str()),
            ));
        }
        None => {
            return Err(whole(format!(
                "missing `do` (one of {})",
                STEP_NAMES.join(", ")
            )));
        }
    };
    let allowed: &[&str] = match action {
        "boot" | "watch" => &["do", "until", "timeout", "silence"],
        "login" | "upgrade" => &["do", "timeout"],
        "run" => &["do", "command", "root", "timeout", "expect_exit"],
        "snapshot-packages" => &["do", "label"],
        "reboot" => &["do", "method"],
        other => {
            return Err(at(
                "do",
                format!("unknown step {other:?} (one of {})", STEP_NAMES.join(", ")),
            ));
        }
    };
    if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(at(
            k,
            format!(
                "`{action}` has no field `{k}` (fields: {})",
                allowed[1..].join(", ")
            ),
        ));
    }
    let secs = |key: &str, default: f64| -> Result<std::time::Duration, StepError> {
        match t.get(key) {
            None => seconds(default).map_err(whole),
            Some(v) => limits::seconds(&format!("`{key}`"), v).map_err(|m| at(key, m)),
        }
    };
    let string = |key: &str| -> Result<Option<String>, StepError> {
        match t.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(at(
                key,
                format!("`{key}` must be a string, not {}", v.type_str()),
            )),
        }
    };
    let required = |key: &str| -> Result<String, StepError> {
        string(key)?.ok_or_else(|| whole(format!("missing `{key}`")))
    };
    let until = || -> Result<Target, StepError> {
        match string("until")?.as_deref() {
            Some("grub") => Ok(Target::Grub),
            Some("kernel") => Ok(Target::Kernel),
            Some("login") => Ok(Target::Login),
            Some(o) => Err(at(
                "until",
                format!("`until` must be grub, kernel or login, not {o:?}"),
            )),
            None => Err(whole("missing `until` (grub, kernel or login)".into())),
        }
    };
    Ok(match action {
        "boot" => Step::Boot {
            until: Some(until()?),
            timeout: secs("timeout", 900.0)?,
            silence: secs("silence", 240.0)?,
        },
        "watch" => Step::Watch {
            until: until()?,
            timeout: secs("timeout", 900.0)?,
            silence: secs("silence", 240.0)?,
        },
        "login" => Step::Login {
            timeout: secs("timeout", 300.0)?,
        },
        "upgrade" => Step::Upgrade {
            timeout: secs("timeout", 3600.0)?,
        },
        "run" => Step::Run {
            command: required("command")?,
            root: match t.get("root") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(v) => {
                    return Err(at("root", format!("`root` must be true or false, not {v}")));
                }
            },
            timeout: secs("timeout", 600.0)?,
            expect_exit: match t.get("expect_exit") {
                None => 0,
                Some(v) => limits::integer("`expect_exit`", v, &limits::EXIT_STATUS)
                    .map_err(|m| at("expect_exit", m))?,
            },
        },
        "snapshot-packages" => Step::SnapshotPackages {
            label: required("label")?,
        },
        "reboot" => Step::Reboot {
            method: match string("method")?.as_deref() {
                None | Some("guest") => RebootMethod::Guest,
                Some("qmp") => RebootMethod::Qmp,
                Some(o) => {
                    return Err(at(
                        "method",
                        format!("`method` must be guest or qmp, not {o:?}"),
                    ));
                }
            },
        },
        _ => unreachable!("checked above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name = \"t\"\n\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n\n[[step]]\ndo = \"login\"\n\n\
                        [[step]]\ndo = \"run\"\ncommand = \"true\"\nroot = true\n\n[[step]]\ndo = \"reboot\"\nmethod = \"qmp\"\n";

    #[test]
    fn parses_steps_with_defaults() {
        let s = Scenario::parse(GOOD, "t.toml").unwrap();
        assert_eq!(s.steps.len(), 4);
        assert_eq!(
            s.steps[0],
            Step::Boot {
                until: Some(Target::Login),
                timeout: std::time::Duration::from_secs(900),
                silence: std::time::Duration::from_secs(240)
            }
        );
        assert_eq!(
            s.steps[2],
            Step::Run {
                command: "true".into(),
                root: true,
                timeout: std::time::Duration::from_secs(600),
                expect_exit: 0
            }
        );
        assert_eq!(
            s.steps[3],
            Step::Reboot {
                method: RebootMethod::Qmp
            }
        );
    }

    fn error(text: &str) -> SpecError {
        Scenario::parse(text, "t.toml").unwrap_err()
    }

    #[test]
    fn bad_files_name_file_line_and_problem() {
        // Each error points at the line of its key; a missing key at its step.
        let e = error(&GOOD.replace("do = \"login\"", "do = \"logon\""));
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 8), "{e}");
        assert!(e.message.contains("step 2: unknown step \"logon\""), "{e}");
        let e = error(&GOOD.replace("command = \"true\"\n", ""));
        assert!(e.message.contains("step 3: missing `command`"), "{e}");
        assert_eq!(e.line, 10);
        let e = error(&GOOD.replace("root = true", "root = \"yes\""));
        assert!(e.message.contains("`root` must be true or false"), "{e}");
        assert_eq!(e.line, 13);
        let e = error(&GOOD.replace("until = \"login\"", "until = \"login\"\ntimeout = \"long\""));
        assert!(
            e.message.contains("`timeout` must be a positive number") && e.line == 6,
            "{e}"
        );
        let e = error(&GOOD.replace("method = \"qmp\"", "method = \"qmp\"\ncolour = 1"));
        assert!(
            e.message.contains("no field `colour`") && e.line == 18,
            "{e}"
        );
        let e = error("name = \"t\"\n[[step]]\ndo = \"login\"\n");
        assert!(e.message.contains("first step must be `boot`"), "{e}");
        let e = error("name = \"t\"\nnonsense = 1\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n");
        assert!(e.message.contains("nonsense") && e.line == 2, "{e}");
    }

    #[test]
    fn numbers_out_of_range_name_their_key_and_line() {
        let hostile = [
            "inf",
            "-inf",
            "nan",
            "-1",
            "0",
            "1e30",
            "1.8e19",
            "18446744073709551616",
            "\"5\"",
        ];
        // (step, key): every number a step takes.
        for (step, key) in [
            ("do = \"boot\"\nuntil = \"login\"", "timeout"),
            ("do = \"boot\"\nuntil = \"login\"", "silence"),
            ("do = \"login\"", "timeout"),
            ("do = \"run\"\ncommand = \"true\"", "timeout"),
            ("do = \"upgrade\"", "timeout"),
            ("do = \"watch\"\nuntil = \"login\"", "timeout"),
            ("do = \"watch\"\nuntil = \"login\"", "silence"),
        ] {
            for bad in hostile.iter().chain(&["604801"]) {
                let text = format!(
                    "name = \"t\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n[[step]]\ndo = \"login\"\n\
                     [[step]]\n{step}\n{key} = {bad}\n"
                );
                let e = error(&text);
                let line = text.lines().count();
                assert!(
                    e.line == line && e.message.contains(key),
                    "{step} {key} = {bad}: {e}"
                );
            }
        }
        // 0 is the default exit status, not a hostile one.
        for bad in hostile
            .iter()
            .filter(|b| **b != "0")
            .chain(&["256", "-0x1"])
        {
            let text = GOOD.replace("root = true", &format!("expect_exit = {bad}"));
            let e = error(&text);
            assert!(
                e.line == 13 && e.message.contains("expect_exit"),
                "expect_exit = {bad}: {e}"
            );
        }
        let ok = Scenario::parse(&GOOD.replace("root = true", "expect_exit = 255"), "t.toml");
        assert!(matches!(
            ok.unwrap().steps[2],
            Step::Run {
                expect_exit: 255,
                ..
            }
        ));
    }

    #[test]
    fn files_are_read_through_the_size_limit() {
        let e = Scenario::load(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.line, 0);
        assert_eq!(
            e.to_string(),
            "/dev/zero: is a device, not a regular file (input files are read whole)"
        );
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            // demo.toml lists the demo's cases (plan::demo checks it), not steps.
            if p.extension().is_some_and(|x| x == "toml") && !p.ends_with("demo.toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no scenarios in {}", dir.display());
    }
}
