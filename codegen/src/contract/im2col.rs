//! Implicit im2col: packing tiles of the convolution's column matrix, and the inverse
//! scatter-add (col2im).
//!
//! For one image and a block of `nch` input channels, the column matrix has a row per
//! (channel `c`, kernel tap `kf`) and a column per output position `o`:
//! `Col[c*K + kf, o] = X[c, o*s + k(kf)*d - p]`, or 0 where that position lies in the padding
//! (`K` = taps, `k(kf)` the tap's multi-index). A tile holds the columns `o0..o1` (row-major,
//! `width = o1 - o0` columns), so its size is bounded by the [`Config`](super::Config) and not
//! by the input.
//!
//! [`TilePlan::plan`] cuts a tile's output positions into segments that lie on one row of the
//! last spatial axis and, per kernel tap, turns each segment into one *move*: a run of tile
//! columns, the input offset (within a channel) of its first element, and its length; the
//! positions it leaves out read padding. The moves are the same for every channel, so the
//! index arithmetic (the interpreter's `conv_runs` enumeration, regrouped) is done once per
//! tile and the per-channel loops of [`pack`] and [`scatter_add`] are plain copies and adds.

use super::conv::ConvGeometry;
use super::{internal, Float, Result};
use kiln_ir::shape::unravel;

/// A run of `len` consecutive tile columns starting at `col` whose inputs are the channel
/// elements `src, src + s, ...` (`s`: the stride of the last spatial axis).
#[derive(Clone, Copy, Debug)]
struct Move {
    col: usize,
    src: usize,
    len: usize,
}

/// The moves of one tile, grouped by kernel tap.
#[derive(Default)]
pub(super) struct TilePlan {
    moves: Vec<Move>,
    /// The moves of tap `kf` are `moves[tap_start[kf]..tap_start[kf + 1]]`.
    tap_start: Vec<usize>,
    /// Whether the moves of tap `kf` cover every column of the tile (no padding to zero).
    full: Vec<bool>,
    /// Per segment: first tile column, last-axis range `c_a..c_b`; and the segment's output
    /// coordinates on the leading spatial axes (`segs.len() * (nd - 1)` entries).
    segs: Vec<(usize, usize, usize)>,
    coords: Vec<usize>,
    width: usize,
}

impl TilePlan {
    /// Plans the tile of output positions `o0 .. o1` (`o0 < o1 <= y_sp`).
    ///
    /// Bounds: a move of tap `kf` covers last-axis output positions inside
    /// `last_valid[kf]`, whose input positions `o*s + kd - p` lie in `[0, x_last)`; its leading
    /// offset is `sum_j pos_j * x_strides[j]` with `pos_j < x_size[j]`, so every element
    /// `src + t*s` (`t < len`) lies in `[0, x_sp)`: in bounds of one channel.
    pub(super) fn plan(&mut self, g: &ConvGeometry, o0: usize, o1: usize) -> Result<()> {
        let nd = g.kernel.len();
        let last = nd - 1; // nd >= 1: the IR rejects convolutions without spatial axes
        let y_last = g.y_size[last];
        if o0 >= o1 || o1 > g.y_sp || y_last == 0 {
            return Err(internal(format!(
                "tile {o0}..{o1} of {} output positions",
                g.y_sp
            )));
        }
        let s_last = g.stride[last];
        self.moves.clear();
        self.tap_start.clear();
        self.full.clear();
        self.segs.clear();
        self.coords.clear();
        self.width = o1 - o0;
        // Segments: the tile's positions on one row of the last axis each.
        let mut o = o0;
        let mut idx = vec![0usize; last];
        while o < o1 {
            let c_a = o % y_last;
            let c_b = y_last.min(c_a + (o1 - o));
            unravel(o / y_last, &g.y_size[..last], &mut idx);
            self.coords.extend_from_slice(&idx);
            self.segs.push((o - o0, c_a, c_b));
            o += c_b - c_a;
        }
        for (kf, tap) in g.taps.chunks_exact(nd).enumerate() {
            self.tap_start.push(self.moves.len());
            let (lo, hi) = g.last_valid[kf];
            let mut covered = 0;
            for (si, &(t0, c_a, c_b)) in self.segs.iter().enumerate() {
                // On the last axis, the positions of the segment whose input is inside.
                let (a, b) = (c_a.max(lo), c_b.min(hi));
                if a >= b {
                    continue;
                }
                // The input offset of the leading spatial axes, or skip: padding.
                let coords = &self.coords[si * last..(si + 1) * last];
                let mut lead = 0usize;
                let mut inside = true;
                for (j, (&o_j, &k_j)) in coords.iter().zip(&tap[..last]).enumerate() {
                    let t = o_j * g.stride[j] + k_j * g.dilation[j];
                    if t < g.padding[j] || t - g.padding[j] >= g.x_size[j] {
                        inside = false;
                        break;
                    }
                    lead += (t - g.padding[j]) * g.x_strides[j];
                }
                if !inside {
                    continue;
                }
                // a >= lo and lo < hi, so `last_start` (the input position of output `lo`)
                // plus (a - lo) * s is the input position of output `a`.
                let src = lead + g.last_start[kf] + (a - lo) * s_last;
                let (col, len) = (t0 + (a - c_a), b - a);
                // Merge with the previous move when both sides continue it (stride 1, rows
                // without padding between them, e.g. a 1-D input or pointwise kernels).
                let tap_has_moves = self.tap_start.last() != Some(&self.moves.len());
                match self.moves.last_mut() {
                    Some(m)
                        if tap_has_moves
                            && s_last == 1
                            && m.col + m.len == col
                            && m.src + m.len == src =>
                    {
                        m.len += len
                    }
                    _ => self.moves.push(Move { col, src, len }),
                }
                covered += len;
            }
            self.full.push(covered == self.width);
        }
        self.tap_start.push(self.moves.len());
        Ok(())
    }

