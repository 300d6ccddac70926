//! Running one kernel of a compiled program: the only place that calls machine code.

use crate::contract::{self, ConvGeometry, Epilogue, MatMulShape};
use crate::cpu::KernelFn;
use crate::kernel::{Access, Body, Contraction, Kernel};
use kiln_ir::DType;
use std::sync::atomic::{AtomicU64, Ordering};

/// A buffer handed to a kernel: its base address and size in bytes.
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    pub ptr: *mut u8,
    pub bytes: usize,
}

/// The sizes a contraction routine needs, validated once when the program is compiled.
#[derive(Clone, Debug)]
pub enum Prepared {
    None,
    MatMul(MatMulShape),
    Conv(ConvGeometry),
    ConvTranspose(ConvGeometry),
    ConvWeight(ConvGeometry),
}

impl Prepared {
    /// Floating-point operations of the contraction (0 for none).
    pub fn flops(&self) -> f64 {
        match self {
            Prepared::None => 0.0,
            Prepared::MatMul(s) => s.flops(),
            Prepared::Conv(g) | Prepared::ConvTranspose(g) | Prepared::ConvWeight(g) => g.flops(),
        }
    }

    /// Validates the shapes of a kernel's contraction, if it has one.
    pub fn new(k: &Kernel) -> Result<Prepared, String> {
        let Body::Call(c) = &k.body else {
            return Ok(Prepared::None);
        };
        let e = |e: contract::ContractError| format!("kernel {}: {e}", k.name);
        Ok(match &c.op {
            Contraction::MatMul { batch, m, k: kk, n } => Prepared::MatMul(
                MatMulShape::new(&[*batch, *m, *kk], &[*batch, *kk, *n]).map_err(e)?,
            ),
            Contraction::Conv { x, w, params, .. } => {
                Prepared::Conv(ConvGeometry::conv(x, w, params).map_err(e)?)
            }
            Contraction::ConvTranspose { x, w, params, .. } => {
                Prepared::ConvTranspose(ConvGeometry::conv_transpose(x, w, params).map_err(e)?)
            }
            Contraction::ConvWeight { x, dy, dw, params } => {
                Prepared::ConvWeight(ConvGeometry::conv_weight(x, dy, params, &dw[2..]).map_err(e)?)
            }
        })
    }
}

/// Below this many loop iterations a kernel runs on the calling thread.
static PARALLEL_MIN_WORK: AtomicU64 = AtomicU64::new(DEFAULT_PARALLEL_MIN_WORK);

thread_local! {
    /// Set while [`sequential`] runs a program: kernels and contractions do not split.
    static SEQUENTIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The default of [`set_parallel_min_work`].
const DEFAULT_PARALLEL_MIN_WORK: u64 = 1 << 15;

/// Whether small programs run on one thread: yes, unless a test lowered the parallel
/// threshold below its default to exercise the threaded paths on small data.
pub fn small_programs_sequential() -> bool {
    PARALLEL_MIN_WORK.load(Ordering::Relaxed) >= DEFAULT_PARALLEL_MIN_WORK
}

/// Runs `f` (a small program's kernels) with every kernel on the calling thread.
pub fn sequential<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SEQUENTIAL.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(SEQUENTIAL.with(|s| s.replace(true)));
    f()
}

