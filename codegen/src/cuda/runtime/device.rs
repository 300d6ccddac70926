//! Devices: the primary context, the stream, module loading and kernel launches.

use super::alloc::{Buffer, Pool};
use super::modules::ModuleCache;
use super::{check, target_for, Call, Error};
use crate::cuda::ptx::Target;
use cust::context::{Context, CurrentContext};
use cust::device::DeviceAttribute;
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::sys as cu;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SHARED: u32 = 48 * 1024;

/// One GPU: its retained primary context, one stream, the caching allocator and the module
/// cache. Made once per ordinal by [`device`] and shared by all threads (`Send + Sync`).
pub struct Device {
    ordinal: u32,
    name: String,
    capability: (i32, i32),
    target: Target,
    total_memory: usize,
    max_shared_optin: u32,
    // Declared before `ctx`: dropped first, while the context is alive (in practice the
    // `Device` lives in a static and is never dropped).
    stream: Stream,
    modules: ModuleCache<Loaded>,
    pool: Mutex<Pool>,
    ctx: Context,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Device(cuda:{} {}, sm_{}{})",
            self.ordinal, self.name, self.capability.0, self.capability.1
        )
    }
}

/// A loaded module and the functions looked up in it.
struct Loaded {
    module: Module,
    functions: Mutex<HashMap<String, RawFunction>>,
}

/// A `CUfunction` handle.
#[derive(Clone, Copy, Debug)]
struct RawFunction(cu::CUfunction);

// SAFETY: a CUfunction is an opaque handle into the driver, valid in every thread for as long
// as its module is loaded; the driver API is thread-safe, and kiln never mutates the function
// through the handle except with cuFuncSetAttribute, which the driver serialises.
unsafe impl Send for RawFunction {}
// SAFETY: as above; sharing the handle between threads only copies the pointer value.
unsafe impl Sync for RawFunction {}

/// A kernel ready to launch: the function and the module that keeps it loaded.
#[derive(Clone)]
pub struct Function {
    raw: RawFunction,
    _module: Arc<Loaded>,
    entry: String,
    /// Dynamic shared memory the function was opted in to (above 48 KiB).
    shared_optin: Arc<Mutex<u32>>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Function({})", self.entry)
    }
}

impl Function {
    /// The `.entry` name.
    pub fn entry(&self) -> &str {
        &self.entry
    }
}

fn devices() -> &'static Mutex<HashMap<u32, Arc<Device>>> {
    static DEVICES: OnceLock<Mutex<HashMap<u32, Arc<Device>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The device `cuda:{ordinal}`, initialised on first use (driver, primary context, stream).
/// Initialisation errors are returned, not cached: a later call tries again.
pub fn device(ordinal: u32) -> Result<Arc<Device>, Error> {
    let mut map = devices().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(Device::open(ordinal)?);
    map.insert(ordinal, d.clone());
    Ok(d)
}

