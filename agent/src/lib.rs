//! carbon-agent: energy and carbon per process tree, and wasted I/O, from in-kernel accounting.
pub mod io;
pub mod probes;
pub mod usage;
pub mod waste;
