//! Data-driven classifier tests: each is one line over a real console log in
//! `harness/tests/data/console/` (copied from public bug reports; the first line names the source).

use super::*;
use crate::core::console::MAX_LINE;

fn sample(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/console")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Classifies a sample as an offline log and checks verdict and stage.
fn check(name: &str, verdict: Verdict, stage: Stage) -> (Classifier, Decision) {
    let (cls, d) = classify_log(&sample(name));
    assert_eq!(
        (d.verdict, d.stage),
        (verdict, stage),
        "{name}: {}",
        d.reason
    );
    (cls, d)
}

fn dump(cls: &Classifier, d: &Decision) -> ExceptionDump {
    let f = &cls.current().findings[d.finding.expect("decided by a finding")];
    f.exception.clone().expect("an exception finding")
}

#[test]
fn shim_sbat_failure() {
    check("crash-bitpixie-2-1.txt", Verdict::ShimError, Stage::Shim);
}

#[test]
fn sync_exception_entering_shim_with_backtrace_and_registers() {
    let (cls, d) = check(
        "crash-fedora-coreos-tracker-1014-1.txt",
        Verdict::SyncException,
        Stage::Shim,
    );
    assert!(d.before_grub);
    let x = dump(&cls, &d);
    assert_eq!(x.address.as_deref(), Some("0x00000000BBC3B398"));
    assert_eq!(x.banner_count, 2);
    assert_eq!(x.backtrace.len(), 6);
    assert_eq!(
        x.backtrace[0],
        Frame {
            pc: "0x0000BBC3B398".into(),
            module: None,
            base: None,
            offset: None
        }
    );
    assert_eq!(x.backtrace[2].module.as_deref(), Some("DxeCore.dll"));
    assert_eq!(x.backtrace[2].offset.as_deref(), Some("0x00007650"));
    assert!(x.modules[&2].ends_with("/BdsDxe.dll"));
    assert_eq!(
        x.registers.get("X15").map(String::as_str),
        Some("0x0000000000000000")
    );
    assert_eq!(x.registers.len(), 16);
}

#[test]
fn efistub_error_then_boot_option_failure() {
    check(
        "crash-fedora-coreos-tracker-1271-1.txt",
        Verdict::EfistubError,
        Stage::KernelHandoff,
    );
}

#[test]
fn grub_rescue_shell() {
    let (cls, d) = check(
        "crash-fedora-coreos-tracker-1886-1.txt",
        Verdict::GrubError,
        Stage::Grub,
    );
    assert_eq!(
        cls.current().findings[d.finding.unwrap()].pattern,
        "grub-rescue"
    );
}

#[test]
fn sync_exception_in_firmware_dxe() {
    for name in [
        "crash-kubernetes-the-harder-way-6-1.txt",
        "crash-lima-1996-1.txt",
    ] {
        let (cls, d) = check(name, Verdict::SyncException, Stage::Firmware);
        let x = dump(&cls, &d);
        assert_eq!(
            x.backtrace[0].module.as_deref(),
            Some("ArmCpuDxe.dll"),
            "{name}"
        );
        assert_eq!(x.backtrace.len(), 11, "{name}");
    }
}

#[test]
fn pxe_after_every_boot_option_failed() {
    check(
        "crash-lima-1337-1.txt",
        Verdict::NoBootableDevice,
        Stage::Firmware,
    );
}

#[test]
fn sync_exception_in_ipxe() {
    let (cls, d) = check("crash-lima-3141-1.txt", Verdict::SyncException, Stage::None);
    assert_eq!(
        dump(&cls, &d).address.as_deref(),
        Some("0x0000000079EE9C7C")
    );
}

#[test]
fn secure_boot_access_denied() {
    check(
        "crash-lxc-ci-150-1.txt",
        Verdict::SecureBootDenied,
        Stage::Firmware,
    );
}

#[test]
fn sync_exception_in_a_started_boot_option() {
    let (cls, d) = check(
        "crash-mkosi-1140-1.txt",
        Verdict::SyncException,
        Stage::Firmware,
    );
    assert!(d.before_grub);
    assert_eq!(dump(&cls, &d).banner_count, 2);
    // The benign "failed to load Boot0001" line is a note, not a failure.
    assert!(
        cls.current()
            .findings
            .iter()
            .any(|f| f.pattern == "bds-load-failed" && f.kind == FindingKind::Note)
    );
}

#[test]
fn sync_exception_in_shim_fallback_memattr() {
    for name in ["crash-pftf-rpi4-235-1.txt", "crash-rhboot-shim-585-1.txt"] {
        let (cls, d) = check(name, Verdict::SyncException, Stage::Shim);
        let x = dump(&cls, &d);
        assert!(
            x.address.as_deref().unwrap().ends_with("000"),
            "{name}: page-aligned fault"
        );
    }
}

#[test]
fn kernel_serror_panics() {
    check(
        "crash-qualcomm-linux-kernel-297-1.txt",
        Verdict::KernelPanic,
        Stage::Kernel,
    );
    check(
        "crash-qualcomm-linux-kernel-541-1.txt",
        Verdict::KernelPanic,
        Stage::Kernel,
    );
}

#[test]
fn sync_exception_after_shim_started() {
    let (cls, d) = check(
        "crash-rhboot-shim-371-1.txt",
        Verdict::SyncException,
        Stage::Shim,
    );
    assert_eq!(
        dump(&cls, &d).backtrace[2].module.as_deref(),
        Some("DxeCore.dll")
    );
}

#[test]
fn shim_cannot_read_the_next_stage() {
    check(
        "crash-rhboot-shim-490-1.txt",
        Verdict::ShimError,
        Stage::Shim,
    );
}

#[test]
fn grub_cannot_find_the_kernel() {
    check(
        "crash-rhel-edge-1231-1.txt",
        Verdict::GrubError,
        Stage::Grub,
    );
}

#[test]
fn sync_exception_from_the_boot_manager_ui() {
    let (cls, d) = check(
        "crash-ventoy-1658-1.txt",
        Verdict::SyncException,
        Stage::None,
    );
    let x = dump(&cls, &d);
    assert!(
        x.backtrace
            .iter()
            .any(|f| f.module.as_deref() == Some("UiApp.dll"))
    );
}

#[test]
fn healthy_boots_with_benign_warnings_are_reached() {
    let (cls, _) = check(
        "ok-canonical-lxd-12211-1.txt",
        Verdict::Reached,
        Stage::Kernel,
    );
    let notes: Vec<_> = cls
        .current()
        .findings
        .iter()
        .map(|f| (f.pattern.as_str(), f.kind))
        .collect();
    assert_eq!(notes, vec![("efistub-firmware-bug", FindingKind::Note)]);
    check(
        "ok-clangbuiltlinux-1782-1.txt",
        Verdict::Reached,
        Stage::Kernel,
    );
}

#[test]
fn old_grub_reading_a_new_config_resets_into_the_firmware_ui() {
    let (cls, d) = check(
        "own-grub-2.12-upgrade-without-grub-install-1.txt",
        Verdict::NoBootableDevice,
        Stage::Firmware,
    );
    assert_eq!(
        cls.boots().len(),
        2,
        "the reset into the firmware starts a second boot"
    );
    let first = &cls.boots()[0];
    assert_eq!(first.stage, Stage::Grub);
    assert!(
        first
            .findings
            .iter()
            .any(|f| f.pattern == "grub-error" && f.text.contains("bli.mod"))
    );
    assert_eq!(
        cls.current().findings[d.finding.unwrap()].pattern,
        "bds-boot-manager-ui"
    );
}

#[test]
fn edk2_2026_08_on_qemu_5_2_faults_right_after_its_banner() {
    let (cls, d) = check(
        "own-edk2-2026.08-on-qemu-5.2-1.txt",
        Verdict::SyncException,
        Stage::Firmware,
    );
    assert!(d.before_grub);
    let x = dump(&cls, &d);
    assert_eq!(x.address.as_deref(), Some("0x0000000046693ECC"));
    assert!(
        x.backtrace.is_empty(),
        "this build prints no dump after the line"
    );
}

/// Every sample in the test data has an expectation above (a new sample needs a test).
#[test]
fn every_sample_is_covered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/console");
    let this = include_str!("tests.rs");
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            this.contains(&format!("\"{name}\"")),
            "no test for sample {name}"
        );
    }
}