impl Device {
    fn open(ordinal: u32) -> Result<Device, Error> {
        let count = super::device_count()?;
        if ordinal >= count {
            return Err(Error::NoSuchDevice { ordinal, count });
        }
        let dev = cust::device::Device::get_device(ordinal).call("cuDeviceGet")?;
        let name = dev.name().call("cuDeviceGetName")?;
        let attr = |a| dev.get_attribute(a).call("cuDeviceGetAttribute");
        let capability = (
            attr(DeviceAttribute::ComputeCapabilityMajor)?,
            attr(DeviceAttribute::ComputeCapabilityMinor)?,
        );
        let target = target_for(capability.0, capability.1).map_err(|why| Error::Unsupported {
            ordinal,
            name: name.clone(),
            why,
        })?;
        let total_memory = dev.total_memory().call("cuDeviceTotalMem")?;
        let mut optin: std::os::raw::c_int = 0;
        // SAFETY: `optin` is a live local the driver writes one int to; the attribute and the
        // device handle are valid (the handle came from cuDeviceGet above).
        check("cuDeviceGetAttribute", unsafe {
            cu::cuDeviceGetAttribute(
                &mut optin,
                cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                dev.as_raw(),
            )
        })?;
        // Retains the primary context (released only if the Device is dropped) and makes it
        // current on this thread; the stream is created in it.
        let ctx = Context::new(dev).call("cuDevicePrimaryCtxRetain")?;
        CurrentContext::set_current(&ctx).call("cuCtxSetCurrent")?;
        let stream = Stream::new(StreamFlags::NON_BLOCKING, None).call("cuStreamCreate")?;
        log::info!(
            "cuda:{ordinal}: {name}, compute capability {}.{}, {} MiB, PTX target {}",
            capability.0,
            capability.1,
            total_memory >> 20,
            target.name()
        );
        Ok(Device {
            ordinal,
            name,
            capability,
            target,
            total_memory,
            max_shared_optin: optin.max(0) as u32,
            stream,
            modules: ModuleCache::default(),
            pool: Mutex::new(Pool::default()),
            ctx,
        })
    }

    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// The device's name (`NVIDIA H100 80GB HBM3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// The PTX target kiln emits for this device.
    pub fn target(&self) -> Target {
        self.target
    }

    pub fn total_memory(&self) -> usize {
        self.total_memory
    }

    /// Makes this device's context current on the calling thread. Every operation calls it
    /// first (it is a cheap thread-local store in the driver), so any thread may use the
    /// device: kiln serves from many threads, each of which may last have used another device.
    pub fn bind(&self) -> Result<(), Error> {
        CurrentContext::set_current(&self.ctx).call("cuCtxSetCurrent")
    }

