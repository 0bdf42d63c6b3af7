//! Offline classification throughput on real console text (the README quotes these figures):
//! the recorded Debian 12 boot, upgrade and reboot (`tests/data/recorded/`) alone and together
//! with every sample in `tests/data/console/`, repeated to 64 MiB, through the path
//! `bootwatch classify` takes (normalize on one thread, classify on another, fed in the CLI's read
//! size), the same on one thread, and split into normalize-only and classify-only. Also a synthetic log of kernel lines, and hostile console
//! output (issue #12): a long line of invalid UTF-8 (offline, and read in small pieces as a
//! session reads it), a flood of benign notes and a flood of distinct exception banners. Each of
//! these used to cost time or memory that grew faster than the input. Run: `cargo bench --bench
//! classify -- --warm-up-time 1 --measurement-time 3` (the README's test command, `cargo test
//! --workspace --all-targets`, runs each once in criterion's test mode).

use std::fmt::Write;
use std::hint::black_box;

use bootwatch::core::verdict::Verdict;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A boot log of about `size` bytes: firmware and GRUB lines, then kernel and systemd lines of
/// the kinds a real arm64 boot prints (only a few of them match any pattern), with CRLF line ends
/// as a serial console sends them.
fn boot_log(size: usize) -> Vec<u8> {
    let firmware = "UEFI firmware (version 2022.11-6+deb12u2 built at 10:39:47 on Mar  3 2025)\r\n\
        BdsDxe: loading Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0)\r\n\
        BdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0)\r\n\
        Welcome to GRUB!\r\n  Booting `Debian GNU/Linux'\r\n\r\nLoading Linux 6.1.0-26-cloud-arm64 ...\r\n\
        EFI stub: Booting Linux Kernel...\r\nEFI stub: Using DTB from configuration table\r\n";
    let kernel = [
        "pci 0000:00:01.0: BAR 4: assigned [mem 0x8000000000-0x8000003fff 64bit pref]",
        "virtio_blk virtio1: [vda] 4194304 512-byte logical blocks (2.15 GB/2.00 GiB)",
        "EXT4-fs (vda2): mounted filesystem 3c1e4f1a-8d2e-4a57-9c3b-7d6b0f2e1a11 with ordered data mode.",
        "audit: type=1400 audit(1700000000.123:2): apparmor=\"STATUS\" operation=\"profile_load\" name=\"nvidia_modprobe\"",
        "random: crng init done",
        "rtc-pl031 9010000.pl031: setting system clock to 2026-11-26T05:30:00 UTC (1795584600)",
        "NET: Registered PF_INET6 protocol family",
        "Freeing unused kernel memory: 6272K",
        "hrtimer: interrupt took 1234567 ns",
        "clocksource: Switched to clocksource arch_sys_counter",
    ];
    let user = [
        "         Starting systemd-journald.service - Journal Service...",
        "         Mounting sys-kernel-debug.mount - Kernel Debug File System...",
        "[  OK  ] Finished systemd-tmpfiles-setup.service - Create Volatile Files and Directories.",
        "cloud-init[412]: Cloud-init v. 22.4.2 running 'modules:config' at Thu, 26 Nov 2026 05:30:12 +0000.",
    ];
    let mut s = String::with_capacity(size + 4096);
    s.push_str(firmware);
    let mut i = 0u64;
    while s.len() < size {
        let t = i as f64 * 0.000137;
        if i % 50 == 49 {
            let _ = write!(s, "{}\r\n", user[(i / 50) as usize % user.len()]);
        } else {
            let _ = write!(s, "[{t:12.6}] {}\r\n", kernel[i as usize % kernel.len()]);
        }
        i += 1;
    }
    s.push_str("\nDebian GNU/Linux 12 debian ttyAMA0\n\ndebian login: ");
    s.into_bytes()
}

/// The recorded console, and the recorded console followed by every sample.
fn real_consoles() -> (Vec<u8>, Vec<u8>) {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let recorded = std::fs::read(data.join("recorded/debian-12-upgrade-reboot.serial.raw"))
        .expect("the recorded console");
    let mut samples: Vec<_> = std::fs::read_dir(data.join("console"))
        .expect("the samples")
        .map(|e| e.expect("a sample").path())
        .collect();
    samples.sort();
    let mut all = recorded.clone();
    for s in samples {
        all.extend(std::fs::read(s).expect("a sample"));
    }
    (recorded, all)
}

/// `unit` repeated to at least `size` bytes.
fn repeated(unit: &[u8], size: usize) -> Vec<u8> {
    unit.repeat(size.div_ceil(unit.len()))
}

/// What `bootwatch classify` does with a file, the reads replaced by copies of its pieces:
/// reading and normalizing on one thread, classifying on another.
fn cli_path(log: &[u8]) -> u64 {
    let mut pieces = log.chunks(bootwatch::core::classify::LOG_CHUNK);
    let (cls, _) = bootwatch::core::classify::LogClassifier::classify_pipelined(|buf| {
        let piece = pieces.next().unwrap_or_default();
        buf.extend_from_slice(piece);
        Ok::<bool, ()>(!piece.is_empty())
    })
    .expect("no read fails");
    cls.lines()
}

