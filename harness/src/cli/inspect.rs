//! `bootwatch inspect ...`: offline inspection of what a boot is made of. Each kind of target has
//! its own file (`inspect_chain`).

use super::CliResult;
use super::inspect_chain;

#[derive(clap::Subcommand, Debug)]
pub enum InspectCommand {
    /// The boot chain: each EFI binary on the boot path of a run's disk (its kept overlay, with
    /// the vars store's BootOrder), a disk image, a .deb or an EFI binary: PE machine,
    /// NX_COMPAT, section alignment, W^X, SBAT, shim/GRUB versions.
    Chain(inspect_chain::ChainArgs),
}

pub async fn inspect(c: InspectCommand) -> CliResult {
    match c {
        InspectCommand::Chain(a) => inspect_chain::chain(a).await,
    }
}
