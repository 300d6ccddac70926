//! The convolution family as GEMMs over implicit im2col tiles.

use super::im2col::{pack, scatter_add, TilePlan};
use super::{
    check_len, checked_numel, finish_map, finish_run, gemm_into, gemm_threads, internal, run_items,
    wide, Config, ContractError, Epilogue, Float, MatMut, MatRef, Result,
};
use kiln_ir::shape::{strides, unravel};
use kiln_ir::{ConvParams, DType, Op, TensorType};

/// The sizes of the bilinear relation shared by the convolution family (as in the reference
/// interpreter):
///
/// `Y[n, co, o] += X[n, ci, o*s + k*d - p] * W[co, ci - g*(Cx/G), k]` for `co`, `ci` in the
/// same group `g`, with `X [N, Cx, x...]`, `W [Cy, Cx/G, k...]`, `Y [N, Cy, y...]` and terms
/// whose `X` position falls outside `[0, x)` left out (zero padding).
///
/// - [`conv`] computes `Y` from `X = x` and `W = w`;
/// - [`conv_transpose`] computes `X` from `Y` (its operand `x`) and `W`: its result size,
///   which includes `output_padding`, is the relation's `x`;
/// - [`conv_weight`] computes `W` from `X = x` and `Y = dy`.
///
/// Build it with the constructor of the op being executed ([`ConvGeometry::conv`],
/// [`ConvGeometry::conv_transpose`], [`ConvGeometry::conv_weight`]), which validate the
/// shapes with the IR's own shape rule ([`kiln_ir::infer::infer`]). Any of the three kernels
/// accepts any geometry: they compute the three adjoint faces of the same relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub(super) batch: usize,
    pub(super) x_channels: usize,
    pub(super) y_channels: usize,
    pub(super) groups: usize,
    /// Channels per group of `X` and `Y`.
    pub(super) cxg: usize,
    pub(super) cyg: usize,
    pub(super) x_size: Vec<usize>,
    pub(super) y_size: Vec<usize>,
    pub(super) kernel: Vec<usize>,
    pub(super) stride: Vec<usize>,
    pub(super) padding: Vec<usize>,
    pub(super) dilation: Vec<usize>,
    /// Elements of one channel of `X`, of `Y`, and kernel taps.
    pub(super) x_sp: usize,
    pub(super) y_sp: usize,
    pub(super) k_sp: usize,
    /// Row-major strides of the spatial part of `X`.
    pub(super) x_strides: Vec<usize>,
    /// Multi-index of each kernel tap, row-major (`k_sp * nd` entries).
    pub(super) taps: Vec<usize>,
    /// Per tap: the last-axis output positions `lo..hi` whose input is inside.
    pub(super) last_valid: Vec<(usize, usize)>,
    /// Per tap: the last-axis input position of output `lo` (0 when `lo >= hi`).
    pub(super) last_start: Vec<usize>,
    /// A 1x1 kernel, stride 1, no padding and `x` the size of `y`: the column matrix of a
    /// channel block is that block of `X` itself, so it is used in place, not packed.
    pointwise: bool,
    /// Element counts of `X`, `W`, `Y`.
    x_numel: usize,
    w_numel: usize,
    y_numel: usize,
}

/// The output positions `o` in `0..y_len` whose input position `o*s + kd - p` lies in
/// `[0, x_len)`, where `kd = k*d` is the tap's dilated offset (the interpreter's rule).
fn valid_outputs(y_len: usize, x_len: usize, s: usize, kd: usize, p: usize) -> (usize, usize) {
    // o*s + kd >= p  <=>  o >= ceil((p - kd) / s)
    let lo = if kd >= p { 0 } else { (p - kd).div_ceil(s) };
    // o*s + kd - p < x_len  <=>  o < ceil((x_len + p - kd) / s)
    let hi = if x_len + p <= kd {
        0
    } else {
        (x_len + p - kd).div_ceil(s)
    };
    (lo.min(y_len), hi.min(y_len))
}

