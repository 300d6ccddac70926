//! PTX from the kernel IR: the GPU's half of "one kernel IR, two backends".
//!
//! [`emit`] prints one [`Kernel`] as a PTX module (`.version 7.0` for `sm_80`, `8.0` for
//! `sm_90`, 64-bit addressing) with one `.entry` whose `.param`s are the kernel's buffers in
//! order (`u64` device addresses), and returns it with the launch it needs: `(grid, block)` and
//! the bytes of dynamic shared memory ([`PtxKernel::shared_bytes`], the module's `.extern`
//! `kiln_smem`).
//!
//! **Thread mappings** ([`Mapping`], chosen by [`Mapping::of`]):
//! - **Tiled GEMM** ([`Mapping::Gemm`]) for float contractions (matmul, batched matmul, and the
//!   convolution family as implicit GEMMs; [`super::contract::gemm`]): 256-thread blocks take
//!   64x64 output tiles, stage 16-deep slices of both operands through shared memory (zero
//!   outside the matrix and the operand's padding / stride-hole guards, so edges need no
//!   special case), and each thread accumulates a 4x4 register micro-tile with one `fma` per
//!   element and step, its fragments read with 16-byte `ld.shared.v4`. Why: a contraction does
//!   `K` multiply-adds per output, and one thread per output re-reads both operands from global
//!   memory `K` times; the tiles divide that traffic by 64 and the micro-tile gives 16 FMAs per
//!   two shared loads. FP32 by default; with [`Options::allow_tf32`] (`KILN_ALLOW_TF32=1`,
//!   PyTorch's `allow_tf32`) f32 contractions run their micro-tiles on the tensor cores
//!   (`mma.sync.m16n8k8` TF32, f32 accumulation: operands rounded to a 10-bit mantissa, so
//!   about 1e-3 relative error instead of 1e-7; the fragment layouts follow the PTX ISA and
//!   are checked here only through the emulation, not yet on a GPU). When the output has too
//!   few tiles to fill the GPU (a weight gradient: small output, contraction over batch x
//!   positions), several blocks share a tile, each over a chunk of the contracted index (split-K,
//!   [`super::contract::split_k`]); the tile's last block (atomic counter) sums the partial
//!   tiles from module-global scratch in part order, so results are deterministic.
//!   [`super::contract::emulate`] runs the same steps on the CPU, thread by thread, for the
//!   tests.
//! - **Block per output** ([`Mapping::BlockReduce`]) for reductions that are long (at least
//!   [`BLOCK_REDUCE_MIN`] elements) with few outputs (at most [`BLOCK_REDUCE_MAX_OUTPUTS`]) or
//!   very long (256+; softmax rows, a full sum): the reduction loop nest is split across the
//!   block's threads (neighbouring threads on neighbouring elements: coalesced when the reduced
//!   axis is the innermost one), each thread folds its share into its accumulator, and the
//!   partials are combined by a tree: `shfl.sync.down` within each warp, then one value per
//!   warp through shared memory and the same tree in warp 0 ([`block_combine`] gives the exact
//!   order); the total is broadcast so later statements (the division of a softmax, a second
//!   reduction) see it, and thread 0 alone stores. A warp (32 threads, no shared memory) for
//!   reductions up to 64 elements, 128 threads up to 1024, 256 beyond. Why: one thread per
//!   output would leave most of the GPU idle (64 outputs: 64 threads) and walk a row
//!   serially with uncoalesced reads. [`block_plan`] says which kernels have the shape. With
//!   very few outputs (a full sum: the scheduler's first stage has 64) one block per output
//!   is still too few, so up to [`MAX_SPLIT`] blocks share an output ([`reduce_split`]): each
//!   publishes its tree's total to a module-global scratch slot, and the last to finish
//!   (an atomic counter, reset by it for the next launch) folds them in a fixed order, so the
//!   result is deterministic. This assumes launches of one module do not overlap (one stream).
//! - **Grid-stride with 4 elements per thread** (`GridStride { vector: 4 }`) for elementwise
//!   kernels whose innermost extent is a multiple of 4 and with at least one f32 access proven
//!   contiguous and 16-byte aligned ([`vector_accesses`]): those accesses become single
//!   `ld.global.nc.v4.f32` / `st.global.v4.f32` (a quarter of the memory instructions), the
//!   rest stay scalar per lane. The alignment proof needs every kernel buffer to start
//!   16-byte aligned: the runtime passes whole `cuMemAlloc` blocks (256-byte aligned).
//! - **Grid-stride** ([`Mapping::GridStride`]) for everything else with a parallel outermost
//!   loop: a 1-D grid-stride loop over the *collapsed perfect nest* below it (the parallel loop
//!   and every loop that is the only statement of the previous one). The flat index
//!   `t = blockIdx.x * blockDim.x + threadIdx.x (+ k * gridDim.x * blockDim.x)` is split back
//!   into the loop variables by division and remainder, innermost fastest, so neighbouring
//!   threads touch neighbouring elements of row-major buffers (coalesced accesses where the
//!   layout allows). What lies below the collapsed nest (a short reduction with many outputs)
//!   runs sequentially in each thread, which is right when the outputs alone fill the GPU.
//! - **Single thread** ([`Mapping::Single`]) for a kernel without a parallel loop that is not a
//!   block reduction (a scalar computation).
//!
//! The tests (`codegen/tests/ptx.rs`) check every mapping on the CPU with the kernel IR
//! interpreter: each output element written exactly once by the thread that owns it, and the
//! values equal to the plain loop nest's (up to summation order for the trees and tiles).
//! Integer contractions (none in practice) are rewritten as loop nests
//! ([`super::contract::as_loops`]) and mapped like any other kernel.
//!
//! Arithmetic: f32 `exp`, `log`, `tanh` and `sigmoid` use the hardware approximations (`ex2`,
//! `lg2`, `tanh.approx`), as the CPU JIT uses polynomial ones; f64 `exp`, `log`, `tanh`,
//! `sigmoid` and `pow` are range-reduced polynomials in software ([`super::math`], within 1-2
//! ulp); `max`/`min` propagate NaN as PyTorch does; float-to-integer casts truncate and
//! saturate (PTX `cvt.rzi`, NaN to 0), as Rust's `as`. Index arithmetic is 64-bit; divisions
//! by constants (splitting flat indices, index expressions proven non-negative) are shifts,
//! masks or multiply-shifts by [`magic`] numbers where the dividend stays below 2^31, because
//! ptxas expands a PTX `div` by an immediate into a full division routine.

use crate::kernel::{
    Access, Atom, BinaryOp, Body, CmpOp, DType, Ix, KOp, Kernel, ReduceOp, Scalar, Stmt, UnaryOp,
    Var,
};
use std::fmt::Write;

/// A GPU architecture to emit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Ampere (A100): PTX ISA 7.0.
    Sm80,
    /// Hopper (H100, H200): PTX ISA 8.0.
    Sm90,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Sm80, Target::Sm90];

    /// The name `ptxas --gpu-name` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::Sm80 => "sm_80",
            Target::Sm90 => "sm_90",
        }
    }

    /// The PTX ISA version written in `.version`.
    pub fn isa_version(self) -> &'static str {
        match self {
            Target::Sm80 => "7.0",
            Target::Sm90 => "8.0",
        }
    }
}

/// Threads per block of grid-stride kernels (also written as `.maxntid`).
pub const BLOCK: u32 = 256;
/// At most this many blocks are launched; the grid-stride loop covers the rest.
pub const MAX_GRID: u32 = 1 << 16;

/// How a kernel's iterations are spread over GPU threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// One thread runs the whole body (the kernel has no parallel loop).
    Single,
    /// A grid-stride loop over `total` flat indices, each split into the collapsed loops'
    /// variables (outermost first, innermost varying fastest). With `vector` 4, each thread
    /// takes 4 consecutive indices (4 consecutive iterations of the innermost loop) at once, and
    /// the f32 accesses proven contiguous and 16-byte aligned ([`vector_accesses`]) are single
    /// `v4` loads and stores.
    GridStride {
        loops: Vec<(Var, u64)>,
        total: u64,
        vector: u32,
    },
    /// One block of `threads` threads per output: blocks take the `outputs` flat indices of
    /// the collapsed outer loops `outer` in a grid-stride loop (`outer` is empty for a full
    /// reduction: one output), the threads of a block split each reduction loop nest below
    /// (block-strided over its collapsed flat index), and each accumulator is then combined
    /// by a tree ([`block_combine`]: warp shuffles, then shared memory across warps) and
    /// broadcast to every thread; thread 0 alone stores. See [`block_plan`].
    ///
    /// With `split` > 1 (few outputs, a very long reduction with one accumulator), `split`
    /// blocks share each output (`outputs * split` blocks, no grid-stride loop): block `b`
    /// takes output `b / split` and part `p = b % split`, its threads the flat indices
    /// `p * threads + t + k * split * threads`; thread 0 publishes the block's total to a
    /// module-global scratch slot, fences, and counts the parts done with an atomic; the last
    /// block of the output folds the `split` partials (by the same block-strided loop and
    /// tree, so the order is fixed: deterministic), resets the counter for the next launch,
    /// and runs the statements after the loop.
    BlockReduce {
        outer: Vec<(Var, u64)>,
        outputs: u64,
        threads: u32,
        split: u32,
    },
    /// The tiled GEMM of a float contraction ([`super::contract::gemm`]): blocks of
    /// [`super::contract::GEMM_THREADS`] threads take the `tiles * ksplit` work items (an
    /// output tile, or with split-K one of `ksplit` chunks of the contracted index for it) in
    /// a grid-stride loop; `shared` bytes of shared memory hold the operand tiles. With split-K
    /// each block writes its partial tile to module-global scratch and the last block of the
    /// tile (an atomic counter, reset by it) sums the partials in part order and stores.
    Gemm {
        tiles: u64,
        ksplit: u64,
        shared: u32,
        /// TF32 tensor-core micro-tiles (opt-in, [`Options::allow_tf32`]).
        tf32: bool,
    },
}

impl Mapping {
    /// The mapping [`emit`] uses for `k`: a block per output where [`block_plan`] accepts the
    /// kernel and the reduction is long (at least [`BLOCK_REDUCE_MIN`] elements) while the
    /// outputs are few ([`BLOCK_REDUCE_MAX_OUTPUTS`]) or the reduction very long (256 or more),
    /// else the grid-stride loop, else a single thread.
    pub fn of(k: &Kernel) -> Mapping {
        if let Body::Call(_) = k.body {
            if let Ok(Some(g)) = super::contract::gemm(k) {
                return Mapping::Gemm {
                    tiles: g.tiles(),
                    ksplit: g.ksplit,
                    shared: g.shared_bytes(),
                    tf32: false,
                };
            }
            if let Ok(Some(l)) = super::contract::as_loops(k) {
                return Mapping::of(&l);
            }
        }
        if let Some(plan) = block_plan(k) {
            if plan.reduced >= BLOCK_REDUCE_MIN
                && (plan.outputs <= BLOCK_REDUCE_MAX_OUTPUTS || plan.reduced >= 256)
            {
                let threads = reduce_threads(plan.reduced);
                return Mapping::BlockReduce {
                    split: reduce_split(&plan, threads),
                    threads,
                    outer: plan.outer,
                    outputs: plan.outputs,
                };
            }
        }
        collapse(k).map_or(Mapping::Single, |(loops, body)| {
            let total = loops.iter().map(|&(_, e)| e).product();
            let vector = if vector_accesses(k, &loops, body).is_empty() {
                1
            } else {
                4
            };
            Mapping::GridStride {
                loops,
                total,
                vector,
            }
        })
    }

