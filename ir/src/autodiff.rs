//! Symbolic reverse-mode differentiation: gradients are new nodes appended to the same graph.
//!
//! [`grad`] walks, in reverse topological order, the nodes that lie on a path from a node of
//! `wrt` to a seeded output, and applies to each the vector-Jacobian product of its op: the
//! rule table `vjp`, one exhaustive `match` over [`Op`] (as in tinygrad), so a new op cannot
//! be added without saying how it differentiates. A node used several times receives one
//! contribution per use; they are summed with `add` when the walk reaches the node.
//!
//! Conventions, all PyTorch's:
//! - only float-typed nodes carry gradients: comparisons, casts to integer or bool types and
//!   the condition of `where` stop them, and so does `detach` (by definition);
//! - a `wrt` node the outputs do not depend on (or depend on only through such ops) gets
//!   `None`, PyTorch's `None` grad, rather than a tensor of zeros;
//! - at non-differentiable points the subgradient PyTorch picks: `abs'(0) = 0`, ties of
//!   `max`/`min`/`amax` split the gradient evenly, `pow` has zero exponent-gradient where the
//!   base is 0 and the exponent is non-negative.
//!
//! # Why broadcasting is one rule
//!
//! Elementwise ops take operands of *identical* type; every broadcast is an explicit `expand`
//! (after a `reshape` adding leading 1s when the rank grows, see
//! [`Graph::broadcast_to`]). The adjoint of broadcasting, summing the gradient over the
//! broadcast axes, is therefore the rule of `expand` alone (a keepdim `reduce_sum`, after
//! which the `reshape` rule drops the added axes). The rules of `add`, `mul`, `where`, ...
//! never "unbroadcast" their operands' gradients, unlike frameworks with implicit
//! broadcasting, where every binary rule needs a `sum_to` and a forgotten one is a silent
//! shape bug.
//!
//! # Source locations
//!
//! Every node a rule emits carries the forward node's source location and a `grad_of` tag
//! naming it (through [`Graph::set_origin`]), so an error in a backward graph, or a profile of
//! it, points at the user's line that created the forward op.

use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId};
use crate::infer::conv_out_size;
use crate::op::{BinaryOp, CmpOp, ConvParams, Op, ReduceOp, SliceAxis, UnaryOp};
use crate::{verify, TensorType};
use std::collections::{HashMap, HashSet};

/// Appends to `graph` the nodes computing the gradient of `sum_i <outputs_i, seeds_i>` (each
/// seed a node of the output's type) with respect to each node of `wrt`.
///
/// Returns, per `wrt` entry, the gradient node (of that node's type) or `None` when the
/// outputs do not depend on it differentiably (PyTorch's `None` grad). A `wrt` node may be an
/// interior node; its gradient is the total derivative through all its users. Runs the
/// verifier on the result.
pub fn grad(
    graph: &mut Graph,
    seeds: &[(NodeId, NodeId)],
    wrt: &[NodeId],
) -> Result<Vec<Option<NodeId>>> {
    for &(out, seed) in seeds {
        check_node(graph, out, "output")?;
        check_node(graph, seed, "seed")?;
        if !graph.dtype(out).is_float() {
            return Err(IrError::Grad(format!(
                "output %{} has type {}; only float tensors have gradients",
                out.index(),
                graph.ty(out)
            )));
        }
        if graph.ty(seed) != graph.ty(out) {
            return Err(IrError::Grad(format!(
                "seed %{} has type {} but output %{} has type {}",
                seed.index(),
                graph.ty(seed),
                out.index(),
                graph.ty(out)
            )));
        }
    }
    for &w in wrt {
        check_node(graph, w, "wrt")?;
        if !graph.dtype(w).is_float() {
            return Err(IrError::Grad(format!(
                "cannot differentiate with respect to %{} of type {}: only float tensors have gradients",
                w.index(),
                graph.ty(w)
            )));
        }
    }

    // Nodes the outputs depend on, operands first; of these, the ones that depend on `wrt`.
    let outputs: Vec<NodeId> = seeds.iter().map(|&(o, _)| o).collect();
    let order = graph.reachable_topo(&outputs);
    let wrt_set: HashSet<NodeId> = wrt.iter().copied().collect();
    let mut on_path: HashSet<NodeId> = HashSet::new();
    for &n in &order {
        // Gradients never flow through `detach` or into non-float values (masks, indices), so
        // such nodes do not carry `wrt`-dependence to their users: no dead gradient work.
        let carries = graph.dtype(n).is_float() && !matches!(graph.node(n).op, Op::Detach);
        if wrt_set.contains(&n)
            || (carries && graph.operands(n).iter().any(|o| on_path.contains(o)))
        {
            on_path.insert(n);
        }
    }

    // Gradient contributions not yet summed, per node.
    let mut pending: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &(out, seed) in seeds {
        if on_path.contains(&out) {
            pending.entry(out).or_default().push(seed);
        }
    }
    let mut grads: HashMap<NodeId, NodeId> = HashMap::new();
    for &n in order.iter().rev() {
        if !on_path.contains(&n) {
            continue;
        }
        let Some(parts) = pending.remove(&n) else {
            continue;
        };
        let origin = (graph.node(n).loc.clone(), Some(n));
        let saved = graph.set_origin(origin.0, origin.1);
        let step = backprop_node(graph, n, &parts, &on_path, &mut pending);
        graph.set_origin(saved.0, saved.1);
        let g = step?;
        if wrt_set.contains(&n) {
            grads.insert(n, g);
        }
    }
    verify(graph)?;
    Ok(wrt.iter().map(|w| grads.get(w).copied()).collect())
}

