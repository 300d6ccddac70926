//! Lowering a scheduled node to a kernel: loop nests and index arithmetic.
//!
//! A kernel computes one node (its *root*) into the root's buffer. The root's value at an
//! index is built by [`Lower::eval`], which walks the inlined producers: elementwise ops
//! become scalar ops at the same index, movement ops rewrite the index (reshape through the
//! flat row-major offset, permute/expand/slice affinely, pad and concat with guards), and a
//! node with a buffer becomes a load. Values are memoised on (node, index, guard), so a node
//! used twice at the same index inside one kernel is computed once.
//!
//! An elementwise kernel whose indices divide a loop variable by a small constant (the
//! gradient of a strided slice, `pad(slice(reshape(pad(reshape(g)))))`, summed over a
//! pooling window) is lowered a second time with that loop split into residue classes of the
//! divisor, and the cheaper of the two is kept: in each class the divisions are constants, so
//! each output element reads the one term that reaches it, without guards.
//!
//! Reductions use one of two loop orders, chosen so that the innermost loop is contiguous:
//! - *accumulator*: when the last (non-unit) axis is reduced, loops over the kept axes
//!   enclose an accumulator and loops over the reduced axes (`sum` over a row);
//! - *in place*: when the last axis is kept, the output block is initialised and the source is
//!   walked in row-major order, folding each element into the output (`sum` over the batch).
//!   The leading kept axes enclose both, so the outer loop can still be split across threads.

use crate::canon::Canon;
use crate::kernel::*;
use crate::schedule::{Placement, Schedule};
use kiln_ir::shape::{numel, strides};
use kiln_ir::{Data, Graph, IrError, Literal, Op, Result, TensorType};
use std::collections::HashMap;

/// A kernel and the canonical node whose buffer backs each of its parameters.
pub struct Lowered {
    pub kernel: Kernel,
    /// For each parameter, the node owning the buffer.
    pub args: Vec<usize>,
    /// The nodes computed inside this kernel (the root and its inlined producers).
    pub fused: Vec<usize>,
}

/// An index into a node's value: one expression per axis, or the flat row-major offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Form {
    Multi(Vec<Ix>),
    Flat(Ix),
}

struct Lower<'a> {
    graph: &'a Graph,
    canon: &'a Canon,
    sched: &'a Schedule,
    labels: &'a [usize],
    root: usize,
    params: Vec<Param>,
    args: Vec<usize>,
    vals: Vec<DType>,
    vars: Vec<u64>,
    defs: Vec<Option<Ix>>,
    /// Derived variables already made, by definition and extent.
    derived: HashMap<(Ix, usize), Var>,
    accs: Vec<AccDecl>,
    body: Vec<Stmt>,
    memo: HashMap<(usize, Form, Option<Val>), Val>,
    fused: Vec<usize>,
    /// Constants made in the current scope, by type and bits.
    consts: HashMap<(u8, u64), Val>,
    /// The loop variable of each axis of an elementwise kernel's nest (unsplit axes only).
    loop_axes: Vec<(usize, Var)>,
}

fn internal(msg: String) -> IrError {
    IrError::Eval(format!("internal error in the scheduler: {msg}"))
}

/// Lowers the kernel of node `root` (canonical number); `labels` numbers nodes for display.
pub fn lower(
    graph: &Graph,
    canon: &Canon,
    sched: &Schedule,
    root: usize,
    labels: &[usize],
) -> Result<Lowered> {
    let new = || Lower {
        graph,
        canon,
        sched,
        labels,
        root,
        params: Vec::new(),
        args: Vec::new(),
        vals: Vec::new(),
        vars: Vec::new(),
        defs: Vec::new(),
        derived: HashMap::new(),
        accs: Vec::new(),
        body: Vec::new(),
        memo: HashMap::new(),
        fused: vec![root],
        consts: HashMap::new(),
        loop_axes: Vec::new(),
    };
    let mut l = new();
    let node = graph.node(canon.order[root]);
    let opname = node.op.name();
    let body = match &node.op {
        Op::Reduce { op, axes } => l.reduce(*op, axes)?,
        Op::MatMul | Op::Conv(_) | Op::ConvTranspose(_) | Op::ConvWeight { .. } => {
            Body::Call(l.contraction()?)
        }
        // An epilogue runs on flat runs of the contraction's output: one loop over the
        // elements in row-major order (see `Lower::flat`).
        _ if sched.epilogue_of(root).is_some() => l.flat()?,
        _ => {
            let plain = l.elementwise(&[])?;
            let split = l.residue_splits(&plain);
            if split.iter().any(|&d| d > 1) {
                let mut s = new();
                let body = s.elementwise(&split)?;
                // Splitting copies the body: take it only when that removes a good part of
                // the work (the strided-slice gradient pattern removes most of it).
                if body_cost(&body, &s.defs) < 0.75 * body_cost(&plain, &l.defs) {
                    l = s;
                    body
                } else {
                    plain
                }
            } else {
                plain
            }
        }
    };
    let kernel = Kernel {
        name: format!(
            "k{}_{}",
            sched.kernels.iter().position(|&k| k == root).unwrap_or(0),
            opname
        ),
        params: l.params,
        vals: l.vals,
        vars: l.vars,
        defs: l.defs,
        accs: l.accs,
        body,
    };
    l.fused.sort();
    l.fused.dedup();
    Ok(Lowered {
        kernel,
        args: l.args,
        fused: l.fused,
    })
}

