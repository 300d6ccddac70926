//! An f32 GEMM for *few rows, many columns*: `C[m x n] (+)= A[m x k] · B[k x n]` with `m`
//! small (a convolution's output channels of one group) and `n` large (output positions),
//! `B` and `C` row-major with unit column stride (an im2col tile and rows of the result).
//!
//! Why not the `gemm` crate for this shape: it vectorises along `m` (a 64-row micro-panel on
//! AVX-512), so with 32 output channels half of every micro-kernel is padding, and it copies
//! `B` into its own panel layout although the im2col tile is already laid out with positions
//! contiguous. Here the vectors run along `n`: the micro-kernel keeps a 6 x 64 block of `C`
//! in 24 `zmm` registers and, for each `p` in `0..k`, loads 64 consecutive values of row `p`
//! of `B` (4 vectors, straight from the tile) and broadcasts 6 values of column `p` of `A`
//! (packed once per 6-row block so that they are adjacent): 24 fused multiply-adds per 10
//! loads, enough independent chains to keep both FMA pipes busy. Column tails use AVX-512
//! masks (masked-off lanes are neither read nor written), row tails zero rows of the packed
//! `A` whose results are not stored.
//!
//! Used by [`super::gemm_into`] for `f32` when the CPU has AVX-512F (checked at run time) and
//! the shapes fit ([`applies`]); everything else goes to `gemm`. Checked against the reference
//! interpreter by the contraction tests like every other path.

/// Rows of `C` per micro-kernel (one broadcast each).
const MR: usize = 6;
/// Columns of `C` per micro-kernel (4 vectors of 16).
const NR: usize = 64;
/// Depth of one pass over `B` (its `KC x NR` block, 64 KiB, stays in L2 across row blocks).
const KC: usize = 256;

/// Whether [`gemm`] is the better choice for a product of this shape: few rows (at most 12
/// row blocks), enough
/// columns for the vectors, unit column strides of `B` and `C`, and an AVX-512F CPU.
pub fn applies(m: usize, n: usize, k: usize, rhs_cs: usize) -> bool {
    m > 0 && m <= 12 * MR && n >= NR && k > 0 && rhs_cs == 1 && available()
}

/// Whether this CPU runs the wide kernels (AVX-512F, checked at run time).
#[cfg(target_arch = "x86_64")]
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether this CPU runs the wide kernels: never off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

/// `A` packed for the micro-kernel: per block of [`MR`] rows, for each `p`, the block's `MR`
/// values (zero past row `m`). Pack once, multiply many times (a convolution packs its
/// weight once per call and reuses it for every tile of positions).
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs the `m x k` matrix whose element `(i, p)` is `a(i, p)`.
    pub fn new(m: usize, k: usize, a: impl Fn(usize, usize) -> f32) -> PackedA {
        let blocks = m.div_ceil(MR);
        let mut data = vec![0f32; blocks * k * MR];
        for blk in 0..blocks {
            for r in 0..MR.min(m - blk * MR) {
                let i = blk * MR + r;
                for p in 0..k {
                    data[(blk * k + p) * MR + r] = a(i, p);
                }
            }
        }
        PackedA { m, k, data }
    }
}

