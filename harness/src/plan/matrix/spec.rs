//! Matrix files (`scenarios/matrix/*.toml`): axes, filters and run settings as data. Parsed and
//! checked completely (providers spelled right, no unknown axis or key, a non-empty plan) before
//! anything is resolved or started; every error names the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::core::launch::FirmwareWait;
use crate::core::verdict::Target;
use crate::inputs::fixtures::Fixture;
use crate::inputs::images::catalog::{line_of, toml_error};
use crate::inputs::providers::{FirmwareProvider, QemuProvider};
use crate::plan::matrix::model::AXES;
use crate::plan::scenario::{Scenario, SpecError, limits, read_spec};
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
    /// The firmware boot manager's countdown (`skip` by default).
    pub firmware_wait: FirmwareWait,
    pub images: Vec<(String, ImageChoice)>,
    pub qemus: Vec<(String, QemuProvider)>,
    pub firmwares: Vec<(String, FirmwareProvider)>,
    pub cpus: Vec<String>,
    pub vars: Vec<(String, VarsChoice)>,
    /// Each filter: axis -> value; a cell matching every entry of one filter is left out.
    pub exclude: Vec<BTreeMap<String, String>>,
    pub upgrade: UpgradeSpec,
}

/// A matrix file as written: every value spanned, so each problem points at its key's line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    target: Option<Spanned<String>>,
    // Numbers are read as any TOML value and checked here, so `1e30`, `inf` or `-1` get a
    // message naming the key and its bounds.
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
    axes: Spanned<RawAxes>,
    #[serde(default)]
    exclude: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    #[serde(default)]
    upgrade: Option<Spanned<RawUpgrade>>,
}

/// The values of one axis, each spanned.
type RawAxis = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAxes {
    image: RawAxis,
    qemu: RawAxis,
    firmware: RawAxis,
    #[serde(default)]
    cpu: Option<RawAxis>,
    #[serde(default)]
    vars: Option<RawAxis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    #[serde(default)]
    scenario: Option<Spanned<PathBuf>>,
    #[serde(default)]
    update: Option<Spanned<String>>,
    #[serde(default)]
    qemu: Option<Spanned<String>>,
    #[serde(default)]
    firmware: Option<Spanned<String>>,
}

const DEFAULT_TIMEOUT_S: f64 = 120.0;
const DEFAULT_SILENCE_S: f64 = 30.0;
const DEFAULT_MEMORY_MIB: u32 = 1024;

/// The CPU model when the file names none (TCG's default for aarch64 guests).
pub const DEFAULT_CPU: &str = "cortex-a72";

