//! The closed vocabulary every other part of bootwatch speaks: boot stages, verdicts and the
//! exit codes they map to. Names are part of the CLI contract (README, `result.json`): they never
//! change spelling.

use serde::{Deserialize, Serialize};

/// How far a boot got. Ordered: a later stage means more progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Nothing recognisable seen yet (or no console output at all).
    None,
    /// edk2 is running: banner, DXE, BdsDxe picking a boot option (and any EFI application it
    /// started that is neither shim nor GRUB).
    Firmware,
    /// shim is running (BdsDxe started `shim*.efi`, or shim printed).
    Shim,
    /// GRUB is running (`Welcome to GRUB!`, its menu or prompt).
    Grub,
    /// GRUB (or the firmware) handed over to the kernel's EFI stub.
    KernelHandoff,
    /// The kernel proper printed (`Booting Linux on physical CPU`).
    Kernel,
    /// init / systemd is running.
    Userspace,
    /// A login prompt appeared on the console.
    Login,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::None,
        Stage::Firmware,
        Stage::Shim,
        Stage::Grub,
        Stage::KernelHandoff,
        Stage::Kernel,
        Stage::Userspace,
        Stage::Login,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::None => "none",
            Stage::Firmware => "firmware",
            Stage::Shim => "shim",
            Stage::Grub => "grub",
            Stage::KernelHandoff => "kernel-handoff",
            Stage::Kernel => "kernel",
            Stage::Userspace => "userspace",
            Stage::Login => "login",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for stages that come before GRUB ran (the reports' "before the GRUB menu").
    pub fn is_before_grub(self) -> bool {
        self < Stage::Grub
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What `--until` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Grub,
    Kernel,
    Login,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Grub, Target::Kernel, Target::Login];

    pub fn as_str(self) -> &'static str {
        self.stage().as_str()
    }

    pub fn stage(self) -> Stage {
        match self {
            Target::Grub => Stage::Grub,
            Target::Kernel => Stage::Kernel,
            Target::Login => Stage::Login,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown stage {s:?} (grub, kernel or login)"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One verdict per run (and per boot within a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Reached,
    SyncException,
    FirmwareException,
    FirmwareAssert,
    ShimError,
    SecureBootDenied,
    GrubError,
    EfistubError,
    KernelPanic,
    NoBootableDevice,
    Hang,
    QemuExited,
    Timeout,
    HarnessError,
}

impl Verdict {
    pub const ALL: [Verdict; 14] = [
        Verdict::Reached,
        Verdict::SyncException,
        Verdict::FirmwareException,
        Verdict::FirmwareAssert,
        Verdict::ShimError,
        Verdict::SecureBootDenied,
        Verdict::GrubError,
        Verdict::EfistubError,
        Verdict::KernelPanic,
        Verdict::NoBootableDevice,
        Verdict::Hang,
        Verdict::QemuExited,
        Verdict::Timeout,
        Verdict::HarnessError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Reached => "reached",
            Verdict::SyncException => "sync-exception",
            Verdict::FirmwareException => "firmware-exception",
            Verdict::FirmwareAssert => "firmware-assert",
            Verdict::ShimError => "shim-error",
            Verdict::SecureBootDenied => "secure-boot-denied",
            Verdict::GrubError => "grub-error",
            Verdict::EfistubError => "efistub-error",
            Verdict::KernelPanic => "kernel-panic",
            Verdict::NoBootableDevice => "no-bootable-device",
            Verdict::Hang => "hang",
            Verdict::QemuExited => "qemu-exited",
            Verdict::Timeout => "timeout",
            Verdict::HarnessError => "harness-error",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A failure the guest (firmware, loader, kernel) produced, as opposed to success or
    /// "could not tell".
    pub fn is_guest_failure(self) -> bool {
        !matches!(
            self,
            Verdict::Reached | Verdict::QemuExited | Verdict::Timeout | Verdict::HarnessError
        )
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a boot, a session or a case ended: the one outcome every record embeds (`result.json`,
/// `case.json`, matrix cells, demo rows). Serialized flat: these six fields appear at the top
/// level of each record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub stage: Stage,
    pub before_grub: bool,
    /// One sentence for humans.
    pub reason: String,
    pub exit_code: u8,
    /// Seconds from the judged boot's start (power-on or reset) to the verdict.
    pub time_to_verdict_s: Option<f64>,
}

impl Outcome {
    /// The outcome of something that has not finished (yet): what a record says while a run is
    /// in progress, and what stays if the harness is killed.
    pub fn unfinished(what: &str) -> Outcome {
        Outcome {
            verdict: Verdict::HarnessError,
            stage: Stage::None,
            before_grub: true,
            reason: format!("the {what} has not finished"),
            exit_code: exit_code::UNDETERMINED,
            time_to_verdict_s: None,
        }
    }

    /// bootwatch could not run the guest (never a guest result).
    pub fn harness_error(message: &str) -> Outcome {
        Outcome {
            reason: format!("harness error: {message}"),
            ..Outcome::unfinished("run")
        }
    }

    /// The guest failed (the firmware, a loader or the kernel did, or it hung).
    pub fn is_guest_failure(&self) -> bool {
        self.verdict.is_guest_failure()
    }
}

/// Process exit codes, following `git bisect run`.
pub mod exit_code {
    /// The target was reached (or, without a target, the guest powered off cleanly).
    pub const GOOD: u8 = 0;
    /// A failure was reproduced.
    pub const BAD: u8 = 1;
    /// Bad arguments or configuration: nothing was run.
    pub const USAGE: u8 = 2;
    /// Undetermined: timeout or harness trouble. `git bisect run` skips the commit.
    pub const UNDETERMINED: u8 = 125;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::parse(v.as_str()), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn stage_order_and_before_grub() {
        assert!(Stage::Shim.is_before_grub());
        assert!(!Stage::Grub.is_before_grub());
        assert!(Stage::Login > Stage::Kernel);
    }
}