/// `C (+)= A · B` (see the module docs) for `A` packed as `a` (`m x k`) and `n` columns. `b`
/// holds `B` with row stride `b_rs` (unit column stride); `c` holds `C` with row stride
/// `c_rs >= n`. Any sizes work (tails are masked); [`applies`] says when it is the faster
/// choice. Returns an error (touching nothing) if an addressed element would lie outside `b`
/// or `c`, or the CPU lacks AVX-512F. `par` threads split the columns.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &PackedA,
    n: usize,
    b: &[f32],
    b_rs: usize,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    par: usize,
) -> Result<(), String> {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 || k == 0 {
        return Err(format!("wide gemm: empty product {m}x{n}x{k}"));
    }
    let fits_b = (k - 1)
        .checked_mul(b_rs)
        .and_then(|v| v.checked_add(n))
        .is_some_and(|end| end <= b.len());
    let fits_c = (m - 1)
        .checked_mul(c_rs)
        .and_then(|v| v.checked_add(n))
        .is_some_and(|end| end <= c.len());
    if !fits_b || !fits_c || c_rs < n || !available() {
        return Err(format!(
            "wide gemm: {m}x{n}x{k} with strides b {b_rs}, c {c_rs} does not fit buffers of {} and {}",
            b.len(),
            c.len()
        ));
    }
    let blocks = m.div_ceil(MR);
    let packed = &a.data;
    let col_blocks = n.div_ceil(NR);
    let chunks = par.clamp(1, col_blocks);
    let run = |j_lo: usize, j_hi: usize, c: CPtr| {
        for jb in j_lo..j_hi {
            let j0 = jb * NR;
            let cols = NR.min(n - j0);
            let mut p0 = 0;
            while p0 < k {
                let kc = KC.min(k - p0);
                for blk in 0..blocks {
                    let rows = MR.min(m - blk * MR);
                    let acc = accumulate || p0 > 0;
                    let ap = &packed[(blk * k + p0) * MR..][..kc * MR];
                    let bp = &b[p0 * b_rs + j0..];
                    // SAFETY: `ap` holds kc*MR packed values; the kernel reads rows
                    // `0..kc` of `bp` at columns `0..cols` (offsets `q*b_rs + j < (kc-1)*b_rs
                    // + cols`, inside `bp` because `(k-1)*b_rs + n <= b.len()` was checked
                    // above and `p0 + kc <= k`, `j0 + cols <= n`), and reads and writes rows
                    // `0..rows` of C at columns `0..cols` from `c.0 + (blk*MR)*c_rs + j0`,
                    // inside `c` because `(m-1)*c_rs + n <= c.len()` was checked. Distinct
                    // column blocks touch disjoint elements of C (`c_rs >= n`), so threads
                    // working on different `jb` never overlap, and nothing else accesses `c`
                    // meanwhile (the exclusive borrow is held by this call). `available()`
                    // (checked above) is the run-time AVX-512F check.
                    unsafe {
                        kernel(
                            kc,
                            ap.as_ptr(),
                            bp.as_ptr(),
                            b_rs,
                            c.0.add(blk * MR * c_rs + j0),
                            c_rs,
                            rows,
                            cols,
                            acc,
                        );
                    }
                }
                p0 += kc;
            }
        }
    };
    let cp = CPtr(c.as_mut_ptr());
    if chunks <= 1 {
        run(0, col_blocks, cp);
    } else {
        rayon::scope(|s| {
            for t in 0..chunks {
                let (lo, hi) = (col_blocks * t / chunks, col_blocks * (t + 1) / chunks);
                let run = &run;
                s.spawn(move |_| run(lo, hi, cp));
            }
        });
    }
    Ok(())
}

/// Rows of `A` and of `B` per [`gemm_nt`] block.
const NT_MR: usize = 4;
const NT_NR: usize = 6;

/// `C[i][j] (+)= sum_p A[i][p] * B[j][p]` for `i < m`, `j < n`, `p < k`: both operands with
/// the contracted index contiguous (row strides `a_rs`, `b_rs`), `C` row-major (row stride
/// `c_rs >= n`). This is a convolution's weight gradient, `dW = dY · Col^T`, contracted over
/// output positions, which are contiguous in `dY` and in the im2col tile alike: no packing and
/// no transpose. The micro-kernel keeps a 4 x 6 block of dot products as 24 vectors of
/// partial sums over 16 positions each, reduced once at the end of the row.
///
/// Returns an error (touching nothing) if an addressed element would lie outside a slice or
/// the CPU lacks AVX-512F.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
) -> Result<(), String> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let fits = |rows: usize, rs: usize, cols: usize, len: usize| {
        (rows - 1)
            .checked_mul(rs)
            .and_then(|v| v.checked_add(cols))
            .is_some_and(|end| end <= len)
    };
    if k == 0
        || !fits(m, a_rs, k, a.len())
        || !fits(n, b_rs, k, b.len())
        || !fits(m, c_rs, n, c.len())
        || c_rs < n
        || !available()
    {
        return Err(format!(
            "wide gemm_nt: {m}x{n}x{k} with strides {a_rs}, {b_rs}, {c_rs} does not fit buffers of {}, {}, {}",
            a.len(),
            b.len(),
            c.len()
        ));
    }
    // B's block of rows (in L1) is reused across all of A's blocks (in L2).
    for j0 in (0..n).step_by(NT_NR) {
        let cols = NT_NR.min(n - j0);
        for i0 in (0..m).step_by(NT_MR) {
            let rows = NT_MR.min(m - i0);
            // SAFETY: rows `i0..i0+rows` of A and `j0..j0+cols` of B are read at `p < k`,
            // inside the slices by the `fits` checks above (missing rows of a partial block
            // repeat the block's first row, which exists); the kernel writes `C[i0+i][j0+j]`
            // for `i < rows`, `j < cols`, inside `c` (checked), through the exclusive borrow.
            // `available()` was checked.
            unsafe {
                kernel_nt(
                    k,
                    a.as_ptr().add(i0 * a_rs),
                    a_rs,
                    rows,
                    b.as_ptr().add(j0 * b_rs),
                    b_rs,
                    cols,
                    c.as_mut_ptr().add(i0 * c_rs + j0),
                    c_rs,
                    accumulate,
                );
            }
        }
    }
    Ok(())
}

