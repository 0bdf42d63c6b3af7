//! Data files turned into cases: scenarios, the demo, the matrix.

pub mod demo;
pub mod matrix;
pub mod replay;
pub mod scenario;
pub mod updates;
