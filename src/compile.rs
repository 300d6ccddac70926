//! Compiled steps: a function traced once and replayed (`jax.jit`, `torch.compile`).
//!
//! [`compile`] calls the step function once with placeholder inputs. Inside, ordinary kiln code
//! runs in *tracing mode*: ops are recorded as usual, `loss.backward()` records lazy gradients
//! into `.grad` instead of computing them, and in-place updates of parameters and buffers
//! (`kiln::assign`, `p.sub_(..)`, so every optimiser's `step()`) are recorded as assignments.
//! The outputs and the assigned values are then lowered to one IR graph — forward, backward and
//! update — which [`CompiledStep::run`] executes for each new batch, binding the *current*
//! values of the parameters and state it reads and writing the assignments back in place.
//!
//! Inside a traced step nothing can be computed (the inputs have no values): `.item()` or
//! printing there is an error; return such values as outputs instead. `.grad` values set
//! during tracing are restored afterwards.
//!
//! What a replay reads is what lives in tensors: parameters, buffers and optimiser state —
//! including `kiln::optim`'s learning rates and step counts, which are 0-d tensors for exactly
//! this reason, so a scheduler changing the learning rate between runs is seen by the next
//! run. Plain host values used while tracing (an `f64` hyper-parameter such as a momentum, a
//! Python-style scalar in the step's code) are constants of the traced program: re-trace when
//! they change. Training-mode dropout is refused inside a trace (its mask would be frozen).

