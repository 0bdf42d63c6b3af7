//! Data files turned into cases: scenarios, the demo, the matrix, bisections.

pub mod bisect;
pub mod demo;
pub mod explain;
pub mod matrix;
pub mod probe;
pub mod replay;
pub mod scenario;
pub mod updates;
