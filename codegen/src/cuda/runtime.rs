//! The CUDA runtime on `cust` (feature `cuda`): today only device discovery, with CUDA's errors
//! turned into values. Context, streams, the module cache and device buffers come next (issue
//! 6, item 2); until they exist, `kiln::Device::Cuda` reports that the backend is missing.

use cust::error::CudaError;

/// An error of the CUDA runtime, with the driver's message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver returned an error (no device, no driver, out of memory, ...).
    #[error("CUDA: {message} ({code:?})")]
    Cuda { code: CudaError, message: String },
}

impl From<CudaError> for Error {
    fn from(code: CudaError) -> Error {
        Error::Cuda {
            message: code.to_string(),
            code,
        }
    }
}

impl Error {
    /// Whether the error says that the machine has no usable CUDA device.
    pub fn is_no_device(&self) -> bool {
        matches!(
            self,
            Error::Cuda {
                code: CudaError::NoDevice,
                ..
            }
        )
    }
}

/// The number of CUDA devices, after initialising the driver; an error (not an abort) on a
/// machine without a driver or a device.
pub fn device_count() -> Result<u32, Error> {
    cust::init(cust::CudaFlags::empty())?;
    Ok(cust::device::Device::num_devices()?)
}
