//! carbon-agent's developer commands. `cargo xtask --help` lists them; the README shows the two
//! that matter most: `cargo xtask run` and `cargo xtask test`.

mod bench;
mod cmd;
mod fuzz;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "carbon-agent's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs when missing: the nightly with rust-src, bpf-linker built
    /// against the nightly's LLVM, rustfmt/clippy, Debian packages. Idempotent.
    Setup,
    /// Setup, then build, run every test (the kernel tests need root), clippy, rustfmt, and lint
    /// the eBPF crate for its target.
    Test,
    /// Setup, build the agent (release) and run it with the given arguments.
    Run {
        /// Arguments for carbon-agent (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the agent's hot handlers: kernel ns per event and the slowdown of a load.
    Bench(bench::BenchOptions),
    /// Setup, build the libFuzzer targets in fuzz/ and run each for --seconds (docs/fuzzing.md).
    Fuzz(fuzz::FuzzOptions),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup(),
        Task::Test => test::test(),
        Task::Run { args } => run::run(&args),
        Task::Bench(options) => bench::bench(&options),
        Task::Fuzz(options) => fuzz::fuzz(&options),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
