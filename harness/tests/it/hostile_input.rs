//! Hostile numbers in every input a user writes, through the real `bootwatch` binary: each flag
//! of each command, each number of a scenario step and of a matrix file, GitLab's shard
//! variables, and a catalog given by `BOOTWATCH_CATALOG` (which has no numbers: numbers where
//! its text belongs). Every value must be a usage error (exit 2) naming its flag, or its file,
//! line and key, before anything starts: never a panic (exit 101), and nothing written. Input
//! files that are devices, FIFOs or too large are refused at once. Local recipes have no command-
//! line path (they are compiled in); `inputs::images` tests their numbers the same way.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{bin, text};

/// Values no numeric input may accept: not numbers, negative, zero, too large for any type.
const HOSTILE: [&str; 8] = [
    "inf",
    "-inf",
    "nan",
    "-1",
    "0",
    "1e30",
    "1.8e19",
    "18446744073709551616",
];

/// A scratch directory with the results and cache roots bootwatch is pointed at; neither may
/// come to exist.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn results(&self) -> PathBuf {
        self.path("results")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `bootwatch ARGS`, with the cache in the scratch directory and no shard variables.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = bin();
        c.args(args)
            .env("BOOTWATCH_CACHE", self.path("cache"))
            .env_remove("BOOTWATCH_CATALOG")
            .env_remove("CI_NODE_INDEX")
            .env_remove("CI_NODE_TOTAL");
        c
    }

    /// Asserts `out` is a usage error mentioning every needle, without a panic or a trace left.
    fn assert_refused(&self, what: &str, out: &Output, needles: &[&str]) {
        self.assert_refused_with(2, what, out, needles);
    }

    /// [`Scratch::assert_refused`] for a command whose usage errors exit with `code`.
    fn assert_refused_with(&self, code: i32, what: &str, out: &Output, needles: &[&str]) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(101),
            "{what} panicked: {}",
            text(out)
        );
        assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
        assert_eq!(out.status.code(), Some(code), "{what}: {}", text(out));
        for n in needles {
            assert!(stderr.contains(n), "{what}: wanted {n:?} in: {stderr}");
        }
        for left in [self.results(), self.path("cache")] {
            assert!(!left.exists(), "{what} wrote {}", left.display());
        }
    }

    fn refused(&self, what: &str, args: &[&str], needles: &[&str]) {
        let out = self.command(args).output().unwrap();
        self.assert_refused(what, &out, needles);
    }
}

/// The 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
        + 1
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SCENARIO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scenarios/upgrade-reboot.toml"
);

fn matrix_file() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/matrix/crash-host.toml"
    ))
    .unwrap()
}