/// The single element of a constant of at most one element, as a scalar.
fn scalar_of(lit: &Literal) -> Scalar {
    if lit.numel() == 0 {
        return Scalar::from_f64(lit.dtype(), 0.0);
    }
    match &lit.data {
        Data::F32(v) => Scalar::F32(v[0]),
        Data::F64(v) => Scalar::F64(v[0]),
        Data::I64(v) => Scalar::I64(v[0]),
        Data::Bool(v) => Scalar::Bool(v[0]),
    }
}

impl Lower<'_> {
    fn ty(&self, i: usize) -> &TensorType {
        &self.graph.node(self.canon.order[i]).ty
    }

    fn operands(&self, i: usize) -> Vec<usize> {
        self.graph
            .operands(self.canon.order[i])
            .iter()
            .map(|o| self.canon.number[o])
            .collect()
    }

    fn new_var(&mut self, extent: usize) -> Var {
        self.vars.push(extent as u64);
        self.defs.push(None);
        Var(self.vars.len() as u32 - 1)
    }

    /// `e`, known to lie in `0..extent` wherever the current guard holds: itself if its range
    /// already says so, else a derived variable with that range (0 if `extent` is 1).
    fn assume(&mut self, e: Ix, extent: usize) -> Ix {
        let (lo, hi) = e.range(&self.vars);
        if lo >= 0 && hi < extent as i64 {
            return e;
        }
        if extent <= 1 {
            return Ix::constant(0);
        }
        // `e = g*w + cm` with `g` the common factor of its coefficients and `0 <= cm < g`:
        // name `w` rather than `e`, so that divisions and remainders of `e` by `g` (a
        // strided slice's gradient seen through a reshape) simplify. Under the guard
        // `0 <= e < extent` exactly when `0 <= w < ceil((extent - cm) / g)`.
        let g = e.terms.iter().fold(0i64, |g, (_, k)| gcd(g, *k));
        let cm = if g > 1 { e.c.rem_euclid(g) } else { 0 };
        if g > 1 && (cm as usize) < extent {
            let w_def = Ix {
                terms: e.terms.iter().map(|(a, k)| (a.clone(), k / g)).collect(),
                c: e.c.div_euclid(g),
            };
            let w_ext = (extent - cm as usize).div_ceil(g as usize);
            let w = self.derived_var(w_def, w_ext);
            return w.scale(g).add_const(cm);
        }
        self.derived_var(e, extent)
    }

    /// A derived variable defined as `e`, assumed in `0..extent` (0 if `extent` is 1).
    fn derived_var(&mut self, e: Ix, extent: usize) -> Ix {
        if extent <= 1 {
            return Ix::constant(0);
        }
        if let Some(&v) = self.derived.get(&(e.clone(), extent)) {
            return Ix::var(v);
        }
        self.vars.push(extent as u64);
        self.defs.push(Some(e.clone()));
        let v = Var(self.vars.len() as u32 - 1);
        self.derived.insert((e, extent), v);
        Ix::var(v)
    }

    fn emit(&mut self, dtype: DType, op: KOp) -> Val {
        let v = Val(self.vals.len() as u32);
        self.vals.push(dtype);
        self.body.push(Stmt::Let(v, op));
        v
    }

    /// A constant, made once per scope (see [`Lower::reset_scope`]).
    fn constant(&mut self, s: Scalar) -> Val {
        let key = match s {
            Scalar::F32(x) => (0u8, u64::from(x.to_bits())),
            Scalar::F64(x) => (1, x.to_bits()),
            Scalar::I64(x) => (2, x as u64),
            Scalar::Bool(x) => (3, u64::from(x)),
        };
        if let Some(&v) = self.consts.get(&key) {
            return v;
        }
        let v = self.emit(s.dtype(), KOp::Const(s));
        self.consts.insert(key, v);
        v
    }

    /// `c ? a : b`, or `a` when both sides are the same value (a pad around a value that is
    /// already the padding constant, as in the residue copies of a strided-slice gradient).
    fn select(&mut self, dtype: DType, c: Val, a: Val, b: Val) -> Val {
        if a == b {
            return a;
        }
        self.emit(dtype, KOp::Select(c, a, b))
    }

    /// Forgets memoised values and constants: the statements emitted next go to a new scope
    /// (another loop nest), where the values of the previous one are not defined.
    fn reset_scope(&mut self) {
        self.memo.clear();
        self.consts.clear();
    }

    /// The parameter for the buffer of node `owner`, created on first use.
    fn buf(&mut self, owner: usize, access: Access) -> Buf {
        if let Some(p) = self.args.iter().position(|&a| a == owner) {
            let cur = self.params[p].access;
            if cur != access {
                self.params[p].access = Access::ReadWrite;
            }
            return Buf(p as u32);
        }
        let ty = self.ty(owner).clone();
        let place = match self.sched.place[owner] {
            Placement::Bound => "bound",
            Placement::Const => "const",
            _ => "",
        };
        self.params.push(Param {
            dtype: ty.dtype,
            len: ty.numel() as u64,
            access,
            label: format!("%{} {ty} {place}", self.labels[owner])
                .trim_end()
                .to_string(),
        });
        self.args.push(owner);
        Buf(self.params.len() as u32 - 1)
    }

    fn to_flat(&self, form: &Form, shape: &[usize]) -> Ix {
        match form {
            Form::Flat(f) => f.clone(),
            Form::Multi(idx) => {
                let st = strides(shape);
                let mut f = Ix::constant(0);
                for (i, s) in idx.iter().zip(st) {
                    f = f.add(&i.scale(s as i64));
                }
                f
            }
        }
    }

    fn to_multi(&self, form: &Form, shape: &[usize]) -> Vec<Ix> {
        match form {
            Form::Multi(idx) => idx.clone(),
            Form::Flat(f) => {
                let st = strides(shape);
                shape
                    .iter()
                    .zip(st)
                    .enumerate()
                    .map(|(k, (&d, s))| {
                        if d <= 1 {
                            Ix::constant(0)
                        } else if k == 0 {
                            f.div(s as i64, &self.vars)
                        } else {
                            f.div(s as i64, &self.vars).rem(d as i64, &self.vars)
                        }
                    })
                    .collect()
            }
        }
    }

    /// Wraps `body` in loops over `vars`, outermost first.
    fn wrap(&self, vars: &[Var], body: Vec<Stmt>) -> Vec<Stmt> {
        let mut body = body;
        for &v in vars.iter().rev() {
            body = vec![Stmt::Loop(Loop {
                var: v,
                extent: self.vars[v.0 as usize],
                parallel: false,
                vector: 1,
                body,
            })];
        }
        body
    }

    /// Marks the single outermost loop of `stmts` parallel.
    fn parallel(mut stmts: Vec<Stmt>) -> Vec<Stmt> {
        if let [Stmt::Loop(l)] = stmts.as_mut_slice() {
            l.parallel = true;
        }
        stmts
    }

    fn and(&mut self, a: Option<Val>, b: Val) -> Val {
        match a {
            Some(a) => self.emit(DType::Bool, KOp::And(a, b)),
            None => b,
        }
    }

    /// Node `i`'s value at `form`, loads guarded by `guard`.
    fn eval(&mut self, i: usize, form: Form, guard: Option<Val>) -> Result<Val> {
        let key = (i, form, guard);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let (_, form, _) = &key;
        let form = form.clone();
        let v = self.eval_uncached(i, form, guard)?;
        self.memo.insert(key, v);
        Ok(v)
    }

    fn eval_uncached(&mut self, i: usize, form: Form, guard: Option<Val>) -> Result<Val> {
        let ty = self.ty(i).clone();
        if i != self.root {
            if let Some(owner) = self.sched.owner(i) {
                if ty.numel() == 0 {
                    return Ok(self.constant(Scalar::from_f64(ty.dtype, 0.0)));
                }
                let index = self.to_flat(&form, &ty.shape);
                let buf = self.buf(owner, Access::Read);
                return Ok(self.emit(ty.dtype, KOp::Load { buf, index, guard }));
            }
        }
        self.fused.push(i);
        let node = self.graph.node(self.canon.order[i]);
        let ops = self.operands(i);
        let shape = &ty.shape;
        Ok(match &node.op {
            Op::Const(lit) => {
                let s = scalar_of(lit);
                self.constant(s)
            }
            Op::Full { value, .. } => self.constant(Scalar::from_f64(ty.dtype, *value)),
            Op::Unary(u) => {
                let a = self.eval(ops[0], form, guard)?;
                self.emit(ty.dtype, KOp::Unary(*u, a))
            }
            Op::Binary(b) => {
                let x = self.eval(ops[0], form.clone(), guard)?;
                let y = self.eval(ops[1], form, guard)?;
                self.emit(ty.dtype, KOp::Binary(*b, x, y))
            }
            Op::Compare(c) => {
                let x = self.eval(ops[0], form.clone(), guard)?;
                let y = self.eval(ops[1], form, guard)?;
                self.emit(DType::Bool, KOp::Compare(*c, x, y))
            }
            Op::Where => {
                let c = self.eval(ops[0], form.clone(), guard)?;
                let x = self.eval(ops[1], form.clone(), guard)?;
                let y = self.eval(ops[2], form, guard)?;
                self.select(ty.dtype, c, x, y)
            }
            Op::Cast(d) => {
                let x = self.eval(ops[0], form, guard)?;
                if self.ty(ops[0]).dtype == *d {
                    x
                } else {
                    self.emit(*d, KOp::Cast(*d, x))
                }
            }
            Op::Detach => self.eval(ops[0], form, guard)?,
            Op::Reshape(_) => {
                let flat = self.to_flat(&form, shape);
                self.eval(ops[0], Form::Flat(flat), guard)?
            }
            Op::Permute(perm) => {
                let m = self.to_multi(&form, shape);
                let mut src = vec![Ix::constant(0); m.len()];
                for (k, &p) in perm.iter().enumerate() {
                    src[p] = m[k].clone();
                }
                self.eval(ops[0], Form::Multi(src), guard)?
            }
            Op::Expand(_) => {
                let m = self.to_multi(&form, shape);
                let src_shape = self.ty(ops[0]).shape.clone();
                let src = m
                    .into_iter()
                    .zip(&src_shape)
                    .map(|(ix, &d)| if d == 1 { Ix::constant(0) } else { ix })
                    .collect();
                self.eval(ops[0], Form::Multi(src), guard)?
            }
            Op::Slice(axes) => {
                let m = self.to_multi(&form, shape);
                let src = m
                    .iter()
                    .zip(axes)
                    .map(|(ix, a)| ix.scale(a.step as i64).add_const(a.start as i64))
                    .collect();
                self.eval(ops[0], Form::Multi(src), guard)?
            }
            Op::Pad { lo, hi, value } => {
                let m = self.to_multi(&form, shape);
                let src_shape = self.ty(ops[0]).shape.clone();
                let pad = Scalar::from_f64(ty.dtype, *value);
                let mut conds = Vec::new();
                for k in 0..m.len() {
                    if lo[k] == 0 && hi[k] == 0 {
                        continue;
                    }
                    let (a, b) = (lo[k] as i64, (lo[k] + src_shape[k]) as i64);
                    let (rlo, rhi) = m[k].range(&self.vars);
                    if rhi < a || rlo >= b {
                        return Ok(self.constant(pad));
                    }
                    if !(a <= rlo && rhi < b) {
                        conds.push((m[k].clone(), a, b));
                    }
                }
                let mut src: Vec<Ix> = m
                    .iter()
                    .zip(lo)
                    .map(|(ix, &l)| ix.add_const(-(l as i64)))
                    .collect();
                if !conds.is_empty() {
                    // Under the guard each source index is inside its axis.
                    for k in 0..src.len() {
                        src[k] = self.assume(src[k].clone(), src_shape[k]);
                    }
                }
                if conds.is_empty() {
                    return self.eval(ops[0], Form::Multi(src), guard);
                }
                let mut cond: Option<Val> = None;
                for (index, lo, hi) in conds {
                    let c = self.emit(DType::Bool, KOp::InRange { index, lo, hi });
                    cond = Some(self.and(cond, c));
                }
                let cond = cond.expect("at least one condition");
                let g = self.and(guard, cond);
                let v = self.eval(ops[0], Form::Multi(src), Some(g))?;
                let p = self.constant(pad);
                self.select(ty.dtype, cond, v, p)
            }
            Op::Concat(axis) => {
                let m = self.to_multi(&form, shape);
                let (rlo, rhi) = m[*axis].range(&self.vars);
                let mut parts = Vec::new();
                let mut off = 0i64;
                for &o in &ops {
                    let len = self.ty(o).shape[*axis] as i64;
                    let (a, b) = (off, off + len);
                    off += len;
                    if rhi < a || rlo >= b {
                        continue;
                    }
                    let mut src = m.clone();
                    src[*axis] = m[*axis].add_const(-a);
                    if a <= rlo && rhi < b {
                        return self.eval(o, Form::Multi(src), guard);
                    }
                    parts.push((o, src, a, b));
                }
                let mut chosen: Vec<(Val, Val)> = Vec::new();
                for (o, mut src, a, b) in parts {
                    src[*axis] = self.assume(src[*axis].clone(), (b - a) as usize);
                    let index = m[*axis].clone();
                    let c = self.emit(
                        DType::Bool,
                        KOp::InRange {
                            index,
                            lo: a,
                            hi: b,
                        },
                    );
                    let g = self.and(guard, c);
                    let v = self.eval(o, Form::Multi(src), Some(g))?;
                    chosen.push((c, v));
                }
                let Some(&(_, mut acc)) = chosen.last() else {
                    if ty.numel() == 0 {
                        // An empty result: no element is ever computed.
                        return Ok(self.constant(Scalar::from_f64(ty.dtype, 0.0)));
                    }
                    return Err(internal(format!(
                        "concat %{i}: index range selects no operand"
                    )));
                };
                for &(c, v) in chosen.iter().rev().skip(1) {
                    acc = self.select(ty.dtype, c, v, acc);
                }
                acc
            }
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Reduce { .. }
            | Op::MatMul
            | Op::Conv(_)
            | Op::ConvTranspose(_)
            | Op::ConvWeight { .. } => {
                return Err(internal(format!(
                    "%{i} ({}) has no buffer but is not computable inline",
                    node.op.name()
                )))
            }
        })
    }

    /// `out[idx] = root(idx)` over the root's shape.
    ///
    /// `split[k] = d > 1` runs axis `k` as `d` loops, one per residue `r` of the index
    /// modulo `d` (`i = d*q + r`, `q` over `0..ceil((extent - r) / d)`), each with its own
    /// copy of the body: divisions and remainders by `d` of the index become constants, so
    /// the guards of a strided slice's gradient are decided at compile time (with step 2,
    /// three of the four terms of a max-pool gradient vanish from each copy).
    fn elementwise(&mut self, split: &[usize]) -> Result<Body> {
        let shape = self.ty(self.root).shape.clone();
        let out = self.buf(self.root, Access::Write);
        let body = self.nest(&shape, split, out, Vec::new())?;
        Ok(Body::Loops(Self::parallel(body)))
    }

    /// `out[i] = root(i)` for the flat row-major index `i` in one parallel loop, so that the
    /// kernel can run on any range of elements: the form of an epilogue, which the CPU calls
    /// on each finished run of its contraction's output. Per-axis indices, where needed (a
    /// bias's channel), are divisions and remainders of `i`.
    fn flat(&mut self) -> Result<Body> {
        let n = self.ty(self.root).numel();
        let out = self.buf(self.root, Access::Write);
        let v = self.new_var(n);
        let value = self.eval(self.root, Form::Flat(Ix::var(v)), None)?;
        self.body.push(Stmt::Store {
            buf: out,
            index: Ix::var(v),
            value,
        });
        let body = std::mem::take(&mut self.body);
        Ok(Body::Loops(Self::parallel(self.wrap(&[v], body))))
    }

    /// The loops over axes `idx.len()..` of `shape` and the body storing the root.
    fn nest(
        &mut self,
        shape: &[usize],
        split: &[usize],
        out: Buf,
        idx: Vec<Ix>,
    ) -> Result<Vec<Stmt>> {
        let k = idx.len();
        if k == shape.len() {
            // Each copy of the body computes its values afresh: memoised values of another
            // copy are out of scope here.
            self.reset_scope();
            let v = self.eval(self.root, Form::Multi(idx.clone()), None)?;
            let index = self.to_flat(&Form::Multi(idx), shape);
            self.body.push(Stmt::Store {
                buf: out,
                index,
                value: v,
            });
            return Ok(std::mem::take(&mut self.body));
        }
        let e = shape[k];
        let d = split.get(k).copied().unwrap_or(1).max(1);
        if e == 1 {
            let mut idx = idx;
            idx.push(Ix::constant(0));
            return self.nest(shape, split, out, idx);
        }
        if d == 1 {
            let v = self.new_var(e);
            self.loop_axes.push((k, v));
            let mut idx = idx;
            idx.push(Ix::var(v));
            let body = self.nest(shape, split, out, idx)?;
            return Ok(self.wrap(&[v], body));
        }
        let mut stmts = Vec::new();
        for r in 0..d.min(e) {
            let n = (e - r).div_ceil(d);
            let mut sub = idx.clone();
            if n == 1 {
                sub.push(Ix::constant(r as i64));
                stmts.extend(self.nest(shape, split, out, sub)?);
            } else {
                let q = self.new_var(n);
                sub.push(Ix::var(q).scale(d as i64).add_const(r as i64));
                let body = self.nest(shape, split, out, sub)?;
                stmts.extend(self.wrap(&[q], body));
            }
        }
        Ok(stmts)
    }

    /// For each axis of the elementwise kernel `body` (just lowered without splits), the
    /// modulus by which splitting it into residue classes would make the divisions and
    /// remainders of its index constant (1: do not split). The outermost non-unit axis stays
    /// whole, so the kernel keeps its single parallel loop.
    fn residue_splits(&self, body: &Body) -> Vec<usize> {
        let rank = self.ty(self.root).shape.len();
        let mut split = vec![1usize; rank];
        let Body::Loops(stmts) = body else {
            return split;
        };
        let mut divs = Vec::new();
        walk_indices(stmts, &mut |ix| collect_divs(ix, &self.defs, &mut divs));
        let outer = self.loop_axes.first().map(|&(k, _)| k);
        for &(k, v) in &self.loop_axes {
            if Some(k) == outer {
                continue;
            }
            let mut want = 1i64;
            for (x, d) in &divs {
                if let Some(c) = x.linear_coef(v) {
                    if c != 0 && c % d != 0 {
                        let m = d / gcd(c, *d);
                        want = want / gcd(want, m) * m;
                    }
                }
            }
            if (2..=4).contains(&want) {
                split[k] = want as usize;
            }
        }
        // Bound the copies of the body.
        let mut copies = 1usize;
        for s in split.iter_mut() {
            if copies * *s > 16 {
                *s = 1;
            }
            copies *= *s;
        }
        split
    }
    fn reduce(&mut self, op: ReduceOp, axes: &[usize]) -> Result<Body> {
        let src = self.operands(self.root)[0];
        let src_shape = self.ty(src).shape.clone();
        let out_ty = self.ty(self.root).clone();
        let out = self.buf(self.root, Access::Write);
        let reduced = |k: usize| axes.contains(&k);
        let live: Vec<usize> = (0..src_shape.len())
            .filter(|&k| src_shape[k] != 1)
            .collect();
        let last_reduced = live.last().is_none_or(|&k| reduced(k));
        let combine = match op {
            ReduceOp::Sum => BinaryOp::Add,
            ReduceOp::Max => BinaryOp::Max,
        };
        let dtype = out_ty.dtype;
        if last_reduced {
            // Accumulator form: kept loops { init; reduced loops { update }; store }.
            let mut idx = vec![Ix::constant(0); src_shape.len()];
            let mut kept = Vec::new();
            let mut red = Vec::new();
            for &k in &live {
                let v = self.new_var(src_shape[k]);
                idx[k] = Ix::var(v);
                if reduced(k) {
                    red.push(v);
                } else {
                    kept.push(v);
                }
            }
            let acc = Acc(self.accs.len() as u32);
            self.accs.push(AccDecl { op, dtype });
            let x = self.eval(src, Form::Multi(idx.clone()), None)?;
            self.body.push(Stmt::AccUpdate(acc, x));
            let inner = std::mem::take(&mut self.body);
            let mut stmts = vec![Stmt::AccInit(acc)];
            stmts.extend(self.wrap(&red, inner));
            let r = self.emit(dtype, KOp::ReadAcc(acc));
            let out_idx: Vec<Ix> = idx
                .iter()
                .enumerate()
                .map(|(k, ix)| {
                    if reduced(k) {
                        Ix::constant(0)
                    } else {
                        ix.clone()
                    }
                })
                .collect();
            let index = self.to_flat(&Form::Multi(out_idx), &out_ty.shape);
            let tail = std::mem::take(&mut self.body);
            stmts.extend(tail);
            stmts.push(Stmt::Store {
                buf: out,
                index,
                value: r,
            });
            let nest = self.wrap(&kept, stmts);
            return Ok(Body::Loops(if kept.is_empty() {
                nest
            } else {
                Self::parallel(nest)
            }));
        }
        // In-place form: prefix loops { init block; rest loops { out = op(out, x) } }.
        let prefix: Vec<usize> = live.iter().copied().take_while(|&k| !reduced(k)).collect();
        let rest: Vec<usize> = live[prefix.len()..].to_vec();
        let mut idx = vec![Ix::constant(0); src_shape.len()];
        let mut pvars = Vec::new();
        for &k in &prefix {
            let v = self.new_var(src_shape[k]);
            idx[k] = Ix::var(v);
            pvars.push(v);
        }
        let out_index = |this: &Self, idx: &[Ix]| {
            let o: Vec<Ix> = idx
                .iter()
                .enumerate()
                .map(|(k, ix)| {
                    if reduced(k) {
                        Ix::constant(0)
                    } else {
                        ix.clone()
                    }
                })
                .collect();
            this.to_flat(&Form::Multi(o), &out_ty.shape)
        };
        // Init: the kept axes of `rest`.
        let mut init_idx = idx.clone();
        let mut ivars = Vec::new();
        for &k in rest.iter().filter(|&&k| !reduced(k)) {
            let v = self.new_var(src_shape[k]);
            init_idx[k] = Ix::var(v);
            ivars.push(v);
        }
        let id = self.constant(Scalar::identity(op, dtype));
        let index = out_index(self, &init_idx);
        self.body.push(Stmt::Store {
            buf: out,
            index,
            value: id,
        });
        let init_body = std::mem::take(&mut self.body);
        let mut stmts = self.wrap(&ivars, init_body);
        // Accumulate over all of `rest`.
        self.reset_scope();
        let mut acc_idx = idx.clone();
        let mut avars = Vec::new();
        for &k in &rest {
            let v = self.new_var(src_shape[k]);
            acc_idx[k] = Ix::var(v);
            avars.push(v);
        }
        let index = out_index(self, &acc_idx);
        let out_rw = self.buf(self.root, Access::ReadWrite);
        let cur = self.emit(
            dtype,
            KOp::Load {
                buf: out_rw,
                index: index.clone(),
                guard: None,
            },
        );
        let x = self.eval(src, Form::Multi(acc_idx), None)?;
        let n = self.emit(dtype, KOp::Binary(combine, cur, x));
        self.body.push(Stmt::Store {
            buf: out_rw,
            index,
            value: n,
        });
        let acc_body = std::mem::take(&mut self.body);
        stmts.extend(self.wrap(&avars, acc_body));
        let nest = self.wrap(&pvars, stmts);
        Ok(Body::Loops(if pvars.is_empty() {
            nest
        } else {
            Self::parallel(nest)
        }))
    }

    fn contraction(&mut self) -> Result<Call> {
        let node = self.graph.node(self.canon.order[self.root]);
        let ops = self.operands(self.root);
        let mut inputs = [Buf(0); 2];
        for (k, &o) in ops.iter().enumerate().take(2) {
            let owner = self.sched.owner(o).ok_or_else(|| {
                internal(format!(
                    "operand %{o} of contraction %{} has no buffer",
                    self.root
                ))
            })?;
            inputs[k] = self.buf(owner, Access::Read);
        }
        // Into its epilogue's buffer when fused (same shape and dtype).
        let owner = self.sched.owner(self.root).unwrap_or(self.root);
        let output = self.buf(owner, Access::Write);
        let (a, b) = (self.ty(ops[0]).shape.clone(), self.ty(ops[1]).shape.clone());
        let y = node.ty.shape.clone();
        let op = match &node.op {
            Op::MatMul => {
                let r = a.len();
                Contraction::MatMul {
                    batch: numel(&a[..r - 2]),
                    m: a[r - 2],
                    k: a[r - 1],
                    n: b[r - 1],
                }
            }
            Op::Conv(p) => Contraction::Conv {
                x: a,
                w: b,
                y,
                params: p.clone(),
            },
            Op::ConvTranspose(p) => Contraction::ConvTranspose {
                x: a,
                w: b,
                y,
                params: p.clone(),
            },
            Op::ConvWeight { params, .. } => Contraction::ConvWeight {
                x: a,
                dy: b,
                dw: y,
                params: params.clone(),
            },
            other => return Err(internal(format!("{} is not a contraction", other.name()))),
        };
        Ok(Call {
            op,
            dtype: node.ty.dtype,
            inputs,
            output,
        })
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a as i64
}