// ------------------------------------------------------------------ streaming behaviour

fn feed_lines(cls: &mut Classifier, lines: &[&str], t: f64) {
    let mut s = lines.join("\n");
    s.push('\n');
    cls.feed_text(&s, Some(t));
}

#[test]
fn a_recovering_grub_error_is_cleared_by_progress() {
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &[
            "Welcome to GRUB!",
            "error: no such device: 1234.",
            "Loading Linux 6.1 ...",
        ],
        1.0,
    );
    assert!(cls.current().suspect().is_none());
    feed_lines(
        &mut cls,
        &[
            "EFI stub: Booting Linux Kernel...",
            "[    0.000000] Booting Linux on physical CPU 0x0",
        ],
        2.0,
    );
    let d = cls.decide(Some(Stage::Kernel), &End::Running).unwrap();
    assert_eq!((d.verdict, d.exit_code), (Verdict::Reached, 0));
    assert_eq!(cls.current().stage_time(Stage::Grub), Some(1.0));
    assert_eq!(cls.current().stage_time(Stage::Kernel), Some(2.0));
}

#[test]
fn running_decides_only_on_fatal_or_target() {
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &[
            "UEFI firmware (version 2022.11 built at 1 on 2)",
            ">>Start PXE over IPv4.",
        ],
        1.0,
    );
    assert!(cls.decide(Some(Stage::Login), &End::Running).is_none());
    let d = cls
        .decide(Some(Stage::Login), &End::Silence { seconds: 10.0 })
        .unwrap();
    assert_eq!((d.verdict, d.exit_code), (Verdict::NoBootableDevice, 1));
    feed_lines(
        &mut cls,
        &["Synchronous Exception at 0x0000000012345000"],
        2.0,
    );
    assert!(cls.dump_open());
    let d = cls.decide(Some(Stage::Login), &End::Running).unwrap();
    assert_eq!(
        (d.verdict, d.stage, d.before_grub),
        (Verdict::SyncException, Stage::Firmware, true)
    );
}

