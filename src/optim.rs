//! Optimisers. This release has plain and momentum SGD, applied eagerly under `no_grad` with
//! PyTorch's update rule; optimisers as graph builders (so the update compiles into the
//! training step) come with the `nn`/`optim` library.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

/// Stochastic gradient descent (`torch.optim.SGD`) with momentum, dampening, Nesterov and
/// weight decay, PyTorch's formulation:
/// `g = grad + wd * p; b = mu * b + (1 - dampening) * g` (`b = g` on the first step);
/// `g = g + mu * b` (Nesterov) or `g = b`; `p = p - lr * g`.
pub struct Sgd {
    params: Vec<Tensor>,
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, lr: f64) -> Sgd {
        let n = params.len();
        Sgd {
            params,
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            buffers: vec![None; n],
        }
    }

    pub fn momentum(mut self, momentum: f64) -> Sgd {
        self.momentum = momentum;
        self
    }

    pub fn weight_decay(mut self, wd: f64) -> Sgd {
        self.weight_decay = wd;
        self
    }

    pub fn nesterov(mut self, nesterov: bool) -> Sgd {
        self.nesterov = nesterov;
        self
    }

    /// Clears the gradients of all parameters.
    pub fn zero_grad(&self) {
        for p in &self.params {
            p.zero_grad();
        }
    }

    /// Applies one update to every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        no_grad(|| {
            for (p, buf) in self.params.iter().zip(self.buffers.iter_mut()) {
                let Some(mut g) = p.grad() else { continue };
                if self.weight_decay != 0.0 {
                    g = g.add(&p.mul(self.weight_decay));
                }
                if self.momentum != 0.0 {
                    let b = match buf.take() {
                        None => g.clone(),
                        Some(b) => b.mul(self.momentum).add(&g.mul(1.0 - self.dampening)),
                    };
                    b.realize()?;
                    g = if self.nesterov {
                        g.add(&b.mul(self.momentum))
                    } else {
                        b.clone()
                    };
                    *buf = Some(b);
                }
                let mut p = p.clone();
                p.sub_(&g.mul(self.lr))?;
            }
            Ok(())
        })
    }
}
