//! What a case is made of, resolved before it runs: guest images, QEMU and firmware builds,
//! Debian's archive, update repositories, generated fixtures.

pub mod debian;
pub mod fixtures;
pub mod images;
pub mod probe;
pub mod providers;
pub mod repo;
