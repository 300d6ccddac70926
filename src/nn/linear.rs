//! `Linear`, `Flatten` and `Identity`.

use super::conv::weight_bias;
use super::init::uniform_tensor;
use super::module::Module;
use crate::error::{Error, Result};
use crate::functional as F;
use crate::random::Generator;
use crate::tensor::Tensor;

/// `y = x W^T + b` over the last axis (`nn.Linear`), weight `[out, in]`.
///
/// Weight and bias are drawn from `U(-1/sqrt(in), 1/sqrt(in))`: PyTorch's
/// `kaiming_uniform_(a = sqrt(5))` gives `bound = sqrt(3) * sqrt(2 / (1 + 5)) / sqrt(fan_in)
/// = 1/sqrt(fan_in)`, and its bias rule uses the same bound.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, bias: bool, g: &mut Generator) -> Linear {
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        let weight = uniform_tensor(&[out_features, in_features], bound, g).requires_grad_(true);
        let bias = bias.then(|| uniform_tensor(&[out_features], bound, g).requires_grad_(true));
        Linear { weight, bias }
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// The forward pass, or an error naming the shapes if the last axis of `x` is not
    /// `in_features`.
    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.ndim() == 0 || x.shape()[x.ndim() - 1] != self.in_features() {
            return Err(Error::shape(
                "Linear",
                format!(
                    "input of shape {:?} does not end in in_features = {}",
                    x.shape(),
                    self.in_features()
                ),
            ));
        }
        Ok(F::linear(x, &self.weight, self.bias.as_ref()))
    }
}

impl Module for Linear {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn local_parameters(&self) -> Vec<(String, Tensor)> {
        weight_bias(&self.weight, self.bias.as_ref())
    }
}

/// Flattens axes `start_dim..=end_dim` into one (`nn.Flatten`, by default all but the batch
/// axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flatten {
    pub start_dim: isize,
    pub end_dim: isize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten {
            start_dim: 1,
            end_dim: -1,
        }
    }
}

impl Flatten {
    pub fn new() -> Flatten {
        Flatten::default()
    }
}

impl Module for Flatten {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        x.flatten(self.start_dim, self.end_dim)
    }
}

/// Returns its input (`nn.Identity`): a placeholder where a layer is optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity;

impl Module for Identity {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.clone()
    }
}
