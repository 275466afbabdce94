//! `io-bench [FILE_MIB] [BLOCK_BYTES] [ROUNDS]`: prints the I/O programs' benchmark as JSON
//! (kernel ns per event per handler, slowdown of a syscall-heavy copy). Needs root.
mod bench;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let mib: u64 = a.get(1).map_or(Ok(64), |s| s.parse())?;
    let block: usize = a.get(2).map_or(Ok(4096), |s| s.parse())?;
    let rounds: usize = a.get(3).map_or(Ok(5), |s| s.parse())?;
    let btf = carbon_agent::probes::btf::KernelBtf::from_sysfs(std::path::Path::new("/sys"))?;
    let r = bench::run(&btf, std::path::Path::new("/var/tmp"), mib << 20, block, rounds)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
