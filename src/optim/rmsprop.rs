//! RMSprop (`torch.optim.RMSprop`).

use super::{check_min, lerp, optimizer_common, Core, StepScalars, UpdateRule};
use crate::error::Result;
use crate::tensor::Tensor;

/// RMSprop's hyper-parameters, PyTorch's names and defaults
/// (`lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False`).
#[derive(Clone, Debug, PartialEq)]
pub struct RmsPropOptions {
    pub lr: f64,
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub centered: bool,
    pub maximize: bool,
}

impl Default for RmsPropOptions {
    fn default() -> Self {
        RmsPropOptions {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

option_setters!(RmsPropOptions, RmsProp; lr: f64, alpha: f64, eps: f64, weight_decay: f64, momentum: f64, centered: bool, maximize: bool);

impl UpdateRule for RmsPropOptions {
    fn name(&self) -> &'static str {
        "RMSprop"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn validate(&self) -> Result<()> {
        check_min("RMSprop", "learning rate", self.lr, 0.0)?;
        check_min("RMSprop", "epsilon value", self.eps, 0.0)?;
        check_min("RMSprop", "momentum value", self.momentum, 0.0)?;
        check_min("RMSprop", "weight_decay value", self.weight_decay, 0.0)?;
        check_min("RMSprop", "alpha value", self.alpha, 0.0)
    }

    fn state_names(&self) -> Vec<&'static str> {
        let mut v = vec!["square_avg"];
        if self.momentum > 0.0 {
            v.push("momentum_buffer");
        }
        if self.centered {
            v.push("grad_avg");
        }
        v
    }

    /// PyTorch's algorithm, with `v` the running average of squared gradients
    /// (`square_avg`), `ga` that of gradients (`grad_avg`, centered) and `b` the momentum
    /// buffer, all zeros at first:
    ///
    /// ```text
    /// g = -grad if maximize else grad
    /// g = g + weight_decay * p                     (weight_decay != 0)
    /// v = alpha v + (1 - alpha) g^2
    /// ga = lerp(ga, g, 1 - alpha)                  (centered)
    /// avg = sqrt(v - ga^2) + eps  if centered  else  sqrt(v) + eps
    /// b = momentum b + g / avg;  p = p - lr * b    (momentum > 0)
    /// p = p - lr * g / avg                         (momentum = 0)
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
        let alpha = self.alpha;
        let square_avg = state[0].mul(alpha).add(&g.mul(1.0 - alpha).mul(&g));
        // Buffers in `state_names` order: square_avg, momentum_buffer?, grad_avg?.
        let has_momentum = self.momentum > 0.0;
        let (avg, grad_avg) = if self.centered {
            let ga = lerp(&state[if has_momentum { 2 } else { 1 }], &g, 1.0 - alpha);
            // `square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()`
            let avg = square_avg.add(&ga.mul(-1.0).mul(&ga)).sqrt();
            (avg, Some(ga))
        } else {
            (square_avg.sqrt(), None)
        };
        let avg = avg.add(self.eps);
        let lr = s.lr_as(p.dtype());
        let mut new_state = vec![square_avg];
        let p = if has_momentum {
            let b = state[1].mul(self.momentum).add(&g.div(&avg));
            new_state.push(b.clone());
            p.sub(&b.mul(&lr))
        } else {
            // `param.addcdiv_(grad, avg, value=-lr)`: p + (-lr * g) / avg.
            p.add(&g.mul(&lr.neg()).div(&avg))
        };
        new_state.extend(grad_avg);
        Ok((p, new_state))
    }
}

/// RMSprop (`torch.optim.RMSprop`): steps scaled by a running RMS of the gradients, with
/// optional centering, momentum, weight decay and `maximize`; the update math is
/// [`RmsPropOptions::update`].
pub struct RmsProp {
    core: Core<RmsPropOptions>,
}

impl RmsProp {
    /// RMSprop over `params` with PyTorch's defaults (`lr=1e-2, alpha=0.99, eps=1e-8`).
    pub fn new(params: Vec<Tensor>) -> RmsProp {
        RmsProp::with_options(params, RmsPropOptions::default())
    }

    /// RMSprop with every hyper-parameter given.
    pub fn with_options(params: Vec<Tensor>, options: RmsPropOptions) -> RmsProp {
        RmsProp {
            core: Core::new(params, options),
        }
    }
}

optimizer_common!(RmsProp, RmsPropOptions);
