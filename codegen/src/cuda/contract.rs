//! Contractions for the GPU: as batched GEMMs for the tiled kernel, and as loop nests.
//!
//! On the CPU a contraction ([`Call`]) is a library GEMM; the GPU has no such library here.
//! [`gemm()`] describes a float contraction as a batched GEMM `C[g, i, j] = sum_r A[g, i, r]
//! B[g, r, j]` (implicit GEMM for the convolution family: no im2col buffer, the operand tiles
//! are gathered through the index relation, padding and stride holes being guards that read
//! as zero), which the PTX emitter prints as a tiled shared-memory kernel ([`BM`] x [`BN`]
//! tiles, [`BK`]-deep steps, [`TM`] x [`TN`] per thread); [`emulate`] runs exactly that
//! kernel's steps on the CPU, thread by thread, so the tests check the tiling, the edge guards
//! and the index relation against the naive contraction without a GPU.
//!
//! [`as_loops`] writes a contraction as an ordinary loop nest of the kernel IR: the output's
//! indices as the (parallel, collapsed) outer loops, one thread per output element, and the
//! contracted indices as a sequential inner loop accumulating `a * b` in the element type.
//! Padding and the stride holes of a transposed convolution are guards on the loads
//! (`inrange`), so no access leaves its buffer. It is the fallback for integer contractions
//! and the variable numbering [`gemm()`] shares, and the tests compare it with the naive
//! contraction too.
//!
//! The index relation is the one of `cpu::naive`: for the convolution family
//! `y[n, co, o] += x[n, ci, o*s + k*d - p] * w[co, ci - g*(C/G), k]` with `co` and `ci` in
//! one group `g`.

use super::ptx::EmitError;
use crate::kernel::{
    Acc, AccDecl, Body, Buf, Call, Contraction, DType, Ix, KOp, Kernel, Loop, ReduceOp, Stmt, Val,
    Var,
};
use kiln_ir::shape::strides;

/// `k` with a contraction body rewritten as a loop nest; `None` if `k` is already one.
pub fn as_loops(k: &Kernel) -> Result<Option<Kernel>, EmitError> {
    let Body::Call(c) = &k.body else {
        return Ok(None);
    };
    let mut b = Builder {
        vars: Vec::new(),
        vals: Vec::new(),
    };
    let body = b.contraction(k, c)?;
    Ok(Some(Kernel {
        name: k.name.clone(),
        params: k.params.clone(),
        vals: b.vals,
        defs: vec![None; b.vars.len()],
        vars: b.vars,
        accs: vec![AccDecl {
            op: ReduceOp::Sum,
            dtype: c.dtype,
        }],
        body: Body::Loops(body),
    }))
}

struct Builder {
    vars: Vec<u64>,
    vals: Vec<DType>,
}

/// How to address the two operands and the result from the output (`p`) and contracted
/// (`r`) variables, and the conditions `lo <= index < hi` under which operand `a` is inside.
struct Access3 {
    a: Ix,
    b: Ix,
    out: Ix,
    guards: Vec<(Ix, i64, i64)>,
}

fn c64(x: usize) -> i64 {
    x as i64
}

/// `Σ idx[j] * strides(shape)[j]`.
fn offset(idx: &[Ix], shape: &[usize]) -> Ix {
    let st = strides(shape);
    idx.iter()
        .zip(st)
        .fold(Ix::constant(0), |acc, (i, s)| acc.add(&i.scale(c64(s))))
}

impl Builder {
    fn var(&mut self, extent: usize) -> Var {
        self.vars.push(extent as u64);
        Var(self.vars.len() as u32 - 1)
    }

    fn val(&mut self, out: &mut Vec<Stmt>, d: DType, op: KOp) -> Val {
        self.vals.push(d);
        let v = Val(self.vals.len() as u32 - 1);
        out.push(Stmt::Let(v, op));
        v
    }

    fn contraction(&mut self, k: &Kernel, c: &Call) -> Result<Vec<Stmt>, EmitError> {
        let (pv, rv, acc) = self.access(k, c)?;
        Ok(self.nest(c, &pv, &rv, acc))
    }

