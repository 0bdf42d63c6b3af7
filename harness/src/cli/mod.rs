//! The `bootwatch` command line: clap definitions, the commands as thin mappings from arguments
//! to engine and plan calls, and the terminal display of their events. The only module that
//! prints. Every command returns `Result<ExitCode, CliError>`; the error carries its exit code
//! (2 for bad input, 125 when bootwatch could not run), see `core::verdict::exit_code`.

/// `println!` that survives a standard output that went away (`bootwatch ... | head`): the rest
/// of the output is dropped and the command goes on (a run still writes its records) to its
/// usual exit code; `println!` would panic (exit 101). Any other write error is said once on
/// standard error.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::stdout_failed(::std::io::Write::write_fmt(
            &mut ::std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        ))
    };
}

mod bisect;
mod boot;
mod bundle;
mod explain;
mod inputs;
mod inspect;
mod inspect_chain;
mod matrix;
mod probe;
mod scenario;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::core::verdict::exit_code;

#[derive(Parser, Debug)]
#[command(
    name = "bootwatch",
    version,
    about = "Boot ARM64 guests under QEMU + edk2, watch, and say exactly what happened"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Start every case that boots an image to its login prompt and logs in from a saved state
    /// of that prompt (QEMU's migration of the same image, QEMU, firmware and machine, made by
    /// the first such boot and cached in CACHE/login-states/): seconds instead of a first boot.
    /// The case's record names the state and the case that booted it.
    #[arg(long, global = true)]
    saved_login: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a disk under qemu-system-aarch64 + edk2 and judge the boot.
    Boot(Box<boot::BootArgs>),
    /// One case judged for `git bisect run`: `bootwatch boot`'s flags (--qemu and --firmware
    /// also take provider specs: debian:SUITE, path:FILE, source:DIR, debian:VERSION), exit 0
    /// good, 1 bad (the guest failed), 125 undetermined (timeout, build failure, harness
    /// trouble), 128 for a command line it cannot parse (git bisect run stops).
    Check(Box<bisect::CheckArgs>),
    /// Bisect a bisect file (scenarios/bisect/*.toml): an ordered list of QEMU or firmware
    /// builds (the other axis fixed) to the first bad one, or an update's packages to the
    /// culprit set. Each step is an ordinary case; bisect.json and bisect.md say the answer
    /// with both sides' evidence.
    Bisect(Box<bisect::BisectArgs>),
    /// Classify a saved console log offline.
    Classify {
        /// The log file (raw serial bytes or normalized text).
        logfile: PathBuf,
        /// Print one JSON object (verdict, stage, findings, timeline).
        #[arg(long)]
        json: bool,
    },
    /// Write the test fixtures (crash.img, hello.img, silent.img: raw FAT images with a generated
    /// EFI application as \EFI\BOOT\BOOTAA64.EFI).
    Fixtures {
        #[arg(long)]
        out: PathBuf,
    },
    /// Guest images: the vendor catalog and local recipes.
    Images {
        #[command(subcommand)]
        command: inputs::ImagesCommand,
    },
    /// Firmware builds from Debian's archive.
    Firmware {
        #[command(subcommand)]
        command: inputs::FirmwareCommand,
    },
    /// Run a scenario (scenarios/*.toml) on a catalog image or local recipe.
    Run(Box<scenario::RunArgs>),
    /// The embedded default (scenarios/demo.toml): the local Debian image upgraded with a good
    /// and a bad bootloader update (served hermetically), rebooted and judged, then the
    /// restore-bootloader workaround after the bad one. `--fixtures`: only boot the crash and
    /// healthy fixtures (quick).
    Demo(scenario::DemoArgs),
    /// Run a compatibility matrix (scenarios/matrix/*.toml): every combination of image, QEMU
    /// build, firmware build, CPU model and vars store, concurrently, with reports.
    Matrix(Box<matrix::MatrixArgs>),
    /// Measure a firmware build and the hypervisor under it with the probe application.
    Probe {
        #[command(subcommand)]
        command: probe::ProbeCommand,
    },
    /// Pack a run, a matrix cell or a bisection into a .tar.gz for an upstream bug report:
    /// records, consoles, QMP, the QEMU argv, repro.sh, inputs with provenance and sha256,
    /// REPORT.md; passwords, tokens, home paths and the host name redacted.
    Bundle(bundle::BundleArgs),
    /// Boot a bundle's run again on the same artifacts (found by provider or sha256; exit 125
    /// when one differs) and compare: exit 0 same verdict, 1 different, 125 could not run.
    Replay(bundle::ReplayArgs),
    /// Reports over matrix results.
    Report {
        #[command(subcommand)]
        command: matrix::ReportCommand,
    },
    /// Offline inspection: `inspect firmware` (a code image's drivers, SMCCC users, version
    /// strings) and `inspect chain` (the boot chain of a run or disk).
    Inspect {
        #[command(subcommand)]
        command: inspect::InspectCommand,
    },
    /// Name the known bug behind a run's failure, from evidence bootwatch measures itself.
    Explain(Box<explain::ExplainArgs>),
}

