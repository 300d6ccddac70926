//! Lowering the lazy tensor DAG to an IR graph, and executing it.
//!
//! The DAG below the requested tensors is walked depth-first (iteratively: training loops make
//! long chains) in a deterministic order, so the same program traced twice lowers to the same
//! graph with the same input names — the property a program cache keys on.
//!
//! - Realised tensors become `input` nodes bound to their values; leaves that require grad
//!   become `param` nodes (what autodiff differentiates with respect to).
//! - Realised intermediate values that gradients flow through stay as ops (autodiff needs
//!   them) with their value pre-bound, so they are not recomputed.
//! - Where a tensor recorded without gradients uses one that requires them, a `detach` node
//!   cuts the gradient path, so `no_grad` and `.detach()` mean in the graph what they mean in
//!   PyTorch.
//! - A lazy gradient (`autograd::grad`) lowers its output and `wrt` tensors first, then asks
//!   `kiln_ir::autodiff` once per group for the gradient nodes: forward, backward and whatever
//!   consumes the gradients (an optimiser's update) become one graph.
//! - Placeholders (inputs of a compiled step) become unbound `input` nodes.

use crate::error::{Error, Result};
use crate::tensor::{GradGroup, Tensor};
use kiln_ir::{autodiff, Graph, Literal, NodeId, Op};
use std::collections::HashMap;
use std::sync::Arc;

/// A lowered program: the graph and what to bind to its nodes.
pub struct Lowered {
    pub graph: Graph,
    /// Graph node of each lowered tensor, by tensor id.
    pub node_of: HashMap<u64, NodeId>,
    /// Values bound to nodes: inputs, params, and pre-computed intermediate values.
    pub bound: Vec<(NodeId, Arc<Literal>)>,
    /// The tensor behind each bound node (a compiled step re-reads sources at every run).
    pub sources: Vec<(NodeId, Tensor)>,
    /// `param` nodes and the leaf tensors they stand for.
    pub params: Vec<(NodeId, Tensor)>,
    /// Unbound `input` nodes standing for placeholders (compiled-step inputs).
    pub placeholders: Vec<(NodeId, Tensor)>,
}

/// The value lowering binds for `t`: what an op computed (see `Inner::computed`), or a
/// source's current value.
fn value_of(t: &Tensor) -> Result<Option<Arc<Literal>>> {
    if let Some(v) = t.0.computed.get() {
        return Ok(Some(v.clone()));
    }
    crate::tensor::read_storage(&t.0.storage)
}

/// Lowers the DAG below `roots`. Placeholders are an error unless `allow_placeholders`.
pub fn lower(roots: &[Tensor], allow_placeholders: bool) -> Result<Lowered> {
    let mut cx = Lowering {
        lw: Lowered {
            graph: Graph::new(),
            node_of: HashMap::new(),
            bound: Vec::new(),
            sources: Vec::new(),
            params: Vec::new(),
            placeholders: Vec::new(),
        },
        allow_placeholders,
        leaves: HashMap::new(),
        detached: HashMap::new(),
        groups: HashMap::new(),
    };
    // Post-order by an explicit stack of (tensor, operands pushed?).
    let mut stack: Vec<(Tensor, bool)> = roots.iter().rev().map(|t| (t.clone(), false)).collect();
    while let Some((t, expanded)) = stack.pop() {
        if cx.lw.node_of.contains_key(&t.id()) {
            continue;
        }
        let value = value_of(&t)?;
        if t.is_source() || (value.is_some() && !t.requires_grad()) {
            let node = match value {
                Some(v) => cx.bound_leaf(&t, v)?,
                None => cx.placeholder(&t)?,
            };
            cx.lw.node_of.insert(t.id(), node);
            continue;
        }
        let inputs = t.inputs();
        let snaps = t.snapshots();
        if !expanded {
            stack.push((t.clone(), true));
            for (i, s) in inputs.iter().zip(&snaps).rev() {
                if !uses_snapshot(i, s) && !cx.lw.node_of.contains_key(&i.id()) {
                    stack.push((i.clone(), false));
                }
            }
            continue;
        }
        let mut operands: Vec<NodeId> = Vec::with_capacity(inputs.len());
        for (i, s) in inputs.iter().zip(snaps) {
            let n = match s {
                Some(v) if uses_snapshot(i, &Some(v.clone())) => cx.bound_leaf(i, v)?,
                _ => cx.lw.node_of[&i.id()],
            };
            operands.push(n);
        }
        let node = match &t.0.grad_src {
            Some((group, index)) => cx.gradient(group, *index, &operands)?,
            None => {
                // A tensor made without grad recording (under `no_grad`, or `.detach()`ed) is
                // a constant for differentiation even though its operands may require grad.
                if !t.requires_grad() && !matches!(t.op(), Op::Detach) {
                    for (n, i) in operands.iter_mut().zip(&inputs) {
                        if i.requires_grad() {
                            *n = cx.detach(*n, i)?;
                        }
                    }
                }
                cx.lw
                    .graph
                    .push_at(t.op().clone(), &operands, Some(t.loc().clone()))?
            }
        };
        if let Some(v) = value {
            cx.lw.bound.push((node, v));
            cx.lw.sources.push((node, t.clone()));
        }
        cx.lw.node_of.insert(t.id(), node);
    }
    Ok(cx.lw)
}