fn float_type(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

impl ConvGeometry {
    /// The geometry of `conv(x, w)`: `x [N, Cin, i...]`, `w [Cout, Cin/G, k...]`.
    pub fn conv(x_shape: &[usize], w_shape: &[usize], p: &ConvParams) -> Result<ConvGeometry> {
        let y = infer(&Op::Conv(p.clone()), x_shape, w_shape)?;
        ConvGeometry::build(p, x_shape, &y, &w_shape[2..])
    }

    /// The geometry of `conv_transpose(x, w)`: `x [N, Cin, i...]`, `w [Cin, Cout/G, k...]`;
    /// the result `[N, Cout, o...]` is the relation's `X`.
    pub fn conv_transpose(
        x_shape: &[usize],
        w_shape: &[usize],
        p: &ConvParams,
    ) -> Result<ConvGeometry> {
        let out = infer(&Op::ConvTranspose(p.clone()), x_shape, w_shape)?;
        ConvGeometry::build(p, &out, x_shape, &w_shape[2..])
    }

    /// The geometry of `conv_weight(x, dy)`: `x [N, Cin, i...]`, `dy [N, Cout, o...]`, result
    /// `[Cout, Cin/G, kernel...]`.
    pub fn conv_weight(
        x_shape: &[usize],
        dy_shape: &[usize],
        p: &ConvParams,
        kernel: &[usize],
    ) -> Result<ConvGeometry> {
        let op = Op::ConvWeight {
            params: p.clone(),
            kernel: kernel.to_vec(),
        };
        infer(&op, x_shape, dy_shape)?;
        ConvGeometry::build(p, x_shape, dy_shape, kernel)
    }

    /// From shapes the IR's rule accepted: `x [N, Cx, x...]`, `y [N, Cy, y...]`.
    fn build(p: &ConvParams, x: &[usize], y: &[usize], kernel: &[usize]) -> Result<ConvGeometry> {
        let nd = kernel.len();
        if nd == 0 || x.len() != nd + 2 || y.len() != nd + 2 || p.groups == 0 {
            return Err(ContractError::Shape(format!(
                "x {x:?}, y {y:?}, kernel {kernel:?}, groups {}",
                p.groups
            )));
        }
        let (batch, cx, cy, groups) = (x[0], x[1], y[1], p.groups);
        let (cxg, cyg) = (cx / groups, cy / groups);
        let x_size = x[2..].to_vec();
        let y_size = y[2..].to_vec();
        let x_numel = checked_numel(x)?;
        let y_numel = checked_numel(y)?;
        let w_numel = checked_numel(&[cy, cxg])?
            .checked_mul(checked_numel(kernel)?)
            .ok_or_else(|| ContractError::Shape(format!("kernel {kernel:?} overflows")))?;
        let k_sp = checked_numel(kernel)?;
        let mut taps = vec![0usize; k_sp * nd];
        for (kf, idx) in taps.chunks_exact_mut(nd).enumerate() {
            unravel(kf, kernel, idx);
        }
        let last = nd - 1;
        let (s, d, pad) = (p.stride[last], p.dilation[last], p.padding[last]);
        let mut last_valid = Vec::with_capacity(k_sp);
        let mut last_start = Vec::with_capacity(k_sp);
        for tap in taps.chunks_exact(nd) {
            let kd = tap[last] * d;
            let (lo, hi) = valid_outputs(y_size[last], x_size[last], s, kd, pad);
            last_valid.push((lo, hi));
            last_start.push(if lo < hi { lo * s + kd - pad } else { 0 });
        }
        Ok(ConvGeometry {
            batch,
            x_channels: cx,
            y_channels: cy,
            groups,
            cxg,
            cyg,
            x_sp: x_size.iter().product(),
            y_sp: y_size.iter().product(),
            k_sp,
            x_strides: strides(&x_size),
            x_size,
            y_size,
            kernel: kernel.to_vec(),
            stride: p.stride.clone(),
            padding: p.padding.clone(),
            dilation: p.dilation.clone(),
            taps,
            last_valid,
            last_start,
            pointwise: k_sp == 1
                && p.stride.iter().all(|&v| v == 1)
                && p.padding.iter().all(|&v| v == 0)
                && x[2..] == y[2..],
            x_numel,
            w_numel,
            y_numel,
        })
    }

    /// `[N, Cx, x...]`: the input of `conv`/`conv_weight`, the result of `conv_transpose`.
    pub fn x_shape(&self) -> Vec<usize> {
        [vec![self.batch, self.x_channels], self.x_size.clone()].concat()
    }
    /// `[N, Cy, y...]`: the result of `conv`, the operands `x` of `conv_transpose` and `dy`
    /// of `conv_weight`.
    pub fn y_shape(&self) -> Vec<usize> {
        [vec![self.batch, self.y_channels], self.y_size.clone()].concat()
    }
    /// `[Cy, Cx/G, k...]`: the weight of `conv` and `conv_transpose`, the result of
    /// `conv_weight`.
    pub fn w_shape(&self) -> Vec<usize> {
        [vec![self.y_channels, self.cxg], self.kernel.clone()].concat()
    }
    /// Multiply-adds x 2 of the relation, counting padding taps (the usual dense count, the
    /// same for all three ops).
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64
            * self.y_channels as f64
            * self.y_sp as f64
            * self.cxg as f64
            * self.k_sp as f64
    }
    /// For stride 1 and no output padding, `conv_transpose` is a forward convolution of `Y`
    /// with the flipped, channel-swapped weight (see [`flip_weight`]) and padding
    /// `p' = d(K-1) - p`: substituting `t' = K-1-t` in
    /// `X[ci, i] = sum_{co,t} Y[co, i - t d + p] W[co, ci, t]` gives
    /// `X[ci, i] = sum_{co,t'} Y[co, i + t' d - p'] W'[ci, co, t']`. Running it as `conv`
    /// contracts over `Cy * taps` (a deep GEMM) instead of over `Cy` followed by a col2im
    /// scatter. `None` when the geometry does not allow it (a stride above 1, `p > d(K-1)`,
    /// output padding, or a 1x1 kernel, which needs no scatter anyway).
    fn transpose_as_conv(&self) -> Result<Option<ConvGeometry>> {
        if self.pointwise || self.stride.iter().any(|&s| s != 1) {
            return Ok(None);
        }
        let nd = self.kernel.len();
        let mut padding = Vec::with_capacity(nd);
        for j in 0..nd {
            let span = self.dilation[j] * (self.kernel[j] - 1);
            if self.padding[j] > span
                || self.x_size[j] + 2 * self.padding[j] != self.y_size[j] + span
            {
                return Ok(None);
            }
            padding.push(span - self.padding[j]);
        }
        let params = ConvParams {
            stride: vec![1; nd],
            padding,
            dilation: self.dilation.clone(),
            groups: self.groups,
            output_padding: vec![0; nd],
        };
        let w_shape = [vec![self.x_channels, self.cyg], self.kernel.clone()].concat();
        let fwd = ConvGeometry::conv(&self.y_shape(), &w_shape, &params)?;
        if fwd.y_shape() != self.x_shape() {
            return Err(internal(format!(
                "conv_transpose as conv: result {:?}, expected {:?}",
                fwd.y_shape(),
                self.x_shape()
            )));
        }
        Ok(Some(fwd))
    }

    /// Rows of one group's column matrix: `Cx/G * taps`.
    fn kk(&self) -> usize {
        self.cxg * self.k_sp
    }
}

