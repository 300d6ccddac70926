//! Contraction kernels of the CPU backend: `matmul`, `conv`, `conv_transpose`, `conv_weight`.
//!
//! The JIT compiles elementwise and reduction kernels itself, but a hand-written Cranelift
//! inner product reaches about 48 GFLOP/s on one core of the target machines, while the `gemm`
//! crate's AVX-512 microkernels reach about 250. So every contraction node is executed by a
//! function of this module, called by the JIT runtime on contiguous row-major buffers
//! ([`Contraction`] prepares one node once and runs it), and every inner product runs in
//! `gemm`:
//!
//! - [`matmul`]: batched `[..., m, k] x [..., k, n]`, one GEMM per batch element;
//! - [`conv`]: forward convolution as GEMM over an implicit im2col: per (image, group) and per
//!   tile of output positions, `Y[co, o] = W[co, (ci, k)] · Col[(ci, k), o]`, where the `Col`
//!   tile is packed from `x` in Rust (module `im2col`) and sized to stay in the L2 cache, so
//!   memory stays bounded however large the input (a 3-D U-Net's 32³ volumes);
//! - [`conv_transpose`] (the input gradient of `conv`): `Col = W^T · dY` per tile, then a
//!   col2im scatter-add into the result (which carries `output_padding`);
//! - [`conv_weight`] (the weight gradient): `dW^T[(ci, k), co] += Col[(ci, k), o] · dY^T[o, co]`
//!   summed over tiles and the batch.
//!
//! The three convolution kernels share one description of the bilinear relation, a
//! [`ConvGeometry`], exactly as the reference interpreter's `conv_runs` does, and one packing
//! plan, so their index arithmetic is written (and argued in bounds) once. Pointwise
//! convolutions (1x1 kernel, stride 1, no padding) use `x` in place of the column matrix.
//!
//! # Results and the epilogue
//!
//! Each kernel writes a whole output buffer. An [`Epilogue`] says how the product is combined
//! with it, so that the JIT can fuse the ops that commonly follow a contraction:
//! `out = [out +] product [+ bias[channel]]`, then an optional callback on each finished,
//! contiguous run of the output (e.g. a compiled activation). See [`Epilogue`] for which axis
//! is the channel of each kernel.
//!
//! # Threads
//!
//! [`Config::threads`] cores are used through rayon's current pool (call inside
//! `ThreadPool::install` to use another). Work is split into independent items, each writing a
//! disjoint part of the output (images x groups x tiles of output positions for `conv`; images x
//! groups x channel blocks for `conv_transpose`; groups x channel blocks, with per-item partial
//! sums over the batch, for `conv_weight`; batch elements for `matmul`). When there are fewer
//! items than threads, the items run in turn and each GEMM is parallel inside instead.
//! Parallel items also parallelise the packing and scattering, which a parallel GEMM cannot:
//! on the 3-D U-Net layer of `examples/contract_bench.rs` they were about 1.2-1.5x faster
//! than sequential items with two-thread GEMMs. Results do not depend on timing: the
//! partition depends only on the shapes and the [`Config`].
//!
//! # Safety
//!
//! All index arithmetic is on safe slices. The one `unsafe` block is the call into `gemm`
//! (raw pointers and strides), in `gemm_into`, which checks first that every element the call
//! can touch lies inside the slices it was given. Buffer lengths given by the caller are
//! checked against the shapes and a mismatch is an error value ([`ContractError`]), never a
//! panic.

mod conv;
mod im2col;
mod matmul;

pub use conv::{conv, conv_transpose, conv_weight, ConvGeometry};
pub use matmul::{matmul, MatMulShape};
pub(crate) mod wide;

use kiln_ir::Op;

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Mul};

/// What went wrong in a contraction kernel. Shapes come from a verified graph, so these mean
/// a bug in the caller (a buffer of the wrong length, shapes the IR would reject).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// A buffer does not hold as many elements as its shape says.
    #[error("{what}: the buffer holds {got} elements, its shape needs {want}")]
    Length {
        what: &'static str,
        want: usize,
        got: usize,
    },
    /// The shapes do not form a valid instance of the op (the IR's shape rule says why).
    #[error("invalid shapes: {0}")]
    Shape(String),
    /// An internal size or stride check failed (a bug in this module, reported instead of
    /// risking an out-of-bounds access).
    #[error("internal check failed: {0}")]
    Internal(String),
}