    /// A short name of the mapping's kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Mapping::Single => "single",
            Mapping::GridStride { vector: 4, .. } => "grid-stride-v4",
            Mapping::GridStride { .. } => "grid-stride",
            Mapping::BlockReduce { split: 2.., .. } => "split-reduce",
            Mapping::BlockReduce { threads: 32, .. } => "warp-reduce",
            Mapping::BlockReduce { .. } => "block-reduce",
            Mapping::Gemm { tf32: true, .. } => "gemm-tf32",
            Mapping::Gemm { ksplit: 2.., .. } => "gemm-split-k",
            Mapping::Gemm { .. } => "gemm",
        }
    }

    /// The values of the collapsed loops' variables at flat index `t` (as the PTX computes
    /// them).
    pub fn split(&self, t: u64) -> Vec<(Var, u64)> {
        match self {
            Mapping::Single => Vec::new(),
            Mapping::GridStride { loops, .. } => split_flat(loops, t),
            Mapping::BlockReduce { outer, .. } => split_flat(outer, t),
            Mapping::Gemm { .. } => Vec::new(),
        }
    }

    /// `(grid, block)` of the launch: enough blocks for one index per thread, at most
    /// `max_grid` of them.
    pub fn launch(&self, max_grid: u32) -> (u32, u32) {
        match self {
            Mapping::Single => (1, 1),
            Mapping::GridStride { total, vector, .. } => {
                let groups = total / u64::from((*vector).max(1));
                let blocks = groups.div_ceil(u64::from(BLOCK)).max(1);
                (blocks.min(u64::from(max_grid.max(1))) as u32, BLOCK)
            }
            Mapping::BlockReduce {
                outputs,
                threads,
                split,
                ..
            } if *split > 1 => ((*outputs * u64::from(*split)) as u32, *threads),
            Mapping::BlockReduce {
                outputs, threads, ..
            } => (
                (*outputs).clamp(1, u64::from(max_grid.max(1))) as u32,
                *threads,
            ),
            Mapping::Gemm { tiles, ksplit, .. } => (
                (tiles * ksplit).clamp(1, u64::from(max_grid.max(1))) as u32,
                super::contract::GEMM_THREADS,
            ),
        }
    }

    /// Bytes of dynamic shared memory a launch needs: one 8-byte slot per warp for the
    /// cross-warp step of a block reduction.
    pub fn shared_bytes(&self) -> u32 {
        match self {
            Mapping::BlockReduce { threads, split, .. } if *threads > 32 => {
                8 * (threads / 32) + if *split > 1 { 8 } else { 0 }
            }
            Mapping::Gemm { shared, .. } => *shared,
            _ => 0,
        }
    }

    /// The flat indices thread `thread` of block `block` visits in a launch of
    /// `grid` x `block_dim` threads (the grid-stride loop); `Single`: thread (0, 0) runs once.
    pub fn visits(&self, grid: u32, block_dim: u32, block: u32, thread: u32) -> Vec<u64> {
        match self {
            Mapping::Single => {
                if block == 0 && thread == 0 {
                    vec![0]
                } else {
                    Vec::new()
                }
            }
            Mapping::BlockReduce { .. } | Mapping::Gemm { .. } => {
                let items = match self {
                    Mapping::Gemm { tiles, ksplit, .. } => tiles * ksplit,
                    Mapping::BlockReduce { outputs, .. } => *outputs,
                    _ => 0,
                };
                let items = &items;
                let mut t = u64::from(block);
                let mut out = Vec::new();
                while t < *items && thread < block_dim {
                    out.push(t);
                    t += u64::from(grid.max(1));
                }
                out
            }
            Mapping::GridStride { total, vector, .. } => {
                // Flat indices of groups of `vector` consecutive indices.
                let v = u64::from((*vector).max(1));
                let stride = u64::from(grid) * u64::from(block_dim);
                let mut t = u64::from(block) * u64::from(block_dim) + u64::from(thread);
                let mut out = Vec::new();
                while t < total / v {
                    out.extend(t * v..t * v + v);
                    t += stride.max(1);
                }
                out
            }
        }
    }
}

/// The values of `k`'s per-element statements `body` (below the collapsed `loops`) whose loads
/// and stores become 16-byte vector accesses when a thread takes 4 consecutive iterations of
/// the innermost loop; empty when the kernel does not qualify. It qualifies when `body` is
/// straight-line (lets and stores only), the innermost extent is a multiple of 4, and at
/// least one f32 access is *provably* contiguous and aligned: its index is `inner + rest` with
/// `rest` a multiple of 4 whatever the other variables (every other term's coefficient and the
/// constant multiples of 4, nothing else mentioning `inner`), so with `inner` a multiple of 4
/// the element offset is too, and the byte address is 16-byte aligned because every kernel
/// buffer is a whole device allocation (256-byte aligned by `cuMemAlloc`). Guarded loads stay
/// scalar. The returned values are the loads (`Let`) and the stored values (`Store`) so
/// accessed.
pub fn vector_accesses(k: &Kernel, loops: &[(Var, u64)], body: &[Stmt]) -> Vec<crate::kernel::Val> {
    let Some(&(inner, extent)) = loops.last() else {
        return Vec::new();
    };
    if extent % 4 != 0 || loops.iter().map(|&(_, e)| e).product::<u64>() < 4 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in body {
        match s {
            Stmt::Let(
                v,
                KOp::Load {
                    buf,
                    index,
                    guard: None,
                },
            ) if vec_aligned(k, inner, *buf, index) => out.push(*v),
            Stmt::Store { buf, index, value } if vec_aligned(k, inner, *buf, index) => {
                out.push(*value)
            }
            Stmt::Let(..) | Stmt::Store { .. } => {}
            _ => return Vec::new(),
        }
    }
    out
}

/// `(m, k)` such that `x / d == (x * m) >> k` for every `0 <= x < 2^31` (`d` in
/// `3..2^31`, not a power of two): `k = 32 + ceil(log2 d)`, `m = ceil(2^k / d)` (below 2^34,
/// so `x * m` fits 64 bits; the rounding error `m d - 2^k < d` keeps `x (m d - 2^k) < 2^k`).
/// PTX `div.u64`/`div.u32` by a constant is not strength-reduced by ptxas (it expands a
/// division routine), so the emitter multiplies by this instead.
pub fn magic(d: u64) -> (u64, u32) {
    let l = 64 - (d - 1).leading_zeros();
    let k = 32 + l;
    let m = (1u128 << k).div_ceil(u128::from(d));
    (m as u64, k)
}

/// Whether an access of `buf` at `ix` is an f32 one that is contiguous in `inner` and 16-byte
/// aligned when `inner` is a multiple of 4 (see [`vector_accesses`]).
fn vec_aligned(k: &Kernel, inner: Var, buf: crate::kernel::Buf, ix: &Ix) -> bool {
    if k.params.get(buf.0 as usize).map(|p| p.dtype) != Some(DType::F32) {
        return false;
    }
    let mut unit = false;
    for (a, c) in &ix.terms {
        match a {
            Atom::Var(v) if *v == inner => {
                if *c != 1 || unit {
                    return false;
                }
                unit = true;
            }
            Atom::Var(v) => {
                let derived = k.defs.get(v.0 as usize).and_then(|d| d.as_ref());
                if c % 4 != 0 || derived.is_some_and(|d| d.mentions(inner, &k.defs)) {
                    return false;
                }
            }
            Atom::Div(e, _) | Atom::Mod(e, _) => {
                if c % 4 != 0 || e.mentions(inner, &k.defs) {
                    return false;
                }
            }
        }
    }
    unit && ix.c % 4 == 0
}

/// The loops' variables at flat index `t`, innermost fastest (the first loop takes the rest).
fn split_flat(loops: &[(Var, u64)], t: u64) -> Vec<(Var, u64)> {
    let mut rest = t;
    let mut out: Vec<(Var, u64)> = loops
        .iter()
        .enumerate()
        .rev()
        .map(|(n, &(v, e))| {
            if n == 0 {
                return (v, rest);
            }
            let x = rest % e.max(1);
            rest /= e.max(1);
            (v, x)
        })
        .collect();
    out.reverse();
    out
}

/// Reductions at least this long may get a block per output.
pub const BLOCK_REDUCE_MIN: u64 = 32;
/// ... when they have at most this many outputs (or reduce 256 elements or more each).
pub const BLOCK_REDUCE_MAX_OUTPUTS: u64 = 4096;

/// Threads per block of a block reduction over `reduced` elements: a single warp up to 64 (no
/// shared memory, no barrier), 128 up to 1024, else 256.
pub fn reduce_threads(reduced: u64) -> u32 {
    if reduced <= 64 {
        32
    } else if reduced <= 1024 {
        128
    } else {
        256
    }
}

/// Blocks per output of a split block reduction ([`Mapping::BlockReduce`]): 1 unless the
/// outputs are few (under 512) and the one reduction (one accumulator, no store before it)
/// long enough to give each thread 16+ elements in several blocks; at most [`MAX_SPLIT`], and
/// about [`SPLIT_TARGET_BLOCKS`] blocks in all. (The scheduler already cuts a full reduction
/// into a first kernel of 64 partial sums, which this then splits further.)
pub fn reduce_split(plan: &BlockPlan<'_>, threads: u32) -> u32 {
    let reds: Vec<&RedLoop<'_>> = plan.loops.iter().flatten().collect();
    if threads < 64 || plan.outputs >= 512 || reds.len() != 1 || reds[0].combine.len() != 1 {
        return 1;
    }
    // Every block runs the statements before the loop: no store among them.
    let first = plan.loops.iter().position(Option::is_some).unwrap_or(0);
    if plan.body[..first]
        .iter()
        .any(|s| matches!(s, Stmt::Store { .. }))
    {
        return 1;
    }
    // About SPLIT_TARGET_BLOCKS blocks in all (an H100 has 132 SMs of up to 8 such blocks).
    let per = u64::from(threads) * 16;
    let cap = (SPLIT_TARGET_BLOCKS / plan.outputs.max(1)).max(1);
    (reds[0].total / per).clamp(1, u64::from(MAX_SPLIT).min(cap)) as u32
}

/// At most this many blocks share one output of a block reduction.
pub const MAX_SPLIT: u32 = 1024;
/// A split reduction aims at about this many blocks.
pub const SPLIT_TARGET_BLOCKS: u64 = 1024;

/// Warp shuffle offsets of [`block_combine`]'s trees, in order.
pub const SHUFFLE_OFFSETS: [u32; 5] = [16, 8, 4, 2, 1];

/// The value a block reduction's tree leaves in thread 0, from the threads' partial values
/// (`partials[t]` of thread `t`; the length is the block size, a multiple of 32), exactly in
/// the order of the PTX: within each warp `v[l] = op(v[l], v[l + off])` for `off` in
/// [`SHUFFLE_OFFSETS`] (a lane past the warp reads its own value, as `shfl.sync.down` does);
/// with more than one warp, lane 0 of each warp writes shared memory, and warp 0 runs the same
/// tree over those values (the identity in lanes past the number of warps).
pub fn block_combine<T: Copy>(partials: &[T], identity: T, op: impl Fn(T, T) -> T) -> T {
    let warp_tree = |lanes: &mut [T; 32]| {
        for off in SHUFFLE_OFFSETS {
            let before = *lanes;
            for l in 0..32 {
                let other = before.get(l + off as usize).copied().unwrap_or(before[l]);
                lanes[l] = op(before[l], other);
            }
        }
        lanes[0]
    };
    let warps: Vec<T> = partials
        .chunks(32)
        .map(|w| {
            let mut lanes = [identity; 32];
            lanes[..w.len()].copy_from_slice(w);
            warp_tree(&mut lanes)
        })
        .collect();
    if warps.len() == 1 {
        return warps[0];
    }
    let mut lanes = [identity; 32];
    lanes[..warps.len()].copy_from_slice(&warps);
    warp_tree(&mut lanes)
}

/// A reduction loop nest of a [`BlockPlan`]: its collapsed loops, their flat extent, the
/// statements each flat index runs, and the accumulators combined across the block after it.
#[derive(Clone, Debug)]
pub struct RedLoop<'a> {
    pub nest: Vec<(Var, u64)>,
    pub total: u64,
    pub inner: &'a [Stmt],
    pub combine: Vec<crate::kernel::Acc>,
}

/// A kernel seen as a block-per-output reduction: the outer (parallel, collapsed) loops, the
/// per-output statements, and for each of them that is a loop, how it is split.
#[derive(Clone, Debug)]
pub struct BlockPlan<'a> {
    pub outer: Vec<(Var, u64)>,
    pub outputs: u64,
    pub body: &'a [Stmt],
    pub loops: Vec<Option<RedLoop<'a>>>,
    /// The longest reduction's flat extent.
    pub reduced: u64,
}

/// The values a statement (or an op) reads.
fn op_uses(op: &KOp) -> Vec<crate::kernel::Val> {
    match op {
        KOp::Const(_) | KOp::InRange { .. } | KOp::ReadAcc(_) => Vec::new(),
        KOp::Load { guard, .. } => guard.iter().copied().collect(),
        KOp::Unary(_, a) | KOp::Cast(_, a) => vec![*a],
        KOp::Binary(_, a, b) | KOp::Compare(_, a, b) | KOp::And(a, b) => vec![*a, *b],
        KOp::Select(c, a, b) => vec![*c, *a, *b],
    }
}

/// Every statement of `stmts`, nested ones included.
fn all_stmts<'a>(stmts: &'a [Stmt], out: &mut Vec<&'a Stmt>) {
    for s in stmts {
        out.push(s);
        if let Stmt::Loop(l) = s {
            all_stmts(&l.body, out);
        }
    }
}