/// The weight of the forward convolution equivalent to `conv_transpose` (stride 1):
/// `W'[g*cxg + ci, co, t'] = W[g*cyg + co, ci, K-1-t']` (output and input channels swapped
/// within each group, taps reversed), shape `[Cx, Cy/G, k...]`.
fn flip_weight<T: Float>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let (cxg, cyg, k_sp) = (g.cxg, g.cyg, g.k_sp);
    let mut out = vec![T::ZERO; g.w_numel];
    for grp in 0..g.groups {
        for co in 0..cyg {
            for ci in 0..cxg {
                let src = ((grp * cyg + co) * cxg + ci) * k_sp;
                let dst = ((grp * cxg + ci) * cyg + co) * k_sp;
                for t in 0..k_sp {
                    out[dst + k_sp - 1 - t] = w[src + t];
                }
            }
        }
    }
    out
}

/// Result type of a conv-family op from the IR's shape rule.
fn infer(op: &Op, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    kiln_ir::infer::infer(op, &[&float_type(a), &float_type(b)])
        .map(|t| t.shape)
        .map_err(|e| ContractError::Shape(format!("{}: {e}", op.name())))
}

/// Columns per tile for a column matrix of `rows` rows over `positions` output positions:
/// about `tile_elems` elements, a multiple of 16 columns unless the tile is the whole row.
fn tile_width(rows: usize, positions: usize, tile_elems: usize) -> usize {
    let w = (tile_elems / rows.max(1)).max(16);
    if w >= positions {
        positions.max(1)
    } else {
        w / 16 * 16
    }
}

/// How many blocks to split `channels` into when there are `outer` independent items per
/// block: enough for about two items per thread, at most one block per channel.
fn channel_blocks(channels: usize, outer: usize, threads: usize) -> usize {
    if threads <= 1 || outer >= 2 * threads {
        1
    } else {
        (2 * threads)
            .div_ceil(outer.max(1))
            .clamp(1, channels.max(1))
    }
}

/// The `(start, len)` of block `b` of `blocks` nearly equal blocks of `n`.
fn block(n: usize, blocks: usize, b: usize) -> (usize, usize) {
    let start = n * b / blocks;
    (start, n * (b + 1) / blocks - start)
}

/// `&s[start..]`, or an internal error instead of a panic.
fn tail<T>(s: &[T], start: usize) -> Result<&[T]> {
    s.get(start..)
        .ok_or_else(|| internal(format!("offset {start} past a buffer of {}", s.len())))
}

/// Per-worker buffers: a tile plan, a column tile and a GEMM result tile.
struct Scratch<T> {
    plan: TilePlan,
    col: Vec<T>,
    buf: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new() -> Self {
        Scratch {
            plan: TilePlan::default(),
            col: Vec::new(),
            buf: Vec::new(),
        }
    }
}

/// `v[..len]`, grown (with zeros) if needed. Callers overwrite all of it.
fn sized<T: Float>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}

/// The plans of the tiles of width `tw` over a channel's `y_sp` output positions. They do
/// not depend on the image, group or channel block, so they are made once per call and
/// shared by all items (planning was a third of the time of a LeNet layer when redone per
/// image), unless they would have more than [`Config::shared_plan_moves`] moves (then each
/// worker plans each tile itself).
struct Plans {
    tw: usize,
    ntiles: usize,
    shared: Option<Vec<TilePlan>>,
}

