//! The host edge every layer stands on: files (atomic writes, locks, hashing, the cache root)
//! and host facts. The process helper lives here too once every tool goes through it.

pub mod fsx;
pub mod host;
