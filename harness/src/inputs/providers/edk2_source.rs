//! `source:DIR`: ArmVirtQemu (AArch64) built from an edk2 checkout at its current commit (for
//! `git bisect`), the firmware counterpart of the QEMU [`super::source`] provider.
//!
//! # What is built, and how
//!
//! The tree is built the way Debian's `debian/rules` (edk2 2025.02-8, the newest whose packaging
//! the archive here serves) builds `qemu-efi-aarch64`: `build -a AARCH64 -t TOOLCHAIN -p
//! ArmVirtPkg/ArmVirtQemu.dsc -b RELEASE|DEBUG` with the flags of one of Debian's three code
//! images ([`Variant`]: `no-secboot` by default, `secboot`, `strictnx`), without Debian's
//! `PcdFirmwareVendor`/`PcdFirmwareVersionString`/`PcdFirmwareReleaseDateString` (they only
//! name the package in the banner). The toolchain tag is `GCC` when the tree's
//! `BaseTools/Conf/tools_def.template` defines it (edk2-stable202411 on; it has the same flags
//! as `GCC5`, which later trees dropped) and `GCC5` before, so a bisect over a range where both
//! exist keeps one build directory. The host tools are Debian's: `gcc-aarch64-linux-gnu` (the
//! tools' prefix is `aarch64-linux-gnu-`), `iasl` (acpica-tools), `uuid-dev`, `python3`, `make`.
//! When `ccache` is on `PATH`, the cross compiler is run through it (a directory with an
//! `aarch64-linux-gnu-gcc` link to ccache, first on the build's `PATH`: edk2 quotes the tool path,
//! so a `"ccache aarch64-linux-gnu-"` prefix would not run); a bisect goes back and forth over
//! the same files, and ccache turns those rebuilds into cache hits.
//!
//! The steps ([`plan`], pure and unit-tested): `make -C BaseTools/Source/C` (incremental: a
//! bisect step that did not touch BaseTools costs a second), then edk2's `build` with its
//! environment set directly rather than through `edksetup.sh`: `WORKSPACE` is a directory per
//! variant and build type under the tree's `Build/bootwatch/` (edk2's `.gitignore` covers
//! `Build/`, so the checkout stays clean), `PACKAGES_PATH` is the tree, `CONF_PATH` is the
//! workspace's `Conf`, refreshed from the tree's `BaseTools/Conf/*.template` before every build
//! (what `edksetup.sh --reconfig` does; a bisect that moves across a `tools_def` change must not
//! build with the old one). Each variant keeps its own build directory, so edk2's own
//! incremental build applies per variant and one variant's flags never leak into another's
//! objects. The result is `QEMU_EFI.fd` and `QEMU_VARS.fd` from the build's `FV` directory,
//! both padded to 64 MiB as Debian pads `AAVMF_CODE.fd`/`AAVMF_VARS.fd`, so they boot as pflash
//! like Debian's.
//!
//! # Submodules
//!
//! edk2 needs the contents of several git submodules (OpenSSL, libfdt, MIPI SyS-T, libspdm's
//! headers, Mbed TLS's, brotli). The provider never downloads them: a tree must have them, and a
//! missing one is a clear error naming it. Two ways to fill them are offered:
//! - a directory laid out like an edk2 tree in the environment variable
//!   [`SUBMODULES_ENV`] (Debian's edk2 source package unpacked, `apt-get source edk2` or its
//!   `.orig.tar.xz`): each submodule directory that is empty in the tree is copied from there;
//! - BaseTools' brotli, which Debian's source package strips, is copied from
//!   `MdeModulePkg`'s brotli when the tree pins both to the same commit (every edk2 release
//!   does).
//!
//! Why not fetch Debian's source package here: the submodules must match the tree's *commit*,
//! and a bisect lands on commits between releases whose pins no Debian release has; and the
//! archive reachable on the project's machines serves only some source packages (edk2 2022.11's
//! and 2025.02's `.orig.tar.xz`, not 2026.08's). So the choice of which contents to use stays
//! with the user, and each build's record lists the pins it was built against.
//!
//! # Cache and provenance
//!
//! The padded images are kept under `CACHE/edk2-source/KEY/`, where KEY ([`cache_key`]) hashes
//! the commit, the diff of a dirty tree against it (untracked files are not part of it), the
//! submodule pins, the variant, build type and toolchain tag, and the cross compiler's version.
//! So a commit built once is never built again with the same flags, and a dirty tree is rebuilt
//! whenever its diff changes. A tree that is not a git checkout is built every time. The
//! resolved firmware carries a [`SourceBuild`] (commit, `git describe`, dirty flag, flags,
//! pins), and its `package` is a one-line form of it, so every record names what was built.
//!
//! A failed build is an error quoting the end of its log (`Build/bootwatch/NAME/build.log`); a
//! cancelled one stops `make`/`build` with their process groups and leaves the build directory
//! for the next incremental build. Measured on the project's 2-core host (RELEASE,
//! `no-secboot`): BaseTools 40-80 s, a full build about 7-10 min, one driver rebuilt about 15 s.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::sys::proc::Tool;

/// The environment variable naming a directory laid out like an edk2 tree from which empty
/// submodule directories are filled (see the module documentation).
pub const SUBMODULES_ENV: &str = "BOOTWATCH_EDK2_SUBMODULES";
/// Where the provider keeps its workspaces, inside the tree.
pub const WORKSPACES_DIR: &str = "Build/bootwatch";
/// The build's log inside a workspace.
pub const LOG_NAME: &str = "build.log";
/// The platform description every build uses.
pub const PLATFORM: &str = "ArmVirtPkg/ArmVirtQemu.dsc";
/// The cross compiler's prefix (Debian's `gcc-aarch64-linux-gnu`).
pub const CROSS_PREFIX: &str = "aarch64-linux-gnu-";
/// The size QEMU's `virt` pflash banks have, and Debian pads its images to.
pub const PFLASH_SIZE: u64 = crate::core::launch::PFLASH_SIZE;
/// The submodules an ArmVirtQemu build reads (those the tree's `.gitmodules` lists are checked).
pub const NEEDED_SUBMODULES: [&str; 7] = [
    "CryptoPkg/Library/OpensslLib/openssl",
    "CryptoPkg/Library/MbedTlsLib/mbedtls",
    "MdePkg/Library/BaseFdtLib/libfdt",
    "MdePkg/Library/MipiSysTLib/mipisyst",
    "SecurityPkg/DeviceSecurity/SpdmLib/libspdm",
    "MdeModulePkg/Library/BrotliCustomDecompressLib/brotli",
    "BaseTools/Source/C/BrotliCompress/brotli",
];
/// BaseTools' brotli and the one it can be copied from (same pin in every edk2 release).
const BROTLI_ALIAS: (&str, &str) = (
    "BaseTools/Source/C/BrotliCompress/brotli",
    "MdeModulePkg/Library/BrotliCustomDecompressLib/brotli",
);
/// How long a git query may take.
const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Which of Debian's code images to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// `AAVMF_CODE.no-secboot.fd` (Debian's `AAVMF_CODE.fd`): no Secure Boot, the memory
    /// attribute protocol uninstalled.
    NoSecboot,
    /// `AAVMF_CODE.secboot.fd`: Secure Boot, TPM 2, no UEFI shell, memory attribute protocol
    /// uninstalled.
    Secboot,
    /// `AAVMF_CODE.secboot.strictnx.fd`: as `secboot`, with the memory attribute protocol.
    Strictnx,
}

