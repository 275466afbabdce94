//! carbon-agent: energy and carbon per process tree, and wasted I/O, from in-kernel accounting.
//!
//! The pipeline, in the order data flows (see `docs/architecture.md`):
//! [`probes`] (eBPF programs and their maps) → [`session`] (one pass per interval) →
//! [`usage`] (CPU time per process per interval) with [`process`] (the process table and its
//! trees) → [`output`] (live view, JSON Lines, `run` summary).
pub mod api;
pub mod attribution;
pub mod carbon;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod energy;
pub mod engine;
pub mod host;
pub mod io;
pub mod output;
pub mod probes;
pub mod process;
pub mod procfs;
pub mod report;
pub mod run;
pub mod serve;
pub mod session;
pub mod settings;
pub mod usage;
pub mod waste;
