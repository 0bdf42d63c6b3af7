//! Bisect files: what is bisected (a list of QEMU or firmware builds, or an update's package
//! set) and the machine every step boots, as data. Parsed and checked completely before anything
//! is resolved or started; every error names the file and the line of its key (or value).
//!
//! ```toml
//! name = "edk2-on-qemu-5.2"
//! image = "fixture:hello"          # NAME, NAME@upgraded or fixture:NAME
//! qemu = "debian:bullseye"         # one provider: fixed
//! firmware = ["debian:2020.11", "debian:2022.11", "debian:2025.02", "debian:2026.08"]
//! ```
//!
//! The axis given as a list (of at least two builds, oldest first) is bisected; the other is
//! fixed (default `host`). With a `[packages]` table instead, the update's package set is.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::step::Machine;
use crate::core::launch::FirmwareWait;
use crate::core::verdict::Target;
use crate::inputs::images::catalog::{line_of, toml_error};
use crate::inputs::providers::{FirmwareProvider, QemuProvider};
use crate::plan::demo::UPGRADE_REBOOT;
use crate::plan::matrix::spec::{DEFAULT_CPU, ImageChoice, UpgradeSpec, VarsChoice};
use crate::plan::scenario::{Scenario, SpecError, limits, read_spec};
use crate::plan::updates::UpdateChoice;

/// What a bisection searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Axis {
    /// An ordered list of QEMU builds (the firmware fixed).
    Qemu,
    /// An ordered list of firmware builds (QEMU fixed).
    Firmware,
    /// The packages of an update whose upgrade makes the reboot fail.
    Packages,
}

impl Axis {
    pub fn as_str(self) -> &'static str {
        match self {
            Axis::Qemu => "qemu",
            Axis::Firmware => "firmware",
            Axis::Packages => "packages",
        }
    }
}

/// The `[packages]` table: delta debugging over an update's packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagesSpec {
    /// The failing update: `bad` (bootwatch's crashing `shim-signed`), `good`, or a repository
    /// directory (resolved against the file's directory).
    pub update: UpdateChoice,
    /// Only these packages of the update (default: every package in its index).
    pub only: Vec<String>,
}

/// A checked bisect file.
#[derive(Debug, Clone)]
pub struct BisectSpec {
    pub name: String,
    pub description: String,
    /// Where it was read from (as given).
    pub source: String,
    pub machine: Machine,
    /// QEMU builds as written and parsed: one (fixed) or the list bisected.
    pub qemu: Vec<(String, QemuProvider)>,
    /// Firmware builds as written and parsed: one (fixed) or the list bisected.
    pub firmware: Vec<(String, FirmwareProvider)>,
    pub packages: Option<PackagesSpec>,
}

impl BisectSpec {
    pub fn axis(&self) -> Axis {
        if self.packages.is_some() {
            Axis::Packages
        } else if self.qemu.len() > 1 {
            Axis::Qemu
        } else {
            Axis::Firmware
        }
    }

    /// The builds bisected, as written (empty for a package bisection).
    pub fn builds(&self) -> Vec<String> {
        match self.axis() {
            Axis::Qemu => self.qemu.iter().map(|(s, _)| s.clone()).collect(),
            Axis::Firmware => self.firmware.iter().map(|(s, _)| s.clone()).collect(),
            Axis::Packages => Vec::new(),
        }
    }