/// Result of a contraction kernel.
pub type Result<T, E = ContractError> = std::result::Result<T, E>;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types the kernels support: `f32` and `f64` (the float dtypes of the IR).
///
/// Sealed, because `gemm::gemm` dispatches on the type at run time and panics on types it
/// does not know: restricting `T` here is what makes that panic unreachable.
pub trait Float:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Debug
    + PartialEq
    + Add<Output = Self>
    + AddAssign
    + Mul<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// The slice as `f32`s, for the kernels written for `f32` only ([`wide`]).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

/// A callback on one finished run of output elements: `(flat offset of the run's first element
/// in the output buffer, the run)`. It may rewrite the run in place (e.g. apply an activation).
pub type RunFn<'a, T> = &'a (dyn Fn(usize, &mut [T]) + Sync);

/// How a kernel combines its product with the output buffer.
///
/// Every output element becomes `(accumulate ? out : 0) + product + bias[channel]`, and then
/// `map` (if any) is called once on every element, in contiguous runs that lie within one
/// channel (for `matmul`: within one row), each run after all its elements are final. Runs
/// partition the output; with several threads they may be called concurrently and in any
/// order (hence `Sync`).
///
/// The *channel* of an element, for `bias` (whose length must be the channel count):
/// - [`matmul`]: the last axis (`n`): `bias` is a `Linear` layer's bias;
/// - [`conv`]: axis 1 of the result (`Cout`);
/// - [`conv_transpose`]: axis 1 of the result (its `Cout`);
/// - [`conv_weight`]: axis 0 of the result (`Cout`), for uniformity.
#[derive(Clone, Copy)]
pub struct Epilogue<'a, T> {
    /// `true`: add the product to the values already in the output (GEMM's `beta = 1`), e.g.
    /// to sum gradient contributions; `false`: overwrite them.
    pub accumulate: bool,
    /// Added to every element of a channel (see above).
    pub bias: Option<&'a [T]>,
    /// Called on every finished run of the output.
    pub map: Option<RunFn<'a, T>>,
}

impl<'a, T> Epilogue<'a, T> {
    /// Overwrite the output with the product.
    pub fn none() -> Self {
        Epilogue {
            accumulate: false,
            bias: None,
            map: None,
        }
    }
    /// Add the product to the output.
    pub fn accumulate() -> Self {
        Epilogue {
            accumulate: true,
            ..Epilogue::none()
        }
    }
    /// Overwrite the output with the product plus a per-channel bias.
    pub fn bias(bias: &'a [T]) -> Self {
        Epilogue {
            bias: Some(bias),
            ..Epilogue::none()
        }
    }
    /// The same epilogue with `map` called on every finished run.
    pub fn with_map(self, map: RunFn<'a, T>) -> Self {
        Epilogue {
            map: Some(map),
            ..self
        }
    }
    /// Checks the bias length against the kernel's channel count.
    fn check(&self, channels: usize) -> Result<()> {
        match self.bias {
            Some(b) if b.len() != channels => Err(ContractError::Length {
                what: "bias",
                want: channels,
                got: b.len(),
            }),
            _ => Ok(()),
        }
    }
}

impl<T> Default for Epilogue<'_, T> {
    fn default() -> Self {
        Epilogue::none()
    }
}

impl<T> Debug for Epilogue<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epilogue")
            .field("accumulate", &self.accumulate)
            .field("bias", &self.bias.map(<[T]>::len))
            .field("map", &self.map.is_some())
            .finish()
    }
}

/// Writes one finished run: `out = (accumulate ? out : 0) + product + bias`, then `map`.
/// `offset` is the flat offset of `out[0]` in the whole output buffer.
fn finish_run<T: Float>(
    out: &mut [T],
    product: &[T],
    bias: Option<T>,
    epi: &Epilogue<T>,
    offset: usize,
) {
    match (epi.accumulate, bias) {
        (false, None) => out.iter_mut().zip(product).for_each(|(o, &p)| *o = p),
        (false, Some(b)) => out.iter_mut().zip(product).for_each(|(o, &p)| *o = p + b),
        (true, None) => out.iter_mut().zip(product).for_each(|(o, &p)| *o += p),
        (true, Some(b)) => out.iter_mut().zip(product).for_each(|(o, &p)| *o += p + b),
    }
    finish_map(out, epi, offset);
}

/// Calls the epilogue's `map` on a finished run that already holds its final values.
fn finish_map<T: Float>(run: &mut [T], epi: &Epilogue<T>, offset: usize) {
    if let Some(map) = epi.map {
        if !run.is_empty() {
            map(offset, run);
        }
    }
}