/// Why a command failed, with the exit code that says so.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad arguments or inputs: nothing ran (exit 2).
    pub fn usage(message: impl std::fmt::Display) -> CliError {
        CliError {
            code: exit_code::USAGE,
            message: message.to_string(),
        }
    }

    /// bootwatch could not do its work (exit 125).
    pub fn undetermined(message: impl std::fmt::Display) -> CliError {
        CliError {
            code: exit_code::UNDETERMINED,
            message: message.to_string(),
        }
    }
}

/// Anything that is not a usage error is bootwatch failing to do its work.
impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> CliError {
        match e.downcast_ref::<crate::engine::case::ConfigError>() {
            Some(c) => CliError::usage(&c.0),
            None => CliError::undetermined(format!("{e:#}")),
        }
    }
}

impl From<crate::engine::case::ConfigError> for CliError {
    fn from(e: crate::engine::case::ConfigError) -> CliError {
        CliError::usage(e.0)
    }
}

impl From<crate::engine::case::CaseError> for CliError {
    fn from(e: crate::engine::case::CaseError) -> CliError {
        CliError::undetermined(e)
    }
}

type CliResult = Result<ExitCode, CliError>;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `check` runs under `git bisect run`, where 2 would mark the commit bad.
            let is_check = std::env::args().nth(1).as_deref() == Some("check");
            let code = match e.exit_code() {
                0 => 0,
                _ if is_check => bisect::CHECK_USAGE_EXIT,
                c => c.clamp(1, 255) as u8,
            };
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOOTWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // One thread: QEMU is spawned from the main thread, so its parent-death signal (which
    // follows the spawning thread) fires exactly when the harness dies. Blocking work goes to
    // tokio's blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(CliError::undetermined(format!(
                "cannot start the runtime: {e}"
            )));
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn report(e: CliError) -> ExitCode {
    eprintln!(
        "bootwatch: error: {}",
        show::one_line_keep_newlines(&e.message)
    );
    ExitCode::from(e.code)
}

/// Cancelled on SIGINT or SIGTERM.
fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

async fn dispatch(cli: Cli) -> CliResult {
    crate::engine::login_state::set_default(cli.saved_login);
    match cli.command {
        Command::Boot(args) => boot::boot(*args).await,
        Command::Check(args) => bisect::check(*args).await,
        Command::Bisect(args) => bisect::bisect(*args).await,
        Command::Classify { logfile, json } => boot::classify(&logfile, json),
        Command::Fixtures { out } => inputs::fixtures(&out),
        Command::Images { command } => inputs::images(command).await,
        Command::Firmware { command } => inputs::firmware(command).await,
        Command::Run(args) => scenario::run(*args).await,
        Command::Demo(args) => scenario::demo(args).await,
        Command::Matrix(args) => matrix::matrix(*args).await,
        Command::Report { command } => matrix::report(command),
        Command::Inspect { command } => inspect::inspect(command).await,
        Command::Probe { command } => probe::probe(command).await,
        Command::Bundle(args) => bundle::bundle(args).await,
        Command::Replay(args) => bundle::replay(args).await,
        Command::Explain(args) => explain::explain(*args).await,
    }
}

/// The firmware to boot: the one given, else the host's edk2.
fn firmware_or_host(firmware: Option<PathBuf>) -> Result<PathBuf, CliError> {
    firmware
        .or_else(crate::inputs::providers::host_firmware)
        .ok_or_else(|| {
            CliError::usage(
                "no host firmware found (install qemu-efi-aarch64, or pass --firmware CODE)",
            )
        })
}

/// A clap value parser for an integer flag within `range` (see `engine::limits` for
/// why each range is what it is): a value out of range is a usage error naming the flag, at
/// parse time.
fn in_range<T>(
    range: std::ops::RangeInclusive<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Clone + Send + Sync + 'static,
{
    move |s: &str| match s.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(format!(
            "must be an integer from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// A seconds flag as a step deadline (finite, positive, at most a week).
fn seconds_flag(flag: &str, v: f64) -> Result<std::time::Duration, CliError> {
    crate::engine::step::seconds(v).map_err(|e| CliError::usage(format!("--{flag} {e}")))
}

fn unknown_image(name: &str, registry: &crate::inputs::images::Registry) -> CliError {
    CliError::usage(format!(
        "unknown image {name:?}; known: {}",
        registry.names().join(", ")
    ))
}

/// What [`outln!`] does with a write error: nothing for a closed pipe, a word on standard error
/// (once) for anything else.
pub(crate) fn stdout_failed(r: std::io::Result<()>) {
    static SAID: std::sync::Once = std::sync::Once::new();
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        SAID.call_once(|| eprintln!("bootwatch: writing to standard output failed: {e}"));
    }
}