    /// Reads a bisect file (at most [`crate::sys::fsx::INPUT_LIMIT`] bytes, a regular file).
    pub fn load(path: &Path) -> Result<BisectSpec, SpecError> {
        let text = read_spec(path)?;
        BisectSpec::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a bisect file; every error names `file` and the line of its key.
    pub fn parse(text: &str, file: &str) -> Result<BisectSpec, SpecError> {
        let err = |offset: usize, message: String| SpecError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawBisect = toml::from_str(text).map_err(|e| {
            let (at, m) = toml_error(text, &e);
            err(at, m)
        })?;
        let base = Path::new(file).parent().unwrap_or(Path::new("."));
        let packages = match raw.packages {
            None => None,
            Some(p) => {
                let at = p.span().start;
                let p = p.into_inner();
                let Some(update) = p.update else {
                    return Err(err(
                        at,
                        "[packages] needs `update` (\"bad\", \"good\" or a repository directory)"
                            .into(),
                    ));
                };
                let u_at = update.span().start;
                let update = update.into_inner();
                let named = match update.as_str() {
                    "good" | "bad" => update.clone(),
                    dir => base.join(dir).display().to_string(),
                };
                let update = UpdateChoice::parse(&named)
                    .map_err(|m| err(u_at, format!("[packages] {m}")))?;
                let mut only: Vec<String> = Vec::new();
                for name in p.only.unwrap_or_default() {
                    let n_at = name.span().start;
                    let name = name.into_inner();
                    let ok = name.len() >= 2
                        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                        && name.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)
                        });
                    if !ok {
                        return Err(err(
                            n_at,
                            format!("[packages] only: {name:?} is not a Debian package name"),
                        ));
                    }
                    if only.contains(&name) {
                        return Err(err(
                            n_at,
                            format!("[packages] only: {name:?} is listed twice"),
                        ));
                    }
                    only.push(name);
                }
                Some(PackagesSpec { update, only })
            }
        };
        let is_packages = packages.is_some();

        let image_at = raw.image.span().start;
        let image = raw.image.into_inner();
        let image_choice = ImageChoice::parse(&image).map_err(|m| err(image_at, m))?;
        if is_packages && !matches!(image_choice, ImageChoice::Image(_)) {
            return Err(err(
                image_at,
                format!(
                    "[packages] upgrades an image, so `image` must name one (not {image:?}: no fixture, no @upgraded)"
                ),
            ));
        }

        let target = match &raw.target {
            None if is_packages => Some(Target::Login),
            None => None,
            Some(t) => match t.get_ref().as_str() {
                "none" if is_packages => {
                    return Err(err(
                        t.span().start,
                        "target \"none\": the reboot after a package set needs a stage to reach"
                            .into(),
                    ));
                }
                "none" => None,
                other => Some(other.parse::<Target>().map_err(|_| {
                    err(
                        t.span().start,
                        format!(
                            "target {other:?}: expected \"grub\", \"kernel\", \"login\" or \"none\""
                        ),
                    )
                })?),
            },
        };
        let seconds = |key: &str, v: &Option<Spanned<toml::Value>>, default: f64| match v {
            None => Ok(Duration::from_secs_f64(default)),
            Some(v) => limits::seconds(key, v.get_ref()).map_err(|m| err(v.span().start, m)),
        };
        let (timeout_default, silence_default) = if is_packages {
            (900.0, 240.0)
        } else {
            (120.0, 30.0)
        };
        let timeout = seconds("timeout_s", &raw.timeout_s, timeout_default)?;
        let silence = seconds("silence_s", &raw.silence_s, silence_default)?;
        let integer = |key: &str,
                       v: &Option<Spanned<toml::Value>>,
                       default: u32,
                       range: &std::ops::RangeInclusive<u32>| match v {
            None => Ok(default),
            Some(v) => limits::integer(key, v.get_ref(), range).map_err(|m| err(v.span().start, m)),
        };
        let repeat = integer("repeat", &raw.repeat, 1, &limits::REPEAT)?;
        let smp = integer(
            "smp",
            &raw.smp,
            if is_packages { 2 } else { 1 },
            &limits::SMP,
        )?;
        let memory_mib = integer(
            "memory_mib",
            &raw.memory_mib,
            if is_packages { 2048 } else { 1024 },
            &limits::MEMORY_MIB,
        )?;
        let firmware_wait = match &raw.firmware_wait {
            None => FirmwareWait::Skip,
            Some(w) => w
                .get_ref()
                .parse()
                .map_err(|m| err(w.span().start, format!("firmware_wait: {m}")))?,
        };
        let cpu = match raw.cpu {
            None => DEFAULT_CPU.to_string(),
            Some(c) => {
                let at = c.span().start;
                let c = c.into_inner();
                if c.is_empty() || c.contains([',', ' ']) {
                    return Err(err(at, format!("cpu {c:?}: not a QEMU CPU model name")));
                }
                c
            }
        };
        let vars = match raw.vars {
            None => VarsChoice::Template,
            Some(v) => {
                let at = v.span().start;
                let vars = VarsChoice::parse(v.get_ref()).map_err(|m| err(at, m))?;
                if vars == VarsChoice::Guest && !matches!(image_choice, ImageChoice::Upgraded(_)) {
                    return Err(err(
                        at,
                        "vars \"guest\" needs an image@upgraded (only an upgraded guest left a store)"
                            .into(),
                    ));
                }
                vars
            }
        };
        let upgrade = parse_upgrade(raw.upgrade, base, &err)?;

        let qemu = builds(
            "qemu",
            raw.qemu,
            |s| s.parse::<QemuProvider>(),
            &err,
            QemuProvider::Host,
        )?;
        let firmware = builds(
            "firmware",
            raw.firmware,
            |s| s.parse::<FirmwareProvider>(),
            &err,
            FirmwareProvider::Host,
        )?;
        match (qemu.list_at, firmware.list_at, is_packages) {
            (Some(_), Some(at), _) => {
                return Err(err(
                    at,
                    "both qemu and firmware are lists: a bisection varies one axis (make the other one build)"
                        .into(),
                ));
            }
            (Some(at), None, true) | (None, Some(at), true) => {
                return Err(err(
                    at,
                    "[packages] bisects the update's packages: qemu and firmware must be one build each"
                        .into(),
                ));
            }
            (None, None, false) => {
                return Err(err(
                    0,
                    "nothing to bisect: give `qemu` or `firmware` as a list of builds (oldest first), or a [packages] table"
                        .into(),
                ));
            }
            _ => {}
        }
        Ok(BisectSpec {
            name: raw.name,
            description: raw.description,
            source: file.into(),
            machine: Machine {
                image,
                image_choice,
                target,
                timeout,
                silence,
                cpu,
                smp,
                memory_mib,
                firmware_wait,
                vars,
                upgrade,
                repeat,
            },
            qemu: qemu.values,
            firmware: firmware.values,
            packages,
        })
    }
}

