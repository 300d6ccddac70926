//! Algebraic simplification: local rewrites that remove work or canonicalise it.
//!
//! Each rule replaces a node by one of its operands or by one new node, and is exact with
//! respect to the interpreter under the default options (see the [module docs](super) for
//! what "exact" means and what [`PassOptions::no_signed_zeros`] adds). A *constant* below is
//! a `full`, or a `const` whose elements all have the same bits.
//!
//! | rule | note |
//! |---|---|
//! | `x + (-0.0)`, `x - 0.0`, `x * 1`, `x / 1`, `pow(x, 1)` -> `x` | exact for every float, NaN and infinities included |
//! | `x + 0.0` -> `x` | only with `no_signed_zeros` for floats (`-0.0 + 0.0 = 0.0`); always for `i64` |
//! | `x * -1`, `x / -1`, `-0.0 - x` -> `neg(x)` | `0.0 - x` only with `no_signed_zeros` |
//! | `x * 0` -> `0`, `x - x` -> `0`, `x == x` -> `true`, ... | `i64` (and `bool` comparisons) only: for floats `inf * 0` and `NaN - NaN` are NaN, and PyTorch users expect it to propagate |
//! | `max(x, x)`, `min(x, x)`, `where(c, x, x)` -> `x` | |
//! | `where(true, a, b)` -> `a`, `where(false, a, b)` -> `b`, `where(c, 1, 0)` -> `cast(c)` | the 0 must be `+0.0` (the cast gives `+0.0`) |
//! | `neg(neg(x))` -> `x` | |
//! | `cast(x)` to its own dtype -> `x`; `cast(cast(x))` -> `cast(x)` | the inner cast must be lossless (`f32 -> f64`, from `bool`) |
//! | reshape, permute, expand, slice, pad of the same op -> one op | pads only with the same fill value |
//! | `slice(pad(y))` -> a smaller `pad(y)` or a `slice(y)` | when the slice only trims padding, or only reads `y` |
//! | identity reshape, permute, expand, slice, pad, one-operand concat -> operand | |
//! | permute that keeps the order of the non-unit axes -> reshape | the same elements in the same order |
//! | empty operands of `concat` dropped | |
//! | `reduce_*` over size-1 axes -> those axes dropped; none left -> operand | float sums only with `no_signed_zeros` (`0.0 + -0.0 = 0.0`) when no axis is left |
//! | `reduce(reduce(x))` of one kind -> one reduce | `reduce_max`, and `reduce_sum` of `i64` (float sums round differently); only when the inner reduce has no other use, so no work is duplicated |
//!
//! Uniform operands of movement ops (`expand(full)` and the like) are the folder's job.
//! `detach` is left alone: see [`super::strip_detach()`].

use super::{add_like, replace, uniform, PassOptions, Scalar, Tags};
use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, CmpOp, Op, ReduceOp, SliceAxis, UnaryOp};
use crate::DType;

/// What a rule turns a node into.
enum Rewrite {
    /// An existing node computing the same value.
    Use(NodeId),
    /// A new node `op(operands)` (its type is inferred and must equal the old node's).
    New(Op, Vec<NodeId>),
}

/// Applies the rules to every node, operands first; returns the number of rewrites.
pub fn simplify(graph: &mut Graph, opts: &PassOptions) -> Result<usize> {
    let mut tags = Tags::new(graph);
    let mut rewrites = 0;
    for id in graph.topo_order()? {
        let mut cur = id;
        // A new node may simplify further (a composed permute that is the identity). Every
        // rule removes a node or an attribute's worth of work, so this ends; the bound is a
        // guard against a future rule that undoes another.
        for _ in 0..16 {
            if !graph.contains(cur) {
                break;
            }
            let Some(rw) = rule(graph, cur, opts) else {
                break;
            };
            rewrites += 1;
            match rw {
                Rewrite::Use(x) => {
                    replace(graph, &mut tags, cur, x);
                    break;
                }
                Rewrite::New(op, operands) => {
                    let new = add_like(graph, &mut tags, op, &operands, cur)?;
                    if graph.ty(new) != graph.ty(cur) {
                        return Err(IrError::Verify {
                            ctx: Box::new(graph.context(cur)),
                            msg: format!(
                                "internal error: simplify would replace a {} by a {} `{}`",
                                graph.ty(cur),
                                graph.ty(new),
                                graph.node(new).op.name()
                            ),
                        });
                    }
                    replace(graph, &mut tags, cur, new);
                    cur = new;
                }
            }
        }
    }
    Ok(rewrites)
}