/// RELEASE or DEBUG (DEBUG prints the firmware's log and, on an exception, the registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BuildType {
    Release,
    Debug,
}

impl BuildType {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildType::Release => "RELEASE",
            BuildType::Debug => "DEBUG",
        }
    }
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::NoSecboot => "no-secboot",
            Variant::Secboot => "secboot",
            Variant::Strictnx => "strictnx",
        }
    }

    /// The `build` flags of Debian's `debian/rules` (2025.02-8) for this image, without the
    /// PCDs that only name the package.
    pub fn flags(self) -> Vec<&'static str> {
        // COMMON_FLAGS
        let mut f = vec![
            "-DCC_MEASUREMENT_ENABLE=TRUE",
            "-DNETWORK_HTTP_BOOT_ENABLE=TRUE",
            "-DNETWORK_IP6_ENABLE=TRUE",
            "-DNETWORK_TLS_ENABLE",
        ];
        if self != Variant::NoSecboot {
            // AAVMF_COMMON_FLAGS
            f.extend([
                "-DTPM2_ENABLE=TRUE",
                "-DTPM2_CONFIG_ENABLE=TRUE",
                "-DCAVIUM_ERRATUM_27456=TRUE",
            ]);
        }
        if self != Variant::Strictnx {
            // NO_STRICTNX_COMMON_FLAGS
            f.extend(["--pcd", "PcdUninstallMemAttrProtocol=TRUE"]);
        }
        if self != Variant::NoSecboot {
            f.extend(["-DBUILD_SHELL=FALSE", "-DSECURE_BOOT_ENABLE=TRUE"]);
        }
        f
    }
}

/// What a `source:DIR[,OPTION...]` firmware spelling asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Options {
    pub variant: Variant,
    pub build_type: BuildType,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            variant: Variant::NoSecboot,
            build_type: BuildType::Release,
        }
    }
}

impl Options {
    /// The accepted option words, for error messages.
    pub const WORDS: &'static str = "release, debug, no-secboot, secboot, strictnx";

    /// Parses the comma-separated options after the directory (`debug`, `strictnx`, ...). Each
    /// of the two settings may be given once.
    pub fn parse(words: &[&str]) -> Result<Options, String> {
        let mut variant = None;
        let mut build_type = None;
        for w in words {
            let (v, t) = match w.trim() {
                "release" => (None, Some(BuildType::Release)),
                "debug" => (None, Some(BuildType::Debug)),
                "no-secboot" | "default" => (Some(Variant::NoSecboot), None),
                "secboot" => (Some(Variant::Secboot), None),
                "strictnx" | "secboot.strictnx" => (Some(Variant::Strictnx), None),
                other => {
                    return Err(format!(
                        "{other:?} is not an edk2 source build option (known: {})",
                        Options::WORDS
                    ));
                }
            };
            if v.is_some() && variant.replace(v).is_some() {
                return Err("more than one variant (no-secboot, secboot, strictnx)".into());
            }
            if t.is_some() && build_type.replace(t).is_some() {
                return Err("more than one build type (release, debug)".into());
            }
        }
        Ok(Options {
            variant: variant.flatten().unwrap_or(Variant::NoSecboot),
            build_type: build_type.flatten().unwrap_or(BuildType::Release),
        })
    }

    /// The canonical option words (empty for the defaults), as the spelling writes them.
    pub fn words(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if self.build_type == BuildType::Debug {
            w.push("debug");
        }
        if self.variant != Variant::NoSecboot {
            w.push(self.variant.as_str());
        }
        w
    }

    /// The workspace's directory name, e.g. `release-no-secboot`.
    pub fn workspace_name(&self) -> String {
        format!(
            "{}-{}",
            self.build_type.as_str().to_ascii_lowercase(),
            self.variant.as_str()
        )
    }
}

/// The toolchain tag for a tree, from its `tools_def.template` (see the module documentation).
pub fn toolchain_tag(tools_def_template: &str) -> Option<&'static str> {
    let defines = |tag: &str| {
        let needle = format!("_{tag}_AARCH64_CC_FLAGS");
        tools_def_template.lines().any(|l| {
            let l = l.trim_start();
            !l.starts_with('#')
                && l.split('=')
                    .next()
                    .is_some_and(|k| k.trim().ends_with(&needle))
        })
    };
    if defines("GCC") {
        Some("GCC")
    } else if defines("GCC5") {
        Some("GCC5")
    } else {
        None
    }
}

/// One step of the build: a program, its arguments, working directory and the environment it
/// adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
}

/// What the build plan depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    /// The edk2 tree (absolute).
    pub tree: PathBuf,
    pub options: Options,
    /// `GCC` or `GCC5`.
    pub toolchain: &'static str,
    /// Parallel jobs.
    pub jobs: usize,
    /// A directory holding `aarch64-linux-gnu-gcc` as a link to ccache, when ccache is used.
    pub ccache_dir: Option<PathBuf>,
    /// The `PATH` the build starts from.
    pub path: OsString,
}

/// The workspace of a variant and build type inside `tree`.
pub fn workspace(tree: &Path, options: &Options) -> PathBuf {
    tree.join(WORKSPACES_DIR).join(options.workspace_name())
}

/// The commands that build the firmware (pure; see the module documentation).
pub fn plan(input: &PlanInput) -> Vec<Step> {
    let tree = &input.tree;
    let ws = workspace(tree, &input.options);
    let jobs = input.jobs.max(1);
    let tools = tree.join("BaseTools");
    let mut path: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &input.ccache_dir {
        path.push(dir.clone());
    }
    path.push(tools.join("BinWrappers/PosixLike"));
    path.extend(std::env::split_paths(&input.path));
    let path = std::env::join_paths(path).unwrap_or_else(|_| input.path.clone());
    let env: Vec<(OsString, OsString)> = vec![
        ("WORKSPACE".into(), ws.clone().into()),
        ("PACKAGES_PATH".into(), tree.clone().into()),
        ("EDK_TOOLS_PATH".into(), tools.clone().into()),
        ("CONF_PATH".into(), ws.join("Conf").into()),
        ("PYTHON_COMMAND".into(), "python3".into()),
        (
            format!("{}_AARCH64_PREFIX", input.toolchain).into(),
            CROSS_PREFIX.into(),
        ),
        ("PATH".into(), path),
    ];
    let mut build_args: Vec<OsString> = [
        "-a",
        "AARCH64",
        "-t",
        input.toolchain,
        "-p",
        PLATFORM,
        "-b",
        input.options.build_type.as_str(),
        "-n",
    ]
    .map(OsString::from)
    .to_vec();
    build_args.push(jobs.to_string().into());
    build_args.extend(
        input
            .options
            .variant
            .flags()
            .into_iter()
            .map(OsString::from),
    );
    vec![
        Step {
            program: "make".into(),
            args: vec![
                "-C".into(),
                tools.join("Source/C").into(),
                format!("-j{jobs}").into(),
            ],
            cwd: tree.clone(),
            env: Vec::new(),
        },
        Step {
            program: tools.join("BinWrappers/PosixLike/build").into(),
            args: build_args,
            cwd: ws,
            env,
        },
    ]
}

