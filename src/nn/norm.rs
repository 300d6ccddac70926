//! Batch normalisation (`nn.BatchNorm1d/2d/3d`).

use super::module::{local, Module};
use crate::error::{Error, Result};
use crate::functional as F;
use crate::tensor::Tensor;
use kiln_ir::DType;

/// Batch normalisation over the channel axis 1 of `[B, C, *spatial]` inputs with `N` spatial
/// axes (`BatchNorm1d` also takes `[B, C]`):
///
/// `y = (x - mean) / sqrt(var + eps) * weight + bias`, per channel.
///
/// In training mode `mean` and `var` are the batch's (biased variance, over all axes but 1),
/// and the running statistics are updated as
/// `running = (1 - momentum) running + momentum stat`, with the *unbiased* batch variance
/// `var * n / (n - 1)` (`n` values per channel); `momentum: None` is PyTorch's cumulative
/// average, `momentum = 1 / num_batches_tracked`. In evaluation mode the running statistics
/// are used. Without `track_running_stats` the batch statistics are used in both modes.
///
/// The running statistics are buffers (`running_mean`, `running_var`, `num_batches_tracked`)
/// written with [`crate::assign`]: eagerly, their new values are computed and stored at each
/// training-mode forward, so the buffers stay realised leaves and no history accumulates
/// across steps (the batch statistics are computed once more for the update); inside a
/// compiled step the assignments become outputs of the compiled program.
pub struct BatchNorm<const N: usize> {
    /// `gamma`, ones at creation (`None` without `affine`).
    pub weight: Option<Tensor>,
    /// `beta`, zeros at creation (`None` without `affine`).
    pub bias: Option<Tensor>,
    pub running_mean: Option<Tensor>,
    pub running_var: Option<Tensor>,
    /// An i64 scalar counting training-mode forwards.
    pub num_batches_tracked: Option<Tensor>,
    pub num_features: usize,
    pub eps: f64,
    pub momentum: Option<f64>,
    training: bool,
}

pub type BatchNorm1d = BatchNorm<1>;
pub type BatchNorm2d = BatchNorm<2>;
pub type BatchNorm3d = BatchNorm<3>;

impl<const N: usize> BatchNorm<N> {
    /// PyTorch's defaults: `eps = 1e-5`, `momentum = 0.1`, affine, tracking running
    /// statistics (mean 0, variance 1), training mode.
    pub fn new(num_features: usize) -> Self {
        BatchNorm {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            num_batches_tracked: None,
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            training: true,
        }
        .affine(true)
        .track_running_stats(true)
    }

    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// `None`: a cumulative moving average (equal weight for every batch so far).
    pub fn momentum(mut self, momentum: Option<f64>) -> Self {
        self.momentum = momentum;
        self
    }

    /// With learnable `weight` and `bias` (fresh ones and zeros) or without.
    pub fn affine(mut self, affine: bool) -> Self {
        let c = self.num_features;
        if affine {
            self.weight = Some(Tensor::ones([c]).requires_grad_(true));
            self.bias = Some(Tensor::zeros([c]).requires_grad_(true));
        } else {
            self.weight = None;
            self.bias = None;
        }
        self
    }

    /// With running statistics (fresh: mean 0, variance 1, count 0) or without.
    pub fn track_running_stats(mut self, track: bool) -> Self {
        let c = self.num_features;
        if track {
            self.running_mean = Some(Tensor::zeros([c]));
            self.running_var = Some(Tensor::ones([c]));
            self.num_batches_tracked = Some(Tensor::full([], 0.0, DType::I64));
        } else {
            self.running_mean = None;
            self.running_var = None;
            self.num_batches_tracked = None;
        }
        self
    }