/// The gradient of a single output seeded with ones: for a scalar loss, its gradient; for a
/// tensor, the gradient of the sum of its elements.
pub fn grad_of(graph: &mut Graph, output: NodeId, wrt: &[NodeId]) -> Result<Vec<Option<NodeId>>> {
    check_node(graph, output, "output")?;
    let ty = graph.ty(output).clone();
    let loc = graph.node(output).loc.clone();
    let saved = graph.set_origin(loc, Some(output));
    let seed = graph.full(1.0, ty);
    graph.set_origin(saved.0, saved.1);
    grad(graph, &[(output, seed?)], wrt)
}

fn check_node(graph: &Graph, id: NodeId, what: &str) -> Result<()> {
    if graph.contains(id) {
        Ok(())
    } else {
        Err(IrError::Grad(format!(
            "{what} %{} is not a node of the graph",
            id.index()
        )))
    }
}

/// Sums the contributions to `n`'s gradient, applies `n`'s rule and queues the operands'
/// contributions. Returns `n`'s gradient.
fn backprop_node(
    graph: &mut Graph,
    n: NodeId,
    parts: &[NodeId],
    on_path: &HashSet<NodeId>,
    pending: &mut HashMap<NodeId, Vec<NodeId>>,
) -> Result<NodeId> {
    let mut g = parts[0];
    for &p in &parts[1..] {
        g = graph.add(g, p)?;
    }
    let operands = graph.operands(n);
    let need: Vec<bool> = operands
        .iter()
        .map(|o| on_path.contains(o) && graph.dtype(*o).is_float())
        .collect();
    if !need.contains(&true) {
        return Ok(g);
    }
    let gs = vjp(graph, n, g, &need).map_err(|e| match e {
        IrError::Grad(_) => e,
        e => IrError::Grad(format!("rule of {}: {e}", graph.context(n))),
    })?;
    debug_assert_eq!(gs.len(), operands.len(), "rule of {}", graph.context(n));
    for ((&o, gi), &needed) in operands.iter().zip(gs).zip(&need) {
        if let (Some(gi), true) = (gi, needed) {
            debug_assert_eq!(graph.ty(gi), graph.ty(o), "rule of {}", graph.context(n));
            pending.entry(o).or_default().push(gi);
        }
    }
    Ok(g)
}

/// `Some(f(graph))` when `need`, else `None` (operand gradients nobody asked for are not built).
fn when(
    need: bool,
    graph: &mut Graph,
    f: impl FnOnce(&mut Graph) -> Result<NodeId>,
) -> Result<Option<NodeId>> {
    if need {
        f(graph).map(Some)
    } else {
        Ok(None)
    }
}

