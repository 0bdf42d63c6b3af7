//! `source:DIR`: a QEMU source tree built for `aarch64-softmmu` only (for `git bisect`).
//!
//! The build is out of tree in `DIR/build-bootwatch`: `../configure --target-list=aarch64-softmmu
//! --disable-docs --disable-werror` (with `--cc="ccache cc"` and `--cxx="ccache c++"` when
//! `ccache` is on `PATH`), then `make -jCORES qemu-system-aarch64`. A git checkout defaults to
//! `-Werror`, which an old commit built with a newer compiler often trips; `--disable-werror` keeps
//! such commits building. The three options are ones QEMU's configure has accepted before and since
//! its move to meson (5.2), so any commit a bisect lands on takes the same command line; options
//! that would only trim configure (`--disable-tools`, `--disable-blobs`/`--disable-install-blobs`)
//! are left out because their spelling changed or they went away between releases. When
//! `build-bootwatch/config.status` exists (configure writes it last, only when it succeeds),
//! configure is skipped and only the build re-runs (make is incremental, and re-runs meson itself
//! when the build files changed); a configure that failed half-way leaves `config-host.mak` but no
//! `config.status`, so the next run configures again. The binary is
//! `build-bootwatch/qemu-system-aarch64` (QEMU >= 5.2; `build-bootwatch/aarch64-softmmu/
//! qemu-system-aarch64` for older trees) and the data directory is `DIR/pc-bios`.
//!
//! The tree must be complete: configure (7.2) checks that the prebuilt ROMs and the compressed
//! edk2 images in `pc-bios` exist. A git checkout has them; Debian's `+dfsg` source tarball strips
//! them, so it needs placeholder files there first.
//!
//! The command plan is a pure function ([`plan`]) and is unit-tested; no test in CI builds QEMU.
//! Measured once for QEMU 7.2 on a 2-core x86_64 host with gcc 12: configure about 11 s, a cold
//! build about 4 minutes (1824 ninja steps), about 25 s in all into a fresh build directory with a
//! warm ccache, 0.5 s when nothing changed; the build directory is about 350 MB. Configure needs
//! ninja, meson (7.2 takes the system's from 0.61.5, else the tree's bundled copy), flex, bison and
//! the glib, pixman and libfdt development packages, plus libslirp's for `-netdev user` (without it
//! QEMU builds, but cells with networking cannot start).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use tokio_util::sync::CancellationToken;

use crate::core::launch::QemuExec;
use crate::sys::proc::Tool;

/// The build directory inside the source tree.
pub const BUILD_DIR: &str = "build-bootwatch";
/// What configure writes last, and only when it succeeds (in [`BUILD_DIR`]).
pub const CONFIGURED_MARKER: &str = "config.status";
/// The options every configure gets (see the module documentation).
pub const CONFIGURE_OPTIONS: [&str; 3] = [
    "--target-list=aarch64-softmmu",
    "--disable-docs",
    "--disable-werror",
];
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
    /// `build-bootwatch/config.status` exists (configure ran before and succeeded).
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
        let mut args: Vec<OsString> = CONFIGURE_OPTIONS.iter().map(OsString::from).collect();
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

/// Whether configure already succeeded in `build` (the build directory).
pub fn is_configured(build: &Path) -> bool {
    build.join(CONFIGURED_MARKER).is_file()
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

/// Build (or bring up to date) the source tree and return the binary and how to run it. When
/// `cancel` fires, configure or make is stopped with its whole process group (the build
/// directory stays as make left it; the next build continues from there).
pub(super) async fn build(src: &Path, cancel: &CancellationToken) -> Result<(PathBuf, QemuExec)> {
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
        configured: is_configured(&build_dir),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ccache: which::which("ccache").is_ok(),
    };
    let log_path = build_dir.join(LOG_NAME);
    std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    for step in plan(&src, host) {
        let tool = Tool::new(&step.program)
            .args(&step.args)
            .current_dir(&step.cwd)
            .log_to(&log_path)
            .cancel_on(cancel);
        tracing::info!(cwd = %step.cwd.display(), "building QEMU: {}", tool.command_line());
        tool.run().await?;
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
                    crate::core::launch::command_line(Path::new(&s.program), &s.args)
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
                "/src/qemu/build-bootwatch: ../configure '--target-list=aarch64-softmmu' \
                 --disable-docs --disable-werror",
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
                "--disable-werror",
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
        let err = build(tmp.path(), &CancellationToken::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a QEMU source tree"), "{err}");
        assert!(!tmp.path().join(BUILD_DIR).exists());
    }

    #[test]
    fn a_failed_configure_is_not_configured() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_configured(tmp.path()));
        // What QEMU's configure leaves when meson setup fails: config-host.mak, no config.status.
        // make would then fail on the missing config.status; configure must run again.
        std::fs::write(tmp.path().join("config-host.mak"), b"").unwrap();
        assert!(!is_configured(tmp.path()));
        std::fs::write(tmp.path().join("config.status"), b"").unwrap();
        assert!(is_configured(tmp.path()));
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
