//! The integration tests, one test binary (as rust-analyzer and nextest advise): one link instead of
//! one per file, and one pool of test threads, so a long test (a demo pair, a package-set bisect)
//! runs beside the others instead of ending its own binary alone.

mod common;
mod support;

mod bisect;
mod bisect_packages;
mod boot;
mod bundle;
mod cancel;
mod check;
mod ci_engines;
mod classify;
mod edk2_source;
mod explain;
mod firmware;
mod history;
mod hostile_input;
mod images;
mod matrix;
mod probe;
mod providers;
mod records;
mod report;
mod scenario;
mod tidy;