#[test]
fn flags_out_of_range_are_usage_errors() {
    let x = Scratch::new();
    let results = x.results();
    let r = s(&results);
    let missing = x.path("no-such-disk.img");
    // `boot` has no dry run; its flags are checked before the disk is looked at.
    let boot = ["boot", "--disk", s(&missing), "--results", r];
    for flag in ["--timeout", "--silence"] {
        for v in HOSTILE.iter().chain(&["604801", "soon"]) {
            let arg = format!("{flag}={v}");
            x.refused(&arg, &[&boot[..], &[&arg]].concat(), &[flag]);
        }
    }
    let run = [
        "run",
        SCENARIO,
        "--image",
        "debian-12-local",
        "--dry-run",
        "--results",
        r,
    ];
    for (flag, extra) in [
        ("--smp", ["513", "4294967296"]),
        ("--memory", ["15", "1048577"]),
    ] {
        for v in HOSTILE.iter().chain(&extra) {
            let arg = format!("{flag}={v}");
            x.refused(&arg, &[&boot[..], &[&arg]].concat(), &[flag]);
            x.refused(&arg, &[&run[..], &[&arg]].concat(), &[flag]);
        }
    }
    for v in HOSTILE.iter().chain(&["65536"]) {
        for arg in [format!("--forward={v}:22"), format!("--forward=2222:{v}")] {
            x.refused(&arg, &[&boot[..], &[&arg]].concat(), &["--forward"]);
        }
    }

    let m = x.write("m.toml", &matrix_file());
    let matrix = ["matrix", s(&m), "--dry-run", "--results", r];
    for (flag, extra) in [("--concurrency", "257"), ("--repeat", "101")] {
        for v in HOSTILE.iter().chain(&[extra]) {
            let arg = format!("{flag}={v}");
            x.refused(&arg, &[&matrix[..], &[&arg]].concat(), &[flag]);
        }
    }
    for v in HOSTILE {
        for shard in [format!("{v}/2"), format!("1/{v}"), v.to_string()] {
            let arg = format!("--shard={shard}");
            x.refused(&arg, &[&matrix[..], &[&arg]].concat(), &["--shard"]);
        }
        for (var, other) in [
            ("CI_NODE_INDEX", "CI_NODE_TOTAL"),
            ("CI_NODE_TOTAL", "CI_NODE_INDEX"),
        ] {
            let out = x
                .command(&matrix)
                .env(var, v)
                .env(other, if other == "CI_NODE_TOTAL" { "2" } else { "1" })
                .output()
                .unwrap();
            x.assert_refused(&format!("{var}={v}"), &out, &[var]);
        }
    }
    // The same commands with good values run (these tests could not fail otherwise).
    for args in [
        &[
            &matrix[..],
            &["--concurrency=256", "--repeat=100", "--shard=1/2"],
        ]
        .concat()[..],
        &[&run[..], &["--smp=512", "--memory=16"]].concat()[..],
    ] {
        let out = x.command(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    assert!(!results.exists());
}

/// `check --repeat`, `bisect --repeat` and `images build --jobs`. `check` keeps its own
/// contract for a command line it cannot parse: exit 128, so that `git bisect run` stops
/// instead of counting every commit bad (README, `bootwatch check`).
#[test]
fn repeat_and_jobs_flags_out_of_range_are_usage_errors() {
    let x = Scratch::new();
    let results = x.results();
    let r = s(&results);
    let missing = x.path("no-such-disk.img");
    let check = ["check", "--disk", s(&missing), "--results", r];
    let bisect = ["bisect", BISECT, "--dry-run", "--results", r];
    for v in HOSTILE.iter().chain(&["101"]) {
        let arg = format!("--repeat={v}");
        let out = x.command(&[&check[..], &[&arg]].concat()).output().unwrap();
        x.assert_refused_with(128, &format!("check {arg}"), &out, &["--repeat"]);
        x.refused(
            &format!("bisect {arg}"),
            &[&bisect[..], &[&arg]].concat(),
            &["--repeat"],
        );
    }
    for v in HOSTILE.iter().chain(&["9", "256"]) {
        let arg = format!("--jobs={v}");
        x.refused(
            &format!("images build {arg}"),
            &["images", "build", &arg, "debian-12-local"],
            &["--jobs"],
        );
    }
    // Good values pass the command line: `check` goes on to its (missing) disk, which is
    // undetermined (125), not a usage error; the bisection's dry run succeeds.
    let out = x
        .command(&[&check[..], &["--repeat=100"]].concat())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let out = x
        .command(&[&bisect[..], &["--repeat=100"]].concat())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!results.exists());
}

const BISECT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scenarios/bisect/edk2-on-qemu-5.2.toml"
);

/// Every number of a bisect file (`timeout_s`, `silence_s`, `repeat`, `smp`, `memory_mib`, and
/// those of its `[upgrade]` scenario): a usage error naming the file, the line and the key.
#[test]
fn bisect_numbers_out_of_range_name_file_line_and_key() {
    let x = Scratch::new();
    let results = x.results();
    let good = std::fs::read_to_string(BISECT).unwrap();
    for (key, extra) in [
        ("timeout_s", &["604801"][..]),
        ("silence_s", &["604801"][..]),
        ("repeat", &["101", "1.5"][..]),
        ("smp", &["513", "1.5"][..]),
        ("memory_mib", &["15", "1048577"][..]),
    ] {
        for v in HOSTILE.iter().chain(extra) {
            // After `image`, before the lists.
            let body = good.replacen("\nqemu = ", &format!("\n{key} = {v}\nqemu = "), 1);
            let f = x.write("b.toml", &body);
            let line = line_of(&body, &format!("{key} = "));
            x.refused(
                &format!("{key} = {v}"),
                &dry_run("bisect", &f, &results),
                &[&format!("{}:{line}:", f.display()), key],
            );
        }
    }
    upgrade_scenario_is_checked(&x, "bisect", &good, "", "inf");
    // The file with good values at the ends of each range is accepted.
    let body = good.replacen(
        "\nqemu = ",
        "\ntimeout_s = 604800\nsilence_s = 0.5\nrepeat = 100\nsmp = 512\nmemory_mib = 16\nqemu = ",
        1,
    );
    let f = x.write("b.toml", &body);
    let out = x
        .command(&dry_run("bisect", &f, &results))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!results.exists());
}

