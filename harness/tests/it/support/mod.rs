//! Test tooling shared by the integration tests that render the HTML report.

#![allow(dead_code)]

pub mod chromium;
