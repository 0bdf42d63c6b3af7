//! Matrix files (`scenarios/matrix/*.toml`): axes, filters and run settings as data. Parsed and
//! checked completely (providers spelled right, no unknown axis or key, a non-empty plan) before
//! anything is resolved or started; every error names the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::verdict::Target;
use crate::inputs::fixtures::Fixture;
use crate::inputs::images::catalog::line_of;
use crate::inputs::providers::{FirmwareProvider, QemuProvider};
use crate::plan::matrix::model::AXES;
use crate::plan::scenario::SpecError;
use crate::plan::updates::UpdateChoice;

/// The suffix that names an image's state after its upgrade.
pub const UPGRADED: &str = "@upgraded";

/// One value of the image axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageChoice {
    /// A generated EFI application on a FAT disk (`fixture:crash`, `fixture:hello`, ...).
    Fixture(Fixture),
    /// A catalog or local image by name, as built/downloaded (before any upgrade).
    Image(String),
    /// The same image after the matrix's `[upgrade]` ran on it once (disk and variable store as
    /// the guest left them).
    Upgraded(String),
}

impl ImageChoice {
    pub fn parse(s: &str) -> Result<ImageChoice, String> {
        if let Some(name) = s.strip_prefix("fixture:") {
            return Fixture::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .map(ImageChoice::Fixture)
                .ok_or_else(|| {
                    let known: Vec<_> = Fixture::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown fixture {name:?} (known: {})", known.join(", "))
                });
        }
        if let Some(name) = s.strip_suffix(UPGRADED) {
            if name.is_empty() {
                return Err(format!("image {s:?}: no image name before {UPGRADED}"));
            }
            return Ok(ImageChoice::Upgraded(name.into()));
        }
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(format!("image {s:?}: not an image name"));
        }
        Ok(ImageChoice::Image(s.into()))
    }

    /// The image name for registry lookups (`None` for fixtures).
    pub fn image_name(&self) -> Option<&str> {
        match self {
            ImageChoice::Fixture(_) => None,
            ImageChoice::Image(n) | ImageChoice::Upgraded(n) => Some(n),
        }
    }
}

/// The `vars` axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarsChoice {
    /// A fresh copy of the firmware's template.
    Template,
    /// The store the guest left after its upgrade (`@upgraded` images only).
    Guest,
}

impl VarsChoice {
    pub fn parse(s: &str) -> Result<VarsChoice, String> {
        match s {
            "template" => Ok(VarsChoice::Template),
            "guest" => Ok(VarsChoice::Guest),
            _ => Err(format!(
                "vars {s:?}: expected \"template\" (fresh from the firmware) or \"guest\" (the store the guest left after its upgrade)"
            )),
        }
    }
}

/// How `@upgraded` images are produced: one run of an upgrade scenario per image, cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeSpec {
    /// Scenario file (relative to the matrix file), or `None` for the shipped
    /// `scenarios/upgrade-reboot.toml`.
    pub scenario: Option<PathBuf>,
    /// `good` (the built-in hermetic bootloader update: GRUB 2.12 from bookworm-backports),
    /// `bad` (the built-in update that puts a crashing EFI binary where the firmware boots from),
    /// or a directory holding a package repository (resolved against the matrix file's directory
    /// and checked when the file is parsed).
    pub update: UpdateChoice,
    pub qemu: QemuProvider,
    pub firmware: FirmwareProvider,
}

/// A checked matrix file.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    pub name: String,
    pub description: String,
    /// Where it was read from (as given).
    pub source: String,
    /// `None`: watch each boot until it decides on its own (fixtures crash or power off).
    pub target: Option<Target>,
    pub timeout: Duration,
    pub silence: Duration,
    pub repeat: u32,
    pub smp: u32,
    pub memory_mib: u32,
    pub images: Vec<(String, ImageChoice)>,
    pub qemus: Vec<(String, QemuProvider)>,
    pub firmwares: Vec<(String, FirmwareProvider)>,
    pub cpus: Vec<String>,
    pub vars: Vec<(String, VarsChoice)>,
    /// Each filter: axis -> value; a cell matching every entry of one filter is left out.
    pub exclude: Vec<BTreeMap<String, String>>,
    pub upgrade: UpgradeSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default = "default_timeout")]
    timeout_s: f64,
    #[serde(default = "default_silence")]
    silence_s: f64,
    #[serde(default = "one")]
    repeat: u32,
    #[serde(default = "one")]
    smp: u32,
    #[serde(default = "default_memory")]
    memory_mib: u32,
    axes: toml::Spanned<RawAxes>,
    #[serde(default)]
    exclude: Vec<toml::Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    upgrade: Option<toml::Spanned<RawUpgrade>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAxes {
    image: toml::Spanned<Vec<String>>,
    qemu: toml::Spanned<Vec<String>>,
    firmware: toml::Spanned<Vec<String>>,
    #[serde(default)]
    cpu: Option<toml::Spanned<Vec<String>>>,
    #[serde(default)]
    vars: Option<toml::Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    #[serde(default)]
    scenario: Option<PathBuf>,
    #[serde(default = "default_update")]
    update: String,
    #[serde(default = "host")]
    qemu: String,
    #[serde(default = "host")]
    firmware: String,
}