    #[track_caller]
    fn check(&self, x: &Tensor) -> Result<()> {
        let name = match N {
            1 => "BatchNorm1d",
            2 => "BatchNorm2d",
            3 => "BatchNorm3d",
            _ => "BatchNorm",
        };
        let rank_ok = if N == 1 {
            x.ndim() == 2 || x.ndim() == 3
        } else {
            x.ndim() == N + 2
        };
        if !rank_ok {
            let want = if N == 1 {
                "2D or 3D".to_string()
            } else {
                format!("{}D", N + 2)
            };
            return Err(Error::shape(
                name,
                format!("expected {want} input, got shape {:?}", x.shape()),
            ));
        }
        if x.shape()[1] != self.num_features {
            return Err(Error::shape(
                name,
                format!(
                    "input of shape {:?} has {} channels, the layer has num_features = {}",
                    x.shape(),
                    x.shape()[1],
                    self.num_features
                ),
            ));
        }
        if !x.dtype().is_float() {
            return Err(Error::DType(format!(
                "{name}: expected a float input, got {}",
                x.dtype()
            )));
        }
        Ok(())
    }

    /// The forward pass (updating the running statistics in training mode), or an error for a
    /// wrong rank or channel count, or a single value per channel in training mode.
    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        let tracked = match (
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ) {
            (Some(m), Some(v), Some(n)) => Some((m, v, n)),
            _ => None,
        };
        let use_batch_stats = self.training || tracked.is_none();
        if use_batch_stats && x.numel() / self.num_features.max(1) <= 1 {
            return Err(Error::shape(
                "batch_norm",
                format!(
                    "expected more than 1 value per channel when training, got input of shape {:?}",
                    x.shape()
                ),
            ));
        }
        match tracked {
            Some((rm, rv, nbt)) if self.training => {
                // Eagerly, compute the input once now: the statistics' update below and the
                // later backward then both start from its stored value, instead of each
                // re-running the network up to this layer. A traced step computes nothing here.
                if !crate::compile::is_tracing() {
                    x.realize()?;
                }
                let (mut m, mut v) = (rm.clone(), rv.clone());
                let y = match self.momentum {
                    Some(f) => {
                        F::batch_norm(x, Some(&mut m), Some(&mut v), w, b, true, f, self.eps)
                    }
                    None => {
                        // The cumulative factor 1 / num_batches_tracked as a graph value, so a
                        // compiled step recomputes it at every run.
                        let y = F::batch_norm(x, None, None, w, b, true, 0.0, self.eps);
                        crate::autograd::no_grad(|| {
                            let axes: Vec<isize> =
                                (0..x.ndim() as isize).filter(|&a| a != 1).collect();
                            let f = nbt.add(1i64).to_dtype(rm.dtype()).reciprocal();
                            let mean = x.mean(&axes, false).to_dtype(rm.dtype());
                            let var = x.var(&axes, true, false).to_dtype(rm.dtype());
                            m = rm.add(&mean.sub(rm).mul(&f));
                            v = rv.add(&var.sub(rv).mul(&f));
                        });
                        y
                    }
                };
                let n = crate::autograd::no_grad(|| nbt.add(1i64));
                crate::autograd::no_grad(|| crate::assign(&[(rm, &m), (rv, &v), (nbt, &n)]))?;
                Ok(y)
            }
            Some((rm, rv, _)) => {
                let (mut m, mut v) = (rm.clone(), rv.clone());
                Ok(F::batch_norm(
                    x,
                    Some(&mut m),
                    Some(&mut v),
                    w,
                    b,
                    false,
                    0.0,
                    self.eps,
                ))
            }
            None => Ok(F::batch_norm(x, None, None, w, b, true, 0.0, self.eps)),
        }
    }
}

impl<const N: usize> Module for BatchNorm<N> {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn local_parameters(&self) -> Vec<(String, Tensor)> {
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => local(&[("weight", w), ("bias", b)]),
            _ => Vec::new(),
        }
    }

    fn local_buffers(&self) -> Vec<(String, Tensor)> {
        match (
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ) {
            (Some(m), Some(v), Some(n)) => local(&[
                ("running_mean", m),
                ("running_var", v),
                ("num_batches_tracked", n),
            ]),
            _ => Vec::new(),
        }
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_local_training(&mut self, training: bool) {
        self.training = training;
    }
}
