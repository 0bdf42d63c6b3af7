//! bootwatch: boot ARM64 guests under QEMU + edk2, watch the serial console and QMP, and say
//! exactly what happened. See ARCHITECTURE.md for the map.
//!
//! Layers, each using only the ones below it: `cli` -> `plan` -> `engine` -> `core`, with
//! `inputs` (images, QEMU and firmware builds, Debian archive, update repositories) resolved by
//! `plan` and `cli` before a case runs, and `report` reading the files runs leave.

pub mod cli;
pub mod core;
pub mod engine;
pub mod inputs;
pub mod plan;
pub mod report;
pub mod sys;
