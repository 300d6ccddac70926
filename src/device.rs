//! Devices a tensor can live on.

use crate::error::{Error, Result};
use std::fmt;

/// Where a tensor's data lives and its kernels run.
///
/// `Cpu` is always available. `Cuda(n)` names the n-th NVIDIA GPU: in a build with the `cuda`
/// feature, [`Device::check`] asks the CUDA runtime whether it can be used (driver, device,
/// compute capability 8.0 or newer); without the feature, using it returns a clear error, so
/// that programs written for a GPU can fall back to the CPU (see
/// [`Device::cuda_if_available`]). Tensors themselves still live on the host: to run programs
/// on the GPU, set `KILN_BACKEND=cuda` (see `docs/cuda.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    /// Checks that the device can be used in this build and on this machine (for `Cuda`,
    /// this initialises the driver and the device's context on first use).
    pub fn check(self) -> Result<Device> {
        match self {
            Device::Cpu => Ok(self),
            Device::Cuda(n) => match cuda_check(n) {
                Ok(()) => Ok(self),
                Err(why) => Err(Error::Device {
                    device: self.to_string(),
                    why,
                }),
            },
        }
    }

    /// `Cuda(0)` if a CUDA device can be used, else `Cpu`: PyTorch's
    /// `torch.device("cuda" if torch.cuda.is_available() else "cpu")`.
    pub fn cuda_if_available() -> Device {
        if cuda_is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }
}

/// Whether a CUDA device can be used (`torch.cuda.is_available()`); always false in a build
/// without the `cuda` feature.
pub fn cuda_is_available() -> bool {
    Device::Cuda(0).check().is_ok()
}

/// Whether `cuda:{n}` can be used, asking the runtime; the reason if not.
#[cfg(feature = "cuda")]
fn cuda_check(n: usize) -> std::result::Result<(), String> {
    let ordinal = u32::try_from(n).map_err(|_| format!("no device has ordinal {n}"))?;
    kiln_codegen::cuda::runtime::device(ordinal)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_check(_: usize) -> std::result::Result<(), String> {
    Err(
        "this build of kiln has no CUDA backend (build it with `--features cuda`); use Device::Cpu"
            .into(),
    )
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
