//! Optimisers as graph builders, learning-rate schedulers and gradient clipping
//! (`torch.optim`, `torch.optim.lr_scheduler`, `torch.nn.utils.clip_grad_norm_`).
//!
//! # Optimisers build graphs
//!
//! Each optimiser's math is a pure function on lazy tensors, [`UpdateRule::update`]: from a
//! parameter, its gradient and its state buffers it builds the new parameter and the new
//! state as traced ops, and computes nothing. [`Sgd::step`] (and every other optimiser's
//! `step`) builds the updates of *all* parameters that have a gradient and applies them with
//! one call to [`crate::assign`], whose targets are the parameters and the state buffers:
//!
//! - eagerly, `assign` lowers all the new values into one program, runs it once and writes
//!   the results into the targets' storage (every alias of a parameter sees the new value);
//! - inside a compiled training step (`kiln::compile`), `assign` is recorded instead, and the
//!   update becomes part of the one compiled program (forward, backward and update).
//!
//! For that to work the state must be *realised leaf tensors* that the assignments overwrite
//! (momentum buffers, Adam's moments, Adadelta's accumulators), created as zeros the first time
//! a parameter gets a gradient, never lazy chains that grow step after step.
//!
//! # What is a graph input and what is a constant
//!
//! Two scalars change while training runs, and both are tensors so that one traced program
//! stays valid for every step (and a program cache keyed on the graph's structure hits from
//! the second step on):
//!
//! - the **step count** `t` of each parameter is a realised `f32` scalar in its state (as
//!   PyTorch keeps `state["step"]`), incremented by the same `assign` as the parameter.
//!   Adam's bias corrections `1 - beta^t` are computed from it in the graph (in `f64`, cast
//!   to the parameter's dtype), like PyTorch's `capturable=True` mode;
//! - the **learning rate** of each parameter group is a realised `f64` scalar that
//!   [`Optimizer::set_group_lr`] (and so every scheduler) overwrites in place. A replayed
//!   program reads its current value.
//!
//! Schedulers are host code: call them between steps, outside the compiled function (their
//! writes to the learning-rate tensors are then seen by every later replay).
//!
//! The other hyper-parameters (momentum, betas, eps, weight decay, flags) are host `f64`s
//! baked into the graph as constants: changing them after a compiled step was traced needs a
//! new trace (eagerly every `step()` builds a fresh graph, so changes apply immediately).
//!
//! # Semantics
//!
//! Names, defaults, argument checks and update formulas are PyTorch's (2.x, the
//! single-tensor CPU path, with the same operation order so results agree to rounding). As in
//! PyTorch, `step()` skips parameters without a gradient (their state and step count do not
//! change), `zero_grad()` sets gradients to `None`, and invalid hyper-parameters are errors,
//! reported by `step()` (and by [`Optimizer::validate`]) before anything is changed.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use kiln_ir::DType;
use std::collections::{HashMap, HashSet};

/// Builder setters that store their argument in the field of the same name: on an options
/// struct (`$opts`, by value), and, when an optimiser type is given, the same on the
/// optimiser (forwarding to its options).
macro_rules! option_setters {
    ($opts:ty; $($name:ident: $t:ty),* $(,)?) => {
        impl $opts {
            $(
                pub fn $name(mut self, $name: $t) -> Self {
                    self.$name = $name;
                    self
                }
            )*
        }
    };
    ($opts:ty, $opt:ty; $($name:ident: $t:ty),* $(,)?) => {
        option_setters!($opts; $($name: $t),*);
        impl $opt {
            $(
                pub fn $name(mut self, $name: $t) -> Self {
                    self.core.map_options(|o| o.$name = $name);
                    self
                }
            )*
        }
    };
}

mod adadelta;
mod adam;
mod clip;
mod rmsprop;
mod scheduler;
mod sgd;

pub use adadelta::{Adadelta, AdadeltaOptions};
pub use adam::{Adam, AdamOptions, AdamW};
pub use clip::{clip_grad_norm_, clip_grad_norm_with, clip_grad_value_};
pub use rmsprop::{RmsProp, RmsPropOptions};
pub use scheduler::{
    CosineAnnealingLR, LrScheduler, PlateauMode, PlateauOptions, ReduceLROnPlateau, StepLR,
    ThresholdMode,
};
pub use sgd::{Sgd, SgdOptions};

