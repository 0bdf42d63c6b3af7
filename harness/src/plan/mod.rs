//! Data files turned into cases: scenarios, the demo, the matrix, bisections.

pub mod bisect;
pub mod demo;
pub mod matrix;
pub mod scenario;
pub mod updates;