#[test]
fn silence_timeout_and_exit_without_findings() {
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &["BdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0)"],
        1.0,
    );
    let d = cls.decide(None, &End::Silence { seconds: 5.0 }).unwrap();
    assert_eq!(
        (d.verdict, d.stage, d.exit_code),
        (Verdict::Hang, Stage::Firmware, 1)
    );
    let d = cls
        .decide(Some(Stage::Login), &End::Timeout { seconds: 60.0 })
        .unwrap();
    assert_eq!((d.verdict, d.exit_code), (Verdict::Timeout, 125));
    let poweroff = End::QemuExited {
        clean_poweroff: true,
        status: "exit status 0".into(),
    };
    assert_eq!(cls.decide(None, &poweroff).unwrap().exit_code, 0);
    let d = cls.decide(Some(Stage::Login), &poweroff).unwrap();
    assert_eq!((d.verdict, d.exit_code), (Verdict::QemuExited, 1));
}

#[test]
fn prompt_on_the_unterminated_tail_counts_once() {
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &["[  OK  ] Reached target multi-user.target."],
        1.0,
    );
    cls.feed_partial("debian login: ", Some(2.0));
    assert!(cls.current().reached(Stage::Login));
    cls.feed_text("debian login: \n", Some(3.0));
    let logins = cls
        .current()
        .timeline
        .iter()
        .filter(|m| m.stage == Stage::Login)
        .count();
    assert_eq!(logins, 1);
    assert_eq!(cls.current().stage_time(Stage::Login), Some(2.0));
}

#[test]
fn a_second_firmware_banner_or_a_reset_starts_a_new_boot() {
    let mut cls = Classifier::new();
    let banner = "UEFI firmware (version 2022.11 built at 1 on 2)";
    feed_lines(&mut cls, &[banner, "Welcome to GRUB!"], 1.0);
    feed_lines(
        &mut cls,
        &[banner, "Synchronous Exception at 0x0000000012345000"],
        9.0,
    );
    assert_eq!(cls.boots().len(), 2);
    assert_eq!(cls.boots()[0].stage, Stage::Grub);
    assert_eq!(
        cls.decide(None, &End::Running).unwrap().verdict,
        Verdict::SyncException
    );
    cls.new_boot("reset", Some(10.0));
    assert_eq!(cls.boots().len(), 3);
    cls.new_boot("reset", Some(10.5)); // nothing printed since: no empty boot
    assert_eq!(cls.boots().len(), 3);
}

#[test]
fn register_dump_without_banner_is_a_firmware_exception() {
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &[
            "  X0 0x0000000000000001   X1 0x0000000000000002   X2 0x0000000000000003   X3 0x0000000000000004",
        ],
        1.0,
    );
    let d = cls.decide(None, &End::Running).unwrap();
    assert_eq!(d.verdict, Verdict::FirmwareException);
}

#[test]
fn debug_build_assert_ends_the_dump_and_does_not_replace_the_verdict() {
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &[
            "Synchronous Exception at 0x000000007C743000",
            "  SP 0x000000007FFB3E90  ELR 0x000000007C743000  SPSR 0x60000205  FPSR 0x00000000",
            " ESR 0x02000000          FAR 0x0000000000000000",
            " ESR : EC 0x00  IL 0x1  ISS 0x00000000",
            "ASSERT [ArmCpuDxe] /b/DefaultExceptionHandler.c(333): ((BOOLEAN)(0==1))",
        ],
        1.0,
    );
    let d = cls.decide(None, &End::Running).unwrap();
    assert_eq!(d.verdict, Verdict::SyncException);
    let x = cls.current().findings[d.finding.unwrap()]
        .exception
        .clone()
        .unwrap();
    assert_eq!(x.esr.as_deref(), Some("0x02000000"));
    assert_eq!(x.elr.as_deref(), Some("0x000000007C743000"));
    assert_eq!(x.far.as_deref(), Some("0x0000000000000000"));
    assert!(x.assert.unwrap().contains("ArmCpuDxe"));
    assert_eq!(
        x.syndrome.as_deref(),
        Some("ESR : EC 0x00  IL 0x1  ISS 0x00000000")
    );
    assert_eq!(cls.current().findings.len(), 1);
}

// ------------------------------------------------------------------ behaviour from pattern fields