/// What every optimiser offers to the code around it (schedulers, training loops).
///
/// The concrete optimisers also have these as inherent methods (`step`, `zero_grad`), so the
/// trait need not be imported for the plain loop.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient (one program, see the
    /// module docs).
    fn step(&mut self) -> Result<()>;

    /// Clears the gradients of all parameters (`zero_grad(set_to_none=True)`).
    fn zero_grad(&self);

    /// Checks the hyper-parameters of every group (PyTorch's constructor checks).
    fn validate(&self) -> Result<()>;

    /// Number of parameter groups.
    fn num_groups(&self) -> usize;

    /// The learning rate of group `group`, `None` if there is no such group.
    fn group_lr(&self, group: usize) -> Option<f64>;

    /// Sets the learning rate of group `group` (`param_groups[group]["lr"] = lr`); takes
    /// effect in the next step, also in a compiled step already traced.
    fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()>;

    /// Every parameter of every group.
    fn parameters(&self) -> Vec<Tensor>;

    /// The learning rates of all groups.
    fn lrs(&self) -> Vec<f64> {
        (0..self.num_groups())
            .filter_map(|g| self.group_lr(g))
            .collect()
    }

    /// The learning rate of the first group.
    fn get_lr(&self) -> f64 {
        self.group_lr(0).unwrap_or(0.0)
    }

    /// Sets the learning rate of every group.
    fn set_lr(&mut self, lr: f64) -> Result<()> {
        for g in 0..self.num_groups() {
            self.set_group_lr(g, lr)?;
        }
        Ok(())
    }
}

/// The per-step scalars an update rule reads, as 0-d `f64` tensors (graph inputs, see the
/// module docs): cast them to the parameter's dtype with [`StepScalars::lr_as`] and friends.
pub struct StepScalars {
    /// The group's learning rate.
    pub lr: Tensor,
    /// The parameter's step count *including* this step (PyTorch's `step` after `step += 1`):
    /// 1 on the first update.
    pub step: Tensor,
}

impl StepScalars {
    /// The learning rate in `dtype`.
    pub fn lr_as(&self, dtype: DType) -> Tensor {
        self.lr.to_dtype(dtype)
    }
}

/// The math of one optimiser: hyper-parameters (`self`) and a pure update function on lazy
/// tensors. The options structs ([`SgdOptions`], [`AdamOptions`], ...) implement it; an
/// optimiser is a list of parameter groups, each with its options, driving one rule.
pub trait UpdateRule: Clone + std::fmt::Debug {
    /// PyTorch's class name, for messages (`"SGD"`, `"Adam"`).
    fn name(&self) -> &'static str;

    fn lr(&self) -> f64;

    fn set_lr(&mut self, lr: f64);

    /// PyTorch's checks on the hyper-parameters (its constructor's `ValueError`s).
    fn validate(&self) -> Result<()>;

    /// PyTorch's state keys of the buffers this configuration keeps per parameter, in the
    /// order `update` takes and returns them (`"momentum_buffer"`, `"exp_avg"`, ...). The step
    /// count is kept for every rule and is not listed.
    fn state_names(&self) -> Vec<&'static str>;

    /// The new parameter and the new state buffers (in `state_names` order) after one step
    /// with gradient `g`: lazy tensors, nothing is computed. `g` has `p`'s shape and dtype.
    fn update(
        &self,
        p: &Tensor,
        g: &Tensor,
        state: &[Tensor],
        s: &StepScalars,
    ) -> Result<(Tensor, Vec<Tensor>)>;
}

/// A parameter group: parameters sharing hyper-parameters (`optimizer.param_groups[i]`).
pub struct ParamGroup<R> {
    pub params: Vec<Tensor>,
    /// The group's hyper-parameters; changes apply at the next `step()` (the learning rate
    /// included; prefer [`Optimizer::set_group_lr`], which also reaches compiled steps).
    pub options: R,
    /// The learning rate as a realised `f64` scalar (a graph input).
    lr_tensor: Tensor,
    /// The value last written to `lr_tensor`.
    lr_written: f64,
}

