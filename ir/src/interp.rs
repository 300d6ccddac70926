//! The reference interpreter: evaluates a [`Graph`] on host [`Literal`]s.
//!
//! This is the oracle that every backend (Cranelift JIT, PTX) is compared against on random
//! graphs, so it is written to be *obviously right*: each op is computed straight from its
//! definition in [`crate::op`], with no fusion, no layout tricks and no `unsafe`. It is not
//! needlessly slow either, because it also runs whole training steps (LeNet, a small 3-D
//! U-Net) in tests: index arithmetic is done with precomputed row-major strides, nothing is
//! allocated per element, and an intermediate value is freed as soon as its last user has run.
//!
//! # Evaluation
//!
//! [`eval`] computes exactly the nodes needed for `wanted`, in operand-first order
//! ([`Graph::reachable_topo`]). A node that has a binding is never computed: its value is the
//! binding, and its operands are not needed on its account (so a realised forward activation
//! can stand in for the whole sub-graph below it). `input` and `param` nodes must be bound.
//! Every binding is checked against its node's type, and every computed node's stored type is
//! re-derived from the actual operand values with [`infer`], so a malformed graph gives an
//! [`IrError::Eval`] naming the node instead of a panic or a silently wrong answer.
//!
//! # Precision
//!
//! The oracle is meant to be at least as accurate as any backend, whatever order that backend
//! sums in:
//! - **Accumulations** — `reduce_sum`, `matmul`, `conv`, `conv_transpose` and `conv_weight` —
//!   accumulate in `f64` and round once to the node's dtype. For `f32` graphs the accumulation
//!   error (about `n * 2^-53` relative) is far below the final rounding to `f32`. For `f64`
//!   graphs this is plain `f64` summation, the same precision class as a backend: compare with
//!   a tolerance.
//! - **Elementwise float ops** on `f32` are computed in `f64` and rounded once to `f32`. For
//!   `+ - * /` and `sqrt` that *is* the correctly rounded `f32` result (`f64` has more than
//!   `2*24+2` significand bits, so the double rounding is harmless); for `exp`, `log`, `tanh`,
//!   `sigmoid` and `pow` it is within about half an `f32` ulp, better than `f32` libm or GPU
//!   intrinsics. `f64` ops use Rust's `f64` functions directly.
//! - **NaN**: `max`/`min` and `reduce_max` propagate NaN (like `torch.maximum` and
//!   `torch.amax`); comparisons follow IEEE (`ne` is true, every other comparison false).
//!   `pow` follows C `pow` (as PyTorch does), e.g. `pow(1, NaN) == 1`.
//! - **Integers**: `i64` arithmetic (`neg`, `abs`, `add`, `sub`, `mul`, `reduce_sum`) wraps on
//!   overflow (two's complement, what compiled backends do) instead of panicking; `i64`
//!   comparisons are exact (never via `f64`).
//! - `cast` is [`Data::cast`]; `full` and `pad` convert their `f64` value with [`Data::splat`].

use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::{BinaryOp, CmpOp, ConvParams, Op, ReduceOp, SliceAxis, UnaryOp};
use crate::shape::{numel, strides, unravel};
use crate::{DType, Data, Literal, TensorType};
use indexmap::IndexMap;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Evaluates the nodes `wanted` and returns their values, in the order asked.
///
/// `bindings` gives values for every `input`/`param` node needed and may also bind any other
/// node (its value is then used instead of computing it, e.g. a forward activation already
/// realised). Errors ([`IrError::Eval`]) name the unbound input/param or a binding whose type
/// (dtype+shape) differs from the node's. Every binding is checked, used or not.
pub fn eval(
    graph: &Graph,
    bindings: &HashMap<NodeId, &Literal>,
    wanted: &[NodeId],
) -> Result<Vec<Literal>> {
    eval_with_stats(graph, bindings, wanted, &mut Stats::default())
}

/// Convenience: binds inputs and params by name (a map name -> Literal covering
/// `graph.inputs` and `graph.params` as needed), evaluates all `graph.outputs`, returns them
/// by output name in order. Names that match no input or param are ignored (a caller may pass
/// all of a model's values to a sub-graph); a needed one that is missing is an error.
pub fn run(graph: &Graph, values: &HashMap<String, Literal>) -> Result<IndexMap<String, Literal>> {
    let mut bindings: HashMap<NodeId, &Literal> = HashMap::new();
    for (name, &id) in graph.inputs.iter().chain(graph.params.iter()) {
        if let Some(v) = values.get(name) {
            bindings.insert(id, v);
        }
    }
    let wanted: Vec<NodeId> = graph.outputs.values().copied().collect();
    let results = eval(graph, &bindings, &wanted)?;
    Ok(graph.outputs.keys().cloned().zip(results).collect())
}

/// What an evaluation did, for the tests of the scheduling (which nodes ran, peak memory).
#[derive(Debug, Default)]
struct Stats {
    /// Nodes computed (bound nodes and constants are not counted).
    computed: usize,
    /// Largest number of values held at once (bound, constant or computed).
    peak_live: usize,
}

fn eval_with_stats(
    graph: &Graph,
    bindings: &HashMap<NodeId, &Literal>,
    wanted: &[NodeId],
    stats: &mut Stats,
) -> Result<Vec<Literal>> {
    for &id in wanted {
        if !graph.contains(id) {
            return Err(IrError::Eval(format!(
                "asked for %{}, which is not a node of the graph",
                id.index()
            )));
        }
    }
    // Sorted, so that the first bad binding reported does not depend on hash order.
    let mut bound: Vec<(NodeId, &Literal)> = bindings.iter().map(|(&id, &l)| (id, l)).collect();
    bound.sort_by_key(|&(id, _)| id);
    for (id, lit) in bound {
        check_binding(graph, id, lit)?;
    }

    // Which nodes are needed: the wanted ones, and the operands of needed nodes that are not
    // bound. Walking the operand-first order backwards sees every user before its operands.
    let reach = graph.reachable_topo(wanted);
    let mut needed: HashSet<NodeId> = wanted.iter().copied().collect();
    let mut operands: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in reach.iter().rev() {
        if needed.contains(&id) && !bindings.contains_key(&id) {
            let ops = graph.operands(id);
            needed.extend(ops.iter().copied());
            operands.insert(id, ops);
        }
    }
    let plan: Vec<NodeId> = reach.into_iter().filter(|id| needed.contains(id)).collect();

    // Remaining uses of each value (one per operand slot); a value that is not wanted is
    // dropped when its count reaches zero.
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for ops in operands.values() {
        for &o in ops {
            *uses.entry(o).or_default() += 1;
        }
    }
    let keep: HashSet<NodeId> = wanted.iter().copied().collect();

    let mut values: HashMap<NodeId, Cow<'_, Literal>> = HashMap::new();
    for id in plan {
        let node = graph.node(id);
        let value: Cow<'_, Literal> = if let Some(&lit) = bindings.get(&id) {
            Cow::Borrowed(lit)
        } else {
            match &node.op {
                Op::Input { .. } | Op::Param { .. } => {
                    return Err(IrError::Eval(format!(
                        "{} of type {} is not bound",
                        describe(graph, id),
                        node.ty
                    )));
                }
                Op::Const(lit) => {
                    check_node_type(graph, id, &[])?;
                    check_literal(graph, id, lit, "constant")?;
                    Cow::Borrowed(lit.as_ref())
                }
                op => {
                    let ops = &operands[&id];
                    let mut args: Vec<&Literal> = Vec::with_capacity(ops.len());
                    for (slot, o) in ops.iter().enumerate() {
                        match values.get(o) {
                            Some(v) => args.push(v.as_ref()),
                            None => {
                                return Err(IrError::Eval(format!(
                                    "{}: operand {slot} has no value (is the graph cyclic?)",
                                    graph.context(id)
                                )))
                            }
                        }
                    }
                    check_node_type(graph, id, &args)?;
                    let data = compute(op, &node.ty, &args)?;
                    stats.computed += 1;
                    if data.dtype() != node.ty.dtype || data.len() != node.ty.numel() {
                        return Err(IrError::Eval(format!(
                            "{}: internal error: computed {} {} elements for type {}",
                            graph.context(id),
                            data.len(),
                            data.dtype(),
                            node.ty
                        )));
                    }
                    Cow::Owned(Literal {
                        shape: node.ty.shape.clone(),
                        data,
                    })
                }
            }
        };
        values.insert(id, value);
        stats.peak_live = stats.peak_live.max(values.len());
        if let Some(ops) = operands.get(&id) {
            for o in ops {
                if let Some(u) = uses.get_mut(o) {
                    *u -= 1;
                    if *u == 0 && !keep.contains(o) {
                        values.remove(o);
                    }
                }
            }
        }
    }

    // Hand out the results; the last request for a node takes its value, earlier ones clone.
    let mut remaining: HashMap<NodeId, usize> = HashMap::new();
    for &id in wanted {
        *remaining.entry(id).or_default() += 1;
    }
    let mut out = Vec::with_capacity(wanted.len());
    for &id in wanted {
        let left = remaining.entry(id).or_default();
        *left -= 1;
        let value = if *left == 0 {
            values.remove(&id).map(Cow::into_owned)
        } else {
            values.get(&id).map(|v| v.as_ref().clone())
        };
        out.push(value.ok_or_else(|| {
            IrError::Eval(format!(
                "internal error: no value for wanted node %{}",
                id.index()
            ))
        })?);
    }
    Ok(out)
}

/// `input `x` (%3)`, `param `w` (%1)` or `%7 (add)`, for error messages; numbered like
/// [`Graph::context`] (as the text form prints the graph).
fn describe(graph: &Graph, id: NodeId) -> String {
    let num = graph.context(id).node;
    match &graph.node(id).op {
        Op::Input { name, .. } => format!("input `{name}` (%{num})"),
        Op::Param { name, .. } => format!("param `{name}` (%{num})"),
        op => format!("%{num} ({})", op.name()),
    }
}

/// A binding must name a node of the graph and have exactly that node's type.
fn check_binding(graph: &Graph, id: NodeId, lit: &Literal) -> Result<()> {
    if !graph.contains(id) {
        return Err(IrError::Eval(format!(
            "a value is bound to %{}, which is not a node of the graph",
            id.index()
        )));
    }
    check_literal(graph, id, lit, "binding")?;
    let ty = &graph.node(id).ty;
    if lit.ty() != *ty {
        return Err(IrError::Eval(format!(
            "{} has type {ty} but is bound to a value of type {}",
            describe(graph, id),
            lit.ty()
        )));
    }
    Ok(())
}