/// `k` as a block-per-output reduction, if it has that shape: below the collapsed parallel
/// loops (or at the top of a kernel without one), statements that are either straight-line
/// (lets, accumulator inits, stores) or loops that fold into accumulators initialised at that
/// level, with no store inside a loop, no value defined in a loop used after it, no read of a
/// combined accumulator inside its loop, no bool accumulator, and no load of a buffer the
/// kernel writes (so every thread may run the straight-line part, and thread 0 alone stores).
pub fn block_plan(k: &Kernel) -> Option<BlockPlan<'_>> {
    let Body::Loops(top) = &k.body else {
        return None;
    };
    let (outer, body): (Vec<(Var, u64)>, &[Stmt]) = match collapse(k) {
        Some((loops, body)) => (loops, body),
        None => (Vec::new(), top.as_slice()),
    };
    let outputs: u64 = outer.iter().map(|&(_, e)| e).product();
    let mut every = Vec::new();
    all_stmts(body, &mut every);
    for s in &every {
        if let Stmt::Let(_, KOp::Load { buf, .. }) = s {
            if k.params.get(buf.0 as usize)?.access != Access::Read {
                return None;
            }
        }
    }
    let mut loops = Vec::new();
    let mut inited: Vec<crate::kernel::Acc> = Vec::new();
    let mut reduced = 0;
    let mut any = false;
    for (i, s) in body.iter().enumerate() {
        match s {
            Stmt::Loop(l) => {
                let mut nest = vec![(l.var, l.extent)];
                let mut inner: &[Stmt] = &l.body;
                while let [Stmt::Loop(n)] = inner {
                    nest.push((n.var, n.extent));
                    inner = &n.body;
                }
                let mut within = Vec::new();
                all_stmts(&l.body, &mut within);
                let mut defined = Vec::new();
                let mut local_init = Vec::new();
                let mut combine: Vec<crate::kernel::Acc> = Vec::new();
                for w in &within {
                    match w {
                        Stmt::Store { .. } => return None,
                        Stmt::Let(v, _) => defined.push(*v),
                        Stmt::AccInit(a) => local_init.push(*a),
                        Stmt::AccUpdate(a, _) if !local_init.contains(a) => {
                            if !inited.contains(a) {
                                return None;
                            }
                            if !combine.contains(a) {
                                combine.push(*a);
                            }
                        }
                        _ => {}
                    }
                }
                for w in &within {
                    if let Stmt::Let(_, KOp::ReadAcc(a)) = w {
                        if combine.contains(a) {
                            return None;
                        }
                    }
                }
                for a in &combine {
                    if k.accs.get(a.0 as usize)?.dtype == DType::Bool {
                        return None;
                    }
                    // Combined once: a later loop folding into it would need another init.
                    inited.retain(|x| x != a);
                }
                if combine.is_empty() {
                    return None;
                }
                // Values defined in the loop are dead after it.
                let mut after = Vec::new();
                all_stmts(&body[i + 1..], &mut after);
                for w in after {
                    let used = match w {
                        Stmt::Let(_, op) => op_uses(op),
                        Stmt::Store { value, .. } => vec![*value],
                        Stmt::AccUpdate(_, v) => vec![*v],
                        _ => Vec::new(),
                    };
                    if used.iter().any(|u| defined.contains(u)) {
                        return None;
                    }
                }
                let total = nest.iter().map(|&(_, e)| e).product();
                reduced = reduced.max(total);
                any = true;
                loops.push(Some(RedLoop {
                    nest,
                    total,
                    inner,
                    combine,
                }));
            }
            Stmt::AccInit(a) => {
                inited.push(*a);
                loops.push(None);
            }
            Stmt::AccUpdate(..) => return None,
            Stmt::Let(..) | Stmt::Store { .. } => loops.push(None),
        }
    }
    if !any {
        return None;
    }
    Some(BlockPlan {
        outer,
        outputs,
        body,
        loops,
        reduced,
    })
}

/// The collapsed loops (variable, extent; outermost first) and the statements each thread runs
/// for one flat index.
pub type Nest<'a> = (Vec<(Var, u64)>, &'a [Stmt]);

/// The collapsed perfect nest under a parallel outermost loop, and the statements below it.
/// `None` when the kernel has no parallel loop.
pub fn collapse(k: &Kernel) -> Option<Nest<'_>> {
    let l = k.parallel_loop()?;
    let mut loops = vec![(l.var, l.extent)];
    let mut body: &[Stmt] = &l.body;
    while let [Stmt::Loop(inner)] = body {
        loops.push((inner.var, inner.extent));
        body = &inner.body;
    }
    Some((loops, body))
}

/// A kernel printed as PTX, with its launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxKernel {
    /// The `.entry` name.
    pub entry: String,
    pub target: Target,
    pub text: String,
    pub mapping: Mapping,
    /// `(grid, block)` to launch with.
    pub launch: (u32, u32),
    /// Bytes of dynamic shared memory the launch must request (the module's `kiln_smem`);
    /// 0 for kernels without shared memory.
    pub shared_bytes: u32,
}

/// Why a kernel could not be emitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The kernel uses something the PTX emitter does not lower yet.
    #[error("kernel {kernel}: no PTX lowering yet for {what}")]
    Unsupported { kernel: String, what: String },
    /// The kernel is malformed (a value of the wrong type, say): a bug upstream.
    #[error("kernel {kernel}: {what}")]
    Invalid { kernel: String, what: String },
}

/// The `.entry` name of a kernel: `kiln_` and its name with anything but `[A-Za-z0-9_]`
/// replaced by `_`.
pub fn entry_name(k: &Kernel) -> String {
    let clean: String = k
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kiln_{clean}")
}

/// Choices of [`emit_with`] that change numerics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// f32 contractions on the tensor cores with TF32 inputs (`mma.sync` m16n8k8): operands
    /// rounded to a 10-bit mantissa (relative error up to 2^-11 per operand, as
    /// `torch.backends.cuda.matmul.allow_tf32 = True`), products and sums in f32. Off by
    /// default: FP32 FMAs, as PyTorch's default for matmul and its default FP32 convolutions
    /// on Hopper with `allow_tf32` for cuDNN aside. `KILN_ALLOW_TF32=1` turns it on for
    /// [`emit`].
    pub allow_tf32: bool,
}

impl Options {
    /// The options [`emit`] uses: the defaults, with `KILN_ALLOW_TF32=1` honoured.
    pub fn from_env() -> Options {
        Options {
            allow_tf32: std::env::var("KILN_ALLOW_TF32").is_ok_and(|v| v == "1"),
        }
    }
}

/// Emits `k` for `target` with [`Options::from_env`].
pub fn emit(k: &Kernel, target: Target) -> Result<PtxKernel, EmitError> {
    emit_with(k, target, Options::from_env())
}

/// Emits `k` for `target`.
pub fn emit_with(k: &Kernel, target: Target, opts: Options) -> Result<PtxKernel, EmitError> {
    if let Some(mut g) = super::contract::gemm(k)? {
        let loops = super::contract::as_loops(k)?.expect("a contraction");
        let entry = entry_name(k);
        g.tf32 = opts.allow_tf32 && g.dtype == DType::F32;
        let mut mapping = Mapping::of(k);
        if let Mapping::Gemm { tf32, .. } = &mut mapping {
            *tf32 = g.tf32;
        }
        let mut em = Em::new(&loops);
        em.gemm(&g, &entry)?;
        em.label("$L_exit");
        em.line("ret;");
        let shared_bytes = mapping.shared_bytes();
        let text = em.finish(target, &entry, &mapping, shared_bytes);
        return Ok(PtxKernel {
            entry,
            target,
            text,
            launch: mapping.launch(MAX_GRID),
            mapping,
            shared_bytes,
        });
    }
    if let Some(loops) = super::contract::as_loops(k)? {
        return emit_with(&loops, target, opts);
    }
    let Body::Loops(stmts) = &k.body else {
        return Err(EmitError::Invalid {
            kernel: k.name.clone(),
            what: "a contraction left after lowering to loops".into(),
        });
    };
    let entry = entry_name(k);
    let mapping = Mapping::of(k);
    let mut em = Em::new(k);
    if let (Mapping::BlockReduce { threads, split, .. }, Some(plan)) = (&mapping, block_plan(k)) {
        if *split > 1 {
            em.split_reduce(&plan, *threads, *split, &entry)?;
        } else {
            em.block_reduce(&plan, *threads)?;
        }
    } else {
        em.plain(k, stmts)?;
    }
    em.label("$L_exit");
    em.line("ret;");
    let shared_bytes = mapping.shared_bytes();
    let text = em.finish(target, &entry, &mapping, shared_bytes);
    let launch = mapping.launch(MAX_GRID);
    Ok(PtxKernel {
        entry,
        target,
        text,
        mapping,
        launch,
        shared_bytes,
    })
}

