//! Constant folding: an op whose operands are all `full` or `const` is computed now.
//!
//! Results are computed by the reference interpreter itself, on a small graph holding the
//! op and its constant operands, so folding is exact by construction: it cannot disagree
//! with [`crate::interp`] on rounding, NaN or integer wrap-around. A result whose elements
//! all have the same bits becomes a `full` (one number, whatever its size); any other result
//! becomes a `const` if it has at most `max_elements` elements, and is left alone otherwise,
//! so that folding never bloats a graph with big literals.
//!
//! Uniform operands are folded without materialising them, so `expand(full 1.0)` to a
//! `[1024,1024]` tensor, or `full 2.0 * full 3.0` of that size, costs nothing:
//! - elementwise ops are computed on one element of each operand;
//! - movement ops (`reshape`, `permute`, `expand`, `slice`, `detach`, and `pad`/`concat`
//!   when every element is the same) keep the value;
//! - `reduce_sum`, `reduce_max` and `matmul` are computed by the interpreter on one reduced
//!   row (a sum of `n` equal floats is not `n * x` in floating point), for rows of up to
//!   `2^16` elements.
//!
//! Everything else is folded by evaluating it whole, when the result has at most
//! `max_elements` elements and every operand at most four times that. A non-uniform result
//! with more elements than its constant operands store (an `expand` or `pad` of a `const`)
//! is not kept: it would make the graph bigger for nothing a backend cannot do on the fly.
//!
//! A `const` whose elements are all equal becomes a `full` too, so that the simplifier and
//! CSE recognise it.

use super::{replace, uniform, uniform_data, Scalar, Tags};
use crate::error::{IrError, Result};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Op, ReduceOp};
use crate::{interp, Literal, TensorType};
use std::collections::HashMap;
use std::sync::Arc;

/// Longest reduced row (sum, max, matmul inner size) folded for uniform operands.
const MAX_ROW: usize = 1 << 16;

/// Folds every op whose operands are constants; returns how many nodes were replaced.
pub fn fold_constants(graph: &mut Graph, max_elements: usize) -> Result<usize> {
    let mut tags = Tags::new(graph);
    let mut folded = 0;
    for id in graph.topo_order()? {
        if !graph.contains(id) {
            continue;
        }
        let node = graph.node(id);
        let value = match &node.op {
            Op::Input { .. } | Op::Param { .. } | Op::Full { .. } => continue,
            Op::Const(lit) => match uniform_data(&lit.data) {
                Some(s) if s.to_value().is_some() => Folded::Uniform(s),
                // An empty const is any uniform value; canonically zero.
                None if lit.numel() == 0 => Folded::Uniform(Scalar::of_value(lit.dtype(), 0.0)),
                _ => continue,
            },
            _ => {
                let operands = graph.operands(id);
                if !operands
                    .iter()
                    .all(|&o| matches!(graph.node(o).op, Op::Full { .. } | Op::Const(_)))
                {
                    continue;
                }
                match fold_node(graph, id, &operands, max_elements)? {
                    Some(f) => f,
                    None => continue,
                }
            }
        };
        let ty = graph.ty(id).clone();
        let op = match value {
            Folded::Uniform(s) => match s.to_value() {
                Some(value) => Op::Full {
                    value,
                    ty: ty.clone(),
                },
                None if ty.numel() <= max_elements => Op::Const(Arc::new(s.splat(&ty.shape))),
                None => continue,
            },
            Folded::Literal(lit) => Op::Const(Arc::new(lit)),
        };
        let (loc, grad_of) = {
            let n = graph.node(id);
            (n.loc.clone(), n.grad_of)
        };
        let new = graph.push_node(
            Node {
                op,
                ty,
                loc,
                grad_of,
            },
            &[],
        );
        tags.note(new, grad_of);
        replace(graph, &mut tags, id, new);
        folded += 1;
    }
    Ok(folded)
}

enum Folded {
    /// Every element is this one.
    Uniform(Scalar),
    /// A small non-uniform result.
    Literal(Literal),
}

/// The value of `id` (whose operands are all constants), or `None` if it is not worth
/// folding.
fn fold_node(
    graph: &Graph,
    id: NodeId,
    operands: &[NodeId],
    max_elements: usize,
) -> Result<Option<Folded>> {
    let node = graph.node(id);
    let us: Option<Vec<Scalar>> = operands.iter().map(|&o| uniform(graph, o)).collect();
    if let Some(us) = us {
        if let Some(s) = fold_uniform(graph, node, operands, &us)? {
            return Ok(Some(Folded::Uniform(s)));
        }
    }
    let small = node.ty.numel() <= max_elements
        && operands
            .iter()
            .all(|&o| graph.ty(o).numel() <= max_elements.saturating_mul(4));
    if !small {
        return Ok(None);
    }
    let args: Vec<Operand> = operands
        .iter()
        .map(|&o| match &graph.node(o).op {
            Op::Const(lit) => Operand::Const(lit.clone()),
            Op::Full { value, ty } => Operand::Full(*value, ty.clone()),
            _ => unreachable!("operands were checked to be constants"),
        })
        .collect();
    let lit = evaluate(&node.op, &node.ty, &args)?;
    Ok(match uniform_data(&lit.data) {
        Some(s) if s.to_value().is_some() => Some(Folded::Uniform(s)),
        // A literal bigger than the constants it is made of (an `expand` or `pad` of a
        // `const`) is not worth storing: backends broadcast and pad for free.
        _ if lit.numel() > stored_elements(graph, operands) => None,
        _ => Some(Folded::Literal(lit)),
    })
}

