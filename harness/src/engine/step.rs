//! What a case does with its machine: typed steps, each with its own deadline. Scenario files
//! (`plan::scenario`) and the CLI build them; `engine::case` runs them.

use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::core::verdict::Target;

/// How the guest is rebooted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootMethod {
    /// `systemctl reboot` in the guest.
    Guest,
    /// QMP `system_reset` (a hard reset).
    Qmp,
}

/// One step. Durations are checked by whoever builds a step (finite, positive, at most
/// [`MAX_STEP_SECONDS`]), so running one never fails on a value a user wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Step {
    /// Start the VM and watch until `until` (without one: until a failure, a power-off, silence
    /// or the timeout decides).
    Boot {
        until: Option<Target>,
        #[serde(rename = "timeout_s", serialize_with = "secs")]
        timeout: Duration,
        #[serde(rename = "silence_s", serialize_with = "secs")]
        silence: Duration,
    },
    /// Log in on the serial console as the provisioned user.
    Login {
        #[serde(rename = "timeout_s", serialize_with = "secs")]
        timeout: Duration,
    },
    /// Run a command (as root through sudo when `root`); the step fails on an exit code other
    /// than `expect_exit`.
    Run {
        command: String,
        root: bool,
        #[serde(rename = "timeout_s", serialize_with = "secs")]
        timeout: Duration,
        expect_exit: i32,
    },
    /// Record the installed packages (the image's `package_query`) under `label`.
    SnapshotPackages { label: String },
    /// The image's upgrade command (with the case's update repository and workarounds).
    Upgrade {
        #[serde(rename = "timeout_s", serialize_with = "secs")]
        timeout: Duration,
    },
    /// Reboot; the next boot gets its own timeline and verdict.
    Reboot { method: RebootMethod },
    /// Watch the current boot (after a reboot: the next one) until `until`.
    Watch {
        until: Target,
        #[serde(rename = "timeout_s", serialize_with = "secs")]
        timeout: Duration,
        #[serde(rename = "silence_s", serialize_with = "secs")]
        silence: Duration,
    },
}

/// The longest deadline a step may have: a week. Longer values are mistakes (`1e30`), and
/// `Duration` cannot hold every `f64` a user can write.
pub const MAX_STEP_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Seconds as a step deadline: finite, at least a millisecond (a smaller positive value would
/// round to a zero `Duration`) and at most [`MAX_STEP_SECONDS`].
pub fn seconds(v: f64) -> Result<Duration, String> {
    if v.is_finite() && (0.001..=MAX_STEP_SECONDS).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        // `{v:?}` keeps 1e30 short (`{v}` would print all 31 digits).
        Err(format!(
            "must be a number of seconds from 0.001 to {MAX_STEP_SECONDS:.0} (a week), not {v:?}"
        ))
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Boot { .. } => "boot",
            Step::Login { .. } => "login",
            Step::Run { .. } => "run",
            Step::SnapshotPackages { .. } => "snapshot-packages",
            Step::Upgrade { .. } => "upgrade",
            Step::Reboot { .. } => "reboot",
            Step::Watch { .. } => "watch",
        }
    }

    /// Whether the step talks to a logged-in shell.
    pub fn needs_shell(&self) -> bool {
        matches!(
            self,
            Step::Run { .. } | Step::SnapshotPackages { .. } | Step::Upgrade { .. }
        )
    }
}

/// What `bootwatch boot --login` runs after logging in: who and where the shell is.
pub const IDENTIFY_COMMANDS: [&str; 3] = ["id -un", "uname -r", "cat /proc/cmdline"];

/// Checks that a step list can run: it starts with a boot, shell steps follow a login (after
/// the last reboot), a login needs a provisioned guest. The first problem comes with the index
/// of its step (0-based) and a message naming it (1-based).
pub fn check_steps(steps: &[Step], has_guest: bool) -> Result<(), (usize, String)> {
    if !matches!(steps.first(), Some(Step::Boot { .. })) {
        return Err((0, "the first step must be `boot`".into()));
    }
    let mut logged_in = false;
    for (i, s) in steps.iter().enumerate() {
        let n = i + 1;
        match s {
            Step::Boot { .. } if i > 0 => {
                return Err((i, format!("step {n}: `boot` can only be the first step")));
            }
            Step::Login { .. } if !has_guest => {
                return Err((
                    i,
                    format!("step {n}: `login` needs an image whose user bootwatch provisions"),
                ));
            }
            Step::Login { .. } => logged_in = true,
            Step::Reboot { .. } => logged_in = false,
            s if s.needs_shell() && !logged_in => {
                return Err((
                    i,
                    format!(
                        "step {n}: `{}` needs a `login` step before it (after the last reboot)",
                        s.name()
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Step {
        Step::Boot {
            until: Some(Target::Login),
            timeout: Duration::from_secs(9),
            silence: Duration::from_secs(3),
        }
    }

    #[test]
    fn step_lists_are_checked_before_anything_runs() {
        let login = Step::Login {
            timeout: Duration::from_secs(1),
        };
        let up = Step::Upgrade {
            timeout: Duration::from_secs(1),
        };
        let reboot = Step::Reboot {
            method: RebootMethod::Guest,
        };
        assert!(check_steps(&[boot(), login.clone(), up.clone()], true).is_ok());
        let err = |steps: &[Step], guest| check_steps(steps, guest).unwrap_err();
        assert!(
            err(std::slice::from_ref(&login), true)
                .1
                .contains("first step")
        );
        let (i, m) = err(&[boot(), up.clone()], true);
        assert!(
            i == 1 && m.contains("step 2: `upgrade` needs a `login`"),
            "{m}"
        );
        let (i, m) = err(&[boot(), login.clone(), reboot, up], true);
        assert!(i == 3 && m.contains("step 4"), "{m}");
        assert!(err(&[boot(), login], false).1.contains("provisions"));
    }

    #[test]
    fn seconds_are_range_checked() {
        assert_eq!(seconds(1.5), Ok(Duration::from_millis(1500)));
        for bad in [
            0.0,
            -1.0,
            1e-300,
            f64::INFINITY,
            f64::NAN,
            1e30,
            1.8e19,
            2f64.powi(64),
        ] {
            assert!(seconds(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn steps_serialize_with_seconds() {
        let v = serde_json::to_value(boot()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"do": "boot", "until": "login", "timeout_s": 9.0, "silence_s": 3.0})
        );
    }
}