#[test]
fn a_started_boot_option_takes_the_stage_its_file_name_says() {
    let stage_after = |line: &str| {
        let mut cls = Classifier::new();
        feed_lines(&mut cls, &[line], 1.0);
        cls.current().stage
    };
    let from = "from HD(1,GPT,F3395D88-1F07-48B3-AF35-4BF4BC88021F,0x800,0x31801)";
    assert_eq!(
        stage_after(&format!(
            "BdsDxe: starting Boot0003 \"debian\" {from}/\\EFI\\debian\\SHIMAA64.EFI"
        )),
        Stage::Shim
    );
    assert_eq!(
        stage_after(&format!(
            "BdsDxe: starting Boot0003 \"debian\" {from}/\\EFI\\debian\\grubaa64.efi"
        )),
        Stage::Grub
    );
    // Loading runs nothing yet; an application that is neither shim nor GRUB is firmware.
    assert_eq!(
        stage_after(&format!(
            "BdsDxe: loading Boot0003 \"debian\" {from}/\\EFI\\debian\\shimaa64.efi"
        )),
        Stage::Firmware
    );
    assert_eq!(
        stage_after(&format!(
            "BdsDxe: starting Boot0003 \"x\" {from}/\\EFI\\BOOT\\BOOTAA64.EFI"
        )),
        Stage::Firmware
    );
}

#[test]
fn the_firmware_banner_version_is_read_from_the_timeline() {
    let mut cls = Classifier::new();
    assert_eq!(cls.firmware_banner_version(), None);
    feed_lines(
        &mut cls,
        &[
            "UEFI firmware (version edk2-stable202302-for-qemu built at 17:14:55 on Mar 15 2023)",
            "Welcome to GRUB!",
        ],
        1.0,
    );
    assert_eq!(
        cls.firmware_banner_version().as_deref(),
        Some("edk2-stable202302-for-qemu")
    );
    let (cls, _) = classify_log(b"UEFI firmware (version  built at 12:00:00 on Jan  1 2023)\n");
    assert_eq!(cls.firmware_banner_version().as_deref(), Some(""));
}

/// The code asks for fields, not names: with every pattern renamed, every sample gets the same
/// boots, stages, findings and dumps (only the recorded pattern names differ).
#[test]
fn renaming_every_pattern_changes_nothing_but_the_names() {
    let renamed = patterns::PATTERNS_TOML.replace("\nname = \"", "\nname = \"renamed-");
    assert!(renamed.matches("name = \"renamed-").count() > 40);
    let set: &'static PatternSet = Box::leak(Box::new(PatternSet::parse(&renamed).unwrap()));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/console");
    let mut dumps = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let (a, da) = classify_log(&bytes);
        let (b, db) = classify_log_with(Classifier::with_patterns(set), &bytes);
        let json = |cls: &Classifier, d: &Decision| {
            serde_json::to_string(&(cls.boots(), d, cls.firmware_banner_version())).unwrap()
        };
        let renamed_json = json(&b, &db).replace("\"pattern\":\"renamed-", "\"pattern\":\"");
        assert_eq!(json(&a, &da), renamed_json);
        dumps += a
            .boots()
            .iter()
            .flat_map(|b| &b.findings)
            .filter(|f| {
                f.exception
                    .as_ref()
                    .is_some_and(|x| !x.backtrace.is_empty())
            })
            .count();
    }
    assert!(
        dumps > 5,
        "the samples hold exception dumps with backtraces"
    );
}

// ------------------------------------------------------------------ hostile console output (#12)

/// The kept findings of pattern `name` in `boot`.
fn kept<'a>(boot: &'a Boot, name: &str) -> Vec<&'a Finding> {
    boot.findings.iter().filter(|f| f.pattern == name).collect()
}

#[test]
fn error_lines_printed_after_userspace_are_not_grub_or_shim_failures() {
    let (cls, _) = check(
        "own-issue-12-error-lines-after-userspace-1.txt",
        Verdict::Reached,
        Stage::Userspace,
    );
    // `error:`, `Failed to load image`, `start_image() returned`, `grub> ` and `Shell> ` were
    // all printed by userspace: none of them is a finding.
    assert!(
        cls.current().findings.is_empty(),
        "{:?}",
        cls.current().findings
    );
}

#[test]
fn a_banner_without_its_address_is_a_crash() {
    let (cls, d) = check(
        "own-issue-12-banner-without-address-1.txt",
        Verdict::SyncException,
        Stage::Firmware,
    );
    let x = dump(&cls, &d);
    assert_eq!((x.kind.as_str(), x.address), ("Synchronous", None));
    assert_eq!(x.elr.as_deref(), Some("0x000000007C743000"));
    assert_eq!(x.registers.len(), 10);
    for line in [
        "Synchronous Exception at 0x",
        "Synchronous Exception at 0x00000",
        "Synchronous Exception at",
        "SError Exception at 0x",
    ] {
        let (cls, d) = classify_log(format!("{line}\n").as_bytes());
        assert!(d.verdict.is_guest_failure(), "{line}: {}", d.reason);
        let x = dump(&cls, &d);
        let want = line.split("0x").nth(1).filter(|a| !a.is_empty());
        assert_eq!(x.address, want.map(|a| format!("0x{a}")), "{line}");
    }
}

