//! The graph: a petgraph `StableGraph` of [`Node`]s with ordered named inputs, parameters and
//! outputs.
//!
//! Edges run from operand to user and carry the operand's position, so a node's operands are
//! its incoming edges sorted by weight. Node indices are stable under removal, so passes can
//! delete nodes without invalidating the ids other nodes or maps hold.

use crate::error::{IrError, NodeContext, Result};
use crate::infer::infer;
use crate::op::{BinaryOp, CmpOp, ConvParams, Op, ReduceOp, SliceAxis, UnaryOp};
use crate::{DType, Literal, TensorType};
use indexmap::IndexMap;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Index of a node in its [`Graph`].
pub type NodeId = NodeIndex<u32>;

/// A source location in the user's program (from `#[track_caller]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub file: Cow<'static, str>,
    pub line: u32,
    pub col: u32,
}

impl Loc {
    /// The location of the caller of the `#[track_caller]` function this is called from.
    #[track_caller]
    pub fn caller() -> Loc {
        Loc::from(std::panic::Location::caller())
    }
}

impl From<&'static std::panic::Location<'static>> for Loc {
    fn from(l: &'static std::panic::Location<'static>) -> Loc {
        Loc {
            file: Cow::Borrowed(l.file()),
            line: l.line(),
            col: l.column(),
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One value of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    /// Result type, as inferred when the node was created and re-checked by the verifier.
    pub ty: TensorType,
    /// The user's line that created it (for gradient nodes: that of the forward node).
    pub loc: Option<Loc>,
    /// For nodes made by autodiff: the forward node whose rule produced them.
    pub grad_of: Option<NodeId>,
}

/// A dataflow graph of tensor ops.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    /// `input` nodes by name, in declaration order.
    pub inputs: IndexMap<String, NodeId>,
    /// `param` nodes by name, in declaration order.
    pub params: IndexMap<String, NodeId>,
    /// Named results, in declaration order.
    pub outputs: IndexMap<String, NodeId>,
    /// Location and gradient tag given to nodes created by the builder methods.
    origin: (Option<Loc>, Option<NodeId>),
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The underlying petgraph graph, for algorithms (read-only: edits go through `Graph`).
    pub fn petgraph(&self) -> &StableDiGraph<Node, u32> {
        &self.g
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.g[id].ty
    }

    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.g[id].ty.shape
    }

    pub fn dtype(&self, id: NodeId) -> DType {
        self.g[id].ty.dtype
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// All node ids in index order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.g.node_indices().collect()
    }