/// The first rule that applies to `id`, if any.
fn rule(g: &Graph, id: NodeId, opts: &PassOptions) -> Option<Rewrite> {
    let node = g.node(id);
    let ops = g.operands(id);
    let ty = &node.ty;
    let nsz = opts.no_signed_zeros;
    let full = |value: f64| {
        Some(Rewrite::New(
            Op::Full {
                value,
                ty: ty.clone(),
            },
            vec![],
        ))
    };
    let neg = |x: NodeId| Some(Rewrite::New(Op::Unary(UnaryOp::Neg), vec![x]));
    let use_ = |x: NodeId| Some(Rewrite::Use(x));
    match &node.op {
        Op::Unary(UnaryOp::Neg) => match g.node(ops[0]).op {
            Op::Unary(UnaryOp::Neg) => use_(g.operands(ops[0])[0]),
            _ => None,
        },
        Op::Binary(b) => binary(g, *b, ops[0], ops[1], nsz, full, neg),
        Op::Compare(c) => {
            let (a, b) = (ops[0], ops[1]);
            if a != b || g.dtype(a).is_float() {
                return None;
            }
            let holds = matches!(c, CmpOp::Eq | CmpOp::Le | CmpOp::Ge);
            full(if holds { 1.0 } else { 0.0 })
        }
        Op::Where => {
            let (c, a, b) = (ops[0], ops[1], ops[2]);
            if a == b {
                return use_(a);
            }
            match uniform(g, c) {
                Some(Scalar::Bool(true)) => return use_(a),
                Some(Scalar::Bool(false)) => return use_(b),
                _ => {}
            }
            let (ua, ub) = (uniform(g, a), uniform(g, b));
            if ua.is_some_and(|s| s.is(1.0)) && ub.is_some_and(Scalar::is_pos_zero) {
                return Some(Rewrite::New(Op::Cast(ty.dtype), vec![c]));
            }
            None
        }
        Op::Cast(d) => {
            let x = ops[0];
            if g.dtype(x) == *d {
                return use_(x);
            }
            if let Op::Cast(_) = g.node(x).op {
                let y = g.operands(x)[0];
                if lossless(g.dtype(y), g.dtype(x)) {
                    return if g.dtype(y) == *d {
                        use_(y)
                    } else {
                        Some(Rewrite::New(Op::Cast(*d), vec![y]))
                    };
                }
            }
            None
        }
        Op::Reduce { op, axes } => {
            let x = ops[0];
            let xs = g.shape(x);
            let float_sum = *op == ReduceOp::Sum && ty.dtype.is_float();
            let keep: Vec<usize> = axes.iter().copied().filter(|&a| xs[a] != 1).collect();
            if keep.is_empty() && (!float_sum || nsz) {
                return use_(x);
            }
            if !keep.is_empty() && keep.len() < axes.len() {
                return Some(Rewrite::New(
                    Op::Reduce {
                        op: *op,
                        axes: keep,
                    },
                    vec![x],
                ));
            }
            if let Op::Reduce {
                op: inner,
                axes: inner_axes,
            } = &g.node(x).op
            {
                let only_use = g.users(x) == [id] && !g.outputs.values().any(|&o| o == x);
                if inner == op && !float_sum && only_use {
                    let mut all: Vec<usize> = axes.iter().chain(inner_axes).copied().collect();
                    all.sort_unstable();
                    all.dedup();
                    let y = g.operands(x)[0];
                    return Some(Rewrite::New(Op::Reduce { op: *op, axes: all }, vec![y]));
                }
            }
            None
        }
        Op::Reshape(s) => {
            let x = ops[0];
            if g.shape(x) == s.as_slice() {
                return use_(x);
            }
            if let Op::Reshape(_) = g.node(x).op {
                return Some(Rewrite::New(Op::Reshape(s.clone()), g.operands(x)));
            }
            None
        }
        Op::Permute(p) => {
            let x = ops[0];
            if p.iter().enumerate().all(|(i, &a)| i == a) {
                return use_(x);
            }
            if let Op::Permute(inner) = &g.node(x).op {
                let composed = p.iter().map(|&a| inner[a]).collect();
                return Some(Rewrite::New(Op::Permute(composed), g.operands(x)));
            }
            // Non-unit axes in their original order: the elements do not move.
            let xs = g.shape(x);
            let moved: Vec<usize> = p.iter().copied().filter(|&a| xs[a] != 1).collect();
            if moved.windows(2).all(|w| w[0] < w[1]) {
                return Some(Rewrite::New(Op::Reshape(ty.shape.clone()), vec![x]));
            }
            None
        }
        Op::Expand(s) => {
            let x = ops[0];
            if g.shape(x) == s.as_slice() {
                return use_(x);
            }
            if let Op::Expand(_) = g.node(x).op {
                return Some(Rewrite::New(Op::Expand(s.clone()), g.operands(x)));
            }
            None
        }
        Op::Slice(axes) => {
            let x = ops[0];
            let xs = g.shape(x);
            let identity = axes
                .iter()
                .zip(xs)
                .all(|(a, &d)| a.start == 0 && a.len() == d && (a.step == 1 || d <= 1));
            if identity {
                return use_(x);
            }
            if let Op::Slice(inner) = &g.node(x).op {
                let composed = inner.iter().zip(axes).map(|(a, b)| compose(a, b)).collect();
                return Some(Rewrite::New(Op::Slice(composed), g.operands(x)));
            }
            if let Op::Pad { lo, value, .. } = &g.node(x).op {
                let y = g.operands(x)[0];
                return slice_of_pad(axes, lo, *value, g.shape(y))
                    .map(|op| Rewrite::New(op, vec![y]));
            }
            None
        }
        Op::Pad { lo, hi, value } => {
            let x = ops[0];
            if lo.iter().chain(hi).all(|&v| v == 0) {
                return use_(x);
            }
            if let Op::Pad {
                lo: lo2,
                hi: hi2,
                value: v2,
            } = &g.node(x).op
            {
                let dt = ty.dtype;
                if Scalar::of_value(dt, *value).same(Scalar::of_value(dt, *v2)) {
                    let add =
                        |a: &[usize], b: &[usize]| a.iter().zip(b).map(|(p, q)| p + q).collect();
                    return Some(Rewrite::New(
                        Op::Pad {
                            lo: add(lo, lo2),
                            hi: add(hi, hi2),
                            value: *value,
                        },
                        g.operands(x),
                    ));
                }
            }
            None
        }
        Op::Concat(axis) => {
            if ops.len() == 1 {
                return use_(ops[0]);
            }
            let nonempty: Vec<NodeId> = ops
                .iter()
                .copied()
                .filter(|&o| g.ty(o).numel() > 0)
                .collect();
            if !nonempty.is_empty() && nonempty.len() < ops.len() {
                return Some(Rewrite::New(Op::Concat(*axis), nonempty));
            }
            None
        }
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Const(_)
        | Op::Full { .. }
        | Op::Unary(_)
        | Op::Detach
        | Op::MatMul
        | Op::Conv(_)
        | Op::ConvTranspose(_)
        | Op::ConvWeight { .. } => None,
    }
}