/// The host tools a build runs besides the cross compiler, with the Debian package that has
/// each: BaseTools is C and C++ built with the host's compilers and `make`, `build` is Python,
/// and BaseTools' `GenFv` and friends include `uuid/uuid.h`.
pub const HOST_TOOLS: [(&str, &str); 5] = [
    ("make", "make"),
    ("gcc", "gcc"),
    ("g++", "g++"),
    ("python3", "python3"),
    ("/usr/include/uuid/uuid.h", "uuid-dev"),
];

/// The missing entries of [`HOST_TOOLS`] as `TOOL (install PACKAGE)`, given how to tell whether
/// a program is on `PATH` and whether a file exists (pure; an entry starting with `/` is a
/// file).
pub fn missing_host_tools(
    on_path: impl Fn(&str) -> bool,
    file_exists: impl Fn(&Path) -> bool,
) -> Vec<String> {
    HOST_TOOLS
        .iter()
        .filter(|(tool, _)| {
            if tool.starts_with('/') {
                !file_exists(Path::new(tool))
            } else {
                !on_path(tool)
            }
        })
        .map(|(tool, package)| format!("{tool} (install {package})"))
        .collect()
}

/// What was built: recorded with the firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBuild {
    /// The tree.
    pub tree: PathBuf,
    /// `git rev-parse HEAD` (`None`: not a git checkout).
    pub commit: Option<String>,
    /// `git describe --tags --always`.
    pub describe: Option<String>,
    /// Tracked files differ from the commit.
    pub dirty: bool,
    pub variant: Variant,
    pub build_type: BuildType,
    pub toolchain: String,
    /// The `build` flags beyond platform, arch, toolchain and build type.
    pub flags: Vec<String>,
    /// The cross compiler's `--version` line.
    pub compiler: String,
    /// Submodule path -> pinned commit, for the submodules the build reads.
    pub submodules: std::collections::BTreeMap<String, String>,
    /// The submodule directories this build filled, and from where.
    pub filled: Vec<String>,
    /// Submodule path -> where its content came from, as far as the tree says
    /// ([`content_origin`]): a git checkout's commit, the marker a filling left, or unknown.
    #[serde(default)]
    pub content: std::collections::BTreeMap<String, String>,
    /// The cache key (`None`: not cached).
    pub key: Option<String>,
}

impl SourceBuild {
    /// The version records name: `git describe`, with `-dirty` for a tree that differs from its
    /// commit (`None`: not a git checkout).
    pub fn version(&self) -> Option<String> {
        self.describe.as_ref().map(|d| {
            if self.dirty {
                format!("{d}-dirty")
            } else {
                d.clone()
            }
        })
    }

    /// One line for records: `edk2 edk2-stable202502-12-gabcdef0 (abcdef0123…, dirty) RELEASE
    /// GCC no-secboot`.
    pub fn summary(&self) -> String {
        let id = match (&self.describe, &self.commit) {
            (Some(d), Some(c)) => format!("{d} ({c}{})", if self.dirty { ", dirty" } else { "" }),
            _ => "(not a git checkout)".to_owned(),
        };
        format!(
            "edk2 {id} ArmVirtQemu {} {} {}",
            self.build_type.as_str(),
            self.toolchain,
            self.variant.as_str()
        )
    }
}

/// The facts a cache key covers.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInput<'a> {
    pub commit: &'a str,
    /// SHA256 of `git diff HEAD --binary` when the tree is dirty.
    pub diff_sha256: Option<&'a str>,
    pub submodules: &'a std::collections::BTreeMap<String, String>,
    pub variant: Variant,
    pub build_type: BuildType,
    pub toolchain: &'a str,
    pub flags: &'a [String],
    pub compiler: &'a str,
}

/// The cache key: SHA256 of the key's JSON form, as hex (pure).
pub fn cache_key(k: &KeyInput<'_>) -> String {
    let json = serde_json::to_vec(k).expect("plain data serializes");
    hex::encode(Sha256::digest(&json))
}

/// A built firmware: code image, vars template, provenance.
#[derive(Debug, Clone)]
pub struct Built {
    pub code: PathBuf,
    pub vars: PathBuf,
    pub build: SourceBuild,
}

/// The file names inside a cache entry.
const CODE_NAME: &str = "QEMU_EFI-pflash.fd";
const VARS_NAME: &str = "QEMU_VARS-pflash.fd";
const MANIFEST_NAME: &str = "build.json";

async fn git(tree: &Path, args: &[&str], cancel: &CancellationToken) -> Result<String> {
    let out = Tool::new("git")
        .arg("-C")
        .arg(tree)
        .args(args)
        .timeout(GIT_TIMEOUT)
        .cancel_on(cancel)
        .run()
        .await?;
    Ok(out.stdout_text().trim().to_owned())
}

/// A directory with something in it besides bootwatch's own marker.
fn populated(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok()))
}

/// Copies a directory tree (symbolic links as links).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Which submodule paths the tree lists among [`NEEDED_SUBMODULES`], with their pins.
async fn submodule_pins(
    tree: &Path,
    is_git: bool,
    cancel: &CancellationToken,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut pins = std::collections::BTreeMap::new();
    if !tree.join(".gitmodules").is_file() {
        return Ok(pins);
    }
    // git reads its own config format (no hand-written parser): "submodule.X.path P" lines.
    let listed = git(
        tree,
        &[
            "config",
            "-f",
            ".gitmodules",
            "--get-regexp",
            r"^submodule\..*\.path$",
        ],
        cancel,
    )
    .await
    .context("reading .gitmodules")?;
    for line in listed.lines() {
        let Some((_, path)) = line.split_once(' ') else {
            continue;
        };
        if !NEEDED_SUBMODULES.contains(&path) {
            continue;
        }
        let pin = if is_git {
            // "160000 commit SHA\tPATH"
            let entry = git(tree, &["ls-tree", "HEAD", "--", path], cancel).await?;
            entry
                .split_whitespace()
                .nth(2)
                .map(str::to_owned)
                .unwrap_or_default()
        } else {
            String::new()
        };
        pins.insert(path.to_owned(), pin);
    }
    Ok(pins)
}

/// The file a filling leaves in a submodule directory: `PIN<TAB>SOURCE` (the tree's pin when
/// it was filled, and the directory it was copied from).
pub const FILLED_MARKER: &str = ".bootwatch-filled";

