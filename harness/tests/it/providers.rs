//! Providers against the real Debian archive: QEMU from another suite in a private root tree
//! (built with mmdebstrap, run through the tree's own loader) and Debian's edk2 builds.
//!
//! These use the network (the mirror named by the host's apt configuration or
//! BOOTWATCH_MIRROR) and mmdebstrap. Trees are cached under the normal cache directory
//! (BOOTWATCH_CACHE or ~/.cache/bootwatch), so only the first run builds them (about 20-60 s
//! each). Set BOOTWATCH_SKIP_NETWORK_TESTS=1 to skip them.

use crate::common;

use std::time::{Duration, Instant};

use bootwatch::core::event::EventSink;
use bootwatch::engine::case::{self, CaseDir, CaseRequest};
use bootwatch::engine::step::Step;
use bootwatch::inputs::providers::{
    self, FirmwareProvider, ProviderContext, QemuProvider, debian_tree,
};
use common::*;
use tokio_util::sync::CancellationToken;

fn network_tests_enabled() -> bool {
    if std::env::var_os("BOOTWATCH_SKIP_NETWORK_TESTS").is_some_and(|v| !v.is_empty()) {
        eprintln!("skipped: BOOTWATCH_SKIP_NETWORK_TESTS is set");
        return false;
    }
    true
}

/// A token nobody cancels.
fn never() -> CancellationToken {
    CancellationToken::new()
}

fn ctx() -> ProviderContext {
    ProviderContext {
        mirror: None,
        cache_root: bootwatch::sys::fsx::cache_root().unwrap(),
    }
}

fn host_qemu_sha256() -> Option<String> {
    let path = which::which("qemu-system-aarch64").ok()?;
    Some(
        bootwatch::engine::record::FileInfo::of(&path)
            .unwrap()
            .sha256,
    )
}

