//! bootwatch: boot ARM64 guests under QEMU + edk2, watch the serial console and QMP, and say
//! exactly what happened. See ARCHITECTURE.md for the map.

pub mod classify;
pub mod cli;
pub mod console;
pub mod verdict;