/// Whether an operand is bound to the value captured when its user was recorded, rather
/// than lowered as ops: sources always, realised intermediates unless gradients flow through.
fn uses_snapshot(t: &Tensor, snap: &Option<Arc<Literal>>) -> bool {
    snap.is_some() && (t.is_source() || !t.requires_grad())
}

struct Lowering {
    lw: Lowered,
    allow_placeholders: bool,
    /// Bound leaf nodes by (tensor id, value address): one tensor seen with two values (an
    /// in-place update between two uses) lowers to two inputs.
    leaves: HashMap<(u64, usize), NodeId>,
    detached: HashMap<NodeId, NodeId>,
    /// Gradient nodes of each differentiated group, by group address.
    groups: HashMap<usize, Vec<NodeId>>,
}

impl Lowering {
    fn bound_leaf(&mut self, t: &Tensor, value: Arc<Literal>) -> Result<NodeId> {
        let key = (t.id(), Arc::as_ptr(&value) as usize);
        if let Some(&n) = self.leaves.get(&key) {
            return Ok(n);
        }
        let node = self.leaf_node(t)?;
        self.lw.bound.push((node, value));
        self.lw.sources.push((node, t.clone()));
        self.leaves.insert(key, node);
        Ok(node)
    }

    fn placeholder(&mut self, t: &Tensor) -> Result<NodeId> {
        if !self.allow_placeholders {
            return Err(Error::Autograd(format!(
                "tensor made at {} has no value: it is an input of a compiled step and only exists while that step is traced",
                t.loc()
            )));
        }
        let node = self.leaf_node(t)?;
        self.lw.placeholders.push((node, t.clone()));
        Ok(node)
    }

    /// A `param` node for a leaf requiring grad, else an `input` node.
    fn leaf_node(&mut self, t: &Tensor) -> Result<NodeId> {
        let g = &mut self.lw.graph;
        let loc = Some(t.loc().clone());
        if t.requires_grad() {
            let name = unique(&g.params, t.name(), "p", g.params.len());
            let n = g.push_at(
                Op::Param {
                    name,
                    ty: t.ty().clone(),
                },
                &[],
                loc,
            )?;
            self.lw.params.push((n, t.clone()));
            Ok(n)
        } else {
            let name = unique(&g.inputs, t.name(), "in", g.inputs.len());
            Ok(g.push_at(
                Op::Input {
                    name,
                    ty: t.ty().clone(),
                },
                &[],
                loc,
            )?)
        }
    }

    fn detach(&mut self, n: NodeId, t: &Tensor) -> Result<NodeId> {
        if let Some(&d) = self.detached.get(&n) {
            return Ok(d);
        }
        let d = self
            .lw
            .graph
            .push_at(Op::Detach, &[n], Some(t.loc().clone()))?;
        self.detached.insert(n, d);
        Ok(d)
    }

    /// The node of gradient `index` of `group`, differentiating the group on first use.
    /// `operands` are the lowered output, seed (if any) and `wrt` tensors, in that order.
    fn gradient(
        &mut self,
        group: &Arc<GradGroup>,
        index: usize,
        operands: &[NodeId],
    ) -> Result<NodeId> {
        let key = Arc::as_ptr(group) as usize;
        if let Some(gs) = self.groups.get(&key) {
            return Ok(gs[index]);
        }
        let g = &mut self.lw.graph;
        let out = operands[0];
        let (seed, wrt) = match &group.seed {
            Some(_) => (operands[1], &operands[2..]),
            None => (g.full(1.0, g.ty(out).clone())?, &operands[1..]),
        };
        let grads = autodiff::grad(g, &[(out, seed)], wrt)?;
        let mut nodes = Vec::with_capacity(grads.len());
        for (gnode, &w) in grads.into_iter().zip(wrt) {
            // Reachable only through non-differentiable paths (a mask, an index): zero.
            nodes.push(match gnode {
                Some(n) => n,
                None => g.full_like(0.0, w)?,
            });
        }
        let n = nodes[index];
        self.groups.insert(key, nodes);
        Ok(n)
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
    run_graph(&lw.graph, &bindings, wanted)
}

/// Runs a graph on the backend `KILN_BACKEND` selects (the JIT by default; `interp` for the
/// reference interpreter). The JIT caches compiled programs by the graph structure.
pub(crate) fn run_graph(
    graph: &Graph,
    bindings: &HashMap<NodeId, &Literal>,
    wanted: &[NodeId],
) -> Result<Vec<Literal>> {
    log::debug!(
        "executing a graph of {} nodes ({} bound)",
        graph.len(),
        bindings.len()
    );
    Ok(kiln_codegen::execute(graph, bindings, wanted)?)
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
    let v = Arc::new(v);
    if !t.is_source() {
        let _ = t.0.computed.set(v.clone());
    }
    let mut s = t.0.storage.write().unwrap_or_else(|p| p.into_inner());
    *s = Some(v);
    drop(s);
    if !t.requires_grad() {
        t.0.inputs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        t.0.snaps.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