impl Em<'_> {
    /// The single-thread and grid-stride mappings.
    fn plain(&mut self, k: &Kernel, stmts: &[Stmt]) -> Result<(), EmitError> {
        let em = self;
        match collapse(k) {
            None => {
                em.line("mov.u32 %r0, %ctaid.x;");
                em.line("mov.u32 %r1, %tid.x;");
                em.line("or.b32 %r0, %r0, %r1;");
                em.line("setp.ne.u32 %q0, %r0, 0;");
                em.line("@%q0 bra $L_exit;");
                em.nr = 2;
                em.nq = 1;
                em.stmts(stmts)?;
            }
            Some((loops, body)) if !vector_accesses(k, &loops, body).is_empty() => {
                em.vector4(&loops, body)?;
            }
            Some((loops, body)) => {
                let total: u64 = loops.iter().map(|&(_, e)| e).product();
                em.nr = 4;
                em.nq = 1;
                em.line("mov.u32 %r0, %ctaid.x;");
                em.line("mov.u32 %r1, %ntid.x;");
                em.line("mov.u32 %r2, %tid.x;");
                em.line("mov.u32 %r3, %nctaid.x;");
                em.line("mul.wide.u32 %flat, %r0, %r1;");
                em.line("cvt.u64.u32 %step, %r2;");
                em.line("add.s64 %flat, %flat, %step;");
                em.line("mul.wide.u32 %step, %r3, %r1;");
                em.label("$L_grid");
                em.line(&format!("setp.ge.u64 %q0, %flat, {total};"));
                em.line("@%q0 bra $L_exit;");
                // Split the flat index, innermost fastest.
                em.line("mov.u64 %rest, %flat;");
                for (n, &(v, e)) in loops.iter().enumerate().rev() {
                    if n == 0 {
                        em.line(&format!("mov.u64 %i{}, %rest;", v.0));
                    } else {
                        let iv = format!("%i{}", v.0);
                        em.udiv("rem", &iv, "%rest", e, total);
                        em.udiv("div", "%rest", "%rest", e, total);
                    }
                }
                em.stmts(body)?;
                em.line("add.s64 %flat, %flat, %step;");
                em.line("bra.uni $L_grid;");
            }
        }
        Ok(())
    }

    /// The grid-stride loop over groups of 4 consecutive innermost iterations: the group's
    /// first index is split into the variables, then the per-element statements are printed
    /// once per lane (lane `l`: the innermost variable `+ l`, values in their own registers),
    /// the accesses of [`vector_accesses`] merged into one `v4` load (in lane 0) or store (in
    /// lane 3).
    fn vector4(&mut self, loops: &[(Var, u64)], body: &[Stmt]) -> Result<(), EmitError> {
        let total: u64 = loops.iter().map(|&(_, e)| e).product();
        let inner = loops.last().expect("a loop").0;
        self.vec_inner = Some(inner);
        self.lanes = 4;
        self.nr = 4;
        self.nq = 1;
        self.line("mov.u32 %r0, %ctaid.x;");
        self.line("mov.u32 %r1, %ntid.x;");
        self.line("mov.u32 %r2, %tid.x;");
        self.line("mov.u32 %r3, %nctaid.x;");
        self.line("mul.wide.u32 %flat, %r0, %r1;");
        self.line("cvt.u64.u32 %step, %r2;");
        self.line("add.s64 %flat, %flat, %step;");
        self.line("mul.wide.u32 %step, %r3, %r1;");
        self.label("$L_grid");
        self.line(&format!("setp.ge.u64 %q0, %flat, {};", total / 4));
        self.line("@%q0 bra $L_exit;");
        self.line("shl.b64 %rf, %flat, 2;");
        self.split_into("%rf", loops);
        self.line(&format!("mov.u64 %tid64, %i{};", inner.0));
        for lane in 0..4 {
            self.lane = lane;
            self.line(&format!("add.u64 %i{}, %tid64, {lane};", inner.0));
            self.stmts(body)?;
        }
        self.lane = 0;
        self.line("add.s64 %flat, %flat, %step;");
        self.line("bra.uni $L_grid;");
        Ok(())
    }

    /// Splits the u64 in `src` into the variables of `loops` (innermost fastest; the first
    /// takes the rest), clobbering `%rest`.
    fn split_into(&mut self, src: &str, loops: &[(Var, u64)]) {
        // `src` is below the product of the extents.
        let total: u64 = loops.iter().map(|&(_, e)| e).product();
        self.line(&format!("mov.u64 %rest, {src};"));
        for (n, &(v, e)) in loops.iter().enumerate().rev() {
            if n == 0 {
                self.line(&format!("mov.u64 %i{}, %rest;", v.0));
            } else {
                let iv = format!("%i{}", v.0);
                self.udiv("rem", &iv, "%rest", e, total);
                self.udiv("div", "%rest", "%rest", e, total);
            }
        }
    }

    /// The block-per-output mapping (see [`Mapping::BlockReduce`]).
    fn block_reduce(&mut self, plan: &BlockPlan<'_>, threads: u32) -> Result<(), EmitError> {
        // %r0 block, %r1 blocks, %r2 thread; %qt: thread 0.
        self.nr = 3;
        self.line("mov.u32 %r0, %ctaid.x;");
        self.line("mov.u32 %r1, %nctaid.x;");
        self.line("mov.u32 %r2, %tid.x;");
        self.line("cvt.u64.u32 %flat, %r0;");
        self.line("cvt.u64.u32 %step, %r1;");
        self.line("cvt.u64.u32 %tid64, %r2;");
        self.line("setp.eq.u32 %qt, %r2, 0;");
        if threads > 32 {
            self.line("mov.u64 %sm, kiln_smem;");
        }
        self.label("$L_grid");
        let q = self.q();
        self.line(&format!("setp.ge.u64 {q}, %flat, {};", plan.outputs));
        self.line(&format!("@{q} bra $L_exit;"));
        if !plan.outer.is_empty() {
            self.split_into("%flat", &plan.outer);
        }
        self.store_pred = Some("%qt".into());
        for (s, red) in plan.body.iter().zip(&plan.loops) {
            let Some(red) = red else {
                self.stmt(s)?;
                continue;
            };
            self.store_pred = None;
            self.red_loop(red, "mov.u64 %rf, %tid64;", u64::from(threads))?;
            for &a in &red.combine {
                self.combine(a, threads)?;
            }
            self.store_pred = Some("%qt".into());
        }
        self.store_pred = None;
        self.line("add.u64 %flat, %flat, %step;");
        self.line("bra.uni $L_grid;");
        Ok(())
    }

    /// A block's threads striding over one reduction loop nest: `%rf` starts where `init`
    /// puts it and advances by `stride` while below the nest's flat extent, split into the
    /// nest's variables for each visit of the body. Returns the loop's label number (the
    /// caller's own labels after it reuse it).
    fn red_loop(&mut self, red: &RedLoop<'_>, init: &str, stride: u64) -> Result<u32, EmitError> {
        let n = self.labels;
        self.labels += 1;
        self.line(init);
        self.label(&format!("$L_red{n}"));
        let q = self.q();
        self.line(&format!("setp.ge.u64 {q}, %rf, {};", red.total));
        self.line(&format!("@{q} bra $L_redend{n};"));
        self.split_into("%rf", &red.nest);
        self.stmts(red.inner)?;
        self.line(&format!("add.u64 %rf, %rf, {stride};"));
        self.line(&format!("bra.uni $L_red{n};"));
        self.label(&format!("$L_redend{n}"));
        Ok(n)
    }

    /// The split block reduction (see [`Mapping::BlockReduce`]).
    fn split_reduce(
        &mut self,
        plan: &BlockPlan<'_>,
        threads: u32,
        split: u32,
        entry: &str,
    ) -> Result<(), EmitError> {
        let slots = plan.outputs * u64::from(split);
        let scratch = format!("{entry}_scratch");
        let count = format!("{entry}_count");
        self.globals
            .push(format!(".global .align 8 .b8 {scratch}[{}];", slots * 8));
        self.globals
            .push(format!(".global .align 4 .u32 {count}[{}];", plan.outputs));
        self.nr = 3;
        self.line("mov.u32 %r0, %ctaid.x;");
        self.line("mov.u32 %r2, %tid.x;");
        self.line("cvt.u64.u32 %tid64, %r2;");
        self.line("setp.eq.u32 %qt, %r2, 0;");
        self.line("mov.u64 %sm, kiln_smem;");
        // Output and part of this block.
        self.line("cvt.u64.u32 %step, %r0;");
        let blocks = plan.outputs * u64::from(split);
        self.udiv("div", "%flat", "%step", u64::from(split), blocks);
        self.udiv("rem", "%step", "%step", u64::from(split), blocks);
        let q = self.q();
        self.line(&format!("setp.ge.u64 {q}, %flat, {};", plan.outputs));
        self.line(&format!("@{q} bra $L_exit;"));
        if !plan.outer.is_empty() {
            self.split_into("%flat", &plan.outer);
        }
        self.store_pred = Some("%qt".into());
        let stride = u64::from(split) * u64::from(threads);
        for (s, red) in plan.body.iter().zip(&plan.loops) {
            let Some(red) = red else {
                self.stmt(s)?;
                continue;
            };
            let a = red.combine[0];
            let decl = self.acc(a)?;
            let (d, x) = (decl.dtype, acc_reg(decl.dtype, a.0));
            let mt = mem_ty(d);
            self.store_pred = None;
            let init = format!("mad.lo.u64 %rf, %step, {threads}, %tid64;");
            let n = self.red_loop(red, &init, stride)?;
            self.combine(a, threads)?;
            // Publish the block's total; the last block of the output goes on.
            let (slot, cnt, old, flag) = (self.t(), self.t(), self.r(), self.r());
            let last = self.q();
            self.line(&format!("mov.u64 {slot}, {scratch};"));
            self.line(&format!("mad.lo.u64 {cnt}, %flat, {split}, %step;"));
            self.line(&format!("mad.lo.u64 {slot}, {cnt}, 8, {slot};"));
            self.line(&format!("mov.u64 {cnt}, {count};"));
            self.line(&format!("mad.lo.u64 {cnt}, %flat, 4, {cnt};"));
            self.line(&format!("@%qt st.global.cg.{mt} [{slot}], {x};"));
            self.line("@%qt membar.gl;");
            self.line(&format!("mov.u32 {old}, 0;"));
            self.line(&format!("@%qt atom.global.add.u32 {old}, [{cnt}], 1;"));
            self.line(&format!("setp.eq.u32 {last}, {old}, {};", split - 1));
            self.line(&format!("selp.u32 {flag}, 1, 0, {last};"));
            let flag_at = 8 * (threads / 32);
            self.line(&format!("@%qt st.shared.u32 [%sm+{flag_at}], {flag};"));
            self.line("bar.sync 0;");
            self.line(&format!("ld.shared.u32 {flag}, [%sm+{flag_at}];"));
            self.line(&format!("setp.eq.u32 {last}, {flag}, 0;"));
            self.line(&format!("@{last} bra $L_exit;"));
            self.line("membar.gl;");
            // Fold the partials: block-strided, then the tree.
            let (p, part) = (self.t(), self.tmp_of(d));
            self.constant(&x, Scalar::identity(decl.op, d));
            self.line(&format!("mov.u64 {p}, %tid64;"));
            self.label(&format!("$L_part{n}"));
            let q = self.q();
            self.line(&format!("setp.ge.u64 {q}, {p}, {split};"));
            self.line(&format!("@{q} bra $L_partend{n};"));
            self.line(&format!("mov.u64 {slot}, {scratch};"));
            self.line(&format!("mad.lo.u64 {cnt}, %flat, {split}, {p};"));
            self.line(&format!("mad.lo.u64 {slot}, {cnt}, 8, {slot};"));
            self.line(&format!("ld.global.cg.{mt} {part}, [{slot}];"));
            let op = match decl.op {
                ReduceOp::Sum => BinaryOp::Add,
                ReduceOp::Max => BinaryOp::Max,
            };
            self.binary(op, d, &x, &x, &part)?;
            self.line(&format!("add.u64 {p}, {p}, {threads};"));
            self.line(&format!("bra.uni $L_part{n};"));
            self.label(&format!("$L_partend{n}"));
            self.combine(a, threads)?;
            // Ready for the next launch.
            self.line(&format!("mov.u64 {cnt}, {count};"));
            self.line(&format!("mad.lo.u64 {cnt}, %flat, 4, {cnt};"));
            self.line(&format!("@%qt st.global.u32 [{cnt}], 0;"));
            self.store_pred = Some("%qt".into());
        }
        self.store_pred = None;
        Ok(())
    }

    /// A scratch register of type `d` (not bool).
    fn tmp_of(&mut self, d: DType) -> String {
        match d {
            DType::F32 | DType::F64 => self.tmp_float(d),
            _ => self.t(),
        }
    }

    /// Sets the contraction variables an operand's index and guards mention from the GEMM
    /// axes `at` (`[g, i, j, r]` registers; `None`: the operand does not depend on it).
    fn gemm_vars(
        &mut self,
        g: &super::contract::Gemm,
        exprs: &[&Ix],
        at: [Option<&str>; 4],
    ) -> Result<(), EmitError> {
        let mut used: Vec<Var> = Vec::new();
        for e in exprs {
            e.for_each_var(&mut |v| {
                if !used.contains(&v) {
                    used.push(v)
                }
            });
        }
        used.sort();
        for v in used {
            let iv = format!("%i{}", v.0);
            self.line(&format!("mov.u64 {iv}, 0;"));
            // Axis values fit in 32 bits (checked by `gemm`'s caller), so the divisions are
            // 32-bit ones, far cheaper than 64-bit ones on the GPU.
            for p in &g.parts[v.0 as usize] {
                let Some(src) = at[p.axis as usize] else {
                    continue;
                };
                let t = self.t();
                let lim = (1 << 31) - 1;
                self.udiv("div", &t, src, p.div, lim);
                let extent = [g.batch, g.m, g.n, g.k][p.axis as usize];
                if p.modulo < extent.div_ceil(p.div.max(1)) {
                    self.udiv("rem", &t, &t, p.modulo, lim);
                }
                self.line(&format!("mad.lo.u64 {iv}, {t}, {}, {iv};", p.mul));
            }
        }
        Ok(())
    }

    /// Loads one element of a GEMM operand tile into register `v` (0 outside `i < lim_i`,
    /// `r < K` and the operand's guards) and stores it to shared address `smem`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_tile_load(
        &mut self,
        g: &super::contract::Gemm,
        op: &super::contract::Operand,
        v: &str,
        at: [Option<&str>; 4],
        (row, lim): (&str, u64),
        gr: &str,
        smem: &str,
    ) -> Result<(), EmitError> {
        let d = g.dtype;
        let mut exprs = vec![&op.index];
        exprs.extend(op.guards.iter().map(|(e, _, _)| e));
        self.gemm_vars(g, &exprs, at)?;
        let (ok, p) = (self.q(), self.q());
        self.line(&format!("setp.lt.u64 {ok}, {row}, {lim};"));
        self.line(&format!("setp.lt.and.u64 {ok}, {gr}, {}, {ok};", g.k));
        for (e, lo, hi) in &op.guards {
            let i = self.ix(e)?;
            self.line(&format!("setp.ge.s64 {p}, {i}, {lo};"));
            self.line(&format!("setp.lt.and.s64 {p}, {i}, {hi}, {p};"));
            self.line(&format!("and.pred {ok}, {ok}, {p};"));
        }
        let a = self.addr(op.buf, &op.index)?;
        self.constant(v, Scalar::from_f64(d, 0.0));
        self.line(&format!("@{ok} ld.global.nc.{} {v}, [{a}];", mem_ty(d)));
        self.line(&format!("st.shared.{} [{smem}], {v};", mem_ty(d)));
        Ok(())
    }

    /// The tiled GEMM (see [`super::contract::emulate`], which runs the same steps on the CPU).
    fn gemm(&mut self, g: &super::contract::Gemm, entry: &str) -> Result<(), EmitError> {
        use super::contract::{AS_STRIDE, BK, BM, BN, GEMM_THREADS, TM, TN};
        let d = g.dtype;
        let (t, size) = (ty(d), d.size_of() as u64);
        let (mt, nt) = (g.m.div_ceil(BM), g.n.div_ceil(BN));
        let threads = u64::from(GEMM_THREADS);
        let acc = |x: u64, y: u64| format!("%c{}", x * TN + y);
        let (av, bv) = if d == DType::F32 {
            ("%ga", "%gb")
        } else {
            ("%gda", "%gdb")
        };
        self.extra.push(format!(".reg .{t} %c<{}>;", TM * TN));
        self.extra
            .push(format!(".reg .{t} {av}<{TM}>, {bv}<{TN}>, %gv;"));
        self.extra
            .push(".reg .u64 %gg, %gi0, %gj0, %gk0, %gi, %gj, %gr, %ge, %gs, %gsa, %gsb;".into());
        self.extra
            .push(".reg .u64 %gt, %gp, %gkend, %grow, %gcol;".into());
        if g.tf32 {
            self.extra.push(".reg .b32 %xa<8>, %xb<4>;".into());
            self.extra.push(".reg .f32 %xf;".into());
        }
        self.nr = 3;
        self.line("mov.u32 %r0, %ctaid.x;");
        self.line("mov.u32 %r1, %nctaid.x;");
        self.line("mov.u32 %r2, %tid.x;");
        self.line("cvt.u64.u32 %flat, %r0;");
        self.line("cvt.u64.u32 %step, %r1;");
        self.line("cvt.u64.u32 %tid64, %r2;");
        self.line("setp.eq.u32 %qt, %r2, 0;");
        self.line("mov.u64 %sm, kiln_smem;");
        self.gemm_thread_bases(g.tf32, size);
        self.label("$L_grid");
        let q = self.q();
        self.line(&format!("setp.ge.u64 {q}, %flat, {};", g.items()));
        self.line(&format!("@{q} bra $L_exit;"));
        // Work item: tile and split-K part, and the part's chunk of the contracted index.
        let (ks, kc) = (g.ksplit, g.kchunk());
        let items = g.items();
        self.udiv("div", "%gt", "%flat", ks, items);
        self.udiv("rem", "%gp", "%flat", ks, items);
        self.line(&format!("mul.lo.u64 %gk0, %gp, {kc};"));
        self.line(&format!("add.u64 %gkend, %gk0, {kc};"));
        self.line(&format!("min.u64 %gkend, %gkend, {};", g.k));
        let tiles = g.tiles();
        self.udiv("div", "%gg", "%gt", mt * nt, tiles);
        self.udiv("div", "%gi0", "%gt", nt, tiles);
        self.udiv("rem", "%gi0", "%gi0", mt, tiles);
        self.line(&format!("mul.lo.u64 %gi0, %gi0, {BM};"));
        self.udiv("rem", "%gj0", "%gt", nt, tiles);
        self.line(&format!("mul.lo.u64 %gj0, %gj0, {BN};"));
        for x in 0..TM {
            for y in 0..TN {
                self.constant(&acc(x, y), Scalar::from_f64(d, 0.0));
            }
        }
        let n = self.labels;
        self.labels += 1;
        self.label(&format!("$L_k{n}"));
        let q = self.q();
        self.line(&format!("setp.ge.u64 {q}, %gk0, %gkend;"));
        self.line(&format!("@{q} bra $L_kend{n};"));
        // The lhs tile: e = tid + s * threads, r = e % BK, i = e / BK -> As[r][i].
        for s in 0..(BM * BK / threads) {
            self.line(&format!("add.u64 %ge, %tid64, {};", s * threads));
            self.udiv("rem", "%gs", "%ge", BK, 1 << 30);
            self.line("add.u64 %gr, %gk0, %gs;");
            self.line(&format!("mul.lo.u64 %gs, %gs, {AS_STRIDE};"));
            self.udiv("div", "%ge", "%ge", BK, 1 << 30);
            self.line("add.u64 %gi, %gi0, %ge;");
            self.line("add.u64 %gs, %gs, %ge;");
            self.line(&format!("mad.lo.u64 %gs, %gs, {size}, %sm;"));
            self.gemm_tile_load(
                g,
                &g.lhs,
                "%gv",
                [Some("%gg"), Some("%gi"), None, Some("%gr")],
                ("%gi", g.m),
                "%gr",
                "%gs",
            )?;
        }
        // The rhs tile: j = e % BN, r = e / BN -> Bs[r][j].
        for s in 0..(BN * BK / threads) {
            self.line(&format!("add.u64 %ge, %tid64, {};", s * threads));
            self.udiv("rem", "%gs", "%ge", BN, 1 << 30);
            self.line("add.u64 %gj, %gj0, %gs;");
            self.udiv("div", "%ge", "%ge", BN, 1 << 30);
            self.line("add.u64 %gr, %gk0, %ge;");
            self.line(&format!("mad.lo.u64 %gs, %ge, {BN}, %gs;"));
            self.line(&format!("mad.lo.u64 %gs, %gs, {size}, %sm;"));
            self.line(&format!("add.u64 %gs, %gs, {};", BK * AS_STRIDE * size));
            self.gemm_tile_load(
                g,
                &g.rhs,
                "%gv",
                [Some("%gg"), None, Some("%gj"), Some("%gr")],
                ("%gj", g.n),
                "%gr",
                "%gs",
            )?;
        }
        self.line("bar.sync 0;");
        if g.tf32 {
            self.mma_steps();
        } else {
            // BK steps of the micro-tile: vector loads of the fragments, one fma per element.
            for kk in 0..BK {
                let (oa, ob) = (kk * AS_STRIDE * size, kk * BN * size);
                self.frag_load(av, TM, "%gsa", oa, d);
                self.frag_load(bv, TN, "%gsb", ob, d);
                for x in 0..TM {
                    for y in 0..TN {
                        let c = acc(x, y);
                        self.line(&format!("fma.rn.{t} {c}, {av}{x}, {bv}{y}, {c};"));
                    }
                }
            }
        }
        self.line("bar.sync 0;");
        self.line(&format!("add.u64 %gk0, %gk0, {BK};"));
        self.line(&format!("bra.uni $L_k{n};"));
        self.label(&format!("$L_kend{n}"));
        if ks > 1 {
            self.split_k_sum(g, entry, n)?;
        }
        // Stores, guarded by the matrix edges: register n holds element acc_base + acc_off(n).
        for x in 0..TM {
            for y in 0..TN {
                let (dr, dc) = super::contract::acc_off(x * TN + y, g.tf32);
                self.line("add.u64 %gi, %gi0, %grow;");
                self.line(&format!("add.u64 %gi, %gi, {dr};"));
                self.line("add.u64 %gj, %gj0, %gcol;");
                self.line(&format!("add.u64 %gj, %gj, {dc};"));
                self.gemm_vars(
                    g,
                    &[&g.out.1],
                    [Some("%gg"), Some("%gi"), Some("%gj"), None],
                )?;
                let ok = self.q();
                self.line(&format!("setp.lt.u64 {ok}, %gi, {};", g.m));
                self.line(&format!("setp.lt.and.u64 {ok}, %gj, {}, {ok};", g.n));
                let a = self.addr(g.out.0, &g.out.1)?;
                self.line(&format!(
                    "@{ok} st.global.{} [{a}], {};",
                    mem_ty(d),
                    acc(x, y)
                ));
            }
        }
        self.label(&format!("$L_next{n}"));
        self.line("add.u64 %flat, %flat, %step;");
        self.line("bra.uni $L_grid;");
        Ok(())
    }

    /// The thread's first accumulator element in the tile (`%grow`, `%gcol`: see
    /// [`super::contract::acc_base`]) and its shared fragment addresses (`%gsa`, `%gsb`): FP32,
    /// its `TM` rows of `As` and `TN` columns of `Bs`; TF32, the `mma` operand fragments'
    /// elements `As[tig][wm*32 + g]` and `Bs[tig][wn*16 + g]` (`g = lane / 4`,
    /// `tig = lane % 4`), other fragment elements at constant offsets.
    fn gemm_thread_bases(&mut self, tf32: bool, size: u64) {
        use super::contract::{AS_STRIDE, BK, BN, TM, TN};
        let bs = BK * AS_STRIDE * size;
        if tf32 {
            let (lane, warp, gq, tig, t) = (self.t(), self.t(), self.t(), self.t(), self.t());
            self.line(&format!("and.b64 {lane}, %tid64, 31;"));
            self.line(&format!("shr.u64 {warp}, %tid64, 5;"));
            self.line(&format!("shr.u64 {gq}, {lane}, 2;"));
            self.line(&format!("and.b64 {tig}, {lane}, 3;"));
            // %grow = (warp / 4) * 32 + g, %gcol = (warp % 4) * 16 + 2 tig.
            self.line(&format!("shr.u64 {t}, {warp}, 2;"));
            self.line(&format!("mad.lo.u64 %grow, {t}, 32, {gq};"));
            self.line(&format!("and.b64 {t}, {warp}, 3;"));
            self.line(&format!("shl.b64 %gcol, {tig}, 1;"));
            self.line(&format!("mad.lo.u64 %gcol, {t}, 16, %gcol;"));
            // %gsa = &As[tig][wm*32 + g], %gsb = &Bs[tig][wn*16 + g].
            self.line(&format!("mad.lo.u64 %gsa, {tig}, {AS_STRIDE}, %grow;"));
            self.line(&format!("mad.lo.u64 %gsa, %gsa, {size}, %sm;"));
            self.line(&format!("mad.lo.u64 %gsb, {tig}, {BN}, {gq};"));
            self.line(&format!("mad.lo.u64 %gsb, {t}, 16, %gsb;"));
            self.line(&format!("mad.lo.u64 %gsb, %gsb, {size}, %sm;"));
            self.line(&format!("add.u64 %gsb, %gsb, {bs};"));
        } else {
            let cols = BN / TN;
            self.udiv("rem", "%gs", "%tid64", cols, 1 << 30);
            self.line(&format!("mul.lo.u64 %gcol, %gs, {TN};"));
            self.line(&format!("mad.lo.u64 %gsb, %gcol, {size}, %sm;"));
            self.line(&format!("add.u64 %gsb, %gsb, {bs};"));
            self.udiv("div", "%gs", "%tid64", cols, 1 << 30);
            self.line(&format!("mul.lo.u64 %grow, %gs, {TM};"));
            self.line(&format!("mad.lo.u64 %gsa, %grow, {size}, %sm;"));
        }
    }

    /// One `BK`-deep step on the tensor cores: per 8-deep slice, each warp loads its `mma`
    /// fragments from the shared tiles (rounding to TF32 with `cvt.rna`) and issues
    /// `mma.sync.m16n8k8` for its 2 x 2 tiles of 16 x 8. Fragment layouts (PTX ISA, "matrix
    /// fragments for mma.m16n8k8", `.tf32`): A `a0 (g, tig) a1 (g+8, tig) a2 (g, tig+4) a3
    /// (g+8, tig+4)` as (row, k); B `b0 (tig, g) b1 (tig+4, g)` as (k, column); C as in
    /// [`super::contract::acc_off`].
    fn mma_steps(&mut self) {
        use super::contract::{AS_STRIDE, BK, BN};
        let size = 4;
        for kb in (0..BK).step_by(8) {
            for mt in 0..2u64 {
                for r in 0..4u64 {
                    let (dm, dk) = ((r % 2) * 8, (r / 2) * 4);
                    let off = ((kb + dk) * AS_STRIDE + mt * 16 + dm) * size;
                    let x = format!("%xa{}", mt * 4 + r);
                    self.line(&format!("ld.shared.f32 %xf, [%gsa+{off}];"));
                    self.line(&format!("cvt.rna.tf32.f32 {x}, %xf;"));
                }
            }
            for nt in 0..2u64 {
                for r in 0..2u64 {
                    let off = ((kb + r * 4) * BN + nt * 8) * size;
                    let x = format!("%xb{}", nt * 2 + r);
                    self.line(&format!("ld.shared.f32 %xf, [%gsb+{off}];"));
                    self.line(&format!("cvt.rna.tf32.f32 {x}, %xf;"));
                }
            }
            for mt in 0..2u64 {
                for nt in 0..2u64 {
                    let c: Vec<String> = (0..4)
                        .map(|r| format!("%c{}", (mt * 2 + nt) * 4 + r))
                        .collect();
                    let c = c.join(", ");
                    let a: Vec<String> = (0..4).map(|r| format!("%xa{}", mt * 4 + r)).collect();
                    self.line(&format!(
                        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {{{c}}}, {{{}}}, \
                         {{%xb{}, %xb{}}}, {{{c}}};",
                        a.join(", "),
                        nt * 2,
                        nt * 2 + 1
                    ));
                }
            }
        }
    }

    /// Split-K: publish this part's partial tile, and in the last block of the tile replace
    /// the accumulators by the sum of all parts' partials in part order (other blocks go on
    /// to `$L_next{n}`).
    fn split_k_sum(
        &mut self,
        g: &super::contract::Gemm,
        entry: &str,
        n: u32,
    ) -> Result<(), EmitError> {
        use super::contract::{AS_STRIDE, BK, BM, BN, TM, TN};
        let d = g.dtype;
        let (t, mt, size) = (ty(d), mem_ty(d), d.size_of() as u64);
        let ks = g.ksplit;
        let tile_elems = BM * BN;
        let scratch = format!("{entry}_scratch");
        let count = format!("{entry}_count");
        self.globals.push(format!(
            ".global .align 16 .b8 {scratch}[{}];",
            g.tiles() * ks * tile_elems * size
        ));
        self.globals
            .push(format!(".global .align 4 .u32 {count}[{}];", g.tiles()));
        let acc = |x: u64, y: u64| format!("%c{}", x * TN + y);
        // This thread's elements in the partial tile of (tile, part): rows ty*TM.., columns
        // tx*TN.., row-major BM x BN.
        let (base, cnt, old, flag, last) = (self.t(), self.t(), self.r(), self.r(), self.q());
        self.line(&format!("mad.lo.u64 {base}, %grow, {BN}, %gcol;"));
        self.line(&format!("mad.lo.u64 %gs, %gt, {ks}, %gp;"));
        self.line(&format!("mad.lo.u64 {base}, %gs, {tile_elems}, {base};"));
        self.line(&format!("mov.u64 %gs, {scratch};"));
        self.line(&format!("mad.lo.u64 {base}, {base}, {size}, %gs;"));
        for x in 0..TM {
            for y in 0..TN {
                let (dr, dc) = super::contract::acc_off(x * TN + y, g.tf32);
                self.line(&format!(
                    "st.global.cg.{mt} [{base}+{}], {};",
                    (dr * BN + dc) * size,
                    acc(x, y)
                ));
            }
        }
        self.line("membar.gl;");
        self.line("bar.sync 0;");
        self.line(&format!("mov.u64 {cnt}, {count};"));
        self.line(&format!("mad.lo.u64 {cnt}, %gt, 4, {cnt};"));
        self.line(&format!("mov.u32 {old}, 0;"));
        self.line(&format!("@%qt atom.global.add.u32 {old}, [{cnt}], 1;"));
        self.line(&format!("setp.eq.u32 {last}, {old}, {};", ks - 1));
        self.line(&format!("selp.u32 {flag}, 1, 0, {last};"));
        let flag_at = (BK * AS_STRIDE + BK * BN) * size;
        self.line(&format!("@%qt st.shared.u32 [%sm+{flag_at}], {flag};"));
        self.line("bar.sync 0;");
        self.line(&format!("ld.shared.u32 {flag}, [%sm+{flag_at}];"));
        self.line(&format!("setp.eq.u32 {last}, {flag}, 0;"));
        self.line(&format!("@{last} bra $L_next{n};"));
        self.line("membar.gl;");
        // The last block: acc = 0 + part 0 + part 1 + ... (fixed order: deterministic).
        let (p, part) = (self.t(), self.tmp_of(d));
        for x in 0..TM {
            for y in 0..TN {
                self.constant(&acc(x, y), Scalar::from_f64(d, 0.0));
            }
        }
        // `base` back to part 0 of this tile.
        self.line(&format!("mul.lo.u64 %gs, %gp, {};", tile_elems * size));
        self.line(&format!("sub.u64 {base}, {base}, %gs;"));
        self.line(&format!("mov.u64 {p}, 0;"));
        self.label(&format!("$L_ksum{n}"));
        for x in 0..TM {
            for y in 0..TN {
                let (dr, dc) = super::contract::acc_off(x * TN + y, g.tf32);
                self.line(&format!(
                    "ld.global.cg.{mt} {part}, [{base}+{}];",
                    (dr * BN + dc) * size
                ));
                let c = acc(x, y);
                self.line(&format!("add.rn.{t} {c}, {c}, {part};"));
            }
        }
        self.line(&format!("add.u64 {base}, {base}, {};", tile_elems * size));
        self.line(&format!("add.u64 {p}, {p}, 1;"));
        let q = self.q();
        self.line(&format!("setp.lt.u64 {q}, {p}, {ks};"));
        self.line(&format!("@{q} bra $L_ksum{n};"));
        // Ready for the next launch.
        self.line(&format!("@%qt st.global.u32 [{cnt}], 0;"));
        Ok(())
    }

    /// `n` consecutive elements from shared address `base + off` into `{reg}0..`: 16-byte
    /// vector loads (`v4.f32`, `v2.f64`).
    fn frag_load(&mut self, reg: &str, n: u64, base: &str, off: u64, d: DType) {
        let per = if d == DType::F32 { 4 } else { 2 };
        let size = d.size_of() as u64;
        let mut e = 0;
        while e < n {
            let regs: Vec<String> = (e..e + per).map(|x| format!("{reg}{x}")).collect();
            self.line(&format!(
                "ld.shared.v{per}.{} {{{}}}, [{base}+{}];",
                mem_ty(d),
                regs.join(", "),
                off + e * size
            ));
            e += per;
        }
    }

    /// `dst = x / d` (`op` "div") or `x % d` ("rem") on u64 registers, for `x <= x_max`: a
    /// shift or mask for powers of two, a multiply by [`magic`] when `x_max < 2^31`, else the
    /// PTX division. `dst` may be `x`.
    fn udiv(&mut self, op: &str, dst: &str, x: &str, d: u64, x_max: u64) {
        let div = op == "div";
        if d == 1 {
            if div {
                self.line(&format!("mov.u64 {dst}, {x};"));
            } else {
                self.line(&format!("mov.u64 {dst}, 0;"));
            }
        } else if d.is_power_of_two() {
            if div {
                self.line(&format!("shr.u64 {dst}, {x}, {};", d.trailing_zeros()));
            } else {
                self.line(&format!("and.b64 {dst}, {x}, {};", d - 1));
            }
        } else if x_max < (1 << 31) && d < (1 << 31) {
            let (m, k) = magic(d);
            let q = self.t();
            self.line(&format!("mul.lo.u64 {q}, {x}, {m};"));
            self.line(&format!("shr.u64 {q}, {q}, {k};"));
            if div {
                self.line(&format!("mov.u64 {dst}, {q};"));
            } else {
                self.line(&format!("mul.lo.u64 {q}, {q}, {d};"));
                self.line(&format!("sub.u64 {dst}, {x}, {q};"));
            }
        } else {
            self.line(&format!("{op}.u64 {dst}, {x}, {d};"));
        }
    }

    fn r(&mut self) -> String {
        self.nr += 1;
        format!("%r{}", self.nr - 1)
    }

    /// `x = op(x, shfl.down(x, off))` for `off` in [`SHUFFLE_OFFSETS`] on register `x` of type
    /// `d` (64-bit values as two 32-bit halves).
    fn warp_tree(&mut self, x: &str, d: DType, op: BinaryOp) -> Result<(), EmitError> {
        for off in SHUFFLE_OFFSETS {
            let other = if d == DType::F32 {
                let t = self.tf();
                self.line(&format!(
                    "shfl.sync.down.b32 {t}, {x}, {off}, 0x1f, 0xffffffff;"
                ));
                t
            } else {
                let (lo, hi) = (self.r(), self.r());
                let t = if d == DType::F64 {
                    self.tmp_float(d)
                } else {
                    self.t()
                };
                self.line(&format!("mov.b64 {{{lo}, {hi}}}, {x};"));
                self.line(&format!(
                    "shfl.sync.down.b32 {lo}, {lo}, {off}, 0x1f, 0xffffffff;"
                ));
                self.line(&format!(
                    "shfl.sync.down.b32 {hi}, {hi}, {off}, 0x1f, 0xffffffff;"
                ));
                self.line(&format!("mov.b64 {t}, {{{lo}, {hi}}};"));
                t
            };
            self.binary(op, d, x, x, &other)?;
        }
        Ok(())
    }

    /// Combines accumulator `a` across the block ([`block_combine`]'s order) and leaves the
    /// total in every thread's register.
    fn combine(&mut self, a: crate::kernel::Acc, threads: u32) -> Result<(), EmitError> {
        let decl = self.acc(a)?;
        let (d, x) = (decl.dtype, acc_reg(decl.dtype, a.0));
        let op = match decl.op {
            ReduceOp::Sum => BinaryOp::Add,
            ReduceOp::Max => BinaryOp::Max,
        };
        let mt = mem_ty(d);
        self.warp_tree(&x, d, op)?;
        if threads <= 32 {
            // Broadcast lane 0.
            if d == DType::F32 {
                self.line(&format!("shfl.sync.idx.b32 {x}, {x}, 0, 0x1f, 0xffffffff;"));
            } else {
                let (lo, hi) = (self.r(), self.r());
                self.line(&format!("mov.b64 {{{lo}, {hi}}}, {x};"));
                self.line(&format!(
                    "shfl.sync.idx.b32 {lo}, {lo}, 0, 0x1f, 0xffffffff;"
                ));
                self.line(&format!(
                    "shfl.sync.idx.b32 {hi}, {hi}, 0, 0x1f, 0xffffffff;"
                ));
                self.line(&format!("mov.b64 {x}, {{{lo}, {hi}}};"));
            }
            return Ok(());
        }
        let n = self.labels;
        self.labels += 1;
        let (lane, warp) = (self.r(), self.r());
        let (lane0, notw0, inside) = (self.q(), self.q(), self.q());
        let (slot, off) = (self.t(), self.t());
        self.line(&format!("and.b32 {lane}, %r2, 31;"));
        self.line(&format!("shr.u32 {warp}, %r2, 5;"));
        self.line(&format!("setp.eq.u32 {lane0}, {lane}, 0;"));
        self.line(&format!("mul.wide.u32 {off}, {warp}, 8;"));
        self.line(&format!("add.s64 {slot}, %sm, {off};"));
        self.line(&format!("@{lane0} st.shared.{mt} [{slot}], {x};"));
        self.line("bar.sync 0;");
        self.line(&format!("setp.ne.u32 {notw0}, {warp}, 0;"));
        self.line(&format!("@{notw0} bra $L_comb{n};"));
        self.line(&format!("setp.lt.u32 {inside}, {lane}, {};", threads / 32));
        self.line(&format!("mul.wide.u32 {off}, {lane}, 8;"));
        self.line(&format!("add.s64 {slot}, %sm, {off};"));
        self.constant(&x, Scalar::identity(decl.op, d));
        self.line(&format!("@{inside} ld.shared.{mt} {x}, [{slot}];"));
        self.warp_tree(&x, d, op)?;
        self.line(&format!("@%qt st.shared.{mt} [%sm], {x};"));
        self.label(&format!("$L_comb{n}"));
        self.line("bar.sync 0;");
        self.line(&format!("ld.shared.{mt} {x}, [%sm];"));
        // No thread may overwrite the slots before every thread has read the total.
        self.line("bar.sync 0;");
        Ok(())
    }
}

