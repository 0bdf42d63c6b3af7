//! The serial shell: log in on the guest's serial console and run commands with their exit code
//! and output. Each command is followed by a unique sentinel the shell prints with `$?`; the
//! typed command line echoes the sentinel with a literal `$?`, so only the shell's own output
//! (digits in place of `$?`) can match. Kernel messages interleaved on the console cannot be
//! mistaken for the end of a command.

use std::time::Duration;

use tokio::time::Instant;

use regex::Regex;
use tokio_util::sync::CancellationToken;

use crate::core::classify::{PatternSet, Role};
use crate::core::event::Event;
use crate::engine::record::CommandResult;
use crate::engine::session::{ExpectEnd, Session};

/// How often a running command reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// Why the shell could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("no {what} within {seconds:.0} s (last console line: {last_line:?})")]
    Timeout {
        what: String,
        seconds: f64,
        last_line: String,
    },
    #[error("the guest failed while waiting for {what}")]
    GuestFailed { what: String },
    #[error("QEMU exited while waiting for {what}")]
    Exited { what: String },
    #[error("login as {user:?} was refused {attempts} times")]
    LoginRefused { user: String, attempts: u32 },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Harness(#[from] anyhow::Error),
}

/// A logged-in shell on the serial console.
pub struct Shell {
    counter: u64,
    tag: String,
}

fn expect_err(end: ExpectEnd, what: &str, timeout: Duration, s: &Session) -> ShellError {
    match end {
        ExpectEnd::Failed => ShellError::GuestFailed { what: what.into() },
        ExpectEnd::Exited => ShellError::Exited { what: what.into() },
        ExpectEnd::Interrupted => ShellError::Interrupted,
        ExpectEnd::TimedOut | ExpectEnd::Matched { .. } => ShellError::Timeout {
            what: what.into(),
            seconds: timeout.as_secs_f64(),
            last_line: s.classifier.last_line().to_string(),
        },
    }
}

/// How long a login waits for cloud-init's first-boot stages to end.
const CLOUD_INIT_SETTLE: Duration = Duration::from_secs(600);

/// How many times the login is tried (a refused password or a password prompt that never came:
/// the user may not exist yet while cloud-init runs, a getty may be restarted under us).
const LOGIN_ATTEMPTS: u32 = 3;

impl Shell {
    /// Waits for the login prompt, logs in, and sets a plain prompt. `timeout` covers the wait
    /// for the prompt; each later step gets its own shorter bound.
    pub async fn login(
        s: &mut Session,
        user: &str,
        password: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Shell, ShellError> {
        let set = PatternSet::builtin();
        let prompt = set.role(Role::LoginPrompt);
        let pw = set.role(Role::PasswordPrompt);
        let outcome = login_outcome(set);
        let mut since = 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match s.expect(prompt, since, timeout, cancel).await? {
                ExpectEnd::Matched { .. } => {}
                end => return Err(expect_err(end, "login prompt", timeout, s)),
            }
            let mark = s.mark();
            s.send(format!("{user}\r").as_bytes()).await?;
            let step = Duration::from_secs(60);
            match s.expect(pw, mark, step, cancel).await? {
                ExpectEnd::Matched { .. } => {}
                // The user name was lost (a getty that cloud-init or systemd restarted after it
                // printed its prompt, or a guest too starved to answer): from the login prompt
                // again, as a person would.
                ExpectEnd::TimedOut if attempts < LOGIN_ATTEMPTS => {
                    since = s.mark();
                    s.send(b"\r").await?;
                    continue;
                }
                end => return Err(expect_err(end, "password prompt", step, s)),
            }
            let mark = s.mark();
            s.send(format!("{password}\r").as_bytes()).await?;
            match s.expect(&outcome, mark, step, cancel).await? {
                // Group 1 is the refusal: anything else is the shell prompt.
                ExpectEnd::Matched { captures, .. }
                    if captures.first().cloned().flatten().is_none() =>
                {
                    break;
                }
                ExpectEnd::Matched { .. } if attempts < LOGIN_ATTEMPTS => {
                    // The user may not exist yet if cloud-init is still running: try again.
                    since = s.mark();
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    s.send(b"\r").await?;
                    continue;
                }
                ExpectEnd::Matched { .. } => {
                    return Err(ShellError::LoginRefused {
                        user: user.into(),
                        attempts,
                    });
                }
                end => return Err(expect_err(end, "shell prompt after login", step, s)),
            }
        }
        let mut sh = Shell {
            counter: 0,
            tag: format!("BW{}", std::process::id()),
        };
        // A quiet, predictable shell: no echo of what we type (so long lines cannot wrap into
        // something that looks like a sentinel), no colour, no pager, no history, a plain prompt.
        let setup =
            "stty -echo; export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat HISTFILE=/dev/null PS1='$ '";
        sh.run(s, "login", setup, Duration::from_secs(60), cancel)
            .await?;
        // The login prompt comes before cloud-init's last stages end, and those stages run
        // package tools (grub-dpkg's debconf, apt): an upgrade started beside them can find
        // dpkg locked. Wait for the guest's own first-boot work to end, as a person would
        // (bounded: a guest without cloud-init, or one whose cloud-init never settles, goes on).
        let settle = format!(
            "if command -v cloud-init >/dev/null 2>&1; then timeout {} cloud-init status --wait >/dev/null 2>&1; fi; true",
            CLOUD_INIT_SETTLE.as_secs()
        );
        sh.run(
            s,
            "login",
            &settle,
            CLOUD_INIT_SETTLE + Duration::from_secs(60),
            cancel,
        )
        .await?;
        Ok(sh)
    }

