//! Deterministic cluster simulation (issue 3, item 7): see `harness`.

pub mod harness;
pub mod sm;

pub use harness::{run_seed, Report, SimOptions, Violation};