impl<R: UpdateRule> ParamGroup<R> {
    fn new(params: Vec<Tensor>, options: R, index: usize) -> ParamGroup<R> {
        let lr = options.lr();
        let lr_tensor = Tensor::scalar(lr);
        lr_tensor.set_name(if index == 0 {
            "lr".to_string()
        } else {
            format!("lr.{index}")
        });
        ParamGroup {
            params,
            options,
            lr_tensor,
            lr_written: lr,
        }
    }

    /// Writes the options' learning rate into the lr tensor if it changed.
    fn sync_lr(&mut self) -> Result<()> {
        let lr = self.options.lr();
        if lr.to_bits() != self.lr_written.to_bits() {
            let mut t = self.lr_tensor.clone();
            no_grad(|| t.fill_(lr))?;
            self.lr_written = lr;
        }
        Ok(())
    }
}

/// The state of one parameter: its step count and buffers, all realised leaves.
struct ParamState {
    step: Tensor,
    buffers: Vec<(&'static str, Tensor)>,
}

/// Parameter groups and per-parameter state, shared by every optimiser.
pub(crate) struct Core<R: UpdateRule> {
    groups: Vec<ParamGroup<R>>,
    defaults: R,
    /// By parameter id.
    state: HashMap<u64, ParamState>,
}

impl<R: UpdateRule> Core<R> {
    pub(crate) fn new(params: Vec<Tensor>, defaults: R) -> Core<R> {
        Core {
            groups: vec![ParamGroup::new(params, defaults.clone(), 0)],
            defaults,
            state: HashMap::new(),
        }
    }

    /// Applies `f` to the defaults and to every group's options (the builder methods).
    pub(crate) fn map_options(&mut self, f: impl Fn(&mut R)) {
        f(&mut self.defaults);
        for g in &mut self.groups {
            f(&mut g.options);
        }
    }

    pub(crate) fn add_param_group(&mut self, params: Vec<Tensor>, options: R) -> Result<()> {
        options.validate()?;
        let seen: HashSet<u64> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(Tensor::id))
            .collect();
        if params.iter().any(|p| seen.contains(&p.id())) {
            return Err(invalid(
                options.name(),
                "some parameters appear in more than one parameter group",
            ));
        }
        let index = self.groups.len();
        self.groups.push(ParamGroup::new(params, options, index));
        Ok(())
    }

    pub(crate) fn groups(&self) -> &[ParamGroup<R>] {
        &self.groups
    }

    pub(crate) fn groups_mut(&mut self) -> &mut [ParamGroup<R>] {
        &mut self.groups
    }

    pub(crate) fn defaults(&self) -> &R {
        &self.defaults
    }

    /// The state of `param` as PyTorch's `optimizer.state[param]`: `step` and the buffers
    /// (realised tensors aliasing the optimiser's), `None` before its first update.
    pub(crate) fn state_of(&self, param: &Tensor) -> Option<Vec<(&'static str, Tensor)>> {
        let st = self.state.get(&param.id())?;
        let mut v = vec![("step", st.step.detach())];
        v.extend(st.buffers.iter().map(|(n, t)| (*n, t.detach())));
        Some(v)
    }