/// The scenario a package step runs: the shipped upgrade scenario (boot, log in, record the
/// packages, upgrade, record them again, reboot) whose last watch waits for `machine`'s target
/// with its timeout and silence.
pub fn package_steps(machine: &Machine) -> Vec<crate::engine::step::Step> {
    use crate::engine::step::Step;
    let mut steps = Scenario::parse(UPGRADE_REBOOT, "scenarios/upgrade-reboot.toml")
        .expect("the shipped scenario parses")
        .steps;
    if let Some(Step::Watch {
        until,
        timeout,
        silence,
    }) = steps.last_mut()
    {
        *until = machine.target.unwrap_or(Target::Login);
        *timeout = machine.timeout;
        *silence = machine.silence;
    }
    steps
}

/// One axis's builds, and where its list starts when it is a list.
struct Listed<T> {
    values: Vec<(String, T)>,
    list_at: Option<usize>,
}

fn builds<T>(
    axis: &str,
    v: Option<Spanned<OneOrMany>>,
    parse: impl Fn(&str) -> Result<T, String>,
    err: &dyn Fn(usize, String) -> SpecError,
    default: T,
) -> Result<Listed<T>, SpecError> {
    let Some(v) = v else {
        return Ok(Listed {
            values: vec![("host".into(), default)],
            list_at: None,
        });
    };
    let at = v.span().start;
    match v.into_inner() {
        OneOrMany::One(s) => {
            let p = parse(&s).map_err(|m| err(at, format!("{axis}: {m}")))?;
            Ok(Listed {
                values: vec![(s, p)],
                list_at: None,
            })
        }
        OneOrMany::Many(list) => {
            if list.len() < 2 {
                return Err(err(
                    at,
                    format!(
                        "{axis}: a list needs at least two builds (the known-good and the known-bad end); write one build as a string"
                    ),
                ));
            }
            if list.len() > limits::MAX_CELLS {
                return Err(err(
                    at,
                    format!(
                        "{axis}: {} builds, more than {}",
                        list.len(),
                        limits::MAX_CELLS
                    ),
                ));
            }
            let mut values: Vec<(String, T)> = Vec::new();
            for s in list {
                let s_at = s.span().start;
                let s = s.into_inner();
                if values.iter().any(|(o, _)| *o == s) {
                    return Err(err(s_at, format!("{axis}: {s:?} is listed twice")));
                }
                let p = parse(&s).map_err(|m| err(s_at, format!("{axis}: {m}")))?;
                values.push((s, p));
            }
            Ok(Listed {
                values,
                list_at: Some(at),
            })
        }
    }
}