/// Execution settings of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Cores to use (through rayon's current pool); `1` runs everything on the calling thread.
    pub threads: usize,
    /// Target size, in elements, of one packed im2col tile (rows x output positions). Tiles
    /// of about a quarter of the L2 cache keep the packing writes and GEMM's reads in cache.
    pub tile_elems: usize,
    /// The convolution kernels plan the index arithmetic of each tile of output positions
    /// once per call and share it across images, groups and channel blocks, unless the plans
    /// would hold more than this many moves (about 24 bytes each; only a degenerate
    /// geometry, e.g. a last spatial axis of size 1 over a huge volume, comes near the
    /// default). Then each worker plans each tile as it goes.
    pub shared_plan_moves: usize,
}

impl Default for Config {
    /// All of rayon's threads, 64 Ki-element tiles (256 KiB of `f32`), shared plans up to
    /// 1 Mi moves (24 MiB).
    fn default() -> Self {
        Config {
            threads: rayon::current_num_threads().max(1),
            tile_elems: std::env::var("KILN_TILE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64 * 1024),
            shared_plan_moves: 1 << 20,
        }
    }
}

impl Config {
    /// The same settings on one thread.
    pub fn sequential() -> Self {
        Config {
            threads: 1,
            ..Config::default()
        }
    }
}

/// A contraction node prepared for execution: which kernel, its sizes and the result shape.
/// Made once (when a graph is compiled) and run many times.
#[derive(Clone, Debug, PartialEq)]
pub struct Contraction {
    kind: Kind,
    out_shape: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    MatMul(MatMulShape),
    Conv(ConvGeometry),
    ConvTranspose(ConvGeometry),
    ConvWeight(ConvGeometry),
}

impl Contraction {
    /// Prepares `op` (`matmul`, `conv`, `conv_transpose` or `conv_weight`) on operands of
    /// shapes `a` and `b`, checked with the IR's shape rule. Other ops are an error.
    pub fn new(op: &Op, a: &[usize], b: &[usize]) -> Result<Contraction> {
        let (kind, out_shape) = match op {
            Op::MatMul => {
                let s = MatMulShape::new(a, b)?;
                let mut out = a.to_vec();
                if let Some(last) = out.last_mut() {
                    *last = s.n;
                }
                (Kind::MatMul(s), out)
            }
            Op::Conv(p) => {
                let g = ConvGeometry::conv(a, b, p)?;
                let out = g.y_shape();
                (Kind::Conv(g), out)
            }
            Op::ConvTranspose(p) => {
                let g = ConvGeometry::conv_transpose(a, b, p)?;
                let out = g.x_shape();
                (Kind::ConvTranspose(g), out)
            }
            Op::ConvWeight { params, kernel } => {
                let g = ConvGeometry::conv_weight(a, b, params, kernel)?;
                let out = g.w_shape();
                (Kind::ConvWeight(g), out)
            }
            other => {
                return Err(ContractError::Shape(format!(
                    "{} is not a contraction",
                    other.name()
                )))
            }
        };
        Ok(Contraction { kind, out_shape })
    }

    /// Shape of the result.
    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// Length of an [`Epilogue::bias`]: the size of the result's channel axis (see
    /// [`Epilogue`]).
    pub fn channels(&self) -> usize {
        match &self.kind {
            Kind::MatMul(s) => s.n,
            Kind::Conv(_) | Kind::ConvTranspose(_) => self.out_shape[1],
            Kind::ConvWeight(_) => self.out_shape[0],
        }
    }

    /// Multiply-adds x 2 (the usual dense count).
    pub fn flops(&self) -> f64 {
        match &self.kind {
            Kind::MatMul(s) => s.flops(),
            Kind::Conv(g) | Kind::ConvTranspose(g) | Kind::ConvWeight(g) => g.flops(),
        }
    }

    /// Runs the kernel: `out = op(a, b)` combined with `out` by `epi`. `a`, `b` and `out` are
    /// row-major buffers of the operand and result shapes.
    pub fn run<T: Float>(
        &self,
        a: &[T],
        b: &[T],
        out: &mut [T],
        epi: &Epilogue<T>,
        cfg: &Config,
    ) -> Result<()> {
        match &self.kind {
            Kind::MatMul(s) => matmul(s, a, b, out, epi, cfg),
            Kind::Conv(g) => conv(g, a, b, out, epi, cfg),
            Kind::ConvTranspose(g) => conv_transpose(g, a, b, out, epi, cfg),
            Kind::ConvWeight(g) => conv_weight(g, a, b, out, epi, cfg),
        }
    }
}

/// Number of elements of a shape, or an error if it overflows `usize`.
fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| ContractError::Shape(format!("shape {shape:?} overflows usize")))
}