impl Plans {
    fn new(g: &ConvGeometry, tw: usize, cfg: &Config) -> Result<Plans> {
        let ntiles = g.y_sp.div_ceil(tw);
        let mut plans = Plans {
            tw,
            ntiles,
            shared: None,
        };
        // At most one move per (tap, segment); a tile of width w spans at most w/y_last + 2
        // rows of the last axis, so all tiles at most y_sp/y_last + 2*ntiles segments.
        let y_last = g.y_size.last().copied().unwrap_or(1).max(1);
        let segments = (g.y_sp / y_last).saturating_add(ntiles.saturating_mul(2));
        if g.k_sp.saturating_mul(segments) <= cfg.shared_plan_moves {
            let mut shared = Vec::with_capacity(ntiles);
            for t in 0..ntiles {
                let mut p = TilePlan::default();
                let (o0, width) = plans.tile(g, t);
                p.plan(g, o0, o0 + width)?;
                shared.push(p);
            }
            plans.shared = Some(shared);
        }
        Ok(plans)
    }

    /// First position and width of tile `t`.
    fn tile(&self, g: &ConvGeometry, t: usize) -> (usize, usize) {
        let o0 = t * self.tw;
        (o0, self.tw.min(g.y_sp - o0))
    }

    /// The plan of tile `t`: the shared one, or one made in `scratch`.
    fn get<'a>(
        &'a self,
        g: &ConvGeometry,
        t: usize,
        scratch: &'a mut TilePlan,
    ) -> Result<&'a TilePlan> {
        match &self.shared {
            Some(shared) => shared
                .get(t)
                .ok_or_else(|| internal(format!("tile {t} of {}", shared.len()))),
            None => {
                let (o0, width) = self.tile(g, t);
                scratch.plan(g, o0, o0 + width)?;
                Ok(scratch)
            }
        }
    }
}

/// One work item of [`conv`]: one tile of output positions of one (image, group), with the
/// part of the output it writes.
struct ConvItem<'y, T> {
    n: usize,
    group: usize,
    tile: usize,
    out: ConvOut<'y, T>,
}