/// PTX's spelling of a float constant: the bits in hex.
fn f32_imm(x: f32) -> String {
    format!("0f{:08X}", x.to_bits())
}

fn f64_imm(x: f64) -> String {
    format!("0d{:016X}", x.to_bits())
}

/// The register of value `n` of type `d`.
fn reg(d: DType, n: u32) -> String {
    match d {
        DType::F32 => format!("%f{n}"),
        DType::F64 => format!("%d{n}"),
        DType::I64 => format!("%l{n}"),
        DType::Bool => format!("%p{n}"),
    }
}

/// The register of accumulator `n`.
fn acc_reg(d: DType, n: u32) -> String {
    match d {
        DType::F32 => format!("%af{n}"),
        DType::F64 => format!("%ad{n}"),
        DType::I64 => format!("%al{n}"),
        DType::Bool => format!("%ap{n}"),
    }
}

/// The PTX type suffix of arithmetic on `d` (not for bools).
fn ty(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "s64",
        DType::Bool => "pred",
    }
}

struct Em<'k> {
    k: &'k Kernel,
    body: String,
    /// Scratch registers used: s64 `%t`, pred `%q`, u16 `%h`, u32 `%r`, f32 `%tf`, f64 `%td`.
    nt: u32,
    nq: u32,
    nh: u32,
    nr: u32,
    ntf: u32,
    ntd: u32,
    labels: u32,
    /// A predicate on every store (thread 0 of a block reduction).
    store_pred: Option<String>,
    /// Further register declarations (the GEMM's).
    extra: Vec<String>,
    /// Module-level declarations (a split reduction's scratch and counters).
    globals: Vec<String>,
    /// Lanes of a vectorised grid-stride kernel (1 otherwise), the lane being printed, and
    /// the values whose accesses are `v4` ones.
    lanes: u32,
    lane: u32,
    vec_inner: Option<Var>,
}