/// The rules of the binary ops (see the table in the module docs).
fn binary(
    g: &Graph,
    b: BinaryOp,
    x: NodeId,
    y: NodeId,
    nsz: bool,
    full: impl Fn(f64) -> Option<Rewrite>,
    neg: impl Fn(NodeId) -> Option<Rewrite>,
) -> Option<Rewrite> {
    let float = g.dtype(x).is_float();
    let (ux, uy) = (uniform(g, x), uniform(g, y));
    let is = |u: Option<Scalar>, v: f64| u.is_some_and(|s| s.is(v));
    let pos_zero = |u: Option<Scalar>| u.is_some_and(Scalar::is_pos_zero);
    let neg_zero = |u: Option<Scalar>| u.is_some_and(Scalar::is_neg_zero);
    // `z` with `v + z == v` for every `v` (IEEE: only -0.0 keeps a -0.0 operand).
    let add_identity = |u| {
        if float {
            neg_zero(u) || (nsz && pos_zero(u))
        } else {
            pos_zero(u)
        }
    };
    // `z` with `v - z == v`, and `z - v == -v` for `z` the additive identity.
    let sub_identity = |u| {
        if float {
            pos_zero(u) || (nsz && neg_zero(u))
        } else {
            pos_zero(u)
        }
    };
    let use_ = |n: NodeId| Some(Rewrite::Use(n));
    match b {
        BinaryOp::Add => {
            if add_identity(uy) {
                use_(x)
            } else if add_identity(ux) {
                use_(y)
            } else {
                None
            }
        }
        BinaryOp::Sub => {
            if sub_identity(uy) {
                use_(x)
            } else if add_identity(ux) {
                // -0.0 - v == -v exactly (and 0 - v for integers, wrapping like neg)
                neg(y)
            } else if !float && x == y {
                full(0.0)
            } else {
                None
            }
        }
        BinaryOp::Mul => {
            if is(uy, 1.0) {
                use_(x)
            } else if is(ux, 1.0) {
                use_(y)
            } else if is(uy, -1.0) {
                neg(x)
            } else if is(ux, -1.0) {
                neg(y)
            } else if !float && (is(ux, 0.0) || is(uy, 0.0)) {
                full(0.0)
            } else {
                None
            }
        }
        BinaryOp::Div => {
            if is(uy, 1.0) {
                use_(x)
            } else if is(uy, -1.0) {
                neg(x)
            } else {
                None
            }
        }
        BinaryOp::Max | BinaryOp::Min => (x == y).then_some(Rewrite::Use(x)),
        BinaryOp::Pow => is(uy, 1.0).then_some(Rewrite::Use(x)),
    }
}

