//! `bootwatch boot` (a one-step case) and `bootwatch classify` (offline).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{
    CliError, CliResult, firmware_or_host, in_range, seconds_flag, show, signal_token,
    unknown_image,
};
use crate::core::classify::{self, FindingKind};
use tokio_util::sync::CancellationToken;

use crate::core::event::{Event, EventSink};
use crate::core::launch::{Accel, FirmwareWait, Forward, QemuExec};
use crate::core::verdict::Target;
use crate::engine::case::{self, CaseDir, CaseRequest, ImageDisk, VarsSource};
use crate::engine::limits;
use crate::engine::record::RunResult;
use crate::engine::step::{IDENTIFY_COMMANDS, Step};
use crate::inputs::images::{self, Registry};
use crate::inputs::providers::{self, FirmwareProvider, ProviderContext, QemuProvider};

#[derive(clap::Args, Debug)]
pub struct BootArgs {
    /// Firmware code image (default: the host's edk2, e.g. /usr/share/AAVMF/AAVMF_CODE.fd), or
    /// a firmware provider as in matrix files: host, path:CODE[,VARS], debian:VERSION[/VARIANT]
    /// (fetched and cached).
    #[arg(long, value_parser = parse_firmware)]
    firmware: Option<FirmwareArg>,
    /// Vars template (default: the VARS file next to the code image); the run boots a copy.
    #[arg(long)]
    vars: Option<PathBuf>,
    /// The firmware boot manager's countdown: skip (default: no wait, the same boot options in
    /// the same order) or default (the firmware's own wait, about 5 s).
    #[arg(long, default_value = "skip")]
    firmware_wait: FirmwareWait,

