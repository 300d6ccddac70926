//! The [`Module`] trait: PyTorch's `nn.Module` as a graph builder.

use super::StateDict;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashSet;

/// A layer or a model: something that traces a forward computation on its parameters.
///
/// A module owns its *parameters* (leaf tensors that require grad, updated by an optimiser) and
/// *buffers* (state that is not trained, e.g. batch norm's running statistics), and lists its
/// *children*. Everything else is provided from those three lists, with PyTorch's dotted
/// names and order: a module's own parameters, then its own buffers, then each child's, the
/// child's name prefixed (`conv1.weight`, `bn1.running_mean`).
///
/// `forward` does not compute anything: it records ops (see [`crate::Tensor`]), so calling a
/// model builds the graph that backward differentiates and a compiled step replays. Models call
/// their layers' `forward` directly (static dispatch); only the listing methods go through
/// `&dyn Module`.
///
/// Implementing a module: write `forward`, return the parameters from `local_parameters` and
/// the sub-modules from `children`/`children_mut`, and call [`Module::name_tensors`] once
/// after construction so that lowered graphs name the parameters `conv1.weight`.
pub trait Module {
    /// Records the forward computation on `x`. Shape errors panic with the op, the shapes and
    /// the caller's line, as the tensor ops do; layers also have a `try_forward`.
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor;