#[test]
fn a_banner_cut_by_the_line_limit_is_found() {
    let (cls, d) = check(
        "own-issue-12-banner-across-the-line-limit-1.txt",
        Verdict::SyncException,
        Stage::Firmware,
    );
    let x = dump(&cls, &d);
    assert_eq!(x.address.as_deref(), Some("0x000000007C743000"));
    // The dump goes on after it.
    assert_eq!(x.registers.len(), 4);
    assert_eq!(x.backtrace.len(), 1);
    // Wherever the cut falls in the banner, and whatever comes before it (a character cut in
    // two bytes before the limit moves the cut), the whole banner is found, once.
    let banner = "Synchronous Exception at 0x000000007C743000";
    for filler in ["=", "\u{fffd}", "é"] {
        for k in 1..banner.len() {
            let fill = filler.repeat((MAX_LINE - k) / filler.len() + 1);
            let mut pre = &fill[..];
            while pre.len() > MAX_LINE - k {
                pre = &pre[..pre.len() - filler.len()];
            }
            let log = format!("{pre}{banner}\nnext line\n");
            let (cls, d) = classify_log(log.as_bytes());
            assert_eq!(d.verdict, Verdict::SyncException, "{filler:?} cut at {k}");
            let x = dump(&cls, &d);
            assert_eq!(
                x.address.as_deref(),
                Some("0x000000007C743000"),
                "cut at {k}"
            );
            assert_eq!(cls.current().findings.len(), 1, "{filler:?} cut at {k}");
        }
    }
    // A long line with the banner whole in its first piece is found once, not again with the
    // next piece.
    let log = format!("{banner} {}\n", "x".repeat(2 * MAX_LINE));
    let (cls, d) = classify_log(log.as_bytes());
    assert_eq!(d.verdict, Verdict::SyncException);
    assert_eq!(cls.current().findings.len(), 1);
}

#[test]
fn a_note_flood_keeps_the_first_findings_and_counts_the_rest() {
    let (cls, _) = check(
        "own-issue-12-note-flood-1.txt",
        Verdict::Reached,
        Stage::Kernel,
    );
    let notes = kept(cls.current(), "bds-load-failed");
    assert_eq!(notes.len(), FINDINGS_PER_PATTERN);
    assert_eq!(
        notes.last().unwrap().repeats,
        300 - FINDINGS_PER_PATTERN as u64
    );
    assert_eq!(
        cls.current().findings_dropped,
        300 - FINDINGS_PER_PATTERN as u64
    );
    assert!(
        notes[..FINDINGS_PER_PATTERN - 1]
            .iter()
            .all(|f| f.repeats == 0)
    );
}

#[test]
fn a_banner_flood_is_decided_by_the_first_banner_and_keeps_a_few() {
    let (cls, d) = check(
        "own-issue-12-banner-flood-1.txt",
        Verdict::SyncException,
        Stage::Firmware,
    );
    assert_eq!(
        dump(&cls, &d).address.as_deref(),
        Some("0x000000007C743000")
    );
    let banners = kept(cls.current(), "edk2-sync-exception");
    assert_eq!(banners.len(), FINDINGS_PER_PATTERN);
    assert_eq!(
        banners.last().unwrap().repeats,
        300 - FINDINGS_PER_PATTERN as u64
    );
}

/// 10^5 lines of every kind a pattern matches (each pattern's examples in turn, with stage lines
/// and firmware restarts among them): the classifier's output stays small.
#[test]
fn a_flood_of_every_pattern_keeps_a_bounded_output() {
    let set = PatternSet::builtin();
    let examples: Vec<&str> = set
        .patterns
        .iter()
        .filter(|p| p.effect != Effect::RoleOnly)
        .flat_map(|p| p.examples.iter().map(String::as_str))
        .collect();
    let mut log = String::new();
    for i in 0..100_000 {
        log.push_str(examples[i % examples.len()]);
        log.push_str(&format!(" {i}\n"));
    }
    let (cls, _) = classify_log(log.as_bytes());
    assert_eq!(cls.lines(), 100_000);
    assert!(cls.boots_started() > 1000, "{}", cls.boots_started());
    assert_eq!(cls.boots().len(), BOOTS_KEPT_FIRST + BOOTS_KEPT_LAST);
    assert_eq!(
        cls.boots_dropped() as usize,
        cls.boots_started() - cls.boots().len()
    );
    let json = serde_json::to_vec(cls.boots()).unwrap();
    assert!(json.len() < 1 << 20, "{} bytes", json.len());
}

