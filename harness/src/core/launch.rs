//! The VM description and the QEMU argv it becomes. Pure: host facts are passed in, nothing is
//! probed or spawned here, so the whole argv is testable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Tcg,
    Kvm,
    Hvf,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
        }
    }

    pub const ALL: [Accel; 3] = [Accel::Tcg, Accel::Kvm, Accel::Hvf];

    /// The CPU model used when none is given: the host's own CPU where the guest runs on it,
    /// and a model TCG emulates quickly otherwise (`max` enables pointer authentication and
    /// more, which costs a lot under TCG).
    pub fn default_cpu(self) -> &'static str {
        match self {
            Accel::Tcg => "cortex-a72",
            Accel::Kvm | Accel::Hvf => "host",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Accel, String> {
        Accel::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown accelerator {s:?} (tcg, kvm or hvf)"))
    }
}

/// What the harness knows about the machine it runs on (probed by `sys::host::host_facts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `std::env::consts::ARCH` of the host.
    pub arch: String,
    /// `std::env::consts::OS` of the host.
    pub os: String,
    /// `/dev/kvm` exists and can be opened read-write.
    pub kvm_usable: bool,
}

impl HostFacts {
    /// KVM on an aarch64 Linux host with `/dev/kvm`, HVF on an Apple Silicon Mac, TCG otherwise.
    pub fn best_accel(&self) -> Accel {
        match (self.arch.as_str(), self.os.as_str()) {
            ("aarch64", "linux") if self.kvm_usable => Accel::Kvm,
            ("aarch64", "macos") => Accel::Hvf,
            _ => Accel::Tcg,
        }
    }
}

/// Whether edk2's boot manager waits for a key press before it boots (its countdown, about 5 s
/// in Debian's builds: pure idle time under TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareWait {
    /// No countdown: QEMU's `-boot menu=on,splash-time=0` hands the firmware a zero timeout
    /// (fw_cfg `etc/boot-menu-wait`); the same boot options boot in the same order.
    #[default]
    Skip,
    /// The firmware's own countdown (nothing added to QEMU's command line).
    Default,
}

impl FirmwareWait {
    pub fn as_str(self) -> &'static str {
        match self {
            FirmwareWait::Skip => "skip",
            FirmwareWait::Default => "default",
        }
    }
}

impl std::str::FromStr for FirmwareWait {
    type Err = String;
    fn from_str(s: &str) -> Result<FirmwareWait, String> {
        match s {
            "skip" => Ok(FirmwareWait::Skip),
            "default" => Ok(FirmwareWait::Default),
            other => Err(format!(
                "unknown firmware wait {other:?} (skip: no boot-manager countdown, default: the firmware's own)"
            )),
        }
    }
}

/// How the firmware is given to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwareLoad {
    /// Two pflash units: the code image read-only and this run's own copy of the vars store
    /// (both 64 MiB for `virt`).
    Pflash { code: PathBuf, vars: PathBuf },
    /// A firmware image smaller than the flash (such as the 2 MiB `QEMU_EFI.fd`), loaded with
    /// `-bios`; it has no persistent variable store.
    Bios { code: PathBuf },
}

/// The size of each pflash unit on QEMU's `virt` machine.
pub const PFLASH_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// qcow2 files start with "QFI\xfb"; anything else is treated as raw.
    pub fn detect(header: &[u8]) -> DiskFormat {
        if header.starts_with(b"QFI\xfb") {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// Writes go to a temporary overlay QEMU throws away (`snapshot=on`): the image is never
    /// changed and only read-locked, so several runs can boot it at once.
    pub snapshot: bool,
}

/// A host port forwarded to the guest through user-mode networking, bound to 127.0.0.1 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Forward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// How the QEMU binary is executed: directly (the default), or through another root tree's
/// dynamic loader with that tree's libraries, modules and data (a QEMU from another Debian suite
/// run beside the host's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuExec {
    /// Program and arguments placed before the QEMU binary, e.g. `[LOADER, --library-path, DIRS]`.
    pub wrapper: Vec<OsString>,
    /// Extra environment for QEMU (e.g. `QEMU_MODULE_DIR`).
    pub env: Vec<(OsString, OsString)>,
    /// QEMU's data directory (`-L`): option ROMs, keymaps, its own firmware descriptors.
    pub data_dir: Option<PathBuf>,
}

/// Everything QEMU is started with.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub exec: QemuExec,
    pub machine: String,
    pub cpu: String,
    pub accel: Accel,
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware: FirmwareLoad,
    pub firmware_wait: FirmwareWait,
    pub disks: Vec<Disk>,
    /// `None`: no network device at all. `Some(forwards)`: user-mode networking.
    pub network: Option<Vec<Forward>>,
    pub serial_socket: PathBuf,
    pub qmp_socket: PathBuf,
    /// Appended verbatim (for knobs bootwatch has no flag for).
    pub extra_args: Vec<OsString>,
}