/// `COMMAND FILE --dry-run --results RESULTS`: a matrix or bisect file checked without booting.
fn dry_run<'a>(command: &'a str, file: &'a Path, results: &'a Path) -> [&'a str; 5] {
    [command, s(file), "--dry-run", "--results", s(results)]
}

/// A matrix or bisect file (`good` with an `[upgrade]` table of `table` and a `scenario`) whose
/// upgrade scenario's step has `timeout = v`: refused at the file's `scenario` line, naming the
/// scenario's own line and key (the scenario is checked with the file).
fn upgrade_scenario_is_checked(x: &Scratch, command: &str, good: &str, table: &str, v: &str) {
    let up = x.write(
        "up.toml",
        &format!("name = \"up\"\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\ntimeout = {v}\n"),
    );
    let body = format!("{good}\n[upgrade]\n{table}scenario = \"up.toml\"\n");
    let f = x.write("upgraded.toml", &body);
    x.refused(
        &format!("{command}: an upgrade scenario with timeout = {v}"),
        &dry_run(command, &f, &x.results()),
        &[
            &format!(
                "{}:{}: [upgrade] scenario",
                f.display(),
                line_of(&body, "scenario = ")
            ),
            &format!("{}:5: step 1: `timeout`", up.display()),
        ],
    );
}

#[test]
fn scenario_numbers_out_of_range_name_file_line_and_key() {
    let x = Scratch::new();
    let results = x.results();
    let head = "name = \"x\"\n\n[[step]]\ndo = \"boot\"\nuntil = \"login\"\n\n[[step]]\ndo = \"login\"\n\n";
    // Every number a step takes (in the first step, or in a third one after the login), and
    // the values beyond the hostile ones that are out of range.
    let cases: [(&str, Option<&str>, &[&str]); 8] = [
        ("timeout", None, &["604801"]),
        ("silence", None, &["604801"]),
        ("timeout", Some("do = \"login\""), &["604801"]),
        (
            "timeout",
            Some("do = \"run\"\ncommand = \"true\""),
            &["604801"],
        ),
        (
            "expect_exit",
            Some("do = \"run\"\ncommand = \"true\""),
            &["256", "1.5"],
        ),
        ("timeout", Some("do = \"upgrade\""), &["604801"]),
        (
            "timeout",
            Some("do = \"watch\"\nuntil = \"login\""),
            &["604801"],
        ),
        (
            "silence",
            Some("do = \"watch\"\nuntil = \"login\""),
            &["604801"],
        ),
    ];
    for (key, step, extra) in cases {
        for v in HOSTILE.iter().chain(extra) {
            if key == "expect_exit" && *v == "0" {
                continue; // 0 is the default exit status.
            }
            let body = match step {
                None => head.replacen(
                    "until = \"login\"\n",
                    &format!("until = \"login\"\n{key} = {v}\n"),
                    1,
                ),
                Some(step) => format!("{head}[[step]]\n{step}\n{key} = {v}\n"),
            };
            let f = x.write("bad.toml", &body);
            let line = line_of(&body, &format!("{key} = "));
            x.refused(
                &format!("{key} = {v} in {step:?}"),
                &[
                    "run",
                    s(&f),
                    "--image",
                    "debian-12-local",
                    "--dry-run",
                    "--results",
                    s(&results),
                ],
                &[&format!("{}:{line}:", f.display()), key],
            );
        }
    }
}