/// The part of `y` a [`ConvItem`] writes.
enum ConvOut<'y, T> {
    /// The whole (image, group) block (`cyg` rows of `y_sp`, contiguous), when one tile
    /// covers all output positions: the GEMM writes straight into it.
    Block(&'y mut [T]),
    /// The tile's piece of each output row of the group: the GEMM writes a buffer, copied
    /// into the pieces.
    Rows(Vec<&'y mut [T]>),
}

/// Forward convolution: `y = conv(x, w)` combined with `y` by `epi` (channel: axis 1 of `y`).
///
/// `x`, `w`, `y` are row-major with the shapes [`ConvGeometry::x_shape`], `w_shape`,
/// `y_shape`. Per (image, group, tile of output positions): the im2col tile of `x` is packed
/// (`im2col::pack`), one GEMM `W_g · Col` gives the tile of `y` for all the group's output channels,
/// and the epilogue writes it into `y`. Items run in parallel; each writes only its own
/// pieces of `y`'s rows.
pub fn conv<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    y: &mut [T],
    epi: &Epilogue<T>,
    cfg: &Config,
) -> Result<()> {
    check_len("conv input", x.len(), g.x_numel)?;
    check_len("conv weight", w.len(), g.w_numel)?;
    check_len("conv result", y.len(), g.y_numel)?;
    epi.check(g.y_channels)?;
    if y.is_empty() {
        return Ok(());
    }
    // y is not empty: batch, cy (so cyg and groups) and y_sp are positive.
    let (kk, cyg, y_sp) = (g.kk(), g.cyg, g.y_sp);
    // f32 on AVX-512: each group's weight packed once for the wide GEMM (few output channels,
    // many positions), and tiles of at least WIDE_TILE positions so that it runs on full
    // vectors; otherwise the `gemm` crate per tile.
    let wide_w: Option<Vec<wide::PackedA>> = match T::as_f32(w) {
        Some(w32) if wide::applies(cyg, WIDE_TILE.min(y_sp), kk, 1) && y_sp >= WIDE_TILE => Some(
            (0..g.groups)
                .map(|grp| wide::PackedA::new(cyg, kk, |i, p| w32[(grp * cyg + i) * kk + p]))
                .collect(),
        ),
        _ => None,
    };
    let width = if wide_w.is_some() {
        tile_width(kk, y_sp, cfg.tile_elems)
            .max(WIDE_TILE)
            .min(y_sp)
    } else {
        tile_width(kk, y_sp, cfg.tile_elems)
    };
    let plans = Plans::new(g, width, cfg)?;
    let (tw, ntiles) = (plans.tw, plans.ntiles);
    let mut items: Vec<ConvItem<T>> = Vec::with_capacity(g.batch * g.groups * ntiles);
    for (ng, block) in y.chunks_mut(cyg * y_sp).enumerate() {
        let (n, group) = (ng / g.groups, ng % g.groups);
        if ntiles == 1 {
            items.push(ConvItem {
                n,
                group,
                tile: 0,
                out: ConvOut::Block(block),
            });
            continue;
        }
        let mut pieces: Vec<Vec<&mut [T]>> = (0..ntiles).map(|_| Vec::with_capacity(cyg)).collect();
        for row in block.chunks_mut(y_sp) {
            let mut rest = row;
            for tile_rows in &mut pieces {
                let len = tw.min(rest.len());
                let (piece, r) = std::mem::take(&mut rest).split_at_mut(len);
                tile_rows.push(piece);
                rest = r;
            }
        }
        items.extend(pieces.into_iter().enumerate().map(|(tile, rows)| ConvItem {
            n,
            group,
            tile,
            out: ConvOut::Rows(rows),
        }));
    }
    let par = gemm_threads(items.len(), cfg.threads);
    run_items(items, cfg.threads, Scratch::new, |s, it| {
        let (o0, width) = plans.tile(g, it.tile);
        let plan = plans.get(g, it.tile, &mut s.plan)?;
        let x0 = (it.n * g.x_channels + it.group * g.cxg) * g.x_sp;
        let x_img = tail(x, x0)?
            .get(..g.cxg * g.x_sp)
            .ok_or_else(|| internal("conv: image block past the input"))?;
        let col = if g.pointwise {
            // Col = X: rows are channels (stride x_sp), columns the tile's positions.
            MatRef {
                data: tail(x_img, o0)?,
                rows: kk,
                cols: width,
                rs: g.x_sp,
                cs: 1,
            }
        } else {
            let col = sized(&mut s.col, kk * width);
            pack(g, plan, x_img, g.cxg, col)?;
            MatRef {
                data: &*col,
                rows: kk,
                cols: width,
                rs: width,
                cs: 1,
            }
        };
        let w_g = MatRef {
            data: tail(w, it.group * cyg * kk)?,
            rows: cyg,
            cols: kk,
            rs: kk,
            cs: 1,
        };
        let co0 = it.group * cyg;
        let offset = |a: usize| (it.n * g.y_channels + co0 + a) * y_sp + o0;
        match it.out {
            ConvOut::Block(block) => {
                // a bias goes in first, the product is accumulated onto it
                if let Some(bias) = epi.bias {
                    for (row, &b) in block.chunks_mut(y_sp).zip(&bias[co0..]) {
                        if epi.accumulate {
                            row.iter_mut().for_each(|v| *v += b);
                        } else {
                            row.fill(b);
                        }
                    }
                }
                let dst = MatMut {
                    data: &mut *block,
                    rows: cyg,
                    cols: width,
                    rs: y_sp,
                };
                let accumulate = epi.accumulate || epi.bias.is_some();
                match &wide_w {
                    Some(packed) => wide_into(&packed[it.group], dst, accumulate, col, par)?,
                    None => gemm_into(dst, accumulate, w_g, col, par)?,
                }
                for (a, row) in block.chunks_mut(y_sp).enumerate() {
                    finish_map(row, epi, offset(a));
                }
            }
            ConvOut::Rows(rows) => {
                let buf = sized(&mut s.buf, cyg * width);
                let dst = MatMut {
                    data: &mut *buf,
                    rows: cyg,
                    cols: width,
                    rs: width,
                };
                match &wide_w {
                    Some(packed) => wide_into(&packed[it.group], dst, false, col, par)?,
                    None => gemm_into(dst, false, w_g, col, par)?,
                }
                for (a, piece) in rows.into_iter().enumerate() {
                    if piece.len() != width {
                        return Err(internal("conv: tile pieces do not match the tile"));
                    }
                    let bias = epi.bias.and_then(|b| b.get(co0 + a).copied());
                    finish_run(piece, &buf[a * width..][..width], bias, epi, offset(a));
                }
            }
        }
        Ok(())
    })
}

/// Fewest positions per tile when the forward convolution runs on [`wide`]: four of its
/// 64-column blocks, so that packing the im2col tile is amortised over full vectors.
const WIDE_TILE: usize = 256;

/// `dst (+)= packed · col` on the wide f32 kernel (the caller checked that `T` is `f32`).
fn wide_into<T: Float>(
    packed: &wide::PackedA,
    dst: MatMut<'_, T>,
    accumulate: bool,
    col: MatRef<'_, T>,
    par: usize,
) -> Result<()> {
    let (Some(b), Some(c)) = (T::as_f32(col.data), T::as_f32_mut(dst.data)) else {
        return Err(internal("wide conv: not f32"));
    };
    if col.cs != 1 {
        return Err(internal("wide conv: column tile with a column stride"));
    }
    let c_rs = if dst.rows == 1 {
        dst.rs.max(dst.cols)
    } else {
        dst.rs
    };
    wide::gemm(packed, dst.cols, b, col.rs, c, c_rs, accumulate, par).map_err(internal)
}

