//! Lowering the lazy tensor DAG to an IR graph, and executing it.
//!
//! The DAG below the requested tensors is walked depth-first (iteratively: training loops make
//! long chains) in a deterministic order, so the same program traced twice lowers to the same
//! graph with the same input names — the property a program cache keys on. Realised tensors
//! become `input` nodes bound to their values; in gradient mode, leaves that require grad
//! become `param` nodes and realised intermediate values that gradients flow through stay as
//! ops (autodiff needs them) with their value pre-bound, so they are not recomputed. Where a
//! tensor recorded without gradients uses one that requires them, a `detach` node cuts the
//! gradient path, so `no_grad` and `.detach()` mean in the graph what they mean in PyTorch.

use crate::error::Result;
use crate::tensor::Tensor;
use kiln_ir::{interp, Graph, Literal, NodeId, Op};
use std::collections::HashMap;
use std::sync::Arc;

/// A lowered program: the graph and what to bind to its nodes.
pub struct Lowered {
    pub graph: Graph,
    /// Graph node of each lowered tensor, by tensor id.
    pub node_of: HashMap<u64, NodeId>,
    /// Values bound to nodes: inputs, params, and pre-computed intermediate values.
    pub bound: Vec<(NodeId, Arc<Literal>)>,
    /// `param` nodes and the leaf tensors they stand for (gradient mode).
    pub params: Vec<(NodeId, Tensor)>,
}

fn value_of(t: &Tensor) -> Option<Arc<Literal>> {
    t.0.storage.read().ok().and_then(|s| s.clone())
}

/// Lowers the DAG below `roots`. With `grad_mode`, leaves requiring grad become params and
/// realised tensors requiring grad keep their ops.
pub fn lower(roots: &[Tensor], grad_mode: bool) -> Result<Lowered> {
    let mut cx = Lowering {
        lw: Lowered {
            graph: Graph::new(),
            node_of: HashMap::new(),
            bound: Vec::new(),
            params: Vec::new(),
        },
        grad_mode,
        leaves: HashMap::new(),
        detached: HashMap::new(),
    };
    // Post-order by an explicit stack of (tensor, operands pushed?).
    let mut stack: Vec<(Tensor, bool)> = roots.iter().rev().map(|t| (t.clone(), false)).collect();
    while let Some((t, expanded)) = stack.pop() {
        if cx.lw.node_of.contains_key(&t.id()) {
            continue;
        }
        let value = value_of(&t);
        if t.is_source() || (value.is_some() && !cx.through(&t)) {
            let value = value.expect("leaves are realised");
            let node = cx.bound_leaf(&t, value)?;
            cx.lw.node_of.insert(t.id(), node);
            continue;
        }
        let inputs = t.inputs();
        let snaps = t.snapshots();
        if !expanded {
            stack.push((t.clone(), true));
            for (i, s) in inputs.iter().zip(&snaps).rev() {
                if !cx.uses_snapshot(i, s) && !cx.lw.node_of.contains_key(&i.id()) {
                    stack.push((i.clone(), false));
                }
            }
            continue;
        }
        let mut operands: Vec<NodeId> = Vec::with_capacity(inputs.len());
        for (i, s) in inputs.iter().zip(snaps) {
            let mut n = match s {
                Some(v) if cx.uses_snapshot(i, &Some(v.clone())) => cx.bound_leaf(i, v)?,
                _ => cx.lw.node_of[&i.id()],
            };
            // A tensor made without grad recording (under `no_grad`, or `.detach()`ed) is a
            // constant for differentiation even though its operands may require grad.
            if grad_mode && !t.requires_grad() && i.requires_grad() && !matches!(t.op(), Op::Detach)
            {
                n = match cx.detached.get(&n) {
                    Some(&d) => d,
                    None => {
                        let d = cx
                            .lw
                            .graph
                            .push_at(Op::Detach, &[n], Some(i.loc().clone()))?;
                        cx.detached.insert(n, d);
                        d
                    }
                };
            }
            operands.push(n);
        }
        let node = cx
            .lw
            .graph
            .push_at(t.op().clone(), &operands, Some(t.loc().clone()))?;
        if let Some(v) = value {
            cx.lw.bound.push((node, v));
        }
        cx.lw.node_of.insert(t.id(), node);
    }
    Ok(cx.lw)
}

