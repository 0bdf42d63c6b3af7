//! The compatibility matrix: a matrix file's axes expanded into cells (`spec`, `plan`), cells run
//! concurrently as normal boots (`execute`), images' upgraded states made once (`upgrade`), and
//! the file formats they leave (`model`). Reports are built from those files by `crate::report`.

pub mod execute;
pub mod model;
pub mod plan;
pub mod spec;
pub mod upgrade;