/// The argv (without the program) for `cfg`. QEMU starts paused (`-S`); the harness continues it
/// once the console and QMP are connected.
pub fn argv(cfg: &VmConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&dyn AsRef<std::ffi::OsStr>]| {
        for p in parts {
            a.push(p.as_ref().to_os_string());
        }
    };
    push(&[&"-name", &"bootwatch"]);
    if let Some(dir) = &cfg.exec.data_dir {
        push(&[&"-L", dir]);
    }
    push(&[
        &"-machine",
        &format!("{},accel={}", cfg.machine, cfg.accel.as_str()),
    ]);
    push(&[&"-cpu", &cfg.cpu]);
    push(&[
        &"-smp",
        &cfg.smp.to_string(),
        &"-m",
        &format!("{}M", cfg.memory_mib),
    ]);
    push(&[
        &"-nodefaults",
        &"-no-user-config",
        &"-display",
        &"none",
        &"-S",
    ]);
    // An inert text console no device is wired to: the guest sees nothing of it, and QMP's
    // `screendump` has a console to draw on a machine without a display (a hung guest's
    // evidence: QEMU refuses a screendump when it has no console at all).
    push(&[&"-chardev", &"vc,id=screen0"]);
    push(&[
        &"-chardev",
        &opt(
            "socket,id=serial0,server=on,wait=off,path=",
            &cfg.serial_socket,
        ),
    ]);
    push(&[&"-serial", &"chardev:serial0"]);
    push(&[
        &"-chardev",
        &opt("socket,id=qmp0,server=on,wait=off,path=", &cfg.qmp_socket),
    ]);
    push(&[&"-mon", &"chardev=qmp0,mode=control"]);
    match &cfg.firmware {
        FirmwareLoad::Pflash { code, vars } => {
            push(&[
                &"-drive",
                &opt("if=pflash,format=raw,unit=0,readonly=on,file=", code),
            ]);
            push(&[&"-drive", &opt("if=pflash,format=raw,unit=1,file=", vars)]);
        }
        FirmwareLoad::Bios { code } => push(&[&"-bios", code]),
    }
    if cfg.firmware_wait == FirmwareWait::Skip {
        push(&[&"-boot", &"menu=on,splash-time=0"]);
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        let snap = if d.snapshot { ",snapshot=on" } else { "" };
        let spec = format!(
            "if=none,id=disk{i},format={}{ro}{snap},file=",
            d.format.as_str()
        );
        push(&[&"-drive", &opt(&spec, &d.path)]);
        push(&[&"-device", &format!("virtio-blk-pci,drive=disk{i}")]);
    }
    if let Some(forwards) = &cfg.network {
        let mut netdev = String::from("user,id=net0");
        for f in forwards {
            netdev.push_str(&format!(
                ",hostfwd=tcp:127.0.0.1:{}-:{}",
                f.host_port, f.guest_port
            ));
        }
        // romfile= : no iPXE option ROM. It would add PXE boot options, and it comes from a
        // package (ipxe-qemu) that minimal QEMU installs lack, so QEMU would refuse to start.
        push(&[
            &"-netdev",
            &netdev,
            &"-device",
            &"virtio-net-pci,netdev=net0,romfile=",
        ]);
    }
    push(&[&"-device", &"virtio-rng-pci"]);
    a.extend(cfg.extra_args.iter().cloned());
    a
}

/// `prefix` followed by `path`, with commas in the path doubled as QEMU's option syntax needs.
fn opt(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    let p = path.as_os_str().to_string_lossy();
    s.push(p.replace(',', ",,"));
    s
}

/// The program to execute and all its arguments: the QEMU binary with `argv(cfg)`, or the
/// wrapper followed by the QEMU binary and `argv(cfg)`.
pub fn program_and_args(cfg: &VmConfig) -> (PathBuf, Vec<OsString>) {
    let qemu_args = argv(cfg);
    match cfg.exec.wrapper.split_first() {
        None => (cfg.qemu.clone(), qemu_args),
        Some((program, rest)) => {
            let mut args: Vec<OsString> = rest.to_vec();
            args.push(cfg.qemu.clone().into_os_string());
            args.extend(qemu_args);
            (PathBuf::from(program), args)
        }
    }
}

/// The whole command, environment included, as one shell-quoted string a person can paste.
pub fn vm_command_line(cfg: &VmConfig) -> String {
    let (program, args) = program_and_args(cfg);
    let mut line = String::new();
    for (k, v) in &cfg.exec.env {
        let v = v.to_string_lossy();
        let v = shlex::try_quote(&v)
            .map(|q| q.into_owned())
            .unwrap_or_default();
        line.push_str(&format!("{}={v} ", k.to_string_lossy()));
    }
    line.push_str(&command_line(&program, &args));
    line
}