impl MatrixSpec {
    /// Reads a matrix file (at most [`crate::sys::fsx::INPUT_LIMIT`] bytes, a regular file).
    pub fn load(path: &Path) -> Result<MatrixSpec, SpecError> {
        let text = read_spec(path)?;
        MatrixSpec::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a matrix file; every error names `file` and the line of its key.
    pub fn parse(text: &str, file: &str) -> Result<MatrixSpec, SpecError> {
        let err = |offset: usize, message: String| SpecError {
            file: file.into(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawMatrix = toml::from_str(text).map_err(|e| {
            let (at, mut m) = toml_error(text, &e);
            if m.contains("unknown field") && m.contains("`image`") {
                m = format!("unknown axis: {m}");
            }
            err(at, m)
        })?;
        let target = match &raw.target {
            None => None,
            Some(t) => match t.get_ref().as_str() {
                "none" => None,
                "grub" => Some(Target::Grub),
                "kernel" => Some(Target::Kernel),
                "login" => Some(Target::Login),
                other => {
                    return Err(err(
                        t.span().start,
                        format!(
                            "target {other:?}: expected \"grub\", \"kernel\", \"login\" or \"none\""
                        ),
                    ));
                }
            },
        };
        let seconds = |key: &str, v: &Option<Spanned<toml::Value>>, default: f64| match v {
            None => Ok(Duration::from_secs_f64(default)),
            Some(v) => limits::seconds(key, v.get_ref()).map_err(|m| err(v.span().start, m)),
        };
        let timeout = seconds("timeout_s", &raw.timeout_s, DEFAULT_TIMEOUT_S)?;
        let silence = seconds("silence_s", &raw.silence_s, DEFAULT_SILENCE_S)?;
        let integer = |key: &str,
                       v: &Option<Spanned<toml::Value>>,
                       default: u32,
                       range: &std::ops::RangeInclusive<u32>| match v {
            None => Ok(default),
            Some(v) => limits::integer(key, v.get_ref(), range).map_err(|m| err(v.span().start, m)),
        };
        let repeat = integer("repeat", &raw.repeat, 1, &limits::REPEAT)?;
        let smp = integer("smp", &raw.smp, 1, &limits::SMP)?;
        let memory_mib = integer(
            "memory_mib",
            &raw.memory_mib,
            DEFAULT_MEMORY_MIB,
            &limits::MEMORY_MIB,
        )?;
        let firmware_wait = match &raw.firmware_wait {
            None => FirmwareWait::Skip,
            Some(w) => w
                .get_ref()
                .parse()
                .map_err(|m| err(w.span().start, format!("firmware_wait: {m}")))?,
        };
        let axes_at = raw.axes.span().start;
        let axes = raw.axes.into_inner();
        // Bounded before the values are looked at, so a huge generated axis is refused at once.
        let len = |a: &Option<RawAxis>| a.as_ref().map_or(1, |v| v.get_ref().len());
        let cells = [
            axes.image.get_ref().len(),
            axes.qemu.get_ref().len(),
            axes.firmware.get_ref().len(),
            len(&axes.cpu),
            len(&axes.vars),
        ]
        .into_iter()
        .fold(1usize, usize::saturating_mul);
        if cells > limits::MAX_CELLS {
            return Err(err(
                axes_at,
                format!(
                    "the axes make {cells} cells, more than {} (split the matrix)",
                    limits::MAX_CELLS
                ),
            ));
        }

        fn values<T>(
            axis: &str,
            v: RawAxis,
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
                let at = s.span().start;
                let s = s.into_inner();
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
        // More filters than cells cannot each leave out something; the bound also keeps
        // checking them (and the plan applying them) short.
        if raw.exclude.len() > limits::MAX_CELLS {
            return Err(err(
                raw.exclude[limits::MAX_CELLS].span().start,
                format!("more than {} [[exclude]] filters", limits::MAX_CELLS),
            ));
        }
        let set = |v: Vec<&String>| v.into_iter().cloned().collect::<BTreeSet<String>>();
        let known: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
            ("image", set(images.iter().map(|(s, _)| s).collect())),
            ("qemu", set(qemus.iter().map(|(s, _)| s).collect())),
            ("firmware", set(firmwares.iter().map(|(s, _)| s).collect())),
            ("cpu", set(cpus.iter().collect())),
            ("vars", set(vars.iter().map(|(s, _)| s).collect())),
        ]);
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
            let mut filter = BTreeMap::new();
            for (axis, value) in f {
                let Some(known) = known.get(axis.get_ref().as_str()) else {
                    return Err(err(
                        axis.span().start,
                        format!(
                            "[[exclude]]: unknown axis {:?} (axes: {})",
                            axis.get_ref(),
                            AXES.join(", ")
                        ),
                    ));
                };
                if !known.contains(value.get_ref()) {
                    return Err(err(
                        value.span().start,
                        format!(
                            "[[exclude]]: {} = {:?} is not a value of that axis",
                            axis.get_ref(),
                            value.get_ref()
                        ),
                    ));
                }
                filter.insert(axis.into_inner(), value.into_inner());
            }
            exclude.push(filter);
        }
        let upgrade = match raw.upgrade {
            None => UpgradeSpec {
                scenario: None,
                update: UpdateChoice::Good,
                qemu: QemuProvider::Host,
                firmware: FirmwareProvider::Host,
            },
            Some(u) => {
                let table_at = u.span().start;
                let u = u.into_inner();
                let base = Path::new(file).parent().unwrap_or(Path::new("."));
                // A key's value and offset, or the default at the table.
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
                let update =
                    UpdateChoice::parse(&named).map_err(|m| err(at, format!("[upgrade] {m}")))?;
                let (at, qemu) = or_default(u.qemu, "host");
                let qemu = qemu
                    .parse()
                    .map_err(|m| err(at, format!("[upgrade] qemu: {m}")))?;
                let (at, firmware) = or_default(u.firmware, "host");
                let firmware = firmware
                    .parse()
                    .map_err(|m| err(at, format!("[upgrade] firmware: {m}")))?;
                // The upgrade scenario is checked now, with the rest of the file, not minutes
                // later when the first upgraded image is prepared.
                let scenario = match u.scenario {
                    None => None,
                    Some(p) => {
                        let at = p.span().start;
                        let path = base.join(p.into_inner());
                        Scenario::load(&path)
                            .map_err(|e| err(at, format!("[upgrade] scenario: {e}")))?;
                        Some(path)
                    }
                };
                UpgradeSpec {
                    scenario,
                    update,
                    qemu,
                    firmware,
                }
            }
        };
        Ok(MatrixSpec {
            name: raw.name,
            description: raw.description,
            source: file.into(),
            target,
            timeout,
            silence,
            repeat,
            smp,
            memory_mib,
            firmware_wait,
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
            e.starts_with("m.toml:8:") && e.contains("not a value of that axis"),
            "{e}"
        );
        let e = error(&format!("{SMOKE}[[exclude]]\nkvm = \"on\"\n"));
        assert!(e.contains("unknown axis \"kvm\""), "{e}");

        let e = error(&SMOKE.replace("name = \"t\"", "name = \"t\"\ntarget = \"shell\""));
        assert!(
            e.starts_with("m.toml:3:") && e.contains("target \"shell\""),
            "{e}"
        );
        let e = error(&SMOKE.replace("name = \"t\"", "name = \"t\"\nrepeats = 3"));
        assert!(e.starts_with("m.toml:3:") && e.contains("repeats"), "{e}");
        let e = error("name = \"t\"\n");
        assert!(e.contains("axes"), "{e}");
        let e = error(&format!("{SMOKE}[upgrade]\nupdate = \"worse\"\n"));
        assert!(
            e.starts_with("m.toml:8:")
                && e.contains("[upgrade] update \"")
                && e.contains("neither"),
            "{e}"
        );
        let ok =
            MatrixSpec::parse(&format!("{SMOKE}[upgrade]\nupdate = \"bad\"\n"), "m.toml").unwrap();
        assert_eq!(ok.upgrade.update, UpdateChoice::Bad);
    }

    /// SMOKE with `extra` after the name: the extra lines start at line 3.
    fn with(extra: &str) -> String {
        SMOKE.replace("name = \"t\"", &format!("name = \"t\"\n{extra}"))
    }

    #[test]
    fn numbers_out_of_range_name_their_key_and_line() {
        for key in ["timeout_s", "silence_s", "repeat", "smp", "memory_mib"] {
            for bad in [
                "inf",
                "-inf",
                "nan",
                "-1",
                "0",
                "1e30",
                "1.8e19",
                "18446744073709551616",
                "\"5\"",
            ] {
                // Line 3 is a comment; the key is on line 4.
                let e = error(&with(&format!("# padding\n{key} = {bad}")));
                assert!(
                    e.starts_with("m.toml:4:") && e.contains(key),
                    "{key} = {bad}: {e}"
                );
            }
        }
        for (key, bad) in [
            ("timeout_s", "604801"),
            ("repeat", "101"),
            ("smp", "513"),
            ("memory_mib", "15"),
            ("memory_mib", "1048577"),
            ("repeat", "1.5"),
        ] {
            let e = error(&with(&format!("{key} = {bad}")));
            assert!(e.starts_with("m.toml:3:") && e.contains(key), "{e}");
        }
        let ok = MatrixSpec::parse(
            &with("timeout_s = 604800\nsilence_s = 0.5\nrepeat = 100\nsmp = 512\nmemory_mib = 16"),
            "m.toml",
        )
        .unwrap();
        assert_eq!(ok.timeout, Duration::from_secs(604800));
        assert_eq!(ok.silence, Duration::from_millis(500));
        assert_eq!((ok.repeat, ok.smp, ok.memory_mib), (100, 512, 16));
        let defaults = MatrixSpec::parse(SMOKE, "m.toml").unwrap();
        assert_eq!(defaults.timeout, Duration::from_secs(120));
        assert_eq!(defaults.memory_mib, 1024);
    }

    #[test]
    fn axis_values_are_located_one_by_one_and_the_product_is_bounded() {
        let e = error(&SMOKE.replace(
            "qemu = [\"host\", \"debian:trixie\"]",
            "qemu = [\n  \"host\",\n  \"qemu:9\",\n]",
        ));
        assert!(e.starts_with("m.toml:7:") && e.contains("axis qemu"), "{e}");
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("\"cpu{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // 2 images x 2 qemus x 2 firmwares x 1250 cpus = 10 000 cells: the most allowed.
        assert!(MatrixSpec::parse(&format!("{SMOKE}cpu = [{}]\n", many(1250)), "m.toml").is_ok());
        let e = error(&format!("{SMOKE}cpu = [{}]\n", many(1251)));
        assert!(
            e.starts_with("m.toml:3:") && e.contains("10008 cells, more than 10000"),
            "{e}"
        );
        let filters = |n: usize| "[[exclude]]\nqemu = \"host\"\n".repeat(n);
        assert!(MatrixSpec::parse(&format!("{SMOKE}{}", filters(10_000)), "m.toml").is_ok());
        let e = error(&format!("{SMOKE}{}", filters(10_001)));
        // SMOKE is 6 lines; filter 10 001 starts on line 7 + 2 x 10 000.
        assert!(
            e.starts_with("m.toml:20007:") && e.contains("more than 10000 [[exclude]]"),
            "{e}"
        );
    }

    #[test]
    fn the_upgrade_scenario_is_checked_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.toml");
        let m = m.to_str().unwrap();
        std::fs::write(
            dir.path().join("up.toml"),
            "name = \"up\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\ntimeout = 1e30\n",
        )
        .unwrap();
        let text = format!("{SMOKE}[upgrade]\nupdate = \"bad\"\nscenario = \"up.toml\"\n");
        let e = MatrixSpec::parse(&text, m).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{m}:9: [upgrade] scenario: "))
                && e.contains("up.toml:5: step 1: `timeout` must be"),
            "{e}"
        );
        let e = MatrixSpec::parse(&text.replace("up.toml", "missing.toml"), m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml: No such file"), "{e}");
        std::fs::write(
            dir.path().join("up.toml"),
            "name = \"up\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n",
        )
        .unwrap();
        let ok = MatrixSpec::parse(&text, m).unwrap();
        assert_eq!(ok.upgrade.scenario, Some(dir.path().join("up.toml")));
    }
}
