//! carbon-agent: energy and carbon per process tree, and wasted I/O, from in-kernel accounting.
pub mod carbon;
pub mod config;
pub mod probes;
pub mod report;
pub mod usage;