#[test]
fn matrix_numbers_out_of_range_name_file_line_and_key() {
    let x = Scratch::new();
    let results = x.results();
    let good = matrix_file();
    for (key, extra) in [
        ("timeout_s", &["604801"][..]),
        ("silence_s", &["604801"][..]),
        ("repeat", &["101", "1.5"][..]),
        ("smp", &["513"][..]),
        ("memory_mib", &["15", "1048577"][..]),
    ] {
        for v in HOSTILE.iter().chain(extra) {
            // Replace the key where the file has it, else add it after the name.
            let body = if good.lines().any(|l| l.starts_with(&format!("{key} = "))) {
                good.lines()
                    .map(|l| {
                        if l.starts_with(&format!("{key} = ")) {
                            format!("{key} = {v}")
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                good.replacen("\n[axes]", &format!("\n{key} = {v}\n[axes]"), 1)
            };
            let f = x.write("m.toml", &body);
            let line = line_of(&body, &format!("{key} = "));
            x.refused(
                &format!("{key} = {v}"),
                &dry_run("matrix", &f, &results),
                &[&format!("{}:{line}:", f.display()), key],
            );
        }
    }
    upgrade_scenario_is_checked(&x, "matrix", &good, "update = \"bad\"\n", "1e30");
}

#[test]
fn catalog_numbers_where_text_belongs_name_file_line_and_key() {
    let x = Scratch::new();
    let results = x.results();
    let catalog = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-images/catalog.toml"
    ))
    .unwrap();
    // The catalog's first image, alone: every key of it, each given a number.
    let start = catalog.find("\n[[image]]\n").unwrap() + 1;
    let end = catalog[start..]
        .find("\n[[image]]\n")
        .map_or(catalog.len(), |e| start + e);
    let first = &catalog[start..end];
    let name = first
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .unwrap()
        .trim_end_matches('"');
    let keys: Vec<&str> = first
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .filter(|k| !k.starts_with('#') && !k.contains('['))
        .collect();
    assert!(keys.len() >= 15, "{keys:?}");
    for key in keys {
        for v in ["inf", "nan", "-1", "1e30", "18446744073709551616"] {
            let body = first
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key} = ")) {
                        format!("{key} = {v}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let f = x.write("catalog.toml", &body);
            let line = line_of(&body, &format!("{key} = "));
            let needles = [format!("{}:{line}:", f.display()), key.to_string()];
            let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
            for args in [
                &["images", "list"][..],
                &[
                    "run",
                    SCENARIO,
                    "--image",
                    name,
                    "--dry-run",
                    "--results",
                    s(&results),
                ][..],
            ] {
                let out = x
                    .command(args)
                    .env("BOOTWATCH_CATALOG", &f)
                    .output()
                    .unwrap();
                x.assert_refused(&format!("{key} = {v} ({})", args[0]), &out, &needles);
            }
        }
    }
}

#[test]
fn input_files_that_never_end_or_block_are_refused_at_once() {
    let x = Scratch::new();
    let results = x.results();
    let fifo = x.path("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // 4 MiB and one byte, sparse: refused by its size.
    let big = x.path("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((4 << 20) + 1)
        .unwrap();
    for (input, why) in [
        (Path::new("/dev/zero"), "is a device"),
        (&fifo, "is a FIFO"),
        (&big, "larger than 4 MiB"),
    ] {
        let t = Instant::now();
        let named = format!("{}: {why}", input.display());
        let out = x
            .command(&["images", "list"])
            .env("BOOTWATCH_CATALOG", input)
            .output()
            .unwrap();
        x.assert_refused(&format!("catalog {named}"), &out, &[&named]);
        x.refused(
            &format!("scenario {named}"),
            &[
                "run",
                s(input),
                "--image",
                "debian-12-local",
                "--dry-run",
                "--results",
                s(&results),
            ],
            &[&named],
        );
        x.refused(
            &format!("matrix {named}"),
            &["matrix", s(input), "--dry-run", "--results", s(&results)],
            &[&named],
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{named}: {:?}",
            t.elapsed()
        );
    }
}

/// A standard output that goes away (`bootwatch ... | head`) is not a panic (exit 101): the
/// rest of the output is dropped and the command ends as it would have (here `fixtures`, whose
/// files are all written); a full disk behind standard output is said once on stderr.
#[test]
fn a_closed_or_full_standard_output_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fx");
    let mut child = bin()
        .args(["fixtures", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end closes before bootwatch writes its first line.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("panicked"),
        "{}",
        text(&o)
    );
    for f in ["crash.img", "hello.img", "silent.img"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = bin()
        .args(["fixtures", "--out"])
        .arg(&out)
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("writing to standard output failed").count(),
        1,
        "{err}"
    );
}
