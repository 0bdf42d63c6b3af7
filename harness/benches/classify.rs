//! Offline classification throughput over a large, mostly healthy boot log (the README quotes
//! the figure). Run: `cargo bench --bench classify -- --warm-up-time 1 --measurement-time 3`.

use std::fmt::Write;
use std::hint::black_box;

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

fn bench(c: &mut Criterion) {
    let log = boot_log(64 << 20);
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Bytes(log.len() as u64));
    g.sample_size(10);
    g.bench_function("boot-log-64MiB", |b| {
        b.iter(|| {
            let (cls, d) = bootwatch::core::classify::classify_log(black_box(&log));
            assert_eq!(d.verdict, bootwatch::core::verdict::Verdict::Reached);
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