    /// The output (`p`) and contracted (`r`) variables and the index relation.
    fn access(&mut self, k: &Kernel, c: &Call) -> Result<(Vec<Var>, Vec<Var>, Access3), EmitError> {
        let bad = |what: String| EmitError::Invalid {
            kernel: k.name.clone(),
            what,
        };
        let (pv, rv, acc) = match &c.op {
            Contraction::MatMul { batch, m, k: kk, n } => {
                let p = [self.var(*batch), self.var(*m), self.var(*n)];
                let r = [self.var(*kk)];
                let (t, i, j, q) = (Ix::var(p[0]), Ix::var(p[1]), Ix::var(p[2]), Ix::var(r[0]));
                let row = t.scale(c64(*m)).add(&i);
                let acc = Access3 {
                    a: row.scale(c64(*kk)).add(&q),
                    b: t.scale(c64(*kk)).add(&q).scale(c64(*n)).add(&j),
                    out: row.scale(c64(*n)).add(&j),
                    guards: Vec::new(),
                };
                (p.to_vec(), r.to_vec(), acc)
            }
            Contraction::Conv { x, w, y, params }
            | Contraction::ConvWeight {
                x,
                dw: w,
                dy: y,
                params,
            } => {
                let weight = matches!(c.op, Contraction::ConvWeight { .. });
                let nd = x.len().saturating_sub(2);
                if y.len() != nd + 2 || w.len() != nd + 2 || params.groups == 0 {
                    return Err(bad(format!("malformed {}", c.op)));
                }
                let (ch, o_ch, groups) = (x[1], y[1], params.groups);
                let (cg, og) = (ch / groups, o_ch / groups.max(1));
                // Variables: output position of y, tap k, batch n, output channel o, channel c.
                let n = self.var(x[0]);
                let o = self.var(o_ch);
                let cc = self.var(cg);
                let ys: Vec<Var> = y[2..].iter().map(|&e| self.var(e)).collect();
                let ks: Vec<Var> = w[2..].iter().map(|&e| self.var(e)).collect();
                let (p, r) = if weight {
                    let mut p = vec![o, cc];
                    p.extend(&ks);
                    let mut r = vec![n];
                    r.extend(&ys);
                    (p, r)
                } else {
                    let mut p = vec![n, o];
                    p.extend(&ys);
                    let mut r = vec![cc];
                    r.extend(&ks);
                    (p, r)
                };
                let ext = self.vars.clone();
                let g = Ix::var(o).div(c64(og.max(1)), &ext);
                let ci = g.scale(c64(cg)).add(&Ix::var(cc));
                let mut guards = Vec::new();
                let mut pos = Vec::new();
                for j in 0..nd {
                    let e = Ix::var(ys[j])
                        .scale(c64(params.stride[j]))
                        .add(&Ix::var(ks[j]).scale(c64(params.dilation[j])))
                        .add_const(-c64(params.padding[j]));
                    let (lo, hi) = e.range(&ext);
                    if lo < 0 || hi >= c64(x[2 + j]) {
                        guards.push((e.clone(), 0, c64(x[2 + j])));
                    }
                    pos.push(e);
                }
                let x_idx = Ix::var(n).scale(c64(ch)).add(&ci);
                let mut xi = vec![x_idx];
                xi.extend(pos);
                let x_off = offset(
                    &xi,
                    &[x[0] * ch]
                        .iter()
                        .copied()
                        .chain(x[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut yi = vec![Ix::var(n).scale(c64(o_ch)).add(&Ix::var(o))];
                yi.extend(ys.iter().map(|&v| Ix::var(v)));
                let y_off = offset(
                    &yi,
                    &[x[0] * o_ch]
                        .iter()
                        .copied()
                        .chain(y[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut wi = vec![Ix::var(o).scale(c64(cg)).add(&Ix::var(cc))];
                wi.extend(ks.iter().map(|&v| Ix::var(v)));
                let w_off = offset(
                    &wi,
                    &[o_ch * cg]
                        .iter()
                        .copied()
                        .chain(w[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let acc = if weight {
                    Access3 {
                        a: x_off,
                        b: y_off,
                        out: w_off,
                        guards,
                    }
                } else {
                    Access3 {
                        a: x_off,
                        b: w_off,
                        out: y_off,
                        guards,
                    }
                };
                (p, r, acc)
            }
            Contraction::ConvTranspose { x, w, y, params } => {
                // x [N, Cin, X...] (operand), w [Cin, Cout/G, K...], y [N, Cout, Y...].
                let nd = x.len().saturating_sub(2);
                if y.len() != nd + 2 || w.len() != nd + 2 || params.groups == 0 {
                    return Err(bad(format!("malformed {}", c.op)));
                }
                let (cin, cout, groups) = (x[1], y[1], params.groups);
                let (cin_g, cout_g) = (cin / groups, cout / groups);
                let n = self.var(y[0]);
                let co = self.var(cout);
                let ys: Vec<Var> = y[2..].iter().map(|&e| self.var(e)).collect();
                let cc = self.var(cin_g);
                let ks: Vec<Var> = w[2..].iter().map(|&e| self.var(e)).collect();
                let mut p = vec![n, co];
                p.extend(&ys);
                let mut r = vec![cc];
                r.extend(&ks);
                let ext = self.vars.clone();
                let g = Ix::var(co).div(c64(cout_g.max(1)), &ext);
                let cl = Ix::var(co).rem(c64(cout_g.max(1)), &ext);
                let ci = g.scale(c64(cin_g)).add(&Ix::var(cc));
                let mut guards = Vec::new();
                let mut xs = Vec::new();
                for j in 0..nd {
                    let s = c64(params.stride[j].max(1));
                    // out = o*s + k*d - p, so o = (out + p - k*d) / s where that divides.
                    let t = Ix::var(ys[j])
                        .add(&Ix::var(ks[j]).scale(-c64(params.dilation[j])))
                        .add_const(c64(params.padding[j]));
                    guards.push((t.clone(), 0, s * c64(x[2 + j])));
                    if s > 1 {
                        guards.push((t.rem(s, &ext), 0, 1));
                    }
                    xs.push(t.div(s, &ext));
                }
                let mut xi = vec![Ix::var(n).scale(c64(cin)).add(&ci)];
                xi.extend(xs);
                let x_off = offset(
                    &xi,
                    &[x[0] * cin]
                        .iter()
                        .copied()
                        .chain(x[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut wi = vec![ci.scale(c64(cout_g)).add(&cl)];
                wi.extend(ks.iter().map(|&v| Ix::var(v)));
                let w_off = offset(
                    &wi,
                    &[cin * cout_g]
                        .iter()
                        .copied()
                        .chain(w[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                let mut yi = vec![Ix::var(n).scale(c64(cout)).add(&Ix::var(co))];
                yi.extend(ys.iter().map(|&v| Ix::var(v)));
                let y_off = offset(
                    &yi,
                    &[y[0] * cout]
                        .iter()
                        .copied()
                        .chain(y[2..].iter().copied())
                        .collect::<Vec<_>>(),
                );
                (
                    p,
                    r,
                    Access3 {
                        a: x_off,
                        b: w_off,
                        out: y_off,
                        guards,
                    },
                )
            }
        };
        Ok((pv, rv, acc))
    }

    /// `for p.. { acc = 0; for r.. { acc += a[..] * b[..] }; out[..] = acc }`.
    fn nest(&mut self, c: &Call, p: &[Var], r: &[Var], acc: Access3) -> Vec<Stmt> {
        let d = c.dtype;
        let mut inner = Vec::new();
        let mut guard: Option<Val> = None;
        for (e, lo, hi) in &acc.guards {
            let g = self.val(
                &mut inner,
                DType::Bool,
                KOp::InRange {
                    index: e.clone(),
                    lo: *lo,
                    hi: *hi,
                },
            );
            guard = Some(match guard {
                None => g,
                Some(prev) => self.val(&mut inner, DType::Bool, KOp::And(prev, g)),
            });
        }
        let va = self.val(
            &mut inner,
            d,
            KOp::Load {
                buf: c.inputs[0],
                index: acc.a,
                guard,
            },
        );
        // Only `a` needs the guard: `b` (a weight or an output gradient) is always inside, and
        // a zero `a` zeroes the term.
        let vb = self.val(
            &mut inner,
            d,
            KOp::Load {
                buf: c.inputs[1],
                index: acc.b,
                guard: None,
            },
        );
        let prod = self.val(
            &mut inner,
            d,
            KOp::Binary(crate::kernel::BinaryOp::Mul, va, vb),
        );
        inner.push(Stmt::AccUpdate(Acc(0), prod));
        let mut per_out = vec![Stmt::AccInit(Acc(0))];
        per_out.extend(self.wrap(r, inner, false));
        let v = self.val(&mut per_out, d, KOp::ReadAcc(Acc(0)));
        per_out.push(Stmt::Store {
            buf: c.output,
            index: acc.out,
            value: v,
        });
        self.wrap(p, per_out, true)
    }

    fn wrap(&self, vars: &[Var], body: Vec<Stmt>, parallel: bool) -> Vec<Stmt> {
        let mut body = body;
        for (n, &v) in vars.iter().enumerate().rev() {
            body = vec![Stmt::Loop(Loop {
                var: v,
                extent: self.vars[v.0 as usize],
                parallel: parallel && n == 0,
                vector: 1,
                body,
            })];
        }
        body
    }
}

/// The axes of a batched GEMM `C[g, i, j] = sum_r A[g, i, r] B[g, r, j]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    G,
    I,
    J,
    R,
}

/// One term of a contraction variable as a function of the GEMM's axes:
/// `((axis / div) % modulo) * mul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub axis: Axis,
    pub div: u64,
    pub modulo: u64,
    pub mul: u64,
}

/// An operand of a [`Gemm`]: its buffer, its element index in the contraction's variables,
/// and the conditions `lo <= index < hi` under which it is inside (else it reads as 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub buf: Buf,
    pub index: Ix,
    pub guards: Vec<(Ix, i64, i64)>,
}

/// A contraction as a batched GEMM (implicit GEMM for the convolution family): the sizes, each
/// contraction variable (those of [`as_loops`]' nest) as a sum of [`Part`]s of the axes, and
/// the operands `lhs` (`M x K`: depends on `g, i, r`), `rhs` (`K x N`: `g, r, j`) and the
/// output (`g, i, j`).
///
/// - matmul: `g` batch, `i` row, `j` column, `r` the contracted index;
/// - conv: `g` group, `i` output channel in the group, `j` = (batch, output position),
///   `r` = (input channel in the group, tap); `lhs` the weight, `rhs` the input (guarded by the
///   padding);
/// - conv_transpose: as conv with `j` = (batch, output position of the transposed conv), the
///   input guarded by the padding and the stride holes;
/// - conv_weight: `i` output channel in the group, `j` = (input channel in the group, tap),
///   `r` = (batch, output position); `lhs` the output gradient, `rhs` the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    pub dtype: DType,
    pub batch: u64,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// Extents of the contraction variables.
    pub vars: Vec<u64>,
    /// Each variable's parts.
    pub parts: Vec<Vec<Part>>,
    pub lhs: Operand,
    pub rhs: Operand,
    pub out: (Buf, Ix),
    /// Blocks sharing one output tile, each over its own chunk of [`Gemm::kchunk`] of the
    /// contracted index (split-K; 1: none). See [`split_k`].
    pub ksplit: u64,
    /// The micro-tiles on the tensor cores (`mma.sync` m16n8k8 with TF32 inputs, f32
    /// accumulation): opt-in, f32 only ([`super::ptx::Options::allow_tf32`]).
    pub tf32: bool,
}

/// Parts for `vars` as the digits of one flat axis, the first slowest.
fn digits(axis: Axis, vars: &[(Var, usize)], parts: &mut [Vec<Part>]) -> u64 {
    let mut div = 1u64;
    for &(v, e) in vars.iter().rev() {
        parts[v.0 as usize].push(Part {
            axis,
            div,
            modulo: e.max(1) as u64,
            mul: 1,
        });
        div *= e as u64;
    }
    div
}

impl Gemm {
    /// The contraction variables' values at `(g, i, j, r)`.
    pub fn var_values(&self, at: [u64; 4]) -> Vec<i64> {
        self.parts
            .iter()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let a = at[p.axis as usize];
                        ((a / p.div) % p.modulo * p.mul) as i64
                    })
                    .sum()
            })
            .collect()
    }
}

/// `k`'s contraction as a [`Gemm`], for float contractions whose sizes fit in 31 bits; `None`
/// otherwise (or for a kernel that is not a contraction): those run as loop nests.
pub fn gemm(k: &Kernel) -> Result<Option<Gemm>, EmitError> {
    let Body::Call(c) = &k.body else {
        return Ok(None);
    };
    if !matches!(c.dtype, DType::F32 | DType::F64) {
        return Ok(None);
    }
    let mut b = Builder {
        vars: Vec::new(),
        vals: Vec::new(),
    };
    let (pv, rv, acc) = b.access(k, c)?;
    let ext = |v: Var| b.vars[v.0 as usize] as usize;
    let mut parts = vec![Vec::new(); b.vars.len()];
    let with = |vs: &[Var]| vs.iter().map(|&v| (v, ext(v))).collect::<Vec<_>>();
    // `o = g * per_group + i`.
    let grouped = |o: Var, groups: usize, per: usize, parts: &mut Vec<Vec<Part>>| {
        parts[o.0 as usize].push(Part {
            axis: Axis::G,
            div: 1,
            modulo: groups.max(1) as u64,
            mul: per as u64,
        });
        parts[o.0 as usize].push(Part {
            axis: Axis::I,
            div: 1,
            modulo: per.max(1) as u64,
            mul: 1,
        });
    };
    let a_op = Operand {
        buf: c.inputs[0],
        index: acc.a,
        guards: acc.guards,
    };
    let b_op = Operand {
        buf: c.inputs[1],
        index: acc.b,
        guards: Vec::new(),
    };
    let (batch, m, n, kk, lhs, rhs) = match &c.op {
        Contraction::MatMul { batch, m, k: kk, n } => {
            digits(Axis::G, &with(&pv[0..1]), &mut parts);
            digits(Axis::I, &with(&pv[1..2]), &mut parts);
            digits(Axis::J, &with(&pv[2..3]), &mut parts);
            digits(Axis::R, &with(&rv), &mut parts);
            (*batch as u64, *m as u64, *n as u64, *kk as u64, a_op, b_op)
        }
        Contraction::Conv { y, params, .. } | Contraction::ConvTranspose { y, params, .. } => {
            // pv = [n, o (conv_transpose: co), ys..], rv = [cc, ks..]
            let (groups, per) = (params.groups, y[1] / params.groups.max(1));
            grouped(pv[1], groups, per, &mut parts);
            let mut jv = vec![pv[0]];
            jv.extend(&pv[2..]);
            let n = digits(Axis::J, &with(&jv), &mut parts);
            let kk = digits(Axis::R, &with(&rv), &mut parts);
            (groups as u64, per as u64, n, kk, b_op, a_op)
        }
        Contraction::ConvWeight { dw, params, .. } => {
            // pv = [o, cc, ks..], rv = [n, ys..]
            let (groups, per) = (params.groups, dw[0] / params.groups.max(1));
            grouped(pv[0], groups, per, &mut parts);
            let n = digits(Axis::J, &with(&pv[1..]), &mut parts);
            let kk = digits(Axis::R, &with(&rv), &mut parts);
            (groups as u64, per as u64, n, kk, b_op, a_op)
        }
    };
    // The kernel splits axis values with 32-bit arithmetic (tile overhang included).
    if [batch, m + BM, n + BN, kk + BK]
        .iter()
        .any(|&x| x >= 1 << 31)
    {
        return Ok(None);
    }
    let mut g = Gemm {
        dtype: c.dtype,
        batch,
        m,
        n,
        k: kk,
        vars: b.vars,
        parts,
        lhs,
        rhs,
        out: (c.output, acc.out),
        ksplit: 1,
        tf32: false,
    };
    g.ksplit = split_k(&g);
    Ok(Some(g))
}

/// Blocks a split-K GEMM aims at (an H100 has 132 SMs).
pub const SPLIT_K_TARGET_BLOCKS: u64 = 264;
/// At most this many blocks share an output tile.
pub const MAX_KSPLIT: u64 = 64;
/// At most this many bytes of split-K partial tiles (module-global scratch).
pub const MAX_SPLIT_K_SCRATCH: u64 = 32 << 20;

/// How many blocks share each output tile: 1 when the tiles alone give
/// [`SPLIT_K_TARGET_BLOCKS`] blocks; else enough to approach that, each block keeping at least
/// 8 `BK`-steps, at most [`MAX_KSPLIT`], the partial tiles at most [`MAX_SPLIT_K_SCRATCH`]
/// bytes. Why: a weight gradient (`conv_weight`, or `x^T dy` of a linear layer) has a small
/// output (a few tiles) and a huge contracted extent (batch x positions); without a split a
/// handful of blocks would run it on a handful of SMs.
pub fn split_k(g: &Gemm) -> u64 {
    let tiles = g.tiles();
    let steps = g.k.div_ceil(BK);
    let tile_bytes = BM * BN * g.dtype.size_of() as u64;
    let by_scratch = MAX_SPLIT_K_SCRATCH / (tiles * tile_bytes).max(1);
    let s = (SPLIT_K_TARGET_BLOCKS / tiles.max(1))
        .min(steps / 8)
        .min(MAX_KSPLIT)
        .min(by_scratch);
    if s < 2 {
        1
    } else {
        s
    }
}

/// The tiling of the GPU's GEMM kernel: `BM x BN` output tiles per block of [`GEMM_THREADS`]
/// threads, `BK`-deep steps of the contracted index staged through shared memory, a `TM x TN`
/// register micro-tile per thread.
pub const BM: u64 = 64;
pub const BN: u64 = 64;
pub const BK: u64 = 16;
pub const TM: u64 = 4;
pub const TN: u64 = 4;
pub const GEMM_THREADS: u32 = 256;
/// Row stride (elements) of the `lhs` tile in shared memory, `As[BK][BM + 4]`: the padding
/// spreads the transposing stores over banks and keeps rows 16-byte aligned.
pub const AS_STRIDE: u64 = BM + 4;

/// The first output-tile element `(row, col)` of thread `tid`'s accumulators, to which
/// [`acc_off`] adds each register's offset. FP32: the `TM x TN` micro-tile at
/// `(ty * TM, tx * TN)`. TF32: warp `w` owns rows `(w / 4) * 32..` and columns `(w % 4) * 16..`
/// (2 x 2 tiles of 16 x 8), and lane `l` holds, in each tile, the elements of the `mma`
/// accumulator fragment: rows `l / 4` and `l / 4 + 8`, columns `2 (l % 4)` and `+ 1`.
pub fn acc_base(tid: u64, tf32: bool) -> (u64, u64) {
    if tf32 {
        let (warp, lane) = (tid / 32, tid % 32);
        ((warp / 4) * 32 + lane / 4, (warp % 4) * 16 + 2 * (lane % 4))
    } else {
        ((tid / (BN / TN)) * TM, (tid % (BN / TN)) * TN)
    }
}

/// The offset of accumulator register `n` (`%c<n>`, `0..TM*TN`) from [`acc_base`]. TF32:
/// `n = (mt * 2 + nt) * 4 + r` is fragment register `r` of tile `(mt, nt)`.
pub fn acc_off(n: u64, tf32: bool) -> (u64, u64) {
    if tf32 {
        let (mt, nt, r) = (n / 8, (n / 4) % 2, n % 4);
        (mt * 16 + 8 * (r / 2), nt * 8 + r % 2)
    } else {
        (n / TN, n % TN)
    }
}

/// `x` rounded to TF32 as `cvt.rna.tf32.f32` does: to the nearest value with a 10-bit
/// mantissa, ties away from zero (the low 13 bits cleared).
pub fn tf32_round(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & !0x1fff)
}

impl Gemm {
    /// Output tiles (blocks' work items): `batch * ceil(m / BM) * ceil(n / BN)`.
    pub fn tiles(&self) -> u64 {
        self.batch * self.m.div_ceil(BM) * self.n.div_ceil(BN)
    }

    /// `(g, first row, first column)` of tile `t` (columns fastest, so neighbouring blocks
    /// share their `lhs` rows).
    pub fn tile(&self, t: u64) -> (u64, u64, u64) {
        let (tm, tn) = (self.m.div_ceil(BM), self.n.div_ceil(BN));
        (t / (tm * tn), (t / tn) % tm * BM, t % tn * BN)
    }

    /// Shared memory bytes: `As[BK][AS_STRIDE]` then `Bs[BK][BN]` (then, with split-K, a
    /// 16-byte slot for the "last block" flag).
    pub fn shared_bytes(&self) -> u32 {
        let tiles = (BK * AS_STRIDE + BK * BN) * self.dtype.size_of() as u64;
        (tiles + if self.ksplit > 1 { 16 } else { 0 }) as u32
    }

    /// The blocks' work items: `tiles * ksplit` (item `w`: tile `w / ksplit`, part
    /// `w % ksplit`).
    pub fn items(&self) -> u64 {
        self.tiles() * self.ksplit
    }

    /// The contracted extent of one split-K part, a multiple of `BK` (part `p` takes
    /// `[p * kchunk, min(k, (p + 1) * kchunk))`).
    pub fn kchunk(&self) -> u64 {
        self.k.div_ceil(BK).div_ceil(self.ksplit) * BK
    }

    /// Whether operand `op` is inside at variable values `vars`.
    fn inside(&self, op: &Operand, vars: &[i64]) -> bool {
        op.guards.iter().all(|(e, lo, hi)| {
            let x = e.eval(vars, &[]);
            *lo <= x && x < *hi
        })
    }
}

/// Runs the tiled GEMM kernel on the CPU exactly as the PTX does it, thread by thread: per
/// output tile and `BK`-step, each of the [`GEMM_THREADS`] threads loads its
/// `BM*BK/threads` elements of the `lhs` tile (element `e = tid + s*threads`: `r = e % BK`,
/// `i = e / BK`) and of the `rhs` tile (`j = e % BN`, `r = e / BN`) into the shared tiles (0
/// outside the matrix or the operand's guards), then accumulates its `TM x TN` micro-tile
/// (rows `ty*TM..`, columns `tx*TN..`, `tx = tid % (BN/TN)`) with one fused multiply-add per
/// step in `r` order; finally it stores the elements inside the output. With split-K each
/// part does that over its chunk of `r` and writes its partial tile, and the tile's elements
/// are the sum of the parts' partials in part order (`0 + p0 + p1 + ...`), as the last block
/// of the tile computes them on the GPU. Checks that every
/// shared slot is written exactly once per step and every output element exactly once
/// overall, and that no access leaves its buffer.
pub fn emulate(g: &Gemm, bufs: &mut [kiln_ir::Data]) -> Result<(), String> {
    use kiln_ir::Data;
    let get = |d: &Data, i: i64| -> Result<f64, String> {
        usize::try_from(i)
            .ok()
            .filter(|&i| i < d.len())
            .map(|i| d.get_f64(i))
            .ok_or_else(|| format!("load at {i} outside the buffer"))
    };
    let f32_mode = g.dtype == DType::F32;
    let round = |x: f64| if f32_mode { x as f32 as f64 } else { x };
    let fma = |a: f64, b: f64, c: f64| {
        if f32_mode {
            (a as f32).mul_add(b as f32, c as f32) as f64
        } else {
            a.mul_add(b, c)
        }
    };
    let out_len = bufs[g.out.0 .0 as usize].len();
    let mut written = vec![0u32; out_len];
    let mut results: Vec<(usize, f64)> = Vec::new();
    let threads = u64::from(GEMM_THREADS);
    let kc = g.kchunk();
    for t in 0..g.tiles() {
        let (gg, i0, j0) = g.tile(t);
        let regs = (TM * TN) as usize;
        let mut total = vec![vec![0.0f64; regs]; threads as usize];
        for part in 0..g.ksplit {
            let mut acc = vec![vec![0.0f64; regs]; threads as usize];
            let mut k0 = part * kc;
            while k0 < g.k.min((part + 1) * kc) {
                let mut a_s = vec![f64::NAN; (BK * AS_STRIDE) as usize];
                let mut b_s = vec![f64::NAN; (BK * BN) as usize];
                let mut a_n = vec![0u32; (BK * AS_STRIDE) as usize];
                let mut b_n = vec![0u32; (BK * BN) as usize];
                for tid in 0..threads {
                    for s in 0..(BM * BK / threads) {
                        let e = tid + s * threads;
                        let (r, i) = (e % BK, e / BK);
                        let (gi, gr) = (i0 + i, k0 + r);
                        let mut v = 0.0;
                        if gi < g.m && gr < g.k {
                            let vars = g.var_values([gg, gi, 0, gr]);
                            if g.inside(&g.lhs, &vars) {
                                let at = g.lhs.index.eval(&vars, &[]);
                                v = get(&bufs[g.lhs.buf.0 as usize], at)?;
                            }
                        }
                        let slot = (r * AS_STRIDE + i) as usize;
                        a_s[slot] = v;
                        a_n[slot] += 1;
                    }
                    for s in 0..(BN * BK / threads) {
                        let e = tid + s * threads;
                        let (j, r) = (e % BN, e / BN);
                        let (gj, gr) = (j0 + j, k0 + r);
                        let mut v = 0.0;
                        if gj < g.n && gr < g.k {
                            let vars = g.var_values([gg, 0, gj, gr]);
                            if g.inside(&g.rhs, &vars) {
                                let at = g.rhs.index.eval(&vars, &[]);
                                v = get(&bufs[g.rhs.buf.0 as usize], at)?;
                            }
                        }
                        let slot = (r * BN + j) as usize;
                        b_s[slot] = v;
                        b_n[slot] += 1;
                    }
                }
                for r in 0..BK {
                    for i in 0..BM {
                        if a_n[(r * AS_STRIDE + i) as usize] != 1 {
                            return Err(format!(
                                "shared As[{r}][{i}] written {} times",
                                a_n[(r * AS_STRIDE + i) as usize]
                            ));
                        }
                    }
                    for j in 0..BN {
                        if b_n[(r * BN + j) as usize] != 1 {
                            return Err(format!(
                                "shared Bs[{r}][{j}] written {} times",
                                b_n[(r * BN + j) as usize]
                            ));
                        }
                    }
                }
                // Every tile element in exactly one thread's registers.
                let mut owned = vec![0u32; (BM * BN) as usize];
                for tid in 0..threads {
                    let (r0, c0) = acc_base(tid, g.tf32);
                    for n in 0..TM * TN {
                        let (dr, dc) = acc_off(n, g.tf32);
                        let (row, col) = (r0 + dr, c0 + dc);
                        owned[(row * BN + col) as usize] += 1;
                        let c = &mut acc[tid as usize][n as usize];
                        if g.tf32 {
                            // m16n8k8: per 8-deep slice, the exact sum of 8 products of TF32
                            // values added to the f32 accumulator (the tensor core's internal
                            // order and rounding are not specified: tests compare loosely).
                            for kb in (0..BK).step_by(8) {
                                let s: f64 = (kb..kb + 8)
                                    .map(|kk| {
                                        let a = a_s[(kk * AS_STRIDE + row) as usize];
                                        let b = b_s[(kk * BN + col) as usize];
                                        f64::from(tf32_round(a as f32))
                                            * f64::from(tf32_round(b as f32))
                                    })
                                    .sum();
                                *c = round(*c + s);
                            }
                        } else {
                            for kk in 0..BK {
                                let a = a_s[(kk * AS_STRIDE + row) as usize];
                                let b = b_s[(kk * BN + col) as usize];
                                *c = fma(a, b, *c);
                            }
                        }
                    }
                }
                if let Some(i) = owned.iter().position(|&o| o != 1) {
                    return Err(format!("tile element {i} held by {} registers", owned[i]));
                }
                k0 += BK;
            }
            if g.ksplit == 1 {
                total = acc;
            } else {
                for (tt, a) in total.iter_mut().zip(&acc) {
                    for (t, a) in tt.iter_mut().zip(a) {
                        *t = if f32_mode {
                            f64::from(*t as f32 + *a as f32)
                        } else {
                            *t + a
                        };
                    }
                }
            }
        }
        let acc = total;
        for tid in 0..threads {
            let (r0, c0) = acc_base(tid, g.tf32);
            for n in 0..TM * TN {
                {
                    let (dr, dc) = acc_off(n, g.tf32);
                    let (gi, gj) = (i0 + r0 + dr, j0 + c0 + dc);
                    if gi < g.m && gj < g.n {
                        let vars = g.var_values([gg, gi, gj, 0]);
                        let at = g.out.1.eval(&vars, &[]);
                        let slot = usize::try_from(at)
                            .ok()
                            .filter(|&s| s < out_len)
                            .ok_or_else(|| format!("store at {at} outside the output"))?;
                        written[slot] += 1;
                        results.push((slot, round(acc[tid as usize][n as usize])));
                    }
                }
            }
        }
    }
    if let Some(i) = written.iter().position(|&w| w != 1) {
        return Err(format!("output element {i} written {} times", written[i]));
    }
    let out = &mut bufs[g.out.0 .0 as usize];
    for (slot, v) in results {
        match out {
            Data::F32(o) => o[slot] = v as f32,
            Data::F64(o) => o[slot] = v,
            _ => return Err("a GEMM output that is not float".into()),
        }
    }
    Ok(())
}