/// Elements the graph stores for these constants: a `const`'s elements, one per `full`.
fn stored_elements(graph: &Graph, operands: &[NodeId]) -> usize {
    operands
        .iter()
        .map(|&o| match &graph.node(o).op {
            Op::Const(lit) => lit.numel(),
            _ => 1,
        })
        .sum()
}

/// The element of a node whose operands are uniform with elements `us`, when it is uniform
/// too and cheap to find.
fn fold_uniform(
    graph: &Graph,
    node: &Node,
    operands: &[NodeId],
    us: &[Scalar],
) -> Result<Option<Scalar>> {
    let scalar = |s: &Scalar| Operand::Const(Arc::new(s.splat(&[])));
    Ok(match &node.op {
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast(_) => {
            let args: Vec<Operand> = us.iter().map(scalar).collect();
            let ty = TensorType::new(node.ty.dtype, []);
            let lit = evaluate(&node.op, &ty, &args)?;
            Some(Scalar::at(&lit.data, 0))
        }
        Op::Detach | Op::Reshape(_) | Op::Permute(_) | Op::Expand(_) | Op::Slice(_) => Some(us[0]),
        Op::Pad { value, .. } => {
            let v = Scalar::of_value(node.ty.dtype, *value);
            if graph.ty(operands[0]).numel() == 0 || v.same(us[0]) {
                Some(v)
            } else if node.ty.numel() == graph.ty(operands[0]).numel() {
                Some(us[0]) // no padding at all
            } else {
                None
            }
        }
        Op::Concat(_) => {
            let mut parts = operands
                .iter()
                .zip(us)
                .filter(|(&o, _)| graph.ty(o).numel() > 0)
                .map(|(_, &s)| s);
            match parts.next() {
                Some(first) => parts.all(|s| s.same(first)).then_some(first),
                None => Some(Scalar::of_value(node.ty.dtype, 0.0)),
            }
        }
        Op::Reduce { op, axes } => {
            let shape = graph.shape(operands[0]);
            let row: usize = axes.iter().map(|&a| shape[a]).product();
            // max of n >= 1 equal elements is max of one; a sum must be done n times.
            let row = if *op == ReduceOp::Max {
                row.min(1)
            } else {
                row
            };
            if row > MAX_ROW {
                return Ok(None);
            }
            let arg = Operand::Const(Arc::new(us[0].splat(&[row])));
            let reduce = Op::Reduce {
                op: *op,
                axes: vec![0],
            };
            let lit = evaluate(&reduce, &TensorType::new(node.ty.dtype, [1]), &[arg])?;
            Some(Scalar::at(&lit.data, 0))
        }
        Op::MatMul => {
            let shape = graph.shape(operands[0]);
            let k = shape[shape.len() - 1];
            if k > MAX_ROW {
                return Ok(None);
            }
            let a = Operand::Const(Arc::new(us[0].splat(&[1, k])));
            let b = Operand::Const(Arc::new(us[1].splat(&[k, 1])));
            let lit = evaluate(
                &Op::MatMul,
                &TensorType::new(node.ty.dtype, [1, 1]),
                &[a, b],
            )?;
            Some(Scalar::at(&lit.data, 0))
        }
        // Not uniform near the borders (padding, strides); folded whole when small.
        Op::Conv(_) | Op::ConvTranspose(_) | Op::ConvWeight { .. } => None,
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Full { .. } => None,
    })
}

/// A constant operand of a graph evaluated during folding.
enum Operand {
    Const(Arc<Literal>),
    Full(f64, TensorType),
}

/// `op(args)` of type `ty`, computed by the interpreter on a graph of just these nodes.
fn evaluate(op: &Op, ty: &TensorType, args: &[Operand]) -> Result<Literal> {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = args
        .iter()
        .map(|a| {
            let (op, ty) = match a {
                Operand::Const(lit) => (Op::Const(lit.clone()), lit.ty()),
                Operand::Full(value, ty) => (
                    Op::Full {
                        value: *value,
                        ty: ty.clone(),
                    },
                    ty.clone(),
                ),
            };
            g.push_node(
                Node {
                    op,
                    ty,
                    loc: None,
                    grad_of: None,
                },
                &[],
            )
        })
        .collect();
    let id = g.push_node(
        Node {
            op: op.clone(),
            ty: ty.clone(),
            loc: None,
            grad_of: None,
        },
        &ids,
    );
    let mut out = interp::eval(&g, &HashMap::new(), &[id])
        .map_err(|e| IrError::Eval(format!("constant folding of `{}`: {e}", op.name())))?;
    Ok(out.remove(0))
}