    /// Disk image (raw or qcow2); repeat for more disks.
    #[arg(long, required_unless_present = "image")]
    disk: Vec<PathBuf>,
    /// A catalog image or local recipe (see `bootwatch images list`), fetched or built if
    /// needed, booted through a fresh overlay with its cloud-init provisioning.
    #[arg(long)]
    image: Option<String>,
    /// With --image and --until login: log in on the serial console as the provisioned user.
    #[arg(long, requires = "image")]
    login: bool,
    /// With --image: keep the run's overlay and vars store (the disk as the guest left it) in
    /// the results.
    #[arg(long, requires = "image")]
    keep_overlay: bool,
    /// Debian archive mirror for building a local image.
    #[arg(long)]
    mirror: Option<String>,
    /// Never write the disks: QEMU keeps the guest's writes in a temporary overlay.
    #[arg(long)]
    snapshot: bool,
    /// Stage to wait for (grub, kernel or login); without it the run waits for a failure, a
    /// power-off, silence or the timeout.
    #[arg(long)]
    until: Option<Target>,
    /// Overall timeout in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Seconds without console output after which the guest is judged hung.
    #[arg(long, default_value_t = 60.0)]
    silence: f64,
    /// Print result.json to stdout.
    #[arg(long)]
    json: bool,
    /// qemu-system-aarch64 binary (a name on PATH or a file), or a QEMU provider as in matrix
    /// files: host, path:FILE, debian:SUITE (a private root tree, cached), source:DIR (built,
    /// cached).
    #[arg(long, default_value = "qemu-system-aarch64", value_parser = parse_qemu)]
    qemu: QemuArg,
    #[arg(long, default_value = "virt")]
    machine: String,
    /// CPU model (default: cortex-a72 under TCG, host under KVM/HVF).
    #[arg(long)]
    cpu: Option<String>,
    /// Accelerator: tcg, kvm or hvf (default: the best the host has).
    #[arg(long)]
    accel: Option<Accel>,
    /// vCPUs (1 to 512).
    #[arg(long, default_value_t = 2, value_parser = in_range(limits::SMP))]
    smp: u32,
    /// Memory in MiB (16 to 1048576).
    #[arg(long, default_value_t = 1024, value_parser = in_range(limits::MEMORY_MIB))]
    memory: u32,
    /// User-mode network with HOST:GUEST TCP forwards bound to 127.0.0.1 (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    forwards: Vec<Forward>,
    /// Add a user-mode network even without forwards.
    #[arg(long)]
    net: bool,
    /// Extra argument passed to QEMU verbatim (repeatable).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_args: Vec<OsString>,
    /// Results root: the run writes DIR/<run-id>/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

/// `--qemu`: a plain binary (the old spelling) or a provider spec.
#[derive(Debug, Clone)]
pub enum QemuArg {
    Binary(PathBuf),
    Provider(QemuProvider),
}

/// `--firmware`: a plain code image (the old spelling) or a provider spec.
#[derive(Debug, Clone)]
pub enum FirmwareArg {
    File(PathBuf),
    Provider(FirmwareProvider),
}

/// Whether `s` is spelled as a provider (`host`, `path:`, `debian:`, `source:`) rather than
/// a plain path.
fn is_provider_spelling(s: &str) -> bool {
    let t = s.trim();
    t == "host"
        || ["path:", "debian:", "source:"]
            .iter()
            .any(|p| t.starts_with(p))
}

fn parse_qemu(s: &str) -> Result<QemuArg, String> {
    if is_provider_spelling(s) {
        s.parse().map(QemuArg::Provider)
    } else {
        Ok(QemuArg::Binary(PathBuf::from(s)))
    }
}

fn parse_firmware(s: &str) -> Result<FirmwareArg, String> {
    if is_provider_spelling(s) {
        s.parse().map(FirmwareArg::Provider)
    } else {
        Ok(FirmwareArg::File(PathBuf::from(s)))
    }
}

impl BootArgs {
    /// `--json`: print JSON to stdout, no progress on stderr.
    pub fn json(&self) -> bool {
        self.json
    }
}

fn parse_forward(s: &str) -> Result<Forward, String> {
    let (h, g) = s
        .split_once(':')
        .ok_or("expected HOST:GUEST, e.g. 2222:22")?;
    // Port 0 is "any port" to bind and no port to connect to: neither side can use it.
    let p = |x: &str| in_range(1..=u16::MAX)(x).map_err(|e| format!("port {x:?} {e}"));
    Ok(Forward {
        host_port: p(h)?,
        guest_port: p(g)?,
    })
}

/// The QEMU and firmware a boot uses, with provider specs resolved (fetched, built).
struct Builds {
    qemu: PathBuf,
    qemu_exec: QemuExec,
    /// What the QEMU provider says of its build (`debian:bullseye`, its package): recorded as
    /// it is, since a private tree's binary does not run as a plain `path:` one.
    qemu_record: Option<crate::engine::record::InputRecord>,
    firmware: PathBuf,
    vars: Option<PathBuf>,
}

/// Resolves `--qemu` and `--firmware` (a provider that cannot be had is an error of the run,
/// not of the command line: exit 125).
async fn resolve_builds(
    args: &BootArgs,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<Builds, CliError> {
    let ctx = || -> Result<ProviderContext, CliError> {
        Ok(ProviderContext {
            mirror: args.mirror.clone(),
            cache_root: crate::sys::fsx::cache_root().map_err(CliError::undetermined)?,
        })
    };
    let (qemu, qemu_exec, qemu_record) = match &args.qemu {
        QemuArg::Binary(b) => (b.clone(), QemuExec::default(), None),
        QemuArg::Provider(p) => {
            sink.emit(Event::Preparing {
                what: format!("qemu {p}"),
            });
            let q = providers::resolve_qemu(p, &ctx()?, cancel)
                .await
                .map_err(|e| CliError::undetermined(format!("--qemu {p}: {e:#}")))?;
            let record = q.input_record();
            (q.binary, q.exec, Some(record))
        }
    };
    let (firmware, vars) = match &args.firmware {
        Some(FirmwareArg::Provider(p)) => {
            sink.emit(Event::Preparing {
                what: format!("firmware {p}"),
            });
            let f = providers::resolve_firmware(p, &ctx()?, cancel)
                .await
                .map_err(|e| CliError::undetermined(format!("--firmware {p}: {e:#}")))?;
            (f.code, f.vars_template)
        }
        Some(FirmwareArg::File(f)) => (f.clone(), None),
        None => (firmware_or_host(None)?, None),
    };
    Ok(Builds {
        qemu,
        qemu_exec,
        qemu_record,
        firmware,
        vars,
    })
}

/// The case `bootwatch boot` runs: one boot step, and with `--login` a login and a few
/// identifying commands.
fn request(args: &BootArgs, builds: &Builds) -> Result<CaseRequest, CliError> {
    let mut steps = vec![Step::Boot {
        until: args.until,
        timeout: seconds_flag("timeout", args.timeout)?,
        silence: seconds_flag("silence", args.silence)?,
    }];
    if args.login {
        steps.push(Step::Login {
            timeout: std::time::Duration::from_secs(120),
        });
        steps.extend(IDENTIFY_COMMANDS.iter().map(|c| Step::Run {
            command: c.to_string(),
            root: false,
            timeout: std::time::Duration::from_secs(60),
            expect_exit: 0,
        }));
    }
    let name = args
        .image
        .clone()
        .or_else(|| {
            args.disk
                .first()
                .and_then(|d| d.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "boot".into());
    let mut req = CaseRequest::new(
        &name,
        CaseDir::Under(args.results.clone()),
        builds.firmware.clone(),
        steps,
    );
    req.qemu = builds.qemu.clone();
    req.qemu_exec = builds.qemu_exec.clone();
    req.machine = args.machine.clone();
    req.cpu = args.cpu.clone();
    req.accel = args.accel;
    req.smp = args.smp;
    req.memory_mib = args.memory;
    if let Some(v) = args.vars.as_ref().or(builds.vars.as_ref()) {
        req.vars = VarsSource::Template(v.clone());
    }
    req.disks = args.disk.clone();
    req.snapshot = args.snapshot;
    req.keep_disks = args.keep_overlay;
    req.firmware_wait = args.firmware_wait;
    req.network = (args.net || !args.forwards.is_empty()).then(|| args.forwards.clone());
    req.extra_args = args.qemu_args.clone();
    Ok(req)
}

pub async fn boot(args: BootArgs) -> CliResult {
    let sink = show::terminal(args.json);
    // One token for the whole command: Ctrl-C during an image build stops the build too.
    let cancel = signal_token();
    let req = prepare(&args, &cancel, &sink).await?;
    let checked = case::check(req)?;
    let done = case::run(checked, &cancel, &sink).await?;
    let first = done.runs.first().expect("a case has a first session");
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(first).unwrap_or_default()
        );
    } else {
        print_summary(first, &done.dir);
    }
    Ok(ExitCode::from(done.record.outcome.exit_code))
}

/// The case `bootwatch boot` (and each run of `bootwatch check`) runs, with its builds resolved
/// and its image fetched or built.
pub(super) async fn prepare(
    args: &BootArgs,
    cancel: &CancellationToken,
    sink: &EventSink,
) -> Result<CaseRequest, CliError> {
    let builds = resolve_builds(args, cancel, sink).await?;
    let mut req = request(args, &builds)?;
    if let Some(name) = &args.image {
        let registry = Registry::load().map_err(CliError::usage)?;
        let Some(entry) = registry.get(name) else {
            return Err(unknown_image(name, &registry));
        };
        // Check what can be checked before a download or build of minutes.
        case::check_machine(CaseRequest {
            image: Some(ImageDisk {
                name: name.clone(),
                base: PathBuf::new(),
                base_sha256: String::new(),
                format: images::catalog::ImageFormat::Qcow2,
                guest: entry.guest().clone(),
                source: None,
            }),
            ..req.clone()
        })?;
        let cache = crate::sys::fsx::cache_root().map_err(CliError::undetermined)?;
        let resolved = images::resolve(entry, &cache, args.mirror.as_deref(), cancel, sink)
            .await
            .map_err(|e| CliError::undetermined(format!("image {name}: {e:#}")))?;
        req.image = Some(ImageDisk {
            name: resolved.name,
            base: resolved.path,
            base_sha256: resolved.sha256,
            format: resolved.format,
            guest: resolved.guest,
            source: resolved.source,
        });
        req.network.get_or_insert_with(Vec::new);
    }
    // Where each input came from (for bundles and replay): the case resolves the paths the
    // way it will boot them.
    if let Ok(checked) = case::check(req.clone()) {
        req.inputs = crate::inputs::providers::describe_paths(
            &checked.qemu,
            &checked.req.firmware_code,
            checked.vars_template.as_deref(),
            cancel,
        )
        .await;
        if let Some(q) = &builds.qemu_record {
            req.inputs.retain(|i| i.role != "qemu");
            req.inputs.insert(0, q.clone());
        }
    }
    if let Some(img) = &args.image {
        let mut r = crate::engine::record::InputRecord::new(
            "image",
            &req.image.as_ref().expect("resolved").base,
        );
        r.provider = Some(format!("image:{img}"));
        req.inputs.push(r);
    }
    Ok(req)
}

fn print_summary(r: &RunResult, dir: &Path) {
    let mut out = std::io::stdout().lock();
    let o = &r.outcome;
    let where_ = if o.verdict.is_guest_failure() && o.before_grub {
        ", before GRUB"
    } else {
        ""
    };
    let t = o
        .time_to_verdict_s
        .map(|t| format!(" after {t:.1} s"))
        .unwrap_or_default();
    let _ = writeln!(out, "verdict: {} (stage {}{where_}){t}", o.verdict, o.stage);
    let _ = writeln!(out, "  {}", show::one_line(&o.reason));
    if let Some(x) = r.finding.as_ref().and_then(|f| f.exception.as_ref()) {
        if let Some(a) = &x.address {
            let _ = writeln!(out, "  exception: {} at {a}", x.kind);
        }
        for f in x.backtrace.iter().take(8) {
            let _ = writeln!(out, "    PC {} {}", f.pc, f.module.as_deref().unwrap_or(""));
        }
    }
    for c in &r.commands {
        let _ = writeln!(
            out,
            "  $ {}  (exit {})\n    {}",
            c.command,
            c.exit_code,
            show::one_line(c.output.trim())
        );
    }
    let _ = writeln!(out, "results: {}", dir.display());
}

/// Classifies a saved log read in pieces of `LOG_CHUNK` bytes (memory stays small for a log of
/// any size), reading and normalizing on a thread beside the classifier.
fn classify_file(path: &Path) -> Result<(classify::Classifier, classify::Decision), CliError> {
    let unreadable = |e: std::io::Error| CliError::usage(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    classify::LogClassifier::classify_pipelined(|buf: &mut Vec<u8>| {
        // Into the buffer's spare capacity: no zeroing of a MiB per piece (`resize` did, 5 % of
        // the instructions of a classification).
        buf.clear();
        let n = (&mut file)
            .take(classify::LOG_CHUNK as u64)
            .read_to_end(buf)?;
        Ok(n > 0)
    })
    .map_err(unreadable)
}

pub fn classify(path: &Path, json: bool) -> CliResult {
    let (cls, d) = classify_file(path)?;
    let boot = cls.current();
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({
            "file": path,
            "verdict": d.verdict,
            "stage": d.stage,
            "before_grub": d.before_grub,
            "reason": d.reason,
            "exit_code": d.exit_code,
            "finding": d.finding.map(|i| &boot.findings[i]),
            "findings": boot.findings,
            "timeline": boot.timeline,
            "boots": cls.boots_started(),
            "boots_dropped": cls.boots_dropped(),
            "lines": cls.lines(),
        });
        let _ = serde_json::to_writer_pretty(&mut out, &v);
        let _ = writeln!(out);
    } else {
        let _ = writeln!(out, "verdict: {} (stage {})", d.verdict, d.stage);
        let _ = writeln!(out, "  {}", show::one_line(&d.reason));
        for f in &boot.findings {
            let kind = match f.kind {
                FindingKind::Fatal => "fatal",
                FindingKind::Suspect if f.cleared => "cleared",
                FindingKind::Suspect => "suspect",
                FindingKind::Note => "note",
            };
            let _ = writeln!(
                out,
                "  line {:>5} {kind:<8} {:<26} {}",
                f.line,
                f.pattern,
                show::one_line(f.text.trim())
            );
        }
    }
    Ok(ExitCode::from(d.exit_code))
}