    /// Waits until all work enqueued on the device's stream is done.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.bind()?;
        self.stream.synchronize().call("cuStreamSynchronize")
    }

    pub(crate) fn stream_raw(&self) -> cu::CUstream {
        self.stream.as_inner()
    }

    pub(crate) fn pool(&self) -> MutexGuard<'_, Pool> {
        // A poisoned lock only means a thread panicked while holding it; the lists are
        // updated in single statements and stay consistent.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of loaded PTX modules.
    pub fn modules_loaded(&self) -> usize {
        self.modules.len()
    }

    /// The function `entry` of the module made from `ptx`, loading (JIT-compiling) the module
    /// on first use of that text.
    pub fn function(&self, ptx: &str, entry: &str) -> Result<Function, Error> {
        self.bind()?;
        let loaded = self.modules.get_or_load(ptx, |text| {
            let module = Module::from_ptx(text, &[]).map_err(|e| Error::ModuleLoad {
                entry: entry.to_string(),
                message: super::cust_message(e),
                log: jit_error_log(text).unwrap_or_default(),
            })?;
            Ok::<_, Error>(Loaded {
                module,
                functions: Mutex::new(HashMap::new()),
            })
        })?;
        let raw = {
            let mut fns = loaded.functions.lock().unwrap_or_else(|e| e.into_inner());
            match fns.get(entry) {
                Some(f) => *f,
                None => {
                    let f = loaded
                        .module
                        .get_function(entry)
                        .call("cuModuleGetFunction")?;
                    let raw = RawFunction(f.to_raw());
                    fns.insert(entry.to_string(), raw);
                    raw
                }
            }
        };
        Ok(Function {
            raw,
            _module: loaded,
            entry: entry.to_string(),
            shared_optin: Arc::new(Mutex::new(0)),
        })
    }

    /// Enqueues a launch of `f` on the device's stream: `grid` x `block` threads (1-D), with
    /// `shared_bytes` of dynamic shared memory, its parameters being the addresses of `args`
    /// in order.
    ///
    /// # Safety
    ///
    /// The kernel must declare exactly `args.len()` parameters, each a `.u64` address, and
    /// every access it makes through parameter `i` must stay within the first
    /// `args[i].bytes()` bytes; the buffers must not be dropped before the launch completes
    /// (dropping returns them to the allocator, whose next user is ordered after the launch on
    /// the same stream, so dropping right after enqueueing is fine).
    pub unsafe fn launch(
        &self,
        f: &Function,
        grid: u32,
        block: u32,
        shared_bytes: u32,
        args: &[&Buffer],
    ) -> Result<(), Error> {
        if grid == 0 || block == 0 || block > 1024 {
            return Err(Error::Invalid(format!(
                "launch of {} with grid {grid} and block {block}",
                f.entry
            )));
        }
        if let Some(b) = args.iter().find(|b| b.device().ordinal() != self.ordinal) {
            return Err(Error::Invalid(format!(
                "launch of {} on cuda:{} with a buffer of cuda:{}",
                f.entry,
                self.ordinal,
                b.device().ordinal()
            )));
        }
        self.bind()?;
        if shared_bytes > DEFAULT_SHARED {
            if shared_bytes > self.max_shared_optin {
                return Err(Error::Invalid(format!(
                    "{} asks for {shared_bytes} bytes of shared memory; the device allows {}",
                    f.entry, self.max_shared_optin
                )));
            }
            let mut optin = f.shared_optin.lock().unwrap_or_else(|e| e.into_inner());
            if *optin < shared_bytes {
                // SAFETY: `f.raw` is a live function handle (its module is held by `f`); the
                // attribute takes an int no larger than the device's opt-in limit (checked).
                check("cuFuncSetAttribute", unsafe {
                    cu::cuFuncSetAttribute(
                        f.raw.0,
                        cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        shared_bytes as i32,
                    )
                })?;
                *optin = shared_bytes;
            }
        }
        // cuLaunchKernel reads each parameter through `params[i]`, a pointer to its value (here
        // a 64-bit device address), and copies the values before it returns.
        let mut values: Vec<cu::CUdeviceptr> = args.iter().map(|b| b.ptr()).collect();
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut cu::CUdeviceptr as *mut c_void)
            .collect();
        // SAFETY: `f.raw` is a function of a module loaded in this device's context (current);
        // `params` holds `args.len()` pointers to live u64 values that outlive the call (the
        // driver copies them during it); the caller guarantees the kernel's parameter list and
        // that its accesses stay within the buffers; grid and block were checked, and the
        // shared memory is within what the function was opted in to.
        check("cuLaunchKernel", unsafe {
            cu::cuLaunchKernel(
                f.raw.0,
                grid,
                1,
                1,
                block,
                1,
                1,
                shared_bytes,
                self.stream_raw(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }
}

/// The JIT compiler's error log for `ptx` (loaded again with a log buffer, after a failed
/// `Module::from_ptx`), or `None` if it cannot be had.
fn jit_error_log(ptx: &str) -> Option<String> {
    const LOG: usize = 16 * 1024;
    let text = CString::new(ptx).ok()?;
    let mut log = vec![0u8; LOG];
    let mut options = [
        cu::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        cu::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // Option values are passed as pointer-sized words: the buffer's address and its size.
    let mut values: [*mut c_void; 2] = [log.as_mut_ptr().cast(), LOG as *mut c_void];
    let mut module: cu::CUmodule = std::ptr::null_mut();
    // SAFETY: `text` is a NUL-terminated image that outlives the call; `options` and `values`
    // are two-element arrays as `numOptions` says; the log buffer is `LOG` writable bytes and
    // the driver writes at most that many (it is told the size); `module` is a live
    // out-pointer. The caller made the device's context current.
    let r = unsafe {
        cu::cuModuleLoadDataEx(
            &mut module,
            text.as_ptr().cast(),
            2,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if r == cu::CUresult::CUDA_SUCCESS && !module.is_null() {
        // It loaded this time: unload it again (the caller reports the first failure).
        // SAFETY: `module` was just loaded into the current context and is not used elsewhere.
        unsafe { cu::cuModuleUnload(module) };
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let s = String::from_utf8_lossy(&log[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}
