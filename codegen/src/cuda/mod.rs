//! The CUDA backend.
//!
//! - [`ptx`]: the PTX emitter, from the same kernel IR as the CPU JIT. It is plain text
//!   generation and needs no CUDA, so it is built (and tested, and its output validated by
//!   `ptxas` where one is installed) in the default build. [`contract`] writes contractions as
//!   loop nests of the kernel IR for it.
//! - `runtime` (feature `cuda`): the driver API through `cust` (contexts, the stream, the
//!   caching allocator, the module cache, copies and launches). Building it needs a
//!   `libcuda.so`; on a machine without CUDA, `scripts/cuda-stub.sh` provides a stub.
//! - `program` (feature `cuda`): `CudaProgram`, the CPU program's schedule and buffer plan
//!   with its kernels as PTX, run on a device (`KILN_BACKEND=cuda`). See `docs/cuda.md`.

pub mod contract;
pub mod math;
#[cfg(feature = "cuda")]
pub mod program;
pub mod ptx;
#[cfg(feature = "cuda")]
pub mod runtime;

#[cfg(feature = "cuda")]
pub use program::{CudaProgram, DeviceTensor};