struct Lowering {
    lw: Lowered,
    grad_mode: bool,
    /// Bound leaf nodes by (tensor id, value address): one tensor seen with two values (an
    /// in-place update between two uses) lowers to two inputs.
    leaves: HashMap<(u64, usize), NodeId>,
    detached: HashMap<NodeId, NodeId>,
}

impl Lowering {
    /// Whether gradients must flow through `t`'s ops.
    fn through(&self, t: &Tensor) -> bool {
        self.grad_mode && t.requires_grad()
    }

    /// Whether an operand is bound to the value captured when its user was recorded, rather
    /// than lowered as ops.
    fn uses_snapshot(&self, t: &Tensor, snap: &Option<Arc<Literal>>) -> bool {
        snap.is_some() && (t.is_source() || !self.through(t))
    }

    fn bound_leaf(&mut self, t: &Tensor, value: Arc<Literal>) -> Result<NodeId> {
        let key = (t.id(), Arc::as_ptr(&value) as usize);
        if let Some(&n) = self.leaves.get(&key) {
            return Ok(n);
        }
        let through = self.through(t);
        let g = &mut self.lw.graph;
        let node = if through {
            let name = unique(&g.params, t.name(), "p", g.params.len());
            let n = g.push_at(
                Op::Param {
                    name,
                    ty: t.ty().clone(),
                },
                &[],
                Some(t.loc().clone()),
            )?;
            self.lw.params.push((n, t.clone()));
            n
        } else {
            let name = unique(&g.inputs, t.name(), "in", g.inputs.len());
            g.push_at(
                Op::Input {
                    name,
                    ty: t.ty().clone(),
                },
                &[],
                Some(t.loc().clone()),
            )?
        };
        self.lw.bound.push((node, value));
        self.leaves.insert(key, node);
        Ok(node)
    }
}

fn unique(
    map: &indexmap::IndexMap<String, NodeId>,
    name: Option<String>,
    prefix: &str,
    k: usize,
) -> String {
    match name {
        Some(n) if !map.contains_key(&n) => n,
        _ => {
            let mut s = format!("{prefix}{k}");
            while map.contains_key(&s) {
                s.push('_');
            }
            s
        }
    }
}

/// Executes `wanted` nodes of a lowered program with its bindings.
pub fn execute(lw: &Lowered, wanted: &[NodeId]) -> Result<Vec<Literal>> {
    let bindings: HashMap<NodeId, &Literal> =
        lw.bound.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    log::debug!(
        "executing a graph of {} nodes ({} bound)",
        lw.graph.len(),
        bindings.len()
    );
    Ok(interp::eval(&lw.graph, &bindings, wanted)?)
}

/// Computes and stores the values of `targets`.
pub fn realize(targets: &[Tensor]) -> Result<()> {
    let todo: Vec<Tensor> = targets
        .iter()
        .filter(|t| !t.is_realized())
        .cloned()
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let mut lw = lower(&todo, false)?;
    let wanted: Vec<NodeId> = todo.iter().map(|t| lw.node_of[&t.id()]).collect();
    for (i, &w) in wanted.iter().enumerate() {
        lw.graph.set_output(format!("out{i}"), w);
    }
    let values = execute(&lw, &wanted)?;
    for (t, v) in todo.iter().zip(values) {
        store(t, v);
    }
    Ok(())
}

/// Stores a computed value; a tensor no gradient flows through drops its operands, so the
/// history of a long computation does not stay alive.
pub(crate) fn store(t: &Tensor, v: Literal) {
    let mut s = t.0.storage.write().unwrap_or_else(|p| p.into_inner());
    *s = Some(Arc::new(v));
    drop(s);
    if !t.requires_grad() {
        t.0.inputs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        t.0.snaps.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