/// The commit a git checkout at `dir` has checked out, read from its git directory (a submodule's
/// `.git` is a file `gitdir: PATH`): a detached `HEAD` holds the commit, a branch's `HEAD` names a
/// ref, found loose or in `packed-refs`. `None` when it is not a checkout or cannot be read.
fn checkout_head(dir: &Path) -> Option<String> {
    let dot_git = dir.join(".git");
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        let text = std::fs::read_to_string(&dot_git).ok()?;
        dir.join(text.trim().strip_prefix("gitdir:")?.trim())
    };
    let is_commit = |s: &str| s.len() >= 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    if is_commit(head) {
        return Some(head.to_owned());
    }
    let name = head.strip_prefix("ref:")?.trim();
    if let Ok(loose) = std::fs::read_to_string(git_dir.join(name)) {
        return Some(loose.trim().to_owned()).filter(|c| is_commit(c));
    }
    let packed = std::fs::read_to_string(git_dir.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| *r == name)
        .map(|(c, _)| c.to_owned())
        .filter(|c| is_commit(c))
}

/// Where the content of a submodule directory came from, for the record: `git checkout at
/// COMMIT` (a real submodule checkout; `, not the pin` when it differs from `pin`), `copied
/// from SOURCE for pin PIN` (a marker; `, not the pin` likewise), or `present, origin unknown`.
pub fn content_origin(dir: &Path, pin: &str) -> String {
    let differs = |at: &str| {
        if !pin.is_empty() && at != pin {
            ", not the pin"
        } else {
            ""
        }
    };
    if let Some(head) = checkout_head(dir) {
        return format!("git checkout at {head}{}", differs(&head));
    }
    if let Ok(text) = std::fs::read_to_string(dir.join(FILLED_MARKER)) {
        let (filled_pin, source) = text.trim().split_once('\t').unwrap_or(("", text.trim()));
        return format!(
            "copied from {source} for pin {filled_pin}{}",
            differs(filled_pin)
        );
    }
    "present, origin unknown".to_owned()
}

/// Fills empty submodule directories (see the module documentation); returns what it filled,
/// or an error naming every one still empty.
fn fill_submodules(
    tree: &Path,
    pins: &std::collections::BTreeMap<String, String>,
    source: Option<&Path>,
) -> Result<Vec<String>> {
    let mut filled = Vec::new();
    let mut missing = Vec::new();
    for path in pins.keys() {
        let dir = tree.join(path);
        if populated(&dir) {
            continue;
        }
        let from_source = source
            .map(|s| s.join(path))
            .filter(|candidate| populated(candidate));
        let from_alias = (path == BROTLI_ALIAS.0)
            .then_some(BROTLI_ALIAS.1)
            .filter(|alias| pins.get(*alias) == pins.get(path) && populated(&tree.join(alias)))
            .map(|alias| tree.join(alias));
        match from_source.or(from_alias) {
            Some(from) => {
                copy_tree(&from, &dir)
                    .with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
                let pin = pins.get(path).map_or("", String::as_str);
                std::fs::write(
                    dir.join(FILLED_MARKER),
                    format!("{pin}\t{}\n", from.display()),
                )
                .with_context(|| format!("writing {}", dir.join(FILLED_MARKER).display()))?;
                filled.push(format!("{path} from {}", from.display()));
            }
            None => missing.push(path.clone()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} has empty submodule directories the ArmVirtQemu build needs: {}. Fill them \
             (`git submodule update --init` where the submodules' hosts are reachable), or set \
             {SUBMODULES_ENV} to an unpacked edk2 source tree that has them (e.g. Debian's edk2 \
             source package), from which empty ones are copied",
            tree.display(),
            missing.join(", ")
        );
    }
    Ok(filled)
}

/// Copies `from` to `to` and pads it with zeros to `size` (refusing a larger file).
fn pad_copy(from: &Path, to: &Path, size: u64) -> Result<()> {
    let len = std::fs::metadata(from)
        .with_context(|| format!("reading {}", from.display()))?
        .len();
    ensure!(
        len <= size,
        "{} is {len} bytes, more than the {size}-byte pflash bank",
        from.display()
    );
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .with_context(|| format!("opening {}", to.display()))?;
    f.set_len(size)
        .with_context(|| format!("padding {}", to.display()))?;
    Ok(())
}