fn default_timeout() -> f64 {
    120.0
}
fn default_silence() -> f64 {
    30.0
}
fn default_memory() -> u32 {
    1024
}
fn one() -> u32 {
    1
}
fn default_update() -> String {
    "good".into()
}
fn host() -> String {
    "host".into()
}

/// The CPU model when the file names none (TCG's default for aarch64 guests).
pub const DEFAULT_CPU: &str = "cortex-a72";

impl MatrixSpec {
    pub fn load(path: &Path) -> Result<MatrixSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        MatrixSpec::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<MatrixSpec, SpecError> {
        let err = |offset: usize, message: String| SpecError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawMatrix = toml::from_str(text).map_err(|e| {
            let mut m = e.message().to_string();
            if m.contains("unknown field") && m.contains("`image`") {
                m = format!("unknown axis: {m}");
            }
            err(e.span().map_or(0, |s| s.start), m)
        })?;
        let target = match raw.target.as_deref() {
            None | Some("none") => None,
            Some("grub") => Some(Target::Grub),
            Some("kernel") => Some(Target::Kernel),
            Some("login") => Some(Target::Login),
            Some(t) => {
                return Err(err(
                    0,
                    format!("target {t:?}: expected \"grub\", \"kernel\", \"login\" or \"none\""),
                ));
            }
        };
        for (key, v) in [("timeout_s", raw.timeout_s), ("silence_s", raw.silence_s)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err(
                    0,
                    format!("{key} must be a positive number of seconds"),
                ));
            }
        }
        if raw.repeat == 0 || raw.smp == 0 || raw.memory_mib < 128 {
            return Err(err(
                0,
                "repeat and smp must be at least 1, memory_mib at least 128".into(),
            ));
        }
        let axes_at = raw.axes.span().start;
        let axes = raw.axes.into_inner();

        fn values<T>(
            axis: &str,
            v: toml::Spanned<Vec<String>>,
            parse: impl Fn(&str) -> Result<T, String>,
            err: &dyn Fn(usize, String) -> SpecError,
        ) -> Result<Vec<(String, T)>, SpecError> {
            let at = v.span().start;
            let v = v.into_inner();
            if v.is_empty() {
                return Err(err(at, format!("axis {axis} has no values")));
            }
            let mut out: Vec<(String, T)> = Vec::new();
            for s in v {
                if out.iter().any(|(o, _)| *o == s) {
                    return Err(err(at, format!("axis {axis}: {s:?} is listed twice")));
                }
                let parsed = parse(&s).map_err(|m| err(at, format!("axis {axis}: {m}")))?;
                out.push((s, parsed));
            }
            Ok(out)
        }
        let images = values("image", axes.image, ImageChoice::parse, &err)?;
        let qemus = values("qemu", axes.qemu, |s| s.parse::<QemuProvider>(), &err)?;
        let firmwares = values(
            "firmware",
            axes.firmware,
            |s| s.parse::<FirmwareProvider>(),
            &err,
        )?;
        let cpus = match axes.cpu {
            Some(c) => values(
                "cpu",
                c,
                |s| {
                    if s.is_empty() || s.contains([',', ' ']) {
                        Err(format!("cpu {s:?}: not a QEMU CPU model name"))
                    } else {
                        Ok(())
                    }
                },
                &err,
            )?
            .into_iter()
            .map(|(s, _)| s)
            .collect(),
            None => vec![DEFAULT_CPU.to_string()],
        };
        let vars = match axes.vars {
            Some(v) => values("vars", v, VarsChoice::parse, &err)?,
            None => vec![("template".to_string(), VarsChoice::Template)],
        };
        if vars.iter().any(|(_, v)| *v == VarsChoice::Guest)
            && !images
                .iter()
                .any(|(_, i)| matches!(i, ImageChoice::Upgraded(_)))
        {
            return Err(err(
                axes_at,
                format!(
                    "vars \"guest\" needs an image{UPGRADED} on the image axis (only an upgraded guest left a store)"
                ),
            ));
        }
        let mut exclude = Vec::new();
        for f in raw.exclude {
            let at = f.span().start;
            let f = f.into_inner();
            if f.is_empty() {
                return Err(err(
                    at,
                    "an [[exclude]] filter needs at least one axis".into(),
                ));
            }
            for (axis, value) in &f {
                let known: Vec<&String> = match axis.as_str() {
                    "image" => images.iter().map(|(s, _)| s).collect(),
                    "qemu" => qemus.iter().map(|(s, _)| s).collect(),
                    "firmware" => firmwares.iter().map(|(s, _)| s).collect(),
                    "cpu" => cpus.iter().collect(),
                    "vars" => vars.iter().map(|(s, _)| s).collect(),
                    _ => {
                        return Err(err(
                            at,
                            format!(
                                "[[exclude]]: unknown axis {axis:?} (axes: {})",
                                AXES.join(", ")
                            ),
                        ));
                    }
                };
                if !known.contains(&value) {
                    return Err(err(
                        at,
                        format!("[[exclude]]: {axis} = {value:?} is not a value of that axis"),
                    ));
                }
            }
            exclude.push(f);
        }
        let upgrade = match raw.upgrade {
            None => UpgradeSpec {
                scenario: None,
                update: UpdateChoice::Good,
                qemu: QemuProvider::Host,
                firmware: FirmwareProvider::Host,
            },
            Some(u) => {
                let at = u.span().start;
                let u = u.into_inner();
                let base = Path::new(file).parent().unwrap_or(Path::new("."));
                let named = match u.update.as_str() {
                    "good" | "bad" => u.update.clone(),
                    dir => base.join(dir).display().to_string(),
                };
                let update =
                    UpdateChoice::parse(&named).map_err(|m| err(at, format!("[upgrade] {m}")))?;
                UpgradeSpec {
                    scenario: u.scenario.map(|s| base.join(s)),
                    update,
                    qemu: u
                        .qemu
                        .parse()
                        .map_err(|m| err(at, format!("[upgrade] qemu: {m}")))?,
                    firmware: u
                        .firmware
                        .parse()
                        .map_err(|m| err(at, format!("[upgrade] firmware: {m}")))?,
                }
            }
        };
        Ok(MatrixSpec {
            name: raw.name,
            description: raw.description,
            source: file.into(),
            target,
            timeout: Duration::from_secs_f64(raw.timeout_s),
            silence: Duration::from_secs_f64(raw.silence_s),
            repeat: raw.repeat,
            smp: raw.smp,
            memory_mib: raw.memory_mib,
            images,
            qemus,
            firmwares,
            cpus,
            vars,
            exclude,
            upgrade,
        })
    }

    pub fn target_name(&self) -> &'static str {
        match self.target {
            None => "none",
            Some(Target::Grub) => "grub",
            Some(Target::Kernel) => "kernel",
            Some(Target::Login) => "login",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SMOKE: &str = r#"
name = "t"
[axes]
image = ["fixture:crash", "fixture:hello"]
qemu = ["host", "debian:trixie"]
firmware = ["debian:2022.11", "debian:2025.02/strictnx"]
"#;

    fn error(text: &str) -> String {
        MatrixSpec::parse(text, "m.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_axes_with_defaults() {
        let m = MatrixSpec::parse(SMOKE, "m.toml").unwrap();
        assert_eq!(m.images.len(), 2);
        assert_eq!(m.images[0].1, ImageChoice::Fixture(Fixture::Crash));
        assert_eq!(m.cpus, vec![DEFAULT_CPU.to_string()]);
        assert_eq!(m.vars, vec![("template".into(), VarsChoice::Template)]);
        assert_eq!(m.target, None);
        assert_eq!(m.repeat, 1);
        assert_eq!(m.upgrade.update, UpdateChoice::Good);
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        let e = error(&SMOKE.replace("[axes]", "[axes]\ncolour = [\"red\"]"));
        assert!(e.starts_with("m.toml:4:"), "{e}");
        assert!(e.contains("unknown axis") && e.contains("colour"), "{e}");

        let e = error(&SMOKE.replace("\"debian:trixie\"", "\"qemu:9\""));
        assert!(e.starts_with("m.toml:5:") && e.contains("axis qemu"), "{e}");

        let e = error(&SMOKE.replace("\"fixture:hello\"", "\"fixture:bye\""));
        assert!(e.contains("unknown fixture \"bye\""), "{e}");

        let e = error(&SMOKE.replace("\"fixture:hello\"", "\"fixture:crash\""));
        assert!(e.contains("listed twice"), "{e}");

        let e = error(&format!("{SMOKE}vars = [\"guest\"]\n"));
        assert!(e.contains("@upgraded"), "{e}");

        let e = error(&format!("{SMOKE}[[exclude]]\nqemu = \"debian:sid\"\n"));
        assert!(
            e.starts_with("m.toml:7:") || e.contains("not a value of that axis"),
            "{e}"
        );
        let e = error(&format!("{SMOKE}[[exclude]]\nkvm = \"on\"\n"));
        assert!(e.contains("unknown axis \"kvm\""), "{e}");

        let e = error(&SMOKE.replace("name = \"t\"", "name = \"t\"\ntarget = \"shell\""));
        assert!(e.contains("target \"shell\""), "{e}");
        let e = error(&SMOKE.replace("name = \"t\"", "name = \"t\"\nrepeats = 3"));
        assert!(e.starts_with("m.toml:3:") && e.contains("repeats"), "{e}");
        let e = error("name = \"t\"\n");
        assert!(e.contains("axes"), "{e}");
        let e = error(&format!("{SMOKE}[upgrade]\nupdate = \"worse\"\n"));
        assert!(
            e.starts_with("m.toml:7:")
                && e.contains("[upgrade] update \"")
                && e.contains("neither"),
            "{e}"
        );
        let ok =
            MatrixSpec::parse(&format!("{SMOKE}[upgrade]\nupdate = \"bad\"\n"), "m.toml").unwrap();
        assert_eq!(ok.upgrade.update, UpdateChoice::Bad);
    }
}
