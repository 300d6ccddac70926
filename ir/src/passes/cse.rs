//! Common-subexpression elimination: merges nodes that compute the same value by
//! construction.
//!
//! Two nodes are merged when they have the same op with equal attributes, the same operands
//! in the same positions (for `add`, `mul`, `eq`, `ne` in either order) and the same type.
//! Attributes are compared exactly, floats by their bits: a `pad` with `value=nan` equals
//! another with the same NaN, and `-0.0` differs from `0.0`. Leaves are merged only when they
//! are the same constant: `full`s holding the same element (after conversion to their dtype,
//! so `full 0.5` and `full 0.0` of `i64` are one), `const`s with the same elements bit for
//! bit. `input`s and `param`s are never merged: each is bound separately.
//!
//! `max` and `min` are not treated as commutative: `max(0.0, -0.0)` is `0.0` but
//! `max(-0.0, 0.0)` is `-0.0` (the first operand wins ties, as in PyTorch's kernels).
//!
//! Of two equal nodes the first in topological order stays. It takes the better metadata of
//! the two: a source location over none, then a forward node's identity (no gradient tag)
//! over a gradient node's, so that errors and profiles point at the user's line. Any tag the
//! survivor ends up with names an existing node other than itself, so the verifier's tag
//! check still holds.

use super::{replace, Scalar, Tags};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, CmpOp, Op, ReduceOp, SliceAxis};
use crate::{Data, TensorType};
use std::collections::HashMap;

/// What makes two nodes equal: op mnemonic, attributes as integers (floats by bits),
/// operands and type.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    op: &'static str,
    attrs: Vec<u64>,
    operands: Vec<NodeId>,
    ty: TensorType,
}

/// Merges structurally equal nodes; returns how many nodes were merged away.
pub fn cse(graph: &mut Graph) -> Result<usize> {
    let order = graph.topo_order()?;
    let mut seen: HashMap<Key, NodeId> = HashMap::new();
    let mut tags = Tags::new(graph);
    let mut merged = 0;
    for id in order {
        if !graph.contains(id) {
            continue;
        }
        let Some(key) = key(graph, id) else {
            continue;
        };
        match seen.get(&key) {
            Some(&first) => {
                merge_metadata(graph, &mut tags, first, id);
                replace(graph, &mut tags, id, first);
                merged += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    Ok(merged)
}

/// Gives `keep` the better location and tag of `keep` and `dup` (see the module docs).
fn merge_metadata(graph: &mut Graph, tags: &mut Tags, keep: NodeId, dup: NodeId) {
    let rank = |id: NodeId| {
        let n = graph.node(id);
        (n.loc.is_some(), n.grad_of.is_none())
    };
    if rank(dup) > rank(keep) {
        let (loc, tag) = {
            let d = graph.node(dup);
            (d.loc.clone(), d.grad_of)
        };
        let k = graph.node_mut(keep);
        k.loc = loc;
        if tag != Some(keep) {
            k.grad_of = tag;
            tags.note(keep, tag);
        }
    }
}

fn key(graph: &Graph, id: NodeId) -> Option<Key> {
    let node = graph.node(id);
    let mut operands = graph.operands(id);
    let attrs = match &node.op {
        Op::Input { .. } | Op::Param { .. } => return None,
        Op::Const(lit) => data_bits(&lit.data),
        Op::Full { value, ty } => vec![Scalar::of_value(ty.dtype, *value).bits()],
        Op::Unary(_) | Op::Where | Op::Detach | Op::MatMul => vec![],
        Op::Binary(b) => {
            if matches!(b, BinaryOp::Add | BinaryOp::Mul) {
                operands.sort();
            }
            vec![]
        }
        Op::Compare(c) => {
            if matches!(c, CmpOp::Eq | CmpOp::Ne) {
                operands.sort();
            }
            vec![]
        }
        Op::Cast(d) => vec![*d as u64],
        Op::Reduce { op, axes } => {
            let mut a = vec![matches!(op, ReduceOp::Max) as u64];
            a.extend(axes.iter().map(|&x| x as u64));
            a
        }
        Op::Reshape(v) | Op::Permute(v) | Op::Expand(v) => v.iter().map(|&x| x as u64).collect(),
        Op::Slice(axes) => axes
            .iter()
            .flat_map(|&SliceAxis { start, end, step }| [start as u64, end as u64, step as u64])
            .collect(),
        Op::Pad { lo, hi, value } => {
            let mut a: Vec<u64> = lo.iter().chain(hi).map(|&x| x as u64).collect();
            a.push(Scalar::of_value(node.ty.dtype, *value).bits());
            a
        }
        Op::Concat(axis) => vec![*axis as u64],
        Op::Conv(p) | Op::ConvTranspose(p) => conv_attrs(p),
        Op::ConvWeight { params, kernel } => {
            let mut a = conv_attrs(params);
            a.extend(kernel.iter().map(|&x| x as u64));
            a
        }
    };
    Some(Key {
        op: node.op.name(),
        attrs,
        operands,
        ty: node.ty.clone(),
    })
}

/// The conv attributes, each list length-prefixed (the spatial rank is fixed by the operand
/// types, but the prefix keeps the encoding unambiguous on its own).
fn conv_attrs(p: &crate::op::ConvParams) -> Vec<u64> {
    let mut a = vec![p.groups as u64];
    for v in [&p.stride, &p.padding, &p.dilation, &p.output_padding] {
        a.push(v.len() as u64);
        a.extend(v.iter().map(|&x| x as u64));
    }
    a
}

fn data_bits(data: &Data) -> Vec<u64> {
    match data {
        Data::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        Data::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        Data::I64(v) => v.iter().map(|&x| x as u64).collect(),
        Data::Bool(v) => v.iter().map(|&x| u64::from(x)).collect(),
    }
}
