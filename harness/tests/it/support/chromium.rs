//! Headless Chromium (test tooling): render `matrix.html` to its DOM or to a PNG.
//! Each call uses a fresh profile directory, no network features and a time limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long one Chromium render may take.
const TIME_LIMIT: Duration = Duration::from_secs(90);

/// The Chromium binary: `chromium` (Debian), `chromium-browser`, `google-chrome`.
pub fn chromium_binary() -> anyhow::Result<PathBuf> {
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        if let Ok(p) = which::which(name) {
            return Ok(p);
        }
    }
    bail!("chromium is not installed: run .ci/install-deps (Debian package `chromium`)")
}

/// The DOM of `html` after its scripts ran (`--dump-dom`), opened with `#fragment` when given
/// (e.g. `qemu=debian:trixie&firmware=debian:2022.11`).
pub fn dump_dom(html: &Path, fragment: Option<&str>) -> anyhow::Result<String> {
    let mut url = file_url(html)?;
    if let Some(f) = fragment {
        url.push('#');
        url.push_str(f);
    }
    let out = run(&["--dump-dom".to_string(), url])?;
    String::from_utf8(out).context("chromium's --dump-dom output is not UTF-8")
}

/// A PNG screenshot of `html` in a 1200x800 window.
pub fn screenshot(html: &Path, png: &Path) -> anyhow::Result<()> {
    let png_abs = std::path::absolute(png)?;
    let _ = std::fs::remove_file(&png_abs);
    run(&[
        format!("--screenshot={}", png_abs.display()),
        "--window-size=1200,800".to_string(),
        "--hide-scrollbars".to_string(),
        file_url(html)?,
    ])?;
    let bytes = std::fs::read(&png_abs)
        .with_context(|| format!("chromium did not write {}", png_abs.display()))?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("{} is not a PNG", png_abs.display());
    }
    Ok(())
}

fn file_url(path: &Path) -> anyhow::Result<String> {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const PATH: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    let abs = std::path::absolute(path)?;
    if !abs.is_file() {
        bail!("{} does not exist", abs.display());
    }
    let s = abs
        .to_str()
        .with_context(|| format!("{} is not UTF-8", abs.display()))?;
    Ok(format!("file://{}", utf8_percent_encode(s, PATH)))
}

/// Runs headless Chromium with `args` and returns its stdout.
fn run(args: &[String]) -> anyhow::Result<Vec<u8>> {
    let chromium = chromium_binary()?;
    let profile = tempfile::Builder::new()
        .prefix("bootwatch-chromium-")
        .tempdir()
        .context("creating a Chromium profile directory")?;
    let mut cmd = Command::new(&chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", chromium.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + TIME_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // Chromium's helpers share its process group (ours alone).
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            bail!("chromium did not finish within {} s", TIME_LIMIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Helpers that outlived the browser would hold the pipes open.
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let tail: String = String::from_utf8_lossy(&stderr)
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("chromium failed ({status}):\n{tail}");
    }
    Ok(stdout)
}