/// `Literal`'s fields are public, so its element count may disagree with its shape.
fn check_literal(graph: &Graph, id: NodeId, lit: &Literal, what: &str) -> Result<()> {
    if lit.data.len() != numel(&lit.shape) {
        return Err(IrError::Eval(format!(
            "the {what} of {} has shape {:?} but holds {} elements",
            describe(graph, id),
            lit.shape,
            lit.data.len()
        )));
    }
    Ok(())
}

/// Re-derives the node's type from its actual operand values: the kernels below rely on the
/// shapes `infer` guarantees, so a node that does not type-check is an error, not a panic.
fn check_node_type(graph: &Graph, id: NodeId, args: &[&Literal]) -> Result<()> {
    let node = graph.node(id);
    let tys: Vec<TensorType> = args.iter().map(|a| a.ty()).collect();
    let refs: Vec<&TensorType> = tys.iter().collect();
    match infer(&node.op, &refs) {
        Ok(t) if t == node.ty => Ok(()),
        Ok(t) => Err(IrError::Eval(format!(
            "{}: node is typed {} but its operands give {t} (run the verifier)",
            graph.context(id),
            node.ty
        ))),
        Err(msg) => Err(IrError::Eval(format!(
            "{}: {msg} (run the verifier)",
            graph.context(id)
        ))),
    }
}

/// An operand of a dtype the op does not accept; unreachable after `check_node_type`.
fn bad_dtype(what: &str, dtype: DType) -> IrError {
    IrError::Eval(format!("internal error: {what} is not defined for {dtype}"))
}

/// Computes one non-leaf node of type `ty` from its operand values.
fn compute(op: &Op, ty: &TensorType, args: &[&Literal]) -> Result<Data> {
    let out_shape = &ty.shape;
    Ok(match op {
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) => {
            return Err(IrError::Eval(
                "internal error: leaves are not computed".into(),
            ))
        }
        Op::Full { value, ty } => Data::splat(ty.dtype, *value, ty.numel()),
        Op::Unary(u) => unary(*u, &args[0].data)?,
        Op::Binary(b) => binary(*b, &args[0].data, &args[1].data)?,
        Op::Compare(c) => Data::Bool(compare(*c, &args[0].data, &args[1].data)?),
        Op::Where => select(&args[0].data, &args[1].data, &args[2].data)?,
        Op::Cast(d) => args[0].data.cast(*d),
        Op::Reduce { op, axes } => reduce(*op, axes, args[0], out_shape)?,
        // Identity in value; only autodiff treats it differently.
        Op::Detach | Op::Reshape(_) => args[0].data.clone(),
        Op::Permute(perm) => permute(args[0], perm, out_shape),
        Op::Expand(_) => expand(args[0], out_shape),
        Op::Slice(axes) => slice(args[0], axes, out_shape),
        Op::Pad { lo, value, .. } => pad(args[0], lo, *value, out_shape)?,
        Op::Concat(axis) => concat(args, *axis, ty)?,
        Op::MatMul => matmul(args[0], args[1], ty)?,
        Op::Conv(p) => conv(args[0], args[1], p, ty)?,
        Op::ConvTranspose(p) => conv_transpose(args[0], args[1], p, ty)?,
        Op::ConvWeight { params, kernel } => conv_weight(args[0], args[1], params, kernel, ty)?,
    })
}

// ----- elementwise -------------------------------------------------------------------------

/// The `f64` function of a float unary op (`f32` operands are widened, then rounded back).
fn unary_fn(u: UnaryOp) -> fn(f64) -> f64 {
    match u {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Recip => |x| 1.0 / x,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Tanh => f64::tanh,
        // The definition; in f64 it neither overflows to NaN (exp(1000) = inf gives 0) nor
        // loses relative accuracy for large negative x.
        UnaryOp::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
    }
}

fn unary(u: UnaryOp, a: &Data) -> Result<Data> {
    Ok(match (a, u) {
        (Data::I64(v), UnaryOp::Neg) => Data::I64(v.iter().map(|x| x.wrapping_neg()).collect()),
        (Data::I64(v), UnaryOp::Abs) => Data::I64(v.iter().map(|x| x.wrapping_abs()).collect()),
        (Data::F32(v), _) => {
            let f = unary_fn(u);
            Data::F32(v.iter().map(|&x| f(f64::from(x)) as f32).collect())
        }
        (Data::F64(v), _) => Data::F64(v.iter().map(|&x| unary_fn(u)(x)).collect()),
        _ => return Err(bad_dtype(&format!("{u:?}"), a.dtype())),
    })
}

/// `torch.maximum`: NaN if either operand is NaN.
fn max_nan(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x >= y {
        x
    } else {
        y
    }
}

/// `torch.minimum`: NaN if either operand is NaN.
fn min_nan(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x <= y {
        x
    } else {
        y
    }
}

/// The `f64` function of a float binary op.
fn float_binary_fn(b: BinaryOp) -> fn(f64, f64) -> f64 {
    match b {
        BinaryOp::Add => |x, y| x + y,
        BinaryOp::Sub => |x, y| x - y,
        BinaryOp::Mul => |x, y| x * y,
        BinaryOp::Div => |x, y| x / y,
        BinaryOp::Max => max_nan,
        BinaryOp::Min => min_nan,
        BinaryOp::Pow => f64::powf,
    }
}

/// The `i64` function of an integer binary op (wrapping); `div` and `pow` are float-only.
fn int_binary_fn(b: BinaryOp) -> Option<fn(i64, i64) -> i64> {
    match b {
        BinaryOp::Add => Some(i64::wrapping_add),
        BinaryOp::Sub => Some(i64::wrapping_sub),
        BinaryOp::Mul => Some(i64::wrapping_mul),
        BinaryOp::Max => Some(|x, y| x.max(y)),
        BinaryOp::Min => Some(|x, y| x.min(y)),
        BinaryOp::Div | BinaryOp::Pow => None,
    }
}

fn binary(b: BinaryOp, x: &Data, y: &Data) -> Result<Data> {
    Ok(match (x, y) {
        (Data::F32(u), Data::F32(v)) => {
            let f = float_binary_fn(b);
            Data::F32(
                u.iter()
                    .zip(v)
                    .map(|(&p, &q)| f(f64::from(p), f64::from(q)) as f32)
                    .collect(),
            )
        }
        (Data::F64(u), Data::F64(v)) => {
            let f = float_binary_fn(b);
            Data::F64(u.iter().zip(v).map(|(&p, &q)| f(p, q)).collect())
        }
        (Data::I64(u), Data::I64(v)) => {
            let f = int_binary_fn(b).ok_or_else(|| bad_dtype(&format!("{b:?}"), DType::I64))?;
            Data::I64(u.iter().zip(v).map(|(&p, &q)| f(p, q)).collect())
        }
        _ => return Err(bad_dtype(&format!("{b:?}"), x.dtype())),
    })
}

/// Elementwise comparison in the operands' own type (IEEE for floats, `false < true`).
fn compare_slices<T: PartialOrd>(c: CmpOp, u: &[T], v: &[T]) -> Vec<bool> {
    u.iter()
        .zip(v)
        .map(|(p, q)| match c {
            CmpOp::Eq => p == q,
            CmpOp::Ne => p != q,
            CmpOp::Lt => p < q,
            CmpOp::Le => p <= q,
            CmpOp::Gt => p > q,
            CmpOp::Ge => p >= q,
        })
        .collect()
}

fn compare(c: CmpOp, x: &Data, y: &Data) -> Result<Vec<bool>> {
    Ok(match (x, y) {
        (Data::F32(u), Data::F32(v)) => compare_slices(c, u, v),
        (Data::F64(u), Data::F64(v)) => compare_slices(c, u, v),
        (Data::I64(u), Data::I64(v)) => compare_slices(c, u, v),
        (Data::Bool(u), Data::Bool(v)) => compare_slices(c, u, v),
        _ => return Err(bad_dtype("comparing different dtypes", x.dtype())),
    })
}

fn pick<T: Copy>(c: &[bool], a: &[T], b: &[T]) -> Vec<T> {
    c.iter()
        .zip(a.iter().zip(b))
        .map(|(&c, (&a, &b))| if c { a } else { b })
        .collect()
}

/// `where(cond, a, b)`.
fn select(c: &Data, a: &Data, b: &Data) -> Result<Data> {
    let Data::Bool(c) = c else {
        return Err(bad_dtype("a where condition", c.dtype()));
    };
    Ok(match (a, b) {
        (Data::F32(u), Data::F32(v)) => Data::F32(pick(c, u, v)),
        (Data::F64(u), Data::F64(v)) => Data::F64(pick(c, u, v)),
        (Data::I64(u), Data::I64(v)) => Data::I64(pick(c, u, v)),
        (Data::Bool(u), Data::Bool(v)) => Data::Bool(pick(c, u, v)),
        _ => return Err(bad_dtype("where on different dtypes", a.dtype())),
    })
}

// ----- index machinery ---------------------------------------------------------------------

/// Calls `f(offset)` for every multi-index `idx` of `shape`, in row-major order, where
/// `offset = base + sum_i idx[i] * strides[i]`.
///
/// Every data-movement op is one call: a *gather* walks the output shape with the operand's
/// (permuted, zeroed or stepped) strides, a *scatter* walks the operand's shape with the
/// output's strides. The offset is updated incrementally (an odometer), so there is no
/// division and no allocation per element.
fn for_each_offset(shape: &[usize], strides: &[usize], base: usize, mut f: impl FnMut(usize)) {
    if shape.contains(&0) {
        return;
    }
    let Some((&inner, outer)) = shape.split_last() else {
        f(base); // rank 0: one element
        return;
    };
    let inner_stride = strides[outer.len()];
    let mut idx = vec![0usize; outer.len()];
    let mut off = base;
    loop {
        for i in 0..inner {
            f(off + i * inner_stride);
        }
        // Advance the outer axes, the last one fastest.
        let mut ax = outer.len();
        loop {
            if ax == 0 {
                return;
            }
            ax -= 1;
            idx[ax] += 1;
            off += strides[ax];
            if idx[ax] < outer[ax] {
                break;
            }
            off -= strides[ax] * outer[ax];
            idx[ax] = 0;
        }
    }
}