/// The rule table: given the gradient `g` of `node`'s result (same type), the gradients of its
/// operands, in operand order, `None` for an operand that gets none. Only operands with
/// `need[i]` are computed; the others may be `None`.
///
/// Notation: `out` is the node's result, `a`, `b` (or `x`, `w`) its operands, `*` and `/`
/// elementwise.
fn vjp(graph: &mut Graph, node: NodeId, g: NodeId, need: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let op = graph.node(node).op.clone();
    let ops = graph.operands(node);
    let out = node;
    Ok(match op {
        // Leaves have no operands.
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Full { .. } => vec![],

        Op::Unary(u) => {
            let x = ops[0];
            let gx = match u {
                // d(-x) = -g
                UnaryOp::Neg => graph.neg(g)?,
                // d exp(x) = g * out
                UnaryOp::Exp => graph.mul(g, out)?,
                // d log(x) = g / x
                UnaryOp::Log => graph.div(g, x)?,
                // d sqrt(x) = g / (2 out)
                UnaryOp::Sqrt => {
                    let two_out = graph.scale(out, 2.0)?;
                    graph.div(g, two_out)?
                }
                // d (1/x) = -g * out * out
                UnaryOp::Recip => {
                    let ng = graph.neg(g)?;
                    let sq = graph.mul(out, out)?;
                    graph.mul(ng, sq)?
                }
                // d |x| = g * sign(x), sign(0) = 0
                UnaryOp::Abs => {
                    let zero = graph.full_like(0.0, x)?;
                    let one = graph.full_like(1.0, x)?;
                    let minus_one = graph.full_like(-1.0, x)?;
                    let pos = graph.compare(CmpOp::Gt, x, zero)?;
                    let neg = graph.compare(CmpOp::Lt, x, zero)?;
                    let s = graph.select(neg, minus_one, zero)?;
                    let sign = graph.select(pos, one, s)?;
                    graph.mul(g, sign)?
                }
                // d tanh(x) = g * (1 - out^2)
                UnaryOp::Tanh => {
                    let one = graph.full_like(1.0, out)?;
                    let sq = graph.mul(out, out)?;
                    let d = graph.sub(one, sq)?;
                    graph.mul(g, d)?
                }
                // d sigmoid(x) = g * (1 - out) * out
                UnaryOp::Sigmoid => {
                    let one = graph.full_like(1.0, out)?;
                    let d = graph.sub(one, out)?;
                    let d = graph.mul(d, out)?;
                    graph.mul(g, d)?
                }
            };
            vec![Some(gx)]
        }

        Op::Binary(b) => {
            let (a, bb) = (ops[0], ops[1]);
            match b {
                // d(a + b) = (g, g)
                BinaryOp::Add => vec![Some(g), Some(g)],
                // d(a - b) = (g, -g)
                BinaryOp::Sub => vec![Some(g), when(need[1], graph, |gr| gr.neg(g))?],
                // d(a * b) = (g * b, g * a)
                BinaryOp::Mul => vec![
                    when(need[0], graph, |gr| gr.mul(g, bb))?,
                    when(need[1], graph, |gr| gr.mul(g, a))?,
                ],
                // d(a / b) = (g / b, -g * (out / b)), PyTorch's `-g * ((a / b) / b)`
                BinaryOp::Div => vec![
                    when(need[0], graph, |gr| gr.div(g, bb))?,
                    when(need[1], graph, |gr| {
                        let q = gr.div(out, bb)?;
                        let ng = gr.neg(g)?;
                        gr.mul(ng, q)
                    })?,
                ],
                // torch.maximum: ga = g where a > b, g/2 where a == b, 0 where a < b;
                // gb mirrored. (PyTorch: where(a == b, g/2, g).masked_fill(a < b, 0).)
                // torch.minimum: the same with the strict comparisons swapped.
                BinaryOp::Max | BinaryOp::Min => {
                    let zero = graph.full_like(0.0, g)?;
                    let half_g = graph.scale(g, 0.5)?;
                    let tie = graph.compare(CmpOp::Eq, a, bb)?;
                    let shared = graph.select(tie, half_g, g)?;
                    let (lose_a, lose_b) = if b == BinaryOp::Max {
                        (CmpOp::Lt, CmpOp::Gt)
                    } else {
                        (CmpOp::Gt, CmpOp::Lt)
                    };
                    vec![
                        when(need[0], graph, |gr| {
                            let m = gr.compare(lose_a, a, bb)?;
                            gr.select(m, zero, shared)
                        })?,
                        when(need[1], graph, |gr| {
                            let m = gr.compare(lose_b, a, bb)?;
                            gr.select(m, zero, shared)
                        })?,
                    ]
                }
                // d(a^b): ga = where(b == 0, 0, g * b * a^(b-1));
                //         gb = where(a == 0 & b >= 0, 0, g * out * log(a)) (PyTorch).
                BinaryOp::Pow => {
                    let zero = graph.full_like(0.0, g)?;
                    vec![
                        when(need[0], graph, |gr| {
                            let one = gr.full_like(1.0, bb)?;
                            let bm1 = gr.sub(bb, one)?;
                            let p = gr.binary(BinaryOp::Pow, a, bm1)?;
                            let d = gr.mul(bb, p)?;
                            let ga = gr.mul(g, d)?;
                            let b0 = gr.compare(CmpOp::Eq, bb, zero)?;
                            gr.select(b0, zero, ga)
                        })?,
                        when(need[1], graph, |gr| {
                            let la = gr.unary(UnaryOp::Log, a)?;
                            let d = gr.mul(out, la)?;
                            let gb = gr.mul(g, d)?;
                            let a0 = gr.compare(CmpOp::Eq, a, zero)?;
                            let bnn = gr.compare(CmpOp::Ge, bb, zero)?;
                            let inner = gr.select(bnn, zero, gb)?;
                            gr.select(a0, inner, gb)
                        })?,
                    ]
                }
            }
        }

        // Comparisons are piecewise constant with bool results: no gradient.
        Op::Compare(_) => vec![None, None],

        // where(c, a, b): c gets none; ga = where(c, g, 0), gb = where(c, 0, g).
        Op::Where => {
            let c = ops[0];
            let zero = graph.full_like(0.0, g)?;
            vec![
                None,
                when(need[1], graph, |gr| gr.select(c, g, zero))?,
                when(need[2], graph, |gr| gr.select(c, zero, g))?,
            ]
        }

        // Float-to-float cast: the gradient is cast back. A cast from an integer or bool type
        // never receives a float operand gradient (its operand is not float), and a cast to
        // one never receives a gradient at all.
        Op::Cast(_) => {
            let x = ops[0];
            let dt = graph.dtype(x);
            let gx = if !dt.is_float() {
                None
            } else if graph.dtype(g) == dt {
                Some(g)
            } else {
                Some(graph.cast(g, dt)?)
            };
            vec![gx]
        }

        // detach (stop_gradient): the identity, through which no gradient flows.
        Op::Detach => vec![None],

        Op::Reduce { op, axes } => {
            let x = ops[0];
            let xs = graph.shape(x).to_vec();
            let gx = match op {
                // sum over axes (kept): gx = expand(g)
                ReduceOp::Sum => graph.expand(g, xs)?,
                // amax over axes: mask = (x == expand(out)); gx = expand(g / sum(mask)) * mask,
                // the gradient split evenly among tied maxima (torch.amax).
                ReduceOp::Max => {
                    let dt = graph.dtype(x);
                    let oute = graph.expand(out, xs.clone())?;
                    let mask = graph.compare(CmpOp::Eq, x, oute)?;
                    let maskf = graph.cast(mask, dt)?;
                    let count = graph.reduce(ReduceOp::Sum, maskf, axes)?;
                    let gs = graph.div(g, count)?;
                    let ge = graph.expand(gs, xs)?;
                    graph.mul(ge, maskf)?
                }
            };
            vec![Some(gx)]
        }

        // reshape: reshape the gradient back.
        Op::Reshape(_) => {
            let xs = graph.shape(ops[0]).to_vec();
            vec![Some(graph.reshape(g, xs)?)]
        }

        // permute by perm: permute the gradient by the inverse permutation.
        Op::Permute(perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(graph.permute(g, inv)?)]
        }

        // expand (broadcast): sum the gradient over the expanded axes, keeping them (size 1).
        // This is the one rule for all broadcasting; see the module docs.
        Op::Expand(shape) => {
            let xs = graph.shape(ops[0]).to_vec();
            let axes: Vec<usize> = (0..xs.len())
                .filter(|&i| xs[i] == 1 && shape[i] != 1)
                .collect();
            let gx = if axes.is_empty() {
                g
            } else {
                graph.reduce(ReduceOp::Sum, g, axes)?
            };
            vec![Some(gx)]
        }

        // slice: scatter the gradient back into zeros of the operand's shape.
        Op::Slice(axes) => {
            let xs = graph.shape(ops[0]).to_vec();
            vec![Some(unslice(graph, g, &xs, &axes)?)]
        }

        // pad: the gradient of the operand is the interior of g, `lo[i] .. lo[i] + x[i]`.
        Op::Pad { lo, .. } => {
            let xs = graph.shape(ops[0]).to_vec();
            let axes: Vec<SliceAxis> = xs
                .iter()
                .zip(&lo)
                .map(|(&d, &l)| SliceAxis {
                    start: l,
                    end: l + d,
                    step: 1,
                })
                .collect();
            vec![Some(graph.slice(g, axes)?)]
        }

        // concat along axis: operand k's gradient is g's slice at operand k's offset.
        Op::Concat(axis) => {
            let gs = graph.shape(g).to_vec();
            let mut offset = 0;
            let mut r = Vec::with_capacity(ops.len());
            for (k, &o) in ops.iter().enumerate() {
                let len = graph.shape(o)[axis];
                let start = offset;
                offset += len;
                r.push(when(need[k], graph, |gr| {
                    let axes: Vec<SliceAxis> = gs
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| {
                            if i == axis {
                                SliceAxis {
                                    start,
                                    end: start + len,
                                    step: 1,
                                }
                            } else {
                                SliceAxis::full(d)
                            }
                        })
                        .collect();
                    gr.slice(g, axes)
                })?);
            }
            r
        }

        // a @ b: ga = g @ b^T, gb = a^T @ g (transposing the last two axes).
        Op::MatMul => {
            let (a, b) = (ops[0], ops[1]);
            vec![
                when(need[0], graph, |gr| {
                    let bt = gr.transpose_last(b)?;
                    gr.matmul(g, bt)
                })?,
                when(need[1], graph, |gr| {
                    let at = gr.transpose_last(a)?;
                    gr.matmul(at, g)
                })?,
            ]
        }

        // y = conv(x, w): gx = conv_transpose(g, w) with the same stride, padding, dilation and
        // groups, and output_padding_j = (i_j + 2p - d(k-1) - 1) mod s, the input positions
        // the strided forward conv never reached, so that gx has x's shape;
        // gw = conv_weight(x, g) with kernel = w's spatial sizes.
        Op::Conv(p) => {
            let (x, w) = (ops[0], ops[1]);
            let xs = graph.shape(x).to_vec();
            let ws = graph.shape(w).to_vec();
            vec![
                when(need[0], graph, |gr| {
                    let pt = transpose_params(&p, &xs[2..], &ws[2..]);
                    gr.conv_transpose(g, w, pt)
                })?,
                when(need[1], graph, |gr| {
                    gr.conv_weight(x, g, plain_params(&p), ws[2..].to_vec())
                })?,
            ]
        }

        // y = conv_transpose(x, w), the adjoint of x -> conv(x, w) (w: [Cin, Cout/g, k...]):
        // gx = conv(g, w) (same stride, padding, dilation, groups); gw = conv_weight(g, x)
        // with kernel = w's spatial sizes (g plays the forward input, x the forward output).
        // An output_padding >= stride (allowed when dilation > stride) adds output positions
        // that no input reaches; `conv(g, w)` then yields floor(op/s) extra positions per
        // axis, which are sliced off gx, and x is padded with as many zeros (which contribute
        // nothing) for conv_weight.
        Op::ConvTranspose(p) => {
            let (x, w) = (ops[0], ops[1]);
            let xs = graph.shape(x).to_vec();
            let ws = graph.shape(w).to_vec();
            let ys = graph.shape(out).to_vec();
            let p0 = plain_params(&p);
            let nd = p.spatial_dims();
            let mut extra = vec![0; nd];
            for j in 0..nd {
                let reach = conv_out_size(ys[2 + j], ws[2 + j], &p0, j)
                    .filter(|&r| r >= xs[2 + j])
                    .ok_or_else(|| {
                        IrError::Grad(format!(
                            "rule of {}: spatial axis {j} does not invert",
                            graph.context(node)
                        ))
                    })?;
                extra[j] = reach - xs[2 + j];
            }
            let has_extra = extra.iter().any(|&e| e > 0);
            vec![
                when(need[0], graph, |gr| {
                    let c = gr.conv(g, w, p0.clone())?;
                    if !has_extra {
                        return Ok(c);
                    }
                    let axes = xs.iter().map(|&d| SliceAxis::full(d)).collect();
                    gr.slice(c, axes)
                })?,
                when(need[1], graph, |gr| {
                    let xx = if has_extra {
                        let mut hi = vec![0, 0];
                        hi.extend_from_slice(&extra);
                        gr.pad(x, vec![0; nd + 2], hi, 0.0)?
                    } else {
                        x
                    };
                    gr.conv_weight(g, xx, p0.clone(), ws[2..].to_vec())
                })?,
            ]
        }

        // dw = conv_weight(x, dy), bilinear: dw[co,ci,k] = sum_{n,o} x[n, ci, o*s + k*d - p] *
        // dy[n, co, o]. With cotangent G of dw's shape: gx = conv_transpose(dy, G) with the
        // output_padding that gives x's shape; gdy = conv(x, G).
        Op::ConvWeight { params: p, kernel } => {
            let (x, dy) = (ops[0], ops[1]);
            let xs = graph.shape(x).to_vec();
            vec![
                when(need[0], graph, |gr| {
                    let pt = transpose_params(&p, &xs[2..], &kernel);
                    gr.conv_transpose(dy, g, pt)
                })?,
                when(need[1], graph, |gr| gr.conv(x, g, plain_params(&p)))?,
            ]
        }
    })
}

