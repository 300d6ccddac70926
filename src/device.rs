//! Devices a tensor can live on.

use crate::error::{Error, Result};
use std::fmt;

/// Where a tensor's data lives and its kernels run.
///
/// `Cpu` is always available. `Cuda(n)` names the n-th NVIDIA GPU; until kiln's CUDA backend
/// is built (the `cuda` feature of a later release), using it returns a clear error so that
/// programs written for a GPU can fall back to the CPU (see [`Device::cuda_if_available`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    /// Checks that the device can be used in this build and on this machine.
    pub fn check(self) -> Result<Device> {
        match self {
            Device::Cpu => Ok(self),
            Device::Cuda(_) => Err(Error::Device {
                device: self.to_string(),
                why: "this build of kiln has no CUDA backend yet (it arrives with the `cuda` feature); use Device::Cpu"
                    .into(),
            }),
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

/// Whether a CUDA device can be used (`torch.cuda.is_available()`); always false in this build.
pub fn cuda_is_available() -> bool {
    Device::Cuda(0).check().is_ok()
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
