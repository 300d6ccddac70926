//! The CUDA runtime on `cust` 0.3.2 (feature `cuda`): devices, memory, modules, launches.
//!
//! - [`device`]: one lazily initialised [`Device`] per GPU ordinal, shared by every thread of
//!   the process. It retains the device's *primary* context (the one the CUDA runtime API and
//!   PyTorch use) and creates one stream; every operation makes that context current on the
//!   calling thread first ([`Device::bind`]), so kiln can serve from many threads.
//! - [`alloc`]: a caching allocator. Blocks are rounded up to size buckets and returned to
//!   per-bucket free lists when a [`Buffer`] is dropped; an allocation that fails with out of
//!   memory releases every cached block and retries once, and then reports
//!   [`Error::OutOfMemory`] (never an abort). Reuse is safe without events because all work of
//!   a device is ordered on its one stream.
//! - [`modules`]: PTX modules cached by a hash of their text (the text itself is compared on
//!   a hit), loaded with `Module::from_ptx`; functions looked up by entry name and cached.
//! - Copies between host and device ([`Buffer::upload`], [`Buffer::download`]) and kernel
//!   launches ([`Device::launch`]) on the device's stream.
//!
//! Every error of the driver becomes an [`Error`] carrying the call, the driver's code, name
//! and message. The logic that needs no GPU (size buckets, free lists, the module cache's
//! keying, the choice of PTX target) is factored into plain types tested on any machine.

pub mod alloc;
pub mod device;
pub mod modules;

pub use alloc::Buffer;
pub use device::{device, Device, Function};

use crate::cuda::ptx::{EmitError, Target};
use cust::error::CudaError;
use cust::sys as cu;

/// An error of the CUDA runtime, with the driver's message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A driver call failed (no device, no driver, an illegal address in a kernel, ...).
    #[error("CUDA: {call} failed: {message} ({name}, code {code})")]
    Driver {
        /// The driver API function (or cust method) that failed.
        call: &'static str,
        /// The driver's `CUresult` code (100: no device).
        code: i32,
        /// The code's name (`CUDA_ERROR_NO_DEVICE`).
        name: String,
        /// The driver's description of it.
        message: String,
    },
    /// Device memory is exhausted, even after releasing every block the allocator cached.
    #[error("CUDA: out of device memory allocating {bytes} bytes (after releasing kiln's cached blocks)")]
    OutOfMemory { bytes: usize },
    /// The ordinal names no device of this machine.
    #[error("CUDA: there is no device cuda:{ordinal} (this machine has {count})")]
    NoSuchDevice { ordinal: u32, count: u32 },
    /// The device cannot run kiln's kernels (compute capability below 8.0, say).
    #[error("CUDA: device cuda:{ordinal} ({name}): {why}")]
    Unsupported {
        ordinal: u32,
        name: String,
        why: String,
    },
    /// The driver refused a PTX module; `log` is the JIT compiler's error log.
    #[error("CUDA: the driver could not load the PTX of {entry}: {message}\n{log}")]
    ModuleLoad {
        entry: String,
        message: String,
        log: String,
    },
    /// A kernel could not be printed as PTX.
    #[error("CUDA: {0}")]
    Emit(#[from] EmitError),
    /// A misuse of the runtime caught before it reached the driver (a launch with a buffer
    /// smaller than the kernel's parameter, say): a bug in kiln.
    #[error("CUDA: {0}")]
    Invalid(String),
}

/// The driver's code for "no CUDA-capable device is detected".
const NO_DEVICE: i32 = 100;
/// The driver's code for "out of memory".
const OUT_OF_MEMORY: i32 = 2;

impl Error {
    /// Whether the error says that the machine has no usable CUDA device (or no driver).
    pub fn is_no_device(&self) -> bool {
        matches!(self, Error::Driver { code, .. } if *code == NO_DEVICE)
    }