/// `p` with `output_padding` zero, for `conv` and `conv_weight`.
fn plain_params(p: &ConvParams) -> ConvParams {
    ConvParams {
        output_padding: vec![0; p.spatial_dims()],
        ..p.clone()
    }
}

/// Parameters of the `conv_transpose` that maps a forward conv's output gradient back to an
/// input of spatial sizes `input`: `output_padding_j = (i_j + 2p - d(k-1) - 1) mod s`.
fn transpose_params(p: &ConvParams, input: &[usize], kernel: &[usize]) -> ConvParams {
    let output_padding = (0..p.spatial_dims())
        .map(|j| (input[j] + 2 * p.padding[j] - p.dilation[j] * (kernel[j] - 1) - 1) % p.stride[j])
        .collect();
    ConvParams {
        output_padding,
        ..p.clone()
    }
}

/// The adjoint of `slice(x, axes)` for `x` of shape `xs`: `g` scattered into zeros.
///
/// Strided axes are interleaved with zeros first: a size-1 axis is added after each
/// (reshape), padded to the step, merged back (reshape) and cut to `(n-1)*step + 1`
/// elements (slice); then one pad puts `start` zeros before and the rest after.
fn unslice(graph: &mut Graph, g: NodeId, xs: &[usize], axes: &[SliceAxis]) -> Result<NodeId> {
    if graph.ty(g).numel() == 0 {
        let dt = graph.dtype(g);
        return graph.full(0.0, TensorType::new(dt, xs.to_vec()));
    }
    let rank = xs.len();
    let n: Vec<usize> = axes.iter().map(|a| a.len()).collect();
    // A step matters only between two selected elements.
    let step: Vec<usize> = axes
        .iter()
        .zip(&n)
        .map(|(a, &n)| if n > 1 { a.step } else { 1 })
        .collect();
    let mut cur = g;
    if step.iter().any(|&s| s > 1) {
        let mut split = Vec::new();
        let mut hi = Vec::new();
        for i in 0..rank {
            split.push(n[i]);
            hi.push(0);
            if step[i] > 1 {
                split.push(1);
                hi.push(step[i] - 1);
            }
        }
        cur = graph.reshape(cur, split.clone())?;
        cur = graph.pad(cur, vec![0; split.len()], hi, 0.0)?;
        cur = graph.reshape(cur, (0..rank).map(|i| n[i] * step[i]).collect())?;
        let cut = (0..rank)
            .map(|i| SliceAxis {
                start: 0,
                end: (n[i] - 1) * step[i] + 1,
                step: 1,
            })
            .collect();
        cur = graph.slice(cur, cut)?;
    }
    let lo: Vec<usize> = axes.iter().map(|a| a.start).collect();
    let hi: Vec<usize> = (0..rank)
        .map(|i| xs[i] - lo[i] - ((n[i] - 1) * step[i] + 1))
        .collect();
    if lo.iter().chain(&hi).any(|&v| v > 0) {
        cur = graph.pad(cur, lo, hi, 0.0)?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Loc;
    use crate::interp::eval;
    use crate::{DType, Literal};
    use std::borrow::Cow;

    fn f64t(shape: &[usize]) -> TensorType {
        TensorType::new(DType::F64, shape.to_vec())
    }

    fn lit(shape: &[usize], v: &[f64]) -> Literal {
        Literal::from_f64(shape.to_vec(), DType::F64, v)
    }

    /// Evaluates `ids` with the given bindings, as f64 vectors.
    fn values(g: &Graph, binds: &[(NodeId, &Literal)], ids: &[NodeId]) -> Vec<Vec<f64>> {
        let b: HashMap<NodeId, &Literal> = binds.iter().copied().collect();
        eval(g, &b, ids)
            .unwrap()
            .iter()
            .map(|l| l.to_f64_vec())
            .collect()
    }

    #[test]
    fn unrelated_wrt_has_no_gradient() {
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[3])).unwrap();
        let y = g.param("y", f64t(&[3])).unwrap();
        let e = g.unary(UnaryOp::Exp, x).unwrap();
        let _unused = g.mul(y, y).unwrap();
        let r = grad_of(&mut g, e, &[x, y]).unwrap();
        assert!(r[0].is_some());
        assert_eq!(r[1], None);
    }

    #[test]
    fn non_differentiable_paths_give_none() {
        // y reaches the output only through a comparison, a cast to i64 and a detach
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[2])).unwrap();
        let y = g.param("y", f64t(&[2])).unwrap();
        let z = g.param("z", f64t(&[2])).unwrap();
        let c = g.compare(CmpOp::Gt, y, x).unwrap();
        let yi = g.cast(y, DType::I64).unwrap();
        let yf = g.cast(yi, DType::F64).unwrap();
        let zd = g.push(Op::Detach, &[z]).unwrap();
        let s = g.add(yf, zd).unwrap();
        let out = g.select(c, x, s).unwrap();
        let r = grad_of(&mut g, out, &[x, y, z]).unwrap();
        assert!(r[0].is_some());
        assert_eq!(r[1], None);
        assert_eq!(r[2], None);
    }

    #[test]
    fn use_twice_accumulates() {
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[3])).unwrap();
        let y = g.mul(x, x).unwrap();
        let gx = grad_of(&mut g, y, &[x]).unwrap()[0].unwrap();
        let xv = lit(&[3], &[1.5, -2.0, 0.0]);
        assert_eq!(values(&g, &[(x, &xv)], &[gx])[0], vec![3.0, -4.0, 0.0]);
    }

    #[test]
    fn interior_wrt_and_output_wrt() {
        // out = exp(h) * h with h = 2x: d out/dh = exp(h)(1 + h); d out/dx = 2 exp(h)(1 + h)
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[1])).unwrap();
        let h = g.scale(x, 2.0).unwrap();
        let e = g.unary(UnaryOp::Exp, h).unwrap();
        let out = g.mul(e, h).unwrap();
        let r = grad_of(&mut g, out, &[h, x, out]).unwrap();
        let xv = lit(&[1], &[0.25]);
        let v = values(
            &g,
            &[(x, &xv)],
            &[r[0].unwrap(), r[1].unwrap(), r[2].unwrap()],
        );
        let dh = 0.5f64.exp() * 1.5;
        assert!((v[0][0] - dh).abs() < 1e-12);
        assert!((v[1][0] - 2.0 * dh).abs() < 1e-12);
        assert_eq!(v[2], vec![1.0]);
    }

    #[test]
    fn several_seeds_add_up() {
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[2])).unwrap();
        let a = g.scale(x, 3.0).unwrap();
        let b = g.mul(x, x).unwrap();
        let sa = g.full(2.0, f64t(&[2])).unwrap();
        let sb = g.full(1.0, f64t(&[2])).unwrap();
        let gx = grad(&mut g, &[(a, sa), (b, sb)], &[x]).unwrap()[0].unwrap();
        let xv = lit(&[2], &[1.0, -1.0]);
        // 2*3 + 1*2x
        assert_eq!(values(&g, &[(x, &xv)], &[gx])[0], vec![8.0, 4.0]);
    }

    #[test]
    fn gradient_nodes_carry_loc_and_tag() {
        let mut g = Graph::new();
        let here = |line| Loc {
            file: Cow::Borrowed("model.rs"),
            line,
            col: 5,
        };
        let x = g.param("x", f64t(&[2, 3])).unwrap();
        let w = g.param("w", f64t(&[3, 4])).unwrap();
        g.set_origin(Some(here(10)), None);
        let y = g.matmul(x, w).unwrap();
        g.set_origin(Some(here(11)), None);
        let t = g.unary(UnaryOp::Tanh, y).unwrap();
        g.set_origin(Some(here(12)), None);
        let s = g.reduce(ReduceOp::Sum, t, vec![0, 1]).unwrap();
        let before: HashSet<NodeId> = g.node_ids().into_iter().collect();
        let marker = Some(here(99));
        g.set_origin(marker.clone(), None);
        let r = grad_of(&mut g, s, &[x, w]).unwrap();
        // the caller's origin is restored
        assert_eq!(g.set_origin(None, None), (marker, None));
        let new: Vec<NodeId> = g
            .node_ids()
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        assert!(!new.is_empty());
        for n in new {
            let node = g.node(n);
            let f = node.grad_of.expect("gradient node without grad_of tag");
            assert!(before.contains(&f));
            assert_eq!(node.loc, g.node(f).loc, "node %{}", n.index());
        }
        // the gradient of x comes out of the matmul rule, at line 10
        let gx = g.node(r[0].unwrap());
        assert_eq!(gx.grad_of, Some(y));
        assert_eq!(gx.loc, Some(here(10)));
    }

    #[test]
    fn maximum_and_minimum_split_ties_evenly() {
        for op in [BinaryOp::Max, BinaryOp::Min] {
            let mut g = Graph::new();
            let a = g.param("a", f64t(&[3])).unwrap();
            let b = g.param("b", f64t(&[3])).unwrap();
            let y = g.binary(op, a, b).unwrap();
            let r = grad_of(&mut g, y, &[a, b]).unwrap();
            let av = lit(&[3], &[1.0, 2.0, 3.0]);
            let bv = lit(&[3], &[1.0, 5.0, -3.0]);
            let v = values(&g, &[(a, &av), (b, &bv)], &[r[0].unwrap(), r[1].unwrap()]);
            if op == BinaryOp::Max {
                assert_eq!(v[0], vec![0.5, 0.0, 1.0]);
                assert_eq!(v[1], vec![0.5, 1.0, 0.0]);
            } else {
                assert_eq!(v[0], vec![0.5, 1.0, 0.0]);
                assert_eq!(v[1], vec![0.5, 0.0, 1.0]);
            }
        }
    }

    #[test]
    fn amax_splits_ties_evenly() {
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[2, 3])).unwrap();
        let m = g.reduce(ReduceOp::Max, x, vec![1]).unwrap();
        let gx = grad_of(&mut g, m, &[x]).unwrap()[0].unwrap();
        let xv = lit(&[2, 3], &[4.0, 1.0, 4.0, 7.0, 7.0, 7.0]);
        let third = 1.0 / 3.0;
        assert_eq!(
            values(&g, &[(x, &xv)], &[gx])[0],
            vec![0.5, 0.0, 0.5, third, third, third]
        );
    }

    #[test]
    fn relu_as_where_and_abs_have_zero_gradient_at_zero() {
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[3])).unwrap();
        let zero = g.full(0.0, f64t(&[3])).unwrap();
        let pos = g.compare(CmpOp::Gt, x, zero).unwrap();
        let relu = g.select(pos, x, zero).unwrap();
        let abs = g.unary(UnaryOp::Abs, x).unwrap();
        let gr = grad_of(&mut g, relu, &[x]).unwrap()[0].unwrap();
        let ga = grad_of(&mut g, abs, &[x]).unwrap()[0].unwrap();
        let xv = lit(&[3], &[-1.0, 0.0, 2.0]);
        let v = values(&g, &[(x, &xv)], &[gr, ga]);
        assert_eq!(v[0], vec![0.0, 0.0, 1.0]);
        assert_eq!(v[1], vec![-1.0, 0.0, 1.0]);
    }

    #[test]
    fn pow_follows_pytorch_at_zero() {
        // a = 0: d/db is 0 where b >= 0 (not NaN from log 0); b = 0: d/da is 0 (not 0 * inf)
        let mut g = Graph::new();
        let a = g.param("a", f64t(&[3])).unwrap();
        let b = g.param("b", f64t(&[3])).unwrap();
        let y = g.binary(BinaryOp::Pow, a, b).unwrap();
        let r = grad_of(&mut g, y, &[a, b]).unwrap();
        let av = lit(&[3], &[0.0, 0.0, 2.0]);
        let bv = lit(&[3], &[0.0, 2.0, 3.0]);
        let v = values(&g, &[(a, &av), (b, &bv)], &[r[0].unwrap(), r[1].unwrap()]);
        assert_eq!(v[0], vec![0.0, 0.0, 12.0]);
        assert_eq!(v[1][..2], [0.0, 0.0]);
        assert!((v[1][2] - 8.0 * 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut g = Graph::new();
        let x = g.param("x", f64t(&[2])).unwrap();
        let i = g.input("i", TensorType::new(DType::I64, [2])).unwrap();
        let y = g.unary(UnaryOp::Exp, x).unwrap();
        let wrong = g.full(1.0, f64t(&[3])).unwrap();
        let e = grad(&mut g, &[(y, wrong)], &[x]).unwrap_err().to_string();
        assert!(e.contains("seed"), "{e}");
        let e = grad_of(&mut g, y, &[i]).unwrap_err().to_string();
        assert!(e.contains("only float tensors"), "{e}");
        let c = g.compare(CmpOp::Lt, x, x).unwrap();
        let e = grad_of(&mut g, c, &[x]).unwrap_err().to_string();
        assert!(e.contains("only float tensors"), "{e}");
    }
}