/// The build's `FV` directory: `WORKSPACE/Build/*/TYPE_TOOLCHAIN/FV` (the first directory's
/// name changed case between releases: `ArmVirtQemu-AARCH64`, `ArmVirtQemu-AArch64`).
pub fn find_fv(ws: &Path, build_type: BuildType, toolchain: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(ws.join("Build")).ok()?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| {
            e.path()
                .join(format!("{}_{toolchain}", build_type.as_str()))
                .join("FV")
        })
        .filter(|fv| fv.join("QEMU_EFI.fd").is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Removes the firmware images (`QEMU_EFI.fd`, `QEMU_VARS.fd`) of every `Build/*/TYPE_TOOLCHAIN/FV`
/// in the workspace: what [`find_fv`] finds after a build is then that build's.
fn remove_fv_images(ws: &Path, build_type: BuildType, toolchain: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(ws.join("Build")) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let fv = e
            .path()
            .join(format!("{}_{toolchain}", build_type.as_str()))
            .join("FV");
        for name in ["QEMU_EFI.fd", "QEMU_VARS.fd"] {
            let f = fv.join(name);
            match std::fs::remove_file(&f) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(err).with_context(|| format!("removing {}", f.display()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Writes `WORKSPACE/Conf` from the tree's templates (what `edksetup.sh --reconfig` does).
fn write_conf(tree: &Path, ws: &Path) -> Result<()> {
    let conf = ws.join("Conf");
    std::fs::create_dir_all(&conf).with_context(|| format!("creating {}", conf.display()))?;
    for (template, name) in [
        ("target.template", "target.txt"),
        ("tools_def.template", "tools_def.txt"),
        ("build_rule.template", "build_rule.txt"),
    ] {
        let from = tree.join("BaseTools/Conf").join(template);
        std::fs::copy(&from, conf.join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// Makes (once) the directory whose `aarch64-linux-gnu-gcc` runs the cross compiler through
/// ccache.
fn ccache_dir(cache_root: &Path) -> Result<Option<PathBuf>> {
    let Ok(ccache) = which::which("ccache") else {
        return Ok(None);
    };
    let dir = cache_root.join("edk2-source").join("ccache-bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join(format!("{CROSS_PREFIX}gcc"));
    if std::fs::read_link(&link).ok().as_deref() != Some(ccache.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&ccache, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(Some(dir))
}

/// `tree` made absolute, if it is an edk2 source tree with the platform this provider builds.
fn edk2_tree(tree: &Path) -> Result<PathBuf> {
    let tree = std::path::absolute(tree)?;
    ensure!(
        tree.join("edksetup.sh").is_file() && tree.join(PLATFORM).is_file(),
        "{} is not an edk2 source tree (no edksetup.sh or {PLATFORM})",
        tree.display()
    );
    Ok(tree)
}

/// Builds (or finds in the cache) the firmware of `tree` at its current commit. When `cancel`
/// fires, the build is stopped with its process groups and an error is returned.
pub async fn build(
    tree: &Path,
    options: Options,
    cache_root: &Path,
    cancel: &CancellationToken,
) -> Result<Built> {
    edk2_tree(tree)?;
    let missing = missing_host_tools(|t| which::which(t).is_ok(), Path::exists);
    ensure!(
        missing.is_empty(),
        "building ArmVirtQemu needs host tools that are missing: {}",
        missing.join(", ")
    );
    build_with(
        tree,
        options,
        cache_root,
        &format!("{CROSS_PREFIX}gcc"),
        cancel,
    )
    .await
}

/// [`build`] with the program whose `--version` names the cross compiler (tests use a fake).
async fn build_with(
    tree: &Path,
    options: Options,
    cache_root: &Path,
    compiler_tool: &str,
    cancel: &CancellationToken,
) -> Result<Built> {
    let tree = edk2_tree(tree)?;
    let template = std::fs::read_to_string(tree.join("BaseTools/Conf/tools_def.template"))
        .with_context(|| {
            format!(
                "reading {}/BaseTools/Conf/tools_def.template",
                tree.display()
            )
        })?;
    let Some(toolchain) = toolchain_tag(&template) else {
        bail!(
            "{}: BaseTools/Conf/tools_def.template defines neither the GCC nor the GCC5 \
             toolchain for AARCH64",
            tree.display()
        );
    };
    let compiler = Tool::new(compiler_tool)
        .arg("--version")
        .timeout(GIT_TIMEOUT)
        .cancel_on(cancel)
        .run()
        .await
        .with_context(|| {
            format!("the cross compiler {compiler_tool} (install gcc-aarch64-linux-gnu)")
        })?
        .stdout_text()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();

    let is_git = git(&tree, &["rev-parse", "--is-inside-work-tree"], cancel)
        .await
        .is_ok_and(|o| o == "true");
    let (commit, describe, dirty, diff_sha256) = if is_git {
        let commit = git(&tree, &["rev-parse", "HEAD"], cancel).await?;
        let describe = git(&tree, &["describe", "--tags", "--always"], cancel).await?;
        let status = git(
            &tree,
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--ignore-submodules=all",
            ],
            cancel,
        )
        .await?;
        let dirty = !status.is_empty();
        let diff = if dirty {
            let out = Tool::new("git")
                .arg("-C")
                .arg(&tree)
                .args(["diff", "HEAD", "--binary", "--ignore-submodules=all"])
                .timeout(GIT_TIMEOUT)
                .cancel_on(cancel)
                .run()
                .await?;
            Some(hex::encode(Sha256::digest(&out.stdout)))
        } else {
            None
        };
        (Some(commit), Some(describe), dirty, diff)
    } else {
        (None, None, false, None)
    };

    let pins = submodule_pins(&tree, is_git, cancel).await?;
    let source = std::env::var_os(SUBMODULES_ENV).map(PathBuf::from);
    let filled = fill_submodules(&tree, &pins, source.as_deref())?;
    let content = pins
        .iter()
        .map(|(path, pin)| (path.clone(), content_origin(&tree.join(path), pin)))
        .collect();

    let flags: Vec<String> = options
        .variant
        .flags()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let key = commit.as_deref().map(|c| {
        cache_key(&KeyInput {
            commit: c,
            diff_sha256: diff_sha256.as_deref(),
            submodules: &pins,
            variant: options.variant,
            build_type: options.build_type,
            toolchain,
            flags: &flags,
            compiler: &compiler,
        })
    });
    let record = SourceBuild {
        tree: tree.clone(),
        commit,
        describe,
        dirty,
        variant: options.variant,
        build_type: options.build_type,
        toolchain: toolchain.to_owned(),
        flags,
        compiler,
        submodules: pins,
        filled,
        content,
        key: key.clone(),
    };

    let entries = cache_root.join("edk2-source");
    std::fs::create_dir_all(&entries).with_context(|| format!("creating {}", entries.display()))?;
    if let Some(key) = &key {
        let dir = entries.join(key);
        if dir.join(MANIFEST_NAME).is_file() {
            tracing::info!(tree = %tree.display(), key = %key, "edk2 build found in the cache");
            return Ok(Built {
                code: dir.join(CODE_NAME),
                vars: dir.join(VARS_NAME),
                build: record,
            });
        }
    }

    // One build at a time per tree (two would write the same workspace).
    let ws = workspace(&tree, &options);
    std::fs::create_dir_all(&ws).with_context(|| format!("creating {}", ws.display()))?;
    let lock_path = tree.join(WORKSPACES_DIR).join(".lock");
    let Some(_guard) = crate::sys::fsx::FileLock::acquire_cancellable(&lock_path, cancel).await?
    else {
        bail!(
            "cancelled while waiting for another build of {}",
            tree.display()
        );
    };
    write_conf(&tree, &ws)?;
    let input = PlanInput {
        tree: tree.clone(),
        options,
        toolchain,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ccache_dir: ccache_dir(cache_root)?,
        path: std::env::var_os("PATH").unwrap_or_default(),
    };
    let log_path = ws.join(LOG_NAME);
    std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    // The workspace keeps every platform directory an earlier commit's build made (its name
    // changed case between releases: `ArmVirtQemu-AARCH64`, `-AArch64`): their images go first,
    // so that the one found below is this build's.
    remove_fv_images(&ws, options.build_type, toolchain)?;
    let run = async |step: &Step| -> Result<()> {
        let mut tool = Tool::new(&step.program)
            .args(&step.args)
            .current_dir(&step.cwd)
            .log_to(&log_path)
            .cancel_on(cancel);
        for (k, v) in &step.env {
            tool = tool.env(k, v);
        }
        tracing::info!(cwd = %step.cwd.display(), "building edk2: {}", tool.command_line());
        tool.run()
            .await
            .with_context(|| format!("building ArmVirtQemu from {}", tree.display()))?;
        Ok(())
    };
    for step in plan(&input) {
        match run(&step).await {
            Ok(()) => {}
            // BaseTools' incremental make keeps the dependency files of the commit it last
            // built, which can name a header this commit does not have (seen: `Acpi66.h` in
            // `GenFw.d`): once more from clean before the step counts as failed.
            Err(e) if step.program == "make" && !cancel.is_cancelled() => {
                tracing::warn!(error = %format!("{e:#}"), "BaseTools did not build incrementally: from clean");
                let mut clean = step.clone();
                clean
                    .args
                    .retain(|a| !a.to_string_lossy().starts_with("-j"));
                clean.args.push("clean".into());
                run(&clean).await?;
                run(&step).await?;
            }
            Err(e) => return Err(e),
        }
    }
    let Some(fv) = find_fv(&ws, options.build_type, toolchain) else {
        bail!(
            "the edk2 build finished but there is no Build/*/{}_{toolchain}/FV/QEMU_EFI.fd in {}",
            options.build_type.as_str(),
            ws.display()
        );
    };

    // Publish: padded copies and the manifest, in a staging directory renamed into place.
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&entries)
        .with_context(|| format!("creating a staging directory in {}", entries.display()))?;
    pad_copy(
        &fv.join("QEMU_EFI.fd"),
        &staging.path().join(CODE_NAME),
        PFLASH_SIZE,
    )?;
    pad_copy(
        &fv.join("QEMU_VARS.fd"),
        &staging.path().join(VARS_NAME),
        PFLASH_SIZE,
    )?;
    crate::sys::fsx::write_json_atomic(&staging.path().join(MANIFEST_NAME), &record)?;
    let name = key.clone().unwrap_or_else(|| {
        // Not a git checkout: one entry per tree, replaced by every build.
        let h = hex::encode(Sha256::digest(tree.as_os_str().as_encoded_bytes()));
        format!("tree-{}", &h[..16])
    });
    let dir = entries.join(&name);
    let staging = staging.keep();
    crate::sys::fsx::replace_dir(&staging, &dir, "edk2 build").inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
    })?;
    Ok(Built {
        code: dir.join(CODE_NAME),
        vars: dir.join(VARS_NAME),
        build: record,
    })
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

    fn input(options: Options, ccache: bool) -> PlanInput {
        PlanInput {
            tree: PathBuf::from("/src/edk2"),
            options,
            toolchain: "GCC",
            jobs: 2,
            ccache_dir: ccache.then(|| PathBuf::from("/cache/edk2-source/ccache-bin")),
            path: "/usr/bin:/bin".into(),
        }
    }

    #[test]
    fn default_plan_is_debians_no_secboot_release_build() {
        let steps = plan(&input(Options::default(), false));
        assert_eq!(
            show(&steps),
            [
                "/src/edk2: make -C /src/edk2/BaseTools/Source/C -j2",
                "/src/edk2/Build/bootwatch/release-no-secboot: \
                 /src/edk2/BaseTools/BinWrappers/PosixLike/build -a AARCH64 -t GCC -p \
                 ArmVirtPkg/ArmVirtQemu.dsc -b RELEASE -n 2 '-DCC_MEASUREMENT_ENABLE=TRUE' \
                 '-DNETWORK_HTTP_BOOT_ENABLE=TRUE' '-DNETWORK_IP6_ENABLE=TRUE' -DNETWORK_TLS_ENABLE \
                 --pcd 'PcdUninstallMemAttrProtocol=TRUE'",
            ]
        );
        let env: std::collections::BTreeMap<_, _> = steps[1]
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            env["WORKSPACE"],
            "/src/edk2/Build/bootwatch/release-no-secboot"
        );
        assert_eq!(env["PACKAGES_PATH"], "/src/edk2");
        assert_eq!(env["EDK_TOOLS_PATH"], "/src/edk2/BaseTools");
        assert_eq!(
            env["CONF_PATH"],
            "/src/edk2/Build/bootwatch/release-no-secboot/Conf"
        );
        assert_eq!(env["GCC_AARCH64_PREFIX"], "aarch64-linux-gnu-");
        assert_eq!(
            env["PATH"],
            "/src/edk2/BaseTools/BinWrappers/PosixLike:/usr/bin:/bin"
        );
        assert!(steps[0].env.is_empty());
    }

    #[test]
    fn variants_carry_debians_flags() {
        let secboot = Variant::Secboot.flags();
        let strict = Variant::Strictnx.flags();
        for f in [
            "-DSECURE_BOOT_ENABLE=TRUE",
            "-DBUILD_SHELL=FALSE",
            "-DTPM2_ENABLE=TRUE",
        ] {
            assert!(secboot.contains(&f) && strict.contains(&f), "{f}");
            assert!(!Variant::NoSecboot.flags().contains(&f), "{f}");
        }
        // strict NX keeps the memory attribute protocol; the other two uninstall it.
        assert!(secboot.contains(&"PcdUninstallMemAttrProtocol=TRUE"));
        assert!(!strict.contains(&"PcdUninstallMemAttrProtocol=TRUE"));
        assert!(!strict.contains(&"--pcd"));
    }

    #[test]
    fn debug_strictnx_gets_its_own_workspace_and_ccache_comes_first() {
        let o = Options {
            variant: Variant::Strictnx,
            build_type: BuildType::Debug,
        };
        let mut i = input(o, true);
        i.toolchain = "GCC5";
        i.jobs = 0;
        let steps = plan(&i);
        assert_eq!(
            steps[1].cwd,
            Path::new("/src/edk2/Build/bootwatch/debug-strictnx")
        );
        let args: Vec<String> = steps[1]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &args[..10],
            [
                "-a", "AARCH64", "-t", "GCC5", "-p", PLATFORM, "-b", "DEBUG", "-n", "1"
            ]
        );
        assert_eq!(steps[0].args[2], "-j1");
        let env: std::collections::BTreeMap<_, _> = steps[1].env.iter().cloned().collect();
        assert_eq!(
            env[&OsString::from("GCC5_AARCH64_PREFIX")],
            "aarch64-linux-gnu-"
        );
        assert!(
            env[&OsString::from("PATH")]
                .to_string_lossy()
                .starts_with("/cache/edk2-source/ccache-bin:/src/edk2/BaseTools/BinWrappers")
        );
    }

    #[test]
    fn options_parse_and_print() {
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        let o = Options::parse(&["debug", "secboot.strictnx"]).unwrap();
        assert_eq!(o.variant, Variant::Strictnx);
        assert_eq!(o.build_type, BuildType::Debug);
        assert_eq!(o.words(), ["debug", "strictnx"]);
        assert!(Options::default().words().is_empty());
        assert_eq!(
            Options::parse(&["release", "no-secboot"]).unwrap(),
            Options::default()
        );
        for (words, needle) in [
            (&["fast"][..], "\"fast\" is not an edk2 source build option"),
            (&["debug", "release"][..], "more than one build type"),
            (&["secboot", "strictnx"][..], "more than one variant"),
        ] {
            let err = Options::parse(words).unwrap_err();
            assert!(err.contains(needle), "{words:?}: {err}");
        }
    }

    #[test]
    fn missing_host_tools_are_named_with_their_packages() {
        assert!(missing_host_tools(|_| true, |_| true).is_empty());
        let missing = missing_host_tools(|t| t != "python3", |f| !f.ends_with("uuid.h"));
        assert_eq!(
            missing,
            [
                "python3 (install python3)",
                "/usr/include/uuid/uuid.h (install uuid-dev)"
            ]
        );
    }

    #[test]
    fn content_origin_reads_the_filling_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(content_origin(dir, "p1"), "present, origin unknown");
        std::fs::write(dir.join(FILLED_MARKER), "p1\t/src/debian\n").unwrap();
        assert_eq!(
            content_origin(dir, "p1"),
            "copied from /src/debian for pin p1"
        );
        assert_eq!(
            content_origin(dir, "p2"),
            "copied from /src/debian for pin p1, not the pin"
        );
    }

    /// A real checkout and a submodule-style `.git` file, made by git itself: the commit read
    /// from the git directory is the one git reports.
    #[test]
    fn content_origin_reads_a_checkouts_commit_without_running_git() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let git = |args: &[&str]| {
            let o = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        };
        std::fs::create_dir(&repo).unwrap();
        git(&["init", "-q"]);
        std::fs::write(repo.join("f"), "x").unwrap();
        git(&["add", "f"]);
        git(&["commit", "-qm", "one"]);
        let commit = git(&["rev-parse", "HEAD"]);
        // On a branch (HEAD names a ref), then with the ref packed, then detached.
        assert_eq!(
            content_origin(&repo, &commit),
            format!("git checkout at {commit}")
        );
        git(&["pack-refs", "--all"]);
        assert_eq!(
            content_origin(&repo, &commit),
            format!("git checkout at {commit}")
        );
        git(&["checkout", "-q", "--detach"]);
        assert_eq!(
            content_origin(&repo, "other"),
            format!("git checkout at {commit}, not the pin")
        );
        // A submodule's checkout: `.git` is a file naming the git directory.
        let sub = tmp.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(".git"), "gitdir: ../repo/.git\n").unwrap();
        assert_eq!(
            content_origin(&sub, &commit),
            format!("git checkout at {commit}")
        );
    }

    #[test]
    fn toolchain_tag_prefers_gcc_then_gcc5() {
        let both = "DEFINE GCC5_AARCH64_CC_FLAGS = x\n\
                    RELEASE_GCC5_AARCH64_CC_FLAGS = a\n\
                    RELEASE_GCC_AARCH64_CC_FLAGS    = b\n";
        assert_eq!(toolchain_tag(both), Some("GCC"));
        let old = "RELEASE_GCC5_AARCH64_CC_FLAGS = a\n# RELEASE_GCC_AARCH64_CC_FLAGS = b\n";
        assert_eq!(toolchain_tag(old), Some("GCC5"));
        assert_eq!(
            toolchain_tag("RELEASE_CLANGDWARF_AARCH64_CC_FLAGS = c\n"),
            None
        );
    }

    fn key(commit: &str, diff: Option<&str>, variant: Variant, compiler: &str) -> String {
        let pins = std::collections::BTreeMap::from([(
            "MdePkg/Library/BaseFdtLib/libfdt".to_owned(),
            "cfff805481bdea27f900c32698171286542b8d3c".to_owned(),
        )]);
        let flags: Vec<String> = variant.flags().into_iter().map(str::to_owned).collect();
        cache_key(&KeyInput {
            commit,
            diff_sha256: diff,
            submodules: &pins,
            variant,
            build_type: BuildType::Release,
            toolchain: "GCC",
            flags: &flags,
            compiler,
        })
    }

    #[test]
    fn cache_key_covers_commit_diff_flags_and_compiler() {
        let base = key("aaaa", None, Variant::NoSecboot, "gcc 12");
        assert_eq!(base.len(), 64);
        assert_eq!(base, key("aaaa", None, Variant::NoSecboot, "gcc 12"));
        let others = [
            key("bbbb", None, Variant::NoSecboot, "gcc 12"),
            key("aaaa", Some("d1"), Variant::NoSecboot, "gcc 12"),
            key("aaaa", Some("d2"), Variant::NoSecboot, "gcc 12"),
            key("aaaa", None, Variant::Strictnx, "gcc 12"),
            key("aaaa", None, Variant::NoSecboot, "gcc 14"),
        ];
        let mut all: Vec<&String> = others.iter().collect();
        all.push(&base);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "every input changes the key");
    }

    #[test]
    fn padding_matches_debian_and_refuses_oversized_images() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("QEMU_EFI.fd");
        std::fs::write(&src, b"FVH").unwrap();
        let dst = tmp.path().join("CODE.fd");
        pad_copy(&src, &dst, 4096).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[..3], b"FVH");
        assert!(bytes[3..].iter().all(|&b| b == 0));
        let err = pad_copy(&dst, &tmp.path().join("x"), 100).unwrap_err();
        assert!(
            format!("{err:#}").contains("more than the 100-byte"),
            "{err:#}"
        );
    }

    /// A workspace that built both spellings of the platform directory (a bisect across the
    /// release that renamed it): before a build every image goes, so the one found after it is
    /// the new build's, not the other spelling's stale one (which sorts last).
    #[test]
    fn stale_images_of_another_platform_directory_are_removed_before_a_build() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("Build/ArmVirtQemu-AArch64/RELEASE_GCC/FV");
        let new = tmp.path().join("Build/ArmVirtQemu-AARCH64/RELEASE_GCC/FV");
        let debug = tmp.path().join("Build/ArmVirtQemu-AArch64/DEBUG_GCC/FV");
        for d in [&old, &new, &debug] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("QEMU_EFI.fd"), b"x").unwrap();
            std::fs::write(d.join("QEMU_VARS.fd"), b"x").unwrap();
        }
        std::fs::write(old.join("OTHER.fv"), b"x").unwrap();
        assert_eq!(
            find_fv(tmp.path(), BuildType::Release, "GCC"),
            Some(old.clone())
        );
        remove_fv_images(tmp.path(), BuildType::Release, "GCC").unwrap();
        assert_eq!(find_fv(tmp.path(), BuildType::Release, "GCC"), None);
        assert!(old.join("OTHER.fv").is_file(), "only the images go");
        assert!(
            debug.join("QEMU_EFI.fd").is_file(),
            "another build type's stay"
        );
        // The build writes its own: found.
        std::fs::write(new.join("QEMU_EFI.fd"), b"y").unwrap();
        assert_eq!(find_fv(tmp.path(), BuildType::Release, "GCC"), Some(new));
        remove_fv_images(&tmp.path().join("none"), BuildType::Release, "GCC").unwrap();
    }

    #[test]
    fn fv_is_found_whatever_the_platform_directory_is_called() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(find_fv(tmp.path(), BuildType::Release, "GCC"), None);
        let fv = tmp.path().join("Build/ArmVirtQemu-AArch64/RELEASE_GCC/FV");
        std::fs::create_dir_all(&fv).unwrap();
        assert_eq!(find_fv(tmp.path(), BuildType::Release, "GCC"), None);
        std::fs::write(fv.join("QEMU_EFI.fd"), b"x").unwrap();
        assert_eq!(find_fv(tmp.path(), BuildType::Release, "GCC"), Some(fv));
        assert_eq!(find_fv(tmp.path(), BuildType::Debug, "GCC"), None);
        assert_eq!(find_fv(tmp.path(), BuildType::Release, "GCC5"), None);
    }

    #[test]
    fn empty_submodules_are_filled_or_named() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("edk2");
        let src = tmp.path().join("debian-source");
        let pins = std::collections::BTreeMap::from([
            (BROTLI_ALIAS.0.to_owned(), "b1".to_owned()),
            (BROTLI_ALIAS.1.to_owned(), "b1".to_owned()),
            (
                "MdePkg/Library/BaseFdtLib/libfdt".to_owned(),
                "f1".to_owned(),
            ),
            (
                "MdePkg/Library/MipiSysTLib/mipisyst".to_owned(),
                "m1".to_owned(),
            ),
        ]);
        for p in pins.keys() {
            std::fs::create_dir_all(tree.join(p)).unwrap();
        }
        std::fs::write(tree.join(BROTLI_ALIAS.1).join("decode.c"), b"d").unwrap();
        std::fs::create_dir_all(src.join("MdePkg/Library/BaseFdtLib/libfdt/libfdt")).unwrap();
        std::fs::write(
            src.join("MdePkg/Library/BaseFdtLib/libfdt/libfdt/fdt.h"),
            b"h",
        )
        .unwrap();

        // Without a source, libfdt and mipisyst are named; brotli is copied from its twin.
        let err = format!("{:#}", fill_submodules(&tree, &pins, None).unwrap_err());
        assert!(err.contains("MdePkg/Library/BaseFdtLib/libfdt"), "{err}");
        assert!(err.contains("mipisyst"), "{err}");
        assert!(err.contains(SUBMODULES_ENV), "{err}");
        assert!(tree.join(BROTLI_ALIAS.0).join("decode.c").is_file());

        // With a source, libfdt comes from it; mipisyst is still missing.
        let err = format!(
            "{:#}",
            fill_submodules(&tree, &pins, Some(&src)).unwrap_err()
        );
        assert!(!err.contains("libfdt"), "{err}");
        assert!(
            tree.join("MdePkg/Library/BaseFdtLib/libfdt/libfdt/fdt.h")
                .is_file()
        );
        std::fs::write(tree.join("MdePkg/Library/MipiSysTLib/mipisyst/x"), b"").unwrap();
        assert_eq!(
            fill_submodules(&tree, &pins, Some(&src)).unwrap(),
            Vec::<String>::new()
        );

        // A twin pinned elsewhere is not used.
        let mut other = pins.clone();
        other.insert(BROTLI_ALIAS.1.to_owned(), "b2".to_owned());
        std::fs::remove_dir_all(tree.join(BROTLI_ALIAS.0)).unwrap();
        std::fs::create_dir_all(tree.join(BROTLI_ALIAS.0)).unwrap();
        let err = format!("{:#}", fill_submodules(&tree, &other, None).unwrap_err());
        assert!(err.contains(BROTLI_ALIAS.0), "{err}");
    }

    /// A fake edk2 tree whose BaseTools makefile runs `recipe`, and a fake cross compiler.
    fn fake_tree(root: &Path, recipe: &str) -> (PathBuf, String) {
        use std::os::unix::fs::PermissionsExt;
        let tree = root.join("edk2");
        std::fs::create_dir_all(tree.join("ArmVirtPkg")).unwrap();
        std::fs::create_dir_all(tree.join("BaseTools/Conf")).unwrap();
        std::fs::create_dir_all(tree.join("BaseTools/Source/C")).unwrap();
        std::fs::write(tree.join("edksetup.sh"), b"").unwrap();
        std::fs::write(tree.join(PLATFORM), b"").unwrap();
        std::fs::write(
            tree.join("BaseTools/Conf/tools_def.template"),
            b"RELEASE_GCC_AARCH64_CC_FLAGS = -O2\n",
        )
        .unwrap();
        for t in ["target.template", "build_rule.template"] {
            std::fs::write(tree.join("BaseTools/Conf").join(t), b"").unwrap();
        }
        std::fs::write(
            tree.join("BaseTools/Source/C/GNUmakefile"),
            format!("all:\n\t{recipe}\n"),
        )
        .unwrap();
        let gcc = root.join("fake-aarch64-gcc");
        std::fs::write(&gcc, "#!/bin/sh\necho 'fake-gcc (Test) 1.0'\n").unwrap();
        std::fs::set_permissions(&gcc, std::fs::Permissions::from_mode(0o755)).unwrap();
        (tree, gcc.to_string_lossy().into_owned())
    }

    fn cache_entries(cache: &Path) -> Vec<OsString> {
        std::fs::read_dir(cache.join("edk2-source"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n != "ccache-bin")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A build that fails (here BaseTools) is an error quoting the log's tail, and nothing
    /// lands in the cache.
    #[tokio::test]
    async fn a_failing_build_is_an_error_with_the_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let (tree, gcc) = fake_tree(
            tmp.path(),
            "@echo 'VfrCompile: fatal error: brotli/decode.h: No such file'; false",
        );
        let err = format!(
            "{:#}",
            build_with(
                &tree,
                Options::default(),
                &cache,
                &gcc,
                &CancellationToken::new()
            )
            .await
            .unwrap_err()
        );
        assert!(err.contains("building ArmVirtQemu from"), "{err}");
        assert!(err.contains("brotli/decode.h: No such file"), "{err}");
        assert!(err.contains("make -C"), "{err}");
        assert!(
            tree.join("Build/bootwatch/release-no-secboot/build.log")
                .is_file(),
            "the log stays for reading"
        );
        assert!(
            cache_entries(&cache).is_empty(),
            "{:?}",
            cache_entries(&cache)
        );
    }

    /// Cancelling stops a running build within the grace period and says so.
    #[tokio::test]
    async fn cancelling_stops_the_build() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let (tree, gcc) = fake_tree(tmp.path(), "sleep 60");
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            stopper.cancel();
        });
        let started = std::time::Instant::now();
        let err = build_with(&tree, Options::default(), &cache, &gcc, &cancel)
            .await
            .unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let cancelled = err.chain().any(|e| {
            e.downcast_ref::<crate::sys::proc::ToolError>()
                .is_some_and(|t| t.is_cancelled())
        });
        assert!(cancelled, "{err:#}");
        assert!(cache_entries(&cache).is_empty());
    }

    /// A missing cross compiler is named with the package to install.
    #[tokio::test]
    async fn a_missing_cross_compiler_names_the_package() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, _) = fake_tree(tmp.path(), "true");
        let err = format!(
            "{:#}",
            build_with(
                &tree,
                Options::default(),
                tmp.path(),
                "/nonexistent/aarch64-linux-gnu-gcc",
                &CancellationToken::new()
            )
            .await
            .unwrap_err()
        );
        assert!(err.contains("install gcc-aarch64-linux-gnu"), "{err}");
    }

    #[tokio::test]
    async fn not_an_edk2_tree_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            build_with(
                tmp.path(),
                Options::default(),
                tmp.path(),
                "gcc",
                &CancellationToken::new()
            )
            .await
            .unwrap_err()
        );
        assert!(err.contains("is not an edk2 source tree"), "{err}");
        assert!(!tmp.path().join("Build").exists());
    }
}
