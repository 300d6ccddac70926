//! Canonical numbering and the structural key of a graph, for the program cache.
//!
//! Two graphs that compute the same thing the same way (same ops and attributes, types,
//! operand structure, which nodes are bound and which are wanted) get the same key, whatever
//! their node ids, input names or source locations. The numbering is a depth-first post-order
//! from the wanted nodes, operands in positional order, that does not descend into bound nodes
//! (their operands are not needed): a function of the structure only. A compiled program
//! refers to nodes by this canonical number, so a cached program serves every graph with its
//! key.

use kiln_ir::{Graph, IrError, NodeId, Op, Result};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// The needed part of a graph in canonical order.
pub struct Canon {
    /// Needed nodes, operands before users.
    pub order: Vec<NodeId>,
    /// Canonical number of each needed node.
    pub number: HashMap<NodeId, usize>,
    /// Canonical numbers of the wanted nodes, in the order asked.
    pub wanted: Vec<usize>,
    /// Whether each needed node is bound.
    pub bound: Vec<bool>,
    /// The structural key.
    pub key: Vec<u8>,
}

/// Numbers the nodes needed for `wanted` when the nodes in `bound` are given.
pub fn canonicalize(graph: &Graph, wanted: &[NodeId], bound: &HashSet<NodeId>) -> Result<Canon> {
    for &w in wanted {
        if !graph.contains(w) {
            return Err(IrError::Eval(format!(
                "asked for %{}, which is not a node of the graph",
                w.index()
            )));
        }
    }
    let mut number: HashMap<NodeId, usize> = HashMap::new();
    let mut order: Vec<NodeId> = Vec::new();
    let mut on_stack: HashSet<NodeId> = HashSet::new();
    for &root in wanted {
        if number.contains_key(&root) {
            continue;
        }
        let ops = |n: NodeId| {
            if bound.contains(&n) {
                Vec::new()
            } else {
                graph.operands(n)
            }
        };
        let mut stack: Vec<(NodeId, Vec<NodeId>, usize)> = vec![(root, ops(root), 0)];
        on_stack.insert(root);
        while let Some((node, operands, i)) = stack.last_mut() {
            if *i < operands.len() {
                let next = operands[*i];
                *i += 1;
                if on_stack.contains(&next) {
                    return Err(IrError::Graph(format!(
                        "the graph has a cycle through node %{}",
                        next.index()
                    )));
                }
                if !number.contains_key(&next) {
                    on_stack.insert(next);
                    let nops = ops(next);
                    stack.push((next, nops, 0));
                }
            } else {
                let node = *node;
                on_stack.remove(&node);
                number.insert(node, order.len());
                order.push(node);
                stack.pop();
            }
        }
    }
    let bound_flags: Vec<bool> = order.iter().map(|n| bound.contains(n)).collect();
    let wanted_nums: Vec<usize> = wanted.iter().map(|w| number[w]).collect();

    let mut key = Vec::with_capacity(order.len() * 32);
    for (i, &n) in order.iter().enumerate() {
        let node = graph.node(n);
        put(&mut key, bound_flags[i] as u64);
        put(&mut key, node.ty.dtype as u64);
        put_list(&mut key, &node.ty.shape);
        encode_op(&node.op, &mut key);
        if !bound_flags[i] {
            let operands: Vec<usize> = graph.operands(n).iter().map(|o| number[o]).collect();
            put_list(&mut key, &operands);
        }
    }
    put(&mut key, u64::MAX);
    put_list(&mut key, &wanted_nums);
    Ok(Canon {
        order,
        number,
        wanted: wanted_nums,
        bound: bound_flags,
        key,
    })
}

fn put(key: &mut Vec<u8>, v: u64) {
    key.extend_from_slice(&v.to_le_bytes());
}

fn put_list(key: &mut Vec<u8>, v: &[usize]) {
    put(key, v.len() as u64);
    for &x in v {
        put(key, x as u64);
    }
}

fn put_conv(key: &mut Vec<u8>, p: &kiln_ir::ConvParams) {
    put_list(key, &p.stride);
    put_list(key, &p.padding);
    put_list(key, &p.dilation);
    put(key, p.groups as u64);
    put_list(key, &p.output_padding);
}

/// Appends the op's kind and attributes. Names (of inputs and params) are left out; constant
/// data is represented by its length and two independent 64-bit hashes, small constants by
/// their bits.
fn encode_op(op: &Op, key: &mut Vec<u8>) {
    key.extend_from_slice(op.name().as_bytes());
    key.push(0);
    match op {
        Op::Input { .. } | Op::Param { .. } => {}
        Op::Const(lit) => {
            let vals: Vec<u64> = match &lit.data {
                kiln_ir::Data::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
                kiln_ir::Data::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
                kiln_ir::Data::I64(v) => v.iter().map(|&x| x as u64).collect(),
                kiln_ir::Data::Bool(v) => v.iter().map(|&x| x as u64).collect(),
            };
            put(key, vals.len() as u64);
            if vals.len() <= 16 {
                for &v in &vals {
                    put(key, v);
                }
            } else {
                for seed in [0x9e37_79b9_7f4a_7c15u64, 0x2545_f491_4f6c_dd1d] {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    seed.hash(&mut h);
                    vals.hash(&mut h);
                    put(key, h.finish());
                }
            }
        }
        Op::Full { value, .. } => put(key, value.to_bits()),
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Detach | Op::MatMul => {}
        Op::Cast(d) => put(key, *d as u64),
        Op::Reduce { axes, .. } => put_list(key, axes),
        Op::Reshape(s) | Op::Permute(s) | Op::Expand(s) => put_list(key, s),
        Op::Slice(axes) => {
            put(key, axes.len() as u64);
            for a in axes {
                put(key, a.start as u64);
                put(key, a.end as u64);
                put(key, a.step as u64);
            }
        }
        Op::Pad { lo, hi, value } => {
            put_list(key, lo);
            put_list(key, hi);
            put(key, value.to_bits());
        }
        Op::Concat(axis) => put(key, *axis as u64),
        Op::Conv(p) | Op::ConvTranspose(p) => put_conv(key, p),
        Op::ConvWeight { params, kernel } => {
            put_conv(key, params);
            put_list(key, kernel);
        }
    }
}
