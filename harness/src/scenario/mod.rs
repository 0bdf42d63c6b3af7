//! Scenarios: steps as data, the hermetic update repositories, the runner and the demo.

pub mod demo;
pub mod repo;
pub mod runner;
pub mod spec;