/// `out[i] = src[offset(i)]` for the row-major elements `i` of `shape`.
fn gather<T: Copy>(src: &[T], shape: &[usize], strides: &[usize], base: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(numel(shape));
    for_each_offset(shape, strides, base, |off| out.push(src[off]));
    out
}

fn gather_data(src: &Data, shape: &[usize], strides: &[usize], base: usize) -> Data {
    match src {
        Data::F32(v) => Data::F32(gather(v, shape, strides, base)),
        Data::F64(v) => Data::F64(gather(v, shape, strides, base)),
        Data::I64(v) => Data::I64(gather(v, shape, strides, base)),
        Data::Bool(v) => Data::Bool(gather(v, shape, strides, base)),
    }
}

/// `dst[offset(i)] = src[i]` for the row-major elements `i` of `shape` (the shape of `src`).
fn scatter<T: Copy>(dst: &mut [T], src: &[T], shape: &[usize], strides: &[usize], base: usize) {
    let mut i = 0;
    for_each_offset(shape, strides, base, |off| {
        dst[off] = src[i];
        i += 1;
    });
}

fn scatter_data(
    dst: &mut Data,
    src: &Data,
    shape: &[usize],
    strides: &[usize],
    base: usize,
) -> Result<()> {
    match (dst, src) {
        (Data::F32(d), Data::F32(s)) => scatter(d, s, shape, strides, base),
        (Data::F64(d), Data::F64(s)) => scatter(d, s, shape, strides, base),
        (Data::I64(d), Data::I64(s)) => scatter(d, s, shape, strides, base),
        (Data::Bool(d), Data::Bool(s)) => scatter(d, s, shape, strides, base),
        (d, s) => return Err(bad_dtype(&format!("copying {} into", s.dtype()), d.dtype())),
    }
    Ok(())
}

// ----- data movement -----------------------------------------------------------------------

/// Output axis `i` is operand axis `perm[i]`: walk the output with the operand's strides
/// permuted the same way.
fn permute(a: &Literal, perm: &[usize], out_shape: &[usize]) -> Data {
    let s = strides(&a.shape);
    let src_strides: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    gather_data(&a.data, out_shape, &src_strides, 0)
}

/// A size-1 operand axis is read at index 0 whatever the output index: stride 0.
fn expand(a: &Literal, out_shape: &[usize]) -> Data {
    let s = strides(&a.shape);
    let src_strides: Vec<usize> = a
        .shape
        .iter()
        .zip(&s)
        .map(|(&d, &st)| if d == 1 { 0 } else { st })
        .collect();
    gather_data(&a.data, out_shape, &src_strides, 0)
}

/// Output index `j` on axis `i` reads operand index `start + j * step`.
fn slice(a: &Literal, axes: &[SliceAxis], out_shape: &[usize]) -> Data {
    let s = strides(&a.shape);
    let src_strides: Vec<usize> = axes.iter().zip(&s).map(|(ax, &st)| ax.step * st).collect();
    let base: usize = axes.iter().zip(&s).map(|(ax, &st)| ax.start * st).sum();
    gather_data(&a.data, out_shape, &src_strides, base)
}

/// Fill with `value`, then copy the operand to the block starting at `lo`.
fn pad(a: &Literal, lo: &[usize], value: f64, out_shape: &[usize]) -> Result<Data> {
    let mut out = Data::splat(a.dtype(), value, numel(out_shape));
    let s = strides(out_shape);
    let base: usize = lo.iter().zip(&s).map(|(&l, &st)| l * st).sum();
    scatter_data(&mut out, &a.data, &a.shape, &s, base)?;
    Ok(out)
}

/// Copy each operand to its block along `axis`, one after the other.
fn concat(args: &[&Literal], axis: usize, ty: &TensorType) -> Result<Data> {
    let mut out = Data::splat(ty.dtype, 0.0, ty.numel());
    let s = strides(&ty.shape);
    let mut start = 0;
    for a in args {
        scatter_data(&mut out, &a.data, &a.shape, &s, start * s[axis])?;
        start += a.shape[axis];
    }
    Ok(out)
}

// ----- reductions --------------------------------------------------------------------------

/// Folds every element of `src` (of `shape`) into `acc[offset]`, where the output strides
/// `out_strides` are zero on the reduced axes, so all elements of one reduced block meet in
/// one accumulator, in row-major order.
fn fold<T, A: Copy>(
    src: &[T],
    shape: &[usize],
    out_strides: &[usize],
    mut acc: Vec<A>,
    f: impl Fn(A, &T) -> A,
) -> Vec<A> {
    let mut i = 0;
    for_each_offset(shape, out_strides, 0, |off| {
        acc[off] = f(acc[off], &src[i]);
        i += 1;
    });
    acc
}

/// `reduce_sum` / `reduce_max` over `axes`, kept with size 1. Float sums accumulate in `f64`;
/// the identity of max is `-inf` (`i64::MIN`), so an empty extent gives it.
fn reduce(op: ReduceOp, axes: &[usize], a: &Literal, out_shape: &[usize]) -> Result<Data> {
    let mut os = strides(out_shape);
    for &ax in axes {
        os[ax] = 0;
    }
    let n = numel(out_shape);
    let sh = &a.shape;
    Ok(match (&a.data, op) {
        (Data::F32(v), ReduceOp::Sum) => {
            Data::F32(round_f32(fold(v, sh, &os, vec![0.0; n], |s, &x| {
                s + f64::from(x)
            })))
        }
        (Data::F64(v), ReduceOp::Sum) => Data::F64(fold(v, sh, &os, vec![0.0; n], |s, &x| s + x)),
        (Data::F32(v), ReduceOp::Max) => Data::F32(round_f32(fold(
            v,
            sh,
            &os,
            vec![f64::NEG_INFINITY; n],
            |m, &x| max_nan(m, f64::from(x)),
        ))),
        (Data::F64(v), ReduceOp::Max) => {
            Data::F64(fold(v, sh, &os, vec![f64::NEG_INFINITY; n], |m, &x| {
                max_nan(m, x)
            }))
        }
        (Data::I64(v), ReduceOp::Sum) => {
            Data::I64(fold(v, sh, &os, vec![0; n], |s, &x| s.wrapping_add(x)))
        }
        (Data::I64(v), ReduceOp::Max) => {
            Data::I64(fold(v, sh, &os, vec![i64::MIN; n], |m, &x| m.max(x)))
        }
        (d, _) => return Err(bad_dtype(&format!("{op:?}"), d.dtype())),
    })
}

// ----- accumulating ops in f64 -------------------------------------------------------------

/// A float operand widened to `f64` (borrowed when it already is).
fn as_f64(d: &Data) -> Result<Cow<'_, [f64]>> {
    match d {
        Data::F32(v) => Ok(Cow::Owned(v.iter().map(|&x| f64::from(x)).collect())),
        Data::F64(v) => Ok(Cow::Borrowed(v)),
        _ => Err(bad_dtype("an f64 accumulation", d.dtype())),
    }
}

fn round_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

/// `f64` accumulators rounded once to the node's float dtype.
fn from_f64(dtype: DType, v: Vec<f64>) -> Result<Data> {
    match dtype {
        DType::F32 => Ok(Data::F32(round_f32(v))),
        DType::F64 => Ok(Data::F64(v)),
        _ => Err(bad_dtype("an f64 accumulation", dtype)),
    }
}

/// Batched `[..., m, k] x [..., k, n]`: `c[t, i, j] = sum_p a[t, i, p] * b[t, p, j]`, summed
/// in `f64` in increasing `p` (the `i, p, j` loop order only makes the inner loop contiguous).
fn matmul(a: &Literal, b: &Literal, ty: &TensorType) -> Result<Data> {
    let r = a.shape.len();
    let (m, k, n) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
    let batch = numel(&a.shape[..r - 2]);
    let av = as_f64(&a.data)?;
    let bv = as_f64(&b.data)?;
    let mut out = vec![0.0f64; batch * m * n];
    for t in 0..batch {
        let a_t = &av[t * m * k..][..m * k];
        let b_t = &bv[t * k * n..][..k * n];
        let c_t = &mut out[t * m * n..][..m * n];
        for i in 0..m {
            let row = &mut c_t[i * n..][..n];
            for p in 0..k {
                let a_ip = a_t[i * k + p];
                for (c, &b_pj) in row.iter_mut().zip(&b_t[p * n..][..n]) {
                    *c += a_ip * b_pj;
                }
            }
        }
    }
    from_f64(ty.dtype, out)
}

/// The sizes of the bilinear relation shared by the convolution family.
///
/// All three ops are the same sum
/// `Y[n, co, o] += X[n, ci, o*s + k*d - p] * W[co, ci - g*(Cx/G), k]`, for `co` and `ci` in
/// the same group `g`, with `X [N, Cx, x...]`, `W [Cy, Cx/G, k...]`, `Y [N, Cy, y...]`, and
/// terms whose `X` position falls outside `[0, x)` left out (zero padding). They differ only
/// in which of `X`, `W`, `Y` is the result:
/// - `conv(x, w)`: `X = x`, `W = w`, result `Y`;
/// - `conv_transpose(x, w)`: `Y = x`, `W = w`, result `X` (the adjoint in the input; its
///   size, which includes `output_padding`, comes from the node's type);
/// - `conv_weight(x, dy)`: `X = x`, `Y = dy`, result `W` (the adjoint in the weight).
///
/// So each op's correctness is that of one enumeration of terms, [`conv_runs`], and the
/// adjoint identities hold by construction.
struct ConvGeom<'a> {
    batch: usize,
    x_channels: usize,
    y_channels: usize,
    x_size: &'a [usize],
    y_size: &'a [usize],
    kernel: &'a [usize],
    params: &'a ConvParams,
}

/// Terms of the convolution relation that share one weight element and lie at consecutive
/// output positions along the last spatial axis: term `t` in `0..len` multiplies
/// `X[x0 + t * x_step]`, `W[w]` and `Y[y0 + t]` (flat offsets).
///
/// Grouping terms this way only amortises the index arithmetic over a contiguous inner loop;
/// the set of terms is exactly the one of the definition.
struct Run {
    x0: usize,
    x_step: usize,
    y0: usize,
    w: usize,
    len: usize,
}

impl Run {
    /// The `(X offset, Y offset)` of each term.
    fn terms(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.len).map(move |t| (self.x0 + t * self.x_step, self.y0 + t))
    }
}