/// The same on one thread.
fn one_thread(log: &[u8]) -> u64 {
    let mut c = bootwatch::core::classify::LogClassifier::new();
    for chunk in log.chunks(bootwatch::core::classify::LOG_CHUNK) {
        c.feed(chunk);
    }
    let (cls, _) = c.finish();
    cls.lines()
}

fn real(c: &mut Criterion) {
    let (recorded, all) = real_consoles();
    let mut g = c.benchmark_group("real-console");
    g.sample_size(10);
    for (name, unit) in [("recorded", &recorded), ("recorded+samples", &all)] {
        let log = repeated(unit, 64 << 20);
        g.throughput(Throughput::Bytes(log.len() as u64));
        g.bench_function(format!("{name}-64MiB"), |b| {
            b.iter(|| cli_path(black_box(&log)))
        });
        g.bench_function(format!("{name}-64MiB-one-thread"), |b| {
            b.iter(|| one_thread(black_box(&log)))
        });
        g.bench_function(format!("{name}-normalize-only"), |b| {
            let mut text = String::new();
            b.iter(|| {
                let mut n = bootwatch::core::console::Normalizer::new();
                for chunk in black_box(&log).chunks(bootwatch::core::classify::LOG_CHUNK) {
                    text.clear();
                    n.feed(chunk, &mut text);
                }
                text.len()
            })
        });
        let mut text = String::new();
        let mut n = bootwatch::core::console::Normalizer::new();
        n.feed(&log, &mut text);
        n.finish(&mut text);
        g.bench_function(format!("{name}-classify-only"), |b| {
            b.iter(|| {
                let mut c = bootwatch::core::classify::Classifier::new();
                c.feed_text(black_box(&text), None);
                c.lines()
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let log = boot_log(64 << 20);
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Bytes(log.len() as u64));
    g.sample_size(10);
    g.bench_function("boot-log-64MiB", |b| {
        b.iter(|| {
            let (cls, d) = bootwatch::core::classify::classify_log(black_box(&log));
            assert_eq!(d.verdict, Verdict::Reached);
            cls.lines()
        })
    });
    let mut text = String::new();
    bootwatch::core::console::Normalizer::new().feed(&log, &mut text);
    g.bench_function("classify-only", |b| {
        b.iter(|| {
            let mut c = bootwatch::core::classify::Classifier::new();
            c.feed_text(black_box(&text), None);
            c.lines()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hostile");
    g.sample_size(10);
    let invalid = {
        let mut v = vec![0xffu8; 1 << 20];
        v.push(b'\n');
        v
    };
    g.throughput(Throughput::Bytes(invalid.len() as u64));
    g.bench_function("invalid-utf8-line-1MiB", |b| {
        b.iter(|| {
            let (cls, d) = bootwatch::core::classify::classify_log(black_box(&invalid));
            assert_eq!(d.verdict, Verdict::Reached);
            cls.lines()
        })
    });
    g.bench_function("invalid-utf8-line-1MiB-256B-reads", |b| {
        b.iter(|| session_like(black_box(&invalid), 256))
    });
    let notes = flood(100_000, |_| {
        "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Not Found\r\n".into()
    });
    g.throughput(Throughput::Bytes(notes.len() as u64));
    g.bench_function("note-flood-100k-lines", |b| {
        b.iter(|| {
            let (cls, d) = bootwatch::core::classify::classify_log(black_box(&notes));
            assert_eq!(d.verdict, Verdict::Reached);
            cls.current().findings.len()
        })
    });
    let banners = flood(100_000, |i| {
        format!("Synchronous Exception at 0x{:016X}\r\n", 0x7C743000 + 4 * i)
    });
    g.throughput(Throughput::Bytes(banners.len() as u64));
    g.bench_function("banner-flood-100k-lines", |b| {
        b.iter(|| {
            let (cls, d) = bootwatch::core::classify::classify_log(black_box(&banners));
            assert_eq!(d.verdict, Verdict::SyncException);
            cls.current().findings.len()
        })
    });
    g.finish();
}

/// `n` lines made by `line`, after a firmware banner.
fn flood(n: usize, line: impl Fn(usize) -> String) -> Vec<u8> {
    let mut s = String::from(
        "UEFI firmware (version 2022.11-6+deb12u2 built at 10:39:47 on Mar  3 2025)\r\n",
    );
    for i in 0..n {
        s.push_str(&line(i));
    }
    s.into_bytes()
}

/// What a session does with every read of `read` bytes: normalize, classify the lines, check
/// the unterminated tail for a prompt.
fn session_like(log: &[u8], read: usize) -> u64 {
    let mut norm = bootwatch::core::console::Normalizer::new();
    let mut cls = bootwatch::core::classify::Classifier::new();
    let mut text = String::new();
    for chunk in log.chunks(read) {
        text.clear();
        norm.feed(chunk, &mut text);
        cls.feed_text(&text, Some(1.0));
        let tail = norm.partial();
        if !tail.is_empty() {
            cls.feed_partial(&tail, Some(1.0));
        }
    }
    cls.lines()
}

criterion_group!(benches, real, bench);
criterion_main!(benches);