/// One work item of [`conv_transpose`]: a block of result channels of one (image, group),
/// which it owns entirely (`nch` whole channels, contiguous).
struct TransposeItem<'x, T> {
    n: usize,
    group: usize,
    c0: usize,
    nch: usize,
    out: &'x mut [T],
}

/// Transposed convolution (the input gradient of `conv`): `dx = conv_transpose(dy, w)`
/// combined with `dx` by `epi` (channel: axis 1 of `dx`).
///
/// `dy` has shape [`ConvGeometry::y_shape`] (the op's operand `x`), `w` `w_shape`, `dx`
/// `x_shape`. Per (image, group, block of result channels) and tile of `dy`'s positions: one
/// GEMM `W_g^T · dY` gives the column tile, which `im2col::scatter_add` adds into the block
/// (col2im). Items own disjoint blocks of channels, so the scatters never race.
pub fn conv_transpose<T: Float>(
    g: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    epi: &Epilogue<T>,
    cfg: &Config,
) -> Result<()> {
    check_len("conv_transpose input", dy.len(), g.y_numel)?;
    check_len("conv_transpose weight", w.len(), g.w_numel)?;
    check_len("conv_transpose result", dx.len(), g.x_numel)?;
    epi.check(g.x_channels)?;
    if dx.is_empty() {
        return Ok(());
    }
    // As a forward convolution when that runs on the wide kernel (f32, AVX-512, enough
    // positions); with few positions the larger im2col of the padded input costs more than
    // the scatter it saves (measured: LeNet's second layer, 2x slower).
    let wide_fwd = T::as_f32(w).is_some()
        && g.x_sp >= WIDE_TILE
        && wide::applies(g.cxg, WIDE_TILE, g.cyg * g.k_sp, 1);
    if wide_fwd {
        if let Some(fwd) = g.transpose_as_conv()? {
            let flipped = flip_weight(g, w);
            return conv(&fwd, dy, &flipped, dx, epi, cfg);
        }
    }
    // dx is not empty: batch, cx (so cxg and groups) and x_sp are positive.
    let (kk, k_sp, cxg, cyg, x_sp, y_sp) = (g.kk(), g.k_sp, g.cxg, g.cyg, g.x_sp, g.y_sp);
    let blocks = channel_blocks(cxg, g.batch * g.groups, cfg.threads);
    let mut items = Vec::with_capacity(g.batch * g.groups * blocks);
    for (ng, group_block) in dx.chunks_mut(cxg * x_sp).enumerate() {
        let mut rest = group_block;
        for b in 0..blocks {
            let (c0, nch) = block(cxg, blocks, b);
            let (out, r) = std::mem::take(&mut rest).split_at_mut(nch * x_sp);
            rest = r;
            if nch > 0 {
                items.push(TransposeItem {
                    n: ng / g.groups,
                    group: ng % g.groups,
                    c0,
                    nch,
                    out,
                });
            }
        }
    }
    // One tile width for all blocks (the largest block's), so that all share the plans.
    let plans = if cyg > 0 && y_sp > 0 {
        let rows = cxg.div_ceil(blocks) * k_sp;
        Some(Plans::new(g, tile_width(rows, y_sp, cfg.tile_elems), cfg)?)
    } else {
        None
    };
    let par = gemm_threads(items.len(), cfg.threads);
    run_items(items, cfg.threads, Scratch::new, |s, it| {
        let ch0 = it.group * cxg + it.c0; // first result channel of the block
        for (c, row) in it.out.chunks_mut(x_sp).enumerate() {
            let bias = epi.bias.and_then(|b| b.get(ch0 + c).copied());
            match (epi.accumulate, bias) {
                (false, None) => row.fill(T::ZERO),
                (false, Some(b)) => row.fill(b),
                (true, None) => {}
                (true, Some(b)) => row.iter_mut().for_each(|v| *v += b),
            }
        }
        if let Some(plans) = &plans {
            let rows = it.nch * k_sp;
            let lhs_data = tail(w, it.group * cyg * kk + it.c0 * k_sp)?;
            let dy_data = tail(dy, (it.n * g.y_channels + it.group * cyg) * y_sp)?;
            for t in 0..plans.ntiles {
                let (o0, width) = plans.tile(g, t);
                let plan = plans.get(g, t, &mut s.plan)?;
                // Pointwise: the column tile is the block of the result itself, so the GEMM
                // accumulates straight into it (it holds the bias or earlier values).
                let (dst, accumulate) = if g.pointwise {
                    let data = it
                        .out
                        .get_mut(o0..)
                        .ok_or_else(|| internal("conv_transpose: tile past the result"))?;
                    (
                        MatMut {
                            data,
                            rows,
                            cols: width,
                            rs: x_sp,
                        },
                        true,
                    )
                } else {
                    let buf = sized(&mut s.buf, rows * width);
                    (
                        MatMut {
                            data: buf,
                            rows,
                            cols: width,
                            rs: width,
                        },
                        false,
                    )
                };
                gemm_into(
                    dst,
                    accumulate,
                    // W_g^T restricted to the block's channels: element (r, co) at W[co][r].
                    MatRef {
                        data: lhs_data,
                        rows,
                        cols: cyg,
                        rs: 1,
                        cs: kk,
                    },
                    MatRef {
                        data: tail(dy_data, o0)?,
                        rows: cyg,
                        cols: width,
                        rs: y_sp,
                        cs: 1,
                    },
                    par,
                )?;
                if !g.pointwise {
                    scatter_add(g, plan, it.out, it.nch, &s.buf[..rows * width])?;
                }
            }
        }
        if epi.map.is_some() {
            for (c, row) in it.out.chunks_mut(x_sp).enumerate() {
                let offset = (it.n * g.x_channels + ch0 + c) * x_sp;
                finish_map(row, epi, offset);
            }
        }
        Ok(())
    })
}

