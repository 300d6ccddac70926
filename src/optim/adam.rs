//! Adam and AdamW (`torch.optim.Adam`, `torch.optim.AdamW`).

use super::{
    check_min, invalid, lerp, optimizer_common, scalar_f64, Core, StepScalars, UpdateRule,
};
use crate::error::Result;
use crate::tensor::Tensor;

/// Adam's hyper-parameters, PyTorch's names and defaults. `decoupled_weight_decay` selects
/// AdamW's decay (PyTorch's `Adam(decoupled_weight_decay=True)` is `AdamW`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamOptions {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
    pub decoupled_weight_decay: bool,
}

impl Default for AdamOptions {
    /// `Adam`'s defaults: `lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0`.
    fn default() -> Self {
        AdamOptions {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
        }
    }
}

impl AdamOptions {
    /// `AdamW`'s defaults: Adam's, with decoupled weight decay `1e-2`.
    pub fn adamw() -> Self {
        AdamOptions {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..AdamOptions::default()
        }
    }
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }
    pub fn decoupled_weight_decay(mut self, decoupled: bool) -> Self {
        self.decoupled_weight_decay = decoupled;
        self
    }
}

option_setters!(AdamOptions; lr: f64, eps: f64, weight_decay: f64, amsgrad: bool, maximize: bool);

impl UpdateRule for AdamOptions {
    fn name(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "AdamW"
        } else {
            "Adam"
        }
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn validate(&self) -> Result<()> {
        let n = self.name();
        check_min(n, "learning rate", self.lr, 0.0)?;
        check_min(n, "epsilon value", self.eps, 0.0)?;
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) {
            return Err(invalid(
                n,
                format!("Invalid beta parameter at index 0: {b1}"),
            ));
        }
        if !(0.0..1.0).contains(&b2) {
            return Err(invalid(
                n,
                format!("Invalid beta parameter at index 1: {b2}"),
            ));
        }
        check_min(n, "weight_decay value", self.weight_decay, 0.0)
    }

    fn state_names(&self) -> Vec<&'static str> {
        if self.amsgrad {
            vec!["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            vec!["exp_avg", "exp_avg_sq"]
        }
    }

    /// PyTorch's algorithm, with `t` the step count (1 on the first step), `m`, `v` the
    /// moment estimates (`exp_avg`, `exp_avg_sq`, zeros at first) and `v_max`
    /// (`max_exp_avg_sq`):
    ///
    /// ```text
    /// g = -grad if maximize else grad
    /// p = p * (1 - lr * weight_decay)             (decoupled, AdamW)
    /// g = g + weight_decay * p                    (not decoupled, Adam)
    /// m = lerp(m, g, 1 - beta1)                   = beta1 m + (1 - beta1) g
    /// v = beta2 v + (1 - beta2) g^2
    /// step_size = lr / (1 - beta1^t)
    /// v_max = max(v_max, v);  v' = v_max if amsgrad else v
    /// denom = sqrt(v') / sqrt(1 - beta2^t) + eps
    /// p = p - step_size * m / denom
    /// ```
    ///
    /// The bias corrections are computed in the graph from the step count (in `f64`, then
    /// cast to the parameter's dtype, as PyTorch's host doubles are), so one program serves
    /// every step.
    fn update(
        &self,
        p: &Tensor,
        g: &Tensor,
        state: &[Tensor],
        s: &StepScalars,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let dt = p.dtype();
        let (beta1, beta2) = self.betas;
        let mut g = if self.maximize { g.neg() } else { g.clone() };
        let mut p = p.clone();
        if self.weight_decay != 0.0 {
            if self.decoupled_weight_decay {
                let decay = s.lr.mul(self.weight_decay).neg().add(1.0).to_dtype(dt);
                p = p.mul(&decay);
            } else {
                g = g.add(&p.mul(self.weight_decay));
            }
        }
        let m = lerp(&state[0], &g, 1.0 - beta1);
        let v = state[1].mul(beta2).add(&g.mul(1.0 - beta2).mul(&g));
        // Host doubles in PyTorch; f64 scalars in the graph here.
        let t = &s.step;
        let bias_correction1 = scalar_f64(beta1).pow(t).neg().add(1.0);
        let bias_correction2 = scalar_f64(beta2).pow(t).neg().add(1.0);
        let neg_step_size = s.lr.div(&bias_correction1).neg().to_dtype(dt);
        let bc2_sqrt = bias_correction2.sqrt().to_dtype(dt);
        let mut new_state = vec![m.clone(), v.clone()];
        let second = if self.amsgrad {
            let vmax = state[2].maximum(&v);
            new_state.push(vmax.clone());
            vmax
        } else {
            v
        };
        let denom = second.sqrt().div(&bc2_sqrt).add(self.eps);
        // `param.addcdiv_(exp_avg, denom, value=-step_size)`: p + (value * m) / denom.
        let p = p.add(&m.mul(&neg_step_size).div(&denom));
        Ok((p, new_state))
    }
}

/// Adam (`torch.optim.Adam`): adaptive moment estimation with bias correction, optional
/// L2 weight decay, AMSGrad and `maximize`; the update math is [`AdamOptions::update`].
pub struct Adam {
    core: Core<AdamOptions>,
}

/// AdamW (`torch.optim.AdamW`): Adam with decoupled weight decay (default `1e-2`).
pub struct AdamW {
    core: Core<AdamOptions>,
}

macro_rules! adam_builders {
    ($ty:ident) => {
        impl $ty {
            pub fn lr(mut self, lr: f64) -> $ty {
                self.core.map_options(|o| o.lr = lr);
                self
            }
            pub fn betas(mut self, beta1: f64, beta2: f64) -> $ty {
                self.core.map_options(|o| o.betas = (beta1, beta2));
                self
            }
            pub fn eps(mut self, eps: f64) -> $ty {
                self.core.map_options(|o| o.eps = eps);
                self
            }
            pub fn weight_decay(mut self, weight_decay: f64) -> $ty {
                self.core.map_options(|o| o.weight_decay = weight_decay);
                self
            }
            pub fn amsgrad(mut self, amsgrad: bool) -> $ty {
                self.core.map_options(|o| o.amsgrad = amsgrad);
                self
            }
            pub fn maximize(mut self, maximize: bool) -> $ty {
                self.core.map_options(|o| o.maximize = maximize);
                self
            }
        }
        optimizer_common!($ty, AdamOptions);
    };
}

impl Adam {
    /// Adam over `params` with PyTorch's defaults (`lr=1e-3, betas=(0.9, 0.999), eps=1e-8`).
    pub fn new(params: Vec<Tensor>) -> Adam {
        Adam::with_options(params, AdamOptions::default())
    }

    /// Adam with every hyper-parameter given (`decoupled_weight_decay: true` makes it AdamW).
    pub fn with_options(params: Vec<Tensor>, options: AdamOptions) -> Adam {
        Adam {
            core: Core::new(params, options),
        }
    }
}

impl AdamW {
    /// AdamW over `params` with PyTorch's defaults (Adam's, `weight_decay=1e-2`).
    pub fn new(params: Vec<Tensor>) -> AdamW {
        AdamW::with_options(params, AdamOptions::adamw())
    }

    /// AdamW with every hyper-parameter given; the weight decay is decoupled whatever
    /// `options.decoupled_weight_decay` says, as in PyTorch's `AdamW`.
    pub fn with_options(params: Vec<Tensor>, options: AdamOptions) -> AdamW {
        AdamW {
            core: Core::new(params, options.decoupled_weight_decay(true)),
        }
    }
}

adam_builders!(Adam);
adam_builders!(AdamW);