/// The output positions `o` in `0..y_len` whose input position `o*s + kd - p` lies in
/// `[0, x_len)`, where `kd = k*d` is the tap's dilated offset.
fn valid_outputs(y_len: usize, x_len: usize, s: usize, kd: usize, p: usize) -> (usize, usize) {
    // o*s + kd >= p  <=>  o >= ceil((p - kd) / s)
    let lo = if kd >= p { 0 } else { (p - kd).div_ceil(s) };
    // o*s + kd - p < x_len  <=>  o*s < x_len + p - kd  <=>  o < ceil((x_len + p - kd) / s)
    let hi = if x_len + p <= kd {
        0
    } else {
        (x_len + p - kd).div_ceil(s)
    };
    (lo.min(y_len), hi.min(y_len))
}

/// Calls `f` with every term of the convolution relation (see [`ConvGeom`]), grouped in
/// [`Run`]s along the last spatial axis.
///
/// Loop order: rows of output positions (all spatial axes but the last), kernel taps (the
/// input position on the leading axes, its bounds check and the valid range on the last axis
/// are computed once per pair), then batch, group, output channel, input channel.
fn conv_runs(geom: &ConvGeom, mut f: impl FnMut(Run)) {
    let p = geom.params;
    let groups = p.groups;
    let nd = geom.kernel.len();
    let Some(last) = nd.checked_sub(1) else {
        return; // no spatial axis: rejected by `infer`
    };
    let (x_sp, y_sp, k_sp) = (numel(geom.x_size), numel(geom.y_size), numel(geom.kernel));
    let (cx, cy) = (geom.x_channels, geom.y_channels);
    let (cxg, cyg) = (cx / groups, cy / groups);
    let x_strides = strides(geom.x_size);
    let (y_last, x_last) = (geom.y_size[last], geom.x_size[last]);
    if y_last == 0 {
        return;
    }
    // Multi-indices of all kernel taps, row-major (small: prod(kernel) * nd entries).
    let mut kernel_index = vec![0usize; k_sp * nd];
    for (kf, idx) in kernel_index.chunks_exact_mut(nd).enumerate() {
        unravel(kf, geom.kernel, idx);
    }
    let mut o = vec![0usize; last];
    for row in 0..y_sp / y_last {
        unravel(row, &geom.y_size[..last], &mut o);
        'taps: for kf in 0..k_sp {
            let k = &kernel_index[kf * nd..][..nd];
            // Input position o*s + k*d - p on each leading axis, or skip the tap.
            let mut xf = 0;
            for j in 0..last {
                let t = o[j] * p.stride[j] + k[j] * p.dilation[j];
                if t < p.padding[j] || t - p.padding[j] >= geom.x_size[j] {
                    continue 'taps;
                }
                xf += (t - p.padding[j]) * x_strides[j];
            }
            // On the last axis, the output positions whose input is inside.
            let (s, kd, pad) = (p.stride[last], k[last] * p.dilation[last], p.padding[last]);
            let (lo, hi) = valid_outputs(y_last, x_last, s, kd, pad);
            if lo >= hi {
                continue;
            }
            xf += lo * s + kd - pad; // the input position of output `lo` (stride 1 axis)
            let yf = row * y_last + lo;
            for n in 0..geom.batch {
                for g in 0..groups {
                    for a in 0..cyg {
                        let co = g * cyg + a;
                        for b in 0..cxg {
                            let ci = g * cxg + b;
                            f(Run {
                                x0: (n * cx + ci) * x_sp + xf,
                                x_step: s,
                                y0: (n * cy + co) * y_sp + yf,
                                w: (co * cxg + b) * k_sp + kf,
                                len: hi - lo,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// `conv(x [N, Cin, i...], w [Cout, Cin/G, k...]) -> [N, Cout, o...]`.
fn conv(x: &Literal, w: &Literal, p: &ConvParams, ty: &TensorType) -> Result<Data> {
    let geom = ConvGeom {
        batch: x.shape[0],
        x_channels: x.shape[1],
        y_channels: w.shape[0],
        x_size: &x.shape[2..],
        y_size: &ty.shape[2..],
        kernel: &w.shape[2..],
        params: p,
    };
    let (xv, wv) = (as_f64(&x.data)?, as_f64(&w.data)?);
    let mut y = vec![0.0f64; ty.numel()];
    conv_runs(&geom, |r| {
        for (xi, yi) in r.terms() {
            y[yi] += xv[xi] * wv[r.w];
        }
    });
    from_f64(ty.dtype, y)
}

/// `conv_transpose(x [N, Cin, i...], w [Cin, Cout/G, k...]) -> [N, Cout, o...]`: here the
/// operand `x` plays the role of the relation's `Y` and the result that of its `X`.
fn conv_transpose(x: &Literal, w: &Literal, p: &ConvParams, ty: &TensorType) -> Result<Data> {
    let geom = ConvGeom {
        batch: x.shape[0],
        x_channels: ty.shape[1],
        y_channels: x.shape[1],
        x_size: &ty.shape[2..],
        y_size: &x.shape[2..],
        kernel: &w.shape[2..],
        params: p,
    };
    let (yv, wv) = (as_f64(&x.data)?, as_f64(&w.data)?);
    let mut out = vec![0.0f64; ty.numel()];
    conv_runs(&geom, |r| {
        for (xi, yi) in r.terms() {
            out[xi] += yv[yi] * wv[r.w];
        }
    });
    from_f64(ty.dtype, out)
}

/// `conv_weight(x [N, Cin, i...], dy [N, Cout, o...]) -> dw [Cout, Cin/G, kernel...]`.
fn conv_weight(
    x: &Literal,
    dy: &Literal,
    p: &ConvParams,
    kernel: &[usize],
    ty: &TensorType,
) -> Result<Data> {
    let geom = ConvGeom {
        batch: x.shape[0],
        x_channels: x.shape[1],
        y_channels: dy.shape[1],
        x_size: &x.shape[2..],
        y_size: &dy.shape[2..],
        kernel,
        params: p,
    };
    let (xv, dyv) = (as_f64(&x.data)?, as_f64(&dy.data)?);
    let mut dw = vec![0.0f64; ty.numel()];
    conv_runs(&geom, |r| {
        // (summing the run first only saves a load and store of `dw[r.w]` per term)
        dw[r.w] += r.terms().map(|(xi, yi)| xv[xi] * dyv[yi]).sum::<f64>();
    });
    from_f64(ty.dtype, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::ravel;

    fn ty(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType::new(dtype, shape)
    }
    fn f64s(shape: &[usize], v: Vec<f64>) -> Literal {
        Literal::new(shape, Data::F64(v)).unwrap()
    }
    fn f32s(shape: &[usize], v: Vec<f32>) -> Literal {
        Literal::new(shape, Data::F32(v)).unwrap()
    }
    fn i64s(shape: &[usize], v: Vec<i64>) -> Literal {
        Literal::new(shape, Data::I64(v)).unwrap()
    }
    fn bools(shape: &[usize], v: Vec<bool>) -> Literal {
        Literal::new(shape, Data::Bool(v)).unwrap()
    }

    /// Deterministic values in [-1, 1) (xorshift64*), so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (r >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn eval_many(g: &Graph, binds: &[(NodeId, &Literal)], ids: &[NodeId]) -> Vec<Literal> {
        let map: HashMap<NodeId, &Literal> = binds.iter().copied().collect();
        eval(g, &map, ids).unwrap()
    }
    fn eval1(g: &Graph, binds: &[(NodeId, &Literal)], id: NodeId) -> Literal {
        eval_many(g, binds, &[id]).remove(0)
    }

    /// `|got - want| <= tol * max(1, |want|)`, NaN matching NaN, infinities matching exactly.
    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "lengths differ");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_nan() {
                g.is_nan()
            } else if w.is_infinite() {
                g == w
            } else {
                (g - w).abs() <= tol * w.abs().max(1.0)
            };
            assert!(
                ok,
                "element {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
            );
        }
    }

    /// A graph `op(input a)` evaluated on `a`.
    fn unary_on(u: UnaryOp, a: &Literal) -> Literal {
        let mut g = Graph::new();
        let x = g.input("a", a.ty()).unwrap();
        let y = g.unary(u, x).unwrap();
        eval1(&g, &[(x, a)], y)
    }

    /// A graph `op(input a, input b)` evaluated on `a`, `b`.
    fn binary_on(op: Op, a: &Literal, b: &Literal) -> Literal {
        let mut g = Graph::new();
        let x = g.input("a", a.ty()).unwrap();
        let y = g.input("b", b.ty()).unwrap();
        let z = g.push(op, &[x, y]).unwrap();
        eval1(&g, &[(x, a), (y, b)], z)
    }

    /// A graph `op(input a)` for a one-operand op.
    fn op_on(op: Op, a: &Literal) -> Literal {
        let mut g = Graph::new();
        let x = g.input("a", a.ty()).unwrap();
        let y = g.push(op, &[x]).unwrap();
        eval1(&g, &[(x, a)], y)
    }

    type UnaryCase = (UnaryOp, fn(f64) -> f64);

    #[test]
    fn unary_float_ops_match_std_formulas() {
        let xs = [-1000.0, -2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, 40.0, 1000.0];
        let sigmoid = |x: f64| 0.5 * (1.0 + (x / 2.0).tanh()); // an independent identity
        let cases: [UnaryCase; 7] = [
            (UnaryOp::Neg, |x| -x),
            (UnaryOp::Exp, f64::exp),
            (UnaryOp::Log, f64::ln),
            (UnaryOp::Sqrt, f64::sqrt),
            (UnaryOp::Recip, f64::recip),
            (UnaryOp::Abs, f64::abs),
            (UnaryOp::Tanh, f64::tanh),
        ];
        for (u, f) in cases
            .into_iter()
            .chain([(UnaryOp::Sigmoid, sigmoid as fn(f64) -> f64)])
        {
            let want: Vec<f64> = xs.iter().map(|&x| f(x)).collect();
            let got = unary_on(u, &f64s(&[xs.len()], xs.to_vec()));
            assert_eq!(got.dtype(), DType::F64);
            assert_close(&got.to_f64_vec(), &want, 1e-15);
            let x32: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
            let got = unary_on(u, &f32s(&[xs.len()], x32));
            assert_eq!(got.dtype(), DType::F32);
            let want32: Vec<f64> = want.iter().map(|&w| w as f32 as f64).collect();
            assert_close(&got.to_f64_vec(), &want32, 1e-7);
        }
        // By hand: sigmoid saturates without NaN; recip(0) and log(0) are infinite.
        let s = unary_on(UnaryOp::Sigmoid, &f32s(&[3], vec![-1000.0, 0.0, 1000.0]));
        assert_eq!(s.data, Data::F32(vec![0.0, 0.5, 1.0]));
        let r = unary_on(UnaryOp::Recip, &f64s(&[2], vec![0.0, 4.0]));
        assert_eq!(r.data, Data::F64(vec![f64::INFINITY, 0.25]));
        let l = unary_on(UnaryOp::Log, &f64s(&[2], vec![0.0, 1.0]));
        assert_eq!(l.data, Data::F64(vec![f64::NEG_INFINITY, 0.0]));
    }

    #[test]
    fn unary_int_ops_wrap() {
        let a = i64s(&[4], vec![3, -4, 0, i64::MIN]);
        assert_eq!(
            unary_on(UnaryOp::Neg, &a).data,
            Data::I64(vec![-3, 4, 0, i64::MIN])
        );
        assert_eq!(
            unary_on(UnaryOp::Abs, &a).data,
            Data::I64(vec![3, 4, 0, i64::MIN])
        );
    }

    #[test]
    fn binary_float_ops_by_hand() {
        let nan = f64::NAN;
        let a = vec![1.5, -2.0, 3.0, nan, 0.25, 1.0];
        let b = vec![2.0, 4.0, -1.0, 1.0, 2.0, nan];
        let cases = [
            (BinaryOp::Add, vec![3.5, 2.0, 2.0, nan, 2.25, nan]),
            (BinaryOp::Sub, vec![-0.5, -6.0, 4.0, nan, -1.75, nan]),
            (BinaryOp::Mul, vec![3.0, -8.0, -3.0, nan, 0.5, nan]),
            (BinaryOp::Div, vec![0.75, -0.5, -3.0, nan, 0.125, nan]),
            (BinaryOp::Max, vec![2.0, 4.0, 3.0, nan, 2.0, nan]),
            (BinaryOp::Min, vec![1.5, -2.0, -1.0, nan, 0.25, nan]),
            // C pow, as PyTorch: pow(1, NaN) == 1.
            (BinaryOp::Pow, vec![2.25, 16.0, 1.0 / 3.0, nan, 0.0625, 1.0]),
        ];
        for (op, want) in cases {
            let got = binary_on(
                Op::Binary(op),
                &f64s(&[6], a.clone()),
                &f64s(&[6], b.clone()),
            );
            assert_close(&got.to_f64_vec(), &want, 1e-16);
            let a32 = f32s(&[6], a.iter().map(|&x| x as f32).collect());
            let b32 = f32s(&[6], b.iter().map(|&x| x as f32).collect());
            let got = binary_on(Op::Binary(op), &a32, &b32);
            assert_eq!(got.dtype(), DType::F32);
            let want32: Vec<f64> = want.iter().map(|&w| w as f32 as f64).collect();
            assert_close(&got.to_f64_vec(), &want32, 0.0);
        }
    }

    #[test]
    fn binary_int_ops_by_hand() {
        let a = i64s(&[4], vec![i64::MAX, -3, 7, 0]);
        let b = i64s(&[4], vec![1, 5, -2, 0]);
        let cases = [
            (BinaryOp::Add, vec![i64::MIN, 2, 5, 0]),
            (BinaryOp::Sub, vec![i64::MAX - 1, -8, 9, 0]),
            (BinaryOp::Mul, vec![i64::MAX, -15, -14, 0]),
            (BinaryOp::Max, vec![i64::MAX, 5, 7, 0]),
            (BinaryOp::Min, vec![1, -3, -2, 0]),
        ];
        for (op, want) in cases {
            assert_eq!(
                binary_on(Op::Binary(op), &a, &b).data,
                Data::I64(want),
                "{op:?}"
            );
        }
    }

    #[test]
    fn compare_ops_on_every_dtype() {
        use CmpOp::*;
        let all = [Eq, Ne, Lt, Le, Gt, Ge];
        // (a, b) pairs: less, equal, greater (and NaN for floats).
        let check = |a: Literal, b: Literal, want: [&[bool]; 6]| {
            for (c, w) in all.iter().zip(want) {
                let got = binary_on(Op::Compare(*c), &a, &b);
                assert_eq!(got.data, Data::Bool(w.to_vec()), "{c:?} on {}", a.dtype());
            }
        };
        let nan = f64::NAN;
        let float_want: [&[bool]; 6] = [
            &[false, true, false, false],
            &[true, false, true, true],
            &[true, false, false, false],
            &[true, true, false, false],
            &[false, false, true, false],
            &[false, true, true, false],
        ];
        check(
            f64s(&[4], vec![1.0, 2.0, 3.0, nan]),
            f64s(&[4], vec![2.0, 2.0, -3.0, 1.0]),
            float_want,
        );
        check(
            f32s(&[4], vec![1.0, 2.0, 3.0, f32::NAN]),
            f32s(&[4], vec![2.0, 2.0, -3.0, 1.0]),
            float_want,
        );
        // 2^53 and 2^53 + 1 are equal as f64: i64 must compare exactly.
        let big = 1i64 << 53;
        let three: [&[bool]; 6] = [
            &[false, true, false],
            &[true, false, true],
            &[true, false, false],
            &[true, true, false],
            &[false, false, true],
            &[false, true, true],
        ];
        check(
            i64s(&[3], vec![big, big + 1, -1]),
            i64s(&[3], vec![big + 1, big + 1, -2]),
            three,
        );
        check(
            bools(&[3], vec![false, true, true]),
            bools(&[3], vec![true, true, false]),
            three,
        );
    }

    #[test]
    fn where_selects_elementwise() {
        let mut g = Graph::new();
        let c = g.input("c", ty(DType::Bool, &[4])).unwrap();
        let a = g.input("a", ty(DType::I64, &[4])).unwrap();
        let b = g.input("b", ty(DType::I64, &[4])).unwrap();
        let w = g.select(c, a, b).unwrap();
        let (cv, av, bv) = (
            bools(&[4], vec![true, false, false, true]),
            i64s(&[4], vec![1, 2, 3, 4]),
            i64s(&[4], vec![10, 20, 30, 40]),
        );
        let got = eval1(&g, &[(c, &cv), (a, &av), (b, &bv)], w);
        assert_eq!(got.data, Data::I64(vec![1, 20, 30, 4]));
    }

    #[test]
    fn cast_truncates_and_tests_nonzero() {
        let a = f32s(&[5], vec![-1.7, 2.5, 0.0, f32::NAN, -0.0]);
        assert_eq!(
            op_on(Op::Cast(DType::I64), &a).data,
            Data::I64(vec![-1, 2, 0, 0, 0])
        );
        assert_eq!(
            op_on(Op::Cast(DType::Bool), &a).data,
            Data::Bool(vec![true, true, false, true, false])
        );
        let b = bools(&[2], vec![true, false]);
        assert_eq!(
            op_on(Op::Cast(DType::F64), &b).data,
            Data::F64(vec![1.0, 0.0])
        );
        let i = i64s(&[2], vec![-3, 16_777_217]);
        assert_eq!(
            op_on(Op::Cast(DType::F32), &i).data,
            Data::F32(vec![-3.0, 16_777_216.0])
        );
        let d = f64s(&[1], vec![0.1]);
        assert_eq!(
            op_on(Op::Cast(DType::F32), &d).data,
            Data::F32(vec![0.1f32])
        );
    }

    #[test]
    fn full_and_const_by_hand() {
        let mut g = Graph::new();
        let f = g.full(2.75, ty(DType::I64, &[2, 2])).unwrap();
        let h = g.full(-0.5, ty(DType::F32, &[3])).unwrap();
        let k = g.constant(f64s(&[2], vec![1.0, -1.0])).unwrap();
        let s = g.full(7.0, ty(DType::F64, &[])).unwrap();
        let got = eval_many(&g, &[], &[f, h, k, s]);
        assert_eq!(got[0], i64s(&[2, 2], vec![2; 4]));
        assert_eq!(got[1], f32s(&[3], vec![-0.5; 3]));
        assert_eq!(got[2], f64s(&[2], vec![1.0, -1.0]));
        assert_eq!(got[3], f64s(&[], vec![7.0]));
    }

    fn reduce_on(op: ReduceOp, axes: &[usize], a: &Literal) -> Literal {
        op_on(
            Op::Reduce {
                op,
                axes: axes.to_vec(),
            },
            a,
        )
    }

    #[test]
    fn reduce_sum_and_max_keep_axes() {
        let a = f64s(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        use ReduceOp::{Max, Sum};
        assert_eq!(reduce_on(Sum, &[1], &a), f64s(&[2, 1], vec![6.0, 15.0]));
        assert_eq!(reduce_on(Sum, &[0], &a), f64s(&[1, 3], vec![5.0, 7.0, 9.0]));
        assert_eq!(reduce_on(Sum, &[0, 1], &a), f64s(&[1, 1], vec![21.0]));
        assert_eq!(reduce_on(Sum, &[], &a), a);
        assert_eq!(reduce_on(Max, &[1], &a), f64s(&[2, 1], vec![3.0, 6.0]));
        assert_eq!(reduce_on(Max, &[0], &a), f64s(&[1, 3], vec![4.0, 5.0, 6.0]));
        let i = i64s(&[2, 2], vec![i64::MAX, 1, -5, -7]);
        assert_eq!(reduce_on(Sum, &[1], &i), i64s(&[2, 1], vec![i64::MIN, -12]));
        assert_eq!(reduce_on(Max, &[0], &i), i64s(&[1, 2], vec![i64::MAX, 1]));

        // [2, 3, 4] over axes {0, 2} against the direct formula.
        let v: Vec<f64> = (0..24).map(|x| ((x * 7) % 11) as f64 - 5.0).collect();
        let x = f32s(&[2, 3, 4], v.iter().map(|&x| x as f32).collect());
        let mut sums = vec![0.0; 3];
        let mut maxs = vec![f64::NEG_INFINITY; 3];
        for a in 0..2 {
            for b in 0..3 {
                for c in 0..4 {
                    sums[b] += v[(a * 3 + b) * 4 + c];
                    maxs[b] = maxs[b].max(v[(a * 3 + b) * 4 + c]);
                }
            }
        }
        let s = reduce_on(Sum, &[0, 2], &x);
        assert_eq!(s.shape, vec![1, 3, 1]);
        assert_close(&s.to_f64_vec(), &sums, 0.0);
        assert_close(&reduce_on(Max, &[0, 2], &x).to_f64_vec(), &maxs, 0.0);

        // Empty extents: the identities.
        let e = f32s(&[2, 0], vec![]);
        assert_eq!(reduce_on(Sum, &[1], &e), f32s(&[2, 1], vec![0.0, 0.0]));
        assert_eq!(
            reduce_on(Max, &[1], &e),
            f32s(&[2, 1], vec![f32::NEG_INFINITY; 2])
        );
        let ei = i64s(&[0, 3], vec![]);
        assert_eq!(reduce_on(Max, &[0], &ei), i64s(&[1, 3], vec![i64::MIN; 3]));
        assert_eq!(reduce_on(Sum, &[0], &ei), i64s(&[1, 3], vec![0; 3]));
        // NaN propagates through max wherever it sits.
        let n = f64s(&[2, 3], vec![f64::NAN, 1.0, 2.0, 1.0, 2.0, f64::NAN]);
        let m = reduce_on(Max, &[1], &n).to_f64_vec();
        assert!(m[0].is_nan() && m[1].is_nan(), "{m:?}");
    }

    #[test]
    fn f32_sums_accumulate_in_f64() {
        // In f32, 2^24 + 1 + 1 rounds to 2^24 twice; summed in f64 it is exact.
        let v = vec![16_777_216.0f32, 1.0, 1.0];
        let s = reduce_on(ReduceOp::Sum, &[0], &f32s(&[3], v.clone()));
        assert_eq!(s.data, Data::F32(vec![16_777_218.0]));
        let a = f32s(&[1, 3], v);
        let b = f32s(&[3, 1], vec![1.0; 3]);
        assert_eq!(
            binary_on(Op::MatMul, &a, &b).data,
            Data::F32(vec![16_777_218.0])
        );
    }

    #[test]
    fn reshape_permute_expand_by_hand() {
        let a = i64s(&[2, 3], vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(
            op_on(Op::Reshape(vec![3, 1, 2]), &a),
            i64s(&[3, 1, 2], vec![0, 1, 2, 3, 4, 5])
        );
        assert_eq!(
            op_on(Op::Permute(vec![1, 0]), &a),
            i64s(&[3, 2], vec![0, 3, 1, 4, 2, 5])
        );
        // [2,3,4] -> perm [2,0,1]: out[k,i,j] = a[i,j,k].
        let b = i64s(&[2, 3, 4], (0..24).collect());
        let p = op_on(Op::Permute(vec![2, 0, 1]), &b);
        assert_eq!(p.shape, vec![4, 2, 3]);
        let Data::I64(pv) = &p.data else { panic!() };
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    assert_eq!(pv[(k * 2 + i) * 3 + j], ((i * 3 + j) * 4 + k) as i64);
                }
            }
        }
        let c = f32s(&[3, 1], vec![1.0, 2.0, 3.0]);
        assert_eq!(
            op_on(Op::Expand(vec![3, 2]), &c),
            f32s(&[3, 2], vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
        );
        let d = bools(&[1, 2, 1], vec![true, false]);
        assert_eq!(
            op_on(Op::Expand(vec![2, 2, 3]), &d),
            bools(
                &[2, 2, 3],
                [[true; 3], [false; 3], [true; 3], [false; 3]].concat()
            )
        );
        let s = f64s(&[], vec![5.0]);
        assert_eq!(op_on(Op::Reshape(vec![1, 1]), &s), f64s(&[1, 1], vec![5.0]));
        assert_eq!(op_on(Op::Detach, &a), a);
    }

    #[test]
    fn slice_pad_concat_by_hand() {
        let a = i64s(&[10], (0..10).collect());
        let s = |start, end, step| SliceAxis { start, end, step };
        assert_eq!(
            op_on(Op::Slice(vec![s(1, 8, 3)]), &a),
            i64s(&[3], vec![1, 4, 7])
        );
        assert_eq!(op_on(Op::Slice(vec![s(4, 4, 1)]), &a), i64s(&[0], vec![]));
        let m = i64s(&[3, 4], (0..12).collect());
        assert_eq!(
            op_on(Op::Slice(vec![s(0, 3, 2), s(1, 4, 2)]), &m),
            i64s(&[2, 2], vec![1, 3, 9, 11])
        );
        let b = f32s(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let pad = Op::Pad {
            lo: vec![1, 0],
            hi: vec![0, 2],
            value: 9.0,
        };
        assert_eq!(
            op_on(pad, &b),
            f32s(
                &[3, 4],
                vec![9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 9.0, 9.0, 3.0, 4.0, 9.0, 9.0]
            )
        );

        let mut g = Graph::new();
        let x = g.input("x", ty(DType::I64, &[2, 1])).unwrap();
        let y = g.input("y", ty(DType::I64, &[2, 2])).unwrap();
        let z = g.input("z", ty(DType::I64, &[2, 0])).unwrap();
        let c1 = g.concat(&[x, y, z, x], 1).unwrap();
        let c0 = g.concat(&[y, y], 0).unwrap();
        let (xv, yv, zv) = (
            i64s(&[2, 1], vec![1, 2]),
            i64s(&[2, 2], vec![3, 4, 5, 6]),
            i64s(&[2, 0], vec![]),
        );
        let got = eval_many(&g, &[(x, &xv), (y, &yv), (z, &zv)], &[c1, c0]);
        assert_eq!(got[0], i64s(&[2, 4], vec![1, 3, 4, 1, 2, 5, 6, 2]));
        assert_eq!(got[1], i64s(&[4, 2], vec![3, 4, 5, 6, 3, 4, 5, 6]));
    }

    #[test]
    fn rank7_permute_slice_pad_match_index_formulas() {
        let shape = [2, 1, 3, 2, 2, 1, 3];
        let n = numel(&shape);
        let xv = f64s(&shape, (0..n).map(|i| i as f64).collect());
        let perm = vec![6, 0, 5, 1, 4, 2, 3];
        let s = |start, end, step| SliceAxis { start, end, step };
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F64, &shape)).unwrap();
        let p = g.permute(x, perm.clone()).unwrap(); // [3,2,1,1,2,3,2]
        let axes = vec![
            s(0, 3, 2),
            s(1, 2, 1),
            s(0, 1, 1),
            s(0, 1, 1),
            s(0, 2, 1),
            s(0, 3, 2),
            s(1, 2, 1),
        ];
        let sl = g.slice(p, axes.clone()).unwrap(); // [2,1,1,1,2,2,1]
        let (lo, hi) = (vec![1, 0, 2, 0, 1, 0, 3], vec![0, 1, 0, 2, 1, 1, 0]);
        let pd = g.pad(sl, lo.clone(), hi.clone(), -1.0).unwrap();
        let got = eval_many(&g, &[(x, &xv)], &[p, sl, pd]);
        let (pv, sv, dv) = (
            got[0].to_f64_vec(),
            got[1].to_f64_vec(),
            got[2].to_f64_vec(),
        );

        // Each checked from its own operand by the definition, one output index at a time.
        let mut idx = vec![0; 7];
        let mut src = vec![0; 7];
        let ps = &got[0].shape;
        assert_eq!(ps, &vec![3, 2, 1, 1, 2, 3, 2]);
        for (f, &v) in pv.iter().enumerate() {
            unravel(f, ps, &mut idx);
            for i in 0..7 {
                src[perm[i]] = idx[i];
            }
            assert_eq!(v, ravel(&src, &shape) as f64);
        }
        let ss = &got[1].shape;
        assert_eq!(ss, &vec![2, 1, 1, 1, 2, 2, 1]);
        for (f, &v) in sv.iter().enumerate() {
            unravel(f, ss, &mut idx);
            for i in 0..7 {
                src[i] = axes[i].start + idx[i] * axes[i].step;
            }
            assert_eq!(v, pv[ravel(&src, ps)]);
        }
        let ds = &got[2].shape;
        let want_ds: Vec<usize> = (0..7).map(|i| ss[i] + lo[i] + hi[i]).collect();
        assert_eq!(ds, &want_ds);
        let mut inside = 0;
        for (f, &v) in dv.iter().enumerate() {
            unravel(f, ds, &mut idx);
            if (0..7).all(|i| idx[i] >= lo[i] && idx[i] - lo[i] < ss[i]) {
                for i in 0..7 {
                    src[i] = idx[i] - lo[i];
                }
                assert_eq!(v, sv[ravel(&src, ss)]);
                inside += 1;
            } else {
                assert_eq!(v, -1.0);
            }
        }
        assert_eq!(inside, sv.len());
    }

    #[test]
    fn matmul_by_hand_and_batched_direct_formula() {
        let a = f64s(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = f64s(&[2, 2], vec![5.0, 6.0, 7.0, 8.0]);
        assert_eq!(
            binary_on(Op::MatMul, &a, &b),
            f64s(&[2, 2], vec![19.0, 22.0, 43.0, 50.0])
        );
        let mut rng = Rng(7);
        let (bs, m, k, n) = ([2, 3], 4, 5, 2);
        let av = rng.vec(6 * m * k);
        let bv = rng.vec(6 * k * n);
        let got = binary_on(
            Op::MatMul,
            &f64s(&[bs[0], bs[1], m, k], av.clone()),
            &f64s(&[bs[0], bs[1], k, n], bv.clone()),
        );
        assert_eq!(got.shape, vec![2, 3, m, n]);
        let mut want = vec![0.0; 6 * m * n];
        for t in 0..6 {
            for i in 0..m {
                for j in 0..n {
                    want[(t * m + i) * n + j] = (0..k)
                        .map(|p| av[(t * m + i) * k + p] * bv[(t * k + p) * n + j])
                        .sum();
                }
            }
        }
        assert_close(&got.to_f64_vec(), &want, 1e-14);
        // Degenerate inner size: all zeros.
        let z = binary_on(Op::MatMul, &f32s(&[2, 0], vec![]), &f32s(&[0, 3], vec![]));
        assert_eq!(z, f32s(&[2, 3], vec![0.0; 6]));
    }

    fn params(s: &[usize], p: &[usize], d: &[usize], groups: usize) -> ConvParams {
        ConvParams {
            stride: s.to_vec(),
            padding: p.to_vec(),
            dilation: d.to_vec(),
            groups,
            output_padding: vec![0; s.len()],
        }
    }

    #[test]
    fn conv1d_family_by_hand() {
        // y[o] = x[o-1] - x[o+1] (padding 1 reads zeros).
        let p = params(&[1], &[1], &[1], 1);
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F32, &[1, 1, 5])).unwrap();
        let w = g.param("w", ty(DType::F32, &[1, 1, 3])).unwrap();
        let y = g.conv(x, w, p).unwrap();
        let (xv, wv) = (
            f32s(&[1, 1, 5], vec![1.0, 2.0, 3.0, 4.0, 5.0]),
            f32s(&[1, 1, 3], vec![1.0, 0.0, -1.0]),
        );
        let got = eval1(&g, &[(x, &xv), (w, &wv)], y);
        assert_eq!(got, f32s(&[1, 1, 5], vec![-2.0, -2.0, -2.0, -2.0, 4.0]));

        // Transposed, stride 2: y[j] = sum over 2i + k == j of x[i] w[k].
        let mut p = params(&[2], &[0], &[1], 1);
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F64, &[1, 1, 2])).unwrap();
        let w = g.param("w", ty(DType::F64, &[1, 1, 3])).unwrap();
        let y = g.conv_transpose(x, w, p.clone()).unwrap();
        p.output_padding = vec![1];
        let y1 = g.conv_transpose(x, w, p).unwrap();
        let (xv, wv) = (
            f64s(&[1, 1, 2], vec![1.0, 2.0]),
            f64s(&[1, 1, 3], vec![1.0, 1.0, 1.0]),
        );
        let got = eval_many(&g, &[(x, &xv), (w, &wv)], &[y, y1]);
        assert_eq!(got[0], f64s(&[1, 1, 5], vec![1.0, 1.0, 3.0, 2.0, 2.0]));
        // output_padding only adds positions no term reaches.
        assert_eq!(got[1], f64s(&[1, 1, 6], vec![1.0, 1.0, 3.0, 2.0, 2.0, 0.0]));

        // Weight gradient: dw[k] = sum_o x[o + k] dy[o].
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F64, &[1, 1, 3])).unwrap();
        let dy = g.input("dy", ty(DType::F64, &[1, 1, 2])).unwrap();
        let dw = g
            .conv_weight(x, dy, params(&[1], &[0], &[1], 1), vec![2])
            .unwrap();
        let (xv, dyv) = (
            f64s(&[1, 1, 3], vec![1.0, 2.0, 3.0]),
            f64s(&[1, 1, 2], vec![1.0, 10.0]),
        );
        let got = eval1(&g, &[(x, &xv), (dy, &dyv)], dw);
        assert_eq!(got, f64s(&[1, 1, 2], vec![21.0, 32.0]));
    }

    /// Sizes of a 2-D convolution test: `x [n, cin, h, w]`, `w [cout, cin/g, kh, kw]`.
    struct Conv2d {
        n: usize,
        cin: usize,
        cout: usize,
        g: usize,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        d: [usize; 2],
    }

    impl Conv2d {
        fn out(&self, j: usize) -> usize {
            (self.hw[j] + 2 * self.p[j] - self.d[j] * (self.k[j] - 1) - 1) / self.s[j] + 1
        }
        /// Input position of output `o` and tap `k` on axis `j`, if inside the input.
        fn pos(&self, j: usize, o: usize, k: usize) -> Option<usize> {
            let t = (o * self.s[j] + k * self.d[j]) as isize - self.p[j] as isize;
            (t >= 0 && (t as usize) < self.hw[j]).then_some(t as usize)
        }
        fn x_at(&self, n: usize, c: usize, h: usize, w: usize) -> usize {
            ((n * self.cin + c) * self.hw[0] + h) * self.hw[1] + w
        }
        fn w_at(&self, co: usize, c: usize, a: usize, b: usize) -> usize {
            ((co * (self.cin / self.g) + c) * self.k[0] + a) * self.k[1] + b
        }
        fn y_at(&self, n: usize, co: usize, i: usize, j: usize) -> usize {
            ((n * self.cout + co) * self.out(0) + i) * self.out(1) + j
        }
        /// Naive conv: y[n, co, i, j] = sum_{c, a, b} x[n, g*cin_g + c, pos] * w[co, c, a, b].
        fn naive_conv(&self, x: &[f64], w: &[f64]) -> Vec<f64> {
            let (cin_g, cout_g) = (self.cin / self.g, self.cout / self.g);
            let mut y = vec![0.0; self.n * self.cout * self.out(0) * self.out(1)];
            for n in 0..self.n {
                for co in 0..self.cout {
                    let grp = co / cout_g;
                    for i in 0..self.out(0) {
                        for j in 0..self.out(1) {
                            let mut acc = 0.0;
                            for c in 0..cin_g {
                                for a in 0..self.k[0] {
                                    for b in 0..self.k[1] {
                                        if let (Some(h), Some(v)) =
                                            (self.pos(0, i, a), self.pos(1, j, b))
                                        {
                                            acc += x[self.x_at(n, grp * cin_g + c, h, v)]
                                                * w[self.w_at(co, c, a, b)];
                                        }
                                    }
                                }
                            }
                            y[self.y_at(n, co, i, j)] = acc;
                        }
                    }
                }
            }
            y
        }
        /// Naive transposed conv, scattering each input element through the kernel (x has
        /// `cout` channels here, the result `cin`, the weight is the forward weight).
        fn naive_transpose(&self, dy: &[f64], w: &[f64]) -> Vec<f64> {
            let (cin_g, cout_g) = (self.cin / self.g, self.cout / self.g);
            let mut x = vec![0.0; self.n * self.cin * self.hw[0] * self.hw[1]];
            for n in 0..self.n {
                for co in 0..self.cout {
                    let grp = co / cout_g;
                    for i in 0..self.out(0) {
                        for j in 0..self.out(1) {
                            for c in 0..cin_g {
                                for a in 0..self.k[0] {
                                    for b in 0..self.k[1] {
                                        if let (Some(h), Some(v)) =
                                            (self.pos(0, i, a), self.pos(1, j, b))
                                        {
                                            x[self.x_at(n, grp * cin_g + c, h, v)] += dy
                                                [self.y_at(n, co, i, j)]
                                                * w[self.w_at(co, c, a, b)];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            x
        }
        /// Naive weight gradient: dw[co, c, a, b] = sum_{n, i, j} x[n, g*cin_g + c, pos] dy[n, co, i, j].
        fn naive_weight(&self, x: &[f64], dy: &[f64]) -> Vec<f64> {
            let (cin_g, cout_g) = (self.cin / self.g, self.cout / self.g);
            let mut dw = vec![0.0; self.cout * cin_g * self.k[0] * self.k[1]];
            for co in 0..self.cout {
                let grp = co / cout_g;
                for c in 0..cin_g {
                    for a in 0..self.k[0] {
                        for b in 0..self.k[1] {
                            let mut acc = 0.0;
                            for n in 0..self.n {
                                for i in 0..self.out(0) {
                                    for j in 0..self.out(1) {
                                        if let (Some(h), Some(v)) =
                                            (self.pos(0, i, a), self.pos(1, j, b))
                                        {
                                            acc += x[self.x_at(n, grp * cin_g + c, h, v)]
                                                * dy[self.y_at(n, co, i, j)];
                                        }
                                    }
                                }
                            }
                            dw[self.w_at(co, c, a, b)] = acc;
                        }
                    }
                }
            }
            dw
        }
    }

    #[test]
    fn conv2d_family_matches_naive_loops() {
        let cases = [
            // The brief's case: stride 2, padding 1, dilation 2, groups 2.
            Conv2d {
                n: 2,
                cin: 4,
                cout: 6,
                g: 2,
                hw: [7, 6],
                k: [3, 2],
                s: [2, 2],
                p: [1, 1],
                d: [2, 2],
            },
            // Different per axis, depthwise-like groups.
            Conv2d {
                n: 1,
                cin: 3,
                cout: 6,
                g: 3,
                hw: [8, 5],
                k: [2, 3],
                s: [3, 1],
                p: [0, 2],
                d: [1, 2],
            },
        ];
        let mut rng = Rng(42);
        for c in &cases {
            let xs = [c.n, c.cin, c.hw[0], c.hw[1]];
            let ws = [c.cout, c.cin / c.g, c.k[0], c.k[1]];
            let ys = [c.n, c.cout, c.out(0), c.out(1)];
            let xv = rng.vec(numel(&xs));
            let wv = rng.vec(numel(&ws));
            let dyv = rng.vec(numel(&ys));
            let p = params(&c.s, &c.p, &c.d, c.g);
            // output_padding that gives conv_transpose the input's size back
            let mut pt = p.clone();
            for j in 0..2 {
                let full = (c.out(j) - 1) * c.s[j] + c.d[j] * (c.k[j] - 1) + 1 - 2 * c.p[j];
                pt.output_padding[j] = c.hw[j] - full;
            }
            for dtype in [DType::F64, DType::F32] {
                let lit = |shape: &[usize], v: &[f64]| Literal::from_f64(shape, dtype, v);
                let tol = if dtype == DType::F64 { 1e-14 } else { 1e-6 };
                let mut g = Graph::new();
                let x = g.input("x", ty(dtype, &xs)).unwrap();
                let w = g.param("w", ty(dtype, &ws)).unwrap();
                let dy = g.input("dy", ty(dtype, &ys)).unwrap();
                let y = g.conv(x, w, p.clone()).unwrap();
                let xt = g.conv_transpose(dy, w, pt.clone()).unwrap();
                let dw = g.conv_weight(x, dy, p.clone(), c.k.to_vec()).unwrap();
                let (xl, wl, dyl) = (lit(&xs, &xv), lit(&ws, &wv), lit(&ys, &dyv));
                let got = eval_many(&g, &[(x, &xl), (w, &wl), (dy, &dyl)], &[y, xt, dw]);
                assert_eq!(got[0].shape, ys.to_vec());
                assert_eq!(got[1].shape, xs.to_vec());
                assert_eq!(got[2].shape, ws.to_vec());
                // the naive formulas see the same (rounded) inputs
                let (xr, wr, dyr) = (xl.to_f64_vec(), wl.to_f64_vec(), dyl.to_f64_vec());
                assert_close(&got[0].to_f64_vec(), &c.naive_conv(&xr, &wr), tol);
                assert_close(&got[1].to_f64_vec(), &c.naive_transpose(&dyr, &wr), tol);
                assert_close(&got[2].to_f64_vec(), &c.naive_weight(&xr, &dyr), tol);
            }
        }
    }

    #[test]
    fn valid_output_range_matches_brute_force() {
        for y_len in 0..7 {
            for x_len in 0..9 {
                for s in 1..4 {
                    for kd in 0..7 {
                        for p in 0..4 {
                            let inside: Vec<usize> = (0..y_len)
                                .filter(|&o| o * s + kd >= p && o * s + kd - p < x_len)
                                .collect();
                            let (lo, hi) = valid_outputs(y_len, x_len, s, kd, p);
                            let got: Vec<usize> = (lo..hi).collect();
                            assert_eq!(got, inside, "y {y_len} x {x_len} s {s} kd {kd} p {p}");
                        }
                    }
                }
            }
        }
    }

    fn dot(a: &Literal, b: &Literal) -> f64 {
        a.to_f64_vec()
            .iter()
            .zip(b.to_f64_vec())
            .map(|(x, y)| x * y)
            .sum()
    }

    /// `<conv(x, w), u> == <x, conv_transpose(u, w)> == <w, conv_weight(x, u)>`.
    #[test]
    fn conv_transpose_and_conv_weight_are_adjoints_of_conv_1d_2d_3d() {
        // (batch, cin, cout, groups, input size, kernel, stride, padding, dilation)
        type Case = (
            usize,
            usize,
            usize,
            usize,
            Vec<usize>,
            Vec<usize>,
            Vec<usize>,
            Vec<usize>,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            (2, 4, 6, 2, vec![11], vec![3], vec![2], vec![1], vec![2]),
            (1, 4, 2, 2, vec![12], vec![3], vec![2], vec![1], vec![2]), // output_padding 1
            (
                1,
                6,
                4,
                2,
                vec![9, 8],
                vec![3, 2],
                vec![2, 3],
                vec![1, 0],
                vec![1, 2],
            ),
            (
                2,
                3,
                6,
                3,
                vec![5, 6, 4],
                vec![3, 3, 2],
                vec![1, 2, 2],
                vec![1, 1, 0],
                vec![1, 1, 1],
            ),
            (
                1,
                2,
                2,
                1,
                vec![6, 5, 7],
                vec![2, 3, 3],
                vec![2, 1, 3],
                vec![0, 2, 1],
                vec![2, 1, 1],
            ),
        ];
        let mut rng = Rng(2024);
        let mut saw_output_padding = false;
        for (n, cin, cout, groups, xs, ks, s, p, d) in cases {
            let nd = xs.len();
            let p = params(&s, &p, &d, groups);
            let x_shape = [vec![n, cin], xs.clone()].concat();
            let w_shape = [vec![cout, cin / groups], ks.clone()].concat();
            let mut g = Graph::new();
            let x = g.input("x", ty(DType::F64, &x_shape)).unwrap();
            let w = g.param("w", ty(DType::F64, &w_shape)).unwrap();
            let y = g.conv(x, w, p.clone()).unwrap();
            let y_shape = g.shape(y).to_vec();
            let u = g.input("u", ty(DType::F64, &y_shape)).unwrap();
            let mut pt = p.clone();
            for j in 0..nd {
                let o = y_shape[2 + j];
                let full = (o - 1) * s[j] + d[j] * (ks[j] - 1) + 1 - 2 * p.padding[j];
                pt.output_padding[j] = xs[j] - full;
                saw_output_padding |= xs[j] != full;
            }
            let xt = g.conv_transpose(u, w, pt).unwrap();
            assert_eq!(g.shape(xt), x_shape.as_slice());
            let dw = g.conv_weight(x, u, p.clone(), ks.clone()).unwrap();
            assert_eq!(g.shape(dw), w_shape.as_slice());
            let xl = f64s(&x_shape, rng.vec(numel(&x_shape)));
            let wl = f64s(&w_shape, rng.vec(numel(&w_shape)));
            let ul = f64s(&y_shape, rng.vec(numel(&y_shape)));
            let got = eval_many(&g, &[(x, &xl), (w, &wl), (u, &ul)], &[y, xt, dw]);
            let lhs = dot(&got[0], &ul);
            let via_x = dot(&xl, &got[1]);
            let via_w = dot(&wl, &got[2]);
            assert!(lhs.abs() > 1e-3, "degenerate case {x_shape:?}");
            assert!(
                (lhs - via_x).abs() <= 1e-12 * lhs.abs().max(1.0),
                "{nd}-d: {lhs} vs {via_x}"
            );
            assert!(
                (lhs - via_w).abs() <= 1e-12 * lhs.abs().max(1.0),
                "{nd}-d: {lhs} vs {via_w}"
            );
        }
        assert!(saw_output_padding);
    }

    #[test]
    fn unbound_input_and_bad_bindings_are_errors() {
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F32, &[2])).unwrap();
        let w = g.param("w", ty(DType::F32, &[2])).unwrap();
        let y = g.mul(x, w).unwrap();
        g.set_output("y", y);
        let xv = f32s(&[2], vec![1.0, 2.0]);
        let err = eval(&g, &HashMap::from([(x, &xv)]), &[y]).unwrap_err();
        assert!(matches!(err, IrError::Eval(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("param `w`") && msg.contains("not bound"),
            "{msg}"
        );
        let err = run(&g, &HashMap::from([("w".to_string(), xv.clone())])).unwrap_err();
        assert!(err.to_string().contains("input `x`"), "{err}");

        let wrong_shape = f32s(&[3], vec![0.0; 3]);
        let err = eval(&g, &HashMap::from([(x, &xv), (w, &wrong_shape)]), &[y]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("param `w`") && msg.contains("f32[3]"), "{msg}");
        let wrong_dtype = f64s(&[2], vec![0.0; 2]);
        let err = eval(&g, &HashMap::from([(x, &wrong_dtype), (w, &xv)]), &[y]).unwrap_err();
        assert!(err.to_string().contains("f64[2]"), "{err}");
        // An interior binding is checked too.
        let err = eval(&g, &HashMap::from([(y, &wrong_dtype)]), &[y]).unwrap_err();
        assert!(err.to_string().contains("(mul)"), "{err}");
        // Inconsistent literal.
        let broken = Literal {
            shape: vec![2],
            data: Data::F32(vec![1.0]),
        };
        let err = eval(&g, &HashMap::from([(x, &broken), (w, &xv)]), &[y]).unwrap_err();
        assert!(err.to_string().contains("holds 1 elements"), "{err}");
    }

    #[test]
    fn malformed_node_is_an_error_not_a_panic() {
        let mut g = Graph::new();
        let a = g.input("a", ty(DType::F32, &[2, 3])).unwrap();
        let b = g.input("b", ty(DType::F32, &[3, 2])).unwrap();
        let c = g.push_node(
            crate::graph::Node {
                op: Op::Binary(BinaryOp::Add),
                ty: ty(DType::F32, &[2, 3]),
                loc: None,
                grad_of: None,
            },
            &[a, b],
        );
        let (av, bv) = (f32s(&[2, 3], vec![0.0; 6]), f32s(&[3, 2], vec![0.0; 6]));
        let map = HashMap::from([(a, &av), (b, &bv)]);
        let err = eval(&g, &map, &[c]).unwrap_err().to_string();
        assert!(err.contains("add") && err.contains("verifier"), "{err}");
    }

    #[test]
    fn prebound_interior_node_is_used_and_its_operands_are_not_computed() {
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F64, &[2])).unwrap();
        let e = g.unary(UnaryOp::Exp, x).unwrap();
        let h = g.unary(UnaryOp::Tanh, e).unwrap();
        let y = g.add(h, h).unwrap();
        let hv = f64s(&[2], vec![1.0, -3.0]);
        let map = HashMap::from([(h, &hv)]);
        let mut stats = Stats::default();
        // `x` is unbound, but nothing below the bound `h` is needed.
        let got = eval_with_stats(&g, &map, &[y, h], &mut stats).unwrap();
        assert_eq!(got[0], f64s(&[2], vec![2.0, -6.0]));
        assert_eq!(got[1], hv);
        assert_eq!(stats.computed, 1);
    }

    #[test]
    fn only_needed_nodes_run_and_intermediates_are_freed() {
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F64, &[3])).unwrap();
        let mut cur = x;
        for _ in 0..50 {
            cur = g.unary(UnaryOp::Neg, cur).unwrap();
        }
        let sq = g.mul(cur, cur).unwrap(); // one operand used twice
        let _unused = g.unary(UnaryOp::Exp, x).unwrap();
        let xv = f64s(&[3], vec![1.0, -2.0, 3.0]);
        let mut stats = Stats::default();
        let map = HashMap::from([(x, &xv)]);
        let got = eval_with_stats(&g, &map, &[sq, x, sq], &mut stats).unwrap();
        assert_eq!(got[0], f64s(&[3], vec![1.0, 4.0, 9.0]));
        assert_eq!(got[1], xv);
        assert_eq!(got[2], got[0]);
        assert_eq!(stats.computed, 51);
        // x (wanted), the previous link and the new one.
        assert!(stats.peak_live <= 3, "{stats:?}");
    }

    #[test]
    fn run_binds_by_name_and_returns_outputs_in_order() {
        let mut g = Graph::new();
        let x = g.input("x", ty(DType::F32, &[2])).unwrap();
        let w = g.param("w", ty(DType::F32, &[2])).unwrap();
        let s = g.add(x, w).unwrap();
        let m = g.mul(x, w).unwrap();
        g.set_output("sum", s);
        g.set_output("prod", m);
        g.set_output("x_again", x);
        let values = HashMap::from([
            ("x".to_string(), f32s(&[2], vec![1.0, 2.0])),
            ("w".to_string(), f32s(&[2], vec![3.0, 4.0])),
            ("unused".to_string(), f32s(&[1], vec![0.0])),
        ]);
        let out = run(&g, &values).unwrap();
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["sum", "prod", "x_again"]);
        assert_eq!(out["sum"], f32s(&[2], vec![4.0, 6.0]));
        assert_eq!(out["prod"], f32s(&[2], vec![3.0, 8.0]));
        assert_eq!(out["x_again"], f32s(&[2], vec![1.0, 2.0]));
    }
}