fn parse_upgrade(
    raw: Option<Spanned<RawUpgrade>>,
    base: &Path,
    err: &dyn Fn(usize, String) -> SpecError,
) -> Result<UpgradeSpec, SpecError> {
    let Some(u) = raw else {
        return Ok(UpgradeSpec {
            scenario: None,
            update: UpdateChoice::Good,
            qemu: QemuProvider::Host,
            firmware: FirmwareProvider::Host,
        });
    };
    let table_at = u.span().start;
    let u = u.into_inner();
    let or_default = |v: Option<Spanned<String>>, default: &str| {
        v.map_or((table_at, default.to_string()), |s| {
            (s.span().start, s.into_inner())
        })
    };
    let (at, update) = or_default(u.update, "good");
    let named = match update.as_str() {
        "good" | "bad" => update.clone(),
        dir => base.join(dir).display().to_string(),
    };
    let update = UpdateChoice::parse(&named).map_err(|m| err(at, format!("[upgrade] {m}")))?;
    let (at, qemu) = or_default(u.qemu, "host");
    let qemu = qemu
        .parse()
        .map_err(|m| err(at, format!("[upgrade] qemu: {m}")))?;
    let (at, firmware) = or_default(u.firmware, "host");
    let firmware = firmware
        .parse()
        .map_err(|m| err(at, format!("[upgrade] firmware: {m}")))?;
    let scenario = match u.scenario {
        None => None,
        Some(p) => {
            let at = p.span().start;
            let path = base.join(p.into_inner());
            Scenario::load(&path).map_err(|e| err(at, format!("[upgrade] scenario: {e}")))?;
            Some(path)
        }
    };
    Ok(UpgradeSpec {
        scenario,
        update,
        qemu,
        firmware,
    })
}

/// A bisect file as written: every value spanned, so each problem points at its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBisect {
    name: String,
    #[serde(default)]
    description: String,
    image: Spanned<String>,
    #[serde(default)]
    qemu: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    firmware: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    target: Option<Spanned<String>>,
    // Numbers are read as any TOML value and checked here (see the matrix files).
    #[serde(default)]
    timeout_s: Option<Spanned<toml::Value>>,
    #[serde(default)]
    silence_s: Option<Spanned<toml::Value>>,
    #[serde(default)]
    repeat: Option<Spanned<toml::Value>>,
    #[serde(default)]
    smp: Option<Spanned<toml::Value>>,
    #[serde(default)]
    memory_mib: Option<Spanned<toml::Value>>,
    #[serde(default)]
    firmware_wait: Option<Spanned<String>>,
    #[serde(default)]
    cpu: Option<Spanned<String>>,
    #[serde(default)]
    vars: Option<Spanned<String>>,
    #[serde(default)]
    upgrade: Option<Spanned<RawUpgrade>>,
    #[serde(default)]
    packages: Option<Spanned<RawPackages>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    #[serde(default)]
    scenario: Option<Spanned<std::path::PathBuf>>,
    #[serde(default)]
    update: Option<Spanned<String>>,
    #[serde(default)]
    qemu: Option<Spanned<String>>,
    #[serde(default)]
    firmware: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackages {
    #[serde(default)]
    update: Option<Spanned<String>>,
    #[serde(default)]
    only: Option<Vec<Spanned<String>>>,
}

/// `qemu`/`firmware`: one build, or a list of them, each value spanned. A hand-written visitor
/// rather than `#[serde(untagged)]`, which buffers the value and loses the spans.
enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OneOrMany, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a build (a string) or a list of builds")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Spanned<String>>()? {
                    out.push(v);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRMWARE: &str = r#"name = "b"