    /// The moves of tap `kf` and whether they cover the whole tile.
    #[inline]
    fn tap(&self, kf: usize) -> (&[Move], bool) {
        (
            &self.moves[self.tap_start[kf]..self.tap_start[kf + 1]],
            self.full[kf],
        )
    }
}

/// `dst = src` elementwise. Runs are often short (a row of a small image): an inlined loop
/// over 8-element blocks is faster than a call to `memmove` there.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        a.copy_from_slice(b);
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// `dst += src` elementwise.
#[inline(always)]
fn add_run<T: Float>(dst: &mut [T], src: &[T]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// Checks the buffers of [`pack`] and [`scatter_add`].
fn check_sizes(g: &ConvGeometry, plan: &TilePlan, x: usize, nch: usize, col: usize) -> Result<()> {
    if x != nch * g.x_sp || col != nch * g.k_sp * plan.width || plan.full.len() != g.k_sp {
        return Err(internal(format!(
            "im2col: {x} input elements for {nch} channels of {}, {col} column elements \
             for a tile of {} columns, a plan of {} taps",
            g.x_sp,
            plan.width,
            plan.full.len()
        )));
    }
    Ok(())
}

/// Packs the tile planned in `plan` for the channels in `x` (`nch` channels of one image,
/// each `x_sp` elements) into `col` (`nch * taps` rows of the tile's width).
pub(super) fn pack<T: Float>(
    g: &ConvGeometry,
    plan: &TilePlan,
    x: &[T],
    nch: usize,
    col: &mut [T],
) -> Result<()> {
    check_sizes(g, plan, x.len(), nch, col.len())?;
    let (k_sp, x_sp, w) = (g.k_sp, g.x_sp, plan.width);
    let s = g.stride[g.kernel.len() - 1];
    for c in 0..nch {
        let xc = &x[c * x_sp..(c + 1) * x_sp];
        for kf in 0..k_sp {
            let row = &mut col[(c * k_sp + kf) * w..][..w];
            let (moves, full) = plan.tap(kf);
            if !full {
                row.fill(T::ZERO);
            }
            for m in moves {
                let dst = &mut row[m.col..m.col + m.len];
                if s == 1 {
                    copy_run(dst, &xc[m.src..m.src + m.len]);
                } else {
                    for (d, &v) in dst.iter_mut().zip(xc[m.src..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The transpose of [`pack`]: adds each element of the tile `col` to the input position it
/// was packed from (terms in the padding are dropped).
pub(super) fn scatter_add<T: Float>(
    g: &ConvGeometry,
    plan: &TilePlan,
    x: &mut [T],
    nch: usize,
    col: &[T],
) -> Result<()> {
    check_sizes(g, plan, x.len(), nch, col.len())?;
    let (k_sp, x_sp, w) = (g.k_sp, g.x_sp, plan.width);
    let s = g.stride[g.kernel.len() - 1];
    for c in 0..nch {
        let xc = &mut x[c * x_sp..(c + 1) * x_sp];
        for kf in 0..k_sp {
            let row = &col[(c * k_sp + kf) * w..][..w];
            for m in plan.tap(kf).0 {
                let src = &row[m.col..m.col + m.len];
                if s == 1 {
                    add_run(&mut xc[m.src..m.src + m.len], src);
                } else {
                    for (d, &v) in xc[m.src..].iter_mut().step_by(s).zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
    Ok(())
}
