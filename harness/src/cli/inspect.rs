//! `bootwatch inspect ...`: offline inspection of what a boot is made of. Each kind of target has
//! its own file (`inspect_chain`; firmware images: `probe`).

use super::CliResult;
use super::inspect_chain;

#[derive(clap::Subcommand, Debug)]
pub enum InspectCommand {
    /// The boot chain: each EFI binary on the boot path of a run's disk (its kept overlay, with
    /// the vars store's BootOrder), a disk image, a .deb or an EFI binary: PE machine,
    /// NX_COMPAT, section alignment, W^X, SBAT, shim/GRUB versions.
    Chain(inspect_chain::ChainArgs),
    /// Read a firmware code image offline: its firmware volumes (LZMA sections unpacked), its
    /// drivers (module names), which drivers issue SMCCC calls (hvc/smc), its version strings.
    Firmware {
        /// The code image (e.g. AAVMF_CODE.fd, QEMU_EFI.fd).
        file: std::path::PathBuf,
        /// Print the facts and the driver table as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub async fn inspect(c: InspectCommand) -> CliResult {
    match c {
        InspectCommand::Chain(a) => inspect_chain::chain(a).await,
        InspectCommand::Firmware { file, json } => super::probe::inspect_firmware(file, json).await,
    }
}