/// The command line as one shell-quoted string a person can paste.
pub fn command_line(program: &Path, args: &[OsString]) -> String {
    let words = std::iter::once(program.as_os_str()).chain(args.iter().map(|a| a.as_os_str()));
    words
        .map(|w| {
            let w = w.to_string_lossy();
            shlex::try_quote(&w)
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| format!("'{}'", w.replace('\0', "")))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            qemu: "/usr/bin/qemu-system-aarch64".into(),
            exec: QemuExec::default(),
            machine: "virt".into(),
            cpu: "cortex-a72".into(),
            accel: Accel::Tcg,
            smp: 2,
            memory_mib: 1024,
            firmware: FirmwareLoad::Pflash {
                code: "/fw/CODE.fd".into(),
                vars: "/run/x/vars.fd".into(),
            },
            firmware_wait: FirmwareWait::Skip,
            disks: vec![Disk {
                path: "/img/a,b.img".into(),
                format: DiskFormat::Raw,
                read_only: false,
                snapshot: true,
            }],
            network: Some(vec![Forward {
                host_port: 2222,
                guest_port: 22,
            }]),
            serial_socket: "/run/x/serial.sock".into(),
            qmp_socket: "/run/x/qmp.sock".into(),
            extra_args: vec!["-device".into(), "pvpanic-pci".into()],
        }
    }

    #[test]
    fn argv_is_exact() {
        let got: Vec<String> = argv(&cfg())
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let want = [
            "-name",
            "bootwatch",
            "-machine",
            "virt,accel=tcg",
            "-cpu",
            "cortex-a72",
            "-smp",
            "2",
            "-m",
            "1024M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-chardev",
            "vc,id=screen0",
            "-chardev",
            "socket,id=serial0,server=on,wait=off,path=/run/x/serial.sock",
            "-serial",
            "chardev:serial0",
            "-chardev",
            "socket,id=qmp0,server=on,wait=off,path=/run/x/qmp.sock",
            "-mon",
            "chardev=qmp0,mode=control",
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
            "-drive",
            "if=pflash,format=raw,unit=1,file=/run/x/vars.fd",
            "-boot",
            "menu=on,splash-time=0",
            "-drive",
            "if=none,id=disk0,format=raw,snapshot=on,file=/img/a,,b.img",
            "-device",
            "virtio-blk-pci,drive=disk0",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22",
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
            "-device",
            "virtio-rng-pci",
            "-device",
            "pvpanic-pci",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn bios_firmware_and_no_network() {
        let mut c = cfg();
        c.firmware = FirmwareLoad::Bios {
            code: "/fw/QEMU_EFI.fd".into(),
        };
        c.network = None;
        c.firmware_wait = FirmwareWait::Default;
        let got: Vec<String> = argv(&c)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(got.windows(2).any(|w| w == ["-bios", "/fw/QEMU_EFI.fd"]));
        assert!(
            !got.iter()
                .any(|a| a.contains("pflash") || a.contains("netdev") || a == "-boot")
        );
    }

    #[test]
    fn command_line_is_shell_quoted() {
        let args: Vec<OsString> = vec!["-drive".into(), "file=/a b/c.img".into(), "it's".into()];
        let line = command_line(Path::new("/usr/bin/qemu-system-aarch64"), &args);
        let back = shlex::split(&line).unwrap();
        assert_eq!(
            back,
            [
                "/usr/bin/qemu-system-aarch64",
                "-drive",
                "file=/a b/c.img",
                "it's"
            ]
        );
    }

    #[test]
    fn wrapped_qemu_runs_through_the_loader_with_its_env_and_data_dir() {
        let mut c = cfg();
        c.qemu = "/t/usr/bin/qemu-system-aarch64".into();
        c.exec = QemuExec {
            wrapper: vec![
                "/t/lib64/ld.so".into(),
                "--library-path".into(),
                "/t/lib".into(),
            ],
            env: vec![("QEMU_MODULE_DIR".into(), "/t/usr/lib/qemu".into())],
            data_dir: Some("/t/usr/share/qemu".into()),
        };
        let (program, args) = program_and_args(&c);
        assert_eq!(program, PathBuf::from("/t/lib64/ld.so"));
        assert_eq!(
            &args[..3],
            &["--library-path", "/t/lib", "/t/usr/bin/qemu-system-aarch64"]
        );
        assert_eq!(
            &args[3..7],
            &["-name", "bootwatch", "-L", "/t/usr/share/qemu"]
        );
        assert!(vm_command_line(&c).starts_with(
            "QEMU_MODULE_DIR=/t/usr/lib/qemu /t/lib64/ld.so --library-path /t/lib /t/usr/bin/qemu-system-aarch64 -name bootwatch -L"
        ));
        // Without a wrapper nothing changes.
        let plain = cfg();
        assert_eq!(program_and_args(&plain), (plain.qemu.clone(), argv(&plain)));
    }

    #[test]
    fn accelerator_choice() {
        let h = |arch: &str, os: &str, kvm| HostFacts {
            arch: arch.into(),
            os: os.into(),
            kvm_usable: kvm,
        };
        assert_eq!(h("x86_64", "linux", true).best_accel(), Accel::Tcg);
        assert_eq!(h("aarch64", "linux", true).best_accel(), Accel::Kvm);
        assert_eq!(h("aarch64", "linux", false).best_accel(), Accel::Tcg);
        assert_eq!(h("aarch64", "macos", false).best_accel(), Accel::Hvf);
        assert_eq!(DiskFormat::detect(b"QFI\xfb\0\0\0\x03"), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(b"\xeb\x3c\x90mkfs"), DiskFormat::Raw);
    }
}