    /// This module's own parameters (not its children's), with local names, in order.
    fn local_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// This module's own buffers (not its children's), with local names, in order.
    fn local_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// The direct sub-modules with their attribute names, in registration order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// The direct sub-modules, mutably (for [`Module::set_training`]).
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        Vec::new()
    }

    /// Whether the module is in training mode. Modules whose behaviour depends on the mode
    /// (batch norm, dropout) and containers hold a flag; a stateless layer reports `true`.
    fn is_training(&self) -> bool {
        true
    }

    /// Sets this module's own mode flag, not its children's (see [`Module::set_training`]).
    fn set_local_training(&mut self, _training: bool) {}

    /// Sets training (`true`) or evaluation mode on this module and all its descendants
    /// (`module.train(mode)`).
    fn set_training(&mut self, training: bool) {
        self.set_local_training(training);
        for (_, c) in self.children_mut() {
            c.set_training(training);
        }
    }

    /// Training mode: batch norm uses batch statistics and updates its running ones, dropout
    /// drops.
    fn train(&mut self) {
        self.set_training(true);
    }

    /// Evaluation mode: batch norm uses its running statistics, dropout is the identity.
    fn eval(&mut self) {
        self.set_training(false);
    }

    /// Parameters with dotted names, in registration order; a tensor registered twice (shared
    /// weights) is listed once, under its first name, as PyTorch does.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = self.local_parameters();
        for (name, c) in self.children() {
            v.extend(
                c.named_parameters()
                    .into_iter()
                    .map(|(n, t)| (format!("{name}.{n}"), t)),
            );
        }
        dedup(v)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Buffers with dotted names, in registration order.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = self.local_buffers();
        for (name, c) in self.children() {
            v.extend(
                c.named_buffers()
                    .into_iter()
                    .map(|(n, t)| (format!("{name}.{n}"), t)),
            );
        }
        dedup(v)
    }

    fn buffers(&self) -> Vec<Tensor> {
        self.named_buffers().into_iter().map(|(_, t)| t).collect()
    }

    /// Number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }

    /// Moves every parameter and buffer to `device` in place (PyTorch's `module.to(device)`):
    /// the tensors keep their identity, so an optimiser made before or after sees them there.
    /// On a GPU, a step compiled with `KILN_BACKEND=cuda` then updates them where they are.
    fn to_device(&self, device: crate::Device) -> Result<()> {
        for t in self.parameters().into_iter().chain(self.buffers()) {
            t.move_storage_to(device)?;
        }
        Ok(())
    }

    /// Clears every parameter's gradient (`zero_grad(set_to_none=True)`).
    fn zero_grad(&self) {
        for p in self.parameters() {
            p.zero_grad();
        }
    }

    /// The live parameter and buffer handles in `state_dict` order: per module, its parameters,
    /// then its buffers, then its children's.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.local_parameters();
        v.extend(self.local_buffers());
        for (name, c) in self.children() {
            v.extend(
                c.named_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("{name}.{n}"), t)),
            );
        }
        v
    }

    /// Sets every parameter's and buffer's tensor name to its dotted path, so that lowered
    /// graphs and IR dumps call them `conv1.weight`. Models call it when they are built; call
    /// it again after composing modules into a new one.
    fn name_tensors(&self) {
        for (n, t) in self.named_tensors() {
            t.set_name(n);
        }
    }

    /// Parameters and buffers by dotted name (`model.state_dict()`): detached handles sharing
    /// the module's storage, so they see later updates, as in PyTorch.
    fn state_dict(&self) -> StateDict {
        self.named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect()
    }

    /// Copies the tensors of `state` into this module's parameters and buffers
    /// (`model.load_state_dict(state, strict)`), converting the dtype if it differs.
    ///
    /// A tensor whose shape differs from the module's is always an error naming the tensor and
    /// both shapes; with `strict`, so are missing and unexpected keys. All problems are found
    /// before anything is written: on error the module is unchanged. A missing
    /// `num_batches_tracked` is tolerated, as PyTorch does for checkpoints older than it.
    /// Returns the missing and unexpected keys (both empty in strict mode).
    fn load_state_dict(&self, state: &StateDict, strict: bool) -> Result<LoadReport> {
        let own = self.named_tensors();
        let own_names: HashSet<&str> = own.iter().map(|(n, _)| n.as_str()).collect();
        let mut report = LoadReport::default();
        let mut mismatched = Vec::new();
        let mut pairs = Vec::new();
        for (name, t) in &own {
            match state.get(name) {
                None if name == "num_batches_tracked" || name.ends_with(".num_batches_tracked") => {}
                None => report.missing_keys.push(name.clone()),
                Some(v) if v.shape() != t.shape() => mismatched.push(format!(
                    "size mismatch for {name}: copying a tensor of shape {:?} from the state dict, the shape in the model is {:?}",
                    v.shape(),
                    t.shape()
                )),
                Some(v) => pairs.push((t, v)),
            }
        }
        report.unexpected_keys = state
            .keys()
            .filter(|k| !own_names.contains(k))
            .map(String::from)
            .collect();
        let mut problems = mismatched;
        if strict {
            if !report.missing_keys.is_empty() {
                problems.push(format!("missing keys: {}", report.missing_keys.join(", ")));
            }
            if !report.unexpected_keys.is_empty() {
                problems.push(format!(
                    "unexpected keys: {}",
                    report.unexpected_keys.join(", ")
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Data {
                path: state.source().unwrap_or("state_dict").to_string(),
                msg: format!(
                    "error(s) in loading the state dict: {}",
                    problems.join("; ")
                ),
            });
        }
        let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(t, v)| (*t, *v)).collect();
        crate::autograd::no_grad(|| crate::assign(&refs))?;
        Ok(report)
    }
}

/// What `load_state_dict` did not match (PyTorch's `_IncompatibleKeys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Names the module has and the state dict lacks.
    pub missing_keys: Vec<String>,
    /// Names the state dict has and the module lacks.
    pub unexpected_keys: Vec<String>,
}

fn dedup(v: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|(_, t)| seen.insert(t.id())).collect()
}

/// An owned `(name, tensor)` list from borrowed entries (for `local_parameters`).
pub(crate) fn local(names: &[(&str, &Tensor)]) -> Vec<(String, Tensor)> {
    names
        .iter()
        .map(|(n, t)| (n.to_string(), (*t).clone()))
        .collect()
}