    /// Runs `command` and returns its output and exit code. `step` names what it is for in
    /// progress reports (`upgrade`, `run`): a person follows steps, not shell lines.
    pub async fn run(
        &mut self,
        s: &mut Session,
        step: &str,
        command: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<CommandResult, ShellError> {
        self.counter += 1;
        let id = format!("{}_{}", self.tag, self.counter);
        let started = Instant::now();
        let mark = s.mark();
        // The sentinel is printed on a line of its own, before and after the output.
        let line = format!("echo {id}_BEGIN; {command}; echo {id}_END_$?\r");
        s.send(line.as_bytes()).await?;
        let re =
            Regex::new(&format!(r"{id}_BEGIN\n((?s:.*?)){id}_END_(\d+)")).expect("valid regex");
        let deadline = started + timeout;
        loop {
            // Wait in slices so a long command (an upgrade under TCG takes minutes) reports
            // progress instead of silence.
            let slice = PROGRESS_EVERY.min(deadline.saturating_duration_since(Instant::now()));
            match s.expect(&re, mark, slice, cancel).await? {
                ExpectEnd::Matched { captures, .. } => {
                    let output = without_console_noise(
                        &captures.first().cloned().flatten().unwrap_or_default(),
                    );
                    let code = captures
                        .get(1)
                        .cloned()
                        .flatten()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(-1);
                    return Ok(CommandResult {
                        command: command.into(),
                        exit_code: code,
                        output,
                        duration_s: crate::engine::qmp::round_ms(started.elapsed().as_secs_f64()),
                    });
                }
                ExpectEnd::TimedOut if Instant::now() < deadline => s.emit(Event::StepProgress {
                    step: step.to_string(),
                    elapsed_s: started.elapsed().as_secs_f64(),
                    last_line: s.classifier.last_line().to_string(),
                }),
                end => {
                    return Err(expect_err(
                        end,
                        &format!("the end of `{command}`"),
                        timeout,
                        s,
                    ));
                }
            }
        }
    }
}

/// What follows the password: a refusal (capture group 1) or a shell prompt, whichever the
/// console shows first.
fn login_outcome(set: &PatternSet) -> Regex {
    let refused = set.role(Role::LoginIncorrect).as_str();
    let prompt = set.role(Role::ShellPrompt).as_str();
    Regex::new(&format!("({refused})|{prompt}"))
        .expect("two valid regexes in alternation are valid (tested on the builtin set)")
}

/// The command's output without the kernel's and services' console messages that the serial
/// console interleaves with it: lines stamped like printk (`[   71.943691] ...`). They stay in
/// `console.log`, and the classifier sees them there.
pub fn without_console_noise(output: &str) -> String {
    let re = PatternSet::builtin().role(Role::Printk);
    output
        .split_inclusive('\n')
        .filter(|l| !re.is_match(l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The login waits come from the pattern set's roles; after the password, a refusal is told
    /// apart from a shell prompt by capture group 1.
    #[test]
    fn login_regexes_come_from_the_pattern_set() {
        let set = PatternSet::builtin();
        assert!(
            set.role(Role::LoginPrompt)
                .is_match("Debian GNU/Linux 12 debian ttyAMA0\n\ndebian login: ")
        );
        assert!(
            set.role(Role::PasswordPrompt)
                .is_match("debian\nPassword: ")
        );
        let outcome = login_outcome(set);
        let refused = outcome
            .captures("\nLogin incorrect\ndebian login: ")
            .unwrap();
        assert_eq!(refused.get(1).map(|m| m.as_str()), Some("Login incorrect"));
        let shell = outcome
            .captures("\nLinux debian 6.1.0-26-cloud-arm64\ndebian@debian:~$ ")
            .unwrap();
        assert!(shell.get(1).is_none());
        assert!(outcome.captures("debian\nPassword: ").is_none());
    }

    #[test]
    fn console_messages_are_taken_out_of_command_output() {
        let out = "[   71.943691] cloud-init[372]: WARNING x\ndebian\n[ 1.000000] random: y\nlast";
        assert_eq!(without_console_noise(out), "debian\nlast");
        assert_eq!(
            without_console_noise("[1.2] is not printk\n"),
            "[1.2] is not printk\n"
        );
    }

    /// The end sentinel as typed (echoed with a literal `$?`) must not match; the one the shell
    /// prints must, also when the prompt shares its line (terminal echo off) and when the
    /// output has no final newline.
    #[test]
    fn sentinel_matches_only_the_shells_output() {
        let id = "BW1_1";
        let re = Regex::new(&format!(r"{id}_BEGIN\n((?s:.*?)){id}_END_(\d+)")).unwrap();
        let echo = format!("$ echo {id}_BEGIN; id -un; echo {id}_END_$?\n");
        assert!(re.captures(&echo).is_none());
        let out =
            format!("{echo}{id}_BEGIN\n[   12.3] random: crng init done\ndebian\n{id}_END_0\n$ ");
        let c = re.captures(&out).unwrap();
        assert_eq!(&c[1], "[   12.3] random: crng init done\ndebian\n");
        assert_eq!(&c[2], "0");
        let no_echo = format!("$ {id}_BEGIN\nno newline{id}_END_3\n$ ");
        let c = re.captures(&no_echo).unwrap();
        assert_eq!((&c[1], &c[2]), ("no newline", "3"));
    }
}