/// Most rows (input channels x taps) of one [`conv_weight`] block.
const WEIGHT_ROWS: usize = 256;

/// One work item of [`conv_weight`]: a block of weight columns (input channels `c0..c0+nch`
/// of the group, all taps) summed over the images `n0..n1`.
#[derive(Clone, Copy)]
struct WeightItem {
    group: usize,
    c0: usize,
    nch: usize,
    n0: usize,
    n1: usize,
}

/// Weight gradient: `dw = conv_weight(x, dy)` combined with `dw` by `epi` (channel: axis 0
/// of `dw`).
///
/// `x` has shape [`ConvGeometry::x_shape`], `dy` `y_shape`, `dw` `w_shape`. Per (group, block
/// of input channels, range of images): `dW_block^T += Col_block · dY_g^T` over the images and
/// tiles of output positions, into a private buffer; partial sums over image ranges (used
/// only when there are too few channel blocks for the threads) are added in a fixed order.
pub fn conv_weight<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    epi: &Epilogue<T>,
    cfg: &Config,
) -> Result<()> {
    check_len("conv_weight input", x.len(), g.x_numel)?;
    check_len("conv_weight output gradient", dy.len(), g.y_numel)?;
    check_len("conv_weight result", dw.len(), g.w_numel)?;
    epi.check(g.y_channels)?;
    if dw.is_empty() {
        return Ok(());
    }
    // dw is not empty: cy (so groups, cyg), cxg and the taps are positive.
    let (kk, k_sp, cxg, cyg) = (g.kk(), g.k_sp, g.cxg, g.cyg);
    // Enough channel blocks for the threads, and blocks of at most WEIGHT_ROWS rows, so that
    // a tile of `tile_elems` is wide: each GEMM then contracts over many positions per pass
    // over its (rows x cyg) accumulator, instead of re-reading it every few dozen.
    let blocks = channel_blocks(cxg, g.groups, cfg.threads)
        .max(kk.div_ceil(WEIGHT_ROWS))
        .clamp(1, cxg.max(1));
    let splits = if cfg.threads > 1 && g.groups * blocks < cfg.threads {
        cfg.threads.min(g.batch).max(1)
    } else {
        1
    };
    let mut items = Vec::with_capacity(g.groups * blocks * splits);
    for group in 0..g.groups {
        for b in 0..blocks {
            let (c0, nch) = block(cxg, blocks, b);
            for sp in 0..splits {
                let (n0, nn) = block(g.batch, splits, sp);
                items.push(WeightItem {
                    group,
                    c0,
                    nch,
                    n0,
                    n1: n0 + nn,
                });
            }
        }
    }
    // f32 on AVX-512: the block's gradient as `dY · Col^T` on `wide::gemm_nt` (its result
    // `[cyg, kc]`, row a: output channel a, instead of the transposed one).
    let wide_ok = T::as_f32(x).is_some() && wide::available();
    // One tile width for all blocks (the largest block's), so that all share the plans.
    let plans = if g.y_sp > 0 {
        let rows = cxg.div_ceil(blocks) * k_sp;
        // The wide kernel reduces each dot product's 16 partial sums once per tile: longer
        // tiles (4x the elements) amortise that.
        let elems = if wide_ok {
            4 * cfg.tile_elems
        } else {
            cfg.tile_elems
        };
        Some(Plans::new(g, tile_width(rows, g.y_sp, elems), cfg)?)
    } else {
        None
    };
    let par = gemm_threads(items.len(), cfg.threads);
    // f32 on AVX-512: the block's gradient as `dY · Col^T` on the wide kernel, its result
    // `[cyg, kc]` (row a: output channel a) instead of the transposed one.
    let work = |s: &mut Scratch<T>, it: WeightItem| -> Result<Vec<T>> {
        let kc = it.nch * k_sp;
        let mut acc = vec![T::ZERO; cyg * kc];
        let Some(plans) = &plans else {
            return Ok(acc); // no output positions: no terms
        };
        let y_sp = g.y_sp;
        let mut first = true;
        for n in it.n0..it.n1 {
            let x0 = (n * g.x_channels + it.group * cxg + it.c0) * g.x_sp;
            let x_blk = tail(x, x0)?
                .get(..it.nch * g.x_sp)
                .ok_or_else(|| internal("conv_weight: channel block past the input"))?;
            let dy_data = tail(dy, (n * g.y_channels + it.group * cyg) * y_sp)?;
            for t in 0..plans.ntiles {
                let (o0, width) = plans.tile(g, t);
                let plan = plans.get(g, t, &mut s.plan)?;
                let col = if g.pointwise {
                    tail(x_blk, o0)? // Col = X (rows of stride x_sp)
                } else {
                    let col = sized(&mut s.col, kc * width);
                    pack(g, plan, x_blk, it.nch, col)?;
                    &*col
                };
                if wide_ok {
                    // dW_block += dY · Col^T: both contracted over positions, contiguous in
                    // dY's rows and in the tile's (wide::gemm_nt, no packing).
                    let col_rs = if g.pointwise { g.x_sp } else { width };
                    let dy_tile = tail(dy_data, o0)?;
                    let (Some(a), Some(b), Some(c)) =
                        (T::as_f32(dy_tile), T::as_f32(col), T::as_f32_mut(&mut acc))
                    else {
                        return Err(internal("wide conv_weight: not f32"));
                    };
                    wide::gemm_nt(cyg, kc, width, a, y_sp, b, col_rs, c, kc, !first)
                        .map_err(internal)?;
                    first = false;
                    continue;
                }
                // dW_block^T += Col · dY^T: with the result's rows along the (long) column
                // dimension, gemm packs both operands efficiently (measured: up to 4x faster
                // than dW_block = dY · Col^T for tiles of 256+ columns).
                gemm_into(
                    MatMut {
                        data: &mut acc,
                        rows: kc,
                        cols: cyg,
                        rs: cyg,
                    },
                    !first,
                    MatRef {
                        data: col,
                        rows: kc,
                        cols: width,
                        rs: if g.pointwise { g.x_sp } else { width },
                        cs: 1,
                    },
                    // dY^T: element (o, a) at dy[a * y_sp + o0 + o].
                    MatRef {
                        data: tail(dy_data, o0)?,
                        rows: width,
                        cols: cyg,
                        rs: 1,
                        cs: y_sp,
                    },
                    par,
                )?;
                first = false;
            }
        }
        Ok(acc)
    };
    let partials: Vec<Vec<T>> = if cfg.threads <= 1 || items.len() <= 1 {
        let mut s = Scratch::new();
        items
            .iter()
            .map(|&it| work(&mut s, it))
            .collect::<Result<_>>()?
    } else {
        use rayon::prelude::*;
        items
            .par_iter()
            .map_init(Scratch::new, |s, &it| work(s, it))
            .collect::<Result<_>>()?
    };
    // Sum the image ranges of each block (in order) and write the block's columns of dw
    // (the partial sums hold the block transposed: element (r, a) at r * cyg + a).
    let mut run = Vec::new();
    for (chunk, its) in partials.chunks(splits).zip(items.chunks(splits)) {
        let it = its[0];
        let kc = it.nch * k_sp;
        let mut sum = chunk[0].clone();
        for part in &chunk[1..] {
            sum.iter_mut().zip(part).for_each(|(s, &v)| *s += v);
        }
        for a in 0..cyg {
            let co = it.group * cyg + a;
            let offset = co * kk + it.c0 * k_sp;
            let piece = dw
                .get_mut(offset..offset + kc)
                .ok_or_else(|| internal("conv_weight: block past the result"))?;
            run.clear();
            if wide_ok {
                run.extend_from_slice(&sum[a * kc..(a + 1) * kc]);
            } else {
                run.extend(sum.iter().skip(a).step_by(cyg.max(1)).take(kc));
            }
            let bias = epi.bias.and_then(|b| b.get(co).copied());
            finish_run(piece, &run, bias, epi, offset);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_partition() {
        for n in 0..20 {
            for blocks in 1..6 {
                let mut next = 0;
                for b in 0..blocks {
                    let (s, l) = block(n, blocks, b);
                    assert_eq!(s, next);
                    next += l;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn tile_widths() {
        assert_eq!(tile_width(9, 900, 65536), 900);
        assert_eq!(tile_width(864, 32768, 65536), 64);
        assert_eq!(tile_width(100_000, 500, 65536), 16);
        assert_eq!(tile_width(100_000, 5, 65536), 5);
        assert_eq!(tile_width(1, 0, 65536), 1);
    }
}