    pub(crate) fn zero_grad(&self) {
        for g in &self.groups {
            for p in &g.params {
                p.zero_grad();
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let mut seen = HashSet::new();
        for g in &self.groups {
            g.options.validate()?;
            for p in &g.params {
                if !seen.insert(p.id()) {
                    return Err(invalid(
                        g.options.name(),
                        format!(
                            "parameter {} appears twice among the optimised parameters",
                            describe(p)
                        ),
                    ));
                }
                if !p.dtype().is_float() {
                    return Err(invalid(
                        g.options.name(),
                        format!(
                            "can only optimise float tensors, parameter {} is {}",
                            describe(p),
                            p.dtype()
                        ),
                    ));
                }
                if !p.is_source() {
                    return Err(invalid(
                        g.options.name(),
                        format!(
                            "parameter {} is not a leaf holding data (it is made by `{}`); optimise leaf tensors",
                            describe(p),
                            p.op().name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn num_groups(&self) -> usize {
        self.groups.len()
    }

    pub(crate) fn group_lr(&self, group: usize) -> Option<f64> {
        self.groups.get(group).map(|g| g.options.lr())
    }

    pub(crate) fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let n = self.groups.len();
        let name = self.defaults.name();
        let g = self.groups.get_mut(group).ok_or_else(|| {
            invalid(
                name,
                format!("no parameter group {group} (the optimiser has {n})"),
            )
        })?;
        if lr.is_nan() || lr < 0.0 {
            return Err(invalid(name, format!("Invalid learning rate: {lr}")));
        }
        g.options.set_lr(lr);
        g.sync_lr()
    }

    pub(crate) fn parameters(&self) -> Vec<Tensor> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().cloned())
            .collect()
    }

    /// Builds the updates of every parameter with a gradient and applies them with one
    /// `assign` (see the module docs).
    pub(crate) fn step(&mut self) -> Result<()> {
        self.validate()?;
        for g in &mut self.groups {
            g.sync_lr()?;
        }
        no_grad(|| {
            // (target, value): parameters, step counts, buffers.
            let mut pairs: Vec<(Tensor, Tensor)> = Vec::new();
            for group in &self.groups {
                let rule = &group.options;
                for p in &group.params {
                    let Some(g) = p.grad() else { continue };
                    if g.shape() != p.shape() {
                        return Err(invalid(
                            rule.name(),
                            format!(
                                "the gradient of parameter {} has shape {:?}, the parameter {:?}",
                                describe(p),
                                g.shape(),
                                p.shape()
                            ),
                        ));
                    }
                    let g = g.try_to_dtype(p.dtype())?;
                    let names = rule.state_names();
                    let st = self
                        .state
                        .entry(p.id())
                        .or_insert_with(|| new_state(p, &names));
                    let bufs: Vec<Tensor> =
                        names.iter().map(|n| buffer(st, p, n)).collect::<Vec<_>>();
                    let t = st.step.add(1.0);
                    let scalars = StepScalars {
                        lr: group.lr_tensor.clone(),
                        step: t.to_dtype(DType::F64),
                    };
                    let (np, nbufs) = rule.update(p, &g, &bufs, &scalars)?;
                    if nbufs.len() != bufs.len() {
                        return Err(invalid(
                            rule.name(),
                            format!(
                                "the update rule returned {} state buffers, expected {}",
                                nbufs.len(),
                                bufs.len()
                            ),
                        ));
                    }
                    pairs.push((p.clone(), np));
                    pairs.push((st.step.clone(), t));
                    pairs.extend(bufs.into_iter().zip(nbufs));
                }
            }
            let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(t, v)| (t, v)).collect();
            crate::assign(&refs)
        })
    }
}

/// Fresh state: step 0 and zero buffers, named after the parameter for IR dumps.
fn new_state(p: &Tensor, names: &[&'static str]) -> ParamState {
    let step = Tensor::zeros(Vec::<usize>::new());
    if let Some(n) = p.name() {
        step.set_name(format!("{n}.step"));
    }
    let mut st = ParamState {
        step,
        buffers: Vec::new(),
    };
    for n in names {
        buffer(&mut st, p, n);
    }
    st
}

/// The buffer `name` of a parameter's state, created as zeros if this configuration did not
/// use it before (e.g. momentum switched on after some steps).
fn buffer(st: &mut ParamState, p: &Tensor, name: &'static str) -> Tensor {
    if let Some((_, t)) = st.buffers.iter().find(|(n, _)| *n == name) {
        return t.clone();
    }
    let t = p.zeros_like();
    if let Some(n) = p.name() {
        t.set_name(format!("{n}.{name}"));
    }
    st.buffers.push((name, t.clone()));
    t
}

fn describe(p: &Tensor) -> String {
    match p.name() {
        Some(n) => format!("`{n}` (made at {})", p.loc()),
        None => format!("made at {}", p.loc()),
    }
}

/// An invalid hyper-parameter or misuse, reported as PyTorch's `ValueError` would be.
#[track_caller]
pub(crate) fn invalid(optimizer: &'static str, msg: impl Into<String>) -> Error {
    Error::shape(optimizer, msg)
}

/// Checks `lo <= v` (and not NaN) for a hyper-parameter, with PyTorch's message.
#[track_caller]
pub(crate) fn check_min(opt: &'static str, what: &str, v: f64, lo: f64) -> Result<()> {
    if v.is_nan() || v < lo {
        return Err(invalid(opt, format!("Invalid {what}: {v}")));
    }
    Ok(())
}

/// `start.lerp(end, weight)` with PyTorch's CPU formula for a scalar weight:
/// `start + w (end - start)` for `|w| < 0.5`, else `end - (end - start) (1 - w)`, with `w`
/// rounded to the tensors' dtype first (PyTorch computes `1 - w` in that type).
pub(crate) fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> Tensor {
    let w = if start.dtype() == DType::F32 {
        f64::from(weight as f32)
    } else {
        weight
    };
    let diff = end.sub(start);
    if w.abs() < 0.5 {
        start.add(&diff.mul(w))
    } else {
        end.sub(&diff.mul(1.0 - w))
    }
}

/// A lazy 0-d `f64` constant, for scalar math on the step count.
pub(crate) fn scalar_f64(value: f64) -> Tensor {
    Tensor::constant(value, DType::F64, vec![])
}

/// Builder methods and the [`Optimizer`] impl of an optimiser type wrapping a `Core`.
macro_rules! optimizer_common {
    ($ty:ident, $opts:ty) => {
        impl $ty {
            /// Clears the gradients of all parameters (`zero_grad(set_to_none=True)`).
            pub fn zero_grad(&self) {
                self.core.zero_grad()
            }

            /// Applies one update to every parameter that has a gradient: all updates are
            /// built as lazy tensors and applied by one [`crate::assign`]. Errors (invalid
            /// hyper-parameters, a gradient of the wrong shape) name the caller's line.
            #[track_caller]
            pub fn step(&mut self) -> $crate::error::Result<()> {
                let loc = kiln_ir::Loc::caller();
                self.core.step().map_err(|e| e.at(loc))
            }

            /// Adds a parameter group with its own hyper-parameters (`add_param_group`);
            /// start from [`Self::defaults`] to change a few of them.
            pub fn add_param_group(
                &mut self,
                params: Vec<$crate::tensor::Tensor>,
                options: $opts,
            ) -> $crate::error::Result<()> {
                self.core.add_param_group(params, options)
            }

            /// The parameter groups (`param_groups`).
            pub fn param_groups(&self) -> &[$crate::optim::ParamGroup<$opts>] {
                self.core.groups()
            }

            /// The parameter groups, to change hyper-parameters between steps.
            pub fn param_groups_mut(&mut self) -> &mut [$crate::optim::ParamGroup<$opts>] {
                self.core.groups_mut()
            }

            /// The options new parameter groups start from (`defaults`).
            pub fn defaults(&self) -> &$opts {
                self.core.defaults()
            }

            /// The state of `param` (`optimizer.state[param]`): `("step", t)` and the buffers
            /// by PyTorch's names, as tensors sharing the optimiser's storage; `None` before
            /// the parameter's first update.
            pub fn state(
                &self,
                param: &$crate::tensor::Tensor,
            ) -> Option<Vec<(&'static str, $crate::tensor::Tensor)>> {
                self.core.state_of(param)
            }

            /// The learning rate of the first group.
            pub fn get_lr(&self) -> f64 {
                self.core.group_lr(0).unwrap_or(0.0)
            }

            /// Sets the learning rate of every group (see [`Optimizer::set_group_lr`]).
            ///
            /// [`Optimizer::set_group_lr`]: $crate::optim::Optimizer::set_group_lr
            pub fn set_lr(&mut self, lr: f64) -> $crate::error::Result<()> {
                for g in 0..self.core.num_groups() {
                    self.core.set_group_lr(g, lr)?;
                }
                Ok(())
            }
        }

        impl $crate::optim::Optimizer for $ty {
            #[track_caller]
            fn step(&mut self) -> $crate::error::Result<()> {
                let loc = kiln_ir::Loc::caller();
                self.core.step().map_err(|e| e.at(loc))
            }
            fn zero_grad(&self) {
                self.core.zero_grad()
            }
            fn validate(&self) -> $crate::error::Result<()> {
                self.core.validate()
            }
            fn num_groups(&self) -> usize {
                self.core.num_groups()
            }
            fn group_lr(&self, group: usize) -> Option<f64> {
                self.core.group_lr(group)
            }
            fn set_group_lr(&mut self, group: usize, lr: f64) -> $crate::error::Result<()> {
                self.core.set_group_lr(group, lr)
            }
            fn parameters(&self) -> Vec<$crate::tensor::Tensor> {
                self.core.parameters()
            }
        }
    };
}
pub(crate) use optimizer_common;