/// The 4 x 6 dot-product block of [`gemm_nt`].
///
/// # Safety
/// AVX-512F must be available; for `i < rows` (at least 1) `a + i*a_rs + p` and for `j < cols`
/// (at least 1) `b + j*b_rs + p` must be readable for `p < k`; `c + i*c_rs + j` readable and
/// writable for `i < rows`, `j < cols`, with no other access during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_nt(
    k: usize,
    a: *const f32,
    a_rs: usize,
    rows: usize,
    b: *const f32,
    b_rs: usize,
    cols: usize,
    c: *mut f32,
    c_rs: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    // Rows past the block's end read row 0 again (valid memory); their sums are dropped.
    let ar: [*const f32; NT_MR] =
        std::array::from_fn(|i| a.add(if i < rows { i * a_rs } else { 0 }));
    let br: [*const f32; NT_NR] =
        std::array::from_fn(|j| b.add(if j < cols { j * b_rs } else { 0 }));
    let mut t = [[_mm512_setzero_ps(); NT_NR]; NT_MR];
    let mut p = 0;
    while p < k {
        let left = k - p;
        let mask: u16 = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        let av: [__m512; NT_MR] =
            std::array::from_fn(|i| _mm512_maskz_loadu_ps(mask, ar[i].add(p)));
        for (j, &bj) in br.iter().enumerate() {
            let bv = _mm512_maskz_loadu_ps(mask, bj.add(p));
            for (row, &x) in t.iter_mut().zip(&av) {
                row[j] = _mm512_fmadd_ps(x, bv, row[j]);
            }
        }
        p += 16;
    }
    for (i, row) in t.iter().enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate().take(cols) {
            let s = _mm512_reduce_add_ps(v);
            let dst = c.add(i * c_rs + j);
            *dst = if acc { *dst + s } else { s };
        }
    }
}

/// Never called: [`available`] is false off x86_64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_nt(
    _k: usize,
    _a: *const f32,
    _a_rs: usize,
    _rows: usize,
    _b: *const f32,
    _b_rs: usize,
    _cols: usize,
    _c: *mut f32,
    _c_rs: usize,
    _acc: bool,
) {
    unreachable!("the wide GEMM needs x86_64")
}

/// The base pointer of `C`, shared by the threads of one call, which write disjoint column
/// blocks (see the safety comment in [`gemm`]).
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: only used inside `gemm`, whose threads access disjoint elements through it while
// the exclusive borrow of `C` is held.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

/// The 6 x 64 micro-kernel: `C[r][j] = (acc ? C[r][j] : 0) + sum_q a[q*MR + r] * b[q*b_rs + j]`
/// for `r < rows`, `j < cols`.
///
/// # Safety
/// AVX-512F must be available; `a` must point to `kc * MR` readable values; for every
/// `q < kc` and `j < cols`, `b + q*b_rs + j` must be readable; for `r < rows` and `j < cols`,
/// `c + r*c_rs + j` must be readable and writable, with no other access to those elements
/// during the call. Lanes at `j >= cols` are masked: never read or written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    // Lane masks of the 4 vectors: all ones for full vectors, the low `cols - 16v` bits for
    // the tail, none past it.
    let mut mask = [0u16; 4];
    for (v, m) in mask.iter_mut().enumerate() {
        let left = cols.saturating_sub(16 * v).min(16);
        *m = if left == 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
    }
    let mut t = [[_mm512_setzero_ps(); 4]; MR];
    if acc {
        for (r, row) in t.iter_mut().enumerate().take(rows) {
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(mask[v], c.add(r * c_rs + 16 * v));
            }
        }
    }
    for q in 0..kc {
        let bq = b.add(q * b_rs);
        let bv = [
            _mm512_maskz_loadu_ps(mask[0], bq),
            _mm512_maskz_loadu_ps(mask[1], bq.add(16)),
            _mm512_maskz_loadu_ps(mask[2], bq.add(32)),
            _mm512_maskz_loadu_ps(mask[3], bq.add(48)),
        ];
        let aq = a.add(q * MR);
        for (r, row) in t.iter_mut().enumerate() {
            let ar = _mm512_set1_ps(*aq.add(r));
            for (x, &bx) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(ar, bx, *x);
            }
        }
    }
    for (r, row) in t.iter().enumerate().take(rows) {
        for (v, &x) in row.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * c_rs + 16 * v), mask[v], x);
        }
    }
}

