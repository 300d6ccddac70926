//! Stochastic gradient descent (`torch.optim.SGD`).

use super::{check_min, invalid, optimizer_common, Core, StepScalars, UpdateRule};
use crate::error::Result;
use crate::tensor::Tensor;

/// SGD's hyper-parameters, PyTorch's names and defaults (`lr` has no default in the
/// constructor, [`Sgd::new`] takes it; `Default` gives PyTorch's `1e-3`).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdOptions {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
}

impl Default for SgdOptions {
    fn default() -> Self {
        SgdOptions {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

option_setters!(SgdOptions, Sgd; momentum: f64, dampening: f64, weight_decay: f64, nesterov: bool, maximize: bool);
option_setters!(SgdOptions; lr: f64);

impl UpdateRule for SgdOptions {
    fn name(&self) -> &'static str {
        "SGD"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn validate(&self) -> Result<()> {
        check_min("SGD", "learning rate", self.lr, 0.0)?;
        check_min("SGD", "momentum value", self.momentum, 0.0)?;
        check_min("SGD", "weight_decay value", self.weight_decay, 0.0)?;
        if self.dampening.is_nan() {
            return Err(invalid("SGD", "Invalid dampening value: NaN"));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(invalid(
                "SGD",
                "Nesterov momentum requires a momentum and zero dampening",
            ));
        }
        Ok(())
    }

    fn state_names(&self) -> Vec<&'static str> {
        if self.momentum != 0.0 {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }

    /// PyTorch's algorithm, with `t` the step count and `b` the momentum buffer:
    ///
    /// ```text
    /// g = -grad if maximize else grad
    /// g = g + weight_decay * p                    (weight_decay != 0)
    /// b = g                                       (momentum != 0, first step)
    /// b = momentum * b + (1 - dampening) * g      (momentum != 0, later steps)
    /// g = g + momentum * b  if nesterov  else  b  (momentum != 0)
    /// p = p - lr * g
    /// ```
    ///
    /// `b` starts as zeros, so for `dampening == 0` the first step's `b = g` is the general
    /// formula; otherwise the first step is selected by `t == 1` in the graph (the step count
    /// is a graph input, so the program does not change from the first step to the next).
    fn update(
        &self,
        p: &Tensor,
        g: &Tensor,
        state: &[Tensor],
        s: &StepScalars,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut g = if self.maximize { g.neg() } else { g.clone() };
        if self.weight_decay != 0.0 {
            g = g.add(&p.mul(self.weight_decay));
        }
        let mut new_state = Vec::new();
        if self.momentum != 0.0 {
            let b = &state[0];
            let scaled = if self.dampening == 0.0 {
                g.clone()
            } else {
                g.mul(1.0 - self.dampening)
            };
            let mut nb = b.mul(self.momentum).add(&scaled);
            if self.dampening != 0.0 {
                let first = s.step.eq(1.0);
                nb = crate::where_(&first, &g, &nb);
            }
            g = if self.nesterov {
                g.add(&nb.mul(self.momentum))
            } else {
                nb.clone()
            };
            new_state.push(nb);
        }
        let lr = s.lr_as(p.dtype());
        Ok((p.sub(&g.mul(&lr)), new_state))
    }
}

/// Stochastic gradient descent with momentum, dampening, Nesterov momentum, weight decay and
/// `maximize` (`torch.optim.SGD`); the update math is [`SgdOptions::update`].
///
/// ```
/// use kiln::{optim::Sgd, Tensor};
/// let w = Tensor::from_slice(&[1.0f32, 2.0]).requires_grad_(true);
/// let mut opt = Sgd::new(vec![w.clone()], 0.1).momentum(0.9);
/// (&w * &w).sum_all().backward();
/// opt.step().unwrap();
/// assert_eq!(w.to_vec::<f32>(), vec![0.8, 1.6]);
/// ```
pub struct Sgd {
    core: Core<SgdOptions>,
}

impl Sgd {
    /// SGD over `params` with learning rate `lr` and PyTorch's other defaults.
    pub fn new(params: Vec<Tensor>, lr: f64) -> Sgd {
        Sgd::with_options(params, SgdOptions::default().lr(lr))
    }

    /// SGD with every hyper-parameter given.
    pub fn with_options(params: Vec<Tensor>, options: SgdOptions) -> Sgd {
        Sgd {
            core: Core::new(params, options),
        }
    }
}

optimizer_common!(Sgd, SgdOptions);
