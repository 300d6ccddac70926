//! Autograd front end: grad mode, `backward`, `.grad`, `detach`.
//!
//! `backward` lowers the DAG below the loss with the leaves that require grad as `param`
//! nodes, asks `kiln_ir::autodiff` for the gradient nodes (the backward pass is ordinary IR,
//! see [`backward_graph`]), executes forward and backward as one graph and accumulates the
//! results into the leaves' `.grad`, as PyTorch does.

use crate::error::{Error, Result};
use crate::lower::{execute, lower};
use crate::tensor::{GradGroup, Tensor};
use kiln_ir::{autodiff, Graph, Literal, NodeId, Op, TensorType};
use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Arc;

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops record gradient history on this thread (`torch.is_grad_enabled()`).
pub fn is_grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// Disables gradient recording until dropped (`with torch.no_grad():`).
pub struct NoGradGuard(());

impl NoGradGuard {
    pub fn new() -> NoGradGuard {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
        NoGradGuard(())
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        NoGradGuard::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Runs `f` with gradient recording disabled.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}

/// The graph `backward` runs for `loss` (seeded with ones): forward and backward nodes, with
/// outputs `loss` and `grad.<param>` for each leaf requiring grad. For IR dumps.
pub fn backward_graph(loss: &Tensor) -> Result<Graph> {
    let (lw, grads) = build_backward(loss, None)?;
    let mut g = lw.graph;
    g.set_output("loss", lw.node_of[&loss.id()]);
    for ((pnode, _), gnode) in lw.params.iter().zip(grads) {
        if let Some(n) = gnode {
            let name = match &g.node(*pnode).op {
                Op::Param { name, .. } => name.clone(),
                _ => unreachable!("params are param nodes"),
            };
            g.set_output(format!("grad.{name}"), n);
        }
    }
    Ok(g)
}

fn build_backward(
    root: &Tensor,
    seed: Option<&Tensor>,
) -> Result<(crate::lower::Lowered, Vec<Option<NodeId>>)> {
    let mut lw = lower(std::slice::from_ref(root), false)?;
    let out = lw.node_of[&root.id()];
    let seed_node = match seed {
        None => lw.graph.full(1.0, root.ty().clone())?,
        Some(s) => {
            // As PyTorch, a gradient of another dtype is converted to the output's.
            let v = no_grad(|| s.try_to_dtype(root.dtype()))?.literal()?;
            let n = lw.graph.input(
                "grad_output",
                TensorType::new(root.dtype(), root.shape().to_vec()),
            )?;
            lw.bound.push((n, v));
            n
        }
    };
    let wrt: Vec<NodeId> = lw.params.iter().map(|(n, _)| *n).collect();
    let grads = autodiff::grad(&mut lw.graph, &[(out, seed_node)], &wrt)?;
    Ok((lw, grads))
}

/// Gradients of `output` with respect to `inputs` as lazy tensors (`torch.autograd.grad`).
///
/// `output` must be a one-element tensor unless `grad_output` (of `output`'s shape) is given.
/// The gradients are traced, not computed: they can feed further ops (an optimiser's update),
/// and realising them runs forward and backward as one graph. An input the output does not
/// depend on gets `None`. Unlike `backward`, nothing is accumulated into `.grad`.
pub fn grad(
    output: &Tensor,
    inputs: &[&Tensor],
    grad_output: Option<&Tensor>,
) -> Result<Vec<Option<Tensor>>> {
    check_output(output, grad_output)?;
    for (k, t) in inputs.iter().enumerate() {
        if !t.requires_grad() {
            return Err(Error::Autograd(format!(
                "input {k} (made at {}) does not require grad, so it has no gradient",
                t.loc()
            )));
        }
    }
    let reach = reachable_ids(output);
    let wrt: Vec<Tensor> = inputs
        .iter()
        .filter(|t| reach.contains(&t.id()))
        .map(|t| (*t).clone())
        .collect();
    if wrt.is_empty() {
        return Ok(vec![None; inputs.len()]);
    }
    let group = Arc::new(GradGroup {
        output: output.clone(),
        seed: grad_output.cloned(),
        wrt,
    });
    let loc = output.loc().clone();
    let mut out = Vec::with_capacity(inputs.len());
    let mut k = 0;
    for t in inputs {
        if reach.contains(&t.id()) {
            out.push(Some(Tensor::grad_node(&group, k, loc.clone())));
            k += 1;
        } else {
            out.push(None);
        }
    }
    Ok(out)
}

/// Ids of the tensors that gradients from `root` reach (through tensors requiring grad).
fn reachable_ids(root: &Tensor) -> HashSet<u64> {
    let mut seen = HashSet::new();
    let mut stack = vec![root.clone()];
    while let Some(t) = stack.pop() {
        if !t.requires_grad() || !seen.insert(t.id()) {
            continue;
        }
        stack.extend(t.inputs());
    }
    seen
}

/// The leaves requiring grad that `root` depends on, in discovery order.
fn grad_leaves(root: &Tensor) -> Vec<Tensor> {
    let mut seen = HashSet::new();
    let mut leaves = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(t) = stack.pop() {
        if !t.requires_grad() || !seen.insert(t.id()) {
            continue;
        }
        if t.is_source() {
            leaves.push(t);
        } else {
            stack.extend(t.inputs().into_iter().rev());
        }
    }
    leaves
}

fn check_output(output: &Tensor, gradient: Option<&Tensor>) -> Result<()> {
    if !output.requires_grad() {
        return Err(Error::Autograd(
            "element 0 of tensors does not require grad and does not have a grad_fn".into(),
        ));
    }
    match gradient {
        None if output.numel() != 1 => Err(Error::Autograd(format!(
            "grad can be implicitly created only for scalar outputs, this tensor has shape {:?}",
            output.shape()
        ))),
        Some(g) if g.shape() != output.shape() => Err(Error::Autograd(format!(
            "gradient of shape {:?} given for an output of shape {:?}",
            g.shape(),
            output.shape()
        ))),
        _ => Ok(()),
    }
}

impl Tensor {
    /// Returns a leaf sharing this tensor's storage with `requires_grad` set
    /// (`x.requires_grad_()` on a tensor made from data).
    #[track_caller]
    pub fn requires_grad_(self, requires_grad: bool) -> Tensor {
        self.try_requires_grad_(requires_grad)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    pub fn try_requires_grad_(self, requires_grad: bool) -> Result<Tensor> {
        if !self.is_leaf() {
            return Err(Error::Autograd(
                "requires_grad_ can only be set on leaf tensors (those without gradient history); use .detach() first"
                    .into(),
            ));
        }
        if requires_grad && !self.dtype().is_float() {
            return Err(Error::Autograd(format!(
                "only float tensors can require grad, this one is {}",
                self.dtype()
            )));
        }
        if self.requires_grad() == requires_grad {
            return Ok(self);
        }
        // A tensor without history that is still an op (e.g. `(x * 0.3).detach()`) becomes a
        // data leaf: compute it, then share its storage.
        self.realize()?;
        let t = Tensor::leaf_with_storage(
            self.0.storage.clone(),
            self.ty().clone(),
            requires_grad,
            self.loc().clone(),
        );
        if let Some(n) = self.name() {
            t.set_name(n);
        }
        Ok(t)
    }

    /// The same value, cut from the gradient history (`.detach()`). A realised tensor gives a
    /// leaf sharing its storage (an in-place change through one is seen through the other, as
    /// in PyTorch); an unrealised one gives a `detach` node, so nothing is computed early.
    #[track_caller]
    pub fn detach(&self) -> Tensor {
        if self.is_realized() {
            return Tensor::leaf_with_storage(
                self.0.storage.clone(),
                self.ty().clone(),
                false,
                self.loc().clone(),
            );
        }
        let _g = NoGradGuard::new();
        Tensor::apply(Op::Detach, vec![self.clone()], Some("Detach"))
            .expect("detach accepts any tensor")
    }

    /// The accumulated gradient (`.grad`), `None` before any backward or after `zero_grad`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0
            .grad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Clears the gradient (`.grad = None`, PyTorch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sets the gradient (an optimiser's input; mostly for tests).
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap_or_else(|p| p.into_inner()) = g;
    }

    /// Computes the gradient of this scalar with respect to every leaf that requires grad and
    /// adds it to their `.grad` (`loss.backward()`).
    #[track_caller]
    pub fn backward(&self) {
        self.try_backward(None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `backward` with an explicit output gradient (`out.backward(gradient)`); `None` needs a
    /// one-element tensor.
    pub fn try_backward(&self, gradient: Option<&Tensor>) -> Result<()> {
        check_output(self, gradient)?;
        if crate::compile::is_tracing() {
            // Inside a compiled step: the gradients become part of the traced program.
            let leaves = grad_leaves(self);
            let refs: Vec<&Tensor> = leaves.iter().collect();
            let grads = grad(self, &refs, gradient)?;
            for (leaf, g) in leaves.iter().zip(grads) {
                let Some(g) = g else { continue };
                crate::compile::note_grad(leaf);
                let _ng = NoGradGuard::new();
                let new = match leaf.grad() {
                    Some(old) => old.try_add(&g)?,
                    None => g,
                };
                leaf.set_grad(Some(new));
            }
            return Ok(());
        }
        let (mut lw, grads) = build_backward(self, gradient)?;
        // The output's value is computed anyway: keep it, so `loss.item()` after an optimiser
        // step still reports the loss the gradients were taken at.
        let root = lw.node_of[&self.id()];
        let mut wanted = vec![root];
        let mut targets = Vec::new();
        for ((_, leaf), g) in lw.params.iter().zip(&grads) {
            if let Some(g) = g {
                wanted.push(*g);
                targets.push(leaf.clone());
            }
        }
        lw.graph.set_output("output", root);
        for (i, &w) in wanted[1..].iter().enumerate() {
            lw.graph.set_output(format!("grad{i}"), w);
        }
        let mut values = execute(&lw, &wanted)?.into_iter();
        let root_value = values.next().expect("the root was requested");
        if !self.is_realized() {
            crate::lower::store(self, root_value);
        }
        let _ng = NoGradGuard::new();
        for (leaf, v) in targets.iter().zip(values) {
            accumulate(leaf, v)?;
        }
        Ok(())
    }
}

fn accumulate(leaf: &Tensor, v: Literal) -> Result<()> {
    let mut slot = leaf.0.grad.lock().unwrap_or_else(|p| p.into_inner());
    let new = match slot.take() {
        None => Tensor::leaf(v, false, leaf.loc().clone()),
        Some(old) => {
            let sum = &old + &Tensor::leaf(v, false, leaf.loc().clone());
            let lit = sum.literal()?;
            Tensor::leaf(Arc::unwrap_or_clone(lit), false, leaf.loc().clone())
        }
    };
    *slot = Some(new);
    Ok(())
}