/// 10^5 lines of one kind each: what is kept does not grow with the flood.
#[test]
fn floods_of_one_kind_keep_a_bounded_output() {
    /// A name and the flood's line `i`.
    type Flood = (&'static str, fn(usize) -> String);
    let floods: [Flood; 5] = [
        ("notes", |_| {
            "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Not Found".into()
        }),
        ("distinct banners", |i| {
            format!("Synchronous Exception at 0x{:016X}", 0x7C743000 + 4 * i)
        }),
        ("frames", |i| {
            format!(
                "PC 0x{:012X} (0x0000BF566000+0x{:08X}) [ 1] DxeCore.dll",
                i, i
            )
        }),
        ("modules", |i| {
            format!("[{i:2}] /build/edk2/Build/{i}/DxeCore.dll")
        }),
        ("resets", |i| {
            if i % 2 == 0 {
                "UEFI firmware (version 2022.11 built at 1 on 2)".into()
            } else {
                "Welcome to GRUB!".into()
            }
        }),
    ];
    for (name, line) in floods {
        let mut log = String::from("Synchronous Exception at 0x0000000012345000\n");
        for i in 0..100_000 {
            log.push_str(&line(i));
            log.push('\n');
        }
        let (cls, d) = classify_log(log.as_bytes());
        // After the resets, the current boot is a healthy one; the crash is in the first.
        let crashed = if name == "resets" {
            cls.boots()[0].fatal().is_some()
        } else {
            d.verdict == Verdict::SyncException
        };
        assert!(crashed, "{name}: {}", d.reason);
        let findings: usize = cls.boots().iter().map(|b| b.findings.len()).sum();
        assert!(
            findings <= 2 * FINDINGS_PER_PATTERN,
            "{name}: {findings} findings"
        );
        assert!(
            cls.boots().len() <= BOOTS_KEPT_FIRST + BOOTS_KEPT_LAST,
            "{name}"
        );
        for x in cls
            .boots()
            .iter()
            .flat_map(|b| &b.findings)
            .filter_map(|f| f.exception.as_ref())
        {
            assert!(x.backtrace.len() <= DUMP_FRAMES, "{name}");
            assert!(x.modules.len() <= DUMP_MODULES, "{name}");
        }
        let json = serde_json::to_vec(&(cls.boots(), &d)).unwrap();
        assert!(json.len() < 64 << 10, "{name}: {} bytes", json.len());
    }
    // What was not kept is counted.
    let mut log = String::from("Synchronous Exception at 0x0000000012345000\n");
    for i in 0..1000 {
        log.push_str(&format!("PC 0x{i:012X}\n[{i:2}] /b/{i}.dll\n"));
    }
    let (cls, d) = classify_log(log.as_bytes());
    let x = dump(&cls, &d);
    assert_eq!(
        (x.backtrace.len(), x.modules.len()),
        (DUMP_FRAMES, DUMP_MODULES)
    );
    assert_eq!(
        x.entries_dropped as usize,
        2000 - DUMP_FRAMES - DUMP_MODULES
    );
}

/// The first and the last boots are kept; the boot after the gap says how many are missing.
#[test]
fn only_the_first_and_the_last_boots_are_kept() {
    let mut cls = Classifier::new();
    for i in 0..100 {
        feed_lines(&mut cls, &["Welcome to GRUB!"], i as f64);
        cls.new_boot("reset", Some(i as f64 + 0.5));
    }
    feed_lines(&mut cls, &["Welcome to GRUB!"], 100.0);
    let indexes: Vec<usize> = cls.boots().iter().map(|b| b.index).collect();
    let kept_last = 101 - BOOTS_KEPT_LAST;
    let want: Vec<usize> = (0..BOOTS_KEPT_FIRST).chain(kept_last..101).collect();
    assert_eq!(indexes, want);
    assert_eq!(cls.boots_started(), 101);
    assert_eq!(cls.boots_dropped() as usize, kept_last - BOOTS_KEPT_FIRST);
    let gap = &cls.boots()[BOOTS_KEPT_FIRST];
    assert_eq!(
        gap.boots_dropped_before as usize,
        kept_last - BOOTS_KEPT_FIRST
    );
    assert!(
        cls.boots()
            .iter()
            .filter(|b| b.boots_dropped_before > 0)
            .count()
            == 1
    );
}

/// Past the cap, a suspect is still kept when every earlier one of its pattern was cleared: the
/// one that decides is the same as without the cap.
#[test]
fn a_suspect_after_cleared_ones_is_kept_past_the_cap() {
    let mut cls = Classifier::new();
    let errors: Vec<String> = (0..40)
        .map(|i| format!("error: no such device: {i}."))
        .collect();
    let mut lines = vec!["Welcome to GRUB!"];
    lines.extend(errors[..20].iter().map(String::as_str));
    lines.push("Loading Linux 6.1 ...");
    lines.extend(errors[20..].iter().map(String::as_str));
    feed_lines(&mut cls, &lines, 1.0);
    let d = cls.decide(None, &End::EndOfLog).unwrap();
    assert_eq!(d.verdict, Verdict::GrubError);
    let f = &cls.current().findings[d.finding.unwrap()];
    assert_eq!(f.text, "error: no such device: 20.");
    let errs = kept(cls.current(), "grub-error");
    assert_eq!(errs.len(), FINDINGS_PER_PATTERN + 1);
    assert_eq!(
        errs.iter().map(|f| f.repeats).sum::<u64>(),
        40 - FINDINGS_PER_PATTERN as u64 - 1
    );
}

#[test]
fn suspects_count_only_in_the_stages_that_print_them() {
    let decide = |lines: &[&str]| {
        let mut cls = Classifier::new();
        feed_lines(&mut cls, lines, 1.0);
        cls.decide(None, &End::EndOfLog).unwrap().verdict
    };
    let userspace = "[  OK  ] Reached target multi-user.target - Multi-User System.";
    assert_eq!(
        decide(&["Welcome to GRUB!", "error: file not found."]),
        Verdict::GrubError
    );
    assert_eq!(
        decide(&[userspace, "error: file not found."]),
        Verdict::Reached
    );
    // GRUB's own errors while loading the kernel still count.
    assert_eq!(
        decide(&[
            "Loading Linux 6.1 ...",
            "error: you need to load the kernel first."
        ]),
        Verdict::GrubError
    );
    assert_eq!(
        decide(&["Failed to load image: Not Found"]),
        Verdict::ShimError
    );
    assert_eq!(
        decide(&["Welcome to GRUB!", "Failed to load image: Not Found"]),
        Verdict::Reached
    );
    // A firmware banner after userspace is the firmware starting again: its boot's GRUB errors
    // count (an offline log that begins before a reboot has no RESET event to say so).
    let mut cls = Classifier::new();
    feed_lines(
        &mut cls,
        &[
            userspace,
            "UEFI firmware (version 2022.11 built at 1 on 2)",
            "error: file `/boot/grub/arm64-efi/bli.mod' not found.",
        ],
        1.0,
    );
    assert_eq!(cls.boots().len(), 2);
    let d = cls.decide(None, &End::EndOfLog).unwrap();
    assert_eq!(d.verdict, Verdict::GrubError);
    // A prompt on the unterminated tail is scoped too.
    let mut cls = Classifier::new();
    feed_lines(&mut cls, &[userspace], 1.0);
    cls.feed_partial("grub> ", Some(2.0));
    assert!(cls.current().findings.is_empty());
}

/// A 1 MiB line of invalid UTF-8: every byte is one U+FFFD, in lines of at most `MAX_LINE`
/// bytes, and a banner after it is found.
#[test]
fn a_long_line_of_invalid_utf8_is_classified_and_bounded() {
    let mut log = vec![0xffu8; 1 << 20];
    log.extend_from_slice(b"\nSynchronous Exception at 0x0000000012345000\n");
    let (cls, d) = classify_log(&log);
    assert_eq!(d.verdict, Verdict::SyncException);
    let pieces = (3usize << 20).div_ceil(MAX_LINE - 2);
    assert!(
        cls.lines() as usize >= pieces && cls.lines() as usize <= pieces + 2,
        "{} lines",
        cls.lines()
    );
    assert_eq!(cls.current().findings.len(), 1);
    assert!(cls.last_line().len() <= MAX_LINE);
}

/// A finding from a long line keeps the part with the match, at most `MAX_TEXT` bytes.
#[test]
fn a_long_line_is_clipped_around_its_match() {
    let line = format!(
        "{} Synchronous Exception at 0x0000000012345000 {}",
        "a".repeat(3000),
        "b".repeat(1000)
    );
    let (cls, d) = classify_log(format!("{line}\n").as_bytes());
    let f = &cls.current().findings[d.finding.unwrap()];
    assert!(
        f.text.len() <= MAX_TEXT + 2 * '…'.len_utf8(),
        "{}",
        f.text.len()
    );
    assert!(
        f.text
            .contains("Synchronous Exception at 0x0000000012345000")
    );
    assert!(f.text.starts_with('…') && f.text.ends_with('…'));
    assert!(d.reason.len() < MAX_TEXT + 100);
}

/// `has_long_line` agrees with looking at every line, wherever the long line is.
#[test]
fn long_lines_are_found_wherever_they_are_in_a_region() {
    let naive = |r: &[u8]| r.split(|&b| b == b'\n').any(|l| l.len() + 3 >= MAX_LINE);
    for long in [MAX_LINE - 4, MAX_LINE - 3, MAX_LINE, 3 * MAX_LINE] {
        for before in [0, 1, 7, 100] {
            for after in [0, 1, 50] {
                let mut r = Vec::new();
                for i in 0..before {
                    r.extend(std::iter::repeat_n(b'a', i * 37 % 300));
                    r.push(b'\n');
                }
                r.extend(std::iter::repeat_n(b'x', long));
                r.push(b'\n');
                for i in 0..after {
                    r.extend(std::iter::repeat_n(b'b', i * 53 % 4000));
                    r.push(b'\n');
                }
                assert_eq!(has_long_line(&r), naive(&r), "{long} {before} {after}");
                // Without its last '\n' too.
                r.pop();
                assert_eq!(has_long_line(&r), naive(&r), "{long} {before} {after}");
            }
        }
    }
}

// ------------------------------------------------------------------ speed (#13)

/// Everything a classification says about a log: boots, findings, dumps, timeline, decision,
/// counts and the last line.
fn outcome(cls: &Classifier, d: &Decision) -> String {
    serde_json::to_string(&(
        cls.boots(),
        d,
        cls.boots_started(),
        cls.boots_dropped(),
        cls.lines(),
        cls.last_line(),
        cls.firmware_banner_version(),
    ))
    .unwrap()
}

/// `bytes` classified in pieces of the given sizes (cycled), with or without passing over the
/// lines whose literals can change nothing.
fn classify_pieces(bytes: &[u8], sizes: &[usize], prune: bool) -> String {
    let mut cls = Classifier::new();
    cls.prune = prune;
    let mut log = LogClassifier::with_classifier(cls);
    let mut rest = bytes;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(n.min(rest.len()));
        log.feed(now);
        rest = later;
    }
    let (cls, d) = log.finish();
    outcome(&cls, &d)
}

