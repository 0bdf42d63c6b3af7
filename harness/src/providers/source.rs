//! `source:DIR`: a QEMU source tree built for `aarch64-softmmu` only (for `git bisect`).
//!
//! The build is out of tree in `DIR/build-bootwatch`: `../configure
//! --target-list=aarch64-softmmu --disable-docs` (with `--cc="ccache cc"` and `--cxx="ccache
//! c++"` when `ccache` is on `PATH`), then `make -jCORES qemu-system-aarch64`. When
//! `build-bootwatch/config-host.mak` exists, configure is skipped and only the build re-runs
//! (make is incremental). The binary is `build-bootwatch/qemu-system-aarch64` (QEMU >= 5.2;
//! `build-bootwatch/aarch64-softmmu/qemu-system-aarch64` for older trees) and the data directory
//! is `DIR/pc-bios`.
//!
//! The command plan is a pure function ([`plan`]) and is unit-tested; building QEMU for real
//! takes tens of minutes on this kind of host (and QEMU's configure needs ninja and a few
//! development packages), so no test in CI does it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::launch::QemuExec;

/// The build directory inside the source tree.
pub const BUILD_DIR: &str = "build-bootwatch";
/// Where the build's output goes (inside [`BUILD_DIR`]).
pub const LOG_NAME: &str = "bootwatch-build.log";

/// One step of a source build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Working directory.
    pub cwd: PathBuf,
}

/// What the build environment offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildHost {
    /// `build-bootwatch/config-host.mak` exists (configure ran before).
    pub configured: bool,
    /// Parallel jobs for make.
    pub jobs: usize,
    /// `ccache` is on `PATH`.
    pub ccache: bool,
}

/// The commands that build `src` (pure; see the module documentation).
pub fn plan(src: &Path, host: BuildHost) -> Vec<Step> {
    let build = src.join(BUILD_DIR);
    let mut steps = Vec::new();
    if !host.configured {
        let mut args: Vec<OsString> = vec![
            "--target-list=aarch64-softmmu".into(),
            "--disable-docs".into(),
        ];
        if host.ccache {
            args.push("--cc=ccache cc".into());
            args.push("--cxx=ccache c++".into());
        }
        steps.push(Step {
            program: "../configure".into(),
            args,
            cwd: build.clone(),
        });
    }
    steps.push(Step {
        program: "make".into(),
        args: vec![
            format!("-j{}", host.jobs.max(1)).into(),
            "qemu-system-aarch64".into(),
        ],
        cwd: build,
    });
    steps
}

/// The built binary, wherever this QEMU version puts it.
pub fn built_binary(src: &Path) -> Option<PathBuf> {
    let build = src.join(BUILD_DIR);
    [
        build.join("qemu-system-aarch64"),
        build.join("aarch64-softmmu/qemu-system-aarch64"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Build (or bring up to date) the source tree and return the binary and how to run it.
pub(super) async fn build(src: &Path) -> Result<(PathBuf, QemuExec)> {
    let src = std::path::absolute(src)?;
    ensure!(
        src.join("configure").is_file(),
        "{} is not a QEMU source tree (no configure script)",
        src.display()
    );
    let build_dir = src.join(BUILD_DIR);
    std::fs::create_dir_all(&build_dir)
        .with_context(|| format!("creating {}", build_dir.display()))?;
    let host = BuildHost {
        configured: build_dir.join("config-host.mak").is_file(),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ccache: which::which("ccache").is_ok(),
    };
    let log_path = build_dir.join(LOG_NAME);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    for step in plan(&src, host) {
        let shown = crate::launch::command_line(Path::new(&step.program), &step.args);
        tracing::info!(cwd = %step.cwd.display(), "building QEMU: {shown}");
        let status = tokio::process::Command::new(&step.program)
            .args(&step.args)
            .current_dir(&step.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("running `{shown}` in {}", step.cwd.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "`{shown}` in {} failed ({status}); the end of {}:\n{}",
                step.cwd.display(),
                log_path.display(),
                tail.join("\n")
            );
        }
    }
    let Some(binary) = built_binary(&src) else {
        bail!(
            "the build finished but there is no qemu-system-aarch64 in {}",
            build_dir.display()
        );
    };
    let exec = QemuExec {
        data_dir: Some(src.join("pc-bios")),
        ..QemuExec::default()
    };
    Ok((binary, exec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| {
                format!(
                    "{}: {}",
                    s.cwd.display(),
                    crate::launch::command_line(Path::new(&s.program), &s.args)
                )
            })
            .collect()
    }

    #[test]
    fn fresh_tree_configures_then_builds() {
        let steps = plan(
            Path::new("/src/qemu"),
            BuildHost {
                configured: false,
                jobs: 2,
                ccache: false,
            },
        );
        assert_eq!(
            show(&steps),
            [
                "/src/qemu/build-bootwatch: ../configure '--target-list=aarch64-softmmu' --disable-docs",
                "/src/qemu/build-bootwatch: make -j2 qemu-system-aarch64",
            ]
        );
    }

    #[test]
    fn ccache_goes_into_configure() {
        let steps = plan(
            Path::new("/src/qemu"),
            BuildHost {
                configured: false,
                jobs: 8,
                ccache: true,
            },
        );
        assert_eq!(
            steps[0].args,
            [
                "--target-list=aarch64-softmmu",
                "--disable-docs",
                "--cc=ccache cc",
                "--cxx=ccache c++"
            ]
            .map(OsString::from)
        );
        assert_eq!(
            steps[1].args,
            ["-j8", "qemu-system-aarch64"].map(OsString::from)
        );
    }

    #[test]
    fn configured_tree_only_rebuilds() {
        let steps = plan(
            Path::new("/src/qemu"),
            BuildHost {
                configured: true,
                jobs: 0,
                ccache: true,
            },
        );
        assert_eq!(
            show(&steps),
            ["/src/qemu/build-bootwatch: make -j1 qemu-system-aarch64"]
        );
    }

    #[tokio::test]
    async fn not_a_source_tree_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = build(tmp.path()).await.unwrap_err().to_string();
        assert!(err.contains("not a QEMU source tree"), "{err}");
        assert!(!tmp.path().join(BUILD_DIR).exists());
    }

    #[test]
    fn binary_location_old_and_new() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(built_binary(tmp.path()), None);
        let old = tmp.path().join("build-bootwatch/aarch64-softmmu");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("qemu-system-aarch64"), b"").unwrap();
        assert_eq!(
            built_binary(tmp.path()),
            Some(old.join("qemu-system-aarch64"))
        );
        std::fs::write(tmp.path().join("build-bootwatch/qemu-system-aarch64"), b"").unwrap();
        assert_eq!(
            built_binary(tmp.path()),
            Some(tmp.path().join("build-bootwatch/qemu-system-aarch64"))
        );
    }
}