image = "fixture:hello"
qemu = "debian:bullseye"
firmware = [
  "debian:2020.11",
  "debian:2022.11",
  "debian:2026.08",
]
"#;

    fn error(text: &str) -> String {
        BisectSpec::parse(text, "b.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_firmware_list_on_a_fixed_qemu() {
        let s = BisectSpec::parse(FIRMWARE, "b.toml").unwrap();
        assert_eq!(s.axis(), Axis::Firmware);
        assert_eq!(
            s.builds(),
            ["debian:2020.11", "debian:2022.11", "debian:2026.08"]
        );
        assert_eq!(s.qemu.len(), 1);
        assert_eq!(s.machine.target, None);
        assert_eq!(s.machine.timeout, Duration::from_secs(120));
        assert_eq!((s.machine.smp, s.machine.memory_mib), (1, 1024));
        assert_eq!(s.machine.cpu, DEFAULT_CPU);
        assert_eq!(s.machine.repeat, 1);
        let q = BisectSpec::parse(
            "name = \"q\"\nimage = \"fixture:crash\"\nqemu = [\"host\", \"debian:sid\"]\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(q.axis(), Axis::Qemu);
        assert_eq!(q.firmware[0].0, "host");
    }

    #[test]
    fn a_package_set() {
        let s = BisectSpec::parse(
            "name = \"p\"\nimage = \"debian-12-local\"\ntarget = \"grub\"\n[packages]\nupdate = \"bad\"\nonly = [\"shim-signed\", \"bootwatch-extra-a\"]\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(s.axis(), Axis::Packages);
        let p = s.packages.as_ref().unwrap();
        assert_eq!(p.update, UpdateChoice::Bad);
        assert_eq!(p.only, ["shim-signed", "bootwatch-extra-a"]);
        assert_eq!((s.machine.smp, s.machine.memory_mib), (2, 2048));
        let steps = package_steps(&s.machine);
        assert_eq!(steps.first().map(|s| s.name()), Some("boot"));
        assert_eq!(
            steps.last(),
            Some(&crate::engine::step::Step::Watch {
                until: Target::Grub,
                timeout: Duration::from_secs(900),
                silence: Duration::from_secs(240),
            })
        );
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        for (text, line, needle) in [
            (FIRMWARE.replace("2022.11", "2020.11"), 6, "listed twice"),
            (
                FIRMWARE.replace("\"debian:2022.11\"", "\"flash:x\""),
                6,
                "firmware: unknown firmware provider",
            ),
            (
                FIRMWARE.replace("qemu = \"debian:bullseye\"", "qemu = [\"host\", \"debian:sid\"]"),
                4,
                "both qemu and firmware are lists",
            ),
            (
                FIRMWARE.replace(
                    "firmware = [\n  \"debian:2020.11\",\n  \"debian:2022.11\",\n  \"debian:2026.08\",\n]",
                    "firmware = \"host\"",
                ),
                1,
                "nothing to bisect",
            ),
            (
                FIRMWARE.replace(
                    "firmware = [\n  \"debian:2020.11\",\n  \"debian:2022.11\",\n  \"debian:2026.08\",\n]",
                    "firmware = [\"host\"]",
                ),
                4,
                "at least two builds",
            ),
            (format!("{FIRMWARE}repeat = 0\n"), 9, "repeat must be"),
            (format!("{FIRMWARE}timeout_s = 1e30\n"), 9, "timeout_s"),
            (format!("{FIRMWARE}target = \"shell\"\n"), 9, "target \"shell\""),
            (format!("{FIRMWARE}vars = \"guest\"\n"), 9, "@upgraded"),
            (format!("{FIRMWARE}colour = 1\n"), 9, "colour"),
            (
                FIRMWARE.replace("fixture:hello", "fixture:bye"),
                2,
                "unknown fixture",
            ),
            (
                format!("{FIRMWARE}[packages]\nupdate = \"bad\"\n"),
                4,
                "one build each",
            ),
            (
                "name = \"p\"\nimage = \"fixture:crash\"\n[packages]\nupdate = \"bad\"\n".into(),
                2,
                "must name one",
            ),
            (
                "name = \"p\"\nimage = \"x\"\n[packages]\nupdate = \"worse\"\n".into(),
                4,
                "[packages] update",
            ),
            (
                "name = \"p\"\nimage = \"x\"\n[packages]\nupdate = \"bad\"\nonly = [\"Bad Name\"]\n"
                    .into(),
                5,
                "not a Debian package name",
            ),
            (
                "name = \"p\"\nimage = \"x\"\n[packages]\n".into(),
                3,
                "needs `update`",
            ),
            (
                format!("{FIRMWARE}[upgrade]\nupdate = \"worse\"\n"),
                10,
                "[upgrade] update",
            ),
            (
                "name = \"p\"\nimage = \"x\"\nfirmware = 5\n".into(),
                3,
                "a build (a string) or a list of builds",
            ),
        ] {
            let e = error(&text);
            assert!(
                e.starts_with(&format!("b.toml:{line}:")) && e.contains(needle),
                "wanted line {line} and {needle:?}: {e}"
            );
        }
    }
}
