//! Scenario files (`scenarios/*.toml`): a scenario is data, a sequence of steps. They are parsed
//! and checked completely before any VM starts; every error names the file and the line.

use std::path::Path;

use serde::Serialize;

use crate::core::verdict::Target;
use crate::engine::step::seconds;
pub use crate::engine::step::{RebootMethod, Step};
use crate::inputs::images::catalog::line_of;

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
    /// Where it was read from.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

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
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Scenario, SpecError> {
        let err = |offset: usize, message: String| SpecError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        let doc: toml::Spanned<toml::Table> = toml::from_str(text)
            .map_err(|e| err(e.span().map_or(0, |s| s.start), e.message().to_string()))?;
        let table = doc.into_inner();
        // Top-level keys are re-read with spans so errors can point at them.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Top {
            name: String,
            #[serde(default)]
            description: String,
            step: Vec<toml::Spanned<toml::Table>>,
        }
        let top: Top = toml::from_str(text)
            .map_err(|e| err(e.span().map_or(0, |s| s.start), e.message().to_string()))?;
        drop(table);
        if top.step.is_empty() {
            return Err(err(0, "a scenario needs at least one [[step]]".into()));
        }
        let mut steps = Vec::new();
        let mut starts = Vec::new();
        for (i, s) in top.step.into_iter().enumerate() {
            let at = s.span().start;
            let t = s.into_inner();
            let step = parse_step(&t).map_err(|m| err(at, format!("step {}: {m}", i + 1)))?;
            steps.push(step);
            starts.push(at);
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

fn parse_step(t: &toml::Table) -> Result<Step, String> {
    let action = match t.get("do") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("`do` must be a string, not {}", v.type_str())),
        None => return Err(format!("missing `do` (one of {})", STEP_NAMES.join(", "))),
    };
    let allowed: &[&str] = match action {
        "boot" | "watch" => &["do", "until", "timeout", "silence"],
        "login" | "upgrade" => &["do", "timeout"],
        "run" => &["do", "command", "root", "timeout", "expect_exit"],
        "snapshot-packages" => &["do", "label"],
        "reboot" => &["do", "method"],
        other => {
            return Err(format!(
                "unknown step {other:?} (one of {})",
                STEP_NAMES.join(", ")
            ));
        }
    };
    if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "`{action}` has no field `{k}` (fields: {})",
            allowed[1..].join(", ")
        ));
    }
    let secs = |key: &str, default: f64| -> Result<std::time::Duration, String> {
        let v = match t.get(key) {
            None => default,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(toml::Value::Float(f)) => *f,
            Some(v) => {
                return Err(format!(
                    "`{key}` must be a positive number of seconds, not {v}"
                ));
            }
        };
        seconds(v).map_err(|e| format!("`{key}` {e}"))
    };
    let string = |key: &str| -> Result<Option<String>, String> {
        match t.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("`{key}` must be a string, not {}", v.type_str())),
        }
    };
    let until = || -> Result<Target, String> {
        match string("until")?.as_deref() {
            Some("grub") => Ok(Target::Grub),
            Some("kernel") => Ok(Target::Kernel),
            Some("login") => Ok(Target::Login),
            Some(o) => Err(format!("`until` must be grub, kernel or login, not {o:?}")),
            None => Err("missing `until` (grub, kernel or login)".into()),
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
            command: string("command")?.ok_or("missing `command`")?,
            root: match t.get("root") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(v) => return Err(format!("`root` must be true or false, not {v}")),
            },
            timeout: secs("timeout", 600.0)?,
            expect_exit: match t.get("expect_exit") {
                None => 0,
                Some(toml::Value::Integer(i)) => {
                    i32::try_from(*i).map_err(|_| "`expect_exit` out of range")?
                }
                Some(v) => return Err(format!("`expect_exit` must be an integer, not {v}")),
            },
        },
        "snapshot-packages" => Step::SnapshotPackages {
            label: string("label")?.ok_or("missing `label`")?,
        },
        "reboot" => Step::Reboot {
            method: match string("method")?.as_deref() {
                None | Some("guest") => RebootMethod::Guest,
                Some("qmp") => RebootMethod::Qmp,
                Some(o) => return Err(format!("`method` must be guest or qmp, not {o:?}")),
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
        let e = error(&GOOD.replace("do = \"login\"", "do = \"logon\""));
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 7), "{e}");
        assert!(e.message.contains("step 2: unknown step \"logon\""), "{e}");
        let e = error(&GOOD.replace("command = \"true\"\n", ""));
        assert!(e.message.contains("step 3: missing `command`"), "{e}");
        assert_eq!(e.line, 10);
        let e = error(&GOOD.replace("root = true", "root = \"yes\""));
        assert!(e.message.contains("`root` must be true or false"), "{e}");
        let e = error(&GOOD.replace("until = \"login\"", "until = \"login\"\ntimeout = \"long\""));
        assert!(
            e.message.contains("`timeout` must be a positive number"),
            "{e}"
        );
        let e = error(&GOOD.replace("method = \"qmp\"", "method = \"qmp\"\ncolour = 1"));
        assert!(e.message.contains("no field `colour`"), "{e}");
        let e = error("name = \"t\"\n[[step]]\ndo = \"login\"\n");
        assert!(e.message.contains("first step must be `boot`"), "{e}");
        let e = error("name = \"t\"\nnonsense = 1\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n");
        assert!(e.message.contains("nonsense") && e.line == 2, "{e}");
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
