//! The NVIDIA driver's libraries, loaded at run time: the CUDA driver API (`libcuda.so.1`)
//! and NVML (`libnvidia-ml.so.1`). Only the functions the load needs are resolved; a missing
//! library or symbol is a [`DriverError::Missing`] (the load exits 2 with it).

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::fmt;

use libloading::Library;

/// The CUDA driver library's default name (`GPU_LOAD_LIBCUDA` overrides it).
pub const LIBCUDA: &str = "libcuda.so.1";
/// NVML's default name (`GPU_LOAD_LIBNVML` overrides it).
pub const LIBNVML: &str = "libnvidia-ml.so.1";

/// Why the driver could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// A library or one of its functions is not there: this machine lacks the driver.
    Missing(String),
    /// The driver said no.
    Call(String),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Missing(s) | DriverError::Call(s) => f.write_str(s),
        }
    }
}

/// The library's path: the environment's override, else the default name.
pub fn library_path(env: &str, default: &str) -> String {
    std::env::var(env).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn open(path: &str, what: &str) -> Result<Library, DriverError> {
    // SAFETY: loading the NVIDIA driver's libraries runs their initializers, which have no
    // preconditions for us.
    unsafe { Library::new(path) }.map_err(|e| {
        DriverError::Missing(format!(
            "{path} cannot be loaded ({e}): {what} is missing; this needs a machine with the NVIDIA driver \
             installed"
        ))
    })
}

macro_rules! sym {
    ($lib:expr, $path:expr, $name:literal, $ty:ty) => {{
        // SAFETY: the type is the function's C signature from the driver's headers.
        let s: libloading::Symbol<'_, $ty> =
            unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                DriverError::Missing(format!(
                    "{} lacks {} ({e}): the NVIDIA driver is too old or broken",
                    $path, $name
                ))
            })?;
        *s
    }};
}

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuDevicePtr = u64;

