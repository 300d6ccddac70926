//! kiln-codegen: scheduling, the kernel IR and the backends.
//!
//! The CPU compiler takes a graph of `kiln-ir` to machine code in stages, each a module:
//!
//! 1. [`canon`]: a canonical numbering of the needed nodes and a structural key, so that
//!    structurally identical graphs share one compiled program ([`cache`]);
//! 2. [`schedule`]: which nodes get a buffer and a kernel, which are fused into their users;
//! 3. [`lower`]: each kernel as [`kernel`] IR (loop nests, 64-bit index arithmetic, loads
//!    and stores, accumulators, contraction calls), vectorised and verified;
//! 4. [`memory`]: buffers planned by liveness;
//! 5. [`cpu`]: Cranelift JIT of the loop nests, GEMM-backed [`contract`]ions, the runtime;
//!    [`cuda`]: the same kernels printed as PTX (the runtime on `cust` under feature `cuda`).
//!
//! [`execute`] is the entry point of the front end (same contract as
//! [`kiln_ir::interp::eval`]); [`Program`] compiles once and runs many times.

pub mod cache;
pub mod canon;
pub mod contract;
pub mod cpu;
pub mod cuda;
pub mod dump;
pub mod kernel;
pub mod lower;
pub mod memory;
pub mod models;
pub mod program;
pub mod schedule;
pub mod split;

pub use cache::{stats as cache_stats, CacheStats};
pub use program::Program;

use kiln_ir::{Graph, Literal, NodeId};
use std::collections::HashMap;

/// Where a graph is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// The reference interpreter of `kiln-ir`: clear, not fast; the oracle for the others.
    Interpreter,
    /// The Cranelift CPU compiler.
    #[default]
    Jit,
    /// The GPU: the CPU compiler's schedule with PTX kernels, run through the CUDA runtime
    /// (`KILN_CUDA_DEVICE` picks the device, default 0). Only builds with the `cuda` feature
    /// can run it; others report that they have no CUDA backend.
    Cuda,
}

impl Backend {
    /// The backend selected by `KILN_BACKEND` (`interp`, `jit` or `cuda`), or the default
    /// (`jit`).
    pub fn from_env() -> Backend {
        match std::env::var("KILN_BACKEND").as_deref() {
            Ok("interp") | Ok("interpreter") => Backend::Interpreter,
            Ok("jit") | Ok("cpu") | Ok("") | Err(_) => Backend::Jit,
            Ok("cuda") | Ok("gpu") => Backend::Cuda,
            Ok(other) => {
                log::warn!(
                    "KILN_BACKEND={other} is not a known backend (interp, jit, cuda); using jit"
                );
                Backend::Jit
            }
        }
    }
}

/// Evaluates the nodes `wanted` of `graph` with the backend chosen by `KILN_BACKEND`.
///
/// The contract of [`kiln_ir::interp::eval`]: `bindings` gives the values of the needed
/// `input`/`param` nodes and may bind any other node (its value is used instead of computing
/// it); every binding is checked against its node's type. With the JIT, the program is
/// compiled on first use and cached by the graph's structure.
pub fn execute(
    graph: &Graph,
    bindings: &HashMap<NodeId, &Literal>,
    wanted: &[NodeId],
) -> kiln_ir::Result<Vec<Literal>> {
    execute_on(Backend::from_env(), graph, bindings, wanted)
}

/// [`execute`] on a given backend.
pub fn execute_on(
    backend: Backend,
    graph: &Graph,
    bindings: &HashMap<NodeId, &Literal>,
    wanted: &[NodeId],
) -> kiln_ir::Result<Vec<Literal>> {
    match backend {
        Backend::Interpreter => kiln_ir::interp::eval(graph, bindings, wanted),
        Backend::Jit => {
            let mut bound: Vec<NodeId> = bindings.keys().copied().collect();
            bound.sort();
            Program::compile(graph, wanted, &bound)?.run(bindings)
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let mut bound: Vec<NodeId> = bindings.keys().copied().collect();
            bound.sort();
            let ordinal = cuda::program::default_ordinal();
            cuda::CudaProgram::compile(graph, wanted, &bound, ordinal)?.run(bindings)
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(kiln_ir::IrError::Eval(NO_CUDA.into())),
    }
}

/// What `KILN_BACKEND=cuda` reports in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub const NO_CUDA: &str = "KILN_BACKEND=cuda: this build of kiln has no CUDA backend \
     (rebuild with `--features cuda`; see docs/cuda.md)";
