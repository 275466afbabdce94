//! Builds the eBPF programs (`agent-ebpf`) for `bpfel-unknown-none` with the nightly toolchain
//! and bpf-linker, and leaves the object in `OUT_DIR/agent-ebpf`, where `probes::loader`
//! embeds it. `cargo xtask setup` installs what this needs.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
    let root = root.canonicalize()?;
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