/// [`LogClassifier::classify_pipelined`] fed `bytes` in pieces of `sizes` (cycled).
fn classify_two_threads(bytes: &[u8], sizes: &[usize]) -> String {
    let mut rest = bytes;
    let mut sizes = sizes.iter().cycle();
    let (cls, d) = LogClassifier::classify_pipelined(|buf: &mut Vec<u8>| {
        let n = (*sizes.next().expect("cycled")).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        Ok::<bool, ()>(n > 0)
    })
    .expect("no read fails");
    outcome(&cls, &d)
}

/// A read error ends the pipelined classification and is what it returns, however many pieces
/// were already on their way.
#[test]
fn a_read_error_ends_the_pipelined_classification() {
    let mut pieces = 0;
    let r = LogClassifier::classify_pipelined(|buf: &mut Vec<u8>| {
        pieces += 1;
        if pieces == 5 {
            return Err(format!("read {pieces} failed"));
        }
        buf.extend_from_slice(b"Synchronous Exception at 0x0000000047E3A2B0\r\n");
        Ok(true)
    });
    assert_eq!(r.err().as_deref(), Some("read 5 failed"));
}

/// The real recorded console and every sample, alone, concatenated, and shuffled line by line
/// into new logs (dumps inside userspace, banners after logins, boots cut anywhere), read in
/// pieces of many sizes: passing over lines at the scan changes nothing in any result, and a
/// streamed classification is the whole-log one.
#[test]
fn passing_over_inert_lines_changes_no_result() {
    use rand::{Rng, SeedableRng, seq::SliceRandom};
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut logs =
        vec![std::fs::read(data.join("recorded/debian-12-upgrade-reboot.serial.raw")).unwrap()];
    let mut names: Vec<_> = std::fs::read_dir(data.join("console"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for n in &names {
        logs.push(std::fs::read(n).unwrap());
    }
    let all: Vec<u8> = logs.concat();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let lines: Vec<&[u8]> = all.split_inclusive(|&b| b == b'\n').collect();
    let mut shuffled = Vec::new();
    for _ in 0..20 {
        let mut log = Vec::new();
        for _ in 0..rng.gen_range(50..3000) {
            // Runs of consecutive lines, so dumps and boots stay partly whole.
            let at = rng.gen_range(0..lines.len());
            for l in lines.iter().skip(at).take(rng.gen_range(1..40)) {
                log.extend_from_slice(l);
            }
        }
        shuffled.push(log);
    }
    let mut runs: Vec<Vec<u8>> = logs.clone();
    runs.push(all.clone());
    runs.extend(shuffled);
    for (k, log) in runs.iter().enumerate() {
        let (cls, d) = classify_log(log);
        let whole = outcome(&cls, &d);
        assert_eq!(classify_pieces(log, &[LOG_CHUNK], false), whole, "log {k}");
        let mut sizes: Vec<usize> = (0..8).map(|_| rng.gen_range(1..5000)).collect();
        sizes.shuffle(&mut rng);
        assert_eq!(
            classify_pieces(log, &sizes, true),
            whole,
            "log {k} in pieces"
        );
        assert_eq!(
            classify_pieces(log, &sizes, false),
            whole,
            "log {k} in pieces"
        );
        assert_eq!(
            classify_two_threads(log, &sizes),
            whole,
            "log {k} on two threads"
        );
    }
    // The recorded console boots to a login twice: most lines with a literal (systemd's
    // status lines) are passed over.
    let (cls, _) = classify_log(&logs[0]);
    assert!(cls.current().reached(Stage::Login));
    let mut all_lines = Classifier::new();
    all_lines.prune = false;
    let (all_lines, _) = classify_log_with(all_lines, &logs[0]);
    assert!(
        cls.looked_at * 4 < all_lines.looked_at,
        "{} of {} lines looked at",
        cls.looked_at,
        all_lines.looked_at
    );
}