use crate::error::{Error, Result};
use crate::lower::{lower, run_graph};
use crate::tensor::Tensor;
use kiln_ir::{Graph, Literal, Loc, NodeId, TensorType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
struct Trace {
    assigns: Vec<(Tensor, Tensor)>,
    saved_grads: Vec<(Tensor, Option<Tensor>)>,
}

thread_local! {
    static TRACE: RefCell<Option<Trace>> = const { RefCell::new(None) };
}

/// Whether this thread is tracing a compiled step.
pub fn is_tracing() -> bool {
    TRACE.with(|t| t.borrow().is_some())
}

/// Records assignments when a compiled step is being traced; returns false (nothing recorded)
/// when no trace is active, so the caller performs them eagerly.
pub(crate) fn record_assignments(pairs: impl Iterator<Item = (Tensor, Tensor)>) -> bool {
    TRACE.with(|t| match t.borrow_mut().as_mut() {
        Some(tr) => {
            for (target, value) in pairs {
                // A later assignment to the same target replaces the earlier one.
                tr.assigns.retain(|(t, _)| t.id() != target.id());
                tr.assigns.push((target, value));
            }
            true
        }
        None => false,
    })
}

/// Remembers a leaf's `.grad` before tracing changes it, to restore it afterwards.
pub(crate) fn note_grad(leaf: &Tensor) {
    TRACE.with(|t| {
        if let Some(tr) = t.borrow_mut().as_mut() {
            if !tr.saved_grads.iter().any(|(l, _)| l.id() == leaf.id()) {
                tr.saved_grads.push((leaf.clone(), leaf.grad()));
            }
        }
    });
}

/// A value a compiled step binds at each run.
enum Source {
    /// A data leaf (parameter, buffer, optimiser state): its current value.
    Leaf(Tensor),
    /// A value computed before tracing: fixed.
    Frozen(Arc<Literal>),
}

/// A traced step, replayed by [`CompiledStep::run`].
pub struct CompiledStep {
    graph: Graph,
    /// The compiled program (JIT or CUDA backend), made once at `compile`.
    program: Option<Exec>,
    /// Graph node of each step input, `None` when the step does not use it.
    inputs: Vec<(Option<NodeId>, TensorType)>,
    sources: Vec<(NodeId, Source)>,
    outputs: Vec<NodeId>,
    assigns: Vec<(Tensor, NodeId)>,
}

/// A step's program on the backend `KILN_BACKEND` chose when it was compiled.
enum Exec {
    Cpu(kiln_codegen::Program),
    #[cfg(feature = "cuda")]
    Cuda(kiln_codegen::cuda::CudaProgram),
}

/// Traces `f` once on placeholders typed like `example_inputs` and returns the step it
/// computes. `f` returns the step's outputs (a loss, predictions, ...).
#[track_caller]
pub fn compile(
    example_inputs: &[&Tensor],
    f: impl FnOnce(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<CompiledStep> {
    let loc = Loc::caller();
    if is_tracing() {
        return Err(Error::Autograd(
            "kiln::compile cannot be nested inside a traced step".into(),
        ));
    }
    let placeholders: Vec<Tensor> = example_inputs
        .iter()
        .map(|t| Tensor::placeholder(t.ty().clone(), loc.clone()))
        .collect();
    TRACE.with(|t| *t.borrow_mut() = Some(Trace::default()));
    let result = f(&placeholders);
    let trace = TRACE
        .with(|t| t.borrow_mut().take())
        .expect("trace was set above");
    for (leaf, g) in &trace.saved_grads {
        leaf.set_grad(g.clone());
    }
    let outputs = result?;

    let mut roots = outputs.clone();
    roots.extend(trace.assigns.iter().map(|(_, v)| v.clone()));
    let mut lw = lower(&roots, true)?;
    let out_nodes: Vec<NodeId> = outputs.iter().map(|t| lw.node_of[&t.id()]).collect();
    let assigns: Vec<(Tensor, NodeId)> = trace
        .assigns
        .iter()
        .map(|(t, v)| (t.clone(), lw.node_of[&v.id()]))
        .collect();
    for (i, &n) in out_nodes.iter().enumerate() {
        lw.graph.set_output(format!("out{i}"), n);
    }
    for (t, n) in &assigns {
        let name = t.name().unwrap_or_else(|| format!("t{}", t.id()));
        lw.graph.set_output(format!("assign.{name}"), *n);
    }
    let by_id: HashMap<u64, NodeId> = lw.placeholders.iter().map(|(n, t)| (t.id(), *n)).collect();
    let inputs = placeholders
        .iter()
        .map(|p| (by_id.get(&p.id()).copied(), p.ty().clone()))
        .collect();
    let sources = lw
        .sources
        .iter()
        .zip(&lw.bound)
        .map(|((n, t), (_, v))| {
            let s = if t.is_source() {
                Source::Leaf(t.clone())
            } else {
                Source::Frozen(v.clone())
            };
            (*n, s)
        })
        .collect();
    log::debug!(
        "compiled a step of {} nodes: {} inputs, {} outputs, {} assignments",
        lw.graph.len(),
        example_inputs.len(),
        out_nodes.len(),
        assigns.len()
    );
    let mut wanted = out_nodes.clone();
    wanted.extend(assigns.iter().map(|(_, n)| *n));
    let mut bound: Vec<NodeId> = lw.placeholders.iter().map(|(n, _)| *n).collect();
    bound.extend(lw.sources.iter().map(|(n, _)| *n));
    bound.sort();
    let program = match kiln_codegen::Backend::from_env() {
        kiln_codegen::Backend::Jit => Some(Exec::Cpu(kiln_codegen::Program::compile(
            &lw.graph, &wanted, &bound,
        )?)),
        #[cfg(feature = "cuda")]
        kiln_codegen::Backend::Cuda => Some(Exec::Cuda(kiln_codegen::cuda::CudaProgram::compile(
            &lw.graph,
            &wanted,
            &bound,
            kiln_codegen::cuda::program::default_ordinal(),
        )?)),
        // Without the `cuda` feature, the first run reports that there is no CUDA backend.
        #[cfg(not(feature = "cuda"))]
        kiln_codegen::Backend::Cuda => None,
        kiln_codegen::Backend::Interpreter => None,
    };
    Ok(CompiledStep {
        graph: lw.graph,
        program,
        inputs,
        sources,
        outputs: out_nodes,
        assigns,
    })
}

impl CompiledStep {
    /// The traced program (forward, backward and updates), for dumps.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the step on new inputs (types as at tracing): returns the outputs and writes the
    /// recorded assignments into their targets.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::shape(
                "compiled step",
                format!(
                    "traced with {} inputs, run with {}",
                    self.inputs.len(),
                    inputs.len()
                ),
            ));
        }
        for (k, ((_, ty), t)) in self.inputs.iter().zip(inputs).enumerate() {
            if t.ty() != ty {
                return Err(Error::shape(
                    "compiled step",
                    format!("input {k} was traced as {ty} and is now {}", t.ty()),
                ));
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(Exec::Cuda(p)) = &self.program {
            return self.run_cuda(p, inputs);
        }
        let mut values: Vec<(NodeId, Arc<Literal>)> =
            Vec::with_capacity(self.sources.len() + inputs.len());
        for ((node, _), t) in self.inputs.iter().zip(inputs) {
            if let Some(n) = node {
                values.push((*n, t.literal()?));
            }
        }
        for (n, s) in &self.sources {
            values.push((
                *n,
                match s {
                    Source::Leaf(t) => t.literal()?,
                    Source::Frozen(v) => v.clone(),
                },
            ));
        }
        let bindings: HashMap<NodeId, &Literal> =
            values.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        let mut wanted = self.outputs.clone();
        wanted.extend(self.assigns.iter().map(|(_, n)| *n));
        let mut results = match &self.program {
            Some(Exec::Cpu(p)) => p.run(&bindings)?,
            #[cfg(feature = "cuda")]
            Some(Exec::Cuda(_)) => unreachable!("run on the GPU above"),
            None => run_graph(&self.graph, &bindings, &wanted)?,
        };
        drop(bindings);
        drop(values);
        let assigned = results.split_off(self.outputs.len());
        for ((target, _), v) in self.assigns.iter().zip(assigned) {
            crate::inplace::store_value(target, v)?;
        }
        Ok(results.into_iter().map(Tensor::from_literal).collect())
    }

    /// [`CompiledStep::run`] on the GPU: values already on the program's device (parameters
    /// and optimiser state written there by earlier runs, tensors moved there) are used in
    /// place, others uploaded; the assignments are written to their targets *on the device*
    /// (no download), and the outputs are tensors on the device, copied to the host when read.
    /// So after the first run a training step moves only its batch in and what is read of its
    /// outputs (the loss) out.
    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        p: &kiln_codegen::cuda::CudaProgram,
        inputs: &[&Tensor],
    ) -> Result<Vec<Tensor>> {
        use kiln_codegen::cuda::program::Value;
        use kiln_codegen::cuda::DeviceTensor;
        enum Held {
            Device(DeviceTensor),
            Host(Arc<Literal>),
        }
        let ordinal = p.device().ordinal();
        let hold = |t: &Tensor| -> Result<Held> {
            match crate::resident::device_value(&t.0.storage) {
                Some(d) if d.device().ordinal() == ordinal => Ok(Held::Device(d)),
                _ => Ok(Held::Host(t.literal()?)),
            }
        };
        let mut held: Vec<(NodeId, Held)> = Vec::with_capacity(self.sources.len() + inputs.len());
        for ((node, _), t) in self.inputs.iter().zip(inputs) {
            if let Some(n) = node {
                held.push((*n, hold(t)?));
            }
        }
        for (n, s) in &self.sources {
            let h = match s {
                Source::Leaf(t) => hold(t)?,
                Source::Frozen(v) => Held::Host(v.clone()),
            };
            held.push((*n, h));
        }
        let bindings: HashMap<NodeId, Value<'_>> = held
            .iter()
            .map(|(n, h)| match h {
                Held::Device(d) => (*n, Value::Device(d)),
                Held::Host(l) => (*n, Value::Host(l)),
            })
            .collect();
        let mut results = p.run_device(&bindings)?;
        drop(bindings);
        drop(held);
        let assigned = results.split_off(self.outputs.len());
        for ((target, _), v) in self.assigns.iter().zip(assigned) {
            crate::resident::set(&target.0.storage, v, None)?;
        }
        results
            .into_iter()
            .map(|v| {
                let t = Tensor::leaf_with_storage(
                    Arc::new(std::sync::RwLock::new(None)),
                    v.ty().clone(),
                    false,
                    Loc::caller(),
                );
                crate::resident::set(&t.0.storage, v, None)?;
                Ok(t)
            })
            .collect()
    }
}
