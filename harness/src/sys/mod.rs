//! The host edge every layer stands on: files (atomic writes, locks, hashing, the cache root),
//! host facts, and the one way external tools are run ([`proc`]).

pub mod fsx;
pub mod host;
pub mod proc;