/// `cuLaunchKernel(f, grid xyz, block xyz, shared bytes, stream, params, extra)`.
type LaunchKernel = unsafe extern "C" fn(
    CuFunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;

/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`.
const ATTR_SM_COUNT: c_int = 16;

/// The CUDA driver API functions the load uses.
pub struct Cuda {
    _lib: Library,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_pci_bus_id: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult,
    module_unload: unsafe extern "C" fn(CuModule) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    launch_kernel: LaunchKernel,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// The NVML functions the load uses.
pub struct Nvml {
    _lib: Library,
    handle_by_pci: unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int,
    get_index: unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_int,
    total_energy: unsafe extern "C" fn(*mut c_void, *mut u64) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    shutdown: unsafe extern "C" fn() -> c_int,
}

impl Cuda {
    /// Loads the CUDA driver library and resolves every function; calls `cuInit`.
    pub fn load(path: &str) -> Result<Self, DriverError> {
        let lib = open(path, "the CUDA driver library")?;
        let cuda = Cuda {
            init: sym!(lib, path, "cuInit", unsafe extern "C" fn(c_uint) -> CuResult),
            device_get_count: sym!(
                lib,
                path,
                "cuDeviceGetCount",
                unsafe extern "C" fn(*mut c_int) -> CuResult
            ),
            device_get: sym!(
                lib,
                path,
                "cuDeviceGet",
                unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult
            ),
            device_get_name: sym!(
                lib,
                path,
                "cuDeviceGetName",
                unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult
            ),
            device_get_pci_bus_id: sym!(
                lib,
                path,
                "cuDeviceGetPCIBusId",
                unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult
            ),
            device_get_attribute: sym!(
                lib,
                path,
                "cuDeviceGetAttribute",
                unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult
            ),
            primary_ctx_retain: sym!(
                lib,
                path,
                "cuDevicePrimaryCtxRetain",
                unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult
            ),
            primary_ctx_release: sym!(
                lib,
                path,
                "cuDevicePrimaryCtxRelease_v2",
                unsafe extern "C" fn(CuDevice) -> CuResult
            ),
            ctx_set_current: sym!(lib, path, "cuCtxSetCurrent", unsafe extern "C" fn(CuContext) -> CuResult),
            ctx_synchronize: sym!(lib, path, "cuCtxSynchronize", unsafe extern "C" fn() -> CuResult),
            module_load_data: sym!(
                lib,
                path,
                "cuModuleLoadData",
                unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult
            ),
            module_unload: sym!(lib, path, "cuModuleUnload", unsafe extern "C" fn(CuModule) -> CuResult),
            module_get_function: sym!(
                lib,
                path,
                "cuModuleGetFunction",
                unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult
            ),
            mem_alloc: sym!(
                lib,
                path,
                "cuMemAlloc_v2",
                unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult
            ),
            mem_free: sym!(lib, path, "cuMemFree_v2", unsafe extern "C" fn(CuDevicePtr) -> CuResult),
            launch_kernel: sym!(lib, path, "cuLaunchKernel", LaunchKernel),
            get_error_string: sym!(
                lib,
                path,
                "cuGetErrorString",
                unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult
            ),
            _lib: lib,
        };
        // SAFETY: cuInit(0) has no preconditions.
        cuda.check("cuInit", unsafe { (cuda.init)(0) })?;
        Ok(cuda)
    }

    fn check(&self, what: &str, r: CuResult) -> Result<(), DriverError> {
        if r == 0 {
            return Ok(());
        }
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string, or leaves it null.
        let msg = if unsafe { (self.get_error_string)(r, &mut s) } == 0 && !s.is_null() {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        } else {
            "unknown error".to_owned()
        };
        Err(DriverError::Call(format!("{what} failed: CUDA error {r} ({msg})")))
    }

    /// Number of CUDA devices.
    pub fn device_count(&self) -> Result<i32, DriverError> {
        let mut n = 0;
        // SAFETY: writes one int.
        self.check("cuDeviceGetCount", unsafe { (self.device_get_count)(&mut n) })?;
        Ok(n)
    }

    /// Opens device `ordinal` and makes its primary context current.
    pub fn open_device(&self, ordinal: i32) -> Result<CudaDevice<'_>, DriverError> {
        let mut dev = 0;
        // SAFETY: writes one device handle.
        self.check("cuDeviceGet", unsafe { (self.device_get)(&mut dev, ordinal) })?;
        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer holds 256 bytes.
        self.check("cuDeviceGetName", unsafe { (self.device_get_name)(name.as_mut_ptr(), 256, dev) })?;
        let mut pci = [0 as c_char; 64];
        // SAFETY: the buffer holds 64 bytes.
        self.check("cuDeviceGetPCIBusId", unsafe {
            (self.device_get_pci_bus_id)(pci.as_mut_ptr(), 64, dev)
        })?;
        let mut sms = 0;
        // SAFETY: writes one int.
        self.check("cuDeviceGetAttribute", unsafe {
            (self.device_get_attribute)(&mut sms, ATTR_SM_COUNT, dev)
        })?;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: writes one context handle.
        self.check("cuDevicePrimaryCtxRetain", unsafe { (self.primary_ctx_retain)(&mut ctx, dev) })?;
        let device = CudaDevice {
            cuda: self,
            dev,
            // SAFETY: the driver NUL-terminates both strings within the buffers.
            name: unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned(),
            pci_bus_id: unsafe { CStr::from_ptr(pci.as_ptr()) }.to_string_lossy().into_owned(),
            sm_count: sms.max(1) as u32,
        };
        // SAFETY: ctx was just retained.
        self.check("cuCtxSetCurrent", unsafe { (self.ctx_set_current)(ctx) })?;
        Ok(device)
    }
}

/// One CUDA device with its primary context current; released on drop.
pub struct CudaDevice<'a> {
    cuda: &'a Cuda,
    dev: CuDevice,
    /// Product name.
    pub name: String,
    /// PCI bus id (`0000:01:00.0`), which names the same GPU in NVML.
    pub pci_bus_id: String,
    /// Streaming multiprocessors.
    pub sm_count: u32,
}

impl Drop for CudaDevice<'_> {
    fn drop(&mut self) {
        // SAFETY: the primary context was retained in open_device.
        unsafe { (self.cuda.primary_ctx_release)(self.dev) };
    }
}

/// A JIT-compiled kernel and its output buffer.
pub struct Kernel<'a> {
    cuda: &'a Cuda,
    module: CuModule,
    function: CuFunction,
    out: CuDevicePtr,
    threads: u32,
}

impl<'a> CudaDevice<'a> {
    /// JIT-compiles `ptx` (`cuModuleLoadData`) and takes its entry `entry`, with an output
    /// buffer of one f32 per thread of `blocks × threads`.
    pub fn load_kernel(&self, ptx: &str, entry: &str, threads: u32) -> Result<Kernel<'a>, DriverError> {
        let cuda = self.cuda;
        let ptx = CString::new(ptx).map_err(|_| DriverError::Call("PTX contains a NUL byte".into()))?;
        let entry = CString::new(entry).map_err(|_| DriverError::Call("entry contains a NUL byte".into()))?;
        let mut module = std::ptr::null_mut();
        // SAFETY: the image is a NUL-terminated PTX string.
        cuda.check("cuModuleLoadData (PTX JIT)", unsafe {
            (cuda.module_load_data)(&mut module, ptx.as_ptr().cast())
        })?;
        let mut function = std::ptr::null_mut();
        // SAFETY: module is loaded; entry is NUL-terminated.
        if let Err(e) = cuda.check("cuModuleGetFunction", unsafe {
            (cuda.module_get_function)(&mut function, module, entry.as_ptr())
        }) {
            // SAFETY: module is loaded and unused.
            unsafe { (cuda.module_unload)(module) };
            return Err(e);
        }
        let mut out = 0;
        let bytes = (self.sm_count * Kernel::BLOCKS_PER_SM * threads) as usize * 4;
        // SAFETY: writes one device pointer.
        if let Err(e) = cuda.check("cuMemAlloc", unsafe { (cuda.mem_alloc)(&mut out, bytes) }) {
            // SAFETY: module is loaded and unused.
            unsafe { (cuda.module_unload)(module) };
            return Err(e);
        }
        Ok(Kernel { cuda, module, function, out, threads })
    }
}

impl Kernel<'_> {
    /// Blocks per SM in a launch: enough to keep every SM busy.
    pub const BLOCKS_PER_SM: u32 = 8;

    /// Launches the kernel over `sm_count × BLOCKS_PER_SM` blocks and waits for it.
    pub fn run(&self, sm_count: u32, iterations: u32) -> Result<(), DriverError> {
        let mut out = self.out;
        let mut iters = iterations;
        let mut params: [*mut c_void; 2] = [(&raw mut out).cast(), (&raw mut iters).cast()];
        let blocks = sm_count * Self::BLOCKS_PER_SM;
        // SAFETY: params point at the kernel's two arguments (u64 pointer, u32), alive here.
        self.cuda.check("cuLaunchKernel", unsafe {
            (self.cuda.launch_kernel)(
                self.function,
                blocks,
                1,
                1,
                self.threads,
                1,
                1,
                0,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })?;
        // SAFETY: no preconditions; waits for the launch.
        self.cuda.check("cuCtxSynchronize", unsafe { (self.cuda.ctx_synchronize)() })
    }
}

impl Drop for Kernel<'_> {
    fn drop(&mut self) {
        // SAFETY: both were created in load_kernel and are no longer used.
        unsafe {
            (self.cuda.mem_free)(self.out);
            (self.cuda.module_unload)(self.module);
        }
    }
}

impl Nvml {
    /// Loads NVML and initializes it.
    pub fn load(path: &str) -> Result<Self, DriverError> {
        let lib = open(path, "the NVML library")?;
        let init = sym!(lib, path, "nvmlInit_v2", unsafe extern "C" fn() -> c_int);
        let nvml = Nvml {
            handle_by_pci: sym!(
                lib,
                path,
                "nvmlDeviceGetHandleByPciBusId_v2",
                unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int
            ),
            get_index: sym!(
                lib,
                path,
                "nvmlDeviceGetIndex",
                unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_int
            ),
            total_energy: sym!(
                lib,
                path,
                "nvmlDeviceGetTotalEnergyConsumption",
                unsafe extern "C" fn(*mut c_void, *mut u64) -> c_int
            ),
            error_string: sym!(lib, path, "nvmlErrorString", unsafe extern "C" fn(c_int) -> *const c_char),
            shutdown: sym!(lib, path, "nvmlShutdown", unsafe extern "C" fn() -> c_int),
            _lib: lib,
        };
        // SAFETY: no preconditions.
        nvml.check("nvmlInit_v2", unsafe { init() })?;
        Ok(nvml)
    }

    fn check(&self, what: &str, r: c_int) -> Result<(), DriverError> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: nvmlErrorString returns a static NUL-terminated string (or null).
        let s = unsafe { (self.error_string)(r) };
        let msg = if s.is_null() { "unknown".into() } else { unsafe { CStr::from_ptr(s) }.to_string_lossy() };
        let hint = if r == 18 {
            ": reload the NVIDIA driver or reboot (driver/library version mismatch)"
        } else {
            ""
        };
        Err(DriverError::Call(format!("{what} failed: NVML error {r} ({msg}){hint}")))
    }

    /// The GPU at this PCI bus id: its NVML index and a handle to read its counter.
    pub fn device_by_pci(&self, pci_bus_id: &str) -> Result<NvmlGpu<'_>, DriverError> {
        let id = CString::new(pci_bus_id).map_err(|_| DriverError::Call("PCI bus id contains NUL".into()))?;
        let mut h = std::ptr::null_mut();
        // SAFETY: id is NUL-terminated; writes one handle.
        self.check("nvmlDeviceGetHandleByPciBusId_v2", unsafe { (self.handle_by_pci)(id.as_ptr(), &mut h) })?;
        let mut index = 0;
        // SAFETY: h is a valid handle; writes one uint.
        self.check("nvmlDeviceGetIndex", unsafe { (self.get_index)(h, &mut index) })?;
        Ok(NvmlGpu { nvml: self, handle: h, index })
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialized in load.
        unsafe { (self.shutdown)() };
    }
}

/// One GPU in NVML.
pub struct NvmlGpu<'a> {
    nvml: &'a Nvml,
    handle: *mut c_void,
    /// NVML index (the one `carbon-agent` and `nvidia-smi -i` use).
    pub index: u32,
}

impl NvmlGpu<'_> {
    /// The total-energy counter, mJ since the driver was loaded.
    pub fn energy_mj(&self) -> Result<u64, DriverError> {
        let mut mj = 0;
        // SAFETY: valid handle; writes one u64.
        self.nvml.check("nvmlDeviceGetTotalEnergyConsumption", unsafe {
            (self.nvml.total_energy)(self.handle, &mut mj)
        })?;
        Ok(mj)
    }
}
