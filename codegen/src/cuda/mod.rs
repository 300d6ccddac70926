//! The CUDA backend.
//!
//! - [`ptx`]: the PTX emitter, from the same kernel IR as the CPU JIT. It is plain text
//!   generation and needs no CUDA, so it is built (and tested, and its output validated by
//!   `ptxas` where one is installed) in the default build. [`contract`] writes contractions as
//!   loop nests of the kernel IR for it.
//! - `runtime` (feature `cuda`): the driver API through `cust`. Building it needs a
//!   `libcuda.so`; on a machine without CUDA, `scripts/cuda-stub.sh` provides a stub.

pub mod contract;
pub mod ptx;
#[cfg(feature = "cuda")]
pub mod runtime;