impl<'k> Em<'k> {
    fn new(k: &'k Kernel) -> Em<'k> {
        Em {
            k,
            body: String::new(),
            nt: 0,
            nq: 0,
            nh: 0,
            nr: 0,
            ntf: 0,
            ntd: 0,
            labels: 0,
            store_pred: None,
            extra: Vec::new(),
            globals: Vec::new(),
            lanes: 1,
            lane: 0,
            vec_inner: None,
        }
    }

    fn line(&mut self, s: &str) {
        self.body.push('\t');
        self.body.push_str(s);
        self.body.push('\n');
    }

    fn label(&mut self, l: &str) {
        self.body.push_str(l);
        self.body.push_str(":\n");
    }

    fn t(&mut self) -> String {
        self.nt += 1;
        format!("%t{}", self.nt - 1)
    }

    fn q(&mut self) -> String {
        self.nq += 1;
        format!("%q{}", self.nq - 1)
    }

    fn h(&mut self) -> String {
        self.nh += 1;
        format!("%h{}", self.nh - 1)
    }

    fn tf(&mut self) -> String {
        self.ntf += 1;
        format!("%tf{}", self.ntf - 1)
    }

    fn invalid(&self, what: impl Into<String>) -> EmitError {
        EmitError::Invalid {
            kernel: self.k.name.clone(),
            what: what.into(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> EmitError {
        EmitError::Unsupported {
            kernel: self.k.name.clone(),
            what: what.into(),
        }
    }

    /// The register number of value `v` in lane `lane`.
    fn lane_reg(&self, v: crate::kernel::Val, lane: u32) -> u32 {
        v.0 + lane * self.k.vals.len() as u32
    }

    fn val_ty(&self, v: crate::kernel::Val) -> Result<DType, EmitError> {
        self.k
            .vals
            .get(v.0 as usize)
            .copied()
            .ok_or_else(|| self.invalid(format!("value {v} is not declared")))
    }

    fn val(&self, v: crate::kernel::Val) -> Result<String, EmitError> {
        Ok(reg(self.val_ty(v)?, self.lane_reg(v, self.lane)))
    }

    /// An s64 register holding the value of index expression `e`.
    fn ix(&mut self, e: &Ix) -> Result<String, EmitError> {
        let r = self.t();
        self.line(&format!("mov.s64 {r}, {};", e.c));
        for (a, k) in &e.terms {
            let x = self.atom(a)?;
            self.line(&format!("mad.lo.s64 {r}, {x}, {k}, {r};"));
        }
        Ok(r)
    }

    fn atom(&mut self, a: &Atom) -> Result<String, EmitError> {
        match a {
            Atom::Var(v) => match self.k.defs.get(v.0 as usize) {
                Some(Some(d)) => self.ix(d),
                Some(None) => Ok(format!("%i{}", v.0)),
                None => Err(self.invalid(format!("variable {v} is not declared"))),
            },
            Atom::Div(e, d) | Atom::Mod(e, d) => {
                if *d < 1 {
                    return Err(self.invalid(format!("index division by {d}")));
                }
                let x = self.ix(e)?;
                let div = matches!(a, Atom::Div(..));
                let (lo, hi) = e.range(&self.k.vars);
                if lo >= 0 {
                    // Never negative while the variables are in range (out of range, the value
                    // feeds only a predicated-off access): unsigned division, by a multiply
                    // where the dividend stays below 2^31 ([`magic`]).
                    let r = self.t();
                    let op = if div { "div" } else { "rem" };
                    self.udiv(op, &r, &x, *d as u64, hi as u64);
                    return Ok(r);
                }
                let (q, r, p, fix) = (self.t(), self.t(), self.q(), self.t());
                // Euclidean division by d > 0: truncate, then step down where the remainder
                // is negative.
                self.line(&format!("div.s64 {q}, {x}, {d};"));
                self.line(&format!("rem.s64 {r}, {x}, {d};"));
                self.line(&format!("setp.lt.s64 {p}, {r}, 0;"));
                if matches!(a, Atom::Div(..)) {
                    self.line(&format!("sub.s64 {fix}, {q}, 1;"));
                    self.line(&format!("selp.s64 {q}, {fix}, {q}, {p};"));
                    Ok(q)
                } else {
                    self.line(&format!("add.s64 {fix}, {r}, {d};"));
                    self.line(&format!("selp.s64 {r}, {fix}, {r}, {p};"));
                    Ok(r)
                }
            }
        }
    }

    /// A u64 register holding the address of element `index` of buffer `buf`.
    fn addr(&mut self, buf: crate::kernel::Buf, index: &Ix) -> Result<String, EmitError> {
        let p = self
            .k
            .params
            .get(buf.0 as usize)
            .ok_or_else(|| self.invalid(format!("buffer {buf} is not declared")))?;
        let size = p.dtype.size_of();
        let i = self.ix(index)?;
        let a = self.t();
        self.line(&format!("mad.lo.s64 {a}, {i}, {size}, %b{};", buf.0));
        Ok(a)
    }

    fn stmts(&mut self, stmts: &[Stmt]) -> Result<(), EmitError> {
        for s in stmts {
            self.stmt(s)?;
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), EmitError> {
        match s {
            Stmt::Loop(l) => {
                let n = self.labels;
                self.labels += 1;
                let i = format!("%i{}", l.var.0);
                let p = self.q();
                self.line(&format!("mov.s64 {i}, 0;"));
                self.label(&format!("$L_head{n}"));
                self.line(&format!("setp.ge.s64 {p}, {i}, {};", l.extent));
                self.line(&format!("@{p} bra $L_end{n};"));
                self.stmts(&l.body)?;
                self.line(&format!("add.s64 {i}, {i}, 1;"));
                self.line(&format!("bra.uni $L_head{n};"));
                self.label(&format!("$L_end{n}"));
            }
            Stmt::Let(v, op) => self.op(*v, op)?,
            Stmt::Store { buf, index, value }
                if self
                    .vec_inner
                    .is_some_and(|i| vec_aligned(self.k, i, *buf, index)) =>
            {
                // One v4 store in lane 3 of the four lanes' values (lane 3's address - 12).
                if self.lane == 3 {
                    let a = self.addr(*buf, index)?;
                    let regs: Vec<String> = (0..4)
                        .map(|l| reg(DType::F32, self.lane_reg(*value, l)))
                        .collect();
                    self.line(&format!(
                        "st.global.v4.f32 [{a}+-12], {{{}}};",
                        regs.join(", ")
                    ));
                }
            }
            Stmt::Store { buf, index, value } => {
                let d = self.val_ty(*value)?;
                let x = self.val(*value)?;
                let a = self.addr(*buf, index)?;
                let at = self
                    .store_pred
                    .as_ref()
                    .map(|p| format!("@{p} "))
                    .unwrap_or_default();
                if d == DType::Bool {
                    let h = self.h();
                    self.line(&format!("selp.u16 {h}, 1, 0, {x};"));
                    self.line(&format!("{at}st.global.u8 [{a}], {h};"));
                } else {
                    self.line(&format!("{at}st.global.{} [{a}], {x};", mem_ty(d)));
                }
            }
            Stmt::AccInit(a) => {
                let d = self.acc(*a)?;
                let r = acc_reg(d.dtype, a.0);
                let id = Scalar::identity(d.op, d.dtype);
                self.constant(&r, id);
            }
            Stmt::AccUpdate(a, v) => {
                let d = self.acc(*a)?;
                let r = acc_reg(d.dtype, a.0);
                let x = self.val(*v)?;
                let op = match d.op {
                    ReduceOp::Sum => BinaryOp::Add,
                    ReduceOp::Max => BinaryOp::Max,
                };
                self.binary(op, d.dtype, &r, &r, &x)?;
            }
        }
        Ok(())
    }

    fn acc(&self, a: crate::kernel::Acc) -> Result<crate::kernel::AccDecl, EmitError> {
        self.k
            .accs
            .get(a.0 as usize)
            .copied()
            .ok_or_else(|| self.invalid(format!("accumulator {a} is not declared")))
    }

    /// `mov` of a constant into register `r`.
    fn constant(&mut self, r: &str, s: Scalar) {
        match s {
            Scalar::F32(x) => self.line(&format!("mov.f32 {r}, {};", f32_imm(x))),
            Scalar::F64(x) => self.line(&format!("mov.f64 {r}, {};", f64_imm(x))),
            Scalar::I64(x) => self.line(&format!("mov.s64 {r}, {x};")),
            Scalar::Bool(b) => self.line(&format!("setp.ne.u32 {r}, %rzero, {};", u32::from(b))),
        }
    }

    fn op(&mut self, v: crate::kernel::Val, op: &KOp) -> Result<(), EmitError> {
        let d = self.val_ty(v)?;
        let r = reg(d, self.lane_reg(v, self.lane));
        match op {
            KOp::Const(s) => {
                if s.dtype() != d {
                    return Err(self.invalid(format!("{v}: constant {s} is not {d}")));
                }
                self.constant(&r, *s);
            }
            KOp::Load {
                buf,
                index,
                guard: None,
            } if self
                .vec_inner
                .is_some_and(|i| vec_aligned(self.k, i, *buf, index)) =>
            {
                // One v4 load in lane 0 for all four lanes.
                if self.lane == 0 {
                    let a = self.addr(*buf, index)?;
                    let ld = if self.k.params[buf.0 as usize].access == Access::Read {
                        "ld.global.nc"
                    } else {
                        "ld.global"
                    };
                    let regs: Vec<String> = (0..4)
                        .map(|l| reg(DType::F32, self.lane_reg(v, l)))
                        .collect();
                    self.line(&format!("{ld}.v4.f32 {{{}}}, [{a}];", regs.join(", ")));
                }
            }
            KOp::Load { buf, index, guard } => {
                let a = self.addr(*buf, index)?;
                let access = self.k.params[buf.0 as usize].access;
                // Buffers the kernel only reads go through the read-only data cache.
                let ld = if access == Access::Read {
                    "ld.global.nc"
                } else {
                    "ld.global"
                };
                let pred = match guard {
                    Some(g) => Some(self.val(*g)?),
                    None => None,
                };
                let at = pred.map(|p| format!("@{p} ")).unwrap_or_default();
                if d == DType::Bool {
                    let h = self.h();
                    self.line(&format!("mov.u16 {h}, 0;"));
                    self.line(&format!("{at}{ld}.u8 {h}, [{a}];"));
                    self.line(&format!("setp.ne.u16 {r}, {h}, 0;"));
                } else {
                    if !at.is_empty() {
                        self.constant(&r, Scalar::from_f64(d, 0.0));
                    }
                    self.line(&format!("{at}{ld}.{} {r}, [{a}];", mem_ty(d)));
                }
            }
            KOp::Unary(u, a) => {
                let x = self.val(*a)?;
                self.unary(*u, d, &r, &x)?;
            }
            KOp::Binary(b, x, y) => {
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.binary(*b, d, &r, &x, &y)?;
            }
            KOp::Compare(c, x, y) => {
                let dx = self.val_ty(*x)?;
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.compare(*c, dx, &r, &x, &y);
            }
            KOp::Select(c, x, y) => {
                let (c, x, y) = (self.val(*c)?, self.val(*x)?, self.val(*y)?);
                if d == DType::Bool {
                    let (t1, t2) = (self.q(), self.q());
                    self.line(&format!("and.pred {t1}, {c}, {x};"));
                    self.line(&format!("not.pred {t2}, {c};"));
                    self.line(&format!("and.pred {t2}, {t2}, {y};"));
                    self.line(&format!("or.pred {r}, {t1}, {t2};"));
                } else {
                    self.line(&format!("selp.{} {r}, {x}, {y}, {c};", ty(d)));
                }
            }
            KOp::Cast(to, x) => {
                let from = self.val_ty(*x)?;
                let x = self.val(*x)?;
                if *to != d {
                    return Err(self.invalid(format!("{v}: cast to {to} stored as {d}")));
                }
                self.cast(from, d, &r, &x);
            }
            KOp::InRange { index, lo, hi } => {
                let i = self.ix(index)?;
                let p = self.q();
                self.line(&format!("setp.ge.s64 {p}, {i}, {lo};"));
                self.line(&format!("setp.lt.and.s64 {r}, {i}, {hi}, {p};"));
            }
            KOp::And(x, y) => {
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.line(&format!("and.pred {r}, {x}, {y};"));
            }
            KOp::ReadAcc(a) => {
                let ad = self.acc(*a)?;
                let src = acc_reg(ad.dtype, a.0);
                if d == DType::Bool {
                    self.line(&format!("or.pred {r}, {src}, {src};"));
                } else {
                    self.line(&format!("mov.{} {r}, {src};", ty(d)));
                }
            }
        }
        Ok(())
    }

    fn unary(&mut self, u: UnaryOp, d: DType, r: &str, x: &str) -> Result<(), EmitError> {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2: f32 = std::f32::consts::LN_2;
        match (d, u) {
            (DType::F32 | DType::F64 | DType::I64, UnaryOp::Neg) => {
                self.line(&format!("neg.{} {r}, {x};", ty(d)))
            }
            (DType::F32 | DType::F64 | DType::I64, UnaryOp::Abs) => {
                self.line(&format!("abs.{} {r}, {x};", ty(d)))
            }
            (DType::F32 | DType::F64, UnaryOp::Sqrt) => {
                self.line(&format!("sqrt.rn.{} {r}, {x};", ty(d)))
            }
            (DType::F32 | DType::F64, UnaryOp::Recip) => {
                self.line(&format!("rcp.rn.{} {r}, {x};", ty(d)))
            }
            (DType::F32, UnaryOp::Exp) => {
                let t = self.tf();
                self.line(&format!("mul.f32 {t}, {x}, {};", f32_imm(LOG2E)));
                self.line(&format!("ex2.approx.f32 {r}, {t};"));
            }
            (DType::F32, UnaryOp::Log) => {
                let t = self.tf();
                self.line(&format!("lg2.approx.f32 {t}, {x};"));
                self.line(&format!("mul.f32 {r}, {t}, {};", f32_imm(LN2)));
            }
            (DType::F32, UnaryOp::Tanh) => self.line(&format!("tanh.approx.f32 {r}, {x};")),
            (DType::F64, UnaryOp::Exp) => self.math(&super::math::exp(), &[x], r),
            (DType::F64, UnaryOp::Log) => self.math(&super::math::log(), &[x], r),
            (DType::F64, UnaryOp::Tanh) => self.math(&super::math::tanh(), &[x], r),
            (DType::F64, UnaryOp::Sigmoid) => self.math(&super::math::sigmoid(), &[x], r),
            (DType::F32, UnaryOp::Sigmoid) => {
                let t = self.tf();
                self.line(&format!("mul.f32 {t}, {x}, {};", f32_imm(-LOG2E)));
                self.line(&format!("ex2.approx.f32 {t}, {t};"));
                self.line(&format!("add.f32 {t}, {t}, {};", f32_imm(1.0)));
                self.line(&format!("rcp.rn.f32 {r}, {t};"));
            }
            _ => return Err(self.unsupported(format!("{} on {d}", u_name(u)))),
        }
        Ok(())
    }

    fn binary(
        &mut self,
        b: BinaryOp,
        d: DType,
        r: &str,
        x: &str,
        y: &str,
    ) -> Result<(), EmitError> {
        let t = ty(d);
        match (d, b) {
            (DType::Bool, _) => {
                return Err(self.invalid(format!("{} on bool", b_name(b))));
            }
            (_, BinaryOp::Add) => self.line(&format!("add.{t} {r}, {x}, {y};")),
            (_, BinaryOp::Sub) => self.line(&format!("sub.{t} {r}, {x}, {y};")),
            (DType::I64, BinaryOp::Mul) => self.line(&format!("mul.lo.s64 {r}, {x}, {y};")),
            (_, BinaryOp::Mul) => self.line(&format!("mul.{t} {r}, {x}, {y};")),
            (DType::F32 | DType::F64, BinaryOp::Div) => {
                self.line(&format!("div.rn.{t} {r}, {x}, {y};"))
            }
            (DType::I64, BinaryOp::Max | BinaryOp::Min) => {
                let m = if b == BinaryOp::Max { "max" } else { "min" };
                self.line(&format!("{m}.s64 {r}, {x}, {y};"));
            }
            (DType::F32 | DType::F64, BinaryOp::Max | BinaryOp::Min) => {
                // PyTorch's maximum/minimum: NaN if either operand is NaN (x + y is then NaN).
                let m = if b == BinaryOp::Max { "max" } else { "min" };
                let (p, s, mm) = (self.q(), self.tmp_float(d), self.tmp_float(d));
                self.line(&format!("setp.nan.{t} {p}, {x}, {y};"));
                self.line(&format!("add.{t} {s}, {x}, {y};"));
                self.line(&format!("{m}.{t} {mm}, {x}, {y};"));
                self.line(&format!("selp.{t} {r}, {s}, {mm}, {p};"));
            }
            (DType::F32, BinaryOp::Pow) => self.pow_f32(r, x, y),
            (DType::F64, BinaryOp::Pow) => self.math(&super::math::pow(), &[x, y], r),
            _ => return Err(self.unsupported(format!("{} on {d}", b_name(b)))),
        }
        Ok(())
    }

    fn tmp_float(&mut self, d: DType) -> String {
        if d == DType::F64 {
            self.ntd += 1;
            format!("%td{}", self.ntd - 1)
        } else {
            self.tf()
        }
    }

    /// Prints a straight-line f64 program of [`super::math`] into fresh scratch registers,
    /// one instruction per operation, and moves its result into `r`. Every float operation
    /// carries `.rn`, so ptxas neither contracts nor reorders them: the PTX computes what
    /// [`super::math::Prog::eval`] computes.
    fn math(&mut self, prog: &super::math::Prog, inputs: &[&str], r: &str) {
        use super::math::{Cmp, Kind, MOp};
        let mut regs: Vec<String> = Vec::with_capacity(prog.ops.len());
        for op in &prog.ops {
            let d = match op.kind() {
                Kind::F64 => self.tmp_float(DType::F64),
                Kind::S64 => self.t(),
                Kind::Pred => self.q(),
            };
            let g = |v: super::math::V| regs[v.0 as usize].clone();
            let cmp = |c: Cmp| match c {
                Cmp::Lt => "lt",
                Cmp::Le => "le",
                Cmp::Gt => "gt",
                Cmp::Ge => "ge",
                Cmp::Eq => "eq",
                Cmp::Ne => "neu",
                Cmp::Nan => "nan",
            };
            let line = match *op {
                MOp::Input(n) => format!("mov.f64 {d}, {};", inputs[n as usize]),
                MOp::FConst(c) => format!("mov.f64 {d}, {};", f64_imm(c)),
                MOp::FAdd(a, b) => format!("add.rn.f64 {d}, {}, {};", g(a), g(b)),
                MOp::FSub(a, b) => format!("sub.rn.f64 {d}, {}, {};", g(a), g(b)),
                MOp::FMul(a, b) => format!("mul.rn.f64 {d}, {}, {};", g(a), g(b)),
                MOp::FFma(a, b, c) => format!("fma.rn.f64 {d}, {}, {}, {};", g(a), g(b), g(c)),
                MOp::FDiv(a, b) => format!("div.rn.f64 {d}, {}, {};", g(a), g(b)),
                MOp::FRint(a) => format!("cvt.rni.f64.f64 {d}, {};", g(a)),
                MOp::FAbs(a) => format!("abs.f64 {d}, {};", g(a)),
                MOp::FNeg(a) => format!("neg.f64 {d}, {};", g(a)),
                MOp::FMin(a, b) => format!("min.f64 {d}, {}, {};", g(a), g(b)),
                MOp::FMax(a, b) => format!("max.f64 {d}, {}, {};", g(a), g(b)),
                MOp::FSel(p, a, b) => format!("selp.f64 {d}, {}, {}, {};", g(a), g(b), g(p)),
                MOp::FFromBits(a) => format!("mov.b64 {d}, {};", g(a)),
                MOp::IConst(c) => format!("mov.s64 {d}, {c};"),
                MOp::IAdd(a, b) => format!("add.s64 {d}, {}, {};", g(a), g(b)),
                MOp::ISub(a, b) => format!("sub.s64 {d}, {}, {};", g(a), g(b)),
                MOp::IShr(a, k) => format!("shr.s64 {d}, {}, {k};", g(a)),
                MOp::IShl(a, k) => format!("shl.b64 {d}, {}, {k};", g(a)),
                MOp::IAnd(a, b) => format!("and.b64 {d}, {}, {};", g(a), g(b)),
                MOp::IOr(a, b) => format!("or.b64 {d}, {}, {};", g(a), g(b)),
                MOp::IBits(a) => format!("mov.b64 {d}, {};", g(a)),
                MOp::IFromF(a) => format!("cvt.rni.s64.f64 {d}, {};", g(a)),
                MOp::FFromI(a) => format!("cvt.rn.f64.s64 {d}, {};", g(a)),
                MOp::ISel(p, a, b) => format!("selp.s64 {d}, {}, {}, {};", g(a), g(b), g(p)),
                MOp::FCmp(c, a, b) => format!("setp.{}.f64 {d}, {}, {};", cmp(c), g(a), g(b)),
                MOp::ICmp(c, a, b) => format!("setp.{}.s64 {d}, {}, {};", cmp(c), g(a), g(b)),
                MOp::PAnd(a, b) => format!("and.pred {d}, {}, {};", g(a), g(b)),
                MOp::POr(a, b) => format!("or.pred {d}, {}, {};", g(a), g(b)),
                MOp::PNot(a) => format!("not.pred {d}, {};", g(a)),
            };
            self.line(&line);
            regs.push(d);
        }
        self.line(&format!("mov.f64 {r}, {};", regs[prog.out.0 as usize]));
    }

    /// `x^y` in f32: `2^(y log2|x|)`, with the sign and NaN rules of `powf` for negative `x`
    /// (odd integer `y`: negative; non-integer `y`: NaN) and `x^0 = 1`.
    fn pow_f32(&mut self, r: &str, x: &str, y: &str) {
        let (ax, l, yi, h, hi) = (self.tf(), self.tf(), self.tf(), self.tf(), self.tf());
        let (neg, int, odd, zero) = (self.q(), self.q(), self.q(), self.q());
        self.line(&format!("abs.f32 {ax}, {x};"));
        self.line(&format!("lg2.approx.f32 {l}, {ax};"));
        self.line(&format!("mul.f32 {l}, {l}, {y};"));
        self.line(&format!("ex2.approx.f32 {r}, {l};"));
        self.line(&format!("cvt.rni.f32.f32 {yi}, {y};"));
        self.line(&format!("setp.eq.f32 {int}, {yi}, {y};"));
        self.line(&format!("mul.f32 {h}, {y}, {};", f32_imm(0.5)));
        self.line(&format!("cvt.rni.f32.f32 {hi}, {h};"));
        self.line(&format!("setp.ne.and.f32 {odd}, {hi}, {h}, {int};"));
        self.line(&format!("setp.lt.f32 {neg}, {x}, {};", f32_imm(0.0)));
        // Negative base, odd integer exponent: negate.
        self.line(&format!("and.pred {odd}, {odd}, {neg};"));
        self.line(&format!("@{odd} neg.f32 {r}, {r};"));
        // Negative base, non-integer exponent: NaN.
        self.line(&format!("not.pred {int}, {int};"));
        self.line(&format!("and.pred {int}, {int}, {neg};"));
        self.line(&format!("@{int} mov.f32 {r}, {};", f32_imm(f32::NAN)));
        self.line(&format!("setp.eq.f32 {zero}, {y}, {};", f32_imm(0.0)));
        self.line(&format!("@{zero} mov.f32 {r}, {};", f32_imm(1.0)));
    }

    fn compare(&mut self, c: CmpOp, d: DType, r: &str, x: &str, y: &str) {
        if d == DType::Bool {
            // false < true.
            let t = self.q();
            match c {
                CmpOp::Eq => {
                    self.line(&format!("xor.pred {t}, {x}, {y};"));
                    self.line(&format!("not.pred {r}, {t};"));
                }
                CmpOp::Ne => self.line(&format!("xor.pred {r}, {x}, {y};")),
                CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
                    // lt: !x & y; le: !x | y; gt: x & !y; ge: x | !y.
                    let (neg, other) = match c {
                        CmpOp::Lt | CmpOp::Le => (x, y),
                        _ => (y, x),
                    };
                    let comb = if matches!(c, CmpOp::Lt | CmpOp::Gt) {
                        "and"
                    } else {
                        "or"
                    };
                    self.line(&format!("not.pred {t}, {neg};"));
                    self.line(&format!("{comb}.pred {r}, {t}, {other};"));
                }
            }
            return;
        }
        // Rust's float comparisons: all false on NaN except `!=`.
        let cmp = match (c, d) {
            (CmpOp::Eq, _) => "eq",
            (CmpOp::Ne, DType::I64) => "ne",
            (CmpOp::Ne, _) => "neu",
            (CmpOp::Lt, _) => "lt",
            (CmpOp::Le, _) => "le",
            (CmpOp::Gt, _) => "gt",
            (CmpOp::Ge, _) => "ge",
        };
        self.line(&format!("setp.{cmp}.{} {r}, {x}, {y};", ty(d)));
    }

    fn cast(&mut self, from: DType, to: DType, r: &str, x: &str) {
        use DType::*;
        let line = match (from, to) {
            (Bool, Bool) => format!("or.pred {r}, {x}, {x};"),
            (F32, F32) | (F64, F64) | (I64, I64) => format!("mov.{} {r}, {x};", ty(from)),
            (F32, F64) => format!("cvt.f64.f32 {r}, {x};"),
            (F64, F32) => format!("cvt.rn.f32.f64 {r}, {x};"),
            (F32 | F64, I64) => format!("cvt.rzi.s64.{} {r}, {x};", ty(from)),
            (I64, F32 | F64) => format!("cvt.rn.{}.s64 {r}, {x};", ty(to)),
            (F32, Bool) => format!("setp.neu.f32 {r}, {x}, {};", f32_imm(0.0)),
            (F64, Bool) => format!("setp.neu.f64 {r}, {x}, {};", f64_imm(0.0)),
            (I64, Bool) => format!("setp.ne.s64 {r}, {x}, 0;"),
            (Bool, F32) => format!("selp.f32 {r}, {}, {}, {x};", f32_imm(1.0), f32_imm(0.0)),
            (Bool, F64) => format!("selp.f64 {r}, {}, {}, {x};", f64_imm(1.0), f64_imm(0.0)),
            (Bool, I64) => format!("selp.s64 {r}, 1, 0, {x};"),
        };
        self.line(&line);
    }

    /// The module: header, entry with its parameters, register declarations, body.
    fn finish(&self, target: Target, entry: &str, mapping: &Mapping, shared: u32) -> String {
        let k = self.k;
        let mut s = String::new();
        let _ = writeln!(s, "//");
        let _ = writeln!(
            s,
            "// kiln PTX for kernel {} ({}); mapping: {}",
            k.name,
            target.name(),
            match mapping {
                Mapping::Single => "single thread".to_string(),
                Mapping::GridStride {
                    loops,
                    total,
                    vector,
                } => format!(
                    "grid-stride over {} ({total} indices{})",
                    loops
                        .iter()
                        .map(|(v, e)| format!("{v}<{e}"))
                        .collect::<Vec<_>>()
                        .join(" x "),
                    if *vector > 1 {
                        format!(", {vector} per thread, 16-byte accesses")
                    } else {
                        String::new()
                    }
                ),
                Mapping::Gemm {
                    tiles,
                    ksplit,
                    shared,
                    tf32,
                } => format!(
                    "tiled GEMM, {tiles} output tiles of {}x{} (split-K {ksplit}), {}-deep steps \
                     through {shared} bytes of shared memory, {}x{} per thread{}",
                    super::contract::BM,
                    super::contract::BN,
                    super::contract::BK,
                    super::contract::TM,
                    super::contract::TN,
                    if *tf32 {
                        " (TF32 mma.sync m16n8k8)"
                    } else {
                        ""
                    }
                ),
                Mapping::BlockReduce {
                    outer,
                    outputs,
                    threads,
                    split,
                } => format!(
                    "{split} block(s) of {threads} threads per output over [{}] ({outputs} \
                     outputs), tree reduction",
                    outer
                        .iter()
                        .map(|(v, e)| format!("{v}<{e}"))
                        .collect::<Vec<_>>()
                        .join(" x ")
                ),
            }
        );
        let _ = writeln!(s, "//");
        let _ = writeln!(s, ".version {}", target.isa_version());
        let _ = writeln!(s, ".target {}", target.name());
        let _ = writeln!(s, ".address_size 64");
        if shared > 0 {
            let _ = writeln!(s, ".extern .shared .align 16 .b8 kiln_smem[];");
        }
        for g in &self.globals {
            let _ = writeln!(s, "{g}");
        }
        let _ = writeln!(s);
        for (i, p) in k.params.iter().enumerate() {
            let _ = writeln!(
                s,
                "// b{i}: {}[{}] {:?} ; {}",
                p.dtype, p.len, p.access, p.label
            );
        }
        let params: Vec<String> = (0..k.params.len())
            .map(|i| format!("\t.param .u64 {entry}_b{i}"))
            .collect();
        let _ = writeln!(s, ".visible .entry {entry}(\n{}\n)", params.join(",\n"));
        let (_, block) = mapping.launch(MAX_GRID);
        let _ = writeln!(s, ".maxntid {block}, 1, 1\n{{");
        let mut decl = |t: &str, prefix: &str, n: usize| {
            if n > 0 {
                let _ = writeln!(s, "\t.reg .{t} %{prefix}<{n}>;");
            }
        };
        let count = |d: DType| k.vals.iter().filter(|&&v| v == d).count();
        let nv = k.vals.len() * self.lanes as usize;
        decl("f32", "f", if count(DType::F32) > 0 { nv } else { 0 });
        decl("f64", "d", if count(DType::F64) > 0 { nv } else { 0 });
        decl("s64", "l", if count(DType::I64) > 0 { nv } else { 0 });
        decl("pred", "p", if count(DType::Bool) > 0 { nv } else { 0 });
        let na = k.accs.len();
        let acount = |d: DType| k.accs.iter().filter(|a| a.dtype == d).count();
        decl("f32", "af", if acount(DType::F32) > 0 { na } else { 0 });
        decl("f64", "ad", if acount(DType::F64) > 0 { na } else { 0 });
        decl("s64", "al", if acount(DType::I64) > 0 { na } else { 0 });
        decl("pred", "ap", if acount(DType::Bool) > 0 { na } else { 0 });
        decl("s64", "i", k.vars.len());
        decl("u64", "b", k.params.len());
        decl("s64", "t", self.nt as usize);
        decl("pred", "q", self.nq as usize);
        decl("u16", "h", self.nh as usize);
        decl("u32", "r", self.nr as usize);
        decl("f32", "tf", self.ntf as usize);
        decl("f64", "td", self.ntd as usize);
        let _ = writeln!(s, "\t.reg .u32 %rzero;");
        let _ = writeln!(s, "\t.reg .u64 %flat, %step, %rest, %tid64, %rf, %sm;");
        let _ = writeln!(s, "\t.reg .pred %qt;");
        for e in &self.extra {
            let _ = writeln!(s, "\t{e}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "\tmov.u32 %rzero, 0;");
        for i in 0..k.params.len() {
            let _ = writeln!(s, "\tld.param.u64 %b{i}, [{entry}_b{i}];");
            let _ = writeln!(s, "\tcvta.to.global.u64 %b{i}, %b{i};");
        }
        s.push_str(&self.body);
        s.push_str("}\n");
        s
    }
}

/// The PTX type of a value in memory (bools are bytes, handled separately).
fn mem_ty(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "s64",
        DType::Bool => "u8",
    }
}

fn u_name(u: UnaryOp) -> &'static str {
    crate::kernel::print::unary_name(u)
}

fn b_name(b: BinaryOp) -> &'static str {
    crate::kernel::print::binary_name(b)
}
