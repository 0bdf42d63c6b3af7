//! The compatibility matrix: a matrix file's axes expanded into cells (`spec`, `plan`), cells run
//! concurrently as normal boots (`execute`), and the file formats they leave (`model`). Reports
//! are built from those files by `crate::report`.

pub mod model;
