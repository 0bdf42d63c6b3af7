//! The pure core: the VM description and its argv, console normalization, classification and
//! the verdict vocabulary. No IO, no clock, no process, no printing (times and host facts are
//! passed in); `tests/it/tidy.rs` checks it.

pub mod chain;
pub mod classify;
pub mod console;
pub mod event;
pub mod facts;
pub mod firmware;
pub mod known_bugs;
pub mod launch;
pub mod varstore;
pub mod verdict;