/// Never called: [`applies`] is false off x86_64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    _kc: usize,
    _a: *const f32,
    _b: *const f32,
    _b_rs: usize,
    _c: *mut f32,
    _c_rs: usize,
    _rows: usize,
    _cols: usize,
    _acc: bool,
) {
    unreachable!("the wide GEMM needs x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `c` (from `c0`, row stride `c_rs`) against the definition `C (+)= A·B` in f64, and
    /// untouched past column `n`. `a_at(i, p)`, `b_at(p, j)` read the operands.
    fn check(
        c: &[f32],
        c0: &[f32],
        (m, n, k): (usize, usize, usize),
        c_rs: usize,
        accumulate: bool,
        a_at: impl Fn(usize, usize) -> f32,
        b_at: impl Fn(usize, usize) -> f32,
    ) {
        for i in 0..m {
            for j in 0..c_rs {
                let got = c[i * c_rs + j];
                if j >= n {
                    assert_eq!(got, c0[i * c_rs + j], "wrote past the columns");
                    continue;
                }
                let start = if accumulate {
                    c0[i * c_rs + j] as f64
                } else {
                    0.0
                };
                let want = (0..k).fold(start, |s, p| s + a_at(i, p) as f64 * b_at(p, j) as f64);
                assert!(
                    (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "m {m} n {n} k {k}: C[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }

    #[test]
    fn nt_matches_the_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F, so the wide GEMM is never used");
            return;
        }
        for &(m, n, k, extra, accumulate) in &[
            (1usize, 1usize, 1usize, 0usize, false),
            (4, 6, 16, 0, false),
            (5, 7, 33, 3, true),
            (32, 27, 300, 1, false),
            (9, 13, 15, 0, true),
        ] {
            let (a_rs, b_rs, c_rs) = (k + extra, k + 2 * extra, n + extra);
            let a: Vec<f32> = (0..m * a_rs)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..n * b_rs)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let c0: Vec<f32> = (0..m * c_rs).map(|i| (i % 5) as f32).collect();
            let mut c = c0.clone();
            gemm_nt(m, n, k, &a, a_rs, &b, b_rs, &mut c, c_rs, accumulate).unwrap();
            let (a_at, b_at) = (|i, p| a[i * a_rs + p], |p, j| b[j * b_rs + p]);
            check(&c, &c0, (m, n, k), c_rs, accumulate, a_at, b_at);
        }
    }

    /// Against a plain triple loop, for row and column tails, several K blocks, row strides
    /// above the width, accumulation and threads.
    #[test]
    fn matches_the_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F, so the wide GEMM is never used");
            return;
        }
        for &(m, n, k, extra, accumulate, par) in &[
            (1usize, 64usize, 1usize, 0usize, false, 1usize),
            (6, 64, 300, 0, false, 1),
            (7, 100, 513, 3, true, 2),
            (32, 200, 27, 5, false, 2),
            (48, 129, 257, 0, true, 1),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b_rs = n + extra;
            let b: Vec<f32> = (0..k * b_rs)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let c_rs = n + extra;
            let c0: Vec<f32> = (0..m * c_rs).map(|i| (i % 5) as f32).collect();
            let mut c = c0.clone();
            let pa = PackedA::new(m, k, |i, p| a[i * k + p]);
            gemm(&pa, n, &b, b_rs, &mut c, c_rs, accumulate, par).unwrap();
            let (a_at, b_at) = (|i, p| a[i * k + p], |p, j| b[p * b_rs + j]);
            check(&c, &c0, (m, n, k), c_rs, accumulate, a_at, b_at);
        }
    }
}
