//! Lowering a scheduled node to a kernel: loop nests and index arithmetic.
//!
//! A kernel computes one node (its *root*) into the root's buffer. The root's value at an
//! index is built by [`Lower::eval`], which walks the inlined producers: elementwise ops
//! become scalar ops at the same index, movement ops rewrite the index (reshape through the
//! flat row-major offset, permute/expand/slice affinely, pad and concat with guards), and a
//! node with a buffer becomes a load. Values are memoised on (node, index, guard), so a node
//! used twice at the same index inside one kernel is computed once.
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
    let mut l = Lower {
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
    };
    let node = graph.node(canon.order[root]);
    let opname = node.op.name();
    let body = match &node.op {
        Op::Reduce { op, axes } => l.reduce(*op, axes)?,
        Op::MatMul | Op::Conv(_) | Op::ConvTranspose(_) | Op::ConvWeight { .. } => {
            Body::Call(l.contraction()?)
        }
        _ => l.elementwise()?,
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

    fn constant(&mut self, s: Scalar) -> Val {
        self.emit(s.dtype(), KOp::Const(s))
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

    /// Loop variables over `shape` (none for unit axes): the index per axis.
    fn loops_over(&mut self, shape: &[usize]) -> (Vec<Ix>, Vec<Var>) {
        let mut idx = Vec::new();
        let mut vars = Vec::new();
        for &d in shape {
            if d == 1 {
                idx.push(Ix::constant(0));
            } else {
                let v = self.new_var(d);
                idx.push(Ix::var(v));
                vars.push(v);
            }
        }
        (idx, vars)
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
                self.emit(ty.dtype, KOp::Select(c, x, y))
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
                self.emit(ty.dtype, KOp::Select(cond, v, p))
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
                    acc = self.emit(ty.dtype, KOp::Select(c, v, acc));
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
    fn elementwise(&mut self) -> Result<Body> {
        let shape = self.ty(self.root).shape.clone();
        let out = self.buf(self.root, Access::Write);
        let (idx, vars) = self.loops_over(&shape);
        let v = self.eval(self.root, Form::Multi(idx.clone()), None)?;
        let index = self.to_flat(&Form::Multi(idx), &shape);
        self.body.push(Stmt::Store {
            buf: out,
            index,
            value: v,
        });
        let body = std::mem::take(&mut self.body);
        Ok(Body::Loops(Self::parallel(self.wrap(&vars, body))))
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
        self.memo.clear();
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
        let output = self.buf(self.root, Access::Write);
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
