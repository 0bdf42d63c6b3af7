//! Scenarios: steps as data, the hermetic update repositories, and the runner.

pub mod spec;
pub mod repo;