/// `e` with derived variables replaced by their definitions.
fn expand(e: &Ix, defs: &[Option<Ix>]) -> Ix {
    let mut out = Ix::constant(e.c);
    for (a, k) in &e.terms {
        let t = match a {
            Atom::Var(v) => match defs.get(v.0 as usize) {
                Some(Some(d)) => expand(d, defs),
                _ => Ix::var(*v),
            },
            other => Ix {
                terms: vec![(other.clone(), 1)],
                c: 0,
            },
        };
        out = out.add(&t.scale(*k));
    }
    out
}

/// Every division and remainder `(x, d)` in `e`, through derived variables, `x` expanded.
fn collect_divs(e: &Ix, defs: &[Option<Ix>], out: &mut Vec<(Ix, i64)>) {
    for (a, _) in &e.terms {
        match a {
            Atom::Var(v) => {
                if let Some(Some(d)) = defs.get(v.0 as usize) {
                    collect_divs(d, defs, out);
                }
            }
            Atom::Div(x, d) | Atom::Mod(x, d) => {
                out.push((expand(x, defs), *d));
                collect_divs(x, defs, out);
            }
        }
    }
}

/// Calls `f` on every index expression of `stmts`.
fn walk_indices(stmts: &[Stmt], f: &mut impl FnMut(&Ix)) {
    for s in stmts {
        match s {
            Stmt::Loop(l) => walk_indices(&l.body, f),
            Stmt::Let(_, KOp::Load { index, .. })
            | Stmt::Let(_, KOp::InRange { index, .. })
            | Stmt::Store { index, .. } => f(index),
            _ => {}
        }
    }
}

/// Divisions and remainders in `e`, through derived variables.
fn div_count(e: &Ix, defs: &[Option<Ix>]) -> f64 {
    let mut v = Vec::new();
    collect_divs(e, defs, &mut v);
    v.len() as f64
}

/// A rough per-run cost of a loop nest: statements times iterations, guarded loads and
/// divisions weighted as the JIT's code for them is longer.
fn body_cost(body: &Body, defs: &[Option<Ix>]) -> f64 {
    fn walk(stmts: &[Stmt], defs: &[Option<Ix>]) -> f64 {
        stmts
            .iter()
            .map(|s| match s {
                Stmt::Loop(l) => l.extent as f64 * walk(&l.body, defs),
                Stmt::Let(_, KOp::Load { index, guard, .. }) => {
                    1.0 + if guard.is_some() { 2.0 } else { 0.0 } + 2.0 * div_count(index, defs)
                }
                Stmt::Let(_, KOp::InRange { index, .. }) | Stmt::Store { index, .. } => {
                    1.0 + 2.0 * div_count(index, defs)
                }
                _ => 1.0,
            })
            .sum()
    }
    match body {
        Body::Loops(stmts) => walk(stmts, defs),
        Body::Call(_) => 0.0,
    }
}
