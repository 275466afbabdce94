//! carbon-agent: energy and carbon per process tree, and wasted I/O, from in-kernel accounting.
//!
//! The pipeline, in the order data flows (see `docs/architecture.md`):
//! 1. [`probes`]: the eBPF programs and their maps (CPU time per tgid, lifecycle events, I/O).
//! 2. [`session`]: once per interval, drains the kernel (the only impure step) and runs the
//!    stages below over what was drained:
//!    [`usage`] (CPU time per process) with [`process`] (the process table and its trees),
//!    [`energy`] (meters or the model) and [`attribution`] (joules per process, kernel, idle),
//!    [`carbon`] (gCO2e, operational and embodied), [`io`] and [`waste`] (wasted-I/O findings).
//! 3. [`engine`]: owns the session; its pure step builds an immutable [`api::Snapshot`] and
//!    moves the cumulative per-scope totals on, then publishes the snapshot to subscribers.
//! 4. Consumers, which only read snapshots, each on a task of its own: [`output`] (JSON Lines,
//!    plain lines, and the live view, drawn from the latest snapshot), [`run`] (follows one
//!    command's tree; its document is [`api::run::RunDocument`], read back by [`report`]),
//!    [`serve`] (the always-on mode and its Prometheus exporter).
//!
//! Around them: [`cli`] (clap, only there: the flags become config keys), [`config`] (the TOML
//! file; every flag is one of its keys, listed in `docs/config.md`) and [`settings`] (the
//! flags' keys laid over the file's, resolved once, and again on `serve`'s SIGHUP),
//! [`doctor`] (what the machine offers), [`host`] and [`procfs`].
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