/// Checks a caller's buffer length.
fn check_len(what: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(ContractError::Length { what, want, got })
    }
}

fn internal(msg: impl Into<String>) -> ContractError {
    ContractError::Internal(msg.into())
}

// ----- the GEMM call ------------------------------------------------------------------------

/// A read-only strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A writable row-major matrix with row stride `rs >= cols`: element `(i, j)` is
/// `data[i * rs + j]`.
struct MatMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    rs: usize,
}

/// Offset of the last element of a `rows x cols` strided matrix, `None` if it is empty or the
/// arithmetic overflows (then the caller reports an error).
fn last_offset(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Option<usize>> {
    if rows == 0 || cols == 0 {
        return Some(None);
    }
    let r = (rows - 1).checked_mul(rs)?;
    let c = (cols - 1).checked_mul(cs)?;
    Some(Some(r.checked_add(c)?))
}

/// Checks that every element of a strided matrix lies in its slice.
fn check_extent(
    what: &str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    match last_offset(rows, cols, rs, cs) {
        Some(None) => Ok(()),
        Some(Some(last)) if last < len => Ok(()),
        _ => Err(internal(format!(
            "{what}: a {rows}x{cols} matrix with strides ({rs}, {cs}) does not fit in {len} elements"
        ))),
    }
}

/// A stride as `isize` for `gemm`. A stride that does not fit is only possible along an axis
/// of size 1 (otherwise the extent check bounds it by a slice length, which is at most
/// `isize::MAX`); it is never used to form an address there, so 0 stands in for it.
fn stride_isize(stride: usize, dim: usize) -> Result<isize> {
    match isize::try_from(stride) {
        Ok(s) => Ok(s),
        Err(_) if dim <= 1 => Ok(0),
        Err(_) => Err(internal(format!("stride {stride} does not fit in isize"))),
    }
}

/// `dst = [dst +] lhs · rhs`, with `gemm` on `par` threads (`1`: the calling thread).
///
/// Checks, before the call, that the three matrices fit in their slices and that their sizes
/// agree; an empty product (`lhs.cols == 0`) writes zeros (or leaves `dst` when
/// accumulating) without calling `gemm`.
fn gemm_into<T: Float>(
    dst: MatMut<'_, T>,
    accumulate: bool,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    par: usize,
) -> Result<()> {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if lhs.rows != m || rhs.cols != n || rhs.rows != k {
        return Err(internal(format!(
            "gemm sizes: dst {m}x{n}, lhs {}x{}, rhs {}x{}",
            lhs.rows, lhs.cols, rhs.rows, rhs.cols
        )));
    }
    if m > 1 && dst.rs < n {
        return Err(internal(format!(
            "gemm dst rows overlap: {n} columns, row stride {}",
            dst.rs
        )));
    }
    check_extent("gemm dst", dst.data.len(), m, n, dst.rs, 1)?;
    check_extent("gemm lhs", lhs.data.len(), m, k, lhs.rs, lhs.cs)?;
    check_extent("gemm rhs", rhs.data.len(), k, n, rhs.rs, rhs.cs)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.data.chunks_mut(dst.rs.max(n)).take(m) {
                row[..n].fill(T::ZERO);
            }
        }
        return Ok(());
    }
    if wide::applies(m, n, k, rhs.cs) {
        if let (Some(a), Some(b), Some(c)) = (
            T::as_f32(lhs.data),
            T::as_f32(rhs.data),
            T::as_f32_mut(dst.data),
        ) {
            let (lrs, lcs) = (lhs.rs, lhs.cs);
            let packed = wide::PackedA::new(m, k, |i, p| a[i * lrs + p * lcs]);
            // One row: any row stride will do; the wide kernel wants one of at least n.
            let c_rs = if m == 1 { dst.rs.max(n) } else { dst.rs };
            wide::gemm(&packed, n, b, rhs.rs, c, c_rs, accumulate, par).map_err(internal)?;
            return Ok(());
        }
    }
    let dst_rs = stride_isize(dst.rs, m)?;
    let (lhs_rs, lhs_cs) = (stride_isize(lhs.rs, m)?, stride_isize(lhs.cs, k)?);
    let (rhs_rs, rhs_cs) = (stride_isize(rhs.rs, k)?, stride_isize(rhs.cs, n)?);
    let parallelism = if par > 1 {
        gemm::Parallelism::Rayon(par)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `gemm::gemm` reads `lhs[i*lhs_rs + p*lhs_cs]` and `rhs[p*rhs_rs + j*rhs_cs]` and
    // writes (reading it first only if `read_dst`) `dst[i*dst_rs + j]` for `i < m`, `j < n`,
    // `p < k`, through the raw pointers below. All three matrices are non-empty here and
    // `check_extent` verified that their largest offsets, `(m-1)*rs + (k-1)*cs` and alike, are
    // below the lengths of the slices the pointers come from; the offsets are non-negative
    // (unsigned strides, converted without loss by `stride_isize`, or 0 along an axis of size
    // 1 where no offset uses them). Distinct `(i, j)` give distinct `dst` offsets because
    // `dst.rs >= n` (checked above when `m > 1`), so parallel writes inside `gemm` never race.
    // `dst` is an exclusive borrow, so it aliases neither `lhs` nor `rhs` (shared borrows), and
    // all three borrows outlive the call, which joins its worker tasks before returning.
    // `T: Float` is `f32` or `f64` (sealed trait), the types `gemm` dispatches to, so its
    // "unknown type" panic is unreachable; it reads the elements as initialised `T`s, which
    // slices guarantee.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst_rs,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Runs `work` on every item, on `threads` threads when there are enough items, each worker
/// reusing one scratch value made by `init`. Returns the first error.
fn run_items<I, S, F, N>(items: Vec<I>, threads: usize, init: N, work: F) -> Result<()>
where
    I: Send,
    N: Fn() -> S + Sync + Send,
    F: Fn(&mut S, I) -> Result<()> + Sync + Send,
{
    use rayon::prelude::*;
    if threads <= 1 || items.len() <= 1 {
        let mut scratch = init();
        return items.into_iter().try_for_each(|it| work(&mut scratch, it));
    }
    // rayon splits the items into a few jobs per thread (more when one is stolen); `init`
    // runs once per job, so scratch buffers are reused across the items of a job.
    items
        .into_par_iter()
        .try_for_each_init(init, |s, it| work(s, it))
}

/// Threads for each GEMM when `items` independent items run on `threads` threads: parallel
/// GEMMs only when there are too few items to keep the threads busy.
fn gemm_threads(items: usize, threads: usize) -> usize {
    if items >= threads {
        1
    } else {
        threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_into_checks_extents_and_sizes() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [1.0f32, 0.0, 0.0, 1.0];
        let mut c = [0.0f32; 4];
        let lhs = MatRef {
            data: &a,
            rows: 2,
            cols: 2,
            rs: 2,
            cs: 1,
        };
        let rhs = MatRef { data: &b, ..lhs };
        let dst = MatMut {
            data: &mut c,
            rows: 2,
            cols: 2,
            rs: 2,
        };
        gemm_into(dst, false, lhs, rhs, 1).unwrap();
        assert_eq!(c, a);
        // one element too many
        let bad = MatRef { rs: 3, ..lhs };
        let dst = MatMut {
            data: &mut c,
            rows: 2,
            cols: 2,
            rs: 2,
        };
        assert!(matches!(
            gemm_into(dst, false, bad, rhs, 1),
            Err(ContractError::Internal(_))
        ));
        // overlapping destination rows
        let dst = MatMut {
            data: &mut c,
            rows: 2,
            cols: 2,
            rs: 1,
        };
        assert!(gemm_into(dst, false, lhs, rhs, 1).is_err());
        // k == 0: zeros, or unchanged when accumulating
        let empty = MatRef {
            data: &a[..0],
            rows: 2,
            cols: 0,
            rs: 0,
            cs: 1,
        };
        let empty_r = MatRef {
            data: &a[..0],
            rows: 0,
            cols: 2,
            rs: 2,
            cs: 1,
        };
        let mut c = [5.0f32; 4];
        let dst = MatMut {
            data: &mut c,
            rows: 2,
            cols: 2,
            rs: 2,
        };
        gemm_into(dst, true, empty, empty_r, 1).unwrap();
        assert_eq!(c, [5.0; 4]);
        let dst = MatMut {
            data: &mut c,
            rows: 2,
            cols: 2,
            rs: 2,
        };
        gemm_into(dst, false, empty, empty_r, 1).unwrap();
        assert_eq!(c, [0.0; 4]);
    }
}