    /// Whether the driver ran out of device memory.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
            || matches!(self, Error::Driver { code, .. } if *code == OUT_OF_MEMORY)
    }

    /// The error of a failed raw driver call `call` that returned `r`.
    pub(crate) fn driver(call: &'static str, r: cu::CUresult) -> Error {
        let text = |f: unsafe extern "C" fn(
            cu::CUresult,
            *mut *const std::os::raw::c_char,
        ) -> cu::CUresult| {
            let mut p: *const std::os::raw::c_char = std::ptr::null();
            // SAFETY: cuGetErrorName/cuGetErrorString take a valid CUresult (`r` came from the
            // driver as a `CUresult`) and an out-pointer to a `const char *`, which is a live
            // local; on success they store a pointer to a static NUL-terminated string owned by
            // the driver (never freed), which is read at once and copied.
            unsafe {
                if f(r, &mut p) == cu::CUresult::CUDA_SUCCESS && !p.is_null() {
                    Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
                } else {
                    None
                }
            }
        };
        Error::Driver {
            call,
            code: r as i32,
            name: text(cu::cuGetErrorName).unwrap_or_else(|| format!("{r:?}")),
            message: text(cu::cuGetErrorString)
                .unwrap_or_else(|| "unknown error (the driver has no description)".into()),
        }
    }
}

/// `Ok` when a raw driver call succeeded, else its error.
pub(crate) fn check(call: &'static str, r: cu::CUresult) -> Result<(), Error> {
    if r == cu::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::driver(call, r))
    }
}

/// Names the call of a `cust` result, turning its `CudaError` into an [`Error`].
pub(crate) trait Call<T> {
    fn call(self, call: &'static str) -> Result<T, Error>;
}

impl<T> Call<T> for Result<T, CudaError> {
    fn call(self, call: &'static str) -> Result<T, Error> {
        self.map_err(|e| {
            let message = cust_message(e);
            Error::Driver {
                call,
                code: e as u32 as i32,
                name: format!("{e:?}"),
                message,
            }
        })
    }
}

/// The driver's description of a cust error: cust prints it as the `Debug` form of a C string
/// (quoted, with `'` and `"` escaped), which is undone here.
pub(crate) fn cust_message(e: CudaError) -> String {
    let s = e.to_string();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&s);
    s.replace("\\'", "'").replace("\\\"", "\"")
}

/// The number of CUDA devices, after initialising the driver; an error (not an abort) on a
/// machine without a driver or a device.
pub fn device_count() -> Result<u32, Error> {
    cust::init(cust::CudaFlags::empty()).call("cuInit")?;
    cust::device::Device::num_devices().call("cuDeviceGetCount")
}

/// The PTX target kiln emits for a device of compute capability `major.minor`: `Sm90` for
/// Hopper and later (PTX for `sm_90` is JIT-compiled by the driver for newer GPUs), `Sm80` for
/// Ampere and Ada (8.x); older GPUs are refused (the emitter's PTX needs ISA 7.0 and sm_80).
pub fn target_for(major: i32, minor: i32) -> Result<Target, String> {
    match major {
        m if m >= 9 => Ok(Target::Sm90),
        8 => Ok(Target::Sm80),
        _ => Err(format!(
            "compute capability {major}.{minor} is too old: kiln's PTX needs 8.0 (Ampere) or newer"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_compute_capability() {
        assert_eq!(target_for(9, 0), Ok(Target::Sm90));
        assert_eq!(target_for(10, 0), Ok(Target::Sm90));
        assert_eq!(target_for(8, 0), Ok(Target::Sm80));
        assert_eq!(target_for(8, 9), Ok(Target::Sm80));
        let e = target_for(7, 5).unwrap_err();
        assert!(e.contains("7.5") && e.contains("8.0"), "{e}");
    }

    #[test]
    fn driver_errors_are_classified() {
        let e = Error::Driver {
            call: "cuInit",
            code: NO_DEVICE,
            name: "CUDA_ERROR_NO_DEVICE".into(),
            message: "no CUDA-capable device is detected".into(),
        };
        assert!(e.is_no_device() && !e.is_out_of_memory());
        assert!(e
            .to_string()
            .contains("cuInit failed: no CUDA-capable device"));
        assert!(Error::OutOfMemory { bytes: 8 }.is_out_of_memory());
    }
}
