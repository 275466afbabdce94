//! `gpu-load`: keeps one GPU busy for N seconds with a JIT-compiled FMA loop and prints
//! NVML's energy counter once its context exists and again just before it tears down.
//! Needs only the NVIDIA driver (`libcuda.so.1`, `libnvidia-ml.so.1`), loaded at run time.
//!
//! Exit status: 0 done; 1 the driver refused (no device, JIT failed…); 2 the driver's
//! libraries are missing (not a GPU machine).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use gpu_load::driver::{Cuda, DriverError, LIBCUDA, LIBNVML, Nvml, library_path};
use gpu_load::output::PREFIX;

/// Keep one NVIDIA GPU busy and report its energy counter (for scripts/gpu-check.sh).
///
/// Lines on stdout (`gpu-load: ready …`, `gpu-load: energy phase=start …`,
/// `gpu-load: energy phase=end …`) are machine-readable. GPU_LOAD_LIBCUDA and
/// GPU_LOAD_LIBNVML override the libraries' paths.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// CUDA device ordinal (CUDA_VISIBLE_DEVICES applies).
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// Only load both driver libraries and initialize them, then exit (preflight).
    #[arg(long)]
    probe: bool,
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu-load: error: {e}");
            ExitCode::from(match e {
                DriverError::Missing(_) => 2,
                DriverError::Call(_) => 1,
            })
        }
    }
}

fn run(args: &Args) -> Result<(), DriverError> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(DriverError::Call(format!("--seconds {} must be a positive number", args.seconds)));
    }
    // Both libraries first: a machine without the driver is told so before anything runs.
    let cuda = Cuda::load(&library_path("GPU_LOAD_LIBCUDA", LIBCUDA))?;
    let nvml = Nvml::load(&library_path("GPU_LOAD_LIBNVML", LIBNVML))?;
    let count = cuda.device_count()?;
    if args.probe {
        println!("{PREFIX} probe cuda_devices={count} libraries=ok");
        return Ok(());
    }
    if args.device < 0 || args.device >= count {
        return Err(DriverError::Call(format!("no CUDA device {} (this machine has {count})", args.device)));
    }
    let device = cuda.open_device(args.device)?;
    let gpu = nvml.device_by_pci(&device.pci_bus_id)?;
    const THREADS: u32 = 256;
    let kernel = device.load_kernel(gpu_load::PTX, gpu_load::ENTRY, THREADS)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{PREFIX} ready pid={} cuda_device={} nvml_index={} pci={} sms={} name={}",
        std::process::id(),
        args.device,
        gpu.index,
        device.pci_bus_id,
        device.sm_count,
        device.name
    );
    // The context and the module exist: the load's own energy starts here.
    let start_mj = gpu.energy_mj()?;
    let _ = writeln!(out, "{PREFIX} energy phase=start energy_mj={start_mj} unix_ms={}", unix_ms());
    let _ = out.flush();

    // Launches of about 50 ms: short enough to stop on time, long enough to keep it busy.
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut iterations: u32 = 1024;
    let mut launches: u64 = 0;
    while Instant::now() < deadline {
        let t = Instant::now();
        kernel.run(device.sm_count, iterations)?;
        launches += 1;
        let took = t.elapsed().as_secs_f64().max(1e-4);
        iterations = ((f64::from(iterations) * 0.050 / took) as u32).clamp(64, 1 << 24);
    }
    let end_mj = gpu.energy_mj()?;
    let _ = writeln!(
        out,
        "{PREFIX} energy phase=end energy_mj={end_mj} unix_ms={} launches={launches}",
        unix_ms()
    );
    let _ = out.flush();
    drop(kernel);
    drop(device);
    Ok(())
}