/// Threads a kernel may use here: 1 inside [`sequential`], else rayon's pool.
fn threads() -> usize {
    if SEQUENTIAL.with(|s| s.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Sets the number of loop iterations from which a kernel with a parallel outer loop is
/// split across threads (tests lower it to exercise the parallel paths on small data).
pub fn set_parallel_min_work(n: u64) {
    PARALLEL_MIN_WORK.store(n, Ordering::Relaxed);
}

/// Runs kernel `k` (machine code `f`, or its contraction) over `bufs`, one per parameter.
///
/// # Soundness
///
/// The JIT-compiled function accesses, for each parameter `j`, only elements `0..len_j` of
/// the buffer at `bufs[j].ptr` (proven per access by [`crate::kernel::verify`], or clamped for
/// guarded loads), and writes only to parameters declared `Write`/`ReadWrite`. This function
/// checks, before any call, that:
/// - there is one buffer per parameter, each holding at least `len_j` elements of its dtype
///   and aligned for it;
/// - every written buffer overlaps no other buffer of the call (so a `&mut` slice made for a
///   contraction's output aliases nothing, and kernels never write memory they read through
///   another parameter).
///
/// The caller (the program runner) owns or borrows every buffer for the duration of the call.
/// When the parallel outer loop is split across threads, each thread gets a disjoint
/// sub-range of `0..extent`; the scheduler marks a loop parallel only when distinct
/// iterations write distinct elements and read none another writes, so the threads do not
/// race.
pub fn run_kernel(
    k: &Kernel,
    f: Option<KernelFn>,
    prep: &Prepared,
    bufs: &[RawBuf],
) -> Result<(), String> {
    check_bufs(k, bufs)?;
    match &k.body {
        Body::Call(c) => call(k, c, prep, bufs, None),
        Body::Loops(_) => {
            let f = f.ok_or_else(|| format!("kernel {} was not compiled", k.name))?;
            run_loops(k, f, bufs);
            Ok(())
        }
    }
}

/// Checks the buffers of a call of `k`: one per parameter, large enough and aligned, and no
/// written buffer overlapping another (see [`run_kernel`]'s safety argument).
fn check_bufs(k: &Kernel, bufs: &[RawBuf]) -> Result<(), String> {
    if bufs.len() != k.params.len() {
        return Err(format!(
            "kernel {}: {} buffers for {} parameters",
            k.name,
            bufs.len(),
            k.params.len()
        ));
    }
    for (j, (p, b)) in k.params.iter().zip(bufs).enumerate() {
        let size = p.dtype.size_of();
        let need = (p.len as usize)
            .checked_mul(size)
            .ok_or("buffer size overflows")?;
        if b.bytes < need || !(b.ptr as usize).is_multiple_of(size) {
            return Err(format!(
                "kernel {}: buffer b{j} has {} bytes at {:p}, needs {need} aligned to {size}",
                k.name, b.bytes, b.ptr
            ));
        }
    }
    for (j, (p, b)) in k.params.iter().zip(bufs).enumerate() {
        if p.access == Access::Read || b.bytes == 0 {
            continue;
        }
        let (lo, hi) = (b.ptr as usize, b.ptr as usize + b.bytes);
        for (i, o) in bufs.iter().enumerate() {
            let (olo, ohi) = (o.ptr as usize, o.ptr as usize + o.bytes);
            if i != j && o.bytes != 0 && olo < hi && lo < ohi {
                return Err(format!(
                    "kernel {}: written buffer b{j} overlaps b{i}",
                    k.name
                ));
            }
        }
    }
    Ok(())
}

/// The element index an epilogue kernel (one flat loop, see `Lower::flat`) uses for every
/// load and store of its parameter `j`, if it uses only its loop variable: then a call of
/// the kernel over `lo..hi` touches exactly elements `lo..hi` of that buffer.
pub fn flat_only(k: &Kernel, j: usize) -> bool {
    let Body::Loops(stmts) = &k.body else {
        return false;
    };
    let [crate::kernel::Stmt::Loop(l)] = stmts.as_slice() else {
        return false;
    };
    if !l.parallel
        || l.body
            .iter()
            .any(|s| matches!(s, crate::kernel::Stmt::Loop(_)))
    {
        return false;
    }
    let flat = crate::kernel::Ix::var(l.var);
    l.body.iter().all(|s| match s {
        crate::kernel::Stmt::Let(_, crate::kernel::KOp::Load { buf, index, .. })
        | crate::kernel::Stmt::Store { buf, index, .. } => buf.0 as usize != j || *index == flat,
        _ => true,
    })
}

/// Runs contraction kernel `k` and, on each finished run of its output, the epilogue kernel
/// `e` (machine code `ef`) over the same elements, while they are in cache.
///
/// `e` is a flat epilogue ([`flat_only`] holds for its parameter `j`, whose buffer is the
/// contraction's output) that reads and writes that buffer only at the indices of the range
/// it is called on, and reads its other parameters.
///
/// # Soundness
///
/// Both kernels' buffers pass [`check_bufs`] (sizes, alignment, written buffers overlap no
/// other buffer of the same call). The contraction holds the exclusive slice of its output
/// and hands each finished run to the epilogue callback as `&mut [T]`, at most once per
/// element and never concurrently for the same element. The callback passes the JIT
/// function, as parameter `j`, a pointer derived from that run (offset back by the run's
/// position, so that index `i` addresses element `i` of the output), and the range of the
/// run: by [`flat_only`], the function touches buffer `j` only inside the run. Its other
/// buffers are read-only for it and do not overlap the output (checked), so the concurrent
/// calls on different runs do not race.
pub fn run_fused(
    k: &Kernel,
    prep: &Prepared,
    bufs: &[RawBuf],
    e: &Kernel,
    ef: KernelFn,
    ebufs: &[RawBuf],
    j: usize,
) -> Result<(), String> {
    check_bufs(k, bufs)?;
    check_bufs(e, ebufs)?;
    let Body::Call(c) = &k.body else {
        return Err(format!("kernel {} is not a contraction", k.name));
    };
    let out = bufs[c.output.0 as usize];
    if !flat_only(e, j) || ebufs.get(j).map(|b| b.ptr) != Some(out.ptr) {
        return Err(format!(
            "kernel {} is not a flat epilogue of {} over its output",
            e.name, k.name
        ));
    }
    call(k, c, prep, bufs, Some((ef, ebufs, j)))
}

/// An epilogue to run on each finished run: machine code, its buffers, the parameter that is
/// the contraction's output.
type EpilogueCall<'a> = (KernelFn, &'a [RawBuf], usize);

/// Runs a contraction (and its epilogue, see [`run_fused`]) over checked buffers.
fn call(
    k: &Kernel,
    c: &crate::kernel::Call,
    prep: &Prepared,
    bufs: &[RawBuf],
    epilogue: Option<EpilogueCall<'_>>,
) -> Result<(), String> {
    let cfg = contract::Config {
        threads: threads(),
        ..contract::Config::default()
    };
    let r = match c.dtype {
        DType::F32 => typed_call::<f32>(k, c, prep, bufs, epilogue, &cfg),
        DType::F64 => typed_call::<f64>(k, c, prep, bufs, epilogue, &cfg),
        d => return Err(format!("kernel {}: contraction on {d}", k.name)),
    };
    r.map_err(|e| format!("kernel {}: {e}", k.name))
}

/// [`call`] for element type `T` (the call's dtype).
fn typed_call<T: contract::Float>(
    k: &Kernel,
    c: &crate::kernel::Call,
    prep: &Prepared,
    bufs: &[RawBuf],
    epilogue: Option<EpilogueCall<'_>>,
    cfg: &contract::Config,
) -> Result<(), String> {
    let len = |b: crate::kernel::Buf| k.params[b.0 as usize].len as usize;
    let raw = |b: crate::kernel::Buf| bufs[b.0 as usize].ptr;
    let (a, b, o) = (c.inputs[0], c.inputs[1], c.output);
    // SAFETY: checked by `check_bufs`: each pointer is aligned and valid for `len` elements
    // of the call's dtype, which is `T` (the caller dispatches on it), initialised (bindings,
    // constants, or buffers allocated zeroed); the output overlaps neither input.
    let (a, b, o) = unsafe {
        (
            std::slice::from_raw_parts(raw(a) as *const T, len(a)),
            std::slice::from_raw_parts(raw(b) as *const T, len(b)),
            std::slice::from_raw_parts_mut(raw(o) as *mut T, len(o)),
        )
    };
    with_epilogue(epilogue, |epi| contract_call(prep, a, b, o, epi, cfg))
}

/// The epilogue's buffer pointers, shared by the contraction's worker threads.
struct EpiPtrs(Vec<*mut u8>);
// SAFETY: the pointers are only read (copied) by the callback; what the JIT function does
// through them is argued in `run_fused`.
unsafe impl Sync for EpiPtrs {}
unsafe impl Send for EpiPtrs {}

/// Epilogue kernels with at most this many parameters get their pointer list on the stack
/// (the callback runs once per finished run of the output: thousands of times a call).
const STACK_PTRS: usize = 16;

impl EpiPtrs {
    /// Calls `func` over `lo..hi` with parameter `j` replaced by `pj`.
    fn call(
        &self,
        func: extern "C" fn(*const *mut u8, i64, i64),
        j: usize,
        pj: *mut u8,
        lo: i64,
        hi: i64,
    ) {
        let n = self.0.len();
        if n <= STACK_PTRS {
            let mut p = [std::ptr::null_mut(); STACK_PTRS];
            p[..n].copy_from_slice(&self.0);
            p[j] = pj;
            func(p.as_ptr(), lo, hi);
        } else {
            let mut p = self.0.clone();
            p[j] = pj;
            func(p.as_ptr(), lo, hi);
        }
    }
}

/// Calls `f` with the `Epilogue` that runs `epilogue` (if any) on each finished run.
fn with_epilogue<T: contract::Float>(
    epilogue: Option<EpilogueCall<'_>>,
    f: impl FnOnce(&Epilogue<'_, T>) -> Result<(), String>,
) -> Result<(), String> {
    let Some((ef, ebufs, j)) = epilogue else {
        return f(&Epilogue::none());
    };
    // SAFETY: `ef` was produced by `cpu::compile` for the epilogue kernel, with the signature
    // `extern "C" fn(*const *mut u8, i64, i64)`; its code lives as long as the program.
    let func: extern "C" fn(*const *mut u8, i64, i64) =
        unsafe { std::mem::transmute::<*const u8, _>(ef.0) };
    let ptrs = EpiPtrs(ebufs.iter().map(|b| b.ptr).collect());
    let size = std::mem::size_of::<T>();
    let map = move |offset: usize, run: &mut [T]| {
        // Derived from the run (see `run_fused`): index `offset + i` is `run[i]`.
        let pj = (run.as_mut_ptr() as *mut u8).wrapping_sub(offset * size);
        ptrs.call(func, j, pj, offset as i64, (offset + run.len()) as i64);
    };
    f(&Epilogue::none().with_map(&map))
}

/// Runs a loop-nest kernel, its parallel outer loop split across threads when large.
fn run_loops(k: &Kernel, f: KernelFn, bufs: &[RawBuf]) {
    // SAFETY: `f` was produced by `cpu::compile` for exactly this kernel, with the
    // signature `extern "C" fn(*const *mut u8, i64, i64)`; its code lives as long as
    // the program that holds both.
    let func: extern "C" fn(*const *mut u8, i64, i64) =
        unsafe { std::mem::transmute::<*const u8, _>(f.0) };
    let ptrs: Vec<*mut u8> = bufs.iter().map(|b| b.ptr).collect();
    let threads = threads();
    match k.parallel_loop() {
        Some(l)
            if threads > 1
                && l.extent >= 2
                && k.work() >= PARALLEL_MIN_WORK.load(Ordering::Relaxed) =>
        {
            struct Shared(*const *mut u8);
            // SAFETY: the pointer array outlives the scope below and is only read;
            // the buffers it points to are accessed by disjoint iterations (above).
            unsafe impl Sync for Shared {}
            let shared = Shared(ptrs.as_ptr());
            let chunks = (threads as u64).min(l.extent);
            let shared = &shared;
            rayon::scope(|s| {
                for c in 0..chunks {
                    let lo = (l.extent * c / chunks) as i64;
                    let hi = (l.extent * (c + 1) / chunks) as i64;
                    s.spawn(move |_| func(shared.0, lo, hi));
                }
            });
        }
        Some(l) => func(ptrs.as_ptr(), 0, l.extent as i64),
        None => func(ptrs.as_ptr(), 0, 0),
    }
}

fn contract_call<T: contract::Float>(
    prep: &Prepared,
    a: &[T],
    b: &[T],
    o: &mut [T],
    epi: &Epilogue<'_, T>,
    cfg: &contract::Config,
) -> Result<(), String> {
    let r = match prep {
        Prepared::MatMul(s) => contract::matmul(s, a, b, o, epi, cfg),
        Prepared::Conv(g) => contract::conv(g, a, b, o, epi, cfg),
        Prepared::ConvTranspose(g) => contract::conv_transpose(g, a, b, o, epi, cfg),
        Prepared::ConvWeight(g) => contract::conv_weight(g, a, b, o, epi, cfg),
        Prepared::None => return Err("no contraction prepared".into()),
    };
    r.map_err(|e| e.to_string())
}