    /// The operands of `id`, in positional order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(u32, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        e.sort_by_key(|&(slot, _)| slot);
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// The nodes that use `id` (each once, in index order).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        u.sort();
        u.dedup();
        u
    }

    /// Sets the location and gradient tag recorded on nodes created from now on by the
    /// builder methods; returns the previous one.
    pub fn set_origin(
        &mut self,
        loc: Option<Loc>,
        grad_of: Option<NodeId>,
    ) -> (Option<Loc>, Option<NodeId>) {
        std::mem::replace(&mut self.origin, (loc, grad_of))
    }

    /// Adds a node after inferring its type; an op that does not accept its operands is an
    /// error naming the op, the operand types and the source location.
    pub fn push(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId> {
        let loc = self.origin.0.clone();
        self.push_at(op, operands, loc)
    }

    /// [`Graph::push`] with an explicit source location.
    pub fn push_at(&mut self, op: Op, operands: &[NodeId], loc: Option<Loc>) -> Result<NodeId> {
        let taken = match &op {
            Op::Input { name, .. } => self.inputs.contains_key(name).then_some(("input", name)),
            Op::Param { name, .. } => self.params.contains_key(name).then_some(("param", name)),
            _ => None,
        };
        if let Some((kind, name)) = taken {
            return Err(IrError::Shape {
                op: kind.to_string(),
                operands: String::new(),
                msg: format!("the graph already has a {kind} named `{name}`"),
                loc,
            });
        }
        let tys: Vec<&TensorType> = operands.iter().map(|&o| &self.g[o].ty).collect();
        let ty = infer(&op, &tys).map_err(|msg| IrError::Shape {
            op: op.name().to_string(),
            operands: tys
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            msg,
            loc: loc.clone(),
        })?;
        let grad_of = self.origin.1;
        Ok(self.push_node(
            Node {
                op,
                ty,
                loc,
                grad_of,
            },
            operands,
        ))
    }

    /// Adds a node as given, without checking it: for the parser and for tests that build
    /// malformed graphs on purpose. Run the verifier afterwards. A repeated input or param
    /// name replaces the map entry (the verifier then reports the orphaned node).
    pub fn push_node(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let name = match &node.op {
            Op::Input { name, .. } => Some((true, name.clone())),
            Op::Param { name, .. } => Some((false, name.clone())),
            _ => None,
        };
        let id = self.g.add_node(node);
        for (slot, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, id, slot as u32);
        }
        match name {
            Some((true, n)) => {
                self.inputs.insert(n, id);
            }
            Some((false, n)) => {
                self.params.insert(n, id);
            }
            None => {}
        }
        id
    }

    /// Names `id` as a result of the graph.
    pub fn set_output(&mut self, name: impl Into<String>, id: NodeId) {
        self.outputs.insert(name.into(), id);
    }

    /// Makes every user of `old` use `new` instead (same positions), and renames outputs.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        let edges: Vec<(petgraph::stable_graph::EdgeIndex<u32>, NodeId, u32)> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (e, user, slot) in edges {
            self.g.remove_edge(e);
            self.g.add_edge(new, user, slot);
        }
        for v in self.outputs.values_mut() {
            if *v == old {
                *v = new;
            }
        }
    }

    /// Removes a node and its edges; the inputs, params and outputs maps drop it too, and
    /// gradient tags naming it are cleared.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.inputs.retain(|_, v| *v != id);
        self.params.retain(|_, v| *v != id);
        self.outputs.retain(|_, v| *v != id);
        let node = self.g.remove_node(id)?;
        for n in self.g.node_weights_mut() {
            if n.grad_of == Some(id) {
                n.grad_of = None;
            }
        }
        Some(node)
    }

    /// Removes several nodes at once: one scan of the graph for the gradient tags and name maps
    /// instead of one per node, so dead-code elimination stays linear on large graphs.
    pub fn remove_nodes(&mut self, ids: &[NodeId]) {
        let gone: std::collections::HashSet<NodeId> = ids.iter().copied().collect();
        self.inputs.retain(|_, v| !gone.contains(v));
        self.params.retain(|_, v| !gone.contains(v));
        self.outputs.retain(|_, v| !gone.contains(v));
        for &id in ids {
            self.g.remove_node(id);
        }
        for n in self.g.node_weights_mut() {
            if n.grad_of.is_some_and(|t| gone.contains(&t)) {
                n.grad_of = None;
            }
        }
    }

    /// Nodes in an order where every operand comes before its users (a depth-first post-order
    /// from the nodes in index order, so it is deterministic), or the cycle found.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        if let Err(c) = petgraph::algo::toposort(&self.g, None) {
            return Err(IrError::Graph(format!(
                "the graph has a cycle through node %{}",
                c.node_id().index()
            )));
        }
        Ok(self.reachable_topo(&self.node_ids()))
    }

    /// Nodes needed to compute `roots`, in topological order (operands first, ties by index).
    pub fn reachable_topo(&self, roots: &[NodeId]) -> Vec<NodeId> {
        let mut visited = vec![false; self.g.node_bound()];
        let mut order = Vec::new();
        // iterative DFS post-order with explicit operand lists
        for &root in roots {
            if visited[root.index()] {
                continue;
            }
            let mut stack: Vec<(NodeId, Vec<NodeId>, usize)> = vec![(root, self.operands(root), 0)];
            visited[root.index()] = true;
            while let Some((node, ops, i)) = stack.last_mut() {
                if *i < ops.len() {
                    let next = ops[*i];
                    *i += 1;
                    if !visited[next.index()] {
                        visited[next.index()] = true;
                        let nops = self.operands(next);
                        stack.push((next, nops, 0));
                    }
                } else {
                    order.push(*node);
                    stack.pop();
                }
            }
        }
        order
    }

    /// Context of a node for error messages. Nodes are numbered as the text form prints them
    /// (`text::print_order`), so an error names the `%n` seen in an IR dump.
    pub fn context(&self, id: NodeId) -> NodeContext {
        let order = crate::text::print_order(self);
        let num: std::collections::HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let label = |n: NodeId| num.get(&n).copied().unwrap_or(n.index());
        let n = &self.g[id];
        NodeContext {
            node: label(id),
            op: n.op.name().to_string(),
            operands: self
                .operands(id)
                .iter()
                .map(|&o| format!("%{}: {}", label(o), self.g[o].ty))
                .collect(),
            loc: n.loc.clone(),
        }
    }

    // ----- builders -------------------------------------------------------------------------
    // Thin wrappers over `push`, used by autodiff, passes and the `kiln` front end.

    pub fn input(&mut self, name: impl Into<String>, ty: TensorType) -> Result<NodeId> {
        self.push(
            Op::Input {
                name: name.into(),
                ty,
            },
            &[],
        )
    }
    pub fn param(&mut self, name: impl Into<String>, ty: TensorType) -> Result<NodeId> {
        self.push(
            Op::Param {
                name: name.into(),
                ty,
            },
            &[],
        )
    }
    pub fn constant(&mut self, lit: Literal) -> Result<NodeId> {
        self.push(Op::Const(Arc::new(lit)), &[])
    }
    pub fn full(&mut self, value: f64, ty: TensorType) -> Result<NodeId> {
        self.push(Op::Full { value, ty }, &[])
    }
    /// A tensor with `like`'s type filled with `value`.
    pub fn full_like(&mut self, value: f64, like: NodeId) -> Result<NodeId> {
        let ty = self.ty(like).clone();
        self.full(value, ty)
    }
    pub fn unary(&mut self, op: UnaryOp, a: NodeId) -> Result<NodeId> {
        self.push(Op::Unary(op), &[a])
    }
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Binary(op), &[a, b])
    }
    pub fn compare(&mut self, op: CmpOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Compare(op), &[a, b])
    }
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Div, a, b)
    }
    pub fn neg(&mut self, a: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Neg, a)
    }
    /// `a * value` for a scalar value.
    pub fn scale(&mut self, a: NodeId, value: f64) -> Result<NodeId> {
        let c = self.full_like(value, a)?;
        self.mul(a, c)
    }
    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Where, &[cond, a, b])
    }
    pub fn cast(&mut self, a: NodeId, dtype: DType) -> Result<NodeId> {
        self.push(Op::Cast(dtype), &[a])
    }
    pub fn reduce(&mut self, op: ReduceOp, a: NodeId, axes: Vec<usize>) -> Result<NodeId> {
        self.push(Op::Reduce { op, axes }, &[a])
    }
    /// Reshapes `a`; returns `a` itself when the shape is unchanged (so does [`Graph::expand`]).
    pub fn reshape(&mut self, a: NodeId, shape: Vec<usize>) -> Result<NodeId> {
        if self.shape(a) == shape.as_slice() {
            return Ok(a);
        }
        self.push(Op::Reshape(shape), &[a])
    }
    pub fn permute(&mut self, a: NodeId, perm: Vec<usize>) -> Result<NodeId> {
        self.push(Op::Permute(perm), &[a])
    }
    pub fn expand(&mut self, a: NodeId, shape: Vec<usize>) -> Result<NodeId> {
        if self.shape(a) == shape.as_slice() {
            return Ok(a);
        }
        self.push(Op::Expand(shape), &[a])
    }
    pub fn slice(&mut self, a: NodeId, axes: Vec<SliceAxis>) -> Result<NodeId> {
        self.push(Op::Slice(axes), &[a])
    }
    pub fn pad(&mut self, a: NodeId, lo: Vec<usize>, hi: Vec<usize>, value: f64) -> Result<NodeId> {
        self.push(Op::Pad { lo, hi, value }, &[a])
    }
    pub fn concat(&mut self, parts: &[NodeId], axis: usize) -> Result<NodeId> {
        self.push(Op::Concat(axis), parts)
    }
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::MatMul, &[a, b])
    }
    pub fn conv(&mut self, x: NodeId, w: NodeId, p: ConvParams) -> Result<NodeId> {
        self.push(Op::Conv(p), &[x, w])
    }
    pub fn conv_transpose(&mut self, x: NodeId, w: NodeId, p: ConvParams) -> Result<NodeId> {
        self.push(Op::ConvTranspose(p), &[x, w])
    }
    pub fn conv_weight(
        &mut self,
        x: NodeId,
        dy: NodeId,
        p: ConvParams,
        kernel: Vec<usize>,
    ) -> Result<NodeId> {
        self.push(Op::ConvWeight { params: p, kernel }, &[x, dy])
    }

    /// Swaps the last two axes.
    pub fn transpose_last(&mut self, a: NodeId) -> Result<NodeId> {
        let r = self.shape(a).len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permute(a, perm)
    }

    /// Sums `a` down to `shape`, the inverse of broadcasting `shape` up to `a`'s shape:
    /// leading axes are summed away, axes where `shape` has 1 are summed with keepdim.
    pub fn sum_to(&mut self, a: NodeId, shape: &[usize]) -> Result<NodeId> {
        let from = self.shape(a).to_vec();
        if from == shape {
            return Ok(a);
        }
        if crate::shape::broadcast_shapes(&from, shape).as_deref() != Some(from.as_slice()) {
            return Err(IrError::Shape {
                op: "sum_to".into(),
                operands: crate::shape::fmt_shape(&from),
                msg: format!(
                    "{} does not broadcast to this shape",
                    crate::shape::fmt_shape(shape)
                ),
                loc: self.origin.0.clone(),
            });
        }
        let lead = from.len() - shape.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && from[lead + i] != 1 {
                axes.push(lead + i);
            }
        }
        let r = if axes.is_empty() {
            a
        } else {
            self.reduce(ReduceOp::Sum, a, axes)?
        };
        self.reshape(r, shape.to_vec())
    }

    /// Broadcasts `a` to `shape` (NumPy rules): a reshape adding leading 1s, then an expand.
    pub fn broadcast_to(&mut self, a: NodeId, shape: &[usize]) -> Result<NodeId> {
        let from = self.shape(a).to_vec();
        if from == shape {
            return Ok(a);
        }
        if from.len() > shape.len() {
            return Err(IrError::Shape {
                op: "broadcast".into(),
                operands: crate::shape::fmt_shape(&from),
                msg: format!(
                    "cannot broadcast to lower rank {}",
                    crate::shape::fmt_shape(shape)
                ),
                loc: self.origin.0.clone(),
            });
        }
        let mut padded = vec![1; shape.len() - from.len()];
        padded.extend_from_slice(&from);
        let r = self.reshape(a, padded)?;
        self.expand(r, shape.to_vec())
    }
}