/// Resolve `debian:SUITE` twice (the second must be a cache hit: same tree, same build time)
/// and return the first resolution with the tree's manifest.
async fn resolve_twice(suite: &str) -> (providers::ResolvedQemu, debian_tree::TreeManifest) {
    let ctx = ctx();
    let p: QemuProvider = format!("debian:{suite}").parse().unwrap();
    let started = Instant::now();
    let q = providers::resolve_qemu(&p, &ctx, &never()).await.unwrap();
    let first = started.elapsed();
    let tree_dir = q
        .binary
        .ancestors()
        .find(|a| a.join(debian_tree::MANIFEST_NAME).is_file())
        .unwrap()
        .to_path_buf();
    let manifest = debian_tree::load_tree(&tree_dir).unwrap().manifest;
    eprintln!(
        "debian:{suite}: {} ({}), package {:?}, first resolution {first:.1?}; tree built in \
         {:.1} s, {} MiB, at {}",
        q.version,
        q.version_line,
        q.package,
        manifest.build_seconds,
        manifest.tree_bytes >> 20,
        tree_dir.display()
    );

    let started = Instant::now();
    let again = providers::resolve_qemu(&p, &ctx, &never()).await.unwrap();
    let second = started.elapsed();
    eprintln!("debian:{suite}: cached resolution {second:.2?}");
    let manifest2 = debian_tree::load_tree(&tree_dir).unwrap().manifest;
    assert_eq!(
        manifest2.built_at, manifest.built_at,
        "rebuilt on a cache hit"
    );
    assert_eq!(again.binary, q.binary);
    assert_eq!(again.sha256, q.sha256);
    assert!(second < Duration::from_secs(5), "cache hit took {second:?}");

    assert_eq!(q.spec, format!("debian:{suite}"));
    assert_eq!(q.sha256, manifest.binary_sha256);
    assert_eq!(
        q.package.as_deref(),
        Some(manifest.package_version.as_str())
    );
    assert!(
        q.binary.starts_with(&ctx.cache_root),
        "{}",
        q.binary.display()
    );
    assert!(q.version_line.starts_with("QEMU emulator version "));
    assert!(
        q.version_line.contains(&manifest.package_version),
        "{} vs {}",
        q.version_line,
        manifest.package_version
    );
    (q, manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trixie_qemu_boots_the_crash_fixture_beside_the_hosts() {
    if !network_tests_enabled() || !qemu_tests_enabled() {
        return;
    }
    let host_before = host_qemu_sha256();
    let (q, manifest) = resolve_twice("trixie").await;
    assert!(q.version.starts_with("10.0."), "{}", q.version);
    assert_eq!(manifest.suite, "trixie");
    assert_eq!(
        providers::upstream_version(q.package.as_deref().unwrap()),
        q.version
    );
    // The index unreachable (another mirror, nothing listening): the cached tree still serves.
    let offline = ProviderContext {
        mirror: Some("http://127.0.0.1:9/debian".into()),
        cache_root: ctx().cache_root,
    };
    let cached = providers::resolve_qemu(&"debian:trixie".parse().unwrap(), &offline, &never())
        .await
        .unwrap();
    assert_eq!(cached.binary, q.binary);
    // The tree's loader, not the host's.
    let loader = std::path::PathBuf::from(&q.exec.wrapper[0]);
    assert!(
        loader.starts_with(&ctx().cache_root),
        "{}",
        loader.display()
    );

    let res = results_root();
    let mut req = CaseRequest::new(
        "providers-trixie",
        CaseDir::Under(res.path().to_path_buf()),
        HOST_CODE.into(),
        vec![Step::Boot {
            until: None,
            timeout: Duration::from_secs(120),
            silence: Duration::from_secs(60),
        }],
    );
    req.qemu = q.binary.clone();
    req.qemu_exec = q.exec.clone();
    req.smp = 1;
    req.memory_mib = 512;
    req.disks = vec![fixtures().join("crash.img")];
    req.snapshot = true;
    let checked = case::check(req).unwrap();
    let out = case::run(checked, &Default::default(), &EventSink::none())
        .await
        .unwrap();
    let r = serde_json::to_value(&out.runs[0]).unwrap();
    assert_eq!(r["verdict"], "sync-exception", "{r:#}");
    let version = r["qemu"]["version"].as_str().unwrap();
    assert!(version.starts_with("10.0."), "{r:#}");
    assert_eq!(version, q.version);
    assert!(
        r["command_line"]
            .as_str()
            .unwrap()
            .contains("QEMU_MODULE_DIR="),
        "{r:#}"
    );

    assert_eq!(
        host_qemu_sha256(),
        host_before,
        "the host's qemu-system-aarch64 changed"
    );
}

/// QEMU 5.2 from bullseye: its `lib64/ld-linux-x86-64.so.2` is an absolute symlink, so this
/// only runs when the loader is resolved inside the tree.
#[tokio::test]
async fn bullseye_qemu_5_2_runs_through_its_own_loader() {
    if !network_tests_enabled() {
        return;
    }
    let (q, _) = resolve_twice("bullseye").await;
    assert!(q.version.starts_with("5.2."), "{}", q.version);
    let root = q
        .binary
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    let link = root.join("lib64/ld-linux-x86-64.so.2");
    if let Ok(target) = std::fs::read_link(&link) {
        eprintln!("bullseye {} -> {}", link.display(), target.display());
    }
    // `-machine help` needs the tree's libraries and data, not only `--version`.
    let out = std::process::Command::new(&q.exec.wrapper[0])
        .args(&q.exec.wrapper[1..])
        .arg(&q.binary)
        .args(["-machine", "help"])
        .envs(q.exec.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("virt"));
}

#[tokio::test]
async fn debian_edk2_strictnx_and_host_firmware() {
    if !network_tests_enabled() {
        return;
    }
    let ctx = ctx();
    let p: FirmwareProvider = "debian:2025.02/strictnx".parse().unwrap();
    let f = providers::resolve_firmware(&p, &ctx, &never())
        .await
        .unwrap();
    assert_eq!(f.spec, "debian:2025.02/strictnx");
    assert!(
        f.code.ends_with("AAVMF_CODE.secboot.strictnx.fd"),
        "{}",
        f.code.display()
    );
    assert!(f.vars_template.as_ref().unwrap().ends_with("AAVMF_VARS.fd"));
    let package = f.package.clone().unwrap();
    assert!(package.starts_with("2025.02-"), "{package}");
    assert_eq!(providers::upstream_version(&package), "2025.02");
    assert_eq!(f.code_sha256.len(), 64);

    // Cached: served even with a mirror that cannot answer.
    let offline = ProviderContext {
        mirror: Some("http://127.0.0.1:9/debian".into()),
        cache_root: ctx.cache_root.clone(),
    };
    let again = providers::resolve_firmware(&p, &offline, &never())
        .await
        .unwrap();
    assert_eq!(again.code, f.code);
    assert_eq!(again.code_sha256, f.code_sha256);

    let bogus: FirmwareProvider = "debian:2025.02/bogus".parse().unwrap();
    let err = format!(
        "{:#}",
        providers::resolve_firmware(&bogus, &offline, &never())
            .await
            .unwrap_err()
    );
    assert!(err.contains("bogus") && err.contains("strictnx"), "{err}");

    if std::path::Path::new(HOST_CODE).is_file() {
        let h = providers::resolve_firmware(&FirmwareProvider::Host, &ctx, &never())
            .await
            .unwrap();
        assert_eq!(h.code, std::path::Path::new(HOST_CODE));
        assert!(h.vars_template.is_some());
        eprintln!("host firmware package: {:?}", h.package);
        assert!(h.package.is_some());
    }
}

#[tokio::test]
async fn host_qemu_knows_its_package() {
    if !qemu_tests_enabled() {
        return;
    }
    let q = providers::resolve_qemu(&QemuProvider::Host, &ctx(), &never())
        .await
        .unwrap();
    eprintln!("host: {} {:?}", q.version_line, q.package);
    assert_eq!(q.exec, Default::default());
    assert_eq!(q.version.split('.').count(), 3);
    if which::which("dpkg-query").is_ok() {
        let package = q.package.unwrap();
        let upstream = providers::upstream_version(&package);
        assert!(
            q.version.starts_with(&upstream),
            "{} vs {package}",
            q.version
        );
    }
}

/// The other suites of the matrix (about 20-30 s and 150-250 MiB each when not cached; sid is
/// cached by the matrix tests too).
#[tokio::test]
async fn sid_and_bookworm_backports() {
    if !network_tests_enabled() {
        return;
    }
    let (q, _) = resolve_twice("sid").await;
    assert!(q.version.starts_with("11."), "{}", q.version);
    let (q, m) = resolve_twice("bookworm-backports").await;
    assert!(q.version.starts_with("10.0."), "{}", q.version);
    assert!(m.package_version.contains("bpo12"), "{}", m.package_version);
}
