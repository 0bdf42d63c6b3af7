//! bootwatch: boot ARM64 guests under QEMU + edk2, watch the serial console and QMP, and say
//! exactly what happened. See ARCHITECTURE.md for the map.

pub mod classify;
pub mod cli;
pub mod console;
pub mod debian;
pub mod fixtures;
pub mod images;
pub mod launch;
pub mod matrix;
pub mod providers;
pub mod qmp;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
pub mod session;
pub mod shell;
pub mod supervise;
pub mod verdict;
