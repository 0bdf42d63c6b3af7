//! Data files turned into cases: scenarios, the demo, the matrix.

pub mod demo;
pub mod explain;
pub mod matrix;
pub mod scenario;
pub mod updates;
