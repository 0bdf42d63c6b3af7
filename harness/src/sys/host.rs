//! Facts about the machine bootwatch runs on: the only place they are probed. The pure core
//! takes them as values (`core::launch::HostFacts`).

use serde::{Deserialize, Serialize};

use crate::core::launch::HostFacts;

/// Probes what the pure argv builder needs to know: architecture, OS, whether `/dev/kvm` can be
/// opened read-write.
pub fn host_facts() -> HostFacts {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    HostFacts {
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        kvm_usable,
    }
}

/// The host as a run records it (`result.json`'s `host`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: usize,
}

impl HostInfo {
    pub fn probe() -> HostInfo {
        let uname = nix::sys::utsname::uname().ok();
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        HostInfo {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            os,
            kernel: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: cpus(),
        }
    }
}

/// Logical CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total memory from `/proc/meminfo`, MiB.
pub fn memory_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// VMs to run at once when not told: one per core, and no more than memory allows (each VM's
/// guest RAM plus about 512 MiB of QEMU and TCG overhead, keeping 2 GiB for the host).
pub fn default_concurrency(memory_mib: u32) -> usize {
    let avail_mib = memory_total_mib().unwrap_or(4096).saturating_sub(2048);
    let by_mem = (avail_mib / (u64::from(memory_mib) + 512)).max(1) as usize;
    cpus().min(by_mem).max(1)
}

/// CPU seconds (user + system) this process has used.
pub fn own_cpu_s() -> Option<f64> {
    rusage_s(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

/// CPU seconds (user + system) of the calling thread (the whole process off Linux).
pub fn thread_cpu_s() -> f64 {
    #[cfg(target_os = "linux")]
    let who = nix::sys::resource::UsageWho::RUSAGE_THREAD;
    #[cfg(not(target_os = "linux"))]
    let who = nix::sys::resource::UsageWho::RUSAGE_SELF;
    rusage_s(who).unwrap_or(0.0)
}

fn rusage_s(who: nix::sys::resource::UsageWho) -> Option<f64> {
    let u = nix::sys::resource::getrusage(who).ok()?;
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(tv(u.user_time()) + tv(u.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_bounded_by_cores_and_memory() {
        let n = default_concurrency(1024);
        assert!(n >= 1 && n <= cpus());
        // A VM bigger than the machine still gets one slot.
        assert_eq!(default_concurrency(u32::MAX / 2), 1);
    }
}
