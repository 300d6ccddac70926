//! Adadelta (`torch.optim.Adadelta`).

use super::{check_min, invalid, optimizer_common, Core, StepScalars, UpdateRule};
use crate::error::Result;
use crate::tensor::Tensor;

/// Adadelta's hyper-parameters, PyTorch's names and defaults
/// (`lr=1.0, rho=0.9, eps=1e-6, weight_decay=0`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdadeltaOptions {
    pub lr: f64,
    pub rho: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub maximize: bool,
}

impl Default for AdadeltaOptions {
    fn default() -> Self {
        AdadeltaOptions {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

option_setters!(AdadeltaOptions, Adadelta; lr: f64, rho: f64, eps: f64, weight_decay: f64, maximize: bool);

impl UpdateRule for AdadeltaOptions {
    fn name(&self) -> &'static str {
        "Adadelta"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn validate(&self) -> Result<()> {
        check_min("Adadelta", "learning rate", self.lr, 0.0)?;
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(invalid(
                "Adadelta",
                format!("Invalid rho value: {}", self.rho),
            ));
        }
        check_min("Adadelta", "epsilon value", self.eps, 0.0)?;
        check_min("Adadelta", "weight_decay value", self.weight_decay, 0.0)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["square_avg", "acc_delta"]
    }

    /// PyTorch's algorithm, with `s` the running average of squared gradients
    /// (`square_avg`) and `a` that of squared updates (`acc_delta`), both zeros at first:
    ///
    /// ```text
    /// g = -grad if maximize else grad
    /// g = g + weight_decay * p                     (weight_decay != 0)
    /// s = rho s + (1 - rho) g^2
    /// delta = sqrt(a + eps) / sqrt(s + eps) * g
    /// a = rho a + (1 - rho) delta^2
    /// p = p - lr * delta
    /// ```
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
        let rho = self.rho;
        let square_avg = state[0].mul(rho).add(&g.mul(1.0 - rho).mul(&g));
        let std = square_avg.add(self.eps).sqrt();
        let delta = state[1].add(self.eps).sqrt().div(&std).mul(&g);
        let acc_delta = state[1].mul(rho).add(&delta.mul(1.0 - rho).mul(&delta));
        let lr = s.lr_as(p.dtype());
        let p = p.sub(&delta.mul(&lr));
        Ok((p, vec![square_avg, acc_delta]))
    }
}

/// Adadelta (`torch.optim.Adadelta`): per-coordinate step sizes from running averages of
/// squared gradients and squared updates; the update math is [`AdadeltaOptions::update`].
pub struct Adadelta {
    core: Core<AdadeltaOptions>,
}

impl Adadelta {
    /// Adadelta over `params` with PyTorch's defaults (`lr=1.0, rho=0.9, eps=1e-6`).
    pub fn new(params: Vec<Tensor>) -> Adadelta {
        Adadelta::with_options(params, AdadeltaOptions::default())
    }

    /// Adadelta with every hyper-parameter given.
    pub fn with_options(params: Vec<Tensor>, options: AdadeltaOptions) -> Adadelta {
        Adadelta {
            core: Core::new(params, options),
        }
    }
}

optimizer_common!(Adadelta, AdadeltaOptions);