/// Whether casting `from -> to` keeps every value, so a later cast may start from `from`.
fn lossless(from: DType, to: DType) -> bool {
    from == to || from == DType::Bool || (from == DType::F32 && to == DType::F64)
}

/// `slice(pad(y, lo, .., value), axes)` as one op on `y`, when every axis of the slice
/// either keeps all of `y` contiguously (it only trims padding: a smaller `pad`) or stays
/// inside `y` on every axis (a `slice` of `y`).
fn slice_of_pad(axes: &[SliceAxis], lo: &[usize], value: f64, ys: &[usize]) -> Option<Op> {
    let trims = axes.iter().zip(lo).zip(ys).all(|((a, &l), &d)| {
        let len = a.len();
        (a.step == 1 || len <= 1) && a.start <= l && a.start + len >= l + d
    });
    if trims {
        let lo2 = axes.iter().zip(lo).map(|(a, &l)| l - a.start).collect();
        let hi2 = axes
            .iter()
            .zip(lo)
            .zip(ys)
            .map(|((a, &l), &d)| a.start + a.len() - (l + d))
            .collect();
        return Some(Op::Pad {
            lo: lo2,
            hi: hi2,
            value,
        });
    }
    let inside = axes.iter().zip(lo).zip(ys).all(|((a, &l), &d)| {
        let len = a.len();
        len == 0 || (a.start >= l && a.start + (len - 1) * a.step < l + d)
    });
    if inside {
        let moved = axes
            .iter()
            .zip(lo)
            .map(|(a, &l)| match a.len() {
                0 => SliceAxis {
                    start: 0,
                    end: 0,
                    step: 1,
                },
                len => SliceAxis {
                    start: a.start - l,
                    end: a.start - l + (len - 1) * a.step + 1,
                    step: a.step,
                },
            })
            .collect();
        return Some(Op::Slice(moved));
    }
    None
}

/// `slice(slice(x, a), b)` on one axis as one slice of `x`: element `j` of the result is
/// element `b.start + j*b.step` of the inner slice, which is `a.start + (b.start +
/// j*b.step)*a.step` of `x`.
fn compose(a: &SliceAxis, b: &SliceAxis) -> SliceAxis {
    let len = b.len();
    if len == 0 {
        return SliceAxis {
            start: 0,
            end: 0,
            step: 1,
        };
    }
    let start = a.start + b.start * a.step;
    let step = if len == 1 { 1 } else { a.step * b.step };
    SliceAxis {
        start,
        end: start + (len - 1) * step + 1,
        step,
    }
}
